/* router/net/fdlimit.c — sizes RLIMIT_NOFILE to the configured connection
 * limits at start, or says plainly what the limit allows. */
#include "router/net/fdlimit.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>

#include "router/log.h"

static unsigned long long s_show(rlim_t v)
{
    return v == RLIM_INFINITY ? ~0ull : (unsigned long long) v;
}

unsigned router_fdlimit_raise(unsigned conns)
{
    rlim_t want = (rlim_t) conns + ROUTER_FDLIMIT_SLACK;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "limits", "cannot read the open-file limit: %s",
                   strerror(errno));
        return conns;
    }
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rlim_t target = want;
        if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max)
            target = rl.rlim_max;
        struct rlimit next = {.rlim_cur = target, .rlim_max = rl.rlim_max};
        if (target > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &next) == 0)
            rl.rlim_cur = target;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rlim_t room = rl.rlim_cur > ROUTER_FDLIMIT_SLACK ? rl.rlim_cur - ROUTER_FDLIMIT_SLACK : 0;
        ROUTER_LOG(ROUTER_LOG_WARN, "limits",
                   "open-file limit %llu (hard limit %llu) allows about %llu connections, "
                   "fewer than the %u its listeners are configured for: raise the hard limit to "
                   "%llu (ulimit -Hn, systemd LimitNOFILE=)",
                   s_show(rl.rlim_cur), s_show(rl.rlim_max), (unsigned long long) room, conns,
                   (unsigned long long) want);
        return (unsigned) room;
    }
    if (rl.rlim_cur != was)
        ROUTER_LOG(ROUTER_LOG_INFO, "limits",
                   "open-file limit raised from %llu to %llu for %u connections", s_show(was),
                   s_show(rl.rlim_cur), conns);
    return conns;
}

/* tests/have_ipv6.h — whether this host can bind [::1]: a network
 * namespace (CI runs the suite in one) may have no IPv6, and the tests of
 * IPv6 paths skip then. */
#ifndef KITH_TESTS_HAVE_IPV6_H
#define KITH_TESTS_HAVE_IPV6_H

#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

static inline bool test_have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *) &a, sizeof a) == 0;
    close(fd);
    return ok;
}

#endif

/* tests/resolver_test.c — router/net/resolver.c on a real loop: literals
 * answer at once, a name from the hosts file resolves on the resolver's
 * thread and is then cached (for any port), a name that does not resolve
 * fails and the failure is repeated from the cache, a name with many
 * addresses gives them all in dialing order (IPv4 first, no repeats, at
 * most 8), the names and the callers waiting are bounded, and a resolver
 * destroyed with lookups in flight calls nobody and leaks nothing (LSan),
 * also when an answer's own callback destroys it; made without memory it
 * fails with ENOMEM and leaves no descriptor. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "fake_dns.h"
#include "router/net/resolver.h"

typedef struct {
    router_loop_t *loop;
    unsigned calls;
    bool ok;
    router_addr_t addr;       /* the first */
    router_addr_list_t addrs; /* all */
    char why[160];
} s_answer_t;

static void s_on_answer(const router_addr_list_t *addrs, const char *why, void *ud)
{
    s_answer_t *a = ud;
    a->calls++;
    a->ok = addrs != NULL;
    if (addrs) {
        assert_true(addrs->n >= 1 && addrs->n <= ROUTER_RESOLVE_ADDRS_MAX);
        a->addrs = *addrs;
        a->addr = addrs->addr[0];
    }
    snprintf(a->why, sizeof a->why, "%s", why);
    router_loop_stop(a->loop);
}

static void s_never(const router_addr_list_t *addr, const char *why, void *ud)
{
    (void) addr;
    (void) why;
    (void) ud;
    fail_msg("a destroyed resolver called back");
}

/* Another name of 127.0.0.1 than `localhost` (the hosts file's match is
 * blind to case, kith's own parser is not): only a lookup finds it. */
static const char *s_loopback_name(void)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo("LOCALHOST", "9", &hints, &res) != 0 || !res)
        fail_msg("LOCALHOST does not resolve here: no hosts file?");
    freeaddrinfo(res);
    return "LOCALHOST";
}

static uint16_t s_port(const router_addr_t *a)
{
    return ntohs(a->u.in4.sin_port);
}

/* An address as text, port included. */
static const char *s_text(const router_addr_t *a)
{
    static char text[ROUTER_ADDR_STR_MAX];
    assert_int_equal(router_addr_format(a, text, sizeof text), 0);
    return text;
}

static void test_literal_at_once(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, NULL);
    assert_non_null(r);
    router_addr_list_t a;
    char why[160];
    assert_int_equal(router_resolver_lookup(r, "127.0.0.1", 80, &a, s_never, NULL, why, sizeof why),
                     0);
    assert_int_equal(a.n, 1);
    assert_int_equal(s_port(&a.addr[0]), 80);
    assert_int_equal(router_resolver_lookup(r, "::1", 81, &a, s_never, NULL, why, sizeof why), 0);
    assert_int_equal(a.n, 1);
    assert_string_equal(s_text(&a.addr[0]), "[::1]:81");
    router_resolver_destroy(&r);
    router_resolver_destroy(&r); /* idempotent */
    router_loop_destroy(&loop);
}

static void test_name_resolved_then_cached(void **state)
{
    (void) state;
    router_metrics_t *m = router_metrics_new();
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, m);
    assert_non_null(r);
    s_answer_t ans = {.loop = loop};
    router_addr_list_t a;
    char why[160];
    const char *name = s_loopback_name();
    assert_int_equal(router_resolver_lookup(r, name, 4200, &a, s_on_answer, &ans, why, sizeof why),
                     1);
    /* A second caller while it is out waits for the same lookup. */
    s_answer_t ans2 = {.loop = loop};
    assert_int_equal(router_resolver_lookup(r, name, 4300, &a, s_on_answer, &ans2, why, sizeof why),
                     1);
    while (ans.calls + ans2.calls < 2)
        assert_int_equal(router_loop_run(loop), 0);
    assert_true(ans.ok && ans2.ok);
    /* IPv4 first: where the hosts file also gives localhost ::1, as most
     * do, getaddrinfo may list that first. */
    assert_int_equal(ans.addr.u.ss.ss_family, AF_INET);
    char text[64];
    assert_non_null(inet_ntop(AF_INET, &ans.addr.u.in4.sin_addr, text, sizeof text));
    assert_string_equal(text, "127.0.0.1");
    assert_int_equal(s_port(&ans.addr), 4200);
    assert_int_equal(s_port(&ans2.addr), 4300);
    /* Cached: at once, for any port, no second lookup. */
    assert_int_equal(router_resolver_lookup(r, name, 4400, &a, s_never, NULL, why, sizeof why), 0);
    assert_int_equal(s_port(&a.addr[0]), 4400);
    char buf[4096];
    assert_true(router_metrics_render(m, buf, sizeof buf) > 0);
    assert_non_null(strstr(buf, "kith_dns_lookups_total 1\n"));
    assert_non_null(strstr(buf, "kith_dns_lookups_failed_total 0\n"));
    router_resolver_destroy(&r);
    router_loop_destroy(&loop);
    router_metrics_destroy(&m);
}

/* The blocking lookup threads that may wait use (a library caller's send)
 * picks as the resolver's thread does. */
static void test_blocking(void **state)
{
    (void) state;
    router_addr_list_t l;
    char why[160] = "";
    assert_int_equal(router_resolve_blocking(s_loopback_name(), 4200, &l, why, sizeof why), 0);
    const router_addr_t *a = &l.addr[0];
    assert_int_equal(a->u.ss.ss_family, AF_INET);
    assert_int_equal(a->len, sizeof a->u.in4);
    char text[64];
    assert_non_null(inet_ntop(AF_INET, &a->u.in4.sin_addr, text, sizeof text));
    assert_string_equal(text, "127.0.0.1");
    assert_int_equal(s_port(a), 4200);
    assert_int_equal(router_resolve_blocking("peer.invalid", 9, &l, why, sizeof why), -1);
    assert_true(why[0] != '\0');
}

static void test_failure_cached(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, NULL);
    s_answer_t ans = {.loop = loop};
    router_addr_list_t a;
    char why[160] = "";
    assert_int_equal(
        router_resolver_lookup(r, "peer.invalid", 9, &a, s_on_answer, &ans, why, sizeof why), 1);
    while (!ans.calls)
        assert_int_equal(router_loop_run(loop), 0);
    assert_false(ans.ok);
    assert_true(ans.why[0] != '\0');
    /* Asked again at once: the same failure, from the cache. */
    assert_int_equal(
        router_resolver_lookup(r, "peer.invalid", 9, &a, s_never, NULL, why, sizeof why), -1);
    assert_string_equal(why, ans.why);
    router_resolver_destroy(&r);
    router_loop_destroy(&loop);
}

/* Answers reach the loop only when it runs: until then every name asked
 * for stays out, which makes both bounds reachable at will. */
static void test_bounds_and_destroy_in_flight(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, NULL);
    router_addr_list_t a;
    char why[160], name[64];
    unsigned i;
    for (i = 0; i < ROUTER_RESOLVER_NAMES_MAX; i++) {
        snprintf(name, sizeof name, "n%u.invalid", i);
        assert_int_equal(router_resolver_lookup(r, name, 9, &a, s_never, NULL, why, sizeof why), 1);
    }
    assert_int_equal(router_resolver_lookup(r, "one-more.invalid", 9, &a, s_never, NULL, why,
                                            sizeof why),
                     -1);
    assert_non_null(strstr(why, "too many names"));
    /* Callers on names already out, up to the bound. */
    for (; i < ROUTER_RESOLVER_WAITERS_MAX; i++)
        assert_int_equal(router_resolver_lookup(r, "n0.invalid", 9, &a, s_never, NULL, why,
                                                sizeof why),
                         1);
    assert_int_equal(
        router_resolver_lookup(r, "n1.invalid", 9, &a, s_never, NULL, why, sizeof why), -1);
    assert_non_null(strstr(why, "too many sends"));
    /* No memory for a caller: refused, nothing kept. */
    router_resolver_t *r2 = router_resolver_new(loop, NULL);
    for (long k = 0; k < 3; k++) {
        alloc_fail_arm(k);
        int rc = router_resolver_lookup(r2, "x.invalid", 9, &a, s_never, NULL, why, sizeof why);
        bool failed = alloc_fail_disarm() > 0;
        assert_int_equal(rc, failed ? -1 : 1);
        if (failed)
            assert_string_equal(why, "out of memory");
    }
    /* Destroyed with all of them out: nobody is called (s_never), the
     * thread drops what it finishes, and nothing leaks. */
    router_resolver_destroy(&r2);
    router_resolver_destroy(&r);
    router_loop_destroy(&loop);
}

/* A name with many addresses: every IPv4 one in the order DNS gave them,
 * then the IPv6 ones, a repeat once, at most 8; the caller's port on each,
 * from the thread and from the cache alike. */
static void test_many_addresses(void **state)
{
    (void) state;
    static const char *const ips[] = {"::1", "127.0.0.3", "fe80::1", "127.0.0.2", "127.0.0.3",
                                      "127.0.0.4", "::2", "127.0.0.5", "127.0.0.6", "127.0.0.7",
                                      "127.0.0.8", "127.0.0.9"};
    static const char *const want[] = {"127.0.0.3:4200", "127.0.0.2:4200", "127.0.0.4:4200",
                                       "127.0.0.5:4200", "127.0.0.6:4200", "127.0.0.7:4200",
                                       "127.0.0.8:4200", "127.0.0.9:4200"};
    test_dns_set("many.kith-test", ips, sizeof ips / sizeof ips[0]);
    router_addr_list_t l;
    char why[160] = "";
    assert_int_equal(router_resolve_blocking("many.kith-test", 4200, &l, why, sizeof why), 0);
    assert_int_equal(l.n, ROUTER_RESOLVE_ADDRS_MAX);
    for (unsigned i = 0; i < l.n; i++)
        assert_string_equal(s_text(&l.addr[i]), want[i]);
    /* Fewer IPv4 ones: the IPv6 ones follow, in their order. */
    static const char *const few[] = {"::1", "127.0.0.2", "::2", "127.0.0.2"};
    test_dns_set("few.kith-test", few, sizeof few / sizeof few[0]);
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, NULL);
    s_answer_t ans = {.loop = loop};
    assert_int_equal(
        router_resolver_lookup(r, "few.kith-test", 99, &l, s_on_answer, &ans, why, sizeof why), 1);
    while (!ans.calls)
        assert_int_equal(router_loop_run(loop), 0);
    assert_true(ans.ok);
    assert_int_equal(ans.addrs.n, 3);
    assert_string_equal(s_text(&ans.addrs.addr[0]), "127.0.0.2:99");
    assert_string_equal(s_text(&ans.addrs.addr[1]), "[::1]:99");
    assert_string_equal(s_text(&ans.addrs.addr[2]), "[::2]:99");
    assert_int_equal(
        router_resolver_lookup(r, "few.kith-test", 98, &l, s_never, NULL, why, sizeof why), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(s_text(&l.addr[2]), "[::2]:98");
    router_resolver_destroy(&r);
    router_loop_destroy(&loop);
    test_dns_set("many.kith-test", NULL, 0);
    test_dns_set("few.kith-test", NULL, 0);
}

typedef struct {
    router_loop_t *loop;
    router_resolver_t **r; /* destroyed by the first answer */
    unsigned calls;
} s_destroyer_t;

static void s_destroy_on_answer(const router_addr_list_t *addrs, const char *why, void *ud)
{
    (void) why;
    s_destroyer_t *d = ud;
    assert_non_null(addrs);
    d->calls++;
    router_resolver_destroy(d->r); /* on the loop thread, as destroy may be */
    router_loop_stop(d->loop);
}

/* An answer's callback may destroy the resolver (a sender that gives up
 * and tears its node down): the other callers waiting for that name are
 * then dropped uncalled, as destroy promises, and nothing of the freed
 * resolver is touched (ASan) or leaked (LSan). The loop went on giving
 * the next caller the answer from inside the freed resolver. */
static void test_destroyed_by_an_answer(void **state)
{
    (void) state;
    static const char *const ips[] = {"127.0.0.7"};
    test_dns_set("gone.kith-test", ips, 1);
    router_loop_t *loop = router_loop_new(NULL);
    router_resolver_t *r = router_resolver_new(loop, NULL);
    assert_non_null(r);
    router_addr_list_t a;
    char why[160];
    s_destroyer_t d = {.loop = loop, .r = &r};
    /* Waiters are called newest first: the destroyer, then s_never. */
    assert_int_equal(
        router_resolver_lookup(r, "gone.kith-test", 1, &a, s_never, NULL, why, sizeof why), 1);
    assert_int_equal(
        router_resolver_lookup(r, "gone.kith-test", 2, &a, s_destroy_on_answer, &d, why, sizeof why),
        1);
    while (d.calls == 0)
        assert_int_equal(router_loop_run(loop), 0);
    assert_int_equal(d.calls, 1);
    assert_null(r);
    router_loop_destroy(&loop);
    test_dns_set("gone.kith-test", NULL, 0);
}

/* Descriptors open in this process. */
static int s_open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

/* router_resolver_new without memory at each of its allocations: NULL
 * with ENOMEM, its eventfd closed and nothing leaked (LSan); once it is
 * made, a name longer than DNS allows is refused with why, before any
 * lookup or allocation. */
static void test_new_without_memory(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    int before = s_open_fds();
    long k;
    for (k = 0; k < ALLOC_FAIL_RUNS_MAX; k++) {
        alloc_fail_arm(k);
        errno = 0;
        router_resolver_t *r = router_resolver_new(loop, NULL);
        unsigned failed = alloc_fail_disarm();
        if (!r) {
            assert_true(failed > 0);
            assert_int_equal(errno, ENOMEM);
            assert_int_equal(s_open_fds(), before);
            continue;
        }
        char host[ROUTER_ADDR_HOST_MAX + 8];
        memset(host, 'a', sizeof host - 1);
        host[sizeof host - 1] = '\0';
        router_addr_list_t a;
        char why[160] = "";
        assert_int_equal(router_resolver_lookup(r, host, 9, &a, s_never, NULL, why, sizeof why),
                         -1);
        assert_string_equal(why, "the name is too long");
        router_resolver_destroy(&r);
        assert_int_equal(s_open_fds(), before);
        if (failed == 0)
            break;
    }
    assert_true(k > 0 && k < ALLOC_FAIL_RUNS_MAX);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_at_once),
        cmocka_unit_test(test_name_resolved_then_cached),
        cmocka_unit_test(test_blocking),
        cmocka_unit_test(test_failure_cached),
        cmocka_unit_test(test_bounds_and_destroy_in_flight),
        cmocka_unit_test(test_many_addresses),
        cmocka_unit_test(test_destroyed_by_an_answer),
        cmocka_unit_test(test_new_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* tests/addr_test.c — the one host:port splitter (router/net/addr): the
 * bracketed-IPv6 rules, ports, host names, and literal socket addresses
 * built from host text without a format-then-parse round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>

#include "router/net/addr.h"

static void test_split(void **state)
{
    (void) state;
    static const struct {
        const char *in;
        const char *host;      /* NULL when refused */
        uint16_t port;
        router_addr_err_t err; /* when refused */
    } cases[] = {
        {"127.0.0.1:4200", "127.0.0.1", 4200, 0},
        {"[::1]:4200", "::1", 4200, 0},
        {"[2001:db8::7]:0", "2001:db8::7", 0, 0},
        {"[::ffff:1.2.3.4]:9", "::ffff:1.2.3.4", 9, 0},
        {"node-1.example.com:65535", "node-1.example.com", 65535, 0},
        {"localhost:00080", "localhost", 80, 0},
        {"bad_host:80", "bad_host", 80, 0},   /* text: judged by router_addr_host_valid */
        {"::1:4200", NULL, 0, ROUTER_ADDR_UNBRACKETED_V6},
        {"a:b:80", NULL, 0, ROUTER_ADDR_UNBRACKETED_V6},
        {"[::1:4200", NULL, 0, ROUTER_ADDR_BAD_BRACKETS},
        {"[127.0.0.1]:80", NULL, 0, ROUTER_ADDR_BAD_BRACKETS},
        {"[example.com]:80", NULL, 0, ROUTER_ADDR_BAD_BRACKETS},
        {"[]:80", NULL, 0, ROUTER_ADDR_NO_HOST},
        {":80", NULL, 0, ROUTER_ADDR_NO_HOST},
        {"[::1]", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"[::1]4200", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"[::1]:", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:65536", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:123456", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:-1", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:+1", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:8o", NULL, 0, ROUTER_ADDR_BAD_PORT},
        {"host:80 ", NULL, 0, ROUTER_ADDR_BAD_PORT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        router_hostport_t hp;
        router_addr_err_t err = ROUTER_ADDR_OK;
        int rc = router_addr_split(cases[i].in, &hp, &err);
        if (cases[i].host) {
            if (rc != 0)
                fail_msg("%s: refused (%s)", cases[i].in, router_addr_err_str(err));
            assert_string_equal(hp.host, cases[i].host);
            assert_int_equal(hp.port, cases[i].port);
        } else {
            if (rc != -1)
                fail_msg("%s: accepted", cases[i].in);
            if (err != cases[i].err)
                fail_msg("%s: %s", cases[i].in, router_addr_err_str(err));
        }
    }
    /* the longest name fits; one byte more does not */
    char name[300];
    memset(name, 'a', 253);
    strcpy(name + 253, ":1");
    router_hostport_t hp;
    assert_int_equal(router_addr_split(name, &hp, NULL), 0);
    assert_int_equal(strlen(hp.host), 253);
    memset(name, 'a', 254);
    strcpy(name + 254, ":1");
    router_addr_err_t err;
    assert_int_equal(router_addr_split(name, &hp, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_NO_HOST);
}

static void test_host_valid(void **state)
{
    (void) state;
    static const char *const good[] = {"127.0.0.1", "::1", "2001:db8::7", "localhost",
                                       "node-1.example.com", "a", "1a", "x.y1"};
    static const char *const bad[] = {"", "1.2.3", "bad_host", "-a.com", "a-.com", "a..b", ".a",
                                      "a.", "1.2.3.4.5", "h\xc3\xa9", "a b", "[::1]"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!router_addr_host_valid(good[i]))
            fail_msg("refused %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (router_addr_host_valid(bad[i]))
            fail_msg("accepted %s", bad[i]);
    char label[80];
    memset(label, 'l', 64);
    label[64] = '\0';
    assert_false(router_addr_host_valid(label));
    label[63] = '\0';
    assert_true(router_addr_host_valid(label));
}

static void test_from_host(void **state)
{
    (void) state;
    router_addr_t a;
    router_addr_err_t err;
    char out[ROUTER_ADDR_STR_MAX];
    assert_int_equal(router_addr_from_host("::1", 4200, &a, &err), 0);
    assert_int_equal(router_addr_family(&a), AF_INET6);
    assert_int_equal(router_addr_format(&a, out, sizeof out), 0);
    assert_string_equal(out, "[::1]:4200");
    assert_int_equal(router_addr_from_host("localhost", 0, &a, &err), 0);
    assert_int_equal(router_addr_format(&a, out, sizeof out), 0);
    assert_string_equal(out, "127.0.0.1:0");
    assert_int_equal(router_addr_from_host("10.0.0.1", 65535, &a, &err), 0);
    assert_int_equal(router_addr_port(&a), 65535);
    /* names need DNS, which is not done here */
    assert_int_equal(router_addr_from_host("example.com", 80, &a, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_BAD_HOST);
    assert_int_equal(router_addr_family(&a), AF_UNSPEC);
    assert_int_equal(router_addr_from_host("::1::2", 80, &a, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_BAD_HOST);

    /* router_addr_parse is the splitter, then this */
    assert_int_equal(router_addr_parse("tcp://[::1]:7", &a, &err), 0);
    assert_int_equal(router_addr_port(&a), 7);
    assert_int_equal(router_addr_parse("example.com:80", &a, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_BAD_HOST);
    assert_int_equal(router_addr_parse("::1:80", &a, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_UNBRACKETED_V6);
}

/* Only this machine can use it: 127/8, ::1, a mapped 127.x, a Unix
 * socket; never the wildcard or another address. */
static void test_is_loopback(void **state)
{
    (void) state;
    static const struct {
        const char *text;
        bool loopback;
    } cases[] = {
        {"127.0.0.1:1", true},        {"127.255.0.9:80", true},   {"[::1]:7", true},
        {"[::ffff:127.0.0.2]:1", true}, {"/tmp/kith.sock", true}, {"0.0.0.0:42617", false},
        {"[::]:1", false},            {"10.0.0.1:4200", false},   {"[::ffff:10.0.0.1]:1", false},
        {"128.0.0.1:1", false},       {"[::2]:1", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        router_addr_t a;
        router_addr_err_t err;
        assert_int_equal(router_addr_parse(cases[i].text, &a, &err), 0);
        if (router_addr_is_loopback(&a) != cases[i].loopback)
            fail_msg("%s: loopback %d", cases[i].text, !cases[i].loopback);
    }
    router_addr_t none = {0};
    assert_false(router_addr_is_loopback(&none));
    assert_false(router_addr_is_loopback(NULL));
}

/* The client text of a peer: a mapped IPv4 address is the IPv4 one. */
static void test_client(void **state)
{
    (void) state;
    static const struct {
        const char *text, *client;
    } cases[] = {
        {"127.0.0.1:1", "127.0.0.1"},         {"[::ffff:10.0.0.7]:9", "10.0.0.7"},
        {"[::1]:7", "::1"},                   {"[2001:db8::5]:1", "2001:db8::5"},
        {"/tmp/kith.sock", "unix"},
    };
    char out[ROUTER_ADDR_CLIENT_MAX];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        router_addr_t a;
        router_addr_err_t err;
        assert_int_equal(router_addr_parse(cases[i].text, &a, &err), 0);
        router_addr_client(&a, out);
        assert_string_equal(out, cases[i].client);
    }
    router_addr_client(NULL, out);
    assert_string_equal(out, "unknown");
}

/* The source text of a peer, as lockouts count it: an IPv6 /64. */
static void test_source(void **state)
{
    (void) state;
    static const struct {
        const char *text, *source;
    } cases[] = {
        {"127.0.0.1:1", "127.0.0.1"},
        {"[::ffff:10.0.0.7]:9", "10.0.0.7"},
        {"[2001:db8:1:2:3:4:5:6]:1", "2001:db8:1:2::/64"},
        {"[2001:db8:1:2::99]:1", "2001:db8:1:2::/64"},
        {"[2001:db8:1:3::1]:1", "2001:db8:1:3::/64"},
        {"[::1]:7", "::/64"},
        {"/tmp/kith.sock", "unix"},
    };
    char out[ROUTER_ADDR_CLIENT_MAX];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        router_addr_t a;
        router_addr_err_t err;
        assert_int_equal(router_addr_parse(cases[i].text, &a, &err), 0);
        router_addr_source(&a, out);
        assert_string_equal(out, cases[i].source);
    }
    router_addr_source(NULL, out);
    assert_string_equal(out, "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_host_valid),
        cmocka_unit_test(test_from_host),
        cmocka_unit_test(test_is_loopback),
        cmocka_unit_test(test_client),
        cmocka_unit_test(test_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

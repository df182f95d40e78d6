/* tests/agent_provider_openai_test.c — the `openai` provider against a
 * one-thread HTTP server in the test that answers every request with a
 * canned response, with each of kith's allocations on the way failing in
 * turn: making the provider, building the request, reading a streamed
 * answer and a 500's error body. Each run either gives the whole answer or
 * an error for people that says what failed ("out of memory", never "the
 * request would pass 33554432 bytes"); LSan checks nothing leaked. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/provider.h"
#include "alloc_fail.h"

/* ------------------------------------------------------------ the server */

typedef struct {
    int lfd;
    int port;
    const char *resp;     /* the whole answer to every request */
    pthread_t thread;
} s_srv_t;

/* Reads one request (head, then Content-Length bytes of body). */
static void s_read_request(int fd)
{
    char buf[65536];
    size_t len = 0;
    char *end = NULL;
    while (!end && len < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            return;
        len += (size_t) n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (!end)
        return;
    size_t want = 0;
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (cl)
        want = strtoul(cl + 17, NULL, 10);
    size_t have = len - (size_t) (end + 4 - buf);
    while (have < want) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return;
        have += (size_t) n;
    }
}

static void *s_serve(void *arg)
{
    s_srv_t *s = arg;
    for (;;) {
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            return NULL; /* shut down */
        s_read_request(fd);
        size_t n = strlen(s->resp);
        for (size_t at = 0; at < n;) {
            ssize_t k = send(fd, s->resp + at, n - at, MSG_NOSIGNAL);
            if (k <= 0)
                break;
            at += (size_t) k;
        }
        close(fd);
    }
}

static void s_srv_start(s_srv_t *s, const char *resp)
{
    memset(s, 0, sizeof *s);
    s->resp = resp;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *) &a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *) &a, &al), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, s_serve, s), 0);
}

static void s_srv_stop(s_srv_t *s)
{
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(s->thread, NULL);
    close(s->lfd);
}

/* ------------------------------------------------------------ the sink */

typedef struct {
    char text[256];
    size_t len;
} s_text_t;

static int s_chunk(void *ud, const char *p, size_t n)
{
    s_text_t *t = ud;
    assert_true(t->len + n < sizeof t->text);
    memcpy(t->text + t->len, p, n);
    t->len += n;
    t->text[t->len] = '\0';
    return 0;
}

static int s_thinking(void *ud, const char *p, size_t n)
{
    (void) ud; (void) p; (void) n;
    return 0;
}

static int s_yield(void *ud, int ms)
{
    (void) ud;
    if (ms > 0)
        usleep((useconds_t) (ms > 10 ? 10 : ms) * 1000u);
    return 0;
}

#define S(lit) ((proto_worker_str_t){(lit), sizeof(lit) - 1})

static const char s_stream[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":"
    "{\"name\":\"peers\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n";

static const char s_server_error[] =
    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 34\r\n"
    "Connection: close\r\n\r\n"
    "{\"error\":{\"message\":\"it broke\"}}\r\n";

/* One completion of a conversation with a tool offered; err and text out. */
static agent_complete_rc_t s_complete(agent_provider_t *p, s_text_t *t, agent_completion_t *out, char *err,
                                      size_t errcap)
{
    static const proto_worker_chat_msg_t msgs[] = {
        {.role = PROTO_WORKER_ROLE_SYSTEM, .content = S("be brief")},
        {.role = PROTO_WORKER_ROLE_USER, .content = S("hello \"there\"\n")},
    };
    static const proto_worker_tool_spec_t tools[] = {
        {S("peers"), S("List the peers"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
    };
    agent_completion_req_t req = {msgs, 2, tools, 1, 0};
    agent_sink_t sink = {s_chunk, s_thinking, s_yield, t};
    memset(t, 0, sizeof *t);
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    return p->complete(p, &req, &sink, out, err, errcap);
}

static agent_provider_t *s_provider(const s_srv_t *s)
{
    char url[64], err[AGENT_PROVIDER_ERR_MAX];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", s->port);
    agent_provider_opts_t o = {.kind = AGENT_PROVIDER_OPENAI, .base_url = url, .model = "m", .max_attempts = 1,
                               .idle_timeout_ms = 30000};
    agent_provider_t *p = agent_provider_new(&o, err, sizeof err);
    if (!p)
        fail_msg("%s", err);
    return p;
}

/* ------------------------------------------------------------ tests */

static void test_answer_whole_or_out_of_memory(void **state)
{
    (void) state;
    s_srv_t srv;
    s_srv_start(&srv, s_stream);
    agent_provider_t *p = s_provider(&srv);
    s_text_t t;
    agent_completion_t out;
    char err[AGENT_PROVIDER_ERR_MAX];
    size_t failures = 0;
    long i;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        agent_complete_rc_t rc = s_complete(p, &t, &out, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (rc == AGENT_COMPLETE_OK) {
            assert_string_equal(t.text, "Hello");
            assert_int_equal(out.n_calls, 1);
            assert_string_equal(out.calls[0].name.p, "peers");
            assert_true(out.has_tokens_used && out.tokens_used == 7);
            agent_completion_clear(&out);
            if (!failed)
                break;
            continue;
        }
        assert_true(failed);
        assert_int_equal(rc, AGENT_COMPLETE_ERROR);
        assert_int_equal(out.n_calls, 0);
        assert_null(out.calls);
        if (strcmp(err, "openai: out of memory") != 0)
            fail_msg("allocation %ld: \"%s\"", i, err);
        failures++;
    }
    assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
    assert_true(failures > 0);
    agent_provider_destroy(&p);
    s_srv_stop(&srv);
}

/* A 500's body is kept for its message; without memory for it, the status
 * alone is said. Never a retry here (max_attempts 1), never a hang. */
static void test_error_body_without_memory(void **state)
{
    (void) state;
    s_srv_t srv;
    s_srv_start(&srv, s_server_error);
    agent_provider_t *p = s_provider(&srv);
    s_text_t t;
    agent_completion_t out;
    char err[AGENT_PROVIDER_ERR_MAX];
    bool bare = false;
    long i;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        agent_complete_rc_t rc = s_complete(p, &t, &out, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        assert_int_equal(rc, AGENT_COMPLETE_ERROR);
        if (!failed) {
            assert_string_equal(err, "openai: HTTP 500: it broke");
            break;
        }
        /* the status alone, or with the body read as JSON or (its parse
         * out of memory) as text */
        if (strcmp(err, "openai: HTTP 500") == 0)
            bare = true;
        else if (strcmp(err, "openai: out of memory") != 0 && strncmp(err, "openai: HTTP 500: ", 18) != 0)
            fail_msg("allocation %ld: \"%s\"", i, err);
    }
    assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
    assert_true(bare);
    agent_provider_destroy(&p);
    s_srv_stop(&srv);
}

static void test_new_without_memory(void **state)
{
    (void) state;
    setenv("KITH_TEST_PROVIDER_KEY", "sk-test", 1);
    agent_provider_opts_t o = {.kind = AGENT_PROVIDER_OPENAI, .base_url = "http://127.0.0.1:9/v1/",
                               .model = "m", .api_key_env = "KITH_TEST_PROVIDER_KEY"};
    char err[AGENT_PROVIDER_ERR_MAX];
    long i;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        err[0] = '\0';
        alloc_fail_arm(i);
        agent_provider_t *p = agent_provider_new(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (p) {
            assert_string_equal(p->model, "m");
            agent_provider_destroy(&p);
            if (!failed)
                break;
            continue;
        }
        assert_true(failed);
        assert_string_equal(err, "openai: out of memory");
    }
    assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
    unsetenv("KITH_TEST_PROVIDER_KEY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_whole_or_out_of_memory),
        cmocka_unit_test(test_error_body_without_memory),
        cmocka_unit_test(test_new_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

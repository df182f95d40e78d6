/* tests/ws_raw_client.h — a raw WebSocket client for unit tests that run
 * the gateway's loop on the test's own thread (route_chat_test,
 * route_openclaw_test): it allocates nothing, so the allocation failures
 * a test injects are the server's alone. One TCP socket, what the server
 * sent it in a fixed buffer, the server's frames read out of that buffer
 * after the HTTP head; frames sent are masked with a zero mask. Include
 * after <cmocka.h>. */
#ifndef KITH_TESTS_WS_RAW_CLIENT_H
#define KITH_TESTS_WS_RAW_CLIENT_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int fd;
    uint8_t buf[1 << 16];    /* what the server sent, from its first octet */
    size_t len;
    bool eof;                /* the connection ended (orderly or not) */
    size_t head;             /* octets of the HTTP head, 0 until read */
} test_wsc_t;

/* Reads what has come without blocking (the socket is non-blocking by
 * then), and finds the end of the head. */
static inline void test_wsc_read(test_wsc_t *c)
{
    while (!c->eof && c->len < sizeof c->buf) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n > 0)
            c->len += (size_t) n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            c->eof = true;
        else if (errno == EAGAIN)
            break;
    }
    if (!c->head) {
        for (size_t i = 3; i < c->len; i++)
            if (!memcmp(c->buf + i - 3, "\r\n\r\n", 4)) {
                c->head = i + 1;
                break;
            }
    }
}

/* The n-th server frame after the head: opcode and payload; false when
 * not all here yet. */
static inline bool test_wsc_frame(const test_wsc_t *c, unsigned n, int *op,
                                  const uint8_t **payload, size_t *len)
{
    if (!c->head)
        return false;
    size_t at = c->head;
    for (unsigned i = 0;; i++) {
        if (c->len - at < 2)
            return false;
        const uint8_t *p = c->buf + at;
        size_t plen = p[1] & 0x7f, hl = 2;
        if (plen == 126) {
            if (c->len - at < 4)
                return false;
            plen = (size_t) p[2] << 8 | p[3];
            hl = 4;
        } else if (plen == 127) {
            if (c->len - at < 10)
                return false;
            plen = 0;
            for (int k = 0; k < 8; k++)
                plen = plen << 8 | p[2 + k];
            hl = 10;
        }
        if (c->len - at < hl + plen)
            return false;
        if (i == n) {
            *op = p[0] & 0x0f;
            *payload = p + hl;
            *len = plen;
            return true;
        }
        at += hl + plen;
    }
}

/* How many whole frames came, and whether one of them is a Close. */
static inline unsigned test_wsc_frames(const test_wsc_t *c, bool *closed)
{
    unsigned n = 0;
    int op = 0;
    const uint8_t *p = NULL;
    size_t len = 0;
    *closed = false;
    while (test_wsc_frame(c, n, &op, &p, &len)) {
        *closed = *closed || op == 8;
        n++;
    }
    return n;
}

/* Whether text frame n came and holds `needle`. */
static inline bool test_wsc_frame_has(const test_wsc_t *c, unsigned n, const char *needle)
{
    int op = 0;
    const uint8_t *p = NULL;
    size_t len = 0;
    if (!test_wsc_frame(c, n, &op, &p, &len) || op != 1)
        return false;
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= len; i++)
        if (!memcmp(p + i, needle, k))
            return true;
    return false;
}

/* A new connection to 127.0.0.1:port with `req` sent (blocking: it is in
 * the server's socket before its loop runs again). */
static inline void test_wsc_open(test_wsc_t *c, uint16_t port, const char *req)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &a, sizeof a), 0);
    size_t n = strlen(req);
    assert_int_equal(send(c->fd, req, n, 0), (ssize_t) n);
}

/* A masked text frame (mask 0: the payload goes as it is). */
static inline void test_wsc_send_text(const test_wsc_t *c, const char *text)
{
    size_t n = strlen(text);
    uint8_t h[8] = {0x81};
    size_t hl;
    if (n < 126) {
        h[1] = (uint8_t) (0x80 | n);
        hl = 2;
    } else {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t) (n >> 8);
        h[3] = (uint8_t) n;
        hl = 4;
    }
    memset(h + hl, 0, 4);
    hl += 4;
    assert_int_equal(send(c->fd, h, hl, MSG_NOSIGNAL), (ssize_t) hl);
    assert_int_equal(send(c->fd, text, n, MSG_NOSIGNAL), (ssize_t) n);
}

/* The upgrade was answered with something else than 101 (a refusal). */
static inline bool test_wsc_refused(const test_wsc_t *c)
{
    return c->head && memcmp(c->buf, "HTTP/1.1 101", 12) != 0;
}

/* The socket has ended for the client: a Close came, or the connection. */
static inline bool test_wsc_ended(const test_wsc_t *c)
{
    bool closed;
    (void) test_wsc_frames(c, &closed);
    return closed || c->eof;
}

#endif

/* tests/sock_util.h — the client end of a test's TCP connection to a
 * listener on 127.0.0.1: connect, send everything, read what the server
 * sent until its end (EOF or a reset), now or within a deadline, and close
 * with a reset. Shared by tests/comms_fail_test.c and
 * tests/events_listener_test.c; include after <cmocka.h>. */
#ifndef KITH_TESTS_SOCK_UTIL_H
#define KITH_TESTS_SOCK_UTIL_H

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/* A blocking client connected to 127.0.0.1:port (the kernel completes the
 * handshake before the server's loop accepts). Caller closes it. */
static inline int test_sock_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *) &a, sizeof a), 0);
    return fd;
}

/* Sends all len bytes (blocking), or fails the test. */
static inline void test_sock_send_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len > 0) {
        ssize_t k = send(fd, b, len, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k > 0);
        b += k;
        len -= (size_t) k;
    }
}

/* Reads what fd has now, without waiting, adding the count to *bytes (may
 * be NULL). True when the end came: EOF, or a reset (*reset, may be NULL,
 * says which; the kernel reports a reset once, so note it the first time). */
static inline bool test_sock_read_ready(int fd, size_t *bytes, bool *reset)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0)
            return false;
        uint8_t buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (bytes)
                *bytes += (size_t) n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return false;
        if (reset)
            *reset = n < 0;
        return true;
    }
}

/* Reads until the end (EOF or reset), waiting at most max_ms for each
 * read (a deadline for progress, never a timing): fails the test when the
 * server neither sends nor ends in that time. Adds what came to *bytes. */
static inline void test_sock_read_to_end(int fd, size_t *bytes, bool *reset, int max_ms)
{
    while (!test_sock_read_ready(fd, bytes, reset)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, max_ms);
        if (r < 0 && errno == EINTR)
            continue;
        assert_int_equal(r, 1);
    }
}

/* Closes with a reset (SO_LINGER 0) instead of an orderly end. */
static inline void test_sock_close_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

#endif

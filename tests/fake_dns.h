/* tests/fake_dns.h — DNS names a test makes up, answered as it says. This
 * header defines getaddrinfo itself (include it in one file of a test
 * executable, whose own definition kith's calls then reach): a name set
 * with test_dns_set gets its IP literals, in the order given, and every
 * other name goes to the C library's getaddrinfo. So a test can give a
 * peer's name a dead address before a live one, as a real zone can,
 * without a DNS server, or hold every lookup of such a name until told
 * (a DNS server that is slow to answer). Answers are chains of the C
 * library's own numeric answers, so its freeaddrinfo frees them. */
#ifndef KITH_TESTS_FAKE_DNS_H
#define KITH_TESTS_FAKE_DNS_H

#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define TEST_DNS_NAMES 4  /* names set at once */
#define TEST_DNS_IPS 16   /* literals per name */

static struct {
    pthread_mutex_t mu;
    char name[TEST_DNS_NAMES][64];
    const char *ips[TEST_DNS_NAMES][TEST_DNS_IPS];
    size_t n[TEST_DNS_NAMES];
    unsigned asked;                /* lookups of names set, all together */
    bool hold;                     /* lookups of names set wait until it is false */
    unsigned done;                 /* ...and have been answered */
    pthread_cond_t cv;             /* signalled when hold changes */
} s_test_dns = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Holds (true) or lets go (false) the lookups of names set here. */
static inline void test_dns_hold(bool hold)
{
    pthread_mutex_lock(&s_test_dns.mu);
    s_test_dns.hold = hold;
    pthread_cond_broadcast(&s_test_dns.cv);
    pthread_mutex_unlock(&s_test_dns.mu);
}

/* How many lookups of names set here have been answered. */
static inline unsigned test_dns_done(void)
{
    pthread_mutex_lock(&s_test_dns.mu);
    unsigned n = s_test_dns.done;
    pthread_mutex_unlock(&s_test_dns.mu);
    return n;
}

/* Makes `name` resolve to ips[0..n) (string literals: kept, not copied);
 * n 0 forgets it. */
static inline void test_dns_set(const char *name, const char *const *ips, size_t n)
{
    pthread_mutex_lock(&s_test_dns.mu);
    int slot = -1;
    for (int i = 0; i < TEST_DNS_NAMES; i++)
        if (strcmp(s_test_dns.name[i], name) == 0 || (slot < 0 && !s_test_dns.name[i][0]))
            slot = i;
    if (slot >= 0) {
        snprintf(s_test_dns.name[slot], sizeof s_test_dns.name[slot], "%s", n ? name : "");
        for (size_t i = 0; i < n && i < TEST_DNS_IPS; i++)
            s_test_dns.ips[slot][i] = ips[i];
        s_test_dns.n[slot] = n < TEST_DNS_IPS ? n : TEST_DNS_IPS;
    }
    pthread_mutex_unlock(&s_test_dns.mu);
}

/* How many times a name set here was looked up. */
static inline unsigned test_dns_asked(void)
{
    pthread_mutex_lock(&s_test_dns.mu);
    unsigned n = s_test_dns.asked;
    pthread_mutex_unlock(&s_test_dns.mu);
    return n;
}

typedef int (*test_gai_fn)(const char *, const char *, const struct addrinfo *,
                           struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    test_gai_fn real = (test_gai_fn) dlsym(RTLD_NEXT, "getaddrinfo");
    const char *ips[TEST_DNS_IPS];
    size_t n = 0;
    pthread_mutex_lock(&s_test_dns.mu);
    for (int i = 0; node && i < TEST_DNS_NAMES; i++)
        if (s_test_dns.name[i][0] && strcmp(s_test_dns.name[i], node) == 0) {
            n = s_test_dns.n[i];
            memcpy(ips, s_test_dns.ips[i], n * sizeof ips[0]);
            s_test_dns.asked++;
            while (s_test_dns.hold)
                pthread_cond_wait(&s_test_dns.cv, &s_test_dns.mu);
            s_test_dns.done++;
        }
    pthread_mutex_unlock(&s_test_dns.mu);
    if (n == 0)
        return real(node, service, hints, res);
    struct addrinfo h = {.ai_flags = AI_NUMERICHOST,
                         .ai_socktype = hints ? hints->ai_socktype : 0};
    struct addrinfo *head = NULL, **tail = &head;
    for (size_t i = 0; i < n; i++) {
        struct addrinfo *one = NULL;
        int rc = real(ips[i], service, &h, &one);
        if (rc != 0) {
            if (head)
                freeaddrinfo(head);
            return rc;
        }
        *tail = one;
        while (*tail)
            tail = &(*tail)->ai_next;
    }
    *res = head;
    return 0;
}

#endif

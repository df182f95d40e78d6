/* router/net/inproc.c — the in-process name registry: a short list under a
 * mutex (dials are rare: one per peer pair, then the connection is reused).
 * Faulty namespaces put a relay between the two ends of each connection. */
#include "router/net/inproc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/net/inproc_relay.h"

typedef struct s_binding {
    char name[ROUTER_INPROC_NAME_MAX + 1]; /* the bound name */
    router_inproc_accept_fn *fn;           /* its acceptor */
    void *ud;
    struct s_binding *next;
} s_binding_t;

struct router_inproc {
    pthread_mutex_t mu;            /* guards bindings; held across acceptor calls */
    s_binding_t *bindings;         /* bound names */
    router_inproc_relay_t *relay;  /* carries every connection (faulty namespaces), or NULL */
};

static router_inproc_t s_default = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL};

router_inproc_t *router_inproc_new(void)
{
    router_inproc_t *self = calloc(1, sizeof *self);
    if (self)
        pthread_mutex_init(&self->mu, NULL);
    return self;
}

router_inproc_t *router_inproc_new_faulty(void)
{
    router_inproc_t *self = router_inproc_new();
    if (self && !(self->relay = router_inproc_relay_new())) {
        int e = errno;
        router_inproc_destroy(&self);
        errno = e;
    }
    return self;
}

router_inproc_t *router_inproc_default(void)
{
    return &s_default;
}

void router_inproc_destroy(router_inproc_t **self_p)
{
    if (!self_p || !*self_p || *self_p == &s_default)
        return;
    router_inproc_t *self = *self_p;
    router_inproc_relay_destroy(&self->relay);
    while (self->bindings) {
        s_binding_t *b = self->bindings;
        self->bindings = b->next;
        free(b);
    }
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

static s_binding_t **s_find(router_inproc_t *self, const char *name)
{
    s_binding_t **p = &self->bindings;
    while (*p && strcmp((*p)->name, name) != 0)
        p = &(*p)->next;
    return p;
}

int router_inproc_bind(router_inproc_t *self, const char *name, router_inproc_accept_fn *fn,
                       void *ud)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > ROUTER_INPROC_NAME_MAX || !fn) {
        errno = EINVAL;
        return -1;
    }
    int rc = -1;
    pthread_mutex_lock(&self->mu);
    if (*s_find(self, name)) {
        errno = EADDRINUSE;
        goto done;
    }
    s_binding_t *b = calloc(1, sizeof *b);
    if (!b) {
        errno = ENOMEM;
        goto done;
    }
    memcpy(b->name, name, len + 1);
    b->fn = fn;
    b->ud = ud;
    b->next = self->bindings;
    self->bindings = b;
    rc = 0;
done:
    pthread_mutex_unlock(&self->mu);
    return rc;
}

void router_inproc_unbind(router_inproc_t *self, const char *name)
{
    pthread_mutex_lock(&self->mu);
    s_binding_t **p = s_find(self, name);
    if (*p) {
        s_binding_t *b = *p;
        *p = b->next;
        free(b);
    }
    pthread_mutex_unlock(&self->mu);
}

int router_inproc_dial(router_inproc_t *self, const char *name)
{
    return router_inproc_dial_from(self, NULL, name);
}

int router_inproc_dial_from(router_inproc_t *self, const char *from, const char *name)
{
    int fds[2] = {-1, -1};
    int relayed[2] = {-1, -1}; /* faulty: the dialer's pair, ours then theirs */
    int rc = -1;
    pthread_mutex_lock(&self->mu);
    s_binding_t *b = *s_find(self, name);
    if (!b) {
        errno = ECONNREFUSED;
        goto done;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
        goto done;
    if (self->relay &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, relayed) != 0) {
        close(fds[0]);
        close(fds[1]);
        goto done;
    }
    /* Held across the call so unbind cannot race a half-made connection. */
    if (b->fn(fds[1], b->ud) != 0) {
        close(fds[0]);
        close(fds[1]);
        if (self->relay) {
            close(relayed[0]);
            close(relayed[1]);
        }
        errno = ECONNREFUSED;
        goto done;
    }
    if (!self->relay) {
        rc = fds[0];
        goto done;
    }
    /* dialer <-> relayed[1] | relay | fds[0] <-> acceptor */
    if (router_inproc_relay_add(self->relay, relayed[1], fds[0], from, name) != 0) {
        close(relayed[0]); /* the acceptor sees its end close */
        goto done;
    }
    rc = relayed[0];
done:
    pthread_mutex_unlock(&self->mu);
    return rc;
}

int router_inproc_set_faults(router_inproc_t *self, const char *a, const char *b,
                             bool partitioned, uint32_t delay_ms)
{
    if (!self->relay || delay_ms > ROUTER_INPROC_DELAY_MAX) {
        errno = EINVAL;
        return -1;
    }
    return router_inproc_relay_set(self->relay, a, b, partitioned, delay_ms);
}

int router_inproc_get_faults(router_inproc_t *self, const char *a, const char *b,
                             bool *partitioned, uint32_t *delay_ms)
{
    if (!self->relay) {
        errno = EINVAL;
        return -1;
    }
    router_inproc_relay_get(self->relay, a, b, partitioned, delay_ms);
    return 0;
}

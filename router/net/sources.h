/* router/net/sources.h — connections counted per source address, for the
 * bounds that keep one client from taking what others need (DESIGN §10,
 * spec/WIRE.md §9.1, §11.3). A source is an IPv4 address (an IPv4-mapped
 * IPv6 address counts as the IPv4 one), an IPv6 address's /64 (what one
 * site, or one attacker, is handed), or for a Unix socket the listener
 * (its peers have no address: they share one source); a connection with
 * neither (in-process) has no source and is never counted. Sources are
 * kept apart by a class the caller chooses (comms, plain events, HTTP).
 * Loop thread only. */
#ifndef KITH_ROUTER_SOURCES_H
#define KITH_ROUTER_SOURCES_H

#include <stddef.h>

#include "router/net/conn.h"
#include "router/net/listen.h"

typedef struct router_sources router_sources_t;
typedef struct router_source router_source_t;

/* `expect`: about how many sources are counted at once (sizes the table;
 * it never grows). NULL on allocation failure. Caller owns the result;
 * destroy it once every source was released. */
router_sources_t *router_sources_new(size_t expect);
void router_sources_destroy(router_sources_t **self_p);

typedef enum {
    ROUTER_SOURCES_COUNTED = 0, /* *out is the source, counted once more */
    ROUTER_SOURCES_NONE,        /* conn has no source: not counted, *out NULL */
    ROUTER_SOURCES_FULL,        /* its source already has `cap`: not counted */
    ROUTER_SOURCES_NOMEM,       /* no memory for a new source: not counted */
} router_sources_add_t;

/* Counts conn, which came through `listener` (NULL: an in-process
 * connection, which has no source), against its source of `klass`, unless
 * that source already has `cap`. */
router_sources_add_t router_sources_add(router_sources_t *self, const router_conn_t *conn,
                                        const router_listener_t *listener, unsigned klass,
                                        unsigned cap, router_source_t **out)
    __attribute__((warn_unused_result));

/* Takes one count off *source_p (freed at zero) and nulls it. NULL: nothing. */
void router_sources_release(router_sources_t *self, router_source_t **source_p);

/* The source conn (through `listener`) counts against in `klass`, or NULL
 * when it has none or none is counted yet. Counts nothing; the result is
 * borrowed, valid until its last count is released. */
router_source_t *router_sources_find(router_sources_t *self, const router_conn_t *conn,
                                     const router_listener_t *listener, unsigned klass);

/* Two pointers kept with a source for the counting module's own list of
 * what it counted there (the guard: the source's unauthenticated comms
 * connections, oldest first, so it finds its victim among the source's
 * own, not by walking everyone's). Both NULL when the source is new; the
 * caller must have emptied the list before the last count is released. */
typedef struct {
    void *head; /* the caller's first entry */
    void *tail; /* the caller's last entry */
} router_source_list_t;

router_source_list_t *router_source_list(router_source_t *source);

#endif

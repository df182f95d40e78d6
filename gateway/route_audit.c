/* gateway/route_audit.c — GET /api/audit and GET /api/audit/verify (DESIGN
 * §5, WIRE §21.8): bearer-protected, answered by the audit worker through
 * the broker (audit-query, audit-verify), so the loop never reads the log
 * itself; the HTTP answer is deferred until the worker's FINAL, bounded by
 * a timeout.
 *
 * The worker that answers also writes the log, one request at a time, so
 * what readers may put before the router's appends is bounded: at most
 * GATEWAY_AUDIT_QUERIES_MAX queries at the worker at once, and one verify (it reads
 * every kept file), whose answer every verify asked meanwhile shares. A
 * client with a token cannot hold the log's writes back and so keep its
 * own actions out of the log. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/routes_audit.h"
#include "proto/audit_msg.h"
#include "router/log.h"

#define S_WAITERS_MAX 256u          /* answers waiting for the worker */
#define S_TIMEOUT_MS 15000u         /* then 503 */
#define S_LIMIT_DEFAULT 100u

typedef struct s_waiter {
    gateway_route_audit_t *owner;
    gateway_http_pending_t *pending;
    int64_t request;                /* broker handle */
    uint64_t timer;                 /* the timeout, then the answer */
    bool got;                       /* the reply is in: answered from a timer */
    int kind;                       /* its kind (1 FINAL, -1 lost, -2 not kept: no memory) */
    uint8_t *body;                  /* its body (heap) */
    size_t len;
    bool query;                     /* an audit-query: counted in `queries` */
    bool follows;                   /* a verify sharing `verifying`'s answer: nothing sent */
    struct s_waiter *prev, *next;
} s_waiter_t;

struct gateway_route_audit {
    router_loop_t *loop;
    router_broker_t *broker;        /* NULL: audit is off */
    gateway_auth_t *auth;
    s_waiter_t *waiters;
    size_t nwaiters;
    size_t queries;                 /* audit-query requests at the worker */
    s_waiter_t *verifying;          /* the audit-verify at the worker, or NULL */
};

/* ---------------------------------------------------------------- waiters */

static void s_finish(s_waiter_t *w)
{
    gateway_route_audit_t *self = w->owner;
    if (w->prev)
        w->prev->next = w->next;
    else
        self->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    self->nwaiters--;
    if (w->query)
        self->queries--;
    if (self->verifying == w)
        self->verifying = NULL;
    if (w->timer)
        (void) router_loop_timer_cancel(self->loop, w->timer);
    gateway_http_pending_end(&w->pending);
    free(w->body);
    free(w);
}

static void s_unavailable(gateway_http_res_t *res, const char *why)
{
    (void) gateway_http_respond_error(res, 503, "audit_unavailable", why);
}

static void s_answer(gateway_http_res_t *res, const proto_audit_msg_t *m);

/* Answers w with m, or 503 `why` when m is NULL, and lets it go; when w
 * is the verify at the worker, every verify waiting on it gets the same. */
static void s_reply_all(s_waiter_t *w, const proto_audit_msg_t *m, const char *why)
{
    gateway_route_audit_t *self = w->owner;
    bool leads = self->verifying == w;
    for (s_waiter_t *f = self->waiters, *next; f; f = next) {
        next = f->next;
        if (f == w || (leads && f->follows)) {
            gateway_http_res_t *res = gateway_http_pending_res(f->pending);
            if (m)
                s_answer(res, m);
            else
                s_unavailable(res, why);
            s_finish(f);
        }
    }
}

static void s_on_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_waiter_t *w = ud;
    w->timer = 0;
    router_broker_cancel(w->owner->broker, w->request);
    s_reply_all(w, NULL, "the audit worker did not answer in time");
}

/* Appends s JSON-escaped and quoted. */
static void s_json_str(char **p, const char *s, size_t n)
{
    char *w = *p;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char) c;
        } else if (c < 0x20) {
            w += sprintf(w, "\\u%04x", c);
        } else {
            *w++ = (char) c;
        }
    }
    *w++ = '"';
    *p = w;
}

static void s_answer(gateway_http_res_t *res, const proto_audit_msg_t *m)
{
    if (m->kind == PROTO_AUDIT_RECORDS) {
        /* Each record is a JSON object already: they go in as they are. */
        size_t cap = 48;
        for (size_t i = 0; i < m->n_records; i++)
            cap += m->records[i].len + 1;
        char *body = malloc(cap), *w = body;
        if (!body) {
            s_unavailable(res, "out of memory");
            return;
        }
        w += sprintf(w, "{\"records\":[");
        for (size_t i = 0; i < m->n_records; i++) {
            if (i)
                *w++ = ',';
            memcpy(w, m->records[i].p, m->records[i].len);
            w += m->records[i].len;
        }
        strcpy(w, m->partial ? "],\"partial\":true}" : "]}");
        (void) gateway_http_respond_json(res, 200, body);
        free(body);
    } else if (m->kind == PROTO_AUDIT_VERIFIED) {
        /* The longest answer: {"ok":false (11), then "records", "first_bad",
         * "files" and "first_seq" with 20 digits each (31 + 33 + 29 + 33),
         * ,"reason": (10) with a reason of control bytes, each \u00XX (6),
         * quoted (2), "}" and the NUL (2): 151 + 6 * PROTO_AUDIT_REASON_MAX. */
        char body[160 + 6 * PROTO_AUDIT_REASON_MAX], *w = body;
        w += sprintf(w, "{\"ok\":%s,\"records\":%llu", m->ok ? "true" : "false",
                     (unsigned long long) m->checked);
        if (m->has_first_bad)
            w += sprintf(w, ",\"first_bad\":%llu", (unsigned long long) m->first_bad);
        if (m->files)
            w += sprintf(w, ",\"files\":%llu", (unsigned long long) m->files);
        if (m->has_first_seq)
            w += sprintf(w, ",\"first_seq\":%llu", (unsigned long long) m->first_seq);
        if (m->reason) {
            w += sprintf(w, ",\"reason\":");
            s_json_str(&w, m->reason, m->reason_len);
        }
        strcpy(w, "}");
        (void) gateway_http_respond_json(res, 200, body);
    } else if (m->kind == PROTO_AUDIT_ERROR) {
        char why[PROTO_AUDIT_REASON_MAX + 64];
        snprintf(why, sizeof why, "the audit worker failed (%s): %s", m->code, m->reason);
        s_unavailable(res, why);
    } else {
        s_unavailable(res, "the audit worker answered something else");
    }
}

static void s_on_answer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_waiter_t *w = ud;
    w->timer = 0;
    proto_audit_msg_t m;
    proto_audit_err_t e;
    /* Kith's own shortage is told as such, not blamed on the worker. */
    if (w->kind == -2)
        s_reply_all(w, NULL, "out of memory");
    else if (w->kind < 0)
        s_reply_all(w, NULL, "the audit worker went away");
    else if (proto_audit_msg_decode(w->body, w->len, &m, &e) != 0)
        s_reply_all(w, NULL, e == PROTO_AUDIT_E_NO_MEMORY ? "out of memory"
                                                           : "the audit worker's answer is unreadable");
    else {
        s_reply_all(w, &m, NULL);
        proto_audit_msg_clear(&m);
    }
}

/* The reply is kept and answered from a timer, off the broker's drain;
 * with no timer to be had it is answered at once (the broker never calls
 * this inside router_broker_request, so s_ask is done with w): with its
 * timeout cancelled, or never armed, nothing else would answer it. */
static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    s_waiter_t *w = ud;
    if (kind == 0 || w->got)
        return;
    w->got = true;
    w->kind = kind;
    if (kind > 0 && (w->body = malloc(len ? len : 1))) {
        memcpy(w->body, body, len);
        w->len = len;
    } else {
        w->kind = kind > 0 ? -2 : -1;
    }
    if (w->timer)
        (void) router_loop_timer_cancel(w->owner->loop, w->timer);
    if (!(w->timer = router_loop_timer_add(w->owner->loop, 0, s_on_answer, w)))
        s_on_answer(w->owner->loop, 0, w);
}

/* Sends `req` to the worker and defers the answer. */
static void s_ask(gateway_route_audit_t *self, gateway_http_res_t *res, const proto_audit_msg_t *req)
{
    if (!self->broker) {
        s_unavailable(res, "the audit log is off (audit.enabled is false)");
        return;
    }
    if (self->nwaiters >= S_WAITERS_MAX) {
        s_unavailable(res, "too many audit requests waiting");
        return;
    }
    bool verify = req->kind == PROTO_AUDIT_VERIFY;
    bool follows = verify && self->verifying;
    if (!verify && self->queries >= GATEWAY_AUDIT_QUERIES_MAX) {
        s_unavailable(res, "the audit worker is busy with other queries: try again");
        return;
    }
    uint8_t *body = NULL;
    size_t len = 0;
    proto_audit_err_t e;
    s_waiter_t *w = calloc(1, sizeof *w);
    if (!w || (!follows && proto_audit_msg_encode(req, &body, &len, &e) != 0) ||
        !(w->pending = gateway_http_res_defer(res))) {
        free(w);
        free(body);
        s_unavailable(res, "out of memory");
        return;
    }
    w->owner = self;
    w->next = self->waiters;
    if (w->next)
        w->next->prev = w;
    self->waiters = w;
    self->nwaiters++;
    if (follows) { /* answered with the verify under way, within its timeout */
        w->follows = true;
        return;
    }
    w->query = !verify;
    if (w->query)
        self->queries++;
    else
        self->verifying = w;
    errno = 0; /* the broker sets it only when out of memory */
    w->request = router_broker_request(self->broker, ROUTER_AUDIT_SERVICE, body, len, s_on_reply, w);
    bool nomem = errno == ENOMEM;
    free(body);
    if (w->request <= 0) {
        s_reply_all(w, NULL, nomem ? "out of memory" : "the audit worker's queue is full");
        return;
    }
    if (!w->got && !(w->timer = router_loop_timer_add(self->loop, S_TIMEOUT_MS, s_on_timeout, w)))
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "no timer for an /api/audit answer: it waits for the worker");
}

/* ---------------------------------------------------------------- routes */

/* The value of `name` in the query (as sent, not percent-decoded), or NULL. */
static const char *s_param(proto_http_slice_t q, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *p = q.ptr, *end = q.ptr ? q.ptr + q.len : NULL;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t) (end - p));
        const char *stop = amp ? amp : end;
        if ((size_t) (stop - p) > nl && !memcmp(p, name, nl) && p[nl] == '=') {
            *len = (size_t) (stop - p - nl - 1);
            return p + nl + 1;
        }
        p = amp ? amp + 1 : end;
    }
    return NULL;
}

static int s_param_u64(proto_http_slice_t q, const char *name, uint64_t max, bool *has, uint64_t *out)
{
    size_t n;
    const char *v = s_param(q, name, &n);
    *has = v != NULL;
    if (!v)
        return 0;
    if (n == 0 || n > 20)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9' || x > (UINT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (uint64_t) (v[i] - '0');
    }
    if (x > max)
        return -1;
    *out = x;
    return 0;
}

static void s_query(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_audit_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    proto_audit_msg_t q = {.kind = PROTO_AUDIT_QUERY, .limit = S_LIMIT_DEFAULT};
    bool has;
    uint64_t v = 0;
    if (s_param_u64(req->query, "limit", PROTO_AUDIT_LIMIT_MAX, &has, &v) != 0) {
        (void) gateway_http_respond_error(res, 400, "bad_limit", "limit is a number from 0 to 1000");
        return;
    }
    if (has)
        q.limit = (uint32_t) v;
    if (s_param_u64(req->query, "since", UINT64_MAX, &q.has_since, &q.since_ms) != 0) {
        (void) gateway_http_respond_error(res, 400, "bad_since", "since is Unix time in ms");
        return;
    }
    size_t tl;
    const char *t = s_param(req->query, "event_type", &tl);
    char type[PROTO_AUDIT_TYPE_MAX + 1];
    if (t) {
        bool ok = tl >= 1 && tl <= PROTO_AUDIT_TYPE_MAX;
        for (size_t i = 0; ok && i < tl; i++)
            ok = (t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z') ||
                 (t[i] >= '0' && t[i] <= '9') || t[i] == '_' || t[i] == '.' || t[i] == '-';
        if (!ok) {
            (void) gateway_http_respond_error(res, 400, "bad_event_type",
                                              "event_type is 1 to 64 of [A-Za-z0-9_.-]");
            return;
        }
        memcpy(type, t, tl);
        type[tl] = '\0';
        q.event_type = type;
        q.event_type_len = tl;
    }
    s_ask(self, res, &q);
}

static void s_verify(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_audit_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    proto_audit_msg_t v = {.kind = PROTO_AUDIT_VERIFY};
    s_ask(self, res, &v);
}

gateway_route_audit_t *gateway_route_audit_new(gateway_http_t *g, router_loop_t *loop,
                                               router_broker_t *broker, gateway_auth_t *auth)
{
    gateway_route_audit_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    *self = (gateway_route_audit_t){.loop = loop, .broker = broker, .auth = auth};
    if (gateway_http_route(g, "GET", "/api/audit", s_query, self) != 0 ||
        gateway_http_route(g, "GET", "/api/audit/verify", s_verify, self) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

size_t gateway_route_audit_waiting(const gateway_route_audit_t *self)
{
    return self->nwaiters;
}

void gateway_route_audit_destroy(gateway_route_audit_t **self_p)
{
    gateway_route_audit_t *self = *self_p;
    if (!self)
        return;
    while (self->waiters) {
        s_waiter_t *w = self->waiters;
        if (w->request > 0)
            router_broker_cancel(self->broker, w->request);
        s_unavailable(gateway_http_pending_res(w->pending), "the daemon is stopping");
        s_finish(w);
    }
    free(self);
    *self_p = NULL;
}

/* audit/worker.c — the audit worker: a thread that takes audit requests
 * from the broker, carries them out on the chain and answers each with one
 * FINAL (WIRE §21.6). See worker.h. */
#include "audit/worker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "proto/audit_msg.h"
#include "proto/utf8.h"
#include "router/log.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"
#include "router/thread.h"

#define S_SERVICE "kith.audit"
/* Room kept in an audit-records body for CBOR heads and keys. */
#define S_RECORDS_OVERHEAD (32u * 1024u)

struct audit_worker {
    audit_chain_t *chain;          /* the log; the thread's alone once it runs */
    audit_key_t key;               /* for verify (the chain keeps its own copy) */
    uint64_t query_scan_max;       /* log bytes one query reads; 0: no bound */
    router_mdp_worker_t *mdp;      /* made and destroyed on the thread */
    router_mdp_worker_opts_t mo;   /* how to connect */
    char *endpoint;
    char *curve_key;
    pthread_t thread;
    bool thread_started;
    /* start handshake: the thread says whether its worker connected */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state;                     /* 0 starting, 1 serving, -1 failed */
    char err[256];
    uint8_t *oom_reply;            /* audit_error no_memory, made at start for when no
                                    * reply can be made: a request never goes unanswered */
    size_t oom_reply_len;
};

/* ---------------------------------------------------------------- replies */

static uint8_t *s_encode(const proto_audit_msg_t *m, size_t *len)
{
    uint8_t *out = NULL;
    proto_audit_err_t e;
    if (proto_audit_msg_encode(m, &out, len, &e) != 0)
        return NULL;
    return out;
}

/* Cuts s to at most max bytes on a code point boundary. */
static size_t s_utf8_cut(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return n;
    while (max > 0 && ((unsigned char) s[max] & 0xC0) == 0x80)
        max--;
    return max;
}

static uint8_t *s_error(const char *code, const char *message, size_t *len)
{
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_ERROR, .code = code, .code_len = strlen(code),
                           .reason = message, .reason_len = s_utf8_cut(message, PROTO_AUDIT_REASON_MAX)};
    if (!proto_utf8_valid((const uint8_t *) message, m.reason_len))
        m.reason_len = 0;
    return s_encode(&m, len);
}

static const char *s_code(audit_err_t e)
{
    switch (e) {
    case AUDIT_E_IO:        return "io";
    case AUDIT_E_EVENT:     return "event";
    case AUDIT_E_BROKEN:    return "broken";
    case AUDIT_E_NO_MEMORY: return "no_memory";
    case AUDIT_OK:          break;
    }
    return "io";
}

/* ---------------------------------------------------------------- append */

/* A stand-in for an event the chain refused (a detail that is not a JSON
 * object, say): the record says what came and why, so nothing handed to the
 * worker disappears without a trace. Returns a heap detail or NULL. */
static char *s_refused_detail(const proto_audit_event_t *ev, const char *why, size_t *len)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return NULL;
    const char *type = proto_utf8_valid((const uint8_t *) ev->type, ev->type_len) ? ev->type : "?";
    size_t type_len = type == ev->type ? ev->type_len : 1;
    yajl_gen_map_open(g);
    yajl_gen_string(g, (const unsigned char *) "type", 4);
    yajl_gen_string(g, (const unsigned char *) type, type_len);
    yajl_gen_string(g, (const unsigned char *) "reason", 6);
    yajl_gen_string(g, (const unsigned char *) why, strlen(why));
    yajl_gen_map_close(g);
    const unsigned char *buf;
    char *out = NULL;
    if (yajl_gen_get_buf(g, &buf, len) == yajl_gen_status_ok && (out = malloc(*len + 1))) {
        memcpy(out, buf, *len);
        out[*len] = '\0';
    }
    yajl_gen_free(g);
    return out;
}

/* The audit_appended replies a batch may get, encoded before it is written:
 * once its records are durable, a reply that could not be encoded (no
 * memory) would be a no_memory error, and the router would send the batch
 * again and have it written twice. It starts at the next seq, or one later
 * when a rotation opens a new log with its audit_rotated record. */
#define S_FIRST_SEQS 2

static uint8_t *s_append(audit_chain_t *chain, const proto_audit_msg_t *req, size_t *len)
{
    uint64_t first = 0, next = audit_chain_last_seq(chain) + 1;
    uint8_t *ready[S_FIRST_SEQS] = {0};
    size_t ready_len[S_FIRST_SEQS] = {0};
    uint8_t *out = NULL;
    for (size_t i = 0; i < S_FIRST_SEQS; i++) {
        proto_audit_msg_t m = {.kind = PROTO_AUDIT_APPENDED, .first_seq = next + i,
                               .count = req->n_events};
        if (!(ready[i] = s_encode(&m, &ready_len[i])))
            goto done; /* nothing written: the thread answers no_memory */
    }
    audit_error_t err = {0};
    if (audit_chain_append(chain, req->events, req->n_events, &first, &err) == 0)
        goto appended;
    if (err.code != AUDIT_E_EVENT) {
        out = s_error(s_code(err.code), err.msg, len);
        goto done;
    }
    err = (audit_error_t){.code = AUDIT_E_NO_MEMORY};
    snprintf(err.msg, sizeof err.msg, "out of memory");
    /* Some event was refused: append the batch with each refused event
     * replaced by an "audit_event_refused" record. */
    {
        size_t n = req->n_events;
        proto_audit_event_t *evs = calloc(n, sizeof *evs);
        char **owned = calloc(n, sizeof *owned);
        char *line = malloc(AUDIT_LINE_MAX);
        int rc = -1;
        if (!evs || !owned || !line)
            goto fixed;
        for (size_t i = 0; i < n; i++) {
            uint8_t hash[AUDIT_HASH_LEN];
            char why[160];
            evs[i] = req->events[i];
            if (audit_record_format(1, &evs[i], audit_genesis, NULL, line, AUDIT_LINE_MAX, hash, why,
                                    sizeof why) >= 0)
                continue;
            size_t dlen;
            if (!(owned[i] = s_refused_detail(&evs[i], why, &dlen)))
                goto fixed;
            evs[i].type = "audit_event_refused";
            evs[i].type_len = strlen(evs[i].type);
            evs[i].detail = owned[i];
            evs[i].detail_len = dlen;
            ROUTER_LOG(ROUTER_LOG_WARN, "audit", "event %zu of a batch refused (%s): recorded as "
                       "audit_event_refused", i, why);
        }
        rc = audit_chain_append(chain, evs, n, &first, &err);
    fixed:
        for (size_t i = 0; owned && i < n; i++)
            free(owned[i]);
        free(owned);
        free(evs);
        free(line);
        if (rc != 0) {
            out = s_error(s_code(err.code), err.msg, len);
            goto done;
        }
    }
appended:
    if (first - next < S_FIRST_SEQS) {
        out = ready[first - next];
        *len = ready_len[first - next];
        ready[first - next] = NULL;
    } else { /* not reached: a batch starts where the chain or a rotation left it */
        proto_audit_msg_t m = {.kind = PROTO_AUDIT_APPENDED, .first_seq = first,
                               .count = req->n_events};
        out = s_encode(&m, len);
    }
done:
    for (size_t i = 0; i < S_FIRST_SEQS; i++)
        free(ready[i]);
    return out;
}

/* ---------------------------------------------------------------- query, verify */

static uint8_t *s_query(audit_chain_t *chain, const proto_audit_msg_t *req, uint64_t scan_max,
                        size_t *len)
{
    audit_query_t q = {.limit = req->limit, .type = req->event_type, .has_since = req->has_since,
                       .since_ms = req->since_ms, .bytes_max = PROTO_AUDIT_MSG_MAX - S_RECORDS_OVERHEAD,
                       .scan_max = scan_max};
    audit_lines_t lines;
    audit_error_t err = {0};
    if (audit_chain_query(audit_chain_path(chain), &q, &lines, &err) != 0)
        return s_error(s_code(err.code), err.msg, len);
    proto_audit_text_t *t = lines.n ? calloc(lines.n, sizeof *t) : NULL;
    uint8_t *out = NULL;
    if (lines.n && !t)
        goto done;
    for (size_t i = 0; i < lines.n; i++)
        t[i] = (proto_audit_text_t){lines.lines[i], lines.lens[i]};
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_RECORDS, .records = t, .n_records = lines.n,
                           .partial = lines.partial};
    out = s_encode(&m, len);
done:
    free(t);
    audit_lines_free(&lines);
    return out;
}

static uint8_t *s_verify(audit_chain_t *chain, const audit_key_t *key, size_t *len)
{
    audit_verify_opts_t vo = {.key = key};
    audit_verify_result_t r;
    int rc = audit_chain_verify(audit_chain_path(chain), &vo, &r);
    if (rc != 0 && r.no_memory) /* no verdict: the log may well be intact */
        return s_error("no_memory", r.detail, len);
    char reason[AUDIT_ERR_MAX + 32];
    snprintf(reason, sizeof reason, "%s: %s", audit_verify_reason_str(r.reason), r.detail);
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_VERIFIED, .ok = rc == 0, .checked = r.records,
                           .has_first_bad = r.has_first_bad, .first_bad = r.first_bad,
                           .files = r.files, .has_first_seq = rc == 0 && r.first_seq > 0,
                           .first_seq = r.first_seq};
    if (rc != 0) {
        m.reason = reason;
        m.reason_len = s_utf8_cut(reason, PROTO_AUDIT_REASON_MAX);
        if (!proto_utf8_valid((const uint8_t *) reason, m.reason_len))
            m.reason_len = strlen(audit_verify_reason_str(r.reason));
    }
    return s_encode(&m, len);
}

uint8_t *audit_worker_handle(audit_chain_t *chain, const audit_key_t *key, uint64_t query_scan_max,
                             const uint8_t *body,
                             size_t len, size_t *out_len)
{
    proto_audit_msg_t req;
    proto_audit_err_t e;
    if (proto_audit_msg_decode(body, len, &req, &e) != 0) {
        /* Out of memory is this worker's state, not the request's fault:
         * bad_request would make the router drop the batch for good
         * (WIRE §21.7), no_memory has it sent again. */
        if (e == PROTO_AUDIT_E_NO_MEMORY)
            return s_error("no_memory", "out of memory", out_len);
        char why[96];
        snprintf(why, sizeof why, "not an audit request: %s", proto_audit_err_str(e));
        return s_error("bad_request", why, out_len);
    }
    uint8_t *out;
    switch (req.kind) {
    case PROTO_AUDIT_APPEND: out = s_append(chain, &req, out_len); break;
    case PROTO_AUDIT_QUERY:  out = s_query(chain, &req, query_scan_max, out_len); break;
    case PROTO_AUDIT_VERIFY: out = s_verify(chain, key, out_len); break;
    default:
        out = s_error("bad_request", "a reply, not a request", out_len);
        break;
    }
    proto_audit_msg_clear(&req);
    return out;
}

/* ---------------------------------------------------------------- thread */

static void s_state(audit_worker_t *self, int state)
{
    pthread_mutex_lock(&self->lock);
    self->state = state;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
}

static void *s_main(void *arg)
{
    audit_worker_t *self = arg;
    router_thread_bulk("kith-audit");
    self->mdp = router_mdp_worker_new(&self->mo, self->err, sizeof self->err);
    s_state(self, self->mdp ? 1 : -1);
    if (!self->mdp)
        return NULL;
    for (;;) {
        uint8_t *body = NULL;
        size_t len = 0;
        int rc = router_mdp_worker_recv(self->mdp, &body, &len, -1);
        if (rc == -1)
            break;
        if (rc <= 0)
            continue; /* 0: nothing yet; -2: a request given up below, answered there */
        size_t out_len = 0;
        uint8_t *out =
            audit_worker_handle(self->chain, &self->key, self->query_scan_max, body, len, &out_len);
        free(body);
        if (!out)
            out = s_error("no_memory", "out of memory", &out_len);
        /* Even that may not be made: the copy made at start goes instead,
         * so the router's feed is told (and sends the batch again) rather
         * than waiting with it in flight. */
        const uint8_t *reply = out ? out : self->oom_reply;
        size_t reply_len = out ? out_len : self->oom_reply_len;
        if (router_mdp_worker_final(self->mdp, reply, reply_len) != 0)
            ROUTER_LOG(ROUTER_LOG_WARN, "audit", "cannot send a reply to the broker");
        free(out);
    }
    pthread_mutex_lock(&self->lock); /* stop may be interrupting it */
    router_mdp_worker_t *mdp = self->mdp;
    self->mdp = NULL;
    pthread_mutex_unlock(&self->lock);
    router_mdp_worker_destroy(&mdp);
    return NULL;
}

audit_worker_t *audit_worker_start(const audit_worker_opts_t *o, char *err, size_t errcap)
{
    audit_worker_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->query_scan_max = o->query_scan_max;
    if (!(self->oom_reply = s_error("no_memory", "out of memory", &self->oom_reply_len))) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    if (audit_key_from_env(&self->key, o->hmac_key_env, err, errcap) != 0)
        goto fail;
    audit_chain_opts_t co = {.path = o->path, .key = &self->key, .sync = o->sync, .sync_ud = o->sync_ud,
                             .rotate_bytes = o->rotate_bytes, .keep = o->keep};
    audit_error_t ce = {0};
    if (!(self->chain = audit_chain_open(&co, &ce))) {
        snprintf(err, errcap, "%s", ce.msg);
        goto fail;
    }
    self->endpoint = strdup(o->endpoint ? o->endpoint : ROUTER_BROKER_INPROC);
    self->curve_key = o->curve_server_key ? strdup(o->curve_server_key) : NULL;
    if (!self->endpoint || (o->curve_server_key && !self->curve_key)) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    self->mo = (router_mdp_worker_opts_t){.endpoint = self->endpoint, .service = S_SERVICE,
                                          .heartbeat_ms = o->heartbeat_ms, .liveness = o->liveness,
                                          .curve_server_key = self->curve_key};
    /* Read before the thread starts: from then on the chain is its alone. */
    unsigned long long records = (unsigned long long) audit_chain_last_seq(self->chain);
    if (pthread_create(&self->thread, NULL, s_main, self) != 0) {
        snprintf(err, errcap, "cannot start the audit worker thread");
        goto fail;
    }
    self->thread_started = true;
    pthread_mutex_lock(&self->lock);
    while (self->state == 0)
        pthread_cond_wait(&self->cond, &self->lock);
    pthread_mutex_unlock(&self->lock);
    if (self->state < 0) {
        snprintf(err, errcap, "audit worker: %s", self->err);
        goto fail;
    }
    ROUTER_LOG(ROUTER_LOG_INFO, "audit", "worker serving %s on %s (%llu records%s)", o->path,
               self->endpoint, records, self->key.len ? ", HMAC on" : "");
    return self;
fail:
    audit_worker_stop(&self);
    return NULL;
}

void audit_worker_stop(audit_worker_t **self_p)
{
    audit_worker_t *self = *self_p;
    if (!self)
        return;
    if (self->thread_started) {
        pthread_mutex_lock(&self->lock);
        if (self->mdp)
            router_mdp_worker_interrupt(self->mdp);
        pthread_mutex_unlock(&self->lock);
        pthread_join(self->thread, NULL);
    }
    audit_chain_close(&self->chain);
    audit_key_clear(&self->key);
    free(self->endpoint);
    free(self->curve_key);
    free(self->oom_reply);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->cond);
    free(self);
    *self_p = NULL;
}

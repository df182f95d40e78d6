/* gateway/route_openclaw.c — `GET /` with Upgrade (DESIGN §5, WIRE §25):
 * OpenClaw's gateway protocol v4. A socket gets a connect.challenge, must
 * answer with `connect` (a kith bearer token and a device proof, checked by
 * gateway/openclaw_device.h), then gets hello-ok, tick events every
 * tick_ms and presence events, each event with the socket's own seq.
 * `agent` and `chat.send` become messages of a session of
 * router/workers/turns.h (one subscriber per session the socket uses), and
 * the session's turn frames become `agent` / `chat` events and the
 * `agent` request's final answer. What must survive a restart goes
 * through the token store (router/state/tokens.h, never SQLite on this
 * thread): the idempotency keys of runs (scope "openclaw") and the devices
 * that joined over loopback with the SHA-256 of their deviceToken (WIRE
 * §25.8); the answer that depends on a write goes out once it is durable. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "gateway/openclaw_device.h"
#include "gateway/openclaw_frame.h"
#include "gateway/routes_openclaw.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/net/addr.h"
#include "router/net/conn.h"

#define MOD "openclaw"
/* How often an aborted run waiting for its turn is looked at again. */
#define S_ABORT_POLL_MS 100u
/* The token store's idempotency scope of `agent` and `chat.send` keys. */
#define S_IDEM_SCOPE "openclaw"
/* What a key remembers while its run is in flight (then ok, error, …). */
#define S_IDEM_IN_FLIGHT "in_flight"
/* A deviceToken: the prefix and 64 lowercase hex (256 bits, s_device_token_make). */
#define S_DEVICE_TOKEN_PREFIX "kithdev_"
#define S_DEVICE_TOKEN_LEN (8u + 64u)

typedef struct s_conn s_conn_t;
typedef struct s_run s_run_t;

typedef enum { S_RUN_AGENT = 1, S_RUN_CHAT } s_kind_t;

/* One session a socket is attached to. */
typedef struct {
    s_conn_t *c;
    router_turns_sub_t sub;   /* 0: slot free */
    bool started;             /* session_start came: messages may be submitted */
    const char *failed_code;  /* the session could not be opened: the code (static), and */
    const char *failed_why;   /* why (static); no session_start will ever come for it */
    char key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];
    char foreign_turn[40];    /* the turn another client started that is relayed now */
    uint64_t foreign_seq;     /* its chat seq: from 0 per run, as for the socket's own */
} s_bind_t;

/* One `agent` or `chat.send`, from the request to the turn's end. */
struct s_run {
    s_conn_t *c;
    s_bind_t *b;
    s_kind_t kind;
    uint64_t serial;          /* unique in the endpoint */
    char run_id[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];  /* the idempotency key */
    char req_id[GATEWAY_OPENCLAW_ID_MAX + 1];       /* agent: answered again at the end */
    bool accepted;            /* its key is durable and the request was answered */
    char *message;            /* held until the session has started; then submitted */
    size_t message_len;
    bool submitted;
    uint64_t msg;             /* submitted: its message in the session's queue */
    char turn_id[40];         /* "" until its turn's first frame */
    bool abort_asked;
    const char *open_failed;  /* its session could not be opened before the run was
                               * answered: the code, ended once answered (static) */
    const char *open_why;     /* … and why (static) */
    bool stop_sent;           /* its turn was asked to stop */
    uint64_t seq;             /* chat / agent payload seq */
    uint64_t started_mono;
    char *text;               /* agent: the answer so far (bounded) */
    size_t text_len;
    bool text_over;           /* past GATEWAY_OPENCLAW_TEXT_MAX: no more kept */
    s_run_t *next;            /* the socket's runs, oldest first */
};

struct s_conn {
    gateway_openclaw_t *oc;
    uint64_t serial;          /* unique in the endpoint */
    gateway_ws_t *ws;
    bool closing;             /* not open: closed by us (gateway_ws_close, _end) or the gateway */
    bool ended;               /* gateway_ws_end was called: gone but for the flush */
    bool connected;           /* hello-ok sent */
    bool loopback;
    char conn_id[PROTO_UUID_TEXT_CAP];
    char nonce[65];
    char token_id[ROUTER_TOKENS_ID_LEN + 1]; /* the bearer token that let it in, "" for none */
    char client_addr[GATEWAY_AUTH_CLIENT_MAX];
    uint64_t seq;             /* last event seq sent */
    uint64_t presence_seen;   /* the presence_version its last presence list had */
    bool presence_in_tick;    /* a presence event went out since its last tick */
    uint64_t handshake_timer; /* until hello-ok; while accepting, the record's wait */
    uint64_t tick_timer;
    uint64_t abort_timer;     /* aborted runs still waiting for their turn */
    uint64_t connected_ms;
    gateway_openclaw_connect_t *hello; /* the accepted connect params */
    bool accepting;           /* connect passed; waiting for its device record */
    char accept_id[GATEWAY_OPENCLAW_ID_MAX + 1]; /* accepting: the connect's request id */
    unsigned scopes;          /* S_SCOPE_* granted */
    s_bind_t binds[GATEWAY_OPENCLAW_SESSIONS_MAX];
    s_run_t *runs;
    unsigned nruns;
    s_conn_t *prev, *next;
};

/* A token store write the endpoint waits for (a device record before
 * hello-ok, a run's key before its answer). The socket or run is found
 * again by serial when it is done: it may be gone by then. */
typedef struct s_wait {
    gateway_openclaw_t *oc;   /* NULL once the endpoint is destroyed */
    uint64_t serial;          /* the socket's or the run's */
    char req_id[GATEWAY_OPENCLAW_ID_MAX + 1];        /* connect: the request answered */
    char token[S_DEVICE_TOKEN_LEN + 1];              /* connect: the deviceToken, wiped */
    char device_id[ROUTER_TOKENS_DEVICE_ID_LEN + 1]; /* connect: whose record, "" for a run */
    char via[ROUTER_TOKENS_ID_LEN + 1];              /* connect: the bearer token earning it */
    struct s_wait *prev, *next;
} s_wait_t;

struct gateway_openclaw {
    gateway_http_t *g;
    router_loop_t *loop;
    gateway_openclaw_opts_t opts;
    s_conn_t *conns;
    uint32_t nconns, nconnected, nruns;
    uint64_t next_serial;
    uint64_t presence_version;
    char *presence_json;      /* {"presence":[…]} of presence_json_version, or NULL */
    uint64_t presence_json_version;
    uint64_t started_mono;
    router_tokens_t *tokens;  /* borrowed from opts.auth: keys and devices */
    s_wait_t *waits;          /* writes waited for */
    router_metric_t *m_conns;     /* kith_openclaw_sockets */
    router_metric_t *m_connected; /* kith_openclaw_connected */
    router_metric_t *m_runs;      /* kith_openclaw_runs */
};

/* The gauges, after any count changed. */
static void s_gauges(const gateway_openclaw_t *oc)
{
    router_metric_set(oc->m_conns, oc->nconns);
    router_metric_set(oc->m_connected, oc->nconnected);
    router_metric_set(oc->m_runs, oc->nruns);
}

/* The operator scopes (OpenClaw's closed set). */
enum {
    S_SCOPE_READ = 1u << 0, S_SCOPE_WRITE = 1u << 1, S_SCOPE_ADMIN = 1u << 2,
    S_SCOPE_APPROVALS = 1u << 3, S_SCOPE_QUESTIONS = 1u << 4, S_SCOPE_PAIRING = 1u << 5,
    S_SCOPE_TALK = 1u << 6, S_SCOPE_TALK_SECRETS = 1u << 7,
};
static const char *const s_scope_names[] = {
    "operator.read", "operator.write", "operator.admin", "operator.approvals",
    "operator.questions", "operator.pairing", "operator.talk", "operator.talk.secrets"};

static const char *const s_methods[] = {"agent", "chat.send", "chat.abort", "health",
                                        "system-presence"};
static const char *const s_events[] = {"connect.challenge", "tick", "presence", "agent", "chat"};

/* ---------------------------------------------------------------- JSON building */

static void s_gk(yajl_gen g, const char *k)
{
    (void) yajl_gen_string(g, (const unsigned char *) k, strlen(k));
}

static void s_gs(yajl_gen g, const char *k, const char *v)
{
    s_gk(g, k);
    (void) yajl_gen_string(g, (const unsigned char *) v, strlen(v));
}

static void s_gsn(yajl_gen g, const char *k, const char *v, size_t n)
{
    s_gk(g, k);
    (void) yajl_gen_string(g, (const unsigned char *) v, n);
}

static void s_gu(yajl_gen g, const char *k, uint64_t v)
{
    s_gk(g, k);
    (void) yajl_gen_integer(g, (long long) v);
}

static void s_gb(yajl_gen g, const char *k, bool v)
{
    s_gk(g, k);
    (void) yajl_gen_bool(g, v);
}

static yajl_gen s_gen_new(void)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g)
        (void) yajl_gen_config(g, yajl_gen_validate_utf8, 0);
    return g;
}

/* The generator's text as a new string (caller frees), or NULL; frees g. */
static char *s_gen_end(yajl_gen g)
{
    if (!g)
        return NULL;
    const unsigned char *buf;
    size_t n;
    char *out = NULL;
    if (yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok && (out = malloc(n + 1))) {
        memcpy(out, buf, n);
        out[n] = '\0';
    }
    yajl_gen_free(g);
    return out;
}

/* ---------------------------------------------------------------- sending */

static void s_close(s_conn_t *c, uint16_t code, const char *reason)
{
    if (c->ws && !c->closing) {
        c->closing = true;
        gateway_ws_close(c->ws, code, reason);
    }
}

/* An answer or an event could not be made (out of memory): the socket
 * closes, so the client's requests fail now instead of waiting on an
 * answer that will never come, and no event goes missing unseen. */
static void s_oom(s_conn_t *c)
{
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "socket %s: out of memory for a frame: closed", c->conn_id);
    s_close(c, 1011, "out of memory");
}

/* Sends json (taken; NULL: it could not be made). */
static void s_send(s_conn_t *c, char *json, size_t len)
{
    if (!json)
        s_oom(c);
    else if (c->ws && !c->closing)
        (void) gateway_ws_send(c->ws, true, json, len); /* a failure closes the socket later */
    free(json);
}

/* An event with the socket's next seq (none before hello-ok). */
static void s_event(s_conn_t *c, const char *event, const char *payload)
{
    if (!c->ws || c->closing)
        return;
    if (!payload) {
        s_oom(c);
        return;
    }
    size_t len;
    char *json = gateway_openclaw_event_encode(event, payload, c->connected ? ++c->seq : 0, &len);
    s_send(c, json, len);
}

static void s_res_ok(s_conn_t *c, const char *id, const char *payload)
{
    size_t len = 0;
    char *json = payload ? gateway_openclaw_res_ok_encode(id, payload, &len) : NULL;
    s_send(c, json, len);
}

static void s_res_error(s_conn_t *c, const char *id, const char *code, const char *message,
                        const char *details, bool retryable)
{
    size_t len = 0;
    char *json = gateway_openclaw_res_error_encode(id, code, message, details, retryable, NULL,
                                                   &len);
    s_send(c, json, len);
}

/* ---------------------------------------------------------------- presence */

static void s_presence_entry(yajl_gen g, const s_conn_t *c, const char *version)
{
    const gateway_openclaw_connect_t *h = c->hello;
    (void) yajl_gen_map_open(g);
    s_gs(g, "host", "kith");
    s_gs(g, "version", h->client_version[0] ? h->client_version : version);
    if (h->client_platform[0])
        s_gs(g, "platform", h->client_platform);
    if (h->client_device_family[0])
        s_gs(g, "deviceFamily", h->client_device_family);
    s_gs(g, "mode", h->client_mode);
    s_gs(g, "reason", "connect");
    s_gu(g, "ts", c->connected_ms);
    s_gu(g, "onlineSince", c->connected_ms);
    if (h->has_device)
        s_gs(g, "deviceId", h->device_id);
    if (h->client_instance_id[0])
        s_gs(g, "instanceId", h->client_instance_id);
    s_gk(g, "roles");
    (void) yajl_gen_array_open(g);
    (void) yajl_gen_string(g, (const unsigned char *) h->role, strlen(h->role));
    (void) yajl_gen_array_close(g);
    s_gk(g, "scopes");
    (void) yajl_gen_array_open(g);
    for (unsigned i = 0; i < sizeof s_scope_names / sizeof s_scope_names[0]; i++)
        if (c->scopes & (1u << i))
            (void) yajl_gen_string(g, (const unsigned char *) s_scope_names[i],
                                   strlen(s_scope_names[i]));
    (void) yajl_gen_array_close(g);
    (void) yajl_gen_map_close(g);
}

/* Every connected socket, as a JSON array written into g. */
static void s_presence_list(yajl_gen g, const gateway_openclaw_t *oc)
{
    (void) yajl_gen_array_open(g);
    for (const s_conn_t *c = oc->conns; c; c = c->next)
        if (c->connected)
            s_presence_entry(g, c, oc->opts.version);
    (void) yajl_gen_array_close(g);
}

static bool s_scope_has(const s_conn_t *c, unsigned need);

/* May c see who is connected? What `system-presence` needs (WIRE §25.3). */
static bool s_presence_reader(const s_conn_t *c)
{
    return c->connected && s_scope_has(c, S_SCOPE_READ | S_SCOPE_WRITE);
}

/* The payload {"presence":[…]} of the current presence_version, built
 * once per version however many sockets it goes to (owned by oc), or NULL
 * when out of memory. */
static const char *s_presence_payload(gateway_openclaw_t *oc)
{
    if (oc->presence_json && oc->presence_json_version == oc->presence_version)
        return oc->presence_json;
    free(oc->presence_json);
    oc->presence_json = NULL;
    yajl_gen g = s_gen_new();
    if (!g)
        return NULL;
    (void) yajl_gen_map_open(g);
    s_gk(g, "presence");
    s_presence_list(g, oc);
    (void) yajl_gen_map_close(g);
    oc->presence_json = s_gen_end(g);
    oc->presence_json_version = oc->presence_version;
    return oc->presence_json;
}

/* Sends c the current presence list, when it may read it and has not got
 * it yet. */
static void s_presence_send(s_conn_t *c)
{
    gateway_openclaw_t *oc = c->oc;
    if (!c->ws || c->closing || !s_presence_reader(c) || c->presence_seen == oc->presence_version)
        return;
    const char *payload = s_presence_payload(oc);
    if (!payload)
        return; /* out of memory: its next tick tries again */
    c->presence_seen = oc->presence_version;
    c->presence_in_tick = true;
    s_event(c, "presence", payload);
}

/* A socket joined or left. Each socket that may read presence gets at
 * most one presence event per tick interval (WIRE §25.3): at once when it
 * had none since its last tick, else right after its next tick (s_on_tick),
 * with the list as it is then. So N sockets joining cost each reader one
 * list per interval, never one per join (N² lists). */
static void s_presence_changed(gateway_openclaw_t *oc)
{
    oc->presence_version++;
    for (s_conn_t *c = oc->conns; c; c = c->next)
        if (!c->presence_in_tick)
            s_presence_send(c);
}

/* ---------------------------------------------------------------- waits */

static s_wait_t *s_wait_new(gateway_openclaw_t *oc, uint64_t serial)
{
    s_wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->oc = oc;
    w->serial = serial;
    w->next = oc->waits;
    if (oc->waits)
        oc->waits->prev = w;
    oc->waits = w;
    return w;
}

/* Unlinks and frees w; returns its endpoint (NULL: destroyed meanwhile). */
static gateway_openclaw_t *s_wait_end(s_wait_t *w)
{
    gateway_openclaw_t *oc = w->oc;
    if (oc) {
        if (w->prev)
            w->prev->next = w->next;
        else
            oc->waits = w->next;
        if (w->next)
            w->next->prev = w->prev;
    }
    sodium_memzero(w->token, sizeof w->token);
    free(w);
    return oc;
}

static s_conn_t *s_conn_by_serial(gateway_openclaw_t *oc, uint64_t serial)
{
    for (s_conn_t *c = oc->conns; c; c = c->next)
        if (c->serial == serial)
            return c;
    return NULL;
}

/* ---------------------------------------------------------------- runs */

static s_run_t *s_run_by_serial(const s_conn_t *c, uint64_t serial)
{
    for (s_run_t *r = c->runs; r; r = r->next)
        if (r->serial == serial)
            return r;
    return NULL;
}

/* A run of any socket, by serial. */
static s_run_t *s_run_find(gateway_openclaw_t *oc, uint64_t serial)
{
    for (s_conn_t *c = oc->conns; c; c = c->next) {
        s_run_t *r = s_run_by_serial(c, serial);
        if (r)
            return r;
    }
    return NULL;
}

/* True when a run of this process has idempotency key `key`. */
static bool s_run_live(gateway_openclaw_t *oc, const char *key)
{
    for (s_conn_t *c = oc->conns; c; c = c->next)
        for (s_run_t *r = c->runs; r; r = r->next)
            if (!strcmp(r->run_id, key))
                return true;
    return false;
}

/* Unlinks and frees a run. */
static void s_run_free(s_run_t *r)
{
    s_conn_t *c = r->c;
    for (s_run_t **pp = &c->runs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    c->nruns--;
    c->oc->nruns--;
    s_gauges(c->oc);
    free(r->message);
    free(r->text);
    free(r);
}

/* Ends a run: its idempotency key remembers `status` (durably, nobody
 * waits for it); frees it. */
static void s_run_end(s_run_t *r, const char *status)
{
    gateway_openclaw_t *oc = r->c->oc;
    size_t klen = strlen(r->run_id);
    uint64_t now = router_clock_wall_ms();
    if (router_tokens_idem_finish(oc->tokens, S_IDEM_SCOPE, r->run_id, klen, 200, status, now,
                                  NULL, NULL) != 0) {
        /* EAGAIN: not written (out of memory, a full write queue), and
         * the store has let go of the key, whose durable row says in
         * flight. Kept in memory at least, or a retry with the key would
         * start a second run of a run its client saw accepted. (EINVAL:
         * the key was let go for newer ones while its run went on.) */
        int e = errno;
        bool kept = e == EAGAIN &&
                    router_tokens_idem_settle(oc->tokens, S_IDEM_SCOPE, r->run_id, klen, 200,
                                              status, now + ROUTER_TOKENS_IDEM_TTL_MS) == 0;
        ROUTER_LOG(kept || e != EAGAIN ? ROUTER_LOG_DEBUG : ROUTER_LOG_WARN, MOD,
                   "run %s: its outcome is not written (%s)%s", r->run_id, strerror(e),
                   kept ? ": kept in memory" : "");
    }
    s_run_free(r);
}

/* The lifecycle and assistant streams of an `agent` run (WIRE §25). */
static void s_agent_event(s_run_t *r, const char *stream, const char *phase, const char *delta,
                          size_t delta_len, const char *error)
{
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(r->c);
        return;
    }
    (void) yajl_gen_map_open(g);
    s_gs(g, "runId", r->run_id);
    s_gu(g, "seq", r->seq++);
    s_gs(g, "stream", stream);
    s_gu(g, "ts", router_clock_wall_ms());
    s_gs(g, "sessionKey", r->b->key);
    if (delta) {
        /* Also the flat form agent front-ends read (issue 15): the run's
         * status and its text so far, beside OpenClaw's own `data`. */
        s_gs(g, "status", "streaming");
        if (!r->text_over)
            s_gsn(g, "text", r->text ? r->text : "", r->text_len);
    }
    s_gk(g, "data");
    (void) yajl_gen_map_open(g);
    if (phase)
        s_gs(g, "phase", phase);
    if (delta) {
        if (!r->text_over)
            s_gsn(g, "text", r->text ? r->text : "", r->text_len);
        s_gsn(g, "delta", delta, delta_len);
    }
    if (error)
        s_gs(g, "error", error);
    (void) yajl_gen_map_close(g);
    (void) yajl_gen_map_close(g);
    char *payload = s_gen_end(g);
    s_event(r->c, "agent", payload);
    free(payload);
}

/* A `chat` event of run_id in session key: state delta (text = deltaText),
 * final (text = the answer), aborted, or error (text = errorMessage). */
static void s_chat_event(s_conn_t *c, const char *run_id, const char *key, uint64_t seq,
                         const char *state, const char *text, size_t len, bool replace)
{
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(c);
        return;
    }
    (void) yajl_gen_map_open(g);
    s_gs(g, "runId", run_id);
    s_gs(g, "sessionKey", key);
    s_gu(g, "seq", seq);
    s_gs(g, "state", state);
    if (!strcmp(state, "delta")) {
        s_gsn(g, "deltaText", text, len);
        if (replace)
            s_gb(g, "replace", true);
    } else if (!strcmp(state, "final")) {
        s_gk(g, "message");
        (void) yajl_gen_map_open(g);
        s_gs(g, "role", "assistant");
        s_gk(g, "content");
        (void) yajl_gen_array_open(g);
        (void) yajl_gen_map_open(g);
        s_gs(g, "type", "text");
        s_gsn(g, "text", text, len);
        (void) yajl_gen_map_close(g);
        (void) yajl_gen_array_close(g);
        s_gu(g, "timestamp", router_clock_wall_ms());
        (void) yajl_gen_map_close(g);
        s_gs(g, "stopReason", "stop");
    } else if (!strcmp(state, "aborted")) {
        s_gs(g, "stopReason", "rpc");
    } else {
        s_gsn(g, "errorMessage", text, len);
        s_gs(g, "errorKind", "unknown");
    }
    (void) yajl_gen_map_close(g);
    char *payload = s_gen_end(g);
    s_event(c, "chat", payload);
    free(payload);
}

/* text[0..len) into out[cap], cut short at a character boundary: a text
 * frame must stay UTF-8 (RFC 6455 §8.1; a client fails it with 1007). */
static void s_cut(char *out, size_t cap, const char *text, size_t len)
{
    if (len > cap - 1) {
        len = cap - 1;
        while (len > 0 && ((unsigned char) text[len] & 0xC0) == 0x80)
            len--; /* text[len] continues a sequence: cut before its lead */
    }
    memcpy(out, text, len);
    out[len] = '\0';
}

/* The `agent` request's second, final answer. */
static void s_agent_final(s_run_t *r, const char *status, const char *text, size_t len,
                          const char *code)
{
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(r->c);
        return;
    }
    (void) yajl_gen_map_open(g);
    s_gs(g, "runId", r->run_id);
    s_gs(g, "sessionKey", r->b->key);
    s_gs(g, "status", status);
    if (!strcmp(status, "ok")) {
        s_gs(g, "summary", "completed");
        s_gk(g, "result");
        (void) yajl_gen_map_open(g);
        s_gk(g, "payloads");
        (void) yajl_gen_array_open(g);
        (void) yajl_gen_map_open(g);
        s_gsn(g, "text", text, len);
        (void) yajl_gen_map_close(g);
        (void) yajl_gen_array_close(g);
        s_gk(g, "meta");
        (void) yajl_gen_map_open(g);
        s_gu(g, "durationMs", router_clock_mono_ms() - r->started_mono);
        (void) yajl_gen_map_close(g);
        (void) yajl_gen_map_close(g);
    } else if (!code) {
        s_gs(g, "summary", "aborted");
        s_gs(g, "stopReason", "rpc");
    } else {
        s_gsn(g, "summary", text, len);
    }
    (void) yajl_gen_map_close(g);
    char *payload = s_gen_end(g);
    if (!payload) {
        s_oom(r->c);
        return;
    }
    size_t n = 0;
    if (!code) {
        s_res_ok(r->c, r->req_id, payload);
    } else {
        char details[96];
        snprintf(details, sizeof details, "{\"code\":\"%s\"}", code);
        char msg[GATEWAY_OPENCLAW_WHY_MAX];
        s_cut(msg, sizeof msg, text, len);
        char *json = gateway_openclaw_res_error_encode(
            r->req_id, "UNAVAILABLE", msg[0] ? msg : "the turn failed", details, false, payload,
            &n);
        s_send(r->c, json, n);
    }
    free(payload);
}

/* The run's turn ended with `type`: done (text = answer), stopped, or
 * error (text = message, code = kith's code). Ends the run. */
static void s_run_finish(s_run_t *r, router_turn_frame_type_t type, const char *text, size_t len,
                         const char *code)
{
    if (r->kind == S_RUN_CHAT) {
        const char *state = type == ROUTER_TURN_FRAME_DONE      ? "final"
                            : type == ROUTER_TURN_FRAME_STOPPED ? "aborted"
                                                                : "error";
        s_chat_event(r->c, r->run_id, r->b->key, r->seq++, state, text, len, false);
    } else if (type == ROUTER_TURN_FRAME_DONE) {
        s_agent_event(r, "lifecycle", "end", NULL, 0, NULL);
        s_agent_final(r, "ok", text, len, NULL);
    } else if (type == ROUTER_TURN_FRAME_STOPPED) {
        s_agent_event(r, "lifecycle", "end", NULL, 0, NULL);
        s_agent_final(r, "error", NULL, 0, NULL);
    } else {
        char e[GATEWAY_OPENCLAW_WHY_MAX];
        s_cut(e, sizeof e, text, len);
        s_agent_event(r, "lifecycle", "error", NULL, 0, e);
        s_agent_final(r, "error", text, len, code ? code : "AGENT_ERROR");
    }
    s_run_end(r, type == ROUTER_TURN_FRAME_DONE      ? "ok"
                 : type == ROUTER_TURN_FRAME_STOPPED ? "aborted"
                                                     : "error");
}

static void s_abort_pending(s_conn_t *c);

/* Queues the run's message on its session. The run may have ended when
 * this returns (a frame can come back at once). */
static void s_run_submit(s_run_t *r)
{
    s_conn_t *c = r->c;
    uint64_t serial = r->serial;
    const char *code = NULL;
    if (r->abort_asked) {
        s_run_finish(r, ROUTER_TURN_FRAME_STOPPED, "", 0, NULL); /* aborted before its turn */
        return;
    }
    r->submitted = true;
    char *msg = r->message;
    size_t n = r->message_len;
    r->message = NULL;
    int rc = router_turns_submit_msg(c->oc->opts.turns, r->b->sub, msg, n, &r->msg, &code);
    free(msg);
    if (!(r = s_run_by_serial(c, serial)))
        return;
    if (rc == 0) {
        if (r->abort_asked)
            s_abort_pending(c);
        return;
    }
    const char *text = code && !strcmp(code, "SESSION_BUSY")   ? "the session's queue is full"
                       : code && !strcmp(code, "EMPTY_CONTENT") ? "the message is empty"
                       : code && !strcmp(code, "STORAGE_FULL")
                           ? "state.db keeps all the messages its limits allow"
                           : "the message could not be queued";
    s_run_finish(r, ROUTER_TURN_FRAME_ERROR, text, strlen(text), code ? code : "AGENT_ERROR");
}

/* The oldest submitted run of b whose turn has not begun. */
static s_run_t *s_run_waiting(s_bind_t *b)
{
    for (s_run_t *r = b->c->runs; r; r = r->next)
        if (r->b == b && r->submitted && !r->turn_id[0])
            return r;
    return NULL;
}

static s_run_t *s_run_by_turn(s_bind_t *b, const char *turn_id)
{
    for (s_run_t *r = b->c->runs; r; r = r->next)
        if (r->b == b && r->turn_id[0] && !strcmp(r->turn_id, turn_id))
            return r;
    return NULL;
}

/* An abort asked for run r, submitted but with no frame of its turn yet:
 * if the session's turn in flight is this socket's and not yet bound, it
 * is r's (the queue is FIFO) — bind it. Returns true when r has a turn to
 * stop now. */
static bool s_run_bind_active(s_run_t *r)
{
    if (r->turn_id[0])
        return true;
    if (!r->submitted || s_run_waiting(r->b) != r)
        return false;
    router_turns_sub_t who = 0;
    const char *active = router_turns_active(r->c->oc->opts.turns, r->b->sub, &who);
    if (!active || who != r->b->sub || s_run_by_turn(r->b, active) ||
        strlen(active) >= sizeof r->turn_id)
        return false;
    snprintf(r->turn_id, sizeof r->turn_id, "%s", active);
    if (r->kind == S_RUN_AGENT)
        s_agent_event(r, "lifecycle", "start", NULL, 0, NULL);
    return true;
}

static void s_abort_poll(router_loop_t *loop, uint64_t id, void *ud);

/* Ends aborted runs whose message still waits in its session's queue (it
 * is taken out, so it never runs), stops the turns of those that have one
 * now, and looks again later for the rest (a message whose turn began
 * but sent no frame yet, or a run not submitted yet). */
static void s_abort_pending(s_conn_t *c)
{
    bool waiting = false;
    s_bind_t *stop[GATEWAY_OPENCLAW_SESSIONS_MAX];
    unsigned nstop = 0;
    uint64_t withdrawn[GATEWAY_OPENCLAW_RUNS_MAX];
    unsigned nwithdrawn = 0;
    for (s_run_t *r = c->runs; r; r = r->next) {
        if (!r->abort_asked || r->stop_sent)
            continue;
        if (r->submitted && !r->turn_id[0] && nwithdrawn < GATEWAY_OPENCLAW_RUNS_MAX &&
            router_turns_withdraw(c->oc->opts.turns, r->b->sub, r->msg) == 0) {
            r->stop_sent = true;
            withdrawn[nwithdrawn++] = r->serial;
            continue;
        }
        if (!s_run_bind_active(r)) {
            waiting = true;
            continue;
        }
        r->stop_sent = true;
        bool dup = false;
        for (unsigned i = 0; i < nstop; i++)
            dup = dup || stop[i] == r->b;
        if (!dup && nstop < GATEWAY_OPENCLAW_SESSIONS_MAX)
            stop[nstop++] = r->b;
    }
    if (waiting && !c->abort_timer &&
        !(c->abort_timer = router_loop_timer_add(c->oc->loop, S_ABORT_POLL_MS, s_abort_poll, c)))
        /* Not lost: such a run still stops at its turn's first frame
         * (s_on_frame), and the next abort looks again; only sooner fails. */
        ROUTER_LOG(ROUTER_LOG_WARN, MOD,
                   "socket %s: no timer to look again for aborted runs (%s): they stop at "
                   "their turn's first frame",
                   c->conn_id, strerror(errno));
    /* Subscriber ids, not pointers: a stop may end runs and frames at once. */
    router_turns_sub_t subs[GATEWAY_OPENCLAW_SESSIONS_MAX];
    for (unsigned i = 0; i < nstop; i++)
        subs[i] = stop[i]->sub;
    uint64_t conn_serial = c->serial;
    gateway_openclaw_t *oc = c->oc;
    for (unsigned i = 0; i < nstop; i++)
        router_turns_stop(oc->opts.turns, subs[i]);
    /* Serials, not pointers: a stop or an end may end runs and frames. */
    for (unsigned i = 0; i < nwithdrawn && s_conn_by_serial(oc, conn_serial); i++) {
        s_run_t *r = s_run_by_serial(c, withdrawn[i]);
        if (r)
            s_run_finish(r, ROUTER_TURN_FRAME_STOPPED, "", 0, NULL);
    }
}

static void s_abort_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_conn_t *c = ud;
    c->abort_timer = 0;
    s_abort_pending(c);
}

/* ---------------------------------------------------------------- turn frames */

static const char *s_jstr(yajl_val o, const char *key, size_t *len)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(o, path, yajl_t_string);
    *len = v ? strlen(v->u.string) : 0;
    return v ? v->u.string : "";
}

/* A frame of a turn another client started, to a chat view of it. */
static void s_foreign(s_bind_t *b, router_turn_frame_type_t type, const char *turn_id,
                      yajl_val f)
{
    size_t n;
    const char *t;
    if (strncmp(b->foreign_turn, turn_id, sizeof b->foreign_turn) != 0) {
        /* A new run on the socket's view (the session's turns come one at
         * a time): its seq counts from 0 (WIRE §25.6). */
        snprintf(b->foreign_turn, sizeof b->foreign_turn, "%s", turn_id);
        b->foreign_seq = 0;
    }
    switch (type) {
    case ROUTER_TURN_FRAME_CHUNK:
        t = s_jstr(f, "content", &n);
        s_chat_event(b->c, turn_id, b->key, b->foreign_seq++, "delta", t, n, false);
        break;
    case ROUTER_TURN_FRAME_DONE:
        t = s_jstr(f, "full_response", &n);
        s_chat_event(b->c, turn_id, b->key, b->foreign_seq++, "final", t, n, false);
        break;
    case ROUTER_TURN_FRAME_STOPPED:
        s_chat_event(b->c, turn_id, b->key, b->foreign_seq++, "aborted", "", 0, false);
        break;
    case ROUTER_TURN_FRAME_ERROR:
        t = s_jstr(f, "message", &n);
        s_chat_event(b->c, turn_id, b->key, b->foreign_seq++, "error", t, n, false);
        break;
    default:
        break;
    }
}

/* A frame of run r's turn. */
static void s_run_frame(s_run_t *r, router_turn_frame_type_t type, yajl_val f, const char *code)
{
    size_t n;
    const char *t;
    switch (type) {
    case ROUTER_TURN_FRAME_CHUNK:
        t = s_jstr(f, "content", &n);
        if (r->kind == S_RUN_CHAT) {
            s_chat_event(r->c, r->run_id, r->b->key, r->seq++, "delta", t, n, false);
            break;
        }
        if (!r->text_over) {
            if (r->text_len + n > GATEWAY_OPENCLAW_TEXT_MAX) {
                r->text_over = true;
            } else {
                char *p = realloc(r->text, r->text_len + n + 1);
                if (!p) {
                    r->text_over = true;
                } else {
                    memcpy(p + r->text_len, t, n);
                    r->text = p;
                    r->text_len += n;
                    p[r->text_len] = '\0';
                }
            }
        }
        s_agent_event(r, "assistant", NULL, t, n, NULL);
        break;
    case ROUTER_TURN_FRAME_CHUNK_RESET:
        r->text_len = 0;
        r->text_over = false;
        if (r->kind == S_RUN_CHAT)
            s_chat_event(r->c, r->run_id, r->b->key, r->seq++, "delta", "", 0, true);
        break;
    case ROUTER_TURN_FRAME_TOOL_CALL:
    case ROUTER_TURN_FRAME_TOOL_RESULT:
        if (r->kind == S_RUN_AGENT) {
            yajl_gen g = s_gen_new();
            if (!g) {
                s_oom(r->c);
                break;
            }
            (void) yajl_gen_map_open(g);
            s_gs(g, "runId", r->run_id);
            s_gu(g, "seq", r->seq++);
            s_gs(g, "stream", "tool");
            s_gu(g, "ts", router_clock_wall_ms());
            s_gk(g, "data");
            (void) yajl_gen_map_open(g);
            s_gs(g, "phase", type == ROUTER_TURN_FRAME_TOOL_CALL ? "start" : "result");
            t = s_jstr(f, "id", &n);
            s_gsn(g, "toolCallId", t, n);
            if (type == ROUTER_TURN_FRAME_TOOL_CALL) {
                t = s_jstr(f, "name", &n);
                s_gsn(g, "name", t, n);
            } else {
                const char *path[] = {"is_error", NULL};
                s_gb(g, "isError", YAJL_IS_TRUE(yajl_tree_get(f, path, yajl_t_true)));
            }
            (void) yajl_gen_map_close(g);
            (void) yajl_gen_map_close(g);
            char *payload = s_gen_end(g);
            s_event(r->c, "agent", payload);
            free(payload);
        }
        break;
    case ROUTER_TURN_FRAME_DONE:
        t = s_jstr(f, "full_response", &n);
        s_run_finish(r, type, t, n, NULL);
        break;
    case ROUTER_TURN_FRAME_STOPPED:
        s_run_finish(r, type, "", 0, NULL);
        break;
    case ROUTER_TURN_FRAME_ERROR:
        t = s_jstr(f, "message", &n);
        s_run_finish(r, type, t, n, code ? code : "AGENT_ERROR");
        break;
    default:
        break; /* thinking, operator status, agent events: not in the OpenClaw streams kith maps */
    }
}

/* A frame of a session a socket is attached to (router_turns_frame_fn). */
static void s_on_frame(const router_turn_frame_t *frame, void *ud)
{
    s_bind_t *b = ud;
    s_conn_t *c = b->c;
    if (frame->type == ROUTER_TURN_FRAME_SESSION_START) {
        b->started = true;
        if (c->closing)
            return; /* nothing more is run for a closing socket (s_run_written) */
        /* Submit what waited, oldest first; a submit may end runs. */
        for (;;) {
            s_run_t *r = c->runs;
            while (r && !(r->b == b && r->accepted && !r->submitted))
                r = r->next;
            if (!r)
                break;
            s_run_submit(r);
        }
        return;
    }
    if (frame->type == ROUTER_TURN_FRAME_ERROR && !b->started) {
        /* The session could not be opened: its runs fail, saying why. */
        bool full = frame->code && !strcmp(frame->code, "STORAGE_FULL");
        const char *why = full ? "the session could not be opened: state.db keeps"
                                 " limits.sessions_max sessions"
                               : "the session could not be opened";
        const char *code = full ? "STORAGE_FULL" : "AGENT_ERROR";
        /* No session_start will follow: a later run of the socket on this
         * key must not wait for one (s_bind opens the session again). */
        b->failed_code = code;
        b->failed_why = why;
        for (s_run_t *r = c->runs, *next; r; r = next) {
            next = r->next;
            if (r->b != b)
                continue;
            if (!r->accepted) { /* its request is not answered yet: it ends once it is */
                r->open_failed = code;
                r->open_why = why;
                continue;
            }
            s_run_finish(r, ROUTER_TURN_FRAME_ERROR, why, strlen(why), code);
        }
        return;
    }
    yajl_val f = yajl_tree_parse(frame->json, NULL, 0); /* kith's own frame, NUL-terminated */
    if (!f) {
        /* Only out of memory fails on kith's own frame: a run that lost it
         * could wait for its end for ever, so the socket closes 1011. */
        s_oom(c);
        return;
    }
    size_t n;
    const char *turn_id = s_jstr(f, "turn_id", &n);
    s_run_t *r = n ? s_run_by_turn(b, turn_id) : NULL;
    if (!r && n && frame->submitter == b->sub && n < sizeof r->turn_id &&
        (r = s_run_waiting(b))) {
        /* The first frame of the turn answering this socket's oldest
         * waiting message: the session's queue is FIFO. */
        memcpy(r->turn_id, turn_id, n + 1);
        if (r->kind == S_RUN_AGENT)
            s_agent_event(r, "lifecycle", "start", NULL, 0, NULL);
        if (r->abort_asked && !r->stop_sent && frame->type != ROUTER_TURN_FRAME_STOPPED) {
            uint64_t serial = r->serial;
            r->stop_sent = true;
            router_turns_stop(c->oc->opts.turns, b->sub);
            if (!(r = s_run_by_serial(c, serial))) {
                yajl_tree_free(f);
                return;
            }
        }
    }
    if (!r && !n && frame->type == ROUTER_TURN_FRAME_ERROR)
        r = s_run_waiting(b); /* a message that never became a turn (lock timeout) */
    if (r)
        s_run_frame(r, frame->type, f, frame->code);
    else if (n && frame->submitter != b->sub)
        s_foreign(b, frame->type, turn_id, f);
    yajl_tree_free(f);
}

/* Does a run of the socket use attachment b? */
static bool s_bind_busy(const s_conn_t *c, const s_bind_t *b)
{
    for (const s_run_t *r = c->runs; r; r = r->next)
        if (r->b == b)
            return true;
    return false;
}

/* The socket's attachment to session `key`, made when needed. NULL when
 * the socket uses GATEWAY_OPENCLAW_SESSIONS_MAX sessions with runs in all
 * of them, or the turns refuse another subscriber. */
static s_bind_t *s_bind(s_conn_t *c, const char *key)
{
    s_bind_t *free_slot = NULL;
    for (unsigned i = 0; i < GATEWAY_OPENCLAW_SESSIONS_MAX; i++) {
        s_bind_t *b = &c->binds[i];
        if (b->sub && !strcmp(b->key, key)) {
            /* A session that could not be opened is opened again, once no
             * run of the socket still ends on the failed attachment (such
             * a run's request is not answered yet: the new run then fails
             * as it will, s_m_run). */
            if (!b->failed_code || s_bind_busy(c, b))
                return b;
            router_turns_detach(c->oc->opts.turns, b->sub);
            memset(b, 0, sizeof *b);
            free_slot = b;
            break;
        }
        if (!b->sub && !free_slot)
            free_slot = b;
    }
    if (!free_slot) {
        /* Let go of a session with no run of this socket in it. */
        for (unsigned i = 0; i < GATEWAY_OPENCLAW_SESSIONS_MAX && !free_slot; i++) {
            s_bind_t *b = &c->binds[i];
            if (!s_bind_busy(c, b)) {
                router_turns_detach(c->oc->opts.turns, b->sub);
                memset(b, 0, sizeof *b);
                free_slot = b;
            }
        }
        if (!free_slot)
            return NULL;
    }
    *free_slot = (s_bind_t){.c = c};
    snprintf(free_slot->key, sizeof free_slot->key, "%s", key);
    free_slot->sub = router_turns_attach(c->oc->opts.turns, key, NULL, s_on_frame, free_slot);
    if (!free_slot->sub) {
        memset(free_slot, 0, sizeof *free_slot);
        return NULL;
    }
    return free_slot;
}

/* ---------------------------------------------------------------- methods */

static bool s_scope_has(const s_conn_t *c, unsigned need)
{
    return (c->scopes & (need | S_SCOPE_ADMIN)) != 0;
}

static void s_forbidden(s_conn_t *c, const char *id, const char *scope)
{
    char details[160], msg[96];
    snprintf(details, sizeof details,
             "{\"code\":\"MISSING_SCOPE\",\"missingScope\":\"%s\",\"requiredScopes\":[\"%s\"]}",
             scope, scope);
    snprintf(msg, sizeof msg, "missing scope: %s", scope);
    s_res_error(c, id, "FORBIDDEN", msg, details, false);
}

/* The answer to a key seen before: the same runId, nothing started. The
 * status is spliced into JSON as it is, so only one this file writes goes
 * out: a row of state.db with anything else (damaged, or written by some
 * other hand) is "unknown", never a frame that is not JSON. */
static void s_cached(s_conn_t *c, const char *id, const char *key, const char *status)
{
    static const char *const known[] = {S_IDEM_IN_FLIGHT, "ok", "error", "aborted", "unknown"};
    const char *said = "unknown";
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(status, known[i]))
            said = known[i];
    char payload[GATEWAY_OPENCLAW_RUN_KEY_MAX + 64];
    snprintf(payload, sizeof payload, "{\"runId\":\"%s\",\"status\":\"%s\",\"cached\":true}", key,
             said);
    s_res_ok(c, id, payload);
}

/* A run's key is durable (ok): answer the request, then submit. */
static void s_run_written(bool ok, void *ud)
{
    s_wait_t *w = ud;
    uint64_t serial = w->serial;
    gateway_openclaw_t *oc = s_wait_end(w);
    s_run_t *r = oc ? s_run_find(oc, serial) : NULL;
    if (!r)
        return; /* its socket closed: its end is remembered */
    if (!ok) {
        /* Not written (the store stopped): nothing was promised. */
        s_res_error(r->c, r->req_id, "UNAVAILABLE", "the run's idempotency key was not stored",
                    NULL, true);
        s_run_free(r);
        return;
    }
    if (r->c->closing) {
        /* Its socket closed first (the client's Close, a token revoked, a
         * slow reader cut): nobody will see the answer or the turn, and a
         * revoked client's message must not run for it. Nothing was
         * promised: the key remembers an error. */
        s_run_end(r, "error");
        return;
    }
    r->accepted = true;
    char payload[512];
    if (r->kind == S_RUN_AGENT)
        snprintf(payload, sizeof payload,
                 "{\"runId\":\"%s\",\"sessionKey\":\"%s\",\"status\":\"accepted\","
                 "\"acceptedAt\":%llu}",
                 r->run_id, r->b->key, (unsigned long long) router_clock_wall_ms());
    else
        snprintf(payload, sizeof payload, "{\"runId\":\"%s\",\"status\":\"started\"}", r->run_id);
    s_res_ok(r->c, r->req_id, payload);
    if (r->open_failed)
        s_run_finish(r, ROUTER_TURN_FRAME_ERROR, r->open_why, strlen(r->open_why),
                     r->open_failed);
    else if (r->b->started)
        s_run_submit(r);
}

/* `agent` and `chat.send`: a message for a session, answered at once;
 * the turn's frames follow as events (and, for agent, a final answer). */
static void s_m_run(s_conn_t *c, const gateway_openclaw_req_t *req, s_kind_t kind)
{
    gateway_openclaw_t *oc = c->oc;
    if (!s_scope_has(c, S_SCOPE_WRITE)) {
        s_forbidden(c, req->id, "operator.write");
        return;
    }
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    gateway_openclaw_run_params_t p;
    int rc = kind == S_RUN_AGENT ? gateway_openclaw_agent_decode(req->params, &p, why, sizeof why)
                                 : gateway_openclaw_chat_send_decode(req->params, &p, why,
                                                                     sizeof why);
    if (rc != 0) {
        char msg[GATEWAY_OPENCLAW_WHY_MAX + GATEWAY_OPENCLAW_METHOD_MAX + 32];
        snprintf(msg, sizeof msg, "invalid %s params: %s", req->method, why);
        s_res_error(c, req->id, "INVALID_REQUEST", msg, NULL, false);
        return;
    }
    if (!p.session_key[0])
        snprintf(p.session_key, sizeof p.session_key, "%s", GATEWAY_OPENCLAW_DEFAULT_SESSION);
    /* The key, in the token store: a key seen before (in this process or
     * before a restart) answers with the same runId and starts nothing. */
    const char *key = p.idempotency_key;
    size_t klen = strlen(key);
    int st = 0;
    const char *seen = NULL;
    switch (router_tokens_idem_begin(oc->tokens, S_IDEM_SCOPE, key, klen, router_clock_wall_ms(),
                                     &st, &seen)) {
    case ROUTER_IDEM_BUSY:
        s_cached(c, req->id, key, S_IDEM_IN_FLIGHT);
        return;
    case ROUTER_IDEM_DONE:
        /* In flight when written, and no run of this process has it: the
         * run was cut off by a restart, its outcome unknown. */
        s_cached(c, req->id, key,
                 !strcmp(seen, S_IDEM_IN_FLIGHT) && !s_run_live(oc, key) ? "unknown" : seen);
        return;
    case ROUTER_IDEM_FULL:
        s_res_error(c, req->id, "UNAVAILABLE", "too many idempotency keys are remembered", NULL,
                    true);
        return;
    case ROUTER_IDEM_NEW:
        break;
    }
    if (s_run_live(oc, key)) {
        /* A run longer than the keys' shortest hold (WIRE §17.4) may have
         * had its key let go for newer ones; it still runs: no second. */
        router_tokens_idem_release(oc->tokens, S_IDEM_SCOPE, key, klen);
        s_cached(c, req->id, key, S_IDEM_IN_FLIGHT);
        return;
    }
    if (c->nruns >= GATEWAY_OPENCLAW_RUNS_MAX) {
        router_tokens_idem_release(oc->tokens, S_IDEM_SCOPE, key, klen);
        s_res_error(c, req->id, "UNAVAILABLE", "too many runs in flight on this connection",
                    NULL, true);
        return;
    }
    s_bind_t *b = s_bind(c, p.session_key);
    s_run_t *r = b ? calloc(1, sizeof *r) : NULL;
    if (!r || !(r->message = malloc(p.message_len + 1))) {
        router_tokens_idem_release(oc->tokens, S_IDEM_SCOPE, key, klen);
        free(r);
        s_res_error(c, req->id, "UNAVAILABLE",
                    b ? "the gateway is out of room for runs" : "too many sessions in use",
                    NULL, true);
        return;
    }
    memcpy(r->message, p.message, p.message_len);
    r->message[p.message_len] = '\0';
    r->message_len = p.message_len;
    r->c = c;
    r->b = b;
    r->kind = kind;
    if (b->failed_code) { /* ends once answered (s_run_written), as its elders do */
        r->open_failed = b->failed_code;
        r->open_why = b->failed_why;
    }
    r->serial = ++oc->next_serial;
    r->started_mono = router_clock_mono_ms();
    snprintf(r->run_id, sizeof r->run_id, "%s", key);
    snprintf(r->req_id, sizeof r->req_id, "%s", req->id);
    s_run_t **tail = &c->runs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = r;
    c->nruns++;
    oc->nruns++;
    s_gauges(oc);
    /* The key is written as in flight before the answer goes and before
     * the message is submitted (s_run_written). */
    s_wait_t *w = s_wait_new(oc, r->serial);
    if (!w) {
        router_tokens_idem_release(oc->tokens, S_IDEM_SCOPE, key, klen);
    } else if (router_tokens_idem_finish(oc->tokens, S_IDEM_SCOPE, key, klen, 200,
                                         S_IDEM_IN_FLIGHT, router_clock_wall_ms(), s_run_written,
                                         w) != 0) { /* the key is forgotten */
        (void) s_wait_end(w);
        w = NULL;
    }
    if (!w) {
        s_run_free(r);
        s_res_error(c, req->id, "UNAVAILABLE", "the run's idempotency key cannot be stored now",
                    NULL, true);
    }
}

static void s_m_abort(s_conn_t *c, const gateway_openclaw_req_t *req)
{
    if (!s_scope_has(c, S_SCOPE_WRITE)) {
        s_forbidden(c, req->id, "operator.write");
        return;
    }
    char key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1], run_id[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1],
        why[GATEWAY_OPENCLAW_WHY_MAX];
    if (gateway_openclaw_chat_abort_decode(req->params, key, run_id, why, sizeof why) != 0) {
        char msg[GATEWAY_OPENCLAW_WHY_MAX + 32];
        snprintf(msg, sizeof msg, "invalid chat.abort params: %s", why);
        s_res_error(c, req->id, "INVALID_REQUEST", msg, NULL, false);
        return;
    }
    /* Mark first, answer, then stop: a stop can end runs at once. */
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(c);
        return;
    }
    (void) yajl_gen_map_open(g);
    s_gb(g, "ok", true);
    s_gk(g, "runIds");
    (void) yajl_gen_array_open(g);
    bool any = false;
    for (s_run_t *r = c->runs; r; r = r->next) {
        if (strcmp(r->b->key, key) != 0 || (run_id[0] && strcmp(r->run_id, run_id) != 0) ||
            r->abort_asked)
            continue;
        r->abort_asked = true;
        any = true;
        (void) yajl_gen_string(g, (const unsigned char *) r->run_id, strlen(r->run_id));
    }
    (void) yajl_gen_array_close(g);
    s_gb(g, "aborted", any);
    (void) yajl_gen_map_close(g);
    char *payload = s_gen_end(g);
    s_res_ok(c, req->id, payload);
    free(payload);
    if (any)
        s_abort_pending(c);
}

static void s_m_health(s_conn_t *c, const gateway_openclaw_req_t *req)
{
    if (!s_scope_has(c, S_SCOPE_READ | S_SCOPE_WRITE)) {
        s_forbidden(c, req->id, "operator.read");
        return;
    }
    char payload[96];
    snprintf(payload, sizeof payload, "{\"ok\":true,\"ts\":%llu,\"durationMs\":0}",
             (unsigned long long) router_clock_wall_ms());
    s_res_ok(c, req->id, payload);
}

static void s_m_presence(s_conn_t *c, const gateway_openclaw_req_t *req)
{
    if (!s_scope_has(c, S_SCOPE_READ | S_SCOPE_WRITE)) {
        s_forbidden(c, req->id, "operator.read");
        return;
    }
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(c);
        return;
    }
    s_presence_list(g, c->oc);
    char *payload = s_gen_end(g);
    s_res_ok(c, req->id, payload);
    free(payload);
}

/* ---------------------------------------------------------------- the handshake */

/* A refusal of `connect`, then the close OpenClaw pairs with it. */
static void s_refuse(s_conn_t *c, const char *id, const char *message, const char *details,
                     uint16_t close_code)
{
    s_res_error(c, id, "INVALID_REQUEST", message, details, false);
    s_close(c, close_code, message);
}

static void s_audit(s_conn_t *c, const char *type, const char *reason)
{
    router_audit_feed_t *feed = gateway_auth_audit(c->oc->opts.auth);
    if (!feed)
        return;
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "client", c->client_addr);
    router_audit_detail_str(&d, "endpoint", "openclaw");
    if (c->hello) {
        router_audit_detail_str(&d, "client_id", c->hello->client_id);
        router_audit_detail_str(&d, "client_mode", c->hello->client_mode);
        if (c->hello->has_device)
            router_audit_detail_str(&d, "device_id", c->hello->device_id);
        if (c->hello->client_platform[0])
            router_audit_detail_str(&d, "platform", c->hello->client_platform);
    }
    if (reason)
        router_audit_detail_str(&d, "reason", reason);
    (void) router_audit_feed_push_from(feed, type, c->client_addr, router_audit_detail_end(&d));
}

static void s_on_tick(router_loop_t *loop, uint64_t id, void *ud);

/* Arms the socket's next tick. Without one its client would close with
 * 4000 after two intervals, blaming the network: the server says why
 * instead (1011). */
static void s_tick_arm(s_conn_t *c)
{
    c->tick_timer = router_loop_timer_add(c->oc->loop, c->oc->opts.tick_ms, s_on_tick, c);
    if (!c->tick_timer) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "socket %s: no timer for ticks (%s): closed",
                   c->conn_id, strerror(errno));
        s_close(c, 1011, "no timer for ticks");
    }
}

static void s_on_tick(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_conn_t *c = ud;
    c->tick_timer = 0;
    s_tick_arm(c);
    char payload[48];
    snprintf(payload, sizeof payload, "{\"ts\":%llu}", (unsigned long long) router_clock_wall_ms());
    s_event(c, "tick", payload);
    /* A new interval: the list that changed since its last presence. */
    c->presence_in_tick = false;
    s_presence_send(c);
}

/* hello-ok; device_token (or NULL) is the deviceToken handed out. */
static void s_hello(s_conn_t *c, const char *id, const char *device_token)
{
    gateway_openclaw_t *oc = c->oc;
    yajl_gen g = s_gen_new();
    if (!g) {
        s_oom(c);
        return;
    }
    size_t max_payload = oc->opts.ws.message_max ? oc->opts.ws.message_max : GATEWAY_WS_MESSAGE_MAX;
    (void) yajl_gen_map_open(g);
    s_gs(g, "type", "hello-ok");
    s_gu(g, "protocol", GATEWAY_OPENCLAW_PROTOCOL);
    s_gk(g, "server");
    (void) yajl_gen_map_open(g);
    s_gs(g, "version", oc->opts.version);
    s_gs(g, "connId", c->conn_id);
    (void) yajl_gen_map_close(g);
    s_gk(g, "features");
    (void) yajl_gen_map_open(g);
    s_gk(g, "methods");
    (void) yajl_gen_array_open(g);
    for (size_t i = 0; i < sizeof s_methods / sizeof s_methods[0]; i++)
        (void) yajl_gen_string(g, (const unsigned char *) s_methods[i], strlen(s_methods[i]));
    (void) yajl_gen_array_close(g);
    s_gk(g, "events");
    (void) yajl_gen_array_open(g);
    for (size_t i = 0; i < sizeof s_events / sizeof s_events[0]; i++)
        (void) yajl_gen_string(g, (const unsigned char *) s_events[i], strlen(s_events[i]));
    (void) yajl_gen_array_close(g);
    (void) yajl_gen_map_close(g);
    s_gk(g, "snapshot");
    (void) yajl_gen_map_open(g);
    s_gk(g, "presence");
    if (s_presence_reader(c)) {
        s_presence_list(g, oc);
    } else {
        (void) yajl_gen_array_open(g);
        (void) yajl_gen_array_close(g);
    }
    s_gk(g, "health");
    (void) yajl_gen_map_open(g);
    s_gb(g, "ok", true);
    s_gu(g, "ts", router_clock_wall_ms());
    (void) yajl_gen_map_close(g);
    s_gk(g, "stateVersion");
    (void) yajl_gen_map_open(g);
    s_gu(g, "presence", oc->presence_version);
    s_gu(g, "health", 0);
    (void) yajl_gen_map_close(g);
    s_gu(g, "uptimeMs", router_clock_mono_ms() - oc->started_mono);
    (void) yajl_gen_map_close(g);
    s_gk(g, "auth");
    (void) yajl_gen_map_open(g);
    s_gs(g, "role", c->hello->role);
    s_gk(g, "scopes");
    (void) yajl_gen_array_open(g);
    for (unsigned i = 0; i < sizeof s_scope_names / sizeof s_scope_names[0]; i++)
        if (c->scopes & (1u << i))
            (void) yajl_gen_string(g, (const unsigned char *) s_scope_names[i],
                                   strlen(s_scope_names[i]));
    (void) yajl_gen_array_close(g);
    if (device_token)
        s_gs(g, "deviceToken", device_token);
    (void) yajl_gen_map_close(g);
    s_gk(g, "policy");
    (void) yajl_gen_map_open(g);
    s_gu(g, "maxPayload", max_payload);
    s_gu(g, "maxBufferedBytes", ROUTER_CONN_SEND_LIMIT);
    s_gu(g, "tickIntervalMs", oc->opts.tick_ms);
    (void) yajl_gen_map_close(g);
    (void) yajl_gen_map_close(g);
    char *payload = s_gen_end(g);
    s_res_ok(c, id, payload);
    free(payload);
}

/* Connect is granted: the known operator scopes asked for, hello-ok
 * (with device_token when one is handed out), ticks, presence. */
static void s_accept(s_conn_t *c, const char *id, const char *device_token)
{
    gateway_openclaw_t *oc = c->oc;
    const gateway_openclaw_connect_t *h = c->hello;
    c->accepting = false;
    c->scopes = 0;
    for (unsigned i = 0; i < h->nscopes; i++)
        for (unsigned k = 0; k < sizeof s_scope_names / sizeof s_scope_names[0]; k++)
            if (!strcmp(h->scopes[i], s_scope_names[k]))
                c->scopes |= 1u << k;
    if (c->handshake_timer) {
        (void) router_loop_timer_cancel(oc->loop, c->handshake_timer);
        c->handshake_timer = 0;
    }
    c->connected = true;
    gateway_ws_set_message_max(c->ws, 0); /* known now: the configured limit */
    c->connected_ms = router_clock_wall_ms();
    oc->nconnected++;
    s_gauges(oc);
    s_hello(c, id, device_token);
    s_tick_arm(c);
    s_presence_changed(oc);
}

/* The device record is durable (ok): hello-ok with its new deviceToken. */
static void s_device_written(bool ok, void *ud)
{
    s_wait_t *w = ud;
    uint64_t serial = w->serial;
    char id[GATEWAY_OPENCLAW_ID_MAX + 1], token[S_DEVICE_TOKEN_LEN + 1];
    memcpy(id, w->req_id, sizeof id);
    memcpy(token, w->token, sizeof token);
    gateway_openclaw_t *oc = s_wait_end(w);
    s_conn_t *c = oc ? s_conn_by_serial(oc, serial) : NULL;
    if (c && c->accepting && !c->closing)
        s_accept(c, id, ok ? token : NULL); /* not written: the bearer token still holds */
    sodium_memzero(token, sizeof token);
}

/* The deviceToken of a device that joins with bearer token `secret`
 * (WIRE §25.8): "kithdev_" and the hex of a keyed BLAKE2b of the device id,
 * the key a BLAKE2b of the secret. The same bearer token and device always
 * get the same deviceToken: a connect whose socket closes before its
 * hello-ok (the client never saw a token) writes the hash the device had,
 * so the token the client holds still works (a random new token stopped
 * it, and nobody held the new one); and a client that lost its token gets
 * it again with its bearer token. Only a holder of the bearer token's secret can make it: state.db
 * keeps SHA-256 digests, not this key. */
static void s_device_token_make(const char *secret, const char *device_id,
                                char out[S_DEVICE_TOKEN_LEN + 1])
{
    static const char context[] = "kith openclaw deviceToken v1";
    uint8_t key[crypto_generichash_KEYBYTES], raw[32];
    crypto_generichash(key, sizeof key, (const unsigned char *) secret, strlen(secret), NULL, 0);
    crypto_generichash_state st;
    (void) crypto_generichash_init(&st, key, sizeof key, sizeof raw);
    (void) crypto_generichash_update(&st, (const unsigned char *) context, sizeof context);
    (void) crypto_generichash_update(&st, (const unsigned char *) device_id, strlen(device_id));
    (void) crypto_generichash_final(&st, raw, sizeof raw);
    memcpy(out, S_DEVICE_TOKEN_PREFIX, sizeof S_DEVICE_TOKEN_PREFIX - 1);
    sodium_bin2hex(out + sizeof S_DEVICE_TOKEN_PREFIX - 1, 65, raw, sizeof raw);
    sodium_memzero(key, sizeof key);
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(&st, sizeof st);
}

/* Records c's device in state.db (WIRE §25.8). With req_id, the device's
 * deviceToken for bearer token `secret` is recorded, and hello-ok waits
 * for the record (s_device_written); without, nobody waits. Returns 0, or
 * -1 when nothing will be written (the reason is logged). */
static int s_device_record(s_conn_t *c, const char *req_id, const char *secret)
{
    gateway_openclaw_t *oc = c->oc;
    const gateway_openclaw_connect_t *h = c->hello;
    router_tokens_device_t d = {0};
    if (strlen(h->device_id) != ROUTER_TOKENS_DEVICE_ID_LEN ||
        gateway_openclaw_b64_decode(h->device_public_key, d.public_key, 32) != 0)
        return -1; /* cannot be after a verified proof */
    memcpy(d.id, h->device_id, sizeof d.id);
    snprintf(d.client_id, sizeof d.client_id, "%s", h->client_id);
    snprintf(d.client_mode, sizeof d.client_mode, "%s", h->client_mode);
    snprintf(d.platform, sizeof d.platform, "%s", h->client_platform);
    memcpy(d.via, c->token_id, sizeof d.via); /* used only with a new deviceToken */
    uint64_t now = router_clock_wall_ms();
    int rc;
    if (!req_id) {
        rc = router_tokens_device_record(oc->tokens, &d, NULL, now, NULL, NULL);
    } else {
        s_wait_t *w = s_wait_new(oc, c->serial);
        if (!w)
            return -1;
        snprintf(w->req_id, sizeof w->req_id, "%s", req_id);
        memcpy(w->device_id, d.id, sizeof w->device_id);
        memcpy(w->via, d.via, sizeof w->via);
        uint8_t hash[32];
        s_device_token_make(secret, d.id, w->token);
        crypto_hash_sha256(hash, (const unsigned char *) w->token, S_DEVICE_TOKEN_LEN);
        rc = router_tokens_device_record(oc->tokens, &d, hash, now, s_device_written, w);
        if (rc != 0) {
            int e = errno;
            (void) s_wait_end(w);
            errno = e;
        }
    }
    if (rc != 0)
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "device %.16s…: not recorded: %s", d.id,
                   errno == ENOSPC ? "the device table is full" : strerror(errno));
    return rc;
}

/* True when c's device holds a deviceToken earned with another bearer
 * token still in force (a revocation clears the row's via), or is being
 * given one by a connect with another bearer token (its record not
 * durable yet): a connect with this one must not replace it. The new token's row would be durable
 * before hello-ok could carry it, so a connect that ends before its
 * hello-ok (the client never saw the new token) took from the device the
 * one it holds, and the device was refused AUTH_DEVICE_TOKEN_MISMATCH with
 * it (WIRE §25.8). A device whose token is of this bearer token, of one
 * revoked since, or of one not known (a row from before via was kept),
 * gets this one's. */
static bool s_device_keeps_token(const s_conn_t *c)
{
    const char *id = c->hello->device_id;
    for (const s_wait_t *w = c->oc->waits; w; w = w->next)
        if (w->device_id[0] && !strcmp(w->device_id, id) && strcmp(w->via, c->token_id) != 0)
            return true;
    router_tokens_device_t known;
    return router_tokens_device_get(c->oc->tokens, id, &known) && known.via[0] &&
           strcmp(known.via, c->token_id) != 0;
}

/* The deviceToken the connect sent, when it is the device's (else NULL):
 * hello-ok repeats it. */
static const char *s_device_token_sent(const s_conn_t *c, const uint8_t pk[32])
{
    const gateway_openclaw_connect_t *h = c->hello;
    if (!h->device_token[0])
        return NULL;
    uint8_t th[32];
    crypto_hash_sha256(th, (const unsigned char *) h->device_token, strlen(h->device_token));
    return router_tokens_device_check(c->oc->tokens, h->device_id, pk, th) ? h->device_token
                                                                           : NULL;
}

static void s_on_handshake_timeout(router_loop_t *loop, uint64_t id, void *ud);

static void s_connect(s_conn_t *c, const gateway_openclaw_req_t *req)
{
    gateway_openclaw_t *oc = c->oc;
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    gateway_openclaw_connect_t *h = calloc(1, sizeof *h);
    if (!h) {
        s_res_error(c, req->id, "UNAVAILABLE", "out of memory", NULL, true);
        s_close(c, 1011, "out of memory");
        return;
    }
    c->hello = h;
    if (gateway_openclaw_connect_decode(req->params, h, why, sizeof why) != 0) {
        s_refuse(c, req->id, why, NULL, 1008);
        return;
    }
    if (h->min_protocol > GATEWAY_OPENCLAW_PROTOCOL ||
        h->max_protocol < GATEWAY_OPENCLAW_PROTOCOL) {
        char msg[128], details[256];
        snprintf(msg, sizeof msg,
                 "protocol mismatch: kith speaks protocol 4 only (4..4); the client offered "
                 "%lld..%lld",
                 (long long) h->min_protocol, (long long) h->max_protocol);
        snprintf(details, sizeof details,
                 "{\"code\":\"PROTOCOL_MISMATCH\",\"clientMinProtocol\":%lld,"
                 "\"clientMaxProtocol\":%lld,\"expectedProtocol\":4,\"minProtocol\":4,"
                 "\"maxProtocol\":4}",
                 (long long) h->min_protocol, (long long) h->max_protocol);
        s_res_error(c, req->id, "INVALID_REQUEST", msg, details, false);
        s_close(c, 1002, "protocol mismatch");
        return;
    }
    if (strcmp(h->role, "operator") != 0) {
        s_refuse(c, req->id, "invalid role: kith serves the operator role only", NULL, 1008);
        return;
    }
    /* The credential (WIRE §25.8): a kith bearer token from pairing
     * (WIRE §17), else the deviceToken kith gave this device. */
    bool pairing = gateway_auth_pairing_required(oc->opts.auth);
    const char *secret = h->token[0]          ? h->token
                         : h->device_token[0] ? h->device_token
                                              : h->bootstrap_token;
    bool bearer = pairing && secret[0] &&
                  gateway_auth_token_ok(oc->opts.auth, secret, strlen(secret), c->token_id);
    bool by_device = false;
    uint8_t pk[32];
    if (pairing && !bearer && h->device_token[0]) {
        uint8_t th[32];
        crypto_hash_sha256(th, (const unsigned char *) h->device_token, strlen(h->device_token));
        by_device = h->has_device &&
                    gateway_openclaw_b64_decode(h->device_public_key, pk, sizeof pk) == 0 &&
                    router_tokens_device_check(oc->tokens, h->device_id, pk, th);
        router_tokens_device_t known;
        if (by_device && router_tokens_device_get(oc->tokens, h->device_id, &known))
            memcpy(c->token_id, known.via, sizeof c->token_id); /* revoking it ends this too */
        if (!by_device) {
            s_audit(c, "auth_failure", "invalid_device_token");
            s_refuse(c, req->id,
                     "unauthorized: device token mismatch (connect with a kith bearer token "
                     "from POST /pair to get a new one)",
                     "{\"code\":\"AUTH_DEVICE_TOKEN_MISMATCH\",\"authReason\":"
                     "\"device_token_mismatch\",\"canRetryWithDeviceToken\":false,"
                     "\"recommendedNextStep\":\"update_auth_credentials\"}",
                     1008);
            return;
        }
    } else if (pairing && !bearer) {
        bool missing = !secret[0];
        const char *msg = missing ? "unauthorized: gateway token missing (pair with kith: POST "
                                    "/pair, then send the token as auth.token)"
                                  : "unauthorized: gateway token mismatch (send a kith bearer "
                                    "token from POST /pair as auth.token)";
        char details[256];
        snprintf(details, sizeof details,
                 "{\"code\":\"%s\",\"authReason\":\"%s\",\"canRetryWithDeviceToken\":false,"
                 "\"recommendedNextStep\":\"update_auth_credentials\"}",
                 missing ? "AUTH_TOKEN_MISSING" : "AUTH_TOKEN_MISMATCH",
                 missing ? "token_missing" : "token_mismatch");
        s_audit(c, "auth_failure", missing ? "no_token" : "invalid_token");
        s_refuse(c, req->id, msg, details, 1008);
        return;
    }
    int version = 0;
    if (h->has_device) {
        gateway_openclaw_device_reason_t r =
            gateway_openclaw_device_verify(h, secret, c->nonce, router_clock_wall_ms(), &version);
        if (r != GATEWAY_OPENCLAW_DEVICE_OK) {
            char details[160];
            snprintf(details, sizeof details, "{\"code\":\"%s\",\"reason\":\"%s\"}",
                     gateway_openclaw_device_code(r), gateway_openclaw_device_reason(r));
            s_audit(c, "auth_failure", gateway_openclaw_device_reason(r));
            s_refuse(c, req->id, gateway_openclaw_device_message(r), details, 1008);
            return;
        }
    } else if (!(c->loopback && !strcmp(h->client_id, "gateway-client") &&
                 !strcmp(h->client_mode, "backend"))) {
        s_refuse(c, req->id, "device identity required",
                 "{\"code\":\"DEVICE_IDENTITY_REQUIRED\",\"reason\":\"device-required\"}", 1008);
        return;
    }
    gateway_ws_set_credential(c->ws, c->token_id);
    char v[8];
    snprintf(v, sizeof v, "v%d", version);
    if (h->has_device)
        s_audit(c, "device_join", v);
    if (by_device) {
        /* A known device: its last sighting is written (nobody waits). */
        s_device_record(c, NULL, NULL);
        s_accept(c, req->id, h->device_token);
    } else if (h->has_device && bearer && c->loopback && s_device_keeps_token(c)) {
        /* Its last sighting only (nobody waits): the device keeps its
         * token, which hello-ok repeats when the connect sent it. */
        s_device_record(c, NULL, NULL);
        s_accept(c, req->id,
                 gateway_openclaw_b64_decode(h->device_public_key, pk, sizeof pk) == 0
                     ? s_device_token_sent(c, pk)
                     : NULL);
    } else if (h->has_device && bearer && c->loopback &&
               s_device_record(c, req->id, secret) == 0) {
        /* hello-ok once the record is durable (s_device_written), or
         * without a deviceToken when that takes too long (a failing disk
         * retries for ever): the handshake's timer now bounds this wait. */
        c->accepting = true;
        snprintf(c->accept_id, sizeof c->accept_id, "%s", req->id);
        if (c->handshake_timer)
            (void) router_loop_timer_cancel(oc->loop, c->handshake_timer);
        c->handshake_timer = router_loop_timer_add(oc->loop, oc->opts.record_wait_ms,
                                                   s_on_handshake_timeout, c);
        if (!c->handshake_timer)
            s_accept(c, req->id, NULL); /* no timer to bound the wait: no wait */
    } else {
        s_accept(c, req->id, NULL);
    }
}

/* ---------------------------------------------------------------- sockets */

static void s_on_message(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) ws;
    s_conn_t *c = ud;
    if (c->closing)
        return;
    if (!text) {
        s_close(c, 1003, "frames are JSON text");
        return;
    }
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    gateway_openclaw_req_t req;
    errno = 0;
    if (gateway_openclaw_req_decode(data, len, &req, why, sizeof why) != 0) {
        if (errno == ENOMEM) {
            s_oom(c); /* not the client's fault, and its request must not wait for ever */
            return;
        }
        if (req.id[0])
            s_res_error(c, req.id, "INVALID_REQUEST", why, NULL, false);
        if (!c->connected)
            s_close(c, 1008, "invalid handshake");
        return;
    }
    if (c->accepting) {
        s_res_error(c, req.id, "INVALID_REQUEST", "connect is still being answered", NULL, false);
    } else if (!c->connected) {
        if (strcmp(req.method, "connect") != 0)
            s_refuse(c, req.id, "invalid handshake: first request must be connect", NULL, 1008);
        else
            s_connect(c, &req);
    } else if (!strcmp(req.method, "connect")) {
        s_res_error(c, req.id, "INVALID_REQUEST", "already connected", NULL, false);
    } else if (!strcmp(req.method, "agent")) {
        s_m_run(c, &req, S_RUN_AGENT);
    } else if (!strcmp(req.method, "chat.send")) {
        s_m_run(c, &req, S_RUN_CHAT);
    } else if (!strcmp(req.method, "chat.abort")) {
        s_m_abort(c, &req);
    } else if (!strcmp(req.method, "health")) {
        s_m_health(c, &req);
    } else if (!strcmp(req.method, "system-presence")) {
        s_m_presence(c, &req);
    } else {
        char msg[GATEWAY_OPENCLAW_METHOD_MAX + 32];
        snprintf(msg, sizeof msg, "unknown method: %s", req.method);
        s_res_error(c, req.id, "INVALID_REQUEST", msg, NULL, false);
    }
    gateway_openclaw_req_clear(&req);
}

/* Lets go of a socket's sessions, runs and timers, and frees it. */
static void s_conn_free(s_conn_t *c)
{
    gateway_openclaw_t *oc = c->oc;
    if (c->prev)
        c->prev->next = c->next;
    else
        oc->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    oc->nconns--;
    if (c->handshake_timer)
        (void) router_loop_timer_cancel(oc->loop, c->handshake_timer);
    if (c->tick_timer)
        (void) router_loop_timer_cancel(oc->loop, c->tick_timer);
    if (c->abort_timer)
        (void) router_loop_timer_cancel(oc->loop, c->abort_timer);
    c->ws = NULL;
    for (unsigned i = 0; i < GATEWAY_OPENCLAW_SESSIONS_MAX; i++)
        if (c->binds[i].sub)
            router_turns_detach(oc->opts.turns, c->binds[i].sub);
    /* Turns of queued messages still run; their outcome is not seen here. */
    while (c->runs)
        s_run_end(c->runs, c->runs->turn_id[0] || c->runs->submitted ? "unknown" : "error");
    bool was = c->connected;
    if (was)
        oc->nconnected--;
    s_gauges(oc);
    free(c->hello);
    free(c);
    if (was)
        s_presence_changed(oc);
}

/* The socket stopped being open, whoever closed it: the gateway too (a
 * frame past the handshake's size bound, a protocol error, a token
 * revoked, a slow reader cut). From now on it is a closing one: nothing is
 * sent to it, a connect being accepted is not, and before hello-ok it is
 * among the refused that give their place in the handshake first. */
static void s_on_closing(gateway_ws_t *ws, void *ud)
{
    (void) ws;
    s_conn_t *c = ud;
    c->closing = true;
}

static void s_on_close(gateway_ws_t *ws, uint16_t code, void *ud)
{
    (void) ws, (void) code;
    s_conn_free(ud);
}

static const gateway_ws_handlers_t s_ws_handlers = {
    .on_message = s_on_message,
    .on_closing = s_on_closing,
    .on_close = s_on_close,
};

/* The handshake's time is up, or the device record's wait (accepting).
 * A connect that passed every check is not refused for a record the disk
 * is slow to make durable (or cannot write): hello-ok goes without a
 * deviceToken, as when the record cannot be written (WIRE §25.8); the
 * client did its part, and a 1008 "connect timeout" would blame it. */
static void s_on_handshake_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_conn_t *c = ud;
    c->handshake_timer = 0;
    if (c->accepting && !c->closing) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD,
                   "socket %s: its device record is not durable after %u ms: hello-ok without "
                   "a deviceToken",
                   c->conn_id, c->oc->opts.record_wait_ms);
        s_accept(c, c->accept_id, NULL);
    } else if (!c->connected) {
        s_close(c, 1008, "connect timeout");
    }
}

/* Is there a `token` member in the query? It is refused here (WIRE §25.2). */
static bool s_query_has_token(proto_http_slice_t q)
{
    if (!q.ptr)
        return false;
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t) (end - p));
        const char *stop = amp ? amp : end;
        if (stop - p >= 5 && !memcmp(p, "token", 5) && (stop - p == 5 || p[5] == '='))
            return true;
        p = stop + 1;
    }
    return false;
}


/* Room for one more socket before hello-ok (WIRE §25.2): past
 * GATEWAY_OPENCLAW_HANDSHAKES_MAX one is ended, so a stranger opening
 * sockets and saying nothing (or something refused) cannot take the
 * places of clients that authenticate. A socket refused before hello-ok
 * still counts while it waits for the client's Close (up to
 * GATEWAY_WS_CLOSE_WAIT_MS): else a stranger who never answers a refusal
 * would hold places past the bound. The oldest such one is ended first,
 * then the oldest one still waiting for a connect it has not sent (or
 * that was not accepted yet). False when every one of them has a connect
 * being accepted. */
static bool s_handshake_room(gateway_openclaw_t *oc)
{
    uint32_t waiting = 0;
    s_conn_t *refused = NULL, *idle = NULL; /* the list is newest first */
    for (s_conn_t *c = oc->conns; c; c = c->next) {
        if (c->connected || c->ended)
            continue;
        waiting++;
        if (c->closing)
            refused = c;
        else if (!c->accepting)
            idle = c;
    }
    if (waiting < GATEWAY_OPENCLAW_HANDSHAKES_MAX)
        return true;
    s_conn_t *oldest = refused ? refused : idle;
    if (!oldest)
        return false;
    ROUTER_LOG(ROUTER_LOG_INFO, MOD, "socket %s ended: the oldest of %u handshakes, for a newcomer",
               oldest->conn_id, waiting);
    oldest->closing = true;
    oldest->ended = true;
    /* A refused one has had its Close: this stops the wait for the client's. */
    gateway_ws_end(oldest->ws, 1008, "a newer connection needed this one's place in the handshake");
    return true;
}

static void s_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_openclaw_t *oc = ud;
    if (s_query_has_token(req->query)) {
        gateway_auth_audit_req(oc->opts.auth, "auth_failure", req, "token_in_url");
        (void) gateway_http_respond_error(res, 400, "token_in_url",
                                          "this endpoint takes the token in the connect "
                                          "request only, never in the URL");
        return;
    }
    if (!gateway_auth_origin_ok(req)) {
        gateway_auth_audit_req(oc->opts.auth, "auth_failure", req, "origin_not_allowed");
        (void) gateway_http_respond_error(res, 403, "origin_not_allowed",
                                          "the Origin is not this gateway");
        return;
    }
    if (gateway_auth_require_unpaired(oc->opts.auth, req, res) != 0)
        return;
    /* The bound of all first: a newcomer refused anyway ends nobody. */
    if (oc->nconns >= GATEWAY_OPENCLAW_CONNS_MAX) {
        (void) gateway_http_respond_error(res, 503, "too_many_connections",
                                          "too many OpenClaw connections are open");
        return;
    }
    if (!s_handshake_room(oc)) {
        (void) gateway_http_respond_error(res, 503, "too_many_connections",
                                          "too many OpenClaw handshakes are under way");
        return;
    }
    s_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    c->oc = oc;
    c->serial = ++oc->next_serial;
    if (!(c->ws = gateway_ws_accept(res, &s_ws_handlers, c, &oc->opts.ws))) {
        free(c);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    /* Until connect is accepted the parser refuses larger frames before
     * their payload, so a stranger never makes us buffer a full message. */
    gateway_ws_set_message_max(c->ws, oc->opts.preauth_max);
    c->loopback = router_addr_is_loopback(req->peer);
    gateway_auth_client(req->peer, c->client_addr);
    uint8_t u[16], n[32];
    proto_uuid_v7_new(u);
    proto_uuid_format(u, c->conn_id);
    randombytes_buf(n, sizeof n);
    sodium_bin2hex(c->nonce, sizeof c->nonce, n, sizeof n);
    c->next = oc->conns;
    if (oc->conns)
        oc->conns->prev = c;
    oc->conns = c;
    oc->nconns++;
    s_gauges(oc);
    char payload[128];
    snprintf(payload, sizeof payload, "{\"nonce\":\"%s\",\"ts\":%llu}", c->nonce,
             (unsigned long long) router_clock_wall_ms());
    s_event(c, "connect.challenge", payload);
    c->handshake_timer =
        router_loop_timer_add(oc->loop, GATEWAY_OPENCLAW_HANDSHAKE_MS, s_on_handshake_timeout, c);
    if (!c->handshake_timer)
        s_close(c, 1011, "no timer for the handshake");
}

/* ---------------------------------------------------------------- lifecycle */

gateway_openclaw_t *gateway_openclaw_new(gateway_http_t *g, router_loop_t *loop,
                                         const gateway_openclaw_opts_t *opts)
{
    if (!g || !loop || !opts || !opts->auth || !opts->turns) {
        errno = EINVAL;
        return NULL;
    }
    router_tokens_t *tokens = gateway_auth_tokens(opts->auth);
    if (!tokens) {
        errno = EINVAL;
        return NULL;
    }
    gateway_openclaw_t *oc = calloc(1, sizeof *oc);
    if (!oc) {
        errno = ENOMEM;
        return NULL;
    }
    oc->tokens = tokens;
    oc->g = g;
    oc->loop = loop;
    oc->opts = *opts;
    if (!oc->opts.tick_ms)
        oc->opts.tick_ms = GATEWAY_OPENCLAW_TICK_MS;
    if (oc->opts.tick_ms < GATEWAY_OPENCLAW_TICK_MIN_MS)
        oc->opts.tick_ms = GATEWAY_OPENCLAW_TICK_MIN_MS;
    if (!oc->opts.record_wait_ms)
        oc->opts.record_wait_ms = GATEWAY_OPENCLAW_RECORD_WAIT_MS;
    if (!oc->opts.preauth_max)
        oc->opts.preauth_max = GATEWAY_OPENCLAW_PREAUTH_MAX;
    if (!oc->opts.version)
        oc->opts.version = "kith";
    oc->started_mono = router_clock_mono_ms();
    if (gateway_http_route_ws(g, "/", NULL, 0, s_upgrade, oc) != 0) {
        int e = errno;
        free(oc);
        errno = e;
        return NULL;
    }
    router_metrics_t *m = opts->metrics;
    if (m) {
        oc->m_conns = router_metrics_add(m, "kith_openclaw_sockets", NULL, ROUTER_METRIC_GAUGE,
                                         "OpenClaw control sockets open.");
        oc->m_connected = router_metrics_add(m, "kith_openclaw_connected", NULL,
                                             ROUTER_METRIC_GAUGE,
                                             "OpenClaw control sockets past hello-ok.");
        oc->m_runs = router_metrics_add(m, "kith_openclaw_runs", NULL, ROUTER_METRIC_GAUGE,
                                        "OpenClaw runs unfinished.");
    }
    return oc;
}

void gateway_openclaw_destroy(gateway_openclaw_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_openclaw_t *oc = *self_p;
    for (s_conn_t *c = oc->conns; c; c = c->next)
        c->ws = NULL; /* the gateway let them go: nothing more is sent */
    while (oc->conns)
        s_conn_free(oc->conns);
    free(oc->presence_json);
    /* Writes still owed a callback: it will find no endpoint and free. */
    for (s_wait_t *w = oc->waits, *n; w; w = n) {
        n = w->next;
        w->oc = NULL;
        w->prev = w->next = NULL;
    }
    free(oc);
    *self_p = NULL;
}

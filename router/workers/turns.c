/* router/workers/turns.c — per-session turn queues (DESIGN §6): chat
 * messages and inbox entries wait FIFO per session, one turn in flight per
 * session goes through the broker to an agent worker, its partial and final
 * replies become /ws/chat frames for the session's subscribers and events
 * for /api/events, router-run tools are carried out here, and an inbox entry
 * is forgotten only once its turn (and a request's signed response) is
 * over. */
#include "router/workers/turns.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>
#include <yajl/yajl_tree.h>

#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "proto/worker_msg.h"
#include "router/clock.h"
#include "router/comms/envelope_json.h"
#include "router/log.h"
#include "router/workers/audit_feed.h"
#include "router/workers/sessions.h"
#include "router/workers/turn_json.h"
#include "router/workers/turn_source.h"

#define MOD "turns"
#define S_SERVICE "kith.agent"

/* Inbox entries held as turns at once (the rest wait in the inbox). */
#define S_INBOX_INFLIGHT_MAX 256u
/* Buckets of the turns in flight by serial: serials are consecutive, so
 * the turns in flight mostly get a bucket each (s_turn_by_serial). */
#define S_TURN_BUCKETS 1024u
/* How often the inbox is looked at without a kick, and how often controls
 * for a turn not yet dispatched are tried again. */
#define S_POLL_MS 100u
/* A stopped turn's worker gets this long to send its FINAL. */
#define S_STOP_GRACE_MS 5000u
/* Beyond turn_timeout_s the router waits this long before giving up. */
#define S_TIMEOUT_GRACE_MS 5000u
/* Steers held for a turn not yet dispatched. */
#define S_CONTROLS_MAX 16
/* Tool calls remembered per turn (id → name, for events). */
#define S_CALLS_MAX 32
/* Requests remembered for send_response (envelope id → sender). */
#define S_REQUESTS_MAX 1024
/* Response retry backoff. */
#define S_RETRY_MIN_MS 1000u
#define S_RETRY_MAX_MS 60000u

typedef struct s_session s_session_t;
typedef struct s_turn s_turn_t;
typedef struct s_json_req s_json_req_t;

typedef struct s_sub {
    router_turns_sub_t id;
    s_session_t *sess;
    router_turns_frame_fn *fn;
    void *ud;
    bool started;              /* session_start sent */
    struct s_sub *next;        /* in the session's list */
} s_sub_t;

typedef struct s_item {
    router_turns_t *t;
    bool from_inbox;
    router_turns_sub_t sub;    /* chat: the submitter */
    router_turn_source_t src;  /* session, channel, content, envelope */
    uint64_t seq;              /* inbox: the entry */
    uint64_t lock_timer;       /* chat: the lock timeout */
    uint64_t msg;              /* chat: the handle router_turns_withdraw takes */
    char *reply;               /* a request's response text, set as its turn ends */
    size_t reply_len;
    const char *end_status;    /* its turn ended: done, stopped, error (a response owed) */
    s_session_t *sess;
    struct s_item *next;
} s_item_t;

struct s_session {
    char id[ROUTER_TURNS_SESSION_ID_MAX + 1];
    s_sub_t *subs;
    s_item_t *q_head, *q_tail;
    size_t waiting_chat;       /* chat items in the queue (bounded) */
    size_t waiting;            /* all items in the queue */
    s_turn_t *active;
    bool pumping;              /* s_pump is starting turns: no nested pump, no gc */
};

typedef enum { T_LOADING, T_RUNNING } s_phase_t;

struct s_turn {
    uint64_t serial;
    uint8_t id[16];
    char id_text[PROTO_UUID_TEXT_CAP];
    router_turns_t *t;
    s_session_t *sess;
    s_item_t *item;
    s_phase_t phase;
    int64_t h;                 /* broker request, 0 before */
    uint64_t next_seq;
    uint64_t started_mono;
    uint64_t timer;            /* turn timeout, then stop grace */
    uint64_t retry_timer;      /* controls waiting for dispatch */
    uint64_t resend_timer;     /* an inbox turn the worker queue could not take: its next try */
    bool resending;            /* ...said once in the log */
    uint8_t *controls[S_CONTROLS_MAX];
    size_t control_len[S_CONTROLS_MAX];
    size_t ncontrols;
    bool stop_asked;
    bool stop_sent;
    struct { char id[64]; char name[64]; } calls[S_CALLS_MAX];
    size_t ncalls;
    bool has_done;             /* a done FINAL: the three below are known */
    uint64_t tool_iterations;
    bool has_tokens, has_cost;
    uint64_t tokens_used;
    double cost_usd;
    s_turn_t *bucket_next;     /* in t->by_serial[serial % S_TURN_BUCKETS] */
};

typedef struct {
    uint8_t id[16];
    uint8_t from[32];
    bool answered;
    bool used;
} s_request_t;

/* A signed response owed for a `request` entry, sent until acked. */
typedef struct s_resp {
    router_turns_t *t;
    uint64_t seq;              /* the inbox entry, done once acked */
    uint8_t to[32];
    uint8_t in_reply_to[16];
    proto_status_t status;
    char *result;
    size_t result_len;
    uint32_t delay_ms;
    uint64_t timer;
    bool sending;
    struct s_resp *prev, *next;
} s_resp_t;

/* A router-run tool's send in flight. */
typedef struct s_toolsend {
    router_turns_t *t;
    uint64_t serial;           /* the turn; gone: result dropped */
    char call_id[128];
    uint8_t envelope_id[16];
    struct s_toolsend *prev, *next;
} s_toolsend_t;

struct router_turns {
    router_turns_opts_t o;
    char comms_session[ROUTER_TURNS_SESSION_ID_MAX + 1];
    router_sessions_t *store;
    zhash_t *sessions;         /* id → s_session_t */
    zhash_t *subs;             /* "<id>" → s_sub_t */
    router_turns_sub_t next_sub;
    uint64_t next_serial;
    uint64_t next_msg;         /* chat messages' handles, from 1 */
    s_turn_t *by_serial[S_TURN_BUCKETS]; /* the turns in flight, by serial */
    size_t inbox_inflight;
    bool taking;                /* inside s_take_inbox: no nested take */
    uint64_t poll_timer;
    bool stalled;              /* a turn could not be allocated: s_poll pumps again */
    s_request_t requests[S_REQUESTS_MAX];
    size_t next_request;
    s_resp_t *resps;
    s_item_t *owed;            /* request entries whose response found no memory: s_poll retries */
    s_json_req_t *json_reqs;   /* session API calls the store has not answered */
    s_toolsend_t *toolsends;
    router_turns_event_fn *sink;
    void *sink_ud;
    router_audit_feed_t *audit;      /* tool calls are recorded here, or NULL */
    router_turns_stats_t st;
    router_metric_t *m_done, *m_stopped, *m_error, *m_running, *m_waiting, *m_depth,
        *m_responses;
    router_metric_t *m_stored, *m_stored_bytes, *m_pruned, *m_full; /* state.db's bounds */
    router_sessions_room_t store_room; /* as last logged (s_store_gauges) */
    router_histogram_t *h_duration;
};

static void s_pump(router_turns_t *t, s_session_t *sess);
static int s_pump_one(router_turns_t *t, s_session_t *sess);
static void s_turn_end(s_turn_t *turn, const char *status);
static void s_frame_error(s_turn_t *turn, const char *code, const char *message);
static void s_frame_stopped(s_turn_t *turn, const char *message);
static void s_poll(router_loop_t *loop, uint64_t id, void *ud);
static int s_control(s_turn_t *turn, proto_worker_req_type_t type, const char *content,
                     size_t len);
static void s_json_req_free(s_json_req_t *r);

/* ------------------------------------------------------------ small helpers */

static void s_gauges(router_turns_t *t)
{
    router_metric_set(t->m_running, t->st.running);
    router_metric_set(t->m_waiting, t->st.waiting);
}

static s_sub_t *s_sub(const router_turns_t *t, router_turns_sub_t id)
{
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long) id);
    return zhash_lookup(t->subs, key);
}

static s_turn_t *s_turn_by_serial(const router_turns_t *t, uint64_t serial)
{
    for (s_turn_t *x = t->by_serial[serial % S_TURN_BUCKETS]; x; x = x->bucket_next)
        if (x->serial == serial)
            return x;
    return NULL;
}

/* A new turn joins the ones in flight. */
static void s_turn_link(router_turns_t *t, s_turn_t *turn)
{
    s_turn_t **b = &t->by_serial[turn->serial % S_TURN_BUCKETS];
    turn->bucket_next = *b;
    *b = turn;
}

/* An ending turn leaves them. */
static void s_turn_unlink(router_turns_t *t, s_turn_t *turn)
{
    for (s_turn_t **pp = &t->by_serial[turn->serial % S_TURN_BUCKETS]; *pp;
         pp = &(*pp)->bucket_next)
        if (*pp == turn) {
            *pp = turn->bucket_next;
            break;
        }
}

static const char *s_channel_str(proto_worker_channel_t c)
{
    switch (c) {
    case PROTO_WORKER_CHANNEL_WS: return "ws";
    case PROTO_WORKER_CHANNEL_WEBHOOK: return "webhook";
    case PROTO_WORKER_CHANNEL_EXTERNAL_EVENT: return "external_event";
    case PROTO_WORKER_CHANNEL_COMMS: return "comms";
    }
    return "?";
}

static s_session_t *s_session_get(router_turns_t *t, const char *id, bool make)
{
    s_session_t *s = zhash_lookup(t->sessions, id);
    if (s || !make)
        return s;
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->id, sizeof s->id, "%s", id);
    if (zhash_insert(t->sessions, s->id, s) != 0) {
        free(s);
        return NULL;
    }
    t->st.sessions++;
    return s;
}

/* A session with nothing attached, queued or running is forgotten (its
 * state lives in state.db). */
static void s_session_gc(router_turns_t *t, s_session_t *s)
{
    if (s->subs || s->q_head || s->active || s->pumping)
        return;
    zhash_delete(t->sessions, s->id);
    t->st.sessions--;
    free(s);
}

/* ------------------------------------------------------------ frames and events */

static void s_deliver_one(s_sub_t *sub, router_turn_frame_type_t type, const char *json,
                          size_t len, const char *code, router_turns_sub_t submitter)
{
    router_turn_frame_t f = {.type = type, .json = json, .json_len = len,
                             .session_id = sub->sess->id, .code = code,
                             .submitter = submitter};
    sub->fn(&f, sub->ud);
}

/* The frame one subscriber gets when the frame meant for it could not be
 * made (out of memory): a fixed error, built without allocating, so a
 * client waiting for an answer (a session_start, an error, a stop's reply)
 * is told instead of left waiting. */
static void s_deliver_oom(s_sub_t *sub)
{
    static const char oom[] =
        "{\"type\":\"error\",\"code\":\"AGENT_ERROR\",\"message\":\"out of memory\"}";
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "session %s: out of memory for a frame: AGENT_ERROR sent",
               sub->sess->id);
    s_deliver_one(sub, ROUTER_TURN_FRAME_ERROR, oom, sizeof oom - 1, "AGENT_ERROR", 0);
}

static const char *s_frame_name(router_turn_frame_type_t type)
{
    switch (type) {
    case ROUTER_TURN_FRAME_SESSION_START: return "session_start";
    case ROUTER_TURN_FRAME_CHUNK: return "chunk";
    case ROUTER_TURN_FRAME_THINKING: return "thinking";
    case ROUTER_TURN_FRAME_CHUNK_RESET: return "chunk_reset";
    case ROUTER_TURN_FRAME_TOOL_CALL: return "tool_call";
    case ROUTER_TURN_FRAME_TOOL_RESULT: return "tool_result";
    case ROUTER_TURN_FRAME_OPERATOR_STATUS: return "operator_status";
    case ROUTER_TURN_FRAME_AGENT_EVENT: return "agent_event";
    case ROUTER_TURN_FRAME_DONE: return "done";
    case ROUTER_TURN_FRAME_STOPPED: return "stopped";
    case ROUTER_TURN_FRAME_ERROR: return "error";
    }
    return "?";
}

static void s_deliver(router_turns_t *t, s_session_t *sess, router_turn_frame_type_t type,
                      const char *json, size_t len, const char *code);

/* A frame of the turn in flight that could not be made (out of memory) is
 * not dropped in silence: its subscribers get one built without
 * allocating, so nobody waits for ever on a turn's end that was sent to
 * nobody. A stop's is its `stopped` without the message; any other is an
 * error naming the frame lost (for `done`, its answer is in the session's
 * history; an `error` keeps its code). */
static void s_deliver_lost(router_turns_t *t, s_session_t *sess, router_turn_frame_type_t type,
                           const char *code)
{
    const char *turn_id = sess->active ? sess->active->id_text : "";
    char json[320];
    int n;
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "turn %s: out of memory for its %s frame: told instead",
               turn_id, s_frame_name(type));
    if (type == ROUTER_TURN_FRAME_STOPPED) {
        n = snprintf(json, sizeof json, "{\"type\":\"stopped\",\"turn_id\":\"%s\"}", turn_id);
    } else {
        if (type != ROUTER_TURN_FRAME_ERROR || !code)
            code = "AGENT_ERROR";
        n = snprintf(json, sizeof json,
                     "{\"type\":\"error\",\"turn_id\":\"%s\",\"code\":\"%s\",\"message\":"
                     "\"out of memory: the turn's %s frame was lost%s\"}",
                     turn_id, code, s_frame_name(type),
                     type == ROUTER_TURN_FRAME_DONE ? "; its answer is in the session's history"
                                                    : "");
        type = ROUTER_TURN_FRAME_ERROR;
    }
    if (n > 0 && (size_t) n < sizeof json)
        s_deliver(t, sess, type, json, (size_t) n, type == ROUTER_TURN_FRAME_ERROR ? code : NULL);
}

/* Every started subscriber of the session gets the frame (json NULL: it
 * could not be made, s_deliver_lost). A callback may detach subscribers
 * (its own or others), or end the turn and so free the session: each
 * batch of ids is collected first and delivered by id, and the next batch
 * is collected again from the session looked up by its id, no pointer
 * kept across a callback. A session's list is newest first, so its ids
 * fall: the next batch is the ids below the last one delivered (one
 * attached meanwhile is above, and was not there for this frame). */
static void s_deliver(router_turns_t *t, s_session_t *sess, router_turn_frame_type_t type,
                      const char *json, size_t len, const char *code)
{
    if (!json) {
        s_deliver_lost(t, sess, type, code);
        return;
    }
    /* Every caller delivers a frame of the session's turn in flight. */
    router_turns_sub_t submitter = sess->active && sess->active->item ? sess->active->item->sub : 0;
    char sid[sizeof sess->id];
    memcpy(sid, sess->id, sizeof sid);
    router_turns_sub_t ids[64], below = UINT64_MAX;
    for (;;) {
        size_t n = 0;
        for (s_sub_t *s = sess->subs; s && n < sizeof ids / sizeof ids[0]; s = s->next)
            if (s->started && s->id < below)
                ids[n++] = s->id;
        for (size_t i = 0; i < n; i++) {
            s_sub_t *x = s_sub(t, ids[i]);
            if (x)
                s_deliver_one(x, type, json, len, code, submitter);
        }
        if (n < sizeof ids / sizeof ids[0] || !(sess = zhash_lookup(t->sessions, sid)))
            return;
        below = ids[n - 1]; /* many sockets on one session: the next batch */
    }
}

/* An event for /api/events. One that cannot be made (out of memory) is
 * not dropped in silence: the sink is told its type with no object, and
 * tells its readers (gateway/route_chat.c: a stream_gap, relays closed). */
static void s_event(router_turns_t *t, const char *type, router_json_obj_t *o)
{
    char *json = router_json_end(o, NULL);
    if (!json)
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "out of memory for a %s event: reported lost", type);
    if (t->sink)
        t->sink(type, json, t->sink_ud);
    free(json);
}

static void s_event_begin(router_json_obj_t *o, const s_turn_t *turn)
{
    router_json_begin(o, NULL);
    router_json_cstr(o, "session_id", turn->sess->id);
    router_json_cstr(o, "turn_id", turn->id_text);
}

/* An error frame to one subscriber (a message that never became a turn). */
static void s_error_to(router_turns_t *t, router_turns_sub_t id, const char *code,
                       const char *message)
{
    s_sub_t *sub = s_sub(t, id);
    if (!sub)
        return;
    router_json_obj_t o;
    router_json_begin(&o, "error");
    router_json_cstr(&o, "code", code);
    router_json_cstr(&o, "message", message);
    size_t len = 0;
    char *json = router_json_end(&o, &len);
    if (json)
        s_deliver_one(sub, ROUTER_TURN_FRAME_ERROR, json, len, code, 0);
    else
        s_deliver_oom(sub);
    free(json);
}

/* ------------------------------------------------------------ items */

/* What a request's response will say, first writer wins. */
static void s_reply_set(s_item_t *it, const char *text, size_t len)
{
    if (it->reply || !it->from_inbox || !it->src.is_request)
        return;
    if ((it->reply = malloc(len + 1))) {
        memcpy(it->reply, text, len);
        it->reply[len] = '\0';
        it->reply_len = len;
    }
}

static void s_item_free(s_item_t *it)
{
    if (!it)
        return;
    free(it->reply);
    router_turn_source_clear(&it->src);
    free(it);
}

static void s_item_unqueue(router_turns_t *t, s_item_t *it)
{
    s_session_t *s = it->sess;
    s_item_t *prev = NULL;
    for (s_item_t *x = s->q_head; x; prev = x, x = x->next) {
        if (x != it)
            continue;
        if (prev)
            prev->next = x->next;
        else
            s->q_head = x->next;
        if (s->q_tail == x)
            s->q_tail = prev;
        x->next = NULL;
        s->waiting--;
        if (!x->from_inbox)
            s->waiting_chat--;
        t->st.waiting--;
        break;
    }
    if (it->lock_timer) {
        (void) router_loop_timer_cancel(t->o.loop, it->lock_timer);
        it->lock_timer = 0;
    }
    s_gauges(t);
}

/* An inbox item whose turn could not start goes back first in line
 * (s_pump_one), where s_poll's s_pump_stalled finds it. */
static void s_requeue_first(router_turns_t *t, s_session_t *sess, s_item_t *it)
{
    it->sess = sess;
    it->next = sess->q_head;
    sess->q_head = it;
    if (!sess->q_tail)
        sess->q_tail = it;
    sess->waiting++;
    if (!it->from_inbox)
        sess->waiting_chat++;
    t->st.waiting++;
    t->stalled = true;
    s_gauges(t);
}

static void s_enqueue(router_turns_t *t, s_session_t *sess, s_item_t *it)
{
    it->sess = sess;
    if (sess->q_tail)
        sess->q_tail->next = it;
    else
        sess->q_head = it;
    sess->q_tail = it;
    sess->waiting++;
    if (!it->from_inbox)
        sess->waiting_chat++;
    t->st.waiting++;
    s_gauges(t);
}

/* ------------------------------------------------------------ responses to requests */

static s_request_t *s_request_find(router_turns_t *t, const uint8_t id[16])
{
    for (size_t i = 0; i < S_REQUESTS_MAX; i++)
        if (t->requests[i].used && memcmp(t->requests[i].id, id, 16) == 0)
            return &t->requests[i];
    return NULL;
}

static void s_request_note(router_turns_t *t, const uint8_t id[16], const uint8_t from[32])
{
    if (s_request_find(t, id))
        return;
    s_request_t *r = &t->requests[t->next_request];
    t->next_request = (t->next_request + 1) % S_REQUESTS_MAX;
    memcpy(r->id, id, 16);
    memcpy(r->from, from, 32);
    r->answered = false;
    r->used = true;
}

static void s_resp_free(router_turns_t *t, s_resp_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        t->resps = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->timer)
        (void) router_loop_timer_cancel(t->o.loop, r->timer);
    free(r->result);
    free(r);
}

static void s_inbox_done(router_turns_t *t, uint64_t seq)
{
    if (t->o.inbox && router_inbox_done(t->o.inbox, seq) != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "inbox entry seq=%llu was not leased",
                   (unsigned long long) seq);
    t->inbox_inflight--;
    router_metric_set(t->m_depth, t->o.inbox ? router_inbox_count(t->o.inbox) : 0);
}

static void s_take_inbox(router_turns_t *t);

static void s_resp_send(s_resp_t *r);

static void s_resp_retry(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_resp_t *r = ud;
    r->timer = 0;
    s_resp_send(r);
}

static void s_resp_sent(router_send_outcome_t outcome, const char *detail, const uint8_t *ack_id,
                        void *ud)
{
    (void) ack_id;
    s_resp_t *r = ud;
    router_turns_t *t = r->t;
    r->sending = false;
    char irt[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(r->in_reply_to, irt);
    if (outcome == ROUTER_SEND_ACKED || outcome == ROUTER_SEND_REJECTED) {
        if (outcome == ROUTER_SEND_REJECTED)
            ROUTER_LOG(ROUTER_LOG_WARN, MOD, "response to %s refused by the peer (%s): dropped",
                       irt, detail);
        else
            router_metric_inc(t->m_responses, 1);
        s_inbox_done(t, r->seq);
        s_resp_free(t, r);
        s_take_inbox(t); /* its slot is free: the next entry need not wait */
        return;
    }
    r->delay_ms = r->delay_ms ? r->delay_ms * 2 : S_RETRY_MIN_MS;
    if (r->delay_ms > S_RETRY_MAX_MS)
        r->delay_ms = S_RETRY_MAX_MS;
    ROUTER_LOG(ROUTER_LOG_INFO, MOD, "response to %s not acked (%s): retrying in %u ms", irt,
               detail, r->delay_ms);
    r->timer = router_loop_timer_add(t->o.loop, r->delay_ms, s_resp_retry, r);
}

static void s_resp_send(s_resp_t *r)
{
    router_turns_t *t = r->t;
    char detail[160] = "no comms";
    cbor_item_t *result = cbor_build_stringn(r->result, r->result_len);
    cbor_item_t *kind = result ? proto_kind_response(r->in_reply_to, r->status, &result) : NULL;
    uint8_t id[16];
    if (kind && t->o.send &&
        t->o.send(t->o.send_ud, r->to, &kind, id, s_resp_sent, r, detail, sizeof detail) == 0) {
        r->sending = true;
        return;
    }
    if (kind)
        cbor_decref(&kind);
    /* Not even sent (no route now): the same backoff as an offline peer. */
    s_resp_sent(ROUTER_SEND_OFFLINE, detail, NULL, r);
}

/* The turn of a `request` entry ended: answer its sender; the entry is
 * done once the answer is acked. Returns 0, or -1 with no memory for it
 * (the caller keeps the entry and tries again: its sender is owed it). */
static int s_respond(router_turns_t *t, const s_item_t *it, proto_status_t status,
                     const char *result, size_t len)
{
    s_resp_t *r = calloc(1, sizeof *r);
    if (!r || !(r->result = malloc(len + 1))) {
        free(r);
        return -1;
    }
    r->t = t;
    r->seq = it->seq;
    memcpy(r->to, it->src.from, 32);
    memcpy(r->in_reply_to, it->src.envelope_id, 16);
    r->status = status;
    memcpy(r->result, result, len);
    r->result[len] = '\0';
    r->result_len = len;
    r->next = t->resps;
    if (t->resps)
        t->resps->prev = r;
    t->resps = r;
    s_resp_send(r);
    return 0;
}

/* s_respond for an item whose turn ended (it->end_status): its reply, or
 * a line saying how the turn ended. A done turn always sets its reply
 * (s_on_final): without one, the answer found no memory to be kept, and
 * the response says so, failed, never `completed` with a result that is
 * not the answer. */
static int s_respond_item(router_turns_t *t, const s_item_t *it)
{
    char why[64];
    const char *text = it->reply;
    size_t len = it->reply_len;
    bool done = strcmp(it->end_status, "done") == 0;
    if (!text) {
        if (done)
            len = (size_t) snprintf(why, sizeof why, "the turn's answer was lost (out of memory)");
        else
            len = (size_t) snprintf(why, sizeof why, "the turn ended: %s", it->end_status);
        text = why;
        done = false;
    }
    return s_respond(t, it, done ? PROTO_STATUS_COMPLETED : PROTO_STATUS_FAILED, text, len);
}

/* Responses that found no memory when their turn ended, tried again (from
 * s_poll): before, the entry stayed leased and its sender unanswered
 * until the daemon restarted. */
static void s_respond_owed(router_turns_t *t)
{
    for (s_item_t **pp = &t->owed; *pp;) {
        s_item_t *it = *pp;
        if (s_respond_item(t, it) != 0)
            return; /* still short: the next poll */
        *pp = it->next;
        s_item_free(it);
    }
}

/* ------------------------------------------------------------ the turn request */

static const struct {
    const char *name, *description, *parameters;
} s_router_tools[] = {
    {"send_message",
     "Send a signed message to a trusted peer. The result says whether the peer acked it.",
     "{\"type\":\"object\",\"properties\":{\"peer\":{\"type\":\"string\",\"description\":"
     "\"a trusted peer's name, PeerId or ed25519: key\"},\"body\":{\"type\":\"string\"}},"
     "\"required\":[\"peer\",\"body\"],\"additionalProperties\":false}"},
    {"send_request",
     "Send a signed request (an intent with JSON params) to a trusted peer; its response "
     "arrives later as a message of this session's comms.",
     "{\"type\":\"object\",\"properties\":{\"peer\":{\"type\":\"string\"},\"intent\":"
     "{\"type\":\"string\"},\"params\":{}},\"required\":[\"peer\",\"intent\"],"
     "\"additionalProperties\":false}"},
    {"send_response",
     "Answer a request envelope by its id with a status and a JSON result.",
     "{\"type\":\"object\",\"properties\":{\"in_reply_to\":{\"type\":\"string\",\"description\":"
     "\"the request envelope's id (a UUID)\"},\"status\":{\"type\":\"string\",\"enum\":"
     "[\"accepted\",\"completed\",\"failed\"]},\"result\":{}},\"required\":[\"in_reply_to\","
     "\"status\"],\"additionalProperties\":false}"},
    {"peers", "List the trusted peers (names, keys, addresses).",
     "{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}"},
};
#define S_NTOOLS (sizeof s_router_tools / sizeof s_router_tools[0])

static proto_worker_str_t s_str(const char *p, size_t len)
{
    return (proto_worker_str_t) {.p = p, .len = len};
}

static proto_worker_str_t s_cstr(const char *p)
{
    return s_str(p, strlen(p));
}

/* Sends the turn request, history and all; drops the oldest history until
 * the body fits. */
static int s_turn_send(s_turn_t *turn, const router_sessions_msg_t *msgs, size_t n);

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud);

static void s_on_turn_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_turn_t *turn = ud;
    turn->timer = 0;
    router_turns_t *t = turn->t;
    if (turn->stop_asked) {
        /* The worker never sent the FINAL of a stopped turn. */
        s_frame_stopped(turn, "stopped");
        s_turn_end(turn, "stopped");
        return;
    }
    bool waiting = turn->h > 0 && router_broker_queued(t->o.broker, turn->h);
    if (waiting && turn->item->from_inbox) {
        /* No worker has taken it: a durable entry waits for one, however
         * long (its turn's clock starts again each time). */
        turn->timer = router_loop_timer_add(t->o.loop,
                                            (uint64_t) t->o.turn_timeout_s * 1000u +
                                                S_TIMEOUT_GRACE_MS,
                                            s_on_turn_timeout, turn);
        return;
    }
    /* A worker holding it is told to stop too: else it runs on (a provider
     * call, a wait for controls) and takes no other turn meanwhile. Its
     * FINAL, when it comes, finds the request over and is dropped. */
    if (!waiting && turn->h > 0)
        (void) s_control(turn, PROTO_WORKER_REQ_STOP, NULL, 0);
    s_frame_error(turn, "AGENT_ERROR", waiting ? "no agent worker took the turn in time"
                                              : "the turn timed out");
    s_turn_end(turn, "error");
}

static int s_turn_send(s_turn_t *turn, const router_sessions_msg_t *msgs, size_t n)
{
    router_turns_t *t = turn->t;
    const s_item_t *it = turn->item;
    proto_worker_request_t req = {.type = PROTO_WORKER_REQ_TURN};
    proto_worker_turn_t *tr = &req.turn;
    proto_worker_tool_spec_t tools[S_NTOOLS];
    proto_worker_chat_msg_t *hist = calloc(n ? n : 1, sizeof *hist);
    if (!hist)
        return -1;
    memcpy(tr->turn_id, turn->id, 16);
    tr->session_id = s_cstr(turn->sess->id);
    tr->message.role = PROTO_WORKER_ROLE_USER;
    tr->message.content = s_str(it->src.content, it->src.len);
    for (size_t i = 0; i < n; i++) {
        hist[i].role = strcmp(msgs[i].role, "assistant") == 0 ? PROTO_WORKER_ROLE_ASSISTANT
                                                              : PROTO_WORKER_ROLE_USER;
        hist[i].content = s_str(msgs[i].content, msgs[i].len);
    }
    for (size_t i = 0; i < S_NTOOLS; i++)
        tools[i] = (proto_worker_tool_spec_t) {
            .name = s_cstr(s_router_tools[i].name),
            .description = s_cstr(s_router_tools[i].description),
            .parameters = s_cstr(s_router_tools[i].parameters),
            .executor = PROTO_WORKER_EXEC_ROUTER,
        };
    tr->tools = tools;
    tr->n_tools = S_NTOOLS;
    tr->max_tool_iterations = t->o.max_tool_iterations;
    tr->turn_timeout_s = t->o.turn_timeout_s;
    tr->origin.channel = it->from_inbox ? it->src.channel : PROTO_WORKER_CHANNEL_WS;
    if (it->src.envelope) {
        tr->origin.has_envelope_id = true;
        memcpy(tr->origin.envelope_id, it->src.envelope_id, 16);
        tr->origin.has_from = true;
        memcpy(tr->origin.from, it->src.from, 32);
        tr->origin.envelope_type = it->src.envtype;
    }
    uint8_t *body = NULL;
    size_t blen = 0;
    proto_worker_error_t err;
    size_t skip = 0;
    int rc = -1;
    for (;;) {
        tr->history = hist + skip;
        tr->n_history = n - skip;
        if (proto_worker_request_encode(&req, &body, &blen, &err) == 0)
            break;
        if (err.reason != PROTO_WORKER_TOO_LARGE || skip == n) {
            ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "cannot encode turn %s: %s (%s)", turn->id_text,
                       proto_worker_reason_str(err.reason), err.field);
            goto done;
        }
        skip += (n - skip + 1) / 2; /* drop the older half of what is left */
    }
    turn->h = router_broker_request(t->o.broker, S_SERVICE, body, blen, s_on_reply, turn);
    if (turn->h < 0) {
        turn->h = 0;
        goto done;
    }
    uint64_t ms = (uint64_t) t->o.turn_timeout_s * 1000u + S_TIMEOUT_GRACE_MS;
    turn->timer = router_loop_timer_add(t->o.loop, ms, s_on_turn_timeout, turn);
    if (!turn->timer) {
        /* Without its timeout a turn no worker takes (or one that never
         * answers) would hold its session, and its client, for ever. */
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "turn %s: no timer for its timeout (%s): not sent",
                   turn->id_text, strerror(errno));
        router_broker_cancel(t->o.broker, turn->h);
        turn->h = 0;
        goto done;
    }
    turn->phase = T_RUNNING;
    rc = 0;
done:
    free(body);
    free(hist);
    return rc;
}

/* ------------------------------------------------------------ starting and ending */

static void s_frame_error(s_turn_t *turn, const char *code, const char *message)
{
    router_json_obj_t o;
    router_json_begin(&o, "error");
    router_json_cstr(&o, "turn_id", turn->id_text);
    router_json_cstr(&o, "code", code);
    router_json_cstr(&o, "message", message);
    size_t jl = 0;
    char *json = router_json_end(&o, &jl);
    s_deliver(turn->t, turn->sess, ROUTER_TURN_FRAME_ERROR, json, jl, code);
    free(json);
    s_reply_set(turn->item, message, strlen(message));
    router_json_obj_t e;
    s_event_begin(&e, turn);
    router_json_cstr(&e, "code", code);
    router_json_cstr(&e, "message", message);
    s_event(turn->t, "error", &e);
}

static void s_frame_stopped(s_turn_t *turn, const char *message)
{
    router_json_obj_t o;
    router_json_begin(&o, "stopped");
    router_json_cstr(&o, "turn_id", turn->id_text);
    if (message)
        router_json_cstr(&o, "message", message);
    size_t jl = 0;
    char *json = router_json_end(&o, &jl);
    s_deliver(turn->t, turn->sess, ROUTER_TURN_FRAME_STOPPED, json, jl, NULL);
    free(json);
    static const char stopped[] = "the turn was stopped";
    s_reply_set(turn->item, stopped, sizeof stopped - 1);
}

static void s_on_history(void *ud, uint64_t tag, int rc, const router_sessions_msg_t *msgs,
                         size_t n);

static void s_resend(router_loop_t *loop, uint64_t id, void *ud);

/* An inbox turn the worker queue cannot take now (full, or no memory to
 * send it): its acked entry is not ended for a passing shortage. S_POLL_MS
 * later its history is read again and the turn sent (s_resend); a stop
 * meanwhile ends it then. -1: no timer for that. */
static int s_resend_later(s_turn_t *turn)
{
    router_turns_t *t = turn->t;
    if (!turn->resend_timer &&
        !(turn->resend_timer = router_loop_timer_add(t->o.loop, S_POLL_MS, s_resend, turn)))
        return -1;
    if (!turn->resending)
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "turn %s of inbox entry seq=%llu: the worker queue"
                   " cannot take it now (full, or no memory): tried again every %u ms",
                   turn->id_text, (unsigned long long) turn->item->seq, S_POLL_MS);
    turn->resending = true;
    return 0;
}

static void s_resend(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_turn_t *turn = ud;
    router_turns_t *t = turn->t;
    turn->resend_timer = 0;
    if (turn->stop_asked) {
        s_frame_stopped(turn, "stopped before it started");
        s_turn_end(turn, "stopped");
        return;
    }
    if (router_sessions_history(t->store, turn->sess->id, t->o.max_history_messages,
                                s_on_history, t, turn->serial) != 0 &&
        s_resend_later(turn) != 0) {
        s_frame_error(turn, "AGENT_ERROR",
                      "the worker queue is full or the turn cannot be sent (out of memory)");
        s_turn_end(turn, "error");
    }
}

static void s_on_history(void *ud, uint64_t tag, int rc, const router_sessions_msg_t *msgs,
                         size_t n)
{
    router_turns_t *t = ud;
    s_turn_t *turn = s_turn_by_serial(t, tag);
    if (!turn || turn->phase != T_LOADING || turn->resend_timer)
        return;
    if (turn->stop_asked) {
        s_frame_stopped(turn, "stopped before it started");
        s_turn_end(turn, "stopped");
        return;
    }
    if (rc != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "turn %s: history unreadable, sent without it",
                   turn->id_text);
        n = 0;
    }
    /* A second try's read holds the turn's own message, stored at its
     * first: the history is what came before it. */
    while (n > 0 && strcmp(msgs[n - 1].turn_id, turn->id_text) == 0)
        n--;
    if (s_turn_send(turn, msgs, n) != 0) {
        if (turn->item->from_inbox && s_resend_later(turn) == 0)
            return;
        s_frame_error(turn, "AGENT_ERROR",
                      "the worker queue is full or the turn cannot be sent (out of memory)");
        s_turn_end(turn, "error");
    }
}

/* The next waiting item of the session becomes its turn. A turn that
 * cannot start ends at once (s_turn_end), and the next is tried, in this
 * loop: s_turn_end's own pump and gc see `pumping` and leave the session to
 * it. (Recursing instead, a backlog that fails to start — the session
 * store's queue full — nested a frame per item and freed the session
 * inside calls that went on using it.) */
static void s_pump(router_turns_t *t, s_session_t *sess)
{
    if (sess->pumping)
        return;
    sess->pumping = true;
    while (!sess->active && sess->q_head && s_pump_one(t, sess) == 0) {
    }
    sess->pumping = false;
}

/* Pumps every session whose first item waits with no turn running: those
 * whose turn could not be allocated (s_pump_one). Sessions are visited by
 * key, since pumping one may collect it. */
static void s_pump_stalled(router_turns_t *t)
{
    zlist_t *keys = zhash_keys(t->sessions);
    if (!keys)
        return; /* still short: the next s_poll tries again */
    t->stalled = false;
    for (const char *k = zlist_first(keys); k; k = zlist_next(keys)) {
        s_session_t *sess = zhash_lookup(t->sessions, k);
        if (sess && !sess->active && sess->q_head) {
            s_pump(t, sess);
            s_session_gc(t, sess);
        }
    }
    zlist_destroy(&keys);
}

/* Starts the session's first waiting item (s_pump): 0, or -1 when no turn
 * could be allocated for an inbox item, or the session store could not
 * take its history read and message, which then stays first in line until
 * s_poll pumps again (a durable entry is not dropped for a passing
 * shortage; a chat message is answered AGENT_ERROR, its sender can send it
 * again). */
static int s_pump_one(router_turns_t *t, s_session_t *sess)
{
    s_item_t *it = sess->q_head;
    s_turn_t *turn = calloc(1, sizeof *turn);
    if (!turn && it->from_inbox) {
        t->stalled = true;
        return -1;
    }
    s_item_unqueue(t, it);
    if (!turn) {
        s_error_to(t, it->sub, "AGENT_ERROR", "out of memory");
        s_item_free(it);
        return 0;
    }
    turn->t = t;
    turn->serial = ++t->next_serial;
    proto_uuid_v7_new(turn->id);
    proto_uuid_format(turn->id, turn->id_text);
    turn->sess = sess;
    turn->item = it;
    turn->phase = T_LOADING;
    turn->started_mono = router_clock_mono_ms();
    s_turn_link(t, turn);
    sess->active = turn;
    t->st.running++;
    s_gauges(t);
    /* History first (it must not hold this message), then the message.
     * Neither answers inside the call: agent_start still comes first. */
    bool stored = router_sessions_history(t->store, sess->id, t->o.max_history_messages,
                                          s_on_history, t, turn->serial) == 0 &&
                  router_sessions_append(t->store, sess->id, "user", it->src.content,
                                         it->src.len, turn->id_text) == 0;
    if (!stored && it->from_inbox) {
        /* The store cannot take it now (its queue full behind a failing
         * disk, no memory): an acked entry is not ended for that, it waits
         * first in line for s_poll, as for a turn not allocated. A history
         * read already queued finds no turn of its serial and is dropped. */
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "session %s: the store refuses inbox entry seq=%llu"
                   " (%s): it waits for a retry", sess->id, (unsigned long long) it->seq,
                   errno == EAGAIN ? "its queue is full" : strerror(errno));
        s_turn_unlink(t, turn);
        sess->active = NULL;
        t->st.running--;
        free(turn);
        s_requeue_first(t, sess, it);
        return -1;
    }
    if (it->src.envelope && it->src.is_request)
        s_request_note(t, it->src.envelope_id, it->src.from);

    router_json_obj_t e;
    s_event_begin(&e, turn);
    router_json_cstr(&e, "channel", s_channel_str(it->src.channel));
    s_event(t, "agent_start", &e);
    if (!stored) {
        s_frame_error(turn, "AGENT_ERROR", "the session store is overloaded");
        s_turn_end(turn, "error");
    }
    return 0;
}

/* Cancels whichever of a turn's timers are set (it is ending). */
static void s_turn_timers_cancel(s_turn_t *turn)
{
    router_loop_t *loop = turn->t->o.loop;
    if (turn->timer)
        (void) router_loop_timer_cancel(loop, turn->timer);
    if (turn->retry_timer)
        (void) router_loop_timer_cancel(loop, turn->retry_timer);
    if (turn->resend_timer)
        (void) router_loop_timer_cancel(loop, turn->resend_timer);
    turn->timer = turn->retry_timer = turn->resend_timer = 0;
}

/* Frees turn, finishes its item, starts the next. `status`: done, stopped,
 * error; the final frame has been delivered already. */
static void s_turn_end(s_turn_t *turn, const char *status)
{
    router_turns_t *t = turn->t;
    s_session_t *sess = turn->sess;
    s_item_t *it = turn->item;
    s_turn_timers_cancel(turn);
    if (turn->h > 0)
        router_broker_cancel(t->o.broker, turn->h); /* nothing if already over */
    for (size_t i = 0; i < turn->ncontrols; i++)
        free(turn->controls[i]);
    s_turn_unlink(t, turn);
    uint64_t ms = router_clock_mono_ms() - turn->started_mono;
    router_histogram_observe(t->h_duration, ms);
    router_json_obj_t e;
    s_event_begin(&e, turn);
    router_json_cstr(&e, "status", status);
    router_json_u64(&e, "duration_ms", ms);
    if (turn->has_done)
        router_json_u64(&e, "tool_iterations", turn->tool_iterations);
    if (turn->has_tokens)
        router_json_u64(&e, "tokens_used", turn->tokens_used);
    if (turn->has_cost)
        router_json_double(&e, "cost_usd", turn->cost_usd);
    s_event(t, "agent_end", &e);
    t->st.running--;
    if (strcmp(status, "done") == 0) {
        t->st.done++;
        router_metric_inc(t->m_done, 1);
    } else if (strcmp(status, "stopped") == 0) {
        t->st.stopped++;
        router_metric_inc(t->m_stopped, 1);
    } else {
        t->st.errors++;
        router_metric_inc(t->m_error, 1);
    }
    s_gauges(t);
    sess->active = NULL;
    free(turn);
    if (it->from_inbox) {
        s_request_t *rq = it->src.is_request ? s_request_find(t, it->src.envelope_id) : NULL;
        if (it->src.is_request && !(rq && rq->answered)) {
            it->end_status = status;
            if (s_respond_item(t, it) != 0) {
                ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "out of memory for the response to inbox"
                           " entry seq=%llu: tried again", (unsigned long long) it->seq);
                it->next = t->owed; /* the entry stays leased until it is sent */
                t->owed = it;
                it = NULL;
            }
        } else {
            s_inbox_done(t, it->seq);
        }
    }
    bool from_inbox = !it || it->from_inbox;
    s_item_free(it);
    s_pump(t, sess);
    s_session_gc(t, sess);
    /* A slot of S_INBOX_INFLIGHT_MAX came free: entries left waiting when
     * it was full are taken now, not at the next commit or S_POLL_MS. */
    if (from_inbox)
        s_take_inbox(t);
}

/* ------------------------------------------------------------ controls */

/* Sends the controls held for a turn to its worker, once one holds it. */
static void s_controls_flush(s_turn_t *turn);

static void s_controls_retry(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_turn_t *turn = ud;
    turn->retry_timer = 0;
    s_controls_flush(turn);
}

static void s_controls_flush(s_turn_t *turn)
{
    router_turns_t *t = turn->t;
    size_t sent = 0;
    if (turn->phase == T_RUNNING && turn->h > 0 && !router_broker_queued(t->o.broker, turn->h)) {
        while (sent < turn->ncontrols &&
               router_broker_send_to_holder(t->o.broker, turn->h, turn->controls[sent],
                                            turn->control_len[sent]) == 0)
            free(turn->controls[sent++]);
    }
    memmove(turn->controls, turn->controls + sent, (turn->ncontrols - sent) * sizeof(uint8_t *));
    memmove(turn->control_len, turn->control_len + sent,
            (turn->ncontrols - sent) * sizeof(size_t));
    turn->ncontrols -= sent;
    if (turn->ncontrols && !turn->retry_timer)
        turn->retry_timer = router_loop_timer_add(t->o.loop, S_POLL_MS, s_controls_retry, turn);
}

static int s_control(s_turn_t *turn, proto_worker_req_type_t type, const char *content,
                     size_t len)
{
    if (turn->ncontrols == S_CONTROLS_MAX)
        return -1;
    proto_worker_request_t req = {.type = type};
    memcpy(req.control.turn_id, turn->id, 16);
    if (content)
        req.control.content = s_str(content, len);
    uint8_t *body = NULL;
    size_t blen = 0;
    proto_worker_error_t err;
    if (proto_worker_request_encode(&req, &body, &blen, &err) != 0)
        return -1;
    turn->controls[turn->ncontrols] = body;
    turn->control_len[turn->ncontrols] = blen;
    turn->ncontrols++;
    s_controls_flush(turn);
    return 0;
}

/* A router-tool-result to the worker holding the turn. */
/* Asks the running turn's worker to stop (a STOP control) and gives it
 * S_STOP_GRACE_MS to end the turn before the router does. */
static void s_turn_stop_ask(s_turn_t *turn)
{
    router_turns_t *t = turn->t;
    turn->stop_asked = true;
    (void) s_control(turn, PROTO_WORKER_REQ_STOP, NULL, 0);
    if (turn->timer)
        (void) router_loop_timer_cancel(t->o.loop, turn->timer);
    turn->timer = router_loop_timer_add(t->o.loop, S_STOP_GRACE_MS, s_on_turn_timeout, turn);
}

/* A tool result that cannot reach the worker (no memory for it, or its
 * control queue full): the worker would wait for it until the turn timed
 * out, so the turn is stopped now, as a user's stop would (the worker
 * ends it, or S_STOP_GRACE_MS later the router does), with an error first
 * saying why. */
static void s_tool_lost(s_turn_t *turn, const char *why)
{
    ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "turn %s: a tool result was lost (%s); stopping the turn",
               turn->id_text, why);
    if (turn->stop_asked)
        return;
    s_frame_error(turn, "AGENT_ERROR", "a tool result could not be sent to the worker");
    s_turn_stop_ask(turn);
}

static void s_tool_result(s_turn_t *turn, const char *call_id, const char *json, size_t len,
                          bool is_error)
{
    proto_worker_request_t req = {.type = PROTO_WORKER_REQ_TOOL_RESULT};
    memcpy(req.tool_result.turn_id, turn->id, 16);
    req.tool_result.id = s_cstr(call_id);
    req.tool_result.result = s_str(json, len);
    req.tool_result.is_error = is_error;
    uint8_t *body = NULL;
    size_t blen = 0;
    proto_worker_error_t err;
    if (proto_worker_request_encode(&req, &body, &blen, &err) != 0) {
        s_tool_lost(turn, proto_worker_reason_str(err.reason));
        return;
    }
    if (turn->ncontrols == S_CONTROLS_MAX) {
        free(body);
        s_tool_lost(turn, "the control queue is full");
        return;
    }
    turn->controls[turn->ncontrols] = body;
    turn->control_len[turn->ncontrols] = blen;
    turn->ncontrols++;
    s_controls_flush(turn);
}

/* ------------------------------------------------------------ router-run tools */

static const cbor_item_t *s_cbor_get(const cbor_item_t *map, const char *key)
{
    if (!map || !cbor_isa_map(map))
        return NULL;
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < cbor_map_size(map); i++)
        if (cbor_isa_string(pairs[i].key) && cbor_string_is_definite(pairs[i].key) &&
            cbor_string_length(pairs[i].key) == strlen(key) &&
            memcmp(cbor_string_handle(pairs[i].key), key, strlen(key)) == 0)
            return pairs[i].value;
    return NULL;
}

/* A text member as a NUL-terminated copy in buf; -1 when absent or long. */
static int s_cbor_text(const cbor_item_t *map, const char *key, char *buf, size_t cap)
{
    const cbor_item_t *v = s_cbor_get(map, key);
    if (!v || !cbor_isa_string(v) || !cbor_string_is_definite(v) ||
        cbor_string_length(v) >= cap)
        return -1;
    memcpy(buf, cbor_string_handle(v), cbor_string_length(v));
    buf[cbor_string_length(v)] = '\0';
    return 0;
}

/* A peer named by name, PeerId or ed25519: key, in the trust store. */
static const router_peer_t *s_peer(router_turns_t *t, const char *name)
{
    const router_trust_t *trust = t->o.trust ? t->o.trust(t->o.trust_ud) : NULL;
    if (!trust)
        return NULL;
    uint8_t id[16], pk[32];
    if (proto_uuid_parse(name, strlen(name), id) == 0)
        return router_trust_by_peer_id(trust, id);
    if (proto_pubkey_parse(name, strlen(name), pk) == 0)
        return router_trust_by_pubkey(trust, pk);
    return router_trust_by_name(trust, name, NULL);
}

static void s_tool_answer(s_turn_t *turn, const char *call_id, bool is_error,
                          router_json_obj_t *o)
{
    size_t len = 0;
    char *json = router_json_end(o, &len);
    if (json)
        s_tool_result(turn, call_id, json, len, is_error);
    else
        s_tool_lost(turn, "out of memory");
    free(json);
}

static void s_tool_error(s_turn_t *turn, const char *call_id, const char *message)
{
    router_json_obj_t o;
    router_json_begin(&o, NULL);
    router_json_cstr(&o, "error", message);
    s_tool_answer(turn, call_id, true, &o);
}

static void s_toolsend_done(router_send_outcome_t outcome, const char *detail,
                            const uint8_t *ack_id, void *ud)
{
    (void) ack_id;
    s_toolsend_t *ts = ud;
    router_turns_t *t = ts->t;
    if (ts->prev)
        ts->prev->next = ts->next;
    else
        t->toolsends = ts->next;
    if (ts->next)
        ts->next->prev = ts->prev;
    s_turn_t *turn = s_turn_by_serial(t, ts->serial);
    if (turn) {
        char id[PROTO_UUID_TEXT_CAP];
        proto_uuid_format(ts->envelope_id, id);
        router_json_obj_t o;
        router_json_begin(&o, NULL);
        router_json_cstr(&o, "outcome", router_send_outcome_str(outcome));
        router_json_cstr(&o, "envelope_id", id);
        router_json_cstr(&o, "detail", detail);
        s_tool_answer(turn, ts->call_id, outcome != ROUTER_SEND_ACKED, &o);
    }
    free(ts);
}

/* Signs and sends kind for a tool call; the result follows from the ack. */
static void s_tool_send(s_turn_t *turn, const char *call_id, const uint8_t to[32],
                        cbor_item_t **kind)
{
    router_turns_t *t = turn->t;
    s_toolsend_t *ts = calloc(1, sizeof *ts);
    char detail[160] = "comms is off";
    if (!ts || !t->o.send) {
        free(ts);
        cbor_decref(kind);
        s_tool_error(turn, call_id, detail);
        return;
    }
    ts->t = t;
    ts->serial = turn->serial;
    snprintf(ts->call_id, sizeof ts->call_id, "%s", call_id);
    if (t->o.send(t->o.send_ud, to, kind, ts->envelope_id, s_toolsend_done, ts, detail,
                  sizeof detail) != 0) {
        if (*kind)
            cbor_decref(kind);
        free(ts);
        router_json_obj_t o;
        router_json_begin(&o, NULL);
        router_json_cstr(&o, "outcome", "offline");
        router_json_cstr(&o, "detail", detail);
        s_tool_answer(turn, call_id, true, &o);
        return;
    }
    ts->next = t->toolsends;
    if (t->toolsends)
        t->toolsends->prev = ts;
    t->toolsends = ts;
}

/* Whether a name from a worker body is `lit`: compared with its length,
 * so "peers\0x" is no tool of ours. */
static bool s_name_is(const proto_worker_str_t *name, const char *lit)
{
    size_t n = strlen(lit);
    return name->p && name->len == n && memcmp(name->p, lit, n) == 0;
}

static void s_tool_run(s_turn_t *turn, const proto_worker_tool_call_t *call)
{
    router_turns_t *t = turn->t;
    const char *id = call->id.p;
    char err[160];
    if (s_name_is(&call->name, "peers")) {
        const router_trust_t *trust = t->o.trust ? t->o.trust(t->o.trust_ud) : NULL;
        char *json = trust ? router_trust_to_json(trust, true) : strdup("{\"peers\":[]}");
        if (!json) {
            s_tool_error(turn, id, "out of memory");
            return;
        }
        s_tool_result(turn, id, json, strlen(json), false);
        free(json);
        return;
    }
    cbor_item_t *args = router_json_to_cbor(call->arguments.p, call->arguments.len, err,
                                            sizeof err);
    if (!args || !cbor_isa_map(args)) {
        if (args)
            cbor_decref(&args);
        s_tool_error(turn, id, "arguments must be a JSON object");
        return;
    }
    char peer_name[256], text[64];
    cbor_item_t *kind = NULL;
    const router_peer_t *peer = NULL;
    uint8_t to[32];
    if (s_name_is(&call->name, "send_response")) {
        uint8_t irt[16];
        proto_status_t status = PROTO_STATUS_COMPLETED;
        if (s_cbor_text(args, "in_reply_to", text, sizeof text) != 0 ||
            proto_uuid_parse(text, strlen(text), irt) != 0) {
            s_tool_error(turn, id, "in_reply_to must be a request envelope's id (a UUID)");
            goto done;
        }
        if (s_cbor_text(args, "status", peer_name, sizeof peer_name) == 0)
            status = strcmp(peer_name, "failed") == 0     ? PROTO_STATUS_FAILED
                     : strcmp(peer_name, "accepted") == 0 ? PROTO_STATUS_ACCEPTED
                                                          : PROTO_STATUS_COMPLETED;
        s_request_t *rq = s_request_find(t, irt);
        if (!rq) {
            s_tool_error(turn, id, "no request with that id reached this node recently");
            goto done;
        }
        if (status != PROTO_STATUS_ACCEPTED)
            rq->answered = true; /* no automatic response at its turn's end */
        memcpy(to, rq->from, 32);
        const cbor_item_t *res = s_cbor_get(args, "result");
        cbor_item_t *result = res ? cbor_copy((cbor_item_t *) res) : cbor_new_null();
        kind = proto_kind_response(irt, status, &result);
    } else if (s_name_is(&call->name, "send_message") ||
               s_name_is(&call->name, "send_request")) {
        bool msg = call->name.p[5] == 'm';
        if (s_cbor_text(args, "peer", peer_name, sizeof peer_name) != 0 ||
            !(peer = s_peer(t, peer_name))) {
            s_tool_error(turn, id, "peer must name a trusted peer (name, PeerId or key)");
            goto done;
        }
        memcpy(to, peer->pk, 32);
        const cbor_item_t *v = s_cbor_get(args, msg ? "body" : "intent");
        if (!v || !cbor_isa_string(v) || !cbor_string_is_definite(v)) {
            s_tool_error(turn, id, msg ? "body must be a string" : "intent must be a string");
            goto done;
        }
        if (msg) {
            kind = proto_kind_message((const char *) cbor_string_handle(v),
                                      cbor_string_length(v), NULL, PROTO_HANDLING_NONE);
        } else {
            const cbor_item_t *p = s_cbor_get(args, "params");
            cbor_item_t *params = p ? cbor_copy((cbor_item_t *) p) : cbor_new_definite_map(0);
            kind = proto_kind_request((const char *) cbor_string_handle(v),
                                      cbor_string_length(v), &params, NULL, PROTO_HANDLING_NONE);
        }
    } else {
        s_tool_error(turn, id, "no such router tool");
        goto done;
    }
    if (!kind) {
        s_tool_error(turn, id, "out of memory");
        goto done;
    }
    s_tool_send(turn, id, to, &kind);
done:
    cbor_decref(&args);
}

static bool s_is_router_tool(const proto_worker_str_t *name)
{
    for (size_t i = 0; i < S_NTOOLS; i++)
        if (s_name_is(name, s_router_tools[i].name))
            return true;
    return false;
}

/* ------------------------------------------------------------ replies */

static void s_on_partial(s_turn_t *turn, const proto_worker_partial_t *p)
{
    router_turns_t *t = turn->t;
    if (p->seq != turn->next_seq)
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "turn %s: partial %llu where %llu was due",
                   turn->id_text, (unsigned long long) p->seq,
                   (unsigned long long) turn->next_seq);
    turn->next_seq = p->seq + 1;
    const proto_worker_event_t *ev = &p->event;
    router_json_obj_t o, e;
    router_turn_frame_type_t type = 0;
    switch (ev->type) {
    case PROTO_WORKER_EV_CHUNK:
    case PROTO_WORKER_EV_THINKING:
        type = ev->type == PROTO_WORKER_EV_CHUNK ? ROUTER_TURN_FRAME_CHUNK
                                                 : ROUTER_TURN_FRAME_THINKING;
        router_json_begin(&o, ev->type == PROTO_WORKER_EV_CHUNK ? "chunk" : "thinking");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "content", ev->text.p, ev->text.len);
        break;
    case PROTO_WORKER_EV_CHUNK_RESET:
        type = ROUTER_TURN_FRAME_CHUNK_RESET;
        router_json_begin(&o, "chunk_reset");
        router_json_cstr(&o, "turn_id", turn->id_text);
        break;
    case PROTO_WORKER_EV_TOOL_CALL:
        type = ROUTER_TURN_FRAME_TOOL_CALL;
        router_json_begin(&o, "tool_call");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "id", ev->call.id.p, ev->call.id.len);
        router_json_str(&o, "name", ev->call.name.p, ev->call.name.len);
        router_json_raw(&o, "arguments", ev->call.arguments.p, ev->call.arguments.len);
        if (turn->ncalls < S_CALLS_MAX) {
            snprintf(turn->calls[turn->ncalls].id, sizeof turn->calls[0].id, "%s", ev->call.id.p);
            snprintf(turn->calls[turn->ncalls].name, sizeof turn->calls[0].name, "%s",
                     ev->call.name.p);
            turn->ncalls++;
        }
        s_event_begin(&e, turn);
        router_json_str(&e, "id", ev->call.id.p, ev->call.id.len);
        router_json_str(&e, "name", ev->call.name.p, ev->call.name.len);
        router_json_raw(&e, "arguments", ev->call.arguments.p, ev->call.arguments.len);
        s_event(t, "tool_call_start", &e);
        break;
    case PROTO_WORKER_EV_TOOL_RESULT: {
        type = ROUTER_TURN_FRAME_TOOL_RESULT;
        router_json_begin(&o, "tool_result");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "id", ev->id.p, ev->id.len);
        router_json_raw(&o, "result", ev->result.p, ev->result.len);
        router_json_bool(&o, "is_error", ev->is_error);
        const char *name = "";
        for (size_t i = 0; i < turn->ncalls; i++)
            if (strcmp(turn->calls[i].id, ev->id.p) == 0)
                name = turn->calls[i].name;
        s_event_begin(&e, turn);
        router_json_str(&e, "id", ev->id.p, ev->id.len);
        router_json_cstr(&e, "name", name);
        router_json_bool(&e, "is_error", ev->is_error);
        s_event(t, "tool_call", &e);
        if (t->audit) /* DESIGN §9: every tool call is security-relevant */
            router_audit_feed_tool_call(t->audit, turn->sess->id, name, ev->id.p, ev->is_error);
        break;
    }
    case PROTO_WORKER_EV_OPERATOR_STATUS:
        type = ROUTER_TURN_FRAME_OPERATOR_STATUS;
        router_json_begin(&o, "operator_status");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "status", ev->text.p, ev->text.len);
        break;
    case PROTO_WORKER_EV_AGENT_EVENT:
        type = ROUTER_TURN_FRAME_AGENT_EVENT;
        router_json_begin(&o, "agent_event");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "name", ev->name.p, ev->name.len);
        router_json_raw(&o, "data", ev->data.p, ev->data.len);
        break;
    case PROTO_WORKER_EV_LLM_REQUEST:
        s_event_begin(&e, turn);
        router_json_str(&e, "provider", ev->provider.p, ev->provider.len);
        if (ev->model.p)
            router_json_str(&e, "model", ev->model.p, ev->model.len);
        router_json_u64(&e, "iteration", ev->iteration);
        s_event(t, "llm_request", &e);
        return;
    }
    if (!type)
        return;
    size_t jl = 0;
    char *json = router_json_end(&o, &jl);
    uint64_t serial = turn->serial;
    s_deliver(t, turn->sess, type, json, jl, NULL);
    free(json);
    /* A subscriber's callback may have stopped the turn; look again. */
    turn = s_turn_by_serial(t, serial);
    if (turn && ev->type == PROTO_WORKER_EV_TOOL_CALL && s_is_router_tool(&ev->call.name))
        s_tool_run(turn, &ev->call);
}

static void s_on_final(s_turn_t *turn, proto_worker_final_t *f)
{
    router_turns_t *t = turn->t;
    turn->h = 0; /* the broker is done with it */
    const char *status = "error";
    switch (f->type) {
    case PROTO_WORKER_FINAL_DONE: {
        status = "done";
        turn->has_done = true;
        turn->tool_iterations = f->tool_iterations;
        turn->has_tokens = f->has_tokens_used;
        turn->tokens_used = f->tokens_used;
        turn->has_cost = f->has_cost_usd;
        turn->cost_usd = f->cost_usd;
        /* The reply goes out in `done` whatever happens here; a store that
         * cannot take it (its queue full behind a stalled disk, no memory)
         * leaves it out of the session's history, which is said. */
        if (router_sessions_append(t->store, turn->sess->id, "assistant", f->full_response.p,
                                   f->full_response.len, turn->id_text) != 0)
            ROUTER_LOG(ROUTER_LOG_WARN, MOD,
                       "turn %s: session %s: the store refused its reply (%s); it is not in "
                       "the session's history",
                       turn->id_text, turn->sess->id,
                       errno == EAGAIN ? "its queue is full" : strerror(errno));
        s_reply_set(turn->item, f->full_response.p, f->full_response.len);
        router_json_obj_t o;
        router_json_begin(&o, "done");
        router_json_cstr(&o, "turn_id", turn->id_text);
        router_json_str(&o, "full_response", f->full_response.p, f->full_response.len);
        router_json_u64(&o, "tool_iterations", f->tool_iterations);
        size_t jl = 0;
        char *json = router_json_end(&o, &jl);
        s_deliver(t, turn->sess, ROUTER_TURN_FRAME_DONE, json, jl, NULL);
        free(json);
        break;
    }
    case PROTO_WORKER_FINAL_STOPPED:
        status = "stopped";
        s_frame_stopped(turn, f->message.p);
        break;
    case PROTO_WORKER_FINAL_ERROR: {
        const char *code = proto_worker_code_str(f->code);
        s_frame_error(turn, code ? code : "AGENT_ERROR", f->message.p ? f->message.p : "");
        break;
    }
    }
    s_turn_end(turn, status);
}

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    s_turn_t *turn = ud;
    router_turns_t *t = turn->t;
    if (kind < 0) {
        turn->h = 0;
        s_frame_error(turn, "AGENT_ERROR", "the worker running this turn died or left");
        s_turn_end(turn, "error");
        return;
    }
    proto_worker_reply_t rep;
    proto_worker_error_t err;
    bool ok = proto_worker_reply_decode(body, len, &rep, &err) == 0;
    bool right = ok && ((rep.type == PROTO_WORKER_REPLY_PARTIAL && kind == 0 &&
                         memcmp(rep.partial.turn_id, turn->id, 16) == 0) ||
                        (rep.type == PROTO_WORKER_REPLY_FINAL && kind == 1 &&
                         memcmp(rep.final.turn_id, turn->id, 16) == 0));
    if (!right) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "turn %s: a worker reply refused (%s)", turn->id_text,
                   ok ? "another turn's or the wrong kind" : proto_worker_reason_str(err.reason));
        if (kind == 0 && !ok && err.reason == PROTO_WORKER_NO_MEMORY && !turn->stop_asked) {
            /* A partial lost for want of memory is not lost in silence: it
             * may be a router tool's call, whose result the worker would
             * wait for until the turn timed out. The turn is stopped now,
             * its subscribers told why first. */
            uint64_t serial = turn->serial;
            s_frame_error(turn, "AGENT_ERROR",
                          "out of memory: a frame of the turn from its worker was lost; the "
                          "turn is stopped");
            if ((turn = s_turn_by_serial(t, serial)) && !turn->stop_asked)
                s_turn_stop_ask(turn);
            return;
        }
        if (kind == 1) { /* the broker has closed the request: the turn cannot go on */
            turn->h = 0;
            s_frame_error(turn, "AGENT_ERROR", "the worker's final reply was malformed");
            s_turn_end(turn, "error");
        }
        if (ok)
            proto_worker_reply_clear(&rep);
        return;
    }
    if (rep.type == PROTO_WORKER_REPLY_PARTIAL) {
        uint64_t serial = turn->serial;
        s_on_partial(turn, &rep.partial);
        turn = s_turn_by_serial(t, serial);
        if (turn && turn->ncontrols)
            s_controls_flush(turn);
    } else {
        s_on_final(turn, &rep.final);
    }
    proto_worker_reply_clear(&rep);
}

/* ------------------------------------------------------------ the inbox */

/* An entry taken but not held (no memory for its item or its session) goes
 * back to the inbox untouched, first in line: S_POLL_MS later s_poll takes
 * it again. A durable entry is never dropped for a passing shortage, and
 * nothing behind it is taken meanwhile, so its session's order holds. */
static void s_untake(router_turns_t *t, router_inbox_entry_t *e)
{
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "out of memory: inbox entry seq=%llu waits for a retry",
               (unsigned long long) e->seq);
    (void) router_inbox_untake(t->o.inbox, e->seq);
    t->inbox_inflight--;
    router_inbox_entry_clear(e);
}

static void s_take_inbox(router_turns_t *t)
{
    if (!t->o.inbox || t->taking)
        return; /* the outer call's loop takes what is left */
    t->taking = true;
    while (t->inbox_inflight < S_INBOX_INFLIGHT_MAX) {
        router_inbox_entry_t e;
        if (router_inbox_take(t->o.inbox, &e) != 0)
            break;
        t->inbox_inflight++;
        s_item_t *it = calloc(1, sizeof *it);
        if (!it) {
            s_untake(t, &e);
            break;
        }
        char why[160] = ""; /* router_turn_source_from_entry says why it refused */
        int rc = router_turn_source_from_entry(&e, t->comms_session, &it->src, why, sizeof why);
        if (rc == ROUTER_TURN_SOURCE_NO_MEMORY) {
            free(it);
            s_untake(t, &e);
            break;
        }
        if (rc != 0) {
            ROUTER_LOG(ROUTER_LOG_WARN, MOD, "inbox entry seq=%llu kind=%s dropped: %s",
                       (unsigned long long) e.seq, e.kind, why);
            free(it);
            s_inbox_done(t, e.seq);
            router_inbox_entry_clear(&e);
            continue;
        }
        it->from_inbox = true;
        it->seq = e.seq;
        s_session_t *sess = s_session_get(t, it->src.session, true);
        if (!sess) {
            s_item_free(it);
            s_untake(t, &e);
            break;
        }
        router_inbox_entry_clear(&e);
        s_enqueue(t, sess, it);
        s_pump(t, sess);
        s_session_gc(t, sess); /* every item of it may have failed to start */
    }
    t->taking = false;
    router_metric_set(t->m_depth, router_inbox_count(t->o.inbox));
}

/* What state.db keeps, for /metrics (the store counts on its thread), and
 * a line in the log when a bound is reached or has room again, so an
 * operator learns why ingress answers 507 before a client says so. */
static void s_store_gauges(router_turns_t *t)
{
    uint64_t n = 0, bytes = 0;
    router_sessions_usage(t->store, &n, &bytes);
    router_metric_set(t->m_stored, n);
    router_metric_set(t->m_stored_bytes, bytes);
    router_metric_set(t->m_pruned, router_sessions_pruned(t->store));
    router_sessions_room_t room = router_sessions_room(t->store, true);
    if (room == t->store_room)
        return;
    if (room == ROUTER_SESSIONS_FULL_SESSIONS)
        ROUTER_LOG(ROUTER_LOG_WARN, "turns",
                   "state.db keeps %llu sessions, limits.sessions_max: new sessions are refused"
                   " until some are deleted", (unsigned long long) n);
    else if (room == ROUTER_SESSIONS_FULL_BYTES)
        ROUTER_LOG(ROUTER_LOG_WARN, "turns",
                   "state.db keeps %llu octets of messages, limits.sessions_bytes_max: new"
                   " messages are refused until sessions are deleted", (unsigned long long) bytes);
    else
        ROUTER_LOG(ROUTER_LOG_INFO, "turns", "state.db has room again (%llu sessions, %llu octets)",
                   (unsigned long long) n, (unsigned long long) bytes);
    t->store_room = room;
}

static void s_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    router_turns_t *t = ud;
    s_store_gauges(t);
    s_respond_owed(t);
    if (t->stalled)
        s_pump_stalled(t);
    s_take_inbox(t);
    t->poll_timer = router_loop_timer_add(loop, S_POLL_MS, s_poll, t);
}

void router_turns_kick(router_turns_t *t)
{
    if (t)
        s_take_inbox(t);
}

/* ------------------------------------------------------------ lifecycle */

router_turns_t *router_turns_new(const router_turns_opts_t *o, char *err, size_t errcap)
{
    if (!o || !o->loop || !o->broker) {
        /* Every turn goes to the broker on the loop: without them the
         * first submit would dereference NULL. */
        snprintf(err, errcap, "turns: a loop and a broker are needed");
        errno = EINVAL;
        return NULL;
    }
    router_turns_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errcap, "turns: out of memory");
        return NULL;
    }
    t->o = *o;
    snprintf(t->comms_session, sizeof t->comms_session, "%s",
             o->comms_session && o->comms_session[0] ? o->comms_session : "comms");
    t->o.comms_session = t->comms_session;
    if (!t->o.queue_max)
        t->o.queue_max = ROUTER_TURNS_QUEUE_MAX;
    if (!t->o.lock_timeout_s) {
        const char *env = getenv("KITH_SESSION_LOCK_TIMEOUT_SECS");
        char *end = NULL;
        unsigned long v = env ? strtoul(env, &end, 10) : 0;
        t->o.lock_timeout_s = env && *env && end && !*end && v > 0 && v <= 86400
                                  ? (uint32_t) v : ROUTER_TURNS_LOCK_TIMEOUT_S;
    }
    if (!t->o.max_history_messages)
        t->o.max_history_messages = 1000;
    if (!t->o.max_tool_iterations)
        t->o.max_tool_iterations = 60;
    if (!t->o.turn_timeout_s)
        t->o.turn_timeout_s = 600;
    t->sessions = zhash_new();
    t->subs = zhash_new();
    if (!t->sessions || !t->subs) {
        snprintf(err, errcap, "turns: out of memory");
        goto fail;
    }
    if (!(t->store = router_sessions_new(o->loop, o->db_path, &o->store_bounds, err, errcap)))
        goto fail;
    if (o->metrics) {
        const char *h = "Turns ended, by status";
        t->m_done = router_metrics_add(o->metrics, "kith_turns_total", "status=\"done\"",
                                       ROUTER_METRIC_COUNTER, h);
        t->m_stopped = router_metrics_add(o->metrics, "kith_turns_total", "status=\"stopped\"",
                                          ROUTER_METRIC_COUNTER, h);
        t->m_error = router_metrics_add(o->metrics, "kith_turns_total", "status=\"error\"",
                                        ROUTER_METRIC_COUNTER, h);
        t->m_running = router_metrics_add(o->metrics, "kith_turns_running", NULL,
                                          ROUTER_METRIC_GAUGE, "Turns in flight");
        t->m_waiting = router_metrics_add(o->metrics, "kith_turns_waiting", NULL,
                                          ROUTER_METRIC_GAUGE,
                                          "Messages waiting for their session's turn");
        t->m_depth = router_metrics_add(o->metrics, "kith_inbox_depth", NULL, ROUTER_METRIC_GAUGE,
                                        "Inbox entries held (waiting or with a turn running)");
        t->m_responses = router_metrics_add(o->metrics, "kith_turn_responses_total", NULL,
                                            ROUTER_METRIC_COUNTER,
                                            "Signed responses to request envelopes, acked");
        t->m_stored = router_metrics_add(o->metrics, "kith_sessions_stored", NULL,
                                         ROUTER_METRIC_GAUGE, "Sessions state.db keeps");
        t->m_stored_bytes = router_metrics_add(
            o->metrics, "kith_sessions_stored_bytes", NULL, ROUTER_METRIC_GAUGE,
            "Octets of messages state.db keeps (content, and 128 per message)");
        t->m_pruned = router_metrics_add(o->metrics, "kith_session_messages_pruned_total", NULL,
                                         ROUTER_METRIC_COUNTER,
                                         "Oldest messages let go by the per-session bounds");
        t->m_full = router_metrics_add(o->metrics, "kith_sessions_refused_total", NULL,
                                       ROUTER_METRIC_COUNTER,
                                       "Sessions and messages refused: state.db keeps what its"
                                       " limits allow");
        static const uint64_t bounds_ms[] = {100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                                             60000, 300000};
        t->h_duration = router_metrics_add_histogram(
            o->metrics, "kith_turn_duration_seconds", "Turn durations, from start to end",
            bounds_ms, sizeof bounds_ms / sizeof bounds_ms[0]);
    }
    t->poll_timer = router_loop_timer_add(o->loop, S_POLL_MS, s_poll, t);
    if (!t->poll_timer) {
        snprintf(err, errcap, "turns: cannot set a timer");
        goto fail;
    }
    return t;
fail:
    router_turns_destroy(&t);
    return NULL;
}

void router_turns_destroy(router_turns_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_turns_t *t = *self_p;
    if (t->poll_timer)
        (void) router_loop_timer_cancel(t->o.loop, t->poll_timer);
    for (size_t b = 0; b < S_TURN_BUCKETS; b++)
        while (t->by_serial[b]) {
            s_turn_t *turn = t->by_serial[b];
            t->by_serial[b] = turn->bucket_next;
            s_turn_timers_cancel(turn);
            if (turn->h > 0)
                router_broker_cancel(t->o.broker, turn->h);
            for (size_t i = 0; i < turn->ncontrols; i++)
                free(turn->controls[i]);
            s_item_free(turn->item); /* its inbox entry stays for the next run */
            free(turn);
        }
    while (t->resps)
        s_resp_free(t, t->resps);
    while (t->owed) { /* their entries stay in the inbox for the next run */
        s_item_t *it = t->owed;
        t->owed = it->next;
        s_item_free(it);
    }
    while (t->toolsends) {
        s_toolsend_t *ts = t->toolsends;
        t->toolsends = ts->next;
        free(ts); /* outbound was destroyed first: no callback is owed */
    }
    if (t->sessions) {
        zlist_t *keys = zhash_keys(t->sessions);
        for (char *k = keys ? zlist_first(keys) : NULL; k; k = zlist_next(keys)) {
            s_session_t *s = zhash_lookup(t->sessions, k);
            while (s->q_head) {
                s_item_t *it = s->q_head;
                s->q_head = it->next;
                if (it->lock_timer)
                    (void) router_loop_timer_cancel(t->o.loop, it->lock_timer);
                s_item_free(it);
            }
            while (s->subs) {
                s_sub_t *sub = s->subs;
                s->subs = sub->next;
                free(sub);
            }
            free(s);
        }
        zlist_destroy(&keys);
        zhash_destroy(&t->sessions);
    }
    zhash_destroy(&t->subs);
    router_sessions_destroy(&t->store); /* answers nothing more */
    while (t->json_reqs)
        s_json_req_free(t->json_reqs);
    free(t);
    *self_p = NULL;
}

void router_turns_set_event_sink(router_turns_t *t, router_turns_event_fn *fn, void *ud)
{
    t->sink = fn;
    t->sink_ud = ud;
}

void router_turns_set_audit(router_turns_t *t, router_audit_feed_t *feed)
{
    t->audit = feed;
}

void router_turns_stats(const router_turns_t *t, router_turns_stats_t *out)
{
    *out = t->st;
}

/* ------------------------------------------------------------ chat API */

static const char s_full_sessions_text[] =
    "state.db keeps limits.sessions_max sessions: delete one (DELETE /api/sessions/{id}) or"
    " raise the limit";
static const char s_full_bytes_text[] =
    "state.db keeps limits.sessions_bytes_max octets of messages: delete sessions"
    " (DELETE /api/sessions/{id}) or raise the limit";

static void s_on_open(void *ud, uint64_t tag, int rc, bool resumed, uint64_t count,
                      const char *name)
{
    router_turns_t *t = ud;
    s_sub_t *sub = s_sub(t, tag);
    if (!sub)
        return;
    sub->started = true;
    if (rc == ROUTER_SESSIONS_FULL_SESSIONS) {
        router_metric_inc(t->m_full, 1);
        s_error_to(t, sub->id, "STORAGE_FULL", s_full_sessions_text);
        return;
    }
    if (rc != 0) {
        s_error_to(t, sub->id, "AGENT_ERROR", "the session store failed");
        return;
    }
    router_json_obj_t o;
    router_json_begin(&o, "session_start");
    router_json_cstr(&o, "session_id", sub->sess->id);
    router_json_bool(&o, "resumed", resumed);
    router_json_u64(&o, "message_count", count);
    router_json_cstr(&o, "name", name);
    size_t jl = 0;
    char *json = router_json_end(&o, &jl);
    if (json)
        s_deliver_one(sub, ROUTER_TURN_FRAME_SESSION_START, json, jl, NULL, 0);
    else
        s_deliver_oom(sub);
    free(json);
}

router_turns_sub_t router_turns_attach(router_turns_t *t, const char *session_id,
                                       const char *name, router_turns_frame_fn *fn, void *ud)
{
    char id[ROUTER_TURNS_SESSION_ID_MAX + 1];
    if (!session_id || !session_id[0]) {
        uint8_t u[16];
        proto_uuid_v7_new(u);
        proto_uuid_format(u, id);
    } else if (router_turn_session_id_ok(session_id, strlen(session_id))) {
        snprintf(id, sizeof id, "%s", session_id);
    } else {
        errno = EINVAL;
        return 0;
    }
    if (!fn) {
        errno = EINVAL;
        return 0;
    }
    if (zhash_size(t->subs) >= ROUTER_TURNS_SUBSCRIBERS_MAX) {
        errno = EMFILE;
        return 0;
    }
    s_session_t *sess = s_session_get(t, id, true);
    s_sub_t *sub = sess ? calloc(1, sizeof *sub) : NULL;
    if (!sub) {
        if (sess)
            s_session_gc(t, sess);
        errno = ENOMEM;
        return 0;
    }
    sub->id = ++t->next_sub;
    sub->sess = sess;
    sub->fn = fn;
    sub->ud = ud;
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long) sub->id);
    errno = ENOMEM;
    if (zhash_insert(t->subs, key, sub) != 0 ||
        router_sessions_open(t->store, id, name, s_on_open, t, sub->id) != 0) {
        int e = errno; /* router_sessions_open's: EAGAIN, its queue full; ENOMEM */
        zhash_delete(t->subs, key);
        free(sub);
        s_session_gc(t, sess);
        errno = e;
        return 0;
    }
    sub->next = sess->subs;
    sess->subs = sub;
    return sub->id;
}

void router_turns_detach(router_turns_t *t, router_turns_sub_t id)
{
    s_sub_t *sub = s_sub(t, id);
    if (!sub)
        return;
    s_session_t *sess = sub->sess;
    for (s_sub_t **pp = &sess->subs; *pp; pp = &(*pp)->next)
        if (*pp == sub) {
            *pp = sub->next;
            break;
        }
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long) id);
    zhash_delete(t->subs, key);
    free(sub);
    s_session_gc(t, sess);
}

const char *router_turns_session_of(const router_turns_t *t, router_turns_sub_t id)
{
    s_sub_t *sub = s_sub(t, id);
    return sub ? sub->sess->id : NULL;
}

static bool s_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static void s_lock_expired(router_loop_t *loop, uint64_t id, void *ud);

int router_turns_submit(router_turns_t *t, router_turns_sub_t id, const char *content,
                        size_t len, const char **code)
{
    return router_turns_submit_msg(t, id, content, len, NULL, code);
}

int router_turns_submit_msg(router_turns_t *t, router_turns_sub_t id, const char *content,
                            size_t len, uint64_t *msg, const char **code)
{
    s_sub_t *sub = s_sub(t, id);
    if (!sub) {
        *code = "AGENT_ERROR";
        return -1;
    }
    if (!content || s_blank(content, len)) {
        *code = "EMPTY_CONTENT";
        return -1;
    }
    s_session_t *sess = sub->sess;
    /* Something runs or waits ahead of it (an inbox entry the store or
     * memory could not start yet, s_pump_one): it waits, under its lock
     * timeout. */
    bool behind = sess->active || sess->q_head;
    if (behind && sess->waiting_chat >= t->o.queue_max) {
        *code = "SESSION_BUSY";
        return -1;
    }
    if (router_sessions_room(t->store, false) != ROUTER_SESSIONS_ROOM) {
        router_metric_inc(t->m_full, 1);
        *code = "STORAGE_FULL";
        return -1;
    }
    s_item_t *it = calloc(1, sizeof *it);
    if (!it || !(it->src.content = malloc(len + 1))) {
        free(it);
        *code = "AGENT_ERROR";
        return -1;
    }
    memcpy(it->src.content, content, len);
    it->src.content[len] = '\0';
    it->src.len = len;
    it->src.channel = PROTO_WORKER_CHANNEL_WS;
    snprintf(it->src.session, sizeof it->src.session, "%s", sess->id);
    it->sub = id;
    it->msg = ++t->next_msg;
    if (msg)
        *msg = it->msg;
    s_enqueue(t, sess, it);
    it->t = t;
    if (behind) {
        it->lock_timer = router_loop_timer_add(t->o.loop, (uint64_t) t->o.lock_timeout_s * 1000u,
                                               s_lock_expired, it);
        if (!it->lock_timer) {
            /* It would wait past the lock timeout it is promised. */
            ROUTER_LOG(ROUTER_LOG_WARN, MOD, "session %s: no timer for a message's lock timeout"
                       " (%s): refused", sess->id, strerror(errno));
            s_item_unqueue(t, it);
            s_item_free(it);
            *code = "AGENT_ERROR";
            return -1;
        }
    }
    s_pump(t, sess);
    return 0;
}

static void s_lock_expired(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_item_t *it = ud;
    router_turns_t *t = it->t;
    it->lock_timer = 0;
    s_session_t *sess = it->sess;
    s_item_unqueue(t, it);
    char msg[128];
    snprintf(msg, sizeof msg, "waited %u s for the session's turn in flight; try again",
             t->o.lock_timeout_s);
    s_error_to(t, it->sub, "SESSION_BUSY", msg);
    s_item_free(it);
    s_session_gc(t, sess);
}

int router_turns_withdraw(router_turns_t *t, router_turns_sub_t id, uint64_t msg)
{
    s_sub_t *sub = s_sub(t, id);
    if (!sub || !msg)
        return -1;
    s_session_t *sess = sub->sess;
    s_item_t *it = sess->q_head;
    while (it && (it->from_inbox || it->sub != id || it->msg != msg))
        it = it->next;
    if (!it)
        return -1; /* its turn began (or it ended): only a stop reaches it now */
    s_item_unqueue(t, it);
    s_item_free(it); /* the session stays: sub is attached to it */
    return 0;
}

int router_turns_steer(router_turns_t *t, router_turns_sub_t id, const char *content,
                       size_t len, const char **code)
{
    s_sub_t *sub = s_sub(t, id);
    if (!content || s_blank(content, len)) {
        *code = "EMPTY_CONTENT";
        return -1;
    }
    s_turn_t *turn = sub ? sub->sess->active : NULL;
    if (!turn || turn->stop_asked || turn->ncontrols == S_CONTROLS_MAX) {
        *code = "NO_ACTIVE_TURN";
        return -1;
    }
    if (s_control(turn, PROTO_WORKER_REQ_STEER, content, len) != 0) {
        /* The turn is there: its steer could not be made (out of memory). */
        *code = "AGENT_ERROR";
        return -1;
    }
    return 0;
}

const char *router_turns_active(const router_turns_t *t, router_turns_sub_t id,
                                router_turns_sub_t *submitter)
{
    s_sub_t *sub = s_sub(t, id);
    s_turn_t *turn = sub ? sub->sess->active : NULL;
    if (!turn)
        return NULL;
    if (submitter)
        *submitter = turn->item ? turn->item->sub : 0;
    return turn->id_text;
}

void router_turns_stop(router_turns_t *t, router_turns_sub_t id)
{
    s_sub_t *sub = s_sub(t, id);
    if (!sub)
        return;
    s_turn_t *turn = sub->sess->active;
    if (!turn) {
        router_json_obj_t o;
        router_json_begin(&o, "stopped");
        router_json_cstr(&o, "message", "no active turn");
        size_t jl = 0;
        char *json = router_json_end(&o, &jl);
        if (json)
            s_deliver_one(sub, ROUTER_TURN_FRAME_STOPPED, json, jl, NULL, 0);
        else
            s_deliver_oom(sub);
        free(json);
        return;
    }
    if (turn->stop_asked)
        return;
    turn->stop_asked = true;
    if (turn->phase == T_LOADING)
        return; /* ended when its history arrives */
    if (router_broker_queued(t->o.broker, turn->h)) {
        s_frame_stopped(turn, "stopped before a worker took it");
        s_turn_end(turn, "stopped");
        return;
    }
    s_turn_stop_ask(turn);
}

/* ------------------------------------------------------------ sessions API */

/* A session API call the store has: kept in t->json_reqs so teardown
 * frees the ones it never answers. */
struct s_json_req {
    router_turns_t *t;
    router_turns_json_fn *fn;
    void *ud;
    s_json_req_t *prev, *next;
};

static s_json_req_t *s_json_req(router_turns_t *t, router_turns_json_fn *fn, void *ud)
{
    s_json_req_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->t = t;
    r->fn = fn;
    r->ud = ud;
    r->next = t->json_reqs;
    if (t->json_reqs)
        t->json_reqs->prev = r;
    t->json_reqs = r;
    return r;
}

static void s_json_req_free(s_json_req_t *r)
{
    router_turns_t *t = r->t;
    if (r->prev)
        r->prev->next = r->next;
    else
        t->json_reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r);
}

static void s_on_json(void *ud, uint64_t tag, int status, const char *json, size_t len)
{
    (void) tag;
    s_json_req_t *r = ud;
    r->fn(status, json, len, r->ud);
    s_json_req_free(r);
}

int router_turns_sessions_list(router_turns_t *t, unsigned limit, router_turns_json_fn *fn,
                               void *ud)
{
    s_json_req_t *r = s_json_req(t, fn, ud);
    if (!r)
        return -1;
    if (limit == 0 || limit > 1000)
        limit = 1000;
    if (router_sessions_list_json(t->store, limit, s_on_json, r, 0) != 0) {
        s_json_req_free(r);
        return -1;
    }
    return 0;
}

int router_turns_session_get(router_turns_t *t, const char *session_id, unsigned limit,
                             router_turns_json_fn *fn, void *ud)
{
    if (!session_id || !router_turn_session_id_ok(session_id, strlen(session_id)))
        return -1;
    s_json_req_t *r = s_json_req(t, fn, ud);
    if (!r)
        return -1;
    if (limit == 0 || limit > 100000)
        limit = t->o.max_history_messages;
    if (router_sessions_get_json(t->store, session_id, limit, s_on_json, r, 0) != 0) {
        s_json_req_free(r);
        return -1;
    }
    return 0;
}

int router_turns_session_delete(router_turns_t *t, const char *session_id,
                                router_turns_json_fn *fn, void *ud)
{
    if (!session_id || !router_turn_session_id_ok(session_id, strlen(session_id)))
        return -1;
    const s_session_t *s = s_session_get(t, session_id, false);
    if (s && (s->subs || s->q_head || s->active || s->pumping))
        return -2;
    s_json_req_t *r = s_json_req(t, fn, ud);
    if (!r)
        return -1;
    if (router_sessions_delete(t->store, session_id, s_on_json, r, 0) != 0) {
        s_json_req_free(r);
        return -1;
    }
    return 0;
}

const char *router_turns_room(const router_turns_t *t, const char *session_id)
{
    bool open_here = session_id && zhash_lookup(t->sessions, session_id);
    router_sessions_room_t room = router_sessions_room(t->store, !open_here);
    /* At the bound, a session state.db keeps makes nothing new. */
    if (room == ROUTER_SESSIONS_FULL_SESSIONS && session_id &&
        router_sessions_kept(t->store, session_id))
        room = router_sessions_room(t->store, false);
    if (room == ROUTER_SESSIONS_ROOM)
        return NULL;
    router_metric_inc(t->m_full, 1);
    return room == ROUTER_SESSIONS_FULL_SESSIONS ? s_full_sessions_text : s_full_bytes_text;
}

void router_turns_store_refuse(router_turns_t *t, bool on)
{
    router_sessions_refuse(t->store, on);
}

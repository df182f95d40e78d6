/* gateway/route_chat.c — GET /ws/chat (DESIGN §6, WIRE §24): a chat socket
 * per client, attached to one session of router/workers/turns.h. Client
 * frames are decoded by gateway/chat_frame.h and become submit, steer and
 * stop calls; every frame of the session's turns goes out as the turns
 * module made it. A socket that says nothing for 5 s after the upgrade
 * becomes a listen-only relay of every turn event, as agent_event frames.
 * The turn events also go to /api/events here. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "gateway/chat_frame.h"
#include "gateway/ingress_body.h"
#include "gateway/routes_chat.h"
#include "proto/utf8.h"
#include "proto/ws.h"
#include "router/log.h"

/* A client frame that came before session_start, held until it has gone. */
typedef struct {
    uint8_t *data;
    size_t len;
    bool text;
} s_early_t;

typedef struct s_sock s_sock_t;

/* One chat socket. */
struct s_sock {
    gateway_chat_t *chat;
    gateway_ws_t *ws;              /* NULL until accepted */
    router_turns_sub_t sub;        /* its subscription to the session */
    uint64_t quiet_timer;          /* the listen-only timer, 0 when none */
    bool started;                  /* session_start has gone out */
    bool spoke;                    /* the client has sent a frame */
    bool relay;                    /* a listen-only relay now */
    char session_id[ROUTER_TURNS_SESSION_ID_MAX + 1];
    s_early_t early[GATEWAY_CHAT_EARLY_FRAMES_MAX];
    unsigned nearly;               /* frames held */
    size_t early_bytes;            /* their octets */
    s_sock_t *prev, *next;         /* the chat's list */
};

/* A session API answer awaited from the turns module. */
typedef struct s_rest s_rest_t;
struct s_rest {
    gateway_chat_t *chat;
    gateway_http_pending_t *pending;
    s_rest_t *prev, *next;
};

/* One POST /api/sessions/{id}/messages: its own subscriber to the session,
 * the message it submits once attached, and the answer owed. */
typedef struct s_post s_post_t;
struct s_post {
    gateway_chat_t *chat;
    gateway_http_pending_t *pending;
    router_turns_sub_t sub;
    char *content;                   /* submitted at session_start, then freed */
    size_t len;
    bool submitted;                  /* the message is queued */
    char turn_id[40];                /* its turn, once its first frame came */
    s_post_t *prev, *next;
};

struct gateway_chat {
    gateway_http_t *g;               /* borrowed */
    router_loop_t *loop;             /* borrowed */
    gateway_chat_opts_t opts;        /* resolved */
    s_sock_t *socks;                 /* open chat sockets */
    uint32_t nsocks, nrelays;
    s_rest_t *rests;                 /* session API answers awaited */
    uint32_t nrests;
    s_post_t *posts;                 /* turns over HTTP awaited */
    uint32_t nposts;
    router_metric_t *m_socks;        /* kith_chat_sockets */
    router_metric_t *m_relays;       /* kith_chat_relays */
    router_metric_t *m_posts;        /* kith_chat_http_turns */
    uint64_t events_lost;            /* turn events /api/events lost since its last stream_gap */
    uint64_t lost_after;             /* the newest event's id when the first of them was lost */
    uint64_t gap_timer;              /* retries the stream_gap owed, 0 when none */
    router_metric_t *m_lost;         /* kith_turn_events_lost_total */
};

/* The gauges, after any count changed. */
static void s_gauges(const gateway_chat_t *chat)
{
    router_metric_set(chat->m_socks, chat->nsocks);
    router_metric_set(chat->m_relays, chat->nrelays);
    router_metric_set(chat->m_posts, chat->nposts);
}

static const char *const s_protocols[] = {GATEWAY_CHAT_PROTOCOL};

/* ---------------------------------------------------------------- query */

static int s_hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The value of `key` in a query (application/x-www-form-urlencoded:
 * '+' is a space, %XX an octet) into out[cap] (NUL-terminated). Returns 1
 * found, 0 absent, -1 badly encoded or longer than cap - 1. */
static int s_query_get(proto_http_slice_t q, const char *key, char *out, size_t cap, size_t *len)
{
    proto_http_slice_t v;
    if (!gateway_http_query_find(q, key, &v))
        return 0;
    const char *stop = v.ptr + v.len;
    size_t n = 0;
    for (const char *s = v.ptr; s < stop; s++) {
        int c = (unsigned char) *s;
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (stop - s < 3 || s_hexval(s[1]) < 0 || s_hexval(s[2]) < 0)
                return -1;
            c = s_hexval(s[1]) * 16 + s_hexval(s[2]);
            s += 2;
        }
        if (n + 1 >= cap)
            return -1;
        out[n++] = (char) c;
    }
    out[n] = '\0';
    *len = n;
    return 1;
}

/* ---------------------------------------------------------------- sending */

/* Encodes and sends one frame the gateway makes itself. A frame that
 * cannot be made (out of memory) closes the socket with 1011: its client
 * waits on an answer (an error, `connected`) that would never come. */
static void s_send_frame(s_sock_t *s, const gateway_chat_out_t *f)
{
    char *json;
    size_t len;
    if (!s->ws)
        return;
    if (gateway_chat_frame_encode(f, &json, &len) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "ws %llu: out of memory for a frame: closed",
                   (unsigned long long) gateway_ws_id(s->ws));
        gateway_ws_close(s->ws, 1011, "out of memory");
        return;
    }
    (void) gateway_ws_send(s->ws, true, json, len); /* a failure closes the socket itself */
    free(json);
}

static void s_send_error(s_sock_t *s, const char *code, const char *message)
{
    gateway_chat_out_t f = {.type = GATEWAY_CHAT_OUT_ERROR, .code = code, .text = message,
                            .text_len = strlen(message)};
    s_send_frame(s, &f);
}

/* ---------------------------------------------------------------- client frames */

/* The content a message hands the agent: its text, then page_context and
 * attachments when given (WIRE §24.3). Caller frees. */
static char *s_message_content(const gateway_chat_in_t *in, size_t *len)
{
    static const char pc_open[] = "\n\n<page_context>", pc_close[] = "</page_context>";
    static const char at_open[] = "\n\n<attachments>", at_close[] = "</attachments>";
    size_t n = in->content_len;
    if (in->page_context)
        n += sizeof pc_open - 1 + in->page_context_len + sizeof pc_close - 1;
    if (in->attachments)
        n += sizeof at_open - 1 + in->attachments_len + sizeof at_close - 1;
    char *out = malloc(n + 1), *p = out;
    if (!out)
        return NULL;
#define S_APPEND(s, l) (memcpy(p, (s), (l)), p += (l))
    S_APPEND(in->content, in->content_len);
    if (in->page_context) {
        S_APPEND(pc_open, sizeof pc_open - 1);
        S_APPEND(in->page_context, in->page_context_len);
        S_APPEND(pc_close, sizeof pc_close - 1);
    }
    if (in->attachments) {
        S_APPEND(at_open, sizeof at_open - 1);
        S_APPEND(in->attachments, in->attachments_len);
        S_APPEND(at_close, sizeof at_close - 1);
    }
#undef S_APPEND
    *p = '\0';
    *len = n;
    return out;
}

static const char *s_code_text(const char *code)
{
    if (!strcmp(code, "SESSION_BUSY"))
        return "the session's queue is full; wait for a turn to end";
    if (!strcmp(code, "NO_ACTIVE_TURN"))
        return "no turn is in flight to steer";
    if (!strcmp(code, "EMPTY_CONTENT"))
        return "\"content\" is empty";
    if (!strcmp(code, "STORAGE_FULL"))
        return "state.db keeps limits.sessions_bytes_max octets of messages; delete sessions"
               " or raise the limit";
    return "the message could not be queued";
}

/* One client frame, once session_start has gone out. */
static void s_handle(s_sock_t *s, bool text, const uint8_t *data, size_t len)
{
    gateway_chat_t *chat = s->chat;
    if (!text) {
        s_send_error(s, "INVALID_JSON", "kith.v1 frames are JSON text messages");
        return;
    }
    char why[GATEWAY_CHAT_WHY_MAX];
    gateway_chat_in_t in;
    /* The configured attachment bound (limits.http_attachment_body_max),
     * which the server keeps: the decoder's constant is only its default. */
    gateway_chat_reason_t r = gateway_chat_frame_decode_limited(
        data, len, gateway_http_attachment_body_max(chat->g), &in, why, sizeof why);
    if (r != GATEWAY_CHAT_OK) {
        s_send_error(s, gateway_chat_reason_code(r), why);
        return;
    }
    const char *code = NULL;
    switch (in.type) {
    case GATEWAY_CHAT_IN_CONNECT: {
        gateway_chat_out_t f = {.type = GATEWAY_CHAT_OUT_CONNECTED, .session_id = s->session_id};
        s_send_frame(s, &f);
        break;
    }
    case GATEWAY_CHAT_IN_MESSAGE: {
        size_t n;
        char *content = s_message_content(&in, &n);
        if (!content)
            code = "AGENT_ERROR";
        else if (router_turns_submit(chat->opts.turns, s->sub, content, n, &code) == 0)
            code = NULL;
        else if (!code)
            code = "AGENT_ERROR";
        free(content);
        break;
    }
    case GATEWAY_CHAT_IN_STEER:
        if (router_turns_steer(chat->opts.turns, s->sub, in.content, in.content_len, &code) == 0)
            code = NULL;
        else if (!code)
            code = "AGENT_ERROR";
        break;
    case GATEWAY_CHAT_IN_STOP:
        if (router_turns_active(chat->opts.turns, s->sub, NULL)) {
            router_turns_stop(chat->opts.turns, s->sub); /* every socket gets its stopped */
        } else {
            /* No turn: the answer is this socket's alone, and made here,
             * where a frame that cannot be made closes the socket (the
             * turns module would drop its own). */
            static const char none[] = "no active turn";
            gateway_chat_out_t f = {.type = GATEWAY_CHAT_OUT_STOPPED, .text = none,
                                    .text_len = sizeof none - 1};
            s_send_frame(s, &f);
        }
        break;
    }
    if (code)
        s_send_error(s, code, s_code_text(code));
    gateway_chat_in_clear(&in);
}

static void s_relay_end(s_sock_t *s)
{
    if (s->relay) {
        s->relay = false;
        s->chat->nrelays--;
        s_gauges(s->chat);
    }
}

static void s_on_message(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) ws;
    s_sock_t *s = ud;
    s->spoke = true;
    s_relay_end(s); /* a socket that speaks is a chat client again */
    if (s->quiet_timer) {
        (void) router_loop_timer_cancel(s->chat->loop, s->quiet_timer);
        s->quiet_timer = 0;
    }
    if (s->started) {
        s_handle(s, text, data, len);
        return;
    }
    /* session_start has not gone out yet: hold the frame (bounded). */
    size_t max = s->chat->opts.ws.message_max ? s->chat->opts.ws.message_max
                                              : GATEWAY_WS_MESSAGE_MAX;
    if (s->nearly >= GATEWAY_CHAT_EARLY_FRAMES_MAX || s->early_bytes + len > max) {
        gateway_ws_close(s->ws, 1008, "too many frames before session_start");
        return;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        gateway_ws_close(s->ws, 1011, "out of memory");
        return;
    }
    if (len)
        memcpy(copy, data, len);
    s->early[s->nearly++] = (s_early_t){.data = copy, .len = len, .text = text};
    s->early_bytes += len;
}

/* ---------------------------------------------------------------- turn frames */

static void s_early_free(s_sock_t *s)
{
    for (unsigned i = 0; i < s->nearly; i++)
        free(s->early[i].data);
    s->nearly = 0;
    s->early_bytes = 0;
}

/* A frame of the session (router_turns_frame_fn). */
static void s_on_frame(const router_turn_frame_t *frame, void *ud)
{
    s_sock_t *s = ud;
    if (!s->ws)
        return;
    if (frame->type == ROUTER_TURN_FRAME_SESSION_START && frame->session_id)
        snprintf(s->session_id, sizeof s->session_id, "%s", frame->session_id);
    (void) gateway_ws_send(s->ws, true, frame->json, frame->json_len);
    if (s->started)
        return;
    if (frame->type != ROUTER_TURN_FRAME_SESSION_START) {
        /* The session could not be opened (an error came instead): a
         * bound (1008, as for every bound) or a failure (1011). */
        if (frame->code && !strcmp(frame->code, "STORAGE_FULL"))
            gateway_ws_close(s->ws, PROTO_WS_CLOSE_POLICY, "state.db keeps its most sessions");
        else
            gateway_ws_close(s->ws, 1011, "the session could not be opened");
        return;
    }
    s->started = true;
    /* The frames that waited for it, in order, all of them: a socket cut
     * meanwhile (a slow consumer) is ended later, from the loop, and what
     * its client sent before still runs, as for a client that went away. */
    for (unsigned i = 0; i < s->nearly; i++)
        s_handle(s, s->early[i].text, s->early[i].data, s->early[i].len);
    s_early_free(s);
}

/* ---------------------------------------------------------------- sockets */

static void s_sock_free(s_sock_t *s)
{
    gateway_chat_t *chat = s->chat;
    if (s->prev)
        s->prev->next = s->next;
    else
        chat->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    chat->nsocks--;
    s_gauges(chat);
    s_relay_end(s);
    if (s->quiet_timer)
        (void) router_loop_timer_cancel(chat->loop, s->quiet_timer);
    if (s->sub)
        router_turns_detach(chat->opts.turns, s->sub);
    s_early_free(s);
    free(s);
}

static void s_on_close(gateway_ws_t *ws, uint16_t code, void *ud)
{
    (void) ws, (void) code;
    s_sock_free(ud);
}

static const gateway_ws_handlers_t s_ws_handlers = {
    .on_message = s_on_message,
    .on_close = s_on_close,
};

/* Five quiet seconds after the upgrade: the socket becomes a relay. */
static void s_on_quiet(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_sock_t *s = ud;
    s->quiet_timer = 0;
    if (s->spoke || s->relay)
        return;
    s->relay = true;
    s->chat->nrelays++;
    s_gauges(s->chat);
}

/* Why router_turns_attach refused (its errno), as the 503 a client reads:
 * all the sockets it takes, or a store or memory short for now. */
static void s_attach_refused(gateway_http_res_t *res, int e)
{
    (void) gateway_http_res_header(res, "Retry-After", "1");
    if (e == EMFILE)
        (void) gateway_http_respond_error(res, 503, "too_many_subscribers",
                                          "too many chat sockets and turns over HTTP are open");
    else
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          e == EAGAIN ? "the session store is busy; try again"
                                                      : "the server is out of memory");
}

static void s_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_chat_t *chat = ud;
    if (gateway_auth_require(chat->opts.auth, req, res) != 0)
        return;
    const char *proto = gateway_ws_req_protocol(res);
    if (!proto || strcmp(proto, GATEWAY_CHAT_PROTOCOL) != 0) {
        (void) gateway_http_respond_error(res, 400, "subprotocol_required",
                                          "offer the WebSocket subprotocol kith.v1");
        return;
    }
    char sid[ROUTER_TURNS_SESSION_ID_MAX + 1], name[GATEWAY_CHAT_NAME_MAX + 1];
    size_t sid_len = 0, name_len = 0;
    int has_sid = s_query_get(req->query, "session_id", sid, sizeof sid, &sid_len);
    int has_name = s_query_get(req->query, "name", name, sizeof name, &name_len);
    if (has_sid < 0 || (has_sid > 0 && sid_len > 0 && !gateway_ingress_id_ok(sid, sid_len))) {
        (void) gateway_http_respond_error(res, 400, "invalid_session_id",
                                          "session_id is 1..128 of A-Z a-z 0-9 . _ : -");
        return;
    }
    bool name_ok = has_name >= 0 && proto_utf8_valid((const uint8_t *) name, name_len);
    for (size_t i = 0; name_ok && i < name_len; i++)
        if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f)
            name_ok = false;
    if (!name_ok) {
        (void) gateway_http_respond_error(res, 400, "invalid_name",
                                          "name is at most 256 octets of UTF-8 text, no "
                                          "control characters, percent-encoded");
        return;
    }
    s_sock_t *s = calloc(1, sizeof *s);
    if (!s) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    s->chat = chat;
    /* The listen-only timer before the upgrade: a socket accepted without
     * it never became a relay (WIRE §24.7), so a dashboard that only
     * watches got no agent_event, unaware. Refused instead, as a wait the
     * loop cannot bound is elsewhere; it fires from the loop only, once s
     * is linked (or cancelled with it). */
    s->quiet_timer = router_loop_timer_add(chat->loop, chat->opts.listen_only_ms, s_on_quiet, s);
    if (!s->quiet_timer) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "ws/chat upgrade refused: no timer for its "
                   "listen-only relay (%s)", strerror(errno));
        free(s);
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "no timer for the socket's listen-only relay; retry");
        return;
    }
    s->sub = router_turns_attach(chat->opts.turns, has_sid > 0 && sid_len ? sid : NULL,
                                 has_name > 0 && name_len ? name : NULL, s_on_frame, s);
    if (!s->sub) {
        int e = errno;
        (void) router_loop_timer_cancel(chat->loop, s->quiet_timer);
        free(s);
        s_attach_refused(res, e);
        return;
    }
    if (!(s->ws = gateway_ws_accept(res, &s_ws_handlers, s, &chat->opts.ws))) {
        (void) router_loop_timer_cancel(chat->loop, s->quiet_timer);
        router_turns_detach(chat->opts.turns, s->sub);
        free(s);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    s->next = chat->socks;
    if (chat->socks)
        chat->socks->prev = s;
    chat->socks = s;
    chat->nsocks++;
    s_gauges(chat);
}

/* ---------------------------------------------------------------- turn events */

/* Publishes the stream_gap owed for the turn events /api/events lost
 * since the last one (DESIGN §7: every subscriber gets the event or word
 * of its loss), built without allocating. 0: published, or none owed. */
static int s_gap_publish(gateway_chat_t *chat)
{
    if (!chat->events_lost)
        return 0;
    char json[160];
    snprintf(json, sizeof json,
             "{\"reason\":\"dropped\",\"last_event_id\":%" PRIu64 ",\"lost\":%" PRIu64 "}",
             chat->lost_after, chat->events_lost);
    if (!gateway_events_publish(chat->opts.events, "stream_gap", json))
        return -1;
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "/api/events: stream_gap for %" PRIu64
               " turn events lost", chat->events_lost);
    chat->events_lost = 0;
    return 0;
}

static void s_gap_arm(gateway_chat_t *chat);

static void s_gap_retry(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    gateway_chat_t *chat = ud;
    chat->gap_timer = 0;
    if (s_gap_publish(chat) != 0)
        s_gap_arm(chat);
}

/* The gap goes out with the next turn event, or by this timer when none
 * comes (a lost agent_end may be the turn's last): a reader is not left
 * waiting for an event that was lost. No timer: the next event carries it. */
static void s_gap_arm(gateway_chat_t *chat)
{
    if (!chat->gap_timer)
        chat->gap_timer = router_loop_timer_add(chat->loop, GATEWAY_CHAT_GAP_RETRY_MS,
                                                s_gap_retry, chat);
}

/* A turn event /api/events will not carry: counted, and owed a gap. */
static void s_event_lost(gateway_chat_t *chat, const char *type, const char *why)
{
    if (!chat->opts.events)
        return;
    if (!chat->events_lost) {
        gateway_events_stats_t st;
        gateway_events_stats(chat->opts.events, &st);
        chat->lost_after = st.newest;
    }
    chat->events_lost++;
    router_metric_inc(chat->m_lost, 1);
    ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "turn event %s lost (%s): a stream_gap follows", type,
               why);
    s_gap_arm(chat);
}

/* An event the relays cannot be sent: each is closed 1011, as any socket
 * whose frame the gateway cannot make, and never misses a frame unaware. */
static void s_relays_lost(gateway_chat_t *chat)
{
    for (s_sock_t *s = chat->socks; s; s = s->next) {
        if (!s->relay)
            continue;
        if (s->ws)
            gateway_ws_close(s->ws, 1011, "out of memory: an event was lost");
        s_relay_end(s);
    }
}

/* A turn event (router_turns_event_fn): to /api/events, and to every
 * listen-only relay as an agent_event frame. One the turns module could
 * not make (json_object NULL), or /api/events could not take, is a
 * stream_gap there; relays that miss one are closed. */
static void s_on_event(const char *type, const char *json_object, void *ud)
{
    gateway_chat_t *chat = ud;
    if (!json_object) {
        s_event_lost(chat, type, "no memory to make it");
        s_relays_lost(chat);
        return;
    }
    if (chat->opts.events) {
        /* A gap owed goes first: no later event may overtake it. */
        if (s_gap_publish(chat) != 0) {
            s_event_lost(chat, type, "the stream_gap before it was not published");
        } else if (!gateway_events_publish(chat->opts.events, type, json_object)) {
            int e = errno;
            s_event_lost(chat, type, strerror(e));
        }
    }
    if (!chat->nrelays)
        return;
    gateway_chat_out_t f = {.type = GATEWAY_CHAT_OUT_AGENT_EVENT, .name = type,
                            .json = json_object, .json_len = strlen(json_object)};
    char *json;
    size_t len;
    if (gateway_chat_frame_encode(&f, &json, &len) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "out of memory for a relay's %s frame: relays"
                   " closed", type);
        s_relays_lost(chat);
        return;
    }
    for (s_sock_t *s = chat->socks, *next; s; s = next) {
        next = s->next; /* a failed send closes a socket later, never here */
        if (s->relay && s->ws)
            (void) gateway_ws_send(s->ws, true, json, len);
    }
    free(json);
}

/* ---------------------------------------------------------------- session API */

static void s_rest_unlink(s_rest_t *r)
{
    gateway_chat_t *chat = r->chat;
    if (r->prev)
        r->prev->next = r->next;
    else
        chat->rests = r->next;
    if (r->next)
        r->next->prev = r->prev;
    chat->nrests--;
}

/* The turns module's answer (router_turns_json_fn). */
static void s_rest_answer(int status, const char *json, size_t len, void *ud)
{
    s_rest_t *r = ud;
    (void) gateway_http_respond(gateway_http_pending_res(r->pending), status, "application/json",
                                json, len);
    gateway_http_pending_end(&r->pending);
    s_rest_unlink(r);
    free(r);
}

/* ?limit=N, 1..GATEWAY_CHAT_LIMIT_MAX; `dflt` when absent. -1 when bad. */
static long s_limit(const gateway_http_req_t *req, unsigned dflt)
{
    char v[8];
    size_t n;
    int has = s_query_get(req->query, "limit", v, sizeof v, &n);
    if (has == 0)
        return dflt;
    if (has < 0 || n == 0)
        return -1;
    long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x >= 1 && x <= GATEWAY_CHAT_LIMIT_MAX ? x : -1;
}

/* Starts one session API call: the list (no session_id), one session's
 * read, or its deletion; the answer comes later (deferred). */
static void s_rest(gateway_chat_t *chat, gateway_http_res_t *res, const char *session_id,
                   unsigned limit, bool delete)
{
    if (chat->nrests >= GATEWAY_CHAT_REST_PENDING_MAX) {
        (void) gateway_http_respond_error(res, 503, "busy", "too many session reads at once");
        return;
    }
    s_rest_t *r = calloc(1, sizeof *r);
    if (!r || !(r->pending = gateway_http_res_defer(res))) {
        free(r);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    r->chat = chat;
    r->next = chat->rests;
    if (chat->rests)
        chat->rests->prev = r;
    chat->rests = r;
    chat->nrests++;
    int rc = delete ? router_turns_session_delete(chat->opts.turns, session_id, s_rest_answer, r)
             : session_id
                 ? router_turns_session_get(chat->opts.turns, session_id, limit, s_rest_answer, r)
                 : router_turns_sessions_list(chat->opts.turns, limit, s_rest_answer, r);
    if (rc != 0) {
        gateway_http_res_t *pres = gateway_http_pending_res(r->pending);
        if (rc == -2)
            (void) gateway_http_respond_error(pres, 409, "session_busy",
                                              "a socket is attached to this session or a turn of "
                                              "it runs or waits: close it first");
        else
            (void) gateway_http_respond_error(pres, 503, "busy",
                                              "the session store is busy; try again");
        gateway_http_pending_end(&r->pending);
        s_rest_unlink(r);
        free(r);
    }
}

static void s_sessions_list(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_chat_t *chat = ud;
    if (gateway_auth_require(chat->opts.auth, req, res) != 0)
        return;
    long limit = s_limit(req, GATEWAY_CHAT_SESSIONS_LIMIT);
    if (limit < 0) {
        (void) gateway_http_respond_error(res, 400, "invalid_limit", "limit is 1..1000");
        return;
    }
    s_rest(chat, res, NULL, (unsigned) limit, false);
}

static void s_session_get(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_chat_t *chat = ud;
    if (gateway_auth_require(chat->opts.auth, req, res) != 0)
        return;
    static const char prefix[] = "/api/sessions/";
    const char *id = req->path.ptr + sizeof prefix - 1;
    size_t id_len = req->path.len - (sizeof prefix - 1);
    if (id_len == 0 || memchr(id, '/', id_len)) {
        (void) gateway_http_respond_error(res, 404, "not_found", "no such route");
        return;
    }
    if (!gateway_ingress_id_ok(id, id_len)) {
        (void) gateway_http_respond_error(res, 400, "invalid_session_id",
                                          "a session id is 1..128 of A-Z a-z 0-9 . _ : -");
        return;
    }
    bool delete = gateway_http_req_method_is(req, "DELETE");
    long limit = delete ? 0 : s_limit(req, GATEWAY_CHAT_HISTORY_LIMIT);
    if (limit < 0) {
        (void) gateway_http_respond_error(res, 400, "invalid_limit", "limit is 1..1000");
        return;
    }
    char sid[ROUTER_TURNS_SESSION_ID_MAX + 1];
    memcpy(sid, id, id_len);
    sid[id_len] = '\0';
    s_rest(chat, res, sid, (unsigned) limit, delete);
}

/* ---------------------------------------------------------------- a turn over HTTP */

/* Answers the post (status, JSON text), lets go of its subscriber and
 * frees it. */
static void s_post_end(s_post_t *p, int status, const char *json, size_t len)
{
    gateway_chat_t *chat = p->chat;
    if (json)
        (void) gateway_http_respond(gateway_http_pending_res(p->pending), status,
                                    "application/json", json, len);
    gateway_http_pending_end(&p->pending);
    if (p->sub)
        router_turns_detach(chat->opts.turns, p->sub); /* safe inside its own frame */
    if (p->prev)
        p->prev->next = p->next;
    else
        chat->posts = p->next;
    if (p->next)
        p->next->prev = p->prev;
    chat->nposts--;
    s_gauges(chat);
    free(p->content);
    free(p);
}

static void s_post_error(s_post_t *p, int status, const char *code, const char *message)
{
    gateway_http_res_t *res = gateway_http_pending_res(p->pending);
    if (status == 429)
        (void) gateway_http_res_header(res, "Retry-After", "1");
    (void) gateway_http_respond_error(res, status, code, message);
    s_post_end(p, 0, NULL, 0);
}

/* The frames of the post's session: its message goes in once attached;
 * the final frame of the turn that answers it (or an error for the
 * message itself, which carries no turn_id) is the answer. */
static void s_post_frame(const router_turn_frame_t *frame, void *ud)
{
    s_post_t *p = ud;
    if (!p->submitted) {
        if (frame->type != ROUTER_TURN_FRAME_SESSION_START) {
            if (frame->code && !strcmp(frame->code, "STORAGE_FULL"))
                s_post_error(p, 507, "storage_full",
                             "state.db keeps limits.sessions_max sessions: delete one or raise"
                             " the limit");
            else
                s_post_error(p, 503, "unavailable", "the session could not be opened");
            return;
        }
        /* Submitted before the call: the turn may start inside it and a
         * frame of it (an error: no memory for the turn, the session store
         * refusing its history) come back here at once, answer the post
         * and free p, which then must not be touched again. A refusal (-1)
         * comes before any frame, with p still here. */
        p->submitted = true;
        char *content = p->content;
        p->content = NULL;
        const char *code = NULL;
        int rc = router_turns_submit(p->chat->opts.turns, p->sub, content, p->len, &code);
        free(content);
        if (rc == 0)
            return; /* p may be gone already */
        bool busy = code && !strcmp(code, "SESSION_BUSY");
        bool full = code && !strcmp(code, "STORAGE_FULL");
        if (full)
            s_post_error(p, 507, "storage_full", s_code_text(code));
        else
            s_post_error(p, busy ? 429 : 503, busy ? "session_busy" : "unavailable",
                         busy ? "16 messages already wait in this session; retry"
                              : "the turn could not be queued");
        return;
    }
    bool final = frame->type == ROUTER_TURN_FRAME_DONE ||
                 frame->type == ROUTER_TURN_FRAME_STOPPED ||
                 frame->type == ROUTER_TURN_FRAME_ERROR;
    /* Only the frames of its own message's turn, and an error for the
     * message itself (no submitter, no turn), can concern it; of its
     * turn's frames, only the first and the final are read. */
    bool lone_error = frame->type == ROUTER_TURN_FRAME_ERROR && frame->submitter == 0;
    if ((frame->submitter != p->sub && !lone_error) || (!final && p->turn_id[0]))
        return;
    /* kith's own frame (NUL-terminated): a turn's carries its turn_id */
    char id[sizeof p->turn_id] = "";
    yajl_val f = yajl_tree_parse(frame->json, NULL, 0);
    const char *tid_path[] = {"turn_id", NULL};
    yajl_val tid = f ? yajl_tree_get(f, tid_path, yajl_t_string) : NULL;
    if (tid && strlen(tid->u.string) < sizeof id)
        snprintf(id, sizeof id, "%s", tid->u.string);
    yajl_tree_free(f);
    if (!p->turn_id[0] && id[0] && frame->submitter == p->sub)
        memcpy(p->turn_id, id, sizeof id); /* the first frame of the turn answering it */
    if (!final)
        return;
    if ((p->turn_id[0] && !strcmp(id, p->turn_id)) ||
        (!id[0] && frame->type == ROUTER_TURN_FRAME_ERROR))
        s_post_end(p, 200, frame->json, frame->json_len);
}

/* POST /api/sessions/{id}/messages {"content"}: a turn over HTTP. */
static void s_session_post(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_chat_t *chat = ud;
    if (gateway_auth_require(chat->opts.auth, req, res) != 0)
        return;
    static const char prefix[] = "/api/sessions/", suffix[] = "/messages";
    const char *id = req->path.ptr + sizeof prefix - 1;
    size_t len = req->path.len - (sizeof prefix - 1);
    if (len <= sizeof suffix - 1 ||
        memcmp(id + len - (sizeof suffix - 1), suffix, sizeof suffix - 1) != 0) {
        (void) gateway_http_res_header(res, "Allow", "GET, HEAD, DELETE");
        (void) gateway_http_respond_error(res, 405, "method_not_allowed",
                                          "a message is posted to /api/sessions/{id}/messages");
        return;
    }
    len -= sizeof suffix - 1;
    if (!gateway_ingress_id_ok(id, len)) {
        (void) gateway_http_respond_error(res, 400, "invalid_session_id",
                                          "a session id is 1..128 of A-Z a-z 0-9 . _ : -");
        return;
    }
    yajl_val b = gateway_http_req_json(req, res, 2, 4);
    if (!b)
        return;
    const char *path[] = {"content", NULL};
    yajl_val content = YAJL_IS_OBJECT(b) && b->u.object.len == 1
                           ? yajl_tree_get(b, path, yajl_t_string) : NULL;
    const char *text = content ? content->u.string : NULL;
    if (!text || !text[0]) {
        (void) gateway_http_respond_error(res, 400, "invalid_body",
                                          "the body is {\"content\": a non-empty string}");
        yajl_tree_free(b);
        return;
    }
    if (chat->nposts >= GATEWAY_CHAT_POSTS_MAX) {
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 503, "busy", "too many turns over HTTP wait");
        yajl_tree_free(b);
        return;
    }
    char sid[ROUTER_TURNS_SESSION_ID_MAX + 1];
    memcpy(sid, id, len);
    sid[len] = '\0';
    s_post_t *p = calloc(1, sizeof *p);
    if (p)
        p->content = strdup(text);
    yajl_tree_free(b);
    if (!p || !p->content || !(p->pending = gateway_http_res_defer(res))) {
        if (p)
            free(p->content);
        free(p);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    p->chat = chat;
    p->len = strlen(p->content);
    p->next = chat->posts;
    if (chat->posts)
        chat->posts->prev = p;
    chat->posts = p;
    chat->nposts++;
    s_gauges(chat);
    /* The session_start frame comes later, from the loop: the message goes
     * in then (s_post_frame). */
    if (!(p->sub = router_turns_attach(chat->opts.turns, sid, NULL, s_post_frame, p))) {
        int e = errno;
        gateway_http_res_t *pres = gateway_http_pending_res(p->pending);
        s_attach_refused(pres, e);
        s_post_end(p, 0, NULL, 0);
    }
}

/* ---------------------------------------------------------------- lifecycle */

gateway_chat_t *gateway_chat_new(gateway_http_t *g, router_loop_t *loop,
                                 const gateway_chat_opts_t *opts)
{
    if (!g || !loop || !opts || !opts->turns) {
        errno = EINVAL;
        return NULL;
    }
    gateway_chat_t *chat = calloc(1, sizeof *chat);
    if (!chat) {
        errno = ENOMEM;
        return NULL;
    }
    chat->g = g;
    chat->loop = loop;
    chat->opts = *opts;
    if (!chat->opts.listen_only_ms)
        chat->opts.listen_only_ms = GATEWAY_CHAT_LISTEN_ONLY_MS;
    if (gateway_http_route_ws(g, "/ws/chat", s_protocols, 1, s_upgrade, chat) != 0 ||
        gateway_http_route(g, "GET", "/api/sessions", s_sessions_list, chat) != 0 ||
        gateway_http_route(g, "GET", "/api/sessions/*", s_session_get, chat) != 0 ||
        gateway_http_route(g, "DELETE", "/api/sessions/*", s_session_get, chat) != 0 ||
        gateway_http_route(g, "POST", "/api/sessions/*", s_session_post, chat) != 0) {
        int e = errno;
        free(chat);
        errno = e;
        return NULL;
    }
    router_metrics_t *m = opts->metrics;
    if (m) {
        chat->m_socks = router_metrics_add(m, "kith_chat_sockets", NULL, ROUTER_METRIC_GAUGE,
                                           "/ws/chat sockets open.");
        chat->m_relays = router_metrics_add(m, "kith_chat_relays", NULL, ROUTER_METRIC_GAUGE,
                                            "/ws/chat sockets that became listen-only relays.");
        chat->m_posts = router_metrics_add(m, "kith_chat_http_turns", NULL, ROUTER_METRIC_GAUGE,
                                           "Turns over HTTP whose answer is awaited.");
        chat->m_lost = router_metrics_add(m, "kith_turn_events_lost_total", NULL,
                                          ROUTER_METRIC_COUNTER,
                                          "Turn events /api/events lost (no memory to make or"
                                          " publish them, or too large); each loss is told"
                                          " by a stream_gap.");
    }
    router_turns_set_event_sink(opts->turns, s_on_event, chat);
    return chat;
}

void gateway_chat_destroy(gateway_chat_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_chat_t *chat = *self_p;
    router_turns_set_event_sink(chat->opts.turns, NULL, NULL);
    if (chat->gap_timer)
        (void) router_loop_timer_cancel(chat->loop, chat->gap_timer);
    while (chat->socks)
        s_sock_free(chat->socks);
    while (chat->rests) {
        s_rest_t *r = chat->rests;
        gateway_http_pending_end(&r->pending);
        s_rest_unlink(r);
        free(r);
    }
    while (chat->posts)
        s_post_end(chat->posts, 0, NULL, 0); /* the turns go on; the answers go nowhere */
    free(chat);
    *self_p = NULL;
}

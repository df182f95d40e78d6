/* gateway/ws.c — one accepted WebSocket (RFC 6455) on a router connection:
 * frames in through proto/ws's parser, whole messages out to the route,
 * pings answered and sent, the close handshake, and the bounds of
 * gateway/ws.h (message size, frame deadline, liveness, the slow-consumer
 * cut). */
#include "gateway/ws.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "gateway/http_internal.h"
#include "proto/ws.h"
#include "router/log.h"
#include "router/net/conn.h"

/* Room kept above the unsent-byte limit for the Close frame of a cut. */
#define S_CLOSE_ROOM 256u
/* The close code reported when the connection ended without a Close frame. */
#define S_CLOSE_ABNORMAL 1006
/* Try Again Later (IANA registry of RFC 6455 §11.7): no room now in the
 * unauthenticated budget of unfinished messages. */
#define S_CLOSE_TRY_AGAIN 1013

typedef enum {
    S_OPEN,       /* messages flow both ways */
    S_CLOSE_SENT, /* our Close is out; reading on until theirs arrives */
    S_DONE,       /* the handshake is over or was cut: the connection is closing */
} s_state_t;

struct gateway_ws {
    gateway_http_t *g;            /* the server it came from */
    router_conn_t *conn;          /* the loop's connection */
    proto_ws_parser_t *parser;    /* client-to-server frames */
    gateway_ws_handlers_t h;      /* the route's callbacks */
    void *ud;                     /* their user data */
    gateway_ws_opts_t opts;       /* resolved bounds */
    size_t send_limit;            /* unsent bytes allowed before the cut */
    s_state_t state;              /* see above */
    uint16_t close_code;          /* code exchanged (ours or theirs), S_CLOSE_ABNORMAL until then */
    uint8_t *msg;                 /* a message arriving in several slices */
    size_t msg_len, msg_cap;      /* its bytes, allocated bytes */
    size_t msg_counted;           /* msg_cap, counted in g->unauth_body_held while unauthenticated */
    bool msg_text;                /* it is a text message */
    bool in_frame;                /* a frame has begun and not ended */
    bool pong_owed;               /* our last ping has had no pong yet */
    size_t ping_unsent;           /* pong_owed: octets unsent to the client at the last look */
    bool closing_told;            /* on_closing was called */
    bool accepting;               /* inside gateway_ws_accept: on_closing waits for on_close */
    uint64_t frame_due;           /* loop ms: the frame begun must end by then; 0 none */
    uint64_t ping_due;            /* loop ms: the next ping (or the liveness verdict) */
    uint64_t close_due;           /* loop ms: our Close must be answered by then; 0 none */
    uint64_t timer;               /* armed timer, 0 for none */
    uint64_t timer_due;           /* when it fires */
    char credential[GATEWAY_HTTP_CREDENTIAL_MAX]; /* what let it in, "" for nothing named */
    bool unauth;                  /* holds a place in the unauthenticated share (WIRE §11.3) */
    router_source_t *source;      /* ...counted against this source, or NULL */
    gateway_ws_t *uprev, *unext;  /* the server's unauthenticated sockets, oldest first */
    gateway_ws_t *prev, *next;    /* the server's list */
};

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud);

/* The socket left S_OPEN: tells the route once, at once, so it stops
 * listing a socket that may take GATEWAY_WS_CLOSE_WAIT_MS more to go. */
static void s_closing(gateway_ws_t *ws)
{
    if (ws->closing_told || ws->accepting)
        return;
    ws->closing_told = true;
    if (ws->h.on_closing)
        ws->h.on_closing(ws, ws->ud);
}

/* ---------------------------------------------------------------- deadlines */

static void s_timer_stop(gateway_ws_t *ws)
{
    if (ws->timer)
        (void) router_loop_timer_cancel(ws->g->loop, ws->timer);
    ws->timer = 0;
}

/* The earliest of the socket's dues. */
static uint64_t s_next_due(const gateway_ws_t *ws)
{
    uint64_t due = ws->close_due ? ws->close_due : ws->ping_due;
    if (ws->frame_due && ws->frame_due < due)
        due = ws->frame_due;
    return due;
}

/* Keeps one timer armed for the earliest due. As in http_server.c, a later
 * due leaves the armed timer alone; it re-arms when it fires early, so a
 * busy socket costs few timer calls. */
static void s_rearm(gateway_ws_t *ws)
{
    uint64_t due = s_next_due(ws);
    if (ws->timer && ws->timer_due <= due)
        return;
    s_timer_stop(ws);
    uint64_t now = router_loop_now_ms(ws->g->loop);
    ws->timer = router_loop_timer_add(ws->g->loop, due > now ? due - now : 0, s_on_timer, ws);
    ws->timer_due = due;
    if (!ws->timer) {
        /* Unbounded is not an option: cut it. */
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "ws %llu cut: no timer left",
                   (unsigned long long) router_conn_id(ws->conn));
        ws->state = S_DONE;
        router_conn_abort(ws->conn);
        s_closing(ws);
    }
}

/* ---------------------------------------------------------------- sending */

static int s_send_frame(gateway_ws_t *ws, proto_ws_opcode_t op, const void *data, size_t len)
{
    uint8_t hdr[PROTO_WS_HEADER_MAX];
    int hl = proto_ws_header_encode(hdr, op, true, len, NULL);
    if (hl < 0) {
        errno = EMSGSIZE;
        return -1;
    }
    struct iovec iov[2] = {{hdr, (size_t) hl}, {(void *) data, len}};
    if (router_conn_sendv(ws->conn, iov, len ? 2 : 1) != 0)
        return -1;
    router_metric_inc(ws->g->m_ws_frames_out, 1);
    return 0;
}

/* Sends a Close frame with `code` (PROTO_WS_CLOSE_NO_STATUS: an empty one)
 * and a reason cut to fit at a character boundary. */
static void s_send_close(gateway_ws_t *ws, uint16_t code, const char *reason)
{
    size_t rlen = reason ? strlen(reason) : 0;
    if (code == PROTO_WS_CLOSE_NO_STATUS)
        rlen = 0;
    if (rlen > PROTO_WS_CLOSE_REASON_MAX) {
        rlen = PROTO_WS_CLOSE_REASON_MAX;
        while (rlen > 0 && ((unsigned char) reason[rlen] & 0xC0) == 0x80)
            rlen--; /* do not split a UTF-8 sequence */
    }
    uint8_t frame[PROTO_WS_HEADER_MAX + PROTO_WS_CONTROL_MAX];
    ssize_t n = proto_ws_close_encode(frame, sizeof frame, code, reason, rlen, NULL);
    if (n < 0) /* a reason that is not UTF-8: send the code alone */
        n = proto_ws_close_encode(frame, sizeof frame, code, NULL, 0, NULL);
    /* The last frame: it goes even when the socket is being cut for
     * holding more than its share of all unsent bytes (it is why). */
    if (n > 0 && router_conn_send_last(ws->conn, frame, (size_t) n) == 0)
        router_metric_inc(ws->g->m_ws_frames_out, 1);
    ws->close_code = code == PROTO_WS_CLOSE_NO_STATUS ? PROTO_WS_CLOSE_NORMAL : code;
}

/* Ends the socket from our side without waiting for the client's Close:
 * after a protocol error nothing more it sends can be trusted. */
static void s_fail(gateway_ws_t *ws, uint16_t code, const char *reason)
{
    if (ws->state == S_DONE)
        return;
    if (ws->state == S_OPEN)
        s_send_close(ws, code, reason);
    ws->state = S_DONE;
    s_timer_stop(ws);
    router_conn_close(ws->conn); /* flush the Close, then FIN; bounded by the loop */
    s_closing(ws);
}

/* A frame does not fit the socket's room: it is closed politely (1008)
 * before the loop would reset it. `share`: its own limit had room, all
 * connections' unsent bound did not. */
static int s_cut_slow(gateway_ws_t *ws, bool share)
{
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "ws %llu cut: slow consumer (%zu bytes unsent%s)",
               (unsigned long long) router_conn_id(ws->conn), router_conn_send_queued(ws->conn),
               share ? "; its share of limits.conn_unsent_total_max" : "");
    s_fail(ws, PROTO_WS_CLOSE_POLICY, "slow consumer");
    errno = ENOBUFS;
    return -1;
}

/* The connection refused a frame (and is going: on_close follows). */
static int s_send_failed(gateway_ws_t *ws)
{
    int e = errno;
    ws->state = S_DONE;
    s_closing(ws);
    errno = e;
    return -1;
}

/* Sends one frame if it fits with the Close after it: the connection's
 * own limit, or its share of all connections' unsent bound when they
 * together near it (router_conn_send_room); past either the socket is
 * closed politely (1008), before the loop would reset it. Pongs go this
 * way too: a client flooding pings while reading nothing is a slow
 * consumer like any other, and a reset would tell it nothing. */
static int s_send_bounded(gateway_ws_t *ws, proto_ws_opcode_t op, const void *data, size_t len)
{
    size_t queued = router_conn_send_queued(ws->conn);
    size_t room = router_conn_send_room(ws->conn);
    if (len > SIZE_MAX - PROTO_WS_HEADER_MAX - S_CLOSE_ROOM ||
        PROTO_WS_HEADER_MAX + len + S_CLOSE_ROOM > room)
        return s_cut_slow(ws, queued < ws->send_limit + S_CLOSE_ROOM &&
                                  room < ws->send_limit + S_CLOSE_ROOM - queued);
    if (s_send_frame(ws, op, data, len) != 0)
        return errno == EMSGSIZE ? -1 : s_send_failed(ws);
    return 0;
}

int gateway_ws_send(gateway_ws_t *ws, bool text, const void *data, size_t len)
{
    if (ws->state != S_OPEN) {
        errno = EPIPE;
        return -1;
    }
    return s_send_bounded(ws, text ? PROTO_WS_OP_TEXT : PROTO_WS_OP_BINARY, data, len);
}

router_shared_buf_t *gateway_ws_frame_new(bool text, const void *data, size_t len)
{
    uint8_t hdr[PROTO_WS_HEADER_MAX];
    int hl = proto_ws_header_encode(hdr, text ? PROTO_WS_OP_TEXT : PROTO_WS_OP_BINARY, true, len,
                                    NULL);
    if (hl < 0 || len > SIZE_MAX - (size_t) hl) {
        errno = EMSGSIZE;
        return NULL;
    }
    router_shared_buf_t *frame = router_shared_buf_new((size_t) hl + len);
    if (!frame)
        return NULL;
    uint8_t *p = router_shared_buf_data(frame);
    memcpy(p, hdr, (size_t) hl);
    if (len)
        memcpy(p + hl, data, len);
    return frame;
}

int gateway_ws_send_frame(gateway_ws_t *ws, router_shared_buf_t *frame)
{
    if (!frame) {
        errno = EINVAL;
        return -1;
    }
    if (ws->state != S_OPEN) {
        errno = EPIPE;
        return -1;
    }
    /* As gateway_ws_send, but the frame's bytes may already be counted in
     * the loop's total (other sockets hold them): only its own limit and
     * what it adds to the total decide. */
    if (!router_conn_send_shared_fits(ws->conn, frame, S_CLOSE_ROOM)) {
        size_t queued = router_conn_send_queued(ws->conn);
        size_t need = router_shared_buf_len(frame);
        return s_cut_slow(ws, need <= ws->send_limit && queued <= ws->send_limit - need);
    }
    if (router_conn_send_shared(ws->conn, frame) != 0)
        return errno == EINVAL ? -1 : s_send_failed(ws);
    router_metric_inc(ws->g->m_ws_frames_out, 1);
    return 0;
}

void gateway_ws_close(gateway_ws_t *ws, uint16_t code, const char *reason)
{
    if (ws->state != S_OPEN)
        return;
    s_send_close(ws, code, reason);
    ws->state = S_CLOSE_SENT;
    /* Wait for the client's Close, but not for ever. */
    ws->close_due = router_loop_now_ms(ws->g->loop) + GATEWAY_WS_CLOSE_WAIT_MS;
    s_rearm(ws);
    s_closing(ws);
}

void gateway_ws_end(gateway_ws_t *ws, uint16_t code, const char *reason)
{
    s_fail(ws, code, reason);
}

uint64_t gateway_ws_id(const gateway_ws_t *ws)
{
    return router_conn_id(ws->conn);
}

void gateway_ws_set_message_max(gateway_ws_t *ws, size_t max)
{
    if (!max || max > ws->opts.message_max)
        max = ws->opts.message_max;
    proto_ws_parser_set_limit(ws->parser, max);
}

/* ---------------------------------------------------------------- receiving */

/* The message buffer counts in the unauthenticated connections' budget as
 * `bytes` from now (0 once authenticated or the buffer is gone). */
static void s_msg_count(gateway_ws_t *ws, size_t bytes)
{
    gateway_http_unauth_count(ws->g, &ws->msg_counted, ws->unauth, bytes);
}

static void s_msg_free(gateway_ws_t *ws)
{
    free(ws->msg);
    ws->msg = NULL;
    ws->msg_len = ws->msg_cap = 0;
    s_msg_count(ws, 0);
}

/* Returns 0, -1 out of memory, or -2 when the unauthenticated budget has
 * no room for this socket's message to grow (it would hold the most). */
static int s_msg_append(gateway_ws_t *ws, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0; /* an empty fragment: ws->msg may not exist yet */
    if (ws->msg_len + len > ws->msg_cap) {
        /* Grows with what arrives, never past the message limit (the parser
         * refused larger messages before their payload). */
        size_t cap = ws->msg_cap ? ws->msg_cap : 4096;
        while (cap < ws->msg_len + len)
            cap *= 2;
        if (cap > ws->opts.message_max)
            cap = ws->opts.message_max;
        if (ws->unauth && !gateway_http_unauth_room(ws->g, ws, ws->msg_counted, cap))
            return -2;
        uint8_t *m = realloc(ws->msg, cap);
        if (!m)
            return -1;
        ws->msg = m;
        ws->msg_cap = cap;
        s_msg_count(ws, cap);
    }
    memcpy(ws->msg + ws->msg_len, data, len);
    ws->msg_len += len;
    return 0;
}

/* A message is complete: hand it over, then let go of a large buffer so an
 * idle socket holds little. */
static void s_deliver(gateway_ws_t *ws, const uint8_t *data, size_t len)
{
    if (ws->h.on_message)
        ws->h.on_message(ws, ws->msg_text, data, len, ws->ud);
    ws->msg_len = 0;
    /* An unauthenticated socket keeps nothing counted between messages:
     * the budget is for messages under way, not for idle sockets. */
    if (ws->msg_cap > 64 * 1024 || ws->msg_counted)
        s_msg_free(ws);
}

static void s_event(gateway_ws_t *ws, proto_ws_event_t *ev)
{
    if (ev->frame_end)
        router_metric_inc(ws->g->m_ws_frames_in, 1);
    switch (ev->opcode) {
    case PROTO_WS_OP_TEXT:
    case PROTO_WS_OP_BINARY:
        if (ws->state != S_OPEN)
            return; /* after our Close, data is read and dropped */
        if (ev->message_begin) {
            ws->msg_text = ev->opcode == PROTO_WS_OP_TEXT;
            ws->msg_len = 0;
            if (ev->message_end) { /* whole in this read: no copy */
                s_deliver(ws, ev->data, ev->len);
                return;
            }
        }
        int rc = s_msg_append(ws, ev->data, ev->len);
        if (rc == -2) {
            router_metric_inc(ws->g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_BODIES], 1);
            s_fail(ws, S_CLOSE_TRY_AGAIN, "too many unfinished messages from clients without a "
                                          "credential; try again later");
            return;
        }
        if (rc != 0) {
            s_fail(ws, PROTO_WS_CLOSE_INTERNAL_ERROR, "out of memory");
            return;
        }
        if (ev->message_end)
            s_deliver(ws, ws->msg, ws->msg_len);
        return;
    case PROTO_WS_OP_PING:
        if (ws->state == S_OPEN)
            (void) s_send_bounded(ws, PROTO_WS_OP_PONG, ev->data, ev->len);
        return;
    case PROTO_WS_OP_PONG:
        ws->pong_owed = false; /* alive; a pong we did not ask for also counts */
        return;
    case PROTO_WS_OP_CLOSE:
        if (ws->state == S_OPEN) /* answer with their code (RFC 6455 §5.5.1) */
            s_send_close(ws, ev->close_code, NULL);
        else
            ws->close_code = ev->close_code == PROTO_WS_CLOSE_NO_STATUS ? PROTO_WS_CLOSE_NORMAL
                                                                         : ev->close_code;
        ws->state = S_DONE;
        s_timer_stop(ws);
        router_conn_close(ws->conn);
        s_closing(ws);
        return;
    case PROTO_WS_OP_CONTINUATION:
        return; /* never reported: slices carry their message's opcode */
    }
}

void gateway_ws_input(gateway_ws_t *ws, uint8_t *data, size_t len)
{
    while (len > 0 && ws->state != S_DONE) {
        proto_ws_event_t ev;
        ssize_t n = proto_ws_parse(ws->parser, data, len, &ev);
        if (n == -2) {
            ws->in_frame = true; /* part of a header or control frame is held */
            break;
        }
        if (n < 0) {
            proto_ws_reason_t r = proto_ws_parser_reason(ws->parser);
            s_fail(ws, proto_ws_reason_close_code(r), proto_ws_reason_str(r));
            return;
        }
        data += n;
        len -= (size_t) n;
        ws->in_frame = !ev.frame_end;
        if (ev.frame_end) /* the bound was that frame's; the next one gets its own */
            ws->frame_due = 0;
        s_event(ws, &ev);
    }
    if (ws->state != S_OPEN)
        return; /* closing: the close-wait bound stands */
    /* A frame left unfinished by this read is bounded from its first
     * byte: from now if it began in this read (a frame that ended in it
     * cleared the last due, so a client streaming frames back to back,
     * each read ending inside one, is not cut for the first frame's
     * age), from earlier if it began before (a trickle cannot extend
     * it). */
    if (!ws->in_frame)
        ws->frame_due = 0;
    else if (!ws->frame_due)
        ws->frame_due = router_loop_now_ms(ws->g->loop) + ws->opts.frame_timeout_ms;
    s_rearm(ws);
}

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    gateway_ws_t *ws = ud;
    ws->timer = 0;
    uint64_t now = router_loop_now_ms(loop);
    switch (ws->state) {
    case S_CLOSE_SENT:
        if (now >= ws->close_due) { /* no Close came back */
            ws->state = S_DONE;
            router_conn_abort(ws->conn);
            return;
        }
        break;
    case S_OPEN:
        if (ws->frame_due && now >= ws->frame_due) {
            s_fail(ws, PROTO_WS_CLOSE_POLICY, "frame not finished in time");
            return;
        }
        if (now >= ws->ping_due && ws->pong_owed) {
            /* A whole interval without a pong: gone, unless the client is
             * sending a frame — a pong can only follow it (control frames
             * go between frames, RFC 6455 §5.4), and the frame has its own
             * deadline — or our ping waits behind what we sent before it
             * and the client is taking that (alive, slow; a peer that is
             * gone takes nothing). Then it is judged an interval later. */
            size_t untaken = ws->in_frame ? 0 : router_conn_send_untaken(ws->conn);
            if (!ws->in_frame && !(untaken && untaken < ws->ping_unsent)) {
                s_fail(ws, PROTO_WS_CLOSE_GOING_AWAY, "no pong");
                return;
            }
            if (!ws->in_frame)
                ws->ping_unsent = untaken;
            ws->ping_due = now + ws->opts.ping_interval_ms;
        } else if (now >= ws->ping_due) {
            if (s_send_bounded(ws, PROTO_WS_OP_PING, "kith", 4) != 0)
                return; /* cut, or refused by the loop: on_close follows */
            ws->pong_owed = true;
            ws->ping_unsent = router_conn_send_untaken(ws->conn);
            ws->ping_due = now + ws->opts.ping_interval_ms;
        }
        break;
    case S_DONE:
        return;
    }
    s_rearm(ws);
}

/* ---------------------------------------------------------------- the connection */

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    gateway_ws_input(ud, data, len);
}

/* ---------------------------------------------------------------- the unauthenticated share */

/* Gives the socket's place in the unauthenticated share back. Idempotent. */
static void s_unauth_leave(gateway_ws_t *ws)
{
    gateway_http_t *g = ws->g;
    if (!ws->unauth)
        return;
    if (ws->uprev)
        ws->uprev->unext = ws->unext;
    else
        g->ws_unauth_head = ws->unext;
    if (ws->unext)
        ws->unext->uprev = ws->uprev;
    else
        g->ws_unauth_tail = ws->uprev;
    ws->uprev = ws->unext = NULL;
    ws->unauth = false;
    s_msg_count(ws, 0); /* a credential proved (or gone): its messages are its own affair */
    gateway_http_unauth_give_back(g, &ws->source);
}

gateway_ws_t *gateway_ws_unauth_largest(gateway_http_t *g, const void *spare, size_t *held)
{
    gateway_ws_t *best = NULL;
    for (gateway_ws_t *ws = g->ws_unauth_head; ws; ws = ws->unext)
        if ((const void *) ws != spare && ws->msg_counted &&
            (!best || ws->msg_counted > best->msg_counted))
            best = ws;
    *held = best ? best->msg_counted : 0;
    return best;
}

void gateway_ws_unauth_cut(gateway_ws_t *ws)
{
    s_msg_free(ws);
    s_unauth_leave(ws);
    s_fail(ws, S_CLOSE_TRY_AGAIN, "too many unfinished messages from clients without a "
                                  "credential; try again later");
}

bool gateway_ws_unauth_evict(gateway_http_t *g)
{
    gateway_ws_t *ws = g->ws_unauth_head;
    if (!ws)
        return false;
    router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_EVICTED], 1);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway",
               "ws %llu cut: the oldest unauthenticated WebSocket, for a newcomer",
               (unsigned long long) router_conn_id(ws->conn));
    s_unauth_leave(ws);
    s_fail(ws, PROTO_WS_CLOSE_POLICY, "too many unauthenticated connections");
    return true;
}

/* ---------------------------------------------------------------- lifecycle */

static void s_unlink(gateway_ws_t *ws)
{
    gateway_http_t *g = ws->g;
    if (ws->prev)
        ws->prev->next = ws->next;
    else
        g->ws = ws->next;
    if (ws->next)
        ws->next->prev = ws->prev;
    g->open--;
    g->ws_open--;
    router_metric_set(g->m_open, g->open);
    router_metric_set(g->m_ws_open, g->ws_open);
}

static void s_free(gateway_ws_t *ws)
{
    s_timer_stop(ws);
    proto_ws_parser_destroy(&ws->parser);
    s_msg_free(ws); /* uncounted already: it left the unauthenticated share first */
    free(ws);
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    gateway_ws_t *ws = ud;
    if (reason == ROUTER_CLOSE_SLOW_CONSUMER || reason == ROUTER_CLOSE_TIMEOUT)
        ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "ws %llu cut: %s",
                   (unsigned long long) router_conn_id(conn), router_close_reason_str(reason));
    gateway_http_t *g = ws->g;
    s_unauth_leave(ws);
    s_unlink(ws);
    ws->state = S_DONE;
    s_closing(ws); /* once before on_close, whatever ended it */
    if (ws->h.on_close)
        ws->h.on_close(ws, ws->close_code, ws->ud);
    s_free(ws);
    gateway_http_drain_check(g);
}

static const router_conn_handlers_t s_handlers = {
    .on_data = s_on_data,
    .on_close = s_on_close,
};

gateway_ws_t *gateway_ws_adopt(gateway_http_t *g, router_conn_t *conn,
                               const gateway_ws_handlers_t *h, void *ud,
                               const gateway_ws_opts_t *opts)
{
    gateway_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws || !(ws->parser = proto_ws_parser_new(PROTO_WS_MODE_SERVER))) {
        free(ws);
        errno = ENOMEM;
        return NULL;
    }
    ws->g = g;
    ws->conn = conn;
    ws->h = *h;
    ws->ud = ud;
    ws->accepting = true; /* until gateway_ws_accept returns: the route is not set up */
    ws->opts = opts ? *opts : (gateway_ws_opts_t){0};
    if (!ws->opts.message_max)
        ws->opts.message_max = GATEWAY_WS_MESSAGE_MAX;
    if (!ws->opts.frame_timeout_ms)
        ws->opts.frame_timeout_ms = GATEWAY_WS_FRAME_TIMEOUT_MS;
    if (!ws->opts.ping_interval_ms)
        ws->opts.ping_interval_ms = GATEWAY_WS_PING_INTERVAL_MS;
    ws->send_limit = g->opts.send_limit ? g->opts.send_limit : ROUTER_CONN_SEND_LIMIT;
    ws->close_code = S_CLOSE_ABNORMAL;
    proto_ws_parser_set_limit(ws->parser, ws->opts.message_max);
    /* Our own check cuts at send_limit with a Close; the loop's limit sits a
     * little higher so that Close still fits. */
    router_conn_set_send_limit(conn, ws->send_limit + S_CLOSE_ROOM);
    router_conn_set_handlers(conn, &s_handlers, ws);
    /* A socket always reads (its bounds are its own): the HTTP side may
     * have paused reads when this upgrade came pipelined behind an answer
     * that had to wait (a deferred 202, answers piling up), and nothing
     * there resumes them once the connection is ours. Input parked
     * meanwhile comes after the held bytes we are handed now. */
    router_conn_resume_read(conn);
    ws->next = g->ws;
    if (g->ws)
        g->ws->prev = ws;
    g->ws = ws;
    g->ws_open++; /* already counted in g->open as the HTTP connection it was */
    router_metric_set(g->m_ws_open, g->ws_open);
    ws->ping_due = router_loop_now_ms(g->loop) + ws->opts.ping_interval_ms;
    s_rearm(ws);
    return ws;
}

gateway_ws_t *gateway_ws_accept(gateway_http_res_t *res, const gateway_ws_handlers_t *h,
                                void *ud, const gateway_ws_opts_t *opts)
{
    if (!res->upgrade || !h) {
        errno = EINVAL;
        return NULL;
    }
    if (res->sent) {
        errno = EALREADY;
        return NULL;
    }
    gateway_http_conn_t *hc = res->hc;
    char head[512];
    int n = proto_ws_upgrade_response(res->upgrade, head, sizeof head);
    if (n < 0) {
        errno = EINVAL;
        return NULL;
    }
    gateway_ws_t *ws = gateway_ws_adopt(hc->g, hc->conn, h, ud, opts);
    if (!ws)
        return NULL;
    res->sent = true;
    res->ws = ws;
    memcpy(ws->credential, res->credential, sizeof ws->credential);
    /* Not authenticated by its upgrade request: it keeps its place. */
    ws->source = gateway_http_unauth_hand_over(hc, &ws->unauth);
    if (ws->unauth) {
        gateway_http_t *g = hc->g;
        ws->uprev = g->ws_unauth_tail;
        if (g->ws_unauth_tail)
            g->ws_unauth_tail->unext = ws;
        else
            g->ws_unauth_head = ws;
        g->ws_unauth_tail = ws;
    }
    gateway_http_count_status(hc->g, hc->route, 101);
    if (router_conn_send(hc->conn, head, (size_t) n) != 0)
        ws->state = S_DONE; /* on_close follows from the loop, on_closing first */
    ws->accepting = false;
    return ws;
}

const char *gateway_ws_req_protocol(const gateway_http_res_t *res)
{
    return res->upgrade ? res->upgrade->protocol : NULL;
}

const char *gateway_ws_req_bearer(const gateway_http_res_t *res, size_t *len)
{
    if (!res->upgrade || !res->upgrade->bearer) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = res->upgrade->bearer_len;
    return res->upgrade->bearer;
}

void gateway_ws_set_credential(gateway_ws_t *ws, const char *id)
{
    if (!ws)
        return;
    snprintf(ws->credential, sizeof ws->credential, "%s", id ? id : "");
    s_unauth_leave(ws);
}

size_t gateway_ws_close_credential(gateway_http_t *g, const char *id, const char *reason)
{
    size_t n = 0;
    for (gateway_ws_t *ws = g->ws, *next; ws; ws = next) {
        next = ws->next;
        if (ws->credential[0] && !strcmp(ws->credential, id) && ws->state == S_OPEN) {
            gateway_ws_close(ws, 1008, reason);
            n++;
        }
    }
    return n;
}

void gateway_ws_close_all(gateway_http_t *g, uint16_t code, bool abort)
{
    for (gateway_ws_t *ws = g->ws, *next; ws; ws = next) {
        next = ws->next;
        if (abort) {
            router_conn_abort(ws->conn);
            ws->state = S_DONE;
            s_closing(ws);
        } else
            gateway_ws_close(ws, code, "server shutting down");
    }
}

void gateway_ws_disown_all(gateway_http_t *g)
{
    for (gateway_ws_t *ws = g->ws, *next; ws; ws = next) {
        next = ws->next;
        router_conn_disown(ws->conn);
        s_unauth_leave(ws);
        s_free(ws);
    }
    g->ws = NULL;
    g->ws_open = 0;
    router_metric_set(g->m_ws_open, 0);
}

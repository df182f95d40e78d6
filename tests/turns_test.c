/* tests/turns_test.c — sessions and turns on a real loop and broker with a
 * fake agent worker thread (router_mdp_worker + proto/worker_msg): a chat
 * message's frames reach every subscriber, history grows and comes back,
 * SESSION_BUSY past the bound and after the lock timeout, steer and stop
 * (with and without a turn), inbox entries (plain and external events)
 * become turns and leave the inbox, and the /api/sessions documents; the
 * router-run tools sending through a fake comms (acked, offline, no
 * route) and a request envelope's signed response, retried until acked;
 * and what goes wrong: no worker takes a turn, a worker never answers (or
 * never confirms a stop, or leaves), a worker's reply is malformed, out of
 * order or another turn's, a router-run tool is called with bad
 * arguments, state.db's bounds are reached, inbox entries cannot be
 * turns, a history is too large to send, turns are destroyed with work in
 * hand, inbox entries wait (never ended) while the session store or the
 * worker queue cannot take their turns, a callback detaches another of a
 * crowded session's subscribers mid-delivery; and the loop thread out of
 * memory at each allocation of a turn with router tools, of taking an
 * inbox entry, of a request's answer, of attaching and of
 * router_turns_new, in turn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <czmq.h>

#include "alloc_fail.h"
#include "worker_reply.h"
#include "loop_until.h"
#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "proto/worker_msg.h"
#include "router/log.h"
#include "router/net/loop.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"
#include "router/workers/turns.h"

/* A fresh endpoint per case: a closed socket's inproc name is released
 * asynchronously. */
static char EP[64];
static int s_case;

/* ------------------------------------------------------------ the fake agent */

typedef struct {
    pthread_t thread;
    router_mdp_worker_t *w;
    const char *const (*calls)[2]; /* "/send": the router tools it calls, set before */
    size_t ncalls;
} agent_t;

static void s_chunk(router_mdp_worker_t *w, const uint8_t id[16], uint64_t seq, const char *text)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
    memcpy(rep.partial.turn_id, id, 16);
    rep.partial.seq = seq;
    rep.partial.event.type = PROTO_WORKER_EV_CHUNK;
    rep.partial.event.text = (proto_worker_str_t) {text, strlen(text)};
    test_worker_reply(w, &rep);
}

static void s_done(router_mdp_worker_t *w, const uint8_t id[16], const char *text)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
    rep.final.type = PROTO_WORKER_FINAL_DONE;
    memcpy(rep.final.turn_id, id, 16);
    rep.final.full_response = (proto_worker_str_t) {text, strlen(text)};
    test_worker_reply(w, &rep);
}

static void s_partial(router_mdp_worker_t *w, const uint8_t id[16], uint64_t seq,
                      const proto_worker_event_t *ev)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
    memcpy(rep.partial.turn_id, id, 16);
    rep.partial.seq = seq;
    rep.partial.event = *ev;
    test_worker_reply(w, &rep);
}

static proto_worker_str_t s_s(const char *text)
{
    return (proto_worker_str_t) {text, strlen(text)};
}

/* "/events": every event kind that becomes a frame, one out of order. */
static void s_events(router_mdp_worker_t *w, const uint8_t id[16])
{
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_CHUNK_RESET};
    s_partial(w, id, 0, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_OPERATOR_STATUS, .text = s_s("busy")};
    s_partial(w, id, 1, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_AGENT_EVENT, .name = s_s("mood"),
                                 .data = s_s("{\"calm\":true}")};
    s_partial(w, id, 2, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_THINKING, .text = s_s("hmm")};
    s_partial(w, id, 7, &ev); /* 3 was due: logged, the frame still goes out */
    s_done(w, id, "events sent");
}

/* "/tools": router-run tools called with what they must refuse. */
static const char *const s_refusals[][2] = {
    {"send_message", "[1]"},
    {"send_message", "{\"peer\":\"nobody\",\"body\":\"x\"}"},
    {"send_request", "{\"peer\":\"nobody\",\"intent\":\"x\"}"},
    {"send_response", "{\"in_reply_to\":\"nope\"}"},
    {"send_response",
     "{\"in_reply_to\":\"0190f5a0-0000-7000-8000-000000000000\",\"status\":\"failed\"}"},
    {"peers", "{}"},
};

/* Calls the router-run tools calls[0..n) ("c0", "c1", …); the results,
 * each "id:[error:]result|", are the turn's full response. Interrupted
 * (the test is ending): returns with no reply. */
static void s_tools(router_mdp_worker_t *w, const uint8_t id[16], const char *const calls[][2],
                    size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char cid[24];
        snprintf(cid, sizeof cid, "c%zu", i);
        proto_worker_event_t ev = {.type = PROTO_WORKER_EV_TOOL_CALL};
        ev.call = (proto_worker_tool_call_t) {s_s(cid), s_s(calls[i][0]), s_s(calls[i][1])};
        s_partial(w, id, i, &ev);
    }
    char all[4096] = "";
    uint8_t *body;
    size_t len;
    for (size_t got = 0; got < n;) {
        if (router_mdp_worker_recv(w, &body, &len, -1) != 1)
            return;
        proto_worker_request_t r;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &r, &err);
        free(body);
        if (rc != 0)
            continue;
        if (r.type == PROTO_WORKER_REQ_TOOL_RESULT) {
            size_t used = strlen(all);
            snprintf(all + used, sizeof all - used, "%s:%s%s|", r.tool_result.id.p,
                     r.tool_result.is_error ? "error:" : "", r.tool_result.result.p);
            got++;
        }
        bool stop = r.type == PROTO_WORKER_REQ_STOP;
        proto_worker_request_clear(&r);
        if (stop) { /* no more results are coming */
            proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
            rep.final.type = PROTO_WORKER_FINAL_STOPPED;
            memcpy(rep.final.turn_id, id, 16);
            test_worker_reply(w, &rep);
            return;
        }
    }
    s_done(w, id, all);
}

/* Whether the first tool result the router sent in "/worker-tools" was
 * for its call w2 (set by the agent thread before its FINAL). */
static atomic_bool s_first_router_result_w2;

/* "/worker-tools": a tool the worker runs itself (its call and result are
 * only shown), a provider call, then an error FINAL. */
static void s_worker_tools(router_mdp_worker_t *w, const uint8_t id[16])
{
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_TOOL_CALL};
    ev.call = (proto_worker_tool_call_t) {s_s("w0"), s_s("search"), s_s("{\"q\":\"kith\"}")};
    s_partial(w, id, 0, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_TOOL_RESULT, .id = s_s("w0"),
                                 .result = s_s("{\"hits\":0}"), .is_error = true};
    s_partial(w, id, 1, &ev);
    /* A name with a NUL inside is a tool of the worker's, not the router's
     * peers: the first result the router sends is the real peers call's. */
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_TOOL_CALL};
    ev.call = (proto_worker_tool_call_t) {s_s("w1"), {"peers\0x", 7}, s_s("{}")};
    s_partial(w, id, 2, &ev);
    ev.call = (proto_worker_tool_call_t) {s_s("w2"), s_s("peers"), s_s("{}")};
    s_partial(w, id, 3, &ev);
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(w, &body, &len, -1) == 1) {
        proto_worker_request_t r;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &r, &err);
        free(body);
        if (rc != 0)
            continue;
        bool result = r.type == PROTO_WORKER_REQ_TOOL_RESULT;
        bool stop = r.type == PROTO_WORKER_REQ_STOP;
        if (result)
            atomic_store(&s_first_router_result_w2, !strcmp(r.tool_result.id.p, "w2"));
        proto_worker_request_clear(&r);
        if (stop) {
            /* As agent/turn.c does: a stop ends the wait for a result (the
             * router stops a turn whose tool call or result it lost). */
            proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
            rep.final.type = PROTO_WORKER_FINAL_STOPPED;
            memcpy(rep.final.turn_id, id, 16);
            test_worker_reply(w, &rep);
            return;
        }
        if (result)
            break;
    }
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_LLM_REQUEST, .provider = s_s("openai"),
                                 .model = s_s("m1"), .iteration = 2};
    s_partial(w, id, 4, &ev);
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
    rep.final.type = PROTO_WORKER_FINAL_ERROR;
    memcpy(rep.final.turn_id, id, 16);
    rep.final.code = PROTO_WORKER_CODE_PROVIDER_ERROR;
    rep.final.message = s_s("upstream down");
    test_worker_reply(w, &rep);
}

/* A request envelope's turn ("request answer: …") answers it itself with
 * the send_response tool, naming the envelope its origin carries. */
static void s_answer_request(router_mdp_worker_t *w, const proto_worker_turn_t *turn)
{
    char irt[PROTO_UUID_TEXT_CAP], args[192];
    proto_uuid_format(turn->origin.envelope_id, irt);
    snprintf(args, sizeof args,
             "{\"in_reply_to\":\"%s\",\"status\":\"completed\",\"result\":{\"ok\":true}}",
             irt);
    const char *const call[1][2] = {{"send_response", args}};
    s_tools(w, turn->turn_id, call, 1);
}

/* "echo(h=N): content"; "/hold" waits for a steer (answers "steered: X")
 * or a stop (FINAL stopped). */
static void *s_agent_main(void *arg)
{
    agent_t *a = arg;
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(a->w, &body, &len, -1) == 1) {
        proto_worker_request_t req;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &req, &err);
        free(body);
        if (rc != 0 || req.type != PROTO_WORKER_REQ_TURN) {
            if (rc == 0)
                proto_worker_request_clear(&req);
            continue;
        }
        uint8_t id[16];
        memcpy(id, req.turn.turn_id, 16);
        char out[512];
        const char *content = req.turn.message.content.p;
        if (strcmp(content, "/deaf") == 0) {
            /* Takes the turn and never answers anything again. */
            while (router_mdp_worker_recv(a->w, &body, &len, -1) == 1)
                free(body);
        } else if (strcmp(content, "/events") == 0) {
            s_events(a->w, id);
        } else if (strcmp(content, "/garbage") == 0) {
            assert_int_equal(router_mdp_worker_partial(a->w, (const uint8_t *) "\xff", 1), 0);
            assert_int_equal(router_mdp_worker_final(a->w, (const uint8_t *) "\xff", 1), 0);
        } else if (strcmp(content, "/tools") == 0) {
            s_tools(a->w, id, s_refusals, sizeof s_refusals / sizeof s_refusals[0]);
        } else if (strcmp(content, "/send") == 0) {
            s_tools(a->w, id, a->calls, a->ncalls);
        } else if (strcmp(content, "/worker-tools") == 0) {
            s_worker_tools(a->w, id);
        } else if (strncmp(content, "request answer", 14) == 0) {
            s_answer_request(a->w, &req.turn);
        } else if (strcmp(content, "/other") == 0) {
            /* Another turn's partial first: the router ignores it. */
            uint8_t other[16] = {0};
            s_chunk(a->w, other, 0, "not yours");
            s_chunk(a->w, id, 0, "yours");
            proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
            rep.final = (proto_worker_final_t) {.type = PROTO_WORKER_FINAL_DONE,
                                                .full_response = s_s("yours"),
                                                .tool_iterations = 3, .has_tokens_used = true,
                                                .tokens_used = 42, .has_cost_usd = true,
                                                .cost_usd = 0.5};
            memcpy(rep.final.turn_id, id, 16);
            test_worker_reply(a->w, &rep);
        } else if (strcmp(content, "/hold") == 0) {
            for (;;) {
                proto_worker_request_t c;
                if (router_mdp_worker_recv(a->w, &body, &len, -1) != 1)
                    break;
                rc = proto_worker_request_decode(body, len, &c, &err);
                free(body);
                if (rc != 0)
                    continue;
                if (c.type == PROTO_WORKER_REQ_STEER) {
                    snprintf(out, sizeof out, "steered: %s", c.control.content.p);
                    s_chunk(a->w, id, 0, out);
                    s_done(a->w, id, out);
                    proto_worker_request_clear(&c);
                    break;
                }
                if (c.type == PROTO_WORKER_REQ_STOP) {
                    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
                    rep.final.type = PROTO_WORKER_FINAL_STOPPED;
                    memcpy(rep.final.turn_id, id, 16);
                    test_worker_reply(a->w, &rep);
                    proto_worker_request_clear(&c);
                    break;
                }
                proto_worker_request_clear(&c);
            }
        } else {
            snprintf(out, sizeof out, "echo(h=%zu): %s", req.turn.n_history,
                     req.turn.message.content.p);
            s_chunk(a->w, id, 0, out);
            s_done(a->w, id, out);
        }
        proto_worker_request_clear(&req);
    }
    return NULL;
}

static agent_t *s_agent_start(void)
{
    agent_t *a = calloc(1, sizeof *a);
    char err[256];
    router_mdp_worker_opts_t o = {.endpoint = EP, .service = "kith.agent", .heartbeat_ms = 100,
                                  .liveness = 100};
    a->w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(a->w);
    assert_int_equal(pthread_create(&a->thread, NULL, s_agent_main, a), 0);
    return a;
}

static void s_agent_stop(agent_t **ap)
{
    if (!*ap)
        return;
    router_mdp_worker_interrupt((*ap)->w);
    pthread_join((*ap)->thread, NULL);
    router_mdp_worker_destroy(&(*ap)->w);
    free(*ap);
    *ap = NULL;
}

/* ------------------------------------------------------------ the harness */

#define FRAMES_MAX 64

typedef struct {
    int n;
    router_turn_frame_type_t type[FRAMES_MAX];
    char json[FRAMES_MAX][2048];
} frames_t;

static void s_on_frame(const router_turn_frame_t *f, void *ud)
{
    frames_t *fr = ud;
    if (fr->n == FRAMES_MAX)
        return;
    fr->type[fr->n] = f->type;
    snprintf(fr->json[fr->n], sizeof fr->json[0], "%.*s", (int) f->json_len, f->json);
    fr->n++;
}

/* The last frame of a type, or NULL. */
static const char *s_last(const frames_t *fr, router_turn_frame_type_t type)
{
    for (int i = fr->n - 1; i >= 0; i--)
        if (fr->type[i] == type)
            return fr->json[i];
    return NULL;
}

static int s_count(const frames_t *fr, router_turn_frame_type_t type)
{
    int n = 0;
    for (int i = 0; i < fr->n; i++)
        n += fr->type[i] == type;
    return n;
}

typedef struct {
    router_loop_t *loop;
    router_broker_t *b;
    router_inbox_t *inbox;
    router_turns_t *t;
    agent_t *agent;
} env_t;

/* Runs the loop until until(ud) holds (checked every 10 ms), at most 60 s. */
static void s_run(env_t *e, bool (*until)(void *), void *ud)
{
    test_loop_until(e->loop, until, ud, 10, 60000);
}

/* A loop, a broker, an inbox and turns with the options `to` sets (the
 * loop, broker and inbox are filled in here), and an agent if asked. */
static void s_setup_opts(env_t *e, router_turns_opts_t to, bool agent)
{
    char err[256] = "";
    snprintf(EP, sizeof EP, "inproc://turns-test-%d", ++s_case);
    e->loop = router_loop_new(NULL);
    router_broker_opts_t bo = {.loop = e->loop, .endpoint = EP, .heartbeat_ms = 100,
                               .liveness = 100};
    e->b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(e->b);
    router_inbox_opts_t io = {.capacity = 16};
    e->inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(e->inbox);
    to.loop = e->loop;
    to.broker = e->b;
    to.inbox = e->inbox;
    if (!to.comms_session)
        to.comms_session = "comms";
    e->t = router_turns_new(&to, err, sizeof err);
    if (!e->t)
        fprintf(stderr, "turns: %s\n", err);
    assert_non_null(e->t);
    e->agent = agent ? s_agent_start() : NULL;
}

static void s_setup_with(env_t *e, uint32_t queue_max, uint32_t lock_s, uint32_t turn_timeout_s,
                         bool agent)
{
    router_turns_opts_t to = {.queue_max = queue_max, .lock_timeout_s = lock_s,
                              .turn_timeout_s = turn_timeout_s};
    s_setup_opts(e, to, agent);
}

static void s_setup(env_t *e, uint32_t queue_max, uint32_t lock_s)
{
    s_setup_with(e, queue_max, lock_s, 0, true);
}

static void s_teardown(env_t *e)
{
    if (e->agent)
        s_agent_stop(&e->agent);
    router_turns_destroy(&e->t);
    router_turns_destroy(&e->t);
    router_broker_destroy(&e->b);
    router_inbox_destroy(&e->inbox);
    router_loop_destroy(&e->loop);
}

typedef struct {
    frames_t *fr;
    router_turn_frame_type_t type;
    int n;
} want_t;

static bool s_has(void *ud)
{
    want_t *w = ud;
    return s_count(w->fr, w->type) >= w->n;
}

static void s_wait(env_t *e, frames_t *fr, router_turn_frame_type_t type, int n)
{
    want_t w = {fr, type, n};
    s_run(e, s_has, &w);
}

/* ------------------------------------------------------------ fake comms */

/* What the fake comms does with its n-th send. */
typedef enum {
    SEND_ACK,     /* the peer acks it (the callback runs on the next loop turn) */
    SEND_OFFLINE, /* no ack: the peer is offline */
    SEND_FAIL,    /* refused at once (-1), no callback */
    SEND_SILENT,  /* taken, never answered (the test ends first) */
} send_mode_t;

#define SENDS_MAX 16

/* An answer the fake comms owes, given on a later loop turn. */
typedef struct {
    router_send_fn *cb;             /* the sender's callback */
    void *cb_ud;
    router_send_outcome_t outcome;  /* what it is told */
} pending_t;

/* router_turns_send_fn's stand-in, and the trust store turns reads. */
typedef struct {
    router_loop_t *loop;           /* where answers are given */
    router_trust_t *trust;         /* the store turns reads (owned by the test) */
    send_mode_t mode[SENDS_MAX];   /* each send's fate (0: SEND_ACK) */
    int n;                         /* sends asked for */
    uint8_t to[SENDS_MAX][32];     /* each send's peer */
    proto_kind_t kind[SENDS_MAX];  /* ...its kind */
    char text[SENDS_MAX][128];     /* ...a message's body, a request's intent, a response's result */
    uint8_t in_reply_to[SENDS_MAX][16]; /* ...a response's request */
    proto_status_t status[SENDS_MAX];   /* ...a response's status */
    pending_t pend[SENDS_MAX];     /* ...its answer, until given */
} comms_t;

static void s_comms_answer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    pending_t *p = ud;
    static const uint8_t ack_id[16] = {1};
    p->cb(p->outcome, p->outcome == ROUTER_SEND_ACKED ? "acked" : "the peer is offline",
          p->outcome == ROUTER_SEND_ACKED ? ack_id : NULL, p->cb_ud);
}

static int s_comms_send(void *ud, const uint8_t to[32], cbor_item_t **kind, uint8_t id_out[16],
                        router_send_fn *cb, void *cb_ud, char *detail, size_t detailcap)
{
    comms_t *c = ud;
    assert_true(c->n < SENDS_MAX);
    int i = c->n++;
    memcpy(c->to[i], to, 32);
    /* What was sent, read back as the envelope it would travel in. */
    cbor_item_t *mine = cbor_incref(*kind);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, to, to, &mine, &why);
    assert_non_null(env);
    memcpy(id_out, proto_envelope_id(env), 16);
    c->kind[i] = proto_envelope_kind(env);
    const char *p = NULL;
    size_t len = 0;
    if (proto_envelope_text(env, c->kind[i] == PROTO_KIND_REQUEST ? "intent"
                                 : c->kind[i] == PROTO_KIND_RESPONSE ? "result" : "body",
                            &p, &len) == 0)
        snprintf(c->text[i], sizeof c->text[i], "%.*s", (int) len, p);
    if (c->kind[i] == PROTO_KIND_RESPONSE) {
        assert_int_equal(proto_envelope_in_reply_to(env, c->in_reply_to[i]), 0);
        c->status[i] = proto_envelope_status(env);
    }
    proto_envelope_destroy(&env);
    if (c->mode[i] == SEND_FAIL) {
        snprintf(detail, detailcap, "no route to the peer");
        return -1; /* *kind stays the caller's */
    }
    cbor_decref(kind); /* taken */
    if (c->mode[i] == SEND_SILENT)
        return 0;
    c->pend[i] = (pending_t) {cb, cb_ud, c->mode[i] == SEND_ACK ? ROUTER_SEND_ACKED
                                                                : ROUTER_SEND_OFFLINE};
    assert_true(router_loop_timer_add(c->loop, 0, s_comms_answer, &c->pend[i]) != 0);
    return 0;
}

static const router_trust_t *s_comms_trust(void *ud)
{
    return ((comms_t *) ud)->trust;
}

/* A peer `name` with the keys seed_byte makes, trusted by c; its keys in
 * pk and sk. */
static void s_comms_peer(comms_t *c, const char *name, uint8_t seed_byte, uint8_t pk[32],
                         uint8_t sk[64])
{
    uint8_t seed[32];
    memset(seed, seed_byte, sizeof seed);
    proto_ed25519_seed_keypair(seed, pk, sk);
    char err[256];
    assert_int_equal(router_trust_add(c->trust, name, pk, "tcp://127.0.0.1:9", NULL, NULL, 0, err,
                                      sizeof err), 0);
}

/* Turns with c as their comms and trust store, and an agent. */
static void s_setup_comms(env_t *e, comms_t *c)
{
    router_turns_opts_t to = {.send = s_comms_send, .send_ud = c, .trust = s_comms_trust,
                              .trust_ud = c};
    s_setup_opts(e, to, true);
    c->loop = e->loop;
}

/* ------------------------------------------------------------ events */

#define EVENTS_MAX 64

/* What the /api/events sink was told. */
typedef struct {
    int n;
    char line[EVENTS_MAX][256]; /* "type json" */
} events_t;

static void s_on_event(const char *type, const char *json, void *ud)
{
    events_t *ev = ud;
    if (ev->n < EVENTS_MAX)
        snprintf(ev->line[ev->n++], sizeof ev->line[0], "%s %s", type, json);
}

/* The first event line holding both needles, or NULL. */
static const char *s_event_with(const events_t *ev, const char *a, const char *b)
{
    for (int i = 0; i < ev->n; i++)
        if (strstr(ev->line[i], a) && strstr(ev->line[i], b))
            return ev->line[i];
    return NULL;
}

/* ------------------------------------------------------------ cases */

static void test_chat_round_trip(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, NULL, "mine", s_on_frame, &a);
    assert_true(sa > 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    assert_non_null(strstr(a.json[0], "\"resumed\":false"));
    assert_non_null(strstr(a.json[0], "\"message_count\":0"));
    assert_non_null(strstr(a.json[0], "\"name\":\"mine\""));
    char sid[ROUTER_TURNS_SESSION_ID_MAX + 1];
    snprintf(sid, sizeof sid, "%s", router_turns_session_of(e.t, sa));

    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "hi", 2, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(
        strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "\"full_response\":\"echo(h=0): hi\""));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_CHUNK), "\"content\":\"echo(h=0): hi\""));
    /* The second turn carries the first exchange as history. */
    assert_int_equal(router_turns_submit(e.t, sa, "again", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h=2): again"));

    /* Another subscriber resumes the session and sees the next turn too. */
    router_turns_sub_t sb = router_turns_attach(e.t, sid, NULL, s_on_frame, &b);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    assert_non_null(strstr(b.json[0], "\"resumed\":true"));
    assert_non_null(strstr(b.json[0], "\"message_count\":4"));
    assert_int_equal(router_turns_submit(e.t, sb, "three", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 3);
    s_wait(&e, &b, ROUTER_TURN_FRAME_DONE, 1);

    /* Empty content, bad ids. */
    assert_int_equal(router_turns_submit(e.t, sa, " \n", 2, &code), -1);
    assert_string_equal(code, "EMPTY_CONTENT");
    assert_int_equal(router_turns_attach(e.t, "bad id!", NULL, s_on_frame, &b), 0);
    router_turns_detach(e.t, sb);
    router_turns_detach(e.t, sb);
    assert_null(router_turns_session_of(e.t, sb));
    router_turns_detach(e.t, sa);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.done, 3);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.sessions, 0);
    s_teardown(&e);
}

static void test_busy_steer_stop(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 1, 1);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "busy", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    /* No turn: steer is NO_ACTIVE_TURN, stop says so. */
    assert_int_equal(router_turns_steer(e.t, s, "x", 1, &code), -1);
    assert_string_equal(code, "NO_ACTIVE_TURN");
    router_turns_stop(e.t, s);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), "no active turn"));

    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    assert_int_equal(router_turns_submit(e.t, s, "waits", 5, &code), 0);
    assert_int_equal(router_turns_submit(e.t, s, "one too many", 12, &code), -1);
    assert_string_equal(code, "SESSION_BUSY");
    /* The waiting one times out after the lock timeout (1 s here). */
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "\"code\":\"SESSION_BUSY\""));
    /* A steer that finds no memory for itself is told so, not that there
     * is no turn (it said NO_ACTIVE_TURN); the turn goes on. */
    alloc_fail_arm(0);
    assert_int_equal(router_turns_steer(e.t, s, "lost", 4, &code), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_string_equal(code, "AGENT_ERROR");
    assert_non_null(router_turns_active(e.t, s, NULL));
    /* Steer the held turn. */
    assert_int_equal(router_turns_steer(e.t, s, "left", 4, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "steered: left"));
    /* Stop a held turn. */
    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), "\"turn_id\""));
    /* The session runs on. */
    assert_int_equal(router_turns_submit(e.t, s, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.stopped, 1);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* A waiting message taken out of the queue never runs; one whose turn
 * began cannot be taken out. */
static void test_withdraw(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "withdraw", NULL, s_on_frame, &a);
    router_turns_sub_t other = router_turns_attach(e.t, "withdraw", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 2);
    const char *code = NULL;
    uint64_t held = 0, first = 0, second = 0;
    assert_int_equal(router_turns_submit_msg(e.t, s, "/hold", 5, &held, &code), 0);
    assert_int_equal(router_turns_submit_msg(e.t, s, "first", 5, &first, &code), 0);
    assert_int_equal(router_turns_submit_msg(e.t, s, "second", 6, &second, &code), 0);
    assert_true(held != 0 && first != held && second != first);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 2);
    assert_int_equal(router_turns_withdraw(e.t, s, held), -1);      /* in flight */
    assert_int_equal(router_turns_withdraw(e.t, other, first), -1); /* not other's */
    assert_int_equal(router_turns_withdraw(e.t, s, 0), -1);
    assert_int_equal(router_turns_withdraw(e.t, 999, first), -1);   /* no such subscriber */
    assert_int_equal(router_turns_withdraw(e.t, s, first), 0);
    assert_int_equal(router_turns_withdraw(e.t, s, first), -1);     /* gone already */
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 1);
    /* The held turn stops; the next is "second": "first" never ran. */
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2); /* both subscribers see it */
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "): second\""));
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(st.done, 1);
    router_turns_detach(e.t, s);
    router_turns_detach(e.t, other);
    s_teardown(&e);
}

static bool s_inbox_empty(void *ud)
{
    return router_inbox_count(ud) == 0;
}

static void test_inbox_turns(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t c = {0}, x = {0};
    router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
    router_turns_sub_t sx = router_turns_attach(e.t, "s1", NULL, s_on_frame, &x);
    s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &x, ROUTER_TURN_FRAME_SESSION_START, 1);
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    proto_uuid_v7_new(id);
    const char *line = "disk almost full";
    assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                        strlen(line), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    proto_uuid_v7_new(id);
    const char *ev = "{\"session_id\":\"s1\",\"event\":{\"kind\":\"generic_json\",\"n\":1}}";
    assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) ev,
                                        strlen(ev), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    router_turns_kick(e.t);
    s_wait(&e, &c, ROUTER_TURN_FRAME_DONE, 1);
    s_wait(&e, &x, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), "echo(h=0): disk almost full"));
    assert_non_null(strstr(s_last(&x, ROUTER_TURN_FRAME_DONE),
                           "echo(h=0): {\\\"kind\\\":\\\"generic_json\\\",\\\"n\\\":1}"));
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_detach(e.t, sc);
    router_turns_detach(e.t, sx);
    s_teardown(&e);
}

/* A backlog of chat messages whose turns cannot start (the session store
 * refusing every job when the turn ahead of them ends): each is answered
 * AGENT_ERROR at once, one after another in s_pump's loop, and the session
 * is collected once its socket goes. This recursed a frame per message,
 * and the inner calls freed the session the outer ones still used (a
 * double free under load in tools/bench). */
static void test_backlog_that_cannot_start(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 16, 60);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "backlog", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    for (int i = 0; i < 15; i++) {
        char line[32];
        int n = snprintf(line, sizeof line, "message %d", i);
        assert_int_equal(router_turns_submit(e.t, s, line, (size_t) n, &code), 0);
    }
    router_turns_store_refuse(e.t, true);
    assert_int_equal(router_turns_steer(e.t, s, "end", 3, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 15);
    assert_int_equal(s_count(&a, ROUTER_TURN_FRAME_DONE), 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "session store is overloaded"));
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.errors, 15);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.waiting, 0);
    router_turns_detach(e.t, s);
    router_turns_stats(e.t, &st);
    assert_int_equal(st.sessions, 0);
    router_turns_store_refuse(e.t, false);
    s_teardown(&e);
}

static bool s_all_waiting(void *ud)
{
    router_turns_stats_t st;
    router_turns_stats(ud, &st);
    return st.waiting == 16;
}

typedef struct {
    router_inbox_t *inbox;
    frames_t *fr;
    int done;
} drained_t;

static bool s_drained(void *ud)
{
    drained_t *d = ud;
    return router_inbox_count(d->inbox) == 0 && s_count(d->fr, ROUTER_TURN_FRAME_DONE) >= d->done;
}

/* Inbox entries (acked to their senders) whose turns cannot start because
 * the session store takes no job (its queue full behind a failing disk):
 * they wait in their session's queue, first in line and in order, and none
 * is ended; a chat message behind them gets SESSION_BUSY at its lock
 * timeout; once the store takes jobs again every entry becomes a turn that
 * runs, in order, with the history of those before it. Before, each entry
 * ended at once as an error and left the inbox: its message never reached
 * the agent nor the session's history. */
static void test_inbox_waits_for_the_store(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 1);
    frames_t c = {0};
    router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
    s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
    router_turns_store_refuse(e.t, true);
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    for (int i = 0; i < 16; i++) {
        proto_uuid_v7_new(id);
        char line[32];
        int n = snprintf(line, sizeof line, "event %d", i);
        assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                            (size_t) n, 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    }
    router_turns_kick(e.t);
    s_run(&e, s_all_waiting, e.t);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(router_inbox_count(e.inbox), 16);
    assert_int_equal(c.n, 1); /* nothing but its session_start */

    /* A chat message waits behind them, under its lock timeout (1 s). */
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sc, "behind", 6, &code), 0);
    s_wait(&e, &c, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_ERROR), "\"code\":\"SESSION_BUSY\""));
    assert_int_equal(router_inbox_count(e.inbox), 16);

    router_turns_store_refuse(e.t, false);
    drained_t d = {e.inbox, &c, 16};
    s_run(&e, s_drained, &d);
    int k = 0;
    for (int i = 0; i < c.n; i++) {
        if (c.type[i] != ROUTER_TURN_FRAME_DONE)
            continue;
        char want[64];
        snprintf(want, sizeof want, "echo(h=%d): event %d", 2 * k, k);
        if (!strstr(c.json[i], want))
            fail_msg("done %d: %s, not %s", k, c.json[i], want);
        k++;
    }
    assert_int_equal(k, 16);
    router_turns_stats(e.t, &st);
    assert_int_equal(st.done, 16);
    assert_int_equal(st.errors, 0);
    router_turns_detach(e.t, sc);
    s_teardown(&e);
}

typedef struct {
    int status;
    char json[4096];
    bool done;
} json_t;

static void s_on_json(int status, const char *json, size_t len, void *ud)
{
    json_t *j = ud;
    j->status = status;
    snprintf(j->json, sizeof j->json, "%.*s", (int) len, json);
    j->done = true;
}

static bool s_json_done(void *ud)
{
    return ((json_t *) ud)->done;
}

static void test_sessions_api(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "api", "named", s_on_frame, &a);
    const char *code;
    assert_int_equal(router_turns_submit(e.t, s, "q", 1, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    json_t l = {0}, g = {0}, n = {0};
    assert_int_equal(router_turns_sessions_list(e.t, 10, s_on_json, &l), 0);
    s_run(&e, s_json_done, &l);
    assert_int_equal(l.status, 200);
    assert_non_null(strstr(l.json, "{\"sessions\":[{\"id\":\"api\",\"name\":\"named\""));
    assert_int_equal(router_turns_session_get(e.t, "api", 0, s_on_json, &g), 0);
    s_run(&e, s_json_done, &g);
    assert_int_equal(g.status, 200);
    assert_non_null(strstr(g.json, "\"message_count\":2"));
    assert_non_null(strstr(g.json, "{\"role\":\"user\",\"content\":\"q\""));
    assert_non_null(strstr(g.json, "{\"role\":\"assistant\",\"content\":\"echo(h=0): q\""));
    assert_int_equal(router_turns_session_get(e.t, "nope", 0, s_on_json, &n), 0);
    s_run(&e, s_json_done, &n);
    assert_int_equal(n.status, 404);
    assert_int_equal(router_turns_session_get(e.t, "bad/id", 0, s_on_json, &n), -1);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* At least n turns wait in the broker's queue. */
typedef struct {
    router_broker_t *b;
    uint64_t n;
} queued_t;

static bool s_queued(void *ud)
{
    queued_t *q = ud;
    router_broker_stats_t bs;
    router_broker_stats(q->b, &bs);
    return bs.queued >= q->n;
}

/* An entry of `kind` whose frame is `line`, admitted to the inbox. */
static void s_admit_line(router_inbox_t *inbox, const char *kind, const char *line)
{
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    proto_uuid_v7_new(id);
    assert_int_equal(router_inbox_admit(inbox, id, nobody, kind, (const uint8_t *) line,
                                        strlen(line), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
}

/* No worker at all: a chat turn fails once its time is up while an inbox
 * entry's turn waits on, for as long as it takes a worker to come; a stop
 * before any worker took a turn ends it at once. */
static void test_no_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, false);
    frames_t a = {0}, c = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "alone", NULL, s_on_frame, &a);
    router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
    /* The entry's turn is queued first, so its time is up first too. */
    s_admit_line(e.inbox, "event", "for a later worker");
    router_turns_kick(e.t);
    queued_t q = {e.b, 1};
    s_run(&e, s_queued, &q);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "anyone?", 7, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR),
                           "no agent worker took the turn in time"));
    assert_int_equal(s_count(&c, ROUTER_TURN_FRAME_ERROR), 0);
    assert_int_equal(router_inbox_count(e.inbox), 1);
    /* Stopped while its history loads: it ends once loaded. */
    assert_int_equal(router_turns_submit(e.t, s, "still?", 6, &code), 0);
    router_turns_stop(e.t, s);
    router_turns_stop(e.t, s); /* asked already: nothing more */
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 1);
    /* Stopped while queued for a worker (behind the entry's turn). */
    assert_int_equal(router_turns_submit(e.t, s, "again?", 6, &code), 0);
    q.n = 2;
    s_run(&e, s_queued, &q);
    assert_int_equal(router_turns_steer(e.t, s, "never sent", 10, &code), 0); /* held */
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED),
                           "stopped before a worker took it"));
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.running, 1); /* the entry's */
    assert_int_equal(st.stopped, 2);
    /* A worker comes: the entry's turn runs after all, and it is done. */
    e.agent = s_agent_start();
    s_wait(&e, &c, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), "): for a later worker"));
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_stats(e.t, &st);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.done, 1);
    router_turns_detach(e.t, s);
    router_turns_detach(e.t, sc);
    s_teardown(&e);
}

/* Both turns were handed to a worker. */
static bool s_taken(void *ud)
{
    router_broker_stats_t bs;
    router_broker_stats(ud, &bs);
    return bs.requests >= 2 && bs.queued == 0;
}

/* A worker that takes a turn and goes silent: the turn times out; one that
 * never confirms a stop: the turn ends as stopped after the grace. */
static void test_silent_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, true);
    agent_t *second = s_agent_start();
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "deaf-a", NULL, s_on_frame, &a);
    router_turns_sub_t sb = router_turns_attach(e.t, "deaf-b", NULL, s_on_frame, &b);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "/deaf", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "the turn timed out"));
    assert_int_equal(router_turns_submit(e.t, sb, "/deaf", 5, &code), 0);
    /* Stop once a worker holds it (no longer queued in the broker). */
    s_run(&e, s_taken, e.b);
    router_turns_stop(e.t, sb);
    s_wait(&e, &b, ROUTER_TURN_FRAME_STOPPED, 1);
    assert_null(strstr(s_last(&b, ROUTER_TURN_FRAME_STOPPED), "before a worker took it"));
    router_turns_detach(e.t, sa);
    router_turns_detach(e.t, sb);
    s_agent_stop(&second);
    s_teardown(&e);
}

/* A turn the router times out is stopped at its worker too: the one
 * worker, held by a turn that waits for controls, is free again for the
 * next turn (it was held until the worker ended by itself). */
static void test_timed_out_turn_frees_its_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, true);
    frames_t a = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "held", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "/hold", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "the turn timed out"));
    assert_int_equal(router_turns_submit(e.t, sa, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h="));
    router_turns_detach(e.t, sa);
    s_teardown(&e);
}

/* Every event kind a worker may send becomes its frame (an out-of-order
 * one too); a malformed partial is ignored, a malformed final ends the
 * turn with an error; the session serves on. */
static void test_worker_events_and_garbage(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "ev", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/events", 7, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_int_equal(s_count(&a, ROUTER_TURN_FRAME_CHUNK_RESET), 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_OPERATOR_STATUS), "\"status\":\"busy\""));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_AGENT_EVENT),
                           "\"name\":\"mood\",\"data\":{\"calm\":true}"));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_THINKING), "\"content\":\"hmm\""));
    assert_int_equal(router_turns_submit(e.t, s, "/garbage", 8, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "final reply was malformed"));
    assert_int_equal(router_turns_submit(e.t, s, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "): after"));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* Router-run tools refuse what they cannot do with a result the model can
 * read (is_error), and the turn goes on. No trust store, no comms here. */
static void test_router_tool_refusals(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "tools", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/tools", 6, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    const char *done = s_last(&a, ROUTER_TURN_FRAME_DONE);
    assert_non_null(strstr(done, "c0:error:{\\\"error\\\":\\\"arguments must be a JSON object"));
    assert_non_null(strstr(done, "c1:error:{\\\"error\\\":\\\"peer must name a trusted peer"));
    assert_non_null(strstr(done, "c2:error:{\\\"error\\\":\\\"peer must name a trusted peer"));
    assert_non_null(strstr(done, "c3:error:{\\\"error\\\":\\\"in_reply_to must be"));
    assert_non_null(strstr(done, "c4:error:{\\\"error\\\":\\\"no request with that id"));
    assert_non_null(strstr(done, "c5:{\\\"peers\\\":[]}"));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* Turns that cannot be made: each of router_turns_new's allocations
 * failing in turn refuses with a reason and leaks nothing (LSan), or is
 * coped with; a state.db that cannot be opened refuses too. */
static void test_new_refusals(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    char berr[256] = "";
    snprintf(EP, sizeof EP, "inproc://turns-test-%d", ++s_case);
    router_broker_opts_t bo = {.loop = loop, .endpoint = EP};
    router_broker_t *b = router_broker_new(&bo, berr, sizeof berr);
    assert_non_null(b);
    /* Without a broker (or a loop) no turn could go anywhere: refused
     * with a reason, where the first submit used to dereference NULL. */
    router_turns_opts_t none = {.loop = loop};
    assert_null(router_turns_new(&none, berr, sizeof berr));
    assert_non_null(strstr(berr, "a loop and a broker are needed"));
    router_turns_opts_t to = {.loop = loop, .broker = b};
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        char err[256] = "";
        alloc_fail_arm(i);
        router_turns_t *t = router_turns_new(&to, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!t) {
            assert_true(failed);
            assert_true(err[0] != '\0');
            refused++;
            continue;
        }
        router_turns_destroy(&t);
        assert_null(t);
        if (!failed)
            break;
    }
    assert_true(refused > 0);
    char err[256] = "";
    to.db_path = "/dev/null/state.db"; /* not a folder, even to root */
    assert_null(router_turns_new(&to, err, sizeof err));
    assert_true(err[0] != '\0');
    router_broker_destroy(&b);
    router_loop_destroy(&loop);
}

/* The edges of the chat and sessions API: no callback, a subscriber gone
 * before its session opened, unknown subscribers, an empty steer, the
 * turn in flight and its submitter, deleting a session (not while in
 * use), and each call refused at once when memory is short or the store's
 * queue is full. */
static void test_api_edges(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    events_t ev = {0};
    router_turns_set_event_sink(e.t, s_on_event, &ev);
    frames_t a = {0}, gone = {0};
    const char *code = NULL;
    assert_int_equal(router_turns_attach(e.t, "edges", NULL, NULL, NULL), 0);
    router_turns_sub_t g = router_turns_attach(e.t, "edges", NULL, s_on_frame, &gone);
    assert_true(g > 0);
    router_turns_detach(e.t, g);
    router_turns_sub_t s = router_turns_attach(e.t, "edges", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    assert_int_equal(gone.n, 0); /* its open was answered first, to nobody */

    assert_int_equal(router_turns_submit(e.t, 999, "hi", 2, &code), -1);
    assert_string_equal(code, "AGENT_ERROR");
    router_turns_stop(e.t, 999);
    assert_null(router_turns_active(e.t, 999, NULL));
    assert_int_equal(router_turns_steer(e.t, s, " \t", 2, &code), -1);
    assert_string_equal(code, "EMPTY_CONTENT");

    assert_null(router_turns_active(e.t, s, NULL));
    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    router_turns_sub_t submitter = 0;
    const char *active = router_turns_active(e.t, s, &submitter);
    assert_non_null(active);
    assert_int_equal(submitter, s);
    char turn_id[PROTO_UUID_TEXT_CAP];
    snprintf(turn_id, sizeof turn_id, "%s", active);
    json_t d = {0};
    assert_int_equal(router_turns_session_delete(e.t, "edges", s_on_json, &d), -2);
    assert_int_equal(router_turns_session_delete(e.t, "bad id", s_on_json, &d), -1);
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), turn_id));
    assert_non_null(s_event_with(&ev, "agent_start ", "\"channel\":\"ws\""));
    assert_non_null(s_event_with(&ev, "agent_end ", "\"status\":\"stopped\""));
    router_turns_detach(e.t, s);

    /* Nobody uses it now: it goes, once. */
    assert_int_equal(router_turns_session_delete(e.t, "edges", s_on_json, &d), 0);
    s_run(&e, s_json_done, &d);
    assert_int_equal(d.status, 200);
    assert_non_null(strstr(d.json, "\"deleted\":true"));
    json_t d2 = {0};
    assert_int_equal(router_turns_session_delete(e.t, "edges", s_on_json, &d2), 0);
    s_run(&e, s_json_done, &d2);
    assert_int_equal(d2.status, 404);
    json_t l = {0};
    assert_int_equal(router_turns_sessions_list(e.t, 5000, s_on_json, &l), 0);
    s_run(&e, s_json_done, &l);
    assert_int_equal(l.status, 200);
    assert_non_null(strstr(l.json, "{\"sessions\":["));
    assert_null(router_turns_room(e.t, "anything"));
    assert_null(router_turns_room(e.t, NULL));

    json_t never = {0};
    alloc_fail_arm(0);
    assert_int_equal(router_turns_sessions_list(e.t, 10, s_on_json, &never), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    alloc_fail_arm(0);
    assert_int_equal(router_turns_session_get(e.t, "edges", 0, s_on_json, &never), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    alloc_fail_arm(0);
    assert_int_equal(router_turns_session_delete(e.t, "edges", s_on_json, &never), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    router_turns_store_refuse(e.t, true);
    assert_int_equal(router_turns_sessions_list(e.t, 10, s_on_json, &never), -1);
    assert_int_equal(router_turns_session_get(e.t, "edges", 0, s_on_json, &never), -1);
    assert_int_equal(router_turns_session_delete(e.t, "edges", s_on_json, &never), -1);
    assert_int_equal(router_turns_attach(e.t, "refused", NULL, s_on_frame, &gone), 0);
    router_turns_store_refuse(e.t, false);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.sessions, 0);
    assert_false(never.done);
    assert_int_equal(gone.n, 0);
    s_teardown(&e);
}

/* Attaching while memory runs short, each allocation failing in turn: the
 * attach is refused (0) and leaves no session behind, or it works. */
static void test_attach_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        frames_t a = {0};
        alloc_fail_arm(i);
        router_turns_sub_t s = router_turns_attach(e.t, "short", NULL, s_on_frame, &a);
        bool failed = alloc_fail_disarm() > 0;
        router_turns_stats_t st;
        router_turns_stats(e.t, &st);
        if (!s) {
            assert_true(failed);
            assert_int_equal(st.sessions, 0);
            refused++;
            continue;
        }
        s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
        router_turns_detach(e.t, s);
        if (!failed)
            break;
    }
    assert_true(refused >= 3); /* the session, the subscriber, the store's job */
    s_teardown(&e);
}

/* state.db has room again for "kept" (or not). */
static bool s_bytes_full(void *ud)
{
    return router_turns_room(ud, "kept") != NULL;
}

/* state.db's bounds: at sessions_max a new session is refused
 * (STORAGE_FULL) while the kept one opens; past bytes_max a message is
 * refused; router_turns_room tells ingress the same. */
static void test_store_bounds(void **state)
{
    (void) state;
    env_t e = {0};
    router_turns_opts_t to = {.store_bounds = {.sessions_max = 1, .bytes_max = 1}};
    s_setup_opts(&e, to, true);
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "kept", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    router_turns_sub_t sb = router_turns_attach(e.t, "new", NULL, s_on_frame, &b);
    s_wait(&e, &b, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&b, ROUTER_TURN_FRAME_ERROR), "\"code\":\"STORAGE_FULL\""));
    assert_int_equal(s_count(&b, ROUTER_TURN_FRAME_SESSION_START), 0);
    const char *why = router_turns_room(e.t, "other");
    assert_non_null(why);
    assert_non_null(strstr(why, "limits.sessions_max"));
    assert_null(router_turns_room(e.t, "kept"));
    /* Not open here now, "kept" is still no new session: it has room. */
    router_turns_detach(e.t, sa);
    assert_null(router_turns_room(e.t, "kept"));
    sa = router_turns_attach(e.t, "kept", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_SESSION_START), "\"resumed\":true"));
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "fits", 4, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    s_run(&e, s_bytes_full, e.t);
    assert_non_null(strstr(router_turns_room(e.t, "kept"), "limits.sessions_bytes_max"));
    assert_int_equal(router_turns_submit(e.t, sa, "no room", 7, &code), -1);
    assert_string_equal(code, "STORAGE_FULL");
    router_turns_detach(e.t, sa);
    router_turns_detach(e.t, sb);
    s_teardown(&e);
}

/* Steers sent before any worker took the turn are held (at most 16) and
 * reach the worker once one holds it, by the held controls' own retry:
 * this worker sends nothing until it is steered. */
static void test_controls_before_dispatch(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 0, false);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "early", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    queued_t q = {e.b, 1};
    s_run(&e, s_queued, &q);
    for (int i = 0; i < 16; i++) {
        char steer[8];
        int n = snprintf(steer, sizeof steer, "s%d", i);
        assert_int_equal(router_turns_steer(e.t, s, steer, (size_t) n, &code), 0);
    }
    assert_int_equal(router_turns_steer(e.t, s, "s16", 3, &code), -1);
    assert_string_equal(code, "NO_ACTIVE_TURN");
    e.agent = s_agent_start();
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "\"full_response\":\"steered: s0\""));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* The worker holds a turn (it left the broker's queue). */
static bool s_held(void *ud)
{
    router_broker_stats_t bs;
    router_broker_stats(ud, &bs);
    return bs.in_flight >= 1;
}

/* What a worker may send besides a plain answer: its own tool's call and
 * result (shown, and events that name the tool), a provider call (an event
 * only), an error FINAL with its code; another turn's partial is ignored;
 * a worker that leaves while it holds a turn ends it with an error. */
static void test_worker_replies(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    events_t ev = {0};
    router_turns_set_event_sink(e.t, s_on_event, &ev);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "replies", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/worker-tools", 13, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    const char *err = s_last(&a, ROUTER_TURN_FRAME_ERROR);
    assert_non_null(strstr(err, "\"code\":\"PROVIDER_ERROR\""));
    assert_non_null(strstr(err, "\"message\":\"upstream down\""));
    assert_true(atomic_load(&s_first_router_result_w2)); /* "peers\0x" was not run */
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_TOOL_RESULT), "\"is_error\":true"));
    assert_non_null(s_event_with(&ev, "tool_call_start ", "\"name\":\"search\""));
    assert_non_null(s_event_with(&ev, "tool_call ", "\"name\":\"search\""));
    assert_non_null(s_event_with(&ev, "llm_request ", "\"model\":\"m1\""));
    assert_non_null(s_event_with(&ev, "agent_end ", "\"status\":\"error\""));

    assert_int_equal(router_turns_submit(e.t, s, "/other", 6, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "\"full_response\":\"yours\""));
    for (int i = 0; i < a.n; i++)
        assert_null(strstr(a.json[i], "not yours"));
    /* What the worker counted goes with the turn's end. */
    const char *end = s_event_with(&ev, "agent_end ", "\"status\":\"done\"");
    assert_non_null(end);
    assert_non_null(strstr(end, "\"tool_iterations\":3,\"tokens_used\":42,\"cost_usd\":0.5"));

    assert_int_equal(router_turns_submit(e.t, s, "/deaf", 5, &code), 0);
    s_run(&e, s_held, e.b);
    s_agent_stop(&e.agent);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "died or left"));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* Router-run tools with comms and a trust store: a message and a request
 * go to the peer named (by name, PeerId or key) and the ack's outcome is
 * the result; a send with no route or not acked, a body or intent that is
 * no string, a name too long for any peer are errors the model reads;
 * peers lists the store. */
static void test_router_tools_send(void **state)
{
    (void) state;
    comms_t c = {.trust = router_trust_new()};
    uint8_t up[32], down[32], sk[64], pid[16];
    s_comms_peer(&c, "up", 0x21, up, sk);
    s_comms_peer(&c, "down", 0x22, down, sk);
    char up_id[PROTO_UUID_TEXT_CAP], down_key[PROTO_PUBKEY_TEXT_CAP], long_name[300];
    proto_peer_id(up, pid);
    proto_uuid_format(pid, up_id);
    assert_int_equal(proto_pubkey_format(down, down_key, sizeof down_key), 0);
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    char by_id[128], by_key[128], too_long[400];
    snprintf(by_id, sizeof by_id, "{\"peer\":\"%s\",\"intent\":\"ping\"}", up_id);
    snprintf(by_key, sizeof by_key, "{\"peer\":\"%s\",\"body\":\"x\"}", down_key);
    snprintf(too_long, sizeof too_long, "{\"peer\":\"%s\",\"body\":\"x\"}", long_name);
    const char *const calls[][2] = {
        {"send_message", "{\"peer\":\"up\",\"body\":\"hello\"}"}, /* send 0: acked */
        {"send_request", by_id},                                  /* send 1: acked */
        {"send_message", by_key},                                 /* send 2: no route */
        {"send_message", "{\"peer\":\"up\",\"body\":7}"},
        {"send_request", "{\"peer\":\"up\",\"intent\":[1]}"},
        {"send_message", too_long},
        {"peers", "{}"},
        {"send_message", "{\"peer\":\"down\",\"body\":\"late\"}"}, /* send 3: offline */
    };
    c.mode[2] = SEND_FAIL;
    c.mode[3] = SEND_OFFLINE;
    env_t e = {0};
    s_setup_comms(&e, &c);
    e.agent->calls = calls;
    e.agent->ncalls = sizeof calls / sizeof calls[0];
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "send", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/send", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    const char *done = s_last(&a, ROUTER_TURN_FRAME_DONE);
    assert_non_null(strstr(done, "c0:{\\\"outcome\\\":\\\"acked\\\""));
    assert_non_null(strstr(done, "c1:{\\\"outcome\\\":\\\"acked\\\""));
    assert_non_null(strstr(done, "c2:error:{\\\"outcome\\\":\\\"offline\\\",\\\"detail\\\":"
                                 "\\\"no route to the peer\\\"}"));
    assert_non_null(strstr(done, "c3:error:{\\\"error\\\":\\\"body must be a string\\\"}"));
    assert_non_null(strstr(done, "c4:error:{\\\"error\\\":\\\"intent must be a string\\\"}"));
    assert_non_null(strstr(done, "c5:error:{\\\"error\\\":\\\"peer must name a trusted peer"));
    assert_non_null(strstr(done, "c6:{\\n  \\\"peers\\\": ["));
    assert_non_null(strstr(done, "\\\"name\\\": \\\"down\\\""));
    assert_non_null(strstr(done, up_id)); /* the store's rows, with their PeerIds */
    assert_non_null(strstr(done, "c7:error:{\\\"outcome\\\":\\\"offline\\\""));
    assert_int_equal(c.n, 4);
    assert_memory_equal(c.to[0], up, 32);
    assert_int_equal(c.kind[0], PROTO_KIND_MESSAGE);
    assert_string_equal(c.text[0], "hello");
    assert_memory_equal(c.to[1], up, 32);
    assert_int_equal(c.kind[1], PROTO_KIND_REQUEST);
    assert_string_equal(c.text[1], "ping");
    assert_memory_equal(c.to[2], down, 32);
    assert_memory_equal(c.to[3], down, 32);
    assert_string_equal(c.text[3], "late");
    router_turns_detach(e.t, s);
    s_teardown(&e);
    router_trust_destroy(&c.trust);
}

/* A signed request envelope from (pk, sk), intent and params {"n":1},
 * admitted to the inbox; its id in id. */
static void s_admit_request(router_inbox_t *inbox, const uint8_t pk[32], const uint8_t sk[64],
                            const char *intent, uint8_t id[16])
{
    cbor_item_t *params = cbor_new_definite_map(1);
    assert_true(cbor_map_add(params, (struct cbor_pair) {
                                         .key = cbor_move(cbor_build_string("n")),
                                         .value = cbor_move(cbor_build_uint8(1))}));
    cbor_item_t *kind = proto_kind_request(intent, strlen(intent), &params, NULL,
                                           PROTO_HANDLING_QUEUE);
    assert_non_null(kind);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, pk, pk, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, sk), 0);
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_encode(env, &body, &len), 0);
    memcpy(id, proto_envelope_id(env), 16);
    uint64_t seq;
    assert_int_equal(router_inbox_admit(inbox, id, pk, "request", body, len, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    free(body);
    proto_envelope_destroy(&env);
}

/* A request envelope's turn ends with a signed response to its sender:
 * the turn's answer, status completed, sent again while there is no route
 * or no ack (each twice here, side by side) until one comes, and only then
 * is the entry done. A turn that answered its request itself
 * (send_response) gets no second response. */
static void test_request_response(void **state)
{
    (void) state;
    comms_t c = {.trust = router_trust_new()};
    uint8_t pk[32], sk[64], ping[16], pong[16], id[16];
    s_comms_peer(&c, "asker", 0x31, pk, sk);
    c.mode[0] = SEND_FAIL;    /* no route: tried again S_RETRY_MIN_MS later */
    c.mode[1] = SEND_OFFLINE; /* not acked: the same */
    env_t e = {0};
    s_setup_comms(&e, &c);
    frames_t f = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "comms", NULL, s_on_frame, &f);
    s_wait(&e, &f, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_admit_request(e.inbox, pk, sk, "ping", ping);
    s_admit_request(e.inbox, pk, sk, "pong", pong);
    router_turns_kick(e.t);
    s_run(&e, s_inbox_empty, e.inbox);
    assert_int_equal(c.n, 4);
    int pings = 0, pongs = 0;
    for (int i = 0; i < 4; i++) {
        assert_memory_equal(c.to[i], pk, 32);
        assert_int_equal(c.kind[i], PROTO_KIND_RESPONSE);
        assert_int_equal(c.status[i], PROTO_STATUS_COMPLETED);
        if (memcmp(c.in_reply_to[i], ping, 16) == 0) {
            assert_non_null(strstr(c.text[i], "echo(h=0): request ping: {\"n\":1}"));
            pings++;
        } else {
            assert_memory_equal(c.in_reply_to[i], pong, 16);
            assert_non_null(strstr(c.text[i], "): request pong: {\"n\":1}"));
            pongs++;
        }
    }
    assert_int_equal(pings, 2);
    assert_int_equal(pongs, 2);
    s_admit_request(e.inbox, pk, sk, "answer", id);
    router_turns_kick(e.t);
    s_run(&e, s_inbox_empty, e.inbox);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.kind[4], PROTO_KIND_RESPONSE);
    assert_memory_equal(c.in_reply_to[4], id, 16);
    assert_int_equal(c.status[4], PROTO_STATUS_COMPLETED);
    s_wait(&e, &f, ROUTER_TURN_FRAME_DONE, 3);
    assert_non_null(strstr(s_last(&f, ROUTER_TURN_FRAME_DONE), "c0:{\\\"outcome\\\":\\\"acked\\\""));
    router_turns_detach(e.t, s);
    s_teardown(&e);
    router_trust_destroy(&c.trust);
}

typedef struct {
    comms_t *c;
    int n;
} sends_t;

/* The fake comms was asked for n sends. */
static bool s_sent(void *ud)
{
    sends_t *w = ud;
    return w->c->n >= w->n;
}

/* Turns destroyed with work in hand: a request's response not yet acked,
 * a turn whose router tool's send was never answered, another waiting for
 * a worker with a steer held, a message waiting behind it and subscribers
 * still attached. All are let go (LSan checks nothing leaks); the request's
 * entry is still leased, for the next run to answer. */
static void test_teardown_with_work_held(void **state)
{
    (void) state;
    comms_t c = {.trust = router_trust_new()};
    uint8_t up[32], sk[64], id[16];
    s_comms_peer(&c, "up", 0x41, up, sk);
    c.mode[0] = SEND_SILENT; /* the response */
    c.mode[1] = SEND_SILENT; /* the tool's message */
    const char *const calls[][2] = {{"send_message", "{\"peer\":\"up\",\"body\":\"hello?\"}"}};
    env_t e = {0};
    s_setup_comms(&e, &c);
    e.agent->calls = calls;
    e.agent->ncalls = 1;
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "held-a", NULL, s_on_frame, &a);
    router_turns_sub_t sb = router_turns_attach(e.t, "held-b", NULL, s_on_frame, &b);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_admit_request(e.inbox, up, sk, "ping", id);
    router_turns_kick(e.t);
    sends_t w = {&c, 1};
    s_run(&e, s_sent, &w);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "/send", 5, &code), 0);
    w.n = 2;
    s_run(&e, s_sent, &w);
    /* The one worker waits for the tool's result: the next turn queues. */
    assert_int_equal(router_turns_submit(e.t, sb, "/hold", 5, &code), 0);
    queued_t q = {e.b, 1};
    s_run(&e, s_queued, &q);
    assert_int_equal(router_turns_steer(e.t, sb, "later", 5, &code), 0);
    assert_int_equal(router_turns_submit(e.t, sb, "waits", 5, &code), 0);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.running, 2);
    assert_int_equal(st.waiting, 1);
    assert_int_equal(router_inbox_count(e.inbox), 1);
    s_teardown(&e);
    router_trust_destroy(&c.trust);
}

/* The inbox is empty and no turn or session is left. */
static bool s_entry_gone(void *ud)
{
    env_t *e = ud;
    router_turns_stats_t st;
    router_turns_stats(e->t, &st);
    return router_inbox_count(e->inbox) == 0 && st.running == 0 && st.sessions == 0;
}

/* Inbox entries that can never be turns (a webhook with no message, a
 * frame that is no envelope) are dropped and leave the inbox. An entry for
 * a session not open here, taken with each allocation failing in turn, is
 * given back and tried again, or its turn ends: never lost. */
static void test_inbox_entries_dropped(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    s_admit_line(e.inbox, "webhook", "{\"session_id\":\"x\"}");
    s_admit_line(e.inbox, "message", "not an envelope");
    router_turns_kick(e.t);
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.running + st.done + st.errors + st.sessions, 0);
    unsigned failed_runs = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        char line[96];
        snprintf(line, sizeof line, "{\"session_id\":\"fresh-%ld\",\"event\":{\"i\":%ld}}", i, i);
        s_admit_line(e.inbox, "event", line);
        router_turns_stats_t before;
        router_turns_stats(e.t, &before);
        alloc_fail_arm(i);
        router_turns_kick(e.t);
        bool failed = alloc_fail_disarm() > 0;
        s_run(&e, s_entry_gone, &e);
        router_turns_stats(e.t, &st);
        assert_int_equal(st.done + st.errors, before.done + before.errors + 1);
        if (!failed) {
            assert_int_equal(st.done, before.done + 1);
            break;
        }
        failed_runs++;
    }
    assert_true(failed_runs > 0);
    s_teardown(&e);
}

#define CROWD 70 /* more subscribers than one batch of deliveries (64) */

/* How many DONE frames a subscriber of the crowd got. */
static void s_on_crowd_frame(const router_turn_frame_t *f, void *ud)
{
    int *n = ud;
    n[f->type == ROUTER_TURN_FRAME_DONE]++;
}

typedef struct {
    int (*got)[2];
    int type; /* 0: any frame (session_start), 1: DONE */
} crowd_t;

static bool s_crowd_has(void *ud)
{
    crowd_t *w = ud;
    for (int i = 0; i < CROWD; i++)
        if (w->got[i][w->type] == 0)
            return false;
    return true;
}

/* Many sockets on one session: every one of them gets each frame of its
 * turns, past the first batch of 64 too. */
static void test_crowded_session(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    int got[CROWD][2] = {{0}};
    router_turns_sub_t subs[CROWD];
    for (int i = 0; i < CROWD; i++) {
        subs[i] = router_turns_attach(e.t, "crowd", NULL, s_on_crowd_frame, got[i]);
        assert_true(subs[i] > 0);
    }
    crowd_t w = {got, 0};
    s_run(&e, s_crowd_has, &w);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, subs[CROWD - 1], "all of you", 10, &code), 0);
    w.type = 1;
    s_run(&e, s_crowd_has, &w);
    for (int i = 0; i < CROWD; i++) {
        assert_int_equal(got[i][1], 1);
        router_turns_detach(e.t, subs[i]);
    }
    s_teardown(&e);
}

/* A crowd's newest subscriber, whose callback detaches another of the
 * session's subscribers at its DONE (turns.c allows a callback to detach
 * any). */
typedef struct {
    int got[2];
    router_turns_t *t;
    router_turns_sub_t victim;
} crowd_killer_t;

static void s_on_crowd_killer(const router_turn_frame_t *f, void *ud)
{
    crowd_killer_t *k = ud;
    s_on_crowd_frame(f, k->got);
    if (f->type == ROUTER_TURN_FRAME_DONE && k->victim) {
        router_turns_detach(k->t, k->victim);
        k->victim = 0;
    }
}

/* Many sockets on one session, and the first to get the DONE detaches the
 * one where the first batch of 64 deliveries ends: every other socket gets
 * the frame once, the detached one not at all. Before, s_deliver went on
 * from the freed subscriber's list node (a use after free under ASan). */
static void test_crowd_detached_mid_delivery(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    int got[CROWD][2] = {{0}};
    crowd_killer_t killer = {.t = e.t};
    router_turns_sub_t subs[CROWD];
    for (int i = 0; i < CROWD; i++) {
        bool last = i == CROWD - 1;
        subs[i] = router_turns_attach(e.t, "crowd", NULL,
                                      last ? s_on_crowd_killer : s_on_crowd_frame,
                                      last ? (void *) &killer : (void *) got[i]);
        assert_true(subs[i] > 0);
    }
    /* Newest first: the 64 newest are the first batch, the 65th comes next. */
    int victim = CROWD - 1 - 64;
    killer.victim = subs[victim];
    crowd_t w = {got, 0};
    got[CROWD - 1][0] = 1; /* the killer counts in its own */
    s_run(&e, s_crowd_has, &w);
    assert_true(killer.got[0] > 0);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, subs[CROWD - 1], "all of you", 10, &code), 0);
    got[victim][1] = 1; /* waits for the others */
    got[CROWD - 1][1] = 1;
    w.type = 1;
    s_run(&e, s_crowd_has, &w);
    assert_int_equal(killer.got[1], 1);
    assert_int_equal(killer.victim, 0);
    for (int i = 0; i < CROWD; i++) {
        if (i == victim || i == CROWD - 1)
            continue;
        assert_int_equal(got[i][1], 1);
        router_turns_detach(e.t, subs[i]);
    }
    assert_int_equal(got[victim][1] - 1, 0); /* nothing after it was detached */
    router_turns_detach(e.t, subs[CROWD - 1]);
    s_teardown(&e);
}

/* Whether the log said an inbox turn waits for the worker queue. */
static atomic_int s_resend_said;

static void s_tap_resend(router_log_level_t level, const char *module, const char *line,
                         size_t len, void *ud)
{
    (void) level, (void) module, (void) ud;
    if (memmem(line, len, "cannot take it now", 18))
        atomic_store(&s_resend_said, 1);
}

static bool s_resend_logged(void *ud)
{
    (void) ud;
    return atomic_load(&s_resend_said) != 0;
}

/* An inbox entry whose turn the worker queue cannot take (full: a chat
 * turn no worker took holds its one place): the turn waits and is sent
 * again, not ended; once the queue has room it runs, with the history
 * before its message (not its own message twice), and the entry leaves the
 * inbox done. Before, the turn ended AGENT_ERROR at once and the acked
 * entry was deleted without reaching the agent. */
static void test_inbox_waits_for_the_worker_queue(void **state)
{
    (void) state;
    env_t e = {0};
    char err[256] = "";
    snprintf(EP, sizeof EP, "inproc://turns-test-%d", ++s_case);
    e.loop = router_loop_new(NULL);
    assert_non_null(e.loop);
    router_broker_opts_t bo = {.loop = e.loop, .endpoint = EP, .heartbeat_ms = 100,
                               .liveness = 100, .queue_max = 1};
    e.b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(e.b);
    router_inbox_opts_t io = {.capacity = 16};
    e.inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(e.inbox);
    router_turns_opts_t to = {.loop = e.loop, .broker = e.b, .inbox = e.inbox,
                              .comms_session = "comms"};
    e.t = router_turns_new(&to, err, sizeof err);
    assert_non_null(e.t);
    frames_t b = {0}, c = {0};
    router_turns_sub_t sb = router_turns_attach(e.t, "busy", NULL, s_on_frame, &b);
    router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sb, "first", 5, &code), 0);
    queued_t q = {e.b, 1};
    s_run(&e, s_queued, &q);

    atomic_store(&s_resend_said, 0);
    router_log_set_tap(s_tap_resend, NULL);
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    proto_uuid_v7_new(id);
    const char *line = "disk almost full";
    assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                        strlen(line), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    router_turns_kick(e.t);
    s_run(&e, s_resend_logged, NULL);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.errors, 0);
    assert_int_equal(s_count(&c, ROUTER_TURN_FRAME_ERROR), 0);
    assert_int_equal(router_inbox_count(e.inbox), 1);

    router_turns_stop(e.t, sb); /* not taken by a worker: stopped, its place free */
    assert_int_equal(s_count(&b, ROUTER_TURN_FRAME_STOPPED), 1);
    e.agent = s_agent_start();
    s_wait(&e, &c, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), "echo(h=0): disk almost full"));
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_stats(e.t, &st);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.done, 1);
    assert_int_equal(st.stopped, 1);
    router_log_set_tap(NULL, NULL);
    router_turns_detach(e.t, sb);
    router_turns_detach(e.t, sc);
    s_teardown(&e);
}

/* A history too large for one turn request (PROTO_WORKER_BODY_MAX) loses
 * its oldest half until the request fits: the turn still runs. */
static void test_long_history(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "long", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    size_t n = 600u * 1024u; /* two of them do not fit in one request */
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'x', n);
    const char *code = NULL;
    big[0] = '1';
    assert_int_equal(router_turns_submit(e.t, s, big, n, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h=0): 1xxx"));
    big[0] = '2';
    assert_int_equal(router_turns_submit(e.t, s, big, n, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    /* The first message went; the answer to it stayed. */
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h=1): 2xxx"));
    free(big);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* ------------------------------------------------------------ out of memory */

typedef struct {
    router_turns_t *t;
    uint64_t ended;  /* turns ended (done, stopped, errors) to wait for */
    frames_t *fr;    /* or an error frame to the submitter (no turn began) */
    int errors;      /* error frames it had before */
    router_loop_t *loop;     /* with stop_at: */
    uint64_t stop_at;        /* loop ms after which a turn hit by a failure is stopped */
    router_turns_sub_t sub;  /* its submitter */
} ended_t;

static bool s_ended(void *ud)
{
    ended_t *w = ud;
    if (w->stop_at && router_loop_now_ms(w->loop) >= w->stop_at && alloc_fail_failed() > 0) {
        w->stop_at = 0;
        router_turns_stop(w->t, w->sub);
    }
    router_turns_stats_t st;
    router_turns_stats(w->t, &st);
    return st.running == 0 && st.waiting == 0 &&
           (st.done + st.stopped + st.errors >= w->ended ||
            s_count(w->fr, ROUTER_TURN_FRAME_ERROR) > w->errors);
}

/* A turn calling the router's tools, submitted and run with the loop
 * thread's (here, this thread's) 1st, 2nd, … allocation failing in turn
 * until a run fails none: the message is refused with a code, or its turn
 * ends (done, or an error) — never lost in between — and the session then
 * runs the next message as usual. A turn whose worker request was lost
 * ends by the turn timeout (2 s here), which is the mechanism under test,
 * not a bound on speed. */
static void test_turn_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned refused = 0, errors = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        frames_t a = {0};
        char name[32];
        snprintf(name, sizeof name, "oom-%ld", i);
        router_turns_sub_t s = router_turns_attach(e.t, name, NULL, s_on_frame, &a);
        s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
        router_turns_stats_t before, st, after;
        router_turns_stats(e.t, &before);
        const char *code = NULL;
        alloc_fail_arm(i);
        int rc = router_turns_submit(e.t, s, "/tools", 6, &code);
        if (rc == 0) {
            /* A tool result the router could not send leaves the worker
             * waiting until the turn's timeout; once a failure has happened,
             * stop the turn instead of waiting that long (a turn that would
             * have ended anyway may end stopped: either outcome passes). */
            ended_t w = {e.t, before.done + before.stopped + before.errors + 1, &a, 0,
                         e.loop, router_loop_now_ms(e.loop) + 300, s};
            s_run(&e, s_ended, &w);
        }
        bool failed = alloc_fail_disarm() > 0;
        router_turns_stats(e.t, &st);
        if (!failed) {
            assert_int_equal(rc, 0);
            assert_int_equal(st.done, before.done + 1);
            assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "c5:{\\\"peers\\\":[]}"));
        } else if (rc != 0) {
            assert_non_null(code);
            refused++;
        } else if (st.done == before.done) {
            assert_true(st.errors > before.errors || st.stopped > before.stopped ||
                        s_count(&a, ROUTER_TURN_FRAME_ERROR) > 0);
            errors++;
        }
        /* The session serves the next message. */
        assert_int_equal(router_turns_submit(e.t, s, "next", 4, &code), 0);
        ended_t w = {e.t, st.done + st.stopped + st.errors + 1, &a, FRAMES_MAX, NULL, 0, 0};
        s_run(&e, s_ended, &w);
        router_turns_stats(e.t, &after);
        assert_int_equal(after.done, st.done + 1);
        router_turns_detach(e.t, s);
        if (!failed)
            break;
    }
    s_teardown(&e);
    assert_true(refused > 0);
    print_message("%u allocations refused the message, %u ended its turn otherwise than done\n",
                  refused, errors);
}

typedef struct {
    frames_t *fr;
    router_inbox_t *inbox;
} ended_entry_t;

/* The entry's turn ended (with an answer or an error) and it is gone. */
static bool s_entry_ended(void *ud)
{
    ended_entry_t *w = ud;
    return s_count(w->fr, ROUTER_TURN_FRAME_DONE) + s_count(w->fr, ROUTER_TURN_FRAME_ERROR) > 0 &&
           router_inbox_count(w->inbox) == 0;
}

/* An inbox entry taken while memory runs short is never dropped: each
 * allocation of taking it and starting its turn fails in turn, and every
 * time the entry still becomes a turn that ends (given back to the inbox,
 * or left first in its session's queue, and tried again), and nothing is
 * left in the inbox. Before, three of those failures deleted the entry
 * with only a log line. */
static void test_inbox_entry_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned failed_runs = 0, errors = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        frames_t c = {0};
        router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
        s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
        uint8_t id[16], nobody[32] = {0};
        uint64_t seq;
        proto_uuid_v7_new(id);
        char line[64];
        int n = snprintf(line, sizeof line, "short of memory %ld", i);
        assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                            (size_t) n, 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
        alloc_fail_arm(i);
        router_turns_kick(e.t);
        bool failed = alloc_fail_disarm() > 0;
        ended_entry_t w = {&c, e.inbox};
        s_run(&e, s_entry_ended, &w);
        if (s_count(&c, ROUTER_TURN_FRAME_DONE) > 0)
            assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), line));
        else
            errors++;
        router_turns_detach(e.t, sc);
        failed_runs += failed;
        if (!failed)
            break;
    }
    s_teardown(&e);
    assert_true(failed_runs > 0);
    print_message("%u allocations failed, %u of them ended the turn with an error\n", failed_runs,
                  errors);
}

/* What a sink was told, for test_frames_and_events_without_memory: each
 * event's type, or "lost:<type>" when the turns module could not make it. */
typedef struct {
    int start, end, lost_start, lost_end, lost_other;
} tally_t;

static void s_tally_event(const char *type, const char *json, void *ud)
{
    tally_t *t = ud;
    bool start = !strcmp(type, "agent_start"), end = !strcmp(type, "agent_end");
    if (json) {
        t->start += start;
        t->end += end;
    } else {
        t->lost_start += start;
        t->lost_end += end;
        t->lost_other += !start && !end;
    }
}

/* A turn's frames and events made while memory runs short, each
 * allocation of the loop thread failing in turn: the submitter always
 * gets the frame that ends its message (done, stopped or error, or the
 * error that refused it), and every event is delivered or reported lost
 * to the sink (json NULL), so a turn that started has an end. Before, a
 * final frame that could not be made was not sent at all (the client
 * waited for ever) and an event that could not be made vanished. */
static void test_frames_and_events_without_memory(void **state)
{
    (void) state;
    static const char *const contents[] = {"/events", "/worker-tools"};
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned failed_runs = 0, lost = 0;
    for (size_t c = 0; c < sizeof contents / sizeof contents[0]; c++) {
        for (long i = 0;; i++) {
            assert_true(i < ALLOC_FAIL_RUNS_MAX);
            frames_t a = {0};
            tally_t ev = {0};
            router_turns_set_event_sink(e.t, s_tally_event, &ev);
            router_turns_sub_t s = router_turns_attach(e.t, "short", NULL, s_on_frame, &a);
            s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
            router_turns_stats_t before;
            router_turns_stats(e.t, &before);
            const char *code = NULL;
            alloc_fail_arm(i);
            int rc = router_turns_submit(e.t, s, contents[c], strlen(contents[c]), &code);
            if (rc == 0) {
                ended_t w = {e.t, before.done + before.stopped + before.errors + 1, &a, 0,
                             NULL, 0, 0};
                s_run(&e, s_ended, &w);
            }
            bool failed = alloc_fail_disarm() > 0;
            if (rc == 0) {
                int finals = s_count(&a, ROUTER_TURN_FRAME_DONE) +
                             s_count(&a, ROUTER_TURN_FRAME_STOPPED) +
                             s_count(&a, ROUTER_TURN_FRAME_ERROR);
                if (finals == 0)
                    fail_msg("%s, allocation %ld failing: the turn ended without a final frame",
                             contents[c], i);
            }
            if (ev.start + ev.lost_start != ev.end + ev.lost_end)
                fail_msg("%s, allocation %ld failing: %d agent_start (%d lost), %d agent_end "
                         "(%d lost)", contents[c], i, ev.start, ev.lost_start, ev.end,
                         ev.lost_end);
            lost += (unsigned) (ev.lost_start + ev.lost_end + ev.lost_other);
            router_turns_detach(e.t, s);
            router_turns_set_event_sink(e.t, NULL, NULL);
            failed_runs += failed;
            if (!failed) {
                assert_int_equal(rc, 0);
                break;
            }
        }
    }
    s_teardown(&e);
    assert_true(lost > 0);
    print_message("%u allocations failed, %u events reported lost\n", failed_runs, lost);
}

/* A stop whose frames cannot be made: with no memory for its `stopped`
 * frame, every subscriber still gets one (built without allocating, with
 * the turn's id); with none for its agent_end event, the sink is told it
 * was lost. Before, both went nowhere: a client waited for ever on a turn
 * that had ended, and /api/events never said the turn was over. */
static void test_final_frame_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 0, false); /* no worker: the turn waits in the broker */
    tally_t ev = {0};
    router_turns_set_event_sink(e.t, s_tally_event, &ev);
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "lost", NULL, s_on_frame, &a);
    router_turns_sub_t sb = router_turns_attach(e.t, "lost", NULL, s_on_frame, &b);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    for (long skip = 0; skip < 2; skip++) {
        assert_int_equal(router_turns_submit(e.t, sa, "anyone?", 7, &code), 0);
        queued_t q = {e.b, 1};
        s_run(&e, s_queued, &q);
        char turn_id[PROTO_UUID_TEXT_CAP];
        snprintf(turn_id, sizeof turn_id, "%s", router_turns_active(e.t, sa, NULL));
        alloc_fail_arm(skip); /* 0: the stopped frame; 1: the agent_end event */
        router_turns_stop(e.t, sb);
        assert_int_equal(alloc_fail_disarm(), 1);
        assert_null(router_turns_active(e.t, sa, NULL));
        assert_int_equal(s_count(&a, ROUTER_TURN_FRAME_STOPPED), skip + 1);
        assert_int_equal(s_count(&b, ROUTER_TURN_FRAME_STOPPED), skip + 1);
        assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), turn_id));
        assert_non_null(strstr(s_last(&b, ROUTER_TURN_FRAME_STOPPED), turn_id));
    }
    assert_int_equal(ev.start, 2);
    assert_int_equal(ev.end, 1);
    assert_int_equal(ev.lost_end, 1);
    router_turns_detach(e.t, sa);
    router_turns_detach(e.t, sb);
    s_teardown(&e);
}

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
    fail_msg("a filler timer fired");
}

/* Takes every free timer slot of the loop but `spare`; returns how many. */
static size_t s_fill_timers(router_loop_t *loop, uint64_t *ids, size_t cap, size_t spare)
{
    size_t n = 0;
    while (n < cap && (ids[n] = router_loop_timer_add(loop, 3600000, s_never, NULL)) != 0)
        n++;
    assert_true(n < cap);
    for (size_t i = 0; i < spare; i++)
        assert_int_equal(router_loop_timer_cancel(loop, ids[--n]), 0);
    return n;
}

static void s_free_timers(router_loop_t *loop, uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_int_equal(router_loop_timer_cancel(loop, ids[i]), 0);
}

/* The loop has no timer slot left (its max_timers pending): a turn that
 * cannot have its timeout is not sent (AGENT_ERROR at once), and a
 * message that cannot have its lock timeout is refused. Before, the turn
 * went out with no timeout, and with no worker to take it the session and
 * its client waited for ever; the message waited past its lock timeout. */
static void test_no_timer_slot(void **state)
{
    (void) state;
    env_t e = {0};
    char err[256] = "";
    snprintf(EP, sizeof EP, "inproc://turns-test-%d", ++s_case);
    router_loop_opts_t lo = {.max_timers = 64};
    e.loop = router_loop_new(&lo);
    assert_non_null(e.loop);
    router_broker_opts_t bo = {.loop = e.loop, .endpoint = EP, .heartbeat_ms = 100,
                               .liveness = 100};
    e.b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(e.b);
    router_inbox_opts_t io = {.capacity = 16};
    e.inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(e.inbox);
    router_turns_opts_t to = {.loop = e.loop, .broker = e.b, .inbox = e.inbox,
                              .comms_session = "comms", .lock_timeout_s = 1};
    e.t = router_turns_new(&to, err, sizeof err);
    assert_non_null(e.t);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "timers", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    uint64_t fill[128];
    const char *code = NULL;

    /* One slot: the test's own wait takes it, the turn finds none. */
    size_t n = s_fill_timers(e.loop, fill, 128, 1);
    assert_int_equal(router_turns_submit(e.t, s, "no timeout", 10, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "\"code\":\"AGENT_ERROR\""));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "\"turn_id\""));
    assert_null(router_turns_active(e.t, s, NULL));
    s_free_timers(e.loop, fill, n);

    /* A turn in flight (no worker takes it), then no slot for the lock
     * timeout of the message behind it. */
    assert_int_equal(router_turns_submit(e.t, s, "held", 4, &code), 0);
    queued_t q = {e.b, 1};
    s_run(&e, s_queued, &q);
    n = s_fill_timers(e.loop, fill, 128, 0);
    assert_int_equal(router_turns_submit(e.t, s, "behind", 6, &code), -1);
    assert_string_equal(code, "AGENT_ERROR");
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 0);
    s_free_timers(e.loop, fill, n);
    router_turns_stop(e.t, s);
    assert_null(router_turns_active(e.t, s, NULL));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* A sink that makes the allocation right after the turn's agent_end fail:
 * in s_turn_end, the one of the response its request entry is owed. */
static void s_fail_after_end(const char *type, const char *json, void *ud)
{
    (void) json;
    int *armed = ud;
    if (!*armed && !strcmp(type, "agent_end")) {
        *armed = 1;
        alloc_fail_arm(0);
    }
}

/* A request entry whose turn ends with no memory for its response: the
 * response is sent all the same, a poll later, and the entry leaves the
 * inbox. Before, the entry stayed leased and its sender unanswered until
 * the daemon restarted. */
static void test_response_without_memory(void **state)
{
    (void) state;
    comms_t c = {.trust = router_trust_new()};
    uint8_t pk[32], sk[64], id[16];
    s_comms_peer(&c, "asker", 0x32, pk, sk);
    env_t e = {0};
    s_setup_comms(&e, &c);
    int armed = 0;
    router_turns_set_event_sink(e.t, s_fail_after_end, &armed);
    s_admit_request(e.inbox, pk, sk, "short", id);
    router_turns_kick(e.t);
    s_run(&e, s_inbox_empty, e.inbox);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(armed, 1);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.kind[0], PROTO_KIND_RESPONSE);
    assert_memory_equal(c.in_reply_to[0], id, 16);
    assert_int_equal(c.status[0], PROTO_STATUS_COMPLETED);
    assert_non_null(strstr(c.text[0], "request short"));
    s_teardown(&e);
    router_trust_destroy(&c.trust);
}

/* A subscriber that arms the loop thread's k-th allocation failing at the
 * turn's chunk (the fake agent's last partial before its FINAL). */
typedef struct {
    long k;
    bool started, armed;
} arm_at_chunk_t;

static bool s_arm_started(void *ud)
{
    return ((arm_at_chunk_t *) ud)->started;
}

static void s_arm_at_chunk(const router_turn_frame_t *f, void *ud)
{
    arm_at_chunk_t *a = ud;
    a->started = true;
    if (!a->armed && f->type == ROUTER_TURN_FRAME_CHUNK) {
        a->armed = true;
        alloc_fail_arm(a->k);
    }
}

/* The fake comms, for a test whose allocation failures stop at the first
 * send (the fake's own allocations are the test's, not the code's under
 * test): how many failed before it. */
static unsigned s_failed_before_send;

static int s_comms_send_disarming(void *ud, const uint8_t to[32], cbor_item_t **kind,
                                  uint8_t id_out[16], router_send_fn *cb, void *cb_ud,
                                  char *detail, size_t detailcap)
{
    s_failed_before_send += alloc_fail_disarm();
    return s_comms_send(ud, to, kind, id_out, cb, cb_ud, detail, detailcap);
}

/* A request entry's turn ending while memory runs short, the k-th
 * allocation after its last partial failing, for each k in turn (up to
 * the response's send): its sender gets one response, `completed` with the turn's answer, or
 * `failed` saying why. Before, a done turn whose answer found no memory to
 * be kept was answered `completed` with "the turn ended: done" for a
 * result. */
static void test_request_answer_without_memory(void **state)
{
    (void) state;
    comms_t c = {.trust = router_trust_new()};
    uint8_t pk[32], sk[64], id[16];
    s_comms_peer(&c, "asker", 0x33, pk, sk);
    env_t e = {0};
    router_turns_opts_t to = {.send = s_comms_send_disarming, .send_ud = &c,
                              .trust = s_comms_trust, .trust_ud = &c};
    s_setup_opts(&e, to, true);
    c.loop = e.loop;
    unsigned failed_runs = 0, failed_responses = 0;
    for (long k = 0;; k++) {
        assert_true(k < ALLOC_FAIL_RUNS_MAX);
        arm_at_chunk_t a = {.k = k};
        router_turns_sub_t s = router_turns_attach(e.t, "comms", NULL, s_arm_at_chunk, &a);
        assert_true(s > 0);
        s_run(&e, s_arm_started, &a); /* its session_start: it gets the turn's frames */
        c.n = 0;
        s_failed_before_send = 0;
        char intent[32];
        snprintf(intent, sizeof intent, "short %ld", k);
        s_admit_request(e.inbox, pk, sk, intent, id);
        router_turns_kick(e.t);
        s_run(&e, s_inbox_empty, e.inbox);
        bool failed = alloc_fail_disarm() + s_failed_before_send > 0;
        assert_true(a.armed);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.kind[0], PROTO_KIND_RESPONSE);
        assert_memory_equal(c.in_reply_to[0], id, 16);
        if (c.status[0] == PROTO_STATUS_COMPLETED) {
            if (!strstr(c.text[0], intent))
                fail_msg("allocation %ld after the chunk failing: completed with \"%s\"", k,
                         c.text[0]);
        } else {
            assert_int_equal(c.status[0], PROTO_STATUS_FAILED);
            failed_responses++;
        }
        router_turns_detach(e.t, s);
        failed_runs += failed;
        if (!failed)
            break;
    }
    s_teardown(&e);
    router_trust_destroy(&c.trust);
    assert_true(failed_runs > 0);
    print_message("%u allocations failed, %u responses said the turn failed\n", failed_runs,
                  failed_responses);
}

/* Turns destroyed while session API reads, a deletion and a list are
 * still with the store: nothing is answered (the callers are gone too)
 * and nothing leaks (LSan). Before, each request's wrapper leaked. */
static void test_teardown_with_reads_pending(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 0, false);
    json_t never = {0};
    assert_int_equal(router_turns_sessions_list(e.t, 10, s_on_json, &never), 0);
    assert_int_equal(router_turns_session_get(e.t, "gone", 0, s_on_json, &never), 0);
    assert_int_equal(router_turns_session_delete(e.t, "gone", s_on_json, &never), 0);
    s_teardown(&e);
    assert_false(never.done);
}

/* Frames, arming the k-th allocation after the turn's first frame. */
typedef struct {
    frames_t fr;
    long k;
    bool armed;
} arming_t;

static void s_arm_after_first(const router_turn_frame_t *f, void *ud)
{
    arming_t *a = ud;
    s_on_frame(f, &a->fr);
    if (!a->armed && f->type == ROUTER_TURN_FRAME_CHUNK_RESET) {
        a->armed = true;
        alloc_fail_arm(a->k);
    }
}

/* The worker's partials of "/events" read while memory runs short, the
 * k-th allocation after its first frame failing, for each k in turn:
 * every frame reaches the subscriber, or an error says one was lost (and
 * the turn is stopped, since a lost partial may be a router tool's call
 * the worker then waits on). Before, a partial that found no memory to be
 * decoded was dropped with a log line only. */
static void test_partials_without_memory(void **state)
{
    (void) state;
    static const router_turn_frame_type_t all[] = {
        ROUTER_TURN_FRAME_CHUNK_RESET, ROUTER_TURN_FRAME_OPERATOR_STATUS,
        ROUTER_TURN_FRAME_AGENT_EVENT, ROUTER_TURN_FRAME_THINKING};
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned told = 0;
    for (long k = 0;; k++) {
        assert_true(k < ALLOC_FAIL_RUNS_MAX);
        arming_t a = {.k = k};
        router_turns_sub_t s = router_turns_attach(e.t, "partials", NULL, s_arm_after_first, &a);
        s_wait(&e, &a.fr, ROUTER_TURN_FRAME_SESSION_START, 1);
        router_turns_stats_t before;
        router_turns_stats(e.t, &before);
        const char *code = NULL;
        assert_int_equal(router_turns_submit(e.t, s, "/events", 7, &code), 0);
        ended_t w = {e.t, before.done + before.stopped + before.errors + 1, &a.fr, 0, NULL, 0, 0};
        s_run(&e, s_ended, &w);
        bool failed = alloc_fail_disarm() > 0;
        assert_true(a.armed);
        bool lost = false;
        for (int i = 0; i < a.fr.n; i++)
            lost = lost || (a.fr.type[i] == ROUTER_TURN_FRAME_ERROR && strstr(a.fr.json[i], "lost"));
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (s_count(&a.fr, all[i]) == 0 && !lost)
                fail_msg("allocation %ld after the first frame failing: frame %d of the turn "
                         "missing, and no error says so", k, (int) all[i]);
        told += lost;
        router_turns_detach(e.t, s);
        if (!failed)
            break;
    }
    s_teardown(&e);
    print_message("%u runs told a frame was lost\n", told);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_round_trip),
        cmocka_unit_test(test_busy_steer_stop),
        cmocka_unit_test(test_withdraw),
        cmocka_unit_test(test_inbox_turns),
        cmocka_unit_test(test_backlog_that_cannot_start),
        cmocka_unit_test(test_inbox_waits_for_the_store),
        cmocka_unit_test(test_inbox_waits_for_the_worker_queue),
        cmocka_unit_test(test_sessions_api),
        cmocka_unit_test(test_no_worker),
        cmocka_unit_test(test_silent_worker),
        cmocka_unit_test(test_timed_out_turn_frees_its_worker),
        cmocka_unit_test(test_worker_events_and_garbage),
        cmocka_unit_test(test_router_tool_refusals),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test(test_api_edges),
        cmocka_unit_test(test_attach_without_memory),
        cmocka_unit_test(test_store_bounds),
        cmocka_unit_test(test_controls_before_dispatch),
        cmocka_unit_test(test_worker_replies),
        cmocka_unit_test(test_router_tools_send),
        cmocka_unit_test(test_request_response),
        cmocka_unit_test(test_teardown_with_work_held),
        cmocka_unit_test(test_inbox_entries_dropped),
        cmocka_unit_test(test_crowded_session),
        cmocka_unit_test(test_crowd_detached_mid_delivery),
        cmocka_unit_test(test_long_history),
        cmocka_unit_test(test_turn_without_memory),
        cmocka_unit_test(test_inbox_entry_without_memory),
        cmocka_unit_test(test_frames_and_events_without_memory),
        cmocka_unit_test(test_final_frame_without_memory),
        cmocka_unit_test(test_no_timer_slot),
        cmocka_unit_test(test_response_without_memory),
        cmocka_unit_test(test_request_answer_without_memory),
        cmocka_unit_test(test_teardown_with_reads_pending),
        cmocka_unit_test(test_partials_without_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}

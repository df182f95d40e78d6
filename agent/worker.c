/* agent/worker.c — agent workers on threads: each owns an MDP connection
 * and a provider, and serves one turn at a time (worker.h). */
#include "agent/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>

#include "router/log.h"
#include "router/workers/mdp_worker.h"
#include "router/thread.h"

/* ================================================================ one request */

/* A FINAL error for a request that started a hold but is no turn. */
static agent_turn_outcome_t s_refuse(const agent_io_t *io, const uint8_t *turn_id, const char *msg)
{
    proto_worker_final_t f = {.type = PROTO_WORKER_FINAL_ERROR, .code = PROTO_WORKER_CODE_AGENT_ERROR,
                              .message = {msg, strlen(msg)}};
    if (turn_id)
        memcpy(f.turn_id, turn_id, PROTO_UUID_LEN);
    uint8_t *body = NULL;
    size_t len = 0;
    proto_worker_error_t err;
    uint8_t oom[AGENT_FINAL_OOM_MAX];
    /* Out of memory: a FINAL all the same, or the worker stays held. */
    if (proto_worker_final_encode(&f, &body, &len, &err) < 0)
        len = agent_final_oom_encode(turn_id, oom, sizeof oom);
    int rc = io->send(io->ud, true, body ? body : oom, len);
    free(body);
    return rc < 0 ? AGENT_TURN_LINK_LOST : AGENT_TURN_AGENT_ERROR;
}

agent_turn_outcome_t agent_worker_serve(agent_provider_t *provider, const char *init_err, const agent_io_t *io,
                                        const uint8_t *body, size_t len)
{
    proto_worker_request_t r;
    proto_worker_error_t err;
    if (proto_worker_request_decode(body, len, &r, &err) < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "the worker refused the request: %s%s%s", proto_worker_reason_str(err.reason),
                 err.field[0] ? " at " : "", err.field);
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "%s", msg);
        return s_refuse(io, NULL, msg);
    }
    agent_turn_outcome_t o;
    switch (r.type) {
    case PROTO_WORKER_REQ_TURN:
        o = agent_turn_run(provider, init_err, io, &r.turn);
        break;
    case PROTO_WORKER_REQ_TOOL_RESULT:
        o = s_refuse(io, r.tool_result.turn_id, "no turn in progress for this tool_result");
        break;
    default:
        o = s_refuse(io, r.control.turn_id, "no turn in progress for this steer or stop");
        break;
    }
    proto_worker_request_clear(&r);
    return o;
}

/* ================================================================ the MDP seam */

static int s_mdp_recv(void *ud, uint8_t **body, size_t *len, int timeout_ms)
{
    return router_mdp_worker_recv(ud, body, len, timeout_ms);
}

static int s_mdp_send(void *ud, bool final, const uint8_t *body, size_t len)
{
    return final ? router_mdp_worker_final(ud, body, len) : router_mdp_worker_partial(ud, body, len);
}

/* ================================================================ the pool */

typedef struct agent_pool agent_pool_t;

/* One worker thread's slot. */
typedef struct {
    agent_pool_t *pool;
    unsigned index;
    pthread_t thread;
    bool started;                 /* the thread exists (join it) */
    router_mdp_worker_t *mdp;     /* set by the thread once connected, under pool->lock */
} s_slot_t;

struct agent_pool {
    agent_pool_opts_t o;          /* strings below are the pool's copies */
    char *endpoint, *server_key, *cert_path, *base_url, *model, *api_key_env;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned ready;               /* threads that connected or failed */
    bool failed;                  /* a thread could not connect: err says why */
    bool stopping;
    char err[256];
    s_slot_t *slots;
    atomic_uint_fast64_t turns;
};

void agent_pool_opts_from_config(agent_pool_opts_t *o, const router_config_t *cfg)
{
    memset(o, 0, sizeof *o);
    o->endpoint = NULL;
    o->heartbeat_ms = (int) cfg->workers.heartbeat_ms;
    o->liveness = (int) cfg->workers.liveness;
    o->threads = cfg->workers.agent_threads;
    o->provider.kind = cfg->agent.provider == ROUTER_AGENT_OPENAI ? AGENT_PROVIDER_OPENAI : AGENT_PROVIDER_SCRIPTED;
    o->provider.base_url = cfg->agent.base_url;
    o->provider.model = cfg->agent.model;
    o->provider.api_key_env = cfg->agent.api_key_env;
}

static void *s_thread(void *arg)
{
    s_slot_t *slot = arg;
    router_thread_name("kith-agent");
    agent_pool_t *pool = slot->pool;
    char err[256] = "", init_err[AGENT_PROVIDER_ERR_MAX] = "";
    router_mdp_worker_opts_t mo = {
        .endpoint = pool->endpoint,
        .service = AGENT_SERVICE,
        .heartbeat_ms = pool->o.heartbeat_ms,
        .liveness = pool->o.liveness,
        .curve_server_key = pool->server_key,
        .curve_cert_path = pool->cert_path,
        /* providers yield every AGENT_POLL_MS: recv runs often enough */
        .same_thread = true,
    };
    router_mdp_worker_t *mdp = router_mdp_worker_new(&mo, err, sizeof err);
    agent_provider_t *provider = mdp ? agent_provider_new(&pool->o.provider, init_err, sizeof init_err) : NULL;
    if (mdp && !provider && slot->index == 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "agent", "provider %s cannot start: %s; turns will fail AGENT_INIT_FAILED",
                   pool->o.provider.kind == AGENT_PROVIDER_OPENAI ? "openai" : "scripted", init_err);

    pthread_mutex_lock(&pool->lock);
    slot->mdp = mdp;
    if (!mdp && !pool->failed) {
        pool->failed = true;
        snprintf(pool->err, sizeof pool->err, "%s", err);
    }
    pool->ready++;
    pthread_cond_broadcast(&pool->cond);
    bool stop = pool->stopping || !mdp;
    pthread_mutex_unlock(&pool->lock);

    agent_io_t io = {s_mdp_recv, s_mdp_send, mdp};
    while (!stop) {
        uint8_t *body = NULL;
        size_t len = 0;
        int rc = router_mdp_worker_recv(mdp, &body, &len, -1);
        if (rc == -1)
            break;
        if (rc <= 0)
            continue; /* 0: nothing yet; -2: a request given up below, answered there */
        (void) agent_worker_serve(provider, init_err, &io, body, len);
        free(body);
        atomic_fetch_add(&pool->turns, 1);
    }

    agent_provider_destroy(&provider);
    pthread_mutex_lock(&pool->lock);
    slot->mdp = NULL;
    pthread_mutex_unlock(&pool->lock);
    router_mdp_worker_destroy(&mdp);
    return NULL;
}

static char *s_dup(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

agent_pool_t *agent_pool_start(const agent_pool_opts_t *o, char *err, size_t errcap)
{
    if (o->threads > AGENT_THREADS_MAX) {
        snprintf(err, errcap, "agent: at most %d worker threads", AGENT_THREADS_MAX);
        return NULL;
    }
    agent_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool) {
        snprintf(err, errcap, "agent: out of memory");
        return NULL;
    }
    pool->o = *o;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->cond, NULL);
    atomic_init(&pool->turns, 0);
    pool->endpoint = strdup(o->endpoint && *o->endpoint ? o->endpoint : "inproc://kith.workers");
    pool->server_key = s_dup(o->curve_server_key);
    pool->cert_path = s_dup(o->curve_cert_path);
    pool->base_url = s_dup(o->provider.base_url);
    pool->model = s_dup(o->provider.model);
    pool->api_key_env = s_dup(o->provider.api_key_env);
    pool->o.provider.base_url = pool->base_url;
    pool->o.provider.model = pool->model;
    pool->o.provider.api_key_env = pool->api_key_env;
    pool->slots = calloc(o->threads ? o->threads : 1, sizeof *pool->slots);
    if (!pool->endpoint || !pool->slots) {
        snprintf(err, errcap, "agent: out of memory");
        agent_pool_stop(&pool);
        return NULL;
    }
    /* CZMQ's first use is not thread-safe (two threads in zsys_init trip its
     * assertion that no socket is open yet): initialise it here, once,
     * before any worker thread makes its socket. */
    zsys_init();
    zsys_handler_set(NULL);
    unsigned started = 0;
    for (unsigned i = 0; i < o->threads; i++) {
        pool->slots[i].pool = pool;
        pool->slots[i].index = i;
        int rc = pthread_create(&pool->slots[i].thread, NULL, s_thread, &pool->slots[i]);
        if (rc != 0) {
            snprintf(err, errcap, "agent: cannot start a worker thread: %s", strerror(rc));
            agent_pool_stop(&pool);
            return NULL;
        }
        pool->slots[i].started = true;
        started++;
    }
    pthread_mutex_lock(&pool->lock);
    while (pool->ready < started)
        pthread_cond_wait(&pool->cond, &pool->lock);
    bool failed = pool->failed;
    if (failed)
        snprintf(err, errcap, "agent: %s", pool->err);
    pthread_mutex_unlock(&pool->lock);
    if (failed) {
        agent_pool_stop(&pool);
        return NULL;
    }
    ROUTER_LOG(ROUTER_LOG_INFO, "agent", "%u worker%s on %s, provider %s", started, started == 1 ? "" : "s",
               pool->endpoint, o->provider.kind == AGENT_PROVIDER_OPENAI ? "openai" : "scripted");
    return pool;
}

void agent_pool_stop(agent_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    agent_pool_t *pool = *self_p;
    *self_p = NULL;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    for (unsigned i = 0; pool->slots && i < pool->o.threads; i++)
        if (pool->slots[i].mdp)
            router_mdp_worker_interrupt(pool->slots[i].mdp);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; pool->slots && i < pool->o.threads; i++)
        if (pool->slots[i].started)
            pthread_join(pool->slots[i].thread, NULL);
    free(pool->slots);
    free(pool->endpoint);
    free(pool->server_key);
    free(pool->cert_path);
    free(pool->base_url);
    free(pool->model);
    free(pool->api_key_env);
    pthread_cond_destroy(&pool->cond);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

uint64_t agent_pool_turns(const agent_pool_t *self)
{
    return atomic_load(&((agent_pool_t *) self)->turns);
}

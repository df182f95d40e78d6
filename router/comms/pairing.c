/* router/comms/pairing.c — Meerkat pairing on the comms port: a line reader
 * per connection, the challenge and proof check on the loop, and the trust
 * and binding files written by a short-lived thread that posts the answer
 * back to the loop. */
#include "router/comms/pairing.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>
#include <yajl/yajl_gen.h>

#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/comms/pairing_msg.h"
#include "router/log.h"
#include "router/net/addr.h"
#include "router/state/home.h"
#include "router/state/statefile.h"
#include "router/state/tokens.h"
#include "router/state/trust.h"

/* A source's key in the token store's lockouts: "comms-pair:" and its IP,
 * apart from the gateway's /pair clients (one does not lock the other). */
#define S_CLIENT_PREFIX "comms-pair:"

typedef enum { S_AWAIT_HELLO, S_AWAIT_PROOF, S_WRITING, S_DONE } s_state_t;

typedef struct s_job s_job_t;
typedef struct s_fail s_fail_t;

struct router_pairing_conn {
    router_pairing_t *p;                 /* owner */
    router_conn_t *conn;
    s_state_t state;
    char line[ROUTER_PAIRING_LINE_MAX];  /* the line being read */
    size_t len;
    char challenge[PROTO_UUID_TEXT_CAP]; /* sent in the challenge */
    char client[ROUTER_TOKENS_CLIENT_MAX]; /* its lockout key (S_CLIENT_PREFIX + IP) */
    s_job_t *job;                        /* a file write in flight, or NULL */
    s_fail_t *fail;                      /* a wrong proof's count being stored, or NULL */
};

/* A wrong proof, answered once its count is durable: answered first, a
 * crash (kill -9, power) in between forgot the count, and with it a
 * lockout its fifth guess had earned. */
struct s_fail {
    router_pairing_conn_t *pc;           /* NULL once the connection closed */
};

struct router_pairing {
    router_loop_t *loop;
    const router_identity_t *identity;
    char *password, *name, *address, *home;
    void (*on_paired)(void *ud);
    void *ud;
    unsigned conns;                      /* handshakes open */
    router_tokens_t *lockouts;           /* wrong proofs, durably; borrowed; NULL: refuse */
    router_pairing_stats_t stats;
    pthread_mutex_t mu;                  /* guards `writers`, `stopping`, `orphans` */
    pthread_cond_t cv;
    unsigned writers;                    /* file-writing threads running */
    bool stopping;                       /* quiesce began: a writer that cannot hand its
                                          * answer back stops trying */
    s_job_t *orphans;                    /* such writers' jobs, freed by destroy */
};

/* A trust + binding write, handed to a thread and back. */
struct s_job {
    router_pairing_t *p;
    router_pairing_conn_t *pc;           /* NULL once the connection closed */
    router_pairing_msg_t msg;            /* the verified proof */
    char source[64];                     /* the caller's address, for the binding */
    char kith_name[ROUTER_PEER_NAME_MAX + 1];
    int rc;                              /* 0 written */
    bool binding_failed;                 /* the binding line, not the trust edit, failed */
    char err[ROUTER_TRUST_ERR_MAX];
    s_job_t *next_orphan;                /* in router_pairing's orphans */
};

/* ---------------------------------------------------------------- answers */

static void s_gen_str(yajl_gen g, const char *k, const char *v)
{
    yajl_gen_string(g, (const unsigned char *) k, strlen(k));
    yajl_gen_string(g, (const unsigned char *) v, strlen(v));
}

/* Our identity as the handshake names it. */
static void s_gen_target(yajl_gen g, const router_pairing_t *p)
{
    char pub[PROTO_PUBKEY_TEXT_CAP];
    (void) proto_pubkey_format(p->identity->pk, pub, sizeof pub);
    yajl_gen_string(g, (const unsigned char *) "target", 6);
    yajl_gen_map_open(g);
    s_gen_str(g, "name", p->name);
    s_gen_str(g, "address", p->address);
    yajl_gen_string(g, (const unsigned char *) "identity", 8);
    yajl_gen_map_open(g);
    s_gen_str(g, "kind", "ed25519_public_key");
    s_gen_str(g, "public_key", pub);
    yajl_gen_map_close(g);
    yajl_gen_map_close(g);
}

/* Writes g's document and a newline to the connection; frees g. */
static void s_send_doc(router_pairing_conn_t *pc, yajl_gen g)
{
    const unsigned char *buf;
    size_t len;
    yajl_gen_map_close(g);
    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
        (void) router_conn_send(pc->conn, buf, len);
        (void) router_conn_send(pc->conn, "\n", 1);
    }
    yajl_gen_free(g);
}

static yajl_gen s_doc(const char *kind)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return NULL;
    yajl_gen_map_open(g);
    s_gen_str(g, "kind", kind);
    yajl_gen_string(g, (const unsigned char *) "version", 7);
    yajl_gen_integer(g, ROUTER_PAIRING_VERSION);
    return g;
}

/* A refusal: one error line (a Meerkat client reads it as a failed
 * handshake), then an orderly close. */
static void s_refuse(router_pairing_conn_t *pc, const char *code, const char *why)
{
    router_pairing_t *p = pc->p;
    p->stats.refused++;
    ROUTER_LOG(ROUTER_LOG_INFO, "pairing", "refused pairing on connection %llu: %s (%s)",
               (unsigned long long) router_conn_id(pc->conn), code, why);
    yajl_gen g = s_doc("meerkat_pairing_error");
    if (g) {
        s_gen_str(g, "code", code);
        s_gen_str(g, "error", why);
        s_send_doc(pc, g);
    }
    pc->state = S_DONE;
    router_conn_close(pc->conn);
}

/* ---------------------------------------------------------------- rate limit */

/* The lockout key of conn's source: S_CLIENT_PREFIX and the source text
 * of router_addr_source (an IPv4-mapped address as the IPv4 one, so a
 * listener moved between 0.0.0.0 and [::] keeps its lockouts; an IPv6
 * address's /64; "unix" for a Unix socket). At most 43 octets: it fits. */
static void s_client_key(const router_conn_t *conn, char out[ROUTER_TOKENS_CLIENT_MAX])
{
    char ip[ROUTER_ADDR_CLIENT_MAX];
    router_addr_source(router_conn_peer(conn), ip);
    snprintf(out, ROUTER_TOKENS_CLIENT_MAX, S_CLIENT_PREFIX "%.48s", ip);
}

void router_pairing_set_lockouts(router_pairing_t *self, router_tokens_t *lockouts)
{
    if (self)
        self->lockouts = lockouts;
}

/* ---------------------------------------------------------------- the file write */

/* Appends one JSON line to the binding file and fsyncs it. */
static int s_write_binding(const s_job_t *j, const char *home, char *err, size_t errcap)
{
    char path[ROUTER_PATH_MAX], uuid[PROTO_UUID_TEXT_CAP];
    if (router_home_path(home, ROUTER_PAIRING_BINDINGS_FILE, path, sizeof path) != 0) {
        snprintf(err, errcap, "binding file path too long");
        return -1;
    }
    uint8_t id[16];
    proto_peer_id(j->msg.pk, id);
    proto_uuid_format(id, uuid);
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    char ms[24];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long) router_clock_wall_ms());
    yajl_gen_map_open(g);
    s_gen_str(g, "peer_id", uuid);
    s_gen_str(g, "name", j->kith_name);
    s_gen_str(g, "meerkat_name", j->msg.name);
    s_gen_str(g, "pubkey", j->msg.public_key);
    s_gen_str(g, "address", j->msg.address);
    s_gen_str(g, "source", j->source);
    yajl_gen_string(g, (const unsigned char *) "paired_ms", 9);
    yajl_gen_number(g, ms, strlen(ms));
    yajl_gen_map_close(g);
    const unsigned char *buf;
    size_t len;
    int rc = -1;
    yajl_gen_get_buf(g, &buf, &len);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0 && router_statefile_write_all(fd, buf, len) == 0 &&
        router_statefile_write_all(fd, "\n", 1) == 0 && fsync(fd) == 0)
        rc = 0;
    else
        snprintf(err, errcap, "%.300s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    yajl_gen_free(g);
    return rc;
}

/* Adds (or replaces) the caller in trusted_peers.json under the same lock
 * `kith peers` takes, with profile meerkat and its meta. */
/* The pairing's row: Meerkat upserts (the new address wins). */
static int s_edit_trust(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    const s_job_t *j = ud;
    const router_peer_t *old = router_trust_by_pubkey(t, j->msg.pk);
    if (old)
        (void) router_trust_remove(t, old);
    router_label_t labels[2] = {{"paired_via", "meerkat_pairing"}, {"meerkat_name", j->msg.name}};
    size_t nlabels = strlen(j->msg.name) <= ROUTER_PEER_LABEL_VALUE_MAX ? 2 : 1;
    if (router_trust_add(t, j->kith_name, j->msg.pk, j->msg.address,
                         "paired over the Meerkat pairing handshake", labels, nlabels, err,
                         errcap) != 0)
        return -1;
    (void) router_trust_set_profile(t, router_trust_by_pubkey(t, j->msg.pk),
                                    ROUTER_PEER_PROFILE_MEERKAT);
    return 0;
}

static void s_job_done(router_loop_t *loop, void *arg);

static void *s_writer(void *arg)
{
    s_job_t *j = arg;
    router_pairing_t *p = j->p;
    /* The binding line first: a peer trusted by pairing always has one.
     * The other order left, when the line could not be written, a peer
     * trusted on disk (from the next reload on) while the client was told
     * the pairing failed and the running node did not trust it. A line
     * whose trust edit then fails records an attempt that did not take. */
    j->rc = s_write_binding(j, p->home, j->err, sizeof j->err);
    if (j->rc != 0)
        j->binding_failed = true;
    else
        j->rc = router_trust_edit(p->home, s_edit_trust, j, j->err, sizeof j->err);
    /* The loop's post queue may be full for a while: keep trying, for the
     * answer is owed (the files say paired, or the client must be told
     * why not) and the connection still points at the job. Only once the
     * pairing is stopping is it given up: then the job waits for destroy,
     * after the connections that may still name it are gone. */
    while (router_loop_post_wait(p->loop, s_job_done, j, 2000) != 0) {
        pthread_mutex_lock(&p->mu);
        bool stop = p->stopping;
        if (stop) {
            j->next_orphan = p->orphans;
            p->orphans = j;
        }
        pthread_mutex_unlock(&p->mu);
        if (stop) {
            ROUTER_LOG(ROUTER_LOG_ERROR, "pairing", "pairing %s %s, but stopping: its answer is not sent",
                       j->kith_name, j->rc == 0 ? "saved" : "not saved");
            break;
        }
        ROUTER_LOG(ROUTER_LOG_WARN, "pairing", "the loop's queue is full: pairing %s waits to answer",
                   j->kith_name);
    }
    pthread_mutex_lock(&p->mu);
    p->writers--;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void s_job_done(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_job_t *j = arg;
    router_pairing_t *p = j->p;
    router_pairing_conn_t *pc = j->pc;
    if (pc)
        pc->job = NULL;
    if (j->rc != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "pairing", "pairing %s not saved: %s", j->kith_name, j->err);
        if (pc)
            s_refuse(pc, "internal", j->binding_failed ? "the binding file could not be written"
                                                       : "the trust file could not be written");
    } else {
        p->stats.paired++;
        ROUTER_LOG(ROUTER_LOG_INFO, "pairing", "paired %s (%s) at %s", j->kith_name,
                   j->msg.public_key, j->msg.address);
        if (pc) {
            yajl_gen g = s_doc("meerkat_pairing_complete");
            if (g) {
                s_gen_str(g, "comms_name", p->name);
                s_gen_target(g, p);
                s_send_doc(pc, g);
            }
            pc->state = S_DONE;
            router_conn_close(pc->conn);
        }
        if (p->on_paired)
            p->on_paired(p->ud);
    }
    free(j);
}

/* ---------------------------------------------------------------- the handshake */

static void s_on_hello(router_pairing_conn_t *pc, const router_pairing_msg_t *m)
{
    if (m->version != ROUTER_PAIRING_VERSION) {
        s_refuse(pc, "unsupported_version", "kith speaks pairing version 1");
        return;
    }
    uint8_t c[16];
    randombytes_buf(c, sizeof c); /* a UUIDv4, as Meerkat makes its challenges */
    c[6] = (uint8_t) ((c[6] & 0x0f) | 0x40);
    c[8] = (uint8_t) ((c[8] & 0x3f) | 0x80);
    proto_uuid_format(c, pc->challenge);
    yajl_gen g = s_doc("meerkat_pairing_challenge");
    if (!g) {
        s_refuse(pc, "internal", "out of memory");
        return;
    }
    s_gen_str(g, "challenge", pc->challenge);
    s_gen_target(g, pc->p);
    s_send_doc(pc, g);
    pc->state = S_AWAIT_PROOF;
}

/* A wrong proof's count is durable (or could not be made so: the count
 * in memory holds all the same): the proof is refused now. */
static void s_fail_written(bool ok, void *ud)
{
    s_fail_t *f = ud;
    router_pairing_conn_t *pc = f->pc;
    if (!ok)
        ROUTER_LOG(ROUTER_LOG_WARN, "pairing", "a wrong proof%s%s could not be stored",
                   pc ? " from " : "", pc ? pc->client : "");
    if (pc) {
        pc->fail = NULL;
        s_refuse(pc, "invalid_proof", "invalid pairing password proof");
    }
    free(f);
}

static void s_on_proof(router_pairing_conn_t *pc, const router_pairing_msg_t *m)
{
    router_pairing_t *p = pc->p;
    if (!p->lockouts) { /* the store stopped since the hello */
        s_refuse(pc, "internal", "pairing is not ready; try again later");
        return;
    }
    /* Looked at again here, not only when the handshake began: handshakes
     * opened before the lock would otherwise each get a guess (32 at once
     * per address, not 5), and a right one among them would pair. */
    if (router_tokens_locked_until(p->lockouts, pc->client, router_clock_wall_ms())) {
        s_refuse(pc, "locked_out", "too many wrong pairing passwords from this address; try "
                                   "again later");
        return;
    }
    char want[ROUTER_PAIRING_PROOF_CAP];
    router_pairing_proof(p->password, pc->challenge, m->public_key, m->address, want);
    size_t n = strlen(m->proof);
    bool ok = n == strlen(want) && sodium_memcmp(m->proof, want, n) == 0;
    sodium_memzero(want, sizeof want);
    if (!ok) {
        p->stats.wrong++;
        /* Counted durably, and answered only then: a restart forgets no
         * wrong proof. The count in memory holds from now either way. */
        uint64_t until = 0;
        s_fail_t *f = calloc(1, sizeof *f);
        if (f)
            f->pc = pc;
        if (router_tokens_fail(p->lockouts, pc->client, router_clock_wall_ms(),
                               ROUTER_PAIRING_FAILS_MAX, ROUTER_PAIRING_LOCK_MS, &until,
                               f ? s_fail_written : NULL, f) != 0) {
            ROUTER_LOG(ROUTER_LOG_WARN, "pairing",
                       "a wrong proof from %s not written durably: the lockout store is busy "
                       "or full", pc->client);
            free(f);
            f = NULL;
        }
        if (!f) {
            s_refuse(pc, "invalid_proof", "invalid pairing password proof");
            return;
        }
        pc->fail = f;
        pc->state = S_WRITING; /* reads nothing more; the answer comes with the write */
        return;
    }
    /* The lock is for wrong proofs in a row (WIRE §23.6): a right one
     * starts the count again, as a right /pair code does. */
    router_tokens_forgive(p->lockouts, pc->client);
    router_peer_addr_t dial;
    char why[128];
    if (router_peer_addr_parse(m->address, &dial, why, sizeof why) != 0) {
        s_refuse(pc, "bad_address", "caller.address is not a peer address kith can dial");
        return;
    }
    s_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        s_refuse(pc, "internal", "out of memory");
        return;
    }
    j->p = p;
    j->pc = pc;
    j->msg = *m;
    uint8_t id[16];
    proto_peer_id(m->pk, id);
    router_peer_name_sanitize(m->name, id, j->kith_name);
    const router_addr_t *src = router_conn_peer(pc->conn);
    if (!src || router_addr_format(src, j->source, sizeof j->source) != 0)
        snprintf(j->source, sizeof j->source, "local");
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&p->mu);
    p->writers++;
    pthread_mutex_unlock(&p->mu);
    if (pthread_create(&th, &attr, s_writer, j) != 0) {
        pthread_mutex_lock(&p->mu);
        p->writers--;
        pthread_mutex_unlock(&p->mu);
        free(j);
        pthread_attr_destroy(&attr);
        s_refuse(pc, "internal", "cannot start the file write");
        return;
    }
    pthread_attr_destroy(&attr);
    pc->job = j;
    pc->state = S_WRITING;
}

/* No bytes (len 0) is the client's end of stream: it sends no more but may
 * still read. Awaiting a line that cannot come now, the handshake is
 * refused at once (a typed line, an orderly close) rather than left to the
 * deadline's reset; with the proof's file write in flight, the answer
 * (complete or error) still goes out, then the close — a client told
 * nothing would take a pairing kith has written for a failed one. */
void router_pairing_conn_data(router_pairing_conn_t *pc, const uint8_t *data, size_t len)
{
    if (len == 0) {
        if (pc->state == S_AWAIT_HELLO || pc->state == S_AWAIT_PROOF)
            s_refuse(pc, "malformed",
                     pc->state == S_AWAIT_HELLO ? "the connection ended before meerkat_pairing_hello"
                                                : "the connection ended before meerkat_pairing_proof");
        return;
    }
    while (len > 0 && (pc->state == S_AWAIT_HELLO || pc->state == S_AWAIT_PROOF)) {
        const uint8_t *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t) (nl - data) + 1 : len;
        if (pc->len + take > sizeof pc->line) {
            s_refuse(pc, "too_long", "a pairing line is at most 16 KiB");
            return;
        }
        memcpy(pc->line + pc->len, data, take);
        pc->len += take;
        data += take;
        len -= take;
        if (!nl)
            return;
        router_pairing_msg_t m;
        char why[160];
        int rc = router_pairing_msg_parse(pc->line, pc->len, &m, why, sizeof why);
        pc->len = 0;
        if (rc != 0) {
            s_refuse(pc, errno == ENOMEM ? "internal" : "malformed", why);
            return;
        }
        if (pc->state == S_AWAIT_HELLO && m.kind == ROUTER_PAIRING_HELLO)
            s_on_hello(pc, &m);
        else if (pc->state == S_AWAIT_PROOF && m.kind == ROUTER_PAIRING_PROOF)
            s_on_proof(pc, &m);
        else
            s_refuse(pc, "unexpected", pc->state == S_AWAIT_HELLO ? "expected meerkat_pairing_hello"
                                                                  : "expected meerkat_pairing_proof");
        sodium_memzero(&m, sizeof m);
    }
    /* Bytes after the proof, or after we finished: ignored. */
}

router_pairing_conn_t *router_pairing_conn_new(router_pairing_t *self, router_conn_t *conn)
{
    if (self->conns >= ROUTER_PAIRING_CONNS_MAX)
        return NULL;
    router_pairing_conn_t *pc = calloc(1, sizeof *pc);
    if (!pc)
        return NULL;
    pc->p = self;
    pc->conn = conn;
    s_client_key(conn, pc->client);
    self->conns++;
    if (!self->lockouts)
        s_refuse(pc, "internal", "pairing is not ready; try again later");
    else if (router_tokens_locked_until(self->lockouts, pc->client, router_clock_wall_ms()))
        s_refuse(pc, "locked_out", "too many wrong pairing passwords from this address; try "
                                   "again later");
    return pc;
}

void router_pairing_conn_free(router_pairing_conn_t **pc_p)
{
    if (!pc_p || !*pc_p)
        return;
    router_pairing_conn_t *pc = *pc_p;
    if (pc->job)
        pc->job->pc = NULL; /* the write finishes; its answer has nowhere to go */
    if (pc->fail)
        pc->fail->pc = NULL; /* likewise the count of a wrong proof */
    pc->p->conns--;
    sodium_memzero(pc->line, sizeof pc->line);
    free(pc);
    *pc_p = NULL;
}

/* ---------------------------------------------------------------- lifecycle */

router_pairing_t *router_pairing_new(const router_pairing_opts_t *opts)
{
    if (!opts->password || strlen(opts->password) < ROUTER_PAIRING_PASSWORD_MIN) {
        errno = EINVAL;
        return NULL;
    }
    router_pairing_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = opts->loop;
    self->identity = opts->identity;
    self->password = strdup(opts->password);
    self->name = strdup(opts->name ? opts->name : "kith");
    self->address = strdup(opts->address ? opts->address : "");
    self->home = strdup(opts->home ? opts->home : ".");
    self->on_paired = opts->on_paired;
    self->ud = opts->ud;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    if (!self->password || !self->name || !self->address || !self->home) {
        router_pairing_destroy(&self);
        errno = ENOMEM;
        return NULL;
    }
    return self;
}

void router_pairing_quiesce(router_pairing_t *self)
{
    if (!self)
        return;
    self->on_paired = NULL;
    pthread_mutex_lock(&self->mu);
    self->stopping = true;
    while (self->writers > 0)
        pthread_cond_wait(&self->cv, &self->mu);
    pthread_mutex_unlock(&self->mu);
}

void router_pairing_destroy(router_pairing_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_pairing_t *self = *self_p;
    router_pairing_quiesce(self);
    while (self->orphans) {
        s_job_t *j = self->orphans;
        self->orphans = j->next_orphan;
        sodium_memzero(&j->msg, sizeof j->msg);
        free(j);
    }
    if (self->password)
        sodium_memzero(self->password, strlen(self->password));
    free(self->password);
    free(self->name);
    free(self->address);
    free(self->home);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

void router_pairing_stats(const router_pairing_t *self, router_pairing_stats_t *out)
{
    *out = self->stats;
}

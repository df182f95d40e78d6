/*
 * spec/crypto.pml — envelopes of one connection checked on crypto threads
 * beside the loop, finishing in any order, admitted and acked in arrival
 * order (WIRE §14.12; router/comms/comms.c, crypto_order.c, crypto_pool.c).
 * Checked by tests/integration/test_spin.sh.
 *
 * Modelled: the loop reads N frames in arrival order and makes each a job
 * in the connection's order (router_crypto_order_push) and the pool's
 * queue; W crypto threads take jobs from that queue in any interleaving,
 * decode and verify them (good[] says which signatures verify, chosen
 * nondeterministically) and hand them back; the loop marks a returned job
 * done and runs the rest of the checks on the jobs at the front of the
 * order that are done (s_advance): a good one is admitted and owes its ack,
 * a bad one is refused and everything after it is discarded; the store
 * makes admissions durable in admission order; the loop sends the acks of
 * durable admissions in admission order (s_release). At any moment the
 * connection may be reset: the order is abandoned (done jobs freed, the
 * others orphaned and freed when they come back).
 *
 * Properties (assertions):
 *   C1 the k-th ack on the connection is for the k-th envelope sent
 *   C2 nothing is admitted before its check ran and found it good
 *   C3 nothing is acked before its admission is durable
 *   C4 every job is freed exactly once: never twice, none left at the end
 *
 * Broken variants: BROKEN_NO_ORDER (a returned good job is admitted at
 * once, ahead of jobs still being checked: C1), BROKEN_ADMIT_UNCHECKED
 * (s_advance takes the front of the order without waiting for its check:
 * C2), BROKEN_ACK_EARLY (an ack goes out before its admission is durable:
 * C3), BROKEN_FREE_INFLIGHT (abandoning a connection frees the jobs still
 * on a thread too: C4, freed twice), BROKEN_LEAK_ORPHAN (an orphan that
 * comes back from its thread is never freed: C4, left at the end).
 */

#ifndef N
#define N 3             /* frames on the connection */
#endif
#ifndef W
#define W 2             /* crypto threads */
#endif

bool good[N];           /* its signature verifies */
bool checked[N];        /* a thread ran its checks */
bool done[N];           /* back on the loop (loop only) */
bool orphan[N];         /* its connection abandoned it */
bool created[N];        /* read and made a job */
byte freed[N];          /* times freed */
bool durable[N];        /* its admission is durable */
byte adm[N];            /* admitted envelopes, in admission order */
byte nadm = 0;          /* how many */
byte ndur = 0;          /* the store made adm[0..ndur-1] durable */
byte nack = 0;          /* acks sent: for adm[0..nack-1] */
byte head = 0;          /* the order holds jobs head..tail-1 */
byte tail = 0;
byte inflight = 0;      /* on the threads (queued, running or returning) */
bool closed = false;    /* the connection was reset */
bool refused = false;   /* a refusal: nothing more is read or admitted */

chan todo = [N] of { byte };    /* the pool's queue */
chan back = [N] of { byte };    /* done jobs on their way to the loop */

inline free_job(i) {
    assert(freed[i] == 0);      /* C4: never twice */
    freed[i]++
}

inline admit(j) {
    assert(checked[j] && good[j]);  /* C2 */
    adm[nadm] = j;
    nadm++
}

/* router_crypto_order_abandon: done jobs freed, the others orphaned. */
inline abandon() {
    k = head;
    do
    :: k < tail ->
        orphan[k] = true;
#ifdef BROKEN_FREE_INFLIGHT
        free_job(k);
#else
        if
        :: done[k] -> free_job(k)
        :: else -> skip
        fi;
#endif
        k++
    :: else -> break
    od;
    head = tail
}

/* s_advance: the front of the order, while done. */
inline advance() {
    do
#ifndef BROKEN_ADMIT_UNCHECKED
    :: head < tail && done[head] && !closed && !refused ->
#else
    :: head < tail && !closed && !refused ->     /* does not wait for its check */
#endif
        j = head;
        head++;
        if
        :: good[j] -> admit(j)
        :: else -> refused = true; abandon()
        fi;
        free_job(j)
    :: else -> break
    od
}

active [W] proctype Thread()
{
    byte j;
end:
    do
    :: todo?j ->
        checked[j] = true;      /* decode, verify, sign the ack */
        back!j
    od
}

active proctype Store()
{
end:
    do
    :: atomic { ndur < nadm -> durable[adm[ndur]] = true; ndur++ }
    od
}

active proctype Loop()
{
    byte i, j, k;
    /* which signatures verify */
    i = 0;
    do
    :: i < N -> if :: good[i] = true :: good[i] = false fi; i++
    :: else -> break
    od;

    do
    /* read the next frame: a job, in the order and on the pool */
    :: atomic { !closed && !refused && tail < N ->
        created[tail] = true;
        todo!tail;
        inflight++;
        tail++ }
    /* a job comes back */
    :: atomic { back?j ->
        inflight--;
        done[j] = true;
        if
#ifndef BROKEN_LEAK_ORPHAN
        :: orphan[j] -> free_job(j)
#else
        :: orphan[j] -> skip                      /* an orphan back from a thread is kept */
#endif
#ifdef BROKEN_NO_ORDER
        :: !orphan[j] && good[j] && !refused && !closed && j != head ->
            admit(j)    /* ahead of its predecessors; freed when its turn comes */
#endif
        :: else -> advance()
        fi }
    /* acks of durable admissions, in admission order */
#ifndef BROKEN_ACK_EARLY
    :: atomic { !closed && nack < nadm && durable[adm[nack]] ->
#else
    :: atomic { !closed && nack < nadm ->      /* does not wait for the store */
#endif
        assert(durable[adm[nack]]);     /* C3 */
        assert(adm[nack] == nack);      /* C1 */
        nack++ }
    /* the peer resets the connection */
    :: atomic { !closed ->
        closed = true;
        abandon() }
    /* nothing left to do */
    :: atomic { inflight == 0 && (closed || refused || (tail == N && head == tail)) &&
                (closed || nack == nadm) -> break }
    od;

    /* C4: every job made was freed, exactly once */
    i = 0;
    do
    :: i < N -> assert(!created[i] || freed[i] == 1); i++
    :: else -> break
    od
}

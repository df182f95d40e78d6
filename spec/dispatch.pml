/*
 * spec/dispatch.pml — durable inbox entries becoming agent-worker turns
 * through the Majordomo broker, across a crash and restart of the daemon
 * (WIRE §19.1, §19.4; the table in WIRE §14.9 maps every variable and step
 * to the C). Checked by tests/integration/test_spin.sh.
 *
 * Modelled: envelopes admitted to the inbox (volatile until the store
 * thread's group commit makes them durable; the ack goes out only then),
 * router_inbox_take leasing the oldest durable entry nobody holds, the turn
 * it becomes and its broker request, NW external workers behind the broker
 * (READY, a LRU dispatch to a known idle worker, FINAL), a worker process
 * that dies (declared dead after heartbeat silence: its request ends with
 * kind -1 and the turn with an error), a live worker declared dead (it
 * stalled; its late FINAL is dropped), the router's turn timeout (the
 * request becomes a zombie: its FINAL is dropped), router_inbox_done queueing
 * the delete that a later commit makes durable, and a crash of the daemon
 * that loses everything not durable (uncommitted admissions and deletes,
 * leases, turns, the broker's workers) followed by a restart that reloads
 * the durable entries. Workers are external (workers.listen): they outlive
 * the crash, and a worker holding a turn of the old run sends its FINAL to
 * the new broker, which does not know it. Each entry is its own session
 * here (spec/session.pml is the one-session queue).
 *
 * Properties:
 *   D1 only durable entries are dispatched                     (take)
 *   D2 an entry is deleted (even in memory) only after its turn ended
 *      with a final outcome, and durably only after that      (done, commit)
 *   D3 while an entry's lease is valid at most one worker works on it
 *                                                              (dispatch)
 *   D4 a worker declared dead gets no new work                 (dispatch)
 *   D5 at most one reply per entry takes effect; a second one only when a
 *      crash fell between the first and the durable delete (at least once,
 *      WIRE §19.4)                                             (end_turn)
 *   L1 every acked envelope is eventually completed or dead-lettered (its
 *      turn ends, with an answer or an error, and it is deleted), across
 *      restarts, under weak fairness                          (ltl all_finished)
 *
 * Broken variants: BROKEN_TAKE_VOLATILE (take does not wait for the
 * commit: D1), BROKEN_DELETE_AT_TAKE (router_inbox_pop's semantics, the
 * delete queued when the entry is taken: D2, and L1 with a crash),
 * BROKEN_REDISPATCH (an expired worker's request goes back to the queue
 * while that worker may still be running it: D3), BROKEN_DISPATCH_DEAD (an
 * expired worker stays in the idle list: D4), BROKEN_NO_ZOMBIE (a turn the
 * router ended keeps its callback: D5). BROKEN_DELETE_AT_TAKE with
 * -DNO_D2_ASSERT shows what D2 protects: L1 fails (an acked envelope is
 * deleted by a crash before its turn ran, and never finishes).
 */

#ifndef NE
#define NE 2            /* envelopes */
#endif
#ifndef NW
#define NW 2            /* workers */
#endif
#ifndef MAXCRASH
#define MAXCRASH 1      /* daemon crashes (each followed by a restart) */
#endif
#ifndef MAXWDIE
#define MAXWDIE 1       /* worker processes that die, all together */
#endif
#ifndef MAXEXP
#define MAXEXP 1        /* live workers declared dead (stalled past the heartbeats) */
#endif
#ifndef MAXTIMEOUT
#define MAXTIMEOUT 1    /* router turn timeouts of held turns */
#endif

/* Arrays have room for 3 entries; ANY(P) is "P(e) for some entry e". */
#define ANY(P) (P(1) || (NE > 1 && P(2)) || (NE > 2 && P(3)))
#define NA 4

#define ADM 1           /* admitted, in memory only */
#define DUR 2           /* durable (committed); acked */

#define QUEUED 1        /* its broker request waits for a worker */
#define HELD   2        /* a worker holds it */

/* ---- the inbox (router/state/inbox.c) */
byte st[NA];        /* 0, ADM, DUR */
bool acked[NA];     /* ghost: the sender got its ack (monotone) */
bool leased[NA];    /* volatile: router_inbox_take … _done */
bool del_q[NA];     /* volatile: a delete queued (self->deletes) */
bool deleted[NA];   /* durable: the row is gone */
byte gen = 1;           /* the daemon's run (incarnation) */
byte crashes;

/* ---- turns (router/workers/turns.c) */
byte tstate[NA];    /* volatile: 0, QUEUED, HELD */
bool ended[NA];     /* volatile: its turn ended in this run */
byte eff[NA];       /* ghost: replies that took effect, all runs */
bool window[NA];    /* ghost: a crash fell between an effect and the durable delete */
byte timeouts;

/* ---- the broker (router/workers/broker.c) */
bool known[NW];         /* registered (READY seen), not declared dead */
byte holds[NW];         /* the entry whose request it holds, 0: none */
bool zombie[NW];        /* that request's cb is NULL (router_broker_cancel) */
byte expiries, late;

/* ---- the workers (outside the daemon) */
chan toW[NW] = [1] of { byte, byte };   /* REQUEST: entry, gen (≙ address + turn_id) */
byte wjob[NW];          /* the entry it works on, 0: none */
byte wrun[NW];          /* …of which run (gen) */
bool wdead[NW];         /* its process died, not yet restarted */
byte wdies;

#define UNSENT(e)   (st[e] == 0 && !acked[e])
#define PENDING(e)  (st[e] == ADM || del_q[e])
#ifndef BROKEN_TAKE_VOLATILE
#define TAKEABLE(e) (st[e] == DUR && !leased[e] && !del_q[e] && !ended[e] && !deleted[e])
#else
#define TAKEABLE(e) (st[e] != 0 && !leased[e] && !del_q[e] && !ended[e] && !deleted[e])
#endif
#define WAITING(e)  (tstate[e] == QUEUED)
#ifndef BROKEN_DISPATCH_DEAD
#define IDLE(w)     (known[w] && holds[w] == 0 && nfull(toW[w]))
#else
#define IDLE(w)     (holds[w] == 0 && nfull(toW[w]) && (known[w] || wdead[w]))
#endif

/* D3: how many workers work on e under this run's lease. */
inline d3_count(e, v, n)
{
	v = 0; n = 0;
	do
	:: v < NW -> if :: wjob[v] == e && wrun[v] == gen -> n++ :: else fi; v++
	:: v == NW -> break
	od
}

/* The turn of e ends (a FINAL that took effect, a death, a timeout): the
 * final frame, then router_inbox_done. */
inline end_turn(e)
{
	assert(eff[e] == 0 || window[e]);        /* D5 */
	assert(tstate[e] != 0 && leased[e]);     /* D5: only the turn in flight ends */
	eff[e]++;
	printf("router: the turn of %d ends; router_inbox_done\n", e);
	ended[e] = true;
	tstate[e] = 0;
	leased[e] = false;                       /* router_inbox_done */
#ifndef BROKEN_DELETE_AT_TAKE
	del_q[e] = true
#else
	skip
#endif
}

/* s_worker_delete after an expiry or a DISCONNECT: its request is lost. */
inline forget_worker(w)
{
	known[w] = false;
	printf("broker: worker %d declared dead (holding %d)\n", w, holds[w]);
	if
	:: holds[w] != 0 && !zombie[w] ->
#ifndef BROKEN_REDISPATCH
		end_turn(holds[w])                   /* kind -1: the turn ends, an error */
#else
		tstate[holds[w]] = QUEUED            /* back to the queue */
#endif
	:: else
	fi;
	holds[w] = 0;
	zombie[w] = false
}

/* ------------------------------------------------------------ the sender */
/* Admits each envelope until it is acked (a crash loses an unacked one:
 * the sender sends it again). */
active proctype sender()
{
	byte e;
end_s:
	do
	:: atomic { ANY(UNSENT) -> e = 1;
		do
		:: UNSENT(e) -> st[e] = ADM; printf("sender: envelope %d admitted (not durable yet)\n", e); break
		:: else -> e++
		od;
		e = 0 }
	od
}

/* ------------------------------------------------------------ the store thread */
/* One group commit: the admissions and deletes queued so far. */
active proctype store()
{
	byte e;
end_c:
	do
	:: atomic { ANY(PENDING) ->
		e = 1;
		do
		:: e <= NE ->
			if
			:: st[e] == ADM -> st[e] = DUR; acked[e] = true;  /* durable, then the ack */
				printf("store: %d durable, acked\n", e)
			:: else
			fi;
			if
			:: del_q[e] ->
#ifndef NO_D2_ASSERT
				assert(ended[e]);            /* D2: durably deleted only after its turn */
#endif
				del_q[e] = false; deleted[e] = true;
				printf("store: %d deleted durably\n", e)
			:: else
			fi;
			e++
		:: e > NE -> break
		od;
		e = 0 }
	od
}

/* ------------------------------------------------------------ the loop thread */
active proctype router()
{
	byte e, w, v, n;
end_r:
	do
	/* s_take_inbox → router_inbox_take: the oldest takeable entry */
	:: atomic { ANY(TAKEABLE) -> e = 1;
		do
		:: TAKEABLE(e) -> break
		:: else -> e++
		od;
		assert(st[e] == DUR);                /* D1 */
		leased[e] = true;
		tstate[e] = QUEUED;                  /* the turn and its broker request */
		printf("router: takes %d (run %d)\n", e, gen);
#ifdef BROKEN_DELETE_AT_TAKE
		del_q[e] = true;                     /* router_inbox_pop: forgotten at once */
#endif
		e = 0 }
	/* s_dispatch: the oldest queued request to an idle known worker */
	:: atomic { ANY(WAITING) && (IDLE(0) || (NW > 1 && IDLE(1))) -> e = 1;
		do
		:: WAITING(e) -> break
		:: else -> e++
		od;
		if
		:: IDLE(0) -> w = 0
		:: NW > 1 && IDLE(1) -> w = 1
		fi;
		assert(known[w]);                    /* D4 */
		/* D3: nobody else works on e under this lease */
		d3_count(e, v, n);
		assert(n == 0);
		holds[w] = e; zombie[w] = false;
		tstate[e] = HELD;
		toW[w]!e, gen;
		printf("broker: REQUEST %d to worker %d\n", e, w);
		e = 0; w = 0; v = 0; n = 0 }
	/* s_beat: a silent worker is declared dead */
	:: atomic { known[0] && (wdead[0] || expiries < MAXEXP) ->
		if :: !wdead[0] -> expiries++ :: else fi;
		forget_worker(0) }
	:: atomic { NW > 1 && known[1] && (wdead[1] || expiries < MAXEXP) ->
		if :: !wdead[1] -> expiries++ :: else fi;
		forget_worker(1) }
	/* s_on_turn_timeout of a held turn: an error; the request a zombie */
	:: atomic { timeouts < MAXTIMEOUT && (holds[0] != 0 && !zombie[0]) ->
		timeouts++; e = holds[0]; printf("router: turn of %d timed out\n", e); end_turn(e);
#ifndef BROKEN_NO_ZOMBIE
		zombie[0] = true;
#endif
		e = 0 }
	:: atomic { NW > 1 && timeouts < MAXTIMEOUT && (holds[1] != 0 && !zombie[1]) ->
		timeouts++; e = holds[1]; printf("router: turn of %d timed out\n", e); end_turn(e);
#ifndef BROKEN_NO_ZOMBIE
		zombie[1] = true;
#endif
		e = 0 }
	od
}

/* ------------------------------------------------------------ crash and restart */
active proctype daemon()
{
	byte e, w;
end_d:
	do
	:: atomic { crashes < MAXCRASH ->
		crashes++;
		gen++;
		e = 1;
		do
		:: e <= NE ->
			if :: st[e] == ADM -> st[e] = 0 :: else fi;     /* not durable: lost */
			if :: eff[e] > 0 && !deleted[e] -> window[e] = true :: else fi;
			leased[e] = false; del_q[e] = false; tstate[e] = 0; ended[e] = false;
			e++
		:: e > NE -> break
		od;
		w = 0;
		do
		:: w < NW -> known[w] = false; holds[w] = 0; zombie[w] = false; w++
		:: w == NW -> break
		od;
		printf("dispatch: the daemon crashed and restarted (run %d)\n", gen);
		e = 0; w = 0 }
	od
}

/* ------------------------------------------------------------ a worker */
/* A FINAL from w for (e, r): broker.c s_on_reply, then turns.c. */
inline final(w, e, r)
{
	if
	:: known[w] && holds[w] == e && r == gen ->
		holds[w] = 0;
		if
		:: !zombie[w] -> end_turn(e)
		:: zombie[w] -> zombie[w] = false; late++   /* cancelled: dropped */
		fi
	:: known[w] && !(holds[w] == e && r == gen) -> late++
	:: !known[w] -> late++                   /* unknown: DISCONNECT */
	fi
}

proctype worker(byte w)
{
	byte e, r, v, n;
end_w:
	do
	:: atomic { !wdead[w] && wjob[w] == 0 && toW[w]?[e, r] -> toW[w]?e, r;
		wjob[w] = e; wrun[w] = r;
		if
		:: r == gen && leased[e] -> d3_count(e, v, n); assert(n == 1)   /* D3 */
		:: else
		fi;
		e = 0; r = 0; v = 0; n = 0 }
	:: atomic { !wdead[w] && wjob[w] != 0 ->          /* its FINAL */
		e = wjob[w]; r = wrun[w]; wjob[w] = 0; wrun[w] = 0;
		printf("worker %d: FINAL for %d (run %d)\n", w, e, r);
		final(w, e, r);
		e = 0; r = 0 }
	:: atomic { !wdead[w] && wdies < MAXWDIE ->       /* the process dies */
		wdies++; wdead[w] = true; wjob[w] = 0; wrun[w] = 0;
		printf("worker %d: the process dies\n", w);
		do :: toW[w]?_, _ :: empty(toW[w]) -> break od }
	:: atomic { !known[w] && wjob[w] == 0 ->          /* (re)starts or reconnects: READY */
		wdead[w] = false; known[w] = true;
		do :: toW[w]?_, _ :: empty(toW[w]) -> break od }
	od
}

init
{
	byte i;
	atomic {
		do
		:: i < NW -> known[i] = true; run worker(i); i++
		:: i == NW -> break
		od
	}
}

/* L1: every envelope's turn ends (a reply took effect, or an error) and it
 * is durably deleted (all are acked eventually: the sender retries until
 * it is). */
#define FIN(e) (deleted[e] && eff[e] > 0)
ltl all_finished { <> (FIN(1) && (NE < 2 || FIN(2)) && (NE < 3 || FIN(3))) }

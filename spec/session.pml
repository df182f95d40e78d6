/*
 * spec/session.pml — one session's turn queue as router/workers/turns.c runs
 * it (WIRE §19.4, §19.5, §24; the table in WIRE §14.8 maps every variable
 * and step to the C). Checked by tests/integration/test_spin.sh.
 *
 * Modelled: chat messages (router_turns_submit) and inbox entries
 * (s_take_inbox) waiting FIFO in one queue, chat ones bounded (QMAX, 16 in
 * the code: SESSION_BUSY past it); one turn in flight, LOADING (its history
 * being read by the store thread) then RUNNING (its broker request queued,
 * then held by the worker); steer and stop from the chat socket, held per
 * turn and sent only to the worker holding that turn's request; the lock
 * timeout of a waiting chat message; the turn timeout (re-armed while an
 * inbox turn waits for a worker; the stop grace after a stop); one agent
 * worker behind the Majordomo broker that answers, crashes (the broker
 * declares it dead after heartbeat silence: the request ends with kind -1),
 * is declared dead while alive, or hangs. A turn the router ends itself
 * leaves its request a zombie with the worker: the late FINAL is dropped.
 *
 * Properties (each assert names its property in a comment):
 *   S1 never two turns in flight for the session                (start)
 *   S2 turns start in the order their messages arrived (FIFO)   (start)
 *   S3 every message ends in exactly one outcome: done, stopped, error
 *      (a worker error, its death, a timeout) or SESSION_BUSY (the queue
 *      full at submit, or the lock timeout) — none is lost     (checker)
 *   S4 no turn answered twice: one final outcome per message, and a reply
 *      the broker hands the router is for the turn in flight    (resolve, final)
 *   S5 a steer or stop reaches only the worker holding its turn (worker)
 *   S6 no session idle with messages waiting (no turn in flight ⇒ queue empty) (pump)
 *   L1 every chat message is eventually answered, even when the worker
 *      hangs forever holding a turn (the router's turn timeout)   (ltl chat_answered, -DHANG)
 *   L2 with a worker that keeps its contract (answers or dies), every
 *      message, inbox ones included, is eventually answered       (ltl all_answered)
 *   Liveness needs weak fairness (pan -a -f): a timer that stays armed fires.
 *
 * Broken variants (-D…): BROKEN_PUMP_QUEUED (a turn starts when the queue
 * is empty, not when none is in flight: S1), BROKEN_LIFO (the newest waiting
 * message starts first: S2), BROKEN_LOCK_TIMER (the lock timer is not
 * cancelled when its message starts: S4), BROKEN_NO_ZOMBIE (the router's
 * cancel leaves the callback: a late FINAL answers again: S4),
 * BROKEN_ANY_HOLDER (controls go to whichever worker holds a request: S5),
 * BROKEN_STOP_QUEUED (a stop of a queued request forgets the message: S3),
 * BROKEN_NO_TIMEOUT (no router turn timeout: L1 fails with -DHANG),
 * BROKEN_NO_PUMP_AT_END (s_turn_end does not pump: S6), BROKEN_STEER_LEAK
 * (a held steer outlives its turn and reaches the next one: S5),
 * BROKEN_NO_KICK_ON_READY (a worker that joins does not get the request
 * queued while no worker was known: an inbox turn waits for ever, L2).
 *
 * This model replaces spec/turnqueue.pml, the abstract queue written before
 * the code: its T1 and T2 are S1 and S2, T3 is S3 + S4 + L1/L2, T4 (a steer
 * applies only at a tool-loop boundary of the turn it was aimed at; none
 * when no turn runs: NO_ACTIVE_TURN) and T5 (a stop ends only its turn) are
 * S5, with the steer and stop held per turn as turn->controls holds them.
 */

#ifndef NCHAT
#define NCHAT   2          /* chat messages the socket sends */
#endif
#ifndef NINBOX
#define NINBOX  1          /* inbox entries of this session */
#endif
#define N       (NCHAT + NINBOX)
#define QMAX    1          /* chat messages waiting (ROUTER_TURNS_QUEUE_MAX = 16) */
#define MAXIT   1          /* tool-loop boundaries a turn passes */
#ifndef MAXEXP
#define MAXEXP  1          /* a live worker declared dead (missed heartbeats) */
#endif
#ifndef MAXCRASH
#define MAXCRASH 1         /* the worker process dies */
#endif

mtype = { DONE, STOPPED, ERROR, BUSY };     /* outcomes (0: none yet) */
mtype = { REQUEST, STEER, STOP };           /* broker → worker (MDP REQUEST bodies) */
#ifdef BROKEN_NO_TIMEOUT
#define TIMER_ON 0
#else
#define TIMER_ON 1
#endif
#define LOADING 1
#define RUNNING 2

/* ---- messages */
mtype outcome[N + 1];
byte  resolved, chat_resolved;
bool  is_chat[N + 1];
byte  next_id = 1;            /* arrival order, chat and inbox together */
byte  inbox_done;             /* router_inbox_done calls (ghost) */

/* ---- the session (s_session_t) */
byte  q[N];                   /* q_head … q_tail */
byte  qlen, waiting_chat;
bool  lock_armed[N + 1];      /* it->lock_timer */
byte  narmed;                 /* waiting messages whose lock timer runs */

/* ---- the turn in flight (sess->active, s_turn_t) */
byte  cur;                   /* its message, 0: none */
byte  serial;                 /* turn->serial = its broker handle h = its turn_id */
byte  phase;
bool  stop_asked;             /* turn->stop_asked */
byte  steer_for, stop_for;   /* turn->controls not yet sent: the turn each is for, 0: none */
bool  bq;                     /* router_broker_queued(h) */
bool  kick;                   /* an s_dispatch call is due (after a request, a FINAL, a READY) */
byte  in_flight;              /* ghost: turns started, not ended (S1) */
byte  last_started;           /* ghost (S2) */

/* ---- the broker (s_worker_t, s_req_t of the one worker) */
bool  known = true;           /* the worker is registered (READY seen) */
byte  wreq;                   /* h of the request it holds, 0: idle */
bool  zombie;                 /* that request's cb is NULL (router_broker_cancel) */
byte  expiries, late;
chan  toW = [3] of { mtype, byte };   /* the worker's socket, FIFO */

/* ---- the worker's own view (router/workers/mdp_worker.c + agent/) */
byte  wturn;                  /* the turn it runs, 0: none */
byte  wdone;                  /* the turn it last finished (a->done) */
bool  wsteer, wstop;
bool  crashed, hung;

inline resolve(m, what)
{
	assert(outcome[m] == 0);                 /* S4 */
	outcome[m] = what;
	resolved++;
	if :: is_chat[m] -> chat_resolved++ :: else fi;
	printf("session: message %d -> %e\n", m, what)
}

/* s_pump: the next waiting message becomes the turn (history first). */
inline pump()
{
#ifndef BROKEN_PUMP_QUEUED
	if
	:: cur == 0 && qlen > 0 ->
#else
	if
	:: qlen > 0 ->
#endif
#ifndef BROKEN_LIFO
		m = q[0];
		j = 0;
		do :: j + 1 < qlen -> q[j] = q[j + 1]; j++ :: else -> break od;
#else
		m = q[qlen - 1];
#endif
		qlen--;
		q[qlen] = 0;
		if :: is_chat[m] -> waiting_chat-- :: else fi;
		if :: lock_armed[m] -> narmed-- :: else fi;
#ifndef BROKEN_LOCK_TIMER
		lock_armed[m] = false;               /* s_item_unqueue cancels it */
#endif
		in_flight++;
		assert(in_flight == 1);              /* S1 */
		assert(m > last_started);            /* S2 */
		last_started = m;
		cur = m;
		serial++;
		phase = LOADING;
		stop_asked = false;
#ifndef BROKEN_STEER_LEAK
		steer_for = 0; stop_for = 0;         /* the new turn's controls are its own */
#endif
		printf("session: turn %d (message %d) starts\n", serial, m);
		m = 0
	:: else
	fi;
	assert(cur != 0 || qlen == 0)         /* S6 */
}

/* s_turn_end: the final frame went out; cancel the broker request (a held
 * one becomes a zombie), free the controls, finish the item, pump. */
inline end_turn(what)
{
	resolve(cur, what);
	if
	:: bq -> bq = false                      /* a queued request is dropped */
	:: !bq && wreq == serial ->
#ifndef BROKEN_NO_ZOMBIE
		zombie = true
#else
		skip
#endif
	:: else
	fi;
	if :: !is_chat[cur] -> inbox_done++ :: else fi;
	cur = 0;
	phase = 0;
	in_flight--;
#ifndef BROKEN_STEER_LEAK
	steer_for = 0; stop_for = 0;             /* s_turn_end frees turn->controls */
#endif
	stop_asked = false;
#ifndef BROKEN_NO_PUMP_AT_END
	pump();
#endif
	assert(cur != 0 || qlen == 0)           /* S6 */
}

/* A message arrives: router_turns_submit (chat) or s_take_inbox. */
inline arrive(chat)
{
	m = next_id;
	next_id++;
	is_chat[m] = chat;
	if
	:: chat && (cur != 0 || qlen > 0) && waiting_chat >= QMAX ->
		resolve(m, BUSY)                     /* SESSION_BUSY at submit */
	:: else ->
		q[qlen] = m;
		qlen++;
		if
		:: chat -> waiting_chat++;
			if :: cur != 0 -> lock_armed[m] = true; narmed++ :: else fi
		:: else
		fi;
		m = 0;
		pump()
	fi;
	m = 0
}

/* The broker hands a FINAL (kind 1) or a death (kind -1) to the turn. */
inline turn_reply(h, what)
{
	assert(cur != 0 && h == serial);      /* S4: for the turn in flight */
	end_turn(what)
}

/* ------------------------------------------------------------ the chat socket */
active proctype client()
{
	byte m, j;
	byte sent;
	bool steered, stopped;
	do
	:: sent < NCHAT -> atomic { arrive(true); sent++ }
	:: !steered -> atomic {                  /* router_turns_steer */
		steered = true;
		if
		:: cur != 0 && !stop_asked -> steer_for = serial
		:: else -> printf("session: steer -> NO_ACTIVE_TURN\n")
		fi }
	:: !stopped -> atomic {                  /* router_turns_stop */
		stopped = true;
		if
		:: cur == 0 -> printf("session: stop -> stopped, no active turn (to the socket only)\n")
		:: cur != 0 && stop_asked -> skip
		:: cur != 0 && !stop_asked && phase == LOADING -> stop_asked = true
		:: cur != 0 && !stop_asked && phase == RUNNING && bq ->
			stop_asked = true;
#ifndef BROKEN_STOP_QUEUED
			end_turn(STOPPED)                /* "stopped before a worker took it" */
#else
			bq = false; cur = 0; phase = 0; in_flight--; pump()
#endif
		:: cur != 0 && !stop_asked && phase == RUNNING && !bq ->
			stop_asked = true; stop_for = serial  /* STOP control; the grace timer */
		fi }
	:: sent == NCHAT && steered && stopped -> break
	od
}

/* The inbox: admitted entries of this session, leased in order. */
active proctype inbox()
{
	byte m, j;
	byte sent;
	do
	:: sent < NINBOX -> atomic { arrive(false); sent++ }
	:: sent == NINBOX -> break
	od
}

/* ------------------------------------------------------------ the loop thread */

/* The store thread answers the history read: s_on_history. */
active proctype store()
{
	byte m, j;
end_s:
	do
	:: atomic { cur != 0 && phase == LOADING ->
		if
		:: stop_asked -> end_turn(STOPPED)   /* "stopped before it started" */
		:: !stop_asked -> phase = RUNNING; bq = true; kick = true   /* router_broker_request, s_dispatch */
		:: !stop_asked -> end_turn(ERROR)    /* the broker queue is full */
		fi }
	od
}

/* s_on_turn_timeout: agent.turn_timeout_s + grace, or the stop grace. */
active proctype turn_timer()
{
	byte m, j;
end_t:
	do
	:: atomic { TIMER_ON && cur != 0 && phase == RUNNING ->
		if
		:: stop_asked -> end_turn(STOPPED)   /* the worker never sent its FINAL */
		:: !stop_asked && bq && !is_chat[cur] -> skip   /* a durable entry waits */
		:: !stop_asked && !(bq && !is_chat[cur]) ->
			printf("router: turn %d timed out\n", serial); end_turn(ERROR)
		fi }
	od
}

/* s_lock_expired: a waiting chat message gives up with SESSION_BUSY. */
active proctype lock_timer()
{
	byte m, j, i;
end_l:
	do
	:: atomic { narmed > 0 ->                /* the oldest armed one fires first */
		i = 0;
		do
		:: lock_armed[q[i]] -> break
		:: else -> i++
		od;
		m = q[i];
		lock_armed[m] = false;
		narmed--;
		do :: i + 1 < qlen -> q[i] = q[i + 1]; i++ :: else -> break od;
		qlen--; q[qlen] = 0; waiting_chat--;
		resolve(m, BUSY);
		m = 0; i = 0 }
#ifdef BROKEN_LOCK_TIMER
	:: atomic { cur != 0 && lock_armed[cur] -> lock_armed[cur] = false;
		resolve(cur, BUSY) }
#endif
	od
}

/* The broker: s_dispatch, s_controls_flush (send_to_holder), s_beat expiry. */
active proctype broker()
{
	byte m, j;
end_b:
	do
	:: atomic { kick && nfull(toW) ->              /* s_dispatch */
		kick = false;
		if
		:: bq && known && wreq == 0 ->
			bq = false; wreq = serial; zombie = false;
			toW!REQUEST, serial;
			printf("broker: REQUEST of turn %d to the worker\n", serial)
		:: else                              /* no idle worker: the request waits */
		fi }
#ifndef BROKEN_ANY_HOLDER
	:: atomic { (steer_for != 0 || stop_for != 0) && phase == RUNNING && !bq && known &&
	            wreq == serial && !zombie && nfull(toW) ->
#else
	:: atomic { (steer_for != 0 || stop_for != 0) && phase == RUNNING && known &&
	            wreq != 0 && nfull(toW) ->
#endif
		if
		:: steer_for != 0 -> toW!STEER, steer_for; steer_for = 0
		:: else -> toW!STOP, stop_for; stop_for = 0
		fi }
	:: atomic { known && (crashed || expiries < MAXEXP) ->  /* heartbeat silence */
		if :: !crashed -> expiries++ :: else fi;
		known = false;
		printf("broker: the worker is declared dead (holding turn %d)\n", wreq);
		if
		:: wreq != 0 && !zombie -> m = wreq; wreq = 0; turn_reply(m, ERROR)  /* kind -1 */
		:: else -> wreq = 0; zombie = false
		fi;
		m = 0 }
	od
}

/* ------------------------------------------------------------ the worker */

/* A FINAL reaches the broker (s_on_reply in broker.c, then turns.c). */
inline final(h, what)
{
	if
	:: known && wreq == h ->
		wreq = 0;
		kick = true;                         /* the worker is idle: s_dispatch */
		if
		:: !zombie -> turn_reply(h, what)
		:: zombie -> zombie = false; late++  /* cancelled: dropped */
		fi
	:: else -> late++; known = false          /* an unknown worker: DISCONNECT */
	fi
}

active proctype worker()
{
	mtype cmd;
	byte h, m, j, it;
	byte crashes;
end_w:
	do
	:: atomic { !crashed && !hung && toW?[cmd, h] -> toW?cmd, h;
		if
		:: cmd == REQUEST ->
			assert(wturn == 0);              /* the broker sends work only to an idle worker */
			wturn = h; it = 0; wsteer = false; wstop = false
		:: cmd != REQUEST && wturn != 0 ->
			assert(h == wturn);              /* S5 */
			if :: cmd == STEER -> wsteer = true :: else -> wstop = true fi
		:: cmd != REQUEST && wturn == 0 ->
			assert(h == wdone)               /* a control crossing the FINAL: ignored */
		fi }
	:: atomic { !crashed && !hung && wturn != 0 && it < MAXIT && !wstop ->
		it++; wsteer = false }               /* a tool-loop boundary: a steer applies */
	:: atomic { !crashed && !hung && wturn != 0 ->
		h = wturn; wdone = wturn; wturn = 0;
		printf("worker: FINAL of turn %d\n", h);
		if
		:: wstop -> final(h, STOPPED)
		:: !wstop -> final(h, DONE)
		:: !wstop -> final(h, ERROR)         /* provider error, its own deadline */
		fi;
		h = 0 }
	:: atomic { !crashed && !hung && crashes < MAXCRASH ->   /* the process dies */
		crashes++; crashed = true; wturn = 0;
		printf("worker: the process dies\n");
		do :: toW?_, _ :: empty(toW) -> break od }
	:: atomic { !known && wturn == 0 && !hung ->  /* (re)connects: READY */
		crashed = false; known = true;
#ifndef BROKEN_NO_KICK_ON_READY
		kick = true;                         /* s_on_ready ends in s_dispatch */
#endif
		printf("worker: READY\n");
		do :: toW?_, _ :: empty(toW) -> break od }
#ifdef HANG
	:: atomic { !crashed && wturn != 0 -> hung = true }   /* heartbeats, never answers */
#endif
	od
}

/* S3: when nothing can move, every message has its outcome and every
 * inbox entry was finished once. */
active proctype checker()
{
	timeout ->
		assert(resolved == N && inbox_done == NINBOX && qlen == 0 && cur == 0)
}

ltl all_answered { <> (resolved == N) }
ltl chat_answered { <> (chat_resolved == NCHAT) }

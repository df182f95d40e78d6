/*
 * spec/ack.pml — Promela model of kith's signed-envelope delivery: a sender,
 * the connections it opens, and a receiver with a bounded inbox, a bounded
 * replay window and acks (DESIGN §8; spec/WIRE.md §14 has the results).
 *
 * Checked exhaustively by tests/integration/test_spin.sh, by hand:
 *   spin -a ack.pml && gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c && ./pan
 * (all faults at once, ~4 M states) and the ltl claim with `pan -a`.
 * Configuration macros (spin -D…): NO_SIGTERM, MAXLOSS=n, MAXRESET=n,
 * MAXBAD=n, INBOX=n, WINDOW=n narrow or widen the search; REACK_ADMITTED
 * models the idempotent re-ack DESIGN did not choose; CRASH adds one
 * crash-and-restart (kill -9, or a restart after SIGTERM): memory is lost,
 * the durable state is recovered; each BROKEN_* macro
 * breaks one rule and spin must then report an error (ack_broken.pml is
 * BROKEN_ACK_EARLY); NO_ORDER_ASSERT switches P1 off to show P2 alone.
 *
 * What is abstracted: an envelope is (id, kind, defect). Ids 1..NIDS are
 * UUIDv7 ids in time order, so "older" is "smaller". `defect` stands for
 * every check before the replay window (frame size, decode, signature,
 * addressed to us, sender trusted), which all end in a typed close. Clocks
 * are not modelled: an id outside ±5 min is refused like one below the
 * floor, so the floor covers both.
 *
 * Properties (assertions; each names the DESIGN promise it checks):
 *   P1 nothing is acked before it is admitted          (send_ack)
 *   P2 nothing acked is lost, also across SIGTERM       (monitor)
 *   P3 acks on one connection come back in order       (sender_conn)
 *   P4 a replay is never admitted twice, also across a restart (admit)
 *   P5 a full inbox refuses (inbox_full + close) rather than drops: the
 *      sender never waits out its timeout for an envelope that was neither
 *      lost by the network nor answered                (sender_conn)
 *   P6 nothing is admitted once SIGTERM has begun      (admit)
 *   P7 an orderly close (rejection, SIGTERM) tells the truth: unless the
 *      network lost something, every message admitted from a connection
 *      was acked on it before the close, so unacked means not admitted
 *                                                      (sender_conn)
 * Liveness (LTL `resolved`): every connection the sender opens is
 * eventually resolved (all acked, closed, or timed out).
 */

/* ------------------------------------------------------------ sizes */
/* Kept tiny so the exhaustive search takes seconds: 3 ids fill a window of
 * 2 (eviction happens) and an inbox of 2 (inbox_full happens). */
#define NIDS     3      /* envelopes 1..NIDS; the last one is a response */
#define RESP_ID  NIDS   /* a `response`: admitted, never acked */
#ifndef INBOX
#define INBOX    2      /* inbox capacity (comms.inbox_capacity) */
#endif
#ifndef WINDOW
#define WINDOW   2      /* replay window capacity per peer */
#endif
#define NCONN    2      /* the first connection and one retry connection */
#define QLEN     NIDS   /* envelopes or acks in flight per direction */
#ifndef MAXLOSS
#define MAXLOSS  1      /* envelopes or acks the network may lose */
#endif
#ifndef MAXRESET
#define MAXRESET 1      /* connections the network may reset */
#endif
#ifndef MAXBAD
#define MAXBAD   1      /* envelopes the sender may get wrong */
#endif

mtype = { MSG, RESP };                  /* kind.type: message|request, response */
/* Rejection reasons. BAD stands for the five checks before the replay
 * window (oversize, malformed, invalid_signature, misaddressed,
 * untrusted_sender): all five end the same way, a typed close, so the
 * model folds them into one to keep the search small. */
mtype = { OK, BAD, REPLAY, INBOX_FULL };

/* ------------------------------------------------------------ state */
chan wire[NCONN] = [QLEN] of { byte, mtype, mtype };  /* sender → receiver: id, kind, defect */
chan acks[NCONN] = [QLEN] of { byte };                /* receiver → sender: acked id */
chan owed[NCONN] = [QLEN] of { byte };   /* admitted, ack not yet released (durability) */
bool refused[NCONN];  /* the receiver refused an envelope: stop reading, close when owed is empty */
bool opened[NCONN];   /* the sender has connected */
bool fin[NCONN];      /* the sender has finished writing (orderly EOF) */
bool closed[NCONN];   /* the receiver closed, or the network reset it */
bool lost[NCONN];     /* an envelope or ack was lost on this connection */
byte losses;          /* network losses so far, ≤ MAXLOSS */
byte resets;          /* network resets so far, ≤ MAXRESET */
byte bads;            /* defective envelopes sent so far, ≤ MAXBAD */

chan inbox = [INBOX] of { byte };   /* admitted envelopes, waiting for a worker */
byte admits[NIDS + 1];              /* times each id was admitted (P4: ≤ 1) */
byte admitted_on[NIDS + 1];         /* 1 + the connection it was admitted from */
bool consumed[NIDS + 1];            /* a worker took it from the inbox */
bool acked[NIDS + 1];               /* the sender holds an ack for it */
bool durable[NIDS + 1];             /* its admission is committed (entry and seen row) */
bool seen_db[NIDS + 1];             /* the `seen` table: committed with the admission */
byte floor_db;                      /* the stored floor (replay_floor) */
bool crashed;                       /* the one crash has happened */

chan window = [WINDOW] of { byte };  /* the replay window, in arrival order */
bool seen[NIDS + 1];  /* id is in the window (for lookup) */
byte floor;           /* ids ≤ floor are refused as replays (forgotten ids) */

bool stopping;        /* SIGTERM received: stop accepting, flush acks, close */
byte resolved_conns;  /* sender connections that reached a verdict */

/* The head of owed[c] is durable: its ack may go. Lists every id. */
#define OWED_DURABLE(c) ((owed[c]?[1] && durable[1]) || (owed[c]?[2] && durable[2]) || \
                         (owed[c]?[3] && durable[3]))

/* An acked id is kept: still in the inbox, or taken by a worker. Lists
 * every id: change it with NIDS. */
#define KEPT(i)   (!acked[i] || inbox??[eval(i)] || consumed[i])
#define ALL_KEPT  (KEPT(1) && KEPT(2) && KEPT(3))

/* ------------------------------------------------------------ receiver */

/* A refusal (router/comms/comms.c s_refuse): stop reading and discard what is
 * unread; the connection closes once the acks owed for earlier admissions
 * have been sent (see receiver), so the sender fails fast but never loses an
 * ack it earned. */
inline refuse(c, reason)
{
	printf("router: conn %d refuses, reason %e\n", c, reason);
	refused[c] = true;
	do
	:: wire[c]?_, _, _
	:: empty(wire[c]) -> break
	od
}

/* router_conn_close: an orderly close (FIN after the queued bytes), so the
 * acks already written stay readable by the peer. */
inline conn_close(c)
{
	printf("router: conn %d closed\n", c);
	closed[c] = true;
	do
	:: wire[c]?_, _, _
	:: empty(wire[c]) -> break
	od;
#ifdef BROKEN_ABORT_CLOSE
	/* close at once with SO_LINGER 0: an RST that throws away the acks
	 * queued or still owed */
	do
	:: acks[c]?_
	:: owed[c]?_
	:: empty(acks[c]) && empty(owed[c]) -> break
	od
#else
	skip
#endif
}

/* proto_envelope_ack_frame + router_conn_send: the signed ack goes onto the
 * connection's send queue. The network may lose it. */
inline send_ack(c, i)
{
#ifndef NO_ORDER_ASSERT
	assert(inbox??[eval(i)] || consumed[i]);    /* P1 */
#endif
	if
	:: losses < MAXLOSS -> losses++; lost[c] = true;
		printf("network: conn %d loses the ack for %d\n", c, i)
	:: true -> acks[c]!i; printf("router: conn %d acks %d\n", c, i)
	fi
}

/* router_replay_check_insert, insert half: remember an admitted id. When
 * the window is full the id remembered first is forgotten and the floor
 * raised to its time, so a forgotten id is still refused: the window
 * forgets, the floor doesn't. (router/comms/replay.c evicts in arrival order too.) */
inline window_insert(i)
{
	if
	:: nfull(window) -> window!i; seen[i] = true
	:: full(window) ->
		window?j;
		seen[j] = false;
#ifndef BROKEN_FORGET
		if :: j > floor -> floor = j :: else fi;
#endif
		window!i; seen[i] = true;
		j = 0
	fi
}

/* router_inbox_admit: admission, remembered by the replay window, and (for
 * message/request) an ack owed on this connection, released in admission
 * order once the admission is durable. */
inline admit(c, i, k)
{
	assert(!stopping);                     /* P6 */
	inbox!i;
	printf("router: conn %d admits %d to the inbox\n", c, i);
	admits[i]++;
	assert(admits[i] == 1);                /* P4 */
	admitted_on[i] = c + 1;
	window_insert(i);
#ifndef BROKEN_ACK_EARLY
	if :: k == MSG -> owed[c]!i :: else fi
#endif
}

/* One envelope through the pipeline of DESIGN §8, in its order
 * (router/comms/comms.c s_on_frame). */
inline on_envelope(c, i, k, d)
{
	if
	:: d != OK -> refuse(c, d)   /* size, decode, signature, addressed, trust */
	:: else ->
		if
#ifndef REACK_ADMITTED
		:: seen[i] || i <= floor -> refuse(c, REPLAY)
#else
		/* The alternative DESIGN does not take: a replay of an id still in
		 * the window is acked again, admitted nothing, and the connection
		 * stays open; only a forgotten id (≤ floor) is refused. */
		:: seen[i] && k == MSG -> owed[c]!i
		:: (seen[i] && k != MSG) || (!seen[i] && i <= floor) -> refuse(c, REPLAY)
#endif
		:: else ->
#ifdef BROKEN_ACK_EARLY
			/* Meerkat's order: ack on receipt, then try to admit. */
			if :: k == MSG -> send_ack(c, i) :: else fi;
#endif
			if
			:: nfull(inbox) -> admit(c, i, k)
			:: full(inbox) ->
#ifndef BROKEN_DROP_FULL
				refuse(c, INBOX_FULL)
#else
				printf("router: conn %d drops %d, inbox full\n", c, i)
#endif
			fi
		fi
	fi
}

/* The router's side of one connection. Each envelope is handled in one
 * atomic step: the router thread runs the whole pipeline before it looks at
 * anything else. Owed acks are released in separate steps, whenever the
 * inbox reports the admissions durable, so anything may happen in between. */
proctype receiver(byte c)
{
	byte i, j;
	mtype k, d;

	do
	:: closed[c] -> break
	:: atomic { !closed[c] && OWED_DURABLE(c) ->
		/* s_release: the admission is durable, send its ack */
		owed[c]?i;
		send_ack(c, i);
		i = 0
	   }
	:: atomic { !closed[c] && !refused[c] && !stopping && nempty(wire[c]) ->
		wire[c]?i, k, d;
		printf("router: conn %d reads %d (%e, %e)\n", c, i, k, d);
		on_envelope(c, i, k, d);
		i = 0; k = 0; d = 0
	   }
	/* Close once nothing is owed: after a refusal, on SIGTERM (the drain:
	 * reading has stopped, owed acks are flushed first; the inbox is kept,
	 * not dropped), or when the sender has finished and everything is read. */
#ifndef BROKEN_ABORT_CLOSE
	:: atomic { !closed[c] && empty(owed[c]) &&
	            (refused[c] || stopping || (fin[c] && empty(wire[c]))) -> conn_close(c) }
#else
	:: atomic { !closed[c] && refused[c] -> conn_close(c) }
	:: atomic { !closed[c] && !refused[c] && empty(owed[c]) &&
	            (stopping || (fin[c] && empty(wire[c]))) -> conn_close(c) }
#endif
	od
}

/* ------------------------------------------------------------ sender */

/* One outbound connection: pipeline every envelope in `mask` (bit i = id i),
 * in id order, then read acks until all are in, the peer closes, or nothing
 * more can happen (the 30 s ack timeout). */
proctype sender_conn(byte c; byte mask)
{
	byte i = 1, last = 0, a, want = 0;
	mtype d;

	/* Write the whole batch in one step: the receiver may still take its
	 * time over each envelope, and an envelope written after a rejection
	 * would only be discarded unread, so nothing observable is lost. */
	atomic {
		do
		:: i > NIDS -> break
		:: i <= NIDS && (mask & (1 << i)) == 0 -> i++
		:: i <= NIDS && (mask & (1 << i)) != 0 ->
			d = OK;
			if
			:: bads < MAXBAD -> bads++; d = BAD
			:: true
			fi;
			if
			:: i == RESP_ID -> skip
			:: else -> want++
			fi;
			if
			:: losses < MAXLOSS -> losses++; lost[c] = true;
				printf("network: conn %d loses envelope %d\n", c, i)
			:: true -> wire[c]!i, (i == RESP_ID -> RESP : MSG), d;
				printf("sender: conn %d writes %d (%e)\n", c, i, d)
			fi;
			i++; d = OK
		od
	}

	do
	:: atomic { nempty(acks[c]) ->
		/* take every ack that has arrived, in one step */
		do
		:: acks[c]?a ->
			assert((mask & (1 << a)) != 0 && a != RESP_ID); /* P3: ours, not a response */
			assert(a > last);                               /* P3: in order */
			last = a;
			acked[a] = true;
			printf("sender: conn %d holds the ack for %d\n", c, a);
			want--
		:: empty(acks[c]) -> break
		od;
		a = 0
	   }
	:: want == 0 -> break
	:: atomic { closed[c] && empty(acks[c]) ->           /* rejected or reset: fail fast */
		printf("sender: conn %d closed by the peer, %d unacked\n", c, want);
		/* P7: an orderly close tells the truth: every message admitted
		 * from this connection has been acked before the close. */
		a = 1;
		do
		:: a > NIDS -> break
		:: a <= NIDS ->
			assert(lost[c] || a == RESP_ID || admitted_on[a] != c + 1 || acked[a]);
			a++
		od;
		a = 0;
		break
	   }
	:: timeout ->
		printf("sender: conn %d ack timeout, %d unacked: peer offline\n", c, want);
		assert(lost[c]);                                  /* P5 */
		break
	od;
	fin[c] = true;
	resolved_conns++
}

/* The sending peer: one connection, then perhaps a retry connection that
 * resends, with the same ids, any subset of the envelopes (an honest retry
 * of unacked ones, or a replay of acked ones by a confused or hostile peer). */
active proctype sender()
{
	byte mask = 0;

	opened[0] = true;
	run receiver(0);
	run sender_conn(0, 14);     /* ids 1, 2, 3 */
	if
	:: atomic { !stopping ->
		if :: mask = mask | 2 :: skip fi;
		if :: mask = mask | 4 :: skip fi;
		if :: mask = mask | 8 :: skip fi;
		opened[1] = true;
		run receiver(1);
		run sender_conn(1, mask);
		mask = 0
	   }
	:: skip
	fi
}

/* ------------------------------------------------------------ environment */

/* An agent worker taking admitted envelopes from the inbox; it sees only
 * durable ones (router_inbox_pop). Lists every id. */
active proctype worker()
{
end_idle:
	do
	:: atomic { inbox?[1] && durable[1] -> inbox?_; consumed[1] = true; printf("worker: takes 1\n") }
	:: atomic { inbox?[2] && durable[2] -> inbox?_; consumed[2] = true; printf("worker: takes 2\n") }
	:: atomic { inbox?[3] && durable[3] -> inbox?_; consumed[3] = true; printf("worker: takes 3\n") }
	od
}

/* The inbox's store thread: one group commit writes every admission not
 * yet durable together with its seen row, and the floor as it stands (the
 * watermark raised by that admission's eviction), in one transaction. */
active proctype store()
{
	byte i;
end_store:
	do
	:: atomic { (admits[1] && !durable[1]) || (admits[2] && !durable[2]) ||
	            (admits[3] && !durable[3]) ->
		i = 1;
		do
		:: i > NIDS -> break
		:: i <= NIDS ->
			if
			:: admits[i] && !durable[i] -> durable[i] = true; seen_db[i] = true
			:: else
			fi;
			i++
		od;
		if :: floor > floor_db -> floor_db = floor :: else fi;
		printf("store: commit\n");
		i = 0
	   }
	od
}

#ifdef CRASH
/* kill -9 (or SIGTERM then a restart: the same, less abrupt): every
 * connection dies as on a reset, memory is lost — the replay window, its
 * floor, admissions not yet committed (never acked, never seen by a
 * worker, so never observable) — and the restarted router rebuilds the
 * window from the seen table and the stored floor (router_inbox_seen_load,
 * router_replay_seed, router_replay_seed_floor). */
active proctype crash()
{
	byte i, j, n;
end_up:
	atomic { !crashed && (admits[1] || admits[2] || admits[3]) ->
		crashed = true;
		printf("router: crash and restart\n");
		i = 0;
		do
		:: i >= NCONN -> break
		:: i < NCONN ->
			if
			:: opened[i] && !closed[i] -> closed[i] = true; lost[i] = true
			:: else
			fi;
			do
			:: wire[i]?_, _, _ -> lost[i] = true
			:: acks[i]?_ -> lost[i] = true
			:: owed[i]?_ -> lost[i] = true
			:: empty(wire[i]) && empty(acks[i]) && empty(owed[i]) -> break
			od;
			i++
		od;
		/* the inbox keeps what was committed */
		n = len(inbox);
		do
		:: n == 0 -> break
		:: n > 0 -> inbox?i; if :: durable[i] -> inbox!i :: else fi; n--
		od;
		i = 1;
		do
		:: i > NIDS -> break
		:: i <= NIDS ->
			if :: admits[i] && !durable[i] -> admits[i] = 0; admitted_on[i] = 0 :: else fi;
			seen[i] = false;
			i++
		od;
		do
		:: window?_
		:: empty(window) -> break
		od;
		floor = 0;
#ifndef BROKEN_VOLATILE_REPLAY
		/* recovery: the newest ids, oldest first, then the stored floor */
		i = 1;
		do
		:: i > NIDS -> break
		:: i <= NIDS -> if :: seen_db[i] -> window_insert(i) :: else fi; i++
		od;
		if :: floor_db > floor -> floor = floor_db :: else fi;
#endif
		i = 0; j = 0; n = 0
	}
}
#endif

/* The network: may reset one open connection (MAXRESET = 1), losing what
 * is in flight in both directions (an RST, not an orderly close). */
inline reset(c)
{
	resets++;
	closed[c] = true;
	printf("network: conn %d reset\n", c);
	do
	:: wire[c]?_, _, _ -> lost[c] = true
	:: acks[c]?_ -> lost[c] = true
	:: owed[c]?_ -> lost[c] = true
	:: empty(wire[c]) && empty(acks[c]) && empty(owed[c]) -> break
	od
}

active proctype network()
{
end_quiet:
	if
	:: atomic { resets < MAXRESET && opened[0] && !closed[0] -> reset(0) }
	:: atomic { resets < MAXRESET && opened[1] && !closed[1] -> reset(1) }
	fi
}

/* SIGTERM, at any moment or never. */
active proctype sigterm()
{
	if
#ifndef NO_SIGTERM
	:: stopping = true;
		printf("router: SIGTERM\n");
#ifdef BROKEN_SHUTDOWN
		/* exit without handing over the inbox */
		atomic { do :: inbox?_ :: empty(inbox) -> break od }
#endif
#endif
	:: skip
	fi
}

/* P2: whatever the sender holds an ack for is in the inbox or was taken by a
 * worker, in every reachable state. */
active proctype monitor()
{
end_watch:
	atomic { !ALL_KEPT -> assert(ALL_KEPT) }
}

/* Every connection opened is resolved. Checked with `pan -a`: the model has
 * no cycle other than the final stutter (every loop consumes a message), so
 * weak fairness (-f) would change nothing. */
ltl resolved { <> [] (resolved_conns == opened[0] + opened[1]) }

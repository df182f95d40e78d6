/*
 * spec/ack.pml — Promela model of kith's signed-envelope delivery as the C
 * code runs it: a sender (router/comms/outbound.c) and its connections; a
 * receiver (router/comms/comms.c) with the replay window
 * (router/comms/replay.c), the bounded inbox and its store thread
 * (router/state/inbox.c), the drain on SIGTERM, and a crash followed by a
 * restart that rebuilds the inbox and the window from what was committed
 * (router/node.c s_seed_replay). spec/WIRE.md §14 has the results and, in
 * §14.5, the table from every variable and step here to the C.
 *
 * Checked by tests/integration/test_spin.sh in configurations that split
 * the faults (0.3–0.7 M states each; L1 0.37 M under weak fairness);
 * everything at once (-DCRASH) is 8.8 M states, no error. By hand:
 *   spin -DCRASH -a ack.pml && gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c && ./pan
 * Configuration macros (spin -D…): NO_SIGTERM, CRASH (one kill -9 and
 * restart), MAXCUT=n (partitions), MAXRESET=n, MAXBAD=n, NO_HALFCLOSE,
 * NO_SAMELINK (no resend on the link after a timeout), STALL_FOREVER (the
 * store's commits may fail for ever: for the liveness check), INBOX=n,
 * WINDOW=n; REACK_ADMITTED models the idempotent re-ack DESIGN did not
 * choose. Each BROKEN_* macro breaks one rule and spin must then report the
 * property it names (WIRE §14.4); NO_P1 switches P1 off to show P2 alone.
 *
 * What is abstracted: an envelope is (id, kind, defect). Ids 1..NIDS are
 * UUIDv7 ids in time order, so "older" is "smaller". `defect` stands for
 * every check before the replay window (frame size, decode, signature,
 * addressed to us, sender trusted), which all end in a typed refusal.
 * Clocks are not modelled: an id outside ±5 min is refused like one below
 * the floor, so the floor covers both. The model has no time either: a
 * timer "may fire" whenever what it waits for is late (see sender_conn).
 *
 * Properties (each names the DESIGN promise it checks; WIRE §14.2):
 *   P1 acked ⇒ durable: no ack leaves before the transaction that wrote
 *      the envelope and its seen row has committed          (send_ack)
 *   P2 nothing acked is lost, across SIGTERM and a crash: an id the sender
 *      holds an ack for is in the inbox or was taken by a worker (monitor)
 *   P3 acks on one connection come back in the order the envelopes were
 *      written on it, and only for kinds that are acked    (sender_conn)
 *   P4 a replay is never admitted twice, also across a restart (admit)
 *   P5 a full inbox refuses (typed close) rather than drops: a sender
 *      never waits in vain unless the network cut its connection
 *                                                          (sender_conn)
 *   P6 nothing is admitted once SIGTERM has begun          (admit)
 *   P7 "rejected" is true, as the sender can know it: an id whose every
 *      send so far ended in an orderly close without its ack (none timed
 *      out or was reset, none is still waiting, no ack held) is not in
 *      the receiver's inbox and was not taken by a worker   (monitor)
 *   P8 a refusal leaves no trace: an id refused as a replay is in the
 *      inbox or was taken by a worker (WIRE §6)            (on_frame)
 * Liveness (LTL `resolved`, under weak fairness): every connection the
 * sender opens is eventually resolved (each send acked, refused, or timed
 * out), also while the store's commits fail for ever.
 */

/* ------------------------------------------------------------ sizes */
/* Tiny, so the exhaustive search takes seconds: 3 ids fill a window of 2
 * (eviction happens) and an inbox of 2 (inbox_full happens). */
#define NIDS     3      /* envelopes 1..NIDS; the last one is a response */
#define RESP_ID  NIDS   /* a `response`: admitted, never acked */
#ifndef INBOX
#define INBOX    2      /* inbox capacity (comms.inbox_capacity) */
#endif
#ifndef WINDOW
#define WINDOW   2      /* replay window capacity per peer */
#endif
#define NCONN    2      /* the first connection and one retry connection */
#define QLEN     5      /* envelopes in flight: a batch of 3 and a resend of 2 */
#ifndef MAXCUT
#define MAXCUT   1      /* partitions: a connection on which nothing more arrives */
#endif
#ifndef MAXRESET
#define MAXRESET 1      /* connections the network resets (RST) */
#endif
#ifndef MAXBAD
#define MAXBAD   1      /* envelopes the sender gets wrong (checks 1–5) */
#endif

mtype = { MSG, RESP };  /* kind.type: message|request|lifecycle (acked), response */
mtype = { OK, BAD };    /* BAD: fails one of checks 1–5, all a typed refusal */

/* ------------------------------------------------------------ the network */
chan wire[NCONN] = [QLEN] of { byte, mtype };  /* sender → receiver: id (its kind: RESP_ID), defect */
chan acks[NCONN] = [NIDS] of { byte };                /* receiver → sender: the acked id */
bool opened[NCONN];   /* the sender connected */
bool fin[NCONN];      /* the sender shut its write side (EOF after its envelopes) */
bool rclosed[NCONN];  /* the receiver closed orderly: FIN after the acks it wrote */
bool rst[NCONN];      /* reset (RST): the network, the drain timeout, a crash */
bool cut[NCONN];      /* partitioned: nothing more arrives, either way, not even RST */
byte resets, cuts, bads;

/* ------------------------------------------------------------ the receiver */
bool finishing[NCONN];                 /* s_cc_t.finishing: refused, or the sender's EOF */
chan owed[NCONN] = [NIDS] of { byte }; /* s_cc_t.owed: admitted here, in admission order */
bool stopping;        /* SIGTERM: router_comms_drain has begun */

chan inbox = [INBOX + 1] of { byte };  /* the inbox ring, in admission (seq) order; admission
                                        * stops at INBOX, a reload may bring one more (a
                                        * taken entry whose delete was not committed) */
chan pend  = [INBOX] of { byte, byte };  /* admitted, not yet committed: id, the floor it carries */
byte dels;            /* deletes queued by workers, not yet committed (bit i) */
bool consumed[NIDS + 1];   /* a worker took it (router_inbox_take … done) */

chan window = [WINDOW] of { byte };    /* the peer's ring, in insertion order */
byte floor;           /* its watermark: v7 ids ≤ floor are refused */
bool fdirty;          /* floor_dirty: raised since an admission took it */

/* state.db: what survives a crash. What only a restart reads (rows, the
 * seen table's order, the stored floor, the floor an admission carries,
 * deletes) is kept only with CRASH: without a restart it would only tell
 * apart states that behave alike. */
#ifdef CRASH
bool row[NIDS + 1];       /* the inbox table holds it */
chan seen_db = [NIDS] of { byte };  /* the seen table, in seq order (written with the entry) */
byte floor_db;            /* the replay_floor table */
bool crashed, admitted_any;
#define DUR(i)            (seen_db??[eval(i)])
#define COMMIT_ROW(i, f)  row[i] = true; seen_db!i; if :: f > floor_db -> floor_db = f :: else fi
#define QUEUE_DELETE(i)   dels = dels | BIT(i)
#define STORE_WORK        (nempty(pend) || dels != 0)
#define CARRIED(f)        f
#define RAISED            fdirty = true
#define ADMITTED_ANY      admitted_any = true
#else
byte durable;             /* committed ids (bit i): entry and seen row */
#define DUR(i)            ((durable & BIT(i)) != 0)
#define COMMIT_ROW(i, f)  durable = durable | BIT(i)
#define QUEUE_DELETE(i)   skip
#define STORE_WORK        nempty(pend)
#define CARRIED(f)        0
#define RAISED            skip
#define ADMITTED_ANY      skip
#endif

/* ------------------------------------------------------------ the sender */
byte wait[NCONN];     /* ids waiting for their ack on c (bit i): the link's waits */
byte acked[NCONN];    /* ids c delivered an ack for (per-connection acked sets) */
chan wlog[NCONN] = [QLEN] of { byte };  /* ids written on c, in order, not yet acked past */
byte npend[NIDS + 1]; /* sends of id i still waiting */
bool heard_rejected[NIDS + 1], heard_unknown[NIDS + 1];  /* verdicts the sender was told */
byte resolved_conns;

#define BIT(i)     (1 << (i))
#define BEHIND     nempty(pend)   /* admissions not yet durable */
#define ACKED(i)   (((acked[0] | acked[1]) & BIT(i)) != 0)
#define HELD(i)    (inbox??[eval(i)] || consumed[i])
/* The head of owed[c] is durable: its ack may go. Lists every id. */
#define OWED_DURABLE(c) ((owed[c]?[1] && DUR(1)) || (owed[c]?[2] && DUR(2)) || \
                         (owed[c]?[3] && DUR(3)))

/* ------------------------------------------------------------ receiver */

/* proto_envelope_ack_frame + router_conn_send: the ack joins the
 * connection's send queue (lost if the connection is cut). */
inline send_ack(c, i)
{
#ifndef NO_P1
	assert(DUR(i));                           /* P1: acked ⇒ durable */
#endif
	if
	:: cut[c] -> skip
	:: else -> acks[c]!i; printf("router: conn %d acks %d\n", c, i)
	fi
}

/* router_replay_check_insert, insert half (s_insert): when the ring is
 * full its oldest id is evicted and the watermark raised to its time; what
 * was evicted is kept (ev, evf, evd) until the admission is decided. */
inline window_insert(i)
{
	if
	:: full(window) ->
		window?ev; evf = floor; evd = fdirty;
#ifndef BROKEN_FORGET
		if :: ev > floor -> floor = ev; RAISED :: else fi;
#endif
		skip
	:: nfull(window)
	fi;
	window!i
}

/* router_replay_forget after an inbox refusal: the id just inserted is
 * dropped with its room, and the eviction its insert made is undone (the
 * evicted id back at the front, the floor as it was), so the refusal
 * leaves no trace; the floor the admission took goes back to floor_dirty. */
inline window_forget(i)
{
	n = len(window);
	do
	:: n == 0 -> break
	:: n > 0 -> window?h; if :: h != i -> window!h :: else fi; n--
	od;
#ifndef BROKEN_TRACE
	if
	:: ev != 0 ->
		n = len(window);
		window!ev;
		do :: n == 0 -> break :: n > 0 -> window?h; window!h; n-- od;
		floor = evf; fdirty = evd
	:: else
	fi;
#endif
	h = 0;
	if :: floor > 0 -> RAISED :: else fi
}

/* router_inbox_admit: into the ring and onto the store's pending list with
 * its seen row and the floor router_replay_durable_info took; the ack (or,
 * for a response, a place in the ack order) is owed on this connection. */
inline admit(c, i)
{
	assert(!stopping);                                 /* P6 */
	assert(!inbox??[eval(i)] && !consumed[i]);         /* P4 */
	inbox!i;
	pend!i, CARRIED(fl);
	ADMITTED_ANY;
	printf("router: conn %d admits %d\n", c, i);
#ifndef BROKEN_ACK_EARLY
	owed[c]!i
#endif
}

/* s_on_frame: the pipeline of DESIGN §8, in its order. */
inline on_frame(c, i, k, d)
{
	if
	:: d != OK -> finishing[c] = true; printf("router: conn %d refuses %d (checks 1-5)\n", c, i)
	:: else ->
		if
#ifndef REACK_ADMITTED
		:: window??[eval(i)] || i <= floor ->
			assert(HELD(i));                       /* P8: refusals leave no trace */
			finishing[c] = true; printf("router: conn %d refuses %d: replay\n", c, i)
#else
		/* The alternative DESIGN does not take: a replay of an id still in
		 * the window is acked again (once durable) and the connection stays
		 * open; only a forgotten id (≤ floor) is refused. */
		:: window??[eval(i)] && k == MSG -> owed[c]!i
		:: (window??[eval(i)] && k != MSG) || (!window??[eval(i)] && i <= floor) ->
			finishing[c] = true
#endif
		:: else ->
			window_insert(i);
			/* router_replay_durable_info */
			if :: fdirty -> fl = floor; fdirty = false :: else -> fl = 0 fi;
#ifdef BROKEN_ACK_EARLY
			/* Meerkat's old order: ack on receipt, then try to admit. */
			if :: k == MSG -> send_ack(c, i) :: else fi;
#endif
			if
			:: len(inbox) < INBOX -> admit(c, i)
			:: len(inbox) >= INBOX ->
				window_forget(i);
#ifndef BROKEN_DROP_FULL
				finishing[c] = true; printf("router: conn %d refuses %d: inbox_full\n", c, i)
#else
				printf("router: conn %d drops %d, inbox full\n", c, i)
#endif
			fi;
			fl = 0; ev = 0; evf = 0; evd = false
		fi
	fi
}

/* Drops what is unread and what is owed: the connection is gone. */
inline conn_gone(c)
{
	do
	:: wire[c]?_, _
	:: owed[c]?_
	:: empty(wire[c]) && empty(owed[c]) -> break
	od;
	skip
}

#ifdef BROKEN_ACK_UNCOMMITTED
#define RELEASABLE(i) true      /* acks released without waiting for the commit */
#else
#define RELEASABLE(i) DUR(i)
#endif

/* s_release: the acks of the owed admissions that are durable go out, in
 * admission order; then, with nothing owed, a connection that is finishing
 * (refused, or at the sender's EOF) or draining is closed: s_close, the
 * orderly close (FIN after the queued acks). */
inline release(c)
{
#ifdef BROKEN_ACK_ORDER
	/* the newer of two durable admissions acked first */
	go = owed[c]?[1] && owed[c]??[2] && DUR(1) && DUR(2);
	if :: go -> owed[c]??2; send_ack(c, 2) :: else fi;
	go = false;
#endif
	n = len(owed[c]);
	do
	:: n > 0 ->
		owed[c]?<i>;
		if
		:: RELEASABLE(i) -> owed[c]?i; if :: i != RESP_ID -> send_ack(c, i) :: else fi; n--
		:: else -> n = 0
		fi
	:: else -> break
	od;
	i = 0;
	if
#ifndef BROKEN_CLOSE_EARLY
	:: len(owed[c]) == 0 && (finishing[c] || stopping) ->
#else
	:: finishing[c] || stopping ->     /* closes at once: what is owed is never sent */
#endif
		rclosed[c] = true; printf("router: conn %d closes\n", c);
		conn_gone(c)
	:: else
	fi
}

/* s_cc_t, one inbound connection, on the loop thread: each step is one
 * callback run to completion: s_on_data (one frame, then s_release),
 * s_on_eof (then s_release), or s_release after a durable wake-up (posted
 * by the store thread after each commit) or the 50 ms tick. */
proctype receiver(byte c)
{
	byte i, h, n, fl, ev, evf;
	bool evd;
	mtype k, d;
	bool go;

end_recv:
	do
	/* s_on_data: one frame. Reading is paused after a refusal or EOF
	 * (finishing) and by the drain. */
	:: d_step { !rclosed[c] && !rst[c] && !finishing[c] && nempty(wire[c]) &&
#ifndef BROKEN_READ_AFTER_STOP
	            !stopping &&
#endif
	            true ->
		wire[c]?i, d;
		k = (i == RESP_ID -> RESP : MSG);
		on_frame(c, i, k, d);
		i = 0; k = 0; d = 0;
		release(c)
	   }
	/* s_on_eof: the sender shut its write side; the acks owed still go. */
	:: d_step { !rclosed[c] && !rst[c] && !finishing[c] && !stopping && fin[c] &&
	            empty(wire[c]) ->
		finishing[c] = true; printf("router: conn %d EOF\n", c);
		release(c)
	   }
	/* router_comms_release_acks (durable wake-up) or s_on_tick. */
	:: d_step { !rclosed[c] && !rst[c] &&
#ifdef BROKEN_ACK_UNCOMMITTED
	            nempty(owed[c]) ->
#else
	            OWED_DURABLE(c) ->
#endif
		release(c)
	   }
	od
}

/* ------------------------------------------------------------ sender */

/* router_outbound_send for every id in `m`, in id order, on connection c:
 * an acked kind waits for its ack (s_link_send), a response is settled
 * "sent" once written (its 0 ms timer). */
inline write_ids(c, m)
{
	i = 1;
	do
	:: i > NIDS -> break
	:: i <= NIDS && (m & BIT(i)) == 0 -> i++
	:: i <= NIDS && (m & BIT(i)) != 0 ->
		d = OK;
		if :: bads < MAXBAD -> bads++; d = BAD :: true fi;
		wlog[c]!i;
		if :: i != RESP_ID -> wait[c] = wait[c] | BIT(i); npend[i]++ :: else fi;
		if
		:: cut[c] -> skip
		:: else -> wire[c]!i, d
		fi;
		printf("sender: conn %d writes %d (%e)\n", c, i, d);
		i++
	od;
	i = 0; d = OK
}

/* The waits still on c are settled with one verdict (s_on_close, or the
 * ack timers). */
#define REJECTED 1
#define UNKNOWN  2
inline settle(c, verdict)
{
	i = 1;
	do
	:: i > NIDS -> break
	:: i <= NIDS ->
		if
		:: wait[c] & BIT(i) ->
			if :: verdict == REJECTED -> heard_rejected[i] = true :: else -> heard_unknown[i] = true fi;
			npend[i]--
		:: else
		fi;
		i++
	od;
	wait[c] = 0; i = 0
}

/* Every send on c has its verdict: the link is closed (router_conn_close;
 * a kith link left idle is ended by the receiver's idle deadline, the same
 * to the model), which the receiver reads as EOF. */
#define RESOLVED(c) fin[c] = true; resolved_conns++

/* One link (s_link_t): write, then read acks until every send has its
 * verdict. What the sender can know is what it reads: an ack (acked), an
 * orderly end with no ack (rejected), a reset (unknown), or nothing before
 * the ack timeout (unknown). */
proctype sender_conn(byte c; byte mask)
{
	byte i, a, n, m;
	mtype d;
	bool in_order, resent;

	atomic {
		/* the first link writes the response first: then the messages can
		 * meet a full inbox with nothing after them */
		if :: c == 0 -> write_ids(c, 8); write_ids(c, mask & 6) :: else -> write_ids(c, mask) fi
	}
#ifndef NO_HALFCLOSE
	/* A peer may shut its write side at once (one envelope per connection,
	 * as Meerkat does), its acks still owed. */
	if :: c == 1 -> fin[c] = true :: else fi;
#endif
	do
	/* s_on_data → s_on_ack_frame: every ack that has arrived. */
	:: d_step { nempty(acks[c]) ->
		do
		:: acks[c]?a ->
			in_order = false;
			do
			:: wlog[c]?n -> if :: n == a -> in_order = (a != RESP_ID); break :: else fi
			:: empty(wlog[c]) -> break
			od;
			assert(in_order);                          /* P3 */
			if
			:: wait[c] & BIT(a) ->
				wait[c] = wait[c] & ~BIT(a); acked[c] = acked[c] | BIT(a); npend[a]--;
				printf("sender: conn %d acked %d\n", c, a)
			:: else   /* an ack for nothing we wait on (it timed out): ignored */
			fi
		:: empty(acks[c]) -> break
		od;
		a = 0; n = 0; in_order = false
	   }
	/* s_on_eof / s_on_close: an orderly end with no ack is a refusal. */
	:: d_step { rclosed[c] && !cut[c] && empty(acks[c]) ->
		printf("sender: conn %d closed orderly\n", c);
		settle(c, REJECTED); RESOLVED(c) }; break
	/* s_on_close, ROUTER_CLOSE_ERROR: a reset leaves the outcome unknown. */
	:: d_step { rst[c] && !cut[c] ->
		printf("sender: conn %d reset\n", c);
		settle(c, UNKNOWN); RESOLVED(c) }; break
#ifndef BROKEN_NO_TIMEOUT
	/* s_on_ack_timeout: the 30 s timer, racing a store that is behind (a
	 * slow or failing disk) or a cut connection. The link stays open: a
	 * late ack is ignored, and the sender may resend on it. */
	:: atomic { wait[c] != 0 && (BEHIND || cut[c]) ->
		m = wait[c];
		printf("sender: conn %d ack timeout\n", c);
		settle(c, UNKNOWN);
#ifndef NO_SAMELINK
		if
		:: c == 0 && !resent && !rclosed[c] && !rst[c] -> resent = true; write_ids(c, m)
		:: else
		fi;
#endif
		m = 0 }
#endif
	:: d_step { wait[c] == 0 -> RESOLVED(c) }; break
	/* Nothing else can happen and an ack is still awaited: the timeout. */
	:: timeout ->
		assert(cut[c]);                                    /* P5 */
		d_step { settle(c, UNKNOWN); RESOLVED(c) }; break
	od
}

/* The sending peer: one connection, then perhaps, at any moment, a retry
 * connection that resends with the same ids id 1, id 2, both, or the
 * response
 * (an honest retry of unacked ones, or a replay of acked ones by a confused
 * or hostile peer). After SIGTERM the receiver's listeners are closed: a
 * connection is refused (reset). */
active proctype sender()
{
	byte m;
	atomic {
		opened[0] = true;
		if :: stopping -> rst[0] = true :: else fi;   /* listeners closed: refused */
		run receiver(0);
		run sender_conn(0, 14)      /* ids 3 (the response), 1, 2 */
	}
	if
	:: atomic { !stopping ->
		if
		:: m = 2                    /* id 1 */
		:: m = 4                    /* id 2 */
		:: m = 6                    /* ids 1, 2 */
		:: m = 8                    /* id 3, the response */
		fi;
		opened[1] = true;
		run receiver(1);
		run sender_conn(1, m);
		m = 0
	   }
	:: skip
	fi
}

/* ------------------------------------------------------------ environment */

/* An agent worker: router_inbox_take leases the oldest entry if it is
 * durable; router_inbox_done forgets it and queues its delete. */
active proctype worker()
{
end_idle:
	do
	:: d_step { inbox?[1] && DUR(1) -> inbox?_; consumed[1] = true; QUEUE_DELETE(1);
	               printf("worker: takes 1\n") }
	:: d_step { inbox?[2] && DUR(2) -> inbox?_; consumed[2] = true; QUEUE_DELETE(2);
	               printf("worker: takes 2\n") }
	:: d_step { inbox?[3] && DUR(3) -> inbox?_; consumed[3] = true; QUEUE_DELETE(3);
	               printf("worker: takes 3\n") }
	od
}

/* The store thread (s_store_main): at a flush (after ROUTER_INBOX_FLUSH_MAX_MS,
 * or at ROUTER_INBOX_BATCH_MIN; any moment here) it takes everything
 * admitted and deleted so far and commits it in one transaction
 * (s_db_batch): each entry with its seen row and the floor its admission
 * carried, and the deletes; durable_seq then covers the batch. Taking and
 * committing are one step here: the take is seen by nobody but the store,
 * so a commit of what was taken, with admissions made in between left for
 * the next one, is this step taken earlier, those admissions after it. A
 * failed commit keeps its batch and retries it later: a failure changes
 * nothing but the time, so safety needs no step for it; STALL_FOREVER adds
 * one that may repeat for ever (L1: the sender's timer still resolves). */
active proctype store()
{
	byte i, f;
end_store:
	do
	:: d_step { STORE_WORK ->
		do
		:: pend?i, f -> COMMIT_ROW(i, f)
		:: empty(pend) -> break
		od;
#ifdef CRASH
		i = 1;
		do
		:: i > NIDS -> break
		:: i <= NIDS -> if :: dels & BIT(i) -> row[i] = false :: else fi; i++
		od;
		dels = 0;
#endif
		printf("store: commit\n");
		i = 0; f = 0 }
#ifdef STALL_FOREVER
	:: nempty(pend) -> printf("store: commit failed, retrying\n")
#endif
	od
}

/* The network: resets an open connection (RST, both ends see it, what is
 * in flight is lost), or cuts one (a partition: nothing more arrives at
 * either end, so the sender only has its timer). */
inline net_reset(c)
{
	d_step { resets < MAXRESET && opened[c] && !rclosed[c] && !rst[c] && !cut[c] ->
		resets++; rst[c] = true; printf("network: conn %d reset\n", c);
		conn_gone(c);
		do :: acks[c]?_ :: empty(acks[c]) -> break od }
}

inline net_cut(c)
{
	d_step { cuts < MAXCUT && opened[c] && !rclosed[c] && !rst[c] && !cut[c] ->
		cuts++; cut[c] = true; printf("network: conn %d cut\n", c);
		do :: wire[c]?_, _ :: acks[c]?_ :: empty(wire[c]) && empty(acks[c]) -> break od }
}

#if MAXCUT + MAXRESET > 0
active proctype network()
{
end_quiet:
	do
	:: net_reset(0)
	:: net_reset(1)
	:: net_cut(0)
	:: net_cut(1)
	od
}
#endif

/* SIGTERM at any moment, or never: router_comms_drain (listeners closed,
 * reading paused, s_release_all: what is owed and durable is acked, a
 * connection with nothing owed closes). The drain timeout (10 s) resets
 * what is still open, when the store is behind. */
inline drain_one(c)
{
	if :: opened[c] && !rclosed[c] && !rst[c] -> release(c) :: else fi
}

inline drain_timeout(c)
{
	if
	:: opened[c] && !rclosed[c] && !rst[c] ->
		rst[c] = true; conn_gone(c);
		do :: acks[c]?_ :: empty(acks[c]) -> break od
	:: else
	fi
}

#ifndef NO_SIGTERM
active proctype sigterm()
{
	byte i, n;
	bool go;
	if
	:: d_step {
		stopping = true;
		printf("router: SIGTERM\n");
#ifdef BROKEN_SHUTDOWN
		/* exit without keeping the inbox (and its rows) */
		do :: inbox?_ :: empty(inbox) -> break od;
#endif
		drain_one(0); drain_one(1)
	   }
	   if
	   :: d_step { BEHIND ->
		printf("router: drain timeout\n");
		drain_timeout(0); drain_timeout(1) }
	   :: skip
	   fi
	:: skip
	fi
}
#endif

#ifdef CRASH
/* kill -9 at any moment after an admission, then a restart. Every open
 * connection is reset by the kernel; memory is lost (the ring, the pending
 * list, queued deletes, the window and its floor, owed acks). The restart
 * reloads the inbox from its rows in seq order (s_db_reload) and rebuilds
 * the window from the newest WINDOW seen rows, oldest first, and the stored
 * floor (s_seed_replay: router_inbox_seen_load → router_replay_seed,
 * router_replay_seed_floor). */
active proctype crash()
{
	byte c, i, n, h, ev, evf;
	bool evd;
end_up:
	d_step { !crashed && admitted_any ->
		crashed = true;
		printf("router: crash and restart\n");
		do
		:: c >= NCONN -> break
		:: c < NCONN ->
			if
			:: opened[c] && !rclosed[c] && !rst[c] ->
				rst[c] = true; conn_gone(c);
				if :: !cut[c] -> do :: acks[c]?_ :: empty(acks[c]) -> break od :: else fi
			:: else
			fi;
			c++
		od;
		c = 0;
		do :: inbox?_ :: pend?_, _ :: window?_
		:: empty(inbox) && empty(pend) && empty(window) -> break od;
		dels = 0; floor = 0; fdirty = false; stopping = false;
		/* s_db_reload, then s_seed_replay */
		n = len(seen_db);
		do
		:: n == 0 -> break
		:: n > 0 ->
			seen_db?i; seen_db!i;
			if :: row[i] -> inbox!i :: else fi;
#if defined(BROKEN_VOLATILE_REPLAY)
			/* the window starts empty */
#elif defined(BROKEN_SEED_FROM_INBOX)
			/* the window refilled from the reloaded inbox alone */
			if :: row[i] -> window_insert(i) :: else fi;
#else
			if :: n <= WINDOW -> window!i :: else fi;
#endif
			n--
		od;
#if !defined(BROKEN_VOLATILE_REPLAY) && !defined(BROKEN_SEED_FROM_INBOX)
		floor = floor_db;
#endif
		fdirty = false;
		i = 0
	}
}
#endif

/* P2: whatever the sender holds an ack for is in the inbox or was taken by
 * a worker. P7: the sender's verdict "rejected", from what it read alone,
 * is true. Both are checked in every reachable state. */
#define KEPT(i)    (!ACKED(i) || HELD(i))
#define TOLD_REJECTED(i) (heard_rejected[i] && !heard_unknown[i] && npend[i] == 0 && !ACKED(i))
#define TRUTHFUL(i) (!TOLD_REJECTED(i) || !HELD(i))
active proctype monitor()
{
end_watch:
	if
	:: d_step { !(KEPT(1) && KEPT(2)) -> assert(KEPT(1) && KEPT(2)) }            /* P2 */
	:: d_step { !(TRUTHFUL(1) && TRUTHFUL(2)) -> assert(TRUTHFUL(1) && TRUTHFUL(2)) } /* P7 */
	fi
}

/* L1: every connection opened is resolved. */
ltl resolved { <> [] (resolved_conns == opened[0] + opened[1]) }

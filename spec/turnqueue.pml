/*
 * spec/turnqueue.pml — Promela model of one session's turn queue (DESIGN §6):
 * one turn in flight, later messages queued FIFO up to a bound (SESSION_BUSY
 * past it), a queued message that waits too long times out, steer applies at
 * the next tool-loop boundary of the turn it was aimed at, stop cancels it.
 * Checked by tests/integration/test_spin.sh (safety, and the ltl claim).
 *
 * Properties:
 *   T1 at most one turn is in flight                     (start_turn)
 *   T2 turns start in the order their messages arrived   (start_turn)
 *   T3 every message gets exactly one outcome: done, stopped, SESSION_BUSY or
 *      timed out — none lost, none answered twice          (resolve, ltl)
 *   T4 a steer is applied only to the turn it was aimed at; one that finds
 *      no turn is answered NO_ACTIVE_TURN                  (worker)
 *   T5 a stop cancels only the turn it was aimed at       (worker)
 * Broken variants: BROKEN_TWO_TURNS (a message starts a turn without checking
 * the one in flight), BROKEN_STEER_LEAK (a steer left over from a finished
 * turn is applied to the next one).
 */

#define NMSG   4     /* chat messages the client sends, ids 1..NMSG in order */
#define QMAX   2     /* waiting messages (DESIGN §10: 16) */
#define MAXIT  2     /* tool-loop iterations a turn may take */

mtype = { DONE, STOPPED, BUSY, TIMED_OUT };  /* outcomes; 0 = not yet answered */

chan waiting = [QMAX] of { byte };  /* FIFO of queued message ids */
byte in_flight;                     /* the message whose turn is in flight, 0 = none */
byte turns;                         /* ghost: turns started and not ended (T1) */
byte last_started;                  /* for T2 */
mtype outcome[NMSG + 1];            /* each message's one answer */
byte resolved;                      /* messages answered */

byte steer_for;                     /* the turn a pending steer is aimed at, 0 = none */
byte stop_for;                      /* the turn a pending stop is aimed at, 0 = none */
byte steers_applied;                /* ghost: how many steers took effect */

/* Give message m its one answer (T3). */
inline resolve(m, what)
{
	assert(outcome[m] == 0);
	outcome[m] = what;
	resolved++;
	printf("session: message %d -> %e\n", m, what)
}

inline start_turn(m)
{
	turns++;
	assert(turns == 1);                /* T1 */
	assert(m > last_started);          /* T2 */
	last_started = m;
	in_flight = m;
	printf("session: turn %d starts\n", m)
}

/* The turn ends: answer it, drop whatever steer or stop was aimed at it,
 * start the next waiting message. */
inline end_turn(what)
{
	resolve(in_flight, what);
	turns--;
#ifndef BROKEN_STEER_LEAK
	if :: steer_for == in_flight -> steer_for = 0 :: else fi;
#endif
	if :: stop_for == in_flight -> stop_for = 0 :: else fi;
	in_flight = 0;
	if
	:: waiting?nxt -> start_turn(nxt); nxt = 0
	:: empty(waiting) -> skip
	fi
}

/* The chat socket: messages in order, and at any moment one steer and one
 * stop, aimed at whatever turn is in flight when they arrive. */
active proctype client()
{
	byte m = 1;
	bool steered = false, stopped = false;

	do
	:: m <= NMSG ->
		atomic {
			if
#ifndef BROKEN_TWO_TURNS
			:: in_flight == 0 -> start_turn(m)
#else
			:: empty(waiting) -> start_turn(m)   /* "nothing queued" taken for "idle" */
#endif
			:: in_flight != 0 && nfull(waiting) -> waiting!m; printf("session: message %d waits\n", m)
			:: in_flight != 0 && full(waiting) -> resolve(m, BUSY)
			fi;
			m++
		}
	:: !steered ->
		atomic {
			steered = true;
			if
			:: in_flight == 0 -> printf("session: steer -> NO_ACTIVE_TURN\n")
			:: else -> steer_for = in_flight
			fi
		}
	:: !stopped ->
		atomic {
			stopped = true;
			if
			:: in_flight == 0 -> printf("session: stop -> stopped, no in_flight turn\n")
			:: else -> stop_for = in_flight
			fi
		}
	:: m > NMSG && steered && stopped -> break
	od
}

/* The agent worker running the turn in flight, one tool-loop boundary at a
 * time. */
active proctype worker()
{
	byte it, nxt;
end_idle:
	do
	:: atomic { in_flight != 0 ->
		if
		:: stop_for != 0 ->
			assert(stop_for == in_flight);    /* T5 */
			it = 0;
			end_turn(STOPPED)
		:: stop_for == 0 && it < MAXIT ->
			/* a tool-loop boundary */
			if
			:: steer_for != 0 ->
				assert(steer_for == in_flight);   /* T4 */
				steers_applied++;
				printf("session: steer applied to turn %d\n", in_flight);
				steer_for = 0
			:: else
			fi;
			it++
		:: stop_for == 0 ->
			it = 0;
			end_turn(DONE)
		fi
	   }
	od
}

/* A waiting message whose session lock timeout expires leaves the queue. */
active proctype lock_timer()
{
	byte m;
end_idle:
	do
	:: atomic { waiting?m -> resolve(m, TIMED_OUT); m = 0 }
	od
}

/* T3, liveness: eventually every message is answered. */
ltl answered { <> [] (resolved == NMSG) }

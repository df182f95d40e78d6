/*
 * spec/webhook.pml — X-Idempotency-Key on POST /webhook and POST
 * /sessions/{id}/external-events (WIRE §17.4; the table in WIRE §14.11 maps
 * every variable and step to the C). Checked by
 * tests/integration/test_spin.sh.
 *
 * Modelled: NC clients sending requests with one key K, each retrying after
 * a lost 202, a 409, a 503 or a refusal (a refused body is corrected, a
 * full inbox empties); one handler per client on the gateway's loop (each
 * step atomic: the loop is one thread), so two requests with K are handled
 * concurrently; the gateway's memory mark per key (NONE, BUSY while an
 * admission is owed its commit, DONE with the answer); the inbox's store
 * thread taking every admission waiting (group commit) and committing the
 * batch — entries and their key rows in ONE transaction — or failing (the
 * batch goes back to the list, or is parked when withdrawn meanwhile); a
 * COMMIT whose fsync failed and whose frames the WAL could not be truncated
 * of, so a crash may still recover it: its entries are then in doubt,
 * retried and never withdrawn until a commit settles them; the handler's
 * durability deadline withdrawing an admission that is not durable
 * (router_inbox_withdraw: WITHDRAWN, IS_DURABLE, or COMMITTING and asked
 * again), and its second deadline telling the client the outcome is
 * unknown (503 durability_unknown) while the waiter stays, holding the
 * key, to settle it or free it when the outcome comes; a crash of the
 * daemon that loses memory, every answer in flight and every uncommitted
 * admission — except a batch left in the WAL, which the restart may find
 * committed — and a restart that loads the durable key rows; the key's
 * expiry (24 h: row and mark forgotten, a new lifetime).
 *
 * Properties:
 *   W1 a key is admitted (durably) at most once in its lifetime, across
 *      restarts                                                 (commit)
 *   W2 a 202 goes out only once the entry and its key committed together;
 *      a replayed 202 only for a key whose row is durable        (answers)
 *   W3 two concurrent requests with one key give one admission: within a
 *      run, a second admission of K while one is owed or done   (admit)
 *   W4 a refused request leaves no key: no mark of its own, and nothing of
 *      it that a commit, or a crash's WAL recovery, could still write
 *                                                              (refusals)
 *   L1 a client that keeps retrying eventually gets its 202, under weak
 *      fairness with finitely many faults                   (ltl all_done)
 *
 * Broken variants: BROKEN_TWO_COMMITS (the code before: the key's row
 * written by the token store after the entry is durable, in its own
 * transaction; a crash between them: W1), BROKEN_NO_BUSY (no memory mark
 * while the commit is owed: W3), BROKEN_KEEP_ON_REFUSAL (a refused request
 * keeps its mark: W4, and with W4 off (-DNO_W4_ASSERT) L1: the corrected
 * retries get 409 forever),
 * BROKEN_EARLY_202 (202 at admission, before the commit: W2),
 * BROKEN_TIMEOUT_KEEPS_ENTRY (the deadline frees the key and answers 503
 * but leaves the admission to be committed later — the code before
 * router_inbox_withdraw: W4), BROKEN_DOUBT_WITHDRAWN (an entry whose
 * failed COMMIT may still be in the WAL is withdrawn like any unwritten
 * one — the code before 933c3350: W4, then W1 after a crash).
 */

#define NC 2             /* clients, each with a request using key K */
#ifndef MAXCRASH
#define MAXCRASH 1       /* daemon crashes, each followed by a restart */
#endif
#ifndef MAXFAIL
#define MAXFAIL 2        /* failed commits (each retried) */
#endif
#ifndef MAXTIMEOUT
#define MAXTIMEOUT 1     /* handlers past their durability deadline */
#endif
#ifndef MAXREFUSE
#define MAXREFUSE 1      /* requests refused (bad body, full inbox) */
#endif
#ifndef MAXLOST
#define MAXLOST 1        /* 202s lost on the way (the client retries) */
#endif
#ifndef MAXEXPIRE
#define MAXEXPIRE 1      /* expiries of the key */
#endif
#ifndef MAXUNKNOWN
#define MAXUNKNOWN 1     /* clients told 503 durability_unknown */
#endif

/* client */
#define C_READY 0        /* about to send (again) */
#define C_SENT  1        /* its request is with the gateway */
#define C_DONE  2        /* got a 202 (fresh or replayed) */
/* the handler of a client's request */
#define G_IDLE  0
#define G_NEW   1        /* arrived, not yet handled */
#define G_WAIT  2        /* admitted: its 202 waits for the commit */
#define G_WD    3        /* past the deadline, its commit running: asks again */
#define G_KEYW  4        /* BROKEN_TWO_COMMITS: entry durable, key row queued */
/* the admission of a client's request in the inbox */
#define N_NONE   0
#define N_PEND   1       /* on the unwritten list */
#define N_FLIGHT 2       /* in the commit the store thread runs */
#define N_PARKED 3       /* withdrawn during a commit that failed: never written */
#define N_DUR    4       /* committed (entry and, but for the broken variant, key) */
/* the gateway's memory mark of K */
#define M_NONE 0
#define M_BUSY 1
#define M_DONE 2

byte cs[NC];             /* client */
byte gs[NC];             /* handler */
byte ns[NC];             /* admission */
bool wd[NC];             /* withdrawn while its commit runs */
bool doubt[NC];          /* a failed COMMIT of it may be in the WAL: never withdrawn */
bool wal[NC];            /* ghost: its frames are in the WAL, a crash may recover them */
bool orph[NC];           /* its waiter stays without its client (told the outcome is unknown) */
byte kw[NC];             /* BROKEN_TWO_COMMITS: 0, 1 key row queued, 2 written */
byte mem = M_NONE;       /* memory mark */
byte owner;              /* the request holding the BUSY mark */
bool dkey;               /* K's row is durable */
bool storing;            /* the store thread runs a commit */
byte life_dur;           /* ghost: durable admissions of K in this lifetime */
byte run_adm;            /* ghost: admissions of K in this run and lifetime, not withdrawn */
byte crashes, fails, timeouts, refusals, losts, expiries, unknowns;

#define PEND_ANY (ns[0] == N_PEND || ns[1] == N_PEND)

/* A 202 to client c (the answer may be lost: the client retries). */
inline answer_202(c) {
  gs[c] = G_IDLE;
  if
  :: losts < MAXLOST -> losts++; cs[c] = C_READY; printf("client %d: the 202 is lost\n", c)
  :: true -> cs[c] = C_DONE; printf("client %d: 202\n", c)
  fi
}

/* A refusal (400, 503): W4, then the client retries. */
inline refuse(c) {
#ifndef NO_W4_ASSERT
  assert(!(mem == M_BUSY && owner == c) && ns[c] == N_NONE);  /* W4 */
  assert(!wal[c]);                                             /* W4: nor a crash */
#endif
  printf("client %d: refused\n", c);
  gs[c] = G_IDLE;
  cs[c] = C_READY
}

inline release(c) {
  if
  :: mem == M_BUSY && owner == c -> mem = M_NONE
  :: else
  fi
}

/* The entry of c is durable: the 202 may go (s_durable). */
inline durable(c) {
#ifdef BROKEN_TWO_COMMITS
  kw[c] = 1;
  gs[c] = G_KEYW;
  printf("gateway: entry of %d durable, key row queued\n", c)
#else
  assert(ns[c] == N_DUR && dkey);                              /* W2 */
  mem = M_DONE;
  ns[c] = N_NONE;
  answer_202(c)
#endif
}

/* router_inbox_withdraw, and what the handler does with its answer. */
inline withdraw(c) {
  if
  :: ns[c] == N_DUR -> durable(c)                              /* IS_DURABLE */
#ifndef BROKEN_DOUBT_WITHDRAWN
  :: ns[c] == N_PEND && doubt[c] -> gs[c] = G_WD               /* COMMITTING: in doubt */
  :: (ns[c] == N_PEND && !doubt[c]) || ns[c] == N_PARKED ->    /* WITHDRAWN */
#else
  :: ns[c] == N_PEND || ns[c] == N_PARKED ->
#endif
     ns[c] = N_NONE; wd[c] = false;
     if :: run_adm > 0 -> run_adm-- :: else fi;
     release(c);
     refuse(c)                                                 /* 503 not_durable */
  :: ns[c] == N_FLIGHT -> wd[c] = true; gs[c] = G_WD;          /* COMMITTING */
     printf("gateway: %d past its deadline, its commit running\n", c)
  fi
}

/* A client and the handler of its requests. */
proctype client(byte c) {
  do
  :: atomic { cs[c] == C_READY -> cs[c] = C_SENT; gs[c] = G_NEW; printf("client %d: POST, key K\n", c) }
  :: atomic { gs[c] == G_NEW ->
       if
       :: mem == M_DONE ->                                     /* replayed */
          assert(dkey);                                        /* W2 */
          printf("gateway: %d replayed\n", c);
          answer_202(c)
       :: mem == M_BUSY -> gs[c] = G_IDLE; cs[c] = C_READY;    /* 409 */
          printf("client %d: 409\n", c)
       :: mem == M_NONE ->
#ifndef BROKEN_NO_BUSY
          mem = M_BUSY; owner = c;
#endif
          if
          :: refusals < MAXREFUSE ->                           /* 400, 503 inbox_full */
             refusals++;
#ifndef BROKEN_KEEP_ON_REFUSAL
             release(c);
#endif
             refuse(c)
          :: true ->                                           /* admitted */
             assert(run_adm == 0);                             /* W3 */
             run_adm++;
             ns[c] = N_PEND;
             printf("gateway: %d admitted\n", c);
#ifdef BROKEN_EARLY_202
             assert(ns[c] == N_DUR && dkey);                   /* W2 */
#endif
             gs[c] = G_WAIT
          fi
       fi
     }
  :: atomic { gs[c] == G_WAIT && ns[c] == N_DUR -> durable(c) }
  :: atomic { gs[c] == G_WAIT && ns[c] != N_DUR && timeouts < MAXTIMEOUT ->
       timeouts++;
#ifdef BROKEN_TIMEOUT_KEEPS_ENTRY
       release(c);
       refuse(c)
#else
       withdraw(c)
#endif
     }
  :: atomic { gs[c] == G_WD && ns[c] != N_FLIGHT -> withdraw(c) }
  :: atomic { gs[c] == G_WD && unknowns < MAXUNKNOWN ->          /* the second deadline */
       unknowns++;
       orph[c] = true; gs[c] = G_IDLE; cs[c] = C_READY;
       printf("client %d: 503 durability_unknown\n", c) }
#ifdef BROKEN_TWO_COMMITS
  :: atomic { gs[c] == G_KEYW && kw[c] == 2 ->
       assert(dkey);                                           /* W2 */
       kw[c] = 0; mem = M_DONE; ns[c] = N_NONE;
       answer_202(c)
     }
#endif
  :: cs[c] == C_DONE && gs[c] == G_IDLE -> break
  od
}

/* The gateway's poll for waiters left without their client (s_check):
 * its own process, as the poll timer runs whatever the clients do. */
proctype orphans() {
  byte c;
end:
  do
  :: atomic { (orph[0] && ns[0] == N_DUR) || (orph[1] && ns[1] == N_DUR) ->
       if :: orph[0] && ns[0] == N_DUR -> c = 0 :: else -> c = 1 fi;
       assert(dkey);                                           /* W2 */
       mem = M_DONE; ns[c] = N_NONE; orph[c] = false;
       printf("gateway: %d settled without its client\n", c) }
  :: atomic { (orph[0] && ((ns[0] == N_PEND && !doubt[0]) || ns[0] == N_PARKED)) ||
              (orph[1] && ((ns[1] == N_PEND && !doubt[1]) || ns[1] == N_PARKED)) ->
       if
       :: orph[0] && ((ns[0] == N_PEND && !doubt[0]) || ns[0] == N_PARKED) -> c = 0
       :: else -> c = 1
       fi;
       assert(!wal[c]);                                        /* W4 */
       ns[c] = N_NONE; wd[c] = false; orph[c] = false;
       if :: run_adm > 0 -> run_adm-- :: else fi;
       release(c);
       printf("gateway: %d withdrawn without its client\n", c) }
  od
}

/* The inbox's store thread: group commit, or a failed commit. */
proctype store() {
  byte i;
end:
  do
  :: atomic { !storing && PEND_ANY ->
       for (i : 0 .. NC - 1) { if :: ns[i] == N_PEND -> ns[i] = N_FLIGHT :: else fi }
       storing = true }
  :: atomic { storing ->
       for (i : 0 .. NC - 1) {
         if
         :: ns[i] == N_FLIGHT ->
            ns[i] = N_DUR; wd[i] = false; doubt[i] = false;
            life_dur++;
            printf("store: entry of %d committed\n", i);
            assert(life_dur <= 1);                             /* W1 */
#ifndef BROKEN_TWO_COMMITS
            dkey = true                                        /* same transaction */
#endif
         :: else
         fi
       }
       /* Its frames follow what is in the WAL: a batch left there by a
        * failed COMMIT can no longer be recovered. */
       for (i : 0 .. NC - 1) { wal[i] = false };
       storing = false }
  :: atomic { storing && fails < MAXFAIL ->
       fails++;
       printf("store: commit failed (nothing of it in the WAL)\n");
       for (i : 0 .. NC - 1) {
         if
         :: ns[i] == N_FLIGHT && wd[i] && !doubt[i] -> ns[i] = N_PARKED; wd[i] = false
         :: ns[i] == N_FLIGHT && (!wd[i] || doubt[i]) -> ns[i] = N_PEND; wd[i] = false
         :: else
         fi
       }
       storing = false }
  :: atomic { storing && fails < MAXFAIL ->
       fails++;
       printf("store: COMMIT failed at its fsync, the WAL not truncated: in doubt\n");
       for (i : 0 .. NC - 1) {
         if
         :: ns[i] == N_FLIGHT -> ns[i] = N_PEND; wd[i] = false; doubt[i] = true; wal[i] = true
         :: else
         fi
       }
       storing = false }
  od
}

#ifdef BROKEN_TWO_COMMITS
/* The token store's thread: the key row in a transaction of its own. */
proctype keystore() {
  byte i;
end:
  do
  :: atomic { (kw[0] == 1 || kw[1] == 1) ->
       for (i : 0 .. NC - 1) { if :: kw[i] == 1 -> kw[i] = 2; dkey = true :: else fi };
       printf("token store: key row committed\n") }
  od
}
#endif

/* A crash and restart of the daemon; the key's expiry. */
proctype faults() {
  byte i;
end:
  do
  :: atomic { crashes < MAXCRASH ->
       crashes++;
       printf("daemon: crash and restart\n");
       for (i : 0 .. NC - 1) {
         if :: cs[i] == C_SENT -> cs[i] = C_READY :: else fi;  /* answers lost */
         gs[i] = G_IDLE;
         ns[i] = N_NONE;          /* a durable one is counted in life_dur */
         wd[i] = false;
         /* The restart's WAL recovery may find a failed COMMIT whole. */
         if
         :: wal[i] ->
            life_dur++;
            printf("restart: the WAL recovers the entry of %d\n", i);
            assert(life_dur <= 1);                             /* W1 */
            dkey = true
         :: true
         fi;
         wal[i] = false; doubt[i] = false; orph[i] = false;
         if :: kw[i] == 1 -> kw[i] = 0 :: else fi
       }
       storing = false;
       run_adm = 0;
       /* restart: the key rows are loaded (router_inbox_idem_load) */
       if :: dkey -> mem = M_DONE :: else -> mem = M_NONE fi }
  :: atomic { expiries < MAXEXPIRE && dkey && mem != M_BUSY ->
       expiries++;
       printf("key K expired\n");
       dkey = false;
       if :: mem == M_DONE -> mem = M_NONE :: else fi;
       life_dur = 0;
       run_adm = 0 }
  od
}

init {
  atomic {
    run store();
#ifdef BROKEN_TWO_COMMITS
    run keystore();
#endif
    run faults();
    run orphans();
    run client(0);
    run client(1)
  }
}

ltl all_done { <> (cs[0] == C_DONE && cs[1] == C_DONE) }

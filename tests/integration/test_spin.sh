#!/usr/bin/env bash
# tests/integration/test_spin.sh — model-check the Promela models in spec/
# with spin: every configuration of a model must verify exhaustively with no
# error, and every deliberately broken variant must be caught (an error and a
# counterexample trail), so the check itself cannot pass vacuously.
# Needs spin and gcc (Debian packages spin, build-essential; tools/setup).
set -euo pipefail

src=${KITH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
for tool in spin gcc; do
  command -v "$tool" >/dev/null || {
    echo "test_spin: $tool not found: install the Debian package ${tool/gcc/build-essential} (tools/setup does)" >&2
    exit 1
  }
done

# test_spin.sh [MODEL]: only the checks of spec/MODEL.pml (and its
# MODEL_broken.pml), so ctest runs one test per model side by side.
only=${1:-}
# selected MODEL_FILE: whether a check of this model file is to run.
selected() {
  local m=${1%.pml}
  [ -z "$only" ] || [ "${m%_broken}" = "$only" ]
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# spin writes pan.* and trails next to the model: work on copies.
cp "$src"/spec/*.pml "$work"/
cd "$work"

passed=0 failed=0
ok()  { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; sed 's/^/     | /' "$2" >&2; }

# build NAME MODEL CCFLAGS SPINFLAGS…: spin -a, then compile pan into pan-NAME.
# CCFLAGS carries the optimisation level: -O2 for complete searches, -O0 for
# broken variants (they stop at their first errors; compiling is the cost).
build() {
  local name=$1 model=$2 ccflags=$3; shift 3
  rm -f pan.c pan.h pan.b pan.m pan.p pan.t _spin_nvr.tmp
  spin "$@" -a "$model" >"$name.spin" 2>&1 || return 1
  # -DMEMLIM: a search that outgrows 2 GiB stops (and fails below) instead
  # of swapping the machine.
  gcc -w -DMEMLIM=2048 $ccflags -o "pan-$name" pan.c >>"$name.spin" 2>&1
}

# verify NAME MODEL MODE SPINFLAGS…: MODE is safety (assertions, invalid end
# states), liveness (the model's ltl claim, acceptance cycles) or fair:CLAIM
# (the ltl claim CLAIM under weak fairness, pan -a -f -N CLAIM). Passes only
# on a complete search with zero errors.
verify() {
  local name=$1 model=$2 mode=$3; shift 3
  selected "$model" || return 0
  local ccflags="-O2 -DSAFETY -DNOCLAIM" panflags=""
  if [ "$mode" = liveness ]; then ccflags="-O2" panflags="-a"; fi
  if [ "${mode%%:*}" = fair ]; then ccflags="-O2 -DNFAIR=3" panflags="-a -f -N ${mode#fair:}"; fi
  if ! build "$name" "$model" "$ccflags" "$@"; then bad "$name: spin/gcc failed" "$name.spin"; return; fi
  "./pan-$name" $panflags >"$name.out" 2>&1 || true
  if grep -q 'errors: 0$' "$name.out" &&
     ! grep -Eq 'max search depth too small|reached -DMEMLIM|Search not completed' "$name.out"; then
    ok "$name ($(grep -Eo '[0-9.e+]+ states, stored' "$name.out"), $(grep -Eo 'elapsed time [0-9.]+' "$name.out")s)"
  else
    bad "$name: spin reports an error or an incomplete search" "$name.out"
  fi
}

# expect_caught NAME MODEL PATTERN SPINFLAGS…: the variant must fail with an
# error whose text matches PATTERN; the shortest trail found is replayed.
expect_caught() {
  local name=$1 model=$2 pattern=$3; shift 3
  selected "$model" || return 0
  if ! build "$name" "$model" "-O0 -DSAFETY -DNOCLAIM" "$@"; then bad "$name: spin/gcc failed" "$name.spin"; return; fi
  rm -f "$model.trail"
  "./pan-$name" -i >"$name.out" 2>&1 || true
  if grep -Eq 'errors: [1-9]' "$name.out" && grep -Eq "$pattern" "$name.out" && [ -f "$model.trail" ]; then
    spin "$@" -t "$model" 2>&1 | sed 's/^[[:space:]]*//; /^$/d' >"$name.trail.txt" || true
    ok "$name caught: $(grep -Eo "$pattern" "$name.out" | head -1)"
    sed -n '/^ltl /d; /^#processes/q; s/^/     | /p' "$name.trail.txt"
  else
    bad "$name: spin did not catch the broken variant (pattern: $pattern)" "$name.out"
  fi
}

# ---------------------------------------------------------------- ack.pml
# The signed-envelope path as the C runs it (WIRE §14.1–§14.6). Faults are
# split across configurations so that each search stays small; together
# they cover every fault: "net" (reset, partition, resend on the link after
# a timeout, retry/replay, half-close), "shutdown" (SIGTERM and its drain
# timeout racing the store, a defective envelope), "restart" (kill -9 and
# the restart that rebuilds inbox and replay window from state.db, a
# defective envelope). KITH_SPIN_FULL=1 adds all faults at once.
verify ack_net      ack.pml safety -DNO_SIGTERM -DMAXBAD=0
verify ack_shutdown ack.pml safety -DMAXCUT=0 -DMAXRESET=0 -DNO_SAMELINK
verify ack_restart  ack.pml safety -DCRASH -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0 -DNO_SAMELINK
# L1 under weak fairness, with a store whose commits may fail for ever.
verify ack_resolved ack.pml fair:resolved -DSTALL_FOREVER -DNO_SIGTERM -DMAXRESET=0 -DMAXBAD=0 -DNO_SAMELINK
# The alternative DESIGN did not take (re-ack an admitted replay) is safe too.
verify ack_reack    ack.pml safety -DREACK_ADMITTED -DNO_SIGTERM -DMAXCUT=0 -DMAXBAD=0 -DNO_SAMELINK
if [ "${KITH_SPIN_FULL:-0}" = 1 ]; then
  verify ack_full ack.pml safety -DCRASH
fi

# Each broken variant breaks one promise; the pattern is the text of the
# assertion of the property it targets (P1: DUR(i), P2: monitor_p2's KEPT,
# P3: in_order, P4: the id is neither held nor taken, P5: cut[c], P6:
# !stopping, P7: monitor_p7's TRUTHFUL, P8: a replay refusal's id is held), so another property's failure
# does not count.
p1='assertion violated \(\(durable&\(1<<i\)\)!=0\)'
p2='assertion violated \(\( !\(\(\(\(acked\[0\]\|acked\[1\]\)&\(1<<1\)\)!=0\)\)\|\|\(Q_has'
p4='assertion violated \( !\(Q_has\(inbox, 1, i, 0, 0\)\)&& !\(consumed\[i\]\)\)'
p7='assertion violated \(\( !\(\(\(\(heard_rejected'
expect_caught ack_broken             ack_broken.pml "$p1" -DNO_SIGTERM
expect_caught ack_broken_consequence ack_broken.pml "$p2" -DNO_P1 -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_uncommitted      ack.pml "$p1" -DBROKEN_ACK_UNCOMMITTED -DNO_SIGTERM
expect_caught ack_shutdown_drop    ack.pml "$p2" -DBROKEN_SHUTDOWN -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_order            ack.pml 'assertion violated in_order' -DBROKEN_ACK_ORDER -DNO_SIGTERM
expect_caught ack_forget           ack.pml "$p4" -DBROKEN_FORGET -DNO_SIGTERM
expect_caught ack_volatile_replay  ack.pml "$p4" -DCRASH -DBROKEN_VOLATILE_REPLAY -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_seed_from_inbox  ack.pml "$p4" -DCRASH -DBROKEN_SEED_FROM_INBOX -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_drop_full        ack.pml 'assertion violated cut\[c\]' -DBROKEN_DROP_FULL -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_read_after_stop  ack.pml 'assertion violated  !\(stopping\)' -DBROKEN_READ_AFTER_STOP -DMAXCUT=0 -DMAXRESET=0
expect_caught ack_close_early      ack.pml "$p7" -DBROKEN_CLOSE_EARLY -DNO_SIGTERM
# P8 (a refusal leaves no trace): router_replay_forget before the fix kept
# the eviction the refused id's insert made (router/comms/replay.c).
expect_caught ack_trace            ack.pml 'assertion violated \(Q_has\(inbox, 1, i, 0, 0\)\|\|consumed\[i\]\)' -DBROKEN_TRACE -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0 -DMAXBAD=0

# expect_cycle NAME MODEL CLAIM SPINFLAGS…: a broken variant of a liveness
# property: under weak fairness pan must find an acceptance cycle of the
# ltl claim CLAIM (and of no other: -N picks it), and the trail replays.
expect_cycle() {
  local name=$1 model=$2 claim=$3; shift 3
  selected "$model" || return 0
  if ! build "$name" "$model" "-O0 -DNFAIR=3" "$@"; then bad "$name: spin/gcc failed" "$name.spin"; return; fi
  rm -f "$model.trail"
  "./pan-$name" -a -f -N "$claim" >"$name.out" 2>&1 || true
  # (pan names the claim it checks, or says it has only that one.)
  if grep -Eq "^pan: ltl formula $claim|only one claim defined" "$name.out" &&
     grep -Eq 'acceptance cycle' "$name.out" &&
     grep -Eq 'errors: [1-9]' "$name.out" && [ -f "$model.trail" ]; then
    spin "$@" -t "$model" 2>&1 | sed 's/^[[:space:]]*//; /^$/d' >"$name.trail.txt" || true
    ok "$name caught: acceptance cycle of $claim"
    sed -n '/^ltl /d; /^#processes/q; s/^/     | /p' "$name.trail.txt" | tail -12
  else
    bad "$name: spin found no acceptance cycle of $claim" "$name.out"
  fi
}

# L1: without the sender's ack timeout, a store that keeps failing leaves
# a connection unresolved for ever.
expect_cycle  ack_no_timeout       ack.pml resolved -DBROKEN_NO_TIMEOUT -DSTALL_FOREVER -DNO_SIGTERM -DMAXCUT=0 -DMAXRESET=0 -DMAXBAD=0 -DNO_SAMELINK

# ---------------------------------------------------------------- session.pml
# The session turn queue as router/workers/turns.c runs it (WIRE §14.8).
verify session            session.pml safety
verify session_3chat      session.pml safety -DNCHAT=3
verify session_all_answered  session.pml fair:all_answered
# A worker that hangs forever holding a turn: chat messages are still all
# answered (the router's turn timeout); inbox entries wait for a worker, by
# design (WIRE §19.4), so all_answered is not claimed there.
verify session_chat_answered session.pml fair:chat_answered -DHANG
expect_caught session_two_turns    session.pml 'assertion violated \(in_flight==1\)' -DBROKEN_PUMP_QUEUED
expect_caught session_lifo         session.pml 'assertion violated \(m>last_started\)' -DBROKEN_LIFO
expect_caught session_lock_timer   session.pml 'assertion violated \(outcome\[cur\]==0\)' -DBROKEN_LOCK_TIMER
expect_caught session_no_zombie    session.pml 'assertion violated \(\(cur!=0\)&&\((h|m)==serial\)\)' -DBROKEN_NO_ZOMBIE
expect_caught session_any_holder   session.pml 'assertion violated \(h==wturn\)' -DBROKEN_ANY_HOLDER
expect_caught session_stop_queued  session.pml 'assertion violated \(\(\(\(resolved==' -DBROKEN_STOP_QUEUED
expect_cycle  session_no_timeout   session.pml chat_answered -DHANG -DBROKEN_NO_TIMEOUT
expect_caught session_no_pump_at_end session.pml 'assertion violated \(\(cur!=0\)\|\|\(qlen==0\)\)' -DBROKEN_NO_PUMP_AT_END
expect_caught session_steer_leak   session.pml 'assertion violated \(h==wturn\)' -DBROKEN_STEER_LEAK
expect_cycle  session_no_kick_on_ready session.pml all_answered -DBROKEN_NO_KICK_ON_READY

# ---------------------------------------------------------------- dispatch.pml
# Durable entries to workers through the broker, across a crash (WIRE §14.9).
verify dispatch           dispatch.pml safety
verify dispatch_wide      dispatch.pml safety -DNE=3 -DMAXCRASH=2 -DMAXEXP=2 -DMAXTIMEOUT=2
verify dispatch_finished  dispatch.pml fair:all_finished
verify dispatch_finished3 dispatch.pml fair:all_finished -DNE=3
expect_caught dispatch_take_volatile  dispatch.pml 'assertion violated \(st\[e\]==2\)' -DBROKEN_TAKE_VOLATILE
expect_caught dispatch_delete_at_take dispatch.pml 'assertion violated ended\[e\]' -DBROKEN_DELETE_AT_TAKE
expect_caught dispatch_redispatch     dispatch.pml 'assertion violated \(n==(0|1)\)' -DBROKEN_REDISPATCH
expect_caught dispatch_dispatch_dead  dispatch.pml 'assertion violated known\[w\]' -DBROKEN_DISPATCH_DEAD
expect_caught dispatch_no_zombie      dispatch.pml 'assertion violated \(\(eff\[e\]==0\)\|\|window\[e\]\)' -DBROKEN_NO_ZOMBIE
expect_cycle  dispatch_lost_at_crash  dispatch.pml all_finished -DBROKEN_DELETE_AT_TAKE -DNO_D2_ASSERT

# ---------------------------------------------------------------- webhook.pml
# X-Idempotency-Key: the key row in its entry's inbox transaction, the
# memory mark, withdrawal at the deadline, a batch in doubt after a failed
# fsync, the second deadline, crash and expiry (WIRE §14.11).
verify webhook            webhook.pml safety
verify webhook_wide       webhook.pml safety -DMAXCRASH=2 -DMAXFAIL=3 -DMAXTIMEOUT=2 -DMAXREFUSE=2 -DMAXLOST=2 -DMAXEXPIRE=2
verify webhook_all_done   webhook.pml fair:all_done
expect_caught webhook_two_commits  webhook.pml 'assertion violated \(life_dur<=1\)' -DBROKEN_TWO_COMMITS
expect_caught webhook_no_busy      webhook.pml 'assertion violated \(run_adm==0\)' -DBROKEN_NO_BUSY
expect_caught webhook_keep_refused webhook.pml 'assertion violated \( !\(\(\(mem==1\)&&\(owner==c\)\)\)&&\(ns\[c\]==0\)\)' -DBROKEN_KEEP_ON_REFUSAL
expect_caught webhook_early_202    webhook.pml 'assertion violated \(\(ns\[c\]==4\)&&dkey\)' -DBROKEN_EARLY_202
expect_caught webhook_timeout_keeps webhook.pml 'assertion violated \( !\(\(\(mem==1\)&&\(owner==c\)\)\)&&\(ns\[c\]==0\)\)' -DBROKEN_TIMEOUT_KEEPS_ENTRY
expect_caught webhook_doubt_withdrawn webhook.pml 'assertion violated  !\(wal\[c\]\)' -DBROKEN_DOUBT_WITHDRAWN
expect_caught webhook_doubt_twice  webhook.pml 'assertion violated \(life_dur<=1\)' -DBROKEN_DOUBT_WITHDRAWN -DNO_W4_ASSERT
# What W4 protects: with it off, the corrected retries get 409 forever.
expect_cycle  webhook_refused_busy webhook.pml all_done -DBROKEN_KEEP_ON_REFUSAL -DNO_W4_ASSERT

# ---------------------------------------------------------------- crypto.pml
# Checks on crypto threads finishing out of order; admissions and acks in
# arrival order; a reset connection frees each job once (WIRE §14.12).
verify crypto       crypto.pml safety
verify crypto_wide  crypto.pml safety -DN=4 -DW=3
expect_caught crypto_no_order      crypto.pml 'assertion violated \(adm\[nack\]==nack\)' -DBROKEN_NO_ORDER
expect_caught crypto_free_inflight crypto.pml 'assertion violated \(freed\[(j|k)\]==0\)' -DBROKEN_FREE_INFLIGHT
expect_caught crypto_admit_unchecked crypto.pml 'assertion violated \(checked\[j\]&&good\[j\]\)' -DBROKEN_ADMIT_UNCHECKED
expect_caught crypto_ack_early     crypto.pml 'assertion violated durable\[adm\[nack\]\]' -DBROKEN_ACK_EARLY
expect_caught crypto_leak_orphan   crypto.pml 'assertion violated \( !\(created\[i\]\)\|\|\(freed\[i\]==1\)\)' -DBROKEN_LEAK_ORPHAN

echo "test_spin${only:+ $only}: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]

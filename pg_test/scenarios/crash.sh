#!/usr/bin/env bash
# Crashes in the middle of concurrent audited load: an immediate shutdown,
# CRASHES times with a restart after each, and SIGKILL of single backends
# caught running COMMIT, which makes the postmaster reinitialize. After each,
# the invariants of lib/workload.sh hold: nothing committed is lost, nothing
# rolled back remains, no chain is broken. Each load must have done work
# before its crash: MIN_TX committed transactions at least (a parameter).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/workload.sh"
crashes=${CRASHES:-5} kills=${KILLS:-3} clients=${CLIENTS:-16} min_tx=${MIN_TX:-100}
dir=$PGHOST
data=$dir/data
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)

out=$(mktemp)
trap 'rm -f "$out" "${WL_SCRIPT:-}"' EXIT
load() { pgbench -n -c "$clients" -j 2 -T 60 -f "$WL_SCRIPT" "$WL_DB" >"$out" 2>&1; }

# After a load that a crash ended, with pgbench's exit status $1: it must have
# started (status 2, clients aborted; 1 is a failure to start), every client
# must have aborted by losing its server and by nothing else, and it must
# have finished transactions first. Sets LOAD_TX to how many.
load_ended() {
    local rc=$1 other
    [ "$rc" = 2 ] || wl_fail "pgbench exited with $rc, not 2 (clients aborted by the crash): $(tail -n 5 "$out")"
    # The two threads write their messages in pieces that can interleave at
    # any point ("pgbench: pgbench:error: client 14 ...", a message split over
    # two lines): join the output, remove the prefixes and every expected
    # message, and whatever still speaks of an error is one.
    other=$(tr '\n' ' ' <"$out" \
        | sed -E -e 's/pgbench: ?//g' -e 's/error: ?//g' \
                 -e 's/client [0-9]+ aborted in command [0-9]+ \(SQL\) of script 0; perhaps the backend died while processing//g' \
                 -e 's/Run was aborted; the above results are incomplete\.//g' \
        | grep -o -i -E '.{0,80}(error|fatal|abort).{0,80}' || true)
    [ -z "$other" ] || wl_fail "pgbench failed otherwise than by losing its server: $(head -n 5 <<<"$other")"
    LOAD_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\)$/\1/p' "$out")
    [ "${LOAD_TX:-0}" -gt 0 ] || wl_fail "pgbench finished no transaction before the crash: $(tail -n 5 "$out")"
}

# wl_check with at least min_tx new commits. And the commits pgbench saw
# acknowledged survived: of the transactions it finished, 1 in 10 on average
# end with the script's ROLLBACK, so at least 7 in 10 committed.
check() {
    local prev=${WL_TX:-0}
    wl_check "$cp" "$min_tx"
    [ $((WL_TX - prev)) -ge $((LOAD_TX * 7 / 10)) ] \
        || wl_fail "pgbench finished $LOAD_TX transactions, but only $((WL_TX - prev)) committed"
}

wl_setup al_crash
cp=$(wl_q -c "SELECT audit_log.checkpoint()")
for i in $(seq 1 "$crashes"); do
    load & pid=$!
    sleep 2
    runuser -u postgres -- "$BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null
    rc=0; wait $pid || rc=$?
    runuser -u postgres -- "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w start >/dev/null
    wait_ready
    load_ended $rc
    check
    echo "  immediate shutdown $i: pgbench finished $LOAD_TX; $WL_TX committed transactions, all intact"
done
for i in $(seq 1 "$kills"); do
    load & pid=$!
    sleep 1
    victim=""
    for _ in $(seq 1 400); do
        victim=$(psql -X -At -d postgres -c "SELECT pid FROM pg_stat_activity
                  WHERE datname = '$WL_DB' AND state = 'active' AND query = 'COMMIT;' LIMIT 1" 2>/dev/null || true)
        [ -n "$victim" ] && break
    done
    [ -n "$victim" ] || wl_fail "no backend caught in COMMIT"
    kill -9 "$victim"
    rc=0; wait $pid || rc=$?
    wait_ready
    load_ended $rc
    check
    echo "  SIGKILL of backend $victim in COMMIT: pgbench finished $LOAD_TX; $WL_TX committed transactions, all intact"
done
echo "crash: $crashes immediate shutdowns and $kills SIGKILLs survived; $WL_TX transactions, $WL_EVENTS events, 0 lost"
wl_teardown

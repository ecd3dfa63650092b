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

wl_setup al_crash
cp=$(wl_q -c "SELECT audit_log.checkpoint()")
for i in $(seq 1 "$crashes"); do
    load & pid=$!
    sleep 2
    runuser -u postgres -- "$BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null
    rc=0; wait $pid || rc=$?
    runuser -u postgres -- env RUST_BACKTRACE=1 "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w start >/dev/null
    wait_ready
    wl_load_crashed "$out" "$rc"
    wl_check_load "$cp" "$min_tx" "$LOAD_TX"
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
    wl_load_crashed "$out" "$rc"
    wl_check_load "$cp" "$min_tx" "$LOAD_TX"
    echo "  SIGKILL of backend $victim in COMMIT: pgbench finished $LOAD_TX; $WL_TX committed transactions, all intact"
done
echo "crash: $crashes immediate shutdowns and $kills SIGKILLs survived; $WL_TX transactions, $WL_EVENTS events, 0 lost"
wl_teardown

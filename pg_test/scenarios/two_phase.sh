#!/usr/bin/env bash
# Two-phase commit interleaved with ordinary audited traffic. PREPARE of a
# transaction with audited changes is refused with a clear error and leaves
# nothing behind; transactions without audited changes prepare, and commit
# or roll back, normally. While one is prepared, audited commits go on: no
# chain is ever held by a prepared transaction. Then the invariants hold.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/workload.sh"
rounds=${ROUNDS:-10}
wl_setup al_2pc
wl_q -c "CREATE TABLE plain (id int PRIMARY KEY)"
pgbench -n -c 8 -j 2 -T $((rounds + 4)) -f "$WL_SCRIPT" "$WL_DB" >/dev/null 2>&1 & load=$!
sleep 1
for i in $(seq 1 "$rounds"); do
    err=$(psql -X -q -d "$WL_DB" -v VERBOSITY=verbose -c "BEGIN" -c "INSERT INTO t1 VALUES (1000 + $i, 0)" \
              -c "PREPARE TRANSACTION 'audited_$i'" 2>&1 || true)
    echo "$err" | grep -q "0A000" || wl_fail "PREPARE with audited changes was not refused: $err"
    echo "$err" | grep -q "cannot PREPARE a transaction that has audited changes" || wl_fail "unclear error: $err"
    wl_q -c "BEGIN" -c "INSERT INTO plain VALUES ($i)" -c "PREPARE TRANSACTION 'plain_$i'" >/dev/null
    before=$(wl_q -c "SELECT count(*) FROM audit_log.links")
    sleep 0.5
    after=$(wl_q -c "SELECT count(*) FROM audit_log.links")
    [ "$after" -gt "$before" ] || wl_fail "no audited commit while a transaction was prepared"
    if [ $((i % 2)) = 0 ]; then wl_q -c "COMMIT PREPARED 'plain_$i'"; else wl_q -c "ROLLBACK PREPARED 'plain_$i'"; fi
done
wait $load || true
left=$(wl_q -c "SELECT count(*) FROM pg_prepared_xacts")
[ "$left" = 0 ] || wl_fail "$left prepared transaction(s) left behind"
refused=$(wl_q -c "SELECT count(*) FROM t1 WHERE k > 1000")
[ "$refused" = 0 ] || wl_fail "a refused PREPARE left $refused row(s)"
[ "$(wl_q -c "SELECT count(*) FROM plain")" = $((rounds / 2)) ] || wl_fail "COMMIT/ROLLBACK PREPARED misbehaved"
wl_check
echo "two_phase: $rounds audited PREPAREs refused cleanly, $rounds plain ones committed or rolled back, chains never held; $WL_TX transactions verified"
wl_teardown

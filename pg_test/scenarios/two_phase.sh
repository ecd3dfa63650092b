#!/usr/bin/env bash
# Two-phase commit (XA/JTA) of audited changes, under concurrent audited
# load. PREPARE TRANSACTION seals a transaction's events in the transaction
# itself; COMMIT PREPARED makes them visible, and the next audited commit (or
# checkpoint()) links them into a chain; ROLLBACK PREPARED leaves nothing.
# No chain ever waits on a prepared transaction: audited commits go on while
# one is prepared. Prepared transactions survive an immediate shutdown, and
# are committed or rolled back after the restart. Then the invariants of
# lib/workload.sh hold: every committed transaction (prepared ones included,
# which write a witness row too) has exactly one record, nothing rolled back
# has one, replaying the events reproduces the tables, and verify() is ok.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/workload.sh"
rounds=${ROUNDS:-10} min_tx=${MIN_TX:-100}
data=$PGHOST/data
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
wl_setup al_2pc
wl_q -c "CREATE TABLE plain (id int PRIMARY KEY)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# An audited prepared transaction: rows of t1 keyed from $2 * 100000. One in
# three is large (20,000 rows, past the 1 MB that makes it spill segments
# before PREPARE); each also rolls a savepoint back.
prepare() {  # $1: gid, $2: key base
    local rows=3
    [ $(($2 % 3)) = 0 ] && rows=20000
    wl_q -c "BEGIN" \
         -c "SELECT set_config('audit_log.context', '{\"xa\": \"$1\"}', true)" \
         -c "INSERT INTO t1 SELECT $2 * 100000 + g, g FROM generate_series(1, $rows) g" \
         -c "SAVEPOINT s" -c "DELETE FROM t1 WHERE k = $2 * 100000 + 1" -c "ROLLBACK TO s" \
         -c "UPDATE t1 SET v = v + 1 WHERE k = $2 * 100000 + 1" \
         -c "INSERT INTO witness VALUES (pg_current_xact_id())" \
         -c "PREPARE TRANSACTION '$1'" >/dev/null
}

pgbench -n -c 8 -j 2 -T $((rounds + 4)) -f "$WL_SCRIPT" "$WL_DB" >"$out" 2>&1 & load=$!
sleep 1
committed=0 rolled_back=0
for i in $(seq 1 "$rounds"); do
    prepare "audited_$i" "$((1000 + i))"
    # A prepared transaction with no audited change.
    wl_q -c "BEGIN" -c "INSERT INTO plain VALUES ($i)" -c "PREPARE TRANSACTION 'plain_$i'" >/dev/null
    before=$(wl_q -c "SELECT count(*) FROM audit_log.records")
    sleep 0.5
    after=$(wl_q -c "SELECT count(*) FROM audit_log.records")
    [ "$after" -gt "$before" ] || wl_fail "no audited commit while a transaction was prepared"
    [ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] \
        || wl_fail "a prepared transaction's events are visible before COMMIT PREPARED"
    if [ $((i % 2)) = 0 ]; then
        wl_q -c "COMMIT PREPARED 'audited_$i'" -c "ROLLBACK PREPARED 'plain_$i'"; committed=$((committed + 1))
    else
        wl_q -c "ROLLBACK PREPARED 'audited_$i'" -c "COMMIT PREPARED 'plain_$i'"; rolled_back=$((rolled_back + 1))
    fi
done
# The load ran to its end, beside the prepared transactions: exit 0, with
# transactions finished.
rc=0; wait $load || rc=$?
wl_load_done "$out" "$rc"
load_tx=$LOAD_TX

# A session that found nothing to link stops looking at each commit (a
# table open and an lseek) until a PREPARE's invalidation arrives, which
# PostgreSQL sends at COMMIT PREPARED: its next audited commit still links
# what another session prepared and committed meanwhile.
audited_tx() { echo "BEGIN; INSERT INTO t1 VALUES ($1, 0); INSERT INTO witness VALUES (pg_current_xact_id()); COMMIT;"; }
waiting=$(wl_q <<SQL
$(audited_tx -1)
$(audited_tx -2)
\! psql -X -q -v ON_ERROR_STOP=1 -d $WL_DB -c "BEGIN" -c "INSERT INTO t1 VALUES (-3, 0)" -c "INSERT INTO witness VALUES (pg_current_xact_id())" -c "PREPARE TRANSACTION 'late'" -c "COMMIT PREPARED 'late'"
SELECT count(*) FROM audit_log.prepared;
$(audited_tx -4)
SELECT count(*) FROM audit_log.prepared;
SQL
)
[ "$waiting" = "1
0" ] || wl_fail "a long-lived session's audited commit did not link a transaction committed prepared meanwhile (prepared rows before and after it: $waiting)"

# Prepared across a crash: one to commit and one to roll back after the
# restart, with the load killed mid-flight: its clients abort by losing the
# server (exit 2) and by nothing else, after finishing transactions.
prepare audited_crash_c 2001
prepare audited_crash_r 2002
pgbench -n -c 8 -j 2 -T 30 -f "$WL_SCRIPT" "$WL_DB" >"$out" 2>&1 & load=$!
sleep 2
runuser -u postgres -- "$BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null
rc=0; wait $load || rc=$?
wl_load_crashed "$out" "$rc"
load_tx=$((load_tx + LOAD_TX))
runuser -u postgres -- env RUST_BACKTRACE=1 "$BIN/pg_ctl" -D "$data" -l "$PGHOST/server.log" -w start >/dev/null
wait_ready
[ "$(wl_q -c "SELECT count(*) FROM pg_prepared_xacts")" = 2 ] || wl_fail "the prepared transactions did not survive the crash"
wl_q -c "COMMIT PREPARED 'audited_crash_c'" -c "ROLLBACK PREPARED 'audited_crash_r'"
committed=$((committed + 1)) rolled_back=$((rolled_back + 1))

# Committed but not yet linked: checkpoint() links them (no audited commit
# has run since).
waiting=$(wl_q -c "SELECT count(*) FROM audit_log.prepared")
[ "$waiting" = 1 ] || wl_fail "expected the crash-surviving COMMIT PREPARED to wait for a link, found $waiting"
# Inside a transaction block it links none, and says so (an auditor whose
# client opens a block for every statement would otherwise never know).
note=$(wl_q -c "BEGIN" -c "SELECT audit_log.checkpoint() IS NOT NULL" -c "COMMIT" 2>&1 >/dev/null)
case $note in *"1 committed prepared transaction(s) are in no chain yet, so no checkpoint covers them"*) ;;
    *) wl_fail "checkpoint() in a block did not say that a prepared transaction waits: $note" ;; esac
[ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 1 ] || wl_fail "checkpoint() in a block linked the prepared transaction"
# Outside a block it links it, silently; here in the statement that also
# writes audited rows, whose commit must not link it a second time (the
# row it deleted in that command still shows to its own snapshot).
note=$(wl_q -c "WITH w AS (INSERT INTO witness VALUES (pg_current_xact_id()) RETURNING 1),
                     t AS (INSERT INTO t1 VALUES (-5, 0) RETURNING 1)
                SELECT audit_log.checkpoint() IS NOT NULL FROM w, t" 2>&1 >/dev/null) ||
    wl_fail "checkpoint() outside a block, beside audited writes, failed: $note"
[ -z "$note" ] || wl_fail "checkpoint() outside a block, beside audited writes, said: $note"
[ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || wl_fail "checkpoint() did not link the committed prepared transaction"

# A session whose DO block linked a prepared transaction, looked again
# (finding nothing: it had deleted the row itself) and then failed, gets
# the row back unlinked, with no new invalidation to announce it: its
# next audited commit must look again, not trust what the failed block saw.
waiting=$(wl_q <<SQL 2>/dev/null
\! psql -X -q -v ON_ERROR_STOP=1 -d $WL_DB -c "BEGIN" -c "INSERT INTO t1 VALUES (-6, 0)" -c "INSERT INTO witness VALUES (pg_current_xact_id())" -c "PREPARE TRANSACTION 'undone'" -c "COMMIT PREPARED 'undone'"
SELECT count(*) FROM audit_log.prepared;
\set ON_ERROR_STOP 0
DO \$\$ BEGIN PERFORM audit_log.checkpoint(); PERFORM audit_log.checkpoint(); RAISE EXCEPTION 'roll back'; END \$\$;
\set ON_ERROR_STOP 1
SELECT count(*) FROM audit_log.prepared;
$(audited_tx -7)
SELECT count(*) FROM audit_log.prepared;
SQL
) || true
[ "$waiting" = "1
1
0" ] || wl_fail "after a failed block had linked a prepared transaction, the session's next audited commit did not link it (prepared rows: $waiting)"

left=$(wl_q -c "SELECT count(*) FROM pg_prepared_xacts")
[ "$left" = 0 ] || wl_fail "$left prepared transaction(s) left behind"
[ "$(wl_q -c "SELECT count(*) FROM plain")" = $(( (rounds + 1) / 2 )) ] || wl_fail "COMMIT/ROLLBACK PREPARED of plain transactions misbehaved"
# Every committed prepared transaction is recorded once with all its events;
# a rolled-back one left none.
got=$(wl_q -c "SELECT count(DISTINCT tx_first) FROM audit_log.events WHERE context->>'xa' LIKE 'audited_%'")
[ "$got" = "$committed" ] || wl_fail "$committed prepared transactions committed, $got recorded"
rows=$(wl_q -c "SELECT count(*) FROM t1 WHERE k > 10000000")
ev=$(wl_q -c "SELECT count(*) FROM audit_log.events WHERE table_name = 't1' AND op = 'INSERT' AND (new_row->>'k')::int > 10000000")
[ "$rows" -gt 8000 ] || wl_fail "only $rows rows of committed prepared transactions"
spilled=$(wl_q -c "SELECT count(*) FROM audit_log.records WHERE segments > 0")
[ "$spilled" -gt 0 ] || wl_fail "no committed prepared transaction spilled a segment"
[ "$rows" = "$ev" ] || wl_fail "$rows rows of committed prepared transactions, $ev INSERT events"
[ "$(wl_q -c "SELECT count(*) FROM audit_log.segments s WHERE NOT EXISTS (SELECT 1 FROM audit_log.records r WHERE r.first_event = s.first_event)")" = 0 ] \
    || wl_fail "segments of a rolled-back prepared transaction remain"
# The loads committed MIN_TX transactions at least, and of those they
# finished, 1 in 10 roll back: at least 7 in 10 committed.
wl_check_load "" "$min_tx" "$load_tx"
echo "two_phase: $committed audited prepared transactions committed and $rolled_back rolled back (one of each across a crash), linked without holding a chain; pgbench finished $load_tx; $WL_TX transactions verified"
wl_teardown

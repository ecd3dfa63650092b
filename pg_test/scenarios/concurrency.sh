#!/usr/bin/env bash
# Many sessions commit audited changes at once, under each isolation level,
# with savepoint rollbacks and whole-transaction rollbacks. Invariants, each
# checked against something other than the log itself:
#  (a) verify() is ok;
#  (b) one link per committed transaction (counted in an unaudited witness
#      table written by the same transactions), and replaying the events
#      row by row reproduces the tables exactly;
#  (c) every chain's seq runs 1..n with no gap or fork.
# CLIENTS and SECONDS are parameters for a longer soak.
set -euo pipefail
clients=${CLIENTS:-16} seconds=${SECONDS_PER_LEVEL:-8}
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d al_conc "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS al_conc" -c "CREATE DATABASE al_conc" 2>/dev/null
q <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t1 (k int PRIMARY KEY, v int);
CREATE TABLE t2 (k int PRIMARY KEY, v int);
CREATE TABLE t3 (k int PRIMARY KEY, v int);
INSERT INTO t2 SELECT g, 0 FROM generate_series(1, 200) g;
CREATE TABLE witness (tx xid8 PRIMARY KEY);   -- not audited
SELECT audit_log.enable('t1'), audit_log.enable('t2'), audit_log.enable('t3') \g /dev/null
ALTER DATABASE al_conc SET audit_log.chains = 4;
SQL
script=$(mktemp); chmod 644 "$script"
cat > "$script" <<'PGB'
\set a random(1, 200)
\set r random(0, 9)
BEGIN;
INSERT INTO t1 VALUES (:a, :r) ON CONFLICT (k) DO UPDATE SET v = t1.v + 1;
INSERT INTO witness VALUES (pg_current_xact_id());
SAVEPOINT s;
UPDATE t2 SET v = v + 1 WHERE k = :a;
\if :r < 3
ROLLBACK TO s;
\endif
DELETE FROM t3 WHERE k = :a;
INSERT INTO t3 VALUES (:a, :r);
\if :r = 9
ROLLBACK;
\else
COMMIT;
\endif
PGB
for level in "read committed" "repeatable read" serializable; do
    out=$(PGOPTIONS="-c default_transaction_isolation=${level// /\\ }" \
        pgbench -n -d al_conc -c "$clients" -j 2 -T "$seconds" --max-tries=20 -f "$script" 2>&1) \
        || fail "pgbench failed at $level: $out"
    done_tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    echo "  $level: ${done_tx:-?} transactions, ${failed:-0} failed after retries"
done
rm -f "$script"

v=$(q -c "SELECT ok || ' ' || events_checked || ' ' || coalesce(problem, '') FROM audit_log.verify()")
case "$v" in "true "*) ;; *) fail "verify: $v" ;; esac
links=$(q -c "SELECT count(*) FROM audit_log.links l JOIN witness w ON w.tx = l.tx_id")
witness=$(q -c "SELECT count(*) FROM witness")
[ "$links" = "$witness" ] || fail "$witness committed transactions but $links of them linked"
extra=$(q -c "SELECT count(*) FROM audit_log.links l WHERE NOT EXISTS (SELECT 1 FROM witness w WHERE w.tx = l.tx_id)")
[ "$extra" = 1 ] || fail "expected 1 configuration link (the enable() statement) besides the workload, found $extra"
gaps=$(q -c "SELECT count(*) FROM (SELECT chain_id, count(*) n, max(seq) m, count(DISTINCT seq) d FROM audit_log.links GROUP BY 1) c WHERE n <> m OR d <> n")
[ "$gaps" = 0 ] || fail "$gaps chain(s) with a gap or a fork"
for t in t1 t2 t3; do
    diff=$(q <<SQL
WITH last AS (
  SELECT DISTINCT ON (coalesce(new_row, old_row)->>'k') op, new_row
    FROM audit_log.events WHERE table_name = '$t' AND op IN ('INSERT', 'UPDATE', 'DELETE')
   ORDER BY coalesce(new_row, old_row)->>'k', id DESC),
replayed AS (SELECT (new_row->>'k')::int k, (new_row->>'v')::int v FROM last WHERE op <> 'DELETE')
SELECT count(*) FROM (
  (SELECT k, v FROM replayed EXCEPT ALL SELECT k, v FROM $t WHERE k IN (SELECT k FROM replayed)
     OR '$t' <> 't2')
  UNION ALL
  (SELECT k, v FROM $t WHERE '$t' <> 't2' OR v <> 0 EXCEPT ALL SELECT k, v FROM replayed)) d;
SQL
)
    [ "$diff" = 0 ] || fail "$t: replaying the events differs from the table in $diff row(s)"
done
chains=$(q -c "SELECT count(DISTINCT chain_id) FROM audit_log.links")
events=$(q -c "SELECT count(*) FROM audit_log.events")
psql -X -q -d postgres -c "DROP DATABASE al_conc"
echo "concurrency: $witness transactions, $events events over $chains chains, verified, replay matches"

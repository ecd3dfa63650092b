#!/usr/bin/env bash
# Where a commit learns its chain's head. With the library in
# shared_preload_libraries, each chain's newest link waits in shared memory
# (src/heads.rs); without it, every commit reads it from the records'
# primary key. This runs on both (PostgreSQL 15's test cluster preloads the
# library, 18's does not) and checks, through one chain:
# - eight clients' commits, each linked once, with no gap or fork;
# - preloaded, a commit takes its head from shared memory (its DEBUG2 says
#   so), and never otherwise; after a restart the first commit reads the
#   index;
# - a superuser deletes the newest link: the head in memory fails its check
#   (its record is gone), so the chain goes on from the index exactly as
#   without the cache;
# - a superuser deletes the last 100 links and VACUUM truncates the table
#   under the head in memory: the next commit reads the index, no ERROR;
# - a superuser appends a record past the head: preloaded, the next commit
#   fails once on the primary key (the one difference, README's threat
#   model), then the chain links past it; verify() reports the record;
# - the chain's lock, held by a checkpoint() in a DO block: a
#   cycle through it is broken by the deadlock detector, a commit waiting
#   for it can be cancelled, and the holder's death releases it;
# - the extension dropped and created again starts its chain at 1, not at
#   the old log's head;
# - logs in other databases: preloaded, each has places of its own, and a
#   chain held in one database delays no commit in another.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
db=al_heads
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
psql -X -q -d postgres -c "ALTER DATABASE $db SET audit_log.chains = 1"
work=$(mktemp -d /tmp/audit_log_heads.XXXXXX); chmod 755 "$work"
script=$work/insert.sql
trap 'rm -rf "$work"' EXIT
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t (k int PRIMARY KEY, v int);
SELECT audit_log.enable('t');
SQL
preloaded=$(q -c "SELECT 'audit_log' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))")

# Every record of chain 0 is seq 1..n, n being the number of commits.
chain_whole() {  # WHAT EXPECTED_RECORDS
    local got
    got=$(q -c "SELECT count(*) || ' ' || coalesce(min(seq), 0) || ' ' || coalesce(max(seq), 0) || ' ' || count(DISTINCT seq)
                FROM audit_log.records WHERE chain_id = 0")
    [ "$got" = "$2 1 $2 $2" ] || fail "$1: chain 0 has (records, first, last, distinct seqs) $got, expected $2 1 $2 $2"
}
verify_ok() {  # WHAT
    local v
    v=$(q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify()")
    [ "$v" = "true " ] || fail "$1: verify() says $v"
}

base=$(q -c "SELECT count(*) FROM audit_log.records WHERE chain_id = 0")
cat >"$script" <<'PGB'
\set k random(1, 100000000)
INSERT INTO t VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = t.v + 1;
PGB
"$BIN/pgbench" -n -c 8 -j 2 -t 50 -f "$script" "$db" >"$work/pgbench.out" 2>&1 ||
    fail "pgbench failed: $(tail -5 "$work/pgbench.out")"
chain_whole "8 clients, 50 commits each" $((base + 400))
verify_ok "after 8 clients"

# Whether a commit took its chain's head from shared memory (its DEBUG2).
from_memory() {  # SQL...
    local out
    out=$(q -c "SET client_min_messages = debug2" "$@" 2>&1) || fail "$* failed: $out"
    if grep -q "audit_log: the head of chain 0 from shared memory" <<<"$out"; then echo yes; else echo no; fi
}
expect_memory() {  # WHAT EXPECTED SQL...
    local what=$1 want=$2; shift 2
    local got; got=$(from_memory "$@")
    [ "$got" = "$want" ] || fail "$what: the commit took its head from shared memory: $got, expected $want"
}
warm=$([ "$preloaded" = t ] && echo yes || echo no)
expect_memory "a commit after 400" "$warm" -c "INSERT INTO t VALUES (-1, 0)"

# A restart empties shared memory: the first commit reads the index.
runuser -u postgres -- "$BIN/pg_ctl" -D "$PGHOST/data" -m fast -w stop >/dev/null
runuser -u postgres -- env RUST_BACKTRACE=1 "$BIN/pg_ctl" -D "$PGHOST/data" -l "$PGHOST/server.log" -w start >/dev/null
expect_memory "the first commit after a restart" no -c "INSERT INTO t VALUES (-2, 0)"
expect_memory "the second commit after a restart" "$warm" -c "INSERT INTO t VALUES (-3, 0)"
head=$((base + 403))
chain_whole "after a restart" $head
verify_ok "after a restart"

# A superuser deletes the newest link, with the guards disabled. That
# transaction is linked too (it changed an audit table): the head in
# memory is no longer there, so it reads the index and takes the deleted
# link's place, exactly as without the cache.
deleted=$(from_memory -c "BEGIN" -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
    -c "DELETE FROM audit_log.records WHERE chain_id = 0 AND seq = $head" \
    -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER" -c "COMMIT")
[ "$deleted" = no ] || fail "the commit that deleted the head took that head from shared memory"
chain_whole "a deleted head" $head
verify_ok "a deleted head"
expect_memory "a commit after the deleted head" "$warm" -c "INSERT INTO t VALUES (-4, 0)"
head=$((head + 1))

# A superuser deletes the chain's last 100 links without a link of its own
# (the guards hidden from the relation cache, no DDL), and VACUUM cuts the
# emptied pages off the table: the head in memory now points past its end.
# The next commit reads the index and goes on from what is left (only a
# checkpoint would show the loss), on both paths.
size_before=$(q -c "SELECT pg_relation_size('audit_log.records')")
q <<SQL
BEGIN;
UPDATE pg_catalog.pg_class SET relhastriggers = false WHERE oid = 'audit_log.records'::regclass;
DELETE FROM audit_log.records WHERE chain_id = 0 AND seq > $head - 100;
UPDATE pg_catalog.pg_class SET relhastriggers = true WHERE oid = 'audit_log.records'::regclass;
COMMIT;
SQL
# A snapshot another process holds for a moment (an autovacuum's ANALYZE
# in this database) keeps the deleted links, or its lock the truncation:
# VACUUM is tried again, for up to 30 s.
for _ in $(seq 1 30); do
    q -c "VACUUM audit_log.records"
    size_after=$(q -c "SELECT pg_relation_size('audit_log.records')")
    [ "$size_after" -lt "$size_before" ] && break
    sleep 1
done
[ "$size_after" -lt "$size_before" ] || fail "VACUUM did not truncate audit_log.records in 30 s ($size_before bytes, then $size_after)"
out=$(q -c "INSERT INTO t VALUES (-8, 0)" 2>&1) || fail "the commit after a truncated head failed: $out"
head=$((head - 99))
chain_whole "a head truncated away" $head
verify_ok "a head truncated away"

# The chain's lock (a word in shared memory when preloaded, an advisory
# lock otherwise). A checkpoint() in a DO block links the committed
# prepared transactions and holds chain 0 (the only one) until the block's
# transaction ends; a commit queued behind it waits in a lock wait that a
# cancel interrupts, the deadlock detector sees, and a holder's death ends.
# Session A: seal a prepared transaction, link it with checkpoint() in a
# DO block (which then takes advisory lock 4242, so that others can see it
# is there), wait for another session to wait on a lock, then run $2
# (PL/pgSQL).
hold_chain() {  # NAME PLPGSQL
    q -c "BEGIN" -c "INSERT INTO t VALUES (nextval('ids'), 0)" -c "PREPARE TRANSACTION 'heads_$1'" \
        -c "COMMIT PREPARED 'heads_$1'"
    PGAPPNAME=heads_a timeout 120 psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" >"$work/$1.a" 2>&1 <<SQL &
DO \$\$ BEGIN
  PERFORM audit_log.checkpoint();
  PERFORM pg_advisory_xact_lock(4242);
  FOR i IN 1..2400 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN EXISTS (SELECT 1 FROM pg_locks JOIN pg_stat_activity USING (pid)
                      WHERE NOT granted AND application_name = 'heads_b');
    PERFORM pg_sleep(0.05);
  END LOOP;
  $2
END \$\$;
SQL
    a_pid=$!
    wait_for "session A's checkpoint() to link" \
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND objsubid = 1 AND granted"
}
wait_for() {  # WHAT SQL-GIVING-1
    for _ in $(seq 1 1200); do
        [ "$(q -c "$2")" = 1 ] && return 0
        sleep 0.05
    done
    fail "timed out waiting for $1"
}
# Session B: change the row k = -100 (its lock), then commit: its commit
# waits for the chain.
commit_behind() {  # NAME
    PGAPPNAME=heads_b timeout 120 psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" \
        -c "BEGIN" -c "UPDATE t SET v = v + 1 WHERE k = -100" -c "COMMIT" >"$work/$1.b" 2>&1 &
    b_pid=$!
    wait_for "session B's commit to wait for the chain" \
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'heads_b' AND wait_event_type = 'Lock'"
    # Preloaded, B queued on the chain's advisory lock (granted: it is
    # first) and waits on A's transaction id, and A's lock is the word
    # alone; otherwise both are the advisory lock. (Not while A goes on to
    # wait for B's row.)
    [ "$1" = deadlock ] && return 0
    local got
    got=$(q -c "SELECT string_agg(x, ' ' ORDER BY x) FROM (
                  SELECT a.application_name || ':' || l.locktype || ':' || coalesce(l.objsubid::text, '-')
                         || ':' || l.granted AS x
                    FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE a.application_name IN ('heads_a', 'heads_b')
                     AND (l.locktype = 'transactionid' AND NOT l.granted AND a.application_name = 'heads_b'
                          OR l.locktype = 'advisory' AND l.objsubid = 161)) s")
    if [ "$preloaded" = t ]; then want="heads_b:advisory:161:true heads_b:transactionid:-:false"
    else want="heads_a:advisory:161:true heads_b:advisory:161:false"; fi
    [ "$got" = "$want" ] || fail "$1: the chain's lock and its waiter: $got, expected $want"
}
q -c "CREATE SEQUENCE ids START 1000" -c "INSERT INTO t VALUES (-100, 0)"
v0=$(q -c "SELECT v FROM t WHERE k = -100")
# The events recorded for the row k = -100.
events() { q -c "SELECT count(*) FROM audit_log.events WHERE new_row->>'k' = '-100'"; }
e0=$(events)

# A cycle: A holds the chain and then waits for B's row; B holds the row
# and waits for the chain. The deadlock detector ends one of them (40P01).
hold_chain deadlock "PERFORM v FROM t WHERE k = -100 FOR UPDATE;"
commit_behind deadlock
a_rc=0; wait "$a_pid" || a_rc=$?
b_rc=0; wait "$b_pid" || b_rc=$?
dead=$(cat "$work/deadlock.a" "$work/deadlock.b" | grep -c "deadlock detected" || true)
[ "$dead" = 1 ] && [ $((a_rc == 0)) != $((b_rc == 0)) ] ||
    fail "a cycle through the chain's lock: A exit $a_rc ($(cat "$work/deadlock.a")), B exit $b_rc ($(cat "$work/deadlock.b")); expected one deadlock error"
v1=$(q -c "SELECT v FROM t WHERE k = -100")
[ "$v1" = $((v0 + (b_rc == 0 ? 1 : 0))) ] || fail "after the deadlock, v is $v1 (before $v0, B exit $b_rc)"
e1=$(events)
[ "$e1" = $((e0 + (b_rc == 0 ? 1 : 0))) ] || fail "after the deadlock, $e1 events of the row (before $e0, B exit $b_rc)"
chain_whole "after a deadlock through the chain's lock" "$(q -c "SELECT count(*) FROM audit_log.records WHERE chain_id = 0")"
verify_ok "after a deadlock through the chain's lock"

# A cancel interrupts B's wait: B's commit fails (57014) and leaves nothing.
hold_chain cancel "FOR i IN 1..2400 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_locks JOIN pg_stat_activity USING (pid)
                          WHERE NOT granted AND application_name = 'heads_b');
    PERFORM pg_sleep(0.05);
  END LOOP;"
commit_behind cancel
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'heads_b'" >/dev/null
b_rc=0; wait "$b_pid" || b_rc=$?
[ "$b_rc" != 0 ] && grep -q "canceling statement due to user request" "$work/cancel.b" ||
    fail "a cancelled wait for the chain: B exit $b_rc ($(cat "$work/cancel.b"))"
a_rc=0; wait "$a_pid" || a_rc=$?
[ "$a_rc" = 0 ] || fail "the holder after a cancelled waiter: exit $a_rc ($(cat "$work/cancel.a"))"
[ "$(q -c "SELECT v FROM t WHERE k = -100")" = "$v1" ] || fail "the cancelled commit changed t"
[ "$(events)" = "$e1" ] || fail "the cancelled commit left an event"
chain_whole "after a cancelled wait for the chain" "$(q -c "SELECT count(*) FROM audit_log.records WHERE chain_id = 0")"
verify_ok "after a cancelled wait for the chain"

# The holder dies (terminated): its transaction aborts and releases the
# chain, and B commits. The prepared transaction A had linked is in no
# chain again (B looked while A held it), and the next checkpoint() links it.
hold_chain terminate "PERFORM pg_sleep(60);"
commit_behind terminate
q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'heads_a'" >/dev/null
b_rc=0; wait "$b_pid" || b_rc=$?
[ "$b_rc" = 0 ] || fail "a commit behind a terminated holder: exit $b_rc ($(cat "$work/terminate.b"))"
wait "$a_pid" || true
[ "$(q -c "SELECT v FROM t WHERE k = -100")" = $((v1 + 1)) ] || fail "the commit behind a terminated holder did not change t"
[ "$(events)" = $((e1 + 1)) ] || fail "the commit behind a terminated holder left no event"
[ "$(q -c "SELECT count(*) FROM audit_log.prepared")" = 1 ] || fail "the prepared transaction A had linked is not waiting to be linked again"
q -c "SELECT audit_log.checkpoint() IS NOT NULL" >/dev/null
[ "$(q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || fail "checkpoint() did not link the prepared transaction A had linked"
head=$(q -c "SELECT count(*) FROM audit_log.records WHERE chain_id = 0")
chain_whole "after a terminated holder" "$head"
verify_ok "after a terminated holder"

# A superuser appends a record past the head (a copy of it, one seq on).
# The index sees it; shared memory does not, so there the next commit
# fails once on the primary key and the one after it links past it.
q -c "INSERT INTO audit_log.records SELECT chain_id, seq + 1, tx_id, first_event, last_event, event_count,
        committed_at, segments, link_hash, payload FROM audit_log.records WHERE chain_id = 0 AND seq = $head"
if [ "$preloaded" = t ]; then
    err=$(q -c "INSERT INTO t VALUES (-5, 0)" 2>&1) && fail "preloaded: the commit after an appended record did not fail"
    grep -q "duplicate key value violates unique constraint" <<<"$err" || fail "preloaded: the commit after an appended record failed otherwise: $err"
    appended="the next commit fails once (23505), the one after it links past it"
else
    appended="the next commit links past it"
fi
q -c "INSERT INTO t VALUES (-6, 0)"
last=$(q -c "SELECT max(seq) FROM audit_log.records WHERE chain_id = 0")
[ "$last" = $((head + 2)) ] || fail "after a record appended at $((head + 1)), the commit linked at $last, not $((head + 2))"
problem=$(q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify()" 2>/dev/null)
case $problem in
    "false "*) ;;
    *) fail "verify() missed the appended record: $problem" ;;
esac

# A log created again never meets the old one's head.
q <<'SQL' >/dev/null
SET client_min_messages = warning;
DROP EXTENSION audit_log CASCADE;
CREATE EXTENSION audit_log;
SELECT audit_log.enable('t');
INSERT INTO t VALUES (-7, 0);
SQL
chain_whole "a recreated extension" "$(q -c "SELECT count(*) FROM audit_log.records")"
verify_ok "a recreated extension"
# Two more logs, each of one chain, in databases of their own. Preloaded,
# each log's chains have a block of places of their own (the server log
# names it as it is given): no two of these three logs share one. Either
# way, a transaction that holds the only chain of one log does not delay a
# commit in the other (under a lock timeout), and does delay one in its
# own (which then fails, 55P03).
for x in al_heads_x al_heads_y; do
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $x" -c "CREATE DATABASE $x" \
        -c "ALTER DATABASE $x SET audit_log.chains = 1" 2>/dev/null
    psql -X -q -v ON_ERROR_STOP=1 -d "$x" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t (k int PRIMARY KEY, v int);
SELECT audit_log.enable('t');
INSERT INTO t VALUES (1, 0);
SQL
done
if [ "$preloaded" = t ]; then
    # "chains 0..63 of the log R in database D have places P..Q": the
    # latest such line for each log (the directory starts empty at each
    # restart, and each of these logs has committed since the last one).
    ranges=""
    for x in "$db" al_heads_x al_heads_y; do
        ids=$(psql -X -At -d "$x" -c "SELECT 'audit_log.records'::regclass::oid || ' in database ' || oid
                                        FROM pg_database WHERE datname = current_database()")
        r=$(grep -o "chains 0\.\.63 of the log $ids have places [0-9]*\.\.[0-9]*" "$PGHOST/server.log" | tail -1 |
            sed 's/.* have places //' || true)
        [ -n "$r" ] || fail "the server log names no places for the chains of $x's log ($ids)"
        ranges="$ranges $r"
    done
    [ "$(tr ' ' '\n' <<<"$ranges" | grep . | sort -u | wc -l)" = 3 ] ||
        fail "the logs of three databases were given places $ranges: shared"
    # A rewritten records table (VACUUM FULL, which the database owner may
    # run) keeps its log's block: no new line, and so no block used up.
    # ($ids is al_heads_y's log, the loop's last.)
    given() { grep -c "chains 0\.\.63 of the log $ids have places" "$PGHOST/server.log" || true; }
    before=$(given)
    psql -X -q -v ON_ERROR_STOP=1 -d al_heads_y -c "VACUUM FULL audit_log.records" -c "INSERT INTO t VALUES (3, 0)"
    [ "$(given)" = "$before" ] || fail "a commit after VACUUM FULL of the records table took another block of places"
else
    ranges=" (advisory locks per database)"
fi
q -c "BEGIN" -c "INSERT INTO t VALUES (nextval('ids'), 0)" -c "PREPARE TRANSACTION 'heads_other'" \
    -c "COMMIT PREPARED 'heads_other'"
# As in hold_chain: a checkpoint() in a DO block (one statement, its own
# transaction) links the prepared transaction and holds the chain.
PGAPPNAME=heads_hold timeout 120 psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" \
    -c "DO \$\$ BEGIN PERFORM audit_log.checkpoint(); PERFORM pg_advisory_xact_lock(4343); PERFORM pg_sleep(60); END \$\$" \
    >"$work/hold.out" 2>&1 &
hold_pid=$!
wait_for "a transaction to hold $db's chain" \
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND objsubid = 1 AND granted"
for x in al_heads_x al_heads_y; do
    out=$(PGOPTIONS="-c lock_timeout=5s" psql -X -q -v ON_ERROR_STOP=1 -At -d "$x" -c "INSERT INTO t VALUES (2, 0)" 2>&1) ||
        fail "a commit in $x while $db's chain is held: $out"
done
out=$(PGOPTIONS="-c lock_timeout=1s" psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" -c "INSERT INTO t VALUES (-9, 0)" 2>&1) &&
    fail "a commit in $db did not wait for its own chain, held by another transaction"
grep -q "lock timeout" <<<"$out" || fail "a commit in $db behind its held chain failed otherwise: $out"
q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'heads_hold'" >/dev/null
wait "$hold_pid" || true
for x in al_heads_x al_heads_y; do
    v=$(psql -X -At -d "$x" -c "SELECT ok || ' ' || (SELECT count(*) FROM audit_log.events WHERE op = 'INSERT')
                                FROM audit_log.verify()")
    want="true $([ "$x" = al_heads_y ] && [ "$preloaded" = t ] && echo 3 || echo 2)"
    [ "$v" = "$want" ] || fail "$x's log after the commits beside a held chain: verify() and INSERT events: $v, expected $want"
    psql -X -q -d postgres -c "DROP DATABASE $x"
done

# No word was ever left behind for a waiter to take over.
! grep -q "was left behind by transaction" "$PGHOST/server.log" ||
    fail "a chain's lock was taken over: $(grep -m1 "was left behind by transaction" "$PGHOST/server.log")"
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "chain_heads (preloaded: $preloaded): 400 commits of 8 clients linked without gap, heads from shared memory: $warm (after a restart: from the index first); a deleted head is refilled as without the cache, and one truncated away by VACUUM too; a record appended past the head: $appended; a recreated log starts at seq 1; a wait for the chain's lock ends in a deadlock error, a cancel or the holder's death; three logs' places:$ranges, and a chain held in one database delays no commit in another"

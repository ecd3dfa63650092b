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
# - the extension dropped and created again starts its chain at 1, not at
#   the old log's head.
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
q -c "VACUUM audit_log.records"
size_after=$(q -c "SELECT pg_relation_size('audit_log.records')")
[ "$size_after" -lt "$size_before" ] || fail "VACUUM did not truncate audit_log.records ($size_before bytes, then $size_after)"
out=$(q -c "INSERT INTO t VALUES (-8, 0)" 2>&1) || fail "the commit after a truncated head failed: $out"
head=$((head - 99))
chain_whole "a head truncated away" $head
verify_ok "a head truncated away"

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
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "chain_heads (preloaded: $preloaded): 400 commits of 8 clients linked without gap, heads from shared memory: $warm (after a restart: from the index first); a deleted head is refilled as without the cache, and one truncated away by VACUUM too; a record appended past the head: $appended; a recreated log starts at seq 1"

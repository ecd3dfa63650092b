#!/usr/bin/env bash
# Where a commit learns its chain's head. With the library in
# shared_preload_libraries, each chain's newest link waits in shared memory
# (src/heads.rs); without it, every commit reads it from the records'
# primary key. This runs on both (PostgreSQL 15's test cluster preloads the
# library, 18's does not) and checks, through one chain:
# - eight clients' commits, each linked once, with no gap or fork;
# - after a restart (shared memory empty), the chain goes on from the index;
# - a superuser deletes the newest link: with the heads in shared memory the
#   next commit links past the hole and verify() reports the missing link;
#   reading the index, it takes the hole's place and only a checkpoint would
#   show the loss (the README's threat model says so);
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
script=$(mktemp /tmp/audit_log_heads.XXXXXX); chmod 644 "$script"
trap 'rm -f "$script"' EXIT
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
"$BIN/pgbench" -n -c 8 -j 2 -t 50 -f "$script" "$db" >/dev/null 2>&1 || fail "pgbench failed"
chain_whole "8 clients, 50 commits each" $((base + 400))
verify_ok "after 8 clients"

runuser -u postgres -- "$BIN/pg_ctl" -D "$PGHOST/data" -m fast -w restart -l "$PGHOST/server.log" >/dev/null
q -c "INSERT INTO t VALUES (-1, 0)"
head=$((base + 401))
chain_whole "after a restart" $head
verify_ok "after a restart"

# The newest link goes, by a superuser who disables the guards (the
# transaction is linked too: it changed an audit table); then a commit.
deleted=$(q <<'SQL' | grep -x '[0-9]*'
BEGIN;
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
DELETE FROM audit_log.records WHERE chain_id = 0 AND seq = (SELECT max(seq) FROM audit_log.records WHERE chain_id = 0)
RETURNING seq;
ALTER TABLE audit_log.records ENABLE TRIGGER USER;
COMMIT;
SQL
)
[ "$deleted" = "$head" ] || fail "the superuser's DELETE removed seq '$deleted', not the head $head"
q -c "INSERT INTO t VALUES (-2, 0)"
left=$(q -c "SELECT count(*) FILTER (WHERE seq = $deleted) || ' ' || max(seq) FROM audit_log.records WHERE chain_id = 0")
problem=$(q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify()" 2>/dev/null)
if [ "$preloaded" = t ]; then
    [ "${left% *}" = 0 ] && [ "${left#* }" -gt "$deleted" ] ||
        fail "preloaded: after the deleted head $deleted, chain 0 has (records at $deleted, last seq) $left: the hole was filled"
    case $problem in
        "false link_missing: chain 0 lacks records $deleted..$deleted "*) ;;
        *) fail "preloaded: verify() did not report the deleted link $deleted: $problem" ;;
    esac
    what="the next commits link past it and verify() reports the hole (${problem#false })"
else
    chain_whole "not preloaded: the commits after the deleted head" "${left#* }"
    [ "$problem" = "true " ] || fail "not preloaded: verify() says $problem"
    what="the next commit takes its seq and verify() holds (a checkpoint would show it)"
fi

# A log created again never meets the old one's head.
q <<'SQL' >/dev/null
SET client_min_messages = warning;
DROP EXTENSION audit_log CASCADE;
CREATE EXTENSION audit_log;
SELECT audit_log.enable('t');
INSERT INTO t VALUES (-3, 0);
SQL
chain_whole "a recreated extension" "$(q -c "SELECT count(*) FROM audit_log.records")"
verify_ok "a recreated extension"
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "chain_heads (preloaded: $preloaded): 400 commits of 8 clients and one after a restart linked without gap; a deleted head: $what; a recreated log starts at seq 1"

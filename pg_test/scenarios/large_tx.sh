#!/usr/bin/env bash
# A transaction larger than the server may hold in memory, written by a
# table's (non-superuser) owner: every reader of the log must take it one
# segment at a time. The cluster runs under an address-space limit
# (`ulimit -v`, 1 GB for the postmaster and every backend) and the owner
# inserts 1,500 rows of 1 MB in one statement: 1.5 GB of events, which
# spill to segments as they are captured (compressed, they take a few MB on
# disk). Then verify() (in the session and with worker threads, and against
# a checkpoint), checkpoint(), the events and links views, and prove() of an
# event inside it must work without the server crashing, and a changed byte
# in one segment must still be caught, verify() naming the transaction.
# Before readers streamed segments, each of them read the whole transaction
# into memory: here that failed the allocation and took the whole cluster
# down.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_LARGE_DIR:-/tmp/audit_log_large_tx}
export PGHOST=$dir PGPORT=${AUDIT_LOG_LARGE_PORT:-55507} PGUSER=postgres
db=al_large
limit_kb=1048576     # ulimit -v for the postmaster: 1 GB of address space
rows=1500            # of 1 MB each, in one transaction
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
as_owner() { q -U large_owner "$@"; }
as_auditor() { q -U large_auditor "$@"; }
command -v audit-log >/dev/null || fail "audit-log is not on PATH (scripts/install.sh installs it)"
t0=$(date +%s.%N)
lap() { local t; t=$(date +%s.%N); took=$(awk -v a="$t0" -v b="$t" 'BEGIN { printf "(%.1f s)", b - a }'); t0=$t; }

if [ -f "$dir/data/postmaster.pid" ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$dir"; mkdir -p "$dir/work"; chown postgres:postgres "$dir"; chmod 777 "$dir/work"
work=$dir/work
cleanup() {
    runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
cat >>"$dir/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
max_wal_size = '4GB'
CONF
# `ulimit -v` sets the limit of this shell; pg_ctl, the postmaster and every
# backend inherit it.
runuser -u postgres -- bash -c "ulimit -v $limit_kb && exec env RUST_BACKTRACE=1 '$BIN/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w start" >/dev/null ||
    fail "cluster did not start with ulimit -v $limit_kb: $(tail -5 "$dir/server.log" 2>/dev/null)"
# After a backend crash the postmaster restarts every child, the
# checkpointer too, but pg_postmaster_start_time() stays: both are compared.
instance() { psql -X -At -d postgres -c "SELECT pg_postmaster_start_time() || ', checkpointer ' || pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"; }
no_crash() {
    local now; now=$(instance)
    [ "$now" = "$started" ] || fail "the server restarted: it was $started, now $now"
    ! grep -E -m1 "terminated by signal|reinitializing|panicked" "$dir/server.log" || fail "a backend crashed (server log above)"
}
started=$(instance)
lap; echo "  cluster on port $PGPORT, ulimit -v $limit_kb kB $took"

psql -X -q -d postgres -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE ROLE large_owner LOGIN;
CREATE ROLE large_auditor LOGIN IN ROLE audit_log_auditor;
CREATE TABLE big (id int PRIMARY KEY, v text);
ALTER TABLE big OWNER TO large_owner;
SELECT audit_log.enable('big');
SQL
as_owner -c "INSERT INTO big VALUES (0, 'before')"
as_owner -c "INSERT INTO big SELECT g, repeat(chr(65 + g % 26), 1000000) FROM generate_series(1, $rows) g"
as_owner -c "UPDATE big SET v = 'after' WHERE id = 0"
no_crash
first=$(q -c "SELECT first_event FROM audit_log.records WHERE event_count = $rows")
[ -n "$first" ] || fail "no record of $rows events: $(q -c "SELECT event_count, segments FROM audit_log.records")"
seg=$(q -c "SELECT count(*) || ' segments, ' || pg_size_pretty(sum(pg_column_size(payload))) || ' stored, ' || pg_size_pretty(sum(octet_length(payload))) || ' of events' FROM audit_log.segments WHERE first_event = $first")
lap; echo "  the owner wrote $rows rows of 1 MB in one transaction (event $first on): $seg $took"

# verify(), in the session's thread and in two worker threads; a checkpoint
# (the tree's leaf of the transaction); verify() against it.
events=$((rows + 3))   # with the ENABLE event and the rows before and after
for threads in 0 2; do
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" \
        -c "SELECT ok, events_checked, coalesce(problem, '') FROM audit_log.verify()")
    [ "$v" = "t|$events|" ] || fail "verify() with verify_threads = $threads: $v"
done
cp=$(as_auditor -c "SELECT audit_log.checkpoint()")
echo "$cp" >"$work/cp.json"
for threads in 0 2; do
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" -c "SELECT ok, coalesce(problem, '') FROM audit_log.verify('$cp')")
    [ "$v" = "t|" ] || fail "verify(checkpoint) with verify_threads = $threads: $v"
done
no_crash
lap; echo "  verify() with 0 and 2 worker threads, checkpoint() and verify(checkpoint) ok over $events events $took"

# The views: every event of the transaction, its values whole, and its last
# event's hash as the link covers it.
v=$(as_auditor -c "SELECT count(*), sum(length(new_row->>'v')), count(DISTINCT hash), max(tx_seq)
                     FROM audit_log.events WHERE tx_id = (SELECT tx_id FROM audit_log.records WHERE first_event = $first)")
[ "$v" = "$rows|$((rows * 1000000))|$rows|$rows" ] || fail "the events view of the transaction: $v"
v=$(as_auditor -c "SELECT l.event_count, l.last_event_hash = e.hash FROM audit_log.links l JOIN audit_log.events e ON e.id = l.last_event WHERE l.first_event = $first")
[ "$v" = "$rows|t" ] || fail "the links view of the transaction: $v"
no_crash
lap; echo "  the events view reads its $rows events (1.5 GB of values), the links view its last event's hash $took"

# prove() of an event in the middle of the transaction, checked by the CLI.
mid=$(as_auditor -c "SELECT id FROM audit_log.events WHERE tx_seq = $((rows / 2)) AND id >= $first AND table_name = 'big'")
as_auditor -c "SELECT audit_log.prove($mid)" >"$work/proof.json"
out=$(audit-log verify-proof "$work/proof.json" --checkpoint "$work/cp.json" 2>&1) || fail "verify-proof of event $mid: $out"
echo "$out" | head -1 | grep -q "\"id\":$mid," || fail "verify-proof did not print event $mid: $(echo "$out" | head -c 300)"
no_crash
lap; echo "  prove() of event $mid (tx_seq $((rows / 2))) checks with the CLI $took"

# A superuser changes one byte inside one segment (a value's letter, at
# 500,000 bytes in): verify() must catch it on the streamed path too.
part=$(q -c "SELECT part FROM audit_log.segments WHERE first_event = $first ORDER BY part OFFSET 100 LIMIT 1")
for threads in 0 2; do
    v=$(q -c "SET client_min_messages = error" -c "BEGIN" -c "ALTER TABLE audit_log.segments DISABLE TRIGGER USER" \
          -c "UPDATE audit_log.segments SET payload = overlay(payload PLACING '\\x00'::bytea FROM 500000 FOR 1) WHERE first_event = $first AND part = $part" \
          -c "SET audit_log.verify_threads = $threads" \
          -c "SELECT ok, first_bad_event, problem FROM audit_log.verify()" -c "ROLLBACK")
    case "$v" in "f|$first|content_changed:"*) ;; *) fail "a changed byte in segment $part, verify_threads = $threads: $v" ;; esac
done
v=$(as_auditor -c "SELECT ok FROM audit_log.verify()")
[ "$v" = t ] || fail "verify() after the edit was rolled back: $v"
no_crash
lap; echo "  a byte changed in segment $part is caught (content_changed at event $first) with 0 and 2 worker threads $took"
# An export puts a record's segments on its one line: a transaction this
# large does not fit one (the server refuses to build it, out of memory
# under this limit). The CLI must say what the server said, not crash it.
dsn="host=$PGHOST port=$PGPORT user=large_auditor dbname=$db"
if out=$(audit-log export --dsn "$dsn" --format records --out "$work/records.jsonl" 2>&1); then
    out=$(audit-log verify "$work/records.jsonl" 2>&1) || fail "audit-log verify of the export: $out"
    echo "  the CLI exported and verified it: $(echo "$out" | head -1)"
else
    echo "$out" | grep -qE "\((53200|54000|XX000)\)" || fail "the export failed without the server's reason: $out"
    echo "  the CLI's export refuses it with the server's reason: $out"
fi
no_crash
echo "large_tx: a 1.5 GB transaction under a 1 GB address-space limit is verified, checkpointed, read through the views and proven, one segment at a time; an edit in it is caught; no crash"

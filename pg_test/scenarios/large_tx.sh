#!/usr/bin/env bash
# A transaction larger than the server may hold in memory, written by a
# table's (non-superuser) owner: every reader of the log must take it one
# segment at a time. The cluster runs under an address-space limit
# (`ulimit -v`, 1 GB for the postmaster and every backend) and the owner
# inserts 1,500 rows of 1 MB in one statement: 1.5 GB of events, which
# spill to segments as they are captured (compressed, they take a few MB on
# disk); then as much again in a prepared transaction, linked by the next
# commit. Then verify() (in the session and with worker threads, and against
# a checkpoint), checkpoint(), the events and links views, and prove() of an
# event inside it must work without the server crashing, and a changed byte
# in one segment must still be caught, verify() naming the transaction. The
# CLI's binary export and offline verify, and the live feed (tail), must do
# the same under a limit of their own. Before readers streamed segments, each of them read the whole transaction
# into memory: here that failed the allocation and took the whole cluster
# down.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_LARGE_DIR:-/tmp/audit_log_large_tx}
export PGHOST=$dir PGPORT=${AUDIT_LOG_LARGE_PORT:-55512} PGUSER=postgres
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

# shellcheck source=../lib/own_cluster.sh
. "$here/lib/own_cluster.sh"
own_cluster_start "-v $limit_kb" "fsync = off
max_wal_size = '4GB'
max_prepared_transactions = 2"
work=$dir/work
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
# From one session, so on one chain: 300 single-row transactions (a chain
# past one tile of its Merkle tree, which checkpoint() can integrate by a
# sequential scan), then the large one.
{
    for i in $(seq 1 300); do echo "INSERT INTO big VALUES (-$i, 'before');"; done
    echo "INSERT INTO big SELECT g, repeat(chr(65 + g % 26), 1000000) FROM generate_series(1, $rows) g;"
} | as_owner
# Another as large, prepared and committed: the next audited commit links it.
as_owner <<SQL
BEGIN;
INSERT INTO big SELECT g, repeat(chr(97 + g % 26), 1000000) FROM generate_series($rows + 1, 2 * $rows) g;
PREPARE TRANSACTION 'large';
COMMIT PREPARED 'large';
SQL
# The owner's next commit links it with the hash its capture sealed at
# PREPARE, without hashing its 1.5 GB again.
out=$(as_owner -c "SET client_min_messages = debug1" -c "UPDATE big SET v = 'after' WHERE id = -1" 2>&1)
grep -q <<<"$out" "linking prepared transaction .* with its sealed hash" || fail "the prepared transaction was not linked with its sealed hash: $out"
no_crash
first=$(q -c "SELECT min(first_event) FROM audit_log.records WHERE event_count = $rows")
[ "$(q -c "SELECT count(*) FROM audit_log.records WHERE event_count = $rows")" = 2 ] ||
    fail "not two records of $rows events: $(q -c "SELECT event_count, segments FROM audit_log.records WHERE event_count > 1")"
seg=$(q -c "SELECT count(*) || ' segments, ' || pg_size_pretty(sum(pg_column_size(payload))) || ' stored, ' || pg_size_pretty(sum(octet_length(payload))) || ' of events' FROM audit_log.segments WHERE first_event = $first")
lap; echo "  the owner wrote $rows rows of 1 MB in one transaction (event $first on): $seg; another as large prepared, committed and linked $took"

# verify(), in the session's thread and in two worker threads; a checkpoint
# (the tree's leaf of the transaction); verify() against it.
events=$((2 * rows + 302))   # with the ENABLE event, the 300 before and the UPDATE after
for threads in 0 2; do
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" \
        -c "SELECT ok, events_checked, coalesce(problem, '') FROM audit_log.verify()")
    [ "$v" = "t|$events|" ] || fail "verify() with verify_threads = $threads: $v"
done
# The tree's leaves by one sequential scan (then rolled back), and through
# the primary key.
q -c "BEGIN" -c "SET LOCAL audit_log.integration_scan_leaves = 1" -c "SET LOCAL client_min_messages = debug1" \
    -c "SELECT audit_log.checkpoint()" -c "ROLLBACK" >/dev/null 2>"$work/scan.log" ||
    fail "checkpoint() by a sequential scan: $(cat "$work/scan.log")"
grep -q "leaves of [0-9]* chain(s) by one sequential scan" "$work/scan.log" ||
    fail "checkpoint() did not integrate by a sequential scan: $(cat "$work/scan.log")"
cp=$(as_auditor -c "SELECT audit_log.checkpoint()")
echo "$cp" >"$work/cp.json"
for threads in 0 2; do
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" -c "SELECT ok, coalesce(problem, '') FROM audit_log.verify('$cp')")
    [ "$v" = "t|" ] || fail "verify(checkpoint) with verify_threads = $threads: $v"
done
# Both large transactions are in their chains' incomplete last tiles:
# checkpoint() kept those tiles' leaves, so the next one hashes nothing
# again (it used to rehash 3 GB at every call, until 255 more records
# followed on each chain).
[ "$(q -c "SELECT count(*) FROM audit_log.tiles WHERE level = 0 AND width < 256")" -ge 1 ] ||
    fail "checkpoint() kept no leaves of an incomplete tile: $(q -c "SELECT chain_id, level, idx, width FROM audit_log.tiles")"
out=$(as_auditor -c "SET client_min_messages = debug1" \
        -c "SELECT audit_log.checkpoint()->'trees' = '$cp'::jsonb->'trees'" 2>&1)
grep -qx "t" <<<"$out" || fail "the next checkpoint's trees differ: $out"
grep -q <<<"$out" "the checkpoint's trees hashed 0 kB of events" || fail "the next checkpoint hashed events again: $out"
# checkpoint() and prove() trust those leaves as they trust complete tiles;
# verify(checkpoint) does not: a wrong one (a superuser's insert) makes a
# checkpoint that verify() refuses.
v=$(q -c "SET client_min_messages = error" -c "BEGIN" \
      -c "INSERT INTO audit_log.tiles (chain_id, level, idx, width, hashes, root)
          SELECT chain_id, 0, idx, width + 1, overlay(hashes PLACING '\xff'::bytea FROM 1 FOR 1) || substr(hashes, 1, 32), root
            FROM audit_log.tiles WHERE level = 0 AND width < 256 ORDER BY width DESC LIMIT 1" \
      -c "SELECT ok, problem FROM audit_log.verify(audit_log.checkpoint())" -c "ROLLBACK")
case "$v" in "f|"*root*) ;; *) fail "verify() of a checkpoint made with a wrong stored leaf: $v" ;; esac
no_crash
lap; echo "  verify() with 0 and 2 worker threads, checkpoint() (by a scan and through the primary key) and verify(checkpoint) ok over $events events; the next checkpoint() reads the kept leaves of the incomplete tiles, and verify() refuses a checkpoint made with a wrong one $took"

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
mid=$(as_auditor -c "SELECT id FROM audit_log.events WHERE tx_seq = $((rows / 2)) AND tx_id = (SELECT tx_id FROM audit_log.records WHERE first_event = $first)")
as_auditor -c "SELECT audit_log.prove($mid)" >"$work/proof.json"
out=$(audit-log verify-proof "$work/proof.json" --checkpoint "$work/cp.json" 2>&1) || fail "verify-proof of event $mid: $out"
[[ $(head -1 <<<"$out") == *"\"id\":$mid,"* ]] || fail "verify-proof did not print event $mid: $(echo "$out" | head -c 300)"
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
# Offline. The binary export writes a transaction's segments one at a time
# and `audit-log verify` reads them so, both under a 512 MB address-space
# limit of their own; a flipped byte in the file is caught. The records
# export puts a record's segments on its one line, which a transaction this
# large does not fit (the server refuses to build it, out of memory here):
# the CLI must then say what the server said, not crash it.
dsn="host=$PGHOST port=$PGPORT user=large_auditor dbname=$db"
out=$( (ulimit -v 524288 && audit-log export --dsn "$dsn" --format binary --out "$work/log.bin") 2>&1) ||
    fail "the binary export under ulimit -v 512 MB: $out"
out=$( (ulimit -v 524288 && audit-log verify --checkpoint "$work/cp.json" "$work/log.bin") 2>&1) ||
    fail "audit-log verify of the binary export under ulimit -v 512 MB: $out"
grep -q <<<"$out" "^events checked: $events," || fail "audit-log verify counted otherwise: $out"
out=$( (ulimit -v 524288 && audit-log report --out "$work/report.html" "$work/log.bin") 2>&1) ||
    fail "audit-log report of the binary export under ulimit -v 512 MB: $out"
grep -q "3,302\|3302" "$work/report.html" || fail "the report does not count the $events events"
python3 -c "
import sys
b = bytearray(open(sys.argv[1], 'rb').read()); b[len(b) // 2] ^= 1
open(sys.argv[2], 'wb').write(b)" "$work/log.bin" "$work/bad.bin"
if out=$(audit-log verify "$work/bad.bin" 2>&1); then fail "a flipped byte in the middle of the binary export verified: $out"; fi
lap; echo "  the binary export ($(stat -c %s "$work/log.bin") bytes), audit-log verify --checkpoint and audit-log report of it, each under a 512 MB limit, hold; a flipped byte is caught $took"
# The logical export (one line per event) and its verification, under the
# same limit: the verifier's batches are bounded by bytes, not only lines.
out=$( (ulimit -v 524288 && audit-log export --dsn "$dsn" --out "$work/logical.jsonl" &&
        audit-log verify "$work/logical.jsonl") 2>&1) || fail "the logical export and its verification under ulimit -v 512 MB: $out"
grep -q <<<"$out" "^events checked: $events," || fail "audit-log verify of the logical export counted otherwise: $out"
lap; echo "  the logical export ($(stat -c %s "$work/logical.jsonl") bytes) and audit-log verify of it hold under a 512 MB limit $took"
rm -f "$work/logical.jsonl"
# The live feed ships every event of both (3 GB of lines), under the same
# limit, checking each record before it ships it; a second run has nothing new.
tail_feed() { (ulimit -v 524288 && audit-log tail --dsn "$dsn" --state "$work/tail.state" --out "$work/feed.jsonl" --once) 2>&1; }
out=$(tail_feed) || fail "audit-log tail under ulimit -v 512 MB: $out"
[ "$(wc -l <"$work/feed.jsonl")" = "$events" ] || fail "the feed holds $(wc -l <"$work/feed.jsonl") lines, not $events: $out"
out=$(tail_feed) || fail "audit-log tail, again: $out"
[ "$(wc -l <"$work/feed.jsonl")" = "$events" ] || fail "the second tail changed the feed: $out"
lap; echo "  audit-log tail shipped its $events events ($(stat -c %s "$work/feed.jsonl") bytes) under a 512 MB limit, once $took"
rm -f "$work/feed.jsonl"
if out=$(audit-log export --dsn "$dsn" --format records --out "$work/records.jsonl" 2>&1); then
    out=$(audit-log verify "$work/records.jsonl" 2>&1) || fail "audit-log verify of the records export: $out"
    echo "  the CLI exported it as records and verified them: $(echo "$out" | head -1)"
else
    grep -qE "reading records: .*\((53200|54000)\)" <<<"$out" || fail "the records export failed without the server's reason: $out"
    echo "  the records export refuses it with the server's reason: $out"
fi
no_crash
# An auditor's open transaction that calls checkpoint() links no prepared
# transaction (its links would be its own to commit, and a checkpoint that
# named them would describe a log that never was if it rolled back), so it
# holds no linkers' lock, and an audited commit meanwhile links it. (It
# used to take that lock until it ended, and every audited commit that saw
# a prepared transaction waiting queued for it at COMMIT, where no
# statement_timeout applies. The 60 s is a guard against such a hang, not a
# measurement: the commit takes milliseconds.)
as_owner -c "BEGIN" -c "INSERT INTO big VALUES (-1000, 'prepared')" -c "PREPARE TRANSACTION 'held'" -c "COMMIT PREPARED 'held'"
as_auditor -c "BEGIN" -c "SELECT audit_log.checkpoint() IS NOT NULL" -c "SELECT pg_sleep(300)" -c "COMMIT" >/dev/null 2>&1 &
reader=$!
open_reader() { q -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'large_auditor' AND query LIKE '%pg_sleep%'"; }
for _ in $(seq 1 300); do [ "$(open_reader)" = 1 ] && break; sleep 0.1; done
[ "$(open_reader)" = 1 ] || fail "the reader's transaction did not start"
held() { q -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 0 AND objsubid = 163 AND granted"; }  # 0, 0xA3
[ "$(held)" = 0 ] || fail "the reader's checkpoint() in a transaction block took the linkers' lock"
[ "$(q -c "SELECT count(*) FROM audit_log.prepared")" = 1 ] || fail "the reader's checkpoint() in a transaction block linked the prepared transaction"
out=$(timeout 60 psql -X -q -v ON_ERROR_STOP=1 -At -d $db -U large_owner -c "SET lock_timeout = '10s'" \
        -c "INSERT INTO big VALUES (-1001, 'while a reader is open')" 2>&1) ||
    fail "an audited commit waited for the reader's open transaction: $out"
[ "$(q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || fail "the audited commit did not link the prepared transaction"
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'large_auditor' AND state = 'active'" >/dev/null
wait "$reader" || true
[ "$(as_auditor -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "verify() after the reader"
no_crash
lap; echo "  an auditor's open transaction's checkpoint() links nothing and holds no lock; an audited commit meanwhile links the prepared transaction $took"
echo "large_tx: a 1.5 GB transaction under a 1 GB address-space limit is verified, checkpointed, read through the views, proven, exported and verified offline, and fed to a SIEM, one segment at a time; an edit in it is caught; no crash"

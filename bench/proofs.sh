#!/usr/bin/env bash
# Merkle proofs at scale (issue 14's targets): a log of EVENTS events
# (default 10,000,000) in transactions of EVENTS_PER_TX (default 10), all on
# CHAINS chains (default 1: one tree as deep as the log makes it), then:
#   1. tile integration: the first checkpoint() after the load integrates
#      every record's leaf (reading and hashing its events) into tiles:
#      leaves/s (target >= 1M);
#   2. prove(): the proof of a random event to that checkpoint, average
#      latency over PROVES calls (target < 10 ms), and its size;
#   3. consistency(): from a checkpoint taken at half the log to now,
#      average latency over CONSISTENCY calls (target < 50 ms), and its size;
#   4. the same proofs checked offline: audit-log verify-proof and the
#      witness in its default (consistency) mode against --full.
# The write path is not in this bench: tiles are integrated off it (bench/run.sh
# measures writes; nothing on the commit path changed).
#
#   bash bench/proofs.sh                      (needs the README's setup)
#   EVENTS=1000000 bash bench/proofs.sh       (a quicker run)
#   SHARED_BUFFERS=2GB bash bench/proofs.sh   (the log in PostgreSQL's buffers)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
events=${EVENTS:-10000000} per_tx=${EVENTS_PER_TX:-10} chains=${CHAINS:-1}
proves=${PROVES:-200} consistencies=${CONSISTENCY:-50}
dir=${BENCH_DIR:-/tmp/audit_log_bench_proofs} port=${BENCH_PORT:-55453}
cli=${AUDIT_LOG_CLI:-$(command -v audit-log || echo "$root/target/release/audit-log")}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
# SHARED_BUFFERS=2GB: the records a checkpoint integrates are still in
# PostgreSQL's buffers, as they are when checkpoints follow the writes.
if [ -n "${SHARED_BUFFERS:-}" ]; then
    psql -X -q -d postgres -c "ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS'"
    runuser -u postgres -- "$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w restart >/dev/null
fi
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d bench "$@"; }
ms() { date +%s%N | cut -c1-13; }
psql -X -q -d postgres -c "CREATE DATABASE bench" -c "ALTER DATABASE bench SET audit_log.chains = $chains"
q -c "CREATE EXTENSION audit_log" \
  -c "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c numeric)" \
  -c "CREATE SEQUENCE s" -c "SELECT audit_log.enable('t')" >/dev/null
echo "Merkle proof benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(q -c 'SHOW server_version' | cut -d' ' -f1), shared_buffers $(q -c 'SHOW shared_buffers')"

# The log, written fast (synchronous_commit off: this bench is not about writes).
script=$dir/load.sql
echo "INSERT INTO t (id, a, b, c) SELECT nextval('s'), g, 'customer ' || g, g * 1.5 FROM generate_series(1, $per_tx) g;" >"$script"
chmod 644 "$script"
txs=$((events / per_tx))
half=$((txs / 2))
t0=$(ms)
PGOPTIONS="$PGOPTIONS -c synchronous_commit=off" pgbench -n -c 2 -j 2 -t $((half / 2)) -f "$script" bench >/dev/null 2>&1
q -c "CREATE TABLE cp_half AS SELECT audit_log.checkpoint() AS c"
PGOPTIONS="$PGOPTIONS -c synchronous_commit=off" pgbench -n -c 2 -j 2 -t $(((txs - half) / 2)) -f "$script" bench >/dev/null 2>&1
t1=$(ms)
n_events=$(q -c "SELECT sum(event_count) FROM audit_log.records")
n_records=$(q -c "SELECT count(*) FROM audit_log.records")
size=$(q -c "SELECT pg_size_pretty(pg_total_relation_size('audit_log.records'))")
echo "log: $n_events events in $n_records transactions on $chains chain(s), $size, written in $(( (t1 - t0) / 1000 )) s"

# 1. Integration: the checkpoint after the load integrates what the half-way
# checkpoint did not.
before=$(q -c "SELECT coalesce(sum(width), 0) FROM audit_log.tiles WHERE level = 0")
t0=$(ms)
# debug1: checkpoint() says how long the integration itself took.
q -c "SET client_min_messages = debug1" -c "CREATE TABLE cp_now AS SELECT audit_log.checkpoint() AS c" 2>"$dir/cp_debug.log"
t1=$(ms)
after=$(q -c "SELECT coalesce(sum(width), 0) FROM audit_log.tiles WHERE level = 0")
leaves=$((after - before))
took=$((t1 - t0))
line=$(grep -o "integrated [0-9]* leaves (.*" "$dir/cp_debug.log" | head -1)
int_ms=$(echo "$line" | sed -n 's/.*) in \([0-9.]*\) ms.*/\1/p')
brin_ms=$(echo "$line" | sed -n 's/.*BRIN index in \([0-9.]*\) ms.*/\1/p')
by_scan=$(echo "$line" | sed -n 's/.*(\([0-9]*\) by a sequential scan).*/\1/p')
echo "integration: $leaves leaves into $(q -c "SELECT count(*) FROM audit_log.tiles") tiles ($by_scan by one sequential scan)"
echo "  the integration itself: ${int_ms} ms: $(awk -v l="$leaves" -v t="$int_ms" 'BEGIN { printf "%d", l * 1000 / (t > 0 ? t : 1) }') leaves/s (target >= 1,000,000)"
echo "  the whole checkpoint(): $took ms: $(( leaves * 1000 / (took > 0 ? took : 1) )) leaves/s, with the BRIN summary for prove() (${brin_ms} ms) and the client's round trip"
echo "  tiles on disk: $(q -c "SELECT pg_size_pretty(pg_total_relation_size('audit_log.tiles'))") ($(q -c "SELECT round(pg_total_relation_size('audit_log.tiles')::numeric / $n_records, 1)") bytes per transaction)"
t0=$(ms); q -c "SELECT audit_log.checkpoint()" >/dev/null; t1=$(ms)
echo "  a checkpoint with nothing new to integrate: $((t1 - t0)) ms"

# 2. prove(): random events, to the checkpoint.
max=$(q -c "SELECT max(id) FROM audit_log.events")
echo "\\set id random(2, $max)
SELECT length(audit_log.prove(:id, (SELECT c FROM cp_now))::text);" >"$dir/prove.sql"
lat=$(pgbench -n -c 1 -t "$proves" -f "$dir/prove.sql" bench 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
q -c "SELECT audit_log.prove($((max / 3)), (SELECT c FROM cp_now))" >"$dir/proof.json"
psteps=$(q -c "SELECT jsonb_array_length(p->'path') + jsonb_array_length(p->'event_path') FROM (SELECT pg_read_file('$dir/proof.json')::jsonb AS p) x" 2>/dev/null ||
         python3 -c "import json,sys; p=json.load(open('$dir/proof.json')); print(len(p['path'])+len(p['event_path']))")
echo "prove(): $lat ms on average over $proves random events (target < 10 ms); a proof is $(stat -c %s "$dir/proof.json") bytes, $psteps hashes"

# 3. consistency(): from the half-way checkpoint.
echo "SELECT length(audit_log.consistency((SELECT c FROM cp_half))::text);" >"$dir/cons.sql"
lat=$(pgbench -n -c 1 -t "$consistencies" -f "$dir/cons.sql" bench 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
q -c "SELECT audit_log.consistency((SELECT c FROM cp_half))" >"$dir/cons.json"
csteps=$(python3 -c "import json; c=json.load(open('$dir/cons.json')); print(sum(len(p['path']) for p in c['proofs']))")
echo "consistency(): $lat ms on average over $consistencies calls, from half the log to all of it (target < 50 ms); $(stat -c %s "$dir/cons.json") bytes, $csteps hashes"

# 4. Offline: verify-proof, and the witness by proofs against --full.
q -c "SELECT c FROM cp_now" >"$dir/cp_now.json"
t0=$(ms); "$cli" verify-proof "$dir/proof.json" --checkpoint "$dir/cp_now.json" >/dev/null 2>&1; t1=$(ms)
echo "audit-log verify-proof: $((t1 - t0)) ms (the whole process)"
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=bench"
"$cli" keygen --out "$dir/key" >/dev/null 2>&1
"$cli" witness --dsn "$dsn" --state "$dir/w" --key "$dir/key" >/dev/null
q -c "INSERT INTO t VALUES (-1, 0, 'x', 0)"
t0=$(ms); "$cli" witness --dsn "$dsn" --state "$dir/w" --key "$dir/key" >/dev/null; t1=$(ms)
by_proofs=$((t1 - t0))
q -c "INSERT INTO t VALUES (-2, 0, 'x', 0)"
t0=$(ms); "$cli" witness --dsn "$dsn" --state "$dir/w" --key "$dir/key" --full >/dev/null; t1=$(ms)
echo "witness run: $by_proofs ms by consistency proofs, $((t1 - t0)) ms with --full (a verify() of all $n_events events)"

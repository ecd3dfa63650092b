#!/usr/bin/env bash
# audit-log tail, the live feed: how fast it ships a backlog, and how far
# behind the commits it runs under a steady write rate.
#   1. catch-up: BACKLOG single-row audited transactions (default 200,000)
#      plus one 100,000-row statement are written first, then
#      `tail --once` ships them all, to a file (fsync per poll), in each
#      format;
#   2. live: pgbench commits single-row audited transactions at RATE per
#      second (default 500) for SECONDS (default 20) while the tail follows
#      at its default 200 ms poll interval; the tail prints the lag from
#      each transaction's commit to the write of its lines.
#
#   bash bench/tail.sh                   (needs the README's setup)
#   RATE=2000 SECONDS_LIVE=30 bash bench/tail.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
backlog=${BACKLOG:-200000} rate=${RATE:-500} live=${SECONDS_LIVE:-20}
dir=${BENCH_DIR:-/tmp/audit_log_bench_tail} port=${BENCH_PORT:-55452}
cli=${AUDIT_LOG_CLI:-$(command -v audit-log || echo "$root/target/release/audit-log")}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d bench "$@"; }
psql -X -q -d postgres -c "CREATE DATABASE bench"
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
  -c "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c numeric, d timestamptz DEFAULT now())" \
  -c "CREATE SEQUENCE s" -c "SELECT audit_log.enable('t')" >/dev/null
script=$dir/insert.sql
echo "INSERT INTO t (id, a, b, c) SELECT nextval('s'), 42, 'customer ' || currval('s'), 19.99;" >"$script"
chmod 644 "$script"
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=bench"

echo "audit-log tail benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(q -c 'SHOW server_version' | cut -d' ' -f1)"
pgbench -n -c 4 -j 2 -t $((backlog / 4)) -f "$script" bench >/dev/null 2>&1
q -c "INSERT INTO t (id, a, b, c) SELECT nextval('s'), g, 'bulk ' || g, g * 1.5 FROM generate_series(1, 100000) g"
echo "backlog: $(q -c 'SELECT sum(event_count) FROM audit_log.records') events in $(q -c 'SELECT count(*) FROM audit_log.records') transactions"
for format in native ecs ocsf; do
    rm -f "$dir/$format.state" "$dir/$format.jsonl"
    summary=$("$cli" tail --dsn "$dsn" --state "$dir/$format.state" --out "$dir/$format.jsonl" \
                  --format "$format" --once 2>&1 >/dev/null)
    bytes=$(stat -c %s "$dir/$format.jsonl")
    # The lag of a backlog is its age: only the rate means something here.
    summary=${summary#shipped }
    echo "catch-up, $format: ${summary%%; lag*}; $((bytes / $(wc -l <"$dir/$format.jsonl"))) bytes per line"
done

# Live: the native feed follows a steady write rate.
rm -f "$dir/live.state" "$dir/live.jsonl"
"$cli" tail --dsn "$dsn" --state "$dir/live.state" --out "$dir/live.jsonl" --from-now \
    --seconds "$((live + 2))" 2>"$dir/live.err" &
tail_pid=$!
sleep 1
pgbench -n -c 4 -j 2 -R "$rate" -T "$live" -f "$script" bench >"$dir/pgbench.out" 2>&1
wait $tail_pid
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$dir/pgbench.out")
echo "live at ${tps%.*} audited transactions/s (pgbench -R $rate, 4 clients): $(sed 's/^shipped //' "$dir/live.err")"

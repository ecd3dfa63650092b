#!/usr/bin/env bash
# audit-log report over a large log: EVENTS audited row changes (default
# 10,000,000, in transactions of 500,000 rows, so most events sit in spilled
# segments), then a records export, the report of it, and headless
# Chromium rendering the report. Prints each step's time, the report's
# size, and the rate of the report (verification and aggregation) in events/s.
#
#   bash bench/report.sh                 (needs the README's setup)
#   EVENTS=1000000 bash bench/report.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
events=${EVENTS:-10000000} batch=${BATCH:-500000}
dir=${BENCH_DIR:-/tmp/audit_log_bench_report} port=${BENCH_PORT:-55451}
cli=${AUDIT_LOG_CLI:-$(command -v audit-log || echo "$root/target/release/audit-log")}
chromium=${CHROMIUM:-$(command -v chromium)}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d bench "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
psql -X -q -d postgres -c "CREATE DATABASE bench"
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
  -c "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c numeric)" \
  -c "CREATE TABLE u (id bigint PRIMARY KEY, v text)" \
  -c "SELECT audit_log.enable('t'), audit_log.enable('u')" >/dev/null
t0=$(now); done_=0
while [ "$done_" -lt "$events" ]; do
    n=$(( events - done_ < batch ? events - done_ : batch ))
    q -c "INSERT INTO t SELECT g, g, 'row ' || g, g * 1.5 FROM generate_series($done_ + 1, $done_ + $n) g"
    done_=$(( done_ + n ))
    # A few hundred single-row transactions and configuration changes between batches.
    for i in $(seq 1 50); do echo "INSERT INTO u VALUES ($done_ * 100 + $i, 'x');"; done | q
    q -c "SELECT audit_log.enable('u', skip_unchanged_updates => $(( (done_ / batch) % 2 == 0 ))::boolean)" >/dev/null
done
t1=$(now)
total=$(q -c "SELECT sum(event_count) FROM audit_log.records")
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=bench"
"$cli" export --dsn "$dsn" --format records --out "$dir/log.jsonl" 2>/dev/null
t2=$(now)
"$cli" report "$dir/log.jsonl" --out "$dir/report.html" >/dev/null
t3=$(now)
"$chromium" --headless --no-sandbox --disable-gpu --dump-dom "file://$dir/report.html" >"$dir/report.dom" 2>/dev/null
t4=$(now)
grep -q 'Verdict: INTACT' "$dir/report.dom" || { echo "bench: the report is not INTACT" >&2; exit 1; }
echo "audit-log report benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(q -c 'SHOW server_version' | cut -d' ' -f1)"
echo "log: $total events written in $(secs "$t0" "$t1") s; records export $(du -m "$dir/log.jsonl" | cut -f1) MB in $(secs "$t1" "$t2") s"
awk -v e="$total" -v a="$t2" -v b="$t3" 'BEGIN { printf "report (offline verification and aggregation): %.1f s = %.0f events/s\n", b - a, e / (b - a) }'
echo "report size: $(stat -c %s "$dir/report.html") bytes; rendered by headless Chromium in $(secs "$t3" "$t4") s"

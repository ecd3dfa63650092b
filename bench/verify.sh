#!/usr/bin/env bash
# Verification speed alone (issue 11's target: verify() >= 2M events/s on one
# core over a log larger than shared_buffers, the offline verifier at least
# as fast), without bench/run.sh's write workloads. The log: SINGLE
# single-event transactions (default 2,000,000, written by pgbench; the
# hardest case, a link to check for every event), and BULK events in
# INSERT ... SELECT statements of 200,000 rows (default 0; they spill
# segments). Then, ROUNDS times (default 3), medians printed:
#   verify() on one core (audit_log.verify_threads = 0) and with workers;
#   audit-log verify of a records export (JSON lines, base64) and of a
#   binary export (frames, LZ4), each with 1 and with 2 worker threads;
#   raw SHA-256 over the same payload bytes, the limit.
#
#   bash bench/verify.sh                          (needs the README's setup)
#   SINGLE=500000 BULK=500000 bash bench/verify.sh   (a quicker, mixed log)
#   KEEP=1 bash bench/verify.sh                      (leave the cluster running)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
single=${SINGLE:-2000000} bulk=${BULK:-0} rounds=${ROUNDS:-3}
dir=${BENCH_DIR:-/tmp/audit_log_bench_verify} port=${BENCH_PORT:-55454}
cli=${AUDIT_LOG_CLI:-$(command -v audit-log || echo "$root/target/release/audit-log")}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
[ -n "${KEEP:-}" ] || trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d bench "$@"; }
. "$here/stats.sh"
psql -X -q -d postgres -c "CREATE DATABASE bench"
q -c "CREATE EXTENSION audit_log" \
  -c "CREATE TABLE t (id bigserial PRIMARY KEY, a int, b text)" \
  -c "CREATE TABLE vt (id bigint, a int, b text, c numeric, d timestamptz)" \
  -c "SELECT audit_log.enable('t')" -c "SELECT audit_log.enable('vt')" >/dev/null
echo "verify benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(q -c 'SHOW server_version' | cut -d' ' -f1), shared_buffers $(q -c 'SHOW shared_buffers')"

# The log, written fast (synchronous_commit off: this bench is not about writes).
script=$dir/load.sql
echo "INSERT INTO t (a, b) VALUES (1, 'single-row transaction');" >"$script"
chmod 644 "$script"
if [ "$single" -gt 0 ]; then
    PGOPTIONS="$PGOPTIONS -c synchronous_commit=off" pgbench -n -c 2 -j 2 -t $((single / 2)) -f "$script" bench >/dev/null 2>&1
fi
have=0
while [ "$have" -lt "$bulk" ]; do
    n=$(( bulk - have < 200000 ? bulk - have : 200000 ))
    q -c "INSERT INTO vt SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, $n) g"
    have=$((have + n))
done
q -c "VACUUM ANALYZE audit_log.records" -c "VACUUM ANALYZE audit_log.segments"
events=$(q -c "SELECT sum(event_count) FROM audit_log.records")
records=$(q -c "SELECT count(*) FROM audit_log.records")
size=$(q -c "SELECT pg_size_pretty(pg_total_relation_size('audit_log.records') + pg_total_relation_size('audit_log.segments'))")
echo "log: $events events in $records transactions, $size (records and segments)"

timed() {  # SETTING -> milliseconds of one verify(), which must hold
    local out
    out=$(q -c "SET audit_log.verify_threads = $1" -c '\timing on' -c "SELECT ok FROM audit_log.verify()")
    case "$out" in t*) ;; *) echo "verify() did not hold: $out" >&2; exit 1 ;; esac
    echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=bench"
"$cli" export --dsn "$dsn" --format records --out "$dir/records.jsonl" 2>/dev/null
"$cli" export --dsn "$dsn" --format binary --out "$dir/records.bin" 2>/dev/null
offline() {  # FILE THREADS -> milliseconds that audit-log verify took; it must hold
    local out
    out=$("$cli" verify --threads "$2" "$1" 2>&1) || { echo "audit-log verify $1 did not hold: $out" >&2; exit 1; }
    echo "$out" | sed -n 's/^verified [0-9]* events in \([0-9.]*\) s.*/\1/p' | awk '{ printf "%.0f", $1 * 1000 }'; }
v1=() vn=() o1=() on=() b1=() bn=()
for _ in $(seq 1 "$rounds"); do
    # One measurement a line: set -e sees only a line's last substitution.
    v1+=("$(timed 0)")
    vn+=("$(timed -1)")
    o1+=("$(offline "$dir/records.jsonl" 1)")
    on+=("$(offline "$dir/records.jsonl" "$(nproc)")")
    b1+=("$(offline "$dir/records.bin" 1)")
    bn+=("$(offline "$dir/records.bin" "$(nproc)")")
done
bytes=$(q -c "SELECT (SELECT coalesce(sum(octet_length(payload)), 0) FROM audit_log.records)
                   + (SELECT coalesce(sum(octet_length(payload)), 0) FROM audit_log.segments)")
sha_mbs=$(python3 -c "
import hashlib, time
buf = b'x' * (64 << 20); t = time.perf_counter(); n = 0
while time.perf_counter() - t < 2: hashlib.sha256(buf).digest(); n += len(buf)
print(n / (time.perf_counter() - t) / 1e6)")
awk -v e="$events" -v a="$(median "${v1[@]}")" -v b="$(median "${vn[@]}")" -v c="$(median "${o1[@]}")" \
    -v d="$(median "${on[@]}")" -v n="$(nproc)" -v by="$bytes" -v s="$sha_mbs" \
    -v f="$(median "${b1[@]}")" -v g="$(median "${bn[@]}")" \
    -v rs="$(stat -c %s "$dir/records.jsonl")" -v bs="$(stat -c %s "$dir/records.bin")" 'BEGIN {
  printf "verify(), one core (verify_threads = 0): %.0f ms = %.0f events/s (target >= 2,000,000)\n", a, e / (a / 1000);
  printf "verify(), hashing on worker threads:     %.0f ms = %.0f events/s (%d cores)\n", b, e / (b / 1000), n;
  printf "audit-log verify, records export, 1 worker thread:  %.0f ms = %.0f events/s\n", c, e / (c / 1000);
  printf "audit-log verify, records export, %d worker threads: %.0f ms = %.0f events/s\n", n, d, e / (d / 1000);
  printf "audit-log verify, binary export, 1 worker thread:   %.0f ms = %.0f events/s\n", f, e / (f / 1000);
  printf "audit-log verify, binary export, %d worker threads:  %.0f ms = %.0f events/s\n", n, g, e / (g / 1000);
  printf "export sizes: records %.0f MB, binary %.0f MB\n", rs / 1e6, bs / 1e6;
  best = (f < g ? f : g);
  printf "offline (binary export) against verify() on one core: %.2fx as fast (target >= 1)\n", a / best;
  printf "raw SHA-256 over the same %.0f MB of payload: %.0f MB/s = %.0f events/s (the limit)\n", by / 1e6, s, e / (by / 1e6 / s) }'

#!/usr/bin/env bash
# audit_log benchmarks: every variant measured side by side in one run, in
# interleaved rounds, medians reported as ratios to no auditing.
#
#   bash bench/run.sh                 (needs the README's setup; installs pgaudit)
#   ROUNDS=3 SECONDS_PER_RUN=10 VERIFY_EVENTS=1000000 bash bench/run.sh
#
# Variants, each in its own database of one throwaway PostgreSQL 15 cluster:
#   none       no auditing
#   audit_log  this extension
#   pgaudit    pgaudit with pgaudit.log = 'write' (log lines only, no row data)
#   diy_jsonb  a PL/pgSQL trigger writing rows as jsonb (bench/baselines.sql)
#   diy_chain  a PL/pgSQL hash chain locking one head row (bench/baselines.sql)
# Then bench/ddl.sh: the DDL guard's cost per DDL statement, on its own cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-8} verify_events=${VERIFY_EVENTS:-1000000}
rows=${TABLE_ROWS:-100000}
bulk_limit=${BULK_LIMIT_SECONDS:-90}   # the PL/pgSQL chain's bulk load is quadratic
dir=${BENCH_DIR:-/tmp/audit_log_bench} port=${BENCH_PORT:-55450}
variants=(none audit_log pgaudit diy_jsonb diy_chain)

dpkg -s postgresql-15-pgaudit >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgaudit >/dev/null; }
command -v perf >/dev/null 2>&1 || true

bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pgaudit'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = on
log_destination = 'stderr'
logging_collector = on
log_directory = '$dir/log'
CONF
mkdir -p "$dir/log"; chown postgres:postgres "$dir/log"
runuser -u postgres -- "$(/usr/bin/pg_config --bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w restart >/dev/null
export PGHOST=$dir PGPORT=$port PGUSER=postgres
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }

setup_db() {
    local v=$1 db=b_$1
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    q "$db" <<SQL
SET client_min_messages = warning;
CREATE TABLE bench_t (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL);
CREATE TABLE bulk_t (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL);
INSERT INTO bench_t (a, b, c, d) SELECT g, 'customer ' || g, g * 1.25, now() FROM generate_series(1, $rows) g;
SQL
    case $v in
    audit_log) q "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log" \
                 -c "SELECT audit_log.enable('bench_t'), audit_log.enable('bulk_t')" >/dev/null ;;
    pgaudit) q "$db" -c "CREATE EXTENSION pgaudit" -c "ALTER DATABASE $db SET pgaudit.log = 'write'" ;;
    diy_jsonb|diy_chain)
        q "$db" -f "$here/baselines.sql" >/dev/null
        local fn=${v#diy_}; fn=$([ "$fn" = jsonb ] && echo diy_audit || echo chain_audit)
        q "$db" -c "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON bench_t FOR EACH ROW EXECUTE FUNCTION $fn()" \
                -c "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON bulk_t FOR EACH ROW EXECUTE FUNCTION $fn()" ;;
    esac
    q "$db" -c "VACUUM ANALYZE"
}

scripts=$(mktemp -d); chmod 755 "$scripts"
cat >"$scripts/insert.sql" <<'S'
INSERT INTO bench_t (a, b, c, d) VALUES (1, 'new customer', 99.95, now());
S
cat >"$scripts/update.sql" <<S
\set id random(1, $rows)
UPDATE bench_t SET a = a + 1, c = c + 0.01 WHERE id = :id;
S
cat >"$scripts/multi.sql" <<S
\set id random(1, $rows)
\set id2 random(1, $rows)
BEGIN;
SELECT a, b, c FROM bench_t WHERE id = :id;
UPDATE bench_t SET a = a + 1 WHERE id = :id;
UPDATE bench_t SET c = c + 1 WHERE id = :id2;
INSERT INTO bench_t (a, b, c, d) VALUES (:id, 'order line', 12.50, now());
SELECT count(*) FROM bench_t WHERE id BETWEEN :id AND :id + 10;
COMMIT;
S
chmod 644 "$scripts"/*.sql

echo "bench: setting up ${#variants[@]} databases of $rows rows each" >&2
for v in "${variants[@]}"; do setup_db "$v"; done

lsn() { q postgres -c "SELECT pg_current_wal_insert_lsn()"; }
wal_since() { q postgres -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$1')::bigint"; }
tps() {  # variant script clients -> tps; WAL bytes per transaction into wal[]
    local out start n
    start=$(lsn)
    out=$(pgbench -n -f "$scripts/$2.sql" -c "$3" -j $(( $3 < 2 ? 1 : 2 )) -T "$secs" "b_$1" 2>&1) || { echo 0; return; }
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    echo "$(( $(wal_since "$start") / (n > 0 ? n : 1) ))" >"$scripts/wal.$1.$2.$3"
    echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A res
workloads=("insert 1" "insert 8" "insert 32" "update 1" "update 8" "update 32" "multi 8")
for r in $(seq 1 "$rounds"); do
    for w in "${workloads[@]}"; do
        set -- $w
        for v in "${variants[@]}"; do
            res["$1 $2 $v"]+="$(tps "$v" "$1" "$2") "
        done
        echo "bench: round $r/$rounds $1 x$2 done" >&2
    done
    for v in "${variants[@]}"; do
        # A statement over the limit counts as the limit, and is shown as ">".
        q "b_$v" -c "TRUNCATE bulk_t"
        start=$(lsn)
        t1=$(q "b_$v" -c "SET statement_timeout = '${bulk_limit}s'" -c '\timing on' \
              -c "INSERT INTO bulk_t SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, 100000) g" \
              2>/dev/null | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' || true)
        echo "$(( $(wal_since "$start") / 100000 ))" >"$scripts/wal.$v.bulk_insert"
        t2=""
        # Time the UPDATE only over a complete table (not after a timed-out INSERT).
        if [ "$(q "b_$v" -c "SELECT count(*) FROM bulk_t")" = 100000 ]; then
            t2=$(q "b_$v" -c "SET statement_timeout = '${bulk_limit}s'" -c '\timing on' \
                  -c "UPDATE bulk_t SET a = a + 1 WHERE id <= 50000" 2>/dev/null | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' || true)
        fi
        res["bulk_insert $v"]+="${t1:-$((bulk_limit * 1000))} "
        res["bulk_update $v"]+="${t2:-$((bulk_limit * 1000))} "
    done
    echo "bench: round $r/$rounds bulk done" >&2
done

# Verification speed over VERIFY_EVENTS events, next to raw SHA-256 over the same bytes.
q b_audit_log -c "SET client_min_messages = warning" -c "CREATE TABLE vt (id bigint, a int, b text, c numeric, d timestamptz)" \
    -c "SELECT audit_log.enable('vt')" >/dev/null
have=$(q b_audit_log -c "SELECT count(*) FROM audit_log.events")
while [ "$have" -lt "$verify_events" ]; do
    n=$(( verify_events - have < 200000 ? verify_events - have : 200000 ))
    q b_audit_log -c "INSERT INTO vt SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, $n) g"
    have=$(q b_audit_log -c "SELECT count(*) FROM audit_log.events")
done
q b_audit_log -c "VACUUM ANALYZE audit_log.events" -c "VACUUM ANALYZE audit_log.links"
vt=() vt1=()
for r in $(seq 1 "$rounds"); do
    vt+=("$(q b_audit_log -c '\timing on' -c "SELECT ok FROM audit_log.verify()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')")
    vt1+=("$(q b_audit_log -c "SET audit_log.verify_threads = 0" -c '\timing on' -c "SELECT ok FROM audit_log.verify()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')")
done
verify_ms=$(median "${vt[@]}") verify1_ms=$(median "${vt1[@]}")
events=$(q b_audit_log -c "SELECT count(*) FROM audit_log.events")
bytes=$(q b_audit_log -c "SELECT sum(octet_length(coalesce(old_row::text, '')) + octet_length(coalesce(new_row::text, '')) + 120) FROM audit_log.events")
sha_mbs=$(python3 -c "
import hashlib, time
buf = b'x' * (64 << 20); t = time.perf_counter(); n = 0
while time.perf_counter() - t < 2: hashlib.sha256(buf).digest(); n += len(buf)
print(n / (time.perf_counter() - t) / 1e6)")
size=$(q b_audit_log -c "SELECT (pg_total_relation_size('audit_log.events') + pg_total_relation_size('audit_log.links')) / count(*) FROM audit_log.events")
diy_size=$(q b_diy_jsonb -c "SELECT pg_total_relation_size('diy_audit') / greatest(count(*), 1) FROM diy_audit")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "audit_log benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(q postgres -c 'SHOW server_version' | cut -d' ' -f1), synchronous_commit on"
echo "medians of $rounds interleaved rounds, ${secs}s each; throughput in tps, ratio = variant / none"
echo
printf '| %-22s | %9s | %16s | %16s | %16s | %16s |\n' workload none audit_log pgaudit diy_jsonb diy_chain
printf '|%s|\n' "------------------------|-----------|------------------|------------------|------------------|------------------"
for w in "${workloads[@]}"; do
    set -- $w
    base=$(median ${res["$1 $2 none"]})
    line=$(printf '| %-22s | %9.0f |' "$1, $2 client(s)" "$base")
    for v in audit_log pgaudit diy_jsonb diy_chain; do
        m=$(median ${res["$1 $2 $v"]})
        line+=$(printf ' %7.0f (%5sx) |' "$m" "$(ratio "$m" "$base")")
    done
    echo "$line"
done
for b in bulk_insert bulk_update; do
    base=$(median ${res["$b none"]})
    label=$([ $b = bulk_insert ] && echo "INSERT 100k rows (ms)" || echo "UPDATE 50k rows (ms)")
    line=$(printf '| %-22s | %9.0f |' "$label" "$base")
    for v in audit_log pgaudit diy_jsonb diy_chain; do
        m=$(median ${res["$b $v"]})
        if awk -v m="$m" -v l="$((bulk_limit * 1000))" 'BEGIN { exit !(m >= l) }'; then
            line+=$(printf ' %16s |' ">${bulk_limit}000 (timeout)")
        else
            line+=$(printf ' %7.0f (%5sx) |' "$m" "$(ratio "$m" "$base")")
        fi
    done
    echo "$line"
done
echo
echo "WAL written per transaction (bytes; per row for the bulk INSERT), last round:"
echo
printf '| %-22s | %9s | %9s | %9s | %9s | %9s |\n' workload none audit_log pgaudit diy_jsonb diy_chain
printf '|%s|\n' "------------------------|-----------|-----------|-----------|-----------|-----------"
for w in "${workloads[@]}" "bulk_insert"; do
    set -- $w
    line=$(printf '| %-22s |' "$([ $# = 2 ] && echo "$1, $2 client(s)" || echo "INSERT 100k rows")")
    for v in "${variants[@]}"; do
        f="$scripts/wal.$v.$1${2:+.$2}"
        line+=$(printf ' %9s |' "$(cat "$f" 2>/dev/null || echo -)")
    done
    echo "$line"
done
echo
awk -v e="$events" -v ms="$verify_ms" -v ms1="$verify1_ms" -v c="$(nproc)" -v b="$bytes" -v s="$sha_mbs" 'BEGIN {
  printf "verify(), hashing on worker threads: %d events in %.0f ms = %.0f events/s (%d cores)\n", e, ms, e / (ms / 1000), c;
  printf "verify(), verify_threads = 0 (one core): %d events in %.0f ms = %.0f events/s\n", e, ms1, e / (ms1 / 1000);
  printf "raw SHA-256 over the same %.0f MB: %.0f MB/s = %.0f events/s (the limit)\n", b / 1e6, s, e / (b / 1e6 / s) }'
echo "size on disk: audit_log $size bytes/event (events, links and their indexes); diy_jsonb $diy_size bytes/event"
rm -rf "$scripts"

# The DDL guard's cost, on a cluster of its own, once this one has stopped.
bash "$root/pg_test/cluster.sh" stop "$dir"
echo
bash "$here/ddl.sh"

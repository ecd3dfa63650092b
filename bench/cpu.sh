#!/usr/bin/env bash
# Where a single-row transaction's time goes, as backend CPU: pgbench's
# single-row INSERT (bench/run.sh's statement) at 1 client for SECONDS_PER_RUN
# (default 10) into three tables of one database: not audited ("none"), not
# audited with the floor's CTE insert of a record-sized row ("floor"), and
# audited ("audit_log"); ROUNDS (default 3) interleaved rounds. For each run:
# transactions, the backend's CPU (user + system, from /proc) per
# transaction, and throughput as a ratio to "none" in the same round. CPU
# ticks are 10 ms, so runs of several seconds are needed.
#
#   bash bench/cpu.sh                      (synchronous_commit = off)
#   SYNC=on bash bench/cpu.sh              (the commit's fdatasync counted too)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-10} sync=${SYNC:-off}
dir=${BENCH_DIR:-/tmp/audit_log_bench_cpu} port=${BENCH_PORT:-55457}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
psql -X -q -d postgres -c "CREATE DATABASE cpu"
cols="id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL"
psql -X -q -v ON_ERROR_STOP=1 -d cpu -c "CREATE EXTENSION audit_log" \
    -c "CREATE TABLE t_none ($cols)" -c "CREATE TABLE t_floor ($cols)" -c "CREATE TABLE t_audit_log ($cols)" \
    -c "CREATE TABLE floor_log (tx xid8 NOT NULL, n int NOT NULL, pad text NOT NULL, PRIMARY KEY (tx, n))" \
    -c "SELECT audit_log.enable('t_audit_log')" >/dev/null
# The record audit_log writes for this statement, for the floor's row.
psql -X -q -d cpu -c "INSERT INTO t_audit_log (a, b, c, d) VALUES (1, 'new customer', 99.95, now())"
pad=$(psql -X -At -d cpu -c "SELECT pg_column_size(r.*) FROM audit_log.records r ORDER BY committed_at DESC LIMIT 1")
values="(a, b, c, d) VALUES (1, 'new customer', 99.95, now());"
echo "INSERT INTO t_none $values" >"$dir/none.sql"
echo "WITH f AS (INSERT INTO floor_log VALUES (pg_current_xact_id(), 1, repeat('x', $pad))) INSERT INTO t_floor $values" >"$dir/floor.sql"
echo "INSERT INTO t_audit_log $values" >"$dir/audit_log.sql"
chmod 644 "$dir"/*.sql
echo "single-row INSERT, 1 client, synchronous_commit = $sync, $secs s a run; floor row $pad bytes"
for r in $(seq 1 "$rounds"); do
    declare -A tx=()
    for v in none floor audit_log; do
        PGOPTIONS="-c synchronous_commit=$sync" pgbench -n -c 1 -T "$secs" -f "$dir/$v.sql" cpu >"$dir/$v.out" 2>&1 &
        bench=$!
        pid=
        while [ -z "$pid" ]; do
            sleep 0.05
            pid=$(psql -X -At -d cpu -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'")
        done
        t0=$(awk '{print $14 + $15}' "/proc/$pid/stat") t1=$t0
        while t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null); do t1=$t; sleep 0.05; done
        wait "$bench"
        n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$dir/$v.out")
        tx[$v]=$n
        ticks=$(getconf CLK_TCK)
        printf 'round %s %-9s %7s transactions, %5.1f us backend CPU each, %.2fx none\n' "$r" "$v" "$n" \
            "$(awk "BEGIN {print ($t1 - $t0) * 1000000 / $ticks / $n}")" "$(awk "BEGIN {print $n / ${tx[none]}}")"
    done
done

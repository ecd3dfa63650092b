#!/usr/bin/env bash
# One point of bench/run.sh's single-row table measured again, alone: its
# workload (WORKLOAD=insert or update, default insert) at CLIENTS (default
# 8) clients, for none, floor and audit_log only, in ROUNDS (default 3)
# interleaved rounds of SECONDS_PER_RUN (default 6) s, in one throwaway
# cluster with bench/run.sh's settings. Prints each run's throughput and
# its ratio to "none" in the same round, then the medians. For a point of
# bench/run.sh's table that falls outside the floor's band: run.sh also
# runs pgaudit and two triggers between these three, and its cluster holds
# seven databases. ORDER (default "none floor audit_log") is the order of
# the variants in each round, to see whether a run pays for the one before.
#
#   CLIENTS=32 WORKLOAD=update bash bench/point.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
. "$here/floor.sh"
workload=${WORKLOAD:-insert} clients=${CLIENTS:-8} rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-6}
rows=${ROWS:-100000}
case $workload in
    insert|update) ;;
    *) echo "bench/point.sh: WORKLOAD is insert or update, not '$workload'" >&2; exit 2 ;;
esac
dir=${BENCH_DIR:-/tmp/audit_log_bench_point} port=${BENCH_PORT:-55458}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
cat >>"$dir/data/postgresql.conf" <<CONF
shared_buffers = '1GB'
max_wal_size = '64GB'
checkpoint_timeout = '1d'
CONF
runuser -u postgres -- "$(/usr/bin/pg_config --bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w restart >/dev/null
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
read -r -a variants <<<"${ORDER:-none floor audit_log}"
[ "$(printf '%s\n' "${variants[@]}" | sort | tr '\n' ' ')" = "audit_log floor none " ] ||
    { echo "bench/point.sh: ORDER names none, floor and audit_log once each, not '${ORDER:-}'" >&2; exit 2; }
for v in "${variants[@]}"; do
    psql -X -q -d postgres -c "CREATE DATABASE p_$v"
    q "p_$v" -c "CREATE TABLE bench_t (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL, d timestamptz NOT NULL)" \
        -c "INSERT INTO bench_t (a, b, c, d) SELECT g, 'customer ' || g, g * 1.25, now() FROM generate_series(1, $rows) g"
done
q p_audit_log -c "CREATE EXTENSION audit_log" -c "SELECT audit_log.enable('bench_t')" >/dev/null
q p_floor -c "CREATE TABLE floor_log (tx xid8 NOT NULL, n int NOT NULL, pad text NOT NULL, PRIMARY KEY (tx, n))" \
    -c "ALTER TABLE floor_log ALTER pad SET STORAGE EXTERNAL"
for v in "${variants[@]}"; do q "p_$v" -c "VACUUM ANALYZE"; done
# The statement, and the floor's row padded to the size of the record
# audit_log writes for it (as bench/run.sh measures it).
if [ "$workload" = insert ]; then
    stmt="INSERT INTO bench_t (a, b, c, d) VALUES (1, 'new customer', 99.95, now())"
    set_id=""
else
    stmt="UPDATE bench_t SET a = a + 1, c = c + 0.01 WHERE id = :id"
    set_id="\\set id random(1, $rows)"
fi
PGAPPNAME=pgbench q p_audit_log -c "${stmt//:id/$((rows / 2))}"
size=$(q p_audit_log -c "SELECT pg_column_size(r.*) FROM audit_log.records r ORDER BY committed_at DESC LIMIT 1")
pad=$(floor_pad p_floor "$size")
printf '%s\n%s;\n' "$set_id" "$stmt" >"$dir/none.sql"
cp "$dir/none.sql" "$dir/audit_log.sql"
printf '%s\nWITH f AS (INSERT INTO floor_log VALUES (pg_current_xact_id(), 1, repeat(%s, %s))) %s;\n' \
    "$set_id" "'x'" "$pad" "$stmt" >"$dir/floor.sql"
chmod 644 "$dir"/*.sql
echo "single-row $workload, $clients client(s), $rounds interleaved rounds of $secs s; record $size bytes (the floor's row too)"
declare -A tps round
for r in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        out=$(pgbench -n -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -T "$secs" -f "$dir/$v.sql" "p_$v" 2>&1)
        t=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
        [ -n "$t" ] || { echo "bench/point.sh: pgbench failed for $v: $out" >&2; exit 1; }
        tps[$v]+="$t " round[$v]=$t
    done
    for v in "${variants[@]}"; do
        awk -v r="$r" -v v="$v" -v t="${round[$v]}" -v b="${round[none]}" \
            'BEGIN { printf "round %s %-9s %9.0f tps  %.2fx none\n", r, v, t, t / b }'
    done
done
. "$here/stats.sh"
# shellcheck disable=SC2086
n=$(median ${tps[none]}) f=$(median ${tps[floor]}) a=$(median ${tps[audit_log]})
# vs floor as bench/run.sh gives it: the median over the rounds of
# audit_log's ratio minus the floor's, each against its own round's none.
# shellcheck disable=SC2046
d=$(median $(floor_differences "${tps[none]}" "${tps[audit_log]}" "${tps[floor]}"))
awk -v n="$n" -v f="$f" -v a="$a" -v d="$d" 'BEGIN {
    printf "medians: none %.0f, floor %.0f (%.2fx), audit_log %.0f (%.2fx); vs floor (median of the rounds) %+.2f\n", n, f, f / n, a, a / n, d }'

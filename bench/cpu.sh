#!/usr/bin/env bash
# Where a single-row transaction's time goes: pgbench's single-row INSERT
# (bench/run.sh's statement) at 1 client for SECONDS_PER_RUN (default 10)
# into three tables of one database: not audited ("none"), not audited with
# the floor's CTE insert of a record-sized row ("floor"), and audited
# ("audit_log"); ROUNDS (default 3) interleaved rounds. For each run:
# transactions, and per transaction the backend's CPU (user + system), the
# time it waited for a CPU while runnable, and how often the scheduler moved
# it to another CPU (/proc/PID/schedstat and /proc/PID/sched, read over the
# whole run), with throughput as a ratio to "none" in the same round.
#
#   bash bench/cpu.sh                      (synchronous_commit = off)
#   SYNC=on bash bench/cpu.sh              (the commit's fdatasync counted too)
#   SYNC=on PLACEMENT=apart bash bench/cpu.sh
#
# PLACEMENT (needs 2 CPUs): "free" (default) leaves pgbench and its backend
# to the scheduler; "apart" pins pgbench to CPU 0 and the backend to CPU 1,
# as with a client on another machine; "together" pins both to CPU 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-10} sync=${SYNC:-off} placement=${PLACEMENT:-free}
case $placement in
    free) client_cpu="" backend_cpu="" ;;
    apart) client_cpu=0 backend_cpu=1 ;;
    together) client_cpu=0 backend_cpu=0 ;;
    *) echo "bench/cpu.sh: PLACEMENT is free, apart or together, not '$placement'" >&2; exit 2 ;;
esac
if [ -n "$client_cpu" ] && [ "$(nproc)" -lt 2 ]; then
    echo "bench/cpu.sh: PLACEMENT=$placement needs 2 CPUs" >&2; exit 2
fi
dir=${BENCH_DIR:-/tmp/audit_log_bench_cpu} port=${BENCH_PORT:-55457}
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
. "$here/floor.sh"
single_row_setup cpu "$dir"
echo "single-row INSERT, 1 client, synchronous_commit = $sync, placement $placement, $secs s a run; floor row $size bytes"
# on-CPU ns, runqueue-wait ns (schedstat), migrations (sched) of a process
# and user and system CPU ticks (stat)
sched() {
    local t m u
    t=$(cat "/proc/$1/schedstat" 2>/dev/null) && m=$(awk '/^se.nr_migrations/ {print $3}' "/proc/$1/sched" 2>/dev/null) &&
        u=$(awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null) && [ -n "$t" ] && [ -n "$m" ] && [ -n "$u" ] && echo "${t% *} $m $u"
}
ticks=$(getconf CLK_TCK)
for r in $(seq 1 "$rounds"); do
    declare -A tx=()
    for v in none floor audit_log; do
        PGOPTIONS="-c synchronous_commit=$sync" ${client_cpu:+taskset -c "$client_cpu"} \
            pgbench -n -c 1 -T "$secs" -f "$dir/$v.sql" cpu >"$dir/$v.out" 2>&1 &
        bench=$!
        pid=
        while [ -z "$pid" ]; do
            sleep 0.02
            pid=$(psql -X -At -d cpu -c "SELECT pid FROM pg_stat_activity WHERE datname = 'cpu' AND application_name = 'pgbench' ORDER BY backend_start DESC LIMIT 1")
        done
        [ -n "$backend_cpu" ] && taskset -p -c "$backend_cpu" "$pid" >/dev/null
        read -r c0 w0 m0 u0 k0 < <(sched "$pid")
        c1=$c0 w1=$w0 m1=$m0 u1=$u0 k1=$k0
        while s=$(sched "$pid"); do read -r c1 w1 m1 u1 k1 <<<"$s"; sleep 0.05; done
        wait "$bench"
        n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$dir/$v.out")
        tx[$v]=$n
        awk -v r="$r" -v v="$v" -v n="$n" -v c=$((c1 - c0)) -v w=$((w1 - w0)) -v m=$((m1 - m0)) -v base="${tx[none]}" \
            -v u=$((u1 - u0)) -v k=$((k1 - k0)) -v hz="$ticks" 'BEGIN {
            printf "round %s %-9s %7d transactions, per transaction: %5.1f us backend CPU (user %5.1f, system %5.1f), %4.1f us waiting for a CPU, %.2f migrations; %.2fx none\n",
                r, v, n, c / n / 1000, u * 1e6 / hz / n, k * 1e6 / hz / n, w / n / 1000, m / n, n / base }'
    done
done

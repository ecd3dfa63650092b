#!/usr/bin/env bash
# Instructions per single-row INSERT transaction, counted by valgrind's
# callgrind in one backend, for none, floor and audit_log (bench/floor.sh's
# three tables in one database). A count does not move with the load on
# the machine, so two builds or two schemas differ by what they execute,
# even when the difference is smaller than a timed run's spread. It leaves
# out what a count cannot see: waiting, cache misses, the kernel, and
# SHA-256 as the server runs it (valgrind hides the CPU's SHA extensions,
# so the software path is counted instead: audit_log's figure is high by
# that much; docs/PERFORMANCE.md has a split).
#
#   bash bench/instr.sh               (N = 1000)
#   N=2000 VARIANTS=audit_log bash bench/instr.sh
#
# The server runs in single-user mode (postgres --single), one statement a
# transaction, synchronous_commit off, with the library preloaded unless
# AUDIT_LOG_PRELOAD=0. Each variant runs N, then 2N statements; the
# difference divided by N leaves out most of the start and the end of the
# process (the shutdown checkpoint's work still grows with N).
# With KEEP=1 the callgrind files stay in the cluster's directory for
# callgrind_annotate.
set -euo pipefail
# A failure inside $(count ...) stops the script too.
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
n=${N:-1000}
variants=${VARIANTS:-none floor audit_log}
command -v valgrind >/dev/null || { echo "bench/instr.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
dir=${BENCH_DIR:-/tmp/audit_log_bench_instr} port=${BENCH_PORT:-55459}
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
bash "$root/pg_test/cluster.sh" start "$dir" "$port"
trap 'bash "$root/pg_test/cluster.sh" stop "$dir"' EXIT
export PGHOST=$dir PGPORT=$port PGUSER=postgres PGOPTIONS="-c client_min_messages=warning"
. "$here/floor.sh"
single_row_setup instr "$dir"
bash "$root/pg_test/cluster.sh" stop "$dir"
# Instructions of one single-user backend running `count` statements.
count() {
    local v=$1 count=$2 out="$dir/callgrind.$1.$2"
    awk -v n="$count" '{ for (i = 0; i < n; i++) print }' "$dir/$v.sql" >"$dir/$v.$count.sql"
    chmod 644 "$dir/$v.$count.sql"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN/postgres" --single -D "$dir/data" -c synchronous_commit=off instr \
        <"$dir/$v.$count.sql" >"$dir/$v.$count.log" 2>&1 ||
        { echo "bench/instr.sh: the backend of $v failed (see $dir/$v.$count.log)" >&2; exit 1; }
    # A backend that stopped early (a FATAL) would give a small count that
    # looks plausible: any error fails the run.
    if grep -Eq "(ERROR|FATAL|PANIC):" "$dir/$v.$count.log"; then
        echo "bench/instr.sh: $v failed:" >&2; grep -E -m3 "(ERROR|FATAL|PANIC):" "$dir/$v.$count.log" >&2; exit 1
    fi
    local total
    total=$(awk '/^summary:/ {print $2}' "$out" 2>/dev/null)
    [ -n "$total" ] || { echo "bench/instr.sh: no count for $v (see $dir/$v.$count.log)" >&2; exit 1; }
    [ "${KEEP:-0}" = 1 ] || rm -f "$out"
    echo "$total"
}
echo "single-row INSERT, instructions per transaction (callgrind, single-user backend, $n and $((2 * n)) statements); floor row $size bytes"
declare -A per
for v in $variants; do
    a=$(count "$v" "$n")
    b=$(count "$v" $((2 * n)))
    per[$v]=$(((b - a) / n))
    line=$(printf '%-9s %8d' "$v" "${per[$v]}")
    [ -n "${per[none]:-}" ] && [ "$v" != none ] && line+=$(awk -v x="${per[$v]}" -v b="${per[none]}" 'BEGIN { printf "  %+7d over none (%.2fx)", x - b, x / b }')
    echo "$line"
done
if [ -n "${per[floor]:-}" ] && [ -n "${per[audit_log]:-}" ]; then
    echo "audit_log minus floor: $((per[audit_log] - per[floor])) instructions per transaction"
fi

#!/usr/bin/env bash
# Everything that needs a live server: golden SQL tests (pg_regress) and
# scenario scripts, against a throwaway cluster on a private port.
# Requires the extension to be installed (scripts/test.sh does that).
#
#   bash pg_test/run.sh                      everything
#   bash pg_test/run.sh capture cli.sh ...   only these golden tests (pg_test/sql/NAME.sql)
#                                            and scenarios (pg_test/scenarios/NAME.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
golden=() scenarios=()
for a in "$@"; do
    n=$(basename "$a"); n=${n%.sql}; n=${n%.sh}
    if [ -f "$here/sql/$n.sql" ]; then golden+=("$n")
    elif [ -f "$here/scenarios/$n.sh" ]; then scenarios+=("$here/scenarios/$n.sh")
    else echo "pg_test/run.sh: no golden test pg_test/sql/$n.sql or scenario pg_test/scenarios/$n.sh" >&2; exit 2; fi
done
if [ $# -eq 0 ]; then
    scenarios=("$here"/scenarios/*.sh)
fi
dir=${AUDIT_LOG_TEST_DIR:-/tmp/audit_log_pg_test}
port=${AUDIT_LOG_TEST_PORT:-55433}
export PGHOST=$dir PGPORT=$port PGUSER=postgres
# The server and its client programs: Debian's PostgreSQL 15, or the one
# whose pg_config PG_CONFIG names (scripts/test.sh runs both 15 and 18).
export PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir)
export PATH="$bindir:$PATH"
regress=$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress

"$here/cluster.sh" start "$dir" "$port"
trap '"$here/cluster.sh" stop "$dir"' EXIT

out=$dir/regress; mkdir -p "$out"
psql -X -q -d postgres -c "CREATE DATABASE al_regress"
status=0
if [ $# -eq 0 ] || [ ${#golden[@]} -gt 0 ]; then
    which=(--schedule="$here/schedule")
    [ $# -eq 0 ] || which=("${golden[@]}")
    "$regress" --use-existing --bindir="$bindir" --host="$dir" --port="$port" --user=postgres \
        --inputdir="$here" --outputdir="$out" --dbname=al_regress "${which[@]}" || status=$?
    if [ $status -ne 0 ] && [ -f "$out/regression.diffs" ]; then
        cat "$out/regression.diffs"
    fi
fi

scenarios_passed=0 scenarios_failed=0
for s in ${scenarios[@]+"${scenarios[@]}"}; do
    echo "scenario $(basename "$s")"
    if bash "$s"; then scenarios_passed=$((scenarios_passed + 1)); else scenarios_failed=$((scenarios_failed + 1)); status=1; fi
done
echo "scenarios: $scenarios_passed passed, $scenarios_failed failed"
exit $status

#!/usr/bin/env bash
# Everything that needs a live server: golden SQL tests (pg_regress) and
# scenario scripts, against a throwaway cluster on a private port.
# Requires the extension to be installed (scripts/test.sh does that).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${AUDIT_LOG_TEST_DIR:-/tmp/audit_log_pg_test}
port=${AUDIT_LOG_TEST_PORT:-55433}
export PGHOST=$dir PGPORT=$port PGUSER=postgres
regress=$(/usr/bin/pg_config --pkglibdir)/pgxs/src/test/regress/pg_regress

"$here/cluster.sh" start "$dir" "$port"
trap '"$here/cluster.sh" stop "$dir"' EXIT

out=$dir/regress; mkdir -p "$out"
psql -X -q -d postgres -c "CREATE DATABASE al_regress"
status=0
"$regress" --use-existing --host="$dir" --port="$port" --user=postgres \
    --inputdir="$here" --outputdir="$out" --schedule="$here/schedule" --dbname=al_regress || status=$?
if [ $status -ne 0 ] && [ -f "$out/regression.diffs" ]; then
    cat "$out/regression.diffs"
fi

scenarios_passed=0 scenarios_failed=0
for s in "$here"/scenarios/*.sh; do
    echo "scenario $(basename "$s")"
    if bash "$s"; then scenarios_passed=$((scenarios_passed + 1)); else scenarios_failed=$((scenarios_failed + 1)); status=1; fi
done
echo "scenarios: $scenarios_passed passed, $scenarios_failed failed"
exit $status

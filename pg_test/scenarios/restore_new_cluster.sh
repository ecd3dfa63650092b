#!/usr/bin/env bash
# A log restored into a NEW cluster (pg_dump, fresh initdb, pg_restore), where
# transaction ids start again and repeat those of the restored events: audited
# writes go on under concurrency through and past the whole restored xid
# range with no failure, every commit is linked, and the log verifies against
# a checkpoint taken before the dump. Then a physical copy (pg_basebackup, a
# standby promoted) and its source diverge, and each verifies on its own.
# SOURCE_TX is a parameter: the workload transactions on the source.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/workload.sh"
source_tx=${SOURCE_TX:-4000}
new_tx=$((source_tx + 2000))
new_dir=/tmp/audit_log_newcluster new_port=55481
copy_dir=/tmp/audit_log_copy copy_port=55482
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
src_host=$PGHOST src_port=$PGPORT
work=$(mktemp -d)

cleanup() {
    "$here/cluster.sh" stop "$new_dir"
    "$here/cluster.sh" stop "$copy_dir"
    rm -rf "$new_dir" "$copy_dir" "$work"
    PGHOST=$src_host PGPORT=$src_port wl_teardown
}
trap cleanup EXIT

# $1 transactions of the workload on 4 clients, against the cluster that
# PGHOST/PGPORT name. pgbench must finish every one (by COMMIT, or by the
# script's own ROLLBACK, 1 in 10) with no error. Independently of pgbench,
# the witness rows must grow by what commits: at most $1, and at least 80%
# of it (1 in 10 rolls back on average; 80% is 9 standard deviations away
# at 800 transactions, more at more).
run_load() {
    local n=$1 before out processed failed grown
    before=$(wl_q -c "SELECT count(*) FROM witness")
    out=$(pgbench -n -c 4 -j 2 -t $((n / 4)) -f "$WL_SCRIPT" "$WL_DB" 2>&1) \
        || wl_fail "pgbench on port $PGPORT failed: $(grep -m 5 -i -e error -e abort <<<"$out")"
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\)\/.*/\1/p' <<<"$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    [ "$processed" = $((n / 4 * 4)) ] && [ "${failed:-0}" = 0 ] \
        || wl_fail "pgbench on port $PGPORT: $processed of $((n / 4 * 4)) transactions processed, ${failed:-?} failed"
    grown=$(($(wl_q -c "SELECT count(*) FROM witness") - before))
    [ "$grown" -le "$n" ] && [ "$grown" -ge $((n * 8 / 10)) ] \
        || wl_fail "pgbench on port $PGPORT processed $processed transactions, but $grown committed"
}

xid() { wl_q -c "SELECT pg_current_xact_id()"; }
copy() { PGHOST=$copy_dir PGPORT=$copy_port "$@"; }

# Source: the test cluster.
wl_setup al_newcl
run_load "$source_tx"
wl_check
cp=$(wl_q -c "SELECT audit_log.checkpoint()")
events_src=$(wl_q -c "SELECT count(*) FROM audit_log.events")
pg_dump -d "$WL_DB" -Fc -f "$work/dump.custom"

# a. Restore into a new cluster.
"$here/cluster.sh" start "$new_dir" "$new_port"
export PGHOST=$new_dir PGPORT=$new_port
psql -X -q -d postgres -c "CREATE DATABASE $WL_DB"
pg_restore -d "$WL_DB" --exit-on-error "$work/dump.custom"
n=$(wl_q -c "SELECT count(*) FROM audit_log.events")
[ "$n" = "$events_src" ] || wl_fail "restored $n events, the source had $events_src"
wl_check "$cp"
read -r lo hi <<<"$(wl_q -c "SELECT min(tx_id) || ' ' || max(tx_id) FROM audit_log.events")"
# The source's xids depend on what its cluster ran before (run.sh runs every
# scenario in it). Empty transactions skip the new cluster ahead to just below
# the restored range, if it is not there yet, so that the audited workload
# goes through all of that range.
start=$(xid)
if [ "$start" -lt $((lo - 200)) ]; then
    psql -X -q -d postgres -c "SET synchronous_commit = off" -c "DO \$\$
      BEGIN FOR i IN 1..$((lo - 200 - start)) LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END \$\$"
fi
echo "  restored xids $lo..$hi; the new cluster was at $start, its workload starts at $(xid)"
wl_new_era
run_load "$new_tx"
now=$(xid)
[ "$now" -gt "$hi" ] || wl_fail "the new cluster's xid $now did not pass the restored range (up to $hi)"
wl_check "$cp"
shared=$(wl_q -c "SELECT count(*) FROM (SELECT tx_id FROM audit_log.links GROUP BY tx_id HAVING count(*) > 1) s")
[ "$shared" -gt 0 ] || wl_fail "no two transactions share a tx_id: the scenario did not reach the case it tests"
# The independent implementation of docs/FORMAT.md agrees, tx_ids repeated.
out=$(wl_q -f "$here/lib/dump_log.sql" | python3 "$here/lib/format_v2.py" verify) \
    || wl_fail "the independent verifier disagrees: $out"
echo "  new cluster: $new_tx more transactions to xid $now, $shared tx_ids shared by two transactions, $WL_TX committed in all, verified; $out"
"$here/cluster.sh" stop "$new_dir"

# b. A physical copy of the source: a standby, promoted. From there the
# two take different writes (largely with the same xids), and each verifies
# on its own.
export PGHOST=$src_host PGPORT=$src_port
mkdir -p "$copy_dir"; chown postgres:postgres "$copy_dir"
runuser -u postgres -- "$BIN/pg_basebackup" -h "$src_host" -p "$src_port" -U postgres \
    -D "$copy_dir/data" -X stream -R -c fast
cat >>"$copy_dir/data/postgresql.conf" <<CONF
port = $copy_port
unix_socket_directories = '$copy_dir'
CONF
runuser -u postgres -- "$BIN/pg_ctl" -D "$copy_dir/data" -l "$copy_dir/server.log" -w start >/dev/null
[ "$(copy wl_q -c "SELECT pg_is_in_recovery()")" = t ] || wl_fail "the copy did not start as a standby"
runuser -u postgres -- "$BIN/pg_ctl" -D "$copy_dir/data" -w promote >/dev/null
[ "$(copy wl_q -c "SELECT pg_is_in_recovery()")" = f ] || wl_fail "the copy was not promoted"
copy wl_check "$cp"
copy run_load 800
copy wl_check "$cp"
cp_copy=$(copy wl_q -c "SELECT audit_log.checkpoint()")
tx_copy=$WL_TX
run_load 800
wl_check "$cp"
cp_src=$(wl_q -c "SELECT audit_log.checkpoint()")
# Each branch's checkpoint binds its own history: the other one fails it.
v=$(wl_q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp_copy')" 2>/dev/null || true)
[ "${v%% *}" = false ] || wl_fail "the source verifies against the copy's checkpoint: $v"
v=$(copy wl_q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp_src')" 2>/dev/null || true)
[ "${v%% *}" = false ] || wl_fail "the copy verifies against the source's checkpoint: $v"
echo "  physical copy promoted: copy $tx_copy and source $WL_TX committed transactions, each verified, each refuses the other's checkpoint"
echo "restore into a new cluster: $source_tx + $new_tx transactions through the restored xid range, $shared tx_ids repeated, verified; a promoted physical copy and its source verified apart"

#!/usr/bin/env bash
# Failover and point-in-time recovery, on clusters of their own:
# 1. A primary (archiving its WAL) and a streaming replica. Writers run on
#    the primary; the witness signs a checkpoint mid-load; once the replica
#    has replayed past it, the primary dies (immediate stop) under load and
#    the replica is promoted. On the new primary: every committed workload
#    transaction it has is audited exactly once, the chains run on with no
#    gap or fork, writes continue and chain on, and verify() and the witness
#    (against its checkpoint signed on the old primary) pass.
# 2. A base backup taken before the load, restored with the archived WAL to
#    a target LSN mid-load and promoted there: the same checks, verify()
#    against a checkpoint taken just before the target, and writes on it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
BIN=$("$pg_config" --bindir)
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
dir=${AUDIT_LOG_FAILOVER_DIR:-/tmp/audit_log_failover}
pport=${AUDIT_LOG_FAILOVER_PORT:-55506} sport=$((pport + 1)) rport=$((pport + 2))
. "$here/lib/workload.sh"
[ -x "$cli" ] || wl_fail "$cli not built (cargo build --release -p audit_log_cli)"
CL_DIR=$dir; . "$here/lib/clusters.sh"
as_pg() { cl_pg "$@"; }
export PGHOST=$dir PGUSER=postgres PGPORT=$pport
on() { local port=$1; shift; PGPORT=$port psql -X -q -v ON_ERROR_STOP=1 -At -d al_failover "$@"; }
dsn() { echo "host=$dir port=$1 user=postgres dbname=al_failover"; }

cl_fresh
mkdir -p "$dir/archive"; chown postgres:postgres "$dir/archive"
work=$dir/work
trap 'cl_stop_all; rm -f "${WL_SCRIPT:-}"; rm -rf "$dir"' EXIT
cl_init primary "$pport" "wal_level = replica" "max_wal_senders = 4" "archive_mode = on" \
    "archive_command = 'test ! -f $dir/archive/%f && cp %p $dir/archive/%f'"

wl_setup al_failover
# The log's identity as a source of central collection: the same after a
# promotion and a point-in-time restore.
source_id=$(on $pport -c "SELECT audit_log.source_id()")
# The base backup for point-in-time recovery: before any workload.
as_pg "$BIN/pg_basebackup" -h "$dir" -p "$pport" -U postgres -D "$dir/base" -X none --checkpoint=fast >"$dir/base.log" 2>&1 ||
    wl_fail "pg_basebackup: $(tail -3 "$dir/base.log")"
as_pg "$BIN/pg_basebackup" -h "$dir" -p "$pport" -U postgres -D "$dir/standby" -R -X stream --checkpoint=fast >"$dir/basebackup.log" 2>&1 ||
    wl_fail "pg_basebackup: $(tail -3 "$dir/basebackup.log")"
sed -i "s/^port = .*/port = $sport/" "$dir/standby/postgresql.conf"
cl_start standby
"$cli" keygen --out "$work/key" 2>/dev/null

# Load on the primary; a witness run and the PITR target in the middle.
pgbench -n -c 4 -j 2 -T 30 -f "$WL_SCRIPT" al_failover >"$work/load1.out" 2>&1 &
load=$!
sleep 3
out=$("$cli" witness --dsn "$(dsn $pport)" --state "$work/witness" --key "$work/key" 2>&1) ||
    wl_fail "witness on the primary: $out"
# In this order: what committed before the count, and the checkpoint, lie
# before the target.
target_tx=$(on $pport -c "SELECT count(*) FROM witness")
on $pport -c "SELECT audit_log.checkpoint()" >"$work/cp_target.json"
target=$(on $pport -c "SELECT pg_current_wal_lsn()")
sleep 2
# The segment holding the target goes to the archive now, while the
# primary lives (the segment it dies in never would).
on $pport -c "SELECT pg_switch_wal()" >/dev/null
segment=$(on $pport -c "SELECT pg_walfile_name('$target')")
for _ in $(seq 1 100); do
    [ -f "$dir/archive/$segment" ] && break
    sleep 0.1
done
[ -f "$dir/archive/$segment" ] || wl_fail "WAL segment $segment was not archived"
# The replica has replayed past the witnessed checkpoint before the primary dies.
for _ in $(seq 1 100); do
    [ "$(on $sport -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ] && break
    sleep 0.1
done
[ "$(on $sport -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ] ||
    wl_fail "the replica did not replay up to $target"
sleep 1
cl_crash primary
# pgbench loses its server by design: exit 2 with connection errors only.
set +e; wait $load; rc=$?; set -e
[ "$rc" = 2 ] || wl_fail "pgbench against the dying primary exited $rc: $(tail -3 "$work/load1.out")"
as_pg "$BIN/pg_ctl" -D "$dir/standby" -w promote >/dev/null
[ "$(on $sport -c 'SELECT pg_is_in_recovery()')" = f ] || wl_fail "the replica was not promoted"
[ "$(on $sport -c 'SELECT audit_log.source_id()')" = "$source_id" ] || wl_fail "the promoted replica has another source identity"

# The new primary: every committed workload transaction it has, audited once.
export PGPORT=$sport
wl_check "" 200
before=$WL_TX
out=$("$cli" witness --dsn "$(dsn $sport)" --state "$work/witness" --key "$work/key" 2>&1) ||
    wl_fail "witness on the promoted replica, against the checkpoint it signed on the old primary: $out"
# Writes continue and chain on.
pgbench -n -c 4 -j 2 -T 4 -f "$WL_SCRIPT" al_failover >"$work/load2.out" 2>&1 ||
    wl_fail "pgbench on the new primary: $(tail -3 "$work/load2.out")"
wl_check "" 100
out=$("$cli" witness --dsn "$(dsn $sport)" --state "$work/witness" --key "$work/key" 2>&1) ||
    wl_fail "witness after writes on the new primary: $out"
echo "  failover: $before workload transactions survived the promotion, $((WL_TX - before)) more written on the new primary; verified, witnessed"

# Point-in-time recovery from the base backup and the archive, to the target.
as_pg cp -a "$dir/base" "$dir/pitr"
sed -i "s/^port = .*/port = $rport/; /^archive_/d" "$dir/pitr/postgresql.conf"
cat >>"$dir/pitr/postgresql.conf" <<CONF
restore_command = 'cp $dir/archive/%f %p'
recovery_target_lsn = '$target'
recovery_target_action = 'promote'
CONF
as_pg touch "$dir/pitr/recovery.signal"
as_pg "$BIN/pg_ctl" -D "$dir/pitr" -l "$dir/pitr.log" -w -t 120 start >/dev/null ||
    wl_fail "point-in-time recovery: $(tail -5 "$dir/pitr.log")"
for _ in $(seq 1 100); do
    [ "$(on $rport -c 'SELECT pg_is_in_recovery()')" = f ] && break
    sleep 0.1
done
[ "$(on $rport -c 'SELECT pg_is_in_recovery()')" = f ] || wl_fail "the restored cluster did not reach its target"
[ "$(on $rport -c 'SELECT audit_log.source_id()')" = "$source_id" ] || wl_fail "the restored cluster has another source identity"
export PGPORT=$rport
WL_TX=0
wl_check "$(cat "$work/cp_target.json")" 1
[ "$WL_TX" -ge "$target_tx" ] || wl_fail "the restore holds $WL_TX workload transactions, the target had $target_tx"
restored=$WL_TX
pgbench -n -c 4 -j 2 -T 3 -f "$WL_SCRIPT" al_failover >"$work/load3.out" 2>&1 ||
    wl_fail "pgbench on the restored cluster: $(tail -3 "$work/load3.out")"
wl_check "$(cat "$work/cp_target.json")" 100
echo "failover: a promoted replica and a point-in-time restore ($restored transactions at the target, $((WL_TX - restored)) written after) each hold every committed transaction audited once, chain on and verify"

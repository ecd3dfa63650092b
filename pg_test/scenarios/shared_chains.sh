#!/usr/bin/env bash
# Chains shared by many sessions. Eight clients write through two chains
# (audit_log.chains = 2, set for the database), so each chain passes from
# backend to backend all the time, and the chains' primary key gets entries
# of every kind between one backend's links, with prepared transactions
# linked by other sessions' commits, and checkpoint() calls in transaction
# blocks that roll back, whole or to a savepoint (they link nothing: their
# links would be theirs to commit). Every
# committed transaction must have exactly one record, the chains no gap and
# no fork, replaying the events must give the tables, and verify() must
# hold. Then a parallel query over the events view, in a session that had
# not loaded the library: loading it must not re-apply the database's
# setting in parallel mode, which PostgreSQL refuses with a WARNING to the
# client, and the session's next commit must still follow the setting.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/workload.sh"
wl_setup al_shared
trap wl_teardown EXIT
psql -X -q -d postgres -c "ALTER DATABASE al_shared SET audit_log.chains = 2"
linker=$(mktemp /tmp/audit_log_linker.XXXXXX); chmod 644 "$linker"
trap 'rm -f "$linker"; wl_teardown' EXIT
cat >"$linker" <<'PGB'
\set g random(1, 1000000000)
\set a random(1, 200)
BEGIN;
INSERT INTO t1 VALUES (:a, 0) ON CONFLICT (k) DO UPDATE SET v = t1.v + 1;
INSERT INTO witness VALUES (pg_current_xact_id());
PREPARE TRANSACTION 'sc-:client_id-:g';
COMMIT PREPARED 'sc-:client_id-:g';
BEGIN;
SELECT audit_log.checkpoint() IS NOT NULL;
ROLLBACK;
BEGIN;
INSERT INTO t3 VALUES (:a + 1000, 0) ON CONFLICT (k) DO UPDATE SET v = t3.v + 1;
INSERT INTO witness VALUES (pg_current_xact_id());
SAVEPOINT s;
SELECT audit_log.checkpoint() IS NOT NULL;
ROLLBACK TO s;
COMMIT;
PGB
out=$(mktemp)
set +e
pgbench -n -c 8 -j 2 -T "${SECONDS_PER_RUN:-10}" -f "$WL_SCRIPT@4" -f "$linker@1" al_shared >"$out" 2>&1
rc=$?
set -e
wl_load_done "$out" "$rc"
rm -f "$out"
# The setup's two transactions went to a chain of their own (before the
# setting); the load's to chains 0 and 1.
[ "$(wl_q -c "SELECT string_agg(DISTINCT chain_id::text, ',') FROM audit_log.links WHERE seq > 2")" = "0,1" ] ||
    wl_fail "the load did not go through chains 0 and 1: $(wl_q -c "SELECT chain_id, count(*) FROM audit_log.links GROUP BY 1")"
[ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || wl_q -c "SELECT audit_log.checkpoint() IS NOT NULL" >/dev/null
wl_check "" 500
# The setting is the database's (ALTER DATABASE ... SET): a parallel worker
# that loads the library to read the events view must not re-apply it,
# which PostgreSQL refuses in parallel mode with a WARNING to the client.
out=$(wl_q -c "DO \$\$ BEGIN PERFORM set_config(CASE WHEN current_setting('server_version_num')::int >= 160000
                                                  THEN 'debug_parallel_query' ELSE 'force_parallel_mode' END, 'on', false); END \$\$" \
           -c "SELECT count(*) FROM audit_log.events" \
           -c "INSERT INTO t2 VALUES (-1, 0)" \
           -c "SELECT chain_id FROM audit_log.links WHERE tx_id = (SELECT tx_id FROM audit_log.events WHERE table_name = 't2' AND (new_row->>'k')::int = -1)" 2>&1)
# The library loaded during that query: the session still defines the
# setting afterwards, and its next commit takes one of the two chains.
case "$out" in "$WL_EVENTS"$'\n'[01]) ;; *) wl_fail "a parallel read of the events view with the database's audit_log.chains, then a commit: $out" ;; esac
# A checkpoint reaches its caller before the caller's transaction ends:
# one handed out by a statement that then fails must not name links that
# statement made (of a committed prepared transaction, which the next
# audited commit links elsewhere), nor may a second one in the same
# transaction name the first one's.
prepared_then() {
    wl_q -c "BEGIN" -c "INSERT INTO t3 VALUES ($1, 0)" -c "PREPARE TRANSACTION 'sc_$1'" -c "COMMIT PREPARED 'sc_$1'"
    out=$(wl_q -c "DO \$\$ BEGIN $2 RAISE EXCEPTION 'rolled back'; END \$\$" 2>&1 || true)
    cp=$(sed -n 's/^NOTICE:  CP=//p' <<<"$out")
    [ -n "$cp" ] || wl_fail "no checkpoint in: $out"
    [ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 1 ] || wl_fail "the rolled-back statement's link stayed"
    wl_q -c "INSERT INTO t2 VALUES ($1, 0)"
    [ "$(wl_q -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || wl_fail "the next audited commit did not link it"
    v=$(wl_q -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp')")
    [ "$v" = "true " ] || wl_fail "a checkpoint from a statement that rolled back ($2): $v"
}
prepared_then -11 "RAISE NOTICE 'CP=%', audit_log.checkpoint();"
prepared_then -12 "PERFORM audit_log.checkpoint(); RAISE NOTICE 'CP=%', audit_log.checkpoint();"
echo "shared_chains: $LOAD_TX scripts, $WL_TX transactions committed through 2 chains ($WL_EVENTS events) with prepared transactions and checkpoints in blocks rolled back; one record each, no gap or fork, replay matches, verify holds; the database's setting raises no warning in a parallel query; checkpoints from statements that roll back hold"

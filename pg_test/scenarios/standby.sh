#!/usr/bin/env bash
# Verification on a hot standby (issue 13, part 1): a primary and a
# streaming replica made with pg_basebackup, on their own ports. On the
# replica, at the same replayed state as the primary:
# - verify(), checkpoint() (its chains and trees), verify(checkpoint) with
#   the primary's checkpoint, prove(), consistency() and history() give the
#   primary's answers;
# - the CLI exports the log from the replica and verifies it offline, and
#   the witness runs against the replica, twice;
# - a superuser's edit made on the primary is caught on the replica, with
#   the primary's first bad event, as a WARNING (the alert cannot NOTIFY on
#   a standby), not an error.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
BIN=$("$pg_config" --bindir)
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$cli" ] || fail "$cli not built (cargo build --release -p audit_log_cli)"
dir=${AUDIT_LOG_STANDBY_DIR:-/tmp/audit_log_standby}
pport=${AUDIT_LOG_STANDBY_PORT:-55503} sport=$((pport + 1))
db=al_standby
p() { psql -X -q -v ON_ERROR_STOP=1 -At -h "$dir" -p "$pport" -U postgres -d $db "$@"; }
s() { psql -X -q -v ON_ERROR_STOP=1 -At -h "$dir" -p "$sport" -U postgres -d $db "$@"; }
CL_DIR=$dir; . "$here/lib/clusters.sh"
as_pg() { cl_pg "$@"; }

cl_fresh
work=$dir/work
trap 'cl_stop_all; rm -rf "$dir"' EXIT
cl_init primary "$pport" "wal_level = replica" "max_wal_senders = 4"
psql -X -q -h "$dir" -p "$pport" -U postgres -d postgres -c "CREATE DATABASE $db"
p <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
SELECT audit_log.enable('acct', history => true);
INSERT INTO acct SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 200) g;
UPDATE acct SET balance = balance + 1 WHERE id <= 20;
SQL

as_pg "$BIN/pg_basebackup" -h "$dir" -p "$pport" -U postgres -D "$dir/standby" -R -X stream --checkpoint=fast >"$dir/basebackup.log" 2>&1 ||
    fail "pg_basebackup: $(tail -3 "$dir/basebackup.log")"
sed -i "s/^port = .*/port = $sport/" "$dir/standby/postgresql.conf"
cl_start standby
[ "$(s -c 'SELECT pg_is_in_recovery()')" = t ] || fail "the replica is not in recovery"

# More writes after the copy: the replica gets them by streaming.
p -c "UPDATE acct SET owner = 'streamed' WHERE id = 7" -c "DELETE FROM acct WHERE id > 190" \
  -c "BEGIN" -c "INSERT INTO acct VALUES (1000, 'in a transaction', 1)" -c "UPDATE acct SET balance = 0 WHERE id = 1000" -c "COMMIT"
# catch_up: wait until the replica has replayed everything the primary wrote
catch_up() {
    local target i
    target=$(p -c "SELECT pg_current_wal_lsn()")
    for i in $(seq 1 100); do
        [ "$(s -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ] && return 0
        sleep 0.1
    done
    fail "the replica did not replay up to $target"
}
catch_up

# The same answers on both.
for q in "SELECT ok || ' ' || events_checked || ' ' || coalesce(first_bad_event::text, '-') FROM audit_log.verify()" \
         "SELECT (audit_log.checkpoint() -> 'chains')::text" \
         "SELECT (audit_log.checkpoint() -> 'trees')::text" \
         "SELECT string_agg(op || ':' || coalesce(new_row->>'owner', '-'), ',' ORDER BY event_id) FROM audit_log.history('acct', '{\"id\": 7}')" \
         "SELECT count(*) || ' ' || sum(event_count) FROM audit_log.records"; do
    a=$(p -c "$q"); b=$(s -c "$q")
    [ "$a" = "$b" ] || fail "the replica answers '$b', the primary '$a', to: $q"
done
p -c "SELECT audit_log.checkpoint()" >"$work/cp.json"
[ "$(s -c "SELECT ok FROM audit_log.verify('$(cat "$work/cp.json")'::jsonb)")" = t ] ||
    fail "the replica's log does not extend the primary's checkpoint"
# Merkle proofs on the replica (read-only: no tile is written there): the
# primary's proof of an event, and consistency from the primary's checkpoint.
a=$(p -c "SELECT audit_log.prove(5, '$(cat "$work/cp.json")') - 'database'")
b=$(s -c "SELECT audit_log.prove(5, '$(cat "$work/cp.json")') - 'database'")
[ -n "$a" ] && [ "$a" = "$b" ] || fail "the replica proves event 5 otherwise than the primary: $b"
[ "$(s -c "SELECT audit_log.consistency('$(cat "$work/cp.json")') -> 'proofs' IS NOT NULL")" = t ] ||
    fail "no consistency proof on the replica"
events=$(s -c "SELECT events_checked FROM audit_log.verify()")

# The CLI against the replica: export and offline verify; the witness twice.
sdsn="host=$dir port=$sport user=postgres dbname=$db"
"$cli" export --dsn "$sdsn" --format records --out "$work/replica.jsonl" 2>/dev/null || fail "export from the replica failed"
out=$("$cli" verify "$work/replica.jsonl" --checkpoint "$work/cp.json" 2>&1) || fail "the replica's export does not verify: $out"
grep -q "events checked: $events," <<<"$out" || fail "the replica's export checked other than $events events: $out"
"$cli" keygen --out "$work/key" 2>/dev/null
for i in 1 2; do
    out=$("$cli" witness --dsn "$sdsn" --state "$work/witness" --key "$work/key" 2>&1) || fail "witness run $i against the replica: $out"
done

# A standby asked to write: a clear read-only error (SQLSTATE 25006), no
# crash, no Rust panic, and nothing changes.
for stmt in "SELECT audit_log.enable('acct')" "SELECT audit_log.disable('acct')" \
            "SELECT audit_log.set_retention('1 year')" "SELECT * FROM audit_log.purge(now())" \
            "SELECT audit_log.enable_schema('public')" "INSERT INTO acct VALUES (5000, 'x', 1)" \
            "SELECT audit_log.source_id()"; do
    set +e
    out=$(psql -X -q -At -h "$dir" -p "$sport" -U postgres -d $db -v VERBOSITY=verbose -c "$stmt" 2>&1)
    rc=$?
    set -e
    [ "$rc" != 0 ] || fail "the standby accepted: $stmt"
    grep -Eq "ERROR:  (25006|55000)" <<<"$out" || fail "the standby's error for '$stmt' is not a read-only one: $out"
    ! grep -Eqi "panick|backtrace|RUST_BACKTRACE" <<<"$out" || fail "a Rust panic reached the client: $out"
done
[ "$(s -c "SELECT count(*) FROM audit_log.records")" = "$(p -c "SELECT count(*) FROM audit_log.records")" ] \
    || fail "the standby's log differs from the primary's after the refused writes"

# A superuser's edit on the primary is caught on the replica.
bad=$(p -c "SELECT id FROM audit_log.events WHERE op = 'UPDATE' ORDER BY id LIMIT 1 OFFSET 3")
p -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
  -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'), encode('UPDATE', 'hex'), encode('DELETE', 'hex')), 'hex') WHERE $bad BETWEEN first_event AND last_event" \
  -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER"
catch_up
primary_says=$(p -c "SELECT first_bad_event || ' ' || split_part(problem, ':', 1) FROM audit_log.verify()" 2>/dev/null)
set +e
replica=$(psql -X -q -v ON_ERROR_STOP=1 -At -h "$dir" -p "$sport" -U postgres -d $db \
    -c "SELECT first_bad_event || ' ' || split_part(problem, ':', 1) FROM audit_log.verify()" 2>"$work/stderr")
rc=$?
set -e
[ "$rc" = 0 ] || fail "verify() on the replica failed with an error: $(cat "$work/stderr")"
[ -n "$primary_says" ] && [ "$replica" = "$primary_says" ] || fail "the replica says '$replica', the primary '$primary_says'"
grep -q 'WARNING:  audit_log.verify() failed' "$work/stderr" || fail "no WARNING on the replica: $(cat "$work/stderr")"
! grep -q 'ERROR' "$work/stderr" || fail "an error on the replica: $(cat "$work/stderr")"
[ "$(s -c "SELECT ok FROM audit_log.verify('$(cat "$work/cp.json")'::jsonb)" 2>/dev/null)" = f ] ||
    fail "the replica's edited log still extends the checkpoint"
out=$("$cli" witness --dsn "$sdsn" --state "$work/witness" --key "$work/key" 2>&1) && fail "the witness accepted the edited log on the replica: $out"
echo "standby: the replica answers verify(), checkpoint(), verify(checkpoint) and history() as the primary ($events events), exports, verifies offline and is witnessed; the primary's edit is caught there ($replica) with a WARNING"

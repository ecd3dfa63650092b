#!/usr/bin/env bash
# The DDL guard judges only what the current command wrote. Session B's
# ALTER TABLE has started and waits for its table lock (held by C; the
# guard's ddl_command_start takes it as the command would); meanwhile A
# disables auditing of another table and renames a third, and commits. B
# then completes: not refused ("would switch off auditing" was the old false
# error), and nothing of A's is recorded under B's name (the old guard
# recorded A's rename as B's). Then the same table: A renames a column of
# B's table while B waits; B's event starts from A's result, not before it.
# Deterministic: every step waits for the state before it, polled in
# pg_locks / pg_stat_activity.
set -euo pipefail
db=al_ddl_conc
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d /tmp/al_ddl_conc.XXXXXX); chmod 755 "$work"
c_pid="" b_pid=""
cleanup() {
    exec 3>&-
    for p in $b_pid $c_pid; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# poll WHAT SQL: until SQL says t (at most 30 s).
poll() {
    for _ in $(seq 1 300); do
        [ "$(q -c "$2")" = t ] && return 0
        sleep 0.1
    done
    fail "timed out waiting until $1"
}

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" \
    -c "DROP ROLE IF EXISTS al_dc_a" -c "DROP ROLE IF EXISTS al_dc_b" \
    -c "CREATE DATABASE $db" -c "CREATE ROLE al_dc_a LOGIN" -c "CREATE ROLE al_dc_b LOGIN" 2>/dev/null
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
GRANT audit_log_admin TO al_dc_a;
GRANT CREATE ON SCHEMA public TO al_dc_a;  -- a rename needs it
CREATE TABLE dc_x (id int PRIMARY KEY, v text);
CREATE TABLE dc_z (id int PRIMARY KEY, v text);
CREATE TABLE dc_y (id int PRIMARY KEY, v text);
ALTER TABLE dc_x OWNER TO al_dc_a;
ALTER TABLE dc_z OWNER TO al_dc_a;
ALTER TABLE dc_y OWNER TO al_dc_b;
SELECT audit_log.enable('dc_x'), audit_log.enable('dc_y'), audit_log.enable('dc_z');
INSERT INTO dc_x VALUES (1, 'x'); INSERT INTO dc_y VALUES (1, 'y'); INSERT INTO dc_z VALUES (1, 'z');
SQL
first_new=$(q -c "SELECT coalesce(max(id), 0) + 1 FROM audit_log.events")

# C holds ACCESS SHARE on dc_y in an open transaction.
mkfifo "$work/c.in"
PGAPPNAME=dc_c psql -X -q -v ON_ERROR_STOP=1 -d $db <"$work/c.in" >"$work/c.out" 2>&1 & c_pid=$!
exec 3>"$work/c.in"
echo "BEGIN; LOCK TABLE dc_y IN ACCESS SHARE MODE;" >&3
poll "C holds its lock on dc_y" "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE a.application_name = 'dc_c' AND l.relation = 'dc_y'::regclass AND l.mode = 'AccessShareLock' AND l.granted)"

# B, the table's owner: its ALTER TABLE starts and waits for dc_y's lock.
PGAPPNAME=dc_b PGOPTIONS="-c lock_timeout=60s" psql -X -q -v ON_ERROR_STOP=1 -U al_dc_b -d $db \
    -c "ALTER TABLE dc_y ADD COLUMN c int" >"$work/b.out" 2>&1 & b_pid=$!
b_waits="SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE a.application_name = 'dc_b' AND a.usename = 'al_dc_b' AND a.wait_event_type = 'Lock'
        AND l.relation = 'dc_y'::regclass AND l.mode = 'AccessExclusiveLock' AND NOT l.granted)"
poll "B's ALTER TABLE started and waits for dc_y" "$b_waits"

# A, an audit_log_admin: disables dc_x, renames dc_z, commits; B still waits.
PGAPPNAME=dc_a PGOPTIONS="-c lock_timeout=20s" psql -X -q -v ON_ERROR_STOP=1 -U al_dc_a -d $db \
    -c "BEGIN" -c "SELECT audit_log.disable('dc_x')" -c "ALTER TABLE dc_z RENAME TO dc_z_renamed" -c "COMMIT" \
    >"$work/a.out" 2>&1 || fail "session A failed: $(cat "$work/a.out")"
[ "$(q -c "$b_waits")" = t ] || fail "B stopped waiting before C committed: $(cat "$work/b.out")"

# C commits; B takes its lock and completes.
echo "COMMIT;" >&3
exec 3>&-
wait "$c_pid" || fail "session C failed: $(cat "$work/c.out")"
c_pid=""
b_rc=0; wait "$b_pid" || b_rc=$?
b_pid=""
[ $b_rc = 0 ] || fail "B's ALTER TABLE dc_y failed (exit $b_rc): $(cat "$work/b.out")"
[ ! -s "$work/b.out" ] || fail "B said more than nothing: $(cat "$work/b.out")"
[ "$(q -c "SELECT count(*) FROM pg_attribute WHERE attrelid = 'dc_y'::regclass AND attname = 'c'")" = 1 ] \
    || fail "B's column is missing"

# What the log says about the interleaving.
ev() { q -c "SELECT coalesce(string_agg($1, ' ; ' ORDER BY id), '') FROM audit_log.events WHERE id >= $first_new AND ($2)"; }
who="session_user_name || '/' || current_user_name"
got=$(ev "op || ' ' || table_name || ' ' || $who" "op = 'DISABLE'")
[ "$got" = "DISABLE dc_x al_dc_a/al_dc_a" ] || fail "the DISABLE event is not A's alone: '$got'"
renames="op = 'DDL' AND new_row->'before'->>'table' IS DISTINCT FROM new_row->'after'->>'table'"
got=$(ev "(new_row->'before'->>'table') || '->' || (new_row->'after'->>'table') || ' ' || $who" "$renames")
[ "$got" = "dc_z->dc_z_renamed al_dc_a/al_dc_a" ] || fail "expected exactly one rename event, A's: '$got'"
got=$(ev "op || ' ' || table_name || ' ' || $who" "session_user_name = 'al_dc_b' OR current_user_name = 'al_dc_b'")
[ "$got" = "DDL dc_y al_dc_b/al_dc_b" ] || fail "B's command recorded other than one DDL event on dc_y: '$got'"
got=$(ev "new_row->'after'->>'columns'" "session_user_name = 'al_dc_b'")
[ "$got" = "id integer, v text, c integer" ] || fail "B's event does not show its own column change: '$got'"
# The old bug's spelling: B's event never names x or z, and nothing about
# them is recorded under B or by anyone but A.
[ -z "$(ev "id::text" "session_user_name = 'al_dc_b' AND (table_name <> 'dc_y' OR new_row::text ~ 'dc_[xz]')")" ] \
    || fail "B's ALTER TABLE dc_y recorded something about dc_x or dc_z"
[ -z "$(ev "id::text" "table_name IN ('dc_x', 'dc_z', 'dc_z_renamed') AND session_user_name <> 'al_dc_a'")" ] \
    || fail "an event about dc_x or dc_z under someone other than A"
[ "$(q -c "SELECT count(*) FROM audit_log.events WHERE id >= $first_new")" = 3 ] \
    || fail "expected 3 new events (A's DISABLE and rename, B's ADD COLUMN): $(ev "op || ' ' || table_name || ' ' || $who" "true")"
v=$(q -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
[ "${v%% *}" = true ] || fail "verify() after the interleaving: $v"

# The same table: A (a superuser here) renames a column of dc_y in an open
# transaction; B's ADD COLUMN waits; A commits. B's recorded "before" must
# be A's result: the guard reads a table's state under the command's lock.
mkfifo "$work/a.in"
PGAPPNAME=dc_a2 psql -X -q -v ON_ERROR_STOP=1 -d $db <"$work/a.in" >"$work/a2.out" 2>&1 & a2_pid=$!
exec 4>"$work/a.in"
echo "BEGIN; ALTER TABLE dc_y RENAME COLUMN v TO w;" >&4
poll "A holds dc_y" "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE a.application_name = 'dc_a2' AND l.relation = 'dc_y'::regclass AND l.mode = 'AccessExclusiveLock' AND l.granted)"
second=$(q -c "SELECT coalesce(max(id), 0) + 1 FROM audit_log.events")
PGAPPNAME=dc_b PGOPTIONS="-c lock_timeout=60s" psql -X -q -v ON_ERROR_STOP=1 -U al_dc_b -d $db \
    -c "ALTER TABLE dc_y ADD COLUMN d int" >"$work/b2.out" 2>&1 & b2_pid=$!
poll "B's second ALTER TABLE waits for dc_y" "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE a.application_name = 'dc_b' AND a.usename = 'al_dc_b' AND l.relation = 'dc_y'::regclass AND NOT l.granted)"
echo "COMMIT;" >&4
exec 4>&-
wait $a2_pid || fail "A's rename failed: $(cat "$work/a2.out")"
wait $b2_pid || fail "B's second ALTER TABLE failed: $(cat "$work/b2.out")"
got=$(q -c "SELECT string_agg(session_user_name || ': ' || (new_row->'before'->>'columns') || ' -> ' || (new_row->'after'->>'columns'), ' ; ' ORDER BY id)
              FROM audit_log.events WHERE id >= $second AND op = 'DDL'")
want="postgres: id integer, v text, c integer -> id integer, w text, c integer ; al_dc_b: id integer, w text, c integer -> id integer, w text, c integer, d integer"
[ "$got" = "$want" ] || fail "the same-table interleaving was recorded as '$got', expected '$want'"

# A session keeps the log's relations it found by name until the catalog
# changes: after another session drops and recreates the extension, its next
# audited write goes to the new log (stale OIDs would fail to open).
got=$(q <<SQL
CREATE TABLE dc_oids (id int PRIMARY KEY);
SELECT audit_log.enable('dc_oids') \g /dev/null
INSERT INTO dc_oids VALUES (1);
INSERT INTO dc_oids VALUES (2);
\! psql -X -q -v ON_ERROR_STOP=1 -d $db -c "SET client_min_messages = warning" -c "DROP EXTENSION audit_log CASCADE" -c "CREATE EXTENSION audit_log" -c "SELECT audit_log.enable('dc_oids')" >/dev/null
INSERT INTO dc_oids VALUES (3);
SELECT string_agg(new_row->>'id', ',' ORDER BY id) FROM audit_log.events WHERE table_name = 'dc_oids' AND op = 'INSERT';
SELECT ok FROM audit_log.verify();
SQL
)
[ "$got" = "3
t" ] || fail "after another session recreated the extension, this session's insert was recorded as '$got', expected only row 3 in the new log, verified"

psql -X -q -d postgres -c "DROP DATABASE $db" -c "DROP ROLE al_dc_a" -c "DROP ROLE al_dc_b"
echo "ddl_concurrency: B's ALTER TABLE, waiting for its lock while A disabled dc_x and renamed dc_z, succeeded; log has A's DISABLE and A's one rename, B's one ADD COLUMN on dc_y only; verify ok (${v#* } events); on the same table, B's event starts from A's committed rename"

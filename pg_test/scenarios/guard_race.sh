#!/usr/bin/env bash
# A decoy table earlier in the search_path, dropped while a command waits
# for its lock, would make the command act on an audited table that the
# guard never judged: a column rewrite with no event. The guard resolves
# the name with the command's own lock (so it waits, and then judges the
# table the command will act on), and compares what it judged with what
# the command did; either way the rewrite is refused.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
db=al_guard_race
q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
q -d postgres -c "DROP ROLE IF EXISTS al_race_app" -c "CREATE ROLE al_race_app LOGIN" 2>/dev/null
q -d "$db" <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE SCHEMA apps AUTHORIZATION al_race_app;
CREATE SCHEMA auto AUTHORIZATION al_race_app;
SET ROLE al_race_app;
CREATE TABLE auto.acct (id int PRIMARY KEY, bal numeric(12,4));
INSERT INTO auto.acct VALUES (1, 12.3456);
CREATE TABLE apps.acct (id int, bal numeric(12,4));   -- the decoy
RESET ROLE;
SELECT audit_log.enable('auto.acct');
SQL

out=$(mktemp)
# B holds the decoy until A waits for it, then drops it.
q -d "$db" -U al_race_app -c "BEGIN" -c "LOCK TABLE apps.acct IN ACCESS EXCLUSIVE MODE" \
  -c "DO \$\$ BEGIN
        FOR i IN 1..600 LOOP
          EXIT WHEN EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                             WHERE NOT l.granted AND c.relname = 'acct');
          PERFORM pg_sleep(0.05);
        END LOOP;
      END \$\$" \
  -c "DROP TABLE apps.acct" -c "COMMIT" >/dev/null &
b=$!
# Give B its lock before A starts.
for _ in $(seq 1 200); do
    n=$(q -d "$db" -c "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                        WHERE l.granted AND l.mode = 'AccessExclusiveLock' AND c.relname = 'acct'")
    [ "$n" -ge 1 ] && break
    sleep 0.05
done
[ "$n" -ge 1 ] || fail "session B never took its lock"
status=0
psql -X -q -At -d "$db" -U al_race_app -v ON_ERROR_STOP=1 \
    -c "SET search_path = apps, auto" \
    -c "ALTER TABLE acct ALTER COLUMN bal TYPE numeric(12,0)" >"$out" 2>&1 || status=$?
wait $b
[ "$status" -ne 0 ] || fail "the raced ALTER TABLE went through: $(cat "$out")"
grep -Eq "would change recorded values|changed while it waited for its lock" "$out" \
    || fail "unexpected error: $(cat "$out")"
bal=$(q -d "$db" -c "SELECT bal FROM auto.acct WHERE id = 1")
[ "$bal" = "12.3456" ] || fail "the audited table was rewritten: bal = $bal"
[ "$(q -d "$db" -c "SELECT count(*) FROM audit_log.events WHERE op = 'DDL'")" = 0 ] \
    || fail "a DDL event was recorded for a command that did nothing"
[ "$(q -d "$db" -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "verify() failed"
# Without the race, the same command is refused outright (a rounding rewrite).
err=$(psql -X -q -At -d "$db" -U al_race_app -c "ALTER TABLE auto.acct ALTER COLUMN bal TYPE numeric(12,0)" 2>&1 || true)
grep -q <<<"$err" "would change recorded values" || fail "the plain rewrite was not refused: $err"
rm -f "$out"
q -d postgres -c "DROP DATABASE $db" -c "DROP ROLE al_race_app"
echo "guard race: a decoy dropped while the command waited: the rewrite of the audited table was refused, its values kept"

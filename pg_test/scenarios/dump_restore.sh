#!/usr/bin/env bash
# pg_dump (custom and plain) of an audited database restores into a fresh
# database that verifies, with the same events, against a checkpoint taken
# before the dump; and auditing keeps working after the restore.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d); chmod 777 "$work"
q -d postgres -c "DROP DATABASE IF EXISTS al_src" -c "DROP DATABASE IF EXISTS al_dst_c" -c "DROP DATABASE IF EXISTS al_dst_p" -c "CREATE DATABASE al_src"
q -d al_src <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE items (id int PRIMARY KEY, price numeric, tags text[], m mood, at timestamptz);
CREATE TABLE parts (id int, k int) PARTITION BY LIST (k);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1);
SELECT audit_log.enable('items');
SELECT audit_log.enable('parts');
INSERT INTO items SELECT g, g * 1.25, ARRAY['a', 'b'], 'happy', '2026-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 200) g;
UPDATE items SET price = 12345678901234567890.123456789 WHERE id = 7;
SELECT pg_catalog.clock_timestamp() AS cut \gset
DELETE FROM items WHERE id > 150;
INSERT INTO parts VALUES (1, 1), (2, 1);
-- Issue 6's state goes through the dump too: options (a redacted column and
-- its salt), a schema audited as a whole, context, retention and anchors.
CREATE SCHEMA app;
CREATE TABLE app.people (id int PRIMARY KEY, ssn text);
SELECT audit_log.enable_schema('app');
SELECT audit_log.enable('app.people', redact_columns => '{ssn}');
SELECT audit_log.set_retention('0');
SELECT * FROM audit_log.purge(:'cut');
SQL
[ "$(q -d al_src -c "SELECT count(*) FROM audit_log.anchors")" -ge 1 ] || fail "the purge left no anchor"
q -d al_src -c "SET audit_log.context = '{\"user\": \"alice\"}'" -c "INSERT INTO app.people VALUES (1, '123-45-6789')"
cp_before=$(q -d al_src -c "SELECT audit_log.checkpoint()")
source_id=$(q -d al_src -c "SELECT audit_log.source_id()")
count_src=$(q -d al_src -c "SELECT count(*) FROM audit_log.events")
[ "$(q -d al_src -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "source does not verify"

pg_dump -d al_src -Fc -f "$work/dump.custom"
pg_dump -d al_src -Fp -f "$work/dump.sql"
q -d postgres -c "CREATE DATABASE al_dst_c" -c "CREATE DATABASE al_dst_p"
pg_restore -d al_dst_c --exit-on-error "$work/dump.custom"
psql -X -q -v ON_ERROR_STOP=1 -d al_dst_p -f "$work/dump.sql" >/dev/null

for db in al_dst_c al_dst_p; do
    n=$(q -d "$db" -c "SELECT count(*) FROM audit_log.events")
    [ "$n" = "$count_src" ] || fail "$db has $n events, source had $count_src"
    v=$(q -d "$db" -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify()")
    [ "$v" = "true " ] || fail "$db does not verify: $v"
    v=$(q -d "$db" -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp_before')")
    [ "$v" = "true " ] || fail "$db does not extend the pre-dump checkpoint: $v"
    # The log keeps its identity as a source of central collection.
    [ "$(q -d "$db" -c "SELECT audit_log.source_id()")" = "$source_id" ] || fail "$db: the source identity changed"
    # Auditing still works, and the chains go on from where they were.
    q -d "$db" -c "INSERT INTO items VALUES (1000, 1, '{}', 'sad', now())" -c "INSERT INTO parts VALUES (3, 1)"
    n2=$(q -d "$db" -c "SELECT count(*) FROM audit_log.events")
    [ "$n2" = "$((count_src + 2))" ] || fail "$db: writes after restore were not audited ($n2)"
    # The salt came back: the redacted value still matches; options and the
    # audited schema too (a new table there is audited, the redaction applies).
    [ "$(q -d "$db" -c "SELECT bool_and(new_row->>'ssn' = audit_log.redacted('\"123-45-6789\"')) FROM audit_log.events WHERE table_name = 'people' AND op = 'INSERT'")" = t ] \
        || fail "$db: redacted values no longer match after the restore"
    q -d "$db" -c "CREATE TABLE app.later (id int)" -c "INSERT INTO app.later VALUES (1)" -c "INSERT INTO app.people VALUES (2, 'x')"
    [ "$(q -d "$db" -c "SELECT count(*) FROM audit_log.events WHERE table_name = 'later' AND op = 'INSERT'")" = 1 ] \
        || fail "$db: the audited schema was not restored"
    [ "$(q -d "$db" -c "SELECT new_row->>'ssn' LIKE 'sha256:%' FROM audit_log.events WHERE table_name = 'people' AND new_row->>'id' = '2'")" = t ] \
        || fail "$db: the redaction option was not restored"
    v=$(q -d "$db" -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp_before')")
    [ "$v" = "true " ] || fail "$db does not verify after new writes: $v"
done
q -d postgres -c "DROP DATABASE al_src" -c "DROP DATABASE al_dst_c" -c "DROP DATABASE al_dst_p"
rm -rf "$work"
echo "dump/restore: custom and plain restores verify with $count_src events and keep the source identity"

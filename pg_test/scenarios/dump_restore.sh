#!/usr/bin/env bash
# pg_dump (custom and plain) of an audited database restores into a fresh
# database that verifies, with the same events, against a checkpoint taken
# before the dump; and auditing keeps working after the restore.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d); chmod 777 "$work"
q -d postgres -c "DROP DATABASE IF EXISTS al_src" -c "DROP DATABASE IF EXISTS al_dst_c" -c "DROP DATABASE IF EXISTS al_dst_p" -c "CREATE DATABASE al_src"
q -d al_src <<'SQL'
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
DELETE FROM items WHERE id > 150;
INSERT INTO parts VALUES (1, 1), (2, 1);
SQL
cp_before=$(q -d al_src -c "SELECT audit_log.checkpoint()")
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
    # Auditing still works, and the chains go on from where they were.
    q -d "$db" -c "INSERT INTO items VALUES (1000, 1, '{}', 'sad', now())" -c "INSERT INTO parts VALUES (3, 1)"
    n2=$(q -d "$db" -c "SELECT count(*) FROM audit_log.events")
    [ "$n2" = "$((count_src + 2))" ] || fail "$db: writes after restore were not audited ($n2)"
    v=$(q -d "$db" -c "SELECT ok || ' ' || coalesce(problem, '') FROM audit_log.verify('$cp_before')")
    [ "$v" = "true " ] || fail "$db does not verify after new writes: $v"
done
q -d postgres -c "DROP DATABASE al_src" -c "DROP DATABASE al_dst_c" -c "DROP DATABASE al_dst_p"
rm -rf "$work"
echo "dump/restore: custom and plain restores verify with $count_src events"

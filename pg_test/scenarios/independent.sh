#!/usr/bin/env bash
# An independent implementation of docs/FORMAT.md (lib/format_v2.py, plain
# Python) decodes the raw storage (records, segments, anchors) and recomputes
# every hash the extension stored, over awkward data. Then it plays a
# superuser who edits an event inside its record's payload and recomputes
# hashes: of that record alone (detected by the chain at the next record,
# whose stored link no longer hashes when chained on it), and of the whole
# chain from there on (detected against a checkpoint taken before).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py="python3 $here/lib/format_v2.py"
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d al_indep "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
dump() { q -f "$here/lib/dump_log.sql"; }
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS al_indep" -c "CREATE DATABASE al_indep" 2>/dev/null
q <<'SQL' >/dev/null
SET client_min_messages = warning;
SET audit_log.chains = 1;
CREATE EXTENSION audit_log;
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE "Ünïcødé" (id int PRIMARY KEY, n numeric, f float8, arr int[], m mood, b bytea,
                         t timestamptz, j jsonb, s text, nothing text);
SELECT audit_log.enable('"Ünïcødé"');
INSERT INTO "Ünïcødé" VALUES
  (1, 123456789012345678901234567890.123456789012, 'NaN', '{1,NULL,3}', 'happy', '\xdeadbeef',
   '2026-01-02 03:04:05.678901+00', '{"b": [1.50, "é", 1e3, -0.0], "a": null, "": {}}', E'ü ✓ 😀 "q" \\ \t', NULL),
  (2, -0.000001, 'Infinity', '{}', 'sad', '', 'infinity', '[]', '', NULL);
SET audit_log.context = '{"user": "zoë", "request": "r-17", "n": 1.50, "tags": [null, "é"]}';
UPDATE "Ünïcødé" SET n = n * 2, j = j || '{"k": true}' WHERE id = 1;
RESET audit_log.context;
DELETE FROM "Ünïcødé" WHERE id = 2;
INSERT INTO "Ünïcødé" (id, s) SELECT g, 'row ' || g FROM generate_series(3, 40) g;
UPDATE "Ünïcødé" SET s = s || '!' WHERE id BETWEEN 10 AND 12;
SQL
# Over TCP too, so that client_addr is set and goes through both hash routes.
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -d al_indep \
    -c "UPDATE \"Ünïcødé\" SET s = 'over tcp' WHERE id = 3" -c "DELETE FROM \"Ünïcødé\" WHERE id = 4"
[ "$(q -c "SELECT count(*) FROM audit_log.events WHERE context IS NOT NULL")" = 1 ] || fail "context not recorded"
addr=$(q -c "SELECT string_agg(DISTINCT host(client_addr), ',') FROM audit_log.events WHERE client_addr IS NOT NULL")
[ "$addr" = 127.0.0.1 ] || fail "client_addr over TCP recorded as '$addr'"
out=$(dump | $py verify) || fail "independent verifier disagrees: $out"
echo "  $out"
cp=$(q -c "SELECT audit_log.checkpoint()")

# Edit the UPDATE's event in its record's payload and recompute that record's
# link hash. v2 stores no event hash and no previous link hash: the record
# itself hashes to its (recomputed) link_hash, and the forgery shows at the
# next record of the chain, which was chained on the original hash.
target=$(q -c "SELECT id FROM audit_log.events WHERE op = 'UPDATE' AND table_name = 'Ünïcødé' ORDER BY id LIMIT 1")
read -r chain seq <<<"$(q -F ' ' -c "SELECT r.chain_id, r.seq FROM audit_log.records r
    JOIN audit_log.events e ON e.tx_first = r.first_event WHERE e.id = $target")"
next=$(q -c "SELECT first_event FROM audit_log.records WHERE chain_id = $chain AND seq = $seq + 1")
[ -n "$next" ] || fail "event $target's record $chain/$seq is the last of its chain: a forgery of it alone would look like a whole chain recomputed"
forged='{"id": 1, "n": 0, "s": "forged"}'
{ echo "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
  dump | $py rewrite "$target" "$forged"
  echo "SELECT ok, first_bad_event, problem FROM audit_log.verify(); ROLLBACK;"; } >/tmp/al_forge1.sql
[ "$(grep -c '^UPDATE audit_log.records SET payload' /tmp/al_forge1.sql)" = 1 ] || fail "rewrite did not forge one record's payload"
v=$(q -f /tmp/al_forge1.sql | tail -1)
case "$v" in "f|$next|content_changed: record $chain/$((seq + 1)) "*) ;;
    *) fail "record $chain/$seq forged, its hash recomputed: not detected at the next record $chain/$((seq + 1)) (event $next): $v" ;; esac
echo "  event $target edited, its record's hash recomputed: $v"
# The independent verifier, on the forged storage, agrees on where.
set +e
out=$({ echo "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
        grep '^UPDATE' /tmp/al_forge1.sql; cat "$here/lib/dump_log.sql"; echo "ROLLBACK;"; } | q | $py verify)
rc=$?
set -e
case "$rc $out" in "1 record $chain/$((seq + 1)) "*"(content_changed)") ;;
    *) fail "format_v2.py on the forged storage: exit $rc, not at record $chain/$((seq + 1)): $out" ;; esac
echo "  format_v2.py on it: $out"

# Recompute the whole chain from there on: consistent in itself, so only the
# checkpoint can tell.
{ echo "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
  dump | $py rewrite "$target" "$forged" --chain
  echo "SELECT new_row = '$forged'::jsonb FROM audit_log.events WHERE id = $target;"
  echo "SELECT ok, coalesce(problem, '') FROM audit_log.verify();"
  echo "SELECT ok, first_bad_event, problem FROM audit_log.verify('$cp'); ROLLBACK;"; } >/tmp/al_forge2.sql
v=$(q -f /tmp/al_forge2.sql | tail -3 | tr '\n' ' ')
case "$v" in "t t| f|"*"chain_rewritten"*) ;; *) fail "recomputed chain (event $target forged) not caught by the checkpoint: $v" ;; esac
echo "  whole chain recomputed: event $target reads as forged, verify() passes, verify(checkpoint) says: ${v#t t| }"
rm -f /tmp/al_forge1.sql /tmp/al_forge2.sql

# Segments. No hash covers a segment's part, which only orders a
# transaction's segments: the two verifiers agree on a part edited in place
# (the order unchanged: both pass) and on two parts swapped (the events out
# of order: both fail, at the same record). A savepoint keeps the outer
# level's first event in memory while its own events spill, so the
# transaction's payload and segments interleave.
q <<'SQL' >/dev/null
BEGIN;
INSERT INTO "Ünïcødé" (id, s) VALUES (1000, 'kept in memory');
SAVEPOINT a;
INSERT INTO "Ünïcødé" (id, s) SELECT g, repeat(md5(g::text), 12) FROM generate_series(1001, 7000) g;
RELEASE a;
INSERT INTO "Ünïcødé" (id, s) VALUES (7001, 'after');
COMMIT;
SQL
read -r sfirst p1 p2 <<<"$(q -F ' ' -c "SELECT first_event, min(part), (array_agg(part ORDER BY part))[2]
    FROM audit_log.segments GROUP BY first_event HAVING count(*) >= 2 ORDER BY first_event DESC LIMIT 1")"
[ -n "$p2" ] || fail "the savepoint's transaction spilled fewer than two segments"
[ "$(q -c "SELECT octet_length(payload) > 0 FROM audit_log.records WHERE first_event = $sfirst")" = t ] ||
    fail "the spilled transaction kept no event in its record's payload"
out=$(dump | $py verify) || fail "format_v2.py on the savepoint's spilled transaction: $out"
read -r schain sseq <<<"$(q -F ' ' -c "SELECT chain_id, seq FROM audit_log.records WHERE first_event = $sfirst")"
edit() { # edit SQL: verify() and format_v2.py on the segments so edited, rolled back
    { echo "BEGIN; ALTER TABLE audit_log.segments DISABLE TRIGGER USER; $1"
      echo "SELECT ok, coalesce(first_bad_event::text, ''), coalesce(problem, '') FROM audit_log.verify();"
      echo "ROLLBACK;"; } | q | tail -1
}
pyedit() {
    set +e
    pyout=$({ echo "BEGIN; ALTER TABLE audit_log.segments DISABLE TRIGGER USER; $1"
              cat "$here/lib/dump_log.sql"; echo "ROLLBACK;"; } | q | $py verify)
    pyrc=$?
    set -e
}
moved="UPDATE audit_log.segments SET part = $p1 - 1 WHERE first_event = $sfirst AND part = $p1;"
v=$(edit "$moved")
case "$v" in "t||") ;; *) fail "verify() on a segment's part moved without changing the order: $v" ;; esac
pyedit "$moved"
[ "$pyrc" = 0 ] || fail "format_v2.py on a segment's part moved without changing the order (verify() passes it): exit $pyrc: $pyout"
echo "  a segment's part moved, the order kept: verify() and format_v2.py pass it"
swapped="UPDATE audit_log.segments SET part = -1 WHERE first_event = $sfirst AND part = $p1;
UPDATE audit_log.segments SET part = $p1 WHERE first_event = $sfirst AND part = $p2;
UPDATE audit_log.segments SET part = $p2 WHERE first_event = $sfirst AND part = -1;"
v=$(edit "$swapped")
case "$v" in "f|"*) ;; *) fail "verify() on two segments' parts swapped: $v" ;; esac
bad=$(cut -d'|' -f2 <<<"$v")
[ "$(q -c "SELECT tx_first FROM audit_log.events WHERE id = ${bad:-0}")" = "$sfirst" ] ||
    fail "verify() on two segments' parts swapped names no event of transaction $sfirst: $v"
pyedit "$swapped"
case "$pyrc $pyout" in "1 record $schain/$sseq "*) ;;
    *) fail "format_v2.py on two segments' parts swapped: exit $pyrc, not at record $schain/$sseq: $pyout" ;; esac
echo "  two segments' parts swapped: verify() says ${v#f|}; format_v2.py: $pyout"
psql -X -q -d postgres -c "DROP DATABASE al_indep"
echo "independent: the Python implementation of FORMAT.md agrees with every stored hash; forgeries detected"

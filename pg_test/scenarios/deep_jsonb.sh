#!/usr/bin/env bash
# jsonb nested 10,000 and 100,000 deep, stored by a table's (non-superuser)
# owner, through every path that walks row values: capture (INSERT, UPDATE,
# DELETE, a redacted column), verify() in the session and in worker threads
# and against a checkpoint, tampering at the innermost value, the CLI's
# export and offline verify, and the independent Python verifier. The server
# must not crash (a crash here once took the whole cluster down).
#
# PostgreSQL refuses such depths under its default max_stack_depth (2MB), so
# this scenario runs its own cluster, started under a raised OS stack limit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
dir=${AUDIT_LOG_DEEP_DIR:-/tmp/audit_log_deep}
export PGHOST=$dir PGPORT=${AUDIT_LOG_DEEP_PORT:-55501} PGUSER=postgres
db=al_deep
stack_kb=262144      # ulimit -s for the postmaster: 256MB
max_stack=240MB      # PostgreSQL wants it below the OS limit minus a margin
py="python3 $here/lib/format_v2.py"
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
as_owner() { q -U deep_owner "$@"; }
as_auditor() { q -U deep_auditor "$@"; }
command -v audit-log >/dev/null || fail "audit-log is not on PATH (scripts/install.sh installs it)"
t0=$(date +%s.%N)
# took: the time since the previous call, for the step just done.
lap() { local t; t=$(date +%s.%N); took=$(awk -v a="$t0" -v b="$t" 'BEGIN { printf "(%.1f s)", b - a }'); t0=$t; }

# shellcheck source=../lib/own_cluster.sh
. "$here/lib/own_cluster.sh"
# `ulimit -s` raises the soft and hard limits of the server's stack.
own_cluster_start "-s $stack_kb" "fsync = on
synchronous_commit = on
max_stack_depth = '$max_stack'"
work=$dir/work
lap; echo "  cluster on port $PGPORT, ulimit -s $stack_kb, max_stack_depth $(psql -X -At -d postgres -c 'SHOW max_stack_depth') $took"

psql -X -q -d postgres -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE ROLE deep_owner LOGIN;
CREATE ROLE deep_auditor LOGIN IN ROLE audit_log_auditor;
CREATE TABLE deep (id int PRIMARY KEY, j jsonb);
CREATE TABLE t2 (id int PRIMARY KEY, j jsonb);
ALTER TABLE deep OWNER TO deep_owner;
ALTER TABLE t2 OWNER TO deep_owner;
SELECT audit_log.enable('deep');
SELECT audit_log.enable('t2', redact_columns => '{j}');
-- N arrays around the string CORE, one jsonb_build_array per level: the way
-- values grow in applications, but quadratic (10,000 take about 2 s here,
-- 100,000 over 75 s).
CREATE FUNCTION nest_loop(n int, core text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE x jsonb := to_jsonb(core);
BEGIN
  FOR i IN 1..n LOOP x := jsonb_build_array(x); END LOOP;
  RETURN x;
END $$;
-- The same depth from text, in linear time: N/2 times {"a": [ … ]} around CORE.
CREATE FUNCTION nest_text(n int, core text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT (repeat('{"a":[', n / 2) || to_jsonb(core)::text || repeat(']}', n / 2))::jsonb $$;
SQL

# The owner stores the deep values. Each innermost string is unique, so that
# a test can name the byte it edits.
as_owner <<'SQL'
INSERT INTO deep VALUES (1, nest_loop(10000, 'core-10k'));
INSERT INTO deep VALUES (2, nest_text(100000, 'core-100k'));
SQL
depth=$(q -c "SELECT string_agg(id || ':' || length(j::text), ',' ORDER BY id) FROM deep")
[ "$depth" = "1:20010,2:450011" ] || fail "deep values not stored as built: $depth"
lap; echo "  the owner inserted values nested 10,000 (PL/pgSQL loop) and 100,000 (from text) deep $took"
cp=$(as_auditor -c "SELECT audit_log.checkpoint()")
as_owner <<'SQL'
UPDATE deep SET j = jsonb_build_array(j) WHERE id = 2;     -- old 100,000 deep, new 100,001
DELETE FROM deep WHERE id = 1;
INSERT INTO t2 VALUES (1, nest_text(100000, 'core-redacted'));
SQL
[ "$(q -c "SELECT count(*) FROM audit_log.events WHERE new_row::text LIKE '%core-redacted%' OR old_row::text LIKE '%core-redacted%'")" = 0 ] ||
    fail "the redacted deep value is in the log"
[ "$(q -c "SELECT new_row->>'j' LIKE 'sha256:%' FROM audit_log.events WHERE table_name = 't2' AND op = 'INSERT'")" = t ] ||
    fail "the redacted deep value is not recorded as a hash"
[ "$(q -c "SELECT audit_log.redacted(nest_text(100000, 'core-redacted')) = new_row->>'j' FROM audit_log.events WHERE table_name = 't2' AND op = 'INSERT'")" = t ] ||
    fail "redacted() of the deep value does not match the recorded hash"
[ "$(as_auditor -c "SELECT string_agg(op, ',' ORDER BY event_id) FROM audit_log.history('deep', '{\"id\": 2}')")" = INSERT,UPDATE ] ||
    fail "history() of the deep row"
[ "$(q -c "SELECT new_row->'j' = (SELECT j FROM deep WHERE id = 2) FROM audit_log.events WHERE table_name = 'deep' AND op = 'UPDATE'")" = t ] ||
    fail "the recorded new value of the UPDATE is not the table's"
lap; echo "  an UPDATE and a DELETE of deep rows, and a deep value in a redacted column, recorded; history() and redacted() agree $took"
# history => true turned on late, then the deep rows filed by index_history(),
# which reads only their key members: history() through the index agrees.
q -c "SELECT audit_log.enable('deep', history => true)" >/dev/null
filed=$(q -c "SELECT audit_log.index_history('deep')")
[ "$filed" -ge 2 ] || fail "index_history() filed $filed entries for the deep rows"
[ "$(as_auditor -c "SELECT string_agg(op, ',' ORDER BY event_id) FROM audit_log.history('deep', '{\"id\": 2}')")" = INSERT,UPDATE ] ||
    fail "history() of the deep row through the index"
[ "$(q -c "SELECT count(*) FROM audit_log.audited_tables WHERE history_since IS NOT NULL")" = 0 ] || fail "index_history() left a mark"
lap; echo "  index_history() filed the deep rows ($filed entries); history() through the index agrees $took"

# verify() as an auditor, in the session's thread, in two worker threads,
# and against a checkpoint taken between the deep changes.
events=$(q -c "SELECT count(*) FROM audit_log.events")
for threads in 0 2; do
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" \
        -c "SELECT ok, events_checked, coalesce(problem, '') FROM audit_log.verify()")
    [ "$v" = "t|$events|" ] || fail "verify() with verify_threads = $threads: $v"
    v=$(as_auditor -c "SET audit_log.verify_threads = $threads" \
        -c "SELECT ok, coalesce(problem, '') FROM audit_log.verify('$cp')")
    [ "$v" = "t|" ] || fail "verify(checkpoint) with verify_threads = $threads: $v"
done
lap; echo "  verify() and verify(checkpoint) ok over $events events, with 0 and 2 worker threads $took"

# A superuser edits the innermost string of the 100,000-deep new_row, in the
# stored bytes of its record: in a packed frame the string is the tag 0x04,
# its length as a varint (9) and its bytes. v2 locates an edit to its
# transaction (its first event): the INSERT is alone in its transaction, so
# that is the event itself.
target=$(q -c "SELECT id FROM audit_log.events WHERE table_name = 'deep' AND op = 'INSERT' AND new_row->>'id' = '2'")
[ "$(q -c "SELECT event_count FROM audit_log.records WHERE first_event = $target")" = 1 ] ||
    fail "event $target is not the only event of its record"
for threads in 0 2; do
    v=$(q -c "SET client_min_messages = error" -c "BEGIN" -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
          -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'),
                  '0409' || encode('core-100k', 'hex'), '0409' || encode('core-100K', 'hex')), 'hex')
              WHERE first_event = $target" \
          -c "SELECT count(*) FROM audit_log.records WHERE first_event = $target
                AND position('\x0409'::bytea || 'core-100K'::bytea IN payload) > 0" \
          -c "SET audit_log.verify_threads = $threads" \
          -c "SELECT ok, first_bad_event, split_part(problem, ':', 1) FROM audit_log.verify()" -c "ROLLBACK")
    [ "$v" = "1
f|$target|content_changed" ] || fail "innermost edit of event $target not made or not named (verify_threads = $threads): $v"
done
lap; echo "  an edit of the innermost value, 100,000 levels down in a record's payload, is named: event $target, content_changed $took"

no_crash

# The CLI: export, verify offline; one byte changed deep inside a row fails.
cli() { set +e; out=$(audit-log "$@" 2>&1); rc=$?; set -e; }
cli export --dsn "host=$PGHOST port=$PGPORT user=deep_auditor dbname=$db" --out "$work/e.jsonl"
[ $rc = 0 ] || fail "export: exit $rc: $out"
cli verify "$work/e.jsonl"
[ $rc = 0 ] || fail "offline verify of the export: exit $rc: $out"
grep -q <<<"$out" "events checked: $events," || fail "offline verify checked other than $events events: $out"
# One byte of the innermost string, then the end line recomputed as an
# attacker would, so that only the event hash can tell.
python3 - "$work/e.jsonl" "$work/bad.jsonl" <<'PY'
import hashlib, json, sys
lines = open(sys.argv[1], 'rb').read().splitlines(keepends=True)
hit = [i for i, l in enumerate(lines) if b'"core-100k"' in l and b'"op":"INSERT"' in l]
assert len(hit) == 1, hit
lines[hit[0]] = lines[hit[0]].replace(b'"core-100k"', b'"core-100K"')
body = [l for l in lines if not l.startswith(b'{"type":"end"')]
end = json.loads(lines[-1]); end["sha256"] = hashlib.sha256(b"".join(body)).hexdigest()
open(sys.argv[2], 'wb').write(b"".join(body) + json.dumps(end, separators=(",", ":")).encode() + b"\n")
PY
cli verify "$work/bad.jsonl"
[ $rc = 1 ] || fail "offline verify of an export edited deep inside a row: exit $rc, expected 1: $out"
grep -q <<<"$out" "first bad event: $target" || fail "offline verify did not name event $target: $out"
lap; echo "  audit-log export and verify: ok; one byte edited 100,000 levels down: exit 1, event $target $took"

# The independent verifier, on a dump of the log and on the edited export.
out=$(q -f "$here/lib/dump_log.sql" | $py verify) || fail "independent verifier disagrees: $out"
echo "  format_v2.py on the dump: $out"
set +e; out=$($py verify <"$work/bad.jsonl" 2>&1); rc=$?; set -e
[ $rc = 1 ] || fail "format_v2.py on the edited export: exit $rc, expected 1: $out"
lap; echo "  format_v2.py on the edited export: exit 1 $took"
# And on the storage edited as above, 100,000 levels down in a payload.
set +e
out=$({ echo "SET client_min_messages = error; BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
        echo "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'),
                '0409' || encode('core-100k', 'hex'), '0409' || encode('core-100K', 'hex')), 'hex')
              WHERE first_event = $target;"
        cat "$here/lib/dump_log.sql"; echo "ROLLBACK;"; } | q | $py verify 2>&1)
rc=$?
set -e
case "$rc $out" in "1 record "*" events $target..$target)"*"(content_changed)") ;;
    *) fail "format_v2.py on the storage edited deep inside a payload: exit $rc, expected 1 at event $target: $out" ;; esac
lap; echo "  format_v2.py on the edited storage: exit 1, $out $took"

no_crash
echo "deep_jsonb: values 100,000 deep are captured, verified (SQL, CLI, Python) and tamper-checked; no crash"

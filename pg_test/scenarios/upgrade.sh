#!/usr/bin/env bash
# Upgrades in place. For each released version whose install script is
# frozen in sql/archive/: install that script, write a log with it (row
# changes, a transaction that spills segments, history, a configuration
# change), take a checkpoint, then ALTER EXTENSION audit_log UPDATE to the
# version built here. Then:
# - the upgraded schema equals a fresh install's, object by object
#   (pg_test/lib/extension_schema.sql);
# - the old log verifies: in SQL, against the checkpoint taken before the
#   upgrade, with the CLI on a records export, and with the independent
#   Python verifier on the raw storage;
# - new writes chain on from the old heads, and history() reads across;
# - the old log gets Merkle trees, and an event written before the upgrade
#   proves (CLI, and Python);
# - every C symbol that a released install or upgrade script names is
#   exported by the library built here (renaming a Rust function would
#   otherwise break the definitions a database already holds).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
pg_config=${PG_CONFIG:-/usr/bin/pg_config}
extdir=$("$pg_config" --sharedir)/extension
lib=$("$pg_config" --pkglibdir)/audit_log.so
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"; }
work=$(mktemp -d /tmp/al_upgrade.XXXXXX); chmod 755 "$work"
installed=()
cleanup() {
    rm -rf "$work"
    # Frozen scripts this test put in place go again.
    for f in ${installed[@]+"${installed[@]}"}; do rm -f "$f"; done
}
trap cleanup EXIT

current=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$extdir/audit_log.control")
[ -n "$current" ] || fail "no default_version in $extdir/audit_log.control"
[ -f "$extdir/audit_log--$current.sql" ] || fail "audit_log--$current.sql is not installed"

# Every symbol a released script names must be in the library.
exported=$(nm -D --defined-only "$lib" | awk '{print $NF}' | sort -u)
shopt -s nullglob
released=("$root"/sql/archive/audit_log--*.sql "$root"/sql/audit_log--*--*.sql)
[ ${#released[@]} -gt 0 ] || fail "no frozen install script in sql/archive/"
checked=0
for f in "${released[@]}"; do
    for sym in $(grep -o "'MODULE_PATHNAME', *'[A-Za-z0-9_]*'" "$f" | sed "s/.*, *'\(.*\)'/\1/" | sort -u); do
        grep -qx "$sym" <<<"$exported" || fail "$(basename "$f") calls C symbol $sym, which $lib no longer exports"
        checked=$((checked + 1))
    done
done
[ "$checked" -ge 10 ] || fail "only $checked C symbols found in the released scripts: is the pattern still right?"
echo "  $checked C symbols of ${#released[@]} released script(s) are exported by the library"

# A fresh install of the current version: what every upgrade must arrive at.
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS al_up_fresh" -c "CREATE DATABASE al_up_fresh" 2>/dev/null
q al_up_fresh -c "SET client_min_messages = warning" -c "CREATE EXTENSION audit_log"
q al_up_fresh -f "$here/lib/extension_schema.sql" >"$work/fresh.schema"
[ "$(wc -l <"$work/fresh.schema")" -gt 100 ] || fail "the schema description of a fresh install is too short: $(wc -l <"$work/fresh.schema") lines"

# The log of database $1 verifies offline: the independent Python
# implementation on its raw storage, and the CLI on a binary export (against
# checkpoint file $2 when given).
offline_ok() {
    local out
    q "$1" -f "$here/lib/dump_log.sql" >"$work/$1.jsonl"
    out=$(python3 "$here/lib/format_v2.py" verify <"$work/$1.jsonl" 2>&1) || fail "$1: format_v2.py refuses the log: $out"
    "$cli" export --dsn "host=$PGHOST port=$PGPORT user=postgres dbname=$1" --format binary --out "$work/$1.bin" 2>/dev/null
    out=$("$cli" verify "$work/$1.bin" ${2:+--checkpoint "$2"} 2>&1) || fail "$1: the CLI refuses the log: $out"
}

upgrades=0
for frozen in "$root"/sql/archive/audit_log--*.sql; do
    old=$(basename "$frozen" .sql); old=${old#audit_log--}
    [ "$old" != "$current" ] || fail "sql/archive holds the current version $current: bump the version (Cargo.toml) before releasing changes"
    target="$extdir/audit_log--$old.sql"
    if [ ! -f "$target" ]; then
        cp "$frozen" "$target"; installed+=("$target")
    elif ! cmp -s "$frozen" "$target"; then
        fail "$target differs from the frozen $frozen"
    fi
    db=al_up_$(echo "$old" | tr . _)
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    q "$db" <<SQL >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log VERSION '$old';
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric, meta jsonb);
SELECT audit_log.enable('acct', history => true);
INSERT INTO acct SELECT g, 'owner ' || g, g * 1.25, jsonb_build_object('n', g) FROM generate_series(1, 200) g;
UPDATE acct SET balance = balance + 1 WHERE id <= 50;
DELETE FROM acct WHERE id > 190;
-- Past 1 MB of events: segments.
INSERT INTO acct SELECT g, repeat('x', 400), g, NULL FROM generate_series(1000, 4999) g;
SELECT audit_log.enable('acct', history => true, exclude_columns => '{meta}');
UPDATE acct SET owner = 'before upgrade' WHERE id = 7;
UPDATE acct SET id = 6006 WHERE id = 6;
SQL
    [ "$(q "$db" -c "SELECT extversion FROM pg_extension WHERE extname = 'audit_log'")" = "$old" ] || fail "$db did not install version $old"
    [ "$(q "$db" -c "SELECT count(*) FROM audit_log.segments")" -gt 0 ] || fail "$db: the large transaction spilled no segment"
    q "$db" -c "SELECT audit_log.checkpoint()" >"$work/cp.json"
    before=$(q "$db" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    [ "${before%% *}" = true ] || fail "$db: the log does not verify before the upgrade: $before"
    # This library wrote those events (the schema is $old's): as version 1
    # frames, which $old's views read; none starts with a packed frame's 0xA2.
    packed() { q "$db" -c "SELECT count(*) FROM audit_log.records WHERE octet_length(payload) > 0 AND get_byte(payload, 0) = 162"; }
    [ "$(packed)" = 0 ] || fail "$db: packed frames written under the $old schema, whose views cannot read them"
    # A prepared transaction committed before the update and linked after
    # it, by the first new commit: the old table has no last_event_hash, so
    # its events are hashed when it is linked.
    q "$db" -c "BEGIN" -c "INSERT INTO acct VALUES (8000, 'prepared before upgrade', 1, NULL)" \
        -c "PREPARE TRANSACTION 'up_$db'" -c "COMMIT PREPARED 'up_$db'"

    q "$db" -c "ALTER EXTENSION audit_log UPDATE"
    [ "$(q "$db" -c "SELECT extversion FROM pg_extension WHERE extname = 'audit_log'")" = "$current" ] ||
        fail "$db: ALTER EXTENSION UPDATE did not reach $current"

    q "$db" -f "$here/lib/extension_schema.sql" >"$work/upgraded.schema"
    if ! diff -u "$work/fresh.schema" "$work/upgraded.schema" >"$work/schema.diff"; then
        head -60 "$work/schema.diff" >&2
        fail "the schema upgraded from $old differs from a fresh install of $current (diff above: - fresh, + upgraded)"
    fi

    after=$(q "$db" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    [ "$after" = "$before" ] || fail "$db: after the upgrade verify() says '$after', before it said '$before'"
    against=$(q "$db" -c "SELECT ok FROM audit_log.verify('$(cat "$work/cp.json")'::jsonb)")
    [ "$against" = t ] || fail "$db: the log does not extend the checkpoint taken before the upgrade"

    # New writes chain on from the old heads; the first links the prepared
    # transaction too.
    [ "$(q "$db" -c "SELECT count(*) || ' ' || bool_and(last_event_hash IS NULL) FROM audit_log.prepared")" = "1 true" ] ||
        fail "$db: the prepared transaction's row after the update: $(q "$db" -c "SELECT first_event, last_event_hash FROM audit_log.prepared")"
    heads_before=$(q "$db" -c "SELECT coalesce(sum(seq), 0) FROM (SELECT max(seq) AS seq FROM audit_log.records GROUP BY chain_id) h")
    q "$db" -c "INSERT INTO acct VALUES (9000, 'after upgrade', 1, '{}')" -c "UPDATE acct SET owner = 'after upgrade' WHERE id = 7"
    heads_after=$(q "$db" -c "SELECT coalesce(sum(seq), 0) FROM (SELECT max(seq) AS seq FROM audit_log.records GROUP BY chain_id) h")
    [ "$heads_after" -eq $((heads_before + 3)) ] || fail "$db: two new transactions and the prepared one moved the chain heads by $((heads_after - heads_before)), not 3"
    [ "$(q "$db" -c "SELECT count(*) FROM audit_log.prepared")" = 0 ] || fail "$db: the prepared transaction was not linked"
    now=$(q "$db" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    [ "$now" = "true $(( ${before#* } + 3 ))" ] || fail "$db: after new writes verify() says '$now' (before: '$before')"
    # The two new transactions are packed; the prepared one was sealed before.
    [ "$(packed)" = 2 ] || fail "$db: $(packed) records of packed frames after the update, not the 2 new transactions"
    [ "$(q "$db" -c "SELECT ok FROM audit_log.verify('$(cat "$work/cp.json")'::jsonb)")" = t ] ||
        fail "$db: the log with new writes does not extend the pre-upgrade checkpoint"
    hist=$(q "$db" -c "SELECT string_agg(coalesce(new_row->>'owner', '-'), ',' ORDER BY event_id) FROM audit_log.history('acct', '{\"id\": 7}')")
    [ "$hist" = "owner 7,owner 7,before upgrade,after upgrade" ] || fail "$db: history() across the upgrade reads '$hist'"
    # Offline: the CLI on a records export, and the Python implementation on the raw storage.
    "$cli" export --dsn "host=$PGHOST port=$PGPORT user=postgres dbname=$db" --format records --out "$work/up.jsonl" 2>/dev/null
    out=$("$cli" verify "$work/up.jsonl" --checkpoint "$work/cp.json" 2>&1) || fail "$db: the CLI refuses the upgraded log: $out"
    grep -q "events checked: ${now#* }," <<<"$out" || fail "$db: the CLI checked other than the server's ${now#* } events: $out"
    q "$db" -f "$here/lib/dump_log.sql" >"$work/dump.jsonl"
    out=$(python3 "$here/lib/format_v2.py" verify <"$work/dump.jsonl" 2>&1) || fail "$db: format_v2.py refuses the upgraded log: $out"
    # The old log gets its Merkle trees: every chain, from its first record;
    # an event written before the upgrade proves, in the CLI and in Python.
    q "$db" -c "SELECT audit_log.checkpoint()" >"$work/cp2.json"
    [ "$(q "$db" -c "SELECT jsonb_array_length(pg_read_file('$work/cp2.json')::jsonb->'trees') = jsonb_array_length(pg_read_file('$work/cp2.json')::jsonb->'chains')")" = t ] ||
        fail "$db: the checkpoint after the upgrade lacks trees"
    out=$(python3 "$here/lib/format_v2.py" trees "$work/cp2.json" <"$work/dump.jsonl" 2>&1) || fail "$db: the trees do not recompute: $out"
    "$cli" prove --dsn "host=$PGHOST port=$PGPORT user=postgres dbname=$db" --event 5 --checkpoint "$work/cp2.json" \
        --out "$work/p5.json" 2>/dev/null || fail "$db: no proof of event 5 after the upgrade"
    out=$(python3 "$here/lib/format_v2.py" proof "$work/p5.json" "$work/cp2.json" 2>&1) || fail "$db: the proof does not hold: $out"
    # The old index entries filed a key change under the old key only: the
    # update marks the table, history() finds that change by content, and
    # index_history() files it, clears the mark, and changes no result.
    moved_q="SELECT string_agg(op || ':' || coalesce(old_row->>'id', '-') || '>' || coalesce(new_row->>'id', '-'), ',' ORDER BY event_id) FROM audit_log.history('acct', '{\"id\": 6006}')"
    [ "$(q "$db" -c "SELECT history_since IS NOT NULL FROM audit_log.audited_tables WHERE relid = 'acct'::regclass")" = t ] ||
        fail "$db: the update did not mark acct's history() index as incomplete"
    moved=$(q "$db" -c "$moved_q")
    [ "$moved" = "UPDATE:6>6006" ] || fail "$db: history() of the new key of a row moved before the upgrade reads '$moved'"
    # (This library wrote the old schema's entries, both keys included; a
    # 0.2.0 library wrote the old key's only.)
    added=$(q "$db" -c "SELECT audit_log.index_history('acct')")
    [ "$added" -ge 0 ] || fail "$db: index_history() returned '$added'"
    [ "$(q "$db" -c "SELECT count(*) FROM audit_log.row_keys WHERE row_key = audit_log.row_key_of('acct', '{\"id\": 6006}')")" -ge 1 ] ||
        fail "$db: after index_history() the index holds no entry for the moved row's new key"
    [ "$(q "$db" -c "SELECT history_since IS NULL FROM audit_log.audited_tables WHERE relid = 'acct'::regclass")" = t ] ||
        fail "$db: index_history() left the mark"
    [ "$(q "$db" -c "$moved_q")" = "$moved" ] || fail "$db: after index_history() the moved row's history reads '$(q "$db" -c "$moved_q")'"
    hist2=$(q "$db" -c "SELECT string_agg(coalesce(new_row->>'owner', '-'), ',' ORDER BY event_id) FROM audit_log.history('acct', '{\"id\": 7}')")
    [ "$hist2" = "$hist" ] || fail "$db: after index_history() history() reads '$hist2', before '$hist'"

    upgrades=$((upgrades + 1))
    echo "  $old -> $current: schema as a fresh install; ${now#* } events verify (SQL, checkpoint, CLI, Python); writes chain on; trees built, an old event proves; history() marked, then indexed ($added entries added)"

    # The update run inside an audited transaction, between its events (one
    # row of them through to_jsonb): the transaction keeps the frames it
    # began with, the next one is packed, and all of it verifies.
    mix=${db}_mix
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $mix" -c "CREATE DATABASE $mix" 2>/dev/null
    q "$mix" <<SQL >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log VERSION '$old';
CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);
SELECT audit_log.enable('t');
BEGIN;
INSERT INTO t VALUES (1, 'a', 1.5);
ALTER EXTENSION audit_log UPDATE;
INSERT INTO t VALUES (2, 'b', 'NaN');
UPDATE t SET v = 'c' WHERE id = 1;
COMMIT;
INSERT INTO t VALUES (3, 'after', 3);
SQL
    [ "$(q "$mix" -c "SELECT extversion FROM pg_extension WHERE extname = 'audit_log'")" = "$current" ] ||
        fail "$mix: ALTER EXTENSION UPDATE in an audited transaction did not reach $current"
    [ "$(q "$mix" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")" = "true 5" ] ||
        fail "$mix: after an update inside an audited transaction verify() says $(q "$mix" -c "SELECT * FROM audit_log.verify()")"
    [ "$(q "$mix" -c "SELECT count(*) FROM audit_log.records WHERE get_byte(payload, 0) = 162")" = 1 ] ||
        fail "$mix: not only the transaction after the update is packed"
    rows=$(q "$mix" -c "SELECT string_agg(op || ' ' || new_row::text, '; ' ORDER BY id) FROM audit_log.events WHERE op <> 'ENABLE'")
    [ "$rows" = "$(q "$mix" -c "SELECT 'INSERT ' || jsonb_build_object('id', 1, 'v', 'a', 'n', 1.5)::text || '; INSERT ' ||
        jsonb_build_object('id', 2, 'v', 'b', 'n', 'NaN')::text || '; UPDATE ' || to_jsonb(t1)::text || '; INSERT ' || to_jsonb(t3)::text
        FROM t t1, t t3 WHERE t1.id = 1 AND t3.id = 3")" ] || fail "$mix: the events read back as: $rows"
    offline_ok "$mix"
    echo "  ALTER EXTENSION UPDATE inside an audited transaction: its events stay version 1, the next are packed; verify (SQL, CLI, Python)"

    # purge() between the library's update and ALTER EXTENSION UPDATE: the
    # schema is $old's (without Merkle tiles before 0.3.0), the library is
    # new. It removes the old links and anchors each chain as it should; then
    # the update, new writes and checkpoint() go on from there.
    pg=${db}_purge
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $pg" -c "CREATE DATABASE $pg" 2>/dev/null
    q "$pg" <<SQL >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log VERSION '$old';
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT audit_log.enable('t');
INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;
UPDATE t SET v = 'w' WHERE id <= 5;
DELETE FROM t WHERE id > 18;
INSERT INTO t VALUES (30, 'newest before the purge');
SQL
    old_tiles=$(q "$pg" -c "SELECT to_regclass('audit_log.tiles') IS NOT NULL")
    records_before=$(q "$pg" -c "SELECT count(*) FROM audit_log.records")
    events_before=$(q "$pg" -c "SELECT events_checked FROM audit_log.verify()")
    q "$pg" -c "SELECT audit_log.set_retention('0')" >/dev/null
    purged=$(q "$pg" -c "SELECT transactions || ' ' || events FROM audit_log.purge(now())")
    [ "${purged%% *}" -gt 0 ] || fail "$pg: purge() under the $old schema removed nothing: $purged"
    left=$(q "$pg" -c "SELECT count(*) FROM audit_log.records")
    [ "$left" -lt "$records_before" ] || fail "$pg: purge() said '$purged' but $left of $records_before records are left"
    # One session wrote it all, so one chain (its pid's) was purged.
    [ "$(q "$pg" -c "SELECT count(*) FROM audit_log.anchors")" = 1 ] || fail "$pg: purge() under the $old schema left anchors $(q "$pg" -c "SELECT string_agg(chain_id::text, ',') FROM audit_log.anchors"), not one"
    window=$(q "$pg" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    [ "${window%% *}" = true ] || fail "$pg: after purge() under the $old schema verify() says: $(q "$pg" -c "SELECT * FROM audit_log.verify()")"
    [ "${window#* }" -lt "$events_before" ] || fail "$pg: verify() checked ${window#* } events after the purge, $events_before before it"
    q "$pg" -c "ALTER EXTENSION audit_log UPDATE" -c "INSERT INTO t VALUES (40, 'after the update')"
    now=$(q "$pg" -c "SELECT ok || ' ' || events_checked FROM audit_log.verify()")
    [ "$now" = "true $(( ${window#* } + 1 ))" ] || fail "$pg: after the update and a new write verify() says '$now' (before the update: '$window')"
    # A chain that lost its first links before tiles were kept has no tree
    # (README, "Logs purged by 0.2.0"), which is no damage, so no warning;
    # every other chain has one, and so does the purged one if $old kept
    # tiles (its purge integrated them first).
    purged_chain=$(q "$pg" -c "SELECT chain_id FROM audit_log.anchors")
    q "$pg" -c "SELECT audit_log.checkpoint()" >"$work/pcp.json" 2>"$work/pcp.err" ||
        fail "$pg: checkpoint() after the purge failed: $(cat "$work/pcp.err")"
    [ ! -s "$work/pcp.err" ] || fail "$pg: checkpoint() after the purge said: $(cat "$work/pcp.err")"
    [ "$(q "$pg" -c "SELECT jsonb_array_length(c->'trees') + CASE WHEN '$old_tiles'::boolean THEN 0 ELSE 1 END = jsonb_array_length(c->'chains')
                        AND ('$old_tiles'::boolean OR NOT EXISTS (SELECT FROM jsonb_array_elements(c->'trees') t WHERE (t->>'chain')::int = $purged_chain))
                     FROM (SELECT pg_read_file('$work/pcp.json')::jsonb AS c) s")" = t ] ||
        fail "$pg: the checkpoint after the purge has the wrong trees (purged chain $purged_chain, tiles under $old: $old_tiles): $(cat "$work/pcp.json")"
    [ "$(q "$pg" -c "SELECT ok FROM audit_log.verify('$(cat "$work/pcp.json")'::jsonb)")" = t ] ||
        fail "$pg: the log does not verify against its own checkpoint after the purge: $(q "$pg" -c "SELECT * FROM audit_log.verify('$(cat "$work/pcp.json")'::jsonb)")"
    offline_ok "$pg" "$work/pcp.json"
    echo "  purge() under the $old schema with this library: ${purged%% *} transactions of ${purged#* } events removed and anchored; after the update it verifies (SQL, checkpoint, CLI, Python); trees as documented"
done
[ "$upgrades" -gt 0 ] || fail "no upgrade tested"
echo "upgrade: $upgrades released version(s) upgrade in place to $current"

#!/usr/bin/env bash
# Merkle proofs against a live server, checked outside it by the CLI and by
# the independent pg_test/lib/format_v2.py: checkpoints and proofs taken
# while concurrent sessions commit (small, savepoint-rolled-back and spilled
# transactions), then every checkpoint verifies; random events proven to a
# signed checkpoint; every kind of edit of a proof refused; the witness's
# consistency mode extending, then refusing a chain a superuser recomputed;
# proofs and consistency after pg_dump and pg_restore into a new database
# and after an immediate shutdown in the middle of integration.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
[ -x "$cli" ] || { echo "FAIL: $cli not built (cargo build --release -p audit_log_cli)" >&2; exit 1; }
py="$here/lib/format_v2.py"
. "$here/lib/workload.sh"
dir=$PGHOST
BIN=$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)
work=$(mktemp -d /tmp/al_proofs.XXXXXX); chmod 755 "$work"
trap 'rm -rf "$work" "${WL_SCRIPT:-}"; kill $(jobs -p) 2>/dev/null || true' EXIT
run() { set +e; out=$("$cli" "$@" 2>&1); rc=$?; set -e; }
expect() { [ "$rc" = "$1" ] || wl_fail "$2: exit $rc, expected $1: $out"; }
pyrun() { set +e; out=$(python3 "$py" "$@" 2>&1); rc=$?; set -e; }
# verifies WHAT FILE...: each checkpoint file verifies against the log in SQL.
verifies() {
    local what=$1 f v; shift
    for f in "$@"; do
        v=$(wl_q -c "SELECT ok::text || ' ' || coalesce(problem, '') FROM audit_log.verify(pg_read_file('$f')::jsonb)")
        [ "$v" = "true " ] || wl_fail "$what does not verify: $v"
    done
}

wl_setup al_proofs_sc
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=$WL_DB"
wl_q -c "CREATE ROLE al_proofs_aud LOGIN" -c "GRANT audit_log_auditor TO al_proofs_aud" 2>/dev/null ||
    wl_q -c "GRANT audit_log_auditor TO al_proofs_aud"
aq() { psql -X -q -v ON_ERROR_STOP=1 -At -U al_proofs_aud -d "$WL_DB" "$@"; }
"$cli" keygen --out "$work/key" >/dev/null 2>&1
run witness --dsn "$dsn" --state "$work/w" --key "$work/key"; expect 0 "first witness run"

# 1. Load, with checkpoints and proofs taken by an auditor meanwhile. One
# transaction spills its events to segments (past 1 MB).
pgbench -n -c 4 -j 2 -T 8 -f "$WL_SCRIPT" "$WL_DB" >"$work/pgbench.out" 2>&1 & load=$!
wl_q -c "INSERT INTO t3 SELECT g, g FROM generate_series(100000, 125000) g"
n=0
while kill -0 $load 2>/dev/null; do
    aq -c "SELECT audit_log.checkpoint()" >"$work/cp_$n.json"
    aq -c "SELECT audit_log.prove(id) IS NOT NULL FROM audit_log.events ORDER BY random() LIMIT 3" >/dev/null
    n=$((n + 1))
    sleep 0.3
done
wait $load || wl_fail "pgbench: $(tail -3 "$work/pgbench.out")"
[ "$n" -ge 5 ] || wl_fail "only $n checkpoints during the load"
spilled=$(wl_q -c "SELECT count(*) FROM audit_log.records WHERE segments > 0")
[ "$spilled" -ge 1 ] || wl_fail "no transaction spilled"
verifies "a checkpoint taken during the load" "$work"/cp_*.json
cp_final="$work/cp_final.json"
wl_q -c "SELECT audit_log.checkpoint()" >"$cp_final"
wl_q -f "$here/lib/dump_log.sql" >"$work/dump.jsonl"
pyrun trees "$cp_final" <"$work/dump.jsonl"; expect 0 "format_v2.py trees"
trees=$(wl_q -c "SELECT jsonb_array_length(pg_read_file('$cp_final')::jsonb->'trees')")
records=$(wl_q -c "SELECT count(*) FROM audit_log.records")
echo "  $n checkpoints taken by an auditor during the load all verify; $trees trees over $records records recompute in Python"

# 2. The witness extends by consistency proofs; Python checks them too.
run witness --dsn "$dsn" --state "$work/w" --key "$work/key"; expect 0 "second witness run"
grep -q <<<"$out" "consistency proofs checked" || wl_fail "the witness did not use consistency proofs: $out"
wl_q -c "SELECT audit_log.consistency(pg_read_file('$work/cp_0.json')::jsonb)" >"$work/cons.json"
pyrun consistency "$work/cons.json" "$work/cp_0.json"; expect 0 "format_v2.py consistency"

# 3. Random events, a spilled one, and the first and last, proven to the
# witness's signed checkpoint, checked by the CLI and by Python.
signed="$work/w/latest.json"
ids=$(wl_q -c "(SELECT id FROM audit_log.events ORDER BY random() LIMIT 25)
               UNION SELECT min(id) FROM audit_log.events UNION SELECT max(id) FROM audit_log.events
               UNION (SELECT first_event + 5 FROM audit_log.records WHERE segments > 0 LIMIT 1)")
count=0
for id in $ids; do
    run prove --dsn "$dsn" --event "$id" --checkpoint "$signed" --pub "$work/key.pub" --out "$work/p_$id.json"
    if [ "$rc" = 2 ] && grep -q <<<"$out" "recorded after it"; then continue; fi
    expect 0 "prove $id"
    run verify-proof "$work/p_$id.json" --checkpoint "$signed" --pub "$work/key.pub"; expect 0 "verify-proof $id"
    [[ $(head -1 <<<"$out") == *"\"id\":$id,"* ]] || wl_fail "verify-proof did not print event $id: $out"
    pyrun proof "$work/p_$id.json" "$signed"; expect 0 "format_v2.py proof $id"
    count=$((count + 1))
done
[ "$count" -ge 20 ] || wl_fail "only $count events proven"
echo "  $count events proven to the witness's signed checkpoint, by the CLI and in Python"

# 4. Every kind of edit of a proof is refused by both.
# The newest event: its chain grew after the first checkpoints.
id=$(echo "$ids" | sort -n | tail -1)
[ -f "$work/p_$id.json" ] || wl_fail "no proof of the newest event $id"
edits=0
for edit in event_byte event_id prev tx_id seq committed count link path_step path_short path_long \
            event_path_long tree_size tree_root; do
    python3 - "$work/p_$id.json" "$work/bad.json" "$edit" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
e = sys.argv[3]
flip = lambda h: ("0" if h[0] != "0" else "1") + h[1:]
if e == "event_byte": p["event"] = p["event"][:-2] + ("00" if p["event"][-2:] != "00" else "01")
elif e == "event_id": p["event_id"] += 1
elif e == "prev": p["prev_event_hash"] = flip(p["prev_event_hash"])
elif e == "tx_id": p["record"]["tx_id"] += 1
elif e == "seq": p["record"]["seq"] += 1
elif e == "committed": p["record"]["committed_at"] += 1
elif e == "count": p["record"]["event_count"] += 1
elif e == "link": p["record"]["link_hash"] = flip(p["record"]["link_hash"])
elif e == "path_step": p["path"][0] = flip(p["path"][0])
elif e == "path_short": p["path"].pop()
elif e == "path_long": p["path"].append("00" * 32)
elif e == "event_path_long": p["event_path"].append("00" * 32)
elif e == "tree_size": p["tree"]["size"] -= 1
elif e == "tree_root": p["tree"]["root"] = flip(p["tree"]["root"])
json.dump(p, open(sys.argv[2], "w"))
PY
    run verify-proof "$work/bad.json" --checkpoint "$signed" --pub "$work/key.pub"; expect 1 "verify-proof of an edited proof ($edit)"
    pyrun proof "$work/bad.json" "$signed"; expect 1 "format_v2.py on an edited proof ($edit)"
    edits=$((edits + 1))
done
run verify-proof "$work/p_$id.json" --checkpoint "$cp_final" --pub "$work/key.pub"; expect 1 "an unsigned checkpoint with --pub"
"$cli" keygen --out "$work/other" >/dev/null 2>&1
run verify-proof "$work/p_$id.json" --checkpoint "$signed" --pub "$work/other.pub"; expect 1 "a checkpoint signed by another key"
run verify-proof "$work/p_$id.json" --checkpoint "$work/cp_0.json"; expect 1 "a proof against an earlier checkpoint's tree"
grep -q <<<"$out" "prove(event, checkpoint)\|has no tree" || wl_fail "no hint to prove against that checkpoint: $out"
echo "  $edits edits of a proof, another key, an unsigned checkpoint with --pub and another checkpoint are refused by the CLI and in Python"

# An auditor's transaction left open after checkpoint() (holding what it
# integrated) does not block another auditor's checkpoint().
( aq -c "BEGIN" -c "SELECT audit_log.checkpoint() IS NOT NULL" -c "SELECT pg_sleep(4)" -c "COMMIT" >/dev/null ) & idle=$!
sleep 1
PGOPTIONS="-c statement_timeout=2500" aq -c "SELECT audit_log.checkpoint() IS NOT NULL" >/dev/null ||
    wl_fail "a checkpoint waited for another auditor's open transaction"
wait $idle
echo "  an auditor's open transaction blocks no other checkpoint"

# 5. pg_dump and pg_restore into a new database: the tiles come along, and
# the restored log proves to the checkpoint signed before the dump.
pg_dump -Fc -d "$WL_DB" -f "$work/db.dump"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS al_proofs_rs" -c "CREATE DATABASE al_proofs_rs" 2>/dev/null
pg_restore -d al_proofs_rs "$work/db.dump" 2>"$work/restore.err" || wl_fail "pg_restore: $(cat "$work/restore.err")"
rdsn="host=$PGHOST port=$PGPORT user=postgres dbname=al_proofs_rs"
[ "$(psql -X -At -d al_proofs_rs -c "SELECT count(*) FROM audit_log.tiles")" = \
  "$(wl_q -c "SELECT count(*) FROM audit_log.tiles")" ] || wl_fail "the restore lost tiles"
run prove --dsn "$rdsn" --event "$id" --checkpoint "$signed" --pub "$work/key.pub" --out "$work/pr.json"; expect 0 "prove after a restore"
run verify-proof "$work/pr.json" --checkpoint "$signed" --pub "$work/key.pub"; expect 0 "verify-proof after a restore"
psql -X -At -d al_proofs_rs -c "INSERT INTO t1 VALUES (-1, 1)" \
     -c "SELECT audit_log.consistency(pg_read_file('$signed')::jsonb->'checkpoint')" | tail -1 >"$work/rcons.json"
pyrun consistency "$work/rcons.json" "$signed"; expect 0 "consistency after a restore"
psql -X -q -d postgres -c "DROP DATABASE al_proofs_rs"
echo "  after pg_dump and pg_restore into a new database: tiles kept, proofs and consistency hold"

# 6. A chain recomputed by a superuser after the witness signed: the
# witness (consistency mode, and --full) refuses and stores nothing; the
# forged event's proof is refused at the server.
before=$(sha256sum "$work/w/latest.json")
target=$(wl_q -c "SELECT min(id) FROM audit_log.events WHERE table_name = 't1'")
{ echo "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
  python3 "$py" rewrite "$target" '{"k": 1, "v": 424242}' --chain <"$work/dump.jsonl"
  echo "ALTER TABLE audit_log.records ENABLE TRIGGER USER; COMMIT;"; } >"$work/forge.sql"
wl_q -f "$work/forge.sql" >/dev/null
[ "$(wl_q -c "SELECT ok FROM audit_log.verify()")" = t ] || wl_fail "the recomputed chain should pass a plain verify()"
run witness --dsn "$dsn" --state "$work/w" --key "$work/key"; expect 1 "witness (consistency) after a recomputed chain"
grep -q <<<"$out" "rewritten" || wl_fail "the witness did not name the rewrite: $out"
run witness --dsn "$dsn" --state "$work/w" --key "$work/key" --full; expect 1 "witness --full after a recomputed chain"
[ "$(sha256sum "$work/w/latest.json")" = "$before" ] || wl_fail "the witness stored a checkpoint after refusing"
set +e; err=$(wl_q -c "SELECT audit_log.prove($target, pg_read_file('$signed')::jsonb->'checkpoint')" 2>&1); set -e
grep -q <<<"$err" "rewritten" || wl_fail "the forged event's proof to the signed checkpoint was not refused: $err"
# A proof to the forged tree itself does not verify against the signed checkpoint.
wl_q -c "SELECT audit_log.prove($target)" >"$work/forged.json"
run verify-proof "$work/forged.json" --checkpoint "$signed" --pub "$work/key.pub"; expect 1 "a proof of the forged tree"
pyrun proof "$work/forged.json" "$signed"; expect 1 "format_v2.py on a proof of the forged tree"
echo "  a recomputed chain: the witness refuses in both modes, the forged event proves to no signed tree"

# 7. An immediate shutdown while checkpoints integrate under load: after the
# restart, checkpoints verify and the trees recompute in Python.
rm -f "$WL_SCRIPT"
wl_setup al_proofs_cr
pgbench -n -c 4 -j 2 -T 30 -f "$WL_SCRIPT" "$WL_DB" >"$work/pgbench2.out" 2>&1 & load=$!
( while true; do psql -X -q -At -d "$WL_DB" -c "SELECT audit_log.checkpoint()" >/dev/null 2>&1 || true; done ) & looper=$!
sleep 3
runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
wait $load || true
kill $looper 2>/dev/null || true; wait $looper 2>/dev/null || true
runuser -u postgres -- env RUST_BACKTRACE=1 "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
wait_ready
wl_q -c "INSERT INTO t1 VALUES (-5, 1) ON CONFLICT DO NOTHING"
wl_q -c "SELECT audit_log.checkpoint()" >"$work/cp_crash.json"
verifies "after the crash, the checkpoint" "$work/cp_crash.json"
wl_q -f "$here/lib/dump_log.sql" >"$work/dump_crash.jsonl"
pyrun trees "$work/cp_crash.json" <"$work/dump_crash.jsonl"; expect 0 "format_v2.py trees after the crash"
tiles=$(wl_q -c "SELECT count(*) FROM audit_log.tiles")
echo "  an immediate shutdown during integration: $tiles tiles, the checkpoint after it verifies and recomputes in Python"

# 8. Purges during the load, beside checkpoints and proofs: every checkpoint
# verifies, and a proof is given or refused as purged (55000), never as
# damage.
wl_q -c "SELECT audit_log.set_retention('0')" >/dev/null
pgbench -n -c 3 -j 2 -T 8 -f "$WL_SCRIPT" "$WL_DB" >"$work/pgbench3.out" 2>&1 & load=$!
( while kill -0 $load 2>/dev/null; do
      wl_q -c "SELECT * FROM audit_log.purge(now() - interval '1 second')" >/dev/null 2>>"$work/purge.err"; sleep 0.5
  done ) & purger=$!
n=0
while kill -0 $load 2>/dev/null; do
    aq -c "SELECT audit_log.checkpoint()" >"$work/pcp_$n.json"
    set +e
    aq -v VERBOSITY=sqlstate -c "SELECT audit_log.prove(id) IS NOT NULL FROM (SELECT id FROM audit_log.events ORDER BY random() LIMIT 2) e" \
        >/dev/null 2>>"$work/prove.err"
    set -e
    n=$((n + 1))
done
wait $load || wl_fail "pgbench: $(tail -3 "$work/pgbench3.out")"
wait $purger || true
[ ! -s "$work/purge.err" ] || wl_fail "a purge failed: $(head -3 "$work/purge.err")"
[ "$(grep -v "ERROR:  55000" "$work/prove.err" | grep -c ERROR)" = 0 ] || wl_fail "prove() failed otherwise than purged: $(grep ERROR "$work/prove.err" | head -3)"
purged=$(wl_q -c "SELECT coalesce(sum(seq), 0) FROM audit_log.anchors")
[ "$purged" -gt 0 ] || wl_fail "the purges removed nothing"
verifies "a checkpoint taken beside purges" "$work"/pcp_*.json
echo "  $n checkpoints beside purges (of $purged records) all verify; proofs given or refused as purged"
# 9. A large backlog is integrated by one sequential scan of the records.
# It must store the tiles that reading each chain through its primary key
# stores. Three pairs of copies of one log, one of each integrated by the
# scan and the other through the primary key:
#  - f, g: 4 chains written concurrently (records lie out of order on
#    disk), a spilled transaction, a backlog behind integrated tiles (the
#    scan starts at a later page);
#  - a, b: then purges whose cuts lie in tiles (the purged leaves of the
#    cut tile come from the purge's partial tile), and VACUUMs that let
#    later records into the freed pages (the scan, from the first page,
#    meets them before their predecessors, and reads those through the
#    primary key);
#  - c, d: then a record edited in the backlog: both stop the chain there,
#    and the checkpoint leaves its tree out.
rm -f "$WL_SCRIPT"
wl_setup al_proofs_scan
psql -X -q -d postgres -c "ALTER DATABASE al_proofs_scan SET audit_log.chains = 4"
load() { pgbench -n -c 4 -j 2 -T "$1" -f "$WL_SCRIPT" "$WL_DB" >"$work/pgbench_scan.out" 2>&1 || wl_fail "pgbench: $(tail -3 "$work/pgbench_scan.out")"; }
# load_tx N: N transactions of each of the 4 clients, however fast the machine.
load_tx() { pgbench -n -c 4 -j 2 -t "$1" -f "$WL_SCRIPT" "$WL_DB" >"$work/pgbench_scan.out" 2>&1 || wl_fail "pgbench: $(tail -3 "$work/pgbench_scan.out")"; }
# purge_before N: purge the records committed before the Nth-last record's time.
purge_before() { wl_q -c "SELECT * FROM audit_log.purge((SELECT committed_at FROM audit_log.records ORDER BY committed_at DESC OFFSET $1 LIMIT 1))" >/dev/null; }
copy() { psql -X -q -d postgres -c "CREATE DATABASE al_proofs_$2 TEMPLATE al_proofs_$1"; }
wl_q -c "SELECT audit_log.set_retention('0')" >/dev/null
load 3 & l=$!; wl_q -c "INSERT INTO t3 SELECT g, g FROM generate_series(200000, 225000) g"; wait $l
wl_q -c "SELECT audit_log.checkpoint()" >/dev/null
load 3
copy scan scan_f; copy scan scan_g
purge_before $(( $(wl_q -c "SELECT count(*) FROM audit_log.records") / 2 ))
wl_q -c "VACUUM audit_log.records"
# The purge below frees the pages of these records for the later ones:
# enough of them (counted, not timed) that a chain holds back more than
# 1,024 records ahead of its predecessors, which makes the scan read those
# through the primary key. 3 s of load freed room for about 880 a chain on
# a slow machine.
load_tx 2000
purge_before 300
wl_q -c "VACUUM audit_log.records"
load_tx 2500
copy scan scan_a; copy scan scan_b; copy scan scan_e
# The edit: the longest chain's record 300 before its head, in a copy that
# the pair is copied from (the edit's own DDL is logged).
read -r edited edited_seq <<<"$(wl_q -F ' ' -c "SELECT chain_id, max(seq) - 300 FROM audit_log.records GROUP BY 1 ORDER BY 2 DESC LIMIT 1")"
psql -X -q -v ON_ERROR_STOP=1 -d al_proofs_scan_e <<SQL
ALTER TABLE audit_log.records DISABLE TRIGGER USER;
UPDATE audit_log.records SET payload = overlay(payload PLACING '\x00' FROM length(payload) - 1)
 WHERE chain_id = $edited AND seq = $edited_seq;
ALTER TABLE audit_log.records ENABLE TRIGGER USER;
SQL
copy scan_e scan_c; copy scan_e scan_d
# Every tile, one line each, sorted.
tiles_of() { psql -X -q -At -d "$1" -c "SELECT format('%s/%s/%s/%s/%s/%s', chain_id, level, idx, width, encode(hashes, 'hex'), encode(root, 'hex')) FROM audit_log.tiles" | LC_ALL=C sort; }
trees_of() { python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['trees'], sort_keys=True))" "$1"; }
for pair in "scan_f scan_g" "scan_a scan_b" "scan_c scan_d"; do
    set -- $pair
    psql -X -q -At -d al_proofs_$1 -c "SET audit_log.integration_scan_leaves = 1" -c "SET client_min_messages = debug1" \
        -c "SELECT audit_log.checkpoint()" >"$work/cp_$1.json" 2>"$work/scan_$1.log"
    psql -X -q -At -d al_proofs_$2 -c "SET audit_log.integration_scan_leaves = -1" -c "SET client_min_messages = debug1" \
        -c "SELECT audit_log.checkpoint()" >"$work/cp_$2.json" 2>"$work/scan_$2.log"
    ! grep -q "by one sequential scan" "$work/scan_$2.log" || wl_fail "$2: integrated by a scan with the scan off"
    # What the scan did: leaves, chains, first page, held back, read through
    # the primary key, chains left to it.
    read -r leaves chains page held fetched left <<<"$(sed -n 's/.*DEBUG:  audit_log: integrated \([0-9]*\) leaves of \([0-9]*\) chain(s) by one sequential scan from page \([0-9]*\); at most \([0-9]*\) record(s) held back, \([0-9]*\) read through the primary key; \([0-9]*\) chain(s) left.*/\1 \2 \3 \4 \5 \6/p' "$work/scan_$1.log")"
    [ "${leaves:-0}" -gt 0 ] && [ "$chains" = 4 ] || wl_fail "$1: the scan did not integrate 4 chains: $(cat "$work/scan_$1.log")"
    case $1 in
    scan_f) [ "$page" -gt 0 ] && [ "$left" = 0 ] || wl_fail "scan_f: expected a scan from a later page, no chain left: $(cat "$work/scan_$1.log")" ;;
    scan_a) [ "$page" = 0 ] && [ "$held" -gt 0 ] && [ "$fetched" -gt 0 ] && [ "$left" = 0 ] ||
                wl_fail "scan_a: expected a scan from page 0, records held back and read through the primary key, no chain left: $(cat "$work/scan_$1.log")" ;;
    scan_c) [ "$left" = 1 ] || wl_fail "scan_c: expected the edited chain left to the primary key: $(cat "$work/scan_$1.log")" ;;
    esac
    tiles_of al_proofs_$1 >"$work/tiles_$1"; tiles_of al_proofs_$2 >"$work/tiles_$2"
    [ -s "$work/tiles_$1" ] || wl_fail "$1: no tiles"
    # Every tile the primary key stored, the scan stored alike.
    [ -z "$(LC_ALL=C comm -13 "$work/tiles_$1" "$work/tiles_$2")" ] ||
        wl_fail "$1 and $2: tiles of the primary key's that the scan did not store alike: $(LC_ALL=C comm -13 "$work/tiles_$1" "$work/tiles_$2" | cut -c1-40 | head -3)"
    # And no other, but where a record was edited: there the scan keeps the
    # complete level-0 tiles before it, which the primary key drops with the
    # rest of the run of tiles it was reading.
    LC_ALL=C comm -23 "$work/tiles_$1" "$work/tiles_$2" >"$work/extra_$1"
    extra=$(wc -l <"$work/extra_$1")
    if [ "$1" = scan_c ]; then
        awk -F/ -v c="$edited" -v t=$(( (edited_seq - 1) / 256 )) '$1 != c || $2 != 0 || $3 >= t { bad = 1 } END { exit bad }' "$work/extra_$1" ||
            wl_fail "scan_c: a tile beyond the primary key's that is not before the edited record: $(cut -c1-40 "$work/extra_$1" | head -3)"
    elif [ "$extra" != 0 ]; then
        wl_fail "$1: $extra tiles the primary key did not store"
    fi
    [ "$(trees_of "$work/cp_$1.json")" = "$(trees_of "$work/cp_$2.json")" ] ||
        wl_fail "$1 and $2: the checkpoints' trees differ: $(trees_of "$work/cp_$1.json") against $(trees_of "$work/cp_$2.json")"
    echo "  $1: $leaves leaves of $chains chains from page $page, at most $held held back, $fetched read through the primary key, $left chain(s) left to it; $(wc -l <"$work/tiles_$1") tiles, $extra more than the primary key's"
done
has_tree() { python3 -c "import json,sys; sys.exit(0 if any(t['chain'] == int(sys.argv[2]) for t in json.load(open(sys.argv[1]))['trees']) else 1)" "$1" "$2"; }
has_tree "$work/cp_scan_a.json" "$edited" || wl_fail "the intact log has no tree for chain $edited"
! has_tree "$work/cp_scan_c.json" "$edited" || wl_fail "chain $edited has a tree despite its edited record"
grep -q "WARNING.*chain $edited has no tree" "$work/scan_scan_c.log" || wl_fail "no warning for the edited chain: $(cat "$work/scan_scan_c.log")"
for db in scan_f scan_a; do
    WL_DB=al_proofs_$db verifies "the scan's checkpoint ($db)" "$work/cp_$db.json"
    # Python checks the trees through proofs (the log in a was purged):
    # random events, and the first and last left, to the scan's checkpoint.
    ids=$(psql -X -q -At -d al_proofs_$db -c "(SELECT id FROM audit_log.events ORDER BY random() LIMIT 15)
            UNION SELECT min(id) FROM audit_log.events UNION SELECT max(id) FROM audit_log.events")
    for id in $ids; do
        psql -X -q -At -d al_proofs_$db -c "SELECT audit_log.prove($id, pg_read_file('$work/cp_$db.json')::jsonb)" >"$work/sp_$id.json"
        pyrun proof "$work/sp_$id.json" "$work/cp_$db.json"; expect 0 "format_v2.py: event $id's proof to the scan's checkpoint ($db)"
        run verify-proof "$work/sp_$id.json" --checkpoint "$work/cp_$db.json"; expect 0 "verify-proof: event $id's proof to the scan's checkpoint ($db)"
    done
done
for db in scan scan_a scan_b scan_c scan_d scan_e scan_f scan_g; do psql -X -q -d postgres -c "DROP DATABASE al_proofs_$db"; done
echo "  a backlog integrated by one sequential scan: the same tiles as through the primary key, from a later page, after purges and with an edited record"
psql -X -q -d postgres -c "DROP DATABASE al_proofs_cr" -c "DROP DATABASE al_proofs_sc" -c "DROP ROLE al_proofs_aud"
echo "merkle: checkpoints under load, proofs, edits, the witness, a restore and a crash behave"

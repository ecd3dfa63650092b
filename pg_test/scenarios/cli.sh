#!/usr/bin/env bash
# The audit-log CLI against a live server: export, offline verification that
# agrees with the SQL verify(), tampering of an export (an edited byte, a
# deleted line, two lines swapped, a dropped tail against a checkpoint),
# continuation exports, signed checkpoints and a forged signature, the
# records export (--format records) and the binary export (--format binary)
# checked by the CLI and by the independent pg_test/lib/format_v2.py, and the witness catching a chain a superuser
# recomputed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
[ -x "$cli" ] || { echo "FAIL: $cli not built (cargo build --release -p audit_log_cli)" >&2; exit 1; }
db=al_cli
q() { psql -X -q -v ON_ERROR_STOP=1 -At -d $db "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d /tmp/al_cli.XXXXXX); chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=$db"
# run CMD...: its output in $out, its exit code in $rc
run() { set +e; out=$("$cli" "$@" 2>&1); rc=$?; set -e; }
expect() { # expect CODE WHAT
    [ "$rc" = "$1" ] || fail "$2: exit $rc, expected $1: $out"; }

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
psql -X -q -d postgres -c "ALTER DATABASE $db SET audit_log.chains = 1"
q <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric, tags text[], meta jsonb);
SELECT audit_log.enable('acct');
INSERT INTO acct VALUES (1, 'Zoë ✓', 100.50, '{a,b}', '{"tier": "gold", "n": 1.50}'),
                        (2, E'quote " and \\ backslash', -0.000001, '{}', 'null'),
                        (3, NULL, 1e20, NULL, '[1, {"x": []}]');
UPDATE acct SET balance = balance - 10 WHERE id = 1;
DELETE FROM acct WHERE id = 3;
INSERT INTO acct (id, owner, balance) SELECT g, 'owner ' || g, g * 1.25 FROM generate_series(4, 60) g;
SQL
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -d $db -c "UPDATE acct SET owner = 'over tcp' WHERE id = 4"

# Export, then verify offline: it must agree with the server.
run keygen --out "$work/key"; expect 0 keygen
run checkpoint --dsn "$dsn" --key "$work/key" --out "$work/cp1.json"; expect 0 checkpoint
run export --dsn "$dsn" --out "$work/e1.jsonl"; expect 0 export
run verify "$work/e1.jsonl" --checkpoint "$work/cp1.json" --pub "$work/key.pub"; expect 0 "verify of an untouched export"
sql_checked=$(q -c "SELECT events_checked FROM audit_log.verify()")
grep -q <<<"$out" "events checked: $sql_checked," || fail "offline verify checked other than the server's $sql_checked events: $out"
grep -q <<<"$out" "the log extends the checkpoint" || fail "no checkpoint proof: $out"
echo "  export of $sql_checked events verifies offline, against a signed checkpoint too"

# Tampering with the export. fix_end rewrites the end line to match the edited
# body (of a logical or a records export), as an attacker would, so that only
# the hashes can tell.
fix_end() { python3 - "$1" <<'PY'
import hashlib, json, sys
path = sys.argv[1]
lines = open(path, 'rb').read().splitlines(keepends=True)
body = [l for l in lines if not l.startswith(b'{"type":"end"')]
heads, ev, lk = {}, 0, 0
for l in body:
    if l.startswith(b'{"type":"header"'):
        heads = {a["chain"]: a for a in json.loads(l)["anchors"]}
    if l.startswith(b'{"type":"event"'): ev += 1
    # A records export: each record line is a link of event_count events.
    if l.startswith(b'{"type":"link"') or l.startswith(b'{"type":"record"'):
        lk += 1; r = json.loads(l)
        if l.startswith(b'{"type":"record"'): ev += r["event_count"]
        heads[r["chain_id"]] = {"chain": r["chain_id"], "seq": r["seq"], "link_hash": r["link_hash"], "last_event": r["last_event"]}
end = {"type": "end", "events": ev, "links": lk, "heads": [heads[c] for c in sorted(heads)],
       "sha256": hashlib.sha256(b"".join(body)).hexdigest()}
open(path, 'wb').write(b"".join(body) + json.dumps(end, separators=(",", ":")).encode() + b"\n")
PY
}
tamper() { # tamper NAME PYTHON-EXPRESSION-ON-lines
    python3 - "$work/e1.jsonl" "$work/$1.jsonl" "$2" <<'PY'
import sys
src, dst, expr = sys.argv[1:4]
lines = open(src, 'rb').read().splitlines(keepends=True)
events = [i for i, l in enumerate(lines) if l.startswith(b'{"type":"event"')]
links = [i for i, l in enumerate(lines) if l.startswith(b'{"type":"link"')]
exec(expr)
open(dst, 'wb').writelines(lines)
PY
}
# One byte of a field: the balance 100.50 becomes 900.50 in the first event.
tamper byte 'i = next(i for i in events if b"100.50" in lines[i]); lines[i] = lines[i].replace(b"100.50", b"900.50", 1)'
first=$(grep -m1 '"type":"event".*900\.50' "$work/byte.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
run verify "$work/byte.jsonl"; expect 1 "an edited byte"
fix_end "$work/byte.jsonl"
run verify "$work/byte.jsonl"; expect 1 "an edited byte with the end line rewritten"
grep -q <<<"$out" "first bad event: $first" || fail "edited event $first not named: $out"
grep -q <<<"$out" "problem: content_changed" || fail "edit not reported as content_changed: $out"
for t in "delete:del lines[events[len(events) // 2]]" \
         "swap:a, b = events[3], events[10]; lines[a], lines[b] = lines[b], lines[a]" \
         "swaplink:a, b = links[0], links[1]; lines[a], lines[b] = lines[b], lines[a]" \
         "hash:i = links[-1]; lines[i] = lines[i][:-4] + (b'0' if lines[i][-4:-3] != b'0' else b'1') + lines[i][-3:]"; do
    name=${t%%:*}
    tamper "$name" "${t#*:}"
    run verify "$work/$name.jsonl"; expect 1 "tampering '$name'"
    fix_end "$work/$name.jsonl"
    run verify "$work/$name.jsonl"; expect 1 "tampering '$name' with the end line rewritten"
done
# The tail: the last transaction's events and link gone. Consistent in itself,
# so only the checkpoint can tell.
tamper tail 'last = lines[links[-1]]
import json
tx = json.loads(last)["tx_id"]
lines[:] = [l for l in lines if not (l.startswith(b"{\"type\":\"event\"") or l.startswith(b"{\"type\":\"link\"")) or json.loads(l)["tx_id"] != tx]'
fix_end "$work/tail.jsonl"
run verify "$work/tail.jsonl"; expect 0 "a consistent prefix, with no checkpoint"
run verify "$work/tail.jsonl" --checkpoint "$work/cp1.json" --pub "$work/key.pub"; expect 1 "a dropped tail against the checkpoint"
grep -q <<<"$out" "truncated" || fail "dropped tail not reported as truncated: $out"
echo "  an edited byte, a deleted line, swapped lines, a changed hash and a dropped tail are all detected"

# The offline verdict names the same first bad event as the server's, for a
# change made in the database itself.
bad=$(q -c "SELECT id FROM audit_log.events WHERE op = 'UPDATE' ORDER BY id LIMIT 1")
psql -X -q -d postgres -c "CREATE DATABASE al_cli_bad TEMPLATE $db"
# (The UPDATE's op, in the stored bytes of its record, becomes DELETE.)
q -d al_cli_bad -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
    -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'), encode('UPDATE', 'hex'), encode('DELETE', 'hex')), 'hex') WHERE $bad BETWEEN first_event AND last_event" \
    -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER"
server=$(q -d al_cli_bad -c "SELECT first_bad_event || ' ' || split_part(problem, ':', 1) FROM audit_log.verify()")
run export --dsn "host=$PGHOST port=$PGPORT user=postgres dbname=al_cli_bad" --out "$work/bad.jsonl"; expect 0 "export of a tampered log"
run verify "$work/bad.jsonl"; expect 1 "a log tampered in the database"
offline="$(echo "$out" | sed -n 's/^first bad event: //p') $(echo "$out" | sed -n 's/^problem: \([a-z_]*\):.*/\1/p')"
[ "$offline" = "$server" ] || fail "offline says '$offline', the server says '$server'"
psql -X -q -d postgres -c "DROP DATABASE al_cli_bad"
echo "  offline and server verify agree on a log edited in the database: $server"

# Continuation exports.
q -c "UPDATE acct SET balance = balance + 1 WHERE id < 20" -c "INSERT INTO acct (id) VALUES (1000)"
run export --dsn "$dsn" --since "$work/e1.jsonl" --out "$work/e2.jsonl"; expect 0 "export --since"
want=$(( $(q -c "SELECT count(*) FROM audit_log.events") - $(grep -c '"type":"event"' "$work/e1.jsonl") ))
[ "$(grep -c '"type":"event"' "$work/e2.jsonl")" = "$want" ] || fail "the continuation holds $(grep -c '"type":"event"' "$work/e2.jsonl") events, expected $want"
run verify "$work/e1.jsonl" "$work/e2.jsonl"; expect 0 "an export and its continuation"
run verify "$work/e2.jsonl"; expect 1 "a continuation on its own"
run verify "$work/byte.jsonl" "$work/e2.jsonl"; expect 1 "a continuation after a tampered export"
echo "  a continuation verifies after the export it continues, and not alone"

# The records export (audit_log.export.v2): each transaction's stored record,
# its payload and segments in base64. The CLI and the independent format_v2.py
# both verify it, and agree with the server and with the logical export.
py="python3 $here/lib/format_v2.py"
# pyverify FILE: format_v2.py verify < FILE, its output in $out, its exit code in $rc
pyverify() { set +e; out=$($py verify <"$1" 2>&1); rc=$?; set -e; }
counts() { echo "$out" | grep -o 'events checked: [0-9]*, links checked: [0-9]*' || true; }
server_counts() { echo "events checked: $(q -c "SELECT events_checked FROM audit_log.verify()"), links checked: $(q -c "SELECT count(*) FROM audit_log.records")"; }
records_in() { grep -c '^{"type":"record",' "$1" || true; }
run export --dsn "$dsn" --format records --out "$work/r1.jsonl"; expect 0 "records export"
head -1 "$work/r1.jsonl" | grep -q '^{"type":"header","format":"audit_log.export.v2",' ||
    fail "the records export's header: $(head -1 "$work/r1.jsonl" | cut -c1-200)"
run export --dsn "$dsn" --out "$work/l1.jsonl"; expect 0 "logical export of the same log"
run verify "$work/r1.jsonl"; expect 0 "verify of an untouched records export"
r_counts=$(counts)
[ "$r_counts" = "$(server_counts)" ] || fail "the records export verifies '$r_counts', the server '$(server_counts)'"
[ "$(records_in "$work/r1.jsonl")" = "$(q -c "SELECT count(*) FROM audit_log.records")" ] ||
    fail "the records export holds $(records_in "$work/r1.jsonl") record lines, the server $(q -c "SELECT count(*) FROM audit_log.records") records"
run verify "$work/l1.jsonl"; expect 0 "verify of the logical export of the same log"
[ "$r_counts" = "$(counts)" ] || fail "the records export verifies '$r_counts', the logical export '$(counts)'"
pyverify "$work/r1.jsonl"; expect 0 "format_v2.py on an untouched records export"
[ "$out" = "independent verifier: $(q -c "SELECT events_checked FROM audit_log.verify()") events and $(records_in "$work/r1.jsonl") records of the records export recompute" ] ||
    fail "format_v2.py on the records export, unlike the server: $out"
# A continuation after more writes, against a checkpoint taken between them.
q -c "UPDATE acct SET balance = balance * 2 WHERE id BETWEEN 20 AND 30" -c "INSERT INTO acct (id, owner) VALUES (3000, 'records')"
run checkpoint --dsn "$dsn" --key "$work/key" --out "$work/cp2.json"; expect 0 "checkpoint before the records continuation"
q -c "DELETE FROM acct WHERE id = 3000"
run export --dsn "$dsn" --format records --since "$work/r1.jsonl" --out "$work/r2.jsonl"; expect 0 "records export --since"
head -1 "$work/r2.jsonl" | grep -q '"continues":true' || fail "the records continuation is not marked as one"
want=$(( $(q -c "SELECT count(*) FROM audit_log.records") - $(records_in "$work/r1.jsonl") ))
[ "$(records_in "$work/r2.jsonl")" = "$want" ] && [ "$want" -ge 3 ] ||
    fail "the records continuation holds $(records_in "$work/r2.jsonl") records, expected $want (at least 3)"
run verify "$work/r1.jsonl" "$work/r2.jsonl"; expect 0 "a records export and its continuation"
[ "$(counts)" = "$(server_counts)" ] || fail "a records export and its continuation verify '$(counts)', the server '$(server_counts)'"
run verify "$work/r1.jsonl" "$work/r2.jsonl" --checkpoint "$work/cp2.json" --pub "$work/key.pub"; expect 0 "records exports against the checkpoint"
grep -q <<<"$out" "the log extends the checkpoint" || fail "no checkpoint proof for the records exports: $out"
run verify "$work/r1.jsonl" --checkpoint "$work/cp2.json" --pub "$work/key.pub"; expect 1 "a records export that ends before the checkpoint"
grep -q <<<"$out" "truncated" || fail "a records export short of the checkpoint not reported as truncated: $out"
run verify "$work/r2.jsonl"; expect 1 "a records continuation on its own"
pyverify "$work/r2.jsonl"; expect 0 "format_v2.py on the records continuation, from its anchors"
# Formats mixed: e2, the logical continuation of e1, does not continue the
# records export r1 (of a later log), nor does r2 the logical e1.
run verify "$work/r1.jsonl" "$work/e2.jsonl"; expect 1 "a logical continuation after a records export it does not continue"
grep -q <<<"$out" "does not continue the file before it" || fail "the mixed files not reported as discontinuous: $out"
run verify "$work/e1.jsonl" "$work/r2.jsonl"; expect 1 "a records continuation after a logical export it does not continue"
grep -q <<<"$out" "does not continue the file before it" || fail "the mixed files not reported as discontinuous: $out"
# Tampering with the records export: the CLI and format_v2.py both refuse it,
# before and after the end line is rewritten to match (fix_end).
tamper_records() { # tamper_records NAME PYTHON-EXPRESSION-ON-lines
    python3 - "$work/r1.jsonl" "$work/$1.jsonl" "$2" <<'PY'
import base64, json, sys
src, dst, expr = sys.argv[1:4]
lines = open(src, 'rb').read().splitlines(keepends=True)
records = [i for i, l in enumerate(lines) if l.startswith(b'{"type":"record"')]
exec(expr)
open(dst, 'wb').writelines(lines)
PY
}
refused() { # refused NAME WHAT: `audit-log verify` (its output kept in $cli_out) and format_v2.py exit 1
    run verify "$work/$1.jsonl"; expect 1 "$2"
    cli_out=$out
    pyverify "$work/$1.jsonl"; expect 1 "format_v2.py on $2"
}
# (a) One byte of a row value in a payload: the balance 100.50 becomes 900.50
# in the first record that holds it (its INSERT), decoded and re-encoded.
tamper_records rbyte 'i = next(i for i in records if b"100.50" in base64.b64decode(json.loads(lines[i])["payload"]))
old = json.loads(lines[i])["payload"].encode()
new = base64.b64encode(base64.b64decode(old).replace(b"100.50", b"900.50", 1))
assert new != old and lines[i].count(old) == 1
lines[i] = lines[i].replace(old, new)'
first=$(python3 -c 'import base64, json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["type"] == "record" and b"900.50" in base64.b64decode(r["payload"]): print(r["first_event"]); break' "$work/rbyte.jsonl")
[ -n "$first" ] || fail "no edited payload in rbyte.jsonl"
refused rbyte "a byte edited in a payload"
fix_end "$work/rbyte.jsonl"
refused rbyte "a byte edited in a payload, with the end line rewritten"
! grep -q <<<"$cli_out" "file problem" || fail "the rewritten end line should leave only the chain to tell: $cli_out"
grep -q <<<"$cli_out" "first bad event: $first" || fail "the edited record (first event $first) not named: $cli_out"
grep -q <<<"$cli_out" "problem: content_changed" || fail "the edited payload not reported as content_changed: $cli_out"
grep -q <<<"$out" "events $first\.\..*(content_changed)" || fail "format_v2.py did not name the edited record (first event $first): $out"
# (b) A record line deleted, from the middle of the chain.
tamper_records rdelete 'del lines[records[len(records) // 2]]'
refused rdelete "a record line deleted"
fix_end "$work/rdelete.jsonl"
refused rdelete "a record line deleted, with the end line rewritten"
! grep -q <<<"$cli_out" "file problem" || fail "the rewritten end line should leave only the chain to tell: $cli_out"
grep -q <<<"$cli_out" "link_missing" || fail "the deleted record not reported as link_missing: $cli_out"
grep -q <<<"$out" "(link_missing)" || fail "format_v2.py on the deleted record: $out"
# (c) Two record lines swapped.
tamper_records rswap 'a, b = records[1], records[-2]; lines[a], lines[b] = lines[b], lines[a]'
refused rswap "two record lines swapped"
fix_end "$work/rswap.jsonl"
refused rswap "two record lines swapped, with the end line rewritten"
grep -q <<<"$cli_out" "out of (chain_id, seq) order" || fail "the swapped records not reported out of order: $cli_out"
grep -q <<<"$out" "out of (chain_id, seq) order" || fail "format_v2.py on the swapped records: $out"
echo "  records export: $r_counts as the server and the logical export, by format_v2.py too; its continuation verifies, against a checkpoint too; an edited payload byte, a deleted record, swapped records and mixed files that do not continue each other are refused"

# The binary export (audit_log.export.v3): the same records in frames, larger
# payloads compressed. Transactions large enough to spill segments and be
# compressed join the log first.
q -c "INSERT INTO acct (id, owner, meta) SELECT g, repeat('big ', 300), jsonb_build_object('n', g, 'pad', repeat('x', 1500)) FROM generate_series(10000, 11500) g" \
  -c "UPDATE acct SET meta = meta || '{\"again\": true}' WHERE id BETWEEN 10000 AND 10800"
[ "$(q -c "SELECT count(*) FROM audit_log.records WHERE segments > 0")" -ge 2 ] || fail "no transaction spilled segments"
run export --dsn "$dsn" --format records --out "$work/r3.jsonl"; expect 0 "records export beside the binary one"
run export --dsn "$dsn" --format binary --out "$work/b1.bin"; expect 0 "binary export"
head -1 "$work/b1.bin" | grep -q '^{"type":"header","format":"audit_log.export.v3",' ||
    fail "the binary export's header: $(head -1 "$work/b1.bin" | cut -c1-200)"
tail -1 "$work/b1.bin" | grep -q '^{"type":"end","events":' || fail "the binary export's last line is not its end line"
r3=$(stat -c %s "$work/r3.jsonl"); b1=$(stat -c %s "$work/b1.bin")
[ $((b1 * 3)) -lt "$r3" ] || fail "the binary export ($b1 bytes) is not under a third of the records export ($r3 bytes)"
run verify "$work/b1.bin"; expect 0 "verify of an untouched binary export"
b_counts=$(counts)
[ "$b_counts" = "$(server_counts)" ] || fail "the binary export verifies '$b_counts', the server '$(server_counts)'"
run verify "$work/r3.jsonl"; expect 0 "verify of the records export beside it"
[ "$(counts)" = "$b_counts" ] || fail "the records export verifies '$(counts)', the binary one '$b_counts'"
pyverify "$work/b1.bin"; expect 0 "format_v2.py on an untouched binary export"
[ "$out" = "independent verifier: $(q -c "SELECT events_checked FROM audit_log.verify()") events and $(q -c "SELECT count(*) FROM audit_log.records") records of the binary export recompute" ] ||
    fail "format_v2.py on the binary export, unlike the server: $out"
# The auditor's report reads it as it reads a records export.
run report "$work/b1.bin" --out "$work/b1.html"; expect 0 "report of a binary export"
grep -q <<<"$out" "intact: $(q -c "SELECT events_checked FROM audit_log.verify()") events" || fail "the report of the binary export: $out"
# Continued in binary after a binary export, and after a records export;
# checked against a checkpoint taken after both (the first file's heads are
# found by a pass of their own).
q -c "UPDATE acct SET balance = 7 WHERE id BETWEEN 40 AND 45" -c "INSERT INTO acct (id, owner) VALUES (3001, 'binary')"
run checkpoint --dsn "$dsn" --key "$work/key" --out "$work/cp3.json"; expect 0 "checkpoint before the binary continuation"
run export --dsn "$dsn" --format binary --since "$work/b1.bin" --out "$work/b2.bin"; expect 0 "binary export --since a binary export"
run export --dsn "$dsn" --format binary --since "$work/r3.jsonl" --out "$work/b3.bin"; expect 0 "binary export --since a records export"
run verify "$work/b1.bin" "$work/b2.bin" --checkpoint "$work/cp3.json" --pub "$work/key.pub"; expect 0 "a binary export and its continuation, against a checkpoint"
grep -q <<<"$out" "the log extends the checkpoint" || fail "no checkpoint proof for the binary exports: $out"
grep -q <<<"$out" "trees checked: 1 of the checkpoint's 1" || fail "the checkpoint's tree not recomputed offline: $out"
# A checkpoint whose tree root does not match the log (heads intact): the
# offline verifier recomputes the tree and refuses it, as verify(checkpoint) does.
q -c "SELECT audit_log.checkpoint()" | python3 -c 'import json, sys
cp = json.load(sys.stdin); r = cp["trees"][0]["root"]; cp["trees"][0]["root"] = ("0" if r[0] != "0" else "1") + r[1:]
json.dump(cp, open(sys.argv[1], "w"))' "$work/cp_root.json"
[ "$(q -c "SELECT ok FROM audit_log.verify(pg_read_file('$work/cp_root.json')::jsonb)")" = f ] ||
    fail "verify(checkpoint) accepts a checkpoint whose tree root was changed"
run verify "$work/b1.bin" "$work/b2.bin" --checkpoint "$work/cp_root.json"; expect 1 "a checkpoint whose tree root was changed, offline"
grep -q <<<"$out" "problem: chain_rewritten: chain 0's first [0-9]* records have root" || fail "the changed tree root, offline: $out"
[ "$(counts)" = "$(server_counts)" ] || fail "a binary export and its continuation verify '$(counts)', the server '$(server_counts)'"
run verify "$work/r3.jsonl" "$work/b3.bin" --checkpoint "$work/cp3.json" --pub "$work/key.pub"; expect 0 "a records export continued in binary, against a checkpoint"
run verify "$work/b1.bin" --checkpoint "$work/cp3.json" --pub "$work/key.pub"; expect 1 "a binary export that ends before the checkpoint"
pyverify "$work/b2.bin"; expect 0 "format_v2.py on the binary continuation, from its anchors"
# Tampering: "100.50" becomes "900.50" in the stored payload that holds it,
# with the end line's digest recomputed as an attacker would; the file cut
# short; a frame's segment count made huge; a compressed block's byte
# changed. Both verifiers refuse each, and neither crashes.
tamper_binary() { # tamper_binary NAME PYTHON-EXPRESSION-ON-data (bytes before the end line)
    python3 - "$work/b1.bin" "$work/$1.bin" "$2" <<'PY'
import hashlib, json, re, sys
src, dst, expr = sys.argv[1:4]
raw = open(src, 'rb').read()
cut = raw.rindex(b'\n', 0, len(raw) - 1) + 1
data, end = bytearray(raw[:cut]), json.loads(raw[cut:])
first = data.index(b'\n') + 1  # the first frame
exec(expr)
end["sha256"] = hashlib.sha256(data).hexdigest()
open(dst, 'wb').write(bytes(data) + json.dumps(end, separators=(",", ":")).encode() + b'\n')
PY
}
refused_bin() { # refused_bin NAME WHAT
    run verify "$work/$1.bin"; expect 1 "$2"
    cli_out=$out
    pyverify "$work/$1.bin"; expect 1 "format_v2.py on $2"
}
tamper_binary bbyte 'i = data.index(b"100.50"); data[i] = ord("9")'
refused_bin bbyte "a byte edited in a binary export's payload, with the end line rewritten"
grep -q <<<"$cli_out" "problem: content_changed" || fail "the edited binary payload not reported as content_changed: $cli_out"
! grep -q <<<"$cli_out" "file problem" || fail "the rewritten end line should leave only the chain to tell: $cli_out"
grep -q <<<"$out" "(content_changed)" || fail "format_v2.py on the edited binary payload: $out"
head -c $(( b1 / 2 )) "$work/b1.bin" >"$work/bcut.bin"
refused_bin bcut "a binary export cut in the middle"
grep -q <<<"$cli_out" "damaged record frame\|no end line" || fail "the cut binary export: $cli_out"
tamper_binary bhuge 'data[first + 85:first + 89] = b"\xff\xff\xff\xff"'
refused_bin bhuge "a frame claiming 4294967295 segments"
grep -q <<<"$cli_out" "damaged record frame" || fail "the huge segment count: $cli_out"
tamper_binary blz4 'k, hit = first, None
while hit is None:  # the first LZ4 blob: walk the frames by their lengths
    assert data[k] == 0x52
    segments, k = int.from_bytes(data[k + 85:k + 89], "big"), k + 89
    for _ in range(segments + 1):
        n = int.from_bytes(data[k + 1:k + 5], "big")
        if data[k] == 1 and hit is None:
            hit = k + 10  # the first literal (or a literal length): the content must change
        k += 9 + n
data[hit] ^= 0x10'
refused_bin blz4 "a byte changed inside an LZ4 block, with the end line rewritten"
echo "  binary export: $b_counts as the server and the records export, in $b1 bytes against $r3; by format_v2.py too; continues and is continued by either form, against a checkpoint whose tree it recomputes (a changed root is refused); an edited payload, a cut file, a huge count and a damaged LZ4 block are refused"

# Signed checkpoints: a forged signature, an edited checkpoint, another key.
run verify-checkpoint "$work/cp1.json" --pub "$work/key.pub"; expect 0 "verify-checkpoint"
python3 - "$work/cp1.json" "$work/forged_sig.json" "$work/forged_seq.json" <<'PY'
import json, sys
cp = json.load(open(sys.argv[1]))
s = dict(cp); s["signature"] = ("0" if cp["signature"][0] != "0" else "1") + cp["signature"][1:]
json.dump(s, open(sys.argv[2], "w"))
c = json.loads(json.dumps(cp)); c["checkpoint"]["chains"][0]["seq"] -= 1
json.dump(c, open(sys.argv[3], "w"))
PY
run verify-checkpoint "$work/forged_sig.json" --pub "$work/key.pub"; expect 1 "a forged signature"
run verify-checkpoint "$work/forged_seq.json" --pub "$work/key.pub"; expect 1 "an edited signed checkpoint"
run verify "$work/e1.jsonl" --checkpoint "$work/forged_seq.json" --pub "$work/key.pub"; expect 1 "verify with a forged checkpoint"
run keygen --out "$work/other"; expect 0 "second keygen"
run verify-checkpoint "$work/cp1.json" --pub "$work/other.pub"; expect 1 "a checkpoint signed by another key"
run keygen --out "$work/key"; expect 2 "keygen over an existing key"
echo "  forged, edited and foreign-key checkpoints are refused"

# The witness: extends, then catches a chain recomputed by a superuser.
run witness --dsn "$dsn" --state "$work/w" --key "$work/key"; expect 0 "first witness run"
q -c "UPDATE acct SET balance = 0 WHERE id = 5"
run export --dsn "$dsn" --out "$work/e3.jsonl"; expect 0 "export for the witness"
run witness --dsn "$dsn" --state "$work/w" --key "$work/key" --export "$work/e3.jsonl"; expect 0 "second witness run"
grep -q <<<"$out" "verified offline" || fail "witness did not verify the export: $out"
before=$(sha256sum "$work/w/latest.json")
target=$(q -c "SELECT id FROM audit_log.events WHERE table_name = 'acct' ORDER BY id LIMIT 1 OFFSET 5")
{ echo "BEGIN; ALTER TABLE audit_log.records DISABLE TRIGGER USER;"
  q -f "$here/lib/dump_log.sql" | python3 "$here/lib/format_v2.py" rewrite "$target" '{"id": 5, "balance": 1000000}' --chain
  echo "ALTER TABLE audit_log.records ENABLE TRIGGER USER; COMMIT;"; } >"$work/forge.sql"
q -f "$work/forge.sql" >/dev/null
[ "$(q -c "SELECT new_row->>'balance' FROM audit_log.events WHERE id = $target")" = 1000000 ] ||
    fail "the forgery did not change event $target"
[ "$(q -c "SELECT ok FROM audit_log.verify()")" = t ] || fail "the recomputed chain should pass a plain verify()"
run witness --dsn "$dsn" --state "$work/w" --key "$work/key"; expect 1 "witness after a recomputed chain"
grep -q <<<"$out" "chain_rewritten\|fork\|rewritten since" || fail "witness did not name the rewrite: $out"
run witness --dsn "$dsn" --state "$work/w" --key "$work/key" --full; expect 1 "witness --full after a recomputed chain"
grep -q <<<"$out" "chain_rewritten\|fork" || fail "witness --full did not name the rewrite: $out"
[ "$(sha256sum "$work/w/latest.json")" = "$before" ] || fail "the witness stored a checkpoint after refusing"
echo "  witness: $(echo "$out" | head -1 | cut -c1-160)"
# After a purge, a whole export starts from the server's anchors and verifies.
q -c "SET client_min_messages = warning" -c "SELECT audit_log.set_retention('0')" \
  -c "SELECT * FROM audit_log.purge(clock_timestamp())" >/dev/null
q -c "INSERT INTO acct (id) VALUES (2000)"
run export --dsn "$dsn" --out "$work/purged.jsonl"; expect 0 "export after a purge"
grep -q '"anchors":\[{' "$work/purged.jsonl" || fail "no anchors in the header after a purge"
run verify "$work/purged.jsonl"; expect 0 "offline verify after a purge"
# A records export too, whose anchors format_v2.py finds recorded by its PURGE event.
run export --dsn "$dsn" --format records --out "$work/purged_r.jsonl"; expect 0 "records export after a purge"
grep -q '"anchors":\[{' "$work/purged_r.jsonl" || fail "no anchors in the records export's header after a purge"
run verify "$work/purged_r.jsonl"; expect 0 "offline verify of a records export after a purge"
pyverify "$work/purged_r.jsonl"; expect 0 "format_v2.py on a records export after a purge"
echo "  after a purge, an export (logical or records) starts from the anchors and verifies offline"
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "cli: export, offline verify, signed checkpoints and the witness behave"

#!/usr/bin/env bash
# audit-log tail, the live feed for SIEMs, under a write load:
# - killed with SIGKILL and restarted every few seconds while pgbench
#   writes, its --out file ends with every committed event exactly once,
#   each with the hash the server recomputes, each chain in seq order;
# - the same log as ECS and as OCSF lines, checked field by field against
#   the events view, and on standard output;
# - bad input: a state file from another database, a state of another
#   feed format, an output file cut behind the state's back;
# - a record edited before it was shipped stops the feed, unshipped.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$here")
. "$here/lib/workload.sh"
cli=${AUDIT_LOG_CLI:-$root/target/release/audit-log}
[ -x "$cli" ] || wl_fail "$cli not built (cargo build --release -p audit_log_cli)"
work=$(mktemp -d /tmp/al_tail.XXXXXX)
tail_pid=
trap '[ -n "$tail_pid" ] && kill -9 $tail_pid 2>/dev/null; rm -rf "$work"; wl_teardown' EXIT
run() { set +e; out=$("$cli" "$@" 2>&1); rc=$?; set -e; }

wl_setup al_tail
dsn="host=$PGHOST port=$PGPORT user=postgres dbname=al_tail"
feed=$work/feed.jsonl state=$work/state.json

start_tail() {
    "$cli" tail --dsn "$dsn" --state "$state" --out "$feed" --interval-ms 50 --batch 50 \
        2>>"$work/tail.err" &
    tail_pid=$!
}

# The load runs while the tail is killed and restarted at odd moments.
pgbench -n -c 4 -j 2 -T 14 -f "$WL_SCRIPT" al_tail >"$work/pgbench.out" 2>&1 &
load=$!
start_tail
kills=0
for pause in 1.3 0.7 2.1 0.4 1.7 0.9 2.5 0.6; do
    sleep "$pause"
    kill -9 "$tail_pid"; wait "$tail_pid" 2>/dev/null || true
    kills=$((kills + 1))
    start_tail
done
wait $load || wl_fail "pgbench: $(tail -3 "$work/pgbench.out")"
processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")
[ "${processed:-0}" -ge 500 ] || wl_fail "pgbench processed only ${processed:-0} transactions"
wl_check "" 300
kill -9 "$tail_pid"; wait "$tail_pid" 2>/dev/null || true
tail_pid=
# Catch up, from the state the last kill left.
"$cli" tail --dsn "$dsn" --state "$state" --out "$feed" --once 2>"$work/once.err" \
    || wl_fail "tail --once: $(cat "$work/once.err")"

# The feed against the log: the same events, once each, same hashes; each
# chain's transactions in seq order, each transaction's events in order.
wl_q -c "SELECT id, encode(hash, 'hex'), op, table_name FROM audit_log.events ORDER BY id" >"$work/log.txt"
python3 - "$feed" "$work/log.txt" <<'PY' || wl_fail "the feed differs from the log"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
log = [l.split('|') for l in open(sys.argv[2]).read().split('\n') if l]
ids = [l["id"] for l in lines]
assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate event(s)"
got = sorted((l["id"], l["hash"], l["op"], l["table_name"]) for l in lines)
want = [(int(i), h, o, t) for i, h, o, t in log]
missing = set(want) - set(got)
extra = set(got) - set(want)
assert not missing and not extra, f"missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
last = {}
for l in lines:
    key = (l["seq"], l["tx_seq"])
    assert key > last.get(l["chain_id"], (0, 0)), f"chain {l['chain_id']} out of order at {key}"
    last[l["chain_id"]] = key
print(f"  {len(lines)} events fed once each, in chain order")
PY
echo "  $kills kills with SIGKILL during the load; $(wc -l <"$feed") lines, no gap, no duplicate"

# ECS and OCSF, and standard output: the whole log from the start.
"$cli" tail --dsn "$dsn" --state "$work/ecs.state" --format ecs --once >"$work/ecs.jsonl" 2>"$work/ecs.err" \
    || wl_fail "tail --format ecs: $(cat "$work/ecs.err")"
"$cli" tail --dsn "$dsn" --state "$work/ocsf.state" --format ocsf --once >"$work/ocsf.jsonl" 2>"$work/ocsf.err" \
    || wl_fail "tail --format ocsf: $(cat "$work/ocsf.err")"
wl_q -c "SELECT id, encode(hash, 'hex'), op, table_schema, table_name, session_user_name,
                current_user_name, coalesce(host(client_addr), ''),
                (extract(epoch FROM recorded_at) * 1000)::bigint / 1, coalesce(new_row::text, '')
           FROM audit_log.events ORDER BY id" >"$work/log_full.txt"
python3 - "$work/ecs.jsonl" "$work/ocsf.jsonl" "$work/log_full.txt" <<'PY' || wl_fail "ECS or OCSF lines differ from the log"
import json, sys
ecs = [json.loads(l) for l in open(sys.argv[1])]
ocsf = [json.loads(l) for l in open(sys.argv[2])]
log = [l.split('|') for l in open(sys.argv[3]).read().split('\n') if l]
assert len(ecs) == len(log) == len(ocsf), (len(ecs), len(ocsf), len(log))
by_id = {int(r[0]): r for r in log}
row_ops = {"INSERT", "UPDATE", "DELETE", "TRUNCATE"}
for e in ecs:
    r = by_id[e["event"]["sequence"]]
    assert e["event"]["id"] == r[1], "event.id is the hash"
    assert e["event"]["action"] == r[2].lower()
    assert e["event"]["category"] == ["database" if r[2] in row_ops else "configuration"]
    assert e["audit_log"]["table_name"] == r[4] and e["audit_log"]["table_schema"] == r[3]
    assert e["user"]["name"] == r[5] and e["user"]["effective"]["name"] == r[6]
    assert e.get("client", {}).get("ip", "") == r[7]
    assert e["ecs"]["version"].startswith("8.")
    if r[9]:
        assert json.loads(r[9]) == e["audit_log"]["new_row"], "new_row"
acts = {"INSERT": (6005, 6), "UPDATE": (6005, 2), "DELETE": (6005, 7), "TRUNCATE": (6005, 7)}
for o in ocsf:
    r = by_id[o["metadata"]["sequence"]]
    assert o["metadata"]["uid"] == r[1]
    cls, act = acts.get(r[2], (6003, None))
    assert o["class_uid"] == cls and o["category_uid"] == 6
    if act is not None:
        assert o["activity_id"] == act and o["table"]["name"] == f"{r[3]}.{r[4]}"
    else:
        assert o["api"]["operation"] == r[2]
    assert o["type_uid"] == o["class_uid"] * 100 + o["activity_id"]
    assert abs(o["time"] - int(r[8])) <= 1, (o["time"], r[8])
    assert o["actor"]["user"]["name"] == r[5]
print(f"  ECS and OCSF: {len(ecs)} events each, mapped as documented")
PY

# Records purged before the feed shipped them: the tail says so and goes
# on from the purge's anchors, shipping everything that remains.
before_purge=$(python3 -c "import json,sys; print(max(json.loads(l)['id'] for l in open(sys.argv[1])))" "$feed")
# One session, so one chain: the purge keeps only its newest link.
wl_q -c "INSERT INTO t1 VALUES (20001, 1) ON CONFLICT (k) DO NOTHING" -c "INSERT INTO t1 VALUES (20002, 1) ON CONFLICT (k) DO NOTHING" \
     -c "INSERT INTO t1 VALUES (20003, 1) ON CONFLICT (k) DO NOTHING" -c "SELECT audit_log.set_retention('0')" \
     -c "SELECT * FROM audit_log.purge(clock_timestamp())" >/dev/null
wl_q -c "INSERT INTO t1 VALUES (30001, 1) ON CONFLICT (k) DO NOTHING"
run tail --dsn "$dsn" --state "$state" --out "$feed" --once
[ "$rc" = 0 ] || wl_fail "the tail after a purge of unshipped records: exit $rc: $out"
grep -q "were purged before this feed shipped them" <<<"$out" || wl_fail "the tail did not say records were purged unshipped: $out"
wl_q -c "SELECT id FROM audit_log.events WHERE id > $before_purge ORDER BY id" >"$work/remaining.txt"
python3 - "$feed" "$work/remaining.txt" "$before_purge" <<'PY' || wl_fail "after the purge, the feed lacks what remains of the log"
import json, sys
fed = {json.loads(l)["id"] for l in open(sys.argv[1])}
remaining = [int(x) for x in open(sys.argv[2]).read().split()]
missing = [i for i in remaining if i not in fed]
assert remaining and not missing, f"missing {missing[:5]} of {len(remaining)}"
PY
echo "  a purge of unshipped records is reported, and the feed goes on from the anchors"

# One tail per state file; --out a regular file; a state whose length is
# not a line end of the file.
"$cli" tail --dsn "$dsn" --state "$state" --out "$feed" --seconds 4 2>/dev/null &
tail_pid=$!
sleep 1
run tail --dsn "$dsn" --state "$state" --out "$feed" --once
[ "$rc" = 2 ] && grep -q "another audit-log tail is running" <<<"$out" || wl_fail "two tails on one state: exit $rc: $out"
wait "$tail_pid"; tail_pid=
mkfifo "$work/fifo"; ln -s "$feed" "$work/link.jsonl"
for target in "$work/fifo" "$work/link.jsonl"; do
    rm -f "$work/other.state"
    run tail --dsn "$dsn" --state "$work/other.state" --out "$target" --once
    [ "$rc" = 2 ] && grep -q "must be a regular file" <<<"$out" || wl_fail "--out $target: exit $rc: $out"
done
python3 - "$state" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); s["out_bytes"] -= 3
json.dump(s, open(sys.argv[1] + ".off", "w"))
PY
run tail --dsn "$dsn" --state "$state.off" --out "$feed" --once
[ "$rc" = 2 ] && grep -q "does not end a line" <<<"$out" || wl_fail "a state off a line end: exit $rc: $out"
[ "$(stat -c %a "$feed")" = 600 ] || wl_fail "the feed file is not private (mode $(stat -c %a "$feed"))"

# Bad input.
wl_q -c "SELECT 1" >/dev/null
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS al_tail_other" -c "CREATE DATABASE al_tail_other" 2>/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d al_tail_other <<'SQL' >/dev/null
SET client_min_messages = warning;
CREATE EXTENSION audit_log;
CREATE TABLE t1 (k int PRIMARY KEY, v int);
SELECT audit_log.enable('t1');
INSERT INTO t1 SELECT g, g FROM generate_series(1, 300) g;
SQL
cp "$state" "$work/copy.state"
run tail --dsn "host=$PGHOST port=$PGPORT user=postgres dbname=al_tail_other" --state "$work/copy.state" --once
[ "$rc" = 1 ] && grep -q <<<"$out" "is not a position in this log" \
    || wl_fail "a state file from another database: exit $rc: $out"
run tail --dsn "$dsn" --state "$state" --format ocsf --once
[ "$rc" = 2 ] && grep -q <<<"$out" "belongs to a native feed" || wl_fail "another feed's state: exit $rc: $out"
cp "$feed" "$work/cut.jsonl"; truncate -s -10 "$work/cut.jsonl"
run tail --dsn "$dsn" --state "$work/copy.state" --out "$work/cut.jsonl" --once
[ "$rc" = 2 ] && grep -q <<<"$out" "truncated or replaced" || wl_fail "a cut output file: exit $rc: $out"
psql -X -q -d postgres -c "DROP DATABASE al_tail_other" 2>/dev/null

# A record edited by a superuser before it was shipped is not shipped.
before=$(wc -l <"$feed")
wl_q -c "INSERT INTO t1 VALUES (100001, 1)" -c "UPDATE t1 SET v = 2 WHERE k = 100001"
bad=$(wl_q -c "SELECT max(id) FROM audit_log.events WHERE op = 'UPDATE'")
wl_q -c "ALTER TABLE audit_log.records DISABLE TRIGGER USER" \
     -c "UPDATE audit_log.records SET payload = decode(replace(encode(payload, 'hex'), encode('UPDATE', 'hex'), encode('DELETE', 'hex')), 'hex') WHERE $bad BETWEEN first_event AND last_event" \
     -c "ALTER TABLE audit_log.records ENABLE TRIGGER USER" >/dev/null
run tail --dsn "$dsn" --state "$state" --out "$feed" --once
[ "$rc" = 1 ] && grep -q <<<"$out" "does not continue its chain, so it was not shipped" \
    || wl_fail "an edited record: exit $rc: $out"
grep -q "\"id\":$bad," "$feed" && wl_fail "the edited event $bad was shipped"
[ "$(wc -l <"$feed")" -le $((before + 1)) ] || wl_fail "more than the insert before it was shipped"
echo "tail: kill -9 during writes loses and repeats nothing; ECS and OCSF mapped; bad state, feed and files refused; an edited record stops the feed"

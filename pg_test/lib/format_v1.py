#!/usr/bin/env python3
"""An independent implementation of docs/FORMAT.md, in plain Python.

It shares no code with the extension: if it agrees with the hashes the
extension stored, the specification is complete and the implementation
follows it. It also plays the attacker who recomputes hashes after an edit.

  format_v1.py verify < dump.jsonl     recompute every event and link hash;
                                       exit 1 on the first mismatch
  format_v1.py rewrite EVENT_ID NEW_ROW_JSON [--chain] < dump.jsonl
      print SQL that sets an event's new_row and recomputes its hash, the
      rest of its transaction, its link and (with --chain) every later link
      of that chain: a superuser's forgery that keeps the chain consistent.

The dump is what pg_test/lib/dump_log.sql prints: one JSON object a line.
"""
import hashlib
import json
import struct
import sys

EVENT_TAG = b"audit_log:event:v1\0"
LINK_TAG = b"audit_log:link:v1\0"
ZERO = bytes(32)


class Num(str):
    """A JSON number, kept as the exact text PostgreSQL printed."""


def parse_json(text):
    return json.loads(text, parse_float=Num, parse_int=Num)


def i64(v):
    return struct.pack(">q", v)


def u64(v):
    return struct.pack(">Q", v)


def text(s):
    b = s.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def opt(v, enc):
    return b"\x00" if v is None else b"\x01" + enc(v)


def enc_json(v):
    if v is None:
        return b"\x00"
    if v is False:
        return b"\x01"
    if v is True:
        return b"\x02"
    if isinstance(v, Num):
        return b"\x03" + text(str(v))
    if isinstance(v, str):
        return b"\x04" + text(v)
    if isinstance(v, list):
        return b"\x05" + struct.pack(">I", len(v)) + b"".join(enc_json(x) for x in v)
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode("utf-8"))
        return b"\x06" + struct.pack(">I", len(items)) + b"".join(text(k) + enc_json(x) for k, x in items)
    raise TypeError(f"not JSON: {v!r}")


def json_col(v):
    return None if v is None else parse_json(v)


def event_hash(e, prev):
    canonical = (
        i64(e["id"]) + u64(e["tx_id"]) + i64(e["tx_seq"]) + i64(e["recorded_at"]) + i64(e["statement_at"])
        + text(e["session_user_name"]) + text(e["current_user_name"])
        + opt(e["application_name"], text) + opt(e["client_addr"], text)
        + opt(json_col(e["context"]), enc_json)
        + text(e["table_schema"]) + text(e["table_name"]) + text(e["op"])
        + opt(json_col(e["old_row"]), enc_json) + opt(json_col(e["new_row"]), enc_json)
    )
    return hashlib.sha256(EVENT_TAG + prev + canonical).digest()


def link_hash(l, prev):
    canonical = (
        i64(l["chain_id"]) + i64(l["seq"]) + u64(l["tx_id"]) + i64(l["event_count"])
        + i64(l["first_event"]) + i64(l["last_event"]) + bytes.fromhex(l["last_event_hash"])
        + i64(l["committed_at"])
    )
    return hashlib.sha256(LINK_TAG + prev + canonical).digest()


def load(stream):
    events, links = [], []
    for line in stream:
        if line.strip():
            rec = json.loads(line)
            (events if rec.pop("kind") == "event" else links).append(rec)
    events.sort(key=lambda e: (e["tx_id"], e["tx_seq"], e["id"]))
    links.sort(key=lambda l: (l["chain_id"], l["seq"]))
    return events, links


def verify(events, links):
    prev, tx = ZERO, None
    for e in events:
        if e["tx_id"] != tx:
            prev, tx = ZERO, e["tx_id"]
        if bytes.fromhex(e["prev_hash"]) != prev or event_hash(e, prev).hex() != e["hash"]:
            print(f"event {e['id']}: hash does not recompute")
            return 1
        prev = bytes.fromhex(e["hash"])
    chain, prev = None, ZERO
    for l in links:
        if l["chain_id"] != chain:
            chain, prev = l["chain_id"], ZERO
        if bytes.fromhex(l["prev_link_hash"]) != prev or link_hash(l, prev).hex() != l["link_hash"]:
            print(f"link {l['chain_id']}/{l['seq']}: hash does not recompute")
            return 1
        prev = bytes.fromhex(l["link_hash"])
    print(f"independent verifier: {len(events)} events and {len(links)} links recompute")
    return 0


def rewrite(events, links, event_id, new_row, whole_chain):
    """SQL for a forgery: edit one event, recompute what depends on it."""
    sql = []
    target = next(e for e in events if e["id"] == event_id)
    tx = [e for e in events if e["tx_id"] == target["tx_id"]]
    target["new_row"] = new_row
    prev = ZERO
    for e in tx:
        e["prev_hash"] = prev.hex()
        h = event_hash(e, prev)
        e["hash"] = h.hex()
        prev = h
        row = "NULL" if e["new_row"] is None else "'" + e["new_row"].replace("'", "''") + "'"
        sql.append(f"UPDATE audit_log.events SET new_row = {row}, prev_hash = '\\x{e['prev_hash']}', "
                   f"hash = '\\x{e['hash']}' WHERE id = {e['id']};")
    link = next(l for l in links if l["tx_id"] == target["tx_id"])
    link["last_event_hash"] = prev.hex()
    chain = [l for l in links if l["chain_id"] == link["chain_id"] and l["seq"] >= link["seq"]]
    if not whole_chain:
        chain = chain[:1]
    for l in chain:
        before = [x for x in links if x["chain_id"] == l["chain_id"] and x["seq"] == l["seq"] - 1]
        p = bytes.fromhex(before[0]["link_hash"]) if before else ZERO
        l["prev_link_hash"] = p.hex()
        l["link_hash"] = link_hash(l, p).hex()
        sql.append(f"UPDATE audit_log.links SET last_event_hash = '\\x{l['last_event_hash']}', "
                   f"prev_link_hash = '\\x{l['prev_link_hash']}', link_hash = '\\x{l['link_hash']}' "
                   f"WHERE chain_id = {l['chain_id']} AND seq = {l['seq']};")
    print("\n".join(sql))
    return 0


def main(argv):
    events, links = load(sys.stdin)
    if argv[1:2] == ["verify"]:
        return verify(events, links)
    if argv[1:2] == ["rewrite"] and len(argv) >= 4:
        return rewrite(events, links, int(argv[2]), argv[3], "--chain" in argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

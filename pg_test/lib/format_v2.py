#!/usr/bin/env python3
"""An independent implementation of docs/FORMAT.md, in plain Python.

It shares no code with the extension: if it agrees with the hashes the
extension stored, the specification is complete and the implementation
follows it. It also plays the attacker who recomputes hashes after an edit.

  format_v1.py verify < LOG            recompute every event and link hash,
                                       and match transactions to their links;
                                       exit 1 on the first mismatch
  format_v1.py rewrite EVENT_ID NEW_ROW_JSON [--chain] < DUMP
      print SQL that sets an event's new_row and recomputes its hash, the
      rest of its transaction, its link and (with --chain) every later link
      of that chain: a superuser's forgery that keeps the chain consistent.

LOG is either what pg_test/lib/dump_log.sql prints (one JSON object a line,
"kind" "event" or "link", jsonb columns as their text, timestamps as integer
microseconds) or an export of `audit-log export` (docs/FORMAT.md, "Export").

A transaction is known by the id of its first event (an event's tx_first, a
link's first_event), not by its tx_id, which repeats after a restore into a
new cluster. Row values may be nested any depth: they are parsed and encoded
without recursion (Python's json module raises RecursionError long before
100,000 levels).
"""
import calendar
import hashlib
import json
import re
import struct
import sys

EVENT_TAG = b"audit_log:event:v1\0"
LINK_TAG = b"audit_log:link:v1\0"
ZERO = bytes(32)


class Num(str):
    """A JSON number, kept as the exact text PostgreSQL printed."""


# One token of JSON text, after optional whitespace: a string (escapes
# checked, decoded later), a number, a literal, or punctuation.
_TOKEN = re.compile(
    r'[ \t\n\r]*(?:'
    r'("(?:[^"\\\x00-\x1f]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    r'|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)'
    r'|(true|false|null)'
    r'|([{}\[\],:]))'
)
_ESCAPE = re.compile(
    r'\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(["\\/bfnrt]))'
)
_SHORT = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERAL = {"true": True, "false": False, "null": None}


def _unescape(token):
    body = token[1:-1]
    if "\\" not in body:
        return body

    def one(m):
        hi, lo, code, short = m.groups()
        if hi:
            return chr(0x10000 + ((int(hi, 16) - 0xD800) << 10) + (int(lo, 16) - 0xDC00))
        if code:
            c = int(code, 16)
            if 0xD800 <= c <= 0xDFFF:
                raise ValueError(f"unpaired surrogate \\u{code} in a JSON string")
            return chr(c)
        return _SHORT[short]

    return _ESCAPE.sub(one, body)


def parse_json(text):
    """One JSON value from text, at any depth: a loop with its own stack,
    no recursion. Numbers become Num (their text kept); an object with two
    equal keys is refused (jsonb never prints one)."""
    stack = []  # open containers, innermost last: [list, None] or [dict, pending key]
    state = "value"
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"not JSON at character {pos}")
        pos = m.end()
        string, number, literal, punct = m.groups()
        if state == "colon":
            if punct != ":":
                raise ValueError(f"expected ':' at character {pos}")
            state = "value"
            continue
        if state in ("key", "first key"):
            if string is not None:
                key = _unescape(string)
                if key in stack[-1][0]:
                    raise ValueError(f"duplicate key {key!r}")
                stack[-1][1] = key
                state = "colon"
                continue
            if state == "first key" and punct == "}":
                value = stack.pop()[0]
            else:
                raise ValueError(f"expected a key at character {pos}")
        elif state == "next":
            container = stack[-1][0]
            if punct == ",":
                state = "key" if isinstance(container, dict) else "value"
                continue
            if punct != ("}" if isinstance(container, dict) else "]"):
                raise ValueError(f"expected ',' or a closing bracket at character {pos}")
            value = stack.pop()[0]
        elif state == "first value" and punct == "]":
            value = stack.pop()[0]
        elif string is not None:
            value = _unescape(string)
        elif number is not None:
            value = Num(number)
        elif literal is not None:
            value = _LITERAL[literal]
        elif punct == "[":
            stack.append([[], None])
            state = "first value"
            continue
        elif punct == "{":
            stack.append([{}, None])
            state = "first key"
            continue
        else:
            raise ValueError(f"expected a value at character {pos}")
        # A value is complete.
        if not stack:
            if text[pos:].strip(" \t\n\r"):
                raise ValueError(f"text after the value at character {pos}")
            return value
        container, key = stack[-1]
        if isinstance(container, list):
            container.append(value)
        else:
            container[key] = value
        state = "next"


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
    """The `json` encoding, with a stack of work instead of recursion.
    Bytes on the stack are already encoded (an object's keys)."""
    out = []
    todo = [v]
    while todo:
        x = todo.pop()
        if isinstance(x, bytes):
            out.append(x)
        elif x is None:
            out.append(b"\x00")
        elif x is False:
            out.append(b"\x01")
        elif x is True:
            out.append(b"\x02")
        elif isinstance(x, Num):
            out.append(b"\x03" + text(str(x)))
        elif isinstance(x, str):
            out.append(b"\x04" + text(x))
        elif isinstance(x, list):
            out.append(b"\x05" + struct.pack(">I", len(x)))
            todo.extend(reversed(x))
        elif isinstance(x, dict):
            items = sorted(x.items(), key=lambda kv: kv[0].encode("utf-8"))
            out.append(b"\x06" + struct.pack(">I", len(items)))
            for k, val in reversed(items):
                todo.append(val)
                todo.append(text(k))
        else:
            raise TypeError(f"not JSON: {type(x).__name__}")
    return b"".join(out)


def event_hash(e, prev):
    rows = e["rows"]
    canonical = (
        i64(e["id"]) + u64(e["tx_id"]) + i64(e["tx_seq"]) + i64(e["recorded_at"]) + i64(e["statement_at"])
        + text(e["session_user_name"]) + text(e["current_user_name"])
        + opt(e["application_name"], text) + opt(e["client_addr"], text)
        + opt(rows["context"], bytes)
        + text(e["table_schema"]) + text(e["table_name"]) + text(e["op"])
        + opt(rows["old_row"], bytes) + opt(rows["new_row"], bytes)
    )
    return hashlib.sha256(EVENT_TAG + prev + canonical).digest()


def link_hash(l, prev):
    canonical = (
        i64(l["chain_id"]) + i64(l["seq"]) + u64(l["tx_id"]) + i64(l["event_count"])
        + i64(l["first_event"]) + i64(l["last_event"]) + bytes.fromhex(l["last_event_hash"])
        + i64(l["committed_at"])
    )
    return hashlib.sha256(LINK_TAG + prev + canonical).digest()


ROWS = ("context", "old_row", "new_row")
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z")


def micros(ts):
    m = _RFC3339.fullmatch(ts)
    if not m:
        raise ValueError(f"timestamp {ts!r} is not of the form 2026-01-31T23:59:59.123456Z")
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s)) * 1_000_000 + us


def from_dump(rec):
    """An event of dump_log.sql: jsonb columns as text, or null for SQL NULL."""
    rec["rows"] = {c: None if rec[c] is None else enc_json(parse_json(rec[c])) for c in ROWS}
    return rec


def from_export(rec):
    """An event line of an export: jsonb columns as JSON, absent for SQL NULL."""
    e = {k: rec[k] for k in ("id", "tx_id", "tx_seq", "tx_first", "application_name", "client_addr",
                             "table_schema", "table_name", "op", "prev_hash", "hash")}
    e["recorded_at"] = micros(rec["recorded_at"])
    e["statement_at"] = micros(rec["statement_at"])
    e["session_user_name"] = rec["session_user"]
    e["current_user_name"] = rec["current_user"]
    e["rows"] = {c: enc_json(rec[c]) if c in rec else None for c in ROWS}
    return e


def load(stream):
    """Events by (tx_first, tx_seq, id), links by (chain_id, seq), and where
    each chain starts: {chain: (seq, link_hash)} (an export's anchors)."""
    events, links, starts = [], [], {}
    for line in stream:
        if not line.strip():
            continue
        if line.startswith('{"type":'):
            # Export lines hold row values as JSON, at any depth.
            rec = parse_json(line)
            kind = rec.pop("type")
            if kind == "header":
                starts = {a["chain"]: (int(a["seq"]), bytes.fromhex(a["link_hash"])) for a in rec["anchors"]}
            elif kind == "event":
                events.append(from_export(rec))
            elif kind == "link":
                rec["committed_at"] = micros(rec["committed_at"])
                links.append(rec)
            continue
        # Dump lines hold row values as strings: nothing deep for json.loads.
        rec = json.loads(line)
        if rec.pop("kind") == "event":
            if "tx_first" not in rec:
                raise ValueError("the dump has no tx_first: pg_test/lib/dump_log.sql must select it")
            events.append(from_dump(rec))
        else:
            links.append(rec)
    for e in events:
        for k in ("id", "tx_id", "tx_seq", "tx_first"):
            e[k] = int(e[k])
    for l in links:
        for k in ("chain_id", "seq", "tx_id", "event_count", "first_event", "last_event"):
            l[k] = int(l[k])
    events.sort(key=lambda e: (e["tx_first"], e["tx_seq"], e["id"]))
    links.sort(key=lambda l: (l["chain_id"], l["seq"]))
    return events, links, starts


def transactions(events):
    """The events grouped by tx_first, in order: [(tx_first, [events])]."""
    groups = []
    for e in events:
        if not groups or groups[-1][0] != e["tx_first"]:
            groups.append((e["tx_first"], []))
        groups[-1][1].append(e)
    return groups


def verify(events, links, starts):
    link_of = {}
    for l in links:
        if l["first_event"] in link_of:
            print(f"link {l['chain_id']}/{l['seq']}: a second link for first event {l['first_event']}")
            return 1
        link_of[l["first_event"]] = l
    for first, tx in transactions(events):
        prev = ZERO
        for pos, e in enumerate(tx, 1):
            if e["tx_seq"] != pos or e["tx_id"] != tx[0]["tx_id"]:
                print(f"event {e['id']}: not position {pos} of tx {tx[0]['tx_id']} (tx_first {first})")
                return 1
            if bytes.fromhex(e["prev_hash"]) != prev or event_hash(e, prev).hex() != e["hash"]:
                print(f"event {e['id']}: hash does not recompute")
                return 1
            prev = bytes.fromhex(e["hash"])
        if tx[0]["id"] != first:
            print(f"event {tx[0]['id']}: starts tx {tx[0]['tx_id']} but records tx_first {first}")
            return 1
        l = link_of.pop(first, None)
        if l is None:
            print(f"tx {tx[0]['tx_id']} (tx_first {first}): no link")
            return 1
        if (l["tx_id"], l["event_count"], l["last_event"], l["last_event_hash"]) != (
                tx[0]["tx_id"], len(tx), tx[-1]["id"], tx[-1]["hash"]):
            print(f"link {l['chain_id']}/{l['seq']}: does not match tx {tx[0]['tx_id']} (tx_first {first})")
            return 1
    for l in link_of.values():
        print(f"link {l['chain_id']}/{l['seq']}: its events (from {l['first_event']}) are missing")
        return 1
    chain, prev, seq = None, ZERO, 0
    for l in links:
        if l["chain_id"] != chain:
            chain = l["chain_id"]
            seq, prev = starts.get(chain, (0, ZERO))
        if (l["seq"] != seq + 1 or bytes.fromhex(l["prev_link_hash"]) != prev
                or link_hash(l, prev).hex() != l["link_hash"]):
            print(f"link {l['chain_id']}/{l['seq']}: hash does not recompute")
            return 1
        seq, prev = l["seq"], bytes.fromhex(l["link_hash"])
    print(f"independent verifier: {len(events)} events and {len(links)} links recompute")
    return 0


def rewrite(events, links, event_id, new_row, whole_chain):
    """SQL for a forgery: edit one event, recompute what depends on it."""
    sql = []
    target = next(e for e in events if e["id"] == event_id)
    tx = [e for e in events if e["tx_first"] == target["tx_first"]]
    target["new_row"] = new_row
    target["rows"]["new_row"] = enc_json(parse_json(new_row))
    prev = ZERO
    for e in tx:
        e["prev_hash"] = prev.hex()
        h = event_hash(e, prev)
        e["hash"] = h.hex()
        prev = h
        row = "NULL" if e["new_row"] is None else "'" + e["new_row"].replace("'", "''") + "'"
        sql.append(f"UPDATE audit_log.events SET new_row = {row}, prev_hash = '\\x{e['prev_hash']}', "
                   f"hash = '\\x{e['hash']}' WHERE tx_first = {e['tx_first']} AND tx_seq = {e['tx_seq']};")
    link = next(l for l in links if l["first_event"] == target["tx_first"])
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
    if argv[1:2] == ["verify"]:
        return verify(*load(sys.stdin))
    if argv[1:2] == ["rewrite"] and len(argv) >= 4:
        events, links, _ = load(sys.stdin)
        return rewrite(events, links, int(argv[2]), argv[3], "--chain" in argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

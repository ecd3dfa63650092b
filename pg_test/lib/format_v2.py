#!/usr/bin/env python3
"""An independent implementation of docs/FORMAT.md (format version 2), in
plain Python.

It shares no code with the extension: if it agrees with the hashes the
extension stored, the specification is complete and the implementation
follows it. It also plays the attacker who recomputes hashes after an edit.

  format_v2.py verify < LOG
      LOG is what pg_test/lib/dump_log.sql prints: the raw storage, one JSON
      object a line ("kind" "record", "segment" or "anchor"; payloads and
      hashes in hex, committed_at in integer microseconds). Every record's
      payload (merged by tx_seq with its segments) is decoded event by event
      and checked against the record's columns, its events are hashed, and
      its link hash is recomputed, chained on the STORED link_hash of the
      record before it in its chain (or on the chain's anchor). seq runs on
      without gaps, no transaction is stored twice, and every anchor is
      recorded by a PURGE event. The audit_log.events and audit_log.links
      views, which the server computes, are not read.
      LOG can also be an export of `audit-log export` (docs/FORMAT.md,
      "Export"): its logical events and links are checked as listed there.
      Or a records export (`audit-log export --format records`, header format
      audit_log.export.v2): each record line is the stored record, its
      payload and segments in base64. They become the records, segments and
      anchors (the header's) a dump gives, and are verified as above; for a
      continuation (`"continues":true`) the anchors are taken as proven, since
      they are the heads of the export before it, which is not read here. The
      file itself is checked too: a header, records in strictly increasing
      (chain_id, seq) order, and one end line, last, as the exporter writes
      it, whose sha256 covers every byte before it, whose counts are the sum
      of event_count and the number of records, and whose heads are each
      chain's last record (or its anchor).
      Or a binary records export (`audit-log export --format binary`, header
      format audit_log.export.v3): the same records in binary frames, LZ4
      blocks decompressed here by an implementation of the block format of
      its own; the same checks.
      Exit 1 with a message on the first problem.
  format_v2.py trees CHECKPOINT < DUMP
      recompute each tree of CHECKPOINT (format v2) from the dump of a log
      never purged (FORMAT.md, "Merkle trees").
  format_v2.py proof PROOF CHECKPOINT
      check an event's proof (audit_log.prove()) against a checkpoint, plain
      or as signed (its signature is the CLI's business, not checked here).
  format_v2.py consistency ANSWER OLD_CHECKPOINT
      check audit_log.consistency()'s answer against the old checkpoint.
  format_v2.py selftest
      the Merkle vectors of FORMAT.md and RFC 9162's example.
  format_v2.py rewrite EVENT_ID NEW_ROW_JSON [--chain] < DUMP
      print SQL that forges the storage as a superuser could: the event is
      re-encoded with NEW_ROW_JSON as its new_row inside its record's payload
      (or its segment's), and its record's link_hash is recomputed; with
      --chain, so is the link_hash of every later record of that chain, each
      chained on the forged one before it. The statements update
      audit_log.records (and audit_log.segments, if the event was spilled to
      a segment): the caller disables their triggers.

A transaction is known by the id of its first event (a record's
first_event, an event's tx_first), not by its tx_id, which repeats after a
restore into a new cluster. Row values may be nested any depth: they are
parsed, decoded and encoded without recursion (Python's json module raises
RecursionError long before 100,000 levels).
"""
import base64
import binascii
import calendar
import hashlib
import json
import re
import struct
import sys

EVENT_TAG = b"audit_log:event:v1\0"
EVENT_TAG_V2 = b"audit_log:event:v2\0"
FRAME = 0xA2  # the first byte of a packed (version 2) event frame
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


def varint(n):
    """Unsigned LEB128, shortest form."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(v):
    return ((v << 1) ^ (v >> 63)) & ((1 << 64) - 1)


def unzigzag(n):
    return (n >> 1) ^ -(n & 1)


def length(n, packed=False):
    return varint(n) if packed else struct.pack(">I", n)


def text(s, packed=False):
    b = s.encode("utf-8")
    return length(len(b), packed) + b


def opt(v, enc):
    return b"\x00" if v is None else b"\x01" + enc(v)


def enc_json(v, packed=False):
    """The `json` encoding (packed: with varint lengths and counts), with a
    stack of work instead of recursion. Bytes on the stack are already
    encoded (an object's keys)."""
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
            out.append(b"\x03" + text(str(x), packed))
        elif isinstance(x, str):
            out.append(b"\x04" + text(x, packed))
        elif isinstance(x, list):
            out.append(b"\x05" + length(len(x), packed))
            todo.extend(reversed(x))
        elif isinstance(x, dict):
            items = sorted(x.items(), key=lambda kv: kv[0].encode("utf-8"))
            out.append(b"\x06" + length(len(items), packed))
            for k, val in reversed(items):
                todo.append(val)
                todo.append(text(k, packed))
        else:
            raise TypeError(f"not JSON: {type(x).__name__}")
    return b"".join(out)


# ---------------------------------------------------------------------------
# Format v2 storage: records, segments and anchors, read from their bytes.


class Malformed(ValueError):
    """Bytes that are not a canonical encoding."""


_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class Reader:
    """Reads the primitive encodings of FORMAT.md from bytes, checking each."""

    __slots__ = ("b", "pos", "packed")

    def __init__(self, b, packed=False):
        self.b = b
        self.pos = 0
        self.packed = packed  # lengths and counts as varints (a packed body)

    def take(self, n):
        end = self.pos + n
        if end > len(self.b):
            raise Malformed(f"{n} byte(s) wanted at byte {self.pos} of {len(self.b)}")
        s = self.b[self.pos:end]
        self.pos = end
        return s

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def varint(self, limit=64):
        """Unsigned LEB128 in its shortest form, below 2**limit."""
        at, v, shift = self.pos, 0, 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if b < 0x80:
                if (b == 0 and shift > 0) or v >> limit:
                    raise Malformed(f"the varint at byte {at} is not in its shortest form, or too large")
                return v
            shift += 7
            if shift > 63:
                raise Malformed(f"the varint at byte {at} runs past 10 bytes")

    def length(self):
        return self.varint(32) if self.packed else self.u32()

    def raw_text(self):
        at = self.pos
        b = self.take(self.length())
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed(f"text at byte {at} is not UTF-8") from None
        return b

    def text(self):
        return self.raw_text().decode("utf-8")

    def opt(self, read):
        at = self.pos
        marker = self.take(1)[0]
        if marker == 0:
            return None
        if marker == 1:
            return read()
        raise Malformed(f"opt marker {marker:#04x} at byte {at}")

    def json(self, build=False):
        """One `json` item, checked to be canonical (known tags, UTF-8 text,
        numbers that are JSON numbers, object keys strictly increasing in
        byte order), with a stack of its own: no recursion at any depth.
        With build, its value (numbers as Num); otherwise None."""
        # Open containers, innermost last: [items left, is object, last key
        # (bytes), the value being built, its pending key].
        stack = []
        while True:
            at = self.pos
            tag = self.take(1)[0]
            if tag == 0x00:
                value = None
            elif tag == 0x01:
                value = False
            elif tag == 0x02:
                value = True
            elif tag == 0x03:
                n = self.take(self.length())
                if not _JSON_NUMBER.fullmatch(n):
                    raise Malformed(f"number {n[:40]!r} at byte {at} is not a JSON number")
                value = Num(n.decode("ascii")) if build else None
            elif tag == 0x04:
                s = self.raw_text()
                value = s.decode("utf-8") if build else None
            elif tag in (0x05, 0x06):
                count = self.length()
                # An item takes at least 1 byte, a member at least 5 (2 packed:
                # an empty key's length, and a tag).
                if count * ((2 if self.packed else 5) if tag == 0x06 else 1) > len(self.b) - self.pos:
                    raise Malformed(f"a container at byte {at} claims {count} items, more than the bytes left")
                container = ({} if tag == 0x06 else []) if build else None
                stack.append([count, tag == 0x06, None, container, None])
                value = stack  # a marker: nothing to attach yet
            else:
                raise Malformed(f"unknown json tag {tag:#04x} at byte {at}")
            if value is not stack:
                if not stack:
                    return value
                top = stack[-1]
                if build:
                    if top[1]:
                        top[3][top[4]] = value
                    else:
                        top[3].append(value)
            # Close the containers that are complete.
            while stack[-1][0] == 0:
                done = stack.pop()[3]
                if not stack:
                    return done
                top = stack[-1]
                if build:
                    if top[1]:
                        top[3][top[4]] = done
                    else:
                        top[3].append(done)
            # The next item of the innermost open container.
            top = stack[-1]
            top[0] -= 1
            if top[1]:
                at = self.pos
                key = self.raw_text()
                if top[2] is not None and key <= top[2]:
                    raise Malformed(f"object key at byte {at} does not follow the one before it in byte order")
                top[2] = key
                if build:
                    top[4] = key.decode("utf-8")


def decode_event(canonical):
    """An event's canonical encoding, decoded in full (every field read and
    checked, nothing left over). Returns its id, tx_id, tx_seq, table_schema,
    op, where its new_row starts (the last field), and for a PURGE event of
    the log its new_row as a value; with what its hash covers (version 1)."""
    r = Reader(canonical)
    e = {"id": r.i64(), "tx_id": r.u64(), "tx_seq": r.i64()}
    r.i64()  # recorded_at
    r.i64()  # statement_at
    r.text()  # session_user_name
    r.text()  # current_user_name
    e["tag"], e["hashed"] = EVENT_TAG, canonical
    return rest_of_event(r, e)


def decode_packed(frame, first_event, tx_id):
    """A packed (version 2) frame, its ids from its record's first event and
    tx_id, decoded in full as decode_event decodes a canonical encoding;
    new_row_at is in the body. The frame's own bytes are kept ("frame"),
    and its body ("body")."""
    r = Reader(frame)
    if r.take(1)[0] != FRAME:
        raise Malformed("a packed frame starts with 0xA2")
    # The id's distance wraps around on 64 bits, as FORMAT.md says.
    delta = unzigzag(r.varint())
    e = {"id": (first_event + delta + (1 << 63)) % (1 << 64) - (1 << 63), "tx_id": tx_id, "tx_seq": r.varint()}
    if e["tx_seq"] >= (1 << 63):
        raise Malformed("a tx_seq of 2**63 or more")
    n = r.varint()
    body = r.take(n)
    if r.pos != len(frame):
        raise Malformed(f"{len(frame) - r.pos} byte(s) after the frame's body")
    b = Reader(body, packed=True)
    b.i64()  # recorded_at
    b.varint()  # recorded_at - statement_at, zigzag
    session = b.raw_text()
    at = b.pos
    marker = b.take(1)[0]
    if marker not in (0, 1) or (marker == 1 and b.raw_text() == session):
        raise Malformed(f"the current user at byte {at} is not in its one form")
    e["tag"] = EVENT_TAG_V2
    e["hashed"] = i64(e["id"]) + u64(tx_id) + i64(e["tx_seq"]) + body
    e["frame"], e["body"] = frame, body
    return rest_of_event(b, e)


def rest_of_event(r, e):
    """The fields after the users, alike in both versions but for how
    lengths are spelt."""
    r.opt(r.text)  # application_name
    r.opt(r.text)  # client_addr
    r.opt(r.json)  # context
    e["table_schema"] = r.text()
    r.text()  # table_name
    e["op"] = r.text()
    r.opt(r.json)  # old_row
    e["new_row_at"] = r.pos
    purge = e["table_schema"] == "audit_log" and e["op"] == "PURGE"
    new_row = r.opt(lambda: r.json(build=purge))
    if r.pos != len(r.b):
        raise Malformed(f"{len(r.b) - r.pos} byte(s) after the event's last field")
    e["purge"] = new_row if purge else None
    return e


def packed_frame(id_delta, tx_seq, body):
    return bytes([FRAME]) + varint(zigzag(id_delta)) + varint(tx_seq) + varint(len(body)) + body


def split(payload):
    """A payload's events, as stored: each a u32 length and that many bytes
    (version 1: the canonical encoding), or a packed frame (version 2, its
    whole bytes)."""
    out, pos = [], 0
    while pos < len(payload):
        if payload[pos] == FRAME:
            r = Reader(payload)
            r.pos = pos + 1
            r.varint()
            r.varint()
            n = r.varint()
            if r.pos + n > len(payload):
                raise Malformed(f"the frame at byte {pos} ({n} bytes) runs past the payload's end ({len(payload)})")
            out.append(payload[pos:r.pos + n])
            pos = r.pos + n
            continue
        if pos + 4 > len(payload):
            raise Malformed(f"a length prefix at byte {pos} runs past the payload's end ({len(payload)})")
        n = struct.unpack_from(">I", payload, pos)[0]
        if pos + 4 + n > len(payload):
            raise Malformed(f"the event at byte {pos} ({n} bytes) runs past the payload's end ({len(payload)})")
        out.append(payload[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def join(events):
    return b"".join(c if c[:1] == bytes([FRAME]) else struct.pack(">I", len(c)) + c for c in events)


def decode_stored(c, rec):
    """One event as split() gives it, of the record rec."""
    if c[:1] == bytes([FRAME]):
        return decode_packed(c, rec["first_event"], rec["tx_id"])
    return decode_event(c)


def record_events(rec, segs):
    """A record's events in tx_seq order: [(canonical, decoded, where)],
    where = ("payload", i) or ("segment", part, i). Its segments' events, in
    order of part, are merged by tx_seq with its payload's (ties to the
    segment), as FORMAT.md says. A writer makes each segment a run of
    consecutive tx_seq starting at its part, but no hash covers part or the
    split between segments and payload: part only orders the segments, and
    the chain of the merged events tells whether any is out of place."""
    spilled = []
    for s in segs:
        evs = split(s["payload"])
        if not evs:
            raise Malformed(f"segment {s['first_event']}/{s['part']} holds no event")
        for i, c in enumerate(evs):
            spilled.append((c, decode_stored(c, rec), ("segment", s["part"], i)))
    kept = [(c, decode_stored(c, rec), ("payload", i)) for i, c in enumerate(split(rec["payload"]))]
    out, i, j = [], 0, 0
    while i < len(spilled) or j < len(kept):
        if j < len(kept) and (i == len(spilled) or kept[j][1]["tx_seq"] < spilled[i][1]["tx_seq"]):
            out.append(kept[j])
            j += 1
        else:
            out.append(spilled[i])
            i += 1
    return out


def digest(rec, events):
    """Check a record's events against its columns, as docs/FORMAT.md
    ("What a verifier checks", 1) lists; return the last event's hash."""
    h, last = ZERO, None
    for pos, (c, d, _) in enumerate(events, 1):
        if d["tx_seq"] != pos:
            raise Malformed(f"event {d['id']} is at tx_seq {d['tx_seq']} in position {pos}")
        if d["tx_id"] != rec["tx_id"]:
            raise Malformed(f"event {d['id']} belongs to tx {d['tx_id']}")
        if last is not None and d["id"] <= last:
            raise Malformed(f"event {d['id']} follows event {last}")
        last = d["id"]
        h = hashlib.sha256(d["tag"] + h + d["hashed"]).digest()
    if not events:
        raise Malformed("it holds no event")
    if len(events) != rec["event_count"]:
        raise Malformed(f"it holds {len(events)} event(s), not {rec['event_count']}")
    if (events[0][1]["id"], last) != (rec["first_event"], rec["last_event"]):
        raise Malformed(f"its events run {events[0][1]['id']}..{last}, not {rec['first_event']}..{rec['last_event']}")
    return h


def record_link_hash(rec, prev, last_event_hash):
    canonical = (
        i64(rec["chain_id"]) + i64(rec["seq"]) + u64(rec["tx_id"]) + i64(rec["event_count"])
        + i64(rec["first_event"]) + i64(rec["last_event"]) + last_event_hash + i64(rec["committed_at"])
    )
    return hashlib.sha256(LINK_TAG + prev + canonical).digest()


def claims(purge_row):
    """The anchors a PURGE event's new_row records: {(chain, seq, link_hash)}."""
    out = set()
    anchors = purge_row.get("anchors") if isinstance(purge_row, dict) else None
    for a in anchors if isinstance(anchors, list) else []:
        try:
            out.add((int(a["chain"]), int(a["seq"]), bytes.fromhex(a["link_hash"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def name(rec):
    return (f"record {rec['chain_id']}/{rec['seq']} (tx {rec['tx_id']}, "
            f"events {rec['first_event']}..{rec['last_event']})")


class Problem(Exception):
    pass


def load_dump(lines):
    """Records by (chain_id, seq), segments by first_event (in order of
    part) and anchors by chain, from dump_log.sql's lines."""
    records, segments, anchors = [], {}, {}
    for line in lines:
        rec = json.loads(line)
        kind = rec.pop("kind", None)
        if kind == "record":
            for k in ("chain_id", "seq", "tx_id", "first_event", "last_event", "event_count",
                      "committed_at", "segments"):
                rec[k] = int(rec[k])
            rec["link_hash"] = bytes.fromhex(rec["link_hash"])
            rec["payload"] = bytes.fromhex(rec["payload"])
            records.append(rec)
        elif kind == "segment":
            rec["first_event"], rec["part"] = int(rec["first_event"]), int(rec["part"])
            rec["payload"] = bytes.fromhex(rec["payload"])
            segments.setdefault(rec["first_event"], []).append(rec)
        elif kind == "anchor":
            for k in ("chain_id", "seq", "last_event"):
                rec[k] = int(rec[k])
            rec["link_hash"] = bytes.fromhex(rec["link_hash"])
            if rec["chain_id"] in anchors:
                raise ValueError(f"two anchors for chain {rec['chain_id']}")
            anchors[rec["chain_id"]] = rec
        else:
            raise ValueError(f"a dump line of kind {kind!r}: pg_test/lib/dump_log.sql dumps the raw "
                             "storage of format v2 (record, segment, anchor)")
    records.sort(key=lambda r: (r["chain_id"], r["seq"]))
    for segs in segments.values():
        segs.sort(key=lambda s: s["part"])
    return records, segments, anchors


def segments_of(rec, segments):
    """A record's segments. Its segments column only says whether it has
    any (FORMAT.md): repair_segments() can leave more rows than it counts."""
    if not rec["segments"]:
        return []
    segs = segments.get(rec["first_event"], [])
    if not segs:
        raise Malformed(f"it spilled {rec['segments']} segment(s), none are stored")
    return segs


def verify_dump(records, segments, anchors, given=()):
    """The checks of FORMAT.md on records in (chain_id, seq) order. given:
    anchors proven elsewhere, {(chain, seq, link_hash)} (a continuation's,
    which the export before it ends at); any other anchor must be recorded
    by a PURGE event."""
    # 1. Each record on its own: its events decoded and hashed, checked
    # against its columns; the anchors its PURGE events record.
    digests, claimed, ids, n_events = [], set(given), set(), 0
    for rec in records:
        try:
            evs = record_events(rec, segments_of(rec, segments))
            digests.append(digest(rec, evs))
        except Malformed as m:
            digests.append(m)
            continue
        n_events += len(evs)
        for _, d, _ in evs:
            if d["id"] in ids:
                raise Problem(f"event {d['id']} of {name(rec)} is stored twice (event_inserted)")
            ids.add(d["id"])
            if d["purge"] is not None:
                claimed |= claims(d["purge"])
    # 2. Each chain, in seq order, from its anchor: seq runs on, and each
    # link hashes to the stored link_hash, chained on the stored hash before.
    chain = None
    for rec, d in zip(records, digests):
        if rec["chain_id"] != chain:
            chain = rec["chain_id"]
            a = anchors.get(chain)
            prev_seq, prev = (a["seq"], a["link_hash"]) if a else (0, ZERO)
            unproven = a is not None and (a["chain_id"], a["seq"], a["link_hash"]) not in claimed
        if rec["seq"] > prev_seq + 1:
            raise Problem(f"chain {chain} lacks records {prev_seq + 1}..{rec['seq'] - 1} "
                          f"before {name(rec)} (link_missing)")
        if rec["seq"] <= prev_seq:
            raise Problem(f"chain {chain} repeats seq {rec['seq']}: {name(rec)} (link_changed)")
        if isinstance(d, Malformed):
            raise Problem(f"{name(rec)}: {d} (content_changed)")
        if record_link_hash(rec, prev, d) != rec["link_hash"]:
            if unproven:
                raise Problem(f"{name(rec)} does not hash to its stored link_hash when chained on the anchor "
                              f"it continues (seq {prev_seq}), which no PURGE event records (link_broken)")
            raise Problem(f"{name(rec)} does not hash to its stored link_hash {rec['link_hash'].hex()[:12]}… "
                          f"when chained on {prev.hex()[:12]}…, the stored hash before it (content_changed)")
        prev_seq, prev, unproven = rec["seq"], rec["link_hash"], False
    # 3. No transaction twice; every anchor recorded by a PURGE event.
    # (Segments that no record counts are not part of the log: those of a
    # prepared transaction not yet linked, for one.)
    keys = {}
    for rec in records:
        if rec["first_event"] in keys:
            raise Problem(f"{name(rec)} and {name(keys[rec['first_event']])} are one transaction, "
                          "recorded twice (event_inserted)")
        keys[rec["first_event"]] = rec
    for a in anchors.values():
        if (a["chain_id"], a["seq"], a["link_hash"]) not in claimed:
            raise Problem(f"chain {a['chain_id']} starts from an anchor at seq {a['seq']} "
                          "that no PURGE event records (anchor_unproven)")
    return n_events, len(records)


def rewrite_dump(records, segments, anchors, event_id, new_row, whole_chain):
    """SQL for a forgery of the storage: re-encode one event with another
    new_row, recompute its record's link_hash (and with whole_chain those of
    every later record of its chain)."""
    found = None
    for k, rec in enumerate(records):
        if rec["first_event"] <= event_id <= rec["last_event"]:
            evs = record_events(rec, segments_of(rec, segments))
            hit = [x for x in evs if x[1]["id"] == event_id]
            if hit:
                found = (k, rec, evs, hit[0])
                break
    if found is None:
        raise ValueError(f"no record holds event {event_id}")
    k, rec, evs, (canonical, d, where) = found
    if "body" in d:
        body = d["body"][:d["new_row_at"]] + b"\x01" + enc_json(parse_json(new_row), packed=True)
        forged = packed_frame(d["id"] - rec["first_event"], d["tx_seq"], body)
    else:
        forged = canonical[:d["new_row_at"]] + b"\x01" + enc_json(parse_json(new_row))
    sql = []
    if where[0] == "payload":
        kept = split(rec["payload"])
        kept[where[1]] = forged
        rec["payload"] = join(kept)
    else:
        seg = next(s for s in segments[rec["first_event"]] if s["part"] == where[1])
        spilled = split(seg["payload"])
        spilled[where[2]] = forged
        seg["payload"] = join(spilled)
        sql.append(f"UPDATE audit_log.segments SET payload = '\\x{seg['payload'].hex()}' "
                   f"WHERE first_event = {seg['first_event']} AND part = {seg['part']};")
    later = [r for r in records[k:] if r["chain_id"] == rec["chain_id"]]
    if not whole_chain:
        later = later[:1]
    if rec["seq"] > 1:
        before = [r for r in records if r["chain_id"] == rec["chain_id"] and r["seq"] == rec["seq"] - 1]
        a = anchors.get(rec["chain_id"])
        if before:
            prev = before[0]["link_hash"]
        elif a is not None and a["seq"] == rec["seq"] - 1:
            prev = a["link_hash"]
        else:
            raise ValueError(f"nothing before {name(rec)} to chain it on")
    else:
        prev = ZERO
    for r in later:
        last_hash = digest(r, record_events(r, segments_of(r, segments)))
        r["link_hash"] = record_link_hash(r, prev, last_hash)
        prev = r["link_hash"]
        payload = f"payload = '\\x{r['payload'].hex()}', " if r is rec and where[0] == "payload" else ""
        sql.append(f"UPDATE audit_log.records SET {payload}link_hash = '\\x{r['link_hash'].hex()}' "
                   f"WHERE chain_id = {r['chain_id']} AND seq = {r['seq']};")
    print("\n".join(sql))
    return 0


# ---------------------------------------------------------------------------
# An export (audit_log.export.v1): the logical form, events and links.


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
    h = hashlib.sha256(EVENT_TAG + prev + canonical).digest()
    if h.hex() == e["hash"]:
        return h
    # The logical form does not say how the record stored the event: its
    # stated hash is its own if it is the version 2 hash of its packed body.
    rows_v2 = e["rows_v2"]
    pt = lambda s: text(s, packed=True)  # noqa: E731
    apart = (e["recorded_at"] - e["statement_at"] + (1 << 63)) % (1 << 64) - (1 << 63)
    session, current = e["session_user_name"], e["current_user_name"]
    body = (
        i64(e["recorded_at"]) + varint(zigzag(apart)) + pt(session)
        + (b"\x00" if current == session else b"\x01" + pt(current))
        + opt(e["application_name"], pt) + opt(e["client_addr"], pt)
        + opt(rows_v2["context"], bytes)
        + pt(e["table_schema"]) + pt(e["table_name"]) + pt(e["op"])
        + opt(rows_v2["old_row"], bytes) + opt(rows_v2["new_row"], bytes)
    )
    h2 = hashlib.sha256(EVENT_TAG_V2 + prev + i64(e["id"]) + u64(e["tx_id"]) + i64(e["tx_seq"]) + body).digest()
    return h2 if h2.hex() == e["hash"] else h


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


def from_export(rec):
    """An event line of an export: jsonb columns as JSON, absent for SQL NULL."""
    e = {k: rec[k] for k in ("id", "tx_id", "tx_seq", "tx_first", "application_name", "client_addr",
                             "table_schema", "table_name", "op", "prev_hash", "hash")}
    e["recorded_at"] = micros(rec["recorded_at"])
    e["statement_at"] = micros(rec["statement_at"])
    e["session_user_name"] = rec["session_user"]
    e["current_user_name"] = rec["current_user"]
    e["rows"] = {c: enc_json(rec[c]) if c in rec else None for c in ROWS}
    e["rows_v2"] = {c: enc_json(rec[c], packed=True) if c in rec else None for c in ROWS}
    return e


def load_export(lines):
    """Events by (tx_first, tx_seq, id), links by (chain_id, seq), and where
    each chain starts: {chain: (seq, link_hash)} (the header's anchors)."""
    events, links, starts = [], [], {}
    for n, line in enumerate(lines, 1):
        if not line.startswith('{"type":'):
            raise ValueError("an export line that does not start with its type")
        # Export lines hold row values as JSON, at any depth.
        rec = parse_json(line)
        kind = rec.pop("type")
        # (Not a records export whose header was edited, or moved: its record
        # lines must not pass for an empty logical export.)
        if n == 1 and (kind != "header" or rec.get("format") != "audit_log.export.v1"):
            raise ValueError("the first line is not the header of a logical export (audit_log.export.v1)")
        if kind == "header":
            starts = {a["chain"]: (int(a["seq"]), bytes.fromhex(a["link_hash"])) for a in rec["anchors"]}
        elif kind == "event":
            events.append(from_export(rec))
        elif kind == "link":
            rec["committed_at"] = micros(rec["committed_at"])
            links.append(rec)
        elif kind != "end":
            raise ValueError(f"line {n}: a line of type {kind!r} in a logical export")
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


def verify_export(events, links, starts):
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
    print(f"independent verifier: {len(events)} events and {len(links)} links of the export recompute")
    return 0


# ---------------------------------------------------------------------------
# A records export (audit_log.export.v2): the header and end lines of an
# export, and between them each transaction's record as stored, its payload
# and segments in base64: the raw storage that dump_log.sql prints.

RECORDS_FORMAT = "audit_log.export.v2"
HEADER_KEYS = {"type", "format", "exported_at", "snapshot", "anchors"}
HEADER_OPTIONAL = {"database", "system_identifier", "continues"}
RECORD_KEYS = {"type", "chain_id", "seq", "tx_id", "first_event", "last_event", "event_count",
               "committed_at", "link_hash", "segments", "payload"}
HEAD_KEYS = {"chain", "seq", "link_hash", "last_event"}
END_KEYS = {"type", "events", "links", "heads", "sha256"}
I32 = (-(1 << 31), (1 << 31) - 1)
I64 = (-(1 << 63), (1 << 63) - 1)
U64 = (0, (1 << 64) - 1)
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def members(obj, keys, what, optional=frozenset()):
    """obj is a JSON object with the members keys (and maybe optional), no others."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a JSON object")
    missing, unknown = keys - obj.keys(), obj.keys() - keys - optional
    if missing or unknown:
        raise ValueError(f"{what}: " + "; ".join(
            x for x in (missing and f"missing {sorted(missing)}", unknown and f"unknown {sorted(unknown)}") if x))
    return obj


def integer(v, what, bounds=I64):
    """A JSON number that is an integer within bounds (not a string of digits)."""
    if not isinstance(v, Num) or not _INTEGER.fullmatch(v):
        raise ValueError(f"{what} {v!r} is not an integer")
    n = int(v)
    if not bounds[0] <= n <= bounds[1]:
        raise ValueError(f"{what} {n} is out of range")
    return n


def string(v, what):
    if type(v) is not str:
        raise ValueError(f"{what} {v!r} is not a string")
    return v


def hex_bytes(v, what):
    """Lowercase hex, as the exporter writes hashes. (A stored hash of
    another length than 32 bytes is kept: no link hashes to it.)"""
    if not _HEX.fullmatch(string(v, what)):
        raise ValueError(f"{what} {v[:80]!r} is not lowercase hex")
    return bytes.fromhex(v)


def base64_bytes(v, what):
    """Base64 of the standard alphabet with padding, as the exporter writes
    it: no other spelling of the same bytes is taken."""
    try:
        b = base64.b64decode(string(v, what), validate=True)
    except binascii.Error as e:
        raise ValueError(f"{what} is not base64: {e}") from None
    if base64.b64encode(b).decode("ascii") != v:
        raise ValueError(f"{what} is not base64 as the exporter writes it (standard alphabet, padded)")
    return b


def chain_head(h, what):
    """A {"chain","seq","link_hash","last_event"} object, in the form of a
    dump's anchor."""
    members(h, HEAD_KEYS, what)
    return {"chain_id": integer(h["chain"], f"{what}: chain", I32), "seq": integer(h["seq"], f"{what}: seq"),
            "link_hash": hex_bytes(h["link_hash"], f"{what}: link_hash"),
            "last_event": integer(h["last_event"], f"{what}: last_event")}


def first_tx_seq(payload):
    """A segment's part, which a records export leaves out: the tx_seq of
    its first event. 0 if that event is unreadable: record_events reports
    the segment then, before it looks at the part."""
    try:
        first = split(payload)[0]
        if first[:1] == bytes([FRAME]):
            return decode_packed(first, 0, 0)["tx_seq"]
        return decode_event(first)["tx_seq"]
    except (struct.error, Malformed, IndexError):
        return 0


def load_records(data):
    """A records export's bytes as load_dump's records (in file order),
    segments and anchors (the header's), and the anchors proven by the file
    before it (a continuation's, {(chain, seq, link_hash)}); what the file
    states about itself is checked on the way (Problem)."""
    if not data.endswith(b"\n"):
        raise Problem("the export does not end with a newline: it is incomplete or its tail was cut off")
    digest = hashlib.sha256()
    records, segments, anchors, given, end = [], {}, {}, set(), None
    for n, raw in enumerate(data[:-1].split(b"\n"), 1):
        try:
            if end is not None:
                raise ValueError("a line after the end line")
            if not raw.startswith(b'{"type":'):
                raise ValueError("a line that does not start with its type")
            # Any line may have been replaced by deep JSON: no recursion.
            obj = parse_json(raw.decode("utf-8"))
            kind = obj.get("type") if isinstance(obj, dict) else None
            if n == 1:
                read_header(obj, kind, RECORDS_FORMAT, anchors, given)
            elif kind == "record":
                members(obj, RECORD_KEYS, "the record")
                rec = {"chain_id": integer(obj["chain_id"], "chain_id", I32),
                       "seq": integer(obj["seq"], "seq"), "tx_id": integer(obj["tx_id"], "tx_id", U64)}
                for k in ("first_event", "last_event", "event_count"):
                    rec[k] = integer(obj[k], k)
                rec["committed_at"] = micros(string(obj["committed_at"], "committed_at"))
                rec["link_hash"] = hex_bytes(obj["link_hash"], "link_hash")
                rec["payload"] = base64_bytes(obj["payload"], "payload")
                if not isinstance(obj["segments"], list):
                    raise ValueError("segments is not a list")
                spilled = [base64_bytes(b, f"segment {i}") for i, b in enumerate(obj["segments"], 1)]
                add_record(rec, spilled, records, segments)
            elif kind == "end":
                end = read_end(obj, raw)
                continue
            else:
                raise ValueError(f"a line of type {kind!r}: a records export holds record lines and an end line")
        except ValueError as e:
            raise Problem(f"line {n}: {e}") from None
        digest.update(raw + b"\n")
    check_end(end, digest, records, anchors)
    return records, segments, anchors, given


def read_header(obj, kind, form, anchors, given):
    """An export's header (as parsed JSON) of format form: its anchors into
    anchors, and into given if it is a continuation's."""
    if kind != "header":
        raise ValueError("the first line is not the header")
    members(obj, HEADER_KEYS, "the header", HEADER_OPTIONAL)
    if obj["format"] != form:
        raise ValueError(f"format {obj['format']!r}, not {form!r}")
    continues = obj.get("continues", False)
    if not isinstance(continues, bool) or not isinstance(obj["anchors"], list):
        raise ValueError("the header's continues is not true or false, or its anchors not a list")
    for i, h in enumerate(obj["anchors"], 1):
        a = chain_head(h, f"anchor {i} of the header")
        if a["chain_id"] in anchors:
            raise ValueError(f"two anchors for chain {a['chain_id']}")
        anchors[a["chain_id"]] = a
        if continues:
            given.add((a["chain_id"], a["seq"], a["link_hash"]))


def add_record(rec, spilled, records, segments):
    """A record of an export, with its segments' bytes, in file order."""
    rec["segments"] = len(spilled)
    if records and (records[-1]["chain_id"], records[-1]["seq"]) >= (rec["chain_id"], rec["seq"]):
        raise ValueError(f"{name(rec)} follows {name(records[-1])}: records out of (chain_id, seq) order")
    # Segments are found by first_event: a second record of one
    # transaction must not have its segments counted with the first's.
    first = rec["first_event"]
    if first in segments:
        other = next(r for r in records if r["first_event"] == first)
        raise Problem(f"{name(rec)} and {name(other)} are one transaction, recorded twice (event_inserted)")
    # In the file's order, which is the order of part.
    segments[first] = [{"first_event": first, "part": first_tx_seq(b), "payload": b} for b in spilled]
    records.append(rec)


def read_end(obj, raw):
    """An end line (parsed, and its bytes without the newline)."""
    members(obj, END_KEYS, "the end line")
    if obj["type"] != "end":
        raise ValueError(f"a line of type {obj['type']!r} where the end line was expected")
    end = {"events": integer(obj["events"], "the end line's events", U64),
           "links": integer(obj["links"], "the end line's links", U64),
           "sha256": string(obj["sha256"], "the end line's sha256")}
    if not isinstance(obj["heads"], list):
        raise ValueError("the end line's heads are not a list")
    end["heads"] = [chain_head(h, f"head {i} of the end line") for i, h in enumerate(obj["heads"], 1)]
    # The exporter's own spelling: the end line is not under the digest.
    spelled = json.dumps({"type": "end", "events": end["events"], "links": end["links"], "heads": [
        {"chain": h["chain_id"], "seq": h["seq"], "link_hash": h["link_hash"].hex(),
         "last_event": h["last_event"]} for h in end["heads"]], "sha256": end["sha256"]},
        separators=(",", ":"))
    if spelled.encode("utf-8") != raw:
        raise ValueError("the end line is not as the exporter writes it")
    return end


def check_end(end, digest, records, anchors):
    """The end line against the file: the digest, the counts and the heads."""
    if end is None:
        raise Problem("no end line: the export is incomplete or its tail was cut off")
    if digest.hexdigest() != end["sha256"]:
        raise Problem(f"the content hashes to {digest.hexdigest()[:12]}… but the end line records "
                      f"{end['sha256'][:12]}…")
    events = sum(r["event_count"] for r in records)
    if (end["events"], end["links"]) != (events, len(records)):
        raise Problem(f"the end line counts {end['events']} events and {end['links']} links; "
                      f"the records hold {events} and {len(records)}")
    heads = {c: (a["seq"], a["link_hash"], a["last_event"]) for c, a in anchors.items()}
    heads.update({r["chain_id"]: (r["seq"], r["link_hash"], r["last_event"]) for r in records})
    stated = [(h["chain_id"], (h["seq"], h["link_hash"], h["last_event"])) for h in end["heads"]]
    if [c for c, _ in stated] != sorted(heads) or dict(stated) != heads:
        raise Problem("the end line's chain heads differ from the file's last records (or anchors), "
                      "in order of chain")


# A binary records export (audit_log.export.v3): the records of a records
# export in binary frames between the same header and end lines, larger
# payloads as LZ4 blocks.

BINARY_FORMAT = "audit_log.export.v3"
MAX_BLOB = 1 << 30
FRAME_HEAD = struct.Struct(">iqQqqqq32sI")


def lz4_block(src, size):
    """Decompress an LZ4 block (the block format alone: sequences of a
    token, literals, a 2-byte little-endian offset and a match) that must
    come to exactly size bytes."""
    out, i, n = bytearray(), 0, len(src)

    def length(base, i):
        if base != 15:
            return base, i
        while True:
            if i >= n:
                raise ValueError("an LZ4 block ends within a length")
            b = src[i]
            i += 1
            base += b
            if b != 255:
                return base, i

    while True:
        if i >= n:
            raise ValueError("an LZ4 block ends where a sequence was due")
        token = src[i]
        i += 1
        lit, i = length(token >> 4, i)
        if i + lit > n or len(out) + lit > size:
            raise ValueError("an LZ4 block's literals run past its end")
        out += src[i:i + lit]
        i += lit
        if i == n:
            break  # the last sequence has literals only
        if i + 2 > n:
            raise ValueError("an LZ4 block ends within an offset")
        offset = src[i] | src[i + 1] << 8
        i += 2
        match, i = length(token & 15, i)
        match += 4
        if offset == 0 or offset > len(out) or len(out) + match > size:
            raise ValueError("an LZ4 block's match reaches outside its output")
        start = len(out) - offset
        for k in range(match):  # a match may overlap what it copies
            out.append(out[start + k])
    if len(out) != size:
        raise ValueError(f"an LZ4 block decompresses to {len(out)} bytes, not the {size} it claims")
    return bytes(out)


def load_binary(data):
    """A binary export's bytes as load_records gives a records export's."""
    digest = hashlib.sha256()
    records, segments, anchors, given = [], {}, {}, set()
    nl = data.find(b"\n")
    if nl < 0:
        raise Problem("no header line")
    try:
        header = parse_json(data[:nl].decode("utf-8"))
        read_header(header, header.get("type") if isinstance(header, dict) else None, BINARY_FORMAT,
                    anchors, given)
    except ValueError as e:
        raise Problem(f"the header: {e}") from None
    at = nl + 1

    def take(k, what):
        nonlocal at
        if at + k > len(data):
            raise ValueError(f"the file ends within {what}")
        at += k
        return data[at - k:at]

    while True:
        frame = at
        try:
            kind = take(1, "a frame")
            if kind == b"\n":
                break
            if kind != b"R":
                raise ValueError(f"a frame starting with byte 0x{kind[0]:02x}")
            (chain_id, seq, tx_id, first, last, count, committed_at, link_hash,
             n_segments) = FRAME_HEAD.unpack(take(FRAME_HEAD.size, "a record frame"))
            blobs = []
            for _ in range(n_segments + 1):
                method, stored, raw = struct.unpack(">BII", take(9, "a record frame"))
                if stored > MAX_BLOB or raw > MAX_BLOB:
                    raise ValueError(f"a blob of {stored} bytes standing for {raw}: past the limit")
                body = take(stored, "a record frame")
                if method == 0 and stored == raw:
                    blobs.append(body)
                elif method == 1:
                    blobs.append(lz4_block(body, raw))
                else:
                    raise ValueError(f"a blob of method {method}, {stored} bytes standing for {raw}")
            rec = {"chain_id": chain_id, "seq": seq, "tx_id": tx_id, "first_event": first, "last_event": last,
                   "event_count": count, "committed_at": committed_at, "link_hash": link_hash,
                   "payload": blobs.pop()}
            add_record(rec, blobs, records, segments)
        except ValueError as e:
            raise Problem(f"byte {frame}: {e}") from None
    digest.update(data[:at])
    raw = data[at:]
    try:
        if not raw.endswith(b"\n") or b"\n" in raw[:-1]:
            raise ValueError("the end line is not the file's last line, ending in a newline")
        end = read_end(parse_json(raw[:-1].decode("utf-8")), raw[:-1])
    except ValueError as e:
        raise Problem(f"byte {at}: {e}") from None
    check_end(end, digest, records, anchors)
    return records, segments, anchors, given


def verify_export_of_records(load, what, data):
    """A records export (load_records) or a binary one (load_binary)."""
    try:
        n_events, n_records = verify_dump(*load(data))
    except Problem as p:
        print(p)
        return 1
    print(f"independent verifier: {n_events} events and {n_records} records of the {what} recompute")
    return 0



# ---------------------------------------------------------------------------
# Merkle trees (FORMAT.md, "Merkle trees"): RFC 9162 section 2.1, written
# from the RFC's own definitions (recursive MTH, PATH and PROOF, and the
# verification algorithms of 2.1.3.2 and 2.1.4.2).

LEAF_TAG = b"audit_log:leaf:v1\0"


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves):
    """MTH over leaf hashes (each already leaf_hash'ed)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m, leaves, b):
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return subproof(m, leaves[:k], b) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def inclusion_root(index, size, leaf, proof):
    """RFC 9162 2.1.3.2, returning the root the proof leads to (None if it
    cannot be a proof for that index and size)."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def consistency_holds(first, second, first_root, second_root, proof):
    """RFC 9162 2.1.4.2."""
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    proof = list(proof)
    if first & (first - 1) == 0:
        proof.insert(0, first_root)
    if not proof:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def event_hashes(events):
    h, out = ZERO, []
    for _, d, _ in events:
        h = hashlib.sha256(d["tag"] + h + d["hashed"]).digest()
        out.append(h)
    return out


def record_leaf(link_hash, hashes):
    """A record's leaf: over its link hash and the MTH of its event hashes."""
    return leaf_hash(LEAF_TAG + link_hash + mth([leaf_hash(h) for h in hashes]))


def check_trees(records, segments, checkpoint):
    """Each tree of a checkpoint (format v2) recomputed from a dump of a log
    never purged: the leaves of records 1..size of its chain."""
    leaves = {}
    for rec in records:
        evs = record_events(rec, segments_of(rec, segments))
        leaves.setdefault(rec["chain_id"], []).append(record_leaf(rec["link_hash"], event_hashes(evs)))
    for t in checkpoint["trees"]:
        got = leaves.get(t["chain"], [])
        if len(got) < t["size"]:
            raise Problem(f"chain {t['chain']} has {len(got)} records, the checkpoint's tree {t['size']}")
        if mth(got[:t["size"]]).hex() != t["root"]:
            raise Problem(f"chain {t['chain']}'s first {t['size']} records do not give the checkpoint's root")
    return len(checkpoint["trees"])


def check_proof(proof, checkpoint):
    """An event's proof (audit_log.prove()) against a checkpoint (format v2):
    returns the event's id. Raises Problem if it does not hold."""
    if proof.get("format") != "audit_log.proof.v1":
        raise Problem(f"proof format {proof.get('format')!r} is not audit_log.proof.v1")
    rec = dict(proof["record"])
    for h in [proof["prev_event_hash"], rec["prev_link_hash"], rec["last_event_hash"], rec["link_hash"],
              proof["tree"]["root"], *proof["path"], *proof["event_path"]]:
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise Problem("a hash is not 64 lowercase hex digits")
    stored = bytes.fromhex(proof["event"])
    version = proof.get("event_hash_version", 1)
    if version == 1:
        d = decode_event(stored)
    elif version == 2:
        d = decode_packed(stored, rec["first_event"], rec["tx_id"])
    else:
        raise Problem(f"event_hash_version {version!r} is not 1 or 2")
    if d["id"] != proof["event_id"] or d["tx_id"] != rec["tx_id"]:
        raise Problem("the event is not the one named, or not of the record's transaction")
    if not rec["first_event"] <= d["id"] <= rec["last_event"] or not 1 <= d["tx_seq"] <= rec["event_count"]:
        raise Problem("the event is outside its record")
    prev = bytes.fromhex(proof["prev_event_hash"])
    if (d["tx_seq"] == 1) != (prev == ZERO):
        raise Problem("prev_event_hash is zero exactly for tx_seq 1")
    h = hashlib.sha256(d["tag"] + prev + d["hashed"]).digest()
    last = bytes.fromhex(rec["last_event_hash"])
    if d["tx_seq"] == rec["event_count"] and h != last:
        raise Problem("the last event's hash is not last_event_hash")
    events_root = inclusion_root(d["tx_seq"] - 1, rec["event_count"], leaf_hash(h),
                                 [bytes.fromhex(x) for x in proof["event_path"]])
    if events_root is None:
        raise Problem("event_path has the wrong length")
    prev_link = bytes.fromhex(rec["prev_link_hash"])
    if (rec["seq"] == 1) != (prev_link == ZERO):
        raise Problem("prev_link_hash is zero exactly for seq 1")
    rec["chain_id"] = rec["chain"]
    link = bytes.fromhex(rec["link_hash"])
    if record_link_hash(rec, prev_link, last) != link:
        raise Problem("the record's link hash does not recompute")
    tree = proof["tree"]
    if tree["chain"] != rec["chain"] or not 1 <= rec["seq"] <= tree["size"]:
        raise Problem("the record is not a leaf of the proof's tree")
    root = inclusion_root(rec["seq"] - 1, tree["size"], leaf_hash(LEAF_TAG + link + events_root),
                          [bytes.fromhex(x) for x in proof["path"]])
    if root is None or root.hex() != tree["root"]:
        raise Problem("the path does not lead to the tree's root")
    if not any(t == tree for t in checkpoint.get("trees", [])):
        raise Problem(f"the checkpoint does not hold chain {tree['chain']}'s tree of {tree['size']} records")
    return d["id"]


def check_consistency(c, old):
    """audit_log.consistency()'s answer against the old checkpoint."""
    if c.get("format") != "audit_log.consistency.v1":
        raise Problem(f"format {c.get('format')!r} is not audit_log.consistency.v1")
    new = {t["chain"]: t for t in c["checkpoint"]["trees"]}
    proofs = {p["chain"]: p for p in c["proofs"]}
    # Every chain of either checkpoint has a tree: one without is checked by nothing.
    for cp, which in ((old, "old"), (c["checkpoint"], "new")):
        trees = {t["chain"] for t in cp["trees"]}
        for h in cp["chains"]:
            if h["chain"] not in trees:
                raise Problem(f"chain {h['chain']} has no tree in the {which} checkpoint")
    for o in old["trees"]:
        n, p = new.get(o["chain"]), proofs.get(o["chain"])
        if n is None or p is None or (p["old_size"], p["new_size"]) != (o["size"], n["size"]):
            raise Problem(f"chain {o['chain']}: no proof from the old tree to the new one")
        if not consistency_holds(o["size"], n["size"], bytes.fromhex(o["root"]), bytes.fromhex(n["root"]),
                                 [bytes.fromhex(x) for x in p["path"]]):
            raise Problem(f"chain {o['chain']}'s tree of {n['size']} does not extend the old one of {o['size']}")
    # Each new head is its tree's last leaf.
    leaves = {h["chain"]: h for h in c["heads"]}
    for h in c["checkpoint"]["chains"]:
        t, l = new[h["chain"]], leaves.get(h["chain"])
        leaf = l and leaf_hash(LEAF_TAG + bytes.fromhex(h["link_hash"]) + bytes.fromhex(l["events_root"]))
        root = l and inclusion_root(t["size"] - 1, t["size"], leaf, [bytes.fromhex(x) for x in l["path"]])
        if root is None or root.hex() != t["root"]:
            raise Problem(f"chain {h['chain']}'s head is not the last leaf of its tree")
    return len(old["trees"])


def self_test():
    """The vectors of FORMAT.md ("Packed events", "Merkle trees") and RFC
    9162's example."""
    frame = bytes.fromhex(
        "a2000167000647484622224080890f036170700001047073716c0000067075626c6963066f7264657273065550444154450106"
        "0306616d6f756e74030531302e3530026964030131046e6f74650402c3a901060306616d6f756e7403023131026964030131046e"
        "6f746500")
    d = decode_packed(frame, 42, 777)
    assert (d["id"], d["tx_seq"], d["op"]) == (42, 1, "UPDATE")
    h = hashlib.sha256(d["tag"] + ZERO + d["hashed"]).hexdigest()
    assert h == "258f1633a95a6cbeeecd1d2e77a484acd2b5c7234b7a664f0a99dccb714a5f55", h
    assert packed_frame(0, 1, d["body"]) == frame
    d = [leaf_hash(bytes([i])) for i in range(7)]
    assert mth(d).hex() == "3560191803028444b232018ac047fdb561c09c23a7a6876c85e08b5e4d48e9f3"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    for n in range(1, 33):
        leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
        r = mth(leaves)
        for m in range(n):
            assert inclusion_root(m, n, leaves[m], path(m, leaves)) == r
        for m in range(1, n + 1):
            assert consistency_holds(m, n, mth(leaves[:m]), r, subproof(m, leaves, True))
    return 0

# ---------------------------------------------------------------------------


def read(data):
    """("records", data), ("export", lines) or ("dump", lines): an export's
    lines start with their type, a records export's header names its
    format, a dump's lines are objects with a "kind"."""
    first = data.split(b"\n", 1)[0]
    if first.startswith(b'{"type":'):
        for kind, form in (("records", RECORDS_FORMAT), ("binary", BINARY_FORMAT)):
            try:
                header = parse_json(first.decode("utf-8"))
                ours = isinstance(header, dict) and header.get("format") == form
            except ValueError:
                # A damaged header: the loader says what is wrong with it.
                ours = b'"' + form.encode() + b'"' in first
            if ours:
                return kind, data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Not text, and not an export whose header names a binary format.
        raise Problem(f"neither an export nor a dump of the storage: not UTF-8 ({e})") from None
    lines = [line for line in text.split("\n") if line.strip()]
    if lines and lines[0].startswith('{"type":'):
        return "export", lines
    return "dump", lines


def main(argv):
    if argv[1:2] == ["verify"]:
        try:
            kind, lines = read(sys.stdin.buffer.read())
        except Problem as p:
            print(p)
            return 1
        if kind == "records":
            return verify_export_of_records(load_records, "records export", lines)
        if kind == "binary":
            return verify_export_of_records(load_binary, "binary export", lines)
        if kind == "export":
            try:
                loaded = load_export(lines)
            except ValueError as e:
                print(f"not a readable logical export: {e}")
                return 1
            return verify_export(*loaded)
        try:
            n_events, n_records = verify_dump(*load_dump(lines))
        except Problem as p:
            print(p)
            return 1
        print(f"independent verifier: {n_events} events and {n_records} records recompute")
        return 0
    if argv[1:2] == ["trees"] and len(argv) == 3:
        with open(argv[2]) as f:
            cp = json.load(f)
        kind, lines = read(sys.stdin.buffer.read())
        try:
            records, segments, anchors = load_dump(lines)
            if anchors:
                raise Problem("trees are recomputed from a log never purged")
            n = check_trees(records, segments, cp)
        except (Problem, Malformed) as p:
            print(p)
            return 1
        print(f"independent verifier: {n} chain trees of the checkpoint recompute from the records")
        return 0
    checks = {"proof": (check_proof, "the proof does not hold",
                        "independent verifier: event {} is in the checkpoint's tree"),
              "consistency": (check_consistency, "the consistency proof does not hold",
                              "independent verifier: {} chain trees extend the old checkpoint's")}
    if argv[1:2] and argv[1] in checks and len(argv) == 4:
        check, refused, held = checks[argv[1]]
        with open(argv[2]) as f, open(argv[3]) as g:
            given, cp = json.load(f), json.load(g)
        try:
            # A signed checkpoint's signature is the CLI's business; its checkpoint is checked here.
            found = check(given, cp.get("checkpoint", cp))
        except (Problem, Malformed, KeyError, TypeError, ValueError) as p:
            print(f"{refused}: {p!r}")
            return 1
        print(held.format(found))
        return 0
    if argv[1:2] == ["selftest"]:
        return self_test()
    if argv[1:2] == ["rewrite"] and len(argv) >= 4:
        kind, lines = read(sys.stdin.buffer.read())
        if kind != "dump":
            print("rewrite forges the storage: it reads pg_test/lib/dump_log.sql's output", file=sys.stderr)
            return 2
        return rewrite_dump(*load_dump(lines), int(argv[2]), argv[3], "--chain" in argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

//! Event encoding v2: the packed form that payloads store and that event
//! hashes of version 2 cover.
//!
//! Version 1 spells every length as 4 bytes and every id and time as 8, and
//! repeats in each event what its record already holds (its id, tx_id and
//! tx_seq). Version 2 stores each event as a frame:
//!
//! ```text
//! frame = 0xA2 || varint zigzag(id - first_event) || varint tx_seq || varint len(body) || body
//! body  = i64 recorded_at || varint zigzag(recorded_at - statement_at)
//!      || text session_user_name || current_user || opt<text> application_name
//!      || opt<text> client_addr || opt<json> context
//!      || text table_schema || text table_name || text op
//!      || opt<json> old_row || opt<json> new_row
//! ```
//!
//! where a `text` and a `json` item are as in version 1 but for every length
//! and count, which is a varint; `current_user` is `0x00` when it equals
//! the session user and `0x01 || text` otherwise. A varint is unsigned
//! LEB128 in its shortest form, at most a `u32` for lengths and counts.
//! `first_event` is the id of the transaction's first event (the record's
//! column), so a frame does not depend on the frames before it and a
//! payload can be cut at any frame. A version 1 frame starts with the high
//! byte of a `u32` length below 1 GiB, never `0xA2`, so the two are told
//! apart frame by frame.
//!
//! The hash of a version 2 event is
//! `SHA-256("audit_log:event:v2" 0x00 || prev_hash || i64 id || u64 tx_id || i64 tx_seq || body)`:
//! it covers the bytes stored, and the three ids the frame gives with its
//! record's. [`unpack`] and [`pack`] convert between the body and the
//! canonical encoding of version 1, which decoders read.

use super::decode::Malformed;
use super::tag;
use crate::model::{Event, EventRef, Json};

/// The first byte of a version 2 frame.
pub const FRAME: u8 = 0xA2;

/// What a frame needs from its record to name its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// The id of the transaction's first event.
    pub first_event: i64,
    pub tx_id: u64,
}

impl Base {
    /// A record read without its tx_id: its version 2 frames are
    /// unreadable (no real transaction has this xid8).
    pub const fn without_tx_id(first_event: i64) -> Base {
        Base {
            first_event,
            tx_id: u64::MAX,
        }
    }

    pub fn knows_tx_id(&self) -> bool {
        self.tx_id != u64::MAX
    }
}

pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    // Pushed byte by byte: the writer's hot path, where a copy of one or
    // two bytes costs more than the pushes.
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// `v` as a varint, in `buf`.
fn varint_bytes(mut v: u64, buf: &mut [u8; 10]) -> &[u8] {
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    &buf[..=n]
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over bytes that reads varints in their shortest form.
struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> In<'a> {
    fn u8(&mut self) -> Result<u8, Malformed> {
        let v = *self.b.get(self.at).ok_or(Malformed(self.at))?;
        self.at += 1;
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed(self.at))?;
        let s = self.b.get(self.at..end).ok_or(Malformed(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // The shortest form: no trailing zero group, no bits past 64.
                if (b == 0 && shift > 0) || (shift == 63 && b > 1) {
                    return Err(Malformed(start));
                }
                return Ok(v);
            }
        }
        Err(Malformed(start))
    }

    /// A length or count: a varint of at most `u32::MAX`.
    fn len(&mut self) -> Result<usize, Malformed> {
        let at = self.at;
        let v = self.varint()?;
        u32::try_from(v)
            .map(|v| v as usize)
            .map_err(|_| Malformed(at))
    }

    fn i64(&mut self) -> Result<i64, Malformed> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(
            b.try_into().map_err(|_| Malformed(self.at))?,
        ))
    }

    /// A v1 length: 4 bytes.
    fn len4(&mut self) -> Result<usize, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| Malformed(self.at))?) as usize)
    }
}

/// Where a conversion writes: a buffer, or a count of the bytes it would
/// write (to reserve exactly that much first).
trait Sink {
    fn put(&mut self, b: u8);
    fn put_all(&mut self, s: &[u8]);
    fn put_varint(&mut self, v: u64) {
        let mut buf = [0u8; 10];
        self.put_all(varint_bytes(v, &mut buf));
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: u8) {
        self.push(b);
    }

    fn put_all(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }

    fn put_varint(&mut self, v: u64) {
        put_varint(self, v);
    }
}

/// Counts what would be written.
struct Count(usize);

impl Sink for Count {
    fn put(&mut self, _: u8) {
        self.0 = self.0.saturating_add(1);
    }

    fn put_all(&mut self, s: &[u8]) {
        self.0 = self.0.saturating_add(s.len());
    }
}

/// Which way a conversion goes: how lengths are read and written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Version 1 in, version 2 out.
    Pack,
    /// Version 2 in, version 1 out.
    Unpack,
}

impl Dir {
    fn len(self, r: &mut In) -> Result<usize, Malformed> {
        match self {
            Dir::Pack => r.len4(),
            Dir::Unpack => r.len(),
        }
    }

    fn put_len(self, out: &mut impl Sink, n: usize) {
        match self {
            Dir::Pack => out.put_varint(n as u64),
            Dir::Unpack => out.put_all(&(n as u32).to_be_bytes()),
        }
    }

    /// A `text`: its length, converted, then its bytes.
    fn text<'a>(self, r: &mut In<'a>, out: &mut impl Sink) -> Result<&'a [u8], Malformed> {
        let n = self.len(r)?;
        let s = r.take(n)?;
        self.put_len(out, n);
        out.put_all(s);
        Ok(s)
    }

    fn opt<S: Sink>(
        self,
        r: &mut In,
        out: &mut S,
        f: impl FnOnce(&mut In, &mut S) -> Result<(), Malformed>,
    ) -> Result<(), Malformed> {
        let at = r.at;
        let m = r.u8()?;
        out.put(m);
        match m {
            0 => Ok(()),
            1 => f(r, out),
            _ => Err(Malformed(at)),
        }
    }

    /// The fields after the users, alike in both versions but for their
    /// lengths: application_name, client_addr, context, table_schema,
    /// table_name, op, old_row and new_row.
    fn rest(self, r: &mut In, out: &mut impl Sink) -> Result<(), Malformed> {
        self.opt(r, out, |r, o| self.text(r, o).map(drop))?;
        self.opt(r, out, |r, o| self.text(r, o).map(drop))?;
        self.opt(r, out, |r, o| self.json(r, o))?;
        for _ in 0..3 {
            self.text(r, out)?;
        }
        self.opt(r, out, |r, o| self.json(r, o))?;
        self.opt(r, out, |r, o| self.json(r, o))
    }

    /// One `json` item, walked with a stack of its own (no recursion).
    fn json(self, r: &mut In, out: &mut impl Sink) -> Result<(), Malformed> {
        // Per open array or object: items left, and whether keys come (bit
        // 32). A level is 8 bytes here for 2 of packed input, and a value
        // too deep for memory is an error, not an abort.
        const OBJECT: u64 = 1 << 32;
        let mut open: Vec<u64> = Vec::new();
        loop {
            let at = r.at;
            let t = r.u8()?;
            out.put(t);
            match t {
                tag::NULL | tag::FALSE | tag::TRUE => {}
                tag::NUMBER | tag::STRING => {
                    self.text(r, out)?;
                }
                tag::ARRAY | tag::OBJECT => {
                    let n = self.len(r)?;
                    self.put_len(out, n);
                    open.try_reserve(1).map_err(|_| Malformed(at))?;
                    open.push(n as u64 | if t == tag::OBJECT { OBJECT } else { 0 });
                }
                _ => return Err(Malformed(at)),
            }
            loop {
                match open.last_mut() {
                    None => return Ok(()),
                    Some(top) if *top & (OBJECT - 1) == 0 => {
                        open.pop();
                    }
                    Some(top) => {
                        *top -= 1;
                        if *top & OBJECT != 0 {
                            self.text(r, out)?;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Append the version 2 frame of an event whose version 1 canonical
/// encoding is `canonical`. An error if `canonical` is not one.
pub fn pack(canonical: &[u8], first_event: i64, out: &mut Vec<u8>) -> Result<(), Malformed> {
    let d = Dir::Pack;
    let mut r = In {
        b: canonical,
        at: 0,
    };
    let id = r.i64()?;
    let _tx_id = r.i64()?;
    let tx_seq = r.i64()?;
    let recorded_at = r.i64()?;
    let statement_at = r.i64()?;
    if tx_seq < 0 {
        return Err(Malformed(16));
    }
    let open = open_frame(
        out,
        id.wrapping_sub(first_event),
        tx_seq,
        recorded_at,
        statement_at,
    );
    let session = d.text(&mut r, out)?;
    // The current user: 0x00 when it is the session user.
    let n = r.len4()?;
    let current = r.take(n)?;
    if current == session {
        out.push(0);
    } else {
        out.push(1);
        d.put_len(out, n);
        out.extend_from_slice(current);
    }
    d.rest(&mut r, out)?;
    if r.at != canonical.len() {
        return Err(Malformed(r.at));
    }
    open.close(out);
    Ok(())
}

/// Append the version 2 frame of `e`, whose transaction's first event is
/// `first_event`: what [`pack`] makes of its canonical encoding, without
/// making that. An error if a JSON value already encoded is not one `json`
/// item. Returns where the frame's body starts in `out` (it runs to the
/// end).
pub fn encode_event(e: &Event, first_event: i64, out: &mut Vec<u8>) -> Result<usize, Malformed> {
    let (context, old_row, new_row) = (
        encoded(&e.context),
        encoded(&e.old_row),
        encoded(&e.new_row),
    );
    let r = borrowed(
        e,
        [context.as_deref(), old_row.as_deref(), new_row.as_deref()],
    );
    encode(&r, first_event, out)
}

/// `e` borrowed, with the encodings of its context, old row and new row
/// (version 1).
fn borrowed<'a>(e: &'a Event, json: [Option<&'a [u8]>; 3]) -> EventRef<'a> {
    let [context, old_row, new_row] = json;
    EventRef {
        id: e.id,
        tx_id: e.tx_id,
        tx_seq: e.tx_seq,
        recorded_at: e.recorded_at,
        statement_at: e.statement_at,
        session_user_name: &e.session_user_name,
        current_user_name: &e.current_user_name,
        application_name: e.application_name.as_deref(),
        client_addr: e.client_addr.as_deref(),
        context,
        table_schema: &e.table_schema,
        table_name: &e.table_name,
        op: &e.op,
        old_row,
        new_row,
        rows_packed: false,
    }
}

/// A JSON value's encoding: borrowed if it has one, else made here.
fn encoded(j: &Option<Json>) -> Option<std::borrow::Cow<'_, [u8]>> {
    j.as_ref().map(|j| match j {
        Json::Encoded(b) => std::borrow::Cow::Borrowed(&b[..]),
        Json::Value(v) => {
            let mut b = Vec::new();
            super::encode_json(v, &mut b);
            std::borrow::Cow::Owned(b)
        }
    })
}

/// [`encode_event`] of a borrowed event, as capture writes it. Its JSON
/// values of version 1 are converted as they are copied; its rows, when
/// `rows_packed`, are copied as they are.
pub fn encode(e: &EventRef, first_event: i64, out: &mut Vec<u8>) -> Result<usize, Malformed> {
    if e.tx_seq < 0 {
        return Err(Malformed(0));
    }
    let d = Dir::Pack;
    let open = open_frame(
        out,
        e.id.wrapping_sub(first_event),
        e.tx_seq,
        e.recorded_at,
        e.statement_at,
    );
    let text = |out: &mut Vec<u8>, t: &str| {
        put_varint(out, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    };
    let opt_text = |out: &mut Vec<u8>, t: Option<&str>| match t {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            text(out, t);
        }
    };
    let opt_json = |out: &mut Vec<u8>, j: Option<&[u8]>, packed: bool| -> Result<(), Malformed> {
        let Some(j) = j else {
            out.push(0);
            return Ok(());
        };
        out.push(1);
        if packed {
            // The writer's own encoding, copied as it is.
            debug_assert!(json_unpack(j, &mut Vec::new()).is_ok());
            out.extend_from_slice(j);
            return Ok(());
        }
        let mut r = In { b: j, at: 0 };
        d.json(&mut r, out)?;
        if r.at != j.len() {
            return Err(Malformed(r.at));
        }
        Ok(())
    };
    text(out, e.session_user_name);
    if e.current_user_name == e.session_user_name {
        out.push(0);
    } else {
        out.push(1);
        text(out, e.current_user_name);
    }
    opt_text(out, e.application_name);
    opt_text(out, e.client_addr);
    opt_json(out, e.context, false)?;
    text(out, e.table_schema);
    text(out, e.table_name);
    text(out, e.op);
    opt_json(out, e.old_row, e.rows_packed)?;
    opt_json(out, e.new_row, e.rows_packed)?;
    Ok(open.close(out))
}

/// Convert one `json` item of version 1 to its packed form (lengths and
/// counts as varints), appended to `out`. An error if `v1` is not exactly
/// one item.
pub fn json_pack(v1: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    convert_json(Dir::Pack, v1, out)
}

/// Convert one packed `json` item back to version 1, appended to `out`.
/// Room for it is measured first and reserved, or an error (a row nested
/// deep is 2 bytes a level packed and 5 unpacked).
pub fn json_unpack(v2: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let mut n = Count(0);
    convert_json(Dir::Unpack, v2, &mut n)?;
    out.try_reserve_exact(n.0).map_err(|_| Malformed(0))?;
    convert_json(Dir::Unpack, v2, out)
}

fn convert_json(d: Dir, j: &[u8], out: &mut impl Sink) -> Result<(), Malformed> {
    let mut r = In { b: j, at: 0 };
    d.json(&mut r, out)?;
    if r.at != j.len() {
        return Err(Malformed(r.at));
    }
    Ok(())
}

/// A frame whose header and first body fields are written, and whose
/// body's length is not yet known.
struct OpenFrame {
    /// Where room for the longest varint of a length was left.
    len_at: usize,
    body_at: usize,
}

/// Start a frame in `out`: its header and the body's two times. The body's
/// length goes before the body: room is left for the longest varint of a
/// length, and [`OpenFrame::close`] closes the gap.
fn open_frame(
    out: &mut Vec<u8>,
    id_delta: i64,
    tx_seq: i64,
    recorded_at: i64,
    statement_at: i64,
) -> OpenFrame {
    out.push(FRAME);
    put_varint(out, zigzag(id_delta));
    put_varint(out, tx_seq as u64);
    let len_at = out.len();
    out.extend_from_slice(&[0; 5]);
    let body_at = out.len();
    out.extend_from_slice(&recorded_at.to_be_bytes());
    put_varint(out, zigzag(recorded_at.wrapping_sub(statement_at)));
    OpenFrame { len_at, body_at }
}

impl OpenFrame {
    /// Write the body's length before it, close the gap, and return where
    /// the body now starts.
    fn close(self, out: &mut Vec<u8>) -> usize {
        let OpenFrame { len_at, body_at } = self;
        let body_len = out.len() - body_at;
        let mut len = Vec::with_capacity(5);
        put_varint(&mut len, body_len as u64);
        let start = len_at + len.len();
        out.copy_within(body_at.., start);
        out[len_at..start].copy_from_slice(&len);
        out.truncate(start + body_len);
        start
    }
}

/// A version 2 frame read from a payload: the event's place and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its id less the transaction's first event's.
    pub id_delta: i64,
    pub tx_seq: i64,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// The frame's bytes, as a payload stores them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 16);
        out.push(FRAME);
        put_varint(&mut out, zigzag(self.id_delta));
        put_varint(&mut out, self.tx_seq as u64);
        put_varint(&mut out, self.body.len() as u64);
        out.extend_from_slice(self.body);
        out
    }

    pub fn id(&self, first_event: i64) -> i64 {
        first_event.wrapping_add(self.id_delta)
    }

    /// Its event hash, chained on `prev`.
    pub fn hash(&self, prev: &crate::hash::Hash, base: Base) -> crate::hash::Hash {
        crate::hash::event_hash_v2(
            prev,
            self.id(base.first_event),
            base.tx_id,
            self.tx_seq,
            self.body,
        )
    }
}

/// The version 2 frame at `at` in `buf` (which must start with
/// [`FRAME`]), and where the next frame starts.
pub fn frame_at(buf: &[u8], at: usize) -> Result<(Frame<'_>, usize), Malformed> {
    let mut r = In { b: buf, at };
    if r.u8()? != FRAME {
        return Err(Malformed(at));
    }
    let id_delta = unzigzag(r.varint()?);
    let at_seq = r.at;
    let tx_seq = i64::try_from(r.varint()?).map_err(|_| Malformed(at_seq))?;
    let n = r.varint()?;
    let n = usize::try_from(n).map_err(|_| Malformed(at))?;
    let body = r.take(n)?;
    Ok((
        Frame {
            id_delta,
            tx_seq,
            body,
        },
        r.at,
    ))
}

/// The version 1 canonical encoding of a version 2 event, appended to
/// `out`: for decoders, which read version 1. An error if the body is not
/// one in its only form (shortest varints, a current user equal to the
/// session user given as 0x00), or if there is no memory for it.
pub fn unpack(f: &Frame, base: Base, out: &mut Vec<u8>) -> Result<(), Malformed> {
    // Room first, or an error (never an abort while writing): a small body
    // gets about 1.5 times its length (a length of one byte becomes four);
    // a large one, which can be a hostile row nested deep (2 bytes a level
    // packed, 5 unpacked), is measured by a first pass over it.
    let room = if f.body.len() <= UNPACK_MEASURED {
        f.body.len() + f.body.len() / 2 + 64
    } else {
        let mut n = Count(0);
        unpack_into(f, base, &mut n)?;
        out.try_reserve_exact(n.0).map_err(|_| Malformed(0))?;
        return unpack_into(f, base, out);
    };
    out.try_reserve(room).map_err(|_| Malformed(0))?;
    unpack_into(f, base, out)
}

/// Bodies larger than this are measured before they are unpacked.
const UNPACK_MEASURED: usize = 1 << 20;

fn unpack_into(f: &Frame, base: Base, out: &mut impl Sink) -> Result<(), Malformed> {
    if !base.knows_tx_id() {
        return Err(Malformed(0));
    }
    let d = Dir::Unpack;
    let mut r = In { b: f.body, at: 0 };
    out.put_all(&f.id(base.first_event).to_be_bytes());
    out.put_all(&base.tx_id.to_be_bytes());
    out.put_all(&f.tx_seq.to_be_bytes());
    let recorded_at = r.i64()?;
    let statement_at = recorded_at.wrapping_sub(unzigzag(r.varint()?));
    out.put_all(&recorded_at.to_be_bytes());
    out.put_all(&statement_at.to_be_bytes());
    let session = d.text(&mut r, out)?;
    let at = r.at;
    match r.u8()? {
        0 => {
            d.put_len(out, session.len());
            out.put_all(session);
        }
        1 => {
            if d.text(&mut r, out)? == session {
                return Err(Malformed(at));
            }
        }
        _ => return Err(Malformed(at)),
    }
    d.rest(&mut r, out)?;
    if r.at != f.body.len() {
        return Err(Malformed(r.at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZERO_HASH;

    fn encode_v1(e: &Event, buf: &mut Vec<u8>) {
        crate::encoding::encode_event(e, buf)
    }

    const BASE: Base = Base {
        first_event: 100,
        tx_id: 1,
    };

    fn event(id: i64, tx_seq: i64, current: &str, old: Option<&str>, new: Option<&str>) -> Event {
        let json = |s: &str| Json::from(serde_json::from_str::<serde_json::Value>(s).unwrap());
        Event {
            id,
            tx_id: 9_000_000_001,
            tx_seq,
            tx_first: 100,
            recorded_at: 1_767_225_600_123_456,
            statement_at: 1_767_225_600_000_000,
            session_user_name: "app".into(),
            current_user_name: current.into(),
            application_name: Some("psql".into()),
            client_addr: None,
            context: Some(json(r#"{"user": "alice"}"#)),
            table_schema: "public".into(),
            table_name: "orders".into(),
            op: "UPDATE".into(),
            old_row: old.map(json),
            new_row: new.map(json),
            prev_hash: ZERO_HASH,
            hash: ZERO_HASH,
        }
    }

    fn canonical(e: &Event) -> Vec<u8> {
        let mut v = Vec::new();
        encode_v1(e, &mut v);
        v
    }

    fn round_trip(e: &Event, first_event: i64) -> Vec<u8> {
        let c = canonical(e);
        let mut framed = Vec::new();
        pack(&c, first_event, &mut framed).unwrap();
        // Encoded from the event, rows as values or encoded: the same.
        let mut prefixed = b"before".to_vec();
        let body_at = encode_event(e, first_event, &mut prefixed).unwrap();
        assert_eq!(&prefixed[6..], &framed[..]);
        let mut encoded = e.clone();
        for j in [
            &mut encoded.context,
            &mut encoded.old_row,
            &mut encoded.new_row,
        ] {
            if let Some(Json::Value(v)) = j {
                let mut b = Vec::new();
                crate::encoding::encode_json(v, &mut b);
                *j = Some(Json::Encoded(b));
            }
        }
        let mut direct = Vec::new();
        encode_event(&encoded, first_event, &mut direct).unwrap();
        assert_eq!(direct, framed);
        // Borrowed, as capture has it: the same frame, the same event back,
        // and version 1's exact size.
        fn bytes(j: &Option<Json>) -> Option<&[u8]> {
            match j {
                Some(Json::Encoded(b)) => Some(b),
                _ => None,
            }
        }
        let r = super::borrowed(
            e,
            [
                bytes(&encoded.context),
                bytes(&encoded.old_row),
                bytes(&encoded.new_row),
            ],
        );
        let mut from_ref = Vec::new();
        encode(&r, first_event, &mut from_ref).unwrap();
        assert_eq!(from_ref, framed);
        let mut owned = r.to_event(e.tx_first).unwrap();
        (owned.prev_hash, owned.hash) = (e.prev_hash, e.hash);
        assert_eq!(owned, encoded);
        assert_eq!(r.size_hint(), crate::encoding::event_size_hint(&encoded));
        assert_eq!(r.size_hint(), c.len());
        // Its rows packed beforehand, as capture packs them: the same
        // frame, and the same event back, with rows of version 1.
        let pack_row = |j: Option<&[u8]>| {
            j.map(|b| {
                let mut v2 = Vec::new();
                json_pack(b, &mut v2).unwrap();
                let mut back = Vec::new();
                json_unpack(&v2, &mut back).unwrap();
                assert_eq!(back, b);
                v2
            })
        };
        let (old2, new2) = (pack_row(r.old_row), pack_row(r.new_row));
        let p = EventRef {
            old_row: old2.as_deref(),
            new_row: new2.as_deref(),
            rows_packed: true,
            ..r
        };
        let mut from_packed = Vec::new();
        encode(&p, first_event, &mut from_packed).unwrap();
        assert_eq!(from_packed, framed);
        let mut owned = p.to_event(e.tx_first).unwrap();
        (owned.prev_hash, owned.hash) = (e.prev_hash, e.hash);
        assert_eq!(owned, encoded);
        let (f, end) = frame_at(&framed, 0).unwrap();
        assert_eq!(end, framed.len());
        // The body's start that encode_event returns is the frame's.
        assert_eq!(&prefixed[body_at..], f.body);
        assert_eq!(f.to_bytes(), framed);
        assert_eq!((f.id(first_event), f.tx_seq), (e.id, e.tx_seq));
        let base = Base {
            first_event,
            tx_id: e.tx_id,
        };
        let mut back = Vec::new();
        unpack(&f, base, &mut back).unwrap();
        assert_eq!(back, c);
        framed
    }

    #[test]
    fn varints_round_trip_in_their_shortest_form() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = In { b: &b, at: 0 };
            assert_eq!(r.varint().unwrap(), v);
            assert_eq!(r.at, b.len());
        }
        for bad in [
            &[0x80, 0x00][..],
            &[0xff; 10],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[0x80],
        ] {
            assert!(In { b: bad, at: 0 }.varint().is_err(), "{bad:?}");
        }
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn events_round_trip_and_shrink() {
        let row = r#"{"id": 1, "amount": 10.50, "note": "é", "tags": [1, [2, {"b": null, "a": true}]], "e": {}}"#;
        for (e, first) in [
            (event(100, 1, "app", None, Some(row)), 100),
            (event(105, 2, "owner", Some(row), Some(row)), 100),
            (event(i64::MAX, 1, "app", Some(row), None), i64::MIN),
            (event(-5, i64::MAX, "", None, None), 7),
        ] {
            let framed = round_trip(&e, first);
            assert!(
                framed.len() < canonical(&e).len() - 20,
                "{} of {}",
                framed.len(),
                canonical(&e).len()
            );
        }
    }

    /// A version 1 row of `depth` arrays, each holding the next, around a null.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut row = Vec::with_capacity(depth * 5 + 1);
        for _ in 0..depth {
            row.push(tag::ARRAY);
            row.extend_from_slice(&1u32.to_be_bytes());
        }
        row.push(tag::NULL);
        row
    }

    #[test]
    fn deep_values_need_no_recursion() {
        let mut e = event(100, 1, "app", None, None);
        e.new_row = Some(Json::Encoded(nested_arrays(200_000)));
        round_trip(&e, 100);
    }

    #[test]
    fn only_one_form_unpacks() {
        let e = event(100, 1, "app", None, Some(r#"{"a": 1}"#));
        let mut framed = Vec::new();
        pack(&canonical(&e), 100, &mut framed).unwrap();
        let (f, _) = frame_at(&framed, 0).unwrap();
        let body = f.body.to_vec();
        // The current user spelt out although it is the session user.
        let at = 4 + body.windows(4).position(|w| w == b"\x03app").unwrap();
        assert_eq!(body[at], 0);
        let mut spelt = body[..at].to_vec();
        spelt.extend_from_slice(&[1, 3]);
        spelt.extend_from_slice(b"app");
        spelt.extend_from_slice(&body[at + 1..]);
        let g = Frame { body: &spelt, ..f };
        assert!(unpack(&g, BASE, &mut Vec::new()).is_err());
        // A length in a longer form than it needs.
        // (the session user's length, 3, as two bytes).
        let mut long = body[..at - 4].to_vec();
        long.extend_from_slice(&[0x83, 0x00]);
        long.extend_from_slice(&body[at - 3..]);
        let g = Frame { body: &long, ..f };
        assert!(unpack(&g, BASE, &mut Vec::new()).is_err());
        // The same with the length in its one form unpacks.
        let mut short = body[..at - 4].to_vec();
        short.push(0x03);
        short.extend_from_slice(&body[at - 3..]);
        let g = Frame { body: &short, ..f };
        assert!(unpack(&g, BASE, &mut Vec::new()).is_ok());
    }

    #[test]
    fn every_cut_and_flipped_byte_is_an_error_or_another_event() {
        let e = event(
            100,
            1,
            "owner",
            Some(r#"{"a": [1, "x"]}"#),
            Some(r#"{"a": {"b": 2.5}}"#),
        );
        let mut framed = Vec::new();
        pack(&canonical(&e), 100, &mut framed).unwrap();
        for n in 0..framed.len() {
            assert!(frame_at(&framed[..n], 0).is_err());
        }
        let (f, _) = frame_at(&framed, 0).unwrap();
        for n in 0..f.body.len() {
            let cut = Frame {
                body: &f.body[..n],
                ..f
            };
            assert!(unpack(&cut, BASE, &mut Vec::new()).is_err());
        }
        for i in 0..framed.len() {
            for bit in 0..8 {
                let mut b = framed.clone();
                b[i] ^= 1 << bit;
                if let Ok((f, _)) = frame_at(&b, 0) {
                    let mut out = Vec::new();
                    if unpack(
                        &f,
                        Base {
                            first_event: 100,
                            tx_id: e.tx_id,
                        },
                        &mut out,
                    )
                    .is_ok()
                    {
                        assert_ne!(out, canonical(&e));
                    }
                }
            }
        }
    }

    #[test]
    fn a_v1_frame_never_starts_like_a_v2_one() {
        // A v1 frame's first byte is the high byte of a length below 1 GiB.
        assert!(FRAME > (((1u32 << 30) - 1) >> 24) as u8);
    }

    #[test]
    fn bad_v1_input_does_not_pack() {
        let c = canonical(&event(100, 1, "app", None, None));
        for n in 0..c.len() {
            assert!(pack(&c[..n], 100, &mut Vec::new()).is_err());
        }
        let mut long = c.clone();
        long.push(0);
        assert!(pack(&long, 100, &mut Vec::new()).is_err());
    }

    /// A body past UNPACK_MEASURED, nested deep (2 bytes a level packed, 5
    /// unpacked): unpacked into exactly the room its first pass measured,
    /// so the buffer never grows while it is written.
    #[test]
    fn a_large_deep_body_is_unpacked_into_measured_room() {
        let mut e = event(100, 1, "app", None, None);
        e.new_row = Some(Json::Encoded(nested_arrays(600_000)));
        let c = canonical(&e);
        let mut framed = Vec::new();
        pack(&c, 100, &mut framed).unwrap();
        let (f, _) = frame_at(&framed, 0).unwrap();
        assert!(f.body.len() > UNPACK_MEASURED);
        let base = Base {
            first_event: 100,
            tx_id: e.tx_id,
        };
        let mut back = Vec::new();
        unpack(&f, base, &mut back).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.capacity(), back.len());
        // A body cut short fails in the measuring pass, with nothing written.
        let cut = Frame {
            body: &f.body[..f.body.len() - 1],
            ..f
        };
        let mut none = Vec::new();
        assert!(unpack(&cut, base, &mut none).is_err());
        assert!(none.is_empty());
    }
}

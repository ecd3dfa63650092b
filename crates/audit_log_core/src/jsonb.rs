//! PostgreSQL's binary jsonb, read in pure Rust into the canonical encoding.
//!
//! Capture and verification read every stored row through this. Doing it
//! here rather than through `JsonbIteratorNext` and `numeric_out` costs no
//! call into the server per token, allocates one buffer per value, and can
//! run on threads that must never touch the server (parallel verification).
//!
//! The layout is PostgreSQL's on-disk format since 9.4 (src/include/utils/jsonb.h),
//! in the server's byte order:
//! - a container is a `u32` header (count and kind), then one `u32` JEntry per
//!   element (objects: all keys, then all values), then the data;
//! - a JEntry holds a type and either the length of its data or, every so
//!   often, the end offset of its data (`HAS_OFF`);
//! - numerics and nested containers are padded to 4-byte alignment within
//!   the data area;
//! - a numeric is a whole `numeric` varlena, turned into text exactly as
//!   `numeric_out` does, because the canonical encoding hashes the number's text.

use std::fmt;

use crate::encoding::decode::Reader;
use crate::encoding::JsonBuilder;
use crate::json_text::write_escaped;

const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;

/// The bytes are not a well-formed jsonb value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed jsonb: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Malformed> {
    let bytes = b.get(at..at + 4).ok_or(Malformed("truncated header"))?;
    Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, Malformed> {
    let bytes = b.get(at..at + 2).ok_or(Malformed("truncated numeric"))?;
    Ok(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The canonical encoding (docs/FORMAT.md, `json`) of a jsonb value, given the
/// bytes after its varlena header. The walk keeps its own stack, one
/// [`Level`] per open container, so any depth reads without recursion: a
/// nested container lies strictly inside its parent, so the depth is bounded
/// by the value's length.
pub fn encode_jsonb(data: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut b = JsonBuilder::new();
    // The innermost open container, and those around it (most rows are flat:
    // no allocation for them).
    let mut level = Level::open(&mut b, data)?;
    let mut outer: Vec<Level> = Vec::new();
    loop {
        let Some((key, item)) = level.next_item()? else {
            if !level.raw {
                b.end();
            }
            match outer.pop() {
                Some(l) => level = l,
                None => break,
            }
            continue;
        };
        let area = level.area;
        if let Some(k) = key {
            b.key(&area[k.start..k.end]);
        }
        let from = align4(item.start).min(item.end);
        match item.t {
            JENTRY_ISSTRING => b.string(&area[item.start..item.end]),
            JENTRY_ISNULL => b.null(),
            JENTRY_ISBOOL_FALSE => b.bool(false),
            JENTRY_ISBOOL_TRUE => b.bool(true),
            JENTRY_ISNUMERIC => b.number(&numeric_text(&area[from..item.end])?),
            JENTRY_ISCONTAINER => {
                let child = Level::open(&mut b, &area[from..item.end])?;
                outer.push(std::mem::replace(&mut level, child));
            }
            _ => return Err(Malformed("unknown entry type")),
        }
    }
    Ok(b.finish())
}

/// One entry of a container: its type, and where its data is in the data area.
#[derive(Clone, Copy)]
struct Entry {
    t: u32,
    start: usize,
    end: usize,
}

/// An open container of [`encode_jsonb`]'s walk.
struct Level<'a> {
    /// The data area, after the header and the entry table.
    area: &'a [u8],
    /// The entry table.
    table: &'a [u8],
    count: usize,
    /// A top-level scalar, stored as a one-element array: no brackets.
    raw: bool,
    /// The next item to visit.
    next: usize,
    /// Arrays: where the next element's data starts.
    off: usize,
    /// Objects: (key, value) of each member, in byte order of the keys, so
    /// that the builder never has to reorder them.
    members: Vec<(Entry, Entry)>,
}

impl<'a> Level<'a> {
    /// Read a container's header and entry table, and begin it in `b`.
    fn open(b: &mut JsonBuilder, data: &'a [u8]) -> Result<Level<'a>, Malformed> {
        let header = u32_at(data, 0)?;
        let count = (header & JB_CMASK) as usize;
        let is_object = header & JB_FOBJECT != 0;
        let is_array = header & JB_FARRAY != 0;
        if is_object == is_array {
            return Err(Malformed("container is neither object nor array"));
        }
        let entries = if is_object { count * 2 } else { count };
        let base = entries
            .checked_mul(4)
            .and_then(|n| n.checked_add(4))
            .filter(|&n| n <= data.len())
            .ok_or(Malformed("entry table past the end"))?;
        let mut level = Level {
            area: &data[base..],
            table: &data[4..base],
            count,
            raw: is_array && header & JB_FSCALAR != 0,
            next: 0,
            off: 0,
            members: Vec::new(),
        };
        if level.raw {
            if count != 1 {
                return Err(Malformed("raw scalar with other than one element"));
            }
        } else if is_array {
            b.begin_array();
        } else {
            // Keys come first, then the values in the same order.
            let mut members = Vec::with_capacity(count);
            for i in 0..count {
                let k = level.entry(i)?;
                if k.t != JENTRY_ISSTRING {
                    return Err(Malformed("object key is not a string"));
                }
                members.push((k, k));
            }
            for (i, m) in members.iter_mut().enumerate() {
                m.1 = level.entry(count + i)?;
            }
            // jsonb orders keys by length, then bytes; the encoding by bytes.
            let area = level.area;
            let key = |k: &Entry| &area[k.start..k.end];
            members.sort_by(|x, y| key(&x.0).cmp(key(&y.0)));
            level.members = members;
            b.begin_object();
        }
        Ok(level)
    }

    /// Entry `i`, the entries before it having been read in order.
    fn entry(&mut self, i: usize) -> Result<Entry, Malformed> {
        let je = u32_at(self.table, 4 * i)?;
        let field = (je & JENTRY_OFFLENMASK) as usize;
        let end = if je & JENTRY_HAS_OFF != 0 {
            field
        } else {
            self.off + field
        };
        if end < self.off || end > self.area.len() {
            return Err(Malformed("entry past the end"));
        }
        let start = self.off;
        self.off = end;
        Ok(Entry {
            t: je & JENTRY_TYPEMASK,
            start,
            end,
        })
    }

    /// The next item: an element, or a member's key and value; `None` at the end.
    fn next_item(&mut self) -> Result<Option<(Option<Entry>, Entry)>, Malformed> {
        if self.next >= self.count {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        if let Some(&(key, value)) = self.members.get(i) {
            return Ok(Some((Some(key), value)));
        }
        Ok(Some((None, self.entry(i)?)))
    }
}

/// Some members of a top-level jsonb object as compact JSON text, members in
/// byte order of their names: `{"id":5,"region":"eu"}`. `None` when the
/// value is not an object or lacks one of the names. The extension stores
/// this for a row's primary key, and computes it again for a lookup.
pub fn key_text<S: AsRef<str>>(data: &[u8], names: &[S]) -> Result<Option<String>, Malformed> {
    let header = u32_at(data, 0)?;
    if header & JB_FOBJECT == 0 {
        return Ok(None);
    }
    let count = (header & JB_CMASK) as usize;
    let base = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&n| n <= data.len())
        .ok_or(Malformed("entry table past the end"))?;
    let mut spans = Vec::with_capacity(2 * count);
    let mut off = 0usize;
    for i in 0..2 * count {
        let je = u32_at(data, 4 + 4 * i)?;
        let field = (je & JENTRY_OFFLENMASK) as usize;
        let end = if je & JENTRY_HAS_OFF != 0 {
            field
        } else {
            off + field
        };
        if end < off || base + end > data.len() {
            return Err(Malformed("entry past the end"));
        }
        spans.push((je & JENTRY_TYPEMASK, off, end));
        off = end;
    }
    let area = &data[base..];
    let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut out = String::from("{");
    for (n, name) in sorted.iter().enumerate() {
        let Some(i) = (0..count).find(|&i| &area[spans[i].1..spans[i].2] == name.as_bytes()) else {
            return Ok(None);
        };
        let (t, start, end) = spans[count + i];
        if n > 0 {
            out.push(',');
        }
        write_escaped(&mut out, name);
        out.push(':');
        let from = align4(start).min(end);
        match t {
            JENTRY_ISSTRING => write_escaped(&mut out, &String::from_utf8_lossy(&area[start..end])),
            JENTRY_ISNULL => out.push_str("null"),
            JENTRY_ISBOOL_FALSE => out.push_str("false"),
            JENTRY_ISBOOL_TRUE => out.push_str("true"),
            JENTRY_ISNUMERIC => out.push_str(key_number(&numeric_text(&area[from..end])?)),
            JENTRY_ISCONTAINER => {
                // Through the canonical encoding: members in byte order.
                let encoded = encode_jsonb(&area[from..end])?;
                let text = Reader::new(&encoded)
                    .json_text()
                    .map_err(|_| Malformed("container"))?;
                key_numbers_in(&text, &mut out);
            }
            _ => return Err(Malformed("unknown entry type")),
        }
    }
    out.push('}');
    Ok(Some(out))
}

/// A number of a key as its value, whatever its scale: `5.000` and `5.0`
/// as `5`, `-0.0` as `0`, so that a lookup finds what jsonb equality finds.
fn key_number(text: &str) -> &str {
    let t = match text.split_once('.') {
        Some((whole, fraction)) if fraction.bytes().all(|b| b.is_ascii_digit()) => {
            let kept = fraction.trim_end_matches('0');
            &text[..whole.len() + usize::from(!kept.is_empty()) + kept.len()]
        }
        _ => text,
    };
    if t == "-0" {
        "0"
    } else {
        t
    }
}

/// JSON text with each number in it written by [`key_number`], as jsonb
/// equality compares numbers at any depth (`[5.0]` equals `[5]`).
pub(crate) fn key_numbers_in(json: &str, out: &mut String) {
    let mut rest = json;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '-' || c.is_ascii_digit()) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with('"') {
            // A string, to its closing quote: an escaped one does not end it.
            let mut end = 1;
            let bytes = rest.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let end = (end + 1).min(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else {
            let end = rest
                .find(|c: char| {
                    !(c == '-'
                        || c == '+'
                        || c == '.'
                        || c == 'e'
                        || c == 'E'
                        || c.is_ascii_digit())
                })
                .unwrap_or(rest.len());
            out.push_str(key_number(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
}

/// The number of members of a top-level jsonb object, or `None` for any
/// other value.
pub fn object_len(data: &[u8]) -> Result<Option<usize>, Malformed> {
    let header = u32_at(data, 0)?;
    Ok((header & JB_FOBJECT != 0).then_some((header & JB_CMASK) as usize))
}

/// The indexed form of a row's key: the first 8 bytes, big-endian, of
/// SHA-256 over `"audit_log:row_key:v1\0"`, the schema, a zero byte, the
/// table, a zero byte and [`key_text`]. Small enough for a cheap index
/// entry; the table is part of it, so one index serves every table.
pub fn row_key_hash(schema: &str, table: &str, key_text: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"audit_log:row_key:v1\0");
    h.update(schema.as_bytes());
    h.update([0]);
    h.update(table.as_bytes());
    h.update([0]);
    h.update(key_text.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SPECIAL: u16 = 0xC000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_EXT_SIGN_MASK: u16 = 0xF000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_MASK: u16 = 0x1F80;
const NUMERIC_SHORT_DSCALE_SHIFT: u16 = 7;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;

/// The payload of a varlena with a 1-byte or 4-byte header (inline, never
/// compressed: jsonb stores numerics that way).
fn varlena_payload(v: &[u8]) -> Result<&[u8], Malformed> {
    let first = *v.first().ok_or(Malformed("empty numeric"))?;
    let (header, size) = if cfg!(target_endian = "little") {
        if first & 0x01 == 0x01 {
            if first == 0x01 {
                return Err(Malformed("external numeric"));
            }
            (1, usize::from(first >> 1))
        } else if first & 0x03 == 0x00 {
            (4, ((u32_at(v, 0)? >> 2) & 0x3FFF_FFFF) as usize)
        } else {
            return Err(Malformed("compressed numeric"));
        }
    } else if first & 0x80 == 0x80 {
        if first == 0x80 {
            return Err(Malformed("external numeric"));
        }
        (1, usize::from(first & 0x7F))
    } else if first & 0xC0 == 0x00 {
        (4, (u32_at(v, 0)? & 0x3FFF_FFFF) as usize)
    } else {
        return Err(Malformed("compressed numeric"));
    };
    if size < header || size > v.len() {
        return Err(Malformed("numeric length"));
    }
    Ok(&v[header..size])
}

/// A `numeric` varlena as `numeric_out` prints it.
pub fn numeric_text(varlena: &[u8]) -> Result<String, Malformed> {
    let p = varlena_payload(varlena)?;
    let h = u16_at(p, 0)?;
    let (neg, dscale, weight, digits_at) = match h & NUMERIC_SIGN_MASK {
        NUMERIC_SPECIAL => {
            return match h & NUMERIC_EXT_SIGN_MASK {
                NUMERIC_NAN => Ok("NaN".into()),
                NUMERIC_PINF => Ok("Infinity".into()),
                NUMERIC_NINF => Ok("-Infinity".into()),
                _ => Err(Malformed("unknown special numeric")),
            };
        }
        NUMERIC_SHORT => {
            let w = i32::from(h & NUMERIC_SHORT_WEIGHT_MASK);
            let weight = if h & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
                w - 64
            } else {
                w
            };
            let dscale = (h & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT;
            (h & NUMERIC_SHORT_SIGN_MASK != 0, dscale, weight, 2)
        }
        sign => {
            let weight = i32::from(u16_at(p, 2)? as i16);
            (sign == NUMERIC_NEG, h & NUMERIC_DSCALE_MASK, weight, 4)
        }
    };
    let body = p.get(digits_at..).ok_or(Malformed("truncated numeric"))?;
    if body.len() % 2 != 0 {
        return Err(Malformed("odd numeric digit bytes"));
    }
    let digits: Vec<i16> = body
        .chunks_exact(2)
        .map(|c| i16::from_ne_bytes([c[0], c[1]]))
        .collect();
    if digits.iter().any(|&d| !(0..10_000).contains(&d)) {
        return Err(Malformed("numeric digit out of range"));
    }
    Ok(numeric_digits_text(neg, weight, dscale, &digits))
}

/// `get_str_from_var` of PostgreSQL's numeric.c: base-10000 digits, the
/// weight of the first, and the number of decimal places to print.
pub fn numeric_digits_text(neg: bool, weight: i32, dscale: u16, digits: &[i16]) -> String {
    let mut out = String::with_capacity(8 + 4 * digits.len() + usize::from(dscale));
    if neg {
        out.push('-');
    }
    let digit = |d: i32| -> i16 {
        usize::try_from(d)
            .ok()
            .and_then(|d| digits.get(d).copied())
            .unwrap_or(0)
    };
    let mut d: i32;
    if weight < 0 {
        d = weight + 1;
        out.push('0');
    } else {
        d = 0;
        while d <= weight {
            // The first group is printed without leading zeros.
            push_group(&mut out, digit(d), d != 0);
            d += 1;
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + usize::from(dscale);
        let mut i = 0;
        while i < dscale {
            push_group(&mut out, digit(d), true);
            d += 1;
            i += 4;
        }
        out.truncate(end);
    }
    out
}

/// One base-10000 digit in decimal: four digits with leading zeros when
/// `pad`, else without (`{:04}` and `{}`, written by hand: this runs for
/// every numeric captured or read).
fn push_group(out: &mut String, g: i16, pad: bool) {
    if !(0..10_000).contains(&g) {
        // Not a valid digit (a damaged value): as numeric.c would print it.
        use std::fmt::Write;
        let _ = if pad {
            write!(out, "{g:04}")
        } else {
            write!(out, "{g}")
        };
        return;
    }
    let g = g as u16;
    let ds = [g / 1000, g / 100 % 10, g / 10 % 10, g % 10];
    let skip = if pad {
        0
    } else {
        ds[..3].iter().take_while(|&&x| x == 0).count()
    };
    for &x in &ds[skip..] {
        out.push(char::from(b'0' + x as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::encode_json;

    fn canonical(text: &str) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut buf = Vec::new();
        encode_json(&v, &mut buf);
        buf
    }

    fn varlena4(payload: &[u8]) -> Vec<u8> {
        let size = (payload.len() + 4) as u32;
        let header = if cfg!(target_endian = "little") {
            size << 2
        } else {
            size
        };
        let mut v = header.to_ne_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// A numeric varlena (4-byte header, long format) from its parts.
    fn numeric(neg: bool, weight: i16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let sign = if neg { NUMERIC_NEG } else { 0 };
        let mut p = (sign | dscale).to_ne_bytes().to_vec();
        p.extend_from_slice(&weight.to_ne_bytes());
        for d in digits {
            p.extend_from_slice(&d.to_ne_bytes());
        }
        varlena4(&p)
    }

    /// A minimal jsonb writer for tests. Every third entry carries its end
    /// offset instead of its length, as PostgreSQL does every 32nd.
    enum J {
        Null,
        Bool(bool),
        Str(&'static str),
        Num(Vec<u8>),
        Arr(Vec<J>),
        Obj(Vec<(&'static str, J)>),
    }

    fn write(j: &J) -> Vec<u8> {
        let (header, items): (u32, Vec<&J>) = match j {
            J::Arr(a) => (JB_FARRAY | a.len() as u32, a.iter().collect()),
            J::Obj(o) => (
                JB_FOBJECT | o.len() as u32,
                o.iter().map(|(_, v)| v).collect(),
            ),
            _ => (JB_FARRAY | JB_FSCALAR | 1, vec![j]),
        };
        let mut parts: Vec<(u32, Vec<u8>)> = Vec::new();
        if let J::Obj(o) = j {
            for (k, _) in o {
                parts.push((JENTRY_ISSTRING, k.as_bytes().to_vec()));
            }
        }
        for v in items {
            parts.push(match v {
                J::Null => (JENTRY_ISNULL, vec![]),
                J::Bool(false) => (JENTRY_ISBOOL_FALSE, vec![]),
                J::Bool(true) => (JENTRY_ISBOOL_TRUE, vec![]),
                J::Str(s) => (JENTRY_ISSTRING, s.as_bytes().to_vec()),
                J::Num(n) => (JENTRY_ISNUMERIC, n.clone()),
                c => (JENTRY_ISCONTAINER, write(c)),
            });
        }
        let mut area = Vec::new();
        let mut entries = Vec::new();
        for (i, (t, bytes)) in parts.iter().enumerate() {
            let start = area.len();
            if *t == JENTRY_ISNUMERIC || *t == JENTRY_ISCONTAINER {
                area.resize(align4(start), 0);
            }
            area.extend_from_slice(bytes);
            let je = if i % 3 == 2 {
                JENTRY_HAS_OFF | area.len() as u32
            } else {
                (area.len() - start) as u32
            };
            entries.push(t | je);
        }
        let mut out = header.to_ne_bytes().to_vec();
        for e in entries {
            out.extend_from_slice(&e.to_ne_bytes());
        }
        out.extend_from_slice(&area);
        out
    }

    #[test]
    fn numbers_print_as_numeric_out() {
        let cases: &[(bool, i16, u16, &[i16], &str)] = &[
            (false, 0, 0, &[], "0"),
            (false, 0, 2, &[], "0.00"),
            (false, 0, 0, &[1], "1"),
            (false, 0, 2, &[1, 5000], "1.50"),
            (true, 0, 2, &[12, 3400], "-12.34"),
            (false, 1, 0, &[1], "10000"),
            (false, 2, 0, &[12], "1200000000"),
            (false, -1, 4, &[5], "0.0005"),
            (false, -2, 6, &[700], "0.000007"),
            (false, -2, 8, &[7], "0.00000007"),
            (false, 0, 5, &[3, 1415, 9000], "3.14159"),
            (true, 1, 3, &[98, 7654, 3210], "-987654.321"),
            (false, 0, 1, &[9999, 9000], "9999.9"),
        ];
        for &(neg, w, ds, digits, want) in cases {
            let v = numeric(neg, w, ds, digits);
            assert_eq!(numeric_text(&v).unwrap(), want, "{neg} {w} {ds} {digits:?}");
        }
    }

    #[test]
    fn digit_groups_print_as_format_does() {
        // Every i16, valid digit or not, padded and not.
        for g in i16::MIN..=i16::MAX {
            for pad in [false, true] {
                let mut got = String::new();
                push_group(&mut got, g, pad);
                let want = if pad {
                    format!("{g:04}")
                } else {
                    format!("{g}")
                };
                assert_eq!(got, want, "{g} {pad}");
            }
        }
    }

    #[test]
    fn short_and_special_numerics() {
        // Short format with a 1-byte varlena header: 1.5.
        let h: u16 = NUMERIC_SHORT | (1 << NUMERIC_SHORT_DSCALE_SHIFT);
        let mut p = h.to_ne_bytes().to_vec();
        for d in [1i16, 5000] {
            p.extend_from_slice(&d.to_ne_bytes());
        }
        let mut short = if cfg!(target_endian = "little") {
            vec![(((p.len() + 1) as u8) << 1) | 1]
        } else {
            vec![0x80 | (p.len() + 1) as u8]
        };
        short.extend_from_slice(&p);
        assert_eq!(numeric_text(&short).unwrap(), "1.5");
        // Negative sign and negative weight: -0.0005.
        let h: u16 = NUMERIC_SHORT
            | NUMERIC_SHORT_SIGN_MASK
            | (4 << NUMERIC_SHORT_DSCALE_SHIFT)
            | NUMERIC_SHORT_WEIGHT_SIGN_MASK
            | (64 - 1);
        let mut p = h.to_ne_bytes().to_vec();
        p.extend_from_slice(&5i16.to_ne_bytes());
        assert_eq!(numeric_text(&varlena4(&p)).unwrap(), "-0.0005");
        for (h, want) in [
            (NUMERIC_NAN, "NaN"),
            (NUMERIC_PINF, "Infinity"),
            (NUMERIC_NINF, "-Infinity"),
        ] {
            assert_eq!(numeric_text(&varlena4(&h.to_ne_bytes())).unwrap(), want);
        }
    }

    #[test]
    fn containers_match_the_text_route() {
        let doc = J::Obj(vec![
            ("id", J::Num(numeric(false, 0, 0, &[42]))),
            ("name", J::Str("caf\u{e9} \"x\"")),
            ("price", J::Num(numeric(false, 0, 2, &[1, 5000]))),
            ("ok", J::Bool(true)),
            ("gone", J::Null),
            (
                "tags",
                J::Arr(vec![
                    J::Str("a"),
                    J::Num(numeric(true, 0, 0, &[7])),
                    J::Arr(vec![]),
                    J::Obj(vec![]),
                    J::Bool(false),
                ]),
            ),
            ("b", J::Obj(vec![("z", J::Null), ("a", J::Str(""))])),
        ]);
        let got = encode_jsonb(&write(&doc)).unwrap();
        let want = canonical(
            r#"{"id": 42, "name": "café \"x\"", "price": 1.50, "ok": true, "gone": null,
                "tags": ["a", -7, [], {}, false], "b": {"z": null, "a": ""}}"#,
        );
        assert_eq!(got, want);
        assert_eq!(
            encode_jsonb(&write(&J::Str("plain"))).unwrap(),
            canonical(r#""plain""#)
        );
        let num = J::Num(numeric(false, 0, 1, &[2, 5000]));
        assert_eq!(encode_jsonb(&write(&num)).unwrap(), canonical("2.5"));
    }

    #[test]
    fn key_text_picks_members_in_name_order() {
        let row = write(&J::Obj(vec![
            ("id", J::Num(numeric(false, 0, 0, &[42]))),
            ("region", J::Str("e\"u")),
            ("amount", J::Num(numeric(false, 0, 2, &[1, 5000]))),
            ("tags", J::Arr(vec![J::Str("b"), J::Null])),
            ("ok", J::Bool(true)),
        ]));
        assert_eq!(
            key_text(&row, &["id"]).unwrap().as_deref(),
            Some(r#"{"id":42}"#)
        );
        assert_eq!(
            key_text(&row, &["region", "id"]).unwrap().as_deref(),
            Some(r#"{"id":42,"region":"e\"u"}"#)
        );
        assert_eq!(
            key_text(&row, &["tags", "amount", "ok"])
                .unwrap()
                .as_deref(),
            Some(r#"{"amount":1.5,"ok":true,"tags":["b",null]}"#)
        );
        assert_eq!(key_text(&row, &["missing"]).unwrap(), None);
        assert_eq!(object_len(&row).unwrap(), Some(5));
        assert_eq!(object_len(&write(&J::Arr(vec![]))).unwrap(), None);
        let h = row_key_hash("public", "t", r#"{"id":42}"#);
        assert_eq!(h, row_key_hash("public", "t", r#"{"id":42}"#));
        assert_ne!(h, row_key_hash("public", "u", r#"{"id":42}"#));
        assert_ne!(h, row_key_hash("publi", "ct", r#"{"id":42}"#));
        assert_eq!(key_text(&write(&J::Arr(vec![])), &["id"]).unwrap(), None);
    }

    #[test]
    fn key_numbers_are_compared_by_value() {
        for (text, want) in [
            ("5", "5"),
            ("5.000", "5"),
            ("5.0", "5"),
            ("100.50", "100.5"),
            ("-0.00", "0"),
            ("-0", "0"),
            ("0.001", "0.001"),
            ("-12.30", "-12.3"),
            ("10", "10"),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
        ] {
            assert_eq!(key_number(text), want, "{text}");
        }
        let key = |scale, digits: &[i16]| {
            let row = write(&J::Obj(vec![(
                "id",
                J::Num(numeric(false, 0, scale, digits)),
            )]));
            key_text(&row, &["id"]).unwrap().unwrap()
        };
        assert_eq!(key(3, &[5]), key(0, &[5]));
        // The same key text from the row's canonical encoding (an event's
        // stored row), which index_history() files earlier events by.
        let row = write(&J::Obj(vec![
            ("id", J::Num(numeric(false, 0, 3, &[5]))),
            (
                "deep",
                J::Arr(vec![J::Arr(vec![J::Num(numeric(false, 0, 1, &[7]))])]),
            ),
            (
                "k\"ey",
                J::Arr(vec![
                    J::Num(numeric(false, 0, 2, &[1, 5000])),
                    J::Str("2.0"),
                ]),
            ),
        ]));
        let canonical_row = encode_jsonb(&row).unwrap();
        for names in [
            &["id"][..],
            &["k\"ey", "id"],
            &["deep"],
            &["nope"],
            &["id", "nope"],
        ] {
            assert_eq!(
                crate::encoding::decode::key_text(&canonical_row, None, names).unwrap(),
                key_text(&row, names).unwrap(),
                "{names:?}"
            );
        }
        // A member the row lacks is taken from the rest, never one it has.
        let changed = encode_jsonb(&write(&J::Obj(vec![(
            "id",
            J::Num(numeric(false, 0, 0, &[6])),
        )])))
        .unwrap();
        assert_eq!(
            crate::encoding::decode::key_text(&changed, Some(&canonical_row), &["id", "deep"])
                .unwrap()
                .as_deref(),
            Some(r#"{"deep":[[7]],"id":6}"#)
        );
        assert_eq!(
            crate::encoding::decode::key_text(&changed, None, &["id", "deep"]).unwrap(),
            None
        );
        assert_eq!(
            key_text(&row, &["k\"ey", "id"]).unwrap().as_deref(),
            Some(r#"{"id":5,"k\"ey":[1.5,"2.0"]}"#)
        );
        let mut nested = String::new();
        key_numbers_in(
            r#"[5.000,{"a\"1.0":-0.0,"b":[10,2.50]},"x 3.0"]"#,
            &mut nested,
        );
        assert_eq!(nested, r#"[5,{"a\"1.0":0,"b":[10,2.5]},"x 3.0"]"#);
        assert_ne!(key(1, &[5, 1000]), key(0, &[5]));
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let good = write(&J::Obj(vec![(
            "k",
            J::Arr(vec![J::Num(numeric(false, 0, 0, &[1])), J::Str("s")]),
        )]));
        assert!(encode_jsonb(&good).is_ok());
        for cut in 0..good.len() {
            assert!(encode_jsonb(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let _ = encode_jsonb(&bad);
            }
        }
        assert!(encode_jsonb(&0u32.to_ne_bytes()).is_err());
    }
}

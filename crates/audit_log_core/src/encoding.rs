//! The canonical encoding: a length-prefixed binary form of events, links and
//! JSON values. It is injective (two different records never encode alike), it
//! depends on nothing a dump, restore or replica changes, and it is simple to
//! re-implement from docs/FORMAT.md.
//!
//! Primitives (all integers big-endian):
//! - `i64`/`u64`: 8 bytes; `text`: u32 byte length, then UTF-8 bytes;
//! - `opt<T>`: 0x00 for NULL, or 0x01 followed by T;
//! - JSON: a one-byte tag, see [`tag`]. Object keys are sorted by their UTF-8
//!   bytes; numbers keep the exact decimal text PostgreSQL prints.

use serde_json::Value;

use crate::model::{Event, Json, Link};

pub mod tag {
    pub const NULL: u8 = 0x00;
    pub const FALSE: u8 = 0x01;
    pub const TRUE: u8 = 0x02;
    pub const NUMBER: u8 = 0x03;
    pub const STRING: u8 = 0x04;
    pub const ARRAY: u8 = 0x05;
    pub const OBJECT: u8 = 0x06;
}

pub fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_len(buf: &mut Vec<u8>, n: usize) {
    // Lengths above 4 GiB cannot occur: PostgreSQL values are at most 1 GiB.
    buf.extend_from_slice(&(n as u32).to_be_bytes());
}

pub fn put_text(buf: &mut Vec<u8>, s: &str) {
    put_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

pub fn put_opt_text(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_text(buf, s);
        }
    }
}

pub fn put_opt_json(buf: &mut Vec<u8>, v: Option<&Json>) {
    match v {
        None => buf.push(0),
        Some(Json::Value(v)) => {
            buf.push(1);
            encode_json(v, buf);
        }
        Some(Json::Encoded(bytes)) => {
            buf.push(1);
            buf.extend_from_slice(bytes);
        }
    }
}

/// Build the encoding of a JSON value from a stream of parts, for sources
/// that are not a `serde_json::Value` (PostgreSQL's jsonb, walked in place).
/// Everything is written into one buffer. An object's members must come out
/// in byte order of their keys, whatever order the source has, so each
/// object remembers where its members start and reorders them when it ends.
#[derive(Default)]
pub struct JsonBuilder {
    buf: Vec<u8>,
    stack: Vec<Frame>,
}

enum Frame {
    /// Where the count goes, and how many items so far.
    Array { count_at: usize, count: u32 },
    /// Where the count goes, then each member's (key start, value start).
    Object {
        count_at: usize,
        members: Vec<(usize, usize)>,
    },
}

impl JsonBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Before a value: count it into an enclosing array.
    fn item(&mut self) {
        if let Some(Frame::Array { count, .. }) = self.stack.last_mut() {
            *count += 1;
        }
    }

    pub fn null(&mut self) {
        self.item();
        self.buf.push(tag::NULL);
    }

    pub fn bool(&mut self, b: bool) {
        self.item();
        self.buf.push(if b { tag::TRUE } else { tag::FALSE });
    }

    pub fn number(&mut self, text: &str) {
        self.item();
        self.buf.push(tag::NUMBER);
        put_text(&mut self.buf, text);
    }

    pub fn string(&mut self, s: &[u8]) {
        self.item();
        self.buf.push(tag::STRING);
        put_len(&mut self.buf, s.len());
        self.buf.extend_from_slice(s);
    }

    fn open(&mut self, t: u8) -> usize {
        self.item();
        self.buf.push(t);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        at
    }

    pub fn begin_array(&mut self) {
        let count_at = self.open(tag::ARRAY);
        self.stack.push(Frame::Array { count_at, count: 0 });
    }

    pub fn begin_object(&mut self) {
        let count_at = self.open(tag::OBJECT);
        self.stack.push(Frame::Object {
            count_at,
            members: Vec::new(),
        });
    }

    /// The key of the next member of the innermost object.
    pub fn key(&mut self, k: &[u8]) {
        let key_at = self.buf.len();
        put_len(&mut self.buf, k.len());
        self.buf.extend_from_slice(k);
        let value_at = self.buf.len();
        if let Some(Frame::Object { members, .. }) = self.stack.last_mut() {
            members.push((key_at, value_at));
        }
    }

    /// Close the innermost array or object.
    pub fn end(&mut self) {
        match self.stack.pop() {
            None => {}
            Some(Frame::Array { count_at, count }) => {
                self.buf[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
            }
            Some(Frame::Object { count_at, members }) => {
                let n = members.len() as u32;
                self.buf[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
                let body = count_at + 4;
                let end = self.buf.len();
                // (key bytes, whole member) of each member, in source order.
                let spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = members
                    .iter()
                    .enumerate()
                    .map(|(i, &(key_at, value_at))| {
                        let next = members.get(i + 1).map_or(end, |m| m.0);
                        (key_at + 4..value_at, key_at..next)
                    })
                    .collect();
                let sorted = spans
                    .windows(2)
                    .all(|w| self.buf[w[0].0.clone()] <= self.buf[w[1].0.clone()]);
                if !sorted {
                    let mut order: Vec<usize> = (0..spans.len()).collect();
                    order.sort_by(|&a, &b| {
                        self.buf[spans[a].0.clone()].cmp(&self.buf[spans[b].0.clone()])
                    });
                    let mut out = Vec::with_capacity(end - body);
                    for i in order {
                        out.extend_from_slice(&self.buf[spans[i].1.clone()]);
                    }
                    self.buf.truncate(body);
                    self.buf.extend_from_slice(&out);
                }
            }
        }
    }

    /// The encoding of the one value built.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Encode one JSON value. `serde_json` must be built with `arbitrary_precision`
/// so that a number's text is kept exactly (`1.50` stays `1.50`).
pub fn encode_json(v: &Value, buf: &mut Vec<u8>) {
    match v {
        Value::Null => buf.push(tag::NULL),
        Value::Bool(false) => buf.push(tag::FALSE),
        Value::Bool(true) => buf.push(tag::TRUE),
        Value::Number(n) => {
            buf.push(tag::NUMBER);
            put_text(buf, &n.to_string());
        }
        Value::String(s) => {
            buf.push(tag::STRING);
            put_text(buf, s);
        }
        Value::Array(items) => {
            buf.push(tag::ARRAY);
            put_len(buf, items.len());
            for item in items {
                encode_json(item, buf);
            }
        }
        Value::Object(map) => {
            buf.push(tag::OBJECT);
            put_len(buf, map.len());
            // serde_json's default map is a BTreeMap<String, _>: iteration is in
            // byte order of the keys already. Sort anyway so that the contract does
            // not hang on a cargo feature (preserve_order) elsewhere in the build.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (k, val) in entries {
                put_text(buf, k);
                encode_json(val, buf);
            }
        }
    }
}

/// The canonical encoding of an event: every field but `prev_hash` and `hash`,
/// in the order of docs/FORMAT.md.
pub fn encode_event(e: &Event, buf: &mut Vec<u8>) {
    put_i64(buf, e.id);
    put_u64(buf, e.tx_id);
    put_i64(buf, e.tx_seq);
    put_i64(buf, e.recorded_at);
    put_i64(buf, e.statement_at);
    put_text(buf, &e.session_user_name);
    put_text(buf, &e.current_user_name);
    put_opt_text(buf, e.application_name.as_deref());
    put_opt_text(buf, e.client_addr.as_deref());
    put_opt_json(buf, e.context.as_ref());
    put_text(buf, &e.table_schema);
    put_text(buf, &e.table_name);
    put_text(buf, &e.op);
    put_opt_json(buf, e.old_row.as_ref());
    put_opt_json(buf, e.new_row.as_ref());
}

/// The canonical encoding of a link: every field but `prev_link_hash` and `link_hash`.
pub fn encode_link(l: &Link, buf: &mut Vec<u8>) {
    put_i64(buf, i64::from(l.chain_id));
    put_i64(buf, l.seq);
    put_u64(buf, l.tx_id);
    put_i64(buf, l.event_count);
    put_i64(buf, l.first_event);
    put_i64(buf, l.last_event);
    buf.extend_from_slice(&l.last_event_hash);
    put_i64(buf, l.committed_at);
}

/// Decoding exists to prove injectivity in tests and to let tools inspect bytes.
pub mod decode {
    use serde_json::{Map, Number, Value};

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    #[error("malformed canonical encoding at byte {0}")]
    pub struct Malformed(pub usize);

    pub struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Reader { bytes, pos: 0 }
        }

        pub fn is_empty(&self) -> bool {
            self.pos == self.bytes.len()
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
            let end = self.pos.checked_add(n).ok_or(Malformed(self.pos))?;
            let s = self.bytes.get(self.pos..end).ok_or(Malformed(self.pos))?;
            self.pos = end;
            Ok(s)
        }

        pub fn u8(&mut self) -> Result<u8, Malformed> {
            Ok(self.take(1)?[0])
        }

        pub fn i64(&mut self) -> Result<i64, Malformed> {
            let b = self.take(8)?;
            Ok(i64::from_be_bytes(
                b.try_into().map_err(|_| Malformed(self.pos))?,
            ))
        }

        pub fn len(&mut self) -> Result<usize, Malformed> {
            let b = self.take(4)?;
            Ok(u32::from_be_bytes(b.try_into().map_err(|_| Malformed(self.pos))?) as usize)
        }

        pub fn text(&mut self) -> Result<String, Malformed> {
            let n = self.len()?;
            let at = self.pos;
            let b = self.take(n)?;
            String::from_utf8(b.to_vec()).map_err(|_| Malformed(at))
        }

        pub fn json(&mut self) -> Result<Value, Malformed> {
            let at = self.pos;
            Ok(match self.u8()? {
                super::tag::NULL => Value::Null,
                super::tag::FALSE => Value::Bool(false),
                super::tag::TRUE => Value::Bool(true),
                super::tag::NUMBER => {
                    let t = self.text()?;
                    Value::Number(t.parse::<Number>().map_err(|_| Malformed(at))?)
                }
                super::tag::STRING => Value::String(self.text()?),
                super::tag::ARRAY => {
                    let n = self.len()?;
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(self.json()?);
                    }
                    Value::Array(items)
                }
                super::tag::OBJECT => {
                    let n = self.len()?;
                    let mut map = Map::new();
                    let mut last: Option<String> = None;
                    for _ in 0..n {
                        let k = self.text()?;
                        // Keys must be strictly increasing: a canonical encoding has one form.
                        if last.as_ref().is_some_and(|l| l.as_bytes() >= k.as_bytes()) {
                            return Err(Malformed(at));
                        }
                        let v = self.json()?;
                        last = Some(k.clone());
                        map.insert(k, v);
                    }
                    Value::Object(map)
                }
                _ => return Err(Malformed(at)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feed(b: &mut JsonBuilder, v: &Value) {
        match v {
            Value::Null => b.null(),
            Value::Bool(x) => b.bool(*x),
            Value::Number(n) => b.number(&n.to_string()),
            Value::String(s) => b.string(s.as_bytes()),
            Value::Array(items) => {
                b.begin_array();
                items.iter().for_each(|i| feed(b, i));
                b.end();
            }
            Value::Object(map) => {
                b.begin_object();
                // jsonb's storage order: by length, then bytes
                let mut entries: Vec<_> = map.iter().collect();
                entries
                    .sort_by(|x, y| (x.0.len(), x.0.as_bytes()).cmp(&(y.0.len(), y.0.as_bytes())));
                for (k, val) in entries {
                    b.key(k.as_bytes());
                    feed(b, val);
                }
                b.end();
            }
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            "[a-zé😀 ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zé]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn builder_in_jsonb_order_matches_encode_json(v in arb_json()) {
            let mut b = JsonBuilder::new();
            feed(&mut b, &v);
            proptest::prop_assert_eq!(b.finish(), enc(&v));
        }
    }

    #[test]
    fn builder_matches_encode_json() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1.50, "é", null, true], "a": {"z": false, "": 0}, "aa": []}"#,
        )
        .unwrap();
        let mut b = JsonBuilder::new();
        b.begin_object();
        // jsonb's own order: by length, then bytes
        b.key(b"a");
        b.begin_object();
        b.key(b"");
        b.number("0");
        b.key(b"z");
        b.bool(false);
        b.end();
        b.key(b"b");
        b.begin_array();
        b.number("1.50");
        b.string("é".as_bytes());
        b.null();
        b.bool(true);
        b.end();
        b.key(b"aa");
        b.begin_array();
        b.end();
        b.end();
        assert_eq!(b.finish(), enc(&v));
    }

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        encode_json(v, &mut b);
        b
    }

    #[test]
    fn number_text_is_kept_exactly() {
        let a: Value = serde_json::from_str("1.50").unwrap();
        let b: Value = serde_json::from_str("1.5").unwrap();
        assert_ne!(enc(&a), enc(&b));
        let big: Value = serde_json::from_str("123456789012345678901234567890.123456789").unwrap();
        let e = enc(&big);
        assert_eq!(&e[5..], b"123456789012345678901234567890.123456789");
    }

    #[test]
    fn string_and_number_differ() {
        assert_ne!(
            enc(&json!("1")),
            enc(&serde_json::from_str::<Value>("1").unwrap())
        );
    }

    #[test]
    fn object_keys_sorted_by_bytes() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":2,"é":3,"aa":4}"#).unwrap();
        let e = enc(&v);
        let mut r = decode::Reader::new(&e);
        assert_eq!(r.json().unwrap(), v);
        // first key encoded is "a"
        assert_eq!(&e[5..10], &[0, 0, 0, 1, b'a']);
    }

    #[test]
    fn null_json_differs_from_missing() {
        let mut a = Vec::new();
        put_opt_json(&mut a, None);
        let mut b = Vec::new();
        put_opt_json(&mut b, Some(&Json::Value(Value::Null)));
        assert_ne!(a, b);
    }

    #[test]
    fn decoder_rejects_unsorted_keys() {
        let mut b = vec![tag::OBJECT];
        put_len(&mut b, 2);
        put_text(&mut b, "b");
        b.push(tag::NULL);
        put_text(&mut b, "a");
        b.push(tag::NULL);
        assert!(decode::Reader::new(&b).json().is_err());
    }
}

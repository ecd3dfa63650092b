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
//!
//! [`JsonBuilder`] builds the encoding of a value part by part; [`decode`]
//! reads it back. Neither recurses, whatever the nesting depth.

use serde_json::Value;

use crate::model::{Event, Json, Link};

mod builder;
pub mod decode;
pub mod packed;

pub use builder::JsonBuilder;

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

/// Encode one JSON value. `serde_json` must be built with `arbitrary_precision`
/// so that a number's text is kept exactly (`1.50` stays `1.50`). The walk
/// keeps its own stack, so a deep value encodes without recursion (but note
/// that dropping a deep `Value` recurses: row data is better never made into
/// one; see [`crate::json_text`]).
pub fn encode_json(v: &Value, buf: &mut Vec<u8>) {
    enum Next<'a> {
        Value(&'a Value),
        Key(&'a str),
    }
    let mut todo = vec![Next::Value(v)];
    while let Some(next) = todo.pop() {
        let v = match next {
            Next::Key(k) => {
                put_text(buf, k);
                continue;
            }
            Next::Value(v) => v,
        };
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
                todo.extend(items.iter().rev().map(Next::Value));
            }
            Value::Object(map) => {
                buf.push(tag::OBJECT);
                put_len(buf, map.len());
                // serde_json's default map is a BTreeMap<String, _>: iteration is in
                // byte order of the keys already. Sort anyway so that the contract does
                // not hang on a cargo feature (preserve_order) elsewhere in the build.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (k, val) in entries.into_iter().rev() {
                    todo.push(Next::Value(val));
                    todo.push(Next::Key(k));
                }
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

/// About how many bytes [`encode_event`] writes for `e`: exact for every
/// field but a JSON value not yet encoded (a configuration event's
/// details), counted as 64. For reserving room once, before encoding.
pub fn event_size_hint(e: &Event) -> usize {
    let json = |j: &Option<Json>| match j {
        None => 1,
        Some(Json::Encoded(b)) => 1 + b.len(),
        Some(Json::Value(_)) => 64,
    };
    let opt_text = |t: &Option<String>| t.as_ref().map_or(1, |t| 5 + t.len());
    5 * 8
        + [
            &e.session_user_name,
            &e.current_user_name,
            &e.table_schema,
            &e.table_name,
            &e.op,
        ]
        .iter()
        .map(|t| 4 + t.len())
        .sum::<usize>()
        + opt_text(&e.application_name)
        + opt_text(&e.client_addr)
        + json(&e.context)
        + json(&e.old_row)
        + json(&e.new_row)
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
            proptest::prop_assert!(!b.duplicate_keys());
            proptest::prop_assert_eq!(b.finish(), enc(&v));
        }

        #[test]
        fn decoding_prints_what_serde_json_prints(v in arb_json()) {
            let e = enc(&v);
            let mut r = decode::Reader::new(&e);
            proptest::prop_assert_eq!(r.json_text().unwrap(), serde_json::to_string(&v).unwrap());
            proptest::prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn builder_reorders_nested_objects_once() {
        // Members out of order at three levels, with a sorted object between.
        let mut b = JsonBuilder::new();
        b.begin_object();
        b.key(b"z");
        b.begin_object();
        b.key(b"y");
        b.null();
        b.key(b"b");
        b.begin_array();
        b.begin_object();
        b.key(b"q");
        b.bool(true);
        b.key(b"p");
        b.begin_object();
        b.key(b"n");
        b.number("1");
        b.key(b"m");
        b.number("2");
        b.end();
        b.end();
        b.end();
        b.end();
        b.key(b"a");
        b.string(b"s");
        b.end();
        assert!(!b.duplicate_keys());
        let want: Value = serde_json::from_str(
            r#"{"a": "s", "z": {"b": [{"p": {"m": 2, "n": 1}, "q": true}], "y": null}}"#,
        )
        .unwrap();
        assert_eq!(b.finish(), enc(&want));
    }

    #[test]
    fn builder_notes_duplicate_keys() {
        for keys in [[&b"a"[..], b"a", b"b"], [b"b", b"a", b"b"]] {
            let mut b = JsonBuilder::new();
            b.begin_object();
            for k in keys {
                b.key(k);
                b.null();
            }
            b.end();
            assert!(b.duplicate_keys(), "{keys:?}");
        }
    }

    #[test]
    fn decoder_rejects_bad_numbers_and_tags() {
        for bad in ["01", "1.", "+1", "NaN", "", "1e", "--1"] {
            let mut b = vec![tag::NUMBER];
            put_text(&mut b, bad);
            assert!(decode::Reader::new(&b).json().is_err(), "{bad:?}");
        }
        assert!(decode::Reader::new(&[0x07]).json().is_err());
        // An array that claims more items than there are bytes.
        assert!(
            decode::Reader::new(&[tag::ARRAY, 0xFF, 0xFF, 0xFF, 0xFF, tag::NULL])
                .json()
                .is_err()
        );
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
        assert_eq!(r.json_text().unwrap(), serde_json::to_string(&v).unwrap());
        assert!(r.is_empty());
        assert_eq!(decode::Reader::new(&e).json().unwrap(), &e[..]);
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

//! Values nested 10,000 and 100,000 deep, as a hostile role can store them,
//! through every route into the canonical encoding: PostgreSQL's binary
//! jsonb, JSON text as `jsonb_out` prints it, and the canonical encoding
//! read back. Each must agree, byte for byte, with an expectation written
//! down here from the format's definition, and none may overflow a stack,
//! on the test's thread or on a verify worker's.

use audit_log_core::encoding::decode::Reader;
use audit_log_core::encoding::encode_json;
use audit_log_core::json_text::encode_json_text;
use audit_log_core::jsonb::{encode_jsonb, key_text};
use audit_log_core::parallel::map_ordered;

// PostgreSQL's jsonb layout (src/include/utils/jsonb.h).
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;

const DEPTHS: [usize; 2] = [10_000, 100_000];

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `[[[…[]…]]]`
    Arrays,
    /// `{"a": {"a": … {} …}}`
    Objects,
    /// `{"b": true, "aa": [{"b": true, "aa": [… [] …, "x"]}, "x"]}`: jsonb
    /// stores "b" before "aa" (shorter keys first); the encoding puts "aa"
    /// first (byte order), at every level.
    Mixed,
}

/// One nesting level: is it an object (else an array)?
fn is_object(shape: Shape, level: usize) -> bool {
    match shape {
        Shape::Arrays => false,
        Shape::Objects => true,
        Shape::Mixed => level.is_multiple_of(2),
    }
}

/// What each shape is, in every form, around one child.
struct Level {
    /// The binary jsonb before the child, given the child's size.
    jsonb_prefix: fn(usize) -> Vec<u8>,
    jsonb_suffix: &'static [u8],
    text_prefix: &'static str,
    text_suffix: &'static str,
    /// The compact text the canonical encoding prints back as.
    compact_prefix: &'static str,
    compact_suffix: &'static str,
    canonical_prefix: &'static [u8],
    canonical_suffix: &'static [u8],
}

fn ne(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn level(shape: Shape, depth: usize) -> Level {
    match (shape, is_object(shape, depth)) {
        (Shape::Arrays, _) => Level {
            jsonb_prefix: |child| ne(&[JB_FARRAY | 1, JENTRY_ISCONTAINER | child as u32]),
            jsonb_suffix: b"",
            text_prefix: "[",
            text_suffix: "]",
            compact_prefix: "[",
            compact_suffix: "]",
            canonical_prefix: b"\x05\x00\x00\x00\x01",
            canonical_suffix: b"",
        },
        (Shape::Objects, _) => Level {
            // Key "a", then three bytes to align the child to 4.
            jsonb_prefix: |child| {
                let mut v = ne(&[
                    JB_FOBJECT | 1,
                    JENTRY_ISSTRING | 1,
                    JENTRY_ISCONTAINER | (3 + child) as u32,
                ]);
                v.extend_from_slice(b"a\0\0\0");
                v
            },
            jsonb_suffix: b"",
            text_prefix: "{\"a\": ",
            text_suffix: "}",
            compact_prefix: "{\"a\":",
            compact_suffix: "}",
            canonical_prefix: b"\x06\x00\x00\x00\x01\x00\x00\x00\x01a",
            canonical_suffix: b"",
        },
        (Shape::Mixed, true) => Level {
            // Keys "b", "aa"; values true (no data), then the child aligned to 4.
            jsonb_prefix: |child| {
                let mut v = ne(&[
                    JB_FOBJECT | 2,
                    JENTRY_ISSTRING | 1,
                    JENTRY_ISSTRING | 2,
                    JENTRY_ISBOOL_TRUE,
                    JENTRY_ISCONTAINER | (1 + child) as u32,
                ]);
                v.extend_from_slice(b"baa\0");
                v
            },
            jsonb_suffix: b"",
            text_prefix: "{\"b\": true, \"aa\": ",
            text_suffix: "}",
            compact_prefix: "{\"aa\":",
            compact_suffix: ",\"b\":true}",
            canonical_prefix: b"\x06\x00\x00\x00\x02\x00\x00\x00\x02aa",
            canonical_suffix: b"\x00\x00\x00\x01b\x02",
        },
        (Shape::Mixed, false) => Level {
            // The child first (aligned at 0), then the string "x".
            jsonb_prefix: |child| {
                ne(&[
                    JB_FARRAY | 2,
                    JENTRY_ISCONTAINER | child as u32,
                    JENTRY_ISSTRING | 1,
                ])
            },
            jsonb_suffix: b"x",
            text_prefix: "[",
            text_suffix: ", \"x\"]",
            compact_prefix: "[",
            compact_suffix: ",\"x\"]",
            canonical_prefix: b"\x05\x00\x00\x00\x02",
            canonical_suffix: b"\x04\x00\x00\x00\x01x",
        },
    }
}

/// One deep value in every form.
struct Deep {
    jsonb: Vec<u8>,
    text: String,
    compact: String,
    canonical: Vec<u8>,
}

/// `depth` containers, the innermost one empty. Built front to back in
/// linear time: wrapping a value level by level would copy it at each.
fn deep(shape: Shape, depth: usize) -> Deep {
    let inner_object = is_object(shape, depth - 1) && !matches!(shape, Shape::Mixed);
    let (inner_jsonb, inner_text, inner_canonical): (u32, &str, &[u8]) = if inner_object {
        (JB_FOBJECT, "{}", b"\x06\x00\x00\x00\x00")
    } else {
        (JB_FARRAY, "[]", b"\x05\x00\x00\x00\x00")
    };
    let levels: Vec<Level> = (0..depth - 1).map(|d| level(shape, d)).collect();
    // sizes[d]: the jsonb size of the value at depth d.
    let mut sizes = vec![4usize; depth];
    for d in (0..depth - 1).rev() {
        let l = &levels[d];
        sizes[d] = (l.jsonb_prefix)(sizes[d + 1]).len() + sizes[d + 1] + l.jsonb_suffix.len();
    }
    let mut out = Deep {
        jsonb: Vec::with_capacity(sizes[0]),
        text: String::new(),
        compact: String::new(),
        canonical: Vec::new(),
    };
    for (d, l) in levels.iter().enumerate() {
        out.jsonb.extend((l.jsonb_prefix)(sizes[d + 1]));
        out.text.push_str(l.text_prefix);
        out.compact.push_str(l.compact_prefix);
        out.canonical.extend_from_slice(l.canonical_prefix);
    }
    out.jsonb.extend(inner_jsonb.to_ne_bytes());
    out.text.push_str(inner_text);
    out.compact.push_str(inner_text);
    out.canonical.extend_from_slice(inner_canonical);
    for l in levels.iter().rev() {
        out.jsonb.extend_from_slice(l.jsonb_suffix);
        out.text.push_str(l.text_suffix);
        out.compact.push_str(l.compact_suffix);
        out.canonical.extend_from_slice(l.canonical_suffix);
    }
    assert_eq!(out.jsonb.len(), sizes[0]);
    out
}

fn all() -> impl Iterator<Item = (Shape, usize)> {
    [Shape::Arrays, Shape::Objects, Shape::Mixed]
        .into_iter()
        .flat_map(|s| DEPTHS.into_iter().map(move |d| (s, d)))
}

#[test]
fn the_expectations_are_right_when_shallow() {
    // The hand-written forms, checked against serde_json where it can go.
    for shape in [Shape::Arrays, Shape::Objects, Shape::Mixed] {
        for depth in 1..6 {
            let d = deep(shape, depth);
            let v: serde_json::Value = serde_json::from_str(&d.text).unwrap();
            let mut enc = Vec::new();
            encode_json(&v, &mut enc);
            assert_eq!(enc, d.canonical, "{shape:?} {depth}");
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                d.compact,
                "{shape:?} {depth}"
            );
            assert_eq!(
                encode_jsonb(&d.jsonb).unwrap(),
                d.canonical,
                "{shape:?} {depth}"
            );
        }
    }
    let d = deep(Shape::Mixed, 3);
    assert_eq!(d.text, r#"{"b": true, "aa": [[], "x"]}"#);
    assert_eq!(d.compact, r#"{"aa":[[],"x"],"b":true}"#);
}

#[test]
fn binary_jsonb_at_any_depth() {
    for (shape, depth) in all() {
        let d = deep(shape, depth);
        assert!(
            encode_jsonb(&d.jsonb).unwrap() == d.canonical,
            "{shape:?} {depth}"
        );
    }
}

#[test]
fn json_text_at_any_depth() {
    for (shape, depth) in all() {
        let d = deep(shape, depth);
        assert!(
            encode_json_text(&d.text).unwrap() == d.canonical,
            "{shape:?} {depth}"
        );
        assert!(
            encode_json_text(&d.compact).unwrap() == d.canonical,
            "{shape:?} {depth}"
        );
        // Damage deep inside is an error, not a crash.
        let cut = &d.text[..d.text.len() - 1];
        assert!(encode_json_text(cut).is_err());
    }
}

#[test]
fn the_decoder_at_any_depth() {
    for (shape, depth) in all() {
        let d = deep(shape, depth);
        let mut r = Reader::new(&d.canonical);
        assert!(r.json().unwrap() == &d.canonical[..], "{shape:?} {depth}");
        assert!(r.is_empty());
        let printed = Reader::new(&d.canonical).json_text().unwrap();
        assert!(printed == d.compact, "{shape:?} {depth}");
        // One byte short: an error, not a crash.
        assert!(Reader::new(&d.canonical[..d.canonical.len() - 1])
            .json()
            .is_err());
    }
}

#[test]
fn encode_json_at_any_depth() {
    // A deep serde_json::Value encodes without recursion. Dropping one
    // recurses, so this one is built and dropped on a thread with room.
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(|| {
            for depth in DEPTHS {
                let mut v = serde_json::Value::Array(vec![]);
                for _ in 1..depth {
                    v = serde_json::Value::Array(vec![v]);
                }
                let mut enc = Vec::new();
                encode_json(&v, &mut enc);
                assert!(enc == deep(Shape::Arrays, depth).canonical, "{depth}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn key_text_of_a_deep_member() {
    let d = deep(Shape::Mixed, 100_000);
    // {"id": <deep>}: key "id", two bytes to align the value.
    let mut row = ne(&[
        JB_FOBJECT | 1,
        JENTRY_ISSTRING | 2,
        JENTRY_ISCONTAINER | (2 + d.jsonb.len()) as u32,
    ]);
    row.extend_from_slice(b"id\0\0");
    row.extend_from_slice(&d.jsonb);
    let got = key_text(&row, &["id"]).unwrap().unwrap();
    assert!(got == format!("{{\"id\":{}}}", d.compact));
}

#[test]
fn on_verify_worker_threads() {
    // What verification runs on its workers: jsonb to the encoding, and the
    // encoding read back.
    let cases: Vec<(Shape, usize)> = all().collect();
    let input = cases.iter().map(|&(s, d)| Ok::<_, ()>((s, d, deep(s, d))));
    let results: Vec<_> = std::thread::scope(|scope| {
        map_ordered(
            scope,
            input,
            2,
            || {},
            |(shape, depth, d): (Shape, usize, Deep)| {
                let enc = encode_jsonb(&d.jsonb);
                let text = enc.as_ref().ok().map(|e| Reader::new(e).json_text());
                let via_text = encode_json_text(&d.text);
                let ok = enc.as_ref() == Ok(&d.canonical)
                    && via_text.as_ref() == Ok(&d.canonical)
                    && text == Some(Ok(d.compact.clone()));
                (shape, depth, ok)
            },
        )
        .collect()
    });
    assert_eq!(results.len(), cases.len());
    for r in results {
        let (shape, depth, ok) = r.unwrap();
        assert!(ok, "{shape:?} {depth}");
    }
}

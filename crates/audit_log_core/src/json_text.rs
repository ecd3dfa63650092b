//! JSON text to the canonical encoding, for values that arrive as text: the
//! CLI reads jsonb columns as `jsonb_out` prints them, and export files hold
//! them as JSON. One pass, no `serde_json::Value` and no recursion, so a value
//! nested a million deep costs memory, never the stack.
//!
//! Numbers keep their text exactly, object members are put in byte order of
//! their keys, and `\u` escapes are decoded (surrogate pairs included).
//! `jsonb_out` never prints an object with two equal keys, so such text is
//! refused.

use std::borrow::Cow;

use crate::encoding::JsonBuilder;

/// The text is not one JSON value, or not one that jsonb could print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {at}: {what}")]
pub struct BadJson {
    pub at: usize,
    pub what: &'static str,
}

/// The canonical encoding (docs/FORMAT.md, `json`) of one JSON value given
/// as text, with optional whitespace around it.
pub fn encode_json_text(text: &str) -> Result<Vec<u8>, BadJson> {
    let mut p = Parser {
        b: text.as_bytes(),
        pos: 0,
    };
    let mut out = JsonBuilder::new();
    // The open containers, innermost last: true for an object.
    let mut open: Vec<bool> = Vec::new();
    'value: loop {
        p.skip_ws();
        let at = p.pos;
        match p.peek() {
            Some(b'{') => {
                p.pos += 1;
                out.begin_object();
                p.skip_ws();
                if p.eat(b'}') {
                    out.end();
                } else {
                    open.push(true);
                    p.key(&mut out)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                p.pos += 1;
                out.begin_array();
                p.skip_ws();
                if p.eat(b']') {
                    out.end();
                } else {
                    open.push(false);
                    continue 'value;
                }
            }
            Some(b'"') => {
                let s = p.string()?;
                out.string(&s);
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = number_len(&p.b[at..]).ok_or(p.bad(at, "malformed number"))?;
                p.pos += n;
                // Only ASCII was matched: the slice is on character boundaries.
                out.number(&text[at..at + n]);
            }
            Some(b't') => p.literal(b"true", || out.bool(true))?,
            Some(b'f') => p.literal(b"false", || out.bool(false))?,
            Some(b'n') => p.literal(b"null", || out.null())?,
            Some(_) => return Err(p.bad(at, "expected a value")),
            None => return Err(p.bad(at, "expected a value, found the end")),
        }
        // A value is complete: close what it completes, up to the next value.
        loop {
            p.skip_ws();
            let Some(&object) = open.last() else {
                if p.pos != p.b.len() {
                    return Err(p.bad(p.pos, "text after the value"));
                }
                if out.duplicate_keys() {
                    return Err(p.bad(0, "an object has two members with the same key"));
                }
                return Ok(out.finish());
            };
            let at = p.pos;
            match p.peek() {
                Some(b',') => {
                    p.pos += 1;
                    if object {
                        p.skip_ws();
                        p.key(&mut out)?;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return Err(p.bad(at, "expected ',' or the end of the array or object")),
            }
            p.pos += 1;
            out.end();
            open.pop();
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn bad(&self, at: usize, what: &'static str) -> BadJson {
        BadJson { at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], emit: impl FnOnce()) -> Result<(), BadJson> {
        if !self.b[self.pos..].starts_with(word) {
            return Err(self.bad(self.pos, "expected true, false or null"));
        }
        self.pos += word.len();
        emit();
        Ok(())
    }

    /// A member's key and its colon.
    fn key(&mut self, out: &mut JsonBuilder) -> Result<(), BadJson> {
        if self.peek() != Some(b'"') {
            return Err(self.bad(self.pos, "expected a string key"));
        }
        let k = self.string()?;
        out.key(&k);
        self.skip_ws();
        if !self.eat(b':') {
            return Err(self.bad(self.pos, "expected ':' after a key"));
        }
        Ok(())
    }

    /// A string's content, unescaped, the opening quote at `pos`.
    fn string(&mut self) -> Result<Cow<'a, [u8]>, BadJson> {
        let b = self.b;
        self.pos += 1;
        let start = self.pos;
        // Most strings have no escape: borrow them.
        while let Some(&c) = b.get(self.pos) {
            match c {
                b'"' => {
                    self.pos += 1;
                    return Ok(Cow::Borrowed(&b[start..self.pos - 1]));
                }
                b'\\' => break,
                0..=0x1F => return Err(self.bad(self.pos, "control character in a string")),
                _ => self.pos += 1,
            }
        }
        let mut s = b[start..self.pos].to_vec();
        loop {
            let at = self.pos;
            let c = *b.get(at).ok_or(self.bad(at, "unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => return Ok(Cow::Owned(s)),
                0..=0x1F => return Err(self.bad(at, "control character in a string")),
                b'\\' => {
                    let e = *b.get(self.pos).ok_or(self.bad(at, "unterminated string"))?;
                    self.pos += 1;
                    let plain = match e {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0C,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let ch = self.unicode_escape(at)?;
                            s.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                            continue;
                        }
                        _ => return Err(self.bad(at, "unknown escape")),
                    };
                    s.push(plain);
                }
                _ => s.push(c),
            }
        }
    }

    /// The character of a `\u` escape whose backslash is at `at`, and of the
    /// low surrogate's escape after it if it is a high surrogate.
    fn unicode_escape(&mut self, at: usize) -> Result<char, BadJson> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if !self.b[self.pos..].starts_with(b"\\u") {
                    return Err(self.bad(at, "a high surrogate without its low surrogate"));
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.bad(at, "a high surrogate without its low surrogate"));
                }
                0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(self.bad(at, "a low surrogate without its high surrogate"))
            }
            c => u32::from(c),
        };
        char::from_u32(code).ok_or(self.bad(at, "not a Unicode scalar value"))
    }

    fn hex4(&mut self) -> Result<u16, BadJson> {
        let digits = self
            .b
            .get(self.pos..self.pos + 4)
            .ok_or(self.bad(self.pos, "a \\u escape needs four hex digits"))?;
        let mut v = 0u16;
        for &d in digits {
            let n = (d as char)
                .to_digit(16)
                .ok_or(self.bad(self.pos, "a \\u escape needs four hex digits"))?;
            v = (v << 4) | n as u16;
        }
        self.pos += 4;
        Ok(v)
    }
}

/// The length of the JSON number at the start of `b`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// Whether `b` is exactly one JSON number.
pub(crate) fn is_number(b: &[u8]) -> bool {
    number_len(b) == Some(b.len())
}

/// `s` as a JSON string, quoted and escaped as `serde_json` writes it: `"`,
/// `\` and control characters only, with the short escapes where JSON has
/// them and `\u00XX` (lowercase hex) otherwise.
pub(crate) fn write_escaped(out: &mut impl TextOut, s: &str) {
    out.push_str("\"");
    let mut from = 0;
    for (i, c) in s.char_indices() {
        let short = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{08}' => "\\b",
            '\u{0C}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{00}'..='\u{1F}' => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let b = c as usize;
            let esc = [b'\\', b'u', b'0', b'0', HEX[b >> 4], HEX[b & 15]];
            // ASCII only, so always UTF-8.
            out.push_str(std::str::from_utf8(&esc).unwrap_or_default());
        } else {
            out.push_str(short);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push_str("\"");
}

/// Where JSON text goes: a `String`, or a count of its bytes (to know a
/// value's length before making it).
pub(crate) trait TextOut {
    fn push_str(&mut self, s: &str);
}

impl TextOut for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

/// The length of the text pushed, in bytes.
#[derive(Default)]
pub(crate) struct Count(pub usize);

impl TextOut for Count {
    fn push_str(&mut self, s: &str) {
        self.0 = self.0.saturating_add(s.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{decode::Reader, encode_json};
    use serde_json::Value;

    fn via_serde(text: &str) -> Vec<u8> {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut buf = Vec::new();
        encode_json(&v, &mut buf);
        buf
    }

    /// The length counted without making the text is the text's: escapes
    /// of every kind, keys, nesting, numbers and empty containers.
    #[test]
    fn json_text_len_is_the_length_of_json_text() {
        for text in [
            r#"null"#,
            r#""""#,
            r#""\u0001\u001f \" \\ \b\f\n\r\t é 😀""#,
            r#"{"a\u0002": [1, -2.50, true, false, null, {}, []], "b": {"c": "\n"}}"#,
            r#"[[[[["deep"]]]], 1e5, 0]"#,
        ] {
            let enc = via_serde(text);
            let made = Reader::new(&enc).json_text().unwrap();
            assert_eq!(
                Reader::new(&enc).json_text_len().unwrap(),
                made.len(),
                "{text}"
            );
        }
        let controls = "\u{1}".repeat(1000);
        let mut enc = Vec::new();
        encode_json(&Value::String(controls), &mut enc);
        assert_eq!(Reader::new(&enc).json_text_len().unwrap(), 6 * 1000 + 2);
    }

    #[test]
    fn agrees_with_serde_json_on_what_jsonb_out_prints() {
        for text in [
            r#"{"b": [1.50, "é", 1000, -0.0, 0, -12.340], "a": null, "": {}}"#,
            r#"{"id": 1, "amount": 10.50, "note": "é"}"#,
            r#"{"s": "tab\there \"q\" back\\slash \u0001 \/", "aa": true, "b": false}"#,
            r#"[]"#,
            r#"[[], {}, [[{}]]]"#,
            r#""just a string""#,
            "123456789012345678901234567890.123456789012",
            "  -1.5e-7  ",
            "null",
            r#"{"z": {"y": {"x": [1, {"b": 2, "a": 1}]}}, "é": 1, "e": 2}"#,
            r#"{"smile": "\ud83d\ude00", "euro": "\u20ac", "emoji": "😀"}"#,
        ] {
            assert_eq!(encode_json_text(text).unwrap(), via_serde(text), "{text}");
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        for n in ["1.50", "1E+3", "1e3", "-0", "0.000001", "10"] {
            let mut want = vec![crate::encoding::tag::NUMBER];
            crate::encoding::put_text(&mut want, n);
            assert_eq!(encode_json_text(n).unwrap(), want, "{n}");
        }
    }

    #[test]
    fn surrogate_pairs_decode() {
        let got = encode_json_text(r#""\ud83d\ude00\u00e9\u0041""#).unwrap();
        let mut want = vec![crate::encoding::tag::STRING];
        crate::encoding::put_text(&mut want, "😀éA");
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1: 2}",
            "{\"a\": 1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e",
            "tru",
            "nul",
            "[1]]",
            "{} {}",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"a\u{1}b\"",
            "NaN",
            "[1}",
            "{\"a\": 1]",
            r#"{"a": 1, "a": 2}"#,
            r#"{"b": 0, "a": 1, "b": 2}"#,
            r#"[{"x": [{"k": 1, "k": 1}]}]"#,
        ] {
            assert!(encode_json_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prints_back_as_serde_json_does() {
        let text = r#"{"b": [1.50, "é\u0001\n\"", null], "a": {"y": true, "x": -0}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let enc = encode_json_text(text).unwrap();
        assert_eq!(
            Reader::new(&enc).json_text().unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }
}

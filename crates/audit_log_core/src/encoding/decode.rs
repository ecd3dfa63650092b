//! Reading the canonical encoding back: to prove injectivity in tests, to let
//! tools inspect bytes, and to print a value as compact JSON text (the CLI's
//! export, a row's key). A `json` item is walked with an explicit stack, so
//! any nesting depth reads without recursion.

use crate::json_text::{is_number, write_escaped, Count, TextOut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed canonical encoding at byte {0}")]
pub struct Malformed(pub usize);

pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// An array or object being read: items left, and for an object the last
/// key, which the next must follow in byte order.
struct Open<'a> {
    left: usize,
    object: bool,
    first: bool,
    last_key: Option<&'a [u8]>,
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

    /// A `text`, borrowed.
    pub fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.len()?;
        let at = self.pos;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| Malformed(at))
    }

    pub fn text(&mut self) -> Result<String, Malformed> {
        self.str().map(str::to_owned)
    }

    /// One `json` item, checked (known tags, UTF-8 text, numbers that are
    /// JSON numbers, object keys strictly increasing: a canonical encoding
    /// has one form), as its bytes.
    pub fn json(&mut self) -> Result<&'a [u8], Malformed> {
        let start = self.pos;
        self.walk::<Count>(None)?;
        Ok(&self.bytes[start..self.pos])
    }

    /// One `json` item as compact JSON text: no whitespace, members in the
    /// encoded order (byte order of their keys), numbers as encoded, strings
    /// escaped as `serde_json` escapes them.
    pub fn json_text(&mut self) -> Result<String, Malformed> {
        let mut out = String::new();
        self.walk(Some(&mut out))?;
        Ok(out)
    }

    /// The length in bytes of what [`Reader::json_text`] would return,
    /// without making it.
    pub fn json_text_len(&mut self) -> Result<usize, Malformed> {
        let mut n = Count::default();
        self.walk(Some(&mut n))?;
        Ok(n.0)
    }

    fn walk<O: TextOut>(&mut self, mut out: Option<&mut O>) -> Result<(), Malformed> {
        let mut stack: Vec<Open<'a>> = Vec::new();
        self.value(&mut stack, out.as_deref_mut())?;
        while let Some(top) = stack.last_mut() {
            if top.left == 0 {
                let close = if top.object { '}' } else { ']' };
                stack.pop();
                if let Some(o) = out.as_deref_mut() {
                    o.push_str(if close == '}' { "}" } else { "]" });
                }
                continue;
            }
            top.left -= 1;
            if !top.first {
                if let Some(o) = out.as_deref_mut() {
                    o.push_str(",");
                }
            }
            top.first = false;
            if top.object {
                let at = self.pos;
                let k = self.str()?;
                if top.last_key.is_some_and(|l| l >= k.as_bytes()) {
                    return Err(Malformed(at));
                }
                top.last_key = Some(k.as_bytes());
                if let Some(o) = out.as_deref_mut() {
                    write_escaped(o, k);
                    o.push_str(":");
                }
            }
            self.value(&mut stack, out.as_deref_mut())?;
        }
        Ok(())
    }

    /// One tag and what follows it, but for an array's or object's items,
    /// which are left to the caller's loop.
    fn value<O: TextOut>(
        &mut self,
        stack: &mut Vec<Open<'a>>,
        out: Option<&mut O>,
    ) -> Result<(), Malformed> {
        use super::tag;
        let at = self.pos;
        let t = self.u8()?;
        // A level costs bytes of memory for each of input: past what the
        // allocator gives, the value is unreadable (an error, not an abort).
        let mut open = |left: usize, object: bool| {
            stack.try_reserve(1).map_err(|_| Malformed(at))?;
            stack.push(Open {
                left,
                object,
                first: true,
                last_key: None,
            });
            Ok(())
        };
        let text: &str = match t {
            tag::NULL => "null",
            tag::FALSE => "false",
            tag::TRUE => "true",
            tag::NUMBER => {
                let n = self.str()?;
                if !is_number(n.as_bytes()) {
                    return Err(Malformed(at));
                }
                n
            }
            tag::STRING => {
                let s = self.str()?;
                if let Some(o) = out {
                    write_escaped(o, s);
                }
                return Ok(());
            }
            tag::ARRAY => {
                open(self.len()?, false)?;
                "["
            }
            tag::OBJECT => {
                open(self.len()?, true)?;
                "{"
            }
            _ => return Err(Malformed(at)),
        };
        if let Some(o) = out {
            o.push_str(text);
        }
        Ok(())
    }
}

/// As [`crate::jsonb::key_text`], from a row in the canonical encoding (an
/// event's `old_row` or `new_row`): the named members of a top-level object
/// as compact JSON text, in byte order of their names, numbers by value.
/// `None` when the value is not an object or lacks a name. Members other
/// than the key's are skipped without being read, so a deep one costs no
/// stack.
///
/// `rest`, when given, supplies the members `encoded` lacks: an UPDATE's
/// new row for its old row recorded with `changed_only`, which keeps only
/// what changed (a key column that did not change is the same in both).
pub fn key_text<S: AsRef<str>>(
    encoded: &[u8],
    rest: Option<&[u8]>,
    names: &[S],
) -> Result<Option<String>, Malformed> {
    let mut found: Vec<(&str, &[u8])> = Vec::with_capacity(names.len());
    for row in std::iter::once(encoded).chain(rest) {
        let mut r = Reader::new(row);
        if r.u8()? != super::tag::OBJECT {
            return Ok(None);
        }
        let n = r.len()?;
        for _ in 0..n {
            let k = r.str()?;
            let v = r.json()?;
            if names.iter().any(|name| name.as_ref() == k) && !found.iter().any(|f| f.0 == k) {
                found.push((k, v));
            }
        }
        if !r.is_empty() {
            return Err(Malformed(r.pos));
        }
    }
    let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut out = String::from("{");
    for (i, name) in sorted.iter().enumerate() {
        let Some(&(_, v)) = found.iter().find(|(k, _)| k == name) else {
            return Ok(None);
        };
        if i > 0 {
            out.push(',');
        }
        write_escaped(&mut out, name);
        out.push(':');
        crate::jsonb::key_numbers_in(&Reader::new(v).json_text()?, &mut out);
    }
    out.push('}');
    Ok(Some(out))
}

/// The members of a canonical object, as (key, value's encoding).
fn members(object: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut r = Reader::new(object);
    if r.u8().ok()? != super::tag::OBJECT {
        return None;
    }
    let n = r.len().ok()?;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let k = r.str().ok()?.as_bytes();
        out.push((k, r.json().ok()?));
    }
    r.is_empty().then_some(out)
}

/// The members of the canonical object `old` whose values differ in `new`
/// or are absent from it, as a canonical object: an UPDATE's old row
/// reduced to what the update changed. None unless both are objects.
pub fn changed_members(old: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    let new = members(new)?;
    let changed: Vec<(&[u8], &[u8])> = members(old)?
        .into_iter()
        .filter(|(k, v)| {
            new.binary_search_by(|(nk, _)| nk.cmp(k))
                .map_or(true, |i| new[i].1 != *v)
        })
        .collect();
    let mut out = vec![super::tag::OBJECT];
    super::put_len(&mut out, changed.len());
    for (k, v) in changed {
        super::put_len(&mut out, k.len());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    Some(out)
}

#[cfg(test)]
mod changed_tests {
    use super::*;
    use crate::encoding::encode_json;
    use serde_json::json;

    fn enc(v: serde_json::Value) -> Vec<u8> {
        let mut b = Vec::new();
        encode_json(&v, &mut b);
        b
    }

    #[test]
    fn only_what_changed_stays() {
        let old = enc(json!({"id": 1, "a": "x", "b": [1, {"c": 2}], "gone": null}));
        let new = enc(json!({"id": 1, "a": "y", "b": [1, {"c": 2}], "added": true}));
        assert_eq!(
            changed_members(&old, &new),
            Some(enc(json!({"a": "x", "gone": null})))
        );
        assert_eq!(changed_members(&old, &old), Some(enc(json!({}))));
        assert_eq!(changed_members(&enc(json!([1])), &new), None);
    }
}

//! Builds the encoding of one JSON value from a stream of parts (begin, key,
//! scalar, end), for sources that are not a `serde_json::Value`: PostgreSQL's
//! jsonb walked in place, or JSON text. Its stack is its own, on the heap, so
//! any nesting depth is only a matter of memory.

use std::ops::Range;

use super::{put_len, put_text, tag};

/// See the module comment. Everything is written into one buffer, in the
/// source's order. An object's members must come out in byte order of their
/// keys, whatever order the source has: an object that arrives otherwise is
/// noted when it ends, and [`JsonBuilder::finish`] writes every such object
/// in order in one pass. (Reordering each object as it ends would move a
/// nested object once per level around it: quadratic in the depth.)
#[derive(Default)]
pub struct JsonBuilder {
    buf: Vec<u8>,
    stack: Vec<Frame>,
    reorders: Vec<Reorder>,
    duplicate_key: bool,
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

/// An object whose members are not in byte order of their keys in `buf`.
struct Reorder {
    /// Where its members are, all of them.
    body: Range<usize>,
    /// Each member (key and value), in the order to write them.
    members: Vec<Range<usize>>,
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
                let count = members.len() as u32;
                self.buf[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
                let body = count_at + 4;
                let end = self.buf.len();
                // Member i's key bytes, and the whole member (key and value).
                let key = |i: usize| {
                    let (key_at, value_at) = members[i];
                    &self.buf[key_at + 4..value_at]
                };
                let member = |i: usize| members[i].0..members.get(i + 1).map_or(end, |m| m.0);
                let n = members.len();
                let mut duplicate = false;
                let in_order = (1..n).all(|i| match key(i - 1).cmp(key(i)) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => {
                        duplicate = true;
                        true
                    }
                    std::cmp::Ordering::Greater => false,
                });
                let (duplicate, reorder) = if in_order {
                    (duplicate, None)
                } else {
                    // A stable sort: members with equal keys (which jsonb
                    // never has) keep their order.
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by(|&a, &b| key(a).cmp(key(b)));
                    let duplicate = order.windows(2).any(|w| key(w[0]) == key(w[1]));
                    (duplicate, Some(order.into_iter().map(member).collect()))
                };
                self.duplicate_key |= duplicate;
                if let Some(members) = reorder {
                    self.reorders.push(Reorder {
                        body: body..end,
                        members,
                    });
                }
            }
        }
    }

    /// Whether some object had two members with the same key. They are both
    /// encoded; a source that must not have them (JSON text) checks this.
    pub fn duplicate_keys(&self) -> bool {
        self.duplicate_key
    }

    /// The encoding of the one value built.
    pub fn finish(mut self) -> Vec<u8> {
        if self.reorders.is_empty() {
            return self.buf;
        }
        // Objects nest properly, so their bodies are disjoint or nested, and
        // each starts at a different byte.
        self.reorders.sort_unstable_by_key(|r| r.body.start);
        let (buf, reorders) = (&self.buf, &self.reorders);
        let mut out = Vec::with_capacity(buf.len());
        // Ranges of `buf` still to write, the next on top.
        let mut todo: Vec<Range<usize>> = Vec::new();
        todo.push(0..buf.len());
        while let Some(r) = todo.pop() {
            // An object nested in `r` starts after it does; one that starts
            // where `r` does is the object `r` is a member of.
            let i = reorders.partition_point(|x| x.body.start <= r.start);
            match reorders.get(i) {
                Some(x) if x.body.start < r.end => {
                    out.extend_from_slice(&buf[r.start..x.body.start]);
                    todo.push(x.body.end..r.end);
                    todo.extend(x.members.iter().rev().cloned());
                }
                _ => out.extend_from_slice(&buf[r]),
            }
        }
        out
    }
}

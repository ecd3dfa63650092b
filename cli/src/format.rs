//! The export formats (docs/FORMAT.md, "Export"). `audit_log.export.v1`,
//! the logical export, is JSON Lines, one record per line, in this order:
//! 1. a `header` line;
//! 2. `event` lines, ordered by (tx_first, tx_seq);
//! 3. `link` lines, ordered by (chain_id, seq);
//! 4. an `end` line with the counts, the chain heads, and the SHA-256 of
//!    every byte before it.
//!
//! `audit_log.export.v2`, the records export, has the same header and end
//! lines, and between them one `record` line per transaction, ordered by
//! (chain_id, seq): the stored record, its payload and segments in base64.
//!
//! Every record starts with its `type` so that a reader can tell records
//! apart without parsing them. SQL NULL in `context`, `old_row` or `new_row`
//! is an absent field; a present field holds the jsonb value, which may be
//! JSON `null`.
//!
//! Row values are never parsed into a `serde_json::Value`: a hostile role can
//! store one nested 100,000 deep, past serde_json's recursion limit (and a
//! deep `Value` overflows the stack when dropped). An event line keeps them
//! as raw JSON text, which serde_json skips without recursion, and
//! `audit_log_core::json_text` encodes them.

use audit_log_core::encoding::decode::Reader;
use audit_log_core::encoding::encode_json;
use audit_log_core::json_text::encode_json_text;
use audit_log_core::model::Json;
use audit_log_core::record::{self, Digest, Record};
use audit_log_core::time::{format_rfc3339, parse_rfc3339};
use audit_log_core::{ChainHead, Event, Hash, Link};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

pub const EXPORT_FORMAT: &str = "audit_log.export.v1";
/// The records export: each transaction's record as stored (docs/FORMAT.md,
/// "Records export"), verified by hashing the stored bytes.
pub const RECORDS_FORMAT: &str = "audit_log.export.v2";

pub const HEADER_PREFIX: &[u8] = br#"{"type":"header""#;
pub const EVENT_PREFIX: &[u8] = br#"{"type":"event""#;
pub const LINK_PREFIX: &[u8] = br#"{"type":"link""#;
pub const END_PREFIX: &[u8] = br#"{"type":"end""#;
pub const RECORD_PREFIX: &[u8] = br#"{"type":"record""#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: String,
    pub database: Option<String>,
    pub system_identifier: Option<String>,
    pub exported_at: String,
    /// The `pg_current_snapshot()` the export read under.
    pub snapshot: String,
    /// Where each chain starts: empty for a log never purged. For a whole
    /// log after `audit_log.purge()`, the server's anchors; for a
    /// continuation (`export --since`), the previous export's heads.
    pub anchors: Vec<ChainHead>,
    /// True for a continuation: it is verified after the export it continues.
    #[serde(default)]
    pub continues: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    #[serde(rename = "type")]
    pub kind: String,
    pub events: u64,
    pub links: u64,
    /// The last link of each chain in this export (with the anchors, where
    /// the export holds no link of a chain): where a continuation starts.
    pub heads: Vec<ChainHead>,
    /// SHA-256, in hex, of every byte of the file before this line.
    pub sha256: String,
}

/// A jsonb column: absent is SQL NULL, present is a value (JSON null included).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: i64,
    pub tx_id: u64,
    pub tx_seq: i64,
    /// The id of the transaction's first event: its key (docs/FORMAT.md).
    pub tx_first: i64,
    pub recorded_at: String,
    pub statement_at: String,
    pub session_user: String,
    pub current_user: String,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub context: Option<Box<RawValue>>,
    pub table_schema: String,
    pub table_name: String,
    pub op: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub old_row: Option<Box<RawValue>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub new_row: Option<Box<RawValue>>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLine {
    #[serde(rename = "type")]
    pub kind: String,
    pub chain_id: i32,
    pub seq: i64,
    pub tx_id: u64,
    pub event_count: i64,
    pub first_event: i64,
    pub last_event: i64,
    pub last_event_hash: String,
    pub committed_at: String,
    pub prev_link_hash: String,
    pub link_hash: String,
}

/// A hash from its hex text. A stored hash of the wrong length is kept as a
/// value no event or link hashes to, as `audit_log.verify()` does; text that
/// is not hex at all is an error.
pub fn parse_hash(text: &str) -> Result<Hash, String> {
    if let Some(h) = hex_hash(text.as_bytes()) {
        return Ok(h);
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("hash {text:?} is not in lowercase hex"));
    }
    let bytes = hex::decode(text).map_err(|e| format!("hash {text:?} is not hex: {e}"))?;
    Ok(match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(h) => h,
        Err(_) => audit_log_core::hash::event_hash_from_encoding(&[0xFF; 32], &bytes),
    })
}

/// 64 lowercase hex digits as a hash, without allocating: the common case
/// of `parse_hash`, which verification of a large export runs millions of
/// times.
fn hex_hash(text: &[u8]) -> Option<Hash> {
    /// Each byte's value as a lowercase hex digit, or 0xFF.
    const DIGIT: [u8; 256] = {
        let mut t = [0xFFu8; 256];
        let mut c = 0;
        while c < 10 {
            t[b'0' as usize + c] = c as u8;
            c += 1;
        }
        let mut c = 0;
        while c < 6 {
            t[b'a' as usize + c] = 10 + c as u8;
            c += 1;
        }
        t
    };
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (i, o) in out.iter_mut().enumerate() {
        let (hi, lo) = (DIGIT[text[2 * i] as usize], DIGIT[text[2 * i + 1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | lo;
    }
    // A valid digit is below 16; 0xFF marks anything else.
    (bad < 16).then_some(out)
}

fn time(text: &str, what: &str) -> Result<i64, String> {
    parse_rfc3339(text).ok_or_else(|| {
        format!("{what} {text:?} is not a timestamp of the form 2026-01-31T23:59:59.123456Z")
    })
}

/// One record of type `want`.
fn record<T: serde::de::DeserializeOwned>(
    line: &[u8],
    want: &str,
    kind: impl Fn(&T) -> &String,
) -> Result<T, String> {
    let r: T = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if kind(&r) != want {
        return Err(format!(
            "record type {:?} where {want} was expected",
            kind(&r)
        ));
    }
    Ok(r)
}

/// A JSON value of an event as compact JSON text, through its canonical
/// encoding: members in byte order of their keys, numbers as they are.
fn compact(j: &Json) -> Result<Box<RawValue>, String> {
    let mut buf = Vec::new();
    let encoded = match j {
        Json::Encoded(bytes) => bytes,
        Json::Value(v) => {
            encode_json(v, &mut buf);
            &buf
        }
    };
    let text = Reader::new(encoded)
        .json_text()
        .map_err(|e| e.to_string())?;
    RawValue::from_string(text).map_err(|e| e.to_string())
}

/// A JSON value of an export, as the event hashes it.
fn encoded(raw: Option<Box<RawValue>>, what: &str) -> Result<Option<Json>, String> {
    raw.map(|r| {
        encode_json_text(r.get())
            .map(Json::Encoded)
            .map_err(|e| format!("{what}: {e}"))
    })
    .transpose()
}

impl EventLine {
    /// The line of an event, its JSON values written as compact text.
    pub fn from_event(e: &Event) -> Result<EventLine, String> {
        let text = |j: &Option<Json>| j.as_ref().map(compact).transpose();
        Ok(EventLine {
            kind: "event".into(),
            id: e.id,
            tx_id: e.tx_id,
            tx_seq: e.tx_seq,
            tx_first: e.tx_first,
            recorded_at: format_rfc3339(e.recorded_at),
            statement_at: format_rfc3339(e.statement_at),
            session_user: e.session_user_name.clone(),
            current_user: e.current_user_name.clone(),
            application_name: e.application_name.clone(),
            client_addr: e.client_addr.clone(),
            context: text(&e.context)?,
            table_schema: e.table_schema.clone(),
            table_name: e.table_name.clone(),
            op: e.op.clone(),
            old_row: text(&e.old_row)?,
            new_row: text(&e.new_row)?,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        })
    }

    pub fn parse(line: &[u8]) -> Result<EventLine, String> {
        record(line, "event", |l: &EventLine| &l.kind)
    }

    pub fn into_event(self) -> Result<Event, String> {
        Ok(Event {
            id: self.id,
            tx_id: self.tx_id,
            tx_seq: self.tx_seq,
            tx_first: self.tx_first,
            recorded_at: time(&self.recorded_at, "recorded_at")?,
            statement_at: time(&self.statement_at, "statement_at")?,
            session_user_name: self.session_user,
            current_user_name: self.current_user,
            application_name: self.application_name,
            client_addr: self.client_addr,
            context: encoded(self.context, "context")?,
            table_schema: self.table_schema,
            table_name: self.table_name,
            op: self.op,
            old_row: encoded(self.old_row, "old_row")?,
            new_row: encoded(self.new_row, "new_row")?,
            prev_hash: parse_hash(&self.prev_hash)?,
            hash: parse_hash(&self.hash)?,
        })
    }
}

impl LinkLine {
    pub fn from_link(l: &Link) -> LinkLine {
        LinkLine {
            kind: "link".into(),
            chain_id: l.chain_id,
            seq: l.seq,
            tx_id: l.tx_id,
            event_count: l.event_count,
            first_event: l.first_event,
            last_event: l.last_event,
            last_event_hash: hex::encode(l.last_event_hash),
            committed_at: format_rfc3339(l.committed_at),
            prev_link_hash: hex::encode(l.prev_link_hash),
            link_hash: hex::encode(l.link_hash),
        }
    }

    pub fn parse(line: &[u8]) -> Result<Link, String> {
        let l = record(line, "link", |l: &LinkLine| &l.kind)?;
        Ok(Link {
            chain_id: l.chain_id,
            seq: l.seq,
            tx_id: l.tx_id,
            event_count: l.event_count,
            first_event: l.first_event,
            last_event: l.last_event,
            last_event_hash: parse_hash(&l.last_event_hash)?,
            committed_at: time(&l.committed_at, "committed_at")?,
            prev_link_hash: parse_hash(&l.prev_link_hash)?,
            link_hash: parse_hash(&l.link_hash)?,
        })
    }
}

/// One record as a line, with its newline.
pub fn line<T: Serialize>(record: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(record)?;
    out.push(b'\n');
    Ok(out)
}

/// A transaction's record as stored, in a records export: its columns, and
/// its segments (in `part` order) and payload as base64 of the stored bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLine {
    #[serde(rename = "type")]
    pub kind: String,
    pub chain_id: i32,
    pub seq: i64,
    pub tx_id: u64,
    pub first_event: i64,
    pub last_event: i64,
    pub event_count: i64,
    pub committed_at: String,
    pub link_hash: String,
    pub segments: Vec<String>,
    pub payload: String,
}

/// A record as verification reads it: its columns, the digest of its
/// events, and its Merkle leaf if it was asked for and its events read.
pub type Digested = (Record, Digest, Option<Hash>);

/// A record's digest and, with `leaf`, its leaf in its chain's Merkle tree
/// (its link hash with the root of its event hashes, docs/FORMAT.md,
/// "Merkle trees"), from one pass over its events. No leaf if its events
/// cannot be read: the chain's checks report that.
pub fn digest_record<'a>(
    r: &Record,
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
    leaf: bool,
) -> (Digest, Option<Hash>) {
    if !leaf {
        return (record::digest(r, segments, payload), None);
    }
    let (d, hashes) = record::digest_and_hashes(r, segments, payload);
    let leaf = hashes.map(|h| {
        audit_log_core::tree::record_leaf(&r.link_hash, &audit_log_core::tree::events_root(&h))
    });
    (d, leaf)
}

/// A record read back from its line: the columns, and the bytes.
pub struct StoredRecord {
    pub record: Record,
    pub segments: Vec<Vec<u8>>,
    pub payload: Vec<u8>,
}

fn base64(text: &[u8], what: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    base64_into(text, what, &mut out)?;
    Ok(out)
}

/// Decode base64 `text` onto the end of `out`.
fn base64_into(text: &[u8], what: &str, out: &mut Vec<u8>) -> Result<(), String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode_vec(text, out)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

impl RecordLine {
    pub fn from_record(r: &Record, segments: &[Vec<u8>], payload: &[u8]) -> RecordLine {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        RecordLine {
            kind: "record".into(),
            chain_id: r.chain_id,
            seq: r.seq,
            tx_id: r.tx_id,
            first_event: r.first_event,
            last_event: r.last_event,
            event_count: r.event_count,
            committed_at: format_rfc3339(r.committed_at),
            link_hash: hex::encode(r.link_hash),
            segments: segments.iter().map(|s| b64(s)).collect(),
            payload: b64(payload),
        }
    }

    /// What the first pass of verification needs: the chain head this
    /// record makes, and its event count. The rest is checked in the second.
    pub fn parse_head(line: &[u8]) -> Result<(ChainHead, i64), String> {
        #[derive(Deserialize)]
        struct Columns<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            chain_id: i32,
            seq: i64,
            last_event: i64,
            event_count: i64,
            link_hash: &'a str,
        }
        let c: Columns = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if c.kind != "record" {
            return Err(format!(
                "record type {:?} where record was expected",
                c.kind
            ));
        }
        let head = ChainHead {
            chain: c.chain_id,
            seq: c.seq,
            link_hash: parse_hash(c.link_hash)?,
            last_event: c.last_event,
        };
        Ok((head, c.event_count))
    }

    /// A record line, as the exporter spells it (read directly) or in any
    /// other valid JSON spelling (read by the JSON parser).
    pub fn parse(line: &[u8]) -> Result<StoredRecord, String> {
        match exact::record(line) {
            Some(l) => l.stored(),
            None => Self::parse_json(line),
        }
    }

    /// A record line's columns, the digest of its events and, if `leaf`
    /// says so of the record, its leaf (see [`digest_record`]). A payload with no segments
    /// (most records) is decoded into `scratch`, which the caller reuses
    /// from line to line: no allocation per record.
    pub fn digest(
        line: &[u8],
        scratch: &mut Vec<u8>,
        leaf: impl Fn(&Record) -> bool,
    ) -> Result<Digested, String> {
        match exact::record(line) {
            Some(f) if f.segments.is_empty() => {
                let record = f.record()?;
                scratch.clear();
                base64_into(f.payload, "the payload", scratch)?;
                let (d, l) = digest_record(&record, [], scratch, leaf(&record));
                Ok((record, d, l))
            }
            _ => {
                let r = Self::parse(line)?;
                let segments = r.segments.iter().map(Vec::as_slice);
                let (d, l) = digest_record(&r.record, segments, &r.payload, leaf(&r.record));
                Ok((r.record, d, l))
            }
        }
    }

    /// A record line read by the JSON parser, whatever its spelling.
    fn parse_json(line: &[u8]) -> Result<StoredRecord, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Borrowed<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            chain_id: i32,
            seq: i64,
            tx_id: u64,
            first_event: i64,
            last_event: i64,
            event_count: i64,
            committed_at: &'a str,
            link_hash: &'a str,
            #[serde(borrow)]
            segments: Vec<&'a str>,
            payload: &'a str,
        }
        let l: Borrowed = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if l.kind != "record" {
            return Err(format!(
                "record type {:?} where record was expected",
                l.kind
            ));
        }
        exact::Fields {
            chain_id: l.chain_id,
            seq: l.seq,
            tx_id: l.tx_id,
            first_event: l.first_event,
            last_event: l.last_event,
            event_count: l.event_count,
            committed_at: l.committed_at,
            link_hash: l.link_hash,
            segments: l.segments.iter().map(|s| s.as_bytes()).collect(),
            payload: l.payload.as_bytes(),
        }
        .stored()
    }
}

/// Record lines in exactly the exporter's spelling (`RecordLine`'s fields
/// in order, no spaces, strings without escapes), read without a JSON
/// parser: a verifier spends most of its time parsing lines otherwise.
/// Anything else, valid or not, is left to the JSON parser, so what a line
/// means and what is wrong with it do not depend on which reads it.
mod exact {
    use super::{base64, parse_hash, time, Record, StoredRecord};

    /// A record line's fields, as text where the line holds text.
    pub(super) struct Fields<'a> {
        pub chain_id: i32,
        pub seq: i64,
        pub tx_id: u64,
        pub first_event: i64,
        pub last_event: i64,
        pub event_count: i64,
        pub committed_at: &'a str,
        pub link_hash: &'a str,
        pub segments: Vec<&'a [u8]>,
        pub payload: &'a [u8],
    }

    impl Fields<'_> {
        pub(super) fn record(&self) -> Result<Record, String> {
            Ok(Record {
                chain_id: self.chain_id,
                seq: self.seq,
                tx_id: self.tx_id,
                first_event: self.first_event,
                last_event: self.last_event,
                event_count: self.event_count,
                committed_at: time(self.committed_at, "committed_at")?,
                link_hash: parse_hash(self.link_hash)?,
            })
        }

        pub(super) fn stored(&self) -> Result<StoredRecord, String> {
            Ok(StoredRecord {
                record: self.record()?,
                segments: self
                    .segments
                    .iter()
                    .map(|s| base64(s, "a segment"))
                    .collect::<Result<_, _>>()?,
                payload: base64(self.payload, "the payload")?,
            })
        }
    }

    struct Cursor<'a> {
        b: &'a [u8],
        at: usize,
    }

    impl<'a> Cursor<'a> {
        fn lit(&mut self, want: &[u8]) -> Option<()> {
            let end = self.at.checked_add(want.len())?;
            (self.b.get(self.at..end)? == want).then(|| self.at = end)
        }

        /// JSON's integer syntax (`-?(0|[1-9][0-9]*)`), within i64.
        fn int(&mut self) -> Option<i64> {
            let negative = self.lit(b"-").is_some();
            let magnitude = self.digits()?;
            if negative {
                // JSON parsers read -0 as a float, which no field takes.
                (magnitude > 0).then_some(())?;
                0i64.checked_sub_unsigned(magnitude)
            } else {
                i64::try_from(magnitude).ok()
            }
        }

        fn digits(&mut self) -> Option<u64> {
            let start = self.at;
            let mut n: u64 = 0;
            while let Some(d) = self.b.get(self.at).filter(|b| b.is_ascii_digit()) {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                self.at += 1;
            }
            let len = self.at - start;
            // No leading zero, at least one digit.
            (len == 1 || (len > 1 && self.b[start] != b'0')).then_some(n)
        }

        /// A string of printable ASCII with no escapes, as bytes.
        fn bytes(&mut self) -> Option<&'a [u8]> {
            self.lit(b"\"")?;
            let start = self.at;
            let rest = &self.b[start..];
            // A quote, a backslash, or not printable ASCII (0x20 to 0x7e).
            let special = |c: u8| {
                u8::from(c == b'"') | u8::from(c == b'\\') | u8::from(c.wrapping_sub(0x20) > 0x5e)
            };
            // Whole chunks without a special byte are passed over at once
            // (the test compiles to vector instructions): payloads are long.
            let mut len = 0;
            for chunk in rest.chunks_exact(32) {
                if chunk.iter().fold(0u8, |any, &c| any | special(c)) != 0 {
                    break;
                }
                len += 32;
            }
            len += rest[len..].iter().position(|&c| special(c) != 0)?;
            if rest[len] != b'"' {
                return None;
            }
            self.at = start + len + 1;
            Some(&rest[..len])
        }

        fn string(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.bytes()?).ok()
        }
    }

    /// The line's fields if it is in the exporter's spelling, else None.
    pub(super) fn record(line: &[u8]) -> Option<Fields<'_>> {
        let mut c = Cursor { b: line, at: 0 };
        c.lit(br#"{"type":"record","chain_id":"#)?;
        let chain_id = i32::try_from(c.int()?).ok()?;
        c.lit(br#","seq":"#)?;
        let seq = c.int()?;
        c.lit(br#","tx_id":"#)?;
        let tx_id = c.digits()?;
        c.lit(br#","first_event":"#)?;
        let first_event = c.int()?;
        c.lit(br#","last_event":"#)?;
        let last_event = c.int()?;
        c.lit(br#","event_count":"#)?;
        let event_count = c.int()?;
        c.lit(br#","committed_at":"#)?;
        let committed_at = c.string()?;
        c.lit(br#","link_hash":"#)?;
        let link_hash = c.string()?;
        c.lit(br#","segments":["#)?;
        let mut segments = Vec::new();
        if c.lit(b"]").is_none() {
            loop {
                segments.push(c.bytes()?);
                if c.lit(b"]").is_some() {
                    break;
                }
                c.lit(b",")?;
            }
        }
        c.lit(br#","payload":"#)?;
        let payload = c.bytes()?;
        c.lit(b"}")?;
        (c.at == line.len()).then_some(Fields {
            chain_id,
            seq,
            tx_id,
            first_event,
            last_event,
            event_count,
            committed_at,
            link_hash,
            segments,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &Result<StoredRecord, String>, b: &Result<StoredRecord, String>) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                a.record == b.record && a.segments == b.segments && a.payload == b.payload
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    /// Every line the direct reader takes, the JSON parser reads alike:
    /// exported lines, and thousands of edits of them (bytes changed,
    /// inserted, removed), including ones that stay valid JSON.
    #[test]
    fn the_direct_reader_agrees_with_the_json_parser() {
        let r = Record {
            chain_id: 3,
            seq: 120,
            tx_id: 987_654,
            first_event: 1_000_001,
            last_event: 1_000_009,
            event_count: 9,
            committed_at: 1_764_000_000_123_456,
            link_hash: [0xab; 32],
        };
        let lines: Vec<Vec<u8>> = [
            (vec![], b"some payload".to_vec()),
            (vec![b"one".to_vec()], vec![]),
            (vec![b"one".to_vec(), vec![0u8, 255, 7]], b"x".to_vec()),
        ]
        .iter()
        .map(|(segs, payload)| {
            let l = RecordLine::from_record(&r, segs, payload);
            serde_json::to_vec(&l).unwrap()
        })
        .collect();
        // Every integer field spelled in ways only some readers might take.
        for field in [
            "chain_id",
            "seq",
            "tx_id",
            "first_event",
            "last_event",
            "event_count",
        ] {
            for value in [
                "-0",
                "00",
                "01",
                "+1",
                "1.0",
                "1e0",
                "-",
                "",
                "2147483648",
                "-2147483649",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "18446744073709551616",
            ] {
                let text = String::from_utf8(lines[0].clone()).unwrap();
                let key = format!("\"{field}\":");
                let from = text.find(&key).unwrap() + key.len();
                let to = from + text[from..].find(',').unwrap();
                let l = format!("{}{value}{}", &text[..from], &text[to..]).into_bytes();
                if let Some(f) = exact::record(&l) {
                    assert!(
                        same(&f.stored(), &RecordLine::parse_json(&l)),
                        "{field}: {value}"
                    );
                }
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"0123456789-+.eE\" {}[],:abAZ=/\\\x7f\x1f\xc3\xa9";
        let mut direct = 0;
        let mut scratch = b"left over from an earlier line".to_vec();
        for line in &lines {
            assert!(
                exact::record(line).is_some(),
                "an exported line is read directly"
            );
            for _ in 0..20_000 {
                let mut l = line.clone();
                for _ in 0..1 + next(2) {
                    let at = next(l.len());
                    let b = alphabet[next(alphabet.len())];
                    match next(3) {
                        0 => l[at] = b,
                        1 => l.insert(at, b),
                        _ => {
                            l.remove(at);
                        }
                    }
                }
                // The digest of a line, read either way, with a buffer
                // reused from line to line.
                let by_json = RecordLine::parse_json(&l).map(|r| {
                    let d =
                        record::digest(&r.record, r.segments.iter().map(Vec::as_slice), &r.payload);
                    (r.record, d)
                });
                assert_eq!(
                    RecordLine::digest(&l, &mut scratch, |_| false).map(|(r, d, _)| (r, d)),
                    by_json
                );
                if let Some(f) = exact::record(&l) {
                    direct += 1;
                    assert!(
                        same(&f.stored(), &RecordLine::parse_json(&l)),
                        "{}",
                        String::from_utf8_lossy(&l)
                    );
                }
            }
        }
        // The edits that the direct reader still takes (digits, the
        // payload's characters) are a good share of them.
        assert!(direct > 5_000, "{direct}");
    }
}

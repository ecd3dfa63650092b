//! Reading the log (storage format v2, docs/FORMAT.md): records with their
//! segments, for verify(), and as rows for the `audit_log.events` and
//! `audit_log.links` views.

use audit_log_core::model::Checkpoint;
use audit_log_core::record::{self, Digest, Record};
use audit_log_core::time::from_pg_timestamp;
use audit_log_core::verify::Verdict;
use audit_log_core::{Hash, ZERO_HASH};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::catalog;
use crate::errors::{AuditError, OrRaise};
use crate::scan::{Ordered, Row, SnapshotGuard};
use crate::store::{read_or_stream, records, segment_after, Spilled};
use pgrx::pg_sys::panic::ErrorReport;

/// A stored hash, or one no record hashes to if it is not 32 bytes.
pub fn hash_of(bytes: Option<&[u8]>) -> Hash {
    match bytes.map(<[u8; 32]>::try_from) {
        Some(Ok(h)) => h,
        // Short of a collision, nothing hashes to this.
        _ => audit_log_core::hash::event_hash_from_encoding(&[0xFF; 32], bytes.unwrap_or(b"")),
    }
}

/// A record as read from its row: its columns, and its payload.
pub struct RawRecord {
    pub record: Record,
    pub segments: i32,
    pub payload: Vec<u8>,
    /// Its segments' payloads, read separately (in order of `part`).
    pub parts: Vec<Vec<u8>>,
}

/// Payloads up to this size are hashed by the session as it reads them:
/// copying one and handing it to a worker costs about as much as hashing it.
const HASH_IN_PLACE: usize = 4096;

/// A record as the session read it: already digested (a small payload, no
/// segments), or with its bytes, for a worker.
pub enum Read {
    Done(Record, Digest),
    Raw(RawRecord),
}

/// Payload bytes handed to a worker in one batch: with two batches a
/// worker in flight, what the session holds is bounded by bytes, not only
/// by a number of records (a batch closes past this, so one can be larger
/// by one transaction of up to `store::TX_BYTES_HELD`).
pub(crate) const BATCH_BYTES: usize = 8 << 20;

/// The bytes of a payload and its segments.
pub(crate) fn weight(payload: &[u8], parts: &[Vec<u8>]) -> usize {
    parts.iter().map(Vec::len).sum::<usize>() + payload.len()
}

impl Read {
    fn weight(&self) -> usize {
        match self {
            Read::Done(..) => 0,
            Read::Raw(raw) => weight(&raw.payload, &raw.parts),
        }
    }

    fn digested(self) -> (Record, Digest) {
        match self {
            Read::Done(r, d) => (r, d),
            Read::Raw(raw) => {
                let d = raw.digest();
                (raw.record, d)
            }
        }
    }
}

fn read_row(r: &Row) -> Option<Read> {
    let record = record_columns(r);
    let segments = r.i32(records::SEGMENTS).unwrap_or(0);
    let payload = r.slice(records::PAYLOAD).unwrap_or_default();
    if segments == 0 && payload.len() <= HASH_IN_PLACE {
        let d = record::digest(&record, [], payload);
        return Some(Read::Done(record, d));
    }
    Some(Read::Raw(RawRecord {
        record,
        segments,
        payload: payload.to_vec(),
        parts: Vec::new(),
    }))
}

pub(crate) fn record_columns(r: &Row) -> Record {
    Record {
        chain_id: r.i32(records::CHAIN_ID).unwrap_or(-1),
        seq: r.i64(records::SEQ).unwrap_or(0),
        tx_id: r.i64(records::TX_ID).unwrap_or(0) as u64,
        first_event: r.i64(records::FIRST_EVENT).unwrap_or(i64::MIN),
        last_event: r.i64(records::LAST_EVENT).unwrap_or(i64::MIN),
        event_count: r.i64(records::EVENT_COUNT).unwrap_or(-1),
        committed_at: r
            .i64(records::COMMITTED_AT)
            .map_or(i64::MIN, from_pg_timestamp),
        link_hash: hash_of(r.slice(records::LINK_HASH)),
    }
}

impl RawRecord {
    pub fn digest(&self) -> Digest {
        record::digest(
            &self.record,
            self.parts.iter().map(Vec::as_slice),
            &self.payload,
        )
    }
}

/// -1: one per CPU, at most 8.
pub static VERIFY_THREADS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(-1);

pub(crate) fn verify_threads() -> usize {
    crate::ensure_settings();
    match VERIFY_THREADS.get() {
        n if n >= 0 => n as usize,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    }
}

/// Worker threads never handle the server's signals: the session does.
pub(crate) fn block_signals() {
    // SAFETY: changes only the calling (worker) thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Verify the whole log, and that it extends `cp` if one is given.
pub fn run_verify(cp: Option<&Checkpoint>) -> Result<Verdict, AuditError> {
    let oids = catalog::lookup()?;
    let snapshot = SnapshotGuard::active();
    let snap = snapshot.0;
    // In the order records lie on disk: verify_records puts each chain in
    // order, holding back the few that come before their predecessor.
    let records = Ordered::sequential(oids.records, snap, read_row)?.map(move |r| match r? {
        Read::Raw(mut raw) if raw.segments != 0 => {
            let (record, payload) = (&raw.record, &raw.payload);
            let first = record.first_event;
            let read = read_or_stream(&oids, snap, first, payload.len(), |all| {
                record::digest_streamed(record, all, payload)
            })?;
            Ok(match read {
                Spilled::Whole(parts) => {
                    raw.parts = parts;
                    Read::Raw(raw)
                }
                Spilled::Streamed(d) => Read::Done(raw.record, d),
            })
        }
        read => Ok::<_, AuditError>(read),
    });
    // Chains that purge() shortened start from their anchors, each of which
    // a PURGE event in the log must record.
    let anchors = crate::retention::anchors()?;
    let claimed = if anchors.is_empty() {
        Vec::new()
    } else {
        crate::retention::claimed_anchors()?
    };
    // The session reads (only it may call PostgreSQL); workers hash, and
    // their results come back in order.
    std::thread::scope(|scope| {
        let digested = audit_log_core::parallel::map_ordered_bounded(
            scope,
            records,
            verify_threads(),
            block_signals,
            Read::digested,
            Read::weight,
            BATCH_BYTES,
        );
        record::verify_records(digested, cp, &anchors, &claimed)
    })
}

/// The events of one transaction for the `events` view, decoded one row at
/// a time: its segments are read one at a time, each when the one before is
/// used up, so that no transaction, however large, is held whole.
struct TxEvents {
    events: record::DecodedCursor<Vec<u8>>,
    first_event: i64,
    /// The part of the segment read last.
    part: Option<i32>,
    rows: usize,
}

impl TxEvents {
    fn next_event(&mut self) -> Result<Option<audit_log_core::model::Event>, AuditError> {
        if self.events.wants_segment() {
            let oids = catalog::lookup()?;
            let snapshot = SnapshotGuard::active();
            let next = segment_after(&oids, snapshot.0, self.first_event, self.part)?;
            self.part = next.as_ref().map(|(part, _)| *part);
            self.events.give_segment(next.map(|(_, bytes)| bytes));
        }
        match self.events.next_event() {
            None => Ok(None),
            Some(Ok(ev)) => {
                self.rows += 1;
                Ok(Some(ev))
            }
            Some(Err(_)) => {
                pgrx::warning!(
                    "audit_log: the record of event {} is unreadable past event {}",
                    self.first_event,
                    self.rows
                );
                Ok(None)
            }
        }
    }
}

fn ts(micros: i64) -> TimestampWithTimeZone {
    let pg = audit_log_core::time::to_pg_timestamp(micros);
    // SAFETY: any i64 is a timestamptz datum (out of range reads as infinity).
    unsafe {
        TimestampWithTimeZone::from_datum(pg_sys::Datum::from(pg), false)
            .unwrap_or(TimestampWithTimeZone::positive_infinity())
    }
}

/// A JSON value's canonical encoding; the view turns it into jsonb only
/// where a query reads it (through [`canonical_json_text`]).
fn json_bytes(j: Option<audit_log_core::model::Json>) -> Option<Vec<u8>> {
    match j? {
        audit_log_core::model::Json::Encoded(b) => Some(b),
        audit_log_core::model::Json::Value(v) => {
            let mut b = Vec::new();
            audit_log_core::encoding::encode_json(&v, &mut b);
            Some(b)
        }
    }
}

/// One canonical `json` item as JSON text.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."canonical_json_text"("encoded" bytea) RETURNS text
IMMUTABLE PARALLEL SAFE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.canonical_json_text(bytea) IS 'A JSON value in the canonical encoding of docs/FORMAT.md, as JSON text.';
"#)]
fn canonical_json_text(encoded: &[u8]) -> Result<String, ErrorReport> {
    use audit_log_core::encoding::decode::Reader;
    let bad = |e| AuditError::Invalid(format!("not a canonical JSON value: {e}"));
    // JSON text escapes a control character in six bytes, so a value
    // recorded whole can be too long for a text datum (1 GB with its
    // header): past a sixth of that, its length is counted before it is made.
    if encoded.len() > MAX_TEXT / 6 {
        let n = Reader::new(encoded).json_text_len().map_err(bad)?;
        if n > MAX_TEXT {
            return Err(AuditError::JsonTextTooLarge(n).into());
        }
    }
    Ok(Reader::new(encoded).json_text().map_err(bad)?)
}

/// The longest text a datum holds: 1 GB less its 4-byte header.
const MAX_TEXT: usize = 0x3FFF_FFFF - 4;

/// One row of the `audit_log.events` view, but for the columns it adds.
type EventRow = (
    i64,
    i64,
    i32,
    TimestampWithTimeZone,
    TimestampWithTimeZone,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<u8>,
    Vec<u8>,
);

/// The events of one record, as rows: the `audit_log.events` view.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."record_events"("first_event" bigint, "tx_id" bigint, "segments" integer, "payload" bytea)
RETURNS TABLE ("id" bigint, "tx_id" bigint, "tx_seq" integer, "recorded_at" timestamptz,
    "statement_at" timestamptz, "session_user_name" text, "current_user_name" text,
    "application_name" text, "client_addr" text, "context" bytea, "table_schema" text,
    "table_name" text, "op" text, "old_row" bytea, "new_row" bytea, "prev_hash" bytea, "hash" bytea)
STABLE PARALLEL SAFE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.record_events(bigint, bigint, integer, bytea) IS 'The events of one record of audit_log.records (with its segments), as rows, each with its recomputed hash. audit_log.events is built on it.';
"#)]
fn record_events_of(
    first_event: i64,
    tx_id: i64,
    segments: i32,
    payload: &[u8],
) -> Result<
    TableIterator<
        'static,
        (
            name!(id, i64),
            name!(tx_id, i64),
            name!(tx_seq, i32),
            name!(recorded_at, TimestampWithTimeZone),
            name!(statement_at, TimestampWithTimeZone),
            name!(session_user_name, String),
            name!(current_user_name, String),
            name!(application_name, Option<String>),
            name!(client_addr, Option<String>),
            name!(context, Option<Vec<u8>>),
            name!(table_schema, String),
            name!(table_name, String),
            name!(op, String),
            name!(old_row, Option<Vec<u8>>),
            name!(new_row, Option<Vec<u8>>),
            name!(prev_hash, Vec<u8>),
            name!(hash, Vec<u8>),
        ),
    >,
    ErrorReport,
> {
    let base = record::Base {
        first_event,
        tx_id: tx_id as u64,
    };
    Ok(TableIterator::new(event_rows(base, segments, payload)))
}

/// 0.2.0's `record_events(first_event, segments, payload)`, without the
/// record's tx_id: for a 0.2.0 schema's views until ALTER EXTENSION UPDATE
/// replaces them. Such a schema gets version 1 frames, which need no tx_id;
/// a packed one read here is unreadable. No SQL of this version declares it.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn record_events(
    first_event: i64,
    segments: i32,
    payload: &[u8],
) -> Result<
    TableIterator<
        'static,
        (
            name!(id, i64),
            name!(tx_id, i64),
            name!(tx_seq, i32),
            name!(recorded_at, TimestampWithTimeZone),
            name!(statement_at, TimestampWithTimeZone),
            name!(session_user_name, String),
            name!(current_user_name, String),
            name!(application_name, Option<String>),
            name!(client_addr, Option<String>),
            name!(context, Option<Vec<u8>>),
            name!(table_schema, String),
            name!(table_name, String),
            name!(op, String),
            name!(old_row, Option<Vec<u8>>),
            name!(new_row, Option<Vec<u8>>),
            name!(prev_hash, Vec<u8>),
            name!(hash, Vec<u8>),
        ),
    >,
    ErrorReport,
> {
    let base = record::Base::without_tx_id(first_event);
    Ok(TableIterator::new(event_rows(base, segments, payload)))
}

fn event_rows(base: record::Base, segments: i32, payload: &[u8]) -> impl Iterator<Item = EventRow> {
    let mut events = TxEvents {
        events: record::DecodedCursor::new(payload.to_vec(), segments != 0, base),
        first_event: base.first_event,
        part: None,
        rows: 0,
    };
    std::iter::from_fn(move || {
        let ev = events.next_event().or_raise()?;
        Some((
            ev.id,
            ev.tx_id as i64,
            i32::try_from(ev.tx_seq).unwrap_or(i32::MAX),
            ts(ev.recorded_at),
            ts(ev.statement_at),
            ev.session_user_name,
            ev.current_user_name,
            ev.application_name,
            ev.client_addr,
            json_bytes(ev.context),
            ev.table_schema,
            ev.table_name,
            ev.op,
            json_bytes(ev.old_row),
            json_bytes(ev.new_row),
            ev.prev_hash.to_vec(),
            ev.hash.to_vec(),
        ))
    })
}

/// The hash of a record's last event: the `last_event_hash` of format v1's
/// link, for the `audit_log.links` view.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."record_last_hash"("first_event" bigint, "tx_id" bigint, "segments" integer, "payload" bytea)
RETURNS bytea
STABLE PARALLEL SAFE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.record_last_hash(bigint, bigint, integer, bytea) IS 'The recomputed hash of the last event of one record of audit_log.records: what its link covers.';
"#)]
fn record_last_hash_of(
    first_event: i64,
    tx_id: i64,
    segments: i32,
    payload: &[u8],
) -> Result<Vec<u8>, ErrorReport> {
    let base = record::Base {
        first_event,
        tx_id: tx_id as u64,
    };
    last_hash(base, segments, payload)
}

/// 0.2.0's `record_last_hash(first_event, segments, payload)`: see
/// [`record_events`].
#[pg_extern(sql = false)]
fn record_last_hash(
    first_event: i64,
    segments: i32,
    payload: &[u8],
) -> Result<Vec<u8>, ErrorReport> {
    last_hash(record::Base::without_tx_id(first_event), segments, payload)
}

fn last_hash(base: record::Base, segments: i32, payload: &[u8]) -> Result<Vec<u8>, ErrorReport> {
    let mut h = ZERO_HASH;
    let snapshot = (segments != 0).then(SnapshotGuard::active);
    let parts = match &snapshot {
        Some(s) => Some(crate::store::segments(
            &catalog::lookup()?,
            s.0,
            base.first_event,
        )?),
        None => None,
    };
    // An unreadable part is passed over, as the view's rows stop at it. A
    // packed frame read without the record's tx_id (0.2.0's function, in a
    // schema that should not hold one) is an error, not a wrong hash.
    let mut blind = false;
    record::for_each_merged(parts.into_iter().flatten(), payload, |e| {
        match e {
            Ok(e) if !base.knows_tx_id() && e.version() == 2 => {
                blind = true;
                return std::ops::ControlFlow::Break(());
            }
            Ok(e) => h = e.hash(&h, base),
            Err(_) => {}
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if blind {
        return Err(AuditError::Invalid(format!(
            "the record of event {} holds packed events, which this schema's record_last_hash() cannot read: run ALTER EXTENSION audit_log UPDATE",
            base.first_event
        ))
        .into());
    }
    Ok(h.to_vec())
}

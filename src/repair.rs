//! Segments laid out as FORMAT.md requires, for logs written before 0.3.0.
//!
//! Each segment must be one run of consecutive `tx_seq`. Before 0.3.0, a
//! transaction that kept an event in memory, spilled inside a savepoint it
//! then released, and spilled again wrote the kept event and the later ones
//! as one segment: its events then merge out of order, and `verify()`
//! reports the transaction as changed although no event was. A repair cuts
//! such a segment into runs. It changes no event, so no hash: it writes a
//! transaction's new layout only if that layout recomputes the record's
//! stored link, and records what it did as a REPAIR event.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use audit_log_core::record::{digest, runs_layout};

use crate::catalog::{self, require_admin};
use crate::errors::AuditError;
use crate::scan::{select_at, SnapshotGuard, Val};
use crate::store::{self, segments, Bytea};
use pgrx::pg_sys::panic::ErrorReport;

/// A transaction whose segments hold more than this is not read whole for
/// a repair: it is named in a warning and left as it is.
const REPAIR_BYTES: usize = 256 << 20;

#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."repair_segments"()
RETURNS TABLE ("transactions" bigint, "segments_before" bigint, "segments_after" bigint)
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.repair_segments() IS 'Lay out as runs of tx_seq the segments of transactions written before 0.3.0 that are not (a savepoint defect that makes verify() report them changed). No event or hash changes: a transaction is rewritten only if its new layout recomputes its stored link. Recorded as a REPAIR event. Requires audit_log_admin.';
"#)]
fn repair_segments() -> Result<
    TableIterator<
        'static,
        (
            name!(transactions, i64),
            name!(segments_before, i64),
            name!(segments_after, i64),
        ),
    >,
    ErrorReport,
> {
    Ok(TableIterator::once(catalog::pinned(repair_impl)?))
}

/// One transaction's repair: its key, and its segments' parts before and after.
struct Repaired {
    first_event: i64,
    before: Vec<i32>,
    after: Vec<i32>,
}

fn repair_impl() -> Result<(i64, i64, i64), AuditError> {
    require_admin("repair the log's segments")?;
    // SAFETY: a read of the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(AuditError::ReadCommittedOnly("repair_segments()"));
    }
    // No purge removes a record, and no other repair rewrites it, meanwhile.
    crate::retention::lock_purge();
    // What an earlier call in this statement rewrote is seen as rewritten.
    // SAFETY: inside a transaction, as every SQL function is.
    unsafe { pg_sys::CommandCounterIncrement() };
    let repaired = catalog::as_owner(|| {
        let oids = catalog::lookup()?;
        let snapshot = SnapshotGuard::latest();
        let snap = snapshot.0;
        // Such a segment comes with the one spilled inside the savepoint:
        // only transactions with two segments or more can have one.
        let candidates = select_at(
            snap,
            "SELECT chain_id, seq FROM audit_log.records WHERE segments > 1 ORDER BY chain_id, seq",
            &[],
        )?;
        let mut done = Vec::new();
        for row in candidates {
            let chain = row.first().and_then(Val::int).unwrap_or(-1) as i32;
            let seq = row.get(1).and_then(Val::int).unwrap_or(0);
            if let Some(r) = repair_one(&oids, snap, chain, seq)? {
                done.push(r);
            }
        }
        Ok(done)
    })?;
    let before: usize = repaired.iter().map(|r| r.before.len()).sum();
    let after: usize = repaired.iter().map(|r| r.after.len()).sum();
    if !repaired.is_empty() {
        let details: Vec<_> = repaired
            .iter()
            .map(|r| json!({"first_event": r.first_event, "parts_before": r.before, "parts_after": r.after}))
            .collect();
        crate::capture::record_config(
            "audit_log",
            "segments",
            "REPAIR",
            json!({"transactions": details}),
        )?;
    }
    Ok((repaired.len() as i64, before as i64, after as i64))
}

/// Repair record `seq` of `chain` if its segments are not runs and cutting
/// them into runs recomputes its link; None if there is nothing to do, or
/// it cannot be done (with a warning naming the transaction).
fn repair_one(
    oids: &catalog::Oids,
    snap: pg_sys::Snapshot,
    chain: i32,
    seq: i64,
) -> Result<Option<Repaired>, AuditError> {
    let Some((record, _, payload)) = crate::tree::record_at(oids, snap, chain, seq)? else {
        return Ok(None);
    };
    let first = record.first_event;
    let mut old: Vec<(i32, Vec<u8>)> = Vec::new();
    let mut held = payload.len();
    let mut after = None;
    while let Some((part, bytes)) = store::segment_after(oids, snap, first, after)? {
        held = held.saturating_add(bytes.len());
        if held > REPAIR_BYTES {
            pgrx::warning!(
                "audit_log.repair_segments(): transaction {first} (record {chain}/{seq}) holds more than {} MB of events: not read for a repair",
                REPAIR_BYTES >> 20
            );
            return Ok(None);
        }
        after = Some(part);
        old.push((part, bytes));
    }
    let new = match runs_layout(&old) {
        Ok(None) => return Ok(None),
        Ok(Some(new)) => new,
        Err(_) => {
            pgrx::warning!(
                "audit_log.repair_segments(): transaction {first} (record {chain}/{seq}): its segments cannot be laid out as runs (a segment that is not a sequence of events, or an event stored twice): left as they are (verify() names what is wrong)"
            );
            return Ok(None);
        }
    };
    let prev = crate::tree::ChainTiles::new(chain, *oids, snap)?.link_hash_at(seq - 1)?;
    let d = digest(&record, new.iter().map(|(_, b)| b.as_slice()), &payload);
    let holds = prev.is_some_and(|p| {
        d.fault.is_none()
            && d.count == record.event_count
            && record.link_hash_after(&p, &d.last_hash) == record.link_hash
    });
    if !holds {
        pgrx::warning!(
            "audit_log.repair_segments(): transaction {first} (record {chain}/{seq}): its segments are not runs, and as runs they do not recompute its link either: left as they are (verify() names what is wrong)"
        );
        return Ok(None);
    }
    // Only what changes: segments that were runs stay as they are.
    for (part, bytes) in &old {
        if !new.iter().any(|(p, b)| p == part && b == bytes) {
            store::delete_where(
                oids.segments,
                oids.segments_pkey,
                &[
                    (
                        segments::FIRST_EVENT as i16 + 1,
                        pg_sys::F_INT8EQ,
                        pg_sys::Datum::from(first),
                    ),
                    (
                        segments::PART as i16 + 1,
                        pg_sys::F_INT4EQ,
                        pg_sys::Datum::from(*part),
                    ),
                ],
            )?;
        }
    }
    for (part, bytes) in &new {
        if !old.iter().any(|(p, b)| p == part && b == bytes) {
            store::insert_segment(oids, first, *part, &mut Bytea::from_slice(bytes))?;
        }
    }
    Ok(Some(Repaired {
        first_event: first,
        before: old.iter().map(|(p, _)| *p).collect(),
        after: new.iter().map(|(p, _)| *p).collect(),
    }))
}

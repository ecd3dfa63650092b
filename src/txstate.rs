//! The per-transaction audit state: the running head of the in-transaction
//! hash chain, and events captured but not yet written. Subtransaction
//! callbacks restore the head when a savepoint rolls back, and the
//! transaction callback links the transaction into a chain just before commit.

use std::cell::RefCell;
use std::ffi::c_void;

use audit_log_core::model::EventRef;
use audit_log_core::ZERO_HASH;
use pgrx::pg_guard;
use pgrx::pg_sys;

use crate::catalog::{self, Oids};
use crate::chain::{self, Head};
use crate::errors::{AuditError, OrRaise};
use crate::store;

/// An event captured in this transaction and not yet written. Its canonical
/// encoding (what its hash covers, and what is stored) is in the
/// transaction's payload, from `at` on.
struct Pending {
    /// The subtransaction that captured it: a rollback to before it drops it.
    subid: pg_sys::SubTransactionId,
    tx_seq: i64,
    /// Where it starts in the payload (at its length).
    at: usize,
    /// Its history() entries; only for tables enabled with `history => true`.
    row_keys: RowKeys,
}

/// The keys that history() finds an event under: the row's primary key,
/// hashed with its table, before the change (after an INSERT), and, for an
/// UPDATE that changed it, the key after. A row's history then shows how it
/// came by its key, and the key's earlier holder how it gave it up.
#[derive(Clone, Copy, Default)]
pub struct RowKeys {
    pub key: Option<i64>,
    pub moved_to: Option<i64>,
}

pub struct TxState {
    pub tx_id: u64,
    pub oids: Oids,
    created_in: pg_sys::SubTransactionId,
    pub head: Head,
    /// The head as it was when each open subtransaction started.
    saved: Vec<(pg_sys::SubTransactionId, Head)>,
    /// The events not yet written, in tx_seq order, and their encodings as
    /// a payload (docs/FORMAT.md). Events captured later are always further
    /// on, so what a savepoint's rollback drops, and what a spill writes,
    /// is the payload's tail.
    buffer: Vec<Pending>,
    /// The id of the last event captured, kept by a rollback to a savepoint.
    last_id: i64,
    payload: store::Bytea,
    /// Segments written, by the subtransaction that wrote them: a rollback
    /// removes the segment (MVCC), and it must leave the count too.
    segments: Vec<pg_sys::SubTransactionId>,
    /// Spill once the payload passes this many bytes: SPILL_BYTES more than
    /// a spill left in memory. Inside a subtransaction, a spill can write
    /// only its own events, and those of outer levels stay: counted against
    /// a flat SPILL_BYTES, they made every later spill a small segment.
    spill_at: usize,
}

/// Spill buffered events to a segment once this many bytes are waiting.
const SPILL_BYTES: usize = 1 << 20;

impl TxState {
    /// State for a transaction's first event.
    fn new() -> Result<TxState, AuditError> {
        let oids = catalog::lookup()?;
        // SAFETY: the change being audited already assigned an xid; this only reads it.
        let tx_id = unsafe { pg_sys::GetTopFullTransactionId() }.value;
        Ok(TxState {
            tx_id,
            oids,
            created_in: current_subid(),
            head: Head {
                hash: ZERO_HASH,
                count: 0,
                first_event: 0,
                last_event: 0,
            },
            saved: Vec::new(),
            buffer: Vec::new(),
            last_id: 0,
            payload: store::Bytea::default(),
            segments: Vec::new(),
            spill_at: SPILL_BYTES,
        })
    }
}

thread_local! {
    static STATE: RefCell<Option<TxState>> = const { RefCell::new(None) };
}

fn current_subid() -> pg_sys::SubTransactionId {
    // SAFETY: reads transaction state.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Whether this transaction's events are written packed: its state's
/// choice once it has one (a schema updated since does not change it), else
/// the schema's. Capture writes rows in the same form, so that they are
/// copied into the payload as they are.
pub fn writes_packed() -> Result<bool, AuditError> {
    match STATE.with_borrow(|s| s.as_ref().map(|s| s.oids.packed)) {
        Some(packed) => Ok(packed),
        None => Ok(catalog::lookup()?.packed),
    }
}

/// Append one event to the transaction's chain. `build` receives the
/// transaction's id, the event's id and its position, and returns the event
/// and its row keys for history().
pub fn append<'a>(
    build: impl FnOnce(u64, i64, i64) -> (EventRef<'a>, RowKeys),
) -> Result<i64, AuditError> {
    let fresh = if STATE.with_borrow(Option::is_none) {
        Some(TxState::new()?)
    } else {
        None
    };
    let subid = current_subid();
    let spill = STATE.with_borrow_mut(|state| {
        if let Some(f) = fresh {
            *state = Some(f);
        }
        let Some(s) = state.as_mut() else {
            return Err(AuditError::Internal("transaction state missing".into()));
        };
        // SAFETY: the sequence belongs to the extension; permissions are the
        // extension's business, not the audited role's.
        let id = unsafe { nextval_internal(s.oids.events_seq, false) };
        // tx_seq is stored as an integer.
        if s.head.count >= i64::from(i32::MAX) {
            return Err(AuditError::TooManyEvents(s.head.count));
        }
        let first = if s.head.count == 0 {
            id
        } else {
            s.head.first_event
        };
        let tx_seq = s.head.count + 1;
        s.last_id = id;
        let (event, row_keys) = build(s.tx_id, id, tx_seq);
        // The ids that the hash below covers are the frame's.
        let event = EventRef {
            id,
            tx_id: s.tx_id,
            tx_seq,
            ..event
        };
        // Encoded straight into the payload: packed (version 2), or as
        // version 1 for a 0.2.0 schema. The size hint is the event's
        // version 1 encoding (with its rows as given), which a packed frame
        // does not pass but for strings over 256 MB.
        s.payload.try_reserve(4 + event.size_hint())?;
        // A packed frame is hashed from its body as packed::encode left it;
        // a version 1 frame by reading it back.
        let mut hashed = None;
        let at = s.payload.append(|buf| {
            if s.oids.packed {
                let start = buf.len();
                hashed = audit_log_core::encoding::packed::encode(&event, first, buf)
                    .ok()
                    .map(|body_at| {
                        audit_log_core::hash::event_hash_v2(
                            &s.head.hash,
                            id,
                            s.tx_id,
                            tx_seq,
                            &buf[body_at..],
                        )
                    });
                if hashed.is_none() {
                    buf.truncate(start);
                }
            } else {
                let start = buf.len();
                let base = audit_log_core::record::Base {
                    first_event: first,
                    tx_id: s.tx_id,
                };
                hashed = event.to_event(first).ok().and_then(|e| {
                    audit_log_core::record::encode_event_into(buf, &e);
                    match audit_log_core::record::event_at(buf, start) {
                        Some(Ok((framed, _))) => Some(framed.hash(&s.head.hash, base)),
                        _ => None,
                    }
                });
            }
        });
        let Some(hash) = hashed else {
            s.payload.truncate(at);
            return Err(AuditError::Internal(format!(
                "event {id} could not be encoded"
            )));
        };
        s.head.hash = hash;
        s.head.count = tx_seq;
        if tx_seq == 1 {
            s.head.first_event = id;
        }
        s.head.last_event = id;
        s.buffer.push(Pending {
            subid,
            tx_seq,
            at,
            row_keys,
        });
        Ok((id, s.payload.byte_len() > s.spill_at))
    })?;
    let (id, spill) = spill;
    if spill {
        spill_segment()?;
    }
    Ok(id)
}

unsafe extern "C-unwind" {
    // commands/sequence.h, which pgrx does not bind.
    #[link_name = "nextval_internal"]
    fn nextval_internal_raw(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// `nextval_internal`, with a PostgreSQL error turned into a Rust unwind.
unsafe fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64 {
    // SAFETY: by the caller's contract, relid is a sequence.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, check_permissions)) }
}

/// Write buffered events as segments, without any lock. Only events of the
/// current subtransaction (and of its committed children) can be written
/// now: written inside the current subtransaction, an outer level's event
/// would vanish if this one rolled back. Those stay in memory, and verifiers
/// merge the segments and the record's payload by tx_seq.
///
/// Each segment is one run of consecutive tx_seq (docs/FORMAT.md): events
/// kept in memory by an outer level can sit between runs already written
/// (an event before a savepoint, then the savepoint's spilled events, then
/// after its RELEASE the events that follow), so the events written now
/// make one segment per run.
fn spill_segment() -> Result<(), AuditError> {
    let sub = current_subid();
    let Some((oids, first, runs, keys)) = STATE.with_borrow_mut(|s| {
        let s = s.as_mut()?;
        let from = s.buffer.iter().position(|p| p.subid >= sub)?;
        // tx_seq is below 2^31 (append refuses more); read before any change.
        i32::try_from(s.buffer.last()?.tx_seq).ok()?;
        let batch: Vec<Pending> = s.buffer.drain(from..).collect();
        let base = batch[0].at;
        let mut payload = s.payload.split_off(base);
        let starts =
            (0..batch.len()).filter(|&i| i == 0 || batch[i].tx_seq != batch[i - 1].tx_seq + 1);
        let starts: Vec<usize> = starts.collect();
        // From the last run back, each split off the batch's payload.
        let mut runs = Vec::with_capacity(starts.len());
        for &i in starts.iter().rev() {
            runs.push((
                batch[i].tx_seq as i32,
                payload.split_off(batch[i].at - base),
            ));
            s.segments.push(sub);
        }
        runs.reverse();
        s.spill_at = s.payload.byte_len().saturating_add(SPILL_BYTES);
        let first = s.head.first_event;
        Some((s.oids, first, runs, row_keys(first, &batch)))
    }) else {
        return Ok(());
    };
    store::insert_row_keys(&oids, &keys)?;
    for (part, mut payload) in runs {
        store::insert_segment(&oids, first, part, &mut payload)?;
    }
    Ok(())
}

/// The history() entries of a batch of events.
fn row_keys(first: i64, batch: &[Pending]) -> Vec<(i64, i64, i32)> {
    batch
        .iter()
        .flat_map(|p| {
            let seq = p.tx_seq as i32;
            [p.row_keys.key, p.row_keys.moved_to]
                .into_iter()
                .flatten()
                .map(move |k| (k, first, seq))
        })
        .collect()
}

/// This transaction's id, how many events it holds (they reach the log at
/// its commit), and the id of the last it captured, whether or not a
/// rollback to a savepoint dropped it since; `None` before its first.
pub fn captured() -> Option<(u64, i64, i64)> {
    STATE.with_borrow(|s| s.as_ref().map(|s| (s.tx_id, s.head.count, s.last_id)))
}

/// Make the transaction's event count `n`, as if it had captured that many
/// (tests only: 2^31 real events cannot be made in a test).
#[cfg(any(test, feature = "pg_test"))]
pub fn pretend_event_count(n: i64) {
    STATE.with_borrow_mut(|s| {
        if let Some(s) = s.as_mut() {
            s.head.count = n;
        }
    });
}

/// The events this transaction holds in memory, as a payload, with the id
/// of its first event (tests only: committed events are in the log).
#[cfg(any(test, feature = "pg_test"))]
pub fn pending_payload() -> Option<(audit_log_core::record::Base, Vec<u8>)> {
    STATE.with_borrow(|s| {
        let s = s.as_ref()?;
        let base = audit_log_core::record::Base {
            first_event: s.head.first_event,
            tx_id: s.tx_id,
        };
        Some((base, s.payload.bytes().to_vec()))
    })
}

fn clear() {
    STATE.set(None);
}

/// What the transaction has left to write: its events still in memory (as
/// a payload, with their history() entries), and how many segments it spilled.
struct Unwritten {
    tx_id: u64,
    oids: Oids,
    head: Head,
    segments: i32,
    payload: store::Bytea,
    keys: Vec<(i64, i64, i32)>,
}

fn unwritten() -> Result<Option<Unwritten>, AuditError> {
    STATE
        .with_borrow_mut(|s| {
            let s = s.as_mut().filter(|s| s.head.count > 0)?;
            let batch = std::mem::take(&mut s.buffer);
            let payload = std::mem::take(&mut s.payload);
            let keys = row_keys(s.head.first_event, &batch);
            Some((s.tx_id, s.oids, s.head, s.segments.len(), payload, keys))
        })
        .map(|(tx_id, oids, head, segments, payload, keys)| {
            Ok(Unwritten {
                tx_id,
                oids,
                head,
                segments: i32::try_from(segments)
                    .map_err(|_| AuditError::TooManyEvents(head.count))?,
                payload,
                keys,
            })
        })
        .transpose()
}

/// At the end of the transaction (PRE_COMMIT, PRE_PREPARE), where every
/// subtransaction has ended: events that outer levels kept in memory while
/// deeper ones spilled are written as segments too, once they pass
/// SPILL_BYTES. Each level could keep up to SPILL_BYTES, so a transaction
/// of many nested savepoints made one record of any size, which every
/// reader then holds whole; the record's own payload now stays below it.
fn spill_rest() -> Result<(), AuditError> {
    let large = STATE.with_borrow(|s| {
        s.as_ref()
            .is_some_and(|s| s.payload.byte_len() > SPILL_BYTES)
    });
    if large {
        spill_segment()?;
    }
    Ok(())
}

fn pre_commit() -> Result<(), AuditError> {
    spill_rest()?;
    let Some(mut u) = unwritten()? else {
        return Ok(());
    };
    // Before the chain lock, which only the record's insert needs.
    store::insert_row_keys(&u.oids, &u.keys)?;
    chain::link_prepared_at_commit(&u.oids)?;
    chain::link(u.tx_id, &u.oids, &u.head, u.segments, &mut u.payload)
}

/// PREPARE TRANSACTION: seal the events in the transaction itself. Its
/// COMMIT PREPARED makes them visible for a later commit to link; ROLLBACK
/// PREPARED removes them.
fn pre_prepare() -> Result<(), AuditError> {
    crate::proof::may_prepare()?;
    spill_rest()?;
    let Some(mut u) = unwritten()? else {
        return Ok(());
    };
    store::insert_row_keys(&u.oids, &u.keys)?;
    let h = &u.head;
    store::insert_prepared(
        &u.oids,
        u.tx_id,
        (h.first_event, h.last_event, h.count),
        u.segments,
        &mut u.payload,
        &h.hash,
    )?;
    // After the insert, which holds the table's lock.
    crate::chain::announce_prepared(&u.oids);
    Ok(())
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit().or_raise(),
        XACT_EVENT_PRE_PREPARE => pre_prepare().or_raise(),
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => {
            clear();
            crate::heads::at_xact_end(event == XACT_EVENT_COMMIT);
            crate::proof::at_xact_end();
            crate::chain::at_xact_end(matches!(
                event,
                XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT
            ));
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    if event == SUBXACT_EVENT_ABORT_SUB {
        crate::heads::at_subxact_abort(my_subid);
        crate::chain::at_subxact_abort();
    }
    STATE.with_borrow_mut(|state| {
        let Some(s) = state.as_mut() else { return };
        match event {
            SUBXACT_EVENT_START_SUB => s.saved.push((my_subid, s.head)),
            SUBXACT_EVENT_COMMIT_SUB => s.saved.retain(|(id, _)| *id < my_subid),
            SUBXACT_EVENT_ABORT_SUB => {
                if s.created_in >= my_subid {
                    // Everything since the first event is being rolled back.
                    *state = None;
                    return;
                }
                if let Some(&(_, head)) = s.saved.iter().find(|(id, _)| *id == my_subid) {
                    s.head = head;
                }
                s.saved.retain(|(id, _)| *id < my_subid);
                // Subtransactions started after this one are its
                // descendants, and their events are the buffer's tail.
                if let Some(from) = s.buffer.iter().position(|p| p.subid >= my_subid) {
                    s.payload.truncate(s.buffer[from].at);
                    s.buffer.truncate(from);
                }
                s.spill_at = s
                    .spill_at
                    .min(s.payload.byte_len().saturating_add(SPILL_BYTES));
                s.segments.retain(|&id| id < my_subid);
            }
            _ => {}
        }
    });
}

pub fn register_callbacks() {
    // SAFETY: called once from _PG_init; the callbacks live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

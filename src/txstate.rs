//! The per-transaction audit state: the running head of the in-transaction
//! hash chain, and events captured but not yet written. Subtransaction
//! callbacks restore the head when a savepoint rolls back, and the
//! transaction callback links the transaction into a chain just before commit.

use std::cell::RefCell;
use std::ffi::c_void;

use audit_log_core::{Event, Hash, ZERO_HASH};
use pgrx::pg_guard;
use pgrx::pg_sys;

use crate::catalog::{self, Oids};
use crate::errors::{AuditError, OrRaise};
use crate::{chain, store};

/// An event captured in this transaction and not yet inserted.
pub struct Pending {
    /// The subtransaction that captured it: a rollback to before it drops it.
    pub subid: pg_sys::SubTransactionId,
    /// The event, with `old_row`/`new_row`/`context` emptied after hashing:
    /// the jsonb bytes below are what gets stored.
    pub event: Event,
    pub old_row: Option<Vec<u8>>,
    pub new_row: Option<Vec<u8>>,
    pub context: Option<Vec<u8>>,
    /// The row's primary key, hashed with its table (not in the event
    /// hash), for history().
    pub row_key: Option<i64>,
}

impl Pending {
    fn size(&self) -> usize {
        let rows = [&self.old_row, &self.new_row, &self.context];
        256 + rows
            .iter()
            .map(|r| r.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
    }
}

/// The head of the transaction's own chain of events.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub hash: Hash,
    pub count: i64,
    pub first_event: i64,
    pub last_event: i64,
}

pub struct TxState {
    pub tx_id: u64,
    pub oids: Oids,
    created_in: pg_sys::SubTransactionId,
    pub head: Head,
    /// The head as it was when each open subtransaction started.
    saved: Vec<(pg_sys::SubTransactionId, Head)>,
    buffer: Vec<Pending>,
    buffered_bytes: usize,
}

/// Write out buffered events once this many bytes are waiting.
const SPILL_BYTES: usize = 8 << 20;
const SPILL_EVENTS: usize = 4096;

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
            buffered_bytes: 0,
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

/// Append one event to the transaction's chain. `build` receives the event's
/// id, position, the id of the transaction's first event and the
/// predecessor's hash, and returns the hashed event.
pub fn append(
    build: impl FnOnce(&TxState, i64, i64, i64, Hash) -> Pending,
) -> Result<i64, AuditError> {
    let fresh = if STATE.with_borrow(Option::is_none) {
        Some(TxState::new()?)
    } else {
        None
    };
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
        let pending = build(s, id, s.head.count + 1, first, s.head.hash);
        s.head.hash = pending.event.hash;
        s.head.count += 1;
        if s.head.count == 1 {
            s.head.first_event = id;
        }
        s.head.last_event = id;
        s.buffered_bytes += pending.size();
        s.buffer.push(pending);
        Ok((
            id,
            s.buffered_bytes > SPILL_BYTES || s.buffer.len() > SPILL_EVENTS,
        ))
    })?;
    let (id, spill) = spill;
    if spill {
        flush(false)?;
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
    // SAFETY (caller): relid is a sequence.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, check_permissions)) }
}

/// Insert buffered events. Only events of the current subtransaction (and of
/// its committed children) can be written now: written inside the current
/// subtransaction, an ancestor's event would vanish if this one rolled back.
pub fn flush(all: bool) -> Result<(), AuditError> {
    let sub = current_subid();
    let (oids, batch) = match STATE.with_borrow_mut(|s| {
        let s = s.as_mut()?;
        let from = if all {
            0
        } else {
            s.buffer
                .iter()
                .position(|p| p.subid >= sub)
                .unwrap_or(s.buffer.len())
        };
        let batch: Vec<Pending> = s.buffer.drain(from..).collect();
        s.buffered_bytes = s.buffer.iter().map(Pending::size).sum();
        Some((s.oids, batch))
    }) {
        Some((o, b)) if !b.is_empty() => (o, b),
        _ => return Ok(()),
    };
    store::insert_events(&oids, &batch)
}

/// The id of this transaction's first recorded event, if it has one.
pub fn first_event() -> Option<i64> {
    STATE.with_borrow(|s| {
        s.as_ref()
            .filter(|s| s.head.count > 0)
            .map(|s| s.head.first_event)
    })
}

fn clear() {
    STATE.set(None);
}

fn pre_commit() -> Result<(), AuditError> {
    let has_events = STATE.with_borrow(|s| s.as_ref().is_some_and(|s| s.head.count > 0));
    if !has_events {
        return Ok(());
    }
    flush(true)?;
    let (tx_id, oids, head) = STATE
        .with_borrow(|s| s.as_ref().map(|s| (s.tx_id, s.oids, s.head)))
        .ok_or_else(|| AuditError::Internal("transaction state vanished".into()))?;
    chain::link(tx_id, &oids, &head)
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit().or_raise(),
        XACT_EVENT_PRE_PREPARE
            if STATE.with_borrow(|s| s.as_ref().is_some_and(|s| s.head.count > 0)) =>
        {
            AuditError::PrepareWithChanges.raise()
        }
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => {
            clear();
            crate::ddl_guard::at_xact_end();
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
        crate::ddl_guard::at_subxact_abort(my_subid);
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
                // Subtransactions started after this one are its descendants.
                s.buffer.retain(|p| p.subid < my_subid);
                s.buffered_bytes = s.buffer.iter().map(Pending::size).sum();
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

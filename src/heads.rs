//! The chains' heads in shared memory, so that a commit does not read its
//! chain's head from the records' primary key.
//!
//! Available only when the library is in `shared_preload_libraries` (the
//! memory is reserved when the server starts). Without it, or for a chain
//! it does not hold, a commit reads the head by index scan as before
//! (`chain::read_head`); both give the same (seq, link hash).
//!
//! Why it is right:
//! - A slot is written only at XACT_EVENT_COMMIT of a transaction that
//!   linked into that chain: after its commit record, while it still holds
//!   the chain's lock. Every link goes through `chain::link` under that
//!   lock, so the slot holds the chain's newest committed link, or nothing.
//! - A commit that ends otherwise (an abort after its link was inserted, a
//!   savepoint rolled back over a link, PREPARE) clears the slot instead.
//!   Clearing is always safe: the next commit reads the index.
//! - The key names the database, the records table and its relfilenode: a
//!   dropped and recreated extension, or a TRUNCATE, never meets an old head.
//! - A crash resets shared memory with the server; a standby has no slots
//!   filled, and one promoted starts empty.
//!
//! A superuser's SQL write to `audit_log.records` (which the guards refuse
//! to anyone else) does not pass here: a deleted newest link leaves a gap
//! that verify() reports, where an index read would have chained over it;
//! a link inserted past the head makes the next commit on that chain fail
//! once on the primary key, and clears the slot.

use pgrx::pg_sys;
use std::cell::RefCell;

use audit_log_core::Hash;

/// Which chain of which log: a slot's key.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Key {
    db: pg_sys::Oid,
    records: pg_sys::Oid,
    relfilenode: pg_sys::Oid,
    chain: i32,
}

impl Key {
    /// The key of `chain` in the records table `rel`, in this database.
    ///
    /// # Safety
    /// `rel` is an open relation.
    pub unsafe fn new(rel: pg_sys::Relation, chain: i32) -> Key {
        // SAFETY: rel is open (the caller's promise); MyDatabaseId is set
        // in a backend that runs a transaction.
        unsafe {
            Key {
                db: pg_sys::MyDatabaseId,
                records: (*rel).rd_id,
                relfilenode: (*(*rel).rd_rel).relfilenode,
                chain,
            }
        }
    }

    fn slot(&self) -> usize {
        // Consecutive chains of one log take consecutive slots.
        let base = (self.db.to_u32() as usize)
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add((self.records.to_u32() as usize).wrapping_mul(0x85EB_CA6B))
            .wrapping_add((self.relfilenode.to_u32() as usize).wrapping_mul(0xC2B2_AE35));
        base.wrapping_add(self.chain as usize) % SLOTS
    }
}

/// 1024 slots of 64 bytes: every chain of a log (at most 1024) has its own.
const SLOTS: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    /// 0: empty.
    seq: i64,
    hash: Hash,
}

const EMPTY: Slot = Slot {
    key: Key {
        db: pg_sys::InvalidOid,
        records: pg_sys::InvalidOid,
        relfilenode: pg_sys::InvalidOid,
        chain: 0,
    },
    seq: 0,
    hash: [0; 32],
};

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    slots: [Slot; SLOTS],
}

const NAME: &std::ffi::CStr = c"audit_log chain heads";

static mut SHARED: *mut Shared = std::ptr::null_mut();
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

fn shared() -> Option<&'static Shared> {
    // SAFETY: SHARED is set once in the postmaster's startup hook (and again
    // at a crash restart, before any backend forks) and read-only after.
    unsafe {
        let p = SHARED;
        p.as_ref()
    }
}

/// Reserve the memory, from _PG_init: only while the server loads
/// `shared_preload_libraries`. Otherwise the heads are read by index.
pub fn request() {
    // SAFETY: reads a flag of the process; installs hooks once, in the
    // postmaster, chaining to those installed before.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        reserve();
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(on_request);
        }
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

/// # Safety
/// In the postmaster, while it sizes shared memory.
unsafe fn reserve() {
    // SAFETY: the caller's promise.
    unsafe {
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), 1);
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: the server's shmem_request_hook.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        reserve();
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: the server's shmem_startup_hook, in the postmaster (at start
    // and after a crash, with fresh memory): allocates the struct under
    // AddinShmemInitLock (MainLWLockArray[21] in every version), as
    // PostgreSQL's own modules do.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(NAME.as_ptr(), std::mem::size_of::<Shared>(), &mut found)
            .cast::<Shared>();
        if !found {
            (&raw mut (*p).lock)
                .write(&raw mut (*pg_sys::GetNamedLWLockTranche(NAME.as_ptr())).lock);
            for i in 0..SLOTS {
                (&raw mut (*p).slots[i]).write(EMPTY);
            }
        }
        SHARED = p;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// A link this transaction inserted: its chain's new head once it commits.
struct Written {
    key: Key,
    /// None: not known to be the head (its insert failed, or a savepoint
    /// rolled it back): the slot is cleared.
    head: Option<(i64, Hash)>,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static WRITTEN: RefCell<Vec<Written>> = const { RefCell::new(Vec::new()) };
}

fn with_slots<T>(
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce(&mut [Slot; SLOTS]) -> T,
) -> Option<T> {
    let s = shared()?;
    // SAFETY: the slots are only touched under their LWLock, exclusively to
    // write; an ERROR cannot occur while it is held (f does not raise), and
    // LWLocks are released at abort anyway.
    unsafe {
        pg_sys::LWLockAcquire(s.lock, mode);
        let slots = &mut (*(&raw const s.slots).cast_mut());
        let r = f(slots);
        pg_sys::LWLockRelease(s.lock);
        Some(r)
    }
}

/// The head of the chain `key` (seq, link hash), if known without reading
/// the index: this transaction's own link first, then the shared slot.
pub fn get(key: &Key) -> Option<(i64, Hash)> {
    if let Some(w) = WRITTEN.with_borrow(|w| w.iter().rev().find(|w| w.key == *key).map(|w| w.head))
    {
        return w;
    }
    with_slots(pg_sys::LWLockMode::LW_SHARED, |slots| {
        let s = &slots[key.slot()];
        (s.key == *key && s.seq > 0).then_some((s.seq, s.hash))
    })
    .flatten()
}

/// This transaction is about to insert a link into `key`'s chain: if it
/// does not commit, the slot is cleared.
pub fn inserting(key: Key) {
    if shared().is_none() {
        return;
    }
    // SAFETY: reads the transaction's state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    WRITTEN.with_borrow_mut(|w| {
        w.push(Written {
            key,
            head: None,
            subxact,
        })
    });
}

/// The link `inserting` announced is in: (seq, link hash) is the head.
pub fn inserted(seq: i64, hash: Hash) {
    WRITTEN.with_borrow_mut(|w| {
        if let Some(last) = w.last_mut() {
            last.head = Some((seq, hash));
        }
    });
}

/// A subtransaction rolls back: links it inserted are gone (and its
/// chain locks released).
pub fn at_subxact_abort(subxact: pg_sys::SubTransactionId) {
    WRITTEN.with_borrow_mut(|w| {
        for x in w.iter_mut().filter(|x| x.subxact >= subxact) {
            x.head = None;
        }
    });
}

/// The transaction ends, committed or not, its chain locks still held.
pub fn at_xact_end(committed: bool) {
    let written = WRITTEN.take();
    if written.is_empty() {
        return;
    }
    with_slots(pg_sys::LWLockMode::LW_EXCLUSIVE, |slots| {
        // Per key, its last link decides.
        for (i, w) in written.iter().enumerate() {
            if written[i + 1..].iter().any(|later| later.key == w.key) {
                continue;
            }
            let slot = &mut slots[w.key.slot()];
            match w.head.filter(|_| committed) {
                Some((seq, hash)) => {
                    *slot = Slot {
                        key: w.key,
                        seq,
                        hash,
                    }
                }
                // Only a slot of this key: another chain's head may be there.
                None if slot.key == w.key => *slot = EMPTY,
                None => {}
            }
        }
    });
}

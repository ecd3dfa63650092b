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
//! - The slot also says where the head's record is stored, and the commit
//!   that uses it first fetches that tuple (under SnapshotSelf, by TID: far
//!   cheaper than the index scan) and compares its chain, seq and link
//!   hash. A record deleted or rewritten by a superuser (its page even cut
//!   off by VACUUM), a database made again from a template under the same
//!   OID, or an OID reused after wraparound, fails the check, and the head
//!   is read from the index: the chain goes on exactly as without the
//!   cache. The slot is marked before the check, so an ERROR there clears
//!   it too.
//! - The key names the database, the records table and its relfilenode: a
//!   dropped and recreated extension, or a TRUNCATE, never meets an old head.
//! - A crash resets shared memory with the server; a standby has no slots
//!   filled, and one promoted starts empty.
//!
//! One difference remains: a record that a superuser inserts past a
//! chain's head (the guards refuse it to anyone else) is not seen, so the
//! next commit on that chain fails once on the primary key (23505); its
//! abort clears the slot, and the commit after it reads the index.

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

/// 1024 slots of 64 bytes (64 kB): every chain of a log (at most 1024)
/// has its own.
const SLOTS: usize = 1024;
const _: () = assert!(std::mem::size_of::<Slot>() == 64);

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    /// 0: empty.
    seq: i64,
    hash: Hash,
    /// Where the head's record is stored.
    at: pg_sys::ItemPointerData,
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
    at: pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData { bi_hi: 0, bi_lo: 0 },
        ip_posid: 0,
    },
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

/// The shared struct, if the server reserved it. Only ever used as a raw
/// pointer: other backends read and write it too.
fn shared() -> Option<*mut Shared> {
    // SAFETY: SHARED is set once in the postmaster's startup hook (and again
    // at a crash restart, before any backend forks) and read-only after.
    let p = unsafe { SHARED };
    (!p.is_null()).then_some(p)
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
    head: Option<Head>,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static WRITTEN: RefCell<Vec<Written>> = const { RefCell::new(Vec::new()) };
}

/// `f` on a copy of `key`'s slot, read under the lock shared.
fn read_slot<T>(key: &Key, f: impl FnOnce(Slot) -> T) -> Option<T> {
    let s = shared()?;
    // SAFETY: s points to the initialized struct; the slot is copied out
    // while the lock is held shared, and writers hold it exclusively.
    let slot = unsafe {
        let lock = (*s).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        let slot = (&raw const (*s).slots[key.slot()]).read();
        pg_sys::LWLockRelease(lock);
        slot
    };
    Some(f(slot))
}

/// `f` on the slots, under the lock held exclusively. `f` must not raise
/// an ERROR or panic (the lock would stay held until the abort releases it).
fn write_slots(f: impl FnOnce(&mut [Slot; SLOTS])) {
    let Some(s) = shared() else { return };
    // SAFETY: s points to the initialized struct; holding its lock
    // exclusively, this backend is the only one to reach the slots until
    // it releases it, so the &mut is unique for f's call.
    unsafe {
        let lock = (*s).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        f(&mut (*s).slots);
        pg_sys::LWLockRelease(lock);
    }
}

/// A chain's newest link: its seq, its link hash, and where its record is.
#[derive(Clone, Copy)]
pub struct Head {
    pub seq: i64,
    pub hash: Hash,
    pub at: pg_sys::ItemPointerData,
}

/// The head of the chain `key`, if known without reading the index: this
/// transaction's own link first, then the shared slot. The caller checks
/// that the record is still there as it was (`store::Records::holds`).
pub fn get(key: &Key) -> Option<Head> {
    if let Some(w) = WRITTEN.with_borrow(|w| w.iter().rev().find(|w| w.key == *key).map(|w| w.head))
    {
        return w;
    }
    read_slot(key, |s| {
        (s.key == *key && s.seq > 0).then_some(Head {
            seq: s.seq,
            hash: s.hash,
            at: s.at,
        })
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

/// The link `inserting` announced is in: it is the chain's head.
pub fn inserted(head: Head) {
    WRITTEN.with_borrow_mut(|w| {
        if let Some(last) = w.last_mut() {
            last.head = Some(head);
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
    // The list keeps its room for the next transaction.
    WRITTEN.with_borrow_mut(|written| {
        if !written.is_empty() {
            settle(written, committed);
            written.clear();
        }
    });
}

/// Write or clear the slots of the links `written`.
fn settle(written: &[Written], committed: bool) {
    write_slots(|slots| {
        // Per key, its last link decides.
        for (i, w) in written.iter().enumerate() {
            if written[i + 1..].iter().any(|later| later.key == w.key) {
                continue;
            }
            let slot = &mut slots[w.key.slot()];
            match w.head.filter(|_| committed) {
                Some(h) => {
                    *slot = Slot {
                        key: w.key,
                        seq: h.seq,
                        hash: h.hash,
                        at: h.at,
                    }
                }
                // Only a slot of this key: another chain's head may be there.
                None if slot.key == w.key => *slot = EMPTY,
                None => {}
            }
        }
    });
}

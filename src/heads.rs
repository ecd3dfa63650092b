//! The chains in shared memory: each chain's lock, and its newest link, so
//! that a commit neither goes through the lock manager nor reads its chain's
//! head from the records' primary key.
//!
//! Available only when the library is in `shared_preload_libraries` (the
//! memory is reserved when the server starts). Without it, a chain is
//! locked by an advisory lock (`locks::LogLock::Chain`) and its head read by
//! index scan (`chain::read_head`); both ways give the same (seq, link hash).
//!
//! Each chain has a place: a log's K chains take K consecutive places from
//! one found by hashing the log's identity (database, records table,
//! relfilenode), so two logs' ranges may overlap, and then share those
//! places. A place holds:
//! - the chain's lock: the top-level transaction id of its holder, set by a
//!   compare-and-swap. A commit that finds every chain busy queues for one
//!   (on the chain's advisory lock, in order of arrival) and then waits on
//!   its holder's transaction id: ordinary lock waits, which the deadlock
//!   detector sees and a cancel ends. The holder clears the word when its
//!   transaction ends (`at_xact_end`), before that id's lock is released,
//!   so a word still naming an ended transaction was left behind: the
//!   waiter takes it over, and the server log says so;
//! - the head: the chain's newest committed link, read and written only by
//!   the lock's holder.
//!
//! Why the head is right:
//! - It is written only at XACT_EVENT_COMMIT of a transaction that linked
//!   into that chain: after its commit record, while it still holds the
//!   chain's lock. Every link goes through `chain::link` under that lock,
//!   so the place holds the chain's newest committed link, or nothing.
//! - A commit that ends otherwise (an abort after its link was inserted, a
//!   savepoint rolled back over a link, PREPARE) clears it instead.
//!   Clearing is always safe: the next commit reads the index.
//! - The place also says where the head's record is stored, and the commit
//!   that uses it first fetches that tuple (under SnapshotSelf, by TID: far
//!   cheaper than the index scan) and compares its chain, seq and link
//!   hash. A record deleted or rewritten by a superuser (its page even cut
//!   off by VACUUM), a database made again from a template under the same
//!   OID, or an OID reused after wraparound, fails the check, and the head
//!   is read from the index: the chain goes on exactly as without the
//!   cache. The place is marked before the check, so an ERROR there clears
//!   it too.
//! - The key names the database, the records table and its relfilenode: a
//!   dropped and recreated extension, or a TRUNCATE, never meets an old
//!   head.
//! - A crash resets shared memory with the server; a standby has no heads,
//!   and one promoted starts empty.
//!
//! One difference remains: a record that a superuser inserts past a
//! chain's head (the guards refuse it to anyone else) is not seen, so the
//! next commit on that chain fails once on the primary key (23505); its
//! abort clears the head, and the commit after it reads the index.

use pgrx::pg_sys;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use audit_log_core::Hash;

/// Which chain of which log: a place's key.
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

    /// The key's place: a hash of the log's identity, plus the chain, so
    /// that the chains of one log never share a place.
    fn place(&self) -> usize {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for w in [
            self.db.to_u32(),
            self.records.to_u32(),
            self.relfilenode.to_u32(),
        ] {
            h = (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01B3);
            h ^= h >> 29;
        }
        let base = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        base.wrapping_add(self.chain as usize) % PLACES
    }
}

/// 4096 places of 128 bytes (512 kB). The K chains of a log (at most 1024)
/// take K consecutive places; two logs whose ranges overlap share those
/// places' locks and heads: a commit that finds a chain busy takes
/// another, and a head not found is read from the index.
const PLACES: usize = 4096;

/// A chain's newest committed link, as its place keeps it.
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

/// One chain's place, on cache lines of its own.
#[repr(C, align(128))]
struct Place {
    /// The chain's lock: the top-level FullTransactionId of the
    /// transaction that links into it, or 0.
    owner: AtomicU64,
    /// How many commits queue for the lock (`lock`): while any do, a
    /// commit that only looks for a free chain passes this one by.
    waiters: AtomicU32,
    /// Read and written only by the lock's holder.
    head: UnsafeCell<Slot>,
}

#[repr(C)]
struct Shared {
    places: [Place; PLACES],
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
            for i in 0..PLACES {
                (&raw mut (*p).places[i]).write(Place {
                    owner: AtomicU64::new(0),
                    waiters: AtomicU32::new(0),
                    head: UnsafeCell::new(EMPTY),
                });
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
    /// rolled it back): its head is cleared.
    head: Option<Head>,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static WRITTEN: RefCell<Vec<Written>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// The places whose lock this transaction holds, released when it ends.
    static OWNED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// The place this backend queues for, counted in its `waiters`.
    static WAITING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The place of index `i`, if the server reserved the memory.
fn place(i: usize) -> Option<&'static Place> {
    let s = shared()?;
    // SAFETY: s points to the initialized struct, which lives as long as
    // the server; a place's words are atomics, and its head is behind an
    // UnsafeCell that only the lock's holder goes through.
    Some(unsafe { &(*s).places[i] })
}

impl Place {
    fn try_lock(&'static self, i: usize, me: u64) -> Result<(), u64> {
        match self
            .owner
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                OWNED.with_borrow_mut(|o| o.push(i));
                Ok(())
            }
            Err(held) if held == me => Ok(()),
            Err(held) => Err(held),
        }
    }
}

/// Lock `key`'s chain for this transaction (`me`, its top-level
/// FullTransactionId) without waiting. False if another transaction holds
/// it or commits queue for it; None without shared memory.
pub fn try_lock(key: &Key, me: u64) -> Option<bool> {
    let i = key.place();
    let p = place(i)?;
    // Reads first: a failed compare-and-swap still takes the line.
    let held = p.owner.load(Ordering::Acquire);
    if held == me {
        return Some(true);
    }
    if held != 0 || p.waiters.load(Ordering::Acquire) != 0 {
        return Some(false);
    }
    Some(p.try_lock(i, me).is_ok())
}

/// Lock `key`'s chain, waiting as long as it takes. Commits queue in the
/// order they came, on the chain's advisory lock (`chain_queue`, taken in
/// `LockAcquire`'s wait, held to the end of the transaction), and the first
/// in the queue waits for the holder's transaction to end: a lock wait on
/// its transaction id. Both are ordinary lock waits, which the deadlock
/// detector sees and a cancel ends. A holder clears its word when its
/// transaction ends (`at_xact_end`), before its transaction id's lock is
/// released: a word still naming an ended transaction was left behind (it
/// never should be), and the waiter takes it over. None without shared
/// memory.
pub fn lock(key: &Key, me: u64, chain_queue: impl FnOnce()) -> Option<()> {
    let i = key.place();
    let p = place(i)?;
    if p.owner.load(Ordering::Acquire) == me {
        return Some(());
    }
    stop_waiting();
    p.waiters.fetch_add(1, Ordering::AcqRel);
    WAITING.set(Some(i));
    chain_queue();
    while let Err(held) = p.try_lock(i, me) {
        // SAFETY: waits on the lock of a transaction id that is not this
        // transaction's (held != me); its low 32 bits are the xid.
        unsafe {
            pg_sys::XactLockTableWait(
                pg_sys::TransactionId::from(held as u32),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                pg_sys::XLTW_Oper::XLTW_None,
            )
        };
        if p.owner
            .compare_exchange(held, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            OWNED.with_borrow_mut(|o| o.push(i));
            pgrx::log!(
                "audit_log: the lock of chain {} was left behind by transaction {held}, which has ended; taken over",
                key.chain
            );
            break;
        }
    }
    stop_waiting();
    Some(())
}

/// Leave the queue counted in `waiters` (locked, or on an ERROR).
fn stop_waiting() {
    if let Some(p) = WAITING.take().and_then(place) {
        p.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Release the chains this transaction holds.
fn unlock_all() {
    stop_waiting();
    OWNED.with_borrow_mut(|owned| {
        for p in owned.drain(..).filter_map(place) {
            p.owner.store(0, Ordering::Release);
        }
    });
}

/// The head kept at the place of `key`, whose chain this transaction holds.
fn read_slot(key: &Key) -> Option<Slot> {
    let p = place(key.place())?;
    // SAFETY: the caller holds the chain, and only its holder reads or
    // writes its head.
    Some(unsafe { p.head.get().read() })
}

/// A chain's newest link: its seq, its link hash, and where its record is.
#[derive(Clone, Copy)]
pub struct Head {
    pub seq: i64,
    pub hash: Hash,
    pub at: pg_sys::ItemPointerData,
}

/// The head of the chain `key`, if known without reading the index: this
/// transaction's own link first, then its place. The caller checks
/// that the record is still there as it was (`store::Records::holds`).
pub fn get(key: &Key) -> Option<Head> {
    if let Some(w) = WRITTEN.with_borrow(|w| w.iter().rev().find(|w| w.key == *key).map(|w| w.head))
    {
        return w;
    }
    read_slot(key).and_then(|s| {
        (s.key == *key && s.seq > 0).then_some(Head {
            seq: s.seq,
            hash: s.hash,
            at: s.at,
        })
    })
}

/// This transaction is about to insert a link into `key`'s chain: if it
/// does not commit, its head is cleared.
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

/// A subtransaction rolls back: links it inserted are gone, and a wait for
/// a chain's lock it was in ended with an ERROR. A chain's word it locked
/// stays held to the end of the transaction (the advisory lock, without
/// preloading, is released with the subtransaction): held longer, it only
/// makes other commits take another chain.
pub fn at_subxact_abort(subxact: pg_sys::SubTransactionId) {
    stop_waiting();
    WRITTEN.with_borrow_mut(|w| {
        for x in w.iter_mut().filter(|x| x.subxact >= subxact) {
            x.head = None;
        }
    });
}

/// The transaction ends, committed or not: its links settle their chains'
/// heads, then it releases its chains.
pub fn at_xact_end(committed: bool) {
    // The list keeps its room for the next transaction.
    WRITTEN.with_borrow_mut(|written| {
        if !written.is_empty() {
            settle(written, committed);
            written.clear();
        }
    });
    unlock_all();
}

/// Write or clear the heads of the chains of the links `written`, which
/// this transaction holds.
fn settle(written: &[Written], committed: bool) {
    // Per key, its last link decides.
    for (i, w) in written.iter().enumerate() {
        if written[i + 1..].iter().any(|later| later.key == w.key) {
            continue;
        }
        let Some(p) = place(w.key.place()) else {
            return;
        };
        // SAFETY: this transaction holds the chain of every link it wrote,
        // and only a chain's holder reads or writes its head.
        let slot = unsafe { &mut *p.head.get() };
        match w.head.filter(|_| committed) {
            Some(h) => {
                *slot = Slot {
                    key: w.key,
                    seq: h.seq,
                    hash: h.hash,
                    at: h.at,
                }
            }
            // Only a head of this key: another chain may share the place.
            None if slot.key == w.key => *slot = EMPTY,
            None => {}
        }
    }
}

//! The chains in shared memory: each chain's lock, and its newest link, so
//! that a commit neither goes through the lock manager nor reads its chain's
//! head from the records' primary key.
//!
//! Available only when the library is in `shared_preload_libraries` (the
//! memory is reserved when the server starts). Without it, a chain is
//! locked by an advisory lock (`locks::LogLock::Chain`) and its head read by
//! index scan (`chain::read_head`); both ways give the same (seq, link hash).
//!
//! Each chain has a place. A directory in shared memory gives places in
//! blocks of 64 consecutive ones, a block to each 64 chains of a log
//! (database, records table): the first look-up on the server of one of
//! those chains (a commit that tries it) takes a free block, under the
//! directory's LWLock, and the server log names it; every backend then
//! remembers it. A block is given back only while no backend is connected
//! to its database, so a chain's place never changes while any backend
//! may hold or remember it, and two logs never share a given block: while
//! blocks are free, no database's commits wait for another's (one that
//! waits for a standby's `remote_apply` while it holds its chain, say). A
//! records table rewritten (TRUNCATE, VACUUM FULL) keeps its blocks; a log
//! dropped and created again, or copied (CREATE DATABASE from a
//! template), is a new log and takes new blocks. When all 224 are given, a
//! look-up that finds none free first gives back the blocks of databases
//! that no backend is connected to (dropped, or idle: a CREATEDB role's
//! copies cannot use the directory up), emptying their places; if there
//! are none, the log hashes to places in a region of 2048 kept for such
//! logs, and may share them, and so do its database's other blocks while
//! another of its backends is connected; the server log says so. Sharing
//! is safe, only slower: a place's key tells whose head it holds. A place
//! holds:
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
//!   off by VACUUM) fails the check, and the head is read from the index:
//!   the chain goes on exactly as without the cache. The place is marked
//!   before the check, so an ERROR there clears it too. A block given back
//!   is emptied, so a database made under a dropped one's OID (`CREATE
//!   DATABASE … OID`, or wraparound) never meets its heads in a given
//!   block; in the shared region it can, and then fails the check, unless
//!   its records table holds the very record that the head names (copied
//!   from a copy of the dropped database): then its next commit on that
//!   chain fails once on the primary key, as below.
//! - The key names the database, the records table and its relfilenode: a
//!   dropped and recreated extension, or a TRUNCATE, never meets an old
//!   head.
//! - A crash resets shared memory with the server; a standby has no heads,
//!   and one promoted starts empty.
//!
//! One difference remains: a record that a superuser inserts past a
//! chain's head (the guards refuse it to anyone else), or that a database
//! copied under a dropped one's OID holds past the head the shared region
//! kept (above), is not seen, so the next commit on that chain fails once
//! on the primary key (23505); its abort clears the head, and the commit
//! after it reads the index.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
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

    /// Which block of places the chain's log uses for this chain.
    fn owner(&self) -> Owner {
        Owner {
            db: self.db,
            records: self.records,
            block: self.chain.div_euclid(BLOCK as i32),
        }
    }

    /// The key's place, in the block its log was given (`base_of`), or,
    /// when the directory is full, in the shared region at a hash of the
    /// log's identity.
    fn place(&self) -> usize {
        let owner = self.owner();
        let base = match LAST.get() {
            Some((o, b)) if o == owner => b,
            _ => {
                let base = BASES.with_borrow(|b| b.get(&owner).copied());
                let base = base.unwrap_or_else(|| {
                    let b = base_of(owner);
                    BASES.with_borrow_mut(|m| m.insert(owner, b));
                    b
                });
                LAST.set(Some((owner, base)));
                base
            }
        };
        let offset = self.chain.rem_euclid(BLOCK as i32) as usize;
        match base {
            Base::Given(first) => first + offset,
            Base::Hashed(h) => GIVEN_PLACES + (h + offset) % SHARED_PLACES,
        }
    }
}

/// The log and block of chains a block of places belongs to. Not the
/// relfilenode: a records table rewritten (TRUNCATE, VACUUM FULL) keeps its
/// blocks, so a database owner's VACUUM FULL cannot use the directory up.
/// Its chains then have the same places, and so the same locks, as before
/// the rewrite (the rewrite's lock orders the two), and the heads' keys
/// (`Key`, which names the relfilenode) keep old heads from being used.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Owner {
    db: pg_sys::Oid,
    records: pg_sys::Oid,
    /// chain / BLOCK.
    block: i32,
}

/// Where a block of a log's chains is.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// A block of its own: its first place.
    Given(usize),
    /// The directory was full: at this offset into the shared region.
    Hashed(usize),
}

impl Owner {
    /// The block's offset into the shared region, from a hash of the log's
    /// identity.
    fn hashed(&self) -> usize {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for w in [self.db.to_u32(), self.records.to_u32()] {
            h = (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01B3);
            h ^= h >> 29;
        }
        let base = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        base.wrapping_add((self.block as usize).wrapping_mul(BLOCK)) % SHARED_PLACES
    }
}

/// 16384 places of 128 bytes (2 MB): 224 blocks of 64 that the directory
/// gives, one to a log's 64 chains, then a region of 2048 that logs share
/// once the directory is full (so that they never share a given block).
const PLACES: usize = 16384;
const BLOCK: usize = 64;
const BLOCKS: usize = 224;
const GIVEN_PLACES: usize = BLOCKS * BLOCK;
const SHARED_PLACES: usize = PLACES - GIVEN_PLACES;

/// Which block belongs to whom. Blocks 0..used have been given; an entry
/// whose database is InvalidOid (no real database's) was given back and is
/// free. Read and written under `DIRECTORY_LOCK`.
#[repr(C)]
struct Directory {
    used: usize,
    /// The server log has said the directory is full (since blocks were
    /// last given back).
    said_full: bool,
    blocks: [Owner; BLOCKS],
    /// Databases some of whose blocks were hashed into the shared region
    /// (`hashed[..hashed_dbs]`) while they had backends: those backends
    /// remember the places, so none of the database's blocks is given a
    /// place of its own until no backend is connected to it. Should more
    /// than `HASHED_DBS` databases with backends have been hashed, every
    /// block not given by then is hashed until the server restarts
    /// (`hashed_dbs` is then `usize::MAX`).
    hashed_dbs: usize,
    hashed: [pg_sys::Oid; HASHED_DBS],
}

const HASHED_DBS: usize = 1024;

impl Directory {
    const EMPTY: Directory = Directory {
        used: 0,
        said_full: false,
        blocks: [FREE; BLOCKS],
        hashed_dbs: 0,
        hashed: [pg_sys::InvalidOid; HASHED_DBS],
    };
}

const FREE: Owner = Owner {
    db: pg_sys::InvalidOid,
    records: pg_sys::InvalidOid,
    block: 0,
};

thread_local! {
    /// The blocks this backend has looked up: a block's place never
    /// changes while a backend of its database is connected, so this is
    /// never stale (a backend's logs are all in its own database).
    static BASES: RefCell<std::collections::HashMap<Owner, Base>> =
        RefCell::new(std::collections::HashMap::new());
    /// The block looked up last: a commit asks for its chain's place
    /// three times, and for one log's block nearly always.
    static LAST: Cell<Option<(Owner, Base)>> = const { Cell::new(None) };
}

/// A line in the server log only (never sent to a client, whatever its
/// `client_min_messages`).
fn server_log(message: String) {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "audit_log",
    )
    .report(PgLogLevel::LOG_SERVER_ONLY);
}

/// What the directory answered under its exclusive lock.
enum Taken {
    /// The owner's block: already given, or given now.
    Block { index: usize, given: bool },
    /// Hashed into the shared region; `first`: the server log is yet to
    /// say that the directory is full.
    Hashed { first: bool },
}

/// Databases whose blocks were given back, for the server log.
struct Freed {
    blocks: usize,
    dbs: [pg_sys::Oid; BLOCKS],
    n: usize,
}

/// Where `owner`'s block is: found in the directory, or given a free
/// block, or, when none is free, one of a database that no backend is
/// connected to (`give_back`), or else hashed into the shared region.
/// Every backend of the owner's database gets the same answer for as long
/// as any of them is connected: a block is given back only when none is,
/// and a database that had a block hashed while it had backends gets no
/// block of its own until none is.
fn base_of(owner: Owner) -> Base {
    let (Some(s), Some(lock)) = (shared(), directory_lock()) else {
        return Base::Hashed(owner.hashed());
    };
    // SAFETY: the directory is read under its lock, shared here: most
    // look-ups find a block that another backend was given.
    let found = unsafe {
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        let d: &Directory = &(*s).directory;
        let b = d.blocks[..d.used].iter().position(|o| *o == owner);
        pg_sys::LWLockRelease(lock);
        b
    };
    if let Some(b) = found {
        return Base::Given(b * BLOCK);
    }
    let mut freed = Freed {
        blocks: 0,
        dbs: [pg_sys::InvalidOid; BLOCKS],
        n: 0,
    };
    // SAFETY: the directory, and the places of blocks given back, are
    // written only under its lock, held exclusively here (rarely: once per
    // backend and block, and once per database with the directory full);
    // nothing in between can raise an ERROR or allocate.
    let taken = unsafe {
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let t = take(s, owner, &mut freed);
        pg_sys::LWLockRelease(lock);
        t
    };
    if freed.blocks > 0 {
        let dbs: Vec<String> = freed.dbs[..freed.n]
            .iter()
            .map(|d| d.to_u32().to_string())
            .collect();
        server_log(format!(
            "audit_log: {} blocks of chain places are free again: no backend is connected to their databases ({})",
            freed.blocks,
            dbs.join(", ")
        ));
    }
    match taken {
        Taken::Block { index, given } => {
            if given {
                let chains = owner.block as usize * BLOCK;
                server_log(format!(
                    "audit_log: chains {}..{} of the log {} in database {} have places {}..{} in shared memory",
                    chains,
                    chains + BLOCK - 1,
                    owner.records.to_u32(),
                    owner.db.to_u32(),
                    index * BLOCK,
                    index * BLOCK + BLOCK - 1
                ));
            }
            Base::Given(index * BLOCK)
        }
        Taken::Hashed { first } => {
            if first {
                server_log(format!(
                    "audit_log: all {BLOCKS} blocks of chain places in shared memory are given, to databases with backends connected; logs that need one from now on share {SHARED_PLACES} places, found by hashing"
                ));
            }
            Base::Hashed(owner.hashed())
        }
    }
}

/// `owner`'s place, found or given.
///
/// # Safety
/// The caller holds the directory's lock exclusively.
unsafe fn take(s: *mut Shared, owner: Owner, freed: &mut Freed) -> Taken {
    // SAFETY: the caller's lock; s points to the initialized struct.
    let d: &mut Directory = unsafe { &mut (*s).directory };
    if let Some(b) = d.blocks[..d.used].iter().position(|o| *o == owner) {
        return Taken::Block {
            index: b,
            given: false,
        };
    }
    // A database whose blocks were hashed keeps hashing while another
    // backend of it is connected (this one does not know this block yet).
    if d.hashed_dbs == usize::MAX
        || (d.hashed[..d.hashed_dbs].contains(&owner.db) && backends(owner.db) > 1)
    {
        return Taken::Hashed { first: false };
    }
    let free = |d: &Directory| d.blocks[..d.used].iter().position(|o| *o == FREE);
    let mut b = free(d);
    if b.is_none() && d.used < BLOCKS {
        d.used += 1;
        b = Some(d.used - 1);
    }
    if b.is_none() {
        // SAFETY: the caller's lock.
        unsafe { give_back(s, freed) };
        b = free(d);
    }
    if let Some(b) = b {
        d.blocks[b] = owner;
        return Taken::Block {
            index: b,
            given: true,
        };
    }
    // From now on, this database's blocks are hashed, while it has
    // backends: listed once (a database that reconnects alone, again and
    // again, must not fill the list). `give_back` has just forgotten the
    // databases that have no backend, so a list still full is one of
    // databases all connected. (Not usize::MAX here: checked above.)
    if d.hashed[..d.hashed_dbs].contains(&owner.db) {
        // Already listed.
    } else if d.hashed_dbs < HASHED_DBS {
        d.hashed[d.hashed_dbs] = owner.db;
        d.hashed_dbs += 1;
    } else {
        d.hashed_dbs = usize::MAX;
    }
    let first = !d.said_full;
    d.said_full = true;
    Taken::Hashed { first }
}

/// How many backends are connected to `db` (a prepared transaction is not
/// one). Takes ProcArrayLock shared, after the directory's lock (never the
/// other way round); raises no ERROR.
fn backends(db: pg_sys::Oid) -> i32 {
    // SAFETY: reads the proc array under its own lock.
    unsafe { pg_sys::CountDBBackends(db) }
}

fn connected(db: pg_sys::Oid) -> bool {
    backends(db) > 0
}

/// Give back the blocks of databases that no backend is connected to (a
/// role with CREATEDB that copies a database holding a log, commits in the
/// copy and drops it, would otherwise use the directory up until a
/// restart; an idle database's log takes a block again when it next
/// commits), emptying their places, and forget such databases in the
/// list of those hashed. No process can be using or remembering such a
/// block: a backend is in the proc array, counted for its database, from
/// before its first look-up to after its last transaction has ended, and
/// one that connects later looks up under the directory's lock, after
/// this. A database that was dropped, or another given its OID later
/// (`CREATE DATABASE … OID`), finds its places empty.
///
/// # Safety
/// The caller holds the directory's lock exclusively.
unsafe fn give_back(s: *mut Shared, freed: &mut Freed) {
    // SAFETY: the caller's lock; s points to the initialized struct.
    let d: &mut Directory = unsafe { &mut (*s).directory };
    let mut kept = [pg_sys::InvalidOid; BLOCKS];
    let mut n_kept = 0;
    // SAFETY: reads this backend's database.
    let mine = unsafe { pg_sys::MyDatabaseId };
    for i in 0..d.used {
        let db = d.blocks[i].db;
        if db == pg_sys::InvalidOid || db == mine || kept[..n_kept].contains(&db) {
            continue;
        }
        if connected(db) {
            kept[n_kept] = db;
            n_kept += 1;
            continue;
        }
        for b in i..d.used {
            if d.blocks[b].db == db {
                d.blocks[b] = FREE;
                for p in b * BLOCK..(b + 1) * BLOCK {
                    // SAFETY: no backend uses this block's places (above);
                    // its head is reset under the directory's lock.
                    unsafe { *(*s).places[p].head.get() = EMPTY };
                }
                freed.blocks += 1;
            }
        }
        freed.dbs[freed.n] = db;
        freed.n += 1;
    }
    if d.hashed_dbs != usize::MAX {
        let mut kept = 0;
        for i in 0..d.hashed_dbs {
            let db = d.hashed[i];
            if db == mine || connected(db) {
                d.hashed[kept] = db;
                kept += 1;
            }
        }
        d.hashed_dbs = kept;
    }
    if freed.blocks > 0 {
        d.said_full = false;
    }
}

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
    directory: Directory,
}

const NAME: &std::ffi::CStr = c"audit_log chain heads";
/// The directory's LWLock tranche (pg_stat_activity shows it as the wait
/// event of a backend that waits for it).
const TRANCHE: &std::ffi::CStr = c"audit_log chain places";

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut DIRECTORY_LOCK: *mut pg_sys::LWLock = std::ptr::null_mut();
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

/// The directory's lock, if the server reserved it.
fn directory_lock() -> Option<*mut pg_sys::LWLock> {
    // SAFETY: set with SHARED, in the postmaster, and read-only after.
    let l = unsafe { DIRECTORY_LOCK };
    (!l.is_null()).then_some(l)
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
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
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
            (&raw mut (*p).directory).write(Directory::EMPTY);
        }
        DIRECTORY_LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
        SHARED = p;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// A link this transaction inserted: its chain's new head once it commits.
struct Written {
    key: Key,
    /// Its place, found when the link was announced (while its chain was
    /// locked), so that the end of the transaction never looks it up.
    place: usize,
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
    shared()?;
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
    shared()?;
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
            server_log(format!(
                "audit_log: the lock of chain {} was left behind by transaction {held}, which has ended; taken over",
                key.chain
            ));
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
    shared()?;
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
    let place = key.place();
    WRITTEN.with_borrow_mut(|w| {
        w.push(Written {
            key,
            place,
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
        let Some(p) = place(w.place) else {
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

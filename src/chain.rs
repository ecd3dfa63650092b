//! Linking a transaction into one of K chains, just before it commits.
//!
//! The transaction takes the first chain it can lock without waiting (it waits
//! only if all K are busy), reads that chain's head, and appends a link. The
//! lock is held from here to the end of commit, never across the body of the
//! transaction. With the library preloaded, the lock is a word in shared
//! memory (`heads`); otherwise it is an advisory lock whose tag has a
//! `field4` that no SQL function produces (they use 1 and 2). Either way no
//! application can take or hold it. The head is read with SnapshotSelf,
//! which sees every committed link whatever the isolation level, and takes
//! no SSI predicate locks: reading it with the transaction's snapshot would
//! fork the chain under REPEATABLE READ, and predicate locks would add
//! serialization failures.

use audit_log_core::record::Record;
use audit_log_core::time::from_pg_timestamp;
use audit_log_core::{Hash, ZERO_HASH};
use pgrx::pg_guard;
use pgrx::pg_sys;

use crate::catalog::Oids;
use crate::errors::AuditError;
use crate::heads;
use crate::locks::LogLock;
use crate::store::{self, records};

/// The head of a transaction's own chain of events: what its record links.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub hash: Hash,
    pub count: i64,
    pub first_event: i64,
    pub last_event: i64,
}

/// Default 64: the chain's lock spans the commit's WAL flush, so K bounds how
/// many audited commits can be in flight (and batched by group commit) at
/// once. Measured on 2 cores at 32 clients: K = 8 gave 0.46x the unaudited
/// throughput, K = 64 gave 0.81-0.98x. More chains cost only checkpoint size.
pub static CHAINS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(64);

fn lock_chain(chain: i32, wait: bool) -> bool {
    LogLock::Chain(chain).acquire(pg_sys::ExclusiveLock, wait)
}

/// Lock a chain of the records table `rel`: the first free one from a
/// per-backend starting point. When all K are busy, look again a few times
/// after short sleeps (a commit that holds its chain for long then delays
/// no one while others come free), then queue for one chain with a real
/// lock wait: a wait the deadlock detector sees, so a cycle through a chain
/// lock is broken rather than spun on forever.
///
/// With the library preloaded, a chain's lock is a word at its place in
/// shared memory (`heads::lock`): a compare-and-swap, where the lock
/// manager's advisory lock costs a trip through its shared hash tables to
/// take and another to release. Then the advisory lock only orders the
/// commits that queue for the word. Every backend of a server locks chains
/// the same way.
fn choose_chain(rel: pg_sys::Relation) -> i32 {
    crate::ensure_settings();
    let k = CHAINS.get().max(1);
    // SAFETY: reads a process-global.
    let start = unsafe { pg_sys::MyProcPid }.rem_euclid(k);
    // SAFETY: rel is the open records table (the caller's).
    let key = |c: i32| unsafe { heads::Key::new(rel, c) };
    // A lock word names its holder by its top-level transaction id,
    // assigned here if it has none yet (the record's insert would).
    // SAFETY: reads, or assigns, the transaction's id.
    let me = unsafe { pg_sys::GetTopFullTransactionId() }.value;
    // Either way, a transaction that holds a chain cannot be prepared
    // (proof::may_prepare).
    let try_lock = |c: i32| match heads::try_lock(&key(c), me) {
        Some(got) => {
            if got {
                crate::proof::note_log_work();
            }
            got
        }
        None => lock_chain(c, false),
    };
    let mut nap_us: i64 = 50;
    for _ in 0..8 {
        for i in 0..k {
            let c = (start + i) % k;
            if try_lock(c) {
                return c;
            }
        }
        pgrx::check_for_interrupts!();
        // SAFETY: a plain sleep of this backend.
        unsafe { pg_sys::pg_usleep(nap_us) };
        nap_us = (nap_us * 2).min(5_000);
    }
    if heads::lock(&key(start), me, || {
        lock_chain(start, true);
    })
    .is_some()
    {
        crate::proof::note_log_work();
    } else {
        lock_chain(start, true);
    }
    start
}

thread_local! {
    /// Per chain, the highest seq this backend has seen committed: a lower
    /// bound on the chain's head (chains only grow), keyed by the links table.
    static SEEN: std::cell::RefCell<std::collections::HashMap<(pg_sys::Oid, i32), i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// (seq, link_hash) of the newest link of `chain`, or (0, zero) for a new chain.
///
/// A backward scan over `chain_id = c` reads every entry of the chain on the
/// head's leaf page (hundreds), so the scan also asks for `seq >= s`, where s
/// is the last head this backend saw on this chain: then it stops within a
/// few entries. If no link is that high (the extension was recreated, or a
/// superuser removed links), it scans again without the bound.
///
/// A head whose stored hash is damaged (not 32 bytes, or NULL) is refused:
/// chaining to a stand-in value would hide the damage behind a new link.
fn read_head(oids: &Oids, chain: i32) -> Result<(i64, Hash), AuditError> {
    let key = (oids.records, chain);
    let seen = SEEN.with_borrow(|m| m.get(&key).copied());
    let head = seen
        .and_then(|s| scan_head(oids, chain, Some(s)))
        .or_else(|| scan_head(oids, chain, None));
    match head {
        Some((seq, Some(hash))) => {
            SEEN.with_borrow_mut(|m| m.insert(key, seq));
            Ok((seq, hash))
        }
        Some((seq, None)) => Err(AuditError::ChainDamaged { chain, seq }),
        None => Ok((0, ZERO_HASH)),
    }
}

fn scan_head(oids: &Oids, chain: i32, at_least: Option<i64>) -> Option<(i64, Option<Hash>)> {
    // SAFETY: an ordered index scan over records_pkey (chain_id, seq), backwards,
    // under SnapshotSelf; the caller holds the chain's lock, so no other
    // transaction can be adding to this chain. Relations are closed with
    // NoLock: the transaction keeps its locks to commit, and the link insert
    // that follows reopens them without going back to the lock manager.
    unsafe {
        let rel = pg_sys::table_open(oids.records, pg_sys::RowExclusiveLock as i32);
        let idx = pg_sys::index_open(oids.records_pkey, pg_sys::RowExclusiveLock as i32);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_INT4EQ),
            pg_sys::Datum::from(chain),
        );
        let mut nkeys = 1;
        if let Some(s) = at_least {
            pg_sys::ScanKeyInit(
                &mut keys[1],
                2,
                pg_sys::BTGreaterEqualStrategyNumber as u16,
                pg_sys::Oid::from(pg_sys::F_INT8GE),
                pg_sys::Datum::from(s),
            );
            nkeys = 2;
        }
        let scan = pg_sys::systable_beginscan_ordered(
            rel,
            idx,
            &raw mut pg_sys::SnapshotSelfData,
            nkeys,
            keys.as_mut_ptr(),
        );
        let tup =
            pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::BackwardScanDirection);
        let head = if tup.is_null() {
            None
        } else {
            let natts = (*(*rel).rd_att).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![false; natts];
            pg_sys::heap_deform_tuple(tup, (*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            let seq = if nulls[records::SEQ] {
                0
            } else {
                values[records::SEQ].value() as i64
            };
            let hash = if nulls[records::LINK_HASH] {
                None
            } else {
                store::hash_datum(values[records::LINK_HASH])
            };
            Some((seq, hash))
        };
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        head
    }
}

thread_local! {
    /// The prepared table whose relcache invalidations count, and how many
    /// this backend has processed (for any table, when the whole cache
    /// was reset).
    static PREPARED_TABLE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
    static PREPARED_INVALS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The prepared table in which this backend found nothing to link, and
    /// the count of invalidations read before it looked. Forgotten when a
    /// transaction or subtransaction aborts: its snapshot may have missed
    /// rows only because it had linked (deleted) them itself, and the
    /// rollback brings them back with no invalidation to announce them.
    static NOTHING_TO_LINK: std::cell::Cell<Option<(pg_sys::Oid, u64)>> = const { std::cell::Cell::new(None) };
    /// This transaction linked prepared transactions (a checkpoint() in a
    /// DO block or function): its commit does not look again, as the rows
    /// it deleted in the current command still show to its own snapshot.
    static LINKED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The transaction ends (commit, abort or PREPARE).
pub fn at_xact_end(aborted: bool) {
    LINKED_HERE.set(false);
    if aborted {
        NOTHING_TO_LINK.set(None);
    }
}

/// A subtransaction rolls back: see NOTHING_TO_LINK.
pub fn at_subxact_abort() {
    NOTHING_TO_LINK.set(None);
}

/// A relcache invalidation. PREPARE of a transaction with audited changes
/// queues one for the prepared table, which PostgreSQL keeps with the
/// prepared transaction and sends to every backend of the database after
/// COMMIT PREPARED has made the row visible: each backend's next audited
/// commit in a transaction that has read it looks in the table again.
#[pg_guard]
unsafe extern "C-unwind" fn prepared_table_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == PREPARED_TABLE.get() {
        PREPARED_INVALS.set(PREPARED_INVALS.get().wrapping_add(1));
    }
}

/// Register the prepared table's invalidation (from _PG_init).
pub fn register_callbacks() {
    // SAFETY: registers a callback for the life of the backend.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(prepared_table_invalidated),
            pg_sys::Datum::from(0),
        );
    }
}

/// At PREPARE of a transaction with audited changes: have every backend's
/// next audited commit look for it once COMMIT PREPARED makes it visible.
pub fn announce_prepared(oids: &Oids) {
    // SAFETY: queues an invalidation message in this transaction, which
    // PREPARE keeps and COMMIT PREPARED sends.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oids.prepared) };
}

/// link_prepared at an audited commit. It skips the check (a table open
/// and an lseek) once its backend found nothing to link, until a PREPARE's
/// invalidation arrives (above), or the cache is reset. Rows that come
/// without a PREPARE of this version (a restore, a transaction prepared
/// under 0.2.0's library) are linked by checkpoint(), which always looks,
/// and by every new session. It never waits for another
/// linker: one that holds the lock links them (a checkpoint() outside a
/// transaction block holds it until its statement's transaction ends), and
/// a commit must not wait on a reader's transaction, where no
/// statement_timeout applies.
pub fn link_prepared_at_commit(oids: &Oids) -> Result<(), AuditError> {
    if LINKED_HERE.get() || NOTHING_TO_LINK.get() == Some((oids.prepared, PREPARED_INVALS.get())) {
        return Ok(());
    }
    link_prepared(oids, false)
}

/// A committed prepared transaction's sealed events, as read from
/// `audit_log.prepared`.
struct Sealed {
    first_event: i64,
    tx_id: u64,
    last_event: i64,
    event_count: i64,
    segments: i32,
    payload: store::Bytea,
    /// The last event's hash as captured (rows prepared since 0.3.0).
    last_event_hash: Option<Hash>,
}

fn sealed_row(r: &crate::scan::Row) -> Option<Sealed> {
    use crate::store::prepared as p;
    Some(Sealed {
        first_event: r.i64(p::FIRST_EVENT)?,
        tx_id: r.i64(p::TX_ID)? as u64,
        last_event: r.i64(p::LAST_EVENT)?,
        event_count: r.i64(p::EVENT_COUNT)?,
        segments: r.i32(p::SEGMENTS)?,
        payload: store::Bytea::from_slice(r.slice(p::PAYLOAD)?),
        last_event_hash: r.slice(p::LAST_EVENT_HASH).and_then(|b| {
            let h = Hash::try_from(b).ok();
            if h.is_none() {
                // Not what PREPARE wrote (a superuser's edit): the events
                // are hashed instead, so the link still covers what they are.
                pgrx::warning!(
                    "audit_log: the sealed hash of prepared transaction {} is {} bytes, not 32: its events are hashed again to link it",
                    r.i64(p::FIRST_EVENT).unwrap_or(0),
                    b.len()
                );
            }
            h
        }),
    })
}

/// The committed prepared transactions waiting to be linked, each made
/// into a T, under the latest snapshot (the statement's may predate their
/// COMMIT PREPARED).
fn committed_rows<T>(
    oids: &Oids,
    convert: fn(&crate::scan::Row) -> Option<T>,
) -> Result<Vec<T>, AuditError> {
    let snapshot = crate::scan::SnapshotGuard::latest();
    // Whoever commits: an application role that cannot read the table links
    // them too (it never sees what it read).
    crate::scan::Ordered::open_where_for_extension(
        oids.prepared,
        oids.prepared_pkey,
        snapshot.0,
        &[],
        convert,
    )?
    .collect()
}

fn sealed(oids: &Oids) -> Result<Vec<Sealed>, AuditError> {
    committed_rows(oids, sealed_row)
}

/// How many committed prepared transactions wait to be linked (their
/// payloads are not read).
pub fn committed_prepared(oids: &Oids) -> Result<usize, AuditError> {
    Ok(committed_rows(oids, |_| Some(()))?.len())
}

/// Link every committed prepared transaction into a chain, as a record
/// with the commit time of its linking. Called by each audited commit
/// (before its own link) and by checkpoint(): a prepared transaction never
/// holds a chain, and ROLLBACK PREPARED leaves nothing to link. With
/// `wait` false, another linker's lock makes it link nothing.
pub fn link_prepared(oids: &Oids, wait: bool) -> Result<(), AuditError> {
    // Read before the snapshot that looks: a COMMIT PREPARED that snapshot
    // misses sends its invalidation after it, which changes the count.
    PREPARED_TABLE.set(oids.prepared);
    let invals = PREPARED_INVALS.get();
    // SAFETY: the table's size, through the relation cache; an empty table
    // (nothing was ever prepared) costs one lseek.
    let empty = unsafe {
        let rel = pg_sys::table_open(oids.prepared, pg_sys::AccessShareLock as i32);
        let n = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        n == 0
    };
    if empty || sealed(oids)?.is_empty() {
        NOTHING_TO_LINK.set(Some((oids.prepared, invals)));
        return Ok(());
    }
    // One linker at a time; what another linked before we got the lock is
    // gone from the table by then (it commits before releasing it).
    if !LogLock::Linkers.acquire(pg_sys::ExclusiveLock, wait) {
        return Ok(());
    }
    LINKED_HERE.set(true);
    for mut s in sealed(oids)? {
        let head = Head {
            hash: ZERO_HASH,
            count: s.event_count,
            first_event: s.first_event,
            last_event: s.last_event,
        };
        // The hash sealed at PREPARE, as an ordinary commit links the one
        // its capture computed; rows prepared before 0.3.0 are hashed here.
        let last_hash = match s.last_event_hash {
            Some(h) => {
                pgrx::debug1!(
                    "audit_log: linking prepared transaction {} (events {}..{}) with its sealed hash",
                    s.tx_id,
                    s.first_event,
                    s.last_event
                );
                h
            }
            None => {
                let probe = record(s.tx_id, &head, 0, 0);
                let d = if s.segments != 0 {
                    // Read one at a time: a prepared transaction can be of any size.
                    let snapshot = crate::scan::SnapshotGuard::latest();
                    let parts =
                        crate::store::segments_for_extension(oids, snapshot.0, s.first_event)?;
                    audit_log_core::record::digest_streamed(&probe, parts, s.payload.bytes())?
                } else {
                    audit_log_core::record::digest(&probe, [], s.payload.bytes())
                };
                d.last_hash
            }
        };
        link(
            s.tx_id,
            oids,
            &Head {
                hash: last_hash,
                ..head
            },
            s.segments,
            &mut s.payload,
        )?;
        crate::store::delete_where(
            oids.prepared,
            oids.prepared_pkey,
            &[(1, pg_sys::F_INT8EQ, pg_sys::Datum::from(s.first_event))],
        )?;
    }
    Ok(())
}

/// Append the transaction's record: its events not yet spilled, and its link.
pub fn link(
    tx_id: u64,
    oids: &Oids,
    head: &Head,
    segments: i32,
    payload: &mut store::Bytea,
) -> Result<(), AuditError> {
    let target = store::Records::open(oids)?;
    let chain = choose_chain(target.relation());
    // SAFETY: the relation is open while target is.
    let key = unsafe { heads::Key::new(target.relation(), chain) };
    // The head kept in shared memory, if its record is still there as it
    // was; otherwise (a superuser's edit, a restart) read from the index.
    let cached = heads::get(&key);
    // From here, an ERROR (in the check, the index read or the insert)
    // clears the slot when the transaction aborts.
    heads::inserting(key);
    let (seq, prev) = match cached.filter(|h| target.holds(h.at, chain, h.seq, &h.hash)) {
        Some(h) => {
            if debugging() {
                // Not the seq: an application role may see its DEBUG2
                // lines, and the seq counts the chain's transactions.
                pgrx::debug2!("audit_log: the head of chain {chain} from shared memory");
            }
            (h.seq, h.hash)
        }
        None => read_head(oids, chain)?,
    };
    // SAFETY: reads the clock.
    let now = from_pg_timestamp(unsafe { pg_sys::GetCurrentTimestamp() });
    let mut r = record(tx_id, head, chain, seq + 1);
    r.committed_at = now;
    r.link_hash = r.link(prev, head.hash).link_hash;
    let at = target.insert(&r, segments, payload)?;
    heads::inserted(heads::Head {
        seq: r.seq,
        hash: r.link_hash,
        at,
    });
    Ok(())
}

/// Whether a DEBUG2 message goes anywhere (checked before it is formatted).
fn debugging() -> bool {
    let debug2 = pg_sys::DEBUG2 as i32;
    // SAFETY: reads two settings of the backend.
    unsafe { pg_sys::client_min_messages <= debug2 || pg_sys::log_min_messages <= debug2 }
}

/// The record of a transaction with this head, at `seq` of `chain`, before
/// its commit time and link hash are set.
fn record(tx_id: u64, head: &Head, chain: i32, seq: i64) -> Record {
    Record {
        chain_id: chain,
        seq,
        tx_id,
        first_event: head.first_event,
        last_event: head.last_event,
        event_count: head.count,
        committed_at: 0,
        link_hash: ZERO_HASH,
    }
}

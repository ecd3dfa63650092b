//! Integrating a large backlog of leaves in one sequential pass over
//! `audit_log.records`, as verify() reads: records in the order they lie on
//! disk, each chain put back in order with the few that come before their
//! predecessor held back. Reading a record through the primary key costs a
//! random heap fetch; this pass reads pages in order, so a first checkpoint
//! after a large load (or after an upgrade) integrates at the speed of the
//! hashing. It only stores complete level-0 tiles, each contiguous with the
//! chain's stored ones; [`crate::tree::integrate`] then does the upper
//! levels and whatever this pass left (a chain it stopped on reads as
//! before, through the primary key, and reports what is wrong there).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use audit_log_core::merkle;
use audit_log_core::tree::{TileSource, TILE_WIDTH};
use audit_log_core::{Hash, ZERO_HASH};

use audit_log_core::record::Record;

use crate::catalog;
use crate::errors::AuditError;
use crate::records::{block_signals, record_columns, verify_threads};
use crate::scan::{select_at, Arg, Ordered, Row, SnapshotGuard, Val};
use crate::store::{records, Spilled};
use crate::tree::{
    checked_leaf, insert_tiles, lock_chain_tiles, payload_digest, segments_or_summary,
    seq_range_keys, stored_tiles, ChainTiles,
};

/// `audit_log.integration_scan_leaves`: backlogs of fewer leaves than this
/// are read through the primary key; -1 never scans.
pub static SCAN_MIN_LEAVES: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(16384);

/// The pass reads every record, so it runs only when the backlog is at
/// least this fraction (1/n) of the records present; below it, reading
/// through the primary key touches fewer pages.
const SCAN_MIN_SHARE: u64 = 8;

/// Records held back (they came before their predecessor), over all
/// chains, and their payload bytes: past either, the chain that needs more
/// stops here, and the primary-key path integrates the rest of it.
const AHEAD_MAX: usize = 1 << 16;
const AHEAD_MAX_BYTES: usize = 64 << 20;

/// A chain holding back this many records has its missing one read through
/// the primary key: it lies where the scan has been or does not start (a
/// backend's insert into an older page with room, a page a purge freed).
const GAP_FILL: usize = 1024;

/// Complete tiles of a chain stored with one statement, and complete tiles
/// kept in memory over all chains (8 kB each) before every chain's are.
const TILES_PER_INSERT: usize = 64;
const TILES_KEPT: usize = 512;

/// A record the scan wants, as read: the index of its chain's run, its
/// columns, its payload (and segments'), and the stored link hash of the
/// record before it, set once the chain's order is known.
struct Scanned {
    run: usize,
    record: Record,
    segments: i32,
    payload: Vec<u8>,
    parts: Vec<Vec<u8>>,
    /// What the leaf needs of the events of a transaction past
    /// TX_BYTES_HELD, which the session hashed one segment at a time.
    summary: Option<Result<audit_log_core::tree::EventsSummary, &'static str>>,
    prev: Hash,
}

/// A record's leaf, or why it has none. Runs on worker threads, and hands
/// the record back: its buffers are freed by the session that allocated
/// them (a free in another thread takes the allocator's locks).
fn leaf(s: Scanned) -> (Result<Hash, ()>, Scanned) {
    let leaf = s
        .summary
        .unwrap_or_else(|| payload_digest(&s.parts, &s.payload, s.record.base()))
        .and_then(|d| checked_leaf(&s.record, &s.prev, d))
        .map_err(|_| ());
    (leaf, s)
}

/// Putting one chain's records in order, in the session: which seq is due,
/// the stored link hash before it, and the records that came early.
struct Order {
    chain: i32,
    next: i64,
    end: i64,
    prev: Hash,
    ahead: BTreeMap<i64, Scanned>,
}

/// The session's side of the pass: the chains put in order, and the
/// records due next, for the workers.
struct Producer {
    oids: catalog::Oids,
    snap: pgrx::pg_sys::Snapshot,
    orders: Vec<Order>,
    /// Per run: it is complete or stopped, so the scan skips its rows
    /// (shared with the scan's row filter).
    done: Rc<[Cell<bool>]>,
    /// Runs not done yet: at none, the scan ends.
    live: usize,
    ready: VecDeque<Scanned>,
    held: usize,
    held_bytes: usize,
    held_most: usize,
    /// Records read through the primary key.
    fetched: usize,
}

impl Producer {
    /// A record the scan gave.
    fn place(&mut self, s: Scanned) -> Result<(), AuditError> {
        let run = s.run;
        let o = &mut self.orders[run];
        let seq = s.record.seq;
        // Already read through the primary key (the key is unique).
        if self.done[run].get() || seq < o.next {
            return Ok(());
        }
        if seq == o.next {
            self.feed(s);
            return Ok(());
        }
        let bytes = s.payload.len();
        if self.held >= AHEAD_MAX || self.held_bytes + bytes > AHEAD_MAX_BYTES {
            self.stop(run);
            return Ok(());
        }
        o.ahead.insert(seq, s);
        self.held += 1;
        self.held_bytes += bytes;
        self.held_most = self.held_most.max(self.held);
        if o.ahead.len() >= GAP_FILL {
            // The records between the one due and the first held back.
            let hi = o.ahead.keys().next().map_or(o.next, |k| k - 1);
            self.fill(run, hi)?;
        }
        Ok(())
    }

    /// The record due next in its chain, with every held one it releases.
    fn feed(&mut self, s: Scanned) {
        let run = s.run;
        let o = &mut self.orders[run];
        let mut due = Some(s);
        while let Some(mut s) = due {
            s.prev = o.prev;
            o.prev = s.record.link_hash;
            o.next += 1;
            self.ready.push_back(s);
            due = o.ahead.remove(&o.next);
            if let Some(n) = &due {
                self.held -= 1;
                self.held_bytes -= n.payload.len();
            }
        }
        if o.next > o.end {
            self.finish(run);
        }
    }

    /// The run is complete, or stopped.
    fn finish(&mut self, run: usize) {
        if !self.done[run].replace(true) {
            self.live -= 1;
        }
    }

    /// The rest of this chain is the primary-key path's: what it held back
    /// is let go.
    fn stop(&mut self, run: usize) {
        for s in std::mem::take(&mut self.orders[run].ahead).into_values() {
            self.held -= 1;
            self.held_bytes -= s.payload.len();
        }
        self.finish(run);
    }

    /// Read chain `run`'s records from the one due up to seq `hi` through
    /// the primary key. One missing stops the chain (the primary-key path
    /// reports it).
    fn fill(&mut self, run: usize, hi: i64) -> Result<(), AuditError> {
        let o = &self.orders[run];
        let (chain, lo) = (o.chain, o.next);
        for s in fetch_range(&self.oids, self.snap, chain, lo, hi)? {
            let mut s = s?;
            if self.done[run].get() {
                break;
            }
            let next = self.orders[run].next;
            if s.record.seq < next {
                continue;
            }
            if s.record.seq > next {
                break;
            }
            self.fetched += 1;
            s.run = run;
            self.feed(s);
        }
        if !self.done[run].get() && self.orders[run].next <= hi {
            self.stop(run);
        }
        Ok(())
    }

    /// After the scan: the records of a chain it did not see. False when
    /// no chain has any left.
    fn fill_any(&mut self) -> Result<bool, AuditError> {
        let Some(run) = (0..self.orders.len()).find(|&r| !self.done[r].get()) else {
            return Ok(false);
        };
        let end = self.orders[run].end;
        self.fill(run, end)?;
        Ok(true)
    }
}

/// A record the scan wants, from its row (its run is set by the caller).
fn scanned(row: &Row, run: usize) -> Scanned {
    Scanned {
        run,
        record: record_columns(row),
        segments: row.i32(records::SEGMENTS).unwrap_or(0),
        payload: row.slice(records::PAYLOAD).unwrap_or_default().to_vec(),
        parts: Vec::new(),
        summary: None,
        prev: ZERO_HASH,
    }
}

/// Records `lo..=hi` of `chain`, in order, through the primary key.
fn fetch_range(
    oids: &catalog::Oids,
    snap: pgrx::pg_sys::Snapshot,
    chain: i32,
    lo: i64,
    hi: i64,
) -> Result<Ordered<Scanned>, AuditError> {
    let keys = seq_range_keys(chain, lo - 1, hi);
    Ordered::open_keys(oids.records, oids.records_pkey, snap, keys, |r| {
        Some(scanned(r, 0))
    })
}

/// The first page to scan: the lowest that holds a chain's next record.
/// Records of the backlog on pages before it are read through the primary
/// key (as gaps); none is missed. After a purge, the pages it freed take
/// new records, so the scan starts at the beginning.
fn start_block(orders: &[Order], snap: pgrx::pg_sys::Snapshot) -> Result<u32, AuditError> {
    let schema = catalog::log_schema_sql();
    if !select_at(
        snap,
        &format!("SELECT 1 FROM {schema}.anchors LIMIT 1"),
        &[],
    )?
    .is_empty()
    {
        return Ok(0);
    }
    let query = format!(
        "SELECT ((ctid::text::point)[0])::bigint FROM {schema}.records WHERE chain_id = $1 AND seq = $2"
    );
    let mut start = u32::MAX;
    for o in orders {
        let rows = select_at(snap, &query, &[Arg::Int4(o.chain), Arg::Int8(o.next)])?;
        // A chain whose next record is not there starts the scan at the
        // beginning (and the primary-key path reports the record missing).
        let block = rows.first().and_then(|r| r.first()).and_then(Val::int);
        start = start.min(block.and_then(|b| u32::try_from(b).ok()).unwrap_or(0));
    }
    Ok(if start == u32::MAX { 0 } else { start })
}

/// One chain's tiles, as its leaves come back from the workers.
struct Tiles {
    chain: i32,
    /// The first tile this pass makes, and the one in progress.
    from: u64,
    tile: u64,
    leaves: Vec<Hash>,
    /// Complete tiles not stored yet: (index, leaves, root).
    made: Vec<(u64, Vec<Hash>, Hash)>,
    /// A record's link did not recompute: nothing after it is a leaf here.
    failed: bool,
}

impl Tiles {
    /// The chain's next leaf (or that it has none); true if it completed a
    /// tile.
    fn push(&mut self, leaf: Result<Hash, ()>) -> bool {
        if self.failed {
            return false;
        }
        let Ok(leaf) = leaf else {
            self.failed = true;
            return false;
        };
        self.leaves.push(leaf);
        if self.leaves.len() as u64 != TILE_WIDTH {
            return false;
        }
        let leaves = std::mem::take(&mut self.leaves);
        let root = merkle::root(&leaves);
        self.made.push((self.tile, leaves, root));
        self.tile += 1;
        true
    }

    fn store(&mut self) -> Result<(), AuditError> {
        let tiles: Vec<(u64, &[Hash], Hash)> = self
            .made
            .iter()
            .map(|(t, l, r)| (*t, l.as_slice(), *r))
            .collect();
        insert_tiles(self.chain, 0, &tiles)?;
        self.made.clear();
        Ok(())
    }
}

/// If the chains' backlog (up to `heads`, in complete tiles) is large,
/// integrate it from one sequential scan. Chains another transaction is
/// integrating are left alone.
pub fn integrate_by_scan(heads: &[(i32, i64)]) -> Result<u64, AuditError> {
    crate::ensure_settings();
    let Ok(min) = u64::try_from(SCAN_MIN_LEAVES.get()) else {
        return Ok(0);
    };
    // Even every complete tile would not be enough: nothing to decide.
    let most: u64 = heads
        .iter()
        .map(|&(_, s)| s.max(0) as u64 / TILE_WIDTH * TILE_WIDTH)
        .sum();
    if most < min.max(1) {
        return Ok(0);
    }
    // The summary is for a DBA who asks (client_min_messages = debug1),
    // raised after as_owner() has put the caller's message level back.
    let summary = catalog::as_owner(|| {
        let oids = catalog::lookup()?;
        let locked: Vec<(i32, i64)> = heads
            .iter()
            .copied()
            .filter(|&(c, _)| lock_chain_tiles(c, false))
            .collect();
        // Taken after the locks: tiles committed before them are seen.
        let snapshot = SnapshotGuard::fresh();
        let snap = snapshot.0;
        let mut orders: Vec<Order> = Vec::new();
        let mut tiles: Vec<Tiles> = Vec::new();
        // The records in the log, over every chain: what a scan reads.
        let purged: HashMap<i32, i64> = select_at(
            snap,
            &format!(
                "SELECT chain_id, seq FROM {}.anchors",
                catalog::log_schema_sql()
            ),
            &[],
        )?
        .iter()
        .filter_map(|r| Some((r.first()?.int()? as i32, r.get(1)?.int()?)))
        .collect();
        let present: u64 = heads
            .iter()
            .map(|&(c, h)| (h - purged.get(&c).copied().unwrap_or(0)).max(0) as u64)
            .sum();
        let mut backlog = 0u64;
        for (chain, head) in locked {
            let from = stored_tiles(snap, chain, 0)?;
            let to = head.max(0) as u64 / TILE_WIDTH;
            if to <= from {
                continue;
            }
            let mut src = ChainTiles::new(chain, oids, snap)?;
            // The tile a purge cut through: its purged leaves are in the
            // partial tile the purge stored; the scan reads the rest.
            // (A purge stores the tiles before its cut: more than one tile's
            // worth of purged leaves past the stored tiles is the primary-key
            // path's to report.)
            let first = (from * TILE_WIDTH).max(src.purged);
            if first >= to * TILE_WIDTH || first - from * TILE_WIDTH >= TILE_WIDTH {
                continue;
            }
            let cut = match src.leaves(from * TILE_WIDTH, first) {
                Ok(l) => l,
                // No tile holds them: the primary-key path says why.
                Err(AuditError::TreeUnavailable { .. } | AuditError::TreeDamaged { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            let Some(prev) = src.link_hash_at(first as i64)? else {
                continue;
            };
            backlog += (to - from) * TILE_WIDTH;
            orders.push(Order {
                chain,
                next: first as i64 + 1,
                end: (to * TILE_WIDTH) as i64,
                prev,
                ahead: BTreeMap::new(),
            });
            tiles.push(Tiles {
                chain,
                from,
                tile: from,
                leaves: cut,
                made: Vec::new(),
                failed: false,
            });
        }
        if backlog < min.max(1) || backlog * SCAN_MIN_SHARE < present {
            return Ok(None);
        }
        // The rows each chain wants, for the scan to skip the others before
        // it copies their payloads.
        let want: HashMap<i32, (usize, i64, i64)> = tiles
            .iter()
            .zip(&orders)
            .enumerate()
            .map(|(i, (t, o))| (t.chain, (i, o.next, o.end)))
            .collect();
        let start = start_block(&orders, snap)?;
        let done: Rc<[Cell<bool>]> = orders.iter().map(|_| Cell::new(false)).collect();
        let skip = Rc::clone(&done);
        let mut rows = Ordered::sequential_from(oids.records, snap, start, move |row: &Row| {
            let &(run, lo, hi) = want.get(&row.i32(records::CHAIN_ID)?)?;
            let seq = row.i64(records::SEQ)?;
            ((lo..=hi).contains(&seq) && !skip[run].get()).then(|| scanned(row, run))
        })?;
        // The session reads and puts each chain in order (only it may call
        // PostgreSQL); workers hash, and the leaves come back in that order.
        let mut p = Producer {
            oids,
            snap,
            live: orders.len(),
            done,
            orders,
            ready: VecDeque::new(),
            held: 0,
            held_bytes: 0,
            held_most: 0,
            fetched: 0,
        };
        let mut scanning = true;
        let mut failed: Option<AuditError> = None;
        let input = std::iter::from_fn(|| loop {
            if let Some(mut s) = p.ready.pop_front() {
                if s.segments != 0 {
                    let base = s.record.base();
                    match segments_or_summary(&p.oids, p.snap, base, &s.payload) {
                        Ok(Spilled::Whole(parts)) => s.parts = parts,
                        Ok(Spilled::Streamed(d)) => {
                            s.summary = Some(d);
                            s.payload = Vec::new();
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                return Some(Ok(s));
            }
            // Every chain complete or stopped: the rest of the table is
            // not read.
            if p.live == 0 {
                scanning = false;
            }
            let step = if scanning {
                match rows.next() {
                    Some(Ok(s)) => p.place(s),
                    Some(Err(e)) => Err(e),
                    None => {
                        scanning = false;
                        Ok(())
                    }
                }
            } else {
                match p.fill_any() {
                    Ok(true) => Ok(()),
                    Ok(false) => return None,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = step {
                return Some(Err(e));
            }
        });
        std::thread::scope(|scope| -> Result<(), AuditError> {
            let leaves = audit_log_core::parallel::map_ordered_bounded(
                scope,
                input,
                verify_threads(),
                block_signals,
                leaf,
                |s: &Scanned| crate::records::weight(&s.payload, &s.parts),
                crate::records::BATCH_BYTES,
            );
            let mut kept = 0usize;
            for item in leaves {
                match item {
                    Ok((leaf, s)) => {
                        let t = &mut tiles[s.run];
                        if !t.push(leaf) {
                            continue;
                        }
                        kept += 1;
                        if t.made.len() >= TILES_PER_INSERT {
                            kept -= t.made.len();
                            t.store()?;
                        }
                        if kept >= TILES_KEPT {
                            for t in tiles.iter_mut() {
                                t.store()?;
                            }
                            kept = 0;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        // What each chain completed in order is kept, even if it stopped
        // later: the primary-key path goes on from there.
        let mut leaves = 0u64;
        let mut left = 0usize;
        for (t, o) in tiles.iter_mut().zip(&p.orders) {
            t.store()?;
            leaves += (t.tile - t.from) * TILE_WIDTH;
            left += usize::from(t.failed || o.next <= o.end);
        }
        Ok(Some((leaves, format!(
            "audit_log: integrated {leaves} leaves of {} chain(s) by one sequential scan from page {start}; at most {} record(s) held back, {} read through the primary key; {left} chain(s) left to the primary key",
            tiles.len(),
            p.held_most,
            p.fetched
        ))))
    })?;
    Ok(match summary {
        Some((leaves, s)) => {
            pgrx::debug1!("{s}");
            leaves
        }
        None => 0,
    })
}

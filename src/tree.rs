//! The chains' Merkle trees (docs/FORMAT.md, "Merkle trees"). Tiles are kept
//! in `audit_log.tiles` and integrated off the commit path: by checkpoint(),
//! by purge() before it removes records, and by prove() and consistency()
//! when they may write. Whatever is not integrated yet is computed from the
//! records, so a proof never depends on when integration ran. The SQL API:
//! prove(event [, checkpoint]) and consistency(old checkpoint).

use std::collections::HashMap;

use std::ops::ControlFlow;

use audit_log_core::merkle::{self, consistency_path, inclusion_path, tree_root};
use audit_log_core::model::Checkpoint;
use audit_log_core::record::{Base, Framed, Record};
use audit_log_core::tree::{
    self as core_tree, event_hashes, record_leaf, summary, ChainConsistency, Consistency,
    EventsSummary, HeadLeaf, ProvenRecord, TileSource, Tiled, CONSISTENCY_FORMAT, TILE_WIDTH,
};
use audit_log_core::{Hash, TreeHead, ZERO_HASH};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::catalog::{self, Oids};
use crate::errors::AuditError;
use crate::records::hash_of;
use crate::scan::{scan_keys, select_at, Arg, Ordered, Row, SnapshotGuard, Val};
use crate::store::{read_or_stream, records, Spilled};
use pgrx::pg_sys::panic::ErrorReport;

/// A record as integration reads it: its columns, and its payload (a copy,
/// hashed on a worker thread), with its segments' payloads and the stored
/// link hash of the record before it, which the session adds.
struct LeafRow {
    record: Record,
    segments: i32,
    /// The payload, for a worker; empty when the session hashed it in place.
    payload: Vec<u8>,
    parts: Vec<Vec<u8>>,
    /// What the leaf needs of its events when the session hashed them: in
    /// place (a small payload that could not be read counts as no events),
    /// or one segment at a time (a transaction past TX_BYTES_HELD).
    hashed: Option<Result<EventsSummary, &'static str>>,
    prev: Hash,
    /// Bytes of events in the payload.
    payload_len: usize,
}

/// Payloads up to this size are hashed by the session as it reads them:
/// copying one to a worker costs about as much as hashing it (verify()'s
/// rule too).
const HASH_IN_PLACE: usize = 4096;

fn leaf_row(r: &Row) -> Option<LeafRow> {
    let record = crate::records::record_columns(r);
    let base = record.base();
    let segments = r.i32(records::SEGMENTS).unwrap_or(0);
    let payload = r.slice(records::PAYLOAD).unwrap_or_default();
    let hashed = (segments == 0 && payload.len() <= HASH_IN_PLACE).then(|| {
        Ok(summary(
            &event_hashes([], payload, base).unwrap_or_default(),
        ))
    });
    Some(LeafRow {
        record,
        segments,
        payload: if hashed.is_some() {
            Vec::new()
        } else {
            payload.to_vec()
        },
        parts: Vec::new(),
        hashed,
        prev: ZERO_HASH,
        payload_len: payload.len(),
    })
}

impl LeafRow {
    fn weight(&self) -> usize {
        crate::records::weight(&self.payload, &self.parts)
    }
}

/// A record's leaf, if its link recomputes from its events and the stored
/// hash before it; otherwise what is wrong. Runs on worker threads.
fn leaf_of(row: &LeafRow) -> Result<Hash, &'static str> {
    let digest = match row.hashed {
        Some(d) => d?,
        None => payload_digest(&row.parts, &row.payload, row.record.base())?,
    };
    checked_leaf(&row.record, &row.prev, digest)
}

/// What a record's leaf needs of its transaction's events.
pub(crate) fn payload_digest(
    parts: &[Vec<u8>],
    payload: &[u8],
    base: Base,
) -> Result<EventsSummary, &'static str> {
    Ok(summary(
        &event_hashes(parts.iter().map(Vec::as_slice), payload, base)
            .map_err(|_| "its payload is unreadable")?,
    ))
}

/// A transaction's segments, for a worker to hash with its payload; or,
/// past TX_BYTES_HELD, what its leaf needs of its events, hashed here one
/// segment at a time.
pub(crate) fn segments_or_summary(
    oids: &Oids,
    snap: pg_sys::Snapshot,
    base: Base,
    payload: &[u8],
) -> Result<Spilled<Result<EventsSummary, &'static str>>, AuditError> {
    read_or_stream(oids, snap, base.first_event, payload.len(), |all| {
        Ok(core_tree::summary_streamed(all, payload, base)?
            .map_err(|_| "its payload is unreadable"))
    })
}

/// The leaf of record `r`, whose events have `digest`, if its link
/// recomputes from them and `prev`, the stored link hash before it.
pub(crate) fn checked_leaf(
    r: &Record,
    prev: &Hash,
    (count, last, root): (usize, Hash, Hash),
) -> Result<Hash, &'static str> {
    if count as i64 != r.event_count || r.link_hash_after(prev, &last) != r.link_hash {
        return Err("its link does not recompute from its events and the record before");
    }
    Ok(record_leaf(&r.link_hash, &root))
}

/// Scan keys for chain `chain`'s records with seq in `after+1 ..= upto`
/// (for its primary key).
pub(crate) fn seq_range_keys(chain: i32, after: i64, upto: i64) -> Vec<pg_sys::ScanKeyData> {
    let seq = records::SEQ as i16 + 1;
    scan_keys(&[
        (
            records::CHAIN_ID as i16 + 1,
            pg_sys::BTEqualStrategyNumber,
            pg_sys::F_INT4EQ,
            pg_sys::Datum::from(chain),
        ),
        (
            seq,
            pg_sys::BTGreaterStrategyNumber,
            pg_sys::F_INT8GT,
            pg_sys::Datum::from(after),
        ),
        (
            seq,
            pg_sys::BTLessEqualStrategyNumber,
            pg_sys::F_INT8LE,
            pg_sys::Datum::from(upto),
        ),
    ])
}

/// Records handed to a worker at a time: one record's hashing is a few
/// microseconds, less than a hand-over.
const LEAF_BATCH: usize = 64;

fn damaged(chain: i32, seq: i64, why: impl Into<String>) -> AuditError {
    AuditError::TreeDamaged {
        chain,
        seq,
        why: why.into(),
    }
}

/// One chain's stored tree, for reading through [`Tiled`].
pub struct ChainTiles {
    chain: i32,
    oids: Oids,
    snap: pg_sys::Snapshot,
    /// Tiles at or below this many leaves may be trusted as stored
    /// without their records (`verify(checkpoint)` trusts only tiles of
    /// purged records); every stored tile when None.
    trust_below: Option<u64>,
    /// How many of the chain's first records a purge removed (its anchor's
    /// seq): their leaves are only in tiles.
    pub(crate) purged: u64,
    /// The widest level-0 tile stored at each index (a purge's partial one,
    /// or a complete one): where purged leaves are read.
    leaf_tiles: HashMap<u64, Option<Vec<Hash>>>,
    /// audit_log's own log, which keeps tiles; a collected source's has
    /// none here, and its tree is computed from its records.
    own_log: bool,
    /// Leaves computed from the records in the chain's incomplete last
    /// tile (index `tail.0`, set by [`ChainTiles::keep_tail`]'s caller):
    /// kept so that the tile can be stored without hashing them again.
    tail: Option<(u64, HashMap<u64, Hash>)>,
    /// Bytes of events hashed to compute leaves (a transaction read one
    /// segment at a time counts as [`crate::store::TX_BYTES_HELD`]).
    hashed_bytes: usize,
}

/// checkpoint() stores the leaves of a chain's incomplete last tile (a
/// level-0 tile narrower than 256) once computing them from the records
/// hashed this many bytes of events: the next checkpoint reads them from
/// it and hashes only the records after. Without it a table's owner could
/// make every checkpoint rehash the same large transactions until 255
/// more records follow them on their chains. One stored tile, at most
/// 8 kB, per 8 MB of events hashed.
const KEEP_TAIL_BYTES: usize = 8 << 20;

impl ChainTiles {
    pub(crate) fn new(chain: i32, oids: Oids, snap: pg_sys::Snapshot) -> Result<Self, AuditError> {
        let purged = select_at(
            snap,
            &format!(
                "SELECT seq FROM {}.anchors WHERE chain_id = $1",
                catalog::log_schema_sql()
            ),
            &[Arg::Int4(chain)],
        )?
        .first()
        .and_then(|r| r.first().and_then(Val::int))
        .map_or(0, |s| s.max(0) as u64);
        Ok(ChainTiles {
            chain,
            oids,
            snap,
            trust_below: None,
            purged,
            leaf_tiles: HashMap::new(),
            own_log: catalog::has_tiles(),
            tail: None,
            hashed_bytes: 0,
        })
    }

    /// Stored tiles narrower than 256 may stand for records that are still
    /// in the log: not in `verify(checkpoint)`, which trusts only the
    /// leaves of purged records.
    fn trusts_partial(&self) -> bool {
        self.own_log && self.trust_below.is_none()
    }

    /// Keep the leaves computed from records in the tile that holds leaf
    /// `size - 1`, if that tile is incomplete, for [`ChainTiles::keep_tail`].
    pub(crate) fn watch_tail(&mut self, size: u64) {
        self.tail = (!size.is_multiple_of(TILE_WIDTH) && self.trusts_partial())
            .then(|| (size / TILE_WIDTH, HashMap::new()));
    }

    /// Store the leaves of the chain's incomplete last tile (of a tree of
    /// `size` records) if computing them cost [`KEEP_TAIL_BYTES`] or more,
    /// and this transaction may write tiles. As the extension's owner; a
    /// chain whose tiles another transaction is integrating is left to it.
    pub(crate) fn keep_tail(&mut self, size: u64) -> Result<(), AuditError> {
        let t = size / TILE_WIDTH;
        if self.hashed_bytes < KEEP_TAIL_BYTES
            || self.tail.as_ref().is_none_or(|(tile, _)| *tile != t)
            || !integrates()
        {
            return Ok(());
        }
        let leaves = self.leaves(t * TILE_WIDTH, size)?;
        if !lock_chain_tiles(self.chain, false) {
            return Ok(());
        }
        let chain = self.chain;
        catalog::as_owner(|| insert_tiles(chain, 0, &[(t, &leaves, merkle::root(&leaves))]))?;
        pgrx::debug1!(
            "audit_log: stored the {} leaves of chain {chain}'s incomplete tile {t} ({} MB of events hashed)",
            leaves.len(),
            self.hashed_bytes >> 20
        );
        self.hashed_bytes = 0;
        Ok(())
    }

    fn trusted(&self, level: u32, t: u64) -> bool {
        // Where the tile ends, in leaves; past u64 for the top levels.
        let end = (u128::from(t) + 1) << (8 * (level + 1)).min(120);
        self.own_log && self.trust_below.is_none_or(|b| end <= u128::from(b))
    }

    /// The link hash of record `seq` of the chain, or of the anchor a purge
    /// left there; zero before the first.
    pub(crate) fn link_hash_at(&self, seq: i64) -> Result<Option<Hash>, AuditError> {
        if seq == 0 {
            return Ok(Some(ZERO_HASH));
        }
        let schema = catalog::log_schema_sql();
        let h = first_bytes(select_at(
            self.snap,
            &format!(
                "SELECT link_hash FROM {schema}.records WHERE chain_id = $1 AND seq = $2
                 UNION ALL
                 SELECT link_hash FROM {schema}.anchors WHERE chain_id = $1 AND seq = $2
                 LIMIT 1"
            ),
            &[Arg::Int4(self.chain), Arg::Int8(seq)],
        )?);
        Ok(h.map(|b| hash_of(Some(&b))))
    }

    /// Leaf hashes `lo..hi` from the records (seq `lo + 1 ..= hi`), each
    /// record's link checked against the one before.
    pub fn record_leaves(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, AuditError> {
        let keys = seq_range_keys(self.chain, lo as i64, hi as i64);
        let mut rows = Ordered::open_keys(
            self.oids.records,
            self.oids.records_pkey,
            self.snap,
            keys,
            leaf_row,
        )?;
        // The session reads (only it may call PostgreSQL): each record with
        // its segments and the stored hash before it, in batches; workers
        // hash, and their leaves come back in order.
        let chain = self.chain;
        let mut expect = lo as i64 + 1;
        let mut prev: Option<(i64, Hash)> = None;
        let mut failed: Option<AuditError> = None;
        let mut hashed = 0usize;
        let batches = std::iter::from_fn(|| {
            if failed.is_some() {
                return None;
            }
            let mut batch = Vec::with_capacity(LEAF_BATCH);
            let mut bytes = 0usize;
            while batch.len() < LEAF_BATCH && bytes < crate::records::BATCH_BYTES {
                let mut row = match rows.next() {
                    Some(Ok(row)) => row,
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    None => break,
                };
                let r = &row.record;
                let step = (|| -> Result<(), AuditError> {
                    if r.seq != expect {
                        return Err(damaged(chain, expect, "the record is missing"));
                    }
                    row.prev = match prev {
                        Some((s, h)) if s == r.seq - 1 => h,
                        _ => self
                            .link_hash_at(r.seq - 1)?
                            .ok_or_else(|| damaged(chain, r.seq, "its predecessor is missing"))?,
                    };
                    if row.segments != 0 {
                        match segments_or_summary(&self.oids, self.snap, r.base(), &row.payload)? {
                            Spilled::Whole(parts) => row.parts = parts,
                            Spilled::Streamed(d) => {
                                row.hashed = Some(d);
                                row.payload = Vec::new();
                                hashed += crate::store::TX_BYTES_HELD;
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = step {
                    failed = Some(e);
                    break;
                }
                prev = Some((row.record.seq, row.record.link_hash));
                expect += 1;
                bytes += row.weight();
                hashed += row.payload_len + row.parts.iter().map(Vec::len).sum::<usize>();
                batch.push(row);
                if batch.len() == LEAF_BATCH {
                    break;
                }
            }
            (!batch.is_empty()).then_some(Ok::<_, AuditError>(batch))
        });
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let hashed_ok = std::thread::scope(|scope| -> Result<(), AuditError> {
            let leaves = audit_log_core::parallel::map_ordered_bounded(
                scope,
                batches,
                crate::records::verify_threads(),
                crate::records::block_signals,
                |batch: Vec<LeafRow>| -> Vec<Result<Hash, (i64, &'static str)>> {
                    batch
                        .iter()
                        .map(|row| leaf_of(row).map_err(|why| (row.record.seq, why)))
                        .collect()
                },
                |batch: &Vec<LeafRow>| batch.iter().map(LeafRow::weight).sum(),
                crate::records::BATCH_BYTES,
            );
            for batch in leaves {
                for leaf in batch? {
                    out.push(leaf.map_err(|(seq, why)| damaged(chain, seq, why))?);
                }
            }
            Ok(())
        });
        self.hashed_bytes = self.hashed_bytes.saturating_add(hashed);
        if let Some(e) = failed {
            return Err(e);
        }
        hashed_ok?;
        Ok(out)
    }

    /// The widest level-0 tile stored at index `t`, whatever its width: a
    /// complete one, or the leaves a purge kept of the tile it cut through.
    fn leaf_tile(&mut self, t: u64) -> Result<Option<Vec<Hash>>, AuditError> {
        if let Some(p) = self.leaf_tiles.get(&t) {
            return Ok(p.clone());
        }
        if !self.own_log {
            return Ok(None);
        }
        let b = first_bytes(select_at(
            self.snap,
            "SELECT hashes FROM audit_log.tiles
              WHERE chain_id = $1 AND level = 0 AND idx = $2 AND length(hashes) = 32 * width
              ORDER BY width DESC LIMIT 1",
            &[Arg::Int4(self.chain), Arg::Int8(t as i64)],
        )?);
        let p = b.map(|b| split_hashes(&b));
        self.leaf_tiles.insert(t, p.clone());
        Ok(p)
    }
}

/// The first column of the first row, if it is bytes.
fn first_bytes(rows: Vec<Vec<Val>>) -> Option<Vec<u8>> {
    match rows.into_iter().next()?.into_iter().next()? {
        Val::Bytes(b) => Some(b),
        _ => None,
    }
}

/// A tile's hashes, 32 bytes each (a trailing partial hash is dropped).
fn split_hashes(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

impl TileSource for ChainTiles {
    type Error = AuditError;

    fn tile(&mut self, level: u32, t: u64) -> Result<Option<Vec<Hash>>, AuditError> {
        if !self.trusted(level, t) {
            return Ok(None);
        }
        let b = first_bytes(select_at(
            self.snap,
            "SELECT hashes FROM audit_log.tiles
              WHERE chain_id = $1 AND level = $2 AND idx = $3 AND width = 256",
            &[
                Arg::Int4(self.chain),
                Arg::Int4(level as i32),
                Arg::Int8(t as i64),
            ],
        )?);
        Ok(b.map(|b| split_hashes(&b))
            .filter(|h| h.len() == TILE_WIDTH as usize))
    }

    fn roots(&mut self, level: u32, lo: u64, hi: u64) -> Result<Vec<Option<Hash>>, AuditError> {
        let mut out = vec![None; (hi - lo) as usize];
        let rows = select_at(
            self.snap,
            "SELECT idx, root FROM audit_log.tiles
              WHERE chain_id = $1 AND level = $2 AND width = 256 AND idx >= $3 AND idx < $4",
            &[
                Arg::Int4(self.chain),
                Arg::Int4(level as i32),
                Arg::Int8(lo as i64),
                Arg::Int8(hi as i64),
            ],
        )?;
        for r in rows {
            let idx = r.first().and_then(Val::int).unwrap_or(-1);
            let root = r.get(1).and_then(Val::bytes);
            if idx >= lo as i64 && idx < hi as i64 && self.trusted(level, idx as u64) {
                if let Some(root) = root.filter(|b| b.len() == 32) {
                    out[(idx as u64 - lo) as usize] = Some(hash_of(Some(root)));
                }
            }
        }
        Ok(out)
    }

    fn leaves(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, AuditError> {
        let trust = self.trusts_partial();
        self.leaves_from(lo, hi, trust)
    }
}

impl ChainTiles {
    /// Leaves `lo..hi` (within one level-0 tile): those of purged records
    /// from the widest stored tile; with `partial`, the others too as far
    /// as that tile goes; then from the records.
    fn leaves_from(&mut self, lo: u64, hi: u64, partial: bool) -> Result<Vec<Hash>, AuditError> {
        let t = lo / TILE_WIDTH;
        let base = t * TILE_WIDTH;
        let mut out = Vec::new();
        let mut at = lo;
        // Leaves whose records a purge removed are only in a tile; where
        // partial tiles are trusted, a stored one spares hashing records.
        let purged_end = hi.min(self.purged);
        let from_tile = if partial { hi } else { purged_end };
        if at < from_tile {
            if let Some(p) = self.leaf_tile(t)? {
                while at < from_tile && ((at - base) as usize) < p.len() {
                    out.push(p[(at - base) as usize]);
                    at += 1;
                }
            }
            if at < purged_end {
                return Err(self.unavailable(at));
            }
        }
        let watched = match &mut self.tail {
            Some((tile, kept)) if *tile == t => Some(kept),
            _ => None,
        };
        if let Some(kept) = watched {
            while let Some(h) = (at < hi).then(|| kept.get(&at)).flatten() {
                out.push(*h);
                at += 1;
            }
        }
        if at < hi {
            let computed = self.all_record_leaves(at, hi)?;
            if let Some((tile, kept)) = &mut self.tail {
                if *tile == t {
                    kept.extend((at..).zip(computed.iter().copied()));
                }
            }
            out.extend(computed);
        }
        Ok(out)
    }
}

impl ChainTiles {
    /// Leaves `lo..hi` from the records, every one of them.
    fn all_record_leaves(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, AuditError> {
        let l = self.record_leaves(lo, hi)?;
        if l.len() as u64 != hi - lo {
            return Err(self.unavailable(lo + l.len() as u64));
        }
        Ok(l)
    }

    fn unavailable(&self, leaf: u64) -> AuditError {
        AuditError::TreeUnavailable {
            chain: self.chain,
            why: format!(
                "record {} is not in the log, and no tile holds its leaf \
                 (purged before this version of audit_log kept tree tiles?)",
                leaf + 1
            ),
        }
    }

    /// Leaves `lo..hi` across several level-0 tiles.
    fn leaves_run(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, AuditError> {
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let mut at = lo;
        // Tiles a purge cut through, one at a time; then the records. A
        // stored tile is read for purged leaves only: a tile integrated
        // here holds leaves recomputed from every record still in the log,
        // never a checkpoint's partial tile.
        while at < hi && at < self.purged {
            let end = hi.min((at / TILE_WIDTH + 1) * TILE_WIDTH);
            out.extend(self.leaves_from(at, end, false)?);
            at = end;
        }
        if at < hi {
            out.extend(self.all_record_leaves(at, hi)?);
        }
        Ok(out)
    }
}

fn concat(hashes: &[Hash]) -> Vec<u8> {
    hashes.iter().flatten().copied().collect()
}

/// How many complete tiles of `level` the chain has stored (they are
/// integrated in order, so the highest index plus one).
pub(crate) fn stored_tiles(
    snap: pg_sys::Snapshot,
    chain: i32,
    level: u32,
) -> Result<u64, AuditError> {
    let n = select_at(
        snap,
        "SELECT coalesce(max(idx) + 1, 0) FROM audit_log.tiles
          WHERE chain_id = $1 AND level = $2 AND width = 256",
        &[Arg::Int4(chain), Arg::Int4(level as i32)],
    )?
    .first()
    .and_then(|r| r.first().and_then(Val::int));
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Store tiles of one level, one statement for all of them: (index,
/// hashes, root) each.
pub(crate) fn insert_tiles(
    chain: i32,
    level: u32,
    tiles: &[(u64, &[Hash], Hash)],
) -> Result<(), AuditError> {
    if tiles.is_empty() {
        return Ok(());
    }
    let idx: Vec<i64> = tiles.iter().map(|t| t.0 as i64).collect();
    let width: Vec<i32> = tiles.iter().map(|t| t.1.len() as i32).collect();
    let hashes: Vec<Vec<u8>> = tiles.iter().map(|t| concat(t.1)).collect();
    let roots: Vec<Vec<u8>> = tiles.iter().map(|t| t.2.to_vec()).collect();
    Spi::run_with_args(
        "INSERT INTO audit_log.tiles (chain_id, level, idx, width, hashes, root)
         SELECT $1, $2, u.i, u.w, u.h, u.r
           FROM unnest($3::bigint[], $4::integer[], $5::bytea[], $6::bytea[]) AS u(i, w, h, r)
         ON CONFLICT DO NOTHING",
        &[
            chain.into(),
            (level as i32).into(),
            idx.into(),
            width.into(),
            hashes.into(),
            roots.into(),
        ],
    )?;
    Ok(())
}

/// Can this transaction write tiles? Not on a standby, nor in a read-only
/// transaction.
pub fn can_write() -> bool {
    // SAFETY: plain reads of transaction state.
    unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly }
}

/// Should this transaction integrate tiles? Not if it cannot write, nor at
/// REPEATABLE READ or above: its snapshot would miss tiles another session
/// committed since, and inserting them again would fail to serialize. The
/// trees are then read from the records (and the tiles there are).
fn integrates() -> bool {
    // SAFETY: a read of the transaction's isolation level.
    can_write() && unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32
}

/// Store every complete tile of the chain's first `size` leaves that is
/// not stored yet; with `partial_at`, also the leaves of the level-0 tile
/// that holds leaf `partial_at - 1` up to it (for a purge). As the
/// extension's owner. Returns the number of leaves integrated.
///
/// One transaction integrates a chain at a time: with `wait` (a purge,
/// which needs the tiles before it removes records) it waits for the
/// chain's lock; otherwise (checkpoint(), prove()) a chain another open
/// transaction is integrating is left to it, and its tree is read from the
/// records meanwhile, so an idle transaction blocks nobody.
pub fn integrate(
    chain: i32,
    size: u64,
    partial_at: Option<u64>,
    wait: bool,
) -> Result<u64, AuditError> {
    if !lock_chain_tiles(chain, wait) {
        return Ok(0);
    }
    catalog::as_owner(|| {
        let oids = catalog::lookup()?;
        // One snapshot for every read: tiles this call inserts are not in
        // it, so their roots are kept here for the level above.
        let snapshot = SnapshotGuard::fresh();
        let snap = snapshot.0;
        let mut src = ChainTiles::new(chain, oids, snap)?;
        let mut made: HashMap<(u32, u64), Hash> = HashMap::new();
        let mut done = 0u64;
        let from = stored_tiles(snap, chain, 0)?;
        let to = size / TILE_WIDTH;
        // Read the records in runs of tiles, not a scan per tile.
        let mut t = from;
        while t < to {
            let run_end = (t + 64).min(to);
            let leaves = src.leaves_run(t * TILE_WIDTH, run_end * TILE_WIDTH)?;
            let mut tiles = Vec::new();
            for (i, tile) in leaves.chunks_exact(TILE_WIDTH as usize).enumerate() {
                let root = merkle::root(tile);
                made.insert((0, t + i as u64), root);
                tiles.push((t + i as u64, tile, root));
                done += TILE_WIDTH;
            }
            insert_tiles(chain, 0, &tiles)?;
            t = run_end;
        }
        // Upper levels, from the roots of the level below.
        let mut level = 1u32;
        let mut below = to.max(from);
        while below >= TILE_WIDTH {
            let have = stored_tiles(snap, chain, level)?;
            for t in have..below / TILE_WIDTH {
                let (lo, hi) = (t * TILE_WIDTH, (t + 1) * TILE_WIDTH);
                let stored = src.roots(level - 1, lo, hi)?;
                let mut roots = Vec::with_capacity(TILE_WIDTH as usize);
                for (j, r) in (lo..hi).zip(stored) {
                    match r.or_else(|| made.get(&(level - 1, j)).copied()) {
                        Some(r) => roots.push(r),
                        None => {
                            return Err(damaged(
                                chain,
                                (j << (8 * level)) as i64 + 1,
                                format!("a tile of level {} is missing", level - 1),
                            ))
                        }
                    }
                }
                let root = merkle::root(&roots);
                insert_tiles(chain, level, &[(t, &roots, root)])?;
                made.insert((level, t), root);
            }
            below /= TILE_WIDTH;
            level += 1;
        }
        if let Some(p) = partial_at.filter(|p| p % TILE_WIDTH != 0) {
            let t = p / TILE_WIDTH;
            if t >= from.max(to) {
                let leaves = src.leaves_from(t * TILE_WIDTH, p, false)?;
                insert_tiles(chain, 0, &[(t, &leaves, merkle::root(&leaves))])?;
            }
        }
        Ok(done)
    })
}

/// The lock on integrating one chain's tiles, held to the end of the
/// transaction. False if `wait` is off and another holds it.
pub(crate) fn lock_chain_tiles(chain: i32, wait: bool) -> bool {
    crate::locks::LogLock::Tiles(chain).acquire(pg_sys::ExclusiveLock, wait)
}

/// Every chain's head seq, in chain order.
fn heads(snap: pg_sys::Snapshot) -> Result<Vec<(i32, i64)>, AuditError> {
    Ok(chain_seqs(select_at(
        snap,
        &crate::proof::heads_sql("audit_log"),
        &[],
    )?))
}

/// Rows of (chain_id, seq, …) as pairs.
fn chain_seqs(rows: Vec<Vec<Val>>) -> Vec<(i32, i64)> {
    rows.iter()
        .map(|r| {
            let c = r.first().and_then(Val::int).unwrap_or(-1) as i32;
            (c, r.get(1).and_then(Val::int).unwrap_or(0))
        })
        .collect()
}

/// BRIN ranges of the records' index (committed_at, first_event) filled
/// since the last call are summarized, so that prove() finds an event's
/// record by id in a few pages (autovacuum summarizes too, later). As the
/// owner. Not while another session holds a conflicting lock on the
/// records: autovacuum's VACUUM after a large load (which summarizes the
/// same ranges itself; waiting for it held up a checkpoint by 1.2 s), its
/// ANALYZE, or another checkpoint's summary. The next checkpoint catches up.
fn summarize_brin() -> Result<(), AuditError> {
    let records = catalog::lookup()?.records;
    let lock = pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: a conditional lock on the table, released below.
    if !unsafe { pg_sys::ConditionalLockRelationOid(records, lock) } {
        return Ok(());
    }
    let done = catalog::as_owner(|| {
        // The index prove() uses to find an event's record.
        Spi::run(
            "SELECT pg_catalog.brin_summarize_new_values('audit_log.records_committed_at_first_event_idx'::regclass)",
        )?;
        Ok(())
    });
    // SAFETY: the lock taken above (the summary took and released its own).
    unsafe { pg_sys::UnlockRelationOid(records, lock) };
    done
}

/// Integrate every chain up to its head, if this transaction may write.
pub fn integrate_all() -> Result<(), AuditError> {
    if !integrates() || !catalog::has_tiles() {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    summarize_brin()?;
    let t1 = std::time::Instant::now();
    let snapshot = SnapshotGuard::fresh();
    let heads = heads(snapshot.0)?;
    // A large backlog is read in one pass over the table; what that pass
    // leaves (upper levels, a chain it stopped on) the loop below does.
    let scanned = crate::tree_scan::integrate_by_scan(&heads)?;
    let mut leaves = scanned;
    for (chain, seq) in heads {
        match integrate(chain, seq.max(0) as u64, None, false) {
            Ok(n) => leaves += n,
            // A chain purged before tiles were kept has no tree; a damaged
            // one is left out of the checkpoint, with a warning (trees()).
            Err(AuditError::TreeUnavailable { .. } | AuditError::TreeDamaged { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if leaves > 0 {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        pgrx::debug1!(
            "audit_log: integrated {leaves} leaves ({scanned} by a sequential scan) in {:.1} ms, after summarizing the BRIN index in {:.1} ms",
            ms(t1.elapsed()),
            ms(t1 - t0)
        );
    }
    Ok(())
}

/// Each chain's tree at `heads`, for a checkpoint (own log only), read
/// under one snapshot. A chain purged before tiles were kept has none. Nor
/// has a chain with a damaged record: the checkpoint still names its head
/// (an export or a verify() of a tampered log needs one), and a witness
/// that held its tree refuses a checkpoint without it.
pub fn trees(
    heads: &[audit_log_core::ChainHead],
    snap: pg_sys::Snapshot,
) -> Result<Vec<TreeHead>, AuditError> {
    let mut out = Vec::new();
    // An older version's schema, not yet updated: checkpoints as it made them.
    if !catalog::has_tiles() {
        return Ok(out);
    }
    let oids = catalog::lookup()?;
    let mut hashed = 0usize;
    for h in heads {
        let size = h.seq.max(0) as u64;
        let root = ChainTiles::new(h.chain, oids, snap).and_then(|mut src| {
            src.watch_tail(size);
            let mut tiled = Tiled::new(src);
            let root = tree_root(&mut tiled, size)?;
            hashed = hashed.saturating_add(tiled.source.hashed_bytes);
            tiled.source.keep_tail(size)?;
            Ok(root)
        });
        match root {
            Ok(root) => out.push(TreeHead {
                chain: h.chain,
                size: h.seq,
                root,
            }),
            Err(AuditError::TreeUnavailable { .. }) => {}
            Err(e @ AuditError::TreeDamaged { .. }) => {
                pgrx::warning!("audit_log.checkpoint(): chain {} has no tree: {e}", h.chain);
            }
            Err(e) => return Err(e),
        }
    }
    pgrx::debug1!(
        "audit_log: the checkpoint's trees hashed {} kB of events",
        hashed >> 10
    );
    Ok(out)
}

/// The root of each of `cp`'s trees recomputed from the records, trusting
/// only tiles of records that a purge removed: for verify(checkpoint).
/// Returns (chain, recomputed root) for each tree whose root differs.
pub fn check_trees(cp: &Checkpoint) -> Result<Vec<(TreeHead, String)>, AuditError> {
    crate::retention::lock_purge_shared();
    let oids = catalog::lookup()?;
    let snapshot = SnapshotGuard::fresh();
    let mut bad = Vec::new();
    for want in &cp.trees {
        // A tree past the chain's head: the heads' check already says the
        // log was cut; no need to read the chain first.
        if want.size > head_of(snapshot.0, want.chain)? {
            continue;
        }
        let mut src = ChainTiles::new(want.chain, oids, snapshot.0)?;
        src.trust_below = Some(src.purged);
        let mut t = Tiled::new(src);
        match tree_root(&mut t, want.size.max(0) as u64) {
            Ok(root) if root == want.root => {}
            Ok(root) => bad.push((
                want.clone(),
                format!(
                    "chain {}'s first {} records have root {}, the checkpoint says {}",
                    want.chain,
                    want.size,
                    hex::encode(&root[..6]),
                    hex::encode(&want.root[..6])
                ),
            )),
            // Purged records whose leaves no tile here holds (a purge before
            // tiles were kept, or a collected source's): that tree cannot be
            // checked, which says nothing of a rewrite.
            Err(AuditError::TreeUnavailable { .. }) => {}
            Err(e) => bad.push((want.clone(), e.to_string())),
        }
    }
    Ok(bad)
}

/// The records whose id range holds `id`, newest first, found through the
/// BRIN index (its first_event column) with a widening window. Ranges
/// overlap (ids of concurrent transactions interleave), so each candidate
/// is looked in.
fn candidates(snap: pg_sys::Snapshot, id: i64, lo: i64) -> Result<Vec<(i32, i64)>, AuditError> {
    // Without statistics (a log never analyzed) the planner would scan the
    // whole log rather than use the BRIN index. Unwound with pinned()'s level.
    catalog::set_in_nest_level(c"enable_seqscan", c"off");
    Ok(chain_seqs(select_at(
        snap,
        "SELECT chain_id, seq FROM audit_log.records
          WHERE first_event BETWEEN $2 AND $1 AND last_event >= $1
          ORDER BY first_event DESC",
        &[Arg::Int8(id), Arg::Int8(lo)],
    )?))
}

/// A record read for a proof: its columns, its events' root (its segments
/// merged with its payload, read one segment at a time) and, when one event
/// was asked for, every event's hash and that event's canonical encoding
/// with its tx_seq, if it holds it: its bytes as stored (a canonical
/// encoding, or a packed frame), and whether they are packed.
struct Whole {
    record: Record,
    events_root: Hash,
    hashes: Vec<Hash>,
    event: Option<(i64, Vec<u8>, bool)>,
}

/// Record `seq` of `chain`: its columns, how many segments it has, and its
/// payload; None if there is no such record.
pub(crate) fn record_at(
    oids: &Oids,
    snap: pg_sys::Snapshot,
    chain: i32,
    seq: i64,
) -> Result<Option<(Record, i32, Vec<u8>)>, AuditError> {
    let mut rows = Ordered::open_keys(
        oids.records,
        oids.records_pkey,
        snap,
        scan_keys(&[
            (
                records::CHAIN_ID as i16 + 1,
                pg_sys::BTEqualStrategyNumber,
                pg_sys::F_INT4EQ,
                pg_sys::Datum::from(chain),
            ),
            (
                records::SEQ as i16 + 1,
                pg_sys::BTEqualStrategyNumber,
                pg_sys::F_INT8EQ,
                pg_sys::Datum::from(seq),
            ),
        ]),
        raw_row,
    )?;
    rows.next().transpose()
}

fn read_whole(
    oids: Oids,
    snap: pg_sys::Snapshot,
    chain: i32,
    seq: i64,
    want: Option<i64>,
) -> Result<Option<Whole>, AuditError> {
    let Some((record, segments, payload)) = record_at(&oids, snap, chain, seq)? else {
        return Ok(None);
    };
    let parts = (segments != 0)
        .then(|| crate::store::segments(&oids, snap, record.first_event))
        .transpose()?;
    let mut hashes = Vec::new();
    let mut tree = merkle::Builder::default();
    let mut event = None;
    let mut unreadable = false;
    let mut prev = ZERO_HASH;
    let base = record.base();
    audit_log_core::record::for_each_merged(parts.into_iter().flatten(), &payload, |e| {
        let Ok(e) = e else {
            unreadable = true;
            return ControlFlow::Break(());
        };
        prev = e.hash(&prev, base);
        tree.push(merkle::leaf_hash(&prev));
        if want.is_some() {
            hashes.push(prev);
        }
        if event.is_none() && want.is_some() && e.header(base).is_ok_and(|h| Some(h.id) == want) {
            // The proof shows it as its record stores it.
            event = Some(match e {
                Framed::V1(c) => (tree.size() as i64, c.to_vec(), false),
                Framed::V2(f) => (tree.size() as i64, f.to_bytes(), true),
            });
        }
        ControlFlow::Continue(())
    })?;
    if unreadable {
        return Err(damaged(chain, seq, "its payload is unreadable"));
    }
    Ok(Some(Whole {
        record,
        events_root: tree.root(),
        hashes,
        event,
    }))
}

/// The record that holds event `id`, and the event's tx_seq.
fn find_event(
    oids: Oids,
    snap: pg_sys::Snapshot,
    id: i64,
) -> Result<Option<(Whole, i64)>, AuditError> {
    let mut seen = std::collections::HashSet::new();
    for window in [1i64 << 10, 1 << 20, 1 << 30, i64::MAX] {
        let lo = id.saturating_sub(window);
        for (chain, seq) in candidates(snap, id, lo)? {
            if !seen.insert((chain, seq)) {
                continue;
            }
            let Some(w) = read_whole(oids, snap, chain, seq, Some(id))? else {
                continue;
            };
            if let Some(tx_seq) = w.event.as_ref().map(|(tx_seq, _, _)| *tx_seq) {
                return Ok(Some((w, tx_seq)));
            }
        }
        if lo == i64::MIN {
            break;
        }
    }
    Ok(None)
}

/// Is `id`, which no record holds, older than what purge() left? Ids of
/// concurrent transactions interleave, so an anchor's last event is not a
/// bound: an id below the first event of a chain's first remaining record
/// is taken as purged too (or it was never committed).
fn purged_event(snap: pg_sys::Snapshot, id: i64) -> Result<bool, AuditError> {
    let anchors = select_at(
        snap,
        "SELECT a.last_event, r.first_event FROM audit_log.anchors a
           LEFT JOIN audit_log.records r ON r.chain_id = a.chain_id AND r.seq = a.seq + 1",
        &[],
    )?;
    Ok(anchors.iter().any(|r| {
        r.first().and_then(Val::int).is_some_and(|last| id <= last)
            || r.get(1).and_then(Val::int).is_some_and(|next| id < next)
    }))
}

/// Proofs are for auditors, and need the tiles of this version's schema.
fn may_prove(action: &str) -> Result<(), AuditError> {
    if !catalog::current_user_has(c"audit_log_auditor") {
        return Err(AuditError::NotAuditor {
            action: action.into(),
        });
    }
    if !catalog::has_tiles() {
        return Err(AuditError::NotInstalled(
            "audit_log.tiles (run ALTER EXTENSION audit_log UPDATE)".into(),
        ));
    }
    Ok(())
}

/// prove(): the proof of one event, to the tree of `cp` if given, or to
/// the chain's current tree.
fn prove_impl(event_id: i64, cp: Option<Checkpoint>) -> Result<JsonB, AuditError> {
    may_prove("prove an event")?;
    // No purge runs meanwhile: what this reads stays (the snapshots below
    // are taken after the lock).
    crate::retention::lock_purge_shared();
    let oids = catalog::lookup()?;
    let found = {
        let snapshot = SnapshotGuard::fresh();
        match find_event(oids, snapshot.0, event_id)? {
            Some(f) => f,
            None => {
                return Err(if purged_event(snapshot.0, event_id)? {
                    AuditError::EventPurged(event_id)
                } else {
                    AuditError::NoSuchEvent(event_id)
                })
            }
        }
    };
    let (whole, tx_seq) = found;
    let (chain, seq) = (whole.record.chain_id, whole.record.seq);
    // To the current tree: its new records join the tiles first.
    if cp.is_none() && integrates() {
        integrate_chain(chain)?;
    }
    // One snapshot from here on, which sees those tiles.
    let snapshot = SnapshotGuard::fresh();
    let head = head_of(snapshot.0, chain)?;
    let size = match &cp {
        Some(cp) => {
            let t = cp.trees.iter().find(|t| t.chain == chain).ok_or_else(|| {
                AuditError::BadCheckpoint(format!(
                    "it has no tree for chain {chain}, which holds event {event_id} \
                     (a checkpoint of format v1, or of another database)"
                ))
            })?;
            if t.size < seq {
                return Err(AuditError::BadCheckpoint(format!(
                    "event {event_id} was recorded after it (record {seq} of chain {chain}; \
                     the checkpoint has {} records); take a new checkpoint",
                    t.size
                )));
            }
            if t.size > head {
                return Err(AuditError::BadCheckpoint(format!(
                    "chain {chain} has {head} records here, the checkpoint has {}: it is ahead \
                     of this log (a checkpoint of another database, or this log was cut; \
                     audit_log.verify(checkpoint) tells which)",
                    t.size
                )));
            }
            t.size
        }
        None => head,
    };
    let mut tiles = Tiled::new(ChainTiles::new(chain, oids, snapshot.0)?);
    let root = tree_root(&mut tiles, size as u64)?;
    if let Some(t) = cp
        .as_ref()
        .and_then(|cp| cp.trees.iter().find(|t| t.chain == chain))
    {
        if t.root != root {
            return Err(root_mismatch(chain, size, &root, &t.root));
        }
    }
    let path = inclusion_path(&mut tiles, (seq - 1) as u64, size as u64)?
        .ok_or_else(|| AuditError::Internal("record outside its tree".into()))?;
    let src = &mut tiles.source;
    let r = &whole.record;
    let hashes = &whole.hashes;
    let (bytes, packed) = whole
        .event
        .as_ref()
        .map(|(_, e, p)| (e.as_slice(), *p))
        .ok_or_else(|| AuditError::Internal("the event left its record".into()))?;
    let prev_link_hash = src
        .link_hash_at(seq - 1)?
        .ok_or_else(|| damaged(chain, seq, "its predecessor is missing"))?;
    let record = ProvenRecord {
        chain,
        seq,
        tx_id: r.tx_id,
        first_event: r.first_event,
        last_event: r.last_event,
        event_count: r.event_count,
        committed_at: r.committed_at,
        prev_link_hash,
        last_event_hash: hashes.last().copied().unwrap_or(ZERO_HASH),
        link_hash: r.link_hash,
    };
    let tree = TreeHead { chain, size, root };
    let proof = core_tree::prove_event(
        Some(catalog::database_name()),
        record,
        hashes,
        &match packed {
            false => Framed::V1(bytes),
            true => audit_log_core::encoding::packed::frame_at(bytes, 0)
                .map(|(f, _)| Framed::V2(f))
                .map_err(|_| AuditError::Internal("the event left its record".into()))?,
        },
        tx_seq,
        tree,
        path,
    )
    .ok_or_else(|| AuditError::Internal("event outside its record".into()))?;
    // What the server hands out must verify: a damaged record or tile
    // fails here, not at the auditor's.
    proof
        .check()
        .map_err(|e| damaged(chain, seq, format!("its proof does not hold: {e}")))?;
    let value = serde_json::to_value(&proof).map_err(|e| AuditError::Internal(e.to_string()))?;
    Ok(JsonB(value))
}

fn raw_row(r: &Row) -> Option<(Record, i32, Vec<u8>)> {
    Some((
        crate::records::record_columns(r),
        r.i32(records::SEGMENTS).unwrap_or(0),
        r.slice(records::PAYLOAD).unwrap_or_default().to_vec(),
    ))
}

/// The stored tree's root for `size` records is not the checkpoint's: a
/// damaged tile if the records give the checkpoint's root, otherwise a
/// checkpoint of another log (or this one rewritten).
fn root_mismatch(chain: i32, size: i64, here: &Hash, there: &Hash) -> AuditError {
    let from_records = || -> Result<Hash, AuditError> {
        let oids = catalog::lookup()?;
        let snapshot = SnapshotGuard::fresh();
        let mut src = ChainTiles::new(chain, oids, snapshot.0)?;
        src.trust_below = Some(src.purged);
        tree_root(&mut Tiled::new(src), size.max(0) as u64)
    };
    match from_records() {
        Ok(r) if r == *there => damaged(
            chain,
            size,
            "a stored tile of its tree is damaged: the records give the checkpoint's root",
        ),
        _ => not_this_log(chain, size, here, there),
    }
}

fn not_this_log(chain: i32, size: i64, here: &Hash, there: &Hash) -> AuditError {
    AuditError::BadCheckpoint(format!(
        "chain {chain}'s first {size} records have root {} here, the checkpoint says {}: \
         a checkpoint of another database, or this log was rewritten since \
         (audit_log.verify(checkpoint) tells which)",
        hex::encode(&here[..8]),
        hex::encode(&there[..8])
    ))
}

/// The chain's head seq under `snap`: one probe of the primary key.
fn head_of(snap: pg_sys::Snapshot, chain: i32) -> Result<i64, AuditError> {
    Ok(select_at(
        snap,
        "SELECT seq FROM audit_log.records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",
        &[Arg::Int4(chain)],
    )?
    .first()
    .and_then(|r| r.first().and_then(Val::int))
    .unwrap_or(0))
}

fn integrate_chain(chain: i32) -> Result<(), AuditError> {
    let size = head_of(SnapshotGuard::fresh().0, chain)?;
    integrate(chain, size.max(0) as u64, None, false)?;
    Ok(())
}

/// consistency(): the current checkpoint, and for each tree of `old`, the
/// proof that the current one extends it.
fn consistency_impl(old: Checkpoint) -> Result<JsonB, AuditError> {
    may_prove("prove consistency")?;
    if old.trees.is_empty() {
        return Err(AuditError::BadCheckpoint(
            "it has no trees (format v1): verify against it with audit_log.verify(checkpoint)"
                .into(),
        ));
    }
    let new = crate::proof::take_checkpoint()?;
    let oids = catalog::lookup()?;
    let snapshot = SnapshotGuard::fresh();
    let mut proofs = Vec::new();
    for o in &old.trees {
        let Some(n) = new.trees.iter().find(|t| t.chain == o.chain) else {
            // The chain is here but has no tree (checkpoint() warned why):
            // say why, not that the checkpoint is another log's.
            if let Some(h) = new.chains.iter().find(|h| h.chain == o.chain) {
                let mut tiles = Tiled::new(ChainTiles::new(o.chain, oids, snapshot.0)?);
                tree_root(&mut tiles, h.seq.max(0) as u64)?;
                return Err(AuditError::TreeUnavailable {
                    chain: o.chain,
                    why: "the current checkpoint has none".into(),
                });
            }
            return Err(AuditError::BadCheckpoint(format!(
                "chain {} is not in this log (a checkpoint of another database?)",
                o.chain
            )));
        };
        if n.size < o.size {
            return Err(AuditError::BadCheckpoint(format!(
                "chain {} has {} records here, the checkpoint has {}: it is ahead of this log \
                 (a checkpoint of another database, or this log was cut; \
                 audit_log.verify(checkpoint) tells which)",
                o.chain, n.size, o.size
            )));
        }
        let mut tiles = Tiled::new(ChainTiles::new(o.chain, oids, snapshot.0)?);
        // The old head's record (or the anchor there) still has the head's
        // link hash: a chain recomputed since, whose old records the tiles
        // still hold, is refused here, not signed by a witness.
        if let Some(h) = old.chains.iter().find(|h| h.chain == o.chain) {
            if let Some(now) = tiles.source.link_hash_at(h.seq)? {
                if now != h.link_hash {
                    return Err(AuditError::BadCheckpoint(format!(
                        "chain {}'s record {} has link hash {} here, the checkpoint's head {}: \
                         a checkpoint of another database, or this chain was rewritten since \
                         (audit_log.verify(checkpoint) tells which)",
                        o.chain,
                        h.seq,
                        hex::encode(&now[..8]),
                        hex::encode(&h.link_hash[..8])
                    )));
                }
            }
        }
        let old_root = tree_root(&mut tiles, o.size as u64)?;
        if old_root != o.root {
            return Err(root_mismatch(o.chain, o.size, &old_root, &o.root));
        }
        let path = consistency_path(&mut tiles, o.size as u64, n.size as u64)?
            .ok_or_else(|| AuditError::Internal("consistency outside the tree".into()))?;
        proofs.push(ChainConsistency {
            chain: o.chain,
            old_size: o.size,
            new_size: n.size,
            path,
        });
    }
    if let Some(h) = new
        .chains
        .iter()
        .find(|h| !new.trees.iter().any(|t| t.chain == h.chain))
    {
        return Err(AuditError::TreeUnavailable {
            chain: h.chain,
            why: "the new checkpoint has no tree for it (a damaged record, which \
                  checkpoint() warned of, or records purged before trees were kept); \
                  verify the log in full"
                .into(),
        });
    }
    // Each new head is the last leaf of its tree: its events root, and the
    // path of that leaf, so that a witness checks the heads it signs.
    let mut heads = Vec::new();
    for t in &new.trees {
        let whole = read_whole(oids, snapshot.0, t.chain, t.size, None)?
            .ok_or_else(|| damaged(t.chain, t.size, "the head record is missing"))?;
        let mut tiles = Tiled::new(ChainTiles::new(t.chain, oids, snapshot.0)?);
        let path = inclusion_path(&mut tiles, (t.size - 1) as u64, t.size as u64)?
            .ok_or_else(|| AuditError::Internal("head outside its tree".into()))?;
        heads.push(HeadLeaf {
            chain: t.chain,
            events_root: whole.events_root,
            path,
        });
    }
    let c = Consistency {
        format: CONSISTENCY_FORMAT.into(),
        checkpoint: new,
        proofs,
        heads,
    };
    // As prove(): hand out only what verifies.
    c.verify(&old)
        .map_err(|e| AuditError::Internal(format!("a consistency proof does not hold: {e}")))?;
    let value = serde_json::to_value(&c).map_err(|e| AuditError::Internal(e.to_string()))?;
    Ok(JsonB(value))
}

/// The proof that one event is in the log, against a checkpoint.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."prove"("event_id" bigint, "checkpoint" jsonb DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.prove(bigint, jsonb) IS 'An inclusion proof of one event: the event, its record, and O(log n) hashes up to its chain''s Merkle root in the given checkpoint (or the current tree). It reveals that event and hashes only. audit-log verify-proof checks it offline against a signed checkpoint. Requires audit_log_auditor.';
"#)]
fn prove(event_id: Option<i64>, checkpoint: Option<&[u8]>) -> Result<JsonB, ErrorReport> {
    let event_id = event_id.ok_or(AuditError::NullArgument("event_id"))?;
    let cp = match checkpoint {
        Some(_) => Some(crate::proof::parse_checkpoint(checkpoint)?),
        None => None,
    };
    Ok(catalog::pinned(|| prove_impl(event_id, cp))?)
}

/// Consistency proofs from an older checkpoint to now.
#[pg_extern(sql = r#"
CREATE FUNCTION audit_log."consistency"("old" jsonb) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION audit_log.consistency(jsonb) IS 'A new checkpoint, and for each chain of an older checkpoint (format v2) the RFC 9162 consistency proof that the chain''s tree now extends the old one: O(chains x log n) hashes instead of a full verify. Requires audit_log_auditor.';
"#)]
fn consistency(old: Option<&[u8]>) -> Result<JsonB, ErrorReport> {
    let old = crate::proof::parse_checkpoint(old)?;
    Ok(catalog::pinned(|| consistency_impl(old))?)
}

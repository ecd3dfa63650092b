//! A chain's Merkle tree (RFC 9162 hashing, [`crate::merkle`]), how it is
//! stored in tiles, and the proofs read from it (docs/FORMAT.md, "Merkle
//! trees").
//!
//! Each chain has one tree. Its leaf `seq - 1` is the record with that `seq`:
//! `leaf_hash("audit_log:leaf:v1" 0x00 || link_hash || events_root)`, where
//! `events_root` is the MTH of the transaction's event hashes (each a leaf,
//! in `tx_seq` order). The link hash binds the record's columns and the
//! chain before it; the events' own tree lets one event be proven with
//! hashes of the others, never their contents.
//!
//! A tree is stored as tiles, as transparency logs store theirs: a tile of
//! level `L` and index `t` holds the 256 hashes of the complete subtrees of
//! height `8L` with indices `256t .. 256t + 255` (level 0: leaf hashes), and
//! its root, which is entry `t` of level `L + 1`. Only complete tiles are
//! stored, with one exception: a purge keeps the leaf hashes of the level-0
//! tile it cuts through, since their records are gone.

use std::collections::HashMap;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::encoding::decode::Malformed;
use crate::hash::{Hash, ZERO_HASH};
use crate::merkle::{self, leaf_hash, root_from_inclusion, Subtrees};
use crate::model::{hex_hash, Checkpoint, Event, TreeHead};
use crate::record::{decode_framed, for_each_merged, header, merged, Base, Framed, Record};

pub const LEAF_TAG: &[u8] = b"audit_log:leaf:v1\0";
/// Height of a tile: 256 hashes.
pub const TILE_HEIGHT: u32 = 8;
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
pub const PROOF_FORMAT: &str = "audit_log.proof.v1";
pub const CONSISTENCY_FORMAT: &str = "audit_log.consistency.v1";

/// The MTH of a transaction's event hashes, each taken as a leaf's data.
pub fn events_root(event_hashes: &[Hash]) -> Hash {
    let leaves: Vec<Hash> = event_hashes.iter().map(|h| leaf_hash(h)).collect();
    merkle::root(&leaves)
}

/// A record's leaf hash.
pub fn record_leaf(link_hash: &Hash, events_root: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(LEAF_TAG);
    h.update(link_hash);
    h.update(events_root);
    h.finalize().into()
}

/// The hashes of a transaction's events (segments merged with the
/// payload), chained from zero.
pub fn event_hashes<'a>(
    segments: impl IntoIterator<Item = &'a [u8]>,
    payload: &'a [u8],
    base: Base,
) -> Result<Vec<Hash>, Malformed> {
    let mut prev = ZERO_HASH;
    let mut out = Vec::new();
    for e in merged(segments, payload) {
        prev = e?.hash(&prev, base);
        out.push(prev);
    }
    Ok(out)
}

/// What a record's leaf needs of its transaction's events: their number,
/// the last one's hash and their [`events_root`].
pub type EventsSummary = (usize, Hash, Hash);

/// The [`EventsSummary`] of a list of event hashes.
pub fn summary(event_hashes: &[Hash]) -> EventsSummary {
    (
        event_hashes.len(),
        event_hashes.last().copied().unwrap_or(ZERO_HASH),
        events_root(event_hashes),
    )
}

/// The [`EventsSummary`] of a transaction whose segments come one at a time
/// (see [`for_each_merged`]), holding one segment and a hash per level of
/// the events' tree instead of every event's hash; `Ok(Err(_))` if its
/// events are not a sequence of events.
pub fn summary_streamed<E>(
    segments: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    payload: &[u8],
    base: Base,
) -> Result<Result<EventsSummary, Malformed>, E> {
    let mut prev = ZERO_HASH;
    let mut tree = merkle::Builder::default();
    let mut bad = None;
    for_each_merged(segments, payload, |e| match e {
        Ok(e) => {
            prev = e.hash(&prev, base);
            tree.push(leaf_hash(&prev));
            ControlFlow::Continue(())
        }
        Err(m) => {
            bad = Some(m);
            ControlFlow::Break(())
        }
    })?;
    Ok(match bad {
        Some(m) => Err(m),
        None => Ok((tree.size() as usize, prev, tree.root())),
    })
}

/// Where a stored tree's hashes come from. Every call is for one chain.
pub trait TileSource {
    type Error;
    /// The stored complete tile (`level`, `index`): its 256 hashes.
    fn tile(&mut self, level: u32, index: u64) -> Result<Option<Vec<Hash>>, Self::Error>;
    /// The stored roots of the complete tiles `lo..hi` of `level`, in order;
    /// None for each tile that is not stored.
    fn roots(&mut self, level: u32, lo: u64, hi: u64) -> Result<Vec<Option<Hash>>, Self::Error>;
    /// Leaf hashes `lo..hi` (all within one level-0 tile), from the records
    /// or from a purge's partial tile.
    fn leaves(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, Self::Error>;
}

/// A stored tree read as [`Subtrees`]: each subtree from its tile if that
/// is stored, or from the level below (down to the records). Tiles read
/// once are kept for the life of the value.
pub struct Tiled<T: TileSource> {
    pub source: T,
    tiles: HashMap<(u32, u64), Option<Vec<Hash>>>,
    subtrees: HashMap<(u32, u64), Hash>,
}

impl<T: TileSource> Tiled<T> {
    pub fn new(source: T) -> Self {
        Tiled {
            source,
            tiles: HashMap::new(),
            subtrees: HashMap::new(),
        }
    }

    /// Entries `lo..hi` of level `level` (all within one tile): the roots
    /// of complete subtrees of height `8 * level`.
    fn entries(&mut self, level: u32, lo: u64, hi: u64) -> Result<Vec<Hash>, T::Error> {
        let t = lo / TILE_WIDTH;
        let key = (level, t);
        if !self.tiles.contains_key(&key) {
            let tile = self.source.tile(level, t)?;
            self.tiles.insert(key, tile);
        }
        let base = t * TILE_WIDTH;
        // A tile shorter than it should be counts as not stored.
        if let Some(part) = self
            .tiles
            .get(&key)
            .and_then(Option::as_ref)
            .and_then(|tile| tile.get((lo - base) as usize..(hi - base) as usize))
        {
            return Ok(part.to_vec());
        }
        if level == 0 {
            return self.source.leaves(lo, hi);
        }
        let stored = self.source.roots(level - 1, lo, hi)?;
        let mut out = Vec::with_capacity(stored.len());
        for (j, r) in (lo..hi).zip(stored) {
            out.push(match r {
                Some(r) => r,
                None => self.subtree(TILE_HEIGHT * level, j)?,
            });
        }
        Ok(out)
    }
}

impl<T: TileSource> Subtrees for Tiled<T> {
    type Error = T::Error;
    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, T::Error> {
        if let Some(h) = self.subtrees.get(&(height, index)) {
            return Ok(*h);
        }
        let level = height / TILE_HEIGHT;
        let rest = height % TILE_HEIGHT;
        let (lo, hi, level) = if rest == 0 && level > 0 {
            // The root of one tile of the level below, stored or computed.
            if let Some(Some(r)) = self.source.roots(level - 1, index, index + 1)?.first() {
                self.subtrees.insert((height, index), *r);
                return Ok(*r);
            }
            (index * TILE_WIDTH, (index + 1) * TILE_WIDTH, level - 1)
        } else {
            (index << rest, (index + 1) << rest, level)
        };
        let e = self.entries(level, lo, hi)?;
        let r = merkle::root(&e);
        self.subtrees.insert((height, index), r);
        Ok(r)
    }
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the proof is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("proof format \"{0}\" is not supported; expected \"{PROOF_FORMAT}\"")]
    UnsupportedFormat(String),
    #[error("the checkpoint has no tree for chain {0}")]
    NoTree(i32),
    #[error("the proof is for chain {chain}'s tree of {proof} records, the checkpoint's has {checkpoint}; ask audit_log.prove(event, checkpoint) for a proof to this checkpoint")]
    OtherSize {
        chain: i32,
        proof: i64,
        checkpoint: i64,
    },
    #[error("the proof does not hold: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> ProofError {
    ProofError::Invalid(why.into())
}

/// A record as a proof shows it: its columns and the two hashes its link
/// hash needs, never its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenRecord {
    pub chain: i32,
    pub seq: i64,
    pub tx_id: u64,
    pub first_event: i64,
    pub last_event: i64,
    pub event_count: i64,
    /// Microseconds since the Unix epoch, UTC.
    pub committed_at: i64,
    #[serde(with = "hex_hash")]
    pub prev_link_hash: Hash,
    #[serde(with = "hex_hash")]
    pub last_event_hash: Hash,
    #[serde(with = "hex_hash")]
    pub link_hash: Hash,
}

/// An inclusion proof of one event (`audit_log.prove()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventProof {
    pub format: String,
    #[serde(default)]
    pub database: Option<String>,
    pub event_id: i64,
    /// The event as its record stores it, in hex: its canonical encoding
    /// (version 1), or its packed frame (version 2).
    pub event: String,
    /// Which rule hashes the event (docs/FORMAT.md): 1 or 2, as `event`
    /// holds it. Absent in a proof of a version 1 event.
    #[serde(default = "version_1", skip_serializing_if = "is_version_1")]
    pub event_hash_version: u8,
    #[serde(with = "hex_hash")]
    pub prev_event_hash: Hash,
    /// The event's inclusion path in its transaction's events tree.
    #[serde(with = "hex_list")]
    pub event_path: Vec<Hash>,
    pub record: ProvenRecord,
    pub tree: TreeHead,
    /// The record's inclusion path in its chain's tree.
    #[serde(with = "hex_list")]
    pub path: Vec<Hash>,
}

fn version_1() -> u8 {
    1
}

fn is_version_1(v: &u8) -> bool {
    *v == 1
}

impl EventProof {
    pub fn parse(value: &serde_json::Value) -> Result<EventProof, ProofError> {
        let p: EventProof = serde_json::from_value(value.clone())
            .map_err(|e| ProofError::Malformed(e.to_string()))?;
        if p.format != PROOF_FORMAT {
            return Err(ProofError::UnsupportedFormat(p.format));
        }
        Ok(p)
    }

    /// Check the proof on its own: the event is in the record, the record
    /// is leaf `seq - 1` of the tree the proof names. The event, decoded.
    pub fn check(&self) -> Result<Event, ProofError> {
        let r = &self.record;
        let bytes = hex::decode(&self.event).map_err(|e| invalid(format!("event: {e}")))?;
        let unreadable = || invalid("the event's encoding is unreadable");
        let base = Base {
            first_event: r.first_event,
            tx_id: r.tx_id,
        };
        let framed = match self.event_hash_version {
            1 => Framed::V1(&bytes),
            2 => match crate::encoding::packed::frame_at(&bytes, 0) {
                Ok((f, end)) if end == bytes.len() => Framed::V2(f),
                _ => return Err(unreadable()),
            },
            v => return Err(invalid(format!("event_hash_version {v} is not 1 or 2"))),
        };
        let ev = decode_framed(&framed, base, self.prev_event_hash).map_err(|_| unreadable())?;
        let canonical = framed.canonical(base).map_err(|_| unreadable())?;
        let bytes = canonical.as_ref();
        let h = header(bytes).map_err(|_| unreadable())?;
        if h.id != self.event_id {
            return Err(invalid(format!(
                "the encoded event is {}, not {}",
                h.id, self.event_id
            )));
        }
        if h.tx_id != r.tx_id || h.id < r.first_event || h.id > r.last_event {
            return Err(invalid("the event is not one of the record's"));
        }
        if h.tx_seq < 1 || h.tx_seq > r.event_count {
            return Err(invalid(format!(
                "tx_seq {} is outside the record's {} events",
                h.tx_seq, r.event_count
            )));
        }
        if (h.tx_seq == 1) != (self.prev_event_hash == ZERO_HASH) {
            return Err(invalid("prev_event_hash is zero exactly for tx_seq 1"));
        }
        if h.tx_seq == r.event_count && ev.hash != r.last_event_hash {
            return Err(invalid("the last event's hash is not last_event_hash"));
        }
        let events_root = root_from_inclusion(
            (h.tx_seq - 1) as u64,
            r.event_count as u64,
            &leaf_hash(&ev.hash),
            &self.event_path,
        )
        .ok_or_else(|| invalid("event_path has the wrong length"))?;
        if (r.seq == 1) != (r.prev_link_hash == ZERO_HASH) {
            return Err(invalid("prev_link_hash is zero exactly for seq 1"));
        }
        let rec = Record {
            chain_id: r.chain,
            seq: r.seq,
            tx_id: r.tx_id,
            first_event: r.first_event,
            last_event: r.last_event,
            event_count: r.event_count,
            committed_at: r.committed_at,
            link_hash: r.link_hash,
        };
        if rec.link(r.prev_link_hash, r.last_event_hash).link_hash != r.link_hash {
            return Err(invalid("the record's link hash does not recompute"));
        }
        if self.tree.chain != r.chain || r.seq < 1 || r.seq > self.tree.size {
            return Err(invalid("the record is not a leaf of the proof's tree"));
        }
        let root = root_from_inclusion(
            (r.seq - 1) as u64,
            self.tree.size as u64,
            &record_leaf(&r.link_hash, &events_root),
            &self.path,
        )
        .ok_or_else(|| invalid("path has the wrong length"))?;
        if root != self.tree.root {
            return Err(invalid("the path does not lead to the tree's root"));
        }
        Ok(ev)
    }

    /// [`check`](Self::check), and the tree is the checkpoint's.
    pub fn verify(&self, cp: &Checkpoint) -> Result<Event, ProofError> {
        let ev = self.check()?;
        let t = cp
            .trees
            .iter()
            .find(|t| t.chain == self.tree.chain)
            .ok_or(ProofError::NoTree(self.tree.chain))?;
        if t.size != self.tree.size {
            return Err(ProofError::OtherSize {
                chain: t.chain,
                proof: self.tree.size,
                checkpoint: t.size,
            });
        }
        if t.root != self.tree.root {
            return Err(invalid(format!(
                "chain {}'s root is not the checkpoint's",
                t.chain
            )));
        }
        Ok(ev)
    }
}

/// The proof of event `tx_seq` (1-based) of `record`, whose events have
/// `event_hashes` and whose leaf is at `path` in `tree`. None if `tx_seq`
/// is not one of its events.
pub fn prove_event(
    database: Option<String>,
    record: ProvenRecord,
    event_hashes: &[Hash],
    event: &Framed,
    tx_seq: i64,
    tree: TreeHead,
    path: Vec<Hash>,
) -> Option<EventProof> {
    let at = usize::try_from(tx_seq.checked_sub(1)?).ok()?;
    let leaves: Vec<Hash> = event_hashes.iter().map(|h| leaf_hash(h)).collect();
    let event_path = merkle::inclusion_proof(&leaves, at)?;
    let base = Base {
        first_event: record.first_event,
        tx_id: record.tx_id,
    };
    let event_id = event.header(base).ok()?.id;
    let (bytes, event_hash_version) = match event {
        Framed::V1(c) => (c.to_vec(), 1),
        Framed::V2(f) => (f.to_bytes(), 2),
    };
    Some(EventProof {
        format: PROOF_FORMAT.into(),
        database,
        event_id,
        event: hex::encode(bytes),
        event_hash_version,
        prev_event_hash: if at == 0 {
            ZERO_HASH
        } else {
            event_hashes[at - 1]
        },
        event_path,
        record,
        tree,
        path,
    })
}

/// One chain's consistency proof from an old tree to a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainConsistency {
    pub chain: i32,
    pub old_size: i64,
    pub new_size: i64,
    #[serde(with = "hex_list")]
    pub path: Vec<Hash>,
}

/// A chain's head bound to its tree: the head record's events root, and
/// the path of its leaf (`size - 1`) to the root. With the head's link hash
/// it gives the leaf, so a checkpoint's head and tree cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadLeaf {
    pub chain: i32,
    #[serde(with = "hex_hash")]
    pub events_root: Hash,
    #[serde(with = "hex_list")]
    pub path: Vec<Hash>,
}

/// `audit_log.consistency(old)`: the new checkpoint, for each tree of the
/// old one the proof that the new tree extends it, and each new head's leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    pub format: String,
    pub checkpoint: Checkpoint,
    pub proofs: Vec<ChainConsistency>,
    pub heads: Vec<HeadLeaf>,
}

/// Does `head` (with this link hash) sit at the end of `tree`?
pub fn head_in_tree(link_hash: &Hash, tree: &TreeHead, head: &HeadLeaf) -> bool {
    tree.size >= 1
        && root_from_inclusion(
            (tree.size - 1) as u64,
            tree.size as u64,
            &record_leaf(link_hash, &head.events_root),
            &head.path,
        ) == Some(tree.root)
}

impl Consistency {
    pub fn parse(value: &serde_json::Value) -> Result<Consistency, ProofError> {
        let c: Consistency = serde_json::from_value(value.clone())
            .map_err(|e| ProofError::Malformed(e.to_string()))?;
        if c.format != CONSISTENCY_FORMAT {
            return Err(ProofError::UnsupportedFormat(c.format));
        }
        // The new checkpoint is held to a checkpoint's own rules.
        let cp = value
            .get("checkpoint")
            .ok_or_else(|| ProofError::Malformed("no checkpoint".into()))?;
        Checkpoint::parse(cp).map_err(|e| ProofError::Malformed(e.to_string()))?;
        Ok(c)
    }

    /// Does `self.checkpoint`'s every tree extend `old`'s? Every tree of
    /// `old` must have its proof, and the new checkpoint a tree at least
    /// as large. Every chain of the new checkpoint must have a tree: one
    /// left out (the server found a record damaged) would go unchecked.
    pub fn verify(&self, old: &Checkpoint) -> Result<(), ProofError> {
        // Every chain of the old checkpoint must have had a tree: one
        // without would be checked by nothing here.
        if let Some(h) = old
            .chains
            .iter()
            .find(|h| !old.trees.iter().any(|t| t.chain == h.chain))
        {
            return Err(invalid(format!(
                "chain {} has no tree in the old checkpoint: verify the log in full",
                h.chain
            )));
        }
        for h in &self.checkpoint.chains {
            let Some(t) = self.checkpoint.trees.iter().find(|t| t.chain == h.chain) else {
                return Err(invalid(format!(
                    "chain {} has no tree in the new checkpoint (a damaged record, or records \
                     purged before trees were kept): verify the log in full",
                    h.chain
                )));
            };
            // The head the checkpoint names is the tree's last leaf.
            let leaf = self.heads.iter().find(|l| l.chain == h.chain);
            if !leaf.is_some_and(|l| head_in_tree(&h.link_hash, t, l)) {
                return Err(invalid(format!(
                    "chain {}'s head (seq {}) is not the last leaf of its tree",
                    h.chain, h.seq
                )));
            }
        }
        for o in &old.trees {
            let n = self
                .checkpoint
                .trees
                .iter()
                .find(|t| t.chain == o.chain)
                .ok_or_else(|| invalid(format!("chain {}'s tree is gone", o.chain)))?;
            let p = self
                .proofs
                .iter()
                .find(|p| p.chain == o.chain)
                .ok_or_else(|| invalid(format!("no proof for chain {}", o.chain)))?;
            if p.old_size != o.size || p.new_size != n.size || n.size < o.size || o.size < 1 {
                return Err(invalid(format!(
                    "chain {}: the proof is from {} to {} records, the trees have {} and {}",
                    o.chain, p.old_size, p.new_size, o.size, n.size
                )));
            }
            if !merkle::verify_consistency(o.size as u64, n.size as u64, &o.root, &n.root, &p.path)
            {
                return Err(invalid(format!(
                    "chain {}'s tree of {} records does not extend the old one of {}",
                    o.chain, n.size, o.size
                )));
            }
        }
        Ok(())
    }
}

pub(crate) mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::hash::Hash;

    pub fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        // A path has at most 64 steps; more is not a proof of anything.
        if v.len() > 64 {
            return Err(serde::de::Error::custom("a path has at most 64 hashes"));
        }
        v.iter()
            .map(|t| {
                hex::decode(t)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| serde::de::Error::custom("a hash is 64 hex digits"))
            })
            .collect()
    }
}

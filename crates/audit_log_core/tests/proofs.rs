//! Event and consistency proofs over logs built by `common::Log`: every
//! proof of a valid log verifies against its checkpoint, every stored tree
//! (tiles integrated or not) gives the RFC's proofs, and no edit of a proof,
//! random or chosen, verifies.

mod common;

use audit_log_core::encoding::encode_event;
use audit_log_core::merkle::{self, consistency_path, inclusion_path, tree_root};
use audit_log_core::model::{Checkpoint, CHECKPOINT_FORMAT};
use audit_log_core::record::Framed;
use audit_log_core::tree::{
    events_root, prove_event, record_leaf, Consistency, EventProof, HeadLeaf, ProofError,
    ProvenRecord, TileSource, Tiled, CONSISTENCY_FORMAT, TILE_WIDTH,
};
use audit_log_core::{Hash, TreeHead, ZERO_HASH};
use common::Log;
use proptest::prelude::*;
use serde_json::json;

/// Every chain's leaves, in seq order, and each record's event hashes.
fn leaves(log: &Log, chain: i32) -> Vec<Hash> {
    let mut links: Vec<_> = log.links.iter().filter(|l| l.chain_id == chain).collect();
    links.sort_by_key(|l| l.seq);
    links
        .iter()
        .map(|l| {
            let hs: Vec<Hash> = tx_events(log, l.first_event)
                .iter()
                .map(|e| e.hash)
                .collect();
            record_leaf(&l.link_hash, &events_root(&hs))
        })
        .collect()
}

fn tx_events(log: &Log, first: i64) -> Vec<audit_log_core::Event> {
    let mut v: Vec<_> = log
        .events
        .iter()
        .filter(|e| e.tx_first == first)
        .cloned()
        .collect();
    v.sort_by_key(|e| e.tx_seq);
    v
}

fn checkpoint(log: &Log) -> Checkpoint {
    let mut cp = log.checkpoint();
    cp.format = CHECKPOINT_FORMAT.into();
    cp.trees = cp
        .chains
        .iter()
        .map(|h| TreeHead {
            chain: h.chain,
            size: h.seq,
            root: merkle::root(&leaves(log, h.chain)[..h.seq as usize]),
        })
        .collect();
    cp
}

fn prove(log: &Log, event_id: i64) -> EventProof {
    let e = log.events.iter().find(|e| e.id == event_id).unwrap();
    let l = log
        .links
        .iter()
        .find(|l| l.first_event == e.tx_first)
        .unwrap();
    let evs = tx_events(log, l.first_event);
    let hs: Vec<Hash> = evs.iter().map(|e| e.hash).collect();
    let mut canonical = Vec::new();
    encode_event(e, &mut canonical);
    let lv = leaves(log, l.chain_id);
    let record = ProvenRecord {
        chain: l.chain_id,
        seq: l.seq,
        tx_id: l.tx_id,
        first_event: l.first_event,
        last_event: l.last_event,
        event_count: l.event_count,
        committed_at: l.committed_at,
        prev_link_hash: l.prev_link_hash,
        last_event_hash: l.last_event_hash,
        link_hash: l.link_hash,
    };
    let tree = TreeHead {
        chain: l.chain_id,
        size: lv.len() as i64,
        root: merkle::root(&lv),
    };
    let path = merkle::inclusion_proof(&lv, (l.seq - 1) as usize).unwrap();
    prove_event(
        None,
        record,
        &hs,
        &Framed::V1(&canonical),
        e.tx_seq,
        tree,
        path,
    )
    .unwrap()
}

#[test]
fn every_event_of_a_log_is_proven_against_its_checkpoint() {
    let log = Log::sample(60, 3);
    let cp = checkpoint(&log);
    for e in &log.events {
        let p = prove(&log, e.id);
        let shown = p
            .verify(&cp)
            .unwrap_or_else(|err| panic!("{}: {err}", e.id));
        assert_eq!(shown.hash, e.hash);
        // The proof round-trips through its JSON.
        let text = serde_json::to_value(&p).unwrap();
        assert_eq!(EventProof::parse(&text).unwrap(), p);
    }
}

#[test]
fn a_proof_holds_only_against_its_own_tree() {
    let mut log = Log::sample(20, 2);
    let old = checkpoint(&log);
    let p = prove(&log, 3);
    assert!(p.verify(&old).is_ok());
    log.commit(p.record.chain, &[json!({"id": 99})]);
    let new = checkpoint(&log);
    assert!(matches!(p.verify(&new), Err(ProofError::OtherSize { .. })));
    let mut other = new.clone();
    other.trees.retain(|t| t.chain != p.record.chain);
    assert_eq!(p.verify(&other), Err(ProofError::NoTree(p.record.chain)));
    // The same size with another root: a forked log.
    let mut forked = old.clone();
    for t in &mut forked.trees {
        t.root[0] ^= 1;
    }
    assert!(matches!(p.verify(&forked), Err(ProofError::Invalid(_))));
}

/// Each way to edit a proof by hand.
fn edits(p: &EventProof) -> Vec<(String, EventProof)> {
    let mut out = Vec::new();
    let mut push = |what: &str, f: &dyn Fn(&mut EventProof)| {
        let mut q = p.clone();
        f(&mut q);
        if q != *p {
            out.push((what.to_string(), q));
        }
    };
    push("event byte", &|q| {
        let mut b = hex::decode(&q.event).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        q.event = hex::encode(b);
    });
    push("event id", &|q| q.event_id += 1);
    push("prev_event_hash", &|q| q.prev_event_hash[5] ^= 1);
    push("tx_id", &|q| q.record.tx_id += 1);
    push("seq", &|q| q.record.seq += 1);
    push("committed_at", &|q| q.record.committed_at += 1);
    push("first_event", &|q| q.record.first_event -= 1);
    push("last_event", &|q| q.record.last_event += 1);
    push("event_count", &|q| q.record.event_count += 1);
    push("prev_link_hash", &|q| q.record.prev_link_hash[0] ^= 1);
    push("last_event_hash", &|q| q.record.last_event_hash[31] ^= 1);
    push("link_hash", &|q| q.record.link_hash[9] ^= 1);
    push("tree chain", &|q| q.tree.chain += 1);
    push("tree size", &|q| q.tree.size += 1);
    push("tree root", &|q| q.tree.root[2] ^= 1);
    for i in 0..p.path.len() {
        push("path step", &|q| q.path[i][i % 32] ^= 0x40);
    }
    for i in 0..p.event_path.len() {
        push("event path step", &|q| q.event_path[i][1] ^= 0x40);
    }
    push("path shortened", &|q| {
        q.path.pop();
    });
    push("path lengthened", &|q| q.path.push(ZERO_HASH));
    push("event path shortened", &|q| {
        q.event_path.pop();
    });
    push("event path lengthened", &|q| q.event_path.push(ZERO_HASH));
    out
}

#[test]
fn no_chosen_edit_of_a_proof_verifies() {
    let log = Log::sample(40, 2);
    let cp = checkpoint(&log);
    let mut tried = 0;
    for e in &log.events {
        let p = prove(&log, e.id);
        for (what, q) in edits(&p) {
            tried += 1;
            assert!(q.verify(&cp).is_err(), "event {}: {what} verified", e.id);
        }
    }
    assert!(tried > 1000, "{tried}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random logs, random events, random bytes of the proof's JSON flipped:
    /// nothing but the untouched proof (or an edit of what is not proven,
    /// the database's name) verifies.
    #[test]
    fn no_random_edit_of_a_proof_verifies(
        txs in 1usize..80,
        chains in 1i32..4,
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let log = Log::sample(txs, chains);
        let cp = checkpoint(&log);
        let e = &log.events[pick.index(log.events.len())];
        let p = prove(&log, e.id);
        prop_assert!(p.verify(&cp).is_ok());
        let mut text = serde_json::to_string(&p).unwrap().into_bytes();
        for (at, x) in &flips {
            let i = at.index(text.len());
            text[i] ^= x;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
            if let Ok(q) = EventProof::parse(&v) {
                if q != p {
                    prop_assert!(q.verify(&cp).is_err(), "an edited proof verified: {}", String::from_utf8_lossy(&text));
                }
            }
        }
    }
}

/// A stored tree: some complete tiles stored (`upto[level]` of them), the
/// rest read from leaves, as a server reads one mid-integration.
struct Mem {
    leaves: Vec<Hash>,
    upto: Vec<u64>,
    reads: usize,
}

impl Mem {
    /// Entry `j` of `level`: the root of a complete subtree of height 8 * level.
    fn entry(&self, level: u32, j: u64) -> Hash {
        let h = 8 * level;
        merkle::root(&self.leaves[(j << h) as usize..((j + 1) << h) as usize])
    }
}

impl TileSource for &mut Mem {
    type Error = ();
    fn tile(&mut self, level: u32, t: u64) -> Result<Option<Vec<Hash>>, ()> {
        self.reads += 1;
        if t >= *self.upto.get(level as usize).unwrap_or(&0) {
            return Ok(None);
        }
        Ok(Some(
            (t * TILE_WIDTH..(t + 1) * TILE_WIDTH)
                .map(|j| self.entry(level, j))
                .collect(),
        ))
    }
    fn roots(&mut self, level: u32, lo: u64, hi: u64) -> Result<Vec<Option<Hash>>, ()> {
        self.reads += 1;
        let upto = *self.upto.get(level as usize).unwrap_or(&0);
        Ok((lo..hi)
            .map(|t| (t < upto).then(|| self.entry(level + 1, t)))
            .collect())
    }
    fn leaves(&mut self, lo: u64, hi: u64) -> Result<Vec<Hash>, ()> {
        self.reads += 1;
        assert_eq!(
            lo / TILE_WIDTH,
            (hi - 1) / TILE_WIDTH,
            "leaves across tiles"
        );
        Ok(self.leaves[lo as usize..hi as usize].to_vec())
    }
}

#[test]
fn a_tiled_tree_gives_the_rfcs_roots_and_proofs_however_far_it_is_integrated() {
    let n = 66_000u64;
    let all: Vec<Hash> = (0..n)
        .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
        .collect();
    let full_tiles = [n / 256, n / 65536];
    for upto in [vec![], vec![3], vec![full_tiles[0]], full_tiles.to_vec()] {
        for size in [1u64, 255, 256, 257, 511, 65535, 65536, 65537, n] {
            let l = &all[..size as usize];
            // Tiles never cover more than the tree (integration stops at it).
            let upto: Vec<u64> = upto
                .iter()
                .enumerate()
                .map(|(lv, &u)| u.min(size >> (8 * (lv + 1))))
                .collect();
            let mut mem = Mem {
                leaves: l.to_vec(),
                upto: upto.clone(),
                reads: 0,
            };
            let mut t = Tiled::new(&mut mem);
            assert_eq!(
                tree_root(&mut t, size),
                Ok(merkle::root(l)),
                "{upto:?} {size}"
            );
            for m in [0, size / 3, size / 2, size - 1] {
                assert_eq!(
                    inclusion_path(&mut t, m, size),
                    Ok(merkle::inclusion_proof(l, m as usize)),
                    "{upto:?} {size} {m}"
                );
                assert_eq!(
                    consistency_path(&mut t, m + 1, size),
                    Ok(merkle::consistency_proof(l, m as usize + 1)),
                    "{upto:?} {size} {m}"
                );
            }
        }
    }
}

#[test]
fn consistency_proofs_between_checkpoints() {
    let mut log = Log::sample(30, 3);
    let old = checkpoint(&log);
    for i in 0..25 {
        log.commit(i % 3, &[json!({"id": 500 + i})]);
    }
    let new = checkpoint(&log);
    let proofs = old
        .trees
        .iter()
        .map(|o| {
            let l = leaves(&log, o.chain);
            audit_log_core::tree::ChainConsistency {
                chain: o.chain,
                old_size: o.size,
                new_size: l.len() as i64,
                path: merkle::consistency_proof(&l, o.size as usize).unwrap(),
            }
        })
        .collect();
    let heads = new
        .chains
        .iter()
        .map(|h| {
            let l = leaves(&log, h.chain);
            let last = log
                .links
                .iter()
                .find(|k| k.chain_id == h.chain && k.seq == h.seq)
                .unwrap();
            let hs: Vec<Hash> = tx_events(&log, last.first_event)
                .iter()
                .map(|e| e.hash)
                .collect();
            HeadLeaf {
                chain: h.chain,
                events_root: events_root(&hs),
                path: merkle::inclusion_proof(&l, l.len() - 1).unwrap(),
            }
        })
        .collect();
    let c = Consistency {
        format: CONSISTENCY_FORMAT.into(),
        checkpoint: new.clone(),
        proofs,
        heads,
    };
    c.verify(&old).unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(Consistency::parse(&v).unwrap(), c);
    // A rewritten old record: the old tree is not a prefix of the new one.
    let mut forked = old.clone();
    forked.trees[1].root[0] ^= 1;
    assert!(c.verify(&forked).is_err());
    // A chain dropped from the new checkpoint, or a proof missing.
    let mut gone = c.clone();
    gone.checkpoint.trees.remove(0);
    assert!(gone.verify(&old).is_err());
    let mut missing = c.clone();
    missing.proofs.pop();
    assert!(missing.verify(&old).is_err());
    // A head whose link hash is not the tree's last leaf, and a head leaf
    // with an edited path or root.
    let mut other_head = c.clone();
    other_head.checkpoint.chains[0].link_hash[0] ^= 1;
    assert!(other_head.verify(&old).is_err());
    let mut bad_path = c.clone();
    if let Some(p) = bad_path.heads[0].path.first_mut() {
        p[3] ^= 1;
    } else {
        bad_path.heads[0].events_root[3] ^= 1;
    }
    assert!(bad_path.verify(&old).is_err());
    let mut no_head = c.clone();
    no_head.heads.pop();
    assert!(no_head.verify(&old).is_err());
    // An old checkpoint with a chain that has no tree: nothing here checks it.
    let mut old_treeless = old.clone();
    old_treeless.trees.pop();
    assert!(c.verify(&old_treeless).is_err());
    // A chain new since the old checkpoint, whose tree the new one leaves out.
    let mut treeless = c.clone();
    let mut head = treeless.checkpoint.chains[0].clone();
    head.chain = 99;
    treeless.checkpoint.chains.push(head);
    assert!(treeless.verify(&old).is_err());
    // Each step of each proof edited.
    for i in 0..c.proofs.len() {
        for s in 0..c.proofs[i].path.len() {
            let mut e = c.clone();
            e.proofs[i].path[s][7] ^= 2;
            assert!(e.verify(&old).is_err(), "chain {i} step {s}");
        }
        let mut e = c.clone();
        e.proofs[i].old_size -= 1;
        assert!(e.verify(&old).is_err());
    }
}

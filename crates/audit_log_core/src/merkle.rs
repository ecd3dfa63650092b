//! Merkle trees as RFC 9162 (Certificate Transparency 2.0) defines them,
//! section 2.1: leaves hashed with a 0x00 prefix, interior nodes with 0x01,
//! SHA-256; inclusion proofs (2.1.3) and consistency proofs (2.1.4), and
//! their verification. A chain's tree has one leaf per record, in seq
//! order ([`crate::tree`], docs/FORMAT.md).
//!
//! The functions over a slice of leaves are the RFC's definitions. A stored
//! tree is read through [`Subtrees`] instead, which gives the hash of a
//! complete, aligned subtree: every node an RFC proof needs is one of those,
//! or is built from O(log n) of them.
//!
//! Everything here is iterative or recurses only on the tree's height
//! (at most 64 levels), never on data.

use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// RFC 9162's hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162's hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::new().finalize().into()
}

/// The largest power of two smaller than `n` (n > 1): where RFC 9162
/// splits a tree of n leaves.
fn split(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes (each already `leaf_hash`ed).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// MTH of leaves given one at a time, in order, holding one hash per set
/// bit of their number: the roots of the perfect subtrees that RFC 9162's
/// splits make of a tree of that size, largest first. For a verifier that
/// streams a chain's records (the offline one) rather than storing them.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    /// (size, root) of each perfect subtree, sizes decreasing.
    stack: Vec<(u64, Hash)>,
    size: u64,
}

impl Builder {
    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf hash (already `leaf_hash`ed).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (1u64, leaf);
        while let Some(&(size, left)) = self.stack.last() {
            if size != node.0 {
                break;
            }
            self.stack.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// MTH of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.stack.iter().rev();
        let Some(&(_, mut acc)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `m` in the tree of `leaves`,
/// from the leaf's sibling up. None if `m` is not a leaf of it.
pub fn inclusion_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    if m >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut at) = (0usize, leaves.len(), m);
    // Walk down, remembering the siblings, then reverse (RFC order is bottom-up).
    while hi - lo > 1 {
        let k = split(hi - lo);
        if at < k {
            proof.push(root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            proof.push(root(&leaves[lo..lo + k]));
            lo += k;
            at -= k;
        }
    }
    proof.reverse();
    Some(proof)
}

/// PROOF(m, D[n]): the consistency proof that the tree of the first `m`
/// of `leaves` is a prefix of the tree of all of them. None unless
/// 0 < m <= n.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    if m == 0 || m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(m, leaves, true, &mut proof);
    Some(proof)
}

/// SUBPROOF(m, D[n], b), RFC 9162 2.1.4.1; recursion depth is the tree's height.
fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// RFC 9162 2.1.3.2: does `proof` show `leaf` (a leaf hash) at `index` in a
/// tree of `size` leaves whose root is `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion(index, size, leaf, proof).is_some_and(|r| r == *root)
}

/// The root that an inclusion proof of `leaf` at `index` in a tree of
/// `size` leaves leads to (RFC 9162 2.1.3.2 without the last comparison);
/// None if the proof has the wrong length for that index and size.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

/// RFC 9162 2.1.4.2: does `proof` show that the tree of `first` leaves with
/// root `first_root` is a prefix of the tree of `second` leaves with root
/// `second_root`?
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    // A first tree that is a complete subtree is the proof's implicit start.
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let Some((start, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *first_root && sr == *second_root
}

/// The hashes of a tree's complete, aligned subtrees: `subtree(h, i)` is
/// MTH of leaves `[i * 2^h, (i + 1) * 2^h)`. A stored tree answers from its
/// tiles; [`Leaves`] answers from a slice.
pub trait Subtrees {
    type Error;
    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// A slice of leaf hashes as [`Subtrees`] (for tests, and small trees).
pub struct Leaves<'a>(pub &'a [Hash]);

impl Subtrees for Leaves<'_> {
    type Error = std::convert::Infallible;
    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        let lo = (index << height) as usize;
        Ok(root(&self.0[lo..lo + (1usize << height)]))
    }
}

/// MTH of leaves `[lo, hi)` of a tree, where `lo` is a multiple of the
/// largest power of two not above `hi - lo` (every range RFC 9162's
/// recursions reach is): complete subtrees from the left, then the rest.
pub fn range_root<S: Subtrees>(s: &mut S, lo: u64, hi: u64) -> Result<Hash, S::Error> {
    if hi <= lo {
        return Ok(empty_root());
    }
    // The complete subtrees of the range, largest first, folded from the right.
    let mut peaks = Vec::new();
    let mut at = lo;
    while at < hi {
        let n = hi - at;
        let h = 63 - n.leading_zeros();
        let h = h.min(if at == 0 { 63 } else { at.trailing_zeros() });
        peaks.push(s.subtree(h, at >> h)?);
        at += 1 << h;
    }
    let mut it = peaks.into_iter().rev();
    let mut r = it.next().unwrap_or_else(empty_root);
    for left in it {
        r = node_hash(&left, &r);
    }
    Ok(r)
}

/// MTH of the first `size` leaves.
pub fn tree_root<S: Subtrees>(s: &mut S, size: u64) -> Result<Hash, S::Error> {
    range_root(s, 0, size)
}

fn split64(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// PATH(m, D[size]) read through `s`; None if `m` is not a leaf of the tree.
pub fn inclusion_path<S: Subtrees>(
    s: &mut S,
    m: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if m >= size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split64(hi - lo);
        if m < lo + k {
            proof.push(range_root(s, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(range_root(s, lo, lo + k)?);
            lo += k;
        }
    }
    proof.reverse();
    Ok(Some(proof))
}

/// PROOF(m, D[size]) read through `s`; None unless 0 < m <= size.
pub fn consistency_path<S: Subtrees>(
    s: &mut S,
    m: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if m == 0 || m > size {
        return Ok(None);
    }
    // SUBPROOF unrolled: walk down, keeping the siblings top-down; the
    // RFC lists the node where m meets n first, then the siblings bottom-up.
    let mut siblings = Vec::new();
    let (mut lo, mut hi, mut m, mut complete) = (0u64, size, m, true);
    let last = loop {
        let n = hi - lo;
        if m == n {
            break if complete {
                None
            } else {
                Some(range_root(s, lo, hi)?)
            };
        }
        let k = split64(n);
        if m <= k {
            siblings.push(range_root(s, lo + k, hi)?);
            hi = lo + k;
        } else {
            siblings.push(range_root(s, lo, lo + k)?);
            lo += k;
            m -= k;
            complete = false;
        }
    };
    Ok(Some(
        last.into_iter().chain(siblings.into_iter().rev()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    /// RFC 9162 2.1.5's example: seven leaves d0..d6, and its named nodes.
    #[test]
    fn the_rfc_example_proofs() {
        let d: Vec<Hash> = (0..7u8).map(|i| leaf_hash(&[i])).collect();
        let (a, b, c, dd, e, f) = (d[0], d[1], d[2], d[3], d[4], d[5]);
        let g = node_hash(&a, &b);
        let h = node_hash(&c, &dd);
        let i = node_hash(&e, &f);
        let j = d[6];
        let k = node_hash(&g, &h);
        let l = node_hash(&i, &j);
        let top = node_hash(&k, &l);
        assert_eq!(root(&d), top);
        // Computed apart, with Python's hashlib (pg_test's way of checking
        // FORMAT.md's vectors).
        assert_eq!(
            hex::encode(top),
            "3560191803028444b232018ac047fdb561c09c23a7a6876c85e08b5e4d48e9f3"
        );
        // Inclusion proofs as the RFC lists them.
        assert_eq!(inclusion_proof(&d, 0), Some(vec![b, h, l]));
        assert_eq!(inclusion_proof(&d, 3), Some(vec![c, g, l]));
        assert_eq!(inclusion_proof(&d, 4), Some(vec![f, j, k]));
        assert_eq!(inclusion_proof(&d, 6), Some(vec![i, k]));
        // Consistency proofs from the trees of 3, 4 and 6 leaves.
        assert_eq!(consistency_proof(&d, 3), Some(vec![c, dd, g, l]));
        assert_eq!(consistency_proof(&d, 4), Some(vec![l]));
        assert_eq!(consistency_proof(&d, 6), Some(vec![i, j, k]));
        assert!(verify_consistency(
            3,
            7,
            &root(&d[..3]),
            &top,
            &[c, dd, g, l]
        ));
        assert!(verify_consistency(4, 7, &k, &top, &[l]));
        assert!(verify_consistency(
            6,
            7,
            &node_hash(&k, &i),
            &top,
            &[i, j, k]
        ));
    }

    #[test]
    fn the_empty_tree_and_one_leaf() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let one = [leaf_hash(b"")];
        assert_eq!(
            hex::encode(one[0]),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(root(&one), one[0]);
        assert_eq!(inclusion_proof(&one, 0), Some(vec![]));
        assert!(verify_inclusion(0, 1, &one[0], &[], &one[0]));
    }

    #[test]
    fn every_proof_of_every_small_tree_verifies_and_no_edit_does() {
        for n in 1..=40usize {
            let l = leaves(n);
            let r = root(&l);
            for m in 0..n {
                let p = inclusion_proof(&l, m).unwrap();
                assert!(
                    verify_inclusion(m as u64, n as u64, &l[m], &p, &r),
                    "n {n} m {m}"
                );
                // Another leaf or index, or any edited or missing step, fails.
                // (A size goes with its root: a checkpoint signs them together.)
                assert!(!verify_inclusion(m as u64, n as u64, &l[(m + 1) % n], &p, &r) || n == 1);
                assert!(
                    !verify_inclusion((m as u64 + 1) % n as u64, n as u64, &l[m], &p, &r) || n == 1
                );
                for s in 0..p.len() {
                    let mut q = p.clone();
                    q[s][0] ^= 1;
                    assert!(!verify_inclusion(m as u64, n as u64, &l[m], &q, &r));
                }
                let mut short = p.clone();
                if short.pop().is_some() {
                    assert!(!verify_inclusion(m as u64, n as u64, &l[m], &short, &r));
                }
            }
            for m in 1..=n {
                let p = consistency_proof(&l, m).unwrap();
                let old = root(&l[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &r, &p),
                    "n {n} m {m}"
                );
                for s in 0..p.len() {
                    let mut q = p.clone();
                    q[s][31] ^= 0x80;
                    assert!(!verify_consistency(m as u64, n as u64, &old, &r, &q));
                }
                if m < n {
                    // A forked old tree: the same size, one leaf changed.
                    let mut forked = l[..m].to_vec();
                    forked[m - 1][0] ^= 1;
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &root(&forked),
                        &r,
                        &p
                    ));
                }
            }
        }
    }

    #[test]
    fn proofs_read_through_subtrees_are_the_rfcs() {
        // A Subtrees that answers from leaves, and counts what it is asked:
        // only complete, aligned subtrees, and O(log n) of them per node.
        struct Counting<'a>(&'a [Hash], usize);
        impl Subtrees for Counting<'_> {
            type Error = ();
            fn subtree(&mut self, h: u32, i: u64) -> Result<Hash, ()> {
                let lo = (i << h) as usize;
                assert!(lo + (1 << h) <= self.0.len(), "subtree past the tree");
                self.1 += 1;
                Ok(root(&self.0[lo..lo + (1 << h)]))
            }
        }
        for n in 1..=70usize {
            let l = leaves(n);
            let mut s = Counting(&l, 0);
            assert_eq!(tree_root(&mut s, n as u64), Ok(root(&l)), "n {n}");
            for m in 0..n {
                assert_eq!(
                    inclusion_path(&mut s, m as u64, n as u64),
                    Ok(inclusion_proof(&l, m)),
                    "n {n} m {m}"
                );
            }
            for m in 0..=n + 1 {
                assert_eq!(
                    consistency_path(&mut s, m as u64, n as u64),
                    Ok(consistency_proof(&l, m)),
                    "n {n} m {m}"
                );
            }
            assert_eq!(inclusion_path(&mut s, n as u64, n as u64), Ok(None));
            let r = root(&l);
            for m in 0..n {
                let p = inclusion_proof(&l, m).unwrap();
                assert_eq!(root_from_inclusion(m as u64, n as u64, &l[m], &p), Some(r));
            }
        }
        // A big tree: a proof asks for a few dozen subtrees, not the leaves.
        let l = leaves(5000);
        let mut s = Counting(&l, 0);
        inclusion_path(&mut s, 1234, 5000).unwrap();
        consistency_path(&mut s, 3001, 5000).unwrap();
        assert!(s.1 < 60, "{} subtrees", s.1);
        assert_eq!(Leaves(&l).subtree(3, 2), Ok(root(&l[16..24])));
    }

    #[test]
    fn a_builder_fed_leaf_by_leaf_has_the_root_of_every_prefix() {
        let leaves: Vec<Hash> = (0u32..140).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut b = Builder::default();
        assert_eq!(b.root(), root(&[]));
        for (n, l) in leaves.iter().enumerate() {
            b.push(*l);
            assert_eq!(b.size(), n as u64 + 1);
            assert_eq!(b.root(), root(&leaves[..=n]), "{} leaves", n + 1);
        }
    }
}

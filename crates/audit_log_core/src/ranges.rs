//! A set of `u32` kept as sorted, disjoint, non-adjacent ranges.
//!
//! The extension remembers, per table, the PostgreSQL command ids whose
//! new row versions it recorded. Those come in runs (one statement's rows
//! share one command; a cascade over many rows takes one command per row,
//! in order), so a set of ranges stays a few entries long where a set of
//! ids would hold one per command.

use std::collections::TryReserveError;

/// Sorted, disjoint ranges `(lo, hi)`, both ends included, with a gap of at
/// least one value between neighbours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<(u32, u32)>);

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `v`. Fails only when a new range finds no memory, leaving the set
    /// as it was.
    pub fn try_insert(&mut self, v: u32) -> Result<(), TryReserveError> {
        // The first range that ends at v - 1 or later: the only one that can
        // hold v, or grow to it.
        let at = self.0.partition_point(|&(_, hi)| hi.saturating_add(1) < v);
        match self.0.get(at).copied() {
            Some((lo, hi)) if lo <= v && v <= hi => {}
            Some((lo, hi)) if hi.checked_add(1) == Some(v) => {
                // Grows up to v, and joins the next range if that starts at
                // v + 1.
                match self.0.get(at + 1).copied() {
                    Some((next_lo, next_hi)) if v.checked_add(1) == Some(next_lo) => {
                        self.0[at] = (lo, next_hi);
                        self.0.remove(at + 1);
                    }
                    _ => self.0[at] = (lo, v),
                }
            }
            // The range before ends before v - 1, so nothing else joins.
            Some((lo, hi)) if v.checked_add(1) == Some(lo) => self.0[at] = (v, hi),
            _ => {
                self.0.try_reserve(1)?;
                self.0.insert(at, (v, v));
            }
        }
        Ok(())
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u32) -> bool {
        let at = self.0.partition_point(|&(_, hi)| hi < v);
        self.0.get(at).is_some_and(|&(lo, _)| lo <= v)
    }

    /// The largest value in the set.
    pub fn max(&self) -> Option<u32> {
        self.0.last().map(|&(_, hi)| hi)
    }

    /// How many ranges the set keeps.
    pub fn ranges(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set_of(values: &[u32]) -> RangeSet {
        let mut s = RangeSet::new();
        for &v in values {
            s.try_insert(v).unwrap();
        }
        s
    }

    #[test]
    fn runs_merge_in_any_order() {
        // A cascade's commands 2, 3, 4 recorded between the commands 5, 6, 7
        // that triggers on its rows ran.
        let s = set_of(&[2, 5, 3, 6, 4, 7]);
        assert_eq!(s.0, vec![(2, 7)]);
        let s = set_of(&[10, 8, 12, 9, 11]);
        assert_eq!(s.0, vec![(8, 12)]);
    }

    #[test]
    fn gaps_stay_gaps() {
        let s = set_of(&[4, 2, 9]);
        assert_eq!(s.0, vec![(2, 2), (4, 4), (9, 9)]);
        assert!(!s.contains(3) && !s.contains(5) && !s.contains(8) && !s.contains(10));
        assert!(s.contains(2) && s.contains(4) && s.contains(9));
        assert_eq!(s.max(), Some(9));
        assert_eq!(RangeSet::new().max(), None);
    }

    #[test]
    fn the_ends_of_u32() {
        let s = set_of(&[u32::MAX, 0, u32::MAX - 1, 1]);
        assert_eq!(s.0, vec![(0, 1), (u32::MAX - 1, u32::MAX)]);
        assert!(s.contains(u32::MAX) && s.contains(0) && !s.contains(2));
    }

    proptest! {
        #[test]
        fn agrees_with_a_btreeset(values in proptest::collection::vec(0u32..64, 0..80),
                                  probes in proptest::collection::vec(0u32..70, 0..40)) {
            let s = set_of(&values);
            let b: BTreeSet<u32> = values.iter().copied().collect();
            for p in probes.iter().chain(values.iter()) {
                prop_assert_eq!(s.contains(*p), b.contains(p));
            }
            prop_assert_eq!(s.max(), b.last().copied());
            // Sorted, disjoint and never adjacent: as few ranges as can be.
            for w in s.0.windows(2) {
                prop_assert!(w[0].0 <= w[0].1 && w[0].1.saturating_add(1) < w[1].0);
            }
            let runs = b.iter().zip(b.iter().skip(1)).filter(|(a, c)| **a + 1 != **c).count()
                + usize::from(!b.is_empty());
            prop_assert_eq!(s.ranges(), runs);
        }
    }
}

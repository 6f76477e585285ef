//! Sets of sequence numbers as sorted, disjoint, half-open ranges: acknowledgements above a cursor's floor
//! and rolled-back messages. A consumer acknowledging in order keeps one range; each hole adds one.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (exclusive).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn contains(&self, x: u64) -> bool {
        self.ranges.range(..=x).next_back().is_some_and(|(_, &end)| x < end)
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    pub fn insert(&mut self, x: u64) {
        self.insert_range(x, x + 1);
    }

    /// If `x` is inside a range, the range's end; else `x`.
    pub fn skip(&self, x: u64) -> u64 {
        match self.ranges.range(..=x).next_back() {
            Some((_, &end)) if x < end => end,
            _ => x,
        }
    }

    /// Drops everything below `floor`.
    pub fn forget_below(&mut self, floor: u64) {
        let keep = self.ranges.split_off(&floor);
        if let Some((_, &e)) = self.ranges.iter().next_back() {
            if e > floor {
                self.ranges = keep;
                self.ranges.insert(floor, e);
                return;
            }
        }
        self.ranges = keep;
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_a_set(ops in proptest::collection::vec((0u64..64, 1u64..6, any::<bool>()), 0..64), floor in 0u64..70) {
            let mut r = RangeSet::default();
            let mut model = BTreeSet::new();
            for (s, len, _) in &ops {
                r.insert_range(*s, s + len);
                model.extend(*s..s + len);
            }
            for x in 0..80 {
                prop_assert_eq!(r.contains(x), model.contains(&x), "{}", x);
                let mut y = x;
                while model.contains(&y) { y += 1; }
                prop_assert_eq!(r.skip(x), y);
            }
            let v: Vec<_> = r.iter().collect();
            for w in v.windows(2) { prop_assert!(w[0].1 < w[1].0, "disjoint and not touching: {:?}", v); }
            r.forget_below(floor);
            for x in 0..80 {
                prop_assert_eq!(r.contains(x), x >= floor && model.contains(&x));
            }
        }
    }
}

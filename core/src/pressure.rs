//! Which buckets a store that keeps them in memory forgets first when it holds as many as it
//! may ([`BucketBound`]).
//!
//! Forgetting a bucket is the same as resetting it to full: the next request on its key sees a
//! new bucket. So forgetting a bucket at balance `b` can admit at most `capacity - b` tokens
//! more than the exact answer: its **loss** ([`loss`]). A bucket that has refilled to full
//! loses nothing (the embedded store drops those on its eviction interval anyway); one
//! hammered to empty loses its whole capacity. The rank ([`Rank`]) orders buckets by what
//! forgetting them costs:
//!
//! 1. buckets that are not hot before those that are (hot: charged more than once, the last
//!    time within [`HOT_MS`]; a key sprayed once is never hot),
//! 2. then the least loss first,
//! 3. then the longest unused first.
//!
//! A store trims in the background from the high watermark down to the low one
//! ([`BucketBound::high`], [`BucketBound::low`]), so the request path does not scan; a new key
//! that arrives while the store is at the bound anyway is decided as a new bucket and not kept
//! (its loss is counted like a dropped bucket's).

use crate::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};

/// A bucket charged more than once, the last time this recently, is hot: it is dropped only
/// when every other one is.
pub const HOT_MS: i64 = 1000;

/// How a bucket has been used: its last charge and how many it has had (saturating).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub at: EpochMillis,
    pub count: u32,
}

impl Use {
    /// The first charge, at `now`.
    pub fn first(now: EpochMillis) -> Use {
        Use { at: now, count: 1 }
    }

    /// One more charge, at `now`.
    pub fn again(self, now: EpochMillis) -> Use {
        Use { at: now, count: self.count.saturating_add(1) }
    }

    pub fn hot(self, now: EpochMillis) -> bool {
        self.count > 1 && now.0 - self.at.0 < HOT_MS
    }
}

/// The most buckets a store keeps, and the watermarks its trimming works between.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BucketBound {
    pub max: usize,
}

impl BucketBound {
    /// The default bound of the embedded store: about 250 MB of buckets (about 220 bytes
    /// each, measured), a size any host running Envoy can spare and far above what honest
    /// traffic keeps refilling at once.
    pub const DEFAULT: BucketBound = BucketBound { max: 1_000_000 };

    /// Above this many buckets, a trim is due (seven eighths of the bound).
    pub fn high(self) -> usize {
        self.max - self.max / 8
    }

    /// A trim stops at this many buckets (three quarters of the bound), so trims are rare: each
    /// one frees an eighth of the bound, and its scan is amortised over that many new keys.
    pub fn low(self) -> usize {
        self.max - self.max / 4
    }
}

impl Default for BucketBound {
    fn default() -> Self {
        BucketBound::DEFAULT
    }
}

/// What forgetting a bucket at `state` can admit beyond the exact answer at `now`: the
/// capacity less the refilled balance (debt counts in full). Never negative.
pub fn loss(state: BucketState, limit: &BucketLimit, now: EpochMillis) -> Millitokens {
    let balance = state.refilled(limit, now).tokens;
    Millitokens(limit.capacity.0.saturating_sub(balance.0).max(0))
}

/// A bucket's place in the order of forgetting: lower ranks go first.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    pub hot: bool,
    pub loss: Millitokens,
    pub used_at: EpochMillis,
}

impl Rank {
    /// The rank at `now` of a bucket at `state` under `limit`, used as `used`.
    pub fn of(state: BucketState, limit: &BucketLimit, used: Use, now: EpochMillis) -> Rank {
        Rank { hot: used.hot(now), loss: loss(state, limit, now), used_at: used.at }
    }
}

/// The rank at or below which `count` of `ranks` lie (the `count`-th lowest), `None` for a
/// count of 0 or more than there are. Reorders `ranks`; linear time.
pub fn cutoff(ranks: &mut [Rank], count: usize) -> Option<Rank> {
    if count == 0 || count > ranks.len() {
        return None;
    }
    let (_, nth, _) = ranks.select_nth_unstable(count - 1);
    Some(*nth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tokens: i64) -> Millitokens {
        Millitokens(tokens * 1000)
    }

    /// 10 per hour.
    fn limit() -> BucketLimit {
        BucketLimit::per_period(10, 10, 3600)
    }

    fn at(tokens: i64, ms: i64) -> BucketState {
        BucketState { tokens: t(tokens), refilled_at: EpochMillis(ms) }
    }

    #[test]
    fn the_watermarks_are_seven_eighths_and_three_quarters() {
        let b = BucketBound { max: 1000 };
        assert_eq!((b.high(), b.low()), (875, 750));
        assert_eq!(BucketBound::DEFAULT.max, 1_000_000);
    }

    #[test]
    fn loss_is_what_a_reset_could_admit() {
        let now = EpochMillis(0);
        assert_eq!(loss(at(10, 0), &limit(), now), t(0), "full: nothing");
        assert_eq!(loss(at(9, 0), &limit(), now), t(1));
        assert_eq!(loss(at(-10, 0), &limit(), now), t(20), "debt counts in full");
        // 6 minutes refill one token (360 s per token).
        assert_eq!(loss(at(9, 0), &limit(), EpochMillis(360_000)), t(0));
    }

    #[test]
    fn cold_least_loss_oldest_go_first_and_hot_buckets_last() {
        let now = EpochMillis(10_000);
        let lim = limit();
        let used = |ms, count| Use { at: EpochMillis(ms), count };
        let hot_empty = Rank::of(at(0, 9_900), &lim, used(9_900, 10), now);
        let hot_nearly_full = Rank::of(at(8, 9_900), &lim, used(9_900, 2), now);
        let sprayed_just_now = Rank::of(at(9, 9_900), &lim, Use::first(EpochMillis(9_900)), now);
        let cold_empty = Rank::of(at(0, 1_000), &lim, used(1_000, 10), now);
        let cold_one_used_old = Rank::of(at(9, 1_000), &lim, used(1_000, 1), now);
        let cold_one_used_new = Rank::of(at(9, 5_000), &lim, used(5_000, 1), now);
        assert!(!sprayed_just_now.hot && hot_nearly_full.hot);
        let mut ranks =
            vec![hot_empty, cold_empty, hot_nearly_full, cold_one_used_new, sprayed_just_now, cold_one_used_old];
        ranks.sort();
        assert_eq!(
            ranks,
            [cold_one_used_old, cold_one_used_new, sprayed_just_now, cold_empty, hot_nearly_full, hot_empty]
        );
        assert_eq!(cutoff(&mut ranks, 2), Some(cold_one_used_new));
        assert_eq!(cutoff(&mut ranks, 6), Some(hot_empty));
        assert_eq!(cutoff(&mut ranks, 0), None);
        assert_eq!(cutoff(&mut ranks, 7), None);
    }
}

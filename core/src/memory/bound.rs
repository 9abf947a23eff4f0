//! The embedded store's bound on YAML-rule buckets ([`BucketBound`]): room is taken before a
//! new bucket is inserted, so the store never holds more than the bound; a background trim
//! ([`MemoryStore::trim`], due above the high watermark) forgets the buckets whose loss admits
//! the least ([`crate::pressure`]) down to the low watermark. The request path never scans.

use super::{MemoryStore, Slot};
use crate::bucket::{BucketState, ChargeOutcome, EpochMillis, Millitokens};
use crate::pressure::{BucketBound, Rank, cutoff, loss};
use crate::store::BucketRequest;
use std::sync::atomic::Ordering;

/// What the bound is doing: for the store's metrics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Pressure {
    /// YAML-rule buckets held.
    pub live: usize,
    pub bound: BucketBound,
    /// Buckets dropped because they refilled to full (no exactness lost).
    pub refilled_dropped: u64,
    /// Buckets dropped by a trim, and new keys decided but not kept at the bound.
    pub pressure_dropped: u64,
    /// What those could admit beyond the exact answers, at most: the sum of their losses.
    pub pressure_lost: Millitokens,
}

impl Slot {
    fn rank(&self, now: EpochMillis) -> Rank {
        Rank::of(self.state, &self.limit, self.used, now)
    }
}

impl MemoryStore {
    /// The store, keeping at most `bound` YAML-rule buckets (default [`BucketBound::DEFAULT`]).
    pub fn with_bound(self, bound: BucketBound) -> Self {
        MemoryStore { bound, ..self }
    }

    pub fn pressure(&self) -> Pressure {
        Pressure {
            live: self.live.load(Ordering::Acquire),
            bound: self.bound,
            refilled_dropped: self.refilled_dropped.load(Ordering::Relaxed),
            pressure_dropped: self.pressure_dropped.load(Ordering::Relaxed),
            pressure_lost: Millitokens(self.pressure_lost.load(Ordering::Relaxed)),
        }
    }

    /// Whether the store holds more than the high watermark: call [`MemoryStore::trim`]. One
    /// atomic load, for a caller that polls.
    pub fn needs_trim(&self) -> bool {
        self.live.load(Ordering::Acquire) > self.bound.high()
    }

    /// Above the high watermark, forgets the lowest-ranked buckets down to the low watermark;
    /// how many it dropped. One pass over the buckets to rank them (a 24-byte rank each, held
    /// for the call) and one to drop, each locking one shard of the map at a time: call it
    /// off the request path. A bucket charged between the passes is ranked again, so one that
    /// turned hot is kept.
    pub fn trim(&self, now: EpochMillis) -> usize {
        let live = self.live.load(Ordering::Acquire);
        if live <= self.bound.high() {
            return 0;
        }
        let target = live - self.bound.low();
        let mut ranks: Vec<Rank> = self.buckets.iter().map(|e| e.value().rank(now)).collect();
        let count = target.min(ranks.len());
        let Some(cut) = cutoff(&mut ranks, count) else {
            return 0;
        };
        drop(ranks);
        let (mut dropped, mut lost) = (0_usize, 0_i64);
        self.buckets.retain(|_, slot| {
            if dropped >= target {
                return true;
            }
            let rank = slot.rank(now);
            if rank > cut {
                return true;
            }
            dropped += 1;
            lost = lost.saturating_add(rank.loss.0);
            false
        });
        self.live.fetch_sub(dropped, Ordering::AcqRel);
        self.pressure_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        self.pressure_lost.fetch_add(lost, Ordering::Relaxed);
        dropped
    }

    /// Takes room for one new bucket; `false` at the bound.
    pub(super) fn take_room(&self) -> bool {
        let max = self.bound.max;
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// A new key at the bound: its charges on a new bucket, which is not kept (as if dropped
    /// at once: its loss is counted).
    pub(super) fn decide_unkept(&self, request: &BucketRequest, now: EpochMillis) -> Vec<ChargeOutcome> {
        let mut state = BucketState::full(&request.limit, now);
        let outcomes = state.charge_all(&request.limit, now, &request.charges);
        self.pressure_dropped.fetch_add(1, Ordering::Relaxed);
        self.pressure_lost.fetch_add(loss(state, &request.limit, now).0, Ordering::Relaxed);
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{BucketLimit, Charge};
    use crate::keys::BucketKey;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// 10 per hour, one token per charge.
    fn request(entity: &str) -> BucketRequest {
        BucketRequest {
            key: BucketKey { namespace: "ns".into(), resource: "r".into(), entity: entity.into() },
            limit: BucketLimit::per_period(10, 10, 3600),
            charges: vec![Charge { cost: 1, allow_debt: false }],
            reserve: true,
        }
    }

    fn bounded(max: usize) -> MemoryStore {
        MemoryStore::new().with_bound(BucketBound { max })
    }

    #[test]
    fn new_keys_at_the_bound_are_decided_and_not_kept() {
        let store = bounded(8);
        let now = EpochMillis(0);
        for i in 0..20 {
            let out = store.charge_bucket(&request(&format!("spray-{i}")), now);
            assert_eq!((out[0].admitted, out[0].tokens), (true, Millitokens(9000)));
        }
        assert_eq!(store.len(), 8);
        let p = store.pressure();
        assert_eq!((p.live, p.pressure_dropped, p.pressure_lost), (8, 12, Millitokens(12_000)));
        // The kept ones stay exact.
        let out = store.charge_bucket(&request("spray-0"), now);
        assert_eq!(out[0].tokens, Millitokens(8000));
    }

    #[test]
    fn a_trim_forgets_the_least_loss_first_and_keeps_the_drained_bucket() {
        let store = bounded(16);
        let t0 = EpochMillis(0);
        for _ in 0..10 {
            store.charge_bucket(&request("drained"), t0);
        }
        for i in 0..15 {
            store.charge_bucket(&request(&format!("once-{i}")), EpochMillis(i));
        }
        assert!(store.needs_trim(), "16 > 14");
        // 5 s later nothing is hot; 4 go (16 down to 12): the oldest of the one-token losses.
        let now = EpochMillis(5_000);
        assert_eq!(store.trim(now), 4);
        assert!(!store.needs_trim());
        assert_eq!(store.len(), 12);
        assert_eq!(store.trim(now), 0, "below the high watermark: nothing to do");
        let p = store.pressure();
        assert_eq!((p.live, p.pressure_dropped), (12, 4));
        // Each had refilled 13 millitokens of its token in 5 s (360 s per token).
        assert_eq!(p.pressure_lost, Millitokens(4 * (1000 - 13)));
        for i in 0..4 {
            let fresh = store.charge_bucket(&request(&format!("once-{i}")), now);
            assert_eq!(fresh[0].tokens, Millitokens(9000), "once-{i} was forgotten");
        }
        let kept = store.charge_bucket(&request("once-4"), now);
        assert_eq!(kept[0].tokens, Millitokens(8013), "once-4 was kept");
        let drained = store.charge_bucket(&request("drained"), now);
        assert!(!drained[0].admitted, "the drained bucket was kept: still exact");
        // The four came back as new buckets: 16 again, a trim is due again.
        assert_eq!((store.len(), store.needs_trim()), (16, true));
    }

    #[test]
    fn a_spray_from_threads_never_passes_the_bound_and_the_hot_bucket_stays_exact() {
        let store = Arc::new(bounded(64));
        let admitted = Arc::new(AtomicUsize::new(0));
        let now = EpochMillis(0);
        // Charged twice before the spray: hot from then on.
        for _ in 0..2 {
            assert!(store.charge_bucket(&request("hot"), now)[0].admitted);
        }
        admitted.fetch_add(2, Ordering::Relaxed);
        std::thread::scope(|s| {
            for thread in 0..3 {
                let store = store.clone();
                s.spawn(move || {
                    for i in 0..2000 {
                        store.charge_bucket(&request(&format!("spray-{thread}-{i}")), now);
                        assert!(store.pressure().live <= 64);
                        if i % 100 == 0 {
                            store.trim(now);
                        }
                    }
                });
            }
            let (store, admitted) = (store.clone(), admitted.clone());
            s.spawn(move || {
                for _ in 0..500 {
                    if store.charge_bucket(&request("hot"), now)[0].admitted {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
        assert!(store.len() <= 64, "{}", store.len());
        assert_eq!(store.len(), store.pressure().live);
        assert_eq!(admitted.load(Ordering::Relaxed), 10, "the hot bucket admitted exactly its capacity");
    }
}

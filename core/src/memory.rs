//! The embedded store: buckets in a sharded concurrent map inside the server process.
//!
//! Each bucket is updated under its shard's lock, so concurrent requests never over-admit.
//! A bucket that has refilled to full is equivalent to one that does not exist, so
//! [`MemoryStore::evict_full`] drops those; memory is bounded by the buckets that are
//! still refilling.

use crate::bucket::{BucketLimit, BucketState, ChargeOutcome, EpochMillis};
use crate::keys::BucketKey;
use crate::store::{BucketRequest, BucketStore, StoreError};
use dashmap::DashMap;

#[derive(Debug)]
struct Slot {
    state: BucketState,
    /// The limit of the last charge, used to tell when the bucket is full again.
    limit: BucketLimit,
}

/// In-process buckets.
#[derive(Debug, Default)]
pub struct MemoryStore {
    buckets: DashMap<BucketKey, Slot>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Drops every bucket that has refilled to its capacity by `now`; returns how many.
    pub fn evict_full(&self, now: EpochMillis) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, slot| slot.state.refilled(&slot.limit, now).tokens < slot.limit.capacity);
        before.saturating_sub(self.buckets.len())
    }

    /// Applies one bucket's charges atomically.
    pub fn charge_bucket(&self, request: &BucketRequest, now: EpochMillis) -> Vec<ChargeOutcome> {
        if let Some(mut slot) = self.buckets.get_mut(&request.key) {
            slot.limit = request.limit;
            return slot.state.charge_all(&request.limit, now, &request.charges);
        }
        let mut slot = self
            .buckets
            .entry(request.key.clone())
            .or_insert_with(|| Slot { state: BucketState::full(&request.limit, now), limit: request.limit });
        slot.limit = request.limit;
        slot.state.charge_all(&request.limit, now, &request.charges)
    }
}

#[async_trait::async_trait]
impl BucketStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn charge(
        &self,
        requests: &[BucketRequest],
        now: EpochMillis,
    ) -> Result<Vec<Vec<ChargeOutcome>>, StoreError> {
        Ok(requests.iter().map(|r| self.charge_bucket(r, now)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{Charge, Millitokens};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn request(entity: &str, capacity: u64, cost: u64) -> BucketRequest {
        BucketRequest {
            key: BucketKey { namespace: "ns".into(), resource: "r".into(), entity: entity.into() },
            limit: BucketLimit::per_period(capacity, capacity, 86_400),
            charges: vec![Charge { cost, allow_debt: false }],
        }
    }

    #[test]
    fn concurrent_threads_admit_exactly_the_capacity() {
        let store = Arc::new(MemoryStore::new());
        let admitted = Arc::new(AtomicUsize::new(0));
        let now = EpochMillis(1_000_000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let store = store.clone();
                let admitted = admitted.clone();
                s.spawn(move || {
                    for _ in 0..500 {
                        if store.charge_bucket(&request("hot", 1000, 1), now)[0].admitted {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn full_buckets_are_evicted_and_refilling_ones_kept() {
        let store = MemoryStore::new();
        let t0 = EpochMillis(0);
        store.charge_bucket(&request("used", 10, 1), t0);
        store.charge_bucket(&request("checked", 10, 0), t0);
        assert_eq!(store.len(), 2);
        assert_eq!(store.evict_full(t0), 1);
        assert_eq!(store.len(), 1);
        // One token per 8640 s: full again after that.
        assert_eq!(store.evict_full(EpochMillis(8_639_000)), 0);
        assert_eq!(store.evict_full(EpochMillis(8_640_000)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn a_smaller_capacity_clamps_the_stored_balance() {
        let store = MemoryStore::new();
        let t0 = EpochMillis(0);
        store.charge_bucket(&request("b", 10, 1), t0);
        let out = store.charge_bucket(&request("b", 3, 1), t0);
        assert_eq!(out[0].tokens, Millitokens(2000));
    }
}

//! The rejection cache (after zae-limiter's ADR-147 `RejectionCache`): the last image of
//! each bucket shard that showed it short, so that a request which cannot fit is rejected
//! without a DynamoDB call.
//!
//! Only ever used to **reject** (and to steer the shard choice away from known-short
//! shards): admission always needs a conditional write the cache does not build, so it
//! cannot over-admit. Its only error is a bounded under-admission when tokens come back by
//! a route the projection cannot see (a refund or reset by the Python library, the
//! aggregator's proactive refill, an operator): an entry is trusted for at most
//! [`TRUST`], and never past the image's `ttl`.
//!
//! Bounded: at most [`MAX_BUCKETS`] buckets; when full, stale entries are purged and, if
//! it is still full, nothing new is remembered (one more DynamoDB call, never a wrong
//! answer).

use dashmap::DashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zael_core::bucket::BucketLimit;

/// How long an image is trusted to reject (the library's `DEFAULT_REJECTION_CACHE_TTL`).
pub(crate) const TRUST: Duration = Duration::from_secs(1);
/// Most buckets remembered (the library's `DEFAULT_REJECTION_CACHE_SIZE`).
pub(crate) const MAX_BUCKETS: usize = 10_000;

/// The `hits` limit of one shard as an image showed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub tk: i64,
    pub rf: i64,
    /// The whole limit (the shard holds its share of `shard_count`).
    pub limit: BucketLimit,
    pub shard_count: i64,
    /// Epoch ms from which the image says nothing: its `ttl` (an expired item takes the slow
    /// path, which refreshes it), `i64::MAX` without one.
    pub until_ms: i64,
}

#[derive(Copy, Clone, Debug)]
struct Entry {
    short: Short,
    stored: Instant,
}

impl Entry {
    fn trusted(&self, now_ms: i64, at: Instant) -> bool {
        at.saturating_duration_since(self.stored) < TRUST && now_ms < self.short.until_ms
    }
}

/// Shards known short, per bucket.
pub(crate) struct Rejections<K: Eq + Hash> {
    buckets: DashMap<K, Vec<(i64, Entry)>>,
    len: AtomicUsize,
    hits: AtomicU64,
}

impl<K: Eq + Hash + Clone> Rejections<K> {
    pub fn new() -> Self {
        Rejections { buckets: DashMap::new(), len: AtomicUsize::new(0), hits: AtomicU64::new(0) }
    }

    /// Rejections answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers that `shard` of `bucket` is short, as `short` shows.
    pub fn remember(&self, bucket: &K, shard: i64, short: Short) {
        let entry = Entry { short, stored: Instant::now() };
        if let Some(mut shards) = self.buckets.get_mut(bucket) {
            match shards.iter_mut().find(|(s, _)| *s == shard) {
                Some(slot) => slot.1 = entry,
                None => shards.push((shard, entry)),
            }
            return;
        }
        if self.len.load(Ordering::Relaxed) >= MAX_BUCKETS {
            self.purge();
            if self.len.load(Ordering::Relaxed) >= MAX_BUCKETS {
                return;
            }
        }
        if self.buckets.insert(bucket.clone(), vec![(shard, entry)]).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `shard` of `bucket` (an image showed it can admit, or cannot be judged).
    pub fn forget(&self, bucket: &K, shard: i64) {
        if self.len.load(Ordering::Relaxed) == 0 || !self.buckets.contains_key(bucket) {
            return;
        }
        let mut emptied = false;
        if let Some(mut shards) = self.buckets.get_mut(bucket) {
            shards.retain(|(s, _)| *s != shard);
            emptied = shards.is_empty();
        }
        if emptied && self.buckets.remove_if(bucket, |_, shards| shards.is_empty()).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The trusted entries of `bucket`, by shard.
    pub fn trusted(&self, bucket: &K, now_ms: i64) -> Vec<(i64, Short)> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let at = Instant::now();
        match self.buckets.get(bucket) {
            None => Vec::new(),
            Some(shards) => shards.iter().filter(|(_, e)| e.trusted(now_ms, at)).map(|(s, e)| (*s, e.short)).collect(),
        }
    }

    /// Drops every entry past its trust window.
    fn purge(&self) {
        let at = Instant::now();
        self.buckets.retain(|_, shards| {
            shards.retain(|(_, e)| at.saturating_duration_since(e.stored) < TRUST);
            !shards.is_empty()
        });
        self.len.store(self.buckets.len(), Ordering::Relaxed);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(tk: i64, until_ms: i64) -> Short {
        Short { tk, rf: 0, limit: BucketLimit::from_table(1000, 1000, 1000), shard_count: 1, until_ms }
    }

    #[test]
    fn remembers_replaces_and_forgets_shards() {
        let cache: Rejections<&str> = Rejections::new();
        assert!(cache.trusted(&"a", 0).is_empty());
        cache.remember(&"a", 0, short(1, i64::MAX));
        cache.remember(&"a", 1, short(2, i64::MAX));
        cache.remember(&"a", 0, short(3, i64::MAX));
        let mut got = cache.trusted(&"a", 0);
        got.sort_by_key(|(s, _)| *s);
        assert_eq!(got.iter().map(|(s, e)| (*s, e.tk)).collect::<Vec<_>>(), [(0, 3), (1, 2)]);
        cache.forget(&"a", 0);
        assert_eq!(cache.trusted(&"a", 0).len(), 1);
        cache.forget(&"a", 1);
        assert_eq!(cache.len(), 0);
        assert!(cache.trusted(&"a", 0).is_empty());
    }

    #[test]
    fn never_trusted_past_the_item_ttl() {
        let cache: Rejections<&str> = Rejections::new();
        cache.remember(&"a", 0, short(0, 5000));
        assert_eq!(cache.trusted(&"a", 4999).len(), 1);
        assert!(cache.trusted(&"a", 5000).is_empty());
    }

    #[test]
    fn bounded() {
        let cache: Rejections<usize> = Rejections::new();
        for i in 0..MAX_BUCKETS + 10 {
            cache.remember(&i, 0, short(0, i64::MAX));
        }
        assert_eq!(cache.len(), MAX_BUCKETS);
        assert!(cache.trusted(&(MAX_BUCKETS + 5), 0).is_empty(), "not remembered while full of fresh entries");
    }
}

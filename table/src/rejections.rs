//! The one rejection cache of the DynamoDB store (after zae-limiter's ADR-147
//! `RejectionCache`), for YAML-rule and entity buckets alike: per bucket, the last image of
//! each shard that showed a request short, so that a request which cannot fit is rejected
//! without a DynamoDB call.
//!
//! Only ever used to **reject** (and to steer the shard choice away from known-short
//! shards): admission always needs a conditional write the cache does not build, so it
//! cannot over-admit. Its only error is a bounded under-admission when tokens come back by
//! a route the projection cannot see (a refund or reset by the Python library, the
//! aggregator's proactive refill, an operator): an image is trusted for at most [`TRUST`],
//! and never past its `ttl`. What an image proves is for the caller to judge (a YAML rule
//! with `plan::decide`, an entity acquire with the engine); the cache only keeps images.
//!
//! Bounded: at most [`MAX_BUCKETS`] buckets ([`BoundedCache`]); a bucket not remembered costs
//! one more DynamoDB call, never a wrong answer.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cache::BoundedCache;
use crate::item::BucketImage;

/// How long an image is trusted to reject (the library's `DEFAULT_REJECTION_CACHE_TTL`).
pub(crate) const TRUST: Duration = Duration::from_secs(1);
/// Most buckets remembered (the library's `DEFAULT_REJECTION_CACHE_SIZE`).
pub(crate) const MAX_BUCKETS: usize = 10_000;

/// A shard's image and when it was seen.
#[derive(Clone, Debug)]
struct Seen {
    shard: i64,
    at: Instant,
    image: Arc<BucketImage>,
}

impl Seen {
    fn trusted(&self, now_ms: i64, at: Instant) -> bool {
        at.saturating_duration_since(self.at) < TRUST && self.image.ttl.is_none_or(|t| now_ms < t.saturating_mul(1000))
    }
}

/// Shard images that showed a request short, per bucket.
pub(crate) struct Rejections<K> {
    buckets: BoundedCache<K, Arc<Vec<Seen>>>,
    hits: AtomicU64,
}

impl<K: Eq + Hash + Clone> Rejections<K> {
    pub fn new() -> Self {
        Rejections { buckets: BoundedCache::new(MAX_BUCKETS, Some(TRUST)), hits: AtomicU64::new(0) }
    }

    /// Rejections answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers `image` as what `shard` of `bucket` holds (replacing the shard's last one).
    pub fn remember(&self, bucket: &K, shard: i64, image: BucketImage) {
        let at = Instant::now();
        let mut shards: Vec<Seen> = self.buckets.get(bucket).map(|s| s.to_vec()).unwrap_or_default();
        shards.retain(|s| s.shard != shard && at.saturating_duration_since(s.at) < TRUST);
        shards.push(Seen { shard, at, image: Arc::new(image) });
        self.buckets.insert(bucket.clone(), Arc::new(shards));
    }

    /// Forgets `shard` of `bucket` (an image showed it can admit or cannot be judged, or this
    /// process gave tokens back that the image does not show).
    pub fn forget(&self, bucket: &K, shard: i64) {
        let Some(shards) = self.buckets.get(bucket) else { return };
        let kept: Vec<Seen> = shards.iter().filter(|s| s.shard != shard).cloned().collect();
        if kept.is_empty() {
            self.buckets.remove(bucket);
        } else {
            self.buckets.insert(bucket.clone(), Arc::new(kept));
        }
    }

    /// The images of `bucket` trusted at `now_ms`, by shard.
    pub fn trusted(&self, bucket: &K, now_ms: i64) -> Vec<(i64, Arc<BucketImage>)> {
        let at = Instant::now();
        self.buckets
            .get(bucket)
            .map(|shards| shards.iter().filter(|s| s.trusted(now_ms, at)).map(|s| (s.shard, s.image.clone())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(rf: i64, ttl: Option<i64>) -> BucketImage {
        BucketImage {
            rf,
            shard_count: 1,
            ttl,
            vu: None,
            disabled: false,
            bypass: None,
            limits: Vec::new(),
            unsupported: None,
            cascades_to: None,
        }
    }

    #[test]
    fn remembers_replaces_and_forgets_shards() {
        let cache: Rejections<&str> = Rejections::new();
        assert!(cache.trusted(&"a", 0).is_empty());
        cache.remember(&"a", 0, image(1, None));
        cache.remember(&"a", 1, image(2, None));
        cache.remember(&"a", 0, image(3, None));
        let mut got = cache.trusted(&"a", 0);
        got.sort_by_key(|(s, _)| *s);
        assert_eq!(got.iter().map(|(s, i)| (*s, i.rf)).collect::<Vec<_>>(), [(0, 3), (1, 2)]);
        cache.forget(&"a", 0);
        assert_eq!(cache.trusted(&"a", 0).len(), 1);
        cache.forget(&"a", 1);
        assert!(cache.trusted(&"a", 0).is_empty());
    }

    #[test]
    fn never_trusted_past_the_item_ttl() {
        let cache: Rejections<&str> = Rejections::new();
        cache.remember(&"a", 0, image(0, Some(5)));
        assert_eq!(cache.trusted(&"a", 4999).len(), 1);
        assert!(cache.trusted(&"a", 5000).is_empty());
    }
}

//! The one bounded cache type of the DynamoDB store: every in-process map it keeps (namespace
//! ids, failure policies, shard counts, bypass stamps, parents, config items, resolved
//! limits, recent rejections of entity buckets, warnings already logged) is a
//! [`BoundedCache`]. It holds at most its capacity; past it quick_cache's S3-FIFO policy
//! drops the coldest entries one at a time, so a key spray costs the store its coldest
//! knowledge, not all of it at once (the maps were cleared whole when full). With a
//! lifetime, an entry older than it reads as absent.
//!
//! Everything cached is knowledge that only saves calls or steers a choice: a lost entry
//! costs a read (or a log line), never a wrong decision, because every admission is a
//! conditional write.

use quick_cache::Equivalent;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A bounded, concurrent map of cloneable values, each stamped with an instant.
pub(crate) struct BoundedCache<K, V> {
    entries: quick_cache::sync::Cache<K, (Instant, V)>,
    ttl: Option<Duration>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// At most `capacity` entries; with `ttl`, an entry stamped longer ago reads as absent.
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        BoundedCache { entries: quick_cache::sync::Cache::new(capacity), ttl }
    }

    /// The value and its stamp, unless absent or past the lifetime. `key` may be a borrowed
    /// form of the key (`&str` for `String`).
    pub(crate) fn get_stamped<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<(Instant, V)> {
        let (at, value) = self.entries.get(key)?;
        match self.ttl {
            Some(ttl) if at.elapsed() >= ttl => None,
            _ => Some((at, value)),
        }
    }

    /// The value, unless absent or past the lifetime.
    pub(crate) fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<V> {
        self.get_stamped(key).map(|(_, v)| v)
    }

    /// Stores `value` stamped now.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.insert_stamped(key, Instant::now(), value);
    }

    /// Stores `value` stamped `at` (a value derived from older reads carries their age).
    pub(crate) fn insert_stamped(&self, key: K, at: Instant, value: V) {
        self.entries.insert(key, (at, value));
    }

    /// Stores `value` unless the key holds a live entry; whether it was stored. Not atomic:
    /// two callers racing on one key may both store (it serves once-per-key log lines).
    pub(crate) fn insert_if_absent(&self, key: K, value: V) -> bool {
        if self.get_stamped(&key).is_some() {
            return false;
        }
        self.insert(key, value);
        true
    }

    pub(crate) fn contains<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> bool {
        self.get_stamped(key).is_some()
    }

    pub(crate) fn remove<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_capacity_and_lifetime() {
        let cache = BoundedCache::new(100, None);
        for i in 0..10_000 {
            cache.insert(i, i * 2);
        }
        let live = (0..10_000).filter(|i| cache.contains(i)).count();
        assert!(live <= 110, "{live} entries kept");
        assert_eq!(cache.get(&9_999), Some(19_998), "the newest entry is kept");

        let timed = BoundedCache::new(10, Some(Duration::from_millis(50)));
        timed.insert("a", 1);
        assert_eq!(timed.get(&"a"), Some(1));
        timed.insert_stamped("b", Instant::now() - Duration::from_millis(60), 2);
        assert_eq!(timed.get(&"b"), None, "stamped past the lifetime");
        assert!(timed.insert_if_absent("b", 3), "an expired entry counts as absent");
        assert!(!timed.insert_if_absent("b", 4));
        assert_eq!(timed.get(&"b"), Some(3));
        timed.remove(&"b");
        assert_eq!(timed.get(&"b"), None);

        let none = BoundedCache::new(10, Some(Duration::ZERO));
        none.insert(1, 1);
        assert_eq!(none.get(&1), None, "a zero lifetime caches nothing");
    }
}

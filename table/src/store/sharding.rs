//! Shard counts: the cached count, the shard a fast path draws, and doubling (§11.8).

use rand::Rng;
use std::sync::Arc;
use tokio::task::JoinSet;
use zael_core::store::StoreError;

use super::expr::Ex;
use super::request::{parse, path, unavailable};
use super::{BucketId, Inner};
use crate::db::{DbError, Update};
use crate::keys::MAX_SHARD_COUNT;

/// Other shards a rejected speculative write probes before the rejection stands (the
/// library's `_MAX_SHARD_RETRIES`), YAML-rule and entity buckets alike.
pub(super) const SHARD_RETRIES: usize = 2;

/// The shards a rejected write on `first` of a bucket of `count` shards probes next: up to
/// [`SHARD_RETRIES`] untried ones, each drawn at random.
pub(super) fn other_shards(first: i64, count: i64) -> Vec<i64> {
    let mut untried: Vec<i64> = (0..count).filter(|s| *s != first).collect();
    let mut drawn = Vec::with_capacity(SHARD_RETRIES);
    while drawn.len() < SHARD_RETRIES && !untried.is_empty() {
        drawn.push(untried.swap_remove(rand::rng().random_range(0..untried.len())));
    }
    drawn
}

impl Inner {
    pub(super) fn cached_count(&self, id: &BucketId) -> i64 {
        self.caches.shard_counts.get(id).unwrap_or(1)
    }

    /// Grows the cached shard count (never lowers it) and returns the larger one.
    pub(super) fn learn_count(&self, id: &BucketId, count: i64) -> i64 {
        let count = count.clamp(1, MAX_SHARD_COUNT);
        let known = self.cached_count(id);
        if count > known {
            self.caches.shard_counts.insert(id.clone(), count);
            return count;
        }
        known
    }

    /// A shard drawn uniformly from the cached count, avoiding the shards in `avoid` when
    /// some other is left.
    pub(super) fn select_shard(&self, id: &BucketId, avoid: &[i64]) -> (i64, i64) {
        let count = self.cached_count(id);
        if count <= 1 {
            return (0, count);
        }
        let open: Vec<i64> = (0..count).filter(|s| !avoid.contains(s)).collect();
        let shard = if open.is_empty() {
            rand::rng().random_range(0..count)
        } else {
            open[rand::rng().random_range(0..open.len())]
        };
        (shard, count)
    }

    /// Doubles `shard_count` through shard 0 (§11.8); returns the count to use.
    pub(super) async fn double(self: &Arc<Self>, id: &BucketId, current: i64) -> Result<i64, StoreError> {
        if current >= MAX_SHARD_COUNT {
            return Ok(self.learn_count(id, current));
        }
        let new = current * 2;
        let mut ex = Ex::default();
        ex.num(":old", current).num(":new", new);
        let req = ex.req(id.pk(0), "SET shard_count = :new".into(), vec!["shard_count = :old".into()]);
        let count = match self.db.update(req).await {
            Ok(Update::Done(_)) => {
                path("double");
                tracing::info!(resource = %id.resource, from = current, to = new, "doubled a bucket's shard count");
                self.propagate(id, current, new).await;
                new
            }
            Ok(Update::ConditionFailed(item)) => {
                let winner = item.as_ref().map(parse).transpose()?.map_or(current, |i| i.shard_count);
                current.max(winner)
            }
            Err(DbError::Conflict) => current,
            Err(e) => return Err(unavailable(e)),
        };
        Ok(self.learn_count(id, count))
    }

    /// Stamps the new count on shards `1..old` (the library's `_propagate_shard_count`).
    async fn propagate(self: &Arc<Self>, id: &BucketId, old: i64, new: i64) {
        let mut set = JoinSet::new();
        for target in 1..old {
            let me = Arc::clone(self);
            let pk = id.pk(target);
            set.spawn(async move {
                let mut ex = Ex::default();
                ex.num(":new", new);
                let req = ex.req(pk, "SET shard_count = :new".into(), vec!["shard_count < :new".into()]);
                me.db.update(req).await
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = ?e, "shard count propagation incomplete");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_untried_distinct_and_at_most_two() {
        assert!(other_shards(0, 1).is_empty());
        assert_eq!(other_shards(0, 2), [1]);
        for _ in 0..50 {
            let drawn = other_shards(2, 5);
            assert_eq!(drawn.len(), SHARD_RETRIES);
            assert!(drawn[0] != drawn[1] && !drawn.contains(&2) && drawn.iter().all(|s| (0..5).contains(s)));
        }
    }
}

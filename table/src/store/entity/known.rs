//! The rejection cache ([`crate::rejections`]) on entity buckets: the last image of each shard
//! that showed a requested limit short, trusted for at most 1 s and never past the image's
//! `ttl` or `vu`. A request is rejected from memory only when every shard of the
//! entity (or, under cascade, of its parent) is known short for what it asks; admission always
//! takes a conditional write, so the cache cannot over-admit.

use std::sync::Arc;
use zael_core::acquire;
use zael_core::bucket::EpochMillis;
use zael_core::store::LimitReport;

use super::super::{BucketId, Inner};
use super::Side;
use crate::item::BucketImage;

impl Inner {
    /// Remembers a shard's image after it proved a request short.
    pub(in super::super) fn remember_short(&self, id: &BucketId, shard: i64, image: &BucketImage) {
        if self.rejection_cache {
            self.caches.rejections.remember(id, shard, image.clone());
        }
    }

    /// Forgets a shard's image: tokens this process gave back must not be hidden by it (the
    /// library's `build_composite_adjust` forgets the shard the same way).
    pub(in super::super) fn forget_short(&self, id: &BucketId, shard: i64) {
        self.caches.rejections.forget(id, shard);
    }

    /// The trusted image of a single-shard bucket's shard the cache remembers short, and the
    /// shard count.
    pub(in super::super) fn short_image(&self, id: &BucketId, now: EpochMillis) -> Option<(Arc<BucketImage>, i64)> {
        if !self.rejection_cache || self.cached_count(id) != 1 {
            return None;
        }
        let (_, image) = self.caches.rejections.trusted(id, now.0).into_iter().find(|(shard, _)| *shard == 0)?;
        (image.shard_count == 1).then_some((image, 1))
    }

    /// The near-empty gate's slots for `side` ([`super::super::near_empty`]): when its bucket
    /// (one shard) is remembered short and the refill since covers the request, how many such
    /// requests it covers (at least one). `None`: not known near empty, not gated.
    pub(super) fn entity_near_empty_slots(&self, side: &Side, now: EpochMillis) -> Option<usize> {
        if !judged_from_memory(side) {
            return None;
        }
        let (image, _) = self.short_image(&side.id, now)?;
        if !judgeable(&image, now) {
            return None;
        }
        let covered = side.plan_on(&image, 0, now, false).admissions()?;
        Some(usize::try_from(covered).unwrap_or(usize::MAX).max(1))
    }

    /// The rejection `side` gets from memory: `Some` when every shard of its bucket is known
    /// short for the request at `now`.
    pub(super) fn entity_known_short(&self, side: &Side, now: EpochMillis) -> Option<Vec<LimitReport>> {
        if !self.rejection_cache || !judged_from_memory(side) {
            return None;
        }
        let count = self.cached_count(&side.id);
        let shards = self.caches.rejections.trusted(&side.id, now.0);
        let mut reports = None;
        for shard in 0..count {
            let (_, image) = shards.iter().find(|(s, _)| *s == shard)?;
            if !judgeable(image, now) {
                return None;
            }
            // A limit with a soft stamp, even a stale one, may admit through the speculative write.
            let stamped = |name: &str| image.limit(name).is_some_and(|l| l.soft.is_some());
            let judged = acquire::decide(&[side.plan_on(image, shard, now, false)], now);
            if !judged.reports.iter().any(|r| r.exceeded && !stamped(&r.name)) {
                return None;
            }
            reports.get_or_insert(judged.reports);
        }
        reports
    }
}

/// Whether a decision of `side` may be judged from remembered images: it requests a limit of
/// the bucket and takes the stored limits (an override is the request's own).
fn judged_from_memory(side: &Side) -> bool {
    !side.declared.is_empty() && !side.overridden
}

/// Whether a remembered image still judges decisions at `now`: enabled, not bypassed, its
/// `vu` (if any) not passed.
fn judgeable(image: &BucketImage, now: EpochMillis) -> bool {
    !image.disabled && image.bypass.is_none() && image.vu.is_none_or(|v| v > now.0)
}

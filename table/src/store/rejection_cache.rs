//! The rejection cache (ADR-147, [`crate::rejections`]) on YAML-rule buckets: which shards
//! recent images showed short, and the charges they prove rejected without a DynamoDB call.

use std::sync::Arc;
use zael_core::bucket::{BucketState, Millitokens};

use super::request::{Ctx, Decided};
use super::{Inner, LIMIT_NAME};
use crate::item::BucketImage;
use crate::plan::{self, Admission, Plan};

/// What the rejection cache knows of a request.
pub(super) enum Known {
    /// Every shard is known short for these charges: rejected without a call.
    Rejected(Decided),
    /// These shards are known short (the fast path avoids them).
    Short(Vec<i64>),
}

impl Inner {
    /// Whether the cache proves this request rejected: only strict charges of cost >= 1
    /// (debt charges must reach the table, check-only ones pass at a balance of 0), and only
    /// when every shard has a trusted image, under the YAML parameters, on which refill up to
    /// now still leaves every charge rejected.
    pub(super) fn known_short(&self, cx: &Ctx<'_>) -> Known {
        if !self.rejection_cache || !plan::strict_tokens(cx.charges) {
            return Known::Short(Vec::new());
        }
        let entries = self.caches.rejections.trusted(&cx.id, cx.now.0);
        if entries.is_empty() {
            return Known::Short(Vec::new());
        }
        let mut short = Vec::with_capacity(entries.len());
        let mut count = self.cached_count(&cx.id);
        let mut best: Option<(i64, Plan)> = None;
        for (shard, image) in entries {
            let Some(h) = image.limit(LIMIT_NAME).filter(|h| cx.params_match(h)) else { continue };
            let (p, cap) = image.shard_balance(h, 0, cx.now);
            let plan = plan::decide(p.tokens.0, p.refilled_at, cap.0, cx.charges, Admission::Enforced);
            if plan.outcomes.iter().any(|o| o.admitted) {
                continue;
            }
            short.push(shard);
            count = count.max(image.shard_count);
            if best.as_ref().is_none_or(|(balance, _)| p.tokens.0 > *balance) {
                best = Some((p.tokens.0, plan));
            }
        }
        match best {
            Some((_, plan)) if (0..count).all(|s| short.contains(&s)) => {
                Known::Rejected(Decided::new(plan.outcomes, count))
            }
            _ => Known::Short(short),
        }
    }

    /// For a single-shard bucket a trusted image showed short, and whose refill since covers
    /// this request (else [`Inner::known_short`] rejected it): how many such requests the
    /// refill covers, at least one. `None`: not near empty as far as the cache knows.
    pub(super) fn near_empty_slots(&self, cx: &Ctx<'_>) -> Option<usize> {
        if !plan::strict_tokens(cx.charges) {
            return None;
        }
        let balance = self.short_balance(cx)?.tokens.0.max(0);
        Some(usize::try_from(balance / cx.total.max(1)).unwrap_or(usize::MAX).max(1))
    }

    /// The trusted image of a single-shard bucket the cache remembers short, under the rule's
    /// parameters. `None`: the cache holds no such image.
    pub(super) fn short_shard(&self, cx: &Ctx<'_>) -> Option<Arc<BucketImage>> {
        let (image, _) = self.short_image(&cx.id, cx.now)?;
        image.limit(LIMIT_NAME).is_some_and(|h| cx.params_match(h)).then_some(image)
    }

    /// The balance, refilled to now, of a single-shard bucket a trusted image showed short
    /// ([`Inner::short_shard`]): what the shared bucket has left as far as this server knows,
    /// for sizing a block from ([`super::reserve`]).
    pub(super) fn short_balance(&self, cx: &Ctx<'_>) -> Option<BucketState> {
        let image = self.short_shard(cx)?;
        let h = image.limit(LIMIT_NAME)?;
        Some(image.shard_balance(h, 0, cx.now).0)
    }

    /// Remembers `shard` as short when `image` shows it cannot give one token (or this
    /// request's largest strict charge) now, and forgets it otherwise. Images with stamps,
    /// unsupported features, other parameters than the YAML's, or a `vu` other than the
    /// trim-only `0` are never remembered.
    pub(super) fn remember(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        if !self.rejection_cache {
            return;
        }
        let hits = image.limit(LIMIT_NAME);
        let judgeable = !image.disabled
            && image.yaml_unsupported().is_none()
            && image.bypass.is_none()
            && image.vu.is_none_or(|vu| vu == 0)
            && hits.is_some_and(|h| h.soft.is_none() && cx.params_match(h));
        if !judgeable {
            self.caches.rejections.forget(&cx.id, shard);
            return;
        }
        self.remember_image(cx, shard, image);
    }

    /// Remembers a shard image known exactly (read, or an item this store created) when it is
    /// short for one token or for this request's largest strict charge, and forgets it otherwise.
    pub(super) fn remember_image(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        if !self.rejection_cache {
            return;
        }
        let Some(h) = image.limit(LIMIT_NAME) else { return self.caches.rejections.forget(&cx.id, shard) };
        let balance = image.shard_balance(h, 0, cx.now).0.tokens.0;
        let largest = cx.charges.iter().filter(|c| !c.allow_debt).map(plan::need).max().unwrap_or(0);
        if balance < largest.max(Millitokens::from_tokens(1).0) {
            self.caches.rejections.remember(&cx.id, shard, image.clone());
        } else {
            self.caches.rejections.forget(&cx.id, shard);
        }
    }
}

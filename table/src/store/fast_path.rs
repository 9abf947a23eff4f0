//! Fast path (§11.2 - §11.4): one speculative UpdateItem on a drawn shard, other shards
//! probed when it fails on a sharded bucket, and the refund of a debit that landed on a
//! bypassed bucket.

use rand::Rng;
use std::sync::Arc;
use zael_core::store::StoreError;

use super::classify::Class;
use super::request::{Ctx, Decided, parse, path, unavailable};
use super::sharding::other_shards;
use super::write::{Credit, Delta, Speculative};
use super::{Inner, LIMIT_NAME};
use crate::db::{DbError, Update};
use crate::item::BucketImage;
use crate::metrics as m;
use crate::plan::{self, Admission};

enum Spec {
    Landed { image: BucketImage, bypass_shape: bool },
    Failed { class: Class, image: Option<BucketImage> },
    Contention,
}

impl Inner {
    pub(super) async fn fast(self: &Arc<Self>, cx: &Ctx<'_>, avoid: &[i64]) -> Result<Decided, StoreError> {
        let (shard, _count) = self.select_shard(&cx.id, avoid);
        let spec = self.speculate_learning(cx, shard).await?;
        let image = match spec {
            Spec::Landed { image, bypass_shape } => return self.landed(cx, shard, image, bypass_shape).await,
            Spec::Contention => return self.slow(cx, shard, None).await,
            Spec::Failed { class, image } => match (class, image) {
                (Class::Missing, _) | (_, None) => return self.slow(cx, shard, None).await,
                (Class::Disabled, Some(image)) => return Ok(self.disabled(cx, &image)),
                (Class::Unsupported(what), _) => return Err(self.unsupported(cx, shard, &what)),
                (Class::Boundary | Class::ParamsChanged | Class::ClearedBypass, Some(image)) => {
                    return self.slow(cx, shard, Some(image.shard_count)).await;
                }
                (Class::Exhausted { wcu }, Some(image)) => {
                    if wcu {
                        if let Some(rejected) = self.fast_reject(cx, shard, &image).await? {
                            return Ok(rejected);
                        }
                        let sc = image.shard_count;
                        if image.wcu_would_refill(cx.now.0) {
                            return self.slow(cx, shard, Some(sc)).await;
                        }
                        let count = self.double(&cx.id, sc).await?;
                        if count > sc {
                            let new_shard = rand::rng().random_range(sc..count);
                            return self.slow(cx, new_shard, Some(count)).await;
                        }
                        return self.slow(cx, shard, Some(count)).await;
                    }
                    image
                }
            },
        };
        let sc = image.shard_count;
        if sc > 1 {
            if self.fits(cx, &image) {
                // Failed only on a trimming `vu = 0` or an expired `ttl`: this shard needs the
                // slow pass that clears it.
                return self.slow(cx, shard, Some(sc)).await;
            }
            for other in other_shards(shard, sc) {
                match self.speculate_learning(cx, other).await? {
                    Spec::Landed { image, bypass_shape } => return self.landed(cx, other, image, bypass_shape).await,
                    Spec::Contention => return self.slow(cx, other, Some(sc)).await,
                    Spec::Failed { class, image: other_image } => match class {
                        Class::Missing | Class::Boundary | Class::ParamsChanged | Class::ClearedBypass => {
                            return self.slow(cx, other, Some(sc)).await;
                        }
                        Class::Unsupported(what) => return Err(self.unsupported(cx, other, &what)),
                        Class::Exhausted { .. } if other_image.as_ref().is_some_and(|i| self.fits(cx, i)) => {
                            return self.slow(cx, other, Some(sc)).await;
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(rejected) = self.fast_reject(cx, shard, &image).await? {
            return Ok(rejected);
        }
        self.slow(cx, shard, Some(sc)).await
    }

    /// One speculative write on `shard`, in the shape the bypass cache calls for; a bypass
    /// shape that finds the stamp gone is forgotten and re-sent in the normal shape.
    async fn speculate_learning(&self, cx: &Ctx<'_>, shard: i64) -> Result<Spec, StoreError> {
        let bypass_shape = self.is_bypassed(&cx.id);
        let mut spec = self.speculate(cx, shard, bypass_shape).await?;
        if bypass_shape && matches!(spec, Spec::Failed { class: Class::ClearedBypass, .. }) {
            self.caches.bypassed.remove(&cx.id);
            spec = self.speculate(cx, shard, false).await?;
        }
        match &spec {
            Spec::Landed { image, .. } | Spec::Failed { image: Some(image), .. } => {
                self.learn(&cx.id, image);
                self.remember(cx, shard, image);
            }
            Spec::Failed { image: None, .. } => self.caches.rejections.forget(&cx.id, shard),
            Spec::Contention => {}
        }
        Ok(spec)
    }

    /// The speculative UpdateItem on `shard`: the normal shape (every condition term of
    /// §11.2, plus pins on the item's `cp`/`ra`/`rp` so a changed YAML limit takes the slow
    /// path that syncs it), or the bypass shape.
    async fn speculate(&self, cx: &Ctx<'_>, shard: i64, bypass_shape: bool) -> Result<Spec, StoreError> {
        let write = Speculative { now: cx.now.0, limits: vec![(LIMIT_NAME, cx.total, Some(cx.limit))], bypass_shape };
        let req = write.render(cx.pk(shard));
        match self.db.update(req).await {
            Ok(Update::Done(item)) => Ok(Spec::Landed { image: parse(&item)?, bypass_shape }),
            Ok(Update::ConditionFailed(item)) => {
                let image = item.as_ref().map(parse).transpose()?;
                let class = self.classify(cx, image.as_ref(), bypass_shape);
                Ok(Spec::Failed { class, image })
            }
            Err(DbError::Conflict) => Ok(Spec::Contention),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Outcomes of a landed speculative write; a normal-shape debit that landed on a live
    /// bypass stamp is given back.
    async fn landed(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        image: BucketImage,
        bypass_shape: bool,
    ) -> Result<Decided, StoreError> {
        let now = cx.now.0;
        let bypass_live = image.bypass.as_ref().is_some_and(|b| b.live(now));
        let debited = if bypass_shape { 0 } else { cx.total };
        if !bypass_shape && bypass_live {
            self.refund(cx, shard, &image).await;
        }
        path(if bypass_shape || bypass_live { "fast_bypass" } else { "fast_admit" });
        metrics::counter!(m::FAST_ADMITS).increment(1);
        let Some(hits) = image.limit(LIMIT_NAME) else {
            let plan = plan::decide(0, cx.now, 0, cx.charges, Admission::Bypass);
            return Ok(Decided::new(plan.outcomes, image.shard_count));
        };
        let share = hits.limit.shard_share(image.shard_count);
        let before = plan::project(hits.tk.saturating_add(debited), image.rf, &share, cx.now);
        let admission = if bypass_shape || bypass_live { Admission::Bypass } else { Admission::Soft };
        let plan = plan::decide(before.tokens.0, before.refilled_at, share.capacity.0, cx.charges, admission);
        Ok(Decided::new(plan.outcomes, image.shard_count))
    }

    /// Gives back the `tk` a normal-shape write took from a bypassed bucket, with the
    /// library's self-trimming credit (§11.10); `tc` keeps the consumption.
    async fn refund(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        let Some(hits) = image.limit(LIMIT_NAME) else { return };
        let ceiling = Some((hits.limit.capacity.0, image.shard_count));
        let limits = vec![Delta { name: LIMIT_NAME, tk: Some(cx.total), tc: None, ceiling }];
        let credit = Credit { limits, vu: Some(None), trim: false };
        let Some(req) = credit.render(cx.pk(shard)) else { return };
        let result = match self.db.update(req).await {
            // Above the ceiling (or unpinnable): credit anyway and force a clamping slow pass.
            Ok(Update::ConditionFailed(_)) => match (Credit { trim: true, ..credit }).render(cx.pk(shard)) {
                Some(trimmed) => self.db.update(trimmed).await.map(|_| ()),
                None => Ok(()),
            },
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
        }
    }
}

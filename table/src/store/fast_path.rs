//! Fast path (§11.2 - §11.4): one speculative UpdateItem on a drawn shard, other shards
//! probed when it fails on a sharded bucket, and the refund of a debit that landed on a
//! bypassed bucket.

use rand::Rng;
use std::sync::Arc;
use zael_core::store::StoreError;

use super::classify::Class;
use super::entity::{Fast, Landed};
use super::request::{Ctx, Decided, path};
use super::sharding::other_shards;
use super::write::{Credit, Delta};
use super::{Inner, LIMIT_NAME};
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
                (Class::Boundary | Class::ParamsChanged, Some(image)) => {
                    return self.slow_from(cx, shard, Some(image.shard_count), Some(image)).await;
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
                return self.slow_from(cx, shard, Some(sc), Some(image)).await;
            }
            for other in other_shards(shard, sc) {
                match self.speculate_learning(cx, other).await? {
                    Spec::Landed { image, bypass_shape } => return self.landed(cx, other, image, bypass_shape).await,
                    Spec::Contention => return self.slow(cx, other, Some(sc)).await,
                    Spec::Failed { class, image: other_image } => match class {
                        Class::Missing | Class::Boundary | Class::ParamsChanged => {
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
        // The refill since the stored `rf` covers it: the slow pass's commit, planned on the
        // failure image, not on a read of it.
        self.slow_from(cx, shard, Some(sc), Some(image)).await
    }

    /// One speculative write on `shard` ([`Inner::speculate`]), what its image teaches, and
    /// why it failed.
    async fn speculate_learning(&self, cx: &Ctx<'_>, shard: i64) -> Result<Spec, StoreError> {
        let limits = [(LIMIT_NAME, cx.total, Some(cx.limit))];
        let (fast, bypass_shape) = self.speculate(&cx.id, &limits, shard, cx.now).await?;
        if let Fast::Admitted(Landed { image, .. }) | Fast::Failed(Some(image)) = &fast {
            self.learn_count(&cx.id, image.shard_count);
            self.remember(cx, shard, image);
        }
        Ok(match fast {
            Fast::Admitted(Landed { image, debited }) => Spec::Landed { image, bypass_shape: !debited },
            Fast::Failed(image) => {
                if image.is_none() {
                    self.caches.rejections.forget(&cx.id, shard);
                }
                Spec::Failed { class: self.classify(cx, image.as_ref(), bypass_shape), image }
            }
            Fast::Contended => Spec::Contention,
        })
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
        let (before, cap) = image.shard_balance(hits, debited, cx.now);
        let admission = if bypass_shape || bypass_live { Admission::Bypass } else { Admission::Soft };
        let plan = plan::decide(before.tokens.0, before.refilled_at, cap.0, cx.charges, admission);
        Ok(Decided::new(plan.outcomes, image.shard_count))
    }

    /// Gives back the `tk` a normal-shape write took from a bypassed bucket, with the
    /// library's self-trimming credit (§11.10); `tc` keeps the consumption.
    async fn refund(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        let Some(hits) = image.limit(LIMIT_NAME) else { return };
        let ceiling = Some((hits.limit.capacity.0, image.shard_count));
        let limits = vec![Delta { name: LIMIT_NAME, tk: Some(cx.total), tc: None, ceiling }];
        let result = self.send_credit(cx.pk(shard), Credit { limits, vu: Some(image.vu), trim: false }).await;
        if let Err(e) = result {
            tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
        }
    }
}

//! Fast path (§11.2 - §11.4): one speculative UpdateItem on a drawn shard, other shards
//! probed when it fails on a sharded bucket, and the refund of a debit that landed on a
//! bypassed bucket.

use rand::Rng;
use std::collections::HashSet;
use std::sync::Arc;
use zael_core::store::StoreError;

use super::classify::Class;
use super::expr::Ex;
use super::request::{Ctx, Decided, hits_attr, parse, path, unavailable};
use super::{Inner, LIMIT_NAME};
use crate::db::{DbError, Update};
use crate::item::BucketImage;
use crate::keys::{self, WCU, WCU_PER_WRITE};
use crate::metrics as m;
use crate::plan::{self, Admission};

/// Other shards a failed fast path probes before rejecting (the library's `_MAX_SHARD_RETRIES`).
const SHARD_RETRIES: usize = 2;

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
            let mut tried = HashSet::from([shard]);
            for _ in 0..SHARD_RETRIES {
                let untried: Vec<i64> = (0..sc).filter(|s| !tried.contains(s)).collect();
                if untried.is_empty() {
                    break;
                }
                let other = untried[rand::rng().random_range(0..untried.len())];
                tried.insert(other);
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
            self.bypassed.remove(&cx.id);
            spec = self.speculate(cx, shard, false).await?;
        }
        match &spec {
            Spec::Landed { image, .. } | Spec::Failed { image: Some(image), .. } => {
                self.learn(&cx.id, image);
                self.remember(cx, shard, image);
            }
            Spec::Failed { image: None, .. } => self.rejections.forget(&cx.id, shard),
            Spec::Contention => {}
        }
        Ok(spec)
    }

    /// The speculative UpdateItem on `shard`: the normal shape (every condition term of
    /// §11.2, plus pins on the item's `cp`/`ra`/`rp` so a changed YAML limit takes the slow
    /// path that syncs it), or the bypass shape.
    async fn speculate(&self, cx: &Ctx<'_>, shard: i64, bypass_shape: bool) -> Result<Spec, StoreError> {
        let now = cx.now.0;
        let mut ex = Ex::default();
        ex.name("#c0", &hits_attr("tc")).num(":p0", cx.total);
        ex.name("#byp", "bypass").num(":vu_now", now);
        ex.name("#wcu_tk", &keys::battr(WCU, "tk")).name("#wcu_tc", &keys::battr(WCU, "tc"));
        ex.num(":neg_wcu", -WCU_PER_WRITE).num(":pos_wcu", WCU_PER_WRITE).num(":thresh_wcu", WCU_PER_WRITE);
        ex.name("#ttl", "ttl").num(":now_epoch", now.div_euclid(1000));
        ex.name("#disabled", "disabled");
        let mut add = vec!["#c0 :p0".to_owned()];
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        if bypass_shape {
            cond.push("#byp > :vu_now".into());
        } else {
            ex.name("#t0", &hits_attr("tk")).num(":n0", -cx.total).num(":h0", cx.total);
            ex.name("#o0", &hits_attr("soft")).name("#oc0", &hits_attr("cp"));
            add.push("#t0 :n0".into());
            cond.push("(#byp > :vu_now OR (#o0 > :vu_now AND attribute_exists(#oc0) AND attribute_exists(#t0)) OR #t0 >= :h0)".into());
            cond.push("(attribute_not_exists(#o0) OR #o0 > :vu_now)".into());
            cond.push("(attribute_not_exists(#byp) OR #byp > :vu_now)".into());
        }
        add.push("#wcu_tk :neg_wcu".into());
        add.push("#wcu_tc :pos_wcu".into());
        cond.push("#wcu_tk >= :thresh_wcu".into());
        cond.push("(attribute_not_exists(#ttl) OR #ttl > :now_epoch)".into());
        cond.push("attribute_not_exists(#disabled)".into());
        if !bypass_shape {
            ex.name("#vu", "vu");
            cond.push("(#byp > :vu_now OR attribute_not_exists(#vu) OR #vu > :vu_now)".into());
            ex.name("#pa0", &hits_attr("ra")).name("#pr0", &hits_attr("rp"));
            ex.num(":pc0", cx.limit.capacity.0)
                .num(":pa0", cx.limit.refill_amount.0)
                .num(":pr0", cx.limit.refill_period_ms);
            cond.push("#oc0 = :pc0 AND #pa0 = :pa0 AND #pr0 = :pr0".into());
        }
        let req = ex.req(cx.pk(shard), format!("ADD {}", add.join(", ")), cond);
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
        let sc = image.shard_count;
        let ceiling = hits.limit.capacity.0.div_euclid(sc);
        let mut ex = Ex::default();
        ex.name("#bt0", &hits_attr("tk")).num(":bd0", cx.total);
        ex.name("#be0", &hits_attr("cp")).num(":be0", hits.limit.capacity.0);
        ex.num(":bk0", ceiling.saturating_sub(cx.total));
        ex.name("#bg0", &hits_attr("gc")).name("#bh0", &hits_attr("sched")).name("#bx0", &hits_attr("rsched"));
        ex.name("#scn", "shard_count").num(":scn", sc);
        ex.name("#vu", "vu").name("#sch", "sched").name("#rsc", "rsched").name("#stz", "sched_tz");
        let shard_pin = if sc == 1 { "(attribute_not_exists(#scn) OR #scn = :scn)" } else { "#scn = :scn" };
        let cond = vec![
            "attribute_exists(PK)".to_owned(),
            "#bt0 <= :bk0".into(),
            "#be0 = :be0".into(),
            "attribute_not_exists(#bg0)".into(),
            "attribute_not_exists(#bh0)".into(),
            "attribute_not_exists(#bx0)".into(),
            shard_pin.into(),
            "attribute_not_exists(#vu)".into(),
            "attribute_not_exists(#sch)".into(),
            "attribute_not_exists(#rsc)".into(),
            "attribute_not_exists(#stz)".into(),
        ];
        let req = ex.req(cx.pk(shard), "ADD #bt0 :bd0".into(), cond);
        let trimmed = match self.db.update(req).await {
            Ok(Update::Done(_)) => return,
            Ok(Update::ConditionFailed(_)) => true,
            Err(e) => {
                tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
                return;
            }
        };
        if trimmed {
            // Above the ceiling (or unpinnable): credit anyway and force a clamping slow pass.
            let mut ex = Ex::default();
            ex.name("#bt0", &hits_attr("tk")).num(":bd0", cx.total).name("#vu", "vu").num(":vz", 0);
            let req = ex.req(cx.pk(shard), "SET #vu = :vz ADD #bt0 :bd0".into(), vec!["attribute_exists(PK)".into()]);
            if let Err(e) = self.db.update(req).await {
                tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
            }
        }
    }
}

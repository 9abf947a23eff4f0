//! The slow path's commit shapes (§11.5): (a) create, (b) the `rf`-locked normal update
//! (with param sync, seeding and stamp removal), (c) the consumption-only retry.

use zael_core::store::StoreError;

use super::entity::{Access, StoredLimit, bucket_read};
use super::planned;
use super::request::{Ctx, Decided, parse, path, unavailable};
use super::slow_path::Step;
use super::write::Consume;
use super::{Inner, LIMIT_NAME};
use crate::db::{DbError, Transact, Update};
use crate::item::{BucketImage, LimitImage, NewBucket, NewLimit, StampRead, new_bucket_item};
use crate::plan::{self, Admission, Plan};
use zael_core::acquire::{self, Params, SideInput, SidePlan};
use zael_core::bucket::Millitokens;

impl Inner {
    /// Shape (a): the complete item under `attribute_not_exists(PK)` with the ConditionCheck
    /// on the (absent) META, in one TransactWriteItems.
    pub(super) async fn create(&self, cx: &Ctx<'_>, shard: i64, count: i64) -> Result<Step, StoreError> {
        let config = rule_limit(cx, false);
        let mut side = acquire::plan_side(rule_input(cx, &config, shard, None, count), cx.now);
        let cap = side.limits[0].start.tokens.0;
        let plan = plan::decide(cap, cx.now, cap, cx.charges, Admission::Enforced);
        if !plan.writes() {
            path("slow_reject");
            return Ok(Step::Done(Decided::new(plan.outcomes, count)));
        }
        charge_rule(&mut side, &plan, Admission::Enforced);
        let ttl = plan::ttl_epoch(cx.now, &[plan::recovery_secs(&cx.limit)]);
        let bucket = NewBucket {
            ns: &cx.id.ns,
            entity: &cx.id.entity,
            resource: &cx.id.resource,
            shard,
            shard_count: count,
            rf: cx.now.0,
            ttl: Some(ttl),
        };
        let rule = &side.limits[0];
        let item = new_bucket_item(
            &bucket,
            &[NewLimit { name: LIMIT_NAME, tk: rule.after().0, limit: rule.limit, tc: rule.usage }],
        );
        let created = BucketImage::parse(&item).ok();
        let items = self.create_shard(&cx.id, item, None)?.to_vec();
        match self.db.transact(items).await {
            Ok(Transact::Done) => {
                path("slow_create");
                self.learn_count(&cx.id, count);
                if let Some(created) = &created {
                    self.remember_image(cx, shard, created);
                }
                Ok(Step::Done(Decided::new(plan.outcomes, count)))
            }
            Ok(Transact::Canceled(codes)) => {
                let failed = |i: usize| codes.get(i).is_some_and(|c| c == "ConditionalCheckFailed");
                if failed(1) {
                    return Err(StoreError::Unavailable(format!(
                        "entity '{}' of resource '{}' has a zae-limiter #META item: a YAML rule's bucket \
                         cannot be created for a library entity (use an `entity:` rule for it)",
                        cx.id.entity, cx.id.resource
                    )));
                }
                if failed(0) {
                    // Another writer created this shard: consumption-only retry on it.
                    return self.retry(cx, shard, &plan, &side, count).await;
                }
                Err(StoreError::Unavailable(format!("bucket create cancelled: {codes:?}")))
            }
            Err(DbError::Conflict) => Ok(Step::Replan(Some(count))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (b) on an existing item, after the checks the slow path owes it.
    pub(super) async fn update(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        count: i64,
        image: BucketImage,
    ) -> Result<Step, StoreError> {
        let now = cx.now.0;
        if image.disabled {
            return Ok(Step::Done(self.disabled(cx, &image)));
        }
        if let Some(what) = &image.yaml_unsupported() {
            return Err(self.unsupported(cx, shard, what));
        }
        self.learn(&cx.id, &image);
        let sc = image.shard_count;
        let hits = image.limit(LIMIT_NAME);
        if image.bypass.as_ref().is_some_and(|b| b.live(now)) {
            return self.bypassed_write(cx, shard, &image).await;
        }
        let soft_live = hits.and_then(|h| h.soft.as_ref()).is_some_and(|st| st.live(now));
        let admission = if soft_live { Admission::Soft } else { Admission::Enforced };
        // Every limit of the item planned by the engine, the rule's own with the YAML parameters
        // (seeded, when missing, at the share of the larger of the two counts), the others with
        // their stored ones; the rule's charges decided in order on its balance.
        let config = rule_limit(cx, soft_live);
        let mut side = acquire::plan_side(rule_input(cx, &config, shard, Some(&image), count), cx.now);
        let seed_count = sc.max(count);
        let rule = side.limits.iter().find(|l| l.name == LIMIT_NAME).expect("the rule's limit is planned");
        let plan =
            plan::decide(rule.start.tokens.0, rule.start.refilled_at, rule.share.capacity.0, cx.charges, admission);
        if !plan.writes() {
            let soft_fix: Option<&StampRead> = hits.and_then(|h| h.soft.as_ref()).filter(|st| !st.live(now));
            let bypass_fix: Option<&StampRead> = image.bypass.as_ref().filter(|b| !b.live(now));
            self.fix_stamps(cx, shard, soft_fix, bypass_fix).await;
            path("slow_reject");
            self.remember(cx, shard, &image);
            return Ok(Step::Done(Decided::new(plan.outcomes, if hits.is_some() { sc } else { seed_count })));
        }
        if rule.resync {
            // Param sync (§9.7) folded into this rf-locked write: the YAML limit wins.
            path("param_sync");
        }
        let debit = charge_rule(&mut side, &plan, admission);
        let write = planned::update(&side, &image, cx.now, true, true);
        let req = write.render(cx.pk(shard));
        match self.db.update(req).await {
            Ok(Update::Done(item)) => {
                path("slow_update");
                let written = parse(&item)?;
                self.learn(&cx.id, &written);
                self.remember(cx, shard, &written);
                let outcomes = self.replay(cx, &plan, &written, debit).unwrap_or(plan.outcomes);
                Ok(Step::Done(Decided::new(outcomes, written.shard_count)))
            }
            Ok(Update::ConditionFailed(Some(item))) if admission == Admission::Enforced => {
                // Lost to another writer. Shape (c) needs the stored `tk` to cover the debit
                // without the refill; when the write's `ALL_OLD` image shows it does not, that
                // retry is bound to fail and its failure would reject from the same image: the
                // rejection is taken from this one, one write sooner.
                let found = parse(&item)?;
                match (plan.guard, judgeable(&found)) {
                    (Some(guard), Some(h)) if h.tk < guard => {
                        path("slow_lost_reject");
                        self.reject_found(cx, shard, &found, h).await
                    }
                    _ => self.retry(cx, shard, &plan, &side, if hits.is_some() { sc } else { seed_count }).await,
                }
            }
            Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => {
                self.retry(cx, shard, &plan, &side, if hits.is_some() { sc } else { seed_count }).await
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (c): consumption only, no refill, no stamps ([`planned::takes`] of `side`, which
    /// carries the plan's debit); a failure is a rejection built from the `ALL_OLD` image.
    async fn retry(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        plan: &Plan,
        side: &SidePlan<'_>,
        count: i64,
    ) -> Result<Step, StoreError> {
        let write = Consume { now: cx.now.0, limits: planned::takes(side, true), under_bypass: false };
        let Some(req) = write.render(cx.pk(shard)) else {
            // Only check-only charges were admitted: nothing to write without the refill.
            path("slow_retry");
            return Ok(Step::Done(Decided::new(plan.outcomes.clone(), count)));
        };
        let debit = side.limits.iter().find(|l| l.name == LIMIT_NAME).map_or(0, |l| l.consumed);
        match self.db.update(req).await {
            Ok(Update::Done(item)) => {
                path("slow_retry");
                let written = parse(&item)?;
                self.learn(&cx.id, &written);
                self.remember(cx, shard, &written);
                let outcomes = self.replay(cx, plan, &written, debit).unwrap_or_else(|| plan.outcomes.clone());
                Ok(Step::Done(Decided::new(outcomes, written.shard_count)))
            }
            Ok(Update::ConditionFailed(None)) | Err(DbError::Conflict) => Ok(Step::Replan(Some(count))),
            Ok(Update::ConditionFailed(Some(item))) => {
                let image = parse(&item)?;
                let Some(hits) = judgeable(&image) else {
                    let count = if image.limit(LIMIT_NAME).is_some() { image.shard_count } else { count };
                    return Ok(Step::Replan(Some(count)));
                };
                path("slow_retry_reject");
                self.reject_found(cx, shard, &image, hits).await
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The rejection a lost commit's `ALL_OLD` image proves, `hits` its rule's limit
    /// ([`judgeable`]): every strict charge fails; debt charges are still recorded.
    async fn reject_found(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        image: &BucketImage,
        hits: &LimitImage,
    ) -> Result<Step, StoreError> {
        self.remember(cx, shard, image);
        let (p, cap) = image.shard_balance(hits, 0, cx.now);
        let rejected = plan::reject_all(p.tokens.0, p.refilled_at, cap.0, cx.charges);
        let mut outcomes = rejected.outcomes.clone();
        if rejected.debt > 0 {
            outcomes = self.debit(cx, shard, &rejected).await?.unwrap_or(outcomes);
        }
        Ok(Step::Done(Decided::new(outcomes, image.shard_count)))
    }
}

/// The rule's limit on a lost commit's image, when a rejection may be judged from it: the
/// item is enabled, holds nothing a YAML rule cannot judge and no bypass stamp.
fn judgeable(image: &BucketImage) -> Option<&LimitImage> {
    if image.disabled || image.yaml_unsupported().is_some() || image.bypass.is_some() {
        return None;
    }
    image.limit(LIMIT_NAME)
}

/// A YAML rule's one limit as the engine's config: its YAML parameters, soft while its item's
/// `b_hits_soft` stamp is live.
fn rule_limit(cx: &Ctx<'_>, soft: bool) -> [StoredLimit; 1] {
    [StoredLimit { name: LIMIT_NAME.to_owned(), limit: cx.limit, soft }]
}

/// The engine's input for a YAML rule's bucket shard (`image`; `None`: not there), nothing
/// requested: the rule's charges are decided in order by [`plan::decide`], then
/// [`charge_rule`].
fn rule_input<'a>(
    cx: &'a Ctx<'_>,
    config: &'a [StoredLimit],
    shard: i64,
    image: Option<&'a BucketImage>,
    count: i64,
) -> SideInput<'a, 'a> {
    SideInput {
        entity: &cx.id.entity,
        config,
        requested: &[],
        access: Access::Enforced,
        shard,
        bucket: image.map(|image| bucket_read(image, cx.now)),
        new_shard_count: count,
        params: Params::Config,
    }
}

/// Puts the charges' decision on the rule's limit of `side`: its debit, its usage and the
/// guard under which the admitted charges stay valid. Returns the debit.
fn charge_rule(side: &mut SidePlan<'_>, plan: &Plan, admission: Admission) -> i64 {
    let debit = plan.tk_debit(admission);
    if let Some(rule) = side.limits.iter_mut().find(|l| l.name == LIMIT_NAME) {
        rule.consumed = debit;
        rule.usage = plan.consumed();
        rule.guard = plan.guard.map(Millitokens);
    }
    debit
}

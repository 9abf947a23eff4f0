//! The slow path's commit shapes (§11.5): (a) create, (b) the `rf`-locked normal update
//! (with param sync, seeding and stamp removal), (c) the consumption-only retry.

use zael_core::store::StoreError;

use super::entity::{Access, StoredLimit, bucket_read};
use super::request::{Ctx, Decided, hits_attr, parse, path, unavailable};
use super::slow_path::Step;
use super::write::{Balance, Consume, Guard, LimitWrite, ShardWrite, StampTo, StampWrite, Take};
use super::{Inner, LIMIT_NAME};
use crate::db::{DbError, Transact, Update};
use crate::item::{BucketImage, NewBucket, NewLimit, StampRead, new_bucket_item};
use crate::plan::{self, Admission, Plan};
use zael_core::acquire::{self, Params, SideInput};

impl Inner {
    /// Shape (a): the complete item under `attribute_not_exists(PK)` with the ConditionCheck
    /// on the (absent) META, in one TransactWriteItems.
    pub(super) async fn create(&self, cx: &Ctx<'_>, shard: i64, count: i64) -> Result<Step, StoreError> {
        let share = cx.limit.shard_share(count);
        let cap = share.capacity.0;
        let plan = plan::decide(cap, cx.now, cap, cx.charges, Admission::Enforced);
        if !plan.writes() {
            path("slow_reject");
            return Ok(Step::Done(Decided::new(plan.outcomes, count)));
        }
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
        let item = new_bucket_item(
            &bucket,
            &[NewLimit {
                name: LIMIT_NAME,
                tk: cap.saturating_sub(plan.consumed()),
                limit: cx.limit,
                tc: plan.consumed(),
            }],
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
                    return self.retry(cx, shard, &plan, Admission::Enforced, None, count).await;
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
        // their stored ones.
        let config = [StoredLimit { name: LIMIT_NAME.to_owned(), limit: cx.limit, soft: false }];
        let input = SideInput {
            entity: &cx.id.entity,
            config: &config,
            requested: &[],
            access: Access::Enforced,
            shard,
            bucket: Some(bucket_read(&image, cx.now)),
            new_shard_count: count,
            params: Params::Config,
        };
        let side = acquire::plan_side(input, cx.now);
        let seed_count = sc.max(count);
        let rule = side.limits.iter().find(|l| l.name == LIMIT_NAME).expect("the rule's limit is planned");
        let (share, balance, refilled_at, refill) =
            (rule.share, rule.start.tokens.0, rule.start.refilled_at, rule.refill());
        let plan = plan::decide(balance, refilled_at, share.capacity.0, cx.charges, admission);
        let soft_fix: Option<&StampRead> = hits.and_then(|h| h.soft.as_ref()).filter(|st| !st.live(now));
        let bypass_fix: Option<&StampRead> = image.bypass.as_ref().filter(|b| !b.live(now));
        if !plan.writes() {
            self.fix_stamps(cx, shard, soft_fix, bypass_fix).await;
            path("slow_reject");
            self.remember(cx, shard, &image);
            return Ok(Step::Done(Decided::new(plan.outcomes, if hits.is_some() { sc } else { seed_count })));
        }

        let debit = plan.tk_debit(admission);
        if rule.resync {
            // Param sync (§9.7) folded into this rf-locked write: the YAML limit wins.
            path("param_sync");
        }
        // The rule's limit debited (or seeded); every other limit on the item carried: refilled
        // with its stored parameters and written back under the same lock, never gated.
        let limits: Vec<LimitWrite<'_>> = side
            .limits
            .iter()
            .map(|l| match l.read {
                Some(read) if l.name == LIMIT_NAME => LimitWrite {
                    name: LIMIT_NAME,
                    balance: Balance::Add {
                        delta: refill.saturating_sub(debit),
                        usage: plan.consumed(),
                        at_least: plan.guard.map(|guard| (guard.saturating_sub(refill), true)),
                        at_most: (refill > 0).then_some(read.0),
                    },
                    params: l.resync.then_some(cx.limit),
                },
                // Seed (§11.5): the limit is missing from this item.
                None => LimitWrite {
                    name: LIMIT_NAME,
                    balance: Balance::Seed { tk: balance.saturating_sub(debit), usage: plan.consumed() },
                    params: Some(cx.limit),
                },
                Some(read) => {
                    let r = l.refill();
                    let balance =
                        Balance::Add { delta: r, usage: 0, at_least: None, at_most: (r > 0).then_some(read.0) };
                    LimitWrite { name: &l.name, balance, params: None }
                }
            })
            .collect();
        let horizons: Vec<f64> = side.limits.iter().map(|l| plan::recovery_secs(&l.limit)).collect();
        let mut stamps = Vec::new();
        if let Some(st) = soft_fix {
            stamps.push(StampWrite { attr: hits_attr("soft"), to: StampTo::Remove, read: Some(&st.raw) });
        }
        if let Some(b) = bypass_fix {
            stamps.push(StampWrite { attr: "bypass".into(), to: StampTo::Remove, read: Some(&b.raw) });
        }
        let write = ShardWrite {
            now,
            rf: (now.max(image.rf), image.rf),
            limits,
            ttl: Some(plan::ttl_epoch(cx.now, &horizons)),
            vu: image.vu,
            stamps,
            cascade: None,
            owner: None,
        };
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
            Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => {
                let seed = if hits.is_none() { Some(balance) } else { None };
                self.retry(cx, shard, &plan, admission, seed, if hits.is_some() { sc } else { seed_count }).await
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (c): consumption only, no refill, no stamps; a failure is a rejection built
    /// from the `ALL_OLD` image. `seed` is the starting balance of a limit the item lacked.
    async fn retry(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        plan: &Plan,
        admission: Admission,
        seed: Option<i64>,
        count: i64,
    ) -> Result<Step, StoreError> {
        let debit = plan.tk_debit(admission);
        if plan.consumed() == 0 {
            // Only check-only charges were admitted: nothing to write without the refill.
            path("slow_retry");
            return Ok(Step::Done(Decided::new(plan.outcomes.clone(), count)));
        }
        let guard = match (seed, plan.guard) {
            (Some(start), floor) => Guard::Seed { start, limit: cx.limit, floor },
            (None, Some(floor)) => Guard::Covers { floor, soft_escape: true },
            (None, None) => Guard::Held,
        };
        let take = Take { name: LIMIT_NAME, debit, usage: plan.consumed(), guard };
        let write = Consume { now: cx.now.0, limits: vec![take], under_bypass: false };
        let req = write.render(cx.pk(shard)).expect("a consumption");
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
                let Some(hits) = image.limit(LIMIT_NAME) else { return Ok(Step::Replan(Some(count))) };
                if image.disabled || image.yaml_unsupported().is_some() || image.bypass.is_some() {
                    return Ok(Step::Replan(Some(image.shard_count)));
                }
                // Rejected: every strict charge fails; debt charges are still recorded.
                path("slow_retry_reject");
                self.remember(cx, shard, &image);
                let (p, cap) = image.shard_balance(hits, 0, cx.now);
                let rejected = plan::reject_all(p.tokens.0, p.refilled_at, cap.0, cx.charges);
                let mut outcomes = rejected.outcomes.clone();
                if rejected.debt > 0 {
                    outcomes = self.debit(cx, shard, &rejected).await?.unwrap_or(outcomes);
                }
                Ok(Step::Done(Decided::new(outcomes, image.shard_count)))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

//! Decisions that admit nothing: fast rejection from a failure image (§11.4), disabled
//! buckets, and the unconditional debit of rejected debt charges.

use zael_core::bucket::ChargeOutcome;
use zael_core::store::StoreError;

use super::request::{Ctx, Decided, parse, path, unavailable};
use super::write::{Consume, Guard, Take};
use super::{Inner, LIMIT_NAME};
use crate::db::Update;
use crate::item::BucketImage;
use crate::plan::{self, Admission, Plan};

impl Inner {
    /// A rejection from the image projected to now, when refill would not help (§11.4
    /// step 5): `None` when the slow path should run instead (refill helps, the limit is
    /// missing, or only some of several charges fit).
    pub(super) async fn fast_reject(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        image: &BucketImage,
    ) -> Result<Option<Decided>, StoreError> {
        let Some(hits) = image.limit(LIMIT_NAME) else { return Ok(None) };
        let now = cx.now.0;
        let admission = if image.bypass.as_ref().is_some_and(|b| b.live(now)) {
            Admission::Bypass
        } else if hits.soft.as_ref().is_some_and(|s| s.live(now)) {
            Admission::Soft
        } else {
            Admission::Enforced
        };
        let (p, cap) = image.shard_balance(hits, 0, cx.now);
        let plan = plan::decide(p.tokens.0, p.refilled_at, cap.0, cx.charges, admission);
        if plan.all_admitted || plan.guard.is_some() {
            return Ok(None);
        }
        path("fast_reject");
        let mut outcomes = plan.outcomes.clone();
        if plan.debt > 0 {
            outcomes = self.debit(cx, shard, &plan).await?.unwrap_or(outcomes);
        }
        Ok(Some(Decided::new(outcomes, image.shard_count)))
    }

    /// The unconditional debit of rejected debt charges (the library's lease adjust shape).
    /// Returns the outcomes replayed on the written image, or `None` if the item vanished.
    pub(super) async fn debit(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        plan: &Plan,
    ) -> Result<Option<Vec<ChargeOutcome>>, StoreError> {
        let take = Take { name: LIMIT_NAME, debit: plan.debt, usage: plan.debt, guard: Guard::Held };
        let req = Consume { now: cx.now.0, limits: vec![take], under_bypass: false }.render(cx.pk(shard));
        let Some(req) = req else { return Ok(None) };
        path("debt");
        match self.db.update(req).await.map_err(unavailable)? {
            Update::Done(item) => {
                let image = parse(&item)?;
                self.remember(cx, shard, &image);
                Ok(self.replay(cx, plan, &image, plan.debt))
            }
            Update::ConditionFailed(_) => Ok(None),
        }
    }

    /// The plan's outcomes replayed on a written image: the balance before this request's
    /// debits is the image's `tk` plus `debited`, projected to now.
    pub(super) fn replay(
        &self,
        cx: &Ctx<'_>,
        plan: &Plan,
        image: &BucketImage,
        debited: i64,
    ) -> Option<Vec<ChargeOutcome>> {
        let (before, _) = image.shard_balance(image.limit(LIMIT_NAME)?, debited, cx.now);
        Some(plan.replay(before.tokens.0, before.refilled_at))
    }

    pub(super) fn disabled(&self, cx: &Ctx<'_>, image: &BucketImage) -> Decided {
        path("disabled");
        let balance = image.limit(LIMIT_NAME).map_or(0, |h| image.shard_balance(h, 0, cx.now).0.tokens.0);
        let plan = plan::decide(balance, cx.now, 0, cx.charges, Admission::Disabled);
        Decided::new(plan.outcomes, image.shard_count)
    }
}

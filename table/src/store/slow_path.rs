//! Slow path (§11.5, §11.6): a strongly consistent read of the shard (or the `ALL_OLD` image
//! of the write that just failed on it, [`Inner::slow_from`]), then one of the
//! commit shapes ([`super::commit`]), re-planned when it loses a race; and the writes of a
//! pass under a live bypass stamp or one that only removes expired stamps.

use rand::Rng;
use zael_core::store::StoreError;

use super::request::{Ctx, Decided, hits_attr, parse, path, unavailable};
use super::write::{Consume, Guard, StampRemoval, Take};
use super::{Inner, LIMIT_NAME};
use crate::db::{DbError, Update};
use crate::item::{BucketImage, StampRead};
use crate::keys::{self, MAX_SHARD_COUNT};
use crate::plan::{self, Admission};

/// Re-plans of one slow path before giving up (each re-reads the bucket).
const SLOW_PATH_ATTEMPTS: usize = 3;

pub(super) enum Step {
    Done(Decided),
    Replan(Option<i64>),
}

impl Inner {
    pub(super) async fn slow(&self, cx: &Ctx<'_>, shard: i64, count_hint: Option<i64>) -> Result<Decided, StoreError> {
        self.slow_from(cx, shard, count_hint, None).await
    }

    /// The slow path, its first pass planned on `found` when given: the `ALL_OLD` image of the
    /// speculative write on `shard` that just failed. That image is the item as DynamoDB
    /// evaluated the write's condition on, as consistent as the read it replaces (the library
    /// reads here), and the commit's conditions fail if the item changed since, so the
    /// answer is as exact and one read cheaper. Later passes read.
    pub(super) async fn slow_from(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        count_hint: Option<i64>,
        found: Option<BucketImage>,
    ) -> Result<Decided, StoreError> {
        let mut shard = shard;
        let mut hint = count_hint;
        let mut found = found;
        for _ in 0..SLOW_PATH_ATTEMPTS {
            let count = hint.unwrap_or_else(|| self.cached_count(&cx.id)).clamp(1, MAX_SHARD_COUNT);
            if shard >= count {
                shard = rand::rng().random_range(0..count);
                found = None;
            }
            let step = match found.take() {
                Some(image) => {
                    self.before_commit(cx.pk(shard)).await;
                    self.update(cx, shard, count, image).await?
                }
                None => {
                    let item = self.db.get(&cx.pk(shard), keys::SK_STATE, true).await.map_err(unavailable)?;
                    self.before_commit(cx.pk(shard)).await;
                    match item {
                        None => self.create(cx, shard, count).await?,
                        Some(item) => {
                            let image = parse(&item)?;
                            self.update(cx, shard, count, image).await?
                        }
                    }
                }
            };
            match step {
                Step::Done(decided) => return Ok(decided),
                Step::Replan(next) => hint = next.or(hint),
            }
        }
        Err(StoreError::Unavailable(format!(
            "a bucket of resource '{}' stayed contended through {SLOW_PATH_ATTEMPTS} slow passes",
            cx.id.resource
        )))
    }

    /// A decision on a single-shard bucket the rejection cache holds a short image of (`image`,
    /// trusted: at most a second old), whose stored `tk` does not cover the request but whose
    /// refill since does: the trickle of a bucket kept over its limit. The speculative write
    /// would fail on the stored `tk` (the fast path never refills) and the slow pass would read
    /// what the cache holds, so the slow pass's `rf`-locked write goes first, planned on the
    /// image. It is as exact as after a read: its conditions (`rf` as read, `tk` no higher than
    /// read and covering the debit less the refill) fail when the shard changed in a way the
    /// plan did not foresee, and then the consumption-only retry and the slow path decide as
    /// usual. `None`: not such a decision (the fast path's).
    pub(super) async fn trickle(&self, cx: &Ctx<'_>, image: &BucketImage) -> Option<Result<Decided, StoreError>> {
        let h = image.limit(LIMIT_NAME)?;
        let covered = image.shard_balance(h, 0, cx.now).0.tokens.0 >= cx.total;
        if !plan::strict_tokens(cx.charges) || h.tk >= cx.total || !covered {
            return None;
        }
        path("trickle");
        self.before_commit(cx.pk(0)).await;
        Some(match self.update(cx, 0, 1, image.clone()).await {
            Ok(Step::Done(decided)) => Ok(decided),
            Ok(Step::Replan(hint)) => self.slow(cx, 0, hint).await,
            Err(e) => Err(e),
        })
    }

    /// The test hook between a slow pass's image and its commit (`set_before_commit_hook`).
    async fn before_commit(&self, pk: String) {
        let hook = self.before_commit.lock().expect("lock").clone();
        if let Some(hook) = hook {
            hook(pk).await;
        }
    }

    /// The slow path under a live bypass stamp: `ADD tc` only, pinned on the live stamp.
    pub(super) async fn bypassed_write(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        image: &BucketImage,
    ) -> Result<Step, StoreError> {
        let hits = image.limit(LIMIT_NAME);
        let balance = hits.map_or(0, |h| image.shard_balance(h, 0, cx.now).0.tokens.0);
        let plan = plan::decide(balance, cx.now, 0, cx.charges, Admission::Bypass);
        if hits.is_none() || plan.consumed() == 0 {
            path("slow_bypass");
            return Ok(Step::Done(Decided::new(plan.outcomes, image.shard_count)));
        }
        let take = Take { name: LIMIT_NAME, debit: 0, usage: plan.consumed(), guard: Guard::Held };
        let write = Consume { now: cx.now.0, limits: vec![take], under_bypass: true };
        let req = write.render(cx.pk(shard)).expect("a usage");
        match self.db.update(req).await {
            Ok(Update::Done(_)) => {
                path("slow_bypass");
                Ok(Step::Done(Decided::new(plan.outcomes, image.shard_count)))
            }
            Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => Ok(Step::Replan(Some(image.shard_count))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes expired stamps a rejected pass found, pinned on the stamps as read; no request
    /// without one. A failure is logged and left for the next pass.
    pub(super) async fn fix_stamps(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        soft: Option<&StampRead>,
        bypass: Option<&StampRead>,
    ) {
        let soft = soft.map(|st| (hits_attr("soft"), &st.raw));
        let bypass = bypass.map(|b| ("bypass".to_owned(), &b.raw));
        let write = StampRemoval { stamps: soft.into_iter().chain(bypass).collect() };
        let Some(req) = write.render(cx.pk(shard)) else { return };
        if let Err(e) = self.db.update(req).await {
            tracing::debug!(error = ?e, "expired stamp removal failed");
        }
    }
}

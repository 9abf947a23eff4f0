//! The acquire engine: from what a store read of each side's bucket to the decision and the
//! write it owes, the same on every store.
//!
//! A store calls it in three steps:
//!
//! 1. It reads each side (the entity, and its parent under cascade): the bucket as it stands
//!    ([`BucketRead`]: every limit held, with its parameters, balance and the instant the
//!    balance refers to) or its absence, the limits the config resolves ([`StoredLimit`]), the
//!    access walk's verdict, and the amounts requested.
//! 2. [`plan_side`] turns that into a [`SidePlan`]: every limit of the bucket refilled to the
//!    decision's instant ([`LimitPlan::start`]), the limits the config adds seeded full, and
//!    for each requested limit what an admission takes off the balance and adds to `tc`.
//! 3. [`decide`] applies [`crate::judge`]'s rule over the sides. When it admits, the store
//!    writes every side's plan: balance `start - consumed`, `tc + usage`; when it rejects,
//!    it writes nothing (the rejection's reports say why).
//!
//! The embedded store applies the plan to its buckets under its lock; the DynamoDB store
//! renders it as one conditional write (or one transaction for creates and cascades) and
//! owns the retry when the write loses a race. Neither decides anything itself.

use crate::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};
use crate::judge::{self, Judgement, Requested, SideView, judge};
use crate::levels::{Access, StoredLimit};
use crate::store::LimitReport;

/// One limit of a bucket as the store read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLimit<'a> {
    pub name: &'a str,
    /// The whole limit the bucket holds (a shard holds its share).
    pub limit: BucketLimit,
    /// The balance as stored and the instant it refers to.
    pub state: BucketState,
    /// A live soft stamp on the limit (the limit counts as soft when the config lacks it).
    pub soft_stamp: bool,
    /// Not divided among shards (the table's `wcu`).
    pub whole: bool,
}

/// One shard of a bucket as the store read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRead<'a> {
    pub shard_count: i64,
    pub limits: Vec<HeldLimit<'a>>,
}

/// What a store knows of one side before the decision.
#[derive(Clone, Debug)]
pub struct SideInput<'a, 'b> {
    pub entity: &'a str,
    /// The limits the config resolves for this side.
    pub config: &'a [StoredLimit],
    /// The requested amounts of the limits this side has.
    pub requested: &'a [(String, i64)],
    /// Enforced or bypassed (a disabled side is answered before planning).
    pub access: Access,
    pub shard: i64,
    /// The bucket shard as read; `None` when it does not exist yet.
    pub bucket: Option<BucketRead<'b>>,
    /// The shard count a new bucket is created with.
    pub new_shard_count: i64,
}

/// One limit of a side's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitPlan {
    pub name: String,
    /// The whole limit (the shard holds its share).
    pub limit: BucketLimit,
    /// The balance as stored; `None` when the limit is new on this bucket (seeded).
    pub read: Option<Millitokens>,
    /// The balance refilled to the decision's instant (a new limit: its share, full).
    pub start: BucketState,
    /// Millitokens an admission takes off the balance (none under bypass).
    pub consumed: i64,
    /// Millitokens an admission adds to `tc` (the requested amount, under bypass too).
    pub usage: i64,
    /// Metered, never a reason to reject.
    pub soft: bool,
    /// The config says soft: the bucket carries a live soft stamp for the limit.
    pub stamp_soft: bool,
}

impl LimitPlan {
    /// The balance after an admission.
    pub fn after(&self) -> Millitokens {
        self.start.tokens - Millitokens(self.consumed)
    }

    /// Millitokens the refill added to the stored balance.
    pub fn refill(&self) -> i64 {
        self.read.map_or(0, |read| self.start.tokens.0 - read.0)
    }
}

/// One side's decision input and write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidePlan<'a> {
    pub entity: &'a str,
    pub shard: i64,
    pub shard_count: i64,
    /// Admitted without a debit.
    pub bypass: bool,
    /// Every limit the write carries: the bucket's, then those the config adds.
    pub limits: Vec<LimitPlan>,
    pub requested: &'a [(String, i64)],
}

/// Plans one side at `now` (see the module docs).
pub fn plan_side<'a>(input: SideInput<'a, '_>, now: EpochMillis) -> SidePlan<'a> {
    let bypass = input.access == Access::Bypass;
    let count = input.bucket.as_ref().map_or(input.new_shard_count, |b| b.shard_count).max(1);
    let mut limits: Vec<LimitPlan> = Vec::new();
    for held in input.bucket.iter().flat_map(|b| &b.limits) {
        let share = held.limit.shard_share(if held.whole { 1 } else { count });
        let config = input.config.iter().find(|c| c.name == held.name);
        limits.push(LimitPlan {
            name: held.name.to_owned(),
            limit: held.limit,
            read: Some(held.state.tokens),
            start: held.state.refilled(&share, now),
            consumed: 0,
            usage: 0,
            soft: config.map_or(held.soft_stamp, |c| c.soft),
            stamp_soft: config.is_some_and(|c| c.soft),
        });
    }
    for c in input.config {
        if limits.iter().any(|l| l.name == c.name) {
            continue;
        }
        limits.push(LimitPlan {
            name: c.name.clone(),
            limit: c.limit,
            read: None,
            start: BucketState::full(&c.limit.shard_share(count), now),
            consumed: 0,
            usage: 0,
            soft: c.soft,
            stamp_soft: c.soft,
        });
    }
    for (name, amount) in input.requested {
        if let Some(l) = limits.iter_mut().find(|l| l.name == *name) {
            l.consumed = if bypass { 0 } else { *amount };
            l.usage = *amount;
        }
    }
    SidePlan {
        entity: input.entity,
        shard: input.shard,
        shard_count: count,
        bypass,
        limits,
        requested: input.requested,
    }
}

impl SidePlan<'_> {
    /// The requested limits as [`judge`] sees them.
    fn view(&self) -> SideView<'_> {
        let requested = self
            .requested
            .iter()
            .filter_map(|(name, amount)| {
                let l = self.limits.iter().find(|l| l.name == *name)?;
                Some(Requested {
                    name,
                    limit: l.limit,
                    balance: l.start.tokens,
                    amount: Millitokens(*amount),
                    soft: l.soft,
                })
            })
            .collect();
        SideView {
            entity: self.entity,
            shard: self.shard,
            shard_count: self.shard_count,
            bypass: self.bypass,
            requested,
        }
    }

    /// The limits an admission changes (requested, with a debit or usage).
    pub fn charged(&self) -> impl Iterator<Item = &LimitPlan> {
        self.limits.iter().filter(|l| l.consumed != 0 || l.usage != 0)
    }
}

/// Decides an acquire over its planned sides at `now` ([`crate::judge`]'s rule).
pub fn decide(sides: &[SidePlan<'_>], now: EpochMillis) -> Judgement {
    let views: Vec<SideView<'_>> = sides.iter().map(SidePlan::view).collect();
    judge(&views, now)
}

/// The sides' requested limits as they stand, none debited, the short ones exceeded (what a
/// store reports of a side it did not charge).
pub fn standing(sides: &[SidePlan<'_>], now: EpochMillis) -> Vec<LimitReport> {
    let views: Vec<SideView<'_>> = sides.iter().map(SidePlan::view).collect();
    judge::reports(&views, now, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, tokens: u64, soft: bool) -> StoredLimit {
        StoredLimit { name: name.into(), limit: BucketLimit::per_period(tokens, tokens, 60), soft }
    }

    fn held(name: &str, tokens: u64, tk: i64, rf: i64) -> HeldLimit<'_> {
        HeldLimit {
            name,
            limit: BucketLimit::per_period(tokens, tokens, 60),
            state: BucketState { tokens: Millitokens(tk), refilled_at: EpochMillis(rf) },
            soft_stamp: false,
            whole: false,
        }
    }

    #[test]
    fn a_plan_refills_every_held_limit_and_seeds_the_new_ones() {
        let config = [stored("rpm", 10, false), stored("tpm", 100, true)];
        let requested = [("rpm".to_owned(), 2000), ("tpm".to_owned(), 30_000)];
        let bucket = BucketRead { shard_count: 1, limits: vec![held("rpm", 10, 1000, 0), held("old", 5, 0, 0)] };
        let input = SideInput {
            entity: "key",
            config: &config,
            requested: &requested,
            access: Access::Enforced,
            shard: 0,
            bucket: Some(bucket),
            new_shard_count: 1,
        };
        // 6 s at 10 per minute: one token more.
        let plan = plan_side(input, EpochMillis(6000));
        let rows: Vec<_> =
            plan.limits.iter().map(|l| (l.name.as_str(), l.read.map(|r| r.0), l.start.tokens.0, l.consumed)).collect();
        assert_eq!(rows, [("rpm", Some(1000), 2000, 2000), ("old", Some(0), 500, 0), ("tpm", None, 100_000, 30_000)]);
        assert_eq!((plan.limits[0].refill(), plan.limits[0].after()), (1000, Millitokens(0)));
        assert!(plan.limits[2].soft && plan.limits[2].stamp_soft);
        let judged = decide(&[plan], EpochMillis(6000));
        assert!(judged.admitted);
        assert_eq!(judged.reports.iter().map(|r| r.tokens.0).collect::<Vec<_>>(), [0, 70_000]);
    }

    #[test]
    fn bypass_counts_usage_without_a_debit_and_shares_follow_the_shard_count() {
        let config = [stored("rpm", 10, false)];
        let requested = [("rpm".to_owned(), 1000)];
        let input = SideInput {
            entity: "key",
            config: &config,
            requested: &requested,
            access: Access::Bypass,
            shard: 1,
            bucket: None,
            new_shard_count: 2,
        };
        let plan = plan_side(input, EpochMillis(0));
        assert_eq!((plan.limits[0].start.tokens.0, plan.limits[0].consumed, plan.limits[0].usage), (5000, 0, 1000));
        assert_eq!(plan.charged().count(), 1);
        let judged = decide(&[plan], EpochMillis(0));
        assert!(judged.admitted && judged.reports[0].bypass);
        assert_eq!(judged.reports[0].tokens.0, 5000);
    }
}

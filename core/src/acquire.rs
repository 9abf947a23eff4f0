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

/// Whose parameters a limit the bucket holds is refilled and written with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Params {
    /// The bucket's own (the library's entity acquire: an operator's change reaches the bucket
    /// through the library's param sync).
    Stored,
    /// The config's, when it has the limit (a YAML rule, the embedded store, an override):
    /// the write carries them ([`LimitPlan::resync`]).
    Config,
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
    /// The shard count a new bucket is created with; a limit new on an existing bucket is
    /// seeded at its share of the larger of this and the bucket's count (the library's
    /// `seed_shard_count`).
    pub new_shard_count: i64,
    pub params: Params,
}

/// One limit of a side's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitPlan {
    pub name: String,
    /// The whole limit (the shard holds its share).
    pub limit: BucketLimit,
    /// The shard's share of it, which the balances are of.
    pub share: BucketLimit,
    /// The balance as stored; `None` when the limit is new on this bucket (seeded).
    pub read: Option<Millitokens>,
    /// The balance refilled to the decision's instant (a new limit: its share, full).
    pub start: BucketState,
    /// Millitokens an admission takes off the balance (none under bypass).
    pub consumed: i64,
    /// Millitokens an admission adds to `tc` (the requested amount, under bypass too).
    pub usage: i64,
    /// The lowest balance, as refilled to the decision's instant and before this request's
    /// debit, under which the admission stays valid: what a store's write must still find
    /// (`None`: nothing to keep, the limit is soft, bypassed or not requested).
    pub guard: Option<Millitokens>,
    /// Metered, never a reason to reject; the bucket carries a live soft stamp for it after
    /// the write (the config says soft, or the config lacks the limit and its stamp is live:
    /// a stamp is kept, never set, for a limit the config does not know).
    pub soft: bool,
    /// The bucket holds other parameters than [`LimitPlan::limit`]: the write syncs them.
    pub resync: bool,
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

impl SidePlan<'_> {
    /// How many requests like this one the balances cover at the decision's instant: the
    /// fewest, over the limits an admission must keep (those with a guard), of the balance
    /// over what one admission takes. `None`: no limit keeps anything (bypass, soft limits
    /// only, nothing requested).
    pub fn admissions(&self) -> Option<u64> {
        self.limits
            .iter()
            .filter(|l| l.guard.is_some() && l.consumed > 0)
            .map(|l| u64::try_from(l.start.tokens.0.max(0) / l.consumed).unwrap_or(0))
            .min()
    }
}

/// Plans one side at `now` (see the module docs).
pub fn plan_side<'a>(input: SideInput<'a, '_>, now: EpochMillis) -> SidePlan<'a> {
    let bypass = input.access == Access::Bypass;
    let count = input.bucket.as_ref().map_or(input.new_shard_count, |b| b.shard_count).max(1);
    let mut limits: Vec<LimitPlan> = Vec::new();
    let seed_count = count.max(input.new_shard_count);
    for held in input.bucket.iter().flat_map(|b| &b.limits) {
        let config = input.config.iter().find(|c| c.name == held.name);
        let limit = match (input.params, config) {
            (Params::Config, Some(c)) => c.limit,
            _ => held.limit,
        };
        let share = limit.shard_share(if held.whole { 1 } else { count });
        limits.push(LimitPlan {
            name: held.name.to_owned(),
            limit,
            share,
            resync: limit != held.limit,
            read: Some(held.state.tokens),
            start: held.state.refilled(&share, now),
            consumed: 0,
            usage: 0,
            guard: None,
            soft: config.map_or(held.soft_stamp, |c| c.soft),
        });
    }
    for c in input.config {
        if limits.iter().any(|l| l.name == c.name) {
            continue;
        }
        let share = c.limit.shard_share(seed_count);
        limits.push(LimitPlan {
            name: c.name.clone(),
            limit: c.limit,
            share,
            read: None,
            start: BucketState::full(&share, now),
            consumed: 0,
            usage: 0,
            guard: None,
            soft: c.soft,
            resync: false,
        });
    }
    for (name, amount) in input.requested {
        if let Some(l) = limits.iter_mut().find(|l| l.name == *name) {
            l.consumed = if bypass { 0 } else { *amount };
            l.usage = *amount;
            l.guard = (!bypass && !l.soft).then_some(Millitokens(*amount));
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
}

/// Decides an acquire over its planned sides at `now` ([`crate::judge`]'s rule).
pub fn decide(sides: &[SidePlan<'_>], now: EpochMillis) -> Judgement {
    let views: Vec<SideView<'_>> = sides.iter().map(SidePlan::view).collect();
    judge(&views, now)
}

/// What [`crate::store::BucketStore::available`] reports of one side: every limit the config
/// resolves, by name, its balance refilled to `now` and summed over the bucket's shards as read
/// (`shards[k]` is shard `k`; one not there counts full at its share), nothing requested.
pub fn balances(
    entity: &str,
    config: &[StoredLimit],
    shards: Vec<Option<BucketRead<'_>>>,
    params: Params,
    now: EpochMillis,
) -> Vec<LimitReport> {
    let count = i64::try_from(shards.len()).unwrap_or(1).max(1);
    let mut totals: Vec<i64> = vec![0; config.len()];
    for (shard, bucket) in (0..count).zip(shards) {
        let input = SideInput {
            entity,
            config,
            requested: &[],
            access: Access::Enforced,
            shard,
            bucket,
            new_shard_count: count,
            params,
        };
        let plan = plan_side(input, now);
        for (total, c) in totals.iter_mut().zip(config) {
            let tokens = plan.limits.iter().find(|l| l.name == c.name).map_or(0, |l| l.start.tokens.0);
            *total = total.saturating_add(tokens);
        }
    }
    let mut reports: Vec<LimitReport> = config
        .iter()
        .zip(totals)
        .map(|(c, total)| LimitReport {
            entity: entity.to_owned(),
            name: c.name.clone(),
            limit: c.limit,
            shard_count: count,
            shard: 0,
            bypass: false,
            tokens: Millitokens(total),
            at: now,
            requested: Millitokens(0),
            exceeded: false,
        })
        .collect();
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
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
            params: Params::Stored,
        };
        // 6 s at 10 per minute: one token more.
        let plan = plan_side(input, EpochMillis(6000));
        let rows: Vec<_> =
            plan.limits.iter().map(|l| (l.name.as_str(), l.read.map(|r| r.0), l.start.tokens.0, l.consumed)).collect();
        assert_eq!(rows, [("rpm", Some(1000), 2000, 2000), ("old", Some(0), 500, 0), ("tpm", None, 100_000, 30_000)]);
        assert_eq!((plan.limits[0].refill(), plan.limits[0].after()), (1000, Millitokens(0)));
        assert!(plan.limits[2].soft);
        let guards: Vec<_> = plan.limits.iter().map(|l| l.guard).collect();
        assert_eq!(guards, [Some(Millitokens(2000)), None, None], "a soft or unrequested limit keeps nothing");
        assert_eq!(plan.admissions(), Some(1), "rpm covers one such request; the soft tpm does not count");
        let judged = decide(&[plan], EpochMillis(6000));
        assert!(judged.admitted);
        assert_eq!(judged.reports.iter().map(|r| r.tokens.0).collect::<Vec<_>>(), [0, 70_000]);
    }

    #[test]
    fn config_parameters_win_when_asked_and_the_write_syncs_them() {
        let config = [stored("hits", 20, false)];
        let bucket = || BucketRead { shard_count: 2, limits: vec![held("hits", 10, 1000, 0)] };
        let input = |params, new_shard_count| SideInput {
            entity: "e",
            config: &config,
            requested: &[],
            access: Access::Enforced,
            shard: 0,
            bucket: Some(bucket()),
            new_shard_count,
            params,
        };
        // 6 s: 10 per minute over 2 shards refills 500, 20 per minute 1000.
        let own = plan_side(input(Params::Stored, 2), EpochMillis(6000));
        assert_eq!((own.limits[0].start.tokens.0, own.limits[0].resync), (1500, false));
        let synced = plan_side(input(Params::Config, 2), EpochMillis(6000));
        assert_eq!((synced.limits[0].start.tokens.0, synced.limits[0].resync), (2000, true));
        assert_eq!(synced.limits[0].limit, BucketLimit::per_period(20, 20, 60));
        // A limit new on the bucket is seeded at the share of the larger count.
        let more = [stored("hits", 20, false), stored("tpm", 100, false)];
        let seeded = plan_side(SideInput { config: &more, ..input(Params::Stored, 4) }, EpochMillis(0));
        assert_eq!(seeded.limits[1].start.tokens.0, 25_000);
    }

    #[test]
    fn balances_sum_the_shards_and_count_a_missing_one_full() {
        let config = [stored("tpm", 100, false), stored("rpm", 10, false)];
        let shard0 = BucketRead { shard_count: 2, limits: vec![held("rpm", 10, 1000, 0), held("tpm", 100, 0, 0)] };
        let reports = balances("key", &config, vec![Some(shard0), None], Params::Stored, EpochMillis(0));
        let rows: Vec<_> = reports.iter().map(|r| (r.name.as_str(), r.tokens.0, r.shard_count)).collect();
        assert_eq!(rows, [("rpm", 1000 + 5000, 2), ("tpm", 50_000, 2)]);
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
            params: Params::Stored,
        };
        let plan = plan_side(input, EpochMillis(0));
        assert_eq!((plan.limits[0].start.tokens.0, plan.limits[0].consumed, plan.limits[0].usage), (5000, 0, 1000));
        assert_eq!(plan.limits[0].guard, None, "a bypassed admission keeps nothing");
        let judged = decide(&[plan], EpochMillis(0));
        assert!(judged.admitted && judged.reports[0].bypass);
        assert_eq!(judged.reports[0].tokens.0, 5000);
    }
}

//! Token reservations on a bucket of several limits (an entity's bucket: `rpm`, `tpm`, ...):
//! one [`Reserve`] per limit, all of a block taken in one write, and a decision answered from
//! them only when every limit it charges is covered, taking from all of them or from none.
//! Each limit keeps [`Reserve`]'s rules (block size, honest balance, give-back); what this adds
//! is the all-or-nothing answer and one in-flight write and cool-off for the whole bucket.

use crate::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};
use crate::reserve::{Reserve, ReserveOptions};

/// What a decision charges one limit of the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need<'a> {
    pub name: &'a str,
    /// The whole limit (the blocks are of one shard's share of it).
    pub limit: BucketLimit,
    pub amount: Millitokens,
}

/// A block landed on one limit: how much, and the limit's shard after the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landed {
    pub name: String,
    pub amount: Millitokens,
    pub seen: BucketState,
    /// The shard's share of the limit the balance is of.
    pub share: BucketLimit,
}

/// What a server holds of one shard of a bucket of several limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReserveSet {
    /// Per limit charged so far, by name.
    pub limits: Vec<(String, Reserve)>,
    pub shard: i64,
    pub shard_count: i64,
    /// A block write is in flight.
    pub fetching: bool,
    /// Until then, decisions go to the store one by one.
    pub cold_until: EpochMillis,
}

/// A local answer: per need, in order, the balance it reports; and the block to fetch now
/// (before this one runs out), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedSet {
    pub balances: Vec<Millitokens>,
    pub prefetch: Option<Vec<(String, Millitokens)>>,
}

impl ReserveSet {
    fn get(&self, name: &str) -> Option<&Reserve> {
        self.limits.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Reserve> {
        self.limits.iter_mut().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// Whether a decision charging `needs` can be answered from blocks at all: it charges
    /// something, and every amount is positive (a check needs the shared balance).
    pub fn servable(needs: &[Need<'_>]) -> bool {
        !needs.is_empty() && needs.iter().all(|n| n.amount.0 > 0)
    }

    /// Counts a decision's demand on each limit it charges, once per decision.
    pub fn record(&mut self, needs: &[Need<'_>], now: EpochMillis) {
        for need in needs {
            if self.get(need.name).is_none() {
                let reserve = Reserve::new(need.limit.shard_share(self.shard_count.max(1)), now);
                self.limits.push((need.name.to_owned(), reserve));
            }
            if let Some(r) = self.get_mut(need.name) {
                r.demand.record(need.amount, now);
            }
        }
    }

    /// Answers `needs` when every limit's block covers its amount; `None` sends the decision
    /// to the store with nothing taken.
    pub fn serve(&mut self, needs: &[Need<'_>], now: EpochMillis, options: &ReserveOptions) -> Option<ServedSet> {
        if !ReserveSet::servable(needs) || !needs.iter().all(|n| self.get(n.name).is_some_and(|r| r.held >= n.amount)) {
            return None;
        }
        let mut balances = Vec::with_capacity(needs.len());
        let mut low = false;
        for need in needs {
            let r = self.get_mut(need.name)?;
            r.held = r.held - need.amount;
            r.last_use = now;
            balances.push(r.balance(r.held, now));
            low |= r.held.0.saturating_mul(2) < r.want(now, options).0;
        }
        let prefetch = if self.fetching || !low { None } else { self.block(needs, now, options) };
        Some(ServedSet { balances, prefetch })
    }

    /// Puts back what [`ReserveSet::serve`] took for `needs` (the decision's other side could
    /// not be answered locally).
    pub fn restore(&mut self, needs: &[Need<'_>]) {
        for need in needs {
            if let Some(r) = self.get_mut(need.name) {
                r.held = r.held + need.amount;
            }
        }
    }

    /// The block to take now for a decision charging `needs`: one per limit it charges, each
    /// by [`Reserve::block`]; `None` when the bucket is cooling off or any of them would not
    /// be worth it (the decision goes to the store, and the limits stay as they are).
    pub fn block(
        &self,
        needs: &[Need<'_>],
        now: EpochMillis,
        options: &ReserveOptions,
    ) -> Option<Vec<(String, Millitokens)>> {
        if now < self.cold_until {
            return None;
        }
        needs.iter().map(|n| Some((n.name.to_owned(), self.get(n.name)?.block(n.amount, now, options)?))).collect()
    }

    /// A decision charging `needs` waits on the bucket's block write ([`Reserve::wait`], per
    /// limit); [`ReserveSet::waited`] once it stops waiting.
    pub fn wait(&mut self, needs: &[(String, Millitokens)]) {
        for (name, amount) in needs {
            if let Some(r) = self.get_mut(name) {
                r.wait(*amount);
            }
        }
    }

    /// The counterpart of [`ReserveSet::wait`].
    pub fn waited(&mut self, needs: &[(String, Millitokens)]) {
        for (name, amount) in needs {
            if let Some(r) = self.get_mut(name) {
                r.waited(*amount);
            }
        }
    }

    /// A block landed on `shard` of `shard_count`.
    pub fn took(&mut self, landed: &[Landed], shard: i64, shard_count: i64, now: EpochMillis) {
        for l in landed {
            if let Some(r) = self.get_mut(&l.name) {
                r.took(l.amount, (shard, shard_count, l.share), l.seen, now);
            }
        }
        (self.shard, self.shard_count) = (shard, shard_count);
    }

    /// The store saw `shard` of `shard_count` as `seen` (per limit; the amounts are not
    /// looked at) without a block of this server landing: once nothing is held, the next
    /// blocks are sized from it ([`Reserve::saw`]).
    pub fn saw(&mut self, seen: &[Landed], shard: i64, shard_count: i64) {
        if self.held() != 0 {
            return;
        }
        for l in seen {
            if let Some(r) = self.get_mut(&l.name) {
                r.saw(l.seen, l.share, shard_count);
            }
        }
        (self.shard, self.shard_count) = (shard, shard_count);
    }

    /// A block was refused: decisions go to the store one by one for a horizon.
    pub fn refused(&mut self, now: EpochMillis, options: &ReserveOptions) {
        self.cold_until = EpochMillis(now.0.saturating_add(options.horizon_ms));
    }

    /// What goes back now, per limit ([`Reserve::give_back`]), or everything when `everything`.
    pub fn give_back(
        &mut self,
        now: EpochMillis,
        options: &ReserveOptions,
        everything: bool,
    ) -> Vec<(String, Millitokens)> {
        self.limits
            .iter_mut()
            .map(|(name, r)| {
                let back = if everything { std::mem::take(&mut r.held) } else { r.give_back(now, options) };
                (name.clone(), back)
            })
            .filter(|(_, back)| back.0 > 0)
            .collect()
    }

    /// Millitokens held, over every limit.
    pub fn held(&self) -> i64 {
        self.limits.iter().map(|(_, r)| r.held.0).sum()
    }

    /// The last local answer or block, over every limit.
    pub fn last_use(&self) -> EpochMillis {
        self.limits.iter().map(|(_, r)| r.last_use).max().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tokens: i64) -> Millitokens {
        Millitokens(tokens * 1000)
    }

    fn rpm() -> BucketLimit {
        BucketLimit::per_period(60_000, 60_000, 60)
    }

    fn tpm() -> BucketLimit {
        BucketLimit::per_period(6_000_000, 6_000_000, 60)
    }

    fn needs(tokens: i64) -> [Need<'static>; 2] {
        [Need { name: "rpm", limit: rpm(), amount: t(1) }, Need { name: "tpm", limit: tpm(), amount: t(tokens) }]
    }

    /// 200 decisions a second for a second, each of one request and 100 tokens.
    fn hot(set: &mut ReserveSet) {
        for ms in (0..1000).step_by(5) {
            set.record(&needs(100), EpochMillis(ms));
        }
    }

    fn landed(name: &str, amount: i64, left: i64, limit: BucketLimit, now: EpochMillis) -> Landed {
        Landed {
            name: name.into(),
            amount: t(amount),
            seen: BucketState { tokens: t(left), refilled_at: now },
            share: limit,
        }
    }

    #[test]
    fn a_block_covers_a_horizon_of_every_limit_the_decisions_charge() {
        let options = ReserveOptions { max_block: t(100_000), ..ReserveOptions::default() };
        let mut set = ReserveSet::default();
        assert_eq!(set.block(&needs(100), EpochMillis(0), &options), None, "nothing recorded");
        hot(&mut set);
        let now = EpochMillis(999);
        assert_eq!(
            set.block(&needs(100), now, &options),
            Some(vec![("rpm".into(), t(200)), ("tpm".into(), t(20_000))])
        );
        // A limit whose block would be worth less than eight decisions holds the whole bucket back.
        let small = ReserveOptions { max_block: t(500), ..options };
        assert_eq!(set.block(&needs(100), now, &small), None);
        set.refused(now, &options);
        assert_eq!(set.block(&needs(100), EpochMillis(1500), &options), None, "cooling off");
    }

    #[test]
    fn decisions_waiting_on_a_block_are_counted_per_limit() {
        let options = ReserveOptions::default();
        let mut set = ReserveSet::default();
        set.record(&needs(100), EpochMillis(0));
        let waiting = [("rpm".to_owned(), t(1)), ("tpm".to_owned(), t(100))];
        for _ in 0..60 {
            set.wait(&waiting);
        }
        // Long after the demand window: the 60 waiters alone make the blocks.
        let later = EpochMillis(5000);
        assert_eq!(set.block(&needs(100), later, &options), Some(vec![("rpm".into(), t(61)), ("tpm".into(), t(6100))]));
        for _ in 0..60 {
            set.waited(&waiting);
        }
        assert_eq!(set.block(&needs(100), later, &options), None);
    }

    #[test]
    fn a_decision_takes_from_every_limit_or_from_none() {
        let options = ReserveOptions::default();
        let mut set = ReserveSet::default();
        hot(&mut set);
        let now = EpochMillis(1000);
        set.took(&[landed("rpm", 3, 50_000, rpm(), now), landed("tpm", 250, 5_000_000, tpm(), now)], 0, 1, now);
        let served = set.serve(&needs(100), now, &options).expect("covered");
        assert_eq!(served.balances, [t(50_002), t(5_000_150)], "the shared balance plus what is still held");
        assert!(served.prefetch.is_some(), "far below half a horizon of demand");
        set.fetching = true;
        let second = set.serve(&needs(100), now, &options).expect("covered");
        assert_eq!(second.prefetch, None, "one block write in flight at a time");
        // tpm holds 50 tokens: a 100-token decision takes nothing, rpm included.
        assert_eq!(set.serve(&needs(100), now, &options), None);
        assert_eq!(set.held(), t(1).0 + t(50).0);
        assert_eq!(set.serve(&needs(0), now, &options), None, "a check needs the shared balance");
        set.restore(&needs(10));
        assert_eq!(set.held(), t(2).0 + t(60).0, "what a decision took goes back in full");
        let other = [Need { name: "daily", limit: rpm(), amount: t(1) }];
        assert_eq!(set.serve(&other, now, &options), None, "a limit nothing was reserved of");
    }

    #[test]
    fn unused_tokens_go_back_per_limit() {
        let options = ReserveOptions::default();
        let mut set = ReserveSet::default();
        hot(&mut set);
        let now = EpochMillis(999);
        set.took(&[landed("rpm", 1000, 0, rpm(), now), landed("tpm", 10_000, 0, tpm(), now)], 2, 4, now);
        assert_eq!((set.shard, set.shard_count), (2, 4));
        // 1,000 requests held against 200 per horizon: all but a horizon's goes back; tpm holds
        // 10,000 tokens against 20,000 per horizon and keeps them.
        assert_eq!(set.give_back(EpochMillis(1000), &options, false), [("rpm".to_owned(), t(800))]);
        assert_eq!(set.last_use(), now);
        // A horizon without a decision: the rest.
        let rest = set.give_back(EpochMillis(2000), &options, false);
        assert_eq!(rest, [("rpm".to_owned(), t(200)), ("tpm".to_owned(), t(10_000))]);
        assert_eq!(set.held(), 0);
        assert_eq!(set.give_back(EpochMillis(2000), &options, true), []);
    }
}

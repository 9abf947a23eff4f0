//! Token reservations on a hot bucket: a server takes a block of tokens off the shared bucket
//! ahead of use, with one conditional write that debits them (so nothing is ever handed out
//! that the shared bucket did not cover), then answers decisions from the block in memory.
//! This module is the pure part: how much demand a bucket sees, how big a block to take, what
//! a decision takes from it, what a block is worth in an answer and when it goes back. The
//! DynamoDB store does the writes (`table/src/store/reserve.rs`).
//!
//! The rules, in order of what they protect:
//! - **Exact**: a decision is answered from the block only when the block covers every charge
//!   of it (strict charges of at least one token; a debt or check-only charge needs the shared
//!   balance and goes to the store). What is admitted locally was debited before.
//! - **Bounded under-admission**: a block is at most what the demand uses in one horizon, and
//!   at most half of the shared balance last seen, so that near an empty bucket blocks shrink
//!   until they are worth less than [`MIN_BLOCK_DECISIONS`] decisions, when the server writes
//!   per decision again.
//!   Unused tokens go back when the demand stops for a horizon, when the pool holds more than
//!   two horizons of demand, and on shutdown. A crashed server strands at most what it held,
//!   until the bucket refills.
//! - **Honest**: the balance a local answer reports is the shared balance as last written,
//!   refilled to now, plus what the block still holds, never above the shard's capacity: what
//!   the per-decision path would have answered had nobody else written since.

use crate::bucket::{BucketLimit, BucketState, Charge, ChargeOutcome, EpochMillis, Millitokens};

/// When reservations are taken, how big and for how long.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReserveOptions {
    /// A block covers this much demand, and goes back unused after this long without one.
    pub horizon_ms: i64,
    /// A bucket is reserved once its demand reaches this many tokens per second.
    pub min_rate: Millitokens,
    /// The largest block, in tokens.
    pub max_block: Millitokens,
}

impl Default for ReserveOptions {
    fn default() -> Self {
        ReserveOptions {
            horizon_ms: 1000,
            min_rate: Millitokens::from_tokens(50),
            max_block: Millitokens::from_tokens(10_000),
        }
    }
}

/// Demand on a bucket: millitokens asked for, over a sliding second (the previous whole second
/// weighted by how much of it the window still covers, plus the current one).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    start: i64,
    current: i64,
    previous: i64,
}

const SECOND: i64 = 1000;

/// The smallest block, in decisions: below it (a bucket near empty) the server writes once per
/// decision, so that what one server holds unused while another rejects stays a few tokens.
pub const MIN_BLOCK_DECISIONS: i64 = 8;

impl Demand {
    fn roll(&mut self, now: EpochMillis) {
        let elapsed = now.0 - self.start;
        if elapsed >= 2 * SECOND {
            *self = Demand { start: now.0, current: 0, previous: 0 };
        } else if elapsed >= SECOND {
            *self = Demand { start: self.start + SECOND, current: 0, previous: self.current };
        }
    }

    pub fn record(&mut self, amount: Millitokens, now: EpochMillis) {
        self.roll(now);
        self.current = self.current.saturating_add(amount.0);
    }

    /// Millitokens asked for per second, at `now`.
    pub fn rate(&self, now: EpochMillis) -> Millitokens {
        let mut d = *self;
        d.roll(now);
        let into = (now.0 - d.start).clamp(0, SECOND);
        let previous = i128::from(d.previous) * i128::from(SECOND - into) / i128::from(SECOND);
        Millitokens(i64::try_from(previous).unwrap_or(i64::MAX).saturating_add(d.current))
    }
}

/// What a server holds of one bucket shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserve {
    /// Millitokens debited from the shard and not handed out yet.
    pub held: Millitokens,
    /// The shard the tokens came from (and go back to).
    pub shard: i64,
    /// The shard's balance after this server's last block write, and the instant it refers to.
    pub seen: BucketState,
    /// The shard's share of the limit, which `seen` and the blocks are of, and how many
    /// shards the limit is spread over.
    pub share: BucketLimit,
    pub shard_count: i64,
    pub demand: Demand,
    /// The last local answer (or block taken).
    pub last_use: EpochMillis,
    /// A block write is in flight.
    pub fetching: bool,
    /// Until then, decisions go to the store one by one (a block was refused or not worth it).
    pub cold_until: EpochMillis,
    /// Millitokens asked for by the decisions waiting on this bucket's block write
    /// ([`Reserve::wait`]): demand the sliding second may no longer show once a slow write has
    /// held them longer than that.
    pub waiting: Millitokens,
}

/// A local answer, and whether the next block should be fetched now (before this one runs out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub outcomes: Vec<ChargeOutcome>,
    pub prefetch: Option<Millitokens>,
}

impl Reserve {
    /// Nothing held yet, for a shard whose share is `share`.
    pub fn new(share: BucketLimit, now: EpochMillis) -> Reserve {
        Reserve {
            held: Millitokens(0),
            shard: 0,
            seen: BucketState::full(&share, now),
            share,
            shard_count: 1,
            demand: Demand::default(),
            last_use: now,
            fetching: false,
            cold_until: EpochMillis(0),
            waiting: Millitokens(0),
        }
    }

    /// The balance a local answer reports (see the module docs), `held` being what the block
    /// holds after the answer.
    pub fn balance(&self, held: Millitokens, now: EpochMillis) -> Millitokens {
        let shared = self.seen.refilled(&self.share, now).tokens;
        (shared + held).min(self.share.capacity)
    }

    /// Whether `charges` can be answered from a block at all (strict, at least a token each).
    pub fn servable(charges: &[Charge]) -> bool {
        !charges.is_empty() && crate::charges::strict_tokens(charges)
    }

    /// Answers `charges` from the block when it covers them all; `None` sends the decision to
    /// the store. The caller records the decision's demand first, once ([`Demand::record`]).
    pub fn serve(&mut self, charges: &[Charge], now: EpochMillis, options: &ReserveOptions) -> Option<Served> {
        let need = Millitokens(crate::charges::total(charges));
        if !Reserve::servable(charges) || self.held < need {
            return None;
        }
        let mut held = self.held;
        let outcomes = charges
            .iter()
            .map(|c| {
                held = held - Millitokens::from_tokens(c.cost);
                ChargeOutcome { admitted: true, tokens: self.balance(held, now), refilled_at: now }
            })
            .collect();
        self.held = held;
        self.last_use = now;
        let want = self.want(now, options);
        let prefetch = if self.fetching || self.held.0 * 2 >= want.0 { None } else { self.block(need, now, options) };
        Some(Served { outcomes, prefetch })
    }

    /// What one horizon of the current demand uses.
    pub fn want(&self, now: EpochMillis, options: &ReserveOptions) -> Millitokens {
        let per_horizon = i128::from(self.demand.rate(now).0) * i128::from(options.horizon_ms) / i128::from(SECOND);
        Millitokens(i64::try_from(per_horizon).unwrap_or(i64::MAX))
    }

    /// The block to take now for a decision needing `need`, or `None` when the bucket is not
    /// hot, is cooling off, or a block would be worth less than [`MIN_BLOCK_DECISIONS`] such
    /// decisions. Hot: the demand of the last second and what waits on a block write reach
    /// the threshold. The block covers a horizon of demand and at least every decision waiting
    /// and this one: when a write took longer than the demand window (a slow store, a closed
    /// loop of callers that stopped sending while they wait), the waiters are still served by
    /// one write rather than falling through to one write each.
    pub fn block(&self, need: Millitokens, now: EpochMillis, options: &ReserveOptions) -> Option<Millitokens> {
        let demand = self.demand.rate(now).0.saturating_add(self.waiting.0);
        if now < self.cold_until || demand < options.min_rate.0 {
            return None;
        }
        let half_seen = Millitokens(self.seen.refilled(&self.share, now).tokens.0.max(0) / 2);
        let queued = Millitokens(self.waiting.0.saturating_add(need.0));
        let block = self.want(now, options).max(queued).min(options.max_block).min(half_seen);
        (block.0 >= need.0.saturating_mul(MIN_BLOCK_DECISIONS)).then_some(block)
    }

    /// A decision needing `need` waits on the bucket's block write ([`Reserve::block`] counts
    /// it); [`Reserve::waited`] once it stops waiting, whether or not the block came.
    pub fn wait(&mut self, need: Millitokens) {
        self.waiting = Millitokens(self.waiting.0.saturating_add(need.0));
    }

    /// The counterpart of [`Reserve::wait`].
    pub fn waited(&mut self, need: Millitokens) {
        self.waiting = Millitokens(self.waiting.0.saturating_sub(need.0).max(0));
    }

    /// A block of `amount` landed on `shard` of `shard_count`, whose share is `share`, leaving
    /// the shard at `seen`.
    pub fn took(&mut self, amount: Millitokens, at: (i64, i64, BucketLimit), seen: BucketState, now: EpochMillis) {
        self.held = self.held + amount;
        (self.shard, self.shard_count, self.share) = at;
        self.seen = seen;
        self.last_use = now;
    }

    /// The store saw the shard at `seen` (refilled to `seen.refilled_at`) without a block of
    /// this server landing: a refused block, or the image a per-decision write left. Once
    /// nothing is held the next block is sized from it, so that near an empty bucket blocks
    /// are not worth taking ([`Reserve::block`]); while tokens are held, answers stay on the
    /// balance this server's blocks were carved from. `share` and `shard_count`: what `seen`
    /// is a balance of.
    pub fn saw(&mut self, seen: BucketState, share: BucketLimit, shard_count: i64) {
        if self.held.0 == 0 {
            (self.seen, self.share, self.shard_count) = (seen, share, shard_count);
        }
    }

    /// A block was refused (the shard is short, stamped, or its parameters changed): decisions
    /// go to the store one by one for a horizon.
    pub fn refused(&mut self, now: EpochMillis, options: &ReserveOptions) {
        self.cold_until = EpochMillis(now.0.saturating_add(options.horizon_ms));
    }

    /// What goes back now: everything after a horizon without a decision, the excess over one
    /// horizon of demand when the pool holds more than two. Taken off `held`.
    pub fn give_back(&mut self, now: EpochMillis, options: &ReserveOptions) -> Millitokens {
        let back = if now.0 - self.last_use.0 >= options.horizon_ms {
            self.held
        } else {
            let want = self.want(now, options);
            if self.held.0 > want.0.saturating_mul(2) { self.held - want } else { Millitokens(0) }
        };
        self.held = self.held - back;
        back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(cost: u64) -> Charge {
        Charge { cost, allow_debt: false }
    }

    fn t(tokens: i64) -> Millitokens {
        Millitokens(tokens * 1000)
    }

    /// 1,000 per second, one shard.
    fn reserve() -> Reserve {
        Reserve::new(BucketLimit::per_period(1000, 1000, 1), EpochMillis(0))
    }

    fn hot(r: &mut Reserve, per_second: u64, until: i64) {
        for ms in (0..until).step_by(10) {
            r.demand.record(Millitokens::from_tokens(per_second / 100), EpochMillis(ms));
        }
    }

    #[test]
    fn demand_is_a_sliding_second() {
        let mut d = Demand::default();
        for ms in (0..1000).step_by(10) {
            d.record(t(1), EpochMillis(ms));
        }
        assert_eq!(d.rate(EpochMillis(999)), t(100));
        assert_eq!(d.rate(EpochMillis(1500)), t(50), "half the previous second still counts");
        assert_eq!(d.rate(EpochMillis(2500)), t(0));
    }

    #[test]
    fn a_block_covers_a_horizon_of_demand_within_its_bounds() {
        let options = ReserveOptions::default();
        let mut r = reserve();
        assert_eq!(r.block(t(1), EpochMillis(0), &options), None, "not hot yet");
        hot(&mut r, 200, 1000);
        assert_eq!(r.block(t(1), EpochMillis(999), &options), Some(t(200)));
        // Never more than half of the shared balance last seen.
        r.seen = BucketState { tokens: t(100), refilled_at: EpochMillis(999) };
        assert_eq!(r.block(t(1), EpochMillis(999), &options), Some(t(50)));
        // Worth less than eight decisions: per decision again.
        r.seen = BucketState { tokens: t(15), refilled_at: EpochMillis(999) };
        assert_eq!(r.block(t(1), EpochMillis(999), &options), None);
        r.seen = BucketState { tokens: t(500), refilled_at: EpochMillis(999) };
        r.refused(EpochMillis(999), &options);
        assert_eq!(r.block(t(1), EpochMillis(1500), &options), None, "cooling off after a refusal");
    }

    #[test]
    fn a_block_covers_the_decisions_waiting_when_the_demand_window_no_longer_shows_them() {
        let options = ReserveOptions::default();
        let mut r = reserve();
        hot(&mut r, 200, 1000);
        for _ in 0..300 {
            r.wait(t(1));
        }
        // Three seconds on: the window is empty, the 300 still wait.
        let later = EpochMillis(3000);
        assert_eq!(r.demand.rate(later), t(0));
        assert_eq!(r.block(t(1), later, &options), Some(t(301)), "every waiter and this decision");
        assert_eq!(r.block(t(1), EpochMillis(999), &options), Some(t(301)), "more than a horizon's 200");
        for _ in 0..300 {
            r.waited(t(1));
        }
        assert_eq!(r.waiting, t(0));
        assert_eq!(r.block(t(1), later, &options), None, "nobody waits and nothing came: not hot");
        // Waiters alone make a bucket hot once they reach the threshold (50 a second).
        for _ in 0..49 {
            r.wait(t(1));
        }
        assert_eq!(r.block(t(1), later, &options), None, "49 tokens: below");
        r.wait(t(1));
        assert_eq!(r.block(t(1), later, &options), Some(t(51)));
        r.waited(t(100));
        assert_eq!(r.waiting, t(0), "never below zero");
    }

    #[test]
    fn local_answers_take_from_the_block_and_report_shared_plus_held() {
        let options = ReserveOptions::default();
        let mut r = reserve();
        hot(&mut r, 200, 1000);
        let now = EpochMillis(1000);
        r.took(t(4), (0, 1, r.share), BucketState { tokens: t(100), refilled_at: now }, now);
        r.demand.record(t(3), now);
        let served = r.serve(&[strict(1), strict(2)], now, &options).expect("covered");
        let rows: Vec<_> = served.outcomes.iter().map(|o| (o.admitted, o.tokens)).collect();
        assert_eq!(rows, [(true, t(103)), (true, t(101))]);
        assert_eq!(r.held, t(1));
        assert_eq!(
            served.prefetch,
            Some(t(50)),
            "one token left of a 200-token horizon: fetch half the shared balance"
        );
        assert_eq!(r.serve(&[strict(2)], now, &options), None, "the block cannot cover it");
        assert_eq!(r.serve(&[Charge { cost: 1, allow_debt: true }], now, &options), None, "debt needs the store");
        assert_eq!(r.serve(&[strict(0)], now, &options), None, "a check needs the shared balance");
        // 2 ms later the shared balance refilled 2 tokens; never above the capacity.
        assert_eq!(r.balance(r.held, EpochMillis(1002)), t(103));
        r.seen = BucketState { tokens: t(1000), refilled_at: now };
        assert_eq!(r.balance(r.held, now), t(1000));
    }

    #[test]
    fn a_bucket_seen_near_empty_takes_no_block_until_it_refills() {
        let options = ReserveOptions::default();
        let mut r = reserve();
        hot(&mut r, 1000, 1000);
        let now = EpochMillis(1000);
        assert_eq!(r.block(t(1), now, &options), Some(t(500)), "half the full bucket it starts from");
        // Refused, the shard found holding 2 tokens: cooling off, then sized from the 2.
        r.refused(now, &options);
        let share = r.share;
        r.saw(BucketState { tokens: t(2), refilled_at: now }, share, 1);
        assert_eq!(r.block(t(1), EpochMillis(1999), &options), None, "cooling off");
        assert_eq!(r.seen.tokens, t(2));
        // Past the horizon the shard has refilled (1,000/s) to its capacity: half of it.
        for ms in (1000..2000).step_by(10) {
            r.demand.record(t(10), EpochMillis(ms));
        }
        assert_eq!(r.block(t(1), EpochMillis(2000), &options), Some(t(500)));
        // Seen just now at 10 tokens: 5 is below 8 decisions' worth.
        r.saw(BucketState { tokens: t(10), refilled_at: EpochMillis(2000) }, share, 1);
        assert_eq!(r.block(t(1), EpochMillis(2000), &options), None);
        // While tokens are held, the balance they were carved from stays.
        r.took(
            t(100),
            (0, 1, share),
            BucketState { tokens: t(400), refilled_at: EpochMillis(2000) },
            EpochMillis(2000),
        );
        r.saw(BucketState { tokens: t(0), refilled_at: EpochMillis(2000) }, share, 1);
        assert_eq!(r.seen.tokens, t(400));
    }

    #[test]
    fn unused_tokens_go_back() {
        let options = ReserveOptions::default();
        let mut r = reserve();
        hot(&mut r, 100, 1000);
        r.took(t(500), (0, 1, r.share), BucketState { tokens: t(0), refilled_at: EpochMillis(999) }, EpochMillis(999));
        // 500 held against 100 per horizon: all but one horizon's demand goes back.
        assert_eq!(r.give_back(EpochMillis(1000), &options), t(400));
        assert_eq!(r.give_back(EpochMillis(1000), &options), t(0));
        // A horizon without a decision: the rest.
        assert_eq!(r.give_back(EpochMillis(2000), &options), t(100));
        assert_eq!(r.held, t(0));
    }
}

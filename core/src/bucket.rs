//! Millitoken token bucket: the arithmetic of the zae-limiter 0.17 table format
//! (`table-format.md` §10), shared by every store so they agree to the millitoken.
//!
//! Tokens are kept in integer millitokens (1 token = 1000), instants and periods in
//! milliseconds. Products are computed in `i128` and divisions whose numerator can be
//! negative floor toward −∞, exactly as Python's `//` does in the reference library.

use std::ops::{Add, Sub};

/// An amount of millitokens (1 token = 1000 millitokens). Negative means debt.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millitokens(pub i64);

impl Millitokens {
    pub const PER_TOKEN: i64 = 1000;
    pub const ZERO: Millitokens = Millitokens(0);

    /// Whole tokens as millitokens, saturating at `i64::MAX`.
    pub fn from_tokens(tokens: u64) -> Self {
        Millitokens(i64::try_from(i128::from(tokens) * i128::from(Self::PER_TOKEN)).unwrap_or(i64::MAX))
    }

    /// Whole tokens, rounded toward −∞ (`tk // 1000`).
    pub fn floor_tokens(self) -> i64 {
        self.0.div_euclid(Self::PER_TOKEN)
    }
}

impl Add for Millitokens {
    type Output = Millitokens;
    fn add(self, rhs: Self) -> Self {
        Millitokens(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Millitokens {
    type Output = Millitokens;
    fn sub(self, rhs: Self) -> Self {
        Millitokens(self.0.saturating_sub(rhs.0))
    }
}

/// An instant as milliseconds since the Unix epoch.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochMillis(pub i64);

impl EpochMillis {
    pub fn now() -> Self {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        EpochMillis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Parameters of one bucket: `cp`, `ra` and `rp` of the table format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketLimit {
    /// Most tokens the bucket holds (`cp`).
    pub capacity: Millitokens,
    /// Tokens added every `refill_period_ms` (`ra`); positive.
    pub refill_amount: Millitokens,
    /// Refill period in milliseconds (`rp`); positive.
    pub refill_period_ms: i64,
}

impl BucketLimit {
    /// A bucket of `capacity` whole tokens refilling `rate` tokens every `period_secs`.
    pub fn per_period(capacity: u64, rate: u64, period_secs: u64) -> Self {
        BucketLimit {
            capacity: Millitokens::from_tokens(capacity),
            refill_amount: Millitokens::from_tokens(rate),
            refill_period_ms: i64::try_from(u128::from(period_secs) * 1000).unwrap_or(i64::MAX),
        }
    }

    /// The parameters in the table's terms: `b_{name}_cp`, `b_{name}_ra`, `b_{name}_rp`.
    pub fn from_table(cp: i64, ra: i64, rp: i64) -> Self {
        BucketLimit { capacity: Millitokens(cp), refill_amount: Millitokens(ra), refill_period_ms: rp }
    }

    /// One shard's share of the limit when it is spread over `shard_count` shards (§10.4):
    /// `cp // shard_count` and `ra // shard_count` (floored), the same `rp`. A count below
    /// 1 counts as 1. The one place the share is computed, for every store and report.
    pub fn shard_share(&self, shard_count: i64) -> BucketLimit {
        let sc = shard_count.max(1);
        BucketLimit {
            capacity: Millitokens(self.capacity.0.div_euclid(sc)),
            refill_amount: Millitokens(self.refill_amount.0.div_euclid(sc)),
            refill_period_ms: self.refill_period_ms,
        }
    }

    /// Milliseconds needed to accrue `amount` millitokens, rounded up; 0 for no amount.
    pub fn millis_to_accrue(&self, amount: Millitokens) -> i64 {
        if amount.0 <= 0 {
            return 0;
        }
        if self.refill_amount.0 <= 0 {
            return i64::MAX;
        }
        let num = i128::from(amount.0) * i128::from(self.refill_period_ms);
        let den = i128::from(self.refill_amount.0);
        i64::try_from((num + den - 1).div_euclid(den)).unwrap_or(i64::MAX)
    }

    /// Retry-after of the reference (§10.5): `floor(deficit * rp / ra) + 1` ms.
    pub fn retry_after_ms(&self, deficit: Millitokens) -> i64 {
        if deficit.0 <= 0 {
            return 0;
        }
        if self.refill_amount.0 <= 0 {
            return i64::MAX;
        }
        let ms = (i128::from(deficit.0) * i128::from(self.refill_period_ms))
            .div_euclid(i128::from(self.refill_amount.0))
            + 1;
        i64::try_from(ms).unwrap_or(i64::MAX)
    }
}

/// What a store keeps per bucket: the balance `tk` and the instant `rf` it refers to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BucketState {
    pub tokens: Millitokens,
    pub refilled_at: EpochMillis,
}

/// How one charge against a bucket went.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChargeOutcome {
    pub admitted: bool,
    /// The balance right after this charge (whether or not it was admitted).
    pub tokens: Millitokens,
    /// The instant the balance refers to; tokens accrue from here.
    pub refilled_at: EpochMillis,
}

/// One charge: `cost` whole tokens, 0 meaning check only.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub cost: u64,
    /// Apply the charge even when the bucket cannot cover it (the balance may fall to −capacity).
    pub allow_debt: bool,
}

impl BucketState {
    /// A bucket that does not exist yet is full.
    pub fn full(limit: &BucketLimit, now: EpochMillis) -> Self {
        BucketState { tokens: limit.capacity, refilled_at: now }
    }

    /// Lazy, drift-compensated refill (§10.3), capped at the capacity. Debt is kept.
    pub fn refilled(self, limit: &BucketLimit, now: EpochMillis) -> Self {
        let ceiling = limit.capacity;
        let capped = BucketState { tokens: self.tokens.min(ceiling), refilled_at: self.refilled_at };
        let elapsed = i128::from(now.0) - i128::from(self.refilled_at.0);
        if elapsed <= 0 || limit.refill_amount.0 <= 0 || limit.refill_period_ms <= 0 {
            return capped;
        }
        let rate = i128::from(limit.refill_amount.0);
        let period = i128::from(limit.refill_period_ms);
        let add = (elapsed * rate).div_euclid(period);
        if add == 0 {
            return capped;
        }
        let spent = (add * period).div_euclid(rate);
        let tokens = (i128::from(self.tokens.0) + add).min(i128::from(ceiling.0));
        BucketState {
            // `tokens` is at most the ceiling, an i64.
            tokens: Millitokens(tokens as i64),
            refilled_at: EpochMillis(i64::try_from(i128::from(self.refilled_at.0) + spent).unwrap_or(now.0)),
        }
    }

    /// Applies one charge to an already refilled bucket (§10.4).
    ///
    /// Cost 0 checks only and passes iff the balance is not in debt. A strict charge passes
    /// iff the balance covers it and consumes nothing otherwise; a debt charge is applied
    /// anyway, flooring the balance at −`capacity`.
    pub fn charge(&mut self, capacity: Millitokens, charge: Charge) -> ChargeOutcome {
        let need = i128::from(charge.cost) * i128::from(Millitokens::PER_TOKEN);
        let have = i128::from(self.tokens.0);
        let admitted = if charge.cost == 0 { have >= 0 } else { have >= need };
        if admitted || charge.allow_debt {
            let floor = -i128::from(capacity.0);
            let after = (have - need).max(floor).min(have);
            self.tokens = Millitokens(after as i64);
        }
        ChargeOutcome { admitted, tokens: self.tokens, refilled_at: self.refilled_at }
    }

    /// Refills once at `now`, then applies `charges` in order, each seeing the balance the
    /// previous one left.
    pub fn charge_all(&mut self, limit: &BucketLimit, now: EpochMillis, charges: &[Charge]) -> Vec<ChargeOutcome> {
        *self = self.refilled(limit, now);
        charges.iter().map(|c| self.charge(limit.capacity, *c)).collect()
    }

    /// Milliseconds from `now` until the balance reaches `target`, if nothing else happens.
    pub fn millis_until(&self, limit: &BucketLimit, target: Millitokens, now: EpochMillis) -> i64 {
        let accrue = limit.millis_to_accrue(target - self.tokens);
        if accrue == 0 || accrue == i64::MAX {
            return accrue;
        }
        let already = (now.0 - self.refilled_at.0).max(0);
        (accrue - already).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpm(n: u64) -> BucketLimit {
        BucketLimit::per_period(n, n, 60)
    }

    #[test]
    fn new_bucket_is_full() {
        let s = BucketState::full(&rpm(5), EpochMillis(1000));
        assert_eq!(s.tokens, Millitokens(5000));
    }

    #[test]
    fn refill_is_drift_compensated() {
        // 5 tokens per 60 s = 1 token per 12 s; 13 s gives 1083 millitokens and moves rf by
        // exactly the time those millitokens took (12_996 ms), keeping the 4 ms remainder.
        let limit = rpm(5);
        let s = BucketState { tokens: Millitokens(0), refilled_at: EpochMillis(0) };
        let r = s.refilled(&limit, EpochMillis(13_000));
        assert_eq!(r.tokens, Millitokens(1083));
        assert_eq!(r.refilled_at, EpochMillis(12_996));
        // The remainder carries over: 8 more ms make 1 more millitoken (12 ms per millitoken).
        let r2 = r.refilled(&limit, EpochMillis(13_008));
        assert_eq!(r2.tokens, Millitokens(1084));
        assert_eq!(r2.refilled_at, EpochMillis(13_008));
    }

    #[test]
    fn refill_caps_at_capacity_and_clamps_without_elapsed_time() {
        let limit = rpm(5);
        let over = BucketState { tokens: Millitokens(9000), refilled_at: EpochMillis(100) };
        assert_eq!(over.refilled(&limit, EpochMillis(50)).tokens, Millitokens(5000));
        assert_eq!(over.refilled(&limit, EpochMillis(100_000)).tokens, Millitokens(5000));
    }

    #[test]
    fn refill_keeps_debt() {
        let limit = rpm(5);
        let s = BucketState { tokens: Millitokens(-3000), refilled_at: EpochMillis(0) };
        assert_eq!(s.refilled(&limit, EpochMillis(12_000)).tokens, Millitokens(-2000));
    }

    #[test]
    fn refill_products_do_not_overflow() {
        // ra of 1e18 millitokens and an elapsed time of 1e12 ms overflow i64 products.
        let limit = BucketLimit {
            capacity: Millitokens(i64::MAX),
            refill_amount: Millitokens(1_000_000_000_000_000_000),
            refill_period_ms: 1000,
        };
        let s = BucketState { tokens: Millitokens(0), refilled_at: EpochMillis(0) };
        let r = s.refilled(&limit, EpochMillis(1_000_000_000_000));
        assert_eq!(r.tokens, Millitokens(i64::MAX));
        let huge = Millitokens::from_tokens(u64::MAX);
        assert_eq!(huge, Millitokens(i64::MAX));
    }

    #[test]
    fn floor_of_negative_balances_rounds_down() {
        assert_eq!(Millitokens(-1).floor_tokens(), -1);
        assert_eq!(Millitokens(-1000).floor_tokens(), -1);
        assert_eq!(Millitokens(-1001).floor_tokens(), -2);
        assert_eq!(Millitokens(1999).floor_tokens(), 1);
    }

    #[test]
    fn strict_charge_admits_iff_covered_and_consumes_nothing_otherwise() {
        let limit = rpm(5);
        let mut s = BucketState { tokens: Millitokens(2003), refilled_at: EpochMillis(0) };
        let rejected = s.charge(limit.capacity, Charge { cost: 3, allow_debt: false });
        assert!(!rejected.admitted);
        assert_eq!(s.tokens, Millitokens(2003));
        let ok = s.charge(limit.capacity, Charge { cost: 2, allow_debt: false });
        assert!(ok.admitted);
        assert_eq!(ok.tokens, Millitokens(3));
    }

    #[test]
    fn check_only_passes_until_debt() {
        let limit = rpm(5);
        let mut zero = BucketState { tokens: Millitokens(0), refilled_at: EpochMillis(0) };
        assert!(zero.charge(limit.capacity, Charge { cost: 0, allow_debt: false }).admitted);
        let mut debt = BucketState { tokens: Millitokens(-1), refilled_at: EpochMillis(0) };
        assert!(!debt.charge(limit.capacity, Charge { cost: 0, allow_debt: true }).admitted);
        assert_eq!(debt.tokens, Millitokens(-1));
    }

    #[test]
    fn debt_charge_applies_and_floors_at_minus_capacity() {
        let limit = rpm(5);
        let mut s = BucketState { tokens: Millitokens(1000), refilled_at: EpochMillis(0) };
        let o = s.charge(limit.capacity, Charge { cost: 3, allow_debt: true });
        assert!(!o.admitted);
        assert_eq!(o.tokens, Millitokens(-2000));
        let o = s.charge(limit.capacity, Charge { cost: 100, allow_debt: true });
        assert_eq!(o.tokens, Millitokens(-5000));
    }

    #[test]
    fn charges_in_one_request_apply_in_order() {
        let limit = rpm(3);
        let mut s = BucketState::full(&limit, EpochMillis(0));
        let charge = Charge { cost: 2, allow_debt: false };
        let out = s.charge_all(&limit, EpochMillis(0), &[charge, charge, Charge { cost: 1, allow_debt: false }]);
        let admitted: Vec<bool> = out.iter().map(|o| o.admitted).collect();
        assert_eq!(admitted, [true, false, true]);
        assert_eq!(s.tokens, Millitokens(0));
    }

    #[test]
    fn a_shard_holds_the_floored_share_of_capacity_and_rate() {
        let limit = BucketLimit::from_table(10_000, 6_001, 60_000);
        assert_eq!(limit.shard_share(3), BucketLimit::from_table(3333, 2000, 60_000));
        assert_eq!(limit.shard_share(1), limit);
        assert_eq!(limit.shard_share(0), limit, "a count below 1 counts as 1");
        assert_eq!(BucketLimit::from_table(-1, 1, 1).shard_share(2).capacity, Millitokens(-1), "floored");
    }

    #[test]
    fn retry_after_matches_reference_worked_example() {
        // §10.5: rpm 5, 2003 millitokens available, 3 requested -> 11_965 ms.
        assert_eq!(rpm(5).retry_after_ms(Millitokens(997)), 11_965);
    }

    #[test]
    fn millis_until_accounts_for_time_already_accrued() {
        let limit = rpm(60); // 1 token per second
        let s = BucketState { tokens: Millitokens(0), refilled_at: EpochMillis(1_000) };
        assert_eq!(s.millis_until(&limit, Millitokens(1000), EpochMillis(1_400)), 600);
        assert_eq!(s.millis_until(&limit, Millitokens(0), EpochMillis(1_400)), 0);
    }
}

//! The one rule an entity acquire is decided by, on every store (the library's `try_consume`
//! over every requested limit): a requested limit is **exceeded** when its balance, refilled
//! to the decision's instant, cannot cover the amount (an amount of 0 checks that the balance
//! is not in debt), unless the limit is soft or its bucket bypassed; the acquire is
//! **admitted** when no limit of any side is exceeded. Each requested limit is reported with
//! its balance after the decision: debited when admitted (a bypassed bucket is not debited),
//! as it stands when rejected.
//!
//! The stores read the balances (the embedded store from its buckets, the DynamoDB store from
//! an item image or a consistent read) and apply or write what [`judge`] decided; neither has
//! a rule of its own.

use crate::bucket::{BucketLimit, EpochMillis, Millitokens};
use crate::store::LimitReport;

/// One requested limit of a side, as the store read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested<'a> {
    pub name: &'a str,
    /// The whole limit (undivided; the balance is one shard's).
    pub limit: BucketLimit,
    /// The shard's balance refilled to the decision's instant.
    pub balance: Millitokens,
    pub amount: Millitokens,
    /// Metered, never a reason to reject (it may go into debt).
    pub soft: bool,
}

/// One side of an acquire (the entity, or its parent under cascade), as the store read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideView<'a> {
    pub entity: &'a str,
    /// The shard the balances are of, and how many the limit is spread over.
    pub shard: i64,
    pub shard_count: i64,
    /// The bucket is bypassed: admitted without a debit.
    pub bypass: bool,
    pub requested: Vec<Requested<'a>>,
}

/// What [`judge`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub admitted: bool,
    /// One per requested limit, side by side in order.
    pub reports: Vec<LimitReport>,
    /// Per side: some limit of it is exceeded.
    pub short_sides: Vec<bool>,
}

/// Whether `balance` cannot cover `amount` (an amount of 0 checks that it is not in debt).
pub fn is_short(balance: Millitokens, amount: Millitokens) -> bool {
    if amount.0 == 0 { balance.0 < 0 } else { balance < amount }
}

/// Decides an acquire over `sides` at `now` (see the module docs).
pub fn judge(sides: &[SideView<'_>], now: EpochMillis) -> Judgement {
    let short_sides: Vec<bool> = sides.iter().map(|s| s.requested.iter().any(|r| exceeded(s, r))).collect();
    let admitted = !short_sides.contains(&true);
    Judgement { admitted, reports: reports(sides, now, admitted), short_sides }
}

/// Each requested limit reported with its balance: debited when `admitted` (a bypassed
/// bucket is not), as it stands otherwise; exceeded when short by the rule above.
pub fn reports(sides: &[SideView<'_>], now: EpochMillis, admitted: bool) -> Vec<LimitReport> {
    sides
        .iter()
        .flat_map(|side| {
            side.requested.iter().map(move |r| LimitReport {
                entity: side.entity.to_owned(),
                name: r.name.to_owned(),
                limit: r.limit,
                shard_count: side.shard_count,
                shard: side.shard,
                bypass: side.bypass,
                tokens: if admitted && !side.bypass { r.balance - r.amount } else { r.balance },
                at: now,
                requested: r.amount,
                exceeded: exceeded(side, r),
            })
        })
        .collect()
}

fn exceeded(side: &SideView<'_>, r: &Requested<'_>) -> bool {
    !side.bypass && !r.soft && is_short(r.balance, r.amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, balance: i64, amount: i64, soft: bool) -> Requested<'_> {
        Requested {
            name,
            limit: BucketLimit::from_table(10_000, 10_000, 60_000),
            balance: Millitokens(balance),
            amount: Millitokens(amount),
            soft,
        }
    }

    fn side<'a>(entity: &'a str, bypass: bool, requested: Vec<Requested<'a>>) -> SideView<'a> {
        SideView { entity, shard: 0, shard_count: 1, bypass, requested }
    }

    fn rows(j: &Judgement) -> Vec<(&str, &str, i64, bool)> {
        j.reports.iter().map(|r| (r.entity.as_str(), r.name.as_str(), r.tokens.0, r.exceeded)).collect()
    }

    #[test]
    fn admitted_limits_are_reported_debited() {
        let j = judge(
            &[side("key", false, vec![limit("rpm", 5000, 1000, false), limit("tpm", 0, 0, false)])],
            EpochMillis(7),
        );
        assert!(j.admitted);
        assert_eq!(rows(&j), [("key", "rpm", 4000, false), ("key", "tpm", 0, false)]);
        assert_eq!(j.reports[0].at, EpochMillis(7));
    }

    #[test]
    fn a_rejection_reports_every_limit_as_it_stands_and_only_the_short_ones_exceeded() {
        let sides = [
            side("key", false, vec![limit("rpm", 5000, 1000, false), limit("tpm", 100, 200, true)]),
            side("parent", false, vec![limit("rpm", 500, 1000, false)]),
        ];
        let j = judge(&sides, EpochMillis(0));
        assert!(!j.admitted);
        assert_eq!(
            rows(&j),
            [("key", "rpm", 5000, false), ("key", "tpm", 100, false), ("parent", "rpm", 500, true)],
            "a soft limit is never exceeded"
        );
        assert_eq!(j.short_sides, [false, true]);
    }

    #[test]
    fn soft_limits_go_into_debt_and_bypass_is_not_debited() {
        let j = judge(&[side("key", false, vec![limit("tpm", 100, 300, true)])], EpochMillis(0));
        assert!(j.admitted);
        assert_eq!(rows(&j), [("key", "tpm", -200, false)]);
        let j = judge(&[side("key", true, vec![limit("rpm", 0, 1000, false)])], EpochMillis(0));
        assert!(j.admitted);
        assert_eq!((rows(&j), j.reports[0].bypass), (vec![("key", "rpm", 0, false)], true));
    }

    #[test]
    fn an_amount_of_zero_checks_for_debt() {
        assert!(!is_short(Millitokens(0), Millitokens(0)));
        assert!(is_short(Millitokens(-1), Millitokens(0)));
        assert!(is_short(Millitokens(999), Millitokens(1000)));
        assert!(!is_short(Millitokens(1000), Millitokens(1000)));
    }
}

//! A YAML rule's charges on one bucket (the engine's ordered charges on one limit): decided in
//! order against one balance, each seeing what the previous one left, with the admission
//! (enforced, soft, bypass, disabled) a bucket's stamps give, and what the decision writes
//! (the debit, the debt, the guard under which it stays valid). The DynamoDB store decides a
//! rule's bucket with it on every path (an image, a consistent read, the rejection cache).

use crate::bucket::{BucketLimit, BucketState, Charge, ChargeOutcome, EpochMillis, Millitokens};

/// How a bucket item admits a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The balance decides.
    Enforced,
    /// A live `b_hits_soft` stamp: admitted whatever the balance, debited into debt.
    Soft,
    /// A live `bypass` stamp: admitted, `tc` counted, `tk` untouched.
    Bypass,
    /// `disabled = true`: every charge rejected, nothing written.
    Disabled,
}

/// The decision for one bucket's charges against one balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One outcome per charge; `tokens` unscaled (this shard's balance).
    pub outcomes: Vec<ChargeOutcome>,
    /// Millitokens of the admitted charges.
    pub admitted: i64,
    /// Millitokens debited unconditionally for rejected debt charges (floored).
    pub debt: i64,
    /// The lowest balance, before this request's debits, under which every admitted charge
    /// stays valid (`None` when nothing is admitted, or under bypass).
    pub guard: Option<i64>,
    /// Every charge admitted.
    pub all_admitted: bool,
    /// Per charge, the millitokens it takes off `tk` (0 for rejected strict charges and
    /// under bypass); used to replay the decision on a newer image.
    pub debits: Vec<i64>,
}

impl Plan {
    /// Whether the decision must be written: something admitted or some debt recorded.
    pub fn writes(&self) -> bool {
        self.guard.is_some() || self.debt > 0 || (self.all_admitted && self.admitted > 0)
    }

    /// Millitokens added to `tc`.
    pub fn consumed(&self) -> i64 {
        self.admitted.saturating_add(self.debt)
    }

    /// Millitokens taken off `tk`.
    pub fn tk_debit(&self, admission: Admission) -> i64 {
        if admission == Admission::Bypass { 0 } else { self.consumed() }
    }

    /// The outcomes again, from `balance` (the balance before this request's debits).
    pub fn replay(&self, balance: i64, refilled_at: EpochMillis) -> Vec<ChargeOutcome> {
        let mut have = balance;
        self.outcomes
            .iter()
            .zip(&self.debits)
            .map(|(o, d)| {
                have = have.saturating_sub(*d);
                ChargeOutcome { admitted: o.admitted, tokens: Millitokens(have), refilled_at }
            })
            .collect()
    }
}

fn sat(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Millitokens of a charge.
pub fn need(charge: &Charge) -> i64 {
    Millitokens::from_tokens(charge.cost).0
}

/// Sum of the charges, in millitokens.
pub fn total(charges: &[Charge]) -> i64 {
    sat(charges.iter().map(|c| i128::from(need(c))).sum())
}

/// Whether every charge is strict and of at least one token: what a balance alone decides
/// (a debt charge must reach the table, a check-only one passes at a balance of 0), so a
/// cached image may reject it and a reservation block may admit it.
pub fn strict_tokens(charges: &[Charge]) -> bool {
    charges.iter().all(|c| !c.allow_debt && c.cost >= 1)
}

/// Decides `charges` in order against `balance` (already refilled to the decision instant),
/// each seeing the balance the previous one left, like `BucketState::charge_all`.
///
/// Enforced: a strict charge passes iff the balance covers it (cost 0: iff not in debt); a
/// debt charge that does not fit is applied anyway, floored at `-capacity`, and reported
/// rejected. Soft and bypass admit everything; disabled rejects everything.
pub fn decide(balance: i64, refilled_at: EpochMillis, capacity: i64, charges: &[Charge], admission: Admission) -> Plan {
    let mut have = i128::from(balance);
    let mut prefix: i128 = 0;
    let mut guard: Option<i128> = None;
    let mut admitted: i128 = 0;
    let mut debt: i128 = 0;
    let mut all = true;
    let mut outcomes = Vec::with_capacity(charges.len());
    let mut debits = Vec::with_capacity(charges.len());
    for charge in charges {
        let n = i128::from(need(charge));
        let (ok, debit) = match admission {
            Admission::Disabled => (false, 0),
            Admission::Bypass => {
                admitted += n;
                (true, 0)
            }
            Admission::Soft => {
                guard = Some(guard.unwrap_or(0).max(prefix + n));
                admitted += n;
                (true, n)
            }
            Admission::Enforced => {
                // The admission rule and the debt floor are core's (`BucketState::charge`).
                let mut state = BucketState { tokens: Millitokens(sat(have)), refilled_at };
                let outcome = state.charge(Millitokens(capacity), *charge);
                let d = have - i128::from(state.tokens.0);
                if outcome.admitted {
                    guard = Some(guard.unwrap_or(0).max(prefix + n));
                    admitted += n;
                } else {
                    debt += d;
                }
                (outcome.admitted, d)
            }
        };
        all &= ok;
        have -= debit;
        prefix += debit;
        debits.push(sat(debit));
        outcomes.push(ChargeOutcome { admitted: ok, tokens: Millitokens(sat(have)), refilled_at });
    }
    Plan { outcomes, admitted: sat(admitted), debt: sat(debt), guard: guard.map(sat), all_admitted: all, debits }
}

/// The balance `tk` stored at `rf`, refilled to `now` under `limit` (§10.3; always clamped).
pub fn project(tk: i64, rf: i64, limit: &BucketLimit, now: EpochMillis) -> BucketState {
    BucketState { tokens: Millitokens(tk), refilled_at: EpochMillis(rf) }.refilled(limit, now)
}

/// Every strict charge rejected; debt charges applied (floored) and reported rejected.
pub fn reject_all(balance: i64, refilled_at: EpochMillis, capacity: i64, charges: &[Charge]) -> Plan {
    let mut have = balance;
    let mut plan = Plan {
        outcomes: Vec::with_capacity(charges.len()),
        admitted: 0,
        debt: 0,
        guard: None,
        all_admitted: false,
        debits: Vec::with_capacity(charges.len()),
    };
    for c in charges {
        let mut d = 0;
        if c.allow_debt {
            let single =
                decide(have, refilled_at, capacity, &[Charge { cost: c.cost, allow_debt: true }], Admission::Enforced);
            // Admitted or not, a debt charge here is recorded as an unconditional debit.
            d = single.debits[0];
        }
        have = have.saturating_sub(d);
        plan.debt = plan.debt.saturating_add(d);
        plan.debits.push(d);
        plan.outcomes.push(ChargeOutcome { admitted: false, tokens: Millitokens(have), refilled_at });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(cost: u64) -> Charge {
        Charge { cost, allow_debt: false }
    }

    fn debt(cost: u64) -> Charge {
        Charge { cost, allow_debt: true }
    }

    const T: EpochMillis = EpochMillis(7);

    #[test]
    fn sequential_decision_matches_core() {
        let limit = BucketLimit::per_period(3, 3, 60);
        let charges = [strict(2), strict(2), strict(1)];
        let plan = decide(3000, T, 3000, &charges, Admission::Enforced);
        let mut state = BucketState { tokens: Millitokens(3000), refilled_at: T };
        let core = state.charge_all(&limit, T, &charges);
        assert_eq!(plan.outcomes, core);
        assert_eq!(plan.admitted, 3000);
        assert_eq!(plan.guard, Some(3000));
        assert!(!plan.all_admitted);
        assert_eq!(plan.debits, vec![2000, 0, 1000]);
    }

    #[test]
    fn debt_is_floored_and_counted_apart() {
        let limit = BucketLimit::per_period(5, 5, 60);
        let charges = [debt(3), strict(1), debt(100)];
        let plan = decide(1000, T, 5000, &charges, Admission::Enforced);
        let mut state = BucketState { tokens: Millitokens(1000), refilled_at: T };
        assert_eq!(plan.outcomes, state.charge_all(&limit, T, &charges));
        assert_eq!(plan.debt, 3000 + 3000);
        assert_eq!(plan.admitted, 0);
        assert_eq!(plan.guard, None);
        assert!(plan.writes());
    }

    #[test]
    fn guard_covers_debt_debited_before_an_admitted_charge() {
        // 10 tokens: 4 admitted, the debt of 7 leaves -1, so the check-only charge fails.
        let plan = decide(10_000, T, 10_000, &[strict(4), debt(7), strict(0)], Admission::Enforced);
        assert_eq!(plan.outcomes.iter().map(|o| o.admitted).collect::<Vec<_>>(), [true, false, false]);
        assert_eq!(plan.guard, Some(4000));
        assert_eq!(plan.debt, 7000);
        let plan = decide(10_000, T, 10_000, &[debt(3), strict(2)], Admission::Enforced);
        assert_eq!(plan.guard, Some(5000), "the strict charge is valid only above 3 + 2 tokens");
        assert!(plan.all_admitted);
    }

    #[test]
    fn check_only_charges() {
        let plan = decide(0, T, 1000, &[strict(0)], Admission::Enforced);
        assert!(plan.all_admitted);
        assert_eq!(plan.guard, Some(0));
        assert!(plan.writes());
        let plan = decide(-1, T, 1000, &[strict(0)], Admission::Enforced);
        assert!(!plan.all_admitted);
        assert!(!plan.writes());
    }

    #[test]
    fn soft_bypass_and_disabled() {
        let plan = decide(1000, T, 5000, &[strict(3)], Admission::Soft);
        assert!(plan.all_admitted);
        assert_eq!(plan.outcomes[0].tokens, Millitokens(-2000));
        let plan = decide(1000, T, 5000, &[strict(3)], Admission::Bypass);
        assert!(plan.all_admitted);
        assert_eq!(plan.outcomes[0].tokens, Millitokens(1000));
        assert_eq!((plan.admitted, plan.tk_debit(Admission::Bypass), plan.consumed()), (3000, 0, 3000));
        let plan = decide(9000, T, 5000, &[strict(3), debt(1)], Admission::Disabled);
        assert!(!plan.writes());
        assert!(plan.outcomes.iter().all(|o| !o.admitted && o.tokens == Millitokens(9000)));
    }

    #[test]
    fn replay_applies_the_same_debits() {
        let plan = decide(3000, T, 3000, &[strict(2), strict(2), strict(1)], Admission::Enforced);
        let again = plan.replay(2500, EpochMillis(9));
        assert_eq!(again.iter().map(|o| o.tokens.0).collect::<Vec<_>>(), [500, 500, -500]);
    }

    #[test]
    fn reject_all_keeps_only_debts() {
        let charges = [Charge { cost: 1, allow_debt: false }, Charge { cost: 3, allow_debt: true }];
        let plan = reject_all(2000, EpochMillis(1), 5000, &charges);
        assert_eq!(plan.debt, 3000);
        assert_eq!(
            plan.outcomes.iter().map(|o| (o.admitted, o.tokens.0)).collect::<Vec<_>>(),
            [(false, 2000), (false, -1000)]
        );
    }
}

//! Entity rules: from a matched `entity:` rule to a store [`EntityRequest`], and from the
//! store's [`EntityOutcome`] to the descriptor's status.
//!
//! The status reports the limit that decided: an exceeded one (the longest wait) when the
//! acquire was rejected, else the one with the least remaining, over the entity's and, under
//! cascade, its parent's limits. Its unit is the smallest Envoy unit at least as long as the
//! refill period, with `requests_per_unit` the refill rate over that unit.

use super::{Code, ReportedLimit, Reporting, RequestError, Status, StatusKind, whole_seconds};
use crate::bucket::{BucketLimit, BucketState, Millitokens};
use crate::config::{Amount, EntityRule, ResourceSource, Unit};
use crate::keys::{is_valid_entity_id, is_valid_resource};
use crate::store::{EntityOutcome, EntityRequest, LimitReport};
use std::sync::Arc;

/// The store request of descriptor `index` matched to `rule`, charging `cost` hits.
pub(super) fn request(
    rule: &EntityRule,
    namespace: &Arc<str>,
    entries: &[(&str, &str)],
    cost: u64,
    index: usize,
    reserve: bool,
) -> Result<EntityRequest, RequestError> {
    let value_of = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or_default();
    let entity = value_of(&rule.id_from);
    if !is_valid_entity_id(entity) {
        return Err(RequestError::InvalidEntity { descriptor: index, what: "entity id", value: entity.to_owned() });
    }
    let resource = match &rule.resource {
        ResourceSource::Literal(r) => r.as_str(),
        ResourceSource::Entry(key) => {
            let r = value_of(key);
            if !is_valid_resource(r) {
                return Err(RequestError::InvalidEntity { descriptor: index, what: "resource", value: r.to_owned() });
            }
            r
        }
    };
    let consume = rule
        .consume
        .iter()
        .map(|(name, amount)| {
            let tokens = match amount {
                Amount::Tokens(n) => *n,
                Amount::Hits => cost,
            };
            (name.clone(), Millitokens::from_tokens(tokens))
        })
        .collect();
    Ok(EntityRequest {
        namespace: namespace.clone(),
        entity: entity.to_owned(),
        resource: resource.to_owned(),
        consume,
        reserve,
    })
}

/// The Envoy unit for a refill period and the refill rate per that unit.
pub fn reported_rate(limit: &BucketLimit) -> (u32, Unit) {
    let rp = limit.refill_period_ms.max(1);
    let unit = Unit::ALL.into_iter().find(|u| i128::from(u.seconds()) * 1000 >= i128::from(rp)).unwrap_or(Unit::Year);
    let per_unit = i128::from(limit.refill_amount.0) * i128::from(unit.seconds()) * 1000 / i128::from(rp) / 1000;
    (u32::try_from(per_unit.max(0)).unwrap_or(u32::MAX), unit)
}

/// Whole tokens left of the whole limit (one shard's balance times the shard count).
fn remaining(report: &LimitReport) -> i64 {
    Millitokens(report.tokens.0.saturating_mul(report.shard_count.max(1))).floor_tokens()
}

impl Reporting {
    fn entity_status(&self, code: Code, report: Option<&LimitReport>, remaining: u32, reset: Option<u64>) -> Status {
        let kind = match code {
            Code::OverLimit => StatusKind::OverLimit,
            Code::Ok if report.is_some() => StatusKind::Ok,
            Code::Ok => StatusKind::NoLimit,
        };
        let status = self.status(code, kind);
        let (code, kind) = (status.code, status.kind);
        let current_limit = report.map(|r| {
            let (requests_per_unit, unit) = reported_rate(&r.limit);
            ReportedLimit { requests_per_unit, unit, name: Arc::from(r.name.as_str()) }
        });
        let near_limit = code == Code::Ok
            && kind == StatusKind::Ok
            && report.is_some_and(|r| {
                r.tokens.0.saturating_mul(100)
                    < r.share().capacity.0.saturating_mul(super::NEAR_LIMIT_REMAINING_PERCENT)
            });
        Status { current_limit, limit_remaining: remaining, duration_until_reset_secs: reset, near_limit, ..status }
    }

    /// The descriptor's status for the store's outcome.
    pub(super) fn decide_entity(&self, outcome: &EntityOutcome) -> Status {
        match outcome {
            EntityOutcome::NoLimits => self.entity_status(Code::Ok, None, 0, None),
            EntityOutcome::Admitted(reports) if reports.is_empty() => self.entity_status(Code::Ok, None, 0, None),
            EntityOutcome::Rejected(reports) if reports.is_empty() => {
                self.entity_status(Code::OverLimit, None, 0, None)
            }
            EntityOutcome::Disabled { .. } => self.entity_status(Code::OverLimit, None, 0, None),
            EntityOutcome::Admitted(reports) => {
                let report = reports.iter().min_by_key(|r| remaining(r)).expect("not empty");
                let share = report.share();
                let state = BucketState { tokens: report.tokens, refilled_at: report.at };
                let reset =
                    whole_seconds(state.millis_until(&share, share.capacity, report.at), max_reset_secs(report));
                let left = remaining(report).clamp(0, i64::from(u32::MAX)) as u32;
                self.entity_status(Code::Ok, Some(report), left, Some(reset))
            }
            EntityOutcome::Rejected(reports) => {
                let report =
                    reports.iter().filter(|r| r.exceeded).max_by_key(|r| r.retry_after_ms()).unwrap_or(&reports[0]);
                let max = max_reset_secs(report);
                let wait = report.retry_after_ms();
                let reset = if wait == i64::MAX { max } else { whole_seconds(wait, max) };
                self.entity_status(Code::OverLimit, Some(report), 0, Some(reset))
            }
        }
    }
}

/// The longest reset worth reporting: a full refill of the shard from empty, at least the unit.
fn max_reset_secs(report: &LimitReport) -> u64 {
    let share = report.share();
    let full = u64::try_from(share.millis_to_accrue(share.capacity)).unwrap_or(u64::MAX).div_ceil(1000);
    reported_rate(&report.limit).1.seconds().max(full)
}

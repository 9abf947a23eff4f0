//! From a rate-limit request to bucket charges, and from their outcomes to statuses
//! (`envoy-rls.md` §2.2 and §4).
//!
//! [`plan`] resolves each descriptor to a rule (or an override), drops replaced limits,
//! and merges every occurrence of a bucket into one [`BucketRequest`] with its charges in
//! request order. A store applies those; [`Plan::decide`] turns the outcomes into one
//! [`Status`] per descriptor and the overall code.

use crate::bucket::{BucketLimit, BucketState, Charge, ChargeOutcome, EpochMillis, Millitokens};
use crate::config::{Metadata, RateLimitConfig, Rule, RuleLimit, Unit};
use crate::keys::{BucketKey, encode_entries, override_resource};
use crate::store::{BucketRequest, EntityOutcome, EntityRequest};
use std::collections::HashSet;
use std::sync::Arc;

/// Most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 32;
/// Longest key or value, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1024;
/// A status is "near the limit" when less than this share of the capacity remains.
const NEAR_LIMIT_REMAINING_PERCENT: i64 = 20;

/// A rate-limit request, transport-independent.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub domain: &'a str,
    pub descriptors: Vec<Descriptor<'a>>,
    /// Request-level hits; 0 means 1.
    pub hits_addend: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Descriptor<'a> {
    pub entries: Vec<(&'a str, &'a str)>,
    /// The descriptor's `limit` override.
    pub limit_override: Option<LimitOverride>,
    /// The descriptor's own hits; `Some(0)` checks without consuming.
    pub hits_addend: Option<u64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// Why a request is refused before any decision (gRPC INVALID_ARGUMENT).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    #[error("rate limit descriptor list must not be empty")]
    NoDescriptors,
    #[error("too many descriptors: {0} (at most {MAX_DESCRIPTORS})")]
    TooManyDescriptors(usize),
    #[error("descriptor {descriptor}: too many entries: {count} (at most {MAX_ENTRIES})")]
    TooManyEntries { descriptor: usize, count: usize },
    #[error("descriptor {descriptor} entry {entry}: key must not be empty")]
    EmptyKey { descriptor: usize, entry: usize },
    #[error("descriptor {descriptor} entry {entry}: {what} is {len} bytes (at most {MAX_ENTRY_BYTES})")]
    TooLong { descriptor: usize, entry: usize, what: &'static str, len: usize },
    #[error("descriptor {descriptor}: limit override has unit UNKNOWN")]
    UnknownOverrideUnit { descriptor: usize },
    #[error("domain is {0} bytes (at most {MAX_ENTRY_BYTES})")]
    DomainTooLong(usize),
    #[error("descriptor {descriptor}: '{value}' is not a valid zae-limiter {what}")]
    InvalidEntity { descriptor: usize, what: &'static str, value: String },
}

impl Request<'_> {
    /// The size caps and the request errors of the protocol.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.domain.is_empty() {
            return Err(RequestError::EmptyDomain);
        }
        if self.domain.len() > MAX_ENTRY_BYTES {
            return Err(RequestError::DomainTooLong(self.domain.len()));
        }
        if self.descriptors.is_empty() {
            return Err(RequestError::NoDescriptors);
        }
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors(self.descriptors.len()));
        }
        for (descriptor, d) in self.descriptors.iter().enumerate() {
            if d.entries.len() > MAX_ENTRIES {
                return Err(RequestError::TooManyEntries { descriptor, count: d.entries.len() });
            }
            for (entry, (key, value)) in d.entries.iter().enumerate() {
                if key.is_empty() {
                    return Err(RequestError::EmptyKey { descriptor, entry });
                }
                for (what, s) in [("key", key), ("value", value)] {
                    if s.len() > MAX_ENTRY_BYTES {
                        return Err(RequestError::TooLong { descriptor, entry, what, len: s.len() });
                    }
                }
            }
        }
        Ok(())
    }
}

/// The limit reported in a status (`current_limit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub name: Arc<str>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// What happened to one descriptor, for metrics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StatusKind {
    NoLimit,
    Unlimited,
    Ok,
    OverLimit,
    /// Over the limit, reported OK because the rule is in shadow mode.
    Shadow,
}

/// One descriptor's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub current_limit: Option<ReportedLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset_secs: Option<u64>,
    pub kind: StatusKind,
    /// Admitted with less than a fifth of the capacity left.
    pub near_limit: bool,
    /// The matched rule's place in the config (`override` for overrides), for per-rule metrics.
    pub rule: Option<Arc<str>>,
    /// The rule metric label made of the request's values (`detailed_metric`,
    /// `value_to_metric`), used instead of `rule` when set.
    pub values_label: Option<String>,
    /// The rule is in quota mode (`quota_mode: true`); the global `--quota-mode` is applied
    /// by [`Plan::decide`] on top.
    pub quota_mode: bool,
    /// The rule's `metadata:`, for the response's dynamic metadata.
    pub metadata: Option<Arc<Metadata>>,
}

impl Status {
    fn no_limit() -> Self {
        Status {
            code: Code::Ok,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset_secs: None,
            kind: StatusKind::NoLimit,
            near_limit: false,
            rule: None,
            values_label: None,
            quota_mode: false,
            metadata: None,
        }
    }

    fn unlimited() -> Self {
        Status { limit_remaining: u32::MAX, kind: StatusKind::Unlimited, ..Status::no_limit() }
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub overall: Code,
    pub statuses: Vec<Status>,
}

/// Request-wide settings of [`Plan::decide`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    /// `--shadow-mode`: the overall code is OK whatever the statuses say.
    pub shadow: bool,
    /// `--quota-mode` (the reference's `QUOTA_MODE`): every descriptor is a quota one.
    pub quota: bool,
}

/// How a matched rule's statuses are reported: what the rule says beyond its limit.
#[derive(Clone, Debug)]
struct Reporting {
    shadow: bool,
    quota: bool,
    rule: Arc<str>,
    values_label: Option<String>,
    metadata: Option<Arc<Metadata>>,
}

impl Reporting {
    fn of(rule: &Rule, entries: &[(&str, &str)]) -> Self {
        Reporting {
            shadow: rule.shadow_mode,
            quota: rule.quota_mode,
            rule: rule.path.clone(),
            values_label: rule.steps.values_label(entries, rule.detailed_metric),
            metadata: rule.metadata.clone(),
        }
    }

    /// A descriptor's own `limit`: no shadow or quota mode, no metadata (as the reference).
    fn of_override() -> Self {
        Reporting { shadow: false, quota: false, rule: "override".into(), values_label: None, metadata: None }
    }

    /// The status for `code` as the rule reports it: shadow mode turns over into OK.
    fn status(&self, code: Code, kind: StatusKind) -> Status {
        let (code, kind) =
            if code == Code::OverLimit && self.shadow { (Code::Ok, StatusKind::Shadow) } else { (code, kind) };
        Status {
            code,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset_secs: None,
            kind,
            near_limit: false,
            rule: Some(self.rule.clone()),
            values_label: self.values_label.clone(),
            quota_mode: self.quota,
            metadata: self.metadata.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Limited {
    limit: ReportedLimit,
    bucket_limit: BucketLimit,
    reporting: Reporting,
}

#[derive(Clone, Debug)]
enum Slot {
    NoLimit,
    Unlimited,
    /// `requests_per_unit: 0`: always over, nothing stored.
    Blocked(Limited),
    Charged {
        limited: Limited,
        bucket: usize,
        charge: usize,
        cost: u64,
    },
    /// An entity rule: the `entity`-th entity request.
    Entity {
        reporting: Reporting,
        entity: usize,
    },
}

/// What a request charges, and how to report it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The configured domain the request named, if the config has it.
    domain: Option<Arc<str>>,
    slots: Vec<Slot>,
    buckets: Vec<BucketRequest>,
    entities: Vec<EntityRequest>,
}

fn bucket_limit(requests_per_unit: u32, burst: Option<u32>, unit: Unit) -> BucketLimit {
    BucketLimit::per_period(u64::from(burst.unwrap_or(requests_per_unit)), u64::from(requests_per_unit), unit.seconds())
}

/// Resolves a request against the config. The request must have passed
/// [`Request::validate`]; an entity rule whose entry values are not zae-limiter identifiers
/// fails the request ([`RequestError::InvalidEntity`]).
pub fn plan(config: &RateLimitConfig, request: &Request<'_>) -> Result<Plan, RequestError> {
    let Some(domain) = config.domain(request.domain) else {
        return Ok(Plan {
            domain: None,
            slots: vec![Slot::NoLimit; request.descriptors.len()],
            buckets: Vec::new(),
            entities: Vec::new(),
        });
    };
    let request_cost = u64::from(request.hits_addend.max(1));
    // Each descriptor's rule, and the names the limits of non-override descriptors replace.
    let rules: Vec<_> = request
        .descriptors
        .iter()
        .map(|d| if d.entries.is_empty() { None } else { domain.lookup(d.entries.iter().copied()) })
        .collect();
    let replaced: HashSet<&str> = request
        .descriptors
        .iter()
        .zip(&rules)
        .filter(|(d, _)| d.limit_override.is_none())
        .filter_map(|(_, r)| *r)
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect();

    let mut plan = Plan {
        domain: Some(domain.name.clone()),
        slots: Vec::with_capacity(rules.len()),
        buckets: Vec::new(),
        entities: Vec::new(),
    };
    for (index, (descriptor, rule)) in request.descriptors.iter().zip(rules).enumerate() {
        let cost = descriptor.hits_addend.unwrap_or(request_cost);
        let (limited, resource, entity, allow_debt, reserve) = match (descriptor.limit_override, rule) {
            (Some(o), rule) => {
                // An override shares the bucket of the config limit on the same entries and
                // unit, so the dynamic limit and the configured one count together.
                let resource = match rule.map(|r| (&r.limit, &r.resource)) {
                    Some((RuleLimit::Limited { unit, .. }, resource)) if *unit == o.unit => resource.clone(),
                    _ => Arc::from(override_resource(o.unit.as_str())),
                };
                let limited = Limited {
                    limit: ReportedLimit { requests_per_unit: o.requests_per_unit, unit: o.unit, name: "".into() },
                    bucket_limit: bucket_limit(o.requests_per_unit, None, o.unit),
                    reporting: Reporting::of_override(),
                };
                let entity = encode_entries(descriptor.entries.iter().copied());
                (limited, resource, entity, false, rule.is_none_or(|r| r.reserve))
            }
            (None, None) => {
                plan.slots.push(Slot::NoLimit);
                continue;
            }
            (None, Some(rule)) if !rule.name.is_empty() && replaced.contains(rule.name.as_ref()) => {
                plan.slots.push(Slot::NoLimit);
                continue;
            }
            (None, Some(rule)) => match &rule.limit {
                RuleLimit::Unlimited => {
                    plan.slots.push(Slot::Unlimited);
                    continue;
                }
                RuleLimit::Entity(entity) => {
                    let request =
                        entity::request(entity, &domain.namespace, &descriptor.entries, cost, index, rule.reserve)?;
                    let reporting = Reporting::of(rule, &descriptor.entries);
                    plan.entities.push(request);
                    plan.slots.push(Slot::Entity { reporting, entity: plan.entities.len() - 1 });
                    continue;
                }
                &RuleLimit::Limited { unit, requests_per_unit, burst } => {
                    let limited = Limited {
                        limit: ReportedLimit { requests_per_unit, unit, name: rule.name.clone() },
                        bucket_limit: bucket_limit(requests_per_unit, burst, unit),
                        reporting: Reporting::of(rule, &descriptor.entries),
                    };
                    let entity = rule.steps.bucket_entity(&descriptor.entries);
                    (limited, rule.resource.clone(), entity, rule.allow_debt, rule.reserve)
                }
            },
        };
        if limited.limit.requests_per_unit == 0 {
            plan.slots.push(Slot::Blocked(limited));
            continue;
        }
        let key = BucketKey { namespace: domain.namespace.clone(), resource, entity };
        let charge = Charge { cost, allow_debt };
        let bucket = match plan.buckets.iter().position(|b| b.key == key) {
            Some(i) => {
                plan.buckets[i].charges.push(charge);
                plan.buckets[i].reserve &= reserve;
                i
            }
            None => {
                plan.buckets.push(BucketRequest { key, limit: limited.bucket_limit, charges: vec![charge], reserve });
                plan.buckets.len() - 1
            }
        };
        let charge = plan.buckets[bucket].charges.len() - 1;
        plan.slots.push(Slot::Charged { limited, bucket, charge, cost });
    }
    Ok(plan)
}

/// Seconds for `ms`, rounded up and clamped to `[1, max]`.
fn whole_seconds(ms: i64, max: u64) -> u64 {
    let secs = u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000);
    secs.clamp(1, max.max(1))
}

impl Limited {
    /// The longest reset worth reporting: a full refill from empty (the unit without burst).
    fn max_reset_secs(&self) -> u64 {
        let full = self.bucket_limit.millis_to_accrue(self.bucket_limit.capacity);
        self.limit.unit.seconds().max(u64::try_from(full).unwrap_or(u64::MAX).div_ceil(1000))
    }

    fn status(&self, code: Code, remaining: u32, reset_secs: u64, kind: StatusKind, near_limit: bool) -> Status {
        Status {
            current_limit: Some(self.limit.clone()),
            limit_remaining: remaining,
            duration_until_reset_secs: Some(reset_secs),
            near_limit,
            ..self.reporting.status(code, kind)
        }
    }

    fn charged_status(&self, outcome: &ChargeOutcome, cost: u64, now: EpochMillis) -> Status {
        let limit = &self.bucket_limit;
        let state = BucketState { tokens: outcome.tokens, refilled_at: outcome.refilled_at };
        let max_secs = self.max_reset_secs();
        if outcome.admitted {
            let remaining = outcome.tokens.floor_tokens().clamp(0, i64::from(u32::MAX));
            let reset = whole_seconds(state.millis_until(limit, limit.capacity, now), max_secs);
            let near =
                outcome.tokens.0.saturating_mul(100) < limit.capacity.0.saturating_mul(NEAR_LIMIT_REMAINING_PERCENT);
            return self.status(Code::Ok, remaining as u32, reset, StatusKind::Ok, near);
        }
        let wanted = Millitokens::from_tokens(cost);
        let reset = if wanted > limit.capacity {
            max_secs
        } else {
            whole_seconds(state.millis_until(limit, wanted, now), max_secs)
        };
        self.status(Code::OverLimit, 0, reset, StatusKind::OverLimit, false)
    }
}

impl Plan {
    /// The configured domain the request named; `None` for a domain the config lacks.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The buckets to charge, for the store.
    pub fn bucket_requests(&self) -> &[BucketRequest] {
        &self.buckets
    }

    /// The entity acquires, for the store.
    pub fn entity_requests(&self) -> &[EntityRequest] {
        &self.entities
    }

    /// Builds the answer from the store's outcomes (one list per bucket request, one outcome
    /// per charge; one outcome per entity request). The overall code is OVER_LIMIT when a
    /// descriptor that is not in quota mode is over, or when the request has quota
    /// descriptors and every one of them is over (envoyproxy/ratelimit's
    /// `shouldRateLimitWorker`; under the global quota mode every descriptor with no
    /// `unlimited` rule is a quota one, those without a rule included); and OK in shadow mode.
    pub fn decide(
        &self,
        outcomes: &[Vec<ChargeOutcome>],
        entities: &[EntityOutcome],
        now: EpochMillis,
        modes: Modes,
    ) -> Decision {
        let statuses: Vec<Status> = self
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::NoLimit => Status::no_limit(),
                Slot::Unlimited => Status::unlimited(),
                Slot::Blocked(limited) => {
                    limited.status(Code::OverLimit, 0, limited.limit.unit.seconds(), StatusKind::OverLimit, false)
                }
                Slot::Entity { reporting, entity } => match entities.get(*entity) {
                    Some(outcome) => reporting.decide_entity(outcome),
                    None => reporting.decide_entity(&EntityOutcome::Rejected(Vec::new())),
                },
                Slot::Charged { limited, bucket, charge, cost } => {
                    match outcomes.get(*bucket).and_then(|o| o.get(*charge)) {
                        Some(outcome) => limited.charged_status(outcome, *cost, now),
                        // A store must answer every charge; treat a missing one as a rejection.
                        None => limited.status(
                            Code::OverLimit,
                            0,
                            limited.limit.unit.seconds(),
                            StatusKind::OverLimit,
                            false,
                        ),
                    }
                }
            })
            .collect();
        let (mut quota, mut quota_over, mut over) = (0, 0, false);
        for status in statuses.iter().filter(|s| s.kind != StatusKind::Unlimited) {
            let is_over = status.code == Code::OverLimit;
            if modes.quota || status.quota_mode {
                quota += 1;
                quota_over += usize::from(is_over);
            } else {
                over |= is_over;
            }
        }
        let over = over || (quota > 0 && quota == quota_over);
        let overall = if over && !modes.shadow { Code::OverLimit } else { Code::Ok };
        Decision { overall, statuses }
    }
}

mod entity;
pub use entity::reported_rate;

#[cfg(test)]
mod entity_tests;
#[cfg(test)]
mod modes_tests;
#[cfg(test)]
mod tests;

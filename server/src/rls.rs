//! The Rate Limit Service: an Envoy request in, validation, the decision
//! (`zael_core::decision`), the store, and the Envoy response out.
//!
//! gRPC (`ShouldRateLimit`) and HTTP (`POST /json`) both come through
//! [`RateLimiter::should_rate_limit`].

use crate::config_watch::ConfigHolder;
use crate::metrics as m;
use crate::telemetry;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{self, Code as WireCode, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::Duration;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use zael_core::bucket::{ChargeOutcome, EpochMillis};
use zael_core::config::Unit;
use zael_core::decision::{self, Code, Decision, LimitOverride, Modes, StatusKind};
use zael_core::store::{BucketStore, EntityOutcome, OnUnavailable};

/// Names of the headers `--response-headers` adds.
#[derive(Clone, Debug)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// Everything a decision needs; shared by the gRPC and HTTP front ends.
pub struct RateLimiter {
    pub config: Arc<ConfigHolder>,
    pub store: Arc<dyn BucketStore>,
    /// `--shadow-mode` and `--quota-mode`.
    pub modes: Modes,
    /// `--response-dynamic-metadata`: answers carry the request and the passed rules'
    /// metadata (see `dynamic_metadata`).
    pub dynamic_metadata: bool,
    pub response_headers: Option<HeaderNames>,
    /// `--on-unavailable`: overrides the store's own failure policy (see `fail_open`).
    pub on_unavailable: Option<OnUnavailable>,
}

fn invalid(reason: &'static str, message: String) -> Status {
    metrics::counter!(m::REQUEST_ERRORS, "reason" => reason).increment(1);
    Status::invalid_argument(message)
}

fn override_unit(unit: i32) -> Option<Unit> {
    match RateLimitUnit::try_from(unit).ok()? {
        RateLimitUnit::Unknown => None,
        RateLimitUnit::Second => Some(Unit::Second),
        RateLimitUnit::Minute => Some(Unit::Minute),
        RateLimitUnit::Hour => Some(Unit::Hour),
        RateLimitUnit::Day => Some(Unit::Day),
        RateLimitUnit::Month => Some(Unit::Month),
        RateLimitUnit::Year => Some(Unit::Year),
    }
}

fn wire_unit(unit: Unit) -> rate_limit_response::rate_limit::Unit {
    use rate_limit_response::rate_limit::Unit as W;
    match unit {
        Unit::Second => W::Second,
        Unit::Minute => W::Minute,
        Unit::Hour => W::Hour,
        Unit::Day => W::Day,
        Unit::Week => W::Week,
        Unit::Month => W::Month,
        Unit::Year => W::Year,
    }
}

fn to_core_descriptor(index: usize, d: &RateLimitDescriptor) -> Result<decision::Descriptor<'_>, Status> {
    if d.is_negative_hits {
        return Err(invalid("negative_hits", format!("descriptor {index}: is_negative_hits is not supported")));
    }
    let limit_override = match &d.limit {
        None => None,
        Some(o) => match override_unit(o.unit) {
            Some(unit) => Some(LimitOverride { requests_per_unit: o.requests_per_unit, unit }),
            None => {
                let e = decision::RequestError::UnknownOverrideUnit { descriptor: index };
                return Err(invalid("override_unit", e.to_string()));
            }
        },
    };
    Ok(decision::Descriptor {
        entries: d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect(),
        limit_override,
        hits_addend: d.hits_addend.as_ref().map(|h| h.value),
    })
}

fn to_core(request: &RateLimitRequest) -> Result<decision::Request<'_>, Status> {
    if request.descriptors.len() > decision::MAX_DESCRIPTORS {
        let e = decision::RequestError::TooManyDescriptors(request.descriptors.len());
        return Err(invalid("too_many_descriptors", e.to_string()));
    }
    let core = decision::Request {
        domain: &request.domain,
        descriptors: request
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| to_core_descriptor(i, d))
            .collect::<Result<_, _>>()?,
        hits_addend: request.hits_addend,
    };
    match core.validate() {
        Ok(()) => Ok(core),
        Err(e) => Err(invalid(request_error_reason(&e), e.to_string())),
    }
}

fn request_error_reason(e: &decision::RequestError) -> &'static str {
    use decision::RequestError as E;
    match e {
        E::EmptyDomain => "empty_domain",
        E::DomainTooLong(_) => "domain_too_long",
        E::NoDescriptors => "no_descriptors",
        E::TooManyDescriptors(_) => "too_many_descriptors",
        E::TooManyEntries { .. } => "too_many_entries",
        E::EmptyKey { .. } => "empty_key",
        E::TooLong { .. } => "entry_too_long",
        E::UnknownOverrideUnit { .. } => "override_unit",
        E::InvalidEntity { .. } => "invalid_entity",
    }
}

fn wire_code(code: Code) -> i32 {
    match code {
        Code::Ok => WireCode::Ok as i32,
        Code::OverLimit => WireCode::OverLimit as i32,
    }
}

fn wire_status(s: &decision::Status) -> DescriptorStatus {
    DescriptorStatus {
        code: wire_code(s.code),
        current_limit: s.current_limit.as_ref().map(|l| rate_limit_response::RateLimit {
            name: l.name.to_string(),
            requests_per_unit: l.requests_per_unit,
            unit: wire_unit(l.unit) as i32,
        }),
        limit_remaining: s.limit_remaining,
        duration_until_reset: s
            .duration_until_reset_secs
            .map(|secs| Duration { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }),
        quota: None,
    }
}

/// The status the `RateLimit-*` headers describe: the first over-limit one not in quota mode,
/// else the one with the least remaining; only statuses with a limit count.
fn most_constrained(decision: &Decision) -> Option<&decision::Status> {
    let limited = decision.statuses.iter().filter(|s| s.current_limit.is_some());
    limited
        .clone()
        .find(|s| s.code == Code::OverLimit && !s.quota_mode)
        .or_else(|| limited.min_by_key(|s| s.limit_remaining))
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.to_owned(), value, raw_value: Vec::new() }
}

impl RateLimiter {
    /// Decides one request. Errors: INVALID_ARGUMENT for bad requests, UNAVAILABLE when no
    /// config is loaded or the store fails.
    pub async fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let started = Instant::now();
        let core = to_core(request)?;
        let Some(config) = self.config.current() else {
            return Err(Status::unavailable("no rate limit configuration loaded"));
        };
        let plan = match decision::plan(&config, &core) {
            Ok(plan) => plan,
            Err(e) => return Err(invalid(request_error_reason(&e), e.to_string())),
        };
        let now = EpochMillis::now();
        let (outcomes, entities) = tokio::join!(self.charge(&plan, &request.domain, now), self.acquire(&plan, now));
        let (outcomes, entities) = (outcomes?, entities?);
        let decision = plan.decide(&outcomes, &entities, now, self.modes);
        record_metrics(plan.domain().unwrap_or(m::UNKNOWN_DOMAIN), &decision, started);
        let mut response = self.response(&decision);
        if self.dynamic_metadata {
            response.dynamic_metadata =
                Some(crate::dynamic_metadata::to_struct(&crate::dynamic_metadata::build(request, &decision)));
        }
        Ok(response)
    }

    /// The plan's bucket charges, with the failure policy applied when the store fails.
    async fn charge(
        &self,
        plan: &decision::Plan,
        domain: &str,
        now: EpochMillis,
    ) -> Result<Vec<Vec<ChargeOutcome>>, Status> {
        if plan.bucket_requests().is_empty() {
            return Ok(Vec::new());
        }
        let span =
            tracing::trace_span!("store.charge", store = self.store.name(), buckets = plan.bucket_requests().len());
        match self.store.charge(plan.bucket_requests(), now).instrument(span).await {
            Ok(outcomes) => Ok(outcomes),
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS, "store" => self.store.name()).increment(1);
                tracing::warn!(error = %e, domain = %domain, "store call failed");
                crate::fail_open::admit(self.on_unavailable, &*self.store, plan.bucket_requests(), e, now)
                    .map_err(|e| Status::unavailable(e.to_string()))
            }
        }
    }

    /// The plan's entity acquires, with the failure policy applied to each that failed.
    async fn acquire(&self, plan: &decision::Plan, now: EpochMillis) -> Result<Vec<EntityOutcome>, Status> {
        let requests = plan.entity_requests();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::trace_span!("store.acquire", store = self.store.name(), entities = requests.len());
        let results = self.store.acquire(requests, now).instrument(span).await;
        let mut outcomes = Vec::with_capacity(results.len());
        for (request, result) in requests.iter().zip(results) {
            match result {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS, "store" => self.store.name()).increment(1);
                    tracing::warn!(error = %e, entity = %request.entity, resource = %request.resource, "entity acquire failed");
                    let outcome = crate::fail_open::admit_entity(self.on_unavailable, &*self.store, request, e)
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    outcomes.push(outcome);
                }
            }
        }
        Ok(outcomes)
    }

    fn response(&self, decision: &Decision) -> RateLimitResponse {
        let mut response = RateLimitResponse {
            overall_code: wire_code(decision.overall),
            statuses: decision.statuses.iter().map(wire_status).collect(),
            ..Default::default()
        };
        if let (Some(names), Some(status)) = (&self.response_headers, most_constrained(decision)) {
            let limit = status.current_limit.as_ref().expect("most_constrained only picks statuses with a limit");
            response.response_headers_to_add = vec![
                header(&names.limit, format!("{0}, {0};w={1}", limit.requests_per_unit, limit.unit.seconds())),
                header(&names.remaining, status.limit_remaining.to_string()),
                header(&names.reset, status.duration_until_reset_secs.unwrap_or(0).to_string()),
            ];
        }
        response
    }
}

fn record_metrics(domain: &str, decision: &Decision, started: Instant) {
    let metrics = m::DECISION_METRICS.domain(domain);
    metrics.decision(decision.overall == Code::OverLimit);
    let mut any_over = false;
    for status in &decision.statuses {
        any_over |= status.kind == StatusKind::OverLimit;
        metrics.descriptor(status.kind, status.near_limit);
        match (&status.rule, &status.values_label) {
            (Some(_), Some(label)) => metrics.detailed_rule(label.clone(), status.kind),
            (Some(rule), None) => metrics.rule(rule, status.kind),
            (None, _) => {}
        }
    }
    if any_over && decision.overall == Code::Ok {
        metrics.global_shadow();
    }
    metrics.duration(started.elapsed().as_secs_f64());
}

/// The gRPC front end.
#[derive(Clone)]
pub struct RlsService(pub Arc<RateLimiter>);

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let span = tracing::trace_span!("should_rate_limit", domain = %request.get_ref().domain, otel.kind = "server");
        telemetry::continue_trace(&span, request.metadata());
        let limiter = self.0.clone();
        async move { limiter.should_rate_limit(request.get_ref()).await.map(Response::new) }.instrument(span).await
    }
}

//! The native API (`zael.limiter.v1.Limiter`): applications acquire several limits at once,
//! get a lease, and reconcile it after the work (adjust, release, rollback).
//!
//! Requests are validated here and become store calls ([`BucketStore::open_lease`],
//! [`BucketStore::change_lease`], [`BucketStore::available`]); leases travel as ids
//! authenticated with the server's key (`zael_core::lease`), so any instance sharing the key
//! and the store serves any lease.

use crate::fail_open;
use crate::metrics as m;
use prost::Message as _;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};
use zael_api::limiter_server::Limiter;
use zael_api::{
    AcquireRequest, AcquireResponse, AdjustRequest, AdjustResponse, AvailableRequest, AvailableResponse, LimitStatus,
    RateLimitExceeded, ReleaseRequest, ReleaseResponse, RollbackRequest, RollbackResponse,
};
use zael_core::bucket::{BucketLimit, EpochMillis, Millitokens};
use zael_core::keys::{is_valid_entity_id, is_valid_limit_name, is_valid_resource};
use zael_core::lease::{Lease, LeaseChange, LeaseIdError, LeaseKey};
use zael_core::store::{
    BucketStore, EntityRequest, LeaseChanged, LeaseOpened, LeaseRequest, LimitOverride, LimitReport, OnUnavailable,
    StoreError,
};

/// A lease lives this long unless the request says otherwise.
pub const DEFAULT_LEASE_TTL_SECS: u32 = 300;
/// The longest lease a request may ask for.
pub const MAX_LEASE_TTL_SECS: u32 = 86_400;
/// The library's bound on amounts (`schedule.MAX_TOKENS`).
const MAX_TOKENS: i64 = 1_000_000_000_000_000;

/// The service: the store, the lease key and the failure-policy flag.
pub struct LimiterApi {
    pub store: Arc<dyn BucketStore>,
    pub key: LeaseKey,
    /// `--on-unavailable`: overrides the store's own failure policy.
    pub on_unavailable: Option<OnUnavailable>,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn check_namespace(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(invalid(format!("namespace '{name}' is not a valid namespace name"))) }
}

fn check_target(namespace: &str, entity: &str, resource: &str) -> Result<(), Status> {
    check_namespace(namespace)?;
    if !is_valid_entity_id(entity) {
        return Err(invalid(format!("entity_id '{entity}' is not a valid entity id")));
    }
    if !is_valid_resource(resource) {
        return Err(invalid(format!("resource '{resource}' is not a valid resource name")));
    }
    Ok(())
}

fn check_limit_name(name: &str) -> Result<(), Status> {
    if is_valid_limit_name(name) && name != "wcu" {
        Ok(())
    } else {
        Err(invalid(format!("'{name}' is not a valid limit name")))
    }
}

fn check_request_id(id: &str) -> Result<(), Status> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok { Ok(()) } else { Err(invalid(format!("request_id '{id}' must be 1-64 of [A-Za-z0-9._:-]"))) }
}

/// Whole tokens per limit, sorted by name; amounts checked against `range`.
fn amounts(
    what: &str,
    map: &std::collections::HashMap<String, i64>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Vec<(String, Millitokens)>, Status> {
    if map.is_empty() {
        return Err(invalid(format!("{what} names no limit")));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, amount) in map {
        check_limit_name(name)?;
        if !range.contains(amount) {
            return Err(invalid(format!("{what}['{name}'] = {amount} is outside {}..={}", range.start(), range.end())));
        }
        out.push((name.clone(), Millitokens(amount * Millitokens::PER_TOKEN)));
    }
    out.sort();
    Ok(out)
}

fn overrides(limits: &[zael_api::Limit]) -> Result<Option<Vec<LimitOverride>>, Status> {
    if limits.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<LimitOverride> = Vec::with_capacity(limits.len());
    for l in limits {
        check_limit_name(&l.name)?;
        if out.iter().any(|o| o.name == l.name) {
            return Err(invalid(format!("limit '{}' is given twice", l.name)));
        }
        let max = MAX_TOKENS as u64;
        if !(1..=max).contains(&l.capacity) || !(1..=max).contains(&l.refill_amount) {
            return Err(invalid(format!("limit '{}': capacity and refill_amount must be 1..={max}", l.name)));
        }
        if !(1..=1_000_000_000).contains(&l.refill_period_seconds) {
            return Err(invalid(format!("limit '{}': refill_period_seconds must be 1..=1000000000", l.name)));
        }
        out.push(LimitOverride {
            name: l.name.clone(),
            limit: BucketLimit::per_period(l.capacity, l.refill_amount, l.refill_period_seconds),
        });
    }
    Ok(Some(out))
}

fn whole(m: Millitokens) -> u64 {
    u64::try_from(m.floor_tokens()).unwrap_or(0)
}

/// A report as the API shows it; `resource` is the request's.
pub fn limit_status(report: &LimitReport, resource: &str) -> LimitStatus {
    let retry_after_ms = if report.exceeded { report.retry_after_ms() } else { 0 };
    LimitStatus {
        entity_id: report.entity.clone(),
        resource: resource.to_owned(),
        limit_name: report.name.clone(),
        capacity: whole(report.limit.capacity),
        refill_amount: whole(report.limit.refill_amount),
        refill_period_seconds: u64::try_from(report.limit.refill_period_ms / 1000).unwrap_or(0),
        available: report.tokens.floor_tokens(),
        requested: report.requested.floor_tokens(),
        exceeded: report.exceeded,
        retry_after_ms,
        shard_count: report.shard_count,
    }
}

/// RESOURCE_EXHAUSTED with a [`RateLimitExceeded`] detail listing every requested limit.
fn exceeded(request: &EntityRequest, reports: &[LimitReport]) -> Status {
    let limits: Vec<LimitStatus> = reports.iter().map(|r| limit_status(r, &request.resource)).collect();
    let retry_after_ms = limits.iter().filter(|l| l.exceeded).map(|l| l.retry_after_ms).max().unwrap_or(0);
    let names: Vec<String> =
        limits.iter().filter(|l| l.exceeded).map(|l| format!("{}/{}", l.entity_id, l.limit_name)).collect();
    let message = format!(
        "rate limit exceeded for {} on {}: {}; retry after {retry_after_ms} ms",
        request.entity,
        request.resource,
        names.join(", ")
    );
    let detail = RateLimitExceeded { message: message.clone(), retry_after_ms, limits };
    // `google.rpc.Status`, the payload of the `grpc-status-details-bin` trailer.
    let status = tonic_types::Status {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: zael_api::RATE_LIMIT_EXCEEDED_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(Code::ResourceExhausted, message, status.encode_to_vec().into())
}

/// The gRPC code as a metric label: `ok`, `resource_exhausted`, ...
fn code_label(code: Code) -> String {
    let mut label = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}

/// Counts and times one call.
async fn observed<T>(method: &'static str, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let started = std::time::Instant::now();
    let result = call.await;
    let code = result.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
    metrics::counter!(m::API_CALLS, "method" => method, "code" => code_label(code)).increment(1);
    metrics::histogram!(m::API_DURATION, "method" => method).record(started.elapsed().as_secs_f64());
    result
}

/// A store failure as a gRPC status.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Refused(m) => Status::failed_precondition(m),
        StoreError::Partial { error, .. } => store_status(*error),
        other => Status::unavailable(other.to_string()),
    }
}

impl LimiterApi {
    /// The lease an id stands for, if it is authentic and not expired at `now`.
    fn lease(&self, id: &str, now: EpochMillis) -> Result<Lease, Status> {
        let lease = self.key.decode(id).map_err(|e| match e {
            LeaseIdError::Malformed => invalid(format!("lease_id: {e}")),
            LeaseIdError::Forged => Status::permission_denied(format!("lease_id: {e}")),
        })?;
        if let Some(message) = lease.expiry(now) {
            return Err(Status::failed_precondition(message));
        }
        Ok(lease)
    }

    async fn change(&self, id: &str, change: LeaseChange) -> Result<(Lease, bool), Status> {
        let now = EpochMillis::now();
        let lease = self.lease(id, now)?;
        if let LeaseChange::Adjust(deltas) = &change
            && let Some((name, _)) = deltas.iter().find(|(n, _)| !lease.entries.iter().any(|e| e.limit == *n))
        {
            return Err(invalid(format!("limit '{name}' is not one the lease acquired")));
        }
        let outcome = self.store.change_lease(&lease, &change, now).await.map_err(store_status)?;
        let next = lease.after(&change);
        match outcome {
            LeaseChanged::Applied => Ok((next, false)),
            LeaseChanged::AlreadyApplied => Ok((next, true)),
            LeaseChanged::Conflict(message) => Err(Status::failed_precondition(message)),
        }
    }

    fn request(&self, r: AcquireRequest, now: EpochMillis) -> Result<LeaseRequest, Status> {
        check_target(&r.namespace, &r.entity_id, &r.resource)?;
        let consume = amounts("consume", &r.consume, 0..=MAX_TOKENS)?;
        let overrides = overrides(&r.limits)?;
        let ttl = match r.lease_ttl_seconds {
            0 => DEFAULT_LEASE_TTL_SECS,
            t if t > MAX_LEASE_TTL_SECS => {
                return Err(invalid(format!("lease_ttl_seconds {t} is over the maximum {MAX_LEASE_TTL_SECS}")));
            }
            t => t,
        };
        let idempotent = !r.request_id.is_empty();
        let nonce = if idempotent {
            check_request_id(&r.request_id)?;
            r.request_id
        } else {
            format!("@{:032x}", rand::random::<u128>())
        };
        Ok(LeaseRequest {
            acquire: EntityRequest {
                namespace: r.namespace.into(),
                entity: r.entity_id,
                resource: r.resource,
                consume: consume.into_iter().map(|(n, a)| (Arc::from(n.as_str()), a)).collect(),
                // An idempotent acquire commits its record with its debits, never from a block.
                reserve: !idempotent,
            },
            overrides,
            nonce,
            idempotent,
            expires_at: EpochMillis(now.0 + i64::from(ttl) * 1000),
        })
    }

    async fn acquire_now(&self, request: AcquireRequest) -> Result<AcquireResponse, Status> {
        let now = EpochMillis::now();
        let request = self.request(request, now)?;
        let acquire = &request.acquire;
        let opened = match self.store.open_lease(&request, now).await {
            Ok(opened) => opened,
            Err(e) => match fail_open::admit_entity(self.on_unavailable, &*self.store, acquire, e) {
                Ok(_) => return Ok(AcquireResponse { degraded: true, ..Default::default() }),
                Err(e) => return Err(store_status(e)),
            },
        };
        let response = match opened {
            LeaseOpened::Admitted { lease, reports } => AcquireResponse {
                lease_id: self.key.encode(&lease),
                limits: reports.iter().map(|r| limit_status(r, &acquire.resource)).collect(),
                lease_expires_at_ms: lease.expires_at,
                ..Default::default()
            },
            LeaseOpened::Replayed { lease } => AcquireResponse {
                lease_id: self.key.encode(&lease),
                lease_expires_at_ms: lease.expires_at,
                replayed: true,
                ..Default::default()
            },
            LeaseOpened::Rejected(reports) => return Err(exceeded(acquire, &reports)),
            LeaseOpened::Disabled { entity } => {
                return Err(Status::permission_denied(format!(
                    "entity '{entity}' is disabled for resource '{}'",
                    acquire.resource
                )));
            }
            LeaseOpened::NoLimits => {
                return Err(Status::failed_precondition(format!(
                    "no limits are configured for entity '{}' on resource '{}' at any level (entity, entity default, resource, system)",
                    acquire.entity, acquire.resource
                )));
            }
        };
        Ok(response)
    }
}

#[tonic::async_trait]
impl Limiter for LimiterApi {
    async fn acquire(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        observed("acquire", self.acquire_now(request.into_inner())).await.map(Response::new)
    }

    async fn adjust(&self, request: Request<AdjustRequest>) -> Result<Response<AdjustResponse>, Status> {
        let r = request.into_inner();
        let call = async {
            let deltas = amounts("deltas", &r.deltas, -MAX_TOKENS..=MAX_TOKENS)?;
            let (lease, already_applied) = self.change(&r.lease_id, LeaseChange::Adjust(deltas)).await?;
            Ok(AdjustResponse { lease_id: self.key.encode(&lease), already_applied })
        };
        observed("adjust", call).await.map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let call = self.change(&request.get_ref().lease_id, LeaseChange::Release);
        let (_, already_applied) = observed("release", call).await?;
        Ok(Response::new(ReleaseResponse { already_applied }))
    }

    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<RollbackResponse>, Status> {
        let call = self.change(&request.get_ref().lease_id, LeaseChange::Rollback);
        let (_, already_applied) = observed("rollback", call).await?;
        Ok(Response::new(RollbackResponse { already_applied }))
    }

    async fn available(&self, request: Request<AvailableRequest>) -> Result<Response<AvailableResponse>, Status> {
        let r = request.into_inner();
        let call = async {
            check_target(&r.namespace, &r.entity_id, &r.resource)?;
            let now = EpochMillis::now();
            let reports = self.store.available(&r.namespace, &r.entity_id, &r.resource, now).await;
            let reports = reports.map_err(store_status)?;
            Ok(AvailableResponse { limits: reports.iter().map(|x| limit_status(x, &r.resource)).collect() })
        };
        observed("available", call).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_checked_and_sorted() {
        let map = std::collections::HashMap::from([("tpm".to_owned(), 500), ("rpm".to_owned(), 1)]);
        assert_eq!(
            amounts("consume", &map, 0..=MAX_TOKENS).unwrap(),
            vec![("rpm".to_owned(), Millitokens(1000)), ("tpm".to_owned(), Millitokens(500_000))]
        );
        let negative = std::collections::HashMap::from([("tpm".to_owned(), -1)]);
        let e = amounts("consume", &negative, 0..=MAX_TOKENS).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "consume['tpm'] = -1 is outside 0..=1000000000000000");
        let e = amounts("consume", &Default::default(), 0..=MAX_TOKENS).unwrap_err();
        assert_eq!(e.message(), "consume names no limit");
        let bad = std::collections::HashMap::from([("t#m".to_owned(), 1)]);
        assert_eq!(amounts("deltas", &bad, 0..=1).unwrap_err().message(), "'t#m' is not a valid limit name");
    }

    #[test]
    fn retry_after_is_the_reference_formula_on_the_shard_share() {
        let report = LimitReport {
            entity: "k".into(),
            name: "rpm".into(),
            limit: BucketLimit::per_period(5, 5, 60),
            shard_count: 1,
            shard: 0,
            bypass: false,
            tokens: Millitokens(2003),
            at: EpochMillis(0),
            requested: Millitokens(3000),
            exceeded: true,
        };
        let status = limit_status(&report, "gpt-4");
        assert_eq!((status.available, status.requested, status.retry_after_ms), (2, 3, 11_965));
        assert_eq!((status.capacity, status.refill_amount, status.refill_period_seconds), (5, 5, 60));
    }
}

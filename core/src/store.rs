//! The boundary between the decision and the bucket stores.
//!
//! The decision hands a store every bucket a request touches, each with its charges in
//! request order; the store applies each bucket's charges in one atomic step (so two
//! occurrences of one bucket never race each other) and answers with one outcome per charge.
//!
//! # When a store fails
//!
//! A failed call says how it failed ([`StoreError`]): whether the store could not answer
//! (a timeout, an error, a stored feature it does not implement) or refused the request
//! whatever the failure policy (an incompatible table version, an unknown namespace, denied
//! access), and which buckets were charged anyway ([`StoreError::Partial`]). The server then
//! applies the failure policy ([`OnUnavailable`]): its own flag when set, else what the store
//! knows of the namespace ([`BucketStore::on_unavailable`], zae-limiter's system config),
//! else [`OnUnavailable::Block`].

use crate::bucket::{BucketLimit, Charge, ChargeOutcome, EpochMillis, Millitokens};
use crate::keys::BucketKey;
use crate::lease::{Lease, LeaseChange, LeaseEntry};
use std::sync::Arc;

/// One bucket and what a request charges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRequest {
    pub key: BucketKey,
    /// The limit as configured now; a stored bucket adopts it (its balance clamped).
    pub limit: BucketLimit,
    /// Charges in request order.
    pub charges: Vec<Charge>,
    /// Whether a store may answer the charges from a token reservation (the rule's
    /// `reserve:`, default true); `false` charges the shared bucket on every decision.
    pub reserve: bool,
}

/// One acquire of an entity rule: the stored limits of `entity` on `resource` in
/// `namespace` (zae-limiter's `acquire(entity_id, resource, consume)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRequest {
    pub namespace: Arc<str>,
    pub entity: String,
    pub resource: String,
    /// Limit name and amount, in millitokens (0 checks without consuming).
    pub consume: Vec<(Arc<str>, Millitokens)>,
    /// Whether a store may answer the acquire from token reservations of the entity's
    /// buckets (the entity rule's `reserve:`, default true; the native API's `Acquire`
    /// without `request_id` always may); `false` charges the shared buckets every time.
    pub reserve: bool,
}

/// One stored limit as an entity acquire judged it (the library's `LimitStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReport {
    /// The entity whose bucket holds the limit: the requested one or its parent.
    pub entity: String,
    pub name: String,
    /// The limit's own parameters (undivided: the whole limit, not one shard's share).
    pub limit: BucketLimit,
    /// The shards the limit is spread over; the balance below is one shard's.
    pub shard_count: i64,
    /// The shard the decision read (and debited when admitted).
    pub shard: i64,
    /// The bucket was bypassed (`disabled = "bypass"`): admitted without a `tk` debit.
    pub bypass: bool,
    /// The shard's balance after the decision (after the debit when admitted), at `at`.
    pub tokens: Millitokens,
    pub at: EpochMillis,
    pub requested: Millitokens,
    pub exceeded: bool,
}

impl LimitReport {
    /// The shard's share of the limit (`cp // shard_count`, `ra // shard_count`).
    pub fn share(&self) -> BucketLimit {
        self.limit.shard_share(self.shard_count)
    }

    /// Milliseconds until the shard holds the request again (§10.5); `i64::MAX` when the
    /// request is larger than the shard can ever hold.
    pub fn retry_after_ms(&self) -> i64 {
        let share = self.share();
        if self.requested > share.capacity {
            return i64::MAX;
        }
        share.retry_after_ms(self.requested - self.tokens)
    }
}

/// What an entity acquire decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntityOutcome {
    /// No stored limit applies at any config level: admitted, nothing charged.
    NoLimits,
    /// Every requested limit admitted and debited (the parent's too under cascade).
    Admitted(Vec<LimitReport>),
    /// Some limit could not admit; nothing was debited.
    Rejected(Vec<LimitReport>),
    /// The entity (or its parent under cascade) is disabled for the resource.
    Disabled { entity: String },
}

/// A stored limit given with the request instead of the stored ones (the library's
/// `acquire(limits=...)`), in bucket units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitOverride {
    pub name: String,
    pub limit: BucketLimit,
}

/// An acquire that opens a lease (the native API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    pub acquire: EntityRequest,
    /// When set, these limits replace the stored ones for the entity (and its parent).
    pub overrides: Option<Vec<LimitOverride>>,
    /// The lease's nonce (see [`Lease::nonce`]).
    pub nonce: String,
    /// The nonce is the caller's request id: a second acquire with it, before the first
    /// lease expired, answers that lease and charges nothing.
    pub idempotent: bool,
    pub expires_at: EpochMillis,
}

impl LeaseRequest {
    /// The lease an admitted acquire hands out: one entry per requested limit of each side.
    pub fn lease(&self, reports: &[LimitReport]) -> Lease {
        Lease {
            namespace: self.acquire.namespace.to_string(),
            entity: self.acquire.entity.clone(),
            resource: self.acquire.resource.clone(),
            nonce: self.nonce.clone(),
            seq: 0,
            expires_at: self.expires_at.0,
            entries: reports
                .iter()
                .map(|r| LeaseEntry {
                    entity: r.entity.clone(),
                    shard: r.shard,
                    limit: r.name.clone(),
                    amount: r.requested.0,
                    bypass: r.bypass,
                    capacity: r.limit.capacity.0,
                    shard_count: r.shard_count,
                })
                .collect(),
        }
    }
}

/// What an acquire that opens a lease decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOpened {
    /// Admitted and charged; the lease names every bucket debited.
    Admitted {
        lease: Lease,
        reports: Vec<LimitReport>,
    },
    /// An idempotent request seen before, within its lease: the original lease; nothing
    /// charged now.
    Replayed {
        lease: Lease,
    },
    Rejected(Vec<LimitReport>),
    Disabled {
        entity: String,
    },
    NoLimits,
}

/// What a lease change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChanged {
    /// Applied now.
    Applied,
    /// Applied before (a retried call): nothing written again.
    AlreadyApplied,
    /// Not applicable to the lease as stored (ended, or the id is stale); why.
    Conflict(String),
}

/// Why a store could not answer. The server turns this into gRPC UNAVAILABLE, unless the
/// failure policy is [`OnUnavailable::Allow`] and [`StoreError::may_fail_open`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store call timed out after {0} ms")]
    Timeout(u64),
    /// The store refuses to decide, whatever the failure policy: the request must not be
    /// admitted without it (zae-limiter raises these under `on_unavailable = allow` too:
    /// version mismatch, validation errors, an unknown namespace, denied access).
    #[error("store refused the request: {0}")]
    Refused(String),
    /// What the request names does not exist (an unregistered namespace): refused too.
    #[error("{0}")]
    NotFound(String),
    /// Some buckets were charged and others were not: `outcomes[i]` is the answer for the
    /// `i`-th bucket request, `None` for one that failed (the first failure, or a refusal
    /// when there is one, in `error`). The charged buckets' writes have landed.
    #[error("{error}")]
    Partial { outcomes: Vec<Option<Vec<ChargeOutcome>>>, error: Box<StoreError> },
}

impl StoreError {
    /// Whether the failure policy may admit the failed buckets' charges: the store could not
    /// answer; it did not refuse.
    pub fn may_fail_open(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Timeout(_) => true,
            StoreError::Refused(_) | StoreError::NotFound(_) => false,
            StoreError::Partial { error, .. } => error.may_fail_open(),
        }
    }

    /// Per bucket request (`buckets` of them), the outcomes the store did produce: all
    /// `None` unless this is a [`StoreError::Partial`].
    pub fn into_known(self, buckets: usize) -> Vec<Option<Vec<ChargeOutcome>>> {
        match self {
            StoreError::Partial { mut outcomes, .. } => {
                outcomes.resize(buckets, None);
                outcomes
            }
            _ => vec![None; buckets],
        }
    }
}

/// What a descriptor gets when the store cannot charge its bucket: zae-limiter's
/// `on_unavailable` (`table-format.md` §8.3, §11.13).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnUnavailable {
    /// Fail closed: the call fails with gRPC UNAVAILABLE and Envoy's `failure_mode_deny`
    /// decides (the library's default, `RateLimiterUnavailable`).
    #[default]
    Block,
    /// Fail open: the descriptor is admitted without a charge (the library's no-op
    /// "degraded" lease).
    Allow,
}

impl OnUnavailable {
    /// The stored and command-line spelling: `allow` or `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Block => "block",
            OnUnavailable::Allow => "allow",
        }
    }
}

impl std::str::FromStr for OnUnavailable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(OnUnavailable::Block),
            "allow" => Ok(OnUnavailable::Allow),
            other => Err(format!("on_unavailable must be 'allow' or 'block', not '{other}'")),
        }
    }
}

/// A place that keeps token buckets.
#[async_trait::async_trait]
pub trait BucketStore: Send + Sync + 'static {
    /// A short name for logs and metrics, e.g. `memory`.
    fn name(&self) -> &'static str;

    /// Applies the charges of every request at `now`; answers, per request, one outcome per
    /// charge in the same order.
    async fn charge(&self, requests: &[BucketRequest], now: EpochMillis)
    -> Result<Vec<Vec<ChargeOutcome>>, StoreError>;

    /// Acquires each entity request at `now`, each on its own (one failing does not fail the
    /// others). A store without stored limits answers [`EntityOutcome::NoLimits`].
    async fn acquire(&self, requests: &[EntityRequest], _now: EpochMillis) -> Vec<Result<EntityOutcome, StoreError>> {
        requests.iter().map(|_| Ok(EntityOutcome::NoLimits)).collect()
    }

    /// Acquires like [`BucketStore::acquire`] and opens a lease on what it charged,
    /// recording it when the request is idempotent, in the same atomic write as the charge.
    async fn open_lease(&self, _request: &LeaseRequest, _now: EpochMillis) -> Result<LeaseOpened, StoreError> {
        Err(StoreError::Refused(format!("the {} store keeps no entities", self.name())))
    }

    /// Applies a change to a lease (already authenticated), atomically with its state; a
    /// lease expired at `now` is a [`LeaseChanged::Conflict`] ([`Lease::expiry`]), nothing
    /// written: an adjust or rollback writes its buckets and the lease's new state together.
    async fn change_lease(
        &self,
        _lease: &Lease,
        _change: &LeaseChange,
        _now: EpochMillis,
    ) -> Result<LeaseChanged, StoreError> {
        Err(StoreError::Refused(format!("the {} store keeps no entities", self.name())))
    }

    /// The current balance of every limit of `entity` on `resource` (its parent's too under
    /// cascade), without writing: one report per limit with `requested` 0, summed over the
    /// limit's shards (`shard_count` says how many), the entity's limits by name, then its
    /// parent's by name. Empty when no limit applies.
    async fn available(
        &self,
        _namespace: &str,
        _entity: &str,
        _resource: &str,
        _now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        Err(StoreError::Refused(format!("the {} store keeps no entities", self.name())))
    }

    /// The failure policy the store's own data sets for `namespace` (for zae-limiter, the
    /// `on_unavailable` attribute of the namespace's system config), as last loaded; `None`
    /// when it knows none. Answered from memory without I/O: it is asked right after a
    /// failed [`BucketStore::charge`], when the store may be unreachable.
    fn on_unavailable(&self, _namespace: &str) -> Option<OnUnavailable> {
        None
    }

    /// Called once when the server stops, after the last request: gives back what the store
    /// holds ahead of use (token reservations). Answers the millitokens given back and those
    /// that could not be. Nothing by default.
    async fn shutdown(&self) -> (i64, i64) {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_policy_spelling() {
        assert_eq!("allow".parse(), Ok(OnUnavailable::Allow));
        assert_eq!("block".parse(), Ok(OnUnavailable::Block));
        assert!("Allow".parse::<OnUnavailable>().is_err());
        assert_eq!(OnUnavailable::default(), OnUnavailable::Block);
        assert_eq!(OnUnavailable::Allow.as_str(), "allow");
    }

    #[test]
    fn refusals_never_fail_open_and_partial_answers_are_kept() {
        assert!(StoreError::Timeout(40).may_fail_open());
        assert!(StoreError::Unavailable("x".into()).may_fail_open());
        assert!(!StoreError::Refused("x".into()).may_fail_open());
        let outcome = ChargeOutcome { admitted: true, tokens: Millitokens(1), refilled_at: EpochMillis(2) };
        let partial = StoreError::Partial {
            outcomes: vec![Some(vec![outcome]), None],
            error: Box::new(StoreError::Refused("version".into())),
        };
        assert!(!partial.may_fail_open());
        assert_eq!(partial.to_string(), "store refused the request: version");
        assert_eq!(partial.into_known(2), vec![Some(vec![outcome]), None]);
        assert_eq!(StoreError::Timeout(1).into_known(2), vec![None, None]);
    }
}

//! `on_unavailable`: what a request gets when the store cannot charge its buckets
//! (zae-limiter's failure policy, `table-format.md` §8.3 and §11.13).
//!
//! The policy is `--on-unavailable` when given, else the store's own setting for the
//! request's namespace (for DynamoDB, the `on_unavailable` attribute of the namespace's
//! system config, as last loaded), else `block`.
//!
//! * `block`: the call fails with gRPC UNAVAILABLE and Envoy's `failure_mode_deny` decides.
//! * `allow`: every charge of a bucket the store could not answer is **admitted** as if its
//!   bucket were full and untouched: OK, `current_limit` set, `limit_remaining` = the
//!   capacity, `duration_until_reset` 1 s (nothing was consumed, and nothing is known, like
//!   the library's no-op "degraded" lease and like a bucket that does not exist yet). Buckets
//!   the store did charge keep their real answers; `zael_store_fail_open_total` counts the
//!   admitted charges.
//!
//! Refusals ([`StoreError::Refused`]: an incompatible table version, an unknown namespace,
//! denied access) are never failed open, as in the library.

use crate::metrics as m;
use zael_core::bucket::{ChargeOutcome, EpochMillis};
use zael_core::store::{BucketRequest, BucketStore, EntityOutcome, EntityRequest, OnUnavailable, StoreError};

/// The outcomes to decide on after `error`, or the error when the policy is `block` (or the
/// store refused).
pub fn admit(
    flag: Option<OnUnavailable>,
    store: &dyn BucketStore,
    buckets: &[BucketRequest],
    error: StoreError,
    now: EpochMillis,
) -> Result<Vec<Vec<ChargeOutcome>>, StoreError> {
    if !error.may_fail_open() {
        return Err(error);
    }
    let policy =
        flag.or_else(|| buckets.first().and_then(|b| store.on_unavailable(&b.key.namespace))).unwrap_or_default();
    if policy == OnUnavailable::Block {
        return Err(error);
    }
    let mut admitted = 0u64;
    let outcomes = buckets
        .iter()
        .zip(error.into_known(buckets.len()))
        .map(|(bucket, known)| {
            known.unwrap_or_else(|| {
                admitted += bucket.charges.len() as u64;
                let full = ChargeOutcome { admitted: true, tokens: bucket.limit.capacity, refilled_at: now };
                vec![full; bucket.charges.len()]
            })
        })
        .collect();
    metrics::counter!(m::FAIL_OPEN, "store" => store.name()).increment(admitted);
    Ok(outcomes)
}

/// The outcome of an entity acquire that failed with `error`: [`EntityOutcome::NoLimits`]
/// (admitted, nothing charged, no limit reported: the library's degraded lease) when the
/// policy is `allow`, else the error.
pub fn admit_entity(
    flag: Option<OnUnavailable>,
    store: &dyn BucketStore,
    request: &EntityRequest,
    error: StoreError,
) -> Result<EntityOutcome, StoreError> {
    if !error.may_fail_open() {
        return Err(error);
    }
    if flag.or_else(|| store.on_unavailable(&request.namespace)).unwrap_or_default() == OnUnavailable::Block {
        return Err(error);
    }
    metrics::counter!(m::FAIL_OPEN, "store" => store.name()).increment(1);
    Ok(EntityOutcome::NoLimits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zael_core::bucket::{BucketLimit, Charge, Millitokens};
    use zael_core::keys::BucketKey;
    use zael_core::memory::MemoryStore;

    fn bucket(entity: &str, charges: usize) -> BucketRequest {
        BucketRequest {
            key: BucketKey { namespace: "ns".into(), resource: "r".into(), entity: entity.into() },
            limit: BucketLimit::per_period(7, 7, 60),
            charges: vec![Charge { cost: 1, allow_debt: false }; charges],
            reserve: true,
        }
    }

    const NOW: EpochMillis = EpochMillis(5);

    #[test]
    fn block_is_the_default_and_the_flag_decides() {
        // The memory store knows no policy of its own.
        let store = MemoryStore::new();
        let buckets = [bucket("a", 1)];
        let timeout = || StoreError::Timeout(1);
        assert!(matches!(admit(None, &store, &buckets, timeout(), NOW), Err(StoreError::Timeout(1))));
        assert!(admit(Some(OnUnavailable::Block), &store, &buckets, timeout(), NOW).is_err());
        assert!(admit(Some(OnUnavailable::Allow), &store, &buckets, timeout(), NOW).is_ok());
    }

    #[test]
    fn allow_admits_the_failed_buckets_at_full_capacity_and_keeps_the_others() {
        let buckets = [bucket("a", 2), bucket("b", 1)];
        let charged = ChargeOutcome { admitted: false, tokens: Millitokens(0), refilled_at: NOW };
        let error = StoreError::Partial {
            outcomes: vec![None, Some(vec![charged])],
            error: Box::new(StoreError::Unavailable("x".into())),
        };
        let out = admit(Some(OnUnavailable::Allow), &MemoryStore::new(), &buckets, error, NOW).expect("allowed");
        let full = ChargeOutcome { admitted: true, tokens: Millitokens(7000), refilled_at: NOW };
        assert_eq!(out, vec![vec![full, full], vec![charged]]);
    }

    #[test]
    fn refusals_are_never_failed_open() {
        let buckets = [bucket("a", 1)];
        let refused = StoreError::Refused("version".into());
        assert!(matches!(
            admit(Some(OnUnavailable::Allow), &MemoryStore::new(), &buckets, refused, NOW),
            Err(StoreError::Refused(_))
        ));
    }
}

//! The bucket TTL of the table format (§11.12), as the library computes it. The decision of a
//! rule's charges is core's (`zael_core::charges`), re-exported here for the store.

use zael_core::bucket::{BucketLimit, EpochMillis};
pub(crate) use zael_core::charges::{Admission, Plan, decide, need, project, reject_all, strict_tokens, total};

use crate::keys::TTL_MULTIPLIER;

/// Seconds a limit needs to refill from empty, as the library computes it for the bucket TTL
/// (`_recovery_seconds` over a `Limit` in whole tokens and seconds), in f64 in the same order.
pub fn recovery_secs(limit: &BucketLimit) -> f64 {
    let cap = (limit.capacity.0 / 1000).max(1);
    let rate = (limit.refill_amount.0 / 1000).max(1);
    let period = (limit.refill_period_ms / 1000).max(1);
    ((cap * 1000) as f64 / (rate * 1000) as f64) * ((period * 1000) as f64 / 1000.0)
}

/// `ttl` of a bucket whose limits come from an override (§11.12): `now_s + int(7 × max)`.
pub fn ttl_epoch(now: EpochMillis, horizons: &[f64]) -> i64 {
    let max = horizons.iter().copied().fold(0.0_f64, f64::max);
    now.0.div_euclid(1000).saturating_add((max * TTL_MULTIPLIER) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_ttl() {
        let s = BucketLimit::from_table(5000, 5000, 60_000).shard_share(2);
        assert_eq!((s.capacity.0, s.refill_amount.0, s.refill_period_ms), (2500, 2500, 60_000));
        // rpm 100/60 s gives now + 420 (§16); wcu's 1 s horizon never wins against it.
        let now = EpochMillis(1_795_775_405_074);
        assert_eq!(
            ttl_epoch(now, &[recovery_secs(&BucketLimit::from_table(100_000, 100_000, 60_000)), 1.0]),
            1_795_775_405 + 420
        );
        assert_eq!(recovery_secs(&BucketLimit::from_table(1_000_000, 1_000_000, 1000)), 1.0);
        // burst 8000, 5000/min: 8000/5000*60 = 96 s, * 7 = 672.
        assert_eq!(
            ttl_epoch(EpochMillis(0), &[recovery_secs(&BucketLimit::from_table(8_000_000, 5_000_000, 60_000))]),
            672
        );
    }
}

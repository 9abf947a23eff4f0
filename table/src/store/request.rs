//! One bucket request in flight ([`Ctx`]), its decision ([`Decided`]), and the small helpers
//! every path shares.

use zael_core::bucket::{BucketLimit, Charge, ChargeOutcome, EpochMillis, Millitokens};
use zael_core::store::StoreError;

use super::{BucketId, LIMIT_NAME};
use crate::db::DbError;
use crate::item::{BucketImage, Item, LimitImage};
use crate::keys;
use crate::metrics as m;

pub(super) fn unavailable(e: DbError) -> StoreError {
    match e {
        DbError::Conflict => StoreError::Unavailable("DynamoDB: the bucket stayed contended".into()),
        DbError::Other(m) => StoreError::Unavailable(format!("DynamoDB: {m}")),
        DbError::Denied(m) => StoreError::Refused(format!("DynamoDB: {m}")),
    }
}

pub(super) fn path(name: &'static str) {
    metrics::counter!(m::PATHS, "path" => name).increment(1);
}

/// One bucket request in flight.
pub(super) struct Ctx<'a> {
    pub(super) id: BucketId,
    /// The rule's limit, whole (shards hold their share).
    pub(super) limit: BucketLimit,
    pub(super) charges: &'a [Charge],
    pub(super) total: i64,
    pub(super) now: EpochMillis,
}

impl Ctx<'_> {
    pub(super) fn pk(&self, shard: i64) -> String {
        self.id.pk(shard)
    }

    pub(super) fn params_match(&self, l: &LimitImage) -> bool {
        l.limit == self.limit
    }
}

impl BucketId {
    pub(super) fn pk(&self, shard: i64) -> String {
        keys::pk_bucket(&self.ns, &self.entity, &self.resource, shard)
    }
}

/// A decision and the shard count its balances are shares of.
pub(super) struct Decided {
    outcomes: Vec<ChargeOutcome>,
    shard_count: i64,
}

impl Decided {
    pub(super) fn new(outcomes: Vec<ChargeOutcome>, shard_count: i64) -> Self {
        Decided { outcomes, shard_count }
    }

    /// The shard-level outcomes and the shard count they are of.
    pub(super) fn parts(&self) -> (&[ChargeOutcome], i64) {
        (&self.outcomes, self.shard_count)
    }

    /// Balances as estimates of the whole bucket: a shard's balance times the shard count,
    /// so that the server's full-capacity arithmetic gives the shard's own reset time.
    pub(super) fn scaled(self) -> Vec<ChargeOutcome> {
        let sc = self.shard_count.max(1);
        self.outcomes
            .into_iter()
            .map(|o| ChargeOutcome { tokens: Millitokens(o.tokens.0.saturating_mul(sc)), ..o })
            .collect()
    }
}

pub(super) fn hits_attr(field: &str) -> String {
    keys::battr(LIMIT_NAME, field)
}

pub(super) fn parse(item: &Item) -> Result<BucketImage, StoreError> {
    BucketImage::parse(item).map_err(|e| StoreError::Unavailable(format!("unreadable bucket item: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_outcomes_estimate_the_whole_bucket() {
        let d = Decided::new(
            vec![ChargeOutcome { admitted: true, tokens: Millitokens(1500), refilled_at: EpochMillis(3) }],
            4,
        );
        assert_eq!(d.scaled()[0].tokens, Millitokens(6000));
    }
}

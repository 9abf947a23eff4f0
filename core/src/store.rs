//! The boundary between the decision and the bucket stores.
//!
//! The decision hands a store every bucket a request touches, each with its charges in
//! request order; the store applies each bucket's charges in one atomic step (so two
//! occurrences of one bucket never race each other) and answers with one outcome per charge.

use crate::bucket::{BucketLimit, Charge, ChargeOutcome, EpochMillis};
use crate::keys::BucketKey;

/// One bucket and what a request charges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRequest {
    pub key: BucketKey,
    /// The limit as configured now; a stored bucket adopts it (its balance clamped).
    pub limit: BucketLimit,
    /// Charges in request order.
    pub charges: Vec<Charge>,
}

/// Why a store could not answer. The server turns this into gRPC UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store call timed out after {0} ms")]
    Timeout(u64),
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
}

//! The metrics of the DynamoDB store: names, descriptions and histogram buckets, in one
//! place. Emitted through the `metrics` facade; the server exposes them on `/metrics`.
//!
//! Ratios worth a dashboard:
//!
//! * fast-path ratio: `FAST_ADMITS / BUCKET_DECISIONS`;
//! * DynamoDB requests per decision: `sum(REQUESTS) / BUCKET_DECISIONS`;
//! * rejection-cache share: `REJECTION_CACHE_HITS / BUCKET_DECISIONS`;
//! * store writes per decision (what token reservations bring down):
//!   `REQUESTS{operation=~"UpdateItem|TransactWriteItems"} / BUCKET_DECISIONS`;
//! * reservation share: `RESERVED_DECISIONS / BUCKET_DECISIONS`.

use metrics::{describe_counter, describe_histogram};

/// DynamoDB requests sent (every attempt), by `operation` (`GetItem`, `UpdateItem`,
/// `TransactWriteItems`) and `outcome`: `success`, `condition_failed` (a conditional write
/// whose condition was false: the normal answer of a rejection or a lost race),
/// `canceled` (a transaction cancelled by its conditions), `conflict`, `throttled`,
/// `transient` (5xx, transport, timeouts), `denied` (AccessDenied), `error`.
pub const REQUESTS: &str = "zael_dynamodb_requests_total";
/// DynamoDB requests re-sent, by `operation` and `reason` (`transient`, `conflict`).
pub const RETRIES: &str = "zael_dynamodb_retries_total";
/// Time of one DynamoDB request (one attempt), in seconds, by `operation`.
pub const REQUEST_DURATION: &str = "zael_dynamodb_request_duration_seconds";
/// Time a DynamoDB request waited for a slot under the store's in-flight bound
/// (`--store-max-in-flight`), in seconds: a store answering slower than the requests come.
pub const REQUEST_WAIT: &str = "zael_dynamodb_request_wait_seconds";
/// Write capacity units DynamoDB reports consumed (`ReturnConsumedCapacity=TOTAL`) by
/// successful writes, by `operation`. A write whose condition fails also costs 1 WCU, which
/// DynamoDB does not report: add `REQUESTS{outcome="condition_failed"}`.
pub const CONSUMED_WRITE_CAPACITY: &str = "zael_dynamodb_consumed_write_capacity_units_total";
/// Buckets decided by the store (one per bucket of a request, answered or not from the
/// cache): the denominator of the ratios.
pub const BUCKET_DECISIONS: &str = "zael_dynamodb_bucket_decisions_total";
/// Buckets decided by one speculative UpdateItem that landed (the fast path's admission).
pub const FAST_ADMITS: &str = "zael_dynamodb_fast_admits_total";
/// Buckets rejected from the rejection cache, without a DynamoDB request.
pub const REJECTION_CACHE_HITS: &str = "zael_dynamodb_rejection_cache_hits_total";
/// Bucket decisions by `path`: `fast_admit`, `fast_bypass`, `fast_reject`, `cache_reject`,
/// `slow_create`, `slow_update`, `slow_retry`, `slow_retry_reject`, `slow_lost_reject`,
/// `slow_reject`, `slow_bypass`, `disabled`, `reserved` (answered from a token reservation),
/// and the extra writes `debt`, `double`, `param_sync`; and `unsupported` (answered
/// unavailable).
pub const PATHS: &str = "zael_dynamodb_decisions_total";
/// Bucket decisions answered from this server's token reservation, without a request.
pub const RESERVED_DECISIONS: &str = "zael_reservation_local_decisions_total";
/// Millitokens taken off shared buckets as reservation blocks.
pub const RESERVED_TOKENS: &str = "zael_reservation_reserved_millitokens_total";
/// Millitokens of reservations given back unused.
pub const RETURNED_TOKENS: &str = "zael_reservation_returned_millitokens_total";
/// Millitokens of reservations that could not be given back at shutdown (stranded until the
/// bucket refills).
pub const STRANDED_TOKENS: &str = "zael_reservation_stranded_millitokens_total";
/// Decisions on a near-empty bucket that waited for this server's decisions already at the
/// table (one wait each time; most are then rejected by the rejection cache).
pub const NEAR_EMPTY_WAITS: &str = "zael_dynamodb_near_empty_waits_total";
/// Buckets that missed the call's deadline.
pub const TIMEOUTS: &str = "zael_dynamodb_timeouts_total";
/// Time of one store call (every bucket of one request, concurrently), in seconds, by
/// `result` (`ok`, `error`).
pub const CHARGE_DURATION: &str = "zael_dynamodb_charge_duration_seconds";
/// Time of one entity acquire (child and parent), in seconds, by `result`.
pub const ACQUIRE_DURATION: &str = "zael_dynamodb_acquire_duration_seconds";

/// Histogram buckets for [`REQUEST_DURATION`] and [`CHARGE_DURATION`], in seconds.
pub const DURATION_BUCKETS: &[f64] =
    &[0.000_5, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1.0];

/// Registers the descriptions of every metric above (call after installing the recorder).
pub fn describe_metrics() {
    describe_counter!(REQUESTS, "DynamoDB requests sent (every attempt), by operation and outcome.");
    describe_counter!(RETRIES, "DynamoDB requests re-sent, by operation and reason.");
    describe_histogram!(REQUEST_DURATION, metrics::Unit::Seconds, "Time of one DynamoDB request, by operation.");
    describe_histogram!(
        REQUEST_WAIT,
        metrics::Unit::Seconds,
        "Time a DynamoDB request waited for a slot under the store's in-flight bound."
    );
    describe_counter!(
        CONSUMED_WRITE_CAPACITY,
        "Write capacity units DynamoDB reported consumed by successful writes, by operation."
    );
    describe_counter!(BUCKET_DECISIONS, "Buckets decided by the DynamoDB store.");
    describe_counter!(FAST_ADMITS, "Buckets admitted by one speculative UpdateItem (the fast path).");
    describe_counter!(RESERVED_DECISIONS, "Bucket decisions answered from a local token reservation.");
    describe_counter!(RESERVED_TOKENS, "Millitokens taken off shared buckets as reservation blocks.");
    describe_counter!(RETURNED_TOKENS, "Millitokens of reservations given back unused.");
    describe_counter!(STRANDED_TOKENS, "Millitokens of reservations not given back at shutdown.");
    describe_counter!(REJECTION_CACHE_HITS, "Buckets rejected from the rejection cache, without a DynamoDB request.");
    describe_counter!(PATHS, "Bucket decisions of the DynamoDB store, by path.");
    describe_counter!(NEAR_EMPTY_WAITS, "Waits of decisions on near-empty buckets for those already at the table.");
    describe_counter!(TIMEOUTS, "Buckets that missed the DynamoDB store call's deadline.");
    describe_histogram!(
        CHARGE_DURATION,
        metrics::Unit::Seconds,
        "Time of one DynamoDB store call (all buckets of a request), by result."
    );
    describe_histogram!(
        ACQUIRE_DURATION,
        metrics::Unit::Seconds,
        "Time of one entity acquire of the DynamoDB store (the entity and its parent), by result."
    );
    // Present from the start, so ratios and alerts see zeros rather than gaps.
    for name in [
        BUCKET_DECISIONS,
        FAST_ADMITS,
        REJECTION_CACHE_HITS,
        TIMEOUTS,
        RESERVED_DECISIONS,
        RESERVED_TOKENS,
        RETURNED_TOKENS,
        STRANDED_TOKENS,
        NEAR_EMPTY_WAITS,
    ] {
        metrics::counter!(name).increment(0);
    }
}

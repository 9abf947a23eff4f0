//! Metric names, descriptions and the Prometheus recorder, in one place.

use metrics::{describe_counter, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `domain` and overall `code` (`ok`, `over_limit`).
pub const DECISIONS: &str = "zael_decisions_total";
/// Descriptors answered, by `domain` and `code` (`ok`, `over_limit`, `shadow`, `no_limit`, `unlimited`).
pub const DESCRIPTORS: &str = "zael_descriptors_total";
/// Limited descriptors by `domain`, `rule` (the rule's place in the config, e.g.
/// `user/path=%2Fapi*`, or with `detailed_metric` the request's entries) and `code`.
pub const RULE_DECISIONS: &str = "zael_rule_decisions_total";
/// Admitted descriptors that left less than a fifth of the capacity, by `domain`.
pub const NEAR_LIMIT: &str = "zael_near_limit_total";
/// Requests whose overall code was turned to OK by `--shadow-mode`, by `domain`.
pub const GLOBAL_SHADOW: &str = "zael_global_shadow_total";
/// Time to answer a request, in seconds, by `domain`.
pub const DECISION_DURATION: &str = "zael_decision_duration_seconds";
/// Config loads, by `result` (`success`, `error`).
pub const CONFIG_LOADS: &str = "zael_config_loads_total";
/// Store calls that failed, by `store`.
pub const STORE_ERRORS: &str = "zael_store_errors_total";
/// Requests refused as invalid, by `reason`.
pub const REQUEST_ERRORS: &str = "zael_request_errors_total";

/// Domain label for requests naming a domain the config does not have, so clients cannot
/// create unbounded label values.
pub const UNKNOWN_DOMAIN: &str = "_unknown";

const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the global recorder and returns the handle that renders `/metrics`.
pub fn install(store: &'static str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECISION_DURATION.to_owned()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe_counter!(DECISIONS, "Rate limit requests answered, by domain and overall code.");
    describe_counter!(DESCRIPTORS, "Descriptors answered, by domain and code.");
    describe_counter!(RULE_DECISIONS, "Limited descriptors by domain, rule and code.");
    describe_counter!(NEAR_LIMIT, "Admitted descriptors that left less than 20% of the capacity.");
    describe_counter!(GLOBAL_SHADOW, "Over-limit requests answered OK because of --shadow-mode.");
    describe_histogram!(DECISION_DURATION, metrics::Unit::Seconds, "Time to answer a rate limit request.");
    describe_counter!(CONFIG_LOADS, "Config loads by result.");
    describe_counter!(STORE_ERRORS, "Failed store calls.");
    describe_counter!(REQUEST_ERRORS, "Requests refused as invalid, by reason.");
    // Present from the start, so dashboards and alerts see zeros rather than gaps.
    metrics::counter!(CONFIG_LOADS, "result" => "error").absolute(0);
    metrics::counter!(STORE_ERRORS, "store" => store).absolute(0);
    Ok(handle)
}

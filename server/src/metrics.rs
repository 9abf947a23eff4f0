//! Metric names, descriptions and the Prometheus recorder, in one place.

use metrics::{Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use zael_core::decision::StatusKind;

/// Requests answered, by `domain` and overall `code` (`ok`, `over_limit`).
pub const DECISIONS: &str = "zael_decisions_total";
/// Descriptors answered, by `domain` and `code` (`ok`, `over_limit`, `shadow`, `no_limit`, `unlimited`).
pub const DESCRIPTORS: &str = "zael_descriptors_total";
/// Limited descriptors by `domain`, `rule` (the rule's place in the config, e.g.
/// `user/path=%2Fapi*`, or with `detailed_metric` or `value_to_metric` the reference's stats
/// key made of the request's values, e.g. `user_alice.path_/api*`) and `code`.
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
/// Charges admitted without the store, which failed, under `on_unavailable = allow`, by `store`.
pub const FAIL_OPEN: &str = "zael_store_fail_open_total";

/// Native API calls (`zael.limiter.v1`), by `method` and gRPC `code` (`ok`,
/// `resource_exhausted`, ...).
pub const API_CALLS: &str = "zael_api_calls_total";
/// Time to answer a native API call, in seconds, by `method`.
pub const API_DURATION: &str = "zael_api_call_duration_seconds";

/// The embedded store's YAML-rule buckets held (gauge).
pub const MEMORY_BUCKETS: &str = "zael_memory_buckets";
/// The most it keeps, `--max-buckets` (gauge).
pub const MEMORY_BUCKET_BOUND: &str = "zael_memory_bucket_bound";
/// Buckets it dropped, by `reason`: `refilled` (full again, nothing lost), `pressure` (the
/// bound: trimmed, or a new key decided and not kept).
pub const MEMORY_DROPPED: &str = "zael_memory_buckets_dropped_total";
/// What the buckets dropped under pressure could admit beyond the exact answers, at most
/// (the sum of capacity less balance), in millitokens.
pub const MEMORY_LOST: &str = "zael_memory_dropped_millitokens_total";

/// Domain label for requests naming a domain the config does not have, so clients cannot
/// create unbounded label values.
pub const UNKNOWN_DOMAIN: &str = "_unknown";

const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the global recorder and returns the handle that renders `/metrics`.
pub fn install(store: &'static str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECISION_DURATION.to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(API_DURATION.to_owned()), LATENCY_BUCKETS)?
        // The DynamoDB store's histograms (names in zael_table::metrics).
        .set_buckets_for_metric(Matcher::Prefix("zael_dynamodb_".to_owned()), zael_table::metrics::DURATION_BUCKETS)?
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
    describe_counter!(FAIL_OPEN, "Charges admitted without the store (it failed) under on_unavailable = allow.");
    describe_counter!(API_CALLS, "Native API calls (zael.limiter.v1), by method and gRPC code.");
    describe_histogram!(API_DURATION, metrics::Unit::Seconds, "Time to answer a native API call, by method.");
    describe_gauge!(MEMORY_BUCKETS, "YAML-rule buckets the embedded store holds.");
    describe_gauge!(MEMORY_BUCKET_BOUND, "The most YAML-rule buckets the embedded store keeps (--max-buckets).");
    describe_counter!(MEMORY_DROPPED, "Buckets the embedded store dropped, by reason (refilled, pressure).");
    describe_counter!(
        MEMORY_LOST,
        "Millitokens the buckets dropped under pressure could admit beyond the exact answers, at most."
    );
    // Present from the start, so dashboards and alerts see zeros rather than gaps.
    metrics::counter!(CONFIG_LOADS, "result" => "error").absolute(0);
    metrics::counter!(STORE_ERRORS, "store" => store).absolute(0);
    metrics::counter!(FAIL_OPEN, "store" => store).absolute(0);
    Ok(handle)
}

/// Per-domain handles for the decision metrics, registered once per domain (and per rule)
/// instead of looked up by label on every request: the decision path then only increments
/// atomics. Domains and rules are bounded by the config (unknown domains share
/// [`UNKNOWN_DOMAIN`]); `detailed_metric` labels carry request values and are not cached.
pub struct DecisionMetrics {
    domains: RwLock<HashMap<Box<str>, Arc<DomainMetrics>>>,
}

/// The `code` label values of [`DESCRIPTORS`] and [`RULE_DECISIONS`], in [`StatusKind`] order.
const KIND_LABELS: [&str; 5] = ["no_limit", "unlimited", "ok", "over_limit", "shadow"];

pub fn kind_label(kind: StatusKind) -> &'static str {
    KIND_LABELS[kind_index(kind)]
}

fn kind_index(kind: StatusKind) -> usize {
    match kind {
        StatusKind::NoLimit => 0,
        StatusKind::Unlimited => 1,
        StatusKind::Ok => 2,
        StatusKind::OverLimit => 3,
        StatusKind::Shadow => 4,
    }
}

pub struct DomainMetrics {
    name: String,
    decisions_ok: Counter,
    decisions_over: Counter,
    descriptors: [Counter; 5],
    near_limit: Counter,
    global_shadow: Counter,
    duration: Histogram,
    rules: RwLock<HashMap<Arc<str>, Arc<[Counter; 5]>>>,
}

impl DomainMetrics {
    fn new(name: &str) -> Self {
        let domain = name.to_owned();
        DomainMetrics {
            name: domain.clone(),
            decisions_ok: counter!(DECISIONS, "domain" => domain.clone(), "code" => "ok"),
            decisions_over: counter!(DECISIONS, "domain" => domain.clone(), "code" => "over_limit"),
            descriptors: KIND_LABELS.map(|code| counter!(DESCRIPTORS, "domain" => domain.clone(), "code" => code)),
            near_limit: counter!(NEAR_LIMIT, "domain" => domain.clone()),
            global_shadow: counter!(GLOBAL_SHADOW, "domain" => domain.clone()),
            duration: histogram!(DECISION_DURATION, "domain" => domain),
            rules: RwLock::default(),
        }
    }

    pub fn decision(&self, over_limit: bool) {
        if over_limit { &self.decisions_over } else { &self.decisions_ok }.increment(1);
    }

    pub fn descriptor(&self, kind: StatusKind, near_limit: bool) {
        self.descriptors[kind_index(kind)].increment(1);
        if near_limit {
            self.near_limit.increment(1);
        }
    }

    pub fn global_shadow(&self) {
        self.global_shadow.increment(1);
    }

    pub fn duration(&self, seconds: f64) {
        self.duration.record(seconds);
    }

    /// Counts a limited descriptor for its rule (the rule's config path).
    pub fn rule(&self, rule: &Arc<str>, kind: StatusKind) {
        let cached = self.rules.read().unwrap_or_else(|e| e.into_inner()).get(rule).cloned();
        let counters = cached.unwrap_or_else(|| {
            let made = Arc::new(KIND_LABELS.map(|code| {
                counter!(RULE_DECISIONS, "domain" => self.name.clone(), "rule" => rule.to_string(), "code" => code)
            }));
            self.rules.write().unwrap_or_else(|e| e.into_inner()).entry(rule.clone()).or_insert(made).clone()
        });
        counters[kind_index(kind)].increment(1);
    }

    /// Counts a `detailed_metric` or `value_to_metric` descriptor under a label made of its
    /// request values.
    pub fn detailed_rule(&self, label: String, kind: StatusKind) {
        counter!(RULE_DECISIONS, "domain" => self.name.clone(), "rule" => label, "code" => kind_label(kind))
            .increment(1);
    }
}

impl DecisionMetrics {
    pub fn domain(&self, name: &str) -> Arc<DomainMetrics> {
        if let Some(found) = self.domains.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return found.clone();
        }
        let mut domains = self.domains.write().unwrap_or_else(|e| e.into_inner());
        domains.entry(name.into()).or_insert_with(|| Arc::new(DomainMetrics::new(name))).clone()
    }
}

/// The process-wide decision metrics (the Prometheus recorder is process-wide too).
pub static DECISION_METRICS: LazyLock<DecisionMetrics> =
    LazyLock::new(|| DecisionMetrics { domains: RwLock::default() });

/// Publishes the embedded store's bound ([`zael_core::memory::Pressure`]); called before each
/// render of `/metrics`, so the figures are as of the scrape.
pub fn publish_memory(p: &zael_core::memory::Pressure) {
    gauge!(MEMORY_BUCKETS).set(p.live as f64);
    gauge!(MEMORY_BUCKET_BOUND).set(p.bound.max as f64);
    counter!(MEMORY_DROPPED, "reason" => "refilled").absolute(p.refilled_dropped);
    counter!(MEMORY_DROPPED, "reason" => "pressure").absolute(p.pressure_dropped);
    counter!(MEMORY_LOST).absolute(u64::try_from(p.pressure_lost.0).unwrap_or(0));
}

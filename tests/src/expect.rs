//! Request builders and whole-response assertions.
//!
//! `assert_response` compares the *whole* `RateLimitResponse` with an expected one. The only
//! field not compared exactly is `duration_until_reset`: it must be present (for statuses with a
//! limit), have `nanos == 0`, and lie in the expected range of seconds; it is then copied from
//! the actual response before the exact comparison (as envoyproxy/ratelimit's integration tests
//! do).

use crate::{
    Code, DescriptorStatus, Entry, PbDuration, RateLimit, RateLimitDescriptor, RateLimitOverride, RateLimitRequest,
    RateLimitResponse, RateLimitUnit, UInt64Value, Unit, unit_secs,
};
use std::fmt::Write as _;
use std::ops::RangeInclusive;

/// A request for `domain` with `descriptors` (request-level `hits_addend` unset).
pub fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: domain.to_string(), descriptors, hits_addend: 0 }
}

/// A descriptor with the given ordered entries.
pub fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

pub trait RequestExt {
    /// Set the request-level `hits_addend`.
    fn hits(self, n: u32) -> Self;
}

impl RequestExt for RateLimitRequest {
    fn hits(mut self, n: u32) -> Self {
        self.hits_addend = n;
        self
    }
}

pub trait DescriptorExt {
    /// Set the descriptor-level `hits_addend` (`0` = check only).
    fn hits(self, n: u64) -> Self;
    /// Set a `limit` override.
    fn limit(self, requests_per_unit: u32, unit: RateLimitUnit) -> Self;
}

impl DescriptorExt for RateLimitDescriptor {
    fn hits(mut self, n: u64) -> Self {
        self.hits_addend = Some(UInt64Value { value: n });
        self
    }
    fn limit(mut self, requests_per_unit: u32, unit: RateLimitUnit) -> Self {
        self.limit = Some(RateLimitOverride { requests_per_unit, unit: unit as i32 });
        self
    }
}

/// The expectation for one descriptor status.
#[derive(Clone, Debug)]
pub enum Expect {
    /// `{OK, no current_limit, remaining 0, no duration}`.
    NoLimit,
    /// `{OK, no current_limit, remaining u32::MAX, no duration}`.
    Unlimited,
    /// A status with a limit.
    Limited { code: Code, limit: RateLimit, remaining: u32, reset: RangeInclusive<i64> },
}

fn limit(rpu: u32, unit: Unit, name: &str) -> RateLimit {
    RateLimit { name: name.to_string(), requests_per_unit: rpu, unit: unit as i32 }
}

pub fn no_limit() -> Expect {
    Expect::NoLimit
}

pub fn unlimited() -> Expect {
    Expect::Unlimited
}

/// Limited and OK with `remaining` left; reset in `1..=unit`.
pub fn ok(rpu: u32, unit: Unit, name: &str, remaining: u32) -> Expect {
    Expect::Limited { code: Code::Ok, limit: limit(rpu, unit, name), remaining, reset: 1..=unit_secs(unit).max(1) }
}

/// OVER_LIMIT (remaining 0); reset in `1..=unit`.
pub fn over(rpu: u32, unit: Unit, name: &str) -> Expect {
    Expect::Limited {
        code: Code::OverLimit,
        limit: limit(rpu, unit, name),
        remaining: 0,
        reset: 1..=unit_secs(unit).max(1),
    }
}

/// Over the limit on a `shadow_mode` rule: code OK, remaining 0, limit and reset set.
pub fn shadowed(rpu: u32, unit: Unit, name: &str) -> Expect {
    Expect::Limited { code: Code::Ok, limit: limit(rpu, unit, name), remaining: 0, reset: 1..=unit_secs(unit).max(1) }
}

impl Expect {
    /// Narrow the accepted `duration_until_reset` seconds.
    pub fn reset(self, range: RangeInclusive<i64>) -> Expect {
        match self {
            Expect::Limited { code, limit, remaining, .. } => Expect::Limited { code, limit, remaining, reset: range },
            other => panic!("reset() on {other:?}"),
        }
    }
}

fn code_name(c: i32) -> String {
    match Code::try_from(c) {
        Ok(c) => c.as_str_name().to_string(),
        Err(_) => format!("Code({c})"),
    }
}

fn unit_name(u: i32) -> String {
    match Unit::try_from(u) {
        Ok(u) => u.as_str_name().to_string(),
        Err(_) => format!("Unit({u})"),
    }
}

/// A readable rendering of a response for failure messages.
pub fn describe(resp: &RateLimitResponse) -> String {
    let mut s = format!("overall_code={}\n", code_name(resp.overall_code));
    for (i, st) in resp.statuses.iter().enumerate() {
        let _ = write!(s, "  [{i}] code={}", code_name(st.code));
        match &st.current_limit {
            Some(l) => {
                let _ = write!(
                    s,
                    " current_limit={{rpu={}, unit={}, name={:?}}}",
                    l.requests_per_unit,
                    unit_name(l.unit),
                    l.name
                );
            }
            None => s.push_str(" current_limit=None"),
        }
        let _ = write!(s, " remaining={}", st.limit_remaining);
        match &st.duration_until_reset {
            Some(d) => {
                let _ = write!(s, " reset={}s+{}ns", d.seconds, d.nanos);
            }
            None => s.push_str(" reset=None"),
        }
        if st.quota.is_some() {
            let _ = write!(s, " quota={:?}", st.quota);
        }
        s.push('\n');
    }
    if !resp.response_headers_to_add.is_empty() {
        let _ = writeln!(s, "  response_headers_to_add={:?}", resp.response_headers_to_add);
    }
    if !resp.request_headers_to_add.is_empty() {
        let _ = writeln!(s, "  request_headers_to_add={:?}", resp.request_headers_to_add);
    }
    if !resp.raw_body.is_empty() {
        let _ = writeln!(s, "  raw_body={:?}", String::from_utf8_lossy(&resp.raw_body));
    }
    if resp.dynamic_metadata.is_some() {
        let _ = writeln!(s, "  dynamic_metadata={:?}", resp.dynamic_metadata);
    }
    if resp.quota.is_some() {
        let _ = writeln!(s, "  quota={:?}", resp.quota);
    }
    s
}

/// Build the expected response (durations copied from `actual` when within bounds) and the
/// list of duration problems.
fn expected_response(
    actual: &RateLimitResponse,
    overall: Code,
    expected: &[Expect],
) -> (RateLimitResponse, Vec<String>) {
    let mut problems = Vec::new();
    let mut statuses = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        let st = match e {
            Expect::NoLimit => DescriptorStatus { code: Code::Ok as i32, ..Default::default() },
            Expect::Unlimited => {
                DescriptorStatus { code: Code::Ok as i32, limit_remaining: u32::MAX, ..Default::default() }
            }
            Expect::Limited { code, limit, remaining, reset } => {
                let actual_d = actual.statuses.get(i).and_then(|s| s.duration_until_reset);
                let d = match actual_d {
                    Some(d) if d.nanos == 0 && reset.contains(&d.seconds) => d,
                    Some(d) => {
                        problems.push(format!(
                            "status [{i}]: duration_until_reset {}s+{}ns: want whole seconds in \
                             {reset:?}",
                            d.seconds, d.nanos
                        ));
                        PbDuration { seconds: *reset.start(), nanos: 0 }
                    }
                    None => {
                        problems.push(format!("status [{i}]: duration_until_reset missing (want {reset:?} s)"));
                        PbDuration { seconds: *reset.start(), nanos: 0 }
                    }
                };
                DescriptorStatus {
                    code: *code as i32,
                    current_limit: Some(limit.clone()),
                    limit_remaining: *remaining,
                    duration_until_reset: Some(d),
                    quota: None,
                }
            }
        };
        statuses.push(st);
    }
    (RateLimitResponse { overall_code: overall as i32, statuses, ..Default::default() }, problems)
}

/// Assert the whole response: overall code, one status per descriptor as expected, and nothing
/// else set (no headers, body, metadata or quota).
#[track_caller]
pub fn assert_response(actual: &RateLimitResponse, overall: Code, expected: &[Expect]) {
    let (want, problems) = expected_response(actual, overall, expected);
    if &want != actual || !problems.is_empty() {
        panic!(
            "response mismatch\n--- expected ---\n{}--- actual ---\n{}{}",
            describe(&want),
            describe(actual),
            problems.iter().map(|p| format!("  * {p}\n")).collect::<String>()
        );
    }
}

/// Like `assert_response` but ignores `response_headers_to_add` (checked by the caller).
#[track_caller]
pub fn assert_response_ignoring_headers(actual: &RateLimitResponse, overall: Code, expected: &[Expect]) {
    let mut a = actual.clone();
    a.response_headers_to_add.clear();
    assert_response(&a, overall, expected);
}

/// The `duration_until_reset` seconds of status `i` (panics when absent).
#[track_caller]
pub fn reset_secs(resp: &RateLimitResponse, i: usize) -> i64 {
    resp.statuses
        .get(i)
        .and_then(|s| s.duration_until_reset)
        .unwrap_or_else(|| panic!("status [{i}] has no duration_until_reset\n{}", describe(resp)))
        .seconds
}

/// Whether a gRPC status message mentions at least one of `words` (case-insensitive).
pub fn mentions_any(message: &str, words: &[&str]) -> bool {
    let m = message.to_lowercase();
    words.iter().any(|w| m.contains(&w.to_lowercase()))
}

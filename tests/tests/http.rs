//! The HTTP side: /healthcheck, /json, /rlconfig, /metrics; gRPC health; server-side
//! RateLimit-* response headers.

use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use zael_tests::*;

const CONFIG: &str = r#"
domain: web
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 2, name: two-per-minute}
  - key: free
    rate_limit: {unlimited: true}
  - key: h
    rate_limit: {unit: hour, requests_per_unit: 5}
"#;

/// Drop protojson default values (0, "", false, null, empty lists/objects), recursively:
/// protojson omits them by default, and emitting them is equally valid.
fn strip_defaults(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Bool(false) => None,
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let items: Vec<Value> = a.iter().map(|x| strip_defaults(x).unwrap_or_else(|| json!({}))).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(o) => {
            let m: serde_json::Map<String, Value> =
                o.iter().filter_map(|(k, x)| strip_defaults(x).map(|x| (k.clone(), x))).collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other.clone()),
    }
}

/// Compare `actual` JSON with `expected`, where an expected `{"$secs": [lo, hi]}` stands for a
/// protojson duration string `"<n>s"` with `lo <= n <= hi`.
fn json_diff(actual: &Value, expected: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(range) = expected.get("$secs") {
        let lo = range[0].as_i64().unwrap();
        let hi = range[1].as_i64().unwrap();
        let ok = actual
            .as_str()
            .and_then(|s| s.strip_suffix('s'))
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| (lo..=hi).contains(&n));
        if !ok {
            problems.push(format!("{path}: want a duration \"<n>s\" with {lo} <= n <= {hi}, got {actual}"));
        }
        return;
    }
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => json_diff(av, ev, &format!("{path}.{k}"), problems),
                    None => problems.push(format!("{path}.{k}: missing (want {ev})")),
                }
            }
            for k in a.keys() {
                if !e.contains_key(k) {
                    problems.push(format!("{path}.{k}: unexpected field {}", a[k]));
                }
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            if a.len() != e.len() {
                problems.push(format!("{path}: length {} want {}", a.len(), e.len()));
            }
            for (i, (av, ev)) in a.iter().zip(e.iter()).enumerate() {
                json_diff(av, ev, &format!("{path}[{i}]"), problems);
            }
        }
        (a, e) => {
            if a != e {
                problems.push(format!("{path}: got {a} want {e}"));
            }
        }
    }
}

#[track_caller]
fn assert_json_response(reply: &HttpReply, status: u16, expected: Value) {
    assert_eq!(reply.status, status, "HTTP status; body {:?}", reply.body);
    let actual = strip_defaults(&reply.json()).unwrap_or(json!({}));
    let expected = strip_defaults(&expected).unwrap_or(json!({}));
    let mut problems = Vec::new();
    json_diff(&actual, &expected, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "JSON response mismatch:\n  {}\nactual: {}\nexpected: {}",
        problems.join("\n  "),
        reply.body,
        expected
    );
}

#[tokio::test]
async fn healthcheck_answers_200_ok() {
    let s = Server::with_config(CONFIG).await;
    let r = s.http_get("/healthcheck").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim_end(), "OK");
}

#[tokio::test]
async fn grpc_health_is_serving_for_empty_and_ratelimit_service() {
    let s = Server::with_config(CONFIG).await;
    assert_eq!(s.grpc_health("").await.ok(), Some(ServingStatus::Serving));
    assert_eq!(s.grpc_health("ratelimit").await.ok(), Some(ServingStatus::Serving));
}

#[tokio::test]
async fn json_endpoint_answers_200_with_the_protojson_response() {
    let s = Server::with_config(CONFIG).await;
    let r = s
        .http_post_json("/json", r#"{"domain":"web","descriptors":[{"entries":[{"key":"k","value":"a"}]}]}"#)
        .await
        .unwrap();
    assert_json_response(
        &r,
        200,
        json!({
            "overallCode": "OK",
            "statuses": [{
                "code": "OK",
                "currentLimit": {"requestsPerUnit": 2, "unit": "MINUTE", "name": "two-per-minute"},
                "limitRemaining": 1,
                "durationUntilReset": {"$secs": [1, 60]}
            }]
        }),
    );
    // Several descriptors: no limit, unlimited, an override.
    let r = s
        .http_post_json(
            "/json",
            r#"{"domain":"web","descriptors":[
                {"entries":[{"key":"nomatch","value":"x"}]},
                {"entries":[{"key":"free","value":"x"}]},
                {"entries":[{"key":"o","value":"x"}],"limit":{"requestsPerUnit":7,"unit":"HOUR"}}
            ]}"#,
        )
        .await
        .unwrap();
    assert_json_response(
        &r,
        200,
        json!({
            "overallCode": "OK",
            "statuses": [
                {"code": "OK"},
                {"code": "OK", "limitRemaining": 4294967295u32},
                {
                    "code": "OK",
                    "currentLimit": {"requestsPerUnit": 7, "unit": "HOUR"},
                    "limitRemaining": 6,
                    "durationUntilReset": {"$secs": [1, 3600]}
                }
            ]
        }),
    );
}

#[tokio::test]
async fn json_endpoint_answers_429_when_over_limit() {
    let s = Server::with_config(CONFIG).await;
    let body = r#"{"domain":"web","descriptors":[{"entries":[{"key":"k","value":"b"}]}]}"#;
    for remaining in [1, 0] {
        let r = s.http_post_json("/json", body).await.unwrap();
        assert_json_response(
            &r,
            200,
            json!({"overallCode": "OK", "statuses": [{
                "code": "OK",
                "currentLimit": {"requestsPerUnit": 2, "unit": "MINUTE", "name": "two-per-minute"},
                "limitRemaining": remaining,
                "durationUntilReset": {"$secs": [1, 60]}
            }]}),
        );
    }
    let r = s.http_post_json("/json", body).await.unwrap();
    assert_json_response(
        &r,
        429,
        json!({"overallCode": "OVER_LIMIT", "statuses": [{
            "code": "OVER_LIMIT",
            "currentLimit": {"requestsPerUnit": 2, "unit": "MINUTE", "name": "two-per-minute"},
            "durationUntilReset": {"$secs": [1, 60]}
        }]}),
    );
}

#[tokio::test]
async fn json_endpoint_answers_400_on_bad_json_and_bad_requests() {
    let s = Server::with_config(CONFIG).await;
    for (what, body) in
        [("not JSON", "{nope"), ("empty body", ""), ("wrong type", r#"{"domain": 5, "descriptors": []}"#)]
    {
        let r = s.http_post_json("/json", body).await.unwrap();
        assert_eq!(r.status, 400, "{what}: body {:?}", r.body);
        assert!(!r.body.trim().is_empty(), "{what}: 400 without a message");
    }
    // Valid JSON, invalid request: the message names the problem.
    let r = s
        .http_post_json("/json", r#"{"domain":"","descriptors":[{"entries":[{"key":"k","value":"a"}]}]}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "empty domain: {:?}", r.body);
    assert!(mentions_any(&r.body, &["domain"]), "body: {:?}", r.body);
    let r = s.http_post_json("/json", r#"{"domain":"web","descriptors":[]}"#).await.unwrap();
    assert_eq!(r.status, 400, "no descriptors: {:?}", r.body);
    assert!(mentions_any(&r.body, &["descriptor"]), "body: {:?}", r.body);
    let r = s
        .http_post_json(
            "/json",
            r#"{"domain":"web","descriptors":[{"entries":[{"key":"k","value":"a"}],"limit":{"requestsPerUnit":1,"unit":"UNKNOWN"}}]}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "override UNKNOWN: {:?}", r.body);
    assert!(mentions_any(&r.body, &["unit"]), "body: {:?}", r.body);
    // Still serving.
    let r = s
        .http_post_json("/json", r#"{"domain":"web","descriptors":[{"entries":[{"key":"k","value":"z"}]}]}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn json_endpoint_accepts_camel_case_and_proto_field_names() {
    let s = Server::with_config(CONFIG).await;
    // Request-level hitsAddend (camelCase).
    let r = s
        .http_post_json(
            "/json",
            r#"{"domain":"web","hitsAddend":3,"descriptors":[{"entries":[{"key":"h","value":"a"}]}]}"#,
        )
        .await
        .unwrap();
    assert_json_response(
        &r,
        200,
        json!({"overallCode": "OK", "statuses": [{
            "code": "OK",
            "currentLimit": {"requestsPerUnit": 5, "unit": "HOUR"},
            "limitRemaining": 2,
            "durationUntilReset": {"$secs": [1, 3600]}
        }]}),
    );
    // Descriptor-level hits_addend 0 (proto name; UInt64Value as a JSON string): check only.
    let r = s
        .http_post_json(
            "/json",
            r#"{"domain":"web","descriptors":[{"entries":[{"key":"h","value":"a"}],"hits_addend":"0"}]}"#,
        )
        .await
        .unwrap();
    assert_json_response(
        &r,
        200,
        json!({"overallCode": "OK", "statuses": [{
            "code": "OK",
            "currentLimit": {"requestsPerUnit": 5, "unit": "HOUR"},
            "limitRemaining": 2,
            "durationUntilReset": {"$secs": [1, 3600]}
        }]}),
    );
    // Override with proto field names.
    let r = s
        .http_post_json(
            "/json",
            r#"{"domain":"web","hits_addend":2,"descriptors":[{"entries":[{"key":"p","value":"a"}],"limit":{"requests_per_unit":4,"unit":"SECOND"}}]}"#,
        )
        .await
        .unwrap();
    assert_json_response(
        &r,
        200,
        json!({"overallCode": "OK", "statuses": [{
            "code": "OK",
            "currentLimit": {"requestsPerUnit": 4, "unit": "SECOND"},
            "limitRemaining": 2,
            "durationUntilReset": {"$secs": [1, 1]}
        }]}),
    );
}

#[tokio::test]
async fn rlconfig_shows_the_loaded_config() {
    let s = Server::with_config(CONFIG).await;
    let r = s.http_get("/rlconfig").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for needle in ["web", "two-per-minute", "free", "2", "5"] {
        assert!(r.body.contains(needle), "/rlconfig should mention {needle:?}:\n{}", r.body);
    }
    assert!(
        mentions_any(&r.body, &["minute"]) && mentions_any(&r.body, &["hour"]),
        "/rlconfig should show the units:\n{}",
        r.body
    );
}

const METRICS: &str = r#"
domain: m
descriptors:
  - key: lim
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: unl
    rate_limit: {unlimited: true}
  - key: sh
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

#[tokio::test]
async fn metrics_count_decisions_descriptors_and_config_loads() {
    let s = Server::with_config(METRICS).await;
    // 5 x lim (3 ok, 2 over), 1 x unlimited, 1 x no match, 2 x shadow (ok, then shadowed).
    for _ in 0..5 {
        s.should(req("m", vec![desc(&[("lim", "a")])])).await;
    }
    s.should(req("m", vec![desc(&[("unl", "a")])])).await;
    s.should(req("m", vec![desc(&[("nomatch", "a")])])).await;
    for _ in 0..2 {
        s.should(req("m", vec![desc(&[("sh", "a")])])).await;
    }
    let m = s.metrics().await;
    let dom = |code: &'static str| [("domain", "m"), ("code", code)];
    let check = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(m.get_or_zero(name, labels), want, "{name}{labels:?}\n---- /metrics ----\n{}", m.text);
    };
    check("zael_decisions_total", &dom("ok"), 7.0);
    check("zael_decisions_total", &dom("over_limit"), 2.0);
    check("zael_descriptors_total", &dom("ok"), 4.0);
    check("zael_descriptors_total", &dom("over_limit"), 2.0);
    check("zael_descriptors_total", &dom("shadow"), 1.0);
    check("zael_descriptors_total", &dom("no_limit"), 1.0);
    check("zael_descriptors_total", &dom("unlimited"), 1.0);
    assert_eq!(m.sum("zael_decisions_total", &[]), 9.0, "decisions over all labels\n{}", m.text);
    assert!(
        m.get_or_zero("zael_near_limit_total", &[("domain", "m")]) >= 1.0,
        "zael_near_limit_total{{domain=m}} after draining a bucket\n{}",
        m.text
    );
    assert_eq!(m.type_of("zael_decision_duration_seconds").as_deref(), Some("histogram"), "\n{}", m.text);
    assert_eq!(m.sum("zael_decision_duration_seconds_count", &[]), 9.0, "histogram count\n{}", m.text);
    assert!(
        m.sum("zael_decision_duration_seconds_bucket", &[("le", "+Inf")]) == 9.0,
        "histogram +Inf bucket\n{}",
        m.text
    );
    assert!(m.get_or_zero("zael_config_loads_total", &[("result", "success")]) >= 1.0, "config loads\n{}", m.text);
    check("zael_config_loads_total", &[("result", "error")], 0.0);
    check("zael_store_errors_total", &[], 0.0);
    check("zael_request_errors_total", &[], 0.0);
    // One bad request shows up under zael_request_errors_total.
    let _ = s.call(req("", vec![desc(&[("lim", "a")])])).await;
    let m = s.metrics().await;
    assert_eq!(m.sum("zael_request_errors_total", &[]), 1.0, "request errors\n{}", m.text);
}

/// A limit header is the chosen status's requests_per_unit, either bare ([ref]'s form, "2") or
/// followed by draft-03 quota policies ("2, 2;w=60"), which must then include that limit's
/// own policy.
#[track_caller]
fn assert_limit_header(value: Option<String>, rpu: u32, window: i64) {
    let v = value.expect("limit header present");
    let mut parts = v.split(',').map(str::trim);
    assert_eq!(parts.next(), Some(rpu.to_string().as_str()), "limit header {v:?}");
    let policies: Vec<&str> = parts.collect();
    if !policies.is_empty() {
        let own = format!("{rpu};w={window}");
        assert!(
            policies.iter().any(|p| *p == own || p.starts_with(&format!("{own};"))),
            "limit header {v:?} lacks the policy {own:?}"
        );
    }
}

fn header(resp: &RateLimitResponse, name: &str) -> Option<String> {
    resp.response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| if h.value.is_empty() { String::from_utf8_lossy(&h.raw_value).into_owned() } else { h.value.clone() })
}

#[tokio::test]
async fn response_headers_report_the_most_constrained_status() {
    let s = Server::builder().file("c.yaml", CONFIG).arg("--response-headers").start().await;
    // k: 2/min, h: 5/h. The smallest remaining wins: k (1 left).
    let r = s.should(req("web", vec![desc(&[("h", "a")]), desc(&[("k", "a")])])).await;
    assert_response_ignoring_headers(
        &r,
        Code::Ok,
        &[ok(5, Unit::Hour, "", 4), ok(2, Unit::Minute, "two-per-minute", 1)],
    );
    assert_eq!(r.response_headers_to_add.len(), 3, "{}", describe(&r));
    assert_limit_header(header(&r, "RateLimit-Limit"), 2, 60);
    assert_eq!(header(&r, "RateLimit-Remaining").as_deref(), Some("1"));
    assert_eq!(
        header(&r, "RateLimit-Reset"),
        Some(reset_secs(&r, 1).to_string()),
        "reset header = the chosen status's duration_until_reset"
    );
    // Over: the over status is reported.
    s.should(req("web", vec![desc(&[("k", "a")])])).await;
    let r = s.should(req("web", vec![desc(&[("h", "a")]), desc(&[("k", "a")])])).await;
    assert_response_ignoring_headers(
        &r,
        Code::OverLimit,
        &[ok(5, Unit::Hour, "", 3), over(2, Unit::Minute, "two-per-minute")],
    );
    assert_limit_header(header(&r, "RateLimit-Limit"), 2, 60);
    assert_eq!(header(&r, "RateLimit-Remaining").as_deref(), Some("0"));
    assert_eq!(header(&r, "RateLimit-Reset"), Some(reset_secs(&r, 1).to_string()));
    // No status with a limit: no headers.
    let r = s.should(req("web", vec![desc(&[("nomatch", "a")]), desc(&[("free", "a")])])).await;
    assert_response(&r, Code::Ok, &[no_limit(), unlimited()]);
}

#[tokio::test]
async fn response_header_names_are_configurable() {
    let s = Server::builder()
        .file("c.yaml", CONFIG)
        .args([
            "--response-headers",
            "--response-header-limit",
            "X-Lim",
            "--response-header-remaining",
            "X-Rem",
            "--response-header-reset",
            "X-Reset",
        ])
        .start()
        .await;
    let r = s.should(req("web", vec![desc(&[("h", "b")])])).await;
    assert_response_ignoring_headers(&r, Code::Ok, &[ok(5, Unit::Hour, "", 4)]);
    assert_eq!(r.response_headers_to_add.len(), 3, "{}", describe(&r));
    assert_limit_header(header(&r, "X-Lim"), 5, 3600);
    assert_eq!(header(&r, "X-Rem").as_deref(), Some("4"));
    assert_eq!(header(&r, "X-Reset"), Some(reset_secs(&r, 0).to_string()));
}

#[tokio::test]
async fn without_the_flag_no_response_headers_are_added() {
    let s = Server::with_config(CONFIG).await;
    let r = s.should(req("web", vec![desc(&[("k", "q")])])).await;
    // assert_response requires response_headers_to_add to be empty.
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "two-per-minute", 1)]);
}

#[tokio::test]
async fn rule_metrics_count_per_rule_and_per_value_with_detailed_metric() {
    let s = Server::with_config(
        "domain: rules\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 2}\n  - key: path\n    detailed_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
    )
    .await;
    for _ in 0..3 {
        s.should(req("rules", vec![desc(&[("user", "a")]), desc(&[("path", "/x")])])).await;
    }
    let m = s.metrics().await;
    let rule = |rule: &str, code: &str| {
        m.get_or_zero("zael_rule_decisions_total", &[("domain", "rules"), ("rule", rule), ("code", code)])
    };
    assert_eq!(rule("user", "ok"), 2.0);
    assert_eq!(rule("user", "over_limit"), 1.0);
    // detailed_metric: labelled by the request's entries, not the rule.
    assert_eq!(rule("path_/x", "ok"), 3.0);
    assert_eq!(rule("path", "ok"), 0.0);
}

//! The reference's rule keys beyond the limit on the embedded store (`zael_tests::scenarios::
//! rule_keys`, also run on DynamoDB), and what only this server's front ends show: the
//! dynamic metadata over `/json`, `value_to_metric` labels, and `--merge-domain-config`.

use zael_tests::scenarios::rule_keys::{self, ARGS, CONFIG};
use zael_tests::*;

async fn start() -> Server {
    Server::builder().file("config.yaml", CONFIG).args(ARGS).start().await
}

#[tokio::test]
async fn values_a_share_threshold_pattern_matches_share_one_bucket() {
    rule_keys::values_a_share_threshold_pattern_matches_share_one_bucket(&start().await).await;
}

#[tokio::test]
async fn quota_descriptors_are_over_together_and_rate_limits_alone() {
    rule_keys::quota_descriptors_are_over_together_and_rate_limits_alone(&start().await).await;
}

#[tokio::test]
async fn dynamic_metadata_carries_the_request_and_the_passed_rules_metadata() {
    rule_keys::dynamic_metadata_carries_the_request_and_the_passed_rules_metadata(&start().await).await;
}

#[tokio::test]
async fn the_global_quota_mode_makes_every_descriptor_a_quota_one() {
    let s = Server::builder().file("config.yaml", CONFIG).arg("--quota-mode").start().await;
    let two = |a: &'static str, b: &'static str| req("keys", vec![desc(&[("regular", a)]), desc(&[("regular", b)])]);
    let r = s.should(two("a", "b")).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "regular", 0), ok(1, Unit::Minute, "regular", 0)]);
    let r = s.should(two("a", "c")).await;
    assert_response(&r, Code::Ok, &[over(1, Unit::Minute, "regular"), ok(1, Unit::Minute, "regular", 0)]);
    let r = s.should(two("a", "b")).await;
    assert_response(&r, Code::OverLimit, &[over(1, Unit::Minute, "regular"), over(1, Unit::Minute, "regular")]);
    // Without dynamic metadata asked for, the answer carries none (assert_response checks it).
}

#[tokio::test]
async fn the_json_endpoint_returns_the_dynamic_metadata() {
    let s = start().await;
    let body = r#"{"domain":"keys","descriptors":[{"entries":[{"key":"tagged","value":"j"}]}]}"#;
    let reply = s.http_post_json("/json", body).await.expect("http");
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "overallCode": "OK",
            "statuses": [{"code": "OK", "currentLimit": {"name": "tagged", "requestsPerUnit": 5, "unit": "MINUTE"}, "durationUntilReset": "12s", "limitRemaining": 4}],
            "dynamicMetadata": {
                "domain": "keys",
                "descriptors": [{"entries": ["tagged=j"]}],
                "metadata": {"plan": {"region": "eu"}, "note": "tagged"},
            },
        })
    );
}

#[tokio::test]
async fn value_to_metric_labels_the_rule_with_the_request_values() {
    let s = Server::with_config(
        "domain: vm\ndescriptors:\n  - key: user\n    value_to_metric: true\n    descriptors:\n      - key: ver\n        value: \"v*\"\n        value_to_metric: true\n        rate_limit: {unit: minute, requests_per_unit: 5}\n  - key: route\n    value: \"api/*\"\n    share_threshold: true\n    value_to_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
    )
    .await;
    s.should(req("vm", vec![desc(&[("user", "alice"), ("ver", "v12")])])).await;
    s.should(req("vm", vec![desc(&[("user", "bob"), ("ver", "v3")])])).await;
    s.should(req("vm", vec![desc(&[("route", "api/a")]), desc(&[("route", "api/b")])])).await;
    let m = s.metrics().await;
    let rule =
        |rule: &str| m.get_or_zero("zael_rule_decisions_total", &[("domain", "vm"), ("rule", rule), ("code", "ok")]);
    assert_eq!((rule("user_alice.ver_v12"), rule("user_bob.ver_v3"), rule("user/ver=v*")), (1.0, 1.0, 0.0));
    // share_threshold wins over value_to_metric: the pattern, so the rule's own label.
    assert_eq!(rule("route=api%2F*"), 2.0);
}

#[tokio::test]
async fn with_merge_domain_config_a_domain_spread_over_two_files_is_served_whole() {
    let a = "domain: split\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1, name: users}\n";
    let b =
        "domain: split\ndescriptors:\n  - key: ip\n    rate_limit: {unit: minute, requests_per_unit: 2, name: ips}\n";
    let s = Server::builder().file("a.yaml", a).file("b.yaml", b).arg("--merge-domain-config").start().await;
    let r = s.should(req("split", vec![desc(&[("user", "u")]), desc(&[("ip", "1")])])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "users", 0), ok(2, Unit::Minute, "ips", 1)]);

    let mut refused = Server::builder().file("a.yaml", a).file("b.yaml", b).no_wait().start().await;
    let status = refused.wait_exit(std::time::Duration::from_secs(15)).await.expect("exits");
    assert_eq!(status.code(), Some(1), "a domain in two files without the flag: {}", refused.log_tail());
    assert!(refused.logs().contains("domain 'split' is already defined in"), "{}", refused.log_tail());
}

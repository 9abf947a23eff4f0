//! The reference's config keys beyond the limit: `quota_mode` (and the global quota mode),
//! `share_threshold`, `value_to_metric` / `detailed_metric` labels and `metadata`, with the
//! cases of envoyproxy/ratelimit's own tests (`test/service/ratelimit_test.go` quota-mode
//! tests, `test/config/share_threshold.yaml` and `TestShareThreshold`).

use super::*;
use crate::config::parse_domain;
use crate::memory::MemoryStore;

const CONFIG: &str = r#"
domain: q
descriptors:
  - key: regular
    value: over
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: regular
    value: ok
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: quota
    value: over
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: quota
    value: ok
    quota_mode: true
    metadata: {plan: {tier: free, owner: a}, note: first}
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: quota
    value: ok2
    quota_mode: true
    metadata: {plan: {tier: paid, region: eu}, extra: [1, 2]}
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: free
    rate_limit: {unlimited: true}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: own
    value: files/*
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: nested
    value: parent
    descriptors:
      - key: files
        value: nested/*
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 200}
  - key: files
    value: top/*
    share_threshold: true
    descriptors:
      - key: files
        value: nested/*
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 300}
  - key: route
    value: api/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: service
    value: svc/*
    share_threshold: true
    descriptors:
      - key: endpoint
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 80}
  - key: path
    value: path/*
    share_threshold: true
    descriptors:
      - key: file
        value: file/*
        share_threshold: false
        descriptors:
          - key: type
            rate_limit: {unit: minute, requests_per_unit: 120}
  - key: file
    value: test1
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: file
    value: test*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: multiroute
    value: svc*ep*rpc
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: tenant
    value: t*prod
    share_threshold: true
    descriptors:
      - key: resource
        value: res*v2
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: user
    value_to_metric: true
    descriptors:
      - key: ver
        value: v*
        value_to_metric: true
        rate_limit: {unit: minute, requests_per_unit: 60}
"#;

/// One descriptor's entries.
type Entries<'a> = &'a [(&'a str, &'a str)];

fn config() -> RateLimitConfig {
    parse_domain("q.yaml", CONFIG).unwrap()
}

fn request<'a>(descriptors: &[&[(&'a str, &'a str)]]) -> Request<'a> {
    Request {
        domain: "q",
        descriptors: descriptors.iter().map(|e| Descriptor { entries: e.to_vec(), ..Default::default() }).collect(),
        hits_addend: 0,
    }
}

fn decide(config: &RateLimitConfig, store: &MemoryStore, request: &Request<'_>, modes: Modes) -> Decision {
    request.validate().unwrap();
    let plan = plan(config, request).expect("valid");
    let now = EpochMillis(1_000_000);
    let outcomes: Vec<_> = plan.bucket_requests().iter().map(|r| store.charge_bucket(r, now)).collect();
    plan.decide(&outcomes, &[], now, modes)
}

#[test]
fn quota_mode_is_over_when_a_rate_limit_is_or_every_quota_descriptor_is() {
    use Code::{Ok, OverLimit as Over};
    let per_rule = Modes::default();
    let global = Modes { quota: true, shadow: false };
    let shadow = Modes { quota: false, shadow: true };
    let cases: [(&[Entries<'_>], Modes, Code, &[Code]); 12] = [
        // TestServicePerDescriptorQuotaMode: a rate limit over is over whatever the quotas say.
        (&[&[("regular", "over")], &[("quota", "ok")]], per_rule, Over, &[Over, Ok]),
        // All of the request's quota descriptors over.
        (&[&[("regular", "ok")], &[("quota", "over")]], per_rule, Over, &[Ok, Over]),
        (&[&[("regular", "ok")], &[("quota", "ok")]], per_rule, Ok, &[Ok, Ok]),
        // TestServiceQuotaModeOnlyAllOverTheLimit / OnlySomeOverTheLimit.
        (&[&[("quota", "over")], &[("quota", "over")]], per_rule, Over, &[Over, Over]),
        (&[&[("quota", "over")], &[("quota", "ok")]], per_rule, Ok, &[Over, Ok]),
        // TestServiceQuotaModeWithShadowMode.
        (&[&[("quota", "over")]], shadow, Ok, &[Over]),
        // TestServiceGlobalQuotaMode: every descriptor is a quota one.
        (&[&[("regular", "over")], &[("regular", "over")]], global, Over, &[Over, Over]),
        (&[&[("regular", "over")], &[("regular", "ok")]], global, Ok, &[Over, Ok]),
        // A descriptor no rule matches passes as a quota descriptor; an unlimited one is not counted.
        (&[&[("regular", "over")], &[("nothing", "x")]], global, Ok, &[Over, Ok]),
        (&[&[("regular", "over")], &[("free", "x")]], global, Over, &[Over, Ok]),
        (&[&[("quota", "over")], &[("free", "x")]], per_rule, Over, &[Over, Ok]),
        (&[&[("free", "x")]], global, Ok, &[Ok]),
    ];
    let config = config();
    for (descriptors, modes, overall, codes) in cases {
        let decision = decide(&config, &MemoryStore::new(), &request(descriptors), modes);
        let got: Vec<_> = decision.statuses.iter().map(|s| s.code).collect();
        assert_eq!((decision.overall, got.as_slice()), (overall, codes), "{descriptors:?} {modes:?}");
    }
}

#[test]
fn values_a_share_threshold_pattern_matches_share_one_bucket() {
    let config = config();
    let entity = |entries: &[(&str, &str)]| {
        let plan = plan(&config, &request(&[entries])).unwrap();
        plan.bucket_requests().iter().map(|b| b.key.entity.clone()).collect::<Vec<_>>()
    };
    // Each group shares one bucket (the reference's TestShareThreshold cases).
    let groups: [&[&[(&str, &str)]]; 8] = [
        &[&[("files", "files/a.pdf")], &[("files", "files/b.csv")], &[("files", "files/c.txt")]],
        &[&[("nested", "parent"), ("files", "nested/file1.txt")], &[("nested", "parent"), ("files", "nested/x")]],
        &[&[("files", "top/a"), ("files", "nested/b")], &[("files", "top/c"), ("files", "nested/d")]],
        &[&[("route", "api/v1"), ("method", "GET")], &[("route", "api/v2"), ("method", "GET")]],
        &[
            &[("path", "path/foo"), ("file", "file/doc1"), ("type", "pdf")],
            &[("path", "path/bar"), ("file", "file/doc1"), ("type", "pdf")],
        ],
        &[&[("file", "test2")], &[("file", "test23")], &[("file", "test123")]],
        &[&[("multiroute", "svc1ep2rpc")], &[("multiroute", "svcXepYrpc")]],
        &[&[("tenant", "t1prod"), ("resource", "res1v2")], &[("tenant", "t2prod"), ("resource", "resXv2")]],
    ];
    for group in groups {
        let first = entity(group[0]);
        assert_eq!(first.len(), 1, "{group:?}");
        for entries in &group[1..] {
            assert_eq!(entity(entries), first, "{entries:?} shares the bucket of {:?}", group[0]);
        }
    }
    // Not shared: a pattern without share_threshold, the value of a key-only node, a level
    // whose pattern does not share, and an exact value beside a sharing pattern.
    let apart: [(Entries<'_>, Entries<'_>); 5] = [
        (&[("own", "files/a")], &[("own", "files/b")]),
        (&[("route", "api/v1"), ("method", "GET")], &[("route", "api/v1"), ("method", "PUT")]),
        (
            &[("path", "path/foo"), ("file", "file/doc1"), ("type", "pdf")],
            &[("path", "path/foo"), ("file", "file/doc2"), ("type", "pdf")],
        ),
        (&[("file", "test1")], &[("file", "test2")]),
        (&[("files", "files/a")], &[("files", "top/a"), ("files", "nested/a")]),
    ];
    for (a, b) in apart {
        assert_ne!(entity(a), entity(b), "{a:?} and {b:?} have buckets of their own");
    }
    assert_eq!(entity(&[("files", "files/a.pdf")]), ["files:files_2F_2A"]);

    let store = MemoryStore::new();
    let codes: Vec<_> = ["files/a", "files/b", "files/c"]
        .into_iter()
        .map(|v| decide(&config, &store, &request(&[&[("files", v)]]), Modes::default()).overall)
        .collect();
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit], "two per minute for every files/* value together");
    let codes: Vec<_> = ["files/a", "files/b", "files/c"]
        .into_iter()
        .map(|v| decide(&config, &store, &request(&[&[("own", v)]]), Modes::default()).overall)
        .collect();
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::Ok], "two per minute for each own value");
}

#[test]
fn rule_labels_are_the_reference_stats_keys() {
    let config = config();
    let label = |entries: &[(&str, &str)]| {
        let decision = decide(&config, &MemoryStore::new(), &request(&[entries]), Modes::default());
        let status = decision.statuses.into_iter().next().unwrap();
        (status.rule.as_deref().map(str::to_owned), status.values_label)
    };
    let cases: [(Entries<'_>, &str, Option<&str>); 6] = [
        // share_threshold + value_to_metric: the pattern (so the config's path, no values).
        (&[("route", "api/v1"), ("method", "GET")], "route=api%2F*/method", None),
        // share_threshold + detailed_metric: the pattern, then the request's value.
        (&[("service", "svc/a"), ("endpoint", "get")], "service=svc%2F*/endpoint", Some("service_svc/*.endpoint_get")),
        // value_to_metric on a key-only node and on a pattern: the request's values.
        (&[("user", "alice"), ("ver", "v12")], "user/ver=v*", Some("user_alice.ver_v12")),
        (&[("files", "files/a")], "files=files%2F*", None),
        (&[("path", "path/foo"), ("file", "file/d"), ("type", "pdf")], "path=path%2F*/file=file%2F*/type", None),
        (&[("regular", "ok")], "regular=ok", None),
    ];
    for (entries, rule, values) in cases {
        assert_eq!(label(entries), (Some(rule.to_owned()), values.map(str::to_owned)), "{entries:?}");
    }
}

#[test]
fn metadata_is_reported_on_the_rule_statuses() {
    let config = config();
    let decision =
        decide(&config, &MemoryStore::new(), &request(&[&[("quota", "ok")], &[("regular", "ok")]]), Modes::default());
    let metadata = decision.statuses[0].metadata.as_deref().expect("metadata");
    assert_eq!(
        serde_json::Value::Object(metadata.clone()),
        serde_json::json!({"plan": {"tier": "free", "owner": "a"}, "note": "first"})
    );
    assert_eq!(decision.statuses[1].metadata, None);
}

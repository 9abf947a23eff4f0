//! Descriptor lookup: nesting, wildcards, precedence, depth, defaults, unlimited, units,
//! `burst` and `namespace` extensions, refill.

use std::time::Duration;
use zael_tests::scenarios::matching::CONFIG as NESTED;
use zael_tests::*;

#[tokio::test]
async fn nested_descriptors_apply_the_limit_at_the_last_entry_only() {
    scenarios::matching::nested_descriptors_apply_the_limit_at_the_last_entry_only(
        &Server::with_config(scenarios::matching::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn depth_mismatch_gets_no_limit_and_charges_nothing() {
    scenarios::matching::depth_mismatch_gets_no_limit_and_charges_nothing(
        &Server::with_config(scenarios::matching::CONFIG).await,
    )
    .await;
}

const WILD: &str = r#"
domain: wild
descriptors:
  - key: path
    value: "/api/*"
    rate_limit: {unit: minute, requests_per_unit: 10, name: api-prefix}
  - key: path
    value: "*.png"
    rate_limit: {unit: minute, requests_per_unit: 20, name: png-suffix}
  - key: path
    value: "/v*/users/*/items"
    rate_limit: {unit: minute, requests_per_unit: 30, name: middle}
  - key: tenant
    value: "t-*"
    descriptors:
      - key: user
        value: "*-admin"
        rate_limit: {unit: hour, requests_per_unit: 40, name: nested-wild}
"#;

#[tokio::test]
async fn wildcards_match_anywhere_in_the_value_and_in_nested_levels() {
    let s = Server::with_config(WILD).await;
    let cases: Vec<(&[(&str, &str)], Expect)> = vec![
        (&[("path", "/api/x")], ok(10, Unit::Minute, "api-prefix", 9)),
        // `*` matches zero characters.
        (&[("path", "/api/")], ok(10, Unit::Minute, "api-prefix", 9)),
        (&[("path", "/img/logo.png")], ok(20, Unit::Minute, "png-suffix", 19)),
        (&[("path", "/v2/users/42/items")], ok(30, Unit::Minute, "middle", 29)),
        // Both `/api/*` and `*.png` match: the first wildcard in file order wins.
        (&[("path", "/api/x.png")], ok(10, Unit::Minute, "api-prefix", 9)),
        (&[("tenant", "t-1"), ("user", "bob-admin")], ok(40, Unit::Hour, "nested-wild", 39)),
        // Non-matches.
        (&[("path", "/v2/users/42/items/extra")], no_limit()),
        (&[("path", "/api")], no_limit()),
        (&[("path", "/API/x")], no_limit()), // case-sensitive
        (&[("tenant", "t-1"), ("user", "bob")], no_limit()),
        (&[("tenant", "x-1"), ("user", "bob-admin")], no_limit()),
    ];
    for (entries, want) in cases {
        let r = s.should(req("wild", vec![desc(entries)])).await;
        assert_response(&r, Code::Ok, std::slice::from_ref(&want));
    }
    // Each request value has its own bucket under a wildcard rule.
    let r = s.should(req("wild", vec![desc(&[("path", "/api/x")])])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "api-prefix", 8)]);
    let r = s.should(req("wild", vec![desc(&[("path", "/api/y")])])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "api-prefix", 9)]);
}

const PRECEDENCE: &str = r#"
domain: prec
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 4, name: default}
  - key: k
    value: "e*"
    rate_limit: {unit: minute, requests_per_unit: 3, name: wild-e}
  - key: k
    value: "ex*"
    rate_limit: {unit: minute, requests_per_unit: 2, name: wild-ex}
  - key: k
    value: exact
    rate_limit: {unit: minute, requests_per_unit: 1, name: exact}
"#;

const PRECEDENCE_REORDERED: &str = r#"
domain: prec
descriptors:
  - key: k
    value: "ex*"
    rate_limit: {unit: minute, requests_per_unit: 2, name: wild-ex}
  - key: k
    value: "e*"
    rate_limit: {unit: minute, requests_per_unit: 3, name: wild-e}
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 4, name: default}
"#;

#[tokio::test]
async fn precedence_is_exact_then_first_wildcard_in_file_order_then_default() {
    let s = Server::with_config(PRECEDENCE).await;
    let r = s
        .should(req(
            "prec",
            vec![
                desc(&[("k", "exact")]),
                desc(&[("k", "exa")]),
                desc(&[("k", "eb")]),
                desc(&[("k", "zzz")]),
                desc(&[("k", "")]),
            ],
        ))
        .await;
    assert_response(
        &r,
        Code::Ok,
        &[
            ok(1, Unit::Minute, "exact", 0),
            // `e*` comes before `ex*` in the file.
            ok(3, Unit::Minute, "wild-e", 2),
            ok(3, Unit::Minute, "wild-e", 2),
            ok(4, Unit::Minute, "default", 3),
            // An empty value matches the default node.
            ok(4, Unit::Minute, "default", 3),
        ],
    );

    let s = Server::with_config(PRECEDENCE_REORDERED).await;
    let r = s.should(req("prec", vec![desc(&[("k", "exa")]), desc(&[("k", "eb")]), desc(&[("k", "zzz")])])).await;
    assert_response(
        &r,
        Code::Ok,
        &[ok(2, Unit::Minute, "wild-ex", 1), ok(3, Unit::Minute, "wild-e", 2), ok(4, Unit::Minute, "default", 3)],
    );
}

#[tokio::test]
async fn default_node_keeps_one_bucket_per_request_value() {
    let s = Server::with_config(PRECEDENCE).await;
    for remaining in [3, 2, 1, 0] {
        let r = s.should(req("prec", vec![desc(&[("k", "alpha")])])).await;
        assert_response(&r, Code::Ok, &[ok(4, Unit::Minute, "default", remaining)]);
    }
    let r = s.should(req("prec", vec![desc(&[("k", "alpha")])])).await;
    assert_response(&r, Code::OverLimit, &[over(4, Unit::Minute, "default")]);
    let r = s.should(req("prec", vec![desc(&[("k", "beta")])])).await;
    assert_response(&r, Code::Ok, &[ok(4, Unit::Minute, "default", 3)]);
}

#[tokio::test]
async fn unknown_domain_unknown_key_and_entry_less_descriptor_get_no_limit() {
    scenarios::matching::unknown_domain_unknown_key_and_entry_less_descriptor_get_no_limit(
        &Server::with_config(scenarios::matching::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn unlimited_rule_reports_u32_max_and_never_runs_out() {
    scenarios::unlimited::unlimited_rule_reports_u32_max_and_never_runs_out(
        &Server::with_config(scenarios::unlimited::CONFIG).await,
    )
    .await;
}

const UNITS: &str = r#"
domain: units
descriptors:
  - {key: u, value: second, rate_limit: {unit: second, requests_per_unit: 10}}
  - {key: u, value: minute, rate_limit: {unit: minute, requests_per_unit: 10}}
  - {key: u, value: hour, rate_limit: {unit: hour, requests_per_unit: 10}}
  - {key: u, value: day, rate_limit: {unit: day, requests_per_unit: 10}}
  - {key: u, value: week, rate_limit: {unit: week, requests_per_unit: 10}}
  - {key: u, value: month, rate_limit: {unit: month, requests_per_unit: 10}}
  - {key: u, value: year, rate_limit: {unit: year, requests_per_unit: 10}}
  - {key: u, value: upper, rate_limit: {unit: MINUTE, requests_per_unit: 10}}
"#;

#[tokio::test]
async fn all_seven_units_report_their_unit_and_token_bucket_reset() {
    let s = Server::with_config(UNITS).await;
    let cases = [
        ("second", Unit::Second),
        ("minute", Unit::Minute),
        ("hour", Unit::Hour),
        ("day", Unit::Day),
        ("week", Unit::Week),
        ("month", Unit::Month),
        ("year", Unit::Year),
        ("upper", Unit::Minute),
    ];
    for (value, unit) in cases {
        let r = s.should(req("units", vec![desc(&[("u", value)])])).await;
        // One token of ten used: full again after a tenth of the unit (ceil, at least 1 s);
        // a little refill may already have happened, so allow one second less.
        let full_after = (unit_secs(unit) + 9) / 10;
        let lo = (full_after - 1).max(1);
        assert_response(&r, Code::Ok, &[ok(10, unit, "", 9).reset(lo..=full_after.max(1))]);
    }
}

#[tokio::test]
async fn burst_extension_sets_the_bucket_capacity() {
    let s = Server::with_config(
        r#"
domain: burst
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 2, burst: 5, name: bursty}
"#,
    )
    .await;
    // Refill 2 per minute: each missing token takes 30 s, so the time until the bucket is
    // full again grows past the unit (the reset reports the truth, see the README).
    for (remaining, full_in) in [(4, 30), (3, 60), (2, 90), (1, 120), (0, 150)] {
        let r = s.should(req("burst", vec![desc(&[("k", "a")])])).await;
        assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "bursty", remaining).reset(full_in - 1..=full_in)]);
    }
    let r = s.should(req("burst", vec![desc(&[("k", "a")])])).await;
    // Refill 2 per minute: one token in 30 s.
    assert_response(&r, Code::OverLimit, &[over(2, Unit::Minute, "bursty").reset(29..=30)]);
}

#[tokio::test]
async fn namespace_extension_is_accepted_and_domain_unchanged() {
    let s = Server::with_config(
        r#"
namespace: team-a
domain: ns
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 3}
"#,
    )
    .await;
    let r = s.should(req("ns", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(3, Unit::Minute, "", 2)]);
    let r = s.should(req("team-a", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
}

#[tokio::test]
async fn tokens_refill_continuously() {
    let s = Server::with_config(
        r#"
domain: refill
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 2}
"#,
    )
    .await;
    let d = || req("refill", vec![desc(&[("k", "a")])]);
    let t0 = std::time::Instant::now();
    let r = s.should(d()).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Second, "", 1)]);
    let r = s.should(d()).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Second, "", 0)]);
    let r = s.should(d()).await;
    assert_response(&r, Code::OverLimit, &[over(2, Unit::Second, "")]);
    // 2 tokens per second: after 0.6 s at least one token is back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = s.should(d()).await;
    // Since the first call at most `elapsed` passed, so at most 2*elapsed tokens came back;
    // below 1 s that leaves 0 after this hit (on a very slow machine, allow 1).
    let max_remaining = if t0.elapsed() < Duration::from_millis(950) { 0 } else { 1 };
    let remaining = r.statuses.first().map_or(0, |st| st.limit_remaining);
    assert!(remaining <= max_remaining, "{}", describe(&r));
    assert_response(&r, Code::Ok, &[ok(2, Unit::Second, "", remaining)]);
    // After 1.2 s more the bucket is full again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = s.should(d()).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Second, "", 1)]);
}

#[tokio::test]
async fn several_domain_files_load_side_by_side() {
    let s = Server::builder().file("nest.yaml", NESTED).file("wild.yml", WILD).start().await;
    let r = s.should(req("nest", vec![desc(&[("org", "other")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "any-org", 1)]);
    let r = s.should(req("wild", vec![desc(&[("path", "/api/z")])])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "api-prefix", 9)]);
}

#[tokio::test]
async fn config_path_may_be_a_single_yaml_file() {
    let s = Server::builder()
        .file("only.yaml", NESTED)
        .file("ignored.yaml", WILD)
        .config_is_file("only.yaml")
        .start()
        .await;
    let r = s.should(req("nest", vec![desc(&[("org", "other")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "any-org", 1)]);
    // Only the named file is loaded.
    let r = s.should(req("wild", vec![desc(&[("path", "/api/z")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
}

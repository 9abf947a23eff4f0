//! Charging: hits_addend forms, strict vs debt, same bucket twice, blocklist, shadow modes,
//! replaces, overrides, independence of descriptors, reset times, concurrency.

use std::collections::BTreeSet;
use std::sync::Arc;
use zael_tests::scenarios::overrides::CONFIG as OVERRIDE;
use zael_tests::*;

#[tokio::test]
async fn request_level_hits_addend_zero_counts_as_one() {
    scenarios::charging::request_level_hits_addend_zero_counts_as_one(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn request_level_hits_addend_applies_to_every_descriptor() {
    scenarios::charging::request_level_hits_addend_applies_to_every_descriptor(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn descriptor_hits_addend_zero_is_check_only() {
    scenarios::charging::descriptor_hits_addend_zero_is_check_only(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn descriptor_hits_addend_overrides_request_level() {
    scenarios::charging::descriptor_hits_addend_overrides_request_level(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn rejected_charge_consumes_nothing_on_strict_rules() {
    scenarios::charging::rejected_charge_consumes_nothing_on_strict_rules(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn allow_debt_debit_past_the_balance_drives_it_negative_so_check_only_fails() {
    scenarios::charging::allow_debt_debit_past_the_balance_drives_it_negative_so_check_only_fails(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn strict_rule_drops_a_debit_past_the_balance() {
    scenarios::charging::strict_rule_drops_a_debit_past_the_balance(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn same_bucket_twice_in_one_request_is_charged_sequentially() {
    scenarios::charging::same_bucket_twice_in_one_request_is_charged_sequentially(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn blocklist_requests_per_unit_zero_is_always_over_limit() {
    scenarios::charging::blocklist_requests_per_unit_zero_is_always_over_limit(
        &Server::with_config(scenarios::charging::CONFIG).await,
    )
    .await;
}

const SHADOW: &str = r#"
domain: shadow
descriptors:
  - key: sh
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, name: shadowed}
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 1, name: enforced}
"#;

#[tokio::test]
async fn shadow_mode_rule_reports_ok_when_over() {
    let s = Server::with_config(SHADOW).await;
    let r = s.should(req("shadow", vec![desc(&[("sh", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "shadowed", 0)]);
    let r = s.should(req("shadow", vec![desc(&[("sh", "a")])])).await;
    assert_response(&r, Code::Ok, &[shadowed(1, Unit::Minute, "shadowed")]);
    // Mixed with an enforced rule that is over: overall OVER_LIMIT, the shadow one still OK.
    let r = s.should(req("shadow", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "enforced", 0)]);
    let r = s.should(req("shadow", vec![desc(&[("sh", "a")]), desc(&[("k", "a")])])).await;
    assert_response(&r, Code::OverLimit, &[shadowed(1, Unit::Minute, "shadowed"), over(1, Unit::Minute, "enforced")]);
}

#[tokio::test]
async fn global_shadow_mode_keeps_statuses_over_limit_and_overall_ok() {
    let s = Server::builder().file("shadow.yaml", SHADOW).arg("--shadow-mode").start().await;
    let r = s.should(req("shadow", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "enforced", 0)]);
    let r = s.should(req("shadow", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[over(1, Unit::Minute, "enforced")]);
    let r = s.should(req("shadow", vec![desc(&[("k", "a")]), desc(&[("sh", "b")]), desc(&[("sh", "b")])])).await;
    assert_response(
        &r,
        Code::Ok,
        &[over(1, Unit::Minute, "enforced"), ok(1, Unit::Minute, "shadowed", 0), shadowed(1, Unit::Minute, "shadowed")],
    );
}

const REPLACES: &str = r#"
domain: repl
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2, name: per-user}
  - key: plan
    value: gold
    rate_limit:
      unit: minute
      requests_per_unit: 100
      name: gold
      replaces:
        - name: per-user
        - name: per-ip
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 1, name: per-ip}
"#;

#[tokio::test]
async fn replaces_drops_named_limits_without_charging_them() {
    let s = Server::with_config(REPLACES).await;
    for remaining in [99, 98, 97] {
        let r =
            s.should(req("repl", vec![desc(&[("user", "u")]), desc(&[("plan", "gold")]), desc(&[("ip", "i")])])).await;
        assert_response(&r, Code::Ok, &[no_limit(), ok(100, Unit::Minute, "gold", remaining), no_limit()]);
    }
    // Replaced limits were not charged.
    let r = s.should(req("repl", vec![desc(&[("user", "u")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "per-user", 1)]);
    let r = s.should(req("repl", vec![desc(&[("ip", "i")])])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "per-ip", 0)]);
    // The replacing limit may come after the replaced one... or before.
    let r = s.should(req("repl", vec![desc(&[("plan", "gold")]), desc(&[("ip", "i")])])).await;
    assert_response(&r, Code::Ok, &[ok(100, Unit::Minute, "gold", 96), no_limit()]);
}

#[tokio::test]
async fn override_limit_applies_when_the_domain_exists() {
    scenarios::overrides::override_limit_applies_when_the_domain_exists(
        &Server::with_config(scenarios::overrides::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn override_shares_the_bucket_of_the_config_limit_on_same_entries_and_unit() {
    scenarios::overrides::override_shares_the_bucket_of_the_config_limit_on_same_entries_and_unit(
        &Server::with_config(scenarios::overrides::CONFIG).await,
    )
    .await;
}

#[tokio::test]
async fn override_with_unknown_unit_is_invalid_argument() {
    let s = Server::with_config(OVERRIDE).await;
    let err = s
        .call(req("ovr", vec![desc(&[("k", "a")]).limit(5, RateLimitUnit::Unknown)]))
        .await
        .expect_err("override with UNKNOWN unit must be rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(mentions_any(err.message(), &["unit"]), "message should name the unit: {:?}", err.message());
}

#[tokio::test]
async fn descriptors_are_charged_independently() {
    scenarios::charging::descriptors_are_charged_independently(&Server::with_config(scenarios::charging::CONFIG).await)
        .await;
}

#[tokio::test]
async fn reset_is_time_until_full_when_ok_and_until_the_cost_is_available_when_over() {
    let s = Server::with_config(
        r#"
domain: reset
descriptors:
  - key: fast
    rate_limit: {unit: minute, requests_per_unit: 60}
  - key: slow
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: debt
    allow_debt: true
    rate_limit: {unit: minute, requests_per_unit: 10}
"#,
    )
    .await;
    // 60/min = 1 token/s.
    let r = s.should(req("reset", vec![desc(&[("fast", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(60, Unit::Minute, "", 59).reset(1..=1)]);
    let r = s.should(req("reset", vec![desc(&[("fast", "a")]).hits(11)])).await;
    assert_response(&r, Code::Ok, &[ok(60, Unit::Minute, "", 48).reset(11..=12)]);

    // 10/min = one token per 6 s.
    let r = s.should(req("reset", vec![desc(&[("slow", "a")]).hits(10)])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "", 0).reset(59..=60)]);
    let r = s.should(req("reset", vec![desc(&[("slow", "a")])])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "").reset(5..=6)]);
    let r = s.should(req("reset", vec![desc(&[("slow", "a")]).hits(4)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "").reset(23..=24)]);
    // A cost above the capacity can never pass: the whole unit.
    let r = s.should(req("reset", vec![desc(&[("slow", "b")]).hits(11)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "").reset(60..=60)]);
    // In debt: a check-only call reports the time until the balance is back to 0.
    let r = s.should(req("reset", vec![desc(&[("debt", "a")]).hits(10)])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "", 0)]);
    let r = s.should(req("reset", vec![desc(&[("debt", "a")]).hits(5)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "")]);
    let r = s.should(req("reset", vec![desc(&[("debt", "a")]).hits(0)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "").reset(29..=30)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_clients_get_exactly_the_capacity() {
    let s = Server::with_config(
        r#"
domain: conc
descriptors:
  - key: k
    rate_limit: {unit: day, requests_per_unit: 100, name: daily}
"#,
    )
    .await;
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = s.rls();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut out = Vec::new();
            for _ in 0..25 {
                let r =
                    client.should_rate_limit(req("conc", vec![desc(&[("k", "shared")])])).await.map(|r| r.into_inner());
                out.push(r);
            }
            out
        }));
    }
    let mut ok_remaining = Vec::new();
    let mut over_count = 0;
    let mut errors = Vec::new();
    for t in tasks {
        for r in t.await.expect("task") {
            match r {
                Ok(resp) if resp.overall_code == Code::Ok as i32 => {
                    assert_response(&resp, Code::Ok, &[ok(100, Unit::Day, "daily", resp.statuses[0].limit_remaining)]);
                    ok_remaining.push(resp.statuses[0].limit_remaining);
                }
                Ok(resp) => {
                    assert_response(&resp, Code::OverLimit, &[over(100, Unit::Day, "daily")]);
                    over_count += 1;
                }
                Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    }
    assert!(errors.is_empty(), "gRPC errors: {errors:?}");
    assert_eq!(ok_remaining.len(), 100, "OK responses");
    assert_eq!(over_count, 300, "OVER_LIMIT responses");
    // Every token was handed out exactly once: remaining values 99..0, each seen once.
    let distinct: BTreeSet<u32> = ok_remaining.iter().copied().collect();
    assert_eq!(distinct, (0..100).collect::<BTreeSet<u32>>());
}

#[tokio::test]
async fn debt_is_floored_at_minus_the_capacity() {
    let s = Server::with_config(
        r#"
domain: floor
descriptors:
  - key: d
    allow_debt: true
    rate_limit: {unit: second, requests_per_unit: 10}
"#,
    )
    .await;
    let r = s.should(req("floor", vec![desc(&[("d", "a")]).hits(100)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Second, "")]);
    let r = s.should(req("floor", vec![desc(&[("d", "a")]).hits(0)])).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Second, "")]);
    // Floored at -10, 10 tokens/s: back above 0 after ~1 s (unfloored -90 would need 9 s).
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = s.should(req("floor", vec![desc(&[("d", "a")]).hits(0)])).await;
    assert_eq!(r.overall_code, Code::Ok as i32, "{}", describe(&r));
}

#[tokio::test]
async fn extreme_costs_and_limits_do_not_overflow() {
    let s = Server::with_config(
        r#"
domain: big
descriptors:
  - key: max
    rate_limit: {unit: second, requests_per_unit: 4294967295}
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: debt
    allow_debt: true
    rate_limit: {unit: minute, requests_per_unit: 10}
"#,
    )
    .await;
    let r = s.should(req("big", vec![desc(&[("max", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(u32::MAX, Unit::Second, "", u32::MAX - 1).reset(1..=1)]);
    for cost in [u64::from(u32::MAX) + 1, u64::MAX / 2, u64::MAX] {
        let r = s.should(req("big", vec![desc(&[("small", "a")]).hits(cost)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "")]);
        let r = s.should(req("big", vec![desc(&[("debt", "a")]).hits(cost)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "")]);
    }
    // Strict: nothing was taken.
    let r = s.should(req("big", vec![desc(&[("small", "a")]).hits(0)])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "", 10)]);
    let r = s.should(req("big", vec![desc(&[("small", "b")])]).hits(u32::MAX)).await;
    assert_response(&r, Code::OverLimit, &[over(10, Unit::Minute, "")]);
    let logs = s.logs();
    assert!(!logs.contains("panicked"), "server panicked:\n{logs}");
}

#[tokio::test]
async fn override_is_never_shadowed_and_never_replaced() {
    let s = Server::with_config(
        r#"
domain: ovs
descriptors:
  - key: sh
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, name: sh}
  - key: boss
    rate_limit: {unit: minute, requests_per_unit: 100, name: boss, replaces: [{name: sh}]}
"#,
    )
    .await;
    let d = || desc(&[("sh", "a")]).limit(1, RateLimitUnit::Minute);
    let r = s.should(req("ovs", vec![d()])).await;
    assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "", 0)]);
    // The matched rule is in shadow mode, but the override is enforced.
    let r = s.should(req("ovs", vec![d()])).await;
    assert_response(&r, Code::OverLimit, &[over(1, Unit::Minute, "")]);
    // `replaces: sh` does not drop the override (it has no name).
    let r = s.should(req("ovs", vec![desc(&[("boss", "x")]), d()])).await;
    assert_response(&r, Code::OverLimit, &[ok(100, Unit::Minute, "boss", 99), over(1, Unit::Minute, "")]);
}

//! End to end with a real Envoy (reference §5.1) in front of zael-server.
//!
//! Needs the Envoy binary: `$ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`. Without it these
//! tests FAIL (they are not skipped); `scripts/test` installs and exports it.

use serde_json::json;
use std::time::Duration;
use zael_tests::envoy::{Envoy, EnvoyPorts, EnvoyRateLimitSetup, bootstrap};
use zael_tests::*;

/// Parse an Envoy stats line `name: value` from admin `/stats`.
fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k.trim() == name).then(|| v.trim().parse().ok())?
    })
}

#[track_caller]
fn assert_reset_header(r: &HttpReply, max: i64) {
    let reset: i64 = r
        .header("x-ratelimit-reset")
        .unwrap_or_else(|| panic!("no x-ratelimit-reset: {:?}", r.headers))
        .parse()
        .expect("numeric x-ratelimit-reset");
    assert!((1..=max).contains(&reset), "x-ratelimit-reset {reset} not in 1..={max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_route_descriptors_with_x_ratelimit_headers_and_fails_closed() {
    let mut s = Server::with_config(
        r#"
domain: e2e
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-user}
"#,
    )
    .await;
    let ports = EnvoyPorts::allocate();
    let cfg = bootstrap(
        ports,
        &EnvoyRateLimitSetup {
            domain: "e2e".into(),
            rls: s.grpc_addr,
            filter_rate_limits: serde_json::Value::Null,
            route_rate_limits: json!([{"actions": [
                {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}
            ]}]),
            timeout: "2s",
        },
    );
    let envoy = Envoy::start(ports, &cfg).await;
    let limit_header = "3, 3;w=60;name=\"per-user\"";

    for remaining in ["2", "1", "0"] {
        let r = envoy.get("/", &[("x-user", "alice")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "ok\n");
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some(limit_header));
        assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some(remaining));
        assert_reset_header(&r, 60);
        assert_eq!(r.header("x-envoy-ratelimited"), None);
    }
    let r = envoy.get("/", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some(limit_header));
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_reset_header(&r, 60);

    // Another user has their own bucket.
    let r = envoy.get("/", &[("x-user", "bob")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("2"));

    // No x-user header: no descriptor, no call, no headers.
    let r = envoy.get("/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), None);

    // Envoy's own counters agree: 4 OK answers, 1 over limit, no errors.
    let stats = envoy.admin("/stats").await.body;
    assert_eq!(stat(&stats, "cluster.upstream.ratelimit.ok"), Some(4), "stats:\n{stats}");
    assert_eq!(stat(&stats, "cluster.upstream.ratelimit.over_limit"), Some(1), "stats:\n{stats}");
    assert_eq!(stat(&stats, "cluster.upstream.ratelimit.error").unwrap_or(0), 0, "stats:\n{stats}");

    // Server gone: failure_mode_deny turns every limited request into a 500.
    s.kill();
    let mut last = None;
    for _ in 0..50 {
        let r = envoy.get("/", &[("x-user", "carol")]).await;
        let done = r.status == 500;
        last = Some(r);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.unwrap();
    assert_eq!(last.status, 500, "after killing zael-server: {last:?}");
    let r = envoy.get("/", &[("x-user", "dave")]).await;
    assert_eq!(r.status, 500, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_check_then_debit_with_allow_debt_blocks_after_the_balance_goes_negative() {
    let s = Server::with_config(
        r#"
domain: e2e-debit
descriptors:
  - key: user
    allow_debt: true
    rate_limit: {unit: hour, requests_per_unit: 10, name: tokens}
"#,
    )
    .await;
    let ports = EnvoyPorts::allocate();
    let cfg = bootstrap(
        ports,
        &EnvoyRateLimitSetup {
            domain: "e2e-debit".into(),
            rls: s.grpc_addr,
            filter_rate_limits: json!([
                {
                    "actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}],
                    "hits_addend": {"number": 0}
                },
                {
                    "actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}],
                    "hits_addend": {"format": "%REQ(x-cost)%"},
                    "apply_on_stream_done": true
                }
            ]),
            route_rate_limits: serde_json::Value::Null,
            timeout: "2s",
        },
    );
    let envoy = Envoy::start(ports, &cfg).await;
    let limit_header = "10, 10;w=3600;name=\"tokens\"";

    // Request-time check sees the balance before the debit: 10, 6, 2.
    for (remaining_at_check, balance_after) in [(10, Some(6)), (6, Some(2)), (2, None)] {
        let r = envoy.get("/", &[("x-user", "u1"), ("x-cost", "4")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some(limit_header));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining_at_check.to_string()));
        let landed = wait_balance(&s, "u1", balance_after).await;
        match balance_after {
            Some(n) => assert_response(&landed, Code::Ok, &[ok(10, Unit::Hour, "tokens", n)]),
            // 2 - 4 = -2: in debt, a check-only call fails until the balance is back to 0.
            None => assert_response(&landed, Code::OverLimit, &[over(10, Unit::Hour, "tokens")]),
        }
    }
    // In debt: the request-time check fails.
    let r = envoy.get("/", &[("x-user", "u1"), ("x-cost", "1")]).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_reset_header(&r, 3600);
    // Another user is unaffected.
    let r = envoy.get("/", &[("x-user", "u2"), ("x-cost", "1")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("10"));
}

/// Wait (at most 10 s) until the stream-end debit has landed: a check-only probe straight to
/// the server (which changes nothing) shows balance `want` (`None` = negative, OVER_LIMIT).
async fn wait_balance(s: &Server, user: &str, want: Option<u32>) -> RateLimitResponse {
    let probe = || req("e2e-debit", vec![desc(&[("user", user)]).hits(0)]);
    let matches = |r: &RateLimitResponse| {
        let st = &r.statuses[0];
        match want {
            Some(n) => st.code == Code::Ok as i32 && st.limit_remaining == n,
            None => st.code == Code::OverLimit as i32,
        }
    };
    let got = poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        let r = s.should(probe()).await;
        matches(&r).then_some(r)
    })
    .await;
    match got {
        Some(r) => r,
        None => {
            let last = s.should(probe()).await;
            panic!("balance of {user} never reached {want:?}; last probe:\n{}", describe(&last))
        }
    }
}

/// The examples users copy must stay valid: Envoy accepts `examples/envoy/envoy.yaml`, and
/// zael-server accepts `examples/config` and `examples/entities`.
#[test]
fn the_example_configs_are_valid() {
    let root = workspace_root();
    let out = std::process::Command::new(zael_tests::envoy::envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(root.join("examples/envoy/envoy.yaml"))
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "envoy rejected examples/envoy/envoy.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let args = ["--validate".into(), "--config".into(), root.join("examples/config").into_os_string()];
    let out = zael_tests::server::run_to_completion(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "zael-server rejected examples/config:\n{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: valid (1 domain)", root.join("examples/config").display())
    );
    let args = ["--validate".into(), "--config".into(), root.join("examples/entities").into_os_string()];
    let out = zael_tests::server::run_to_completion(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "zael-server rejected examples/entities:\n{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: valid (1 domain)", root.join("examples/entities").display())
    );
}

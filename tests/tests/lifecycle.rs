//! Process lifecycle: hot reload, `--validate`, SIGTERM drain, env-var flags, log format,
//! start-up without a valid config.

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use zael_tests::server::run_to_completion;
use zael_tests::*;

fn config_v(rpu: u32, name: &str) -> String {
    format!(
        "domain: reload\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: {rpu}, name: {name}}}\n"
    )
}

/// The name of the limit that currently applies to a fresh value of `k`, if any.
async fn current_name(s: &Server) -> Option<String> {
    let r = s.should(req("reload", vec![desc(&[("k", &unique("probe"))]).hits(0)])).await;
    r.statuses[0].current_limit.as_ref().map(|l| l.name.clone())
}

#[tokio::test]
async fn reload_applies_a_good_file_and_keeps_the_last_good_config_on_a_bad_file() {
    let s = Server::builder().file("reload.yaml", &config_v(2, "v1")).start().await;
    let r = s.should(req("reload", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "v1", 1)]);
    let m0 = s.metrics().await;
    let success0 = m0.get_or_zero("zael_config_loads_total", &[("result", "success")]);
    assert_eq!(m0.get_or_zero("zael_config_loads_total", &[("result", "error")]), 0.0);

    // Good change.
    s.write_config("reload.yaml", &config_v(5, "v2"));
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        (current_name(&s).await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    assert!(seen.is_some(), "new config not applied within 10 s");
    let r = s.should(req("reload", vec![desc(&[("k", "b")])])).await;
    assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "v2", 4)]);
    let m1 = s.metrics().await;
    assert!(
        m1.get_or_zero("zael_config_loads_total", &[("result", "success")]) > success0,
        "success counter did not grow\n{}",
        m1.text
    );

    // Bad file next to it: the load fails, v2 keeps serving.
    s.write_config(
        "broken.yaml",
        "domain: broken\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    let errors = poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        let m = s.metrics().await;
        let e = m.get_or_zero("zael_config_loads_total", &[("result", "error")]);
        (e >= 1.0).then_some(e)
    })
    .await;
    assert!(errors.is_some(), "config error not counted within 10 s");
    // Let any further (duplicate) reload happen before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m2 = s.metrics().await;
    assert_eq!(
        m2.get_or_zero("zael_config_loads_total", &[("result", "error")]),
        1.0,
        "exactly one failed load for one bad file\n{}",
        m2.text
    );
    assert_eq!(current_name(&s).await.as_deref(), Some("v2"));
    let r = s.should(req("reload", vec![desc(&[("k", "b")])])).await;
    assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "v2", 3)]);
    let h = s.http_get("/healthcheck").await.unwrap();
    assert_eq!(h.status, 200, "still healthy after a bad reload");
}

#[tokio::test]
async fn reload_picks_up_added_and_removed_domain_files() {
    let s = Server::builder().file("reload.yaml", &config_v(2, "v1")).start().await;
    let extra = "domain: extra\ndescriptors:\n  - key: x\n    rate_limit: {unit: hour, requests_per_unit: 9}\n";
    s.write_config("extra.yaml", extra);
    let probe = || async {
        let r = s.should(req("extra", vec![desc(&[("x", &unique("p"))]).hits(0)])).await;
        r.statuses[0].current_limit.is_some()
    };
    let added =
        poll_until(Duration::from_secs(10), Duration::from_millis(100), || async { probe().await.then_some(()) }).await;
    assert!(added.is_some(), "added domain file not loaded within 10 s");
    let r = s.should(req("extra", vec![desc(&[("x", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(9, Unit::Hour, "", 8)]);

    s.remove_config("extra.yaml");
    let removed =
        poll_until(Duration::from_secs(10), Duration::from_millis(100), || async { (!probe().await).then_some(()) })
            .await;
    assert!(removed.is_some(), "removed domain still served after 10 s");
    let r = s.should(req("extra", vec![desc(&[("x", "a")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
    // The other domain is untouched.
    assert_eq!(current_name(&s).await.as_deref(), Some("v1"));
}

fn validate(path: &std::path::Path) -> (i32, String) {
    let out = run_to_completion(
        &[OsString::from("--config"), path.as_os_str().to_owned(), OsString::from("--validate")],
        Duration::from_secs(15),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (n, c) in files {
        std::fs::write(d.path().join(n), c).unwrap();
    }
    d
}

const GOOD_A: &str = "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";
const GOOD_B: &str = "domain: b\ndescriptors:\n  - key: k\n    value: v\n    descriptors:\n      - key: j\n        rate_limit: {unit: day, requests_per_unit: 10, name: n}\n";

#[test]
fn validate_exits_zero_for_a_valid_config() {
    let d = dir_with(&[("a.yaml", GOOD_A), ("b.yaml", GOOD_B)]);
    let (code, out) = validate(d.path());
    assert_eq!(code, 0, "output:\n{out}");
    let (code, out) = validate(&d.path().join("a.yaml"));
    assert_eq!(code, 0, "single file; output:\n{out}");
}

#[test]
fn validate_exits_one_and_names_every_bad_file() {
    let d = dir_with(&[
        ("good.yaml", GOOD_A),
        (
            "bad-unit.yaml",
            "domain: u\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        ),
        ("no-domain.yaml", "descriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n"),
    ]);
    let (code, out) = validate(d.path());
    assert_eq!(code, 1, "output:\n{out}");
    assert!(out.contains("bad-unit.yaml"), "output names bad-unit.yaml:\n{out}");
    assert!(out.contains("no-domain.yaml"), "output names no-domain.yaml:\n{out}");
    assert!(!out.contains("good.yaml:"), "output should not blame good.yaml:\n{out}");
    let (code, out) = validate(&d.path().join("bad-unit.yaml"));
    assert_eq!(code, 1, "single bad file; output:\n{out}");
    assert!(out.contains("bad-unit.yaml"), "output:\n{out}");
}

#[test]
fn validate_rejects_each_kind_of_load_error() {
    let rl = "rate_limit: {unit: minute, requests_per_unit: 1}";
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "unknown key",
            vec![(
                "x.yaml",
                format!("domain: d\ndescriptors:\n  - key: k\n    bogus: 1\n    {rl}\n"),
            )],
        ),
        (
            "unknown top-level key",
            vec![(
                "x.yaml",
                format!("domain: d\nbogus: 1\ndescriptors:\n  - key: k\n    {rl}\n"),
            )],
        ),
        (
            "missing domain",
            vec![("x.yaml", format!("descriptors:\n  - key: k\n    {rl}\n"))],
        ),
        (
            "empty domain",
            vec![(
                "x.yaml",
                format!("domain: \"\"\ndescriptors:\n  - key: k\n    {rl}\n"),
            )],
        ),
        (
            "same domain in two files",
            vec![
                (
                    "x.yaml",
                    format!("domain: d\ndescriptors:\n  - key: k\n    {rl}\n"),
                ),
                (
                    "y.yaml",
                    format!("domain: d\ndescriptors:\n  - key: j\n    {rl}\n"),
                ),
            ],
        ),
        (
            "empty key",
            vec![(
                "x.yaml",
                format!("domain: d\ndescriptors:\n  - key: \"\"\n    {rl}\n"),
            )],
        ),
        (
            "duplicate key_value at one level",
            vec![(
                "x.yaml",
                format!(
                    "domain: d\ndescriptors:\n  - key: k\n    value: v\n    {rl}\n  - key: k\n    value: v\n    {rl}\n"
                ),
            )],
        ),
        (
            "missing unit",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n"
                    .to_string(),
            )],
        ),
        (
            "unknown unit",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
                    .to_string(),
            )],
        ),
        (
            "unlimited with a unit",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: minute, requests_per_unit: 1}\n"
                    .to_string(),
            )],
        ),
        (
            "replaces with an empty name",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, name: a, replaces: [{name: \"\"}]}\n"
                    .to_string(),
            )],
        ),
        (
            "replaces its own name",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, name: a, replaces: [{name: a}]}\n"
                    .to_string(),
            )],
        ),
        (
            "share_threshold without a wildcard",
            vec![(
                "x.yaml",
                format!(
                    "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n    {rl}\n"
                ),
            )],
        ),
        (
            "list element that is not a map",
            vec![("x.yaml", "domain: d\ndescriptors:\n  - just-a-string\n".to_string())],
        ),
        (
            "negative requests_per_unit",
            vec![(
                "x.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: -1}\n"
                    .to_string(),
            )],
        ),
        (
            "YAML syntax error",
            vec![("x.yaml", "domain: [unclosed\n".to_string())],
        ),
    ];
    let mut failures = Vec::new();
    for (what, files) in &cases {
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let d = dir_with(&refs);
        let (code, out) = validate(d.path());
        if code != 1 {
            failures.push(format!("{what}: exit {code} (want 1); output: {out:?}"));
        } else if !files.iter().any(|(n, _)| out.contains(n)) {
            failures.push(format!("{what}: output does not name the file: {out:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid configs not rejected properly:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn validate_accepts_the_whole_key_whitelist_and_the_extensions() {
    let all = r#"
namespace: team
domain: all-keys
descriptors:
  - key: k
    value: "v*"
    share_threshold: true
    detailed_metric: true
    value_to_metric: true
    quota_mode: false
    shadow_mode: false
    metadata: {team: a, n: 1}
    rate_limit:
      unit: minute
      requests_per_unit: 5
      name: n1
      replaces: [{name: other}]
  - key: k2
    rate_limit: {unlimited: true}
  - key: k3
    allow_debt: true
    rate_limit: {unit: Hour, requests_per_unit: 10, burst: 20}
  - key: k4
    descriptors:
      - key: k5
        value: ""
        rate_limit: {unit: week, requests_per_unit: 0}
  - key: whitelisted
"#;
    let d = dir_with(&[("all.yaml", all)]);
    let (code, out) = validate(d.path());
    assert_eq!(code, 0, "output:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_calls_reports_not_serving_and_exits_zero() {
    // A drain delay long enough for the observer to see NOT_SERVING / 500 while the
    // listeners still serve.
    let mut s = Server::builder()
        .file(
            "drain.yaml",
            "domain: drain\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n",
        )
        .args(["--drain-delay", "1s"])
        .start()
        .await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let oks = Arc::new(AtomicU64::new(0));
    // Offsets (ms since `started`) at which SIGTERM was sent; u64::MAX until then.
    let sigterm_at = Arc::new(AtomicU64::new(u64::MAX));

    // Load: 4 clients, each on its own connection.
    let mut load = Vec::new();
    for w in 0..4 {
        let mut client = RateLimitServiceClient::new(s.new_channel());
        let (stop, oks, sigterm_at) = (stop.clone(), oks.clone(), sigterm_at.clone());
        load.push(tokio::spawn(async move {
            let mut records: Vec<(u64, Result<(), String>)> = Vec::new();
            let mut errors_after_term = 0;
            for i in 0..200_000u64 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                let t0 = started.elapsed().as_millis() as u64;
                let r = client.should_rate_limit(req("drain", vec![desc(&[("k", &format!("w{w}-{}", i % 50))])])).await;
                let rec = match r {
                    Ok(resp) if resp.get_ref().overall_code == Code::Ok as i32 => {
                        oks.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(resp) => Err(format!("unexpected response {:?}", resp.get_ref())),
                    Err(st) => Err(format!("{:?}: {}", st.code(), st.message())),
                };
                if rec.is_err() && t0 >= sigterm_at.load(Ordering::Relaxed) {
                    errors_after_term += 1;
                }
                records.push((t0, rec));
                if errors_after_term >= 3 {
                    break;
                }
            }
            records
        }));
    }

    // Health observer.
    let health_channel = s.new_channel();
    let http_addr = s.http_addr;
    let hstop = stop.clone();
    let health = tokio::spawn(async move {
        let mut client = tonic_health::pb::health_client::HealthClient::new(health_channel);
        let mut seen: Vec<(u64, &'static str, String)> = Vec::new();
        for _ in 0..5_000 {
            if hstop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(45) {
                break;
            }
            let t = started.elapsed().as_millis() as u64;
            let g = client.check(tonic_health::pb::HealthCheckRequest { service: "ratelimit".into() }).await;
            let g = match g {
                Ok(r) => {
                    format!("{:?}", ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
                }
                Err(e) => format!("error {:?}", e.code()),
            };
            seen.push((t, "grpc", g));
            let h = match http_request(http_addr, "GET", "/healthcheck", &[], None).await {
                Ok(r) => format!("{}", r.status),
                Err(_) => "error".to_string(),
            };
            seen.push((started.elapsed().as_millis() as u64, "http", h));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    });

    // Wait for steady load, then SIGTERM.
    let warmed = poll_until(Duration::from_secs(10), Duration::from_millis(20), || async {
        (oks.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    assert!(warmed.is_some(), "load did not get going");
    let t_term = started.elapsed().as_millis() as u64;
    sigterm_at.store(t_term, Ordering::Relaxed);
    s.signal(libc::SIGTERM);

    let status = s.wait_exit(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for l in load {
        records.extend(l.await.expect("load task"));
    }
    let seen = health.await.expect("health task");

    let status = status.unwrap_or_else(|| panic!("server still running 30 s after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");

    // Calls started well before SIGTERM (20 ms margin for the wire) all completed normally.
    let failed_before: Vec<_> = records.iter().filter(|(t, r)| *t + 20 < t_term && r.is_err()).collect();
    assert!(
        failed_before.is_empty(),
        "calls started before SIGTERM failed: {:?}",
        &failed_before[..failed_before.len().min(10)]
    );
    let before = records.iter().filter(|(t, _)| *t < t_term).count();
    assert!(before >= 200, "only {before} calls before SIGTERM");

    // Health: once NOT_SERVING/500 was seen after SIGTERM, never SERVING/200 again.
    let after: Vec<_> = seen.iter().filter(|(t, _, _)| *t > t_term).collect();
    for kind in ["grpc", "http"] {
        let (down, up) = if kind == "grpc" { ("NotServing", "Serving") } else { ("500", "200") };
        let obs: Vec<&str> = after.iter().filter(|(_, k, _)| *k == kind).map(|(_, _, v)| v.as_str()).collect();
        let first_down = obs.iter().position(|v| *v == down);
        let first_down =
            first_down.unwrap_or_else(|| panic!("{kind} health never reported {down} during the drain delay: {obs:?}"));
        assert!(!obs[first_down..].contains(&up), "{kind} health went back to {up} after {down}: {obs:?}");
    }
}

#[tokio::test]
async fn flags_can_be_given_as_zael_environment_variables() {
    let s = Server::builder()
        .file("c.yaml", "domain: env\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n")
        .addrs_from_env()
        .env("ZAEL_SHADOW_MODE", "true")
        .env("ZAEL_RESPONSE_HEADERS", "true")
        .env("ZAEL_RESPONSE_HEADER_REMAINING", "X-Left")
        .env("ZAEL_LOG_FORMAT", "json")
        .start()
        .await;
    let r = s.should(req("env", vec![desc(&[("k", "a")])])).await;
    assert_response_ignoring_headers(&r, Code::Ok, &[ok(1, Unit::Minute, "", 0)]);
    let r = s.should(req("env", vec![desc(&[("k", "a")])])).await;
    // Global shadow mode from ZAEL_SHADOW_MODE: status over, overall OK.
    assert_response_ignoring_headers(&r, Code::Ok, &[over(1, Unit::Minute, "")]);
    assert!(
        r.response_headers_to_add.iter().any(|h| h.key.eq_ignore_ascii_case("X-Left") && h.value == "0"),
        "ZAEL_RESPONSE_HEADERS / ZAEL_RESPONSE_HEADER_REMAINING: {}",
        describe(&r)
    );
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let mut s = Server::builder()
        .file(
            "c.yaml",
            "domain: logs\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
        )
        .args(["--log-format", "json"])
        .start()
        .await;
    s.should(req("logs", vec![desc(&[("k", "a")])])).await;
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(30)).await;
    assert!(st.is_some(), "no exit after SIGTERM");
    let logs = s.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log output at all");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}"));
        assert!(v.is_object(), "log line is not a JSON object: {l:?}");
    }
}

#[tokio::test]
async fn invalid_config_at_startup_refuses_to_start_naming_the_file() {
    let mut s = Server::builder()
        .file(
            "bad.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        )
        .no_wait()
        .start()
        .await;
    // The documented choice (README "Health, shutdown, reload"): refuse to start, exit 1, and
    // name every error with its file.
    let status = s.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("still running on an invalid config:\n{}", s.log_tail()));
    assert_eq!(status.code(), Some(1), "exit status on an invalid config:\n{}", s.log_tail());
    let logs = s.logs();
    assert!(logs.contains("Error: invalid config"), "{logs}");
    assert!(logs.contains("bad.yaml") && logs.contains("unknown unit 'fortnight'"), "{logs}");
}

#[tokio::test]
async fn reload_keeps_bucket_balances_and_clamps_them_to_a_smaller_capacity() {
    let s = Server::builder().file("reload.yaml", &config_v(10, "v1")).args(["--store", "memory"]).start().await;
    let r = s.should(req("reload", vec![desc(&[("k", "a")]).hits(3)])).await;
    assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "v1", 7)]);
    // Larger capacity: the balance is kept (7), not reset to the new capacity.
    s.write_config("reload.yaml", &config_v(20, "v2"));
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        (current_name(&s).await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    assert!(seen.is_some(), "v2 not applied within 10 s");
    let r = s.should(req("reload", vec![desc(&[("k", "a")])])).await;
    // 7 left, plus refill at the new rate (20/min = 1 per 3 s) over the reload wait: allow +3.
    let rem = r.statuses[0].limit_remaining;
    assert!((6..=9).contains(&rem), "balance after growing capacity: {}", describe(&r));
    assert_response(&r, Code::Ok, &[ok(20, Unit::Minute, "v2", rem)]);
    // Smaller capacity: the balance is clamped to it.
    s.write_config("reload.yaml", &config_v(2, "v3"));
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        (current_name(&s).await.as_deref() == Some("v3")).then_some(())
    })
    .await;
    assert!(seen.is_some(), "v3 not applied within 10 s");
    let r = s.should(req("reload", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "v3", 1)]);
}

#[tokio::test]
async fn only_changes_to_config_contents_reload() {
    let yaml = "domain: quiet\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";
    let s = Server::builder().file("quiet.yaml", yaml).config_is_file("quiet.yaml").start().await;
    let loads = |m: &Metrics| m.get_or_zero("zael_config_loads_total", &[("result", "success")]);
    assert_eq!(loads(&s.metrics().await), 1.0);
    // Other files in the watched directory (logs, notes) and rewriting the same text: no reload.
    for i in 0..5 {
        s.write_config("server.log", &format!("line {i}\n"));
        s.write_config("quiet.yaml", yaml);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(loads(&s.metrics().await), 1.0, "reloaded without a change:\n{}", s.log_tail());
    // A real change reloads once.
    s.write_config("quiet.yaml", &yaml.replace("requests_per_unit: 1", "requests_per_unit: 2"));
    let reloaded = poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        (loads(&s.metrics().await) == 2.0).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "no reload after a change:\n{}", s.log_tail());
    let r = s.should(req("quiet", vec![desc(&[("k", "a")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "", 1)]);
}

/// A reference setting whose loss would change what is enforced refuses to start, with an
/// `Error:` line naming what to set instead; one that only does not apply starts and is said
/// once.
#[tokio::test]
async fn reference_settings_that_cannot_apply_are_errors_or_said_once() {
    for (name, value, says) in [
        ("BACKEND_TYPE", "redis", "ZAEL_STORE=dynamodb"),
        ("GRPC_CLIENT_TLS_SAN", "envoy", "SAN check is not supported"),
        ("CONFIG_TYPE", "CONSUL", "FILE or GRPC_XDS_SOTW"),
    ] {
        let mut cmd = zael_tests::server::base_command();
        cmd.env(name, value).arg("--config").arg("/nonexistent");
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = cmd.output().expect("run zael-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(stderr.starts_with("Error: ") && stderr.contains(says), "{name}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let s = Server::builder()
        .file("a.yaml", GOOD_A)
        .env("REDIS_URL", "redis:6379")
        .env("SHADOW_MODE", "true")
        .start()
        .await;
    let r = s.should(req("a", vec![desc(&[("k", "x")])])).await;
    s.should(req("a", vec![desc(&[("k", "x")])])).await;
    let over = s.should(req("a", vec![desc(&[("k", "x")])])).await;
    assert_eq!(
        (r.overall_code, over.overall_code),
        (Code::Ok as i32, Code::Ok as i32),
        "SHADOW_MODE=true is --shadow-mode"
    );
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(s.logs().matches("envoyproxy/ratelimit setting REDIS_URL: ignored").count(), 1, "{}", s.log_tail());
}

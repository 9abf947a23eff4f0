//! The embedded store under a key spray (issue 18): a client sending a new value on every
//! request cannot grow the process past `--max-buckets`; `/metrics` shows the bound at work;
//! a hot bucket hammered during the spray stays exact; the server keeps serving.

use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use zael_tests::*;

const SPRAYED: &str = r#"
domain: spray
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10, name: hourly}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spray_above_the_bound_keeps_the_store_at_the_bound_and_the_hot_bucket_exact() {
    const BOUND: f64 = 1000.0;
    let s = Server::builder().file("spray.yaml", SPRAYED).args(["--max-buckets", "1000"]).start().await;
    let alice = || req("spray", vec![desc(&[("user", "alice")])]);
    // Charged twice before the spray: a hot bucket from then on.
    for left in [9, 8] {
        assert_response(&s.should(alice()).await, Code::Ok, &[ok(10, Unit::Hour, "hourly", left)]);
    }
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut rls = RateLimitServiceClient::new(s.new_channel());
        tasks.push(tokio::spawn(async move {
            let (mut alice_admitted, mut errors) = (0_u32, Vec::new());
            for i in 0..625 {
                // Every request a new value (5,000 in all), every fifth one alice as well.
                let value = format!("spray-{client}-{i}");
                let mut descriptors = vec![desc(&[("user", value.as_str())])];
                if i % 5 == 0 {
                    descriptors.push(desc(&[("user", "alice")]));
                }
                match rls.should_rate_limit(req("spray", descriptors)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert_eq!(r.statuses[0].code, Code::Ok as i32, "a new value is always admitted");
                        assert_eq!(r.statuses[0].limit_remaining, 9, "a new value sees a new bucket");
                        if i % 5 == 0 && r.statuses[1].code == Code::Ok as i32 {
                            alice_admitted += 1;
                        }
                    }
                    Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            (alice_admitted, errors)
        }));
    }
    // While the spray runs, the store never holds more than the bound.
    let mut peak = 0.0_f64;
    while !tasks.iter().all(|t| t.is_finished()) {
        peak = peak.max(s.metrics().await.get_or_zero("zael_memory_buckets", &[]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut alice_admitted = 2;
    for t in tasks {
        let (admitted, errors) = t.await.expect("client");
        assert!(errors.is_empty(), "gRPC errors: {errors:?}");
        alice_admitted += admitted;
    }
    assert_eq!(alice_admitted, 10, "alice's bucket admitted exactly its capacity during the spray");
    let m = s.metrics().await;
    let live = m.get_or_zero("zael_memory_buckets", &[]);
    assert!(peak <= BOUND && live <= BOUND, "peak {peak}, now {live}\n{}", m.text);
    assert!(peak >= 0.75 * BOUND, "the spray reached the bound: peak {peak}");
    assert_eq!(m.get("zael_memory_bucket_bound", &[]), Some(BOUND), "{}", m.text);
    // 5,001 buckets were made; at most 1,000 are held; none had refilled.
    let dropped = m.get_or_zero("zael_memory_buckets_dropped_total", &[("reason", "pressure")]);
    assert_eq!(dropped, 5001.0 - live, "{}", m.text);
    assert_eq!(m.get("zael_memory_buckets_dropped_total", &[("reason", "refilled")]), Some(0.0), "{}", m.text);
    // Each dropped one had spent one token (a few millitokens refilled since).
    let lost = m.get_or_zero("zael_memory_dropped_millitokens_total", &[]);
    assert!(lost <= dropped * 1000.0 && lost >= dropped * 900.0, "lost {lost} for {dropped}\n{}", m.text);
    // Still serving, and still exact on the hot bucket.
    assert_eq!(s.http_get("/healthcheck").await.map(|r| r.status), Ok(200));
    assert_eq!(s.grpc_health("").await.ok(), Some(ServingStatus::Serving));
    assert_response(&s.should(alice()).await, Code::OverLimit, &[over(10, Unit::Hour, "hourly")]);
    assert!(s.logs().contains("--max-buckets bound"), "{}", s.log_tail());
}

#[test]
fn a_bound_below_eight_is_refused_with_a_clear_error() {
    let out = zael_tests::server::run_to_completion(
        &["--max-buckets".into(), "3".into(), "--validate".into()],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value '3' for '--max-buckets <MAX_BUCKETS>': 3 is too small: at least 8 buckets"),
        "{stderr}"
    );
}

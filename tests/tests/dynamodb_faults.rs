//! `zael-server --store dynamodb` while DynamoDB (moto) goes away and comes back: requests
//! that need the table answer UNAVAILABLE, those that do not still answer, and the server
//! recovers without a restart.

use std::time::Duration;
use zael_tests::moto::Moto;
use zael_tests::*;

const CONFIG: &str = r#"
domain: fault
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 1000, name: thousand}
  - key: free
    rate_limit: {unlimited: true}
  - key: nothing
    rate_limit: {unit: minute, requests_per_unit: 0, name: blocked}
"#;

fn limited(value: &str) -> RateLimitRequest {
    req("fault", vec![desc(&[("k", value)])])
}

#[tokio::test]
async fn moto_going_away_answers_unavailable_and_recovers() {
    let mut moto = Moto::start();
    let (table, ids) = moto.table(&["fault"]).await;
    let mut s = Server::builder()
        .file("c.yaml", CONFIG)
        .dynamodb(&moto.endpoint(), &table)
        .store_timeout("300ms")
        .start()
        .await;
    let r = s.should(limited("a")).await;
    assert_response(&r, Code::Ok, &[ok(1000, Unit::Hour, "thousand", 999)]);

    moto.stop();
    for value in ["a", "b"] {
        let started = std::time::Instant::now();
        let e = s.call(limited(value)).await.expect_err("the table is gone");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded by the store deadline: {:?}", started.elapsed());
    }
    // Descriptors that need no store still answer: unlimited, no match, blocklist.
    let r =
        s.should(req("fault", vec![desc(&[("free", "x")]), desc(&[("nope", "x")]), desc(&[("nothing", "x")])])).await;
    assert_response(&r, Code::OverLimit, &[unlimited(), no_limit(), over(0, Unit::Minute, "blocked")]);
    let r = s.should(req("unknown-domain", vec![desc(&[("k", "x")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
    // One descriptor needing the store fails the whole call.
    let e = s.call(req("fault", vec![desc(&[("free", "x")]), desc(&[("k", "a")])])).await.expect_err("partial");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let m = s.metrics().await;
    assert!(m.get_or_zero("zael_store_errors_total", &[("store", "dynamodb")]) >= 3.0, "{}", m.text);
    assert!(m.get_or_zero("zael_dynamodb_timeouts_total", &[]) >= 3.0, "{}", m.text);
    assert!(m.sum("zael_dynamodb_requests_total", &[("outcome", "transient")]) >= 3.0, "{}", m.text);

    // moto is back on the same port, empty: restore the table and the namespace (same id).
    moto.restart();
    moto.restore(&table, &[("fault", &ids[0])]).await;
    let recovered = poll_until(Duration::from_secs(20), Duration::from_millis(200), || async {
        s.call(limited("a")).await.ok().filter(|r| r.overall_code == Code::Ok as i32)
    })
    .await;
    let r = recovered.unwrap_or_else(|| panic!("no recovery within 20 s\n{}\n{}", s.log_tail(), moto.log_tail()));
    // The bucket was lost with moto's memory: created again, full.
    assert_response(&r, Code::Ok, &[ok(1000, Unit::Hour, "thousand", 999)]);
    let r = s.should(limited("a")).await;
    assert_response(&r, Code::Ok, &[ok(1000, Unit::Hour, "thousand", 998)]);

    assert!(s.try_wait().is_none(), "the server is still running");
    assert!(!s.logs().contains("panicked"), "{}", s.log_tail());
    assert_eq!(s.grpc_health("").await.ok(), Some(tonic_health::pb::health_check_response::ServingStatus::Serving));
}

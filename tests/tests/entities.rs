//! Entity rules (`entity:` in the YAML): zael-server enforces the limits the Python library
//! zae-limiter 0.17.0 stored for its entities and parents, over gRPC, on the DynamoDB store;
//! the embedded store takes them from an `--entities` file, and without one answers OK
//! without a limit.

use std::sync::OnceLock;
use zael_tests::moto::Moto;
use zael_tests::scenarios::errors::assert_invalid;
use zael_tests::*;

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

const LLM: &str = r#"
domain: llm
namespace: tenant
descriptors:
  - key: api_key
    descriptors:
      - key: model
        entity: {id_from: api_key, resource_from: model, consume: {rpm: 1, tpm: hits}}
"#;

const PLAIN: &str = r#"
domain: plain
namespace: empty
descriptors:
  - key: user
    entity: {resource: api, consume: {rpm: 1}}
"#;

fn key(api_key: &str, model: &str) -> RateLimitDescriptor {
    desc(&[("api_key", api_key), ("model", model)])
}

async fn start() -> Server {
    let table = moto().library_table(&["empty"]).await;
    Server::builder().file("llm.yaml", LLM).file("plain.yaml", PLAIN).dynamodb(&moto().endpoint(), &table).start().await
}

#[tokio::test]
async fn stored_limits_decide_and_the_least_remaining_is_reported() {
    let s = start().await;
    // key-1 on gpt-4: rpm 5/day and tpm 100/day of its own, cascading to proj-1 (rpm 8/day).
    // Each request takes 1 rpm and 30 tpm (its hits).
    let day = |rpu, name, left| ok(rpu, Unit::Day, name, left).reset(1..=86_400);
    // The status reports the limit with the fewest tokens left: rpm (4, 3, 2) before tpm
    // (70, 40, 10).
    for rpm_left in [4, 3, 2] {
        let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(30)])).await;
        assert_response(&r, Code::Ok, &[day(5, "rpm", rpm_left)]);
    }
    // 30 more tpm do not fit: the violated limit decides, nothing is charged.
    let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(30)])).await;
    assert_response(&r, Code::OverLimit, &[over(100, Unit::Day, "tpm").reset(1..=86_400)]);
    // 10 fit exactly: tpm 0 left is now the fewest (rpm has 1).
    let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(10)])).await;
    assert_response(&r, Code::Ok, &[day(100, "tpm", 0)]);

    // key-4 cascades to proj-2 (rpm 2/day): the parent's limit decides its third request.
    for left in [1, 0] {
        let r = s.should(req("llm", vec![key("key-4", "gpt-4")])).await;
        assert_response(&r, Code::Ok, &[day(2, "rpm", left)]);
    }
    let r = s.should(req("llm", vec![key("key-4", "gpt-4")])).await;
    assert_response(&r, Code::OverLimit, &[over(2, Unit::Day, "rpm").reset(1..=86_400)]);

    // An entity the library never created takes the system defaults (rpm 3, tpm 50 per day).
    let r = s.should(req("llm", vec![key("nobody", "other").hits(20)])).await;
    assert_response(&r, Code::Ok, &[day(3, "rpm", 2).reset(28_800..=28_800)]);
    // key-2 is disabled for claude: OVER_LIMIT without a limit to report.
    let r = s.should(req("llm", vec![key("key-2", "claude")])).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{}", describe(&r));
    assert_eq!((r.statuses[0].current_limit.clone(), r.statuses[0].limit_remaining), (None, 0));
}

#[tokio::test]
async fn no_stored_limits_is_ok_without_a_limit_and_bad_ids_are_invalid() {
    let s = start().await;
    let r = s.should(req("plain", vec![desc(&[("user", "u-1")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
    assert_invalid(
        s.call(req("llm", vec![key("not an id", "gpt-4")])).await,
        "entity id with spaces",
        &[&["entity id"], &["not an id"]],
    );
    assert_invalid(s.call(req("llm", vec![key("key-1", "4o")])).await, "resource", &[&["resource"]]);
    let r = s.should(req("llm", vec![key("key-5", "gpt-4")])).await;
    assert_response(&r, Code::Ok, &[ok(4, Unit::Day, "rpm", 3).reset(1..=86_400)]);
    assert!(!s.logs().contains("panicked"), "{}", s.log_tail());
}

#[tokio::test]
async fn the_embedded_store_has_no_stored_limits() {
    let s = Server::builder().file("llm.yaml", LLM).start().await;
    let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(30)])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
}

#[tokio::test]
async fn the_embedded_store_enforces_an_entities_file() {
    const ENTITIES: &str = r#"
namespaces:
  tenant:
    entities:
      proj-1: {resources: {gpt-4: {limits: ["rpm:8/day"]}}}
      key-1:
        parent: proj-1
        cascade: true
        resources: {gpt-4: {limits: ["rpm:5/day", "tpm:100/day"]}}
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("entities.yaml");
    std::fs::write(&path, ENTITIES).expect("write");
    let s = Server::builder().file("llm.yaml", LLM).arg("--entities").arg(&path).start().await;
    // As on the table (the first test): rpm 5 and tpm 100 per day, 30 tpm per request.
    let day = |rpu, name, left| ok(rpu, Unit::Day, name, left).reset(1..=86_400);
    for rpm_left in [4, 3, 2] {
        let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(30)])).await;
        assert_response(&r, Code::Ok, &[day(5, "rpm", rpm_left)]);
    }
    let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(30)])).await;
    assert_response(&r, Code::OverLimit, &[over(100, Unit::Day, "tpm").reset(1..=86_400)]);
    let r = s.should(req("llm", vec![key("key-1", "gpt-4").hits(10)])).await;
    assert_response(&r, Code::Ok, &[day(100, "tpm", 0)]);
}

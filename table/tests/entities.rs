//! Entity acquires against moto, with zae-limiter 0.17.0 as the oracle: entities, parents
//! and stored limits created by the library are enforced by zael exactly as the library
//! enforces them, and the buckets zael writes are the library's.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use zael_core::bucket::{EpochMillis, Millitokens};
use zael_core::store::{BucketStore, EntityOutcome, EntityRequest};

/// The steps both implementations run: cascade admits and a child-limit rejection (key-1),
/// an entity without a parent on resource defaults, a disabled entity, a parent rejection
/// with the child's debit refunded (key-4), an entity default (key-5), system defaults.
fn steps() -> Value {
    let key1 = json!(["key-1", "gpt-4", {"rpm": 1, "tpm": 30}]);
    json!([
        key1, key1, key1, key1,
        ["key-2", "gpt-4", {"rpm": 1}],
        ["key-2", "gpt-4", {"rpm": 1}],
        ["key-2", "gpt-4", {"rpm": 1}],
        ["key-2", "claude", {"rpm": 1}],
        ["key-3", "gpt-4", {"rpm": 2}],
        ["key-4", "gpt-4", {"rpm": 1}],
        ["key-4", "gpt-4", {"rpm": 1}],
        ["key-4", "gpt-4", {"rpm": 1}],
        ["key-5", "gpt-4", {"rpm": 1}],
        ["key-5", "gpt-4", {"rpm": 1, "tpm": 5}],
        ["nobody", "other", {"rpm": 1, "tpm": 10}],
        ["nobody", "other", {"rpm": 0, "tpm": 45}],
    ])
}

async fn library_table(test: &str) -> (String, String) {
    let table = table_name(test);
    let out = oracle(&["entity-setup".into(), table.clone(), "tenant".into()]).await;
    let parsed: Value = serde_json::from_str(out.trim()).expect("setup output");
    (table, parsed["namespace_id"].as_str().expect("namespace id").to_owned())
}

fn entity_request(entity: &str, resource: &str, consume: &serde_json::Map<String, Value>) -> EntityRequest {
    EntityRequest {
        namespace: "tenant".into(),
        entity: entity.into(),
        resource: resource.into(),
        consume: consume
            .iter()
            .map(|(k, v)| (Arc::<str>::from(k.as_str()), Millitokens::from_tokens(v.as_u64().expect("amount"))))
            .collect(),
    }
}

async fn acquire(store: &dyn BucketStore, request: EntityRequest, now: EpochMillis) -> EntityOutcome {
    store.acquire(&[request], now).await.pop().expect("one outcome").expect("acquire")
}

fn outcome_name(outcome: &EntityOutcome) -> &'static str {
    match outcome {
        EntityOutcome::Admitted(_) => "admitted",
        EntityOutcome::Rejected(_) => "rejected",
        EntityOutcome::Disabled { .. } => "disabled",
        EntityOutcome::NoLimits => "no_limits",
    }
}

fn pairs() -> String {
    let mut pairs = Vec::new();
    for e in ["key-1", "key-2", "key-3", "key-4", "key-5", "proj-1", "proj-2"] {
        pairs.push(json!([e, "gpt-4"]));
    }
    pairs.push(json!(["nobody", "other"]));
    Value::Array(pairs).to_string()
}

#[tokio::test]
async fn library_entities_and_limits_are_enforced_exactly() {
    let (python_table, _) = library_table("ent-python").await;
    let (zael_table, _) = library_table("ent-zael").await;
    let steps = steps();

    let python: Value = serde_json::from_str(
        oracle(&["entity-run".into(), python_table.clone(), "tenant".into(), steps.to_string()]).await.trim(),
    )
    .expect("oracle output");

    let store = store(&zael_table).await;
    for (i, step) in steps.as_array().expect("steps").iter().enumerate() {
        let (entity, resource) = (step[0].as_str().unwrap(), step[1].as_str().unwrap());
        let outcome = acquire(&store, entity_request(entity, resource, step[2].as_object().unwrap()), now()).await;
        let expected = &python[i];
        assert_eq!(outcome_name(&outcome), expected[0], "step {i} {step}: {outcome:?}");
        if let EntityOutcome::Admitted(reports) | EntityOutcome::Rejected(reports) = &outcome {
            // Every requested limit reports the balance the library reads after the same step.
            assert!(!reports.is_empty(), "step {i}");
            for r in reports {
                let whole = Millitokens(r.tokens.0 * r.shard_count).floor_tokens();
                assert_eq!(json!(whole), expected[1][&r.entity][&r.name], "step {i} {step}: {} {}", r.entity, r.name);
            }
        }
    }
    // The library reads identical balances off both tables.
    let read =
        |table: String| async move { oracle(&["entity-available".into(), table, "tenant".into(), pairs()]).await };
    let (on_python, on_zael) = (read(python_table).await, read(zael_table).await);
    assert_eq!(on_zael, on_python);
}

#[tokio::test]
async fn warm_entity_acquires_take_one_write_per_bucket_and_the_library_stays_fast() {
    let (table, ns) = library_table("ent-calls").await;
    let store = store(&table).await;
    let consume = json!({"rpm": 1, "tpm": 10});
    let req = || entity_request("key-1", "gpt-4", consume.as_object().unwrap());
    // One instant for every zael call: the buckets refill nothing between them.
    let t0 = now();
    // First use: creates the child's and the parent's buckets in one transaction.
    assert!(matches!(acquire(&store, req(), t0).await, EntityOutcome::Admitted(_)));
    let child = get_item(&table, &format!("{ns}/BUCKET#key-1#gpt-4#0")).await.expect("child bucket");
    let parent = get_item(&table, &format!("{ns}/BUCKET#proj-1#gpt-4#0")).await.expect("parent bucket");
    assert_eq!((num(&child, "b_rpm_tk"), num(&child, "b_tpm_tk"), num(&child, "b_tpm_tc")), (4000, 90_000, 10_000));
    assert_eq!((num(&parent, "b_rpm_tk"), num(&parent, "b_rpm_tc")), (7000, 1000));
    assert_eq!(child.get("parent_id").and_then(|v| v.as_s().ok()).map(String::as_str), Some("proj-1"));
    assert!(!child.contains_key("ttl"), "entity-level limits: no ttl");
    for attr in ["pgen", "pinc", "b_wcu_tk", "GSI2PK", "GSI3PK", "GSI4PK"] {
        assert!(child.contains_key(attr), "{attr}");
    }

    // Warm, with the parent known: two UpdateItems in parallel, no reads.
    let before = store.calls();
    assert!(matches!(acquire(&store, req(), t0).await, EntityOutcome::Admitted(_)));
    let after = store.calls();
    assert_eq!(
        (
            after.update_item - before.update_item,
            after.batch_get_item - before.batch_get_item,
            after.get_item - before.get_item
        ),
        (2, 0, 0)
    );

    // The library's acquire on zael's buckets takes its fast path and sees zael's balances.
    // (Only `rpm`: a requested limit the parent lacks sends the library to its slow path.)
    let steps = json!([["key-1", "gpt-4", {"rpm": 1}]]).to_string();
    let out: Value =
        serde_json::from_str(oracle(&["entity-run".into(), table.clone(), "tenant".into(), steps]).await.trim())
            .unwrap();
    assert_eq!(out[0], json!(["admitted", {"key-1": {"rpm": 2, "tpm": 80}, "proj-1": {"rpm": 5}}, false]));

    // A rejection the image proves: the child's failed UpdateItem, the parallel parent debit
    // and its refund (the library's budget, §11.1), no reads, nothing left debited.
    let big = json!({"rpm": 1, "tpm": 81});
    let before = store.calls();
    let outcome = acquire(&store, entity_request("key-1", "gpt-4", big.as_object().unwrap()), t0).await;
    let EntityOutcome::Rejected(reports) = outcome else { panic!("{outcome:?}") };
    assert_eq!(
        reports.iter().map(|r| (r.name.as_str(), r.tokens.0, r.exceeded)).collect::<Vec<_>>(),
        [("rpm", 2000, false), ("tpm", 80_000, true)]
    );
    let after = store.calls();
    assert_eq!((after.update_item - before.update_item, after.batch_get_item - before.batch_get_item), (3, 0));
    let parent = get_item(&table, &format!("{ns}/BUCKET#proj-1#gpt-4#0")).await.expect("parent bucket");
    assert_eq!((num(&parent, "b_rpm_tk"), num(&parent, "b_rpm_tc")), (5000, 3000), "the parent's debit was refunded");
}

#[tokio::test]
async fn no_stored_limits_admit_without_a_write_and_disabled_entities_are_refused() {
    let table = table_name("ent-empty");
    setup(&table, &["tenant"]).await;
    let store = store(&table).await;
    let consume = json!({"rpm": 1});
    let before = store.calls();
    let outcome = acquire(&store, entity_request("anyone", "gpt-4", consume.as_object().unwrap()), now()).await;
    assert_eq!(outcome, EntityOutcome::NoLimits);
    let after = store.calls();
    assert_eq!(
        (after.update_item - before.update_item, after.transact_write_items - before.transact_write_items),
        (0, 0)
    );

    // An unknown namespace is refused, never failed open.
    let mut req = entity_request("anyone", "gpt-4", consume.as_object().unwrap());
    req.namespace = "missing".into();
    let err = store.acquire(&[req], now()).await.pop().unwrap().expect_err("unknown namespace");
    assert!(!err.may_fail_open(), "{err}");
}

#[tokio::test]
async fn concurrent_cascading_acquires_never_exceed_the_parent() {
    let (table, _) = library_table("ent-race").await;
    // proj-2 allows 2 per day; key-4 (cascading) allows 10. Two stores, 12 concurrent acquires.
    let a = store(&table).await;
    let b = store(&table).await;
    let consume = json!({"rpm": 1});
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let req = entity_request("key-4", "gpt-4", consume.as_object().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut options = store.acquire(&[req], now()).await;
            options.pop().unwrap()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(EntityOutcome::Admitted(_)) => admitted += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 2);
    let out = oracle(&[
        "entity-available".into(),
        table,
        "tenant".into(),
        json!([["key-4", "gpt-4"], ["proj-2", "gpt-4"]]).to_string(),
    ])
    .await;
    assert_eq!(out.trim(), r#"{"key-4/gpt-4": {"rpm": 8}, "proj-2/gpt-4": {"rpm": 0}}"#);
}

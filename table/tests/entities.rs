//! Entity acquires against moto, with zae-limiter 0.17.0 as the oracle: entities, parents
//! and stored limits created by the library are enforced by zael exactly as the library
//! enforces them, and the buckets zael writes are the library's.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use zael_core::bucket::{EpochMillis, Millitokens};
use zael_core::store::{BucketStore, EntityOutcome, EntityRequest};

/// The steps both implementations run (`steps.json`, which the behaviour suite runs on the
/// embedded store too): cascade admits and a child-limit rejection (key-1), an entity without
/// a parent on resource defaults, a disabled entity, a parent rejection with the child's debit
/// refunded (key-4), an entity default (key-5), system defaults, a soft limit admitting into
/// debt (key-6) and a bypassed entity (key-7).
fn steps() -> Value {
    serde_json::from_str(include_str!("steps.json")).expect("steps.json")
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
        reserve: true,
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
    for e in ["key-1", "key-2", "key-3", "key-4", "key-5", "key-6", "key-7", "proj-1", "proj-2"] {
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
    let (on_python, on_zael) = (read(python_table.clone()).await, read(zael_table.clone()).await);
    assert_eq!(on_zael, on_python);
    // And identical consumption counters (`tc`, what usage snapshots are made of).
    assert_eq!(consumption(&zael_table).await, consumption(&python_table).await);
}

/// Every bucket's `b_{n}_tc` (but `wcu`'s, which counts writes), by entity, resource and limit.
async fn consumption(table: &str) -> std::collections::BTreeMap<String, i64> {
    let items = client().await.scan().table_name(table).send().await.expect("scan").items.unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for item in items {
        if item.get("SK").and_then(|v| v.as_s().ok()).map(String::as_str) != Some("#STATE") {
            continue;
        }
        let owner = format!("{}/{}", item["entity_id"].as_s().unwrap(), item["resource"].as_s().unwrap());
        for (attr, value) in &item {
            if attr.starts_with("b_") && attr.ends_with("_tc") && attr != "b_wcu_tc" {
                out.insert(format!("{owner}/{attr}"), value.as_n().unwrap().parse::<i64>().unwrap());
            }
        }
    }
    out
}

/// A bypassed entity (key-7): once a bucket image showed the stamp, every acquire is one
/// UpdateItem in the bypass shape (`tc` counted, `tk` untouched), not a debit and its refund.
#[tokio::test]
async fn a_known_bypassed_bucket_takes_one_write_per_acquire() {
    let (table, ns) = library_table("ent-bypass").await;
    let store = store(&table).await;
    let consume = json!({"rpm": 1});
    let req = || entity_request("key-7", "gpt-4", consume.as_object().unwrap());
    let t0 = now();
    // First use (slow path, stamped bypass), then a normal-shape debit given back.
    for _ in 0..2 {
        assert!(matches!(acquire(&store, req(), t0).await, EntityOutcome::Admitted(_)));
    }
    let before = store.calls();
    for _ in 0..3 {
        let EntityOutcome::Admitted(reports) = acquire(&store, req(), t0).await else { panic!("bypassed") };
        assert_eq!((reports[0].tokens.0, reports[0].bypass), (1000, true));
    }
    let after = store.calls();
    assert_eq!((after.update_item - before.update_item, after.total() - before.total()), (3, 3));
    let bucket = get_item(&table, &format!("{ns}/BUCKET#key-7#gpt-4#0")).await.expect("bucket");
    assert_eq!((num(&bucket, "b_rpm_tk"), num(&bucket, "b_rpm_tc")), (1000, 5000));
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

    // The same request again, within the cache's second: rejected from memory, no call.
    let before = store.calls();
    let again = acquire(&store, entity_request("key-1", "gpt-4", big.as_object().unwrap()), t0).await;
    let EntityOutcome::Rejected(cached) = again else { panic!("{again:?}") };
    assert_eq!(cached, reports, "the same answer as the table's");
    assert_eq!(store.calls().total(), before.total(), "no DynamoDB call");
    assert_eq!(store.rejection_cache_hits(), 1);
    // A request that fits is never answered from the cache.
    let small = json!({"tpm": 80});
    let before = store.calls();
    let fits = acquire(&store, entity_request("key-1", "gpt-4", small.as_object().unwrap()), t0).await;
    assert!(matches!(fits, EntityOutcome::Admitted(_)), "{fits:?}");
    assert_eq!(store.calls().update_item - before.update_item, 1, "one write: the parent has no tpm to charge");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_library_and_zael_together_never_exceed_a_cascading_parent() {
    let (table, _) = library_table("ent-mixed").await;
    // key-8 allows 30 per day, its parent proj-3 only 20: 40 attempts on each side.
    let args = ["entity-hammer", &table, "tenant", "key-8", "gpt-4", r#"{"rpm": 1}"#, "40", "4"].map(String::from);
    let python = tokio::spawn(async move { oracle(&args).await });
    let store = store(&table).await;
    let consume = json!({"rpm": 1});
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let consume = consume.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..10 {
                let req = entity_request("key-8", "gpt-4", consume.as_object().unwrap());
                match store.acquire(&[req], now()).await.pop().unwrap() {
                    Ok(EntityOutcome::Admitted(_)) => admitted += 1,
                    Ok(EntityOutcome::Rejected(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            admitted
        }));
    }
    let mut zael = 0;
    for t in tasks {
        zael += t.await.unwrap();
    }
    let python: Value = serde_json::from_str(&python.await.unwrap()).unwrap();
    let library = python["admitted"].as_i64().unwrap();
    assert_eq!(zael + library, 20, "zael admitted {zael}, the library {library}");
    let out = oracle(&[
        "entity-available".into(),
        table,
        "tenant".into(),
        json!([["key-8", "gpt-4"], ["proj-3", "gpt-4"]]).to_string(),
    ])
    .await;
    assert_eq!(out.trim(), r#"{"key-8/gpt-4": {"rpm": 10}, "proj-3/gpt-4": {"rpm": 0}}"#);
}

/// key-5: 4 per day from its entity default, no parent.
fn key5() -> EntityRequest {
    entity_request("key-5", "gpt-4", json!({"rpm": 1}).as_object().unwrap())
}

#[tokio::test]
async fn a_lost_create_race_and_a_lost_rf_lock_fall_back_to_consumption_only() {
    let (table, ns) = library_table("ent-races").await;
    let a = store(&table).await;
    let b = store(&table).await;
    let hook = {
        let b = b.clone();
        Arc::new(move |_pk: String| {
            let b = b.clone();
            Box::pin(async move {
                // Another server wins the race, between this one's read and its commit.
                let outcome = b.acquire(&[key5()], now()).await.pop().unwrap().unwrap();
                assert!(matches!(outcome, EntityOutcome::Admitted(_)), "{outcome:?}");
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        })
    };
    a.set_before_commit_hook(Some(hook));
    let pk = format!("{ns}/BUCKET#key-5#gpt-4#0");

    // Create race: both find no bucket; b creates it first, a's Put fails and a retries the
    // debit alone on b's item.
    let before = a.calls();
    assert!(matches!(acquire(&a, key5(), now()).await, EntityOutcome::Admitted(_)));
    let after = a.calls();
    assert_eq!(after.transact_write_items - before.transact_write_items, 1, "one create attempt");
    let item = get_item(&table, &pk).await.expect("bucket");
    assert_eq!((num(&item, "b_rpm_tk"), num(&item, "b_rpm_tc")), (2000, 2000));

    // Lost rf lock: `vu = 0` sends both to the slow path; b's normal write moves rf and
    // clears vu first, a's rf-locked write fails and its consumption-only retry lands.
    stamp(&table, &pk, &[("vu", n(0))]).await;
    assert!(matches!(acquire(&a, key5(), now()).await, EntityOutcome::Admitted(_)));
    let item = get_item(&table, &pk).await.expect("bucket");
    assert_eq!((num(&item, "b_rpm_tk"), num(&item, "b_rpm_tc")), (0, 4000));
    assert!(!item.contains_key("vu"), "the winner's slow pass cleared the marker");
    a.set_before_commit_hook(None);
    let outcome = acquire(&a, key5(), now()).await;
    assert!(matches!(outcome, EntityOutcome::Rejected(_)), "{outcome:?}");
}

/// A bucket spread over two shards, one drained: an acquire drawn to the drained shard tries
/// the other before it rejects (the library's shard retry), so every token of the bucket is
/// admitted whichever shard each acquire draws first.
#[tokio::test]
async fn a_drained_shard_sends_the_acquire_to_the_other_before_rejecting() {
    let (table, ns) = library_table("ent-shards").await;
    let store = store(&table).await;
    let t = now();
    // key-5: rpm 4 a day; doubled to two shards of 2 tokens (see the test below).
    assert!(matches!(acquire(&store, key5(), t).await, EntityOutcome::Admitted(_)));
    let zero = format!("{ns}/BUCKET#key-5#gpt-4#0");
    stamp(&table, &zero, &[("b_wcu_tk", n(0)), ("rf", n(t.0 + 600_000))]).await;
    assert!(matches!(acquire(&store, key5(), t).await, EntityOutcome::Admitted(_)));
    let one = format!("{ns}/BUCKET#key-5#gpt-4#1");
    assert_eq!(num(&get_item(&table, &zero).await.expect("shard 0"), "shard_count"), 2);
    for round in 0..5 {
        // Shard 0 empty, shard 1 holding 2 tokens, both with write units and no refill due.
        stamp(&table, &zero, &[("b_rpm_tk", n(0)), ("b_wcu_tk", n(1_000_000)), ("rf", n(t.0))]).await;
        stamp(&table, &one, &[("b_rpm_tk", n(2000)), ("b_wcu_tk", n(1_000_000)), ("rf", n(t.0))]).await;
        let fresh = store_with(options(&table)).await;
        for i in 0..2 {
            let outcome = acquire(&fresh, key5(), t).await;
            assert!(matches!(outcome, EntityOutcome::Admitted(_)), "round {round}, acquire {i}: {outcome:?}");
        }
        let outcome = acquire(&fresh, key5(), t).await;
        assert!(matches!(outcome, EntityOutcome::Rejected(_)), "round {round}: {outcome:?}");
        assert_eq!(num(&get_item(&table, &one).await.expect("shard 1"), "b_rpm_tk"), 0);
    }
}

#[tokio::test]
async fn bucket_stamps_and_unsupported_config_are_decided_without_guessing() {
    let (table, ns) = library_table("ent-stamps").await;
    let store = store(&table).await;
    let t = now();
    assert!(matches!(acquire(&store, key5(), t).await, EntityOutcome::Admitted(_)));
    let pk = format!("{ns}/BUCKET#key-5#gpt-4#0");

    // A `disabled` stamp: one failed UpdateItem, no reads.
    stamp(&table, &pk, &[("disabled", AttributeValue::Bool(true))]).await;
    let before = store.calls();
    assert_eq!(acquire(&store, key5(), t).await, EntityOutcome::Disabled { entity: "key-5".into() });
    let after = store.calls();
    assert_eq!((after.update_item - before.update_item, after.batch_get_item - before.batch_get_item), (1, 0));
    remove_attrs(&table, &pk, &["disabled"]).await;

    // wcu exhausted and no refill in sight: shard 0 doubles the count, the request goes to a
    // new shard at its share (4 // 2 = 2 tokens, less this request's).
    stamp(&table, &pk, &[("b_wcu_tk", n(0)), ("rf", n(t.0 + 600_000))]).await;
    assert!(matches!(acquire(&store, key5(), t).await, EntityOutcome::Admitted(_)));
    let zero = get_item(&table, &pk).await.expect("shard 0");
    assert_eq!(num(&zero, "shard_count"), 2);
    let one = get_item(&table, &format!("{ns}/BUCKET#key-5#gpt-4#1")).await.expect("shard 1 created");
    assert_eq!((num(&one, "shard_count"), num(&one, "b_rpm_tk"), num(&one, "b_rpm_cp")), (2, 1000, 4000));

    // A schedule on the stored limits: not implemented, so the store cannot answer (and the
    // failure policy decides); nothing is written.
    let config_pk = format!("{ns}/ENTITY#key-1");
    client()
        .await
        .update_item()
        .table_name(&table)
        .key("PK", AttributeValue::S(config_pk))
        .key("SK", AttributeValue::S("#CONFIG#gpt-4".into()))
        .update_expression("SET l_rpm_sched = :s")
        .expression_attribute_values(":s", AttributeValue::S("0 9 * * *|10".into()))
        .send()
        .await
        .expect("schedule");
    let fresh = store_with(options(&table)).await;
    let req = entity_request("key-1", "gpt-4", json!({"rpm": 1}).as_object().unwrap());
    let before = fresh.calls();
    let err = fresh.acquire(&[req], t).await.pop().unwrap().expect_err("unsupported");
    assert!(err.may_fail_open() && err.to_string().contains("schedule"), "{err}");
    assert_eq!(fresh.calls().update_item - before.update_item, 0);
}

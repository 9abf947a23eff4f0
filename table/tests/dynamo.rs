//! DynamoStore against moto: the acquire algorithm of zae-limiter 0.17.0 for zael's buckets.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use zael_core::bucket::{BucketLimit, EpochMillis, Millitokens};
use zael_core::store::{BucketStore, OnUnavailable, StoreError};
use zael_table::{CallCounts, CommitHook, DynamoStore, DynamoStoreOptions};

fn diff(after: CallCounts, before: CallCounts) -> (u64, u64, u64) {
    (
        after.update_item - before.update_item,
        after.get_item - before.get_item,
        after.transact_write_items - before.transact_write_items,
    )
}

fn per_minute(n: u64) -> BucketLimit {
    BucketLimit::per_period(n, n, 60)
}

fn per_hour(n: u64) -> BucketLimit {
    BucketLimit::per_period(n, n, 3600)
}

fn per_day(n: u64) -> BucketLimit {
    BucketLimit::per_period(n, n, 86_400)
}

fn pk(ns: &str, entity: &str, resource: &str, shard: i64) -> String {
    format!("{ns}/BUCKET#{entity}#{resource}#{shard}")
}

fn hook(
    f: impl Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync + 'static,
) -> CommitHook {
    Arc::new(f)
}

#[tokio::test]
async fn first_use_creates_the_complete_item_and_warm_admit_is_one_update_item() {
    let table = table_name("warm");
    let ns = setup(&table, &["tenant-a"]).await.remove(0);
    let store = store(&table).await;
    let req = request("tenant-a", "user:alice", "per-user", per_minute(5), &[strict(1)]);
    let t0 = now();

    let before = store.calls();
    let out = charge_one(&store, &req, t0).await;
    assert_eq!(
        out,
        vec![zael_core::bucket::ChargeOutcome { admitted: true, tokens: Millitokens(4000), refilled_at: t0 }]
    );
    // Failed speculative write, namespace lookup, the namespace's system config (its
    // on_unavailable), consistent bucket read, create transaction.
    assert_eq!(diff(store.calls(), before), (1, 3, 1));

    let before = store.calls();
    let out = charge_one(&store, &req, t0).await;
    assert_eq!(admitted(&out), [true]);
    assert_eq!(out[0].tokens, Millitokens(3000));
    assert_eq!(diff(store.calls(), before), (1, 0, 0), "warm admit is exactly one UpdateItem");

    let item = get_item(&table, &pk(&ns, "user:alice", "per-user", 0)).await.expect("bucket");
    let s = |a: &str| item[a].as_s().expect("S").clone();
    assert_eq!(s("entity_id"), "user:alice");
    assert_eq!(s("resource"), "per-user");
    assert_eq!(s("GSI2PK"), format!("{ns}/RESOURCE#per-user"));
    assert_eq!(s("GSI2SK"), "BUCKET#user:alice#0");
    assert_eq!(s("GSI3PK"), format!("{ns}/ENTITY#user:alice"));
    assert_eq!(s("GSI3SK"), "BUCKET#per-user#0");
    assert_eq!(s("GSI4PK"), ns);
    assert_eq!(s("GSI4SK"), "BUCKET#user:alice#per-user#0");
    assert_eq!(item["cascade"], AttributeValue::Bool(false));
    assert_eq!(num(&item, "rf"), t0.0);
    assert_eq!(num(&item, "shard_count"), 1);
    assert_eq!(num(&item, "ttl"), t0.0.div_euclid(1000) + 420, "override TTL: 7 x 60 s");
    for (attr, v) in [
        ("b_hits_tk", 3000),
        ("b_hits_cp", 5000),
        ("b_hits_ra", 5000),
        ("b_hits_rp", 60_000),
        ("b_hits_tc", 2000),
        ("b_wcu_tk", 999_000),
        ("b_wcu_cp", 1_000_000),
        ("b_wcu_ra", 1_000_000),
        ("b_wcu_rp", 1000),
        ("b_wcu_tc", 1000),
    ] {
        assert_eq!(num(&item, attr), v, "{attr}");
    }
    let mut attrs: Vec<&str> = item.keys().map(String::as_str).collect();
    attrs.sort_unstable();
    assert_eq!(
        attrs,
        [
            "GSI2PK",
            "GSI2SK",
            "GSI3PK",
            "GSI3SK",
            "GSI4PK",
            "GSI4SK",
            "PK",
            "SK",
            "b_hits_cp",
            "b_hits_ra",
            "b_hits_rp",
            "b_hits_tc",
            "b_hits_tk",
            "b_wcu_cp",
            "b_wcu_ra",
            "b_wcu_rp",
            "b_wcu_tc",
            "b_wcu_tk",
            "cascade",
            "entity_id",
            "resource",
            "rf",
            "shard_count",
            "ttl"
        ]
    );
}

#[tokio::test]
async fn fast_rejection_makes_no_reads_and_refill_takes_the_slow_path() {
    let table = table_name("refill");
    let ns = setup(&table, &["ns"]).await.remove(0);
    // Without the rejection cache, which would answer the rejections below with no call.
    let store = store_with(DynamoStoreOptions { rejection_cache: false, ..options(&table) }).await;
    let t0 = now();
    let req = request("ns", "k:v", "r", per_minute(5), &[strict(5)]);
    assert_eq!(admitted(&charge_one(&store, &req, t0).await), [true]);
    let one = request("ns", "k:v", "r", per_minute(5), &[strict(1)]);

    // Empty, and 1 s of refill is 83 millitokens: rejected from the image, no read.
    let before = store.calls();
    let out = charge_one(&store, &one, EpochMillis(t0.0 + 1000)).await;
    assert_eq!(admitted(&out), [false]);
    assert_eq!(out[0].tokens, Millitokens(83));
    assert_eq!(diff(store.calls(), before), (1, 0, 0));

    // 12 s refill exactly one token: the slow pass refills and consumes it, its rf-locked
    // write planned on the failed speculative write's image (no read).
    let t1 = EpochMillis(t0.0 + 12_000);
    let before = store.calls();
    let out = charge_one(&store, &one, t1).await;
    assert_eq!(out, vec![zael_core::bucket::ChargeOutcome { admitted: true, tokens: Millitokens(0), refilled_at: t1 }]);
    assert_eq!(diff(store.calls(), before), (2, 0, 0));
    let item = get_item(&table, &pk(&ns, "k:v", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc"), num(&item, "rf")), (0, 6000, t1.0));
    assert_eq!(num(&item, "ttl"), t1.0.div_euclid(1000) + 420);
    assert_eq!(num(&item, "b_wcu_tk"), 1_000_000, "the slow pass refills wcu");

    // Half a token later: rejected from the image again.
    let before = store.calls();
    let out = charge_one(&store, &one, EpochMillis(t1.0 + 6000)).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(500)));
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
}

#[tokio::test]
async fn create_race_loser_takes_the_consumption_only_retry() {
    let table = table_name("race");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let a = store(&table).await;
    let b = store(&table).await;
    let t0 = now();
    let req = request("ns", "e", "r", per_hour(10), &[strict(1)]);
    let fired = Arc::new(AtomicBool::new(false));
    {
        let (b, req, fired) = (b.clone(), req.clone(), fired.clone());
        a.set_before_commit_hook(Some(hook(move |_pk| {
            let (b, req, fired) = (b.clone(), req.clone(), fired.clone());
            Box::pin(async move {
                if !fired.swap(true, Ordering::SeqCst) {
                    assert_eq!(admitted(&charge_one(&b, &req, t0).await), [true]);
                }
            })
        })));
    }
    let before = a.calls();
    let out = charge_one(&a, &req, t0).await;
    assert!(fired.load(Ordering::SeqCst));
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(8000)));
    // Failed speculative write, lost create, consumption-only retry (and the first call's
    // namespace and system config reads).
    assert_eq!(diff(a.calls(), before), (2, 3, 1));
    let item = get_item(&table, &pk(&ns, "e", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (8000, 2000));

    // Six creators at once on another bucket: every one admitted, the balance exact.
    let req = request("ns", "e2", "r", per_hour(10), &[strict(1)]);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = store(&table).await;
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let out = charge_one(&s, &req, t0).await;
            (out[0].admitted, s.calls().transact_write_items)
        }));
    }
    let mut admits = 0;
    let mut creates = 0;
    for t in tasks {
        let (ok, tx) = t.await.expect("task");
        admits += usize::from(ok);
        creates += tx;
    }
    assert_eq!(admits, 6);
    assert!(creates >= 1);
    let item = get_item(&table, &pk(&ns, "e2", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (4000, 6000));
}

#[tokio::test]
async fn lost_rf_lock_takes_the_consumption_only_retry() {
    let table = table_name("lock");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let creator = store(&table).await;
    let t0 = now();
    let five = request("ns", "e", "r", per_minute(5), &[strict(5)]);
    assert_eq!(admitted(&charge_one(&creator, &five, t0).await), [true]);

    let a = store(&table).await;
    let b = store(&table).await;
    let one = request("ns", "e", "r", per_minute(5), &[strict(1)]);
    let t1 = EpochMillis(t0.0 + 24_000); // two tokens of refill
    let fired = Arc::new(AtomicBool::new(false));
    {
        let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
        a.set_before_commit_hook(Some(hook(move |_pk| {
            let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
            Box::pin(async move {
                if !fired.swap(true, Ordering::SeqCst) {
                    // Another writer's slow pass claims the refill window first.
                    assert_eq!(admitted(&charge_one(&b, &one, t1).await), [true]);
                }
            })
        })));
    }
    let _ = a.calls();
    let out = charge_one(&a, &one, t1).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(0)));
    // Failed speculative write, lost rf-locked write, consumption-only retry.
    assert_eq!(a.calls().update_item, 3);
    let item = get_item(&table, &pk(&ns, "e", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc"), num(&item, "rf")), (0, 7000, t1.0));

    // And a retry that finds the balance gone is a rejection.
    let fired = Arc::new(AtomicBool::new(false));
    let t2 = EpochMillis(t1.0 + 12_000); // one token
    {
        let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
        a.set_before_commit_hook(Some(hook(move |_pk| {
            let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
            Box::pin(async move {
                if !fired.swap(true, Ordering::SeqCst) {
                    assert_eq!(admitted(&charge_one(&b, &one, t2).await), [true]);
                }
            })
        })));
    }
    let before = a.calls();
    let out = charge_one(&a, &one, t2).await;
    assert_eq!(admitted(&out), [false]);
    // Planned on the image the retry left (the rejection cache's, short): the lost rf-locked
    // write only, no speculative write and no read. Its image shows the other writer's token
    // gone (`tk` 0): the consumption-only retry would fail, so the rejection is taken from it.
    let after = a.calls();
    assert_eq!((after.update_item - before.update_item, after.get_item - before.get_item), (1, 0));
    let item = get_item(&table, &pk(&ns, "e", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (0, 8000));
}

#[tokio::test]
async fn disabled_bypass_and_soft_stamps() {
    let table = table_name("stamps");
    let ns = setup(&table, &["ns"]).await.remove(0);
    // Stamps written behind the store's back: without the rejection cache, which would keep
    // rejecting from the last image for up to 1 s.
    let store = store_with(DynamoStoreOptions { rejection_cache: false, ..options(&table) }).await;
    let t0 = now();
    let one = |e: &str| request("ns", e, "r", per_hour(5), &[strict(1)]);

    // disabled: rejected, nothing written, one failed write.
    assert_eq!(admitted(&charge_one(&store, &one("d"), t0).await), [true]);
    let dpk = pk(&ns, "d", "r", 0);
    stamp(&table, &dpk, &[("disabled", AttributeValue::Bool(true))]).await;
    let before = store.calls();
    let out = charge_one(&store, &one("d"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(4000)));
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
    let item = get_item(&table, &dpk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (4000, 1000));

    // bypass: admitted without a tk debit; the first write is refunded, the next is bypass-shaped.
    assert_eq!(admitted(&charge_one(&store, &one("b"), t0).await), [true]);
    let bpk = pk(&ns, "b", "r", 0);
    stamp(&table, &bpk, &[("bypass", n(t0.0 + 60_000))]).await;
    let before = store.calls();
    let out = charge_one(&store, &one("b"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(4000)));
    assert_eq!(diff(store.calls(), before), (2, 0, 0), "debit then refund");
    let before = store.calls();
    for _ in 0..6 {
        assert_eq!(admitted(&charge_one(&store, &one("b"), t0).await), [true]);
    }
    assert_eq!(diff(store.calls(), before), (6, 0, 0));
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (4000, 8000));
    // An expired stamp goes to the slow path, which removes it and enforces.
    stamp(&table, &bpk, &[("bypass", n(t0.0 - 1))]).await;
    let out = charge_one(&store, &one("b"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(3000)));
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert!(!item.contains_key("bypass"));
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (3000, 9000));

    // soft: admitted into debt while the stamp is live.
    let five = request("ns", "s", "r", per_hour(5), &[strict(5)]);
    assert_eq!(admitted(&charge_one(&store, &five, t0).await), [true]);
    let spk = pk(&ns, "s", "r", 0);
    stamp(&table, &spk, &[("b_hits_soft", n(t0.0 + 60_000))]).await;
    let three = request("ns", "s", "r", per_hour(5), &[strict(3)]);
    let before = store.calls();
    let out = charge_one(&store, &three, t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(-3000)));
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
    // Expired: the slow path enforces, rejects, and removes the stale stamp.
    stamp(&table, &spk, &[("b_hits_soft", n(t0.0 - 1))]).await;
    let out = charge_one(&store, &one("s"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(-3000)));
    let item = get_item(&table, &spk).await.expect("bucket");
    assert!(!item.contains_key("b_hits_soft"));
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (-3000, 8000));
}

#[tokio::test]
async fn unsupported_markers_answer_unavailable() {
    let table = table_name("markers");
    let ns = setup(&table, &["ns"]).await.remove(0);
    // Stamps written behind the store's back: without the rejection cache, which would keep
    // rejecting from the last image for up to 1 s.
    let store = store_with(DynamoStoreOptions { rejection_cache: false, ..options(&table) }).await;
    let t0 = now();
    for (entity, attr, value) in [
        ("v", "vu", n(1)),
        ("q", "b_hits_gc", n(1)),
        ("w", "b_hits_rsa", n(60)),
        ("c", "rsched", AttributeValue::S("1m0h0".into())),
    ] {
        let two = request("ns", entity, "r", per_hour(2), &[strict(2)]);
        assert_eq!(admitted(&charge_one(&store, &two, t0).await), [true]);
        stamp(&table, &pk(&ns, entity, "r", 0), &[(attr, value)]).await;
        let one = request("ns", entity, "r", per_hour(2), &[strict(1)]);
        match try_charge(&store, &one, t0).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("does not implement"), "{attr}: {m}"),
            other => panic!("{attr}: {other:?}"),
        }
    }
    // vu = 0 is a forced slow pass, which zael does: the refill write removes it.
    let two = request("ns", "z", "r", per_hour(2), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &two, t0).await), [true]);
    let zpk = pk(&ns, "z", "r", 0);
    stamp(&table, &zpk, &[("vu", n(0))]).await;
    assert_eq!(admitted(&charge_one(&store, &two, t0).await), [true]);
    let item = get_item(&table, &zpk).await.expect("bucket");
    assert!(!item.contains_key("vu"));
    assert_eq!(num(&item, "b_hits_tk"), 0);
}

#[tokio::test]
async fn version_gate() {
    let c = client().await;
    // No version record: connect refuses.
    let table = table_name("noversion");
    zael_table::testing::create_table(&c, &table).await.expect("table");
    let err = DynamoStore::from_sdk_config(
        &zael_table::testing::local_sdk_config(&moto().endpoint, REGION).await,
        options(&table),
    )
    .await
    .expect_err("missing record");
    assert!(err.to_string().contains("no zae-limiter version record"), "{err}");
    // A ratcheted minimum, or another schema major: refused.
    for (schema, min, needle) in [("0.10.0", "0.18.0", ">= 0.18.0"), ("1.0.0", "0.0.0", "major")] {
        zael_table::testing::put_version_record(&c, &table, schema, min, Some("0.17.0")).await.expect("record");
        let err = DynamoStore::from_sdk_config(
            &zael_table::testing::local_sdk_config(&moto().endpoint, REGION).await,
            options(&table),
        )
        .await
        .expect_err("refused");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // Accepted at connect, then ratcheted while running: writes are refused after the TTL.
    let table = table_name("ratchet");
    setup(&table, &["ns"]).await;
    let store = store_with(DynamoStoreOptions { namespace_cache_ttl: Duration::ZERO, ..options(&table) }).await;
    let req = request("ns", "e", "r", per_hour(5), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &req, now()).await), [true]);
    zael_table::testing::put_version_record(&c, &table, "0.10.0", "0.17.1", Some("0.17.1")).await.expect("record");
    match try_charge(&store, &req, now()).await {
        Err(StoreError::Refused(m)) => assert!(m.contains(">= 0.17.1"), "{m}"),
        other => panic!("{other:?}"),
    }
    zael_table::testing::put_version_record(&c, &table, "0.10.0", "0.17.0", Some("0.17.0")).await.expect("record");
    assert_eq!(admitted(&charge_one(&store, &req, now()).await), [true]);
}

#[tokio::test]
async fn namespaces_missing_and_deleted() {
    let table = table_name("namespaces");
    setup(&table, &["live"]).await;
    let store = store_with(DynamoStoreOptions { namespace_cache_ttl: Duration::ZERO, ..options(&table) }).await;
    let missing = request("nope", "e", "r", per_hour(5), &[strict(1)]);
    match try_charge(&store, &missing, now()).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("namespace 'nope' is not registered"), "{m}"),
        other => panic!("{other:?}"),
    }
    let live = request("live", "e", "r", per_hour(5), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &live, now()).await), [true]);
    // A forward record that is not active.
    let c = client().await;
    c.update_item()
        .table_name(&table)
        .key("PK", AttributeValue::S("_/SYSTEM#".into()))
        .key("SK", AttributeValue::S("#NAMESPACE#live".into()))
        .update_expression("SET #s = :p")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":p", AttributeValue::S("purging".into()))
        .send()
        .await
        .expect("stamp status");
    match try_charge(&store, &live, now()).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("namespace 'live' is not active"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Deleted like the library deletes it.
    let table = table_name("deleted");
    setup(&table, &["gone"]).await;
    let store = store_with(DynamoStoreOptions { namespace_cache_ttl: Duration::ZERO, ..options(&table) }).await;
    let gone = request("gone", "e", "r", per_hour(5), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &gone, now()).await), [true]);
    zael_table::testing::delete_namespace(&c, &table, "gone").await.expect("delete");
    match try_charge(&store, &gone, now()).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("namespace 'gone' is not registered"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exhausted_wcu_doubles_the_shard_count() {
    let table = table_name("shards");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let one = request("ns", "hot", "r", per_hour(10), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &one, t0).await), [true]);
    let pk0 = pk(&ns, "hot", "r", 0);
    // A partition out of writes for the next 1000 s.
    stamp(&table, &pk0, &[("b_wcu_tk", n(-1_000_000_000))]).await;
    let out = charge_one(&store, &one, t0).await;
    assert!(out[0].admitted);
    assert_eq!(out[0].tokens, Millitokens(8000), "shard 1 holds 4 of its 5, reported x 2");
    let shard0 = get_item(&table, &pk0).await.expect("shard 0");
    assert_eq!(num(&shard0, "shard_count"), 2);
    let shard1 = get_item(&table, &pk(&ns, "hot", "r", 1)).await.expect("shard 1 created");
    assert_eq!(num(&shard1, "shard_count"), 2);
    assert_eq!((num(&shard1, "b_hits_tk"), num(&shard1, "b_hits_cp"), num(&shard1, "b_hits_tc")), (4000, 10_000, 1000));
    assert_eq!(shard1["GSI2SK"].as_s().expect("S"), "BUCKET#hot#1");
    assert!(get_item(&table, &pk(&ns, "hot", "r", 2)).await.is_none(), "never a shard >= shard_count");

    // With the partition restored, requests spread over both shards and retry the other
    // one when theirs is empty: shard 0 still holds 9 (the fast path does not clamp), shard 1 4.
    stamp(&table, &pk0, &[("b_wcu_tk", n(1_000_000))]).await;
    let mut admits = 0;
    for _ in 0..20 {
        admits += usize::from(charge_one(&store, &one, t0).await[0].admitted);
    }
    assert_eq!(admits, 13);
    let tk = |item: &Item| num(item, "b_hits_tk");
    assert_eq!(tk(&get_item(&table, &pk0).await.expect("0")), 0);
    assert_eq!(tk(&get_item(&table, &pk(&ns, "hot", "r", 1)).await.expect("1")), 0);
}

#[tokio::test]
async fn debt_charges_are_recorded_and_rejected() {
    let table = table_name("debt");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let bpk = pk(&ns, "e", "r", 0);
    let d5 = request("ns", "e", "r", per_hour(3), &[debt(5)]);
    let out = charge_one(&store, &d5, t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(-2000)));
    let item = get_item(&table, &bpk).await.expect("created in debt");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (-2000, 5000));

    let d1 = request("ns", "e", "r", per_hour(3), &[debt(1)]);
    let before = store.calls();
    let out = charge_one(&store, &d1, t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(-3000)));
    assert_eq!(diff(store.calls(), before), (2, 0, 0), "failed speculative write + unconditional debit");
    // At the floor: nothing more to record.
    let before = store.calls();
    let out = charge_one(&store, &d1, t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![false], Millitokens(-3000)));
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
    let s1 = request("ns", "e", "r", per_hour(3), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &s1, t0).await), [false]);
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (-3000, 6000));

    // A debt charge that fits is an ordinary admission.
    let d2 = request("ns", "fits", "r", per_hour(3), &[debt(2)]);
    assert_eq!(admitted(&charge_one(&store, &d2, t0).await), [true]);
}

#[tokio::test]
async fn several_charges_on_one_bucket_are_sequential_and_written_once() {
    let table = table_name("several");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let req = request("ns", "a", "r", per_hour(3), &[strict(2), strict(2), strict(1)]);
    let before = store.calls();
    let out = charge_one(&store, &req, t0).await;
    assert_eq!(admitted(&out), [true, false, true]);
    assert_eq!(out.iter().map(|o| o.tokens.0).collect::<Vec<_>>(), [1000, 1000, 0]);
    assert_eq!(diff(store.calls(), before).2, 1, "one create");
    let item = get_item(&table, &pk(&ns, "a", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (0, 3000));

    let first = request("ns", "b", "r", per_hour(10), &[strict(1)]);
    charge_one(&store, &first, t0).await;
    let both = request("ns", "b", "r", per_hour(10), &[strict(2), strict(3)]);
    let before = store.calls();
    let out = charge_one(&store, &both, t0).await;
    assert_eq!(admitted(&out), [true, true]);
    assert_eq!(out.iter().map(|o| o.tokens.0).collect::<Vec<_>>(), [7000, 4000]);
    assert_eq!(diff(store.calls(), before), (1, 0, 0), "one speculative write of the sum");
    let partial = request("ns", "b", "r", per_hour(10), &[strict(4), strict(5), strict(1)]);
    let before = store.calls();
    let out = charge_one(&store, &partial, t0).await;
    assert_eq!(admitted(&out), [true, false, false]);
    assert_eq!(
        diff(store.calls(), before),
        (2, 0, 0),
        "partial admission is written by one slow-path update, planned on the failed write's image"
    );
    let item = get_item(&table, &pk(&ns, "b", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (0, 10_000));

    // Several buckets in one call are answered in order.
    let x = request("ns", "x", "r", per_hour(1), &[strict(1)]);
    let y = request("ns", "y", "r", per_hour(1), &[strict(2)]);
    let out = store.charge(&[x, y], t0).await.expect("charge");
    assert_eq!((admitted(&out[0]), admitted(&out[1])), (vec![true], vec![false]));
}

#[tokio::test]
async fn sixteen_tasks_admit_exactly_the_capacity() {
    let table = table_name("sixteen");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let req = request("ns", "hot", "r", per_day(20), &[strict(1)]);
    let admits = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, req, admits) = (store.clone(), req.clone(), admits.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                if charge_one(&store, &req, t0).await[0].admitted {
                    admits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(admits.load(Ordering::Relaxed), 20);
    let item = get_item(&table, &pk(&ns, "hot", "r", 0)).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (0, 20_000));
}

#[tokio::test]
async fn yaml_limit_changes_are_synced_by_the_slow_path() {
    let table = table_name("sync");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let old = request("ns", "e", "r", per_hour(10), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &old, t0).await), [true]);
    // The limit shrinks to 4/hour: the pinned fast path fails, the slow path syncs and clamps.
    let new = request("ns", "e", "r", per_hour(4), &[strict(1)]);
    let out = charge_one(&store, &new, t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(3000)));
    let item = get_item(&table, &pk(&ns, "e", "r", 0)).await.expect("bucket");
    assert_eq!(
        (num(&item, "b_hits_cp"), num(&item, "b_hits_ra"), num(&item, "b_hits_rp"), num(&item, "b_hits_tk")),
        (4000, 4000, 3_600_000, 3000)
    );
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &new, t0).await), [true]);
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
}

#[tokio::test]
async fn every_call_has_a_deadline() {
    let table = table_name("deadline");
    setup(&table, &["ns"]).await;
    let store = store_with(DynamoStoreOptions { call_timeout: Duration::from_millis(300), ..options(&table) }).await;
    store.set_before_commit_hook(Some(hook(|_pk| Box::pin(tokio::time::sleep(Duration::from_secs(2))))));
    let req = request("ns", "e", "r", per_hour(5), &[strict(1)]);
    let started = std::time::Instant::now();
    match try_charge(&store, &req, now()).await {
        Err(StoreError::Timeout(300)) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn entities_with_metadata_are_refused_on_create() {
    let table = table_name("meta");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    client()
        .await
        .put_item()
        .table_name(&table)
        .item("PK", AttributeValue::S(format!("{ns}/ENTITY#child")))
        .item("SK", AttributeValue::S("#META".into()))
        .item("entity_id", AttributeValue::S("child".into()))
        .item("parent_id", AttributeValue::S("parent".into()))
        .item("cascade", AttributeValue::Bool(true))
        .send()
        .await
        .expect("meta");
    let req = request("ns", "child", "r", per_hour(5), &[strict(1)]);
    match try_charge(&store, &req, now()).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("#META"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(get_item(&table, &pk(&ns, "child", "r", 0)).await.is_none(), "the create was cancelled");
}

#[tokio::test]
async fn a_limit_missing_from_the_item_is_seeded_and_others_are_carried() {
    let table = table_name("seed");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let a = store(&table).await;
    let t0 = now();
    let one = request("ns", "e", "r", per_hour(10), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&a, &one, t0).await), [true]);
    // Make it an item of another client's limit `rpm` (half empty), without `hits`.
    let bpk = pk(&ns, "e", "r", 0);
    stamp(
        &table,
        &bpk,
        &[
            ("b_rpm_tk", n(2000)),
            ("b_rpm_cp", n(5000)),
            ("b_rpm_ra", n(5000)),
            ("b_rpm_rp", n(60_000)),
            ("b_rpm_tc", n(0)),
        ],
    )
    .await;
    remove_attrs(&table, &bpk, &["b_hits_tk", "b_hits_cp", "b_hits_ra", "b_hits_rp", "b_hits_tc"]).await;
    let t1 = EpochMillis(t0.0 + 12_000);
    let out = charge_one(&a, &one, t1).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(9000)));
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert_eq!(
        (
            num(&item, "b_hits_tk"),
            num(&item, "b_hits_cp"),
            num(&item, "b_hits_ra"),
            num(&item, "b_hits_rp"),
            num(&item, "b_hits_tc")
        ),
        (9000, 10_000, 10_000, 3_600_000, 1000)
    );
    assert_eq!(num(&item, "b_rpm_tk"), 3000, "the other limit is refilled under the same rf lock");
    assert_eq!(num(&item, "rf"), t1.0);
    // 7 x max(3600 s, 60 s, 1 s).
    assert_eq!(num(&item, "ttl"), t1.0.div_euclid(1000) + 25_200);

    // The same, losing the rf lock to another seeder: the retry debits the seeded balance.
    remove_attrs(&table, &bpk, &["b_hits_tk", "b_hits_cp", "b_hits_ra", "b_hits_rp", "b_hits_tc"]).await;
    let b = store(&table).await;
    let fired = Arc::new(AtomicBool::new(false));
    let t2 = EpochMillis(t1.0 + 1000);
    {
        let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
        a.set_before_commit_hook(Some(hook(move |_pk| {
            let (b, one, fired) = (b.clone(), one.clone(), fired.clone());
            Box::pin(async move {
                if !fired.swap(true, Ordering::SeqCst) {
                    assert_eq!(admitted(&charge_one(&b, &one, t2).await), [true]);
                }
            })
        })));
    }
    let out = charge_one(&a, &one, t2).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(8000)));
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (8000, 2000));
}

#[tokio::test]
async fn stamps_on_the_slow_path() {
    let table = table_name("slowstamps");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let one = |e: &str| request("ns", e, "r", per_hour(5), &[strict(1)]);

    // A live bypass on an item whose ttl has passed: the slow path counts tc only.
    assert_eq!(admitted(&charge_one(&store, &one("b"), t0).await), [true]);
    let bpk = pk(&ns, "b", "r", 0);
    stamp(&table, &bpk, &[("bypass", n(t0.0 + 60_000)), ("ttl", n(1))]).await;
    let fresh = store_with(options(&table)).await;
    let out = charge_one(&fresh, &one("b"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(4000)));
    let item = get_item(&table, &bpk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc"), num(&item, "ttl")), (4000, 2000, 1));

    // An expired soft stamp with room: admitted by the slow path, which removes the stamp.
    assert_eq!(admitted(&charge_one(&store, &one("s"), t0).await), [true]);
    let spk = pk(&ns, "s", "r", 0);
    stamp(&table, &spk, &[("b_hits_soft", n(t0.0 - 1))]).await;
    let out = charge_one(&store, &one("s"), t0).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(3000)));
    let item = get_item(&table, &spk).await.expect("bucket");
    assert!(!item.contains_key("b_hits_soft"));
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (3000, 2000));
}

#[tokio::test]
async fn doubling_propagates_the_new_count_to_existing_shards() {
    let table = table_name("propagate");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store(&table).await;
    let t0 = now();
    let one = request("ns", "hot", "r", per_hour(100), &[strict(1)]);
    assert!(charge_one(&store, &one, t0).await[0].admitted);
    let pk0 = pk(&ns, "hot", "r", 0);
    stamp(&table, &pk0, &[("b_wcu_tk", n(-1_000_000_000))]).await;
    assert!(charge_one(&store, &one, t0).await[0].admitted);
    assert_eq!(num(&get_item(&table, &pk(&ns, "hot", "r", 1)).await.expect("shard 1"), "shard_count"), 2);
    // Shard 0 is still out of writes: the next request drawn there doubles 2 -> 4.
    for _ in 0..60 {
        assert!(charge_one(&store, &one, t0).await[0].admitted);
        if num(&get_item(&table, &pk0).await.expect("shard 0"), "shard_count") == 4 {
            break;
        }
    }
    assert_eq!(num(&get_item(&table, &pk0).await.expect("shard 0"), "shard_count"), 4);
    assert_eq!(num(&get_item(&table, &pk(&ns, "hot", "r", 1)).await.expect("shard 1"), "shard_count"), 4, "propagated");
    let created: Vec<i64> = {
        let mut v = Vec::new();
        for s in 2..6 {
            if let Some(item) = get_item(&table, &pk(&ns, "hot", "r", s)).await {
                assert_eq!(num(&item, "shard_count"), 4);
                assert_eq!(num(&item, "b_hits_cp"), 100_000, "cp stays undivided");
                v.push(s);
            }
        }
        v
    };
    assert!(!created.is_empty() && created.iter().all(|s| *s < 4), "{created:?}");
}

#[tokio::test]
async fn the_buckets_of_one_call_are_charged_concurrently() {
    let table = table_name("concurrent");
    setup(&table, &["ns"]).await;
    let store = store(&table).await;
    // Warm the namespace and version caches.
    charge_one(&store, &request("ns", "warm", "r", per_hour(5), &[strict(1)]), now()).await;
    // Every slow path waits 400 ms between its read and its commit.
    store.set_before_commit_hook(Some(hook(|_pk| Box::pin(tokio::time::sleep(Duration::from_millis(400))))));
    let requests: Vec<_> = (0..4).map(|i| request("ns", &format!("e{i}"), "r", per_hour(5), &[strict(1)])).collect();
    let started = std::time::Instant::now();
    let out = store.charge(&requests, now()).await.expect("charge");
    let took = started.elapsed();
    assert_eq!(out.iter().map(|o| admitted(o)).collect::<Vec<_>>(), vec![vec![true]; 4]);
    // Sequential would be at least 4 x 400 ms; concurrent is the slowest bucket.
    assert!(took < Duration::from_millis(1200), "took {took:?}");
}

#[tokio::test]
async fn the_rejection_cache_answers_repeated_rejections_without_calls_for_at_most_a_second() {
    let table = table_name("rejcache");
    setup(&table, &["ns"]).await;
    let store = store(&table).await;
    let one = request("ns", "e", "r", per_day(2), &[strict(1)]);
    assert_eq!(admitted(&charge_one(&store, &one, now()).await), [true]);
    // The second admit's ALL_NEW image shows the bucket empty.
    assert_eq!(admitted(&charge_one(&store, &one, now()).await), [true]);

    let before = store.calls();
    for _ in 0..3 {
        let out = charge_one(&store, &one, now()).await;
        assert_eq!(admitted(&out), [false]);
        assert!(out[0].tokens.0 < 1000, "{out:?}");
    }
    // Two identical descriptors of one request: every charge strict, every one rejected.
    let two = request("ns", "e", "r", per_day(2), &[strict(1), strict(2)]);
    assert_eq!(admitted(&charge_one(&store, &two, now()).await), [false, false]);
    assert_eq!(diff(store.calls(), before), (0, 0, 0), "rejected from memory");
    assert_eq!(store.rejection_cache_hits(), 4);

    // Check-only and debt charges always reach the table.
    let before = store.calls();
    let check = request("ns", "e", "r", per_day(2), &[strict(0)]);
    assert_eq!(admitted(&charge_one(&store, &check, now()).await), [true], "a balance of 0 passes a check");
    assert_eq!(diff(store.calls(), before).0, 1);
    let before = store.calls();
    let debit = request("ns", "e", "r", per_day(2), &[debt(1)]);
    assert_eq!(admitted(&charge_one(&store, &debit, now()).await), [false]);
    assert!(diff(store.calls(), before).0 >= 1, "a debt charge is written");
    assert_eq!(store.rejection_cache_hits(), 4);

    // Past the trust window the table is asked again (and the answer is remembered again).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &one, now()).await), [false]);
    assert_eq!(diff(store.calls(), before), (1, 0, 0), "one failed speculative write");
    assert_eq!(store.rejection_cache_hits(), 4);
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &one, now()).await), [false]);
    assert_eq!(diff(store.calls(), before), (0, 0, 0));
    assert_eq!(store.rejection_cache_hits(), 5);

    // A changed YAML limit is not judged by an image under the old one.
    let before = store.calls();
    let more = request("ns", "e", "r", per_day(20), &[strict(1)]);
    charge_one(&store, &more, now()).await;
    assert!(diff(store.calls(), before).0 >= 1, "the slow path syncs the new limit");
    assert_eq!(store.rejection_cache_hits(), 5);
}

#[tokio::test]
async fn the_rejection_cache_judges_each_cost_on_the_projected_balance() {
    let table = table_name("rejcost");
    setup(&table, &["ns"]).await;
    let store = store(&table).await;
    let req = |cost| request("ns", "e", "r", per_hour(10), &[strict(cost)]);
    assert_eq!(admitted(&charge_one(&store, &req(1), now()).await), [true]);
    assert_eq!(admitted(&charge_one(&store, &req(7), now()).await), [true]);
    // 2 tokens left: a charge of 3 is rejected from memory, a charge of 2 goes to the table.
    let before = store.calls();
    let out = charge_one(&store, &req(3), now()).await;
    assert_eq!(admitted(&out), [false]);
    assert!((2000..2100).contains(&out[0].tokens.0), "{out:?}");
    assert_eq!(diff(store.calls(), before), (0, 0, 0));
    assert_eq!(store.rejection_cache_hits(), 1);
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &req(2), now()).await), [true]);
    assert_eq!(diff(store.calls(), before), (1, 0, 0));
    // Now empty: even one token is rejected from memory.
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &req(1), now()).await), [false]);
    assert_eq!(diff(store.calls(), before), (0, 0, 0));
    assert_eq!(store.rejection_cache_hits(), 2);

    // A bucket this store created empty is known short too.
    let other = |cost| request("ns", "e2", "r", per_hour(10), &[strict(cost)]);
    assert_eq!(admitted(&charge_one(&store, &other(10), now()).await), [true]);
    let before = store.calls();
    assert_eq!(admitted(&charge_one(&store, &other(1), now()).await), [false]);
    assert_eq!(diff(store.calls(), before), (0, 0, 0));
    assert_eq!(store.rejection_cache_hits(), 3);
}

#[tokio::test]
async fn on_unavailable_is_read_from_the_namespace_system_config() {
    let table = table_name("policy");
    let ids = setup(&table, &["open", "closed", "unset"]).await;
    let c = client().await;
    zael_table::testing::put_system_config(&c, &table, &ids[0], Some("allow")).await.expect("config");
    zael_table::testing::put_system_config(&c, &table, &ids[1], Some("block")).await.expect("config");
    zael_table::testing::put_system_config(&c, &table, &ids[2], None).await.expect("config");
    let store =
        store_with(DynamoStoreOptions { namespace_cache_ttl: Duration::from_millis(200), ..options(&table) }).await;
    assert_eq!(store.on_unavailable("open"), None, "not loaded before the namespace is used");
    for ns in ["open", "closed", "unset"] {
        charge_one(&store, &request(ns, "e", "r", per_hour(5), &[strict(1)]), now()).await;
    }
    assert_eq!(store.on_unavailable("open"), Some(OnUnavailable::Allow));
    assert_eq!(store.on_unavailable("closed"), Some(OnUnavailable::Block));
    assert_eq!(store.on_unavailable("unset"), Some(OnUnavailable::Block), "the default");
    assert_eq!(store.on_unavailable("other"), None);

    // Changed by an operator: picked up by the background refresh after the cache TTL.
    zael_table::testing::put_system_config(&c, &table, &ids[0], Some("block")).await.expect("config");
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        charge_one(&store, &request("open", "e", "r", per_hour(5), &[strict(0)]), now()).await;
        seen = store.on_unavailable("open");
        if seen == Some(OnUnavailable::Block) {
            break;
        }
    }
    assert_eq!(seen, Some(OnUnavailable::Block));
}

#[tokio::test]
async fn a_failed_bucket_keeps_the_answers_of_the_others() {
    let table = table_name("partial");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let store = store_with(DynamoStoreOptions { rejection_cache: false, ..options(&table) }).await;
    let good = request("ns", "good", "r", per_hour(5), &[strict(1)]);
    // A bucket with a feature zael does not implement: it could not be charged.
    let odd = request("ns", "odd", "r", per_hour(5), &[strict(1)]);
    charge_one(&store, &request("ns", "odd", "r", per_hour(5), &[strict(5)]), now()).await;
    stamp(&table, &pk(&ns, "odd", "r", 0), &[("b_hits_gc", n(1))]).await;
    match store.charge(&[good.clone(), odd.clone()], now()).await {
        Err(e @ StoreError::Partial { .. }) => {
            assert!(e.may_fail_open(), "{e}");
            let known = e.into_known(2);
            assert_eq!(known[0].as_ref().map(|o| admitted(o)), Some(vec![true]));
            assert!(known[1].is_none());
        }
        other => panic!("{other:?}"),
    }
    // An unknown namespace is a refusal: never failed open, even next to an answer.
    let stranger = request("nope", "e", "r", per_hour(5), &[strict(1)]);
    match store.charge(&[odd, good, stranger], now()).await {
        Err(e @ StoreError::Partial { .. }) => {
            assert!(!e.may_fail_open(), "{e}");
            assert!(e.to_string().contains("namespace 'nope'"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Every bucket failed: the error itself.
    match store.charge(&[request("nope", "e", "r", per_hour(5), &[strict(1)])], now()).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("not registered"), "{m}"),
        other => panic!("{other:?}"),
    }
}

//! A burst on a bucket kept over its limit, against moto: the decisions arriving when a token
//! has refilled do not all race to the table for it (`store/near_empty.rs`); the answer stays
//! exact and the requests stay a few per refilled token.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zael_core::bucket::{BucketLimit, Millitokens};
use zael_core::store::{BucketStore, EntityOutcome, EntityRequest};

/// The tests here measure requests against time on one moto: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_burst_on_an_exhausted_bucket_costs_a_few_requests_per_refilled_token() {
    let _one = ONE_AT_A_TIME.lock().await;
    const BURST: u64 = 300;
    let table = table_name("near-empty");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#e#burst#0");
    let store = store(&table).await;
    // 5 tokens, 5 more a second.
    let one = request("ns", "e", "burst", BucketLimit::per_period(5, 5, 1), &[strict(1)]);
    let started = Instant::now();
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(charge_one(&store, &one, now()).await.remove(0).admitted);
    }
    assert_eq!(first.iter().filter(|a| **a).count(), 5 + usize::from(first[5]), "the capacity, and what refilled");
    let before = store.calls();
    // 300 decisions over about 1.5 s, each when it arrives; all of them in flight together
    // whenever the table is slower than 5 ms.
    let decisions = (0..BURST).map(|i| {
        let (store, one) = (&store, &one);
        async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            try_charge(store, one, now()).await.map(|o| o[0].admitted)
        }
    });
    let answers = futures_util::future::join_all(decisions).await;
    let elapsed = started.elapsed();
    let calls = store.calls();
    let requests = (calls.update_item - before.update_item)
        + (calls.get_item - before.get_item)
        + (calls.transact_write_items - before.transact_write_items);
    let errors = answers.iter().filter(|a| a.is_err()).count();
    let admitted = answers.iter().filter(|a| matches!(a, Ok(true))).count() + first.iter().filter(|a| **a).count();
    // The bucket allows its capacity plus 5 a second since the first decision.
    let allowed = 5 + (elapsed.as_millis() as usize * 5).div_ceil(1000);
    let item = get_item(&table, &pk).await.expect("bucket");
    eprintln!(
        "{admitted} admitted of {allowed} allowed in {elapsed:?}; {requests} requests for {BURST} decisions; tc {}",
        num(&item, "b_hits_tc")
    );
    assert_eq!(errors, 0, "every decision answered");
    assert!(admitted <= allowed, "{admitted} admitted, the bucket allows {allowed}");
    assert_eq!(num(&item, "b_hits_tc"), admitted as i64 * 1000, "tc counts exactly what was admitted");
    // About 8 tokens refill during the burst; each costs a speculative write, a read and a
    // commit at most, and a rejection between tokens costs nothing. Without the gate every
    // decision arriving after a refill goes to the table (hundreds of requests here).
    assert!(requests <= 60, "{requests} requests for {BURST} decisions of about 8 refilled tokens");
    assert!(admitted >= 5 + 2, "the refill was admitted too: {admitted}");
}

/// A bucket kept over its limit, decided one decision after another: each token that refills
/// is admitted with one write (the slow pass's `rf`-locked write planned on the image the
/// rejection cache holds, no speculative write bound to fail on the un-refilled `tk`, no
/// read), and the decision after it is rejected from the cache with none.
#[tokio::test]
async fn a_refilled_token_of_a_bucket_kept_over_its_limit_costs_one_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let table = table_name("near-empty-trickle");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#e#trickle#0");
    let store = store(&table).await;
    // 5 tokens, 5 more a second: one every 200 ms.
    let one = request("ns", "e", "trickle", BucketLimit::per_period(5, 5, 1), &[strict(1)]);
    let mut admitted = 0_i64;
    while charge_one(&store, &one, now()).await[0].admitted {
        admitted += 1;
    }
    let before = store.calls();
    let mut refilled = 0;
    for cycle in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // 1.25 tokens since, and what was left under a token: one or two admitted.
        let mut this = 0;
        while charge_one(&store, &one, now()).await[0].admitted {
            this += 1;
        }
        assert!((1..=2).contains(&this), "cycle {cycle}: {this} admitted");
        refilled += this;
    }
    admitted += refilled;
    let calls = store.calls();
    let (writes, reads) = (calls.update_item - before.update_item, calls.get_item - before.get_item);
    assert_eq!((writes, reads), (refilled as u64, 0), "one write per refilled token, none per rejection, no read");
    let item = get_item(&table, &pk).await.expect("bucket");
    assert_eq!(num(&item, "b_hits_tc"), admitted * 1000, "tc counts exactly what was admitted");
}

/// The burst of the first test on an entity bucket (a stored limit of 5 tokens and 5 a
/// second): the entity path is gated near empty too.
#[tokio::test]
async fn a_burst_on_an_exhausted_entity_bucket_costs_a_few_requests_per_refilled_token() {
    let _one = ONE_AT_A_TIME.lock().await;
    const BURST: u64 = 300;
    const ENTITIES: &str =
        "namespaces:\n  tenant:\n    entities:\n      burst: {resources: {gpt-4: {limits: [\"rpm:5/sec\"]}}}\n";
    let table = table_name("near-empty-entity");
    load_entities(&table, ENTITIES).await;
    let ns = namespace_id(&table, "tenant").await;
    let store = store(&table).await;
    let request = EntityRequest {
        namespace: "tenant".into(),
        entity: "burst".into(),
        resource: "gpt-4".into(),
        consume: vec![(Arc::<str>::from("rpm"), Millitokens::from_tokens(1))],
        reserve: true,
    };
    let acquire = |store: &zael_table::DynamoStore| {
        let (store, request) = (store.clone(), request.clone());
        async move {
            match store.acquire(std::slice::from_ref(&request), now()).await.pop().expect("one") {
                Ok(EntityOutcome::Admitted(_)) => Ok(true),
                Ok(EntityOutcome::Rejected(_)) => Ok(false),
                other => Err(format!("{other:?}")),
            }
        }
    };
    let started = Instant::now();
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(acquire(&store).await.expect("answered"));
    }
    assert_eq!(first.iter().filter(|a| **a).count(), 5 + usize::from(first[5]), "the capacity, and what refilled");
    let before = store.calls();
    let decisions = (0..BURST).map(|i| {
        let acquire = &acquire;
        let store = &store;
        async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            acquire(store).await
        }
    });
    let answers = futures_util::future::join_all(decisions).await;
    let elapsed = started.elapsed();
    let calls = store.calls();
    let requests = (calls.update_item - before.update_item)
        + (calls.get_item - before.get_item)
        + (calls.batch_get_item - before.batch_get_item)
        + (calls.transact_write_items - before.transact_write_items);
    let errors: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    let admitted = answers.iter().filter(|a| matches!(a, Ok(true))).count() + first.iter().filter(|a| **a).count();
    let allowed = 5 + (elapsed.as_millis() as usize * 5).div_ceil(1000);
    let item = get_item(&table, &format!("{ns}/BUCKET#burst#gpt-4#0")).await.expect("bucket");
    eprintln!(
        "{admitted} admitted of {allowed} allowed in {elapsed:?}; {requests} requests for {BURST} decisions; tc {}",
        num(&item, "b_rpm_tc")
    );
    assert!(errors.is_empty(), "every decision answered: {errors:?}");
    assert!(admitted <= allowed, "{admitted} admitted, the bucket allows {allowed}");
    assert_eq!(num(&item, "b_rpm_tc"), admitted as i64 * 1000, "tc counts exactly what was admitted");
    assert!(requests <= 60, "{requests} requests for {BURST} decisions of about 8 refilled tokens");
    assert!(admitted >= 5 + 2, "the refill was admitted too: {admitted}");
}

//! Token reservations on entity buckets (stored limits, cascade, the native API's lease opens)
//! against moto and the Python library: never more admitted than the buckets allow, every
//! token accounted for in `tk` and `tc`, answers as the per-decision path would give them.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use zael_core::bucket::{EpochMillis, Millitokens};
use zael_core::reserve::ReserveOptions;
use zael_core::store::{BucketStore, EntityOutcome, EntityRequest, LeaseOpened, LeaseRequest, StoreError};
use zael_table::DynamoStore;

/// Per-day limits: refill is negligible over a test's run time.
const ENTITIES: &str = r#"
namespaces:
  tenant:
    entities:
      org: {resources: {gpt-4: {limits: ["rpm:600/day"]}}}
      app-1: {parent: org, cascade: true, resources: {gpt-4: {limits: ["rpm:400/day", "tpm:40000/day"]}}}
      app-2: {parent: org, cascade: true, resources: {gpt-4: {limits: ["rpm:400/day", "tpm:40000/day"]}}}
      solo: {resources: {gpt-4: {limits: ["rpm:1000/day", "tpm:100000/day"]}}}
      over-on: {resources: {gpt-4: {limits: ["rpm:20/sec:100"]}}}
      over-off: {resources: {gpt-4: {limits: ["rpm:20/sec:100"]}}}
      emptied: {resources: {gpt-4: {limits: ["rpm:100/day"]}}}
"#;

/// The two tests that load moto the most run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn entities_table(test: &str) -> (String, String) {
    let table = table_name(test);
    load_entities(&table, ENTITIES).await;
    let ns = namespace_id(&table, "tenant").await;
    (table, ns)
}

/// A store reserving blocks of one `horizon_ms` of demand once a bucket sees `min_rate`
/// tokens a second.
async fn store_reserving(table: &str, horizon_ms: i64, min_rate: u64) -> DynamoStore {
    let reservations = ReserveOptions {
        horizon_ms,
        min_rate: Millitokens::from_tokens(min_rate),
        max_block: Millitokens::from_tokens(10_000),
    };
    store_with(zael_table::DynamoStoreOptions { reservations: Some(reservations), ..options(table) }).await
}

async fn reserving_store(table: &str) -> DynamoStore {
    store_reserving(table, 1000, 5).await
}

/// Reserves a bucket that one caller drives one decision after another even when moto is slow
/// (a loaded CI run answers a call in 250 ms or more: 4 decisions a second, and a 1 s horizon
/// of that is below the smallest block, so every decision would go to the table).
async fn patient_store(table: &str) -> DynamoStore {
    store_reserving(table, 3000, 1).await
}

fn consume(entity: &str, amounts: &[(&str, u64)]) -> EntityRequest {
    EntityRequest {
        namespace: "tenant".into(),
        entity: entity.into(),
        resource: "gpt-4".into(),
        consume: amounts.iter().map(|(n, a)| (Arc::<str>::from(*n), Millitokens::from_tokens(*a))).collect(),
        reserve: true,
    }
}

/// `tk` and `tc` of one limit of an entity's bucket.
async fn balance_and_usage(table: &str, ns: &str, entity: &str, limit: &str) -> (i64, i64) {
    let item = get_item(table, &format!("{ns}/BUCKET#{entity}#gpt-4#0")).await.expect("bucket");
    (num(&item, &format!("b_{limit}_tk")), num(&item, &format!("b_{limit}_tc")))
}

/// What a per-day limit of `capacity` tokens may have refilled in `elapsed`, in millitokens:
/// a write that moves the bucket's `rf` (a slow pass on either side) adds the refill since the
/// last one, so the stored `tk` is above what is left by at most this (and a token of rounding).
fn refill_per_day(capacity: i64, elapsed: std::time::Duration) -> i64 {
    (elapsed.as_millis() as u64 * capacity as u64 * 1000).div_ceil(86_400_000) as i64 + 1000
}

fn writes(stores: &[DynamoStore]) -> u64 {
    stores.iter().map(|s| s.calls().update_item + s.calls().transact_write_items).sum()
}

/// `tasks` tasks per store, each making `calls` acquires of `request`; the admissions.
async fn hammer(stores: &[DynamoStore], tasks: usize, calls: usize, request: &EntityRequest) -> usize {
    hammer_while(stores, tasks, request, move |made| made < calls).await
}

/// `tasks` tasks per store, each making acquires of `request` one after another until
/// `until`; the admissions.
async fn hammer_until(
    stores: &[DynamoStore],
    tasks: usize,
    until: tokio::time::Instant,
    request: &EntityRequest,
) -> usize {
    hammer_while(stores, tasks, request, move |_| tokio::time::Instant::now() < until).await
}

/// `tasks` tasks per store, each making acquires of `request` while `more(acquires made so
/// far)`; the admissions. An acquire answered UNAVAILABLE because its bucket stayed contended
/// through every slow pass (a loaded moto widens the race between a pass's read and its commit)
/// wrote nothing and counts as not admitted; any other error fails the test.
async fn hammer_while(
    stores: &[DynamoStore],
    tasks: usize,
    request: &EntityRequest,
    more: impl Fn(usize) -> bool + Copy + Send + 'static,
) -> usize {
    let admitted = Arc::new(AtomicUsize::new(0));
    let contended = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for store in stores {
        for _ in 0..tasks {
            let (store, request, admitted, contended) =
                (store.clone(), request.clone(), admitted.clone(), contended.clone());
            handles.push(tokio::spawn(async move {
                let mut made = 0;
                while more(made) {
                    made += 1;
                    match store.acquire(std::slice::from_ref(&request), now()).await.pop().expect("one") {
                        Ok(EntityOutcome::Admitted(_)) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(EntityOutcome::Rejected(_)) => {}
                        Err(StoreError::Unavailable(m)) if m.contains("stayed contended") => {
                            contended.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.expect("task");
    }
    eprintln!("{} acquires answered unavailable (contended)", contended.load(Ordering::Relaxed));
    admitted.load(Ordering::Relaxed)
}

/// Steady over-limit traffic on an entity bucket (stored limits, 100 tokens and 20 a second)
/// from two servers: with reservations, the admitted total is never above the bucket's
/// allowance and at least 99 % of what the per-decision path admits on a twin entity in the
/// same run (ZAEL_RESERVE_SECONDS, 60 by default); `tc` counts every admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_entity_reservations_admit_what_the_per_decision_path_admits() {
    let _heavy = HEAVY.lock().await;
    let seconds: u64 = std::env::var("ZAEL_RESERVE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let (table, ns) = entities_table("reserve-entity-over").await;
    let on = [reserving_store(&table).await, reserving_store(&table).await];
    let off = [store(&table).await, store(&table).await];
    let started = tokio::time::Instant::now();
    let until = started + std::time::Duration::from_secs(seconds);
    let (on_request, off_request) = (consume("over-on", &[("rpm", 1)]), consume("over-off", &[("rpm", 1)]));
    let (reserved, per_decision) =
        tokio::join!(hammer_until(&on, 8, until, &on_request), hammer_until(&off, 8, until, &off_request));
    let elapsed = started.elapsed().as_secs_f64();
    let allowance = 100.0 + 20.0 * elapsed;
    eprintln!(
        "entity over {elapsed:.1} s: reserved {reserved} with {} writes, per decision {per_decision} with {} writes, allowance {allowance:.0}",
        writes(&on),
        writes(&off)
    );
    assert!(reserved as f64 <= allowance, "reserved {reserved} > allowance {allowance}");
    assert!(per_decision as f64 <= allowance, "per decision {per_decision} > allowance {allowance}");
    assert!(reserved as f64 >= 0.99 * per_decision as f64, "reserved {reserved} < 99 % of {per_decision}");
    for store in &on {
        assert_eq!(store.close().await.1, 0, "nothing stranded");
    }
    for (entity, admitted) in [("over-on", reserved), ("over-off", per_decision)] {
        let (tk, tc) = balance_and_usage(&table, &ns, entity, "rpm").await;
        assert_eq!(tc, admitted as i64 * 1000, "{entity}: tc counts what was admitted (tk {tk})");
    }
}

/// An entity bucket another writer emptied: at most one block of this server is refused, and
/// from the shard as it or the rejection cache last saw it the server takes no other, so the
/// decisions its held tokens do not cover are rejected per decision (mostly from the cache).
#[tokio::test]
async fn an_entity_bucket_emptied_by_another_writer_is_decided_per_decision() {
    let (table, ns) = entities_table("reserve-entity-emptied").await;
    let (reserving, plain) = (reserving_store(&table).await, store(&table).await);
    let request = consume("emptied", &[("rpm", 1)]);
    let admitted = |outcome: Result<EntityOutcome, StoreError>| match outcome {
        Ok(EntityOutcome::Admitted(_)) => true,
        Ok(EntityOutcome::Rejected(_)) => false,
        other => panic!("{other:?}"),
    };
    let acquire = |store: &DynamoStore| {
        let (store, request) = (store.clone(), request.clone());
        async move { store.acquire(std::slice::from_ref(&request), now()).await.pop().expect("one") }
    };
    let mut total = 0_i64;
    for _ in 0..20 {
        assert!(admitted(acquire(&reserving).await));
        total += 1;
    }
    assert!(balance_and_usage(&table, &ns, "emptied", "rpm").await.1 > 20_000, "a block is held");
    while admitted(acquire(&plain).await) {
        total += 1;
    }
    let Emptied { held, rejected, reads, writes } =
        after_emptied(&reserving, || async { admitted(acquire(&reserving).await) }).await;
    assert!(rejected >= 50, "rejected {rejected}");
    assert!(reads <= 1, "{reads} reads: a slow pass per refused block ({writes} writes)");
    assert!(writes <= 5, "{writes} writes for {rejected} rejections");
    assert_eq!(reserving.close().await, (0, 0), "nothing held after the held tokens were used");
    let (tk, tc) = balance_and_usage(&table, &ns, "emptied", "rpm").await;
    total += held;
    assert_eq!(tc, total * 1000, "tc counts what was admitted");
    assert!((0..100).contains(&(tk - (100 - total) * 1000)), "tk {tk}, admitted {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reserving_stores_and_the_library_never_admit_more_than_an_entity_allows() {
    let _heavy = HEAVY.lock().await;
    let started = std::time::Instant::now();
    let (table, ns) = entities_table("reserve-entity").await;
    let stores = [reserving_store(&table).await, reserving_store(&table).await];
    let request = consume("solo", &[("rpm", 1), ("tpm", 10)]);
    let args = ["entity-hammer", &table, "tenant", "solo", "gpt-4", r#"{"rpm": 1, "tpm": 10}"#, "300", "4"];
    let python = tokio::spawn(oracle_owned(args.map(String::from).to_vec()));
    let rust = hammer(&stores, 16, 40, &request).await;
    let library: serde_json::Value = serde_json::from_str(&python.await.expect("python")).expect("json");
    let py = library["admitted"].as_u64().expect("admitted") as usize;
    let writes = writes(&stores);
    eprintln!("admitted: zael {rust} with {writes} writes for 1280 acquires, library {py}");
    assert!(rust + py <= 1000, "zael {rust} + library {py} > 1000");
    assert!(rust > 0 && py > 0, "both sides admitted");
    assert!(writes < rust as u64, "acquires were answered from blocks: {writes} writes for {rust} admits");
    for store in &stores {
        assert_eq!(store.close().await.1, 0, "nothing stranded");
    }
    let admitted = (rust + py) as i64;
    for (limit, amount, capacity) in [("rpm", 1, 1000), ("tpm", 10, 100_000)] {
        let (tk, tc) = balance_and_usage(&table, &ns, "solo", limit).await;
        assert_eq!(
            tc,
            admitted * amount * 1000,
            "{limit}: tc counts what was admitted (zael {rust}, library {py}; tk {tk}, writes {writes})"
        );
        let left = (capacity - admitted * amount) * 1000;
        let refill = refill_per_day(capacity, started.elapsed());
        assert!((left..=left + refill).contains(&tk), "{limit}: tk {tk}, {left} left, refill up to {refill}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_children_on_two_stores_never_exceed_the_parent_and_every_token_is_counted() {
    let _heavy = HEAVY.lock().await;
    let started = std::time::Instant::now();
    let (table, ns) = entities_table("reserve-cascade").await;
    let stores = [reserving_store(&table).await, reserving_store(&table).await];
    let one = consume("app-1", &[("rpm", 1), ("tpm", 1)]);
    let two = consume("app-2", &[("rpm", 1), ("tpm", 1)]);
    let args = ["entity-hammer", &table, "tenant", "app-1", "gpt-4", r#"{"rpm": 1, "tpm": 1}"#, "100", "4"];
    let python = tokio::spawn(oracle_owned(args.map(String::from).to_vec()));
    // 480 attempts per child against 400 each and 600 for both together: 160 each while the
    // parent has room (blocks answer most), then 318 each into the parent's limit.
    // One acquire per child per store first: each store learns where the child cascades.
    let (warm_1, warm_2) = tokio::join!(hammer(&stores, 1, 1, &one), hammer(&stores, 1, 1, &two));
    let warm_writes = writes(&stores);
    let (early_1, early_2) = tokio::join!(hammer(&stores, 8, 10, &one), hammer(&stores, 8, 10, &two));
    let early_writes = writes(&stores) - warm_writes;
    let (early_1, early_2) = (early_1 + warm_1, early_2 + warm_2);
    let (late_1, late_2) = tokio::join!(hammer(&stores, 3, 53, &one), hammer(&stores, 3, 53, &two));
    let (first, second) = (early_1 + late_1, early_2 + late_2);
    let library: serde_json::Value = serde_json::from_str(&python.await.expect("python")).expect("json");
    let py = library["admitted"].as_u64().expect("admitted") as usize;
    let writes = writes(&stores);
    eprintln!(
        "admitted: app-1 {first} + library {py}, app-2 {second}; {early_writes} writes for the first {} admits, {writes} in all",
        early_1 + early_2
    );
    assert!(first + second + py <= 600, "{first} + {second} + {py} > the parent's 600");
    assert!(first + py <= 400 && second <= 400, "a child's own limit");
    assert!(
        early_writes * 2 < (early_1 + early_2) as u64,
        "acquires with room in the parent were answered from blocks: {early_writes} writes for {} admits",
        early_1 + early_2
    );
    for store in &stores {
        assert_eq!(store.close().await.1, 0, "nothing stranded");
    }
    let counted = [("app-1", first + py), ("app-2", second), ("org", first + second + py)];
    for (entity, admitted) in counted {
        let (tk, tc) = balance_and_usage(&table, &ns, entity, "rpm").await;
        assert_eq!(tc, admitted as i64 * 1000, "{entity}: tc counts what was admitted (tk {tk})");
    }
    let (org_tk, _) = balance_and_usage(&table, &ns, "org", "rpm").await;
    let left = (600 - (first + second + py) as i64) * 1000;
    let refill = refill_per_day(600, started.elapsed());
    assert!((left..=left + refill).contains(&org_tk), "org: tk {org_tk}, {left} left, refill up to {refill}");
}

/// A burst on a cascading child whose buckets another server created, on a server that has
/// never seen it (a restart, a new replica): the first block write teaches it the parent while
/// the burst's decisions wait on it, and none of those (prepared without the parent) is
/// answered from the child's pool alone: the parent's `tc` counts every admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_cascading_child_new_to_a_server_charges_the_parent_for_every_admission() {
    let (table, ns) = entities_table("reserve-cascade-cold").await;
    let request = consume("app-1", &[("rpm", 1)]);
    assert_eq!(hammer(&[store(&table).await], 1, 1, &request).await, 1, "the buckets exist");
    let store = reserving_store(&table).await;
    let admitted = hammer(std::slice::from_ref(&store), 16, 10, &request).await;
    assert_eq!(admitted, 160, "the parent (600) and the child (400) have room for all");
    assert_eq!(store.close().await.1, 0, "nothing stranded");
    for entity in ["app-1", "org"] {
        let (tk, tc) = balance_and_usage(&table, &ns, entity, "rpm").await;
        assert_eq!(tc, 161_000, "{entity}: tc counts every admission (tk {tk})");
    }
    let (org_tk, _) = balance_and_usage(&table, &ns, "org", "rpm").await;
    assert!((439_000..=440_000).contains(&org_tk), "org: tk {org_tk}, 439 left");
}

#[tokio::test]
async fn local_answers_report_what_the_per_decision_path_would_and_lease_opens_use_them() {
    let (table, ns) = entities_table("reserve-entity-honest").await;
    let store = patient_store(&table).await;
    let request = consume("solo", &[("rpm", 1), ("tpm", 10)]);
    let before = store.calls();
    let started = std::time::Instant::now();
    for i in 1..=100_i64 {
        let outcome = store.acquire(std::slice::from_ref(&request), now()).await.pop().expect("one").expect("ok");
        let EntityOutcome::Admitted(reports) = outcome else { panic!("{outcome:?}") };
        let rows: Vec<_> =
            reports.iter().map(|r| (r.entity.as_str(), r.name.as_str(), r.requested, r.exceeded)).collect();
        assert_eq!(
            rows,
            [("solo", "rpm", Millitokens(1000), false), ("solo", "tpm", Millitokens(10_000), false)],
            "decision {i}"
        );
        // The capacity less every admission so far, plus the refill since (1,000 a day: a
        // millitoken per 86.4 ms).
        let exact = (1000 - i) * 1000;
        let refilled = i64::try_from(started.elapsed().as_millis()).expect("ms") / 86 + 2;
        assert!((exact..=exact + refilled).contains(&reports[0].tokens.0), "decision {i}: {:?}", reports[0]);
    }
    let after = store.calls();
    assert!(after.update_item - before.update_item < 50, "blocks answered most: {:?} then {:?}", before, after);
    // A lease open without a request id is an acquire: answered from the block, no write.
    let lease = |nonce: &str, idempotent: bool| LeaseRequest {
        acquire: request.clone(),
        overrides: None,
        nonce: nonce.into(),
        idempotent,
        expires_at: EpochMillis(now().0 + 60_000),
    };
    let before = store.calls();
    let opened = store.open_lease(&lease("@local", false), now()).await.expect("open");
    assert!(matches!(opened, LeaseOpened::Admitted { .. }), "{opened:?}");
    let mid = store.calls();
    assert_eq!(
        (mid.update_item + mid.transact_write_items) - (before.update_item + before.transact_write_items),
        0,
        "answered from the block"
    );
    // With a request id, the record and the debits commit together at the table.
    let opened = store.open_lease(&lease("req-1", true), now()).await.expect("open");
    assert!(matches!(opened, LeaseOpened::Admitted { .. }), "{opened:?}");
    // (Twice when a block or a give-back of this store lands between its read and its commit:
    // the consumption-only retry.)
    let transactions = store.calls().transact_write_items - mid.transact_write_items;
    assert!((1..=2).contains(&transactions), "the idempotent open went to the table: {transactions}");
    assert_eq!(store.close().await.1, 0);
    let (tk, tc) = balance_and_usage(&table, &ns, "solo", "rpm").await;
    assert_eq!(tc, 102_000, "tc counts the 100 acquires and the two leases");
    assert!((898_000..899_000).contains(&tk), "tk {tk}");
}

#[tokio::test]
async fn an_acquire_with_reserve_off_writes_every_decision_on_a_reserving_store() {
    let (table, ns) = entities_table("reserve-entity-off").await;
    let store = reserving_store(&table).await;
    let request = EntityRequest { reserve: false, ..consume("solo", &[("rpm", 1), ("tpm", 10)]) };
    let acquire = || async {
        let outcome = store.acquire(std::slice::from_ref(&request), now()).await.pop().expect("one").expect("ok");
        assert!(matches!(outcome, EntityOutcome::Admitted(_)), "{outcome:?}");
    };
    acquire().await;
    let before = store.calls();
    for _ in 0..30 {
        acquire().await;
    }
    let after = store.calls();
    let writes = (after.update_item + after.transact_write_items) - (before.update_item + before.transact_write_items);
    assert_eq!(writes, 30, "one conditional write per decision, no block taken");
    assert_eq!(store.close().await, (0, 0), "nothing was held");
    let (_, tc) = balance_and_usage(&table, &ns, "solo", "rpm").await;
    assert_eq!(tc, 31_000);
}

async fn oracle_owned(args: Vec<String>) -> String {
    oracle(&args).await
}

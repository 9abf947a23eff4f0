//! Token reservations on YAML-rule buckets (DynamoStoreOptions::reservations) against moto and
//! the Python library: never more admitted than the bucket allows, every token accounted for
//! in `tk` and `tc`, unused tokens given back.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zael_core::bucket::{BucketLimit, Millitokens};
use zael_core::reserve::ReserveOptions;
use zael_table::DynamoStore;

/// The two tests that load moto the most run one at a time: the 99 % comparison measures
/// moto's speed as much as ours when another hammer shares it.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Refill is negligible over a test's run time.
fn per_day(n: u64) -> BucketLimit {
    BucketLimit::per_period(n, n, 86_400)
}

fn reserving(horizon_ms: i64) -> ReserveOptions {
    ReserveOptions { horizon_ms, min_rate: Millitokens::from_tokens(5), max_block: Millitokens::from_tokens(10_000) }
}

async fn reserving_store(table: &str, horizon_ms: i64) -> DynamoStore {
    store_with(zael_table::DynamoStoreOptions { reservations: Some(reserving(horizon_ms)), ..options(table) }).await
}

/// Reserves a bucket that one caller drives one decision after another even when moto is slow
/// (a loaded CI run answers a call in 250 ms or more: 4 decisions a second, and a 1 s horizon
/// of that is below the smallest block, so every decision would go to the table).
async fn patient_store(table: &str) -> DynamoStore {
    let reservations = ReserveOptions { min_rate: Millitokens::from_tokens(1), ..reserving(3000) };
    store_with(zael_table::DynamoStoreOptions { reservations: Some(reservations), ..options(table) }).await
}

async fn balance_and_usage(table: &str, pk: &str) -> (i64, i64) {
    let item = get_item(table, pk).await.expect("bucket");
    (num(&item, "b_hits_tk"), num(&item, "b_hits_tc"))
}

#[tokio::test]
async fn two_reserving_stores_and_the_library_never_admit_more_than_the_bucket_allows() {
    let _heavy = HEAVY.lock().await;
    const CAPACITY: u64 = 400;
    let table = table_name("reserve-hammer");
    let out = oracle(&["setup".into(), table.clone(), "tenant".into()]).await;
    let ns = out.split('"').nth(3).expect("namespace id").to_owned();
    let pk = format!("{ns}/BUCKET#hot#api#0");
    let stores = [reserving_store(&table, 1000).await, reserving_store(&table, 1000).await];
    let one = request("tenant", "hot", "api", per_day(CAPACITY), &[strict(1)]);
    // Create the bucket full (a check-only charge is never reserved), so every writer starts
    // from the same item.
    let check = request("tenant", "hot", "api", per_day(CAPACITY), &[strict(0)]);
    assert_eq!(admitted(&charge_one(&stores[0], &check, now()).await), [true]);

    let python = library_hammer(&table, &pk, CAPACITY).await;
    let rust = charge_concurrently(&stores, 16, 30, &one).await;
    let py = python.await.expect("python");
    let writes: u64 = stores.iter().map(|s| s.calls().update_item + s.calls().transact_write_items).sum();
    eprintln!("admitted: zael {rust} with {writes} writes for {} decisions, library {py}", 2 * 16 * 30);
    assert!(rust + py <= CAPACITY as usize, "zael {rust} + library {py} > {CAPACITY}");
    assert!(py > 0 && rust > 0, "both sides admitted");
    // Off, every admission is a write of its own; fewer writes than admissions means blocks
    // answered. (How few is a benchmark's figure: it depends on moto's speed under load.)
    assert!(writes < rust as u64, "decisions were answered from blocks: {writes} writes for {rust} admits");
    // Every reserved token given back: the bucket holds exactly what nobody was admitted.
    for store in &stores {
        let (_, stranded) = store.close().await;
        assert_eq!(stranded, 0);
    }
    let (tk, tc) = balance_and_usage(&table, &pk).await;
    let admitted = (rust + py) as i64 * 1000;
    assert_eq!(tc, admitted, "tc counts what was admitted");
    assert!((CAPACITY as i64 * 1000 - admitted..=CAPACITY as i64 * 1000 - admitted + 100).contains(&tk), "tk {tk}");
}

#[tokio::test]
async fn local_answers_are_honest_and_unused_tokens_go_back_when_demand_stops() {
    const CAPACITY: u64 = 1000;
    let table = table_name("reserve-return");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#idle#api#0");
    let store = patient_store(&table).await;
    let one = request("ns", "idle", "api", per_day(CAPACITY), &[strict(1)]);
    let before = store.calls();
    let started = Instant::now();
    for i in 1..=100_i64 {
        let outcome = charge_one(&store, &one, now()).await.remove(0);
        assert!(outcome.admitted);
        // What the per-decision path would answer: the capacity less every admission so far,
        // plus what the bucket refilled since (1,000 a day: a millitoken per 86.4 ms).
        let exact = (CAPACITY as i64 - i) * 1000;
        let refilled = i64::try_from(started.elapsed().as_millis()).expect("ms") / 86 + 2;
        assert!(
            (exact..=exact + refilled).contains(&outcome.tokens.0),
            "decision {i}: {} vs {exact} + {refilled}",
            outcome.tokens.0
        );
    }
    let writes = store.calls().update_item - before.update_item;
    assert!(writes < 50, "a block answered most decisions: {writes} UpdateItems for 100");
    let (tk, tc) = balance_and_usage(&table, &pk).await;
    assert!(tc >= 100_000, "a block is counted as consumed while held: tc {tc}");
    assert_eq!(tk + tc, CAPACITY as i64 * 1000, "nothing lost while held");
    // A horizon without a decision: the sweeper gives everything unused back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (tk, tc) = balance_and_usage(&table, &pk).await;
        if tc == 100_000 {
            assert!((900_000..900_100).contains(&tk), "tk {tk}");
            break;
        }
        assert!(Instant::now() < deadline, "unused tokens never came back: tk {tk} tc {tc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn closing_gives_every_held_token_back_and_writes_per_decision_after() {
    const CAPACITY: u64 = 1000;
    let table = table_name("reserve-close");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#close#api#0");
    let store = reserving_store(&table, 60_000).await;
    let one = request("ns", "close", "api", per_day(CAPACITY), &[strict(1)]);
    for _ in 0..40 {
        assert!(charge_one(&store, &one, now()).await[0].admitted);
    }
    let (_, tc) = balance_and_usage(&table, &pk).await;
    assert!(tc > 40_000, "a block is held: tc {tc}");
    let (returned, stranded) = store.close().await;
    // Everything held, a block still in flight at the close included.
    assert!(returned >= tc - 40_000 && stranded == 0, "returned {returned}, stranded {stranded}");
    let (tk, after) = balance_and_usage(&table, &pk).await;
    assert_eq!(after, 40_000);
    assert!((960_000..960_100).contains(&tk), "tk {tk}");
    let before = store.calls().update_item;
    assert!(charge_one(&store, &one, now()).await[0].admitted);
    assert_eq!(store.calls().update_item - before, 1, "closed: one write per decision");
}

#[tokio::test]
async fn a_rule_with_reserve_false_writes_every_decision_on_a_reserving_store() {
    const CAPACITY: u64 = 1000;
    let table = table_name("reserve-off-rule");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#exact#api#0");
    let store = reserving_store(&table, 60_000).await;
    let one = zael_core::store::BucketRequest {
        reserve: false,
        ..request("ns", "exact", "api", per_day(CAPACITY), &[strict(1)])
    };
    let before = store.calls();
    for i in 1..=40_i64 {
        let outcome = charge_one(&store, &one, now()).await.remove(0);
        assert!(outcome.admitted);
        // Nothing held: the bucket as written is the balance answered.
        assert_eq!(balance_and_usage(&table, &pk).await.1, i * 1000);
    }
    let after = store.calls();
    // The first use reads and creates the bucket (3 calls); then one write per decision.
    assert_eq!(after.update_item + after.transact_write_items - before.update_item - before.transact_write_items, 41);
    assert_eq!(store.close().await, (0, 0), "nothing was reserved");
}

/// A hot bucket another writer emptied: this server's block is refused once, and from the
/// shard as that refusal found it the server sees no block worth taking, so the decisions its
/// held tokens do not cover are rejected per decision (mostly from the rejection cache)
/// rather than each horizon costing another refused block and its slow pass.
#[tokio::test]
async fn a_bucket_emptied_by_another_writer_is_refused_one_block_then_decided_per_decision() {
    const CAPACITY: u64 = 100;
    let table = table_name("reserve-emptied");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#emptied#api#0");
    let reserving = reserving_store(&table, 1000).await;
    let plain = store(&table).await;
    let one = request("ns", "emptied", "api", per_day(CAPACITY), &[strict(1)]);
    let mut admitted = 0_i64;
    for _ in 0..20 {
        assert!(charge_one(&reserving, &one, now()).await[0].admitted);
        admitted += 1;
    }
    let (_, tc) = balance_and_usage(&table, &pk).await;
    assert!(tc > 20_000, "a block is held: tc {tc}");
    // The other writer takes everything the shared bucket has left.
    while charge_one(&plain, &one, now()).await[0].admitted {
        admitted += 1;
    }
    let Emptied { held, rejected, reads, writes } =
        after_emptied(&reserving, || async { charge_one(&reserving, &one, now()).await[0].admitted }).await;
    assert!(rejected >= 50, "rejected {rejected}");
    // At most one refused block (its write and its slow pass's read: the held tokens may have
    // gone back meanwhile, and then the first rejection teaches the server), then no other:
    // the rejections cost a write each time the cache's image expires, and no read.
    assert!(reads <= 1, "{reads} reads: a slow pass per refused block ({writes} writes)");
    assert!(writes <= 5, "{writes} writes for {rejected} rejections");
    assert_eq!(reserving.close().await, (0, 0), "nothing held after the held tokens were used");
    let (tk, tc) = balance_and_usage(&table, &pk).await;
    admitted += held;
    assert_eq!(tc, admitted * 1000, "tc counts what was admitted");
    assert!((0..100).contains(&(tk - (CAPACITY as i64 - admitted) * 1000)), "tk {tk}, admitted {admitted}");
}

/// Hammers `bucket` from two stores (8 tasks each) until `until`; the admissions.
async fn hammer(stores: [DynamoStore; 2], bucket: zael_core::store::BucketRequest, until: Instant) -> usize {
    let admits = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..8 {
            let (store, bucket, admits) = (store.clone(), bucket.clone(), admits.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    if charge_one(&store, &bucket, now()).await[0].admitted {
                        admits.fetch_add(1, Ordering::Relaxed);
                    }
                    // Over the limit, most answers come from the rejection cache without a call:
                    // pace the clients a little so they do not spin.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    for store in &stores {
        assert_eq!(store.close().await.1, 0, "nothing stranded");
    }
    admits.load(Ordering::Relaxed)
}

/// Steady over-limit traffic from two servers: with reservations, the admitted total is never
/// above the bucket's allowance and at least 99 % of what the per-decision path admits in the
/// same run (ZAEL_RESERVE_SECONDS, 60 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_reservations_admit_what_the_per_decision_path_admits() {
    let _heavy = HEAVY.lock().await;
    let seconds: u64 = std::env::var("ZAEL_RESERVE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let table = table_name("reserve-over");
    let ns = setup(&table, &["ns"]).await.remove(0);
    // 100 tokens, 20 more each second.
    let limit = BucketLimit::per_period(100, 20, 1);
    let on = [reserving_store(&table, 1000).await, reserving_store(&table, 1000).await];
    let off = [store(&table).await, store(&table).await];
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let (reserved, per_decision) = tokio::join!(
        hammer(on, request("ns", "on", "api", limit, &[strict(1)]), until),
        hammer(off, request("ns", "off", "api", limit, &[strict(1)]), until),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let allowance = 100.0 + 20.0 * elapsed;
    eprintln!("over {elapsed:.1} s: reserved {reserved}, per decision {per_decision}, allowance {allowance:.0}");
    assert!(reserved as f64 <= allowance, "reserved {reserved} > allowance {allowance}");
    assert!(reserved as f64 >= 0.99 * per_decision as f64, "reserved {reserved} < 99 % of {per_decision}");
    for entity in ["on", "off"] {
        let (tk, tc) = balance_and_usage(&table, &format!("{ns}/BUCKET#{entity}#api#0")).await;
        let admitted = if entity == "on" { reserved } else { per_decision };
        assert_eq!(tc, admitted as i64 * 1000, "{entity}: tc counts what was admitted (tk {tk})");
    }
}

/// Every hot bucket's `ttl` passes (the fast path never refreshes it): the block write that
/// fails on it goes through the slow pass, which refreshes it, and the bucket keeps being
/// answered from blocks rather than cooling off to a write per decision.
#[tokio::test]
async fn a_block_refused_on_an_expired_ttl_is_taken_through_the_slow_pass() {
    const CAPACITY: u64 = 5000;
    let table = table_name("reserve-ttl");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = format!("{ns}/BUCKET#ttl#api#0");
    let store = reserving_store(&table, 1000).await;
    let one = request("ns", "ttl", "api", per_day(CAPACITY), &[strict(1)]);
    for _ in 0..20 {
        assert!(charge_one(&store, &one, now()).await[0].admitted);
    }
    let (_, tc) = balance_and_usage(&table, &pk).await;
    assert!(tc > 20_000, "a block is held: tc {tc}");
    let now_s = now().0 / 1000;
    stamp(&table, &pk, &[("ttl", n(now_s - 5))]).await;
    let before = store.calls();
    for i in 0..1000 {
        assert!(charge_one(&store, &one, now()).await[0].admitted, "decision {i}");
    }
    let after = store.calls();
    let writes = after.update_item + after.transact_write_items - before.update_item - before.transact_write_items;
    eprintln!("{writes} writes for 1000 decisions past the expired ttl");
    // Cooling off would have sent a horizon's decisions to the table one by one (hundreds).
    assert!(writes <= 15, "blocks kept answering past the expired ttl: {writes} writes for 1000 decisions");
    let item = get_item(&table, &pk).await.expect("bucket");
    assert!(num(&item, "ttl") > now_s, "the slow pass refreshed ttl: {}", num(&item, "ttl"));
    assert_eq!(store.close().await.1, 0, "nothing stranded");
    let (tk, tc) = balance_and_usage(&table, &pk).await;
    assert_eq!(tc, 1020 * 1000, "tc counts what was admitted");
    // Refill over the run (5,000 a day: about 58 millitokens a second) is all that is added.
    let full = CAPACITY as i64 * 1000;
    assert!((full - 1_020_000..=full - 1_020_000 + 2_000).contains(&tk), "tk {tk}");
}

/// A bucket spread over two shards (the write-unit bucket of shard 0 exhausted once, so the
/// store doubled it), 2 x 16 callers asking for 1,280 tokens of its 1,000: blocks are taken
/// shard by shard, each under that shard's share, and every admission is counted on the shard
/// it was taken from; nothing is admitted beyond the whole capacity, nothing stays held.
#[tokio::test]
async fn a_sharded_bucket_is_reserved_shard_by_shard_within_each_share() {
    let _heavy = HEAVY.lock().await;
    const CAPACITY: i64 = 1000;
    let table = table_name("reserve-sharded");
    let ns = setup(&table, &["ns"]).await.remove(0);
    let pk = |shard: i64| format!("{ns}/BUCKET#wide#api#{shard}");
    let one = request("ns", "wide", "api", per_day(CAPACITY as u64), &[strict(1)]);
    let plain = store(&table).await;
    assert_eq!(admitted(&charge_one(&plain, &one, now()).await), [true]);
    stamp(&table, &pk(0), &[("b_wcu_tk", n(-1_000_000_000))]).await;
    assert_eq!(admitted(&charge_one(&plain, &one, now()).await), [true]);
    assert_eq!(num(&get_item(&table, &pk(1)).await.expect("shard 1"), "shard_count"), 2, "doubled");
    stamp(&table, &pk(0), &[("b_wcu_tk", n(1_000_000))]).await;
    // Doubling leaves shard 0 its stored `tk` (the library's `_propagate_shard_count`): each
    // shard is set to its share less what it admitted, so the two hold the capacity between them.
    let share = CAPACITY * 1000 / 2;
    for shard in 0..2 {
        let (_, tc) = balance_and_usage(&table, &pk(shard)).await;
        stamp(&table, &pk(shard), &[("b_hits_tk", n(share - tc))]).await;
    }

    let stores = [reserving_store(&table, 1000).await, reserving_store(&table, 1000).await];
    let rust = charge_concurrently(&stores, 16, 40, &one).await as i64;
    let writes: u64 = stores.iter().map(|s| s.calls().update_item + s.calls().transact_write_items).sum();
    for store in &stores {
        assert_eq!(store.close().await.1, 0, "nothing stranded");
    }
    let total = rust + 2;
    eprintln!("sharded: {total} admitted with {writes} writes for {} decisions", 2 * 16 * 40);
    assert!(total <= CAPACITY, "{total} admitted, the bucket holds {CAPACITY}");
    assert!(writes < rust as u64, "decisions were answered from blocks: {writes} writes for {rust} admits");
    let mut counted = 0;
    for shard in 0..2 {
        let (tk, tc) = balance_and_usage(&table, &pk(shard)).await;
        assert!(tc > 0 && tc <= share, "shard {shard}: tc {tc} within its share {share}");
        // What the shard holds is its share less what it gave, plus a day's refill of a minute.
        assert!((share - tc..=share - tc + 1000).contains(&tk), "shard {shard}: tk {tk}, tc {tc}");
        counted += tc;
    }
    assert_eq!(counted, total * 1000, "the shards' tc count every admission");
}

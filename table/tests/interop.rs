//! DynamoStore and the Python library zae-limiter 0.17.0 (the oracle) on one table.

mod common;

use common::*;
use zael_core::bucket::{BucketLimit, Millitokens};

/// 10 per day: refill is negligible over a test's run time (a token per 2.4 hours).
fn per_day(n: u64) -> BucketLimit {
    BucketLimit::per_period(n, n, 86_400)
}

fn acquire_args(table: &str, entity: &str, amount: u64, count: u64, cap: u64) -> Vec<String> {
    [
        "acquire",
        table,
        "tenant",
        entity,
        "api",
        &cap.to_string(),
        &cap.to_string(),
        "86400",
        &amount.to_string(),
        &count.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn parse_acquires(json: &str) -> Vec<(bool, bool, Option<i64>)> {
    // [{"admitted": true, "slow": false, "tokens_milli": 6000}, ...] without a JSON crate.
    json.trim_matches(|c| c == '[' || c == ']')
        .split('}')
        .filter(|s| s.contains("admitted"))
        .map(|obj| {
            let field = |name: &str| {
                let start = obj.find(&format!("\"{name}\": ")).expect(name) + name.len() + 4;
                obj[start..].split([',', '}']).next().expect("value").trim().to_owned()
            };
            (field("admitted") == "true", field("slow") == "true", field("tokens_milli").parse().ok())
        })
        .collect()
}

async fn python_table(test: &str) -> (String, String) {
    let table = table_name(test);
    let out = oracle(&["setup".into(), table.clone(), "tenant".into()]).await;
    let ns = out.split('"').nth(3).expect("namespace id").to_owned();
    (table, ns)
}

#[tokio::test]
async fn library_takes_the_fast_path_on_a_bucket_zael_created() {
    let (table, ns) = python_table("zael-first").await;
    let store = store(&table).await;
    let req = request("tenant", "user:alice", "api", per_day(10), &[strict(3)]);
    assert_eq!(admitted(&charge_one(&store, &req, now()).await), [true]);

    let results = parse_acquires(&oracle(&acquire_args(&table, "user:alice", 1, 2, 10)).await);
    assert_eq!(results, vec![(true, false, Some(6000)), (true, false, Some(5000))], "fast path, right balance");

    let one = request("tenant", "user:alice", "api", per_day(10), &[strict(1)]);
    let before = store.calls();
    let out = charge_one(&store, &one, now()).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(4000)));
    assert_eq!(store.calls().update_item - before.update_item, 1);
    let item = get_item(&table, &format!("{ns}/BUCKET#user:alice#api#0")).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (4000, 6000));
    assert_eq!((num(&item, "b_wcu_tk"), num(&item, "b_wcu_tc")), (997_000, 3000));
}

#[tokio::test]
async fn zael_charges_a_bucket_the_library_created() {
    let (table, ns) = python_table("python-first").await;
    let results = parse_acquires(&oracle(&acquire_args(&table, "user:bob", 2, 1, 10)).await);
    assert_eq!(results, vec![(true, true, Some(8000))], "the library's first acquire creates the bucket");
    let created = get_item(&table, &format!("{ns}/BUCKET#user:bob#api#0")).await.expect("bucket");
    assert!(created.contains_key("ttl"), "an override-sourced bucket carries a ttl");

    let store = store(&table).await;
    let one = request("tenant", "user:bob", "api", per_day(10), &[strict(1)]);
    let t = now();
    charge_one(&store, &one, t).await; // warms the namespace cache
    let before = store.calls();
    let out = charge_one(&store, &one, t).await;
    assert_eq!((admitted(&out), out[0].tokens), (vec![true], Millitokens(6000)));
    assert_eq!(
        (store.calls().update_item - before.update_item, store.calls().get_item - before.get_item),
        (1, 0),
        "fast path on the library's item"
    );
    let item = get_item(&table, &format!("{ns}/BUCKET#user:bob#api#0")).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (6000, 4000));
    assert_eq!(num(&item, "ttl"), num(&created, "ttl"), "the fast path never moves ttl");
}

#[tokio::test]
async fn library_and_zael_together_never_admit_more_than_the_capacity() {
    const CAPACITY: u64 = 100;
    let (table, ns) = python_table("hammer").await;
    let store = store(&table).await;
    // Create the bucket full (a check-only charge), so both sides start from the same item.
    let check = request("tenant", "hot", "api", per_day(CAPACITY), &[strict(0)]);
    assert_eq!(admitted(&charge_one(&store, &check, now()).await), [true]);
    let pk = format!("{ns}/BUCKET#hot#api#0");

    let python = library_hammer(&table, &pk, CAPACITY).await;
    let one = request("tenant", "hot", "api", per_day(CAPACITY), &[strict(1)]);
    let rust = charge_concurrently(std::slice::from_ref(&store), 16, 10, &one).await;
    let py = python.await.expect("python");
    eprintln!("admitted: zael {rust}, library {py}");
    assert_eq!(rust + py, CAPACITY as usize, "zael {rust} + library {py}");
    assert!(py > 0);
    let item = get_item(&table, &pk).await.expect("bucket");
    assert_eq!((num(&item, "b_hits_tk"), num(&item, "b_hits_tc")), (0, CAPACITY as i64 * 1000));
}

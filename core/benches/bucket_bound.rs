//! The embedded store's decision throughput at its `--max-buckets` bound next to an empty
//! store (issue 18): `cargo bench -p zael-core --bench bucket_bound`. In-process, no gRPC:
//! what the bound's bookkeeping and trims cost a decision. Workloads, each on 2 threads:
//!
//! - `hot`: every decision on one of 64 hot keys;
//! - `spray`: every decision a new key (a key spray);
//!
//! each on an empty store (bound 4,000,000: never reached) and on a store filled to its high
//! watermark of a 1,000,000 bound, with a thread polling `needs_trim` every 100 ms and
//! trimming as the server does. `BENCH_ROUNDS` (5) rounds; medians and spread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zael_core::bucket::{BucketLimit, Charge, EpochMillis};
use zael_core::keys::BucketKey;
use zael_core::memory::MemoryStore;
use zael_core::pressure::BucketBound;
use zael_core::store::BucketRequest;

const DECISIONS_PER_THREAD: usize = 400_000;
const THREADS: usize = 2;

fn request(entity: String) -> BucketRequest {
    BucketRequest {
        key: BucketKey { namespace: "bench".into(), resource: "user".into(), entity },
        limit: BucketLimit::per_period(10, 10, 3600),
        charges: vec![Charge { cost: 1, allow_debt: false }],
        reserve: true,
    }
}

/// A store with `bound`, holding `filled` cold buckets charged once.
fn store(bound: usize, filled: usize) -> Arc<MemoryStore> {
    let store = MemoryStore::new().with_bound(BucketBound { max: bound });
    let then = EpochMillis::now().0 - 60_000;
    for i in 0..filled {
        store.charge_bucket(&request(format!("cold-{i}")), EpochMillis(then));
    }
    Arc::new(store)
}

/// Decisions per second of `THREADS` threads, and how many trims ran meanwhile.
fn run(store: &Arc<MemoryStore>, spray: bool, round: usize) -> (f64, usize) {
    // Requests built before the clock starts: the store's work only.
    let work: Vec<Vec<BucketRequest>> = (0..THREADS)
        .map(|t| {
            (0..DECISIONS_PER_THREAD)
                .map(|i| request(if spray { format!("spray-{round}-{t}-{i}") } else { format!("hot-{}", i % 64) }))
                .collect()
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let trimmer = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut trims = 0;
            while !done.load(Ordering::Relaxed) {
                if store.needs_trim() {
                    store.trim(EpochMillis::now());
                    trims += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            trims
        })
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for requests in &work {
            s.spawn(move || {
                for r in requests {
                    std::hint::black_box(store.charge_bucket(r, EpochMillis::now()));
                }
            });
        }
    });
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let trims = trimmer.join().expect("trimmer");
    ((THREADS * DECISIONS_PER_THREAD) as f64 / elapsed.as_secs_f64(), trims)
}

fn median_and_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let at_bound = BucketBound { max: 1_000_000 };
    println!("| workload | store | decisions/s (median) | min | max | trims per round | buckets after |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for spray in [false, true] {
        for (label, bound, filled) in
            [("empty", 4_000_000, 0), ("at the bound (1,000,000; filled to 875,000)", at_bound.max, at_bound.high())]
        {
            let mut rates = Vec::new();
            let (mut trims, mut after) = (0, 0);
            for round in 0..rounds {
                let store = store(bound, filled);
                let (rate, t) = run(&store, spray, round);
                rates.push(rate);
                trims += t;
                after = store.len();
            }
            let (median, min, max) = median_and_spread(rates);
            let workload = if spray { "spray (a new key per decision)" } else { "hot (64 keys)" };
            println!(
                "| {workload} | {label} | {median:.0} | {min:.0} | {max:.0} | {:.1} | {after} |",
                trims as f64 / rounds as f64
            );
        }
    }
}

//! What only the embedded store has: its namespaces registry, its locking under threads and
//! its eviction. Every behaviour both stores share is in `table/tests/behaviour.rs`, which runs
//! each scenario on this store and on DynamoDB.

use super::*;
use crate::entities::parse_entities;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

const ENTITIES: &str = r#"
namespaces:
  ns:
    system:
      on_unavailable: allow
    entities:
      pair:
        resources:
          gpt-4: {limits: ["rpm:10"]}
      solo: {limits: ["rpm:3"]}
      hot:
        resources:
          gpt-4: {limits: ["rpm:1000/day"]}
  bare: {}
"#;

/// The store's futures never wait: poll once.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the memory store never waits"),
    }
}

fn store() -> MemoryStore {
    MemoryStore::with_entities(parse_entities("test.yaml", ENTITIES).unwrap())
}

fn request(entity: &str, resource: &str, consume: &[(&str, i64)]) -> EntityRequest {
    EntityRequest {
        namespace: "ns".into(),
        entity: entity.into(),
        resource: resource.into(),
        consume: consume.iter().map(|(n, tokens)| (Arc::from(*n), Millitokens(tokens * 1000))).collect(),
        reserve: true,
    }
}

fn acquire(store: &MemoryStore, entity: &str, consume: &[(&str, i64)], at: i64) -> EntityOutcome {
    let mut out = block_on(store.acquire(&[request(entity, "gpt-4", consume)], EpochMillis(at)));
    out.remove(0).unwrap()
}

/// Per limit of the entity (and its cascade parent): (entity, limit, millitokens).
fn balances(store: &MemoryStore, entity: &str, at: i64) -> Vec<(String, String, i64)> {
    block_on(store.available("ns", entity, "gpt-4", EpochMillis(at)))
        .unwrap()
        .into_iter()
        .map(|r| (r.entity, r.name, r.tokens.0))
        .collect()
}

fn balance(entity: &str, limit: &str, tokens: i64) -> (String, String, i64) {
    (entity.into(), limit.into(), tokens)
}

/// The bucket's `tc` of a limit.
fn consumed(store: &MemoryStore, entity: &str, limit: &str) -> i64 {
    store.held().buckets[&EntityBucketId::new("ns", entity, "gpt-4")][limit].consumed
}

fn lease_request(entity: &str, consume: &[(&str, i64)], nonce: &str, idempotent: bool) -> LeaseRequest {
    LeaseRequest {
        acquire: request(entity, "gpt-4", consume),
        overrides: None,
        nonce: nonce.into(),
        idempotent,
        expires_at: EpochMillis(100_000),
    }
}

fn open(store: &MemoryStore, request: &LeaseRequest, at: i64) -> Lease {
    match block_on(store.open_lease(request, EpochMillis(at))).unwrap() {
        LeaseOpened::Admitted { lease, .. } => lease,
        other => panic!("not admitted: {other:?}"),
    }
}

fn change(store: &MemoryStore, lease: &Lease, change: &LeaseChange, at: i64) -> LeaseChanged {
    block_on(store.change_lease(lease, change, EpochMillis(at))).unwrap()
}

fn adjust(deltas: &[(&str, i64)]) -> LeaseChange {
    LeaseChange::Adjust(deltas.iter().map(|(n, tokens)| (n.to_string(), Millitokens(tokens * 1000))).collect())
}

#[test]
fn unknown_namespaces_and_stores_without_entities_answer_not_found() {
    let expected = "namespace 'nope' is not registered (zael-server --entities FILE declares namespaces)";
    let nope = EntityRequest { namespace: "nope".into(), ..request("x", "gpt-4", &[("rpm", 1)]) };
    match &block_on(store().acquire(std::slice::from_ref(&nope), EpochMillis(0)))[0] {
        Err(StoreError::NotFound(m)) => assert_eq!(m, expected),
        other => panic!("{other:?}"),
    }
    // Without an entities file, Envoy entity rules keep answering without a limit.
    let bare = MemoryStore::new();
    assert_eq!(
        block_on(bare.acquire(std::slice::from_ref(&nope), EpochMillis(0)))[0].as_ref().unwrap(),
        &EntityOutcome::NoLimits
    );
    for store in [store(), bare] {
        assert!(matches!(
            block_on(store.available("nope", "x", "gpt-4", EpochMillis(0))),
            Err(StoreError::NotFound(_))
        ));
    }
    let bad = request("-bad", "gpt-4", &[("rpm", 1)]);
    assert!(matches!(&block_on(store().acquire(&[bad], EpochMillis(0)))[0], Err(StoreError::Refused(_))));
    assert_eq!(store().on_unavailable("ns"), Some(OnUnavailable::Allow));
    assert_eq!(store().on_unavailable("bare"), None);
}

#[test]
fn concurrent_acquires_admit_exactly_the_capacity() {
    let store = Arc::new(store());
    let admitted = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let store = store.clone();
            let admitted = admitted.clone();
            s.spawn(move || {
                for _ in 0..500 {
                    let out = block_on(store.acquire(&[request("hot", "gpt-4", &[("rpm", 1)])], EpochMillis(1_000)));
                    if matches!(out[0], Ok(EntityOutcome::Admitted(_))) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    assert_eq!(consumed(&store, "hot", "rpm"), 1_000_000);
}

#[test]
fn eviction_keeps_refilling_buckets_and_those_of_live_leases() {
    let store = store();
    acquire(&store, "pair", &[("rpm", 1)], 0);
    let lease = open(&store, &lease_request("solo", &[("rpm", 1)], "@a", false), 0);
    assert_eq!((store.entity_buckets_len(), store.leases_len()), (2, 1));
    // 1 rpm token takes 6 s for pair (10/min), 20 s for solo (3/min).
    assert_eq!(store.evict_full(EpochMillis(5_999)), 0);
    assert_eq!(store.evict_full(EpochMillis(6_000)), 1);
    // solo is full at 20 s but its lease is live until 100 s.
    assert_eq!(store.evict_full(EpochMillis(20_000)), 0);
    assert_eq!(change(&store, &lease, &adjust(&[("rpm", 1)]), 20_000), LeaseChanged::Applied);
    assert_eq!(balances(&store, "solo", 20_000), [balance("solo", "rpm", 2000)]);
    assert_eq!(
        change(&store, &lease.after(&adjust(&[("rpm", 1)])), &LeaseChange::Release, 20_000),
        LeaseChanged::Applied
    );
    // Ended: it no longer pins the bucket, which is full again 20 s later.
    assert_eq!(store.evict_full(EpochMillis(40_000)), 1);
    assert_eq!((store.entity_buckets_len(), store.leases_len()), (0, 1));
    store.evict_full(EpochMillis(100_000));
    assert_eq!(store.leases_len(), 0);
}

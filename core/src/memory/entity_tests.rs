//! Entities, stored limits and leases in the embedded store.

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
      limits: ["rpm:1000"]
      on_unavailable: allow
    resources:
      gpt-4: {limits: ["rpm:100", "tpm:100000"]}
      closed: {limits: ["rpm:5"], disabled: true}
    entities:
      team:
        resources:
          gpt-4: {limits: ["rpm:20", "tpm:600", "rph:50/hour"]}
      key:
        parent: team
        cascade: true
        resources:
          gpt-4: {limits: ["rpm:10", "tpm:500/min:800"]}
      pair:
        resources:
          gpt-4: {limits: ["rpm:10", "tpm:500/min:800"]}
      solo:
        parent: team
        limits: ["rpm:3"]
      off: {disabled: true}
      under-off: {parent: off, cascade: true}
      hot:
        resources:
          gpt-4: {limits: ["rpm:1000/day"]}
      spender: {limits: ["tpd:10/day"], soft: [tpd]}
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
    }
}

fn acquire(store: &MemoryStore, entity: &str, consume: &[(&str, i64)], at: i64) -> EntityOutcome {
    let mut out = block_on(store.acquire(&[request(entity, "gpt-4", consume)], EpochMillis(at)));
    out.remove(0).unwrap()
}

/// Per report: (entity, limit, millitokens, requested millitokens, exceeded).
fn summary(reports: &[LimitReport]) -> Vec<(&str, &str, i64, i64, bool)> {
    reports.iter().map(|r| (r.entity.as_str(), r.name.as_str(), r.tokens.0, r.requested.0, r.exceeded)).collect()
}

fn admitted(outcome: &EntityOutcome) -> Vec<(&str, &str, i64, i64, bool)> {
    match outcome {
        EntityOutcome::Admitted(reports) => summary(reports),
        other => panic!("not admitted: {other:?}"),
    }
}

fn rejected(outcome: &EntityOutcome) -> Vec<(&str, &str, i64, i64, bool)> {
    match outcome {
        EntityOutcome::Rejected(reports) => summary(reports),
        other => panic!("not rejected: {other:?}"),
    }
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
fn a_multi_limit_acquire_debits_every_limit_exactly() {
    let store = store();
    let first = acquire(&store, "pair", &[("rpm", 1), ("tpm", 300)], 0);
    assert_eq!(admitted(&first), [("pair", "rpm", 9000, 1000, false), ("pair", "tpm", 500_000, 300_000, false)]);
    let EntityOutcome::Admitted(reports) = &first else { unreachable!() };
    assert_eq!(reports[1].limit, BucketLimit::per_period(800, 500, 60));
    assert_eq!(
        (reports[1].shard, reports[1].shard_count, reports[1].bypass, reports[1].at),
        (0, 1, false, EpochMillis(0))
    );
    // 6 s later: rpm refilled 1 token (capped at 10), tpm 50 tokens.
    let second = acquire(&store, "pair", &[("rpm", 1), ("tpm", 100)], 6_000);
    assert_eq!(admitted(&second), [("pair", "rpm", 9000, 1000, false), ("pair", "tpm", 450_000, 100_000, false)]);
    assert_eq!(balances(&store, "pair", 6_000), [balance("pair", "rpm", 9000), balance("pair", "tpm", 450_000)]);
    assert_eq!((consumed(&store, "pair", "rpm"), consumed(&store, "pair", "tpm")), (2000, 400_000));
    // A zero amount checks without consuming.
    let check = acquire(&store, "pair", &[("tpm", 0)], 6_000);
    assert_eq!(admitted(&check), [("pair", "tpm", 450_000, 0, false)]);
}

#[test]
fn a_rejection_debits_nothing_and_reports_the_short_limits() {
    let store = store();
    acquire(&store, "pair", &[("tpm", 300)], 0);
    let out = acquire(&store, "pair", &[("rpm", 1), ("tpm", 600)], 0);
    assert_eq!(rejected(&out), [("pair", "rpm", 10_000, 1000, false), ("pair", "tpm", 500_000, 600_000, true)]);
    assert_eq!(balances(&store, "pair", 0), [balance("pair", "rpm", 10_000), balance("pair", "tpm", 500_000)]);
    assert_eq!((consumed(&store, "pair", "rpm"), consumed(&store, "pair", "tpm")), (0, 300_000));
}

#[test]
fn cascade_charges_the_parent_and_a_parent_rejection_rejects_the_whole() {
    let store = store();
    // rph only the parent has; xyz neither side has (ignored).
    let out = acquire(&store, "key", &[("rpm", 1), ("tpm", 300), ("rph", 1), ("xyz", 5)], 0);
    assert_eq!(
        admitted(&out),
        [
            ("key", "rpm", 9000, 1000, false),
            ("key", "tpm", 500_000, 300_000, false),
            ("team", "rpm", 19_000, 1000, false),
            ("team", "tpm", 300_000, 300_000, false),
            ("team", "rph", 49_000, 1000, false),
        ]
    );
    // The child could (500 left), the parent cannot (300 left): nothing is debited.
    let out = acquire(&store, "key", &[("rpm", 1), ("tpm", 400)], 0);
    assert_eq!(
        rejected(&out),
        [
            ("key", "rpm", 9000, 1000, false),
            ("key", "tpm", 500_000, 400_000, false),
            ("team", "rpm", 19_000, 1000, false),
            ("team", "tpm", 300_000, 400_000, true),
        ]
    );
    assert_eq!(
        balances(&store, "key", 0),
        [
            balance("key", "rpm", 9000),
            balance("key", "tpm", 500_000),
            balance("team", "rpm", 19_000),
            balance("team", "tpm", 300_000),
            balance("team", "rph", 49_000),
        ]
    );
    assert_eq!((consumed(&store, "key", "tpm"), consumed(&store, "team", "tpm")), (300_000, 300_000));
    // A parent without cascade is not charged.
    assert_eq!(admitted(&acquire(&store, "solo", &[("rpm", 1)], 0)), [("solo", "rpm", 2000, 1000, false)]);
}

#[test]
fn disabled_entities_resources_and_parents_are_never_admitted() {
    let store = store();
    assert_eq!(acquire(&store, "off", &[("rpm", 1)], 0), EntityOutcome::Disabled { entity: "off".into() });
    assert_eq!(acquire(&store, "under-off", &[("rpm", 1)], 0), EntityOutcome::Disabled { entity: "off".into() });
    let closed = block_on(store.acquire(&[request("stranger", "closed", &[("rpm", 1)])], EpochMillis(0)));
    assert_eq!(closed[0].as_ref().unwrap(), &EntityOutcome::Disabled { entity: "stranger".into() });
    let opened = block_on(store.open_lease(&lease_request("off", &[("rpm", 1)], "@1", false), EpochMillis(0)));
    assert_eq!(opened.unwrap(), LeaseOpened::Disabled { entity: "off".into() });
    assert_eq!(store.entity_buckets_len(), 0);
}

#[test]
fn limits_resolve_from_the_first_level_defining_any() {
    let store = store();
    let capacities = |entity: &str, resource: &str| -> Vec<(String, i64)> {
        let out = block_on(store.acquire(&[request(entity, resource, &[("rpm", 1), ("tpm", 1)])], EpochMillis(0)));
        match out.into_iter().next().unwrap().unwrap() {
            EntityOutcome::Admitted(reports) => reports.into_iter().map(|r| (r.name, r.limit.capacity.0)).collect(),
            other => panic!("{other:?}"),
        }
    };
    // Entity + resource, the entity's default, the resource's, the system's.
    assert_eq!(capacities("pair", "gpt-4"), [("rpm".into(), 10_000), ("tpm".into(), 800_000)]);
    assert_eq!(capacities("solo", "gpt-4"), [("rpm".into(), 3000)]);
    assert_eq!(capacities("stranger", "gpt-4"), [("rpm".into(), 100_000), ("tpm".into(), 100_000_000)]);
    assert_eq!(capacities("stranger", "claude"), [("rpm".into(), 1_000_000)]);
    let bare = EntityRequest { namespace: "bare".into(), ..request("x", "gpt-4", &[("rpm", 1)]) };
    assert_eq!(block_on(store.acquire(&[bare], EpochMillis(0)))[0].as_ref().unwrap(), &EntityOutcome::NoLimits);
    assert!(block_on(store.available("bare", "x", "gpt-4", EpochMillis(0))).unwrap().is_empty());
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
fn soft_limits_admit_into_debt() {
    let store = store();
    let out = acquire(&store, "spender", &[("tpd", 15)], 0);
    assert_eq!(admitted(&out), [("spender", "tpd", -5000, 15_000, false)]);
    let out = acquire(&store, "spender", &[("tpd", 1)], 0);
    assert_eq!(admitted(&out), [("spender", "tpd", -6000, 1000, false)]);
}

#[test]
fn a_lease_names_every_debited_limit_of_both_sides() {
    let store = store();
    let lease = open(&store, &lease_request("key", &[("rpm", 1), ("tpm", 300)], "@a", false), 0);
    assert_eq!((lease.namespace.as_str(), lease.entity.as_str(), lease.resource.as_str()), ("ns", "key", "gpt-4"));
    assert_eq!((lease.nonce.as_str(), lease.seq, lease.expires_at), ("@a", 0, 100_000));
    let entries: Vec<(&str, &str, i64, i64)> =
        lease.entries.iter().map(|e| (e.entity.as_str(), e.limit.as_str(), e.amount, e.shard)).collect();
    assert_eq!(
        entries,
        [("key", "rpm", 1000, 0), ("key", "tpm", 300_000, 0), ("team", "rpm", 1000, 0), ("team", "tpm", 300_000, 0)]
    );
}

#[test]
fn overrides_replace_the_stored_limits_on_both_sides() {
    let store = store();
    let mut request = lease_request("key", &[("rpm", 2)], "@o", false);
    request.overrides = Some(vec![LimitOverride { name: "rpm".into(), limit: BucketLimit::per_period(2, 2, 60) }]);
    let LeaseOpened::Admitted { reports, .. } = block_on(store.open_lease(&request, EpochMillis(0))).unwrap() else {
        panic!("not admitted")
    };
    assert_eq!(summary(&reports), [("key", "rpm", 0, 2000, false), ("team", "rpm", 0, 2000, false)]);
    assert_eq!(reports[1].limit.capacity, Millitokens(2000));
    let again = block_on(store.open_lease(&LeaseRequest { nonce: "@p".into(), ..request }, EpochMillis(0))).unwrap();
    assert!(matches!(again, LeaseOpened::Rejected(_)));
}

#[test]
fn an_adjust_may_drive_a_balance_into_debt_that_refill_repays() {
    let store = store();
    let lease = open(&store, &lease_request("pair", &[("rpm", 1), ("tpm", 700)], "@a", false), 0);
    assert_eq!(change(&store, &lease, &adjust(&[("tpm", 300)]), 0), LeaseChanged::Applied);
    assert_eq!(balances(&store, "pair", 0), [balance("pair", "rpm", 9000), balance("pair", "tpm", -200_000)]);
    assert_eq!(consumed(&store, "pair", "tpm"), 1_000_000);
    // 500 tokens a minute: 36 s give 300.
    assert_eq!(balances(&store, "pair", 36_000)[1], balance("pair", "tpm", 100_000));
    let out = acquire(&store, "pair", &[("tpm", 200)], 36_000);
    assert_eq!(rejected(&out), [("pair", "tpm", 100_000, 200_000, true)]);
}

#[test]
fn a_negative_adjust_credits_the_parent_too() {
    let store = store();
    let lease = open(&store, &lease_request("key", &[("tpm", 300)], "@a", false), 0);
    assert_eq!(change(&store, &lease, &adjust(&[("tpm", -100)]), 0), LeaseChanged::Applied);
    assert_eq!(balances(&store, "key", 0)[1], balance("key", "tpm", 600_000));
    assert_eq!(balances(&store, "key", 0)[3], balance("team", "tpm", 400_000));
    assert_eq!((consumed(&store, "key", "tpm"), consumed(&store, "team", "tpm")), (200_000, 200_000));
}

#[test]
fn a_rollback_credits_what_the_lease_consumed_never_above_the_ceiling() {
    let store = store();
    let lease = open(&store, &lease_request("pair", &[("rpm", 4), ("tpm", 300)], "@a", false), 0);
    assert_eq!(balances(&store, "pair", 0), [balance("pair", "rpm", 6000), balance("pair", "tpm", 500_000)]);
    // 30 s later tpm has refilled 250 tokens (750 of 800): the credit of 300 stops at 800;
    // rpm has refilled 5 (6 + 5, capped at 10): its credit of 4 is trimmed away.
    assert_eq!(change(&store, &lease, &LeaseChange::Rollback, 30_000), LeaseChanged::Applied);
    assert_eq!(balances(&store, "pair", 30_000), [balance("pair", "rpm", 10_000), balance("pair", "tpm", 800_000)]);
    assert_eq!((consumed(&store, "pair", "rpm"), consumed(&store, "pair", "tpm")), (0, 0));
    // The retry is recognised; a release after it is refused.
    assert_eq!(change(&store, &lease, &LeaseChange::Rollback, 30_000), LeaseChanged::AlreadyApplied);
    assert_eq!(
        change(&store, &lease, &LeaseChange::Release, 30_000),
        LeaseChanged::Conflict("the lease was already rolled back".into())
    );
    assert_eq!(consumed(&store, "pair", "tpm"), 0);
}

#[test]
fn a_rollback_below_the_ceiling_credits_exactly() {
    let store = store();
    acquire(&store, "pair", &[("tpm", 400)], 0);
    let lease = open(&store, &lease_request("pair", &[("tpm", 300)], "@a", false), 0);
    assert_eq!(change(&store, &lease, &LeaseChange::Rollback, 0), LeaseChanged::Applied);
    assert_eq!(balances(&store, "pair", 0)[1], balance("pair", "tpm", 400_000));
    assert_eq!(consumed(&store, "pair", "tpm"), 400_000);
}

#[test]
fn a_release_writes_nothing() {
    let store = store();
    let lease = open(&store, &lease_request("key", &[("tpm", 300)], "@a", false), 0);
    let before = balances(&store, "key", 0);
    assert_eq!(change(&store, &lease, &LeaseChange::Release, 0), LeaseChanged::Applied);
    assert_eq!(balances(&store, "key", 0), before);
    assert_eq!(consumed(&store, "key", "tpm"), 300_000);
    assert_eq!(change(&store, &lease, &LeaseChange::Release, 0), LeaseChanged::AlreadyApplied);
    assert_eq!(
        change(&store, &lease, &LeaseChange::Rollback, 0),
        LeaseChanged::Conflict("the lease was already released".into())
    );
    assert_eq!(balances(&store, "key", 0), before);
}

#[test]
fn a_retried_adjust_applies_once_and_a_stale_id_conflicts() {
    let store = store();
    let lease = open(&store, &lease_request("pair", &[("tpm", 100)], "@a", false), 0);
    let plus = adjust(&[("tpm", 50)]);
    assert_eq!(change(&store, &lease, &plus, 0), LeaseChanged::Applied);
    assert_eq!(change(&store, &lease, &plus, 0), LeaseChanged::AlreadyApplied);
    assert_eq!(balances(&store, "pair", 0)[1], balance("pair", "tpm", 650_000));
    assert_eq!(consumed(&store, "pair", "tpm"), 150_000);
    // Another change with the first id: stale.
    let LeaseChanged::Conflict(message) = change(&store, &lease, &adjust(&[("tpm", 1)]), 0) else {
        panic!("not a conflict")
    };
    assert!(message.contains("stale"), "{message}");
    // With the id the adjust answered, the rollback credits acquire and adjust together, once.
    let next = lease.after(&plus);
    assert_eq!(change(&store, &next, &LeaseChange::Rollback, 0), LeaseChanged::Applied);
    assert_eq!(change(&store, &next, &LeaseChange::Rollback, 0), LeaseChanged::AlreadyApplied);
    assert_eq!(balances(&store, "pair", 0)[1], balance("pair", "tpm", 800_000));
    assert_eq!(consumed(&store, "pair", "tpm"), 0);
}

#[test]
fn an_expired_lease_changes_nothing() {
    let store = store();
    let lease = open(&store, &lease_request("pair", &[("tpm", 100)], "@a", false), 0);
    let out = change(&store, &lease, &LeaseChange::Rollback, 100_000);
    assert!(matches!(out, LeaseChanged::Conflict(m) if m.contains("expired")));
    assert_eq!(consumed(&store, "pair", "tpm"), 100_000);
}

#[test]
fn an_idempotent_open_replays_its_lease_until_it_expires() {
    let store = store();
    let request = lease_request("key", &[("rpm", 1), ("tpm", 100)], "req-1", true);
    let lease = open(&store, &request, 0);
    let replay = block_on(store.open_lease(&request, EpochMillis(50_000))).unwrap();
    assert_eq!(replay, LeaseOpened::Replayed { lease: lease.clone() });
    assert_eq!((consumed(&store, "key", "tpm"), consumed(&store, "team", "tpm")), (100_000, 100_000));
    // Adjusted meanwhile: a replay still answers the lease as opened.
    assert_eq!(change(&store, &lease, &adjust(&[("tpm", 10)]), 50_000), LeaseChanged::Applied);
    let replay = block_on(store.open_lease(&request, EpochMillis(50_000))).unwrap();
    assert_eq!(replay, LeaseOpened::Replayed { lease: lease.clone() });
    // Once expired, the same request id opens (and charges) a new lease.
    let later = LeaseRequest { expires_at: EpochMillis(200_000), ..request.clone() };
    let fresh = open(&store, &later, 100_000);
    assert_eq!(fresh.expires_at, 200_000);
    assert_eq!(consumed(&store, "key", "tpm"), 210_000);
    // A request without idempotency never replays.
    let plain = lease_request("key", &[("tpm", 1)], "@n", false);
    open(&store, &plain, 100_000);
    assert!(matches!(block_on(store.open_lease(&plain, EpochMillis(100_000))).unwrap(), LeaseOpened::Admitted { .. }));
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

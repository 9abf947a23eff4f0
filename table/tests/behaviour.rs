//! One behaviour suite at the store level: every scenario runs on the embedded store and on
//! DynamoDB (moto) through the `BucketStore` trait, from one `--entities` file: the embedded
//! store loads it, and the Python library writes the same namespaces, entities, limits and
//! access flags into the table with its own calls (`oracle.py entities-file`). The clock is
//! the test's (`at(ms)`), on both stores.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use zael_core::bucket::{BucketLimit, Charge, ChargeOutcome, EpochMillis, Millitokens};
use zael_core::entities::parse_entities;
use zael_core::lease::{Lease, LeaseChange};
use zael_core::memory::MemoryStore;
use zael_core::store::{
    BucketStore, EntityOutcome, EntityRequest, LeaseChanged, LeaseOpened, LeaseRequest, LimitOverride, LimitReport,
};

#[derive(Copy, Clone, Debug)]
enum Kind {
    Memory,
    Dynamo,
}

/// Runs each named scenario `async fn name(kind: Kind)` once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::Kind::Memory).await;
            }
            #[tokio::test]
            async fn dynamodb() {
                super::$name(super::Kind::Dynamo).await;
            }
        }
    )*};
}

/// A store and what the scenario reads besides the trait (the buckets' `tc`).
struct Stores {
    store: Arc<dyn BucketStore>,
    memory: Option<Arc<MemoryStore>>,
    /// The table and the namespace ids, on DynamoDB.
    table: Option<(String, Vec<(String, String)>)>,
}

/// Opens a store of `kind` holding `entities` (an `--entities` file).
async fn open(kind: Kind, entities: &str) -> Stores {
    let parsed = parse_entities("test.yaml", entities).expect("entities file");
    match kind {
        Kind::Memory => {
            let memory = Arc::new(MemoryStore::with_entities(parsed));
            Stores { store: memory.clone(), memory: Some(memory), table: None }
        }
        Kind::Dynamo => {
            let table = table_name("behaviour");
            load_entities(&table, entities).await;
            let mut ids = Vec::new();
            for ns in parsed.namespaces.keys() {
                ids.push((ns.clone(), namespace_id(&table, ns).await));
            }
            Stores { store: Arc::new(store(&table).await), memory: None, table: Some((table, ids)) }
        }
    }
}

/// The test's clock: `ms` after a fixed instant.
fn at(ms: i64) -> EpochMillis {
    EpochMillis(1_800_000_000_000 + ms)
}

impl Stores {
    async fn acquire_on(&self, entity: &str, resource: &str, consume: &[(&str, i64)], ms: i64) -> EntityOutcome {
        let mut out = self.store.acquire(&[request(entity, resource, consume)], at(ms)).await;
        out.remove(0).expect("acquire")
    }

    async fn acquire(&self, entity: &str, consume: &[(&str, i64)], ms: i64) -> EntityOutcome {
        self.acquire_on(entity, "gpt-4", consume, ms).await
    }

    /// Per limit of the entity (and its cascade parent): (entity, limit, millitokens).
    async fn balances(&self, entity: &str, ms: i64) -> Vec<(String, String, i64)> {
        let reports = self.store.available("ns", entity, "gpt-4", at(ms)).await.expect("available");
        reports.into_iter().map(|r| (r.entity, r.name, r.tokens.0)).collect()
    }

    /// The bucket's `tc` of a limit on gpt-4.
    async fn consumed(&self, entity: &str, limit: &str) -> i64 {
        if let Some(memory) = &self.memory {
            return memory.consumed("ns", entity, "gpt-4", limit).unwrap_or(0);
        }
        let (table, ids) = self.table.as_ref().expect("a table");
        let ns = &ids.iter().find(|(n, _)| n == "ns").expect("ns").1;
        let item = get_item(table, &zael_table::keys::pk_bucket(ns, entity, "gpt-4", 0)).await;
        item.map_or(0, |i| num(&i, &format!("b_{limit}_tc")))
    }

    async fn open(&self, request: &LeaseRequest, ms: i64) -> Lease {
        match self.store.open_lease(request, at(ms)).await.expect("open") {
            LeaseOpened::Admitted { lease, .. } => lease,
            other => panic!("not admitted: {other:?}"),
        }
    }

    async fn change(&self, lease: &Lease, change: &LeaseChange, ms: i64) -> LeaseChanged {
        self.store.change_lease(lease, change, at(ms)).await.expect("change")
    }
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

fn balance(entity: &str, limit: &str, tokens: i64) -> (String, String, i64) {
    (entity.into(), limit.into(), tokens)
}

fn lease_request(entity: &str, consume: &[(&str, i64)], nonce: &str, idempotent: bool) -> LeaseRequest {
    LeaseRequest {
        acquire: request(entity, "gpt-4", consume),
        overrides: None,
        nonce: nonce.into(),
        idempotent,
        expires_at: at(100_000),
    }
}

fn adjust(deltas: &[(&str, i64)]) -> LeaseChange {
    LeaseChange::Adjust(deltas.iter().map(|(n, tokens)| (n.to_string(), Millitokens(tokens * 1000))).collect())
}

/// Every config level, cascade, soft, disabled and bypass.
const ENTITIES: &str = r#"
namespaces:
  ns:
    system:
      limits: ["rpm:1000"]
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
      spender: {limits: ["tpd:10/day"], soft: [tpd]}
      free:
        resources:
          gpt-4: {limits: ["rpm:1"], disabled: bypass}
  bare: {}
"#;

on_both_stores!(
    a_multi_limit_acquire_debits_every_limit_exactly,
    a_rejection_debits_nothing_and_reports_the_short_limits,
    a_refill_remainder_carries_over_a_warm_admission,
    cascade_charges_the_parent_and_a_parent_rejection_rejects_the_whole,
    disabled_entities_resources_and_parents_are_never_admitted,
    limits_resolve_from_the_first_level_defining_any,
    soft_limits_admit_into_debt,
    bypass_admits_without_a_debit_and_counts_the_usage,
    a_lease_names_every_debited_limit_of_both_sides,
    overrides_replace_the_stored_limits_on_both_sides,
    an_adjust_may_drive_a_balance_into_debt_that_refill_repays,
    a_negative_adjust_credits_the_parent_too,
    a_rollback_credits_what_the_lease_consumed_never_above_the_ceiling,
    a_rollback_below_the_ceiling_credits_exactly,
    a_release_writes_nothing,
    a_retried_adjust_applies_once_and_a_stale_id_conflicts,
    an_expired_lease_changes_nothing,
    an_idempotent_open_replays_its_lease_until_it_expires,
    yaml_rule_charges_are_sequential_with_debt,
    yaml_rule_buckets_of_one_call_are_charged_each_on_its_own,
    the_library_step_sequence,
);

async fn a_multi_limit_acquire_debits_every_limit_exactly(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let first = s.acquire("pair", &[("rpm", 1), ("tpm", 300)], 0).await;
    assert_eq!(admitted(&first), [("pair", "rpm", 9000, 1000, false), ("pair", "tpm", 500_000, 300_000, false)]);
    let EntityOutcome::Admitted(reports) = &first else { unreachable!() };
    assert_eq!(reports[1].limit, BucketLimit::per_period(800, 500, 60));
    assert_eq!((reports[1].shard, reports[1].shard_count, reports[1].bypass, reports[1].at), (0, 1, false, at(0)));
    // 6 s later: rpm refilled 1 token (capped at 10), tpm 50 tokens.
    let second = s.acquire("pair", &[("rpm", 1), ("tpm", 100)], 6_000).await;
    assert_eq!(admitted(&second), [("pair", "rpm", 9000, 1000, false), ("pair", "tpm", 450_000, 100_000, false)]);
    assert_eq!(s.balances("pair", 6_000).await, [balance("pair", "rpm", 9000), balance("pair", "tpm", 450_000)]);
    assert_eq!((s.consumed("pair", "rpm").await, s.consumed("pair", "tpm").await), (2000, 400_000));
    // A zero amount checks without consuming.
    let check = s.acquire("pair", &[("tpm", 0)], 6_000).await;
    assert_eq!(admitted(&check), [("pair", "tpm", 450_000, 0, false)]);
}

/// rpm 10 a minute refills a millitoken every 6 ms: 6,500 ms on, 1,083 have come (6,498 ms of
/// refill). A warm admission writes only the debit, so the 2 ms left over still count later
/// (on DynamoDB the speculative write leaves `rf`; the embedded store keeps `rf + spent`).
async fn a_refill_remainder_carries_over_a_warm_admission(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    s.acquire("pair", &[("rpm", 5)], 0).await;
    let out = s.acquire("pair", &[("rpm", 1)], 6_500).await;
    assert_eq!(admitted(&out), [("pair", "rpm", 5083, 1000, false)]);
    // 12 s of refill in all: 2,000, less the two debits.
    assert_eq!(s.balances("pair", 12_000).await[0], balance("pair", "rpm", 6000));
    let out = s.acquire("pair", &[("rpm", 0)], 12_000).await;
    assert_eq!(admitted(&out), [("pair", "rpm", 6000, 0, false)]);
}

async fn a_rejection_debits_nothing_and_reports_the_short_limits(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    s.acquire("pair", &[("tpm", 300)], 0).await;
    let out = s.acquire("pair", &[("rpm", 1), ("tpm", 600)], 0).await;
    assert_eq!(rejected(&out), [("pair", "rpm", 10_000, 1000, false), ("pair", "tpm", 500_000, 600_000, true)]);
    assert_eq!(s.balances("pair", 0).await, [balance("pair", "rpm", 10_000), balance("pair", "tpm", 500_000)]);
    assert_eq!((s.consumed("pair", "rpm").await, s.consumed("pair", "tpm").await), (0, 300_000));
}

async fn cascade_charges_the_parent_and_a_parent_rejection_rejects_the_whole(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    // rph only the parent has; xyz neither side has (ignored).
    let out = s.acquire("key", &[("rpm", 1), ("tpm", 300), ("rph", 1), ("xyz", 5)], 0).await;
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
    let out = s.acquire("key", &[("rpm", 1), ("tpm", 400)], 0).await;
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
        s.balances("key", 0).await,
        [
            balance("key", "rpm", 9000),
            balance("key", "tpm", 500_000),
            balance("team", "rph", 49_000),
            balance("team", "rpm", 19_000),
            balance("team", "tpm", 300_000),
        ]
    );
    assert_eq!((s.consumed("key", "tpm").await, s.consumed("team", "tpm").await), (300_000, 300_000));
    // A parent without cascade is not charged.
    assert_eq!(admitted(&s.acquire("solo", &[("rpm", 1)], 0).await), [("solo", "rpm", 2000, 1000, false)]);
}

async fn disabled_entities_resources_and_parents_are_never_admitted(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    assert_eq!(s.acquire("off", &[("rpm", 1)], 0).await, EntityOutcome::Disabled { entity: "off".into() });
    assert_eq!(s.acquire("under-off", &[("rpm", 1)], 0).await, EntityOutcome::Disabled { entity: "off".into() });
    let closed = s.acquire_on("stranger", "closed", &[("rpm", 1)], 0).await;
    assert_eq!(closed, EntityOutcome::Disabled { entity: "stranger".into() });
    let opened = s.store.open_lease(&lease_request("off", &[("rpm", 1)], "@1", false), at(0)).await;
    assert_eq!(opened.expect("open"), LeaseOpened::Disabled { entity: "off".into() });
    if let Some(memory) = &s.memory {
        assert_eq!(memory.entity_buckets_len(), 0);
    }
}

async fn limits_resolve_from_the_first_level_defining_any(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let capacities = async |entity: &str, resource: &str| -> Vec<(String, i64)> {
        match s.acquire_on(entity, resource, &[("rpm", 1), ("tpm", 1)], 0).await {
            EntityOutcome::Admitted(reports) => reports.into_iter().map(|r| (r.name, r.limit.capacity.0)).collect(),
            other => panic!("{other:?}"),
        }
    };
    // Entity + resource, the entity's default, the resource's, the system's.
    assert_eq!(capacities("pair", "gpt-4").await, [("rpm".into(), 10_000), ("tpm".into(), 800_000)]);
    assert_eq!(capacities("solo", "gpt-4").await, [("rpm".into(), 3000)]);
    assert_eq!(capacities("stranger", "gpt-4").await, [("rpm".into(), 100_000), ("tpm".into(), 100_000_000)]);
    assert_eq!(capacities("stranger", "claude").await, [("rpm".into(), 1_000_000)]);
    let bare = EntityRequest { namespace: "bare".into(), ..request("x", "gpt-4", &[("rpm", 1)]) };
    assert_eq!(s.store.acquire(&[bare], at(0)).await[0].as_ref().expect("acquire"), &EntityOutcome::NoLimits);
    assert!(s.store.available("bare", "x", "gpt-4", at(0)).await.expect("available").is_empty());
}

async fn soft_limits_admit_into_debt(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let out = s.acquire("spender", &[("tpd", 15)], 0).await;
    assert_eq!(admitted(&out), [("spender", "tpd", -5000, 15_000, false)]);
    let out = s.acquire("spender", &[("tpd", 1)], 0).await;
    assert_eq!(admitted(&out), [("spender", "tpd", -6000, 1000, false)]);
}

async fn bypass_admits_without_a_debit_and_counts_the_usage(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    for _ in 0..3 {
        let EntityOutcome::Admitted(reports) = s.acquire("free", &[("rpm", 1)], 0).await else { panic!("bypassed") };
        assert_eq!(summary(&reports), [("free", "rpm", 1000, 1000, false)]);
        assert!(reports[0].bypass);
    }
    assert_eq!(s.consumed("free", "rpm").await, 3000);
}

async fn a_lease_names_every_debited_limit_of_both_sides(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("key", &[("rpm", 1), ("tpm", 300)], "@a", false), 0).await;
    assert_eq!((lease.namespace.as_str(), lease.entity.as_str(), lease.resource.as_str()), ("ns", "key", "gpt-4"));
    assert_eq!((lease.nonce.as_str(), lease.seq, lease.expires_at), ("@a", 0, at(100_000).0));
    let entries: Vec<(&str, &str, i64, i64)> =
        lease.entries.iter().map(|e| (e.entity.as_str(), e.limit.as_str(), e.amount, e.shard)).collect();
    assert_eq!(
        entries,
        [("key", "rpm", 1000, 0), ("key", "tpm", 300_000, 0), ("team", "rpm", 1000, 0), ("team", "tpm", 300_000, 0)]
    );
}

async fn overrides_replace_the_stored_limits_on_both_sides(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let mut request = lease_request("key", &[("rpm", 2)], "@o", false);
    request.overrides = Some(vec![LimitOverride { name: "rpm".into(), limit: BucketLimit::per_period(2, 2, 60) }]);
    let LeaseOpened::Admitted { reports, .. } = s.store.open_lease(&request, at(0)).await.expect("open") else {
        panic!("not admitted")
    };
    assert_eq!(summary(&reports), [("key", "rpm", 0, 2000, false), ("team", "rpm", 0, 2000, false)]);
    assert_eq!(reports[1].limit.capacity, Millitokens(2000));
    let again = s.store.open_lease(&LeaseRequest { nonce: "@p".into(), ..request }, at(0)).await.expect("open");
    assert!(matches!(again, LeaseOpened::Rejected(_)), "{again:?}");
}

async fn an_adjust_may_drive_a_balance_into_debt_that_refill_repays(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("pair", &[("rpm", 1), ("tpm", 700)], "@a", false), 0).await;
    assert_eq!(s.change(&lease, &adjust(&[("tpm", 300)]), 0).await, LeaseChanged::Applied);
    assert_eq!(s.balances("pair", 0).await, [balance("pair", "rpm", 9000), balance("pair", "tpm", -200_000)]);
    assert_eq!(s.consumed("pair", "tpm").await, 1_000_000);
    // 500 tokens a minute: 36 s give 300.
    assert_eq!(s.balances("pair", 36_000).await[1], balance("pair", "tpm", 100_000));
    let out = s.acquire("pair", &[("tpm", 200)], 36_000).await;
    assert_eq!(rejected(&out), [("pair", "tpm", 100_000, 200_000, true)]);
}

async fn a_negative_adjust_credits_the_parent_too(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("key", &[("tpm", 300)], "@a", false), 0).await;
    assert_eq!(s.change(&lease, &adjust(&[("tpm", -100)]), 0).await, LeaseChanged::Applied);
    assert_eq!(s.balances("key", 0).await[1], balance("key", "tpm", 600_000));
    assert_eq!(s.balances("key", 0).await[4], balance("team", "tpm", 400_000));
    assert_eq!((s.consumed("key", "tpm").await, s.consumed("team", "tpm").await), (200_000, 200_000));
}

async fn a_rollback_credits_what_the_lease_consumed_never_above_the_ceiling(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("pair", &[("rpm", 4), ("tpm", 300)], "@a", false), 0).await;
    assert_eq!(s.balances("pair", 0).await, [balance("pair", "rpm", 6000), balance("pair", "tpm", 500_000)]);
    // 30 s later tpm has refilled 250 tokens (750 of 800): the credit of 300 stops at 800;
    // rpm has refilled 5 (6 + 5, capped at 10): its credit of 4 is trimmed away.
    assert_eq!(s.change(&lease, &LeaseChange::Rollback, 30_000).await, LeaseChanged::Applied);
    assert_eq!(s.balances("pair", 30_000).await, [balance("pair", "rpm", 10_000), balance("pair", "tpm", 800_000)]);
    assert_eq!((s.consumed("pair", "rpm").await, s.consumed("pair", "tpm").await), (0, 0));
    // The retry is recognised; a release after it is refused.
    assert_eq!(s.change(&lease, &LeaseChange::Rollback, 30_000).await, LeaseChanged::AlreadyApplied);
    assert_eq!(
        s.change(&lease, &LeaseChange::Release, 30_000).await,
        LeaseChanged::Conflict("the lease was already rolled back".into())
    );
    assert_eq!(s.consumed("pair", "tpm").await, 0);
}

async fn a_rollback_below_the_ceiling_credits_exactly(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    s.acquire("pair", &[("tpm", 400)], 0).await;
    let lease = s.open(&lease_request("pair", &[("tpm", 300)], "@a", false), 0).await;
    assert_eq!(s.change(&lease, &LeaseChange::Rollback, 0).await, LeaseChanged::Applied);
    assert_eq!(s.balances("pair", 0).await[1], balance("pair", "tpm", 400_000));
    assert_eq!(s.consumed("pair", "tpm").await, 400_000);
}

async fn a_release_writes_nothing(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("key", &[("tpm", 300)], "@a", false), 0).await;
    let before = s.balances("key", 0).await;
    assert_eq!(s.change(&lease, &LeaseChange::Release, 0).await, LeaseChanged::Applied);
    assert_eq!(s.balances("key", 0).await, before);
    assert_eq!(s.consumed("key", "tpm").await, 300_000);
    assert_eq!(s.change(&lease, &LeaseChange::Release, 0).await, LeaseChanged::AlreadyApplied);
    assert_eq!(
        s.change(&lease, &LeaseChange::Rollback, 0).await,
        LeaseChanged::Conflict("the lease was already released".into())
    );
    assert_eq!(s.balances("key", 0).await, before);
}

async fn a_retried_adjust_applies_once_and_a_stale_id_conflicts(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("pair", &[("tpm", 100)], "@a", false), 0).await;
    let plus = adjust(&[("tpm", 50)]);
    assert_eq!(s.change(&lease, &plus, 0).await, LeaseChanged::Applied);
    assert_eq!(s.change(&lease, &plus, 0).await, LeaseChanged::AlreadyApplied);
    assert_eq!(s.balances("pair", 0).await[1], balance("pair", "tpm", 650_000));
    assert_eq!(s.consumed("pair", "tpm").await, 150_000);
    // Another change with the first id: stale.
    let LeaseChanged::Conflict(message) = s.change(&lease, &adjust(&[("tpm", 1)]), 0).await else {
        panic!("not a conflict")
    };
    assert!(message.contains("stale"), "{message}");
    // With the id the adjust answered, the rollback credits acquire and adjust together, once.
    let next = lease.after(&plus);
    assert_eq!(s.change(&next, &LeaseChange::Rollback, 0).await, LeaseChanged::Applied);
    assert_eq!(s.change(&next, &LeaseChange::Rollback, 0).await, LeaseChanged::AlreadyApplied);
    assert_eq!(s.balances("pair", 0).await[1], balance("pair", "tpm", 800_000));
    assert_eq!(s.consumed("pair", "tpm").await, 0);
}

async fn an_expired_lease_changes_nothing(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let lease = s.open(&lease_request("pair", &[("tpm", 100)], "@a", false), 0).await;
    let out = s.change(&lease, &LeaseChange::Rollback, 100_000).await;
    assert!(matches!(&out, LeaseChanged::Conflict(m) if m.contains("expired")), "{out:?}");
    assert_eq!(s.consumed("pair", "tpm").await, 100_000);
}

async fn an_idempotent_open_replays_its_lease_until_it_expires(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let request = lease_request("key", &[("rpm", 1), ("tpm", 100)], "req-1", true);
    let lease = s.open(&request, 0).await;
    let replay = s.store.open_lease(&request, at(50_000)).await.expect("open");
    assert_eq!(replay, LeaseOpened::Replayed { lease: lease.clone() });
    assert_eq!((s.consumed("key", "tpm").await, s.consumed("team", "tpm").await), (100_000, 100_000));
    // Adjusted meanwhile: a replay still answers the lease as opened.
    assert_eq!(s.change(&lease, &adjust(&[("tpm", 10)]), 50_000).await, LeaseChanged::Applied);
    let replay = s.store.open_lease(&request, at(50_000)).await.expect("open");
    assert_eq!(replay, LeaseOpened::Replayed { lease: lease.clone() });
    // Once expired, the same request id opens (and charges) a new lease.
    let later = LeaseRequest { expires_at: at(200_000), ..request.clone() };
    let fresh = s.open(&later, 100_000).await;
    assert_eq!(fresh.expires_at, at(200_000).0);
    assert_eq!(s.consumed("key", "tpm").await, 210_000);
    // A request without idempotency never replays.
    let plain = lease_request("key", &[("tpm", 1)], "@n", false);
    s.open(&plain, 100_000).await;
    let again = s.store.open_lease(&plain, at(100_000)).await.expect("open");
    assert!(matches!(again, LeaseOpened::Admitted { .. }), "{again:?}");
}

/// A YAML rule's bucket: charges in order, each seeing the balance the previous one left; a
/// debt charge that does not fit is applied anyway (floored) and reported rejected.
async fn yaml_rule_charges_are_sequential_with_debt(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let limit = BucketLimit::per_period(5, 5, 60);
    let strict = |cost| Charge { cost, allow_debt: false };
    let debt = |cost| Charge { cost, allow_debt: true };
    let mut req = common::request("ns", "user_alice", "demo.user", limit, &[strict(2), strict(4), strict(3)]);
    let rows = |o: &[ChargeOutcome]| o.iter().map(|o| (o.admitted, o.tokens.0)).collect::<Vec<_>>();
    let charge = async |req: &zael_core::store::BucketRequest, ms| {
        s.store.charge(std::slice::from_ref(req), at(ms)).await.expect("charge").remove(0)
    };
    assert_eq!(rows(&charge(&req, 0).await), [(true, 3000), (false, 3000), (true, 0)]);
    req.charges = vec![debt(2), strict(0)];
    assert_eq!(rows(&charge(&req, 0).await), [(false, -2000), (false, -2000)]);
    // 5 per minute: 36 s give 3 tokens, one left after the debt.
    req.charges = vec![strict(1), strict(1)];
    assert_eq!(rows(&charge(&req, 36_000).await), [(true, 0), (false, 0)]);
}

/// One call charging several YAML-rule buckets answers each on its own, in order.
async fn yaml_rule_buckets_of_one_call_are_charged_each_on_its_own(kind: Kind) {
    let s = open(kind, ENTITIES).await;
    let one = |entity: &str, capacity, cost| {
        let charges = [Charge { cost, allow_debt: false }];
        common::request("ns", entity, "demo.key", BucketLimit::per_period(capacity, capacity, 3600), &charges)
    };
    let requests = [one("key_a", 1, 1), one("key_b", 5, 2), one("key_a", 1, 0)];
    let rows = |out: Vec<Vec<ChargeOutcome>>| -> Vec<Vec<(bool, i64)>> {
        out.iter().map(|o| o.iter().map(|o| (o.admitted, o.tokens.0)).collect()).collect()
    };
    let first = s.store.charge(&requests[..2], at(0)).await.expect("charge");
    assert_eq!(rows(first), [vec![(true, 0)], vec![(true, 3000)]]);
    let second = s.store.charge(&requests, at(0)).await.expect("charge");
    assert_eq!(rows(second), [vec![(false, 0)], vec![(true, 1000)], vec![(true, 0)]]);
}

/// The Python library's step sequence (`table/tests/entities.rs`): both stores give the
/// library's outcome and balances at every step.
async fn the_library_step_sequence(kind: Kind) {
    let python = library_steps().await;
    let s = open(kind, LIBRARY_ENTITIES).await;
    let steps = library_steps_input();
    for (i, step) in steps.as_array().expect("steps").iter().enumerate() {
        let (entity, resource) = (step[0].as_str().unwrap(), step[1].as_str().unwrap());
        let consume: Vec<(&str, i64)> =
            step[2].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_i64().unwrap())).collect();
        let request = EntityRequest { namespace: "tenant".into(), ..request(entity, resource, &consume) };
        let outcome = s.store.acquire(&[request], EpochMillis::now()).await.remove(0).expect("acquire");
        let expected = &python[i];
        let name = match &outcome {
            EntityOutcome::Admitted(_) => "admitted",
            EntityOutcome::Rejected(_) => "rejected",
            EntityOutcome::Disabled { .. } => "disabled",
            EntityOutcome::NoLimits => "no_limits",
        };
        assert_eq!(name, expected[0], "step {i} {step}: {outcome:?}");
        if let EntityOutcome::Admitted(reports) | EntityOutcome::Rejected(reports) = &outcome {
            assert!(!reports.is_empty(), "step {i}");
            for r in reports {
                let whole = Millitokens(r.tokens.0 * r.shard_count).floor_tokens();
                assert_eq!(json!(whole), expected[1][&r.entity][&r.name], "step {i} {step}: {} {}", r.entity, r.name);
            }
        }
    }
}

/// `oracle.py entity-setup` as an `--entities` file.
const LIBRARY_ENTITIES: &str = include_str!("library-entities.yaml");

fn library_steps_input() -> Value {
    let text = include_str!("steps.json");
    serde_json::from_str(text).expect("steps.json")
}

/// The library's answers to the steps on its own table (run once per test binary).
async fn library_steps() -> Value {
    static ONCE: tokio::sync::OnceCell<Value> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let table = table_name("behaviour-python");
        oracle(&["entity-setup".into(), table.clone(), "tenant".into()]).await;
        let out = oracle(&["entity-run".into(), table, "tenant".into(), library_steps_input().to_string()]).await;
        serde_json::from_str(out.trim()).expect("oracle output")
    })
    .await
    .clone()
}

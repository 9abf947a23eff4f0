//! The embedded store: buckets inside the server process.
//!
//! **YAML-rule buckets** live in a sharded concurrent map; each is updated under its shard's
//! lock, so concurrent requests never over-admit. A bucket that has refilled to full is
//! equivalent to one that does not exist, so [`MemoryStore::evict_full`] drops those; memory
//! is bounded by the buckets that are still refilling, and by [`BucketBound`]: at the bound,
//! the buckets whose loss admits the least go first ([`crate::pressure`], `memory/bound.rs`).
//!
//! **Entities** ([`MemoryStore::with_entities`], the `--entities` file, [`crate::entities`])
//! have their own buckets: one per (namespace, entity, resource), holding every resolved limit
//! of it (balance and `tc`, the cumulative consumption), always one shard. Entity buckets and
//! lease states sit under one lock, so an acquire that charges an entity and its parent, and
//! a lease change that writes buckets and the lease's state, are each one atomic step (this
//! store is for local use; the lock is held for microseconds). Every opened lease is kept
//! until it expires: an idempotent one to replay, every one so its buckets are not evicted
//! while it may still adjust them.

use crate::acquire::{BucketRead, HeldLimit, Params, SideInput, SidePlan, balances, decide, plan_side};
use crate::bucket::{BucketLimit, BucketState, ChargeOutcome, EpochMillis, Millitokens};
use crate::entities::{Access, Entities, Namespace, StoredLimit};
use crate::keys::{BucketKey, is_valid_entity_id, is_valid_resource};
use crate::lease::{Lease, LeaseChange, LeaseState, Verdict};
use crate::pressure::{BucketBound, Use};
use crate::store::{
    BucketRequest, BucketStore, EntityOutcome, EntityRequest, LeaseChanged, LeaseOpened, LeaseRequest, LimitOverride,
    LimitReport, OnUnavailable, StoreError,
};
pub use bound::Pressure;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

mod bound;

#[derive(Debug)]
struct Slot {
    state: BucketState,
    /// The limit of the last charge, used to tell when the bucket is full again.
    limit: BucketLimit,
    /// The last charge, and how many there were.
    used: Use,
}

impl Slot {
    fn charge(&mut self, request: &BucketRequest, now: EpochMillis) -> Vec<ChargeOutcome> {
        self.limit = request.limit;
        self.used = self.used.again(now);
        self.state.charge_all(&request.limit, now, &request.charges)
    }
}

/// In-process buckets.
#[derive(Debug, Default)]
pub struct MemoryStore {
    buckets: DashMap<BucketKey, Slot>,
    /// YAML-rule buckets held or being inserted: what the bound is checked against.
    live: AtomicUsize,
    bound: BucketBound,
    /// Buckets dropped because they refilled to full, and under the bound's pressure (with
    /// the new keys decided but not kept), and the loss of the latter in millitokens.
    refilled_dropped: AtomicU64,
    pressure_dropped: AtomicU64,
    pressure_lost: AtomicI64,
    entities: Entities,
    /// An `--entities` file was given.
    has_entities: bool,
    held: Mutex<Held>,
}

/// Where an entity bucket is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EntityBucketId {
    namespace: String,
    entity: String,
    resource: String,
}

impl EntityBucketId {
    fn new(namespace: &str, entity: &str, resource: &str) -> Self {
        EntityBucketId { namespace: namespace.to_owned(), entity: entity.to_owned(), resource: resource.to_owned() }
    }
}

/// One limit of an entity bucket.
#[derive(Debug)]
struct LimitSlot {
    /// The parameters of the last acquire (the resolved limit or an override).
    limit: BucketLimit,
    state: BucketState,
    /// Millitokens consumed over the bucket's life (the table's `tc`).
    consumed: i64,
}

impl LimitSlot {
    fn full_at(&self, now: EpochMillis) -> bool {
        self.state.refilled(&self.limit, now).tokens >= self.limit.capacity
    }
}

/// An opened lease and its state.
#[derive(Debug)]
struct LeaseRecord {
    /// The lease as opened (what an idempotent retry answers).
    lease: Lease,
    state: LeaseState,
    idempotent: bool,
}

/// Entity buckets and lease states, changed together under one lock.
#[derive(Debug, Default)]
struct Held {
    buckets: HashMap<EntityBucketId, BTreeMap<String, LimitSlot>>,
    /// By (entity bucket of the lease, nonce).
    leases: HashMap<(EntityBucketId, String), LeaseRecord>,
    /// Lease count at which an insert first drops the expired ones.
    purge_at: usize,
}

/// Leases kept before an insert drops the expired ones (then twice what remains).
const LEASE_PURGE_MIN: usize = 1024;

impl Held {
    fn insert_lease(&mut self, key: (EntityBucketId, String), record: LeaseRecord, now: EpochMillis) {
        if self.leases.len() >= self.purge_at {
            self.leases.retain(|_, r| !r.lease.expired(now));
            self.purge_at = (self.leases.len() * 2).max(LEASE_PURGE_MIN);
        }
        self.leases.insert(key, record);
    }
}

/// One side of an entity acquire (the entity, or its parent under cascade).
struct Side<'a> {
    entity: &'a str,
    limits: Vec<StoredLimit>,
    /// The requested limits this side has, with their amounts in millitokens.
    declared: Vec<(String, i64)>,
    /// Enforced or bypassed.
    access: Access,
}

/// What an entity acquire is, before it meets the buckets.
enum Plan<'a> {
    Decided(EntityOutcome),
    Charge(Vec<Side<'a>>),
}

/// An entity bucket as the engine reads it: one shard, each limit with its last parameters.
fn bucket_read(slots: &BTreeMap<String, LimitSlot>) -> BucketRead<'_> {
    BucketRead {
        shard_count: 1,
        limits: slots
            .iter()
            .map(|(name, slot)| HeldLimit {
                name,
                limit: slot.limit,
                state: slot.state,
                soft_stamp: false,
                whole: false,
            })
            .collect(),
    }
}

fn unknown_namespace(namespace: &str) -> StoreError {
    StoreError::NotFound(format!(
        "namespace '{namespace}' is not registered (zael-server --entities FILE declares namespaces)"
    ))
}

fn check_ids(entity: &str, resource: &str) -> Result<(), StoreError> {
    if is_valid_entity_id(entity) && is_valid_resource(resource) {
        Ok(())
    } else {
        Err(StoreError::Refused(format!(
            "entity '{entity}' on resource '{resource}' is outside the zae-limiter identifier rules"
        )))
    }
}

impl MemoryStore {
    /// A store without entities: Envoy entity rules are admitted without a limit (as before
    /// `--entities` existed); the native API's calls answer [`StoreError::NotFound`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with the namespaces, entities and stored limits of an `--entities` file.
    pub fn with_entities(entities: Entities) -> Self {
        MemoryStore { entities, has_entities: true, ..Self::default() }
    }

    /// The entities the store was given.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// Number of YAML-rule buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Number of entity buckets held (one per entity and resource).
    pub fn entity_buckets_len(&self) -> usize {
        self.held().buckets.len()
    }

    /// The `tc` (millitokens consumed over the bucket's life) of one limit of an entity
    /// bucket; `None` when the bucket or the limit is not held.
    pub fn consumed(&self, namespace: &str, entity: &str, resource: &str, limit: &str) -> Option<i64> {
        self.held().buckets.get(&EntityBucketId::new(namespace, entity, resource))?.get(limit).map(|l| l.consumed)
    }

    /// Number of leases held (until they expire).
    pub fn leases_len(&self) -> usize {
        self.held().leases.len()
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // The state is consistent between statements, so a panic elsewhere leaves it usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every bucket that has refilled to its capacity by `now`, and every lease that
    /// has expired; returns how many buckets. An entity bucket goes only when every limit
    /// of it is full and no live lease names it.
    pub fn evict_full(&self, now: EpochMillis) -> usize {
        let mut dropped = 0;
        self.buckets.retain(|_, slot| {
            let keep = slot.state.refilled(&slot.limit, now).tokens < slot.limit.capacity;
            dropped += usize::from(!keep);
            keep
        });
        self.live.fetch_sub(dropped, Ordering::AcqRel);
        self.refilled_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        let mut held = self.held();
        held.leases.retain(|_, r| !r.lease.expired(now));
        let pinned: HashSet<EntityBucketId> = held
            .leases
            .values()
            .filter(|r| r.state.ended.is_none())
            .flat_map(|r| {
                r.lease.entries.iter().map(|e| EntityBucketId::new(&r.lease.namespace, &e.entity, &r.lease.resource))
            })
            .collect();
        let before = held.buckets.len();
        held.buckets.retain(|id, limits| pinned.contains(id) || limits.values().any(|l| !l.full_at(now)));
        dropped += before.saturating_sub(held.buckets.len());
        dropped
    }

    /// Applies one bucket's charges atomically. A new key while the store holds as many
    /// buckets as its bound allows is decided as a new bucket and not kept.
    pub fn charge_bucket(&self, request: &BucketRequest, now: EpochMillis) -> Vec<ChargeOutcome> {
        if let Some(mut slot) = self.buckets.get_mut(&request.key) {
            return slot.charge(request, now);
        }
        if !self.take_room() {
            return self.decide_unkept(request, now);
        }
        match self.buckets.entry(request.key.clone()) {
            Entry::Occupied(mut held) => {
                // Another request inserted it first: the room taken is not needed.
                self.live.fetch_sub(1, Ordering::AcqRel);
                held.get_mut().charge(request, now)
            }
            Entry::Vacant(place) => {
                let full = BucketState::full(&request.limit, now);
                let mut slot = Slot { state: full, limit: request.limit, used: Use::first(now) };
                let outcomes = slot.state.charge_all(&request.limit, now, &request.charges);
                place.insert(slot);
                outcomes
            }
        }
    }

    fn namespace(&self, namespace: &str) -> Result<&Namespace, StoreError> {
        self.entities.namespace(namespace).ok_or_else(|| unknown_namespace(namespace))
    }

    /// The sides an acquire charges, or what it answers without charging.
    fn plan<'a>(
        &'a self,
        request: &'a EntityRequest,
        overrides: Option<&[LimitOverride]>,
    ) -> Result<Plan<'a>, StoreError> {
        check_ids(&request.entity, &request.resource)?;
        let ns = self.namespace(&request.namespace)?;
        if let Some((name, amount)) = request.consume.iter().find(|(_, a)| a.0 < 0) {
            return Err(StoreError::Refused(format!("a negative amount ({} millitokens) of '{name}'", amount.0)));
        }
        // The requested amounts, one per limit name.
        let mut consume: Vec<(&str, i64)> = Vec::with_capacity(request.consume.len());
        for (name, amount) in &request.consume {
            match consume.iter_mut().find(|(n, _)| *n == &**name) {
                Some((_, a)) => *a = a.saturating_add(amount.0),
                None => consume.push((name, amount.0)),
            }
        }
        let resource = request.resource.as_str();
        let limits_of = |entity: &str| -> Vec<StoredLimit> {
            match overrides {
                Some(o) => {
                    o.iter().map(|o| StoredLimit { name: o.name.clone(), limit: o.limit, soft: false }).collect()
                }
                None => ns.resolve(entity, resource).map(|r| r.limits.to_vec()).unwrap_or_default(),
            }
        };
        let side = |entity: &'a str, limits: Vec<StoredLimit>, access: Access| {
            let declared = consume
                .iter()
                .filter(|(n, _)| limits.iter().any(|l| l.name == *n))
                .map(|(n, a)| (n.to_string(), *a))
                .collect();
            Side { entity, limits, declared, access }
        };
        let entity = request.entity.as_str();
        let access = ns.access(entity, resource);
        if access == Access::Disabled {
            return Ok(Plan::Decided(EntityOutcome::Disabled { entity: entity.to_owned() }));
        }
        let own = limits_of(entity);
        if own.is_empty() {
            return Ok(Plan::Decided(EntityOutcome::NoLimits));
        }
        let mut sides = vec![side(entity, own, access)];
        if let Some(parent) = ns.cascades_to(entity) {
            let access = ns.access(parent, resource);
            if access == Access::Disabled {
                return Ok(Plan::Decided(EntityOutcome::Disabled { entity: parent.to_owned() }));
            }
            let limits = limits_of(parent);
            if !limits.is_empty() {
                sides.push(side(parent, limits, access));
            }
        }
        Ok(Plan::Charge(sides))
    }

    /// Charges every side or none: plans each side on its bucket ([`crate::acquire`]), lets
    /// the engine decide, then applies every side's plan when admitted.
    fn charge_sides(held: &mut Held, request: &EntityRequest, sides: &[Side<'_>], now: EpochMillis) -> EntityOutcome {
        let id = |side: &Side<'_>| EntityBucketId::new(&request.namespace, side.entity, &request.resource);
        let plans: Vec<SidePlan<'_>> = sides
            .iter()
            .map(|side| {
                let bucket = held.buckets.get(&id(side)).map(bucket_read);
                let input = SideInput {
                    entity: side.entity,
                    config: &side.limits,
                    requested: &side.declared,
                    access: side.access,
                    shard: 0,
                    bucket,
                    new_shard_count: 1,
                    // The config's parameters win over those a slot was last charged with.
                    params: Params::Config,
                };
                plan_side(input, now)
            })
            .collect();
        let judged = decide(&plans, now);
        if !judged.admitted {
            return EntityOutcome::Rejected(judged.reports);
        }
        for (side, plan) in sides.iter().zip(&plans) {
            let bucket = held.buckets.entry(id(side)).or_default();
            for l in &plan.limits {
                let state = BucketState { tokens: l.after(), refilled_at: l.start.refilled_at };
                let slot = bucket.entry(l.name.clone()).or_insert(LimitSlot { limit: l.limit, state, consumed: 0 });
                slot.limit = l.limit;
                slot.state = state;
                slot.consumed = slot.consumed.saturating_add(l.usage);
            }
        }
        EntityOutcome::Admitted(judged.reports)
    }

    fn acquire_one(&self, request: &EntityRequest, now: EpochMillis) -> Result<EntityOutcome, StoreError> {
        match self.plan(request, None)? {
            Plan::Decided(outcome) => Ok(outcome),
            Plan::Charge(sides) => Ok(Self::charge_sides(&mut self.held(), request, &sides, now)),
        }
    }

    fn open_lease_now(&self, request: &LeaseRequest, now: EpochMillis) -> Result<LeaseOpened, StoreError> {
        let acquire = &request.acquire;
        let plan = self.plan(acquire, request.overrides.as_deref())?;
        let key = (EntityBucketId::new(&acquire.namespace, &acquire.entity, &acquire.resource), request.nonce.clone());
        let mut held = self.held();
        if request.idempotent
            && let Some(record) = held.leases.get(&key)
            && record.idempotent
            && !record.lease.expired(now)
        {
            return Ok(LeaseOpened::Replayed { lease: record.lease.clone() });
        }
        let sides = match plan {
            Plan::Decided(EntityOutcome::Disabled { entity }) => return Ok(LeaseOpened::Disabled { entity }),
            Plan::Decided(_) => return Ok(LeaseOpened::NoLimits),
            Plan::Charge(sides) => sides,
        };
        let reports = match Self::charge_sides(&mut held, acquire, &sides, now) {
            EntityOutcome::Admitted(reports) => reports,
            EntityOutcome::Rejected(reports) => return Ok(LeaseOpened::Rejected(reports)),
            EntityOutcome::Disabled { entity } => return Ok(LeaseOpened::Disabled { entity }),
            EntityOutcome::NoLimits => return Ok(LeaseOpened::NoLimits),
        };
        let lease = request.lease(&reports);
        let record = LeaseRecord { lease: lease.clone(), state: LeaseState::default(), idempotent: request.idempotent };
        held.insert_lease(key, record, now);
        Ok(LeaseOpened::Admitted { lease, reports })
    }

    fn change_lease_now(
        &self,
        lease: &Lease,
        change: &LeaseChange,
        now: EpochMillis,
    ) -> Result<LeaseChanged, StoreError> {
        self.namespace(&lease.namespace)?;
        if let Some(message) = lease.expiry(now) {
            return Ok(LeaseChanged::Conflict(message));
        }
        let key = (EntityBucketId::new(&lease.namespace, &lease.entity, &lease.resource), lease.nonce.clone());
        let mut held = self.held();
        let state = held.leases.get(&key).map(|r| r.state.clone()).unwrap_or_default();
        match state.verdict(lease, change) {
            Verdict::Conflict(message) => return Ok(LeaseChanged::Conflict(message)),
            Verdict::Done => return Ok(LeaseChanged::AlreadyApplied),
            Verdict::Apply => {}
        }
        for write in lease.writes(change) {
            // This store has one shard; a bucket that is gone has nothing to change.
            let id = EntityBucketId::new(&lease.namespace, &write.entity, &lease.resource);
            let Some(bucket) = held.buckets.get_mut(&id).filter(|_| write.shard == 0) else { continue };
            for (name, delta) in &write.deltas {
                let Some(slot) = bucket.get_mut(name) else { continue };
                slot.state = slot.state.refilled(&slot.limit, now);
                if !write.bypass {
                    let tokens = slot.state.tokens - Millitokens(*delta);
                    // A debit has no floor; a credit never lifts a balance above the ceiling.
                    slot.state.tokens = if *delta > 0 { tokens } else { tokens.min(slot.limit.capacity) };
                }
                slot.consumed = slot.consumed.saturating_add(*delta);
            }
        }
        let next = LeaseState::after(lease, change);
        match held.leases.get_mut(&key) {
            Some(record) => record.state = next,
            None => {
                let record = LeaseRecord { lease: lease.clone(), state: next, idempotent: false };
                held.insert_lease(key, record, now);
            }
        }
        Ok(LeaseChanged::Applied)
    }

    fn available_now(
        &self,
        namespace: &str,
        entity: &str,
        resource: &str,
        now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        check_ids(entity, resource)?;
        let ns = self.namespace(namespace)?;
        let Some(own) = ns.resolve(entity, resource) else { return Ok(Vec::new()) };
        let mut sides = vec![(entity, own.limits)];
        if let Some(parent) = ns.cascades_to(entity)
            && let Some(limits) = ns.resolve(parent, resource)
        {
            sides.push((parent, limits.limits));
        }
        let held = self.held();
        let mut reports = Vec::new();
        for (owner, limits) in sides {
            let bucket = held.buckets.get(&EntityBucketId::new(namespace, owner, resource)).map(bucket_read);
            reports.extend(balances(owner, limits, vec![bucket], Params::Config, now));
        }
        Ok(reports)
    }
}

#[async_trait::async_trait]
impl BucketStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn charge(
        &self,
        requests: &[BucketRequest],
        now: EpochMillis,
    ) -> Result<Vec<Vec<ChargeOutcome>>, StoreError> {
        Ok(requests.iter().map(|r| self.charge_bucket(r, now)).collect())
    }

    async fn acquire(&self, requests: &[EntityRequest], now: EpochMillis) -> Vec<Result<EntityOutcome, StoreError>> {
        if !self.has_entities {
            return requests.iter().map(|_| Ok(EntityOutcome::NoLimits)).collect();
        }
        requests.iter().map(|r| self.acquire_one(r, now)).collect()
    }

    async fn open_lease(&self, request: &LeaseRequest, now: EpochMillis) -> Result<LeaseOpened, StoreError> {
        self.open_lease_now(request, now)
    }

    async fn change_lease(
        &self,
        lease: &Lease,
        change: &LeaseChange,
        now: EpochMillis,
    ) -> Result<LeaseChanged, StoreError> {
        self.change_lease_now(lease, change, now)
    }

    async fn available(
        &self,
        namespace: &str,
        entity: &str,
        resource: &str,
        now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        self.available_now(namespace, entity, resource, now)
    }

    fn on_unavailable(&self, namespace: &str) -> Option<OnUnavailable> {
        self.entities.on_unavailable(namespace)
    }
}

#[cfg(test)]
mod entity_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{Charge, Millitokens};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn request(entity: &str, capacity: u64, cost: u64) -> BucketRequest {
        BucketRequest {
            key: BucketKey { namespace: "ns".into(), resource: "r".into(), entity: entity.into() },
            limit: BucketLimit::per_period(capacity, capacity, 86_400),
            charges: vec![Charge { cost, allow_debt: false }],
            reserve: true,
        }
    }

    #[test]
    fn concurrent_threads_admit_exactly_the_capacity() {
        let store = Arc::new(MemoryStore::new());
        let admitted = Arc::new(AtomicUsize::new(0));
        let now = EpochMillis(1_000_000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let store = store.clone();
                let admitted = admitted.clone();
                s.spawn(move || {
                    for _ in 0..500 {
                        if store.charge_bucket(&request("hot", 1000, 1), now)[0].admitted {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn full_buckets_are_evicted_and_refilling_ones_kept() {
        let store = MemoryStore::new();
        let t0 = EpochMillis(0);
        store.charge_bucket(&request("used", 10, 1), t0);
        store.charge_bucket(&request("checked", 10, 0), t0);
        assert_eq!(store.len(), 2);
        assert_eq!(store.evict_full(t0), 1);
        assert_eq!(store.len(), 1);
        // One token per 8640 s: full again after that.
        assert_eq!(store.evict_full(EpochMillis(8_639_000)), 0);
        assert_eq!(store.evict_full(EpochMillis(8_640_000)), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn a_smaller_capacity_clamps_the_stored_balance() {
        let store = MemoryStore::new();
        let t0 = EpochMillis(0);
        store.charge_bucket(&request("b", 10, 1), t0);
        let out = store.charge_bucket(&request("b", 3, 1), t0);
        assert_eq!(out[0].tokens, Millitokens(2000));
    }
}

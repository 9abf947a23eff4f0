//! Token reservations of entity buckets (entity rules, and the native API's `Acquire` without
//! a request id): the writes behind [`zael_core::reserve_set`]'s rules, the way
//! [`super::reserve`] does them for YAML-rule buckets. A block is the entity fast path's
//! speculative write ([`Inner::speculate`], every condition of it) for one horizon of each
//! limit the decisions charge, so the shared bucket is debited before any of it is handed out
//! and `tc` counts it; what goes back unused is the self-trimming credit.
//!
//! Under cascade the entity's bucket and its parent's are reserved apart (each its own
//! [`Entry`], block writes and single flight, the parent's shared by every child a server
//! sees), and a decision is answered locally only when both cover it: it takes from the
//! child's pool, then from the parent's, and puts the child's back when the parent's cannot.
//! Where the entity cascades is what its last block's image said; a decision whose parent
//! this server does not know yet goes to the table, which learns it.
//!
//! Not reserved (decided one write per decision as before): a request with a limit that is
//! soft, or a zero amount; buckets known or stamped bypassed; idempotent acquires (a lease
//! with a request id commits its record with the debits) and lease changes.

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use zael_core::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};
use zael_core::reserve::ReserveOptions;
use zael_core::reserve_set::{Landed, Need, ReserveSet};
use zael_core::store::{EntityOutcome, EntityRequest, LimitReport, StoreError};

use super::entity::{Fast, Prepared, Resolved, Side};
use super::request::path;
use super::reserve::{WAIT_ROUNDS, count_stranded, tally};
use super::write::{Credit, Delta};
use super::{BucketId, Inner};
use crate::item::BucketImage;
use crate::metrics as m;

/// One entity bucket's reservation.
pub(super) struct Entry {
    /// The limits the tokens were taken under (a change of them retires the entry).
    limits: Arc<Resolved>,
    state: Mutex<Hold>,
    fetched: Notify,
}

#[derive(Default)]
struct Hold {
    set: ReserveSet,
    /// The parent the bucket cascades to, as the last block's image said.
    cascades_to: Option<String>,
}

/// Every entity reservation of the store.
pub(super) struct EntityReservations {
    options: ReserveOptions,
    entries: DashMap<BucketId, Arc<Entry>>,
    /// Entries replaced by a change of limits, given back in full by the next sweep.
    retired: Mutex<Vec<(BucketId, Arc<Entry>)>>,
    closed: AtomicBool,
}

impl EntityReservations {
    pub(super) fn new(options: ReserveOptions) -> EntityReservations {
        EntityReservations {
            options,
            entries: DashMap::new(),
            retired: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    fn entry(&self, id: &BucketId, limits: &Arc<Resolved>) -> Arc<Entry> {
        if let Some(entry) = self.entries.get(id).filter(|e| e.limits.limits == limits.limits) {
            return entry.clone();
        }
        let entry = Arc::new(Entry { limits: limits.clone(), state: Mutex::default(), fetched: Notify::new() });
        if let Some(old) = self.entries.insert(id.clone(), entry.clone()) {
            self.retired.lock().expect("lock").push((id.clone(), old));
        }
        entry
    }

    fn all(&self) -> Vec<(BucketId, Arc<Entry>, bool)> {
        let mut all: Vec<_> = self.entries.iter().map(|e| (e.key().clone(), e.value().clone(), false)).collect();
        all.extend(self.retired.lock().expect("lock").iter().map(|(id, e)| (id.clone(), e.clone(), true)));
        all
    }
}

/// What one side's pool answered.
enum Step<'e> {
    Served(Local),
    /// A block write is in flight: wait for it (counted in the next block until dropped).
    Wait(Notified<'e>, Waiting<'e>),
}

/// A decision waiting on a side's block write, counted in the block's size
/// ([`ReserveSet::wait`]) until it stops waiting, given up (its caller gone) included.
struct Waiting<'e> {
    entry: &'e Entry,
    needs: Vec<(String, Millitokens)>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.entry.state.lock().expect("lock").set.waited(&self.needs);
    }
}

/// A side answered locally: the balance per need, in order, and the shard it was taken from.
struct Local {
    balances: Vec<Millitokens>,
    shard: i64,
    shard_count: i64,
    cascades_to: Option<String>,
}

/// What a side's decision charges each limit, or `None` when it cannot be reserved (a soft
/// limit, a zero amount, nothing charged).
fn needs(side: &Side) -> Option<Vec<Need<'_>>> {
    let needs: Vec<Need<'_>> = side
        .declared
        .iter()
        .map(|(name, amount)| {
            let stored = side.limits.limit(name).filter(|l| !l.soft)?;
            Some(Need { name, limit: stored.limit, amount: Millitokens(*amount) })
        })
        .collect::<Option<_>>()?;
    ReserveSet::servable(&needs).then_some(needs)
}

fn reports(side: &Side, needs: &[Need<'_>], local: &Local, now: EpochMillis) -> Vec<LimitReport> {
    needs
        .iter()
        .zip(&local.balances)
        .map(|(need, balance)| LimitReport {
            entity: side.id.entity.clone(),
            name: need.name.to_owned(),
            limit: need.limit,
            shard_count: local.shard_count,
            shard: local.shard,
            bypass: false,
            tokens: *balance,
            at: now,
            requested: need.amount,
            exceeded: false,
        })
        .collect()
}

impl Inner {
    /// One entity acquire: prepared, answered from reservations when they cover it, else per
    /// decision.
    pub(super) async fn acquire_entity(
        self: &Arc<Self>,
        request: &EntityRequest,
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        match self.prepare_entity(request).await? {
            Prepared::Decided(outcome) => Ok(outcome),
            Prepared::Side(child) => self.decide_entity(child, request, now).await,
        }
    }

    /// The decision of a prepared entity acquire (the native API's lease opens come here too):
    /// from reservations unless `request.reserve` is off, else per decision.
    pub(super) async fn decide_entity(
        self: &Arc<Self>,
        child: Side,
        request: &EntityRequest,
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        let consume = &request.consume;
        // Read once: a block landing meanwhile may teach this server the parent, and a
        // decision prepared without it must not take that for "the parent charges nothing".
        let parent_name = self.cached_parent(&child.id);
        let parent = self.known_parent(&child, parent_name.as_deref(), consume).await?;
        if request.reserve
            && let Some(outcome) = self.reserved_entity(&child, parent_name.as_deref(), parent.as_ref(), now).await
        {
            return Ok(outcome);
        }
        self.fast_entity(child, parent, consume, now).await
    }

    /// An entity decision answered from this server's reservations of its bucket (and its
    /// parent's under cascade), taking blocks first when the buckets are hot and nothing is
    /// held; `None` sends it down the per-decision path with nothing taken. `parent_name`:
    /// the parent this server knew the entity cascades to when the decision was prepared;
    /// `parent`: its side, when it charges anything of the request. A pool whose image
    /// cascades elsewhere (or anywhere, when `parent_name` is `None`) answers nothing.
    pub(super) async fn reserved_entity(
        self: &Arc<Self>,
        child: &Side,
        parent_name: Option<&str>,
        parent: Option<&Side>,
        now: EpochMillis,
    ) -> Option<EntityOutcome> {
        let reservations = self.entity_reservations.as_ref()?;
        if reservations.closed.load(Ordering::Relaxed) || self.is_bypassed(&child.id) {
            return None;
        }
        let child_needs = needs(child)?;
        let child_entry = reservations.entry(&child.id, &child.limits);
        let parent = match parent {
            Some(p) if !self.is_bypassed(&p.id) => Some((p, needs(p)?, reservations.entry(&p.id, &p.limits))),
            Some(_) => return None,
            None => None,
        };
        child_entry.state.lock().expect("lock").set.record(&child_needs, now);
        if let Some((_, needs, entry)) = &parent {
            entry.state.lock().expect("lock").set.record(needs, now);
        }
        for round in 0..=WAIT_ROUNDS {
            let last = round == WAIT_ROUNDS;
            let local = match self.step(child, &child_entry, &child_needs, now, last)? {
                Step::Served(local) => local,
                Step::Wait(fetched, waiting) => {
                    let _ = tokio::time::timeout(self.call_timeout, fetched).await;
                    drop(waiting);
                    continue;
                }
            };
            let restore = || child_entry.state.lock().expect("lock").set.restore(&child_needs);
            let charged_parent = match (&local.cascades_to, &parent) {
                (None, _) => None,
                (Some(to), Some((p, needs, entry))) if p.id.entity == *to => Some((*p, needs, entry)),
                // The parent charges nothing of this request (it has none of its limits).
                (Some(to), None) if parent_name == Some(to.as_str()) => None,
                _ => {
                    restore();
                    return None;
                }
            };
            let mut outcome = reports(child, &child_needs, &local, now);
            if let Some((p, needs, entry)) = charged_parent {
                match self.step(p, entry, needs, now, last) {
                    Some(Step::Served(parent_local)) => outcome.extend(reports(p, needs, &parent_local, now)),
                    Some(Step::Wait(fetched, waiting)) => {
                        restore();
                        let _ = tokio::time::timeout(self.call_timeout, fetched).await;
                        drop(waiting);
                        continue;
                    }
                    None => {
                        restore();
                        return None;
                    }
                }
            }
            metrics::counter!(m::RESERVED_DECISIONS).increment(1);
            path("entity_reserved");
            return Some(EntityOutcome::Admitted(outcome));
        }
        None
    }

    /// One side's pool: the decision answered from it (a prefetch started when it runs low), or
    /// the block write to wait on (started when none is in flight); `None` when no block is
    /// to be had (the bucket is not hot, is cooling off, or is near empty) or on the last round.
    fn step<'e>(
        self: &Arc<Self>,
        side: &Side,
        entry: &'e Arc<Entry>,
        needs: &[Need<'_>],
        now: EpochMillis,
        last: bool,
    ) -> Option<Step<'e>> {
        let options = self.entity_reservations.as_ref()?.options;
        let mut state = entry.state.lock().expect("lock");
        if let Some(served) = state.set.serve(needs, now, &options) {
            if let Some(block) = served.prefetch {
                state.set.fetching = true;
                self.spawn_entity_fetch(side, entry, block);
            }
            let local = Local {
                balances: served.balances,
                shard: state.set.shard,
                shard_count: state.set.shard_count,
                cascades_to: state.cascades_to.clone(),
            };
            return Some(Step::Served(local));
        }
        if last {
            return None;
        }
        // Registered before the write starts, so its wake-up cannot be missed.
        let fetched = entry.fetched.notified();
        if !state.set.fetching {
            // Known short (this server's last write left it so): the next block is sized from
            // that image, so that near empty none is worth taking and the decision goes on to
            // the per-decision path and its rejection cache.
            if let Some((image, count)) = self.short_image(&side.id, now)
                && let Some(seen) = usable(&image, side, now)
            {
                state.set.saw(&seen, 0, count);
            }
            let block = state.set.block(needs, now, &options)?;
            state.set.fetching = true;
            self.spawn_entity_fetch(side, entry, block);
        }
        let waiting: Vec<_> = needs.iter().map(|n| (n.name.to_owned(), n.amount)).collect();
        state.set.wait(&waiting);
        Some(Step::Wait(fetched, Waiting { entry, needs: waiting }))
    }

    fn spawn_entity_fetch(self: &Arc<Self>, side: &Side, entry: &Arc<Entry>, block: Vec<(String, Millitokens)>) {
        let side = Side { declared: block.iter().map(|(n, a)| (n.clone(), a.0)).collect(), ..side.clone() };
        let (inner, entry) = (self.clone(), entry.clone());
        tokio::spawn(crate::db::reservation_write(async move { inner.entity_fetch(&side, &entry).await }));
    }

    /// Takes the block `side.declared`: one speculative write, or, when that fails on an image
    /// a slow pass may settle (the stored balance not refilled since `rf`, an expired `ttl`),
    /// the side's slow pass for it ([`Inner::slow_side`]); whatever it answers, the waiters
    /// are woken.
    async fn entity_fetch(self: &Arc<Self>, side: &Side, entry: &Entry) {
        let now = EpochMillis::now();
        let open = self.entity_reservations.as_ref().filter(|r| !r.closed.load(Ordering::Relaxed));
        let Some(options) = open.map(|r| r.options) else {
            entry.state.lock().expect("lock").set.fetching = false;
            entry.fetched.notify_waiters();
            return;
        };
        let (shard, _) = self.select_shard(&side.id, &[]);
        let limits: Vec<(&str, i64, Option<BucketLimit>)> =
            side.declared.iter().map(|(name, amount)| (name.as_str(), *amount, None)).collect();
        let mut refused = true;
        let mut seen = None;
        let mut give_back = None;
        let mut landed_image = None;
        let took = match self.speculate(&side.id, &limits, shard, now).await {
            Ok((Fast::Admitted(landed), false)) => {
                self.learn_parent(&side.id, &landed.image);
                match usable(&landed.image, side, now) {
                    Some(took) => {
                        let (count, cascades_to) = (landed.image.shard_count, landed.image.cascades_to.clone());
                        landed_image = Some(landed.image);
                        Some((took, count, cascades_to))
                    }
                    None => {
                        give_back = Some((ceilings(&landed.image), true));
                        None
                    }
                }
            }
            // The bypass shape counted `tc` only: take the count back, reserve nothing.
            Ok((Fast::Admitted(landed), true)) => {
                give_back = Some((ceilings(&landed.image), false));
                None
            }
            Ok((Fast::Failed(Some(image)), _)) => match usable(&image, side, now) {
                Some(as_is) if !image.disabled && image.unsupported.is_none() => {
                    match self.slow_side(side, shard, now).await {
                        Ok(Some(reports)) => {
                            let took = reports
                                .iter()
                                .map(|r| Landed {
                                    name: r.name.clone(),
                                    amount: r.requested,
                                    seen: BucketState { tokens: r.tokens, refilled_at: r.at },
                                    share: r.limit.shard_share(r.shard_count),
                                })
                                .collect();
                            let count = reports.first().map_or(image.shard_count, |r| r.shard_count);
                            Some((took, count, self.cached_parent(&side.id)))
                        }
                        Ok(None) => {
                            seen = Some((as_is, image.shard_count));
                            None
                        }
                        Err(_) => {
                            refused = false;
                            None
                        }
                    }
                }
                _ => None,
            },
            Ok((Fast::Failed(None), _)) => None,
            // Says nothing of the bucket: not a refusal, the waiters try once more.
            Ok((Fast::Contended, _)) | Err(_) => {
                refused = false;
                None
            }
        };
        {
            let mut state = entry.state.lock().expect("lock");
            state.set.fetching = false;
            match took {
                Some((took, count, cascades_to)) => {
                    // Short after the block: the decisions it does not cover are rejected from
                    // the cache, as after a per-decision write (held tokens are served first).
                    let short = took.iter().any(|l| l.seen.refilled(&l.share, now).tokens.0 < 1000);
                    match landed_image.as_ref().filter(|_| short) {
                        Some(image) => self.remember_short(&side.id, shard, image),
                        None => self.caches.rejections.forget(&side.id, shard),
                    }
                    let amount: i64 = took.iter().map(|l: &Landed| l.amount.0).sum();
                    state.set.took(&took, shard, count, now);
                    state.cascades_to = cascades_to;
                    metrics::counter!(m::RESERVED_TOKENS).increment(u64::try_from(amount).unwrap_or(0));
                }
                None => {
                    if refused {
                        state.set.refused(now, &options);
                    }
                    // The next block is sized from the bucket as it is, once nothing is held.
                    if let Some((as_is, count)) = seen {
                        state.set.saw(&as_is, shard, count);
                    }
                }
            }
        }
        if let Some((ceilings, tokens)) = give_back {
            let back: Vec<(String, Millitokens)> =
                side.declared.iter().map(|(n, a)| (n.clone(), Millitokens(*a))).collect();
            self.give_entity(&side.id, shard, &ceilings, &back, tokens).await;
        }
        entry.fetched.notify_waiters();
    }

    /// Gives `back` to `shard`: to `tk` when `tokens` (never above each limit's ceiling), always
    /// off `tc`. Whether it was written.
    async fn give_entity(
        &self,
        id: &BucketId,
        shard: i64,
        ceilings: &[(String, (i64, i64))],
        back: &[(String, Millitokens)],
        tokens: bool,
    ) -> bool {
        let limits = back
            .iter()
            .map(|(name, amount)| Delta {
                name,
                tk: tokens.then_some(amount.0),
                tc: Some(-amount.0),
                ceiling: ceilings.iter().find(|(n, _)| n == name).map(|(_, c)| *c),
            })
            .collect();
        let result = self.send_credit(id.pk(shard), Credit { limits, vu: None, trim: false }).await;
        if let Err(e) = &result {
            tracing::warn!(error = ?e, entity = %id.entity, resource = %id.resource, "returning reserved tokens failed; stranded until the bucket refills");
        }
        result.is_ok()
    }

    /// Gives back what the sweeper's rules say (all of it when `everything`): the millitokens
    /// given back and those that could not be.
    pub(super) async fn give_back_entities(&self, everything: bool) -> (i64, i64) {
        let Some(reservations) = self.entity_reservations.as_ref() else { return (0, 0) };
        let now = EpochMillis::now();
        let mut returns = Vec::new();
        for (id, entry, retired) in reservations.all() {
            let mut state = entry.state.lock().expect("lock");
            let back = state.set.give_back(now, &reservations.options, everything || retired);
            if !back.is_empty() {
                let count = state.set.shard_count.max(1);
                let ceilings: Vec<(String, (i64, i64))> =
                    entry.limits.limits.iter().map(|l| (l.name.clone(), (l.limit.capacity.0, count))).collect();
                returns.push((id, state.set.shard, ceilings, back));
            } else if !retired
                && !state.set.fetching
                && now.0 - state.set.last_use().0 > 10 * reservations.options.horizon_ms
            {
                drop(state);
                reservations.entries.remove_if(&id, |_, e| Arc::ptr_eq(e, &entry));
            }
        }
        reservations.retired.lock().expect("lock").retain(|(_, e)| {
            let state = e.state.lock().expect("lock");
            state.set.fetching || state.set.held() > 0
        });
        let sent = futures_util::future::join_all(returns.iter().map(|(id, shard, ceilings, back)| async move {
            let total: i64 = back.iter().map(|(_, a)| a.0).sum();
            (total, self.give_entity(id, *shard, ceilings, back, true).await)
        }))
        .await;
        tally(&sent)
    }

    /// Stops reserving entity buckets and gives every held token back.
    pub(super) async fn close_entity_reservations(&self) -> (i64, i64) {
        let Some(reservations) = self.entity_reservations.as_ref() else { return (0, 0) };
        reservations.closed.store(true, Ordering::Relaxed);
        let fetching = || reservations.all().iter().any(|(_, e, _)| e.state.lock().expect("lock").set.fetching);
        self.await_fetches(fetching).await;
        count_stranded(self.give_back_entities(true).await)
    }
}

/// Each charged limit of a shard image (after a landed block, or as a refused one found it)
/// as a block of its requested amount, when the shard carries no stamp that changes how it
/// admits (a live bypass, a soft stamp on a charged limit).
fn usable(image: &BucketImage, side: &Side, now: EpochMillis) -> Option<Vec<Landed>> {
    if image.bypass.as_ref().is_some_and(|b| b.live(now.0)) {
        return None;
    }
    side.declared
        .iter()
        .map(|(name, amount)| {
            let limit = image.limit(name)?;
            if limit.soft.as_ref().is_some_and(|s| s.live(now.0)) {
                return None;
            }
            Some(Landed {
                name: name.clone(),
                amount: Millitokens(*amount),
                seen: BucketState { tokens: Millitokens(limit.tk), refilled_at: EpochMillis(image.rf) },
                share: limit.limit.shard_share(image.shard_count),
            })
        })
        .collect()
}

/// The ceiling a credit to each limit of `image`'s shard keeps under.
fn ceilings(image: &BucketImage) -> Vec<(String, (i64, i64))> {
    image.limits.iter().map(|l| (l.name.clone(), (l.limit.capacity.0, image.shard_count))).collect()
}

/// Starts the sweeper: every half horizon, unused tokens go back; it stops with the store.
pub(super) fn sweep(inner: Weak<Inner>, horizon: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((horizon / 2).max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.entity_reservations.as_ref().is_some_and(|r| r.closed.load(Ordering::Relaxed)) {
                return;
            }
            crate::db::reservation_write(inner.give_back_entities(false)).await;
        }
    });
}

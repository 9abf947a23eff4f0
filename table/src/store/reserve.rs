//! Token reservations of YAML-rule buckets on DynamoDB: the writes behind
//! [`zael_core::reserve`]'s rules. A block is the fast path's speculative write
//! ([`super::write::Speculative`], every condition of it, the rule's parameters pinned) for
//! the block's amount, so the shared bucket is debited before any of it is handed out, and
//! `tc` counts it as consumed; what goes back unused is the library's self-trimming credit
//! (`tk` up, `tc` down, never above the shard's ceiling).
//!
//! Per bucket, one [`Entry`]: the [`Reserve`] under a short lock (a local answer holds it for
//! microseconds) and a [`Notify`] for the decisions that wait on a block in flight: concurrent
//! decisions share one write (single flight). The next block is fetched in the background
//! when the pool falls below half a horizon of demand, so a steady bucket never waits. A
//! sweeper gives unused tokens back ([`Reserve::give_back`]), and
//! [`Inner::close_reservations`] gives everything back on shutdown.
//!
//! Not reserved (decided one write per decision as before): buckets with a soft or bypass
//! stamp, debt and check-only charges, buckets the store knows bypassed, and rules with
//! `reserve: false` ([`zael_core::store::BucketRequest::reserve`]).

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use zael_core::bucket::{BucketLimit, BucketState, Charge, EpochMillis, Millitokens};
use zael_core::reserve::{Reserve, ReserveOptions};
use zael_core::store::StoreError;

use super::classify::Class;
use super::entity::Fast;
use super::request::{Ctx, Decided, path};
use super::write::{Credit, Delta};
use super::{BucketId, Inner, LIMIT_NAME};
use crate::item::BucketImage;
use crate::metrics as m;

/// How many block writes a decision waits on before it goes to the table on its own: enough
/// for a burst to grow the block from the first second's demand, few enough that a store that
/// keeps failing block writes sends decisions on to answer per `on_unavailable`.
pub(super) const WAIT_ROUNDS: usize = 8;

/// One bucket's reservation.
pub(super) struct Entry {
    /// The rule's parameters the tokens were taken under.
    limit: BucketLimit,
    state: Mutex<Reserve>,
    fetched: Notify,
}

/// A decision waiting on its bucket's block write, counted in the block's size
/// ([`Reserve::wait`]) until it stops waiting, given up (its caller gone) included.
struct Waiting<'a> {
    entry: &'a Entry,
    need: Millitokens,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.entry.state.lock().expect("lock").waited(self.need);
    }
}

/// Every reservation of the store.
pub(super) struct Reservations {
    pub(super) options: ReserveOptions,
    entries: DashMap<BucketId, Arc<Entry>>,
    /// Entries replaced by a rule change, given back in full by the next sweep.
    retired: Mutex<Vec<(BucketId, Arc<Entry>)>>,
    closed: AtomicBool,
}

impl Reservations {
    pub(super) fn new(options: ReserveOptions) -> Reservations {
        Reservations {
            options,
            entries: DashMap::new(),
            retired: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// The bucket's entry for the rule's parameters `limit` (a changed rule retires the old one).
    fn entry(&self, id: &BucketId, limit: BucketLimit, now: EpochMillis) -> Arc<Entry> {
        if let Some(entry) = self.entries.get(id).filter(|e| e.limit == limit) {
            return entry.clone();
        }
        let share = limit.shard_share(1);
        let entry = Arc::new(Entry { limit, state: Mutex::new(Reserve::new(share, now)), fetched: Notify::new() });
        if let Some(old) = self.entries.insert(id.clone(), entry.clone()) {
            self.retired.lock().expect("lock").push((id.clone(), old));
        }
        entry
    }

    /// Every entry, with those retired (`true`: give back in full).
    fn all(&self) -> Vec<(BucketId, Arc<Entry>, bool)> {
        let mut all: Vec<_> = self.entries.iter().map(|e| (e.key().clone(), e.value().clone(), false)).collect();
        all.extend(self.retired.lock().expect("lock").iter().map(|(id, e)| (id.clone(), e.clone(), true)));
        all
    }
}

impl Inner {
    /// A decision answered from this server's reservation of the bucket, taking a block first
    /// when the bucket is hot and nothing is held; `None` sends it down the per-decision path.
    pub(super) async fn reserved(self: &Arc<Self>, cx: &Ctx<'_>) -> Option<Decided> {
        let reservations = self.reservations.as_ref()?;
        if reservations.closed.load(Ordering::Relaxed) || !Reserve::servable(cx.charges) || self.is_bypassed(&cx.id) {
            return None;
        }
        let options = reservations.options;
        let entry = reservations.entry(&cx.id, cx.limit, cx.now);
        let need = Millitokens(crate::plan::total(cx.charges));
        for round in 0..=WAIT_ROUNDS {
            let fetched = {
                let mut state = entry.state.lock().expect("lock");
                if round == 0 {
                    state.demand.record(need, cx.now);
                }
                if let Some(served) = state.serve(cx.charges, cx.now, &options) {
                    if let Some(amount) = served.prefetch {
                        state.fetching = true;
                        self.spawn_fetch(&cx.id, &entry, amount);
                    }
                    metrics::counter!(m::RESERVED_DECISIONS).increment(1);
                    path("reserved");
                    return Some(Decided::new(served.outcomes, state.shard_count));
                }
                if round == WAIT_ROUNDS {
                    return None;
                }
                // Registered before the write starts, so its wake-up cannot be missed.
                let fetched = entry.fetched.notified();
                if !state.fetching {
                    // A bucket the rejection cache knows short (this server's last write, block
                    // or not, left it so): the block is sized from that balance, not from this
                    // server's last block, so that near empty none is worth taking and the
                    // decision goes on to the cache and the near-empty gate (`near_empty`)
                    // instead of waiting on a block that fails. Looked up only here, off the
                    // local answers' path.
                    if let Some(seen) = self.short_balance(cx) {
                        state.saw(seen, cx.limit.shard_share(1), 1);
                    }
                    // No block when the bucket is not hot, is cooling off after a refusal, or a
                    // block would not be worth it: the decision goes to the table on its own.
                    let amount = state.block(need, cx.now, &options)?;
                    state.fetching = true;
                    self.spawn_fetch(&cx.id, &entry, amount);
                }
                state.wait(need);
                fetched
            };
            let waiting = Waiting { entry: &entry, need };
            // One block write in flight for the bucket (this decision's or another's): wait for
            // it, not longer than a call (the caller's deadline bounds every round together).
            // The write runs on its own task, so a decision that gives up never leaves the
            // bucket waiting on a write nobody sends. A block too small for every decision
            // that waited on it is followed by the next one, sized from the demand they all
            // recorded, and they wait again: under a burst, the decisions share a few writes
            // rather than each falling through to one of its own.
            let _ = tokio::time::timeout(self.call_timeout, fetched).await;
            drop(waiting);
        }
        None
    }

    /// Takes a block on a task of its own ([`Inner::fetch`]).
    fn spawn_fetch(self: &Arc<Self>, id: &BucketId, entry: &Arc<Entry>, amount: Millitokens) {
        let (inner, id, entry) = (self.clone(), id.clone(), entry.clone());
        tokio::spawn(crate::db::reservation_write(async move { inner.fetch(&id, &entry, amount).await }));
    }

    /// Takes a block of `amount` for the bucket: one speculative write, or, when that fails
    /// on a condition a slow pass settles (the stored `tk` not refilled since `rf`, an expired
    /// `ttl`, the write-unit bucket), the per-decision slow pass for the block ([`Self::slow_block`]);
    /// whatever it answers, the waiters are woken.
    async fn fetch(&self, id: &BucketId, entry: &Entry, amount: Millitokens) {
        let now = EpochMillis::now();
        let Some(reservations) = self.reservations.as_ref().filter(|r| !r.closed.load(Ordering::Relaxed)) else {
            entry.state.lock().expect("lock").fetching = false;
            entry.fetched.notify_waiters();
            return;
        };
        let options = reservations.options;
        let (shard, _) = self.select_shard(id, &[]);
        let limits = [(LIMIT_NAME, amount.0, Some(entry.limit))];
        let mut failed_seen = None;
        let mut refused = true;
        let mut stamped = None;
        // The shard as the write left or found it, for the rejection cache.
        let mut image_seen = None;
        let took = match self.speculate(id, &limits, shard, now).await {
            Ok((Fast::Admitted(landed), false)) => match usable(&landed.image) {
                Some(seen) => {
                    image_seen = Some(landed.image);
                    Some((amount, seen))
                }
                None => {
                    stamped = Some(landed);
                    None
                }
            },
            Ok((Fast::Admitted(landed), true)) => {
                // The bypass shape counted `tc` only: take the count back, reserve nothing.
                self.give(id, shard, ceiling(&landed.image), amount, false).await;
                None
            }
            Ok((Fast::Failed(Some(image)), _)) => match usable(&image) {
                Some(_) if self.settled_by_slow_pass(id, entry.limit, &image, now) => {
                    match self.slow_block(id, entry.limit, shard, image, amount, now).await {
                        Ok(Ok(block)) => Some(block),
                        Ok(Err(seen)) => {
                            failed_seen = seen;
                            None
                        }
                        Err(_) => {
                            refused = false;
                            None
                        }
                    }
                }
                seen => {
                    // The shard as it is: the next block is sized from it.
                    failed_seen = seen;
                    image_seen = Some(image);
                    None
                }
            },
            // No item yet: the per-decision path creates it.
            Ok((Fast::Failed(None), _)) => None,
            // The write did not land and says nothing of the shard (an error, a timeout, a
            // conflict): not a refusal, so the bucket does not cool off; the decisions waiting
            // try one more block, and past their rounds the store answers them per decision.
            Ok((Fast::Contended, _)) | Err(_) => {
                refused = false;
                None
            }
        };
        {
            let mut state = entry.state.lock().expect("lock");
            state.fetching = false;
            match took {
                Some((amount, (seen, share, count))) => {
                    self.learn_count(id, count);
                    state.took(amount, (shard, count, share), seen, now);
                    metrics::counter!(m::RESERVED_TOKENS).increment(u64::try_from(amount.0).unwrap_or(0));
                }
                None => {
                    if refused {
                        state.refused(now, &options);
                    }
                    // Sized from the shard as it is once nothing is held (while tokens are held,
                    // answers stay on the balance this server's blocks were carved from).
                    if let Some((seen, share, count)) = failed_seen {
                        state.saw(seen, share, count);
                    }
                }
            }
        }
        if let Some(image) = &image_seen {
            // Short after the block (or refused for want of tokens): the decisions this
            // server's blocks do not cover are rejected from the cache, as after a
            // per-decision write (tokens held here are served before the cache is asked).
            const ONE: [Charge; 1] = [Charge { cost: 1, allow_debt: false }];
            let cx = Ctx { id: id.clone(), limit: entry.limit, charges: &ONE, total: 1000, now };
            self.remember(&cx, shard, image);
        }
        if let Some(landed) = stamped {
            // Landed on a stamped shard: the whole block goes back at once.
            self.give(id, shard, ceiling(&landed.image), amount, true).await;
        }
        entry.fetched.notify_waiters();
    }

    /// Whether a block's failed speculative write failed only on what a slow pass settles:
    /// the item is not disabled, stamped or of other parameters ([`Class::Exhausted`]), so the
    /// shard may well cover the block once refilled to now. Every hot bucket gets there: the
    /// fast path never refills the stored `tk` nor refreshes `ttl` (7 fill times from the last
    /// slow pass), so without this a hot bucket would cool off to per-decision writes for a
    /// horizon every few seconds.
    fn settled_by_slow_pass(&self, id: &BucketId, limit: BucketLimit, image: &BucketImage, now: EpochMillis) -> bool {
        let charges = [Charge { cost: 1, allow_debt: false }];
        let cx = Ctx { id: id.clone(), limit, charges: &charges, total: 1000, now };
        matches!(self.classify(&cx, Some(image), false), Class::Exhausted { .. })
    }

    /// A block through the per-decision slow pass (the rf-locked write that refills, refreshes
    /// `ttl` and debits, planned on `found`, the block's failed write's image, then re-planned
    /// on a lost race), in whole tokens: what it took and the shard after it, or, when the
    /// shard does not cover it, the shard as the pass found it (`None` for a block under a
    /// token).
    async fn slow_block(
        &self,
        id: &BucketId,
        limit: BucketLimit,
        shard: i64,
        found: BucketImage,
        amount: Millitokens,
        now: EpochMillis,
    ) -> Result<Result<(Millitokens, Seen), Option<Seen>>, StoreError> {
        let tokens = amount.0 / 1000;
        if tokens <= 0 {
            return Ok(Err(None));
        }
        let charges = [Charge { cost: tokens.unsigned_abs(), allow_debt: false }];
        let cx = Ctx { id: id.clone(), limit, charges: &charges, total: tokens * 1000, now };
        let count = found.shard_count;
        let decided = self.slow_from(&cx, shard, Some(count), Some(found)).await?;
        let (outcomes, count) = decided.parts();
        let Some(o) = outcomes.first() else { return Ok(Err(None)) };
        let seen = (BucketState { tokens: o.tokens, refilled_at: o.refilled_at }, limit.shard_share(count), count);
        Ok(if o.admitted { Ok((Millitokens(tokens * 1000), seen)) } else { Err(Some(seen)) })
    }

    /// Gives `amount` back to `shard`: to `tk` when `tokens` (never above the shard's ceiling,
    /// `ceiling` = the limit's capacity and the shard count it was taken under), always off `tc`.
    /// Whether it was written.
    async fn give(
        &self,
        id: &BucketId,
        shard: i64,
        ceiling: Option<(i64, i64)>,
        amount: Millitokens,
        tokens: bool,
    ) -> bool {
        let limits = vec![Delta { name: LIMIT_NAME, tk: tokens.then_some(amount.0), tc: Some(-amount.0), ceiling }];
        let result = self.send_credit(id.pk(shard), Credit { limits, vu: None, trim: false }).await;
        if let Err(e) = &result {
            tracing::warn!(error = ?e, resource = %id.resource, "returning reserved tokens failed; stranded until the bucket refills");
        }
        result.is_ok()
    }

    /// Gives back what the sweeper's rules say (all of it when `everything`); returns the
    /// millitokens given back and those that could not be.
    pub(super) async fn give_back(&self, everything: bool) -> (i64, i64) {
        let Some(reservations) = self.reservations.as_ref() else { return (0, 0) };
        let now = EpochMillis::now();
        let mut returns = Vec::new();
        for (id, entry, retired) in reservations.all() {
            let mut state = entry.state.lock().expect("lock");
            let back = if everything || retired {
                std::mem::take(&mut state.held)
            } else {
                state.give_back(now, &reservations.options)
            };
            if back.0 > 0 {
                returns.push((id, state.shard, back, entry.limit, state.shard_count));
            } else if !retired && !state.fetching && now.0 - state.last_use.0 > 10 * reservations.options.horizon_ms {
                drop(state);
                reservations.entries.remove_if(&id, |_, e| Arc::ptr_eq(e, &entry));
            }
        }
        // A retired entry is done once empty and no block write of it is in flight.
        reservations.retired.lock().expect("lock").retain(|(_, e)| {
            let state = e.state.lock().expect("lock");
            state.fetching || state.held.0 > 0
        });
        let sent =
            futures_util::future::join_all(returns.into_iter().map(|(id, shard, back, limit, count)| async move {
                (back.0, self.give(&id, shard, Some((limit.capacity.0, count)), back, true).await)
            }))
            .await;
        tally(&sent)
    }

    /// Stops reserving and gives every held token back.
    pub(super) async fn close_reservations(&self) -> (i64, i64) {
        let Some(reservations) = self.reservations.as_ref() else { return (0, 0) };
        reservations.closed.store(true, Ordering::Relaxed);
        let fetching = || reservations.all().iter().any(|(_, e, _)| e.state.lock().expect("lock").fetching);
        self.await_fetches(fetching).await;
        count_stranded(self.give_back(true).await)
    }

    /// Waits, for at most a store call's timeout (1 s at least), until `fetching` says no block
    /// write is in flight: called on close (none starts once closed), so that what the writes
    /// in flight take goes back too.
    pub(super) async fn await_fetches(&self, fetching: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + self.call_timeout.max(Duration::from_secs(1));
        while fetching() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A shard's balance, the share of the limit it is of, and the shard count.
type Seen = (BucketState, BucketLimit, i64);

/// A shard image's balance (after a landed block, or as a refused one found it), the share it
/// is of and the shard count, when the shard carries no stamp that changes how it admits
/// (soft, bypass).
fn usable(image: &BucketImage) -> Option<Seen> {
    let hits = image.limit(LIMIT_NAME)?;
    if image.bypass.is_some() || hits.soft.is_some() {
        return None;
    }
    let share = hits.limit.shard_share(image.shard_count);
    Some((BucketState { tokens: Millitokens(hits.tk), refilled_at: EpochMillis(image.rf) }, share, image.shard_count))
}

/// The ceiling a credit to `image`'s shard keeps under: its limit's capacity and shard count.
fn ceiling(image: &BucketImage) -> Option<(i64, i64)> {
    image.limit(LIMIT_NAME).map(|l| (l.limit.capacity.0, image.shard_count))
}

/// Starts the sweeper: every half horizon, unused tokens go back; it stops with the store.
pub(super) fn sweep(inner: Weak<Inner>, horizon: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((horizon / 2).max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.reservations.as_ref().is_some_and(|r| r.closed.load(Ordering::Relaxed)) {
                return;
            }
            crate::db::reservation_write(inner.give_back(false)).await;
        }
    });
}

/// Of the give-back writes `sent` (millitokens, whether written): the millitokens given back
/// (counted in the returned metric) and those that could not be.
pub(super) fn tally(sent: &[(i64, bool)]) -> (i64, i64) {
    let returned: i64 = sent.iter().filter(|(_, ok)| *ok).map(|(b, _)| *b).sum();
    let stranded: i64 = sent.iter().filter(|(_, ok)| !*ok).map(|(b, _)| *b).sum();
    metrics::counter!(m::RETURNED_TOKENS).increment(u64::try_from(returned).unwrap_or(0));
    (returned, stranded)
}

/// A close's give-back `(returned, stranded)`, the stranded part counted in its metric.
pub(super) fn count_stranded((returned, stranded): (i64, i64)) -> (i64, i64) {
    metrics::counter!(m::STRANDED_TOKENS).increment(u64::try_from(stranded).unwrap_or(0));
    (returned, stranded)
}

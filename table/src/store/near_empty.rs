//! Near-empty buckets (YAML rules, and entity buckets in `entity/fast.rs`): at most as many
//! of this server's decisions at the table at once as the refill since the last short image
//! covers (at least one), the rest waiting for one of them to land and then judged again,
//! mostly by the rejection cache.
//!
//! Why: a bucket kept over its limit refills a token now and then; every decision arriving
//! after that instant finds the rejection cache's image covering it, so without a gate all of
//! them race to the table for the one token, and each loser costs a failed write, a
//! consistent read and a re-plan. Under a burst (thousands of decisions a second on one
//! bucket) or a slow table that herd grows faster than the table answers it. With the gate,
//! the decision that took the token leaves a short image and the waiters are rejected from it
//! without a call.
//!
//! Exact by construction: the gate only delays a decision, the table (or the cache's proof of
//! a rejection) still decides it, at the instant it arrived. Only single-shard buckets a
//! trusted image showed short are gated (while a decision of theirs is at the table, also
//! once that decision forgot the image on seeing the refill); everything else goes straight
//! on as before. A wait lasts at most one decision's time at the table.

use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

use super::BucketId;

/// One gated bucket: decisions at the table, and their landings.
#[derive(Default)]
struct Gate {
    at_table: AtomicUsize,
    /// How many may be at the table at once, as the last image said.
    slots: AtomicUsize,
    landed: Notify,
}

/// The gates of the buckets being decided near empty; a gate lives while a decision holds
/// or waits on it.
#[derive(Default)]
pub(super) struct Gates {
    gates: DashMap<BucketId, Arc<Gate>>,
}

/// A decision's place at the table; dropping it wakes the waiters.
pub(super) struct Permit<'a> {
    gates: &'a Gates,
    id: BucketId,
    gate: Arc<Gate>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.at_table.fetch_sub(1, Ordering::AcqRel);
        self.gate.landed.notify_waiters();
        self.gates.release(&self.id);
    }
}

/// What [`Gates::enter`] answers.
pub(super) enum Entry<'a> {
    /// Go to the table, holding the permit until the decision lands.
    Go(Permit<'a>),
    /// `slots` decisions are at the table already: wait for one to land, then judge again.
    Wait(Waiter<'a>),
}

/// A decision waiting on a gate.
pub(super) struct Waiter<'a> {
    gates: &'a Gates,
    id: BucketId,
    gate: Arc<Gate>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.gates.release(&self.id);
    }
}

impl Waiter<'_> {
    /// Until a decision at the table lands (or `limit` passes).
    pub(super) async fn landed(self, limit: std::time::Duration) {
        let notified = self.gate.landed.notified();
        tokio::pin!(notified);
        // Registered before the count is read again, so a landing in between is not missed.
        notified.as_mut().enable();
        if self.gate.at_table.load(Ordering::Acquire) == 0 {
            return;
        }
        let _ = tokio::time::timeout(limit, notified).await;
    }
}

impl Gates {
    /// A place at the table for a decision on `id`, when fewer decisions than the slots hold
    /// one. `slots`: what the rejection cache's image says the refill covers, when it holds
    /// one; without (a decision at the table forgot it on seeing the refill), a gate already
    /// holding decisions keeps the slots it was given. `None`: not gated.
    pub(super) fn enter(&self, id: &BucketId, slots: Option<usize>) -> Option<Entry<'_>> {
        let gate = match slots {
            Some(slots) => {
                let gate = self.gates.entry(id.clone()).or_default().clone();
                gate.slots.store(slots.max(1), Ordering::Release);
                gate
            }
            None => self.gates.get(id).map(|g| g.clone()).filter(|g| g.at_table.load(Ordering::Acquire) > 0)?,
        };
        let slots = gate.slots.load(Ordering::Acquire).max(1);
        let mut at = gate.at_table.load(Ordering::Acquire);
        loop {
            if at >= slots {
                return Some(Entry::Wait(Waiter { gates: self, id: id.clone(), gate }));
            }
            match gate.at_table.compare_exchange_weak(at, at + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Entry::Go(Permit { gates: self, id: id.clone(), gate })),
                Err(now) => at = now,
            }
        }
    }

    /// Drops `id`'s gate when only the map and the caller (about to let go) hold it.
    fn release(&self, id: &BucketId) {
        self.gates.remove_if(id, |_, g| Arc::strong_count(g) <= 2 && g.at_table.load(Ordering::Acquire) == 0);
    }

    /// Buckets with a gate (decisions at the table or waiting).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.gates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id() -> BucketId {
        BucketId { ns: "n".into(), entity: "e".into(), resource: "r".into() }
    }

    #[tokio::test]
    async fn slots_bound_the_decisions_at_the_table_and_a_landing_wakes_the_waiters() {
        let gates = Gates::default();
        assert!(gates.enter(&id(), None).is_none(), "no image, no decision at the table: not gated");
        let Some(Entry::Go(first)) = gates.enter(&id(), Some(1)) else { panic!("the first goes") };
        let Some(Entry::Wait(waiter)) = gates.enter(&id(), None) else {
            panic!("one slot taken, the image forgotten: the second waits")
        };
        let Some(Entry::Go(second)) = gates.enter(&id(), Some(2)) else { panic!("two slots: the third goes") };
        drop(second);
        let mut woken = std::pin::pin!(waiter.landed(Duration::from_secs(30)));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), woken.as_mut()).await.is_err(),
            "one decision is still at the table"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), woken).await.expect("woken");
        assert_eq!(gates.len(), 0, "nobody holds or waits: the gate is gone");
    }

    #[tokio::test]
    async fn a_waiter_on_an_empty_table_does_not_wait() {
        let gates = Gates::default();
        let Some(Entry::Go(permit)) = gates.enter(&id(), Some(1)) else { panic!("goes") };
        let Some(Entry::Wait(waiter)) = gates.enter(&id(), Some(1)) else { panic!("waits") };
        drop(permit);
        tokio::time::timeout(Duration::from_millis(500), waiter.landed(Duration::from_secs(30)))
            .await
            .expect("returns at once");
    }
}

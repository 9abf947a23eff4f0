//! The embedded store's background work: every `--evict-interval` it drops the buckets that
//! have refilled to full; every [`TRIM_POLL`] it checks the bound ([`MemoryStore::needs_trim`],
//! one atomic load) and trims when due. Both run on the blocking pool, never on a request.

use std::sync::Arc;
use std::time::Duration;
use zael_core::bucket::EpochMillis;
use zael_core::memory::MemoryStore;

/// How often the bound is checked: a spray of 100,000 new keys a second fills an eighth of the
/// default bound in 1.25 s, so a trim starts long before the store reaches it.
pub const TRIM_POLL: Duration = Duration::from_millis(100);

/// Starts the store's upkeep on the current runtime; it runs until the process exits.
pub fn spawn(store: Arc<MemoryStore>, evict_every: Duration) {
    let evicting = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(evict_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let store = evicting.clone();
            let _ = tokio::task::spawn_blocking(move || store.evict_full(EpochMillis::now())).await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if store.needs_trim() {
                let store = store.clone();
                let dropped = tokio::task::spawn_blocking(move || store.trim(EpochMillis::now())).await.unwrap_or(0);
                tracing::warn!(
                    dropped,
                    "embedded store at its --max-buckets bound: forgot the buckets that lose the least"
                );
            }
        }
    });
}

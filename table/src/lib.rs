//! zael-table: the DynamoDB bucket store of zael, on a table in exactly the format of the
//! Python library zae-limiter 0.17.0 (`table-format.md`), shared with Python applications.
//!
//! [`DynamoStore`] implements [`zael_core::store::BucketStore`]: `charge` for the buckets of
//! YAML rules (below), `acquire` for entity rules, the library's acquire over the limits stored
//! in the table with cascade to a parent (`store/entity/`: stored config levels, speculative
//! writes with refunds, the slow path's combined read and single commit). [`admin`] holds the
//! library's administrative writes (table, version record, namespace registry) for the CLI.
//!
//! # Mapping of YAML rules
//!
//! A [`BucketRequest`](zael_core::store::BucketRequest) is one bucket of a YAML rule:
//!
//! * `key.namespace` is a namespace **name**, resolved to its opaque id through the registry
//!   record `_/SYSTEM#` `#NAMESPACE#{name}` and cached for `namespace_cache_ttl` (60 s by
//!   default, failures included). A missing record, or a `status` other than `active`,
//!   answers `StoreError::NotFound` naming the namespace (refused whatever the failure policy). zael never registers one.
//! * `key.entity` is the zae-limiter entity id, `key.resource` the resource, and the bucket
//!   holds one limit named [`LIMIT_NAME`] (`hits`) with `cp`/`ra`/`rp` = the YAML limit
//!   (millitokens and ms, undivided). These entities have no `#META`: every create carries
//!   the `attribute_not_exists(PK)` ConditionCheck on it, nothing cascades, and the limits
//!   behave like an `acquire(limits=...)` override, so every create and slow-path write
//!   stamps `ttl = now_s + int(7 × max(time to fill))` (§11.12; `wcu` and carried limits count
//!   on normal writes, as in the library).
//!
//! # The algorithm (§11)
//!
//! * **Fast path**: one conditional UpdateItem on a shard drawn uniformly from the cached
//!   shard count, with every condition term of §11.2 and the library's expression tokens
//!   (`#t0`, `:h0`, `#wcu_tk`, ...), `ALL_NEW`, and `ALL_OLD` on failure. Decision: it also
//!   pins `b_hits_cp/ra/rp` to the YAML values, so a changed YAML limit sends the next request
//!   through the slow path that syncs it (stricter than the library, never looser).
//! * **Failure classification** from the `ALL_OLD` image in the library's order (missing,
//!   disabled, expired stamp, cleared bypass, exhausted...), plus `Unsupported` and
//!   `ParamsChanged`. Fast rejection projects the image to now and rejects with no read when
//!   refill would not help; sharded buckets first probe up to 2 other shards; an exhausted
//!   `wcu` that refill would not restore doubles `shard_count` through shard 0 (loser adopts
//!   the winner's count, winner propagates) and takes the slow path on a new shard.
//! * **Slow path**: a strongly consistent GetItem of the shard, then shape (a) create
//!   (TransactWriteItems: complete Put under `attribute_not_exists(PK)` + META
//!   ConditionCheck), (b) the `rf`-locked normal update (refill of every limit on the item,
//!   `tk <= :read` pins, the balance guard, `REMOVE vu` pinned on the `vu` read, `SET ttl`), or
//!   (c) the consumption-only retry when (a) or (b) lost a race; a failed (c) is a rejection.
//!   A limit missing from an existing item is seeded. Param sync: when the item's
//!   `cp/ra/rp` differ from the YAML, the normal write SETs them and refills/clamps with
//!   them (what the library's sync followed by its forced slow pass does, in one write).
//! * **Stamps**: `disabled = true` rejects every charge (OVER_LIMIT, nothing written). A live
//!   `bypass` admits without a `tk` debit (the bypass-shaped write, learned per bucket; a
//!   normal-shape debit that lands on a live stamp is refunded with the library's
//!   self-trimming credit). A live `b_hits_soft` admits whatever the balance, debiting into
//!   debt (decision: as a config-driven soft limit in the library; the library's override
//!   path would ignore the stamp). Expired stamps send the request to the slow path, which
//!   removes them (zael's YAML says neither soft nor bypassed), pinned on the stamp as read.
//! * **Unsupported features** (schedules, quotas, duration windows, `vu` other than 0, a
//!   cascade to a parent; §12 markers) on an item: logged once per bucket (without the
//!   entity id, which carries request data) and answered `StoreError::Unavailable`. A `vu = 0`
//!   (forced slow pass) is supported. An entity that has a `#META` item is refused when a
//!   create finds it.
//! * **Version gate**: `_/SYSTEM#` `#VERSION` is read at connect and re-read after
//!   `namespace_cache_ttl`; a missing record, a `client_min_version` above 0.17.0 or another
//!   schema major refuses every write (`Refused`). zael declares 0.17.0 because it fails
//!   closed on every §12 marker it does not implement.
//!
//! # Charges
//!
//! Several charges on one bucket are decided in order, each seeing the balance the previous
//! left (`BucketState::charge_all`). The fast path speculates that all of them fit (one
//! write of their sum). Otherwise the decision is taken on the refilled balance and written
//! as **one** update per bucket item, guarded so that every admitted strict charge stays valid
//! against concurrent debits (never over-admit). Debt charges (`allow_debt`) that do not fit
//! are applied anyway, floored at `-share` from the balance read, as an unconditional `ADD`
//! (the library's lease-adjust shape) and reported OVER_LIMIT; concurrent writers can push such
//! a balance a little below the floor. A rejection that records debt costs one more write.
//!
//! # Outcomes
//!
//! `ChargeOutcome::tokens` is the balance after the charge as a slow pass would see it (the
//! stored balance refilled to `now`), and `refilled_at` the `rf` it refers to. For a sharded
//! bucket the shard's balance is multiplied by the shard count: an estimate of the whole
//! bucket that makes the server's full-capacity arithmetic give the shard's own reset time.
//!
//! # Time, deadlines, retries
//!
//! One clock reading per call: the caller's `now` is used for the fast-path terms, planning
//! and the `rf` a slow pass stamps (`max(now, stored rf)`). The buckets of one call are
//! charged **concurrently** (one future per bucket, joined), so a call takes as long as its
//! slowest bucket; each runs under the call's one deadline, `call_timeout` (40 ms by
//! default). Throttling, 5xx and transport errors are retried with full-jitter backoff (2 ms
//! doubling, capped at 25 ms) until then, transaction conflicts up to 3 times. A bucket past
//! the deadline fails with `StoreError::Timeout`; a write may have landed by then (like any
//! lost response). The SDK's own retries are disabled.
//!
//! # Failures and `on_unavailable`
//!
//! When some buckets fail, the call answers `StoreError::Partial` with the outcomes of the
//! others (their writes landed), so a fail-open policy admits only what could not be charged.
//! Errors are `Unavailable`/`Timeout` (DynamoDB errors, timeouts, unsupported features,
//! `#META` entities) or `Refused`, which no failure policy admits, as the library raises
//! them under `on_unavailable = allow` too: the version gate, an unregistered or inactive
//! namespace, identifiers or limits the format cannot hold, `AccessDeniedException`.
//!
//! `BucketStore::on_unavailable` answers the namespace's system config (`{ns}/SYSTEM#`
//! `#CONFIG`, attribute `on_unavailable`, `allow` | `block`): read, eventually consistent,
//! when the namespace id is first resolved (part of that call: one more GetItem on the first
//! use of a namespace), then refreshed in the background whenever the namespace cache entry
//! expires; a failed read keeps the last value. No item, no attribute, or another value reads
//! as `block` (decision: the library keeps its last loaded value when the attribute is
//! removed; zael takes the table's word).
//!
//! # Caches (in process, bounded)
//!
//! Namespace ids and the version verdict (TTL), `on_unavailable` per namespace, shard counts
//! above 1 (monotonic, from images), buckets seen stamped `bypass`, buckets already logged as
//! unsupported, and the rejection cache.
//!
//! # The rejection cache (ADR-147)
//!
//! Every image a call sees (ALL_NEW of a landed write, ALL_OLD of a failed one, the state a
//! create wrote, a slow-path read) that shows a shard unable to give one token, or this
//! request's largest strict charge, is remembered per (bucket, shard) with its `tk`, `rf`,
//! parameters and `ttl`; other images forget the shard. A later call whose charges are **all
//! strict with cost >= 1** is rejected without a DynamoDB request when every shard of the
//! bucket has an entry that is (a) at most 1 s old, (b) before the image's `ttl`, (c) under
//! the YAML's current `cp`/`ra`/`rp` (a config change never uses an old image), and (d) on
//! which refill up to now still rejects every charge (so the cached instant "T" is exact per
//! cost). Debt charges (they must reach the table) and check-only charges (they pass at a
//! balance of 0) always go to the table. Images with a stamp (`disabled`, `bypass`, `soft`),
//! an unsupported feature, or a `vu` other than the trim-only `0` are never remembered
//! (decision: `vu = 0` only forces a clamping pass that can lower a balance, never raise it,
//! so a rejection judged on it stays valid, as the library's `vu_only_trims`). Known-short
//! shards of a sharded bucket are avoided when drawing the fast path's shard. At most 10,000
//! buckets; hits are counted (`DynamoStore::rejection_cache_hits`,
//! `zael_dynamodb_rejection_cache_hits_total`). Its only error is under-admission for at
//! most 1 s when tokens come back by a route no image showed (a refund or reset by Python,
//! the aggregator's proactive refill, an operator's stamp); `DynamoStoreOptions::rejection_cache`
//! turns it off.
//!
//! # Metrics
//!
//! Names and descriptions in [`metrics`]: DynamoDB requests by operation and outcome, their
//! latency, consumed write capacity, bucket decisions and fast admits (the fast-path ratio),
//! rejection-cache hits, decisions by path, timeouts, and the store call latency.
//!
//! # Not implemented (yet)
//!
//! * Schedules, calendar quotas, duration windows, quota grants and top-ups: detected and
//!   answered Unavailable (above).
//! * For YAML rules, entities with `#META`: a create that finds META is refused, and an item
//!   stamped `cascade = true` with a `parent_id` is unsupported (entity rules handle both).
//! * For YAML rules, the config access walk: `disabled`/bypass set on Python's config items
//!   (`{ns}/RESOURCE#{r}` `#CONFIG`, `{ns}/ENTITY#{e}` `#CONFIG#...`) are honoured only through
//!   the stamps the library's fan-out writes on existing buckets; a bucket zael creates
//!   afterwards is not stamped. Stamps are never renewed, only honoured or removed when expired.
//! * Unsupported features are detected on the images of failed writes and slow-path reads:
//!   a speculative write that *lands* on an item carrying a quota or window marker (which a
//!   Python application wrote on the same bucket) is admitted like any other, since the fast
//!   path's condition has no terms for them (it has for schedules: `vu`).
//!
//! # Tests
//!
//! `tests/` runs against moto's server application started on a free port
//! (`tests/py/moto_locked.py`): moto's in-memory DynamoDB checks a condition and applies the
//! update without a lock across its request threads, so the launcher serialises requests,
//! as DynamoDB's per-item atomicity requires; and against the Python library 0.17.0 as the
//! oracle (`tests/py/oracle.py`), from the venv at `$ZAEL_VENV` or `<repo>/.venv`.

pub mod admin;
mod cache;
mod db;
mod item;
pub mod keys;
pub mod metrics;
mod plan;
mod rejections;
mod store;
pub mod testing;
pub mod version;

pub use db::{CallCounts, DEFAULT_MAX_IN_FLIGHT};
/// Bucket shard items as read (for the CLI's reset and top-up, which plan on every shard).
pub use item::{BucketImage, LimitImage, StampRead};
pub use metrics::describe_metrics;
/// The bucket `ttl` of the library (`now_s + int(7 × slowest recovery)`), for writers outside
/// the store.
pub use plan::{recovery_secs, ttl_epoch};
pub use store::{
    CommitHook, ConnectError, DEFAULT_CALL_TIMEOUT, DEFAULT_NAMESPACE_CACHE_TTL, DynamoStore, DynamoStoreOptions,
    LIMIT_NAME, sdk_config,
};

//! [`DynamoStore`]: the zae-limiter 0.17.0 acquire algorithm (`table-format.md` §11) for
//! zael's buckets. See the crate docs for the mapping and the decisions.
//!
//! This module holds the store, its options and the per-bucket entry point
//! (`Inner::charge_bucket`). The submodules, in the order a charge meets them:
//!
//! 1. [`system`]: the namespace id and the version gate, resolved before any bucket write.
//! 2. [`rejection_cache`]: charges recent images prove short, answered without a call.
//! 3. [`fast_path`]: the speculative UpdateItem on a drawn shard, and what follows from it
//!    (other shards, refunds on a bypassed bucket).
//! 4. [`classify`]: why a speculative write failed, from its `ALL_OLD` image.
//! 5. [`reject`]: decisions that admit nothing: fast rejection, disabled buckets, the
//!    debit of rejected debt charges.
//! 6. [`sharding`]: the cached shard count, shard selection and doubling.
//! 7. [`slow_path`]: the consistent read and the re-plan loop.
//! 8. [`commit`]: the three slow-path writes: create, normal update, consumption-only retry.
//!
//! Shared by all of them: [`request`] (the bucket request in flight and its decision),
//! [`learning`] (what every image teaches the in-process caches) and [`expr`] (expression
//! names and values).

mod classify;
mod commit;
mod entity;
mod expr;
mod fast_path;
mod learning;
pub(crate) mod lease;
mod near_empty;
mod planned;
mod reject;
mod rejection_cache;
mod request;
mod reserve;
mod reserve_entity;
mod sharding;
mod slow_path;
mod system;
mod write;

use aws_sdk_dynamodb::Client;
use futures_util::future::join_all;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zael_core::bucket::{ChargeOutcome, EpochMillis};
use zael_core::lease::{Lease, LeaseChange};
use zael_core::store::{
    BucketRequest, BucketStore, EntityOutcome, EntityRequest, LeaseChanged, LeaseOpened, LeaseRequest, LimitReport,
    OnUnavailable, StoreError,
};

use crate::cache::BoundedCache;
use crate::db::{CallCounts, Db};
use crate::keys;
use crate::metrics as m;
use crate::plan;
use crate::rejections::Rejections;
use rejection_cache::Known;
use request::{Ctx, path};

/// The one limit of a zael bucket.
pub const LIMIT_NAME: &str = "hits";

/// Default deadline of one [`BucketStore::charge`] call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(40);
/// The shortest deadline of a native-API call (`zael.limiter.v1`).
pub const LEASE_CALL_MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Default lifetime of a cached namespace id (and of the cached version verdict).
pub const DEFAULT_NAMESPACE_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a cached stored-config item (the library's `config_cache_ttl`).
pub const DEFAULT_CONFIG_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long [`DynamoStore::connect`] may take to read the version record.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of each in-process cache ([`BoundedCache`]).
const CACHE_LIMIT: usize = 100_000;

/// Where and how to reach the table.
#[derive(Clone, Debug)]
pub struct DynamoStoreOptions {
    /// The table (= stack) name.
    pub table: String,
    /// The AWS region; `None` uses the standard chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// A custom endpoint (moto, LocalStack, DynamoDB Local); `None` for AWS.
    pub endpoint_url: Option<String>,
    /// Deadline of one `charge` call, retries included; past it the call fails with
    /// [`StoreError::Timeout`].
    pub call_timeout: Duration,
    /// Lifetime of a resolved namespace id and of the version record verdict.
    pub namespace_cache_ttl: Duration,
    /// Lifetime of a cached stored-config item (entity rules' limits; the library's
    /// `config_cache_ttl`, 60 s by default); zero reads the config on every acquire.
    pub config_cache_ttl: Duration,
    /// Answer charges that recent images prove short without a DynamoDB call (each image
    /// trusted for at most 1 s); `false` sends every charge to the table.
    pub rejection_cache: bool,
    /// Token reservations on hot YAML-rule buckets ([`zael_core::reserve`]); `None` writes
    /// once per decision. Off here; the server turns them on by default.
    pub reservations: Option<zael_core::reserve::ReserveOptions>,
    /// Most requests at DynamoDB at once; the others wait for a slot inside their call's
    /// deadline (the token reservations' writes do not wait: `crate::db`).
    pub max_in_flight: usize,
}

impl DynamoStoreOptions {
    /// Options for `table` with the defaults: region and endpoint from the environment,
    /// a 40 ms call deadline, 60 s caches.
    pub fn new(table: impl Into<String>) -> Self {
        DynamoStoreOptions {
            table: table.into(),
            region: None,
            endpoint_url: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            namespace_cache_ttl: DEFAULT_NAMESPACE_CACHE_TTL,
            config_cache_ttl: DEFAULT_CONFIG_CACHE_TTL,
            rejection_cache: true,
            reservations: None,
            max_in_flight: crate::db::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The AWS SDK configuration from the standard chain (credentials, region), with `region` and
/// `endpoint_url` when given (an emulator: moto, DynamoDB Local, LocalStack).
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "invalid table name '{0}': a zae-limiter stack name matches ^[A-Za-z][A-Za-z0-9-]*$ (at most 55 characters)"
    )]
    InvalidTable(String),
    #[error("table '{table}': {message}")]
    Unavailable { table: String, message: String },
}

/// A [`BucketStore`] on a zae-limiter 0.17.0 DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore").field("table", &self.inner.db.table).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketId {
    ns: String,
    entity: String,
    resource: String,
}

/// The store's I/O: the table, the deadlines, the caches, the test hook.
struct Inner {
    db: Db,
    call_timeout: Duration,
    cache_ttl: Duration,
    caches: Caches,
    rejection_cache: bool,
    reservations: Option<reserve::Reservations>,
    /// Token reservations on hot entity buckets ([`reserve_entity`]), on with `reservations`.
    entity_reservations: Option<reserve_entity::EntityReservations>,
    /// Near-empty buckets' decisions at the table ([`near_empty`]).
    gates: near_empty::Gates,
    /// Test hook run between a slow path's read and its commit.
    before_commit: Mutex<Option<CommitHook>>,
}

/// What the store remembers between calls, each bounded ([`BoundedCache`]).
struct Caches {
    /// Namespace ids by name (a failure as its message), for the namespace cache TTL.
    namespaces: BoundedCache<String, Result<String, String>>,
    /// `on_unavailable` of each namespace's system config, by namespace name, as last loaded.
    policies: BoundedCache<String, OnUnavailable>,
    version: Mutex<Option<Cached<()>>>,
    /// Shard counts above 1, per bucket (grown, never lowered; 1 when absent).
    shard_counts: BoundedCache<BucketId, i64>,
    /// Buckets seen stamped `bypass`: their fast path is written in the bypass shape.
    bypassed: BoundedCache<BucketId, ()>,
    /// Per (entity, resource), the parent its last bucket image said it cascades to.
    parents: BoundedCache<BucketId, Option<String>>,
    /// Stored config items by `(PK, SK)` (`None`: absent), for the config TTL.
    config_cache: BoundedCache<(String, String), Option<Arc<crate::item::Item>>>,
    /// Each (entity, resource)'s resolved limits, stamped with the instant of the oldest
    /// item they were resolved from, for the config TTL.
    resolved: BoundedCache<BucketId, Arc<entity::Resolved>>,
    /// Bucket PKs (and entity buckets) already logged as unsupported.
    warned: BoundedCache<String, ()>,
    /// Shard images recently seen short, of YAML-rule and entity buckets (the rejection cache).
    rejections: Rejections<BucketId>,
}

impl Caches {
    fn new(options: &DynamoStoreOptions) -> Caches {
        Caches {
            namespaces: BoundedCache::new(CACHE_LIMIT, Some(options.namespace_cache_ttl)),
            policies: BoundedCache::new(CACHE_LIMIT, None),
            version: Mutex::new(None),
            shard_counts: BoundedCache::new(CACHE_LIMIT, None),
            bypassed: BoundedCache::new(CACHE_LIMIT, None),
            parents: BoundedCache::new(CACHE_LIMIT, None),
            config_cache: BoundedCache::new(CACHE_LIMIT, Some(options.config_cache_ttl)),
            resolved: BoundedCache::new(CACHE_LIMIT, Some(options.config_cache_ttl)),
            warned: BoundedCache::new(CACHE_LIMIT, None),
            rejections: Rejections::new(),
        }
    }
}

/// A cached answer and when it was fetched (failures are cached as their message).
type Cached<T, E = String> = (Instant, Result<T, E>);

/// A test hook: called with the bucket PK after a slow path's read, before its commit.
pub type CommitHook =
    Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

impl DynamoStore {
    /// Opens the table through aws-config's standard chain (credentials, region), with
    /// `endpoint_url` when given, then reads the version record once: a missing table or
    /// record, or a record that refuses zael's version, fails here.
    pub async fn connect(options: DynamoStoreOptions) -> Result<DynamoStore, ConnectError> {
        let config = sdk_config(options.region.as_deref(), options.endpoint_url.as_deref()).await;
        DynamoStore::from_sdk_config(&config, options).await
    }

    /// Like [`DynamoStore::connect`] with an already loaded SDK configuration (its region,
    /// endpoint and credentials win over `options.region`/`endpoint_url`). The SDK's own
    /// retries are turned off: the store retries within its deadline.
    pub async fn from_sdk_config(
        config: &aws_config::SdkConfig,
        options: DynamoStoreOptions,
    ) -> Result<DynamoStore, ConnectError> {
        let conf = aws_sdk_dynamodb::config::Builder::from(config)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build();
        DynamoStore::from_client(Client::from_conf(conf), options).await
    }

    /// A store on an existing client (its retry configuration is kept as it is).
    pub async fn from_client(client: Client, options: DynamoStoreOptions) -> Result<DynamoStore, ConnectError> {
        if !keys::is_valid_table(&options.table) {
            return Err(ConnectError::InvalidTable(options.table));
        }
        let table = options.table.clone();
        let store = DynamoStore {
            inner: Arc::new(Inner {
                caches: Caches::new(&options),
                db: Db::new(client, options.table, options.max_in_flight),
                call_timeout: options.call_timeout,
                cache_ttl: options.namespace_cache_ttl,
                rejection_cache: options.rejection_cache,
                reservations: options.reservations.map(reserve::Reservations::new),
                entity_reservations: options.reservations.map(reserve_entity::EntityReservations::new),
                gates: near_empty::Gates::default(),
                before_commit: Mutex::new(None),
            }),
        };
        if let Some(reservations) = &options.reservations {
            let horizon = Duration::from_millis(u64::try_from(reservations.horizon_ms).unwrap_or(1000));
            reserve::sweep(Arc::downgrade(&store.inner), horizon);
            reserve_entity::sweep(Arc::downgrade(&store.inner), horizon);
        }
        let check = tokio::time::timeout(CONNECT_TIMEOUT.max(options.call_timeout), store.inner.check_version()).await;
        match check {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(ConnectError::Unavailable { table, message: e.to_string() }),
            Err(_) => Err(ConnectError::Unavailable { table, message: "timed out reading the version record".into() }),
        }
    }

    /// DynamoDB requests sent so far, by operation.
    pub fn calls(&self) -> CallCounts {
        self.inner.db.calls()
    }

    /// Charges rejected by the rejection cache so far (without a DynamoDB call).
    pub fn rejection_cache_hits(&self) -> u64 {
        self.inner.caches.rejections.hits()
    }

    /// Stops taking token reservations and gives every held token back; answers the
    /// millitokens given back and those that could not be (stranded until their buckets
    /// refill). Call once, before the process exits.
    pub async fn close(&self) -> (i64, i64) {
        let closing = async { tokio::join!(self.inner.close_reservations(), self.inner.close_entity_reservations()) };
        let (yaml, entities) = crate::db::reservation_write(closing).await;
        (yaml.0 + entities.0, yaml.1 + entities.1)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.inner.db.table
    }

    /// Test support: runs `hook` between every slow path's read and its commit (to make a
    /// concurrent writer win a race deterministically). `None` removes it.
    #[doc(hidden)]
    pub fn set_before_commit_hook(&self, hook: Option<CommitHook>) {
        *self.inner.before_commit.lock().expect("lock") = hook;
    }
}

#[async_trait::async_trait]
impl BucketStore for DynamoStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    /// Charges every bucket concurrently (the call takes as long as its slowest bucket),
    /// each under the call's one deadline.
    async fn charge(
        &self,
        requests: &[BucketRequest],
        now: EpochMillis,
    ) -> Result<Vec<Vec<ChargeOutcome>>, StoreError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.inner.call_timeout;
        let results = join_all(requests.iter().map(|r| self.inner.charge_before(r, now, deadline))).await;
        let answer = combine(results);
        let result = if answer.is_ok() { "ok" } else { "error" };
        metrics::histogram!(m::CHARGE_DURATION, "result" => result).record(started.elapsed().as_secs_f64());
        answer
    }

    /// Each entity acquire concurrently, each under the call's one deadline.
    async fn acquire(&self, requests: &[EntityRequest], now: EpochMillis) -> Vec<Result<EntityOutcome, StoreError>> {
        let deadline = tokio::time::Instant::now() + self.inner.call_timeout;
        let timeout = u64::try_from(self.inner.call_timeout.as_millis()).unwrap_or(u64::MAX);
        join_all(requests.iter().map(|r| async move {
            let started = Instant::now();
            let result = match tokio::time::timeout_at(deadline, self.inner.acquire_entity(r, now)).await {
                Ok(result) => result,
                Err(_) => {
                    metrics::counter!(m::TIMEOUTS).increment(1);
                    Err(StoreError::Timeout(timeout))
                }
            };
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::histogram!(m::ACQUIRE_DURATION, "result" => label).record(started.elapsed().as_secs_f64());
            result
        }))
        .await
    }

    async fn open_lease(&self, request: &LeaseRequest, now: EpochMillis) -> Result<LeaseOpened, StoreError> {
        self.inner.within(self.inner.lease_deadline(), self.inner.open_lease(request, now)).await
    }

    async fn change_lease(
        &self,
        lease: &Lease,
        change: &LeaseChange,
        now: EpochMillis,
    ) -> Result<LeaseChanged, StoreError> {
        self.inner.within(self.inner.lease_deadline(), self.inner.change_lease(lease, change, now)).await
    }

    async fn available(
        &self,
        namespace: &str,
        entity: &str,
        resource: &str,
        now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        self.inner.within(self.inner.lease_deadline(), self.inner.available(namespace, entity, resource, now)).await
    }

    /// The namespace's system config `on_unavailable` as last loaded (read when the namespace
    /// id is resolved, then refreshed in the background every `namespace_cache_ttl`); a
    /// config without it (or no config item) reads as `block`.
    fn on_unavailable(&self, namespace: &str) -> Option<OnUnavailable> {
        self.inner.caches.policies.get(namespace)
    }

    async fn shutdown(&self) -> (i64, i64) {
        self.close().await
    }
}

/// Every bucket's outcomes, or the failure (a refusal first) with what was charged anyway.
fn combine(results: Vec<Result<Vec<ChargeOutcome>, StoreError>>) -> Result<Vec<Vec<ChargeOutcome>>, StoreError> {
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().map(Result::unwrap_or_default).collect());
    }
    let mut error: Option<StoreError> = None;
    let mut outcomes = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(o) => outcomes.push(Some(o)),
            Err(e) => {
                outcomes.push(None);
                if error.as_ref().is_none_or(|first| first.may_fail_open() && !e.may_fail_open()) {
                    error = Some(e);
                }
            }
        }
    }
    let error = error.unwrap_or_else(|| StoreError::Unavailable("a bucket failed".into()));
    if outcomes.iter().all(Option::is_none) {
        Err(error)
    } else {
        Err(StoreError::Partial { outcomes, error: Box::new(error) })
    }
}

impl Inner {
    /// The deadline of a native-API call: `call_timeout`, but at least [`LEASE_CALL_MIN_TIMEOUT`]
    /// (an idempotent acquire or a lease change takes a read and a transaction).
    fn lease_deadline(&self) -> Duration {
        self.call_timeout.max(LEASE_CALL_MIN_TIMEOUT)
    }

    /// `call` under a deadline of `limit`.
    async fn within<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!(m::TIMEOUTS).increment(1);
                Err(StoreError::Timeout(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)))
            }
        }
    }

    /// One bucket under the call's deadline.
    async fn charge_before(
        self: &Arc<Self>,
        request: &BucketRequest,
        now: EpochMillis,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<ChargeOutcome>, StoreError> {
        match tokio::time::timeout_at(deadline, self.charge_bucket(request, now)).await {
            Ok(result) => {
                if result.is_ok() {
                    metrics::counter!(m::BUCKET_DECISIONS).increment(1);
                }
                result
            }
            Err(_) => {
                metrics::counter!(m::TIMEOUTS).increment(1);
                Err(StoreError::Timeout(u64::try_from(self.call_timeout.as_millis()).unwrap_or(u64::MAX)))
            }
        }
    }

    async fn charge_bucket(
        self: &Arc<Self>,
        request: &BucketRequest,
        now: EpochMillis,
    ) -> Result<Vec<ChargeOutcome>, StoreError> {
        if request.charges.is_empty() {
            return Ok(Vec::new());
        }
        let key = &request.key;
        if !keys::is_valid_entity(&key.entity) || !keys::is_valid_resource(&key.resource) {
            return Err(StoreError::Refused(format!(
                "bucket of resource '{}' has an entity or resource id outside the zae-limiter identifier rules",
                key.resource
            )));
        }
        let limit = request.limit;
        if limit.capacity.0 <= 0 || limit.refill_amount.0 <= 0 || limit.refill_period_ms <= 0 {
            return Err(StoreError::Refused(format!(
                "resource '{}': a DynamoDB bucket needs a positive capacity, rate and period",
                key.resource
            )));
        }
        let ns = self.namespace_id(&key.namespace).await?;
        self.check_version().await?;
        let cx = Ctx {
            id: BucketId { ns, entity: key.entity.clone(), resource: key.resource.to_string() },
            limit,
            charges: &request.charges,
            total: plan::total(&request.charges),
            now,
        };
        // This server's reservation first: tokens it holds are not in the shared balance the
        // rejection cache judges. A rule with `reserve: false` always goes to the table.
        if request.reserve
            && let Some(decided) = self.reserved(&cx).await
        {
            return Ok(decided.scaled());
        }
        // Near empty, a decision waits for those of this server already at the table when the
        // refill covers no more of them, then is judged again (`near_empty`).
        let mut permit = None;
        let avoid = loop {
            match self.known_short(&cx) {
                Known::Rejected(decided) => {
                    self.caches.rejections.count_hit();
                    metrics::counter!(m::REJECTION_CACHE_HITS).increment(1);
                    path("cache_reject");
                    return Ok(decided.scaled());
                }
                Known::Short(shards) => match self.gates.enter(&cx.id, self.near_empty_slots(&cx)) {
                    None => break shards,
                    Some(near_empty::Entry::Go(p)) => {
                        permit = Some(p);
                        break shards;
                    }
                    Some(near_empty::Entry::Wait(waiter)) => {
                        metrics::counter!(m::NEAR_EMPTY_WAITS).increment(1);
                        waiter.landed(self.call_timeout).await;
                    }
                },
            }
        };
        let trickle = match self.short_shard(&cx) {
            Some(image) => self.trickle(&cx, &image).await,
            None => None,
        };
        let decided = match trickle {
            Some(decided) => decided,
            None => self.fast(&cx, &avoid).await,
        };
        drop(permit);
        Ok(decided?.scaled())
    }
}

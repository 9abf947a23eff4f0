//! [`DynamoStore`]: the zae-limiter 0.17.0 acquire algorithm (`table-format.md` §11) for
//! zael's buckets. See the crate docs for the mapping and the decisions.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use futures_util::future::join_all;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use zael_core::bucket::{Charge, ChargeOutcome, EpochMillis, Millitokens};
use zael_core::store::{BucketRequest, BucketStore, OnUnavailable, StoreError};

use crate::db::{CallCounts, Db, DbError, Transact, Update, UpdateReq};
use crate::item::{BucketImage, Item, LimitImage, NewBucket, NewLimit, StampRead, n, new_bucket_item, s};
use crate::keys::{self, MAX_SHARD_COUNT, WCU, WCU_PER_WRITE};
use crate::metrics as m;
use crate::plan::{self, Admission, Plan};
use crate::rejections::{Rejections, Short};

/// The one limit of a zael bucket.
pub const LIMIT_NAME: &str = "hits";

/// Default deadline of one [`BucketStore::charge`] call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(40);
/// Default lifetime of a cached namespace id (and of the cached version verdict).
pub const DEFAULT_NAMESPACE_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long [`DynamoStore::connect`] may take to read the version record.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the in-process sets and maps keyed by bucket.
const CACHE_LIMIT: usize = 100_000;
/// Re-plans of one slow path before giving up (each re-reads the bucket).
const SLOW_PATH_ATTEMPTS: usize = 3;
/// Other shards a failed fast path probes before rejecting (the library's `_MAX_SHARD_RETRIES`).
const SHARD_RETRIES: usize = 2;

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
    /// Answer charges that recent images prove short without a DynamoDB call (each image
    /// trusted for at most 1 s); `false` sends every charge to the table.
    pub rejection_cache: bool,
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
            rejection_cache: true,
        }
    }
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

struct Inner {
    db: Db,
    call_timeout: Duration,
    cache_ttl: Duration,
    namespaces: Mutex<HashMap<String, Cached<String>>>,
    /// `on_unavailable` of each namespace's system config, by namespace name, as last loaded.
    policies: Mutex<HashMap<String, OnUnavailable>>,
    version: Mutex<Option<Cached<()>>>,
    /// Shard counts above 1, per bucket (monotonic; 1 when absent).
    shard_counts: Mutex<HashMap<BucketId, i64>>,
    /// Buckets seen stamped `bypass`: their fast path is written in the bypass shape.
    bypassed: Mutex<HashSet<BucketId>>,
    /// Bucket PKs already logged as unsupported.
    warned: Mutex<HashSet<String>>,
    /// Shards recently seen short (the rejection cache).
    rejections: Rejections<BucketId>,
    rejection_cache: bool,
    /// Test hook run between a slow path's read and its commit.
    before_commit: Mutex<Option<CommitHook>>,
}

/// A cached answer and when it was fetched (failures are cached as their message).
type Cached<T> = (Instant, Result<T, String>);

/// A test hook: called with the bucket PK after a slow path's read, before its commit.
pub type CommitHook =
    Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

impl DynamoStore {
    /// Opens the table through aws-config's standard chain (credentials, region), with
    /// `endpoint_url` when given, then reads the version record once: a missing table or
    /// record, or a record that refuses zael's version, fails here.
    pub async fn connect(options: DynamoStoreOptions) -> Result<DynamoStore, ConnectError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let config = loader.load().await;
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
                db: Db::new(client, options.table),
                call_timeout: options.call_timeout,
                cache_ttl: options.namespace_cache_ttl,
                namespaces: Mutex::new(HashMap::new()),
                policies: Mutex::new(HashMap::new()),
                version: Mutex::new(None),
                shard_counts: Mutex::new(HashMap::new()),
                bypassed: Mutex::new(HashSet::new()),
                warned: Mutex::new(HashSet::new()),
                rejections: Rejections::new(),
                rejection_cache: options.rejection_cache,
                before_commit: Mutex::new(None),
            }),
        };
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
        self.inner.rejections.hits()
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

    /// The namespace's system config `on_unavailable` as last loaded (read when the namespace
    /// id is resolved, then refreshed in the background every `namespace_cache_ttl`); a
    /// config without it (or no config item) reads as `block`.
    fn on_unavailable(&self, namespace: &str) -> Option<OnUnavailable> {
        self.inner.policies.lock().expect("lock").get(namespace).copied()
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

fn unavailable(e: DbError) -> StoreError {
    match e {
        DbError::Conflict => StoreError::Unavailable("DynamoDB: the bucket stayed contended".into()),
        DbError::Other(m) => StoreError::Unavailable(format!("DynamoDB: {m}")),
        DbError::Denied(m) => StoreError::Refused(format!("DynamoDB: {m}")),
    }
}

fn path(name: &'static str) {
    metrics::counter!(m::PATHS, "path" => name).increment(1);
}

/// What the rejection cache knows of a request.
enum Known {
    /// Every shard is known short for these charges: rejected without a call.
    Rejected(Decided),
    /// These shards are known short (the fast path avoids them).
    Short(Vec<i64>),
}

/// One bucket request in flight.
struct Ctx<'a> {
    id: BucketId,
    cp: i64,
    ra: i64,
    rp: i64,
    charges: &'a [Charge],
    total: i64,
    now: EpochMillis,
}

impl Ctx<'_> {
    fn pk(&self, shard: i64) -> String {
        keys::pk_bucket(&self.id.ns, &self.id.entity, &self.id.resource, shard)
    }

    fn params_match(&self, l: &LimitImage) -> bool {
        (l.cp, l.ra, l.rp) == (self.cp, self.ra, self.rp)
    }
}

/// A decision and the shard count its balances are shares of.
struct Decided {
    outcomes: Vec<ChargeOutcome>,
    shard_count: i64,
}

impl Decided {
    fn new(outcomes: Vec<ChargeOutcome>, shard_count: i64) -> Self {
        Decided { outcomes, shard_count }
    }

    /// Balances as estimates of the whole bucket: a shard's balance times the shard count,
    /// so that the server's full-capacity arithmetic gives the shard's own reset time.
    fn scaled(self) -> Vec<ChargeOutcome> {
        let sc = self.shard_count.max(1);
        self.outcomes
            .into_iter()
            .map(|o| ChargeOutcome { tokens: Millitokens(o.tokens.0.saturating_mul(sc)), ..o })
            .collect()
    }
}

/// Why a fast-path write failed, from its `ALL_OLD` image (§11.3).
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Missing,
    Disabled,
    Unsupported(String),
    Boundary,
    ClearedBypass,
    ParamsChanged,
    Exhausted { wcu: bool },
}

enum Spec {
    Landed { image: BucketImage, bypass_shape: bool },
    Failed { class: Class, image: Option<BucketImage> },
    Contention,
}

enum Step {
    Done(Decided),
    Replan(Option<i64>),
}

/// Builds expression attribute names and values.
#[derive(Default)]
struct Ex {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Ex {
    fn name(&mut self, alias: &str, attr: &str) -> &mut Self {
        self.names.insert(alias.to_owned(), attr.to_owned());
        self
    }

    fn num(&mut self, placeholder: &str, v: i64) -> &mut Self {
        self.values.insert(placeholder.to_owned(), n(v));
        self
    }

    fn val(&mut self, placeholder: &str, v: AttributeValue) -> &mut Self {
        self.values.insert(placeholder.to_owned(), v);
        self
    }

    fn req(self, pk: String, update: String, condition: Vec<String>) -> UpdateReq {
        UpdateReq {
            pk,
            update,
            condition: (!condition.is_empty()).then(|| condition.join(" AND ")),
            names: self.names,
            values: self.values,
        }
    }
}

fn hits_attr(field: &str) -> String {
    keys::battr(LIMIT_NAME, field)
}

fn parse(item: &Item) -> Result<BucketImage, StoreError> {
    BucketImage::parse(item).map_err(|e| StoreError::Unavailable(format!("unreadable bucket item: {e}")))
}

impl Inner {
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
            cp: limit.capacity.0,
            ra: limit.refill_amount.0,
            rp: limit.refill_period_ms,
            charges: &request.charges,
            total: plan::total(&request.charges),
            now,
        };
        let avoid = match self.known_short(&cx) {
            Known::Rejected(decided) => {
                self.rejections.count_hit();
                metrics::counter!(m::REJECTION_CACHE_HITS).increment(1);
                path("cache_reject");
                return Ok(decided.scaled());
            }
            Known::Short(shards) => shards,
        };
        Ok(self.fast(&cx, &avoid).await?.scaled())
    }

    // ---------------------------------------------------------------------------------
    // Namespaces and the version record
    // ---------------------------------------------------------------------------------

    async fn namespace_id(self: &Arc<Self>, name: &str) -> Result<String, StoreError> {
        if let Some((at, known)) = self.namespaces.lock().expect("lock").get(name)
            && at.elapsed() < self.cache_ttl
        {
            return known.clone().map_err(StoreError::Refused);
        }
        let item = self.db.get(keys::SYSTEM_PK, &keys::sk_namespace(name), false).await.map_err(unavailable)?;
        let resolved = match item {
            None => Err(format!("namespace '{name}' is not registered in table '{}'", self.db.table)),
            Some(item) => match (item.get("status"), item.get("namespace_id")) {
                (Some(AttributeValue::S(status)), Some(AttributeValue::S(id))) if status == "active" => Ok(id.clone()),
                (status, _) => Err(format!(
                    "namespace '{name}' is not active in table '{}' (status {:?})",
                    self.db.table,
                    status.and_then(|s| s.as_s().ok()).map(String::as_str).unwrap_or("missing")
                )),
            },
        };
        self.namespaces.lock().expect("lock").insert(name.to_owned(), (Instant::now(), resolved.clone()));
        if let Ok(id) = &resolved {
            // The first load is part of this call; refreshes run in the background.
            if self.policies.lock().expect("lock").contains_key(name) {
                let me = Arc::clone(self);
                let (name, id) = (name.to_owned(), id.clone());
                tokio::spawn(async move { me.load_policy(&name, &id).await });
            } else {
                self.load_policy(name, id).await;
            }
        }
        resolved.map_err(StoreError::Refused)
    }

    /// Reads `on_unavailable` from the namespace's system config (`{ns}/SYSTEM#` `#CONFIG`);
    /// on a failed read the last value is kept, as the library does.
    async fn load_policy(&self, name: &str, id: &str) {
        let item = match self.db.get(&keys::pk_system(id), keys::SK_CONFIG, false).await {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(error = ?e, namespace = %name, "cannot read the system config; keeping the last on_unavailable");
                return;
            }
        };
        let policy = match item.as_ref().and_then(|i| i.get("on_unavailable")) {
            None => OnUnavailable::Block,
            Some(AttributeValue::S(v)) => v.parse().unwrap_or_else(|e: String| {
                tracing::warn!(namespace = %name, error = %e, "invalid on_unavailable in the system config; using block");
                OnUnavailable::Block
            }),
            Some(other) => {
                tracing::warn!(namespace = %name, value = ?other, "invalid on_unavailable in the system config; using block");
                OnUnavailable::Block
            }
        };
        let mut policies = self.policies.lock().expect("lock");
        if policies.len() >= CACHE_LIMIT && !policies.contains_key(name) {
            policies.clear();
        }
        policies.insert(name.to_owned(), policy);
    }

    async fn check_version(&self) -> Result<(), StoreError> {
        let cached = self.version.lock().expect("lock").clone();
        if let Some((at, verdict)) = &cached
            && at.elapsed() < self.cache_ttl
        {
            return verdict.clone().map_err(StoreError::Refused);
        }
        let item = match self.db.get(keys::SYSTEM_PK, keys::SK_VERSION, false).await {
            Ok(item) => item,
            Err(e) => {
                // Keep writing under the last verdict while the record cannot be read.
                if let Some((_, verdict)) = cached {
                    tracing::warn!(error = ?e, "cannot re-read the version record; keeping the last verdict");
                    return verdict.map_err(StoreError::Refused);
                }
                return Err(unavailable(e));
            }
        };
        let verdict = match item {
            None => Err(format!(
                "table '{}' has no zae-limiter version record (`_/SYSTEM#` `#VERSION`); open the stack with \
                 zae-limiter first",
                self.db.table
            )),
            Some(item) => {
                let text = |attr: &str| item.get(attr).and_then(|v| v.as_s().ok()).map(String::as_str);
                crate::version::gate(text("schema_version"), text("client_min_version"))
                    .map_err(|m| format!("table '{}': {m}", self.db.table))
            }
        };
        if let Err(message) = &verdict {
            tracing::error!(%message, "zae-limiter version gate refuses writes");
        }
        *self.version.lock().expect("lock") = Some((Instant::now(), verdict.clone()));
        verdict.map_err(StoreError::Refused)
    }

    // ---------------------------------------------------------------------------------
    // In-process caches
    // ---------------------------------------------------------------------------------

    fn cached_count(&self, id: &BucketId) -> i64 {
        self.shard_counts.lock().expect("lock").get(id).copied().unwrap_or(1)
    }

    /// Grows the cached shard count (never lowers it) and returns the larger one.
    fn learn_count(&self, id: &BucketId, count: i64) -> i64 {
        let count = count.clamp(1, MAX_SHARD_COUNT);
        let mut map = self.shard_counts.lock().expect("lock");
        let known = map.get(id).copied().unwrap_or(1);
        if count > known {
            if map.len() >= CACHE_LIMIT {
                map.clear();
            }
            map.insert(id.clone(), count);
            return count;
        }
        known
    }

    /// A shard drawn uniformly from the cached count, avoiding the shards in `avoid` when
    /// some other is left.
    fn select_shard(&self, id: &BucketId, avoid: &[i64]) -> (i64, i64) {
        let count = self.cached_count(id);
        if count <= 1 {
            return (0, count);
        }
        let open: Vec<i64> = (0..count).filter(|s| !avoid.contains(s)).collect();
        let shard = if open.is_empty() {
            rand::rng().random_range(0..count)
        } else {
            open[rand::rng().random_range(0..open.len())]
        };
        (shard, count)
    }

    // ---------------------------------------------------------------------------------
    // The rejection cache
    // ---------------------------------------------------------------------------------

    /// Whether the cache proves this request rejected: only strict charges of cost >= 1
    /// (debt charges must reach the table, check-only ones pass at a balance of 0), and only
    /// when every shard has a trusted image, under the YAML parameters, on which refill up to
    /// now still leaves every charge rejected.
    fn known_short(&self, cx: &Ctx<'_>) -> Known {
        if !self.rejection_cache || !cx.charges.iter().all(|c| !c.allow_debt && c.cost >= 1) {
            return Known::Short(Vec::new());
        }
        let entries = self.rejections.trusted(&cx.id, cx.now.0);
        if entries.is_empty() {
            return Known::Short(Vec::new());
        }
        let mut short = Vec::with_capacity(entries.len());
        let mut count = self.cached_count(&cx.id);
        let mut best: Option<(i64, Plan)> = None;
        for (shard, e) in entries {
            if (e.cp, e.ra, e.rp) != (cx.cp, cx.ra, cx.rp) {
                continue;
            }
            let share = plan::share(e.cp, e.ra, e.rp, e.shard_count);
            let p = plan::project(e.tk, e.rf, &share, cx.now);
            let plan = plan::decide(p.tokens.0, p.refilled_at, share.capacity.0, cx.charges, Admission::Enforced);
            if plan.outcomes.iter().any(|o| o.admitted) {
                continue;
            }
            short.push(shard);
            count = count.max(e.shard_count);
            if best.as_ref().is_none_or(|(balance, _)| p.tokens.0 > *balance) {
                best = Some((p.tokens.0, plan));
            }
        }
        match best {
            Some((_, plan)) if (0..count).all(|s| short.contains(&s)) => {
                Known::Rejected(Decided::new(plan.outcomes, count))
            }
            _ => Known::Short(short),
        }
    }

    /// Remembers `shard` as short when `image` shows it cannot give one token (or this
    /// request's largest strict charge) now, and forgets it otherwise. Images with stamps,
    /// unsupported features, other parameters than the YAML's, or a `vu` other than the
    /// trim-only `0` are never remembered.
    fn remember(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        if !self.rejection_cache {
            return;
        }
        let hits = image.limit(LIMIT_NAME);
        let judgeable = !image.disabled
            && image.unsupported.is_none()
            && image.bypass.is_none()
            && image.vu.is_none_or(|vu| vu == 0)
            && hits.is_some_and(|h| h.soft.is_none() && cx.params_match(h));
        let Some(h) = hits.filter(|_| judgeable) else {
            self.rejections.forget(&cx.id, shard);
            return;
        };
        let until_ms = image.ttl.map_or(i64::MAX, |t| t.saturating_mul(1000));
        let short =
            Short { tk: h.tk, rf: image.rf, cp: h.cp, ra: h.ra, rp: h.rp, shard_count: image.shard_count, until_ms };
        self.remember_state(cx, shard, short);
    }

    /// Remembers a shard state known exactly (an image, or an item this store created) when
    /// it is short for one token or for this request's largest strict charge.
    fn remember_state(&self, cx: &Ctx<'_>, shard: i64, short: Short) {
        if !self.rejection_cache {
            return;
        }
        let share = plan::share(short.cp, short.ra, short.rp, short.shard_count);
        let balance = plan::project(short.tk, short.rf, &share, cx.now).tokens.0;
        let largest = cx.charges.iter().filter(|c| !c.allow_debt).map(plan::need).max().unwrap_or(0);
        if balance < largest.max(Millitokens::from_tokens(1).0) {
            self.rejections.remember(&cx.id, shard, short);
        } else {
            self.rejections.forget(&cx.id, shard);
        }
    }

    fn is_bypassed(&self, id: &BucketId) -> bool {
        self.bypassed.lock().expect("lock").contains(id)
    }

    /// The image overrules the cache in both directions (the library's `_learn_bypass`).
    fn learn_bypass(&self, id: &BucketId, image: &BucketImage) {
        let mut set = self.bypassed.lock().expect("lock");
        if image.bypass.is_some() {
            if set.len() >= CACHE_LIMIT {
                set.clear();
            }
            set.insert(id.clone());
        } else {
            set.remove(id);
        }
    }

    fn learn(&self, id: &BucketId, image: &BucketImage) {
        self.learn_count(id, image.shard_count);
        self.learn_bypass(id, image);
    }

    fn unsupported(&self, cx: &Ctx<'_>, shard: i64, what: &str) -> StoreError {
        let pk = cx.pk(shard);
        let first = {
            let mut warned = self.warned.lock().expect("lock");
            if warned.len() >= CACHE_LIMIT {
                warned.clear();
            }
            warned.insert(pk)
        };
        if first {
            // The entity id is request data (user ids, addresses): it is not logged.
            tracing::warn!(
                resource = %cx.id.resource,
                namespace_id = %cx.id.ns,
                shard,
                feature = %what,
                "bucket uses a zae-limiter feature zael does not implement; answering unavailable"
            );
        }
        path("unsupported");
        StoreError::Unavailable(format!(
            "a bucket of resource '{}' uses {what}, which zael does not implement",
            cx.id.resource
        ))
    }

    // ---------------------------------------------------------------------------------
    // Fast path (§11.2 - §11.4)
    // ---------------------------------------------------------------------------------

    /// The speculative UpdateItem on `shard`: the normal shape (every condition term of
    /// §11.2, plus pins on the item's `cp`/`ra`/`rp` so a changed YAML limit takes the slow
    /// path that syncs it), or the bypass shape.
    async fn speculate(&self, cx: &Ctx<'_>, shard: i64, bypass_shape: bool) -> Result<Spec, StoreError> {
        let now = cx.now.0;
        let mut ex = Ex::default();
        ex.name("#c0", &hits_attr("tc")).num(":p0", cx.total);
        ex.name("#byp", "bypass").num(":vu_now", now);
        ex.name("#wcu_tk", &keys::battr(WCU, "tk")).name("#wcu_tc", &keys::battr(WCU, "tc"));
        ex.num(":neg_wcu", -WCU_PER_WRITE).num(":pos_wcu", WCU_PER_WRITE).num(":thresh_wcu", WCU_PER_WRITE);
        ex.name("#ttl", "ttl").num(":now_epoch", now.div_euclid(1000));
        ex.name("#disabled", "disabled");
        let mut add = vec!["#c0 :p0".to_owned()];
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        if bypass_shape {
            cond.push("#byp > :vu_now".into());
        } else {
            ex.name("#t0", &hits_attr("tk")).num(":n0", -cx.total).num(":h0", cx.total);
            ex.name("#o0", &hits_attr("soft")).name("#oc0", &hits_attr("cp"));
            add.push("#t0 :n0".into());
            cond.push("(#byp > :vu_now OR (#o0 > :vu_now AND attribute_exists(#oc0) AND attribute_exists(#t0)) OR #t0 >= :h0)".into());
            cond.push("(attribute_not_exists(#o0) OR #o0 > :vu_now)".into());
            cond.push("(attribute_not_exists(#byp) OR #byp > :vu_now)".into());
        }
        add.push("#wcu_tk :neg_wcu".into());
        add.push("#wcu_tc :pos_wcu".into());
        cond.push("#wcu_tk >= :thresh_wcu".into());
        cond.push("(attribute_not_exists(#ttl) OR #ttl > :now_epoch)".into());
        cond.push("attribute_not_exists(#disabled)".into());
        if !bypass_shape {
            ex.name("#vu", "vu");
            cond.push("(#byp > :vu_now OR attribute_not_exists(#vu) OR #vu > :vu_now)".into());
            ex.name("#pa0", &hits_attr("ra")).name("#pr0", &hits_attr("rp"));
            ex.num(":pc0", cx.cp).num(":pa0", cx.ra).num(":pr0", cx.rp);
            cond.push("#oc0 = :pc0 AND #pa0 = :pa0 AND #pr0 = :pr0".into());
        }
        let req = ex.req(cx.pk(shard), format!("ADD {}", add.join(", ")), cond);
        match self.db.update(req).await {
            Ok(Update::Done(item)) => Ok(Spec::Landed { image: parse(&item)?, bypass_shape }),
            Ok(Update::ConditionFailed(item)) => {
                let image = item.as_ref().map(parse).transpose()?;
                let class = self.classify(cx, image.as_ref(), bypass_shape);
                Ok(Spec::Failed { class, image })
            }
            Err(DbError::Conflict) => Ok(Spec::Contention),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// §11.3, in the library's order, plus `ParamsChanged` and `Unsupported`.
    fn classify(&self, cx: &Ctx<'_>, image: Option<&BucketImage>, bypass_shape: bool) -> Class {
        let Some(image) = image else { return Class::Missing };
        let now = cx.now.0;
        if image.disabled {
            return Class::Disabled;
        }
        if let Some(what) = &image.unsupported {
            return Class::Unsupported(what.clone());
        }
        let bypass_live = image.bypass.as_ref().is_some_and(|b| b.live(now));
        let hits = image.limit(LIMIT_NAME);
        let soft_expired = hits.and_then(|h| h.soft.as_ref()).is_some_and(|s| !s.live(now));
        if (!bypass_live && image.bypass.is_some()) || (!bypass_shape && soft_expired) {
            return Class::Boundary;
        }
        if bypass_shape && !bypass_live {
            return Class::ClearedBypass;
        }
        if !bypass_shape && hits.is_some_and(|h| !cx.params_match(h)) {
            return Class::ParamsChanged;
        }
        let wcu = image.limit(WCU).is_some_and(|w| w.tk < WCU_PER_WRITE);
        Class::Exhausted { wcu }
    }

    async fn fast(self: &Arc<Self>, cx: &Ctx<'_>, avoid: &[i64]) -> Result<Decided, StoreError> {
        let (shard, _count) = self.select_shard(&cx.id, avoid);
        let spec = self.speculate_learning(cx, shard).await?;
        let image = match spec {
            Spec::Landed { image, bypass_shape } => return self.landed(cx, shard, image, bypass_shape).await,
            Spec::Contention => return self.slow(cx, shard, None).await,
            Spec::Failed { class, image } => match (class, image) {
                (Class::Missing, _) | (_, None) => return self.slow(cx, shard, None).await,
                (Class::Disabled, Some(image)) => return Ok(self.disabled(cx, &image)),
                (Class::Unsupported(what), _) => return Err(self.unsupported(cx, shard, &what)),
                (Class::Boundary | Class::ParamsChanged | Class::ClearedBypass, Some(image)) => {
                    return self.slow(cx, shard, Some(image.shard_count)).await;
                }
                (Class::Exhausted { wcu }, Some(image)) => {
                    if wcu {
                        if let Some(rejected) = self.fast_reject(cx, shard, &image).await? {
                            return Ok(rejected);
                        }
                        let sc = image.shard_count;
                        if image.wcu_would_refill(cx.now.0) {
                            return self.slow(cx, shard, Some(sc)).await;
                        }
                        let count = self.double(cx, sc).await?;
                        if count > sc {
                            let new_shard = rand::rng().random_range(sc..count);
                            return self.slow(cx, new_shard, Some(count)).await;
                        }
                        return self.slow(cx, shard, Some(count)).await;
                    }
                    image
                }
            },
        };
        let sc = image.shard_count;
        if sc > 1 {
            if self.fits(cx, &image) {
                // Failed only on a trimming `vu = 0` or an expired `ttl`: this shard needs the
                // slow pass that clears it.
                return self.slow(cx, shard, Some(sc)).await;
            }
            let mut tried = HashSet::from([shard]);
            for _ in 0..SHARD_RETRIES {
                let untried: Vec<i64> = (0..sc).filter(|s| !tried.contains(s)).collect();
                if untried.is_empty() {
                    break;
                }
                let other = untried[rand::rng().random_range(0..untried.len())];
                tried.insert(other);
                match self.speculate_learning(cx, other).await? {
                    Spec::Landed { image, bypass_shape } => return self.landed(cx, other, image, bypass_shape).await,
                    Spec::Contention => return self.slow(cx, other, Some(sc)).await,
                    Spec::Failed { class, image: other_image } => match class {
                        Class::Missing | Class::Boundary | Class::ParamsChanged | Class::ClearedBypass => {
                            return self.slow(cx, other, Some(sc)).await;
                        }
                        Class::Unsupported(what) => return Err(self.unsupported(cx, other, &what)),
                        Class::Exhausted { .. } if other_image.as_ref().is_some_and(|i| self.fits(cx, i)) => {
                            return self.slow(cx, other, Some(sc)).await;
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(rejected) = self.fast_reject(cx, shard, &image).await? {
            return Ok(rejected);
        }
        self.slow(cx, shard, Some(sc)).await
    }

    /// One speculative write on `shard`, in the shape the bypass cache calls for; a bypass
    /// shape that finds the stamp gone is forgotten and re-sent in the normal shape.
    async fn speculate_learning(&self, cx: &Ctx<'_>, shard: i64) -> Result<Spec, StoreError> {
        let bypass_shape = self.is_bypassed(&cx.id);
        let mut spec = self.speculate(cx, shard, bypass_shape).await?;
        if bypass_shape && matches!(spec, Spec::Failed { class: Class::ClearedBypass, .. }) {
            self.bypassed.lock().expect("lock").remove(&cx.id);
            spec = self.speculate(cx, shard, false).await?;
        }
        match &spec {
            Spec::Landed { image, .. } | Spec::Failed { image: Some(image), .. } => {
                self.learn(&cx.id, image);
                self.remember(cx, shard, image);
            }
            Spec::Failed { image: None, .. } => self.rejections.forget(&cx.id, shard),
            Spec::Contention => {}
        }
        Ok(spec)
    }

    /// Whether a failure image shows the request would have fit (`_failed_only_on_its_stamp`).
    fn fits(&self, cx: &Ctx<'_>, image: &BucketImage) -> bool {
        let wcu_ok = image.limit(WCU).is_some_and(|w| w.tk >= WCU_PER_WRITE);
        let hits_ok =
            image.limit(LIMIT_NAME).is_some_and(|h| h.soft.is_some() || image.bypass.is_some() || h.tk >= cx.total);
        wcu_ok && hits_ok
    }

    /// Outcomes of a landed speculative write; a normal-shape debit that landed on a live
    /// bypass stamp is given back.
    async fn landed(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        image: BucketImage,
        bypass_shape: bool,
    ) -> Result<Decided, StoreError> {
        let now = cx.now.0;
        let bypass_live = image.bypass.as_ref().is_some_and(|b| b.live(now));
        let debited = if bypass_shape { 0 } else { cx.total };
        if !bypass_shape && bypass_live {
            self.refund(cx, shard, &image).await;
        }
        path(if bypass_shape || bypass_live { "fast_bypass" } else { "fast_admit" });
        metrics::counter!(m::FAST_ADMITS).increment(1);
        let Some(hits) = image.limit(LIMIT_NAME) else {
            let plan = plan::decide(0, cx.now, 0, cx.charges, Admission::Bypass);
            return Ok(Decided::new(plan.outcomes, image.shard_count));
        };
        let share = plan::share(hits.cp, hits.ra, hits.rp, image.shard_count);
        let before = plan::project(hits.tk.saturating_add(debited), image.rf, &share, cx.now);
        let admission = if bypass_shape || bypass_live { Admission::Bypass } else { Admission::Soft };
        let plan = plan::decide(before.tokens.0, before.refilled_at, share.capacity.0, cx.charges, admission);
        Ok(Decided::new(plan.outcomes, image.shard_count))
    }

    /// Gives back the `tk` a normal-shape write took from a bypassed bucket, with the
    /// library's self-trimming credit (§11.10); `tc` keeps the consumption.
    async fn refund(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) {
        let Some(hits) = image.limit(LIMIT_NAME) else { return };
        let sc = image.shard_count;
        let ceiling = hits.cp.div_euclid(sc);
        let mut ex = Ex::default();
        ex.name("#bt0", &hits_attr("tk")).num(":bd0", cx.total);
        ex.name("#be0", &hits_attr("cp")).num(":be0", hits.cp);
        ex.num(":bk0", ceiling.saturating_sub(cx.total));
        ex.name("#bg0", &hits_attr("gc")).name("#bh0", &hits_attr("sched")).name("#bx0", &hits_attr("rsched"));
        ex.name("#scn", "shard_count").num(":scn", sc);
        ex.name("#vu", "vu").name("#sch", "sched").name("#rsc", "rsched").name("#stz", "sched_tz");
        let shard_pin = if sc == 1 { "(attribute_not_exists(#scn) OR #scn = :scn)" } else { "#scn = :scn" };
        let cond = vec![
            "attribute_exists(PK)".to_owned(),
            "#bt0 <= :bk0".into(),
            "#be0 = :be0".into(),
            "attribute_not_exists(#bg0)".into(),
            "attribute_not_exists(#bh0)".into(),
            "attribute_not_exists(#bx0)".into(),
            shard_pin.into(),
            "attribute_not_exists(#vu)".into(),
            "attribute_not_exists(#sch)".into(),
            "attribute_not_exists(#rsc)".into(),
            "attribute_not_exists(#stz)".into(),
        ];
        let req = ex.req(cx.pk(shard), "ADD #bt0 :bd0".into(), cond);
        let trimmed = match self.db.update(req).await {
            Ok(Update::Done(_)) => return,
            Ok(Update::ConditionFailed(_)) => true,
            Err(e) => {
                tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
                return;
            }
        };
        if trimmed {
            // Above the ceiling (or unpinnable): credit anyway and force a clamping slow pass.
            let mut ex = Ex::default();
            ex.name("#bt0", &hits_attr("tk")).num(":bd0", cx.total).name("#vu", "vu").num(":vz", 0);
            let req = ex.req(cx.pk(shard), "SET #vu = :vz ADD #bt0 :bd0".into(), vec!["attribute_exists(PK)".into()]);
            if let Err(e) = self.db.update(req).await {
                tracing::warn!(error = ?e, resource = %cx.id.resource, "bypass refund failed");
            }
        }
    }

    /// A rejection from the image projected to now, when refill would not help (§11.4
    /// step 5): `None` when the slow path should run instead (refill helps, the limit is
    /// missing, or only some of several charges fit).
    async fn fast_reject(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) -> Result<Option<Decided>, StoreError> {
        let Some(hits) = image.limit(LIMIT_NAME) else { return Ok(None) };
        let now = cx.now.0;
        let admission = if image.bypass.as_ref().is_some_and(|b| b.live(now)) {
            Admission::Bypass
        } else if hits.soft.as_ref().is_some_and(|s| s.live(now)) {
            Admission::Soft
        } else {
            Admission::Enforced
        };
        let share = plan::share(hits.cp, hits.ra, hits.rp, image.shard_count);
        let projected = plan::project(hits.tk, image.rf, &share, cx.now);
        let plan = plan::decide(projected.tokens.0, projected.refilled_at, share.capacity.0, cx.charges, admission);
        if plan.all_admitted || plan.guard.is_some() {
            return Ok(None);
        }
        path("fast_reject");
        let mut outcomes = plan.outcomes.clone();
        if plan.debt > 0 {
            outcomes = self.debit(cx, shard, &plan).await?.unwrap_or(outcomes);
        }
        Ok(Some(Decided::new(outcomes, image.shard_count)))
    }

    /// The unconditional debit of rejected debt charges (the library's lease adjust shape).
    /// Returns the outcomes replayed on the written image, or `None` if the item vanished.
    async fn debit(&self, cx: &Ctx<'_>, shard: i64, plan: &Plan) -> Result<Option<Vec<ChargeOutcome>>, StoreError> {
        let mut ex = Ex::default();
        ex.name("#bt0", &hits_attr("tk")).num(":bd0", -plan.debt);
        ex.name("#bc0", &hits_attr("tc")).num(":bcd0", plan.debt);
        ex.name("#be0", &hits_attr("cp"));
        let cond = vec!["attribute_exists(PK)".to_owned(), "attribute_exists(#be0)".into()];
        let req = ex.req(cx.pk(shard), "ADD #bt0 :bd0, #bc0 :bcd0".into(), cond);
        path("debt");
        match self.db.update(req).await.map_err(unavailable)? {
            Update::Done(item) => {
                let image = parse(&item)?;
                self.remember(cx, shard, &image);
                Ok(self.replay(cx, plan, &image, plan.debt))
            }
            Update::ConditionFailed(_) => Ok(None),
        }
    }

    /// The plan's outcomes replayed on a written image: the balance before this request's
    /// debits is the image's `tk` plus `debited`, projected to now.
    fn replay(&self, cx: &Ctx<'_>, plan: &Plan, image: &BucketImage, debited: i64) -> Option<Vec<ChargeOutcome>> {
        let hits = image.limit(LIMIT_NAME)?;
        let share = plan::share(hits.cp, hits.ra, hits.rp, image.shard_count);
        let before = plan::project(hits.tk.saturating_add(debited), image.rf, &share, cx.now);
        Some(plan.replay(before.tokens.0, before.refilled_at))
    }

    fn disabled(&self, cx: &Ctx<'_>, image: &BucketImage) -> Decided {
        path("disabled");
        let balance = image.limit(LIMIT_NAME).map_or(0, |h| {
            let share = plan::share(h.cp, h.ra, h.rp, image.shard_count);
            plan::project(h.tk, image.rf, &share, cx.now).tokens.0
        });
        let plan = plan::decide(balance, cx.now, 0, cx.charges, Admission::Disabled);
        Decided::new(plan.outcomes, image.shard_count)
    }

    /// Doubles `shard_count` through shard 0 (§11.8); returns the count to use.
    async fn double(self: &Arc<Self>, cx: &Ctx<'_>, current: i64) -> Result<i64, StoreError> {
        if current >= MAX_SHARD_COUNT {
            return Ok(self.learn_count(&cx.id, current));
        }
        let new = current * 2;
        let mut ex = Ex::default();
        ex.num(":old", current).num(":new", new);
        let req = ex.req(cx.pk(0), "SET shard_count = :new".into(), vec!["shard_count = :old".into()]);
        let count = match self.db.update(req).await {
            Ok(Update::Done(_)) => {
                path("double");
                tracing::info!(resource = %cx.id.resource, from = current, to = new, "doubled a bucket's shard count");
                self.propagate(cx, current, new).await;
                new
            }
            Ok(Update::ConditionFailed(item)) => {
                let winner = item.as_ref().map(parse).transpose()?.map_or(current, |i| i.shard_count);
                current.max(winner)
            }
            Err(DbError::Conflict) => current,
            Err(e) => return Err(unavailable(e)),
        };
        Ok(self.learn_count(&cx.id, count))
    }

    /// Stamps the new count on shards `1..old` (the library's `_propagate_shard_count`).
    async fn propagate(self: &Arc<Self>, cx: &Ctx<'_>, old: i64, new: i64) {
        let mut set = JoinSet::new();
        for target in 1..old {
            let me = Arc::clone(self);
            let pk = cx.pk(target);
            set.spawn(async move {
                let mut ex = Ex::default();
                ex.num(":new", new);
                let req = ex.req(pk, "SET shard_count = :new".into(), vec!["shard_count < :new".into()]);
                me.db.update(req).await
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = ?e, "shard count propagation incomplete");
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Slow path (§11.5, §11.6)
    // ---------------------------------------------------------------------------------

    async fn slow(&self, cx: &Ctx<'_>, shard: i64, count_hint: Option<i64>) -> Result<Decided, StoreError> {
        let mut shard = shard;
        let mut hint = count_hint;
        for _ in 0..SLOW_PATH_ATTEMPTS {
            let count = hint.unwrap_or_else(|| self.cached_count(&cx.id)).clamp(1, MAX_SHARD_COUNT);
            if shard >= count {
                shard = rand::rng().random_range(0..count);
            }
            let item = self.db.get(&cx.pk(shard), keys::SK_STATE, true).await.map_err(unavailable)?;
            let hook = self.before_commit.lock().expect("lock").clone();
            if let Some(hook) = hook {
                hook(cx.pk(shard)).await;
            }
            let step = match item {
                None => self.create(cx, shard, count).await?,
                Some(item) => {
                    let image = parse(&item)?;
                    self.update(cx, shard, count, image).await?
                }
            };
            match step {
                Step::Done(decided) => return Ok(decided),
                Step::Replan(next) => hint = next.or(hint),
            }
        }
        Err(StoreError::Unavailable(format!(
            "a bucket of resource '{}' stayed contended through {SLOW_PATH_ATTEMPTS} slow passes",
            cx.id.resource
        )))
    }

    /// Shape (a): the complete item under `attribute_not_exists(PK)` with the ConditionCheck
    /// on the (absent) META, in one TransactWriteItems.
    async fn create(&self, cx: &Ctx<'_>, shard: i64, count: i64) -> Result<Step, StoreError> {
        let share = plan::share(cx.cp, cx.ra, cx.rp, count);
        let cap = share.capacity.0;
        let plan = plan::decide(cap, cx.now, cap, cx.charges, Admission::Enforced);
        if !plan.writes() {
            path("slow_reject");
            return Ok(Step::Done(Decided::new(plan.outcomes, count)));
        }
        let ttl = plan::ttl_epoch(cx.now, &[plan::recovery_secs(cx.cp, cx.ra, cx.rp)]);
        let bucket = NewBucket {
            ns: &cx.id.ns,
            entity: &cx.id.entity,
            resource: &cx.id.resource,
            shard,
            shard_count: count,
            rf: cx.now.0,
            ttl: Some(ttl),
        };
        let item = new_bucket_item(
            &bucket,
            &[NewLimit {
                name: LIMIT_NAME,
                tk: cap.saturating_sub(plan.consumed()),
                cp: cx.cp,
                ra: cx.ra,
                rp: cx.rp,
                tc: plan.consumed(),
            }],
        );
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(format!("building a create: {e}"));
        let put = Put::builder()
            .table_name(&self.db.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(build)?;
        let meta_key = HashMap::from([
            ("PK".to_owned(), s(keys::pk_entity(&cx.id.ns, &cx.id.entity))),
            ("SK".to_owned(), s(keys::SK_META)),
        ]);
        let check = ConditionCheck::builder()
            .table_name(&self.db.table)
            .set_key(Some(meta_key))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(build)?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().condition_check(check).build(),
        ];
        match self.db.transact(items).await {
            Ok(Transact::Done) => {
                path("slow_create");
                self.learn_count(&cx.id, count);
                let created = Short {
                    tk: cap.saturating_sub(plan.consumed()),
                    rf: cx.now.0,
                    cp: cx.cp,
                    ra: cx.ra,
                    rp: cx.rp,
                    shard_count: count,
                    until_ms: ttl.saturating_mul(1000),
                };
                self.remember_state(cx, shard, created);
                Ok(Step::Done(Decided::new(plan.outcomes, count)))
            }
            Ok(Transact::Canceled(codes)) => {
                let failed = |i: usize| codes.get(i).is_some_and(|c| c == "ConditionalCheckFailed");
                if failed(1) {
                    return Err(StoreError::Unavailable(format!(
                        "an entity of resource '{}' has a zae-limiter #META item; entities with metadata \
                         (parents, cascade) are not supported by zael",
                        cx.id.resource
                    )));
                }
                if failed(0) {
                    // Another writer created this shard: consumption-only retry on it.
                    return self.retry(cx, shard, &plan, Admission::Enforced, None, count).await;
                }
                Err(StoreError::Unavailable(format!("bucket create cancelled: {codes:?}")))
            }
            Err(DbError::Conflict) => Ok(Step::Replan(Some(count))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (b) on an existing item, after the checks the slow path owes it.
    async fn update(&self, cx: &Ctx<'_>, shard: i64, count: i64, image: BucketImage) -> Result<Step, StoreError> {
        let now = cx.now.0;
        if image.disabled {
            return Ok(Step::Done(self.disabled(cx, &image)));
        }
        if let Some(what) = &image.unsupported {
            return Err(self.unsupported(cx, shard, what));
        }
        self.learn(&cx.id, &image);
        let sc = image.shard_count;
        let hits = image.limit(LIMIT_NAME);
        if image.bypass.as_ref().is_some_and(|b| b.live(now)) {
            return self.bypassed_write(cx, shard, &image).await;
        }
        let soft_live = hits.and_then(|h| h.soft.as_ref()).is_some_and(|st| st.live(now));
        let admission = if soft_live { Admission::Soft } else { Admission::Enforced };
        // Seed a missing limit at the share of the larger of the two counts (the library's
        // `seed_shard_count`); refill an existing one with the YAML parameters.
        let seed_count = sc.max(count);
        let (share, balance, refilled_at, refill) = match hits {
            Some(h) => {
                let share = plan::share(cx.cp, cx.ra, cx.rp, sc);
                let p = plan::project(h.tk, image.rf, &share, cx.now);
                (share, p.tokens.0, p.refilled_at, p.tokens.0 - h.tk)
            }
            None => {
                let share = plan::share(cx.cp, cx.ra, cx.rp, seed_count);
                (share, share.capacity.0, cx.now, 0)
            }
        };
        let plan = plan::decide(balance, refilled_at, share.capacity.0, cx.charges, admission);
        let soft_fix: Option<&StampRead> = hits.and_then(|h| h.soft.as_ref()).filter(|st| !st.live(now));
        let bypass_fix: Option<&StampRead> = image.bypass.as_ref().filter(|b| !b.live(now));
        if !plan.writes() {
            if soft_fix.is_some() || bypass_fix.is_some() {
                self.fix_stamps(cx, shard, soft_fix, bypass_fix).await;
            }
            path("slow_reject");
            self.remember(cx, shard, &image);
            return Ok(Step::Done(Decided::new(plan.outcomes, if hits.is_some() { sc } else { seed_count })));
        }

        let debit = plan.tk_debit(admission);
        let written_rf = now.max(image.rf);
        let mut ex = Ex::default();
        ex.name("#rf", "rf").num(":now", written_rf).num(":expected_rf", image.rf);
        ex.name("#ttl", "ttl");
        ex.name("#vu", "vu");
        let mut set = vec!["#rf = :now".to_owned(), "#ttl = :ttl_val".into()];
        let mut add: Vec<String> = Vec::new();
        let mut remove = vec!["#vu".to_owned()];
        let mut cond = vec!["#rf = :expected_rf".to_owned()];
        let mut horizons = vec![plan::recovery_secs(cx.cp, cx.ra, cx.rp)];
        let mut i = 0usize;
        if let Some(h) = hits {
            ex.name("#bt0", &hits_attr("tk")).name("#bc0", &hits_attr("tc"));
            ex.num(":bd0", refill.saturating_sub(debit)).num(":bcd0", plan.consumed());
            add.push("#bt0 :bd0".into());
            add.push("#bc0 :bcd0".into());
            if let Some(guard) = plan.guard {
                ex.name("#bo0", &hits_attr("soft")).num(":bnow", now).num(":bf0", guard.saturating_sub(refill));
                cond.push("(#bo0 > :bnow OR #bt0 >= :bf0)".into());
            }
            if refill > 0 {
                ex.num(":bk0", h.tk);
                cond.push("#bt0 <= :bk0".into());
            }
            if !cx.params_match(h) {
                // Param sync (§9.7) folded into this rf-locked write: the YAML limit wins.
                ex.name("#sp0", &hits_attr("cp")).name("#sa0", &hits_attr("ra")).name("#sr0", &hits_attr("rp"));
                ex.num(":sp0", cx.cp).num(":sa0", cx.ra).num(":sr0", cx.rp);
                set.extend(["#sp0 = :sp0".into(), "#sa0 = :sa0".into(), "#sr0 = :sr0".into()]);
                path("param_sync");
            }
            i = 1;
        } else {
            // Seed (§11.5): the limit is missing from this item.
            ex.name("#st0", &hits_attr("tk")).name("#sc0", &hits_attr("tc"));
            ex.name("#sp0", &hits_attr("cp")).name("#sa0", &hits_attr("ra")).name("#sr0", &hits_attr("rp"));
            ex.num(":st0", balance.saturating_sub(debit)).num(":sc0", plan.consumed());
            ex.num(":sp0", cx.cp).num(":sa0", cx.ra).num(":sr0", cx.rp);
            set.extend([
                "#st0 = :st0".into(),
                "#sc0 = :sc0".into(),
                "#sp0 = :sp0".into(),
                "#sa0 = :sa0".into(),
                "#sr0 = :sr0".into(),
            ]);
            cond.push("(attribute_not_exists(#sp0) OR attribute_not_exists(#st0))".into());
        }
        // Every other limit on the item (wcu first) is carried: refilled with its stored
        // parameters and written back under the same lock, never gated.
        let mut others: Vec<&LimitImage> = image.limits.iter().filter(|l| l.name != LIMIT_NAME).collect();
        others.sort_by_key(|l| l.name != WCU);
        for l in others {
            let divisor = if l.name == WCU { 1 } else { sc };
            let share = plan::share(l.cp, l.ra, l.rp, divisor);
            let r = plan::project(l.tk, image.rf, &share, cx.now).tokens.0 - l.tk;
            ex.name(&format!("#bt{i}"), &keys::battr(&l.name, "tk"))
                .name(&format!("#bc{i}"), &keys::battr(&l.name, "tc"));
            ex.num(&format!(":bd{i}"), r).num(&format!(":bcd{i}"), 0);
            add.push(format!("#bt{i} :bd{i}"));
            add.push(format!("#bc{i} :bcd{i}"));
            if r > 0 {
                ex.num(&format!(":bk{i}"), l.tk);
                cond.push(format!("#bt{i} <= :bk{i}"));
            }
            horizons.push(plan::recovery_secs(l.cp, l.ra, l.rp));
            i += 1;
        }
        ex.num(":ttl_val", plan::ttl_epoch(cx.now, &horizons));
        if let Some(st) = soft_fix {
            ex.name("#bo0", &hits_attr("soft")).val(":bsr0", st.raw.clone());
            remove.push("#bo0".into());
            cond.push("#bo0 = :bsr0".into());
        }
        if let Some(b) = bypass_fix {
            ex.name("#byp", "bypass").val(":bypr", b.raw.clone());
            remove.push("#byp".into());
            cond.push("#byp = :bypr".into());
        }
        match image.vu {
            None => cond.push("attribute_not_exists(#vu)".into()),
            Some(vu) => {
                ex.num(":evu", vu);
                cond.push("#vu = :evu".into());
            }
        }
        let mut update = format!("SET {}", set.join(", "));
        if !add.is_empty() {
            update.push_str(&format!(" ADD {}", add.join(", ")));
        }
        update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        let req = ex.req(cx.pk(shard), update, cond);
        match self.db.update(req).await {
            Ok(Update::Done(item)) => {
                path("slow_update");
                let written = parse(&item)?;
                self.learn(&cx.id, &written);
                self.remember(cx, shard, &written);
                let outcomes = self.replay(cx, &plan, &written, debit).unwrap_or(plan.outcomes);
                Ok(Step::Done(Decided::new(outcomes, written.shard_count)))
            }
            Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => {
                let seed = if hits.is_none() { Some(balance) } else { None };
                self.retry(cx, shard, &plan, admission, seed, if hits.is_some() { sc } else { seed_count }).await
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (c): consumption only, no refill, no stamps; a failure is a rejection built
    /// from the `ALL_OLD` image. `seed` is the starting balance of a limit the item lacked.
    async fn retry(
        &self,
        cx: &Ctx<'_>,
        shard: i64,
        plan: &Plan,
        admission: Admission,
        seed: Option<i64>,
        count: i64,
    ) -> Result<Step, StoreError> {
        let debit = plan.tk_debit(admission);
        if plan.consumed() == 0 {
            // Only check-only charges were admitted: nothing to write without the refill.
            path("slow_retry");
            return Ok(Step::Done(Decided::new(plan.outcomes.clone(), count)));
        }
        let mut ex = Ex::default();
        let mut cond = Vec::new();
        let update = match seed {
            None => {
                ex.name("#bt0", &hits_attr("tk")).name("#bc0", &hits_attr("tc")).name("#be0", &hits_attr("cp"));
                ex.num(":bd0", -debit).num(":bcd0", plan.consumed());
                match plan.guard {
                    Some(guard) => {
                        ex.name("#bo0", &hits_attr("soft")).num(":bnow", cx.now.0).num(":bf0", guard);
                        cond.push(
                            "(#bt0 >= :bf0 OR (#bo0 > :bnow AND attribute_exists(#be0) AND attribute_exists(#bt0)))"
                                .to_owned(),
                        );
                    }
                    None => cond.push("attribute_exists(#be0) AND attribute_exists(#bt0)".to_owned()),
                }
                "ADD #bt0 :bd0, #bc0 :bcd0".to_owned()
            }
            Some(start) => {
                ex.name("#st0", &hits_attr("tk")).name("#sc0", &hits_attr("tc"));
                ex.name("#sp0", &hits_attr("cp")).name("#sa0", &hits_attr("ra")).name("#sr0", &hits_attr("rp"));
                ex.num(":st0", start).num(":sq0", debit).num(":sc0", plan.consumed());
                ex.num(":sp0", cx.cp).num(":sa0", cx.ra).num(":sr0", cx.rp);
                if let Some(guard) = plan.guard {
                    ex.num(":sf0", guard);
                    cond.push("(attribute_not_exists(#st0) OR #st0 >= :sf0)".to_owned());
                }
                cond.push("attribute_exists(PK)".to_owned());
                "SET #st0 = if_not_exists(#st0, :st0) - :sq0, #sp0 = if_not_exists(#sp0, :sp0), \
                 #sa0 = if_not_exists(#sa0, :sa0), #sr0 = if_not_exists(#sr0, :sr0) ADD #sc0 :sc0"
                    .to_owned()
            }
        };
        let req = ex.req(cx.pk(shard), update, cond);
        match self.db.update(req).await {
            Ok(Update::Done(item)) => {
                path("slow_retry");
                let written = parse(&item)?;
                self.learn(&cx.id, &written);
                self.remember(cx, shard, &written);
                let outcomes = self.replay(cx, plan, &written, debit).unwrap_or_else(|| plan.outcomes.clone());
                Ok(Step::Done(Decided::new(outcomes, written.shard_count)))
            }
            Ok(Update::ConditionFailed(None)) | Err(DbError::Conflict) => Ok(Step::Replan(Some(count))),
            Ok(Update::ConditionFailed(Some(item))) => {
                let image = parse(&item)?;
                let Some(hits) = image.limit(LIMIT_NAME) else { return Ok(Step::Replan(Some(count))) };
                if image.disabled || image.unsupported.is_some() || image.bypass.is_some() {
                    return Ok(Step::Replan(Some(image.shard_count)));
                }
                // Rejected: every strict charge fails; debt charges are still recorded.
                path("slow_retry_reject");
                self.remember(cx, shard, &image);
                let share = plan::share(hits.cp, hits.ra, hits.rp, image.shard_count);
                let p = plan::project(hits.tk, image.rf, &share, cx.now);
                let rejected = reject_all(p.tokens.0, p.refilled_at, share.capacity.0, cx.charges);
                let mut outcomes = rejected.outcomes.clone();
                if rejected.debt > 0 {
                    outcomes = self.debit(cx, shard, &rejected).await?.unwrap_or(outcomes);
                }
                Ok(Step::Done(Decided::new(outcomes, image.shard_count)))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The slow path under a live bypass stamp: `ADD tc` only, pinned on the live stamp.
    async fn bypassed_write(&self, cx: &Ctx<'_>, shard: i64, image: &BucketImage) -> Result<Step, StoreError> {
        let balance = image.limit(LIMIT_NAME).map_or(0, |h| {
            let share = plan::share(h.cp, h.ra, h.rp, image.shard_count);
            plan::project(h.tk, image.rf, &share, cx.now).tokens.0
        });
        let plan = plan::decide(balance, cx.now, 0, cx.charges, Admission::Bypass);
        if image.limit(LIMIT_NAME).is_none() || plan.consumed() == 0 {
            path("slow_bypass");
            return Ok(Step::Done(Decided::new(plan.outcomes, image.shard_count)));
        }
        let mut ex = Ex::default();
        ex.name("#bc0", &hits_attr("tc")).num(":bcd0", plan.consumed());
        ex.name("#byp", "bypass").num(":bnow", cx.now.0);
        let cond = vec!["attribute_exists(PK)".to_owned(), "#byp > :bnow".into()];
        let req = ex.req(cx.pk(shard), "ADD #bc0 :bcd0".into(), cond);
        match self.db.update(req).await {
            Ok(Update::Done(_)) => {
                path("slow_bypass");
                Ok(Step::Done(Decided::new(plan.outcomes, image.shard_count)))
            }
            Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => Ok(Step::Replan(Some(image.shard_count))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes expired stamps a rejected pass found, pinned on the stamps as read.
    async fn fix_stamps(&self, cx: &Ctx<'_>, shard: i64, soft: Option<&StampRead>, bypass: Option<&StampRead>) {
        let mut ex = Ex::default();
        let mut remove = Vec::new();
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        if let Some(st) = soft {
            ex.name("#bo0", &hits_attr("soft")).val(":bsr0", st.raw.clone());
            remove.push("#bo0");
            cond.push("#bo0 = :bsr0".into());
        }
        if let Some(b) = bypass {
            ex.name("#byp", "bypass").val(":bypr", b.raw.clone());
            remove.push("#byp");
            cond.push("#byp = :bypr".into());
        }
        let req = ex.req(cx.pk(shard), format!("REMOVE {}", remove.join(", ")), cond);
        if let Err(e) = self.db.update(req).await {
            tracing::debug!(error = ?e, "expired stamp removal failed");
        }
    }
}

/// Every strict charge rejected; debt charges applied (floored) and reported rejected.
fn reject_all(balance: i64, refilled_at: EpochMillis, capacity: i64, charges: &[Charge]) -> Plan {
    let mut have = balance;
    let mut plan = Plan {
        outcomes: Vec::with_capacity(charges.len()),
        admitted: 0,
        debt: 0,
        guard: None,
        all_admitted: false,
        debits: Vec::with_capacity(charges.len()),
    };
    for c in charges {
        let mut d = 0;
        if c.allow_debt {
            let single = plan::decide(
                have,
                refilled_at,
                capacity,
                &[Charge { cost: c.cost, allow_debt: true }],
                Admission::Enforced,
            );
            // Admitted or not, a debt charge here is recorded as an unconditional debit.
            d = single.debits[0];
        }
        have = have.saturating_sub(d);
        plan.debt = plan.debt.saturating_add(d);
        plan.debits.push(d);
        plan.outcomes.push(ChargeOutcome { admitted: false, tokens: Millitokens(have), refilled_at });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_all_keeps_only_debts() {
        let charges = [Charge { cost: 1, allow_debt: false }, Charge { cost: 3, allow_debt: true }];
        let plan = reject_all(2000, EpochMillis(1), 5000, &charges);
        assert_eq!(plan.debt, 3000);
        assert_eq!(
            plan.outcomes.iter().map(|o| (o.admitted, o.tokens.0)).collect::<Vec<_>>(),
            [(false, 2000), (false, -1000)]
        );
    }

    #[test]
    fn scaled_outcomes_estimate_the_whole_bucket() {
        let d = Decided::new(
            vec![ChargeOutcome { admitted: true, tokens: Millitokens(1500), refilled_at: EpochMillis(3) }],
            4,
        );
        assert_eq!(d.scaled()[0].tokens, Millitokens(6000));
    }
}

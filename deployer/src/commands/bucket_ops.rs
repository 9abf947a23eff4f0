//! `zae-limiter entity reset|top-up` (§6): the library's `Repository.reset_bucket` and
//! `top_up` (zae-limiter 0.17.0, ADR-149) behind the reference CLI's flags, lines and exit
//! codes.
//!
//! One call: resolve the pair's limits (the four config levels, the first defining any wins),
//! read META (the entity's incarnation), answer a keyed retry from its operation record, then
//! up to 4 attempts of: read every shard strongly consistently (GSI3 discovery, shard 0 and
//! every slot below the highest `shard_count` by key), raise lagging shards to that count and
//! read again, plan ([`crate::bucket_plan`]), and write each shard's `rf`-locked update, the
//! operation record (`#OP#{key or ULID}`, 3-day TTL) and the `bucket_reset` /
//! `bucket_topped_up` audit event in **one** TransactWriteItems. A lost race re-reads and
//! re-plans; an error that may have landed is resolved by the record. A keyed call with no
//! bucket to write still records itself (result 0) with its audit event.
//!
//! Not supported (decision, as zael-server, ADR 006): quotas, duration windows and schedules.
//! A reset or top-up of a bucket whose resolved limits or stored items carry any of them, and
//! a top-up that would create a bucket for a quota, is refused with `Error: Failed to … bucket:
//! quotas, duration windows and schedules are not supported by this CLI (…)`, exit 1, before
//! any write. A keyed retry of an operation the Python CLI recorded is still answered from
//! its record.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use zael_table::keys;

use super::DataTarget;
use crate::bucket_items::{self, BucketTtl, Kind, Outcome, RecordSpec};
use crate::bucket_plan::{self, Operation, ShardRead};
use crate::config_item::{self, Item, QUOTA_NOTE};
use crate::limit_spec::{self, LimitSpec, MAX_TOKENS, thousands};
use crate::repo::{Repo, Result, describe, now_ms};

/// Attempts of the read-plan-write pass before giving up (`_OPERATION_MAX_ATTEMPTS`).
const MAX_ATTEMPTS: u32 = 4;
/// Full-jitter base delay before a retry, seconds (`_OPERATION_RETRY_BASE_DELAY`).
const RETRY_BASE_DELAY_S: f64 = 0.05;
/// Errors after which a pass re-reads and re-plans (`_OPERATION_RETRY_CODES`).
const RETRY_CODES: [&str; 5] = [
    "ConditionalCheckFailedException",
    "TransactionCanceledException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "IdempotentParameterMismatchException",
];
/// Cancellation reasons no retry can clear (`_OPERATION_PERMANENT_REASONS`).
const PERMANENT_REASONS: [&str; 2] = ["ValidationError", "ItemCollectionSizeLimitExceeded"];

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    pub entity_id: String,
    /// Resource to reset (one at a time).
    #[arg(short = 'r', long, required = true, allow_hyphen_values = true)]
    pub resource: String,
    /// Limit to reset (repeatable). Omit to reset every limit on the resource.
    #[arg(short = 'l', long = "limit", value_name = "LIMIT", allow_hyphen_values = true)]
    pub limits: Vec<String>,
    /// Name this operation (1-64 of letters, digits, . _ : -) so a retry with the same key
    /// within three days is applied once. Without one, an error leaves the outcome unknown.
    #[arg(long, allow_hyphen_values = true)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub data: DataTarget,
}

#[derive(Debug, clap::Args)]
pub struct TopUpArgs {
    pub entity_id: String,
    /// Resource to top up.
    #[arg(short = 'r', long, required = true, allow_hyphen_values = true)]
    pub resource: String,
    /// LIMIT:N — add N whole tokens to LIMIT (repeatable).
    #[arg(short = 'a', long = "add", value_name = "LIMIT:N", required = true, allow_hyphen_values = true)]
    pub additions: Vec<String>,
    /// Name this operation (1-64 of letters, digits, . _ : -) so a retry with the same key
    /// within three days is applied once. Without one, an error leaves the outcome unknown.
    #[arg(long, allow_hyphen_values = true)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub data: DataTarget,
}

pub async fn reset(args: ResetArgs) -> Result<()> {
    let fail = |e: String| crate::Failure::from(format!("Failed to reset bucket: {e}"));
    check_call(&args.entity_id, &args.resource, args.idempotency_key.as_deref()).map_err(fail)?;
    let (repo, ns) = args.data.open(true).await?;
    let call = Call::new(&repo, &ns, &args.entity_id, &args.resource, args.idempotency_key.as_deref(), Kind::Reset);
    let named = (!args.limits.is_empty()).then(|| unique(&args.limits));
    let outcome = call.operate(Request::Reset(named)).await.map_err(fail)?;
    let (entity, resource) = (&args.entity_id, &args.resource);
    if outcome.shards == 0 {
        println!("Nothing to reset: '{entity}' has no bucket for '{resource}'");
    } else {
        let restored: Vec<String> = outcome.amounts.iter().map(|(k, v)| format!("{k}: {}", signed(*v))).collect();
        println!("Reset '{entity}' on '{resource}' ({}; {})", shards_text(outcome.shards), restored.join(", "));
    }
    Ok(())
}

pub async fn top_up(args: TopUpArgs) -> Result<()> {
    let asked = parse_additions(&args.additions).map_err(|m| crate::Failure::UsageText(bad_parameter(&m)))?;
    let fail = |e: String| crate::Failure::from(format!("Failed to top up bucket: {e}"));
    check_call(&args.entity_id, &args.resource, args.idempotency_key.as_deref()).map_err(fail)?;
    let amounts = check_amounts(&asked).map_err(fail)?;
    let (repo, ns) = args.data.open(true).await?;
    let call = Call::new(&repo, &ns, &args.entity_id, &args.resource, args.idempotency_key.as_deref(), Kind::TopUp);
    let outcome = call.operate(Request::TopUp(amounts.clone())).await.map_err(fail)?;
    let (entity, resource) = (&args.entity_id, &args.resource);
    if outcome.shards == 0 {
        println!("Nothing to top up: '{entity}' has no bucket for '{resource}', and a dripping limit starts full");
    } else {
        let granted: Vec<String> = outcome.amounts.iter().map(|(k, v)| format!("{k}: +{}", grouped(*v))).collect();
        println!("Topped up '{entity}' on '{resource}' ({}; {})", shards_text(outcome.shards), granted.join(", "));
    }
    let mut short = Vec::new();
    for (name, granted) in &outcome.amounts {
        // A recorded result naming a limit this call did not ask for: the reference's
        // `amounts[k]` raises KeyError after the summary line.
        let Some((_, wanted)) = amounts.iter().find(|(n, _)| n == name) else {
            return Err(fail(format!("'{name}'")));
        };
        if granted < wanted {
            short.push(name.as_str());
        }
    }
    if !short.is_empty() {
        eprintln!(
            "Note: {} granted less than asked: a dripping limit is never topped up past its ceiling.",
            short.join(", ")
        );
    }
    Ok(())
}

/// What a call asks for: a reset of the named limits (`None`: every limit), or whole tokens
/// per limit.
enum Request {
    Reset(Option<Vec<String>>),
    TopUp(Vec<(String, i64)>),
}

/// The limits resolved for the pair: the first config level defining any, whole.
struct Config {
    limits: Vec<(LimitSpec, Option<&'static str>)>,
    /// From the entity's own config (`#CONFIG#{resource}` or `#CONFIG#_default_`): its
    /// buckets carry no `ttl`.
    entity_level: bool,
}

impl Config {
    fn names(&self) -> Vec<String> {
        self.limits.iter().map(|(l, _)| l.name.clone()).collect()
    }

    fn is_quota(&self, name: &str) -> bool {
        self.limits.iter().any(|(l, note)| l.name == name && *note == Some(QUOTA_NOTE))
    }

    /// The first limit this CLI does not plan (a quota or a scheduled limit).
    fn unsupported(&self) -> Option<String> {
        self.limits.iter().find(|(_, note)| note.is_some()).map(|(l, note)| {
            let what = if *note == Some(QUOTA_NOTE) { "a quota" } else { "a scheduled limit" };
            format!("'{}' is {what}", l.name)
        })
    }

    /// The `ttl` the writes stamp (`Repository._operation_ttl` for dripping limits).
    fn ttl(&self, now: i64) -> BucketTtl {
        if self.entity_level {
            return BucketTtl::Remove;
        }
        let horizons: Vec<f64> = self
            .limits
            .iter()
            .map(|(l, _)| {
                let milli = |v: u64| i64::try_from(v).unwrap_or(i64::MAX).saturating_mul(1000);
                zael_table::recovery_secs(&zael_core::bucket::BucketLimit::from_table(
                    milli(l.capacity),
                    milli(l.refill_amount),
                    milli(l.refill_period_seconds),
                ))
            })
            .collect();
        BucketTtl::Set(zael_table::ttl_epoch(zael_core::bucket::EpochMillis(now), &horizons))
    }
}

fn refusal(what: &str) -> String {
    format!(
        "quotas, duration windows and schedules are not supported by this CLI ({what}); use the Python zae-limiter CLI for this bucket"
    )
}

/// One reset or top-up of (entity, resource).
struct Call<'a> {
    repo: &'a Repo,
    ns: &'a str,
    entity: &'a str,
    resource: &'a str,
    key: Option<&'a str>,
    kind: Kind,
}

impl<'a> Call<'a> {
    fn new(repo: &'a Repo, ns: &'a str, entity: &'a str, resource: &'a str, key: Option<&'a str>, kind: Kind) -> Self {
        Call { repo, ns, entity, resource, key, kind }
    }

    async fn operate(&self, request: Request) -> std::result::Result<Outcome, String> {
        let config = self.resolve().await?;
        if config.limits.is_empty() {
            return Err(format!("Invalid resource: no limits are configured for entity '{}'", self.entity));
        }
        let configured = config.names();
        let operation = match request {
            Request::Reset(None) => Operation::Reset(configured.clone()),
            Request::Reset(Some(names)) => Operation::Reset(names),
            Request::TopUp(amounts) => Operation::TopUp(amounts),
        };
        let named: Vec<&String> = match &operation {
            Operation::Reset(names) => names.iter().collect(),
            Operation::TopUp(amounts) => amounts.iter().map(|(n, _)| n).collect(),
        };
        let unknown: BTreeSet<&str> = named.iter().filter(|n| !configured.contains(n)).map(|n| n.as_str()).collect();
        if !unknown.is_empty() {
            let sorted: BTreeSet<&str> = configured.iter().map(String::as_str).collect();
            return Err(format!(
                "Invalid limit: not a limit configured for '{}' on '{}' (configured: {})",
                self.entity,
                self.resource,
                sorted.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let meta = self.repo.get(&keys::pk_entity(self.ns, self.entity), keys::SK_META).await.map_err(text)?;
        let incarnation = bucket_items::incarnation(meta.as_ref());
        let id = self.key.map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned);
        if self.key.is_some()
            && let Some(recorded) = self.recorded(&id, &incarnation).await?
        {
            return Ok(recorded.outcome);
        }
        // A nonce per call (never the key): only a record this call wrote is its own.
        let token: String = rand::rng().random::<[u8; 12]>().iter().map(|b| format!("{b:02x}")).collect();
        let spec = RecordSpec {
            ns: self.ns,
            entity: self.entity,
            resource: self.resource,
            id: &id,
            kind: self.kind,
            writer: &token,
            incarnation: &incarnation,
        };
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // A failed write may have landed: its record says so.
                if let Some(recorded) = self.recorded(&id, &incarnation).await? {
                    return Ok(recorded.outcome);
                }
                let jitter = rand::rng().random_range(0.0..RETRY_BASE_DELAY_S * f64::from(1u32 << attempt));
                tokio::time::sleep(std::time::Duration::from_secs_f64(jitter)).await;
            }
            let now = now_ms();
            let shards = self.read_shards().await?;
            let (outcome, mut items) = if shards.is_empty() {
                let outcome = Outcome { shards: 0, amounts: self.nothing(&operation, &config)? };
                if self.key.is_none() {
                    return Ok(outcome);
                }
                // A keyed call that writes nothing still records itself, result 0.
                (outcome, Vec::new())
            } else {
                if let Some(what) = config
                    .unsupported()
                    .or_else(|| shards.iter().find_map(|(_, u)| u.clone()).map(|u| format!("the bucket carries {u}")))
                {
                    return Err(refusal(&what));
                }
                let reads: Vec<ShardRead> = shards.into_iter().map(|(r, _)| r).collect();
                let top = reads.iter().map(|r| r.shard_count).max().unwrap_or(1);
                let lagging: Vec<i64> = reads.iter().filter(|r| r.shard_count < top).map(|r| r.shard_id).collect();
                if !lagging.is_empty() {
                    // Plan at the highest stored count: raise the lagging shards, read again.
                    for shard in lagging {
                        self.raise_shard_count(shard, top).await?;
                    }
                    continue;
                }
                let plan = bucket_plan::plan(&operation, &configured, &reads, now)?;
                let ttl = config.ttl(now);
                let updates = plan
                    .writes
                    .iter()
                    .map(|w| {
                        bucket_items::shard_update(&self.repo.table, self.ns, self.entity, self.resource, w, ttl)
                            .map(|u| TransactWriteItem::builder().update(u).build())
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                (Outcome { shards: plan.writes.len() as i64, amounts: plan.amounts }, updates)
            };
            let record = bucket_items::record_put(&self.repo.table, &spec, &outcome, now)?;
            items.push(TransactWriteItem::builder().put(record).build());
            items.push(TransactWriteItem::builder().put(self.audit(&outcome).await?).build());
            let written = self
                .repo
                .db
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(format!("{token}-{attempt}"))
                .send()
                .await;
            match written {
                Ok(_) => return Ok(outcome),
                Err(e) if retryable(&e) => continue,
                Err(e) => {
                    return match self.landed_by(&id, &incarnation, &token).await {
                        Some(mine) => Ok(mine),
                        None => Err(describe(&e)),
                    };
                }
            }
        }
        if let Some(recorded) = self.recorded(&id, &incarnation).await? {
            return Ok(recorded.outcome);
        }
        let verb = match self.kind {
            Kind::Reset => "reset",
            Kind::TopUp => "top up",
        };
        Err(format!(
            "Could not {verb} the bucket: it kept changing through {MAX_ATTEMPTS} attempts [stack={}, entity={}, resource={}]",
            self.repo.table, self.entity, self.resource
        ))
    }

    /// The amounts of a call that finds no bucket: a reset restores nothing, and a dripping
    /// limit starts full, so a top-up grants nothing either. A quota top-up would create
    /// the bucket (refused here).
    fn nothing(&self, operation: &Operation, config: &Config) -> std::result::Result<BTreeMap<String, i64>, String> {
        match operation {
            Operation::Reset(names) => Ok(names.iter().map(|n| (n.clone(), 0)).collect()),
            Operation::TopUp(amounts) => {
                if let Some((name, _)) = amounts.iter().find(|(n, _)| config.is_quota(n)) {
                    return Err(refusal(&format!("'{name}' is a quota")));
                }
                Ok(amounts.iter().map(|(n, _)| (n.clone(), 0)).collect())
            }
        }
    }

    /// The four config levels in precedence order; the first with any limit wins whole.
    async fn resolve(&self) -> std::result::Result<Config, String> {
        let levels = keys::config_levels(self.ns, self.entity, self.resource);
        for (i, (pk, sk)) in levels.iter().enumerate() {
            if let Some(item) = self.repo.get(pk, sk).await.map_err(text)? {
                let limits = config_item::read_limits(&item);
                if !limits.is_empty() {
                    return Ok(Config { limits, entity_level: i < 2 });
                }
            }
        }
        Ok(Config { limits: Vec::new(), entity_level: false })
    }

    /// Every shard of the bucket, read by key (strongly consistent), with what it carries
    /// that this CLI does not plan. GSI3 is eventually consistent, so shard 0 and every slot
    /// below the highest stored `shard_count` are read by key too.
    async fn read_shards(&self) -> std::result::Result<Vec<(ShardRead, Option<String>)>, String> {
        let scope = crate::stamps::Scope::Entity { entity: self.entity, resource: self.resource };
        let found = crate::stamps::buckets(self.repo, self.ns, &scope).await.map_err(text)?;
        let mut pending: BTreeSet<i64> = found.iter().filter_map(|(pk, _, _)| bucket_items::shard_of(pk)).collect();
        pending.insert(0);
        let mut raw: BTreeMap<i64, Item> = BTreeMap::new();
        let mut probed = BTreeSet::new();
        while !pending.is_empty() {
            for &shard in &pending {
                let pk = keys::pk_bucket(self.ns, self.entity, self.resource, shard);
                if let Some(item) = self.repo.get(&pk, keys::SK_STATE).await.map_err(text)? {
                    raw.insert(shard, item);
                }
            }
            probed.append(&mut pending);
            let top = raw.values().map(bucket_items::stored_shard_count).max().unwrap_or(1);
            pending = (0..top).filter(|s| !raw.contains_key(s) && !probed.contains(s)).collect();
        }
        raw.iter().map(|(&shard, item)| bucket_items::shard_read(shard, item)).collect()
    }

    /// Raises a lagging shard's `shard_count` (a no-op when it is already there).
    async fn raise_shard_count(&self, shard: i64, to: i64) -> std::result::Result<(), String> {
        let raised = self
            .repo
            .db
            .update_item()
            .table_name(&self.repo.table)
            .key("PK", config_item::s(keys::pk_bucket(self.ns, self.entity, self.resource, shard)))
            .key("SK", config_item::s(keys::SK_STATE))
            .update_expression("SET #qsc = :qnew")
            .condition_expression("#qsc < :qnew")
            .expression_attribute_names("#qsc", "shard_count")
            .expression_attribute_values(":qnew", config_item::n(to))
            .send()
            .await;
        match raised {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(describe(&e)),
        }
    }

    /// This operation's record, if it landed (for this incarnation of the entity).
    async fn recorded(
        &self,
        id: &str,
        incarnation: &str,
    ) -> std::result::Result<Option<bucket_items::Recorded>, String> {
        let (pk, sk) = bucket_items::record_key(self.ns, self.entity, self.resource, id);
        let item = self.repo.get(&pk, &sk).await.map_err(text)?;
        bucket_items::recorded(item.as_ref(), self.kind, incarnation)
    }

    /// This call's own recorded outcome after an error that is not a lost race.
    async fn landed_by(&self, id: &str, incarnation: &str, token: &str) -> Option<Outcome> {
        match self.recorded(id, incarnation).await {
            Ok(Some(r)) if r.writer.as_deref() == Some(token) => Some(r.outcome),
            _ => None,
        }
    }

    /// The audit event's `Put`, in the operation's transaction.
    async fn audit(&self, outcome: &Outcome) -> std::result::Result<Put, String> {
        let item = self
            .repo
            .audit_item(self.ns, self.entity, self.kind.audit_action(), Some(self.resource), outcome.audit_details())
            .await
            .map_err(text)?;
        Put::builder().table_name(&self.repo.table).set_item(Some(item)).build().map_err(|e| e.to_string())
    }
}

fn text(f: crate::Failure) -> String {
    f.to_string()
}

/// Whether a failed transaction lost a race (re-read and re-plan) rather than failed.
fn retryable<R>(e: &SdkError<TransactWriteItemsError, R>) -> bool {
    let Some(service) = e.as_service_error() else { return false };
    if !RETRY_CODES.contains(&service.code().unwrap_or_default()) {
        return false;
    }
    match service {
        TransactWriteItemsError::TransactionCanceledException(c) => {
            !c.cancellation_reasons().iter().any(|r| r.code().is_some_and(|code| PERMANENT_REASONS.contains(&code)))
        }
        _ => true,
    }
}

/// The library's checks of the call, in its order: the entity id, the resource, the key.
fn check_call(entity: &str, resource: &str, key: Option<&str>) -> std::result::Result<(), String> {
    let entity_pattern =
        "must start with alphanumeric and contain only alphanumeric, underscore, hyphen, dot, colon, or @ characters";
    if let Some(reason) = name_problem(entity, 256, zael_core::keys::is_valid_entity_id, entity_pattern) {
        return Err(format!("Invalid entity_id: {reason}"));
    }
    let resource_pattern =
        "must start with a letter and contain only alphanumeric, underscore, hyphen, dot, slash, or colon characters";
    if let Some(reason) = name_problem(resource, 64, zael_core::keys::is_valid_resource, resource_pattern) {
        return Err(format!("Invalid resource: {reason}"));
    }
    if key.is_some_and(|k| !valid_key(k)) {
        return Err(
            "Invalid idempotency_key: must be 1-64 characters of letters, digits, '.', '_', ':' or '-'".to_owned()
        );
    }
    Ok(())
}

/// An idempotency key: 1-64 of `[A-Za-z0-9._:-]` (it becomes the sort key `#OP#{key}`).
fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// The library's identifier checks in their order (empty, too long, a `#`, the pattern), or
/// `None` when `value` is valid.
fn name_problem(value: &str, max: usize, valid: fn(&str) -> bool, pattern: &str) -> Option<String> {
    if value.is_empty() {
        Some("cannot be empty".to_owned())
    } else if value.chars().count() > max {
        Some(format!("exceeds maximum length of {max}"))
    } else if value.contains('#') {
        Some("cannot contain '#' (reserved delimiter)".to_owned())
    } else if !valid(value) {
        Some(pattern.to_owned())
    } else {
        None
    }
}

/// Parses the `-a LIMIT:N` values in order, summing repeated names: `N` may contain `,` and
/// `_`, and is read as Python's `int()` reads it. `Err` is click's message (a usage error).
pub fn parse_additions(values: &[String]) -> std::result::Result<Vec<(String, i128)>, String> {
    let mut out: Vec<(String, i128)> = Vec::new();
    for value in values {
        let (name, amount) = match value.rsplit_once(':') {
            Some((name, amount)) if !name.is_empty() => (name, amount),
            _ => return Err(format!("'{value}' is not LIMIT:N (e.g. 'session:5000')")),
        };
        let tokens = whole_number(&amount.replace([',', '_'], ""))
            .ok_or_else(|| format!("'{amount}' in '{value}' is not a whole number"))?;
        if tokens <= 0 {
            return Err(format!("'{value}': the amount must be positive"));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total = total.saturating_add(tokens),
            None => out.push((name.to_owned(), tokens)),
        }
    }
    Ok(out)
}

/// Python's `int()` of a value without `,`/`_`; a value beyond `i128` saturates (Python's
/// integers have no bound, and every such amount is refused later anyway).
fn whole_number(text: &str) -> Option<i128> {
    if let Ok(n) = limit_spec::python_int(text) {
        return Some(n);
    }
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(if negative {
        i128::MIN
    } else {
        i128::MAX
    })
}

/// The library's bound on each amount (`schedule.MAX_TOKENS`), checked after the call's ids.
fn check_amounts(asked: &[(String, i128)]) -> std::result::Result<Vec<(String, i64)>, String> {
    asked
        .iter()
        .map(|(name, amount)| match i64::try_from(*amount) {
            Ok(n) if n <= MAX_TOKENS as i64 => Ok((name.clone(), n)),
            _ => Err(format!("Invalid amounts: each amount must be at most {MAX_TOKENS}")),
        })
        .collect()
}

/// click's answer to a bad parameter raised by the command: usage, hint, message.
fn bad_parameter(message: &str) -> String {
    format!(
        "Usage: zae-limiter entity top-up [OPTIONS] ENTITY_ID\nTry 'zae-limiter entity top-up --help' for help.\n\nError: Invalid value: {message}"
    )
}

/// Names once each, in their first order (`dict.fromkeys`).
fn unique(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// `1 shard` / `N shards`.
fn shards_text(count: i64) -> String {
    if count == 1 { "1 shard".to_owned() } else { format!("{count} shards") }
}

/// Python's `f"{v:,}"`: `1,000`, `-5`.
fn grouped(v: i64) -> String {
    format!("{}{}", if v < 0 { "-" } else { "" }, thousands(v.unsigned_abs()))
}

/// Python's `f"{v:+,}"`: `+1,000`, `+0`, `-5`.
fn signed(v: i64) -> String {
    if v < 0 { grouped(v) } else { format!("+{}", grouped(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn additions_sum_repeated_names_and_read_python_integers() {
        let got = parse_additions(&strings(&["tpm:300", "rpm:1_000", "tpm:1,000", "a:b: +7 "])).unwrap();
        assert_eq!(got, vec![("tpm".into(), 1300), ("rpm".into(), 1000), ("a:b".into(), 7)]);
        let huge = parse_additions(&strings(&["rpm:1000000000000000000000000000000000000000000"])).unwrap();
        assert_eq!(huge[0].1, i128::MAX);
        assert_eq!(check_amounts(&huge).unwrap_err(), "Invalid amounts: each amount must be at most 1000000000000000");
        assert_eq!(check_amounts(&[("rpm".into(), 1_000_000_000_000_000)]).unwrap()[0].1, 1_000_000_000_000_000);
    }

    #[test]
    fn malformed_additions_have_the_reference_messages() {
        for (value, message) in [
            ("rpm5", "'rpm5' is not LIMIT:N (e.g. 'session:5000')"),
            (":5", "':5' is not LIMIT:N (e.g. 'session:5000')"),
            ("rpm:x", "'x' in 'rpm:x' is not a whole number"),
            ("rpm:", "'' in 'rpm:' is not a whole number"),
            ("rpm:1.5", "'1.5' in 'rpm:1.5' is not a whole number"),
            ("rpm:,", "',' in 'rpm:,' is not a whole number"),
            ("rpm:0", "'rpm:0': the amount must be positive"),
            ("rpm:-5", "'rpm:-5': the amount must be positive"),
            ("rpm:-0", "'rpm:-0': the amount must be positive"),
        ] {
            assert_eq!(parse_additions(&strings(&[value])).unwrap_err(), message, "{value}");
        }
        assert_eq!(
            bad_parameter("m"),
            "Usage: zae-limiter entity top-up [OPTIONS] ENTITY_ID\nTry 'zae-limiter entity top-up --help' for help.\n\nError: Invalid value: m"
        );
    }

    #[test]
    fn call_checks_in_the_library_order() {
        assert_eq!(check_call("key-1", "gpt-4", Some("k.1:_-")), Ok(()));
        assert_eq!(check_call("", "gpt-4", None).unwrap_err(), "Invalid entity_id: cannot be empty");
        assert_eq!(
            check_call("a#b", "bad res", None).unwrap_err(),
            "Invalid entity_id: cannot contain '#' (reserved delimiter)"
        );
        assert!(
            check_call("_x", "gpt-4", None).unwrap_err().starts_with("Invalid entity_id: must start with alphanumeric")
        );
        assert_eq!(
            check_call("k", &"r".repeat(65), None).unwrap_err(),
            "Invalid resource: exceeds maximum length of 64"
        );
        assert!(check_call("k", "1x", None).unwrap_err().starts_with("Invalid resource: must start with a letter"));
        for key in ["", "a b", "a#b", &"k".repeat(65)] {
            assert_eq!(
                check_call("k", "r", Some(key)).unwrap_err(),
                "Invalid idempotency_key: must be 1-64 characters of letters, digits, '.', '_', ':' or '-'"
            );
        }
    }

    #[test]
    fn summaries() {
        assert_eq!((signed(1000), signed(0), signed(-5)), ("+1,000".into(), "+0".into(), "-5".into()));
        assert_eq!((shards_text(1), shards_text(4)), ("1 shard".into(), "4 shards".into()));
        assert_eq!(unique(&strings(&["b", "a", "b"])), strings(&["b", "a"]));
    }
}

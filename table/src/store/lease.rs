//! Leases of the native API on the table (`zael_core::lease`): the acquire that opens one, the
//! changes (adjust, release, rollback), and balances without a write.
//!
//! A lease's state is the operation record `{ns}/BUCKET#{entity}#{resource}#0`
//! `#OP#lease:{nonce}` (beside the reset/top-up records of the library, in the entity's
//! shard-0 partition), written only in the same TransactWriteItems as the bucket updates it
//! accounts for:
//!
//! * an idempotent acquire (a request id) commits its debits and the record (holding the
//!   lease) together, through the slow path; a record already there and unexpired answers the
//!   lease it holds, and nothing is charged;
//! * a change reads the record and the lease's buckets (one consistent BatchGetItem), decides
//!   with `LeaseState::verdict`, then commits the bucket updates with the record's new state,
//!   conditioned on the state read. The bucket updates are the library's adjust writes
//!   (`build_composite_adjust`): `ADD b_{n}_tk -delta, b_{n}_tc +delta` on an existing item; a
//!   credit is conditioned on staying at or below the shard's ceiling (pinned on the `cp` and
//!   `shard_count` it was computed from) and, when that fails, re-sent with `SET vu = 0`, which
//!   sends the next acquire to the slow path, whose refill clamps the balance to the ceiling.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update as TxUpdate};
use std::collections::HashMap;
use std::sync::Arc;
use zael_core::bucket::EpochMillis;
use zael_core::lease::{BucketDeltas, Lease, LeaseChange, LeaseEnd, LeaseState, Verdict};
use zael_core::store::{EntityOutcome, LeaseChanged, LeaseOpened, LeaseRequest, LimitReport, StoreError};

use super::entity::{Level, Resolved, Side, Slow, StoredLimit, bucket_read, tx_update};
use super::expr::Ex;
use super::request::{parse, unavailable};
use super::write::{Credit, Delta};
use super::{BucketId, Inner};
use crate::db::{DbError, Transact};
use crate::item::{BucketImage, Item, n, s};
use crate::keys;
use zael_core::acquire::{self, Params};

/// Attempts of a lease change that keeps losing races.
const ATTEMPTS: usize = 5;
/// How long a record outlives its lease (then TTL removes it).
const RECORD_GRACE_SECS: i64 = 86_400;

/// Builds a record's transaction item from the acquire's reports.
type BuildRecord = dyn Fn(&[LimitReport]) -> Result<TransactWriteItem, StoreError> + Send + Sync;

/// An idempotent acquire's record: its key, and its `Put` given the acquire's reports.
pub(crate) struct RecordWrite {
    key: (String, String),
    build: Box<BuildRecord>,
}

impl RecordWrite {
    pub(crate) fn item(&self, reports: &[LimitReport]) -> Result<TransactWriteItem, StoreError> {
        (self.build)(reports)
    }
}

/// What a state write is conditioned on.
#[derive(Copy, Clone)]
enum Expected<'a> {
    /// Read: no record.
    Absent,
    /// Read: this record.
    Stored(&'a Record),
    /// Not read: the state the lease id implies (open, at its `seq`).
    AsTheLeaseSays,
}

/// A lease record as read.
struct Record {
    state: LeaseState,
    lease: Option<Lease>,
    expires_at: i64,
}

fn record_key(ns: &str, entity: &str, resource: &str, nonce: &str) -> (String, String) {
    (keys::pk_bucket(ns, entity, resource, 0), format!("#OP#lease:{nonce}"))
}

fn parse_record(item: &Item) -> Record {
    let text = |a: &str| match item.get(a) {
        Some(AttributeValue::S(v)) => Some(v.as_str()),
        _ => None,
    };
    let number = |a: &str| match item.get(a) {
        Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
        _ => None,
    };
    Record {
        state: LeaseState {
            seq: number("seq").and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            ended: text("ended").and_then(LeaseEnd::parse),
            last_change: text("last_change").map(str::to_owned),
        },
        lease: text("lease").and_then(|l| serde_json::from_str(l).ok()),
        expires_at: number("expires_at").unwrap_or(0),
    }
}

/// The attributes every lease record carries.
fn record_attrs(ns: &str, lease: &Lease, sk: &str) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("operation", s("lease")),
        ("entity_id", s(&lease.entity)),
        ("resource", s(&lease.resource)),
        ("expires_at", n(lease.expires_at)),
        ("ttl", n(lease.expires_at.div_euclid(1000) + RECORD_GRACE_SECS)),
        ("GSI4PK", s(ns)),
        ("GSI4SK", s(format!("OP#{}#{}#{}", lease.entity, lease.resource, sk.trim_start_matches("#OP#")))),
    ]
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("building a lease write: {e}"))
}

impl Inner {
    /// The lease a record holds when it exists and its lease has not expired at `now`.
    pub(super) async fn live_record(
        &self,
        record: &RecordWrite,
        now: EpochMillis,
    ) -> Result<Option<Lease>, StoreError> {
        let (pk, sk) = &record.key;
        let item = self.db.get(pk, sk, true).await.map_err(unavailable)?;
        Ok(item.map(|i| parse_record(&i)).filter(|r| r.expires_at > now.0).and_then(|r| r.lease))
    }

    /// The record write of an idempotent acquire: a `Put` of the lease, conditioned on no
    /// unexpired record.
    fn record_write(&self, id: &BucketId, request: &LeaseRequest, now: EpochMillis) -> RecordWrite {
        let key = record_key(&id.ns, &id.entity, &id.resource, &request.nonce);
        let (table, ns, request, (pk, sk)) = (self.db.table.clone(), id.ns.clone(), request.clone(), key.clone());
        let build = move |reports: &[LimitReport]| {
            let lease = request.lease(reports);
            let mut item = Item::from([
                ("PK".to_owned(), s(&pk)),
                ("SK".to_owned(), s(&sk)),
                ("seq".to_owned(), n(0)),
                ("lease".to_owned(), s(serde_json::to_string(&lease).expect("a lease serialises"))),
            ]);
            item.extend(record_attrs(&ns, &lease, &sk).into_iter().map(|(k, v)| (k.to_owned(), v)));
            let put = Put::builder()
                .table_name(&table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(PK) OR expires_at <= :now")
                .expression_attribute_values(":now", n(now.0))
                .build()
                .map_err(build_error)?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        RecordWrite { key, build: Box::new(build) }
    }

    /// An acquire that opens a lease (see the module docs).
    pub(super) async fn open_lease(
        self: &Arc<Self>,
        request: &LeaseRequest,
        now: EpochMillis,
    ) -> Result<LeaseOpened, StoreError> {
        let acquire = &request.acquire;
        if !keys::is_valid_entity(&acquire.entity) || !keys::is_valid_resource(&acquire.resource) {
            return Err(StoreError::Refused(format!(
                "entity '{}' on resource '{}' is outside the zae-limiter identifier rules",
                acquire.entity, acquire.resource
            )));
        }
        let ns = self.namespace_id(&acquire.namespace).await?;
        self.check_version().await?;
        let id = BucketId { ns, entity: acquire.entity.clone(), resource: acquire.resource.clone() };
        let limits = match &request.overrides {
            Some(overrides) => Arc::new(Resolved {
                limits: overrides
                    .iter()
                    .map(|o| StoredLimit { name: o.name.clone(), limit: o.limit, soft: false })
                    .collect(),
                level: Some(Level::EntityResource),
                unsupported: None,
            }),
            None => self.resolve_limits(&id).await?,
        };
        if let Some(what) = &limits.unsupported {
            return Err(self.unsupported_entity(&id, what));
        }
        if limits.limits.is_empty() {
            return Ok(LeaseOpened::NoLimits);
        }
        let mut child = Side::new(id, limits, &acquire.consume);
        child.overridden = request.overrides.is_some();
        let outcome = if request.idempotent {
            let record = self.record_write(&child.id, request, now);
            let (shard, _) = self.select_shard(&child.id, &[]);
            match Box::pin(self.slow_entity_recorded(&child, &acquire.consume, shard, now, Some(&record))).await? {
                Slow::Decided(outcome) => outcome,
                Slow::Replay(lease) => return Ok(LeaseOpened::Replayed { lease }),
            }
        } else {
            self.decide_entity(child, acquire, now).await?
        };
        Ok(match outcome {
            EntityOutcome::Admitted(reports) => LeaseOpened::Admitted { lease: request.lease(&reports), reports },
            EntityOutcome::Rejected(reports) => LeaseOpened::Rejected(reports),
            EntityOutcome::Disabled { entity } => LeaseOpened::Disabled { entity },
            EntityOutcome::NoLimits => LeaseOpened::NoLimits,
        })
    }

    /// A change to a lease (see the module docs).
    pub(super) async fn change_lease(
        self: &Arc<Self>,
        lease: &Lease,
        change: &LeaseChange,
        now: EpochMillis,
    ) -> Result<LeaseChanged, StoreError> {
        if let Some(message) = lease.expiry(now) {
            return Ok(LeaseChanged::Conflict(message));
        }
        let ns = self.namespace_id(&lease.namespace).await?;
        self.check_version().await?;
        let key = record_key(&ns, &lease.entity, &lease.resource, &lease.nonce);
        let writes = lease.writes(change);
        let bucket_keys: Vec<(String, String)> = writes
            .iter()
            .map(|w| (keys::pk_bucket(&ns, &w.entity, &lease.resource, w.shard), keys::SK_STATE.to_owned()))
            .collect();
        let mut wanted = vec![key.clone()];
        wanted.extend(bucket_keys.iter().cloned());
        // Shard images remembered short must not hide what this change gives back.
        let forget = || {
            for w in &writes {
                let id = BucketId { ns: ns.clone(), entity: w.entity.clone(), resource: lease.resource.clone() };
                self.forget_short(&id, w.shard);
            }
        };
        // The usual case in one request: the bucket writes and the state the lease id implies,
        // unread; any failed condition (a retry, a stale id, a ceiling, a gone bucket) is
        // decided on a read below.
        if let Some(items) = self.unread_change(&ns, &key, lease, change, &writes)? {
            forget();
            match self.db.transact(items).await {
                Ok(Transact::Done) => {
                    forget();
                    return Ok(LeaseChanged::Applied);
                }
                Ok(Transact::Canceled(_)) | Err(DbError::Conflict) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        let mut trim = vec![false; writes.len()];
        for _ in 0..ATTEMPTS {
            let found = self.db.batch_get(&wanted, true).await.map_err(unavailable)?;
            let stored = found.get(&key).map(parse_record);
            let state = stored.as_ref().map(|r| r.state.clone()).unwrap_or_default();
            match state.verdict(lease, change) {
                Verdict::Conflict(message) => return Ok(LeaseChanged::Conflict(message)),
                Verdict::Done => return Ok(LeaseChanged::AlreadyApplied),
                Verdict::Apply => {}
            }
            let mut items = Vec::with_capacity(writes.len() + 1);
            let mut positions = Vec::with_capacity(writes.len());
            for (i, (w, bucket)) in writes.iter().zip(&bucket_keys).enumerate() {
                // A bucket that is gone (TTL, a delete) has nothing to adjust.
                let Some(item) = found.get(bucket) else { continue };
                let image = parse(item)?;
                let pin = |_: usize, name: &str| image.limit(name).map(|l| (l.limit.capacity.0, image.shard_count));
                let Some(req) = adjust_write(bucket.0.clone(), w, trim[i], pin) else { continue };
                let update = tx_update(&self.db.table, req).map_err(build_error)?;
                items.push(TransactWriteItem::builder().update(update).build());
                positions.push(i);
            }
            let expected = stored.as_ref().map_or(Expected::Absent, Expected::Stored);
            items.push(self.state_write(&key, &ns, lease, change, expected)?);
            forget();
            match self.db.transact(items).await {
                Ok(Transact::Done) => {
                    forget();
                    return Ok(LeaseChanged::Applied);
                }
                Ok(Transact::Canceled(codes)) => {
                    for (code, i) in codes.iter().zip(&positions) {
                        if code == "ConditionalCheckFailed" {
                            trim[*i] = true;
                        }
                    }
                    tracing::debug!(?codes, "lease change cancelled; deciding again");
                }
                Err(DbError::Conflict) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(format!("lease of '{}' on '{}' stayed contended", lease.entity, lease.resource)))
    }

    /// The transaction of a change without a read, or `None` when a credit's ceiling is not
    /// in the lease id (a lease from before the id carried it).
    fn unread_change(
        &self,
        ns: &str,
        key: &(String, String),
        lease: &Lease,
        change: &LeaseChange,
        writes: &[BucketDeltas],
    ) -> Result<Option<Vec<TransactWriteItem>>, StoreError> {
        let mut items = Vec::with_capacity(writes.len() + 1);
        for w in writes {
            let credits_unpinned =
                w.deltas.iter().zip(&w.pins).any(|((_, d), (cp, sc))| *d < 0 && !w.bypass && (*cp <= 0 || *sc <= 0));
            if credits_unpinned {
                return Ok(None);
            }
            let pk = keys::pk_bucket(ns, &w.entity, &lease.resource, w.shard);
            let Some(req) = adjust_write(pk, w, false, |i, _| Some(w.pins[i])) else { continue };
            let update = tx_update(&self.db.table, req).map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        items.push(self.state_write(key, ns, lease, change, Expected::AsTheLeaseSays)?);
        Ok(Some(items))
    }

    /// The record's new state, conditioned on the state read.
    fn state_write(
        &self,
        (pk, sk): &(String, String),
        ns: &str,
        lease: &Lease,
        change: &LeaseChange,
        expected: Expected<'_>,
    ) -> Result<TransactWriteItem, StoreError> {
        let next = LeaseState::after(lease, change);
        let mut ex = Ex::default();
        let mut set = Vec::new();
        for (i, (attr, value)) in record_attrs(ns, lease, sk).into_iter().enumerate() {
            ex.name(&format!("#a{i}"), attr).val(&format!(":a{i}"), value);
            set.push(format!("#a{i} = :a{i}"));
        }
        ex.name("#seq", "seq").name("#lc", "last_change");
        ex.num(":seq", i64::from(next.seq)).val(":lc", s(next.last_change.clone().unwrap_or_default()));
        set.push("#seq = :seq".into());
        set.push("#lc = :lc".into());
        if next.ended.is_some() || !matches!(expected, Expected::Absent) {
            ex.name("#end", "ended");
        }
        if let Some(end) = next.ended {
            ex.val(":end", s(end.as_str()));
            set.push("#end = :end".into());
        }
        let open_at = |ex: &mut Ex, seq: u32| {
            ex.num(":seqr", i64::from(seq));
            "(#seq = :seqr AND attribute_not_exists(#end))".to_owned()
        };
        let condition = match expected {
            Expected::Absent => "attribute_not_exists(PK)".to_owned(),
            Expected::Stored(r) => open_at(&mut ex, r.state.seq),
            // Not read: the state the lease id implies (a lease at `seq` 0 may have no record).
            Expected::AsTheLeaseSays if lease.seq == 0 => {
                format!("(attribute_not_exists(PK) OR {})", open_at(&mut ex, 0))
            }
            Expected::AsTheLeaseSays => open_at(&mut ex, lease.seq),
        };
        let condition = vec![condition];
        let req = ex.req(pk.clone(), format!("SET {}", set.join(", ")), condition);
        let update = TxUpdate::builder()
            .table_name(&self.db.table)
            .set_key(Some(HashMap::from([("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))])))
            .update_expression(req.update)
            .set_condition_expression(req.condition)
            .set_expression_attribute_names(Some(req.names))
            .set_expression_attribute_values(Some(req.values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The balances of `(entity, resource)`, and of its parent's under cascade.
    pub(super) async fn available(
        self: &Arc<Self>,
        namespace: &str,
        entity: &str,
        resource: &str,
        now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        if !keys::is_valid_entity(entity) || !keys::is_valid_resource(resource) {
            return Err(StoreError::Refused(format!(
                "entity '{entity}' on resource '{resource}' is outside the zae-limiter identifier rules"
            )));
        }
        let ns = self.namespace_id(namespace).await?;
        self.check_version().await?;
        let id = BucketId { ns, entity: entity.to_owned(), resource: resource.to_owned() };
        let read = self.read_side(&id, 0).await?;
        let cascade_to =
            read.meta.as_ref().filter(|m| read.cascade_flag.unwrap_or(m.cascade)).and_then(|m| m.parent.clone());
        let mut reports = self.balances(&id, read.bucket, now).await?;
        if let Some(parent) = cascade_to {
            let pid = BucketId { ns: id.ns.clone(), entity: parent, resource: id.resource.clone() };
            let pread = self.read_side(&pid, 0).await?;
            reports.extend(self.balances(&pid, pread.bucket, now).await?);
        }
        Ok(reports)
    }

    /// Every resolved limit of one side, summed over its shards (`shard0` as read).
    async fn balances(
        self: &Arc<Self>,
        id: &BucketId,
        shard0: Option<BucketImage>,
        now: EpochMillis,
    ) -> Result<Vec<LimitReport>, StoreError> {
        let limits = self.resolve_limits(id).await?;
        if let Some(what) = &limits.unsupported {
            return Err(self.unsupported_entity(id, what));
        }
        let count = shard0.as_ref().map_or(1, |i| i.shard_count.max(1));
        let mut images = vec![shard0];
        if count > 1 {
            let others: Vec<(String, String)> = (1..count).map(|k| (id.pk(k), keys::SK_STATE.to_owned())).collect();
            let mut found = self.db.batch_get(&others, true).await.map_err(unavailable)?;
            for key in &others {
                images.push(found.remove(key).map(|i| parse(&i)).transpose()?);
            }
        }
        let reads = images.iter().map(|image| image.as_ref().map(|i| bucket_read(i, now))).collect();
        let reports = acquire::balances(&id.entity, &limits.limits, reads, Params::Stored, now);
        Ok(reports)
    }
}

/// One bucket's adjust write (`build_composite_adjust`, [`Credit`]), or `None` when it has
/// nothing to write. `pin(i, name)`: the limit's stored `cp` and the bucket's `shard_count`,
/// the ceiling of a credit (`None`: the item has no such limit, skip it). `trim`: the credit's
/// ceiling condition failed once; send it with `SET vu = 0` instead.
fn adjust_write(
    pk: String,
    w: &BucketDeltas,
    trim: bool,
    pin: impl Fn(usize, &str) -> Option<(i64, i64)>,
) -> Option<crate::db::UpdateReq> {
    let limits = w
        .deltas
        .iter()
        .enumerate()
        .filter_map(|(i, (name, delta))| {
            let ceiling = pin(i, name)?;
            Some(Delta { name, tk: (!w.bypass).then_some(-delta), tc: Some(*delta), ceiling: Some(ceiling) })
        })
        .collect();
    Credit { limits, vu: None, trim }.render(pk)
}

//! The commit shapes of an entity acquire (§11.6): an UpdateItem for a single existing item
//! (refill of every limit under the `rf` lock, the debits, the owner and access stamps), else
//! one TransactWriteItems (creates with their owner's META ConditionCheck; child and parent
//! together); and the consumption-only retry when a race was lost.

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update as TxUpdate};
use std::collections::HashMap;
use zael_core::bucket::EpochMillis;
use zael_core::store::StoreError;

use super::super::planned;
use super::super::request::{parse, unavailable};
use super::super::write::{Consume, Owner};
use super::super::{BucketId, Inner};
use super::slow::{Meta, SidePlan};
use crate::db::{DbError, Transact, Update, UpdateReq};
use crate::item::{Item, NewBucket, NewLimit, n, new_bucket_item, s};
use crate::keys::{self, WCU};
use crate::plan;

impl Inner {
    /// Commits the plans, with `extra` in the same transaction when given (an idempotent
    /// lease's record); `false` when a condition failed (re-plan).
    pub(super) async fn commit(
        &self,
        plans: &[SidePlan<'_>],
        now: EpochMillis,
        extra: Option<TransactWriteItem>,
    ) -> Result<bool, StoreError> {
        if let [only] = plans
            && only.image.is_some()
            && extra.is_none()
        {
            let req = self.normal_update(only, now);
            return match self.db.update(req).await {
                Ok(Update::Done(item)) => {
                    self.learn_parent(&only.side.id, &parse(&item)?);
                    Ok(true)
                }
                Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => Ok(false),
                Err(e) => Err(unavailable(e)),
            };
        }
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(format!("building a commit: {e}"));
        let mut items = Vec::new();
        for p in plans {
            match &p.image {
                Some(_) => {
                    let update = tx_update(&self.db.table, self.normal_update(p, now)).map_err(build)?;
                    items.push(TransactWriteItem::builder().update(update).build());
                }
                None => items.extend(self.create_shard(&p.side.id, self.new_item(p, now), p.meta.as_ref())?),
            }
        }
        items.extend(extra);
        match self.db.transact(items).await {
            Ok(Transact::Done) => Ok(true),
            Ok(Transact::Canceled(codes)) => {
                tracing::debug!(?codes, "entity commit cancelled; re-planning");
                Ok(false)
            }
            Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Shape (a) of a new shard: the `Put` of `item` under `attribute_not_exists(PK)` and the
    /// ConditionCheck on its owner's META as read (`None`: absent), for one TransactWriteItems.
    pub(in super::super) fn create_shard(
        &self,
        id: &BucketId,
        item: Item,
        meta: Option<&Meta>,
    ) -> Result<[TransactWriteItem; 2], StoreError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(format!("building a create: {e}"));
        let put = Put::builder()
            .table_name(&self.db.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(build)?;
        let (condition, values) = meta_condition(meta);
        let check = ConditionCheck::builder()
            .table_name(&self.db.table)
            .set_key(Some(key(keys::pk_entity(&id.ns, &id.entity), keys::SK_META)))
            .condition_expression(condition)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .build()
            .map_err(build)?;
        Ok([TransactWriteItem::builder().put(put).build(), TransactWriteItem::builder().condition_check(check).build()])
    }

    /// Shape (b): refill every limit from its stored parameters, debit the requested ones,
    /// restamp the owner, under the `rf` lock (§11.6).
    fn normal_update(&self, p: &SidePlan<'_>, now: EpochMillis) -> UpdateReq {
        let image = p.image.as_ref().expect("an existing item");
        let mut write = planned::update(&p.plan, image, now, p.side.limits.ttl_applies(), false);
        write.cascade = Some(p.cascade);
        write.owner =
            p.meta.as_ref().map(|m| Owner { parent: m.parent.as_deref(), generation: m.pgen.zip(m.pinc.as_deref()) });
        write.render(p.side.id.pk(p.plan.shard))
    }

    /// Shape (a): the complete item of a new shard (§9.6) with its owner stamp.
    fn new_item(&self, p: &SidePlan<'_>, now: EpochMillis) -> Item {
        let id = &p.side.id;
        let limits: Vec<NewLimit<'_>> = p
            .plan
            .limits
            .iter()
            .filter(|l| l.name != WCU)
            .map(|l| NewLimit { name: &l.name, tk: l.after().0, limit: l.limit, tc: l.usage })
            .collect();
        let horizons: Vec<f64> = p.plan.limits.iter().map(|l| plan::recovery_secs(&l.limit)).collect();
        let ttl = p.side.limits.ttl_applies().then(|| plan::ttl_epoch(now, &horizons));
        let bucket = NewBucket {
            ns: &id.ns,
            entity: &id.entity,
            resource: &id.resource,
            shard: p.plan.shard,
            shard_count: p.plan.shard_count,
            rf: now.0,
            ttl,
        };
        let mut item = new_bucket_item(&bucket, &limits);
        item.insert("cascade".into(), AttributeValue::Bool(p.cascade));
        let deadline = keys::stamp_deadline(now.0);
        for l in p.plan.limits.iter().filter(|l| l.soft && l.name != WCU) {
            item.insert(keys::battr(&l.name, "soft"), n(deadline));
        }
        if p.plan.bypass {
            item.insert("bypass".into(), n(deadline));
        }
        if let Some(meta) = &p.meta {
            if let Some(parent) = &meta.parent {
                item.insert("parent_id".into(), s(parent));
            }
            if let Some(pgen) = meta.pgen {
                item.insert("pgen".into(), n(pgen));
            }
            if let Some(pinc) = &meta.pinc {
                item.insert("pinc".into(), s(pinc));
            }
        }
        item
    }

    /// Shape (c): the requested debits alone on every side, in one write; `false` when a
    /// balance is short without the refill or an item is missing.
    pub(super) async fn retry_consumption(
        &self,
        plans: &[SidePlan<'_>],
        now: EpochMillis,
        extra: Option<TransactWriteItem>,
    ) -> Result<bool, StoreError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(format!("building a retry: {e}"));
        let mut requests = Vec::new();
        for p in plans {
            let write = Consume { now: now.0, limits: planned::takes(&p.plan, false), under_bypass: false };
            requests.extend(write.render(p.side.id.pk(p.plan.shard)));
        }
        if requests.is_empty() && extra.is_none() {
            return Ok(true);
        }
        if requests.len() == 1 && extra.is_none() {
            let req = requests.pop().expect("one");
            return match self.db.update(req).await {
                Ok(Update::Done(_)) => Ok(true),
                Ok(Update::ConditionFailed(_)) | Err(DbError::Conflict) => Ok(false),
                Err(e) => Err(unavailable(e)),
            };
        }
        let mut items = Vec::with_capacity(requests.len());
        for req in requests {
            items.push(TransactWriteItem::builder().update(tx_update(&self.db.table, req).map_err(build)?).build());
        }
        items.extend(extra);
        match self.db.transact(items).await {
            Ok(Transact::Done) => Ok(true),
            Ok(Transact::Canceled(_)) | Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// An UpdateItem request as a transaction item on `(pk, #STATE)`.
pub(crate) fn tx_update(table: &str, req: UpdateReq) -> Result<TxUpdate, aws_sdk_dynamodb::error::BuildError> {
    TxUpdate::builder()
        .table_name(table)
        .set_key(Some(key(req.pk, keys::SK_STATE)))
        .update_expression(req.update)
        .set_condition_expression(req.condition)
        .set_expression_attribute_names((!req.names.is_empty()).then_some(req.names))
        .set_expression_attribute_values((!req.values.is_empty()).then_some(req.values))
        .build()
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))])
}

/// The create's check on the owner's META as read (§11.6 a).
fn meta_condition(meta: Option<&Meta>) -> (String, HashMap<String, AttributeValue>) {
    let Some(meta) = meta else { return ("attribute_not_exists(PK)".into(), HashMap::new()) };
    let mut values = HashMap::new();
    let pgen = match meta.pgen {
        Some(g) => {
            values.insert(":pgen".to_owned(), n(g));
            "pgen = :pgen".to_owned()
        }
        None => {
            values.insert(":pgen".to_owned(), n(0));
            "(attribute_not_exists(pgen) OR pgen = :pgen)".to_owned()
        }
    };
    let incarnation = meta.pinc.clone().or_else(|| meta.created_at.clone()).unwrap_or_else(|| "-".into());
    values.insert(":pinc".to_owned(), s(incarnation));
    let pinc = if meta.created_at.is_none() && meta.pinc.is_none() {
        "(pinc = :pinc OR (attribute_not_exists(pinc) AND (created_at = :pinc OR attribute_not_exists(created_at))))"
    } else {
        "(pinc = :pinc OR (attribute_not_exists(pinc) AND created_at = :pinc))"
    };
    (format!("attribute_exists(PK) AND {pgen} AND {pinc}"), values)
}

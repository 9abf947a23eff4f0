//! The slow path of an entity acquire (§11.5): one consistent BatchGetItem per side (its
//! access walk, META and bucket shard), a plan over every limit of each item, then the commit
//! of `commit.rs`, re-planned on fresh reads when it loses a race.

use aws_sdk_dynamodb::types::AttributeValue;
use std::sync::Arc;
use zael_core::acquire::{self, BucketRead, HeldLimit, Params, SideInput};
use zael_core::bucket::{BucketState, EpochMillis, Millitokens};
use zael_core::store::{EntityOutcome, LimitReport, StoreError};

use super::super::request::{parse, path, unavailable};
use super::super::{BucketId, Inner};
use super::Side;
use super::config::{Access, walk};
use crate::item::{BucketImage, Item};
use crate::keys::{self, WCU};

/// Re-plans of one acquire before it gives up as contended.
const ATTEMPTS: usize = 4;

/// The owner's META as read (§7), for the bucket's owner stamp and the create's check.
#[derive(Clone, Debug, Default)]
pub(in super::super) struct Meta {
    pub(in super::super) parent: Option<String>,
    pub(in super::super) cascade: bool,
    pub(super) pgen: Option<i64>,
    pub(super) pinc: Option<String>,
    pub(super) created_at: Option<String>,
}

fn parse_meta(item: &Item) -> Meta {
    let text = |a: &str| match item.get(a) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    Meta {
        parent: text("parent_id"),
        cascade: matches!(item.get("cascade"), Some(AttributeValue::Bool(true))),
        pgen: match item.get("pgen") {
            Some(AttributeValue::N(v)) => v.parse().ok(),
            _ => None,
        },
        pinc: text("pinc"),
        created_at: text("created_at"),
    }
}

/// What the slow path ends with.
pub(in super::super) enum Slow {
    Decided(EntityOutcome),
    /// An idempotent acquire's record exists and is live: its lease; nothing charged.
    Replay(zael_core::lease::Lease),
}

/// One side's reads.
pub(in super::super) struct Read {
    pub(in super::super) access: Access,
    pub(in super::super) cascade_flag: Option<bool>,
    pub(in super::super) meta: Option<Meta>,
    pub(in super::super) bucket: Option<BucketImage>,
}

/// One side's planned write: the engine's plan ([`zael_core::acquire`]) and what the
/// commit needs besides (the image for its pins, the owner's META, the cascade flag).
pub(super) struct SidePlan<'a> {
    pub(super) side: &'a Side,
    pub(super) image: Option<BucketImage>,
    pub(super) meta: Option<Meta>,
    pub(super) cascade: bool,
    pub(super) plan: acquire::SidePlan<'a>,
}

/// A bucket image as the engine reads it.
pub(in super::super) fn bucket_read(image: &BucketImage, now: EpochMillis) -> BucketRead<'_> {
    BucketRead {
        shard_count: image.shard_count,
        limits: image
            .limits
            .iter()
            .map(|l| HeldLimit {
                name: &l.name,
                limit: l.limit,
                state: BucketState { tokens: Millitokens(l.tk), refilled_at: EpochMillis(image.rf) },
                soft_stamp: l.soft.as_ref().is_some_and(|st| st.live(now.0)),
                whole: l.name == WCU,
            })
            .collect(),
    }
}

impl Inner {
    pub(in super::super) async fn slow_entity(
        self: &Arc<Self>,
        child: &Side,
        consume: &[(Arc<str>, Millitokens)],
        shard: i64,
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        // Boxed: the slow path's state is large, and a test hook nests a whole acquire in it.
        match Box::pin(self.slow_entity_recorded(child, consume, shard, now, None)).await? {
            Slow::Decided(outcome) => Ok(outcome),
            Slow::Replay(_) => Err(StoreError::Unavailable("an acquire without a record found one".into())),
        }
    }

    /// The slow path, committing `record` (an idempotent lease's operation record) in the
    /// same transaction as the debits; [`Slow::Replay`] when the record exists already.
    pub(in super::super) async fn slow_entity_recorded(
        self: &Arc<Self>,
        child: &Side,
        consume: &[(Arc<str>, Millitokens)],
        shard: i64,
        now: EpochMillis,
        record: Option<&crate::store::lease::RecordWrite>,
    ) -> Result<Slow, StoreError> {
        let mut shard = shard;
        for _ in 0..ATTEMPTS {
            if let Some(record) = record
                && let Some(lease) = self.live_record(record, now).await?
            {
                return Ok(Slow::Replay(lease));
            }
            let read = self.read_side(&child.id, shard).await?;
            if read.access == Access::Disabled {
                path("entity_disabled");
                return Ok(Slow::Decided(EntityOutcome::Disabled { entity: child.id.entity.clone() }));
            }
            let meta_cascade = read.meta.as_ref().is_some_and(|m| m.cascade);
            let parent_id = read.meta.as_ref().and_then(|m| m.parent.clone());
            let cascade = read.cascade_flag.unwrap_or(meta_cascade) && parent_id.is_some();
            let child_plan = self.plan_side(child, shard, read, cascade, now)?;
            let mut plans = vec![child_plan];
            let mut parent_side = None;
            if let (true, Some(parent)) = (cascade, &parent_id) {
                let side = self.parent_side(child, parent, consume).await?;
                if side.declared.is_empty() {
                    parent_side = None;
                } else {
                    let (pshard, _) = self.select_shard(&side.id, &[]);
                    let read = self.read_side(&side.id, pshard).await?;
                    if read.access == Access::Disabled {
                        path("entity_disabled");
                        return Ok(Slow::Decided(EntityOutcome::Disabled { entity: side.id.entity.clone() }));
                    }
                    parent_side = Some((side, pshard, read));
                }
            }
            let parent_plan;
            if let Some((side, pshard, read)) = &mut parent_side {
                let read = std::mem::replace(
                    read,
                    Read { access: Access::Enforced, cascade_flag: None, meta: None, bucket: None },
                );
                let own_cascade = read.meta.as_ref().is_some_and(|m| m.cascade && m.parent.is_some());
                parent_plan = Some(self.plan_side(side, *pshard, read, own_cascade, now)?);
            } else {
                parent_plan = None;
            }
            plans.extend(parent_plan);
            let engine: Vec<acquire::SidePlan<'_>> = plans.iter().map(|p| p.plan.clone()).collect();
            let judged = acquire::decide(&engine, now);
            let reports = judged.reports;
            if !judged.admitted {
                for (p, _) in plans.iter().zip(&judged.short_sides).filter(|(_, short)| **short) {
                    if let Some(image) = &p.image {
                        self.remember_short(&p.side.id, p.plan.shard, image);
                    }
                }
                path("entity_slow_reject");
                return Ok(Slow::Decided(EntityOutcome::Rejected(reports)));
            }
            let hook = self.before_commit.lock().expect("lock").clone();
            if let Some(hook) = hook {
                hook(child.id.pk(shard)).await;
            }
            let extra = record.map(|r| r.item(&reports)).transpose()?;
            let committed = match self.commit(&plans, now, extra.clone()).await? {
                true => true,
                // Lost a race (the rf lock, a concurrent create): consumption only (§11.6 c).
                false => self.retry_consumption(&plans, now, extra).await?,
            };
            if committed {
                path(if plans.len() > 1 { "entity_slow_cascade" } else { "entity_slow" });
                for p in &plans {
                    self.learn_count(&p.side.id, p.plan.shard_count);
                }
                self.remember_parent(&child.id, parent_id.filter(|_| cascade));
                return Ok(Slow::Decided(EntityOutcome::Admitted(reports)));
            }
            // Short without the refill, or the owner moved: decide again on fresh reads.
            path("entity_replan");
            if plans[0].image.is_none() {
                shard = shard.min(self.cached_count(&child.id) - 1).max(0);
            }
        }
        Err(StoreError::Unavailable(format!(
            "entity '{}' on resource '{}' stayed contended",
            child.id.entity, child.id.resource
        )))
    }

    /// One side alone through the slow pass (a reservation block: the blocks of a cascading
    /// entity and of its parent are taken apart): the side's read and plan, its commit, and the
    /// consumption-only retry, re-planned on a lost race. The reports when admitted; `None`
    /// when short, disabled, bypassed, or metered soft (a block is only ever taken off a
    /// balance that covers it).
    pub(in super::super) async fn slow_side(
        self: &Arc<Self>,
        side: &Side,
        shard: i64,
        now: EpochMillis,
    ) -> Result<Option<Vec<LimitReport>>, StoreError> {
        for _ in 0..ATTEMPTS {
            let read = self.read_side(&side.id, shard).await?;
            let stamped = read.bucket.as_ref().is_some_and(|i| i.bypass.as_ref().is_some_and(|b| b.live(now.0)));
            if read.access != Access::Enforced || stamped {
                return Ok(None);
            }
            let parent_id = read.meta.as_ref().and_then(|m| m.parent.clone());
            let cascade =
                read.cascade_flag.unwrap_or(read.meta.as_ref().is_some_and(|m| m.cascade)) && parent_id.is_some();
            let plans = vec![self.plan_side(side, shard, read, cascade, now)?];
            let soft = plans[0].plan.limits.iter().any(|l| l.soft && side.declared.iter().any(|(n, _)| *n == l.name));
            let judged = acquire::decide(&[plans[0].plan.clone()], now);
            if soft || !judged.admitted {
                return Ok(None);
            }
            let committed = match self.commit(&plans, now, None).await? {
                true => true,
                false => self.retry_consumption(&plans, now, None).await?,
            };
            if committed {
                path("entity_slow");
                self.learn_count(&side.id, plans[0].plan.shard_count);
                self.remember_parent(&side.id, parent_id.filter(|_| cascade));
                return Ok(Some(judged.reports));
            }
        }
        Err(StoreError::Unavailable(format!(
            "entity '{}' on resource '{}' stayed contended",
            side.id.entity, side.id.resource
        )))
    }

    /// The walk levels, META and bucket shard of one side, in one consistent BatchGetItem.
    pub(in super::super) async fn read_side(&self, id: &BucketId, shard: i64) -> Result<Read, StoreError> {
        let levels = keys::config_levels(&id.ns, &id.entity, &id.resource);
        let meta_key = (keys::pk_entity(&id.ns, &id.entity), keys::SK_META.to_owned());
        let bucket_key = (id.pk(shard), keys::SK_STATE.to_owned());
        let mut wanted: Vec<(String, String)> = levels[..3].to_vec();
        wanted.push(meta_key.clone());
        wanted.push(bucket_key.clone());
        let mut found = self.db.batch_get(&wanted, true).await.map_err(unavailable)?;
        let walk_items: Vec<Option<&Item>> = levels[..3].iter().map(|k| found.get(k)).collect();
        let (access, cascade_flag) = walk(&walk_items);
        let meta = found.remove(&meta_key).map(|m| parse_meta(&m));
        let bucket = found.remove(&bucket_key).map(|b| parse(&b)).transpose()?;
        Ok(Read { access, cascade_flag, meta, bucket })
    }

    fn plan_side<'a>(
        &self,
        side: &'a Side,
        shard: i64,
        read: Read,
        cascade: bool,
        now: EpochMillis,
    ) -> Result<SidePlan<'a>, StoreError> {
        if let Some(what) = read.bucket.as_ref().and_then(|i| i.unsupported.as_ref()) {
            return Err(self.unsupported_entity(&side.id, what));
        }
        let new_shard_count = self.cached_count(&side.id).max(shard + 1);
        let input = SideInput {
            entity: &side.id.entity,
            config: &side.limits.limits,
            requested: &side.declared,
            access: read.access,
            shard,
            bucket: read.bucket.as_ref().map(|image| bucket_read(image, now)),
            new_shard_count,
            params: Params::Stored,
        };
        let plan = acquire::plan_side(input, now);
        Ok(SidePlan { side, image: read.bucket, meta: read.meta, cascade, plan })
    }
}

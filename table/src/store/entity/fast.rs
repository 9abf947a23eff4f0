//! The speculative writes of an entity acquire (§11.2, §11.9): one conditional UpdateItem
//! per side, child and parent in parallel when the parent is known, refunds of a side whose
//! partner failed, and the judgement of a failed image (§11.3, §11.4).

use rand::Rng;
use std::sync::Arc;
use zael_core::acquire;
use zael_core::bucket::{BucketLimit, EpochMillis, Millitokens};
use zael_core::store::{EntityOutcome, LimitReport, StoreError};

use super::super::near_empty;
use super::super::request::{parse, path, unavailable};
use super::super::sharding::other_shards;
use super::super::write::{Credit, Delta, Speculative};
use super::super::{BucketId, Inner};
use super::Side;
use crate::db::{DbError, Update};
use crate::item::BucketImage;
use crate::metrics as m;

/// How a speculative write went.
pub(in super::super) enum Fast {
    Admitted(Landed),
    Failed(Option<BucketImage>),
    Contended,
}

/// A speculative write that landed.
pub(in super::super) struct Landed {
    /// The item after the write.
    pub image: BucketImage,
    /// `tk` was debited: the normal shape (the bypass shape, sent to a bucket known bypassed,
    /// counts `tc` only).
    pub debited: bool,
}

/// What a failed image decides.
enum Judged {
    Disabled,
    Rejected(Vec<LimitReport>),
    Slow(i64),
}

impl Inner {
    /// The side of `parent` (the parent the entity cascades to as this server last saw it,
    /// [`Inner::cached_parent`], read once by the caller), when it charges the parent anything.
    pub(in super::super) async fn known_parent(
        &self,
        child: &Side,
        parent: Option<&str>,
        consume: &[(Arc<str>, Millitokens)],
    ) -> Result<Option<Side>, StoreError> {
        Ok(match parent {
            Some(p) => Some(self.parent_side(child, p, consume).await?).filter(|p| !p.declared.is_empty()),
            None => None,
        })
    }

    /// The per-decision acquire: speculative writes, then the slow path when they cannot decide.
    pub(in super::super) async fn fast_entity(
        self: &Arc<Self>,
        child: Side,
        parent: Option<Side>,
        consume: &[(Arc<str>, Millitokens)],
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        // Known short from a recent image: rejected without a call (the child's own reports, or
        // the parent's with the child's untouched balance). Near empty, a decision waits for
        // those of this server already at the table when the refill covers no more of them,
        // then is judged again (`near_empty`, as for YAML rules); the permits are held until
        // the decision lands.
        let _permits = loop {
            if let Some(reports) = self.entity_known_short(&child, now) {
                return Ok(self.cache_reject(reports));
            }
            if let Some(parent_reports) = parent.as_ref().and_then(|p| self.entity_known_short(p, now)) {
                let mut reports = self.untouched(&child, now);
                reports.extend(parent_reports);
                return Ok(self.cache_reject(reports));
            }
            match self.enter_near_empty(&child, parent.as_ref(), now) {
                Ok(permits) => break permits,
                Err(waiter) => {
                    metrics::counter!(m::NEAR_EMPTY_WAITS).increment(1);
                    waiter.landed(self.call_timeout).await;
                }
            }
        };
        let (shard, _) = self.select_shard(&child.id, &[]);
        let parent_write = async {
            match &parent {
                Some(p) => {
                    let (pshard, _) = self.select_shard(&p.id, &[]);
                    Some((pshard, self.speculate_side(p, pshard, now).await))
                }
                None => None,
            }
        };
        let (child_result, parent_result) = tokio::join!(self.speculate_side(&child, shard, now), parent_write);
        let parent_result = match parent_result {
            Some((pshard, Ok(fast))) => Some((pshard, fast)),
            Some((_, Err(e))) => {
                if let Ok(Fast::Admitted(landed)) = &child_result {
                    self.refund_side(&child, shard, landed).await;
                }
                return Err(e);
            }
            None => None,
        };
        let child_fast = match child_result {
            Ok(fast) => fast,
            Err(e) => {
                self.refund_admitted(parent.as_ref(), &parent_result).await;
                return Err(e);
            }
        };
        let child_landed = match child_fast {
            Fast::Admitted(landed) => landed,
            failed => {
                self.refund_admitted(parent.as_ref(), &parent_result).await;
                return match failed {
                    Fast::Failed(image) => {
                        // A shard of a bucket spread over several holds its share only: others
                        // may still admit (the library's `_retry_on_other_shard`), unless the
                        // entity cascades, which only the slow path commits with its parent.
                        let probe = image.as_ref().filter(|i| i.shard_count > 1 && i.cascades_to.is_none());
                        let count = probe.map(|i| i.shard_count);
                        match self.judge(&child, shard, image, now).await? {
                            Judged::Disabled => Ok(EntityOutcome::Disabled { entity: child.id.entity.clone() }),
                            Judged::Rejected(reports) => match count {
                                Some(count) => self.other_shards(&child, consume, shard, count, reports, now).await,
                                None => Ok(EntityOutcome::Rejected(reports)),
                            },
                            Judged::Slow(shard) => self.slow_entity(&child, consume, shard, now).await,
                        }
                    }
                    _ => self.slow_entity(&child, consume, shard, now).await,
                };
            }
        };
        let child_image = &child_landed.image;
        self.learn_parent(&child.id, child_image);
        let child_reports = self.admitted_reports(&child, shard, &child_landed, now).await;
        // The image overrules the cache on whether and where the entity cascades.
        let charges_parent = match &child_image.cascades_to {
            Some(to) if parent.as_ref().is_none_or(|p| p.id.entity != *to) => {
                !self.parent_side(&child, to, consume).await?.declared.is_empty()
            }
            Some(_) => true,
            None => false,
        };
        let (parent, parent_result) = match (&child_image.cascades_to, parent) {
            (None, parent) => {
                self.refund_admitted(parent.as_ref(), &parent_result).await;
                path("entity_fast");
                return Ok(EntityOutcome::Admitted(child_reports));
            }
            (Some(to), Some(parent)) if *to == parent.id.entity => (parent, parent_result),
            (Some(_), parent) if !charges_parent => {
                self.refund_admitted(parent.as_ref(), &parent_result).await;
                path("entity_fast");
                return Ok(EntityOutcome::Admitted(child_reports));
            }
            (Some(to), parent) => {
                self.refund_admitted(parent.as_ref(), &parent_result).await;
                let parent = self.parent_side(&child, to, consume).await?;
                let (pshard, _) = self.select_shard(&parent.id, &[]);
                let fast = match self.speculate_side(&parent, pshard, now).await {
                    Ok(fast) => fast,
                    Err(e) => {
                        self.refund_side(&child, shard, &child_landed).await;
                        return Err(e);
                    }
                };
                (parent, Some((pshard, fast)))
            }
        };
        let Some((pshard, parent_fast)) = parent_result else {
            return Err(StoreError::Unavailable("internal: cascade without a parent write".into()));
        };
        match parent_fast {
            Fast::Admitted(parent_landed) => {
                self.learn_count(&parent.id, parent_landed.image.shard_count);
                path("entity_fast_cascade");
                let mut reports = child_reports;
                reports.extend(self.admitted_reports(&parent, pshard, &parent_landed, now).await);
                Ok(EntityOutcome::Admitted(reports))
            }
            Fast::Failed(image) => {
                self.refund_side(&child, shard, &child_landed).await;
                match self.judge(&parent, pshard, image, now).await? {
                    Judged::Disabled => Ok(EntityOutcome::Disabled { entity: parent.id.entity.clone() }),
                    Judged::Rejected(parent_reports) => {
                        // The child's debit was refunded: report its balance before it.
                        let before = child.plan_on(child_image, shard, now, child_landed.debited);
                        let mut reports = acquire::standing(&[before], now);
                        reports.iter_mut().for_each(|r| r.exceeded = false);
                        reports.extend(parent_reports);
                        Ok(EntityOutcome::Rejected(reports))
                    }
                    Judged::Slow(_) => self.slow_entity(&child, consume, shard, now).await,
                }
            }
            Fast::Contended => {
                self.refund_side(&child, shard, &child_landed).await;
                self.slow_entity(&child, consume, shard, now).await
            }
        }
    }

    /// Places at the table for a decision on `child` (and `parent`, in that order) where their
    /// buckets are gated near empty; `Err`: one is full, wait on it (the places taken are let
    /// go).
    fn enter_near_empty(
        &self,
        child: &Side,
        parent: Option<&Side>,
        now: EpochMillis,
    ) -> Result<Vec<near_empty::Permit<'_>>, near_empty::Waiter<'_>> {
        let mut permits = Vec::new();
        for side in std::iter::once(child).chain(parent) {
            match self.gates.enter(&side.id, self.entity_near_empty_slots(side, now)) {
                None => {}
                Some(near_empty::Entry::Go(permit)) => permits.push(permit),
                Some(near_empty::Entry::Wait(waiter)) => return Err(waiter),
            }
        }
        Ok(permits)
    }

    /// Up to two other shards ([`other_shards`]) of a rejected entity bucket: the first to admit
    /// decides; one the fast path cannot settle (missing, contended, short of only a stamp)
    /// goes to the slow path; if every probe is short, the first rejection stands.
    async fn other_shards(
        self: &Arc<Self>,
        child: &Side,
        consume: &[(Arc<str>, Millitokens)],
        first: i64,
        count: i64,
        rejected: Vec<LimitReport>,
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        for shard in other_shards(first, count) {
            match self.speculate_side(child, shard, now).await? {
                Fast::Admitted(landed) if landed.image.cascades_to.is_some() => {
                    // This shard's stamp says the entity cascades: undo, let the slow path commit both.
                    self.refund_side(child, shard, &landed).await;
                    return self.slow_entity(child, consume, shard, now).await;
                }
                Fast::Admitted(landed) => {
                    path("entity_fast");
                    return Ok(EntityOutcome::Admitted(self.admitted_reports(child, shard, &landed, now).await));
                }
                Fast::Contended | Fast::Failed(None) => return self.slow_entity(child, consume, shard, now).await,
                Fast::Failed(image) => match self.judge(child, shard, image, now).await? {
                    Judged::Disabled => return Ok(EntityOutcome::Disabled { entity: child.id.entity.clone() }),
                    Judged::Rejected(_) => {}
                    Judged::Slow(shard) => return self.slow_entity(child, consume, shard, now).await,
                },
            }
        }
        Ok(EntityOutcome::Rejected(rejected))
    }

    /// The speculative UpdateItem of one side's requested limits.
    pub(super) async fn speculate_side(&self, side: &Side, shard: i64, now: EpochMillis) -> Result<Fast, StoreError> {
        let limits: Vec<_> = side.declared.iter().map(|(name, amount)| (name.as_str(), *amount, None)).collect();
        Ok(self.speculate(&side.id, &limits, shard, now).await?.0)
    }

    /// The speculative UpdateItem on `shard` of bucket `id` (every condition term of §11.2),
    /// or its bypass shape when the bucket is known bypassed; a bypass shape that finds no
    /// stamp at all on an item that could take a write is forgotten and sent again in the
    /// normal shape. Every image teaches the bypass cache. Also says whether the answer is
    /// the bypass shape's.
    pub(in super::super) async fn speculate(
        &self,
        id: &BucketId,
        limits: &[(&str, i64, Option<BucketLimit>)],
        shard: i64,
        now: EpochMillis,
    ) -> Result<(Fast, bool), StoreError> {
        let mut bypass_shape = self.is_bypassed(id);
        let mut fast = self.speculate_shape(id, limits, shard, now, bypass_shape).await?;
        if let Fast::Failed(Some(image)) = &fast
            && bypass_shape
            && image.bypass.is_none()
            && !image.disabled
            && image.unsupported.is_none()
        {
            self.caches.bypassed.remove(id);
            bypass_shape = false;
            fast = self.speculate_shape(id, limits, shard, now, false).await?;
        }
        match &fast {
            Fast::Admitted(Landed { image, .. }) | Fast::Failed(Some(image)) => self.learn_bypass(id, image),
            _ => {}
        }
        Ok((fast, bypass_shape))
    }

    async fn speculate_shape(
        &self,
        id: &BucketId,
        limits: &[(&str, i64, Option<BucketLimit>)],
        shard: i64,
        now: EpochMillis,
        bypass_shape: bool,
    ) -> Result<Fast, StoreError> {
        let req = Speculative { now: now.0, limits: limits.to_vec(), bypass_shape }.render(id.pk(shard));
        match self.db.update(req).await {
            Ok(Update::Done(item)) => Ok(Fast::Admitted(Landed { image: parse(&item)?, debited: !bypass_shape })),
            Ok(Update::ConditionFailed(item)) => Ok(Fast::Failed(item.as_ref().map(parse).transpose()?)),
            Err(DbError::Conflict) => Ok(Fast::Contended),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Why a speculative write failed and what follows, from its `ALL_OLD` image.
    async fn judge(
        self: &Arc<Self>,
        side: &Side,
        shard: i64,
        image: Option<BucketImage>,
        now: EpochMillis,
    ) -> Result<Judged, StoreError> {
        let Some(image) = image else { return Ok(Judged::Slow(shard)) };
        let n = now.0;
        if image.disabled {
            path("entity_disabled");
            return Ok(Judged::Disabled);
        }
        if let Some(what) = &image.unsupported {
            return Err(self.unsupported_entity(&side.id, what));
        }
        self.learn_parent(&side.id, &image);
        let bypass_live = image.bypass.as_ref().is_some_and(|b| b.live(n));
        let boundary = image.bypass.as_ref().is_some_and(|b| !b.live(n))
            || side
                .declared
                .iter()
                .any(|(name, _)| image.limit(name).and_then(|l| l.soft.as_ref()).is_some_and(|s| !s.live(n)))
            || image.ttl.is_some_and(|t| t <= n.div_euclid(1000));
        if boundary || bypass_live {
            return Ok(Judged::Slow(shard));
        }
        let judged = acquire::decide(&[side.plan_on(&image, shard, now, false)], now);
        if !judged.admitted {
            path("entity_fast_reject");
            self.remember_short(&side.id, shard, &image);
            return Ok(Judged::Rejected(judged.reports));
        }
        if !image.wcu_would_refill(n) {
            let sc = image.shard_count;
            let count = self.double(&side.id, sc).await?;
            if count > sc {
                return Ok(Judged::Slow(rand::rng().random_range(sc..count)));
            }
        }
        Ok(Judged::Slow(shard))
    }

    /// The reports of a landed write. A normal-shape debit on a bucket stamped `bypass` keeps
    /// the usage counted but gives the balance back (the library's `_refund_bypassed_debit`).
    async fn admitted_reports(&self, side: &Side, shard: i64, landed: &Landed, now: EpochMillis) -> Vec<LimitReport> {
        let image = &landed.image;
        let reports = acquire::decide(&[side.plan_on(image, shard, now, landed.debited)], now).reports;
        if landed.debited && image.bypass.as_ref().is_some_and(|b| b.live(now.0)) {
            self.credit(side, shard, image, true, false).await;
        }
        reports
    }

    fn cache_reject(&self, reports: Vec<LimitReport>) -> EntityOutcome {
        self.caches.rejections.count_hit();
        metrics::counter!(crate::metrics::REJECTION_CACHE_HITS).increment(1);
        path("entity_cache_reject");
        EntityOutcome::Rejected(reports)
    }

    /// The child's reports when only its parent was judged: its limits as last seen, not
    /// exceeded (empty when no trusted image of it is remembered).
    fn untouched(&self, child: &Side, now: EpochMillis) -> Vec<LimitReport> {
        let known = self.caches.rejections.trusted(&child.id, now.0);
        let Some((shard, image)) = known.first() else { return Vec::new() };
        let mut reports = acquire::standing(&[child.plan_on(image, *shard, now, false)], now);
        reports.iter_mut().for_each(|r| r.exceeded = false);
        reports
    }

    async fn refund_admitted(&self, side: Option<&Side>, result: &Option<(i64, Fast)>) {
        if let (Some(side), Some((shard, Fast::Admitted(landed)))) = (side, result) {
            self.refund_side(side, *shard, landed).await;
        }
    }

    /// Takes back a landed write whose partner failed: the usage, and the debit when there was
    /// one, self-trimming at the ceiling (§11.10).
    pub(super) async fn refund_side(&self, side: &Side, shard: i64, landed: &Landed) {
        self.credit(side, shard, &landed.image, landed.debited, true).await;
    }

    /// Gives back each requested amount: to `tk` when `tokens`, off `tc` when `usage`.
    async fn credit(&self, side: &Side, shard: i64, image: &BucketImage, tokens: bool, usage: bool) {
        let limits: Vec<Delta<'_>> = side
            .declared
            .iter()
            .filter(|(_, a)| *a > 0)
            .map(|(name, amount)| Delta {
                name,
                tk: tokens.then_some(*amount),
                tc: usage.then_some(-amount),
                ceiling: image.limit(name).map(|l| (l.limit.capacity.0, image.shard_count)),
            })
            .collect();
        let outcome = self.send_credit(side.id.pk(shard), Credit { limits, vu: Some(image.vu), trim: false }).await;
        path("entity_refund");
        if let Err(e) = outcome {
            tracing::warn!(error = ?e, entity = %side.id.entity, resource = %side.id.resource, "refund failed; the bucket under-admits until it refills");
        }
    }

    /// Sends `credit`; one that fails its ceiling or `vu` pin on an item still there is sent
    /// again trimmed (credited anyway, the next acquire's slow pass clamps it, §11.10).
    pub(in super::super) async fn send_credit(&self, pk: String, credit: Credit<'_>) -> Result<(), DbError> {
        let Some(req) = credit.render(pk.clone()) else { return Ok(()) };
        match self.db.update(req).await? {
            Update::ConditionFailed(Some(_)) => match (Credit { trim: true, ..credit }).render(pk) {
                Some(trimmed) => self.db.update(trimmed).await.map(|_| ()),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

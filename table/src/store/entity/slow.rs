//! The slow path of an entity acquire (§11.5, §11.6): one consistent BatchGetItem per side
//! (its access walk, META and bucket shard), a plan over every limit of each item, and one
//! commit: an UpdateItem for a single existing item, else one TransactWriteItems (creates
//! carry their owner's META ConditionCheck; child and parent commit together).

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update as TxUpdate};
use std::collections::HashMap;
use std::sync::Arc;
use zael_core::bucket::{EpochMillis, Millitokens};
use zael_core::store::{EntityOutcome, LimitReport, StoreError};

use super::super::expr::Ex;
use super::super::request::{parse, path, unavailable};
use super::super::{BucketId, Inner};
use super::config::{Access, level_keys, walk};
use super::{Side, report};
use crate::db::{DbError, Transact, Update, UpdateReq};
use crate::item::{BucketImage, Item, NewBucket, NewLimit, n, new_bucket_item, s};
use crate::keys::{self, WCU};
use crate::plan;

/// Re-plans of one acquire before it gives up as contended.
const ATTEMPTS: usize = 4;

/// The owner's META as read (§7), for the bucket's owner stamp and the create's check.
#[derive(Clone, Debug, Default)]
struct Meta {
    parent: Option<String>,
    cascade: bool,
    pgen: Option<i64>,
    pinc: Option<String>,
    created_at: Option<String>,
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

/// One side's reads.
struct Read {
    access: Access,
    cascade_flag: Option<bool>,
    meta: Option<Meta>,
    bucket: Option<BucketImage>,
}

/// One limit of the write: its parameters, the balance read, the refilled balance and the debit.
struct LimitPlan {
    name: String,
    cp: i64,
    ra: i64,
    rp: i64,
    /// `None`: the limit is new on this item (seeded).
    tk_read: Option<i64>,
    start: i64,
    /// Millitokens taken off `tk` (none under bypass).
    consumed: i64,
    /// Millitokens added to `tc` (the request's amount, under bypass too).
    usage: i64,
    soft: bool,
    /// The limit's config says soft: its bucket carries a live `b_{n}_soft` stamp.
    stamp_soft: bool,
    /// The `b_{n}_soft` stamp as read.
    soft_read: Option<AttributeValue>,
}

/// One side's planned write.
struct SidePlan<'a> {
    side: &'a Side,
    shard: i64,
    count: i64,
    image: Option<BucketImage>,
    meta: Option<Meta>,
    cascade: bool,
    /// The access walk says bypass: admitted without a `tk` debit, stamped `bypass`.
    bypass: bool,
    limits: Vec<LimitPlan>,
    reports: Vec<LimitReport>,
    violated: bool,
}

impl Inner {
    pub(in super::super) async fn slow_entity(
        self: &Arc<Self>,
        child: &Side,
        consume: &[(Arc<str>, Millitokens)],
        shard: i64,
        now: EpochMillis,
    ) -> Result<EntityOutcome, StoreError> {
        let mut shard = shard;
        for _ in 0..ATTEMPTS {
            let read = self.read_side(&child.id, shard).await?;
            if read.access == Access::Disabled {
                path("entity_disabled");
                return Ok(EntityOutcome::Disabled { entity: child.id.entity.clone() });
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
                        return Ok(EntityOutcome::Disabled { entity: side.id.entity.clone() });
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
            let reports: Vec<LimitReport> = plans.iter().flat_map(|p| p.reports.iter().cloned()).collect();
            if plans.iter().any(|p| p.violated) {
                for p in plans.iter().filter(|p| p.violated) {
                    if let Some(image) = &p.image {
                        self.remember_short(&p.side.id, p.shard, image);
                    }
                }
                path("entity_slow_reject");
                return Ok(EntityOutcome::Rejected(reports));
            }
            let hook = self.before_commit.lock().expect("lock").clone();
            if let Some(hook) = hook {
                hook(child.id.pk(shard)).await;
            }
            let committed = match self.commit(&plans, now).await? {
                true => true,
                // Lost a race (the rf lock, a concurrent create): consumption only (§11.6 c).
                false => self.retry_consumption(&plans).await?,
            };
            if committed {
                path(if plans.len() > 1 { "entity_slow_cascade" } else { "entity_slow" });
                for p in &plans {
                    self.learn_count(&p.side.id, p.count);
                }
                self.parents.lock().expect("lock").insert(child.id.clone(), parent_id.filter(|_| cascade));
                return Ok(EntityOutcome::Admitted(reports));
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

    /// Shape (c): the requested debits alone on every side, in one write; `false` when a
    /// balance is short without the refill or an item is missing.
    async fn retry_consumption(&self, plans: &[SidePlan<'_>]) -> Result<bool, StoreError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(format!("building a retry: {e}"));
        let mut requests = Vec::new();
        for p in plans {
            let mut ex = Ex::default();
            let mut add = Vec::new();
            let mut cond = vec!["attribute_exists(PK)".to_owned()];
            for (i, l) in p.limits.iter().filter(|l| l.consumed > 0).enumerate() {
                ex.name(&format!("#t{i}"), &keys::battr(&l.name, "tk"))
                    .name(&format!("#c{i}"), &keys::battr(&l.name, "tc"));
                ex.num(&format!(":d{i}"), -l.consumed).num(&format!(":a{i}"), l.consumed);
                add.push(format!("#t{i} :d{i}"));
                add.push(format!("#c{i} :a{i}"));
                if l.soft {
                    ex.name(&format!("#p{i}"), &keys::battr(&l.name, "cp"));
                    cond.push(format!("attribute_exists(#p{i}) AND attribute_exists(#t{i})"));
                } else {
                    cond.push(format!("#t{i} >= :a{i}"));
                }
            }
            if add.is_empty() {
                continue;
            }
            requests.push(ex.req(p.side.id.pk(p.shard), format!("ADD {}", add.join(", ")), cond));
        }
        if requests.is_empty() {
            return Ok(true);
        }
        if requests.len() == 1 {
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
        match self.db.transact(items).await {
            Ok(Transact::Done) => Ok(true),
            Ok(Transact::Canceled(_)) | Err(DbError::Conflict) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The walk levels, META and bucket shard of one side, in one consistent BatchGetItem.
    async fn read_side(&self, id: &BucketId, shard: i64) -> Result<Read, StoreError> {
        let levels = level_keys(&id.ns, &id.entity, &id.resource);
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
        let bypass = read.access == Access::Bypass;
        let count = read.bucket.as_ref().map_or_else(|| self.cached_count(&side.id).max(shard + 1), |i| i.shard_count);
        let mut limits = Vec::new();
        if let Some(image) = &read.bucket {
            for l in &image.limits {
                let divisor = if l.name == WCU { 1 } else { count };
                let share = plan::share(l.cp, l.ra, l.rp, divisor);
                let start = plan::project(l.tk, image.rf, &share, now).tokens.0;
                let config = side.limits.limit(&l.name);
                let stamp_live = l.soft.as_ref().is_some_and(|st| st.live(now.0));
                limits.push(LimitPlan {
                    name: l.name.clone(),
                    cp: l.cp,
                    ra: l.ra,
                    rp: l.rp,
                    tk_read: Some(l.tk),
                    start,
                    consumed: 0,
                    usage: 0,
                    soft: config.map_or(stamp_live, |c| c.soft),
                    stamp_soft: config.is_some_and(|c| c.soft),
                    soft_read: l.soft.as_ref().map(|st| st.raw.clone()),
                });
            }
        }
        for r in &side.limits.limits {
            if limits.iter().any(|l| l.name == r.name) {
                continue;
            }
            let start = plan::share(r.cp, r.ra, r.rp, count).capacity.0;
            limits.push(LimitPlan {
                name: r.name.clone(),
                cp: r.cp,
                ra: r.ra,
                rp: r.rp,
                tk_read: None,
                start,
                consumed: 0,
                usage: 0,
                soft: r.soft,
                stamp_soft: r.soft,
                soft_read: None,
            });
        }
        let mut reports = Vec::with_capacity(side.declared.len());
        let mut violated = false;
        for (name, amount) in &side.declared {
            let Some(l) = limits.iter_mut().find(|l| l.name == *name) else { continue };
            let exceeded = !bypass && !l.soft && l.start < *amount;
            violated |= exceeded;
            l.consumed = if bypass { 0 } else { *amount };
            l.usage = *amount;
            let after = if exceeded || bypass { l.start } else { l.start.saturating_sub(*amount) };
            reports.push(report(&side.id.entity, name, (l.cp, l.ra, l.rp), count, after, now, *amount, exceeded));
        }
        Ok(SidePlan {
            side,
            shard,
            count,
            image: read.bucket,
            meta: read.meta,
            cascade,
            bypass,
            limits,
            reports,
            violated,
        })
    }

    /// Commits the plans; `false` when a condition failed (re-plan).
    async fn commit(&self, plans: &[SidePlan<'_>], now: EpochMillis) -> Result<bool, StoreError> {
        if let [only] = plans
            && only.image.is_some()
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
                None => {
                    let put = Put::builder()
                        .table_name(&self.db.table)
                        .set_item(Some(self.new_item(p, now)))
                        .condition_expression("attribute_not_exists(PK)")
                        .build()
                        .map_err(build)?;
                    items.push(TransactWriteItem::builder().put(put).build());
                    let (condition, values) = meta_condition(p.meta.as_ref());
                    let check = ConditionCheck::builder()
                        .table_name(&self.db.table)
                        .set_key(Some(key(keys::pk_entity(&p.side.id.ns, &p.side.id.entity), keys::SK_META)))
                        .condition_expression(condition)
                        .set_expression_attribute_values((!values.is_empty()).then_some(values))
                        .build()
                        .map_err(build)?;
                    items.push(TransactWriteItem::builder().condition_check(check).build());
                }
            }
        }
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

    /// Shape (b): refill every limit from its stored parameters, debit the requested ones,
    /// restamp the owner, under the `rf` lock (§11.6).
    fn normal_update(&self, p: &SidePlan<'_>, now: EpochMillis) -> UpdateReq {
        let image = p.image.as_ref().expect("an existing item");
        let mut ex = Ex::default();
        ex.name("#rf", "rf").name("#ttl", "ttl").name("#vu", "vu").name("#cas", "cascade");
        ex.num(":rf", now.0.max(image.rf)).num(":rf_read", image.rf);
        ex.val(":cas", AttributeValue::Bool(p.cascade));
        let mut set = vec!["#rf = :rf".to_owned(), "#cas = :cas".to_owned()];
        let mut remove = Vec::new();
        let mut add = Vec::new();
        let mut cond = vec!["#rf = :rf_read".to_owned()];
        let mut horizons = Vec::new();
        for (i, l) in p.limits.iter().enumerate() {
            let tk = format!("#t{i}");
            ex.name(&tk, &keys::battr(&l.name, "tk")).name(&format!("#c{i}"), &keys::battr(&l.name, "tc"));
            horizons.push(plan::recovery_secs(l.cp, l.ra, l.rp));
            match l.tk_read {
                Some(read) => {
                    let refill = l.start - read;
                    ex.num(&format!(":d{i}"), refill.saturating_sub(l.consumed)).num(&format!(":u{i}"), l.usage);
                    add.push(format!("{tk} :d{i}"));
                    add.push(format!("#c{i} :u{i}"));
                    if l.consumed > refill && !l.soft {
                        ex.num(&format!(":g{i}"), l.consumed - refill);
                        cond.push(format!("{tk} >= :g{i}"));
                    }
                    if refill > 0 {
                        ex.num(&format!(":k{i}"), read);
                        cond.push(format!("{tk} <= :k{i}"));
                    }
                }
                None => {
                    ex.name(&format!("#p{i}"), &keys::battr(&l.name, "cp"))
                        .name(&format!("#a{i}"), &keys::battr(&l.name, "ra"))
                        .name(&format!("#r{i}"), &keys::battr(&l.name, "rp"));
                    ex.num(&format!(":st{i}"), l.start.saturating_sub(l.consumed)).num(&format!(":u{i}"), l.usage);
                    ex.num(&format!(":p{i}"), l.cp).num(&format!(":a{i}"), l.ra).num(&format!(":r{i}"), l.rp);
                    set.extend([
                        format!("{tk} = :st{i}"),
                        format!("#c{i} = :u{i}"),
                        format!("#p{i} = :p{i}"),
                        format!("#a{i} = :a{i}"),
                        format!("#r{i} = :r{i}"),
                    ]);
                    cond.push(format!("(attribute_not_exists(#p{i}) OR attribute_not_exists({tk}))"));
                }
            }
        }
        // Stamps follow the config (§8.6): a soft limit keeps a live `b_{n}_soft`, a hard one
        // none; `bypass` while the walk says so. Each change is pinned on the stamp as read.
        let deadline = stamp_deadline(now);
        for (i, l) in p.limits.iter().enumerate() {
            if l.name == WCU {
                continue;
            }
            let live = matches!(&l.soft_read, Some(AttributeValue::N(v)) if v.parse::<i64>().is_ok_and(|d| d > now.0));
            let change = match (l.stamp_soft, &l.soft_read) {
                (true, _) if live => continue,
                (true, _) => {
                    ex.num(&format!(":so{i}"), deadline);
                    set.push(format!("#so{i} = :so{i}"));
                    true
                }
                (false, Some(_)) => {
                    remove.push(format!("#so{i}"));
                    true
                }
                (false, None) => false,
            };
            if change {
                ex.name(&format!("#so{i}"), &keys::battr(&l.name, "soft"));
                match &l.soft_read {
                    Some(v) => {
                        ex.val(&format!(":sr{i}"), v.clone());
                        cond.push(format!("#so{i} = :sr{i}"));
                    }
                    None => cond.push(format!("attribute_not_exists(#so{i})")),
                }
            }
        }
        ex.name("#byp", "bypass");
        match (&image.bypass, p.bypass) {
            (Some(read), true) if read.live(now.0) => {
                ex.val(":bypr", read.raw.clone());
                cond.push("#byp = :bypr".into());
            }
            (read, true) => {
                ex.num(":bypd", deadline);
                set.push("#byp = :bypd".into());
                match read {
                    Some(r) => {
                        ex.val(":bypr", r.raw.clone());
                        cond.push("#byp = :bypr".into());
                    }
                    None => cond.push("attribute_not_exists(#byp)".into()),
                }
            }
            (Some(read), false) => {
                ex.val(":bypr", read.raw.clone());
                remove.push("#byp".into());
                cond.push("#byp = :bypr".into());
            }
            (None, false) => cond.push("attribute_not_exists(#byp)".into()),
        }
        if image.disabled {
            // A stale stamp (the walk just said enforced): clear it, or the fast path stays shut.
            ex.name("#dis", "disabled").val(":dis", AttributeValue::Bool(true));
            remove.push("#dis".into());
            cond.push("#dis = :dis".into());
        }
        if p.side.limits.ttl_applies() {
            ex.num(":ttl", plan::ttl_epoch(now, &horizons));
            set.push("#ttl = :ttl".into());
        } else {
            remove.push("#ttl".to_owned());
        }
        match image.vu {
            None => cond.push("attribute_not_exists(#vu)".into()),
            Some(v) => {
                ex.num(":vur", v);
                cond.push("#vu = :vur".into());
                remove.push("#vu".into());
            }
        }
        if let Some(meta) = &p.meta {
            ex.name("#par", "parent_id").name("#pg", "pgen").name("#pi", "pinc");
            match (&meta.parent, p.cascade) {
                (Some(parent), _) => {
                    ex.val(":par", s(parent));
                    set.push("#par = :par".into());
                }
                (None, _) => remove.push("#par".into()),
            }
            if let (Some(pgen), Some(pinc)) = (meta.pgen, &meta.pinc) {
                ex.num(":pg", pgen).val(":pi", s(pinc));
                set.push("#pg = :pg".into());
                set.push("#pi = :pi".into());
                cond.push(
                    "(attribute_not_exists(#pi) OR (#pi = :pi AND (attribute_not_exists(#pg) OR #pg <= :pg)))".into(),
                );
            }
        }
        let mut update = format!("SET {}", set.join(", "));
        if !add.is_empty() {
            update.push_str(&format!(" ADD {}", add.join(", ")));
        }
        if !remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        ex.req(p.side.id.pk(p.shard), update, cond)
    }

    /// Shape (a): the complete item of a new shard (§9.6) with its owner stamp.
    fn new_item(&self, p: &SidePlan<'_>, now: EpochMillis) -> Item {
        let id = &p.side.id;
        let limits: Vec<NewLimit<'_>> = p
            .limits
            .iter()
            .filter(|l| l.name != WCU)
            .map(|l| NewLimit {
                name: &l.name,
                tk: l.start.saturating_sub(l.consumed),
                cp: l.cp,
                ra: l.ra,
                rp: l.rp,
                tc: l.usage,
            })
            .collect();
        let horizons: Vec<f64> = p.limits.iter().map(|l| plan::recovery_secs(l.cp, l.ra, l.rp)).collect();
        let ttl = p.side.limits.ttl_applies().then(|| plan::ttl_epoch(now, &horizons));
        let bucket = NewBucket {
            ns: &id.ns,
            entity: &id.entity,
            resource: &id.resource,
            shard: p.shard,
            shard_count: p.count,
            rf: now.0,
            ttl,
        };
        let mut item = new_bucket_item(&bucket, &limits);
        item.insert("cascade".into(), AttributeValue::Bool(p.cascade));
        let deadline = stamp_deadline(now);
        for l in p.limits.iter().filter(|l| l.stamp_soft) {
            item.insert(keys::battr(&l.name, "soft"), n(deadline));
        }
        if p.bypass {
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
}

/// The deadline of a soft or bypass stamp written now: `now + 60 s × U(0.8, 1.0)`, as the
/// library's `stamp_deadline` (its default stamp TTL).
fn stamp_deadline(now: EpochMillis) -> i64 {
    use rand::Rng;
    now.0 + rand::rng().random_range(48_000..=60_000)
}

/// An UpdateItem request as a transaction item on `(pk, #STATE)`.
fn tx_update(table: &str, req: UpdateReq) -> Result<TxUpdate, aws_sdk_dynamodb::error::BuildError> {
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

//! A side the engine planned ([`SidePlan`]) as the writes of [`super::write`]: the `rf`-locked
//! update's limits and stamps, and the consumption-only retry's takes. The YAML-rule path and
//! the entity path write their plans through these, so a limit is written one way.
//!
//! `soft_stamp_passes` says whose word makes a limit soft: a YAML rule's softness is its item's
//! live `b_hits_soft` stamp (a guard passes while the stamp is live), an entity's is its config
//! (a stamp left from an older config does not pass).

use zael_core::acquire::SidePlan;
use zael_core::bucket::EpochMillis;

use super::write::{Balance, Guard, LimitWrite, ShardWrite, StampTo, StampWrite, Take};
use crate::item::BucketImage;
use crate::keys::{self, WCU};
use crate::plan::{recovery_secs, ttl_epoch};

/// The `rf`-locked update (§11.6 b) of `plan` on `image` at `now`: every limit refilled and
/// the requested ones debited ([`limit_writes`]), the stamps ([`stamp_writes`]), `vu` pinned
/// and removed, and, when `ttl`, the item's `ttl` set to when every limit is full again
/// (removed otherwise). No owner stamp: an entity's write adds its own.
pub(super) fn update<'a>(
    plan: &'a SidePlan<'_>,
    image: &'a BucketImage,
    now: EpochMillis,
    ttl: bool,
    soft_stamp_passes: bool,
) -> ShardWrite<'a> {
    let horizons: Vec<f64> = plan.limits.iter().map(|l| recovery_secs(&l.limit)).collect();
    ShardWrite {
        now: now.0,
        rf: (now.0.max(image.rf), image.rf),
        limits: limit_writes(plan, soft_stamp_passes),
        ttl: ttl.then(|| ttl_epoch(now, &horizons)),
        vu: image.vu,
        stamps: stamp_writes(plan, image, now.0),
        cascade: None,
        owner: None,
    }
}

/// Each limit of `plan` as the `rf`-locked update writes it: refilled and debited, under its
/// guard and the balance read (the refill is not counted twice); seeded when the item lacks
/// it; its parameters set when it is new or resynced.
fn limit_writes<'a>(plan: &'a SidePlan<'_>, soft_stamp_passes: bool) -> Vec<LimitWrite<'a>> {
    (plan.limits.iter())
        .map(|l| {
            let balance = match l.read {
                Some(read) => {
                    let refill = l.refill();
                    Balance::Add {
                        delta: refill.saturating_sub(l.consumed),
                        usage: l.usage,
                        at_least: l.guard.map(|g| (g.0.saturating_sub(refill), soft_stamp_passes)),
                        at_most: (refill > 0).then_some(read.0),
                    }
                }
                None => Balance::Seed { tk: l.after().0, usage: l.usage },
            };
            LimitWrite { name: &l.name, balance, params: (l.read.is_none() || l.resync).then_some(l.limit) }
        })
        .collect()
}

/// The stamps the update leaves on `image` (§8.6), each change pinned on the stamp as read: a
/// soft limit keeps a live `b_{n}_soft` (set when missing or expired), a hard one none;
/// `bypass` while the plan is bypassed; a `disabled` stamp the plan got past is cleared.
fn stamp_writes<'a>(plan: &SidePlan<'_>, image: &'a BucketImage, now: i64) -> Vec<StampWrite<'a>> {
    let deadline = keys::stamp_deadline(now);
    let mut stamps = Vec::new();
    for l in plan.limits.iter().filter(|l| l.name != WCU) {
        let read = image.limit(&l.name).and_then(|h| h.soft.as_ref());
        let to = match (l.soft, read) {
            (true, Some(st)) if st.live(now) => continue,
            (true, _) => StampTo::Set(deadline),
            (false, Some(_)) => StampTo::Remove,
            (false, None) => continue,
        };
        stamps.push(StampWrite { attr: keys::battr(&l.name, "soft"), to, read: read.map(|st| &st.raw) });
    }
    let bypass_to = match (&image.bypass, plan.bypass) {
        (Some(read), true) if read.live(now) => StampTo::Keep,
        (_, true) => StampTo::Set(deadline),
        (Some(_), false) => StampTo::Remove,
        (None, false) => StampTo::Keep,
    };
    stamps.push(StampWrite { attr: "bypass".into(), to: bypass_to, read: image.bypass.as_ref().map(|b| &b.raw) });
    if image.disabled {
        stamps.push(StampWrite { attr: "disabled".into(), to: StampTo::Remove, read: Some(&DISABLED) });
    }
    stamps
}

static DISABLED: aws_sdk_dynamodb::types::AttributeValue = aws_sdk_dynamodb::types::AttributeValue::Bool(true);

/// The consumption-only retry's take of each limit `plan` debits or counts: no refill, so
/// the stored balance itself must cover the limit's guard; a limit the item lacked when read
/// is seeded first, unless another writer seeded it meanwhile.
pub(super) fn takes<'a>(plan: &'a SidePlan<'_>, soft_stamp_passes: bool) -> Vec<Take<'a>> {
    (plan.limits.iter())
        .filter(|l| l.consumed > 0 || l.usage > 0)
        .map(|l| Take {
            name: &l.name,
            debit: l.consumed,
            usage: l.usage,
            guard: match (l.read, l.guard) {
                (None, floor) => Guard::Seed { start: l.start.tokens.0, limit: l.limit, floor: floor.map(|f| f.0) },
                (Some(_), Some(floor)) => Guard::Covers { floor: floor.0, soft_escape: soft_stamp_passes },
                (Some(_), None) => Guard::Held,
            },
        })
        .collect()
}

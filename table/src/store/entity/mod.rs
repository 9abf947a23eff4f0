//! Entity acquires (`table-format.md` §11 with stored limits): the limits an entity has for
//! a resource come from the table's config levels ([`config`]), the acquire charges them
//! all at once, and, when the entity cascades, its parent's bucket too (one hop).
//!
//! The order a request meets it: [`Inner::prepare_entity`] resolves the namespace and the
//! limits, the store's reservations answer what they cover (`super::reserve_entity`), then [`fast`] sends the speculative UpdateItems (child and
//! parent in parallel, refunding a lost side) and judges a failure from its `ALL_OLD`
//! image ([`known`] answers repeated rejections from recent images without a call); what the
//! images cannot decide goes to [`slow`]: one consistent BatchGetItem per side (access walk,
//! META, bucket) and the plan, then [`commit`]: an UpdateItem, or one TransactWriteItems for a
//! create or for child and parent together, and the consumption-only retry.

mod commit;
mod config;
mod fast;
mod known;
mod slow;

use std::sync::Arc;
use zael_core::acquire::{self, Params, SideInput, SidePlan};
use zael_core::bucket::{EpochMillis, Millitokens};
use zael_core::store::{EntityOutcome, EntityRequest, StoreError};

use super::request::path;
use super::{BucketId, Inner};
use crate::item::BucketImage;
use crate::keys;
pub(crate) use commit::tx_update;
pub(crate) use config::{Access, Level, Resolved, StoredLimit};
pub(super) use fast::{Fast, Landed};
pub(super) use slow::Slow;
pub(super) use slow::bucket_read;

/// An entity acquire made ready for its decision.
pub(super) enum Prepared {
    Side(Side),
    Decided(EntityOutcome),
}

/// One side of an acquire (the entity, or its parent) and what it is charged.
#[derive(Clone, Debug)]
pub(super) struct Side {
    pub id: BucketId,
    pub limits: Arc<Resolved>,
    /// Requested limits this side has, with their amounts in millitokens.
    pub declared: Vec<(String, i64)>,
    /// The limits are the request's override (the library's `limits=`), which the parent
    /// side takes too.
    pub overridden: bool,
}

impl Side {
    pub(super) fn new(id: BucketId, limits: Arc<Resolved>, consume: &[(Arc<str>, Millitokens)]) -> Side {
        let declared =
            consume.iter().filter(|(n, _)| limits.limit(n).is_some()).map(|(n, a)| (n.to_string(), a.0)).collect();
        Side { id, limits, declared, overridden: false }
    }

    /// The engine's plan of this side on a shard's image at `now` (bypassed when the image's
    /// stamp is live); `debited`: the image already holds this request's debit, planned from
    /// the balance before it.
    fn plan_on<'a>(&'a self, image: &BucketImage, shard: i64, now: EpochMillis, debited: bool) -> SidePlan<'a> {
        let mut read = bucket_read(image, now);
        if debited {
            for held in &mut read.limits {
                if let Some((_, amount)) = self.declared.iter().find(|(n, _)| n == held.name) {
                    held.state.tokens = held.state.tokens + Millitokens(*amount);
                }
            }
        }
        let bypass = image.bypass.as_ref().is_some_and(|b| b.live(now.0));
        let input = SideInput {
            entity: &self.id.entity,
            config: &self.limits.limits,
            requested: &self.declared,
            access: if bypass { Access::Bypass } else { Access::Enforced },
            shard,
            bucket: Some(read),
            new_shard_count: image.shard_count,
            params: Params::Stored,
        };
        acquire::plan_side(input, now)
    }
}

impl Inner {
    /// An entity acquire up to its decision: the namespace and the limits resolved, the child
    /// side built ([`Prepared::Side`]), or the outcome when no limit applies.
    pub(super) async fn prepare_entity(self: &Arc<Self>, request: &EntityRequest) -> Result<Prepared, StoreError> {
        if !keys::is_valid_entity(&request.entity) || !keys::is_valid_resource(&request.resource) {
            return Err(StoreError::Refused(format!(
                "entity '{}' on resource '{}' is outside the zae-limiter identifier rules",
                request.entity, request.resource
            )));
        }
        let ns = self.namespace_id(&request.namespace).await?;
        self.check_version().await?;
        let id = BucketId { ns, entity: request.entity.clone(), resource: request.resource.clone() };
        let limits = self.resolve_limits(&id).await?;
        if let Some(what) = &limits.unsupported {
            return Err(self.unsupported_entity(&id, what));
        }
        if limits.limits.is_empty() {
            path("entity_no_limits");
            return Ok(Prepared::Decided(EntityOutcome::NoLimits));
        }
        let child = Side::new(id, limits, &request.consume);
        for (name, _) in &request.consume {
            if child.limits.limit(name).is_none() {
                tracing::debug!(entity = %child.id.entity, limit = %name, "requested limit not stored for the entity; its parent may have it");
            }
        }
        Ok(Prepared::Side(child))
    }

    /// A parent side: the parent's own limits on the same resource. A parent that has none
    /// of the requested limits is charged nothing, so it gets no write (`declared` empty).
    async fn parent_side(
        &self,
        child: &Side,
        parent: &str,
        consume: &[(Arc<str>, Millitokens)],
    ) -> Result<Side, StoreError> {
        let id = BucketId { ns: child.id.ns.clone(), entity: parent.to_owned(), resource: child.id.resource.clone() };
        if child.overridden {
            let mut side = Side::new(id, child.limits.clone(), consume);
            side.overridden = true;
            return Ok(side);
        }
        let limits = self.resolve_limits(&id).await?;
        if let Some(what) = &limits.unsupported {
            return Err(self.unsupported_entity(&id, what));
        }
        Ok(Side::new(id, limits, consume))
    }

    /// A stored feature zael does not implement: logged once per entity and resource, then
    /// decided by `on_unavailable`.
    pub(super) fn unsupported_entity(&self, id: &BucketId, what: &str) -> StoreError {
        let key = format!("{}/ENTITY#{}#{}", id.ns, id.entity, id.resource);
        if self.caches.warned.insert_if_absent(key, ()) {
            tracing::warn!(entity = %id.entity, resource = %id.resource, feature = %what, "entity uses a zae-limiter feature zael does not implement; deciding per on_unavailable");
        }
        path("unsupported");
        StoreError::Unavailable(format!(
            "entity '{}' on resource '{}' uses {what}, which zael does not implement",
            id.entity, id.resource
        ))
    }

    /// The parent an (entity, resource) cascades to, as its last bucket image said.
    pub(super) fn cached_parent(&self, id: &BucketId) -> Option<String> {
        self.caches.parents.get(id).flatten()
    }

    /// What a bucket image says of its owner: the parent it cascades to, the shard count.
    pub(super) fn learn_parent(&self, id: &BucketId, image: &BucketImage) {
        self.remember_parent(id, image.cascades_to.clone());
        self.learn_count(id, image.shard_count);
    }

    fn remember_parent(&self, id: &BucketId, parent: Option<String>) {
        self.caches.parents.insert(id.clone(), parent);
    }
}

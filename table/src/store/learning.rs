//! What every image teaches the in-process caches (shard count, bypass stamp), and the
//! once-per-bucket report of a feature zael does not implement.

use zael_core::store::StoreError;

use super::request::{Ctx, path};
use super::{BucketId, Inner};
use crate::item::BucketImage;

impl Inner {
    pub(super) fn is_bypassed(&self, id: &BucketId) -> bool {
        self.caches.bypassed.contains(id)
    }

    /// The image overrules the cache in both directions (the library's `_learn_bypass`).
    pub(super) fn learn_bypass(&self, id: &BucketId, image: &BucketImage) {
        if image.bypass.is_some() {
            self.caches.bypassed.insert(id.clone(), ());
        } else {
            self.caches.bypassed.remove(id);
        }
    }

    pub(super) fn learn(&self, id: &BucketId, image: &BucketImage) {
        self.learn_count(id, image.shard_count);
        self.learn_bypass(id, image);
    }

    pub(super) fn unsupported(&self, cx: &Ctx<'_>, shard: i64, what: &str) -> StoreError {
        let pk = cx.pk(shard);
        if self.caches.warned.insert_if_absent(pk, ()) {
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
}

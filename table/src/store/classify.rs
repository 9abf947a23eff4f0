//! Failure classification (§11.3): why a speculative write failed, from its `ALL_OLD` image.

use super::request::Ctx;
use super::{Inner, LIMIT_NAME};
use crate::item::BucketImage;
use crate::keys::{WCU, WCU_PER_WRITE};

/// Why a fast-path write failed, from its `ALL_OLD` image (§11.3).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    Missing,
    Disabled,
    Unsupported(String),
    Boundary,
    ParamsChanged,
    Exhausted { wcu: bool },
}

impl Inner {
    /// §11.3, in the library's order, plus `ParamsChanged` and `Unsupported`.
    pub(super) fn classify(&self, cx: &Ctx<'_>, image: Option<&BucketImage>, bypass_shape: bool) -> Class {
        let Some(image) = image else { return Class::Missing };
        let now = cx.now.0;
        if image.disabled {
            return Class::Disabled;
        }
        if let Some(what) = &image.yaml_unsupported() {
            return Class::Unsupported(what.clone());
        }
        let bypass_live = image.bypass.as_ref().is_some_and(|b| b.live(now));
        let hits = image.limit(LIMIT_NAME);
        let soft_expired = hits.and_then(|h| h.soft.as_ref()).is_some_and(|s| !s.live(now));
        if (!bypass_live && image.bypass.is_some()) || (!bypass_shape && soft_expired) {
            return Class::Boundary;
        }
        if !bypass_shape && hits.is_some_and(|h| !cx.params_match(h)) {
            return Class::ParamsChanged;
        }
        let wcu = image.limit(WCU).is_some_and(|w| w.tk < WCU_PER_WRITE);
        Class::Exhausted { wcu }
    }

    /// Whether a failure image shows the request would have fit (`_failed_only_on_its_stamp`).
    pub(super) fn fits(&self, cx: &Ctx<'_>, image: &BucketImage) -> bool {
        let wcu_ok = image.limit(WCU).is_some_and(|w| w.tk >= WCU_PER_WRITE);
        let hits_ok =
            image.limit(LIMIT_NAME).is_some_and(|h| h.soft.is_some() || image.bypass.is_some() || h.tk >= cx.total);
        wcu_ok && hits_ok
    }
}

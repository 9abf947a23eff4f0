//! Namespaces and the version record: the namespace id (with its `on_unavailable`) and the
//! version gate, resolved before any bucket write.

use aws_sdk_dynamodb::types::AttributeValue;
use std::sync::Arc;
use std::time::Instant;
use zael_core::store::{OnUnavailable, StoreError};

use super::Inner;
use super::request::unavailable;
use crate::keys;

impl Inner {
    pub(super) async fn namespace_id(self: &Arc<Self>, name: &str) -> Result<String, StoreError> {
        if let Some(known) = self.caches.namespaces.get(name) {
            return known.map_err(StoreError::NotFound);
        }
        let item = self.db.get(keys::SYSTEM_PK, &keys::sk_namespace(name), false).await.map_err(unavailable)?;
        let resolved = match item {
            None => Err(format!("namespace '{name}' is not registered in table '{}'", self.db.table)),
            Some(item) => match (item.get("status"), item.get("namespace_id")) {
                (Some(AttributeValue::S(status)), Some(AttributeValue::S(id))) if status == "active" => Ok(id.clone()),
                (status, _) => Err(format!(
                    "namespace '{name}' is not active in table '{}' (status {:?})",
                    self.db.table,
                    status.and_then(|s| s.as_s().ok()).map(String::as_str).unwrap_or("missing")
                )),
            },
        };
        self.caches.namespaces.insert(name.to_owned(), resolved.clone());
        if let Ok(id) = &resolved {
            // The first load is part of this call; refreshes run in the background.
            if self.caches.policies.contains(name) {
                let me = Arc::clone(self);
                let (name, id) = (name.to_owned(), id.clone());
                tokio::spawn(async move { me.load_policy(&name, &id).await });
            } else {
                self.load_policy(name, id).await;
            }
        }
        resolved.map_err(StoreError::NotFound)
    }

    /// Reads `on_unavailable` from the namespace's system config (`{ns}/SYSTEM#` `#CONFIG`);
    /// on a failed read the last value is kept, as the library does.
    async fn load_policy(&self, name: &str, id: &str) {
        let item = match self.db.get(&keys::pk_system(id), keys::SK_CONFIG, false).await {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(error = ?e, namespace = %name, "cannot read the system config; keeping the last on_unavailable");
                return;
            }
        };
        let policy = match item.as_ref().and_then(|i| i.get("on_unavailable")) {
            None => OnUnavailable::Block,
            Some(AttributeValue::S(v)) => v.parse().unwrap_or_else(|e: String| {
                tracing::warn!(namespace = %name, error = %e, "invalid on_unavailable in the system config; using block");
                OnUnavailable::Block
            }),
            Some(other) => {
                tracing::warn!(namespace = %name, value = ?other, "invalid on_unavailable in the system config; using block");
                OnUnavailable::Block
            }
        };
        self.caches.policies.insert(name.to_owned(), policy);
    }

    pub(super) async fn check_version(&self) -> Result<(), StoreError> {
        let cached = self.caches.version.lock().expect("lock").clone();
        if let Some((at, verdict)) = &cached
            && at.elapsed() < self.cache_ttl
        {
            return verdict.clone().map_err(StoreError::Refused);
        }
        let item = match self.db.get(keys::SYSTEM_PK, keys::SK_VERSION, false).await {
            Ok(item) => item,
            Err(e) => {
                // Keep writing under the last verdict while the record cannot be read.
                if let Some((_, verdict)) = cached {
                    tracing::warn!(error = ?e, "cannot re-read the version record; keeping the last verdict");
                    return verdict.map_err(StoreError::Refused);
                }
                return Err(unavailable(e));
            }
        };
        let verdict = match item {
            None => Err(format!(
                "table '{}' has no zae-limiter version record (`_/SYSTEM#` `#VERSION`); open the stack with \
                 zae-limiter first",
                self.db.table
            )),
            Some(item) => {
                let text = |attr: &str| item.get(attr).and_then(|v| v.as_s().ok()).map(String::as_str);
                crate::version::gate(text("schema_version"), text("client_min_version"))
                    .map_err(|m| format!("table '{}': {m}", self.db.table))
            }
        };
        if let Err(message) = &verdict {
            tracing::error!(%message, "zae-limiter version gate refuses writes");
        }
        *self.caches.version.lock().expect("lock") = Some((Instant::now(), verdict.clone()));
        verdict.map_err(StoreError::Refused)
    }
}

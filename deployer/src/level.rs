//! The four config levels the limit commands write (system, resource, entity on a resource
//! or on `_default_`): their item keys, audit names and validation. Domain only: no I/O.

use zael_core::keys::{is_valid_entity_id, is_valid_resource};
use zael_table::keys;

use crate::repo::Result;

/// The resource of entity-level limits that apply to every resource.
pub const DEFAULT_RESOURCE: &str = "_default_";

/// Which config level a command writes.
#[derive(Clone, Debug)]
pub enum Level {
    System,
    Resource(String),
    Entity { entity: String, resource: String },
}

impl Level {
    pub fn key(&self, ns: &str) -> (String, String) {
        match self {
            Level::System => (keys::pk_system(ns), keys::SK_CONFIG.to_owned()),
            Level::Resource(r) => (keys::pk_resource(ns, r), keys::SK_CONFIG.to_owned()),
            Level::Entity { entity, resource } => {
                (keys::pk_entity(ns, entity), format!("{}{resource}", keys::SK_CONFIG_PREFIX))
            }
        }
    }

    /// The audit entity of the level (ADR-106).
    pub fn audit_entity(&self) -> String {
        match self {
            Level::System => "$SYSTEM".into(),
            Level::Resource(r) => format!("$RESOURCE:{r}"),
            Level::Entity { entity, .. } => entity.clone(),
        }
    }

    pub fn audit_resource(&self) -> Option<&str> {
        match self {
            Level::System => None,
            Level::Resource(r) | Level::Entity { resource: r, .. } => Some(r),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let resource_ok = |r: &str| is_valid_resource(r);
        match self {
            Level::System => Ok(()),
            Level::Resource(r) if !resource_ok(r) => Err(invalid_resource(r).into()),
            Level::Resource(_) => Ok(()),
            Level::Entity { entity, .. } if !is_valid_entity_id(entity) => Err(crate::Failure::from(format!(
                "Invalid entity_id: must start with alphanumeric and contain only alphanumeric, underscore, hyphen, dot, colon, or @ characters ('{entity}')"
            ))),
            Level::Entity { resource, .. } if resource != DEFAULT_RESOURCE && !resource_ok(resource) => {
                Err(invalid_resource(resource).into())
            }
            Level::Entity { .. } => Ok(()),
        }
    }
}

fn invalid_resource(r: &str) -> String {
    format!(
        "Invalid resource: must start with a letter and contain only alphanumeric, underscore, hyphen, dot, slash, or colon characters ('{r}')"
    )
}

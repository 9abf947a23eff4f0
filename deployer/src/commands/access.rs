//! The flag commands of entities and resources (`disable|enable|bypass|clear-disabled`,
//! `set-cascade|clear-cascade`): the change and its fan-out (`crate::stamps`), the audit
//! event, and the reference's line.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use super::DataTarget;
use crate::config_item::n;
use crate::repo::Result;
use crate::stamps::{self, Access, Scope};

/// A flag change.
#[derive(Copy, Clone, Debug)]
pub enum Change {
    Access(Access),
    /// `Some`: set the cascade policy; `None`: clear it.
    Cascade(Option<bool>),
}

pub async fn change(data: &DataTarget, scope: Scope<'_>, change: Change) -> Result<()> {
    let (repo, ns) = data.open(true).await?;
    let written = match change {
        Change::Access(access) => stamps::apply(&repo, &ns, &scope, access).await?,
        Change::Cascade(value) => stamps::apply_cascade(&repo, &ns, &scope, value).await?,
    };
    let (audit_entity, resource, what) = match &scope {
        Scope::Entity { entity, resource } => ((*entity).to_owned(), *resource, format!("entity '{entity}'")),
        Scope::Resource(r) => (format!("$RESOURCE:{r}"), *r, format!("resource '{r}'")),
    };
    let (attr, value) = match change {
        Change::Access(access) => ("disabled", access.value()),
        Change::Cascade(value) => ("cascade", value.map(AttributeValue::Bool)),
    };
    let value = value.unwrap_or(AttributeValue::Null(true));
    let details = HashMap::from([(attr.to_owned(), value), ("buckets_stamped".to_owned(), n(written))]);
    repo.audit(&ns, &audit_entity, "limits_set", Some(resource), details).await?;
    match change {
        Change::Access(Access::Disable) => println!("Disabled {what} ({written} buckets stamped)"),
        Change::Access(Access::Enable) => println!("Enabled {what} ({written} buckets cleared)"),
        Change::Access(Access::Bypass) => println!("Bypassed {what} ({written} buckets stamped)"),
        Change::Access(Access::Clear) => println!("Cleared disabled flag for {what} ({written} buckets updated)"),
        Change::Cascade(Some(on)) => {
            println!("Set cascade {} for {what} ({written} buckets stamped)", if on { "on" } else { "off" })
        }
        Change::Cascade(None) => println!("Cleared cascade policy for {what} ({written} buckets updated)"),
    }
    Ok(())
}

//! Access flags on config items (`table-format.md` §8.5, §8.6): `disabled` (true, false or
//! "bypass") on an entity's or a resource's config, and the stamps on existing buckets that
//! let the fast path decide without reading config. Each bucket is stamped with the value
//! resolved for its own entity and resource, so entity overrides survive resource changes.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use zael_table::keys;

use crate::config_item::{Item, n, s};
use crate::level::{DEFAULT_RESOURCE, Level};
use crate::repo::{Repo, Result, describe, now_ms};

/// A flag change.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Disable,
    Enable,
    Bypass,
    Clear,
}

impl Access {
    /// The stored `disabled` value; `None` removes it.
    pub fn value(self) -> Option<AttributeValue> {
        match self {
            Access::Disable => Some(AttributeValue::Bool(true)),
            Access::Enable => Some(AttributeValue::Bool(false)),
            Access::Bypass => Some(s("bypass")),
            Access::Clear => None,
        }
    }
}

/// Where a flag is set: an entity (on one resource, or `_default_` for all) or a resource.
pub enum Scope<'a> {
    Entity { entity: &'a str, resource: &'a str },
    Resource(&'a str),
}

/// What a bucket's walk resolves to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Resolved {
    Enforced,
    Disabled,
    Bypass,
}

fn resolved_of(value: Option<&AttributeValue>) -> Option<Resolved> {
    match value {
        Some(AttributeValue::Bool(true)) => Some(Resolved::Disabled),
        Some(AttributeValue::Bool(false)) => Some(Resolved::Enforced),
        Some(AttributeValue::S(v)) if v == "bypass" => Some(Resolved::Bypass),
        _ => None,
    }
}

/// Sets or clears the flag on the config item (an upsert keeping the item's limits), stamps
/// the existing buckets, and returns how many were written.
pub async fn apply(repo: &Repo, ns: &str, scope: &Scope<'_>, access: Access) -> Result<usize> {
    upsert(repo, ns, scope, "disabled", access.value()).await?;
    let mut written = 0;
    let mut walks: HashMap<(String, String), Resolved> = HashMap::new();
    for (bucket_pk, entity, resource) in buckets(repo, ns, scope).await? {
        let key = (entity.clone(), resource.clone());
        let state = match walks.get(&key) {
            Some(state) => *state,
            None => {
                let state = walk(repo, ns, &entity, &resource).await?;
                walks.insert(key, state);
                state
            }
        };
        if stamp(repo, &bucket_pk, state).await? {
            written += 1;
        }
    }
    Ok(written)
}

/// Sets (`Some`) or clears the `cascade` policy on the config item, then restamps each
/// existing bucket with its owner's resolved policy (the walk's first explicit `cascade`, else
/// META's) and parent; returns how many were written.
pub async fn apply_cascade(repo: &Repo, ns: &str, scope: &Scope<'_>, cascade: Option<bool>) -> Result<usize> {
    upsert(repo, ns, scope, "cascade", cascade.map(AttributeValue::Bool)).await?;
    let mut written = 0;
    for (bucket_pk, entity, resource) in buckets(repo, ns, scope).await? {
        let meta = repo.get(&keys::pk_entity(ns, &entity), keys::SK_META).await?;
        let parent = match meta.as_ref().and_then(|m| m.get("parent_id")) {
            Some(AttributeValue::S(p)) => Some(p.clone()),
            _ => None,
        };
        let meta_cascade = matches!(meta.as_ref().and_then(|m| m.get("cascade")), Some(AttributeValue::Bool(true)));
        let owner = Owner { parent: parent.as_deref(), meta_cascade, pgen: None };
        written += usize::from(stamp_owner(repo, ns, &bucket_pk, &entity, &resource, &owner).await?);
    }
    Ok(written)
}

/// After a parent move: each bucket of `entity` gets the new owner stamp (`parent_id`,
/// `pgen`) and its resolved cascade policy; returns how many were written.
pub async fn restamp_owner(repo: &Repo, ns: &str, entity: &str, owner: &Owner<'_>) -> Result<usize> {
    let scope = Scope::Entity { entity, resource: DEFAULT_RESOURCE };
    let mut written = 0;
    for (bucket_pk, entity, resource) in buckets(repo, ns, &scope).await? {
        written += usize::from(stamp_owner(repo, ns, &bucket_pk, &entity, &resource, owner).await?);
    }
    Ok(written)
}

/// What a bucket's owner stamp comes from: the owner's parent, META's `cascade`, and a new
/// parent generation when the owner moved.
pub struct Owner<'a> {
    pub parent: Option<&'a str>,
    pub meta_cascade: bool,
    pub pgen: Option<i64>,
}

/// Stamps one bucket with its owner's parent and resolved cascade policy; `false` when the
/// bucket is gone.
async fn stamp_owner(
    repo: &Repo,
    ns: &str,
    bucket_pk: &str,
    entity: &str,
    resource: &str,
    owner: &Owner<'_>,
) -> Result<bool> {
    let policy = match first_explicit(repo, ns, entity, resource, "cascade").await? {
        Some(AttributeValue::Bool(c)) => c,
        _ => owner.meta_cascade,
    };
    let mut set = vec!["#c = :c"];
    let mut request = repo
        .db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(bucket_pk))
        .key("SK", s(keys::SK_STATE))
        .condition_expression("attribute_exists(PK)")
        .expression_attribute_names("#c", "cascade")
        .expression_attribute_names("#p", "parent_id")
        .expression_attribute_values(":c", AttributeValue::Bool(policy && owner.parent.is_some()));
    if let Some(pgen) = owner.pgen {
        set.push("#g = :g");
        request = request.expression_attribute_names("#g", "pgen").expression_attribute_values(":g", n(pgen));
    }
    let update = match owner.parent {
        Some(p) => {
            set.push("#p = :p");
            request = request.expression_attribute_values(":p", s(p));
            format!("SET {}", set.join(", "))
        }
        None => format!("SET {} REMOVE #p", set.join(", ")),
    };
    match request.update_expression(update).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(format!("Failed to stamp a bucket: {}", describe(&e)).into()),
    }
}

/// The first explicit `attr` of the walk: entity+resource, entity default, resource.
async fn first_explicit(
    repo: &Repo,
    ns: &str,
    entity: &str,
    resource: &str,
    attr: &str,
) -> Result<Option<AttributeValue>> {
    for (pk, sk) in keys::config_levels(ns, entity, resource).into_iter().take(3) {
        if let Some(value) = repo.get(&pk, &sk).await?.and_then(|mut i| i.remove(attr)) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// Sets (`Some`) or removes `attr` on the scope's config item, creating a flags-only item
/// (with its keys) when there is none.
async fn upsert(repo: &Repo, ns: &str, scope: &Scope<'_>, attr: &str, value: Option<AttributeValue>) -> Result<()> {
    let fail = |e: String| format!("Failed to update the {attr} flag: {e}");
    let (pk, sk) = match scope {
        Scope::Entity { entity, resource } => {
            Level::Entity { entity: (*entity).to_owned(), resource: (*resource).to_owned() }.key(ns)
        }
        Scope::Resource(r) => Level::Resource((*r).to_owned()).key(ns),
    };
    let mut names = HashMap::from([("#d".to_owned(), attr.to_owned())]);
    let mut values: Item = HashMap::new();
    let mut sets = Vec::new();
    let mut keep = |attr: &str, value: AttributeValue, names: &mut HashMap<String, String>, values: &mut Item| {
        let i = names.len();
        names.insert(format!("#k{i}"), attr.to_owned());
        values.insert(format!(":k{i}"), value);
        sets.push(format!("#k{i} = if_not_exists(#k{i}, :k{i})"));
    };
    match scope {
        Scope::Entity { entity, resource } => {
            keep("entity_id", s(*entity), &mut names, &mut values);
            keep("resource", s(*resource), &mut names, &mut values);
            keep("GSI3PK", s(format!("{ns}/ENTITY_CONFIG#{resource}")), &mut names, &mut values);
            keep("GSI3SK", s(*entity), &mut names, &mut values);
        }
        Scope::Resource(r) => keep("resource", s(*r), &mut names, &mut values),
    }
    keep("GSI4PK", s(ns), &mut names, &mut values);
    keep("GSI4SK", s(&pk), &mut names, &mut values);
    let update = match value {
        Some(v) => {
            values.insert(":d".into(), v);
            sets.push("#d = :d".into());
            format!("SET {}", sets.join(", "))
        }
        None => format!("SET {} REMOVE #d", sets.join(", ")),
    };
    repo.db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(&pk))
        .key("SK", s(&sk))
        .update_expression(update)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    Ok(())
}

/// The walk's access: the first explicit `disabled` (entity+resource, entity default, resource).
async fn walk(repo: &Repo, ns: &str, entity: &str, resource: &str) -> Result<Resolved> {
    let explicit = first_explicit(repo, ns, entity, resource, "disabled").await?;
    Ok(resolved_of(explicit.as_ref()).unwrap_or(Resolved::Enforced))
}

async fn stamp(repo: &Repo, pk: &str, state: Resolved) -> Result<bool> {
    let mut request = repo
        .db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(pk))
        .key("SK", s(keys::SK_STATE))
        .condition_expression("attribute_exists(PK)")
        .expression_attribute_names("#d", "disabled")
        .expression_attribute_names("#b", "bypass");
    request = match state {
        Resolved::Disabled => request
            .update_expression("SET #d = :t REMOVE #b")
            .expression_attribute_values(":t", AttributeValue::Bool(true)),
        Resolved::Bypass => request
            .update_expression("SET #b = :deadline REMOVE #d")
            .expression_attribute_values(":deadline", n(zael_table::keys::stamp_deadline(now_ms()))),
        Resolved::Enforced => request.update_expression("REMOVE #d, #b"),
    };
    match request.send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(format!("Failed to stamp a bucket: {}", describe(&e)).into()),
    }
}

/// The bucket shards a flag change touches: `(PK, entity, resource)`.
pub async fn buckets(repo: &Repo, ns: &str, scope: &Scope<'_>) -> Result<Vec<(String, String, String)>> {
    let (index, pk_attr, pk, sk_attr, prefix) = match scope {
        Scope::Entity { entity, resource } if *resource == DEFAULT_RESOURCE => {
            ("GSI3", "GSI3PK", keys::pk_entity(ns, entity), "GSI3SK", "BUCKET#".to_owned())
        }
        Scope::Entity { entity, resource } => {
            ("GSI3", "GSI3PK", keys::pk_entity(ns, entity), "GSI3SK", format!("BUCKET#{resource}#"))
        }
        Scope::Resource(r) => ("GSI2", "GSI2PK", keys::gsi2_pk(ns, r), "GSI2SK", "BUCKET#".to_owned()),
    };
    let items = repo
        .query_all(|q| {
            q.index_name(index)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#pk", pk_attr)
                .expression_attribute_names("#sk", sk_attr)
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":prefix", s(&prefix))
        })
        .await
        .map_err(|e| format!("Failed to find buckets: {e}"))?;
    Ok(items
        .iter()
        .filter_map(|item| match item.get("PK") {
            Some(AttributeValue::S(bucket_pk)) => zael_table::keys::parse_pk_bucket(bucket_pk)
                .filter(|(bucket_ns, ..)| *bucket_ns == ns)
                .map(|(_, entity, resource, _)| (bucket_pk.clone(), entity.to_owned(), resource.to_owned())),
            _ => None,
        })
        .collect())
}

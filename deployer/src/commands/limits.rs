//! `zae-limiter system|resource|entity` limit commands (§6): the config items of the four
//! levels, written as the library writes them (full-replace Puts, registries, the param sync
//! of entity-level limits onto existing buckets, audit events).

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use std::collections::HashMap;
use zael_table::keys;

use crate::config_item::{self, Item, n, s};
use crate::level::Level;
use crate::limit_spec::{self, LimitSpec};
use crate::prompt::confirm_or_cancel;
use crate::repo::{Repo, Result, describe};

/// Writes the level's limits (full replace, keeping its `disabled`/`cascade` flags), the
/// registries, the entity-level param sync and the audit event.
pub async fn set(
    repo: &Repo,
    ns: &str,
    level: &Level,
    limits: &[LimitSpec],
    on_unavailable: Option<&str>,
) -> Result<()> {
    let (pk, sk) = level.key(ns);
    let existing = repo.get(&pk, &sk).await?;
    let mut item = Item::from([
        ("PK".to_owned(), s(&pk)),
        ("SK".to_owned(), s(&sk)),
        ("config_version".to_owned(), n(1)),
        ("GSI4PK".to_owned(), s(ns)),
        ("GSI4SK".to_owned(), s(&pk)),
    ]);
    match level {
        Level::System => {
            let kept = existing.as_ref().and_then(|i| i.get("on_unavailable")).cloned();
            if let Some(v) = on_unavailable.map(s).or(kept) {
                item.insert("on_unavailable".into(), v);
            }
            if let Some(days) = existing.as_ref().and_then(|i| i.get("audit_retention_days")) {
                item.insert("audit_retention_days".into(), days.clone());
            }
        }
        Level::Resource(r) => {
            item.insert("resource".into(), s(r));
        }
        Level::Entity { entity, resource } => {
            item.insert("entity_id".into(), s(entity));
            item.insert("resource".into(), s(resource));
            item.insert("GSI3PK".into(), s(format!("{ns}/ENTITY_CONFIG#{resource}")));
            item.insert("GSI3SK".into(), s(entity));
        }
    }
    if !matches!(level, Level::System) {
        for flag in ["disabled", "cascade"] {
            if let Some(v) = existing.as_ref().and_then(|i| i.get(flag)) {
                item.insert(flag.into(), v.clone());
            }
        }
    }
    config_item::put_limits(&mut item, limits);
    let fail = |e: String| format!("Failed to set limits: {e}");
    match level {
        Level::Entity { resource, .. } => {
            let put = Put::builder()
                .table_name(&repo.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(PK)")
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let registry = Update::builder()
                .table_name(&repo.table)
                .key("PK", s(keys::pk_system(ns)))
                .key("SK", s("#ENTITY_CONFIG_RESOURCES"))
                .update_expression(
                    "SET GSI4PK = if_not_exists(GSI4PK, :gsi4pk), GSI4SK = if_not_exists(GSI4SK, :gsi4sk) ADD #resource :one",
                )
                .expression_attribute_names("#resource", resource)
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":gsi4pk", s(ns))
                .expression_attribute_values(":gsi4sk", s(keys::pk_system(ns)))
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let created = repo
                .db
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().update(registry).build())
                .send()
                .await;
            if let Err(e) = created {
                let exists = match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        c.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed")
                    }
                    _ => false,
                };
                if !exists {
                    return Err(fail(describe(&e)).into());
                }
                put_item(repo, item).await.map_err(fail)?;
            }
        }
        Level::Resource(r) => {
            put_item(repo, item).await.map_err(fail)?;
            repo.db
                .update_item()
                .table_name(&repo.table)
                .key("PK", s(keys::pk_system(ns)))
                .key("SK", s("#RESOURCES"))
                .update_expression(
                    "SET GSI4PK = if_not_exists(GSI4PK, :gsi4pk), GSI4SK = if_not_exists(GSI4SK, :gsi4sk) ADD resources :r",
                )
                .expression_attribute_values(":r", AttributeValue::Ss(vec![r.clone()]))
                .expression_attribute_values(":gsi4pk", s(ns))
                .expression_attribute_values(":gsi4sk", s(keys::pk_system(ns)))
                .send()
                .await
                .map_err(|e| fail(describe(&e)))?;
        }
        Level::System => put_item(repo, item).await.map_err(fail)?,
    }
    if let Level::Entity { entity, resource } = level {
        crate::param_sync::sync(repo, ns, entity, resource, limits).await?;
    }
    let mut details = HashMap::from([("limits".to_owned(), config_item::audit_limits(limits))]);
    if matches!(level, Level::System) {
        details.insert("on_unavailable".into(), on_unavailable.map_or(AttributeValue::Null(true), s));
    }
    repo.audit(ns, &level.audit_entity(), "limits_set", level.audit_resource(), details).await
}

async fn put_item(repo: &Repo, item: Item) -> std::result::Result<(), String> {
    repo.db.put_item().table_name(&repo.table).set_item(Some(item)).send().await.map_err(|e| describe(&e))?;
    Ok(())
}

/// The level's item, if any.
pub async fn get(repo: &Repo, ns: &str, level: &Level) -> Result<Option<Item>> {
    let (pk, sk) = level.key(ns);
    repo.get(&pk, &sk).await
}

/// The display lines of an item's limits, indented.
pub fn limit_lines(item: &Item, indent: &str) -> Vec<String> {
    config_item::read_limits(item)
        .into_iter()
        .map(|(l, note)| match note {
            None => format!("{indent}{}", l.display()),
            Some(note) => format!("{indent}{}: {note}", l.name),
        })
        .collect()
}

/// A getter's output: `header` and the limits, or `none`; then the explicit flags (§6).
pub fn print_limits(item: Option<&Item>, header: &str, none: &str) {
    let lines = item.map(|i| limit_lines(i, "  ")).unwrap_or_default();
    if lines.is_empty() {
        println!("{none}");
    } else {
        println!("{header}");
        lines.iter().for_each(|l| println!("{l}"));
    }
    for line in item.map(config_item::flag_lines).unwrap_or_default() {
        println!("{line}");
    }
}

/// Deletes the level's item (the entity level also decrements its registry count); audited.
/// `false` when there was nothing to delete.
pub async fn delete(repo: &Repo, ns: &str, level: &Level) -> Result<bool> {
    let (pk, sk) = level.key(ns);
    let fail = |e: String| format!("Failed to delete limits: {e}");
    let existing = repo.get(&pk, &sk).await?;
    let Some(existing) = existing else { return Ok(false) };
    repo.db
        .delete_item()
        .table_name(&repo.table)
        .key("PK", s(&pk))
        .key("SK", s(&sk))
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let mut details = HashMap::new();
    match level {
        Level::Entity { resource, .. } => {
            repo.db
                .update_item()
                .table_name(&repo.table)
                .key("PK", s(keys::pk_system(ns)))
                .key("SK", s("#ENTITY_CONFIG_RESOURCES"))
                .update_expression("ADD #resource :minus_one")
                .expression_attribute_names("#resource", resource)
                .expression_attribute_values(":minus_one", n(-1))
                .send()
                .await
                .map_err(|e| fail(describe(&e)))?;
        }
        Level::Resource(r) => {
            repo.db
                .update_item()
                .table_name(&repo.table)
                .key("PK", s(keys::pk_system(ns)))
                .key("SK", s("#RESOURCES"))
                .update_expression("DELETE resources :r")
                .expression_attribute_values(":r", AttributeValue::Ss(vec![r.clone()]))
                .send()
                .await
                .map_err(|e| fail(describe(&e)))?;
        }
        Level::System => {
            let names: Vec<AttributeValue> =
                config_item::read_limits(&existing).into_iter().map(|(l, _)| s(l.name)).collect();
            details.insert("names".to_owned(), AttributeValue::L(names));
            details.insert(
                "on_unavailable".to_owned(),
                existing.get("on_unavailable").cloned().unwrap_or(AttributeValue::Null(true)),
            );
        }
    }
    repo.audit(ns, &level.audit_entity(), "limits_deleted", level.audit_resource(), details).await?;
    Ok(true)
}

/// Parses `-l`/`--soft` before any AWS call.
pub fn parse_limits(specs: &[String], soft: &[String]) -> Result<Vec<LimitSpec>> {
    Ok(limit_spec::parse_all(specs, soft)?)
}

/// A cancel prompt, then the deletion.
pub async fn delete_confirmed(repo: &Repo, ns: &str, level: &Level, yes: bool, question: &str) -> Result<bool> {
    if !confirm_or_cancel(yes, question)? {
        println!("Cancelled");
        return Ok(false);
    }
    delete(repo, ns, level).await.map(|_| true)
}

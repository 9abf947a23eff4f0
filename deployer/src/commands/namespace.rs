//! `zae-limiter namespace …` (§5): the registry records at `_/SYSTEM#`.

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use zael_table::keys::{self, RESERVED_NAMESPACE, SYSTEM_PK};

use crate::ascii_table;
use crate::config_item::{Item, s};
use crate::prompt::confirm_or_abort;
use crate::repo::{Repo, Result, Target, describe};

#[derive(Debug, clap::Subcommand)]
pub enum NamespaceCommand {
    /// Register one or more namespaces (idempotent).
    Register {
        #[arg(required = true)]
        namespaces: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the registered namespaces.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one namespace.
    Show {
        namespace: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a namespace: its data is orphaned, recoverable with `recover`.
    Delete {
        namespace: String,
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Recover a deleted namespace by its ID.
    Recover {
        namespace_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// List deleted namespaces whose data is still there.
    Orphans {
        #[command(flatten)]
        target: Target,
    },
    /// Permanently delete every item of a deleted namespace.
    Purge {
        namespace_id: String,
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn text(item: &Item, attr: &str) -> String {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => String::new(),
    }
}

async fn registry(repo: &Repo, prefix: &str) -> Result<Vec<Item>> {
    Ok(repo
        .query_all(|q| {
            q.key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
                .expression_attribute_values(":pk", s(SYSTEM_PK))
                .expression_attribute_values(":prefix", s(prefix))
        })
        .await?)
}

pub async fn run(command: NamespaceCommand) -> Result<()> {
    match command {
        NamespaceCommand::Register { namespaces, target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            let mut ids = Vec::with_capacity(namespaces.len());
            for name in &namespaces {
                if name == RESERVED_NAMESPACE {
                    return Err("Invalid namespace: reserved for system use".into());
                }
                let id = zael_table::admin::register_namespace(&repo.db, &repo.table, name)
                    .await
                    .map_err(|e| format!("Failed to register namespace: {e}"))?;
                ids.push(id);
            }
            if let [id] = ids.as_slice() {
                println!("Registered namespace '{}': {id}", namespaces[0]);
            } else {
                println!("Registered {} namespace(s):", ids.len());
                for (name, id) in namespaces.iter().zip(&ids) {
                    println!("  {name}: {id}");
                }
            }
        }
        NamespaceCommand::List { target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            let items = registry(&repo, "#NAMESPACE#").await.map_err(|e| format!("Failed to list namespaces: {e}"))?;
            let mut rows: Vec<Vec<String>> = items
                .iter()
                .filter(|i| text(i, "status") == "active" || text(i, "status").is_empty())
                .map(|i| vec![text(i, "namespace_name"), text(i, "namespace_id"), text(i, "created_at")])
                .collect();
            if rows.is_empty() {
                println!("No namespaces registered.");
                return Ok(());
            }
            rows.sort();
            println!("{}", ascii_table::render(&["Name", "Namespace ID", "Created At"], &rows));
            println!();
            println!("Total: {} namespace(s)", rows.len());
        }
        NamespaceCommand::Show { namespace, target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            let item = repo.get(SYSTEM_PK, &keys::sk_namespace(&namespace)).await?;
            let Some(item) = item.filter(|i| text(i, "status") != "deleted") else {
                return Err(crate::Failure::from(format!(
                    "Namespace '{namespace}' not found. Register it with 'zae-limiter namespace register {namespace}'."
                )));
            };
            println!("Namespace:    {}", text(&item, "namespace_name"));
            println!("Namespace ID: {}", text(&item, "namespace_id"));
            println!("Status:       {}", text(&item, "status"));
            println!("Created At:   {}", text(&item, "created_at"));
        }
        NamespaceCommand::Delete { namespace, yes, target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            if namespace == RESERVED_NAMESPACE {
                return Err("Invalid namespace: reserved for system use".into());
            }
            confirm_or_abort(yes, &format!("Delete namespace '{namespace}'? Data will be orphaned but recoverable."))?;
            if zael_table::admin::resolve_namespace(&repo.db, &repo.table, &namespace).await?.is_some() {
                zael_table::admin::delete_namespace(&repo.db, &repo.table, &namespace)
                    .await
                    .map_err(|e| format!("Failed to delete namespace: {e}"))?;
            }
            println!("Namespace '{namespace}' deleted (data orphaned, recoverable).");
        }
        NamespaceCommand::Recover { namespace_id, target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            let name = recover(&repo, &namespace_id).await?;
            println!("Recovered namespace '{name}' (ID: {namespace_id}).");
        }
        NamespaceCommand::Orphans { target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            let items = registry(&repo, "#NSID#").await.map_err(|e| format!("Failed to list orphans: {e}"))?;
            let mut rows: Vec<Vec<String>> = items
                .iter()
                .filter(|i| text(i, "status") == "deleted")
                .map(|i| vec![text(i, "namespace_id"), text(i, "namespace_name"), text(i, "deleted_at")])
                .collect();
            if rows.is_empty() {
                println!("No orphaned namespaces.");
                return Ok(());
            }
            rows.sort();
            println!("{}", ascii_table::render(&["Namespace ID", "Name", "Deleted At"], &rows));
            println!();
            println!("Total: {} orphaned namespace(s)", rows.len());
        }
        NamespaceCommand::Purge { namespace_id, yes, target } => {
            let repo = Repo::connect(&target, None).await?;
            repo.check_compatible().await?;
            confirm_or_abort(
                yes,
                &format!("PERMANENTLY delete ALL data for namespace ID '{namespace_id}'? This cannot be undone."),
            )?;
            purge(&repo, &namespace_id).await?;
            println!("Purged namespace '{namespace_id}'. All data permanently deleted.");
        }
    }
    Ok(())
}

/// The library's `recover_namespace`.
async fn recover(repo: &Repo, id: &str) -> Result<String> {
    let Some(item) = repo.get(SYSTEM_PK, &keys::sk_nsid(id)).await? else {
        return Err(crate::Failure::from(format!("Namespace ID '{id}' not found.")));
    };
    let name = text(&item, "namespace_name");
    match text(&item, "status").as_str() {
        "purging" => {
            return Err(crate::Failure::from(format!(
                "Cannot recover namespace '{name}' — purge is in progress and is terminal"
            )));
        }
        "active" => return Err(crate::Failure::from(format!("Namespace '{name}' is already active (not deleted)"))),
        _ => {}
    }
    let created = match text(&item, "created_at") {
        c if c.is_empty() => zael_table::admin::iso_now(),
        c => c,
    };
    let forward = Item::from([
        ("PK".to_owned(), s(SYSTEM_PK)),
        ("SK".to_owned(), s(keys::sk_namespace(&name))),
        ("namespace_id".to_owned(), s(id)),
        ("namespace_name".to_owned(), s(&name)),
        ("status".to_owned(), s("active")),
        ("created_at".to_owned(), s(created)),
        ("GSI4PK".to_owned(), s(RESERVED_NAMESPACE)),
        ("GSI4SK".to_owned(), s(SYSTEM_PK)),
    ]);
    match repo.put_new(forward).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(crate::Failure::from(format!(
                "Cannot recover namespace '{name}' — the name has been re-registered by another caller"
            )));
        }
        Err(e) => return Err(crate::Failure::from(format!("Failed to recover namespace: {e}"))),
    }
    repo.db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(SYSTEM_PK))
        .key("SK", s(keys::sk_nsid(id)))
        .update_expression("SET #status = :active REMOVE deleted_at")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":active", s("active"))
        .send()
        .await
        .map_err(|e| format!("Failed to recover namespace: {}", describe(&e)))?;
    Ok(name)
}

/// The library's `purge_namespace`: refuses an active namespace, marks it `purging`, deletes
/// every item of its GSI4 partition 25 at a time, then the reverse record.
async fn purge(repo: &Repo, id: &str) -> Result<()> {
    let Some(item) = repo.get(SYSTEM_PK, &keys::sk_nsid(id)).await? else { return Ok(()) };
    if text(&item, "status") == "active" {
        return Err(crate::Failure::from(format!(
            "Cannot purge namespace '{}' — it is active; delete it first",
            text(&item, "namespace_name")
        )));
    }
    let fail = |e: String| format!("Failed to purge namespace: {e}");
    repo.db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(SYSTEM_PK))
        .key("SK", s(keys::sk_nsid(id)))
        .update_expression("SET #status = :purging")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":purging", s("purging"))
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let mut start = None;
    loop {
        let out = repo
            .db
            .query()
            .table_name(&repo.table)
            .index_name("GSI4")
            .key_condition_expression("GSI4PK = :ns")
            .expression_attribute_values(":ns", s(id))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| fail(describe(&e)))?;
        let keys: Vec<Item> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| {
                Some(Item::from([("PK".to_owned(), i.get("PK")?.clone()), ("SK".to_owned(), i.get("SK")?.clone())]))
            })
            .collect();
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    WriteRequest::builder()
                        .delete_request(DeleteRequest::builder().set_key(Some(k.clone())).build().expect("key set"))
                        .build()
                })
                .collect();
            for attempt in 0..5u32 {
                let out = repo
                    .db
                    .batch_write_item()
                    .request_items(&repo.table, requests.clone())
                    .send()
                    .await
                    .map_err(|e| fail(describe(&e)))?;
                requests = out.unprocessed_items.unwrap_or_default().remove(&repo.table).unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if !requests.is_empty() {
                return Err(crate::Failure::from(fail(format!(
                    "{} items were left undeleted; the namespace stays 'purging': run purge again",
                    requests.len()
                ))));
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    repo.db
        .delete_item()
        .table_name(&repo.table)
        .key("PK", s(SYSTEM_PK))
        .key("SK", s(keys::sk_nsid(id)))
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    Ok(())
}

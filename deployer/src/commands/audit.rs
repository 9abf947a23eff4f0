//! `zae-limiter audit list` (§7).

use aws_sdk_dynamodb::types::AttributeValue;

use super::DataTarget;
use crate::ascii_table;
use crate::config_item::s;
use crate::repo::{Result, describe};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List an entity's audit events, newest first.
    List {
        #[arg(short = 'e', long = "entity-id", required = true)]
        entity_id: String,
        #[arg(short = 'l', long = "limit", default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..))]
        limit: i32,
        /// Continue after this event ID.
        #[arg(long)]
        start_event_id: Option<String>,
        #[command(flatten)]
        data: DataTarget,
    },
}

pub async fn run(command: AuditCommand) -> Result<()> {
    let AuditCommand::List { entity_id, limit, start_event_id, data } = command;
    let (repo, ns) = data.open(false).await?;
    let pk = format!("{ns}/AUDIT#{entity_id}");
    let start = start_event_id.map(|id| {
        std::collections::HashMap::from([("PK".to_owned(), s(&pk)), ("SK".to_owned(), s(format!("#AUDIT#{id}")))])
    });
    let out = repo
        .db
        .query()
        .table_name(&repo.table)
        .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
        .expression_attribute_values(":pk", s(&pk))
        .expression_attribute_values(":prefix", s("#AUDIT#"))
        .scan_index_forward(false)
        .limit(limit)
        .set_exclusive_start_key(start)
        .send()
        .await
        .map_err(|e| format!("Failed to list audit events: {}", describe(&e)))?;
    let items = out.items.unwrap_or_default();
    if items.is_empty() {
        println!("No audit events found for entity: {entity_id}");
        return Ok(());
    }
    let cell = |item: &std::collections::HashMap<String, AttributeValue>, a: &str| match item.get(a) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => "-".to_owned(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| vec![cell(i, "timestamp"), cell(i, "action"), cell(i, "principal"), cell(i, "resource")])
        .collect();
    println!();
    println!("Audit Events for: {entity_id}");
    println!();
    println!("{}", ascii_table::render(&["Timestamp", "Action", "Principal", "Resource"], &rows));
    println!();
    println!("Total: {} events", rows.len());
    if rows.len() == limit as usize {
        println!("More events may exist. Use --start-event-id {}", cell(items.last().expect("not empty"), "event_id"));
    }
    Ok(())
}

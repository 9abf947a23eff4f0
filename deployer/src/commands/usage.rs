//! `zae-limiter usage list|summary` (§7): the usage snapshots the aggregator writes
//! (`table-format.md` §13.2), by entity or by resource.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};

use super::DataTarget;
use crate::ascii_table;
use crate::config_item::{Item, s};
use crate::limit_spec::thousands;
use crate::repo::{Repo, Result, describe};

/// Attributes of a snapshot that are not counters.
const RESERVED: [&str; 10] =
    ["PK", "SK", "entity_id", "resource", "window", "window_start", "total_events", "GSI2PK", "GSI2SK", "ttl"];

#[derive(Debug, clap::Args)]
pub struct Filters {
    #[arg(short = 'e', long = "entity-id")]
    pub entity_id: Option<String>,
    #[arg(short = 'r', long)]
    pub resource: Option<String>,
    #[arg(short = 'w', long, value_parser = ["hourly", "daily", "monthly"])]
    pub window: Option<String>,
    /// Earliest window start (ISO 8601).
    #[arg(long)]
    pub start: Option<String>,
    /// Latest window start (ISO 8601).
    #[arg(long)]
    pub end: Option<String>,
    #[command(flatten)]
    pub data: DataTarget,
}

#[derive(Debug, clap::Subcommand)]
pub enum UsageCommand {
    /// List usage snapshots.
    List {
        #[command(flatten)]
        filters: Filters,
        #[arg(short = 'l', long = "limit", default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..))]
        limit: i32,
        /// ASCII charts (not available in this CLI: the table is printed).
        #[arg(short = 'p', long)]
        plot: bool,
    },
    /// Totals and averages per limit.
    Summary {
        #[command(flatten)]
        filters: Filters,
    },
}

fn text(item: &Item, attr: &str) -> String {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => v.clone(),
        Some(AttributeValue::N(v)) => v.clone(),
        _ => String::new(),
    }
}

/// The counters of a snapshot: every numeric attribute but the reserved ones and `#od`.
fn counters(item: &Item) -> BTreeMap<String, i64> {
    item.iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !k.ends_with("#od"))
        .filter_map(|(k, v)| match v {
            AttributeValue::N(n) => n.parse::<f64>().ok().map(|f| (k.clone(), f as i64)),
            _ => None,
        })
        .collect()
}

fn signed(n: i64) -> String {
    if n < 0 { format!("-{}", thousands(n.unsigned_abs())) } else { thousands(n as u64) }
}

/// One page of snapshots, newest first: by entity (optionally one resource) or by resource.
async fn page(
    repo: &Repo,
    ns: &str,
    filters: &Filters,
    limit: i32,
    start: Option<HashMap<String, AttributeValue>>,
) -> Result<(Vec<Item>, Option<HashMap<String, AttributeValue>>)> {
    let query =
        repo.db.query().table_name(&repo.table).scan_index_forward(false).limit(limit).set_exclusive_start_key(start);
    let query = match (&filters.entity_id, &filters.resource) {
        (Some(e), resource) => query
            .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
            .expression_attribute_values(":pk", s(zael_table::keys::pk_entity(ns, e)))
            .expression_attribute_values(
                ":prefix",
                s(resource.as_ref().map_or("#USAGE#".to_owned(), |r| format!("#USAGE#{r}#"))),
            ),
        (None, Some(r)) => query
            .index_name("GSI2")
            .key_condition_expression("GSI2PK = :pk AND begins_with(GSI2SK, :prefix)")
            .expression_attribute_values(":pk", s(zael_table::keys::gsi2_pk(ns, r)))
            .expression_attribute_values(":prefix", s("USAGE#")),
        (None, None) => return Err("Either --entity-id or --resource must be provided".into()),
    };
    let out = query.send().await.map_err(|e| describe(&e))?;
    Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
}

fn keep(filters: &Filters, item: &Item) -> bool {
    let start = text(item, "window_start");
    filters.window.as_ref().is_none_or(|w| text(item, "window") == *w)
        && filters.start.as_ref().is_none_or(|s| start.as_str() >= s.as_str())
        && filters.end.as_ref().is_none_or(|e| start.as_str() <= e.as_str())
}

pub async fn run(command: UsageCommand) -> Result<()> {
    match command {
        UsageCommand::List { filters, limit, plot } => {
            if filters.entity_id.is_none() && filters.resource.is_none() {
                return Err("Either --entity-id or --resource must be provided".into());
            }
            let (repo, ns) = filters.data.open(false).await?;
            let (items, more) = page(&repo, &ns, &filters, limit, None)
                .await
                .map_err(|e| crate::Failure::from(format!("Failed to list usage snapshots: {e}")))?;
            let items: Vec<&Item> = items.iter().filter(|i| keep(&filters, i)).collect();
            if items.is_empty() {
                println!("No usage snapshots found");
                return Ok(());
            }
            if plot {
                eprintln!("Warning: charts are not available in this CLI");
                eprintln!("Falling back to table format...");
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let counters: Vec<String> =
                        counters(i).iter().map(|(k, v)| format!("{k}={}", signed(*v))).collect();
                    vec![
                        text(i, "window_start"),
                        text(i, "window"),
                        text(i, "resource"),
                        text(i, "entity_id"),
                        text(i, "total_events"),
                        counters.join(", "),
                    ]
                })
                .collect();
            println!();
            println!("Usage Snapshots");
            println!();
            println!(
                "{}",
                ascii_table::render(&["Window Start", "Type", "Resource", "Entity", "Events", "Counters"], &rows)
            );
            println!();
            println!("Total: {} snapshots", rows.len());
            if more.is_some() {
                println!();
                println!("More snapshots exist. Use pagination to see more.");
            }
        }
        UsageCommand::Summary { filters } => {
            if filters.entity_id.is_none() && filters.resource.is_none() {
                return Err("Either --entity-id or --resource must be provided".into());
            }
            let (repo, ns) = filters.data.open(false).await?;
            let mut snapshots = Vec::new();
            let mut start = None;
            loop {
                let (items, next) = page(&repo, &ns, &filters, 1000, start)
                    .await
                    .map_err(|e| crate::Failure::from(format!("Failed to get usage summary: {e}")))?;
                snapshots.extend(items.into_iter().filter(|i| keep(&filters, i)));
                start = next;
                if start.is_none() || snapshots.len() >= 10_000 {
                    break;
                }
            }
            if snapshots.is_empty() {
                println!("No usage data found matching the criteria");
                return Ok(());
            }
            let mut totals: BTreeMap<String, (i64, usize)> = BTreeMap::new();
            for snapshot in &snapshots {
                for (name, value) in counters(snapshot) {
                    let entry = totals.entry(name).or_default();
                    entry.0 += value;
                    entry.1 += 1;
                }
            }
            let starts: Vec<String> = snapshots.iter().map(|i| text(i, "window_start")).collect();
            println!();
            println!("Usage Summary");
            println!();
            if let Some(e) = &filters.entity_id {
                println!("Entity:     {e}");
            }
            if let Some(r) = &filters.resource {
                println!("Resource:   {r}");
            }
            if let Some(w) = &filters.window {
                println!("Window:     {w}");
            }
            println!("Snapshots:  {}", snapshots.len());
            if let (Some(min), Some(max)) = (starts.iter().min(), starts.iter().max()) {
                println!("Time Range: {min} to {max}");
            }
            println!();
            let rows: Vec<Vec<String>> = totals
                .iter()
                .map(|(name, (total, count))| {
                    let average = *total as f64 / snapshots.len().max(1) as f64;
                    let _ = count;
                    vec![name.clone(), signed(*total), average_text(average)]
                })
                .collect();
            println!("{}", ascii_table::render_aligned(&["Limit", "Total", "Average"], &rows, &[1, 2]));
            println!();
        }
    }
    Ok(())
}

/// `1,234.57`.
fn average_text(v: f64) -> String {
    let rounded = (v * 100.0).round() / 100.0;
    let whole = rounded.trunc().abs() as u64;
    let cents = ((rounded.abs() - rounded.abs().trunc()) * 100.0).round() as u64;
    format!("{}{}.{cents:02}", if rounded < 0.0 { "-" } else { "" }, thousands(whole))
}

#[cfg(test)]
mod tests {
    #[test]
    fn averages() {
        assert_eq!(super::average_text(1234.567), "1,234.57");
        assert_eq!(super::average_text(2.0), "2.00");
        assert_eq!(super::signed(-1500), "-1,500");
    }
}

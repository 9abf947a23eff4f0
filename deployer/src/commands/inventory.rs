//! `status` and `list` (§4.2, §4.3): what the stacks and tables say, read-only.

use aws_sdk_cloudformation::Client as Cfn;
use aws_sdk_cloudformation::types::Stack;
use aws_sdk_dynamodb::types::AttributeValue;
use std::time::Instant;

use crate::ascii_table;
use crate::repo::{Repo, RequiredTarget, Result, Target};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

fn line(label: &str, value: &str) {
    println!("{:<17}{value}", format!("  {label}"));
}

/// `~21`, `~1.2K`, `~1.2M`.
fn approx(n: i64) -> String {
    match n {
        n if n < 1000 => format!("~{n}"),
        n if n < 1_000_000 => format!("~{:.1}K", n as f64 / 1000.0),
        n => format!("~{:.1}M", n as f64 / 1_000_000.0),
    }
}

fn output(stack: &Stack, key: &str) -> Option<String> {
    stack.outputs().iter().find(|o| o.output_key() == Some(key)).and_then(|o| o.output_value()).map(str::to_owned)
}

pub async fn status(args: RequiredTarget) -> Result<()> {
    let target = Target::from(args);
    let repo = Repo::connect(&target, None).await?;
    let cfn = Cfn::new(&repo.config);
    let stack =
        cfn.describe_stacks().stack_name(&target.name).send().await.ok().and_then(|o| o.stacks().first().cloned());
    let stack_status = stack.as_ref().and_then(|s| s.stack_status()).map(|s| s.as_str().to_owned());
    let complete = stack_status.as_deref().is_some_and(|s| s.contains("COMPLETE"));
    let started = Instant::now();
    let table = repo.db.describe_table().table_name(&repo.table).send().await.ok().and_then(|o| o.table);
    let latency = started.elapsed().as_millis();
    let record = if table.is_some() {
        repo.get(zael_table::keys::SYSTEM_PK, zael_table::keys::SK_VERSION).await.ok().flatten()
    } else {
        None
    };
    let text = |attr: &str| match record.as_ref().and_then(|r| r.get(attr)) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => "N/A".into(),
    };
    let presence = |key: &str| match (&stack, complete) {
        (Some(s), true) => {
            if output(s, key).is_some() {
                "Enabled"
            } else {
                "Disabled"
            }
        }
        _ => "Unknown",
    };
    println!();
    println!("Status: {}", target.name);
    println!("{}", "=".repeat(50));
    println!();
    println!("Connectivity");
    line("Available:", if table.is_some() { "✓ Yes" } else { "✗ No" });
    line("Latency:", &if table.is_some() { format!("{latency}ms") } else { "N/A".into() });
    line("Region:", target.region_or_default());
    println!();
    println!("Infrastructure");
    line("Stack:", stack_status.as_deref().unwrap_or("Not found"));
    line("Table:", table.as_ref().and_then(|t| t.table_status()).map(|s| s.as_str()).unwrap_or("Not found"));
    line("Aggregator:", presence("AggregatorFunctionName"));
    line("Provisioner:", presence("ProvisionerFunctionName"));
    println!();
    println!("Versions");
    line("Client:", zael_table::version::IMPLEMENTED_VERSION);
    line("Schema:", &text("schema_version"));
    line("Lambda:", &text("lambda_version"));
    println!();
    println!("Table Metrics");
    line("Items:", &table.as_ref().and_then(|t| t.item_count()).map(approx).unwrap_or_else(|| "N/A".into()));
    // The reference always shows N/A here (D10); the table's own size is the useful number.
    let size = table.as_ref().and_then(|t| t.table_size_bytes()).map(|b| match b {
        b if b < 1024 => format!("~{b} B"),
        b if b < 1024 * 1024 => format!("~{:.1} KB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("~{:.1} MB", b as f64 / 1048576.0),
        b => format!("~{:.1} GB", b as f64 / 1073741824.0),
    });
    line("Size:", size.as_deref().unwrap_or("N/A"));
    println!();
    if let Some(s) = stack.as_ref().filter(|_| complete) {
        let roles: Vec<(&str, Option<String>)> =
            [("App:", "AppRoleArn"), ("Admin:", "AdminRoleArn"), ("ReadOnly:", "ReadOnlyRoleArn")]
                .into_iter()
                .map(|(label, key)| (label, output(s, key)))
                .collect();
        if roles.iter().any(|(_, v)| v.is_some()) {
            println!("IAM Roles");
            for (label, value) in roles {
                line(label, value.as_deref().unwrap_or("N/A"));
            }
            println!();
        }
    }
    if table.is_none() {
        return Err(crate::Failure::Plain("✗ Infrastructure is not available".into()));
    }
    match stack_status.as_deref() {
        Some(s) if s.contains("FAILED") || s.contains("ROLLBACK") => {
            Err(crate::Failure::Plain("✗ Stack is in failed state".into()))
        }
        Some(s) if s.contains("IN_PROGRESS") => {
            println!("⏳ Operation in progress...");
            Ok(())
        }
        Some("CREATE_COMPLETE" | "UPDATE_COMPLETE") => {
            println!("✓ Infrastructure is ready");
            Ok(())
        }
        _ => Ok(()),
    }
}

pub async fn list(args: ListArgs) -> Result<()> {
    let target =
        Target { name: "zae-limiter".into(), region: args.region.clone(), endpoint_url: args.endpoint_url.clone() };
    let repo = Repo::connect(&target, None).await?;
    let cfn = Cfn::new(&repo.config);
    let region = args.region.clone().unwrap_or_else(|| "default".into());
    let mut stacks = Vec::new();
    let mut token = None;
    loop {
        let out = cfn.describe_stacks().set_next_token(token).send().await.map_err(|e| {
            crate::Failure::Plain(format!(
                "✗ Failed to list limiters: {}",
                aws_sdk_cloudformation::error::DisplayErrorContext(e)
            ))
        })?;
        stacks.extend(out.stacks().iter().cloned());
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let tag =
        |s: &Stack, k: &str| s.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
    let mut rows: Vec<(Vec<String>, String)> = stacks
        .iter()
        .filter(|s| s.stack_status().is_some_and(|st| st.as_str() != "DELETE_COMPLETE"))
        .filter(|s| {
            let name = s.stack_name().unwrap_or("");
            tag(s, "ManagedBy").as_deref() == Some("zae-limiter") || name.starts_with("ZAEL-")
        })
        .filter(|s| tag(s, "zae-limiter:type").is_none_or(|t| t == "limiter"))
        .map(|s| {
            let name = s.stack_name().unwrap_or("");
            let status = s.stack_status().map(|st| st.as_str().to_owned()).unwrap_or_default();
            let created = s
                .creation_time()
                .and_then(|t| t.fmt(aws_sdk_cloudformation::primitives::DateTimeFormat::DateTime).ok())
                .map(|t| t[..10].to_owned())
                .unwrap_or_else(|| "unknown".into());
            let display =
                tag(s, "zae-limiter:name").unwrap_or_else(|| name.strip_prefix("ZAEL-").unwrap_or(name).to_owned());
            (
                vec![display, status.clone(), tag(s, "zae-limiter:version").unwrap_or_else(|| "-".into()), created],
                status,
            )
        })
        .collect();
    if rows.is_empty() {
        println!();
        println!("No rate limiter instances found in region.");
        println!("  Region: {region}");
        println!();
        println!("Deploy a new instance with:");
        println!("  zae-limiter deploy --name my-app");
        return Ok(());
    }
    rows.sort();
    let failed = rows.iter().filter(|(_, s)| s.contains("FAILED") || s.contains("ROLLBACK")).count();
    let in_progress = rows.iter().filter(|(_, s)| s.contains("IN_PROGRESS")).count();
    let cells: Vec<Vec<String>> = rows.into_iter().map(|(r, _)| r).collect();
    println!();
    println!("Rate Limiter Instances ({region})");
    println!();
    println!("{}", ascii_table::render(&["Name", "Status", "Version", "Created"], &cells));
    println!();
    println!("Total: {} instance(s)", cells.len());
    if failed > 0 {
        println!("  {failed} failed");
    }
    if in_progress > 0 {
        println!("  {in_progress} in progress");
    }
    println!();
    Ok(())
}

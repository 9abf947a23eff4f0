//! `zae-limiter system …` and `zae-limiter resource …` (§6): the system and resource levels.

use aws_sdk_dynamodb::types::AttributeValue;
use zael_table::keys;

use super::DataTarget;
use super::access::Change;
use super::limits;
use crate::level::Level;
use crate::repo::Result;
use crate::stamps::Access;

// The variant names are the reference's command names (`set-defaults`, ...).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Set the system-wide default limits (and on_unavailable).
    SetDefaults {
        #[arg(short = 'l', long = "limit", required = true)]
        limits: Vec<String>,
        #[arg(long = "soft", value_name = "NAME")]
        soft: Vec<String>,
        /// What acquires do when DynamoDB is unavailable.
        #[arg(long, value_parser = ["allow", "block"])]
        on_unavailable: Option<String>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Show the system-wide defaults.
    GetDefaults {
        #[command(flatten)]
        data: DataTarget,
    },
    /// Delete the system-wide defaults.
    DeleteDefaults {
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        #[command(flatten)]
        data: DataTarget,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ResourceCommand {
    /// Set a resource's default limits.
    SetDefaults {
        resource: String,
        #[arg(short = 'l', long = "limit", required = true)]
        limits: Vec<String>,
        #[arg(long = "soft", value_name = "NAME")]
        soft: Vec<String>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Show a resource's default limits.
    GetDefaults {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Delete a resource's default limits.
    DeleteDefaults {
        resource: String,
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Disable a resource for every entity without an override.
    Disable {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Enable a resource explicitly.
    Enable {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Bypass a resource: admitted, usage counted, no balance debited.
    Bypass {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Remove the resource's disabled/bypass flag.
    ClearDisabled {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Set the resource's cascade policy for every entity without an override.
    SetCascade {
        resource: String,
        #[arg(value_parser = ["on", "off"])]
        value: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Remove the resource's cascade policy.
    ClearCascade {
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// List the resources with default limits.
    List {
        #[command(flatten)]
        data: DataTarget,
    },
}

pub async fn run_system(command: SystemCommand) -> Result<()> {
    match command {
        SystemCommand::SetDefaults { limits: specs, soft, on_unavailable, data } => {
            let parsed = limits::parse_limits(&specs, &soft)?;
            let (repo, ns) = data.open(true).await?;
            limits::set(&repo, &ns, &Level::System, &parsed, on_unavailable.as_deref()).await?;
            println!("Set {} system-wide default(s):", parsed.len());
            for l in &parsed {
                println!("  {}", l.display());
            }
            if let Some(v) = on_unavailable {
                println!("  on_unavailable: {v}");
            }
        }
        SystemCommand::GetDefaults { data } => {
            let (repo, ns) = data.open(false).await?;
            let item = limits::get(&repo, &ns, &Level::System).await?;
            let lines = item.as_ref().map(|i| limits::limit_lines(i, "    ")).unwrap_or_default();
            let on_unavailable = item.as_ref().and_then(|i| match i.get("on_unavailable") {
                Some(AttributeValue::S(v)) => Some(v.clone()),
                _ => None,
            });
            if lines.is_empty() && on_unavailable.is_none() {
                println!("No system defaults configured");
                return Ok(());
            }
            println!("System-wide defaults:");
            if !lines.is_empty() {
                println!("  Limits:");
                lines.iter().for_each(|l| println!("{l}"));
            }
            if let Some(v) = on_unavailable {
                println!("  on_unavailable: {v}");
            }
        }
        SystemCommand::DeleteDefaults { yes, data } => {
            let (repo, ns) = data.open(true).await?;
            if limits::delete_confirmed(&repo, &ns, &Level::System, yes, "Delete all system-wide defaults?").await? {
                println!("Deleted all system-wide defaults");
            }
        }
    }
    Ok(())
}

pub async fn run_resource(command: ResourceCommand) -> Result<()> {
    match command {
        ResourceCommand::SetDefaults { resource, limits: specs, soft, data } => {
            let parsed = limits::parse_limits(&specs, &soft)?;
            let level = Level::Resource(resource.clone());
            level.validate()?;
            let (repo, ns) = data.open(true).await?;
            limits::set(&repo, &ns, &level, &parsed, None).await?;
            println!("Set {} default(s) for resource '{resource}':", parsed.len());
            for l in &parsed {
                println!("  {}", l.display());
            }
        }
        ResourceCommand::GetDefaults { resource, data } => {
            let level = Level::Resource(resource.clone());
            level.validate()?;
            let (repo, ns) = data.open(false).await?;
            let item = limits::get(&repo, &ns, &level).await?;
            limits::print_limits(
                item.as_ref(),
                &format!("Defaults for resource '{resource}':"),
                &format!("No defaults configured for resource '{resource}'"),
            );
        }
        ResourceCommand::DeleteDefaults { resource, yes, data } => {
            let level = Level::Resource(resource.clone());
            level.validate()?;
            let (repo, ns) = data.open(true).await?;
            let question = format!("Delete all defaults for resource '{resource}'?");
            if limits::delete_confirmed(&repo, &ns, &level, yes, &question).await? {
                println!("Deleted defaults for resource '{resource}'");
            }
        }
        ResourceCommand::Disable { resource, data } => resource_flag(&resource, &data, Access::Disable).await?,
        ResourceCommand::Enable { resource, data } => resource_flag(&resource, &data, Access::Enable).await?,
        ResourceCommand::Bypass { resource, data } => resource_flag(&resource, &data, Access::Bypass).await?,
        ResourceCommand::ClearDisabled { resource, data } => resource_flag(&resource, &data, Access::Clear).await?,
        ResourceCommand::SetCascade { resource, value, data } => {
            Level::Resource(resource.clone()).validate()?;
            super::access::change(
                &data,
                crate::stamps::Scope::Resource(&resource),
                Change::Cascade(Some(value == "on")),
            )
            .await?
        }
        ResourceCommand::ClearCascade { resource, data } => {
            Level::Resource(resource.clone()).validate()?;
            super::access::change(&data, crate::stamps::Scope::Resource(&resource), Change::Cascade(None)).await?
        }
        ResourceCommand::List { data } => {
            let (repo, ns) = data.open(false).await?;
            let item = repo.get(&keys::pk_system(&ns), "#RESOURCES").await?;
            let mut resources = match item.as_ref().and_then(|i| i.get("resources")) {
                Some(AttributeValue::Ss(r)) => r.clone(),
                _ => Vec::new(),
            };
            resources.sort();
            if resources.is_empty() {
                println!("No resources with configured defaults");
            } else {
                println!("Resources with configured defaults:");
                resources.iter().for_each(|r| println!("  {r}"));
            }
        }
    }
    Ok(())
}

async fn resource_flag(resource: &str, data: &DataTarget, access: Access) -> Result<()> {
    Level::Resource(resource.to_owned()).validate()?;
    super::access::change(data, crate::stamps::Scope::Resource(resource), Change::Access(access)).await
}

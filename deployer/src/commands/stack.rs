//! Stack commands: `deploy` (its flags and checks; the emulator mode `--table-only`),
//! `version` and `check` (§3, §4.4).

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveSpecification};
use zael_table::keys;

use crate::compat::{self, Verdict};
use crate::repo::{Repo, Result, Target, describe};

const LOG_RETENTION_DAYS: [&str; 22] = [
    "1", "3", "5", "7", "14", "30", "60", "90", "120", "150", "180", "365", "400", "545", "731", "1096", "1827",
    "2192", "2557", "2922", "3288", "3653",
];

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: Target,
    /// Create only the table (exact definition, TTL, version record, `default` namespace):
    /// for emulators without CloudFormation (DynamoDB Local, moto). Needs --endpoint-url.
    #[arg(long)]
    pub table_only: bool,
    #[arg(long, default_value = "hourly,daily")]
    pub snapshot_windows: String,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub usage_retention_days: u32,
    #[arg(long, visible_alias = "audit-ttl-days", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: u32,
    #[arg(long = "enable-aggregator", overrides_with = "no_aggregator")]
    pub enable_aggregator: bool,
    #[arg(long = "no-aggregator")]
    pub no_aggregator: bool,
    /// The zael-aggregator binary to deploy (default: the one next to zae-limiter).
    #[arg(long = "aggregator-binary", env = crate::lambda_package::BINARY_ENV)]
    pub binary: Option<std::path::PathBuf>,
    /// Refused: there is no provisioner code yet (see [`PROVISIONER_REFUSED`]).
    #[arg(long = "enable-provisioner", overrides_with = "no_provisioner")]
    pub enable_provisioner: bool,
    /// Accepted for the reference's scripts; the provisioner is never deployed.
    #[arg(long = "no-provisioner")]
    pub no_provisioner: bool,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=35))]
    pub pitr_recovery_days: Option<u32>,
    #[arg(long, default_value = "30", value_parser = LOG_RETENTION_DAYS)]
    pub log_retention_days: String,
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=900))]
    pub lambda_timeout: u32,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(128..=3008))]
    pub lambda_memory: u32,
    #[arg(long = "enable-alarms", overrides_with = "no_alarms")]
    pub enable_alarms: bool,
    #[arg(long = "no-alarms")]
    pub no_alarms: bool,
    #[arg(long)]
    pub alarm_sns_topic: Option<String>,
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub lambda_duration_threshold_pct: u32,
    #[arg(long = "wait", overrides_with = "no_wait")]
    pub wait: bool,
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    #[arg(long)]
    pub permission_boundary: Option<String>,
    #[arg(long)]
    pub role_name_format: Option<String>,
    #[arg(long)]
    pub policy_name_format: Option<String>,
    #[arg(long = "enable-audit-archival", overrides_with = "no_audit_archival")]
    pub enable_audit_archival: bool,
    #[arg(long = "no-audit-archival")]
    pub no_audit_archival: bool,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub audit_archive_glacier_days: u32,
    #[arg(long = "enable-tracing", overrides_with = "no_tracing")]
    pub enable_tracing: bool,
    #[arg(long = "no-tracing")]
    pub no_tracing: bool,
    #[arg(long = "create-iam-roles", overrides_with = "no_create_iam_roles")]
    pub create_iam_roles: bool,
    #[arg(long = "no-create-iam-roles")]
    pub no_create_iam_roles: bool,
    #[arg(long = "iam", overrides_with = "no_iam")]
    pub iam: bool,
    #[arg(long = "no-iam")]
    pub no_iam: bool,
    #[arg(long)]
    pub aggregator_role_arn: Option<String>,
    #[arg(long = "enable-deletion-protection", overrides_with = "no_deletion_protection")]
    pub enable_deletion_protection: bool,
    #[arg(long = "no-deletion-protection")]
    pub no_deletion_protection: bool,
    /// Stack tag KEY=VALUE (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
}

/// Why `--enable-provisioner` is refused. The reference deploys its limits provisioner (the
/// custom resource behind `limits apply`) by default; this CLI has no provisioner code yet, and
/// the template's function is a placeholder that raises, so `deploy` never deploys it (the
/// summary says `Provisioner: disabled`) rather than present a function that cannot work.
pub const PROVISIONER_REFUSED: &str = "--enable-provisioner: this zae-limiter has no limits provisioner yet \
     (the function would be a placeholder that fails every call); deploy without it and set limits with \
     'entity set-limits', 'resource set-defaults' and 'system set-defaults'";

/// The checks made before any AWS call (§3.2), in the reference's order.
pub fn validate(args: &DeployArgs) -> Result<Vec<(String, String)>> {
    if args.enable_provisioner {
        return Err(PROVISIONER_REFUSED.into());
    }
    if args.no_iam && args.create_iam_roles {
        return Err("--create-iam-roles cannot be used with --no-iam".into());
    }
    crate::stack_name::validate(&args.target.name)?;
    let mut tags = Vec::with_capacity(args.tags.len());
    for tag in &args.tags {
        let Some((key, value)) = tag.split_once('=') else {
            return Err(crate::Failure::from(format!("Invalid tag format '{tag}'. Use KEY=VALUE.")));
        };
        if key.starts_with("aws:") {
            return Err(crate::Failure::from(format!("tag key '{key}' uses reserved 'aws:' prefix")));
        }
        if key.is_empty() || key.chars().count() > 128 {
            return Err(crate::Failure::from(format!("tag key '{key}' must be 1-128 characters")));
        }
        if value.chars().count() > 256 {
            return Err(crate::Failure::from(format!("tag value for '{key}' must be at most 256 characters")));
        }
        tags.push((key.to_owned(), value.to_owned()));
    }
    if tags.len() > 45 {
        return Err(crate::Failure::from(format!("at most 45 user tags are allowed, got {}", tags.len())));
    }
    if let Some(arn) = &args.aggregator_role_arn
        && !is_role_arn(arn)
    {
        return Err(crate::Failure::from(format!(
            "aggregator_role_arn must be a valid IAM role ARN (arn:aws:iam::<account>:role/<name>), got '{arn}'"
        )));
    }
    for (format, what, max) in
        [(&args.role_name_format, "role_name_format", 55), (&args.policy_name_format, "policy_name_format", 120)]
    {
        if let Some(f) = format {
            if f.matches("{}").count() != 1 {
                return Err(crate::Failure::from(format!("{what} must contain exactly one '{{}}' placeholder")));
            }
            if f.chars().count() > max {
                return Err(crate::Failure::from(format!("{what} must be at most {max} characters")));
            }
        }
    }
    Ok(tags)
}

fn is_role_arn(arn: &str) -> bool {
    let Some(rest) =
        ["arn:aws:iam::", "arn:aws-cn:iam::", "arn:aws-us-gov:iam::"].iter().find_map(|p| arn.strip_prefix(p))
    else {
        return false;
    };
    let Some((account, role)) = rest.split_once(":role/") else { return false };
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && !role.is_empty()
}

/// `cfn-template [-o FILE]`: the template as indented JSON.
pub fn cfn_template(output: Option<std::path::PathBuf>) -> Result<()> {
    let text = serde_json::to_string_pretty(&crate::template::template()).expect("a template serialises");
    match output {
        None => println!("{text}"),
        Some(path) => {
            std::fs::write(&path, format!("{text}\n"))
                .map_err(|e| crate::Failure::Plain(format!("✗ Failed to export template: {e}")))?;
            println!("✓ Template exported to: {}", path.display());
        }
    }
    Ok(())
}

pub async fn deploy(args: DeployArgs) -> Result<()> {
    let tags = validate(&args)?;
    for (format, policies) in [(&args.role_name_format, false), (&args.policy_name_format, true)] {
        crate::template::params::check_name_lengths(&args.target.name, format.as_deref(), policies)
            .map_err(|e| crate::Failure::Plain(format!("✗ Deployment failed: {e}")))?;
    }
    if !args.table_only {
        return super::cfn_stack::deploy(args, tags).await;
    }
    if args.target.endpoint_url.is_none() {
        return Err("--table-only is for emulators without CloudFormation: give --endpoint-url".into());
    }
    let repo = Repo::connect(&args.target, None).await?;
    println!("Deploying table: {} (table only, no CloudFormation)", repo.table);
    match zael_table::admin::create_table(&repo.db, &repo.table).await {
        Ok(()) => println!("✓ Table created"),
        Err(e) if e.contains("ResourceInUseException") || e.contains("already exists") => {
            println!("✓ Table already exists")
        }
        Err(e) => return Err(crate::Failure::from(format!("✗ Deployment failed: {e}"))),
    }
    let ttl =
        TimeToLiveSpecification::builder().enabled(true).attribute_name("ttl").build().map_err(|e| e.to_string())?;
    if let Err(e) = repo.db.update_time_to_live().table_name(&repo.table).time_to_live_specification(ttl).send().await {
        let text = describe(&e);
        if !text.contains("already enabled") {
            return Err(crate::Failure::from(format!("✗ Deployment failed: {text}")));
        }
    }
    println!("✓ TTL enabled on 'ttl'");
    if repo.get(keys::SYSTEM_PK, keys::SK_VERSION).await?.is_none() {
        zael_table::admin::put_version_record(
            &repo.db,
            &repo.table,
            compat::SCHEMA_VERSION,
            "0.0.0",
            Some(zael_table::version::IMPLEMENTED_VERSION),
        )
        .await?;
    }
    println!("✓ Version record initialized (schema {})", compat::SCHEMA_VERSION);
    let default = zael_table::admin::register_namespace(&repo.db, &repo.table, "default").await?;
    apply_audit_retention(&repo, &default, args.audit_retention_days).await?;
    println!("✓ Default namespace registered");
    Ok(())
}

/// `--audit-retention-days`, applied (the reference ignores it, D7): stored as
/// `audit_retention_days` on the namespace's system config, where every writer of audit events
/// reads it (an upsert that keeps the item's limits).
pub async fn apply_audit_retention(repo: &Repo, namespace_id: &str, days: u32) -> Result<()> {
    let pk = keys::pk_system(namespace_id);
    repo.db
        .update_item()
        .table_name(&repo.table)
        .key("PK", crate::config_item::s(&pk))
        .key("SK", crate::config_item::s(keys::SK_CONFIG))
        .update_expression(
            "SET audit_retention_days = :d, GSI4PK = if_not_exists(GSI4PK, :ns), GSI4SK = if_not_exists(GSI4SK, :pk)",
        )
        .expression_attribute_values(":d", crate::config_item::n(days))
        .expression_attribute_values(":ns", crate::config_item::s(namespace_id))
        .expression_attribute_values(":pk", crate::config_item::s(&pk))
        .send()
        .await
        .map_err(|e| format!("Failed to store the audit retention: {}", describe(&e)))?;
    Ok(())
}

fn text(item: &crate::config_item::Item, attr: &str) -> Option<String> {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

async fn record(target: &Target) -> Result<Option<crate::config_item::Item>> {
    let repo = Repo::connect(target, None).await?;
    match repo.get(keys::SYSTEM_PK, keys::SK_VERSION).await {
        Ok(item) => Ok(item),
        Err(e) if e.to_string() == repo.missing_stack() => Ok(None),
        Err(e) => Err(e),
    }
}

/// An incompatible verdict as the reference prints it: `verdict` on stderr, then a blank line
/// and the indented `message` on stdout; exit 1.
fn incompatible(verdict: &str, message: &str) -> Result<()> {
    eprintln!("{verdict}");
    println!();
    println!("  {message}");
    Err(crate::Failure::Silent)
}

pub async fn version(target: Target) -> Result<()> {
    let record =
        record(&target).await.map_err(|e| crate::Failure::Plain(format!("✗ Failed to get version info: {e}")))?;
    println!();
    println!("zae-limiter Infrastructure Version");
    println!("{}", "=".repeat(36));
    println!();
    println!("Client Version:     {}", zael_table::version::IMPLEMENTED_VERSION);
    println!("Schema Version:     {}", compat::SCHEMA_VERSION);
    println!();
    let Some(record) = record else {
        println!("Infrastructure:     Not initialized");
        println!();
        println!("Run 'zae-limiter deploy' to initialize infrastructure.");
        return Ok(());
    };
    let (schema, min, lambda) =
        (text(&record, "schema_version"), text(&record, "client_min_version"), text(&record, "lambda_version"));
    println!("Infra Schema:       {}", schema.clone().unwrap_or_default());
    println!("Lambda Version:     {}", lambda.clone().unwrap_or_else(|| "unknown".into()));
    println!("Min Client Version: {}", min.clone().unwrap_or_else(|| "0.0.0".into()));
    println!();
    match compat::evaluate(schema.as_deref(), min.as_deref(), lambda.as_deref()) {
        Verdict::Compatible => println!("Status: COMPATIBLE"),
        Verdict::LambdaUpdate(m) => {
            println!("Status: COMPATIBLE (Lambda update available)");
            println!();
            println!("  {m}");
            println!();
            println!("Run 'zae-limiter upgrade' to update Lambda.");
        }
        // As the reference: the verdict on stderr, the explanation on stdout.
        Verdict::SchemaMigration(m) => return incompatible("Status: INCOMPATIBLE (Schema migration required)", &m),
        Verdict::ClientUpgrade(m) => return incompatible("Status: INCOMPATIBLE", &m),
    }
    Ok(())
}

pub async fn check(target: Target) -> Result<()> {
    let record = record(&target).await.map_err(|e| crate::Failure::Plain(format!("✗ Check failed: {e}")))?;
    println!();
    println!("Compatibility Check");
    println!("{}", "=".repeat(20));
    println!();
    let Some(record) = record else {
        println!("Result: NOT INITIALIZED");
        println!();
        println!("Infrastructure has not been deployed yet.");
        println!("Run 'zae-limiter deploy' to initialize.");
        return Err(crate::Failure::Silent);
    };
    let (schema, min, lambda) =
        (text(&record, "schema_version"), text(&record, "client_min_version"), text(&record, "lambda_version"));
    println!("Client:      {}", zael_table::version::IMPLEMENTED_VERSION);
    println!("Schema:      {}", schema.clone().unwrap_or_default());
    println!("Lambda:      {}", lambda.clone().unwrap_or_else(|| "unknown".into()));
    println!();
    match compat::evaluate(schema.as_deref(), min.as_deref(), lambda.as_deref()) {
        Verdict::Compatible => {
            println!("Result: COMPATIBLE");
            println!();
            println!("Client and infrastructure are fully compatible.");
        }
        Verdict::LambdaUpdate(m) => {
            println!("Result: COMPATIBLE (update available)");
            println!();
            println!("{m}");
            println!();
            println!("Run 'zae-limiter upgrade' to update.");
        }
        // As the reference: the verdict on stderr, the explanation on stdout (not indented).
        other => {
            eprintln!("Result: INCOMPATIBLE");
            println!();
            println!("{}", other.message());
            return Err(crate::Failure::Silent);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LambdaExportArgs {
    /// Where to write the zip.
    #[arg(short = 'o', long = "output", default_value = "lambda.zip")]
    pub output: std::path::PathBuf,
    /// Describe the package without writing it.
    #[arg(long)]
    pub info: bool,
    /// Overwrite an existing file.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// The zael-aggregator binary to package (default: the one next to zae-limiter).
    #[arg(long, env = crate::lambda_package::BINARY_ENV)]
    pub binary: Option<std::path::PathBuf>,
}

/// `lambda-export`: the aggregator's `bootstrap` zip (see [`crate::lambda_package`]).
pub fn lambda_export(args: LambdaExportArgs) -> Result<()> {
    let fail = |e: String| crate::Failure::Plain(format!("✗ Failed to export Lambda package: {e}"));
    let binary = crate::lambda_package::locate(args.binary.as_deref()).map_err(fail)?;
    if args.info {
        let (bytes, glibc) = crate::lambda_package::inspect(&binary).map_err(fail)?;
        println!();
        println!("Lambda Package Information");
        println!("{}", "=".repeat(26));
        println!();
        println!("{:<19}{}", "Package path:", args.output.display());
        println!("{:<19}{}", "Binary:", binary.display());
        println!("{:<19}{}", "Uncompressed size:", crate::lambda_package::kb(bytes.len()));
        println!("{:<19}bootstrap", "Handler:");
        println!("{:<19}provided.al2023 (x86_64)", "Runtime:");
        if let Some((major, minor)) = glibc {
            println!("{:<19}{major}.{minor}", "Needs glibc:");
        }
        println!();
        return Ok(());
    }
    if args.output.exists() && !args.force {
        return Err(crate::Failure::Plain(format!(
            "File already exists: {}\nUse --force to overwrite.",
            args.output.display()
        )));
    }
    let package = crate::lambda_package::build(&binary).map_err(fail)?;
    std::fs::write(&args.output, &package.zip).map_err(|e| fail(format!("{}: {e}", args.output.display())))?;
    println!(
        "✓ Exported Lambda package to: {} ({})",
        args.output.display(),
        crate::lambda_package::kb(package.zip.len())
    );
    Ok(())
}

//! Stack commands: `deploy` (the emulator mode `--table-only` here, CloudFormation in
//! `cfn_stack`), `version`, `check`, `cfn-template` and `lambda-export` (§3, §4.4).

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveSpecification};
use zael_table::keys;

use super::deploy_args::{DeployArgs, validate};
use crate::compat::{self, Verdict};
use crate::repo::{Repo, Result, Target, describe};

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
    repo.set_audit_retention(&default, args.audit_retention_days).await?;
    println!("✓ Default namespace registered");
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

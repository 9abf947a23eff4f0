//! `upgrade -n NAME [--lambda-only] [--force]` (`deployer-and-aggregator.md` §4.5): this
//! client's template through a change set (refusing removals and replacements), the
//! aggregator's code, the version record and the stack's version tags.
//!
//! Decisions: parameters the stack already has keep their values (`UsePreviousValue`); a
//! parameter the template declares without a default that the stack lacks is the aggregator's
//! code location (`AggregatorCodeS3Bucket`/`Key`, absent from stacks the Python CLI made), so
//! the package is staged for it. zael ships no provisioner code: step 3 leaves the
//! provisioner's placeholder as it is, and `lambda_version` is stamped as long as the
//! aggregator was pushed or is absent.

use aws_sdk_cloudformation::Client as Cfn;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Tag};

use super::cfn_stack::{is_no_change, ready_change_set, settle, stack_tags, status};
use super::lambda_code::{self, PushError};
use crate::compat::{self, SCHEMA_VERSION, Verdict};
use crate::repo::{Repo, RequiredTarget, Result, Target};
use crate::template;
use zael_table::version::IMPLEMENTED_VERSION;

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub target: RequiredTarget,
    /// Only push the Lambda code; leave the stack template as it is.
    #[arg(long = "lambda-only")]
    pub lambda_only: bool,
    /// Push the code even when the Lambdas are current.
    #[arg(long)]
    pub force: bool,
    /// The zael-aggregator binary to deploy (default: the one next to zae-limiter).
    #[arg(long = "aggregator-binary", env = crate::lambda_package::BINARY_ENV)]
    pub binary: Option<std::path::PathBuf>,
}

const STEP: &str = "      ";
const CHANGE: &str = "        ";

fn text(item: &crate::config_item::Item, attr: &str) -> Option<String> {
    item.get(attr).and_then(|v| v.as_s().ok()).cloned()
}

pub async fn upgrade(args: UpgradeArgs) -> Result<()> {
    let target = Target::from(args.target);
    let repo = Repo::connect(&target, None).await?;
    let fail = |e: String| crate::Failure::Plain(format!("✗ Upgrade failed: {e}"));
    println!("Checking infrastructure version...");
    let record = match repo.get(zael_table::keys::SYSTEM_PK, zael_table::keys::SK_VERSION).await {
        Ok(r) => r,
        Err(e) if e.to_string() == repo.missing_stack() => None,
        Err(e) => return Err(fail(e.to_string())),
    };
    let Some(record) = record else {
        return Err(crate::Failure::Plain("Infrastructure not initialized.\nRun 'zae-limiter deploy' first.".into()));
    };
    let (schema, min, lambda) =
        (text(&record, "schema_version"), text(&record, "client_min_version"), text(&record, "lambda_version"));
    let verdict = compat::evaluate(schema.as_deref(), min.as_deref(), lambda.as_deref());
    if matches!(verdict, Verdict::ClientUpgrade(_) | Verdict::SchemaMigration(_)) {
        return Err(fail(verdict.message()));
    }
    let current = !args.force && matches!(verdict, Verdict::Compatible) && lambda.is_some();
    if current && lambda.as_deref() != Some(IMPLEMENTED_VERSION) {
        print_up_to_date(lambda.as_deref().unwrap_or_default());
        return Ok(());
    }
    println!("Current: Lambda {}", lambda.as_deref().unwrap_or("unknown"));
    println!("Target:  Lambda {IMPLEMENTED_VERSION}");

    let emulator = target.endpoint_url.is_some();
    let cfn = Cfn::new(&repo.config);
    let package = crate::lambda_package::LazyPackage::new(args.binary.as_deref());
    println!("[1/5] Applying stack template...");
    if args.lambda_only {
        println!("{STEP}Skipped (--lambda-only)");
    } else {
        apply_template(&cfn, &repo, &target.name, emulator, &package)
            .await
            .map_err(|e| crate::Failure::Plain(format!("✗ Stack template update failed: {e}")))?;
    }
    if current {
        print_up_to_date(IMPLEMENTED_VERSION);
        if refresh_tags(&cfn, &target.name, IMPLEMENTED_VERSION).await.unwrap_or(false) {
            println!("  Stack tags updated");
        }
        return Ok(());
    }

    println!("[2/5] Deploying Lambda code...");
    let package = package.get().map_err(|e| crate::Failure::Plain(format!("✗ Lambda deployment failed: {e}")))?;
    match lambda_code::push(&repo.config, &target.name, package).await {
        Ok(_) => {
            println!("{STEP}Lambda code deployed ({})", crate::lambda_package::kb(package.zip.len()));
            let _ = lambda_code::mapping_ready(&repo.config, &target.name).await;
        }
        Err(PushError::Absent) => println!("{STEP}No aggregator Lambda on this stack, skipped"),
        Err(PushError::Failed(e)) => return Err(crate::Failure::Plain(format!("✗ Lambda deployment failed: {e}"))),
    }
    println!("[3/5] Deploying provisioner code...");
    println!("{STEP}Skipped (zael ships no provisioner code; the function keeps its code)");

    println!("[4/5] Updating version record...");
    let client_min = min.unwrap_or_else(|| "0.0.0".into());
    zael_table::admin::put_version_record(
        &repo.db,
        &repo.table,
        SCHEMA_VERSION,
        &client_min,
        Some(IMPLEMENTED_VERSION),
    )
    .await
    .map_err(fail)?;
    println!("{STEP}Version record updated");

    println!("[5/5] Updating stack tags...");
    match refresh_tags(&cfn, &target.name, IMPLEMENTED_VERSION).await {
        Ok(true) => println!("{STEP}Stack tags updated"),
        Ok(false) => println!("{STEP}Tags already current"),
        Err(e) => println!("⚠️  Tag update failed: {e}"),
    }
    println!("✓ Upgrade complete!");
    Ok(())
}

fn print_up_to_date(lambda: &str) {
    println!("Lambda code is already up to date.");
    println!("  Client:   {IMPLEMENTED_VERSION}");
    println!("  Lambda:   {lambda}");
}

fn cfn_error<E: std::error::Error + 'static>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {}", aws_sdk_cloudformation::error::DisplayErrorContext(e))
}

/// Step 1: this client's template in a change set; refuses removals and replacements.
async fn apply_template(
    cfn: &Cfn,
    repo: &Repo,
    name: &str,
    emulator: bool,
    package: &crate::lambda_package::LazyPackage,
) -> std::result::Result<(), String> {
    let Some(stack) =
        cfn.describe_stacks().stack_name(name).send().await.ok().and_then(|o| o.stacks().first().cloned())
    else {
        println!("{STEP}No CloudFormation stack named {name}, skipped");
        return Ok(());
    };
    let full = serde_json::to_value(template::template()).map_err(|e| e.to_string())?;
    let declared = full["Parameters"].as_object().cloned().unwrap_or_default();
    let existing: Vec<(String, String)> = stack
        .parameters()
        .iter()
        .filter_map(|p| Some((p.parameter_key()?.to_owned(), p.parameter_value().unwrap_or_default().to_owned())))
        .filter(|(k, _)| declared.contains_key(k))
        .collect();
    let mut parameters: Vec<Parameter> =
        existing.iter().map(|(k, _)| Parameter::builder().parameter_key(k).use_previous_value(true).build()).collect();
    let mut values: Vec<(String, String)> = existing.clone();
    let missing_required: Vec<&String> = declared
        .iter()
        .filter(|(k, p)| p.get("Default").is_none() && !existing.iter().any(|(e, _)| e == *k))
        .map(|(k, _)| k)
        .collect();
    if !missing_required.is_empty() {
        let (bucket, key) = lambda_code::stage(&repo.config, emulator, name, package.get()?).await?;
        for (k, v) in [("AggregatorCodeS3Bucket", bucket), ("AggregatorCodeS3Key", key)] {
            parameters.push(Parameter::builder().parameter_key(k).parameter_value(&v).build());
            values.push((k.to_owned(), v));
        }
    }
    let body = if emulator {
        let refs: Vec<(&str, String)> = values.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        template::resolve_keeping_parameters(&full, &refs).to_string()
    } else {
        template::to_json(&template::template())
    };
    let user_tags = own_tags(&stack);
    let change_set = format!("zae-limiter-upgrade-{}", &ulid::Ulid::new().to_string().to_lowercase()[..12]);
    let created = cfn
        .create_change_set()
        .stack_name(name)
        .change_set_name(&change_set)
        .change_set_type(ChangeSetType::Update)
        .template_body(body)
        .set_parameters(Some(parameters))
        .capabilities(Capability::CapabilityNamedIam)
        .set_tags(Some(user_tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .send()
        .await;
    if let Err(e) = created {
        let text = aws_sdk_cloudformation::error::DisplayErrorContext(&e).to_string();
        if is_no_change(&text) {
            println!("{STEP}Stack template already current");
            return Ok(());
        }
        return Err(format!("CreateChangeSet: {text}"));
    }
    let Some(described) = ready_change_set(cfn, name, &change_set).await? else {
        println!("{STEP}Stack template already current");
        return Ok(());
    };
    let mut lines = Vec::new();
    let mut refused = Vec::new();
    for change in described.changes() {
        let Some(rc) = change.resource_change() else { continue };
        let action = rc.action().map(|a| a.as_str()).unwrap_or("");
        let id = rc.logical_resource_id().unwrap_or("");
        let kind = rc.resource_type().unwrap_or("");
        let replacement = rc.replacement().map(|r| r.as_str()).unwrap_or("False");
        if action == "Remove" || replacement == "True" || replacement == "Conditional" {
            refused.push(format!("{action} {id} ({kind}, replacement: {replacement})"));
        }
        lines.push(format!("{CHANGE}{action} {id} ({kind})"));
    }
    if !refused.is_empty() {
        let _ = cfn.delete_change_set().stack_name(name).change_set_name(&change_set).send().await;
        return Err(format!("the template would remove or replace resources: {}", refused.join(", ")));
    }
    cfn.execute_change_set()
        .stack_name(name)
        .change_set_name(&change_set)
        .send()
        .await
        .map_err(cfn_error("ExecuteChangeSet"))?;
    match settle(cfn, name).await? {
        Some(s) if s.as_str() == "UPDATE_COMPLETE" => {}
        other => {
            return Err(format!(
                "stack update ended {}",
                other.map(|s| s.as_str().to_owned()).unwrap_or_else(|| "DELETED".into())
            ));
        }
    }
    println!("{STEP}Stack template applied ({} resource(s) changed)", lines.len());
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// A stack's tags without the `aws:` ones CloudFormation sets itself.
fn own_tags(stack: &aws_sdk_cloudformation::types::Stack) -> Vec<(String, String)> {
    stack
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .filter(|(k, _)| !k.starts_with("aws:"))
        .collect()
}

/// Step 5: the current non-`aws:` tags plus the managed ones (this client's versions);
/// `Ok(false)` when they are already so.
async fn refresh_tags(cfn: &Cfn, name: &str, lambda_version: &str) -> std::result::Result<bool, String> {
    let Some((_, _, _)) = status(cfn, name).await? else { return Ok(false) };
    let stack = cfn.describe_stacks().stack_name(name).send().await.map_err(cfn_error("DescribeStacks"))?;
    let Some(stack) = stack.stacks().first() else { return Ok(false) };
    let current = own_tags(stack);
    let mut desired: Vec<(String, String)> = stack_tags(name, &current)
        .into_iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect();
    desired.retain(|(k, _)| k != "zae-limiter:lambda-version");
    desired.push(("zae-limiter:lambda-version".into(), lambda_version.into()));
    if desired.len() > 50 {
        return Err(format!("{} tags, more than the 50 CloudFormation allows", desired.len()));
    }
    let mut sorted_current = current.clone();
    sorted_current.sort();
    let mut sorted_desired = desired.clone();
    sorted_desired.sort();
    if sorted_current == sorted_desired {
        return Ok(false);
    }
    let parameters: Vec<Parameter> = stack
        .parameters()
        .iter()
        .filter_map(|p| p.parameter_key())
        .map(|k| Parameter::builder().parameter_key(k).use_previous_value(true).build())
        .collect();
    match cfn
        .update_stack()
        .stack_name(name)
        .use_previous_template(true)
        .set_parameters(Some(parameters))
        .capabilities(Capability::CapabilityNamedIam)
        .set_tags(Some(desired.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) => {
            let text = aws_sdk_cloudformation::error::DisplayErrorContext(&e).to_string();
            if is_no_change(&text) {
                return Ok(false);
            }
            return Err(text);
        }
    }
    settle(cfn, name).await?;
    Ok(true)
}

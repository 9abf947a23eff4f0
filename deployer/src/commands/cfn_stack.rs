//! `deploy` through CloudFormation, and `delete` (§3.3, §4.1): the generated template,
//! `CAPABILITY_NAMED_IAM`, user and managed tags, the stack events shown as they happen, then
//! the version record and the `default` namespace.

use aws_sdk_cloudformation::Client as Cfn;
use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus, Tag};
use std::collections::HashSet;
use std::time::Duration;

use super::deploy_args::DeployArgs;
use crate::compat::SCHEMA_VERSION;
use crate::repo::{Repo, RequiredTarget, Result, Target};
use crate::template::{self, params};
use zael_table::version::IMPLEMENTED_VERSION;

/// How long `--wait` follows a stack operation.
const WAIT_LIMIT: Duration = Duration::from_secs(1800);

fn onoff(on: bool) -> &'static str {
    if on { "enabled" } else { "disabled" }
}

/// The parameters and tags of a deploy; prints the reference's notes and summary.
fn plan(args: &DeployArgs, tags: &[(String, String)]) -> Vec<(&'static str, String)> {
    let parameters = params::for_deploy(&args.stack_parameters());
    let get = |k: &str| parameters.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    if args.no_iam && !args.no_aggregator && args.aggregator_role_arn.is_none() {
        println!(
            "Note: --no-iam disables aggregator (no IAM role). Use --aggregator-role-arn to provide an external role."
        );
    }
    let aggregator = get("EnableAggregator") == "true";
    println!("Deploying stack: {}", args.target.name);
    println!("  Table name: {}", args.target.name);
    println!("  Region: {}", args.target.region_or_default());
    println!("  Snapshot windows: {}", args.snapshot_windows);
    println!("  Usage retention days: {}", args.usage_retention_days);
    println!("  Audit retention days: {}", args.audit_retention_days);
    println!("  Aggregator: {}", onoff(aggregator));
    // Never deployed (`PROVISIONER_REFUSED`); the line keeps the reference's `Provisioner: …`.
    println!("  Provisioner: disabled (not deployed: no provisioner code in this client)");
    if aggregator {
        println!("  Lambda timeout: {}s", args.lambda_timeout);
        println!("  Lambda memory: {}MB", args.lambda_memory);
        println!("  X-Ray tracing: {}", onoff(args.enable_tracing));
    }
    println!("  Alarms: {}", onoff(!args.no_alarms));
    if let (false, Some(topic)) = (args.no_alarms, &args.alarm_sns_topic) {
        println!("  Alarm SNS topic: {topic}");
    }
    println!("  IAM resources: {}", onoff(!args.no_iam));
    if !args.no_iam {
        println!("  IAM roles: {}", onoff(args.create_iam_roles));
    }
    if let Some(arn) = &args.aggregator_role_arn {
        println!("  External role: {arn}");
    }
    println!("  Deletion protection: {}", onoff(args.enable_deletion_protection));
    if aggregator {
        println!("  Audit archival: {}", onoff(!args.no_audit_archival));
        if !args.no_audit_archival {
            println!("  Glacier transition: {} days", args.audit_archive_glacier_days);
        }
    }
    if !tags.is_empty() {
        println!("  Tags: {} user-defined", tags.len());
        for (k, v) in tags {
            println!("    {k}={v}");
        }
    }
    println!();
    parameters
}

pub(crate) fn stack_tags(name: &str, user: &[(String, String)]) -> Vec<Tag> {
    let mut tags: Vec<(String, String)> = user.to_vec();
    for (k, v) in [
        ("ManagedBy", "zae-limiter".to_owned()),
        ("zae-limiter:name", name.strip_prefix("ZAEL-").unwrap_or(name).to_owned()),
        ("zae-limiter:type", "limiter".to_owned()),
        ("zae-limiter:version", IMPLEMENTED_VERSION.to_owned()),
        ("zae-limiter:schema-version", SCHEMA_VERSION.to_owned()),
    ] {
        tags.retain(|(key, _)| key != k);
        tags.push((k.to_owned(), v));
    }
    tags.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

pub(crate) async fn status(
    cfn: &Cfn,
    name: &str,
) -> std::result::Result<Option<(StackStatus, String, Option<String>)>, String> {
    match cfn.describe_stacks().stack_name(name).send().await {
        Ok(out) => Ok(out.stacks().first().and_then(|s| {
            Some((
                s.stack_status()?.clone(),
                s.stack_id().unwrap_or(name).to_owned(),
                s.stack_status_reason().map(str::to_owned),
            ))
        })),
        Err(e) => {
            let text = aws_sdk_cloudformation::error::DisplayErrorContext(&e).to_string();
            if text.contains("does not exist") { Ok(None) } else { Err(text) }
        }
    }
}

/// Follows a stack operation, printing each new event, until it settles; the final status.
pub(crate) async fn follow(cfn: &Cfn, name: &str) -> std::result::Result<Option<StackStatus>, String> {
    watch(cfn, name, true).await
}

/// Waits, silently, until a stack operation settles; the final status.
pub(crate) async fn settle(cfn: &Cfn, name: &str) -> std::result::Result<Option<StackStatus>, String> {
    watch(cfn, name, false).await
}

async fn watch(cfn: &Cfn, name: &str, print: bool) -> std::result::Result<Option<StackStatus>, String> {
    let mut seen: HashSet<String> = HashSet::new();
    let started = std::time::Instant::now();
    loop {
        if print && let Ok(out) = cfn.describe_stack_events().stack_name(name).send().await {
            let mut events: Vec<_> = out
                .stack_events()
                .iter()
                .filter(|e| seen.insert(e.event_id().unwrap_or_default().to_owned()))
                .collect();
            events.reverse();
            for e in events {
                println!(
                    "  {} {} {}{}",
                    e.resource_status().map(|s| s.as_str()).unwrap_or(""),
                    e.resource_type().unwrap_or(""),
                    e.logical_resource_id().unwrap_or(""),
                    e.resource_status_reason().map(|r| format!(": {r}")).unwrap_or_default()
                );
            }
        }
        let Some((state, _, _)) = status(cfn, name).await? else { return Ok(None) };
        if !state.as_str().ends_with("IN_PROGRESS") {
            return Ok(Some(state));
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err(format!("Stack '{name}' is still {} after {} s", state.as_str(), WAIT_LIMIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The template body to send: the decided template to emulators (moto mis-evaluates some
/// conditions), the full one to AWS.
fn body_for(args: &DeployArgs, parameters: &[(&'static str, String)]) -> String {
    if args.target.endpoint_url.is_some() {
        let full = serde_json::to_value(template::template()).expect("a template serialises");
        template::resolve_keeping_parameters(&full, parameters).to_string()
    } else {
        template::to_json(&template::template())
    }
}

/// Resources whose replacement would lose data or break principals that use them.
const NEVER_REPLACED: [&str; 2] = ["AWS::DynamoDB::Table", "AWS::IAM::ManagedPolicy"];

/// Applies changed parameters to an existing stack through a change set: shown first, refused
/// when it would replace the table or a managed policy, then executed and followed.
async fn update(
    cfn: &Cfn,
    name: &str,
    body: String,
    parameters: &[(&'static str, String)],
    tags: &[(String, String)],
    wait: bool,
) -> std::result::Result<StackStatus, String> {
    // A managed policy is replaced when its name changes: refuse before CloudFormation is
    // asked (it reports replacements, emulators may not).
    let current = cfn.describe_stacks().stack_name(name).send().await.ok().and_then(|o| o.stacks().first().cloned());
    let current_value = |key: &str| {
        current
            .as_ref()
            .and_then(|s| s.parameters().iter().find(|p| p.parameter_key() == Some(key)))
            .and_then(|p| p.parameter_value())
            .unwrap_or("")
            .to_owned()
    };
    let renamed: Vec<&str> = params::POLICY_NAMES
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| {
            let new = parameters.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str()).unwrap_or("");
            current_value(k) != new
        })
        .collect();
    if !renamed.is_empty() {
        return Err(format!(
            "the update would rename, so replace, managed policies ({}); refusing (principals use them)",
            renamed.join(", ")
        ));
    }
    let change_set = format!("zae-limiter-{}", ulid::Ulid::new().to_string().to_lowercase());
    let created = cfn
        .create_change_set()
        .stack_name(name)
        .change_set_name(&change_set)
        .change_set_type(aws_sdk_cloudformation::types::ChangeSetType::Update)
        .template_body(body)
        .set_parameters(Some(
            parameters.iter().map(|(k, v)| Parameter::builder().parameter_key(*k).parameter_value(v).build()).collect(),
        ))
        .capabilities(Capability::CapabilityNamedIam)
        .set_tags(Some(stack_tags(name, tags)))
        .send()
        .await;
    if let Err(e) = created {
        let text = aws_sdk_cloudformation::error::DisplayErrorContext(e).to_string();
        if is_no_change(&text) {
            println!("No changes to apply.");
            return Ok(status_of(cfn, name).await?.unwrap_or(StackStatus::UpdateComplete));
        }
        return Err(format!("cannot create a change set: {text}"));
    }
    let Some(described) = ready_change_set(cfn, name, &change_set).await? else {
        println!("No changes to apply.");
        return Ok(status_of(cfn, name).await?.unwrap_or(StackStatus::UpdateComplete));
    };
    println!("Changes:");
    let mut refused = Vec::new();
    for change in described.changes() {
        let Some(rc) = change.resource_change() else { continue };
        let (action, id, kind) = (
            rc.action().map(|a| a.as_str()).unwrap_or(""),
            rc.logical_resource_id().unwrap_or(""),
            rc.resource_type().unwrap_or(""),
        );
        let replacement = rc.replacement().map(|r| r.as_str()).unwrap_or("False");
        println!(
            "  {action} {id} ({kind}){}",
            if replacement == "False" { String::new() } else { format!(", replacement: {replacement}") }
        );
        let removes = action == "Remove";
        if NEVER_REPLACED.contains(&kind) && (replacement != "False" || (removes && kind == "AWS::DynamoDB::Table")) {
            refused.push(format!("{id} ({kind})"));
        }
    }
    if !refused.is_empty() {
        let _ = cfn.delete_change_set().stack_name(name).change_set_name(&change_set).send().await;
        return Err(format!(
            "the update would replace {}; refusing (the table holds the data, and principals use the policies)",
            refused.join(", ")
        ));
    }
    cfn.execute_change_set().stack_name(name).change_set_name(&change_set).send().await.map_err(|e| {
        format!("cannot execute the change set: {}", aws_sdk_cloudformation::error::DisplayErrorContext(e))
    })?;
    if !wait {
        return Ok(StackStatus::UpdateInProgress);
    }
    match follow(cfn, name).await? {
        Some(s) if s.as_str() == "UPDATE_COMPLETE" => Ok(s),
        other => Err(format!(
            "Stack '{name}' update failed: {}",
            other.map(|s| s.as_str().to_owned()).unwrap_or_else(|| "DELETED".into())
        )),
    }
}

/// Waits until change set `change_set` of stack `name` is ready to execute; `None` when it
/// holds no changes (it is then deleted).
pub(crate) async fn ready_change_set(
    cfn: &Cfn,
    name: &str,
    change_set: &str,
) -> std::result::Result<Option<aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput>, String>
{
    let started = std::time::Instant::now();
    loop {
        let out = cfn.describe_change_set().stack_name(name).change_set_name(change_set).send().await.map_err(|e| {
            format!("cannot read the change set: {}", aws_sdk_cloudformation::error::DisplayErrorContext(e))
        })?;
        let status = out.status().map(|s| s.as_str().to_owned()).unwrap_or_default();
        if status == "FAILED" {
            let reason = out.status_reason().unwrap_or_default().to_owned();
            let _ = cfn.delete_change_set().stack_name(name).change_set_name(change_set).send().await;
            if is_no_change(&reason) {
                return Ok(None);
            }
            return Err(format!("the change set failed: {reason}"));
        }
        if status == "CREATE_COMPLETE" {
            return Ok(Some(out));
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err("the change set was not ready in time".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether CloudFormation's message says an update would change nothing.
pub(crate) fn is_no_change(message: &str) -> bool {
    message.contains("didn't contain changes") || message.contains("No updates are to be performed")
}

async fn status_of(cfn: &Cfn, name: &str) -> std::result::Result<Option<StackStatus>, String> {
    Ok(status(cfn, name).await?.map(|(s, _, _)| s))
}

pub(crate) fn human(status: &StackStatus) -> String {
    status.as_str().to_lowercase().replace('_', " ")
}

pub async fn deploy(args: DeployArgs, tags: Vec<(String, String)>) -> Result<()> {
    let fail = |e: String| crate::Failure::Plain(format!("✗ Deployment failed: {e}"));
    let repo = Repo::connect(&args.target, None).await?;
    let mut parameters = plan(&args, &tags);
    let aggregator = parameters.iter().any(|(k, v)| *k == "EnableAggregator" && v == "true");
    // The aggregator's code: packaged before anything changes, staged for the template.
    let package = if aggregator {
        let binary = crate::lambda_package::locate(args.binary.as_deref()).map_err(fail)?;
        Some(crate::lambda_package::build(&binary).map_err(fail)?)
    } else {
        None
    };
    let (code_bucket, code_key) = match &package {
        Some(package) => {
            let emulator = args.target.endpoint_url.is_some();
            super::lambda_code::stage(&repo.config, emulator, &args.target.name, package).await.map_err(fail)?
        }
        // Unused (but required) when the aggregator is not deployed.
        None => ("-".to_owned(), "-".to_owned()),
    };
    parameters.push(("AggregatorCodeS3Bucket", code_bucket));
    parameters.push(("AggregatorCodeS3Key", code_key));
    let cfn = Cfn::new(&repo.config);
    let name = args.target.name.clone();
    let wait = !args.no_wait;
    let existing = status(&cfn, &name).await.map_err(fail)?;
    let stack_id = match existing {
        Some((state, id, _)) => {
            let state = if wait && state.as_str().ends_with("IN_PROGRESS") {
                follow(&cfn, &name).await.map_err(fail)?.unwrap_or(state)
            } else {
                state
            };
            if state.as_str().ends_with("_COMPLETE")
                && !state.as_str().contains("ROLLBACK")
                && !state.as_str().contains("DELETE")
            {
                let body = body_for(&args, &parameters);
                let state = update(&cfn, &name, body, &parameters, &tags, wait).await.map_err(fail)?;
                println!("✓ Stack {}", human(&state));
            } else {
                println!("✓ Stack {}", human(&state));
            }
            id
        }
        None => {
            let body = body_for(&args, &parameters);
            let out = cfn
                .create_stack()
                .stack_name(&name)
                .template_body(body)
                .set_parameters(Some(
                    parameters
                        .iter()
                        .map(|(k, v)| Parameter::builder().parameter_key(*k).parameter_value(v).build())
                        .collect(),
                ))
                .capabilities(Capability::CapabilityNamedIam)
                .set_tags(Some(stack_tags(&name, &tags)))
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "Stack '{name}' operation failed: {}",
                        aws_sdk_cloudformation::error::DisplayErrorContext(e)
                    ))
                })?;
            let id = out.stack_id().unwrap_or(&name).to_owned();
            if !wait {
                println!("✓ Stack create in progress");
                println!("  Stack ID: {id}");
                println!("Stack creation initiated. Use 'status' command to check progress.");
                println!(
                    "Note: Lambda code will not be deployed until stack is ready. Run 'zae-limiter deploy' again with --wait to deploy Lambda."
                );
                return Ok(());
            }
            let state = follow(&cfn, &name).await.map_err(fail)?;
            match state {
                Some(StackStatus::CreateComplete) => println!("✓ Stack create complete"),
                other => {
                    let reason = status(&cfn, &name).await.ok().flatten().and_then(|(_, _, r)| r).unwrap_or_default();
                    return Err(fail(format!(
                        "Stack '{name}' operation failed: Stack creation failed: {} {reason}",
                        other.map(|s| s.as_str().to_owned()).unwrap_or_else(|| "DELETED".into())
                    )));
                }
            }
            id
        }
    };
    println!("  Stack ID: {stack_id}");
    if !wait {
        return Ok(());
    }
    if let Some(package) = &package
        && let Err(e) = super::lambda_code::deploy(&repo.config, &name, package).await
    {
        return Err(crate::Failure::Plain(format!(
            "⚠️  Lambda deployment failed: {e}\n  Stack was created successfully, but Lambda code needs manual deployment."
        )));
    }
    println!("Initializing version record...");
    if repo.get(zael_table::keys::SYSTEM_PK, zael_table::keys::SK_VERSION).await?.is_none() {
        zael_table::admin::put_version_record(
            &repo.db,
            &repo.table,
            SCHEMA_VERSION,
            "0.0.0",
            Some(IMPLEMENTED_VERSION),
        )
        .await
        .map_err(fail)?;
    }
    println!("✓ Version record initialized (schema {SCHEMA_VERSION})");
    let default = zael_table::admin::register_namespace(&repo.db, &repo.table, "default").await.map_err(fail)?;
    repo.set_audit_retention(&default, args.audit_retention_days).await?;
    println!("✓ Default namespace registered");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: RequiredTarget,
    #[arg(long = "wait", overrides_with = "no_wait")]
    pub wait: bool,
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
}

pub async fn delete(args: DeleteArgs) -> Result<()> {
    let target = Target::from(args.target);
    let repo = Repo::connect(&target, None).await?;
    let name = target.name;
    crate::prompt::confirm_or_abort(args.yes, &format!("Are you sure you want to delete stack '{name}'?"))?;
    println!("Deleting stack: {name}");
    let cfn = Cfn::new(&repo.config);
    let fail = |e: String| crate::Failure::Plain(format!("✗ Deletion failed: {e}"));
    if let Err(e) = cfn.delete_stack().stack_name(&name).send().await {
        let text = aws_sdk_cloudformation::error::DisplayErrorContext(&e).to_string();
        if !text.contains("does not exist") {
            return Err(fail(text));
        }
    }
    if args.no_wait {
        println!("Stack deletion initiated. Use 'status' command to check progress.");
        return Ok(());
    }
    match follow(&cfn, &name).await.map_err(fail)? {
        None | Some(StackStatus::DeleteComplete) => {
            println!("✓ Stack '{}' deleted successfully", name);
            Ok(())
        }
        Some(other) => Err(fail(format!("stack is {}", other.as_str()))),
    }
}

//! The aggregator's code on a stack: staged in S3 before `CreateStack` (the template takes
//! `provided.al2023` code only from S3, ADR 007), pushed with `UpdateFunctionCode` once the
//! stack is settled, then the function and its event source mapping are waited for.
//!
//! The staging bucket is `zae-limiter-artifacts-{account}-{region}` (created on first use,
//! public access blocked, SSE-S3), key `{stack}/aggregator/{sha256 of the zip}.zip`: the same
//! code keeps the same key, so a re-deploy of unchanged code changes no parameter.

use crate::lambda_package::{Package, kb};
use aws_sdk_lambda::types::State;
use std::time::{Duration, Instant};

/// How long the function and the mapping may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(120);

fn sdk<E: std::error::Error + 'static>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
}

/// An S3 client for `config` (path-style against an emulator endpoint).
fn s3(config: &aws_config::SdkConfig, emulator: bool) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(emulator).build())
}

/// Uploads the package; its bucket and key, for `AggregatorCodeS3Bucket`/`Key`.
pub async fn stage(
    config: &aws_config::SdkConfig,
    emulator: bool,
    stack: &str,
    package: &Package,
) -> Result<(String, String), String> {
    let region = config.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
    let identity =
        aws_sdk_sts::Client::new(config).get_caller_identity().send().await.map_err(sdk("GetCallerIdentity"))?;
    let account = identity.account().unwrap_or("unknown");
    let bucket = format!("zae-limiter-artifacts-{account}-{region}");
    let key = format!("{stack}/aggregator/{}.zip", package.sha256);
    let s3 = s3(config, emulator);
    if s3.head_bucket().bucket(&bucket).send().await.is_err() {
        let mut create = s3.create_bucket().bucket(&bucket);
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        create.send().await.map_err(sdk("CreateBucket"))?;
        let block = aws_sdk_s3::types::PublicAccessBlockConfiguration::builder()
            .block_public_acls(true)
            .ignore_public_acls(true)
            .block_public_policy(true)
            .restrict_public_buckets(true)
            .build();
        // Emulators may not model these; the bucket is private by default anyway.
        let _ = s3.put_public_access_block().bucket(&bucket).public_access_block_configuration(block).send().await;
    }
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(package.zip.clone().into())
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .send()
        .await
        .map_err(sdk("PutObject"))?;
    Ok((bucket, key))
}

/// A pushed function.
pub struct Pushed {
    pub function_arn: String,
    pub code_sha256: String,
}

pub enum PushError {
    /// The stack has no aggregator function.
    Absent,
    Failed(String),
}

/// Pushes the package to `{stack}-aggregator` with `UpdateFunctionCode`, tags it with the
/// version, and waits until the function is updated and active.
pub async fn push(config: &aws_config::SdkConfig, stack: &str, package: &Package) -> Result<Pushed, PushError> {
    let lambda = aws_sdk_lambda::Client::new(config);
    let function = format!("{stack}-aggregator");
    let updated = match lambda
        .update_function_code()
        .function_name(&function)
        .zip_file(aws_sdk_lambda::primitives::Blob::new(package.zip.clone()))
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
            return Err(PushError::Absent);
        }
        Err(e) => return Err(PushError::Failed(sdk("UpdateFunctionCode")(e))),
    };
    let started = Instant::now();
    loop {
        let conf = lambda
            .get_function_configuration()
            .function_name(&function)
            .send()
            .await
            .map_err(|e| PushError::Failed(sdk("GetFunctionConfiguration")(e)))?;
        if conf.state() == Some(&State::Failed) {
            return Err(PushError::Failed(format!(
                "function {function} failed: {}",
                conf.state_reason().unwrap_or_default()
            )));
        }
        let updating = conf.last_update_status().is_some_and(|s| s.as_str() == "InProgress");
        if !updating && conf.state().is_none_or(|s| *s == State::Active) {
            break;
        }
        if started.elapsed() > READY_LIMIT {
            return Err(PushError::Failed(format!("function {function} not ready after {} s", READY_LIMIT.as_secs())));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let function_arn = updated.function_arn().unwrap_or_default().to_owned();
    let _ = lambda
        .tag_resource()
        .resource(&function_arn)
        .tags("zae-limiter:lambda-version", zael_table::version::IMPLEMENTED_VERSION)
        .send()
        .await;
    Ok(Pushed { function_arn, code_sha256: updated.code_sha256().unwrap_or_default().to_owned() })
}

/// Waits (at most 120 s) until every event source mapping of `{stack}-aggregator` is
/// enabled; false when one is disabled or the wait runs out. Decision: unlike the reference,
/// no extra 45 s dwell after `Enabled` (the reference waits for a first `LastProcessingResult`
/// because `StartingPosition LATEST` misses writes made before the mapping polls; a deploy
/// that must not miss them should enable the mapping before traffic starts).
pub async fn mapping_ready(config: &aws_config::SdkConfig, stack: &str) -> Result<bool, String> {
    let lambda = aws_sdk_lambda::Client::new(config);
    let function = format!("{stack}-aggregator");
    let started = Instant::now();
    loop {
        let mappings = lambda
            .list_event_source_mappings()
            .function_name(&function)
            .send()
            .await
            .map_err(sdk("ListEventSourceMappings"))?;
        let states: Vec<&str> = mappings.event_source_mappings().iter().filter_map(|m| m.state()).collect();
        if !states.is_empty() && states.iter().all(|s| *s == "Enabled") {
            return Ok(true);
        }
        if states.iter().any(|s| *s == "Disabled" || *s == "Disabling") || started.elapsed() > READY_LIMIT {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `deploy`'s code step, with the reference's lines.
pub async fn deploy(config: &aws_config::SdkConfig, stack: &str, package: &Package) -> Result<(), String> {
    println!("Deploying Lambda function code...");
    let pushed = match push(config, stack, package).await {
        Ok(p) => p,
        Err(PushError::Absent) => return Err(format!("function {stack}-aggregator does not exist")),
        Err(PushError::Failed(e)) => return Err(e),
    };
    println!("✓ Lambda code deployed ({})", kb(package.zip.len()));
    println!("  Function ARN: {}", pushed.function_arn);
    println!("  Code SHA256: {}...", pushed.code_sha256.chars().take(16).collect::<String>());
    if mapping_ready(config, stack).await? {
        println!("✓ Event Source Mapping ready");
    }
    Ok(())
}

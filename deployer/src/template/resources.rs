//! The table, the aggregator (DLQ, log group, function, event source mapping, archive bucket),
//! the provisioner, and the alarms (§9.4, §9.5, §9.8–§9.10).

use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::cfn::{Resource, app_tags, get_att, if_, no_value, r#ref, sub};
use super::iam;

pub fn all() -> BTreeMap<&'static str, Resource> {
    let mut out = BTreeMap::new();
    out.insert("RateLimitsTable", table());
    out.insert("AuditArchiveBucket", archive_bucket());
    iam::resources(&mut out);
    out.insert(
        "AggregatorDLQ",
        Resource::new(
            "AWS::SQS::Queue",
            Some("DeployAggregator"),
            json!({
                "QueueName": sub("${AWS::StackName}-aggregator-dlq"),
                "MessageRetentionPeriod": 1_209_600,
                "VisibilityTimeout": 300,
                "Tags": app_tags(),
            }),
        ),
    );
    out.insert("AggregatorLogGroup", log_group("DeployAggregator", "aggregator"));
    out.insert("ProvisionerLogGroup", log_group("DeployProvisioner", "limits-provisioner"));
    out.insert("AggregatorFunction", aggregator_function());
    out.insert("AggregatorEventSourceMapping", event_source_mapping());
    out.insert("ProvisionerFunction", provisioner_function());
    alarms(&mut out);
    out
}

fn table() -> Resource {
    let attrs: Vec<Value> = [
        "PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "GSI4PK", "GSI4SK", "LSI1SK", "LSI2SK",
        "LSI3SK", "LSI4SK", "LSI5SK",
    ]
    .iter()
    .map(|a| json!({"AttributeName": a, "AttributeType": "S"}))
    .collect();
    let key = |hash: &str, range: &str| json!([{"AttributeName": hash, "KeyType": "HASH"}, {"AttributeName": range, "KeyType": "RANGE"}]);
    let gsis: Vec<Value> = [(1, "ALL"), (2, "ALL"), (3, "KEYS_ONLY"), (4, "KEYS_ONLY")]
        .iter()
        .map(|(n, p)| {
            json!({"IndexName": format!("GSI{n}"), "KeySchema": key(&format!("GSI{n}PK"), &format!("GSI{n}SK")), "Projection": {"ProjectionType": p}})
        })
        .collect();
    let lsis: Vec<Value> = [(1, "ALL"), (2, "KEYS_ONLY"), (3, "ALL"), (4, "KEYS_ONLY"), (5, "ALL")]
        .iter()
        .map(|(n, p)| json!({"IndexName": format!("LSI{n}"), "KeySchema": key("PK", &format!("LSI{n}SK")), "Projection": {"ProjectionType": p}}))
        .collect();
    Resource::new(
        "AWS::DynamoDB::Table",
        None,
        json!({
            "TableName": r#ref("AWS::StackName"),
            "BillingMode": "PAY_PER_REQUEST",
            "DeletionProtectionEnabled": if_("EnableTableDeletionProtection", json!(true), json!(false)),
            "AttributeDefinitions": attrs,
            "KeySchema": key("PK", "SK"),
            "GlobalSecondaryIndexes": gsis,
            "LocalSecondaryIndexes": lsis,
            "TimeToLiveSpecification": {"AttributeName": "ttl", "Enabled": true},
            "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
            "PointInTimeRecoverySpecification": {
                "PointInTimeRecoveryEnabled": true,
                "RecoveryPeriodInDays": if_("UsePITRRecoveryPeriod", r#ref("PITRRecoveryPeriodDays"), no_value()),
            },
            "Tags": app_tags(),
        }),
    )
}

fn archive_bucket() -> Resource {
    Resource::new(
        "AWS::S3::Bucket",
        Some("DeployAuditArchive"),
        json!({
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": true, "BlockPublicPolicy": true, "IgnorePublicAcls": true, "RestrictPublicBuckets": true,
            },
            "LifecycleConfiguration": {"Rules": [{
                "Id": "TransitionToGlacier",
                "Status": "Enabled",
                "Transitions": [{"StorageClass": "GLACIER_IR", "TransitionInDays": r#ref("AuditArchiveGlacierTransitionDays")}],
            }]},
            "Tags": app_tags(),
        }),
    )
}

fn log_group(condition: &'static str, function: &str) -> Resource {
    Resource::new(
        "AWS::Logs::LogGroup",
        Some(condition),
        json!({
            "LogGroupName": sub(&format!("/aws/lambda/${{AWS::StackName}}-{function}")),
            "RetentionInDays": r#ref("LogRetentionDays"),
        }),
    )
}

fn aggregator_function() -> Resource {
    let mut r = Resource::new(
        "AWS::Lambda::Function",
        Some("DeployAggregatorLambda"),
        json!({
            "FunctionName": sub("${AWS::StackName}-aggregator"),
            "Description": "Aggregates rate limiter usage into hourly/daily snapshots",
            "Runtime": "provided.al2023",
            "Handler": "bootstrap",
            "Architectures": ["x86_64"],
            "MemorySize": r#ref("LambdaMemorySize"),
            "Timeout": r#ref("LambdaTimeout"),
            "Role": if_("UseExternalAggregatorRole", r#ref("AggregatorRoleArn"), get_att("AggregatorRole", "Arn")),
            "TracingConfig": {"Mode": if_("TracingEnabled", json!("Active"), json!("PassThrough"))},
            "Code": {"S3Bucket": r#ref("AggregatorCodeS3Bucket"), "S3Key": r#ref("AggregatorCodeS3Key")},
            "Environment": {"Variables": {
                "TABLE_NAME": r#ref("AWS::StackName"),
                "SNAPSHOT_WINDOWS": r#ref("SnapshotWindows"),
                "SNAPSHOT_TTL_DAYS": sub("${SnapshotRetentionDays}"),
                "ZAE_LIMITER_SCHEMA_VERSION": r#ref("SchemaVersion"),
                "ENABLE_ARCHIVAL": r#ref("EnableAuditArchival"),
                "ARCHIVE_BUCKET_NAME": if_("DeployAuditArchive", r#ref("AuditArchiveBucket"), json!("")),
            }},
            "Tags": app_tags(),
        }),
    );
    r.depends_on = vec!["AggregatorLogGroup"];
    r
}

/// The stream records the aggregator takes: INSERTs and MODIFYs of bucket items (consumption
/// on INSERT counts, D5) and REMOVEs of audit items, matched on their `#AUDIT#` sort key (the
/// reference's `AUDIT#` partition-key prefix cannot match namespaced keys, D1); failures are
/// reported per record (`ReportBatchItemFailures`), bisected, then sent to the DLQ.
fn event_source_mapping() -> Resource {
    let buckets = json!({"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"SK": {"S": ["#STATE"]}}}});
    let audits = json!({"eventName": ["REMOVE"], "dynamodb": {"OldImage": {"SK": {"S": [{"prefix": "#AUDIT#"}]}}}});
    Resource::new(
        "AWS::Lambda::EventSourceMapping",
        Some("DeployAggregatorLambda"),
        json!({
            "EventSourceArn": get_att("RateLimitsTable", "StreamArn"),
            "FunctionName": r#ref("AggregatorFunction"),
            "StartingPosition": "LATEST",
            "BatchSize": 100,
            "MaximumBatchingWindowInSeconds": 5,
            "MaximumRetryAttempts": 3,
            "MaximumRecordAgeInSeconds": 3600,
            "BisectBatchOnFunctionError": true,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Destination": get_att("AggregatorDLQ", "Arn")}},
            "FilterCriteria": {"Filters": [
                {"Pattern": buckets.to_string()},
                {"Pattern": audits.to_string()},
            ]},
        }),
    )
}

fn provisioner_function() -> Resource {
    let placeholder = "def on_event(event, context):\n    raise RuntimeError('zae-limiter limits provisioner code has not been deployed')\n";
    let mut r = Resource::new(
        "AWS::Lambda::Function",
        Some("DeployProvisionerLambda"),
        json!({
            "FunctionName": sub("${AWS::StackName}-limits-provisioner"),
            "Description": "Declarative limits provisioner for zae-limiter",
            "Runtime": "python3.12",
            "Handler": "index.on_event",
            "MemorySize": 256,
            "Timeout": 300,
            "Role": get_att("ProvisionerRole", "Arn"),
            "Code": {"ZipFile": placeholder},
            "Environment": {"Variables": {"TABLE_NAME": r#ref("AWS::StackName")}},
            "Tags": app_tags(),
        }),
    );
    r.depends_on = vec!["ProvisionerLogGroup"];
    r
}

#[allow(clippy::too_many_arguments)]
fn alarm(
    condition: &'static str,
    name: &str,
    description: Value,
    namespace: &str,
    metric: &str,
    statistic: &str,
    periods: u32,
    threshold: Value,
    comparison: &str,
    dimension: (&str, Value),
    actions: bool,
) -> Resource {
    Resource::new(
        "AWS::CloudWatch::Alarm",
        Some(condition),
        json!({
            "AlarmName": sub(&format!("${{AWS::StackName}}-{name}")),
            "AlarmDescription": description,
            "Namespace": namespace,
            "MetricName": metric,
            "Statistic": statistic,
            "Period": 300,
            "EvaluationPeriods": periods,
            "Threshold": threshold,
            "ComparisonOperator": comparison,
            "TreatMissingData": "notBreaching",
            "Dimensions": [{"Name": dimension.0, "Value": dimension.1}],
            "AlarmActions": if actions { if_("HasSNSTopic", json!([r#ref("AlarmSNSTopicArn")]), no_value()) } else { no_value() },
        }),
    )
}

fn alarms(out: &mut BTreeMap<&'static str, Resource>) {
    let agg = "DeployAggregatorAlarms";
    let function = ("FunctionName", r#ref("AggregatorFunction"));
    let table = ("TableName", r#ref("RateLimitsTable"));
    out.insert(
        "AggregatorDLQAlarm",
        alarm(
            agg,
            "aggregator-dlq-alarm",
            json!("Alert when messages appear in the aggregator DLQ"),
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "Sum",
            1,
            json!(1),
            "GreaterThanOrEqualToThreshold",
            ("QueueName", get_att("AggregatorDLQ", "QueueName")),
            false,
        ),
    );
    out.insert(
        "LambdaErrorRateAlarm",
        alarm(
            agg,
            "aggregator-error-rate",
            json!("Alert when Lambda error rate exceeds 1%"),
            "AWS/Lambda",
            "Errors",
            "Sum",
            2,
            json!(1),
            "GreaterThanThreshold",
            function.clone(),
            true,
        ),
    );
    out.insert(
        "LambdaDurationAlarm",
        alarm(
            agg,
            "aggregator-duration",
            sub("Alert when Lambda duration exceeds threshold (${LambdaDurationThreshold}ms)"),
            "AWS/Lambda",
            "Duration",
            "Average",
            2,
            r#ref("LambdaDurationThreshold"),
            "GreaterThanThreshold",
            function.clone(),
            true,
        ),
    );
    out.insert(
        "StreamIteratorAgeAlarm",
        alarm(
            agg,
            "stream-iterator-age",
            json!("Alert when stream processing lag exceeds 30 seconds"),
            "AWS/Lambda",
            "IteratorAge",
            "Maximum",
            2,
            json!(30_000),
            "GreaterThanThreshold",
            function,
            true,
        ),
    );
    out.insert(
        "DynamoDBReadThrottleAlarm",
        alarm(
            "DeployAlarms",
            "read-throttle",
            json!("Alert when DynamoDB read requests are throttled"),
            "AWS/DynamoDB",
            "ReadThrottleEvents",
            "Sum",
            2,
            json!(1),
            "GreaterThanThreshold",
            table.clone(),
            true,
        ),
    );
    out.insert(
        "DynamoDBWriteThrottleAlarm",
        alarm(
            "DeployAlarms",
            "write-throttle",
            json!("Alert when DynamoDB write requests are throttled"),
            "AWS/DynamoDB",
            "WriteThrottleEvents",
            "Sum",
            2,
            json!(1),
            "GreaterThanThreshold",
            table,
            true,
        ),
    );
}

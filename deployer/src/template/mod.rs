//! The stack's CloudFormation template (`deployer-and-aggregator.md` §9), generated from Rust
//! types: the reference's logical IDs, parameters, conditions, outputs and exports, and the
//! managed policies' descriptions, which existing stacks and tooling depend on.
//!
//! Decision (ADR 007): the aggregator is a Rust Lambda on `provided.al2023` (handler
//! `bootstrap`, x86_64) whose code CloudFormation takes from S3 (`AggregatorCodeS3Bucket`,
//! `AggregatorCodeS3Key`, staged by `deploy`), so the template and the function agree. The
//! limits provisioner stays the reference's Python function with its raising placeholder.

mod cfn;
mod iam;
pub mod params;
mod resolve;
mod resources;

pub use resolve::resolve_keeping_parameters;

pub use cfn::Template;
use cfn::{Output, Parameter, and, cond, get_att, is_set, is_true, not, or, r#ref, sub};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The accepted `LogRetentionDays` (CloudWatch Logs' retention choices).
pub const LOG_RETENTION_DAYS: [u64; 22] =
    [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

/// The template.
pub fn template() -> Template {
    Template {
        format_version: "2010-09-09",
        description: "zae-limiter infrastructure - DynamoDB table with streams and Lambda aggregator for usage snapshots.",
        parameters: parameters(),
        conditions: conditions(),
        resources: resources::all(),
        outputs: outputs(),
    }
}

/// The template as the compact JSON `CreateStack` takes.
pub fn to_json(template: &Template) -> String {
    serde_json::to_string(template).expect("a template serialises")
}

fn parameters() -> BTreeMap<&'static str, Parameter> {
    let mut p = BTreeMap::new();
    p.insert(
        "SnapshotWindows",
        Parameter::string("hourly,daily", "Usage snapshot windows: hourly, daily, monthly (comma-separated)"),
    );
    p.insert("SnapshotRetentionDays", Parameter::number(90, 1, 3650, "Days to keep usage snapshots"));
    p.insert("LambdaMemorySize", Parameter::number(256, 128, 3008, "Aggregator Lambda memory (MB)"));
    p.insert("LambdaTimeout", Parameter::number(60, 1, 900, "Aggregator Lambda timeout (seconds)"));
    p.insert("SchemaVersion", Parameter::string("1.0.0", "Schema version of the table"));
    p.insert(
        "PITRRecoveryPeriodDays",
        Parameter::string("", "Point-in-time recovery period in days (1-35); empty for the AWS default"),
    );
    p.insert("AlarmSNSTopicArn", Parameter::string("", "SNS topic for alarm notifications (optional)"));
    p.insert(
        "LogRetentionDays",
        Parameter {
            allowed_values: LOG_RETENTION_DAYS.iter().map(|d| json!(d)).collect(),
            min_value: None,
            max_value: None,
            ..Parameter::number(30, 0, 0, "CloudWatch Logs retention (days)")
        },
    );
    p.insert(
        "LambdaDurationThreshold",
        Parameter::number(48_000, 1, 900_000, "Aggregator duration alarm threshold (ms)"),
    );
    p.insert(
        "PermissionBoundary",
        Parameter::string("", "Permission boundary for every role: a policy name or ARN (optional)"),
    );
    for (name, _) in params::ROLE_NAMES {
        p.insert(name, Parameter::string("", "Custom role name (optional)"));
    }
    p.insert("RoleNameFormat", Parameter::string("", "The role name format, exported for related stacks (optional)"));
    for (name, _) in params::POLICY_NAMES {
        p.insert(name, Parameter::string("", "Custom managed policy name (optional)"));
    }
    p.insert(
        "AuditArchiveGlacierTransitionDays",
        Parameter::number(90, 1, 3650, "Days before archived audit events move to Glacier IR"),
    );
    p.insert("AggregatorRoleArn", Parameter::string("", "An existing role for the aggregator Lambda (optional)"));
    p.insert("EnableAggregator", Parameter::flag(true, "Deploy the stream aggregator Lambda"));
    p.insert("EnableAlarms", Parameter::flag(true, "Deploy CloudWatch alarms"));
    p.insert("EnableAuditArchival", Parameter::flag(true, "Archive expired audit events to S3"));
    p.insert("EnableIAM", Parameter::flag(true, "Create IAM policies and roles"));
    p.insert(
        "EnableProvisioner",
        Parameter::flag(false, "Deploy the limits provisioner Lambda (a placeholder in this template: leave false)"),
    );
    p.insert("EnableIAMRoles", Parameter::flag(true, "Create the App, Admin and ReadOnly roles"));
    p.insert("EnableTracing", Parameter::flag(false, "AWS X-Ray tracing for the aggregator"));
    p.insert("EnableDeletionProtection", Parameter::flag(false, "DynamoDB deletion protection on the table"));
    p.insert(
        "AggregatorCodeS3Bucket",
        Parameter::required("S3 bucket holding the aggregator's bootstrap zip (staged by zae-limiter deploy)"),
    );
    p.insert("AggregatorCodeS3Key", Parameter::required("S3 key of the aggregator's bootstrap zip"));
    p
}

fn conditions() -> BTreeMap<&'static str, Value> {
    let mut c = BTreeMap::new();
    for (name, parameter) in [
        ("DeployAggregator", "EnableAggregator"),
        ("DeployAlarms", "EnableAlarms"),
        ("DeployIAMRoles", "EnableIAMRoles"),
        ("DeployIAM", "EnableIAM"),
        ("DeployProvisioner", "EnableProvisioner"),
        ("EnableTableDeletionProtection", "EnableDeletionProtection"),
    ] {
        c.insert(name, is_true(parameter));
    }
    for (name, parameter) in [
        ("UsePITRRecoveryPeriod", "PITRRecoveryPeriodDays"),
        ("UseExternalAggregatorRole", "AggregatorRoleArn"),
        ("HasSNSTopic", "AlarmSNSTopicArn"),
        ("HasPermissionBoundary", "PermissionBoundary"),
        ("HasRoleNameFormat", "RoleNameFormat"),
        ("HasCustomAggregatorRoleName", "AggregatorRoleName"),
        ("HasCustomAppRoleName", "AppRoleName"),
        ("HasCustomAdminRoleName", "AdminRoleName"),
        ("HasCustomReadOnlyRoleName", "ReadOnlyRoleName"),
        ("HasCustomProvisionerRoleName", "ProvisionerRoleName"),
        ("HasCustomAcquireOnlyPolicyName", "AcquireOnlyPolicyName"),
        ("HasCustomFullAccessPolicyName", "FullAccessPolicyName"),
        ("HasCustomReadOnlyPolicyName", "ReadOnlyPolicyName"),
        ("HasCustomNamespaceAcquirePolicyName", "NamespaceAcquirePolicyName"),
        ("HasCustomNamespaceFullAccessPolicyName", "NamespaceFullAccessPolicyName"),
        ("HasCustomNamespaceReadOnlyPolicyName", "NamespaceReadOnlyPolicyName"),
    ] {
        c.insert(name, is_set(parameter));
    }
    c.insert(
        "PermissionBoundaryIsArn",
        cfn::equals(json!({"Fn::Select": [0, {"Fn::Split": [":", r#ref("PermissionBoundary")]}]}), json!("arn")),
    );
    c.insert(
        "CreateAggregatorRole",
        and(vec![cond("DeployAggregator"), cond("DeployIAM"), not(cond("UseExternalAggregatorRole"))]),
    );
    c.insert(
        "DeployAggregatorLambda",
        and(vec![cond("DeployAggregator"), or(vec![cond("DeployIAM"), cond("UseExternalAggregatorRole")])]),
    );
    c.insert("DeployIAMRolesWithIAM", and(vec![cond("DeployIAMRoles"), cond("DeployIAM")]));
    c.insert("DeployAggregatorAlarms", and(vec![cond("DeployAggregatorLambda"), cond("DeployAlarms")]));
    c.insert("DeployAuditArchive", and(vec![cond("DeployAggregatorLambda"), is_true("EnableAuditArchival")]));
    c.insert("TracingEnabled", and(vec![cond("DeployAggregatorLambda"), is_true("EnableTracing")]));
    c.insert("CreateProvisionerRole", and(vec![cond("DeployProvisioner"), cond("DeployIAM")]));
    c.insert("DeployProvisionerLambda", and(vec![cond("DeployProvisioner"), cond("DeployIAM")]));
    c
}

fn outputs() -> BTreeMap<&'static str, Output> {
    let mut o = BTreeMap::new();
    let mut add =
        |name: &'static str, description: &'static str, value: Value, condition: Option<&'static str>, export: &str| {
            o.insert(name, Output::new(description, value, condition, export));
        };
    add("TableName", "DynamoDB table name", r#ref("RateLimitsTable"), None, "TableName");
    add("TableArn", "DynamoDB table ARN", get_att("RateLimitsTable", "Arn"), None, "TableArn");
    add("StreamArn", "DynamoDB stream ARN", get_att("RateLimitsTable", "StreamArn"), None, "StreamArn");
    let agg = Some("DeployAggregatorLambda");
    add("AggregatorFunctionArn", "Aggregator Lambda ARN", get_att("AggregatorFunction", "Arn"), agg, "AggregatorArn");
    add("AggregatorFunctionName", "Aggregator Lambda name", r#ref("AggregatorFunction"), agg, "AggregatorName");
    add(
        "AggregatorDLQUrl",
        "Aggregator dead-letter queue URL",
        r#ref("AggregatorDLQ"),
        Some("DeployAggregator"),
        "DLQUrl",
    );
    add(
        "AggregatorDLQArn",
        "Aggregator dead-letter queue ARN",
        get_att("AggregatorDLQ", "Arn"),
        Some("DeployAggregator"),
        "DLQArn",
    );
    let alarms = Some("DeployAggregatorAlarms");
    add("AggregatorDLQAlarmName", "DLQ alarm name", r#ref("AggregatorDLQAlarm"), alarms, "DLQAlarmName");
    add(
        "LambdaErrorRateAlarmName",
        "Aggregator error alarm name",
        r#ref("LambdaErrorRateAlarm"),
        alarms,
        "LambdaErrorRateAlarmName",
    );
    add(
        "LambdaDurationAlarmName",
        "Aggregator duration alarm name",
        r#ref("LambdaDurationAlarm"),
        alarms,
        "LambdaDurationAlarmName",
    );
    add(
        "StreamIteratorAgeAlarmName",
        "Stream iterator age alarm name",
        r#ref("StreamIteratorAgeAlarm"),
        alarms,
        "StreamIteratorAgeAlarmName",
    );
    let table_alarms = Some("DeployAlarms");
    add(
        "DynamoDBReadThrottleAlarmName",
        "Read throttle alarm name",
        r#ref("DynamoDBReadThrottleAlarm"),
        table_alarms,
        "ReadThrottleAlarmName",
    );
    add(
        "DynamoDBWriteThrottleAlarmName",
        "Write throttle alarm name",
        r#ref("DynamoDBWriteThrottleAlarm"),
        table_alarms,
        "WriteThrottleAlarmName",
    );
    let archive = Some("DeployAuditArchive");
    add(
        "AuditArchiveBucketName",
        "Audit archive S3 bucket",
        r#ref("AuditArchiveBucket"),
        archive,
        "AuditArchiveBucketName",
    );
    add(
        "AuditArchiveBucketArn",
        "Audit archive S3 bucket ARN",
        get_att("AuditArchiveBucket", "Arn"),
        archive,
        "AuditArchiveBucketArn",
    );
    add("CodeBucketName", "S3 bucket for deployment artifacts", r#ref("AuditArchiveBucket"), archive, "CodeBucketName");
    for (name, resource) in [
        ("AcquireOnlyPolicyArn", "AcquireOnlyPolicy"),
        ("FullAccessPolicyArn", "FullAccessPolicy"),
        ("ReadOnlyPolicyArn", "ReadOnlyPolicy"),
        ("NamespaceAcquirePolicyArn", "NamespaceAcquirePolicy"),
        ("NamespaceFullAccessPolicyArn", "NamespaceFullAccessPolicy"),
        ("NamespaceReadOnlyPolicyArn", "NamespaceReadOnlyPolicy"),
    ] {
        add(name, "Managed policy ARN", r#ref(resource), Some("DeployIAM"), name);
    }
    let roles = Some("DeployIAMRolesWithIAM");
    for (arn, name, resource) in [
        ("AppRoleArn", "AppRoleName", "AppRole"),
        ("AdminRoleArn", "AdminRoleName", "AdminRole"),
        ("ReadOnlyRoleArn", "ReadOnlyRoleName", "ReadOnlyRole"),
    ] {
        add(arn, "Role ARN", get_att(resource, "Arn"), roles, arn);
        add(name, "Role name", r#ref(resource), roles, name);
    }
    add(
        "PermissionBoundaryArn",
        "Permission boundary ARN",
        iam::boundary_arn(),
        Some("HasPermissionBoundary"),
        "PermissionBoundaryArn",
    );
    add("RoleNameFormat", "Role name format", r#ref("RoleNameFormat"), Some("HasRoleNameFormat"), "RoleNameFormat");
    let prov = Some("DeployProvisionerLambda");
    add(
        "ProvisionerFunctionArn",
        "Limits provisioner Lambda ARN",
        get_att("ProvisionerFunction", "Arn"),
        prov,
        "ProvisionerArn",
    );
    add(
        "ProvisionerFunctionName",
        "Limits provisioner Lambda name",
        r#ref("ProvisionerFunction"),
        prov,
        "ProvisionerName",
    );
    o
}

/// A stack-name-prefixed default with a parameter override: `If(Has…, Ref P, Sub "${AWS::StackName}-suffix")`.
pub(crate) fn named(condition: &str, parameter: &str, suffix: &str) -> Value {
    cfn::if_(condition, r#ref(parameter), sub(&format!("${{AWS::StackName}}-{suffix}")))
}

#[cfg(test)]
mod tests;

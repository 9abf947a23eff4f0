//! The six managed policies and the five roles (§9.6, §9.7).

use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::cfn::{Resource, get_att, if_, no_value, r#ref, sub};
use super::named;

const NS: &str = "${aws:PrincipalTag/zael_namespace_id}";

/// The table and its indexes.
fn table_and_indexes() -> Value {
    json!([get_att("RateLimitsTable", "Arn"), sub("${RateLimitsTable.Arn}/index/*")])
}

fn actions(names: &[&str]) -> Value {
    Value::Array(names.iter().map(|a| json!(format!("dynamodb:{a}"))).collect())
}

fn leading_keys(keys: &[&str]) -> Value {
    json!({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": keys}})
}

/// Bucket writes only: `PutItem`/`UpdateItem` on the table, partition keys matching `keys`, and
/// a request that names its partition keys at all (the `Null` guard).
fn bucket_writes(sid: &str, pattern: &str) -> Value {
    let mut condition = leading_keys(&[pattern]);
    condition["Null"] = json!({"dynamodb:LeadingKeys": "false"});
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions(&["PutItem", "UpdateItem"]),
        "Resource": get_att("RateLimitsTable", "Arn"),
        "Condition": condition,
    })
}

fn statement(sid: Option<&str>, names: &[&str], condition: Option<Value>) -> Value {
    let mut s = json!({"Effect": "Allow", "Action": actions(names), "Resource": table_and_indexes()});
    if let Some(sid) = sid {
        s["Sid"] = json!(sid);
    }
    if let Some(c) = condition {
        s["Condition"] = c;
    }
    s
}

fn policy(name: Value, description: &str, statements: Vec<Value>) -> Resource {
    Resource::new(
        "AWS::IAM::ManagedPolicy",
        Some("DeployIAM"),
        json!({
            "ManagedPolicyName": name,
            "Description": description,
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        }),
    )
}

/// The permission boundary as an ARN: as given when it is one, else a policy of this account.
pub fn boundary_arn() -> Value {
    if_(
        "PermissionBoundaryIsArn",
        r#ref("PermissionBoundary"),
        sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:policy/${PermissionBoundary}"),
    )
}

fn boundary() -> Value {
    if_("HasPermissionBoundary", boundary_arn(), no_value())
}

fn lambda_trust() -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
}

fn account_trust() -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")}, "Action": "sts:AssumeRole"}]})
}

fn basic_execution() -> Value {
    sub("arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole")
}

fn user_role(condition_name: &str, parameter: &str, suffix: &str, policy: &str, tag: &str) -> Resource {
    Resource::new(
        "AWS::IAM::Role",
        Some("DeployIAMRolesWithIAM"),
        json!({
            "RoleName": named(condition_name, parameter, suffix),
            "AssumeRolePolicyDocument": account_trust(),
            "ManagedPolicyArns": [r#ref(policy)],
            "PermissionsBoundary": boundary(),
            "Tags": [{"Key": "Application", "Value": "zae-limiter"}, {"Key": "Role", "Value": tag}],
        }),
    )
}

pub fn resources(out: &mut BTreeMap<&'static str, Resource>) {
    out.insert(
        "AcquireOnlyPolicy",
        policy(
            named("HasCustomAcquireOnlyPolicyName", "AcquireOnlyPolicyName", "acq"),
            "Rate limiter acquire-only access (read + transact write)",
            vec![
                statement(None, &["GetItem", "BatchGetItem", "Query", "ConditionCheckItem"], None),
                bucket_writes("BucketWrites", "*/BUCKET#*"),
            ],
        ),
    );
    out.insert(
        "FullAccessPolicy",
        policy(
            named("HasCustomFullAccessPolicyName", "FullAccessPolicyName", "full"),
            "Rate limiter full access (all operations)",
            vec![statement(
                None,
                &[
                    "GetItem",
                    "BatchGetItem",
                    "Query",
                    "Scan",
                    "DescribeTable",
                    "PutItem",
                    "DeleteItem",
                    "UpdateItem",
                    "BatchWriteItem",
                    "ConditionCheckItem",
                ],
                None,
            )],
        ),
    );
    out.insert(
        "ReadOnlyPolicy",
        policy(
            named("HasCustomReadOnlyPolicyName", "ReadOnlyPolicyName", "read"),
            "Rate limiter read-only access (monitoring)",
            vec![statement(None, &["GetItem", "BatchGetItem", "Query", "Scan", "DescribeTable"], None)],
        ),
    );
    out.insert(
        "NamespaceAcquirePolicy",
        policy(
            named("HasCustomNamespaceAcquirePolicyName", "NamespaceAcquirePolicyName", "ns-acq"),
            "Namespace-scoped acquire-only access (read + update within namespace)",
            vec![
                statement(
                    Some("NamespaceAcquireAccess"),
                    &["GetItem", "BatchGetItem", "Query", "ConditionCheckItem"],
                    Some(leading_keys(&[&format!("{NS}/*")])),
                ),
                bucket_writes("NamespaceBucketWrites", &format!("{NS}/BUCKET#*")),
                statement(
                    Some("SharedReadAccess"),
                    &["GetItem", "BatchGetItem", "Query"],
                    Some(leading_keys(&["_/*"])),
                ),
            ],
        ),
    );
    out.insert(
        "NamespaceFullAccessPolicy",
        policy(
            named("HasCustomNamespaceFullAccessPolicyName", "NamespaceFullAccessPolicyName", "ns-full"),
            "Namespace-scoped full access (all operations within namespace)",
            vec![statement(
                Some("NamespaceFullAccess"),
                &[
                    "GetItem",
                    "BatchGetItem",
                    "Query",
                    "PutItem",
                    "UpdateItem",
                    "DeleteItem",
                    "BatchWriteItem",
                    "ConditionCheckItem",
                ],
                Some(leading_keys(&[&format!("{NS}/*"), NS, "_/*"])),
            )],
        ),
    );
    out.insert(
        "NamespaceReadOnlyPolicy",
        policy(
            named("HasCustomNamespaceReadOnlyPolicyName", "NamespaceReadOnlyPolicyName", "ns-read"),
            "Namespace-scoped read-only access (monitoring within namespace)",
            vec![statement(
                Some("NamespaceReadAccess"),
                &["GetItem", "BatchGetItem", "Query"],
                Some(leading_keys(&[&format!("{NS}/*"), "_/*"])),
            )],
        ),
    );

    let mut aggregator_policies = vec![json!({
        "PolicyName": "DynamoDBAccess",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions(&["GetItem", "PutItem", "UpdateItem", "Query", "ConditionCheckItem"]), "Resource": table_and_indexes()},
            {"Effect": "Allow", "Action": actions(&["GetRecords", "GetShardIterator", "DescribeStream", "ListStreams"]), "Resource": get_att("RateLimitsTable", "StreamArn")},
            {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": get_att("AggregatorDLQ", "Arn")},
        ]},
    })];
    aggregator_policies.push(if_(
        "DeployAuditArchive",
        json!({"PolicyName": "S3ArchiveAccess", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:PutObject", "Resource": sub("${AuditArchiveBucket.Arn}/*")},
        ]}}),
        no_value(),
    ));
    aggregator_policies.push(if_(
        "TracingEnabled",
        json!({"PolicyName": "XRayAccess", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*"},
        ]}}),
        no_value(),
    ));
    out.insert(
        "AggregatorRole",
        Resource::new(
            "AWS::IAM::Role",
            Some("CreateAggregatorRole"),
            json!({
                "RoleName": named("HasCustomAggregatorRoleName", "AggregatorRoleName", "aggr"),
                "AssumeRolePolicyDocument": lambda_trust(),
                "ManagedPolicyArns": [basic_execution()],
                "Policies": aggregator_policies,
                "PermissionsBoundary": boundary(),
            }),
        ),
    );
    out.insert(
        "ProvisionerRole",
        Resource::new(
            "AWS::IAM::Role",
            Some("CreateProvisionerRole"),
            json!({
                "RoleName": named("HasCustomProvisionerRoleName", "ProvisionerRoleName", "prov"),
                "AssumeRolePolicyDocument": lambda_trust(),
                "ManagedPolicyArns": [basic_execution()],
                "Policies": [{"PolicyName": "DynamoDBAccess", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions(&["GetItem", "PutItem", "DeleteItem", "UpdateItem", "Query"]), "Resource": table_and_indexes()},
                ]}}],
                "PermissionsBoundary": boundary(),
            }),
        ),
    );
    out.insert("AppRole", user_role("HasCustomAppRoleName", "AppRoleName", "app", "AcquireOnlyPolicy", "app"));
    out.insert("AdminRole", user_role("HasCustomAdminRoleName", "AdminRoleName", "admin", "FullAccessPolicy", "admin"));
    out.insert(
        "ReadOnlyRole",
        user_role("HasCustomReadOnlyRoleName", "ReadOnlyRoleName", "read", "ReadOnlyPolicy", "readonly"),
    );
}

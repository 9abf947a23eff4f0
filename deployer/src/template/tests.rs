use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn as_json() -> Value {
    serde_json::from_str(&to_json(&template())).unwrap()
}

/// Every `{"Ref": X}`, `{"Condition": X}`, `Fn::GetAtt` and `Fn::If` name in `v`.
fn names(v: &Value, refs: &mut BTreeSet<String>, conds: &mut BTreeSet<String>, atts: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("Ref") {
                refs.insert(r.clone());
            }
            if let (Some(Value::String(c)), 1) = (m.get("Condition"), m.len()) {
                conds.insert(c.clone());
            }
            if let Some(Value::Array(a)) = m.get("Fn::GetAtt") {
                atts.insert(a[0].as_str().unwrap().to_owned());
            }
            if let Some(Value::Array(a)) = m.get("Fn::If") {
                conds.insert(a[0].as_str().unwrap().to_owned());
            }
            m.values().for_each(|x| names(x, refs, conds, atts));
        }
        Value::Array(a) => a.iter().for_each(|x| names(x, refs, conds, atts)),
        _ => {}
    }
}

#[test]
fn the_reference_inventory() {
    let t = template();
    assert_eq!(t.parameters.len(), 34, "the reference's 32 and the aggregator code location");
    assert_eq!(t.conditions.len(), 31);
    assert_eq!(t.resources.len(), 25);
    assert_eq!(t.outputs.len(), 32);
    assert!(to_json(&t).len() < 51_200, "fits CreateStack's TemplateBody");
}

#[test]
fn every_reference_resolves() {
    let json = as_json();
    let (mut refs, mut conds, mut atts) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    names(&json["Resources"], &mut refs, &mut conds, &mut atts);
    names(&json["Outputs"], &mut refs, &mut conds, &mut atts);
    names(&json["Conditions"], &mut refs, &mut conds, &mut atts);
    let keys = |section: &str| json[section].as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let (params, resources, conditions) = (keys("Parameters"), keys("Resources"), keys("Conditions"));
    for r in refs {
        assert!(r.starts_with("AWS::") || params.contains(&r) || resources.contains(&r), "Ref {r}");
    }
    for a in atts {
        assert!(resources.contains(&a), "GetAtt {a}");
    }
    for c in conds {
        assert!(conditions.contains(&c), "Condition {c}");
    }
    for (name, resource) in json["Resources"].as_object().unwrap() {
        if let Some(c) = resource.get("Condition") {
            assert!(conditions.contains(c.as_str().unwrap()), "{name}");
        }
    }
}

#[test]
fn policy_descriptions_never_change() {
    let json = as_json();
    for (id, description) in [
        ("AcquireOnlyPolicy", "Rate limiter acquire-only access (read + transact write)"),
        ("FullAccessPolicy", "Rate limiter full access (all operations)"),
        ("ReadOnlyPolicy", "Rate limiter read-only access (monitoring)"),
        ("NamespaceAcquirePolicy", "Namespace-scoped acquire-only access (read + update within namespace)"),
        ("NamespaceFullAccessPolicy", "Namespace-scoped full access (all operations within namespace)"),
        ("NamespaceReadOnlyPolicy", "Namespace-scoped read-only access (monitoring within namespace)"),
    ] {
        assert_eq!(json["Resources"][id]["Properties"]["Description"], description, "{id}");
    }
    let ns = &json["Resources"]["NamespaceAcquirePolicy"]["Properties"]["PolicyDocument"]["Statement"][1];
    assert_eq!(ns["Sid"], "NamespaceBucketWrites");
    assert_eq!(
        ns["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"][0],
        "${aws:PrincipalTag/zael_namespace_id}/BUCKET#*",
        "a plain string, not an Fn::Sub"
    );
    assert_eq!(ns["Condition"]["Null"]["dynamodb:LeadingKeys"], "false");
}

#[test]
fn the_aggregator_is_a_rust_lambda_with_per_record_failures() {
    let json = as_json();
    let f = &json["Resources"]["AggregatorFunction"]["Properties"];
    assert_eq!((f["Runtime"].as_str(), f["Handler"].as_str()), (Some("provided.al2023"), Some("bootstrap")));
    assert_eq!(f["Architectures"], serde_json::json!(["x86_64"]));
    let esm = &json["Resources"]["AggregatorEventSourceMapping"]["Properties"];
    assert_eq!(esm["FunctionResponseTypes"], serde_json::json!(["ReportBatchItemFailures"]));
    assert_eq!(esm["BisectBatchOnFunctionError"], true);
    let audit: Value = serde_json::from_str(esm["FilterCriteria"]["Filters"][1]["Pattern"].as_str().unwrap()).unwrap();
    assert_eq!(audit["dynamodb"]["OldImage"]["SK"]["S"][0]["prefix"], "#AUDIT#");
}

fn venv_python_tool(tool: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("ZAEL_VENV")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let path = venv.join("bin").join(tool);
    assert!(path.is_file(), "{} missing: run scripts/setup-test-env", path.display());
    path
}

fn deploy_params(flags: &[&str]) -> Vec<(&'static str, String)> {
    use clap::Parser;
    let mut argv = vec!["zae-limiter", "deploy", "-n", "prod-limiter"];
    argv.extend(flags);
    let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
    let crate::cli::Command::Deploy(args) = cli.command else { panic!("deploy") };
    let mut p = params::for_deploy(&args.stack_parameters());
    p.push(("AggregatorCodeS3Bucket", "zae-limiter-artifacts".into()));
    p.push(("AggregatorCodeS3Key", "aggregator/bootstrap.zip".into()));
    p
}

/// The rows of the IAM matrix (§3.4) and alarms, archival, tracing and PITR on and off: each
/// resolved template passes cfn-lint, and carries exactly the resources its row asks for.
#[test]
fn every_row_of_the_matrix_passes_cfn_lint() {
    let arn = "arn:aws:iam::123456789012:role/MyLambdaRole";
    let rows: Vec<(&str, Vec<&str>)> = vec![
        ("defaults", vec![]),
        ("create-iam-roles", vec!["--create-iam-roles"]),
        ("external-role", vec!["--aggregator-role-arn", arn]),
        ("external-role-with-roles", vec!["--aggregator-role-arn", arn, "--create-iam-roles"]),
        ("no-iam", vec!["--no-iam"]),
        ("no-iam-external-role", vec!["--no-iam", "--aggregator-role-arn", arn]),
        (
            "tracing-pitr-boundary",
            vec!["--enable-tracing", "--pitr-recovery-days", "7", "--permission-boundary", "ServiceBoundary"],
        ),
        ("no-alarms-no-archival", vec!["--no-alarms", "--no-audit-archival"]),
        (
            "sns-formats",
            vec![
                "--alarm-sns-topic",
                "arn:aws:sns:us-east-1:123456789012:alerts",
                "--role-name-format",
                "svc-{}",
                "--policy-name-format",
                "pol-{}",
            ],
        ),
        ("no-aggregator", vec!["--no-aggregator", "--enable-deletion-protection"]),
        // `deploy` never enables the placeholder provisioner; the template still carries it
        // (stacks the Python CLI made have it), so it is linted with the parameter set.
        ("provisioner-parameter", vec!["--no-aggregator"]),
    ];
    let full = as_json();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut resources = BTreeMap::new();
    for (name, flags) in &rows {
        let mut params = deploy_params(flags);
        if *name == "provisioner-parameter" {
            params.retain(|(k, _)| *k != "EnableProvisioner");
            params.push(("EnableProvisioner", "true".into()));
        }
        let resolved = resolve::resolve(&full, &params);
        let keys: BTreeSet<String> = resolved["Resources"].as_object().unwrap().keys().cloned().collect();
        resources.insert(*name, keys);
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&resolved).unwrap()).unwrap();
        files.push(path);
    }
    let has = |row: &str, id: &str| resources[row].contains(id);
    assert!(has("defaults", "AggregatorRole") && !has("defaults", "AppRole") && has("defaults", "AcquireOnlyPolicy"));
    assert!(
        has("create-iam-roles", "AppRole")
            && has("create-iam-roles", "AdminRole")
            && has("create-iam-roles", "ReadOnlyRole")
    );
    assert!(!has("external-role", "AggregatorRole") && has("external-role", "AggregatorFunction"));
    assert!(has("external-role-with-roles", "AppRole"));
    assert_eq!(
        resources["no-iam"],
        BTreeSet::from(
            ["DynamoDBReadThrottleAlarm", "DynamoDBWriteThrottleAlarm", "RateLimitsTable"].map(String::from)
        ),
        "--no-iam: the table and its throttle alarms"
    );
    assert!(has("no-iam-external-role", "AggregatorFunction") && !has("no-iam-external-role", "AcquireOnlyPolicy"));
    assert!(!has("no-iam-external-role", "ProvisionerFunction"));
    assert!(
        !has("no-alarms-no-archival", "LambdaErrorRateAlarm") && !has("no-alarms-no-archival", "AuditArchiveBucket")
    );
    assert!(has("defaults", "StreamIteratorAgeAlarm") && has("defaults", "AuditArchiveBucket"));
    assert!(!has("no-aggregator", "AggregatorDLQ") && !has("no-aggregator", "ProvisionerFunction"));
    assert!(!has("defaults", "ProvisionerFunction") && !has("defaults", "ProvisionerRole"));
    assert!(has("provisioner-parameter", "ProvisionerFunction") && has("provisioner-parameter", "ProvisionerRole"));

    let out = std::process::Command::new(venv_python_tool("cfn-lint")).args(&files).output().expect("run cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

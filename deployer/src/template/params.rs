//! The stack parameters `deploy` sends for its flags (§3.1): booleans as `true`/`false`,
//! numbers as decimal strings, optional values only when given.

/// What a stack is deployed with, as plain values (`deploy`'s flags decide them:
/// `DeployArgs::stack_parameters`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackParameters {
    pub stack_name: String,
    pub snapshot_windows: String,
    pub usage_retention_days: u32,
    pub lambda_memory_mb: u32,
    pub lambda_timeout_secs: u32,
    /// One of CloudWatch Logs' retention values, as text.
    pub log_retention_days: String,
    /// The aggregator's duration alarm, in percent of its timeout.
    pub lambda_duration_threshold_pct: u32,
    pub aggregator: bool,
    pub alarms: bool,
    pub audit_archival: bool,
    pub audit_archive_glacier_days: u32,
    pub tracing: bool,
    /// The App, Admin and ReadOnly roles.
    pub iam_roles: bool,
    /// Any IAM resource at all.
    pub iam: bool,
    pub deletion_protection: bool,
    pub pitr_recovery_days: Option<u32>,
    pub alarm_sns_topic: Option<String>,
    pub permission_boundary: Option<String>,
    pub aggregator_role_arn: Option<String>,
    /// A name format with one `{}` (the `{stack}-{component}` name goes there).
    pub role_name_format: Option<String>,
    pub policy_name_format: Option<String>,
}

/// The (key, value) parameters of a deploy, in the template's parameter names.
pub fn for_deploy(stack: &StackParameters) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "true".to_owned() } else { "false".to_owned() };
    let mut p = vec![
        ("SchemaVersion", crate::compat::SCHEMA_VERSION.to_owned()),
        ("SnapshotWindows", stack.snapshot_windows.clone()),
        ("SnapshotRetentionDays", stack.usage_retention_days.to_string()),
        ("LambdaMemorySize", stack.lambda_memory_mb.to_string()),
        ("LambdaTimeout", stack.lambda_timeout_secs.to_string()),
        ("LogRetentionDays", stack.log_retention_days.clone()),
        (
            "LambdaDurationThreshold",
            duration_threshold_ms(stack.lambda_timeout_secs, stack.lambda_duration_threshold_pct).to_string(),
        ),
        ("EnableAggregator", flag(stack.aggregator)),
        // Never deployed: the template's function is a placeholder (see `PROVISIONER_REFUSED`).
        ("EnableProvisioner", flag(false)),
        ("EnableAlarms", flag(stack.alarms)),
        ("EnableAuditArchival", flag(stack.audit_archival)),
        ("AuditArchiveGlacierTransitionDays", stack.audit_archive_glacier_days.to_string()),
        ("EnableTracing", flag(stack.tracing)),
        ("EnableIAMRoles", flag(stack.iam_roles)),
        ("EnableIAM", flag(stack.iam)),
        ("EnableDeletionProtection", flag(stack.deletion_protection)),
    ];
    if let Some(days) = stack.pitr_recovery_days {
        p.push(("PITRRecoveryPeriodDays", days.to_string()));
    }
    if let Some(topic) = &stack.alarm_sns_topic {
        p.push(("AlarmSNSTopicArn", topic.clone()));
    }
    if let Some(boundary) = &stack.permission_boundary {
        p.push(("PermissionBoundary", boundary.clone()));
    }
    if let Some(arn) = &stack.aggregator_role_arn {
        p.push(("AggregatorRoleArn", arn.clone()));
    }
    let name = &stack.stack_name;
    if let Some(format) = &stack.role_name_format {
        p.push(("RoleNameFormat", format.clone()));
        for (parameter, component) in ROLE_NAMES {
            p.push((parameter, format.replacen("{}", &format!("{name}-{component}"), 1)));
        }
    }
    if let Some(format) = &stack.policy_name_format {
        for (parameter, component) in POLICY_NAMES {
            p.push((parameter, format.replacen("{}", &format!("{name}-{component}"), 1)));
        }
    }
    p
}

/// `int(timeout_s × 1000 × (pct / 100))` in doubles, as the reference computes it.
pub fn duration_threshold_ms(timeout_secs: u32, pct: u32) -> i64 {
    ((f64::from(timeout_secs) * 1000.0) * (f64::from(pct) / 100.0)) as i64
}

/// The role-name parameters and the component of each generated name (§3.2).
pub const ROLE_NAMES: [(&str, &str); 5] = [
    ("AggregatorRoleName", "aggr"),
    ("AppRoleName", "app"),
    ("AdminRoleName", "admin"),
    ("ReadOnlyRoleName", "read"),
    ("ProvisionerRoleName", "prov"),
];
/// The policy-name parameters and the component of each generated name (§3.2).
pub const POLICY_NAMES: [(&str, &str); 6] = [
    ("AcquireOnlyPolicyName", "acq"),
    ("FullAccessPolicyName", "full"),
    ("ReadOnlyPolicyName", "read"),
    ("NamespaceAcquirePolicyName", "ns-acq"),
    ("NamespaceFullAccessPolicyName", "ns-full"),
    ("NamespaceReadOnlyPolicyName", "ns-read"),
];

/// A name built from a format over its IAM limit, with the reference's message.
pub fn check_name_lengths(stack: &str, format: Option<&str>, policies: bool) -> Result<(), String> {
    let Some(format) = format else { return Ok(()) };
    let (what, limit, names): (&str, usize, &[(&str, &str)]) =
        if policies { ("policy_name", 128, &POLICY_NAMES) } else { ("role_name", 64, &ROLE_NAMES) };
    for (_, component) in names {
        let name = format.replacen("{}", &format!("{stack}-{component}"), 1);
        let len = name.chars().count();
        if len > limit {
            let max_stack = limit as i64 - (format.chars().count() as i64 - 2) - 1 - component.len() as i64;
            return Err(format!(
                "Invalid {what}: exceeds IAM {limit}-character limit by {} characters. Shorten stack name to max {max_stack} characters with this format.",
                len - limit
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    fn params(flags: &[&str]) -> BTreeMap<&'static str, String> {
        let mut argv = vec!["zae-limiter", "deploy", "-n", "prod-limiter"];
        argv.extend(flags);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
        let crate::cli::Command::Deploy(args) = cli.command else { panic!("deploy") };
        for_deploy(&args.stack_parameters()).into_iter().collect()
    }

    #[test]
    fn defaults() {
        let p = params(&[]);
        for (k, v) in [
            ("SchemaVersion", "0.10.0"),
            ("SnapshotWindows", "hourly,daily"),
            ("SnapshotRetentionDays", "90"),
            ("LambdaMemorySize", "256"),
            ("LambdaTimeout", "60"),
            ("LogRetentionDays", "30"),
            ("LambdaDurationThreshold", "48000"),
            ("EnableAggregator", "true"),
            ("EnableProvisioner", "false"),
            ("EnableAlarms", "true"),
            ("EnableAuditArchival", "true"),
            ("EnableTracing", "false"),
            ("EnableIAMRoles", "false"),
            ("EnableIAM", "true"),
            ("EnableDeletionProtection", "false"),
        ] {
            assert_eq!(p[k], v, "{k}");
        }
        for absent in
            ["PITRRecoveryPeriodDays", "AlarmSNSTopicArn", "PermissionBoundary", "AggregatorRoleArn", "RoleNameFormat"]
        {
            assert!(!p.contains_key(absent), "{absent} is sent only when set");
        }
    }

    #[test]
    fn the_iam_matrix() {
        let p = params(&["--create-iam-roles"]);
        assert_eq!((p["EnableIAMRoles"].as_str(), p["EnableIAM"].as_str()), ("true", "true"));
        let p = params(&["--no-iam"]);
        assert_eq!(
            (p["EnableIAM"].as_str(), p["EnableAggregator"].as_str(), p["EnableProvisioner"].as_str()),
            ("false", "false", "false"),
            "--no-iam without a role turns the aggregator off (the provisioner is never deployed)"
        );
        let arn = "arn:aws:iam::123456789012:role/MyLambdaRole";
        let p = params(&["--no-iam", "--aggregator-role-arn", arn]);
        assert_eq!((p["EnableAggregator"].as_str(), p["AggregatorRoleArn"].as_str()), ("true", arn));
        assert_eq!(p["EnableProvisioner"], "false");
    }

    #[test]
    fn names_tracing_alarms_archival_pitr() {
        let p = params(&[
            "--role-name-format",
            "svc-{}",
            "--policy-name-format",
            "pol-{}",
            "--permission-boundary",
            "arn:aws:iam::123456789012:policy/ServiceBoundary",
            "--enable-tracing",
            "--no-alarms",
            "--no-audit-archival",
            "--pitr-recovery-days",
            "7",
            "--alarm-sns-topic",
            "arn:aws:sns:us-east-1:123456789012:alerts",
            "--lambda-timeout",
            "3",
            "--lambda-duration-threshold-pct",
            "29",
        ]);
        assert_eq!(p["AggregatorRoleName"], "svc-prod-limiter-aggr");
        assert_eq!(p["ReadOnlyRoleName"], "svc-prod-limiter-read");
        assert_eq!(p["NamespaceAcquirePolicyName"], "pol-prod-limiter-ns-acq");
        assert_eq!(p["RoleNameFormat"], "svc-{}");
        assert_eq!(p["PermissionBoundary"], "arn:aws:iam::123456789012:policy/ServiceBoundary");
        assert_eq!((p["EnableTracing"].as_str(), p["EnableAlarms"].as_str()), ("true", "false"));
        assert_eq!((p["EnableAuditArchival"].as_str(), p["PITRRecoveryPeriodDays"].as_str()), ("false", "7"));
        assert_eq!(p["LambdaDurationThreshold"], "869", "3 s x 29 % in doubles, as the reference");
    }

    #[test]
    fn name_lengths() {
        assert!(check_name_lengths("prod", Some("svc-{}"), false).is_ok());
        let long = "a".repeat(50);
        let err = check_name_lengths(&long, Some("service-role-{}"), false).unwrap_err();
        assert!(err.starts_with("Invalid role_name: exceeds IAM 64-character limit by"), "{err}");
    }
}

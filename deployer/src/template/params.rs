//! The stack parameters `deploy` sends for its flags (§3.1): booleans as `true`/`false`,
//! numbers as decimal strings, optional values only when given.

use crate::commands::stack::DeployArgs;

/// The (key, value) parameters of a deploy, in the template's parameter names.
pub fn for_deploy(args: &DeployArgs) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "true".to_owned() } else { "false".to_owned() };
    let no_iam = args.no_iam;
    // `--no-iam` without an external role leaves the aggregator no role: it is turned off.
    let aggregator_without_role = no_iam && args.aggregator_role_arn.is_none();
    let aggregator = !(args.no_aggregator || aggregator_without_role);
    let mut p = vec![
        ("SchemaVersion", crate::compat::SCHEMA_VERSION.to_owned()),
        ("SnapshotWindows", args.snapshot_windows.clone()),
        ("SnapshotRetentionDays", args.usage_retention_days.to_string()),
        ("LambdaMemorySize", args.lambda_memory.to_string()),
        ("LambdaTimeout", args.lambda_timeout.to_string()),
        ("LogRetentionDays", args.log_retention_days.clone()),
        (
            "LambdaDurationThreshold",
            duration_threshold_ms(args.lambda_timeout, args.lambda_duration_threshold_pct).to_string(),
        ),
        ("EnableAggregator", flag(aggregator)),
        // Never deployed: the template's function is a placeholder (see `PROVISIONER_REFUSED`).
        ("EnableProvisioner", flag(false)),
        ("EnableAlarms", flag(!args.no_alarms)),
        ("EnableAuditArchival", flag(!args.no_audit_archival)),
        ("AuditArchiveGlacierTransitionDays", args.audit_archive_glacier_days.to_string()),
        ("EnableTracing", flag(args.enable_tracing)),
        ("EnableIAMRoles", flag(args.create_iam_roles)),
        ("EnableIAM", flag(!no_iam)),
        ("EnableDeletionProtection", flag(args.enable_deletion_protection)),
    ];
    if let Some(days) = args.pitr_recovery_days {
        p.push(("PITRRecoveryPeriodDays", days.to_string()));
    }
    if let Some(topic) = &args.alarm_sns_topic {
        p.push(("AlarmSNSTopicArn", topic.clone()));
    }
    if let Some(boundary) = &args.permission_boundary {
        p.push(("PermissionBoundary", boundary.clone()));
    }
    if let Some(arn) = &args.aggregator_role_arn {
        p.push(("AggregatorRoleArn", arn.clone()));
    }
    let stack = &args.target.name;
    if let Some(format) = &args.role_name_format {
        p.push(("RoleNameFormat", format.clone()));
        for (parameter, component) in ROLE_NAMES {
            p.push((parameter, format.replacen("{}", &format!("{stack}-{component}"), 1)));
        }
    }
    if let Some(format) = &args.policy_name_format {
        for (parameter, component) in POLICY_NAMES {
            p.push((parameter, format.replacen("{}", &format!("{stack}-{component}"), 1)));
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
        for_deploy(&args).into_iter().collect()
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

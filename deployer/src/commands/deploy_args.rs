//! `deploy`'s flags (clap) and the checks made on them before any AWS call (§3.2), and the
//! plain [`StackParameters`] they decide for the template.

use crate::repo::{Result, Target};
use crate::template::params::StackParameters;

const LOG_RETENTION_DAYS: [&str; 22] = [
    "1", "3", "5", "7", "14", "30", "60", "90", "120", "150", "180", "365", "400", "545", "731", "1096", "1827",
    "2192", "2557", "2922", "3288", "3653",
];

/// `zae-limiter deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: Target,
    /// Create only the table (exact definition, TTL, version record, `default` namespace):
    /// for emulators without CloudFormation (DynamoDB Local, moto). Needs --endpoint-url.
    #[arg(long)]
    pub table_only: bool,
    #[arg(long, default_value = "hourly,daily")]
    pub snapshot_windows: String,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub usage_retention_days: u32,
    #[arg(long, visible_alias = "audit-ttl-days", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: u32,
    #[arg(long = "enable-aggregator", overrides_with = "no_aggregator")]
    pub enable_aggregator: bool,
    #[arg(long = "no-aggregator")]
    pub no_aggregator: bool,
    /// The zael-aggregator binary to deploy (default: the one next to zae-limiter).
    #[arg(long = "aggregator-binary", env = crate::lambda_package::BINARY_ENV)]
    pub binary: Option<std::path::PathBuf>,
    /// Refused: there is no provisioner code yet (see [`PROVISIONER_REFUSED`]).
    #[arg(long = "enable-provisioner", overrides_with = "no_provisioner")]
    pub enable_provisioner: bool,
    /// Accepted for the reference's scripts; the provisioner is never deployed.
    #[arg(long = "no-provisioner")]
    pub no_provisioner: bool,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=35))]
    pub pitr_recovery_days: Option<u32>,
    #[arg(long, default_value = "30", value_parser = LOG_RETENTION_DAYS)]
    pub log_retention_days: String,
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=900))]
    pub lambda_timeout: u32,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(128..=3008))]
    pub lambda_memory: u32,
    #[arg(long = "enable-alarms", overrides_with = "no_alarms")]
    pub enable_alarms: bool,
    #[arg(long = "no-alarms")]
    pub no_alarms: bool,
    #[arg(long)]
    pub alarm_sns_topic: Option<String>,
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub lambda_duration_threshold_pct: u32,
    #[arg(long = "wait", overrides_with = "no_wait")]
    pub wait: bool,
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    #[arg(long)]
    pub permission_boundary: Option<String>,
    #[arg(long)]
    pub role_name_format: Option<String>,
    #[arg(long)]
    pub policy_name_format: Option<String>,
    #[arg(long = "enable-audit-archival", overrides_with = "no_audit_archival")]
    pub enable_audit_archival: bool,
    #[arg(long = "no-audit-archival")]
    pub no_audit_archival: bool,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub audit_archive_glacier_days: u32,
    #[arg(long = "enable-tracing", overrides_with = "no_tracing")]
    pub enable_tracing: bool,
    #[arg(long = "no-tracing")]
    pub no_tracing: bool,
    #[arg(long = "create-iam-roles", overrides_with = "no_create_iam_roles")]
    pub create_iam_roles: bool,
    #[arg(long = "no-create-iam-roles")]
    pub no_create_iam_roles: bool,
    #[arg(long = "iam", overrides_with = "no_iam")]
    pub iam: bool,
    #[arg(long = "no-iam")]
    pub no_iam: bool,
    #[arg(long)]
    pub aggregator_role_arn: Option<String>,
    #[arg(long = "enable-deletion-protection", overrides_with = "no_deletion_protection")]
    pub enable_deletion_protection: bool,
    #[arg(long = "no-deletion-protection")]
    pub no_deletion_protection: bool,
    /// Stack tag KEY=VALUE (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
}

impl DeployArgs {
    /// The stack parameters these flags ask for. `--no-iam` without `--aggregator-role-arn`
    /// leaves the aggregator no role, so it turns the aggregator off, as the reference does.
    pub fn stack_parameters(&self) -> StackParameters {
        let aggregator_without_role = self.no_iam && self.aggregator_role_arn.is_none();
        StackParameters {
            stack_name: self.target.name.clone(),
            snapshot_windows: self.snapshot_windows.clone(),
            usage_retention_days: self.usage_retention_days,
            lambda_memory_mb: self.lambda_memory,
            lambda_timeout_secs: self.lambda_timeout,
            log_retention_days: self.log_retention_days.clone(),
            lambda_duration_threshold_pct: self.lambda_duration_threshold_pct,
            aggregator: !(self.no_aggregator || aggregator_without_role),
            alarms: !self.no_alarms,
            audit_archival: !self.no_audit_archival,
            audit_archive_glacier_days: self.audit_archive_glacier_days,
            tracing: self.enable_tracing,
            iam_roles: self.create_iam_roles,
            iam: !self.no_iam,
            deletion_protection: self.enable_deletion_protection,
            pitr_recovery_days: self.pitr_recovery_days,
            alarm_sns_topic: self.alarm_sns_topic.clone(),
            permission_boundary: self.permission_boundary.clone(),
            aggregator_role_arn: self.aggregator_role_arn.clone(),
            role_name_format: self.role_name_format.clone(),
            policy_name_format: self.policy_name_format.clone(),
        }
    }
}

/// Why `--enable-provisioner` is refused. The reference deploys its limits provisioner (the
/// custom resource behind `limits apply`) by default; this CLI has no provisioner code yet, and
/// the template's function is a placeholder that raises, so `deploy` never deploys it (the
/// summary says `Provisioner: disabled`) rather than present a function that cannot work.
pub const PROVISIONER_REFUSED: &str = "--enable-provisioner: this zae-limiter has no limits provisioner yet \
     (the function would be a placeholder that fails every call); deploy without it and set limits with \
     'entity set-limits', 'resource set-defaults' and 'system set-defaults'";

/// The checks made before any AWS call (§3.2), in the reference's order.
pub fn validate(args: &DeployArgs) -> Result<Vec<(String, String)>> {
    if args.enable_provisioner {
        return Err(PROVISIONER_REFUSED.into());
    }
    if args.no_iam && args.create_iam_roles {
        return Err("--create-iam-roles cannot be used with --no-iam".into());
    }
    crate::stack_name::validate(&args.target.name)?;
    let mut tags = Vec::with_capacity(args.tags.len());
    for tag in &args.tags {
        let Some((key, value)) = tag.split_once('=') else {
            return Err(crate::Failure::from(format!("Invalid tag format '{tag}'. Use KEY=VALUE.")));
        };
        if key.starts_with("aws:") {
            return Err(crate::Failure::from(format!("tag key '{key}' uses reserved 'aws:' prefix")));
        }
        if key.is_empty() || key.chars().count() > 128 {
            return Err(crate::Failure::from(format!("tag key '{key}' must be 1-128 characters")));
        }
        if value.chars().count() > 256 {
            return Err(crate::Failure::from(format!("tag value for '{key}' must be at most 256 characters")));
        }
        tags.push((key.to_owned(), value.to_owned()));
    }
    if tags.len() > 45 {
        return Err(crate::Failure::from(format!("at most 45 user tags are allowed, got {}", tags.len())));
    }
    if let Some(arn) = &args.aggregator_role_arn
        && !is_role_arn(arn)
    {
        return Err(crate::Failure::from(format!(
            "aggregator_role_arn must be a valid IAM role ARN (arn:aws:iam::<account>:role/<name>), got '{arn}'"
        )));
    }
    for (format, what, max) in
        [(&args.role_name_format, "role_name_format", 55), (&args.policy_name_format, "policy_name_format", 120)]
    {
        if let Some(f) = format {
            if f.matches("{}").count() != 1 {
                return Err(crate::Failure::from(format!("{what} must contain exactly one '{{}}' placeholder")));
            }
            if f.chars().count() > max {
                return Err(crate::Failure::from(format!("{what} must be at most {max} characters")));
            }
        }
    }
    Ok(tags)
}

fn is_role_arn(arn: &str) -> bool {
    let Some(rest) =
        ["arn:aws:iam::", "arn:aws-cn:iam::", "arn:aws-us-gov:iam::"].iter().find_map(|p| arn.strip_prefix(p))
    else {
        return false;
    };
    let Some((account, role)) = rest.split_once(":role/") else { return false };
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && !role.is_empty()
}

//! The aggregator's configuration: the Lambda environment of the reference (`TABLE_NAME`,
//! `SNAPSHOT_WINDOWS`, `SNAPSHOT_TTL_DAYS`, `ENABLE_ARCHIVAL`, `ARCHIVE_BUCKET_NAME`).

use crate::snapshot::Window;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub table: String,
    pub windows: Vec<Window>,
    pub ttl_days: i64,
    /// The archive bucket when archival is on and a bucket is named.
    pub archive_bucket: Option<String>,
}

impl Settings {
    /// Builds the settings; unknown window names are dropped with one warning (the reference
    /// failed every update for them, D4).
    pub fn new(table: &str, windows: &str, ttl_days: i64, enable_archival: bool, archive_bucket: &str) -> Settings {
        let (windows, unknown) = parse_windows(windows);
        if !unknown.is_empty() {
            tracing::warn!(unknown = ?unknown, "Ignoring unknown snapshot windows (known: hourly, daily, monthly)");
        }
        Settings {
            table: table.to_owned(),
            windows,
            ttl_days,
            archive_bucket: (enable_archival && !archive_bucket.is_empty()).then(|| archive_bucket.to_owned()),
        }
    }

    /// From the Lambda environment, with the reference's defaults.
    pub fn from_env() -> Result<Settings, String> {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let ttl = var("SNAPSHOT_TTL_DAYS", "90");
        let ttl_days = ttl
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| format!("SNAPSHOT_TTL_DAYS must be a positive integer, got {ttl:?}"))?;
        Ok(Settings::new(
            &var("TABLE_NAME", "rate-limits"),
            &var("SNAPSHOT_WINDOWS", "hourly,daily"),
            ttl_days,
            var("ENABLE_ARCHIVAL", "false").eq_ignore_ascii_case("true"),
            &var("ARCHIVE_BUCKET_NAME", ""),
        ))
    }
}

/// Splits a comma-separated window list: trimmed, empty and repeated entries dropped; returns
/// the known windows in order and the unknown names.
pub fn parse_windows(csv: &str) -> (Vec<Window>, Vec<String>) {
    let mut windows = Vec::new();
    let mut unknown = Vec::new();
    for name in csv.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Window::parse(name) {
            Some(w) if !windows.contains(&w) => windows.push(w),
            Some(_) => {}
            None => unknown.push(name.to_owned()),
        }
    }
    (windows, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_trimmed_deduplicated_and_unknown_ones_reported() {
        assert_eq!(
            parse_windows("hourly, daily,,daily ,weekly"),
            (vec![Window::Hourly, Window::Daily], vec!["weekly".to_owned()])
        );
    }

    #[test]
    fn archival_needs_the_flag_and_a_bucket() {
        assert_eq!(Settings::new("t", "hourly", 90, true, "").archive_bucket, None);
        assert_eq!(Settings::new("t", "hourly", 90, false, "b").archive_bucket, None);
        assert_eq!(Settings::new("t", "hourly", 90, true, "b").archive_bucket, Some("b".into()));
    }
}

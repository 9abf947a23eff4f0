//! Stored limits as the CLI reads and shows them: the `-l name:rate[/period][:burst]` syntax
//! (`deployer-and-aggregator.md` §6) with the reference's messages, and the display lines
//! (`rpm: 1,000/min (burst: 2,000) (soft)`). The deployer's `-l` and the `--entities` file
//! ([`crate::entities`]) share it.

use crate::keys::is_valid_limit_name;

/// A limit in the config items' units: whole tokens and seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    pub name: String,
    pub capacity: u64,
    pub refill_amount: u64,
    pub refill_period_seconds: u64,
    pub soft: bool,
}

/// The library's bounds (`schedule.MAX_TOKENS`, `MAX_PERIOD_SECONDS`).
pub const MAX_TOKENS: u64 = 1_000_000_000_000_000;
const MAX_PERIOD_SECONDS: u64 = 1_000_000_000;

fn period_seconds(period: &str) -> Result<u64, String> {
    let bad = || format!("Invalid period: '/{period}'. Use /[N]sec, /[N]min, /[N]hour, or /[N]day");
    let digits = period.bytes().take_while(u8::is_ascii_digit).count();
    let (count, unit) = period.split_at(digits);
    let base = match unit {
        "sec" => 1,
        "min" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = if count.is_empty() { 1 } else { count.parse().map_err(|_| bad())? };
    Ok(n.saturating_mul(base))
}

/// Python's `int()` on a CLI value: an optional sign, digits, surrounding blanks.
pub fn python_int(s: &str) -> Result<i128, String> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') || digits.starts_with('_') {
        return Err(format!("invalid literal for int() with base 10: '{s}'"));
    }
    t.replace('_', "").parse::<i128>().map_err(|_| format!("invalid literal for int() with base 10: '{s}'"))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Invalid name: cannot be empty".into());
    }
    if name.len() > 64 {
        return Err("Invalid name: exceeds maximum length of 64".into());
    }
    if name.contains('#') {
        return Err("Invalid name: cannot contain '#' (reserved delimiter)".into());
    }
    if name == "wcu" {
        return Err("Invalid name: 'wcu' is a reserved limit name".into());
    }
    if !is_valid_limit_name(name) {
        return Err(
            "Invalid name: must start with a letter and contain only alphanumeric, underscore, hyphen, or dot characters"
                .into(),
        );
    }
    Ok(())
}

/// Parses one `-l` value.
pub fn parse(spec: &str) -> Result<LimitSpec, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() < 2 {
        return Err(format!(
            "Invalid limit format: {spec}. Expected 'name:rate[/period]' or 'name:rate[/period]:burst'"
        ));
    }
    let (rate, period) = match parts[1].split_once('/') {
        Some((rate, period)) => (rate, Some(period)),
        None => (parts[1], None),
    };
    let invalid = |e: String| format!("Invalid limit values in '{spec}': {e}");
    let rate = python_int(rate).map_err(invalid)?;
    let burst = parts.get(2).map(|b| python_int(b)).transpose().map_err(invalid)?;
    let period = match period {
        Some(p) => period_seconds(p)?,
        None => 60,
    };
    let capacity = burst.unwrap_or(rate);
    let rule = |e: String| format!("Invalid limit '{spec}': {e}");
    check_name(parts[0]).map_err(rule)?;
    if capacity <= 0 {
        return Err(rule("capacity must be positive".into()));
    }
    if rate < 0 {
        return Err(rule("refill_amount must not be negative".into()));
    }
    if rate == 0 {
        return Err(rule(
            "a zero refill_amount makes a quota, which needs a reset schedule; this CLI sets none".into(),
        ));
    }
    for (field, value, bound) in [
        ("capacity", capacity, MAX_TOKENS),
        ("refill_amount", rate, MAX_TOKENS),
        ("refill_period_seconds", i128::from(period), MAX_PERIOD_SECONDS),
    ] {
        if value > i128::from(bound) {
            return Err(rule(format!("{field} must be at most {bound}, got {value}")));
        }
    }
    Ok(LimitSpec {
        name: parts[0].to_owned(),
        capacity: capacity as u64,
        refill_amount: rate as u64,
        refill_period_seconds: period,
        soft: false,
    })
}

/// Parses every `-l` and marks the `--soft` names; a `--soft` naming no `-l` is an error.
pub fn parse_all(specs: &[String], soft: &[String]) -> Result<Vec<LimitSpec>, String> {
    let mut limits = specs.iter().map(|s| parse(s)).collect::<Result<Vec<_>, _>>()?;
    let unknown: Vec<&String> = soft.iter().filter(|s| !limits.iter().any(|l| &&l.name == s)).collect();
    if !unknown.is_empty() {
        let declared: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
        return Err(format!(
            "--soft names {} that no -l limit declares; declared: {}",
            py_list(unknown.iter().map(|s| s.as_str())),
            py_list(declared.into_iter())
        ));
    }
    for l in &mut limits {
        l.soft = soft.contains(&l.name);
    }
    Ok(limits)
}

fn py_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `/min`, `/5min`, `/2hour`, `/90sec`: the largest unit dividing the period.
pub fn period_suffix(seconds: u64) -> String {
    for (unit, base) in [("day", 86_400), ("hour", 3600), ("min", 60), ("sec", 1)] {
        if seconds.is_multiple_of(base) {
            let n = seconds / base;
            return if n == 1 { format!("/{unit}") } else { format!("/{n}{unit}") };
        }
    }
    unreachable!("every period is a whole number of seconds")
}

impl LimitSpec {
    /// The display line of the reference: `rpm: 1,000/min`, ` (burst: N)`, ` (soft)`.
    pub fn display(&self) -> String {
        let mut line =
            format!("{}: {}{}", self.name, thousands(self.refill_amount), period_suffix(self.refill_period_seconds));
        if self.capacity != self.refill_amount {
            line.push_str(&format!(" (burst: {})", thousands(self.capacity)));
        }
        if self.soft {
            line.push_str(" (soft)");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, capacity: u64, rate: u64, period: u64) -> LimitSpec {
        LimitSpec { name: name.into(), capacity, refill_amount: rate, refill_period_seconds: period, soft: false }
    }

    #[test]
    fn the_syntax() {
        assert_eq!(parse("rpm:100"), Ok(limit("rpm", 100, 100, 60)));
        assert_eq!(parse("tpm:5000/min:8000"), Ok(limit("tpm", 8000, 5000, 60)));
        assert_eq!(parse("rps:10/sec"), Ok(limit("rps", 10, 10, 1)));
        assert_eq!(parse("daily:1000/day"), Ok(limit("daily", 1000, 1000, 86_400)));
        assert_eq!(parse("x:7/5min"), Ok(limit("x", 7, 7, 300)));
        assert_eq!(parse("x:7/2hour:9"), Ok(limit("x", 9, 7, 7200)));
    }

    #[test]
    fn the_reference_messages() {
        let err = |s: &str| parse(s).unwrap_err();
        assert_eq!(
            err("rpm"),
            "Invalid limit format: rpm. Expected 'name:rate[/period]' or 'name:rate[/period]:burst'"
        );
        assert_eq!(err("rpm:abc"), "Invalid limit values in 'rpm:abc': invalid literal for int() with base 10: 'abc'");
        assert_eq!(err("rpm:5/fortnight"), "Invalid period: '/fortnight'. Use /[N]sec, /[N]min, /[N]hour, or /[N]day");
        assert_eq!(err("rpm:0"), "Invalid limit 'rpm:0': capacity must be positive");
        assert_eq!(err("wcu:5"), "Invalid limit 'wcu:5': Invalid name: 'wcu' is a reserved limit name");
        assert!(err("9x:5").starts_with("Invalid limit '9x:5': Invalid name: must start with a letter"));
        assert_eq!(
            parse_all(&["a:1".into(), "b:2".into()], &["x".into()]).unwrap_err(),
            "--soft names ['x'] that no -l limit declares; declared: ['a', 'b']"
        );
        assert!(parse_all(&["a:1".into()], &["a".into()]).unwrap()[0].soft);
    }

    #[test]
    fn display_lines() {
        assert_eq!(limit("rpm", 1000, 1000, 60).display(), "rpm: 1,000/min");
        assert_eq!(limit("tpm", 8000, 5000, 60).display(), "tpm: 5,000/min (burst: 8,000)");
        assert_eq!(limit("x", 7, 7, 90).display(), "x: 7/90sec");
        assert_eq!(limit("x", 7, 7, 7200).display(), "x: 7/2hour");
        let mut soft = limit("s", 5, 5, 86_400);
        soft.soft = true;
        assert_eq!(soft.display(), "s: 5/day (soft)");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}

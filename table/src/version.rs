//! The version record gate (`table-format.md` §6.4), ported from `zae_limiter.version`.
//!
//! zael declares the semantics of zae-limiter [`IMPLEMENTED_VERSION`]. It refuses to write
//! when the record's `client_min_version` is above it, or when the record's `schema_version`
//! has another major version than it (the library compares its *own* major with the schema's).
//! A missing `schema_version` reads as `1.0.0` and a missing or unparsable
//! `client_min_version` as `0.0.0`, as in the library; an unparsable `schema_version` refuses.

use std::cmp::Ordering;

/// The zae-limiter version whose semantics zael implements.
pub const IMPLEMENTED_VERSION: &str = "0.17.0";

/// A parsed version: `major.minor.patch` and an optional prerelease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub prerelease: Option<String>,
}

impl Version {
    /// The library's `parse_version`: a leading `v`, a `+local` label, `.devN` and PEP 440
    /// `aN`/`bN`/`rcN` suffixes, and a missing patch component are accepted.
    pub fn parse(input: &str) -> Option<Version> {
        let s = input.strip_prefix('v').unwrap_or(input);
        let s = s.split('+').next().unwrap_or("");
        // `.devN` at the end becomes the prerelease `dev`.
        let mut s = s.to_owned();
        if let Some(idx) = s.rfind(".dev") {
            let digits = &s[idx + 4..];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                s.truncate(idx);
                s.push_str("-dev");
            }
        }
        let (release, pre) = match s.find('-') {
            Some(i) => (s[..i].to_owned(), Some(s[i + 1..].to_owned())),
            None => (s.clone(), None),
        };
        // A PEP 440 prerelease glued to a three-part release: `0.15.0rc1`.
        let (release, pre) = split_pep440_pre(&release, pre);
        if pre.as_deref() == Some("") {
            return None;
        }
        let parts: Vec<&str> = release.split('.').collect();
        if !(2..=3).contains(&parts.len())
            || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(Version {
            major: parts[0].parse().ok()?,
            minor: parts[1].parse().ok()?,
            patch: if parts.len() == 3 { parts[2].parse().ok()? } else { 0 },
            prerelease: pre,
        })
    }
}

fn split_pep440_pre(release: &str, pre: Option<String>) -> (String, Option<String>) {
    let parts: Vec<&str> = release.split('.').collect();
    if parts.len() != 3 {
        return (release.to_owned(), pre);
    }
    let last = parts[2];
    let digits = last.bytes().take_while(u8::is_ascii_digit).count();
    let tail = &last[digits..];
    for tag in ["rc", "a", "b"] {
        if let Some(n) = tail.strip_prefix(tag)
            && digits > 0
            && !n.is_empty()
        {
            let num_len = n.bytes().take_while(u8::is_ascii_digit).count();
            if num_len == 0 {
                continue;
            }
            let rest = &n[num_len..];
            if !rest.is_empty() {
                continue;
            }
            let label = format!("{tag}{n}");
            let pre = match pre {
                Some(p) => format!("{label}-{p}"),
                None => label,
            };
            return (format!("{}.{}.{}", parts[0], parts[1], &last[..digits]), Some(pre));
        }
    }
    (release.to_owned(), pre)
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch)).then_with(|| {
            match (&self.prerelease, &other.prerelease) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            }
        })
    }
}

/// What the version record says about writing, as a message when refused.
pub fn gate(schema_version: Option<&str>, client_min_version: Option<&str>) -> Result<(), String> {
    let ours = Version::parse(IMPLEMENTED_VERSION).expect("valid implemented version");
    let min_text = client_min_version.unwrap_or("0.0.0");
    let min = Version::parse(min_text).unwrap_or(Version { major: 0, minor: 0, patch: 0, prerelease: None });
    if ours < min {
        return Err(format!(
            "the table's version record requires zae-limiter clients >= {min_text}; zael implements \
             {IMPLEMENTED_VERSION} and refuses to write"
        ));
    }
    let schema_text = schema_version.unwrap_or("1.0.0");
    let Some(schema) = Version::parse(schema_text) else {
        return Err(format!("the table's version record has an invalid schema_version '{schema_text}'"));
    };
    if schema.major != ours.major {
        return Err(format!(
            "the table's schema_version {schema_text} has major version {} but zael implements \
             zae-limiter {IMPLEMENTED_VERSION} (major {}); a schema migration is required",
            schema.major, ours.major
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn parses_like_the_library() {
        assert_eq!(v("0.17.0"), Version { major: 0, minor: 17, patch: 0, prerelease: None });
        assert_eq!(v("v1.2.3-dev").prerelease.as_deref(), Some("dev"));
        assert_eq!(v("0.1.dev1+ge76be3284"), Version { major: 0, minor: 1, patch: 0, prerelease: Some("dev".into()) });
        assert_eq!(v("0.15.0rc1").prerelease.as_deref(), Some("rc1"));
        assert_eq!(v("0.15.0rc1.dev3+gabc").prerelease.as_deref(), Some("rc1-dev"));
        assert_eq!(v("0.15.0+d20260926"), v("0.15.0"));
        assert!(Version::parse("x.y").is_none());
        assert!(Version::parse("1").is_none());
    }

    #[test]
    fn orders_prereleases_below_releases() {
        assert!(v("0.17.0rc1") < v("0.17.0"));
        assert!(v("0.17.0") < v("0.17.1"));
        assert!(v("0.16.9") < v("0.17.0"));
    }

    #[test]
    fn gate_follows_the_library() {
        assert!(gate(Some("0.10.0"), Some("0.0.0")).is_ok());
        assert!(gate(Some("0.10.0"), Some("0.17.0")).is_ok());
        assert!(gate(Some("0.10.0"), Some("0.17.0rc2")).is_ok());
        assert!(gate(Some("0.10.0"), Some("0.17.1")).unwrap_err().contains(">= 0.17.1"));
        assert!(gate(Some("0.10.0"), Some("0.18.0")).is_err());
        assert!(gate(Some("1.0.0"), Some("0.0.0")).unwrap_err().contains("major"));
        assert!(gate(None, None).is_err(), "a missing schema_version reads as 1.0.0");
        assert!(gate(Some("0.10.0"), Some("garbage")).is_ok(), "unparsable minimum reads as 0.0.0");
        assert!(gate(Some("garbage"), None).is_err());
    }
}

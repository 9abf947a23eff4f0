//! The reference's compatibility rules (§2.4) between this client and a version record.

use zael_table::version::{IMPLEMENTED_VERSION, Version};

/// The schema version this client writes and reads.
pub const SCHEMA_VERSION: &str = "0.10.0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Compatible,
    LambdaUpdate(String),
    ClientUpgrade(String),
    SchemaMigration(String),
}

impl Verdict {
    pub fn message(&self) -> String {
        match self {
            Verdict::Compatible => "Client and infrastructure versions are compatible.".into(),
            Verdict::LambdaUpdate(m) | Verdict::ClientUpgrade(m) | Verdict::SchemaMigration(m) => m.clone(),
        }
    }
}

/// Evaluates the record's versions against this client, in the reference's order.
pub fn evaluate(schema: Option<&str>, client_min: Option<&str>, lambda: Option<&str>) -> Verdict {
    let client = Version::parse(IMPLEMENTED_VERSION).expect("valid client version");
    let min_text = client_min.unwrap_or("0.0.0");
    let min = Version::parse(min_text).unwrap_or(Version { major: 0, minor: 0, patch: 0, prerelease: None });
    if client < min {
        return Verdict::ClientUpgrade(format!(
            "Client version {IMPLEMENTED_VERSION} is below minimum required version {min_text}. Please upgrade."
        ));
    }
    let schema_text = schema.unwrap_or("1.0.0");
    let Some(schema_v) = Version::parse(schema_text) else {
        return Verdict::SchemaMigration(format!("Invalid schema version: {schema_text}"));
    };
    if schema_v.major != client.major {
        return Verdict::SchemaMigration(format!(
            "Schema version mismatch: client major version {} != schema major version {}. Schema migration required.",
            client.major, schema_v.major
        ));
    }
    if let Some(lambda) = lambda {
        let release = |v: Version| Version { prerelease: None, ..v };
        match Version::parse(lambda) {
            Some(l) if release(l.clone()) >= release(client.clone()) => {}
            _ => return Verdict::LambdaUpdate(format!("Lambda update available: {lambda} -> {IMPLEMENTED_VERSION}")),
        }
    }
    Verdict::Compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_in_order() {
        assert_eq!(evaluate(Some("0.10.0"), Some("0.0.0"), Some("0.17.0")), Verdict::Compatible);
        assert_eq!(evaluate(Some("0.10.0"), None, None), Verdict::Compatible, "no lambda_version: never an update");
        assert!(
            matches!(evaluate(Some("0.10.0"), Some("0.18.0"), None), Verdict::ClientUpgrade(m) if m.contains("0.18.0"))
        );
        assert!(
            matches!(evaluate(Some("1.0.0"), None, None), Verdict::SchemaMigration(m) if m.contains("0 != schema major version 1"))
        );
        assert!(matches!(evaluate(None, None, None), Verdict::SchemaMigration(_)), "a missing schema reads as 1.0.0");
        assert_eq!(
            evaluate(Some("0.10.0"), None, Some("0.16.0")),
            Verdict::LambdaUpdate("Lambda update available: 0.16.0 -> 0.17.0".into())
        );
        assert!(matches!(evaluate(Some("0.10.0"), None, Some("junk")), Verdict::LambdaUpdate(_)));
        assert_eq!(evaluate(Some("0.10.0"), None, Some("0.17.0rc1")), Verdict::Compatible, "prerelease ignored");
    }
}

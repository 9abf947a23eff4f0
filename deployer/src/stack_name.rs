//! Stack names (`deployer-and-aggregator.md` §2.1): the checks in the reference's order, each
//! with its message.

/// Longest stack name: 64 (IAM role names) − 8 (the longest role suffix) − 1 (the dash).
pub const MAX_LEN: usize = 55;

/// The stack name as given, or the reference's reason to refuse it.
pub fn validate(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("Name cannot be empty".into());
    }
    if name.contains('_') {
        return Err("Contains underscore. Use hyphens instead (e.g., 'rate-limits' not 'rate_limits')".into());
    }
    if name.contains('.') {
        return Err("Contains period. Only alphanumeric characters and hyphens are allowed.".into());
    }
    if name.contains(' ') {
        return Err("Contains spaces. Use hyphens instead (e.g., 'my-app' not 'my app')".into());
    }
    let b = name.as_bytes();
    if !b[0].is_ascii_alphabetic() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return Err("Must start with a letter and contain only alphanumeric characters and hyphens.".into());
    }
    if name.chars().count() > MAX_LEN {
        return Err("Too long. Name exceeds 55 character limit (IAM role constraints).".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_checks_in_order() {
        assert_eq!(validate("prod-limiter"), Ok("prod-limiter"));
        assert_eq!(validate("ZAEL-legacy"), Ok("ZAEL-legacy"));
        let err = |n: &str| validate(n).unwrap_err();
        assert_eq!(err(""), "Name cannot be empty");
        assert!(err("a_b.c").starts_with("Contains underscore"), "underscore is checked first");
        assert!(err("a.b").starts_with("Contains period"));
        assert!(err("a b").starts_with("Contains spaces"));
        assert!(err("1abc").starts_with("Must start with a letter"));
        assert!(err("ab/c").starts_with("Must start with a letter"));
        assert!(validate(&"a".repeat(55)).is_ok());
        assert!(err(&"a".repeat(56)).starts_with("Too long"));
    }
}

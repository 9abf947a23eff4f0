//! Bucket identity: Envoy descriptors as zae-limiter `(namespace, entity, resource)` keys.
//!
//! A YAML rule's bucket is `entity = encode_entries(request entries)` and
//! `resource = the rule's resource name`, inside the domain's namespace. Both stay within
//! the identifier rules of the table format (`table-format.md` §4), so the DynamoDB store
//! can use them as they are:
//!
//! * entity ids match `^[a-zA-Z0-9][a-zA-Z0-9_.\-:@]*$` and are at most 256 bytes;
//! * resources match `^[a-zA-Z][a-zA-Z0-9_.\-/:]*$` and are at most 64 bytes.
//!
//! Entry encoding: each entry is `key:value`, entries are joined with `@`. In keys and
//! values the bytes `A-Z a-z 0-9 . -` stand for themselves; every other byte (including
//! `_`, `:`, `@`, `/` and `#`) is written `_XX` in upper-case hex. Examples:
//!
//! | entries | entity |
//! |---|---|
//! | `user=alice` | `user:alice` |
//! | `remote_address=10.0.0.1` | `remote_5Faddress:10.0.0.1` |
//! | `user=alice`, `path=/api/v1` | `user:alice@path:_2Fapi_2Fv1` |
//! | `k=` (empty value) | `k:` |
//!
//! The encoding is injective: `:` and `@` only ever appear as separators. A first key that
//! does not start with a letter or digit is preceded by `0@`, which no plain encoding
//! starts with (a plain encoding has a `:` before its first `@`). An encoding longer than
//! [`MAX_ENTITY_LEN`] keeps its first 190 bytes, then `@@` (never produced otherwise) and
//! the first 128 bits of its SHA-256 in hex.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;

/// Longest entity id the table format allows.
pub const MAX_ENTITY_LEN: usize = 256;
/// Longest resource name the table format allows.
pub const MAX_RESOURCE_LEN: usize = 64;

/// Identity of one bucket, as the stores see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Namespace name (the domain file's `namespace:`, else the domain).
    pub namespace: Arc<str>,
    /// The zae-limiter resource: which rule this bucket belongs to.
    pub resource: Arc<str>,
    /// The zae-limiter entity id: the request's entries.
    pub entity: String,
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

fn push_escaped(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
}

/// Encodes a descriptor's entries as an entity id (see the module docs).
pub fn encode_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::with_capacity(48);
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i == 0 {
            if !key.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) {
                out.push_str("0@");
            }
        } else {
            out.push('@');
        }
        push_escaped(&mut out, key);
        out.push(':');
        push_escaped(&mut out, value);
    }
    if out.len() > MAX_ENTITY_LEN {
        let digest = Sha256::digest(out.as_bytes());
        out.truncate(190);
        out.push_str("@@");
        for b in &digest[..16] {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

/// Whether `name` is a valid zae-limiter resource name (it starts with a letter, so the
/// entity-level `_default_` is never one).
pub fn is_valid_resource(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_RESOURCE_LEN
        && bytes[0].is_ascii_alphabetic()
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b"_.-/:".contains(&b))
}

/// Whether `id` is a valid zae-limiter entity id (`IDENTIFIER_PATTERN`, at most 256 bytes).
pub fn is_valid_entity_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_.-:@".contains(&c))
}

/// Whether `name` is a valid zae-limiter limit name (`NAME_PATTERN`, at most 64 bytes, not
/// the reserved `wcu`).
pub fn is_valid_limit_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_RESOURCE_LEN
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        && name != "wcu"
}

/// Resource of a YAML rule: its place in the config, readable when it fits. Each level is
/// `key` (default node) or `key:value`, escaped as entity ids are, levels joined with `/`:
/// `user`, `user:vip`, `remote_5Faddress/path:_2Fapi_2F_2A`. One that does not start with a
/// letter or is longer than [`MAX_RESOURCE_LEN`] becomes `rule::` and 16 hex digits of its
/// SHA-256 (`::` never occurs in a readable form). The name of the limit plays no part, so
/// renaming a limit or changing its numbers keeps its buckets.
pub fn rule_resource(segments: &[(&str, Option<&str>)]) -> String {
    let mut out = String::with_capacity(32);
    for (i, (key, value)) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        push_escaped(&mut out, key);
        if let Some(value) = value {
            out.push(':');
            push_escaped(&mut out, value);
        }
    }
    if is_valid_resource(&out) {
        return out;
    }
    let digest = Sha256::digest(out.as_bytes());
    let mut hashed = String::from("rule::");
    for b in &digest[..8] {
        let _ = write!(hashed, "{b:02x}");
    }
    hashed
}

/// Resource of a descriptor `limit` override that no config rule of the same unit covers.
pub fn override_resource(unit_name: &str) -> String {
    format!("override::{unit_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_for_ordinary_values() {
        assert_eq!(encode_entries([("user", "alice")]), "user:alice");
        assert_eq!(encode_entries([("remote_address", "10.0.0.1")]), "remote_5Faddress:10.0.0.1");
        assert_eq!(encode_entries([("user", "alice"), ("path", "/api/v1")]), "user:alice@path:_2Fapi_2Fv1");
        assert_eq!(encode_entries([("k", "")]), "k:");
    }

    #[test]
    fn separators_in_values_cannot_collide() {
        let a = encode_entries([("a", "b@c:d")]);
        let b = encode_entries([("a", "b"), ("c", "d")]);
        assert_ne!(a, b);
        assert!(!a.contains('#') && !b.contains('#'));
        assert_ne!(encode_entries([("a_b", "c")]), encode_entries([("a", "b_c")]));
    }

    #[test]
    fn leading_symbol_key_gets_marker_and_valid_first_char() {
        let e = encode_entries([("_x", "1")]);
        assert_eq!(e, "0@_5Fx:1");
        assert_ne!(e, encode_entries([("0", ""), ("_x", "1")]));
    }

    #[test]
    fn long_encodings_are_hashed_within_limits() {
        let long = "v".repeat(1000);
        let other = format!("{}w", "v".repeat(999));
        let a = encode_entries([("k", long.as_str())]);
        let b = encode_entries([("k", other.as_str())]);
        assert!(a.len() <= MAX_ENTITY_LEN && b.len() <= MAX_ENTITY_LEN);
        assert_ne!(a, b);
        assert!(a.contains("@@"));
    }

    #[test]
    fn entity_ids_follow_the_table_pattern() {
        for e in [
            encode_entries([("user", "al ice#1")]),
            encode_entries([("-x", "é")]),
            encode_entries([("k", "x".repeat(600).as_str())]),
        ] {
            let bytes = e.as_bytes();
            assert!(bytes[0].is_ascii_alphanumeric(), "{e}");
            assert!(bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-:@".contains(b)), "{e}");
        }
    }

    #[test]
    fn rule_resources_are_readable_paths_or_hashes() {
        assert_eq!(rule_resource(&[("user", None)]), "user");
        assert_eq!(rule_resource(&[("user", Some("vip"))]), "user:vip");
        assert_eq!(
            rule_resource(&[("remote_address", None), ("path", Some("/api/*"))]),
            "remote_5Faddress/path:_2Fapi_2F_2A"
        );
        let hashed = rule_resource(&[("_x", None)]);
        assert!(hashed.starts_with("rule::") && hashed.len() == 22 && is_valid_resource(&hashed), "{hashed}");
        let long = "v".repeat(100);
        assert!(rule_resource(&[("k", Some(long.as_str()))]).starts_with("rule::"));
        assert_ne!(rule_resource(&[("a", Some("b"))]), rule_resource(&[("a", None), ("b", None)]));
        assert!(is_valid_resource(&override_resource("minute")));
    }
}

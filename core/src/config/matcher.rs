//! The compiled config and the descriptor lookup of envoyproxy/ratelimit (`envoy-rls.md` §2.2).

use super::{Metadata, RulePath, Unit};
use std::collections::HashMap;
use std::sync::Arc;

/// Every loaded domain, ready for lookups.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    pub(super) domains: HashMap<String, Domain>,
    /// The source files as loaded, for `/rlconfig`.
    pub(super) sources: Vec<(String, String)>,
    pub(super) warnings: Vec<String>,
}

impl RateLimitConfig {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// The files this config was compiled from, as `(file name, text)`.
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }

    /// Things that load but have no effect (e.g. `reserve` on a node without a limit), one
    /// line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The loaded files, each preceded by a `# file: NAME` line.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (file, text) in &self.sources {
            out.push_str("# file: ");
            out.push_str(file);
            out.push('\n');
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// One domain: its descriptor tree and the namespace its buckets live in.
#[derive(Debug)]
pub struct Domain {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub source: String,
    pub(super) root: Level,
}

/// The limit a matched node defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleLimit {
    /// `unlimited: true`: always OK, never stored.
    Unlimited,
    Limited {
        unit: Unit,
        requests_per_unit: u32,
        burst: Option<u32>,
    },
    /// `entity:`: the limits stored for a zae-limiter entity (a zael extension).
    Entity(Arc<EntityRule>),
}

/// Where an entity rule's resource comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceSource {
    Literal(String),
    /// The value of the request entry with this key.
    Entry(String),
}

/// How much of a stored limit each request takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Amount {
    Tokens(u64),
    /// The descriptor's hits (`hits_addend`, default 1).
    Hits,
}

/// An `entity:` rule: the request entry `id_from` names the entity, `resource` the resource,
/// and `consume` lists the stored limits each request charges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRule {
    pub id_from: String,
    pub resource: ResourceSource,
    /// By limit name, in name order.
    pub consume: Vec<(Arc<str>, Amount)>,
}

/// A descriptor node with a `rate_limit`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub limit: RuleLimit,
    /// `rate_limit.name`, or "" (reported as `current_limit.name`).
    pub name: Arc<str>,
    pub replaces: Vec<String>,
    pub shadow_mode: bool,
    /// `quota_mode: true`: over this rule alone, a request is over only when every quota
    /// descriptor of it is (see `decision::Plan::decide`).
    pub quota_mode: bool,
    pub allow_debt: bool,
    pub detailed_metric: bool,
    /// `metadata:` of the node, returned in the response's dynamic metadata when the
    /// descriptor passes and `--response-dynamic-metadata` is on.
    pub metadata: Option<Arc<Metadata>>,
    /// How the request's entries reach this rule: its buckets' identity and metric labels.
    pub steps: RulePath,
    /// Whether the DynamoDB store may serve this rule's buckets from token reservations
    /// (`reserve: false` turns them off for the rule; default on).
    pub reserve: bool,
    /// The zae-limiter resource of this rule's buckets (see `keys::rule_resource`).
    pub resource: Arc<str>,
    /// The node's place in the config, e.g. `user/path=%2Fapi*` (the `rule` metric label).
    pub path: Arc<str>,
}

#[derive(Debug, Default)]
pub(super) struct Level {
    pub keys: HashMap<String, KeyNodes>,
}

/// The nodes of one level that share a key.
#[derive(Debug, Default)]
pub(super) struct KeyNodes {
    pub exact: HashMap<String, Node>,
    /// Values with `*`, in config order: the first match wins.
    pub wildcards: Vec<(Pattern, Node)>,
    /// The node without a value.
    pub default: Option<Box<Node>>,
}

#[derive(Debug, Default)]
pub(super) struct Node {
    pub rule: Option<Rule>,
    pub children: Level,
}

/// A value pattern; each `*` matches any run of characters, including none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    parts: Vec<String>,
}

impl Pattern {
    pub fn new(value: &str) -> Self {
        Pattern { parts: value.split('*').map(str::to_owned).collect() }
    }

    /// The pattern as written.
    pub fn source(&self) -> String {
        self.parts.join("*")
    }

    pub fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return value.is_empty(),
        };
        let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

impl Domain {
    /// The rule for a descriptor's entries: exact value, else the first matching wildcard,
    /// else the key's default node, level by level; only the node reached by the last entry
    /// counts. `None` when nothing matches or the node there has no `rate_limit`.
    pub fn lookup<'e>(&self, entries: impl IntoIterator<Item = (&'e str, &'e str)>) -> Option<&Rule> {
        let mut level = &self.root;
        let mut node: Option<&Node> = None;
        for (key, value) in entries {
            let nodes = level.keys.get(key)?;
            let next = nodes
                .exact
                .get(value)
                .or_else(|| nodes.wildcards.iter().find(|(p, _)| p.matches(value)).map(|(_, n)| n))
                .or(nodes.default.as_deref())?;
            level = &next.children;
            node = Some(next);
        }
        node?.rule.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn wildcards_anywhere() {
        let cases = [
            ("foo*", "foobar", true),
            ("foo*", "foo", true),
            ("foo*", "fo", false),
            ("*bar", "foobar", true),
            ("*bar", "barx", false),
            ("a*c*e", "abcde", true),
            ("a*c*e", "ace", true),
            ("a*c*e", "acxe", true),
            ("a*c*e", "aec", false),
            ("*", "", true),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
            ("/api/*/users", "/api/v1/users", true),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(Pattern::new(pattern).matches(value), expected, "{pattern} ~ {value}");
        }
    }
}

//! How a request's entries reach a rule, level by level, and what that makes of its bucket
//! and its metric label: `share_threshold` (every value a pattern matches shares one bucket)
//! and `value_to_metric` / `detailed_metric` (labels from the request's values), as
//! envoyproxy/ratelimit's `GetLimit` and cache key generator do.
//!
//! A rule's node has one path in the config, so how each level is matched (by its value, by
//! a pattern, or by the key alone) is known when the config is compiled: a rule carries one
//! [`Step`] per level, and nothing is tracked per request.

use crate::keys::encode_entries;
use std::sync::Arc;

/// How the request entry at one level of a rule's path is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matched {
    /// `value: v`: the entry's value is `v`.
    Value,
    /// `value: pattern` with a `*`; `shared` with `share_threshold: true`.
    Pattern { pattern: Arc<str>, shared: bool },
    /// No `value`: any value of the key.
    AnyValue,
}

/// One level of a rule's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub matched: Matched,
    /// `value_to_metric: true` on that level's node.
    pub value_to_metric: bool,
}

impl Step {
    /// The pattern standing for the entry's value in the bucket key (`share_threshold`).
    fn shared_pattern(&self) -> Option<&str> {
        match &self.matched {
            Matched::Pattern { pattern, shared: true } => Some(pattern),
            _ => None,
        }
    }

    /// Whether this level puts the request's value into the `value_to_metric` label where the
    /// config's path does not have it.
    fn value_changes_label(&self) -> bool {
        self.value_to_metric && matches!(self.matched, Matched::AnyValue | Matched::Pattern { shared: false, .. })
    }
}

/// The steps of one rule, with what they change summed up at compile time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulePath {
    steps: Arc<[Step]>,
    shares: bool,
    values_in_label: bool,
}

impl RulePath {
    pub fn new(steps: Vec<Step>) -> Self {
        let shares = steps.iter().any(|s| s.shared_pattern().is_some());
        let values_in_label = steps.iter().any(Step::value_changes_label);
        RulePath { steps: steps.into(), shares, values_in_label }
    }

    /// The entity id of the rule's bucket for a request's `entries` (which reached the rule,
    /// so there is one per step): the entries encoded, each value matched by a
    /// `share_threshold` pattern replaced by the pattern, so all those values share a bucket.
    pub fn bucket_entity(&self, entries: &[(&str, &str)]) -> String {
        if !self.shares {
            return encode_entries(entries.iter().copied());
        }
        encode_entries(
            entries
                .iter()
                .zip(self.steps.iter())
                .map(|(&(key, value), step)| (key, step.shared_pattern().unwrap_or(value))),
        )
    }

    /// The rule metric label made of the request's values, or `None` when the rule's config
    /// path is the label. With `detailed`, the reference's detailed stats key (`key_value`
    /// per entry joined with `.`, a `share_threshold` pattern for the value it matched);
    /// else, when a level has `value_to_metric` on a pattern or a key-only node, the
    /// reference's `value_to_metric` key (the request's value on those levels, the pattern
    /// or nothing elsewhere as the config path has it). Without the domain, which is a label
    /// of its own.
    pub fn values_label(&self, entries: &[(&str, &str)], detailed: bool) -> Option<String> {
        if !detailed && !self.values_in_label {
            return None;
        }
        let mut label = String::new();
        for (i, (&(key, value), step)) in entries.iter().zip(self.steps.iter()).enumerate() {
            if i > 0 {
                label.push('.');
            }
            label.push_str(key);
            let shown = match (&step.matched, step.shared_pattern()) {
                (_, Some(pattern)) => pattern,
                // The reference writes `key_` for an empty value, except beside a shared pattern.
                _ if detailed && !(self.shares && value.is_empty()) => {
                    label.push('_');
                    label.push_str(value);
                    continue;
                }
                _ if detailed => "",
                (Matched::Value, None) => value,
                (Matched::Pattern { pattern, .. }, None) if !step.value_to_metric => pattern,
                (Matched::AnyValue, None) if !step.value_to_metric => "",
                _ => value,
            };
            if !shown.is_empty() {
                label.push('_');
                label.push_str(shown);
            }
        }
        Some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> Step {
        Step { matched: Matched::Value, value_to_metric: false }
    }

    fn pattern(p: &str, shared: bool, value_to_metric: bool) -> Step {
        Step { matched: Matched::Pattern { pattern: p.into(), shared }, value_to_metric }
    }

    fn any(value_to_metric: bool) -> Step {
        Step { matched: Matched::AnyValue, value_to_metric }
    }

    #[test]
    fn share_threshold_names_the_bucket_by_the_pattern() {
        let entries = [("files", "files/a.txt"), ("user", "alice")];
        let shared = RulePath::new(vec![pattern("files/*", true, false), any(false)]);
        assert_eq!(shared.bucket_entity(&entries), "files:files_2F_2A@user:alice");
        assert_eq!(
            shared.bucket_entity(&[("files", "files/b.txt"), ("user", "alice")]),
            shared.bucket_entity(&entries)
        );
        let own = RulePath::new(vec![pattern("files/*", false, false), any(false)]);
        assert_eq!(own.bucket_entity(&entries), "files:files_2Fa.txt@user:alice");
    }

    /// The reference's stats keys (`config_impl.go` `GetLimit`, its tests in
    /// `test/config/config_test.go`), without the domain.
    type Entries<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn labels_are_the_reference_stats_keys() {
        let cases: [(Vec<Step>, Entries<'_>, bool, Option<&str>); 9] = [
            (vec![any(false)], &[("user", "alice")], false, None),
            (vec![any(false)], &[("user", "alice")], true, Some("user_alice")),
            (vec![any(true)], &[("user", "alice")], false, Some("user_alice")),
            (vec![any(true)], &[("user", "")], false, Some("user")),
            (vec![value(), any(true)], &[("route", "r1"), ("user", "bob")], false, Some("route_r1.user_bob")),
            (vec![pattern("v*", false, true)], &[("ver", "v12")], false, Some("ver_v12")),
            (vec![pattern("v*", true, true)], &[("ver", "v12")], false, None),
            (vec![pattern("v*", true, false), any(false)], &[("ver", "v12"), ("u", "x")], true, Some("ver_v*.u_x")),
            (vec![value(), pattern("v*", false, false)], &[("route", "r1"), ("ver", "v1")], false, None),
        ];
        for (steps, entries, detailed, expected) in cases {
            let path = RulePath::new(steps.clone());
            assert_eq!(path.values_label(entries, detailed).as_deref(), expected, "{steps:?} {entries:?} {detailed}");
        }
    }

    #[test]
    fn value_to_metric_on_a_value_node_changes_nothing() {
        let path = RulePath::new(vec![Step { matched: Matched::Value, value_to_metric: true }]);
        assert_eq!(path.values_label(&[("route", "r1")], false), None);
    }
}

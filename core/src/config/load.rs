//! Loading a config file or directory: YAML parsing, every validation error of the reference
//! format (`envoy-rls.md` §2.1), and compilation into the matcher.

use super::matcher::{
    Amount, Domain, EntityRule, KeyNodes, Level, Node, Pattern, RateLimitConfig, ResourceSource, Rule, RuleLimit,
};
use super::model::{self, DescriptorNode, DomainFile, EntityBinding, RateLimit};
use super::{Matched, RulePath, Step, Unit};
use crate::keys::{is_valid_limit_name, is_valid_resource, rule_resource};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// Every problem found in a load; a load with any error is rejected whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// How a config's files are put together.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// A domain may be spread over several files, whose top-level descriptors are merged
    /// (envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`); a descriptor defined in two of them
    /// is an error. Off: a domain in two files is an error.
    pub merge_domains: bool,
}

/// Loads a YAML file, or every `*.yaml`/`*.yml` file of a directory (not recursing, skipping
/// hidden files such as editors' swap files), in name order.
pub fn load_path(path: &Path, options: LoadOptions) -> Result<RateLimitConfig, ConfigErrors> {
    compile(read_sources(path)?, options)
}

/// The config files [`load_path`] would load, as `(file name, text)` in load order.
pub fn read_sources(path: &Path) -> Result<Vec<(String, String)>, ConfigErrors> {
    let display = path.display().to_string();
    let io_error =
        |e: std::io::Error| ConfigErrors(vec![ConfigError { file: display.clone(), message: e.to_string() }]);
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_error)? {
            let entry_path = entry.map_err(io_error)?.path();
            let hidden = entry_path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if entry_path.is_file() && is_yaml(&entry_path) && !hidden {
                files.push(entry_path);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((name, text)),
            Err(e) => errors.push(ConfigError { file: name, message: e.to_string() }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(sources)
}

/// Parses and validates one domain file's text.
pub fn parse_domain(file: &str, text: &str) -> Result<RateLimitConfig, ConfigErrors> {
    compile(vec![(file.to_owned(), text.to_owned())], LoadOptions::default())
}

/// Parses, validates and compiles `(file name, text)` pairs, one domain each (or, with
/// [`LoadOptions::merge_domains`], parts of domains).
pub fn compile(sources: Vec<(String, String)>, options: LoadOptions) -> Result<RateLimitConfig, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut domains: HashMap<String, Domain> = HashMap::new();
    for (file, text) in &sources {
        let mut report = Report { file, errors: &mut errors, warnings: &mut warnings };
        let Some(domain) = compile_file(text, &mut report) else { continue };
        match domains.get_mut(domain.name.as_ref()) {
            Some(existing) if options.merge_domains => merge_domain(existing, domain, &mut report),
            Some(existing) => {
                report.error(format!("domain '{}' is already defined in {}", domain.name, existing.source))
            }
            None => {
                domains.insert(domain.name.to_string(), domain);
            }
        }
    }
    if errors.is_empty() { Ok(RateLimitConfig { domains, sources, warnings }) } else { Err(ConfigErrors(errors)) }
}

/// Adds `part`'s top-level descriptors to `domain` (the reference's merge: one level, no
/// descriptor in both).
fn merge_domain(domain: &mut Domain, part: Domain, report: &mut Report<'_>) {
    if domain.namespace != part.namespace {
        report.error(format!(
            "domain '{}' has namespace '{}' here and '{}' in {}; the parts of a merged domain share one",
            domain.name, part.namespace, domain.namespace, domain.source
        ));
        return;
    }
    let errors_before = report.errors.len();
    for (key, nodes) in &part.root.keys {
        let Some(existing) = domain.root.keys.get(key) else { continue };
        let values = nodes.exact.keys().filter(|v| existing.exact.contains_key(*v)).map(|v| format!("{key}_{v}"));
        let patterns = nodes
            .wildcards
            .iter()
            .filter(|(p, _)| existing.wildcards.iter().any(|(q, _)| q == p))
            .map(|(p, _)| format!("{key}_{}", p.source()));
        let default = (nodes.default.is_some() && existing.default.is_some()).then(|| key.clone());
        for composite in values.chain(patterns).chain(default) {
            report.error(format!(
                "descriptor '{composite}' of domain '{}' is also defined in {}",
                domain.name, domain.source
            ));
        }
    }
    if report.errors.len() > errors_before {
        return;
    }
    for (key, nodes) in part.root.keys {
        let existing = domain.root.keys.entry(key).or_default();
        existing.exact.extend(nodes.exact);
        existing.wildcards.extend(nodes.wildcards);
        if nodes.default.is_some() {
            existing.default = nodes.default;
        }
    }
    domain.source = format!("{}, {}", domain.source, part.source);
}

struct Report<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<String>,
}

impl Report<'_> {
    fn error(&mut self, message: String) {
        self.errors.push(ConfigError { file: self.file.to_owned(), message });
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(format!("{}: {message}", self.file));
    }
}

fn compile_file(text: &str, report: &mut Report<'_>) -> Option<Domain> {
    // Like the reference, a multi-document file loads its first document only.
    let parsed: DomainFile = match serde_saphyr::from_multiple::<DomainFile>(text) {
        Ok(mut docs) if !docs.is_empty() => docs.swap_remove(0),
        Ok(_) => {
            report.error("the file holds no YAML document; a domain file needs `domain:` and `descriptors:`".into());
            return None;
        }
        Err(e) => {
            report.error(format!("invalid YAML: {e}"));
            return None;
        }
    };
    let name = parsed.domain.unwrap_or_default();
    if name.is_empty() {
        report.error("domain must not be empty".into());
        return None;
    }
    let namespace = match parsed.namespace {
        Some(ns) if ns.is_empty() => {
            report.error("namespace must not be empty when given".into());
            return None;
        }
        Some(ns) => ns,
        None => name.clone(),
    };
    let errors_before = report.errors.len();
    let mut builder = Builder { report };
    let root = builder.level(&parsed.descriptors, "descriptors", "", &[], &[]);
    if builder.report.errors.len() > errors_before {
        return None;
    }
    Some(Domain { name: name.into(), namespace: namespace.into(), source: builder.report.file.to_owned(), root })
}

/// Escapes `/`, `=` and `%` so a node path names exactly one node.
fn path_segment(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
}

struct Builder<'r, 'a> {
    report: &'r mut Report<'a>,
}

impl Builder<'_, '_> {
    fn level(
        &mut self,
        nodes: &[DescriptorNode],
        at: &str,
        parent_path: &str,
        parent: &[(&str, Option<&str>)],
        parent_steps: &[Step],
    ) -> Level {
        let mut level = Level::default();
        let mut seen = HashSet::new();
        for (i, raw) in nodes.iter().enumerate() {
            let at = format!("{at}[{i}]");
            let key = raw.key.clone().unwrap_or_default();
            if key.is_empty() {
                self.report.error(format!("{at}: key must not be empty"));
                continue;
            }
            let composite = match &raw.value {
                Some(v) => format!("{key}_{v}"),
                None => key.clone(),
            };
            if !seen.insert((key.clone(), raw.value.clone())) {
                self.report.error(format!("{at}: duplicate descriptor '{composite}' at this level"));
                continue;
            }
            let mut path = parent_path.to_owned();
            if !path.is_empty() {
                path.push('/');
            }
            path_segment(&mut path, &key);
            if let Some(v) = &raw.value {
                path.push('=');
                path_segment(&mut path, v);
            }
            let mut segments = parent.to_vec();
            segments.push((key.as_str(), raw.value.as_deref()));
            if raw.share_threshold && !raw.value.as_deref().is_some_and(|v| v.contains('*')) {
                self.report.error(format!("{at}: share_threshold needs a value containing '*'"));
            }
            let matched = match &raw.value {
                None => Matched::AnyValue,
                Some(v) if v.contains('*') => {
                    Matched::Pattern { pattern: v.as_str().into(), shared: raw.share_threshold }
                }
                Some(_) => Matched::Value,
            };
            let mut steps = parent_steps.to_vec();
            steps.push(Step { matched, value_to_metric: raw.value_to_metric });
            let rule = match (&raw.rate_limit, &raw.entity) {
                (Some(_), Some(_)) => {
                    self.report.error(format!("{at}: a node has either a rate_limit or an entity, not both"));
                    None
                }
                (Some(rl), None) => self.rule(rl, raw, &at, &path, &segments),
                (None, Some(binding)) => self.entity_rule(binding, raw, &at, &path, &segments),
                (None, None) => None,
            }
            .map(|rule| Rule { steps: RulePath::new(steps.clone()), ..rule });
            let limitless = raw.rate_limit.is_none() && raw.entity.is_none();
            for (set, what) in [
                (raw.allow_debt, "allow_debt"),
                (raw.reserve.is_some(), "reserve"),
                (raw.quota_mode, "quota_mode"),
                (raw.metadata.is_some(), "metadata"),
            ] {
                if set && limitless {
                    self.report.warn(format!("{at}: {what} has no effect without a rate_limit"));
                }
            }
            let children = self.level(&raw.descriptors, &format!("{at}.descriptors"), &path, &segments, &steps);
            let node = Node { rule, children };
            let nodes = level.keys.entry(key).or_insert_with(KeyNodes::default);
            match &raw.value {
                None => nodes.default = Some(Box::new(node)),
                Some(v) if v.contains('*') => nodes.wildcards.push((Pattern::new(v), node)),
                Some(v) => {
                    nodes.exact.insert(v.clone(), node);
                }
            }
        }
        level
    }

    fn rule(
        &mut self,
        rl: &RateLimit,
        raw: &DescriptorNode,
        at: &str,
        path: &str,
        segments: &[(&str, Option<&str>)],
    ) -> Option<Rule> {
        let at = format!("{at}.rate_limit");
        let errors_before = self.report.errors.len();
        let unit = match rl.unit.as_deref() {
            Some(u) => match Unit::parse(u) {
                Some(unit) => Some(unit),
                None => {
                    self.report.error(format!(
                        "{at}: unknown unit '{u}' (expected second, minute, hour, day, week, month or year)"
                    ));
                    None
                }
            },
            None => None,
        };
        if rl.unlimited && unit.is_some() {
            self.report.error(format!("{at}: unlimited must not be combined with a unit"));
        }
        if !rl.unlimited && rl.unit.is_none() {
            self.report.error(format!(
                "{at}: a unit is required (second, minute, hour, day, week, month or year) unless unlimited is true"
            ));
        }
        if let Some(burst) = rl.burst {
            if rl.unlimited {
                self.report.error(format!("{at}: burst must not be combined with unlimited"));
            } else if burst < rl.requests_per_unit {
                self.report.error(format!(
                    "{at}: burst ({burst}) must be at least requests_per_unit ({})",
                    rl.requests_per_unit
                ));
            }
        }
        let name = rl.name.clone().unwrap_or_default();
        let mut replaces = Vec::with_capacity(rl.replaces.len());
        for (j, r) in rl.replaces.iter().enumerate() {
            match r.name.as_deref() {
                None | Some("") => self.report.error(format!("{at}.replaces[{j}]: name must not be empty")),
                Some(n) if n == name => {
                    self.report.error(format!("{at}.replaces[{j}]: a limit cannot replace itself ('{n}')"))
                }
                Some(n) => replaces.push(n.to_owned()),
            }
        }
        if self.report.errors.len() > errors_before {
            return None;
        }
        let limit = match unit {
            _ if rl.unlimited => RuleLimit::Unlimited,
            Some(unit) => RuleLimit::Limited { unit, requests_per_unit: rl.requests_per_unit, burst: rl.burst },
            None => return None,
        };
        Some(Rule {
            limit,
            name: name.into(),
            replaces,
            shadow_mode: raw.shadow_mode,
            quota_mode: raw.quota_mode,
            allow_debt: raw.allow_debt,
            detailed_metric: raw.detailed_metric,
            metadata: raw.metadata.clone().map(Arc::new),
            steps: RulePath::default(),
            reserve: raw.reserve.unwrap_or(true),
            resource: rule_resource(segments).into(),
            path: path.into(),
        })
    }

    fn entity_rule(
        &mut self,
        binding: &EntityBinding,
        raw: &DescriptorNode,
        at: &str,
        path: &str,
        segments: &[(&str, Option<&str>)],
    ) -> Option<Rule> {
        let at = format!("{at}.entity");
        let errors_before = self.report.errors.len();
        let on_path = |key: &str| segments.iter().any(|(k, _)| *k == key);
        let keys = || segments.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
        let id_from = binding
            .id_from
            .clone()
            .unwrap_or_else(|| segments.last().map(|(k, _)| (*k).to_owned()).unwrap_or_default());
        if !on_path(&id_from) {
            self.report.error(format!("{at}: id_from '{id_from}' is not a key on this node's path ({})", keys()));
        }
        let resource = match (&binding.resource, &binding.resource_from) {
            (Some(_), Some(_)) => {
                self.report.error(format!("{at}: give either resource or resource_from, not both"));
                None
            }
            (None, None) => {
                self.report.error(format!("{at}: a resource is required (resource: NAME or resource_from: KEY)"));
                None
            }
            (Some(r), None) if !is_valid_resource(r) => {
                self.report.error(format!(
                    "{at}: resource '{r}' is not a zae-limiter resource name (a letter, then letters, digits and _.-/:, at most 64)"
                ));
                None
            }
            (Some(r), None) => Some(ResourceSource::Literal(r.clone())),
            (None, Some(key)) if !on_path(key) => {
                self.report.error(format!("{at}: resource_from '{key}' is not a key on this node's path ({})", keys()));
                None
            }
            (None, Some(key)) => Some(ResourceSource::Entry(key.clone())),
        };
        if binding.consume.is_empty() {
            self.report.error(format!("{at}: consume must name at least one limit, e.g. {{rpm: 1, tpm: hits}}"));
        }
        let mut consume = Vec::with_capacity(binding.consume.len());
        for (name, amount) in &binding.consume {
            if !is_valid_limit_name(name) {
                self.report.error(format!(
                    "{at}.consume: '{name}' is not a zae-limiter limit name (a letter, then letters, digits and _.-, at most 64, not wcu)"
                ));
                continue;
            }
            let amount = match amount {
                model::Amount::Tokens(n) => Amount::Tokens(*n),
                model::Amount::Word(w) if w == "hits" => Amount::Hits,
                model::Amount::Word(w) => {
                    self.report.error(format!(
                        "{at}.consume.{name}: '{w}' is not an amount (a whole number of tokens, or hits)"
                    ));
                    continue;
                }
                model::Amount::Number(v) => {
                    self.report.error(format!(
                        "{at}.consume.{name}: {v} is not an amount (a whole number of tokens, or hits)"
                    ));
                    continue;
                }
            };
            consume.push((Arc::<str>::from(name.as_str()), amount));
        }
        if raw.allow_debt {
            self.report.error(format!(
                "{at}: allow_debt applies to rate_limit rules; soft limits are set on the stored limit"
            ));
        }
        if self.report.errors.len() > errors_before {
            return None;
        }
        let rule = EntityRule { id_from, resource: resource?, consume };
        Some(Rule {
            limit: RuleLimit::Entity(Arc::new(rule)),
            name: "".into(),
            replaces: Vec::new(),
            shadow_mode: raw.shadow_mode,
            quota_mode: raw.quota_mode,
            allow_debt: false,
            detailed_metric: raw.detailed_metric,
            metadata: raw.metadata.clone().map(Arc::new),
            steps: RulePath::default(),
            reserve: raw.reserve.unwrap_or(true),
            resource: rule_resource(segments).into(),
            path: path.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match parse_domain("test.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(errs)) => errs.into_iter().map(|e| e.message).collect(),
        }
    }

    fn assert_error(yaml: &str, fragment: &str) {
        let errs = errors(yaml);
        assert!(errs.iter().any(|e| e.contains(fragment)), "expected an error containing {fragment:?}, got {errs:?}");
    }

    #[test]
    fn valid_config_loads() {
        let cfg = parse_domain(
            "ok.yaml",
            "domain: d\nnamespace: tenant-a\ndescriptors:\n  - key: k\n    rate_limit: {unit: MINUTE, requests_per_unit: 5, burst: 10}\n",
        )
        .unwrap();
        let d = cfg.domain("d").unwrap();
        assert_eq!(&*d.namespace, "tenant-a");
        let rule = d.lookup([("k", "x")]).unwrap();
        assert_eq!(rule.limit, RuleLimit::Limited { unit: Unit::Minute, requests_per_unit: 5, burst: Some(10) });
    }

    #[test]
    fn reserve_is_on_unless_a_rule_turns_it_off() {
        let cfg = parse_domain(
            "r.yaml",
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 5}\n  - key: b\n    reserve: false\n    rate_limit: {unit: second, requests_per_unit: 5}\n  - key: c\n    reserve: true\n    rate_limit: {unit: second, requests_per_unit: 5}\n  - key: d\n    reserve: false\n",
        )
        .unwrap();
        let d = cfg.domain("d").unwrap();
        let reserve = |k: &str| d.lookup([(k, "x")]).unwrap().reserve;
        assert_eq!((reserve("a"), reserve("b"), reserve("c")), (true, false, true));
        assert_eq!(cfg.warnings(), ["r.yaml: descriptors[3]: reserve has no effect without a rate_limit"]);
    }

    #[test]
    fn entity_rules_load() {
        let cfg = parse_domain(
            "e.yaml",
            "domain: d\ndescriptors:\n  - key: org\n    descriptors:\n      - key: key\n        entity: {resource_from: org, consume: {tpm: hits, rpm: 1}}\n",
        )
        .unwrap();
        let rule = cfg.domain("d").unwrap().lookup([("org", "o"), ("key", "k")]).unwrap();
        let RuleLimit::Entity(entity) = &rule.limit else { panic!("{rule:?}") };
        assert_eq!(entity.id_from, "key", "the node's own key by default");
        assert_eq!(entity.resource, ResourceSource::Entry("org".into()));
        assert_eq!(entity.consume, vec![("rpm".into(), Amount::Tokens(1)), ("tpm".into(), Amount::Hits)]);
    }

    #[test]
    fn entity_rule_errors() {
        let node = |entity: &str| format!("domain: d\ndescriptors:\n  - key: k\n    entity: {entity}\n");
        let table = [
            (node("{resource: r, consume: {rpm: 1}, nope: 1}"), "unknown field `nope`"),
            (node("{consume: {rpm: 1}}"), "a resource is required"),
            (node("{resource: r, resource_from: k, consume: {rpm: 1}}"), "either resource or resource_from"),
            (node("{resource: 9r, consume: {rpm: 1}}"), "not a zae-limiter resource name"),
            (node("{resource: _default_, consume: {rpm: 1}}"), "not a zae-limiter resource name"),
            (node("{resource_from: other, consume: {rpm: 1}}"), "resource_from 'other' is not a key on this node's path (k)"),
            (node("{id_from: other, resource: r, consume: {rpm: 1}}"), "id_from 'other' is not a key"),
            (node("{resource: r}"), "consume must name at least one limit"),
            (node("{resource: r, consume: {wcu: 1}}"), "'wcu' is not a zae-limiter limit name"),
            (node("{resource: r, consume: {rpm: lots}}"), "'lots' is not an amount"),
            (node("{resource: r, consume: {rpm: -1}}"), "not an amount"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    entity: {resource: r, consume: {rpm: 1}}\n".to_owned(),
                "either a rate_limit or an entity",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    allow_debt: true\n    entity: {resource: r, consume: {rpm: 1}}\n".to_owned(),
                "allow_debt applies to rate_limit rules",
            ),
        ];
        for (yaml, fragment) in table {
            let errors = errors(&yaml);
            assert!(errors.iter().any(|e| e.contains(fragment)), "{yaml}: {errors:?}");
        }
    }

    #[test]
    fn every_validation_error() {
        let table: &[(&str, &str)] = &[
            ("domain: d\ndescriptors:\n  - key: k\n    bogus: 1\n", "unknown field `bogus`"),
            ("domain: d\nextra: 1\n", "unknown field `extra`"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, nope: 2}\n",
                "unknown field `nope`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, replaces: [{name: a, x: 1}]}\n",
                "unknown field `x`",
            ),
            ("domain: d\ndescriptors:\n  - 5\n", "invalid YAML"),
            ("domain: \"\"\ndescriptors: []\n", "domain must not be empty"),
            ("descriptors: []\n", "domain must not be empty"),
            ("", "no YAML document"),
            ("domain: d\ndescriptors:\n  - value: v\n", "key must not be empty"),
            ("domain: d\ndescriptors:\n  - key: \"\"\n", "key must not be empty"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
                "duplicate descriptor 'k_v'",
            ),
            ("domain: d\ndescriptors:\n  - key: k\n  - key: k\n", "duplicate descriptor 'k'"),
            ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 5}\n", "a unit is required"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n",
                "unknown unit 'fortnight'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, unlimited: true}\n",
                "unlimited must not be combined with a unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{}]}\n",
                "name must not be empty",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: \"\"}]}\n",
                "name must not be empty",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, name: a, replaces: [{name: a}]}\n",
                "cannot replace itself",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
                "share_threshold needs a value containing '*'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5, burst: 4}\n",
                "burst (4) must be at least requests_per_unit (5)",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, burst: 4}\n",
                "burst must not be combined with unlimited",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
                "invalid YAML",
            ),
            ("domain: d\nnamespace: \"\"\n", "namespace must not be empty"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - key: \"\"\n",
                "descriptors[0].descriptors[0]: key must not be empty",
            ),
        ];
        for (yaml, fragment) in table {
            assert_error(yaml, fragment);
        }
    }

    #[test]
    fn all_errors_of_a_file_are_reported() {
        let errs = errors(
            "domain: d\ndescriptors:\n  - key: \"\"\n  - key: k\n    rate_limit: {unit: nope}\n  - key: j\n    rate_limit: {requests_per_unit: 1}\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn same_domain_in_two_files_is_an_error() {
        let dir = tempdir();
        std::fs::write(dir.join("a.yaml"), "domain: d\n").unwrap();
        std::fs::write(dir.join("b.yml"), "domain: d\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        let err = load_path(&dir, LoadOptions::default()).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].file.ends_with("b.yml"));
        assert!(err.0[0].message.contains("already defined"), "{}", err.0[0].message);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn with_merge_domains_the_parts_of_a_domain_merge_and_a_descriptor_in_two_is_an_error() {
        let dir = tempdir();
        let limit = "rate_limit: {unit: minute, requests_per_unit: 1}";
        std::fs::write(
            dir.join("a.yaml"),
            format!("domain: d\ndescriptors:\n  - key: user\n    {limit}\n  - key: path\n    value: /a\n    {limit}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            format!("domain: d\ndescriptors:\n  - key: path\n    value: /b\n    {limit}\n  - key: ip\n    {limit}\n"),
        )
        .unwrap();
        let merged = LoadOptions { merge_domains: true };
        let cfg = load_path(&dir, merged).unwrap();
        let d = cfg.domain("d").unwrap();
        for entries in [[("user", "u")], [("path", "/a")], [("path", "/b")], [("ip", "1")]] {
            assert!(d.lookup(entries).is_some(), "{entries:?}");
        }
        assert!(d.lookup([("path", "/c")]).is_none());
        assert!(load_path(&dir, LoadOptions::default()).unwrap_err().0[0].message.contains("already defined"));
        std::fs::write(
            dir.join("c.yaml"),
            format!("domain: d\ndescriptors:\n  - key: path\n    value: /a\n    {limit}\n  - key: user\n    {limit}\n"),
        )
        .unwrap();
        let errors = load_path(&dir, merged).unwrap_err().0;
        let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages.iter().all(|m| m.contains("of domain 'd' is also defined in")), "{messages:?}");
        assert!(messages.iter().any(|m| m.starts_with("descriptor 'path_/a'")), "{messages:?}");
        assert!(messages.iter().any(|m| m.starts_with("descriptor 'user'")), "{messages:?}");
        std::fs::write(dir.join("c.yaml"), "domain: d\nnamespace: other\n").unwrap();
        let errors = load_path(&dir, merged).unwrap_err().0;
        assert!(errors[0].message.contains("has namespace 'other' here and 'd' in"), "{errors:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directory_loads_each_domain_and_only_the_first_document() {
        let dir = tempdir();
        std::fs::write(dir.join("a.yaml"), "domain: a\n---\ndomain: ignored\n").unwrap();
        std::fs::write(dir.join("b.yaml"), "domain: b\n").unwrap();
        let cfg = load_path(&dir, LoadOptions::default()).unwrap();
        let mut names: Vec<_> = cfg.domains().map(|d| d.name.to_string()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(cfg.dump().contains("# file: "));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rule_keys_on_a_node_without_a_limit_load_with_a_warning() {
        let cfg = parse_domain(
            "w.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    value: \"a*\"\n    quota_mode: true\n    share_threshold: true\n    value_to_metric: true\n    metadata: {a: [1, 2]}\n",
        )
        .unwrap();
        assert_eq!(
            cfg.warnings(),
            [
                "w.yaml: descriptors[0]: quota_mode has no effect without a rate_limit",
                "w.yaml: descriptors[0]: metadata has no effect without a rate_limit"
            ]
        );
    }

    #[test]
    fn numeric_values_are_strings() {
        let cfg = parse_domain("n.yaml", "domain: d\ndescriptors:\n  - key: code\n    value: 404\n    rate_limit: {unit: hour, requests_per_unit: 1}\n").unwrap();
        assert!(cfg.domain("d").unwrap().lookup([("code", "404")]).is_some());
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "zael-core-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

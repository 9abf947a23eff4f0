//! The `--entities` file of the embedded store: namespaces, entities and their stored limits,
//! so entity rules and the native API work without a table (`zael-server --entities FILE`).
//!
//! It holds what zae-limiter keeps in its config items (`table-format.md` §7, §8), at the
//! same four levels and resolved the same way:
//!
//! ```yaml
//! namespaces:
//!   tenant-alpha:
//!     system:                       # level 4: every entity, every resource
//!       limits: ["rpm:1000"]
//!       on_unavailable: block       # optional, allow|block
//!     resources:                    # level 3: every entity on that resource
//!       gpt-4: {limits: ["rpm:100", "tpm:100000"]}
//!     entities:
//!       team-a:
//!         limits: ["tpm:1000000"]   # level 2: the entity's default for every resource
//!       key-1:
//!         parent: team-a
//!         cascade: true
//!         resources:                # level 1: entity + resource
//!           gpt-4: {limits: ["rpm:60", "tpm:100000/min:200000"], disabled: false}
//!       key-2: {disabled: true}     # entity-level disabled: never admitted
//! ```
//!
//! * A limit is written as the CLI's `-l` ([`crate::limit_spec`]): `name:rate[/period][:burst]`,
//!   the capacity being the burst (else the rate), refilled by `rate` every period (a minute
//!   unless given: `/sec`, `/min`, `/hour`, `/day`, with an optional count, `/5min`).
//! * Every level with `limits` also takes `soft: [names]`: those limits admit whatever their
//!   balance and are debited into debt (the library's soft limits).
//! * `disabled` (`true`, `false` or `bypass`) is taken on an entity + resource, an entity and a
//!   resource level (not on `system`, as in the library's access walk). `bypass` admits
//!   without a debit and still counts the usage (the library's `bypass_entity`).
//! * `cascade: true` needs a `parent`, an entity of the same namespace.
//! * Unknown keys are errors; every error names the file, namespace, entity and resource.
//!
//! **Resolution** ([`Namespace::resolve`], §8.3): for an entity on a resource, the first level
//! defining at least one limit gives all the limits, never merged with another level's:
//! entity + resource, then the entity's default, then the resource's, then the system's.
//! **Access** ([`Namespace::access`], §8.5): the first level with an explicit `disabled` in
//! the same order (without the system level) decides; none means enforced. **Cascade**
//! ([`Namespace::cascades_to`], §11.9): an entity with `cascade: true` charges its parent's
//! own resolved limits on the same resource too, one hop only. An entity the file does not
//! declare is allowed: it has the resource and system limits and never cascades.

use crate::bucket::BucketLimit;
use crate::keys::{is_valid_entity_id, is_valid_resource};
pub use crate::levels::{Access, Level, StoredLimit};
use crate::levels::{first_defining, first_explicit};
use crate::limit_spec;
use crate::store::OnUnavailable;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One config level of an entity or a resource: its limits (none: the level defines none
/// and resolution falls through it) and its explicit access (`disabled`), if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelConfig {
    pub limits: Vec<StoredLimit>,
    pub access: Option<Access>,
}

/// An entity the file declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entity {
    pub parent: Option<String>,
    /// Acquires charge the parent too (only with a parent).
    pub cascade: bool,
    /// Level 2: the entity's default for every resource (`limits`, `disabled` on the entity).
    pub defaults: LevelConfig,
    /// Level 1: per resource.
    pub resources: BTreeMap<String, LevelConfig>,
}

/// A namespace: its system level, resource defaults and entities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    /// Level 4.
    pub system: Vec<StoredLimit>,
    /// The failure policy of the namespace (the system config's `on_unavailable`).
    pub on_unavailable: Option<OnUnavailable>,
    /// Level 3.
    pub resources: BTreeMap<String, LevelConfig>,
    pub entities: BTreeMap<String, Entity>,
}

/// A parsed, validated `--entities` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entities {
    pub namespaces: BTreeMap<String, Namespace>,
}

/// The limits of an entity on a resource, and where they came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub level: Level,
    pub limits: &'a [StoredLimit],
}

impl Entities {
    /// Reads and parses an `--entities` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Entities, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        parse_entities(&path.display().to_string(), &text)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// The failure policy the file sets for `namespace`.
    pub fn on_unavailable(&self, namespace: &str) -> Option<OnUnavailable> {
        self.namespace(namespace).and_then(|n| n.on_unavailable)
    }
}

impl Namespace {
    /// The limits of `entity` on `resource`: the first level defining any, whole; `None`
    /// when no level does.
    pub fn resolve(&self, entity: &str, resource: &str) -> Option<Resolved<'_>> {
        let declared = self.entities.get(entity);
        let levels = [
            declared.and_then(|e| e.resources.get(resource)).map(|l| l.limits.as_slice()),
            declared.map(|e| e.defaults.limits.as_slice()),
            self.resources.get(resource).map(|l| l.limits.as_slice()),
            Some(self.system.as_slice()),
        ];
        first_defining(levels, |l| !l.is_empty()).map(|(level, limits)| Resolved { level, limits })
    }

    /// The access of `entity` on `resource`: the first explicit `disabled` of entity +
    /// resource, entity, resource.
    pub fn access(&self, entity: &str, resource: &str) -> Access {
        let declared = self.entities.get(entity);
        first_explicit([
            declared.and_then(|e| e.resources.get(resource)).and_then(|l| l.access),
            declared.and_then(|e| e.defaults.access),
            self.resources.get(resource).and_then(|l| l.access),
        ])
    }

    /// The parent an acquire of `entity` charges too, if it cascades.
    pub fn cascades_to(&self, entity: &str) -> Option<&str> {
        self.entities.get(entity).filter(|e| e.cascade).and_then(|e| e.parent.as_deref())
    }
}

// The file as written, before validation.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    namespaces: BTreeMap<String, RawNamespace>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    system: Option<RawSystem>,
    #[serde(default)]
    resources: BTreeMap<String, RawLevel>,
    #[serde(default)]
    entities: BTreeMap<String, RawEntity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    #[serde(default)]
    limits: Vec<String>,
    #[serde(default)]
    soft: Vec<String>,
    on_unavailable: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    #[serde(default)]
    limits: Vec<String>,
    #[serde(default)]
    soft: Vec<String>,
    disabled: Option<RawAccess>,
}

/// `disabled` as written: `true`, `false` or `bypass`.
#[derive(Copy, Clone, Debug, Deserialize)]
#[serde(untagged)]
enum RawAccess {
    Flag(bool),
    Word(BypassWord),
}

#[derive(Copy, Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BypassWord {
    Bypass,
}

impl From<RawAccess> for Access {
    fn from(raw: RawAccess) -> Access {
        match raw {
            RawAccess::Flag(true) => Access::Disabled,
            RawAccess::Flag(false) => Access::Enforced,
            RawAccess::Word(BypassWord::Bypass) => Access::Bypass,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    parent: Option<String>,
    #[serde(default)]
    cascade: bool,
    disabled: Option<RawAccess>,
    #[serde(default)]
    limits: Vec<String>,
    #[serde(default)]
    soft: Vec<String>,
    #[serde(default)]
    resources: BTreeMap<String, RawLevel>,
}

/// Parses and validates an `--entities` file; `path_for_messages` prefixes every error.
pub fn parse_entities(path_for_messages: &str, text: &str) -> Result<Entities, String> {
    let file = path_for_messages;
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| format!("{file}: invalid entities file: {e}"))?;
    let mut namespaces = BTreeMap::new();
    for (ns_name, raw_ns) in raw.namespaces {
        let at = format!("namespace '{ns_name}'");
        let fail = |what: &str, message: String| format!("{file}: {what}: {message}");
        if !is_valid_entity_id(&ns_name) {
            return Err(fail(
                &at,
                "not a valid namespace name (a letter or digit, then letters, digits, '_', '.', '-', ':', '@'; at most 256)"
                    .into(),
            ));
        }
        let (system, on_unavailable) = match raw_ns.system {
            None => (Vec::new(), None),
            Some(s) => {
                let at = format!("{at}, system");
                let limits = limits(&s.limits, &s.soft).map_err(|m| fail(&at, m))?;
                let policy =
                    s.on_unavailable.map(|p| p.parse::<OnUnavailable>()).transpose().map_err(|m| fail(&at, m))?;
                (limits, policy)
            }
        };
        let mut resources = BTreeMap::new();
        for (resource, level) in raw_ns.resources {
            let at = format!("{at}, resource '{resource}'");
            check_resource(&resource).map_err(|m| fail(&at, m))?;
            resources.insert(resource, level_config(level).map_err(|m| fail(&at, m))?);
        }
        let declared: Vec<String> = raw_ns.entities.keys().cloned().collect();
        let mut entities = BTreeMap::new();
        for (id, raw_entity) in raw_ns.entities {
            let at = format!("{at}, entity '{id}'");
            if !is_valid_entity_id(&id) {
                return Err(fail(
                    &at,
                    "not a valid entity id (a letter or digit, then letters, digits, '_', '.', '-', ':', '@'; at most 256)"
                        .into(),
                ));
            }
            if let Some(parent) = &raw_entity.parent {
                if *parent == id {
                    return Err(fail(&at, "an entity cannot be its own parent".into()));
                }
                if !declared.contains(parent) {
                    return Err(fail(
                        &at,
                        format!("parent '{parent}' is not an entity of the namespace (declare it under entities)"),
                    ));
                }
            } else if raw_entity.cascade {
                return Err(fail(&at, "cascade: true needs a parent".into()));
            }
            let defaults = LevelConfig {
                limits: limits(&raw_entity.limits, &raw_entity.soft).map_err(|m| fail(&at, m))?,
                access: raw_entity.disabled.map(Access::from),
            };
            let mut per_resource = BTreeMap::new();
            for (resource, level) in raw_entity.resources {
                let at = format!("{at}, resource '{resource}'");
                check_resource(&resource).map_err(|m| fail(&at, m))?;
                per_resource.insert(resource, level_config(level).map_err(|m| fail(&at, m))?);
            }
            let entity =
                Entity { parent: raw_entity.parent, cascade: raw_entity.cascade, defaults, resources: per_resource };
            entities.insert(id, entity);
        }
        namespaces.insert(ns_name, Namespace { system, on_unavailable, resources, entities });
    }
    Ok(Entities { namespaces })
}

fn check_resource(resource: &str) -> Result<(), String> {
    if is_valid_resource(resource) {
        Ok(())
    } else {
        Err("not a valid resource name (a letter, then letters, digits, '_', '.', '-', '/', ':'; at most 64)".into())
    }
}

fn level_config(raw: RawLevel) -> Result<LevelConfig, String> {
    Ok(LevelConfig { limits: limits(&raw.limits, &raw.soft)?, access: raw.disabled.map(Access::from) })
}

/// A level's `limits` (CLI syntax) with its `soft` names marked.
fn limits(specs: &[String], soft: &[String]) -> Result<Vec<StoredLimit>, String> {
    let mut out: Vec<StoredLimit> = Vec::with_capacity(specs.len());
    for spec in specs {
        let parsed = limit_spec::parse(spec).map_err(|e| {
            // Every message of the parser quotes the spec except the period's.
            if e.contains(spec.as_str()) { e } else { format!("limit '{spec}': {e}") }
        })?;
        if out.iter().any(|l| l.name == parsed.name) {
            return Err(format!("limit '{}' is declared twice", parsed.name));
        }
        out.push(StoredLimit {
            limit: BucketLimit::per_period(parsed.capacity, parsed.refill_amount, parsed.refill_period_seconds),
            name: parsed.name,
            soft: false,
        });
    }
    for name in soft {
        match out.iter_mut().find(|l| l.name == *name) {
            Some(l) => l.soft = true,
            None => return Err(format!("soft names '{name}', which the level's limits do not declare")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Millitokens;

    const EXAMPLE: &str = r#"
namespaces:
  tenant-alpha:
    system:
      limits: ["rpm:1000"]
      on_unavailable: block
    resources:
      gpt-4: {limits: ["rpm:100", "tpm:100000"]}
    entities:
      team-a:
        limits: ["tpm:1000000"]
      key-1:
        parent: team-a
        cascade: true
        resources:
          gpt-4: {limits: ["rpm:60", "tpm:100000/min:200000"], disabled: false}
      key-2: {disabled: true}
"#;

    fn err(text: &str) -> String {
        parse_entities("e.yaml", text).unwrap_err()
    }

    fn names(r: Option<Resolved<'_>>) -> Option<(Level, Vec<&str>)> {
        r.map(|r| (r.level, r.limits.iter().map(|l| l.name.as_str()).collect()))
    }

    #[test]
    fn the_documented_example_parses() {
        let e = parse_entities("e.yaml", EXAMPLE).unwrap();
        let ns = e.namespace("tenant-alpha").unwrap();
        assert_eq!(e.on_unavailable("tenant-alpha"), Some(OnUnavailable::Block));
        assert_eq!(e.on_unavailable("other"), None);
        let key1 = &ns.entities["key-1"];
        assert_eq!((key1.parent.as_deref(), key1.cascade), (Some("team-a"), true));
        let gpt4 = &key1.resources["gpt-4"];
        assert_eq!(gpt4.access, Some(Access::Enforced));
        assert_eq!(
            gpt4.limits[1],
            StoredLimit {
                name: "tpm".into(),
                limit: BucketLimit {
                    capacity: Millitokens(200_000_000),
                    refill_amount: Millitokens(100_000_000),
                    refill_period_ms: 60_000
                },
                soft: false,
            }
        );
        assert_eq!(ns.cascades_to("key-1"), Some("team-a"));
        assert_eq!(ns.cascades_to("team-a"), None);
        assert_eq!(ns.cascades_to("stranger"), None);
    }

    #[test]
    fn resolution_takes_the_first_level_with_limits_whole() {
        let e = parse_entities("e.yaml", EXAMPLE).unwrap();
        let ns = e.namespace("tenant-alpha").unwrap();
        assert_eq!(names(ns.resolve("key-1", "gpt-4")), Some((Level::EntityResource, vec!["rpm", "tpm"])));
        // key-1 has no default limits: another resource falls to the system level.
        assert_eq!(names(ns.resolve("key-1", "claude")), Some((Level::System, vec!["rpm"])));
        // team-a's default wins over the resource level, not merged with it.
        assert_eq!(names(ns.resolve("team-a", "gpt-4")), Some((Level::EntityDefault, vec!["tpm"])));
        assert_eq!(names(ns.resolve("stranger", "gpt-4")), Some((Level::Resource, vec!["rpm", "tpm"])));
        assert_eq!(names(ns.resolve("stranger", "claude")), Some((Level::System, vec!["rpm"])));
        let bare = parse_entities("e.yaml", "namespaces: {empty: {}}").unwrap();
        assert_eq!(bare.namespace("empty").unwrap().resolve("x", "r"), None);
    }

    #[test]
    fn access_takes_the_first_explicit_disabled() {
        let text = r#"
namespaces:
  ns:
    resources:
      closed: {disabled: true}
    entities:
      off: {disabled: true, resources: {open: {disabled: false}}}
      vip: {disabled: false}
      fast: {disabled: bypass}
"#;
        let e = parse_entities("e.yaml", text).unwrap();
        let ns = e.namespace("ns").unwrap();
        assert_eq!(ns.access("off", "gpt-4"), Access::Disabled);
        assert_eq!(ns.access("off", "closed"), Access::Disabled);
        assert_eq!(ns.access("off", "open"), Access::Enforced);
        assert_eq!(ns.access("stranger", "closed"), Access::Disabled);
        assert_eq!(ns.access("vip", "closed"), Access::Enforced);
        assert_eq!(ns.access("stranger", "gpt-4"), Access::Enforced);
        assert_eq!(ns.access("fast", "gpt-4"), Access::Bypass);
        assert_eq!(ns.access("fast", "closed"), Access::Bypass);
    }

    #[test]
    fn soft_marks_the_named_limits() {
        let e = parse_entities("e.yaml", "namespaces: {ns: {system: {limits: [\"rpm:5\", \"tpm:9\"], soft: [tpm]}}}")
            .unwrap();
        let soft: Vec<bool> = e.namespace("ns").unwrap().system.iter().map(|l| l.soft).collect();
        assert_eq!(soft, [false, true]);
        assert_eq!(
            err("namespaces: {ns: {resources: {gpt-4: {limits: [\"rpm:5\"], soft: [tpm]}}}}"),
            "e.yaml: namespace 'ns', resource 'gpt-4': soft names 'tpm', which the level's limits do not declare"
        );
    }

    #[test]
    fn errors_name_the_culprit() {
        let unknown = err("namespaces:\n  ns:\n    entities:\n      key-1: {limits: [\"rpm:5\"], bogus: 1}\n");
        assert!(unknown.starts_with("e.yaml: invalid entities file: "), "{unknown}");
        assert!(unknown.contains("bogus"), "{unknown}");
        assert!(err("namespaces: {ns: {entities: {a: {}, a: {}}}}").contains("duplicate mapping key: a"));
        assert_eq!(
            err("namespaces: {ns: {entities: {key-1: {resources: {gpt-4: {limits: [\"rpm:abc\"]}}}}}}"),
            "e.yaml: namespace 'ns', entity 'key-1', resource 'gpt-4': Invalid limit values in 'rpm:abc': invalid literal for int() with base 10: 'abc'"
        );
        assert_eq!(
            err("namespaces: {ns: {system: {limits: [\"rpm:5/fortnight\"]}}}"),
            "e.yaml: namespace 'ns', system: limit 'rpm:5/fortnight': Invalid period: '/fortnight'. Use /[N]sec, /[N]min, /[N]hour, or /[N]day"
        );
        assert_eq!(
            err("namespaces: {ns: {entities: {key-1: {parent: team-z, cascade: true}}}}"),
            "e.yaml: namespace 'ns', entity 'key-1': parent 'team-z' is not an entity of the namespace (declare it under entities)"
        );
        assert_eq!(
            err("namespaces: {ns: {entities: {key-1: {parent: key-1}}}}"),
            "e.yaml: namespace 'ns', entity 'key-1': an entity cannot be its own parent"
        );
        assert_eq!(
            err("namespaces: {ns: {entities: {key-1: {cascade: true}}}}"),
            "e.yaml: namespace 'ns', entity 'key-1': cascade: true needs a parent"
        );
        assert_eq!(
            err("namespaces: {ns: {system: {limits: [\"rpm:5\", \"rpm:6\"]}}}"),
            "e.yaml: namespace 'ns', system: limit 'rpm' is declared twice"
        );
        assert_eq!(
            err("namespaces: {ns: {system: {on_unavailable: maybe}}}"),
            "e.yaml: namespace 'ns', system: on_unavailable must be 'allow' or 'block', not 'maybe'"
        );
        assert!(err("namespaces: {\"bad ns\": {}}").starts_with("e.yaml: namespace 'bad ns': not a valid namespace"));
        assert!(
            err("namespaces: {ns: {entities: {\"-x\": {}}}}")
                .starts_with("e.yaml: namespace 'ns', entity '-x': not a valid entity id")
        );
        assert!(
            err("namespaces: {ns: {resources: {\"9r\": {}}}}")
                .starts_with("e.yaml: namespace 'ns', resource '9r': not a valid resource")
        );
    }

    #[test]
    fn the_example_file_parses() {
        let e = parse_entities("entities.yaml", include_str!("../../examples/native-api/entities.yaml")).unwrap();
        let ns = e.namespace("demo").unwrap();
        assert_eq!(ns.cascades_to("key-1"), Some("team-a"));
        assert_eq!(names(ns.resolve("key-1", "gpt-4")), Some((Level::EntityResource, vec!["rpm", "tpm"])));
        assert_eq!(names(ns.resolve("team-a", "gpt-4")), Some((Level::EntityResource, vec!["rpm", "tpm"])));
        assert_eq!(ns.access("blocked", "gpt-4"), Access::Disabled);
    }
}

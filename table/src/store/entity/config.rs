//! Stored limits (`table-format.md` §8): the four config levels, whole-level precedence, a
//! per-process cache of each level's item, and the access walk's flags.

use aws_sdk_dynamodb::types::AttributeValue;
use std::sync::Arc;
use std::time::Instant;
use zael_core::bucket::BucketLimit;
pub(crate) use zael_core::levels::{Access, Level, StoredLimit};
use zael_core::levels::{first_defining, first_explicit};
use zael_core::store::StoreError;

use super::super::request::unavailable;
use super::super::{BucketId, Inner};
use crate::item::Item;
use crate::keys;

/// An entity's limits for one resource.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolved {
    pub limits: Vec<StoredLimit>,
    pub level: Option<Level>,
    /// A stored feature zael does not implement (schedules, quotas, windows).
    pub unsupported: Option<String>,
}

impl Resolved {
    pub fn limit(&self, name: &str) -> Option<&StoredLimit> {
        self.limits.iter().find(|l| l.name == name)
    }

    /// Whether buckets of these limits carry a `ttl`.
    pub fn ttl_applies(&self) -> bool {
        self.level.is_some_and(Level::ttl_applies)
    }
}

fn number(item: &Item, attr: &str) -> Option<i64> {
    match item.get(attr) {
        Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(|v| v as i64),
        _ => None,
    }
}

/// The limits one config item defines (`l_{n}_cp` discovery), or why it cannot be used.
pub(crate) fn parse_limits(item: &Item) -> (Vec<StoredLimit>, Option<String>) {
    let mut limits = Vec::new();
    let mut unsupported = None;
    let mut note = |what: String| {
        if unsupported.is_none() {
            unsupported = Some(what);
        }
    };
    if item.contains_key("sched_tz") {
        note("a schedule (`sched_tz`)".into());
    }
    let mut names: Vec<&str> =
        item.keys().filter_map(|a| a.strip_prefix("l_").and_then(|rest| rest.strip_suffix("_cp"))).collect();
    names.sort_unstable();
    for attr in item.keys() {
        if attr.starts_with("w_") && attr.ends_with("_cp") {
            note(format!("a duration-window quota (`{attr}`)"));
        }
    }
    for name in names {
        let field = |f: &str| format!("l_{name}_{f}");
        for f in ["sched", "rsched"] {
            if item.contains_key(&field(f)) {
                note(format!("a schedule (`{}`)", field(f)));
            }
        }
        let (Some(cp), Some(ra), Some(rp)) =
            (number(item, &field("cp")), number(item, &field("ra")), number(item, &field("rp")))
        else {
            note(format!("an unreadable limit `{name}`"));
            continue;
        };
        if ra <= 0 || rp <= 0 || cp <= 0 {
            note(format!("a quota or an empty limit (`{name}`: cp {cp}, ra {ra}, rp {rp})"));
            continue;
        }
        let soft = matches!(item.get(&field("soft")), Some(AttributeValue::Bool(true)));
        limits.push(StoredLimit {
            name: name.to_owned(),
            limit: BucketLimit::from_table(cp.saturating_mul(1000), ra.saturating_mul(1000), rp.saturating_mul(1000)),
            soft,
        });
    }
    (limits, unsupported)
}

/// The first level of `items` (in precedence order) defining a limit wins whole (§8.3).
pub(crate) fn resolve(items: &[Option<Arc<Item>>; 4]) -> Resolved {
    let parsed = items.clone().map(|item| item.map(|i| parse_limits(&i)));
    match first_defining(parsed, |(limits, unsupported)| !limits.is_empty() || unsupported.is_some()) {
        Some((level, (limits, unsupported))) => Resolved { limits, level: Some(level), unsupported },
        None => Resolved::default(),
    }
}

/// The walk over the entity+resource, entity default and resource levels: the first explicit
/// `disabled` decides access, the first explicit `cascade` decides the cascade policy.
pub(crate) fn walk(items: &[Option<&Item>]) -> (Access, Option<bool>) {
    let access = first_explicit(items.iter().map(|i| {
        i.and_then(|i| match i.get("disabled") {
            Some(AttributeValue::Bool(true)) => Some(Access::Disabled),
            Some(AttributeValue::Bool(false)) => Some(Access::Enforced),
            Some(AttributeValue::S(s)) if s == "bypass" => Some(Access::Bypass),
            _ => None,
        })
    }));
    let cascade = items.iter().flatten().find_map(|i| match i.get("cascade") {
        Some(AttributeValue::Bool(b)) => Some(*b),
        _ => None,
    });
    (access, cascade)
}

impl Inner {
    /// The limits of `(entity, resource)`: resolved once per config TTL (the oldest of its
    /// items decides when), from each level's item, itself cached for the TTL (missing items
    /// too, since other entities share the resource and system levels); the levels that missed
    /// are read in one BatchGetItem.
    pub(crate) async fn resolve_limits(&self, id: &BucketId) -> Result<Arc<Resolved>, StoreError> {
        if let Some(resolved) = self.caches.resolved.get(id) {
            return Ok(resolved);
        }
        let keys = keys::config_levels(&id.ns, &id.entity, &id.resource);
        let mut items: [Option<Arc<Item>>; 4] = Default::default();
        let mut oldest = Instant::now();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.caches.config_cache.get_stamped(key) {
                Some((at, item)) => {
                    items[i] = item;
                    oldest = oldest.min(at);
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let wanted: Vec<(String, String)> = missing.iter().map(|&i| keys[i].clone()).collect();
            let mut found = self.db.batch_get(&wanted, false).await.map_err(unavailable)?;
            for i in missing {
                let item = found.remove(&keys[i]).map(Arc::new);
                self.caches.config_cache.insert(keys[i].clone(), item.clone());
                items[i] = item;
            }
        }
        let resolved = Arc::new(resolve(&items));
        self.caches.resolved.insert_stamped(id.clone(), oldest, resolved.clone());
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{n, s};

    fn config(limits: &[(&str, i64, i64, i64)]) -> Item {
        let mut item = Item::new();
        item.insert("config_version".into(), n(1));
        for (name, cp, ra, rp) in limits {
            item.insert(format!("l_{name}_cp"), n(*cp));
            item.insert(format!("l_{name}_ra"), n(*ra));
            item.insert(format!("l_{name}_rp"), n(*rp));
        }
        item
    }

    #[test]
    fn first_level_with_limits_wins_whole() {
        let flags_only = Arc::new(Item::from([("disabled".to_owned(), AttributeValue::Bool(false))]));
        let entity_default = Arc::new(config(&[("rpm", 10, 10, 60)]));
        let system = Arc::new(config(&[("rpm", 100, 100, 60), ("tpm", 1000, 1000, 60)]));
        let r = resolve(&[Some(flags_only), Some(entity_default), None, Some(system.clone())]);
        assert_eq!(r.level, Some(Level::EntityDefault));
        assert_eq!(
            r.limits,
            vec![StoredLimit {
                name: "rpm".into(),
                limit: BucketLimit::from_table(10_000, 10_000, 60_000),
                soft: false
            }]
        );
        assert!(!r.ttl_applies());
        let r = resolve(&[None, None, None, Some(system)]);
        assert_eq!((r.level, r.limits.len(), r.ttl_applies()), (Some(Level::System), 2, true));
        assert_eq!(resolve(&[None, None, None, None]).level, None);
    }

    #[test]
    fn unsupported_features_are_named() {
        let mut item = config(&[("rpm", 10, 10, 60)]);
        item.insert("l_rpm_sched".into(), s("x"));
        assert!(parse_limits(&item).1.unwrap().contains("schedule"));
        let mut item = config(&[]);
        item.insert("w_daily_cp".into(), n(5));
        assert!(resolve(&[Some(Arc::new(item)), None, None, None]).unsupported.unwrap().contains("window"));
    }

    #[test]
    fn the_walk_takes_the_first_explicit_flag() {
        let enforced = Item::from([("disabled".to_owned(), AttributeValue::Bool(false))]);
        let disabled = Item::from([
            ("disabled".to_owned(), AttributeValue::Bool(true)),
            ("cascade".to_owned(), AttributeValue::Bool(true)),
        ]);
        let bypass = Item::from([("disabled".to_owned(), s("bypass"))]);
        assert_eq!(walk(&[Some(&enforced), Some(&disabled)]), (Access::Enforced, Some(true)));
        assert_eq!(walk(&[None, Some(&disabled)]), (Access::Disabled, Some(true)));
        assert_eq!(walk(&[Some(&bypass), None]), (Access::Bypass, None));
        assert_eq!(walk(&[None, None, None]), (Access::Enforced, None));
    }
}

//! Reading bucket items (`table-format.md` §9) and writing new ones (§9.6).

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::keys::{self, WCU, WCU_CAPACITY, WCU_PERIOD_MS};
use zael_core::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A stamp (`bypass`, `b_{n}_soft`) as read: its deadline in epoch ms (`-1` for a legacy
/// `BOOL true`, which reads as expired) and the attribute itself, for pins.
#[derive(Clone, Debug, PartialEq)]
pub struct StampRead {
    pub deadline: i64,
    pub raw: AttributeValue,
}

impl StampRead {
    pub fn live(&self, now: i64) -> bool {
        self.deadline > now
    }
}

/// One limit on a bucket item: `b_{n}_{tk,cp,ra,rp,tc,soft}`.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitImage {
    pub name: String,
    pub tk: i64,
    /// `cp`, `ra`, `rp`: the whole limit (a shard holds [`BucketLimit::shard_share`] of it).
    pub limit: BucketLimit,
    pub tc: Option<i64>,
    pub soft: Option<StampRead>,
}

/// What zael reads off a bucket shard item.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketImage {
    pub rf: i64,
    pub shard_count: i64,
    pub ttl: Option<i64>,
    pub vu: Option<i64>,
    /// `disabled = true` (a `false` is present but does not disable).
    pub disabled: bool,
    pub bypass: Option<StampRead>,
    /// Every limit on the item (both `tk` and `cp` present), `wcu` included.
    pub limits: Vec<LimitImage>,
    /// The first zae-limiter feature on the item that zael does not implement.
    pub unsupported: Option<String>,
    /// The owner's parent when the item is stamped `cascade = true` with a `parent_id`.
    pub cascades_to: Option<String>,
}

fn num(item: &Item, attr: &str) -> Result<Option<i64>, String> {
    match item.get(attr) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse::<i64>().map(Some).map_err(|_| format!("attribute {attr} is not an integer: {n}"))
        }
        Some(AttributeValue::Null(_)) => Ok(None),
        Some(other) => Err(format!("attribute {attr} is not a number: {other:?}")),
    }
}

fn stamp(item: &Item, attr: &str) -> Option<StampRead> {
    let raw = item.get(attr)?;
    let deadline = match raw {
        AttributeValue::N(n) => n.parse::<i64>().unwrap_or(-1),
        _ => -1,
    };
    Some(StampRead { deadline, raw: raw.clone() })
}

impl BucketImage {
    /// Decodes a bucket item; `Err` for an item that cannot be read safely (corrupt numbers).
    pub fn parse(item: &Item) -> Result<BucketImage, String> {
        let rf = num(item, "rf")?.unwrap_or(0);
        let shard_count = num(item, "shard_count")?.unwrap_or(1);
        if shard_count < 1 {
            return Err(format!("shard_count {shard_count} is not positive"));
        }
        let mut unsupported = None;
        let mut note = |what: String| {
            if unsupported.is_none() {
                unsupported = Some(what);
            }
        };
        for attr in ["sched", "rsched", "sched_tz"] {
            if item.contains_key(attr) {
                note(format!("a schedule (`{attr}`)"));
            }
        }
        let vu = num(item, "vu")?;
        if let Some(v) = vu
            && v != 0
        {
            note(format!("a schedule boundary (`vu = {v}`)"));
        }
        let mut names: Vec<&str> = Vec::new();
        for attr in item.keys() {
            let Some((name, field)) = keys::parse_battr(attr) else { continue };
            match field {
                "tk" if item.contains_key(&keys::battr(name, "cp")) => names.push(name),
                "gc" | "tu" | "rn" => note(format!("a quota (`{attr}`)")),
                "ws" | "wa" | "wtc" | "rsa" => note(format!("a duration window (`{attr}`)")),
                "sched" | "rsched" if !matches!(item.get(attr), Some(AttributeValue::S(s)) if s == "-") => {
                    note(format!("a schedule (`{attr}`)"));
                }
                _ => {}
            }
        }
        names.sort_unstable();
        let mut limits = Vec::with_capacity(names.len());
        for name in names {
            let get = |field: &str| num(item, &keys::battr(name, field));
            let limit = LimitImage {
                name: name.to_owned(),
                tk: get("tk")?.unwrap_or(0),
                limit: BucketLimit::from_table(
                    get("cp")?.unwrap_or(0),
                    get("ra")?.unwrap_or(0),
                    get("rp")?.unwrap_or(0),
                ),
                tc: get("tc")?,
                soft: if name == WCU { None } else { stamp(item, &keys::battr(name, "soft")) },
            };
            if limit.limit.refill_period_ms <= 0 {
                return Err(format!("limit {name} has refill period {}", limit.limit.refill_period_ms));
            }
            if limit.limit.refill_amount.0 == 0 && name != WCU {
                note(format!("a quota (`b_{name}_ra = 0`)"));
            }
            limits.push(limit);
        }
        Ok(BucketImage {
            rf,
            shard_count,
            ttl: num(item, "ttl")?,
            vu,
            disabled: matches!(item.get("disabled"), Some(AttributeValue::Bool(true))),
            bypass: stamp(item, "bypass"),
            limits,
            unsupported,
            cascades_to: match (item.get("cascade"), item.get("parent_id")) {
                (Some(AttributeValue::Bool(true)), Some(AttributeValue::S(p))) => Some(p.clone()),
                _ => None,
            },
        })
    }

    /// What a YAML rule's bucket cannot have: the unsupported features, and a cascade
    /// (a zae-limiter entity's bucket, not one of zael's).
    pub fn yaml_unsupported(&self) -> Option<String> {
        self.unsupported
            .clone()
            .or_else(|| self.cascades_to.as_ref().map(|_| "a cascade to a parent entity".to_owned()))
    }

    pub fn limit(&self, name: &str) -> Option<&LimitImage> {
        self.limits.iter().find(|l| l.name == name)
    }

    /// Limit `l` (one of this image's) on this shard at `now`: its balance with `put_back`
    /// millitokens (what the write that returned this image debited) added, refilled at the
    /// shard's share, and the share's capacity.
    pub fn shard_balance(&self, l: &LimitImage, put_back: i64, now: EpochMillis) -> (BucketState, Millitokens) {
        let share = l.limit.shard_share(self.shard_count);
        (crate::plan::project(l.tk.saturating_add(put_back), self.rf, &share, now), share.capacity)
    }

    /// `wcu` refilled to `now` admits one more write (§11.4 step 3).
    pub fn wcu_would_refill(&self, now: i64) -> bool {
        self.limit(WCU).is_some_and(|w| {
            crate::plan::project(w.tk, self.rf, &w.limit, EpochMillis(now)).tokens.0 >= keys::WCU_PER_WRITE
        })
    }
}

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// What a created bucket carries for one limit.
pub(crate) struct NewLimit<'a> {
    pub name: &'a str,
    pub tk: i64,
    pub limit: BucketLimit,
    pub tc: i64,
}

/// Where a new bucket shard goes and what it is stamped with.
pub(crate) struct NewBucket<'a> {
    pub ns: &'a str,
    pub entity: &'a str,
    pub resource: &'a str,
    pub shard: i64,
    pub shard_count: i64,
    pub rf: i64,
    pub ttl: Option<i64>,
}

/// The complete item of a new bucket shard (§9.6) for an entity without META: no owner
/// stamp, `cascade = false`, `wcu` full, the given limits, and `ttl` when given.
pub(crate) fn new_bucket_item(b: &NewBucket<'_>, limits: &[NewLimit<'_>]) -> Item {
    let NewBucket { ns, entity, resource, shard, shard_count, rf, ttl } = *b;
    let mut item = Item::new();
    item.insert("PK".into(), s(keys::pk_bucket(ns, entity, resource, shard)));
    item.insert("SK".into(), s(keys::SK_STATE));
    item.insert("entity_id".into(), s(entity));
    item.insert("resource".into(), s(resource));
    item.insert("rf".into(), n(rf));
    item.insert("GSI2PK".into(), s(keys::gsi2_pk(ns, resource)));
    item.insert("GSI2SK".into(), s(keys::gsi2_sk(entity, shard)));
    item.insert("cascade".into(), AttributeValue::Bool(false));
    item.insert("GSI3PK".into(), s(keys::pk_entity(ns, entity)));
    item.insert("GSI3SK".into(), s(keys::gsi3_sk(resource, shard)));
    item.insert("GSI4PK".into(), s(ns));
    item.insert("GSI4SK".into(), s(keys::gsi4_sk(entity, resource, shard)));
    item.insert("shard_count".into(), n(shard_count));
    if let Some(ttl) = ttl {
        item.insert("ttl".into(), n(ttl));
    }
    for (field, value) in
        [("tk", WCU_CAPACITY), ("cp", WCU_CAPACITY), ("ra", WCU_CAPACITY), ("rp", WCU_PERIOD_MS), ("tc", 0)]
    {
        item.insert(keys::battr(WCU, field), n(value));
    }
    for l in limits {
        let (cp, ra, rp) = (l.limit.capacity.0, l.limit.refill_amount.0, l.limit.refill_period_ms);
        for (field, value) in [("tk", l.tk), ("cp", cp), ("ra", ra), ("rp", rp), ("tc", l.tc)] {
            item.insert(keys::battr(l.name, field), n(value));
        }
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Item {
        // The bucket of `table-format.md` §16, without the owner stamp.
        let bucket = NewBucket {
            ns: "wzOnsq03OVA",
            entity: "key-1",
            resource: "gpt-4",
            shard: 0,
            shard_count: 1,
            rf: 1_795_775_405_074,
            ttl: None,
        };
        let mut item = new_bucket_item(
            &bucket,
            &[NewLimit { name: "rpm", tk: 2000, limit: BucketLimit::from_table(5000, 5000, 60_000), tc: 3000 }],
        );
        item.insert("b_wcu_tk".into(), n(997_000));
        item
    }

    #[test]
    fn parses_a_plain_bucket() {
        let image = BucketImage::parse(&example()).unwrap();
        assert_eq!(image.rf, 1_795_775_405_074);
        assert_eq!(image.shard_count, 1);
        assert_eq!(image.unsupported, None);
        assert_eq!(image.limits.len(), 2);
        let rpm = image.limit("rpm").unwrap();
        assert_eq!((rpm.tk, rpm.limit, rpm.tc), (2000, BucketLimit::from_table(5000, 5000, 60_000), Some(3000)));
        assert_eq!(image.limit("wcu").unwrap().tk, 997_000);
    }

    #[test]
    fn new_items_carry_the_reference_attributes() {
        let item = example();
        for attr in [
            "PK",
            "SK",
            "entity_id",
            "resource",
            "rf",
            "shard_count",
            "cascade",
            "GSI2PK",
            "GSI2SK",
            "GSI3PK",
            "GSI3SK",
            "GSI4PK",
            "GSI4SK",
            "b_wcu_tk",
            "b_wcu_cp",
            "b_wcu_ra",
            "b_wcu_rp",
            "b_wcu_tc",
            "b_rpm_tk",
            "b_rpm_cp",
            "b_rpm_ra",
            "b_rpm_rp",
            "b_rpm_tc",
        ] {
            assert!(item.contains_key(attr), "{attr}");
        }
        assert_eq!(item["GSI4SK"], s("BUCKET#key-1#gpt-4#0"));
        assert_eq!(item["GSI3PK"], s("wzOnsq03OVA/ENTITY#key-1"));
        assert_eq!(item["b_wcu_rp"], n(1000));
        assert!(!item.contains_key("ttl") && !item.contains_key("parent_id") && !item.contains_key("pgen"));
    }

    #[test]
    fn detects_unsupported_markers() {
        for (attr, value) in [
            ("sched", s("1x")),
            ("rsched", s("1m0h0")),
            ("vu", n(5)),
            ("b_rpm_gc", n(1)),
            ("b_rpm_rsa", n(60)),
            ("b_rpm_sched", s("1x")),
            ("b_rpm_ra", n(0)),
        ] {
            let mut item = example();
            item.insert(attr.into(), value);
            assert!(BucketImage::parse(&item).unwrap().unsupported.is_some(), "{attr}");
        }
        let mut item = example();
        item.insert("vu".into(), n(0));
        item.insert("b_rpm_sched".into(), s("-"));
        item.insert("cascade".into(), AttributeValue::Bool(true));
        assert_eq!(BucketImage::parse(&item).unwrap().unsupported, None, "vu = 0 only forces a slow pass");
        item.insert("parent_id".into(), s("proj-1"));
        let image = BucketImage::parse(&item).unwrap();
        assert_eq!(image.cascades_to.as_deref(), Some("proj-1"));
        assert!(image.yaml_unsupported().is_some());
    }

    #[test]
    fn stamps_and_flags() {
        let mut item = example();
        item.insert("disabled".into(), AttributeValue::Bool(false));
        item.insert("bypass".into(), AttributeValue::Bool(true));
        item.insert("b_rpm_soft".into(), n(42));
        let image = BucketImage::parse(&item).unwrap();
        assert!(!image.disabled);
        assert_eq!(image.bypass.as_ref().map(|b| b.deadline), Some(-1));
        assert!(image.limit("rpm").unwrap().soft.as_ref().unwrap().live(41));
        item.insert("b_rpm_tk".into(), n(1));
        item.remove("b_rpm_cp");
        assert!(BucketImage::parse(&item).unwrap().limit("rpm").is_none(), "tk without cp is no limit");
        item.insert("rf".into(), s("x"));
        assert!(BucketImage::parse(&item).is_err());
    }
}

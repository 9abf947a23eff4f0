//! A bucket record (`{ns}/BUCKET#{entity}#{resource}#{shard}`, SK `#STATE`) read off its
//! stream images: the limits with their consumption delta and the last balance and
//! parameters (`table-format.md` §9, `deployer-and-aggregator.md` §11.2).

use crate::record::{EventName, Image, StreamRecord, int, string};
use zael_core::bucket::BucketLimit;
use zael_table::keys::{SK_STATE, WCU, battr, parse_battr, parse_pk_bucket};

/// One limit `b_{name}_*` of a bucket record: how its consumption moved between the
/// record's two images, and its balance and parameters in the new one. (A bucket item as
/// zael-server reads it is `zael_table::item::BucketImage`; this is the stream's view.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDelta {
    pub name: String,
    /// `tc` new minus old, millitokens (an INSERT's old `tc` is 0).
    pub tc_delta: i64,
    pub tk: i64,
    /// `cp`, `ra`, `rp` of the new image: the whole limit, of which a shard holds its share.
    pub limit: BucketLimit,
    /// `b_{name}_soft` is present (whatever its deadline).
    pub soft: bool,
}

impl LimitDelta {
    /// Whether this limit's delta is usage for the snapshots: consumption moved, and it is not
    /// the reserved per-partition `wcu`.
    pub fn counts_as_usage(&self) -> bool {
        self.name != WCU && self.tc_delta != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRecord {
    pub namespace: String,
    pub entity: String,
    pub resource: String,
    pub shard: i64,
    /// `rf` of the new image (absent reads as 0).
    pub rf: i64,
    /// `shard_count` of the new image (absent reads as 1).
    pub shard_count: i64,
    pub vu: Option<i64>,
    pub limits: Vec<LimitDelta>,
    /// The first attribute of a feature zael-aggregator does not evaluate (schedules,
    /// quotas, duration windows, top-ups), if the item carries one.
    pub unsupported: Option<String>,
}

/// Item-level attributes of features the aggregator leaves to the client.
const UNSUPPORTED_ITEM: [&str; 2] = ["sched", "rsched"];
/// Per-limit fields of those features (`_sched`/`_rsched` with the value `-` mean "none").
const UNSUPPORTED_LIMIT: [&str; 8] = ["sched", "rsched", "ws", "rsa", "wa", "wtc", "gc", "tu"];

/// The first attribute of `image` naming an unsupported feature.
pub fn unsupported_feature(image: &Image) -> Option<String> {
    let mut names: Vec<&String> = image
        .keys()
        .filter(|attr| {
            if UNSUPPORTED_ITEM.contains(&attr.as_str()) {
                return true;
            }
            match parse_battr(attr) {
                Some((_, field)) if UNSUPPORTED_LIMIT.contains(&field) => {
                    !((field == "sched" || field == "rsched") && string(image, attr) == Some("-"))
                }
                _ => false,
            }
        })
        .collect();
    names.sort();
    names.first().map(|s| s.to_string())
}

/// Parses a bucket INSERT or MODIFY. `Ok(None)`: not a bucket record (another item type, a
/// REMOVE, a PK without namespace, no limits with a consumption counter). `Err`: a bucket
/// record with a malformed attribute.
pub fn parse(record: &StreamRecord) -> Result<Option<BucketRecord>, String> {
    if !matches!(record.event_name, EventName::Insert | EventName::Modify) {
        return Ok(None);
    }
    let new = &record.new_image;
    if new.is_empty() {
        return Err("the record has no NewImage (the stream must be NEW_AND_OLD_IMAGES)".into());
    }
    if !new.contains_key("PK") || !new.contains_key("SK") {
        return Err("the record's NewImage has no PK or SK".into());
    }
    if string(new, "SK") != Some(SK_STATE) {
        return Ok(None);
    }
    let pk = string(new, "PK").unwrap_or_default();
    if !pk.contains('/') {
        tracing::warn!(pk, "Skipping pre-migration record with unprefixed PK");
        return Ok(None);
    }
    let Some((namespace, entity, resource, shard)) = parse_pk_bucket(pk) else {
        return Ok(None);
    };
    if string(new, "entity_id").is_none_or(str::is_empty) {
        return Ok(None);
    }
    let mut limits = Vec::new();
    let mut names: Vec<&str> =
        new.keys().filter_map(|a| parse_battr(a)).filter(|(_, f)| *f == "tc").map(|(n, _)| n).collect();
    names.sort_unstable();
    for name in names {
        let field = |f: &str| battr(name, f);
        let new_tc = int(new, &field("tc"))?.unwrap_or_default();
        let old_tc = match record.event_name {
            EventName::Insert => Some(0),
            _ => int(&record.old_image, &field("tc"))?,
        };
        let Some(old_tc) = old_tc else {
            tracing::debug!(
                entity_id = entity,
                resource,
                limit_name = name,
                "Skipping limit without consumption counter"
            );
            continue;
        };
        limits.push(LimitDelta {
            name: name.to_owned(),
            tc_delta: new_tc - old_tc,
            tk: int(new, &field("tk"))?.unwrap_or_default(),
            limit: BucketLimit::from_table(
                int(new, &field("cp"))?.unwrap_or_default(),
                int(new, &field("ra"))?.unwrap_or_default(),
                int(new, &field("rp"))?.unwrap_or_default(),
            ),
            soft: new.contains_key(&field("soft")),
        });
    }
    if limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(BucketRecord {
        namespace: namespace.to_owned(),
        entity: entity.to_owned(),
        resource: resource.to_owned(),
        shard,
        rf: int(new, "rf")?.unwrap_or(0),
        shard_count: int(new, "shard_count")?.unwrap_or(1),
        vu: int(new, "vu")?,
        limits,
        unsupported: unsupported_feature(new),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    fn n(v: i64) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }
    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn image(tc: i64, tk: i64) -> Image {
        Image::from([
            ("PK".into(), s("ns1/BUCKET#user-1#gpt-4#0")),
            ("SK".into(), s("#STATE")),
            ("entity_id".into(), s("user-1")),
            ("rf".into(), n(1_700_000_000_000)),
            ("b_rpm_tc".into(), n(tc)),
            ("b_rpm_tk".into(), n(tk)),
            ("b_rpm_cp".into(), n(10_000)),
            ("b_rpm_ra".into(), n(10_000)),
            ("b_rpm_rp".into(), n(60_000)),
        ])
    }

    fn record(event: EventName, old: Image, new: Image) -> StreamRecord {
        StreamRecord { event_name: event, sequence_number: "1".into(), new_image: new, old_image: old }
    }

    #[test]
    fn modify_yields_the_tc_delta_and_the_new_balance() {
        let parsed = parse(&record(EventName::Modify, image(2000, 8000), image(5000, 5000))).unwrap().unwrap();
        assert_eq!(
            parsed,
            BucketRecord {
                namespace: "ns1".into(),
                entity: "user-1".into(),
                resource: "gpt-4".into(),
                shard: 0,
                rf: 1_700_000_000_000,
                shard_count: 1,
                vu: None,
                limits: vec![LimitDelta {
                    name: "rpm".into(),
                    tc_delta: 3000,
                    tk: 5000,
                    limit: BucketLimit::from_table(10_000, 10_000, 60_000),
                    soft: false
                }],
                unsupported: None,
            }
        );
    }

    #[test]
    fn insert_counts_its_whole_tc_and_modify_without_old_tc_skips_the_limit() {
        let parsed = parse(&record(EventName::Insert, Image::new(), image(1000, 9000))).unwrap().unwrap();
        assert_eq!(parsed.limits[0].tc_delta, 1000);
        assert_eq!(parse(&record(EventName::Modify, Image::new(), image(1000, 9000))).unwrap(), None);
    }

    #[test]
    fn foreign_and_malformed_items() {
        let mut config = image(1, 1);
        config.insert("SK".into(), s("#CONFIG"));
        assert_eq!(parse(&record(EventName::Modify, image(0, 0), config)).unwrap(), None);
        let mut unprefixed = image(1, 1);
        unprefixed.insert("PK".into(), s("BUCKET#user-1#gpt-4#0"));
        assert_eq!(parse(&record(EventName::Modify, image(0, 0), unprefixed)).unwrap(), None);
        let mut bad = image(1, 1);
        bad.insert("b_rpm_tc".into(), s("lots"));
        assert_eq!(
            parse(&record(EventName::Modify, image(0, 0), bad)).unwrap_err(),
            "attribute b_rpm_tc is not a number: S(\"lots\")"
        );
        assert_eq!(parse(&record(EventName::Remove, image(0, 0), image(1, 1))).unwrap(), None);
        assert_eq!(
            parse(&record(EventName::Modify, image(0, 0), Image::new())).unwrap_err(),
            "the record has no NewImage (the stream must be NEW_AND_OLD_IMAGES)"
        );
        let mut keyless = image(1, 1);
        keyless.remove("PK");
        assert_eq!(
            parse(&record(EventName::Modify, image(0, 0), keyless)).unwrap_err(),
            "the record's NewImage has no PK or SK"
        );
    }

    #[test]
    fn unsupported_features_are_named_and_explicit_none_schedules_are_not() {
        let mut img = image(1, 1);
        img.insert("b_rpm_sched".into(), s("-"));
        assert_eq!(unsupported_feature(&img), None);
        img.insert("b_rpm_rsa".into(), n(3600));
        assert_eq!(unsupported_feature(&img), Some("b_rpm_rsa".into()));
        img.insert("rsched".into(), s("0 0 * * *"));
        assert_eq!(unsupported_feature(&img), Some("b_rpm_rsa".into()));
    }
}

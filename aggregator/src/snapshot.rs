//! Usage snapshots (`deployer-and-aggregator.md` §11.3): the `tc` deltas of a batch, summed per
//! (namespace, entity, resource, window), written with one UpdateItem each (D3).

use crate::bucket::BucketRecord;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use zael_table::keys::{gsi2_pk, pk_entity};

/// A snapshot window (`SNAPSHOT_WINDOWS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    Hourly,
    Daily,
    Monthly,
}

impl Window {
    pub fn parse(name: &str) -> Option<Window> {
        match name {
            "hourly" => Some(Window::Hourly),
            "daily" => Some(Window::Daily),
            "monthly" => Some(Window::Monthly),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Hourly => "hourly",
            Window::Daily => "daily",
            Window::Monthly => "monthly",
        }
    }

    /// The window's start for `timestamp_ms`, in UTC: `2026-01-05T10:00:00Z`.
    pub fn key(self, timestamp_ms: i64) -> String {
        let at = DateTime::<Utc>::from_timestamp_millis(timestamp_ms).unwrap_or_default();
        let format = match self {
            Window::Hourly => "%Y-%m-%dT%H:00:00Z",
            Window::Daily => "%Y-%m-%dT00:00:00Z",
            Window::Monthly => "%Y-%m-01T00:00:00Z",
        };
        at.format(format).to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotKey {
    pub namespace: String,
    pub entity: String,
    pub resource: String,
    pub window: Window,
    pub window_key: String,
}

/// What one snapshot item receives from a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDelta {
    /// Per limit: the summed `tc` delta in millitokens and how many records left a soft limit
    /// in debt (`{limit}#od`).
    pub limits: BTreeMap<String, (i64, i64)>,
    /// Records with a non-zero delta on any counted limit.
    pub events: i64,
}

/// Sums the batch's consumption per snapshot item. `buckets` are the parsed bucket records in
/// stream order; every non-`wcu` limit with a non-zero delta counts.
pub fn plan<'a>(
    buckets: impl IntoIterator<Item = &'a BucketRecord>,
    windows: &[Window],
) -> BTreeMap<SnapshotKey, SnapshotDelta> {
    let mut plan: BTreeMap<SnapshotKey, SnapshotDelta> = BTreeMap::new();
    for bucket in buckets {
        let counted: Vec<_> = bucket.limits.iter().filter(|l| l.counts_as_usage()).collect();
        if counted.is_empty() {
            continue;
        }
        for &window in windows {
            let key = SnapshotKey {
                namespace: bucket.namespace.clone(),
                entity: bucket.entity.clone(),
                resource: bucket.resource.clone(),
                window,
                window_key: window.key(bucket.rf),
            };
            let delta = plan.entry(key).or_default();
            delta.events += 1;
            for limit in &counted {
                let entry = delta.limits.entry(limit.name.clone()).or_default();
                entry.0 += limit.tc_delta;
                if limit.soft && limit.tc_delta > 0 && limit.tk < 0 {
                    entry.1 += 1;
                }
            }
        }
    }
    plan
}

/// Writes one snapshot item: metadata set once, counters added (whole tokens, floor division).
pub async fn write(
    client: &Client,
    table: &str,
    key: &SnapshotKey,
    delta: &SnapshotDelta,
    ttl_days: i64,
    now_s: i64,
) -> Result<(), String> {
    let mut names = HashMap::from([
        ("#resource".to_owned(), "resource".to_owned()),
        ("#window".to_owned(), "window".to_owned()),
        ("#window_start".to_owned(), "window_start".to_owned()),
        ("#total_events".to_owned(), "total_events".to_owned()),
        ("#ttl".to_owned(), "ttl".to_owned()),
    ]);
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: i64| AttributeValue::N(v.to_string());
    let entity_pk = pk_entity(&key.namespace, &key.entity);
    let mut values = HashMap::from([
        (":entity_id".to_owned(), s(&key.entity)),
        (":resource".to_owned(), s(&key.resource)),
        (":window".to_owned(), s(key.window.name())),
        (":window_start".to_owned(), s(&key.window_key)),
        (":gsi2pk".to_owned(), s(&gsi2_pk(&key.namespace, &key.resource))),
        (":gsi2sk".to_owned(), s(&format!("USAGE#{}#{}", key.window_key, key.entity))),
        (":gsi4pk".to_owned(), s(&key.namespace)),
        (":gsi4sk".to_owned(), s(&entity_pk)),
        (":ttl".to_owned(), n(now_s + ttl_days * 86_400)),
        (":events".to_owned(), n(delta.events)),
    ]);
    let mut adds = vec!["#total_events :events".to_owned()];
    for (i, (limit, (milli, overdrawn))) in delta.limits.iter().enumerate() {
        names.insert(format!("#l{i}"), limit.clone());
        values.insert(format!(":l{i}"), n(milli.div_euclid(1000)));
        adds.push(format!("#l{i} :l{i}"));
        if *overdrawn > 0 {
            names.insert(format!("#o{i}"), format!("{limit}#od"));
            values.insert(format!(":o{i}"), n(*overdrawn));
            adds.push(format!("#o{i} :o{i}"));
        }
    }
    let expression = format!(
        "SET entity_id = :entity_id, #resource = if_not_exists(#resource, :resource), \
         #window = if_not_exists(#window, :window), #window_start = if_not_exists(#window_start, :window_start), \
         GSI2PK = :gsi2pk, GSI2SK = :gsi2sk, GSI4PK = if_not_exists(GSI4PK, :gsi4pk), \
         GSI4SK = if_not_exists(GSI4SK, :gsi4sk), #ttl = if_not_exists(#ttl, :ttl) ADD {}",
        adds.join(", ")
    );
    client
        .update_item()
        .table_name(table)
        .key("PK", s(&entity_pk))
        .key("SK", s(&format!("#USAGE#{}#{}", key.resource, key.window_key)))
        .update_expression(expression)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await
        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
    tracing::debug!(
        entity_id = key.entity,
        resource = key.resource,
        window = key.window.name(),
        window_key = key.window_key,
        "Snapshot updated"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::LimitDelta;
    use zael_core::bucket::BucketLimit;

    fn limit(name: &str, tc_delta: i64, tk: i64, soft: bool) -> LimitDelta {
        LimitDelta { name: name.into(), tc_delta, tk, limit: BucketLimit::from_table(10_000, 10_000, 60_000), soft }
    }

    fn bucket(entity: &str, rf: i64, limits: Vec<LimitDelta>) -> BucketRecord {
        BucketRecord {
            namespace: "ns".into(),
            entity: entity.into(),
            resource: "api".into(),
            shard: 0,
            rf,
            shard_count: 1,
            vu: None,
            limits,
            unsupported: None,
        }
    }

    #[test]
    fn window_keys_in_utc() {
        let at = 1_767_608_430_123; // 2026-01-05T10:20:30.123Z
        assert_eq!(Window::Hourly.key(at), "2026-01-05T10:00:00Z");
        assert_eq!(Window::Daily.key(at), "2026-01-05T00:00:00Z");
        assert_eq!(Window::Monthly.key(at), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn deltas_are_summed_per_item_and_records_counted_once() {
        let hour = 3_600_000;
        let base = 1_767_607_200_000; // 2026-01-05T10:00:00Z
        let buckets = [
            bucket("a", base + 1, vec![limit("rpm", 1000, 5000, false), limit("tpm", 1500, 0, false)]),
            bucket("a", base + 2, vec![limit("rpm", 1000, 4000, false), limit("tpm", 1500, 0, false)]),
            bucket("a", base + 3, vec![limit("wcu", 1000, 0, false), limit("rpm", 0, 4000, false)]),
            bucket("a", base + hour, vec![limit("rpm", -2500, 9000, false)]),
            bucket("b", base, vec![limit("rpm", 3000, -1000, true), limit("tpm", 1000, -5, false)]),
        ];
        let plan = plan(&buckets, &[Window::Hourly, Window::Daily]);
        let get = |entity: &str, window: Window, key: &str| {
            plan.get(&SnapshotKey {
                namespace: "ns".into(),
                entity: entity.into(),
                resource: "api".into(),
                window,
                window_key: key.into(),
            })
            .cloned()
        };
        let limits = |pairs: &[(&str, i64, i64)]| {
            pairs.iter().map(|(n, m, o)| (n.to_string(), (*m, *o))).collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            get("a", Window::Hourly, "2026-01-05T10:00:00Z"),
            Some(SnapshotDelta { limits: limits(&[("rpm", 2000, 0), ("tpm", 3000, 0)]), events: 2 })
        );
        assert_eq!(
            get("a", Window::Hourly, "2026-01-05T11:00:00Z"),
            Some(SnapshotDelta { limits: limits(&[("rpm", -2500, 0)]), events: 1 })
        );
        assert_eq!(
            get("a", Window::Daily, "2026-01-05T00:00:00Z"),
            Some(SnapshotDelta { limits: limits(&[("rpm", -500, 0), ("tpm", 3000, 0)]), events: 3 })
        );
        assert_eq!(
            get("b", Window::Daily, "2026-01-05T00:00:00Z"),
            Some(SnapshotDelta { limits: limits(&[("rpm", 3000, 1), ("tpm", 1000, 0)]), events: 1 })
        );
        assert_eq!(plan.len(), 5);
    }
}

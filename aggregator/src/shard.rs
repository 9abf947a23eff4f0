//! Proactive sharding (`deployer-and-aggregator.md` §11.5): shard 0 doubles `shard_count` when
//! its projected `wcu` falls under 20 %, and a raised count reaches every other shard: existing
//! ones are updated, new ones cloned from shard 0's image next to a ConditionCheck on the
//! owner's `#META` (a move or a re-create since the image cancels the clone).

use crate::bucket::BucketRecord;
use crate::record::{Image, StreamRecord, int, string};
use crate::refill::ShardState;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use std::collections::HashMap;
use zael_table::keys::{
    MAX_SHARD_COUNT, SK_META, SK_STATE, WCU, battr, gsi2_sk, gsi3_sk, gsi4_sk, parse_battr, pk_bucket, pk_entity,
};

/// Below this share of its capacity, a projected `wcu` balance doubles the shard count.
const WCU_LOW_WATER: f64 = 0.2;

/// The new shard count for shard 0 of `state`, if its `wcu` projected to `now` is low.
pub fn doubling(state: &ShardState, now: i64) -> Option<i64> {
    let bucket = &state.last;
    let wcu = bucket.limits.iter().find(|l| l.name == WCU)?;
    let capacity = wcu.limit.capacity.0;
    if bucket.shard != 0 || capacity <= 0 {
        return None;
    }
    if bucket.shard_count >= MAX_SHARD_COUNT {
        tracing::debug!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            shard_count = bucket.shard_count,
            max_shard_count = MAX_SHARD_COUNT,
            "Proactive shard skipped - at MAX_SHARD_COUNT"
        );
        return None;
    }
    let mut tokens = wcu.tk;
    if wcu.limit.refill_amount.0 > 0 && wcu.limit.refill_period_ms > 0 {
        tokens = crate::refill::refilled_balance(wcu, &wcu.limit, bucket.rf, now);
    }
    let ratio = tokens as f64 / capacity as f64;
    (ratio < WCU_LOW_WATER).then(|| (bucket.shard_count * 2).min(MAX_SHARD_COUNT))
}

/// Writes a doubling on shard 0, conditioned on the count read. `Ok(false)`: lost the race.
pub async fn write_doubling(
    client: &Client,
    table: &str,
    bucket: &BucketRecord,
    new_count: i64,
) -> Result<bool, String> {
    let n = |v: i64| AttributeValue::N(v.to_string());
    let result = client
        .update_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk_bucket(&bucket.namespace, &bucket.entity, &bucket.resource, 0)))
        .key("SK", AttributeValue::S(SK_STATE.to_owned()))
        .update_expression("SET shard_count = :new")
        .condition_expression("shard_count = :old")
        .expression_attribute_values(":old", n(bucket.shard_count))
        .expression_attribute_values(":new", n(new_count))
        .send()
        .await;
    let written = crate::write::conditional(result)?;
    if !written {
        tracing::debug!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            "Proactive shard skipped - concurrent bump"
        );
        return Ok(false);
    }
    tracing::info!(
        entity_id = bucket.entity,
        resource = bucket.resource,
        old_count = bucket.shard_count,
        new_count,
        "Proactive shard doubling"
    );
    if new_count >= MAX_SHARD_COUNT {
        tracing::warn!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            shard_count = new_count,
            max_shard_count = MAX_SHARD_COUNT,
            "Shard count reached MAX_SHARD_COUNT after proactive doubling"
        );
    }
    Ok(true)
}

/// A raised `shard_count` seen on a shard-0 MODIFY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propagation {
    pub old_count: i64,
    pub new_count: i64,
}

/// The propagation a record asks for, if it is a shard-0 MODIFY whose count rose.
pub fn propagation(record: &StreamRecord, bucket: &BucketRecord) -> Result<Option<Propagation>, String> {
    let (Some(old_count), Some(new_count)) =
        (int(&record.old_image, "shard_count")?, int(&record.new_image, "shard_count")?)
    else {
        return Ok(None);
    };
    if bucket.shard != 0 || new_count <= old_count {
        return Ok(None);
    }
    if new_count > MAX_SHARD_COUNT {
        tracing::warn!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            old_count,
            new_count,
            max_shard_count = MAX_SHARD_COUNT,
            "Shard count propagation skipped - above MAX_SHARD_COUNT"
        );
        return Ok(None);
    }
    Ok(Some(Propagation { old_count, new_count }))
}

/// Shard `target`'s first image: shard 0's, re-keyed, each limit holding its share of the
/// capacity (`wcu` the whole partition's) and no consumption.
pub fn clone_image(shard0: &Image, bucket: &BucketRecord, target: i64, new_count: i64) -> Result<Image, String> {
    let s = |v: String| AttributeValue::S(v);
    let n = |v: i64| AttributeValue::N(v.to_string());
    let mut item = shard0.clone();
    item.insert("PK".into(), s(pk_bucket(&bucket.namespace, &bucket.entity, &bucket.resource, target)));
    item.insert("GSI2SK".into(), s(gsi2_sk(&bucket.entity, target)));
    item.insert("GSI3SK".into(), s(gsi3_sk(&bucket.resource, target)));
    item.insert("GSI4SK".into(), s(gsi4_sk(&bucket.entity, &bucket.resource, target)));
    item.insert("shard_count".into(), n(new_count));
    let limits: Vec<String> =
        shard0.keys().filter_map(|a| parse_battr(a)).filter(|(_, f)| *f == "cp").map(|(l, _)| l.to_owned()).collect();
    for limit in limits {
        let cp = int(shard0, &battr(&limit, "cp"))?.unwrap_or(0);
        let tokens = if limit == WCU { cp } else { cp / new_count };
        item.insert(battr(&limit, "tk"), n(tokens));
        item.insert(battr(&limit, "tc"), n(0));
    }
    Ok(item)
}

/// A condition expression with its names and values.
pub struct Condition {
    pub expression: String,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

/// The condition pinning a clone to its owner's `#META` as the image saw it (`pgen`, `pinc`):
/// an image with neither asserts `#META` carries neither.
pub fn owner_condition(shard0: &Image) -> Result<Condition, String> {
    let pgen = int(shard0, "pgen")?;
    let pinc = string(shard0, "pinc");
    let mut names = HashMap::from([("#opg".to_owned(), "pgen".to_owned()), ("#opi".to_owned(), "pinc".to_owned())]);
    let mut values = HashMap::new();
    let mut parts = Vec::new();
    if pgen.is_some() || pinc.is_some() {
        parts.push("attribute_exists(PK)".to_owned());
    }
    match pgen {
        None => parts.push("attribute_not_exists(#opg)".into()),
        Some(g) => {
            values.insert(":opg".to_owned(), AttributeValue::N(g.to_string()));
            parts.push(if g == 0 {
                "(attribute_not_exists(#opg) OR #opg = :opg)".into()
            } else {
                "#opg = :opg".into()
            });
        }
    }
    match pinc {
        None => parts.push("attribute_not_exists(#opi)".into()),
        Some(inc) => {
            names.insert("#oca".into(), "created_at".into());
            values.insert(":opi".to_owned(), AttributeValue::S(inc.to_owned()));
            let created = if inc == "-" { "(#oca = :opi OR attribute_not_exists(#oca))" } else { "#oca = :opi" };
            parts.push(format!("(#opi = :opi OR (attribute_not_exists(#opi) AND {created}))"));
        }
    }
    Ok(Condition { expression: parts.join(" AND "), names, values })
}

/// Propagates a raised count: `SET shard_count` on shards `1..old` (only upward), clones for
/// `old..new` (each its own transaction; a cancelled one is left to the client, which creates
/// shards lazily). Returns how many shard items were written.
pub async fn propagate(
    client: &Client,
    table: &str,
    record: &StreamRecord,
    bucket: &BucketRecord,
    change: &Propagation,
) -> Result<i64, String> {
    let n = |v: i64| AttributeValue::N(v.to_string());
    let mut updated = 0;
    for target in 1..change.old_count {
        let result = client
            .update_item()
            .table_name(table)
            .key("PK", AttributeValue::S(pk_bucket(&bucket.namespace, &bucket.entity, &bucket.resource, target)))
            .key("SK", AttributeValue::S(SK_STATE.to_owned()))
            .update_expression("SET shard_count = :new")
            .condition_expression("shard_count < :new")
            .expression_attribute_values(":new", n(change.new_count))
            .send()
            .await;
        if crate::write::conditional(result)? {
            updated += 1;
        }
    }
    if let Some(feature) = &bucket.unsupported {
        tracing::warn!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            attribute = feature,
            "Bucket uses schedules, quotas or duration windows - not pre-creating shards"
        );
        return Ok(updated);
    }
    let Condition { expression: condition, names, values } = owner_condition(&record.new_image)?;
    for target in change.old_count..change.new_count {
        let item = clone_image(&record.new_image, bucket, target, change.new_count)?;
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(|e| e.to_string())?;
        let check = ConditionCheck::builder()
            .table_name(table)
            .key("PK", AttributeValue::S(pk_entity(&bucket.namespace, &bucket.entity)))
            .key("SK", AttributeValue::S(SK_META.to_owned()))
            .condition_expression(&condition)
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values((!values.is_empty()).then(|| values.clone()))
            .build()
            .map_err(|e| e.to_string())?;
        let result = client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .send()
            .await;
        match result {
            Ok(_) => updated += 1,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_transaction_canceled_exception()) => {
                tracing::debug!(
                    resource = bucket.resource,
                    shard_id = target,
                    "Clone transaction cancelled - left to the client"
                );
            }
            Err(e) => return Err(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
        }
    }
    if updated > 0 {
        tracing::info!(
            entity_id = bucket.entity,
            resource = bucket.resource,
            new_count = change.new_count,
            shards_updated = updated,
            "Shard count propagated"
        );
    }
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::LimitDelta;
    use crate::refill::aggregate;
    use zael_core::bucket::BucketLimit;

    fn wcu(tk: i64) -> LimitDelta {
        LimitDelta {
            name: "wcu".into(),
            tc_delta: 0,
            tk,
            limit: BucketLimit::from_table(1_000_000, 1_000_000, 1000),
            soft: false,
        }
    }

    fn bucket(shard: i64, shard_count: i64, rf: i64, limits: Vec<LimitDelta>) -> BucketRecord {
        BucketRecord {
            namespace: "ns".into(),
            entity: "e".into(),
            resource: "r".into(),
            shard,
            rf,
            shard_count,
            vu: None,
            limits,
            unsupported: None,
        }
    }

    #[test]
    fn doubling_projects_wcu_to_now() {
        let hot = bucket(0, 2, 1000, vec![wcu(100_000)]);
        let state = aggregate([&hot]).remove(0);
        // 100 ms later: 200,000 = 20 % exactly, not below.
        assert_eq!(doubling(&state, 1100), None);
        assert_eq!(doubling(&state, 1099), Some(4));
        let max = bucket(0, 32, 1000, vec![wcu(0)]);
        assert_eq!(doubling(&aggregate([&max]).remove(0), 1000), None);
        let other_shard = bucket(1, 2, 1000, vec![wcu(0)]);
        assert_eq!(doubling(&aggregate([&other_shard]).remove(0), 1000), None);
        let near_max = bucket(0, 16, 1000, vec![wcu(0)]);
        assert_eq!(doubling(&aggregate([&near_max]).remove(0), 1000), Some(32));
    }

    #[test]
    fn clones_hold_their_share_and_no_consumption() {
        let s = |v: &str| AttributeValue::S(v.into());
        let n = |v: i64| AttributeValue::N(v.to_string());
        let shard0 = Image::from([
            ("PK".into(), s("ns/BUCKET#e#r#0")),
            ("SK".into(), s("#STATE")),
            ("GSI2SK".into(), s("BUCKET#e#0")),
            ("GSI3SK".into(), s("BUCKET#r#0")),
            ("GSI4SK".into(), s("BUCKET#e#r#0")),
            ("shard_count".into(), n(4)),
            ("rf".into(), n(77)),
            ("b_rpm_cp".into(), n(10_000)),
            ("b_rpm_tk".into(), n(1)),
            ("b_rpm_tc".into(), n(99_000)),
            ("b_wcu_cp".into(), n(1_000_000)),
            ("b_wcu_tk".into(), n(5)),
            ("b_wcu_tc".into(), n(7)),
        ]);
        let clone = clone_image(&shard0, &bucket(0, 4, 77, vec![]), 3, 4).unwrap();
        let mut expected = shard0.clone();
        for (k, v) in [
            ("PK", s("ns/BUCKET#e#r#3")),
            ("GSI2SK", s("BUCKET#e#3")),
            ("GSI3SK", s("BUCKET#r#3")),
            ("GSI4SK", s("BUCKET#e#r#3")),
            ("b_rpm_tk", n(2500)),
            ("b_rpm_tc", n(0)),
            ("b_wcu_tk", n(1_000_000)),
            ("b_wcu_tc", n(0)),
        ] {
            expected.insert(k.into(), v);
        }
        assert_eq!(clone, expected);
    }

    #[test]
    fn owner_conditions() {
        let Condition { expression, values, .. } = owner_condition(&Image::new()).unwrap();
        assert_eq!(expression, "attribute_not_exists(#opg) AND attribute_not_exists(#opi)");
        assert!(values.is_empty());
        let image = Image::from([
            ("pgen".into(), AttributeValue::N("2".into())),
            ("pinc".into(), AttributeValue::S("2026-01-01T00:00:00Z".into())),
        ]);
        let Condition { expression, names, .. } = owner_condition(&image).unwrap();
        assert_eq!(
            expression,
            "attribute_exists(PK) AND #opg = :opg AND (#opi = :opi OR (attribute_not_exists(#opi) AND #oca = :opi))"
        );
        assert_eq!(names.get("#oca").map(String::as_str), Some("created_at"));
    }
}

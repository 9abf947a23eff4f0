//! Proactive refill (`deployer-and-aggregator.md` §11.4): a bucket whose projected balance would
//! not cover the batch's consumption gets its refill written ahead of the next request, under
//! the `rf = :expected` lock, with ADD so concurrent client debits commute.

use crate::bucket::{BucketRecord, LimitDelta};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};
use zael_core::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};
use zael_table::keys::{SK_STATE, WCU, battr, pk_bucket};

/// One bucket shard as the batch last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardState {
    pub last: BucketRecord,
    /// Per limit, the `tc` deltas of every record summed.
    pub consumed: BTreeMap<String, i64>,
}

/// Groups the MODIFYs of a batch by bucket shard: the last image wins, consumption is summed.
pub fn aggregate<'a>(modifies: impl IntoIterator<Item = &'a BucketRecord>) -> Vec<ShardState> {
    let mut order: Vec<(String, String, String, i64)> = Vec::new();
    let mut states: HashMap<(String, String, String, i64), ShardState> = HashMap::new();
    for record in modifies {
        let key = (record.namespace.clone(), record.entity.clone(), record.resource.clone(), record.shard);
        let state = states.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            ShardState { last: record.clone(), consumed: BTreeMap::new() }
        });
        for limit in &record.limits {
            *state.consumed.entry(limit.name.clone()).or_default() += limit.tc_delta;
        }
        state.last = record.clone();
    }
    order.into_iter().filter_map(|k| states.remove(&k)).collect()
}

/// The refill write for one bucket shard: per limit the `tk` delta to ADD and, for a raised
/// limit, the balance it was computed from (the write requires `tk <= read`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefillWrite {
    pub expected_rf: i64,
    pub new_rf: i64,
    pub expected_vu: Option<i64>,
    pub deltas: Vec<(String, i64, Option<i64>)>,
}

/// Decides the refill of one bucket shard at `now`; `None` when nothing needs writing.
pub fn plan(state: &ShardState, now: i64) -> Option<RefillWrite> {
    let bucket = &state.last;
    let shards = bucket.shard_count.max(1);
    let mut deltas = Vec::new();
    let mut deferred_wcu = None;
    for limit in &bucket.limits {
        if limit.limit.refill_period_ms <= 0 || limit.limit.refill_amount.0 <= 0 {
            continue;
        }
        // `wcu` is per partition: every shard holds all of it.
        let share = limit.limit.shard_share(if limit.name == WCU { 1 } else { shards });
        let refilled = refilled_balance(limit, &share, bucket.rf, now);
        let delta = refilled - limit.tk;
        if delta == 0 {
            continue;
        }
        if delta > 0 {
            let demand = state.consumed.get(&limit.name).copied().unwrap_or(0).max(0);
            if refilled >= demand {
                if limit.name == WCU {
                    deferred_wcu = Some((delta, limit.tk));
                }
                continue;
            }
        }
        deltas.push((limit.name.clone(), delta, (delta > 0).then_some(limit.tk)));
    }
    if deltas.is_empty() {
        return None;
    }
    // A `wcu` refill the threshold skipped rides along with any other write for free.
    if let Some((delta, read)) = deferred_wcu {
        deltas.push((WCU.to_owned(), delta, Some(read)));
    }
    Some(RefillWrite { expected_rf: bucket.rf, new_rf: now.max(bucket.rf), expected_vu: bucket.vu, deltas })
}

/// `limit`'s balance refilled from `rf` to `now` under `share` (its shard's share).
pub(crate) fn refilled_balance(limit: &LimitDelta, share: &BucketLimit, rf: i64, now: i64) -> i64 {
    let state = BucketState { tokens: Millitokens(limit.tk), refilled_at: EpochMillis(rf) };
    state.refilled(share, EpochMillis(now)).tokens.0
}

/// Writes a refill. `Ok(false)`: the lock was lost (a client or another invocation wrote `rf`
/// or a balance first), which is not an error.
pub async fn write(client: &Client, table: &str, bucket: &BucketRecord, refill: &RefillWrite) -> Result<bool, String> {
    let n = |v: i64| AttributeValue::N(v.to_string());
    let mut names = HashMap::from([("#vu".to_owned(), "vu".to_owned())]);
    let mut values =
        HashMap::from([(":new_rf".to_owned(), n(refill.new_rf)), (":expected_rf".to_owned(), n(refill.expected_rf))]);
    let mut condition = "rf = :expected_rf".to_owned();
    match refill.expected_vu {
        None => condition.push_str(" AND attribute_not_exists(#vu)"),
        Some(vu) => {
            condition.push_str(" AND #vu = :expected_vu");
            values.insert(":expected_vu".into(), n(vu));
        }
    }
    let mut adds = Vec::new();
    for (i, (limit, delta, read)) in refill.deltas.iter().enumerate() {
        names.insert(format!("#rt{i}"), battr(limit, "tk"));
        values.insert(format!(":rd{i}"), n(*delta));
        adds.push(format!("#rt{i} :rd{i}"));
        if let Some(read) = read {
            values.insert(format!(":rk{i}"), n(*read));
            condition.push_str(&format!(" AND #rt{i} <= :rk{i}"));
        }
    }
    let result = client
        .update_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk_bucket(&bucket.namespace, &bucket.entity, &bucket.resource, bucket.shard)))
        .key("SK", AttributeValue::S(SK_STATE.to_owned()))
        .update_expression(format!("SET rf = :new_rf ADD {}", adds.join(", ")))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await;
    let written = crate::write::conditional(result)?;
    if written {
        let refilled: Vec<&str> = refill.deltas.iter().map(|(l, _, _)| l.as_str()).collect();
        tracing::debug!(entity_id = bucket.entity, resource = bucket.resource, limits_refilled = ?refilled, "Bucket refilled");
    } else {
        tracing::debug!(entity_id = bucket.entity, resource = bucket.resource, "Refill skipped - concurrent rf update");
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, tk: i64, cp: i64, ra: i64, rp: i64, tc_delta: i64) -> LimitDelta {
        LimitDelta { name: name.into(), tc_delta, tk, limit: BucketLimit::from_table(cp, ra, rp), soft: false }
    }

    fn record(rf: i64, shard_count: i64, limits: Vec<LimitDelta>) -> BucketRecord {
        BucketRecord {
            namespace: "ns".into(),
            entity: "e".into(),
            resource: "r".into(),
            shard: 0,
            rf,
            shard_count,
            vu: None,
            limits,
            unsupported: None,
        }
    }

    #[test]
    fn consumption_is_summed_and_the_last_image_wins() {
        let a = record(100, 1, vec![limit("rpm", 9000, 10_000, 10_000, 60_000, 1000)]);
        let b = record(200, 2, vec![limit("rpm", 7000, 10_000, 10_000, 60_000, 2000)]);
        let states = aggregate([&a, &b]);
        assert_eq!(states, vec![ShardState { last: b.clone(), consumed: BTreeMap::from([("rpm".into(), 3000)]) }]);
    }

    #[test]
    fn refill_is_written_only_when_the_projection_would_not_cover_the_batch() {
        // 10 tokens per minute; 6 s since rf add 1 token.
        let low = record(0, 1, vec![limit("rpm", 500, 10_000, 10_000, 60_000, 3000)]);
        let state = aggregate([&low]).remove(0);
        assert_eq!(
            plan(&state, 6000),
            Some(RefillWrite {
                expected_rf: 0,
                new_rf: 6000,
                expected_vu: None,
                deltas: vec![("rpm".into(), 1000, Some(500))]
            })
        );
        let plenty = record(0, 1, vec![limit("rpm", 5000, 10_000, 10_000, 60_000, 3000)]);
        assert_eq!(plan(&aggregate([&plenty]).remove(0), 6000), None);
    }

    #[test]
    fn shards_divide_capacity_and_rate_but_not_wcu_and_a_shrink_is_always_written() {
        // Two shards: ceiling 5000, rate 5000/min; tk 6000 is clamped to 5000 at once.
        let over = record(
            0,
            2,
            vec![limit("rpm", 6000, 10_000, 10_000, 60_000, 0), limit("wcu", 400_000, 1_000_000, 1_000_000, 1000, 0)],
        );
        let write = plan(&aggregate([&over]).remove(0), 100).unwrap();
        // wcu: 100 ms at 1000/s adds 100,000, not needed by itself, credited with the write.
        assert_eq!(write.deltas, vec![("rpm".into(), -1000, None), ("wcu".into(), 100_000, Some(400_000))]);
    }

    #[test]
    fn no_rate_or_period_means_no_refill_and_no_clamp() {
        let quota = record(0, 1, vec![limit("q", 50_000, 10_000, 0, 60_000, 5000)]);
        assert_eq!(plan(&aggregate([&quota]).remove(0), 60_000), None);
    }
}

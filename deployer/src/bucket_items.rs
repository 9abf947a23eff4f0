//! The items of a reset or top-up (zae-limiter 0.17.0, ADR-149), as the library writes and
//! reads them: a bucket shard as the planner sees it, one shard's `rf`-locked `Update`, and
//! the operation record `{ns}/BUCKET#{entity}#{resource}#0` `#OP#{id}` that makes a keyed
//! call apply once. Pure: no I/O.

use aws_sdk_dynamodb::types::{AttributeValue, Put, Update};
use std::collections::{BTreeMap, HashMap};
use zael_table::keys;

use crate::bucket_plan::{ShardRead, ShardWrite, StoredLimit};
use crate::config_item::{Item, n, s};

/// How long an operation record lives (`schema.OPERATION_RECORD_TTL_SECONDS`): 3 days.
pub const OPERATION_RECORD_TTL_SECONDS: i64 = 3 * 86_400;
/// The incarnation of an entity with no `#META` (`schema.LEGACY_INCARNATION`): it matches
/// every incarnation, both ways.
pub const LEGACY_INCARNATION: &str = "-";

/// `reset` or `top_up`: the operation a record names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Reset,
    TopUp,
}

impl Kind {
    /// The record's `operation` value.
    pub fn stored(self) -> &'static str {
        match self {
            Kind::Reset => "reset",
            Kind::TopUp => "top_up",
        }
    }

    /// The audit action (§13).
    pub fn audit_action(self) -> &'static str {
        match self {
            Kind::Reset => "bucket_reset",
            Kind::TopUp => "bucket_topped_up",
        }
    }
}

/// What an operation did: the shards written, and per named limit the whole tokens restored
/// or granted (the library's `BucketOperationResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub shards: i64,
    pub amounts: BTreeMap<String, i64>,
}

impl Outcome {
    /// The audit event's `details`: `amounts` and `shards`.
    pub fn audit_details(&self) -> HashMap<String, AttributeValue> {
        HashMap::from([("amounts".to_owned(), self.amounts_map()), ("shards".to_owned(), n(self.shards))])
    }

    fn amounts_map(&self) -> AttributeValue {
        AttributeValue::M(self.amounts.iter().map(|(k, v)| (k.clone(), n(v))).collect())
    }
}

/// The bucket `ttl` a write sets: a bucket on resource or system defaults gets the acquire's
/// horizon; an entity-level bucket carries none (ADR-136), so one left over is removed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BucketTtl {
    Set(i64),
    Remove,
}

/// An entity's incarnation from its `#META` (`schema.entity_incarnation`): `pinc`, else
/// `created_at`, else [`LEGACY_INCARNATION`] (also when there is no META).
pub fn incarnation(meta: Option<&Item>) -> String {
    meta.and_then(|m| {
        ["pinc", "created_at"].iter().find_map(|f| match m.get(*f) {
            Some(AttributeValue::S(v)) if !v.is_empty() => Some(v.clone()),
            _ => None,
        })
    })
    .unwrap_or_else(|| LEGACY_INCARNATION.to_owned())
}

/// The shard number of a bucket key `{ns}/BUCKET#{e}#{r}#{shard}`.
pub fn shard_of(pk: &str) -> Option<i64> {
    pk.rsplit_once('#').and_then(|(_, shard)| shard.parse().ok())
}

/// A shard's stored `shard_count`; absent or below 1 reads as 1.
pub fn stored_shard_count(item: &Item) -> i64 {
    match item.get("shard_count") {
        Some(AttributeValue::N(v)) => v.parse::<i64>().unwrap_or(1).max(1),
        _ => 1,
    }
}

/// A shard as the planner reads it, and the first stored feature it does not plan (a quota,
/// a window, a schedule), if any.
pub fn shard_read(shard_id: i64, item: &Item) -> Result<(ShardRead, Option<String>), String> {
    let image =
        zael_table::BucketImage::parse(item).map_err(|e| format!("bucket shard {shard_id} cannot be read: {e}"))?;
    let read = ShardRead {
        shard_id,
        shard_count: image.shard_count,
        shard_count_stored: item.contains_key("shard_count"),
        rf: image.rf,
        limits: image
            .limits
            .iter()
            .map(|l| StoredLimit {
                name: l.name.clone(),
                tk: l.tk,
                cp: l.limit.capacity.0,
                ra: l.limit.refill_amount.0,
                rp: l.limit.refill_period_ms,
            })
            .collect(),
    };
    Ok((read, image.unsupported))
}

/// One shard's `Update` (`Repository.build_bucket_operation`): `ADD` each delta, `SET rf`
/// (monotonic) and `vu = 0` (one materialising pass on the next acquire), the `ttl`;
/// conditioned on the `rf` and `shard_count` read. `tc`, `disabled` and the owner stamps are
/// never touched.
pub fn shard_update(
    table: &str,
    ns: &str,
    entity: &str,
    resource: &str,
    write: &ShardWrite,
    ttl: BucketTtl,
) -> Result<Update, String> {
    let mut names = HashMap::from([("#rf".to_owned(), "rf".to_owned()), ("#vu".to_owned(), "vu".to_owned())]);
    let mut values = HashMap::from([
        (":rf".to_owned(), n(write.written_rf)),
        (":erf".to_owned(), n(write.expected_rf)),
        (":vu".to_owned(), n(0)),
    ]);
    let mut sets = vec!["#rf = :rf".to_owned(), "#vu = :vu".to_owned()];
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for (i, (name, delta)) in write.deltas.iter().enumerate() {
        names.insert(format!("#ot{i}"), keys::battr(name, "tk"));
        values.insert(format!(":ot{i}"), n(delta));
        adds.push(format!("#ot{i} :ot{i}"));
    }
    names.insert("#ottl".into(), "ttl".into());
    match ttl {
        BucketTtl::Set(at) => {
            values.insert(":ottl".into(), n(at));
            sets.push("#ottl = :ottl".into());
        }
        BucketTtl::Remove => removes.push("#ottl".to_owned()),
    }
    names.insert("#osc".into(), "shard_count".into());
    let count_condition = if write.shard_count_stored {
        values.insert(":osc".into(), n(write.shard_count));
        "#osc = :osc"
    } else {
        "attribute_not_exists(#osc)"
    };
    let mut expression = format!("SET {}", sets.join(", "));
    if !adds.is_empty() {
        expression.push_str(&format!(" ADD {}", adds.join(", ")));
    }
    if !removes.is_empty() {
        expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
    }
    Update::builder()
        .table_name(table)
        .key("PK", s(keys::pk_bucket(ns, entity, resource, write.shard_id)))
        .key("SK", s(keys::SK_STATE))
        .update_expression(expression)
        .condition_expression(format!("#rf = :erf AND {count_condition}"))
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(|e| e.to_string())
}

/// Where an operation's record lives: shard 0's partition, SK `#OP#{id}`.
pub fn record_key(ns: &str, entity: &str, resource: &str, id: &str) -> (String, String) {
    (keys::pk_bucket(ns, entity, resource, 0), format!("#OP#{id}"))
}

/// What identifies one call's record.
pub struct RecordSpec<'a> {
    pub ns: &'a str,
    pub entity: &'a str,
    pub resource: &'a str,
    pub id: &'a str,
    pub kind: Kind,
    /// This call's nonce: only a record it wrote is its own.
    pub writer: &'a str,
    pub incarnation: &'a str,
}

/// The record's `Put` (`Repository.build_operation_record`), in the operation's
/// transaction: at most one transaction carrying the id commits. It may replace a record of
/// an earlier incarnation of the entity; [`LEGACY_INCARNATION`] matches every incarnation on
/// both sides (such a record is never replaced, such a call never replaces one).
pub fn record_put(table: &str, spec: &RecordSpec<'_>, outcome: &Outcome, now_ms: i64) -> Result<Put, String> {
    let (pk, sk) = record_key(spec.ns, spec.entity, spec.resource, spec.id);
    let item = Item::from([
        ("PK".to_owned(), s(pk)),
        ("SK".to_owned(), s(sk)),
        ("entity_id".to_owned(), s(spec.entity)),
        ("resource".to_owned(), s(spec.resource)),
        ("operation".to_owned(), s(spec.kind.stored())),
        ("writer".to_owned(), s(spec.writer)),
        ("ent".to_owned(), s(spec.incarnation)),
        ("shards".to_owned(), n(outcome.shards)),
        ("amounts".to_owned(), outcome.amounts_map()),
        ("ttl".to_owned(), n(now_ms.div_euclid(1000) + OPERATION_RECORD_TTL_SECONDS)),
        ("GSI4PK".to_owned(), s(spec.ns)),
        ("GSI4SK".to_owned(), s(format!("OP#{}#{}#{}", spec.entity, spec.resource, spec.id))),
    ]);
    Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(PK) OR (:ent <> :legacy AND #ent <> :ent AND #ent <> :legacy)")
        .expression_attribute_names("#ent", "ent")
        .expression_attribute_values(":ent", s(spec.incarnation))
        .expression_attribute_values(":legacy", s(LEGACY_INCARNATION))
        .build()
        .map_err(|e| e.to_string())
}

/// A record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    pub writer: Option<String>,
}

/// The recorded outcome of an operation (`Repository._operation_record`): `Ok(None)` when
/// there is no record, or it belongs to an earlier incarnation of the entity; `Err` when the
/// id was used for the other kind of operation.
pub fn recorded(item: Option<&Item>, kind: Kind, incarnation: &str) -> Result<Option<Recorded>, String> {
    let Some(item) = item else { return Ok(None) };
    let text = |a: &str| match item.get(a) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let written_for = text("ent");
    if incarnation != LEGACY_INCARNATION
        && written_for.as_deref() != Some(incarnation)
        && written_for.as_deref() != Some(LEGACY_INCARNATION)
    {
        return Ok(None);
    }
    let operation = text("operation").unwrap_or_default();
    if operation != kind.stored() {
        return Err(format!("Invalid idempotency_key: already used for a {operation} of this entity and resource"));
    }
    let number = |v: &AttributeValue| v.as_n().ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let amounts = match item.get("amounts") {
        Some(AttributeValue::M(m)) => m.iter().map(|(k, v)| (k.clone(), number(v))).collect(),
        _ => BTreeMap::new(),
    };
    let shards = item.get("shards").map(number).unwrap_or(0);
    Ok(Some(Recorded { outcome: Outcome { shards, amounts }, writer: text("writer") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operation: &str, ent: &str) -> Item {
        Item::from([
            ("operation".to_owned(), s(operation)),
            ("ent".to_owned(), s(ent)),
            ("writer".to_owned(), s("abc")),
            ("shards".to_owned(), n(2)),
            ("amounts".to_owned(), AttributeValue::M(HashMap::from([("rpm".to_owned(), n(3))]))),
        ])
    }

    #[test]
    fn incarnations() {
        assert_eq!(incarnation(None), "-");
        let meta = Item::from([("created_at".to_owned(), s("2026-01-01T00:00:00Z"))]);
        assert_eq!(incarnation(Some(&meta)), "2026-01-01T00:00:00Z");
        let meta = Item::from([("created_at".to_owned(), s("x")), ("pinc".to_owned(), s("p1"))]);
        assert_eq!(incarnation(Some(&meta)), "p1");
    }

    #[test]
    fn records_match_their_incarnation_and_kind() {
        let mine = record("reset", "p1");
        let got = recorded(Some(&mine), Kind::Reset, "p1").unwrap().unwrap();
        assert_eq!(got.outcome, Outcome { shards: 2, amounts: BTreeMap::from([("rpm".into(), 3)]) });
        assert_eq!(got.writer.as_deref(), Some("abc"));
        assert_eq!(recorded(Some(&mine), Kind::Reset, "p2").unwrap(), None, "an earlier incarnation's");
        assert!(recorded(Some(&mine), Kind::Reset, "-").unwrap().is_some(), "no META takes any record");
        assert!(recorded(Some(&record("reset", "-")), Kind::Reset, "p2").unwrap().is_some());
        assert_eq!(recorded(None, Kind::Reset, "p1").unwrap(), None);
        assert_eq!(
            recorded(Some(&mine), Kind::TopUp, "p1").unwrap_err(),
            "Invalid idempotency_key: already used for a reset of this entity and resource"
        );
    }

    #[test]
    fn shard_updates_add_deltas_under_the_rf_and_count_read() {
        let write = ShardWrite {
            shard_id: 1,
            shard_count: 2,
            shard_count_stored: true,
            expected_rf: 10,
            written_rf: 11,
            deltas: BTreeMap::from([("rpm".into(), 2000), ("wcu".into(), 5)]),
        };
        let u = shard_update("t", "ns", "key-1", "gpt-4", &write, BucketTtl::Remove).unwrap();
        assert_eq!(u.update_expression(), "SET #rf = :rf, #vu = :vu ADD #ot0 :ot0, #ot1 :ot1 REMOVE #ottl");
        assert_eq!(u.condition_expression(), Some("#rf = :erf AND #osc = :osc"));
        assert_eq!(u.key()["PK"], s("ns/BUCKET#key-1#gpt-4#1"));
        let names = u.expression_attribute_names().unwrap();
        assert_eq!((names["#ot0"].as_str(), names["#ot1"].as_str()), ("b_rpm_tk", "b_wcu_tk"));
        let values = u.expression_attribute_values().unwrap();
        assert_eq!((&values[":rf"], &values[":erf"], &values[":ot0"]), (&n(11), &n(10), &n(2000)));

        let unstored = ShardWrite { shard_count_stored: false, deltas: BTreeMap::new(), ..write };
        let u = shard_update("t", "ns", "key-1", "gpt-4", &unstored, BucketTtl::Set(99)).unwrap();
        assert_eq!(u.update_expression(), "SET #rf = :rf, #vu = :vu, #ottl = :ottl");
        assert_eq!(u.condition_expression(), Some("#rf = :erf AND attribute_not_exists(#osc)"));
    }

    #[test]
    fn shard_keys() {
        assert_eq!(shard_of("ns/BUCKET#key-1#openai/gpt-4#12"), Some(12));
        assert_eq!(stored_shard_count(&Item::from([("shard_count".to_owned(), n(0))])), 1);
        assert_eq!(stored_shard_count(&Item::new()), 1);
    }
}

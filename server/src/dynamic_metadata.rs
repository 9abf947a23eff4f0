//! The response's dynamic metadata (`--response-dynamic-metadata`, envoyproxy/ratelimit's
//! `RESPONSE_DYNAMIC_METADATA`), built as the reference's `ratelimitToMetadata` builds it:
//! `domain`; `descriptors`, each with `entries` (`key=value` strings), `limit` (the
//! descriptor's own limit, as `requests_per_unit:N unit:UNIT`) and `hitsAddend` when set;
//! the request's `hitsAddend` when not 0; and `metadata`, the `metadata:` of the rules of the
//! descriptors that passed (neither over the limit nor `unlimited`), merged in request order:
//! mappings merge key by key, and otherwise the first value of a key stays.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Value as Json, json};
use zael_core::decision::{Code, Decision, StatusKind};

/// The dynamic metadata of `decision`, the answer to `request`.
pub fn build(request: &RateLimitRequest, decision: &Decision) -> Map<String, Json> {
    let mut out = Map::new();
    out.insert("domain".into(), json!(request.domain));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut descriptor = Map::new();
            let entries: Vec<Json> = d.entries.iter().map(|e| json!(format!("{}={}", e.key, e.value))).collect();
            descriptor.insert("entries".into(), Json::Array(entries));
            if let Some(limit) = &d.limit {
                let unit = RateLimitUnit::try_from(limit.unit).unwrap_or(RateLimitUnit::Unknown).as_str_name();
                descriptor.insert(
                    "limit".into(),
                    json!(format!("requests_per_unit:{} unit:{unit}", limit.requests_per_unit)),
                );
            }
            if let Some(hits) = &d.hits_addend {
                descriptor.insert("hitsAddend".into(), json!(hits.value));
            }
            Json::Object(descriptor)
        })
        .collect();
    out.insert("descriptors".into(), Json::Array(descriptors));
    if request.hits_addend != 0 {
        out.insert("hitsAddend".into(), json!(request.hits_addend));
    }
    let mut passed = Map::new();
    for status in &decision.statuses {
        if status.code == Code::OverLimit || status.kind == StatusKind::Unlimited {
            continue;
        }
        if let Some(metadata) = &status.metadata {
            merge(&mut passed, metadata);
        }
    }
    if !passed.is_empty() {
        out.insert("metadata".into(), Json::Object(passed));
    }
    out
}

/// Adds `from` to `into`: a key in both whose values are mappings merges, any other key in
/// both keeps `into`'s value.
fn merge(into: &mut Map<String, Json>, from: &Map<String, Json>) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Json::Object(mine)), Json::Object(theirs)) => merge(mine, theirs),
            (Some(_), _) => {}
            (None, _) => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A JSON mapping as a `google.protobuf.Struct` (numbers become doubles).
pub fn to_struct(map: &Map<String, Json>) -> Struct {
    Struct { fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() }
}

fn to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(to_value).collect() }),
        Json::Object(map) => Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A `google.protobuf.Struct` as protojson writes it (integral numbers without a fraction).
pub fn struct_json(s: &Struct) -> Json {
    Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

fn value_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
    use envoy_types::pb::google::protobuf::UInt64Value;
    use std::sync::Arc;
    use zael_core::decision::Status;

    fn status(code: Code, kind: StatusKind, metadata: Option<Json>) -> Status {
        let metadata = metadata.map(|m| match m {
            Json::Object(map) => Arc::new(map),
            _ => unreachable!(),
        });
        Status {
            code,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset_secs: None,
            kind,
            near_limit: false,
            rule: None,
            values_label: None,
            quota_mode: false,
            metadata,
        }
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.iter().map(|(k, v)| Entry { key: (*k).into(), value: (*v).into() }).collect(),
            ..Default::default()
        }
    }

    /// The reference's `TestServiceWithDynamicMetadata...` shapes: every descriptor listed,
    /// the passed ones' metadata merged, the over-limit one's left out.
    #[test]
    fn metadata_lists_the_request_and_merges_the_passed_rules_metadata() {
        let mut with_limit = descriptor(&[("user", "bob")]);
        with_limit.limit = Some(RateLimitOverride { requests_per_unit: 7, unit: RateLimitUnit::Hour as i32 });
        with_limit.hits_addend = Some(UInt64Value { value: 3 });
        let request = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![
                descriptor(&[("a", "1"), ("b", "2")]),
                with_limit,
                descriptor(&[("c", "3")]),
                descriptor(&[("u", "x")]),
            ],
            hits_addend: 2,
        };
        let decision = Decision {
            overall: Code::OverLimit,
            statuses: vec![
                status(Code::Ok, StatusKind::Ok, Some(json!({"plan": {"tier": "free"}, "note": "first", "n": 1}))),
                status(
                    Code::Ok,
                    StatusKind::Shadow,
                    Some(json!({"plan": {"tier": "paid", "region": "eu"}, "note": "second"})),
                ),
                status(Code::OverLimit, StatusKind::OverLimit, Some(json!({"over": true}))),
                status(Code::Ok, StatusKind::Unlimited, Some(json!({"unlimited": true}))),
            ],
        };
        let built = Json::Object(build(&request, &decision));
        assert_eq!(
            built,
            json!({
                "domain": "d",
                "descriptors": [
                    {"entries": ["a=1", "b=2"]},
                    {"entries": ["user=bob"], "limit": "requests_per_unit:7 unit:HOUR", "hitsAddend": 3},
                    {"entries": ["c=3"]},
                    {"entries": ["u=x"]},
                ],
                "hitsAddend": 2,
                "metadata": {"plan": {"tier": "free", "region": "eu"}, "note": "first", "n": 1},
            })
        );
        let Json::Object(map) = &built else { unreachable!() };
        assert_eq!(struct_json(&to_struct(map)), built, "through google.protobuf.Struct and back");
    }

    #[test]
    fn no_passed_metadata_leaves_the_key_out() {
        let request =
            RateLimitRequest { domain: "d".into(), descriptors: vec![descriptor(&[("a", "1")])], hits_addend: 0 };
        let decision = Decision { overall: Code::Ok, statuses: vec![status(Code::Ok, StatusKind::Ok, None)] };
        assert_eq!(
            Json::Object(build(&request, &decision)),
            json!({"domain": "d", "descriptors": [{"entries": ["a=1"]}]})
        );
    }
}

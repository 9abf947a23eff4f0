//! The protobuf JSON mapping of the two RLS messages, for `POST /json`.
//!
//! Field names are accepted in lowerCamelCase and in their proto spelling; 32- and 64-bit
//! integers as numbers or strings; enums by name or number. Output omits zero values, as
//! protojson does, and writes durations as `"<seconds>s"`.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn get(self) -> Result<u64, String> {
        match self {
            Number::Int(n) => Ok(n),
            Number::Text(s) => s.parse().map_err(|_| format!("'{s}' is not an unsigned integer")),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnumValue {
    Number(i32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, rename = "hitsAddend", alias = "hits_addend")]
    hits_addend: Option<Number>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(default, rename = "hitsAddend", alias = "hits_addend")]
    hits_addend: Option<Number>,
    #[serde(default, rename = "isNegativeHits", alias = "is_negative_hits")]
    is_negative_hits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(default, rename = "requestsPerUnit", alias = "requests_per_unit")]
    requests_per_unit: Option<Number>,
    #[serde(default)]
    unit: Option<EnumValue>,
}

fn uint32(n: Option<Number>, field: &str) -> Result<u32, String> {
    match n {
        None => Ok(0),
        Some(n) => u32::try_from(n.get()?).map_err(|_| format!("{field} does not fit in 32 bits")),
    }
}

fn override_unit(unit: Option<EnumValue>) -> Result<i32, String> {
    match unit {
        None => Ok(0),
        Some(EnumValue::Number(n)) => Ok(n),
        Some(EnumValue::Name(name)) => {
            RateLimitUnit::from_str_name(&name).map(|u| u as i32).ok_or_else(|| format!("unknown unit '{name}'"))
        }
    }
}

/// Parses a protojson `RateLimitRequest`.
pub fn parse_request(body: &[u8]) -> Result<RateLimitRequest, String> {
    let json: JsonRequest = serde_json::from_slice(body).map_err(|e| format!("invalid JSON request: {e}"))?;
    let mut descriptors = Vec::with_capacity(json.descriptors.len());
    for d in json.descriptors {
        let limit = match d.limit {
            None => None,
            Some(o) => Some(RateLimitOverride {
                requests_per_unit: uint32(o.requests_per_unit, "requestsPerUnit")?,
                unit: override_unit(o.unit)?,
            }),
        };
        descriptors.push(RateLimitDescriptor {
            entries: d.entries.into_iter().map(|e| Entry { key: e.key, value: e.value }).collect(),
            limit,
            hits_addend: d.hits_addend.map(Number::get).transpose()?.map(|value| UInt64Value { value }),
            is_negative_hits: d.is_negative_hits,
        });
    }
    Ok(RateLimitRequest { domain: json.domain, descriptors, hits_addend: uint32(json.hits_addend, "hitsAddend")? })
}

fn code_name(code: i32) -> &'static str {
    Code::try_from(code).unwrap_or(Code::Unknown).as_str_name()
}

/// Writes a `RateLimitResponse` as protojson.
pub fn response_json(response: &RateLimitResponse) -> Value {
    let mut out = Map::new();
    out.insert("overallCode".into(), json!(code_name(response.overall_code)));
    let statuses: Vec<Value> = response
        .statuses
        .iter()
        .map(|s| {
            let mut status = Map::new();
            status.insert("code".into(), json!(code_name(s.code)));
            if let Some(l) = &s.current_limit {
                let mut limit = Map::new();
                if !l.name.is_empty() {
                    limit.insert("name".into(), json!(l.name));
                }
                if l.requests_per_unit != 0 {
                    limit.insert("requestsPerUnit".into(), json!(l.requests_per_unit));
                }
                limit.insert("unit".into(), json!(Unit::try_from(l.unit).unwrap_or(Unit::Unknown).as_str_name()));
                status.insert("currentLimit".into(), Value::Object(limit));
            }
            if s.limit_remaining != 0 {
                status.insert("limitRemaining".into(), json!(s.limit_remaining));
            }
            if let Some(d) = &s.duration_until_reset {
                status.insert("durationUntilReset".into(), json!(format!("{}s", d.seconds)));
            }
            Value::Object(status)
        })
        .collect();
    if !statuses.is_empty() {
        out.insert("statuses".into(), Value::Array(statuses));
    }
    if !response.response_headers_to_add.is_empty() {
        let headers: Vec<Value> =
            response.response_headers_to_add.iter().map(|h| json!({"key": h.key, "value": h.value})).collect();
        out.insert("responseHeadersToAdd".into(), Value::Array(headers));
    }
    if let Some(metadata) = &response.dynamic_metadata {
        out.insert("dynamicMetadata".into(), crate::dynamic_metadata::struct_json(metadata));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{DescriptorStatus, RateLimit};

    #[test]
    fn parses_camel_and_proto_names_numbers_and_strings() {
        let r = parse_request(
            br#"{"domain":"d","hits_addend":"2","descriptors":[{"entries":[{"key":"k","value":"v"}],"hitsAddend":0,"limit":{"requests_per_unit":5,"unit":"MINUTE"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.domain, "d");
        assert_eq!(r.hits_addend, 2);
        let d = &r.descriptors[0];
        assert_eq!(d.hits_addend, Some(UInt64Value { value: 0 }));
        assert_eq!(d.limit, Some(RateLimitOverride { requests_per_unit: 5, unit: RateLimitUnit::Minute as i32 }));
        assert_eq!(d.entries, vec![Entry { key: "k".into(), value: "v".into() }]);
    }

    #[test]
    fn rejects_bad_json_unknown_fields_and_units() {
        assert!(parse_request(b"{").is_err());
        assert!(parse_request(br#"{"domain":"d","bogus":1}"#).unwrap_err().contains("bogus"));
        assert!(
            parse_request(br#"{"descriptors":[{"limit":{"unit":"FORTNIGHT"}}]}"#).unwrap_err().contains("FORTNIGHT")
        );
        assert!(parse_request(br#"{"hitsAddend":"x"}"#).is_err());
    }

    #[test]
    fn writes_protojson_omitting_zero_values() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit {
                        name: "n".into(),
                        requests_per_unit: 3,
                        unit: Unit::Minute as i32,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration { seconds: 20, nanos: 0 }),
                    quota: None,
                },
                DescriptorStatus { code: Code::Ok as i32, ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!(
            response_json(&response),
            json!({
                "overallCode": "OVER_LIMIT",
                "statuses": [
                    {"code": "OVER_LIMIT", "currentLimit": {"name": "n", "requestsPerUnit": 3, "unit": "MINUTE"}, "durationUntilReset": "20s"},
                    {"code": "OK"}
                ]
            })
        );
    }
}

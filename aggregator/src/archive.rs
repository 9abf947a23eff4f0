//! Audit archival (`deployer-and-aggregator.md` §11.6): the audit items TTL removed, as one
//! gzip JSONL object per invocation under `audit/year=YYYY/month=MM/day=DD/`.

use crate::record::{EventName, StreamRecord, string};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Datelike, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Map, Number, Value};
use std::io::Write;

/// The fields of an archived event, in the order they are written.
const FIELDS: [&str; 6] = ["event_id", "entity_id", "action", "timestamp", "principal", "resource"];

/// An archived audit event: its JSON line and its timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub line: String,
    pub timestamp: String,
}

/// The audit event a record carries: `Ok(None)` for any other record, `Err` for an audit
/// REMOVE that cannot be archived (counted as an error, never silently dropped).
pub fn extract(record: &StreamRecord) -> Result<Option<AuditEvent>, String> {
    if record.event_name != EventName::Remove {
        return Ok(None);
    }
    let old = &record.old_image;
    if !string(old, "SK").is_some_and(|sk| sk.starts_with("#AUDIT#")) {
        return Ok(None);
    }
    let pk = string(old, "PK").unwrap_or_default();
    let Some((_, rest)) = pk.split_once('/') else {
        return Err(format!("Key has no namespace separator '/': {pk}"));
    };
    if !rest.starts_with("AUDIT#") {
        return Ok(None);
    }
    if string(old, "action").is_none() {
        tracing::warn!(pk, "Audit record missing action field");
        return Err(format!("Audit record missing action field: {pk}"));
    }
    let mut line = String::from("{");
    for field in FIELDS {
        if let Some(value) = old.get(field) {
            line.push_str(&format!("{}:{},", ascii_json(&Value::from(field)), ascii_json(&plain(value))));
        }
    }
    let details = match old.get("details") {
        Some(AttributeValue::M(_)) => plain(&old["details"]),
        _ => Value::Object(Map::new()),
    };
    line.push_str(&format!("\"details\":{}}}", ascii_json(&details)));
    Ok(Some(AuditEvent { line, timestamp: string(old, "timestamp").unwrap_or_default().to_owned() }))
}

/// A DynamoDB value as plain JSON: numbers as integers where they are, sets as lists.
fn plain(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => Value::from(s.as_str()),
        AttributeValue::N(n) => number(n),
        AttributeValue::Bool(b) => Value::from(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => {
            // Sorted keys: DynamoDB keeps no order in a map.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), plain(&m[k]))).collect())
        }
        AttributeValue::L(l) => Value::Array(l.iter().map(plain).collect()),
        AttributeValue::Ss(s) => Value::Array(s.iter().map(|v| Value::from(v.as_str())).collect()),
        AttributeValue::Ns(s) => Value::Array(s.iter().map(|v| number(v)).collect()),
        other => Value::from(format!("{other:?}")),
    }
}

fn number(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::from(i);
    }
    n.parse::<f64>().ok().and_then(Number::from_f64).map_or_else(|| Value::from(n), Value::Number)
}

/// Compact JSON with every non-ASCII character escaped as `\uXXXX` (as Python's `json.dumps`).
pub fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The gzip-compressed JSONL of `events`, one line each and a trailing newline.
pub fn jsonl_gzip(events: &[AuditEvent]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    for event in events {
        encoder.write_all(event.line.as_bytes())?;
        encoder.write_all(b"\n")?;
    }
    encoder.finish()
}

/// The object key for a batch whose earliest event timestamp (by string order) is `earliest`.
pub fn object_key(earliest: &str, request_id: &str, now: DateTime<Utc>) -> String {
    let (year, month, day) = match DateTime::parse_from_rfc3339(&earliest.replace('Z', "+00:00")) {
        Ok(at) => (at.year(), at.month(), at.day()),
        Err(_) => {
            tracing::warn!(timestamp = earliest, "Invalid timestamp, using current time");
            (now.year(), now.month(), now.day())
        }
    };
    let safe = earliest.replace(':', "-").replace('+', "");
    format!("audit/year={year}/month={month:02}/day={day:02}/audit-{request_id}-{safe}.jsonl.gz")
}

/// Puts one archive object.
pub async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), String> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .content_type("application/x-ndjson")
        .content_encoding("gzip")
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Image;
    use std::collections::HashMap;

    fn remove(old: Image) -> StreamRecord {
        StreamRecord {
            event_name: EventName::Remove,
            sequence_number: "9".into(),
            new_image: Image::new(),
            old_image: old,
        }
    }

    fn audit_image(pk: &str) -> Image {
        let s = |v: &str| AttributeValue::S(v.into());
        Image::from([
            ("PK".into(), s(pk)),
            ("SK".into(), s("#AUDIT#01J000")),
            ("event_id".into(), s("01J000")),
            ("entity_id".into(), s("user-1")),
            ("action".into(), s("limits_set")),
            ("timestamp".into(), s("2026-01-05T10:20:30Z")),
            ("principal".into(), AttributeValue::Null(true)),
            ("resource".into(), s("gpt-4")),
            (
                "details".into(),
                AttributeValue::M(HashMap::from([
                    ("name".into(), s("Zoë")),
                    ("n".into(), AttributeValue::N("5".into())),
                    ("f".into(), AttributeValue::N("1.5".into())),
                    ("l".into(), AttributeValue::L(vec![AttributeValue::Bool(true)])),
                ])),
            ),
            ("ttl".into(), AttributeValue::N("1".into())),
        ])
    }

    #[test]
    fn an_audit_remove_becomes_one_ordered_ascii_line() {
        let event = extract(&remove(audit_image("ns1/AUDIT#user-1"))).unwrap().unwrap();
        assert_eq!(
            event.line,
            r#"{"event_id":"01J000","entity_id":"user-1","action":"limits_set","timestamp":"2026-01-05T10:20:30Z","principal":null,"resource":"gpt-4","details":{"f":1.5,"l":[true],"n":5,"name":"Zo\u00eb"}}"#
        );
        assert_eq!(event.timestamp, "2026-01-05T10:20:30Z");
    }

    #[test]
    fn other_records_and_broken_audit_records() {
        let mut not_audit = audit_image("ns1/ENTITY#user-1");
        assert_eq!(extract(&remove(not_audit.clone())).unwrap(), None);
        not_audit.insert("SK".into(), AttributeValue::S("#META".into()));
        assert_eq!(extract(&remove(not_audit)).unwrap(), None);
        assert_eq!(
            extract(&remove(audit_image("AUDIT#user-1"))).unwrap_err(),
            "Key has no namespace separator '/': AUDIT#user-1"
        );
        let mut no_action = audit_image("ns1/AUDIT#user-1");
        no_action.remove("action");
        assert!(extract(&remove(no_action)).is_err());
    }

    #[test]
    fn keys_and_body() {
        let now = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        assert_eq!(
            object_key("2026-01-05T10:20:30Z", "req-1", now),
            "audit/year=2026/month=01/day=05/audit-req-1-2026-01-05T10-20-30Z.jsonl.gz"
        );
        assert_eq!(object_key("garbage", "req-1", now), "audit/year=1970/month=01/day=01/audit-req-1-garbage.jsonl.gz");
        let events = vec![AuditEvent { line: "{}".into(), timestamp: String::new() }; 2];
        let body = jsonl_gzip(&events).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
        assert_eq!(text, "{}\n{}\n");
    }
}

//! Log lines in the reference aggregator's shape, so Logs Insights queries keep working: one
//! JSON object per line, `timestamp`, `level` (`WARNING`, not `WARN`), `logger`, `message`,
//! then the event's fields; `", "` and `": "` separators, non-ASCII escaped.

use crate::archive::ascii_json;
use serde_json::Value;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct ReferenceJson;

#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), Value::from(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name().to_owned(), Value::from(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().to_owned(), Value::from(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.push((field.name().to_owned(), Value::from(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name().to_owned(), Value::from(value)));
    }
    /// A `?value` whose Debug form is JSON (a list of strings, say) is logged as that JSON, as
    /// the reference logs lists; anything else as its text.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let value = match serde_json::from_str::<Value>(&text) {
            Ok(json @ (Value::Array(_) | Value::Object(_))) => json,
            _ => Value::from(text),
        };
        self.0.push((field.name().to_owned(), value));
    }
}

/// The reference's level names.
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for ReferenceJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = match fields.0.iter().position(|(k, _)| k == "message") {
            Some(i) => fields.0.remove(i).1,
            None => Value::from(""),
        };
        let meta = event.metadata();
        let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
        let mut parts = vec![
            ("timestamp".to_owned(), Value::from(timestamp)),
            ("level".to_owned(), Value::from(level_name(meta.level()))),
            ("logger".to_owned(), Value::from(meta.target().replace("::", "."))),
            ("message".to_owned(), message),
        ];
        parts.extend(fields.0);
        let body: Vec<String> =
            parts.iter().map(|(k, v)| format!("{}: {}", ascii_json(&Value::from(k.as_str())), ascii_json(v))).collect();
        writeln!(writer, "{{{}}}", body.join(", "))
    }
}

/// Installs the JSON logger on stdout; `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .event_format(ReferenceJson)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

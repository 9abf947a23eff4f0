//! Logs (text or JSON on stderr) and OpenTelemetry traces.
//!
//! Decision spans are at TRACE level: the log layer never records them, and they cost
//! nothing unless `--otlp-endpoint` turns on the OpenTelemetry layer, which then exports
//! one span per decision and one per store call, continuing the caller's W3C trace context
//! from the gRPC metadata.

use crate::cli::LogFormat;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// Keeps the exporter running; flushes spans when dropped.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the OTLP exporter
/// uses it).
pub fn init(format: LogFormat, level: &str, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("invalid --log-level '{level}': {e}"))?;
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter);
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(TelemetryGuard(None));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("zael-server").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("zael-server"))
        .with_filter(Targets::new().with_target("zael_server", tracing::Level::TRACE));
    tracing_subscriber::registry().with(logs).with(spans).try_init()?;
    let _ = PROPAGATOR.set(TraceContextPropagator::new());
    Ok(TelemetryGuard(Some(provider)))
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str(),
            })
            .collect()
    }
}

/// Makes `span` a child of the caller's trace (`traceparent`), when tracing is on.
pub fn continue_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if let Some(propagator) = PROPAGATOR.get() {
        let parent = propagator.extract(&MetadataExtractor(metadata));
        let _ = span.set_parent(parent);
    }
}

//! OpenTelemetry: with `--otlp-endpoint`, each decision is exported as a span over OTLP/gRPC,
//! continuing the caller's W3C trace context, with a child span for the store call.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use zael_tests::*;

/// A collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

const CONFIG: &str =
    "domain: traced\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n";

#[tokio::test]
async fn decisions_are_exported_as_spans_continuing_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let server = Server::builder()
        .file("traced.yaml", CONFIG)
        .arg("--otlp-endpoint")
        .arg(format!("http://{collector_addr}"))
        // Export batches quickly instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(req("traced", vec![desc(&[("user", "alice")])]));
    let traceparent = format!("00-{trace_id}-{parent_span}-01");
    request.metadata_mut().insert("traceparent", MetadataValue::try_from(traceparent.as_str()).unwrap());
    let response = server.rls().should_rate_limit(request).await.expect("call").into_inner();
    assert_response(&response, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);

    let spans = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let collector = collector.clone();
        async move {
            let spans = collector.0.lock().unwrap().clone();
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            (names.contains(&"should_rate_limit") && names.contains(&"store.charge")).then_some(spans)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!("no spans exported in 10 s; got {:?}\n{}", collector.0.lock().unwrap(), server.log_tail())
    });

    let decision = spans.iter().find(|s| s.name == "should_rate_limit").unwrap();
    let store = spans.iter().find(|s| s.name == "store.charge").unwrap();
    assert_eq!(hex(&decision.trace_id), trace_id, "the decision continues the caller's trace");
    assert_eq!(hex(&decision.parent_span_id), parent_span, "the caller's span is the parent");
    assert_eq!(store.trace_id, decision.trace_id);
    assert_eq!(store.parent_span_id, decision.span_id, "the store call is a child of the decision");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The HTTP listener: `/healthcheck`, `/metrics`, `POST /json`, `/rlconfig`.

use crate::protojson;
use crate::rls::RateLimiter;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zael_core::memory::MemoryStore;

/// Whether the server should receive traffic.
#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
    /// `--force-start-without-initial-config`: healthy before any config has loaded.
    pub forced_start: bool,
}

pub struct HttpState {
    pub limiter: Arc<RateLimiter>,
    pub prometheus: PrometheusHandle,
    pub readiness: Arc<Readiness>,
    /// The embedded store, whose bound `/metrics` reports.
    pub memory: Option<Arc<MemoryStore>>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics))
        .route("/json", post(json))
        .route("/rlconfig", get(rlconfig))
        .with_state(state)
}

/// `--metrics-listen`: the Prometheus metrics alone, at `path` (the reference's
/// `USE_PROMETHEUS`, `PROMETHEUS_ADDR`, `PROMETHEUS_PATH`).
pub fn metrics_router(state: Arc<HttpState>, path: &str) -> Router {
    Router::new().route(path, get(metrics)).with_state(state)
}

async fn healthcheck(State(state): State<Arc<HttpState>>) -> Response {
    if state.readiness.draining.load(Ordering::Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "draining").into_response();
    }
    if state.limiter.config.current().is_none() && !state.readiness.forced_start {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no rate limit configuration loaded").into_response();
    }
    (StatusCode::OK, "OK").into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    if let Some(store) = &state.memory {
        crate::metrics::publish_memory(&store.pressure());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.prometheus.render()).into_response()
}

async fn rlconfig(State(state): State<Arc<HttpState>>) -> Response {
    match state.limiter.config.current() {
        Some(config) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], config.dump()).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no rate limit configuration loaded\n").into_response(),
    }
}

/// 200 when OK, 429 when over the limit, 400 for a bad request, 503 when the store or the
/// config is unavailable (envoyproxy/ratelimit answers 400 there; 503 tells a caller to retry).
async fn json(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let request = match protojson::parse_request(&body) {
        Ok(r) => r,
        Err(message) => return (StatusCode::BAD_REQUEST, message + "\n").into_response(),
    };
    match state.limiter.should_rate_limit(&request).await {
        Ok(response) => {
            let status = if response.overall_code == Code::OverLimit as i32 {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            (status, axum::Json(protojson::response_json(&response))).into_response()
        }
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            (StatusCode::BAD_REQUEST, format!("{}\n", e.message())).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", e.message())).into_response(),
    }
}

//! Black-box test harness for `zael-server`.
//!
//! The tests in `tests/tests/*.rs` start the real server binary (built by
//! `cargo build --workspace`), write its config files into a temporary directory and talk to it
//! over gRPC (tonic + envoy-types) and HTTP (hyper-util, HTTP/1). Every wait in here is bounded
//! in time and count.
//!
//! Modules:
//! - [`server`]: spawn `zael-server`, the handle with gRPC/HTTP helpers, kill on drop;
//! - [`expect`]: request builders and whole-response assertions;
//! - [`metrics`]: a small Prometheus text parser;
//! - [`moto`]: a moto DynamoDB server for `--store dynamodb` (stop/restart on one port);
//! - [`scenarios`]: scenarios shared by the embedded and the DynamoDB store;
//! - [`http`]: the HTTP/1 client helper;
//! - [`envoy`]: spawn a real Envoy in front of the server;
//! - [`tls`]: throw-away CAs and certificates (rcgen).

pub mod cli;
pub mod envoy;
pub mod expect;
pub mod http;
pub mod metrics;
pub mod moto;
pub mod scenarios;
pub mod server;
pub mod tls;
pub mod xds;

pub use expect::*;
pub use http::{HttpReply, http_request};
pub use metrics::Metrics;
pub use server::{Server, ServerBuilder};

pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor,
    rate_limit_descriptor::{Entry, RateLimitOverride},
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse,
    rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit},
    rate_limit_service_client::RateLimitServiceClient,
};
pub use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
pub use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt64Value};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A string unique within this test process run (and very likely across runs).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A free loopback TCP port: bind 127.0.0.1:0, read the port, drop the listener. A port is
/// handed out once per test process, so two parallel tests never get the same one (the
/// kernel may offer a just-released port again before its first taker has bound it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no unused loopback port after 1000 tries")
}

/// Seconds in a response-side unit (SECOND 1 ... YEAR 365 d, WEEK 7 d).
pub fn unit_secs(unit: Unit) -> i64 {
    match unit {
        Unit::Unknown => 0,
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        Unit::Week => 604_800,
        Unit::Month => 2_592_000,
        Unit::Year => 31_536_000,
    }
}

/// Poll `f` every `every` until it returns `Some`, for at most `limit`. Bounded in time and in
/// count (at most `limit / every + 1` attempts).
pub async fn poll_until<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    let max_tries = (limit.as_millis() / every.as_millis().max(1)) as u64 + 1;
    for _ in 0..max_tries {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// The last `max_lines` lines of a text file (for failure reports).
pub fn tail_file(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            let mut out = String::new();
            if start > 0 {
                out.push_str(&format!("... ({start} earlier lines)\n"));
            }
            for l in &lines[start..] {
                out.push_str(l);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

//! Minimal HTTP/1 client (hyper-util legacy client), one connection per request.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound for one HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl HttpReply {
    /// A header's value as text, with surrounding whitespace (and any stray `\r`) removed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    }

    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request to `addr`; `Err` carries a description of a transport failure.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpReply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    let mut b = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| format!("build request: {e}"))?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| format!("{method} {path}: body: {e}"))?.to_bytes();
        Ok(HttpReply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    };
    match tokio::time::timeout(HTTP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{method} {path}: timed out after {HTTP_TIMEOUT:?}")),
    }
}

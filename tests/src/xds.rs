//! An xDS management server for the tests (ADS, state of the world), serving
//! `ratelimit.config.ratelimit.v3.RateLimitConfig` snapshots as Envoy Gateway's controller
//! does: every stream gets the current snapshot at once and each new one as it is set, and
//! every request a client sends (subscription, ACK, NACK) is recorded with the stream's
//! headers for the tests to assert.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitConfig;
use prost::Message as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_stream::Stream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// A request a client sent, with the stream's headers.
#[derive(Clone, Debug)]
pub struct Received {
    pub request: DiscoveryRequest,
    pub headers: Vec<(String, String)>,
}

/// One snapshot: a version and its resources (raw, so a test can send a malformed one).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub resources: Vec<Any>,
}

impl Snapshot {
    pub fn of(version: &str, configs: &[RateLimitConfig]) -> Snapshot {
        let resources = configs.iter().map(|c| Any { type_url: TYPE_URL.into(), value: c.encode_to_vec() }).collect();
        Snapshot { version: version.into(), resources }
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// `(version, nonce)` of every response sent, in order.
    sent: Mutex<Vec<(String, String)>>,
}

struct Ads {
    state: Arc<State>,
    snapshots: watch::Receiver<Snapshot>,
    /// Set when the server stops: every stream ends.
    closing: watch::Receiver<bool>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let headers: Vec<(String, String)> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.to_string(), v.to_str().ok()?.to_owned())),
                _ => None,
            })
            .collect();
        let mut incoming = request.into_inner();
        let (state, mut snapshots, mut closing) = (self.state.clone(), self.snapshots.clone(), self.closing.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            // Wait for the subscription, then send the current snapshot and each new one.
            let mut subscribed = false;
            loop {
                tokio::select! {
                    _ = closing.changed() => return,
                    received = incoming.message() => match received {
                        Ok(Some(request)) => {
                            state.received.lock().unwrap().push(Received { request, headers: headers.clone() });
                            if !subscribed {
                                subscribed = true;
                                snapshots.mark_changed();
                            }
                        }
                        _ => return,
                    },
                    changed = snapshots.changed(), if subscribed => {
                        if changed.is_err() {
                            return;
                        }
                        let snapshot = snapshots.borrow_and_update().clone();
                        if snapshot.version.is_empty() {
                            continue; // nothing set yet
                        }
                        let nonce = {
                            let mut sent = state.sent.lock().unwrap();
                            let nonce = format!("nonce-{}", sent.len() + 1);
                            sent.push((snapshot.version.clone(), nonce.clone()));
                            nonce
                        };
                        let response = DiscoveryResponse {
                            version_info: snapshot.version,
                            resources: snapshot.resources,
                            type_url: TYPE_URL.into(),
                            nonce,
                            ..Default::default()
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

/// A running management server; stop it with [`ManagementServer::stop`] and start another
/// on the same address to test reconnection.
pub struct ManagementServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    snapshots: watch::Sender<Snapshot>,
    closing: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl ManagementServer {
    /// Serves on a free loopback port (on `addr` when given), with TLS when `tls` is given
    /// (the server's certificate and, for mTLS, the CA its clients' must be signed by).
    pub async fn start(addr: Option<SocketAddr>, tls: Option<(crate::tls::Pem, Option<String>)>) -> ManagementServer {
        let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], crate::free_port())));
        let state = Arc::new(State::default());
        let (snapshots, rx) = watch::channel(Snapshot::default());
        let (closing, closing_rx) = watch::channel(false);
        let service =
            AggregatedDiscoveryServiceServer::new(Ads { state: state.clone(), snapshots: rx, closing: closing_rx });
        let mut builder = Server::builder();
        if let Some((pem, client_ca)) = tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&pem.cert, &pem.key));
            if let Some(ca) = client_ca {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config).expect("tls config");
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = bind(addr).await;
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let router = builder.add_service(service);
        let done = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        ManagementServer { addr, state, snapshots, closing, stop: Some(stop), done: Some(done) }
    }

    /// Makes `snapshot` the current one, pushed to every stream.
    pub fn set(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(snapshot);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) for the client's answer to the last response of `version` sent:
    /// an ACK carries that version and the response's nonce, a NACK the last good version,
    /// the nonce and an `error_detail`.
    pub async fn answer_to(&self, version: &str, limit: Duration) -> Option<Received> {
        crate::poll_until(limit, Duration::from_millis(20), || async {
            let sent = self.state.sent.lock().unwrap().clone();
            let (_, nonce) = sent.iter().rev().find(|(v, _)| v == version)?;
            self.received().into_iter().find(|r| &r.request.response_nonce == nonce)
        })
        .await
    }

    /// How many responses were sent.
    pub fn responses_sent(&self) -> usize {
        self.state.sent.lock().unwrap().len()
    }

    /// Stops serving and closes every stream.
    pub async fn stop(mut self) {
        self.closing.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
    }
}

/// Binds `addr`, retrying while a previous server's socket is still closing.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}");
}

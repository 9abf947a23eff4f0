//! Config over xDS (`--config-type grpc-xds-sotw`, the reference's `CONFIG_TYPE=GRPC_XDS_SOTW`):
//! a state-of-the-world subscription to `ratelimit.config.ratelimit.v3.RateLimitConfig` over
//! the aggregated discovery service, as envoyproxy/ratelimit's `XdsGrpcSotwProvider` (the
//! client Envoy Gateway's controller serves).
//!
//! Each response is the whole config: every resource is one domain (or, with
//! `--merge-domain-config`, part of one), converted to the YAML model the files use and
//! compiled the same way. One that compiles replaces the config in force and is ACKed (its
//! version and nonce); one that does not is NACKed with the errors in `error_detail` and the
//! last good config stays. A failed connection or a closed stream is retried with jittered
//! exponential backoff (`--xds-backoff-initial` up to `--xds-backoff-max`), re-subscribing with
//! the last ACKed version.
//!
//! The `RateLimitConfig` messages are envoy-types' (`ratelimit.config.ratelimit.v3`, generated
//! from envoyproxy/ratelimit's `rls_conf.proto`), so no proto of ours is compiled for them.

use crate::config_watch::ConfigHolder;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{RateLimitConfig, RateLimitDescriptor, RateLimitUnit};
use prost::Message as _;
use serde_json::{Map, Value as Json, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The resource type of the subscription.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// Where and as whom to subscribe.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// `host:port` or a URL (`http://`, `https://`) of the management server.
    pub server: String,
    pub node_id: String,
    /// The node's metadata, from `k=v,k2=v2`.
    pub node_metadata: Vec<(String, String)>,
    /// Extra request headers on the stream, from `k=v,k2=v2` (or `k:v`).
    pub headers: Vec<(String, String)>,
    pub tls: Option<XdsTls>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// TLS to the management server.
#[derive(Clone, Debug, Default)]
pub struct XdsTls {
    /// CA certificates that sign the server's (else the system's roots are not used: give one).
    pub ca: Option<PathBuf>,
    /// A client certificate and key (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry (and SNI), if not the URL's host.
    pub server_name: Option<String>,
}

/// Parses the reference's `k=v,k2=v2` lists; `:` also separates a key from its value (the
/// headers' map syntax). Entries without a separator are skipped, as the reference does.
pub fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|entry| {
            let at = entry.find(['=', ':'])?;
            let (key, value) = (entry[..at].trim(), entry[at + 1..].trim());
            (!key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

impl XdsOptions {
    fn node(&self) -> Node {
        let fields = self
            .node_metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value { kind: Some(Kind::StringValue(v.clone())) }))
            .collect();
        Node { id: self.node_id.clone(), metadata: Some(Struct { fields }), ..Default::default() }
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let url = if self.server.contains("://") {
            self.server.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.server)
        } else {
            format!("http://{}", self.server)
        };
        let mut endpoint = Endpoint::from_shared(url)?.connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            // The process's rustls provider (ring, as the gRPC listener's); several crypto
            // crates are linked, so rustls cannot pick one by itself.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(config)?;
        }
        Ok(endpoint)
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// The YAML (JSON) text of one `RateLimitConfig`, in the model of a config file.
pub fn config_source(config: &RateLimitConfig) -> String {
    let root = json!({"domain": config.domain, "descriptors": descriptors(&config.descriptors)});
    serde_json::to_string_pretty(&root).unwrap_or_default()
}

fn descriptors(list: &[RateLimitDescriptor]) -> Json {
    Json::Array(
        list.iter()
            .map(|d| {
                let mut node = Map::new();
                node.insert("key".into(), json!(d.key));
                if !d.value.is_empty() {
                    node.insert("value".into(), json!(d.value));
                }
                if let Some(policy) = &d.rate_limit {
                    let mut limit = Map::new();
                    let unit = RateLimitUnit::try_from(policy.unit).unwrap_or(RateLimitUnit::Unknown);
                    if unit != RateLimitUnit::Unknown {
                        limit.insert("unit".into(), json!(unit.as_str_name().to_ascii_lowercase()));
                    } else if !policy.unlimited {
                        // Let the config's own check name it.
                        limit.insert("unit".into(), json!("UNKNOWN"));
                    }
                    limit.insert("requests_per_unit".into(), json!(policy.requests_per_unit));
                    if policy.unlimited {
                        limit.insert("unlimited".into(), json!(true));
                    }
                    if !policy.name.is_empty() {
                        limit.insert("name".into(), json!(policy.name));
                    }
                    if !policy.replaces.is_empty() {
                        let replaces: Vec<Json> = policy.replaces.iter().map(|r| json!({"name": r.name})).collect();
                        limit.insert("replaces".into(), Json::Array(replaces));
                    }
                    node.insert("rate_limit".into(), Json::Object(limit));
                }
                for (set, key) in [
                    (d.shadow_mode, "shadow_mode"),
                    (d.detailed_metric, "detailed_metric"),
                    (d.quota_mode, "quota_mode"),
                ] {
                    if set {
                        node.insert(key.into(), json!(true));
                    }
                }
                if let Some(metadata) = &d.metadata {
                    node.insert("metadata".into(), crate::dynamic_metadata::struct_json(metadata));
                }
                if !d.descriptors.is_empty() {
                    node.insert("descriptors".into(), descriptors(&d.descriptors));
                }
                Json::Object(node)
            })
            .collect(),
    )
}

/// The config files of a response: one per resource, named by the resource's `name` (else
/// its domain).
pub fn response_sources(resources: &[Any]) -> Result<Vec<(String, String)>, String> {
    resources
        .iter()
        .enumerate()
        .map(|(i, any)| {
            if any.type_url != TYPE_URL {
                return Err(format!("resource {i}: type {} is not {TYPE_URL}", any.type_url));
            }
            let config = RateLimitConfig::decode(any.value.as_slice())
                .map_err(|e| format!("resource {i}: not a RateLimitConfig: {e}"))?;
            let name = if config.name.is_empty() { config.domain.clone() } else { config.name.clone() };
            Ok((format!("xds:{name}"), config_source(&config)))
        })
        .collect()
}

/// Runs the subscription for as long as the process: applies each snapshot to `holder` and
/// calls `loaded` after each one applied.
pub async fn run(holder: Arc<ConfigHolder>, options: XdsOptions, loaded: impl Fn() + Send + 'static) {
    let mut backoff = options.backoff_initial;
    let mut acked = String::new();
    loop {
        match subscribe(&holder, &options, &mut acked, &loaded).await {
            Ok(Progress::Applied) => backoff = options.backoff_initial,
            Ok(Progress::None) => {}
            Err(e) => tracing::warn!(server = %options.server, error = %e, "xDS stream failed"),
        }
        let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tracing::info!(retry_in = ?jittered, "reconnecting to the xDS management server");
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(options.backoff_max);
    }
}

enum Progress {
    /// At least one response was received on the stream before it ended.
    Applied,
    None,
}

async fn subscribe(
    holder: &ConfigHolder,
    options: &XdsOptions,
    acked: &mut String,
    loaded: &(impl Fn() + Send),
) -> anyhow::Result<Progress> {
    let channel: Channel = options.endpoint()?.connect().await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let request = |version: &str, nonce: &str, error: Option<String>| DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(options.node()),
        type_url: TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: error.map(|message| RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    };
    tx.send(request(acked, "", None)).await?;
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    for (key, value) in &options.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())?;
        call.metadata_mut().insert(key, value.parse()?);
    }
    let mut stream = client.stream_aggregated_resources(call).await?.into_inner();
    tracing::info!(server = %options.server, node = %options.node_id, "subscribed to rate limit configs over xDS");
    let mut progress = Progress::None;
    while let Some(response) = stream.message().await? {
        progress = Progress::Applied;
        let DiscoveryResponse { version_info, nonce, resources, .. } = response;
        let applied = response_sources(&resources).and_then(|sources| {
            holder.apply_sources(&format!("xds version {version_info}"), sources).map_err(|e| e.to_string())
        });
        match applied {
            Ok(()) => {
                *acked = version_info.clone();
                tx.send(request(&version_info, &nonce, None)).await?;
                loaded();
            }
            Err(errors) => {
                tracing::warn!(version = %version_info, "xDS config rejected; keeping the last good config");
                tx.send(request(acked, &nonce, Some(errors))).await?;
            }
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::ratelimit::config::ratelimit::v3::{RateLimitPolicy, RateLimitReplace};

    #[test]
    fn pairs_parse_as_the_reference() {
        assert_eq!(
            parse_pairs("a=1,b:2, c = x=y ,broken,"),
            [("a".into(), "1".into()), ("b".into(), "2".into()), ("c".into(), "x=y".into())]
        );
        assert!(parse_pairs("").is_empty());
    }

    #[test]
    fn a_config_converts_to_the_file_model_and_compiles() {
        let config = RateLimitConfig {
            name: "gw".into(),
            domain: "gateway".into(),
            descriptors: vec![RateLimitDescriptor {
                key: "route".into(),
                value: "r1".into(),
                descriptors: vec![RateLimitDescriptor {
                    key: "user".into(),
                    rate_limit: Some(RateLimitPolicy {
                        unit: RateLimitUnit::Minute as i32,
                        requests_per_unit: 5,
                        name: "per-user".into(),
                        replaces: vec![RateLimitReplace { name: "old".into() }],
                        ..Default::default()
                    }),
                    quota_mode: true,
                    metadata: Some(Struct {
                        fields: [("team".to_owned(), Value { kind: Some(Kind::StringValue("a".into())) })].into(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let any = Any { type_url: TYPE_URL.into(), value: config.encode_to_vec() };
        let sources = response_sources(&[any]).unwrap();
        assert_eq!(sources[0].0, "xds:gw");
        let compiled = zael_core::config::compile(sources, Default::default()).unwrap();
        let rule = compiled.domain("gateway").unwrap().lookup([("route", "r1"), ("user", "u")]).expect("rule");
        assert_eq!(
            (rule.name.as_ref(), rule.quota_mode, rule.replaces.as_slice()),
            ("per-user", true, ["old".to_owned()].as_slice())
        );
        assert_eq!(rule.metadata.as_deref().map(|m| Json::Object(m.clone())), Some(json!({"team": "a"})));
        let wrong = Any { type_url: "type.googleapis.com/other".into(), value: Vec::new() };
        assert!(response_sources(&[wrong]).unwrap_err().contains("is not"));
    }
}

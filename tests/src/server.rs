//! Spawning the real `zael-server` binary and talking to it.

use crate::http::{HttpReply, http_request};
use crate::metrics::Metrics;
use crate::{RateLimitRequest, RateLimitResponse, RateLimitServiceClient, free_port, tail_file};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a server may take to report healthy.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(15);
/// How many times a server is started on fresh ports when its ports were taken meanwhile.
pub const PORT_ATTEMPTS: usize = 5;
/// Per-call gRPC deadline used by the harness channels.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Location of the `zael-server` binary:
/// 1. `$ZAEL_SERVER_BIN`;
/// 2. next to this test executable's profile directory (`<target>/<profile>/zael-server`,
///    which honours `CARGO_TARGET_DIR` automatically);
/// 3. `$CARGO_TARGET_DIR/debug/zael-server`;
/// 4. `<workspace>/target/debug/zael-server`.
pub fn server_bin() -> PathBuf {
    workspace_binary("zael-server", "ZAEL_SERVER_BIN")
}

/// A binary of the workspace, found as [`server_bin`] describes (`env` overrides).
pub fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return p;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<test-binary>
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join(name));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() { t } else { crate::workspace_root().join(t) };
        candidates.push(t.join("debug").join(name));
    }
    candidates.push(crate::workspace_root().join("target").join("debug").join(name));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!("{name} binary not found (looked at {candidates:?}); run `cargo build --workspace` first or set {env}");
}

/// A plaintext channel to `addr` with the harness deadlines. Lazy: connects on first use.
pub fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .connect_lazy()
}

/// Builder for a server instance: config files, arguments, environment.
pub struct ServerBuilder {
    files: Vec<(String, String)>,
    config_file: Option<String>,
    no_config_arg: bool,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    addrs_from_env: bool,
    wait_healthy: bool,
    /// `(endpoint, table)` for `--store dynamodb`.
    dynamodb: Option<(String, String)>,
    store_timeout: Option<String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        Self {
            files: Vec::new(),
            config_file: None,
            no_config_arg: false,
            args: Vec::new(),
            envs: Vec::new(),
            addrs_from_env: false,
            wait_healthy: true,
            dynamodb: None,
            store_timeout: None,
        }
    }

    /// Run on `--store dynamodb` against `table` at `endpoint` (a local emulator, see
    /// [`crate::moto`]), with dummy AWS credentials and region for the child and a store
    /// timeout of 2 s (debug builds against a serialised moto) unless
    /// [`ServerBuilder::store_timeout`] says otherwise.
    pub fn dynamodb(mut self, endpoint: &str, table: &str) -> Self {
        self.dynamodb = Some((endpoint.to_owned(), table.to_owned()));
        self
    }

    /// `--store-timeout` (with [`ServerBuilder::dynamodb`]), e.g. `300ms`.
    pub fn store_timeout(mut self, timeout: &str) -> Self {
        self.store_timeout = Some(timeout.to_owned());
        self
    }

    /// Add a file to the config directory.
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    /// Pass `--config <dir>/<name>` (a single file) instead of the directory.
    pub fn config_is_file(mut self, name: &str) -> Self {
        self.config_file = Some(name.to_string());
        self
    }

    /// Do not pass `--config` at all (set `ZAEL_CONFIG` instead, for example).
    pub fn no_config_arg(mut self) -> Self {
        self.no_config_arg = true;
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// Give the listen addresses (and the config path) through `ZAEL_LISTEN`,
    /// `ZAEL_HTTP_LISTEN` and `ZAEL_CONFIG` instead of flags.
    pub fn addrs_from_env(mut self) -> Self {
        self.addrs_from_env = true;
        self
    }

    /// Do not wait for `/healthcheck` to answer 200 (for servers expected to be unhealthy).
    pub fn no_wait(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// Spawn the server; unless `no_wait`, wait (at most 15 s) for `GET /healthcheck` = 200
    /// and for the gRPC port to accept connections.
    ///
    /// Ports are picked free just before the spawn, so another process (a parallel test) can
    /// take one in between: a server that exits at start-up because an address is in use is
    /// started again on fresh ports, at most [`PORT_ATTEMPTS`] times.
    pub async fn start(self) -> Server {
        for _ in 1..PORT_ATTEMPTS {
            let mut server = self.spawn_once();
            if !self.wait_healthy {
                return server;
            }
            match server.wait_healthy_or_exit(STARTUP_LIMIT).await {
                Ok(()) => return server,
                Err(_) if server.logs().contains("Address already in use") => continue,
                Err(st) => panic!("zael-server exited during start-up with {st}\n{}", server.log_tail()),
            }
        }
        let mut server = self.spawn_once();
        if self.wait_healthy {
            server.wait_healthy(STARTUP_LIMIT).await;
        }
        server
    }

    fn spawn_once(&self) -> Server {
        let root = tempfile::Builder::new().prefix("zael-test-").tempdir().expect("tempdir");
        let config_dir = root.path().join("config");
        std::fs::create_dir_all(&config_dir).expect("mkdir config");
        std::fs::create_dir_all(root.path().join("staging")).expect("mkdir staging");
        for (name, contents) in &self.files {
            std::fs::write(config_dir.join(name), contents).expect("write config file");
        }
        let config_path = match &self.config_file {
            Some(name) => config_dir.join(name),
            None => config_dir.clone(),
        };
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

        let mut cmd = base_command();
        if self.addrs_from_env {
            cmd.env("ZAEL_LISTEN", grpc_addr.to_string());
            cmd.env("ZAEL_HTTP_LISTEN", http_addr.to_string());
            if !self.no_config_arg {
                cmd.env("ZAEL_CONFIG", &config_path);
            }
        } else {
            if !self.no_config_arg {
                cmd.arg("--config").arg(&config_path);
            }
            cmd.arg("--listen").arg(grpc_addr.to_string());
            cmd.arg("--http-listen").arg(http_addr.to_string());
        }
        if let Some((endpoint, table)) = &self.dynamodb {
            cmd.args(["--store", "dynamodb", "--table", table, "--endpoint-url", endpoint]);
            cmd.args(["--region", crate::moto::REGION]);
            cmd.arg("--store-timeout").arg(self.store_timeout.as_deref().unwrap_or("2s"));
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_SESSION_TOKEN", "testing"),
                ("AWS_REGION", crate::moto::REGION),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ] {
                cmd.env(k, v);
            }
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let stdout_path = root.path().join("server.stdout.log");
        let stderr_path = root.path().join("server.stderr.log");
        cmd.stdout(std::fs::File::create(&stdout_path).expect("stdout file"));
        cmd.stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", server_bin().display()));

        Server {
            grpc_addr,
            http_addr,
            config_dir,
            config_path,
            stdout_path,
            stderr_path,
            child: Some(child),
            exit_status: None,
            channel: plain_channel(grpc_addr),
            root,
        }
    }
}

/// A `Command` for the server binary with a clean `ZAEL_*` environment, stdin closed, and
/// SIGKILL delivered to the server should this test process die.
pub fn base_command() -> Command {
    let mut cmd = Command::new(server_bin());
    // Our variables and envoyproxy/ratelimit's (which the server translates), so a test sees
    // only what it sets.
    const REFERENCE: [&str; 12] = [
        "HOST",
        "PORT",
        "GRPC_HOST",
        "GRPC_PORT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CONFIG_TYPE",
        "RUNTIME_ROOT",
        "RUNTIME_SUBDIRECTORY",
        "SHADOW_MODE",
        "BACKEND_TYPE",
        "USE_PROMETHEUS",
    ];
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("ZAEL_") || REFERENCE.contains(&name.as_ref()) {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd.stdin(Stdio::null());
    set_parent_death_signal(&mut cmd);
    cmd
}

/// Make the child receive SIGKILL when the spawning thread/process dies, so that no server
/// outlives an aborted test run.
pub fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Run `zael-server <args>` to completion (e.g. `--validate`), at most `limit`.
pub fn run_to_completion(args: &[OsString], limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = base_command();
    cmd.args(args);
    cmd.stdout(std::fs::File::create(&out_path).unwrap());
    cmd.stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("spawn zael-server");
    let deadline = Instant::now() + limit;
    let max_polls = limit.as_millis() / 20 + 2;
    let mut polls = 0u128;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        polls += 1;
        if Instant::now() >= deadline || polls > max_polls {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "zael-server {args:?} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                tail_file(&out_path, 50),
                tail_file(&err_path, 50)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// A running server. Killed (SIGKILL) on drop; its logs are printed when the test panics.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub config_dir: PathBuf,
    pub config_path: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    channel: Channel,
    root: TempDir,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// Start a server with one config file `config.yaml` and extra args.
    pub async fn with_config(yaml: &str) -> Server {
        ServerBuilder::new().file("config.yaml", yaml).start().await
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("server running")
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The combined server output (stdout then stderr).
    pub fn logs(&self) -> String {
        let out = std::fs::read(&self.stdout_path).unwrap_or_default();
        let err = std::fs::read(&self.stderr_path).unwrap_or_default();
        format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err))
    }

    /// Logs formatted for a failure message.
    pub fn log_tail(&self) -> String {
        format!(
            "---- zael-server stdout ({}) ----\n{}---- zael-server stderr ({}) ----\n{}",
            self.stdout_path.display(),
            tail_file(&self.stdout_path, 150),
            self.stderr_path.display(),
            tail_file(&self.stderr_path, 150)
        )
    }

    /// Wait until `GET /healthcheck` answers 200 and the gRPC port accepts TCP connections.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        if let Err(st) = self.wait_healthy_or_exit(limit).await {
            panic!("zael-server exited during start-up with {st}\n{}", self.log_tail());
        }
    }

    /// Like [`Server::wait_healthy`], but a server that exits gives its exit status.
    pub async fn wait_healthy_or_exit(&mut self, limit: Duration) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("no attempt");
        let mut http_ok = false;
        for _ in 0..10_000 {
            if let Some(st) = self.try_wait() {
                return Err(st);
            }
            if !http_ok {
                match self.http_get("/healthcheck").await {
                    Ok(r) if r.status == 200 => http_ok = true,
                    Ok(r) => last = format!("HTTP {} {:?}", r.status, r.body),
                    Err(e) => last = e,
                }
            }
            if http_ok {
                match tokio::net::TcpStream::connect(self.grpc_addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("gRPC port: {e}"),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("zael-server not healthy within {limit:?} (last: {last})\n{}", self.log_tail());
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.exit_status {
            return Some(st);
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => {
                self.exit_status = Some(st);
                Some(st)
            }
            _ => None,
        }
    }

    /// Wait (at most `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        for _ in 0..100_000 {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Send a signal to the server process.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        // SAFETY: plain syscall on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGKILL the server and reap it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut()
            && self.exit_status.is_none()
        {
            let _ = child.kill();
            if let Ok(st) = child.wait() {
                self.exit_status = Some(st);
            }
        }
    }

    /// A gRPC client for the rate limit service (shared lazy channel).
    pub fn rls(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel.clone())
    }

    /// The shared plaintext channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A new channel (its own HTTP/2 connection).
    pub fn new_channel(&self) -> Channel {
        plain_channel(self.grpc_addr)
    }

    /// `ShouldRateLimit`, returning the gRPC result.
    pub async fn call(&self, req: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        self.rls().should_rate_limit(req).await.map(|r| r.into_inner())
    }

    /// `ShouldRateLimit`, panicking (with the server's logs) on a gRPC error.
    pub async fn should(&self, req: RateLimitRequest) -> RateLimitResponse {
        match self.call(req.clone()).await {
            Ok(r) => r,
            Err(st) => panic!("ShouldRateLimit failed: {:?} {:?}\nrequest: {req:?}", st.code(), st.message()),
        }
    }

    /// `grpc.health.v1.Health/Check` for `service`.
    pub async fn grpc_health(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let mut c = HealthClient::new(self.channel.clone());
        let r = c.check(HealthCheckRequest { service: service.to_string() }).await?;
        Ok(ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }

    pub async fn http_get(&self, path: &str) -> Result<HttpReply, String> {
        http_request(self.http_addr, "GET", path, &[], None).await
    }

    pub async fn http_post_json(&self, path: &str, body: &str) -> Result<HttpReply, String> {
        http_request(
            self.http_addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body.as_bytes().to_vec()),
        )
        .await
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let r = self.http_get("/metrics").await.unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(r.status, 200, "GET /metrics status; body: {}", r.body);
        Metrics::parse(&r.body)
    }

    /// Replace (or create) a config file atomically: write in a staging directory on the same
    /// file system, then rename into the config directory.
    pub fn write_config(&self, name: &str, contents: &str) {
        let staging = self.root.path().join("staging").join(crate::unique("f"));
        std::fs::write(&staging, contents).expect("write staging file");
        std::fs::rename(&staging, self.config_dir.join(name)).expect("rename into config dir");
    }

    pub fn remove_config(&self, name: &str) {
        std::fs::remove_file(self.config_dir.join(name)).expect("remove config file");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "\n==== zael-server (grpc {}, http {}) exit: {:?} ====\n{}",
                self.grpc_addr,
                self.http_addr,
                self.exit_status,
                self.log_tail()
            );
        }
    }
}

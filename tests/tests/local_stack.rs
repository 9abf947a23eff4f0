//! The first ten minutes: `docker-compose.yml` is a valid compose file, its Envoy config is
//! valid for Envoy, and `examples/local-stack` (the same topology without containers: moto,
//! the init script, zael-server, zael-aggregator --poll, an upstream and Envoy) answers HTTP
//! requests through Envoy up to a 429, and its aggregator writes the usage snapshots.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use zael_tests::cli::run_cli;
use zael_tests::http::http_request;
use zael_tests::{free_port, workspace_root};

/// The compose client: `docker compose` (v2 plugin), else `docker-compose` (which
/// scripts/setup-test-env installs); the test fails when neither exists.
fn compose_config() -> std::process::Output {
    let root = workspace_root();
    let file = root.join("docker-compose.yml");
    let v2 = std::process::Command::new("docker").args(["compose", "version"]).output();
    let mut command = if v2.is_ok_and(|o| o.status.success()) {
        let mut c = std::process::Command::new("docker");
        c.arg("compose");
        c
    } else {
        std::process::Command::new("docker-compose")
    };
    command
        .arg("-f")
        .arg(&file)
        .arg("config")
        .current_dir(&root)
        .output()
        .expect("a compose client: docker compose, or docker-compose (scripts/setup-test-env installs it)")
}

#[test]
fn the_compose_file_and_its_envoy_config_are_valid() {
    let out = compose_config();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compose rejected docker-compose.yml:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["dynamodb:", "init:", "zael-server:", "aggregator:", "upstream:", "envoy:"] {
        assert!(text.contains(&format!("\n  {service}\n")), "no service {service} in:\n{text}");
    }
    assert!(text.contains("condition: service_completed_successfully"), "{text}");
    // The poller keeps its checkpoint on a volume, so a restart neither re-reads nor skips.
    assert!(text.contains("/var/lib/zael/aggregator-checkpoint.json") && text.contains("aggregator-state"), "{text}");

    let out = std::process::Command::new(zael_tests::envoy::envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(workspace_root().join("examples/compose/envoy.yaml"))
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "envoy rejected examples/compose/envoy.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `examples/local-stack` in its own process group, stopped with SIGTERM (its trap stops every
/// component), killed as a group if it is still there on drop.
struct LocalStack {
    child: tokio::process::Child,
    pgid: i32,
}

impl LocalStack {
    fn terminate(&self) {
        // SAFETY: signalling a process group this test created.
        unsafe { libc::kill(self.pgid, libc::SIGTERM) };
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // SAFETY: as above; the group is ours.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> zael_tests::http::HttpReply {
    http_request(addr, "GET", path, headers, None).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test]
async fn local_stack_limits_through_envoy_and_aggregates_usage() {
    let logs = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let names = ["DYNAMODB_PORT", "RLS_PORT", "HTTP_PORT", "ENVOY_PORT", "UPSTREAM_PORT", "ADMIN_PORT"];
    let bin_dir = zael_tests::cli::cli_bin().parent().unwrap().to_path_buf();
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(workspace_root().join("examples/local-stack"))
        .env("ZAEL_BIN_DIR", &bin_dir)
        .env("ENVOY_BIN", zael_tests::envoy::envoy_bin())
        .env("ZAEL_VENV", zael_tests::moto::python().parent().unwrap().parent().unwrap())
        .env("LOG_DIR", logs.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, port) in names.iter().zip(&ports) {
        command.env(name, port.to_string());
    }
    let mut child = command.spawn().expect("start examples/local-stack");
    let pgid = child.id().expect("a pid") as i32;
    let stdout = child.stdout.take().unwrap();
    let mut stack = LocalStack { child, pgid };
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("local stack ready") {
                return true;
            }
        }
        false
    })
    .await;
    let log_tail = || {
        ["init.log", "zael-server.log", "zael-aggregator.log", "envoy.log", "moto.log"]
            .iter()
            .map(|f| format!("== {f}\n{}", zael_tests::tail_file(&logs.path().join(f), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(ready, Ok(true), "local-stack did not become ready within 120 s\n{}", log_tail());
    let envoy: SocketAddr = format!("127.0.0.1:{}", ports[3]).parse().unwrap();

    // YAML rule (examples/config/demo.yaml): 5 per minute per x-user, then 429.
    for left in (0..5).rev() {
        let r = get(envoy, "/", &[("x-user", "alice")]).await;
        assert_eq!(
            (r.status, r.header("x-ratelimit-remaining")),
            (200, Some(left.to_string())),
            "{r:?}\n{}",
            log_tail()
        );
    }
    let r = get(envoy, "/", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 429, "{r:?}\n{}", log_tail());
    assert_eq!(r.header("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("5, 5;w=60;name=\"per-user\""));
    let r = get(envoy, "/", &[("x-user", "bob")]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", log_tail());

    // Entity rule (examples/entities/llm.yaml) on the limits init.sh stored: rpm 5 for key-1.
    for _ in 0..5 {
        let r = get(envoy, "/llm/", &[("x-api-key", "key-1"), ("x-model", "gpt-4"), ("x-tokens", "100")]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", log_tail());
    }
    let r = get(envoy, "/llm/", &[("x-api-key", "key-1"), ("x-model", "gpt-4"), ("x-tokens", "100")]).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-limit")),
        (429, Some("5, 5;w=60;name=\"rpm\"".to_owned())),
        "{r:?}\n{}",
        log_tail()
    );
    // No stored limits for this key at any level: admitted, nothing to report.
    let r = get(envoy, "/llm/", &[("x-api-key", "key-9"), ("x-model", "gpt-4")]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", log_tail());

    // The aggregator turns key-1's five admitted requests (100 tokens each) into snapshots.
    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    let args =
        ["usage", "list", "-e", "key-1", "-N", "tenant-alpha", "--name", "zael-demo", "--endpoint-url", &endpoint];
    // The hourly and the daily snapshot land in separate writes: wait for both. In the hour
    // from 00:00 UTC the two windows start at the same instant, and the table format's key
    // (`#USAGE#{resource}#{window_start}`, no window name) makes them one item counting both
    // (the library's aggregator does the same): then one row with twice the counts.
    // The table's rows as trimmed cells (column widths follow the widest value).
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.split('|').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect())
            .collect()
    };
    let has = |text: &str, window: &str, events: &str, counters: &str| {
        rows(text).iter().any(|r| {
            r.len() == 6 && r[1] == window && r[2] == "gpt-4" && r[3] == "key-1" && r[4] == events && r[5] == counters
        })
    };
    let both = |text: &str| has(text, "hourly", "5", "rpm=5, tpm=500") && has(text, "daily", "5", "rpm=5, tpm=500");
    let merged = |text: &str| {
        rows(text).iter().any(|r| r.len() == 6 && r[0].ends_with("T00:00:00Z"))
            && (has(text, "hourly", "10", "rpm=10, tpm=1,000") || has(text, "daily", "10", "rpm=10, tpm=1,000"))
    };
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        last = run_cli(&args, "").await.stdout;
        if both(&last) || merged(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(both(&last) || merged(&last), "{last}\n{}", log_tail());

    // SIGTERM stops every component.
    stack.terminate();
    let status = tokio::time::timeout(Duration::from_secs(30), stack.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 30 s of SIGTERM\n{}", log_tail()));
    let code = status.expect("the script's status").code();
    assert_eq!(code, Some(143), "the TERM trap's exit code\n{}", log_tail());
    for port in [ports[0], ports[1], ports[3], ports[4]] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "port {port} still open after the stack stopped\n{}", log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

//! A moto DynamoDB server for `zael-server --store dynamodb`, and tables on it.
//!
//! moto runs through `table/tests/py/moto_locked.py` (moto's server application with one
//! request at a time: moto's in-memory update_item checks a condition and applies it without
//! a lock across its threads, and DynamoDB is atomic per item) from the test virtualenv
//! (`$ZAEL_VENV` or `<repo>/.venv`, made by `scripts/setup-test-env`). It listens on a free
//! 127.0.0.1 port, can be stopped and restarted on the same port (moto keeps everything in
//! memory: a restarted moto has no tables), and is killed on drop; the launcher also exits
//! when the test process goes away. Every wait here is bounded.

use crate::{free_port, tail_file, unique};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region the harness and the servers it configures use.
pub const REGION: &str = "us-east-1";

/// How long moto may take to listen.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The test virtualenv's python.
pub fn python() -> PathBuf {
    let venv = match std::env::var_os("ZAEL_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => crate::workspace_root().join(".venv"),
    };
    let p = venv.join("bin").join("python");
    assert!(p.is_file(), "{} missing: run scripts/setup-test-env", p.display());
    p
}

/// A moto server on 127.0.0.1.
pub struct Moto {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto on a free port and waits (at most 60 s) until it listens.
    pub fn start() -> Moto {
        let dir = tempfile::Builder::new().prefix("zael-moto-").tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let mut moto = Moto { port: free_port(), child: None, log, _dir: dir };
        moto.spawn();
        moto
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills moto (SIGKILL) and waits for it; its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts moto again on the same port (empty: no tables).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let script = crate::workspace_root().join("table").join("tests").join("py").join("moto_locked.py");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("moto log");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("127.0.0.1")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn moto");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto exited with {status}:\n{}", tail_file(&self.log, 40));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("moto did not listen on {} within {START_LIMIT:?}:\n{}", self.port, tail_file(&self.log, 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// A fresh table with the version record and `namespaces` registered; the table name
    /// and the namespace ids, in order.
    pub async fn table(&self, namespaces: &[&str]) -> (String, Vec<String>) {
        let table = unique("zt");
        let client = zael_table::testing::local_client(&self.endpoint(), REGION).await;
        let ids = zael_table::testing::setup_table(&client, &table, namespaces).await.expect("set up the table");
        (table, ids)
    }

    /// Re-creates `table` after a restart, with the same namespace ids.
    pub async fn restore(&self, table: &str, namespaces: &[(&str, &str)]) {
        let client = zael_table::testing::local_client(&self.endpoint(), REGION).await;
        zael_table::testing::create_table(&client, table).await.expect("create table");
        zael_table::testing::put_version_record(
            &client,
            table,
            "0.10.0",
            "0.0.0",
            Some(zael_table::version::IMPLEMENTED_VERSION),
        )
        .await
        .expect("version record");
        for (name, id) in namespaces {
            zael_table::testing::register_namespace_as(&client, table, name, id).await.expect("register");
        }
    }

    /// A fresh table made by the Python library zae-limiter 0.17.0 with the entities, parents
    /// and stored limits of `ENTITY_SCENARIO` in namespace `tenant`
    /// (`table/tests/py/oracle.py entity-setup`), plus `extra` namespaces registered by zael's
    /// test support; the table name.
    pub async fn library_table(&self, extra: &[&str]) -> String {
        let table = unique("zl");
        self.run_script("table/tests/py/oracle.py", &["entity-setup", &table, "tenant"]).await;
        let client = zael_table::testing::local_client(&self.endpoint(), REGION).await;
        for name in extra {
            zael_table::testing::register_namespace(&client, &table, name).await.expect("register");
        }
        table
    }

    /// Runs the test venv's python on `script` (relative to the workspace) with `args`, against
    /// this moto with dummy credentials (at most 120 s); its stdout. A failure fails the test.
    pub async fn run_script(&self, script: &str, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(python())
                .arg(crate::workspace_root().join(script))
                .args(args)
                .env("ZAEL_TEST_ENDPOINT", self.endpoint())
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_SESSION_TOKEN", "testing")
                .env("AWS_REGION", REGION)
                .env("AWS_DEFAULT_REGION", REGION)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{script} within 120 s"))
        .expect("run python");
        assert!(out.status.success(), "{script} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the namespace's system config with `on_unavailable` (like the library's
    /// `set_system_defaults`).
    pub async fn set_on_unavailable(&self, table: &str, namespace_id: &str, value: &str) {
        let client = zael_table::testing::local_client(&self.endpoint(), REGION).await;
        zael_table::testing::put_system_config(&client, table, namespace_id, Some(value)).await.expect("system config");
    }

    /// The last lines of moto's output.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 40)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The namespaces a config file's domains use: each file's `namespace:`, else its `domain:`.
pub fn namespaces_of(files: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for yaml in files {
        let top = |key: &str| {
            yaml.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned()))
        };
        if let Some(ns) = top("namespace:").or_else(|| top("domain:"))
            && !out.contains(&ns)
        {
            out.push(ns);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespaces_of_config_files() {
        let a = "domain: a\ndescriptors: []\n";
        let b = "domain: b\nnamespace: team-b\ndescriptors:\n  - key: namespace\n";
        assert_eq!(super::namespaces_of(&[a, b, a]), ["a", "team-b"]);
    }
}

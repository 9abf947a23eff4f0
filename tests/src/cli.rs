//! Running the `zae-limiter` CLI (and the reference CLI, Python's) against moto, and the Python
//! library's view of a table (`tests/py/library_reads.py`). Every run is bounded.

use std::process::Stdio;
use std::time::Duration;

use crate::moto::{Moto, REGION};

/// How a CLI run ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `zae-limiter` binary (`$ZAE_LIMITER_BIN`, else next to the test's profile directory).
pub fn cli_bin() -> std::path::PathBuf {
    crate::server::workspace_binary("zae-limiter", "ZAE_LIMITER_BIN")
}

/// The reference CLI: `zae-limiter` of the Python zae-limiter 0.17.0 in the test venv.
pub fn reference_cli_bin() -> std::path::PathBuf {
    crate::moto::python().with_file_name("zae-limiter")
}

/// Runs `zae-limiter ARGS` with dummy credentials and `stdin` as its input (at most 60 s).
pub async fn run_cli(args: &[&str], stdin: &str) -> CliOutput {
    run(&cli_bin(), args, stdin).await
}

/// Runs the reference CLI like [`run_cli`]. Its stderr comes without the two lines aiohttp
/// adds when a session is left open at exit (`Unclosed client session`, `client_session: <…>`),
/// which are not the CLI's output.
pub async fn run_reference_cli(args: &[&str], stdin: &str) -> CliOutput {
    let mut out = run(&reference_cli_bin(), args, stdin).await;
    out.stderr = out
        .stderr
        .lines()
        .filter(|l| *l != "Unclosed client session" && !l.starts_with("client_session: <"))
        .map(|l| format!("{l}\n"))
        .collect();
    out
}

async fn run(program: &std::path::Path, args: &[&str], stdin: &str) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_SESSION_TOKEN", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish within 60 s", program.display()))
        .expect("CLI output");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What the Python library reads from `table` (JSON, see `tests/py/library_reads.py`).
pub async fn library_reads(
    moto: &Moto,
    table: &str,
    namespace: &str,
    entity: &str,
    resource: &str,
    parent: &str,
) -> serde_json::Value {
    let out = moto.run_script("tests/py/library_reads.py", &[table, namespace, entity, resource, parent]).await;
    serde_json::from_str(&out).expect("JSON")
}

/// Runs `tests/py/<script> ARGS` with the test venv against `moto`; its stdout.
pub async fn run_python(moto: &Moto, script: &str, args: &[&str]) -> String {
    moto.run_script(&format!("tests/py/{script}"), args).await
}

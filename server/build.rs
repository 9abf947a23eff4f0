//! Build script for `zael-server`.
//!
//! Produces `$OUT_DIR/rls_descriptor.bin`: an encoded
//! `google.protobuf.FileDescriptorSet` for
//! `envoy/service/ratelimit/v3/rls.proto` and all of its transitive imports.
//! `src/reflection.rs` embeds it to serve gRPC server reflection for
//! `envoy.service.ratelimit.v3.RateLimitService`.
//!
//! `envoy-types` ships generated Rust code but no descriptor set, so we compile
//! the `.proto` sources it ships (under `<crate>/proto/...`) ourselves with
//! `protox`, a pure-Rust protobuf compiler: no system `protoc`, no vendored
//! copies of Envoy's `.proto` files, no generated binaries in git. The
//! `envoy-types` source directory is located through `cargo metadata`, so the
//! protos always match the `envoy-types` version in `Cargo.lock`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Root proto file to compile, relative to the `data-plane-api` include dir.
const RLS_PROTO: &str = "envoy/service/ratelimit/v3/rls.proto";

/// Include directories (relative to `<envoy-types>/proto`) needed by `rls.proto`
/// and its imports (`envoy/...`, `udpa/...` + `xds/...`, `validate/...`).
/// `google/protobuf/*` well-known types are built into protox.
const INCLUDE_DIRS: &[&str] = &["data-plane-api", "xds", "protoc-gen-validate"];

fn main() {
    if let Err(e) = run() {
        // `{:?}` keeps protox' diagnostics (file, line, reason) readable.
        eprintln!("zael-server build.rs failed: {e:?}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");

    let (envoy_types_dir, workspace_root) = locate_envoy_types()?;
    // Rerun when dependencies are re-resolved (e.g. `envoy-types` bumped), not
    // on every build.
    println!("cargo:rerun-if-changed={}", workspace_root.join("Cargo.lock").display());

    let proto_root = envoy_types_dir.join("proto");
    let includes: Vec<PathBuf> = INCLUDE_DIRS.iter().map(|d| proto_root.join(d)).collect();
    if let Some(missing) = includes.iter().find(|p| !p.is_dir()) {
        return Err(format!("proto include dir {} not found", missing.display()).into());
    }

    let encoded = protox::Compiler::new(&includes)?
        .include_imports(true)
        // Source info carries the proto comments, which `grpcurl describe` shows.
        .include_source_info(true)
        .open_file(RLS_PROTO)?
        .encode_file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR")?).join("rls_descriptor.bin");
    std::fs::write(&out, encoded)?;
    Ok(())
}

/// Returns (`envoy-types` 0.7 source dir, workspace root) via `cargo metadata`.
fn locate_envoy_types() -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    // `--filter-platform` matters: without it cargo wants the manifests of
    // every platform-specific crate in the lock file (e.g. `wasi`), which may
    // not be downloaded, and `--offline` then fails.
    let target = env::var("TARGET")?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &target])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()?;
    if !output.status.success() {
        return Err(format!("`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }

    let meta: Value = serde_json::from_slice(&output.stdout)?;
    let workspace_root =
        meta["workspace_root"].as_str().map(PathBuf::from).ok_or("`cargo metadata`: missing workspace_root")?;
    let manifest_path = meta["packages"]
        .as_array()
        .ok_or("`cargo metadata`: missing packages")?
        .iter()
        .filter(|p| p["name"] == "envoy-types")
        .filter(|p| p["version"].as_str().is_some_and(|v| v.starts_with("0.7.")))
        .find_map(|p| p["manifest_path"].as_str())
        .ok_or("`cargo metadata`: package envoy-types 0.7.x not found")?;
    let dir = Path::new(manifest_path).parent().ok_or("envoy-types manifest_path has no parent")?.to_path_buf();
    Ok((dir, workspace_root))
}

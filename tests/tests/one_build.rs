//! One build for the README's two commands: a binary package built alone (`cargo run --release
//! --bin zael-server`, the first command) resolves every dependency with the same features as
//! the workspace build (`cargo build --release --workspace`, which the tests and
//! `examples/local-stack` use), so neither rebuilds what the other built. The workspace-hack
//! package (cargo-hakari) is what makes them equal; this fails when a dependency change needs
//! `cargo hakari generate`. `cargo tree --frozen` reads the lock file only (no network, no
//! build).

use std::collections::BTreeSet;
use std::process::Command;

/// `{package} [{features}]` for every dependency node `selection` builds (normal and build
/// dependencies, for the host).
fn resolved(selection: &[&str]) -> BTreeSet<String> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(zael_tests::workspace_root())
        .args(["tree", "--frozen", "-e", "normal,build", "--prefix", "none", "--no-dedupe", "-f", "{p} [{f}]"])
        .args(selection)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree {selection:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

#[test]
fn each_binary_alone_builds_its_dependencies_as_the_workspace_does() {
    let workspace = resolved(&["--workspace"]);
    for package in ["zael-server", "zael-deployer", "zael-aggregator"] {
        let alone = resolved(&["-p", package]);
        let differing: Vec<&String> = alone.difference(&workspace).collect();
        assert!(
            differing.is_empty(),
            "{package} alone resolves these dependencies with other features than the workspace \
             (run `cargo hakari generate`): {differing:#?}"
        );
    }
}

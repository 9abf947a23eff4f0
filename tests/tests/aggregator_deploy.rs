//! `zae-limiter lambda-export` and `deploy` with the aggregator, against moto: the package is
//! one executable `bootstrap`, `deploy` stages it for the template and pushes it. moto never
//! runs the function, so a small x86_64 system binary stands in for the (large, debug-built)
//! aggregator where the bytes do not matter.

use std::io::Read;
use zael_tests::cli::run_cli;
use zael_tests::moto::Moto;
use zael_tests::unique;

/// An x86_64 ELF needing glibc <= 2.34 on the Debian 12 hosts.
const STAND_IN: &str = "/usr/bin/env";

fn sha256_base64(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("openssl dgst -sha256 -binary | base64")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn lambda_export_zips_the_binary_as_an_executable_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("aggregator.zip");
    let zip_arg = zip.to_str().unwrap();
    let out = run_cli(&["lambda-export", "-o", zip_arg, "--binary", STAND_IN], "").await;
    assert_eq!(out.code, 0, "{out:?}");
    let size = std::fs::metadata(&zip).unwrap().len();
    assert_eq!(out.stdout, format!("✓ Exported Lambda package to: {zip_arg} ({:.1} KB)\n", size as f64 / 1024.0));
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
    assert_eq!(archive.len(), 1);
    let mut entry = archive.by_name("bootstrap").unwrap();
    assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));
    let mut content = Vec::new();
    entry.read_to_end(&mut content).unwrap();
    assert_eq!(content, std::fs::read(STAND_IN).unwrap());

    let again = run_cli(&["lambda-export", "-o", zip_arg, "--binary", STAND_IN], "").await;
    assert_eq!(
        (again.code, again.stderr.as_str()),
        (1, format!("File already exists: {zip_arg}\nUse --force to overwrite.\n").as_str())
    );
    let forced = run_cli(&["lambda-export", "-o", zip_arg, "--binary", STAND_IN, "-f"], "").await;
    assert_eq!(forced.code, 0, "{forced:?}");

    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let refused = run_cli(&["lambda-export", "-o", zip_arg, "-f", "--binary", script.to_str().unwrap()], "").await;
    assert_eq!(
        (refused.code, refused.stderr),
        (1, format!("✗ Failed to export Lambda package: {}: not an ELF executable\n", script.display()))
    );

    // By default the zael-aggregator next to zae-limiter (the workspace build) is packaged; a
    // debug build is refused as too large for Lambda.
    let info = run_cli(&["lambda-export", "--info"], "").await;
    let sibling = zael_tests::cli::cli_bin().with_file_name("zael-aggregator");
    if info.code == 0 {
        // The reference's 19-column labels (`Package path:      …`).
        assert!(info.stdout.contains(&format!("Binary:            {}\n", sibling.display())), "{}", info.stdout);
        assert!(info.stdout.contains("Handler:           bootstrap\nRuntime:           provided.al2023 (x86_64)\n"));
        assert!(info.stdout.contains("Needs glibc:       2."), "{}", info.stdout);
    } else {
        let refused = format!("✗ Failed to export Lambda package: {} is ", sibling.display());
        assert!(info.stderr.starts_with(&refused), "{info:?}");
        assert!(info.stderr.ends_with(" MB, over Lambda's 250 MB for unzipped code (a debug build?); build it with 'cargo build --release -p zael-aggregator'\n"), "{info:?}");
    }
}

#[tokio::test]
async fn deploy_stages_the_aggregator_for_the_template_and_pushes_it() {
    let moto = Moto::start();
    let name = unique("agg").replace('-', "").chars().take(20).collect::<String>();
    let name = format!("a{name}");
    let endpoint = moto.endpoint();
    let out =
        run_cli(&["deploy", "--name", &name, "--endpoint-url", &endpoint, "--aggregator-binary", STAND_IN], "").await;
    assert_eq!(out.code, 0, "{out:?}\n{}", moto.log_tail());
    assert!(out.stdout.contains("  Aggregator: enabled\n"), "{}", out.stdout);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("a.zip");
    assert_eq!(run_cli(&["lambda-export", "-o", zip.to_str().unwrap(), "--binary", STAND_IN], "").await.code, 0);
    let zip = std::fs::read(&zip).unwrap();
    let sha = sha256_base64(&zip);
    let expected = format!(
        "✓ Stack create complete\n  Stack ID: {stack_id}\nDeploying Lambda function code...\n✓ Lambda code deployed ({kb:.1} KB)\n  \
         Function ARN: arn:aws:lambda:us-east-1:123456789012:function:{name}-aggregator\n  Code SHA256: {short}...\n\
         ✓ Event Source Mapping ready\nInitializing version record...\n✓ Version record initialized (schema 0.10.0)\n\
         ✓ Default namespace registered\n",
        stack_id = out.stdout.lines().find_map(|l| l.strip_prefix("  Stack ID: ")).unwrap(),
        kb = zip.len() as f64 / 1024.0,
        short = &sha[..16],
    );
    assert!(out.stdout.ends_with(&expected), "{}", out.stdout);
    let state = moto.run_script("tests/py/lambda_state.py", &[&name]).await;
    let state: serde_json::Value = serde_json::from_str(state.trim()).unwrap();
    assert_eq!(
        state,
        serde_json::json!({"runtime": "provided.al2023", "handler": "bootstrap", "architectures": ["x86_64"],
            "code_sha256": sha, "code_size": zip.len(), "mappings": ["Enabled"]})
    );
}

#[tokio::test]
async fn upgrade_pushes_the_code_to_an_older_stack_and_stamps_the_version() {
    let moto = Moto::start();
    let name = format!("u{}", unique("").replace('-', "").chars().take(20).collect::<String>());
    let endpoint = moto.endpoint();
    let target = ["--name", name.as_str(), "--endpoint-url", endpoint.as_str()];
    let deploy = run_cli(&[&["deploy", "--aggregator-binary", STAND_IN][..], &target].concat(), "").await;
    assert_eq!(deploy.code, 0, "{deploy:?}");

    let upgrade = [&["upgrade", "--aggregator-binary", STAND_IN][..], &target].concat();
    let current = run_cli(&upgrade, "").await;
    assert_eq!(
        (current.code, current.stdout.as_str()),
        (
            0,
            "Checking infrastructure version...\nCurrent: Lambda 0.17.0\nTarget:  Lambda 0.17.0\n\
             [1/5] Applying stack template...\n      Stack template already current\n\
             Lambda code is already up to date.\n  Client:   0.17.0\n  Lambda:   0.17.0\n"
        )
    );

    let client = zael_table::testing::local_client(&endpoint, zael_tests::moto::REGION).await;
    zael_table::testing::put_version_record(&client, &name, "0.10.0", "0.0.0", Some("0.16.0")).await.unwrap();
    let older = run_cli(&upgrade, "").await;
    let zip_kb = {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        assert_eq!(run_cli(&["lambda-export", "-o", zip.to_str().unwrap(), "--binary", STAND_IN], "").await.code, 0);
        std::fs::metadata(&zip).unwrap().len() as f64 / 1024.0
    };
    assert_eq!(
        (older.code, older.stdout),
        (
            0,
            format!(
                "Checking infrastructure version...\nCurrent: Lambda 0.16.0\nTarget:  Lambda 0.17.0\n\
                 [1/5] Applying stack template...\n      Stack template already current\n\
                 [2/5] Deploying Lambda code...\n      Lambda code deployed ({zip_kb:.1} KB)\n\
                 [3/5] Deploying provisioner code...\n      Skipped (zael ships no provisioner code; the function keeps its code)\n\
                 [4/5] Updating version record...\n      Version record updated\n\
                 [5/5] Updating stack tags...\n      Tags already current\n✓ Upgrade complete!\n"
            )
        )
    );
    let version = run_cli(&[&["version"][..], &target].concat(), "").await;
    assert!(version.stdout.contains("Lambda Version:     0.17.0\n"), "{}", version.stdout);

    // A table without a stack: nothing to apply, no function to push; the record is stamped.
    let table_only = format!("{name}t");
    let bare = ["--name", table_only.as_str(), "--endpoint-url", endpoint.as_str()];
    assert_eq!(run_cli(&[&["deploy", "--table-only"][..], &bare].concat(), "").await.code, 0);
    zael_table::testing::put_version_record(&client, &table_only, "0.10.0", "0.0.0", Some("0.16.0")).await.unwrap();
    let out = run_cli(&[&["upgrade", "--aggregator-binary", STAND_IN][..], &bare].concat(), "").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "[1/5] Applying stack template...\n      No CloudFormation stack named {table_only}, skipped\n\
             [2/5] Deploying Lambda code...\n      No aggregator Lambda on this stack, skipped\n"
        )),
        "{}",
        out.stdout
    );

    let missing = run_cli(&["upgrade", "--name", "nosuchstack", "--endpoint-url", &endpoint], "").await;
    assert_eq!(
        (missing.code, missing.stdout.as_str(), missing.stderr.as_str()),
        (
            1,
            "Checking infrastructure version...\n",
            "Infrastructure not initialized.\nRun 'zae-limiter deploy' first.\n"
        )
    );
}

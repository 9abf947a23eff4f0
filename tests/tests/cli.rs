//! The `zae-limiter` CLI against moto: `deploy --table-only`, namespaces, entities and limits
//! with audit events; the Python library zae-limiter 0.17.0 reads what the CLI wrote, the CLI
//! reads what the library wrote, and zael-server enforces limits set with the CLI.

use std::sync::OnceLock;
use zael_tests::cli::{CliOutput, library_reads, run_cli, run_python};
use zael_tests::moto::Moto;
use zael_tests::*;

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

async fn cli(args: &[&str]) -> CliOutput {
    let endpoint = format!("--endpoint-url={}", moto().endpoint());
    let mut all = args.to_vec();
    all.push(&endpoint);
    run_cli(&all, "").await
}

/// `deploy --enable-provisioner`'s refusal, as the deployer states it.
fn zael_deployer_refusal() -> &'static str {
    "--enable-provisioner: this zae-limiter has no limits provisioner yet (the function would be a placeholder \
     that fails every call); deploy without it and set limits with 'entity set-limits', 'resource set-defaults' \
     and 'system set-defaults'"
}

fn ok(out: &CliOutput) -> &str {
    assert_eq!(out.code, 0, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    &out.stdout
}

/// The domain `llm` charging 1 `rpm` of the `api_key` entity on `gpt-4`.
const LLM: &str = "domain: llm\nnamespace: tenant\ndescriptors:\n  - key: api_key\n    entity: {resource: gpt-4, consume: {rpm: 1}}\n";

/// zael-server on `table` with [`LLM`], reading stored config on every acquire.
async fn llm_server(table: &str) -> Server {
    Server::builder()
        .file("llm.yaml", LLM)
        .dynamodb(&moto().endpoint(), table)
        .arg("--config-cache-ttl=0s")
        .start()
        .await
}

/// A command in namespace `tenant` of `table`.
async fn in_ns(table: &str, args: &[&str]) -> CliOutput {
    let mut all = args.to_vec();
    all.extend(["-n", table, "-N", "tenant"]);
    cli(&all).await
}

async fn deployed(prefix: &str) -> String {
    let table = unique(prefix);
    let out = cli(&["deploy", "--table-only", "-n", &table]).await;
    assert_eq!(
        ok(&out),
        format!(
            "Deploying table: {table} (table only, no CloudFormation)\n✓ Table created\n✓ TTL enabled on 'ttl'\n\
             ✓ Version record initialized (schema 0.10.0)\n✓ Default namespace registered\n"
        )
    );
    table
}

#[tokio::test]
async fn table_only_deploy_and_the_namespace_lifecycle() {
    let table = deployed("zc").await;
    let again = cli(&["deploy", "--table-only", "-n", &table]).await;
    assert!(ok(&again).contains("✓ Table already exists"), "idempotent");

    let out = cli(&["namespace", "register", "tenant-alpha", "-n", &table]).await;
    let line = ok(&out).trim().to_owned();
    let id = line.strip_prefix("Registered namespace 'tenant-alpha': ").expect(&line).to_owned();
    assert_eq!(id.len(), 11);
    let out = cli(&["namespace", "register", "tenant-alpha", "-n", &table]).await;
    assert_eq!(
        ok(&out).trim(),
        format!("Registered namespace 'tenant-alpha': {id}"),
        "registering again answers the id"
    );

    let out = cli(&["namespace", "show", "tenant-alpha", "-n", &table]).await;
    let shown: Vec<&str> = ok(&out).lines().collect();
    assert_eq!(&shown[..3], ["Namespace:    tenant-alpha", &format!("Namespace ID: {id}"), "Status:       active"]);
    let out = cli(&["namespace", "list", "-n", &table]).await;
    assert!(ok(&out).ends_with("\nTotal: 2 namespace(s)\n"), "{}", out.stdout);
    assert!(out.stdout.starts_with("+-"), "a table, no blank line before it");

    // Delete (prompt answered "n": aborted), delete, orphans, recover, delete, purge.
    let endpoint = format!("--endpoint-url={}", moto().endpoint());
    let no = run_cli(&["namespace", "delete", "tenant-alpha", "-n", &table, &endpoint], "n\n").await;
    assert_eq!((no.code, no.stderr.trim()), (1, "Aborted!"));
    let out = cli(&["namespace", "delete", "tenant-alpha", "-y", "-n", &table]).await;
    assert_eq!(ok(&out).trim(), "Namespace 'tenant-alpha' deleted (data orphaned, recoverable).");
    let out = cli(&["namespace", "orphans", "-n", &table]).await;
    assert!(ok(&out).contains(&format!("| {id:<12} | tenant-alpha |")), "{}", out.stdout);
    let out = cli(&["namespace", "show", "tenant-alpha", "-n", &table]).await;
    assert_eq!(
        (out.code, out.stderr.trim()),
        (
            1,
            "Error: Namespace 'tenant-alpha' not found. Register it with 'zae-limiter namespace register tenant-alpha'."
        )
    );
    let out = cli(&["namespace", "recover", &id, "-n", &table]).await;
    assert_eq!(ok(&out).trim(), format!("Recovered namespace 'tenant-alpha' (ID: {id})."));
    let out = cli(&["namespace", "purge", &id, "-y", "-n", &table]).await;
    assert_eq!((out.code, out.stderr.trim().starts_with("Error: Cannot purge namespace 'tenant-alpha'")), (1, true));
    ok(&cli(&["namespace", "delete", "tenant-alpha", "-y", "-n", &table]).await);
    let out = cli(&["namespace", "purge", &id, "-y", "-n", &table]).await;
    assert_eq!(ok(&out).trim(), format!("Purged namespace '{id}'. All data permanently deleted."));
    let out = cli(&["namespace", "orphans", "-n", &table]).await;
    assert_eq!(ok(&out).trim(), "No orphaned namespaces.");
}

#[tokio::test]
async fn limits_set_with_the_cli_are_read_by_the_library_and_enforced_by_zael_server() {
    let table = deployed("zd").await;
    let ns = ["-n", table.as_str(), "-N", "tenant"];
    ok(&in_ns(&table, &["entity", "create", "team-a"]).await);
    let out =
        in_ns(&table, &["entity", "create", "key-1", "--parent", "team-a", "--cascade", "--display-name", "Key One"])
            .await;
    assert_eq!(ok(&out), "Created entity 'key-1'\n  Name:    Key One\n  Parent:  team-a\n  Cascade: True\n");
    let out = in_ns(&table, &["entity", "create", "key-1"]).await;
    assert_eq!((out.code, out.stderr.trim()), (1, "Error: Entity already exists: key-1"));
    let out = in_ns(
        &table,
        &["entity", "set-limits", "key-1", "-r", "gpt-4", "-l", "rpm:3/day", "-l", "tpm:100/day:150", "--soft", "tpm"],
    )
    .await;
    assert_eq!(
        ok(&out),
        "Set 2 limit(s) for entity 'key-1' on resource 'gpt-4':\n  rpm: 3/day\n  tpm: 100/day (burst: 150) (soft)\n"
    );
    ok(&in_ns(&table, &["entity", "set-limits", "team-a", "-r", "gpt-4", "-l", "rpm:2/day"]).await);
    ok(&in_ns(&table, &["resource", "set-defaults", "gpt-4", "-l", "rpm:50"]).await);
    let out = in_ns(&table, &["system", "set-defaults", "-l", "rpm:10/sec", "--on-unavailable", "allow"]).await;
    assert_eq!(ok(&out), "Set 1 system-wide default(s):\n  rpm: 10/sec\n  on_unavailable: allow\n");
    let out = in_ns(&table, &["entity", "get-limits", "key-1", "-r", "gpt-4"]).await;
    assert_eq!(
        ok(&out),
        "Limits for entity 'key-1' on resource 'gpt-4':\n  rpm: 3/day\n  tpm: 100/day (burst: 150) (soft)\n"
    );
    let out = in_ns(&table, &["entity", "show", "key-1"]).await;
    assert!(ok(&out).starts_with("Entity: key-1\n  Name:       Key One\n  Parent:     team-a\n  Cascade:    True\n"));

    // The library reads everything the CLI wrote.
    let seen = library_reads(moto(), &table, "tenant", "key-1", "gpt-4", "team-a").await;
    assert_eq!(
        seen["entity"],
        serde_json::json!({"id": "key-1", "name": "Key One", "parent_id": "team-a", "cascade": true})
    );
    assert_eq!(
        seen["limits"],
        serde_json::json!([
            {"name": "rpm", "capacity": 3, "refill_amount": 3, "refill_period_seconds": 86400},
            {"name": "tpm", "capacity": 150, "refill_amount": 100, "refill_period_seconds": 86400, "soft": true},
        ])
    );
    assert_eq!(seen["parent_limits"][0]["capacity"], 2);
    assert_eq!(seen["resource_defaults"][0]["refill_amount"], 50);
    assert_eq!(seen["system_defaults"][0]["refill_period_seconds"], 1);
    assert_eq!(seen["on_unavailable"], "allow");
    assert_eq!(seen["audit"], serde_json::json!(["limits_set", "entity_created"]));
    assert_eq!(seen["namespaces"], serde_json::json!(["default", "tenant"]));

    // zael-server enforces them: the parent's 2 per day decide the third request.
    let s = llm_server(&table).await;
    let request = || req("llm", vec![desc(&[("api_key", "key-1")])]);
    for left in [1, 0] {
        let r = s.should(request()).await;
        assert_response(&r, Code::Ok, &[expect::ok(2, Unit::Day, "rpm", left).reset(1..=86_400)]);
    }
    let r = s.should(request()).await;
    assert_response(&r, Code::OverLimit, &[over(2, Unit::Day, "rpm").reset(1..=86_400)]);

    // Audit events, newest first.
    let out = in_ns(&table, &["audit", "list", "-e", "key-1"]).await;
    let text = ok(&out);
    assert!(text.starts_with("\nAudit Events for: key-1\n\n+-"), "{text}");
    let actions: Vec<&str> =
        text.lines().filter(|l| l.starts_with("| 2")).map(|l| l.split(" | ").nth(1).unwrap().trim()).collect();
    assert_eq!(actions, ["limits_set", "entity_created"]);
    assert!(text.ends_with("\nTotal: 2 events\n"));

    // Deleting asks first; "no" cancels (exit 0) and keeps the limits.
    let endpoint = format!("--endpoint-url={}", moto().endpoint());
    let mut args = vec!["entity", "delete-limits", "key-1", "-r", "gpt-4", &endpoint];
    args.extend(ns);
    let out = run_cli(&args, "n\n").await;
    assert_eq!((out.code, out.stdout.trim_end().ends_with("Cancelled")), (0, true), "{out:?}");
    let out = in_ns(&table, &["entity", "delete-limits", "key-1", "-r", "gpt-4", "-y"]).await;
    assert_eq!(ok(&out).trim(), "Deleted limits for entity 'key-1' on resource 'gpt-4'");
    let out = in_ns(&table, &["entity", "get-limits", "key-1", "-r", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "No limits configured for entity 'key-1' on resource 'gpt-4'");
}

#[tokio::test]
async fn the_cli_reads_what_the_library_wrote() {
    let table = moto().library_table(&[]).await;
    let ns = ["-n", table.as_str(), "-N", "tenant"];
    let mut args = vec!["entity", "get-limits", "key-6", "-r", "gpt-4"];
    args.extend(ns);
    let out = cli(&args).await;
    assert_eq!(ok(&out), "Limits for entity 'key-6' on resource 'gpt-4':\n  rpm: 2/day (soft)\n  tpm: 10/day\n");
    let mut args = vec!["entity", "get-limits", "key-7", "-r", "gpt-4"];
    args.extend(ns);
    assert_eq!(
        ok(&cli(&args).await),
        "Limits for entity 'key-7' on resource 'gpt-4':\n  rpm: 1/day\nStatus: BYPASSED\n"
    );
    let mut args = vec!["system", "get-defaults"];
    args.extend(ns);
    assert_eq!(ok(&cli(&args).await), "System-wide defaults:\n  Limits:\n    rpm: 3/day\n    tpm: 50/day\n");
    let mut args = vec!["entity", "show", "key-4"];
    args.extend(ns);
    assert!(ok(&cli(&args).await).contains("  Parent:     proj-2\n  Cascade:    True\n"));
}

#[tokio::test]
async fn bad_input_is_an_error_with_exit_1_and_usage_errors_exit_2() {
    let out = cli(&["namespace", "list", "-n", "bad_name"]).await;
    assert_eq!(
        (out.code, out.stderr.trim()),
        (1, "Error: Contains underscore. Use hyphens instead (e.g., 'rate-limits' not 'rate_limits')")
    );
    let out = cli(&["namespace", "list", "-n", "never-deployed"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("Error: Stack 'never-deployed' not found in us-east-1."), "{}", out.stderr);
    let out = cli(&["entity", "set-limits", "k", "-l", "rpm:abc"]).await;
    assert_eq!(
        (out.code, out.stderr.trim()),
        (1, "Error: Invalid limit values in 'rpm:abc': invalid literal for int() with base 10: 'abc'")
    );
    let out = cli(&["deploy", "--no-iam", "--create-iam-roles"]).await;
    assert_eq!((out.code, out.stderr.trim()), (1, "Error: --create-iam-roles cannot be used with --no-iam"));
    // No provisioner code yet: refused before any AWS call, so nothing is deployed.
    let out = cli(&["deploy", "-n", "wants-provisioner", "--enable-provisioner"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (1, "", &*format!("Error: {}\n", zael_deployer_refusal()))
    );
    let out = cli(&["status", "-n", "wants-provisioner"]).await;
    assert!(out.stdout.contains("  Stack:         Not found\n"), "{out:?}");
    let out = cli(&["deploy", "--tag", "novalue"]).await;
    assert_eq!((out.code, out.stderr.trim()), (1, "Error: Invalid tag format 'novalue'. Use KEY=VALUE."));
    let out = cli(&["deploy", "--lambda-timeout", "901"]).await;
    assert_eq!(out.code, 2, "a range is a usage error: {out:?}");
    let out = cli(&["entity", "set-limits", "k"]).await;
    assert_eq!(out.code, 2, "a missing required option: {out:?}");
    let table = deployed("ze").await;
    let out = cli(&["entity", "get-limits", "k", "-n", &table, "-N", "nope"]).await;
    assert_eq!(
        (out.code, out.stderr.trim()),
        (1, "Error: Namespace 'nope' not found. Register it with 'zae-limiter namespace register nope'.")
    );
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"));
    let version = run_cli(&["--version"], "").await;
    assert_eq!((version.code, version.stdout.as_str()), (0, "zae-limiter, version 0.17.0\n"));
}

#[tokio::test]
async fn deploy_creates_the_stack_through_cloudformation_and_delete_removes_it() {
    let stack = unique("zs");
    let out = cli(&["deploy", "-n", &stack, "--no-aggregator", "--create-iam-roles", "--tag", "team=payments"]).await;
    let text = ok(&out);
    assert!(text.starts_with(&format!("Deploying stack: {stack}\n  Table name: {stack}\n")), "{text}");
    assert!(
        text.contains(
            "  Aggregator: disabled\n  Provisioner: disabled (not deployed: no provisioner code in this client)\n"
        ),
        "{text}"
    );
    assert!(text.contains("  Tags: 1 user-defined\n    team=payments\n"), "{text}");
    assert!(text.contains("CREATE_COMPLETE AWS::CloudFormation::Stack"), "stack events as they happen: {text}");
    assert!(text.ends_with("✓ Version record initialized (schema 0.10.0)\n✓ Default namespace registered\n"), "{text}");

    let config = zael_table::testing::local_sdk_config(&moto().endpoint(), zael_tests::moto::REGION).await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let resources: std::collections::BTreeSet<String> = cfn
        .list_stack_resources()
        .stack_name(&stack)
        .send()
        .await
        .expect("stack resources")
        .stack_resource_summaries()
        .iter()
        .filter_map(|r| r.logical_resource_id().map(str::to_owned))
        .collect();
    for id in ["RateLimitsTable", "AcquireOnlyPolicy", "NamespaceAcquirePolicy", "AppRole", "AdminRole", "ReadOnlyRole"]
    {
        assert!(resources.contains(id), "{id} in {resources:?}");
    }
    for absent in ["AggregatorFunction", "ProvisionerFunction", "ProvisionerRole"] {
        assert!(!resources.contains(absent), "{absent} not in {resources:?}");
    }
    let tags = cfn.describe_stacks().stack_name(&stack).send().await.unwrap().stacks()[0].tags().to_vec();
    let tag = |k: &str| tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
    assert_eq!((tag("team"), tag("ManagedBy")), (Some("payments".into()), Some("zae-limiter".into())));

    let db = aws_sdk_dynamodb::Client::new(&config);
    let table = db.describe_table().table_name(&stack).send().await.expect("the stack's table").table.unwrap();
    assert_eq!(table.global_secondary_indexes().len(), 4);
    assert_eq!(table.local_secondary_indexes().len(), 5);

    // The stack is usable: namespaces, and the library connects to it.
    ok(&cli(&["namespace", "register", "tenant", "-n", &stack]).await);
    ok(&in_ns(&stack, &["entity", "create", "key-1"]).await);
    let seen = library_reads(moto(), &stack, "tenant", "key-1", "gpt-4", "key-1").await;
    assert_eq!(seen["namespaces"], serde_json::json!(["default", "tenant"]));

    // An existing stack: changed parameters go through a change set; renaming the managed
    // policies (a replacement) is refused.
    let out =
        cli(&["deploy", "-n", &stack, "--no-aggregator", "--create-iam-roles", "--log-retention-days", "90"]).await;
    let text = ok(&out);
    assert!(text.contains("\nChanges:\n") && text.contains("✓ Stack update complete\n"), "{text}");
    let parameter = |key: &'static str| {
        let cfn = cfn.clone();
        let stack = stack.clone();
        async move {
            let out = cfn.describe_stacks().stack_name(&stack).send().await.unwrap();
            out.stacks()[0]
                .parameters()
                .iter()
                .find(|p| p.parameter_key() == Some(key))
                .and_then(|p| p.parameter_value())
                .map(str::to_owned)
        }
    };
    assert_eq!(parameter("LogRetentionDays").await.as_deref(), Some("90"));
    let out =
        cli(&["deploy", "-n", &stack, "--no-aggregator", "--create-iam-roles", "--policy-name-format", "pol-{}"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("✗ Deployment failed: the update would rename, so replace, managed policies"),
        "{out:?}"
    );
    // Emulator stacks keep every parameter (ADR 007): the name format is still the default, empty.
    assert_eq!(
        parameter("AcquireOnlyPolicyName").await.as_deref(),
        Some(""),
        "nothing applied: the default names stay"
    );

    let out = cli(&["status", "-n", &stack]).await;
    let text = ok(&out);
    for expected in [
        "  Available:     ✓ Yes\n",
        "  Stack:         UPDATE_COMPLETE\n",
        "  Table:         ACTIVE\n",
        "  Aggregator:    Disabled\n  Provisioner:   Disabled\n",
        "  Schema:        0.10.0\n",
        "IAM Roles\n  App:           arn:aws:iam::",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    assert!(text.ends_with("✓ Infrastructure is ready\n"), "ready after an update too: {text}");
    let out = cli(&["list", "--region", "us-east-1"]).await;
    let row = ok(&out).lines().find(|l| l.starts_with(&format!("| {stack} "))).map(str::to_owned);
    assert!(row.is_some_and(|r| r.contains("| UPDATE_COMPLETE | 0.17.0 ")), "{}", out.stdout);

    let out = cli(&["delete", "-n", &stack, "-y"]).await;
    assert_eq!(ok(&out), format!("Deleting stack: {stack}\n✓ Stack '{stack}' deleted successfully\n"));
    assert!(db.describe_table().table_name(&stack).send().await.is_err(), "the table went with the stack");
    let out = cli(&["status", "-n", &stack]).await;
    assert_eq!((out.code, out.stderr.trim()), (1, "✗ Infrastructure is not available"));
}

#[tokio::test]
async fn deploy_with_an_unusable_aggregator_binary_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("zael-aggregator");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let binary = script.to_str().unwrap();
    let out = cli(&["deploy", "-n", "with-aggregator", "--aggregator-binary", binary]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr, format!("✗ Deployment failed: {binary}: not an ELF executable\n"));
    assert!(!out.stdout.contains("Stack"), "{}", out.stdout);
    let status = cli(&["status", "-n", "with-aggregator"]).await;
    assert!(!status.stdout.contains("CREATE_"), "{status:?}");
}

#[tokio::test]
async fn disable_enable_and_bypass_reach_zael_server_through_config_and_bucket_stamps() {
    let table = deployed("zf").await;
    for args in [
        vec!["entity", "create", "key-1"],
        vec!["entity", "create", "key-2"],
        vec!["resource", "set-defaults", "gpt-4", "-l", "rpm:5/day"],
    ] {
        ok(&in_ns(&table, &args).await);
    }
    let s = llm_server(&table).await;
    let ask = |key: &'static str| req("llm", vec![desc(&[("api_key", key)])]);
    let day = |left| expect::ok(5, Unit::Day, "rpm", left).reset(1..=86_400);
    assert_response(&s.should(ask("key-1")).await, Code::Ok, &[day(4)]);
    assert_response(&s.should(ask("key-2")).await, Code::Ok, &[day(4)]);

    // Disabling key-1 stamps its bucket: OVER_LIMIT, no limit reported, nothing charged.
    let out = in_ns(&table, &["entity", "disable", "key-1", "--resource", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Disabled entity 'key-1' (1 buckets stamped)");
    let r = s.should(ask("key-1")).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].current_limit.clone()),
        (Code::OverLimit as i32, None),
        "{}",
        describe(&r)
    );
    let out = in_ns(&table, &["entity", "enable", "key-1", "--resource", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Enabled entity 'key-1' (1 buckets cleared)");
    assert_response(&s.should(ask("key-1")).await, Code::Ok, &[day(3)]);

    // Bypassing the resource reaches key-2, not key-1 (its explicit enable wins the walk).
    let out = in_ns(&table, &["resource", "bypass", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Bypassed resource 'gpt-4' (2 buckets stamped)");
    for _ in 0..3 {
        assert_response(&s.should(ask("key-2")).await, Code::Ok, &[day(4)]);
    }
    assert_response(&s.should(ask("key-1")).await, Code::Ok, &[day(2)]);
    let out = in_ns(&table, &["resource", "clear-disabled", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Cleared disabled flag for resource 'gpt-4' (2 buckets updated)");
    assert_response(&s.should(ask("key-2")).await, Code::Ok, &[day(3)]);
    let out = in_ns(&table, &["resource", "get-defaults", "gpt-4"]).await;
    assert_eq!(ok(&out), "Defaults for resource 'gpt-4':\n  rpm: 5/day\n", "the limits survive the flag changes");
    let out = in_ns(&table, &["entity", "get-limits", "key-1", "-r", "gpt-4"]).await;
    assert_eq!(
        ok(&out),
        "No limits configured for entity 'key-1' on resource 'gpt-4'\nStatus: enabled (explicit override)\n"
    );
}

#[tokio::test]
async fn set_cascade_turns_the_parent_charge_on_and_off() {
    let table = deployed("zg").await;
    for args in [
        vec!["entity", "create", "team-a"],
        vec!["entity", "create", "key-1", "--parent", "team-a"],
        vec!["entity", "set-limits", "key-1", "-r", "gpt-4", "-l", "rpm:5/day"],
        vec!["entity", "set-limits", "team-a", "-r", "gpt-4", "-l", "rpm:1/day"],
    ] {
        ok(&in_ns(&table, &args).await);
    }
    let s = llm_server(&table).await;
    let ask = || req("llm", vec![desc(&[("api_key", "key-1")])]);
    let rpm = |rpu, left| expect::ok(rpu, Unit::Day, "rpm", left).reset(1..=86_400);
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(5, 4)]);

    let out = in_ns(&table, &["entity", "set-cascade", "key-1", "on", "--resource", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Set cascade on for entity 'key-1' (1 buckets stamped)");
    // The parent's 1 per day now counts too: its 0 left is the fewest.
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(1, 0)]);
    assert_response(&s.should(ask()).await, Code::OverLimit, &[over(1, Unit::Day, "rpm").reset(1..=86_400)]);

    let out = in_ns(&table, &["entity", "clear-cascade", "key-1", "--resource", "gpt-4"]).await;
    assert_eq!(ok(&out).trim(), "Cleared cascade policy for entity 'key-1' (1 buckets updated)");
    // The rejection cache trusts the parent's last image for 1 s (as the library's does).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(5, 2)]);
}

#[tokio::test]
async fn set_parent_moves_an_entity_and_its_buckets_follow() {
    let table = deployed("zh").await;
    for args in [
        vec!["entity", "create", "team-a"],
        vec!["entity", "create", "team-b"],
        vec!["entity", "create", "key-1", "--parent", "team-a", "--cascade"],
        vec!["resource", "set-defaults", "gpt-4", "-l", "rpm:5/day"],
        vec!["entity", "set-limits", "team-b", "-r", "gpt-4", "-l", "rpm:1/day"],
    ] {
        ok(&in_ns(&table, &args).await);
    }
    let s = llm_server(&table).await;
    let ask = || req("llm", vec![desc(&[("api_key", "key-1")])]);
    let rpm = |rpu, left| expect::ok(rpu, Unit::Day, "rpm", left).reset(1..=86_400);
    // Under team-a (resource defaults, 5 per day each): the child's and the parent's 4 left.
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(5, 4)]);

    let usage = in_ns(&table, &["entity", "set-parent", "key-1"]).await;
    assert_eq!((usage.code, usage.stderr.trim()), (2, "Error: Give exactly one of --parent or --none."));
    let out = in_ns(&table, &["entity", "set-parent", "key-1", "--parent", "team-b"]).await;
    assert_eq!(ok(&out).trim(), "Moved entity 'key-1' from team-a to team-b (1 buckets stamped)");
    // Now team-b's 1 per day decides.
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(1, 0)]);
    assert_response(&s.should(ask()).await, Code::OverLimit, &[over(1, Unit::Day, "rpm").reset(1..=86_400)]);
    let out = in_ns(&table, &["entity", "set-parent", "key-1", "--none"]).await;
    assert_eq!(ok(&out).trim(), "Moved entity 'key-1' from team-b to (none) (1 buckets stamped)");
    // The rejection cache trusts team-b's last image for 1 s (as the library's does).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_response(&s.should(ask()).await, Code::Ok, &[rpm(5, 2)]);

    let out = in_ns(&table, &["entity", "show", "key-1"]).await;
    assert!(ok(&out).contains("  Parent:     (none)\n"), "{}", out.stdout);
    let out = in_ns(&table, &["entity", "list", "--with-custom-limits", "gpt-4"]).await;
    assert_eq!(ok(&out), "team-b\n");
    let out = in_ns(&table, &["entity", "list-resources"]).await;
    assert_eq!(ok(&out), "Resources with entity-level custom limits:\n  gpt-4\n");
    let out = in_ns(&table, &["audit", "list", "-e", "key-1"]).await;
    assert!(ok(&out).contains("| entity_parent_changed |"), "{}", out.stdout);
}

#[tokio::test]
async fn usage_reads_the_snapshots_the_python_aggregator_wrote() {
    let table = deployed("zu").await;
    let out = cli(&["namespace", "register", "tenant", "-n", &table]).await;
    let id = ok(&out).trim().rsplit(' ').next().unwrap().to_owned();
    let written = run_python(moto(), "usage_snapshots.py", &[&table, &id]).await;
    // The aggregator logs JSON on stdout; the fixture prints its counts last.
    assert_eq!(written.lines().last(), Some("2 8"), "2 records, 8 snapshot updates (2 limits x 2 windows x 2)");

    let out = in_ns(&table, &["usage", "list", "-e", "key-1"]).await;
    let rows: Vec<&str> = ok(&out).lines().filter(|l| l.starts_with("| 2026")).collect();
    assert_eq!(
        rows,
        [
            "| 2026-11-30T11:00:00Z | hourly | gpt-4    | key-1  | 2      | rpm=2, tpm=500   |",
            "| 2026-11-30T10:00:00Z | hourly | gpt-4    | key-1  | 2      | rpm=3, tpm=1,500 |",
            "| 2026-11-30T00:00:00Z | daily  | gpt-4    | key-1  | 4      | rpm=5, tpm=2,000 |",
        ]
    );
    assert!(out.stdout.starts_with("\nUsage Snapshots\n\n+-") && out.stdout.ends_with("\nTotal: 3 snapshots\n"));
    let out = in_ns(&table, &["usage", "list", "-r", "gpt-4", "-w", "daily"]).await;
    assert!(ok(&out).ends_with("\nTotal: 1 snapshots\n"), "{}", out.stdout);
    let out = in_ns(&table, &["usage", "summary", "-e", "key-1", "-w", "hourly"]).await;
    assert_eq!(
        ok(&out),
        "\nUsage Summary\n\nEntity:     key-1\nWindow:     hourly\nSnapshots:  2\n\
         Time Range: 2026-11-30T10:00:00Z to 2026-11-30T11:00:00Z\n\n\
         +-------+-------+----------+\n| Limit | Total |  Average |\n+-------+-------+----------+\n\
         | rpm   |     5 |     2.50 |\n| tpm   | 2,000 | 1,000.00 |\n+-------+-------+----------+\n\n"
    );
    let out = in_ns(&table, &["usage", "list"]).await;
    assert_eq!((out.code, out.stderr.trim()), (1, "Error: Either --entity-id or --resource must be provided"));
    let out = in_ns(&table, &["usage", "list", "-e", "nobody"]).await;
    assert_eq!(ok(&out).trim(), "No usage snapshots found");
}

#[tokio::test]
async fn the_audit_retention_of_deploy_is_applied() {
    let table = unique("zr");
    ok(&cli(&["deploy", "--table-only", "-n", &table, "--audit-ttl-days", "7"]).await);
    ok(&cli(&["entity", "create", "key-1", "-n", &table]).await);
    let out = cli(&["namespace", "show", "default", "-n", &table]).await;
    let id = ok(&out).lines().find_map(|l| l.strip_prefix("Namespace ID: ")).unwrap().trim().to_owned();
    let config = zael_table::testing::local_sdk_config(&moto().endpoint(), zael_tests::moto::REGION).await;
    let items = aws_sdk_dynamodb::Client::new(&config)
        .query()
        .table_name(&table)
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("{id}/AUDIT#key-1")))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 1);
    let ttl: i64 = items[0]["ttl"].as_n().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((ttl - now - 7 * 86_400).abs() < 120, "ttl {ttl} is 7 days from {now}");
}

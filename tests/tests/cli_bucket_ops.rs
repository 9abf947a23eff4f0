//! `zae-limiter entity reset|top-up` against moto, next to the reference: every command runs
//! with our CLI in namespace `ours` and with the Python zae-limiter 0.17.0 CLI in namespace
//! `theirs` of the same table, on identical state, and must print the same stdout and stderr
//! and exit the same; balances are then read by the Python library (`oracle.py
//! entity-available`), bucket items compared attribute by attribute, and audit events read
//! by the library (`tests/py/bucket_ops.py audit`) and by `zae-limiter audit list`. Buckets
//! come from the library's acquire, from crafted shards, and from zael-server.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::OnceLock;
use zael_tests::cli::{CliOutput, run_cli, run_python, run_reference_cli};
use zael_tests::moto::{Moto, REGION};
use zael_tests::*;

const OURS: &str = "ours";
const THEIRS: &str = "theirs";

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// A table deployed by our CLI with the namespaces `ours` and `theirs` (and `tenant`, the
/// namespace of the zael-server config below).
struct Table {
    name: String,
    ids: HashMap<String, String>,
}

impl Table {
    async fn deploy(prefix: &str) -> Table {
        let name = unique(prefix);
        let endpoint = endpoint();
        ok(&run_cli(&["deploy", "--table-only", "-n", &name, &endpoint], "").await);
        let out = run_cli(&["namespace", "register", OURS, THEIRS, "tenant", "-n", &name, &endpoint], "").await;
        let ids = ok(&out)
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(n, id)| (n.to_owned(), id.to_owned()))
            .collect();
        Table { name, ids }
    }

    /// Our CLI in namespace `ns`.
    async fn ours(&self, ns: &str, args: &[&str]) -> CliOutput {
        let all = self.with_target(ns, args);
        run_cli(&all.iter().map(String::as_str).collect::<Vec<_>>(), "").await
    }

    /// The reference CLI in namespace `ns`.
    async fn reference(&self, ns: &str, args: &[&str]) -> CliOutput {
        let all = self.with_target(ns, args);
        run_reference_cli(&all.iter().map(String::as_str).collect::<Vec<_>>(), "").await
    }

    fn with_target(&self, ns: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["-n".into(), self.name.clone(), "-N".into(), ns.into(), endpoint()]);
        all
    }

    /// `args` with our CLI in `ours` and the reference CLI in `theirs`: the same stdout,
    /// stderr and exit code. Returns ours.
    async fn both(&self, args: &[&str]) -> CliOutput {
        let ours = self.ours(OURS, args).await;
        let theirs = self.reference(THEIRS, args).await;
        assert_eq!(
            (ours.code, &ours.stdout, &ours.stderr),
            (theirs.code, &theirs.stdout, &theirs.stderr),
            "zae-limiter {args:?}: ours (left) and the reference (right) differ"
        );
        ours
    }

    /// The same set-up command in both namespaces (our CLI).
    async fn setup(&self, args: &[&str]) {
        for ns in [OURS, THEIRS] {
            ok(&self.ours(ns, args).await);
        }
    }

    /// Acquires by the Python library with the stored limits (`oracle.py entity-run`).
    async fn acquire(&self, ns: &str, steps: Value) -> Value {
        let out =
            moto().run_script("table/tests/py/oracle.py", &["entity-run", &self.name, ns, &steps.to_string()]).await;
        serde_json::from_str(&out).expect("JSON")
    }

    /// What the library says is available to `entity` on `resource` (every shard summed).
    async fn available(&self, ns: &str, entity: &str, resource: &str) -> Value {
        let pairs = json!([[entity, resource]]).to_string();
        let out = moto().run_script("table/tests/py/oracle.py", &["entity-available", &self.name, ns, &pairs]).await;
        let mut v: Value = serde_json::from_str(&out).expect("JSON");
        v[format!("{entity}/{resource}")].take()
    }

    /// The entity's audit events as the library reads them, newest first.
    async fn audit(&self, ns: &str, entity: &str) -> Value {
        serde_json::from_str(&run_python(moto(), "bucket_ops.py", &["audit", &self.name, ns, entity]).await)
            .expect("JSON")
    }

    async fn db(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&zael_table::testing::local_sdk_config(&moto().endpoint(), REGION).await)
    }

    fn bucket_pk(&self, ns: &str, entity: &str, resource: &str, shard: i64) -> String {
        zael_table::keys::pk_bucket(&self.ids[ns], entity, resource, shard)
    }

    /// A bucket shard item, if it exists.
    async fn shard(&self, ns: &str, entity: &str, resource: &str, shard: i64) -> Option<Item> {
        self.db()
            .await
            .get_item()
            .table_name(&self.name)
            .key("PK", AttributeValue::S(self.bucket_pk(ns, entity, resource, shard)))
            .key("SK", AttributeValue::S("#STATE".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get_item")
            .item
    }

    /// The attributes a reset or top-up decides, of every shard, in `ns`.
    async fn decided(&self, ns: &str, entity: &str, resource: &str, shards: i64) -> Vec<Value> {
        let mut out = Vec::new();
        for shard in 0..shards {
            let item = self.shard(ns, entity, resource, shard).await.expect("the shard exists");
            let attr = |a: &str| item.get(a).and_then(|v| v.as_n().ok()).map(|n| n.parse::<i64>().unwrap());
            let mut limits = serde_json::Map::new();
            for name in ["rpm", "tpm"] {
                if let Some(tk) = attr(&format!("b_{name}_tk")) {
                    limits.insert(name.into(), json!([tk, attr(&format!("b_{name}_tc"))]));
                }
            }
            out.push(json!({"limits": limits, "shard_count": attr("shard_count"), "vu": attr("vu"), "has_ttl": item.contains_key("ttl")}));
        }
        out
    }

    /// The operation records (`#OP#…`) in shard 0's partition.
    async fn operation_records(&self, ns: &str, entity: &str, resource: &str) -> Vec<Item> {
        self.db()
            .await
            .query()
            .table_name(&self.name)
            .key_condition_expression("PK = :pk AND begins_with(SK, :op)")
            .expression_attribute_values(":pk", AttributeValue::S(self.bucket_pk(ns, entity, resource, 0)))
            .expression_attribute_values(":op", AttributeValue::S("#OP#".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("query")
            .items
            .unwrap_or_default()
    }
}

type Item = HashMap<String, AttributeValue>;

fn endpoint() -> String {
    format!("--endpoint-url={}", moto().endpoint())
}

fn ok(out: &CliOutput) -> &str {
    assert_eq!(out.code, 0, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    &out.stdout
}

fn lines(out: &CliOutput) -> (i32, &str, &str) {
    (out.code, out.stdout.as_str(), out.stderr.as_str())
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

const SHORT_NOTE: &str = "granted less than asked: a dripping limit is never topped up past its ceiling.";

#[tokio::test]
async fn reset_and_top_up_answer_as_the_reference_on_buckets_the_library_created() {
    let t = Table::deploy("zbr").await;
    t.setup(&["entity", "create", "key-1"]).await;
    // 1000-day periods: nothing visible refills while the test runs.
    let limits = ["-l", "rpm:10/1000day", "-l", "tpm:1000/1000day:2000", "--soft", "tpm"];
    t.setup(&[&["entity", "set-limits", "key-1", "-r", "gpt-4"][..], &limits].concat()).await;
    for ns in [OURS, THEIRS] {
        let steps = json!([["key-1", "gpt-4", {"rpm": 3, "tpm": 500}], ["key-1", "gpt-4", {"rpm": 2, "tpm": 800}]]);
        assert_eq!(t.acquire(ns, steps).await[1][1]["key-1"], json!({"rpm": 5, "tpm": 700}));
    }

    let out = t.both(&["entity", "reset", "key-1", "-r", "gpt-4", "-l", "rpm"]).await;
    assert_eq!(lines(&out), (0, "Reset 'key-1' on 'gpt-4' (1 shard; rpm: +5)\n", ""));
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-1", "gpt-4").await, json!({"rpm": 10, "tpm": 700}), "{ns}");
    }

    // Repeated names are summed: 1,300 fits below the 2,000 ceiling.
    let out = t.both(&["entity", "top-up", "key-1", "-r", "gpt-4", "-a", "tpm:300", "-a", "tpm:1,000"]).await;
    assert_eq!(lines(&out), (0, "Topped up 'key-1' on 'gpt-4' (1 shard; tpm: +1,300)\n", ""));
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-1", "gpt-4").await, json!({"rpm": 10, "tpm": 2000}), "{ns}");
    }
    // A dripping limit is never topped up past its ceiling.
    let out = t.both(&["entity", "top-up", "key-1", "-r", "gpt-4", "-a", "tpm:5", "-a", "rpm:1_000"]).await;
    assert_eq!(
        lines(&out),
        (0, "Topped up 'key-1' on 'gpt-4' (1 shard; rpm: +0, tpm: +0)\n", &*format!("Note: rpm, tpm {SHORT_NOTE}\n"))
    );

    // Every limit at once, and debt is forgiven (the soft `tpm` admits below zero).
    for ns in [OURS, THEIRS] {
        let steps = json!([["key-1", "gpt-4", {"rpm": 4, "tpm": 1999}], ["key-1", "gpt-4", {"tpm": 500}]]);
        assert_eq!(t.acquire(ns, steps).await[1][1]["key-1"], json!({"rpm": 6, "tpm": -499}));
    }
    let out = t.both(&["entity", "reset", "key-1", "-r", "gpt-4"]).await;
    assert_eq!(lines(&out), (0, "Reset 'key-1' on 'gpt-4' (1 shard; rpm: +4, tpm: +2,499)\n", ""));
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-1", "gpt-4").await, json!({"rpm": 10, "tpm": 2000}), "{ns}");
    }
    // The items as written: balances, counters untouched, `vu = 0`, no ttl (entity level).
    let ours = t.decided(OURS, "key-1", "gpt-4", 1).await;
    assert_eq!(ours, t.decided(THEIRS, "key-1", "gpt-4", 1).await);
    assert_eq!(
        ours[0],
        json!({"limits": {"rpm": [10_000, 9000], "tpm": [2_000_000, 3_799_000]}, "shard_count": 1, "vu": 0, "has_ttl": false})
    );
    assert_eq!(t.operation_records(OURS, "key-1", "gpt-4").await.len(), 4, "one record per call");

    // The audit events, in the operation's transaction: as the library reads them...
    let audit = t.audit(OURS, "key-1").await;
    assert_eq!(audit, t.audit(THEIRS, "key-1").await);
    let events: Vec<(&str, &Value)> =
        audit.as_array().unwrap().iter().map(|e| (e["action"].as_str().unwrap(), &e["details"])).collect();
    assert_eq!(
        &events[..4],
        [
            ("bucket_reset", &json!({"amounts": {"rpm": 4, "tpm": 2499}, "shards": 1})),
            ("bucket_topped_up", &json!({"amounts": {"rpm": 0, "tpm": 0}, "shards": 1})),
            ("bucket_topped_up", &json!({"amounts": {"tpm": 1300}, "shards": 1})),
            ("bucket_reset", &json!({"amounts": {"rpm": 5}, "shards": 1})),
        ]
    );
    assert!(audit[0]["principal"].as_str().unwrap().starts_with("arn:aws:sts::"), "the caller's ARN: {audit}");
    assert_eq!(audit[0]["resource"], "gpt-4");
    // ... and as `audit list` shows them.
    let out = t.ours(OURS, &["audit", "list", "-e", "key-1"]).await;
    let actions: Vec<&str> =
        ok(&out).lines().filter(|l| l.starts_with("| 2")).map(|l| l.split(" | ").nth(1).unwrap().trim()).collect();
    assert_eq!(
        actions,
        ["bucket_reset", "bucket_topped_up", "bucket_topped_up", "bucket_reset", "limits_set", "entity_created"]
    );
    assert!(out.stdout.contains("| gpt-4    |"), "{}", out.stdout);
}

#[tokio::test]
async fn an_idempotency_key_applies_once_and_answers_the_first_result() {
    let t = Table::deploy("zbi").await;
    for entity in ["key-2", "key-3"] {
        t.setup(&["entity", "create", entity]).await;
        t.setup(&["entity", "set-limits", entity, "-r", "gpt-4", "-l", "rpm:10/1000day", "-l", "tpm:10/1000day"]).await;
    }
    for ns in [OURS, THEIRS] {
        t.acquire(ns, json!([["key-2", "gpt-4", {"rpm": 4}]])).await;
    }
    let reset = ["entity", "reset", "key-2", "-r", "gpt-4", "-l", "rpm", "--idempotency-key", "reset-1"];
    let out = t.both(&reset).await;
    assert_eq!(lines(&out), (0, "Reset 'key-2' on 'gpt-4' (1 shard; rpm: +4)\n", ""));
    for ns in [OURS, THEIRS] {
        t.acquire(ns, json!([["key-2", "gpt-4", {"rpm": 3}]])).await;
    }
    // The same key again: nothing applied, the first result printed.
    let out = t.both(&reset).await;
    assert_eq!(lines(&out), (0, "Reset 'key-2' on 'gpt-4' (1 shard; rpm: +4)\n", ""));
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-2", "gpt-4").await, json!({"rpm": 7, "tpm": 10}), "{ns}");
    }
    // A key names one kind of operation.
    let out =
        t.both(&["entity", "top-up", "key-2", "-r", "gpt-4", "-a", "rpm:1", "--idempotency-key", "reset-1"]).await;
    assert_eq!(
        lines(&out),
        (
            1,
            "",
            "Error: Failed to top up bucket: Invalid idempotency_key: already used for a reset of this entity and resource\n"
        )
    );

    let buy = ["entity", "top-up", "key-2", "-r", "gpt-4", "-a", "rpm:2", "--idempotency-key", "buy-1"];
    for _ in 0..2 {
        let out = t.both(&buy).await;
        assert_eq!(lines(&out), (0, "Topped up 'key-2' on 'gpt-4' (1 shard; rpm: +2)\n", ""));
    }
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-2", "gpt-4").await, json!({"rpm": 9, "tpm": 10}), "granted once: {ns}");
    }
    // The recorded result is compared with what this call asks.
    let out = t.both(&["entity", "top-up", "key-2", "-r", "gpt-4", "-a", "rpm:5", "--idempotency-key", "buy-1"]).await;
    assert_eq!(
        lines(&out),
        (0, "Topped up 'key-2' on 'gpt-4' (1 shard; rpm: +2)\n", &*format!("Note: rpm {SHORT_NOTE}\n"))
    );
    // The reference then looks up a limit this call did not ask for: KeyError, exit 1.
    let out = t.both(&["entity", "top-up", "key-2", "-r", "gpt-4", "-a", "tpm:1", "--idempotency-key", "buy-1"]).await;
    assert_eq!(
        lines(&out),
        (1, "Topped up 'key-2' on 'gpt-4' (1 shard; rpm: +2)\n", "Error: Failed to top up bucket: 'rpm'\n")
    );
    assert_eq!(t.operation_records(OURS, "key-2", "gpt-4").await.len(), 2);
    let audit = t.audit(OURS, "key-2").await;
    assert_eq!(audit, t.audit(THEIRS, "key-2").await);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["bucket_topped_up", "bucket_reset", "limits_set", "entity_created"],
        "one event per operation"
    );

    // No bucket yet: nothing to write, but a keyed call records itself (result 0) and is
    // answered from that record once the bucket exists.
    let out = t.both(&["entity", "reset", "key-3", "-r", "gpt-4"]).await;
    assert_eq!(lines(&out), (0, "Nothing to reset: 'key-3' has no bucket for 'gpt-4'\n", ""));
    let top_up = ["entity", "top-up", "key-3", "-r", "gpt-4", "-a", "rpm:1", "--idempotency-key", "buy-3"];
    let nothing = "Nothing to top up: 'key-3' has no bucket for 'gpt-4', and a dripping limit starts full\n";
    let out = t.both(&top_up).await;
    assert_eq!(lines(&out), (0, nothing, &*format!("Note: rpm {SHORT_NOTE}\n")));
    for ns in [OURS, THEIRS] {
        t.acquire(ns, json!([["key-3", "gpt-4", {"rpm": 5}]])).await;
    }
    let out = t.both(&top_up).await;
    assert_eq!(lines(&out), (0, nothing, &*format!("Note: rpm {SHORT_NOTE}\n")));
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-3", "gpt-4").await, json!({"rpm": 5, "tpm": 10}), "{ns}");
        let audit = t.audit(ns, "key-3").await;
        assert_eq!(audit[0]["details"], json!({"amounts": {"rpm": 0}, "shards": 0}), "{ns}: {audit}");
        assert_eq!(audit[1]["action"], "limits_set", "{ns}: the unkeyed reset wrote nothing");
    }
}

#[tokio::test]
async fn sharded_buckets_on_resource_defaults_are_planned_per_shard() {
    let t = Table::deploy("zbs").await;
    // Resource defaults (buckets with a ttl) and an entity without META.
    t.setup(&["resource", "set-defaults", "gpt-4", "-l", "rpm:10/1000day", "-l", "tpm:100/1000day"]).await;
    let db = t.db().await;
    for ns in [OURS, THEIRS] {
        t.acquire(ns, json!([["key-s", "gpt-4", {"rpm": 2, "tpm": 30}]])).await;
        // Two shards: shard 0 doubled to 2, shard 1 still at 1 (lagging), holding 1 rpm and
        // 5 tpm; shard 0's 8 rpm and 70 tpm are above its share (5 and 50).
        let mut shard1 = t.shard(ns, "key-s", "gpt-4", 0).await.expect("shard 0");
        db.update_item()
            .table_name(&t.name)
            .key("PK", shard1["PK"].clone())
            .key("SK", shard1["SK"].clone())
            .update_expression("SET shard_count = :two")
            .expression_attribute_values(":two", AttributeValue::N("2".into()))
            .send()
            .await
            .expect("double shard 0");
        let id = &t.ids[ns];
        for (attr, value) in [
            ("PK", format!("{id}/BUCKET#key-s#gpt-4#1")),
            ("GSI2SK", "BUCKET#key-s#1".to_owned()),
            ("GSI3SK", "BUCKET#gpt-4#1".to_owned()),
            ("GSI4SK", "BUCKET#key-s#gpt-4#1".to_owned()),
        ] {
            shard1.insert(attr.into(), AttributeValue::S(value));
        }
        for (attr, value) in [("b_rpm_tk", "1000"), ("b_tpm_tk", "5000"), ("shard_count", "1")] {
            shard1.insert(attr.into(), AttributeValue::N(value.into()));
        }
        db.put_item().table_name(&t.name).set_item(Some(shard1)).send().await.expect("shard 1");
    }

    // Shard 1 is raised to 2 first; the room below each share is then split by headroom.
    let out = t.both(&["entity", "top-up", "key-s", "-r", "gpt-4", "-a", "rpm:2"]).await;
    assert_eq!(lines(&out), (0, "Topped up 'key-s' on 'gpt-4' (2 shards; rpm: +2)\n", ""));
    let ours = t.decided(OURS, "key-s", "gpt-4", 2).await;
    assert_eq!(ours, t.decided(THEIRS, "key-s", "gpt-4", 2).await);
    assert_eq!(
        ours,
        [
            json!({"limits": {"rpm": [5000, 2000], "tpm": [50_000, 30_000]}, "shard_count": 2, "vu": 0, "has_ttl": true}),
            json!({"limits": {"rpm": [3000, 2000], "tpm": [5000, 30_000]}, "shard_count": 2, "vu": 0, "has_ttl": true}),
        ]
    );
    let out = t.both(&["entity", "reset", "key-s", "-r", "gpt-4"]).await;
    assert_eq!(lines(&out), (0, "Reset 'key-s' on 'gpt-4' (2 shards; rpm: +2, tpm: +45)\n", ""));
    assert_eq!(t.decided(OURS, "key-s", "gpt-4", 2).await, t.decided(THEIRS, "key-s", "gpt-4", 2).await);
    for ns in [OURS, THEIRS] {
        assert_eq!(t.available(ns, "key-s", "gpt-4").await, json!({"rpm": 10, "tpm": 100}), "{ns}");
        // The acquire's ttl: now + 7 × the slowest refill (1000 days).
        for shard in 0..2 {
            let item = t.shard(ns, "key-s", "gpt-4", shard).await.unwrap();
            let ttl: i64 = item["ttl"].as_n().unwrap().parse().unwrap();
            assert!((ttl - now_s() - 7 * 1000 * 86_400).abs() < 120, "{ns} shard {shard}: ttl {ttl}");
        }
        let record = &t.operation_records(ns, "key-s", "gpt-4").await[0];
        assert_eq!(record["ent"], AttributeValue::S("-".into()), "{ns}: no META, the legacy incarnation");
    }
}

/// The domain `llm` charging 1 `rpm` of the `api_key` entity on `gpt-4` (namespace `tenant`).
const LLM: &str = "domain: llm\nnamespace: tenant\ndescriptors:\n  - key: api_key\n    entity: {resource: gpt-4, consume: {rpm: 1}}\n";

#[tokio::test]
async fn reset_and_top_up_of_buckets_zael_server_created() {
    let t = Table::deploy("zbz").await;
    ok(&t.ours("tenant", &["entity", "create", "key-1"]).await);
    ok(&t.ours("tenant", &["entity", "set-limits", "key-1", "-r", "gpt-4", "-l", "rpm:5/7day"]).await);
    let s = Server::builder()
        .file("llm.yaml", LLM)
        .dynamodb(&moto().endpoint(), &t.name)
        .arg("--config-cache-ttl=0s")
        .start()
        .await;
    let ask = || req("llm", vec![desc(&[("api_key", "key-1")])]);
    let week = |left| expect::ok(5, Unit::Week, "rpm", left).reset(1..=604_800);
    for left in (0..5).rev() {
        assert_response(&s.should(ask()).await, Code::Ok, &[week(left)]);
    }
    assert_response(&s.should(ask()).await, Code::OverLimit, &[over(5, Unit::Week, "rpm").reset(1..=604_800)]);

    let out = t.ours("tenant", &["entity", "reset", "key-1", "-r", "gpt-4"]).await;
    assert_eq!(lines(&out), (0, "Reset 'key-1' on 'gpt-4' (1 shard; rpm: +5)\n", ""));
    assert_eq!(t.available("tenant", "key-1", "gpt-4").await, json!({"rpm": 5}));
    // The server's rejection cache trusts its last image for 1 s (as the library's does).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_response(&s.should(ask()).await, Code::Ok, &[week(4)]);

    let out = t.ours("tenant", &["entity", "top-up", "key-1", "-r", "gpt-4", "-a", "rpm:3"]).await;
    assert_eq!(
        lines(&out),
        (0, "Topped up 'key-1' on 'gpt-4' (1 shard; rpm: +1)\n", &*format!("Note: rpm {SHORT_NOTE}\n"))
    );
    assert_eq!(t.available("tenant", "key-1", "gpt-4").await, json!({"rpm": 5}));
    assert_response(&s.should(ask()).await, Code::Ok, &[week(4)]);

    let out = t.ours("tenant", &["audit", "list", "-e", "key-1"]).await;
    let rows: Vec<&str> = ok(&out).lines().filter(|l| l.starts_with("| 2")).collect();
    assert!(rows[0].contains("| bucket_topped_up | arn:aws:sts::") && rows[0].ends_with("| gpt-4    |"), "{rows:?}");
    assert!(rows[1].contains("| bucket_reset     | arn:aws:sts::"), "{rows:?}");
    let audit = t.audit("tenant", "key-1").await;
    assert_eq!(audit[0]["details"], json!({"amounts": {"rpm": 1}, "shards": 1}));
    assert_eq!(audit[1]["details"], json!({"amounts": {"rpm": 5}, "shards": 1}));
}

#[tokio::test]
async fn bad_input_answers_as_the_reference() {
    let t = Table::deploy("zbe").await;
    t.setup(&["entity", "create", "key-1"]).await;
    t.setup(&["entity", "set-limits", "key-1", "-r", "gpt-4", "-l", "rpm:10/1000day"]).await;
    let usage =
        "Usage: zae-limiter entity top-up [OPTIONS] ENTITY_ID\nTry 'zae-limiter entity top-up --help' for help.\n\n";
    for (value, message) in [
        ("rpm5", "'rpm5' is not LIMIT:N (e.g. 'session:5000')"),
        (":5", "':5' is not LIMIT:N (e.g. 'session:5000')"),
        ("rpm:x", "'x' in 'rpm:x' is not a whole number"),
        ("rpm:", "'' in 'rpm:' is not a whole number"),
        ("rpm:2.5", "'2.5' in 'rpm:2.5' is not a whole number"),
        ("rpm:0", "'rpm:0': the amount must be positive"),
        ("rpm:-5", "'rpm:-5': the amount must be positive"),
    ] {
        let out = t.both(&["entity", "top-up", "key-1", "-r", "gpt-4", "-a", "rpm:1", "-a", value]).await;
        assert_eq!(lines(&out), (2, "", &*format!("{usage}Error: Invalid value: {message}\n")), "{value}");
    }
    // Missing required options: usage errors (clap's and click's own words).
    for args in [
        &["entity", "top-up", "key-1", "-r", "gpt-4"][..],
        &["entity", "top-up", "key-1", "-a", "rpm:1"],
        &["entity", "reset", "key-1"],
    ] {
        let (ours, theirs) = (t.ours(OURS, args).await, t.reference(THEIRS, args).await);
        assert_eq!((ours.code, theirs.code, ours.stdout.as_str()), (2, 2, ""), "{args:?}: {ours:?} {theirs:?}");
    }
    for (args, error) in [
        (
            &["entity", "reset", "key-1", "-r", "gpt-4", "-l", "tpm", "-l", "abc"][..],
            "Failed to reset bucket: Invalid limit: not a limit configured for 'key-1' on 'gpt-4' (configured: rpm)",
        ),
        (
            &["entity", "reset", "key-9", "-r", "gpt-4"],
            "Failed to reset bucket: Invalid resource: no limits are configured for entity 'key-9'",
        ),
        (
            &["entity", "top-up", "key-1", "-r", "claude", "-a", "rpm:1"],
            "Failed to top up bucket: Invalid resource: no limits are configured for entity 'key-1'",
        ),
        (
            &["entity", "reset", "_key", "-r", "gpt-4"],
            "Failed to reset bucket: Invalid entity_id: must start with alphanumeric and contain only alphanumeric, underscore, hyphen, dot, colon, or @ characters",
        ),
        (
            &["entity", "top-up", "key-1", "-r", "gpt#4", "-a", "rpm:1"],
            "Failed to top up bucket: Invalid resource: cannot contain '#' (reserved delimiter)",
        ),
        (
            &["entity", "reset", "key-1", "-r", "gpt-4", "--idempotency-key", "no spaces"],
            "Failed to reset bucket: Invalid idempotency_key: must be 1-64 characters of letters, digits, '.', '_', ':' or '-'",
        ),
        (
            &["entity", "top-up", "key-1", "-r", "gpt-4", "-a", "rpm:999,999,999,999,999", "-a", "rpm:2"],
            "Failed to top up bucket: Invalid amounts: each amount must be at most 1000000000000000",
        ),
    ] {
        let out = t.both(args).await;
        assert_eq!(lines(&out), (1, "", &*format!("Error: {error}\n")), "{args:?}");
    }
}

#[tokio::test]
async fn quotas_are_refused_but_a_keyed_retry_is_answered_from_the_reference_record() {
    let t = Table::deploy("zbq").await;
    run_python(moto(), "bucket_ops.py", &["set-quota", &t.name, OURS, "key-q", "gpt-4"]).await;
    let refused = |op: &str| {
        format!(
            "Error: Failed to {op} bucket: quotas, duration windows and schedules are not supported by this CLI ('session' is a quota); use the Python zae-limiter CLI for this bucket\n"
        )
    };
    // No bucket: a reset has nothing to do; a quota top-up would create one.
    let out = t.ours(OURS, &["entity", "reset", "key-q", "-r", "gpt-4"]).await;
    assert_eq!(lines(&out), (0, "Nothing to reset: 'key-q' has no bucket for 'gpt-4'\n", ""));
    let out = t.ours(OURS, &["entity", "top-up", "key-q", "-r", "gpt-4", "-a", "session:5"]).await;
    assert_eq!(lines(&out), (1, "", &*refused("top up")));

    t.acquire(OURS, json!([["key-q", "gpt-4", {"rpm": 1, "session": 10}]])).await;
    let before = t.shard(OURS, "key-q", "gpt-4", 0).await;
    let out = t.ours(OURS, &["entity", "reset", "key-q", "-r", "gpt-4", "-l", "rpm"]).await;
    assert_eq!(lines(&out), (1, "", &*refused("reset")));
    assert_eq!(t.shard(OURS, "key-q", "gpt-4", 0).await, before, "nothing written");

    let buy = ["entity", "top-up", "key-q", "-r", "gpt-4", "-a", "session:5", "--idempotency-key", "q-1"];
    let theirs = t.reference(OURS, &buy).await;
    assert_eq!(lines(&theirs), (0, "Topped up 'key-q' on 'gpt-4' (1 shard; session: +5)\n", ""));
    let out = t.ours(OURS, &buy).await;
    assert_eq!(lines(&out), lines(&theirs));
    assert_eq!(t.available(OURS, "key-q", "gpt-4").await, json!({"rpm": 9, "session": 95}));
}

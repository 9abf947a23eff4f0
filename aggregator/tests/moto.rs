//! zael-aggregator against moto_server: the reference aggregator as oracle for snapshots, and
//! refill, sharding, archival and malformed records with exact expected items. Tables are made
//! with `CreateTable` (no event source mapping, so the stream can be read).

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;
use zael_aggregator::record::{EventName, Image, StreamRecord};
use zael_aggregator::{Aggregator, Outcome, Settings};
use zael_tests::moto::{Moto, REGION};
use zael_tests::unique;

const REFERENCE: &str = "aggregator/tests/py/reference.py";
/// 2026-01-05T10:20:00Z, the scenario's first `rf`.
const T0: i64 = 1_767_608_400_000;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}
fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

async fn dynamodb(moto: &Moto) -> aws_sdk_dynamodb::Client {
    zael_table::testing::local_client(&moto.endpoint(), REGION).await
}

async fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    let config = zael_table::testing::local_sdk_config(&moto.endpoint(), REGION).await;
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build())
}

async fn table(moto: &Moto) -> String {
    let name = unique("agg");
    zael_table::testing::create_table(&dynamodb(moto).await, &name).await.expect("create table");
    name
}

async fn aggregator(moto: &Moto, table: &str, archive_bucket: &str) -> Aggregator {
    Aggregator {
        dynamodb: dynamodb(moto).await,
        s3: s3(moto).await,
        settings: Settings::new(table, "hourly,daily", 90, true, archive_bucket),
    }
}

/// Every item of `table` whose SK starts with `prefix`, by (PK, SK).
async fn items(moto: &Moto, table: &str, prefix: &str) -> BTreeMap<(String, String), Image> {
    let out = dynamodb(moto).await.scan().table_name(table).send().await.expect("scan");
    out.items()
        .iter()
        .filter(|i| i["SK"].as_s().unwrap().starts_with(prefix))
        .map(|i| ((i["PK"].as_s().unwrap().clone(), i["SK"].as_s().unwrap().clone()), i.clone()))
        .collect()
}

async fn get(moto: &Moto, table: &str, pk: &str, sk: &str) -> Option<Image> {
    dynamodb(moto).await.get_item().table_name(table).key("PK", s(pk)).key("SK", s(sk)).send().await.unwrap().item
}

async fn put(moto: &Moto, table: &str, item: &Image) {
    dynamodb(moto).await.put_item().table_name(table).set_item(Some(item.clone())).send().await.expect("put");
}

fn modify(seq: &str, old: Image, new: Image) -> StreamRecord {
    StreamRecord { event_name: EventName::Modify, sequence_number: seq.into(), new_image: new, old_image: old }
}

/// A one-limit (`rpm`, 10/min) bucket item, shard `shard`.
fn bucket(entity: &str, shard: i64, rf: i64, tk: i64, tc: i64) -> Image {
    Image::from([
        ("PK".into(), s(&format!("ns1/BUCKET#{entity}#api#{shard}"))),
        ("SK".into(), s("#STATE")),
        ("entity_id".into(), s(entity)),
        ("rf".into(), n(rf)),
        ("b_rpm_tk".into(), n(tk)),
        ("b_rpm_cp".into(), n(10_000)),
        ("b_rpm_ra".into(), n(10_000)),
        ("b_rpm_rp".into(), n(60_000)),
        ("b_rpm_tc".into(), n(tc)),
    ])
}

fn with(mut item: Image, attrs: &[(&str, AttributeValue)]) -> Image {
    for (k, v) in attrs {
        item.insert((*k).into(), v.clone());
    }
    item
}

/// `zael-aggregator --poll` on `table` of `moto`, logging at info to stdout.
fn poller(moto: &Moto, table: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_zael-aggregator"));
    command
        .args(["--poll", "--table", table, "--endpoint-url", &moto.endpoint(), "--region", REGION])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The `#USAGE#` snapshots of `table` without their `ttl` (`now + 90 days` at the first write).
async fn snapshots(moto: &Moto, table: &str) -> BTreeMap<(String, String), Image> {
    let mut usage = items(moto, table, "#USAGE#").await;
    for item in usage.values_mut() {
        item.remove("ttl").expect("a snapshot has a ttl");
    }
    usage
}

/// The JSON log lines of a poller's stdout.
fn log_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect()
}

#[tokio::test]
async fn sigterm_mid_run_exits_0_and_a_restart_counts_nothing_twice_and_loses_nothing() {
    use tokio::io::AsyncBufReadExt;
    let moto = Moto::start();
    let (whole, interrupted) = (table(&moto).await, table(&moto).await);
    moto.run_script(REFERENCE, &["traffic", &whole]).await;
    moto.run_script(REFERENCE, &["traffic", &interrupted]).await;
    // One record per batch, so a signal lands between or inside batches, never after the last.
    let one_by_one = ["--batch-size", "1", "--interval-ms", "50"];

    let uninterrupted = tokio::time::timeout(
        Duration::from_secs(120),
        poller(&moto, &whole).args(one_by_one).arg("--until-idle").output(),
    )
    .await
    .expect("an uninterrupted run stops once idle")
    .expect("run zael-aggregator");
    assert!(uninterrupted.status.success(), "{}", String::from_utf8_lossy(&uninterrupted.stderr));
    let batches =
        |lines: &[serde_json::Value]| lines.iter().filter(|l| l["message"] == "Batch processing started").count();
    let total = batches(&log_lines(&uninterrupted.stdout));
    // The scenario's 14 records, then the records of the aggregator's own snapshot writes.
    assert!(total > 14, "{total} batches");

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.json");
    let mut child = poller(&moto, &interrupted)
        .args(one_by_one)
        .arg("--checkpoint")
        .arg(&checkpoint)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zael-aggregator");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // SIGTERM while the third batch is being applied.
    while batches(&seen) < 3 {
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("the poller logs its batches")
            .expect("read stdout")
            .expect("the poller is still running");
        seen.push(serde_json::from_str(&line).expect("a JSON log line"));
    }
    let pid = child.id().expect("running") as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .expect("wait");
    while let Ok(Some(line)) = stdout.next_line().await {
        seen.push(serde_json::from_str(&line).expect("a JSON log line"));
    }
    assert_eq!(status.code(), Some(0), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l["message"] == "Shutdown requested - finishing the batch in hand" && l["signal"] == "SIGTERM")
    );
    let first_run = batches(&seen);
    assert!((3..total).contains(&first_run), "stopped mid-run after {first_run} of {total} batches");
    let saved: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).expect("a whole checkpoint");
    assert_eq!(saved.len(), 1, "{saved:?}");

    let restarted = tokio::time::timeout(
        Duration::from_secs(120),
        poller(&moto, &interrupted).args(one_by_one).arg("--until-idle").arg("--checkpoint").arg(&checkpoint).output(),
    )
    .await
    .expect("the restart stops once idle")
    .expect("run zael-aggregator");
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    assert_eq!(first_run + batches(&log_lines(&restarted.stdout)), total, "every record applied exactly once");
    let expected = snapshots(&moto, &whole).await;
    assert_eq!(expected.len(), 7, "hourly and daily snapshots: {:?}", expected.keys());
    assert_eq!(snapshots(&moto, &interrupted).await, expected);
}

#[tokio::test]
async fn snapshots_match_the_reference_aggregator_except_the_documented_fixes() {
    let moto = Moto::start();
    let (ours, reference) = (table(&moto).await, table(&moto).await);
    moto.run_script(REFERENCE, &["traffic", &ours]).await;

    let poll = tokio::time::timeout(
        Duration::from_secs(120),
        poller(&moto, &ours)
            .args(["--until-idle", "--max-batches", "20", "--interval-ms", "50", "--snapshot-windows"])
            .arg("hourly, daily,monthly")
            .output(),
    )
    .await
    .expect("the poller stops once the stream is idle")
    .expect("run zael-aggregator");
    let logs = String::from_utf8_lossy(&poll.stdout);
    assert!(poll.status.success(), "{logs}\n{}", String::from_utf8_lossy(&poll.stderr));
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let started = lines.iter().find(|l| l["message"] == "Batch processing started").expect("a batch");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["logger"], "zael_aggregator.handler");
    assert_eq!(started["record_count"], 14);
    assert_eq!(started["windows"], serde_json::json!(["hourly", "daily", "monthly"]));
    assert!(lines.iter().any(|l| l["message"] == "Skipping pre-migration record with unprefixed PK"
        && l["level"] == "WARNING"
        && l["pk"] == "BUCKET#legacy#api#0"));

    let summary = moto.run_script(REFERENCE, &["aggregate", &ours, &reference, "hourly,daily,monthly"]).await;
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["errors"], serde_json::json!([]));

    let mut ours = items(&moto, &ours, "#USAGE#").await;
    let mut theirs = items(&moto, &reference, "#USAGE#").await;
    // The TTL is `now + 90 days` at the first write: equal up to the seconds between the runs.
    for item in ours.values_mut().chain(theirs.values_mut()) {
        let ttl: i64 = item.remove("ttl").unwrap().as_n().unwrap().parse().unwrap();
        let expected = Utc::now().timestamp() + 90 * 86_400;
        assert!((expected - 300..=expected).contains(&ttl), "ttl {ttl}");
    }
    let keys = |m: &BTreeMap<(String, String), Image>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs));
    let usage =
        |entity: &str, res: &str, window: &str| (format!("ns1/ENTITY#{entity}"), format!("#USAGE#{res}#{window}"));
    assert_eq!(
        keys(&ours),
        vec![
            usage("fix-1", "chat", "2026-01-01T00:00:00Z"),
            usage("fix-1", "chat", "2026-01-05T00:00:00Z"),
            usage("fix-1", "chat", "2026-01-05T10:00:00Z"),
            usage("plain-1", "api", "2026-01-01T00:00:00Z"),
            usage("plain-1", "api", "2026-01-05T00:00:00Z"),
            usage("plain-1", "api", "2026-01-05T10:00:00Z"),
            usage("plain-1", "api", "2026-01-05T11:00:00Z"),
            usage("plain-2", "api", "2026-01-01T00:00:00Z"),
            usage("plain-2", "api", "2026-01-05T00:00:00Z"),
            usage("plain-2", "api", "2026-01-05T10:00:00Z"),
        ]
    );
    // One limit per bucket, whole tokens, no consumption on the INSERT: attribute for attribute.
    for (key, item) in &ours {
        if key.0.contains("plain-") {
            assert_eq!(Some(item), theirs.get(key), "{key:?}");
        }
    }
    let daily = &ours[&usage("plain-1", "api", "2026-01-05T00:00:00Z")];
    assert_eq!((&daily["rpm"], &daily["total_events"]), (&n(4), &n(3)));
    let soft = &ours[&usage("plain-2", "api", "2026-01-05T10:00:00Z")];
    assert_eq!((&soft["tpm"], &soft["tpm#od"], &soft["total_events"]), (&n(7), &n(2), &n(3)));
    // fix-1: the INSERT's consumption counts (D5), deltas are summed before flooring and each
    // record is one event (D3): rpm 1+1+1, tpm (0.5+1.5+1.5) -> 3, 3 records; the reference
    // has rpm 1+1, tpm 1+1 and 2 records x 2 limits. Everything else is the same.
    for window in ["2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z", "2026-01-05T10:00:00Z"] {
        let key = usage("fix-1", "chat", window);
        let (mine, reference) = (&ours[&key], &theirs[&key]);
        assert_eq!((&mine["rpm"], &mine["tpm"], &mine["total_events"]), (&n(3), &n(3), &n(3)));
        assert_eq!((&reference["rpm"], &reference["tpm"], &reference["total_events"]), (&n(2), &n(2), &n(4)));
        let strip = |i: &Image| {
            let mut i = i.clone();
            for k in ["rpm", "tpm", "total_events"] {
                i.remove(k);
            }
            i
        };
        assert_eq!(strip(mine), strip(reference));
        assert!(!mine.contains_key("wcu"));
    }
}

#[tokio::test]
async fn refill_is_written_under_the_rf_lock_and_a_lost_race_writes_nothing() {
    let moto = Moto::start();
    let table = table(&moto).await;
    let rf = T0;
    let now = T0 + 6000; // 1 token accrued
    // Stored as the record left it: 0.5 tokens after 3 consumed in the batch.
    let low = bucket("low", 0, rf, 500, 3000);
    put(&moto, &table, &low).await;
    // A client wrote after the record: rf moved on.
    let raced = bucket("raced", 0, rf, 500, 3000);
    put(&moto, &table, &with(raced.clone(), &[("rf", n(rf + 10))])).await;
    // Plenty left: no write.
    let plenty = bucket("plenty", 0, rf, 8000, 1000);
    put(&moto, &table, &plenty).await;

    let agg = aggregator(&moto, &table, "").await;
    let records = vec![
        modify("1", bucket("low", 0, rf - 5, 3500, 0), low.clone()),
        modify("2", bucket("raced", 0, rf - 5, 3500, 0), raced.clone()),
        modify("3", bucket("plenty", 0, rf - 5, 9000, 0), plenty.clone()),
    ];
    let outcome = agg.process(&records, "req-1", at(now)).await;
    assert_eq!(
        outcome,
        Outcome { processed: 3, deltas_extracted: 3, snapshots_updated: 6, refills_written: 1, ..Outcome::default() }
    );
    assert_eq!(
        get(&moto, &table, "ns1/BUCKET#low#api#0", "#STATE").await.unwrap(),
        with(low, &[("b_rpm_tk", n(1500)), ("rf", n(now))])
    );
    assert_eq!(
        get(&moto, &table, "ns1/BUCKET#raced#api#0", "#STATE").await.unwrap(),
        with(raced, &[("rf", n(rf + 10))])
    );
    assert_eq!(get(&moto, &table, "ns1/BUCKET#plenty#api#0", "#STATE").await.unwrap(), plenty);
}

#[tokio::test]
async fn shard_doubling_and_propagation_with_clones_pinned_on_the_owner() {
    let moto = Moto::start();
    let table = table(&moto).await;
    let wcu = |tk: i64| {
        [
            ("b_wcu_tk", n(tk)),
            ("b_wcu_cp", n(1_000_000)),
            ("b_wcu_ra", n(1_000_000)),
            ("b_wcu_rp", n(1000)),
            ("b_wcu_tc", n(0)),
        ]
    };
    // Doubling: wcu at 10 % right at rf.
    let hot = with(bucket("hot", 0, T0, 10_000, 0), &wcu(100_000));
    let hot = with(hot, &[("shard_count", n(1))]);
    put(&moto, &table, &hot).await;
    let agg = aggregator(&moto, &table, "").await;
    let record = modify("1", hot.clone(), hot.clone());
    let outcome = agg.process(std::slice::from_ref(&record), "req-1", at(T0)).await;
    assert_eq!((outcome.shards_doubled, outcome.errors.len()), (1, 0));
    assert_eq!(get(&moto, &table, "ns1/BUCKET#hot#api#0", "#STATE").await.unwrap()["shard_count"], n(2));
    // The same record again: the stored count is no longer 1, the bump is lost, nothing changes.
    let outcome = agg.process(&[record], "req-2", at(T0)).await;
    assert_eq!((outcome.shards_doubled, outcome.errors.len()), (0, 0));
    assert_eq!(get(&moto, &table, "ns1/BUCKET#hot#api#0", "#STATE").await.unwrap()["shard_count"], n(2));

    // Propagation 2 -> 4: shard 1 exists, shards 2 and 3 are cloned from shard 0's image.
    let shard0 = with(bucket("wide", 0, T0, 9000, 7000), &[("shard_count", n(4)), ("GSI2SK", s("BUCKET#wide#0"))]);
    let shard0 = with(shard0, &wcu(50_000));
    put(&moto, &table, &shard0).await;
    let shard1 = with(bucket("wide", 1, T0, 4000, 1000), &[("shard_count", n(2))]);
    put(&moto, &table, &shard1).await;
    let record = modify("5", with(shard0.clone(), &[("shard_count", n(2))]), shard0.clone());
    let outcome = agg.process(&[record], "req-3", at(T0 + 60_000)).await;
    assert_eq!((outcome.shards_propagated, outcome.errors.clone()), (3, vec![]));
    assert_eq!(
        get(&moto, &table, "ns1/BUCKET#wide#api#1", "#STATE").await.unwrap(),
        with(shard1, &[("shard_count", n(4))])
    );
    for shard in [2, 3] {
        let expected = with(
            shard0.clone(),
            &[
                ("PK", s(&format!("ns1/BUCKET#wide#api#{shard}"))),
                ("GSI2SK", s(&format!("BUCKET#wide#{shard}"))),
                ("GSI3SK", s(&format!("BUCKET#api#{shard}"))),
                ("GSI4SK", s(&format!("BUCKET#wide#api#{shard}"))),
                ("b_rpm_tk", n(2500)),
                ("b_rpm_tc", n(0)),
                ("b_wcu_tk", n(1_000_000)),
                ("b_wcu_tc", n(0)),
            ],
        );
        let clone = get(&moto, &table, &format!("ns1/BUCKET#wide#api#{shard}"), "#STATE").await;
        assert_eq!(clone, Some(expected), "shard {shard}");
    }

    // The owner moved since the image (META has a generation the image lacks): no clone; and an
    // existing shard already at a higher count keeps it.
    let moved = with(bucket("moved", 0, T0, 9000, 0), &[("shard_count", n(4))]);
    put(&moto, &table, &moved).await;
    put(&moto, &table, &with(bucket("moved", 1, T0, 9000, 0), &[("shard_count", n(8))])).await;
    put(
        &moto,
        &table,
        &Image::from([("PK".into(), s("ns1/ENTITY#moved")), ("SK".into(), s("#META")), ("pgen".into(), n(1))]),
    )
    .await;
    let record = modify("6", with(moved.clone(), &[("shard_count", n(2))]), moved);
    let outcome = agg.process(&[record], "req-4", at(T0 + 60_000)).await;
    assert_eq!((outcome.shards_propagated, outcome.errors.clone()), (0, vec![]));
    assert_eq!(get(&moto, &table, "ns1/BUCKET#moved#api#1", "#STATE").await.unwrap()["shard_count"], n(8));
    assert_eq!(get(&moto, &table, "ns1/BUCKET#moved#api#2", "#STATE").await, None);
    assert_eq!(get(&moto, &table, "ns1/BUCKET#moved#api#3", "#STATE").await, None);
}

fn audit_remove(seq: &str, event_id: &str, timestamp: &str) -> StreamRecord {
    let old = Image::from([
        ("PK".into(), s("ns1/AUDIT#user-1")),
        ("SK".into(), s(&format!("#AUDIT#{event_id}"))),
        ("event_id".into(), s(event_id)),
        ("entity_id".into(), s("user-1")),
        ("action".into(), s("limits_set")),
        ("timestamp".into(), s(timestamp)),
        ("principal".into(), s("arn:aws:iam::123456789012:user/ops")),
        ("details".into(), AttributeValue::M(HashMap::from([("limits".into(), AttributeValue::L(vec![]))]))),
    ]);
    StreamRecord { event_name: EventName::Remove, sequence_number: seq.into(), new_image: Image::new(), old_image: old }
}

#[tokio::test]
async fn a_failed_archive_put_is_a_partial_batch_failure_and_nothing_is_lost_or_counted_twice() {
    let moto = Moto::start();
    let table = table(&moto).await;
    let archive = unique("archive").to_lowercase();
    let agg = aggregator(&moto, &table, &archive).await;
    let consume = |seq: &str, tc_old: i64, tc_new: i64| {
        modify(seq, bucket("user-1", 0, T0, 9000, tc_old), bucket("user-1", 0, T0, 9000, tc_new))
    };
    let batch = vec![
        consume("100", 0, 1000),
        audit_remove("101", "01KB0000000000000000000002", "2026-01-05T10:00:02Z"),
        consume("102", 1000, 3000),
        audit_remove("103", "01KB0000000000000000000001", "2026-01-05T10:00:01Z"),
    ];
    // The bucket does not exist yet: the put fails.
    let outcome = agg.process(&batch, "req-1", at(T0)).await;
    assert_eq!(outcome.failures, vec!["101".to_owned()]);
    assert_eq!((outcome.events_archived, outcome.s3_objects_created, outcome.snapshots_updated), (0, 0, 2));
    assert_eq!(outcome.errors.len(), 1);
    assert!(outcome.errors[0].starts_with("Error writing to S3: "), "{:?}", outcome.errors);
    let hourly = ("ns1/ENTITY#user-1".to_owned(), "#USAGE#api#2026-01-05T10:00:00Z".to_owned());
    assert_eq!(items(&moto, &table, "#USAGE#").await[&hourly]["rpm"], n(1));

    // Redelivery from the failed record, once the bucket exists.
    s3(&moto).await.create_bucket().bucket(&archive).send().await.expect("create bucket");
    let outcome = agg.process(&batch[1..], "req-2", at(T0)).await;
    assert_eq!(outcome.failures, Vec::<String>::new());
    assert_eq!((outcome.events_archived, outcome.s3_objects_created, outcome.errors.len()), (2, 1, 0));
    let usage = items(&moto, &table, "#USAGE#").await;
    assert_eq!((&usage[&hourly]["rpm"], &usage[&hourly]["total_events"]), (&n(3), &n(2)));

    let s3 = s3(&moto).await;
    let listed = s3.list_objects_v2().bucket(&archive).send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    let key = "audit/year=2026/month=01/day=05/audit-req-2-2026-01-05T10-00-01Z.jsonl.gz";
    assert_eq!(keys, vec![key]);
    let object = s3.get_object().bucket(&archive).key(key).send().await.unwrap();
    assert_eq!((object.content_type(), object.content_encoding()), (Some("application/x-ndjson"), Some("gzip")));
    let body = object.body.collect().await.unwrap().into_bytes();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    assert_eq!(
        text,
        "{\"event_id\":\"01KB0000000000000000000002\",\"entity_id\":\"user-1\",\"action\":\"limits_set\",\"timestamp\":\"2026-01-05T10:00:02Z\",\"principal\":\"arn:aws:iam::123456789012:user/ops\",\"details\":{\"limits\":[]}}\n\
         {\"event_id\":\"01KB0000000000000000000001\",\"entity_id\":\"user-1\",\"action\":\"limits_set\",\"timestamp\":\"2026-01-05T10:00:01Z\",\"principal\":\"arn:aws:iam::123456789012:user/ops\",\"details\":{\"limits\":[]}}\n"
    );
}

#[tokio::test]
async fn malformed_records_are_reported_and_contained_to_themselves() {
    let moto = Moto::start();
    let table = table(&moto).await;
    let agg = aggregator(&moto, &table, "").await;
    // As a Lambda delivers them (JSON), so the event path is the one under test.
    let event = serde_json::json!({"Records": [
        {"eventID": "1", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "1", "SizeBytes": 10, "StreamViewType": "NEW_AND_OLD_IMAGES",
            "Keys": {"PK": {"S": "ns1/BUCKET#bad#api#0"}, "SK": {"S": "#STATE"}},
            "OldImage": {"PK": {"S": "ns1/BUCKET#bad#api#0"}, "SK": {"S": "#STATE"}, "entity_id": {"S": "bad"},
                         "b_rpm_tc": {"N": "0"}},
            "NewImage": {"PK": {"S": "ns1/BUCKET#bad#api#0"}, "SK": {"S": "#STATE"}, "entity_id": {"S": "bad"},
                         "b_rpm_tc": {"S": "lots"}}}},
        {"eventID": "2", "eventName": "REMOVE", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "2", "SizeBytes": 10,
            "Keys": {"PK": {"S": "AUDIT#old"}, "SK": {"S": "#AUDIT#1"}},
            "OldImage": {"PK": {"S": "AUDIT#old"}, "SK": {"S": "#AUDIT#1"}, "action": {"S": "x"}}}},
        {"eventID": "3", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "3", "SizeBytes": 10,
            "Keys": {"PK": {"S": "ns1/ENTITY#good"}, "SK": {"S": "#META"}},
            "OldImage": {"PK": {"S": "ns1/ENTITY#good"}, "SK": {"S": "#META"}},
            "NewImage": {"PK": {"S": "ns1/ENTITY#good"}, "SK": {"S": "#META"}, "b_rpm_tc": {"N": "5"}}}},
        {"eventID": "5", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "5", "SizeBytes": 10,
            "Keys": {"PK": {"S": "ns1/BUCKET#nokey#api#0"}, "SK": {"S": "#STATE"}},
            "OldImage": {"entity_id": {"S": "nokey"}, "b_rpm_tc": {"N": "0"}},
            "NewImage": {"entity_id": {"S": "nokey"}, "b_rpm_tc": {"N": "1000"}}}},
        {"eventID": "4", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "4", "SizeBytes": 10,
            "Keys": {"PK": {"S": "ns1/BUCKET#good#api#0"}, "SK": {"S": "#STATE"}},
            "OldImage": {"PK": {"S": "ns1/BUCKET#good#api#0"}, "SK": {"S": "#STATE"}, "entity_id": {"S": "good"},
                         "rf": {"N": T0.to_string()}, "b_rpm_tc": {"N": "1000"}},
            "NewImage": {"PK": {"S": "ns1/BUCKET#good#api#0"}, "SK": {"S": "#STATE"}, "entity_id": {"S": "good"},
                         "rf": {"N": T0.to_string()}, "b_rpm_tc": {"N": "3000"}}}}
    ]});
    let event: aws_lambda_events::event::dynamodb::Event = serde_json::from_value(event).expect("a DynamoDB event");
    let records: Vec<StreamRecord> = event.records.into_iter().map(StreamRecord::from_lambda).collect();
    let archiving = Aggregator { settings: Settings::new(&table, "daily", 90, true, "some-bucket"), ..agg };
    let outcome = archiving.process(&records, "req-1", at(T0)).await;
    assert_eq!(
        outcome.errors,
        vec![
            "Error extracting audit event from record 1: Key has no namespace separator '/': AUDIT#old".to_owned(),
            "Error processing record: attribute b_rpm_tc is not a number: S(\"lots\")".to_owned(),
            "Error processing record: the record's NewImage has no PK or SK".to_owned(),
        ]
    );
    assert_eq!((outcome.failures.len(), outcome.snapshots_updated, outcome.deltas_extracted), (0, 1, 1));
    let usage = items(&moto, &table, "#USAGE#").await;
    assert_eq!(usage.len(), 1);
    let daily = &usage[&("ns1/ENTITY#good".to_owned(), "#USAGE#api#2026-01-05T00:00:00Z".to_owned())];
    assert_eq!((&daily["rpm"], &daily["total_events"], &daily["window"]), (&n(2), &n(1), &s("daily")));
}

//! The binary as AWS runs it: `zael-aggregator` (no `--poll`) against a stand-in for the
//! Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API`), with the tables and the archive bucket on
//! moto. One invocation with a bucket record and an audit REMOVE whose archive put fails: the
//! response is the partial batch failure, the snapshot before the audit record is written.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use zael_tests::moto::{Moto, REGION};
use zael_tests::unique;

#[derive(Clone)]
struct RuntimeApi {
    /// The events still to hand out; an empty queue keeps the next poll waiting.
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    responses: mpsc::UnboundedSender<(String, serde_json::Value)>,
}

async fn next(State(api): State<RuntimeApi>) -> (HeaderMap, String) {
    loop {
        let event = api.events.lock().unwrap().pop();
        if let Some(event) = event {
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", "req-lambda-1".parse().unwrap());
            let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
            headers.insert("lambda-runtime-deadline-ms", deadline.to_string().parse().unwrap());
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:t-aggregator".parse().unwrap(),
            );
            return (headers, event.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn response(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> &'static str {
    let _ = api.responses.send((id, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)));
    "{}"
}

#[tokio::test]
async fn the_lambda_answers_a_failed_archive_with_the_partial_batch_response() {
    let moto = Moto::start();
    let table = unique("lam");
    let client = zael_table::testing::local_client(&moto.endpoint(), REGION).await;
    zael_table::testing::create_table(&client, &table).await.unwrap();

    let image = |tc: i64| {
        serde_json::json!({"PK": {"S": "ns1/BUCKET#user-1#api#0"}, "SK": {"S": "#STATE"},
            "entity_id": {"S": "user-1"}, "rf": {"N": "1767608400000"}, "b_rpm_tc": {"N": tc.to_string()},
            "b_rpm_tk": {"N": "5000"}, "b_rpm_cp": {"N": "10000"}, "b_rpm_ra": {"N": "10000"}, "b_rpm_rp": {"N": "60000"}})
    };
    let audit = serde_json::json!({"PK": {"S": "ns1/AUDIT#user-1"}, "SK": {"S": "#AUDIT#01KB0"},
        "event_id": {"S": "01KB0"}, "entity_id": {"S": "user-1"}, "action": {"S": "limits_set"},
        "timestamp": {"S": "2026-01-05T10:00:00Z"}});
    let event = serde_json::json!({"Records": [
        {"eventID": "1", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "100", "SizeBytes": 1, "Keys": {}, "OldImage": image(0), "NewImage": image(2000)}},
        {"eventID": "2", "eventName": "REMOVE", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "101", "SizeBytes": 1, "Keys": {}, "OldImage": audit}},
        {"eventID": "3", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": REGION,
         "dynamodb": {"SequenceNumber": "102", "SizeBytes": 1, "Keys": {}, "OldImage": image(2000), "NewImage": image(5000)}}
    ]});

    let (tx, mut rx) = mpsc::unbounded_channel();
    let api = RuntimeApi { events: Arc::new(Mutex::new(vec![event])), responses: tx };
    let app = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runtime_api = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut lambda = tokio::process::Command::new(env!("CARGO_BIN_EXE_zael-aggregator"))
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "t-aggregator")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TABLE_NAME", &table)
        .env("SNAPSHOT_WINDOWS", "daily")
        .env("ENABLE_ARCHIVAL", "TRUE")
        .env("ARCHIVE_BUCKET_NAME", "no-such-archive-bucket")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start zael-aggregator");
    let (id, body) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an invocation response within 60 s")
        .expect("a response");
    lambda.start_kill().unwrap();
    let out = lambda.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);

    assert_eq!(id, "req-lambda-1");
    assert_eq!(body, serde_json::json!({"batchItemFailures": [{"itemIdentifier": "101"}]}), "{logs}");
    let lines: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let started = lines.iter().find(|l| l["message"] == "Lambda invocation started").expect("the start line");
    assert_eq!(
        (&started["request_id"], &started["function_name"], &started["record_count"], &started["archive_bucket"]),
        (
            &serde_json::json!("req-lambda-1"),
            &serde_json::json!("t-aggregator"),
            &serde_json::json!(3),
            &serde_json::json!("no-such-archive-bucket")
        )
    );
    let done = lines.iter().find(|l| l["message"] == "Lambda invocation completed").expect("the summary line");
    assert_eq!(
        (&done["snapshots_updated"], &done["events_archived"], &done["batch_item_failures"], &done["error_count"]),
        (&serde_json::json!(1), &serde_json::json!(0), &serde_json::json!(1), &serde_json::json!(1))
    );
    // Only the record before the audit record was applied: 2 tokens, not 5.
    let usage = client
        .get_item()
        .table_name(&table)
        .key("PK", aws_sdk_dynamodb::types::AttributeValue::S("ns1/ENTITY#user-1".into()))
        .key("SK", aws_sdk_dynamodb::types::AttributeValue::S("#USAGE#api#2026-01-05T00:00:00Z".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the daily snapshot");
    assert_eq!(usage["rpm"], aws_sdk_dynamodb::types::AttributeValue::N("2".into()));
}

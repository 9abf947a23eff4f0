//! `zael-aggregator`: the Lambda (default) or, with `--poll`, the local stream poller.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use zael_aggregator::handler::round2;
use zael_aggregator::poll::{self, PollOptions};
use zael_aggregator::record::StreamRecord;
use zael_aggregator::{Aggregator, Settings};

// About 15 % of a batch's CPU went to glibc malloc/free (bench/README.md); mimalloc, as in
// zael-server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Without `--poll`, runs as an AWS Lambda (provided.al2023) configured by its environment:
/// TABLE_NAME, SNAPSHOT_WINDOWS, SNAPSHOT_TTL_DAYS, ENABLE_ARCHIVAL, ARCHIVE_BUCKET_NAME.
#[derive(Parser, Debug)]
#[command(name = "zael-aggregator", version, about)]
struct Cli {
    /// Read the table's stream directly instead of running as a Lambda (emulators, docker-compose).
    #[arg(long)]
    poll: bool,
    /// The table (stack name).
    #[arg(long, env = "TABLE_NAME", default_value = "rate-limits")]
    table: String,
    /// A DynamoDB/Streams/S3 endpoint, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Comma-separated snapshot windows: hourly, daily, monthly.
    #[arg(long, env = "SNAPSHOT_WINDOWS", default_value = "hourly,daily")]
    snapshot_windows: String,
    /// Days usage snapshots live (their TTL).
    #[arg(long, env = "SNAPSHOT_TTL_DAYS", default_value_t = 90, value_parser = clap::value_parser!(i64).range(1..))]
    snapshot_ttl_days: i64,
    /// The S3 bucket for expired audit events; archival is on when set (`--poll`).
    #[arg(long)]
    archive_bucket: Option<String>,
    /// Records per GetRecords call (`--poll`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
    batch_size: i32,
    /// Pause between polls that found nothing, in ms (`--poll`).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Exit once a poll of every shard finds no records (`--poll`).
    #[arg(long)]
    until_idle: bool,
    /// Exit after this many batches (`--poll`).
    #[arg(long)]
    max_batches: Option<u64>,
    /// Attempts per failing batch before it is skipped (`--poll`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// File recording the last applied sequence number per shard (`--poll`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    zael_aggregator::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async { if cli.poll { run_poll(cli).await } else { run_lambda().await } });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_poll(cli: Cli) -> Result<(), String> {
    let config = zael_table::sdk_config(cli.region.as_deref(), cli.endpoint_url.as_deref()).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    let settings = Settings::new(
        &cli.table,
        &cli.snapshot_windows,
        cli.snapshot_ttl_days,
        true,
        cli.archive_bucket.as_deref().unwrap_or(""),
    );
    let aggregator = Aggregator { dynamodb: aws_sdk_dynamodb::Client::new(&config), s3, settings };
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let options = PollOptions {
        batch_size: cli.batch_size,
        interval: Duration::from_millis(cli.interval_ms),
        until_idle: cli.until_idle,
        max_batches: cli.max_batches,
        max_attempts: cli.max_attempts,
        checkpoint: cli.checkpoint,
    };
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let summary = poll::run(&aggregator, &streams, &options, &stop).await?;
    tracing::info!(
        batches = summary.batches,
        records = summary.records,
        skipped_batches = summary.skipped_batches,
        "Polling finished"
    );
    Ok(())
}

/// Cancels `stop` on the first SIGTERM or SIGINT (`docker compose stop`, Ctrl-C), so the
/// poller finishes its batch and exits 0; a second signal exits at once with 128 + signal.
async fn cancel_on_signal(stop: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install SIGTERM/SIGINT handlers; a signal will kill the poller");
        return;
    };
    let first = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
    tracing::info!(signal = first, "Shutdown requested - finishing the batch in hand");
    stop.cancel();
    let code = tokio::select! { _ = term.recv() => 128 + libc::SIGTERM, _ = int.recv() => 128 + libc::SIGINT };
    tracing::warn!("Second signal - exiting without waiting for the batch");
    std::process::exit(code);
}

async fn run_lambda() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aggregator =
        Aggregator { dynamodb: aws_sdk_dynamodb::Client::new(&config), s3: aws_sdk_s3::Client::new(&config), settings };
    let aggregator = &aggregator;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<_, lambda_runtime::Error>(invoke(aggregator, event).await)
    }))
    .await
    .map_err(|e| e.to_string())
}

/// One invocation: the batch, its summary on the `Lambda invocation completed` line, and the
/// partial-batch response (D2).
async fn invoke(aggregator: &Aggregator, event: LambdaEvent<Event>) -> DynamoDbEventResponse {
    let started = Instant::now();
    let records: Vec<StreamRecord> = event.payload.records.into_iter().map(StreamRecord::from_lambda).collect();
    let settings = &aggregator.settings;
    let windows: Vec<&str> = settings.windows.iter().map(|w| w.name()).collect();
    tracing::info!(
        request_id = event.context.request_id,
        function_name = event.context.env_config.function_name,
        record_count = records.len(),
        table_name = settings.table,
        snapshot_windows = ?windows,
        enable_archival = settings.archive_bucket.is_some(),
        archive_bucket = settings.archive_bucket.as_deref(),
        "Lambda invocation started"
    );
    let outcome = aggregator.process(&records, &event.context.request_id, chrono::Utc::now()).await;
    tracing::info!(
        request_id = event.context.request_id,
        processed = outcome.processed,
        snapshots_updated = outcome.snapshots_updated,
        refills_written = outcome.refills_written,
        events_archived = outcome.events_archived,
        s3_objects_created = outcome.s3_objects_created,
        error_count = outcome.errors.len(),
        batch_item_failures = outcome.failures.len(),
        processing_time_ms = round2(started.elapsed().as_secs_f64() * 1000.0),
        "Lambda invocation completed"
    );
    let mut response = DynamoDbEventResponse::default();
    for id in outcome.failures {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(id);
        response.batch_item_failures.push(failure);
    }
    response
}

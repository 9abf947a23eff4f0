//! Local mode: read the table's stream directly (DescribeTable → DescribeStream →
//! GetShardIterator → GetRecords), feed each batch to the same [`Aggregator`], and checkpoint
//! the last record applied per shard. For emulators (DynamoDB Local, moto) and docker-compose,
//! where no event source mapping invokes a Lambda.
//!
//! The stream is described once per pass (new shards appear on real Streams) and read on with
//! `NextShardIterator`; a fresh iterator from the checkpoint is taken only after a failure.
//! `--until-idle` stops at the first pass in which every shard returned nothing, which is
//! exact on emulators; real Streams can return empty pages with more records behind them.
//!
//! A batch that reports failures (an audit archive that could not be written) is re-read from
//! the first failed record, at most `max_attempts` times in all, like the event source
//! mapping's retries; then it is skipped with an ERROR line naming the sequence range, which
//! is what the DLQ message would carry.

use crate::handler::Aggregator;
use crate::record::StreamRecord;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct PollOptions {
    pub batch_size: i32,
    pub interval: Duration,
    /// Stop after a pass over every shard that returned no records.
    pub until_idle: bool,
    /// Stop after this many batches (a bound for tests and benchmarks).
    pub max_batches: Option<u64>,
    pub max_attempts: u32,
    /// A JSON file `{shard id: last applied sequence number}`, read at start, written after
    /// every batch.
    pub checkpoint: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollSummary {
    pub batches: u64,
    pub records: u64,
    pub skipped_batches: u64,
}

fn sdk<E: std::error::Error + 'static>(context: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{context}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e))
}

/// `fut`, unless `stop` is cancelled first (then `None`: the caller returns, having written
/// nothing for that call).
async fn unless_stopped<T>(stop: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        () = stop.cancelled() => None,
        out = fut => Some(out),
    }
}

/// Polls until idle (`until_idle`), `max_batches`, an error, or `stop` is cancelled.
pub async fn run(
    aggregator: &Aggregator,
    streams: &aws_sdk_dynamodbstreams::Client,
    options: &PollOptions,
    stop: &CancellationToken,
) -> Result<PollSummary, String> {
    let table = &aggregator.settings.table;
    let described =
        aggregator.dynamodb.describe_table().table_name(table).send().await.map_err(sdk("DescribeTable"))?;
    let stream_arn = described
        .table()
        .and_then(|t| t.latest_stream_arn())
        .ok_or_else(|| format!("table {table} has no stream: enable NEW_AND_OLD_IMAGES"))?
        .to_owned();
    let mut checkpoints = load_checkpoints(options.checkpoint.as_ref())?;
    let mut summary = PollSummary::default();
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    // Where each shard's next read starts, when the last batch was applied whole.
    let mut next: BTreeMap<String, String> = BTreeMap::new();
    tracing::info!(table_name = table, stream_arn, "Polling the table's stream");
    let stopped = |summary: PollSummary| {
        tracing::info!(batches = summary.batches, "Shutdown requested - stopped between batches");
        Ok(summary)
    };
    loop {
        let Some(stream) = unless_stopped(stop, streams.describe_stream().stream_arn(&stream_arn).send()).await else {
            return stopped(summary);
        };
        let stream = stream.map_err(sdk("DescribeStream"))?;
        let shards: Vec<String> = stream
            .stream_description()
            .map(|d| d.shards().iter().filter_map(|s| s.shard_id().map(str::to_owned)).collect())
            .unwrap_or_default();
        let mut got_any = false;
        for shard in shards {
            if stop.is_cancelled() {
                return stopped(summary);
            }
            let iterator = match next.remove(&shard) {
                Some(iterator) => iterator,
                None => {
                    let mut request = streams.get_shard_iterator().stream_arn(&stream_arn).shard_id(&shard);
                    request = match checkpoints.get(&shard) {
                        Some(seq) => {
                            request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq)
                        }
                        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
                    };
                    let Some(iterator) = unless_stopped(stop, request.send()).await else {
                        return stopped(summary);
                    };
                    let iterator = iterator.map_err(sdk("GetShardIterator"))?.shard_iterator;
                    let Some(iterator) = iterator else { continue };
                    iterator
                }
            };
            let request = streams.get_records().shard_iterator(iterator).limit(options.batch_size);
            let Some(page) = unless_stopped(stop, request.send()).await else {
                return stopped(summary);
            };
            let page = page.map_err(sdk("GetRecords"))?;
            let following = page.next_shard_iterator.clone();
            let records: Vec<StreamRecord> =
                page.records.unwrap_or_default().into_iter().map(StreamRecord::from_stream).collect();
            if records.is_empty() {
                if let Some(iterator) = following {
                    next.insert(shard.clone(), iterator);
                }
                continue;
            }
            got_any = true;
            summary.batches += 1;
            summary.records += records.len() as u64;
            let request_id = format!("local-{}", records[0].sequence_number);
            // Not cut short by `stop`: the batch in hand is applied whole and checkpointed.
            let outcome = aggregator.process(&records, &request_id, chrono::Utc::now()).await;
            let applied_to = match outcome.failures.first() {
                None => {
                    attempts.clear();
                    records.len()
                }
                Some(failed) => {
                    let attempt = attempts.entry(failed.clone()).or_insert(0);
                    *attempt += 1;
                    if *attempt >= options.max_attempts {
                        tracing::error!(
                            shard_id = shard,
                            first_sequence_number = failed,
                            last_sequence_number = records[records.len() - 1].sequence_number,
                            attempts = *attempt,
                            "Batch failed on every attempt - records skipped (the Lambda would send them to the DLQ)"
                        );
                        summary.skipped_batches += 1;
                        records.len()
                    } else {
                        records.iter().position(|r| &r.sequence_number == failed).unwrap_or(0)
                    }
                }
            };
            if applied_to > 0 {
                checkpoints.insert(shard.clone(), records[applied_to - 1].sequence_number.clone());
                save_checkpoints(options.checkpoint.as_ref(), &checkpoints)?;
            }
            if applied_to < records.len() {
                if unless_stopped(stop, tokio::time::sleep(options.interval)).await.is_none() {
                    return stopped(summary);
                }
            } else if let Some(iterator) = following {
                next.insert(shard.clone(), iterator);
            }
            if options.max_batches.is_some_and(|max| summary.batches >= max) {
                return Ok(summary);
            }
        }
        if !got_any {
            if options.until_idle {
                return Ok(summary);
            }
            if unless_stopped(stop, tokio::time::sleep(options.interval)).await.is_none() {
                return stopped(summary);
            }
        }
    }
}

fn load_checkpoints(path: Option<&PathBuf>) -> Result<BTreeMap<String, String>, String> {
    match path {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        _ => Ok(BTreeMap::new()),
    }
}

fn save_checkpoints(path: Option<&PathBuf>, checkpoints: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string(checkpoints).map_err(|e| e.to_string())?;
    let partial = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

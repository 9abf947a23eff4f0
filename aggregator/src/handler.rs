//! One batch of stream records, start to end: archival first (a failed put makes the batch's
//! later records a partial-batch failure, redelivered), then snapshots, refill, sharding.

use crate::archive::{self, AuditEvent};
use crate::bucket::{self, BucketRecord};
use crate::record::{EventName, StreamRecord};
use crate::settings::Settings;
use crate::{refill, shard, snapshot};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::time::Instant;

/// How many snapshot or refill writes are in flight at once.
const WRITE_CONCURRENCY: usize = 16;

pub struct Aggregator {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub settings: Settings,
}

/// What a batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub processed: usize,
    pub deltas_extracted: usize,
    pub snapshots_updated: usize,
    pub refills_written: usize,
    pub shards_doubled: usize,
    pub shards_propagated: i64,
    pub events_archived: usize,
    pub s3_objects_created: usize,
    /// One message per contained error (a bad record, a failed write).
    pub errors: Vec<String>,
    /// Sequence numbers for `batchItemFailures`: the batch from there on is redelivered.
    pub failures: Vec<String>,
}

impl Aggregator {
    pub async fn process(&self, records: &[StreamRecord], request_id: &str, now: DateTime<Utc>) -> Outcome {
        let started = Instant::now();
        let table = &self.settings.table;
        let windows: Vec<&str> = self.settings.windows.iter().map(|w| w.name()).collect();
        tracing::info!(record_count = records.len(), windows = ?windows, table_name = table, "Batch processing started");
        let mut out = Outcome { processed: records.len(), ..Outcome::default() };

        let applied = match &self.settings.archive_bucket {
            Some(bucket) => self.archive(records, bucket, request_id, now, &mut out).await,
            None => records.len(),
        };
        let records = &records[..applied];

        let mut buckets: Vec<(usize, BucketRecord)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match bucket::parse(record) {
                Ok(Some(b)) => buckets.push((index, b)),
                Ok(None) => {}
                Err(e) => {
                    let message = format!("Error processing record: {e}");
                    tracing::warn!(record_index = index, "{message}");
                    out.errors.push(message);
                }
            }
        }
        out.deltas_extracted =
            buckets.iter().map(|(_, b)| b.limits.iter().filter(|l| l.counts_as_usage()).count()).sum();

        self.snapshots(&buckets, now, &mut out).await;
        let modifies: Vec<&BucketRecord> =
            buckets.iter().filter(|(i, _)| records[*i].event_name == EventName::Modify).map(|(_, b)| b).collect();
        let states = refill::aggregate(modifies.iter().copied());
        self.refill(&states, now.timestamp_millis(), &mut out).await;
        self.sharding(&states, now.timestamp_millis(), &mut out).await;
        for (index, bucket) in &buckets {
            let record = &records[*index];
            if record.event_name != EventName::Modify {
                continue;
            }
            let result = match shard::propagation(record, bucket) {
                Ok(Some(change)) => shard::propagate(&self.dynamodb, table, record, bucket, &change).await,
                Ok(None) => Ok(0),
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => out.shards_propagated += n,
                Err(e) => error(&mut out, format!("Error propagating shard_count: {e}")),
            }
        }
        tracing::info!(
            processed_count = out.processed,
            deltas_extracted = out.deltas_extracted,
            snapshots_updated = out.snapshots_updated,
            refills_written = out.refills_written,
            error_count = out.errors.len(),
            processing_time_ms = round2(started.elapsed().as_secs_f64() * 1000.0),
            "Batch processing completed"
        );
        out
    }

    /// Archives the batch's audit REMOVEs; returns how many leading records the other stages
    /// may apply (all, unless the put failed: then those before the first audit record).
    async fn archive(
        &self,
        records: &[StreamRecord],
        bucket: &str,
        request_id: &str,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> usize {
        let started = Instant::now();
        tracing::info!(record_count = records.len(), bucket_name = bucket, "Archive processing started");
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut first_audit = None;
        let errors_before = out.errors.len();
        for (index, record) in records.iter().enumerate() {
            match archive::extract(record) {
                Ok(Some(event)) => {
                    first_audit.get_or_insert(index);
                    events.push(event);
                }
                Ok(None) => {}
                Err(e) => error(out, format!("Error extracting audit event from record {index}: {e}")),
            }
        }
        let mut applied = records.len();
        if let Some(first) = first_audit {
            let earliest = events.iter().map(|e| e.timestamp.as_str()).min().unwrap_or_default().to_owned();
            let key = archive::object_key(&earliest, request_id, now);
            let result = match archive::jsonl_gzip(&events) {
                Ok(body) => {
                    let size = body.len();
                    archive::put(&self.s3, bucket, &key, body).await.map(|()| size)
                }
                Err(e) => Err(format!("Error creating JSONL: {e}")),
            };
            match result {
                Ok(size_bytes) => {
                    out.events_archived = events.len();
                    out.s3_objects_created = 1;
                    tracing::info!(bucket, key, events_count = events.len(), size_bytes, "S3 object created");
                }
                Err(e) => {
                    let message = format!("Error writing to S3: {e}");
                    tracing::error!(bucket, key, "{message}");
                    out.errors.push(message);
                    out.failures.push(records[first].sequence_number.clone());
                    applied = first;
                }
            }
        }
        tracing::info!(
            processed_count = records.len(),
            events_archived = out.events_archived,
            s3_objects_created = out.s3_objects_created,
            error_count = out.errors.len() - errors_before,
            processing_time_ms = round2(started.elapsed().as_secs_f64() * 1000.0),
            "Archive processing completed"
        );
        applied
    }

    async fn snapshots(&self, buckets: &[(usize, BucketRecord)], now: DateTime<Utc>, out: &mut Outcome) {
        let plan = snapshot::plan(buckets.iter().map(|(_, b)| b), &self.settings.windows);
        let (client, table, ttl_days) = (&self.dynamodb, &self.settings.table, self.settings.ttl_days);
        let results: Vec<_> = futures_util::stream::iter(plan.iter())
            .map(|(key, delta)| async move {
                (key, snapshot::write(client, table, key, delta, ttl_days, now.timestamp()).await)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for (key, result) in results {
            match result {
                Ok(()) => out.snapshots_updated += 1,
                Err(e) => {
                    let message = format!("Error updating snapshot: {e}");
                    tracing::warn!(
                        entity_id = key.entity,
                        resource = key.resource,
                        window = key.window.name(),
                        "{message}"
                    );
                    out.errors.push(message);
                }
            }
        }
    }

    async fn refill(&self, states: &[refill::ShardState], now_ms: i64, out: &mut Outcome) {
        let (client, table) = (&self.dynamodb, &self.settings.table);
        let planned: Vec<_> = states
            .iter()
            .filter(|state| match &state.last.unsupported {
                None => true,
                Some(attribute) => {
                    tracing::warn!(
                        entity_id = state.last.entity,
                        resource = state.last.resource,
                        attribute,
                        "Bucket uses schedules, quotas or duration windows - skipping refill"
                    );
                    false
                }
            })
            .filter_map(|state| match refill::plan(state, now_ms) {
                Some(write) => Some((state, write)),
                None => {
                    tracing::debug!(
                        entity_id = state.last.entity,
                        resource = state.last.resource,
                        "Refill skipped - sufficient tokens"
                    );
                    None
                }
            })
            .collect();
        let results: Vec<_> = futures_util::stream::iter(planned.iter())
            .map(|(state, write)| async move { (state, refill::write(client, table, &state.last, write).await) })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for (state, result) in results {
            match result {
                Ok(true) => out.refills_written += 1,
                Ok(false) => {}
                Err(e) => {
                    let message = format!("Error refilling bucket: {e}");
                    tracing::warn!(entity_id = state.last.entity, resource = state.last.resource, "{message}");
                    out.errors.push(message);
                }
            }
        }
    }

    async fn sharding(&self, states: &[refill::ShardState], now_ms: i64, out: &mut Outcome) {
        for state in states {
            let Some(new_count) = shard::doubling(state, now_ms) else { continue };
            match shard::write_doubling(&self.dynamodb, &self.settings.table, &state.last, new_count).await {
                Ok(true) => out.shards_doubled += 1,
                Ok(false) => {}
                Err(e) => error(out, format!("Error in proactive sharding: {e}")),
            }
        }
    }
}

fn error(out: &mut Outcome, message: String) {
    tracing::warn!("{message}");
    out.errors.push(message);
}

/// A duration in ms to 2 decimals, as the reference logs it.
pub fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

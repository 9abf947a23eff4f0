//! The DynamoDB calls of the store: counted, and retried on throttling, transient failures
//! and transaction conflicts with full-jitter backoff. The caller's deadline
//! (`DynamoStoreOptions::call_timeout`) bounds every retry loop from outside.
//!
//! At most `max_in_flight` requests of one store are at DynamoDB at once; the others wait for
//! a slot, first come first served, inside the caller's deadline (a decision that gives up
//! while waiting never sends its request). Without the bound a store that slows down gets
//! more requests the slower it answers (every decision waiting on it sends its own), and the
//! requests of decisions that already timed out still take its time (the paced hot-bench's
//! collapse, ADR 011; the bound alone did not end it, the reservations' waiting count did,
//! with the bound in place). Writes of the token
//! reservations ([`reservation_write`]) skip the wait: a block is what takes a hot bucket's
//! decisions off the store, there is at most one in flight per bucket, and behind a queue of
//! per-decision writes it would come too late to help.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, KeysAndAttributes, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::item::Item;
use crate::metrics as m;

/// Most re-sends of a write that lost to a transaction (the library's `_ITEM_CONFLICT_MAX_RETRIES`).
const CONFLICT_RETRIES: u32 = 3;
/// Full-jitter cap of the first throttling retry; doubles per retry up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// How many DynamoDB requests a store has sent, by operation (every attempt counts).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub get_item: u64,
    pub batch_get_item: u64,
    pub update_item: u64,
    pub transact_write_items: u64,
}

impl CallCounts {
    pub fn total(&self) -> u64 {
        self.get_item + self.batch_get_item + self.update_item + self.transact_write_items
    }
}

#[derive(Default)]
struct Counters {
    get_item: AtomicU64,
    batch_get_item: AtomicU64,
    update_item: AtomicU64,
    transact_write_items: AtomicU64,
}

#[derive(Copy, Clone, Debug)]
enum Op {
    GetItem,
    BatchGetItem,
    UpdateItem,
    TransactWriteItems,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GetItem => "GetItem",
            Op::BatchGetItem => "BatchGetItem",
            Op::UpdateItem => "UpdateItem",
            Op::TransactWriteItems => "TransactWriteItems",
        }
    }
}

/// Why a call failed after its retries.
#[derive(Debug)]
pub(crate) enum DbError {
    /// Still losing to transactions after [`CONFLICT_RETRIES`] re-sends: nothing was written.
    Conflict,
    /// Access denied (IAM): never retried, never failed open.
    Denied(String),
    /// Anything else, as a message.
    Other(String),
}

/// The answer to a conditional UpdateItem.
pub(crate) enum Update {
    /// Written; the `ALL_NEW` image.
    Done(Item),
    /// The condition failed; the `ALL_OLD` image when the item exists.
    ConditionFailed(Option<Item>),
}

/// The answer to a TransactWriteItems.
pub(crate) enum Transact {
    Done,
    /// Cancelled: one reason code per item (`None`, `ConditionalCheckFailed`, ...).
    Canceled(Vec<String>),
}

/// An UpdateItem request.
pub(crate) struct UpdateReq {
    pub pk: String,
    pub update: String,
    pub condition: Option<String>,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

enum Class {
    Transient,
    Conflict,
    Fatal,
}

/// How an attempt failed, and its `outcome` label.
fn classify<E: ProvideErrorMetadata>(err: &SdkError<E>) -> (Class, &'static str) {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (Class::Transient, "transient")
        }
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("");
            match code {
                "TransactionConflictException" => (Class::Conflict, "conflict"),
                "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded" => {
                    (Class::Transient, "throttled")
                }
                "InternalServerError" | "ServiceUnavailable" | "TransactionInProgressException" => {
                    (Class::Transient, "transient")
                }
                _ if ctx.raw().status().as_u16() >= 500 => (Class::Transient, "transient"),
                "ConditionalCheckFailedException" => (Class::Fatal, "condition_failed"),
                "TransactionCanceledException" => (Class::Fatal, "canceled"),
                "AccessDeniedException" => (Class::Fatal, "denied"),
                _ => (Class::Fatal, "error"),
            }
        }
        _ => (Class::Fatal, "error"),
    }
}

/// Counts the write capacity DynamoDB reports consumed.
fn consumed(op: Op, capacity: &[&ConsumedCapacity]) {
    let units: f64 = capacity.iter().filter_map(|c| c.capacity_units()).sum();
    if units > 0.0 {
        metrics::counter!(m::CONSUMED_WRITE_CAPACITY, "operation" => op.name()).increment(units.round() as u64);
    }
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(op: Op, err: &SdkError<E>) -> String {
    match err {
        SdkError::ServiceError(ctx) => format!(
            "{} failed: {}: {}",
            op.name(),
            ctx.err().code().unwrap_or("unknown error"),
            ctx.err().message().unwrap_or("")
        ),
        other => format!("{} failed: {}", op.name(), aws_sdk_dynamodb::error::DisplayErrorContext(other)),
    }
}

/// A fatal error after its retries: `Denied` for an `AccessDeniedException`.
fn fatal<E: ProvideErrorMetadata + std::error::Error + 'static>(op: Op, err: &SdkError<E>) -> DbError {
    let text = describe(op, err);
    match err {
        SdkError::ServiceError(ctx) if ctx.err().code() == Some("AccessDeniedException") => DbError::Denied(text),
        _ => DbError::Other(text),
    }
}

fn jitter(attempt: u32) -> Duration {
    let cap = BASE_BACKOFF.saturating_mul(1 << attempt.min(8)).min(MAX_BACKOFF);
    let micros = rand::rng().random_range(0..=cap.as_micros() as u64);
    Duration::from_micros(micros)
}

tokio::task_local! {
    /// Set on the tasks that take and give back reserved tokens: their requests skip the
    /// in-flight bound.
    static RESERVATION: ();
}

/// Runs `write` (a block taken or tokens given back, on a task of its own) with its requests
/// exempt from the in-flight bound (see the module docs).
pub(crate) async fn reservation_write<T>(write: impl Future<Output = T>) -> T {
    RESERVATION.scope((), write).await
}

/// The default bound on one store's requests at DynamoDB at once: at DynamoDB's single-digit
/// millisecond latency, 64 carry well over 5,000 requests a second.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// The table and the client.
pub(crate) struct Db {
    pub client: Client,
    pub table: String,
    counters: Counters,
    in_flight: Semaphore,
}

impl Db {
    /// `max_in_flight` requests at once at most (at least one).
    pub fn new(client: Client, table: String, max_in_flight: usize) -> Self {
        Db { client, table, counters: Counters::default(), in_flight: Semaphore::new(max_in_flight.max(1)) }
    }

    pub fn calls(&self) -> CallCounts {
        CallCounts {
            get_item: self.counters.get_item.load(Ordering::Relaxed),
            batch_get_item: self.counters.batch_get_item.load(Ordering::Relaxed),
            update_item: self.counters.update_item.load(Ordering::Relaxed),
            transact_write_items: self.counters.transact_write_items.load(Ordering::Relaxed),
        }
    }

    fn count(&self, op: Op, outcome: &'static str, started: Instant) {
        let counter = match op {
            Op::GetItem => &self.counters.get_item,
            Op::BatchGetItem => &self.counters.batch_get_item,
            Op::UpdateItem => &self.counters.update_item,
            Op::TransactWriteItems => &self.counters.transact_write_items,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::REQUESTS, "operation" => op.name(), "outcome" => outcome).increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "operation" => op.name()).record(started.elapsed().as_secs_f64());
    }

    /// Sends `send()` until it answers, a fatal error, or (for conflicts) the retry budget.
    /// `Err(Ok(e))` is a fatal service error for the caller to inspect.
    async fn retrying<T, E, F, Fut>(&self, op: Op, mut send: F) -> Result<T, Result<SdkError<E>, DbError>>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
    {
        let mut transient = 0u32;
        let mut conflicts = 0u32;
        loop {
            let slot = if RESERVATION.try_with(|_| ()).is_ok() {
                None
            } else {
                let waited = Instant::now();
                let slot = self.in_flight.acquire().await.expect("the semaphore is never closed");
                metrics::histogram!(m::REQUEST_WAIT).record(waited.elapsed().as_secs_f64());
                Some(slot)
            };
            let started = Instant::now();
            let result = send().await;
            drop(slot);
            let class = match &result {
                Ok(_) => {
                    self.count(op, "success", started);
                    None
                }
                Err(err) => {
                    let (class, outcome) = classify(err);
                    self.count(op, outcome, started);
                    Some(class)
                }
            };
            match (result, class) {
                (Ok(v), _) => return Ok(v),
                (Err(err), class) => match class.unwrap_or(Class::Fatal) {
                    Class::Transient => {
                        metrics::counter!(m::RETRIES, "operation" => op.name(), "reason" => "transient").increment(1);
                        tracing::debug!(error = %describe(op, &err), "retrying DynamoDB call");
                        tokio::time::sleep(jitter(transient)).await;
                        transient = transient.saturating_add(1);
                    }
                    Class::Conflict if conflicts < CONFLICT_RETRIES => {
                        metrics::counter!(m::RETRIES, "operation" => op.name(), "reason" => "conflict").increment(1);
                        tokio::time::sleep(jitter(conflicts)).await;
                        conflicts += 1;
                    }
                    Class::Conflict => return Err(Err(DbError::Conflict)),
                    Class::Fatal => return Err(Ok(err)),
                },
            }
        }
    }

    /// GetItem on `(pk, sk)`.
    pub async fn get(&self, pk: &str, sk: &str, consistent: bool) -> Result<Option<Item>, DbError> {
        let key = HashMap::from([
            ("PK".to_owned(), AttributeValue::S(pk.to_owned())),
            ("SK".to_owned(), AttributeValue::S(sk.to_owned())),
        ]);
        let out = self
            .retrying(Op::GetItem, || {
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .consistent_read(consistent)
                    .send()
            })
            .await
            .map_err(|e| match e {
                Ok(err) => fatal(Op::GetItem, &err),
                Err(e) => e,
            })?;
        Ok(out.item)
    }

    /// BatchGetItem of `keys` (`(PK, SK)` pairs, at most 100), unprocessed keys re-sent up to
    /// three times; the items found, keyed by `(PK, SK)`.
    pub async fn batch_get(
        &self,
        keys: &[(String, String)],
        consistent: bool,
    ) -> Result<HashMap<(String, String), Item>, DbError> {
        let mut pending: Vec<HashMap<String, AttributeValue>> = keys
            .iter()
            .map(|(pk, sk)| {
                HashMap::from([
                    ("PK".to_owned(), AttributeValue::S(pk.clone())),
                    ("SK".to_owned(), AttributeValue::S(sk.clone())),
                ])
            })
            .collect();
        pending.dedup();
        let mut found = HashMap::new();
        for round in 0..4u32 {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(jitter(round)).await;
            }
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending.clone()))
                .consistent_read(consistent)
                .build()
                .map_err(|e| DbError::Other(format!("building a BatchGetItem: {e}")))?;
            let requests = HashMap::from([(self.table.clone(), request)]);
            let out = self
                .retrying(Op::BatchGetItem, || {
                    self.client.batch_get_item().set_request_items(Some(requests.clone())).send()
                })
                .await
                .map_err(|e| match e {
                    Ok(err) => fatal(Op::BatchGetItem, &err),
                    Err(e) => e,
                })?;
            for item in out.responses.unwrap_or_default().remove(&self.table).unwrap_or_default() {
                let key = |a: &str| match item.get(a) {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(),
                };
                found.insert((key("PK"), key("SK")), item);
            }
            pending = out.unprocessed_keys.unwrap_or_default().remove(&self.table).map(|k| k.keys).unwrap_or_default();
        }
        if !pending.is_empty() {
            return Err(DbError::Other(format!("BatchGetItem left {} keys unprocessed", pending.len())));
        }
        Ok(found)
    }

    /// A conditional UpdateItem on `(pk, #STATE)`, `ALL_NEW` on success and `ALL_OLD` on a
    /// failed condition.
    pub async fn update(&self, req: UpdateReq) -> Result<Update, DbError> {
        let key = HashMap::from([
            ("PK".to_owned(), AttributeValue::S(req.pk.clone())),
            ("SK".to_owned(), AttributeValue::S(crate::keys::SK_STATE.to_owned())),
        ]);
        let names = (!req.names.is_empty()).then_some(req.names);
        let values = (!req.values.is_empty()).then_some(req.values);
        let result = self
            .retrying(Op::UpdateItem, || {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .update_expression(&req.update)
                    .set_condition_expression(req.condition.clone())
                    .set_expression_attribute_names(names.clone())
                    .set_expression_attribute_values(values.clone())
                    .return_values(ReturnValue::AllNew)
                    .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
            })
            .await;
        match result {
            Ok(out) => {
                consumed(Op::UpdateItem, out.consumed_capacity().as_slice());
                Ok(Update::Done(out.attributes.unwrap_or_default()))
            }
            Err(Err(e)) => Err(e),
            Err(Ok(err)) => {
                let failure = fatal(Op::UpdateItem, &err);
                match err.into_service_error() {
                    UpdateItemError::ConditionalCheckFailedException(e) => {
                        Ok(Update::ConditionFailed(e.item.filter(|i| !i.is_empty())))
                    }
                    _ => Err(failure),
                }
            }
        }
    }

    /// TransactWriteItems; a cancellation whose reasons include a transaction conflict is
    /// re-sent like a conflicted single-item write.
    pub async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Transact, DbError> {
        let mut conflicts = 0u32;
        loop {
            let result = self
                .retrying(Op::TransactWriteItems, || {
                    self.client
                        .transact_write_items()
                        .set_transact_items(Some(items.clone()))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                })
                .await;
            match result {
                Ok(out) => {
                    consumed(Op::TransactWriteItems, &out.consumed_capacity().iter().collect::<Vec<_>>());
                    return Ok(Transact::Done);
                }
                Err(Err(e)) => return Err(e),
                Err(Ok(err)) => {
                    let failure = fatal(Op::TransactWriteItems, &err);
                    match err.into_service_error() {
                        TransactWriteItemsError::TransactionCanceledException(e) => {
                            let codes: Vec<String> = e
                                .cancellation_reasons()
                                .iter()
                                .map(|r| r.code().unwrap_or("None").to_owned())
                                .collect();
                            let conflicted = codes.iter().any(|c| c == "TransactionConflict");
                            let failed = codes.iter().any(|c| c == "ConditionalCheckFailed");
                            if conflicted && !failed {
                                if conflicts >= CONFLICT_RETRIES {
                                    return Err(DbError::Conflict);
                                }
                                tokio::time::sleep(jitter(conflicts)).await;
                                conflicts += 1;
                                continue;
                            }
                            return Ok(Transact::Canceled(codes));
                        }
                        _ => return Err(failure),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn db(max_in_flight: usize) -> Arc<Db> {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .build();
        Arc::new(Db::new(Client::from_conf(conf), "t".into(), max_in_flight))
    }

    /// `calls` concurrent requests of 20 ms each (from `reservation` tasks or not): the most
    /// that were in flight at once, once all answered.
    async fn most_at_once(db: Arc<Db>, calls: usize, reservation: bool) -> usize {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let (db, now, most) = (db.clone(), now.clone(), most.clone());
                let call = async move {
                    db.retrying(Op::GetItem, || {
                        let (now, most) = (now.clone(), most.clone());
                        async move {
                            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, SdkError<GetItemError>>(())
                        }
                    })
                    .await
                    .is_ok()
                };
                if reservation { tokio::spawn(reservation_write(call)) } else { tokio::spawn(call) }
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("task"), "every call answered");
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_in_flight_requests_are_sent_at_once_and_every_one_is_answered() {
        assert_eq!(most_at_once(db(3), 12, false).await, 3);
        assert_eq!(most_at_once(db(1), 4, false).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservation_writes_do_not_wait_for_a_slot() {
        assert_eq!(most_at_once(db(1), 6, true).await, 6);
    }

    #[tokio::test]
    async fn a_call_given_up_while_waiting_never_sends_and_frees_its_place() {
        let db = db(1);
        let sent = Arc::new(AtomicUsize::new(0));
        let call = |millis: u64| {
            let (db, sent) = (db.clone(), sent.clone());
            async move {
                db.retrying(Op::GetItem, || {
                    let sent = sent.clone();
                    async move {
                        sent.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(millis)).await;
                        Ok::<_, SdkError<GetItemError>>(())
                    }
                })
                .await
                .is_ok()
            }
        };
        let first = tokio::spawn(call(100));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(tokio::time::timeout(Duration::from_millis(20), call(0)).await.is_err(), "waits for the slot");
        assert!(first.await.expect("task"));
        assert!(call(0).await, "the slot is free again");
        assert_eq!(sent.load(Ordering::SeqCst), 2, "the call that gave up was never sent");
    }
}

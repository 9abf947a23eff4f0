//! The native API (`zael.limiter.v1.Limiter`) over gRPC, on both stores: the embedded one
//! seeded with `--entities` and a DynamoDB table (moto) made by the Python library
//! zae-limiter 0.17.0, holding the same entities and limits (`ENTITIES` mirrors
//! `table/tests/py/oracle.py entity-setup`). Every scenario runs on both.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use zael_api::limiter_client::LimiterClient;
use zael_api::*;
use zael_tests::moto::Moto;
use zael_tests::{Server, unique};

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// The library scenario (`oracle.py entity-setup`) as an `--entities` file: the namespace
/// `tenant` (per-day limits: nothing visible refills during a test), and `empty`, with no
/// limits at all.
const ENTITIES: &str = include_str!("../../table/tests/library-entities.yaml");

const RLS_CONFIG: &str = "domain: demo\ndescriptors: []\n";
const LEASE_KEY: &str = "native-api-test-lease-key";

#[derive(Copy, Clone, Debug)]
enum Store {
    Memory,
    Dynamo,
}

struct Fixture {
    server: Server,
    _entities: Option<tempfile::NamedTempFile>,
    /// The DynamoDB table, on [`Store::Dynamo`].
    table: Option<String>,
}

impl Fixture {
    async fn start(store: Store) -> Fixture {
        Fixture::start_with(store, &[]).await
    }

    async fn start_with(store: Store, args: &[&str]) -> Fixture {
        let builder = Server::builder().file("demo.yaml", RLS_CONFIG).args(["--lease-key", LEASE_KEY]).args(args);
        match store {
            Store::Memory => {
                let mut file = tempfile::NamedTempFile::new().expect("temp file");
                file.write_all(ENTITIES.as_bytes()).expect("write entities");
                let server = builder.arg("--entities").arg(file.path()).start().await;
                Fixture { server, _entities: Some(file), table: None }
            }
            Store::Dynamo => {
                let table = moto().library_table(&["empty"]).await;
                // moto serialises every request: 10 contending acquires on a loaded machine
                // take longer than the harness's usual 2 s.
                let server = builder.dynamodb(&moto().endpoint(), &table).store_timeout("10s").start().await;
                Fixture { server, _entities: None, table: Some(table) }
            }
        }
    }

    fn client(&self) -> LimiterClient<Channel> {
        LimiterClient::new(self.server.channel())
    }

    async fn acquire(&self, request: AcquireRequest) -> Result<AcquireResponse, tonic::Status> {
        self.client().acquire(request).await.map(|r| r.into_inner())
    }

    /// `{entity/limit: available}` of `entity` on `resource`.
    async fn available(&self, entity: &str, resource: &str) -> HashMap<String, i64> {
        let request =
            AvailableRequest { namespace: "tenant".into(), entity_id: entity.into(), resource: resource.into() };
        let limits = self.client().available(request).await.expect("available").into_inner().limits;
        limits.iter().map(|l| (format!("{}/{}", l.entity_id, l.limit_name), l.available)).collect()
    }

    async fn adjust(&self, lease_id: &str, deltas: &[(&str, i64)]) -> Result<AdjustResponse, tonic::Status> {
        let deltas = deltas.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        self.client().adjust(AdjustRequest { lease_id: lease_id.into(), deltas }).await.map(|r| r.into_inner())
    }

    async fn rollback(&self, lease_id: &str) -> Result<RollbackResponse, tonic::Status> {
        self.client().rollback(RollbackRequest { lease_id: lease_id.into() }).await.map(|r| r.into_inner())
    }

    async fn release(&self, lease_id: &str) -> Result<ReleaseResponse, tonic::Status> {
        self.client().release(ReleaseRequest { lease_id: lease_id.into() }).await.map(|r| r.into_inner())
    }
}

fn acquire(entity: &str, resource: &str, consume: &[(&str, i64)]) -> AcquireRequest {
    AcquireRequest {
        namespace: "tenant".into(),
        entity_id: entity.into(),
        resource: resource.into(),
        consume: consume.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        ..Default::default()
    }
}

/// `(entity, limit, available, requested, exceeded)` per status, sorted.
fn statuses(limits: &[LimitStatus]) -> Vec<(String, String, i64, i64, bool)> {
    let mut out: Vec<_> = limits
        .iter()
        .map(|l| (l.entity_id.clone(), l.limit_name.clone(), l.available, l.requested, l.exceeded))
        .collect();
    out.sort();
    out
}

fn row(entity: &str, limit: &str, available: i64, requested: i64, exceeded: bool) -> (String, String, i64, i64, bool) {
    (entity.into(), limit.into(), available, requested, exceeded)
}

fn map(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The RateLimitExceeded detail of a RESOURCE_EXHAUSTED status.
fn exceeded_detail(status: &tonic::Status) -> RateLimitExceeded {
    use prost::Message as _;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let rpc = tonic_types::Status::decode(status.details()).expect("google.rpc.Status in the details");
    assert_eq!(rpc.code, Code::ResourceExhausted as i32);
    assert_eq!(rpc.details.len(), 1);
    assert_eq!(rpc.details[0].type_url, RATE_LIMIT_EXCEEDED_TYPE_URL);
    RateLimitExceeded::decode(rpc.details[0].value.as_slice()).expect("RateLimitExceeded")
}

async fn multi_limit_acquire_and_cascade(store: Store) {
    let f = Fixture::start(store).await;
    // key-1 on gpt-4: rpm 5, tpm 100 of its own; cascade to proj-1 (rpm 8).
    let r = f.acquire(acquire("key-1", "gpt-4", &[("rpm", 1), ("tpm", 30)])).await.expect("admitted");
    assert!(r.lease_id.starts_with("zl1."), "{}", r.lease_id);
    assert!(!r.replayed && !r.degraded);
    assert_eq!(
        statuses(&r.limits),
        vec![row("key-1", "rpm", 4, 1, false), row("key-1", "tpm", 70, 30, false), row("proj-1", "rpm", 7, 1, false)]
    );
    let status = r.limits.iter().find(|l| l.limit_name == "tpm").unwrap();
    assert_eq!(
        (status.capacity, status.refill_amount, status.refill_period_seconds, status.resource.as_str()),
        (100, 100, 86_400, "gpt-4")
    );
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 4), ("key-1/tpm", 70), ("proj-1/rpm", 7)]));

    // key-4 (rpm 10) cascades to proj-2 (rpm 2): the parent rejects the third; nothing debited.
    for _ in 0..2 {
        f.acquire(acquire("key-4", "gpt-4", &[("rpm", 1)])).await.expect("admitted");
    }
    let e = f.acquire(acquire("key-4", "gpt-4", &[("rpm", 1)])).await.expect_err("the parent is out");
    let detail = exceeded_detail(&e);
    let exceeded: Vec<_> = detail.limits.iter().filter(|l| l.exceeded).map(|l| l.entity_id.as_str()).collect();
    assert_eq!(exceeded, ["proj-2"], "{detail:?}");
    assert_eq!(f.available("key-4", "gpt-4").await, map(&[("key-4/rpm", 8), ("proj-2/rpm", 0)]));
    let metrics = f.server.metrics().await;
    let calls = |method, code| metrics.get("zael_api_calls_total", &[("method", method), ("code", code)]);
    assert_eq!(calls("acquire", "ok"), Some(3.0));
    assert_eq!(calls("acquire", "resource_exhausted"), Some(1.0));
    assert_eq!(calls("available", "ok"), Some(2.0));
}

#[tokio::test]
async fn multi_limit_acquire_and_cascade_memory() {
    multi_limit_acquire_and_cascade(Store::Memory).await;
}

#[tokio::test]
async fn multi_limit_acquire_and_cascade_dynamodb() {
    multi_limit_acquire_and_cascade(Store::Dynamo).await;
}

async fn reject_with_retry_after(store: Store) {
    let f = Fixture::start(store).await;
    f.acquire(acquire("key-1", "gpt-4", &[("tpm", 70)])).await.expect("admitted");
    let e = f.acquire(acquire("key-1", "gpt-4", &[("rpm", 1), ("tpm", 40)])).await.expect_err("short");
    let detail = exceeded_detail(&e);
    // The entity's limits, and its parent's when the decision got to them (the DynamoDB
    // store's speculative path rejects on the entity's bucket alone).
    let rows = statuses(&detail.limits);
    let own: Vec<_> = rows.iter().filter(|r| r.0 == "key-1").cloned().collect();
    assert_eq!(own, vec![row("key-1", "rpm", 5, 1, false), row("key-1", "tpm", 30, 40, true)]);
    assert!(rows.iter().filter(|r| r.0 != "key-1").all(|r| *r == row("proj-1", "rpm", 8, 1, false)), "{rows:?}");
    // 10 tokens short at 100 per day: floor(10_000 * 86_400_000 / 100_000) + 1 ms, less the
    // little refilled since the first acquire.
    let tpm = detail.limits.iter().find(|l| l.exceeded).unwrap();
    assert!((8_600_000..=8_640_001).contains(&tpm.retry_after_ms), "{tpm:?}");
    assert_eq!(detail.retry_after_ms, tpm.retry_after_ms);
    assert!(e.message().starts_with("rate limit exceeded for key-1 on gpt-4: key-1/tpm;"), "{}", e.message());
    // Nothing was debited by the rejected acquire.
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 5), ("key-1/tpm", 30), ("proj-1/rpm", 8)]));
}

#[tokio::test]
async fn reject_with_retry_after_memory() {
    reject_with_retry_after(Store::Memory).await;
}

#[tokio::test]
async fn reject_with_retry_after_dynamodb() {
    reject_with_retry_after(Store::Dynamo).await;
}

/// A rejected acquire reports every requested limit as it stands, undebited, and only the
/// short ones as exceeded, whichever path decided it (on DynamoDB a first use is decided on
/// the slow path's reads, later ones on the speculative write's image).
async fn a_rejection_reports_every_limit_undebited(store: Store) {
    let f = Fixture::start(store).await;
    for _ in 0..2 {
        let e = f.acquire(acquire("key-1", "gpt-4", &[("rpm", 1), ("tpm", 200)])).await.expect_err("tpm is short");
        let rows = statuses(&exceeded_detail(&e).limits);
        let own: Vec<_> = rows.iter().filter(|r| r.0 == "key-1").cloned().collect();
        assert_eq!(own, vec![row("key-1", "rpm", 5, 1, false), row("key-1", "tpm", 100, 200, true)]);
        assert!(rows.iter().filter(|r| r.0 != "key-1").all(|r| *r == row("proj-1", "rpm", 8, 1, false)), "{rows:?}");
    }
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 5), ("key-1/tpm", 100), ("proj-1/rpm", 8)]));
    // The parent short: the child's limits are reported undebited too.
    for _ in 0..2 {
        f.acquire(acquire("key-4", "gpt-4", &[("rpm", 1)])).await.expect("admitted");
    }
    let e = f.acquire(acquire("key-4", "gpt-4", &[("rpm", 1)])).await.expect_err("the parent is out");
    let rows = statuses(&exceeded_detail(&e).limits);
    assert!(rows.contains(&row("proj-2", "rpm", 0, 1, true)), "{rows:?}");
    assert!(rows.iter().filter(|r| r.0 == "key-4").all(|r| *r == row("key-4", "rpm", 8, 1, false)), "{rows:?}");
}

#[tokio::test]
async fn a_rejection_reports_every_limit_undebited_memory() {
    a_rejection_reports_every_limit_undebited(Store::Memory).await;
}

#[tokio::test]
async fn a_rejection_reports_every_limit_undebited_dynamodb() {
    a_rejection_reports_every_limit_undebited(Store::Dynamo).await;
}

async fn adjust_into_debt_then_rollback(store: Store) {
    let f = Fixture::start(store).await;
    let lease = f.acquire(acquire("key-1", "gpt-4", &[("rpm", 1), ("tpm", 30)])).await.expect("admitted").lease_id;
    // The work took 150 tokens more than estimated: the balance goes into debt.
    let adjusted = f.adjust(&lease, &[("tpm", 150)]).await.expect("adjusted");
    assert!(!adjusted.already_applied);
    assert_ne!(adjusted.lease_id, lease);
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 4), ("key-1/tpm", -80), ("proj-1/rpm", 7)]));
    // In debt: 1 tpm is rejected.
    let e = f.acquire(acquire("key-1", "gpt-4", &[("tpm", 1)])).await.expect_err("in debt");
    assert_eq!(statuses(&exceeded_detail(&e).limits), vec![row("key-1", "tpm", -80, 1, true)]);
    // The same adjust retried with the old id is recognised, not applied twice.
    let again = f.adjust(&lease, &[("tpm", 150)]).await.expect("retried");
    assert!(again.already_applied);
    assert_eq!(again.lease_id, adjusted.lease_id);
    // Another adjust with the old id is stale.
    let stale = f.adjust(&lease, &[("tpm", 1)]).await.expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("stale"), "{}", stale.message());
    // Rollback credits all 180 tpm and the rpm, trimmed at the capacity.
    let rolled = f.rollback(&adjusted.lease_id).await.expect("rolled back");
    assert!(!rolled.already_applied);
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 5), ("key-1/tpm", 100), ("proj-1/rpm", 8)]));
    assert!(f.rollback(&adjusted.lease_id).await.expect("retried").already_applied);
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 5), ("key-1/tpm", 100), ("proj-1/rpm", 8)]));
    let e = f.release(&adjusted.lease_id).await.expect_err("already ended");
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "the lease was already rolled back"));

    // A credit never lifts a bucket over its capacity: spend 10, give back 50.
    let lease = f.acquire(acquire("key-1", "gpt-4", &[("tpm", 10)])).await.expect("admitted").lease_id;
    let lease = f.adjust(&lease, &[("tpm", -50)]).await.expect("credited").lease_id;
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 100);
    // Release keeps what was consumed (here, a net credit of 40): nothing more is written.
    assert!(!f.release(&lease).await.expect("released").already_applied);
    assert!(f.release(&lease).await.expect("retried").already_applied);
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 100);
}

#[tokio::test]
async fn adjust_into_debt_then_rollback_memory() {
    adjust_into_debt_then_rollback(Store::Memory).await;
}

#[tokio::test]
async fn adjust_into_debt_then_rollback_dynamodb() {
    adjust_into_debt_then_rollback(Store::Dynamo).await;
}

async fn expiry_and_idempotent_retry(store: Store) {
    let f = Fixture::start(store).await;
    // A lease past its TTL counts as released.
    let mut short = acquire("key-1", "gpt-4", &[("tpm", 10)]);
    short.lease_ttl_seconds = 1;
    let r = f.acquire(short).await.expect("admitted");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now_ms..=now_ms + 1000).contains(&r.lease_expires_at_ms), "{}", r.lease_expires_at_ms);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = f.rollback(&r.lease_id).await.expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("the lease expired at "), "{}", e.message());
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 90);

    // The same request id twice: one charge, the same lease.
    let id = unique("req");
    let mut keyed = acquire("key-1", "gpt-4", &[("rpm", 1), ("tpm", 20)]);
    keyed.request_id = id.clone();
    let first = f.acquire(keyed.clone()).await.expect("admitted");
    assert!(!first.replayed);
    let second = f.acquire(keyed.clone()).await.expect("replayed");
    assert!(second.replayed);
    assert_eq!(second.lease_id, first.lease_id);
    assert!(second.limits.is_empty());
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 4), ("key-1/tpm", 70), ("proj-1/rpm", 7)]));
}

#[tokio::test]
async fn expiry_and_idempotent_retry_memory() {
    expiry_and_idempotent_retry(Store::Memory).await;
}

#[tokio::test]
async fn expiry_and_idempotent_retry_dynamodb() {
    expiry_and_idempotent_retry(Store::Dynamo).await;
}

async fn errors_are_typed(store: Store) {
    let f = Fixture::start(store).await;
    let code = |r: Result<AcquireResponse, tonic::Status>| {
        let e = r.expect_err("an error");
        (e.code(), e.message().to_owned())
    };
    let mut unknown = acquire("key-1", "gpt-4", &[("rpm", 1)]);
    unknown.namespace = "nope".into();
    let (c, m) = code(f.acquire(unknown).await);
    assert_eq!(c, Code::NotFound);
    assert!(m.starts_with("namespace 'nope' is not registered"), "{m}");
    let mut empty = acquire("key-1", "gpt-4", &[("rpm", 1)]);
    empty.namespace = "empty".into();
    assert_eq!(
        code(f.acquire(empty).await),
        (
            Code::FailedPrecondition,
            "no limits are configured for entity 'key-1' on resource 'gpt-4' at any level (entity, entity default, resource, system)".into()
        )
    );
    assert_eq!(
        code(f.acquire(acquire("key-2", "claude", &[("rpm", 1)])).await),
        (Code::PermissionDenied, "entity 'key-2' is disabled for resource 'claude'".into())
    );
    let invalid = [
        (acquire("key-1", "gpt-4", &[("rpm", -1)]), "consume['rpm'] = -1 is outside 0..=1000000000000000"),
        (acquire("key-1", "gpt-4", &[]), "consume names no limit"),
        (acquire("bad id!", "gpt-4", &[("rpm", 1)]), "entity_id 'bad id!' is not a valid entity id"),
        (acquire("key-1", "9gpt", &[("rpm", 1)]), "resource '9gpt' is not a valid resource name"),
        (
            AcquireRequest { lease_ttl_seconds: 86_401, ..acquire("key-1", "gpt-4", &[("rpm", 1)]) },
            "lease_ttl_seconds 86401 is over the maximum 86400",
        ),
        (
            AcquireRequest { request_id: "a b".into(), ..acquire("key-1", "gpt-4", &[("rpm", 1)]) },
            "request_id 'a b' must be 1-64 of [A-Za-z0-9._:-]",
        ),
    ];
    for (request, message) in invalid {
        assert_eq!(code(f.acquire(request).await), (Code::InvalidArgument, message.to_owned()));
    }
    let lease = f.acquire(acquire("key-1", "gpt-4", &[("tpm", 1)])).await.expect("admitted").lease_id;
    let e = f.adjust(&lease, &[("jobs", 1)]).await.expect_err("not in the lease");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "limit 'jobs' is not one the lease acquired"));
    f.rollback(&lease).await.expect("rolled back");
    let e = f.rollback("zl1.not-a-lease").await.expect_err("malformed");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "lease_id: the lease id is malformed"));
    // A lease id made with another key.
    let other = zael_core::lease::LeaseKey::new("some-other-key-0123");
    let lease = zael_core::lease::Lease {
        namespace: "tenant".into(),
        entity: "key-1".into(),
        resource: "gpt-4".into(),
        nonce: "@1".into(),
        seq: 0,
        expires_at: i64::MAX,
        entries: vec![zael_core::lease::LeaseEntry {
            entity: "key-1".into(),
            shard: 0,
            limit: "tpm".into(),
            amount: 100_000,
            bypass: false,
            capacity: 100_000,
            shard_count: 1,
        }],
    };
    let e = f.rollback(&other.encode(&lease)).await.expect_err("forged");
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, "lease_id: the lease id was not issued with this server's lease key")
    );
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 100);
}

#[tokio::test]
async fn errors_are_typed_memory() {
    errors_are_typed(Store::Memory).await;
}

#[tokio::test]
async fn errors_are_typed_dynamodb() {
    errors_are_typed(Store::Dynamo).await;
}

async fn limits_override(store: Store) {
    let f = Fixture::start(store).await;
    // An entity without stored limits of its own, with limits given in the request.
    let mut request = acquire("fresh-1", "batch", &[("jobs", 2)]);
    request.limits = vec![Limit { name: "jobs".into(), capacity: 3, refill_amount: 3, refill_period_seconds: 86_400 }];
    let r = f.acquire(request.clone()).await.expect("admitted");
    assert_eq!(statuses(&r.limits), vec![row("fresh-1", "jobs", 1, 2, false)]);
    let e = f.acquire(request.clone()).await.expect_err("one left");
    assert_eq!(statuses(&exceeded_detail(&e).limits), vec![row("fresh-1", "jobs", 1, 2, true)]);
    f.rollback(&r.lease_id).await.expect("rolled back");
    f.acquire(request).await.expect("admitted again");
}

#[tokio::test]
async fn limits_override_memory() {
    limits_override(Store::Memory).await;
}

#[tokio::test]
async fn limits_override_dynamodb() {
    limits_override(Store::Dynamo).await;
}

#[tokio::test]
async fn a_lease_works_on_every_instance_sharing_the_key_and_no_other() {
    let f = Fixture::start(Store::Dynamo).await;
    let table = f.table.clone().unwrap();
    let lease = f.acquire(acquire("key-1", "gpt-4", &[("tpm", 60)])).await.expect("admitted").lease_id;
    let same = Server::builder()
        .file("demo.yaml", RLS_CONFIG)
        .args(["--lease-key", LEASE_KEY])
        .dynamodb(&moto().endpoint(), &table)
        .start()
        .await;
    let other = Server::builder()
        .file("demo.yaml", RLS_CONFIG)
        .args(["--lease-key", "a-different-lease-key"])
        .dynamodb(&moto().endpoint(), &table)
        .start()
        .await;
    let e = LimiterClient::new(other.channel())
        .rollback(RollbackRequest { lease_id: lease.clone() })
        .await
        .expect_err("another key");
    assert_eq!(e.code(), Code::PermissionDenied);
    let adjusted = LimiterClient::new(same.channel())
        .adjust(AdjustRequest { lease_id: lease, deltas: HashMap::from([("tpm".into(), -20)]) })
        .await;
    let next = adjusted.expect("adjusted on the second instance").into_inner().lease_id;
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 60);
    f.rollback(&next).await.expect("rolled back on the first");
    assert_eq!(f.available("key-1", "gpt-4").await["key-1/tpm"], 100);
}

#[tokio::test]
async fn a_failed_store_is_unavailable_unless_on_unavailable_allows() {
    let mut own = Moto::start();
    let table = own.library_table(&[]).await;
    let start = |extra: &'static [&'static str]| {
        Server::builder()
            .file("demo.yaml", RLS_CONFIG)
            .args(["--lease-key", LEASE_KEY])
            .args(extra)
            .dynamodb(&own.endpoint(), &table)
            .store_timeout("300ms")
            .start()
    };
    let block = start(&[]).await;
    let allow = start(&["--on-unavailable", "allow"]).await;
    let request = acquire("key-1", "gpt-4", &[("tpm", 1)]);
    LimiterClient::new(block.channel()).acquire(request.clone()).await.expect("admitted while moto runs");
    own.stop();
    let e = LimiterClient::new(block.channel()).acquire(request.clone()).await.expect_err("moto is down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let degraded = LimiterClient::new(allow.channel()).acquire(request).await.expect("allowed").into_inner();
    assert_eq!((degraded.lease_id.as_str(), degraded.degraded, degraded.limits.len()), ("", true, 0), "{degraded:?}");
}

#[tokio::test]
async fn reflection_lists_the_native_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let f = Fixture::start(Store::Memory).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(f.server.channel())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream.message().await.expect("a response").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"zael.limiter.v1.Limiter"), "{names:?}");
    assert!(names.contains(&"envoy.service.ratelimit.v3.RateLimitService"), "{names:?}");
}

/// `b_tpm_tc` and `b_tpm_tk` of the bucket `(entity, gpt-4)` shard 0 in `table`.
async fn tpm_counters(table: &str, entity: &str) -> (i64, i64) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = zael_table::testing::local_client(&moto().endpoint(), zael_tests::moto::REGION).await;
    let ns = client
        .get_item()
        .table_name(table)
        .key("PK", AttributeValue::S("_/SYSTEM#".into()))
        .key("SK", AttributeValue::S("#NAMESPACE#tenant".into()))
        .send()
        .await
        .expect("registry")
        .item
        .and_then(|i| i.get("namespace_id").and_then(|v| v.as_s().ok()).cloned())
        .expect("namespace id");
    let item = client
        .get_item()
        .table_name(table)
        .key("PK", AttributeValue::S(zael_table::keys::pk_bucket(&ns, entity, "gpt-4", 0)))
        .key("SK", AttributeValue::S("#STATE".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("bucket")
        .item
        .expect("the bucket exists");
    let number = |a: &str| item.get(a).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok()).expect(a);
    (number("b_tpm_tc"), number("b_tpm_tk"))
}

#[tokio::test]
async fn leases_of_the_api_and_of_the_python_library_share_a_bucket_exactly() {
    let f = Fixture::start(Store::Dynamo).await;
    let table = f.table.clone().unwrap();
    let (entity, capacity) = ("shared-1", 300);
    moto()
        .run_script("tests/py/lease_interop.py", &["setup", &table, "tenant", entity, "gpt-4", &capacity.to_string()])
        .await;
    // Both clients run the same leases at once: acquire tpm 10, adjust +5, every third one
    // rolled back. 30 rounds each ask for 600 tpm in all, twice the capacity.
    let python = {
        let table = table.clone();
        tokio::spawn(async move {
            let out =
                moto().run_script("tests/py/lease_interop.py", &["run", &table, "tenant", entity, "gpt-4", "30"]).await;
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
        })
    };
    let (mut kept, mut rolled_back, mut rejected) = (0i64, 0i64, 0i64);
    for i in 0..30 {
        match f.acquire(acquire(entity, "gpt-4", &[("tpm", 10)])).await {
            Ok(r) => {
                let lease = f.adjust(&r.lease_id, &[("tpm", 5)]).await.expect("adjusted").lease_id;
                if i % 3 == 2 {
                    f.rollback(&lease).await.expect("rolled back");
                    rolled_back += 1;
                } else {
                    f.release(&lease).await.expect("released");
                    kept += 1;
                }
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                rejected += 1;
            }
        }
    }
    let py = python.await.expect("python client");
    let py_kept = py["kept"].as_i64().unwrap();
    let (py_rolled_back, py_rejected) = (py["rolled_back"].as_i64().unwrap(), py["rejected"].as_i64().unwrap());
    assert_eq!(py_kept + py_rolled_back + py_rejected, 30, "{py}");
    assert!(rejected + py_rejected > 0, "the bucket ran out: {py}");
    let (tc, tk) = tpm_counters(&table, entity).await;
    // `tc` counts exactly what the kept leases consumed, whoever wrote them: rollbacks took
    // their acquire and adjust back out.
    assert_eq!(tc, (kept + py_kept) * 15_000, "zael kept {kept}, rolled back {rolled_back}; python {py}");
    // No over-admission: every acquire needed 10 tpm in the bucket, so at most the two
    // in-flight adjusts (+5 each) can take it below zero; the rest is the refill (1 tpm per
    // 288 s at 300 per day) over the test.
    assert!(tk >= -10_000, "balance {tk}");
    let refilled = tk + tc - capacity * 1000;
    assert!((0..=1_000).contains(&refilled), "tk {tk} + tc {tc} is the capacity plus {refilled} refilled millitokens");
}

/// The README's clients, run as they are: `api/examples/llm_gateway.rs` (tonic) and
/// `examples/native-api/llm_gateway.py` (grpcio, stubs generated by grpc_tools.protoc).
#[tokio::test]
async fn the_rust_and_python_examples_run_against_the_server() {
    const DEMO: &str = "namespaces:\n  demo:\n    entities:\n      key-1:\n        resources:\n          gpt-4: {limits: [\"rpm:3/day\", \"tpm:1000/day\"]}\n";
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(DEMO.as_bytes()).expect("write entities");
    let s = Server::builder()
        .file("demo.yaml", RLS_CONFIG)
        .args(["--lease-key", LEASE_KEY])
        .arg("--entities")
        .arg(file.path())
        .start()
        .await;
    let addr = s.grpc_addr.to_string();
    let run = |mut cmd: tokio::process::Command| async move {
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
            .await
            .expect("the example finishes")
            .expect("the example runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    // Rust: one call, 117 tokens used of the 500 reserved.
    let rust = zael_tests::server::workspace_binary("examples/llm_gateway", "ZAEL_LLM_GATEWAY_EXAMPLE_BIN");
    let mut cmd = tokio::process::Command::new(rust);
    cmd.arg(format!("http://{addr}"));
    assert_eq!(run(cmd).await, "used 117 tokens\n");
    // Python: three calls; rpm 3 per day leaves room for two.
    let stubs = tempfile::tempdir().expect("tempdir");
    let root = zael_tests::workspace_root();
    let mut protoc = tokio::process::Command::new(zael_tests::moto::python());
    protoc.args(["-m", "grpc_tools.protoc", "-I"]).arg(root.join("proto"));
    protoc.arg(format!("--python_out={}", stubs.path().display()));
    protoc.arg(format!("--grpc_python_out={}", stubs.path().display()));
    protoc.arg(root.join("proto/zael/limiter/v1/limiter.proto"));
    run(protoc).await;
    let mut python = tokio::process::Command::new(zael_tests::moto::python());
    python.arg(root.join("examples/native-api/llm_gateway.py")).args([addr.as_str(), "key-1", "3"]);
    python.env("PYTHONPATH", stubs.path());
    let out = run(python).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["200 used 117 tokens", "200 used 117 tokens"], "{out}");
    // The third: 1 rpm short at 3 per day, less what refilled since the first call.
    let retry: i64 =
        lines[2].strip_prefix("429 retry after ").and_then(|r| r.strip_suffix(" ms")).unwrap().parse().unwrap();
    assert!((28_000_000..=28_800_001).contains(&retry), "{out}");
    let left = LimiterClient::new(s.channel())
        .available(AvailableRequest { namespace: "demo".into(), entity_id: "key-1".into(), resource: "gpt-4".into() })
        .await
        .expect("available")
        .into_inner();
    let tpm = left.limits.iter().find(|l| l.limit_name == "tpm").unwrap();
    assert_eq!(tpm.available, 1000 - 3 * 117);
}

async fn concurrent_acquires_never_over_admit(store: Store) {
    let f = Fixture::start(store).await;
    // 10 at once on key-1's rpm 5: exactly 5 admitted, whoever wins.
    let calls = (0..10).map(|_| {
        let mut client = f.client();
        async move { client.acquire(acquire("key-1", "gpt-4", &[("rpm", 1)])).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let rejected = results.iter().filter(|r| matches!(r, Err(e) if e.code() == Code::ResourceExhausted)).count();
    assert_eq!((admitted, rejected), (5, 5), "{results:?}");
    assert_eq!(f.available("key-1", "gpt-4").await, map(&[("key-1/rpm", 0), ("key-1/tpm", 100), ("proj-1/rpm", 3)]));

    // 8 at once with one request id: one charge, one lease.
    let mut keyed = acquire("key-4", "gpt-4", &[("rpm", 1)]);
    keyed.request_id = unique("same");
    let calls = (0..8).map(|_| {
        let (mut client, request) = (f.client(), keyed.clone());
        async move { client.acquire(request).await.map(|r| r.into_inner()) }
    });
    let results: Vec<AcquireResponse> =
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.expect("admitted or replayed")).collect();
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.lease_id == results[0].lease_id));
    assert_eq!(f.available("key-4", "gpt-4").await, map(&[("key-4/rpm", 9), ("proj-2/rpm", 1)]));
}

#[tokio::test]
async fn concurrent_acquires_never_over_admit_memory() {
    concurrent_acquires_never_over_admit(Store::Memory).await;
}

#[tokio::test]
async fn concurrent_acquires_never_over_admit_dynamodb() {
    concurrent_acquires_never_over_admit(Store::Dynamo).await;
}

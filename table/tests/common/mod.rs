//! Harness of the zael-table integration tests: one moto server per test binary (started on
//! a free 127.0.0.1 port with bounded waits), one table per test, helpers to read and stamp
//! items directly, and the Python zae-limiter 0.17.0 oracle (`tests/py/oracle.py`).
#![allow(dead_code)]

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zael_core::bucket::{BucketLimit, Charge, ChargeOutcome, EpochMillis};
use zael_core::keys::BucketKey;
use zael_core::store::{BucketRequest, BucketStore, StoreError};
use zael_table::{DynamoStore, DynamoStoreOptions};

pub const REGION: &str = "us-east-1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The test virtualenv: `$ZAEL_VENV` or `<repo>/.venv`.
pub fn venv() -> PathBuf {
    match std::env::var_os("ZAEL_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => repo_root().join(".venv"),
    }
}

pub fn python() -> PathBuf {
    let p = venv().join("bin").join("python");
    assert!(p.is_file(), "{} missing: run scripts/setup-test-env", p.display());
    p
}

fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("py").join(name)
}

pub struct Moto {
    pub endpoint: String,
    _child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The moto server of this test binary (it exits with the binary).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = free_port();
        // moto logs every request: to a file, never a pipe nobody drains (a full pipe blocks it).
        let log = std::env::temp_dir().join(format!("zael-table-moto-{}-{port}.log", std::process::id()));
        let mut child = Command::new(python())
            .arg(py_script("moto_locked.py"))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log"))
            .spawn()
            .expect("spawn moto");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("moto exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "moto did not listen on {port} within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), _child: child }
    })
}

/// A table name unique to this test binary run.
pub fn table_name(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), test.replace('_', "-"))
}

pub async fn client() -> Client {
    zael_table::testing::local_client(&moto().endpoint, REGION).await
}

/// A fresh table with the version record and `namespaces` registered; their ids.
pub async fn setup(table: &str, namespaces: &[&str]) -> Vec<String> {
    zael_table::testing::setup_table(&client().await, table, namespaces).await.expect("setup table")
}

pub fn options(table: &str) -> DynamoStoreOptions {
    DynamoStoreOptions { call_timeout: Duration::from_secs(20), ..DynamoStoreOptions::new(table) }
}

pub async fn store_with(options: DynamoStoreOptions) -> DynamoStore {
    let config = zael_table::testing::local_sdk_config(&moto().endpoint, REGION).await;
    DynamoStore::from_sdk_config(&config, options).await.expect("open store")
}

pub async fn store(table: &str) -> DynamoStore {
    store_with(options(table)).await
}

pub fn now() -> EpochMillis {
    EpochMillis::now()
}

/// A bucket of `capacity` tokens refilling `rate` per `period_secs`, charged `costs` (strict).
pub fn request(ns: &str, entity: &str, resource: &str, limit: BucketLimit, charges: &[Charge]) -> BucketRequest {
    BucketRequest {
        key: BucketKey { namespace: ns.into(), resource: resource.into(), entity: entity.to_owned() },
        limit,
        charges: charges.to_vec(),
        reserve: true,
    }
}

pub fn strict(cost: u64) -> Charge {
    Charge { cost, allow_debt: false }
}

pub fn debt(cost: u64) -> Charge {
    Charge { cost, allow_debt: true }
}

pub async fn charge_one(store: &DynamoStore, req: &BucketRequest, now: EpochMillis) -> Vec<ChargeOutcome> {
    store.charge(std::slice::from_ref(req), now).await.expect("charge").remove(0)
}

pub async fn try_charge(
    store: &DynamoStore,
    req: &BucketRequest,
    now: EpochMillis,
) -> Result<Vec<ChargeOutcome>, StoreError> {
    store.charge(std::slice::from_ref(req), now).await.map(|mut v| v.remove(0))
}

pub fn admitted(outcomes: &[ChargeOutcome]) -> Vec<bool> {
    outcomes.iter().map(|o| o.admitted).collect()
}

pub type Item = HashMap<String, AttributeValue>;

pub async fn get_item(table: &str, pk: &str) -> Option<Item> {
    client()
        .await
        .get_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk.to_owned()))
        .key("SK", AttributeValue::S("#STATE".to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
}

pub fn num(item: &Item, attr: &str) -> i64 {
    item.get(attr)
        .and_then(|v| v.as_n().ok())
        .unwrap_or_else(|| panic!("{attr} missing in {item:?}"))
        .parse()
        .expect("int")
}

/// `SET` the given attributes on an item.
pub async fn stamp(table: &str, pk: &str, attrs: &[(&str, AttributeValue)]) {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut sets = Vec::new();
    for (i, (attr, value)) in attrs.iter().enumerate() {
        names.insert(format!("#a{i}"), (*attr).to_owned());
        values.insert(format!(":v{i}"), value.clone());
        sets.push(format!("#a{i} = :v{i}"));
    }
    client()
        .await
        .update_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk.to_owned()))
        .key("SK", AttributeValue::S("#STATE".to_owned()))
        .update_expression(format!("SET {}", sets.join(", ")))
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await
        .expect("stamp");
}

pub async fn remove_attrs(table: &str, pk: &str, attrs: &[&str]) {
    let mut names = HashMap::new();
    let mut removes = Vec::new();
    for (i, attr) in attrs.iter().enumerate() {
        names.insert(format!("#a{i}"), (*attr).to_owned());
        removes.push(format!("#a{i}"));
    }
    client()
        .await
        .update_item()
        .table_name(table)
        .key("PK", AttributeValue::S(pk.to_owned()))
        .key("SK", AttributeValue::S("#STATE".to_owned()))
        .update_expression(format!("REMOVE {}", removes.join(", ")))
        .set_expression_attribute_names(Some(names))
        .send()
        .await
        .expect("remove");
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Writes `entities` (an `--entities` file) into `table` through the library
/// (`oracle.py entities-file`).
pub async fn load_entities(table: &str, entities: &str) {
    let path = std::env::temp_dir().join(format!("{table}.entities.yaml"));
    std::fs::write(&path, entities).expect("write the entities file");
    oracle(&["entities-file".into(), table.to_owned(), path.display().to_string()]).await;
    std::fs::remove_file(&path).ok();
}

/// The id of namespace `name` in `table`.
pub async fn namespace_id(table: &str, name: &str) -> String {
    zael_table::admin::resolve_namespace(&client().await, table, name).await.expect("read").expect("ns")
}

/// Runs the Python oracle with the moto endpoint and dummy credentials; its JSON stdout.
pub async fn oracle(args: &[String]) -> String {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(py_script("oracle.py"))
        .args(args)
        .env("ZAEL_TEST_ENDPOINT", &moto().endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_SESSION_TOKEN", "testing")
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_REGION", REGION)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("oracle within 120 s")
        .expect("run oracle");
    assert!(
        out.status.success(),
        "oracle {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

/// Starts the oracle's `hammer` (150 acquires of one token, 8 at a time) on `tenant/hot/api`
/// with `capacity` a day, and returns once the library is writing (its fast path debits `wcu`,
/// which a zael create does not); the task answers how many it admitted.
pub async fn library_hammer(table: &str, pk: &str, capacity: u64) -> tokio::task::JoinHandle<usize> {
    let cap = capacity.to_string();
    let args: Vec<String> = ["hammer", table, "tenant", "hot", "api", &cap, &cap, "86400", "150", "8"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let python = tokio::spawn(async move {
        let out = oracle(&args).await;
        out.trim_start_matches("{\"admitted\": ").trim_end_matches('}').parse().expect("count")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_item(table, pk).await.is_none_or(|item| num(&item, "b_wcu_tc") == 0) {
        assert!(Instant::now() < deadline, "the library never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    python
}

/// `tasks` concurrent tasks on each store, each charging `req` `calls` times; the admissions.
pub async fn charge_concurrently(stores: &[DynamoStore], tasks: usize, calls: usize, req: &BucketRequest) -> usize {
    let admits = std::sync::Arc::new(AtomicUsize::new(0));
    let mut running = Vec::new();
    for store in stores {
        for _ in 0..tasks {
            let (store, req, admits) = (store.clone(), req.clone(), admits.clone());
            running.push(tokio::spawn(async move {
                for _ in 0..calls {
                    if charge_one(&store, &req, now()).await[0].admitted {
                        admits.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in running {
        t.await.expect("task");
    }
    admits.load(Ordering::Relaxed)
}

/// What [`after_emptied`] saw: decisions admitted (before the first rejection), rejected, and
/// the store's reads and writes meanwhile.
pub struct Emptied {
    pub held: i64,
    pub rejected: u64,
    pub reads: u64,
    pub writes: u64,
}

/// Decides with `decide` (admitted or not) one decision every 10 ms for 2.5 s (longer than
/// two reservation horizons and two of the rejection cache's trust, 1 s each) on a bucket
/// another writer emptied, `store` counting the calls; fails the test on an admission after a
/// rejection (nobody gives tokens back).
pub async fn after_emptied<F: std::future::Future<Output = bool>>(
    store: &DynamoStore,
    mut decide: impl FnMut() -> F,
) -> Emptied {
    let before = store.calls();
    let (mut held, mut rejected) = (0_i64, 0_u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        if decide().await {
            assert_eq!(rejected, 0, "an admission after a rejection: nobody gave tokens back");
            held += 1;
        } else {
            rejected += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = store.calls();
    let (reads, writes) = (calls.get_item - before.get_item, calls.update_item - before.update_item);
    eprintln!("held {held}, rejected {rejected}: {reads} reads, {writes} writes");
    Emptied { held, rejected, reads, writes }
}

//! `DynamoStore::connect` through aws-config's standard chain, with dummy credentials from
//! the environment. The only test of this binary: it sets process environment variables,
//! which is sound only while no other thread reads them.

mod common;

use common::*;
use std::time::Duration;
use zael_table::{ConnectError, DynamoStore, DynamoStoreOptions};

#[test]
fn connect_uses_the_standard_chain_and_the_endpoint() {
    // SAFETY: this binary runs this single test; no other thread exists yet that could read
    // the environment concurrently (the runtime below is started afterwards).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_PROFILE");
    }
    let endpoint = moto().endpoint.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let table = table_name("connect");
        setup(&table, &["ns"]).await;
        let options = DynamoStoreOptions {
            region: Some(REGION.into()),
            endpoint_url: Some(endpoint),
            call_timeout: Duration::from_secs(20),
            ..DynamoStoreOptions::new(table.clone())
        };
        let store = DynamoStore::connect(options.clone()).await.expect("connect");
        let req = request("ns", "e", "r", zael_core::bucket::BucketLimit::per_period(1, 1, 60), &[strict(1)]);
        assert_eq!(admitted(&charge_one(&store, &req, now()).await), [true]);
        assert_eq!(admitted(&charge_one(&store, &req, now()).await), [false]);

        let bad = DynamoStore::connect(DynamoStoreOptions { table: "bad_name".into(), ..options.clone() }).await;
        assert!(matches!(bad, Err(ConnectError::InvalidTable(_))));
        let missing = DynamoStore::connect(DynamoStoreOptions { table: "no-such-table".into(), ..options }).await;
        assert!(matches!(missing, Err(ConnectError::Unavailable { .. })), "{missing:?}");
    });
}

//! `zael-server --store dynamodb` against moto: the shared black-box scenarios
//! (`zael_tests::scenarios`) on a fresh table each, then what only a shared store shows: two
//! servers on one bucket (with and without token reservations, with the Python library), the
//! store's metrics, and `on_unavailable`. (moto going away and coming back:
//! `dynamodb_faults.rs`.)

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;
use zael_tests::moto::{Moto, namespaces_of};
use zael_tests::*;

/// The moto server of this test binary (it exits with the binary).
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// A server on a fresh table holding the namespaces of `config`.
async fn start(moto: &Moto, config: &str) -> Server {
    let namespaces = namespaces_of(&[config]);
    let (table, _) = moto.table(&namespaces.iter().map(String::as_str).collect::<Vec<_>>()).await;
    Server::builder().file("config.yaml", config).dynamodb(&moto.endpoint(), &table).start().await
}

/// The reference's rule keys (`scenarios::rule_keys`), on the DynamoDB store.
mod rule_keys {
    use super::*;
    use zael_tests::scenarios::rule_keys::{self, ARGS, CONFIG};

    async fn start() -> Server {
        let (table, _) = moto().table(&["keys"]).await;
        Server::builder().file("config.yaml", CONFIG).args(ARGS).dynamodb(&moto().endpoint(), &table).start().await
    }

    #[tokio::test]
    async fn values_a_share_threshold_pattern_matches_share_one_bucket() {
        rule_keys::values_a_share_threshold_pattern_matches_share_one_bucket(&start().await).await;
    }

    #[tokio::test]
    async fn quota_descriptors_are_over_together_and_rate_limits_alone() {
        rule_keys::quota_descriptors_are_over_together_and_rate_limits_alone(&start().await).await;
    }

    #[tokio::test]
    async fn dynamic_metadata_carries_the_request_and_the_passed_rules_metadata() {
        rule_keys::dynamic_metadata_carries_the_request_and_the_passed_rules_metadata(&start().await).await;
    }
}

/// One test per scenario, on the DynamoDB store.
macro_rules! on_dynamodb {
    ($($module:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[tokio::test]
            async fn $name() {
                let s = start(moto(), scenarios::$module::CONFIG).await;
                scenarios::$module::$name(&s).await;
            }
        )*)*
    };
}

on_dynamodb! {
    charging: [
        request_level_hits_addend_zero_counts_as_one,
        request_level_hits_addend_applies_to_every_descriptor,
        descriptor_hits_addend_zero_is_check_only,
        descriptor_hits_addend_overrides_request_level,
        rejected_charge_consumes_nothing_on_strict_rules,
        allow_debt_debit_past_the_balance_drives_it_negative_so_check_only_fails,
        strict_rule_drops_a_debit_past_the_balance,
        same_bucket_twice_in_one_request_is_charged_sequentially,
        blocklist_requests_per_unit_zero_is_always_over_limit,
        descriptors_are_charged_independently,
    ],
    overrides: [
        override_limit_applies_when_the_domain_exists,
        override_shares_the_bucket_of_the_config_limit_on_same_entries_and_unit,
    ],
    matching: [
        nested_descriptors_apply_the_limit_at_the_last_entry_only,
        depth_mismatch_gets_no_limit_and_charges_nothing,
        unknown_domain_unknown_key_and_entry_less_descriptor_get_no_limit,
    ],
    unlimited: [unlimited_rule_reports_u32_max_and_never_runs_out],
    errors: [
        empty_domain_is_invalid_argument,
        empty_descriptor_list_is_invalid_argument,
        entry_with_empty_key_is_invalid_argument,
        request_errors_are_counted_and_never_crash_the_server,
    ],
}

const SHARED: &str = r#"
domain: shared
descriptors:
  - key: k
    rate_limit: {unit: day, requests_per_unit: 50, name: daily}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_over_two_servers_admit_exactly_the_capacity() {
    let (table, _) = moto().table(&["shared"]).await;
    let endpoint = moto().endpoint();
    let a = Server::builder().file("c.yaml", SHARED).dynamodb(&endpoint, &table).start().await;
    let b = Server::builder().file("c.yaml", SHARED).dynamodb(&endpoint, &table).start().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        // Each client on its own connection, alternating servers.
        let mut client = RateLimitServiceClient::new(if i % 2 == 0 { a.new_channel() } else { b.new_channel() });
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..8 {
                let r = client.should_rate_limit(req("shared", vec![desc(&[("k", "hot")])])).await;
                out.push(r.map(|r| r.into_inner()));
            }
            out
        }));
    }
    let mut remaining = Vec::new();
    let mut over_count = 0;
    let mut errors = Vec::new();
    for t in tasks {
        for r in t.await.expect("task") {
            match r {
                Ok(resp) if resp.overall_code == Code::Ok as i32 => {
                    let left = resp.statuses[0].limit_remaining;
                    assert_response(&resp, Code::Ok, &[ok(50, Unit::Day, "daily", left)]);
                    remaining.push(left);
                }
                Ok(resp) => {
                    assert_response(&resp, Code::OverLimit, &[over(50, Unit::Day, "daily")]);
                    over_count += 1;
                }
                Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    }
    assert!(errors.is_empty(), "gRPC errors: {errors:?}");
    assert_eq!(remaining.len(), 50, "admitted across both servers");
    assert_eq!(over_count, 16 * 8 - 50);
    // Every token handed out once: each admission saw its own balance.
    let distinct: BTreeSet<u32> = remaining.iter().copied().collect();
    assert_eq!(distinct, (0..50).collect::<BTreeSet<u32>>());
    for s in [&a, &b] {
        assert!(!s.logs().contains("panicked"), "{}", s.log_tail());
    }
}

#[tokio::test]
async fn the_store_metrics_are_exposed() {
    let s = start(moto(), SHARED).await;
    let hot = || req("shared", vec![desc(&[("k", "metrics")])]);
    // First use (slow path), then warm admits (fast path), then rejections from the cache.
    s.should(hot().hits(10)).await;
    for _ in 0..3 {
        s.should(hot()).await;
    }
    s.should(hot().hits(37)).await;
    for _ in 0..3 {
        let r = s.should(hot()).await;
        assert_response(&r, Code::OverLimit, &[over(50, Unit::Day, "daily")]);
    }
    let m = s.metrics().await;
    let update_ok =
        m.get_or_zero("zael_dynamodb_requests_total", &[("operation", "UpdateItem"), ("outcome", "success")]);
    assert!(update_ok >= 4.0, "{}", m.text);
    assert!(m.get_or_zero("zael_dynamodb_requests_total", &[("operation", "TransactWriteItems")]) >= 1.0, "{}", m.text);
    assert!(m.get_or_zero("zael_dynamodb_fast_admits_total", &[]) >= 4.0, "{}", m.text);
    // moto reports the capacity of UpdateItem (not of transactions).
    let wcu = m.get_or_zero("zael_dynamodb_consumed_write_capacity_units_total", &[("operation", "UpdateItem")]);
    assert!(wcu >= 4.0, "{}", m.text);
    assert_eq!(m.get_or_zero("zael_dynamodb_bucket_decisions_total", &[]), 8.0, "{}", m.text);
    assert_eq!(m.get_or_zero("zael_dynamodb_rejection_cache_hits_total", &[]), 3.0, "{}", m.text);
    assert_eq!(m.get_or_zero("zael_dynamodb_decisions_total", &[("path", "cache_reject")]), 3.0, "{}", m.text);
    assert_eq!(m.type_of("zael_dynamodb_charge_duration_seconds").as_deref(), Some("histogram"), "{}", m.text);
    assert_eq!(m.type_of("zael_dynamodb_request_duration_seconds").as_deref(), Some("histogram"), "{}", m.text);
    assert!(m.text.contains("# HELP zael_dynamodb_fast_admits_total"), "described at start-up\n{}", m.text);
    assert!(m.has_family("zael_store_fail_open_total"), "{}", m.text);
    // Present at zero before any reservation: dashboards see zeros, not gaps.
    assert_eq!(m.get("zael_reservation_stranded_millitokens_total", &[]), Some(0.0), "{}", m.text);
}

const POLICY: &str = r#"
domain: open
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 5, name: five}
"#;

const CLOSED: &str = r#"
domain: closed
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 5, name: five}
"#;

#[tokio::test]
async fn on_unavailable_comes_from_the_system_config_and_the_flag_overrides_it() {
    // Its own moto: this test stops it.
    let mut moto = Moto::start();
    let (table, ids) = moto.table(&["open", "closed"]).await;
    moto.set_on_unavailable(&table, &ids[0], "allow").await;
    let endpoint = moto.endpoint();
    let builder = || {
        Server::builder()
            .file("open.yaml", POLICY)
            .file("closed.yaml", CLOSED)
            .dynamodb(&endpoint, &table)
            .store_timeout("300ms")
    };
    let table_says = builder().start().await;
    let env_allow = builder().env("ZAEL_ON_UNAVAILABLE", "allow").start().await;
    let flag_block = builder().args(["--on-unavailable", "block"]).start().await;
    let servers = [&table_says, &env_allow, &flag_block];
    // Each namespace used once while the table is up (this loads its system config).
    for (i, s) in servers.iter().enumerate() {
        for domain in ["open", "closed"] {
            let r = s.should(req(domain, vec![desc(&[("k", &format!("warm{i}"))])])).await;
            assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "five", 4)]);
        }
    }

    moto.stop();
    let call = |s: &'static str| req(s, vec![desc(&[("k", "warm0")]), desc(&[("k", "never-seen")])]);
    let fail_open = [ok(5, Unit::Minute, "five", 5).reset(1..=1), ok(5, Unit::Minute, "five", 5).reset(1..=1)];
    // The table's `allow` for `open`; the default `block` for `closed`.
    let r = table_says.should(call("open")).await;
    assert_response(&r, Code::Ok, &fail_open);
    let e = table_says.call(call("closed")).await.expect_err("closed blocks");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // ZAEL_ON_UNAVAILABLE=allow wins over the table's default.
    let r = env_allow.should(call("closed")).await;
    assert_response(&r, Code::Ok, &fail_open);
    // --on-unavailable block wins over the table's allow.
    let e = flag_block.call(call("open")).await.expect_err("the flag blocks");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    let m = table_says.metrics().await;
    assert_eq!(m.get_or_zero("zael_store_fail_open_total", &[("store", "dynamodb")]), 2.0, "{}", m.text);
    assert!(m.get_or_zero("zael_store_errors_total", &[("store", "dynamodb")]) >= 2.0, "{}", m.text);
    let m = flag_block.metrics().await;
    assert_eq!(m.get_or_zero("zael_store_fail_open_total", &[("store", "dynamodb")]), 0.0, "{}", m.text);
    for s in servers {
        assert!(!s.logs().contains("panicked"), "{}", s.log_tail());
    }
    // Bounded: the calls above each waited for the 300 ms store deadline at most.
    let started = std::time::Instant::now();
    let _ = flag_block.call(call("open")).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

const RESERVED: &str = r#"
domain: reserved
descriptors:
  - key: k
    rate_limit: {unit: day, requests_per_unit: 1000, name: daily}
  - key: exact
    reserve: false
    rate_limit: {unit: day, requests_per_unit: 1000, name: daily}
"#;

/// A hot bucket is answered from a reservation block (far fewer DynamoDB writes than
/// decisions, every answer the exact balance), and on SIGTERM the server gives the unused
/// tokens back before it exits: another server then sees exactly what was admitted.
#[tokio::test]
async fn reserved_tokens_go_back_on_sigterm() {
    let (table, _) = moto().table(&["reserved"]).await;
    let endpoint = moto().endpoint();
    let mut a = Server::builder()
        .file("c.yaml", RESERVED)
        .dynamodb(&endpoint, &table)
        .args(["--reservation-min-rate", "5", "--reservation-horizon", "60s"])
        .start()
        .await;
    let hot = || req("reserved", vec![desc(&[("k", "hot")])]);
    for i in 1..=60 {
        let r = a.should(hot()).await;
        assert_response(&r, Code::Ok, &[ok(1000, Unit::Day, "daily", 1000 - i)]);
    }
    let m = a.metrics().await;
    let local = m.get_or_zero("zael_reservation_local_decisions_total", &[]);
    assert!(local >= 40.0, "decisions answered from a block: {local}");
    // A rule with `reserve: false` on the same server: every decision its own write (the
    // first creates the bucket), none answered locally.
    let paths = |m: &zael_tests::metrics::Metrics| {
        ["slow_create", "fast_admit", "reserved"]
            .map(|p| m.get_or_zero("zael_dynamodb_decisions_total", &[("path", p)]))
    };
    let before = paths(&m);
    for i in 1..=20 {
        let r = a.should(req("reserved", vec![desc(&[("exact", "x")])])).await;
        assert_response(&r, Code::Ok, &[ok(1000, Unit::Day, "daily", 1000 - i)]);
    }
    let m = a.metrics().await;
    let after = paths(&m);
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [1.0, 19.0, 0.0], "{}", m.text);
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(status.success(), "{}", a.log_tail());
    assert!(a.logs().contains("reserved tokens given back"), "{}", a.log_tail());
    let b = Server::builder()
        .file("c.yaml", RESERVED)
        .dynamodb(&endpoint, &table)
        .args(["--reservations", "off"])
        .start()
        .await;
    let check = b.should(req("reserved", vec![desc(&[("k", "hot")]).hits(0)])).await;
    assert_response(&check, Code::Ok, &[ok(1000, Unit::Day, "daily", 940)]);
}

const CONTENDED: &str = r#"
domain: contended
descriptors:
  - key: k
    rate_limit: {unit: day, requests_per_unit: 400, name: daily}
"#;

/// Two zael-server processes with token reservations, 16 clients each, and the Python library
/// (its own acquires, 4 at a time) on one bucket: together never more than its 400 tokens, blocks
/// answered decisions, and after both servers stop (giving back what they held) the bucket
/// holds exactly what nobody was admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_reserving_servers_and_the_library_share_one_bucket_exactly() {
    const CAPACITY: u32 = 400;
    let (table, _) = moto().table(&["contended"]).await;
    let endpoint = moto().endpoint();
    let reserving = || {
        Server::builder().file("c.yaml", CONTENDED).dynamodb(&endpoint, &table).args([
            "--reservation-min-rate",
            "5",
            "--reservation-horizon",
            "1s",
        ])
    };
    let (mut a, mut b) = (reserving().start().await, reserving().start().await);
    let checker = Server::builder()
        .file("c.yaml", CONTENDED)
        .dynamodb(&endpoint, &table)
        .args(["--reservations", "off"])
        .start()
        .await;
    let check = || req("contended", vec![desc(&[("k", "hot")]).hits(0)]);
    // The library's bucket for the rule: entity `k:hot`, resource `k`, limit `hits`.
    let python = tokio::spawn(async move {
        let args = ["hammer", &table, "contended", "k:hot", "k", "400", "400", "86400", "300", "4"];
        let out = moto().run_script("table/tests/py/oracle.py", &args).await;
        out.trim().trim_start_matches("{\"admitted\": ").trim_end_matches('}').parse::<u32>().expect("a count")
    });
    // The servers start once the library has admitted (its first acquire creates the bucket).
    let started = poll_until(Duration::from_secs(60), Duration::from_millis(50), || async {
        let r = checker.call(check()).await.ok()?;
        (r.statuses[0].limit_remaining < CAPACITY).then_some(())
    })
    .await;
    assert!(started.is_some(), "the library never admitted\n{}", moto().log_tail());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut client = RateLimitServiceClient::new(if i % 2 == 0 { a.new_channel() } else { b.new_channel() });
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut errors) = (0_u32, Vec::new());
            for _ in 0..30 {
                match client.should_rate_limit(req("contended", vec![desc(&[("k", "hot")])])).await {
                    Ok(r) if r.get_ref().overall_code == Code::Ok as i32 => admitted += 1,
                    Ok(r) => assert_response(r.get_ref(), Code::OverLimit, &[over(CAPACITY, Unit::Day, "daily")]),
                    Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            (admitted, errors)
        }));
    }
    let mut zael = 0;
    for t in tasks {
        let (admitted, errors) = t.await.expect("task");
        assert!(errors.is_empty(), "gRPC errors: {errors:?}");
        zael += admitted;
    }
    let library = python.await.expect("the library's hammer");
    eprintln!("admitted: zael {zael} of 960, library {library} of 300");
    assert!(zael + library <= CAPACITY, "over-admission: zael {zael} + library {library} > {CAPACITY}");
    assert!(zael > 0 && library > 0, "both sides admitted: zael {zael}, library {library}");
    let mut local = 0.0;
    for s in [&a, &b] {
        local += s.metrics().await.get_or_zero("zael_reservation_local_decisions_total", &[]);
    }
    assert!(local > 0.0, "no decision was answered from a block");
    for s in [&mut a, &mut b] {
        s.signal(libc::SIGTERM);
        let status = s.wait_exit(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{}", s.log_tail());
        assert!(!s.logs().contains("panicked"), "{}", s.log_tail());
    }
    // Every block given back: the bucket holds exactly what was not admitted (refill over the
    // test is a fraction of a token: 400 a day is one per 216 s).
    let r = checker.should(check()).await;
    assert_response(&r, Code::Ok, &[ok(CAPACITY, Unit::Day, "daily", CAPACITY - zael - library)]);
}

//! Config over xDS (`--config-type grpc-xds-sotw`) from a management server written for the
//! tests (`zael_tests::xds`): the domains served after each snapshot, ACK and NACK with the
//! right version and nonce, the last good config kept on a bad snapshot, re-subscription after
//! the management server restarts, the node and headers sent, TLS and mTLS to it, and health
//! before the first snapshot (with and without `--force-start-without-initial-config`).

use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit as ConfUnit,
};
use std::time::Duration;
use zael_tests::tls::{TestCa, write_pem};
use zael_tests::xds::{ManagementServer, Snapshot};
use zael_tests::*;

const WAIT: Duration = Duration::from_secs(15);

/// A domain with one rule: `key` limited to `per_minute`.
fn domain(name: &str, key: &str, per_minute: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: format!("{name}-config"),
        domain: name.into(),
        descriptors: vec![RateLimitDescriptor {
            key: key.into(),
            rate_limit: Some(RateLimitPolicy {
                unit: ConfUnit::Minute as i32,
                requests_per_unit: per_minute,
                name: format!("{name}-{key}"),
                ..Default::default()
            }),
            ..Default::default()
        }],
    }
}

/// A server subscribed to `management` with quick reconnects, not waiting for health.
async fn subscribed(management: &ManagementServer, extra: &[&str]) -> Server {
    Server::builder()
        .no_config_arg()
        .args(["--config-type", "grpc-xds-sotw", "--xds-backoff-initial", "100ms", "--xds-backoff-max", "200ms"])
        .args(["--xds-server", &management.addr.to_string()])
        .args(extra.iter().copied())
        .no_wait()
        .start()
        .await
}

async fn wait_healthy(s: &mut Server) {
    s.wait_healthy(WAIT).await;
}

/// The status of `descriptor` in `domain` once it has the limit named `name` (a snapshot
/// applies a moment after its ACK is sent).
async fn served(s: &Server, domain_name: &str, key: &str, name: &str) -> bool {
    poll_until(WAIT, Duration::from_millis(50), || async {
        let r = s.call(req(domain_name, vec![desc(&[(key, "v")])])).await.ok()?;
        r.statuses[0].current_limit.as_ref().filter(|l| l.name == name).map(|_| ())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn snapshots_are_served_acked_nacked_and_resubscribed_after_a_restart() {
    let management = ManagementServer::start(None, None).await;
    let mut s = subscribed(
        &management,
        &["--xds-node-id", "zael-1", "--xds-node-metadata", "cluster=gw,zone=a", "--xds-headers", "x-token=secret"],
    )
    .await;

    // Subscribed, nothing served yet: not healthy, and requests are UNAVAILABLE.
    let first = poll_until(WAIT, Duration::from_millis(20), || async { management.received().into_iter().next() })
        .await
        .expect("a subscription");
    let node = first.request.node.clone().expect("node");
    assert_eq!(node.id, "zael-1");
    let metadata: Vec<_> = {
        let mut m: Vec<_> = node.metadata.expect("metadata").fields.into_iter().map(|(k, v)| (k, v.kind)).collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(metadata, ["cluster", "zone"]);
    assert_eq!(first.request.type_url, zael_tests::xds::TYPE_URL);
    assert_eq!((first.request.version_info.as_str(), first.request.response_nonce.as_str()), ("", ""));
    assert!(first.headers.contains(&("x-token".to_owned(), "secret".to_owned())), "{:?}", first.headers);
    let health = s.http_get("/healthcheck").await.expect("http");
    assert_eq!(health.status, 500, "not healthy before the first snapshot: {:?}", health.body);
    let refused = s.call(req("gw", vec![desc(&[("user", "v")])])).await.expect_err("no config yet");
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    // v1: served and ACKed with its version and nonce.
    management.set(Snapshot::of("v1", &[domain("gw", "user", 2)]));
    wait_healthy(&mut s).await;
    let ack = management.answer_to("v1", WAIT).await.expect("an answer to v1").request;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("v1", None));
    assert!(served(&s, "gw", "user", "gw-user").await);
    let r = s.should(req("gw", vec![desc(&[("user", "alice")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "gw-user", 1)]);

    // v2 does not compile (a domain in two resources): NACKed with v1, v1 still served.
    management.set(Snapshot::of("v2", &[domain("gw", "user", 5), domain("gw", "ip", 5)]));
    let nack = management.answer_to("v2", WAIT).await.expect("an answer to v2").request;
    assert_eq!(nack.version_info, "v1", "a NACK names the last good version");
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
    assert!(detail.message.contains("domain 'gw' is already defined"), "{}", detail.message);
    let r = s.should(req("gw", vec![desc(&[("user", "alice")])])).await;
    assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "gw-user", 0)]);

    // v3 replaces the whole config: the old domain is gone.
    management.set(Snapshot::of("v3", &[domain("api", "path", 7)]));
    assert_eq!(management.answer_to("v3", WAIT).await.expect("v3 answered").request.version_info, "v3");
    assert!(served(&s, "api", "path", "api-path").await);
    let r = s.should(req("gw", vec![desc(&[("user", "alice")])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);

    // The management server restarts on the same address: the client re-subscribes with the
    // last version it ACKed and takes the new server's snapshot.
    let addr = management.addr;
    management.stop().await;
    let restarted = ManagementServer::start(Some(addr), None).await;
    restarted.set(Snapshot::of("v4", &[domain("api", "path", 9)]));
    let again = poll_until(WAIT, Duration::from_millis(20), || async { restarted.received().into_iter().next() })
        .await
        .expect("a new subscription");
    assert_eq!(again.request.version_info, "v3");
    // The ACK is sent once the snapshot applied.
    assert_eq!(restarted.answer_to("v4", WAIT).await.expect("v4 answered").request.version_info, "v4");
    let r = s.should(req("api", vec![desc(&[("path", "/x")])])).await;
    assert_response(&r, Code::Ok, &[ok(9, Unit::Minute, "api-path", 8)]);
    restarted.stop().await;
}

#[tokio::test]
async fn the_subscription_runs_over_tls_and_mtls() {
    let ca = TestCa::new("xds-ca");
    let dir = tempfile::tempdir().expect("tempdir");
    write_pem(dir.path(), "client", &ca.client_cert("zael"));
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).expect("write ca");
    let management = ManagementServer::start(None, Some((ca.server_cert(), Some(ca.cert_pem())))).await;
    management.set(Snapshot::of("t1", &[domain("secure", "user", 3)]));
    let path = |name: &str| dir.path().join(name).display().to_string();
    let tls = ["--xds-tls", "--xds-tls-ca", &path("ca.crt"), "--xds-tls-server-name", "localhost"];

    let mut s = subscribed(
        &management,
        &[&tls[..], &["--xds-tls-cert", &path("client.crt"), "--xds-tls-key", &path("client.key")]].concat(),
    )
    .await;
    wait_healthy(&mut s).await;
    let r = s.should(req("secure", vec![desc(&[("user", "u")])])).await;
    assert_response(&r, Code::Ok, &[ok(3, Unit::Minute, "secure-user", 2)]);
    assert_eq!(management.answer_to("t1", WAIT).await.expect("ACK").request.version_info, "t1");

    // Without a client certificate the management server refuses the handshake: no config.
    let before = management.received().len();
    let s = subscribed(&management, &tls).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.http_get("/healthcheck").await.expect("http").status, 500);
    assert_eq!(management.received().len(), before, "no request got through without a client certificate");
    management.stop().await;
}

#[tokio::test]
async fn forced_start_is_healthy_before_the_first_snapshot_and_answers_unavailable() {
    let management = ManagementServer::start(None, None).await;
    let mut s = subscribed(&management, &["--force-start-without-initial-config"]).await;
    wait_healthy(&mut s).await;
    let refused = s.call(req("gw", vec![desc(&[("user", "v")])])).await.expect_err("no config yet");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    management.set(Snapshot::of("f1", &[domain("gw", "user", 4)]));
    assert!(served(&s, "gw", "user", "gw-user").await);
    management.stop().await;
}

/// The environment Envoy Gateway writes into its rate limit Deployment (its
/// `internal/infrastructure/kubernetes/ratelimit` testdata `default.yaml`: xDS over mTLS, TLS on
/// the gRPC port, Prometheus on its own port, Redis settings that do not apply here), with
/// only the ports changed (free ones) and the command zael-server: it starts, is healthy before
/// the first snapshot, serves the snapshot the management server pushes over TLS, and
/// exports the metrics where Envoy Gateway scrapes them.
#[tokio::test]
async fn the_envoy_gateway_deployment_environment_serves_a_pushed_snapshot() {
    let ca = TestCa::new("envoy-gateway-ca");
    let certs = tempfile::tempdir().expect("tempdir");
    write_pem(certs.path(), "tls", &ca.server_and_client_cert());
    std::fs::write(certs.path().join("ca.crt"), ca.cert_pem()).expect("ca");
    let cert = |name: &str| certs.path().join(name).display().to_string();
    let management = ManagementServer::start(None, Some((ca.server_cert(), Some(ca.cert_pem())))).await;
    let metrics_port = free_port();
    let env = [
        ("RUNTIME_ROOT", "/data".to_owned()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".into()),
        ("RUNTIME_IGNOREDOTFILES", "true".into()),
        ("RUNTIME_WATCH_ROOT", "false".into()),
        ("LOG_LEVEL", "info".into()),
        ("USE_STATSD", "false".into()),
        ("CONFIG_TYPE", "GRPC_XDS_SOTW".into()),
        ("CONFIG_GRPC_XDS_SERVER_URL", format!("localhost:{}", management.addr.port())),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit".into()),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", cert("tls.crt")),
        ("GRPC_SERVER_TLS_KEY", cert("tls.key")),
        ("GRPC_SERVER_TLS_CA_CERT", cert("ca.crt")),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true".into()),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", cert("tls.crt")),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", cert("tls.key")),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", cert("ca.crt")),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()),
        ("REDIS_SOCKET_TYPE", "tcp".into()),
        ("REDIS_URL", "redis.redis.svc:6379".into()),
        ("USE_PROMETHEUS", "true".into()),
        ("PROMETHEUS_ADDR", format!(":{metrics_port}")),
        ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml".into()),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms".into()),
    ];
    let mut builder = Server::builder().no_config_arg().addrs_from_env().no_wait();
    for (k, v) in &env {
        builder = builder.env(k, v);
    }
    let mut s = builder.start().await;
    s.wait_healthy(WAIT).await;
    assert!(s.logs().contains("envoyproxy/ratelimit setting REDIS_URL: ignored"), "{}", s.log_tail());

    management.set(Snapshot::of("eg-1", &[domain("default/eg/https", "user", 3)]));
    assert_eq!(management.answer_to("eg-1", WAIT).await.expect("ACK").request.version_info, "eg-1");
    let received = management.received();
    assert_eq!(received[0].request.node.as_ref().expect("node").id, "envoy-ratelimit");

    // The RLS over TLS (GRPC_SERVER_USE_TLS), as Envoy calls it.
    let channel = zael_tests::tls::tls_channel(s.grpc_addr, &ca.cert_pem(), None).await.expect("TLS to the RLS");
    let mut rls = RateLimitServiceClient::new(channel);
    let answer = poll_until(WAIT, Duration::from_millis(50), || {
        let mut rls = rls.clone();
        async move {
            let r = rls.should_rate_limit(req("default/eg/https", vec![desc(&[("user", "u")])])).await.ok()?;
            r.into_inner().statuses[0].current_limit.is_some().then_some(())
        }
    })
    .await;
    assert!(answer.is_some(), "the pushed domain is served over TLS");
    let r =
        rls.should_rate_limit(req("default/eg/https", vec![desc(&[("user", "u")])])).await.expect("rls").into_inner();
    assert_response(&r, Code::Ok, &[ok(3, Unit::Minute, "default/eg/https-user", 1)]);

    let metrics =
        http_request(([127, 0, 0, 1], metrics_port).into(), "GET", "/metrics", &[], None).await.expect("metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("zael_decisions_total{domain=\"default/eg/https\",code=\"ok\"}"), "{}", metrics.body);
    management.stop().await;
}

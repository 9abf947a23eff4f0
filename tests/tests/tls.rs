//! TLS and mTLS on the gRPC listener; certificate reload.

use std::net::SocketAddr;
use std::time::Duration;
use zael_tests::tls::{Pem, TestCa, tls_channel, write_pem};
use zael_tests::*;

const CONFIG: &str = r#"
domain: tls
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 100}
"#;

/// One ShouldRateLimit over TLS; `Err` describes any connect/handshake/call failure.
async fn call_over_tls(addr: SocketAddr, ca: &str, identity: Option<&Pem>) -> Result<(), String> {
    let ch = tls_channel(addr, ca, identity).await?;
    let mut c = RateLimitServiceClient::new(ch);
    let r = c
        .should_rate_limit(req("tls", vec![desc(&[("k", &unique("c"))])]))
        .await
        .map_err(|e| format!("call: {:?} {}", e.code(), e.message()))?
        .into_inner();
    assert_response(&r, Code::Ok, &[ok(100, Unit::Minute, "", 99)]);
    Ok(())
}

fn tls_args(dir: &std::path::Path, client_ca: bool) -> Vec<String> {
    let mut a = vec![
        "--tls-cert".to_string(),
        dir.join("server.crt").display().to_string(),
        "--tls-key".to_string(),
        dir.join("server.key").display().to_string(),
    ];
    if client_ca {
        a.push("--tls-client-ca".to_string());
        a.push(dir.join("clients-ca.crt").display().to_string());
    }
    a
}

#[tokio::test]
async fn tls_server_presents_its_certificate_and_serves_rls() {
    let ca = TestCa::new("zael test ca");
    let certs = tempfile::tempdir().unwrap();
    write_pem(certs.path(), "server", &ca.server_cert());
    let s = Server::builder().file("c.yaml", CONFIG).args(tls_args(certs.path(), false)).start().await;
    call_over_tls(s.grpc_addr, &ca.cert_pem(), None).await.unwrap_or_else(|e| panic!("TLS call failed: {e}"));
    // A client trusting another CA refuses the server's certificate.
    let other = TestCa::new("other ca");
    let r = call_over_tls(s.grpc_addr, &other.cert_pem(), None).await;
    assert!(r.is_err(), "handshake with an untrusted server certificate succeeded");
    // Plaintext gRPC on the TLS port fails.
    let r = s.call(req("tls", vec![desc(&[("k", "plain")])])).await;
    assert!(r.is_err(), "plaintext call on the TLS port succeeded: {r:?}");
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_signed_by_the_client_ca() {
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let rogue_ca = TestCa::new("rogue ca");
    let certs = tempfile::tempdir().unwrap();
    write_pem(certs.path(), "server", &server_ca.server_cert());
    std::fs::write(certs.path().join("clients-ca.crt"), client_ca.cert_pem()).unwrap();
    let s = Server::builder().file("c.yaml", CONFIG).args(tls_args(certs.path(), true)).start().await;

    let good = client_ca.client_cert("good-client");
    call_over_tls(s.grpc_addr, &server_ca.cert_pem(), Some(&good))
        .await
        .unwrap_or_else(|e| panic!("mTLS call with a valid client certificate failed: {e}"));

    let r = call_over_tls(s.grpc_addr, &server_ca.cert_pem(), None).await;
    assert!(r.is_err(), "client without a certificate was accepted");

    let rogue = rogue_ca.client_cert("rogue-client");
    let r = call_over_tls(s.grpc_addr, &server_ca.cert_pem(), Some(&rogue)).await;
    assert!(r.is_err(), "client certificate from another CA was accepted");

    // Still serving valid clients afterwards.
    call_over_tls(s.grpc_addr, &server_ca.cert_pem(), Some(&good))
        .await
        .unwrap_or_else(|e| panic!("valid client after rejected ones: {e}"));
}

#[tokio::test]
async fn tls_certificates_are_reloaded_when_the_files_change() {
    let ca1 = TestCa::new("ca one");
    let ca2 = TestCa::new("ca two");
    let certs = tempfile::tempdir().unwrap();
    write_pem(certs.path(), "server", &ca1.server_cert());
    let s = Server::builder().file("c.yaml", CONFIG).args(tls_args(certs.path(), false)).start().await;
    call_over_tls(s.grpc_addr, &ca1.cert_pem(), None).await.unwrap_or_else(|e| panic!("initial TLS call: {e}"));

    // Rotate to a certificate from another CA.
    write_pem(certs.path(), "server", &ca2.server_cert());
    let addr = s.grpc_addr;
    let ca2_pem = ca2.cert_pem();
    let rotated = poll_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let ca2_pem = ca2_pem.clone();
        async move { call_over_tls(addr, &ca2_pem, None).await.ok() }
    })
    .await;
    assert!(rotated.is_some(), "new certificate not served within 15 s of the file change");
    let r = call_over_tls(s.grpc_addr, &ca1.cert_pem(), None).await;
    assert!(r.is_err(), "old certificate still served after rotation");
}

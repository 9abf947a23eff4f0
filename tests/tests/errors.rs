//! Request errors: gRPC INVALID_ARGUMENT with a message naming the problem; never a panic.

use zael_tests::scenarios::errors::{CONFIG, assert_invalid, assert_still_healthy};
use zael_tests::*;

#[tokio::test]
async fn empty_domain_is_invalid_argument() {
    scenarios::errors::empty_domain_is_invalid_argument(&Server::with_config(scenarios::errors::CONFIG).await).await;
}

#[tokio::test]
async fn empty_descriptor_list_is_invalid_argument() {
    scenarios::errors::empty_descriptor_list_is_invalid_argument(&Server::with_config(scenarios::errors::CONFIG).await)
        .await;
}

#[tokio::test]
async fn entry_with_empty_key_is_invalid_argument() {
    scenarios::errors::entry_with_empty_key_is_invalid_argument(&Server::with_config(scenarios::errors::CONFIG).await)
        .await;
}

#[tokio::test]
async fn override_with_unknown_unit_is_invalid_argument() {
    let s = Server::with_config(CONFIG).await;
    assert_invalid(
        s.call(req("err", vec![desc(&[("k", "a")]).limit(3, RateLimitUnit::Unknown)])).await,
        "override unit UNKNOWN",
        &[&["unit"]],
    );
    // Also an out-of-range enum value.
    let mut d = desc(&[("k", "a")]);
    d.limit = Some(RateLimitOverride { requests_per_unit: 3, unit: 99 });
    assert_invalid(s.call(req("err", vec![d])).await, "override unit 99", &[&["unit"]]);
    assert_still_healthy(&s).await;
}

#[tokio::test]
async fn more_than_64_descriptors_is_invalid_argument_and_64_is_fine() {
    let s = Server::with_config(CONFIG).await;
    let many =
        |n: usize| -> Vec<RateLimitDescriptor> { (0..n).map(|i| desc(&[("nomatch", &format!("v{i}"))])).collect() };
    let r = s.should(req("err", many(64))).await;
    assert_response(&r, Code::Ok, &vec![no_limit(); 64]);
    assert_invalid(
        s.call(req("err", many(65))).await,
        "65 descriptors",
        &[&["descriptor"], &["64", "too many", "at most", "maximum", "limit"]],
    );
    assert_still_healthy(&s).await;
}

#[tokio::test]
async fn more_than_32_entries_is_invalid_argument_and_32_is_fine() {
    let s = Server::with_config(CONFIG).await;
    let entries = |n: usize| -> Vec<(String, String)> { (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect() };
    let to_desc = |e: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        desc(&refs)
    };
    let r = s.should(req("err", vec![to_desc(&entries(32))])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
    assert_invalid(
        s.call(req("err", vec![to_desc(&entries(33))])).await,
        "33 entries",
        &[&["entr"], &["32", "too many", "at most", "maximum", "limit"]],
    );
    assert_still_healthy(&s).await;
}

#[tokio::test]
async fn key_or_value_over_1024_bytes_is_invalid_argument_and_1024_is_fine() {
    let s = Server::with_config(CONFIG).await;
    let k1024 = "k".repeat(1024);
    let v1024 = "v".repeat(1024);
    let k1025 = "k".repeat(1025);
    let v1025 = "v".repeat(1025);
    let r = s.should(req("err", vec![desc(&[(k1024.as_str(), v1024.as_str())])])).await;
    assert_response(&r, Code::Ok, &[no_limit()]);
    // A 1024-byte value on a limited key is charged normally.
    let r = s.should(req("err", vec![desc(&[("k", v1024.as_str())])])).await;
    assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);
    assert_invalid(
        s.call(req("err", vec![desc(&[(k1025.as_str(), "v")])])).await,
        "1025-byte key",
        &[&["key"], &["1024", "too long", "long", "length", "size", "bytes"]],
    );
    assert_invalid(
        s.call(req("err", vec![desc(&[("k", v1025.as_str())])])).await,
        "1025-byte value",
        &[&["value"], &["1024", "too long", "long", "length", "size", "bytes"]],
    );
    // Multi-byte characters count in bytes: 342 x 3-byte chars = 1026 bytes.
    let wide = "€".repeat(342);
    assert_invalid(
        s.call(req("err", vec![desc(&[("k", wide.as_str())])])).await,
        "1026-byte UTF-8 value",
        &[&["value"]],
    );
    assert_still_healthy(&s).await;
}

#[tokio::test]
async fn request_errors_are_counted_and_never_crash_the_server() {
    scenarios::errors::request_errors_are_counted_and_never_crash_the_server(
        &Server::with_config(scenarios::errors::CONFIG).await,
    )
    .await;
}

//! Black-box scenarios shared by the stores: each module has the `CONFIG` its server must be
//! started with and scenario functions that take the running server. `tests/tests/*.rs`
//! run them on the embedded store, `tests/tests/dynamodb.rs` on the DynamoDB store.

pub mod charging {
    use crate::*;

    pub const CONFIG: &str = r#"
domain: charge
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 10, name: ten}
  - key: debt
    allow_debt: true
    rate_limit: {unit: hour, requests_per_unit: 10, name: debt}
  - key: block
    rate_limit: {unit: minute, requests_per_unit: 0, name: blocked}
  - key: three
    rate_limit: {unit: minute, requests_per_unit: 3}
"#;

    pub async fn request_level_hits_addend_zero_counts_as_one(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("k", "a")])]).hits(0)).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 9)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")])]).hits(0)).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 8)]);
    }

    pub async fn request_level_hits_addend_applies_to_every_descriptor(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("k", "a")]), desc(&[("k", "b")])]).hits(5)).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 5), ok(10, Unit::Hour, "ten", 5)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")])]).hits(5)).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 0)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")])]).hits(5)).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "ten")]);
    }

    pub async fn descriptor_hits_addend_zero_is_check_only(s: &Server) {
        for _ in 0..3 {
            let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(0)]).hits(7)).await;
            // Full bucket, nothing consumed: remaining 10, full again "now" -> minimum 1 s.
            assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 10).reset(1..=1)]);
        }
        let r = s.should(req("charge", vec![desc(&[("k", "a")])])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 9)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(0)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 9)]);
    }

    pub async fn descriptor_hits_addend_overrides_request_level(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(3), desc(&[("k", "b")])]).hits(5)).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 7), ok(10, Unit::Hour, "ten", 5)]);
    }

    pub async fn rejected_charge_consumes_nothing_on_strict_rules(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(8)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 2)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(3)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "ten")]);
        // The rejected 3 were not taken: 2 are still there.
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(0)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 2)]);
        let r = s.should(req("charge", vec![desc(&[("k", "a")]).hits(2)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 0)]);
        // A charge above the capacity never passes, even on a full bucket, and takes nothing.
        let r = s.should(req("charge", vec![desc(&[("k", "fresh")]).hits(11)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "ten")]);
        let r = s.should(req("charge", vec![desc(&[("k", "fresh")]).hits(0)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 10)]);
    }

    pub async fn allow_debt_debit_past_the_balance_drives_it_negative_so_check_only_fails(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("debt", "u")]).hits(4)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "debt", 6)]);
        // Debit 9 with 6 left: applied anyway (balance -3), reported OVER_LIMIT.
        let r = s.should(req("charge", vec![desc(&[("debt", "u")]).hits(9)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "debt")]);
        // Check only: passes only at a balance >= 0, so it fails now. Back to 0 after 3 tokens
        // at 10/h = 1080 s.
        let r = s.should(req("charge", vec![desc(&[("debt", "u")]).hits(0)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "debt").reset(1079..=1080)]);
        // And a normal hit fails too.
        let r = s.should(req("charge", vec![desc(&[("debt", "u")])])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "debt")]);
    }

    pub async fn strict_rule_drops_a_debit_past_the_balance(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("k", "u")]).hits(4)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 6)]);
        let r = s.should(req("charge", vec![desc(&[("k", "u")]).hits(9)])).await;
        assert_response(&r, Code::OverLimit, &[over(10, Unit::Hour, "ten")]);
        let r = s.should(req("charge", vec![desc(&[("k", "u")]).hits(0)])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 6)]);
    }

    pub async fn same_bucket_twice_in_one_request_is_charged_sequentially(s: &Server) {
        let two = || req("charge", vec![desc(&[("three", "a")]), desc(&[("three", "a")])]);
        let r = s.should(two()).await;
        assert_response(&r, Code::Ok, &[ok(3, Unit::Minute, "", 2), ok(3, Unit::Minute, "", 1)]);
        let r = s.should(two()).await;
        assert_response(&r, Code::OverLimit, &[ok(3, Unit::Minute, "", 0), over(3, Unit::Minute, "")]);
        let r = s.should(two()).await;
        assert_response(&r, Code::OverLimit, &[over(3, Unit::Minute, ""), over(3, Unit::Minute, "")]);

        // Different costs: the second occurrence sees what the first left; a failing occurrence
        // takes nothing, so a later smaller one can still pass.
        let r = s
            .should(req(
                "charge",
                vec![desc(&[("three", "b")]).hits(2), desc(&[("three", "b")]).hits(2), desc(&[("three", "b")]).hits(1)],
            ))
            .await;
        assert_response(
            &r,
            Code::OverLimit,
            &[ok(3, Unit::Minute, "", 1), over(3, Unit::Minute, ""), ok(3, Unit::Minute, "", 0)],
        );
    }

    pub async fn blocklist_requests_per_unit_zero_is_always_over_limit(s: &Server) {
        for _ in 0..3 {
            let r = s.should(req("charge", vec![desc(&[("block", "x")])])).await;
            assert_response(&r, Code::OverLimit, &[over(0, Unit::Minute, "blocked")]);
        }
        // Check-only calls are blocked too.
        let r = s.should(req("charge", vec![desc(&[("block", "y")]).hits(0)])).await;
        assert_response(&r, Code::OverLimit, &[over(0, Unit::Minute, "blocked")]);
    }

    pub async fn descriptors_are_charged_independently(s: &Server) {
        let r = s.should(req("charge", vec![desc(&[("three", "x")]).hits(3)])).await;
        assert_response(&r, Code::Ok, &[ok(3, Unit::Minute, "", 0)]);
        // `three=x` is over; `k=y` is still charged.
        let r = s.should(req("charge", vec![desc(&[("three", "x")]), desc(&[("k", "y")])])).await;
        assert_response(&r, Code::OverLimit, &[over(3, Unit::Minute, ""), ok(10, Unit::Hour, "ten", 9)]);
        let r = s.should(req("charge", vec![desc(&[("k", "y")])])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Hour, "ten", 8)]);
    }
}

pub mod overrides {
    use crate::*;

    pub const CONFIG: &str = r#"
domain: ovr
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10, name: cfg}
"#;

    pub async fn override_limit_applies_when_the_domain_exists(s: &Server) {
        let r = s.should(req("ovr", vec![desc(&[("k", "a")]).limit(5, RateLimitUnit::Minute)])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);
        // Also for entries that match no rule.
        let r = s.should(req("ovr", vec![desc(&[("other", "x")]).limit(3, RateLimitUnit::Hour)])).await;
        assert_response(&r, Code::Ok, &[ok(3, Unit::Hour, "", 2)]);
        for (unit_in, unit_out) in [
            (RateLimitUnit::Second, Unit::Second),
            (RateLimitUnit::Day, Unit::Day),
            (RateLimitUnit::Month, Unit::Month),
            (RateLimitUnit::Year, Unit::Year),
        ] {
            let r = s.should(req("ovr", vec![desc(&[("u", unit_out.as_str_name())]).limit(7, unit_in)])).await;
            assert_response(&r, Code::Ok, &[ok(7, unit_out, "", 6)]);
        }
        // Unknown domain: the override is ignored (no limit).
        let r = s.should(req("no-such-domain", vec![desc(&[("k", "a")]).limit(5, RateLimitUnit::Minute)])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);
        // Override of zero requests: blocked.
        let r = s.should(req("ovr", vec![desc(&[("k", "zero")]).limit(0, RateLimitUnit::Minute)])).await;
        assert_response(&r, Code::OverLimit, &[over(0, Unit::Minute, "")]);
    }

    pub async fn override_shares_the_bucket_of_the_config_limit_on_same_entries_and_unit(s: &Server) {
        let r = s.should(req("ovr", vec![desc(&[("k", "b")])])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "cfg", 9)]);
        // Same entries and unit, capacity 5: balance clamped to 5, then charged.
        let r = s.should(req("ovr", vec![desc(&[("k", "b")]).limit(5, RateLimitUnit::Minute)])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);
        let r = s.should(req("ovr", vec![desc(&[("k", "b")])])).await;
        assert_response(&r, Code::Ok, &[ok(10, Unit::Minute, "cfg", 3)]);
    }
}

pub mod matching {
    use crate::*;

    pub const CONFIG: &str = r#"
domain: nest
descriptors:
  - key: org
    value: acme
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5, name: acme-user}
      - key: user
        value: boss
        rate_limit: {unit: hour, requests_per_unit: 50, name: acme-boss}
  - key: org
    rate_limit: {unit: minute, requests_per_unit: 2, name: any-org}
  - key: open
    value: door
"#;

    pub async fn nested_descriptors_apply_the_limit_at_the_last_entry_only(s: &Server) {
        let r = s.should(req("nest", vec![desc(&[("org", "acme"), ("user", "u1")])])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "acme-user", 4)]);

        // Exact child beats the default child.
        let r = s.should(req("nest", vec![desc(&[("org", "acme"), ("user", "boss")])])).await;
        assert_response(&r, Code::Ok, &[ok(50, Unit::Hour, "acme-boss", 49)]);

        // Stopping at an intermediate node without rate_limit: no limit, and no fallback to the
        // `org` default node (the exact `acme` node matched).
        let r = s.should(req("nest", vec![desc(&[("org", "acme")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);

        // Default `org` node for another value.
        let r = s.should(req("nest", vec![desc(&[("org", "other")])])).await;
        assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "any-org", 1)]);

        // Whitelisted node (no rate_limit, no children).
        let r = s.should(req("nest", vec![desc(&[("open", "door")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);

        // All in one request: statuses in request order.
        let r = s
            .should(req(
                "nest",
                vec![
                    desc(&[("org", "acme"), ("user", "u1")]),
                    desc(&[("org", "acme")]),
                    desc(&[("org", "other")]),
                    desc(&[("user", "u1")]),
                ],
            ))
            .await;
        assert_response(
            &r,
            Code::Ok,
            &[ok(5, Unit::Minute, "acme-user", 3), no_limit(), ok(2, Unit::Minute, "any-org", 0), no_limit()],
        );
    }

    pub async fn depth_mismatch_gets_no_limit_and_charges_nothing(s: &Server) {
        // Deeper than the config.
        let r = s.should(req("nest", vec![desc(&[("org", "acme"), ("user", "u1"), ("extra", "x")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);
        // Deeper than a leaf default node.
        let r = s.should(req("nest", vec![desc(&[("org", "other"), ("user", "u1")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);
        // Wrong order of keys.
        let r = s.should(req("nest", vec![desc(&[("user", "u1"), ("org", "acme")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);
        // The limits above were not charged.
        let r = s.should(req("nest", vec![desc(&[("org", "acme"), ("user", "u1")])])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "acme-user", 4)]);
        let r = s.should(req("nest", vec![desc(&[("org", "other")])])).await;
        assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "any-org", 1)]);
    }

    pub async fn unknown_domain_unknown_key_and_entry_less_descriptor_get_no_limit(s: &Server) {
        let r = s.should(req("no-such-domain", vec![desc(&[("org", "acme")])])).await;
        assert_response(&r, Code::Ok, &[no_limit()]);
        let r = s.should(req("nest", vec![desc(&[("nope", "x")]), desc(&[]), desc(&[("org", "other")])])).await;
        assert_response(&r, Code::Ok, &[no_limit(), no_limit(), ok(2, Unit::Minute, "any-org", 1)]);
    }
}

pub mod unlimited {
    use crate::*;

    pub const CONFIG: &str = r#"
domain: unl
descriptors:
  - key: k
    value: free
    rate_limit: {unlimited: true}
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1}
"#;

    pub async fn unlimited_rule_reports_u32_max_and_never_runs_out(s: &Server) {
        for _ in 0..20 {
            let r = s.should(req("unl", vec![desc(&[("k", "free")])])).await;
            assert_response(&r, Code::Ok, &[unlimited()]);
        }
        let r = s.should(req("unl", vec![desc(&[("k", "free")]).hits(1_000_000)])).await;
        assert_response(&r, Code::Ok, &[unlimited()]);
        let r = s.should(req("unl", vec![desc(&[("k", "free")]), desc(&[("k", "x")])])).await;
        assert_response(&r, Code::Ok, &[unlimited(), ok(1, Unit::Second, "", 0).reset(1..=1)]);
    }
}

/// The reference's rule keys beyond the limit: `share_threshold`, `quota_mode` and
/// `metadata` (the server runs with `ARGS`).
pub mod rule_keys {
    use crate::*;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use serde_json::{Value as Json, json};

    pub const CONFIG: &str = r#"
domain: keys
descriptors:
  - key: files
    value: "files/*"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2, name: shared}
  - key: own
    value: "files/*"
    rate_limit: {unit: minute, requests_per_unit: 2, name: own}
  - key: regular
    rate_limit: {unit: minute, requests_per_unit: 1, name: regular}
  - key: quota
    quota_mode: true
    metadata: {plan: {tier: free}, note: quota}
    rate_limit: {unit: minute, requests_per_unit: 1, name: quota}
  - key: tagged
    metadata: {plan: {region: eu}, note: tagged}
    rate_limit: {unit: minute, requests_per_unit: 5, name: tagged}
"#;

    /// The flags the server of these scenarios runs with.
    pub const ARGS: &[&str] = &["--response-dynamic-metadata"];

    /// The response's dynamic metadata as JSON (numbers as protojson writes whole ones).
    pub fn metadata_json(response: &RateLimitResponse) -> Json {
        fn value(v: &Value) -> Json {
            match &v.kind {
                Some(Kind::StringValue(s)) => json!(s),
                Some(Kind::NumberValue(n)) => json!(*n as i64),
                Some(Kind::BoolValue(b)) => json!(b),
                Some(Kind::StructValue(s)) => object(s),
                Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value).collect()),
                Some(Kind::NullValue(_)) | None => Json::Null,
            }
        }
        fn object(s: &Struct) -> Json {
            Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
        }
        response.dynamic_metadata.as_ref().map(object).unwrap_or(Json::Null)
    }

    fn without_metadata(mut response: RateLimitResponse) -> RateLimitResponse {
        response.dynamic_metadata = None;
        response
    }

    pub async fn values_a_share_threshold_pattern_matches_share_one_bucket(s: &Server) {
        let call = |entries: &'static [(&'static str, &'static str)]| async move {
            without_metadata(s.should(req("keys", vec![desc(entries)])).await)
        };
        assert_response(&call(&[("files", "files/a.pdf")]).await, Code::Ok, &[ok(2, Unit::Minute, "shared", 1)]);
        assert_response(&call(&[("files", "files/b.csv")]).await, Code::Ok, &[ok(2, Unit::Minute, "shared", 0)]);
        assert_response(&call(&[("files", "files/c.txt")]).await, Code::OverLimit, &[over(2, Unit::Minute, "shared")]);
        // Without share_threshold, each value has a bucket of its own.
        for value in ["files/a.pdf", "files/b.csv", "files/c.txt"] {
            let r = without_metadata(s.should(req("keys", vec![desc(&[("own", value)])])).await);
            assert_response(&r, Code::Ok, &[ok(2, Unit::Minute, "own", 1)]);
        }
    }

    pub async fn quota_descriptors_are_over_together_and_rate_limits_alone(s: &Server) {
        // Both in their limit; then the quota one over while the rate limit passes: OVER_LIMIT
        // only because every quota descriptor of the request is over.
        let r = without_metadata(s.should(req("keys", vec![desc(&[("quota", "a")]), desc(&[("regular", "a")])])).await);
        assert_response(&r, Code::Ok, &[ok(1, Unit::Minute, "quota", 0), ok(1, Unit::Minute, "regular", 0)]);
        let r = without_metadata(s.should(req("keys", vec![desc(&[("quota", "a")]), desc(&[("regular", "b")])])).await);
        assert_response(&r, Code::OverLimit, &[over(1, Unit::Minute, "quota"), ok(1, Unit::Minute, "regular", 0)]);
        // A quota descriptor over beside one in its limit: OK.
        let r = without_metadata(s.should(req("keys", vec![desc(&[("quota", "a")]), desc(&[("quota", "b")])])).await);
        assert_response(&r, Code::Ok, &[over(1, Unit::Minute, "quota"), ok(1, Unit::Minute, "quota", 0)]);
        // A rate limit over is over whatever the quotas say.
        let r = without_metadata(s.should(req("keys", vec![desc(&[("regular", "a")]), desc(&[("quota", "c")])])).await);
        assert_response(&r, Code::OverLimit, &[over(1, Unit::Minute, "regular"), ok(1, Unit::Minute, "quota", 0)]);
    }

    pub async fn dynamic_metadata_carries_the_request_and_the_passed_rules_metadata(s: &Server) {
        let mut hits = desc(&[("tagged", "t")]);
        hits.hits_addend = Some(UInt64Value { value: 2 });
        let mut request =
            req("keys", vec![desc(&[("quota", "m")]), hits, desc(&[("regular", "m")]), desc(&[("nothing", "x")])]);
        request.hits_addend = 1;
        let r = s.should(request.clone()).await;
        assert_response(
            &without_metadata(r.clone()),
            Code::Ok,
            &[
                ok(1, Unit::Minute, "quota", 0),
                ok(5, Unit::Minute, "tagged", 3),
                ok(1, Unit::Minute, "regular", 0),
                no_limit(),
            ],
        );
        // The whole request, then the passed rules' metadata merged.
        let expected = |metadata: Json| {
            json!({
                "domain": "keys",
                "descriptors": [
                    {"entries": ["quota=m"]},
                    {"entries": ["tagged=t"], "hitsAddend": 2},
                    {"entries": ["regular=m"]},
                    {"entries": ["nothing=x"]},
                ],
                "hitsAddend": 1,
                "metadata": metadata,
            })
        };
        assert_eq!(metadata_json(&r), expected(json!({"plan": {"tier": "free", "region": "eu"}, "note": "quota"})));
        // Again: the quota descriptor is over now, so only the tagged rule's metadata is there.
        let r = s.should(request).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "the regular rule is over too");
        assert_eq!(metadata_json(&r), expected(json!({"plan": {"region": "eu"}, "note": "tagged"})));
    }
}

pub mod errors {
    use crate::*;
    use tonic::Code as GrpcCode;

    pub const CONFIG: &str = r#"
domain: err
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

    /// Expect INVALID_ARGUMENT whose message mentions every group (each group: any of its words).
    #[track_caller]
    pub fn assert_invalid(result: Result<RateLimitResponse, tonic::Status>, what: &str, groups: &[&[&str]]) {
        match result {
            Ok(resp) => panic!("{what}: expected INVALID_ARGUMENT, got a response:\n{}", describe(&resp)),
            Err(st) => {
                assert_eq!(
                    st.code(),
                    GrpcCode::InvalidArgument,
                    "{what}: wrong gRPC code (message {:?})",
                    st.message()
                );
                for g in groups {
                    assert!(
                        mentions_any(st.message(), g),
                        "{what}: message {:?} should mention one of {g:?}",
                        st.message()
                    );
                }
            }
        }
    }

    /// The server is still alive and well, and never panicked.
    pub async fn assert_still_healthy(s: &Server) {
        let r = s.should(req("err", vec![desc(&[("k", "alive")])])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);
        let logs = s.logs();
        assert!(!logs.contains("panicked"), "server log shows a panic:\n{logs}");
    }

    pub async fn empty_domain_is_invalid_argument(s: &Server) {
        assert_invalid(s.call(req("", vec![desc(&[("k", "a")])])).await, "empty domain", &[&["domain"]]);
        assert_still_healthy(s).await;
    }

    pub async fn empty_descriptor_list_is_invalid_argument(s: &Server) {
        assert_invalid(s.call(req("err", vec![])).await, "no descriptors", &[&["descriptor"]]);
        assert_still_healthy(s).await;
    }

    pub async fn entry_with_empty_key_is_invalid_argument(s: &Server) {
        assert_invalid(s.call(req("err", vec![desc(&[("k", "a"), ("", "v")])])).await, "empty entry key", &[&["key"]]);
        assert_still_healthy(s).await;
    }

    pub async fn request_errors_are_counted_and_never_crash_the_server(s: &Server) {
        let long = "x".repeat(2000);
        let bad: Vec<RateLimitRequest> = vec![
            req("", vec![desc(&[("k", "a")])]),
            req("err", vec![]),
            req("err", vec![desc(&[("", "a")])]),
            req("err", vec![desc(&[("k", "a")]).limit(1, RateLimitUnit::Unknown)]),
            req("err", (0..65).map(|i| desc(&[("k", &format!("{i}"))])).collect()),
            req("err", vec![desc(&[(long.as_str(), "a")])]),
        ];
        let n = bad.len() as f64;
        for r in bad {
            let res = s.call(r).await;
            assert!(
                matches!(&res, Err(st) if st.code() == GrpcCode::InvalidArgument),
                "expected INVALID_ARGUMENT, got {res:?}"
            );
        }
        let m = s.metrics().await;
        assert_eq!(
            m.sum("zael_request_errors_total", &[]),
            n,
            "zael_request_errors_total over all reasons\n{}",
            m.text
        );
        // Nothing was charged by the failed requests (the 65-descriptor one included k=0..64).
        let r = s.should(req("err", vec![desc(&[("k", "0")])])).await;
        assert_response(&r, Code::Ok, &[ok(5, Unit::Minute, "", 4)]);
        assert_eq!(s.grpc_health("").await.ok(), Some(tonic_health::pb::health_check_response::ServingStatus::Serving));
        assert_still_healthy(s).await;
    }
}

use super::*;
use crate::config::parse_domain;
use crate::memory::MemoryStore;

const CONFIG: &str = r#"
domain: d
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-user}
  - key: user
    value: vip
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: path
    value: "/api/*"
    rate_limit: {unit: hour, requests_per_unit: 2, name: api}
  - key: path
    value: "/api/v1*"
    rate_limit: {unit: hour, requests_per_unit: 50}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 7}
  - key: org
    descriptors:
      - key: team
        rate_limit: {unit: day, requests_per_unit: 1}
  - key: free
  - key: unl
    rate_limit: {unlimited: true}
  - key: block
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: debt
    allow_debt: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: burst
    rate_limit: {unit: minute, requests_per_unit: 1, burst: 3}
  - key: old
    rate_limit: {unit: minute, requests_per_unit: 1, name: old-limit}
  - key: new
    rate_limit: {unit: minute, requests_per_unit: 10, name: new-limit, replaces: [{name: old-limit}]}
  - key: exact
    reserve: false
    rate_limit: {unit: minute, requests_per_unit: 10}
"#;

struct Harness {
    config: RateLimitConfig,
    store: MemoryStore,
    now: EpochMillis,
}

impl Harness {
    fn new() -> Self {
        Harness {
            config: parse_domain("d.yaml", CONFIG).unwrap(),
            store: MemoryStore::new(),
            now: EpochMillis(1_000_000),
        }
    }

    fn run(&self, request: &Request<'_>, modes: Modes) -> Decision {
        request.validate().unwrap();
        let plan = plan(&self.config, request).expect("valid");
        let outcomes: Vec<_> = plan.bucket_requests().iter().map(|r| self.store.charge_bucket(r, self.now)).collect();
        plan.decide(&outcomes, &[], self.now, modes)
    }

    fn one(&self, entries: &[(&str, &str)]) -> Status {
        self.run(&req(&[desc(entries)]), Modes::default()).statuses.remove(0)
    }
}

fn desc<'a>(entries: &[(&'a str, &'a str)]) -> Descriptor<'a> {
    Descriptor { entries: entries.to_vec(), ..Default::default() }
}

fn req<'a>(descriptors: &[Descriptor<'a>]) -> Request<'a> {
    Request { domain: "d", descriptors: descriptors.to_vec(), hits_addend: 0 }
}

fn limit(rpu: u32, unit: Unit, name: &str) -> Option<ReportedLimit> {
    Some(ReportedLimit { requests_per_unit: rpu, unit, name: name.into() })
}

#[test]
fn exact_beats_wildcard_beats_default() {
    let h = Harness::new();
    assert_eq!(h.one(&[("user", "vip")]).current_limit, limit(100, Unit::Minute, ""));
    assert_eq!(h.one(&[("user", "bob")]).current_limit, limit(3, Unit::Minute, "per-user"));
    // The first wildcard in file order wins even when a later one is more specific.
    assert_eq!(h.one(&[("path", "/api/v1/x")]).current_limit, limit(2, Unit::Hour, "api"));
    assert_eq!(h.one(&[("path", "/web")]).current_limit, limit(7, Unit::Second, ""));
}

#[test]
fn limits_apply_only_at_the_last_entry() {
    let h = Harness::new();
    assert_eq!(h.one(&[("org", "a")]), Status::no_limit());
    assert_eq!(h.one(&[("org", "a"), ("team", "x")]).current_limit, limit(1, Unit::Day, ""));
    assert_eq!(h.one(&[("org", "a"), ("team", "x"), ("deeper", "y")]), Status::no_limit());
    assert_eq!(h.one(&[("unknown", "a")]), Status::no_limit());
    assert_eq!(h.one(&[("free", "a")]), Status::no_limit());
    assert_eq!(h.one(&[]), Status::no_limit());
}

#[test]
fn each_value_of_a_default_node_has_its_own_bucket() {
    let h = Harness::new();
    for _ in 0..3 {
        assert_eq!(h.one(&[("user", "a")]).code, Code::Ok);
    }
    let over = h.one(&[("user", "a")]);
    assert_eq!(over.code, Code::OverLimit);
    assert_eq!(over.limit_remaining, 0);
    assert_eq!(over.duration_until_reset_secs, Some(20)); // 1 token per 20 s
    let other = h.one(&[("user", "b")]);
    assert_eq!((other.code, other.limit_remaining), (Code::Ok, 2));
}

#[test]
fn ok_status_reports_remaining_and_time_to_full() {
    let h = Harness::new();
    let s = h.one(&[("user", "c")]);
    assert_eq!(
        s,
        Status {
            code: Code::Ok,
            current_limit: limit(3, Unit::Minute, "per-user"),
            limit_remaining: 2,
            duration_until_reset_secs: Some(20),
            kind: StatusKind::Ok,
            near_limit: false,
            rule: Some("user".into()),
            values_label: None,
            quota_mode: false,
            metadata: None,
        }
    );
    h.one(&[("user", "c")]);
    let s = h.one(&[("user", "c")]);
    assert_eq!((s.limit_remaining, s.duration_until_reset_secs, s.near_limit), (0, Some(60), true));
}

#[test]
fn unknown_domain_has_no_limits() {
    let h = Harness::new();
    let r = Request { domain: "other", descriptors: vec![desc(&[("user", "a")])], hits_addend: 0 };
    let d = h.run(&r, Modes::default());
    assert_eq!(d, Decision { overall: Code::Ok, statuses: vec![Status::no_limit()] });
}

#[test]
fn unlimited_and_blocklist() {
    let h = Harness::new();
    assert_eq!(h.one(&[("unl", "x")]), Status::unlimited());
    let blocked = Request {
        domain: "d",
        descriptors: vec![Descriptor { entries: vec![("block", "x")], hits_addend: Some(0), limit_override: None }],
        hits_addend: 0,
    };
    let p = plan(&h.config, &blocked).unwrap();
    assert!(p.bucket_requests().is_empty());
    let s = &h.run(&blocked, Modes::default()).statuses[0];
    assert_eq!((s.code, s.limit_remaining, s.duration_until_reset_secs), (Code::OverLimit, 0, Some(1)));
}

#[test]
fn rule_shadow_reports_ok_and_global_shadow_only_changes_overall() {
    let h = Harness::new();
    assert_eq!(h.one(&[("shadow", "x")]).kind, StatusKind::Ok);
    let s = h.one(&[("shadow", "x")]);
    assert_eq!((s.code, s.kind, s.limit_remaining), (Code::Ok, StatusKind::Shadow, 0));
    h.one(&[("user", "g")]);
    h.one(&[("user", "g")]);
    h.one(&[("user", "g")]);
    let d = h.run(&req(&[desc(&[("user", "g")])]), Modes { shadow: true, quota: false });
    assert_eq!(d.overall, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::OverLimit);
}

#[test]
fn replaced_limits_are_not_charged() {
    let h = Harness::new();
    let d = h.run(&req(&[desc(&[("old", "x")]), desc(&[("new", "x")])]), Modes::default());
    assert_eq!(d.statuses[0], Status::no_limit());
    assert_eq!(d.statuses[1].current_limit, limit(10, Unit::Minute, "new-limit"));
    // The replaced limit's bucket was never touched: alone, it still has its one token.
    assert_eq!(h.one(&[("old", "x")]).code, Code::Ok);
}

#[test]
fn override_uses_its_own_limit_when_the_domain_exists() {
    let h = Harness::new();
    let o = Descriptor {
        entries: vec![("user", "o")],
        limit_override: Some(LimitOverride { requests_per_unit: 1, unit: Unit::Hour }),
        hits_addend: None,
    };
    let first = h.run(&req(std::slice::from_ref(&o)), Modes::default()).statuses.remove(0);
    assert_eq!(first.current_limit, limit(1, Unit::Hour, ""));
    assert_eq!(first.code, Code::Ok);
    assert_eq!(h.run(&req(std::slice::from_ref(&o)), Modes::default()).statuses[0].code, Code::OverLimit);
    let unknown = Request { domain: "nope", descriptors: vec![o], hits_addend: 0 };
    assert_eq!(h.run(&unknown, Modes::default()).statuses[0], Status::no_limit());
}

#[test]
fn override_shares_the_bucket_of_the_rule_with_the_same_unit() {
    let h = Harness::new();
    h.one(&[("user", "shared")]); // the config limit: 3/min, 2 left
    let with_unit = |unit| Descriptor {
        entries: vec![("user", "shared")],
        limit_override: Some(LimitOverride { requests_per_unit: 10, unit }),
        hits_addend: None,
    };
    let p = plan(&h.config, &req(&[with_unit(Unit::Minute)])).unwrap();
    assert_eq!(&*p.bucket_requests()[0].key.resource, "user");
    // Same bucket, new capacity 10: 2 left before, 1 after.
    assert_eq!(h.run(&req(&[with_unit(Unit::Minute)]), Modes::default()).statuses[0].limit_remaining, 1);
    // Another unit: a bucket of its own.
    let p = plan(&h.config, &req(&[with_unit(Unit::Hour)])).unwrap();
    assert_eq!(&*p.bucket_requests()[0].key.resource, "override::hour");
    assert_eq!(h.run(&req(&[with_unit(Unit::Hour)]), Modes::default()).statuses[0].limit_remaining, 9);
}

#[test]
fn reserve_false_reaches_the_store_with_the_rules_buckets_and_their_overrides() {
    let h = Harness::new();
    let flags = |descriptors: &[Descriptor<'_>]| {
        let p = plan(&h.config, &req(descriptors)).unwrap();
        p.bucket_requests().iter().map(|b| (b.key.resource.to_string(), b.reserve)).collect::<Vec<_>>()
    };
    let exact_override = |unit| Descriptor {
        entries: vec![("exact", "a")],
        limit_override: Some(LimitOverride { requests_per_unit: 20, unit }),
        hits_addend: None,
    };
    assert_eq!(
        flags(&[desc(&[("user", "a")]), desc(&[("exact", "a")])]),
        [("user".to_owned(), true), ("exact".to_owned(), false)]
    );
    // An override on the rule's descriptor keeps the rule's choice, in the rule's bucket or its
    // own; an override no rule matches may reserve.
    assert_eq!(flags(&[exact_override(Unit::Minute)]), [("exact".to_owned(), false)]);
    assert_eq!(flags(&[exact_override(Unit::Hour)]), [("override::hour".to_owned(), false)]);
    let unmatched = Descriptor { entries: vec![("nobody", "a")], ..exact_override(Unit::Hour) };
    assert_eq!(flags(&[unmatched]), [("override::hour".to_owned(), true)]);
}

#[test]
fn hits_addend_forms() {
    let h = Harness::new();
    let mut r = req(&[desc(&[("path", "/x")])]);
    r.hits_addend = 5; // request level
    assert_eq!(h.run(&r, Modes::default()).statuses[0].limit_remaining, 2);
    let check_only = Descriptor { entries: vec![("path", "/x")], hits_addend: Some(0), limit_override: None };
    r.descriptors = vec![check_only];
    assert_eq!(h.run(&r, Modes::default()).statuses[0].limit_remaining, 2);
    let two = Descriptor { entries: vec![("path", "/x")], hits_addend: Some(2), limit_override: None };
    r.descriptors = vec![two.clone()];
    assert_eq!(h.run(&r, Modes::default()).statuses[0].limit_remaining, 0);
    let s = h.run(&r, Modes::default()).statuses.remove(0);
    assert_eq!((s.code, s.duration_until_reset_secs), (Code::OverLimit, Some(1)));
}

#[test]
fn cost_above_capacity_never_passes_and_reports_the_unit() {
    let h = Harness::new();
    let big = Descriptor { entries: vec![("user", "big")], hits_addend: Some(4), limit_override: None };
    let s = h.run(&req(&[big]), Modes::default()).statuses.remove(0);
    assert_eq!((s.code, s.duration_until_reset_secs), (Code::OverLimit, Some(60)));
    assert_eq!(h.one(&[("user", "big")]).limit_remaining, 2);
}

#[test]
fn allow_debt_charges_past_the_balance_and_blocks_checks() {
    let h = Harness::new();
    let debit = Descriptor { entries: vec![("debt", "u")], hits_addend: Some(8), limit_override: None };
    let s = h.run(&req(&[debit]), Modes::default()).statuses.remove(0);
    assert_eq!((s.code, s.limit_remaining), (Code::OverLimit, 0));
    // Balance is now -3 tokens: 36 s until it is back to 0 at 1 token per 12 s.
    let check = Descriptor { entries: vec![("debt", "u")], hits_addend: Some(0), limit_override: None };
    let s = h.run(&req(&[check]), Modes::default()).statuses.remove(0);
    assert_eq!((s.code, s.duration_until_reset_secs), (Code::OverLimit, Some(36)));
}

#[test]
fn same_bucket_twice_is_charged_in_order() {
    let h = Harness::new();
    let d = desc(&[("user", "twice")]);
    let r = Request { domain: "d", descriptors: vec![d.clone(), d.clone(), d.clone(), d], hits_addend: 0 };
    let plan = plan(&h.config, &r).unwrap();
    assert_eq!(plan.bucket_requests().len(), 1);
    assert_eq!(plan.bucket_requests()[0].charges.len(), 4);
    let decision = h.run(&r, Modes::default());
    let got: Vec<_> = decision.statuses.iter().map(|s| (s.code, s.limit_remaining)).collect();
    assert_eq!(got, [(Code::Ok, 2), (Code::Ok, 1), (Code::Ok, 0), (Code::OverLimit, 0)]);
    assert_eq!(decision.overall, Code::OverLimit);
}

#[test]
fn burst_sets_the_capacity_and_rpu_the_rate() {
    let h = Harness::new();
    let s = h.one(&[("burst", "b")]);
    assert_eq!((s.limit_remaining, s.current_limit), (2, limit(1, Unit::Minute, "")));
    h.one(&[("burst", "b")]);
    let s = h.one(&[("burst", "b")]);
    // Three tokens at one per minute: three minutes to full.
    assert_eq!((s.limit_remaining, s.duration_until_reset_secs), (0, Some(180)));
}

#[test]
fn request_errors() {
    let long = "x".repeat(MAX_ENTRY_BYTES + 1);
    let cases: Vec<(Request<'_>, RequestError)> = vec![
        (Request { domain: "", descriptors: vec![desc(&[("a", "b")])], hits_addend: 0 }, RequestError::EmptyDomain),
        (Request { domain: "d", descriptors: vec![], hits_addend: 0 }, RequestError::NoDescriptors),
        (
            Request { domain: "d", descriptors: vec![desc(&[("a", "b")]); 65], hits_addend: 0 },
            RequestError::TooManyDescriptors(65),
        ),
        (
            Request { domain: "d", descriptors: vec![desc(&[("a", "b"); 33])], hits_addend: 0 },
            RequestError::TooManyEntries { descriptor: 0, count: 33 },
        ),
        (
            Request {
                domain: "d",
                descriptors: vec![desc(&[("a", "b")]), desc(&[("a", "b"), ("", "c")])],
                hits_addend: 0,
            },
            RequestError::EmptyKey { descriptor: 1, entry: 1 },
        ),
        (
            Request { domain: "d", descriptors: vec![desc(&[("a", long.as_str())])], hits_addend: 0 },
            RequestError::TooLong { descriptor: 0, entry: 0, what: "value", len: 1025 },
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(request.validate(), Err(expected));
    }
    assert!(Request { domain: "d", descriptors: vec![desc(&[("a", "b"); 32]); 64], hits_addend: 0 }.validate().is_ok());
}

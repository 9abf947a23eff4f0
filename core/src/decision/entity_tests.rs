use super::*;
use crate::bucket::BucketLimit;
use crate::config::parse_domain;
use crate::store::LimitReport;

const CONFIG: &str = r#"
domain: llm
namespace: tenant-a
descriptors:
  - key: api_key
    descriptors:
      - key: model
        entity: {id_from: api_key, resource_from: model, consume: {rpm: 1, tpm: hits}}
  - key: team
    shadow_mode: true
    reserve: false
    entity: {resource: chat, consume: {rpm: 2}}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

fn config() -> RateLimitConfig {
    parse_domain("llm.yaml", CONFIG).unwrap()
}

fn request<'a>(descriptors: Vec<Descriptor<'a>>, hits: u32) -> Request<'a> {
    Request { domain: "llm", descriptors, hits_addend: hits }
}

fn desc<'a>(entries: &[(&'a str, &'a str)]) -> Descriptor<'a> {
    Descriptor { entries: entries.to_vec(), ..Default::default() }
}

fn report(entity: &str, name: &str, per_minute: u64, tokens: i64, requested: i64, exceeded: bool) -> LimitReport {
    LimitReport {
        entity: entity.into(),
        name: name.into(),
        limit: BucketLimit::per_period(per_minute, per_minute, 60),
        shard_count: 1,
        shard: 0,
        bypass: false,
        tokens: Millitokens(tokens),
        at: EpochMillis(0),
        requested: Millitokens(requested),
        exceeded,
    }
}

#[test]
fn an_entity_rule_plans_one_acquire_with_its_amounts() {
    let config = config();
    let mut with_hits = desc(&[("api_key", "key-1"), ("model", "gpt-4")]);
    with_hits.hits_addend = Some(250);
    let r = request(vec![with_hits, desc(&[("user", "u")]), desc(&[("team", "t-9")])], 0);
    let plan = plan(&config, &r).unwrap();
    assert_eq!(plan.bucket_requests().len(), 1, "the rate_limit rule still charges a bucket");
    let entities = plan.entity_requests();
    assert_eq!(entities.len(), 2);
    assert_eq!(
        entities[0],
        EntityRequest {
            namespace: "tenant-a".into(),
            entity: "key-1".into(),
            resource: "gpt-4".into(),
            consume: vec![("rpm".into(), Millitokens(1000)), ("tpm".into(), Millitokens(250_000))],
            reserve: true,
        }
    );
    assert_eq!((entities[1].entity.as_str(), entities[1].resource.as_str()), ("t-9", "chat"));
    assert_eq!(entities[1].consume, vec![("rpm".into(), Millitokens(2000))]);
    assert!(!entities[1].reserve, "the rule's `reserve: false` reaches the store");
}

#[test]
fn request_hits_count_when_the_descriptor_has_none() {
    let config = config();
    let r = request(vec![desc(&[("api_key", "key-1"), ("model", "gpt-4")])], 7);
    let plan = plan(&config, &r).unwrap();
    assert_eq!(plan.entity_requests()[0].consume[1], ("tpm".into(), Millitokens(7000)));
}

#[test]
fn values_outside_the_identifier_rules_are_invalid_arguments() {
    let config = config();
    for (entries, what) in [
        (vec![("api_key", "bad key"), ("model", "gpt-4")], "entity id"),
        (vec![("api_key", "#x"), ("model", "gpt-4")], "entity id"),
        (vec![("api_key", "key-1"), ("model", "4o")], "resource"),
        (vec![("api_key", "key-1"), ("model", "_default_")], "resource"),
    ] {
        let r = request(vec![desc(&entries)], 0);
        match plan(&config, &r) {
            Err(RequestError::InvalidEntity { descriptor: 0, what: w, .. }) => assert_eq!(w, what),
            other => panic!("{entries:?}: {other:?}"),
        }
    }
}

fn decide_one(outcome: EntityOutcome, entries: &[(&str, &str)]) -> Decision {
    let config = config();
    let r = request(vec![desc(entries)], 0);
    let plan = plan(&config, &r).unwrap();
    plan.decide(&[], &[outcome], EpochMillis(0), Modes::default())
}

const KEY: &[(&str, &str)] = &[("api_key", "key-1"), ("model", "gpt-4")];

#[test]
fn admitted_reports_the_limit_with_the_least_remaining() {
    let outcome = EntityOutcome::Admitted(vec![
        report("key-1", "rpm", 10, 9_000, 1000, false),
        report("key-1", "tpm", 1000, 400_500, 100_000, false),
        report("proj", "rpm", 20, 3_000, 1000, false),
    ]);
    let d = decide_one(outcome, KEY);
    assert_eq!(d.overall, Code::Ok);
    let s = &d.statuses[0];
    assert_eq!(s.current_limit, Some(ReportedLimit { requests_per_unit: 20, unit: Unit::Minute, name: "rpm".into() }));
    assert_eq!((s.limit_remaining, s.kind, s.near_limit), (3, StatusKind::Ok, true));
    // 17 tokens at 20 per minute: 51 s until full.
    assert_eq!(s.duration_until_reset_secs, Some(51));
}

#[test]
fn rejected_reports_the_exceeded_limit_with_its_wait() {
    let outcome = EntityOutcome::Rejected(vec![
        report("key-1", "rpm", 10, 5_000, 1000, false),
        report("key-1", "tpm", 600, 100_000, 150_000, true),
    ]);
    let s = decide_one(outcome, KEY).statuses.remove(0);
    assert_eq!((s.code, s.kind, s.limit_remaining), (Code::OverLimit, StatusKind::OverLimit, 0));
    assert_eq!(s.current_limit, Some(ReportedLimit { requests_per_unit: 600, unit: Unit::Minute, name: "tpm".into() }));
    // 50 tokens short at 10 per second: 5.001 s, reported as 6.
    assert_eq!(s.duration_until_reset_secs, Some(6), "floor(50000 * 60000 / 600000) + 1 ms, rounded up");
}

#[test]
fn no_limits_disabled_and_shadow() {
    let s = decide_one(EntityOutcome::NoLimits, KEY).statuses.remove(0);
    assert_eq!((s.code, s.current_limit.clone(), s.kind), (Code::Ok, None, StatusKind::NoLimit));
    assert_eq!(s.rule.as_deref(), Some("api_key/model"));
    let d = decide_one(EntityOutcome::Disabled { entity: "key-1".into() }, KEY);
    assert_eq!((d.overall, d.statuses[0].current_limit.clone()), (Code::OverLimit, None));
    let rejected = EntityOutcome::Rejected(vec![report("t-9", "rpm", 10, 0, 2000, true)]);
    let d = decide_one(rejected, &[("team", "t-9")]);
    assert_eq!((d.overall, d.statuses[0].kind), (Code::Ok, StatusKind::Shadow), "shadow_mode reports OK");
}

#[test]
fn units_come_from_the_refill_period() {
    let rate = |cp: u64, per_secs: u64| reported_rate(&BucketLimit::per_period(cp, cp, per_secs));
    assert_eq!(rate(5, 1), (5, Unit::Second));
    assert_eq!(rate(100, 60), (100, Unit::Minute));
    assert_eq!(rate(100, 10), (600, Unit::Minute), "100 per 10 s is 600 per minute");
    assert_eq!(rate(7, 3600), (7, Unit::Hour));
    assert_eq!(rate(9, 86_400), (9, Unit::Day));
    assert_eq!(rate(1, 2 * 86_400), (3, Unit::Week));
}

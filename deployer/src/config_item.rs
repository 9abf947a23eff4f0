//! The stored config items the CLI writes and reads (`table-format.md` §8): the limit
//! attributes `l_{n}_{cp,ra,rp,soft}` in whole tokens and seconds, as the library writes them.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::limit_spec::LimitSpec;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Adds the limit attributes to a config item.
pub fn put_limits(item: &mut Item, limits: &[LimitSpec]) {
    for l in limits {
        item.insert(format!("l_{}_cp", l.name), n(l.capacity));
        item.insert(format!("l_{}_ra", l.name), n(l.refill_amount));
        item.insert(format!("l_{}_rp", l.name), n(l.refill_period_seconds));
        if l.soft {
            item.insert(format!("l_{}_soft", l.name), AttributeValue::Bool(true));
        }
    }
}

fn number(item: &Item, attr: &str) -> Option<u64> {
    match item.get(attr) {
        Some(AttributeValue::N(v)) => v.parse::<f64>().ok().map(|f| f as u64),
        _ => None,
    }
}

/// The note of a quota (a zero refill rate, or a duration window `w_{name}_*`).
pub const QUOTA_NOTE: &str = "a quota (not shown by this CLI yet)";
/// The note of a limit with a parameter schedule.
pub const SCHEDULED_NOTE: &str = "scheduled (not shown by this CLI yet)";

/// The limits of a config item, by name; a limit with a schedule or a reset window (which
/// this CLI does not set) is shown with what it has and a note.
pub fn read_limits(item: &Item) -> Vec<(LimitSpec, Option<&'static str>)> {
    let mut names: Vec<(&str, &str)> = item
        .keys()
        .filter_map(|a| {
            let prefix = if a.starts_with("l_") {
                "l_"
            } else if a.starts_with("w_") {
                "w_"
            } else {
                return None;
            };
            a.strip_prefix(prefix).and_then(|r| r.strip_suffix("_cp")).map(|name| (prefix, name))
        })
        .collect();
    names.sort_unstable_by_key(|(_, name)| *name);
    names
        .into_iter()
        .map(|(prefix, name)| {
            let get = |f: &str| number(item, &format!("{prefix}{name}_{f}")).unwrap_or(0);
            let spec = LimitSpec {
                name: name.to_owned(),
                capacity: get("cp"),
                refill_amount: get("ra"),
                refill_period_seconds: get("rp").max(1),
                soft: matches!(item.get(&format!("{prefix}{name}_soft")), Some(AttributeValue::Bool(true))),
            };
            let note = if prefix == "w_" || spec.refill_amount == 0 {
                Some(QUOTA_NOTE)
            } else if item.contains_key(&format!("{prefix}{name}_sched")) {
                Some(SCHEDULED_NOTE)
            } else {
                None
            };
            (spec, note)
        })
        .collect()
}

/// The limit dicts of audit events (`Limit.to_dict`): name, capacity, refill_amount,
/// refill_period_seconds, and `soft: true` only when soft.
pub fn audit_limits(limits: &[LimitSpec]) -> AttributeValue {
    AttributeValue::L(
        limits
            .iter()
            .map(|l| {
                let mut m = HashMap::from([
                    ("name".to_owned(), s(&l.name)),
                    ("capacity".to_owned(), n(l.capacity)),
                    ("refill_amount".to_owned(), n(l.refill_amount)),
                    ("refill_period_seconds".to_owned(), n(l.refill_period_seconds)),
                ]);
                if l.soft {
                    m.insert("soft".to_owned(), AttributeValue::Bool(true));
                }
                AttributeValue::M(m)
            })
            .collect(),
    )
}

/// The explicit flags a getter prints after the limits (§6).
pub fn flag_lines(item: &Item) -> Vec<String> {
    let mut lines = Vec::new();
    match item.get("disabled") {
        Some(AttributeValue::Bool(true)) => lines.push("Status: DISABLED".to_owned()),
        Some(AttributeValue::S(v)) if v == "bypass" => lines.push("Status: BYPASSED".to_owned()),
        Some(AttributeValue::Bool(false)) => lines.push("Status: enabled (explicit override)".to_owned()),
        _ => {}
    }
    if let Some(AttributeValue::Bool(c)) = item.get("cascade") {
        lines.push(format!("Cascade: {} (explicit)", if *c { "on" } else { "off" }));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_in_name_order() {
        let limits = vec![
            LimitSpec {
                name: "tpm".into(),
                capacity: 8000,
                refill_amount: 5000,
                refill_period_seconds: 60,
                soft: true,
            },
            LimitSpec { name: "rpm".into(), capacity: 10, refill_amount: 10, refill_period_seconds: 60, soft: false },
        ];
        let mut item = Item::new();
        put_limits(&mut item, &limits);
        assert_eq!(item["l_tpm_soft"], AttributeValue::Bool(true));
        assert!(!item.contains_key("l_rpm_soft"));
        let read: Vec<LimitSpec> = read_limits(&item).into_iter().map(|(l, _)| l).collect();
        assert_eq!(read, vec![limits[1].clone(), limits[0].clone()]);
    }

    #[test]
    fn flags() {
        let item =
            Item::from([("disabled".to_owned(), s("bypass")), ("cascade".to_owned(), AttributeValue::Bool(false))]);
        assert_eq!(flag_lines(&item), ["Status: BYPASSED", "Cascade: off (explicit)"]);
    }
}

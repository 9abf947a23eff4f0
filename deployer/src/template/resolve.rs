//! The template for one parameter set, with its conditions decided: resources and outputs
//! whose condition is false dropped, `Fn::If`s on conditions replaced by the chosen branch,
//! `AWS::NoValue` removed. CloudFormation does this itself; cfn-lint checks each resolved
//! template (one per row of the IAM matrix), and emulators without full condition support
//! (moto, `deployer-and-aggregator.md` §16.3) get it from `deploy --endpoint-url`. `deploy`
//! never sends it to AWS itself.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

struct Context<'a> {
    parameters: BTreeMap<String, String>,
    conditions: &'a Map<String, Value>,
}

impl Context<'_> {
    fn value(&self, v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Object(m) if m.contains_key("Ref") => {
                let name = m["Ref"].as_str().unwrap_or_default();
                self.parameters.get(name).cloned().unwrap_or_default()
            }
            Value::Object(m) if m.contains_key("Fn::Select") => {
                let args = m["Fn::Select"].as_array().cloned().unwrap_or_default();
                let index = args.first().and_then(Value::as_u64).unwrap_or(0) as usize;
                let list: Vec<String> = match args.get(1) {
                    Some(Value::Object(s)) if s.contains_key("Fn::Split") => {
                        let split = s["Fn::Split"].as_array().cloned().unwrap_or_default();
                        let sep = split.first().and_then(Value::as_str).unwrap_or(",").to_owned();
                        self.value(split.get(1).unwrap_or(&Value::Null)).split(&sep).map(str::to_owned).collect()
                    }
                    _ => Vec::new(),
                };
                list.get(index).cloned().unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    fn holds(&self, expr: &Value) -> bool {
        let Value::Object(m) = expr else { return false };
        let args = |key: &str| m.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(Value::String(name)) = m.get("Condition") {
            return self.condition(name);
        }
        if m.contains_key("Fn::Equals") {
            let a = args("Fn::Equals");
            return self.value(&a[0]) == self.value(&a[1]);
        }
        if m.contains_key("Fn::And") {
            return args("Fn::And").iter().all(|x| self.holds(x));
        }
        if m.contains_key("Fn::Or") {
            return args("Fn::Or").iter().any(|x| self.holds(x));
        }
        if m.contains_key("Fn::Not") {
            return !self.holds(&args("Fn::Not")[0]);
        }
        false
    }

    fn condition(&self, name: &str) -> bool {
        self.conditions.get(name).is_some_and(|c| self.holds(c))
    }

    /// `v` with its `Fn::If`s decided; `None` for `AWS::NoValue`.
    fn decide(&self, v: &Value) -> Option<Value> {
        match v {
            Value::Object(m) if m.get("Ref").and_then(Value::as_str) == Some("AWS::NoValue") => None,
            Value::Object(m) if m.contains_key("Fn::If") => {
                let a = m["Fn::If"].as_array()?;
                let chosen = if self.condition(a[0].as_str()?) { &a[1] } else { &a[2] };
                self.decide(chosen)
            }
            Value::Object(m) => {
                Some(Value::Object(m.iter().filter_map(|(k, v)| self.decide(v).map(|v| (k.clone(), v))).collect()))
            }
            Value::Array(a) => Some(Value::Array(a.iter().filter_map(|v| self.decide(v)).collect())),
            other => Some(other.clone()),
        }
    }
}

/// The template `template` (JSON) resolved for `parameters` (the rest take their defaults).
#[cfg(test)]
pub fn resolve(template: &Value, parameters: &[(&str, String)]) -> Value {
    decide(template, parameters, false)
}

/// [`resolve`], keeping every declared parameter (also those only conditions read), so an
/// emulator's stack records every value and a later `upgrade` can decide the same conditions.
pub fn resolve_keeping_parameters(template: &Value, parameters: &[(&str, String)]) -> Value {
    decide(template, parameters, true)
}

fn decide(template: &Value, parameters: &[(&str, String)], keep_parameters: bool) -> Value {
    let mut values: BTreeMap<String, String> = template["Parameters"]
        .as_object()
        .map(|m| m.iter().map(|(k, p)| (k.clone(), p.get("Default").map(value_text).unwrap_or_default())).collect())
        .unwrap_or_default();
    for (k, v) in parameters {
        values.insert((*k).to_owned(), v.clone());
    }
    let empty = Map::new();
    let cx = Context { parameters: values, conditions: template["Conditions"].as_object().unwrap_or(&empty) };
    let mut out = template.clone();
    for section in ["Resources", "Outputs"] {
        let kept: Map<String, Value> = template[section]
            .as_object()
            .unwrap_or(&empty)
            .iter()
            .filter(|(_, item)| item.get("Condition").and_then(Value::as_str).is_none_or(|c| cx.condition(c)))
            .filter_map(|(k, item)| {
                let mut item = cx.decide(item)?;
                item.as_object_mut()?.remove("Condition");
                Some((k.clone(), item))
            })
            .collect();
        out[section] = Value::Object(kept);
    }
    // Every condition is decided now; parameters only they read go too.
    let mut used = std::collections::BTreeSet::new();
    referenced(&out["Resources"], &mut used);
    referenced(&out["Outputs"], &mut used);
    let root = out.as_object_mut().expect("a template is an object");
    root.remove("Conditions");
    if let Some(Value::Object(params)) = root.get_mut("Parameters") {
        params.retain(|name, _| keep_parameters || used.contains(name));
        // The row's values become the defaults, so a linter resolves each Ref as deployed.
        for (name, p) in params.iter_mut() {
            let value = &cx.parameters[name];
            p["Default"] = if p["Type"] == "Number" {
                value.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(value.clone()))
            } else {
                Value::from(value.clone())
            };
        }
    }
    out
}

/// Names read through `Ref` or `${…}` in `Fn::Sub`.
fn referenced(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("Ref") {
                out.insert(r.clone());
            }
            if let Some(Value::String(text)) = m.get("Fn::Sub") {
                for part in text.split("${").skip(1) {
                    if let Some(name) = part.split('}').next() {
                        out.insert(name.split('.').next().unwrap_or(name).to_owned());
                    }
                }
            }
            m.values().for_each(|x| referenced(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| referenced(x, out)),
        _ => {}
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

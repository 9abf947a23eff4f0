//! CloudFormation's document shape as Rust types, and its intrinsic functions in long form
//! only (`Fn::If`, `Fn::Sub`, `Ref`, `{"Condition": …}`), serialised to JSON.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Template {
    #[serde(rename = "AWSTemplateFormatVersion")]
    pub format_version: &'static str,
    pub description: &'static str,
    pub parameters: BTreeMap<&'static str, Parameter>,
    pub conditions: BTreeMap<&'static str, Value>,
    pub resources: BTreeMap<&'static str, Resource>,
    pub outputs: BTreeMap<&'static str, Output>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Parameter {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    pub description: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_values: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value: Option<u64>,
}

impl Parameter {
    pub fn string(default: &str, description: &'static str) -> Parameter {
        Parameter {
            kind: "String",
            default: Some(json!(default)),
            description,
            allowed_values: Vec::new(),
            min_value: None,
            max_value: None,
        }
    }

    pub fn number(default: u64, min: u64, max: u64, description: &'static str) -> Parameter {
        Parameter {
            kind: "Number",
            default: Some(json!(default)),
            description,
            allowed_values: Vec::new(),
            min_value: Some(min),
            max_value: Some(max),
        }
    }

    /// A string without a default: the stack cannot be created without it.
    pub fn required(description: &'static str) -> Parameter {
        Parameter { default: None, ..Parameter::string("", description) }
    }

    /// A `true`/`false` switch.
    pub fn flag(default: bool, description: &'static str) -> Parameter {
        Parameter {
            allowed_values: vec![json!("true"), json!("false")],
            ..Parameter::string(&default.to_string(), description)
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resource {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<&'static str>,
    pub properties: Value,
}

impl Resource {
    pub fn new(kind: &'static str, condition: Option<&'static str>, properties: Value) -> Resource {
        Resource { kind, condition, depends_on: Vec::new(), properties }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Output {
    pub description: &'static str,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<&'static str>,
    pub export: Value,
}

impl Output {
    pub fn new(description: &'static str, value: Value, condition: Option<&'static str>, export: &str) -> Output {
        Output { description, value, condition, export: json!({"Name": sub(&format!("${{AWS::StackName}}-{export}"))}) }
    }
}

pub fn r#ref(name: &str) -> Value {
    json!({"Ref": name})
}

pub fn sub(text: &str) -> Value {
    json!({"Fn::Sub": text})
}

pub fn get_att(resource: &str, attribute: &str) -> Value {
    json!({"Fn::GetAtt": [resource, attribute]})
}

pub fn if_(condition: &str, yes: Value, no: Value) -> Value {
    json!({"Fn::If": [condition, yes, no]})
}

pub fn equals(a: Value, b: Value) -> Value {
    json!({"Fn::Equals": [a, b]})
}

pub fn and(items: Vec<Value>) -> Value {
    json!({"Fn::And": items})
}

pub fn or(items: Vec<Value>) -> Value {
    json!({"Fn::Or": items})
}

pub fn not(item: Value) -> Value {
    json!({"Fn::Not": [item]})
}

/// A condition used inside another condition.
pub fn cond(name: &str) -> Value {
    json!({"Condition": name})
}

pub fn no_value() -> Value {
    r#ref("AWS::NoValue")
}

/// `Parameter == "true"`.
pub fn is_true(parameter: &str) -> Value {
    equals(r#ref(parameter), json!("true"))
}

/// `Parameter != ""`.
pub fn is_set(parameter: &str) -> Value {
    not(equals(r#ref(parameter), json!("")))
}

/// The tag every resource carries.
pub fn app_tags() -> Value {
    json!([{"Key": "Application", "Value": "zae-limiter"}])
}

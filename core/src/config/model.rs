//! The YAML documents as written, before validation. Every key envoyproxy/ratelimit accepts
//! is accepted here, so its configs load unchanged; unknown keys are errors.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainFile {
    pub domain: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DescriptorNode {
    pub key: Option<String>,
    pub value: Option<String>,
    pub rate_limit: Option<RateLimit>,
    /// zael extension: the node charges a zae-limiter entity's stored limits.
    pub entity: Option<EntityBinding>,
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub allow_debt: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    /// zael extension: `false` keeps the rule's buckets off token reservations (one store
    /// write per decision).
    pub reserve: Option<bool>,
    #[serde(default)]
    pub quota_mode: bool,
    #[serde(default)]
    pub value_to_metric: bool,
    #[serde(default)]
    pub share_threshold: bool,
    /// Returned in the response's dynamic metadata for a descriptor that passed.
    pub metadata: Option<super::Metadata>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimit {
    pub unit: Option<String>,
    #[serde(default)]
    pub requests_per_unit: u32,
    #[serde(default)]
    pub unlimited: bool,
    pub name: Option<String>,
    #[serde(default)]
    pub replaces: Vec<Replace>,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Replace {
    pub name: Option<String>,
}

/// `entity:` on a descriptor node (a zael extension): which entry names the zae-limiter
/// entity, which resource it charges and how much of each stored limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntityBinding {
    /// The key of the entry whose value is the entity id; default: this node's key.
    pub id_from: Option<String>,
    /// A literal resource name.
    pub resource: Option<String>,
    /// The key of the entry whose value is the resource name.
    pub resource_from: Option<String>,
    /// Limit name to amount: whole tokens, or `hits` for the descriptor's hits.
    #[serde(default)]
    pub consume: BTreeMap<String, Amount>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Amount {
    Tokens(u64),
    Word(String),
    /// Anything else numeric (negative, fractional), reported as an error.
    Number(f64),
}

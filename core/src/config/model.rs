//! The YAML documents as written, before validation. Every key envoyproxy/ratelimit accepts
//! is accepted here, so its configs load unchanged; unknown keys are errors.

use serde::Deserialize;
use serde::de::IgnoredAny;

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
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub allow_debt: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    // Accepted for compatibility, not implemented yet: a warning is logged when set.
    #[serde(default)]
    pub quota_mode: bool,
    #[serde(default)]
    pub value_to_metric: bool,
    #[serde(default)]
    pub share_threshold: bool,
    pub metadata: Option<IgnoredAny>,
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

//! The envoyproxy/ratelimit YAML config: model, loading, validation and the compiled matcher.
//!
//! One domain per file. Besides the reference format this accepts four extensions:
//! `namespace:` at the top of a file, `burst:` in a `rate_limit`, and `allow_debt:` and
//! `entity:` on a descriptor node (see the README).

mod load;
mod matcher;
mod model;
mod steps;

pub use load::{ConfigError, ConfigErrors, LoadOptions, compile, load_path, parse_domain, read_sources};
pub use matcher::{Amount, Domain, EntityRule, RateLimitConfig, ResourceSource, Rule, RuleLimit};
pub use steps::{Matched, RulePath, Step};

/// A rule's `metadata:` (any YAML mapping), returned in the response's dynamic metadata.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The units of the config format, with the lengths envoyproxy/ratelimit uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week, Unit::Month, Unit::Year];

    /// Length in seconds; a month is 30 days and a year 365 days.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit name, case-insensitively.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.as_str().eq_ignore_ascii_case(name))
    }
}

//! The config levels of the table format (`table-format.md` §8), as every store reads them:
//! a stored limit, the level it was resolved from, and the access an entity has.
//!
//! The rules, one function each: **resolution** ([`first_defining`], §8.3) takes the first
//! level, in precedence order (entity + resource, entity default, resource, system), that
//! defines at least one limit, whole; **access** ([`first_explicit`], §8.5) takes the first
//! explicit `disabled` of entity + resource, entity, resource (`true`, `false` or the
//! library's `"bypass"`); none means enforced. The embedded store applies them to its
//! `--entities` file, the DynamoDB store to the config items it read.

use crate::bucket::BucketLimit;

/// One stored limit, in bucket units (millitokens, milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLimit {
    pub name: String,
    pub limit: BucketLimit,
    /// A soft limit admits whatever its balance (debiting into debt).
    pub soft: bool,
}

/// The config level limits were resolved from, in precedence order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Level {
    EntityResource,
    EntityDefault,
    Resource,
    System,
}

impl Level {
    /// Every level, in precedence order.
    pub const ALL: [Level; 4] = [Level::EntityResource, Level::EntityDefault, Level::Resource, Level::System];

    /// Whether buckets of limits from this level carry a `ttl` (§11.12): the defaults shared
    /// by many entities do, an entity's own limits do not.
    pub fn ttl_applies(self) -> bool {
        matches!(self, Level::Resource | Level::System)
    }
}

/// What the access walk says of an entity on a resource.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Access {
    #[default]
    Enforced,
    /// Never admitted, nothing written.
    Disabled,
    /// Admitted without a debit; usage still counted.
    Bypass,
}

/// The first level, in precedence order, whose value `defines` says counts, with its level.
pub fn first_defining<T>(levels: [Option<T>; 4], defines: impl Fn(&T) -> bool) -> Option<(Level, T)> {
    levels.into_iter().zip(Level::ALL).find_map(|(value, level)| value.filter(|v| defines(v)).map(|v| (level, v)))
}

/// The access of the first level with an explicit flag (entity + resource, entity, resource).
pub fn first_explicit(levels: impl IntoIterator<Item = Option<Access>>) -> Access {
    levels.into_iter().flatten().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_defining_level_wins() {
        let levels = [None, Some(vec![]), Some(vec![1]), Some(vec![2, 3])];
        assert_eq!(first_defining(levels, |v| !v.is_empty()), Some((Level::Resource, vec![1])));
        assert_eq!(first_defining([None::<Vec<i32>>, None, None, None], |v| !v.is_empty()), None);
        assert!(Level::System.ttl_applies() && !Level::EntityDefault.ttl_applies());
    }

    #[test]
    fn the_first_explicit_access_wins() {
        assert_eq!(first_explicit([None, Some(Access::Bypass), Some(Access::Disabled)]), Access::Bypass);
        assert_eq!(first_explicit([Some(Access::Enforced), Some(Access::Disabled)]), Access::Enforced);
        assert_eq!(first_explicit([None, None, None]), Access::Enforced);
    }
}

//! Key formats and attribute names of the zae-limiter 0.17.0 table (`table-format.md` §4, §5).

/// PK of the table-wide records (namespace registry, version record).
pub const SYSTEM_PK: &str = "_/SYSTEM#";
/// The reserved namespace id of the table-wide records (their `GSI4PK`).
pub const RESERVED_NAMESPACE: &str = "_";
/// SK of every bucket shard item.
pub const SK_STATE: &str = "#STATE";
/// SK of an entity's metadata item.
pub const SK_META: &str = "#META";
/// SK of the version record.
pub const SK_VERSION: &str = "#VERSION";

/// The reserved pseudo-limit that meters partition writes (§9.4).
pub const WCU: &str = "wcu";
/// `b_wcu_cp` / `b_wcu_ra` in millitokens: 1000 writes per second.
pub const WCU_CAPACITY: i64 = 1_000_000;
/// `b_wcu_rp` in milliseconds.
pub const WCU_PERIOD_MS: i64 = 1000;
/// One fast-path write, in wcu millitokens.
pub const WCU_PER_WRITE: i64 = 1000;
/// Most shards a bucket may have (§11.8).
pub const MAX_SHARD_COUNT: i64 = 32;
/// The Python library's `bucket_ttl_multiplier` (§11.12).
pub const TTL_MULTIPLIER: f64 = 7.0;

/// SK of a config item (`{ns}/SYSTEM#` `#CONFIG`: the namespace's system config).
pub const SK_CONFIG: &str = "#CONFIG";
/// Prefix of the entity-level config sorts: `#CONFIG#{resource}` (or `_default_`).
pub const SK_CONFIG_PREFIX: &str = "#CONFIG#";

/// `{ns}/SYSTEM#`: the namespace's system records.
pub fn pk_system(ns: &str) -> String {
    format!("{ns}/SYSTEM#")
}

/// `#NAMESPACE#{name}`: the forward registry record.
pub fn sk_namespace(name: &str) -> String {
    format!("#NAMESPACE#{name}")
}

/// `#NSID#{id}`: the reverse registry record.
pub fn sk_nsid(id: &str) -> String {
    format!("#NSID#{id}")
}

/// `{ns}/BUCKET#{e}#{r}#{s}`.
pub fn pk_bucket(ns: &str, entity: &str, resource: &str, shard: i64) -> String {
    format!("{ns}/BUCKET#{entity}#{resource}#{shard}")
}

/// The parts of a bucket partition key `{ns}/BUCKET#{e}#{r}#{s}`: namespace, entity, resource,
/// shard (entity ids and resources contain no `#`; a resource may contain `/`).
pub fn parse_pk_bucket(pk: &str) -> Option<(&str, &str, &str, i64)> {
    let (namespace, rest) = pk.split_once('/')?;
    let mut parts = rest.strip_prefix("BUCKET#")?.split('#');
    let (entity, resource, shard) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || entity.is_empty() || resource.is_empty() {
        return None;
    }
    Some((namespace, entity, resource, shard.parse().ok()?))
}

/// The deadline of a soft or bypass stamp written at `now_ms`: `now + 60 s × U(0.8, 1.0)`, the
/// library's `stamp_deadline` with its default stamp TTL (the jitter spreads renewals).
pub fn stamp_deadline(now_ms: i64) -> i64 {
    use rand::Rng;
    now_ms + rand::rng().random_range(48_000..=60_000)
}

/// The `(PK, SK)` of the four stored config levels of `(entity, resource)`, in precedence
/// order (§8.1): entity + resource, entity default, resource, system. The first three are the
/// access walk's (§8.5).
pub fn config_levels(ns: &str, entity: &str, resource: &str) -> [(String, String); 4] {
    [
        (pk_entity(ns, entity), format!("{SK_CONFIG_PREFIX}{resource}")),
        (pk_entity(ns, entity), format!("{SK_CONFIG_PREFIX}_default_")),
        (pk_resource(ns, resource), SK_CONFIG.to_owned()),
        (pk_system(ns), SK_CONFIG.to_owned()),
    ]
}

/// `{ns}/RESOURCE#{r}`: the resource-level config partition.
pub fn pk_resource(ns: &str, resource: &str) -> String {
    format!("{ns}/RESOURCE#{resource}")
}

/// The entity partition key `{ns}/ENTITY#{entity}` (META and entity-level config).
pub fn pk_entity(ns: &str, entity: &str) -> String {
    format!("{ns}/ENTITY#{entity}")
}

/// `GSI2PK` of a bucket: `{ns}/RESOURCE#{r}`.
pub fn gsi2_pk(ns: &str, resource: &str) -> String {
    format!("{ns}/RESOURCE#{resource}")
}

/// `GSI2SK` of a bucket: `BUCKET#{e}#{s}`.
pub fn gsi2_sk(entity: &str, shard: i64) -> String {
    format!("BUCKET#{entity}#{shard}")
}

/// `GSI3SK` of a bucket: `BUCKET#{r}#{s}` (its `GSI3PK` is [`pk_entity`]).
pub fn gsi3_sk(resource: &str, shard: i64) -> String {
    format!("BUCKET#{resource}#{shard}")
}

/// `GSI4SK` of a bucket: `BUCKET#{e}#{r}#{s}`, without the namespace prefix (quirk 15).
pub fn gsi4_sk(entity: &str, resource: &str, shard: i64) -> String {
    format!("BUCKET#{entity}#{resource}#{shard}")
}

/// `b_{name}_{field}`.
pub fn battr(name: &str, field: &str) -> String {
    format!("b_{name}_{field}")
}

/// Splits `b_{name}_{field}` at the last `_` (limit names may contain `_`).
pub fn parse_battr(attr: &str) -> Option<(&str, &str)> {
    let rest = attr.strip_prefix("b_")?;
    let idx = rest.rfind('_')?;
    if idx == 0 {
        return None;
    }
    Some((&rest[..idx], &rest[idx + 1..]))
}

/// Whether `entity` is a valid zae-limiter entity id (§4).
pub fn is_valid_entity(entity: &str) -> bool {
    zael_core::keys::is_valid_entity_id(entity)
}

/// Whether `resource` is a valid zae-limiter resource (§4); the entity-level `_default_` is not.
pub fn is_valid_resource(resource: &str) -> bool {
    zael_core::keys::is_valid_resource(resource)
}

/// Whether `name` is a valid stack (= table) name: `^[A-Za-z][A-Za-z0-9-]*$`, at most 55
/// characters; legacy names starting with `ZAEL-` are accepted as they are.
pub fn is_valid_table(name: &str) -> bool {
    let b = name.as_bytes();
    if name.starts_with("ZAEL-") {
        return true;
    }
    !b.is_empty()
        && b.len() <= 55
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn bucket_keys_parse_back() {
        use super::{parse_pk_bucket, pk_bucket};
        assert_eq!(parse_pk_bucket(&pk_bucket("a1", "e:1", "res/x.y", 3)), Some(("a1", "e:1", "res/x.y", 3)));
        assert_eq!(parse_pk_bucket("a1/ENTITY#e"), None);
        assert_eq!(parse_pk_bucket("a1/BUCKET#e#r"), None);
        assert_eq!(parse_pk_bucket("a1/BUCKET#e#r#x"), None);
        assert_eq!(parse_pk_bucket("BUCKET#e#r#0"), None);
    }

    use super::*;

    #[test]
    fn key_formats() {
        assert_eq!(pk_bucket("wzOnsq03OVA", "key-1", "gpt-4", 0), "wzOnsq03OVA/BUCKET#key-1#gpt-4#0");
        assert_eq!(gsi2_sk("key-1", 3), "BUCKET#key-1#3");
        assert_eq!(gsi3_sk("gpt-4", 0), "BUCKET#gpt-4#0");
        assert_eq!(gsi4_sk("key-1", "gpt-4", 0), "BUCKET#key-1#gpt-4#0");
        assert_eq!(battr("a_b", "tk"), "b_a_b_tk");
        assert_eq!(parse_battr("b_a_b_tk"), Some(("a_b", "tk")));
        assert_eq!(parse_battr("b__tk"), None);
        assert_eq!(parse_battr("x_a_tk"), None);
    }

    #[test]
    fn identifiers() {
        assert!(is_valid_entity("user:alice@path:_2F"));
        assert!(!is_valid_entity("_x"));
        assert!(!is_valid_entity("a#b"));
        assert!(is_valid_resource("openai/gpt-4"));
        assert!(!is_valid_resource("_default_"));
        assert!(!is_valid_resource("1abc"));
        assert!(is_valid_table("zae-limiter"));
        assert!(!is_valid_table("zae_limiter"));
        assert!(is_valid_table("ZAEL-old_name"));
    }
}

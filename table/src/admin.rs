//! The library's administrative writes: the table definition, the version record and the
//! namespace registry, exactly as zae-limiter 0.17.0 writes them (`schema.get_table_definition`,
//! `Repository._register_namespace`, `_initialize_version_record`, `delete_namespace`).
//!
//! Used by the `zae-limiter` CLI and by the tests; the store itself never calls them (zael-server
//! never creates tables or registers namespaces).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    LocalSecondaryIndex, Projection, ProjectionType, Put, ScalarAttributeType, StreamSpecification, StreamViewType,
    TableStatus, TransactWriteItem,
};
use rand::Rng;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::{self, RESERVED_NAMESPACE, SYSTEM_PK};

/// Any error of these helpers, as text.
pub type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("complete key element")
}

fn projection(kind: ProjectionType) -> Projection {
    Projection::builder().projection_type(kind).build()
}

/// Creates `table` with the definition of `table-format.md` §3 (keys, GSI1-4, LSI1-5,
/// PAY_PER_REQUEST, stream NEW_AND_OLD_IMAGES; no TTL, like `create_table()`), and waits
/// (at most 30 s) until it is ACTIVE.
pub async fn create_table(client: &Client, table: &str) -> Result<(), Error> {
    let attrs = [
        "PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "GSI4PK", "GSI4SK", "LSI1SK", "LSI2SK",
        "LSI3SK", "LSI4SK", "LSI5SK",
    ];
    let mut request = client.create_table().table_name(table).billing_mode(BillingMode::PayPerRequest);
    for a in attrs {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(a)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(err)?,
        );
    }
    request = request.key_schema(key("PK", KeyType::Hash)).key_schema(key("SK", KeyType::Range));
    for (i, kind) in [ProjectionType::All, ProjectionType::All, ProjectionType::KeysOnly, ProjectionType::KeysOnly]
        .into_iter()
        .enumerate()
    {
        let n = i + 1;
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(format!("GSI{n}"))
                .key_schema(key(&format!("GSI{n}PK"), KeyType::Hash))
                .key_schema(key(&format!("GSI{n}SK"), KeyType::Range))
                .projection(projection(kind))
                .build()
                .map_err(err)?,
        );
    }
    for n in 1..=5 {
        let kind = if n % 2 == 1 { ProjectionType::All } else { ProjectionType::KeysOnly };
        request = request.local_secondary_indexes(
            LocalSecondaryIndex::builder()
                .index_name(format!("LSI{n}"))
                .key_schema(key("PK", KeyType::Hash))
                .key_schema(key(&format!("LSI{n}SK"), KeyType::Range))
                .projection(projection(kind))
                .build()
                .map_err(err)?,
        );
    }
    request = request.stream_specification(
        StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewAndOldImages)
            .build()
            .map_err(err)?,
    );
    request
        .send()
        .await
        .map_err(|e| format!("CreateTable {table}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
    for _ in 0..300 {
        let out = client.describe_table().table_name(table).send().await.map_err(err)?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("table {table} did not become ACTIVE within 30 s"))
}

/// `%Y-%m-%dT%H:%M:%SZ` of the current UTC time.
pub fn iso_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A namespace id as the library draws it: `secrets.token_urlsafe(8)` (11 characters of
/// `[A-Za-z0-9_-]`), redrawn while it starts with `-`.
pub fn new_namespace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes: [u8; 8] = rand::rng().random();
        let mut bits: u128 = 0;
        for b in bytes {
            bits = (bits << 8) | u128::from(b);
        }
        // 64 bits -> 11 base64url characters (66 bits, the last 2 padding zeros).
        bits <<= 2;
        let id: String = (0..11).rev().map(|i| ALPHABET[((bits >> (6 * i)) & 63) as usize] as char).collect();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn registry_item(sk: String, id: &str, name: &str, created_at: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("PK".to_owned(), AttributeValue::S(SYSTEM_PK.to_owned())),
        ("SK".to_owned(), AttributeValue::S(sk)),
        ("namespace_id".to_owned(), AttributeValue::S(id.to_owned())),
        ("namespace_name".to_owned(), AttributeValue::S(name.to_owned())),
        ("status".to_owned(), AttributeValue::S("active".to_owned())),
        ("created_at".to_owned(), AttributeValue::S(created_at.to_owned())),
        ("GSI4PK".to_owned(), AttributeValue::S(RESERVED_NAMESPACE.to_owned())),
        ("GSI4SK".to_owned(), AttributeValue::S(SYSTEM_PK.to_owned())),
    ])
}

/// Registers `name` like the library (two Puts under `attribute_not_exists(PK)` in one
/// transaction); an existing registration answers its id. Returns the namespace id.
pub async fn register_namespace(client: &Client, table: &str, name: &str) -> Result<String, Error> {
    register_namespace_as(client, table, name, &new_namespace_id()).await
}

/// [`register_namespace`] with a given id (e.g. to restore a table an emulator lost).
pub async fn register_namespace_as(client: &Client, table: &str, name: &str, id: &str) -> Result<String, Error> {
    let id = id.to_owned();
    let now = iso_now();
    let put = |sk: String| -> Result<TransactWriteItem, Error> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(table)
                    .set_item(Some(registry_item(sk, &id, name, &now)))
                    .condition_expression("attribute_not_exists(PK)")
                    .build()
                    .map_err(err)?,
            )
            .build())
    };
    let result = client
        .transact_write_items()
        .transact_items(put(keys::sk_namespace(name))?)
        .transact_items(put(keys::sk_nsid(&id))?)
        .send()
        .await;
    match result {
        Ok(_) => Ok(id),
        Err(e) if e.code() == Some("TransactionCanceledException") => resolve_namespace(client, table, name)
            .await?
            .ok_or_else(|| format!("namespace {name} exists but cannot be resolved")),
        Err(e) => Err(format!("register {name}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e))),
    }
}

/// The id of an active namespace, like the library's `_resolve_namespace`.
pub async fn resolve_namespace(client: &Client, table: &str, name: &str) -> Result<Option<String>, Error> {
    let out = client
        .get_item()
        .table_name(table)
        .key("PK", AttributeValue::S(SYSTEM_PK.to_owned()))
        .key("SK", AttributeValue::S(keys::sk_namespace(name)))
        .send()
        .await
        .map_err(err)?;
    let Some(item) = out.item else { return Ok(None) };
    let status = item.get("status").and_then(|v| v.as_s().ok()).map(String::as_str).unwrap_or("");
    if status == "deleted" || status == "purging" {
        return Ok(None);
    }
    Ok(item.get("namespace_id").and_then(|v| v.as_s().ok()).cloned())
}

/// Soft-deletes a namespace like the library: the forward record is deleted, the reverse
/// record gets `status = deleted` and `deleted_at`.
pub async fn delete_namespace(client: &Client, table: &str, name: &str) -> Result<(), Error> {
    let id = resolve_namespace(client, table, name).await?.ok_or_else(|| format!("namespace {name} not found"))?;
    client
        .delete_item()
        .table_name(table)
        .key("PK", AttributeValue::S(SYSTEM_PK.to_owned()))
        .key("SK", AttributeValue::S(keys::sk_namespace(name)))
        .send()
        .await
        .map_err(err)?;
    client
        .update_item()
        .table_name(table)
        .key("PK", AttributeValue::S(SYSTEM_PK.to_owned()))
        .key("SK", AttributeValue::S(keys::sk_nsid(&id)))
        .update_expression("SET #status = :deleted, deleted_at = :now")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":deleted", AttributeValue::S("deleted".to_owned()))
        .expression_attribute_values(":now", AttributeValue::S(iso_now()))
        .send()
        .await
        .map_err(err)?;
    Ok(())
}

/// Writes (replaces) the namespace's system config item (`{ns}/SYSTEM#` `#CONFIG`) like the
/// library's `set_system_defaults` with no limits: `config_version`, `on_unavailable` when
/// given, and the GSI4 keys.
pub async fn put_system_config(
    client: &Client,
    table: &str,
    namespace_id: &str,
    on_unavailable: Option<&str>,
) -> Result<(), Error> {
    let pk = keys::pk_system(namespace_id);
    let mut item = HashMap::from([
        ("PK".to_owned(), AttributeValue::S(pk.clone())),
        ("SK".to_owned(), AttributeValue::S(keys::SK_CONFIG.to_owned())),
        ("config_version".to_owned(), AttributeValue::N("1".to_owned())),
        ("GSI4PK".to_owned(), AttributeValue::S(namespace_id.to_owned())),
        ("GSI4SK".to_owned(), AttributeValue::S(pk)),
    ]);
    if let Some(v) = on_unavailable {
        item.insert("on_unavailable".to_owned(), AttributeValue::S(v.to_owned()));
    }
    client.put_item().table_name(table).set_item(Some(item)).send().await.map_err(err)?;
    Ok(())
}

/// Writes (replaces) the version record with the given versions; `lambda_version = None`
/// stores `NULL`, as the library does when it cannot tell.
pub async fn put_version_record(
    client: &Client,
    table: &str,
    schema_version: &str,
    client_min_version: &str,
    lambda_version: Option<&str>,
) -> Result<(), Error> {
    let now = iso_now();
    let item = HashMap::from([
        ("PK".to_owned(), AttributeValue::S(SYSTEM_PK.to_owned())),
        ("SK".to_owned(), AttributeValue::S(keys::SK_VERSION.to_owned())),
        ("schema_version".to_owned(), AttributeValue::S(schema_version.to_owned())),
        ("client_min_version".to_owned(), AttributeValue::S(client_min_version.to_owned())),
        ("updated_at".to_owned(), AttributeValue::S(now)),
        (
            "lambda_version".to_owned(),
            lambda_version.map_or(AttributeValue::Null(true), |v| AttributeValue::S(v.to_owned())),
        ),
        ("updated_by".to_owned(), AttributeValue::S(format!("client:{}", crate::version::IMPLEMENTED_VERSION))),
        ("GSI4PK".to_owned(), AttributeValue::S(RESERVED_NAMESPACE.to_owned())),
        ("GSI4SK".to_owned(), AttributeValue::S(SYSTEM_PK.to_owned())),
    ]);
    client.put_item().table_name(table).set_item(Some(item)).send().await.map_err(err)?;
    Ok(())
}

/// Creates the table, writes the version record a fresh `Repository.open()` writes
/// (`0.10.0`, `0.0.0`, `0.17.0`) and registers `namespaces`; returns their ids in order.
pub async fn setup_table(client: &Client, table: &str, namespaces: &[&str]) -> Result<Vec<String>, Error> {
    create_table(client, table).await?;
    put_version_record(client, table, "0.10.0", "0.0.0", Some(crate::version::IMPLEMENTED_VERSION)).await?;
    let mut ids = Vec::with_capacity(namespaces.len());
    for name in namespaces {
        ids.push(register_namespace(client, table, name).await?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_ids_look_like_token_urlsafe() {
        for _ in 0..200 {
            let id = new_namespace_id();
            assert_eq!(id.len(), 11);
            assert!(!id.starts_with('-'));
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        }
    }

    #[test]
    fn iso_timestamps() {
        let t = iso_now();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z') && &t[4..5] == "-" && &t[10..11] == "T");
    }
}

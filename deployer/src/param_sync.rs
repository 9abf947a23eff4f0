//! The param sync of an entity-level `set-limits` (`table-format.md` §9.7): every existing
//! shard of the entity's buckets on the resource gets the new parameters, `vu = 0` (the next
//! writer's slow pass clamps the balance) and no `ttl` (its limits are entity-level now).

use aws_sdk_dynamodb::types::AttributeValue;
use zael_table::keys;

use crate::config_item::{Item, n, s};
use crate::limit_spec::LimitSpec;
use crate::repo::{Repo, Result, describe};

/// Shards of `entity`'s buckets on `resource` (`_default_`: on every resource the entity has
/// no config of its own for), by GSI3.
async fn shards(repo: &Repo, ns: &str, entity: &str, resource: &str) -> Result<Vec<(String, String)>> {
    let prefix = if resource == crate::commands::limits::DEFAULT_RESOURCE {
        "BUCKET#".to_owned()
    } else {
        format!("BUCKET#{resource}#")
    };
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let out = repo
            .db
            .query()
            .table_name(&repo.table)
            .index_name("GSI3")
            .key_condition_expression("GSI3PK = :pk AND begins_with(GSI3SK, :prefix)")
            .expression_attribute_values(":pk", s(keys::pk_entity(ns, entity)))
            .expression_attribute_values(":prefix", s(prefix.clone()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| format!("Failed to find the entity's buckets: {}", describe(&e)))?;
        for item in out.items.unwrap_or_default() {
            let text = |a: &str| match item.get(a) {
                Some(AttributeValue::S(v)) => v.clone(),
                _ => String::new(),
            };
            found.push((text("PK"), text("resource")));
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(found);
        }
    }
}

pub async fn sync(repo: &Repo, ns: &str, entity: &str, resource: &str, limits: &[LimitSpec]) -> Result<()> {
    let default = resource == crate::commands::limits::DEFAULT_RESOURCE;
    for (pk, bucket_resource) in shards(repo, ns, entity, resource).await? {
        if default {
            // A resource with the entity's own config keeps it.
            let own = format!("{}{bucket_resource}", keys::SK_CONFIG_PREFIX);
            if repo.get(&keys::pk_entity(ns, entity), &own).await?.is_some() {
                continue;
            }
        }
        let mut names = std::collections::HashMap::from([
            ("#vu".to_owned(), "vu".to_owned()),
            ("#ttl".to_owned(), "ttl".to_owned()),
        ]);
        let mut values: Item = Item::from([(":vz".to_owned(), n(0))]);
        let mut set = vec!["#vu = :vz".to_owned()];
        let mut remove = vec!["#ttl".to_owned()];
        let deadline = soft_deadline();
        for (i, l) in limits.iter().enumerate() {
            for (field, value) in [
                ("cp", l.capacity.saturating_mul(1000)),
                ("ra", l.refill_amount.saturating_mul(1000)),
                ("rp", l.refill_period_seconds.saturating_mul(1000)),
            ] {
                names.insert(format!("#{field}{i}"), keys::battr(&l.name, field));
                values.insert(format!(":{field}{i}"), n(value));
                set.push(format!("#{field}{i} = :{field}{i}"));
            }
            names.insert(format!("#so{i}"), keys::battr(&l.name, "soft"));
            if l.soft {
                values.insert(format!(":so{i}"), n(deadline));
                set.push(format!("#so{i} = :so{i}"));
            } else {
                remove.push(format!("#so{i}"));
            }
        }
        let result = repo
            .db
            .update_item()
            .table_name(&repo.table)
            .key("PK", s(&pk))
            .key("SK", s(keys::SK_STATE))
            .update_expression(format!("SET {} REMOVE {}", set.join(", "), remove.join(", ")))
            .condition_expression("attribute_exists(PK)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        if let Err(e) = result
            && !e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception())
        {
            return Err(crate::Failure::from(format!("Failed to sync bucket parameters: {}", describe(&e))));
        }
    }
    Ok(())
}

/// A soft stamp written now: `now + 60 s × U(0.8, 1.0)` (the library's `stamp_deadline`).
fn soft_deadline() -> i64 {
    use rand::Rng;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_millis() as i64 + rand::rng().random_range(48_000..=60_000)
}

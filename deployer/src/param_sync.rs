//! The param sync of an entity-level `set-limits` (`table-format.md` §9.7): every existing
//! shard of the entity's buckets on the resource gets the new parameters, `vu = 0` (the next
//! writer's slow pass clamps the balance) and no `ttl` (its limits are entity-level now).

use zael_table::keys;

use crate::config_item::{Item, n, s};
use crate::limit_spec::LimitSpec;
use crate::repo::{Repo, Result, describe, now_ms};

pub async fn sync(repo: &Repo, ns: &str, entity: &str, resource: &str, limits: &[LimitSpec]) -> Result<()> {
    let default = resource == crate::level::DEFAULT_RESOURCE;
    let scope = crate::stamps::Scope::Entity { entity, resource };
    for (pk, _, bucket_resource) in crate::stamps::buckets(repo, ns, &scope).await? {
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
        let deadline = zael_table::keys::stamp_deadline(now_ms());
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

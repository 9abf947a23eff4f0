//! `zae-limiter entity …` (§6): entities (`#META`) and their limits.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use zael_core::keys::is_valid_entity_id;
use zael_table::keys;

use super::DataTarget;
use super::access::Change;
use super::limits;
use crate::config_item::{Item, n, s};
use crate::level::{DEFAULT_RESOURCE, Level};
use crate::repo::{Repo, Result, describe};

#[derive(Debug, clap::Subcommand)]
pub enum EntityCommand {
    /// Create a new entity.
    Create {
        entity_id: String,
        /// Human-readable name (defaults to the entity ID).
        #[arg(long)]
        display_name: Option<String>,
        /// Parent entity ID (for hierarchical limits).
        #[arg(long)]
        parent: Option<String>,
        /// Enable cascade: an acquire also consumes from the parent entity.
        #[arg(long, overrides_with = "no_cascade")]
        cascade: bool,
        #[arg(long = "no-cascade")]
        no_cascade: bool,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Show an entity.
    Show {
        entity_id: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Set limits for an entity and resource.
    SetLimits {
        entity_id: String,
        /// Resource name ('_default_' for every resource).
        #[arg(short = 'r', long, default_value = DEFAULT_RESOURCE)]
        resource: String,
        /// Limit as 'name:rate[/period]' or 'name:rate[/period]:burst' (repeatable).
        #[arg(short = 'l', long = "limit", required = true)]
        limits: Vec<String>,
        /// Make the named limit soft (repeatable).
        #[arg(long = "soft", value_name = "NAME")]
        soft: Vec<String>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Show the limits set for an entity and resource.
    GetLimits {
        entity_id: String,
        #[arg(short = 'r', long, default_value = DEFAULT_RESOURCE)]
        resource: String,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Disable an entity (on one resource, or on all of them).
    Disable(FlagArgs),
    /// Enable an entity explicitly (an override of a disabled resource).
    Enable(FlagArgs),
    /// Bypass an entity: admitted, usage counted, no balance debited.
    Bypass(FlagArgs),
    /// Remove the entity's disabled/bypass flag (inherit again).
    ClearDisabled(FlagArgs),
    /// Set the entity's cascade policy (on one resource, or on all of them).
    SetCascade {
        entity_id: String,
        #[arg(value_parser = ["on", "off"])]
        value: String,
        #[arg(long)]
        resource: Option<String>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Remove the entity's cascade policy (inherit again).
    ClearCascade {
        entity_id: String,
        #[arg(long)]
        resource: Option<String>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Move an entity under another parent, or make it a root (`--none`).
    SetParent {
        entity_id: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long = "none")]
        none: bool,
        #[command(flatten)]
        data: DataTarget,
    },
    /// Restore an entity's balance on one resource to its full share, now.
    Reset(super::bucket_ops::ResetArgs),
    /// Add tokens to an entity's balance on one resource, now.
    TopUp(super::bucket_ops::TopUpArgs),
    /// List the entities with their own limits on a resource.
    List {
        #[arg(long = "with-custom-limits", required = true, value_name = "RESOURCE")]
        resource: String,
        /// Page size of the index query (every page is listed).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        limit: Option<i32>,
        #[command(flatten)]
        data: DataTarget,
    },
    /// List the resources that have entity-level limits.
    ListResources {
        #[command(flatten)]
        data: DataTarget,
    },
    /// Delete the limits of an entity and resource.
    DeleteLimits {
        entity_id: String,
        #[arg(short = 'r', long, default_value = DEFAULT_RESOURCE)]
        resource: String,
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        #[command(flatten)]
        data: DataTarget,
    },
}

#[derive(Debug, clap::Args)]
pub struct FlagArgs {
    pub entity_id: String,
    /// The resource (default: every resource, through the entity's `_default_` config).
    #[arg(long)]
    pub resource: Option<String>,
    #[command(flatten)]
    pub data: DataTarget,
}

fn text(item: &Item, attr: &str) -> Option<String> {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

pub async fn run(command: EntityCommand) -> Result<()> {
    match command {
        EntityCommand::Create { entity_id, display_name, parent, cascade, no_cascade: _, data } => {
            if !is_valid_entity_id(&entity_id) {
                return Err(crate::Failure::from(format!(
                    "Invalid entity_id: must start with alphanumeric and contain only alphanumeric, underscore, hyphen, dot, colon, or @ characters ('{entity_id}')"
                )));
            }
            if let Some(p) = &parent
                && !is_valid_entity_id(p)
            {
                return Err(crate::Failure::from(format!(
                    "Invalid parent_id: must start with alphanumeric and contain only alphanumeric, underscore, hyphen, dot, colon, or @ characters ('{p}')"
                )));
            }
            let (repo, ns) = data.open(true).await?;
            let name = display_name.unwrap_or_else(|| entity_id.clone());
            create(&repo, &ns, &entity_id, &name, parent.as_deref(), cascade).await?;
            println!("Created entity '{entity_id}'");
            if name != entity_id {
                println!("  Name:    {name}");
            }
            if let Some(p) = &parent {
                println!("  Parent:  {p}");
            }
            println!("  Cascade: {}", py_bool(cascade));
        }
        EntityCommand::Show { entity_id, data } => {
            let (repo, ns) = data.open(false).await?;
            let Some(meta) = repo.get(&keys::pk_entity(&ns, &entity_id), keys::SK_META).await? else {
                return Err(crate::Failure::Plain(format!("Entity '{entity_id}' not found")));
            };
            let name = text(&meta, "name").unwrap_or_else(|| entity_id.clone());
            println!("Entity: {entity_id}");
            if name != entity_id {
                println!("  {:<12}{name}", "Name:");
            }
            println!("  {:<12}{}", "Parent:", text(&meta, "parent_id").unwrap_or_else(|| "(none)".into()));
            let cascade = matches!(meta.get("cascade"), Some(AttributeValue::Bool(true)));
            println!("  {:<12}{}", "Cascade:", py_bool(cascade));
            if let Some(created) = text(&meta, "created_at") {
                println!("  {:<12}{created}", "Created:");
            }
            if let Some(AttributeValue::M(m)) = meta.get("metadata")
                && !m.is_empty()
            {
                let mut pairs: Vec<String> =
                    m.iter().filter_map(|(k, v)| v.as_s().ok().map(|v| format!("'{k}': '{v}'"))).collect();
                pairs.sort();
                println!("  {:<12}{{{}}}", "Metadata:", pairs.join(", "));
            }
        }
        EntityCommand::SetLimits { entity_id, resource, limits: specs, soft, data } => {
            let parsed = limits::parse_limits(&specs, &soft)?;
            let level = Level::Entity { entity: entity_id.clone(), resource: resource.clone() };
            level.validate()?;
            let (repo, ns) = data.open(true).await?;
            limits::set(&repo, &ns, &level, &parsed, None).await?;
            println!("Set {} limit(s) for entity '{entity_id}' on resource '{resource}':", parsed.len());
            for l in &parsed {
                println!("  {}", l.display());
            }
        }
        EntityCommand::GetLimits { entity_id, resource, data } => {
            let level = Level::Entity { entity: entity_id.clone(), resource: resource.clone() };
            level.validate()?;
            let (repo, ns) = data.open(false).await?;
            let item = limits::get(&repo, &ns, &level).await?;
            limits::print_limits(
                item.as_ref(),
                &format!("Limits for entity '{entity_id}' on resource '{resource}':"),
                &format!("No limits configured for entity '{entity_id}' on resource '{resource}'"),
            );
        }
        EntityCommand::Disable(a) => entity_flag(a, crate::stamps::Access::Disable).await?,
        EntityCommand::Enable(a) => entity_flag(a, crate::stamps::Access::Enable).await?,
        EntityCommand::Bypass(a) => entity_flag(a, crate::stamps::Access::Bypass).await?,
        EntityCommand::ClearDisabled(a) => entity_flag(a, crate::stamps::Access::Clear).await?,
        EntityCommand::SetCascade { entity_id, value, resource, data } => {
            entity_cascade(&entity_id, resource, &data, Some(value == "on")).await?
        }
        EntityCommand::ClearCascade { entity_id, resource, data } => {
            entity_cascade(&entity_id, resource, &data, None).await?
        }
        EntityCommand::SetParent { entity_id, parent, none, data } => {
            if parent.is_some() == none {
                return Err(crate::Failure::Usage("Give exactly one of --parent or --none.".into()));
            }
            if let Some(p) = &parent
                && (!is_valid_entity_id(p) || *p == entity_id)
            {
                return Err(crate::Failure::from(format!("Invalid parent_id: '{p}'")));
            }
            let (repo, ns) = data.open(true).await?;
            set_parent(&repo, &ns, &entity_id, parent.as_deref()).await?;
        }
        EntityCommand::Reset(args) => super::bucket_ops::reset(args).await?,
        EntityCommand::TopUp(args) => super::bucket_ops::top_up(args).await?,
        EntityCommand::List { resource, limit, data } => {
            let (repo, ns) = data.open(false).await?;
            let ids = with_custom_limits(&repo, &ns, &resource, limit).await?;
            if ids.is_empty() {
                println!("No entities with custom limits for resource '{resource}'");
            }
            ids.iter().for_each(|id| println!("{id}"));
        }
        EntityCommand::ListResources { data } => {
            let (repo, ns) = data.open(false).await?;
            let registry = repo.get(&keys::pk_system(&ns), "#ENTITY_CONFIG_RESOURCES").await?.unwrap_or_default();
            let mut resources: Vec<&String> = registry
                .iter()
                .filter(|(k, v)| {
                    !matches!(k.as_str(), "PK" | "SK" | "GSI4PK" | "GSI4SK")
                        && matches!(v, AttributeValue::N(c) if c.parse::<f64>().is_ok_and(|c| c > 0.0))
                })
                .map(|(k, _)| k)
                .collect();
            resources.sort();
            if resources.is_empty() {
                println!("No resources with entity-level custom limits");
            } else {
                println!("Resources with entity-level custom limits:");
                resources.iter().for_each(|r| println!("  {r}"));
            }
        }
        EntityCommand::DeleteLimits { entity_id, resource, yes, data } => {
            let level = Level::Entity { entity: entity_id.clone(), resource: resource.clone() };
            level.validate()?;
            let (repo, ns) = data.open(true).await?;
            let question = format!("Delete limits for entity '{entity_id}' on resource '{resource}'?");
            if limits::delete_confirmed(&repo, &ns, &level, yes, &question).await? {
                println!("Deleted limits for entity '{entity_id}' on resource '{resource}'");
            }
        }
    }
    Ok(())
}

/// The library's `set_parent`: META moves (a new generation, `pgen + 1`, under a pin on the
/// one read), then every bucket of the entity is restamped with the owner stamp and the
/// resolved cascade policy, then the audit event.
async fn set_parent(repo: &Repo, ns: &str, entity: &str, parent: Option<&str>) -> Result<()> {
    let pk = keys::pk_entity(ns, entity);
    let Some(meta) = repo.get(&pk, keys::SK_META).await? else {
        return Err(crate::Failure::from(format!("Entity not found: {entity}")));
    };
    let old = text(&meta, "parent_id");
    let pgen_read = match meta.get("pgen") {
        Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
        _ => None,
    };
    let pgen = pgen_read.unwrap_or(0) + 1;
    let mut request = repo
        .db
        .update_item()
        .table_name(&repo.table)
        .key("PK", s(&pk))
        .key("SK", s(keys::SK_META))
        .expression_attribute_names("#p", "parent_id")
        .expression_attribute_names("#g", "pgen")
        .expression_attribute_values(":g", n(pgen));
    request = match pgen_read {
        Some(read) => request
            .condition_expression("attribute_exists(PK) AND #g = :read")
            .expression_attribute_values(":read", n(read)),
        None => request.condition_expression("attribute_exists(PK) AND attribute_not_exists(#g)"),
    };
    request = match parent {
        Some(p) => request
            .update_expression("SET #p = :p, #g = :g, GSI1PK = :g1pk, GSI1SK = :g1sk")
            .expression_attribute_values(":p", s(p))
            .expression_attribute_values(":g1pk", s(format!("{ns}/PARENT#{p}")))
            .expression_attribute_values(":g1sk", s(format!("CHILD#{entity}"))),
        None => request
            .update_expression("SET #p = :null, #g = :g REMOVE GSI1PK, GSI1SK")
            .expression_attribute_values(":null", AttributeValue::Null(true)),
    };
    request.send().await.map_err(|e| format!("Failed to move entity '{entity}': {}", describe(&e)))?;
    let cascade_meta = matches!(meta.get("cascade"), Some(AttributeValue::Bool(true)));
    let owner = crate::stamps::Owner { parent, meta_cascade: cascade_meta, pgen: Some(pgen) };
    let written = crate::stamps::restamp_owner(repo, ns, entity, &owner).await?;
    let details = HashMap::from([
        ("old_parent_id".to_owned(), old.as_deref().map_or(AttributeValue::Null(true), s)),
        ("parent_id".to_owned(), parent.map_or(AttributeValue::Null(true), s)),
        ("pgen".to_owned(), n(pgen)),
        ("buckets_stamped".to_owned(), n(written)),
    ]);
    repo.audit(ns, entity, "entity_parent_changed", None, details).await?;
    println!(
        "Moved entity '{entity}' from {} to {} ({written} buckets stamped)",
        old.as_deref().unwrap_or("(none)"),
        parent.unwrap_or("(none)")
    );
    Ok(())
}

/// Entity IDs with a config item on `resource` (the sparse GSI3), every page.
async fn with_custom_limits(repo: &Repo, ns: &str, resource: &str, page: Option<i32>) -> Result<Vec<String>> {
    let items = repo
        .query_all(|q| {
            q.index_name("GSI3")
                .key_condition_expression("GSI3PK = :pk")
                .expression_attribute_values(":pk", s(format!("{ns}/ENTITY_CONFIG#{resource}")))
                .set_limit(page)
        })
        .await
        .map_err(|e| format!("Failed to list entities: {e}"))?;
    Ok(items.iter().filter_map(|i| text(i, "GSI3SK")).collect())
}

async fn entity_cascade(entity: &str, resource: Option<String>, data: &DataTarget, value: Option<bool>) -> Result<()> {
    let resource = resource.unwrap_or_else(|| DEFAULT_RESOURCE.to_owned());
    Level::Entity { entity: entity.to_owned(), resource: resource.clone() }.validate()?;
    super::access::change(data, crate::stamps::Scope::Entity { entity, resource: &resource }, Change::Cascade(value))
        .await
}

async fn entity_flag(args: FlagArgs, access: crate::stamps::Access) -> Result<()> {
    let resource = args.resource.unwrap_or_else(|| DEFAULT_RESOURCE.to_owned());
    let level = Level::Entity { entity: args.entity_id.clone(), resource: resource.clone() };
    level.validate()?;
    super::access::change(
        &args.data,
        crate::stamps::Scope::Entity { entity: &args.entity_id, resource: &resource },
        Change::Access(access),
    )
    .await
}

/// The library's `create_entity`: META under `attribute_not_exists(PK)`, then the audit event.
async fn create(repo: &Repo, ns: &str, entity: &str, name: &str, parent: Option<&str>, cascade: bool) -> Result<()> {
    let pk = keys::pk_entity(ns, entity);
    let pinc: String = {
        use rand::Rng;
        let bytes: [u8; 8] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let created_at = zael_table::admin::iso_now();
    let mut item = Item::from([
        ("PK".to_owned(), s(&pk)),
        ("SK".to_owned(), s(keys::SK_META)),
        ("entity_id".to_owned(), s(entity)),
        ("name".to_owned(), s(name)),
        ("parent_id".to_owned(), parent.map_or(AttributeValue::Null(true), s)),
        ("cascade".to_owned(), AttributeValue::Bool(cascade)),
        ("pgen".to_owned(), n(crate::repo::now_ms())),
        ("pinc".to_owned(), s(pinc)),
        ("metadata".to_owned(), AttributeValue::M(HashMap::new())),
        ("created_at".to_owned(), s(&created_at)),
        ("GSI4PK".to_owned(), s(ns)),
        ("GSI4SK".to_owned(), s(&pk)),
    ]);
    if let Some(p) = parent {
        item.insert("GSI1PK".into(), s(format!("{ns}/PARENT#{p}")));
        item.insert("GSI1SK".into(), s(format!("CHILD#{entity}")));
    }
    if !repo.put_new(item).await? {
        return Err(crate::Failure::from(format!("Entity already exists: {entity}")));
    }
    let details = HashMap::from([
        ("name".to_owned(), s(name)),
        ("parent_id".to_owned(), parent.map_or(AttributeValue::Null(true), s)),
        ("cascade".to_owned(), AttributeValue::Bool(cascade)),
        ("metadata".to_owned(), AttributeValue::M(HashMap::new())),
    ]);
    repo.audit(ns, entity, "entity_created", None, details).await
}

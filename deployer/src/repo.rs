//! The table behind a command: clients, the connection modes of the reference (§2.3), the
//! namespace in use, and audit events (§13).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use tokio::sync::OnceCell;
use zael_table::keys;
use zael_table::version::IMPLEMENTED_VERSION;

use crate::config_item::{Item, n, s};

/// Where the stack is: `-n`, `--region`, `--endpoint-url`.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// Stack identifier used as the CloudFormation stack name.
    #[arg(short = 'n', long = "name", default_value = "zae-limiter")]
    pub name: String,
    /// AWS region (default: the SDK's default chain).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS endpoint URL (e.g. http://localhost:4566 for LocalStack, or moto).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    zael_core::bucket::EpochMillis::now().0
}

/// [`Target`] for the commands where the stack name is required (`delete`, `status`).
#[derive(Clone, Debug, clap::Args)]
pub struct RequiredTarget {
    /// Stack identifier (required).
    #[arg(short = 'n', long = "name", required = true)]
    pub name: String,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

impl Target {
    /// The region as the reference's summaries print it: `--region`, else `default` (the
    /// SDK's chain decides).
    pub fn region_or_default(&self) -> &str {
        self.region.as_deref().unwrap_or("default")
    }
}

impl From<RequiredTarget> for Target {
    fn from(t: RequiredTarget) -> Target {
        Target { name: t.name, region: t.region, endpoint_url: t.endpoint_url }
    }
}

/// The result of every command: `Err` is printed as `Error: …` with exit status 1.
pub type Result<T> = std::result::Result<T, crate::Failure>;

pub struct Repo {
    pub db: Client,
    pub config: aws_config::SdkConfig,
    sts: aws_sdk_sts::Client,
    pub table: String,
    principal: OnceCell<Option<String>>,
    explicit_principal: Option<String>,
}

/// The AWS error code and message of an SDK error, or its display.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> String {
    match e.as_service_error() {
        Some(service) => format!(
            "An error occurred ({}): {}",
            service.code().unwrap_or("Unknown"),
            service.message().unwrap_or_default()
        ),
        None => aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
    }
}

impl Repo {
    pub async fn connect(target: &Target, principal: Option<String>) -> Result<Repo> {
        let name = crate::stack_name::validate(&target.name)?.to_owned();
        let config = zael_table::sdk_config(target.region.as_deref(), target.endpoint_url.as_deref()).await;
        if let Some(p) = &principal {
            validate_principal(p)?;
        }
        Ok(Repo {
            db: Client::new(&config),
            config: config.clone(),
            sts: aws_sdk_sts::Client::new(&config),
            table: name,
            principal: OnceCell::new(),
            explicit_principal: principal,
        })
    }

    pub fn region_label(&self) -> &str {
        self.config.region().map_or("the default region", |r| r.as_ref())
    }

    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>> {
        let out = self
            .db
            .get_item()
            .table_name(&self.table)
            .key("PK", s(pk))
            .key("SK", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.not_found_or(e))?;
        Ok(out.item)
    }

    /// Puts `item` unless an item with its key exists: `Ok(false)` when one does; `Err` is the
    /// error's description.
    pub async fn put_new(&self, item: Item) -> std::result::Result<bool, String> {
        let put = self
            .db
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(describe(&e)),
        }
    }

    fn not_found_or<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        e: aws_sdk_dynamodb::error::SdkError<E, R>,
    ) -> String {
        if e.code() == Some("ResourceNotFoundException") { self.missing_stack() } else { describe(&e) }
    }

    /// Every item a query answers, page after page: `build` sets everything but the table and
    /// the start key.
    pub async fn query_all(
        &self,
        build: impl Fn(QueryFluentBuilder) -> QueryFluentBuilder,
    ) -> std::result::Result<Vec<Item>, String> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let query = build(self.db.query().table_name(&self.table)).set_exclusive_start_key(start);
            let out = query.send().await.map_err(|e| describe(&e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// `--audit-retention-days`, applied (the reference ignores it, D7): stored as
    /// `audit_retention_days` on the namespace's system config, where every writer of audit events
    /// reads it (an upsert that keeps the item's limits).
    pub async fn set_audit_retention(&self, namespace_id: &str, days: u32) -> Result<()> {
        let pk = keys::pk_system(namespace_id);
        self.db
            .update_item()
            .table_name(&self.table)
            .key("PK", crate::config_item::s(&pk))
            .key("SK", crate::config_item::s(keys::SK_CONFIG))
            .update_expression(
                "SET audit_retention_days = :d, GSI4PK = if_not_exists(GSI4PK, :ns), GSI4SK = if_not_exists(GSI4SK, :pk)",
            )
            .expression_attribute_values(":d", crate::config_item::n(days))
            .expression_attribute_values(":ns", crate::config_item::s(namespace_id))
            .expression_attribute_values(":pk", crate::config_item::s(&pk))
            .send()
            .await
            .map_err(|e| format!("Failed to store the audit retention: {}", describe(&e)))?;
        Ok(())
    }

    pub fn missing_stack(&self) -> String {
        format!(
            "Stack '{}' not found in {}. Deploy it with 'zae-limiter deploy -n {}'.",
            self.table,
            self.region_label(),
            self.table
        )
    }

    /// The version record, refusing a missing table or record and an incompatible client
    /// (§2.3, §2.4).
    pub async fn check_compatible(&self) -> Result<Item> {
        let Some(record) = self.get(keys::SYSTEM_PK, keys::SK_VERSION).await? else {
            return Err(self.missing_stack().into());
        };
        let text = |a: &str| match record.get(a) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        };
        let (schema, min, lambda) = (text("schema_version"), text("client_min_version"), text("lambda_version"));
        match crate::compat::evaluate(schema.as_deref(), min.as_deref(), lambda.as_deref()) {
            crate::compat::Verdict::ClientUpgrade(m) => {
                return Err(crate::Failure::from(format!(
                    "Version mismatch: client={IMPLEMENTED_VERSION}, schema={}, lambda={}. {m}",
                    schema.unwrap_or_default(),
                    lambda.unwrap_or_else(|| "unknown".into()),
                )));
            }
            crate::compat::Verdict::SchemaMigration(m) => return Err(m.into()),
            crate::compat::Verdict::Compatible | crate::compat::Verdict::LambdaUpdate(_) => {}
        }
        Ok(record)
    }

    /// A namespace's id; read-only commands refuse a missing one, write commands register it
    /// (the library's `open`).
    pub async fn namespace(&self, name: &str, write: bool) -> Result<String> {
        if let Some(id) = zael_table::admin::resolve_namespace(&self.db, &self.table, name).await? {
            return Ok(id);
        }
        if !write {
            return Err(crate::Failure::from(format!(
                "Namespace '{name}' not found. Register it with 'zae-limiter namespace register {name}'."
            )));
        }
        if name == keys::RESERVED_NAMESPACE {
            return Err("Invalid namespace: reserved for system use".into());
        }
        Ok(zael_table::admin::register_namespace(&self.db, &self.table, name).await?)
    }

    /// The caller for audit events: `--principal`, else the STS caller ARN (one call, cached;
    /// a failure records none).
    async fn principal(&self) -> AttributeValue {
        if let Some(p) = &self.explicit_principal {
            return s(p);
        }
        let arn = self
            .principal
            .get_or_init(|| async {
                self.sts.get_caller_identity().send().await.ok().and_then(|out| out.arn().map(str::to_owned))
            })
            .await;
        arn.as_ref().map_or(AttributeValue::Null(true), s)
    }

    /// Writes an audit event (§13) for `entity` (`$SYSTEM`, `$RESOURCE:{r}`, or an entity id).
    pub async fn audit(
        &self,
        ns: &str,
        entity: &str,
        action: &str,
        resource: Option<&str>,
        details: HashMap<String, AttributeValue>,
    ) -> Result<()> {
        let item = self.audit_item(ns, entity, action, resource, details).await?;
        self.db
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| format!("Failed to write the audit event: {}", describe(&e)))?;
        Ok(())
    }

    /// The item of an audit event (§13), written by [`Repo::audit`] or, for a reset or top-up,
    /// in the operation's own transaction.
    pub async fn audit_item(
        &self,
        ns: &str,
        entity: &str,
        action: &str,
        resource: Option<&str>,
        details: HashMap<String, AttributeValue>,
    ) -> Result<Item> {
        let retention_days = match self.get(&keys::pk_system(ns), keys::SK_CONFIG).await? {
            Some(item) => match item.get("audit_retention_days") {
                Some(AttributeValue::N(v)) => v.parse::<f64>().map(|d| d as i64).unwrap_or(90),
                _ => 90,
            },
            None => 90,
        };
        let now_s = now_ms().div_euclid(1000);
        let event_id = ulid::Ulid::new().to_string();
        let pk = format!("{ns}/AUDIT#{entity}");
        Ok(Item::from([
            ("PK".to_owned(), s(&pk)),
            ("SK".to_owned(), s(format!("#AUDIT#{event_id}"))),
            ("entity_id".to_owned(), s(entity)),
            ("event_id".to_owned(), s(&event_id)),
            ("timestamp".to_owned(), s(zael_table::admin::iso_now())),
            ("action".to_owned(), s(action)),
            ("principal".to_owned(), self.principal().await),
            ("resource".to_owned(), resource.map_or(AttributeValue::Null(true), s)),
            ("details".to_owned(), AttributeValue::M(details)),
            ("ttl".to_owned(), n(now_s + retention_days * 86_400)),
            ("GSI4PK".to_owned(), s(ns)),
            ("GSI4SK".to_owned(), s(pk)),
        ]))
    }
}

/// An explicit principal (§13): an ARN, or an identifier of the entity-id rules.
fn validate_principal(p: &str) -> Result<()> {
    if p.starts_with("arn:") || zael_core::keys::is_valid_entity_id(p) {
        Ok(())
    } else {
        Err(crate::Failure::from(format!(
            "Invalid principal: '{p}' must be an ARN or start with a letter or digit and contain only letters, digits and _.-:@ (at most 256)"
        )))
    }
}

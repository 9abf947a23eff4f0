//! One module per command group.

pub mod access;
pub mod audit;
pub mod bucket_ops;
pub mod cfn_stack;
pub mod defaults;
pub mod deploy_args;
pub mod entity;
pub mod inventory;
pub mod lambda_code;
pub mod limits;
pub mod namespace;
pub mod stack;
pub mod upgrade;
pub mod usage;

use crate::repo::{Repo, Result, Target};

/// The options of the data commands: the stack, `-N/--namespace` and `--principal`.
#[derive(Clone, Debug, clap::Args)]
pub struct DataTarget {
    #[command(flatten)]
    pub target: Target,
    /// Namespace within the table.
    #[arg(short = 'N', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Who made the change, for audit events (default: the STS caller identity).
    #[arg(long)]
    pub principal: Option<String>,
}

impl DataTarget {
    /// Connects and resolves the namespace: read-only commands refuse a missing table or
    /// namespace; write commands register a missing namespace (§2.3).
    pub async fn open(&self, write: bool) -> Result<(Repo, String)> {
        let repo = Repo::connect(&self.target, self.principal.clone()).await?;
        repo.check_compatible().await?;
        let ns = repo.namespace(&self.namespace, write).await?;
        Ok((repo, ns))
    }
}

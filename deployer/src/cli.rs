//! The command line: the command groups of the Python zae-limiter 0.17.0 CLI.

use clap::{Parser, Subcommand};

use crate::commands::{audit::AuditCommand, defaults, entity::EntityCommand, namespace::NamespaceCommand};
use crate::repo::Target;

#[derive(Debug, Parser)]
#[command(
    name = "zae-limiter",
    about = "Deploy and operate zae-limiter stacks: namespaces, entities and limits.",
    after_help = "--version prints the version (zae-limiter, version 0.17.0)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the stack (`--table-only`: the table alone, for emulators).
    Deploy(Box<crate::commands::deploy_args::DeployArgs>),
    /// Show the stack's and table's status.
    Status(crate::repo::RequiredTarget),
    /// List the rate limiter stacks of a region.
    List(crate::commands::inventory::ListArgs),
    /// Delete the stack.
    Delete(crate::commands::cfn_stack::DeleteArgs),
    /// Print the CloudFormation template (JSON), or write it to a file.
    CfnTemplate {
        /// Write the template here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<std::path::PathBuf>,
    },
    /// Apply this client's template and push its Lambda code to an existing stack.
    Upgrade(crate::commands::upgrade::UpgradeArgs),
    /// Build the aggregator's Lambda package (`bootstrap` zip).
    LambdaExport(crate::commands::stack::LambdaExportArgs),
    /// Show the infrastructure's versions and compatibility.
    Version {
        #[command(flatten)]
        target: Target,
    },
    /// Check this client's compatibility with the infrastructure.
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Namespaces: register, list, show, delete, recover, orphans, purge.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// System-wide default limits.
    #[command(subcommand)]
    System(defaults::SystemCommand),
    /// Resource-level default limits.
    #[command(subcommand)]
    Resource(defaults::ResourceCommand),
    /// Entities and their limits.
    #[command(subcommand)]
    Entity(EntityCommand),
    /// Usage snapshots (written by the aggregator).
    #[command(subcommand)]
    Usage(crate::commands::usage::UsageCommand),
    /// Audit events.
    #[command(subcommand)]
    Audit(AuditCommand),
}

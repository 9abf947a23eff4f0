//! `zae-limiter`: the ops CLI of zael, with the commands, flags, outputs and exit codes of the
//! Python zae-limiter 0.17.0 CLI (`deployer-and-aggregator.md`). Errors print `Error: …` on
//! stderr and exit 1; usage errors exit 2 (clap).

mod ascii_table;
mod bucket_items;
mod bucket_plan;
mod cli;
mod commands;
mod compat;
mod config_item;
mod lambda_package;
mod level;
mod limit_spec;
mod param_sync;
mod prompt;
mod repo;
mod stack_name;
mod stamps;
mod template;

use clap::Parser;

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Printed as `Error: …`.
    Error(String),
    /// Printed as it is (the reference's `✗ …`, `Aborted!` and status lines).
    Plain(String),
    /// Already reported on stdout; exit 1.
    Silent,
    /// A usage error found after parsing: `Error: …`, exit 2.
    Usage(String),
    /// A usage error printed as it is, exit 2 (click's usage block for a bad parameter).
    UsageText(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Error(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::from(message.to_owned())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(m) | Failure::Plain(m) | Failure::Usage(m) | Failure::UsageText(m) => f.write_str(m),
            Failure::Silent => Ok(()),
        }
    }
}

async fn run(cli: cli::Cli) -> repo::Result<()> {
    use cli::Command;
    match cli.command {
        Command::Deploy(args) => commands::stack::deploy(*args).await,
        Command::Status(args) => commands::inventory::status(args).await,
        Command::List(args) => commands::inventory::list(args).await,
        Command::Delete(args) => commands::cfn_stack::delete(args).await,
        Command::CfnTemplate { output } => commands::stack::cfn_template(output),
        Command::LambdaExport(args) => commands::stack::lambda_export(args),
        Command::Upgrade(args) => commands::upgrade::upgrade(args).await,
        Command::Version { target } => commands::stack::version(target).await,
        Command::Check { target } => commands::stack::check(target).await,
        Command::Namespace(c) => commands::namespace::run(c).await,
        Command::System(c) => commands::defaults::run_system(c).await,
        Command::Resource(c) => commands::defaults::run_resource(c).await,
        Command::Entity(c) => commands::entity::run(c).await,
        Command::Audit(c) => commands::audit::run(c).await,
        Command::Usage(c) => commands::usage::run(c).await,
    }
}

fn main() -> std::process::ExitCode {
    // The reference's version line (clap would print `zae-limiter 0.17.0`).
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("zae-limiter, version {}", zael_table::version::IMPLEMENTED_VERSION);
        return std::process::ExitCode::SUCCESS;
    }
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure::Error(m)) => {
            eprintln!("Error: {m}");
            std::process::ExitCode::FAILURE
        }
        Err(Failure::Plain(m)) => {
            eprintln!("{m}");
            std::process::ExitCode::FAILURE
        }
        Err(Failure::Silent) => std::process::ExitCode::FAILURE,
        Err(Failure::Usage(m)) => {
            eprintln!("Error: {m}");
            std::process::ExitCode::from(2)
        }
        Err(Failure::UsageText(m)) => {
            eprintln!("{m}");
            std::process::ExitCode::from(2)
        }
    }
}

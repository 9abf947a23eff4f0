//! `zael-server`: the Envoy Rate Limit Service. Flags in `cli.rs`; wiring in `app.rs`; the
//! request path in `rls.rs`; the native API (`zael.limiter.v1`) in `limiter_api.rs`.

mod app;
mod cli;
mod config_watch;
mod dynamic_metadata;
mod fail_open;
mod http;
mod limiter_api;
mod memory_upkeep;
mod metrics;
mod protojson;
mod reference_env;
mod reflection;
mod rls;
mod telemetry;
mod tls;
mod xds;

use clap::Parser;
use std::process::ExitCode;

// The decision path allocates a little per request and h2 a lot; mimalloc measurably beats
// glibc malloc there (see the benchmark in the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // envoyproxy/ratelimit's variables become ours where ours are unset (reference_env).
    let names: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    let translation = match reference_env::translate(|k| std::env::var(k).ok(), &names) {
        Ok(translation) => translation,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, value) in &translation.set {
        if std::env::var_os(name).is_none() {
            // SAFETY: no other thread exists yet (the runtime is built below), so nothing reads
            // the environment concurrently.
            unsafe { std::env::set_var(name, value) };
        }
    }
    let cli = cli::Cli::parse();
    if cli.validate {
        return app::validate(cli.config.as_deref(), cli.load_options());
    }
    let workers = cli.worker_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers.max(1)).enable_all().build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli, translation.ignored)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

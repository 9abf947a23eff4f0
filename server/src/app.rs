//! Wiring: flags -> config, store, listeners; and the shutdown sequence.

use crate::cli::{Cli, ConfigType, StoreKind};
use crate::config_watch::{self, ConfigHolder};
use crate::http::{HttpState, Readiness};
use crate::limiter_api::LimiterApi;
use crate::rls::{HeaderNames, RateLimiter, RlsService};
use crate::{metrics as m, reflection, telemetry, tls};
use anyhow::Context as _;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use zael_api::limiter_server::LimiterServer;
use zael_core::bucket::Millitokens;
use zael_core::config::{LoadOptions, load_path};
use zael_core::entities::Entities;
use zael_core::lease::LeaseKey;
use zael_core::memory::MemoryStore;
use zael_core::pressure::BucketBound;
use zael_core::reserve::ReserveOptions;
use zael_core::store::BucketStore;

/// Health service names Envoy and Kubernetes probes ask for.
const HEALTH_SERVICES: [&str; 2] = ["", "ratelimit"];

/// `--validate`: every error on stderr with its file; exit 1 if invalid, 0 if valid.
pub fn validate(config: Option<&Path>, options: LoadOptions) -> ExitCode {
    let Some(path) = config else {
        eprintln!("Error: --validate needs --config PATH");
        return ExitCode::from(2);
    };
    match load_path(path, options) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            let domains = config.domains().count();
            println!("{}: valid ({domains} domain{})", path.display(), if domains == 1 { "" } else { "s" });
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: invalid ({} errors)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// The lease key: `--lease-key`, else a random one (leases then live on this instance only).
fn lease_key(cli: &Cli) -> anyhow::Result<LeaseKey> {
    match &cli.lease_key {
        Some(key) if key.len() < 16 => anyhow::bail!("--lease-key must be at least 16 bytes long"),
        Some(key) => Ok(LeaseKey::new(key.as_bytes())),
        None => {
            tracing::warn!(
                "no --lease-key given: lease ids are signed with a random key, valid on this instance until it restarts"
            );
            Ok(LeaseKey::new(rand::random::<[u8; 32]>()))
        }
    }
}

/// The store of `--store`, and the embedded one again when it is that (its bound's metrics).
async fn open_store(cli: &Cli) -> anyhow::Result<(Arc<dyn BucketStore>, Option<Arc<MemoryStore>>)> {
    Ok(match cli.store {
        StoreKind::Memory => {
            let store = match &cli.entities {
                Some(path) => {
                    let entities = Entities::load(path).map_err(|e| anyhow::anyhow!("invalid --entities file: {e}"))?;
                    MemoryStore::with_entities(entities)
                }
                None => MemoryStore::new(),
            };
            let store = Arc::new(store.with_bound(BucketBound { max: cli.max_buckets }));
            crate::memory_upkeep::spawn(store.clone(), cli.evict_interval);
            (store.clone(), Some(store))
        }
        StoreKind::Dynamodb => {
            if cli.entities.is_some() {
                anyhow::bail!(
                    "--entities is for the embedded store; on DynamoDB entities and limits live in the table"
                );
            }
            let table = cli.table.clone().context("--store dynamodb needs --table")?;
            let options = zael_table::DynamoStoreOptions {
                region: cli.region.clone(),
                endpoint_url: cli.endpoint_url.clone(),
                call_timeout: cli.store_timeout,
                max_in_flight: cli.store_max_in_flight,
                config_cache_ttl: cli.config_cache_ttl,
                reservations: (cli.reservations == crate::cli::Reservations::On).then(|| ReserveOptions {
                    horizon_ms: i64::try_from(cli.reservation_horizon.as_millis()).unwrap_or(i64::MAX).max(1),
                    min_rate: Millitokens::from_tokens(cli.reservation_min_rate),
                    max_block: Millitokens::from_tokens(cli.reservation_max_block),
                }),
                ..zael_table::DynamoStoreOptions::new(table)
            };
            (Arc::new(zael_table::DynamoStore::connect(options).await?), None)
        }
    })
}

/// Runs the server until SIGTERM; `ignored` lists the reference's settings that have no
/// effect here (logged once).
pub async fn run(cli: Cli, ignored: Vec<String>) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(cli.log_format, &cli.log_level, cli.otlp_endpoint.as_deref())?;
    for line in ignored {
        tracing::warn!("envoyproxy/ratelimit setting {line}");
    }
    // The recorder first, so that the store's start-up calls are counted too.
    let prometheus = m::install(match cli.store {
        StoreKind::Memory => "memory",
        StoreKind::Dynamodb => "dynamodb",
    })?;
    let lease_key = lease_key(&cli)?;
    let (store, memory) = open_store(&cli).await?;
    let closing = store.clone();
    if cli.store == StoreKind::Dynamodb {
        zael_table::describe_metrics();
    }
    // Histogram samples queue up until upkeep folds them into buckets: do it often, on a
    // thread of its own, so no request waits behind a large batch.
    let upkeep = prometheus.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            upkeep.run_upkeep();
        }
    })?;

    let config = Arc::new(ConfigHolder::new(cli.load_options()));
    let _watcher = match (cli.config_type, &cli.config) {
        (ConfigType::File, Some(path)) => {
            config.reload(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))?;
            Some(config_watch::watch(config.clone(), path.clone()).context("cannot watch the config")?)
        }
        (ConfigType::File, None) => {
            tracing::warn!("no --config given: every request is answered UNAVAILABLE");
            None
        }
        (ConfigType::GrpcXdsSotw, path) => {
            if path.is_some() {
                tracing::warn!("--config is ignored with --config-type grpc-xds-sotw");
            }
            None
        }
    };

    let api = LimiterApi { store: store.clone(), key: lease_key, on_unavailable: cli.on_unavailable };
    let limiter = Arc::new(RateLimiter {
        config: config.clone(),
        store,
        modes: cli.modes(),
        dynamic_metadata: cli.response_dynamic_metadata,
        on_unavailable: cli.on_unavailable,
        response_headers: cli.response_headers.then(|| HeaderNames {
            limit: cli.response_header_limit.clone(),
            remaining: cli.response_header_remaining.clone(),
            reset: cli.response_header_reset.clone(),
        }),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    let forced = cli.force_start_without_initial_config;
    let serving = if config.current().is_some() || forced { ServingStatus::Serving } else { ServingStatus::NotServing };
    for name in HEALTH_SERVICES {
        health.set_service_status(name, serving).await;
    }
    let readiness = Arc::new(Readiness { forced_start: forced, ..Readiness::default() });
    if cli.config_type == ConfigType::GrpcXdsSotw {
        let (health, readiness) = (health.clone(), readiness.clone());
        let (first_tx, mut first_rx) = watch::channel(false);
        tokio::spawn(crate::xds::run(config.clone(), cli.xds.options(), move || {
            let _ = first_tx.send(true);
        }));
        // Health turns serving once the first snapshot applied (unless draining by then).
        tokio::spawn(async move {
            if first_rx.wait_for(|loaded| *loaded).await.is_ok() && !readiness.draining.load(Ordering::Relaxed) {
                for name in HEALTH_SERVICES {
                    health.set_service_status(name, ServingStatus::Serving).await;
                }
            }
        });
    }

    let grpc_listener =
        TcpListener::bind(cli.listen).await.with_context(|| format!("cannot listen on {}", cli.listen))?;
    let http_listener =
        TcpListener::bind(cli.http_listen).await.with_context(|| format!("cannot listen on {}", cli.http_listen))?;
    tracing::info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, tls = cli.tls_cert.is_some(), "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let (refl_v1, refl_v1alpha) = reflection::services()?;
    let router = tonic::transport::Server::builder()
        .max_connection_age(cli.grpc_max_connection_age)
        .max_connection_age_grace(cli.grpc_max_connection_age_grace)
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(RlsService(limiter.clone())))
        .add_service(LimiterServer::new(api))
        .add_service(refl_v1)
        .add_service(refl_v1alpha);
    let grpc = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let files = tls::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: cli.tls_client_ca.clone() };
            let incoming = tls::incoming(grpc_listener, files)?;
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
        _ => {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
    };

    let http_state = Arc::new(HttpState { limiter, prometheus, readiness: readiness.clone(), memory });
    if let Some(addr) = cli.metrics_listen {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(metrics = %listener.local_addr()?, path = %cli.metrics_path, "serving metrics");
        let router = crate::http::metrics_router(http_state.clone(), &cli.metrics_path);
        tokio::spawn(axum::serve(listener, router).into_future());
    }
    let http = tokio::spawn(
        axum::serve(http_listener, crate::http::router(http_state))
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
    );

    shutdown_signal().await;
    tracing::info!(drain_delay = ?cli.drain_delay, "shutting down: reporting not serving");
    readiness.draining.store(true, Ordering::Relaxed);
    for name in HEALTH_SERVICES {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    tokio::time::sleep(cli.drain_delay).await;
    let _ = stop_tx.send(true);
    let finished = async {
        let (grpc, http) = tokio::join!(grpc, http);
        grpc??;
        http??;
        anyhow::Ok(())
    };
    match tokio::time::timeout(cli.shutdown_timeout, finished).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(timeout = ?cli.shutdown_timeout, "in-flight calls did not finish in time; exiting"),
    }
    // What the store holds ahead of use goes back before exit (token reservations).
    match tokio::time::timeout(cli.shutdown_timeout, closing.shutdown()).await {
        Ok((0, 0)) => {}
        Ok((returned, stranded)) => tracing::info!(returned, stranded, "reserved tokens given back (millitokens)"),
        Err(_) => tracing::warn!("giving reserved tokens back timed out; they are stranded until their buckets refill"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

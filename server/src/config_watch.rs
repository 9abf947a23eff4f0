//! The loaded config, and its hot reload: a change in the watched directory reloads the
//! whole config; an invalid one keeps the last good config, logs every error and counts it.

use crate::metrics as m;
use arc_swap::ArcSwapOption;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zael_core::config::{ConfigErrors, LoadOptions, RateLimitConfig, compile, read_sources};

/// Quiet time after the last file event before reloading, so an editor's or Kubernetes'
/// several writes make one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The config in force; `None` until one loads.
#[derive(Default)]
pub struct ConfigHolder {
    current: ArcSwapOption<RateLimitConfig>,
    options: LoadOptions,
}

impl ConfigHolder {
    /// A holder with no config yet, loading with `options`.
    pub fn new(options: LoadOptions) -> Self {
        ConfigHolder { current: ArcSwapOption::empty(), options }
    }

    pub fn current(&self) -> Option<Arc<RateLimitConfig>> {
        self.current.load_full()
    }

    /// Loads `path`; on success it replaces the config in force.
    pub fn reload(&self, path: &Path) -> Result<(), ConfigErrors> {
        let origin = path.display().to_string();
        self.apply(&origin, read_sources(path).and_then(|sources| compile(sources, self.options)))
    }

    /// Compiles `(name, text)` sources from elsewhere (xDS); on success they replace the
    /// config in force. `origin` names them in logs.
    pub fn apply_sources(&self, origin: &str, sources: Vec<(String, String)>) -> Result<(), ConfigErrors> {
        self.apply(origin, compile(sources, self.options))
    }

    fn apply(&self, origin: &str, loaded: Result<RateLimitConfig, ConfigErrors>) -> Result<(), ConfigErrors> {
        match loaded {
            Ok(config) => {
                for warning in config.warnings() {
                    tracing::warn!("{warning}");
                }
                let domains = config.domains().count();
                self.current.store(Some(Arc::new(config)));
                metrics::counter!(m::CONFIG_LOADS, "result" => "success").increment(1);
                tracing::info!(from = %origin, domains, "config loaded");
                Ok(())
            }
            Err(errors) => {
                metrics::counter!(m::CONFIG_LOADS, "result" => "error").increment(1);
                for e in &errors.0 {
                    tracing::error!(file = %e.file, "config error: {}", e.message);
                }
                Err(errors)
            }
        }
    }
}

/// Watches `path` (a directory, or the directory holding a file, so that replaced files and
/// Kubernetes' symlink swaps are seen) and reloads when the config files' contents change
/// (other files in the directory, such as logs, are ignored). The returned watcher must be
/// kept alive.
pub fn watch(holder: Arc<ConfigHolder>, path: PathBuf) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    let watched =
        if path.is_dir() { path.clone() } else { path.parent().map(Path::to_path_buf).unwrap_or_else(|| ".".into()) };
    watcher.watch(&watched, RecursiveMode::NonRecursive)?;
    // The files as last read, so that events which change nothing are ignored.
    let last_seen = Arc::new(std::sync::Mutex::new(holder.current().map(|c| c.sources().to_vec())));
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the events stop for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let (holder, path, last) = (holder.clone(), path.clone(), last_seen.clone());
            let reloaded = tokio::task::spawn_blocking(move || {
                let sources = read_sources(&path);
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(sources) = &sources {
                    if last.as_ref() == Some(sources) {
                        return Ok(());
                    }
                    *last = Some(sources.clone());
                }
                holder.apply(&path.display().to_string(), sources.and_then(|sources| compile(sources, holder.options)))
            })
            .await;
            if let Ok(Err(_)) = reloaded {
                tracing::warn!("config reload failed; keeping the last good config");
            }
        }
    });
    Ok(watcher)
}

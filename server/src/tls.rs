//! TLS and mTLS on the gRPC listener, with certificates re-read when their files change.
//!
//! tonic's own TLS cannot swap certificates, so connections are accepted here: every
//! accepted TCP connection is handshaken (concurrently, with a deadline) using the
//! [`ServerConfig`] current at that moment, and a watcher rebuilds that config whenever the
//! certificate, key or client CA files change. A broken replacement is logged and the last
//! good config stays in force.

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_POLL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn read(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(3);
        for path in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten() {
            out.push(std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?);
        }
        Ok(out)
    }

    fn server_config(&self, contents: &[Vec<u8>]) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&contents[0])
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{}: invalid certificate PEM: {e}", self.cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{}: no certificate found", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&contents[1])
            .map_err(|e| anyhow::anyhow!("{}: invalid private key PEM: {e}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match (&self.client_ca, contents.get(2)) {
            (Some(path), Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| anyhow::anyhow!("{}: invalid CA PEM: {e}", path.display()))?;
                    roots.add(cert).map_err(|e| anyhow::anyhow!("{}: unusable CA certificate: {e}", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("{}: certificate and key do not fit: {e}", self.cert.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepts TLS connections on `listener`. Fails at once if the files are unusable.
pub fn incoming(
    listener: TcpListener,
    files: TlsFiles,
) -> anyhow::Result<tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>>> {
    let contents = files.read()?;
    let current = Arc::new(ArcSwap::new(files.server_config(&contents)?));
    tokio::spawn(reload_on_change(files, contents, current.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = TlsAcceptor::from(current.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn reload_on_change(files: TlsFiles, mut last: Vec<Vec<u8>>, current: Arc<ArcSwap<ServerConfig>>) {
    let mut tick = tokio::time::interval(RELOAD_POLL);
    loop {
        tick.tick().await;
        let Ok(contents) = files.read() else { continue };
        if contents == last {
            continue;
        }
        match files.server_config(&contents) {
            Ok(config) => {
                current.store(config);
                tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded");
            }
            Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates"),
        }
        last = contents;
    }
}

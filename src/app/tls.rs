//! The broker's side of mTLS: its certificate, key and trust bundles, reloaded
//! when their files change.
use super::background::Hangup;
use crate::config::Config;
use crate::identity::TrustBundles;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The broker's side of mTLS: its certificate and key, and the trust bundles its
/// callers' SVIDs chain to. Swapped whole when the files change (SPIRE rotates
/// them), for new connections; open connections keep what they were verified with.
#[derive(Clone)]
pub(super) struct Tls {
    pub acceptor: TlsAcceptor,
    pub bundles: TrustBundles,
    /// The files' state when they were read.
    files: FilesState,
}

/// Loads the certificate, key and bundles the configuration names, with the
/// files' state read before them (so a change during the load is seen later).
pub(super) fn load_tls(config: &Config) -> anyhow::Result<Tls> {
    let files = tls_files_state(config);
    let bundles = TrustBundles::load(
        config
            .trust_domains
            .iter()
            .map(|t| (t.name.as_str(), t.bundle.as_path())),
    )?;
    let acceptor = server_tls(config, &bundles)?;
    Ok(Tls {
        acceptor,
        bundles,
        files,
    })
}

type FilesState = Vec<Option<(std::time::SystemTime, u64)>>;

/// What changes when any TLS file is rewritten or replaced: each file's
/// modification time and length (or its absence).
fn tls_files_state(config: &Config) -> FilesState {
    std::iter::once(&config.server.cert)
        .chain(std::iter::once(&config.server.key))
        .chain(config.trust_domains.iter().map(|t| &t.bundle))
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Loads that may fail before one is logged as an error: a rotation writes the
/// certificate, the key and the bundle one after another, and a check between
/// them sees a certificate without its key.
const QUIET_TLS_FAILURES: u32 = 2;

/// Reloads the certificate, key and trust bundles when their files change (and
/// on SIGHUP). A set that does not load (a half-written rotation, a key that does
/// not match, a file not readable) is refused, the previous one stays in force,
/// and the load is tried again at every check until one succeeds.
pub(super) async fn watch_tls(
    config: Arc<Config>,
    every: Duration,
    current: Arc<tokio::sync::watch::Sender<Tls>>,
    cancel: CancellationToken,
) {
    let mut hup = Hangup::listen("TLS files");
    // The state of the set in force; a failed load leaves it, so it is retried.
    let mut loaded = current.borrow().files.clone();
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => {}
            _ = tick.tick() => {
                if tls_files_state(&config) == loaded {
                    continue;
                }
            }
        }
        match load_tls(&config) {
            Ok(tls) => {
                loaded = tls.files.clone();
                failures = 0;
                let _ = current.send(tls);
                crate::metrics::TLS_RELOADS.inc();
                info!(cert = %config.server.cert.display(), "TLS certificate, key and trust bundles reloaded");
            }
            Err(error) => {
                failures += 1;
                crate::metrics::TLS_RELOAD_FAILURES.inc();
                let error = format!("{error:#}");
                if failures > QUIET_TLS_FAILURES {
                    error!(%error, failures, "TLS reload failed; the previous certificate and bundles stay in force")
                } else {
                    warn!(%error, "TLS files changed but do not load yet; retrying")
                }
            }
        }
    }
}

fn server_tls(config: &Config, bundles: &TrustBundles) -> anyhow::Result<TlsAcceptor> {
    let cert_path = &config.server.cert;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("server.cert: cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "server.cert: {} is not a PEM certificate chain",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("server.cert: {} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&config.server.key).with_context(|| {
        format!(
            "server.key: cannot read a PEM private key from {}",
            config.server.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_client_cert_verifier(bundles.handshake_verifier())
        .with_single_cert(chain, key)
        .context("server.cert and server.key do not form a usable pair")?;
    // gRPC needs HTTP/2; the OAuth front door on the same port also speaks
    // HTTP/1.1, which most OAuth clients (curl, httpx, requests) choose.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

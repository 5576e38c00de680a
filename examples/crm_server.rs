//! A toy CRM API protected by Mayfly: mutual TLS for the caller's SVID, then the
//! verifier library checks the bearer token (signature, audience, expiry, that it
//! is bound to this very client certificate, its scope, and the live revocation
//! set). Everything Mayfly-specific is in `guard` and `main`'s first lines.
//!
//! With a broker running (`./scripts/dev`) and its dev certificates:
//!
//! ```sh
//! cargo run --example crm_server     # serves https://127.0.0.1:9443
//! C=.mayfly-dev/certs
//! curl --cacert $C/ca.pem --cert $C/agent.crt --key $C/agent.key \
//!   -H "Authorization: Bearer $TOKEN" https://localhost:9443/customers/eu/42
//! ```
//!
//! Environment: `CRM_LISTEN` (127.0.0.1:9443), `MAYFLY_BROKER`
//! (https://127.0.0.1:8443), `MAYFLY_ISSUER` (https://mayfly.example.org),
//! `CRM_CERTS` (.mayfly-dev/certs: ca.pem, verifier.crt/.key for both the TLS
//! server and the broker connection).
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mayfly::verifier::{RequiredScope, Verdict, Verifier, VerifierConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The DER of the client certificate of the TLS session a request came on.
#[derive(Clone)]
struct PeerCert(Arc<Vec<u8>>);

/// Allows the request only if its token is valid for `action` on `resource`.
async fn guard(
    verifier: &Verifier,
    headers: &HeaderMap,
    peer: &PeerCert,
    action: &str,
    resource: &str,
) -> Result<String, (StatusCode, String)> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "a Mayfly bearer token is required".into(),
        ))?;
    let required = RequiredScope::new(action, resource)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    match verifier.check(token, &peer.0, &required).await {
        Verdict::Valid(claims) => Ok(claims.sub),
        // Never log the token; the verdict says why.
        refused => {
            tracing::info!(verdict = %refused, resource, "refused");
            let code = match refused {
                Verdict::ScopeNotCovered | Verdict::NotBoundToClient => StatusCode::FORBIDDEN,
                Verdict::Stale => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            Err((code, refused.to_string()))
        }
    }
}

async fn customer(
    Extension(verifier): Extension<Verifier>,
    Extension(peer): Extension<PeerCert>,
    headers: HeaderMap,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let resource = format!("customers/{region}/{id}");
    let agent = guard(&verifier, &headers, &peer, "read", &resource).await?;
    Ok(Json(serde_json::json!({
        "id": id, "region": region, "name": "Ada Lovelace", "read_by": agent,
    })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    mayfly::app::install_crypto();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let certs = std::path::PathBuf::from(env("CRM_CERTS", ".mayfly-dev/certs"));
    let (ca, cert, key) = (
        std::fs::read(certs.join("ca.pem"))?,
        std::fs::read(certs.join("verifier.crt"))?,
        std::fs::read(certs.join("verifier.key"))?,
    );

    // Mayfly: follow the broker as this tool's verifier.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(&cert, &key))
        .domain_name("localhost");
    let channel = Channel::from_shared(env("MAYFLY_BROKER", "https://127.0.0.1:8443"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let config = VerifierConfig::new(
        env("MAYFLY_ISSUER", "https://mayfly.example.org"),
        "crm-api",
    );
    let verifier = Verifier::connect(channel, config).await?;

    // mTLS for callers: any certificate from the trust bundle; the token decides.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_auth)
        .with_single_cert(
            CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(&key)?,
        )?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    let app = Router::new()
        .route("/customers/{region}/{id}", get(customer))
        .layer(Extension(verifier));
    let listener = tokio::net::TcpListener::bind(env("CRM_LISTEN", "127.0.0.1:9443")).await?;
    tracing::info!(addr = %listener.local_addr()?, "toy CRM serving");
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(error) => return tracing::info!(%peer, %error, "TLS handshake failed"),
            };
            let Some(der) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                return;
            };
            let app = app.layer(Extension(PeerCert(Arc::new(der.to_vec()))));
            let service = TowerToHyperService::new(app);
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = conn.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
    }
}

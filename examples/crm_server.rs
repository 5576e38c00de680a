//! A toy CRM API protected by Mayfly: mutual TLS for the caller's SVID, then the
//! verifier library checks the bearer token (signature, audience, expiry, that it
//! is bound to this very client certificate, its scope, and the live revocation
//! set). It serves its RFC 9728 protected resource metadata and refuses as an MCP
//! server must: 401 with a `WWW-Authenticate` challenge naming the metadata, 403
//! `insufficient_scope`, 503 when the verifier is stale. Everything
//! Mayfly-specific is in `guard`, `resource_metadata` and `main`'s first lines.
//!
//! With a broker running (`./scripts/dev`) and its dev certificates:
//!
//! ```sh
//! cargo run --example crm_server     # serves https://127.0.0.1:9443
//! C=.mayfly-dev/certs
//! curl --cacert $C/ca.pem https://localhost:9443/.well-known/oauth-protected-resource
//! curl --cacert $C/ca.pem --cert $C/agent.crt --key $C/agent.key \
//!   -H "Authorization: Bearer $TOKEN" https://localhost:9443/customers/eu/42
//! ```
//!
//! Environment: `CRM_LISTEN` (127.0.0.1:9443), `CRM_RESOURCE` (the tool's
//! resource identifier, https://localhost:9443), `MAYFLY_BROKER`
//! (https://127.0.0.1:8443), `MAYFLY_ISSUER` (https://mayfly.example.org; also the
//! metadata's authorization server), `CRM_CERTS` (.mayfly-dev/certs: ca.pem,
//! verifier.crt/.key for both the TLS server and the broker connection).
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mayfly::verifier::{
    Answer, CONTENT_TYPE, ProtectedResource, RequiredScope, Verdict, Verifier, VerifierConfig,
    bearer_token,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The DER of the client certificate of the TLS session a request came on, if
/// the client presented one.
#[derive(Clone)]
struct PeerCert(Option<Arc<Vec<u8>>>);

/// The library's framework-neutral answer as an axum response.
fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response =
        (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], answer.body).into_response();
    if let Some(challenge) = answer
        .www_authenticate
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// Allows the request only if its token is valid for `action` on `resource`.
async fn guard(
    verifier: &Verifier,
    metadata: &ProtectedResource,
    headers: &HeaderMap,
    peer: &PeerCert,
    action: &str,
    resource: &str,
) -> Result<String, Response> {
    let required = RequiredScope::new(action, resource)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())?;
    let values = headers.get_all(header::AUTHORIZATION).iter();
    let token = bearer_token(values.map(|v| v.as_bytes()))
        .map_err(|why| respond(metadata.answer_bearer_error(&why)))?;
    // A connection without a client certificate may fetch the metadata only. A
    // token arriving on one is checked as if presented with the wrong
    // certificate (the DER of none): Mayfly tokens are all bound, so it is
    // refused as not bound to this client (401), and reported, since a token
    // away from its certificate has left its holder.
    let cert = peer.0.as_deref().map_or(&[][..], Vec::as_slice);
    match verifier.check(token, cert, &required).await {
        Verdict::Valid(claims) => Ok(claims.sub),
        // Never log the token; the verdict says why.
        refused => {
            tracing::info!(verdict = %refused, resource, "refused");
            let answer = metadata.answer_verdict(&refused, &required);
            Err(answer.map_or_else(
                || StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                respond,
            ))
        }
    }
}

/// RFC 9728 metadata, public: a client refused with a 401 reads it to find the
/// broker, before it has a token (and, for MCP clients, before it would know
/// to present a certificate).
async fn resource_metadata(Extension(metadata): Extension<Arc<ProtectedResource>>) -> Response {
    respond(metadata.answer_metadata())
}

async fn customer(
    Extension(verifier): Extension<Verifier>,
    Extension(metadata): Extension<Arc<ProtectedResource>>,
    Extension(peer): Extension<PeerCert>,
    headers: HeaderMap,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Response> {
    let resource = format!("customers/{region}/{id}");
    let agent = guard(&verifier, &metadata, &headers, &peer, "read", &resource).await?;
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
    let issuer = env("MAYFLY_ISSUER", "https://mayfly.example.org");
    let metadata =
        ProtectedResource::new(env("CRM_RESOURCE", "https://localhost:9443"), [&issuer])?
            .with_scopes_supported(["read:customers/*/*"])?
            .with_resource_name("Toy CRM")?;
    let verifier = Verifier::connect(channel, VerifierConfig::new(issuer, "crm-api")).await?;

    // mTLS for callers: any certificate from the trust bundle; the token decides.
    // A client may also connect without one, for the public metadata: every other
    // route refuses it (`guard`), since each token is bound to a certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
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
        .route(metadata.well_known_path(), get(resource_metadata))
        .route("/customers/{region}/{id}", get(customer))
        .layer(Extension(verifier))
        .layer(Extension(Arc::new(metadata)));
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
            let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let app = app.layer(Extension(PeerCert(der.map(|d| Arc::new(d.to_vec())))));
            let service = TowerToHyperService::new(app);
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = conn.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
    }
}

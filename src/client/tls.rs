//! Reaching the broker: its URL, the name its certificate must carry and the CA
//! bundle that signs it, and the caller's SVID, each read once from the files the
//! flags name. The one loader of every client: tonic's channels (the client
//! commands, `mayfly bench`'s gRPC edge) and rustls client configurations (the
//! bench's front-door edges) are built from what it read, so a missing file or
//! one without PEM in it is reported the same way, naming its flag.
use crate::cli::ClientArgs;
use crate::domain::SpiffeId;
use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// How long a connection (TCP and TLS) may take before the broker counts as
/// unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker a client talks to, and how to recognise it.
#[derive(Clone)]
pub struct Broker {
    /// As the flag gave it, for messages.
    pub url: String,
    uri: Uri,
    /// `host:port`, for a TCP connection and HTTP's `Host`.
    authority: String,
    server_name: ServerName<'static>,
    ca_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
}

/// An X.509-SVID this client holds: its certificate chain and private key.
/// Not `Debug`, so that the key cannot reach a log line or a message.
#[derive(Clone)]
pub struct Svid {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The files it came from, with their flags, for messages.
    cert_source: String,
    key_source: String,
}

/// A file a flag names, read whole.
fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// The certificates of a PEM file, at least one.
fn certificates(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: holds no PEM certificate", path.display());
    }
    Ok(certs)
}

impl Broker {
    /// The broker `--broker`, `--server-name` and `--ca` name.
    pub fn from_args(args: &ClientArgs) -> anyhow::Result<Broker> {
        Broker::new(&args.broker, args.server_name.as_deref(), &args.ca)
    }

    /// The broker at `url`, its certificate naming `server_name` (default: the
    /// URL's host) and signed by a CA of the bundle at `ca`.
    pub fn new(url: &str, server_name: Option<&str>, ca: &Path) -> anyhow::Result<Broker> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--broker {url:?} is not a URL"))?;
        let Some(host) = uri.host() else {
            bail!("--broker {url:?} has no host");
        };
        let port = uri.port_u16().unwrap_or(443);
        let authority = format!("{host}:{port}");
        let name = server_name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let server_name = ServerName::try_from(name.to_string())
            .with_context(|| format!("--server-name {name:?} is neither a DNS name nor an IP"))?;
        let ca_pem = read("--ca", ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates("--ca", ca, &ca_pem)? {
            roots
                .add(c)
                .with_context(|| format!("--ca {}: not a CA certificate", ca.display()))?;
        }
        Ok(Broker {
            url: url.to_string(),
            uri,
            authority,
            server_name,
            ca_pem,
            roots: Arc::new(roots),
        })
    }

    /// `host:port` of the broker's mTLS port.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The name the broker's certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// A gRPC endpoint presenting `svid`: each `connect` is a new connection.
    pub fn endpoint(&self, svid: &Svid) -> anyhow::Result<Endpoint> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&svid.cert_pem, &svid.key_pem))
            .domain_name(self.server_name.to_str());
        Ok(Channel::builder(self.uri.clone())
            .tls_config(tls)
            .context("TLS configuration")?
            .connect_timeout(CONNECT_TIMEOUT))
    }

    /// A connected gRPC channel presenting `svid`.
    pub async fn connect(&self, svid: &Svid) -> anyhow::Result<Channel> {
        self.endpoint(svid)?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the broker at {}", self.url))
    }

    /// A rustls client configuration presenting `svid`, trusting the CA
    /// bundle, offering `alpn`. The ring provider is named here rather than
    /// taken from the process, so it works whether or not one was installed.
    pub fn rustls_config(&self, svid: &Svid, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        let (chain, key) = svid.parsed()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS configuration")?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(chain, key)
            .with_context(|| {
                format!(
                    "{} does not fit the certificate of {}",
                    svid.key_source, svid.cert_source
                )
            })?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

impl Svid {
    /// Reads a certificate chain and its key, each named by its flag:
    /// `("--cert", path)`, `("--key", path)`.
    pub fn read(cert: (&str, &Path), key: (&str, &Path)) -> anyhow::Result<Svid> {
        let svid = Svid {
            cert_pem: read(cert.0, cert.1)?,
            key_pem: read(key.0, key.1)?,
            cert_source: format!("{} {}", cert.0, cert.1.display()),
            key_source: format!("{} {}", key.0, key.1.display()),
        };
        // Checked now, so that a wrong file is named before any connection
        // fails with a TLS error that names none.
        certificates(cert.0, cert.1, &svid.cert_pem)?;
        PrivateKeyDer::from_pem_slice(&svid.key_pem).map_err(|_| {
            anyhow::anyhow!(
                "{} {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.0,
                key.1.display()
            )
        })?;
        Ok(svid)
    }

    /// The SPIFFE ID its leaf certificate carries, judged by the leaf rules the
    /// broker applies (one SPIFFE URI SAN, not a CA, valid now).
    pub fn spiffe_id(&self) -> anyhow::Result<SpiffeId> {
        let (chain, _) = self.parsed()?;
        crate::identity::leaf_id(&chain[0], UnixTime::now())
            .with_context(|| format!("{}: not an X.509-SVID", self.cert_source))
    }

    fn parsed(&self) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|c| !c.is_empty());
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).ok();
        match (chain, key) {
            (Some(chain), Some(key)) => Ok((chain, key)),
            // `read` checked both.
            _ => bail!(
                "{} / {}: no certificate and key",
                self.cert_source,
                self.key_source
            ),
        }
    }
}

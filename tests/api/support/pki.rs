//! The PKI of a test: the identities the tests use, a CA for example.org with the
//! broker's certificate on disk, and mTLS channels presenting an SVID.
use mayfly::identity::devcerts::{DevCa, Issued};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const TD: &str = "example.org";
pub const AGENT: &str = "spiffe://example.org/agent/a1";
pub const AGENT2: &str = "spiffe://example.org/agent/a2";
pub const ORCH: &str = "spiffe://example.org/orchestrator/o1";
pub const ORCH2: &str = "spiffe://example.org/orchestrator/o2";
pub const ADMIN: &str = "spiffe://example.org/admin/s1";
pub const VERIFIER: &str = "spiffe://example.org/verifier/v1";

/// The PKI of a test: a CA for example.org, files on disk for the broker.
pub struct Pki {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let ca = DevCa::new(TD).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let server = ca
            .server("spiffe://example.org/mayfly/broker", &["localhost"])
            .unwrap();
        std::fs::write(dir.path().join("broker.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("broker.key"), &server.key_pem).unwrap();
        Pki { ca, dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

/// A channel to the broker at `addr` over TLS trusting `ca`, presenting
/// `identity` (none: no client certificate).
pub async fn mtls_channel(
    addr: SocketAddr,
    ca: &DevCa,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

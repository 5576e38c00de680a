//! A local CA and X.509-SVIDs for trying Mayfly without SPIRE (`mayfly dev-certs`)
//! and for tests. Never for production: the CA key is written next to the certs.
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A CA for one trust domain.
pub struct DevCa {
    pub trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

/// What to put in an issued certificate. Tests bend these to make bad SVIDs.
#[derive(Debug, Clone)]
pub struct SvidSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl SvidSpec {
    /// A well-formed workload SVID valid for a day.
    pub fn workload(spiffe_id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        SvidSpec {
            uris: vec![spiffe_id.to_string()],
            dns: vec![],
            is_ca: false,
            key_usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(1),
        }
    }
}

/// An issued certificate and its private key, PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl DevCa {
    pub fn new(trust_domain: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Mayfly dev CA for {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a certificate as `spec` says, whatever it says.
    pub fn issue(&self, spec: &SvidSpec) -> Result<Issued, rcgen::Error> {
        self.issue_for(spec, &KeyPair::generate()?)
    }

    /// Issues a certificate as `spec` says for an existing key pair (tests that
    /// issue many certificates generate one key, not one per certificate).
    pub fn issue_for(&self, spec: &SvidSpec, key: &KeyPair) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(spec.dns.clone())?;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// A well-formed SVID for `spiffe_id`, valid for a day.
    pub fn svid(&self, spiffe_id: &str) -> Result<Issued, rcgen::Error> {
        self.issue(&SvidSpec::workload(spiffe_id))
    }

    /// The broker's own serving certificate: its SPIFFE ID plus DNS names.
    pub fn server(&self, spiffe_id: &str, dns: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut spec = SvidSpec::workload(spiffe_id);
        spec.dns = dns.iter().map(|s| s.to_string()).collect();
        self.issue(&spec)
    }
}

/// The identities `mayfly dev-certs` writes, by file stem and SPIFFE ID path.
pub const DEV_IDENTITIES: &[(&str, &str)] = &[
    ("broker", "/mayfly/broker"),
    ("agent", "/agent/support-eu-1"),
    ("sub-agent", "/agent/support-eu-2"),
    ("coding-agent", "/agent/coding-1"),
    ("finance-agent", "/agent/finance-1"),
    ("orchestrator", "/orchestrator/main"),
    ("finance-orchestrator", "/orchestrator/finance"),
    ("admin", "/admin/secops"),
    ("verifier", "/verifier/crm-api"),
];

/// Writes `ca.pem` and `<name>.crt`/`<name>.key` for every dev identity into `dir`.
pub fn write_dev_certs(dir: &Path, trust_domain: &str) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = DevCa::new(trust_domain)?;
    let mut written = vec![];
    let mut write = |name: String, body: &str, secret: bool| -> anyhow::Result<()> {
        let path = dir.join(&name);
        write_file(&path, body.as_bytes(), secret)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    write("ca.pem".into(), ca.cert_pem(), false)?;
    for (name, path) in DEV_IDENTITIES {
        let id = format!("spiffe://{trust_domain}{path}");
        // The broker and the verifier (a resource server, such as the toy CRM in
        // examples/) also serve TLS: their SVIDs carry DNS names for clients
        // that check the host name.
        let issued = if *name == "broker" || *name == "verifier" {
            ca.server(&id, &["localhost", "127.0.0.1", "::1"])?
        } else {
            ca.svid(&id)?
        };
        write(format!("{name}.crt"), &issued.cert_pem, false)?;
        write(format!("{name}.key"), &issued.key_pem, true)?;
    }
    Ok(written)
}

/// Writes a file; a secret one is created readable by its owner only (and one
/// left by an earlier run made so before it is overwritten).
fn write_file(path: &Path, body: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    opts.open(path)?.write_all(body)
}

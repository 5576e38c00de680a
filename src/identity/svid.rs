//! X.509-SVID verification as the SPIFFE X509-SVID spec says: the chain is checked
//! against the bundle of the SVID's *own* trust domain, and the leaf must carry
//! exactly one SPIFFE ID URI SAN, not be a CA, and allow digitalSignature.
use crate::domain::text::quote;
use crate::domain::{SpiffeId, SpiffeIdError};
use base64::Engine;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::*;

/// Why a peer certificate is not an acceptable X.509-SVID.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no client certificate was presented; an X.509-SVID is required")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("the certificate has no URI SAN; an X.509-SVID carries exactly one SPIFFE ID")]
    NoUriSan,
    #[error("the certificate has {0} URI SANs; an X.509-SVID carries exactly one")]
    ManyUriSans(usize),
    #[error("the URI SAN {} is not a spiffe:// URI", quote(.0))]
    NotSpiffe(String),
    #[error("the URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
    #[error("the leaf certificate is a CA (basicConstraints CA=true); an SVID leaf must not be")]
    LeafIsCa,
    #[error("the leaf certificate has no keyUsage extension; an SVID needs digitalSignature")]
    NoKeyUsage,
    #[error("the leaf certificate's keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("the leaf certificate's keyUsage allows keyCertSign or cRLSign; an SVID leaf must not")]
    SigningKeyUsage,
    #[error("the certificate is not valid now (validity {not_before} to {not_after})")]
    OutsideValidity {
        not_before: String,
        not_after: String,
    },
    #[error("trust domain {} is not configured", quote(.0))]
    UnknownTrustDomain(String),
    #[error(
        "the certificate does not chain to the bundle of trust domain {}: {why}",
        quote(.domain)
    )]
    Chain { domain: String, why: String },
}

impl VerifyError {
    /// A short fixed name of the check that failed, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::NoCertificate => "no_certificate",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::NoUriSan | VerifyError::ManyUriSans(_) => "uri_san_count",
            VerifyError::NotSpiffe(_) | VerifyError::BadSpiffeId(_) => "not_a_spiffe_id",
            VerifyError::LeafIsCa
            | VerifyError::NoKeyUsage
            | VerifyError::NoDigitalSignature
            | VerifyError::SigningKeyUsage => "key_usage",
            VerifyError::OutsideValidity { .. } => "validity",
            VerifyError::UnknownTrustDomain(_) => "unknown_trust_domain",
            VerifyError::Chain { .. } => "chain",
        }
    }
}

/// A verified SVID: who the peer is and which certificate it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    pub id: SpiffeId,
    /// base64url (no padding) SHA-256 of the leaf certificate DER: RFC 8705 `x5t#S256`.
    pub thumbprint: String,
    /// The earliest notAfter of the leaf and its intermediates, in Unix seconds.
    pub not_after: i64,
}

/// The configured trust domains and their CA bundles.
#[derive(Clone)]
pub struct TrustBundles {
    domains: HashMap<String, Arc<dyn ClientCertVerifier>>,
    handshake: Arc<dyn ClientCertVerifier>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read trust bundle {path}: {why}")]
    Read { path: String, why: String },
    #[error("trust bundle {path} holds no certificate")]
    Empty { path: String },
    #[error("trust bundle {path}: {why}")]
    Invalid { path: String, why: String },
    #[error("no trust domain is configured")]
    None,
}

impl TrustBundles {
    /// Loads one PEM bundle file per trust domain.
    pub fn load<'a>(
        domains: impl IntoIterator<Item = (&'a str, &'a Path)>,
    ) -> Result<Self, BundleError> {
        let mut certs = Vec::new();
        for (name, path) in domains {
            let p = path.display().to_string();
            let read: Result<Vec<CertificateDer<'static>>, _> = CertificateDer::pem_file_iter(path)
                .map_err(|e| BundleError::Read {
                    path: p.clone(),
                    why: e.to_string(),
                })?
                .collect();
            let list = read.map_err(|e| BundleError::Read {
                path: p.clone(),
                why: e.to_string(),
            })?;
            if list.is_empty() {
                return Err(BundleError::Empty { path: p });
            }
            certs.push((name.to_string(), p, list));
        }
        Self::from_der(certs)
    }

    /// Builds the verifiers from DER certificates: (trust domain, source name, CAs).
    pub fn from_der(
        domains: Vec<(String, String, Vec<CertificateDer<'static>>)>,
    ) -> Result<Self, BundleError> {
        if domains.is_empty() {
            return Err(BundleError::None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut union = RootCertStore::empty();
        let mut map = HashMap::new();
        for (name, source, certs) in domains {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone()).map_err(|e| BundleError::Invalid {
                    path: source.clone(),
                    why: e.to_string(),
                })?;
                union.add(c).map_err(|e| BundleError::Invalid {
                    path: source.clone(),
                    why: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| BundleError::Invalid {
                    path: source.clone(),
                    why: e.to_string(),
                })?;
            map.insert(name, v);
        }
        // The handshake accepts a connection without a certificate so that the RPC
        // can answer UNAUTHENTICATED with a reason; every Mayfly RPC then requires a
        // verified SVID (see `verify`).
        let handshake = WebPkiClientVerifier::builder_with_provider(Arc::new(union), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| BundleError::Invalid {
                path: "(all bundles)".into(),
                why: e.to_string(),
            })?;
        Ok(TrustBundles {
            domains: map,
            handshake,
        })
    }

    /// The verifier used during the TLS handshake: chains to any configured bundle.
    pub fn handshake_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.handshake.clone()
    }

    /// Full X.509-SVID verification of a presented chain (leaf first).
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<Svid, VerifyError> {
        let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
        let (id, not_after) = check_leaf(leaf, now)?;
        let domain = id.trust_domain();
        let verifier = self
            .domains
            .get(domain)
            .ok_or_else(|| VerifyError::UnknownTrustDomain(domain.to_string()))?;
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| VerifyError::Chain {
                domain: domain.to_string(),
                why: e.to_string(),
            })?;
        // The identity lasts as long as the shortest-lived certificate of its chain.
        let mut not_after = not_after;
        for c in intermediates {
            let (_, cert) = X509Certificate::from_der(c)
                .map_err(|e| VerifyError::Malformed(format!("intermediate certificate: {e}")))?;
            not_after = not_after.min(cert.validity().not_after.timestamp());
        }
        Ok(Svid {
            thumbprint: thumbprint(leaf),
            id,
            not_after,
        })
    }
}

/// base64url SHA-256 of a certificate: the RFC 8705 `x5t#S256` confirmation.
pub fn thumbprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The SPIFFE ID of a certificate one holds, judged by the leaf rules a broker
/// applies to it (the chain is the broker's to check against its bundles): so
/// that a client names its own identity, or learns before it connects that the
/// certificate is no X.509-SVID.
pub fn leaf_id(der: &[u8], now: UnixTime) -> Result<SpiffeId, VerifyError> {
    check_leaf(der, now).map(|(id, _)| id)
}

/// The leaf-only rules: one SPIFFE URI SAN, not a CA, key usage, validity.
fn check_leaf(der: &[u8], now: UnixTime) -> Result<(SpiffeId, i64), VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(VerifyError::Malformed(e.to_string())),
    };
    let uri = match uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [one] => *one,
        many => return Err(VerifyError::ManyUriSans(many.len())),
    };
    if !uri.to_ascii_lowercase().starts_with("spiffe://") {
        return Err(VerifyError::NotSpiffe(uri.to_string()));
    }
    let id = SpiffeId::parse(uri).map_err(VerifyError::BadSpiffeId)?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(VerifyError::LeafIsCa),
        Ok(_) => {}
        Err(e) => return Err(VerifyError::Malformed(e.to_string())),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.digital_signature() {
                return Err(VerifyError::NoDigitalSignature);
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(VerifyError::SigningKeyUsage);
            }
        }
        Ok(None) => return Err(VerifyError::NoKeyUsage),
        Err(e) => return Err(VerifyError::Malformed(e.to_string())),
    }
    let validity = cert.validity();
    let at = ASN1Time::from_timestamp(now.as_secs() as i64)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if !validity.is_valid_at(at) {
        return Err(VerifyError::OutsideValidity {
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok((id, validity.not_after.timestamp()))
}

#[cfg(all(test, feature = "server"))]
mod tests;

#[cfg(all(test, feature = "server"))]
mod properties;

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
mod tests {
    use super::*;
    use crate::identity::devcerts::{DevCa, SvidSpec};
    use rcgen::KeyUsagePurpose;

    fn bundles(cas: &[&DevCa]) -> TrustBundles {
        TrustBundles::from_der(
            cas.iter()
                .map(|ca| {
                    (
                        ca.trust_domain.clone(),
                        ca.trust_domain.clone(),
                        vec![CertificateDer::from(ca.cert_der().to_vec())],
                    )
                })
                .collect(),
        )
        .unwrap()
    }

    fn verify(b: &TrustBundles, ca: &DevCa, spec: &SvidSpec) -> Result<Svid, VerifyError> {
        let issued = ca.issue(spec).unwrap();
        b.verify(&[CertificateDer::from(issued.cert_der)], UnixTime::now())
    }

    #[test]
    fn a_well_formed_svid_yields_its_id_and_thumbprint() {
        let ca = DevCa::new("example.org").unwrap();
        let b = bundles(&[&ca]);
        let issued = ca.svid("spiffe://example.org/agent/a").unwrap();
        let svid = b
            .verify(
                &[CertificateDer::from(issued.cert_der.clone())],
                UnixTime::now(),
            )
            .unwrap();
        assert_eq!(svid.id.as_str(), "spiffe://example.org/agent/a");
        assert_eq!(svid.thumbprint, thumbprint(&issued.cert_der));
        assert_eq!(svid.thumbprint.len(), 43);
    }

    #[test]
    fn each_spec_violation_is_refused_with_its_reason() {
        let ca = DevCa::new("example.org").unwrap();
        let b = bundles(&[&ca]);
        let id = "spiffe://example.org/agent/a";
        let base = SvidSpec::workload(id);

        let mut s = base.clone();
        s.uris.clear();
        assert_eq!(verify(&b, &ca, &s), Err(VerifyError::NoUriSan));

        let mut s = base.clone();
        s.uris.push("spiffe://example.org/agent/b".into());
        assert_eq!(verify(&b, &ca, &s), Err(VerifyError::ManyUriSans(2)));

        let mut s = base.clone();
        s.uris = vec!["https://example.org/agent".into()];
        assert!(matches!(
            verify(&b, &ca, &s),
            Err(VerifyError::NotSpiffe(_))
        ));

        let mut s = base.clone();
        s.uris = vec!["spiffe://example.org/a/../b".into()];
        assert_eq!(
            verify(&b, &ca, &s),
            Err(VerifyError::BadSpiffeId(SpiffeIdError::DotSegment))
        );

        let mut s = base.clone();
        s.is_ca = true;
        assert_eq!(verify(&b, &ca, &s), Err(VerifyError::LeafIsCa));

        let mut s = base.clone();
        s.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        assert_eq!(verify(&b, &ca, &s), Err(VerifyError::NoDigitalSignature));

        let mut s = base.clone();
        s.key_usages = vec![];
        assert_eq!(verify(&b, &ca, &s), Err(VerifyError::NoKeyUsage));

        let mut s = base.clone();
        s.not_after = ::time::OffsetDateTime::now_utc() - ::time::Duration::hours(1);
        s.not_before = s.not_after - ::time::Duration::hours(1);
        assert!(matches!(
            verify(&b, &ca, &s),
            Err(VerifyError::OutsideValidity { .. })
        ));
    }

    #[test]
    fn an_svid_must_chain_to_its_own_trust_domain() {
        let a = DevCa::new("a.example").unwrap();
        let b = DevCa::new("b.example").unwrap();
        let both = bundles(&[&a, &b]);
        // Signed by a's CA but claiming b's trust domain.
        let forged = SvidSpec::workload("spiffe://b.example/agent");
        assert!(matches!(
            verify(&both, &a, &forged),
            Err(VerifyError::Chain { domain, .. }) if domain == "b.example"
        ));
        // A trust domain nobody configured.
        let other = SvidSpec::workload("spiffe://c.example/agent");
        assert_eq!(
            verify(&both, &a, &other),
            Err(VerifyError::UnknownTrustDomain("c.example".into()))
        );
        assert!(verify(&both, &b, &forged).is_ok());
    }

    #[test]
    fn an_empty_chain_is_no_certificate() {
        let ca = DevCa::new("example.org").unwrap();
        assert_eq!(
            bundles(&[&ca]).verify(&[], UnixTime::now()),
            Err(VerifyError::NoCertificate)
        );
    }
}

#[cfg(all(test, feature = "server"))]
mod properties {
    use super::*;
    use crate::identity::devcerts::{DevCa, SvidSpec};
    use crate::testing::matching;
    use ::time::{Duration, OffsetDateTime};
    use proptest::prelude::*;
    use rcgen::{KeyPair, KeyUsagePurpose};
    use std::sync::LazyLock;

    /// Two configured trust domains, certificates made once, and one leaf key for
    /// every certificate a property issues (generating keys per case would cost
    /// more than the verification under test).
    struct Pki {
        ca: DevCa,
        bundles: TrustBundles,
        leaf_key: KeyPair,
        now: OffsetDateTime,
        /// DER to mutate: an SVID, a serving certificate with DNS SANs, a CA.
        seeds: Vec<Vec<u8>>,
    }

    static PKI: LazyLock<Pki> = LazyLock::new(|| {
        let ca = DevCa::new("example.org").expect("dev CA");
        let other = DevCa::new("other.org").expect("dev CA");
        let bundles = TrustBundles::from_der(
            [&ca, &other]
                .iter()
                .map(|c| {
                    let der = CertificateDer::from(c.cert_der().to_vec());
                    (c.trust_domain.clone(), c.trust_domain.clone(), vec![der])
                })
                .collect(),
        )
        .expect("bundles");
        let seeds = vec![
            ca.svid("spiffe://example.org/agent/a")
                .expect("svid")
                .cert_der,
            ca.server(
                "spiffe://example.org/mayfly/broker",
                &["localhost", "127.0.0.1"],
            )
            .expect("server cert")
            .cert_der,
            ca.cert_der().to_vec(),
        ];
        Pki {
            bundles,
            leaf_key: KeyPair::generate().expect("key"),
            now: OffsetDateTime::now_utc(),
            seeds,
            ca,
        }
    });

    fn unix(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(t.unix_timestamp()).expect("after 1970"),
        ))
    }

    fn verify_chain(chain: &[Vec<u8>]) -> Result<Svid, VerifyError> {
        let chain: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        PKI.bundles.verify(&chain, unix(PKI.now))
    }

    /// One edit of a certificate's DER.
    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Set(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
        Splice(usize, Vec<u8>),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
            2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            1 => any::<usize>().prop_map(Edit::Delete),
            1 => any::<usize>().prop_map(Edit::Truncate),
            1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(i, b)| Edit::Splice(i, b)),
        ]
    }

    fn apply(der: &mut Vec<u8>, e: &Edit) {
        let n = der.len();
        if n == 0 {
            return;
        }
        match e {
            Edit::Flip(i, bit) => der[i % n] ^= 1 << bit,
            Edit::Set(i, b) => der[i % n] = *b,
            Edit::Insert(i, b) => der.insert(i % (n + 1), *b),
            Edit::Delete(i) => {
                der.remove(i % n);
            }
            Edit::Truncate(i) => der.truncate(i % n),
            Edit::Splice(i, bytes) => {
                let at = i % n;
                let end = (at + bytes.len()).min(n);
                der.splice(at..end, bytes.iter().copied());
            }
        }
    }

    /// A URI SAN: a SPIFFE ID of a configured, a foreign or an unknown trust
    /// domain, a malformed `spiffe://` URI, or another scheme.
    fn uri() -> impl Strategy<Value = String> {
        let path = prop::collection::vec(matching("[a-z0-9]{1,4}"), 1..3).prop_map(|p| p.join("/"));
        prop_oneof![
            4 => (prop::sample::select(vec!["example.org", "other.org", "third.org"]), path)
                .prop_map(|(td, p)| format!("spiffe://{td}/{p}")),
            2 => prop::sample::select(vec![
                "spiffe://example.org",
                "spiffe://example.org/",
                "spiffe://example.org/a/",
                "spiffe://example.org//a",
                "spiffe://example.org/a/../b",
                "spiffe://example.org/./a",
                "spiffe:///a",
                "spiffe://Example.org/a",
                "SPIFFE://example.org/a",
                "Spiffe://example.org/a",
                "spiffe://example.org:8443/a",
                "spiffe://user@example.org/a",
                "spiffe://example.org/a?x=1",
                "spiffe://example.org/a#f",
                "spiffe://example.org/a%2Fb",
                "spiffe://example.org/a b",
                "spiffe:example.org/a",
                "spiffe://",
            ])
            .prop_map(String::from),
            2 => matching("spiffe://[a-zA-Z0-9./_:@%?#*~ -]{0,24}"),
            1 => matching("(https|http|urn|file|spiffe):[a-z0-9./:]{0,16}"),
        ]
    }

    fn key_usages() -> impl Strategy<Value = Vec<KeyUsagePurpose>> {
        use KeyUsagePurpose as K;
        prop_oneof![
            6 => Just(vec![K::DigitalSignature, K::KeyEncipherment]),
            1 => prop::sample::subsequence(
                vec![K::DigitalSignature, K::KeyEncipherment, K::KeyAgreement, K::KeyCertSign, K::CrlSign],
                0..=5,
            ),
        ]
    }

    /// An SVID spec with any SAN list, and now and then another flaw.
    fn spec() -> impl Strategy<Value = SvidSpec> {
        (
            // Mostly one URI SAN, so that the other rules are reached too.
            prop_oneof![
                1 => Just(vec![]),
                6 => uri().prop_map(|u| vec![u]),
                2 => prop::collection::vec(uri(), 2..5),
            ],
            prop::collection::vec(matching("(\\*\\.)?[a-z]{1,8}\\.example"), 0..3),
            prop::bool::weighted(0.05),
            key_usages(),
            prop_oneof![8 => Just((-300i64, 86_400i64)), 1 => (-100_000i64..100_000, -100_000i64..100_000)],
        )
            .prop_map(|(uris, dns, is_ca, key_usages, (from, to))| {
                let now = PKI.now;
                SvidSpec {
                    uris,
                    dns,
                    is_ca,
                    key_usages,
                    not_before: now + Duration::seconds(from),
                    not_after: now + Duration::seconds(to),
                }
            })
    }

    /// What the X509-SVID rules say of a spec, in the order Mayfly checks them.
    fn expected(s: &SvidSpec) -> Result<String, VerifyError> {
        use KeyUsagePurpose as K;
        let uri = match s.uris.as_slice() {
            [] => return Err(VerifyError::NoUriSan),
            [one] => one,
            many => return Err(VerifyError::ManyUriSans(many.len())),
        };
        if !uri.to_ascii_lowercase().starts_with("spiffe://") {
            return Err(VerifyError::NotSpiffe(uri.clone()));
        }
        let id = SpiffeId::parse(uri).map_err(VerifyError::BadSpiffeId)?;
        if s.is_ca {
            return Err(VerifyError::LeafIsCa);
        }
        if s.key_usages.is_empty() {
            return Err(VerifyError::NoKeyUsage);
        }
        if !s.key_usages.contains(&K::DigitalSignature) {
            return Err(VerifyError::NoDigitalSignature);
        }
        if s.key_usages.contains(&K::KeyCertSign) || s.key_usages.contains(&K::CrlSign) {
            return Err(VerifyError::SigningKeyUsage);
        }
        // X.509 times have whole seconds; both ends are inclusive.
        let now = PKI.now.replace_nanosecond(0).expect("zero is a nanosecond");
        let (from, to) = (
            s.not_before.replace_nanosecond(0).expect("zero"),
            s.not_after.replace_nanosecond(0).expect("zero"),
        );
        if now < from || now > to {
            return Err(VerifyError::OutsideValidity {
                not_before: String::new(),
                not_after: String::new(),
            });
        }
        match id.trust_domain() {
            "example.org" => Ok(id.to_string()),
            "other.org" => Err(VerifyError::Chain {
                domain: "other.org".into(),
                why: String::new(),
            }),
            td => Err(VerifyError::UnknownTrustDomain(td.to_string())),
        }
    }

    /// Errors compared by kind and what they name, not by the library's wording.
    fn shape(r: &Result<Svid, VerifyError>) -> Result<String, VerifyError> {
        match r {
            Ok(svid) => Ok(svid.id.to_string()),
            Err(VerifyError::OutsideValidity { .. }) => Err(VerifyError::OutsideValidity {
                not_before: String::new(),
                not_after: String::new(),
            }),
            Err(VerifyError::Chain { domain, .. }) => Err(VerifyError::Chain {
                domain: domain.clone(),
                why: String::new(),
            }),
            Err(e) => Err(e.clone()),
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(
            chain in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..128), 0..3),
        ) {
            prop_assert!(verify_chain(&chain).is_err());
        }

        #[test]
        fn a_mutated_certificate_is_refused(
            seed in 0usize..3,
            edits in prop::collection::vec(edit(), 1..4),
            junk in prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..64)),
        ) {
            let original = &PKI.seeds[seed];
            let mut der = original.clone();
            for e in &edits {
                apply(&mut der, e);
            }
            let mut chain = vec![der.clone()];
            chain.extend(junk);
            let verdict = verify_chain(&chain);
            if der != *original {
                prop_assert!(verdict.is_err(), "a mutated certificate was accepted: {verdict:?}");
            } else if seed == 2 {
                // The CA's own certificate is no SVID: its SPIFFE ID has no path.
                prop_assert_eq!(verdict, Err(VerifyError::BadSpiffeId(SpiffeIdError::NoPath)));
            } else if chain.len() == 1 {
                prop_assert!(verdict.is_ok(), "{verdict:?}");
            }
        }

        #[test]
        fn only_exactly_one_valid_spiffe_uri_san_of_the_chains_domain_is_accepted(spec in spec()) {
            let issued = PKI.ca.issue_for(&spec, &PKI.leaf_key);
            prop_assert!(issued.is_ok(), "{spec:?}: {:?}", issued.err());
            let der = issued.expect("checked above").cert_der;
            let verdict = verify_chain(std::slice::from_ref(&der));
            prop_assert_eq!(shape(&verdict), expected(&spec), "{:?}", spec);
            if let Ok(svid) = verdict {
                prop_assert_eq!(svid.thumbprint, thumbprint(&der));
            }
        }
    }
}

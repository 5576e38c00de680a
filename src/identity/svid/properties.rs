//! Property tests of X.509-SVID verification: arbitrary DER, mutated real
//! certificates and generated SAN lists.
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

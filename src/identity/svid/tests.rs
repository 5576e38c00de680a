//! Examples of X.509-SVID verification, with rcgen-made certificates.
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

//! Examples of verification: signatures, headers, times, tampering.
use super::super::{Confirmation, SigningKey};
use super::*;
use time::OffsetDateTime;

fn claims(now: i64) -> Claims {
    Claims {
        iss: "mayfly".into(),
        sub: "spiffe://example.org/agent/a".into(),
        aud: "crm-api".into(),
        exp: now + 60,
        iat: now,
        nbf: now,
        jti: "j1".into(),
        scope: "read:customers/eu/*".into(),
        task: "t".into(),
        wf: "support".into(),
        cnf: Confirmation {
            x5t_s256: "abc".into(),
        },
        act: None,
        client_id: "spiffe://example.org/agent/a".into(),
        depth: 0,
        ancestors: vec![],
    }
}

fn record(k: &SigningKey) -> KeyRecord {
    let now = OffsetDateTime::now_utc();
    KeyRecord {
        kid: k.kid().into(),
        public_key: k.public_key().to_vec(),
        created_at: now,
        not_after: now,
    }
}

#[test]
fn an_unknown_key_is_named_by_a_short_prefix_of_its_kid() {
    let err = TokenError::UnknownKey("k".repeat(20_000)).to_string();
    assert_eq!(
        err,
        format!(
            "the token was signed by an unknown key \"{}…\" (20000 bytes)",
            "k".repeat(32)
        )
    );
}

#[test]
fn a_signed_token_verifies_with_its_published_key() {
    let k = SigningKey::generate().unwrap();
    let set = KeySet::from_records(&[record(&k)]);
    let t = k.sign(&claims(1000)).unwrap();
    assert_eq!(set.verify(&t, 1000, 0).unwrap(), claims(1000));
    assert_eq!(set.verify(&t, 1060, 0), Err(TokenError::Expired));
    assert_eq!(set.verify(&t, 999, 0), Err(TokenError::NotYetValid));
}

#[test]
fn a_tampered_or_foreign_token_is_refused() {
    let k = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let set = KeySet::from_records(&[record(&k)]);
    let t = other.sign(&claims(1000)).unwrap();
    assert!(matches!(
        set.verify(&t, 1000, 0),
        Err(TokenError::UnknownKey(_))
    ));
    let good = k.sign(&claims(1000)).unwrap();
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = {
        use base64::Engine;
        let mut c = claims(1000);
        c.aud = "billing".into();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap())
    };
    parts[1] = &forged_payload;
    assert_eq!(
        set.verify(&parts.join("."), 1000, 0),
        Err(TokenError::Signature)
    );
    assert!(matches!(
        set.verify("not-a-jwt", 1000, 0),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn a_corrupt_stored_key_is_ignored_and_a_retired_key_is_refused() {
    let k = SigningKey::generate().unwrap();
    let mut short = record(&k);
    short.public_key.truncate(16);
    let set = KeySet::from_records(&[short]);
    let t = k.sign(&claims(1000)).unwrap();
    assert!(matches!(
        set.verify(&t, 1000, 0),
        Err(TokenError::UnknownKey(_))
    ));

    let mut retired = record(&k);
    retired.not_after = OffsetDateTime::from_unix_timestamp(1030).unwrap();
    let set = KeySet::from_records(&[retired]);
    assert!(set.verify(&t, 1000, 0).is_ok());
    assert!(matches!(
        set.verify(&t, 1030, 0),
        Err(TokenError::UnknownKey(_))
    ));
}

#[test]
fn only_access_token_headers_are_accepted() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let with = |h: serde_json::Value| format!("{}.e30.sig", b64.encode(h.to_string()));
    assert_eq!(
        KeySet::kid_of(&with(
            serde_json::json!({"alg":"EdDSA","typ":"application/AT+JWT","kid":"k"})
        )),
        Ok("k".into())
    );
    assert_eq!(
        KeySet::kid_of(&with(
            serde_json::json!({"alg":"EdDSA","typ":"JWT","kid":"k"})
        )),
        Err(TokenError::Header)
    );
    assert_eq!(
        KeySet::kid_of(&with(serde_json::json!({"alg":"EdDSA","typ":"at+jwt"}))),
        Err(TokenError::Header)
    );
    assert_eq!(
        KeySet::kid_of(&with(
            serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":"k"})
        )),
        Err(TokenError::Header)
    );
    assert_eq!(
        KeySet::kid_of(&with(
            serde_json::json!({"alg":"none","typ":"at+jwt","kid":"k"})
        )),
        Err(TokenError::Header)
    );
    assert!(matches!(
        KeySet::kid_of(&with(serde_json::json!({"typ":"at+jwt","kid":"k"}))),
        Err(TokenError::Malformed(_))
    ));
}

/// A key pair the test holds itself, to sign arbitrary headers and payloads.
struct RawSigner {
    pair: ring::signature::Ed25519KeyPair,
    set: KeySet,
}

const RAW_KID: &str = "raw";

impl RawSigner {
    fn new() -> Self {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let set = KeySet::from_records(&[KeyRecord {
            kid: RAW_KID.into(),
            public_key: pair.public_key().as_ref().to_vec(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::from_unix_timestamp(1_000_000).unwrap(),
        }]);
        RawSigner { pair, set }
    }

    /// `header.payload.signature` over the already-encoded segments.
    fn sign_segments(&self, header: &str, payload: &str) -> String {
        let input = format!("{header}.{payload}");
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn sign(&self, header: serde_json::Value, payload: &[u8]) -> String {
        self.sign_segments(&B64.encode(header.to_string()), &B64.encode(payload))
    }
}

fn at_header() -> serde_json::Value {
    serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":RAW_KID})
}

#[test]
fn a_token_signed_by_hand_verifies_like_a_minted_one() {
    let s = RawSigner::new();
    let t = s.sign(at_header(), &serde_json::to_vec(&claims(1000)).unwrap());
    assert_eq!(s.set.verify(&t, 1000, 0), Ok(claims(1000)));
}

#[test]
fn a_bad_signature_segment_is_refused() {
    let s = RawSigner::new();
    let good = s.sign(at_header(), &serde_json::to_vec(&claims(1000)).unwrap());
    let (input, sig_b64) = good.rsplit_once('.').unwrap();
    let sig = B64.decode(sig_b64).unwrap();
    assert_eq!(sig.len(), 64);
    let with_sig = |sig: &str| format!("{input}.{sig}");

    // Valid base64url, wrong length: a bad signature, not a malformed token.
    for bytes in [&sig[..63], &sig[..0], &[sig.as_slice(), &[0]].concat()[..]] {
        assert_eq!(
            s.set.verify(&with_sig(&B64.encode(bytes)), 1000, 0),
            Err(TokenError::Signature),
            "{} bytes",
            bytes.len()
        );
    }
    // Right length, one bit off.
    let mut flipped = sig.clone();
    flipped[10] ^= 1;
    assert_eq!(
        s.set.verify(&with_sig(&B64.encode(&flipped)), 1000, 0),
        Err(TokenError::Signature)
    );
    // Not base64url: standard alphabet, padding, stray characters, non-ASCII.
    let standard = base64::engine::general_purpose::STANDARD.encode(&sig);
    for bad in [
        standard.as_str(),
        &format!("{sig_b64}=="),
        "!!!!",
        "A",
        "sïg",
    ] {
        assert!(
            matches!(
                s.set.verify(&with_sig(bad), 1000, 0),
                Err(TokenError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn a_token_without_exactly_three_segments_is_malformed() {
    let s = RawSigner::new();
    let good = s.sign(at_header(), &serde_json::to_vec(&claims(1000)).unwrap());
    let parts: Vec<&str> = good.split('.').collect();
    let two = format!("{}.{}", parts[0], parts[1]);
    let four = format!("{good}.{}", parts[2]);
    let four_empty = format!("{good}.");
    for t in [
        two.as_str(),
        &four,
        &four_empty,
        "",
        ".",
        "..",
        "...",
        "a.b.c.d",
    ] {
        assert!(
            matches!(KeySet::kid_of(t), Err(TokenError::Malformed(_))),
            "kid_of {t:?}"
        );
        assert!(
            matches!(s.set.verify(t, 1000, 0), Err(TokenError::Malformed(_))),
            "verify {t:?}"
        );
    }
}

#[test]
fn a_signed_payload_that_is_not_the_claims_is_malformed() {
    let s = RawSigner::new();
    let header = B64.encode(at_header().to_string());
    let mut claims_without_jti = serde_json::to_value(claims(1000)).unwrap();
    claims_without_jti.as_object_mut().unwrap().remove("jti");
    for payload in [
        B64.encode(b"not json"),
        B64.encode(b""),
        B64.encode(b"[]"),
        B64.encode(b"{}"),
        B64.encode(claims_without_jti.to_string()),
        // Signed, but the payload segment itself is not base64url.
        "e30=".to_string(),
        "e3*".to_string(),
    ] {
        let t = s.sign_segments(&header, &payload);
        assert!(
            matches!(s.set.verify(&t, 1000, 0), Err(TokenError::Malformed(_))),
            "{payload:?}"
        );
    }
    // A header that is not base64url or not JSON, even when signed.
    let payload = B64.encode(serde_json::to_vec(&claims(1000)).unwrap());
    for header in [
        "e30=".to_string(),
        B64.encode(b"{alg"),
        B64.encode(b"\"[EdDSA\"]"),
    ] {
        let t = s.sign_segments(&header, &payload);
        assert!(
            matches!(s.set.verify(&t, 1000, 0), Err(TokenError::Malformed(_))),
            "{header:?}"
        );
    }
}

#[test]
fn alg_none_and_hs256_are_refused_even_for_a_known_kid() {
    let s = RawSigner::new();
    let payload = serde_json::to_vec(&claims(1000)).unwrap();
    let encoded = B64.encode(&payload);
    for alg in ["none", "HS256", "eddsa", "Ed25519"] {
        let header = serde_json::json!({"alg":alg,"typ":"at+jwt","kid":RAW_KID});
        let header = B64.encode(header.to_string());
        // Unsigned, as alg none would have it.
        let unsigned = format!("{header}.{encoded}.");
        assert_eq!(
            s.set.verify(&unsigned, 1000, 0),
            Err(TokenError::Header),
            "{alg}"
        );
        // An HMAC over the signing input, keyed with the public key.
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.set.keys[RAW_KID].key.as_ref()),
            format!("{header}.{encoded}").as_bytes(),
        );
        let hs = format!("{header}.{encoded}.{}", B64.encode(mac.as_ref()));
        assert_eq!(s.set.verify(&hs, 1000, 0), Err(TokenError::Header), "{alg}");
        // Even with a genuine Ed25519 signature.
        let signed = s.sign_segments(&header, &encoded);
        assert_eq!(
            s.set.verify(&signed, 1000, 0),
            Err(TokenError::Header),
            "{alg}"
        );
    }
}

/// Properties over arbitrary and tampered tokens, with one key pair for all.
mod properties;

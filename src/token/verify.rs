//! Verifying a token against the published keys: header, Ed25519 signature (ring),
//! time window.
//!
//! The compact JWS is taken apart by hand: the header is decoded once, the
//! signature checked with ring over `header.payload`, and the claims decoded once.
use super::{Claims, KeyRecord};
use crate::domain::text::quote;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;

/// Why a token is not valid. RFC 7662 callers only see `active: false`; the reason
/// is for logs and typed verdicts.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token header must be alg EdDSA, typ at+jwt and carry a kid")]
    Header,
    #[error("the token was signed by an unknown key {}", quote(.0))]
    UnknownKey(String),
    #[error("the token signature does not verify")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// Length of a raw Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// A published key, ready to verify with, and the end of its publication.
#[derive(Clone)]
struct PublishedKey {
    key: UnparsedPublicKey<[u8; ED25519_PUBLIC_KEY_LEN]>,
    not_after: i64,
}

/// Public keys by kid, ready to verify, each with the end of its publication.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, PublishedKey>,
}

/// The JOSE header fields Mayfly looks at. Other members are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

/// A compact JWS split into its three segments (still base64url-encoded), with
/// the signing input `header.payload`.
struct Compact<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

impl<'a> Compact<'a> {
    fn split(token: &'a str) -> Result<Self, TokenError> {
        let mut parts = token.splitn(4, '.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a compact JWS has exactly three segments".into(),
            ));
        };
        // header '.' payload: both are prefixes of `token`, so this cannot go out
        // of bounds or split a character.
        let signing_input = &token[..header.len() + 1 + payload.len()];
        Ok(Compact {
            header,
            payload,
            signature,
            signing_input,
        })
    }

    /// The kid, once the header is an EdDSA access-token header (RFC 9068).
    fn kid(&self) -> Result<String, TokenError> {
        let json = B64
            .decode(self.header)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        // RFC 9068: typ is "at+jwt", or "application/at+jwt", compared case-insensitively.
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if header.alg != "EdDSA" || !typ_ok {
            return Err(TokenError::Header);
        }
        header.kid.ok_or(TokenError::Header)
    }
}

impl KeySet {
    /// Keys that are not well-formed Ed25519 public keys are left out (and logged):
    /// a corrupt row must not make every verification fail or panic.
    pub fn from_records(records: &[KeyRecord]) -> Self {
        let mut keys = HashMap::new();
        for r in records {
            let Ok(raw) = <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(r.public_key.as_slice()) else {
                tracing::error!(kid = %r.kid, len = r.public_key.len(), "stored signing key is not a 32-byte Ed25519 key; ignored");
                continue;
            };
            keys.insert(
                r.kid.clone(),
                PublishedKey {
                    key: UnparsedPublicKey::new(&ED25519, raw),
                    not_after: r.not_after.unix_timestamp(),
                },
            );
        }
        KeySet { keys }
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The kid named in a token's header, without verifying anything.
    pub fn kid_of(token: &str) -> Result<String, TokenError> {
        Compact::split(token)?.kid()
    }

    /// Verifies the signature and the time window (`now` in Unix seconds, with
    /// `leeway` seconds of tolerance either side).
    pub fn verify(&self, token: &str, now: i64, leeway: i64) -> Result<Claims, TokenError> {
        let jws = Compact::split(token)?;
        let kid = jws.kid()?;
        let key = match self.keys.get(&kid) {
            // A key past its publication is no longer trusted.
            Some(k) if now < k.not_after => &k.key,
            _ => return Err(TokenError::UnknownKey(kid)),
        };
        let signature = B64
            .decode(jws.signature)
            .map_err(|e| TokenError::Malformed(format!("signature: {e}")))?;
        // ring refuses a signature that is not 64 bytes like any other bad one.
        key.verify(jws.signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let payload = B64
            .decode(jws.payload)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let c: Claims = serde_json::from_slice(&payload)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if now >= c.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(leeway) < c.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
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
}

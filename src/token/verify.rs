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

    /// Properties over arbitrary and tampered tokens, with one key pair for all.
    mod properties {
        use super::*;
        use crate::testing::{any_text, matching};
        use proptest::prelude::*;
        use std::sync::LazyLock;

        static SIGNER: LazyLock<RawSigner> = LazyLock::new(RawSigner::new);
        static GOOD: LazyLock<String> = LazyLock::new(|| {
            SIGNER.sign(
                at_header(),
                &serde_json::to_vec(&claims(1000)).expect("claims serialise"),
            )
        });

        /// Tokens signed once, for every pair of these `exp` and `nbf` (signing per
        /// case would cost more than everything else the property does).
        static WINDOWS: LazyLock<Vec<(String, Claims)>> = LazyLock::new(|| {
            let edges = [i64::MIN, -1, 0, 950, 999, 1000, 1001, 1050, i64::MAX];
            let mut signed = vec![];
            for exp in edges {
                for nbf in edges {
                    let mut c = claims(1000);
                    (c.exp, c.nbf) = (exp, nbf);
                    let t = SIGNER.sign(
                        at_header(),
                        &serde_json::to_vec(&c).expect("claims serialise"),
                    );
                    signed.push((t, c));
                }
            }
            signed
        });

        /// Characters of compact JWSs, and a few that are not base64url.
        fn near_token() -> impl Strategy<Value = String> {
            matching("[A-Za-z0-9_.=+/-]{0,80}")
        }

        fn b64_of_bytes() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<u8>(), 0..96).prop_map(|b| B64.encode(b))
        }

        /// One edit of a token's text.
        #[derive(Debug, Clone)]
        enum Edit {
            Replace(usize, char),
            Insert(usize, char),
            Delete(usize),
            Truncate(usize),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            let ch = prop_oneof![
                8 => prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()
                ),
                1 => prop::sample::select(vec!['.', '=', '+', '/', ' ', 'é']),
            ];
            prop_oneof![
                4 => (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
                1 => (any::<usize>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
                1 => any::<usize>().prop_map(Edit::Delete),
                1 => any::<usize>().prop_map(Edit::Truncate),
            ]
        }

        fn apply(token: &str, e: &Edit) -> String {
            let mut chars: Vec<char> = token.chars().collect();
            let n = chars.len();
            match *e {
                Edit::Replace(i, c) => chars[i % n] = c,
                Edit::Insert(i, c) => chars.insert(i % (n + 1), c),
                Edit::Delete(i) => {
                    chars.remove(i % n);
                }
                Edit::Truncate(i) => chars.truncate(i % n),
            }
            chars.into_iter().collect()
        }

        proptest! {
            #![proptest_config(crate::testing::proptest_config())]

            #[test]
            fn any_text_is_refused_without_panicking(
                s in prop_oneof![any_text(), near_token()],
            ) {
                let _ = KeySet::kid_of(&s);
                prop_assert!(SIGNER.set.verify(&s, 1000, 0).is_err());
            }

            #[test]
            fn three_arbitrary_base64url_segments_are_refused(
                header in prop_oneof![
                    b64_of_bytes(),
                    Just(B64.encode(at_header().to_string())),
                ],
                payload in b64_of_bytes(),
                signature in prop_oneof![
                    b64_of_bytes(),
                    prop::collection::vec(any::<u8>(), 64).prop_map(|b| B64.encode(b)),
                ],
            ) {
                let t = format!("{header}.{payload}.{signature}");
                let _ = KeySet::kid_of(&t);
                prop_assert!(SIGNER.set.verify(&t, 1000, 0).is_err());
            }

            #[test]
            fn a_tampered_token_is_refused(edits in prop::collection::vec(edit(), 1..4)) {
                let mut t = GOOD.clone();
                for e in &edits {
                    if t.is_empty() {
                        break;
                    }
                    t = apply(&t, e);
                }
                let verdict = SIGNER.set.verify(&t, 1000, 0);
                if t == *GOOD {
                    prop_assert_eq!(verdict, Ok(claims(1000)));
                } else {
                    prop_assert!(verdict.is_err(), "{t} was accepted");
                }
            }

            #[test]
            fn a_flipped_bit_in_any_decoded_segment_is_refused(
                segment in 0usize..3,
                at in any::<usize>(),
                bit in 0u8..8,
            ) {
                let parts: Vec<&str> = GOOD.split('.').collect();
                let mut bytes = B64.decode(parts[segment]).expect("the good token decodes");
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
                let mut parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                parts[segment] = B64.encode(&bytes);
                prop_assert!(SIGNER.set.verify(&parts.join("."), 1000, 0).is_err());
            }

            #[test]
            fn only_an_eddsa_access_token_header_with_a_known_kid_verifies(
                alg in prop_oneof![
                    Just("EdDSA".to_string()), Just("none".to_string()), Just("HS256".to_string()),
                    Just("eddsa".to_string()), Just("ES256".to_string()), matching("[A-Za-z0-9]{0,6}"),
                ],
                typ in prop_oneof![
                    Just(None), Just(Some("at+jwt".to_string())), Just(Some("AT+JWT".to_string())),
                    Just(Some("application/at+jwt".to_string())), Just(Some("JWT".to_string())),
                    matching("[a-z+/]{0,20}").prop_map(Some),
                ],
                kid in prop_oneof![
                    Just(None), Just(Some(RAW_KID.to_string())), matching("[a-z]{0,4}").prop_map(Some),
                ],
                extra in prop::option::of((matching("[a-z]{1,4}"), any::<i64>())),
            ) {
                let mut header = serde_json::json!({ "alg": alg });
                if let Some(t) = &typ {
                    header["typ"] = serde_json::json!(t);
                }
                if let Some(k) = &kid {
                    header["kid"] = serde_json::json!(k);
                }
                if let Some((name, v)) = &extra {
                    header[name] = serde_json::json!(v);
                }
                let t = SIGNER.sign(header.clone(), &serde_json::to_vec(&claims(1000)).expect("claims serialise"));
                let typ_ok = typ.as_deref().is_some_and(|t| {
                    t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
                });
                // The fields Mayfly reads decide; an extra member of the same name
                // replaces one of them.
                let fields_ok = alg == "EdDSA" && typ_ok && kid.as_deref() == Some(RAW_KID);
                let verdict = SIGNER.set.verify(&t, 1000, 0);
                if fields_ok && header.get("alg") == Some(&serde_json::json!("EdDSA"))
                    && header.get("typ").is_some_and(|t| t.is_string())
                    && header.get("kid") == Some(&serde_json::json!(RAW_KID))
                {
                    prop_assert_eq!(verdict, Ok(claims(1000)));
                } else {
                    prop_assert!(verdict.is_err(), "{header} was accepted");
                }
            }

            #[test]
            fn a_signed_token_is_valid_exactly_inside_its_time_window(
                signed in prop::sample::select(WINDOWS.clone()),
                now in prop_oneof![900i64..1100, any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
                leeway in prop_oneof![0i64..120, any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
            ) {
                let (t, c) = signed;
                // Keys are published until 1,000,000.
                let verdict = SIGNER.set.verify(&t, now, leeway);
                let expected = if now >= 1_000_000 {
                    Err(TokenError::UnknownKey(RAW_KID.into()))
                } else if now >= c.exp.saturating_add(leeway) {
                    Err(TokenError::Expired)
                } else if now.saturating_add(leeway) < c.nbf {
                    Err(TokenError::NotYetValid)
                } else {
                    Ok(c)
                };
                prop_assert_eq!(verdict, expected);
            }

            #[test]
            fn a_signed_payload_is_accepted_only_when_it_is_the_claims(
                payload in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64),
                    any_json().prop_map(|v| v.to_string().into_bytes()),
                    claims_with_one_field_changed().prop_map(|v| v.to_string().into_bytes()),
                ],
            ) {
                let t = SIGNER.sign(at_header(), &payload);
                let verdict = SIGNER.set.verify(&t, 1000, 0);
                match serde_json::from_slice::<Claims>(&payload) {
                    Ok(c) if c.nbf <= 1000 && 1000 < c.exp => prop_assert_eq!(verdict, Ok(c)),
                    Ok(_) => prop_assert!(matches!(verdict, Err(TokenError::Expired | TokenError::NotYetValid))),
                    Err(_) => prop_assert!(matches!(verdict, Err(TokenError::Malformed(_))), "{verdict:?}"),
                }
            }
        }

        /// Small JSON values of every kind.
        fn any_json() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                matching("[a-z]{0,6}").prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(matching("[a-z]{1,4}"), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// The good claims with one member removed or given another JSON value.
        fn claims_with_one_field_changed() -> impl Strategy<Value = serde_json::Value> {
            let good = serde_json::to_value(claims(1000)).expect("claims serialise");
            let names: Vec<String> = good
                .as_object()
                .map(|o| {
                    o.keys()
                        .cloned()
                        .chain(["act", "depth", "ancestors"].map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (prop::sample::select(names), prop::option::of(any_json())).prop_map(
                move |(name, v)| {
                    let mut c = good.clone();
                    if let Some(o) = c.as_object_mut() {
                        match v {
                            Some(v) => o.insert(name, v),
                            None => o.remove(&name),
                        };
                    }
                    c
                },
            )
        }
    }
}

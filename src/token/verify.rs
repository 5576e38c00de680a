//! Verifying a token against the published keys: signature, header, time window.
use super::{Claims, KeyRecord};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;

/// Why a token is not valid. RFC 7662 callers only see `active: false`; the reason
/// is for logs and typed verdicts.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token header must be alg EdDSA, typ at+jwt and carry a kid")]
    Header,
    #[error("the token was signed by an unknown key {0:?}")]
    UnknownKey(String),
    #[error("the token signature does not verify")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// Public keys by kid, ready to verify, each with the end of its publication.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, i64)>,
}

/// Length of a raw Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;

impl KeySet {
    /// Keys that are not well-formed Ed25519 public keys are left out (and logged):
    /// a corrupt row must not make every verification fail or panic.
    pub fn from_records(records: &[KeyRecord]) -> Self {
        let mut keys = HashMap::new();
        for r in records {
            if r.public_key.len() != ED25519_PUBLIC_KEY_LEN {
                tracing::error!(kid = %r.kid, len = r.public_key.len(), "stored signing key is not a 32-byte Ed25519 key; ignored");
                continue;
            }
            keys.insert(
                r.kid.clone(),
                (
                    DecodingKey::from_ed_der(&r.public_key),
                    r.not_after.unix_timestamp(),
                ),
            );
        }
        KeySet { keys }
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The kid named in a token's header, without verifying anything.
    pub fn kid_of(token: &str) -> Result<String, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        // RFC 9068: typ is "at+jwt", or "application/at+jwt", compared case-insensitively.
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if header.alg != Algorithm::EdDSA || !typ_ok {
            return Err(TokenError::Header);
        }
        header.kid.ok_or(TokenError::Header)
    }

    /// Verifies the signature and the time window (`now` in Unix seconds, with
    /// `leeway` seconds of tolerance either side).
    pub fn verify(&self, token: &str, now: i64, leeway: i64) -> Result<Claims, TokenError> {
        let kid = Self::kid_of(token)?;
        let key = match self.keys.get(&kid) {
            // A key past its publication is no longer trusted.
            Some((key, not_after)) if now < *not_after => key,
            _ => return Err(TokenError::UnknownKey(kid)),
        };
        let mut v = Validation::new(Algorithm::EdDSA);
        // Time and audience are checked below against the injected clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
            _ => TokenError::Malformed(e.to_string()),
        })?;
        let c = data.claims;
        if now >= c.exp + leeway {
            return Err(TokenError::Expired);
        }
        if now + leeway < c.nbf {
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
    }
}

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

/// Public keys by kid, ready to verify.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl KeySet {
    pub fn from_records(records: &[KeyRecord]) -> Self {
        KeySet {
            keys: records
                .iter()
                .map(|r| (r.kid.clone(), DecodingKey::from_ed_der(&r.public_key)))
                .collect(),
        }
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The kid named in a token's header, without verifying anything.
    pub fn kid_of(token: &str) -> Result<String, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some("at+jwt") {
            return Err(TokenError::Header);
        }
        header.kid.ok_or(TokenError::Header)
    }

    /// Verifies the signature and the time window (`now` in Unix seconds, with
    /// `leeway` seconds of tolerance either side).
    pub fn verify(&self, token: &str, now: i64, leeway: i64) -> Result<Claims, TokenError> {
        let kid = Self::kid_of(token)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey(kid))?;
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
}

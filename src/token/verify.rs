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
mod tests;

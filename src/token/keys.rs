//! Signing keys: generated in memory, parsed once, never written anywhere.
use super::Claims;
pub use crate::domain::KeyRecord;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// An Ed25519 key pair held in memory, with its JWS header pre-encoded.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| ring::error::Unspecified)?;
        let kid = Jwk::from_public(pair.public_key().as_ref(), String::new()).thumbprint();
        let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        let header_b64 = B64.encode(header.to_string());
        Ok(SigningKey {
            kid,
            pair,
            header_b64,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// A compact JWS: header.payload.signature, signed with the cached key pair.
    pub fn sign(&self, claims: &Claims) -> Result<String, serde_json::Error> {
        let payload = serde_json::to_vec(claims)?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 90);
        out.push_str(&self.header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = self.pair.sign(out.as_bytes());
        out.push('.');
        B64.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }
}

/// One JSON Web Key (RFC 8037 OKP, Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    pub fn from_public(public_key: &[u8], kid: String) -> Self {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64.encode(public_key),
            kid,
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }

    /// RFC 7638 thumbprint, used as the key id.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
            self.crv, self.kty, self.x
        );
        B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

/// A JWK set as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    pub fn from_records(records: &[KeyRecord]) -> Self {
        Jwks {
            keys: records
                .iter()
                .map(|r| Jwk::from_public(&r.public_key, r.kid.clone()))
                .collect(),
        }
    }
}

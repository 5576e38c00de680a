//! Tokens: the RFC 9068 claims, Ed25519 signing with a cached key pair, the
//! keyring (current and next signing keys, registration, rotation, the published
//! keys), JWKS, and signature verification against published keys.
mod keyring;
mod keys;
mod verify;

pub use keyring::{KeyError, Keyring, Signed};
pub use keys::{Jwk, Jwks, KeyRecord, SigningKey};
pub use verify::{KeySet, TokenError};

use serde::{Deserialize, Serialize};

/// RFC 8705 confirmation: the SHA-256 thumbprint of the certificate the token is
/// bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The claims of a Mayfly access token (RFC 9068 shape plus Mayfly's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The tool the token is for.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// `<action>:<resource pattern>`.
    pub scope: String,
    /// The task id.
    pub task: String,
    /// The workflow name.
    pub wf: String,
    pub cnf: Confirmation,
    /// RFC 8693 delegation chain, when the token was delegated: `sub` stays the
    /// task's agent, `act.sub` is the sub-agent holding this token, and each
    /// nested `act` an earlier delegate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    /// OAuth client identifier (RFC 9068 requires it): the SPIFFE ID of the agent
    /// holding the token (the one its `cnf` binds).
    pub client_id: String,
    /// Delegation depth: absent (0) for a token minted directly.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// The jtis of the tokens this one was delegated from, root first: revoking
    /// any of them revokes this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Claims {
    /// Every actor of the RFC 8693 chain, the current holder first.
    pub fn actors(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(self.act.as_ref(), |a| a.get("act"))
            .filter_map(|a| a.get("sub").and_then(|s| s.as_str()))
    }
}

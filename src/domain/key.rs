//! A signing key's registration: the public half every replica's JWKS serves.
use time::OffsetDateTime;

/// The public half of a signing key as registered in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// The key is published (and accepted) until then.
    pub not_after: OffsetDateTime,
}

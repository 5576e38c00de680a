//! gRPC services, one file per caller role; `convert` turns proto messages into
//! domain types (or INVALID_ARGUMENT naming the field) and back; `codec` is their
//! protobuf codec (a body that does not decode is INVALID_ARGUMENT too); `json`
//! how the answers show as JSON; `oauth` the OAuth front door over the same
//! broker calls.
#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
mod auth;
pub mod codec;
#[cfg(feature = "server")]
pub mod convert;
#[cfg(feature = "server")]
pub mod json;
#[cfg(feature = "server")]
pub mod oauth;
#[cfg(feature = "server")]
pub(crate) mod task;
#[cfg(feature = "server")]
mod token;
#[cfg(feature = "server")]
mod verifier;

#[cfg(feature = "server")]
pub use admin::AdminApi;
#[cfg(feature = "server")]
pub use auth::{Auth, Refused};
#[cfg(feature = "server")]
pub use task::TaskApi;
#[cfg(feature = "server")]
pub use token::TokenApi;
#[cfg(feature = "server")]
pub use verifier::VerifierApi;

/// Generated protobuf and tonic code for `mayfly.v1`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("mayfly.v1");
    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mayfly_descriptor");
}

// Messages that carry a bearer token print it redacted.
impl std::fmt::Debug for pb::MintTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintTokenResponse")
            .field("token", &"<redacted>")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("approval", &self.approval)
            .finish()
    }
}

impl std::fmt::Debug for pb::DelegateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegateRequest")
            .field("parent_token", &"<redacted>")
            .field("sub_agent", &self.sub_agent)
            .field("scope", &self.scope)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish()
    }
}

impl std::fmt::Debug for pb::ReportMisuseRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportMisuseRequest")
            .field("token", &"<redacted>")
            .field("kind", &self.kind)
            .field("evidence", &self.evidence)
            .finish()
    }
}

impl std::fmt::Debug for pb::IntrospectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectRequest")
            .field("token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::pb;

    #[test]
    fn messages_that_carry_a_token_never_print_it() {
        let secret = "eyJhbGciOiJFZERTQSJ9.c2VjcmV0.c2ln";
        let printed = [
            format!(
                "{:?}",
                pb::IntrospectRequest {
                    token: secret.into()
                }
            ),
            format!(
                "{:?}",
                pb::MintTokenResponse {
                    token: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                pb::DelegateRequest {
                    parent_token: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                pb::AwaitApprovalResponse {
                    token: Some(pb::MintTokenResponse {
                        token: secret.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                pb::ReportMisuseRequest {
                    token: secret.into(),
                    kind: "binding_mismatch".into(),
                    evidence: "x5t".into(),
                }
            ),
        ];
        for p in printed {
            assert!(!p.contains("c2VjcmV0"), "{p}");
            assert!(p.contains("<redacted>"), "{p}");
        }
    }
}

//! gRPC services, one file per caller role; `convert` turns proto messages into
//! domain types (or INVALID_ARGUMENT naming the field) and back.
mod admin;
pub mod convert;
mod task;
mod token;
mod verifier;

pub use admin::AdminApi;
pub use task::TaskApi;
pub use token::TokenApi;
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

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error;
use crate::identity::{Caller, ConnInfo, Role, RoleMap};
use std::sync::Arc;
use tonic::{Request, Status};

/// Checks callers: a verified SVID that has not expired since the handshake, and
/// one of the roles a call requires.
#[derive(Clone)]
pub struct Auth {
    pub roles: Arc<RoleMap>,
    pub clock: Arc<dyn Clock>,
    /// Records role refusals in the audit trail.
    pub broker: Arc<Broker>,
}

impl Auth {
    /// The authenticated caller of a request to `method` (its full gRPC name), if
    /// it holds one of `allowed` roles. A caller without such a role is refused and
    /// the refusal audited; a request without a valid SVID has no caller worth
    /// recording (anyone can present a bad certificate) and was logged at the
    /// handshake.
    pub async fn caller<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
        allowed: &[Role],
    ) -> Result<Caller, Status> {
        let info = req
            .extensions()
            .get::<ConnInfo>()
            .ok_or_else(|| Status::unauthenticated("no mutual-TLS connection information"))?;
        let caller = info.identity.as_ref().map_err(error::unauthenticated)?;
        // The SVID was verified at the handshake; a long-lived connection must not
        // outlive it.
        if self.clock.now().unix_timestamp() >= caller.valid_until {
            return Err(Status::unauthenticated(
                "the client's X.509-SVID has expired since this connection was made; reconnect with a fresh SVID",
            ));
        }
        if allowed.iter().any(|r| self.roles.has(&caller.id, *r)) {
            Ok(caller.clone())
        } else {
            Err(self
                .broker
                .refuse_role(caller, method, allowed)
                .await
                .into())
        }
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

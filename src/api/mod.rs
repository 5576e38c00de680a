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

impl std::fmt::Debug for pb::IntrospectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectRequest")
            .field("token", &"<redacted>")
            .finish()
    }
}

use crate::error;
use crate::identity::{Caller, ConnInfo, Role, RoleMap};
use tonic::{Request, Status};

/// The authenticated caller of a request, if it holds one of `allowed` roles.
pub fn authorize<T>(req: &Request<T>, roles: &RoleMap, allowed: &[Role]) -> Result<Caller, Status> {
    let info = req
        .extensions()
        .get::<ConnInfo>()
        .ok_or_else(|| Status::unauthenticated("no mutual-TLS connection information"))?;
    let caller = info.identity.as_ref().map_err(error::unauthenticated)?;
    if allowed.iter().any(|r| roles.has(&caller.id, *r)) {
        Ok(caller.clone())
    } else {
        Err(error::wrong_role(caller.id.as_str(), allowed))
    }
}

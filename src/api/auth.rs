//! Who may call what: the caller's verified SVID and roles, refusals audited.
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

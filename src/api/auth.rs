//! Who may call what: the caller's verified SVID and roles, refusals audited.
//! One check for both edges: gRPC calls and the OAuth front door.
use crate::broker::{Broker, BrokerError};
use crate::clock::Clock;
use crate::error;
use crate::identity::{Caller, ConnInfo, Role, RoleMap, VerifyError};
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

/// Why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request came on no connection this broker served (never on its
    /// listeners).
    #[error("no mutual-TLS connection information")]
    NoConnection,
    /// No valid X.509-SVID: nobody worth recording (anyone can present a bad
    /// certificate), logged at the handshake.
    #[error("invalid X.509-SVID: {0}")]
    Unauthenticated(#[from] VerifyError),
    #[error(
        "the client's X.509-SVID has expired since this connection was made; reconnect with a fresh SVID"
    )]
    Expired,
    /// A valid identity without the role, refused and audited.
    #[error(transparent)]
    Role(BrokerError),
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Status {
        match r {
            Refused::Unauthenticated(e) => error::unauthenticated(&e),
            Refused::Role(e) => e.into(),
            other => Status::unauthenticated(other.to_string()),
        }
    }
}

impl Auth {
    /// The authenticated caller of a request to `method` (its full gRPC name), if
    /// it holds one of `allowed` roles.
    pub async fn caller<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
        allowed: &[Role],
    ) -> Result<Caller, Status> {
        Ok(self
            .check(req.extensions().get::<ConnInfo>(), method, allowed)
            .await?)
    }

    /// The caller a connection proved, if it holds one of `allowed` roles. A
    /// caller without such a role is refused and the refusal audited under
    /// `method` (a gRPC method's full name, or an OAuth endpoint's path).
    pub async fn check(
        &self,
        info: Option<&ConnInfo>,
        method: &'static str,
        allowed: &[Role],
    ) -> Result<Caller, Refused> {
        let info = info.ok_or(Refused::NoConnection)?;
        let caller = info.identity.as_ref().map_err(|e| e.clone())?;
        // The SVID was verified at the handshake; a long-lived connection must not
        // outlive it.
        if self.clock.now().unix_timestamp() >= caller.valid_until {
            return Err(Refused::Expired);
        }
        if allowed.iter().any(|r| self.roles.has(&caller.id, *r)) {
            Ok(caller.clone())
        } else {
            Err(Refused::Role(
                self.broker.refuse_role(caller, method, allowed).await,
            ))
        }
    }
}

//! Introspection (RFC 7662): whether a token is active, for a verifier.
use super::{Broker, BrokerError};
use crate::domain::TaskState;
use crate::token::Claims;
use uuid::Uuid;

impl Broker {
    /// `Some(claims)` when the token is active, `None` for anything else. A store
    /// that cannot answer is an error, never "active".
    pub async fn introspect(&self, token: &str) -> Result<Option<Claims>, BrokerError> {
        let now = self.now().unix_timestamp();
        let claims = match self.verify_signature(token, now, 0).await? {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(%why, "introspection: inactive token");
                return Ok(None);
            }
        };
        if claims.iss != self.issuer {
            return Ok(None);
        }
        let Ok(jti) = Uuid::parse_str(&claims.jti) else {
            return Ok(None);
        };
        match self.store.token_status(jti).await? {
            Some(s) if !s.revoked && s.task_state == TaskState::Active => Ok(Some(claims)),
            _ => Ok(None),
        }
    }
}

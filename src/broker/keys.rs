//! The broker's side of its keyring: registering its keys in the store, reading
//! every replica's published keys back, signing tokens, and checking that a
//! token presented as an argument is one this broker signed.
use super::{BadToken, Broker, BrokerError};
use crate::domain::{Delegation, Scope, Task, TokenRecord};
use crate::identity::Caller;
use crate::token::{Claims, Confirmation, KeyRecord, KeySet, Signed, TokenError};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

impl Broker {
    /// Extends the registration of the signing keys (the current one, and the next
    /// when one is prepared): each stays published for two heartbeats plus the
    /// longest token TTL, so every token it signed outlives neither the key's
    /// presence in the JWKS.
    pub async fn renew_key(&self) -> Result<(), BrokerError> {
        let not_after = self.now() + self.key_heartbeat * 2 + self.policy.longest_token_ttl();
        for record in self.keys.registrations(not_after) {
            self.store.register_key(&record).await?;
            self.keys.registered(&record);
        }
        Ok(())
    }

    /// Re-reads the published keys (every replica's) from the store.
    pub async fn refresh_keys(&self) -> Result<(), BrokerError> {
        self.keys.refresh(None, || self.live_keys()).await
    }

    async fn live_keys(&self) -> Result<Vec<KeyRecord>, BrokerError> {
        Ok(self.store.live_keys(self.now()).await?)
    }

    /// Every replica's live keys as last read from the store (at start, every key
    /// heartbeat, when another replica announces a new key, and when a token names
    /// an unknown kid).
    pub fn jwks(&self) -> Arc<crate::token::Jwks> {
        self.keys.jwks()
    }

    /// Signs a token for `holder` (bound to its certificate) in `task`, and the
    /// record to persist before it is returned. A delegated token carries its
    /// chain: `sub` stays the task's agent, `act` names the holder and every
    /// earlier delegate (RFC 8693).
    pub(super) fn sign(
        &self,
        holder: &Caller,
        task: &Task,
        scope: &Scope,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        delegation: Option<&Delegation>,
    ) -> Result<(String, TokenRecord), BrokerError> {
        let jti = Uuid::new_v4();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: task.agent.to_string(),
            aud: scope.audience.clone(),
            exp: expires_at.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: jti.to_string(),
            scope: scope.claim(),
            task: task.id.to_string(),
            wf: task.workflow.clone(),
            cnf: Confirmation {
                x5t_s256: holder.thumbprint.clone(),
            },
            act: delegation.map(|d| d.act.clone()),
            client_id: holder.id.to_string(),
            depth: delegation.map_or(0, |d| d.depth),
            ancestors: delegation.map_or_else(Vec::new, |d| {
                d.ancestors.iter().map(Uuid::to_string).collect()
            }),
        };
        let Signed { token, kid } = self.keys.sign(&claims)?;
        Ok((
            token,
            TokenRecord {
                jti,
                task: task.id,
                agent: holder.id.clone(),
                workflow: task.workflow.clone(),
                scope: scope.clone(),
                kid,
                cert_thumbprint: holder.thumbprint.clone(),
                issued_at: now,
                expires_at,
                revoked_at: None,
                parent: delegation.map(|d| d.parent_jti),
                depth: delegation.map_or(0, |d| d.depth),
            },
        ))
    }

    /// The claims of a token in the request field `field` that this broker
    /// signed; anything else is a bad token naming the field, saying what it was
    /// `expected` to be and why it is not.
    pub(super) async fn our_token(
        &self,
        (field, token): (&'static str, &str),
        now: i64,
        leeway: i64,
        expected: &'static str,
    ) -> Result<Claims, BrokerError> {
        let why = match self.verify_signature(token, now, leeway).await? {
            Ok(c) if c.iss == self.issuer => return Ok(c),
            Ok(_) => BadToken::NotOurs,
            Err(cause) => BadToken::Invalid { expected, cause },
        };
        Err(BrokerError::BadToken { field, why })
    }

    /// Verifies `token` against the published keys, reading them again first
    /// when it names a key this replica has not seen (another replica may have
    /// registered it since).
    pub(super) async fn verify_signature(
        &self,
        token: &str,
        now: i64,
        leeway: i64,
    ) -> Result<Result<Claims, TokenError>, BrokerError> {
        let kid = match KeySet::kid_of(token) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        if !self.keys.knows(&kid) {
            let asked = std::time::Instant::now();
            self.keys.refresh(Some(asked), || self.live_keys()).await?;
        }
        Ok(self.keys.verify(token, now, leeway))
    }
}

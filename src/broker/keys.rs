//! The broker's side of its keyring: registering its keys in the store, reading
//! every replica's published keys back, and checking that a token presented as
//! an argument is one this broker signed.
use super::*;
use crate::token::{KeyRecord, TokenError};

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

    /// The claims of a token in the request field `field` that this broker
    /// signed; anything else is INVALID_ARGUMENT naming the field, saying `invalid`
    /// and why.
    pub(super) async fn our_token(
        &self,
        (field, token): (&'static str, &str),
        now: i64,
        leeway: i64,
        invalid: &str,
    ) -> Result<Claims, BrokerError> {
        match self.verify_signature(token, now, leeway).await? {
            Ok(c) if c.iss == self.issuer => Ok(c),
            Ok(_) => Err(BrokerError::InvalidArgument {
                field,
                why: "was not issued by this broker".into(),
            }),
            Err(why) => Err(BrokerError::InvalidArgument {
                field,
                why: format!("{invalid}: {why}"),
            }),
        }
    }

    pub(super) async fn verify_signature(
        &self,
        token: &str,
        now: i64,
        leeway: i64,
    ) -> Result<Result<Claims, TokenError>, BrokerError> {
        let kid = match crate::token::KeySet::kid_of(token) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        if !self.keys.knows(&kid) {
            // Another replica may have registered a key since we last looked.
            let asked = std::time::Instant::now();
            self.keys.refresh(Some(asked), || self.live_keys()).await?;
        }
        Ok(self.keys.verify(token, now, leeway))
    }
}

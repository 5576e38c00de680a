//! The broker's signing keys, in slots, and every replica's published keys.
//!
//! The slots follow SPIRE's `ca/manager`: the *current* key signs; a *next* key is
//! prepared (and registered with the current one at each renewal, so every
//! verifier has it before it signs), then activated; the key it replaces retires:
//! no longer renewed, it stays published until its registration lapses, which
//! outlasts every token it signed. A key signs nothing that would outlive its
//! registration, so no token outlives its key's presence in the JWKS. Times come
//! from the caller (an injected clock); the store, which holds registrations, is
//! the caller's too: the keyring does no I/O of its own.
use super::{Claims, Jwks, KeyRecord, KeySet, SigningKey, TokenError};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Why the keyring cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a signing key")]
    Generate,
    /// The token would outlive the registration of the key that signs it: the
    /// registration could not be renewed (the store is unreachable).
    #[error("the signing key's registration has lapsed")]
    Lapsed,
    /// Activation needs a next key whose registration the store confirmed.
    #[error("no registered next signing key to activate")]
    NoNext,
    #[error("encoding claims: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Unknown kids refresh the published keys at most once per this interval.
const REFRESH_MIN: Duration = Duration::from_millis(250);

/// A token signed by the current key, and that key's id.
pub struct Signed {
    pub token: String,
    pub kid: String,
}

/// One key in a slot, with how long its registration is known to last.
struct Slot {
    key: SigningKey,
    created_at: OffsetDateTime,
    /// Unix seconds until which the store holds the key's registration;
    /// `i64::MIN` until it first confirms one.
    registered_until: AtomicI64,
}

impl Slot {
    fn generate(now: OffsetDateTime) -> Result<Arc<Slot>, KeyError> {
        Ok(Arc::new(Slot {
            key: SigningKey::generate().map_err(|_| KeyError::Generate)?,
            created_at: now,
            registered_until: AtomicI64::new(i64::MIN),
        }))
    }

    fn record(&self, not_after: OffsetDateTime) -> KeyRecord {
        KeyRecord {
            kid: self.key.kid().to_string(),
            public_key: self.key.public_key().to_vec(),
            created_at: self.created_at,
            not_after,
        }
    }

    fn registered_until(&self) -> i64 {
        self.registered_until.load(Ordering::SeqCst)
    }
}

struct Slots {
    current: Arc<Slot>,
    next: Option<Arc<Slot>>,
}

/// This process's signing keys and its view of every published key.
pub struct Keyring {
    slots: RwLock<Slots>,
    published: RwLock<Arc<KeySet>>,
    /// The same keys as the JWKS document, served from memory (never a store
    /// query per request: anyone may ask for it).
    jwks: RwLock<Arc<Jwks>>,
    /// When `published` was last read. Unknown kids refresh it at most once per
    /// [`REFRESH_MIN`] (one refresh at a time; a request waits for a refresh
    /// newer than itself), so random kids cannot flood the store.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl Keyring {
    /// A keyring whose current key is generated now; nothing is published yet.
    pub fn generate(now: OffsetDateTime) -> Result<Self, KeyError> {
        Ok(Keyring {
            slots: RwLock::new(Slots {
                current: Slot::generate(now)?,
                next: None,
            }),
            published: RwLock::new(Arc::new(KeySet::default())),
            jwks: RwLock::new(Arc::new(Jwks::default())),
            refreshed: tokio::sync::Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Slot> {
        Arc::clone(&self.slots.read().unwrap_or_else(|p| p.into_inner()).current)
    }

    /// The id of the key that signs.
    pub fn kid(&self) -> String {
        self.current().key.kid().to_string()
    }

    /// The id of the prepared next key, if there is one.
    pub fn next_kid(&self) -> Option<String> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.next.as_ref().map(|s| s.key.kid().to_string())
    }

    /// The registrations to write, each valid until `not_after`: the current key
    /// and the next one, if prepared. A retired key is no longer among them.
    pub fn registrations(&self, not_after: OffsetDateTime) -> Vec<KeyRecord> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(&slots.current)
            .chain(&slots.next)
            .map(|s| s.record(not_after))
            .collect()
    }

    /// Records that the store holds `record`: its key may sign tokens that expire
    /// up to its `not_after`. Registrations only ever extend.
    pub fn registered(&self, record: &KeyRecord) {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = std::iter::once(&slots.current)
            .chain(&slots.next)
            .find(|s| s.key.kid() == record.kid)
        {
            slot.registered_until
                .fetch_max(record.not_after.unix_timestamp(), Ordering::SeqCst);
        }
    }

    /// Signs `claims` with the current key, unless the token would outlive the
    /// key's registration (it might drop out of the JWKS before it expires).
    pub fn sign(&self, claims: &Claims) -> Result<Signed, KeyError> {
        let slot = self.current();
        if claims.exp > slot.registered_until() {
            return Err(KeyError::Lapsed);
        }
        Ok(Signed {
            token: slot.key.sign(claims)?,
            kid: slot.key.kid().to_string(),
        })
    }

    /// Prepares the next key (generated at `now`), unless one is prepared
    /// already; returns its id. It signs nothing until activated, and is
    /// registered with the current key from the next renewal on.
    pub fn prepare(&self, now: OffsetDateTime) -> Result<String, KeyError> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if slots.next.is_none() {
            slots.next = Some(Slot::generate(now)?);
        }
        Ok(slots
            .next
            .as_ref()
            .map_or_else(String::new, |n| n.key.kid().to_string()))
    }

    /// Makes the next key current, once its registration is confirmed; the key
    /// it replaces retires (it is no longer renewed, and stays published until
    /// its registration lapses). Returns the new current kid.
    pub fn activate(&self) -> Result<String, KeyError> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        match slots.next.take() {
            Some(next) if next.registered_until() > i64::MIN => {
                let kid = next.key.kid().to_string();
                slots.current = next;
                Ok(kid)
            }
            unregistered => {
                slots.next = unregistered;
                Err(KeyError::NoNext)
            }
        }
    }

    /// Replaces the published keys (every replica's) with `live`.
    pub fn publish(&self, live: &[KeyRecord]) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(KeySet::from_records(live));
        *self.jwks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Jwks::from_records(live));
    }

    /// Whether `kid` is among the published keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(kid)
    }

    /// Verifies `token` against the published keys (`now` in Unix seconds,
    /// `leeway` seconds either side).
    pub fn verify(&self, token: &str, now: i64, leeway: i64) -> Result<Claims, TokenError> {
        let set = Arc::clone(&self.published.read().unwrap_or_else(|p| p.into_inner()));
        set.verify(token, now, leeway)
    }

    /// The published keys as a JWKS document.
    pub fn jwks(&self) -> Arc<Jwks> {
        Arc::clone(&self.jwks.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publishes what `load` reads. With `asked` (when a request met an unknown
    /// kid), a refresh that started after `asked` is enough, and refreshes are
    /// spaced by [`REFRESH_MIN`]; without, it reads at once.
    pub async fn refresh<E, F>(
        &self,
        asked: Option<Instant>,
        load: impl FnOnce() -> F,
    ) -> Result<(), E>
    where
        F: Future<Output = Result<Vec<KeyRecord>, E>>,
    {
        let mut last = self.refreshed.lock().await;
        if let (Some(asked), Some(t)) = (asked, *last) {
            if t >= asked {
                return Ok(()); // someone refreshed after this request arrived
            }
            tokio::time::sleep(REFRESH_MIN.saturating_sub(t.elapsed())).await;
        }
        let started = Instant::now();
        self.publish(&load().await?);
        *last = Some(started);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Confirmation;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "https://mayfly.test".into(),
            sub: "spiffe://example.org/agent".into(),
            aud: "crm-api".into(),
            exp,
            iat: exp - 60,
            nbf: exp - 60,
            jti: "00000000-0000-0000-0000-000000000001".into(),
            scope: "read:customers/*".into(),
            task: "00000000-0000-0000-0000-000000000002".into(),
            wf: "support".into(),
            cnf: Confirmation {
                x5t_s256: "thumb".into(),
            },
            act: None,
            client_id: "spiffe://example.org/agent".into(),
            depth: 0,
            ancestors: vec![],
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    /// Registers every key of the ring until `until`, as a renewal does.
    fn renew(ring: &Keyring, until: i64) -> Vec<KeyRecord> {
        let records = ring.registrations(at(until));
        for r in &records {
            ring.registered(r);
        }
        records
    }

    #[test]
    fn a_key_signs_nothing_before_its_registration_is_confirmed() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        assert!(matches!(ring.sign(&claims(1_100)), Err(KeyError::Lapsed)));
        renew(&ring, 2_000);
        let signed = ring.sign(&claims(1_100)).unwrap();
        assert_eq!(signed.kid, ring.kid());
    }

    #[test]
    fn a_token_may_not_outlive_the_registration_of_its_key() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        renew(&ring, 2_000);
        assert!(ring.sign(&claims(2_000)).is_ok());
        assert!(matches!(ring.sign(&claims(2_001)), Err(KeyError::Lapsed)));
    }

    #[test]
    fn a_registration_only_ever_extends() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        renew(&ring, 2_000);
        renew(&ring, 1_500);
        assert!(ring.sign(&claims(2_000)).is_ok());
    }

    #[test]
    fn a_prepared_key_is_registered_with_the_current_one_but_does_not_sign() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        let current = ring.kid();
        let next = ring.prepare(at(1_010)).unwrap();
        assert_ne!(next, current);
        assert_eq!(ring.prepare(at(1_020)).unwrap(), next, "prepared once");
        let kids: Vec<String> = renew(&ring, 2_000).into_iter().map(|r| r.kid).collect();
        assert_eq!(kids, [current.clone(), next.clone()]);
        assert_eq!(ring.sign(&claims(1_100)).unwrap().kid, current);
        assert_eq!(ring.next_kid(), Some(next));
    }

    #[test]
    fn activation_needs_a_registered_next_key_and_retires_the_current_one() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        renew(&ring, 2_000);
        let old = ring.kid();
        assert!(matches!(ring.activate(), Err(KeyError::NoNext)));
        let next = ring.prepare(at(1_010)).unwrap();
        assert!(
            matches!(ring.activate(), Err(KeyError::NoNext)),
            "not registered yet"
        );
        assert_eq!(
            ring.next_kid().as_deref(),
            Some(next.as_str()),
            "still prepared"
        );
        renew(&ring, 2_000);
        assert_eq!(ring.activate().unwrap(), next);
        assert_eq!(ring.kid(), next);
        assert_eq!(ring.next_kid(), None);
        assert_eq!(ring.sign(&claims(1_100)).unwrap().kid, next);
        let kids: Vec<String> = ring
            .registrations(at(3_000))
            .into_iter()
            .map(|r| r.kid)
            .collect();
        assert_eq!(kids, [next], "the retired key {old} is no longer renewed");
    }

    #[test]
    fn published_keys_verify_what_the_ring_signed_and_serve_as_jwks() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        let records = renew(&ring, 2_000);
        let signed = ring.sign(&claims(1_100)).unwrap();
        assert!(!ring.knows(&signed.kid));
        assert!(matches!(
            ring.verify(&signed.token, 1_050, 0),
            Err(TokenError::UnknownKey(_))
        ));
        ring.publish(&records);
        assert!(ring.knows(&signed.kid));
        assert_eq!(ring.verify(&signed.token, 1_050, 0).unwrap().exp, 1_100);
        assert_eq!(ring.jwks().keys[0].kid, signed.kid);
    }

    #[tokio::test]
    async fn a_refresh_for_an_unknown_kid_is_skipped_when_a_newer_one_ran() {
        let ring = Keyring::generate(at(1_000)).unwrap();
        let asked = Instant::now();
        let records = ring.registrations(at(2_000));
        ring.refresh(None, || async { Ok::<_, ()>(records.clone()) })
            .await
            .unwrap();
        assert!(ring.knows(&ring.kid()));
        // Newer than `asked`: the load is not called again.
        ring.refresh(Some(asked), || async {
            Err::<Vec<KeyRecord>, _>("read again")
        })
        .await
        .unwrap();
        assert!(ring.knows(&ring.kid()));
    }
}

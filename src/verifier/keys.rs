//! The broker's public keys: parsed from its JWKS, cached, refreshed on an unknown
//! `kid` at most once per interval, one refresh shared by every waiting check.
use crate::token::{KeyRecord, KeySet};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::time::Instant;

/// Why a JWKS document could not be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JwksError {
    #[error("the JWKS is not a JSON key set: {0}")]
    Json(String),
}

#[derive(Deserialize)]
struct Set {
    keys: Vec<Key>,
}

/// One JWK, leniently: `alg` and `use` are optional in RFC 7517.
#[derive(Deserialize)]
struct Key {
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
}

/// Builds a key set from a JWKS (RFC 7517) document. Only Ed25519 signing keys
/// with a `kid` are kept; others are skipped (and logged), so one odd key does not
/// make every token fail. The JWKS carries no expiry: a key is trusted until a
/// refresh no longer lists it.
pub fn key_set_from_jwks(json: &str) -> Result<KeySet, JwksError> {
    let set: Set = serde_json::from_str(json).map_err(|e| JwksError::Json(e.to_string()))?;
    let not_after = PrimitiveDateTime::MAX.assume_utc();
    let records: Vec<KeyRecord> = set
        .keys
        .into_iter()
        .filter_map(|k| {
            let usable = k.kty == "OKP"
                && k.crv == "Ed25519"
                && !k.kid.is_empty()
                && k.alg.as_deref().is_none_or(|a| a == "EdDSA")
                && k.use_.as_deref().is_none_or(|u| u == "sig");
            let public_key = B64.decode(&k.x).ok().filter(|_| usable);
            if public_key.is_none() {
                tracing::warn!(kid = %k.kid, kty = %k.kty, "JWKS key is not an Ed25519 signing key; ignored");
            }
            Some(KeyRecord {
                kid: k.kid,
                public_key: public_key?,
                created_at: OffsetDateTime::UNIX_EPOCH,
                not_after,
            })
        })
        .collect();
    // from_records drops (and logs) keys of the wrong length.
    Ok(KeySet::from_records(&records))
}

/// The cached key set and the refresh gate.
pub(super) struct KeyCache {
    set: RwLock<Arc<KeySet>>,
    /// When the last refresh started; `None` before the first one. Holding the
    /// lock is what makes a refresh single-flight.
    last: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl KeyCache {
    pub fn new(set: KeySet, min_interval: Duration) -> Self {
        KeyCache {
            set: RwLock::new(Arc::new(set)),
            // The fetch at start does not count: a kid unknown right after it (a
            // replica that started meanwhile) may refresh at once.
            last: tokio::sync::Mutex::new(None),
            min_interval,
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.set.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn replace(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// For a token signed by `kid`, which the cache does not know: refreshes the
    /// keys unless a refresh ran less than the minimum interval ago. Concurrent
    /// callers wait for one refresh and share its result. Returns the keys to
    /// verify with, if they now know `kid`.
    pub async fn refresh_for<F, Fut, E>(&self, kid: &str, fetch: F) -> Option<Arc<KeySet>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let mut last = self.last.lock().await;
        // Someone else's refresh may have brought it while we waited.
        let known = |set: Arc<KeySet>| set.contains(kid).then_some(set);
        if let Some(set) = known(self.current()) {
            return Some(set);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        self.fetch_and_replace(fetch).await;
        known(self.current())
    }

    /// A scheduled refresh, so that retired keys leave the cache.
    pub async fn refresh<F, Fut, E>(&self, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let mut last = self.last.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_replace(fetch).await;
    }

    async fn fetch_and_replace<F, Fut, E>(&self, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        // On any failure the cached keys stay: they are still the broker's.
        match fetch().await {
            Ok(json) => match key_set_from_jwks(&json) {
                Ok(set) => self.replace(set),
                Err(error) => tracing::warn!(%error, "JWKS refresh: keeping the cached keys"),
            },
            Err(error) => tracing::warn!(%error, "JWKS refresh failed: keeping the cached keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Jwk, Jwks, SigningKey};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn jwks(keys: &[&SigningKey]) -> String {
        let set = Jwks {
            keys: keys
                .iter()
                .map(|k| Jwk::from_public(k.public_key(), k.kid().into()))
                .collect(),
        };
        serde_json::to_string(&set).unwrap()
    }

    #[test]
    fn only_ed25519_signing_keys_with_a_kid_are_taken_from_a_jwks() {
        let k = SigningKey::generate().unwrap();
        let x = B64.encode(k.public_key());
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ok"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": x},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ", "kid": "short"},
            {"kty": "OKP", "crv": "Ed25519", "x": "%%%", "kid": "garbage"},
        ]});
        let set = key_set_from_jwks(&doc.to_string()).unwrap();
        assert!(set.contains("ok"));
        for kid in ["enc", "rsa", "short", "garbage", ""] {
            assert!(!set.contains(kid), "{kid}");
        }
        assert!(key_set_from_jwks("{\"keys\": 1}").is_err());
        assert!(key_set_from_jwks("not json").is_err());
    }

    #[tokio::test]
    async fn concurrent_checks_share_one_refresh_and_refreshes_are_rate_limited() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let cache = Arc::new(KeyCache::new(
            key_set_from_jwks(&jwks(&[&old])).unwrap(),
            Duration::from_millis(200),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let doc = jwks(&[&old, &new]);
        let fetch = || {
            let fetches = fetches.clone();
            let doc = doc.clone();
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(doc)
            }
        };
        let checks: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                let f = fetch();
                let kid = new.kid().to_string();
                tokio::spawn(async move { cache.refresh_for(&kid, f).await.is_some() })
            })
            .collect();
        for c in checks {
            assert!(c.await.unwrap());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one shared refresh");

        // An unknown kid right after: no second fetch within the interval.
        assert!(cache.refresh_for("nope", fetch()).await.is_none());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.refresh_for("nope", fetch()).await.is_none());
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_cached_keys() {
        let k = SigningKey::generate().unwrap();
        let cache = KeyCache::new(key_set_from_jwks(&jwks(&[&k])).unwrap(), Duration::ZERO);
        cache
            .refresh(|| async { Err::<String, _>("broker down") })
            .await;
        assert!(cache.current().contains(k.kid()));
        cache
            .refresh(|| async { Ok::<_, String>("[]".into()) })
            .await;
        assert!(cache.current().contains(k.kid()));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A JWK member: absent, one of the values that matter, or another string.
    fn member(values: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            1 => Just(None),
            4 => prop::sample::select(values).prop_map(|v| Some(json!(v))),
            1 => matching("[A-Za-z0-9]{0,8}").prop_map(|v| Some(json!(v))),
            // A member of the wrong type makes the document invalid.
            1 => prop_oneof![Just(json!(1)), Just(json!(null)), Just(json!([])), Just(json!({}))]
                .prop_map(Some),
        ]
    }

    /// The `x` of a JWK: a 32-byte key, a key of another length, or not base64url.
    fn x() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 32).prop_map(|b| Some(json!(B64.encode(b)))),
            1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| Some(json!(B64.encode(b)))),
            1 => matching("[A-Za-z0-9+/=%_-]{0,48}").prop_map(|s| Some(json!(s))),
            1 => Just(None),
            1 => Just(Some(json!(32))),
        ]
    }

    fn jwk() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        (
            member(&["OKP", "EC", "RSA"]),
            member(&["Ed25519", "X25519", "P-256"]),
            x(),
            member(&["k1", "k2", "k3", ""]),
            member(&["EdDSA", "ES256", "RS256"]),
            member(&["sig", "enc"]),
        )
            .prop_map(|(kty, crv, x, kid, alg, use_)| {
                let mut m = serde_json::Map::new();
                for (name, v) in [
                    ("kty", kty),
                    ("crv", crv),
                    ("x", x),
                    ("kid", kid),
                    ("alg", alg),
                    ("use", use_),
                ] {
                    if let Some(v) = v {
                        m.insert(name.into(), v);
                    }
                }
                m
            })
    }

    /// What RFC 7517 and Mayfly's rules say of one JWK: `Err` when the document
    /// is not a key set, else the kid it contributes, if any.
    fn usable(k: &serde_json::Map<String, Value>) -> Result<Option<String>, ()> {
        let s = |name: &str| -> Result<Option<&str>, ()> {
            match k.get(name) {
                None => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.as_str())),
                // `alg` and `use` are Options: null is absent.
                Some(Value::Null) if name == "alg" || name == "use" => Ok(None),
                Some(_) => Err(()),
            }
        };
        let kty = s("kty")?.ok_or(())?;
        let (crv, x, kid) = (s("crv")?, s("x")?, s("kid")?.unwrap_or(""));
        let (alg, use_) = (s("alg")?, s("use")?);
        let key_len = x.and_then(|x| B64.decode(x).ok()).map(|b| b.len());
        let ok = kty == "OKP"
            && crv == Some("Ed25519")
            && !kid.is_empty()
            && alg.is_none_or(|a| a == "EdDSA")
            && use_.is_none_or(|u| u == "sig")
            && key_len == Some(32);
        Ok(ok.then(|| kid.to_string()))
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_text_is_a_key_set_or_an_error_without_panicking(s in any_text()) {
            let _ = key_set_from_jwks(&s);
        }

        #[test]
        fn exactly_the_usable_ed25519_signing_keys_are_kept(
            keys in prop::collection::vec(jwk(), 0..5),
        ) {
            let doc = json!({ "keys": keys }).to_string();
            let got = key_set_from_jwks(&doc);
            let want: Result<Vec<Option<String>>, ()> = keys.iter().map(usable).collect();
            match want {
                Err(()) => prop_assert!(got.is_err(), "{doc} was accepted"),
                Ok(kids) => {
                    let set = got.map_err(|e| TestCaseError::fail(format!("{doc}: {e}")))?;
                    for kid in ["k1", "k2", "k3", ""] {
                        prop_assert_eq!(
                            set.contains(kid),
                            kids.iter().flatten().any(|k| k == kid),
                            "{} in {}", kid, doc
                        );
                    }
                }
            }
        }
    }
}

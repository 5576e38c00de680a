//! Signing keys every replica publishes, and the liveness check.
use super::fixtures::*;
use mayfly::store::*;
use mayfly::token::KeyRecord;

fn key(kid: &str, byte: u8, created: i64, until: i64) -> KeyRecord {
    KeyRecord {
        kid: kid.into(),
        public_key: vec![byte; 32],
        created_at: at(created),
        not_after: at(until),
    }
}

async fn live<S: Store>(s: &S, secs: i64) -> Vec<KeyRecord> {
    let mut keys = s.live_keys(at(secs)).await.unwrap();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys
}

pub async fn a_registered_key_is_live_until_its_not_after<S: Store>(s: &S) {
    let current = key("mayfly-a", 1, 0, 3600);
    let next = key("mayfly-b", 2, 1800, 7200);
    s.register_key(&current).await.unwrap();
    s.register_key(&next).await.unwrap();

    assert_eq!(live(s, 100).await, vec![current.clone(), next.clone()]);
    assert_eq!(live(s, 3599).await, vec![current, next.clone()]);
    assert_eq!(live(s, 3600).await, vec![next]);
    assert_eq!(live(s, 7200).await, vec![]);
}

pub async fn registering_a_key_again_extends_it_and_never_shortens_it<S: Store>(s: &S) {
    s.register_key(&key("mayfly-a", 1, 0, 3600)).await.unwrap();

    s.register_key(&key("mayfly-a", 1, 0, 7200)).await.unwrap();
    assert_eq!(live(s, 5000).await, vec![key("mayfly-a", 1, 0, 7200)]);

    // A replica that registers late with an older deadline does not cut it short.
    s.register_key(&key("mayfly-a", 1, 0, 3600)).await.unwrap();
    assert_eq!(live(s, 5000).await, vec![key("mayfly-a", 1, 0, 7200)]);
}

pub async fn a_different_public_key_never_replaces_a_registered_kid<S: Store>(s: &S) {
    let genuine = key("mayfly-a", 1, 0, 3600);
    s.register_key(&genuine).await.unwrap();

    // Whether the store refuses it or ignores it, the genuine key stays.
    let _ = s.register_key(&key("mayfly-a", 0xee, 10, 7200)).await;
    assert_eq!(live(s, 100).await, vec![genuine]);
    assert_eq!(live(s, 3600).await, vec![], "its deadline was extended");
}

pub async fn a_reachable_store_answers_ping<S: Store>(s: &S) {
    s.ping().await.unwrap();
}

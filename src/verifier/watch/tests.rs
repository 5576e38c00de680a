//! Applying stream messages to the revocation set: events in order, heartbeats,
//! cursors ahead, resyncs.
use super::*;
use crate::token::{Claims, Confirmation};
use pb::revocation_target::Target;

fn event(sequence: u64, target: Target, at: i64) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        kind: Some(Kind::Event(pb::RevocationEvent {
            sequence,
            target: Some(pb::RevocationTarget {
                target: Some(target),
            }),
            at: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
            ..Default::default()
        })),
    }
}

fn heartbeat(sequence: u64) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        kind: Some(Kind::Heartbeat(pb::Heartbeat { sequence, at: None })),
    }
}

fn claims(jti: &str, task: &str) -> Claims {
    Claims {
        iss: "i".into(),
        sub: "spiffe://td/agent/a".into(),
        aud: "crm-api".into(),
        exp: 1300,
        iat: 1000,
        nbf: 1000,
        jti: jti.into(),
        scope: "read:x".into(),
        task: task.into(),
        wf: "w".into(),
        cnf: Confirmation {
            x5t_s256: "x".into(),
        },
        act: None,
        client_id: "a".into(),
        depth: 0,
        ancestors: vec![],
    }
}

fn shared() -> Shared {
    Shared::new(RevocationSet::new(3600, 5, 2))
}

fn revoked(s: &Shared, c: &Claims) -> Option<u64> {
    s.revocations.read().unwrap().revoked(c)
}

#[test]
fn events_apply_once_in_order_and_move_the_cursor() {
    let s = shared();
    s.handle(event(1, Target::Token("j1".into()), 1000), 1000)
        .unwrap();
    s.handle(event(2, Target::Task("t2".into()), 1000), 1000)
        .unwrap();
    assert_eq!(s.cursor(), 2);
    // A replay after a reconnect changes nothing.
    s.handle(event(1, Target::Task("t9".into()), 1000), 1000)
        .unwrap();
    assert_eq!(s.cursor(), 2);
    assert_eq!(revoked(&s, &claims("j1", "t")), Some(1));
    assert_eq!(revoked(&s, &claims("j", "t2")), Some(2));
    assert_eq!(revoked(&s, &claims("j", "t9")), None);
}

#[test]
fn only_a_heartbeat_makes_the_verifier_fresh_and_one_ahead_of_the_cursor_is_refused() {
    let s = shared();
    let bound = Duration::from_secs(10);
    assert!(!s.is_fresh(bound), "never heard");
    s.handle(event(1, Target::All(true), 1000), 1000).unwrap();
    assert!(!s.is_fresh(bound), "replaying, not caught up yet");
    assert!(s.handle(heartbeat(3), 1000).is_err(), "events 2..3 missing");
    assert!(!s.is_fresh(bound));
    s.handle(heartbeat(1), 1000).unwrap();
    assert!(s.is_synced() && s.is_fresh(bound));
}

#[test]
fn a_heartbeat_below_the_cursor_asks_for_a_resync_and_one_above_for_a_reopen() {
    let s = shared();
    s.handle(event(1, Target::All(true), 1000), 1000).unwrap();
    s.handle(event(2, Target::All(true), 1000), 1000).unwrap();
    assert!(matches!(
        s.handle(heartbeat(1), 1000),
        Err(OutOfStep::Resync(_))
    ));
    assert!(matches!(
        s.handle(heartbeat(3), 1000),
        Err(OutOfStep::Reopen(_))
    ));
    assert!(!s.is_synced());
}

#[test]
fn a_resync_is_stale_until_the_replayed_history_is_caught_up_and_forgets_no_entry() {
    let s = shared();
    let bound = Duration::from_secs(10);
    s.handle(event(1, Target::Token("j1".into()), 1000), 1000)
        .unwrap();
    s.handle(event(2, Target::Task("t2".into()), 1001), 1001)
        .unwrap();
    s.handle(heartbeat(2), 1001).unwrap();
    assert!(s.is_fresh(bound));
    assert_eq!(s.cursor(), 2);
    assert_eq!(s.cursor_at().map(|t| t.seconds), Some(1001));

    // The store was restored to event 1; event 2 is now another one.
    s.resync();
    assert!(!s.is_fresh(bound) && !s.is_synced());
    assert_eq!((s.cursor(), s.cursor_at()), (0, None));
    s.handle(event(1, Target::Token("j1".into()), 1000), 1002)
        .unwrap();
    s.handle(event(2, Target::Task("t9".into()), 1002), 1002)
        .unwrap();
    assert!(!s.is_fresh(bound), "replayed, not caught up yet");
    s.handle(heartbeat(2), 1002).unwrap();
    assert!(s.is_fresh(bound));
    // The event under the reused number is applied, not taken for a replay;
    // the entry of the event the restore lost stays in force.
    assert_eq!(revoked(&s, &claims("j", "t9")), Some(2));
    assert_eq!(revoked(&s, &claims("j", "t2")), Some(2));
    assert_eq!(revoked(&s, &claims("j1", "t")), Some(1));
    assert_eq!(s.cursor_at().map(|t| t.seconds), Some(1002));
}

#[tokio::test]
async fn silence_past_the_staleness_bound_makes_the_verifier_stale() {
    let s = shared();
    s.handle(heartbeat(0), 1000).unwrap();
    let bound = Duration::from_millis(100);
    assert!(s.is_fresh(bound));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!s.is_fresh(bound));
    s.handle(heartbeat(0), 1000).unwrap();
    assert!(s.is_fresh(bound));
}

#[test]
fn an_event_without_a_known_target_revokes_everything_issued_before_it() {
    let s = shared();
    let mut msg = event(1, Target::All(true), 1100);
    if let Some(Kind::Event(ev)) = &mut msg.kind {
        ev.target = None;
    }
    s.handle(msg, 1100).unwrap();
    assert_eq!(revoked(&s, &claims("j", "t")), Some(1));
}

#[test]
fn backoff_jitter_stays_between_half_and_all_of_the_delay() {
    for _ in 0..100 {
        let d = jitter(Duration::from_millis(200));
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
    }
}

//! Archiving the audit trail: the anchor moves only forward to a sealed event
//! with its hash, recording the archive in the chain; only events at or below
//! it are removed, in batches; the stored chain then verifies from the anchor;
//! where an archive of the events before a time ends. (That the databases
//! themselves refuse any other deletion is in tests/api/audit_archive_db.rs:
//! it needs their rows.)
use super::fixtures::*;
use mayfly::domain::audit::chain::{Checkpoint, Sealed, Verifier, to_hex};
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::store::*;
use serde_json::json;

/// An event the broker files on its own, at `secs`.
fn event(secs: i64) -> AuditEvent {
    AuditEvent::new(at(secs), ADMIN, Action::CallDenied)
        .reason("the caller holds none of the roles the call requires")
        .detail(json!({"n": secs}))
}

/// `n` events, one a second from `from` on, all sealed; the stored chain.
async fn sealed_chain<S: Store>(s: &S, from: i64, n: i64) -> Vec<Sealed> {
    for secs in from..from + n {
        s.append_audit(&event(secs)).await.unwrap();
    }
    stored(s).await
}

/// Seals what arrived unsealed (nothing here: appends seal their own); the
/// chain as stored, from its anchor.
async fn stored<S: Store>(s: &S) -> Vec<Sealed> {
    while s.seal_audit(1000).await.unwrap() > 0 {}
    let head = s.audit_head().await.unwrap();
    s.audit_chain(0, head.seq, 1000).await.unwrap()
}

fn point(e: &Sealed) -> Checkpoint {
    Checkpoint::new(e.seq, e.hash.clone())
}

/// The audit event of an archive through `through` from `from`.
fn archived(from: &Checkpoint, through: &Checkpoint, secs: i64) -> AuditEvent {
    AuditEvent::new(at(secs), ADMIN, Action::AuditArchived).detail(json!({
        "through_seq": through.seq,
        "through_hash": to_hex(&through.hash),
        "previous_seq": from.seq,
        "previous_hash": to_hex(&from.hash),
        "events": through.seq.saturating_sub(from.seq),
    }))
}

async fn anchor<S: Store>(s: &S, from: &Checkpoint, through: &Checkpoint) -> Anchoring {
    s.anchor_audit(from, through, &archived(from, through, 100))
        .await
        .unwrap()
}

/// Verifies the stored chain from its anchor to its head, as `mayfly audit
/// verify` does; the positions verified.
async fn verify_from_anchor<S: Store>(s: &S) -> Vec<u64> {
    let head = s.audit_head().await.unwrap();
    let chain = s
        .audit_chain(head.anchor.seq, head.seq, 1000)
        .await
        .unwrap();
    let mut v = Verifier::after(head.anchor.clone());
    for e in &chain {
        v.push(e).unwrap_or_else(|broken| panic!("{broken}"));
    }
    v.finish(head.seq, &head.hash)
        .unwrap_or_else(|broken| panic!("{broken}"));
    chain.iter().map(|e| e.seq).collect()
}

async fn drain<S: Store>(s: &S, batch: u32) -> Vec<u64> {
    let mut removed = vec![];
    loop {
        let n = s.remove_archived_audit(batch).await.unwrap();
        removed.push(n);
        if n < u64::from(batch) {
            return removed;
        }
    }
}

pub async fn the_anchor_moves_only_forward_to_a_sealed_event_with_its_hash<S: Store>(s: &S) {
    let chain = sealed_chain(s, 0, 3).await;
    let genesis = Checkpoint::genesis();
    let head = s.audit_head().await.unwrap();
    assert_eq!((head.seq, head.anchor.clone()), (3, genesis.clone()));

    // Past the head (no event there yet), a hash that differs, an anchor read
    // before another archive moved it: nothing moves.
    let next = Checkpoint::new(4, chain[2].hash.clone());
    assert_eq!(
        anchor(s, &genesis, &next).await,
        Anchoring::NotSealed { head: 3 }
    );
    let wrong = Checkpoint::new(2, chain[0].hash.clone());
    assert_eq!(anchor(s, &genesis, &wrong).await, Anchoring::HashDiffers);
    let past = Checkpoint::new(99, chain[2].hash.clone());
    assert_eq!(
        anchor(s, &genesis, &past).await,
        Anchoring::NotSealed { head: 3 }
    );
    for secs in 3..5 {
        s.append_audit(&event(secs)).await.unwrap();
    }
    assert_eq!(s.audit_head().await.unwrap().anchor, genesis);

    let two = point(&chain[1]);
    assert_eq!(anchor(s, &genesis, &two).await, Anchoring::Moved);
    assert_eq!(s.audit_head().await.unwrap().anchor, two);

    // Backward, or where it stands: archived already; from where it stood
    // before: moved meanwhile.
    for back in [point(&chain[0]), two.clone(), genesis.clone()] {
        assert_eq!(
            anchor(s, &two, &back).await,
            Anchoring::Archived(two.clone())
        );
    }
    assert_eq!(
        anchor(s, &genesis, &point(&chain[2])).await,
        Anchoring::AnchorMoved(two.clone())
    );
    assert_eq!(s.audit_head().await.unwrap().anchor, two);

    // The archive itself is in the chain (once: refusals record nothing), after
    // the events committed before it.
    let events = all_events(s).await;
    assert_eq!(count(&events, Action::AuditArchived), 1);
    assert_recorded(&events, &archived(&genesis, &two, 100));
    assert_eq!(events.last().unwrap().action, Action::AuditArchived);
    assert_eq!(verify_from_anchor(s).await, [3, 4, 5, 6]);
}

pub async fn only_events_at_or_below_the_anchor_are_removed_in_batches<S: Store>(s: &S) {
    let chain = sealed_chain(s, 0, 7).await;
    assert_eq!(drain(s, 10).await, [0], "nothing archived, nothing removed");

    let five = point(&chain[4]);
    assert_eq!(
        anchor(s, &Checkpoint::genesis(), &five).await,
        Anchoring::Moved
    );
    // Anchored, not yet removed: the stored chain starts after the anchor, and
    // the archive's own event (8) is in it from its commit.
    assert_eq!(verify_from_anchor(s).await, [6, 7, 8]);
    assert_eq!(drain(s, 2).await, [2, 2, 1]);
    assert_eq!(drain(s, 2).await, [0]);

    let left = stored(s).await;
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7, 8]);
    assert_eq!(left[..2], chain[5..]);
    let head = s.audit_head().await.unwrap();
    assert_eq!((head.seq, head.max_seq, head.anchor), (8, 8, five));
    assert_eq!(verify_from_anchor(s).await, [6, 7, 8]);
    // Queries see what is stored.
    let found = sealed(s).await;
    assert_eq!(
        found.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [6, 7, 8]
    );
}

pub async fn an_anchor_at_the_head_leaves_only_the_archive_events<S: Store>(s: &S) {
    let chain = sealed_chain(s, 0, 3).await;
    let three = point(&chain[2]);
    assert_eq!(
        anchor(s, &Checkpoint::genesis(), &three).await,
        Anchoring::Moved
    );
    assert_eq!(drain(s, 1000).await, [3]);
    // The archive's own event, sealed as it committed, is all that is stored.
    let head = s.audit_head().await.unwrap();
    assert_eq!((head.seq, head.max_seq, head.anchor), (4, 4, three.clone()));
    assert_eq!(verify_from_anchor(s).await, [4]);

    // A second archive continues from the first.
    let next = stored(s).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].prev_hash, three.hash);
    let four = point(&next[0]);
    assert_eq!(anchor(s, &three, &four).await, Anchoring::Moved);
    assert_eq!(drain(s, 1000).await, [1]);
    assert_eq!(stored(s).await.len(), 1);
    assert_eq!(verify_from_anchor(s).await, [5]);
    let events = all_events(s).await;
    assert_recorded(&events, &archived(&three, &four, 100));
}

pub async fn audit_dated_before_ends_where_the_first_event_at_or_after_the_time_is<S: Store>(
    s: &S,
) {
    // Positions 1..=6 dated 1, 2, 3, 5, 4, 6 s: sealed in commit order, not
    // in the order of their times.
    for secs in [1, 2, 3, 5, 4, 6] {
        s.append_audit(&event(secs)).await.unwrap();
    }
    stored(s).await;
    let before = |after, upto, secs| async move {
        s.audit_dated_before(after, upto, at(secs)).await.unwrap()
    };
    assert_eq!(before(0, 6, 4).await, 3, "event 4 is dated 5 s");
    assert_eq!(before(0, 6, 5).await, 3);
    assert_eq!(before(0, 6, 6).await, 5);
    assert_eq!(before(0, 6, 60).await, 6);
    assert_eq!(before(0, 6, 1).await, 0, "nothing before 1 s");
    assert_eq!(before(2, 6, 4).await, 3);
    assert_eq!(before(4, 6, 4).await, 4, "the first after 4 is not before");
    assert_eq!(before(0, 2, 60).await, 2, "up to 2");
    assert_eq!(before(6, 6, 60).await, 6);
}

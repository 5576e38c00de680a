//! Pruning what stopped mattering: only what is past the cutoff goes, in
//! batches, children before parents, what references a row with it, and the
//! revocation history stays gap-free from where it now starts.
use super::fixtures::*;
use mayfly::domain::retention::Prunable;
use mayfly::domain::*;
use mayfly::store::*;

/// Prunes `kind` before `secs` in batches of `batch` until none is left, and
/// says how many rows went.
async fn prune_all<S: Store>(s: &S, kind: Prunable, secs: i64, batch: u32) -> u64 {
    let mut total = 0;
    for _ in 0..1000 {
        let n = s.prune(kind, at(secs), batch).await.unwrap();
        total += n;
        if n < u64::from(batch) {
            return total;
        }
    }
    panic!("pruning {kind:?} never ran out");
}

pub async fn pruning_tokens_deletes_only_those_expired_before_the_cutoff<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let old = mint(s, &t, 0).await; // expires at 300
    let new = mint(s, &t, 1000).await; // expires at 1300
    let revoked = mint(s, &t, 10).await; // expires at 310, revoked: goes too
    let r = Revocation {
        target: Target::Token(revoked.jti),
        reason: "leaked".into(),
        actor: ADMIN.into(),
        trigger: Trigger::Admin,
        at: at(20),
    };
    let audit = mayfly::domain::audit::AuditEvent::new(
        at(20),
        ADMIN,
        mayfly::domain::audit::Action::Revocation,
    );
    s.revoke(&r, &audit).await.unwrap().expect("revoked");
    let events = s.audit_for_task(t.id).await.unwrap().len();

    assert_eq!(
        prune_all(s, Prunable::Tokens, 300, 10).await,
        0,
        "expiring at 300 is not before it"
    );
    assert_eq!(
        prune_all(s, Prunable::Tokens, 305, 10).await,
        1,
        "only the one expired at 300"
    );
    assert_eq!(prune_all(s, Prunable::Tokens, 400, 10).await, 1);
    assert_eq!(s.get_token(old.jti).await.unwrap(), None);
    assert_eq!(s.get_token(revoked.jti).await.unwrap(), None);
    assert!(
        s.get_token(new.jti).await.unwrap().is_some(),
        "unexpired at the cutoff: kept"
    );
    // The task, its count and its audit trail stay.
    let kept = s.get_task(t.id).await.unwrap().expect("the task is kept");
    assert_eq!(kept.tokens_minted, 3);
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);
    assert_eq!(
        prune_all(s, Prunable::Tokens, 400, 10).await,
        0,
        "nothing left"
    );
}

pub async fn pruned_tokens_take_their_offers_and_spent_approvals_children_first<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let parent = mint(s, &t, 0).await;
    let d = delegate(s, &parent, &[], SUB, 10).await;
    let child = redeem_ok(s, &d, 20).await;
    // The child expires with the parent's offer, before the parent: either way,
    // one token a batch, the child goes first and nothing refers to a row gone.
    let d2 = delegate(s, &child, &[parent.jti], SUB2, 30).await;
    let grandchild = redeem_ok(s, &d2, 40).await;
    let a = request(s, approval(&t, delete_scope(), 50)).await;
    decide_ok(s, &a, true, 60).await;
    let tok = token_for(&t, delete_scope(), 70);
    assert_eq!(
        s.spend_approval(a.id, &tok, BUDGET, &spent(&tok, &a))
            .await
            .unwrap(),
        Spend::Spent
    );
    assert_eq!(prune_all(s, Prunable::Tokens, 10_000, 1).await, 4);
    for j in [parent.jti, child.jti, grandchild.jti, tok.jti] {
        assert_eq!(s.get_token(j).await.unwrap(), None, "token {j} kept");
    }
    assert_eq!(s.get_delegation(d.id).await.unwrap(), None);
    assert_eq!(s.get_delegation(d2.id).await.unwrap(), None);
    assert_eq!(s.get_approval(a.id).await.unwrap(), None);
}

pub async fn lapsed_offers_and_unused_approvals_go_once_past_the_cutoff<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let parent = mint(s, &t, 0).await; // expires at 300
    let lapsed = delegate(s, &parent, &[], SUB, 10).await; // lapses at 130
    let open_offer = delegate(s, &parent, &[], SUB2, 200).await; // lapses at 300
    let pending = request(s, approval(&t, delete_scope(), 0)).await; // lapses at 300
    let approved = request(s, approval(&t, read_scope(), 10)).await; // lapses at 310
    decide_ok(s, &approved, true, 20).await;

    assert_eq!(prune_all(s, Prunable::Offers, 200, 10).await, 1);
    assert_eq!(s.get_delegation(lapsed.id).await.unwrap(), None);
    assert!(s.get_delegation(open_offer.id).await.unwrap().is_some());
    assert_eq!(prune_all(s, Prunable::Approvals, 305, 10).await, 1);
    assert_eq!(s.get_approval(pending.id).await.unwrap(), None);
    assert!(
        s.get_approval(approved.id).await.unwrap().is_some(),
        "lapses at 310"
    );
    assert_eq!(prune_all(s, Prunable::Approvals, 400, 10).await, 1);
    assert_eq!(s.get_approval(approved.id).await.unwrap(), None);
    // The parent token is still there: only the offers went.
    assert!(s.get_token(parent.jti).await.unwrap().is_some());
}

pub async fn a_denial_stands_while_its_task_is_active<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let denied = request(s, approval(&t, delete_scope(), 0)).await; // lapses at 300
    decide_ok(s, &denied, false, 10).await;
    // Long past its lapse, the denial still meets a new request for the scope,
    // which counts against the workflow's step-up retries: it is kept.
    assert_eq!(prune_all(s, Prunable::Approvals, 3000, 10).await, 0);
    assert!(
        s.standing_approval(t.id, &t.agent, &delete_scope(), at(3000))
            .await
            .unwrap()
            .is_some()
    );
    complete(s, &t, 3100).await;
    assert_eq!(prune_all(s, Prunable::Approvals, 3200, 10).await, 1);
    assert_eq!(s.get_approval(denied.id).await.unwrap(), None);
}

pub async fn an_ended_task_goes_only_once_nothing_of_it_is_kept<S: Store>(s: &S) {
    let ended = open(s, task(AGENT, 0, 3600)).await;
    let tok = mint(s, &ended, 0).await; // expires at 300
    complete(s, &ended, 100).await;
    // Past its deadline but never ended (the sweeper has not run): kept.
    let overdue = open(s, task(AGENT2, 0, 60)).await;

    assert_eq!(
        prune_all(s, Prunable::Tasks, 10_000, 10).await,
        0,
        "its token is kept"
    );
    assert!(s.get_task(ended.id).await.unwrap().is_some());
    assert_eq!(prune_all(s, Prunable::Tokens, 10_000, 10).await, 1);
    assert_eq!(s.get_token(tok.jti).await.unwrap(), None);
    assert_eq!(
        prune_all(s, Prunable::Tasks, 100, 10).await,
        0,
        "ended at 100, not before"
    );
    assert_eq!(prune_all(s, Prunable::Tasks, 10_000, 10).await, 1);
    assert_eq!(s.get_task(ended.id).await.unwrap(), None);
    assert!(
        s.get_task(overdue.id).await.unwrap().is_some(),
        "active tasks stay"
    );
}

pub async fn revocation_history_is_pruned_up_to_the_newest_event_before_the_cutoff<S: Store>(
    s: &S,
) {
    assert_eq!(
        s.revocation_bounds().await.unwrap(),
        RevocationBounds { first: 0, head: 0 }
    );
    assert_eq!(prune_all(s, Prunable::Revocations, 10_000, 10).await, 0);
    // Five events, at 100, 200, …, 500.
    for i in 1..=5 {
        let t = open(s, task(AGENT, 0, 3600)).await;
        complete(s, &t, i * 100).await;
    }
    assert_eq!(
        s.revocation_bounds().await.unwrap(),
        RevocationBounds { first: 1, head: 5 }
    );
    // Before 350: events 1, 2 and 3; the newest of them (3) is where the kept
    // history starts.
    assert_eq!(prune_all(s, Prunable::Revocations, 350, 1).await, 2);
    assert_eq!(
        s.revocation_bounds().await.unwrap(),
        RevocationBounds { first: 3, head: 5 }
    );
    let kept: Vec<u64> = s
        .revocations_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, [3, 4, 5], "gap-free from where it starts");
    // Everything old: the head itself is always kept.
    assert_eq!(prune_all(s, Prunable::Revocations, 10_000, 10).await, 2);
    assert_eq!(
        s.revocation_bounds().await.unwrap(),
        RevocationBounds { first: 5, head: 5 }
    );
    assert_eq!(s.last_revocation_seq().await.unwrap(), 5);
    // The sequence goes on from the head.
    let t = open(s, task(AGENT, 0, 3600)).await;
    assert_eq!(complete(s, &t, 600).await.event.seq, 6);
}

pub async fn pruning_an_empty_store_deletes_nothing<S: Store>(s: &S) {
    for kind in Prunable::ALL {
        assert_eq!(
            s.prune(kind, at(1_000_000), 100).await.unwrap(),
            0,
            "{kind:?}"
        );
    }
    assert_eq!(
        s.revocation_bounds().await.unwrap(),
        RevocationBounds { first: 0, head: 0 }
    );
}

/// With the broker's own cutoffs: the revocation of a token that lives as long
/// as any may (24 h) is kept until the token has expired, with the margin.
pub async fn a_revocation_is_kept_while_a_token_it_concerns_may_be_valid<S: Store>(s: &S) {
    use mayfly::domain::retention::{MAX_TOKEN_TTL, Retention};
    let retention = Retention {
        revocations: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let t = open(s, task_in(AGENT, WORKFLOW, 0, 3 * 86_400)).await;
    let mut long = token(&t, 0);
    long.expires_at = at(MAX_TOKEN_TTL.as_secs() as i64);
    assert_eq!(
        s.insert_token(&long, BUDGET, &minted(&long)).await.unwrap(),
        Ok(())
    );
    let r = Revocation {
        target: Target::Token(long.jti),
        reason: "leaked".into(),
        actor: ADMIN.into(),
        trigger: Trigger::Admin,
        at: at(1),
    };
    let audit = mayfly::domain::audit::AuditEvent::new(
        at(1),
        ADMIN,
        mayfly::domain::audit::Action::Revocation,
    );
    let first = s.revoke(&r, &audit).await.unwrap().unwrap().event.seq;
    // A later event, so the first is not merely kept as the newest.
    let other = open(s, task(AGENT2, 0, 3600)).await;
    complete(s, &other, 2).await;
    for secs in [3600, 86_400 - 1, 86_400 + 600] {
        let before = retention.cutoff(Prunable::Revocations, at(secs));
        assert_eq!(
            s.prune(Prunable::Revocations, before, 100).await.unwrap(),
            0,
            "at {secs}"
        );
        assert_eq!(s.revocations_after(0, 10).await.unwrap()[0].seq, first);
    }
    // Past the token's life and the margin, it may go.
    let gone = at(86_400 + 3600 + 3);
    let before = retention.cutoff(Prunable::Revocations, gone);
    assert_eq!(
        s.prune(Prunable::Revocations, before, 100).await.unwrap(),
        1
    );
}

/// Pruning while everything is revoked at once: neither waits for the other
/// nor fails (a revocation leaves long-expired tokens alone).
pub async fn pruning_and_revoking_everything_at_once_both_succeed<S: Store>(s: &S) {
    let t = open(s, task_in(AGENT, WORKFLOW, 0, 3 * 86_400)).await;
    let record = |tok: TokenRecord| async move {
        let audit = minted(&tok);
        assert_eq!(s.insert_token(&tok, 1000, &audit).await.unwrap(), Ok(()));
        tok
    };
    for i in 0..300 {
        record(token(&t, i)).await; // expired by 600
    }
    let now = 86_400;
    let live = record(token(&t, now)).await;
    let everything = Revocation {
        target: Target::All,
        reason: "incident".into(),
        actor: ADMIN.into(),
        trigger: Trigger::Admin,
        at: at(now + 1),
    };
    let audit = mayfly::domain::audit::AuditEvent::new(
        at(now + 1),
        ADMIN,
        mayfly::domain::audit::Action::Revocation,
    );
    let (pruned, revoked) = tokio::join!(
        prune_all(s, Prunable::Tokens, now - 7200, 10),
        s.revoke(&everything, &audit)
    );
    let revoked = revoked.unwrap().unwrap();
    assert_eq!(pruned, 300);
    assert_eq!(revoked.tokens_revoked, 1, "only the live token is marked");
    assert!(is_revoked(s, &live).await);
}

pub async fn a_token_that_outlived_the_event_revoking_it_is_revoked_again<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let tok = mint(s, &t, 0).await;
    let revoke = |secs: i64| Revocation {
        target: Target::Token(tok.jti),
        reason: "leaked".into(),
        actor: ADMIN.into(),
        trigger: Trigger::Admin,
        at: at(secs),
    };
    let audit = |secs: i64| {
        mayfly::domain::audit::AuditEvent::new(
            at(secs),
            ADMIN,
            mayfly::domain::audit::Action::Revocation,
        )
    };
    let first = s.revoke(&revoke(10), &audit(10)).await.unwrap().unwrap();
    assert_eq!(first.event.seq, 1);
    let other = open(s, task(AGENT2, 0, 3600)).await;
    complete(s, &other, 200).await;
    // Event 1 pruned (2 is the newest before the cutoff); the token is kept.
    assert_eq!(prune_all(s, Prunable::Revocations, 100_000, 10).await, 1);
    assert!(is_revoked(s, &tok).await);
    let again = s
        .revoke(&revoke(100_001), &audit(100_001))
        .await
        .unwrap()
        .expect("the token still exists");
    assert!(!again.repeated, "no original event left to answer with");
    assert_eq!((again.event.seq, again.tokens_revoked), (3, 0));
}

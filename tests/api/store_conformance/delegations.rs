//! Delegations: offers under their open limit, and the one-time redemption with
//! each of its refusals (none of which writes anything).
use super::fixtures::*;
use mayfly::domain::Target;
use mayfly::domain::*;
use mayfly::domain::{Task, TaskState};
use mayfly::store::*;
use uuid::Uuid;

/// Redeeming `d` with `c` gives `want`, and writes nothing: no child token, no
/// count against the budget, no audit event, the offer unredeemed.
async fn assert_not_redeemed<S: Store>(
    s: &S,
    d: &Delegation,
    c: &TokenRecord,
    budget: u32,
    want: Redeem,
) {
    assert_not_redeemed_as(s, d, c, budget, &[want]).await
}

/// As [`assert_not_redeemed`], with any of the outcomes `want`.
async fn assert_not_redeemed_as<S: Store>(
    s: &S,
    d: &Delegation,
    c: &TokenRecord,
    budget: u32,
    want: &[Redeem],
) {
    let task = s.get_task(c.task).await.unwrap();
    let offer = s.get_delegation(d.id).await.unwrap();
    let events = all_events(s).await.len();
    let got = redeem(s, d, c, budget).await;
    assert!(want.contains(&got), "{got:?}, not one of {want:?}");
    assert_eq!(s.get_token(c.jti).await.unwrap(), None, "child written");
    assert_eq!(s.get_task(c.task).await.unwrap(), task, "the task changed");
    assert_eq!(
        s.get_delegation(d.id).await.unwrap(),
        offer,
        "offer changed"
    );
    assert_eq!(all_events(s).await.len(), events, "an audit event written");
}

/// A support task of AGENT with one token, and an offer of it to SUB at 20.
async fn offered_task<S: Store>(s: &S, lasts: i64) -> (Task, TokenRecord, Delegation) {
    let t = open(s, task(AGENT, 0, lasts)).await;
    let parent = mint(s, &t, 10).await;
    let d = delegate(s, &parent, &[], SUB, 20).await;
    (t, parent, d)
}

pub async fn an_offer_reads_back_as_inserted_with_its_audit_event<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let d = offer(&parent, &[], SUB, 20);

    assert!(
        s.insert_delegation(&d, OPEN_LIMIT, &offered(&d))
            .await
            .unwrap()
    );
    assert_eq!(s.get_delegation(d.id).await.unwrap(), Some(d.clone()));
    assert_recorded(&s.audit_for_task(t.id).await.unwrap(), &offered(&d));
    assert_eq!(s.get_delegation(Uuid::new_v4()).await.unwrap(), None);
}

pub async fn offers_of_one_parent_stop_at_the_open_limit<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let other = mint(s, &t, 11).await;
    for secs in [20, 21] {
        let d = offer(&parent, &[], SUB, secs);
        assert!(s.insert_delegation(&d, 2, &offered(&d)).await.unwrap());
    }
    let events = s.audit_for_task(t.id).await.unwrap().len();

    let third = offer(&parent, &[], SUB2, 22);
    assert!(
        !s.insert_delegation(&third, 2, &offered(&third))
            .await
            .unwrap()
    );
    assert_eq!(s.get_delegation(third.id).await.unwrap(), None);
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);

    let d = offer(&other, &[], SUB, 23);
    assert!(
        s.insert_delegation(&d, 2, &offered(&d)).await.unwrap(),
        "another parent's offers count against the limit"
    );
}

pub async fn lapsed_and_redeemed_offers_leave_room_under_the_open_limit<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let lapsing = Delegation {
        expires_at: at(30),
        ..offer(&parent, &[], SUB, 20)
    };
    assert!(
        s.insert_delegation(&lapsing, 2, &offered(&lapsing))
            .await
            .unwrap()
    );
    let redeemed_one = delegate(s, &parent, &[], SUB2, 21).await;
    redeem_ok(s, &redeemed_one, 25).await;

    let d = offer(&parent, &[], SUB, 30);
    assert!(
        s.insert_delegation(&d, 2, &offered(&d)).await.unwrap(),
        "a lapsed or redeemed offer is counted as open"
    );
    let d = offer(&parent, &[], SUB2, 31);
    assert!(s.insert_delegation(&d, 2, &offered(&d)).await.unwrap());
    let d = offer(&parent, &[], SUB2, 32);
    assert!(!s.insert_delegation(&d, 2, &offered(&d)).await.unwrap());
}

pub async fn a_redemption_records_the_child_and_counts_against_the_budget<S: Store>(s: &S) {
    let (t, parent, d) = offered_task(s, 600).await;
    let c = child(&d, &t.workflow, 30);

    assert_eq!(redeem(s, &d, &c, BUDGET).await, Redeem::Redeemed);

    assert_eq!(s.get_token(c.jti).await.unwrap(), Some(c.clone()));
    let stored = s.get_delegation(d.id).await.unwrap().unwrap();
    assert_eq!(stored.redeemed_at, Some(c.issued_at));
    assert_eq!(stored.child_jti, Some(c.jti));
    assert_eq!(
        Delegation {
            redeemed_at: None,
            child_jti: None,
            ..stored
        },
        d,
        "the offer otherwise unchanged"
    );
    assert_eq!(reread(s, &t).await.tokens_minted, 2, "parent and child");
    assert_recorded(&s.audit_for_task(t.id).await.unwrap(), &redeemed(&c, &d));
    assert!(!is_revoked(s, &parent).await);
}

pub async fn redeeming_an_unknown_offer_is_not_found<S: Store>(s: &S) {
    let (t, parent, _) = offered_task(s, 600).await;
    let ghost = offer(&parent, &[], SUB, 25);
    let c = child(&ghost, &t.workflow, 30);
    assert_not_redeemed(s, &ghost, &c, BUDGET, Redeem::NotFound).await;
}

pub async fn an_offer_is_redeemed_only_once<S: Store>(s: &S) {
    let (t, _, d) = offered_task(s, 600).await;
    let first = redeem_ok(s, &d, 30).await;

    let second = child(&d, &t.workflow, 31);
    assert_not_redeemed(s, &d, &second, BUDGET, Redeem::AlreadyRedeemed).await;
    assert_eq!(
        s.get_delegation(d.id).await.unwrap().unwrap().child_jti,
        Some(first.jti)
    );
}

pub async fn a_lapsed_offer_is_expired<S: Store>(s: &S) {
    let (t, _, d) = offered_task(s, 600).await;
    let lapses = (d.expires_at - at(0)).whole_seconds();
    for secs in [lapses, lapses + 60] {
        let c = child(&d, &t.workflow, secs);
        assert_not_redeemed(s, &d, &c, BUDGET, Redeem::Expired).await;
    }
    redeem_ok(s, &d, lapses - 1).await;
}

pub async fn an_offer_whose_parent_or_ancestor_was_revoked_is_refused<S: Store>(s: &S) {
    let (t, parent, d) = offered_task(s, 600).await;
    revoke_ok(s, Target::Token(parent.jti), 25).await;
    let c = child(&d, &t.workflow, 30);
    assert_not_redeemed(s, &d, &c, BUDGET, Redeem::ParentRevoked).await;

    let root = mint(s, &t, 40).await;
    let o1 = delegate(s, &root, &[], SUB, 41).await;
    let middle = redeem_ok(s, &o1, 42).await;
    let o2 = delegate(s, &middle, &o1.ancestors, SUB2, 43).await;
    revoke_ok(s, Target::Token(root.jti), 44).await;
    let c = child(&o2, &t.workflow, 45);
    assert_not_redeemed(s, &o2, &c, BUDGET, Redeem::ParentRevoked).await;
}

pub async fn redeeming_in_a_task_that_is_not_active_is_refused<S: Store>(s: &S) {
    let (t, _, d) = offered_task(s, 600).await;
    end(s, &t, TaskState::Completed, 25).await;
    let c = child(&d, &t.workflow, 30);
    // Ending a task revokes the parent too: either refusal will do.
    let either = [
        Redeem::Refused(Refusal::NotActive(TaskState::Completed)),
        Redeem::ParentRevoked,
    ];
    assert_not_redeemed_as(s, &d, &c, BUDGET, &either).await;
}

pub async fn redeeming_past_the_task_deadline_is_refused<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 100)).await;
    let parent = TokenRecord {
        expires_at: at(200),
        ..token(&t, 10)
    };
    assert_eq!(
        s.insert_token(&parent, BUDGET, &minted(&parent))
            .await
            .unwrap(),
        Ok(())
    );
    let d = delegate(s, &parent, &[], SUB, 20).await;
    assert!(d.expires_at > at(100), "the offer outlives the task");
    let c = child(&d, &t.workflow, 100);
    let refused = Redeem::Refused(Refusal::PastDeadline);
    assert_not_redeemed(s, &d, &c, BUDGET, refused).await;
}

pub async fn redeeming_beyond_the_budget_is_refused<S: Store>(s: &S) {
    let (t, _, d) = offered_task(s, 600).await;
    let c = child(&d, &t.workflow, 30);
    assert_not_redeemed(s, &d, &c, 1, Redeem::Refused(Refusal::OutOfBudget)).await;
    assert_eq!(redeem(s, &d, &c, 2).await, Redeem::Redeemed);
}

pub async fn redeeming_is_refused_while_a_freeze_covers_either_agent<S: Store>(s: &S) {
    let (t, _, d) = offered_task(s, 600).await;
    for (target, secs) in [
        (FreezeTarget::Agent(agent_id(SUB)), 30),
        (FreezeTarget::Agent(agent_id(AGENT)), 40),
        (FreezeTarget::Workflow(WORKFLOW.into()), 50),
    ] {
        freeze(s, target.clone(), secs).await;
        let c = child(&d, &t.workflow, secs + 1);
        assert_not_redeemed(s, &d, &c, BUDGET, Redeem::Refused(Refusal::Frozen)).await;
        unfreeze(s, &target, secs + 2).await.expect("frozen");
    }
    redeem_ok(s, &d, 60).await;
}

pub async fn two_concurrent_redemptions_of_one_offer_yield_one_token<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    for round in 0..5 {
        let d = delegate(s, &parent, &[], SUB, 20 + round).await;
        let (c1, c2) = (child(&d, &t.workflow, 30), child(&d, &t.workflow, 30));
        let minted_before = reread(s, &t).await.tokens_minted;

        let (r1, r2) = tokio::join!(redeem(s, &d, &c1, BUDGET), redeem(s, &d, &c2, BUDGET));

        let mut outcomes = [r1, r2];
        outcomes.sort_by_key(|r| *r != Redeem::Redeemed);
        assert_eq!(outcomes, [Redeem::Redeemed, Redeem::AlreadyRedeemed]);
        let stored = [
            s.get_token(c1.jti).await.unwrap(),
            s.get_token(c2.jti).await.unwrap(),
        ];
        assert_eq!(stored.iter().flatten().count(), 1, "round {round}");
        assert_eq!(reread(s, &t).await.tokens_minted, minted_before + 1);
        let winner = if r1 == Redeem::Redeemed { &c1 } else { &c2 };
        assert_eq!(
            s.get_delegation(d.id).await.unwrap().unwrap().child_jti,
            Some(winner.jti)
        );
    }
}

pub async fn revoking_the_sub_agent_lapses_the_offers_made_to_it<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let to_sub = delegate(s, &parent, &[], SUB, 20).await;
    let to_other = delegate(s, &parent, &[], SUB2, 21).await;

    revoke_ok(s, Target::Agent(agent_id(SUB)), 30).await;

    let c = child(&to_sub, &t.workflow, 40);
    assert_not_redeemed(s, &to_sub, &c, BUDGET, Redeem::Expired).await;
    redeem_ok(s, &to_other, 41).await;
}

pub async fn concurrent_offers_never_exceed_the_open_limit<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let parent = mint(s, &t, 10).await;
    let offers: Vec<Delegation> = (0..5).map(|_| offer(&parent, &[], SUB, 20)).collect();
    let audits: Vec<_> = offers.iter().map(offered).collect();

    let accepted = futures::future::join_all(
        offers
            .iter()
            .zip(&audits)
            .map(|(d, a)| s.insert_delegation(d, 2, a)),
    )
    .await;

    let accepted: Vec<bool> = accepted.into_iter().map(Result::unwrap).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 2, "{accepted:?}");
    let mut stored = 0;
    for (d, ok) in offers.iter().zip(&accepted) {
        let found = s.get_delegation(d.id).await.unwrap().is_some();
        assert_eq!(found, *ok, "offer {} stored: {found}, accepted: {ok}", d.id);
        stored += usize::from(found);
    }
    assert_eq!(stored, 2);
}

/// Revoking a parent token, its holder or the sub-agent while the offer is being
/// redeemed: the redemption is refused, or its child is revoked with the rest.
pub async fn a_redemption_racing_a_revocation_is_refused_or_revoked_with_it<S: Store>(s: &S) {
    for round in 0..6 {
        let t = open(s, task(AGENT, 0, 600)).await;
        let parent = mint(s, &t, 10).await;
        let d = delegate(s, &parent, &[], SUB, 20).await;
        let c = child(&d, &t.workflow, 30);
        let target = match round % 3 {
            0 => Target::Token(parent.jti),
            1 => Target::Agent(agent_id(AGENT)),
            _ => Target::Agent(agent_id(SUB)),
        };
        let what = target.to_string();

        let (redeemed, revoked) = tokio::join!(redeem(s, &d, &c, BUDGET), revoke(s, target, 30));

        assert!(revoked.is_some(), "{what}");
        match redeemed {
            Redeem::Redeemed => {
                let stored = s.get_token(c.jti).await.unwrap().expect("child stored");
                assert!(stored.revoked_at.is_some(), "{what}: the child lives on");
                let status = s.token_status(c.jti).await.unwrap().unwrap();
                assert!(status.revoked, "{what}: the child reads as live");
            }
            refused => {
                assert_eq!(
                    s.get_token(c.jti).await.unwrap(),
                    None,
                    "{what}: {refused:?}"
                );
            }
        }
        let live = s
            .list_tokens(&TokenFilter {
                task: Some(t.id),
                agent: Some(agent_id(SUB)),
                active_at: Some(at(31)),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(live, vec![], "{what}: a live token of the sub-agent");
    }
}

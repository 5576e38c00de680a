//! Freezes (the kill switch): one per target, audited when set and lifted, and
//! which freeze covers a token. Their effect on issuance is in `tokens`,
//! `delegations` and `approvals`.
use super::fixtures::*;
use mayfly::domain::audit::Action;
use mayfly::domain::*;
use mayfly::store::*;

pub async fn a_freeze_stands_until_lifted_and_both_are_audited<S: Store>(s: &S) {
    let target = FreezeTarget::Agent(agent_id(AGENT));
    // The broker tells a new freeze from a standing one by equality with what it
    // asked for, so a new freeze comes back exactly as given (to the nanosecond).
    let audit = frozen(&freeze_of(target.clone(), 10));
    let f = Freeze {
        at: at(10) + time::Duration::nanoseconds(123_456_789),
        ..freeze_of(target.clone(), 10)
    };

    assert_eq!(s.freeze(&f, &audit).await.unwrap(), f);
    let listed = s.list_freezes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].target, target);
    assert_eq!(listed[0].reason, f.reason);
    assert_eq!(listed[0].actor, f.actor);

    let lifted = unfreeze(s, &target, 20).await.expect("frozen");
    assert_eq!((&lifted.target, &lifted.reason), (&target, &f.reason));
    assert_eq!(s.list_freezes().await.unwrap(), vec![]);
    assert_eq!(
        s.freeze_covering(&[&agent_id(AGENT)], WORKFLOW)
            .await
            .unwrap(),
        None
    );
    assert_eq!(unfreeze(s, &target, 30).await, None, "lifted twice");

    let events = all_events(s).await;
    assert_recorded(&events, &audit);
    assert_recorded(&events, &unfrozen(&target, 20));
    assert_eq!(count(&events, Action::IssuanceUnfrozen), 1);
}

pub async fn freezing_a_frozen_target_keeps_the_standing_freeze<S: Store>(s: &S) {
    let first = freeze(s, FreezeTarget::Workflow(WORKFLOW.into()), 10).await;
    let second = Freeze {
        reason: "routine drill".into(),
        actor: ADMIN2.into(),
        ..freeze_of(FreezeTarget::Workflow(WORKFLOW.into()), 20)
    };

    assert_eq!(s.freeze(&second, &frozen(&second)).await.unwrap(), first);
    assert_eq!(s.list_freezes().await.unwrap(), vec![first]);
    let events = all_events(s).await;
    assert_eq!(count(&events, Action::IssuanceFrozen), 1, "audited twice");

    let all = freeze(s, FreezeTarget::All, 30).await;
    assert_eq!(freeze(s, FreezeTarget::All, 40).await, all);
    assert_eq!(s.list_freezes().await.unwrap().len(), 2);
}

pub async fn freeze_covering_finds_a_freeze_of_either_agent_the_workflow_or_all<S: Store>(s: &S) {
    let covering = |agents: &'static [&'static str], workflow: &'static str| async move {
        let ids: Vec<SpiffeId> = agents.iter().map(|a| agent_id(a)).collect();
        let ids: Vec<&SpiffeId> = ids.iter().collect();
        s.freeze_covering(&ids, workflow).await.unwrap()
    };
    assert_eq!(covering(&[SUB, AGENT], WORKFLOW).await, None);

    let agent = freeze(s, FreezeTarget::Agent(agent_id(AGENT)), 10).await;
    assert_eq!(
        covering(&[AGENT], OTHER_WORKFLOW).await,
        Some(agent.clone())
    );
    assert_eq!(
        covering(&[SUB, AGENT], OTHER_WORKFLOW).await,
        Some(agent.clone()),
        "the task's agent, behind a sub-agent"
    );
    assert_eq!(covering(&[SUB, AGENT2], OTHER_WORKFLOW).await, None);
    unfreeze(s, &FreezeTarget::Agent(agent_id(AGENT)), 11).await;

    let workflow = freeze(s, FreezeTarget::Workflow(WORKFLOW.into()), 20).await;
    assert_eq!(covering(&[AGENT2], WORKFLOW).await, Some(workflow));
    assert_eq!(covering(&[AGENT2], OTHER_WORKFLOW).await, None);
    unfreeze(s, &FreezeTarget::Workflow(WORKFLOW.into()), 21).await;

    let all = freeze(s, FreezeTarget::All, 30).await;
    assert_eq!(covering(&[AGENT2], OTHER_WORKFLOW).await, Some(all));
}

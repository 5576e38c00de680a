//! The offer and redemption rules.
use super::*;
use crate::domain::fixture::{ADMIN, AGENT, OTHER, at, limits, read_customers, task};
use crate::domain::{FreezeTarget, TaskClosed, TaskState};
use uuid::Uuid;

/// A token of [`AGENT`] for `customers/eu/*#read`, valid until `at(600)`.
fn parent(task: &Task) -> TokenRecord {
    TokenRecord {
        jti: Uuid::new_v4(),
        task: task.id,
        agent: AGENT.clone(),
        workflow: task.workflow.clone(),
        scope: Scope::requested("crm-api", "customers/eu/*", "read").unwrap(),
        kid: "k1".into(),
        cert_thumbprint: "agent-cert".into(),
        issued_at: at(0),
        expires_at: at(600),
        revoked_at: None,
        parent: None,
        depth: 0,
    }
}

fn ask<'a>(scope: &'a Scope, ttl: u64) -> OfferAsk<'a> {
    OfferAsk {
        delegator: &AGENT,
        thumbprint: "agent-cert",
        sub_agent: &OTHER,
        sub_agent_is_agent: true,
        scope,
        ttl: Duration::from_secs(ttl),
    }
}

fn decide(record: &TokenRecord, task: &Task, ask: OfferAsk<'_>) -> Result<Offered, Refusal> {
    let chain = [record.agent.as_str()];
    let parent = Parent {
        record,
        chain: &chain,
    };
    offer(parent, task, None, ask, Some(&limits()), at(0))
}

#[test]
fn a_narrower_shorter_offer_to_another_agent_is_allowed_one_level_deeper() {
    let t = task();
    let (p, scope) = (parent(&t), read_customers());
    assert_eq!(
        decide(&p, &t, ask(&scope, 300)),
        Ok(Offered {
            depth: 1,
            expires_at: at(300)
        })
    );
}

#[test]
fn delegating_another_agents_token_is_a_deviation() {
    let t = task();
    let (mut p, scope) = (parent(&t), read_customers());
    p.agent = OTHER.clone();
    let refused = decide(&p, &t, ask(&scope, 300)).unwrap_err();
    assert!(matches!(refused, Refusal::ForeignToken { .. }));
    assert!(refused.is_deviation());
}

#[test]
fn a_parent_token_bound_to_another_certificate_or_revoked_is_refused() {
    let t = task();
    let (mut p, scope) = (parent(&t), read_customers());
    let rotated = OfferAsk {
        thumbprint: "new-cert",
        ..ask(&scope, 300)
    };
    assert_eq!(decide(&p, &t, rotated), Err(Refusal::OtherCertificate));
    p.revoked_at = Some(at(10));
    assert_eq!(
        decide(&p, &t, ask(&scope, 300)),
        Err(Refusal::ParentRevoked { jti: p.jti })
    );
}

#[test]
fn nothing_is_offered_in_a_closed_or_frozen_task() {
    let mut t = task();
    let (p, scope) = (parent(&t), read_customers());
    let freeze = Freeze {
        target: FreezeTarget::Workflow("support".into()),
        reason: "incident".into(),
        actor: ADMIN.to_string(),
        at: at(5),
    };
    let chain = [p.agent.as_str()];
    let parent = Parent {
        record: &p,
        chain: &chain,
    };
    let frozen = offer(
        parent,
        &t,
        Some(&freeze),
        ask(&scope, 300),
        Some(&limits()),
        at(10),
    );
    assert_eq!(frozen, Err(Refusal::Frozen(freeze)));
    t.state = TaskState::Deviated;
    assert_eq!(
        decide(&p, &t, ask(&scope, 300)),
        Err(TaskClosed::NotActive {
            task: t.id,
            state: TaskState::Deviated
        }
        .into())
    );
}

#[test]
fn the_sub_agent_is_another_agent_outside_the_chain() {
    let t = task();
    let (p, scope) = (parent(&t), read_customers());
    let to_self = OfferAsk {
        sub_agent: &AGENT,
        ..ask(&scope, 300)
    };
    assert_eq!(decide(&p, &t, to_self), Err(Refusal::SelfDelegation));
    let to_admin = OfferAsk {
        sub_agent: &ADMIN,
        sub_agent_is_agent: false,
        ..ask(&scope, 300)
    };
    assert!(matches!(
        decide(&p, &t, to_admin),
        Err(Refusal::NotAnAgent { .. })
    ));
    let chain = [AGENT.as_str(), OTHER.as_str()];
    let in_chain = offer(
        Parent {
            record: &p,
            chain: &chain,
        },
        &t,
        None,
        ask(&scope, 300),
        Some(&limits()),
        at(0),
    );
    assert!(matches!(in_chain, Err(Refusal::InChain { .. })));
}

#[test]
fn a_wider_scope_is_refused_and_outside_the_task_it_is_a_deviation() {
    let t = task();
    let mut p = parent(&t);
    p.scope = Scope::requested("crm-api", "customers/eu/42", "read").unwrap();
    let sibling = Scope::requested("crm-api", "customers/eu/7", "read").unwrap();
    assert_eq!(
        decide(&p, &t, ask(&sibling, 300)),
        Err(Refusal::Widens(Widening::Resource {
            asked: "customers/eu/7".into(),
            held: "customers/eu/42".into()
        }))
    );
    let other_tool = Scope::requested("billing", "customers/eu/1", "read").unwrap();
    let refused = decide(&p, &t, ask(&other_tool, 300)).unwrap_err();
    assert!(
        matches!(
            &refused,
            Refusal::OutOfScope {
                delegated: true,
                ..
            }
        ),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .starts_with("deviation: delegated scope ")
    );
}

#[test]
fn an_offer_never_outlives_its_parent() {
    let t = task();
    let (p, scope) = (parent(&t), read_customers());
    assert_eq!(
        decide(&p, &t, ask(&scope, 601)),
        Err(Refusal::OutlivesParent {
            ttl_seconds: 601,
            parent_left: 600
        })
    );
}

#[test]
fn the_workflow_bounds_the_depth_and_keeps_step_up_actions_undelegated() {
    let t = task();
    let (mut p, scope) = (parent(&t), read_customers());
    p.depth = 2;
    assert!(matches!(
        decide(&p, &t, ask(&scope, 300)),
        Err(Refusal::TooDeep {
            depth: 3,
            max: 2,
            ..
        })
    ));
    p.depth = 0;
    let steps = ["read".to_string()];
    let strict = Limits {
        step_up_actions: &steps,
        ..limits()
    };
    let chain = [p.agent.as_str()];
    let parent = Parent {
        record: &p,
        chain: &chain,
    };
    assert!(matches!(
        offer(parent, &t, None, ask(&scope, 300), Some(&strict), at(0)),
        Err(Refusal::StepUpNotDelegated { .. })
    ));
    assert_eq!(
        offer(parent, &t, None, ask(&scope, 300), None, at(0)),
        Err(Refusal::WorkflowUndefined {
            workflow: "support".into()
        })
    );
}

fn offered(t: &Task) -> Delegation {
    Delegation {
        id: Uuid::new_v4(),
        task: t.id,
        parent_jti: Uuid::new_v4(),
        delegator: AGENT.clone(),
        sub_agent: OTHER.clone(),
        scope: read_customers(),
        depth: 1,
        act: serde_json::json!({"sub": OTHER.as_str()}),
        ancestors: vec![],
        created_at: at(0),
        expires_at: at(300),
        redeemed_at: None,
        child_jti: None,
    }
}

#[test]
fn only_the_named_sub_agent_redeems_an_offer_once_before_it_lapses() {
    let t = task();
    let mut d = offered(&t);
    assert_eq!(d.redeemable(&OTHER, at(10)), Ok(()));
    assert_eq!(
        d.redeemable(&AGENT, at(10)),
        Err(Refusal::NotTheSubAgent { delegation: d.id })
    );
    assert!(matches!(
        d.redeemable(&OTHER, at(300)),
        Err(Refusal::OfferLapsed { at: Some(_), .. })
    ));
    d.redeemed_at = Some(at(5));
    assert!(matches!(
        d.redeemable(&OTHER, at(10)),
        Err(Refusal::AlreadyRedeemed { at: Some(_), .. })
    ));
}

#[test]
fn a_redeemed_token_lives_no_longer_than_the_offer_the_workflow_the_task_and_the_certificate() {
    let t = task();
    let d = offered(&t);
    let cert = at(3_600).unix_timestamp();
    assert_eq!(d.redemption(&t, &limits(), cert, at(0)), Ok(at(300)));
    let short = Limits {
        max_token_ttl: Duration::from_secs(60),
        ..limits()
    };
    assert_eq!(d.redemption(&t, &short, cert, at(0)), Ok(at(60)));
    assert_eq!(
        d.redemption(&t, &limits(), at(100).unix_timestamp(), at(0)),
        Ok(at(100))
    );
    assert_eq!(
        d.redemption(
            &t,
            &limits(),
            cert,
            at(299) + time::Duration::milliseconds(500)
        ),
        Err(Refusal::OfferNoTimeLeft { delegation: d.id })
    );
}

#[test]
fn a_redemption_past_the_budget_is_a_deviation_and_a_tightened_workflow_refuses_it() {
    let mut t = task();
    let d = offered(&t);
    let cert = at(3_600).unix_timestamp();
    let shallow = Limits {
        max_delegation_depth: 0,
        ..limits()
    };
    assert!(matches!(
        d.redemption(&t, &shallow, cert, at(0)),
        Err(Refusal::TooDeep { .. })
    ));
    t.tokens_minted = 5;
    let refused = d.redemption(&t, &limits(), cert, at(0)).unwrap_err();
    assert!(matches!(refused, Refusal::OutOfBudget { max: 5, .. }));
    assert!(refused.is_deviation());
}

//! Examples: each kind of field as the CLI shows it, and whole messages as the
//! CLI has always printed them.
use crate::api::pb;
use serde_json::{Value, json};

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

fn scope() -> pb::Scope {
    pb::Scope {
        audience: "crm-api".into(),
        resource: "customers/eu/*".into(),
        action: "read".into(),
    }
}

#[test]
fn a_task_shows_its_fields_in_proto_order_with_names_for_states_and_times() {
    let task = pb::Task {
        id: "0b6c".into(),
        agent: "spiffe://example.org/agent/a".into(),
        workflow: "support".into(),
        objective: "triage".into(),
        scopes: vec![scope()],
        state: pb::TaskState::Active as i32,
        opened_by: "spiffe://example.org/orchestrator/o".into(),
        created_at: at(1_700_000_000, 123_456_789),
        expires_at: at(1_700_000_600, 0),
        ended_at: None,
        end_reason: String::new(),
        tokens_minted: 0,
    };
    assert_eq!(
        serde_json::to_string(&task).unwrap(),
        json!({
            "id": "0b6c", "agent": "spiffe://example.org/agent/a", "workflow": "support",
            "objective": "triage",
            "scopes": [{"audience": "crm-api", "resource": "customers/eu/*", "action": "read"}],
            "state": "active", "opened_by": "spiffe://example.org/orchestrator/o",
            "created_at": "2023-11-14T22:13:20Z", "expires_at": "2023-11-14T22:23:20Z",
            "ended_at": null, "end_reason": "", "tokens_minted": 0,
        })
        .to_string()
    );
}

#[test]
fn an_enum_value_the_client_does_not_know_is_shown_as_its_number() {
    let approval = pb::Approval {
        state: 99,
        ..Default::default()
    };
    assert_eq!(to_json(&approval)["state"], "99");
    let approval = pb::Approval {
        state: pb::ApprovalState::Used as i32,
        ..Default::default()
    };
    assert_eq!(to_json(&approval)["state"], "used");
}

#[test]
fn a_time_beyond_the_calendar_is_null_not_a_panic() {
    let task = pb::Task {
        created_at: at(i64::MAX, 0),
        ..Default::default()
    };
    assert_eq!(to_json(&task)["created_at"], Value::Null);
}

#[test]
fn a_revocation_target_is_its_member_and_everything_is_all() {
    use pb::revocation_target::Target as T;
    let cases = [
        (Some(T::Token("j".into())), json!({"token": "j"})),
        (Some(T::Task("t".into())), json!({"task": "t"})),
        (Some(T::Agent("a".into())), json!({"agent": "a"})),
        (Some(T::Workflow("w".into())), json!({"workflow": "w"})),
        (Some(T::All(true)), json!("all")),
        (Some(T::All(false)), json!({"all": false})),
        (None, Value::Null),
    ];
    for (target, shown) in cases {
        let event = pb::RevocationEvent {
            sequence: 7,
            target: Some(pb::RevocationTarget { target }),
            reason: "drill".into(),
            actor: "spiffe://example.org/admin/s1".into(),
            trigger: "admin".into(),
            at: at(0, 0),
        };
        assert_eq!(
            to_json(&event),
            json!({"sequence": 7, "target": shown, "reason": "drill",
                   "actor": "spiffe://example.org/admin/s1", "trigger": "admin",
                   "at": "1970-01-01T00:00:00Z"})
        );
    }
    let event = pb::RevocationEvent::default();
    assert_eq!(to_json(&event)["target"], Value::Null);
}

#[test]
fn a_freeze_answer_nests_the_freeze_and_its_target() {
    let r = pb::FreezeResponse {
        freeze: Some(pb::FreezeInfo {
            target: Some(pb::FreezeTarget {
                target: Some(pb::freeze_target::Target::All(true)),
            }),
            reason: "incident 42".into(),
            actor: "spiffe://example.org/admin/s1".into(),
            at: None,
        }),
        already_frozen: false,
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        json!({"freeze": {"target": "all", "reason": "incident 42",
                          "actor": "spiffe://example.org/admin/s1", "at": null},
               "already_frozen": false})
        .to_string()
    );
}

#[test]
fn an_approval_names_its_task_task() {
    let a = pb::Approval {
        id: "ap".into(),
        task_id: "t".into(),
        requester: "spiffe://example.org/agent/a".into(),
        scope: Some(scope()),
        ttl_seconds: 60,
        state: pb::ApprovalState::Pending as i32,
        workflow: "payments".into(),
        objective: "pay invoice 881".into(),
        created_at: at(0, 0),
        expires_at: at(60, 0),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        json!({
            "id": "ap", "task": "t", "requester": "spiffe://example.org/agent/a",
            "scope": {"audience": "crm-api", "resource": "customers/eu/*", "action": "read"},
            "ttl_seconds": 60, "state": "pending", "workflow": "payments",
            "objective": "pay invoice 881", "created_at": "1970-01-01T00:00:00Z",
            "expires_at": "1970-01-01T00:01:00Z", "decided_by": "", "decided_at": null,
            "decision_reason": "", "used_jti": "",
        })
        .to_string()
    );
}

#[test]
fn an_audit_event_shows_its_detail_as_json_and_what_it_lacks_as_null() {
    let e = pb::AuditEventInfo {
        sequence: 3,
        at: at(0, 0),
        actor: "spiffe://example.org/agent/a".into(),
        action: "token_minted".into(),
        outcome: "permit".into(),
        task_id: "t".into(),
        agent: "spiffe://example.org/agent/a".into(),
        jti: String::new(),
        reason: String::new(),
        detail_json: r#"{"scope":"crm-api:customers/eu/5:read","ttl":60}"#.into(),
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        json!({
            "sequence": 3, "at": "1970-01-01T00:00:00Z", "actor": "spiffe://example.org/agent/a",
            "action": "token_minted", "outcome": "permit", "task": "t",
            "agent": "spiffe://example.org/agent/a", "jti": null, "reason": null,
            "detail": {"scope": "crm-api:customers/eu/5:read", "ttl": 60},
        })
        .to_string()
    );
    for text in ["", "not json"] {
        let e = pb::AuditEventInfo {
            detail_json: text.into(),
            ..Default::default()
        };
        assert_eq!(to_json(&e)["detail"], Value::Null, "{text:?}");
    }
}

#[test]
fn a_minted_token_shows_the_token_a_script_reads() {
    let r = pb::MintTokenResponse {
        token: "eyJ.x.y".into(),
        jti: "j".into(),
        expires_at: at(120, 0),
        ttl_seconds: 120,
        approval: None,
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        json!({"token": "eyJ.x.y", "jti": "j", "expires_at": "1970-01-01T00:02:00Z",
               "ttl_seconds": 120, "approval": null})
        .to_string()
    );
    // Its Debug still hides the token.
    assert!(!format!("{r:?}").contains("eyJ"));
}

#[test]
fn numbers_and_lists_are_shown_as_they_are() {
    let a = pb::AgentAccess {
        agent: "spiffe://example.org/agent/a".into(),
        tokens: u64::MAX,
        first: at(0, 0),
        last: None,
        resources: vec!["customers/eu/5".into(), String::new()],
    };
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        json!({"agent": "spiffe://example.org/agent/a", "tokens": u64::MAX,
               "first": "1970-01-01T00:00:00Z", "last": null,
               "resources": ["customers/eu/5", ""]})
        .to_string()
    );
}

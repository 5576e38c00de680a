//! The broker's messages as the JSON the CLI prints.
use super::*;

pub(super) fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map(Value::String)
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}

pub(super) fn scope_json(s: &Option<pb::Scope>) -> Value {
    s.as_ref()
        .map(|s| json!({"audience": s.audience, "resource": s.resource, "action": s.action}))
        .unwrap_or(Value::Null)
}

pub(super) fn task_json(t: &pb::Task) -> Value {
    let state = pb::TaskState::try_from(t.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| t.state.to_string());
    json!({
        "id": t.id, "agent": t.agent, "workflow": t.workflow, "objective": t.objective,
        "scopes": t.scopes.iter().map(|s| scope_json(&Some(s.clone()))).collect::<Vec<_>>(),
        "state": state, "opened_by": t.opened_by, "created_at": ts(&t.created_at),
        "expires_at": ts(&t.expires_at), "ended_at": ts(&t.ended_at),
        "end_reason": t.end_reason, "tokens_minted": t.tokens_minted,
    })
}

pub(super) fn event_json(e: &pb::RevocationEvent) -> Value {
    use pb::revocation_target::Target as T;
    let target = match e.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(T::Token(j)) => json!({"token": j}),
        Some(T::Task(t)) => json!({"task": t}),
        Some(T::Agent(a)) => json!({"agent": a}),
        Some(T::Workflow(w)) => json!({"workflow": w}),
        Some(T::All(_)) => json!("all"),
        None => Value::Null,
    };
    json!({"sequence": e.sequence, "target": target, "reason": e.reason, "actor": e.actor,
           "trigger": e.trigger, "at": ts(&e.at)})
}

pub(super) fn minted_json(r: &pb::MintTokenResponse) -> Value {
    json!({"token": r.token, "jti": r.jti, "expires_at": ts(&r.expires_at), "ttl_seconds": r.ttl_seconds})
}

pub(super) fn approval_json(a: &pb::Approval) -> Value {
    let state = pb::ApprovalState::try_from(a.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("APPROVAL_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| a.state.to_string());
    json!({
        "id": a.id, "task": a.task_id, "requester": a.requester, "scope": scope_json(&a.scope),
        "ttl_seconds": a.ttl_seconds, "state": state, "workflow": a.workflow,
        "objective": a.objective, "created_at": ts(&a.created_at), "expires_at": ts(&a.expires_at),
        "decided_by": a.decided_by, "decided_at": ts(&a.decided_at),
        "decision_reason": a.decision_reason, "used_jti": a.used_jti,
    })
}

pub(super) fn freeze_json(f: &pb::FreezeInfo) -> Value {
    use pb::freeze_target::Target as T;
    let target = match f.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(T::Agent(a)) => json!({"agent": a}),
        Some(T::Workflow(w)) => json!({"workflow": w}),
        Some(T::All(_)) => json!("all"),
        None => Value::Null,
    };
    json!({"target": target, "reason": f.reason, "actor": f.actor, "at": ts(&f.at)})
}

pub(super) fn audit_event_json(e: &pb::AuditEventInfo) -> Value {
    let detail: Value = serde_json::from_str(&e.detail_json).unwrap_or(Value::Null);
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    json!({
        "sequence": e.sequence, "at": ts(&e.at), "actor": e.actor, "action": e.action,
        "outcome": e.outcome, "task": opt(&e.task_id), "agent": opt(&e.agent),
        "jti": opt(&e.jti), "reason": opt(&e.reason), "detail": detail,
    })
}

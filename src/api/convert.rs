//! Proto <-> domain. Parsing happens here, at the edge: every refusal is
//! INVALID_ARGUMENT naming the field.
use super::pb;
use crate::broker::Minted;
use crate::domain::SpiffeId;
use crate::domain::text::{self, Lines, quote};
use crate::domain::{Approval, ApprovalState, Freeze, FreezeTarget, TokenRecord};
use crate::domain::{Event, Target};
use crate::domain::{Scope, Task, TaskId, TaskState};
use crate::error::invalid;
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Status;

pub const MAX_OBJECTIVE: usize = 4096;
pub const MAX_REASON: usize = 1024;
/// Longest evidence text a misuse report keeps in the audit trail.
pub const MAX_EVIDENCE: usize = 4096;
pub const MAX_SCOPES: usize = 64;
pub const MAX_TASK_SECONDS: u64 = 366 * 24 * 3600;
pub const MAX_TTL_SECONDS: u64 = 24 * 3600;
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub fn spiffe_id(field: &'static str, s: &str) -> Result<SpiffeId, Status> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    SpiffeId::parse(s).map_err(|e| invalid(field, e))
}

pub fn task_id(field: &'static str, s: &str) -> Result<TaskId, Status> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    s.parse()
        .map_err(|_| invalid(field, format!("{} is not a task id (a UUID)", quote(s))))
}

/// Free text a person reads, in the request field `field`: at most `max` bytes,
/// nothing invisible or bidirectional, one line unless `lines` says otherwise
/// ([`text::check`] holds the rule).
fn text(field: &'static str, s: &str, max: usize, lines: Lines) -> Result<String, Status> {
    text::check(s, max, lines).map_err(|e| invalid(field, e))?;
    Ok(s.to_string())
}

/// A required one-line text: a reason, a name.
pub fn required_text(field: &'static str, s: &str, max: usize) -> Result<String, Status> {
    if s.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    text(field, s, max, Lines::One)
}

/// A task's objective: required, and the one text that may span lines.
pub fn objective(s: &str) -> Result<String, Status> {
    if s.trim().is_empty() {
        return Err(invalid("objective", "is required"));
    }
    text("objective", s, MAX_OBJECTIVE, Lines::Many)
}

/// A misuse report's evidence: optional, one line (it becomes part of the
/// revocation's reason).
pub fn evidence(s: &str) -> Result<String, Status> {
    text("evidence", s, MAX_EVIDENCE, Lines::One)
}

pub fn workflow_name(s: &str) -> Result<String, Status> {
    workflow_name_in("workflow", s)
}

/// A workflow name in the request field `field`.
pub fn workflow_name_in(field: &'static str, s: &str) -> Result<String, Status> {
    let name = required_text(field, s, 128)?;
    if name.chars().any(char::is_whitespace) {
        return Err(invalid(field, "must not contain whitespace"));
    }
    Ok(name)
}

pub fn declared_scopes(scopes: &[pb::Scope]) -> Result<Vec<Scope>, Status> {
    if scopes.is_empty() {
        return Err(invalid("scopes", "at least one scope is required"));
    }
    if scopes.len() > MAX_SCOPES {
        return Err(invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    scopes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Scope::declared(&s.audience, &s.resource, &s.action)
                .map_err(|e| invalid(format_args!("scopes[{i}]"), e))
        })
        .collect()
}

pub fn requested_scope(scope: Option<&pb::Scope>) -> Result<Scope, Status> {
    let s = scope.ok_or_else(|| invalid("scope", "is required"))?;
    Scope::requested(&s.audience, &s.resource, &s.action).map_err(|e| invalid("scope", e))
}

pub fn seconds(field: &'static str, secs: u64, max: u64) -> Result<Duration, Status> {
    if secs == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if secs > max {
        return Err(invalid(field, format!("must be at most {max}")));
    }
    Ok(Duration::from_secs(secs))
}

pub fn limit(n: u32) -> Result<u32, Status> {
    match n {
        0 => Ok(DEFAULT_LIMIT),
        n if n > MAX_LIMIT => Err(invalid("limit", format!("must be at most {MAX_LIMIT}"))),
        n => Ok(n),
    }
}

pub fn task_state_filter(v: i32) -> Result<Option<TaskState>, Status> {
    match pb::TaskState::try_from(v) {
        Ok(pb::TaskState::Unspecified) => Ok(None),
        Ok(pb::TaskState::Active) => Ok(Some(TaskState::Active)),
        Ok(pb::TaskState::Completed) => Ok(Some(TaskState::Completed)),
        Ok(pb::TaskState::Expired) => Ok(Some(TaskState::Expired)),
        Ok(pb::TaskState::Deviated) => Ok(Some(TaskState::Deviated)),
        Ok(pb::TaskState::Revoked) => Ok(Some(TaskState::Revoked)),
        Err(_) => Err(invalid("state", format!("{v} is not a task state"))),
    }
}

pub fn target(t: Option<&pb::RevocationTarget>) -> Result<Target, Status> {
    use pb::revocation_target::Target as T;
    match t.and_then(|t| t.target.as_ref()) {
        None => Err(invalid(
            "target",
            "is required: one of token, task, agent, workflow, all",
        )),
        Some(T::Token(j)) => uuid::Uuid::parse_str(j).map(Target::Token).map_err(|_| {
            invalid(
                "target.token",
                format!("{} is not a token id (a UUID jti)", quote(j)),
            )
        }),
        Some(T::Task(t)) => task_id("target.task", t).map(Target::Task),
        Some(T::Agent(a)) => spiffe_id("target.agent", a).map(Target::Agent),
        Some(T::Workflow(w)) => workflow_name_in("target.workflow", w).map(Target::Workflow),
        Some(T::All(true)) => Ok(Target::All),
        Some(T::All(false)) => Err(invalid("target.all", "must be true to revoke everything")),
    }
}

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

fn state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Active => pb::TaskState::Active,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Expired => pb::TaskState::Expired,
        TaskState::Deviated => pb::TaskState::Deviated,
        TaskState::Revoked => pb::TaskState::Revoked,
    }
}

pub fn scope(s: &Scope) -> pb::Scope {
    pb::Scope {
        audience: s.audience.clone(),
        resource: s.resource.clone(),
        action: s.action.clone(),
    }
}

pub fn task(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.to_string(),
        agent: t.agent.to_string(),
        workflow: t.workflow.clone(),
        objective: t.objective.clone(),
        scopes: t.scopes.iter().map(scope).collect(),
        state: state(t.state) as i32,
        opened_by: t.opened_by.to_string(),
        created_at: Some(timestamp(t.created_at)),
        expires_at: Some(timestamp(t.expires_at)),
        ended_at: t.ended_at.map(timestamp),
        end_reason: t.end_reason.clone().unwrap_or_default(),
        tokens_minted: t.tokens_minted,
    }
}

pub fn token(t: &TokenRecord, now: OffsetDateTime) -> pb::TokenInfo {
    pb::TokenInfo {
        jti: t.jti.to_string(),
        task_id: t.task.to_string(),
        agent: t.agent.to_string(),
        workflow: t.workflow.clone(),
        scope: Some(scope(&t.scope)),
        kid: t.kid.clone(),
        cert_thumbprint: t.cert_thumbprint.clone(),
        issued_at: Some(timestamp(t.issued_at)),
        expires_at: Some(timestamp(t.expires_at)),
        revoked_at: t.revoked_at.map(timestamp),
        active: t.revoked_at.is_none() && t.expires_at > now,
        parent_jti: t.parent.map(|p| p.to_string()).unwrap_or_default(),
        depth: t.depth,
    }
}

/// A UUID-valued request field (a delegation or approval id).
pub fn uuid(field: &'static str, s: &str) -> Result<uuid::Uuid, Status> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(s).map_err(|_| invalid(field, format!("{} is not a UUID", quote(s))))
}

pub fn approval(a: &Approval, now: OffsetDateTime) -> pb::Approval {
    let state = match a.state_at(now) {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Used => pb::ApprovalState::Used,
        ApprovalState::Expired => pb::ApprovalState::Expired,
    };
    pb::Approval {
        id: a.id.to_string(),
        task_id: a.task.to_string(),
        requester: a.requester.to_string(),
        scope: Some(scope(&a.scope)),
        ttl_seconds: a.ttl.as_secs(),
        state: state as i32,
        workflow: a.workflow.clone(),
        objective: a.objective.clone(),
        created_at: Some(timestamp(a.created_at)),
        expires_at: Some(timestamp(a.expires_at)),
        decided_by: a
            .decided_by
            .as_ref()
            .map(SpiffeId::to_string)
            .unwrap_or_default(),
        decided_at: a.decided_at.map(timestamp),
        decision_reason: a.decision_reason.clone().unwrap_or_default(),
        used_jti: a.used_jti.map(|j| j.to_string()).unwrap_or_default(),
    }
}

pub fn minted(m: &Minted) -> pb::MintTokenResponse {
    pb::MintTokenResponse {
        token: m.token.clone(),
        jti: m.jti.to_string(),
        expires_at: Some(timestamp(m.expires_at)),
        ttl_seconds: m.ttl.as_secs(),
        approval: None,
    }
}

/// A watch stream message carrying an event.
pub fn watch_event(e: &Event) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        kind: Some(pb::watch_revocations_response::Kind::Event(event(e))),
    }
}

/// A watch stream heartbeat: everything up to `sequence` has been sent.
pub fn heartbeat(sequence: u64, at: OffsetDateTime) -> pb::WatchRevocationsResponse {
    pb::WatchRevocationsResponse {
        kind: Some(pb::watch_revocations_response::Kind::Heartbeat(
            pb::Heartbeat {
                sequence,
                at: Some(timestamp(at)),
            },
        )),
    }
}

pub fn event(e: &Event) -> pb::RevocationEvent {
    use pb::revocation_target::Target as T;
    let r = &e.revocation;
    let target = match &r.target {
        Target::Token(j) => T::Token(j.to_string()),
        Target::Task(t) => T::Task(t.to_string()),
        Target::Agent(a) => T::Agent(a.to_string()),
        Target::Workflow(w) => T::Workflow(w.clone()),
        Target::All => T::All(true),
    };
    pb::RevocationEvent {
        sequence: e.seq,
        target: Some(pb::RevocationTarget {
            target: Some(target),
        }),
        reason: r.reason.clone(),
        actor: r.actor.clone(),
        trigger: r.trigger.as_str().to_string(),
        at: Some(timestamp(r.at)),
    }
}

pub fn freeze_target(t: Option<&pb::FreezeTarget>) -> Result<FreezeTarget, Status> {
    use pb::freeze_target::Target as T;
    match t.and_then(|t| t.target.as_ref()) {
        None => Err(invalid(
            "target",
            "is required: one of agent, workflow, all",
        )),
        Some(T::Agent(a)) => spiffe_id("target.agent", a).map(FreezeTarget::Agent),
        Some(T::Workflow(w)) => workflow_name_in("target.workflow", w).map(FreezeTarget::Workflow),
        Some(T::All(true)) => Ok(FreezeTarget::All),
        Some(T::All(false)) => Err(invalid("target.all", "must be true to freeze everything")),
    }
}

pub fn freeze(f: &Freeze) -> pb::FreezeInfo {
    use pb::freeze_target::Target as T;
    let target = match &f.target {
        FreezeTarget::Agent(a) => T::Agent(a.to_string()),
        FreezeTarget::Workflow(w) => T::Workflow(w.clone()),
        FreezeTarget::All => T::All(true),
    };
    pb::FreezeInfo {
        target: Some(pb::FreezeTarget {
            target: Some(target),
        }),
        reason: f.reason.clone(),
        actor: f.actor.clone(),
        at: Some(timestamp(f.at)),
    }
}

/// An optional time in the request field `field`.
pub fn time_opt(
    field: &'static str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<OffsetDateTime>, Status> {
    let Some(t) = t else { return Ok(None) };
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(Some)
        .map_err(|_| invalid(field, "is not a valid time"))
}

pub fn audit_event(seq: u64, e: &crate::domain::audit::AuditEvent) -> pb::AuditEventInfo {
    pb::AuditEventInfo {
        sequence: seq,
        at: Some(timestamp(e.at)),
        actor: e.actor.clone(),
        action: e.action.as_str().into(),
        outcome: e.action.outcome().into(),
        task_id: e.task.map(|t| t.to_string()).unwrap_or_default(),
        agent: e.agent.clone().unwrap_or_default(),
        jti: e.jti.map(|j| j.to_string()).unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        detail_json: e.detail.to_string(),
    }
}

pub fn checkpoint(c: &crate::domain::audit::chain::Checkpoint) -> pb::AuditCheckpoint {
    pb::AuditCheckpoint {
        sequence: c.seq,
        hash: crate::domain::audit::chain::to_hex(&c.hash),
    }
}

/// A sealed event with every field its hash covers, as the store renders them.
pub fn sealed_event(e: &crate::domain::audit::chain::Sealed) -> pb::SealedAuditEvent {
    use crate::domain::audit::chain::to_hex;
    pb::SealedAuditEvent {
        sequence: e.seq,
        prev_hash: to_hex(&e.prev_hash),
        hash: to_hex(&e.hash),
        at_micros: e.at_micros,
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        task_id: e.task.clone(),
        agent: e.agent.clone(),
        jti: e.jti.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;

    /// A refusal must be INVALID_ARGUMENT naming the request field.
    fn names(r: Result<impl Sized, Status>, field: &str) -> Result<(), TestCaseError> {
        if let Err(s) = r {
            prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            prop_assert!(
                s.message().starts_with(field),
                "{:?} does not name {}",
                s.message(),
                field
            );
        }
        Ok(())
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            matching("(spiffe://e\\.org/|)[a-z0-9 /*.:-]{0,12}"),
            matching("[0-9a-f-]{36}"),
            Just(uuid::Uuid::new_v4().to_string()),
            any_text(),
        ]
    }

    fn pb_scope() -> impl Strategy<Value = pb::Scope> {
        (
            text(),
            text(),
            prop_oneof![Just("read".to_string()), Just("*".to_string()), text()],
        )
            .prop_map(|(audience, resource, action)| pb::Scope {
                audience,
                resource,
                action,
            })
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn every_request_field_is_parsed_or_refused_naming_it(
            s in text(),
            n in any::<u64>(),
            v in any::<i32>(),
            scopes in prop::collection::vec(pb_scope(), 0..3),
            scope in prop::option::of(pb_scope()),
            at in prop::option::of((any::<i64>(), any::<i32>())),
            revoke in prop::option::of(prop_oneof![
                text().prop_map(pb::revocation_target::Target::Token),
                text().prop_map(pb::revocation_target::Target::Task),
                text().prop_map(pb::revocation_target::Target::Agent),
                text().prop_map(pb::revocation_target::Target::Workflow),
                any::<bool>().prop_map(pb::revocation_target::Target::All),
            ]),
        ) {
            names(spiffe_id("agent", &s), "agent")?;
            names(task_id("task_id", &s), "task_id")?;
            names(required_text("objective", &s, 16), "objective")?;
            names(workflow_name(&s), "workflow")?;
            names(declared_scopes(&scopes), "scopes")?;
            names(requested_scope(scope.as_ref()), "scope")?;
            names(seconds("ttl_seconds", n, MAX_TTL_SECONDS), "ttl_seconds")?;
            names(limit(u32::try_from(n % (2 * u64::from(MAX_LIMIT))).unwrap_or(0)), "limit")?;
            names(task_state_filter(v), "state")?;
            let at = at.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos });
            names(time_opt("since", at.as_ref()), "since")?;
            let revoke = revoke.map(|t| pb::RevocationTarget { target: Some(t) });
            names(target(revoke.as_ref()), "target")?;
        }
    }
}

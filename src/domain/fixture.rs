//! What the unit tests of the pure rules share: a task, its agent and another,
//! a workflow's limits, and times relative to the task's opening.
use super::{Limits, Scope, SpiffeId, Task, TaskId, TaskState};
use std::sync::LazyLock;
use std::time::Duration;
use time::OffsetDateTime;

pub static AGENT: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://example.org/agent").unwrap());
pub static OTHER: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://example.org/other-agent").unwrap());
pub static ADMIN: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://example.org/admin").unwrap());

/// `secs` seconds after the task opened.
pub fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
}

pub fn read_customers() -> Scope {
    Scope::requested("crm-api", "customers/eu/42", "read").unwrap()
}

/// An active task of [`AGENT`], declaring `crm-api/customers/eu/*#read`, open
/// for an hour from `at(0)`, nothing minted yet.
pub fn task() -> Task {
    Task {
        id: TaskId::new(),
        agent: AGENT.clone(),
        workflow: "support".into(),
        objective: "answer ticket 4711".into(),
        scopes: vec![Scope::declared("crm-api", "customers/eu/*", "read").unwrap()],
        state: TaskState::Active,
        opened_by: SpiffeId::parse("spiffe://example.org/orchestrator").unwrap(),
        created_at: at(0),
        expires_at: at(3_600),
        ended_at: None,
        end_reason: None,
        tokens_minted: 0,
    }
}

/// Tokens of at most 600 s, 5 per task, delegation two deep, no step-up.
pub fn limits() -> Limits<'static> {
    Limits {
        max_token_ttl: Duration::from_secs(600),
        max_tokens: 5,
        max_delegation_depth: 2,
        step_up_actions: &[],
    }
}

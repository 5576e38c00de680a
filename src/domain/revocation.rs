//! Revocations: what one applies to, why it happened, and its place in the
//! global, gap-free sequence once recorded.
use super::TaskId;
use crate::domain::SpiffeId;
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Token(Uuid),
    Task(TaskId),
    Agent(SpiffeId),
    Workflow(String),
    All,
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Token(_) => "token",
            Target::Task(_) => "task",
            Target::Agent(_) => "agent",
            Target::Workflow(_) => "workflow",
            Target::All => "all",
        }
    }

    pub fn value(&self) -> String {
        match self {
            Target::Token(j) => j.to_string(),
            Target::Task(t) => t.to_string(),
            Target::Agent(a) => a.to_string(),
            Target::Workflow(w) => w.clone(),
            Target::All => String::new(),
        }
    }

    /// Rebuilds a stored target; `None` when the row is not a valid target.
    pub fn from_parts(kind: &str, value: &str) -> Option<Target> {
        match kind {
            "token" => Uuid::parse_str(value).ok().map(Target::Token),
            "task" => value.parse().ok().map(Target::Task),
            "agent" => SpiffeId::parse(value).ok().map(Target::Agent),
            "workflow" if !value.is_empty() => Some(Target::Workflow(value.to_string())),
            "all" => Some(Target::All),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            t => write!(f, "{} {}", t.kind(), t.value()),
        }
    }
}

/// Why the revocation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Admin,
    TaskCompleted,
    TaskExpired,
    Deviation,
    /// Its holder gave the token back before it expired (RFC 7009).
    Returned,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Admin => "admin",
            Trigger::TaskCompleted => "task_completed",
            Trigger::TaskExpired => "task_expired",
            Trigger::Deviation => "deviation",
            Trigger::Returned => "returned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Trigger::Admin,
            Trigger::TaskCompleted,
            Trigger::TaskExpired,
            Trigger::Deviation,
            Trigger::Returned,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A revocation about to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: Target,
    pub reason: String,
    pub actor: String,
    pub trigger: Trigger,
    pub at: OffsetDateTime,
}

/// A recorded revocation with its place in the global sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub revocation: Revocation,
}

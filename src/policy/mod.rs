//! The decision: may this orchestrator open this task, may this agent have this
//! scope now? Decided by Cedar policies (`cedar`), behind a trait the broker calls:
//! `load` reads a policy directory, `slice` cuts it per action and tool or
//! workflow, `request` builds what a decision is asked about, `decide` evaluates
//! it, `values` are the Cedar values in between; `cases` runs policy test cases.
pub mod cases;
mod cedar;
mod decide;
mod load;
mod request;
mod slice;
#[cfg(test)]
mod tests;
mod values;

pub use cedar::{CedarPolicy, PolicyStatus};
pub use load::{LoadError, PolicyFiles};

use crate::domain::SpiffeId;
use crate::domain::{Scope, Task};
use std::time::Duration;
use time::OffsetDateTime;

/// A refusal with the reason a caller and the audit trail will see, and the ids of
/// the policies that decided it (empty when no policy permitted).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
    pub policies: Vec<String>,
}

impl Denied {
    pub fn new(reason: impl Into<String>) -> Self {
        Denied {
            reason: reason.into(),
            policies: vec![],
        }
    }
}

/// A permit, the ids of the policies that permitted it, and the workflow's limits
/// from the same policy snapshot (so a reload between the decision and the use of
/// the limits can never mix two sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub policies: Vec<String>,
    pub limits: WorkflowLimits,
}

/// What to do when a task deviates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviationResponse {
    /// Deny, mark the task `deviated` and revoke all its tokens (the default).
    RevokeTask,
    /// Deny the request only.
    Deny,
}

/// A workflow's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowLimits {
    pub max_task_duration: Duration,
    pub max_token_ttl: Duration,
    pub max_tokens: u32,
    pub max_delegation_depth: u32,
    /// Actions whose mints wait for a security team's approval.
    pub step_up_actions: Vec<String>,
    /// Step-up requests a task may repeat while its approval is pending or after
    /// it was denied; one more is a deviation.
    pub step_up_retries: u32,
    pub deviation: DeviationResponse,
}

pub struct StartInput<'a> {
    pub orchestrator: &'a SpiffeId,
    pub agent: &'a SpiffeId,
    pub workflow: &'a str,
    pub objective: &'a str,
    pub scopes: &'a [Scope],
    pub duration: Duration,
    pub now: OffsetDateTime,
}

pub struct MintInput<'a> {
    /// The agent that will hold the token: the task's agent, or a sub-agent
    /// redeeming a delegation.
    pub agent: &'a SpiffeId,
    pub task: &'a Task,
    pub scope: &'a Scope,
    pub requested_ttl: Duration,
    /// 0 for a token minted directly; a delegated token's depth in the chain.
    pub delegation_depth: u32,
    pub now: OffsetDateTime,
}

pub trait Policy: Send + Sync + 'static {
    /// The limits of a workflow, `None` if it is not defined.
    fn workflow(&self, name: &str) -> Option<WorkflowLimits>;
    fn decide_start(&self, input: &StartInput<'_>) -> Result<Permit, Denied>;
    fn decide_mint(&self, input: &MintInput<'_>) -> Result<Permit, Denied>;
    /// The longest TTL any token may get: signing keys stay published that long.
    fn longest_token_ttl(&self) -> Duration;
    /// Whether a decision may read how many tokens a task has recorded, which
    /// changes with every mint (a task's other facts do not): when it may, the
    /// broker reads the task afresh for each mint.
    fn reads_token_count(&self) -> bool {
        true
    }
}

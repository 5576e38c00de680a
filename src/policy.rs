//! The decision: may this orchestrator open this task, may this agent have this
//! scope now? Behind a trait so that Cedar can replace the config-file workflows.
use crate::domain::{Scope, Task};
use crate::identity::{IdPattern, SpiffeId};
use std::time::Duration;

/// A named, approved envelope for a kind of task.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub agents: Vec<IdPattern>,
    pub scopes: Vec<Scope>,
    pub max_task_duration: Duration,
    pub max_token_ttl: Duration,
    pub max_tokens: u32,
}

/// A refusal with the reason a caller and the audit trail will see.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
}

fn deny(reason: impl Into<String>) -> Denied {
    Denied {
        reason: reason.into(),
    }
}

pub struct StartInput<'a> {
    pub orchestrator: &'a SpiffeId,
    pub agent: &'a SpiffeId,
    pub workflow: &'a str,
    pub scopes: &'a [Scope],
    pub duration: Duration,
}

pub struct MintInput<'a> {
    pub agent: &'a SpiffeId,
    pub task: &'a Task,
    pub scope: &'a Scope,
    pub requested_ttl: Duration,
}

/// What the policy allows a mint: the longest TTL and the task's token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintLimits {
    pub max_token_ttl: Duration,
    pub max_tokens: u32,
}

pub trait Policy: Send + Sync + 'static {
    fn decide_start(&self, input: &StartInput<'_>) -> Result<(), Denied>;
    fn decide_mint(&self, input: &MintInput<'_>) -> Result<MintLimits, Denied>;
    /// The longest TTL any token may get: signing keys stay published that long.
    fn longest_token_ttl(&self) -> Duration;
}

/// Workflows from the config file.
pub struct WorkflowPolicy {
    workflows: Vec<Workflow>,
}

impl WorkflowPolicy {
    pub fn new(workflows: Vec<Workflow>) -> Self {
        WorkflowPolicy { workflows }
    }

    fn workflow(&self, name: &str) -> Result<&Workflow, Denied> {
        self.workflows
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| deny(format!("workflow {name:?} is not defined")))
    }
}

impl Policy for WorkflowPolicy {
    fn decide_start(&self, input: &StartInput<'_>) -> Result<(), Denied> {
        let wf = self.workflow(input.workflow)?;
        if !wf.agents.iter().any(|p| p.matches(input.agent)) {
            return Err(deny(format!(
                "agent {} may not run workflow {:?}",
                input.agent, wf.name
            )));
        }
        if input.duration > wf.max_task_duration {
            return Err(deny(format!(
                "duration {}s exceeds workflow {:?} maximum of {}s",
                input.duration.as_secs(),
                wf.name,
                wf.max_task_duration.as_secs()
            )));
        }
        for s in input.scopes {
            if !wf.scopes.iter().any(|w| w.covers(s)) {
                return Err(deny(format!("scope {s} is outside workflow {:?}", wf.name)));
            }
        }
        Ok(())
    }

    fn decide_mint(&self, input: &MintInput<'_>) -> Result<MintLimits, Denied> {
        let wf = self.workflow(&input.task.workflow)?;
        if !wf.agents.iter().any(|p| p.matches(input.agent)) {
            return Err(deny(format!(
                "agent {} may no longer run workflow {:?}",
                input.agent, wf.name
            )));
        }
        if !wf.scopes.iter().any(|w| w.covers(input.scope)) {
            return Err(deny(format!(
                "scope {} is outside workflow {:?}",
                input.scope, wf.name
            )));
        }
        Ok(MintLimits {
            max_token_ttl: wf.max_token_ttl,
            max_tokens: wf.max_tokens,
        })
    }

    fn longest_token_ttl(&self) -> Duration {
        self.workflows
            .iter()
            .map(|w| w.max_token_ttl)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> WorkflowPolicy {
        WorkflowPolicy::new(vec![Workflow {
            name: "support".into(),
            agents: vec![IdPattern::parse("spiffe://example.org/agent/*").unwrap()],
            scopes: vec![Scope::declared("crm-api", "customers/eu/**", "read").unwrap()],
            max_task_duration: Duration::from_secs(3600),
            max_token_ttl: Duration::from_secs(300),
            max_tokens: 5,
        }])
    }

    fn start(agent: &str, wf: &str, scope: &str, secs: u64) -> Result<(), Denied> {
        let orch = SpiffeId::parse("spiffe://example.org/orch").unwrap();
        let agent = SpiffeId::parse(agent).unwrap();
        let scopes = [Scope::declared("crm-api", scope, "read").unwrap()];
        policy().decide_start(&StartInput {
            orchestrator: &orch,
            agent: &agent,
            workflow: wf,
            scopes: &scopes,
            duration: Duration::from_secs(secs),
        })
    }

    #[test]
    fn a_task_inside_the_envelope_is_permitted() {
        assert_eq!(
            start(
                "spiffe://example.org/agent/a",
                "support",
                "customers/eu/1",
                60
            ),
            Ok(())
        );
    }

    #[test]
    fn each_envelope_breach_is_denied_with_its_reason() {
        let a = "spiffe://example.org/agent/a";
        assert!(
            start(a, "nope", "customers/eu/1", 60)
                .unwrap_err()
                .reason
                .contains("not defined")
        );
        assert!(
            start(
                "spiffe://example.org/other/a",
                "support",
                "customers/eu/1",
                60
            )
            .unwrap_err()
            .reason
            .contains("may not run workflow")
        );
        assert!(
            start(a, "support", "customers/us/1", 60)
                .unwrap_err()
                .reason
                .contains("outside workflow")
        );
        assert!(
            start(a, "support", "customers/eu/1", 7200)
                .unwrap_err()
                .reason
                .contains("exceeds")
        );
    }
}

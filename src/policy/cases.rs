//! `mayfly policy test`: decision cases for policy authors. Each case names a
//! principal, an action, a resource and context, and the decision it expects.
use super::{CedarPolicy, MintInput, StartInput};
use crate::cli::PolicyCommand;
use crate::domain::{Scope, Task, TaskId, TaskState};
use crate::identity::SpiffeId;
use serde::Deserialize;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
    /// Permitted, but the action waits for a security team's approval.
    #[serde(rename = "step_up")]
    StepUp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An orchestrator opens a task (with its declared scopes).
    Start,
    /// An agent mints a token in a task.
    Mint,
}

/// One decision to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub action: Kind,
    /// The orchestrator (start) or the agent (mint): a SPIFFE ID.
    pub principal: String,
    pub workflow: String,
    /// start: the agent the task is for.
    pub agent: Option<String>,
    /// start: declared scopes, each "<audience> <resource> <action>".
    #[serde(default)]
    pub scopes: Vec<String>,
    /// start: the task's duration.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// mint: the requested scope.
    pub scope: Option<String>,
    /// mint: the requested TTL.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// mint: tokens the task has minted already.
    #[serde(default)]
    pub tokens_minted: u32,
    /// mint: the token's delegation depth (0, the default, for a token the task's
    /// agent mints itself; the principal is then a sub-agent).
    #[serde(default)]
    pub depth: u32,
    /// mint: how long the task has been running.
    #[serde(default, with = "humantime_serde")]
    pub task_age: Option<Duration>,
    /// `context.environment`; default the one given to `mayfly policy test`.
    pub environment: Option<String>,
    /// The time of the request (RFC 3339); default now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub now: Option<OffsetDateTime>,
    pub expect: Expect,
    /// When set, a denial's reason must contain this text.
    pub reason_contains: Option<String>,
}

/// The outcome of one case: `None` when it matched, else what differed.
pub fn run_case(
    policy: &CedarPolicy,
    environment: &str,
    c: &Case,
) -> Result<Option<String>, String> {
    let environment = c.environment.as_deref().unwrap_or(environment);
    let now = c.now.unwrap_or_else(OffsetDateTime::now_utc);
    let principal = SpiffeId::parse(&c.principal).map_err(|e| format!("principal: {e}"))?;
    let scope = |s: &str| -> Result<Scope, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        match parts.as_slice() {
            [a, r, x] => Scope::declared(*a, *r, *x).map_err(|e| format!("scope {s:?}: {e}")),
            _ => Err(format!(
                "scope {s:?} must be \"<audience> <resource> <action>\""
            )),
        }
    };
    let result = match c.action {
        Kind::Start => {
            let agent = SpiffeId::parse(c.agent.as_deref().ok_or("agent is required for start")?)
                .map_err(|e| format!("agent: {e}"))?;
            let scopes = c
                .scopes
                .iter()
                .map(|s| scope(s))
                .collect::<Result<Vec<_>, _>>()?;
            policy.start_in(
                environment,
                &StartInput {
                    orchestrator: &principal,
                    agent: &agent,
                    workflow: &c.workflow,
                    objective: &c.name,
                    scopes: &scopes,
                    duration: c.duration.unwrap_or(Duration::from_secs(600)),
                    now,
                },
            )
        }
        Kind::Mint => {
            let requested = scope(c.scope.as_deref().ok_or("scope is required for mint")?)?;
            let age = c.task_age.unwrap_or_default();
            let task = Task {
                id: TaskId::new(),
                agent: principal.to_string(),
                workflow: c.workflow.clone(),
                objective: c.name.clone(),
                scopes: vec![requested.clone()],
                state: TaskState::Active,
                opened_by: "spiffe://mayfly.invalid/policy-test".into(),
                created_at: now - age,
                expires_at: now + Duration::from_secs(3600),
                ended_at: None,
                end_reason: None,
                tokens_minted: c.tokens_minted,
            };
            policy.mint_in(
                environment,
                &MintInput {
                    agent: &principal,
                    task: &task,
                    scope: &requested,
                    requested_ttl: c.ttl.unwrap_or(Duration::from_secs(300)),
                    delegation_depth: c.depth,
                    now,
                },
            )
        }
    };
    let step_up = |p: &super::Permit| {
        c.scope.as_deref().is_some_and(|s| {
            s.split_whitespace()
                .nth(2)
                .is_some_and(|a| p.limits.step_up_actions.iter().any(|x| x == a))
        }) && c.action == Kind::Mint
    };
    Ok(match (c.expect, result) {
        (Expect::Allow, Ok(p)) if step_up(&p) => Some(format!(
            "expected allow, got step_up (permitted by {}, but the workflow's step_up_actions hold the action)",
            p.policies.join(", ")
        )),
        (Expect::StepUp, Ok(p)) if !step_up(&p) => Some(format!(
            "expected step_up, got allow by {} without approval",
            p.policies.join(", ")
        )),
        (Expect::Allow | Expect::StepUp, Ok(_)) => None,
        (Expect::Allow | Expect::StepUp, Err(d)) => Some(format!(
            "expected {}, got deny: {}",
            if c.expect == Expect::Allow {
                "allow"
            } else {
                "step_up"
            },
            d.reason
        )),
        (Expect::Deny, Ok(p)) => Some(format!(
            "expected deny, got allow by {}",
            p.policies.join(", ")
        )),
        (Expect::Deny, Err(d)) => match &c.reason_contains {
            Some(want) if !d.reason.contains(want.as_str()) => Some(format!(
                "denied as expected, but the reason {:?} lacks {want:?}",
                d.reason
            )),
            _ => None,
        },
    })
}

/// `mayfly policy validate|test`: prints its report and returns the exit code
/// (0 valid / every case passed, 1 some case mismatched, 2 could not run: an
/// invalid policy set or cases file).
pub fn run_command(cmd: &PolicyCommand) -> u8 {
    match cmd {
        PolicyCommand::Validate { dir } => match CedarPolicy::load(dir, "validate") {
            Ok(p) => {
                println!("{}: {} policies valid", dir.display(), p.status().policies);
                0
            }
            Err(e) => {
                eprintln!("error: {} is not a valid policy set:\n{e}", dir.display());
                2
            }
        },
        PolicyCommand::Test {
            dir,
            cases,
            environment,
        } => {
            let policy = match CedarPolicy::load(dir, environment) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {} is not a valid policy set:\n{e}", dir.display());
                    return 2;
                }
            };
            let set: CaseFile = match std::fs::read_to_string(cases)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {} is not a valid cases file: {e}", cases.display());
                    return 2;
                }
            };
            let mut failed = 0;
            for c in &set.cases {
                match run_case(&policy, environment, c) {
                    Ok(None) => println!("ok    {}", c.name),
                    Ok(Some(diff)) => {
                        failed += 1;
                        println!("FAIL  {}\n      {diff}", c.name);
                    }
                    Err(e) => {
                        failed += 1;
                        println!("ERROR {}\n      {e}", c.name);
                    }
                }
            }
            let total = set.cases.len();
            println!("{total} cases, {} passed, {failed} failed", total - failed);
            u8::from(failed > 0)
        }
    }
}

//! The mint decision: whether a holder gets a token of a task for a scope, for
//! how long, and whether the action waits for a step-up approval.
//!
//! The policy decision (Cedar, a layer above) sits between its two halves:
//! [`admit`] before it (owner, state, deadline, the scope covered by the task),
//! [`Admitted::grant`] after it, with the limits of the policy snapshot that
//! decided (budget; lifetime bounded by the request, the workflow, the task and
//! the certificate; step-up). Each refusal is a [`Refusal`]; the order of the
//! checks is the order in which a request learns what is wrong with it.
use super::refusal::Refusal;
use super::{Scope, SpiffeId, Task, grant_ttl};
use std::time::Duration;
use time::OffsetDateTime;

/// A workflow's limits, as the policy decision that permitted a request saw
/// them.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub max_token_ttl: Duration,
    pub max_tokens: u32,
    pub max_delegation_depth: u32,
    /// Actions that need a security team's approval, token by token.
    pub step_up_actions: &'a [String],
}

impl Limits<'_> {
    /// Whether `scope`'s action waits for a step-up approval.
    pub fn needs_step_up(&self, scope: &Scope) -> bool {
        self.step_up_actions.contains(&scope.action)
    }
}

/// What a holder asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub holder: &'a SpiffeId,
    pub scope: &'a Scope,
    pub ttl: Duration,
    /// When the holder's certificate expires (Unix seconds): a token bound to it
    /// never outlives it.
    pub cert_valid_until: i64,
}

/// A request that passed the checks before the policy decision.
#[derive(Debug)]
pub struct Admitted<'a> {
    task: &'a Task,
    ask: Ask<'a>,
    now: OffsetDateTime,
}

/// What a permitted mint gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whole seconds, at least one.
    pub ttl: Duration,
    /// The token waits for (or spends) a step-up approval.
    pub step_up: bool,
}

/// The checks before the policy decision: the task is the holder's, active,
/// within its deadline, and declares a scope covering the one asked for (outside
/// them the request is a deviation).
pub fn admit<'a>(
    task: &'a Task,
    ask: Ask<'a>,
    now: OffsetDateTime,
) -> Result<Admitted<'a>, Refusal> {
    if task.agent != *ask.holder {
        return Err(Refusal::NotOwner { task: task.id });
    }
    task.mintable(now)?;
    if task.covering_scope(ask.scope).is_none() {
        return Err(Refusal::OutOfScope {
            task: task.id,
            scope: ask.scope.clone(),
            delegated: false,
        });
    }
    Ok(Admitted { task, ask, now })
}

impl Admitted<'_> {
    /// The checks after the policy decision, with its `limits`: one more token
    /// fits the budget (beyond it the request is a deviation); at least a second
    /// is left of the least of the request, the workflow's longest TTL, the
    /// task's remaining time and the certificate's; and whether the action needs
    /// step-up.
    pub fn grant(&self, limits: &Limits<'_>) -> Result<Grant, Refusal> {
        let (task, ask, now) = (self.task, &self.ask, self.now);
        task.within_budget(limits.max_tokens)?;
        let left = task
            .remaining(now)
            .min(cert_left(ask.cert_valid_until, now));
        let Some(ttl) = grant_ttl(ask.ttl, limits.max_token_ttl, left) else {
            return Err(Refusal::NoTimeLeft { task: task.id });
        };
        Ok(Grant {
            ttl,
            step_up: limits.needs_step_up(ask.scope),
        })
    }
}

/// Time left at `now` of a certificate valid until `valid_until` (Unix seconds),
/// in whole seconds; zero once it expired.
pub fn cert_left(valid_until: i64, now: OffsetDateTime) -> Duration {
    Duration::from_secs(u64::try_from(valid_until - now.unix_timestamp()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixture::{AGENT, OTHER, at, limits, read_customers, task};
    use crate::domain::{TaskClosed, TaskState};

    fn ask<'a>(holder: &'a SpiffeId, scope: &'a Scope, ttl: u64) -> Ask<'a> {
        Ask {
            holder,
            scope,
            ttl: Duration::from_secs(ttl),
            cert_valid_until: at(3_600).unix_timestamp(),
        }
    }

    fn decide(task: &Task, ask: Ask<'_>, now: OffsetDateTime) -> Result<Grant, Refusal> {
        let steps = ["delete".to_string()];
        admit(task, ask, now)?.grant(&Limits {
            step_up_actions: &steps,
            ..limits()
        })
    }

    #[test]
    fn a_covered_request_by_the_tasks_agent_gets_the_ttl_it_asked_for() {
        let (t, scope) = (task(), read_customers());
        let grant = decide(&t, ask(&AGENT, &scope, 300), at(0)).unwrap();
        assert_eq!(grant.ttl, Duration::from_secs(300));
        assert!(!grant.step_up);
    }

    #[test]
    fn mint_is_refused_when_the_task_belongs_to_another_agent() {
        let (t, scope) = (task(), read_customers());
        assert_eq!(
            decide(&t, ask(&OTHER, &scope, 300), at(0)),
            Err(Refusal::NotOwner { task: t.id })
        );
    }

    #[test]
    fn mint_is_refused_when_the_task_is_no_longer_active_or_past_its_deadline() {
        let (mut t, scope) = (task(), read_customers());
        assert_eq!(
            decide(&t, ask(&AGENT, &scope, 300), t.expires_at),
            Err(TaskClosed::PastDeadline { task: t.id }.into())
        );
        t.state = TaskState::Completed;
        assert_eq!(
            decide(&t, ask(&AGENT, &scope, 300), at(0)),
            Err(TaskClosed::NotActive {
                task: t.id,
                state: TaskState::Completed
            }
            .into())
        );
    }

    #[test]
    fn ownership_is_judged_before_the_tasks_state() {
        let (mut t, scope) = (task(), read_customers());
        t.state = TaskState::Revoked;
        assert_eq!(
            decide(&t, ask(&OTHER, &scope, 300), at(0)),
            Err(Refusal::NotOwner { task: t.id })
        );
    }

    #[test]
    fn a_scope_outside_the_task_is_a_deviation() {
        let t = task();
        let wider = Scope::requested("crm-api", "customers/us/1", "read").unwrap();
        let refused = decide(&t, ask(&AGENT, &wider, 300), at(0)).unwrap_err();
        assert_eq!(
            refused,
            Refusal::OutOfScope {
                task: t.id,
                scope: wider,
                delegated: false
            }
        );
        assert!(refused.is_deviation());
    }

    #[test]
    fn a_task_at_its_budget_is_refused_as_a_deviation() {
        let (mut t, scope) = (task(), read_customers());
        t.tokens_minted = limits().max_tokens;
        let refused = decide(&t, ask(&AGENT, &scope, 300), at(0)).unwrap_err();
        assert_eq!(
            refused,
            Refusal::OutOfBudget {
                task: t.id,
                max: limits().max_tokens
            }
        );
        assert!(refused.is_deviation());
    }

    #[test]
    fn the_ttl_is_bounded_by_the_workflow_the_task_and_the_certificate() {
        let (t, scope) = (task(), read_customers());
        let s = Duration::from_secs;
        // The workflow allows 600 s.
        assert_eq!(
            decide(&t, ask(&AGENT, &scope, 900), at(0)).unwrap().ttl,
            s(600)
        );
        // The task ends at 3 600 s.
        assert_eq!(
            decide(&t, ask(&AGENT, &scope, 900), at(3_400)).unwrap().ttl,
            s(200)
        );
        // The certificate ends at 100 s.
        let short = Ask {
            cert_valid_until: at(100).unix_timestamp(),
            ..ask(&AGENT, &scope, 900)
        };
        assert_eq!(decide(&t, short, at(0)).unwrap().ttl, s(100));
    }

    #[test]
    fn less_than_a_second_left_of_the_task_or_the_certificate_mints_nothing() {
        let (t, scope) = (task(), read_customers());
        let expired = Ask {
            cert_valid_until: at(0).unix_timestamp(),
            ..ask(&AGENT, &scope, 900)
        };
        assert_eq!(
            decide(&t, expired, at(0)),
            Err(Refusal::NoTimeLeft { task: t.id })
        );
        let almost = t.expires_at - time::Duration::milliseconds(500);
        assert_eq!(
            decide(&t, ask(&AGENT, &scope, 900), almost),
            Err(Refusal::NoTimeLeft { task: t.id })
        );
    }

    #[test]
    fn the_budget_is_judged_before_the_lifetime() {
        let (mut t, scope) = (task(), read_customers());
        t.tokens_minted = limits().max_tokens;
        let expired = Ask {
            cert_valid_until: at(0).unix_timestamp(),
            ..ask(&AGENT, &scope, 900)
        };
        assert!(matches!(
            decide(&t, expired, at(0)),
            Err(Refusal::OutOfBudget { .. })
        ));
    }

    #[test]
    fn a_step_up_action_is_granted_as_waiting_for_approval() {
        let t = task();
        let delete = Scope::requested("crm-api", "customers/eu/1", "delete").unwrap();
        let mut declared = t.clone();
        declared.scopes.push(delete.clone());
        let grant = decide(&declared, ask(&AGENT, &delete, 60), at(0)).unwrap();
        assert!(grant.step_up);
        assert_eq!(grant.ttl, Duration::from_secs(60));
    }
}

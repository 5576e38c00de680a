//! Tasks: identifiers, the state machine, whether a task mints, and how long a
//! token of a task may live.
use super::refusal::Refusal;
use super::{Freeze, Scope, SpiffeId, TaskClosed};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// A task's identifier: a random UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn new() -> Self {
        TaskId(Uuid::new_v4())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `active` → `completed` | `expired` | `deviated` | `revoked`; the four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Active,
    Completed,
    Expired,
    Deviated,
    Revoked,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("task is {from}, a final state; it cannot become {to}")]
pub struct TransitionError {
    pub from: TaskState,
    pub to: TaskState,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Active,
        TaskState::Completed,
        TaskState::Expired,
        TaskState::Deviated,
        TaskState::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Expired => "expired",
            TaskState::Deviated => "deviated",
            TaskState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != TaskState::Active
    }

    /// The only legal moves are from `active` to a final state.
    pub fn transition(self, to: TaskState) -> Result<TaskState, TransitionError> {
        if self == TaskState::Active && to.is_terminal() {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub agent: SpiffeId,
    pub workflow: String,
    pub objective: String,
    pub scopes: Vec<Scope>,
    pub state: TaskState,
    pub opened_by: SpiffeId,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    pub tokens_minted: u32,
}

impl Task {
    /// The declared scope that covers `requested`, if any.
    pub fn covering_scope(&self, requested: &Scope) -> Option<&Scope> {
        self.scopes.iter().find(|s| s.covers(requested))
    }

    /// Whether `orchestrator` may end the task as `to` (complete it, or report it
    /// deviated): only the one that opened it.
    pub fn endable_by(&self, orchestrator: &SpiffeId, to: TaskState) -> Result<(), Refusal> {
        if self.opened_by != *orchestrator {
            return Err(Refusal::NotOpener {
                task: self.id,
                opened_by: self.opened_by.clone(),
                to,
            });
        }
        Ok(())
    }

    /// Whether the task mints at `now`: only while active and before its deadline.
    pub fn mintable(&self, now: OffsetDateTime) -> Result<(), TaskClosed> {
        if self.state != TaskState::Active {
            return Err(TaskClosed::NotActive {
                task: self.id,
                state: self.state,
            });
        }
        if self.expires_at <= now {
            return Err(TaskClosed::PastDeadline { task: self.id });
        }
        Ok(())
    }

    /// Whether anything may be issued in the task at `now`: it mints, and no
    /// freeze (`frozen`, the one covering it, if any) stops issuance.
    pub fn issuable(&self, frozen: Option<&Freeze>, now: OffsetDateTime) -> Result<(), Refusal> {
        self.mintable(now)?;
        match frozen {
            Some(f) => Err(Refusal::Frozen(f.clone())),
            None => Ok(()),
        }
    }

    /// Whether one more token fits the budget of `max` tokens.
    pub fn within_budget(&self, max: u32) -> Result<(), Refusal> {
        if self.tokens_minted >= max {
            return Err(Refusal::OutOfBudget { task: self.id, max });
        }
        Ok(())
    }

    /// Time left before the task's deadline (zero once past it).
    pub fn remaining(&self, now: OffsetDateTime) -> Duration {
        let left = self.expires_at - now;
        if left.is_negative() {
            Duration::ZERO
        } else {
            left.unsigned_abs()
        }
    }
}

/// A token's lifetime: the least of what was asked, the workflow's maximum and the
/// task's remaining time, in whole seconds. `None` when less than a second is left.
pub fn grant_ttl(
    requested: Duration,
    workflow_max: Duration,
    remaining: Duration,
) -> Option<Duration> {
    let secs = requested.min(workflow_max).min(remaining).as_secs();
    (secs >= 1).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_task_can_move_and_only_to_a_final_state() {
        for to in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(TaskState::Active.transition(to), Ok(to));
            for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
                assert!(from.transition(to).is_err(), "{from} -> {to}");
                assert!(from.transition(TaskState::Active).is_err());
            }
        }
        assert!(TaskState::Active.transition(TaskState::Active).is_err());
    }

    #[test]
    fn state_names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::parse("paused"), None);
    }

    #[test]
    fn ttl_is_the_least_of_request_workflow_and_task() {
        let s = Duration::from_secs;
        assert_eq!(grant_ttl(s(300), s(600), s(3600)), Some(s(300)));
        assert_eq!(grant_ttl(s(900), s(600), s(3600)), Some(s(600)));
        assert_eq!(grant_ttl(s(900), s(600), s(120)), Some(s(120)));
        assert_eq!(
            grant_ttl(s(900), s(600), Duration::from_millis(1500)),
            Some(s(1))
        );
        assert_eq!(grant_ttl(s(900), s(600), Duration::from_millis(999)), None);
        assert_eq!(grant_ttl(s(900), s(600), Duration::ZERO), None);
    }

    #[test]
    fn remaining_time_never_goes_negative() {
        let now = OffsetDateTime::now_utc();
        let task = Task {
            id: TaskId::new(),
            agent: SpiffeId::parse("spiffe://example.org/agent").unwrap(),
            workflow: "wf".into(),
            objective: "o".into(),
            scopes: vec![],
            state: TaskState::Active,
            opened_by: SpiffeId::parse("spiffe://example.org/orch").unwrap(),
            created_at: now,
            expires_at: now + time::Duration::seconds(10),
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        };
        assert_eq!(task.remaining(now), Duration::from_secs(10));
        assert_eq!(
            task.remaining(now + time::Duration::seconds(11)),
            Duration::ZERO
        );
    }

    #[test]
    fn only_the_orchestrator_that_opened_a_task_completes_it_or_reports_it_deviated() {
        use crate::domain::fixture::{AGENT, task};
        let t = task();
        let opener = t.opened_by.clone();
        for (to, may) in [
            (TaskState::Completed, "complete it"),
            (TaskState::Deviated, "report it deviated"),
        ] {
            assert_eq!(t.endable_by(&opener, to), Ok(()));
            let refused = t.endable_by(&AGENT, to).unwrap_err();
            assert_eq!(
                refused.to_string(),
                format!(
                    "task {} was opened by {}; only that orchestrator may {may}",
                    t.id, t.opened_by
                )
            );
        }
    }

    #[test]
    fn a_frozen_task_issues_nothing_and_its_closure_is_named_first() {
        use crate::domain::FreezeTarget;
        use crate::domain::fixture::{at, task};
        let mut t = task();
        let freeze = Freeze {
            target: FreezeTarget::All,
            reason: "incident 7".into(),
            actor: "spiffe://example.org/admin".into(),
            at: at(0),
        };
        assert_eq!(t.issuable(None, at(10)), Ok(()));
        let frozen = t.issuable(Some(&freeze), at(10)).unwrap_err();
        assert_eq!(
            frozen.to_string(),
            "issuance is frozen for all issuance by spiffe://example.org/admin since 2023-11-14T22:13:20Z: incident 7"
        );
        t.state = TaskState::Expired;
        assert_eq!(
            t.issuable(Some(&freeze), at(10)),
            Err(TaskClosed::NotActive {
                task: t.id,
                state: TaskState::Expired
            }
            .into())
        );
    }

    #[test]
    fn the_last_token_of_a_budget_fits_and_the_next_is_a_deviation() {
        use crate::domain::fixture::task;
        let mut t = task();
        t.tokens_minted = 4;
        assert_eq!(t.within_budget(5), Ok(()));
        t.tokens_minted = 5;
        let over = t.within_budget(5).unwrap_err();
        assert!(over.is_deviation());
        assert_eq!(
            over.to_string(),
            format!("deviation: task {} exceeded its budget of 5 tokens", t.id)
        );
    }
}

//! What a mint knows of its task before its write, without asking the store
//! each time: the facts a task never changes (agent, workflow, objective,
//! declared scopes, opener, opening and deadline), held once read while the
//! task is active. What can change (its state, the tokens it has recorded,
//! freezes) is never taken from here: the token's write judges it on the
//! stored row and names why it refused, and a refusal that says the task is
//! gone or closed drops it from here.
use crate::domain::{Task, TaskId, TaskState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// Tasks held at most: past it, those past their deadline go, then all (the
/// next mint of each reads its task again). A task is a few hundred bytes.
const CAPACITY: usize = 16_384;

#[derive(Default)]
pub(super) struct TaskFacts {
    held: Mutex<HashMap<TaskId, Arc<Task>>>,
}

impl TaskFacts {
    /// The task `id` as first read, if held and before its deadline at `now`.
    pub fn get(&self, id: TaskId, now: OffsetDateTime) -> Option<Arc<Task>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(&id) {
            Some(t) if t.expires_at > now => Some(Arc::clone(t)),
            Some(_) => {
                held.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Holds `task` if it is active (a closed task never opens again: its
    /// mints are refused on what the store says).
    pub fn hold(&self, task: Arc<Task>, now: OffsetDateTime) {
        if task.state != TaskState::Active || task.expires_at <= now {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= CAPACITY {
            held.retain(|_, t| t.expires_at > now);
            if held.len() >= CAPACITY {
                held.clear();
            }
        }
        held.insert(task.id, task);
    }

    /// Forgets `id`: it ended, or the store says it is not there.
    pub fn forget(&self, id: TaskId) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Scope, SpiffeId};
    use time::Duration;

    fn task(state: TaskState, deadline: OffsetDateTime) -> Arc<Task> {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        Arc::new(Task {
            id: TaskId(uuid::Uuid::new_v4()),
            agent: id("spiffe://example.org/agent/a1"),
            workflow: "support".into(),
            objective: "answer ticket 4711".into(),
            scopes: vec![Scope::declared("crm-api", "customers/eu/*", "read").unwrap()],
            state,
            opened_by: id("spiffe://example.org/orchestrator/o1"),
            created_at: deadline - Duration::minutes(10),
            expires_at: deadline,
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        })
    }

    #[test]
    fn only_active_tasks_are_held_and_only_until_their_deadline() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let facts = TaskFacts::default();
        let open = task(TaskState::Active, now + Duration::minutes(5));
        let done = task(TaskState::Completed, now + Duration::minutes(5));
        facts.hold(open.clone(), now);
        facts.hold(done.clone(), now);
        assert!(facts.get(open.id, now).is_some());
        assert!(
            facts.get(done.id, now).is_none(),
            "a closed task is read again"
        );
        assert!(
            facts.get(open.id, now + Duration::minutes(5)).is_none(),
            "past its deadline a task is read again"
        );
        facts.hold(open.clone(), now);
        facts.forget(open.id);
        assert!(facts.get(open.id, now).is_none());
    }

    #[test]
    fn a_full_cache_drops_what_is_past_its_deadline_then_everything() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let facts = TaskFacts::default();
        let soon = now + Duration::seconds(1);
        for _ in 0..CAPACITY {
            facts.hold(task(TaskState::Active, soon), now);
        }
        let later = now + Duration::seconds(2);
        let kept = task(TaskState::Active, later + Duration::minutes(5));
        facts.hold(kept.clone(), later);
        let held = facts.held.lock().unwrap().len();
        assert_eq!(held, 1, "the tasks past their deadline made room");
        for _ in 0..CAPACITY {
            facts.hold(task(TaskState::Active, later + Duration::minutes(5)), later);
        }
        assert!(facts.held.lock().unwrap().len() <= CAPACITY);
    }
}

//! The tasks workers mint in: opened as the orchestrator (`StartTask` on one
//! kept connection; an opening is not a mint and is not timed), each replaced
//! before its budget or its time runs out. A task is one worker's own, or one
//! for all workers (`TaskPlan::shared`); either way it sits in a [`Slot`] that
//! hands out a ticket per mint. Replaced tasks are left to reach their deadline:
//! the bench's load is mints and task openings, nothing else.
use crate::api::pb;
use crate::api::pb::task_service_client::TaskServiceClient;
use crate::domain::Scope;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The tasks of a run.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub workflow: String,
    /// The task's one declared scope; every mint asks for a resource under it.
    pub scope: Scope,
    /// How long each task is opened for.
    pub duration: Duration,
    /// Mints per task before it is replaced: the workflow's `max_tokens`. A
    /// mint past it is a deviation that revokes the task, so the bench stays
    /// within it, and a refusal for budget lowers it.
    pub budget: u64,
    /// One task for every worker instead of one each (mints of one task are
    /// serialised on its budget row: this measures that).
    pub shared: bool,
    pub objective: String,
}

/// The shortest task the bench opens: a task is replaced a quarter of its
/// time (at most 30 s) before its deadline, so that no token is cut short.
pub const MIN_TASK: Duration = Duration::from_secs(10);

impl TaskPlan {
    /// The resource a mint labelled `label` asks for: the declared pattern
    /// with every `*` and `**` segment filled in by the label, so that every
    /// token names its own resource and all are covered by the declaration.
    pub fn resource(&self, label: &str) -> String {
        self.scope
            .resource
            .split('/')
            .map(|seg| match seg {
                "*" | "**" => label,
                literal => literal,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn margin(&self) -> Duration {
        (self.duration / 4).min(Duration::from_secs(30))
    }
}

/// Opens tasks as the orchestrator, and holds the budget the run goes by.
pub(super) struct Opener {
    client: TaskServiceClient<Channel>,
    request: pb::StartTaskRequest,
    budget: AtomicU64,
    /// How long before its deadline a task is replaced.
    lifetime: Duration,
}

impl Opener {
    pub fn new(orchestrator: Channel, plan: &TaskPlan, agent: &str) -> Self {
        Opener {
            client: TaskServiceClient::new(orchestrator),
            request: pb::StartTaskRequest {
                agent: agent.to_string(),
                workflow: plan.workflow.clone(),
                objective: plan.objective.clone(),
                scopes: vec![pb::Scope {
                    audience: plan.scope.audience.clone(),
                    resource: plan.scope.resource.clone(),
                    action: plan.scope.action.clone(),
                }],
                duration_seconds: plan.duration.as_secs(),
            },
            budget: AtomicU64::new(plan.budget.max(1)),
            lifetime: plan.duration.saturating_sub(plan.margin()),
        }
    }

    async fn open(&self) -> Result<Arc<str>, tonic::Status> {
        let task = self
            .client
            .clone()
            .start_task(self.request.clone())
            .await?
            .into_inner()
            .task
            .ok_or_else(|| tonic::Status::internal("StartTask answered no task"))?;
        Ok(task.id.into())
    }

    fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }
}

/// The task a worker (or all of them) mints in, replaced when spent.
pub(super) struct Slot(tokio::sync::Mutex<Current>);

#[derive(Default)]
struct Current {
    task: Option<Arc<str>>,
    /// Tickets handed out under it.
    issued: u64,
    replace_at: Option<Instant>,
}

impl Current {
    async fn open(&mut self, opener: &Opener) -> Result<Arc<str>, tonic::Status> {
        let task = opener.open().await?;
        *self = Current {
            task: Some(task.clone()),
            issued: 0,
            replace_at: Some(Instant::now() + opener.lifetime),
        };
        Ok(task)
    }
}

/// A mint's place in its task.
pub(super) struct Ticket {
    pub task: Arc<str>,
    /// Mints asked for in the task before this one.
    pub number: u64,
    /// This ticket's task was opened for it.
    pub opened: bool,
}

impl Slot {
    pub fn new() -> Arc<Slot> {
        Arc::new(Slot(tokio::sync::Mutex::new(Current::default())))
    }

    /// Opens the slot's first task unless it has one; whether it did.
    pub async fn prepare(&self, opener: &Opener) -> Result<bool, tonic::Status> {
        let mut c = self.0.lock().await;
        if c.task.is_some() {
            return Ok(false);
        }
        c.open(opener).await?;
        Ok(true)
    }

    /// The next ticket, opening a new task first when there is none yet or
    /// the current one is spent or near its deadline. Under a shared task the
    /// other workers wait for the opening, as they would for the budget.
    pub async fn ticket(&self, opener: &Opener) -> Result<Ticket, tonic::Status> {
        let mut c = self.0.lock().await;
        let fresh = c.issued < opener.budget() && c.replace_at.is_some_and(|t| Instant::now() < t);
        let (task, opened) = match &c.task {
            Some(task) if fresh => (task.clone(), false),
            _ => (c.open(opener).await?, true),
        };
        let number = c.issued;
        c.issued += 1;
        Ok(Ticket {
            task,
            number,
            opened,
        })
    }

    /// A mint under `ticket` was refused for budget: the workflow's budget is
    /// at most the mints asked for before it (for every worker from now on),
    /// and its task is spent.
    pub async fn spent(&self, ticket: &Ticket, opener: &Opener) {
        opener
            .budget
            .fetch_min(ticket.number.max(1), Ordering::Relaxed);
        let mut c = self.0.lock().await;
        if c.task.as_ref() == Some(&ticket.task) {
            c.task = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(resource: &str) -> TaskPlan {
        TaskPlan {
            workflow: "w".into(),
            scope: Scope::declared("crm-api", resource, "read").expect("a scope"),
            duration: Duration::from_secs(600),
            budget: 50,
            shared: false,
            objective: "o".into(),
        }
    }

    #[test]
    fn every_mint_asks_for_its_own_resource_under_the_declared_pattern() {
        for (pattern, want) in [
            ("customers/eu/*", "customers/eu/b3-7"),
            ("customers/*/notes/**", "customers/b3-7/notes/b3-7"),
            ("customers/eu/42", "customers/eu/42"),
        ] {
            let p = plan(pattern);
            let got = p.resource("b3-7");
            assert_eq!(got, want);
            let asked = Scope::requested("crm-api", got, "read").expect("a requested scope");
            assert!(p.scope.covers(&asked), "{pattern}");
        }
    }

    #[test]
    fn a_task_is_replaced_well_before_its_deadline() {
        assert_eq!(plan("a/*").margin(), Duration::from_secs(30));
        let mut short = plan("a/*");
        short.duration = MIN_TASK;
        assert_eq!(short.margin(), Duration::from_millis(2500));
    }
}

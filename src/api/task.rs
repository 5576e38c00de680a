//! TaskService: orchestrators open, complete, report deviated and read tasks.
use super::pb::task_service_server::TaskService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, StartTask};
use crate::domain::TaskId;
use crate::identity::Role;
use crate::store::TaskFilter;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

pub struct TaskApi {
    pub broker: Arc<Broker>,
    pub auth: Auth,
}

pub(crate) const READERS: &[Role] = &[Role::Orchestrator, Role::Admin];

/// A task to open, parsed from the request (gRPC's, or the front door's JSON
/// made into one): each field by the rule its name says.
pub(crate) fn start_input(r: &StartTaskRequest) -> Result<StartTask, Status> {
    Ok(StartTask {
        agent: convert::spiffe_id("agent", &r.agent)?,
        workflow: convert::workflow_name(&r.workflow)?,
        objective: convert::objective(&r.objective)?,
        scopes: convert::declared_scopes(&r.scopes)?,
        duration: convert::seconds(
            "duration_seconds",
            r.duration_seconds,
            convert::MAX_TASK_SECONDS,
        )?,
    })
}

/// A deviation report, parsed from the request (gRPC's, or the front door's
/// path and JSON made into one): the task, and the reason (required, one line).
pub(crate) fn deviation_input(r: &ReportDeviationRequest) -> Result<(TaskId, String), Status> {
    Ok((
        convert::task_id("task_id", &r.task_id)?,
        convert::required_text("reason", &r.reason, convert::MAX_REASON)?,
    ))
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    #[instrument(skip_all, fields(caller))]
    async fn start_task(
        &self,
        req: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.TaskService/StartTask",
                &[Role::Orchestrator],
            )
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let input = start_input(req.get_ref())?;
        let task = self.broker.start_task(&caller, input).await?;
        tracing::info!(task = %task.id, agent = %task.agent, workflow = %task.workflow, "task opened");
        Ok(Response::new(StartTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    #[instrument(skip_all, fields(caller, task))]
    async fn complete_task(
        &self,
        req: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.TaskService/CompleteTask",
                &[Role::Orchestrator],
            )
            .await?;
        let id = convert::task_id("task_id", &req.get_ref().task_id)?;
        tracing::Span::current()
            .record("caller", caller.id.as_str())
            .record("task", id.to_string());
        let (task, event) = self.broker.complete_task(&caller, id).await?;
        tracing::info!(seq = event.seq, "task completed; its tokens are revoked");
        Ok(Response::new(CompleteTaskResponse {
            task: Some(convert::task(&task)),
            revocation_sequence: event.seq,
        }))
    }

    #[instrument(skip_all, fields(caller, task))]
    async fn report_deviation(
        &self,
        req: Request<ReportDeviationRequest>,
    ) -> Result<Response<ReportDeviationResponse>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.TaskService/ReportDeviation",
                &[Role::Orchestrator],
            )
            .await?;
        let (id, reason) = deviation_input(req.get_ref())?;
        tracing::Span::current()
            .record("caller", caller.id.as_str())
            .record("task", id.to_string());
        let (task, event) = self.broker.report_deviation(&caller, id, reason).await?;
        tracing::warn!(
            seq = event.seq,
            "task reported deviated; its tokens are revoked"
        );
        Ok(Response::new(ReportDeviationResponse {
            task: Some(convert::task(&task)),
            revocation_sequence: event.seq,
        }))
    }

    async fn get_task(
        &self,
        req: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.TaskService/GetTask", READERS)
            .await?;
        let id = convert::task_id("task_id", &req.get_ref().task_id)?;
        let task = self.broker.get_task(id).await?;
        Ok(Response::new(GetTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.TaskService/ListTasks", READERS)
            .await?;
        let r = req.get_ref();
        let filter = TaskFilter {
            agent: if r.agent.is_empty() {
                None
            } else {
                Some(convert::spiffe_id("agent", &r.agent)?)
            },
            state: convert::task_state_filter(r.state)?,
            limit: convert::limit(r.limit)?,
        };
        let tasks = self.broker.list_tasks(&filter).await?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.iter().map(convert::task).collect(),
        }))
    }
}

//! Tasks over HTTP, for orchestrators that speak HTTP rather than gRPC (the
//! Python package's `Orchestrator`): open, read, complete a task and report it
//! deviated, JSON in and out. Each is the broker call of its `TaskService`
//! twin, with its roles, its field rules (`api::task::start_input`,
//! `deviation_input`) and its refusals, answered in the front door's error
//! shape.
use super::{OauthState, answer, no_store_as, param};
use crate::api::convert;
use crate::api::pb;
use crate::api::task::{READERS, deviation_input, start_input};
use crate::error::oauth::OauthError;
use crate::identity::{ConnInfo, Role};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

/// The largest task request, in bytes: as gRPC's (`limits.task_message_bytes`
/// is not handed to the front door; objectives and scope lists fit in 64 KiB).
const MAX_TASK_BYTES: usize = 64 * 1024;

/// `POST /v1/tasks`: the fields of gRPC's `StartTaskRequest`, by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Open {
    agent: String,
    workflow: String,
    objective: String,
    scopes: Vec<OpenScope>,
    duration_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenScope {
    audience: String,
    resource: String,
    action: String,
}

pub(super) async fn open(State(s): State<OauthState>, req: Request) -> Response {
    answer(start(&s, req).await)
}

async fn start(s: &OauthState, req: Request) -> Result<Response, OauthError> {
    let (caller, open): (_, Open) = s
        .caller_and_json(
            req,
            "POST /v1/tasks",
            &[Role::Orchestrator],
            MAX_TASK_BYTES,
            "a task to open",
        )
        .await?;
    let request = pb::StartTaskRequest {
        agent: open.agent,
        workflow: open.workflow,
        objective: open.objective,
        scopes: open
            .scopes
            .into_iter()
            .map(|s| pb::Scope {
                audience: s.audience,
                resource: s.resource,
                action: s.action,
            })
            .collect(),
        duration_seconds: open.duration_seconds,
    };
    let input = param(start_input(&request))?;
    let task = s.broker.start_task(&caller, input).await?;
    tracing::info!(caller = %caller.id, task = %task.id, agent = %task.agent, workflow = %task.workflow, "task opened");
    Ok(no_store_as(
        StatusCode::CREATED,
        pb::StartTaskResponse {
            task: Some(convert::task(&task)),
        },
    ))
}

pub(super) async fn get(
    State(s): State<OauthState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    answer(read(&s, &id, req).await)
}

async fn read(s: &OauthState, id: &str, req: Request) -> Result<Response, OauthError> {
    let info = req.extensions().get::<ConnInfo>().cloned();
    s.auth
        .check(info.as_ref(), "GET /v1/tasks/{id}", READERS)
        .await?;
    let id = param(convert::task_id("task_id", id))?;
    let task = s.broker.get_task(id).await?;
    Ok(no_store_as(
        StatusCode::OK,
        pb::GetTaskResponse {
            task: Some(convert::task(&task)),
        },
    ))
}

pub(super) async fn complete(
    State(s): State<OauthState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    answer(end(&s, &id, req).await)
}

async fn end(s: &OauthState, id: &str, req: Request) -> Result<Response, OauthError> {
    let info = req.extensions().get::<ConnInfo>().cloned();
    let caller = s
        .auth
        .check(
            info.as_ref(),
            "POST /v1/tasks/{id}/complete",
            &[Role::Orchestrator],
        )
        .await?;
    let id = param(convert::task_id("task_id", id))?;
    let (task, event) = s.broker.complete_task(&caller, id).await?;
    tracing::info!(caller = %caller.id, task = %task.id, seq = event.seq, "task completed; its tokens are revoked");
    Ok(no_store_as(
        StatusCode::OK,
        pb::CompleteTaskResponse {
            task: Some(convert::task(&task)),
            revocation_sequence: event.seq,
        },
    ))
}

/// `POST /v1/tasks/{id}/deviate`: gRPC's `ReportDeviationRequest`, the task
/// being the path's. A missing reason is an empty one, refused by gRPC's rule
/// with gRPC's sentence.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deviation {
    #[serde(default)]
    reason: String,
}

pub(super) async fn deviate(
    State(s): State<OauthState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    answer(deviated(&s, id, req).await)
}

async fn deviated(s: &OauthState, id: String, req: Request) -> Result<Response, OauthError> {
    let (caller, report): (_, Deviation) = s
        .caller_and_json(
            req,
            "POST /v1/tasks/{id}/deviate",
            &[Role::Orchestrator],
            MAX_TASK_BYTES,
            "a deviation report",
        )
        .await?;
    let (id, reason) = param(deviation_input(&pb::ReportDeviationRequest {
        task_id: id,
        reason: report.reason,
    }))?;
    let (task, event) = s.broker.report_deviation(&caller, id, reason).await?;
    tracing::warn!(caller = %caller.id, task = %task.id, seq = event.seq, "task reported deviated; its tokens are revoked");
    Ok(no_store_as(
        StatusCode::OK,
        pb::ReportDeviationResponse {
            task: Some(convert::task(&task)),
            revocation_sequence: event.seq,
        },
    ))
}

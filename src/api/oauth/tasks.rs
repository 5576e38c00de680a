//! Tasks over HTTP, for orchestrators that speak HTTP rather than gRPC (the
//! Python package's `Orchestrator`): open, read and complete a task, JSON in
//! and out. Each is the broker call of its `TaskService` twin, with its roles,
//! its field rules (`api::task::start_input`) and its refusals, answered in
//! the front door's error shape.
use super::form::{bounded_body, content_type};
use super::{OauthState, answer, no_store_as, param};
use crate::api::convert;
use crate::api::pb;
use crate::api::task::{READERS, start_input};
use crate::error::oauth::OauthError;
use crate::identity::{ConnInfo, Role};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

/// The largest task request, in bytes: as gRPC's (`limits.task_message_bytes`
/// is not handed to the front door; objectives and scope lists fit in 64 KiB).
const MAX_TASK_BYTES: usize = 64 * 1024;

/// How much of a JSON parser's message is quoted: enough to name the field
/// and the position, not a value of any length.
const MESSAGE_CHARS: usize = 120;

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
    let (parts, body) = req.into_parts();
    let caller = s
        .auth
        .check(
            parts.extensions.get::<ConnInfo>(),
            "POST /v1/tasks",
            &[Role::Orchestrator],
        )
        .await?;
    content_type(&parts.headers, "application/json")?;
    let bytes = bounded_body(&parts.headers, body, MAX_TASK_BYTES, s.form_deadline).await?;
    let open: Open = serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message may carry a whole value (an unknown field's name, a
        // string of the wrong type): its first characters only.
        let message = e.to_string();
        let mut why: String = message.chars().take(MESSAGE_CHARS).collect();
        if why.len() < message.len() {
            why.push_str("...");
        }
        OauthError::invalid("request body", format!("is not a task to open: {why}"))
    })?;
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

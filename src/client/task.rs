//! `mayfly task …`: TaskService, for orchestrators.
use super::*;

pub(super) async fn run(ch: Channel, out: &Printer, cmd: &TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Start {
            agent,
            workflow,
            objective,
            scope,
            duration,
        } => {
            let scopes = scope
                .iter()
                .map(|s| parse_scope(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = TaskServiceClient::new(ch)
                .start_task(pb::StartTaskRequest {
                    agent: agent.clone(),
                    workflow: workflow.clone(),
                    objective: objective.clone(),
                    scopes,
                    duration_seconds: duration.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.task)?;
        }
        TaskCommand::Complete { task } => {
            let r = TaskServiceClient::new(ch)
                .complete_task(pb::CompleteTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r)?;
        }
        TaskCommand::Deviate { task, reason } => {
            let r = TaskServiceClient::new(ch)
                .report_deviation(pb::ReportDeviationRequest {
                    task_id: task.clone(),
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r)?;
        }
        TaskCommand::Get { task } => {
            let r = TaskServiceClient::new(ch)
                .get_task(pb::GetTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.task)?;
        }
        TaskCommand::List {
            agent,
            state,
            limit,
        } => {
            let state = match state.as_deref() {
                None => 0,
                Some(s) => pb::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_uppercase()))
                    .ok_or_else(|| {
                        usage(format!(
                            "--state {s:?}: one of active, completed, expired, deviated, revoked"
                        ))
                    })? as i32,
            };
            let r = TaskServiceClient::new(ch)
                .list_tasks(pb::ListTasksRequest {
                    agent: agent.clone().unwrap_or_default(),
                    state,
                    limit: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.tasks)?;
        }
    }
    Ok(())
}

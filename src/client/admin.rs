//! `mayfly tokens|revoke|approvals|freeze|unfreeze|freezes|audit …`:
//! AdminService, for the security team.
use super::*;

pub(super) async fn audit(ch: Channel, out: &Printer, cmd: &AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { checkpoint } => {
            let (checkpoint_sequence, checkpoint_hash) = match checkpoint {
                None => (0, String::new()),
                Some(c) => parse_checkpoint(c)?,
            };
            let r = AdminServiceClient::new(ch)
                .verify_audit(pb::VerifyAuditRequest {
                    checkpoint_sequence,
                    checkpoint_hash,
                })
                .await
                .map_err(status)?
                .into_inner();
            let printed = out.print(&json!({
                "intact": r.intact, "events_checked": r.events_checked,
                "head_sequence": r.head_sequence, "head_hash": r.head_hash,
                "checkpoint": format!("{}:{}", r.head_sequence, r.head_hash),
                // Where the stored chain starts: its archives hold what came before.
                "anchor": r.anchor.as_ref().map(|a| format!("{}:{}", a.sequence, a.hash)),
                "first_broken": (!r.intact).then_some(r.first_broken),
                "problem": (!r.intact).then_some(&r.problem),
            }));
            // A broken chain fails the command whatever became of its output.
            if !r.intact {
                return Err(Failed {
                    code: 1,
                    message: format!(
                        "the audit chain is broken at event {}: {}",
                        r.first_broken, r.problem
                    ),
                }
                .into());
            }
            printed?;
        }
        AuditCommand::Events {
            agent,
            task,
            action,
            since,
            until,
            limit,
            jsonl,
        } => {
            let mut client = AdminServiceClient::new(ch);
            let mut req = pb::QueryAuditRequest {
                agent: agent.clone().unwrap_or_default(),
                task_id: task.clone().unwrap_or_default(),
                action: action.clone().unwrap_or_default(),
                since: when("--since", since)?,
                until: when("--until", until)?,
                after_sequence: 0,
                limit: *limit,
            };
            let mut all = vec![];
            loop {
                let r = client
                    .query_audit(req.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                if *jsonl {
                    for e in &r.events {
                        if !out.emit_line(&serde_json::to_string(e)?)? {
                            return Ok(());
                        }
                    }
                } else {
                    all.extend(r.events);
                }
                // A page, or with --jsonl every page.
                if !*jsonl || r.next_after == 0 {
                    break;
                }
                req.after_sequence = r.next_after;
            }
            if !*jsonl {
                out.print(&all)?;
            }
        }
        AuditCommand::Task { task } => {
            let t = TaskServiceClient::new(ch.clone())
                .get_task(pb::GetTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut admin = AdminServiceClient::new(ch);
            let tokens = admin
                .list_tokens(pb::ListTokensRequest {
                    task_id: task.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut events = vec![];
            let mut after = 0;
            loop {
                let r = admin
                    .query_audit(pb::QueryAuditRequest {
                        task_id: task.clone(),
                        after_sequence: after,
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                events.extend(r.events);
                if r.next_after == 0 {
                    break;
                }
                after = r.next_after;
            }
            let revocations: Vec<&pb::AuditEventInfo> = events
                .iter()
                .filter(|e| e.action == "revocation" || e.action == "task_revoked")
                .collect();
            // A task's tokens, without what the task already says and the key and
            // certificate details (`mayfly tokens` shows those).
            let hidden = ["task", "workflow", "kid", "cert_thumbprint", "active"];
            let tokens = (tokens.tokens.iter())
                .map(|t| without(t, &hidden))
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.print(&json!({
                "task": t.task,
                "tokens": tokens,
                "revocations": revocations,
                "events": events,
            }))?;
        }
        AuditCommand::Archive { before, out: file } => {
            archive::archive(ch, out, before, file).await?;
        }
        // Offline: answered before connecting (`run`).
        AuditCommand::VerifyArchive { file, checkpoint } => {
            archive::verify(out, file, checkpoint.as_deref())?;
        }
        AuditCommand::Access {
            audience,
            resource,
            since,
            until,
        } => {
            let r = AdminServiceClient::new(ch)
                .audit_access(pb::AuditAccessRequest {
                    audience: audience.clone(),
                    resource: resource.clone().unwrap_or_default(),
                    since: when("--since", since)?,
                    until: when("--until", until)?,
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.agents)?;
        }
    }
    Ok(())
}

pub(super) async fn approvals(
    ch: Channel,
    out: &Printer,
    cmd: &ApprovalsCommand,
) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCommand::List { task, all, limit } => {
            let r = AdminServiceClient::new(ch)
                .list_approvals(pb::ListApprovalsRequest {
                    task_id: task.clone().unwrap_or_default(),
                    pending_only: !*all,
                    limit: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.approvals)?;
        }
        cmd @ (ApprovalsCommand::Approve { approval, reason }
        | ApprovalsCommand::Deny { approval, reason }) => {
            let decision = match cmd {
                ApprovalsCommand::Approve { .. } => pb::Decision::Approve,
                _ => pb::Decision::Deny,
            };
            let r = AdminServiceClient::new(ch)
                .decide_approval(pb::DecideApprovalRequest {
                    approval_id: approval.clone(),
                    decision: decision as i32,
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.print(&r.approval)?;
        }
    }
    Ok(())
}

/// Prints what a call answered.
async fn answer<T: serde::Serialize>(
    out: &Printer,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<()> {
    out.print(&call.await.map_err(status)?.into_inner())
}

pub(super) async fn freeze(
    ch: Channel,
    out: &Printer,
    target: &FreezeTargetArg,
    reason: &str,
) -> anyhow::Result<()> {
    let req = pb::FreezeRequest {
        target: Some(freeze_target(target)),
        reason: reason.to_string(),
    };
    answer(out, AdminServiceClient::new(ch).freeze(req)).await
}

pub(super) async fn quarantine(
    ch: Channel,
    out: &Printer,
    agent: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let req = pb::QuarantineRequest {
        agent: agent.to_string(),
        reason: reason.to_string(),
    };
    answer(out, AdminServiceClient::new(ch).quarantine(req)).await
}

pub(super) async fn unfreeze(
    ch: Channel,
    out: &Printer,
    target: &FreezeTargetArg,
    reason: &str,
) -> anyhow::Result<()> {
    let req = pb::UnfreezeRequest {
        target: Some(freeze_target(target)),
        reason: reason.to_string(),
    };
    answer(out, AdminServiceClient::new(ch).unfreeze(req)).await
}

pub(super) async fn freezes(ch: Channel, out: &Printer) -> anyhow::Result<()> {
    let r = AdminServiceClient::new(ch)
        .list_freezes(pb::ListFreezesRequest {})
        .await
        .map_err(status)?
        .into_inner();
    out.print(&r.freezes)?;
    Ok(())
}

pub(super) async fn tokens(
    ch: Channel,
    out: &Printer,
    task: &Option<String>,
    agent: &Option<String>,
    active: &bool,
    limit: &u32,
) -> anyhow::Result<()> {
    let r = AdminServiceClient::new(ch)
        .list_tokens(pb::ListTokensRequest {
            task_id: task.clone().unwrap_or_default(),
            agent: agent.clone().unwrap_or_default(),
            active_only: *active,
            limit: *limit,
        })
        .await
        .map_err(status)?
        .into_inner();
    // The signing key and certificate thumbprint would double the table's width.
    let rows = (r.tokens.iter())
        .map(|t| without(t, &["kid", "cert_thumbprint"]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    out.print(&rows)?;
    Ok(())
}

pub(super) async fn revoke(
    ch: Channel,
    out: &Printer,
    target: &RevokeTarget,
    reason: &str,
) -> anyhow::Result<()> {
    use pb::revocation_target::Target as T;
    let target = match target {
        RevokeTarget::Token { jti } => T::Token(jti.clone()),
        RevokeTarget::Task { task } => T::Task(task.clone()),
        RevokeTarget::Agent { agent } => T::Agent(agent.clone()),
        RevokeTarget::Workflow { workflow } => T::Workflow(workflow.clone()),
        RevokeTarget::All => T::All(true),
    };
    let r = AdminServiceClient::new(ch)
        .revoke(pb::RevokeRequest {
            target: Some(pb::RevocationTarget {
                target: Some(target),
            }),
            reason: reason.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    out.print(&r)?;
    Ok(())
}

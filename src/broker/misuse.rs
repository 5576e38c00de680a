//! A verifier reports a token misused: its task is treated as deviated, whatever
//! the workflow's deviation response, since a stolen or abused credential is
//! never "deny only".
use super::{BadToken, Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{TaskId, TaskState};
use crate::identity::Caller;
use serde_json::json;

/// How long after its expiry a token can still be reported as misused.
const MISUSE_REPORT_WINDOW: i64 = 3600;

/// What a verifier saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisuseKind {
    /// Presented by a client certificate other than the one it is bound to.
    BindingMismatch,
    /// Used for something its scope does not cover.
    OutOfScope,
}

impl MisuseKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "binding_mismatch" => Some(MisuseKind::BindingMismatch),
            "out_of_scope" => Some(MisuseKind::OutOfScope),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MisuseKind::BindingMismatch => "binding_mismatch",
            MisuseKind::OutOfScope => "out_of_scope",
        }
    }
}

impl Broker {
    /// The token must be one of ours (its signature verifies; it may have expired
    /// within the last hour); its task is then revoked as deviated, and the
    /// report audited with the verifier's identity and evidence. Returns the task
    /// and the revocation's sequence (`None` when the task had already ended; the
    /// report is audited all the same).
    pub async fn report_misuse(
        &self,
        caller: &Caller,
        token: &str,
        kind: MisuseKind,
        evidence: &str,
    ) -> Result<(TaskId, Option<u64>), BrokerError> {
        let now = self.now();
        let claims = self
            .our_token(
                ("token", token),
                now.unix_timestamp(),
                MISUSE_REPORT_WINDOW,
                "is not a Mayfly token that can be reported",
            )
            .await?;
        let task_id: TaskId = claims.task.parse().map_err(|_| BrokerError::BadToken {
            field: "token",
            why: BadToken::NoTask,
        })?;
        let task = self.get_task(task_id).await?;
        let reason = format!(
            "misuse reported by {}: {}: {}",
            caller.id,
            kind.as_str(),
            evidence
        );
        let report = AuditEvent::new(now, caller.id.as_str(), Action::MisuseReported)
            .task(task.id)
            .agent(&task.agent)
            .reason(&reason)
            .detail(json!({
                "kind": kind.as_str(),
                "evidence": evidence,
                "jti": claims.jti,
                "verifier": caller.id.as_str(),
            }));
        if task.state != TaskState::Active {
            self.record(report).await;
            return Ok((task.id, None));
        }
        match self.deviate(caller, &task, report.clone()).await {
            Ok(seq) => Ok((task.id, Some(seq))),
            // Ended by someone else meanwhile: the report still goes on record.
            Err(BrokerError::Refused(Refusal::TaskClosed(_))) => {
                self.record(report).await;
                Ok((task.id, None))
            }
            Err(e) => Err(e),
        }
    }
}

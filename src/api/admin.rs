//! AdminService: the security team revokes and inspects tokens, and checks,
//! queries, exports and archives the audit trail.
use super::pb::admin_service_server::AdminService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, ExportEnd};
use crate::domain::audit::chain::{Checkpoint, from_hex, to_hex};
use crate::domain::text::quote;
use crate::identity::Role;
use crate::store::{ApprovalFilter, AuditFilter, TokenFilter};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// The most an ExportAudit page holds of its events' encoding (with at least one
/// event, however large): far below what a gRPC client reads by default (4 MiB).
const EXPORT_PAGE_BYTES: usize = 1 << 20;

/// A SHA-256 hash in hex, in the request field `field`.
fn hash(field: &'static str, hex: &str) -> Result<Vec<u8>, Status> {
    from_hex(hex).ok_or_else(|| crate::error::invalid(field, "must be 64 hex digits (SHA-256)"))
}

pub struct AdminApi {
    pub broker: Arc<Broker>,
    pub auth: Auth,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[instrument(skip_all, fields(caller))]
    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.AdminService/Revoke", &[Role::Admin])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        let target = convert::target(r.target.as_ref())?;
        let reason = convert::required_text("reason", &r.reason, convert::MAX_REASON)?;
        let revoked = self.broker.revoke(&caller, target, reason).await?;
        Ok(Response::new(RevokeResponse {
            event: Some(convert::event(&revoked.event)),
            tokens_revoked: revoked.tokens_revoked,
            tasks_stopped: revoked.tasks_stopped,
            repeated: revoked.repeated,
        }))
    }

    #[instrument(skip_all, fields(caller))]
    async fn quarantine(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.AdminService/Quarantine", &[Role::Admin])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        let agent = convert::spiffe_id("agent", &r.agent)?;
        let reason = convert::required_text("reason", &r.reason, convert::MAX_REASON)?;
        let q = self.broker.quarantine(&caller, agent, reason).await?;
        Ok(Response::new(QuarantineResponse {
            event: Some(convert::event(&q.revoked.event)),
            tokens_revoked: q.revoked.tokens_revoked,
            tasks_stopped: q.revoked.tasks_stopped,
            repeated: q.revoked.repeated,
            freeze: Some(convert::freeze(&q.freeze)),
            already_frozen: !q.newly_frozen,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/ListTokens", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        let now = self.auth.clock.now();
        let filter = TokenFilter {
            task: if r.task_id.is_empty() {
                None
            } else {
                Some(convert::task_id("task_id", &r.task_id)?)
            },
            agent: if r.agent.is_empty() {
                None
            } else {
                Some(convert::spiffe_id("agent", &r.agent)?)
            },
            active_at: r.active_only.then_some(now),
            limit: convert::limit(r.limit)?,
        };
        let tokens = self.broker.list_tokens(&filter).await?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(|t| convert::token(t, now)).collect(),
        }))
    }

    async fn list_approvals(
        &self,
        req: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/ListApprovals", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        let now = self.auth.clock.now();
        let filter = ApprovalFilter {
            task: if r.task_id.is_empty() {
                None
            } else {
                Some(convert::task_id("task_id", &r.task_id)?)
            },
            pending_at: r.pending_only.then_some(now),
            limit: convert::limit(r.limit)?,
        };
        let approvals = self.broker.list_approvals(&filter).await?;
        Ok(Response::new(ListApprovalsResponse {
            approvals: approvals
                .iter()
                .map(|a| convert::approval(a, now))
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(caller, approval))]
    async fn decide_approval(
        &self,
        req: Request<DecideApprovalRequest>,
    ) -> Result<Response<DecideApprovalResponse>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.AdminService/DecideApproval",
                &[Role::Admin],
            )
            .await?;
        let r = req.get_ref();
        let id = convert::uuid("approval_id", &r.approval_id)?;
        tracing::Span::current()
            .record("caller", caller.id.as_str())
            .record("approval", id.to_string());
        let approve = match Decision::try_from(r.decision) {
            Ok(Decision::Approve) => true,
            Ok(Decision::Deny) => false,
            _ => {
                return Err(crate::error::invalid(
                    "decision",
                    "must be DECISION_APPROVE or DECISION_DENY",
                ));
            }
        };
        let reason = convert::required_text("reason", &r.reason, convert::MAX_REASON)?;
        let is_agent = self.auth.roles.has(&caller.id, Role::Agent);
        let approval = self
            .broker
            .decide_approval(&caller, is_agent, id, approve, reason)
            .await?;
        Ok(Response::new(DecideApprovalResponse {
            approval: Some(convert::approval(&approval, self.auth.clock.now())),
        }))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/VerifyAudit", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        let checkpoint = match (r.checkpoint_sequence, r.checkpoint_hash.as_str()) {
            (0, "") => None,
            (0, _) => {
                return Err(crate::error::invalid(
                    "checkpoint_sequence",
                    "is required with checkpoint_hash",
                ));
            }
            (seq, h) => Some(Checkpoint::new(seq, hash("checkpoint_hash", h)?)),
        };
        let check = self.broker.verify_audit(checkpoint).await?;
        Ok(Response::new(VerifyAuditResponse {
            events_checked: check.checked,
            head_sequence: check.head,
            intact: check.broken.is_none(),
            first_broken: check.broken.as_ref().map_or(0, |b| b.seq),
            problem: check.broken.map(|b| b.why).unwrap_or_default(),
            head_hash: to_hex(&check.head_hash),
            anchor: Some(convert::checkpoint(&check.anchor)),
        }))
    }

    async fn export_audit(
        &self,
        req: Request<ExportAuditRequest>,
    ) -> Result<Response<ExportAuditResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/ExportAudit", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        let end = match (
            convert::time_opt("before", r.before.as_ref())?,
            r.through_sequence,
        ) {
            (Some(t), 0) => ExportEnd::Before(t),
            (None, 0) => {
                return Err(crate::error::invalid(
                    "before",
                    "is required (or through_sequence, after a first page)",
                ));
            }
            (None, seq) => ExportEnd::Through(seq),
            (Some(_), _) => {
                return Err(crate::error::invalid(
                    "through_sequence",
                    "cannot be given with before: one or the other",
                ));
            }
        };
        let limit = convert::limit(r.limit)?;
        let page = (self.broker)
            .export_audit(end, r.after_sequence, limit)
            .await?;
        // Bounded in bytes too: a page holds at least one event, but no more
        // than fit in EXPORT_PAGE_BYTES, whatever their details hold.
        let (mut events, mut bytes) = (vec![], 0);
        for e in &page.events {
            let e = convert::sealed_event(e);
            bytes += prost::Message::encoded_len(&e);
            if !events.is_empty() && bytes > EXPORT_PAGE_BYTES {
                break;
            }
            events.push(e);
        }
        let next_after = match events.last() {
            Some(e) if e.sequence < page.through.seq => e.sequence,
            _ => 0,
        };
        Ok(Response::new(ExportAuditResponse {
            anchor: Some(convert::checkpoint(&page.anchor)),
            through: Some(convert::checkpoint(&page.through)),
            events,
            next_after,
        }))
    }

    #[instrument(skip_all, fields(caller))]
    async fn archive_audit(
        &self,
        req: Request<ArchiveAuditRequest>,
    ) -> Result<Response<ArchiveAuditResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.AdminService/ArchiveAudit", &[Role::Admin])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        if r.through_sequence == 0 {
            return Err(crate::error::invalid(
                "through_sequence",
                "must be at least 1: the archive's last event",
            ));
        }
        let through = Checkpoint::new(r.through_sequence, hash("through_hash", &r.through_hash)?);
        let before = convert::time_opt("before", r.before.as_ref())?
            .ok_or_else(|| crate::error::invalid("before", "is required"))?;
        let a = self.broker.archive_audit(&caller, through, before).await?;
        Ok(Response::new(ArchiveAuditResponse {
            previous_anchor: Some(convert::checkpoint(&a.previous)),
            anchor: Some(convert::checkpoint(&a.anchor)),
            events_archived: a.events,
            events_removed: a.removed,
        }))
    }

    #[instrument(skip_all, fields(caller))]
    async fn freeze(
        &self,
        req: Request<FreezeRequest>,
    ) -> Result<Response<FreezeResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.AdminService/Freeze", &[Role::Admin])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        let target = convert::freeze_target(r.target.as_ref())?;
        let reason = convert::required_text("reason", &r.reason, convert::MAX_REASON)?;
        let (freeze, new) = self.broker.freeze(&caller, target, reason).await?;
        Ok(Response::new(FreezeResponse {
            freeze: Some(convert::freeze(&freeze)),
            already_frozen: !new,
        }))
    }

    #[instrument(skip_all, fields(caller))]
    async fn unfreeze(
        &self,
        req: Request<UnfreezeRequest>,
    ) -> Result<Response<UnfreezeResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.AdminService/Unfreeze", &[Role::Admin])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        let target = convert::freeze_target(r.target.as_ref())?;
        let reason = convert::required_text("reason", &r.reason, convert::MAX_REASON)?;
        let lifted = self.broker.unfreeze(&caller, target, reason).await?;
        Ok(Response::new(UnfreezeResponse {
            lifted: Some(convert::freeze(&lifted)),
        }))
    }

    async fn list_freezes(
        &self,
        req: Request<ListFreezesRequest>,
    ) -> Result<Response<ListFreezesResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/ListFreezes", &[Role::Admin])
            .await?;
        let freezes = self.broker.list_freezes().await?;
        Ok(Response::new(ListFreezesResponse {
            freezes: freezes.iter().map(convert::freeze).collect(),
        }))
    }

    async fn query_audit(
        &self,
        req: Request<QueryAuditRequest>,
    ) -> Result<Response<QueryAuditResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/QueryAudit", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        let limit = convert::limit(r.limit)?;
        let filter = AuditFilter {
            agent: if r.agent.is_empty() {
                None
            } else {
                Some(convert::spiffe_id("agent", &r.agent)?)
            },
            task: if r.task_id.is_empty() {
                None
            } else {
                Some(convert::task_id("task_id", &r.task_id)?)
            },
            action: if r.action.is_empty() {
                None
            } else {
                let a = crate::domain::audit::Action::parse(&r.action).ok_or_else(|| {
                    crate::error::invalid(
                        "action",
                        format!("{} is not an audit action", quote(&r.action)),
                    )
                })?;
                Some(a.as_str().to_string())
            },
            since: convert::time_opt("since", r.since.as_ref())?,
            until: convert::time_opt("until", r.until.as_ref())?,
            after: r.after_sequence,
            limit,
        };
        let events = self.broker.query_audit(&filter).await?;
        let next_after = match events.last() {
            Some((seq, _)) if events.len() == limit as usize => *seq,
            _ => 0,
        };
        Ok(Response::new(QueryAuditResponse {
            events: events
                .iter()
                .map(|(seq, e)| convert::audit_event(*seq, e))
                .collect(),
            next_after,
        }))
    }

    async fn audit_access(
        &self,
        req: Request<AuditAccessRequest>,
    ) -> Result<Response<AuditAccessResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.AdminService/AuditAccess", &[Role::Admin])
            .await?;
        let r = req.get_ref();
        if r.audience.trim().is_empty() {
            return Err(crate::error::invalid("audience", "is required"));
        }
        let resource = if r.resource.is_empty() {
            None
        } else {
            Some(
                crate::domain::Scope::declared(&r.audience, &r.resource, "*")
                    .map_err(|e| crate::error::invalid("resource", e))?,
            )
        };
        let agents = self
            .broker
            .audit_access(
                &r.audience,
                resource.as_ref(),
                convert::time_opt("since", r.since.as_ref())?,
                convert::time_opt("until", r.until.as_ref())?,
            )
            .await?;
        Ok(Response::new(AuditAccessResponse {
            agents: agents
                .into_iter()
                .map(|a| AgentAccess {
                    agent: a.agent.to_string(),
                    tokens: a.tokens,
                    first: Some(convert::timestamp(a.first)),
                    last: Some(convert::timestamp(a.last)),
                    resources: a.resources,
                })
                .collect(),
        }))
    }
}

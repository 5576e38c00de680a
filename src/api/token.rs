//! TokenService: agents mint tokens for their own active tasks, delegate them to
//! sub-agents, redeem delegations and wait for step-up approvals.
use super::pb::token_service_server::TokenService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, DelegateRequest as Delegate, Mint, MintRequest};
use crate::identity::Role;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// The longest a caller may wait in one AwaitApproval call.
pub const MAX_WAIT_SECONDS: u32 = 300;

pub struct TokenApi {
    pub broker: Arc<Broker>,
    pub auth: Auth,
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    #[instrument(skip_all, fields(caller, task, jti))]
    async fn mint_token(
        &self,
        req: Request<MintTokenRequest>,
    ) -> Result<Response<MintTokenResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.TokenService/MintToken", &[Role::Agent])
            .await?;
        let r = req.get_ref();
        let task = convert::task_id("task_id", &r.task_id)?;
        let span = tracing::Span::current();
        span.record("caller", caller.id.as_str())
            .record("task", task.to_string());
        let input = MintRequest {
            task,
            scope: convert::requested_scope(r.scope.as_ref())?,
            ttl: convert::seconds("ttl_seconds", r.ttl_seconds, convert::MAX_TTL_SECONDS)?,
        };
        let minted = self.broker.mint(&caller, input).await.inspect_err(|e| {
            tracing::info!(error = %e, "mint refused");
        })?;
        Ok(Response::new(match minted {
            Mint::Minted(m) => {
                span.record("jti", m.jti.to_string());
                tracing::debug!(ttl = m.ttl.as_secs(), "token minted");
                convert::minted(&m)
            }
            Mint::Pending(a) => MintTokenResponse {
                approval: Some(convert::approval(&a, self.auth.clock.now())),
                ..Default::default()
            },
        }))
    }

    #[instrument(skip_all, fields(caller, delegation))]
    async fn delegate(
        &self,
        req: Request<DelegateRequest>,
    ) -> Result<Response<DelegateResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.TokenService/Delegate", &[Role::Agent])
            .await?;
        tracing::Span::current().record("caller", caller.id.as_str());
        let r = req.get_ref();
        if r.parent_token.is_empty() {
            return Err(crate::error::invalid("parent_token", "is required"));
        }
        let sub_agent = convert::spiffe_id("sub_agent", &r.sub_agent)?;
        let input = Delegate {
            parent_token: r.parent_token.clone(),
            sub_agent_is_agent: self.auth.roles.has(&sub_agent, Role::Agent),
            sub_agent,
            scope: convert::requested_scope(r.scope.as_ref())?,
            ttl: convert::seconds("ttl_seconds", r.ttl_seconds, convert::MAX_TTL_SECONDS)?,
        };
        let d = self
            .broker
            .delegate(&caller, input)
            .await
            .inspect_err(|e| {
                tracing::info!(error = %e, "delegation refused");
            })?;
        tracing::Span::current().record("delegation", d.id.to_string());
        Ok(Response::new(DelegateResponse {
            delegation_id: d.id.to_string(),
            expires_at: Some(convert::timestamp(d.expires_at)),
            depth: d.depth,
        }))
    }

    #[instrument(skip_all, fields(caller, delegation, jti))]
    async fn redeem_delegation(
        &self,
        req: Request<RedeemDelegationRequest>,
    ) -> Result<Response<MintTokenResponse>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.TokenService/RedeemDelegation",
                &[Role::Agent],
            )
            .await?;
        let id = convert::uuid("delegation_id", &req.get_ref().delegation_id)?;
        let span = tracing::Span::current();
        span.record("caller", caller.id.as_str())
            .record("delegation", id.to_string());
        let m = self.broker.redeem(&caller, id).await.inspect_err(|e| {
            tracing::info!(error = %e, "redemption refused");
        })?;
        span.record("jti", m.jti.to_string());
        Ok(Response::new(convert::minted(&m)))
    }

    #[instrument(skip_all, fields(caller, approval))]
    async fn await_approval(
        &self,
        req: Request<AwaitApprovalRequest>,
    ) -> Result<Response<AwaitApprovalResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.TokenService/AwaitApproval", &[Role::Agent])
            .await?;
        let r = req.get_ref();
        let id = convert::uuid("approval_id", &r.approval_id)?;
        if r.wait_seconds > MAX_WAIT_SECONDS {
            return Err(crate::error::invalid(
                "wait_seconds",
                format!("must be at most {MAX_WAIT_SECONDS}"),
            ));
        }
        tracing::Span::current()
            .record("caller", caller.id.as_str())
            .record("approval", id.to_string());
        let wait = Duration::from_secs(u64::from(r.wait_seconds));
        let (approval, minted) = self.broker.await_approval(&caller, id, wait).await?;
        Ok(Response::new(AwaitApprovalResponse {
            approval: Some(convert::approval(&approval, self.auth.clock.now())),
            token: minted.as_ref().map(convert::minted),
        }))
    }
}

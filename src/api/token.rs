//! TokenService: agents mint tokens for their own active tasks.
use super::pb::token_service_server::TokenService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, MintRequest};
use crate::identity::Role;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

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
        span.record("jti", minted.jti.to_string());
        tracing::debug!(ttl = minted.ttl.as_secs(), "token minted");
        Ok(Response::new(MintTokenResponse {
            token: minted.token,
            jti: minted.jti.to_string(),
            expires_at: Some(convert::timestamp(minted.expires_at)),
            ttl_seconds: minted.ttl.as_secs(),
        }))
    }
}

//! VerifierService: resource servers introspect tokens, fetch keys and follow the
//! revocation stream.
use super::pb::verifier_service_server::VerifierService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, MisuseKind};
use crate::identity::Role;
use crate::revocation::{Pace, Watched};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub struct VerifierApi {
    pub broker: Arc<Broker>,
    pub auth: Auth,
    pub shutdown: CancellationToken,
    /// How often a watch stream re-reads the store even without a wake-up: a
    /// safety net under the store's notifications (LISTEN/NOTIFY), which carry
    /// revocations committed through other replicas.
    pub poll: Duration,
    /// How long a caught-up stream stays quiet before it sends a heartbeat.
    pub heartbeat: Duration,
}

/// Who may introspect over gRPC and follow the revocation stream (here and on
/// the front door's feed).
pub(super) const VERIFIERS: &[Role] = &[Role::Verifier, Role::Admin];
const ANYONE: &[Role] = &[Role::Agent, Role::Orchestrator, Role::Admin, Role::Verifier];
/// Only resource servers report misuse (here and on the front door); the
/// security team revokes directly.
pub(super) const REPORTERS: &[Role] = &[Role::Verifier];

/// A misuse report, parsed from the request (gRPC's, or the front door's JSON
/// made into one): the token is required (the broker judges what it is), the
/// kind one of the two, the evidence optional and one line.
pub(super) fn misuse_input(r: &ReportMisuseRequest) -> Result<(MisuseKind, String), Status> {
    if r.token.is_empty() {
        return Err(crate::error::invalid("token", "is required"));
    }
    let kind = MisuseKind::parse(&r.kind).ok_or_else(|| {
        crate::error::invalid("kind", "must be \"binding_mismatch\" or \"out_of_scope\"")
    })?;
    Ok((kind, convert::evidence(&r.evidence)?))
}

#[tonic::async_trait]
impl VerifierService for VerifierApi {
    async fn introspect(
        &self,
        req: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.VerifierService/Introspect", VERIFIERS)
            .await?;
        let token = &req.get_ref().token;
        if token.is_empty() {
            return Err(crate::error::invalid("token", "is required"));
        }
        let Some(c) = self.broker.introspect(token).await? else {
            return Ok(Response::new(IntrospectResponse {
                active: false,
                ..Default::default()
            }));
        };
        let claims_json =
            serde_json::to_string(&c).map_err(|_| Status::internal("encoding claims"))?;
        Ok(Response::new(IntrospectResponse {
            active: true,
            claims_json,
            sub: c.sub,
            aud: c.aud,
            scope: c.scope,
            task_id: c.task,
            workflow: c.wf,
            jti: c.jti,
            exp: c.exp,
            iat: c.iat,
            cnf_x5t_s256: c.cnf.x5t_s256,
        }))
    }

    async fn get_jwks(
        &self,
        req: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        self.auth
            .caller(&req, "mayfly.v1.VerifierService/GetJwks", ANYONE)
            .await?;
        let jwks = self.broker.jwks();
        let jwks_json =
            serde_json::to_string(&jwks).map_err(|_| Status::internal("encoding JWKS"))?;
        Ok(Response::new(GetJwksResponse { jwks_json }))
    }

    async fn report_misuse(
        &self,
        req: Request<ReportMisuseRequest>,
    ) -> Result<Response<ReportMisuseResponse>, Status> {
        let caller = self
            .auth
            .caller(&req, "mayfly.v1.VerifierService/ReportMisuse", REPORTERS)
            .await?;
        let r = req.get_ref();
        let (kind, evidence) = misuse_input(r)?;
        let (task, seq) = self
            .broker
            .report_misuse(&caller, &r.token, kind, &evidence)
            .await?;
        Ok(Response::new(ReportMisuseResponse {
            task_id: task.to_string(),
            revocation_sequence: seq.unwrap_or(0),
        }))
    }

    type WatchRevocationsStream =
        Pin<Box<dyn Stream<Item = Result<WatchRevocationsResponse, Status>> + Send>>;

    async fn watch_revocations(
        &self,
        req: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let caller = self
            .auth
            .caller(
                &req,
                "mayfly.v1.VerifierService/WatchRevocations",
                VERIFIERS,
            )
            .await?;
        let r = req.get_ref();
        let after_at = convert::time_opt("after_event_at", r.after_event_at.as_ref())?;
        let pace = Pace {
            poll: self.poll,
            heartbeat: self.heartbeat,
        };
        let watch = self
            .broker
            .watch_revocations(
                &caller,
                r.after_sequence,
                after_at,
                pace,
                self.shutdown.clone(),
            )
            .await
            .map_err(Status::from)?;
        let stream = watch.map(|item| match item {
            Ok(Watched::Event(ev)) => Ok(convert::watch_event(&ev)),
            Ok(Watched::Heartbeat { head, at }) => Ok(convert::heartbeat(head, at)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

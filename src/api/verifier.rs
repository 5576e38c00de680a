//! VerifierService: resource servers introspect tokens, fetch keys and follow the
//! revocation stream.
use super::pb::verifier_service_server::VerifierService;
use super::pb::*;
use super::{Auth, convert};
use crate::broker::{Broker, MisuseKind};
use crate::identity::Role;
use crate::revocation::{Anchor, Resync, ResyncReason};
use futures::Stream;
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

const VERIFIERS: &[Role] = &[Role::Verifier, Role::Admin];
const ANYONE: &[Role] = &[Role::Agent, Role::Orchestrator, Role::Admin, Role::Verifier];
const BATCH: u32 = 500;
/// Only resource servers report misuse; the security team revokes directly.
const REPORTERS: &[Role] = &[Role::Verifier];

/// Counts a watch refused or ended for a resync.
fn resynced(why: ResyncReason) {
    crate::metrics::WATCH_RESYNCS
        .get_or_create(&crate::metrics::Reason {
            reason: why.as_str(),
        })
        .inc();
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
        if r.token.is_empty() {
            return Err(crate::error::invalid("token", "is required"));
        }
        let kind = MisuseKind::parse(&r.kind).ok_or_else(|| {
            crate::error::invalid("kind", "must be \"binding_mismatch\" or \"out_of_scope\"")
        })?;
        let evidence = convert::evidence(&r.evidence)?;
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
        let after = r.after_sequence;
        let after_at = convert::time_opt("after_event_at", r.after_event_at.as_ref())?;
        let broker = self.broker.clone();
        let shutdown = self.shutdown.clone();
        let poll = self.poll;
        let heartbeat = self.heartbeat;
        // The stream may not outlive the caller's SVID: it ends, UNAUTHENTICATED,
        // when the certificate does, and the verifier reconnects with a fresh one.
        let clock = self.auth.clock.clone();
        let valid_until = caller.valid_until;
        // Subscribe before the first read, so nothing committed in between is missed.
        let mut wake = broker.hub().subscribe();
        // A cursor past the store's head (a restored store, a lagging standby) is
        // refused: the events later committed under its numbers would never be
        // sent, while heartbeats would say they had been. So is one before the
        // history kept: the events after it that were pruned would never be sent.
        let bounds = broker.revocation_bounds().await?;
        if let Some(refused) = Resync::at_open(after, bounds) {
            // Counted, not logged one by one: a verifier may ask again and again.
            resynced(refused.why);
            tracing::debug!(caller = %caller.id, after, first = bounds.first, head = bounds.head, why = ?refused.why, "revocation watch refused: the store cannot serve the cursor; the verifier must resync");
            return Err(refused.into());
        }
        tracing::info!(caller = %caller.id, after, "revocation watch opened");
        let stream = async_stream::try_stream! {
            // The event the stream stands on; every read starts at it again, so a
            // store whose history was replaced under the stream is noticed.
            let mut anchor = Anchor::claimed(after, after_at);
            // Quiet since: a heartbeat goes out once the stream has sent nothing
            // for `heartbeat`, so the verifier can tell quiet from cut off.
            let mut quiet_since = tokio::time::Instant::now();
            loop {
                // Always read from the store by cursor: a watcher that fell behind is
                // caught up from there, never skipped.
                loop {
                    let batch = broker.revocations_after(anchor.read_after(), BATCH).await.map_err(Status::from)?;
                    let full = batch.len() as u32 == BATCH;
                    let seen = match anchor.check(&batch) {
                        Ok(n) => n,
                        Err(diverged) => {
                            let bounds = broker.revocation_bounds().await.map_err(Status::from)?;
                            let resync = Resync::diverged(anchor.seq(), bounds, diverged);
                            resynced(resync.why);
                            tracing::warn!(caller = %caller.id, cursor = anchor.seq(), first = bounds.first, head = bounds.head, why = ?resync.why, "revocation watch ended: the store no longer holds what the stream sent; the verifier must resync");
                            Err::<usize, Status>(resync.into())?
                        }
                    };
                    for ev in batch.into_iter().skip(seen) {
                        quiet_since = tokio::time::Instant::now();
                        yield convert::watch_event(&ev);
                        anchor = Anchor::Sent(ev);
                    }
                    if !full {
                        break;
                    }
                }
                // Caught up: the read above found the anchor and nothing after it,
                // so the anchor is the store's head. Only now may a heartbeat say
                // so; one due while waiting below comes back here first.
                if quiet_since.elapsed() >= heartbeat {
                    quiet_since = tokio::time::Instant::now();
                    yield convert::heartbeat(anchor.seq(), clock.now());
                }
                let left = valid_until - clock.now().unix_timestamp();
                if left <= 0 {
                    Err(Status::unauthenticated(
                        "the client's X.509-SVID expired; reconnect with a fresh SVID and the last sequence seen",
                    ))?;
                }
                let beat_at = quiet_since + heartbeat;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = wake.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(poll.min(Duration::from_secs(left as u64))) => {}
                    // Due: read the store again, then send it (above).
                    _ = tokio::time::sleep_until(beat_at) => {}
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

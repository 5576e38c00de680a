//! Failing fast while the store is down. A background probe keeps the store's
//! [`Health`]; [`Gated`] wraps a store so that, once the probe has found it down,
//! every new call answers `Unavailable` at once instead of each waiting out the
//! connect timeout. A call that fails as unavailable makes the probe look soon
//! (at most every [`SUSPECT_SPACING`]); the probe needs two failures in a row to
//! call the store down, backs off while it stays down, and reopens the gate by
//! itself when it answers again.
//!
//! Reads already under way when the store is found down are given up (they
//! change nothing, and may otherwise wait on a dead connection for as long as
//! TCP takes to notice). Writes under way are left to finish or fail by
//! themselves: one may have committed (a budget counted, an approval spent, a
//! revocation made), and giving it up would report a change that happened as one
//! that did not. Nothing here changes what a call does when it runs: a token is
//! still returned only after its row committed. The gate only refuses sooner.
use super::*;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the probe last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Up,
    Down {
        since: Instant,
        /// The probe's error, for readiness and logs.
        error: String,
    },
}

/// The store's health, as the probe keeps it; read by the gate and `/readyz`.
pub struct Health {
    state: watch::Sender<Status>,
    /// Woken when a call met an unavailable store: probe now.
    suspect: Notify,
}

impl Health {
    /// Up until a probe says otherwise (the broker connected at start).
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            state: watch::Sender::new(Status::Up),
            suspect: Notify::new(),
        })
    }

    pub fn status(&self) -> Status {
        self.state.borrow().clone()
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.state.borrow(), Status::Up)
    }

    fn refusal(&self) -> StoreError {
        match &*self.state.borrow() {
            Status::Down { since, .. } => StoreError::Unavailable(format!(
                "the store has been unreachable for {}s; failing fast until it answers the broker's probe again",
                since.elapsed().as_secs()
            )),
            Status::Up => StoreError::Unavailable("the store became unreachable".into()),
        }
    }

    fn set(&self, status: Status) {
        self.state.send_replace(status);
    }
}

/// A store whose calls fail fast while [`Health`] says it is down.
pub struct Gated {
    inner: Arc<dyn Store>,
    health: Arc<Health>,
}

impl Gated {
    pub fn new(inner: Arc<dyn Store>, health: Arc<Health>) -> Self {
        Gated { inner, health }
    }

    /// A call that changes something: refused while down, never given up.
    async fn write<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.health.is_up() {
            return Err(self.health.refusal());
        }
        self.watch(call.await)
    }

    /// A call that only reads: refused while down, and given up if the probe
    /// finds the store down while it waits.
    async fn read<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut state = self.health.state.subscribe();
        if !matches!(*state.borrow_and_update(), Status::Up) {
            return Err(self.health.refusal());
        }
        tokio::select! {
            biased;
            r = call => self.watch(r),
            Ok(_) = state.wait_for(|s| !matches!(s, Status::Up)) => Err(self.health.refusal()),
        }
    }

    /// A call that met an unavailable store makes the probe look.
    fn watch<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(r, Err(StoreError::Unavailable(_))) {
            self.health.suspect.notify_one();
        }
        r
    }
}

/// The least time between probes that calls' failures ask for, so a store that
/// is merely overloaded is not also flooded with probes.
pub const SUSPECT_SPACING: Duration = Duration::from_millis(100);

/// Probes the store every `every` while it answers; once two probes in a row do
/// not (failed or timed out), marks it down and probes again after 50 ms,
/// doubling up to `every`, until it answers. A call that met an unavailable store
/// makes it probe sooner.
pub async fn probe(
    store: Arc<dyn Store>,
    health: Arc<Health>,
    every: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(50);
    let mut retry = FIRST_RETRY;
    // A failure while up: confirmed by the next probe before the gate closes.
    let mut doubt: Option<StoreError> = None;
    loop {
        let answer = match tokio::time::timeout(timeout, store.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))),
        };
        let wait = match (answer, health.status()) {
            (Ok(()), Status::Up) => {
                doubt = None;
                every
            }
            (Ok(()), Status::Down { since, .. }) => {
                health.set(Status::Up);
                retry = FIRST_RETRY;
                info!(
                    down_for_ms = since.elapsed().as_millis() as u64,
                    "the store answers again; serving"
                );
                every
            }
            (Err(error), Status::Up) if doubt.is_none() => {
                doubt = Some(error);
                FIRST_RETRY
            }
            (Err(error), Status::Up) => {
                doubt = None;
                warn!(%error, "the store does not answer; calls fail fast (UNAVAILABLE) until it does");
                crate::metrics::STORE_OUTAGES.inc();
                health.set(Status::Down {
                    since: Instant::now(),
                    error: error.to_string(),
                });
                retry = FIRST_RETRY;
                retry
            }
            (Err(error), Status::Down { since, .. }) => {
                health.set(Status::Down {
                    since,
                    error: error.to_string(),
                });
                retry = (retry * 2).min(every.max(FIRST_RETRY));
                retry
            }
        };
        let at = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
            _ = health.suspect.notified(), if health.is_up() && doubt.is_none() => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(SUSPECT_SPACING.min(wait)) => {}
                }
            }
        }
    }
}

#[async_trait]
impl TaskStore for Gated {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(self.inner.insert_task(task, audit)).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.read(self.inner.get_task(id)).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.read(self.inner.list_tasks(filter)).await
    }
    async fn count_active_tasks(&self) -> Result<u64, StoreError> {
        self.read(self.inner.count_active_tasks()).await
    }
    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        revocation: &Revocation,
        audit: &[AuditEvent],
    ) -> Result<EndOutcome, StoreError> {
        self.write(self.inner.end_task(id, to, revocation, audit))
            .await
    }
    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        limit: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError> {
        self.read(self.inner.overdue_tasks(now, after, limit)).await
    }
}

#[async_trait]
impl TokenStore for Gated {
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(self.inner.insert_token(token, budget, audit))
            .await
    }
    async fn token_status(&self, jti: Uuid) -> Result<Option<TokenStatus>, StoreError> {
        self.read(self.inner.token_status(jti)).await
    }
    async fn get_token(&self, jti: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        self.read(self.inner.get_token(jti)).await
    }
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(self.inner.list_tokens(filter)).await
    }
}

#[async_trait]
impl DelegationStore for Gated {
    async fn insert_delegation(
        &self,
        delegation: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(self.inner.insert_delegation(delegation, open_limit, audit))
            .await
    }
    async fn get_delegation(&self, id: Uuid) -> Result<Option<Delegation>, StoreError> {
        self.read(self.inner.get_delegation(id)).await
    }
    async fn redeem_delegation(
        &self,
        id: Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError> {
        self.write(self.inner.redeem_delegation(id, child, budget, audit))
            .await
    }
}

#[async_trait]
impl ApprovalStore for Gated {
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &str,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError> {
        self.read(self.inner.standing_approval(task, requester, scope, now))
            .await
    }
    async fn insert_approval(
        &self,
        approval: &Approval,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(self.inner.insert_approval(approval, audit))
            .await
    }
    async fn get_approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError> {
        self.read(self.inner.get_approval(id)).await
    }
    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.read(self.inner.list_approvals(filter)).await
    }
    async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Decide, StoreError> {
        self.write(
            self.inner
                .decide_approval(id, approve, by, reason, now, audit),
        )
        .await
    }
    async fn spend_approval(
        &self,
        id: Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError> {
        self.write(self.inner.spend_approval(id, token, budget, audit))
            .await
    }
    async fn count_step_up_refusal(
        &self,
        task: TaskId,
        approval: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError> {
        self.write(self.inner.count_step_up_refusal(task, approval, now, audit))
            .await
    }
}

#[async_trait]
impl FreezeStore for Gated {
    async fn freeze(&self, freeze: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError> {
        self.write(self.inner.freeze(freeze, audit)).await
    }
    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError> {
        self.write(self.inner.unfreeze(target, audit)).await
    }
    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        self.read(self.inner.list_freezes()).await
    }
    async fn freeze_covering(
        &self,
        agents: &[&str],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError> {
        self.read(self.inner.freeze_covering(agents, workflow))
            .await
    }
}

#[async_trait]
impl RevocationStore for Gated {
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        self.write(self.inner.revoke(revocation, audit)).await
    }
    async fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.read(self.inner.revocations_after(after, limit)).await
    }
    async fn last_revocation_seq(&self) -> Result<u64, StoreError> {
        self.read(self.inner.last_revocation_seq()).await
    }
    /// Not gated: the follower reconnects the feed by itself, and must be able to
    /// start listening the moment the store is back.
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        self.inner.revocation_feed().await
    }
}

#[async_trait]
impl KeyStore for Gated {
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.write(self.inner.register_key(key)).await
    }
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(self.inner.live_keys(now)).await
    }
}

#[async_trait]
impl AuditStore for Gated {
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.write(self.inner.append_audit(event)).await
    }
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(self.inner.audit_for_task(task)).await
    }
    async fn audit_chain(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
    ) -> Result<Vec<Sealed>, StoreError> {
        self.read(self.inner.audit_chain(after, upto, limit)).await
    }
    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.read(self.inner.audit_head()).await
    }
    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError> {
        self.write(self.inner.seal_audit(batch)).await
    }
    async fn query_audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        self.read(self.inner.query_audit(filter)).await
    }
    async fn token_access(
        &self,
        audience: &str,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<Access>, StoreError> {
        self.read(self.inner.token_access(audience, since, until))
            .await
    }
}

#[async_trait]
impl Store for Gated {
    /// The store itself, past the gate: this is what the probe asks.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

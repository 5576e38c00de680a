//! The use cases, one file each. Callers arrive authenticated and role-checked;
//! requests arrive parsed into domain types. A use case reads top to bottom:
//! load what it judges, judge it with the pure rules of `domain`, ask policy,
//! write the change with its audit event in one transaction, publish. Every
//! refusal goes through `refuse.rs`, the one place where it becomes its audit
//! event, its metrics and the workflow's response to a deviation; `error.rs`
//! (above) alone chooses the status code a refusal is answered with.
//!
//! - `open.rs` opens a task; `end.rs` completes one and sweeps expired ones;
//!   `deviate.rs` ends one an orchestrator reports deviated; `read.rs` reads
//!   tasks and tokens.
//! - `mint.rs` mints; `step_up.rs` is a mint's step-up branch; `approvals.rs`
//!   waits for and decides step-up approvals.
//! - `delegate.rs` offers a token to a sub-agent; `redeem.rs` redeems an offer.
//! - `revoke.rs`, `freeze.rs` (the kill switch), `quarantine.rs`, `introspect.rs`,
//!   `misuse.rs`.
//! - `prune.rs` prunes what stopped mattering, after its retention.
//! - `keys.rs` registers and reads the keyring's keys and signs tokens.
//! - `audit.rs` seals, verifies and queries the audit trail; `archive.rs`
//!   exports and archives its oldest events; `watch.rs` is what a revocation
//!   watch stream reads.
use crate::clock::{Clock, to_micros};
use crate::domain::refusal::Refusal;
use crate::policy::Policy;
use crate::revocation::Hub;
use crate::store::{Store, StoreError};
use crate::token::{KeyError, Keyring, TokenError};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

mod approvals;
mod archive;
mod audit;
mod delegate;
mod deviate;
mod end;
mod facts;
mod freeze;
mod introspect;
mod keys;
mod mint;
mod misuse;
mod open;
mod prune;
mod quarantine;
mod read;
mod redeem;
mod refuse;
mod revoke;
mod step_up;
mod watch;

pub use archive::{AuditArchived, ExportEnd, ExportPage};
pub use audit::{AgentAccess, AuditCheck};
pub use delegate::{DelegateRequest, Delegated, MAX_OPEN_OFFERS};
pub use end::Sweep;
pub use mint::{Mint, MintRequest, Minted};
pub use misuse::MisuseKind;
pub use open::StartTask;
pub use prune::Pruned;
pub use revoke::GivenBy;

/// The actor named when the broker itself acts (the expiry sweeper).
pub const SYSTEM_ACTOR: &str = "mayfly";

/// What a use case ran into. Each variant says what happened; `error.rs` turns
/// each into a gRPC status (and the HTTP edge's answers).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A rule refused the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Refused as a deviation: the task is now deviated and its tokens revoked.
    #[error("{0}; the task is now deviated and its tokens are revoked")]
    Deviated(Refusal),
    /// A token given in the request field `field` is not one this broker issued.
    #[error("{field}: {why}")]
    BadToken { field: &'static str, why: BadToken },
    /// An export or archive of the audit trail does not match the store.
    #[error(transparent)]
    Archive(#[from] crate::domain::audit::archive::Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A broken invariant, never the caller's doing.
    #[error("{0}")]
    Internal(String),
}

/// Why a token given as an argument is not one this broker issued.
#[derive(Debug, thiserror::Error)]
pub enum BadToken {
    #[error("was not issued by this broker")]
    NotOurs,
    /// Its signature or time window does not verify: `expected` says what it
    /// should have been.
    #[error("{expected}: {cause}")]
    Invalid {
        expected: &'static str,
        cause: TokenError,
    },
    #[error("is not recorded by this broker")]
    NotRecorded,
    #[error("carries no valid task id")]
    NoTask,
}

pub struct Broker {
    store: Arc<dyn Store>,
    policy: Arc<dyn Policy>,
    clock: Arc<dyn Clock>,
    hub: Hub,
    keys: Keyring,
    issuer: String,
    key_heartbeat: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    /// How long a step-up approval stands.
    approval_ttl: Duration,
    /// How often a wait for an approval decision re-reads the store regardless.
    /// Decisions wake waiters at once (on this replica directly, on others
    /// through the store's notices); this bounds the wait when notices are lost.
    notice_poll: Duration,
    /// Active tasks' facts, as mints first read them.
    facts: facts::TaskFacts,
}

impl Broker {
    /// Generates this process's signing key and registers its public half.
    pub async fn new(
        store: Arc<dyn Store>,
        policy: Arc<dyn Policy>,
        clock: Arc<dyn Clock>,
        issuer: String,
        key_heartbeat: Duration,
    ) -> Result<Self, BrokerError> {
        let keys = Keyring::generate(clock.now())?;
        let latest = store.last_revocation_seq().await?;
        let broker = Broker {
            keys,
            store,
            policy,
            clock,
            hub: Hub::new(latest),
            issuer,
            key_heartbeat,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            approval_ttl: crate::domain::DEFAULT_APPROVAL_TTL,
            notice_poll: Duration::from_secs(2),
            facts: Default::default(),
        };
        broker.renew_key().await?;
        broker.refresh_keys().await?;
        Ok(broker)
    }

    /// Sets how long a step-up approval stands (`tasks.approval_ttl`).
    pub fn with_approval_ttl(mut self, ttl: Duration) -> Self {
        self.approval_ttl = ttl;
        self
    }

    /// Sets the safety-net re-read of approval waits (`revocation.poll_interval`).
    pub fn with_notice_poll(mut self, poll: Duration) -> Self {
        self.notice_poll = poll;
        self
    }

    /// The time, at the precision the store keeps.
    fn now(&self) -> OffsetDateTime {
        to_micros(self.clock.now())
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The id of the key that signs.
    pub fn kid(&self) -> String {
        self.keys.kid()
    }
}

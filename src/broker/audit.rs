//! Checking the tamper-evident audit trail, from where the stored chain starts
//! (its anchor: the last event archived, or the genesis).
use super::{Broker, BrokerError};
use crate::domain::audit::AuditEvent;
use crate::domain::audit::archive::Refused;
use crate::domain::audit::chain::{Broken, Checkpoint, Verifier};
use crate::domain::{Scope, SpiffeId};
use crate::store::{AuditFilter, AuditHead, StoreError};
use time::OffsetDateTime;
use tracing::error;

/// Events read per page while verifying.
const PAGE: u32 = 1000;

/// How often a check starts again when an archive moved the anchor under it.
const RETRIES: u32 = 3;

/// The outcome of an audit chain check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Events verified, from the one after the anchor.
    pub checked: u64,
    /// The chain's head when the check began: later events are left for the next.
    pub head: u64,
    /// The head's hash: record it outside the database, and give it back later as
    /// a checkpoint, to catch a rewrite of the whole chain.
    pub head_hash: Vec<u8>,
    /// Where the stored chain starts: the last event archived (the genesis
    /// before any); the archives verify the events up to it.
    pub anchor: Checkpoint,
    /// The first event that does not verify, and why.
    pub broken: Option<Broken>,
}

/// Events sealed per store call.
const SEAL_BATCH: u32 = 1000;

impl Broker {
    /// Seals every committed audit event that arrived unsealed into the chain;
    /// returns how many. Events are sealed as they are written; this seals those
    /// that were not (an older broker's, during a rolling upgrade). Brokers run it continuously
    /// (`audit.seal_interval`) and before reading the chain.
    pub async fn seal_audit(&self) -> Result<u64, BrokerError> {
        let mut sealed = 0;
        loop {
            let n = self.store.seal_audit(SEAL_BATCH).await?;
            sealed += u64::from(n);
            if n < SEAL_BATCH {
                return Ok(sealed);
            }
        }
    }

    /// Walks the stored chain from its anchor up to its current head,
    /// recomputing every hash, and names the first event that is missing, out of
    /// place or edited; then checks that nothing was cut from the end or written
    /// past the head or the sealing. With a `checkpoint` (an event's position
    /// and hash recorded earlier), the chain must still pass through it (or
    /// start after it); one the store archived since is refused: its archive
    /// verifies against it.
    pub async fn verify_audit(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> Result<AuditCheck, BrokerError> {
        // Everything committed so far is in the chain before it is checked (what
        // arrived unsealed too).
        self.seal_audit().await?;
        let mut retries = 0;
        loop {
            let head = self.store.audit_head().await?;
            if let Some(c) = &checkpoint
                && c.seq < head.anchor.seq
            {
                return Err(Refused::CheckpointArchived {
                    seq: c.seq,
                    anchor: head.anchor.seq,
                }
                .into());
            }
            let check = self.check(&head, checkpoint.clone()).await?;
            // An archive removed events while they were read: check again from
            // its anchor.
            if check.broken.is_some()
                && retries < RETRIES
                && self.store.audit_head().await?.anchor != head.anchor
            {
                retries += 1;
                continue;
            }
            if let Some(b) = &check.broken {
                error!(seq = b.seq, why = %b.why, "the audit chain is broken");
            }
            return Ok(check);
        }
    }

    async fn check(
        &self,
        head: &AuditHead,
        checkpoint: Option<Checkpoint>,
    ) -> Result<AuditCheck, BrokerError> {
        let mut v = Verifier::after(head.anchor.clone());
        if let Some(c) = checkpoint {
            v = v.through(c);
        }
        let broken = match self.walk(&mut v, head.seq).await? {
            Some(b) => Some(b),
            None => v.finish(head.seq, &head.hash).err(),
        };
        let broken = broken.or_else(|| {
            (head.max_seq > head.seq).then(|| Broken {
                seq: head.seq + 1,
                why: format!(
                    "events up to {} are stored past the chain's head at {} (the head was rewound)",
                    head.max_seq, head.seq
                ),
            })
        });
        Ok(AuditCheck {
            checked: v.checked(),
            head: head.seq,
            head_hash: head.hash.clone(),
            anchor: head.anchor.clone(),
            broken,
        })
    }

    /// Feeds `v` the stored chain after where it stands, up to `upto`; the
    /// first event that does not verify, if one does not.
    pub(super) async fn walk(
        &self,
        v: &mut Verifier,
        upto: u64,
    ) -> Result<Option<Broken>, StoreError> {
        loop {
            let page = self.store.audit_chain(v.last_seq(), upto, PAGE).await?;
            for e in &page {
                if let Err(b) = v.push(e) {
                    return Ok(Some(b));
                }
            }
            // A short page is the end of what is stored up to `upto`.
            if page.len() < PAGE as usize || v.last_seq() >= upto {
                return Ok(None);
            }
        }
    }
}

/// One agent's tokens for an audience, over the resource patterns asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAccess {
    pub agent: SpiffeId,
    pub tokens: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
    pub resources: Vec<String>,
}

impl Broker {
    /// Sealed audit events matching `filter`, in chain order (sealing what was
    /// committed first, so nothing recent is missed).
    pub async fn query_audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<(u64, AuditEvent)>, BrokerError> {
        self.seal_audit().await?;
        Ok(self.store.query_audit(filter).await?)
    }

    /// Which agents held tokens for `audience` in the window, with resources
    /// overlapping `resource` when given.
    pub async fn audit_access(
        &self,
        audience: &str,
        resource: Option<&Scope>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<AgentAccess>, BrokerError> {
        let rows = self.store.token_access(audience, since, until).await?;
        let mut out: Vec<AgentAccess> = vec![];
        for a in rows {
            let held = Scope {
                audience: audience.to_string(),
                resource: a.resource.clone(),
                action: "*".into(),
            };
            if resource.is_some_and(|r| !held.overlaps(r)) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.agent == a.agent => {
                    last.tokens += a.tokens;
                    last.first = last.first.min(a.first);
                    last.last = last.last.max(a.last);
                    last.resources.push(a.resource);
                }
                _ => out.push(AgentAccess {
                    agent: a.agent,
                    tokens: a.tokens,
                    first: a.first,
                    last: a.last,
                    resources: vec![a.resource],
                }),
            }
        }
        Ok(out)
    }
}

//! Checking the tamper-evident audit trail.
use super::*;
use crate::audit::chain::{Broken, Verifier};

/// Events read per page while verifying.
const PAGE: u32 = 1000;

/// The outcome of an audit chain check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Events verified, from the first.
    pub checked: u64,
    /// The chain's head when the check began: later events are left for the next.
    pub head: u64,
    /// The head's hash: record it outside the database, and give it back later as
    /// a checkpoint, to catch a rewrite of the whole chain.
    pub head_hash: Vec<u8>,
    /// The first event that does not verify, and why.
    pub broken: Option<Broken>,
}

/// Events sealed per store call.
const SEAL_BATCH: u32 = 1000;

impl Broker {
    /// Seals every committed, unsealed audit event into the chain; returns how
    /// many. Brokers run it continuously (`audit.seal_interval`).
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

    /// Walks the whole chain up to its current head, recomputing every hash, and
    /// names the first event that is missing, out of place or edited; then checks
    /// that nothing was cut from the end or written past the head or the sealing.
    /// With a `checkpoint` (an event's position and hash recorded earlier), the
    /// chain must still pass through it.
    pub async fn verify_audit(
        &self,
        checkpoint: Option<(u64, Vec<u8>)>,
    ) -> Result<AuditCheck, BrokerError> {
        // Everything committed so far is in the chain before it is checked.
        self.seal_audit().await?;
        let head = self.store.audit_head().await?;
        let mut v = match checkpoint {
            Some((seq, hash)) => Verifier::with_checkpoint(seq, hash),
            None => Verifier::default(),
        };
        let broken = 'walk: loop {
            let page = self.store.audit_chain(v.checked(), head.seq, PAGE).await?;
            for e in &page {
                if let Err(b) = v.push(e) {
                    break 'walk Some(b);
                }
            }
            // A short page is the end of what is stored up to the head.
            if page.len() < PAGE as usize || v.checked() >= head.seq {
                break v.finish(head.seq, &head.hash).err();
            }
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
        if let Some(b) = &broken {
            error!(seq = b.seq, why = %b.why, "the audit chain is broken");
        }
        Ok(AuditCheck {
            checked: v.checked(),
            head: head.seq,
            head_hash: head.hash,
            broken,
        })
    }
}

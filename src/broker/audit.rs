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
    /// The first event that does not verify, and why.
    pub broken: Option<Broken>,
}

impl Broker {
    /// Walks the whole chain up to its current head, recomputing every hash, and
    /// names the first event that is missing, out of place or edited; then checks
    /// that nothing was cut from the end and no stored event is outside the chain.
    pub async fn verify_audit(&self) -> Result<AuditCheck, BrokerError> {
        let head = self.store.audit_head().await?;
        let mut v = Verifier::default();
        let broken = 'walk: loop {
            let page = self.store.audit_chain(v.checked(), PAGE).await?;
            for e in page.iter().take_while(|e| e.seq <= head.seq) {
                if let Err(b) = v.push(e) {
                    break 'walk Some(b);
                }
            }
            if page.len() < PAGE as usize || v.checked() >= head.seq {
                break v.finish(head.seq, &head.hash).err();
            }
        };
        let broken = broken.or_else(|| {
            (head.unsealed > 0).then(|| Broken {
                seq: head.seq + 1,
                why: format!(
                    "{} stored events are outside the chain (written past its sealing)",
                    head.unsealed
                ),
            })
        });
        if let Some(b) = &broken {
            error!(seq = b.seq, why = %b.why, "the audit chain is broken");
        }
        Ok(AuditCheck {
            checked: v.checked(),
            head: head.seq,
            broken,
        })
    }
}

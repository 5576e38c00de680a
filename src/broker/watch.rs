//! What a revocation watch stream reads: the store's history by cursor and its
//! head, and the active-task count the metrics report. The stream itself (its
//! anchor, heartbeats and resync) is the API's; the reads are the broker's.
use super::{Broker, BrokerError};
use crate::domain::Event;
use crate::store::RevocationBounds;

impl Broker {
    /// Up to `limit` revocation events with a sequence above `after`, in order.
    pub async fn revocations_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, BrokerError> {
        Ok(self.store.revocations_after(after, limit).await?)
    }

    /// Where the revocation history the store keeps starts (older events were
    /// pruned) and its last event (0: none).
    pub async fn revocation_bounds(&self) -> Result<RevocationBounds, BrokerError> {
        Ok(self.store.revocation_bounds().await?)
    }

    /// Active tasks, all replicas', for the metrics gauge.
    pub async fn count_active_tasks(&self) -> Result<u64, BrokerError> {
        Ok(self.store.count_active_tasks().await?)
    }
}

//! Faults on demand through the store's fault hook, for tests that drive the
//! broker through an outage: the writes fail as an unavailable store's do.
use mayfly::store::{FaultHook, SqlStore, StoreError, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Token writes (mints, redemptions, spent approvals) fail without writing while
/// `fail_inserts` is set, task endings while `down` is set.
#[derive(Default)]
pub struct Faults {
    pub fail_inserts: AtomicBool,
    /// Every token write attempted.
    pub insert_calls: AtomicUsize,
    pub down: AtomicBool,
    /// Batches of minted tokens fail at their commit, after their statements
    /// ran (then roll back), while set.
    pub fail_commits: AtomicBool,
    /// Task endings attempted while `down`.
    pub end_calls: AtomicUsize,
}

impl Faults {
    /// `store` with these faults, and the switches.
    pub fn over(store: SqlStore) -> (Arc<SqlStore>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (Arc::new(store.with_faults(faults.clone())), faults)
    }
}

impl FaultHook for Faults {
    fn before(&self, write: Write) -> Result<(), StoreError> {
        if write.records_token() {
            self.insert_calls.fetch_add(1, Ordering::SeqCst);
            if self.fail_inserts.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection reset".into()));
            }
        }
        if write == Write::CommitTokens && self.fail_commits.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection lost at commit".into()));
        }
        if write == Write::EndTask && self.down.load(Ordering::SeqCst) {
            self.end_calls.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(())
    }
}

//! An orchestrator reports its task deviated: the agent left its objective, say,
//! which only the orchestrator can see. Ended as a completion is (`end.rs`), by the
//! orchestrator that opened the task only, but as `deviated`, with revocation
//! trigger `deviation` and the orchestrator's reason.
use super::end::Ending;
use super::{Broker, BrokerError};
use crate::domain::{Event, Task, TaskId};
use crate::identity::Caller;

impl Broker {
    /// Ends the active task `id` as deviated and revokes all its tokens in one
    /// transaction, audited with the orchestrator and `reason` (parsed at the
    /// edge: required, one line). The ended task and its revocation event.
    pub async fn report_deviation(
        &self,
        caller: &Caller,
        id: TaskId,
        reason: String,
    ) -> Result<(Task, Event), BrokerError> {
        self.end_as_opener(caller, id, Ending::Deviate, reason)
            .await
    }
}

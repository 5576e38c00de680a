//! Reading tasks and tokens (orchestrators read tasks; the security team lists
//! tokens).
use super::{Broker, BrokerError};
use crate::domain::refusal::Refusal;
use crate::domain::{Missing, Task, TaskId, TokenRecord};
use crate::store::{TaskFilter, TokenFilter};

impl Broker {
    pub async fn get_task(&self, id: TaskId) -> Result<Task, BrokerError> {
        self.store
            .get_task(id)
            .await?
            .ok_or_else(|| Refusal::NotFound(Missing::Task(id)).into())
    }

    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, BrokerError> {
        Ok(self.store.list_tasks(filter).await?)
    }

    pub async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, BrokerError> {
        Ok(self.store.list_tokens(filter).await?)
    }
}

//! Pure types and rules: scopes and their coverage, task states, token lifetimes. No I/O.
mod scope;
mod task;

pub use scope::{Scope, ScopeError};
pub use task::{Task, TaskId, TaskState, TransitionError, grant_ttl};

//! Pure types and rules: scopes and their coverage, task states, token lifetimes,
//! text a person reads and how errors quote values. No I/O.
mod scope;
mod task;
pub mod text;

pub use scope::{Scope, ScopeError};
pub use task::{Task, TaskId, TaskState, TransitionError, grant_ttl};

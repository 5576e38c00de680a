//! Every aggregate type and the pure rules: tasks and their states, scopes and
//! their coverage, the mint decision, delegation and step-up rules and the typed
//! refusals they return, tokens as recorded, delegations, step-up approvals, freezes,
//! revocations, how long what is no longer needed is kept, audit events and their chain, signing key registrations, SPIFFE
//! IDs and ID patterns, token lifetimes, text a person reads
//! and how errors quote values. No I/O; every other module may depend on it, it
//! on none of them.
mod approval;
/// Audit events and their hash chain (the broker's only).
#[cfg(feature = "server")]
pub mod audit;
pub mod delegation;
#[cfg(test)]
mod fixture;
mod freeze;
mod key;
pub mod mint;
/// Not re-exported here: `store::Refusal` (why the store's write refused) is
/// glob-imported beside `domain::*` by the store's conformance suite.
pub mod refusal;
pub mod retention;
pub mod revocation;
mod scope;
mod spiffe;
mod task;
pub mod text;
mod token;

pub use approval::{Approval, ApprovalState, DEFAULT_APPROVAL_TTL, Standing, repeats_allowed};
pub use delegation::Delegation;
pub use freeze::{Freeze, FreezeTarget};
pub use key::KeyRecord;
pub use mint::Limits;
pub use refusal::{Missing, TaskClosed, Widening};
pub use revocation::{Event, Revocation, Target, Trigger};
pub use scope::{Scope, ScopeError};
pub use spiffe::{IdPattern, PatternError, SpiffeId, SpiffeIdError};
pub use task::{Task, TaskId, TaskState, TransitionError, grant_ttl};
pub use token::TokenRecord;

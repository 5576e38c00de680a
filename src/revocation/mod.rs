//! The fan-out of revocation events to watch streams, following other replicas,
//! and where a watch stream stands in the store's history. The events themselves
//! are domain types (`domain::revocation`).
mod cursor;
mod feed;
mod hub;

pub use cursor::{Anchor, Diverged, Resync, ResyncReason};
pub use feed::follow_store;
pub use hub::Hub;

//! The fan-out of revocation events to watch streams, following other replicas,
//! where a watch stream stands in the store's history, and what it yields. The
//! events themselves are domain types (`domain::revocation`).
mod cursor;
mod feed;
mod hub;
mod watch;

pub use cursor::{Anchor, Diverged, Resync, ResyncReason};
pub use feed::follow_store;
pub use hub::Hub;
pub use watch::{Pace, Watch, WatchError, Watched, resynced};

//! Test support, one module per concern: the database of a test, its PKI, the
//! broker's config file, the broker in-process or as a child process, a proxy
//! the test can cut, the requests tests send, and a Server-Sent Events client.
mod app;
mod config;
mod db;
mod oauth;
mod pki;
mod process;
mod proxy;
mod requests;
mod sse;

pub use app::*;
pub use config::*;
pub use db::*;
pub use oauth::*;
pub use pki::*;
pub use process::*;
pub use proxy::*;
pub use requests::*;
pub use sse::*;

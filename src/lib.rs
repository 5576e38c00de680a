//! Mayfly: a just-in-time credential broker for autonomous AI agents.
//!
//! - [`identity`]: X.509-SVID verification, roles, the caller.
//! - [`domain`]: every aggregate type (tasks, tokens as recorded, delegations,
//!   approvals, freezes, revocations, audit events and their hash chain, signing
//!   key registrations, SPIFFE IDs) and the pure rules (the mint decision,
//!   delegation and step-up rules) with their typed refusals.
//! - `policy`: Cedar decisions to open a task or mint a token, and reload.
//! - [`token`]: claims, Ed25519 signing, the keyring (current and next keys),
//!   JWKS, verification.
//! - `broker`: the use cases, one file each (open, mint, complete, delegate,
//!   redeem, step up, revoke, freeze, introspect, report), and the one place a
//!   refusal is recorded, counted and answered as a deviation.
//! - `revocation`: the fan-out hub, following other replicas (NOTIFY), cursors.
//! - `store`: the `Store` traits, the fail-fast gate, PostgreSQL and SQLite.
//! - [`api`]: the gRPC services and proto conversion, and `api::oauth`, the OAuth
//!   front door on the same port over the same use cases; `error`: errors to
//!   gRPC statuses and OAuth errors.
//! - `app`: building and running the broker, serving connections under caps and
//!   deadlines; `config`: settings.
//! - `cli`, `client`: the `mayfly` command line and its client commands;
//!   `bench`: the load driver of `mayfly bench` and the load examples.
//! - `verifier` (feature `verifier`): the library resource servers embed.
//! - `testing` (tests only): what the inline unit and property tests share.
//!
//! Feature `server` (default) is the broker; without it (`default-features = false,
//! features = ["verifier"]`) the crate is the verifier library and what it needs:
//! `identity`, `domain`, `token`, `clock` and the generated protobuf `api::pb`.
#![forbid(unsafe_code)]

pub mod api;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod broker;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod client;
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod dev;
pub mod domain;
#[cfg(feature = "server")]
pub mod error;
pub mod identity;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod revocation;
#[cfg(feature = "server")]
pub mod store;
#[cfg(test)]
mod testing;
pub mod token;
#[cfg(feature = "verifier")]
pub mod verifier;

//! Mayfly: a just-in-time credential broker for autonomous AI agents.
//!
//! - [`identity`]: SPIFFE IDs, X.509-SVID verification, roles, the caller.
//! - [`domain`]: scopes and coverage, task states, token lifetimes (pure rules).
//! - [`policy`]: the decision to open a task or mint a token.
//! - [`token`]: claims, Ed25519 signing, JWKS, verification.
//! - [`config`]: settings from a TOML file and the environment.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod identity;
pub mod policy;
pub mod revocation;
pub mod store;
pub mod token;
#[cfg(feature = "verifier")]
pub mod verifier;

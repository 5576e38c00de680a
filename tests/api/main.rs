//! Integration tests: the real broker over real mTLS against a real PostgreSQL.
mod support;
// persistence.rs and store_conformance/ (rewritten with the store) still say `helpers`.
use support as helpers;

mod admin;
mod audit;
mod cli;
mod crm_example;
mod delegation;
mod deploy;
mod dev;
mod faulty;
mod freeze;
mod hardening;
mod identity;
mod input;
mod operations;
mod persistence;
mod policy;
mod replicas;
mod rotation;
mod schema;
mod step_up;
mod store_conformance;
mod sweeper;
mod tasks;
mod tokens;
mod verifier;
mod verifier_lib;

//! Integration tests: the real broker over real mTLS against a real PostgreSQL.
mod support;

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

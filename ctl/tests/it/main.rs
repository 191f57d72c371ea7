//! defenseclawctl integration tests: the real binary against a real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;

mod attacks_local;
mod auth;
mod browser;
mod commands;
mod connect;
mod export;
mod ibom;
mod identity;
mod mine;
mod openclaw_setup;
mod quarantine;
mod scanning;
mod stepup;
mod unlink;
mod vault;

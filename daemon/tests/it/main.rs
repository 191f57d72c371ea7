//! defenseclawd integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attacks_client;
mod attacks_local;
mod attacks_protection;
mod attacks_scan;
mod attacks_vault;
mod audit_chain;
mod governance;
mod lifecycle;
mod oidc;
mod oidc_tokens;
mod openclaw;
mod openclaw_e2e;
mod openclaw_setup;
mod scanning;
mod stepup;
mod token_vault;

//! defenseclawd integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attacks_client;
mod attacks_gate;
mod attacks_local;
mod attacks_protection;
mod attacks_scan;
mod attacks_vault;
mod audit_chain;
mod clients;
mod export;
mod export_otlp;
mod gate_e2e;
mod governance;
mod lifecycle;
mod llm;
mod metrics;
mod oidc;
mod oidc_tokens;
mod openclaw;
mod openclaw_coverage;
mod openclaw_e2e;
mod openclaw_setup;
mod package;
mod quarantine;
mod scanning;
mod stepup;
mod token_vault;
mod token_vault_jit;

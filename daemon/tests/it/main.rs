//! defenseclawd integration tests: one binary, one module per area.

mod support;

mod audit_chain;
mod governance;
mod lifecycle;

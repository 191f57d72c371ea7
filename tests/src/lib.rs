//! Shared test support for the DefenseClaw workspace.

pub mod openclaw;

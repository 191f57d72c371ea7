//! DefenseClaw daemon library.

pub mod oidc;

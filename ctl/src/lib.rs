//! `defenseclawctl` as a library: the pieces the binary is built from.

pub mod auth;

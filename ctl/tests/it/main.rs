//! Integration tests of `defenseclawctl` (one test binary).

// Test helpers outside `#[test]` functions fail loudly, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;

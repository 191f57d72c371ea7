//! defenseclaw-testkit integration tests: the test peers as clients see them on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod token_vault;

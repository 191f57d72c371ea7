//! The governance layer: the only code that builds store write operations and
//! publishes events. RPC adapters call into it; it calls the store.

pub mod admission;
pub mod openclaw_host;
pub mod protection;
pub mod scan_pool;
pub mod scanning;
pub mod stepup;
pub mod vault;

//! In-process benchmark against a local fake gateway.

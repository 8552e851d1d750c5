//! evalsink: a streaming pipeline for the events of a code-evaluation platform.
//! NDJSON from stdin, TCP and files → classify, redact, split → PostgreSQL, Redis, Parquet.

pub mod cli;
pub mod config;
pub mod decode;
pub mod event;
pub mod generate;
pub mod json;
mod memory;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod store;
pub mod topology;
pub mod transforms;

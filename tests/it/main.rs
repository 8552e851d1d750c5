//! Integration tests against the real PostgreSQL, Redis and S3-compatible server that
//! `scripts/services.sh` starts. One test binary, a module per service.

mod common;
mod parquet;
mod pipeline;
mod postgres;
mod redact_corpus;
mod redis;
mod s3;

//! The `evaluations` row as the postgres sink commits it, and the hand-over of committed rows
//! to the Redis write-through cache (`evalsink:eval:{eval_id}`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::event::Ack;

/// One row of `evaluations` after a commit (the merged projection, not the last event).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalRow {
    pub eval_id: String,
    pub tenant_id: Option<String>,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: String,
    pub code: Option<String>,
    pub language: Option<String>,
    pub engine: Option<String>,
    pub timeout: Option<f64>,
    pub metadata: Option<Value>,
    pub executor_id: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub success: Option<bool>,
    pub output: Option<String>,
    pub output_preview: Option<String>,
    pub output_size: Option<i64>,
    pub output_sha256: Option<String>,
    pub output_ref: Option<String>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Rows committed by a postgres sink, for the Redis cache. The acknowledgements of the
/// batches they came from ride along, so a source checkpoints only after the cache is written.
#[derive(Debug)]
pub struct CacheUpdate {
    pub rows: Vec<EvalRow>,
    pub acks: Vec<Ack>,
}

pub type CacheSender = mpsc::Sender<CacheUpdate>;
pub type CacheReceiver = mpsc::Receiver<CacheUpdate>;

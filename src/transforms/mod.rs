//! Transforms: a batch in, a batch out. `classify` sets routes, `redact` removes secrets,
//! `split` moves long fields to object storage.
//! CPU-heavy work runs on the blocking pool so that batches are transformed on all cores.

pub mod classify;
pub mod redact;
pub mod split;

use std::sync::Arc;

use crate::config::TransformConfig;
use crate::event::Batch;
use crate::sinks::dead_letter::DeadLetters;
use classify::{Classification, Classify};
use redact::Redactor;
use split::Split;

pub enum Transform {
    Classify(Classify),
    Redact(Arc<Redactor>),
    Split(Split),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("transforms.{name}: {message}")]
    Invalid { name: String, message: String },
}

impl Transform {
    /// Builds a transform; split opens its store (for S3, checks the bucket).
    pub async fn build(name: &str, config: &TransformConfig) -> Result<Transform, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            name: name.to_string(),
            message,
        };
        Ok(match config {
            TransformConfig::Classify(c) => Transform::Classify(Classify {
                name: name.to_string(),
                rules: Classification::load(c).map_err(|e| invalid(e.to_string()))?,
            }),
            TransformConfig::Redact(c) => Transform::Redact(Arc::new(
                Redactor::new(c).map_err(|e| invalid(e.to_string()))?,
            )),
            TransformConfig::Split(c) => Transform::Split(
                Split::new(name, c)
                    .await
                    .map_err(|e| invalid(format!("cannot open the store: {e}")))?,
            ),
        })
    }

    pub async fn apply(&self, batch: Batch, dead_letters: &DeadLetters) -> Batch {
        match self {
            Transform::Classify(c) => c.apply(batch, dead_letters).await,
            Transform::Redact(r) => {
                let r = r.clone();
                tokio::task::spawn_blocking(move || redact_batch(&r, batch))
                    .await
                    .expect("redaction does not panic")
            }
            Transform::Split(s) => s.apply(batch, dead_letters).await,
        }
    }
}

/// Redacts every string of every event in place.
pub fn redact_batch(redactor: &Redactor, mut batch: Batch) -> Batch {
    for event in &mut batch.events {
        event.for_each_string_mut(&mut |s| {
            redactor.redact_string(s);
        });
    }
    batch
}

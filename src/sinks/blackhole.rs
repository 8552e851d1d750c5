//! The `blackhole` sink: takes every event, stores nothing, counts (for benchmarks and dry runs).

use std::sync::Arc;

use serde::Deserialize;

use super::{Sink, SinkError, Written};
use crate::event::{Batch, Event};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

pub struct Blackhole;

impl Sink for Blackhole {
    fn accepts(&self, _event: &Event) -> bool {
        true
    }

    async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
        Ok(Written {
            events: batches.iter().map(|b| b.events.len()).sum(),
            rejected: Vec::new(),
        })
    }
}

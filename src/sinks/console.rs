//! The `console` sink: every event as one JSON line on stdout (after the transforms, so
//! redacted, with stored fields shown as their reference).

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{Sink, SinkError, Written};
use crate::event::{Batch, Event};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {}

pub struct Console {
    out: tokio::io::Stdout,
}

impl Default for Console {
    fn default() -> Console {
        Console::new()
    }
}

impl Console {
    pub fn new() -> Console {
        Console {
            out: tokio::io::stdout(),
        }
    }
}

impl Sink for Console {
    fn accepts(&self, _event: &Event) -> bool {
        true
    }

    async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
        let mut text = Vec::new();
        let mut events = 0;
        for event in batches.iter().flat_map(|b| &b.events) {
            crate::json::write_event(&mut text, event, crate::json::Target::Json);
            text.push(b'\n');
            events += 1;
        }
        let io = |e: std::io::Error| SinkError::Failed(format!("cannot write to stdout: {e}"));
        self.out.write_all(&text).await.map_err(io)?;
        self.out.flush().await.map_err(io)?;
        Ok(Written {
            events,
            rejected: Vec::new(),
        })
    }
}

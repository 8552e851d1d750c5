//! Sinks: batches in, durable writes out. A sink only writes a group of batches and says
//! whether a failure is worth retrying; [`drive`] owns batching by size and time, retries with
//! backoff, dead letters and acknowledgements (a batch's acknowledgement is released when the
//! sink drops it after a durable write).

pub mod blackhole;
pub mod console;
pub mod dead_letter;
pub mod evaluation;
pub mod parquet;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

use crate::event::{Batch, Event};
use crate::stats::Stats;
use dead_letter::{DeadLetter, DeadLetters, Reason};

/// `batch.max_events`, `batch.max_bytes` and `batch.timeout_secs`, as in Vector.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one write.
    pub max_events: usize,
    /// A write takes no more batches once it holds this many bytes of input: this bounds the
    /// memory of the writes in flight, and the size of a statement or request, whatever the
    /// size of the events.
    pub max_bytes: usize,
    /// Longest wait for a write to fill up, in seconds.
    pub timeout_secs: f64,
}

/// `batch.max_bytes` unless a sink or its config says otherwise.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 32 << 20;

/// The `batch` keys as written: any may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchKeys {
    max_events: Option<usize>,
    max_bytes: Option<usize>,
    timeout_secs: Option<f64>,
}

impl BatchConfig {
    /// Reads `batch`, taking the keys not written from `defaults` (a sink's own); for
    /// `#[serde(deserialize_with)]`.
    pub fn or_defaults<'de, D: serde::Deserializer<'de>>(
        d: D,
        defaults: BatchConfig,
    ) -> Result<BatchConfig, D::Error> {
        let keys = BatchKeys::deserialize(d)?;
        Ok(BatchConfig {
            max_events: keys.max_events.unwrap_or(defaults.max_events),
            max_bytes: keys.max_bytes.unwrap_or(defaults.max_bytes),
            timeout_secs: keys.timeout_secs.unwrap_or(defaults.timeout_secs),
        })
    }

    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_events == 0 {
            problems.push(("batch.max_events".into(), "must be at least 1".into()));
        }
        if self.max_bytes == 0 {
            problems.push(("batch.max_bytes".into(), "must be at least 1".into()));
        }
        if !(self.timeout_secs >= 0.0 && self.timeout_secs < 86_400.0) {
            problems.push((
                "batch.timeout_secs".into(),
                "must be between 0 and 86400 seconds".into(),
            ));
        }
        problems
    }
}

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The server is down or unreachable: retried with backoff for as long as it takes, while
    /// the pipeline waits.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: retried a few times, then the events go to the dead letters.
    #[error("{0}")]
    Failed(String),
}

/// What a successful write stored.
#[derive(Debug, Default)]
pub struct Written {
    /// Events stored.
    pub events: usize,
    /// Events the server refused, for the dead letters (with their batch's acknowledgement).
    pub rejected: Vec<DeadLetter>,
}

/// A destination. The driver calls `write` with one or more batches and drops them (releasing
/// their acknowledgements) once it returns `Ok`: return only when the write is durable, or keep
/// a clone of the acknowledgement until it is.
pub trait Sink: Send + 'static {
    /// Whether this sink stores `event` (by its routes); others are skipped.
    fn accepts(&self, event: &Event) -> bool;

    fn write(
        &mut self,
        batches: &[Arc<Batch>],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send;

    /// Called about once a second when idle (`last == false`) and once at the end
    /// (`last == true`), to finish what is buffered.
    fn flush(&mut self, _last: bool) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// What the driver needs besides the sink.
#[derive(Clone)]
pub struct SinkContext {
    pub name: String,
    pub batch: BatchConfig,
    pub dead_letters: DeadLetters,
    pub stats: Arc<Stats>,
}

/// Attempts of a write that fails for a reason other than an unavailable server.
const MAX_FAILED_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// Runs a sink until its input closes and everything is written.
pub async fn drive<S: Sink>(mut sink: S, mut input: mpsc::Receiver<Arc<Batch>>, ctx: SinkContext) {
    let timeout = Duration::from_secs_f64(ctx.batch.timeout_secs);
    loop {
        let first = tokio::select! {
            batch = input.recv() => match batch {
                Some(b) => b,
                None => break,
            },
            _ = sleep(IDLE_FLUSH) => {
                flush(&mut sink, false, &ctx).await;
                continue;
            }
        };
        let mut events = first.events.len();
        let mut bytes = first.bytes();
        let mut pending = vec![first];
        let deadline = Instant::now() + timeout;
        let mut closed = false;
        while events < ctx.batch.max_events && bytes < ctx.batch.max_bytes {
            tokio::select! {
                biased;
                batch = input.recv() => match batch {
                    Some(b) => {
                        events += b.events.len();
                        bytes += b.bytes();
                        pending.push(b);
                    }
                    None => {
                        closed = true;
                        break;
                    }
                },
                _ = sleep_until(deadline) => break,
            }
        }
        write(&mut sink, &pending, &ctx).await;
        drop(pending);
        if closed {
            break;
        }
    }
    flush(&mut sink, true, &ctx).await;
}

/// Writes with retries; after the retry budget, dead letters what this sink accepts.
async fn write<S: Sink>(sink: &mut S, batches: &[Arc<Batch>], ctx: &SinkContext) {
    let counters = ctx.stats.component(&ctx.name);
    let mut retry = Retry::new();
    loop {
        match sink.write(batches).await {
            Ok(written) => {
                counters.events.fetch_add(written.events as u64, Relaxed);
                counters.batches.fetch_add(1, Relaxed);
                ctx.dead_letters.send_all(written.rejected).await;
                return;
            }
            Err(e) => {
                if !retry.again(&e, "write", ctx).await {
                    dead_letter_all(batches, |event| sink.accepts(event), &e, ctx).await;
                    return;
                }
            }
        }
    }
}

/// Flushes with retries for as long as the server is unavailable.
async fn flush<S: Sink>(sink: &mut S, last: bool, ctx: &SinkContext) {
    let mut retry = Retry::new();
    while let Err(e) = sink.flush(last).await {
        if !retry.again(&e, "flush", ctx).await {
            return;
        }
    }
}

/// The backoff between attempts of a write: an unavailable server is waited for as long as it
/// takes (the pipeline waits meanwhile); other failures are tried [`MAX_FAILED_ATTEMPTS`] times.
pub struct Retry {
    backoff: Duration,
    failures: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new()
    }
}

impl Retry {
    pub fn new() -> Retry {
        Retry {
            backoff: FIRST_BACKOFF,
            failures: 0,
        }
    }

    /// After a failed attempt to `what` (a verb: "write"): logs it, waits, and says whether to
    /// try again.
    pub async fn again(&mut self, error: &SinkError, what: &str, ctx: &SinkContext) -> bool {
        let backoff = self.backoff;
        match error {
            SinkError::Unavailable(message) => {
                tracing::warn!(sink = %ctx.name, "Cannot {what}: {message}. Retrying in {backoff:?}; the pipeline waits.");
            }
            SinkError::Failed(message) => {
                self.failures += 1;
                if self.failures >= MAX_FAILED_ATTEMPTS {
                    tracing::error!(sink = %ctx.name, "Giving up after {} attempts to {what}: {message}. Its events go to the dead letters.", self.failures);
                    return false;
                }
                tracing::warn!(sink = %ctx.name, "Could not {what}: {message}. Retrying in {backoff:?}.");
            }
        }
        ctx.stats.component(&ctx.name).retries.fetch_add(1, Relaxed);
        sleep(backoff).await;
        self.backoff = (backoff * 2).min(MAX_BACKOFF);
        true
    }
}

/// Sends the events of `batches` that a sink `accepts` to the dead letters as undeliverable.
pub async fn dead_letter_all(
    batches: &[Arc<Batch>],
    accepts: impl Fn(&Event) -> bool,
    error: &SinkError,
    ctx: &SinkContext,
) {
    for batch in batches {
        for event in batch.events.iter().filter(|e| accepts(e)) {
            let letter = DeadLetter::from_event(
                Reason::Undeliverable,
                format!("sinks.{}: {error}", ctx.name),
                &ctx.name,
                event,
            );
            ctx.dead_letters.send(letter.with_ack(&batch.ack)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Ack;
    use std::sync::Mutex;

    /// Records the events of each write.
    struct Recorder(Arc<Mutex<Vec<usize>>>);

    impl Sink for Recorder {
        fn accepts(&self, _: &Event) -> bool {
            true
        }

        async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
            let events = batches.iter().map(|b| b.events.len()).sum();
            self.0.lock().unwrap().push(events);
            Ok(Written::default())
        }
    }

    #[tokio::test]
    async fn a_write_holds_at_most_max_events_and_about_max_bytes() {
        let line = br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":0}"#;
        let event = crate::decode::decode_line(line, chrono::Utc::now()).unwrap();
        let size = event.size;
        let (tx, rx) = mpsc::channel(100);
        for _ in 0..20 {
            // Batches of 3 events.
            let batch = Batch::new(vec![event.clone(); 3], Ack::none());
            tx.send(Arc::new(batch)).await.unwrap();
        }
        drop(tx);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (dead_letters, thread) =
            dead_letter::spawn(dir.path().to_path_buf(), None, stats.clone());
        let ctx = SinkContext {
            name: "recorder".into(),
            // Two batches reach 6 events, over 5 events' bytes: the write stops there.
            batch: BatchConfig {
                max_events: 100,
                max_bytes: 5 * size,
                timeout_secs: 10.0,
            },
            dead_letters,
            stats,
        };
        drive(Recorder(writes.clone()), rx, ctx.clone()).await;
        assert_eq!(*writes.lock().unwrap(), vec![6; 10]);

        let (tx, rx) = mpsc::channel(100);
        for _ in 0..4 {
            tx.send(Arc::new(Batch::new(vec![event.clone(); 3], Ack::none())))
                .await
                .unwrap();
        }
        drop(tx);
        writes.lock().unwrap().clear();
        let ctx = SinkContext {
            batch: BatchConfig {
                max_events: 7,
                max_bytes: DEFAULT_BATCH_MAX_BYTES,
                timeout_secs: 10.0,
            },
            ..ctx
        };
        drive(Recorder(writes.clone()), rx, ctx).await;
        assert_eq!(*writes.lock().unwrap(), vec![9, 3]);
        thread.join().unwrap();
    }
}

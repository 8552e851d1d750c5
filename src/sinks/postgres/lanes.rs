//! The lanes of `evaluations`: each eval_id belongs to one lane (by a hash), and each lane is
//! one task that takes the lifecycle events of the writes whose `events` rows have committed,
//! merges those of several writes in memory and stores them in one statement; then it hands
//! the committed rows to the cache and answers each write, which holds its acknowledgements
//! until then.
//!
//! Lanes work in parallel, and a lane stores one window after the other, so two transactions
//! never update the same row at once and the cache gets the rows in the order they committed.
//! An eval's lifecycle events often arrive in different writes: merged in one window, they make
//! one insert instead of an insert and updates (each update writes a whole new row and an entry
//! in every index).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use super::Writer;
use super::merge::merge_evaluations;
use super::tables::write_evaluations;
use crate::event::{Batch, Event, Route};
use crate::sinks::{Retry, SinkError};

/// How many lanes `evaluations` is written in.
pub(super) const LANES: usize = 2;

/// Writes that may wait in a lane's queue (beyond its window).
const QUEUE: usize = 2;

pub(super) fn lane_of(eval_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    eval_id.hash(&mut h);
    h.finish() as usize % LANES
}

/// How much a lane merges before it stores: the writes of up to `max_bytes` of input (their
/// batches are held meanwhile), or what came within `max_wait` of the first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// One write's lifecycle events of one lane.
pub(super) struct Work {
    pub batches: Vec<Arc<Batch>>,
    /// Positions of the events in the write (see `Flat`).
    pub positions: Vec<usize>,
    /// The write's event_ids that its `events` statement did not store (refused, or stored
    /// before): their long texts are sent, not read from `events`.
    pub not_stored_here: Arc<HashSet<String>>,
    /// Input bytes of the write.
    pub bytes: usize,
    /// The answer: the refused events (positions in the write, with the server's error), or
    /// the error the lane gave up on.
    pub done: oneshot::Sender<Result<Vec<(usize, String)>, SinkError>>,
}

/// Starts the lanes; each ends once its sender is dropped, after storing what it holds.
pub(super) fn spawn(
    writer: &Arc<Writer>,
    window: Window,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Vec<mpsc::Sender<Work>> {
    (0..LANES)
        .map(|_| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tasks.spawn(run(writer.clone(), rx, window));
            tx
        })
        .collect()
}

async fn run(writer: Arc<Writer>, mut rx: mpsc::Receiver<Work>, window: Window) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + window.max_wait;
        let mut bytes = first.bytes;
        let mut works = vec![first];
        while bytes < window.max_bytes {
            match timeout_at(deadline, rx.recv()).await {
                Ok(Some(work)) => {
                    bytes += work.bytes;
                    works.push(work);
                }
                // Closed (the last flush) or the time is up.
                Ok(None) | Err(_) => break,
            }
        }
        store(&writer, works).await;
    }
}

/// Stores the lifecycle events of `works` as one merge, retrying with backoff; then answers
/// each write.
async fn store(writer: &Writer, works: Vec<Work>) {
    let (works, answers): (Vec<_>, Vec<_>) = works
        .into_iter()
        .map(|w| ((w.batches, w.positions, w.not_stored_here), w.done))
        .collect();
    // The events of every write, one after the other, and where each came from.
    let mut events: Vec<&Event> = Vec::new();
    let mut origin: Vec<(usize, usize)> = Vec::new();
    for (k, (batches, positions, _)) in works.iter().enumerate() {
        let flat = super::Flat::new(batches);
        for &i in positions {
            events.push(flat.events[i]);
            origin.push((k, i));
        }
    }
    let records = merge_evaluations(events.iter().copied().enumerate());
    let not_stored_here: HashSet<&str> = works
        .iter()
        .flat_map(|(_, _, ids)| ids.iter().map(String::as_str))
        .collect();
    let in_events =
        |e: &Event| e.routes.contains(Route::Events) && !not_stored_here.contains(e.id.as_str());
    let mut retry = Retry::new();
    let outcome = loop {
        let attempt = async {
            let refused = write_evaluations(&writer.lanes_pool, &records, in_events).await?;
            let acks = works
                .iter()
                .flat_map(|(batches, _, _)| batches.iter().map(|b| b.ack.clone()))
                .collect();
            writer.send_to_cache(acks, &events, &records).await?;
            Ok(refused)
        };
        match attempt.await {
            Ok(refused) => break Ok(refused),
            Err(e) => {
                if !retry.again(&e, "write to PostgreSQL", &writer.ctx).await {
                    break Err(e);
                }
            }
        }
    };
    match outcome {
        Ok(refused) => {
            let mut per_write = vec![Vec::new(); answers.len()];
            for (i, message) in refused {
                let (k, position) = origin[i];
                per_write[k].push((position, message));
            }
            for (answer, refused) in answers.into_iter().zip(per_write) {
                let _ = answer.send(Ok(refused));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

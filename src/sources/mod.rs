//! Sources: bytes in, batches of events out. Each source frames its input into chunks of
//! lines ([`lines`]), and [`pump`] decodes the chunks on all cores and sends them on in order,
//! handing the source one acknowledgement per batch so it can checkpoint.

pub mod file;
pub mod lines;
pub mod replay;
pub mod stdin;
pub mod tcp;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use chrono::Utc;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::decode::{Decoded, decode_chunk};
use crate::event::{Ack, AckReceiver, Batch};
use crate::sinks::dead_letter::{DeadLetter, DeadLetters, Origin, Reason};
use crate::stats::Stats;
use crate::topology::Fanout;
use lines::Frame;

/// Default limit of one line (SPEC.md: 64 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Target size of a chunk of lines, and so of a batch (in input bytes).
pub const CHUNK_BYTES: usize = 1024 * 1024;

pub fn default_max_line_bytes() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

/// What every source gets from the topology.
#[derive(Clone)]
pub struct SourceContext {
    pub name: String,
    pub output: Fanout,
    pub dead_letters: DeadLetters,
    pub stats: Arc<Stats>,
    /// Cancelled on SIGINT/SIGTERM: stop reading, let what was read drain.
    pub shutdown: CancellationToken,
    pub data_dir: PathBuf,
}

/// The output of decoding one frame.
struct DecodedFrame {
    decoded: Decoded,
    bytes: u64,
    end_offset: u64,
    /// Number of the line after this frame.
    next_line: u64,
}

fn decode_frame(frame: Frame, origin: &Origin, max_line_bytes: usize) -> DecodedFrame {
    match frame {
        Frame::Lines {
            data,
            first_line,
            end_offset,
        } => {
            let decoded = decode_chunk(&data, first_line, origin, max_line_bytes, Utc::now());
            DecodedFrame {
                next_line: first_line + decoded.lines,
                decoded,
                bytes: data.len() as u64,
                end_offset,
            }
        }
        Frame::TooLong {
            line,
            prefix,
            size,
            end_offset,
        } => {
            let refusal = crate::decode::Refusal {
                reason: Reason::LineTooLong,
                message: format!(
                    "line of {size} bytes is over max_line_bytes ({max_line_bytes}); its first {} bytes are kept here",
                    prefix.len()
                ),
            };
            let mut letter = DeadLetter::from_line(refusal, origin.at_line(line), &prefix);
            letter.raw_bytes = Some(size);
            DecodedFrame {
                decoded: Decoded {
                    events: Vec::new(),
                    dead: vec![letter],
                    lines: 1,
                },
                bytes: size + 1,
                end_offset,
                next_line: line + 1,
            }
        }
    }
}

/// Decodes `frames` on all cores, keeping their order, and sends each chunk's events on as one
/// batch and its bad lines to the dead letters. `on_batch` gets each batch's end offset, the
/// number of the next line, and the batch's acknowledgement, in input order. Stops taking new frames when the source is shut down;
/// returns once everything taken has been sent on.
pub async fn pump<S>(
    frames: S,
    origin: Origin,
    ctx: &SourceContext,
    max_line_bytes: usize,
    mut on_batch: impl FnMut(u64, u64, AckReceiver),
) -> io::Result<()>
where
    S: Stream<Item = io::Result<Frame>> + Send,
{
    let counters = ctx.stats.component(&ctx.name);
    let decoded = frames
        .take_until(ctx.shutdown.clone().cancelled_owned())
        .map(|frame| {
            let origin = origin.clone();
            async move {
                let frame = frame?;
                tokio::task::spawn_blocking(move || decode_frame(frame, &origin, max_line_bytes))
                    .await
                    .map_err(io::Error::other)
            }
        })
        .buffered(crate::topology::batches_in_flight());
    futures_util::pin_mut!(decoded);
    while let Some(frame) = decoded.next().await {
        let DecodedFrame {
            decoded,
            bytes,
            end_offset,
            next_line,
        } = frame?;
        ctx.stats.bytes_in.fetch_add(bytes, Relaxed);
        ctx.stats.lines_in.fetch_add(decoded.lines, Relaxed);
        ctx.stats.accepted(&decoded.events);
        let (ack, receiver) = Ack::new();
        for letter in decoded.dead {
            ctx.dead_letters.send(letter.with_ack(&ack)).await;
        }
        if !decoded.events.is_empty() {
            counters
                .events
                .fetch_add(decoded.events.len() as u64, Relaxed);
            counters.batches.fetch_add(1, Relaxed);
            if ctx
                .output
                .send(Batch::new(decoded.events, ack))
                .await
                .is_err()
            {
                return Err(io::Error::other("the pipeline stopped taking events"));
            }
        } else {
            drop(ack);
        }
        on_batch(end_offset, next_line, receiver);
    }
    Ok(())
}

//! The replay source (`evalsink replay PATH...`): reads log files one after another (plain,
//! gzip or zstd, told apart by their first bytes; globs; `-` for stdin) to their end, with a
//! progress bar on a terminal.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::lines::{Frame, LineFramer};
use super::{CHUNK_BYTES, SourceContext, pump};
use crate::sinks::dead_letter::Origin;

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    pub inputs: Vec<Input>,
    pub max_line_bytes: usize,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    fn name(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}: no such file; check the path")]
    Missing(String),
    #[error("{pattern}: the pattern matches no file")]
    NoMatch { pattern: String },
    #[error("{pattern}: not a valid glob pattern: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("no input files: give one or more paths, globs, or - for stdin")]
    Empty,
}

/// Expands globs and checks that every named file exists, before anything runs.
pub fn expand(paths: &[String]) -> Result<Vec<Input>, ReplayError> {
    let mut inputs = Vec::new();
    for p in paths {
        if p == "-" {
            inputs.push(Input::Stdin);
        } else if p.contains(['*', '?', '[']) {
            let matches = glob::glob(p).map_err(|e| ReplayError::BadPattern {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
            let mut found: Vec<PathBuf> = matches
                .filter_map(Result::ok)
                .filter(|m| m.is_file())
                .collect();
            if found.is_empty() {
                return Err(ReplayError::NoMatch { pattern: p.clone() });
            }
            found.sort();
            inputs.extend(found.into_iter().map(Input::File));
        } else if std::path::Path::new(p).is_file() {
            inputs.push(Input::File(p.into()));
        } else {
            return Err(ReplayError::Missing(p.clone()));
        }
    }
    if inputs.is_empty() {
        return Err(ReplayError::Empty);
    }
    Ok(inputs)
}

pub async fn run(config: ReplayConfig, ctx: SourceContext) -> io::Result<()> {
    let total: u64 = config
        .inputs
        .iter()
        .filter_map(|i| match i {
            Input::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            Input::Stdin => None,
        })
        .sum();
    let read = Arc::new(AtomicU64::new(0));
    let bar = config
        .progress
        .then(|| progress_bar(total, read.clone(), &ctx));
    let mut result = Ok(());
    for input in &config.inputs {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        if let Err(e) = replay_one(input, &config, &ctx, read.clone()).await {
            result = Err(io::Error::new(e.kind(), format!("{}: {e}", input.name())));
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

async fn replay_one(
    input: &Input,
    config: &ReplayConfig,
    ctx: &SourceContext,
    read: Arc<AtomicU64>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<io::Result<Frame>>(4);
    let reader_input = input.clone();
    let max = config.max_line_bytes;
    let reader = tokio::task::spawn_blocking(move || read_frames(&reader_input, max, &tx, &read));
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let origin = Origin::new(&ctx.name).with_file(&input.name());
    let pumped = pump(frames, origin, ctx, max, |_, _, _| {}).await;
    // When the pump stopped early (shutdown), the reader sees the channel closed and ends.
    reader.await.map_err(io::Error::other)?;
    pumped
}

/// Reads one input to its end on a blocking thread, sending frames of lines.
fn read_frames(
    input: &Input,
    max_line_bytes: usize,
    tx: &mpsc::Sender<io::Result<Frame>>,
    read: &AtomicU64,
) {
    let Opened { mut reader, counts } = match open(input, read) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut framer = LineFramer::new(max_line_bytes, CHUNK_BYTES);
    let mut buf = BytesMut::new();
    loop {
        let result = if buf.len() <= CHUNK_BYTES {
            // The unfinished line of the last read moves to the front of a new buffer and the
            // read goes straight into its free space, which std fills without zeroing it first.
            // The frames already cut keep the old buffer until they are decoded.
            let mut next = Vec::with_capacity(buf.len() + CHUNK_BYTES);
            next.extend_from_slice(&buf);
            let result = (&mut reader)
                .take(CHUNK_BYTES as u64)
                .read_to_end(&mut next);
            buf = BytesMut::from(Bytes::from(next));
            result
        } else {
            // A long line: the buffer grows in place instead of being copied at every read.
            let filled = buf.len();
            buf.resize(filled + CHUNK_BYTES, 0);
            let result = reader.read(&mut buf[filled..]);
            buf.truncate(filled + *result.as_ref().unwrap_or(&0));
            result
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if n == 0 {
            break;
        }
        if !counts {
            read.fetch_add(n as u64, Relaxed);
        }
        loop {
            match framer.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if tx.blocking_send(Ok(frame)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    }
    while let Ok(Some(frame)) = framer.decode_eof(&mut buf) {
        if tx.blocking_send(Ok(frame)).is_err() {
            return;
        }
    }
}

/// An opened input.
struct Opened<'a> {
    reader: Box<dyn Read + 'a>,
    /// Whether the reader counts the bytes it reads itself (compressed inputs count their
    /// compressed bytes); otherwise the bytes that come out are counted.
    counts: bool,
}

/// Opens an input, decompressing gzip (`1f 8b`) and zstd (`28 b5 2f fd`) by their magic bytes.
/// A plain input is read through std's own readers only, so that reads go straight into the
/// frames' buffers, without a copy and without zeroing them first.
fn open<'a>(input: &Input, read: &'a AtomicU64) -> io::Result<Opened<'a>> {
    const GZIP: &[u8] = &[0x1f, 0x8b];
    const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    let compressed = |raw: Box<dyn Read>, magic: &[u8]| -> io::Result<Opened<'a>> {
        let raw = BufReader::with_capacity(CHUNK_BYTES, Counting { inner: raw, read });
        let reader: Box<dyn Read + 'a> = if magic.starts_with(GZIP) {
            Box::new(flate2::bufread::MultiGzDecoder::new(raw))
        } else {
            Box::new(zstd::Decoder::with_buffer(raw)?)
        };
        Ok(Opened {
            reader,
            counts: true,
        })
    };
    match input {
        Input::Stdin => {
            // A buffer no larger than std's first read, so that it is bypassed.
            let mut stdin = BufReader::new(io::stdin());
            let magic = io::BufRead::fill_buf(&mut stdin)?;
            if magic.starts_with(GZIP) || magic.starts_with(ZSTD) {
                let magic = magic[..4.min(magic.len())].to_vec();
                return compressed(Box::new(stdin), &magic);
            }
            Ok(Opened {
                reader: Box::new(stdin),
                counts: false,
            })
        }
        Input::File(p) => {
            let mut file = File::open(p)?;
            let mut magic = Vec::with_capacity(4);
            (&mut file).take(4).read_to_end(&mut magic)?;
            file.seek(SeekFrom::Start(0))?;
            if magic.starts_with(GZIP) || magic.starts_with(ZSTD) {
                return compressed(Box::new(file), &magic);
            }
            Ok(Opened {
                reader: Box::new(file),
                counts: false,
            })
        }
    }
}

/// Counts the (compressed) bytes read, for the progress bar.
struct Counting<'a> {
    inner: Box<dyn Read>,
    read: &'a AtomicU64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

fn progress_bar(total: u64, read: Arc<AtomicU64>, ctx: &SourceContext) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let ticker = bar.clone();
    let stats = ctx.stats.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        while !ticker.is_finished() {
            ticker.set_position(read.load(Relaxed));
            let rate = stats.events() as f64 / started.elapsed().as_secs_f64().max(1e-3);
            ticker.set_message(format!("{rate:.0} events/s"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frames_of(input: &Input) -> Vec<Frame> {
        let (tx, mut rx) = mpsc::channel(100);
        let read = AtomicU64::new(0);
        read_frames(input, 1 << 20, &tx, &read);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.unwrap());
        }
        out
    }

    fn text_of(frames: &[Frame]) -> String {
        frames
            .iter()
            .map(|f| match f {
                Frame::Lines { data, .. } => String::from_utf8_lossy(data).into_owned(),
                Frame::TooLong { .. } => String::new(),
            })
            .collect()
    }

    #[test]
    fn plain_gzip_and_zstd_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"a\":1}\n{\"b\":2}\n{\"c\":3}";
        let plain = dir.path().join("a.ndjson");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("a.ndjson.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("a.ndjson.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
        for p in [plain, gz, zst] {
            assert_eq!(text_of(&frames_of(&Input::File(p))), text);
        }
    }

    #[test]
    fn globs_expand_sorted_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.ndjson", "a.ndjson", "c.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let pattern = format!("{}/*.ndjson", dir.path().display());
        let inputs = expand(&[pattern, "-".into()]).unwrap();
        assert_eq!(inputs.len(), 3);
        assert_eq!(inputs[0], Input::File(dir.path().join("a.ndjson")));
        assert_eq!(inputs[2], Input::Stdin);
        assert!(matches!(
            expand(&["/nonexistent/x.ndjson".into()]),
            Err(ReplayError::Missing(_))
        ));
        let none = format!("{}/*.zst", dir.path().display());
        assert!(matches!(expand(&[none]), Err(ReplayError::NoMatch { .. })));
    }
}

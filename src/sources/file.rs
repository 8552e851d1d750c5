//! The `file` source: follows the files that `include` globs match (live tail), picks up new
//! files, follows rotation by rename (the old file is read to its end) and by truncation (read
//! again from the start). Checkpoints (offset and line of each file, keyed by device, inode and
//! a fingerprint of the first bytes) live in `{data_dir}/checkpoints/{source}.json` and move
//! only when every sink has acknowledged the lines before them.

use std::collections::{BTreeMap, HashSet};
use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::Decoder;

use super::lines::{Frame, LineFramer};
use super::{CHUNK_BYTES, SourceContext, default_max_line_bytes, pump};
use crate::event::AckReceiver;
use crate::sinks::dead_letter::Origin;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Glob patterns of the files to follow.
    pub include: Vec<String>,
    /// Glob patterns of files to leave alone.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in a file that has no checkpoint and is there when evalsink starts.
    /// Files that appear later are always read from their beginning.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Longest accepted line in bytes (default 64 MiB); longer lines are dead letters.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// How often to look for new files, in milliseconds (default 1000).
    #[serde(default = "default_glob_cooldown")]
    pub glob_minimum_cooldown_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

fn default_glob_cooldown() -> u64 {
    1000
}

/// How long to wait at the end of a file before looking for more.
const POLL: Duration = Duration::from_millis(250);
/// Bytes of the start of a file that identify it (with device and inode).
const FINGERPRINT_BYTES: u64 = 256;

impl FileConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.include.is_empty() {
            problems.push((
                "include".into(),
                "no files to follow: give glob patterns, for example include = [\"/var/log/evals/*.ndjson\"]".into(),
            ));
        }
        for p in self.include.iter().chain(&self.exclude) {
            if let Err(e) = glob::Pattern::new(p) {
                problems.push(("include".into(), format!("{p:?} is not a valid glob: {e}")));
            }
        }
        problems
    }
}

/// Device and inode: what a file is, whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn key(self) -> String {
        format!("{}:{}", self.dev, self.ino)
    }
}

/// A position in a file: the byte after the last acknowledged line, and that line's number + 1.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub offset: u64,
    pub line: u64,
    /// Hex sha256 of the file's first `fingerprint_len` bytes.
    pub fingerprint: String,
    pub fingerprint_len: u64,
}

/// The checkpoints of one source, saved atomically (write and rename).
struct Checkpoints {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Checkpoint>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Checkpoints {
    fn load(path: PathBuf) -> Checkpoints {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Checkpoints {
            path,
            entries: Mutex::new(entries),
            dirty: Default::default(),
        }
    }

    fn get(&self, id: FileId) -> Option<Checkpoint> {
        self.entries.lock().expect("lock").get(&id.key()).cloned()
    }

    fn set(&self, id: FileId, checkpoint: Checkpoint) {
        self.entries
            .lock()
            .expect("lock")
            .insert(id.key(), checkpoint);
        self.dirty.store(true, SeqCst);
    }

    /// Forgets files that are no longer there.
    fn retain(&self, live: &HashSet<FileId>) {
        let keys: HashSet<String> = live.iter().map(|id| id.key()).collect();
        let mut entries = self.entries.lock().expect("lock");
        let before = entries.len();
        entries.retain(|k, _| keys.contains(k));
        if entries.len() != before {
            self.dirty.store(true, SeqCst);
        }
    }

    fn save(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, SeqCst) {
            return Ok(());
        }
        let text = {
            let entries = self.entries.lock().expect("lock");
            serde_json::to_vec_pretty(&*entries).map_err(std::io::Error::other)?
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

pub async fn run(config: FileConfig, ctx: SourceContext) -> std::io::Result<()> {
    let checkpoints = Arc::new(Checkpoints::load(
        ctx.data_dir
            .join("checkpoints")
            .join(format!("{}.json", ctx.name)),
    ));
    let include: Vec<String> = config.include.clone();
    let exclude: Vec<glob::Pattern> = config
        .exclude
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let mut followers: JoinSet<FileId> = JoinSet::new();
    let mut active: HashSet<FileId> = HashSet::new();
    let mut first_scan = true;
    let saver = spawn_saver(checkpoints.clone());
    loop {
        let mut seen = HashSet::new();
        for path in matching_files(&include, &exclude) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = FileId::of(&meta);
            seen.insert(id);
            if active.contains(&id) {
                continue;
            }
            let start =
                start_position(&path, id, &meta, &checkpoints, first_scan, config.read_from);
            active.insert(id);
            tracing::info!(source = %ctx.name, "Following {} from byte {}.", path.display(), start.offset);
            followers.spawn(follow(
                path,
                id,
                start,
                config.max_line_bytes,
                ctx.clone(),
                checkpoints.clone(),
            ));
        }
        seen.extend(active.iter().copied());
        checkpoints.retain(&seen);
        first_scan = false;
        let cooldown = tokio::time::sleep(Duration::from_millis(config.glob_minimum_cooldown_ms));
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = cooldown => {}
        }
        while let Some(done) = followers.try_join_next() {
            if let Ok(id) = done {
                active.remove(&id);
            }
        }
    }
    drop(ctx);
    while followers.join_next().await.is_some() {}
    // The followers have waited for their acknowledgements; save the final positions.
    saver.abort();
    checkpoints.dirty.store(true, SeqCst);
    checkpoints.save()
}

/// Saves changed checkpoints every second.
fn spawn_saver(checkpoints: Arc<Checkpoints>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = checkpoints.save() {
                tracing::error!(
                    "Cannot save checkpoints to {}: {e}; positions will be saved when it can be written.",
                    checkpoints.path.display()
                );
            }
        }
    })
}

fn matching_files(include: &[String], exclude: &[glob::Pattern]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pattern in include {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.filter_map(Result::ok) {
            if path.is_file()
                && !exclude.iter().any(|x| x.matches_path(&path))
                && !out.contains(&path)
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn fingerprint(path: &Path, len: u64) -> Option<String> {
    use std::io::Read;
    let mut buf = vec![0u8; len as usize];
    let mut file = std::fs::File::open(path).ok()?;
    file.read_exact(&mut buf).ok()?;
    Some(hex::encode(Sha256::digest(&buf)))
}

/// Where to start: the checkpoint when it is for this very file, else the beginning (or the
/// end, for files present at start with `read_from = "end"`).
fn start_position(
    path: &Path,
    id: FileId,
    meta: &std::fs::Metadata,
    checkpoints: &Checkpoints,
    first_scan: bool,
    read_from: ReadFrom,
) -> Checkpoint {
    if let Some(cp) = checkpoints.get(id)
        && cp.offset <= meta.len()
        && fingerprint(path, cp.fingerprint_len).as_deref() == Some(cp.fingerprint.as_str())
    {
        return Checkpoint {
            path: path.to_path_buf(),
            ..cp
        };
    }
    if first_scan && read_from == ReadFrom::End {
        // Start after the last whole line; the line count is unknown, so numbers start at 1.
        return Checkpoint {
            path: path.to_path_buf(),
            offset: meta.len(),
            line: 1,
            ..Checkpoint::default()
        };
    }
    Checkpoint {
        path: path.to_path_buf(),
        offset: 0,
        line: 1,
        ..Checkpoint::default()
    }
}

/// Reads one file from `start`, following it until it is rotated away (and read to its end)
/// or the source shuts down; then waits for its batches' acknowledgements.
async fn follow(
    path: PathBuf,
    id: FileId,
    start: Checkpoint,
    max_line_bytes: usize,
    ctx: SourceContext,
    checkpoints: Arc<Checkpoints>,
) -> FileId {
    let generation = Arc::new(AtomicU64::new(0));
    let (acks_tx, acks_rx) = mpsc::unbounded_channel::<(u64, u64, u64, AckReceiver)>();
    let settle = tokio::spawn(settle_acks(
        acks_rx,
        path.clone(),
        id,
        checkpoints.clone(),
        generation.clone(),
    ));
    let origin = Origin::new(&ctx.name).with_file(&path.display().to_string());
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let reader = Reader {
                path: path.clone(),
                id,
                file,
                framer: LineFramer::starting_at(
                    max_line_bytes,
                    CHUNK_BYTES,
                    start.line,
                    start.offset,
                ),
                buf: BytesMut::with_capacity(2 * CHUNK_BYTES),
                offset: start.offset,
                seeked: false,
                rotated: false,
                shutdown: ctx.shutdown.clone(),
                generation: generation.clone(),
                checkpoints: checkpoints.clone(),
            };
            let frames = futures_util::stream::unfold(reader, |mut r| async move {
                r.next_frame().await.map(|f| (f, r))
            });
            let generation_now = generation.clone();
            let result = pump(frames, origin, &ctx, max_line_bytes, |offset, line, ack| {
                let _ = acks_tx.send((generation_now.load(SeqCst), offset, line, ack));
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(source = %ctx.name, "Reading {} stopped: {e}.", path.display());
            }
        }
        Err(e) => tracing::warn!(source = %ctx.name, "Cannot open {}: {e}.", path.display()),
    }
    drop(ctx);
    drop(acks_tx);
    let _ = settle.await;
    id
}

/// Moves the file's checkpoint as its batches are acknowledged, in order.
async fn settle_acks(
    mut acks: mpsc::UnboundedReceiver<(u64, u64, u64, AckReceiver)>,
    path: PathBuf,
    id: FileId,
    checkpoints: Arc<Checkpoints>,
    generation: Arc<AtomicU64>,
) {
    while let Some((gen_of_batch, offset, line, ack)) = acks.recv().await {
        match ack.await {
            Ok(crate::event::AckStatus::Delivered) => {}
            // Not stored: keep the checkpoint before it, so a restart reads it again.
            _ => {
                while acks.recv().await.is_some() {}
                return;
            }
        }
        if gen_of_batch != generation.load(SeqCst) {
            continue;
        }
        let len = offset.min(FINGERPRINT_BYTES);
        let fingerprint = fingerprint(&path, len).unwrap_or_default();
        checkpoints.set(
            id,
            Checkpoint {
                path: path.clone(),
                offset,
                line,
                fingerprint,
                fingerprint_len: len,
            },
        );
    }
}

/// The reading side of a followed file.
struct Reader {
    path: PathBuf,
    id: FileId,
    file: tokio::fs::File,
    framer: LineFramer,
    buf: BytesMut,
    /// Bytes read from the file so far (where the next read starts).
    offset: u64,
    seeked: bool,
    /// Set once the path no longer names this file: read to the end, then stop.
    rotated: bool,
    shutdown: tokio_util::sync::CancellationToken,
    generation: Arc<AtomicU64>,
    checkpoints: Arc<Checkpoints>,
}

impl Reader {
    async fn next_frame(&mut self) -> Option<std::io::Result<Frame>> {
        if !self.seeked {
            self.seeked = true;
            if let Err(e) = self.file.seek(SeekFrom::Start(self.offset)).await {
                return Some(Err(e));
            }
        }
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            self.buf.reserve(CHUNK_BYTES);
            let n = match self.file.read_buf(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if n > 0 {
                self.offset += n as u64;
                continue;
            }
            // At the end of the file.
            if self.rotated {
                // Rotated away and read to its end: its last line is complete.
                return self.framer.decode_eof(&mut self.buf).transpose();
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match std::fs::metadata(&self.path) {
                Ok(meta) if FileId::of(&meta) == self.id => {
                    if meta.len() < self.offset {
                        self.truncated().await;
                        continue;
                    }
                }
                // Renamed or deleted: one more read catches what was written before.
                _ => {
                    self.rotated = true;
                    continue;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn truncated(&mut self) {
        tracing::info!(
            "{} was truncated; reading it again from the start.",
            self.path.display()
        );
        self.generation.fetch_add(1, SeqCst);
        self.checkpoints.set(
            self.id,
            Checkpoint {
                path: self.path.clone(),
                offset: 0,
                line: 1,
                ..Checkpoint::default()
            },
        );
        self.offset = 0;
        self.buf.clear();
        self.framer = LineFramer::new(self.framer.max_line_bytes(), CHUNK_BYTES);
        let _ = self.file.seek(SeekFrom::Start(0)).await;
    }
}

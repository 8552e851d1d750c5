//! The `parquet` sink: every event routed to `analytics`, as zstd Parquet on object storage, one
//! dataset per event type: `events/type={TYPE}/date={YYYY-MM-DD}/part-{unique}.parquet`.
//! A batch is acknowledged once every file holding its rows is complete in the store; files are
//! completed by size, by age, and on drain.
//!
//! There is one open file per (type, date of the event's `ts` in UTC). Rows are encoded on the
//! blocking pool, and each row group is streamed into the store's [`Upload`] as soon as it is
//! flushed (a multipart upload on S3), so that a file is never whole in memory. When an upload
//! fails, its events cannot be written again (only their acknowledgements are kept, not the
//! events): their batches are marked failed, so a file source does not checkpoint past them and
//! reads them again after a restart, and the error is logged.

mod schema;
mod seen;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use tokio::time::Instant;

use super::{BatchConfig, Sink, SinkError, Written};
use crate::event::{Ack, Batch, Event, EventType, Route};
use crate::store::{Store, StoreConfig, StoreError, Upload};
use seen::{Seen, id_hash};
pub use writer::{FileWriter, ZSTD_LEVEL, encode_in_memory, properties};

/// Config of the `parquet` sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Where the files go: `file://PATH` (default `file://./data`) or `s3://BUCKET/PREFIX` with
    /// `region`, `endpoint`, `sse` and `kms_key_id`.
    #[serde(default)]
    pub store: StoreConfig,
    /// A file is completed once it holds about this many bytes (default 64 MiB).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// A file is completed once it has been open this many seconds (default 300): the longest
    /// an event waits before it is in cold storage.
    #[serde(default = "default_max_file_age_secs")]
    pub max_file_age_secs: f64,
    /// Row groups are cut at about this many encoded bytes (default 8 MiB). An open file holds
    /// about this much in memory.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: u64,
    /// `batch.max_events` (default 4000), `batch.max_bytes` (32 MiB) and `batch.timeout_secs`
    /// (default 1): how many
    /// events are encoded together.
    #[serde(default = "default_batch", deserialize_with = "batch")]
    pub batch: BatchConfig,
}

fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_max_file_age_secs() -> f64 {
    300.0
}

fn default_row_group_bytes() -> u64 {
    8 * 1024 * 1024
}

fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 4_000,
        max_bytes: crate::sinks::DEFAULT_BATCH_MAX_BYTES,
        timeout_secs: 1.0,
    }
}

fn batch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BatchConfig, D::Error> {
    BatchConfig::or_defaults(d, default_batch())
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            store: StoreConfig::default(),
            max_file_bytes: default_max_file_bytes(),
            max_file_age_secs: default_max_file_age_secs(),
            row_group_bytes: default_row_group_bytes(),
            batch: default_batch(),
        }
    }
}

impl ParquetConfig {
    /// Checks that need no I/O; returns (key, message) pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = self.store.check();
        if self.max_file_bytes < 1024 {
            problems.push((
                "max_file_bytes".into(),
                "must be at least 1024 bytes; files of tens of MB suit analytics best".into(),
            ));
        }
        if !(self.max_file_age_secs > 0.0 && self.max_file_age_secs <= 86_400.0) {
            problems.push((
                "max_file_age_secs".into(),
                "must be more than 0 and at most 86400 seconds".into(),
            ));
        }
        if self.row_group_bytes < 1024 {
            problems.push((
                "row_group_bytes".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        problems.extend(self.batch.check());
        problems
    }
}

/// Bytes of a file that wait in memory before they are sent to the upload.
const UPLOAD_CHUNK: usize = 1024 * 1024;
/// Most files open at once after a write (a replay of many days opens one per type and day);
/// beyond, the least recently written ones are completed.
const MAX_OPEN_FILES: usize = 32;
/// Most memory held by the row groups in progress of every open file together (at least two
/// row groups); beyond, the largest is flushed.
const ROW_GROUP_MEMORY: usize = 64 * 1024 * 1024;
/// Most memory held by the uploads of every open file together, in parts not yet full (S3
/// parts are 8 MiB); beyond, the least recently written file is completed. One day of every
/// event type fits; a replay of many days completes the files of the days it has left behind.
const UPLOAD_MEMORY: usize = 64 * 1024 * 1024;

/// One open file per event type and date (UTC) of the events' `ts`.
type Partition = (EventType, NaiveDate);

struct OpenFile {
    partition: Partition,
    key: String,
    /// `None` only while the blocking pool encodes into it.
    writer: Option<FileWriter>,
    upload: Upload,
    /// The acknowledgements of the batches with rows in this file, released once it is stored.
    acks: Vec<Ack>,
    opened: Instant,
    last_write: Instant,
    /// Bytes sent to the upload.
    sent: usize,
    /// The id hashes of its rows, taken back from [`Seen`] when the file cannot be stored.
    ids: Vec<u64>,
}

impl OpenFile {
    fn writer(&self) -> &FileWriter {
        self.writer.as_ref().expect("not encoding")
    }

    fn writer_mut(&mut self) -> &mut FileWriter {
        self.writer.as_mut().expect("not encoding")
    }
}

/// The rows of one write that go to one file.
#[derive(Default)]
struct Group {
    /// (batch index, event index).
    rows: Vec<(usize, usize)>,
    bytes: usize,
    /// Indexes of the batches with rows here.
    batches: Vec<usize>,
    /// The id hashes of the rows.
    ids: Vec<u64>,
}

pub struct ParquetSink {
    name: String,
    store: Store,
    config: ParquetConfig,
    files: BTreeMap<Partition, OpenFile>,
    /// Event ids already stored: replays and redeliveries add no row twice.
    seen: Seen,
    /// An upload failed because the store is unreachable: check it before taking more events,
    /// so that the pipeline waits instead of losing file after file.
    unavailable: bool,
    /// Part of every file name: unique to this process.
    unique: String,
    counter: u64,
}

impl ParquetSink {
    pub fn new(name: &str, store: Store, config: ParquetConfig) -> ParquetSink {
        ParquetSink {
            name: name.to_string(),
            store,
            config,
            files: BTreeMap::new(),
            seen: Seen::default(),
            unavailable: false,
            unique: format!("{:x}{:08x}", std::process::id(), fastrand::u32(..)),
            counter: 0,
        }
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.config.max_file_age_secs)
    }

    /// `events/type={TYPE}/date={YYYY-MM-DD}/part-{UTC time}-{process}-{counter}.parquet`:
    /// unique across processes and restarts, and sorted by creation time.
    fn next_key(&mut self, partition: Partition) -> String {
        self.counter += 1;
        format!(
            "{}part-{}-{}-{:06}.parquet",
            partition_prefix(partition),
            Utc::now().format("%Y%m%dT%H%M%S%6fZ"),
            self.unique,
            self.counter
        )
    }

    async fn open(&mut self, partition: Partition) -> Result<(), SinkError> {
        let key = self.next_key(partition);
        let writer = FileWriter::new(partition.0, self.config.row_group_bytes as usize)
            .map_err(|e| SinkError::Failed(format!("cannot start a Parquet file: {e}")))?;
        let upload = self
            .store
            .upload(&key)
            .await
            .map_err(|e| store_error(&key, e))?;
        let now = Instant::now();
        self.files.insert(
            partition,
            OpenFile {
                partition,
                key,
                writer: Some(writer),
                upload,
                acks: Vec::new(),
                opened: now,
                last_write: now,
                sent: 0,
                ids: Vec::new(),
            },
        );
        Ok(())
    }

    /// Sends what the file has ready (at least `min` bytes) to its upload.
    async fn send(&mut self, partition: Partition, min: usize) {
        let Some(file) = self.files.get_mut(&partition) else {
            return;
        };
        let Some(bytes) = file.writer_mut().take(min) else {
            return;
        };
        let len = bytes.len();
        match file.upload.write(bytes).await {
            Ok(()) => file.sent += len,
            Err(e) => self.lose(partition, e).await,
        }
    }

    /// Finishes the file, stores it, and releases its batches' acknowledgements.
    async fn complete(&mut self, partition: Partition) {
        let Some(mut file) = self.files.remove(&partition) else {
            return;
        };
        let writer = file.writer.take().expect("not encoding");
        let rows = writer.rows();
        let tail = match tokio::task::spawn_blocking(move || writer.finish()).await {
            Ok(Ok(tail)) => tail,
            Ok(Err(e)) => {
                return self
                    .give_up(file, rows, format!("cannot finish the file: {e}"), false)
                    .await;
            }
            Err(e) => {
                return self
                    .give_up(file, rows, format!("finishing the file failed: {e}"), false)
                    .await;
            }
        };
        let size = file.sent + tail.len();
        if let Err(e) = file.upload.write(tail).await {
            let unavailable = matches!(e, StoreError::Unavailable(_));
            return self.give_up(file, rows, e.to_string(), unavailable).await;
        }
        let OpenFile {
            key,
            upload,
            acks,
            ids,
            ..
        } = file;
        match upload.complete().await {
            Ok(()) => {
                tracing::debug!(sink = %self.name, "Stored {key}: {rows} events, {size} bytes.");
                // Dropping the acknowledgements tells the sources these rows are durable.
                drop(acks);
            }
            Err(e) => {
                let unavailable = matches!(e, StoreError::Unavailable(_));
                for ack in &acks {
                    ack.fail();
                }
                self.seen.remove(partition, &ids);
                self.unavailable |= unavailable;
                tracing::error!(sink = %self.name, "Could not store {key} ({rows} events): {e}. Their batches are marked as not stored: a file source does not checkpoint past them and reads them again after a restart.");
            }
        }
    }

    /// Drops a file whose upload failed.
    async fn lose(&mut self, partition: Partition, error: StoreError) {
        let Some(mut file) = self.files.remove(&partition) else {
            return;
        };
        let rows = file.writer.take().map_or(0, |w| w.rows());
        let unavailable = matches!(error, StoreError::Unavailable(_));
        self.give_up(file, rows, error.to_string(), unavailable)
            .await;
    }

    async fn give_up(&mut self, file: OpenFile, rows: usize, message: String, unavailable: bool) {
        for ack in &file.acks {
            ack.fail();
        }
        self.seen.remove(file.partition, &file.ids);
        self.unavailable |= unavailable;
        let key = file.key.clone();
        let _ = file.upload.abort().await;
        tracing::error!(sink = %self.name, "Could not store {key} ({rows} events): {message}. Their batches are marked as not stored: a file source does not checkpoint past them and reads them again after a restart.");
    }

    /// Completes the files that are full or old enough.
    async fn roll(&mut self) {
        let max_bytes = self.config.max_file_bytes as usize;
        let max_age = self.max_age();
        let due: Vec<Partition> = self
            .files
            .iter()
            .filter(|(_, f)| f.writer().size() >= max_bytes || f.opened.elapsed() >= max_age)
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            self.complete(partition).await;
        }
    }

    /// Flushes the largest row groups in progress while they hold too much memory together,
    /// then completes the least recently written files while there are too many or their
    /// uploads hold too much memory. (Called after a write, so that it never completes a file
    /// the write is still encoding into.)
    async fn limit_memory(&mut self) {
        let budget = ROW_GROUP_MEMORY.max(2 * self.config.row_group_bytes as usize);
        loop {
            let buffered: Vec<(Partition, usize)> = self
                .files
                .iter()
                .map(|(p, f)| (*p, f.writer().buffered()))
                .collect();
            if buffered.iter().map(|(_, b)| b).sum::<usize>() <= budget {
                break;
            }
            let (largest, _) = *buffered.iter().max_by_key(|(_, b)| *b).expect("not empty");
            let file = self.files.get_mut(&largest).expect("open");
            if let Err(e) = file.writer_mut().flush_row_group() {
                let rows = file.writer().rows();
                let file = self.files.remove(&largest).expect("open");
                self.give_up(file, rows, format!("cannot flush a row group: {e}"), false)
                    .await;
                continue;
            }
            self.send(largest, 0).await;
        }
        while self.files.len() > MAX_OPEN_FILES
            || self
                .files
                .values()
                .map(|f| f.upload.buffered())
                .sum::<usize>()
                > UPLOAD_MEMORY
        {
            let (&oldest, _) = self
                .files
                .iter()
                .min_by_key(|(_, f)| f.last_write)
                .expect("not empty");
            self.complete(oldest).await;
        }
    }

    /// The store failed as unavailable: is it back?
    async fn check_store(&mut self) -> Result<(), SinkError> {
        match self.store.exists("events/_evalsink_probe").await {
            Err(StoreError::Unavailable(e)) => Err(SinkError::Unavailable(format!(
                "the object store is unavailable: {e}"
            ))),
            _ => {
                self.unavailable = false;
                Ok(())
            }
        }
    }
}

fn partition_of(event: &Event) -> Partition {
    (event.event_type(), event.ts.date_naive())
}

/// `events/type={TYPE}/date={YYYY-MM-DD}/`: where the files of `partition` are.
fn partition_prefix((event_type, date): Partition) -> String {
    format!(
        "events/type={}/date={}/",
        event_type.as_str(),
        date.format("%Y-%m-%d")
    )
}

fn store_error(key: &str, e: StoreError) -> SinkError {
    match e {
        StoreError::Unavailable(m) => SinkError::Unavailable(format!("cannot upload {key}: {m}")),
        other => SinkError::Failed(format!("cannot upload {key}: {other}")),
    }
}

/// Encodes each group of rows into its file (on the blocking pool).
fn encode(
    jobs: Vec<(Partition, FileWriter, Group)>,
    batches: &[Arc<Batch>],
) -> Vec<(Partition, FileWriter, Group, Result<(), String>)> {
    jobs.into_iter()
        .map(|(partition, mut writer, group)| {
            let events = group.rows.iter().map(|&(b, i)| &batches[b].events[i]);
            let result = writer
                .write(events, group.rows.len(), group.bytes)
                .map_err(|e| e.to_string());
            (partition, writer, group, result)
        })
        .collect()
}

impl Sink for ParquetSink {
    fn accepts(&self, event: &Event) -> bool {
        event.routes.contains(Route::Analytics)
    }

    async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
        if self.unavailable {
            self.check_store().await?;
        }
        // The ids stored in each partition are known before any is written (when the store
        // cannot be reached, the write fails whole and the driver tries it again).
        let mut partitions = std::collections::BTreeSet::new();
        for event in batches.iter().flat_map(|b| &b.events) {
            if self.accepts(event) {
                partitions.insert(partition_of(event));
            }
        }
        for &partition in &partitions {
            self.seen
                .load(&self.store, partition)
                .await
                .map_err(|e| store_error(&partition_prefix(partition), e))?;
        }
        let mut groups: BTreeMap<Partition, Group> = BTreeMap::new();
        let mut events = 0;
        let mut stored_before = 0;
        for (b, batch) in batches.iter().enumerate() {
            for (i, event) in batch.events.iter().enumerate() {
                if !self.accepts(event) {
                    continue;
                }
                events += 1;
                let partition = partition_of(event);
                let hash = id_hash(&event.id);
                if !self.seen.insert(partition, hash) {
                    stored_before += 1;
                    continue;
                }
                let group = groups.entry(partition).or_default();
                group.ids.push(hash);
                group.rows.push((b, i));
                group.bytes += event.size;
                if group.batches.last() != Some(&b) {
                    group.batches.push(b);
                }
            }
        }
        if stored_before > 0 {
            tracing::debug!(sink = %self.name, "{stored_before} events are in the Parquet files already.");
        }
        // Files are opened before anything is encoded: when the store cannot be reached, the
        // write fails whole and the driver tries it again.
        let wanted: Vec<Partition> = groups.keys().copied().collect();
        for partition in wanted {
            if !self.files.contains_key(&partition)
                && let Err(e) = self.open(partition).await
            {
                for (&p, g) in &groups {
                    self.seen.remove(p, &g.ids);
                }
                return Err(e);
            }
        }
        let jobs: Vec<(Partition, FileWriter, Group)> = groups
            .into_iter()
            .map(|(p, group)| {
                let file = self.files.get_mut(&p).expect("opened above");
                (p, file.writer.take().expect("not encoding"), group)
            })
            .collect();
        let pending: Vec<(Partition, Vec<u64>)> =
            jobs.iter().map(|(p, _, g)| (*p, g.ids.clone())).collect();
        let shared = batches.to_vec();
        let encoded = match tokio::task::spawn_blocking(move || encode(jobs, &shared)).await {
            Ok(encoded) => encoded,
            Err(e) => {
                // The writers are gone with the task: so are these files.
                for (p, ids) in pending {
                    self.seen.remove(p, &ids);
                    if let Some(file) = self.files.remove(&p) {
                        self.give_up(file, 0, format!("encoding failed: {e}"), false)
                            .await;
                    }
                }
                return Err(SinkError::Failed(format!("encoding Parquet failed: {e}")));
            }
        };
        let mut failure = None;
        let now = Instant::now();
        for (partition, writer, group, result) in encoded {
            let file = self.files.get_mut(&partition).expect("open");
            file.writer = Some(writer);
            match result {
                Ok(()) => {
                    file.acks
                        .extend(group.batches.iter().map(|&b| batches[b].ack.clone()));
                    file.ids.extend_from_slice(&group.ids);
                    file.last_write = now;
                    self.send(partition, UPLOAD_CHUNK).await;
                }
                Err(e) => {
                    // The file cannot be trusted after a failed write; this write's events are
                    // tried again by the driver (and dead-lettered if it keeps failing).
                    let file = self.files.remove(&partition).expect("open");
                    let rows = file.writer().rows();
                    self.seen.remove(partition, &group.ids);
                    self.give_up(file, rows, format!("cannot encode rows: {e}"), false)
                        .await;
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(SinkError::Failed(format!("cannot encode Parquet: {e}")));
        }
        self.limit_memory().await;
        // Age is checked here too: under steady load the driver never idles long enough to
        // call `flush(false)`.
        self.roll().await;
        Ok(Written {
            events,
            rejected: Vec::new(),
        })
    }

    async fn flush(&mut self, last: bool) -> Result<(), SinkError> {
        if last {
            let all: Vec<Partition> = self.files.keys().copied().collect();
            for partition in all {
                self.complete(partition).await;
            }
        } else {
            self.roll().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AckStatus, Routes};
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn events(n: usize, prefix: &str) -> Vec<Event> {
        let samples = schema::tests::sample_events();
        let routes = Routes::NONE.with(Route::Analytics);
        (0..n)
            .map(|i| {
                let mut e = samples[i % samples.len()].clone();
                e.id = format!("{prefix}-{i}");
                e.routes = routes;
                e
            })
            .collect()
    }

    async fn sink(dir: &std::path::Path, config: ParquetConfig) -> ParquetSink {
        let store = Store::open(&StoreConfig::from_url(&format!("file://{}", dir.display())))
            .await
            .unwrap();
        ParquetSink::new("analytics", store, config)
    }

    /// Glob options that skip hidden files (uploads in progress are `.tmp-*`).
    fn visible() -> glob::MatchOptions {
        glob::MatchOptions {
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        }
    }

    /// Every event_id in the files under `dir`, per file.
    fn read_ids(dir: &std::path::Path) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for path in
            glob::glob_with(&format!("{}/events/**/*.parquet", dir.display()), visible()).unwrap()
        {
            let path = path.unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            let mut ids = Vec::new();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("event_id").unwrap().as_string::<i32>();
                ids.extend(col.iter().map(|v| v.unwrap().to_string()));
            }
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            out.insert(rel, ids);
        }
        out
    }

    #[tokio::test]
    async fn acknowledges_only_once_the_file_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), ParquetConfig::default()).await;
        let (ack, mut rx) = Ack::new();
        let batch = Arc::new(Batch::new(events(80, "a"), ack));
        let written = sink.write(&[batch]).await.unwrap();
        assert_eq!(written.events, 80);
        // The driver drops its batches after a write; the sink still holds the acknowledgement.
        assert!(
            rx.try_recv().is_err(),
            "not acknowledged while the file is open"
        );
        assert!(read_ids(dir.path()).is_empty(), "no file visible yet");
        sink.flush(false).await.unwrap();
        assert!(rx.try_recv().is_err(), "a young file stays open");
        sink.flush(true).await.unwrap();
        assert_eq!(rx.try_recv().unwrap(), AckStatus::Delivered);
        let files = read_ids(dir.path());
        assert_eq!(files.len(), EventType::ALL.len(), "{files:?}");
        for (path, ids) in &files {
            assert!(
                path.starts_with("events/type=") && path.contains("/date=2026-03-04/part-"),
                "{path}"
            );
            assert_eq!(ids.len(), 10, "{path}");
        }
    }

    #[tokio::test]
    async fn skips_events_not_routed_to_analytics() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), ParquetConfig::default()).await;
        let mut list = events(16, "b");
        for e in &mut list[8..] {
            e.routes = Routes::NONE.with(Route::Events);
        }
        let batch = Arc::new(Batch::new(list, Ack::none()));
        assert_eq!(sink.write(&[batch]).await.unwrap().events, 8);
        sink.flush(true).await.unwrap();
        let total: usize = read_ids(dir.path()).values().map(Vec::len).sum();
        assert_eq!(total, 8);
    }

    #[tokio::test]
    async fn rolls_by_size_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetConfig {
            max_file_bytes: 1024,
            max_file_age_secs: 0.2,
            ..ParquetConfig::default()
        };
        let mut sink = sink(dir.path(), config).await;
        let mut all = Vec::new();
        for round in 0..20 {
            let list = events(40, &format!("r{round}"));
            all.extend(list.iter().map(|e| e.id.clone()));
            sink.write(&[Arc::new(Batch::new(list, Ack::none()))])
                .await
                .unwrap();
        }
        let by_size = read_ids(dir.path()).len();
        assert!(
            by_size > EventType::ALL.len(),
            "full files were completed: {by_size}"
        );

        let (ack, mut rx) = Ack::new();
        sink.write(&[Arc::new(Batch::new(events(8, "late"), ack))])
            .await
            .unwrap();
        all.extend((0..8).map(|i| format!("late-{i}")));
        tokio::time::sleep(Duration::from_millis(250)).await;
        sink.flush(false).await.unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            AckStatus::Delivered,
            "rolled by age"
        );
        sink.flush(true).await.unwrap();

        let mut stored: Vec<String> = read_ids(dir.path()).into_values().flatten().collect();
        stored.sort();
        all.sort();
        assert_eq!(stored, all, "every row exactly once");
    }

    #[tokio::test]
    async fn a_failed_upload_fails_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), ParquetConfig::default()).await;
        let (ack, mut rx) = Ack::new();
        sink.write(&[Arc::new(Batch::new(events(8, "f"), ack))])
            .await
            .unwrap();
        // The files cannot be moved into place any more.
        std::fs::remove_dir_all(dir.path().join("events")).unwrap();
        sink.flush(true).await.unwrap();
        assert_eq!(rx.try_recv().unwrap(), AckStatus::Failed);
    }

    #[tokio::test]
    async fn replays_and_redeliveries_store_no_event_twice() {
        let dir = tempfile::tempdir().unwrap();
        let once = |list: Vec<Event>| [Arc::new(Batch::new(list, Ack::none()))];
        let mut first = sink(dir.path(), ParquetConfig::default()).await;
        let mut list = events(30, "a");
        list.extend(events(5, "a")); // the same events twice in one write
        first.write(&once(list)).await.unwrap();
        first.write(&once(events(10, "a"))).await.unwrap();
        first.flush(true).await.unwrap();
        // A later process (a replay, a restart) reads what is stored before it writes.
        let mut second = sink(dir.path(), ParquetConfig::default()).await;
        second.write(&once(events(40, "a"))).await.unwrap();
        second.flush(true).await.unwrap();

        let mut stored: Vec<String> = read_ids(dir.path()).into_values().flatten().collect();
        stored.sort();
        let mut all: Vec<String> = (0..40).map(|i| format!("a-{i}")).collect();
        all.sort();
        assert_eq!(stored, all, "every row exactly once");
    }

    #[tokio::test]
    async fn events_of_a_file_that_was_not_stored_can_be_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path(), ParquetConfig::default()).await;
        let batch = || [Arc::new(Batch::new(events(8, "f"), Ack::none()))];
        sink.write(&batch()).await.unwrap();
        std::fs::remove_dir_all(dir.path().join("events")).unwrap();
        sink.flush(true).await.unwrap();
        sink.write(&batch()).await.unwrap();
        sink.flush(true).await.unwrap();
        assert_eq!(read_ids(dir.path()).into_values().flatten().count(), 8);
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: ParquetConfig = toml::from_str("").unwrap();
        assert_eq!(c, ParquetConfig::default());
        assert_eq!(c.store.url, "file://./data");
        assert_eq!(c.max_file_bytes, 64 * 1024 * 1024);
        assert_eq!(c.max_file_age_secs, 300.0);
        assert!(c.check().is_empty());
        let bad: ParquetConfig =
            toml::from_str("max_file_bytes = 1\nmax_file_age_secs = 0\nstore = \"ftp://x\"")
                .unwrap();
        let keys: Vec<String> = bad.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["store", "max_file_bytes", "max_file_age_secs"]);
        assert!(toml::from_str::<ParquetConfig>("max_file_size = 1").is_err());
    }
}

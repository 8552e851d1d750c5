//! The `split` transform: each named top-level string field longer than `inline_max_bytes` is
//! stored in the object store under `outputs/{eval_id}/{sha256}` and replaced in the event by its
//! preview (its first `preview_bytes`, cut on a UTF-8 boundary); the event then carries a
//! [`StoredField`] with the key, the size and the sha256 of the whole text.
//!
//! An event moves on only once its objects are stored (durable), so nothing downstream refers to
//! a missing object. While the store is unavailable the transform retries with backoff and the
//! pipeline waits; an event whose object the store refuses goes to the dead letters, whole.
//!
//! Keys are content-addressed: an object that already exists is not written again. The
//! `{eval_id}` part is the event's `eval_id` with the characters that are not letters, digits,
//! `-`, `_`, `.` or `~` percent-encoded (so that no id can leave `outputs/`); an event without an
//! `eval_id` (or with an empty one) uses `_`: `outputs/_/{sha256}`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{Batch, Event, StoredField};
use crate::sinks::dead_letter::{DeadLetter, DeadLetters, Reason};
use crate::store::{Store, StoreConfig, StoreError};

/// Config of the `split` transform.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Top-level string fields to move out when they are too long (default `["output"]`). The
    /// typed text fields (`code`, `output`, `error`, `traceback`) and any extra string field of
    /// an event can be named.
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// Fields longer than this many bytes are stored outside (default 1 MiB).
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: u64,
    /// Bytes kept in the event as the field's preview (default 1 KiB), cut on a UTF-8 boundary.
    #[serde(default = "default_preview_bytes")]
    pub preview_bytes: u64,
    /// Where the objects go: `file://PATH` (default `file://./data`) or `s3://BUCKET/PREFIX` with
    /// `region`, `endpoint`, `sse` and `kms_key_id`.
    #[serde(default)]
    pub store: StoreConfig,
}

fn default_fields() -> Vec<String> {
    vec!["output".into()]
}

fn default_inline_max_bytes() -> u64 {
    1024 * 1024
}

fn default_preview_bytes() -> u64 {
    1024
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            fields: default_fields(),
            inline_max_bytes: default_inline_max_bytes(),
            preview_bytes: default_preview_bytes(),
            store: StoreConfig::default(),
        }
    }
}

/// Typed fields that are not free text (ids, times, numbers, objects): split cannot move them.
const NOT_SPLITTABLE: &[&str] = &[
    "type",
    "event_id",
    "timestamp",
    "tenant_id",
    "eval_id",
    "executor_id",
    "container_id",
    "language",
    "engine",
    "timeout",
    "metadata",
    "start_time",
    "success",
    "end_time",
    "status",
    "metrics",
    "queue_length",
    "processing_count",
    "image",
    "limits",
    "violation_type",
    "details",
];

impl SplitConfig {
    /// Checks that need no I/O; returns (key, message) pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = self.store.check();
        if self.fields.is_empty() {
            problems.push((
                "fields".into(),
                "names no field; list the fields to move out, for example fields = [\"output\"]"
                    .into(),
            ));
        }
        for field in &self.fields {
            if NOT_SPLITTABLE.contains(&field.as_str()) {
                problems.push((
                    "fields".into(),
                    format!(
                        "{field:?} is not a text field that can be stored outside; name code, \
                         output, error, traceback or an extra top-level string field"
                    ),
                ));
            }
        }
        if self.inline_max_bytes == 0 {
            problems.push((
                "inline_max_bytes".into(),
                "must be at least 1 byte (the default is 1048576, 1 MiB)".into(),
            ));
        }
        if self.preview_bytes > self.inline_max_bytes {
            problems.push((
                "preview_bytes".into(),
                format!(
                    "must be at most inline_max_bytes ({}): a preview is the beginning of a \
                     field that is too long to keep",
                    self.inline_max_bytes
                ),
            ));
        }
        problems
    }
}

/// Objects stored at once by one transform call.
const CONCURRENT_OBJECTS: usize = 4;
/// Attempts of an object that the store refuses (not unavailable) before its event is a dead
/// letter.
const MAX_FAILED_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The transform.
pub struct Split {
    name: String,
    fields: Vec<String>,
    inline_max_bytes: usize,
    preview_bytes: usize,
    store: Store,
}

/// One field on its way to the store: the whole text (taken out of the event, which holds the
/// preview meanwhile).
struct Job {
    event: usize,
    field: String,
    text: Bytes,
    sha256: String,
    key: String,
}

impl Split {
    /// Opens the store (for S3, checks the bucket).
    pub async fn new(name: &str, config: &SplitConfig) -> Result<Split, StoreError> {
        Ok(Split::with_store(
            name,
            config,
            Store::open(&config.store).await?,
        ))
    }

    pub fn with_store(name: &str, config: &SplitConfig, store: Store) -> Split {
        Split {
            name: name.to_string(),
            fields: config.fields.clone(),
            inline_max_bytes: usize::try_from(config.inline_max_bytes).unwrap_or(usize::MAX),
            preview_bytes: usize::try_from(config.preview_bytes).unwrap_or(usize::MAX),
            store,
        }
    }

    pub async fn apply(&self, mut batch: Batch, dead_letters: &DeadLetters) -> Batch {
        let mut jobs = self.take_long_fields(&mut batch);
        if jobs.is_empty() {
            return batch;
        }
        // Hashing MiBs is CPU work: off the runtime's threads.
        jobs = tokio::task::spawn_blocking(move || {
            for job in &mut jobs {
                job.sha256 = hex::encode(Sha256::digest(&job.text));
            }
            jobs
        })
        .await
        .expect("hashing does not panic");
        for job in &mut jobs {
            job.key = object_key(batch.events[job.event].eval_id(), &job.sha256);
        }

        let results: Vec<(Job, Result<(), String>)> = futures_util::stream::iter(jobs)
            .map(|job| async move {
                let result = self.store_object(&job.key, job.text.clone()).await;
                (job, result)
            })
            .buffered(CONCURRENT_OBJECTS)
            .collect()
            .await;

        let mut failed: BTreeMap<usize, String> = BTreeMap::new();
        for (job, result) in results {
            let event = &mut batch.events[job.event];
            match result {
                Ok(()) => event.stored.push(StoredField {
                    field: job.field,
                    key: job.key,
                    size: job.text.len() as u64,
                    sha256: job.sha256,
                }),
                Err(message) => {
                    // The dead letter holds the whole text, so that it can be replayed.
                    if let Some(slot) = field_mut(event, &job.field) {
                        *slot = String::from_utf8(Vec::from(job.text))
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into());
                    }
                    failed.entry(job.event).or_insert(message);
                }
            }
        }
        if failed.is_empty() {
            return batch;
        }
        let mut letters = Vec::with_capacity(failed.len());
        let mut index = 0;
        batch.events.retain(|event| {
            let keep = match failed.get(&index) {
                None => true,
                Some(message) => {
                    letters.push(DeadLetter::from_event(
                        Reason::Undeliverable,
                        format!("transforms.{}: {message}", self.name),
                        &self.name,
                        event,
                    ));
                    false
                }
            };
            index += 1;
            keep
        });
        for letter in letters {
            dead_letters.send(letter.with_ack(&batch.ack)).await;
        }
        batch
    }

    /// Takes the fields that are too long out of their events, leaving their previews.
    fn take_long_fields(&self, batch: &mut Batch) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (i, event) in batch.events.iter_mut().enumerate() {
            for field in &self.fields {
                if event.stored(field).is_some() {
                    // An earlier split already moved it.
                    continue;
                }
                let Some(slot) = field_mut(event, field) else {
                    continue;
                };
                if slot.len() <= self.inline_max_bytes {
                    continue;
                }
                let preview = slot[..char_boundary(slot, self.preview_bytes)].to_string();
                let text = std::mem::replace(slot, preview);
                jobs.push(Job {
                    event: i,
                    field: field.clone(),
                    text: Bytes::from(text),
                    sha256: String::new(),
                    key: String::new(),
                });
            }
        }
        jobs
    }

    /// Stores one object unless it is there already: retries for as long as the store is
    /// unavailable, and a few times when it refuses.
    async fn store_object(&self, key: &str, body: Bytes) -> Result<(), String> {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0;
        loop {
            let result = match self.store.exists(key).await {
                Ok(true) => Ok(()),
                Err(e @ StoreError::Unavailable(_)) => Err(e),
                // Also when the existence check is refused (a role allowed to write only).
                Ok(false) | Err(_) => self.store.put(key, body.clone()).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(StoreError::Unavailable(message)) => {
                    tracing::warn!(transform = %self.name, "Cannot store {key}: {message}. Retrying in {backoff:?}; the pipeline waits.");
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_FAILED_ATTEMPTS {
                        tracing::error!(transform = %self.name, "Giving up on {key} after {failures} attempts: {e}. Its event goes to the dead letters.");
                        return Err(format!("cannot store {key}: {e}"));
                    }
                    tracing::warn!(transform = %self.name, "Storing {key} failed: {e}. Retrying in {backoff:?}.");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The top-level string field `name`: a typed text field, or an extra field holding a string.
fn field_mut<'a>(event: &'a mut Event, name: &str) -> Option<&'a mut String> {
    if let Some(s) = event.body.string_field_mut(name) {
        return Some(s);
    }
    match event.extra.get_mut(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The largest index at most `max` that is a char boundary of `s`.
fn char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// `outputs/{eval_id}/{sha256}`, with the eval_id made safe as one path segment.
pub fn object_key(eval_id: Option<&str>, sha256: &str) -> String {
    format!("outputs/{}/{sha256}", key_segment(eval_id))
}

fn key_segment(eval_id: Option<&str>) -> Cow<'_, str> {
    let id = match eval_id {
        None | Some("") => return Cow::Borrowed("_"),
        Some(".") => return Cow::Borrowed("%2E"),
        Some("..") => return Cow::Borrowed("%2E%2E"),
        Some(id) => id,
    };
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
    if id.bytes().all(safe) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for b in id.bytes() {
        if safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Ack;

    fn completed(eval_id: &str, output: &str) -> Event {
        let line = serde_json::json!({
            "type": "EVALUATION_COMPLETED",
            "event_id": format!("ev-{eval_id}-{}", output.len()),
            "eval_id": eval_id,
            "output": output,
            "success": true,
            "end_time": "2026-01-01T00:00:00Z",
        })
        .to_string();
        crate::decode::decode_line(line.as_bytes(), chrono::Utc::now()).unwrap()
    }

    fn failed(eval_id: &str, error: &str, traceback: &str, note: &str) -> Event {
        let line = serde_json::json!({
            "type": "EVALUATION_FAILED",
            "eval_id": eval_id,
            "error": error,
            "traceback": traceback,
            "note": note,
        })
        .to_string();
        crate::decode::decode_line(line.as_bytes(), chrono::Utc::now()).unwrap()
    }

    struct Setup {
        dir: tempfile::TempDir,
        split: Split,
        dead: DeadLetters,
        letters: tokio::sync::mpsc::Receiver<DeadLetter>,
    }

    fn setup(config: SplitConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(
            crate::store::local::LocalStore::open(dir.path().to_str().unwrap()).unwrap(),
        );
        let split = Split::with_store("split", &config, store);
        let (tx, letters) = tokio::sync::mpsc::channel(16);
        Setup {
            dir,
            split,
            dead: DeadLetters::for_test(tx),
            letters,
        }
    }

    fn small(inline: u64, preview: u64, fields: &[&str]) -> SplitConfig {
        SplitConfig {
            fields: fields.iter().map(|f| f.to_string()).collect(),
            inline_max_bytes: inline,
            preview_bytes: preview,
            store: StoreConfig::default(),
        }
    }

    fn sha(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    fn output(event: &Event) -> &str {
        match &event.body {
            crate::event::Body::EvaluationCompleted { output, .. } => output,
            _ => panic!("not completed"),
        }
    }

    #[test]
    fn the_preview_is_cut_on_a_char_boundary() {
        let s = "aé€😀"; // 1 + 2 + 3 + 4 bytes
        assert_eq!(char_boundary(s, 0), 0);
        assert_eq!(char_boundary(s, 1), 1);
        assert_eq!(char_boundary(s, 2), 1);
        assert_eq!(char_boundary(s, 3), 3);
        assert_eq!(char_boundary(s, 5), 3);
        assert_eq!(char_boundary(s, 6), 6);
        assert_eq!(char_boundary(s, 9), 6);
        assert_eq!(char_boundary(s, 10), 10);
        assert_eq!(char_boundary(s, 100), 10);
    }

    #[tokio::test]
    async fn fields_at_most_the_limit_stay_and_longer_ones_are_stored() {
        let mut t = setup(small(10, 4, &["output"]));
        let at_limit = "0123456789";
        let over = "ééééééé€"; // 17 bytes; a 4-byte preview is "éé"
        let batch = Batch::new(
            vec![completed("e1", at_limit), completed("e2", over)],
            Ack::none(),
        );
        let out = t.split.apply(batch, &t.dead).await;
        assert_eq!(out.events.len(), 2);
        assert_eq!(output(&out.events[0]), at_limit);
        assert!(out.events[0].stored.is_empty());

        let e = &out.events[1];
        assert_eq!(output(e), "éé");
        let stored = e.stored("output").unwrap();
        assert_eq!(stored.key, format!("outputs/e2/{}", sha(over)));
        assert_eq!(stored.size, over.len() as u64);
        assert_eq!(stored.sha256, sha(over));
        let on_disk = std::fs::read(t.dir.path().join(&stored.key)).unwrap();
        assert_eq!(on_disk, over.as_bytes());
        // What sinks see: the reference instead of the text.
        let json = e.to_json();
        assert_eq!(json["output"]["ref"], stored.key.as_str());
        assert_eq!(json["output"]["preview"], "éé");
        assert_eq!(json["output"]["size"], 17);
        assert!(t.letters.try_recv().is_err());
    }

    #[tokio::test]
    async fn several_fields_typed_and_extra() {
        let mut t = setup(small(8, 3, &["error", "traceback", "note", "missing"]));
        let error = "E".repeat(9);
        let traceback = "short";
        let note = "n".repeat(20);
        let batch = Batch::new(vec![failed("e/1", &error, traceback, &note)], Ack::none());
        let out = t.split.apply(batch, &t.dead).await;
        let e = &out.events[0];
        let fields: Vec<&str> = e.stored.iter().map(|s| s.field.as_str()).collect();
        assert_eq!(fields, ["error", "note"]);
        let crate::event::Body::EvaluationFailed {
            error: preview,
            traceback: kept,
            ..
        } = &e.body
        else {
            panic!()
        };
        assert_eq!(preview, "EEE");
        assert_eq!(kept, traceback);
        assert_eq!(e.extra["note"], "nnn");
        // The eval_id is one safe path segment.
        let key = &e.stored("note").unwrap().key;
        assert_eq!(key, &format!("outputs/e%2F1/{}", sha(&note)));
        assert_eq!(
            std::fs::read_to_string(t.dir.path().join(key)).unwrap(),
            note
        );
        assert!(t.letters.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_object_already_stored_is_not_written_again() {
        let t = setup(small(4, 2, &["output"]));
        let text = "the same long output";
        let key = format!("outputs/e1/{}", sha(text));
        let path = t.dir.path().join(&key);
        let first = t
            .split
            .apply(
                Batch::new(vec![completed("e1", text)], Ack::none()),
                &t.dead,
            )
            .await;
        assert_eq!(first.events[0].stored("output").unwrap().key, key);
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let again = t
            .split
            .apply(
                Batch::new(vec![completed("e1", text)], Ack::none()),
                &t.dead,
            )
            .await;
        assert_eq!(again.events[0].stored, first.events[0].stored);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written,
            "content-addressed: not rewritten"
        );
        // Only the object itself is in the store.
        let store = Store::Local(
            crate::store::local::LocalStore::open(t.dir.path().to_str().unwrap()).unwrap(),
        );
        assert_eq!(store.list("outputs/").await.unwrap(), vec![key]);
    }

    #[tokio::test]
    async fn an_event_whose_object_is_refused_is_a_dead_letter_with_its_whole_text() {
        let mut t = setup(small(4, 2, &["output"]));
        // A file where the eval's folder should be: the store refuses the object.
        std::fs::create_dir_all(t.dir.path().join("outputs")).unwrap();
        std::fs::write(t.dir.path().join("outputs/blocked"), "").unwrap();
        let batch = Batch::new(
            vec![
                completed("blocked", "a long output"),
                completed("fine", "another long output"),
            ],
            Ack::none(),
        );
        let out = t.split.apply(batch, &t.dead).await;
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].eval_id(), Some("fine"));
        let letter = t.letters.try_recv().unwrap();
        assert_eq!(letter.reason, Reason::Undeliverable);
        assert!(
            letter.message.contains("transforms.split"),
            "{}",
            letter.message
        );
        let raw: Value = serde_json::from_str(&letter.raw).unwrap();
        assert_eq!(raw["output"], "a long output");
    }

    #[test]
    fn keys_are_safe_path_segments() {
        assert_eq!(object_key(Some("eval-42"), "ab"), "outputs/eval-42/ab");
        assert_eq!(object_key(None, "ab"), "outputs/_/ab");
        assert_eq!(object_key(Some(""), "ab"), "outputs/_/ab");
        assert_eq!(object_key(Some(".."), "ab"), "outputs/%2E%2E/ab");
        assert_eq!(
            object_key(Some("a/../b c"), "ab"),
            "outputs/a%2F..%2Fb%20c/ab"
        );
        assert_eq!(object_key(Some("é"), "ab"), "outputs/%C3%A9/ab");
    }

    #[test]
    fn bad_values_are_reported() {
        let keys = |c: SplitConfig| -> Vec<String> { c.check().into_iter().map(|p| p.0).collect() };
        assert!(keys(SplitConfig::default()).is_empty());
        assert_eq!(keys(small(0, 0, &["output"])), ["inline_max_bytes"]);
        assert_eq!(keys(small(10, 11, &["output"])), ["preview_bytes"]);
        assert_eq!(keys(small(10, 1, &[])), ["fields"]);
        assert_eq!(keys(small(10, 1, &["eval_id"])), ["fields"]);
        let c = SplitConfig {
            store: StoreConfig::from_url("ftp://x"),
            ..SplitConfig::default()
        };
        assert_eq!(keys(c), ["store"]);
        let c: SplitConfig = toml::from_str("").unwrap();
        assert_eq!(c, SplitConfig::default());
        assert_eq!(c.inline_max_bytes, 1_048_576);
        assert_eq!(c.preview_bytes, 1024);
        assert_eq!(c.fields, ["output"]);
    }
}

//! The dead letter queue: every line or event that cannot be stored, with its reason and where
//! it came from, appended as NDJSON to `{path}/{YYYY-MM-DD}.ndjson` (redacted). A dead letter's
//! acknowledgement completes once its line is written and synced to disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::decode::Refusal;
use crate::event::{Ack, Event, format_ts};
use crate::stats::Stats;
use crate::transforms::redact::Redactor;

/// Config of the `dead_letter` sink. It takes no `inputs`: it receives every component's
/// dead letters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Directory of the NDJSON files (default `{data_dir}/dead-letter`).
    pub path: Option<PathBuf>,
}

/// Why something is a dead letter. The names are the `reason` field of the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    UnknownType,
    MissingField,
    WrongType,
    InvalidValue,
    LineTooLong,
    /// classify has no route for the type.
    Unclassified,
    /// A sink's server refused the event (the server's error is in the record).
    Rejected,
    /// A sink gave up on the event after its retries.
    Undeliverable,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::UnknownType,
        Reason::MissingField,
        Reason::WrongType,
        Reason::InvalidValue,
        Reason::LineTooLong,
        Reason::Unclassified,
        Reason::Rejected,
        Reason::Undeliverable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::UnknownType => "unknown_type",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::InvalidValue => "invalid_value",
            Reason::LineTooLong => "line_too_long",
            Reason::Unclassified => "unclassified",
            Reason::Rejected => "rejected",
            Reason::Undeliverable => "undeliverable",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a line came from: the source, and a file and line number or a connection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    pub component: Arc<str>,
    pub file: Option<Arc<str>>,
    pub connection: Option<Arc<str>>,
    pub line: Option<u64>,
}

impl Origin {
    pub fn new(component: &str) -> Origin {
        Origin {
            component: component.into(),
            ..Origin::default()
        }
    }

    pub fn stdin() -> Origin {
        Origin::new("stdin")
    }

    pub fn with_file(mut self, file: &str) -> Origin {
        self.file = Some(file.into());
        self
    }

    pub fn with_connection(mut self, peer: &str) -> Origin {
        self.connection = Some(peer.into());
        self
    }

    pub fn at_line(&self, line: u64) -> Origin {
        Origin {
            line: Some(line),
            ..self.clone()
        }
    }
}

/// One dead letter on its way to the file.
#[derive(Debug)]
pub struct DeadLetter {
    pub reason: Reason,
    pub message: String,
    pub origin: Origin,
    /// The line as read (lossy UTF-8), or the event as JSON; redacted before it is written.
    pub raw: String,
    /// Size of the original line, when `raw` holds only its beginning.
    pub raw_bytes: Option<u64>,
    pub event_id: Option<String>,
    /// Held until the record is on disk.
    pub ack: Option<Ack>,
}

impl DeadLetter {
    pub fn from_line(refusal: Refusal, origin: Origin, line: &[u8]) -> DeadLetter {
        DeadLetter {
            reason: refusal.reason,
            message: refusal.message,
            origin,
            raw: String::from_utf8_lossy(line).into_owned(),
            raw_bytes: None,
            event_id: None,
            ack: None,
        }
    }

    /// An accepted event that a transform or sink could not store.
    pub fn from_event(reason: Reason, message: String, component: &str, event: &Event) -> Self {
        DeadLetter {
            reason,
            message,
            origin: Origin::new(component),
            raw: {
                let mut text = Vec::new();
                crate::json::write_event(&mut text, event, crate::json::Target::Json);
                String::from_utf8(text).expect("JSON is UTF-8")
            },
            raw_bytes: None,
            event_id: Some(event.id.clone()),
            ack: None,
        }
    }

    pub fn with_ack(mut self, ack: &Ack) -> DeadLetter {
        self.ack = Some(ack.clone());
        self
    }

    fn record(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("timestamp".into(), format_ts(&Utc::now()).into());
        m.insert("reason".into(), self.reason.as_str().into());
        m.insert("error".into(), self.message.as_str().into());
        m.insert("source".into(), self.origin.component.as_ref().into());
        if let Some(file) = &self.origin.file {
            m.insert("file".into(), file.as_ref().into());
        }
        if let Some(peer) = &self.origin.connection {
            m.insert("connection".into(), peer.as_ref().into());
        }
        if let Some(line) = self.origin.line {
            m.insert("line".into(), line.into());
        }
        if let Some(id) = &self.event_id {
            m.insert("event_id".into(), id.as_str().into());
        }
        m.insert("raw".into(), self.raw.as_str().into());
        if let Some(size) = self.raw_bytes {
            m.insert("raw_bytes".into(), json!(size));
            m.insert("truncated".into(), true.into());
        }
        m
    }
}

/// The sending side, cloned into every component. Sending waits when the writer is behind.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    tx: mpsc::Sender<DeadLetter>,
}

impl DeadLetters {
    /// A handle whose letters land in `tx` (tests of components that send dead letters).
    #[cfg(test)]
    pub fn for_test(tx: mpsc::Sender<DeadLetter>) -> DeadLetters {
        DeadLetters { tx }
    }

    pub async fn send(&self, letter: DeadLetter) {
        // The writer lives until every sender is gone, so this only fails when it crashed,
        // which it reports itself.
        let _ = self.tx.send(letter).await;
    }

    pub async fn send_all(&self, letters: impl IntoIterator<Item = DeadLetter>) {
        for letter in letters {
            self.send(letter).await;
        }
    }
}

/// Starts the writer thread. It ends when every [`DeadLetters`] clone is dropped. Without a
/// `redactor`, the built-in rules redact; the thread compiles them as it starts, beside the rest
/// of the start-up (about 25 ms of CPU that no longer delays the first event).
pub fn spawn(
    dir: PathBuf,
    redactor: Option<Arc<Redactor>>,
    stats: Arc<Stats>,
) -> (DeadLetters, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let handle = std::thread::Builder::new()
        .name("dead-letter".into())
        .spawn(move || {
            let redactor = match &redactor {
                Some(r) => r,
                None => Redactor::builtin(),
            };
            write_loop(rx, &dir, redactor, &stats)
        })
        .expect("spawning the dead letter thread");
    (DeadLetters { tx }, handle)
}

fn write_loop(mut rx: mpsc::Receiver<DeadLetter>, dir: &Path, redactor: &Redactor, stats: &Stats) {
    let mut file: Option<(String, BufWriter<File>)> = None;
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while pending.len() < 1024 {
            match rx.try_recv() {
                Ok(letter) => pending.push(letter),
                Err(_) => break,
            }
        }
        let day = Utc::now().format("%Y-%m-%d").to_string();
        if file.as_ref().is_none_or(|(d, _)| *d != day) {
            match open(dir, &day) {
                Ok(f) => file = Some((day, f)),
                Err(e) => {
                    tracing::error!(
                        "Cannot open the dead letter file in {}: {e}. Dead letters are lost until it can be written; fix the directory or set sinks.<dead_letter>.path.",
                        dir.display()
                    );
                    pending
                        .iter()
                        .filter_map(|l| l.ack.as_ref())
                        .for_each(Ack::fail);
                    pending.clear();
                    continue;
                }
            }
        }
        let (_, out) = file.as_mut().expect("opened above");
        let result = write_batch(out, &mut pending, redactor, stats);
        if let Err(e) = result {
            tracing::error!(
                "Cannot write the dead letter file in {}: {e}.",
                dir.display()
            );
            pending
                .iter()
                .filter_map(|l| l.ack.as_ref())
                .for_each(Ack::fail);
            file = None;
        }
        // Dropping the letters completes their acknowledgements.
        pending.clear();
    }
}

fn open(dir: &Path, day: &str) -> std::io::Result<BufWriter<File>> {
    std::fs::create_dir_all(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{day}.ndjson")))?;
    Ok(BufWriter::with_capacity(256 * 1024, file))
}

fn write_batch(
    out: &mut BufWriter<File>,
    letters: &mut [DeadLetter],
    redactor: &Redactor,
    stats: &Stats,
) -> std::io::Result<()> {
    for letter in letters.iter_mut() {
        redactor.redact_string(&mut letter.raw);
        redactor.redact_string(&mut letter.message);
        let line = Value::Object(letter.record()).to_string();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        stats.dead_letter(letter.reason);
    }
    out.flush()?;
    out.get_ref().sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Refusal;

    #[test]
    fn records_are_redacted_ndjson_and_acks_wait_for_disk() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (tx, handle) = spawn(dir.path().to_path_buf(), None, stats.clone());
        let (ack, rx) = Ack::new();
        let refusal = Refusal {
            reason: Reason::InvalidJson,
            message: "expected value".into(),
        };
        let letter = DeadLetter::from_line(
            refusal,
            Origin::new("in").with_file("a.ndjson").at_line(7),
            b"{bad AKIAIOSFODNN7EXAMPLE",
        )
        .with_ack(&ack);
        drop(ack);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            tx.send(letter).await;
            drop(tx);
            rx.await.unwrap();
        });
        handle.join().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        let record: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(record["reason"], "invalid_json");
        assert_eq!(record["source"], "in");
        assert_eq!(record["file"], "a.ndjson");
        assert_eq!(record["line"], 7);
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
        assert!(text.contains("[REDACTED:"), "{text}");
        assert_eq!(stats.dead_letters(), 1);
    }
}

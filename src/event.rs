//! The event model: one parsed input line (`Event`), the batches that move through the
//! pipeline (`Batch`), and the acknowledgement that tells a source when a batch is durable (`Ack`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

/// The event types of SPEC.md, in a fixed order (used to index counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    EvaluationQueued,
    EvaluationStarted,
    EvaluationCompleted,
    EvaluationFailed,
    ExecutorHealth,
    QueueMetrics,
    ContainerCreated,
    ResourceViolation,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::EvaluationQueued,
        EventType::EvaluationStarted,
        EventType::EvaluationCompleted,
        EventType::EvaluationFailed,
        EventType::ExecutorHealth,
        EventType::QueueMetrics,
        EventType::ContainerCreated,
        EventType::ResourceViolation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::EvaluationQueued => "EVALUATION_QUEUED",
            EventType::EvaluationStarted => "EVALUATION_STARTED",
            EventType::EvaluationCompleted => "EVALUATION_COMPLETED",
            EventType::EvaluationFailed => "EVALUATION_FAILED",
            EventType::ExecutorHealth => "EXECUTOR_HEALTH",
            EventType::QueueMetrics => "QUEUE_METRICS",
            EventType::ContainerCreated => "CONTAINER_CREATED",
            EventType::ResourceViolation => "RESOURCE_VIOLATION",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed fields of each event type (the table in SPEC.md, "Input events").
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    EvaluationQueued {
        eval_id: String,
        code: String,
        language: String,
        engine: String,
        /// Seconds.
        timeout: f64,
        metadata: Map<String, Value>,
    },
    EvaluationStarted {
        eval_id: String,
        executor_id: String,
        start_time: DateTime<Utc>,
    },
    EvaluationCompleted {
        eval_id: String,
        output: String,
        success: bool,
        end_time: DateTime<Utc>,
    },
    EvaluationFailed {
        eval_id: String,
        error: String,
        traceback: String,
    },
    ExecutorHealth {
        executor_id: String,
        status: String,
        metrics: Map<String, Value>,
    },
    QueueMetrics {
        queue_length: i64,
        processing_count: i64,
    },
    ContainerCreated {
        container_id: String,
        eval_id: String,
        image: String,
        limits: Map<String, Value>,
    },
    ResourceViolation {
        container_id: String,
        violation_type: String,
        details: Map<String, Value>,
    },
}

impl Body {
    pub fn event_type(&self) -> EventType {
        match self {
            Body::EvaluationQueued { .. } => EventType::EvaluationQueued,
            Body::EvaluationStarted { .. } => EventType::EvaluationStarted,
            Body::EvaluationCompleted { .. } => EventType::EvaluationCompleted,
            Body::EvaluationFailed { .. } => EventType::EvaluationFailed,
            Body::ExecutorHealth { .. } => EventType::ExecutorHealth,
            Body::QueueMetrics { .. } => EventType::QueueMetrics,
            Body::ContainerCreated { .. } => EventType::ContainerCreated,
            Body::ResourceViolation { .. } => EventType::ResourceViolation,
        }
    }

    pub fn eval_id(&self) -> Option<&str> {
        match self {
            Body::EvaluationQueued { eval_id, .. }
            | Body::EvaluationStarted { eval_id, .. }
            | Body::EvaluationCompleted { eval_id, .. }
            | Body::EvaluationFailed { eval_id, .. }
            | Body::ContainerCreated { eval_id, .. } => Some(eval_id),
            _ => None,
        }
    }

    /// The typed text field called `name` (`code`, `output`, `error`, `traceback`).
    pub fn string_field(&self, name: &str) -> Option<&str> {
        match (self, name) {
            (Body::EvaluationQueued { code, .. }, "code") => Some(code),
            (Body::EvaluationCompleted { output, .. }, "output") => Some(output),
            (Body::EvaluationFailed { error, .. }, "error") => Some(error),
            (Body::EvaluationFailed { traceback, .. }, "traceback") => Some(traceback),
            _ => None,
        }
    }

    /// The top-level string field called `name`, for transforms that are configured by field
    /// name (split). Nested values and extra fields are reached through [`Event::strings_mut`].
    pub fn string_field_mut(&mut self, name: &str) -> Option<&mut String> {
        match (self, name) {
            (Body::EvaluationQueued { code, .. }, "code") => Some(code),
            (Body::EvaluationCompleted { output, .. }, "output") => Some(output),
            (Body::EvaluationFailed { error, .. }, "error") => Some(error),
            (Body::EvaluationFailed { traceback, .. }, "traceback") => Some(traceback),
            _ => None,
        }
    }
}

/// A string field that the split transform moved to object storage. The field itself then
/// holds only its preview.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredField {
    /// The field's name (`output` by default).
    pub field: String,
    /// Object key, `outputs/{eval_id}/{sha256}`.
    pub key: String,
    /// Size in bytes of the full (redacted) text.
    pub size: u64,
    /// Hex sha256 of the full (redacted) text.
    pub sha256: String,
}

/// One accepted input line, parsed once. Known fields are typed (`body`); every other field is
/// kept in `extra` and stored in `payload`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `event_id` from the line, or derived from the line's bytes when missing.
    pub id: String,
    /// `timestamp` from the line, or the time of ingestion.
    pub ts: DateTime<Utc>,
    pub tenant_id: Option<String>,
    pub body: Body,
    /// Fields the type does not define, kept as they came.
    pub extra: Map<String, Value>,
    /// Fields moved to object storage by the split transform.
    pub stored: Vec<StoredField>,
    /// Whether a string of the event (key or value) may hold U+0000, which PostgreSQL refuses
    /// in text: false when decoding saw no `\u0000` escape, so that the postgres sink need
    /// not search its texts for one. (No transform adds one: rule names are plain ASCII.)
    pub may_hold_nul: bool,
    /// Where classify sends it (set of stores).
    pub routes: Routes,
    /// Size of the input line in bytes (for byte-bounded queues and throughput).
    pub size: usize,
}

impl Event {
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    pub fn eval_id(&self) -> Option<&str> {
        self.body.eval_id()
    }

    /// The top-level string field called `name`, typed or extra.
    pub fn string_field(&self, name: &str) -> Option<&str> {
        self.body
            .string_field(name)
            .or_else(|| self.extra.get(name).and_then(Value::as_str))
    }

    /// The stored-field record for `field`, when split moved it out.
    pub fn stored(&self, field: &str) -> Option<&StoredField> {
        self.stored.iter().find(|s| s.field == field)
    }

    /// Calls `f` on every string the event carries: typed fields, nested values of objects and
    /// arrays, and extra fields. Keys, ids, the type and the timestamp are not visited.
    pub fn for_each_string_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        fn visit_value(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
            match value {
                Value::String(s) => f(s),
                Value::Array(items) => items.iter_mut().for_each(|v| visit_value(v, f)),
                Value::Object(map) => map.values_mut().for_each(|v| visit_value(v, f)),
                _ => {}
            }
        }
        fn visit_map(map: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
            map.values_mut().for_each(|v| visit_value(v, f));
        }
        match &mut self.body {
            Body::EvaluationQueued {
                code,
                language,
                engine,
                metadata,
                ..
            } => {
                f(code);
                f(language);
                f(engine);
                visit_map(metadata, f);
            }
            Body::EvaluationStarted { executor_id, .. } => f(executor_id),
            Body::EvaluationCompleted { output, .. } => f(output),
            Body::EvaluationFailed {
                error, traceback, ..
            } => {
                f(error);
                f(traceback);
            }
            Body::ExecutorHealth {
                status, metrics, ..
            } => {
                f(status);
                visit_map(metrics, f);
            }
            Body::QueueMetrics { .. } => {}
            Body::ContainerCreated { image, limits, .. } => {
                f(image);
                visit_map(limits, f);
            }
            Body::ResourceViolation {
                violation_type,
                details,
                ..
            } => {
                f(violation_type);
                visit_map(details, f);
            }
        }
        visit_map(&mut self.extra, f);
    }

    /// The whole event as one JSON object (as [`crate::json::write_event`] writes it).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut text = Vec::new();
        crate::json::write_event(&mut text, self, crate::json::Target::Json);
        serde_json::from_slice(&text).expect("events are written as JSON objects")
    }
}

/// RFC 3339 in UTC with the precision the value needs.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The stores an event is sent to (classify's output): a small bit set over [`Route`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Routes(u16);

/// One store of SPEC.md's storage table. The names are those of `transforms/classification.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// PostgreSQL `events`, every event.
    Events,
    /// PostgreSQL `evaluations`, the lifecycle projection.
    Evaluations,
    /// PostgreSQL `security_audit`.
    SecurityAudit,
    /// PostgreSQL `security_events`.
    SecurityEvents,
    /// Redis executor health hash.
    ExecutorHealth,
    /// Redis queue metrics hash and stream.
    QueueMetrics,
    /// Redis evaluation cache (written through after PostgreSQL).
    EvalCache,
    /// Parquet files for analytics.
    Analytics,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Events,
        Route::Evaluations,
        Route::SecurityAudit,
        Route::SecurityEvents,
        Route::ExecutorHealth,
        Route::QueueMetrics,
        Route::EvalCache,
        Route::Analytics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Events => "events",
            Route::Evaluations => "evaluations",
            Route::SecurityAudit => "security_audit",
            Route::SecurityEvents => "security_events",
            Route::ExecutorHealth => "executor_health",
            Route::QueueMetrics => "queue_metrics",
            Route::EvalCache => "eval_cache",
            Route::Analytics => "analytics",
        }
    }

    pub fn parse(name: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl Routes {
    pub const NONE: Routes = Routes(0);

    pub fn with(self, route: Route) -> Routes {
        Routes(self.0 | 1 << route as u16)
    }

    pub fn contains(self, route: Route) -> bool {
        self.0 & (1 << route as u16) != 0
    }

    pub fn intersects(self, other: Routes) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Route> {
        Route::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Route> for Routes {
    fn from_iter<I: IntoIterator<Item = Route>>(iter: I) -> Self {
        iter.into_iter().fold(Routes::NONE, Routes::with)
    }
}

/// A group of events moving through the pipeline together, with the acknowledgement of the
/// source that read them. Shared between sinks as `Arc<Batch>`: fan-out copies no event.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<Event>,
    pub ack: Ack,
}

impl Batch {
    pub fn new(events: Vec<Event>, ack: Ack) -> Batch {
        Batch { events, ack }
    }

    /// Input bytes of the events (for byte-bounded queues and throughput).
    pub fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.size).sum()
    }
}

/// How a batch ended, worst status wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Every sink that got the batch made it durable (or stored its rejects in the dead letters).
    Delivered,
    /// Some part could not be stored anywhere (the process is stopping without draining).
    Failed,
}

/// The acknowledgement of one source batch. Clones travel with the batch to every sink (and the
/// dead letter queue); when the last clone is dropped, the source's [`AckReceiver`] resolves with
/// the worst status any holder reported. Dropping a clone without calling [`Ack::fail`] means
/// "durable".
#[derive(Debug, Clone)]
pub struct Ack(Arc<AckInner>);

#[derive(Debug)]
struct AckInner {
    failed: AtomicBool,
    notify: Mutex<Option<oneshot::Sender<AckStatus>>>,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let status = if self.failed.load(Ordering::Acquire) {
            AckStatus::Failed
        } else {
            AckStatus::Delivered
        };
        if let Some(tx) = self.notify.lock().ok().and_then(|mut n| n.take()) {
            let _ = tx.send(status);
        }
    }
}

/// Resolves when every holder of the batch's [`Ack`] is done with it.
pub type AckReceiver = oneshot::Receiver<AckStatus>;

impl Ack {
    pub fn new() -> (Ack, AckReceiver) {
        let (tx, rx) = oneshot::channel();
        let inner = AckInner {
            failed: AtomicBool::new(false),
            notify: Mutex::new(Some(tx)),
        };
        (Ack(Arc::new(inner)), rx)
    }

    /// An acknowledgement nobody waits for (stdin, tests).
    pub fn none() -> Ack {
        Ack::new().0
    }

    /// Marks the batch as not stored; the source will not checkpoint past it.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_resolves_when_the_last_clone_drops() {
        let (ack, mut rx) = Ack::new();
        let second = ack.clone();
        drop(ack);
        assert!(rx.try_recv().is_err(), "still held by a second sink");
        drop(second);
        assert_eq!(rx.try_recv().unwrap(), AckStatus::Delivered);
    }

    #[test]
    fn ack_worst_status_wins() {
        let (ack, mut rx) = Ack::new();
        let other = ack.clone();
        other.fail();
        drop(other);
        drop(ack);
        assert_eq!(rx.try_recv().unwrap(), AckStatus::Failed);
    }

    #[test]
    fn routes_are_a_set() {
        let routes: Routes = [Route::Events, Route::Analytics].into_iter().collect();
        assert!(routes.contains(Route::Events));
        assert!(!routes.contains(Route::EvalCache));
        assert_eq!(routes.iter().count(), 2);
        for route in Route::ALL {
            assert_eq!(Route::parse(route.as_str()), Some(route));
        }
    }
}

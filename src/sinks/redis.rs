//! The `redis` sink: accepts EXECUTOR_HEALTH and QUEUE_METRICS events (by their routes) and the
//! `evaluations` rows that a postgres sink committed; acknowledges a batch once Redis has
//! replied to every command of its pipeline (one round trip per batch).
//!
//! Keys, with the default `key_prefix` `evalsink:` (SPEC.md, "Redis"):
//! - `evalsink:executor:{executor_id}` — hash of the latest EXECUTOR_HEALTH: `status`, `metrics`
//!   (JSON text), `ts` (RFC 3339), and `ts_us` (epoch microseconds) and `event_id`, which order
//!   the writes. TTL `health_ttl_secs`.
//! - `evalsink:queue` — hash of the latest QUEUE_METRICS: `queue_length`, `processing_count`,
//!   `ts`, `ts_us`, `event_id`. TTL `health_ttl_secs`.
//! - `evalsink:queue:history` — stream of the QUEUE_METRICS events, capped near
//!   `queue_history_max_len` (XADD MAXLEN ~). An entry's ID is the event's time (`{ms}-{seq}`),
//!   so XRANGE by time works, and its fields are `event_id`, `queue_length`,
//!   `processing_count`, `ts`.
//! - `evalsink:eval:{eval_id}` — the write-through cache of the `evaluations` row (every column
//!   but the large texts `code`, `output`, `error`, `traceback` and `metadata`), written after
//!   the PostgreSQL commit it mirrors. TTL `cache_ttl_secs`.
//!
//! "Latest" is the greatest event `timestamp` (ties: the greater `event_id`), decided inside
//! Redis by a Lua script, so a replay of old logs or a late event never overwrites newer state.
//! Redis streams only append: an event older than the history's newest entry cannot be put in
//! its place, so it is left out of the history (counted and logged at the end), and an event
//! already there (same time, same `event_id`) is not added again. Events are sorted by time
//! within each write, so only events that arrive later than a whole write are affected.
//!
//! An ACL user needs: `~{prefix}* +ping +select +evalsha +script|load +hset +hdel +hmget
//! +expire +xadd +xrange +xrevrange`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Value};
use serde::Deserialize;
use tokio::time::sleep;

use super::dead_letter::{DeadLetter, Origin, Reason};
use super::evaluation::{CacheReceiver, CacheSender, EvalRow};
use super::{BatchConfig, Sink, SinkContext, SinkError, Written};
use crate::event::{Ack, AckStatus, Batch, Body, Event, Route, format_ts};

/// Config of the `redis` sink.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://...` for TLS (default
    /// `redis://127.0.0.1:6379`). The password is never printed or logged.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Prefix of every key (default `evalsink:`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// TTL of the executor health hashes and of the queue hash, in seconds (default 120).
    #[serde(default = "default_health_ttl_secs")]
    pub health_ttl_secs: u64,
    /// TTL of the evaluation cache hashes, in seconds (default 86400, a day).
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Length the queue history stream is trimmed to, approximately (default 10000).
    #[serde(default = "default_queue_history_max_len")]
    pub queue_history_max_len: u64,
    /// TLS of `rediss://` endpoints.
    #[serde(default)]
    pub tls: RedisTlsConfig,
    /// Events in one pipeline and the longest wait to fill it (default 5000 events, 0.1 s).
    #[serde(default = "default_batch", deserialize_with = "batch")]
    pub batch: BatchConfig,
}

/// `tls` of the `redis` sink.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM file of the certificate authorities to trust, instead of the usual public roots
    /// (for a server whose certificate a private CA signed).
    pub ca_file: Option<PathBuf>,
}

fn default_endpoint() -> String {
    "redis://127.0.0.1:6379".into()
}

fn default_key_prefix() -> String {
    "evalsink:".into()
}

fn default_health_ttl_secs() -> u64 {
    120
}

fn default_cache_ttl_secs() -> u64 {
    86_400
}

fn default_queue_history_max_len() -> u64 {
    10_000
}

fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 5_000,
        max_bytes: crate::sinks::DEFAULT_BATCH_MAX_BYTES,
        timeout_secs: 0.1,
    }
}

fn batch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BatchConfig, D::Error> {
    BatchConfig::or_defaults(d, default_batch())
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            endpoint: default_endpoint(),
            key_prefix: default_key_prefix(),
            health_ttl_secs: default_health_ttl_secs(),
            cache_ttl_secs: default_cache_ttl_secs(),
            queue_history_max_len: default_queue_history_max_len(),
            tls: RedisTlsConfig::default(),
            batch: default_batch(),
        }
    }
}

/// Debug without the password of the endpoint.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("key_prefix", &self.key_prefix)
            .field("health_ttl_secs", &self.health_ttl_secs)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("queue_history_max_len", &self.queue_history_max_len)
            .field("tls", &self.tls)
            .field("batch", &self.batch)
            .finish()
    }
}

impl RedisConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = redis::Client::open(self.endpoint.as_str()) {
            problems.push((
                "endpoint".into(),
                format!(
                    "{} is not a Redis URL ({}); write redis://[user:password@]host[:port][/db], or rediss://... for TLS",
                    redacted_url(&self.endpoint),
                    e.detail().unwrap_or(&e.to_string())
                ),
            ));
        }
        if self.tls.ca_file.is_some() && !self.endpoint.starts_with("rediss://") {
            problems.push((
                "tls.ca_file".into(),
                "is used only with TLS: write the endpoint as rediss://...".into(),
            ));
        }
        for (key, value) in [
            ("health_ttl_secs", self.health_ttl_secs),
            ("cache_ttl_secs", self.cache_ttl_secs),
            ("queue_history_max_len", self.queue_history_max_len),
        ] {
            if value == 0 {
                problems.push((key.into(), "must be at least 1".into()));
            }
        }
        problems.extend(self.batch.check());
        problems
    }
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let user_info = &authority[..at];
            // Without a scheme, or with a lone user-info, all of it may be the secret.
            let user = match user_info.split_once(':') {
                Some((user, _)) if !scheme.is_empty() => format!("{user}:***"),
                _ => "***".to_string(),
            };
            format!("{scheme}{user}{}{path}", &authority[at..])
        }
        None => url.to_string(),
    }
}

/// Why the sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    #[error(
        "{url} is not a usable Redis URL: {message}. Write redis://[user:password@]host[:port][/db], or rediss://... for TLS."
    )]
    Endpoint { url: String, message: String },
    #[error("cannot read tls.ca_file {}: {source}. Give the path of a PEM file of CA certificates.", .path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Redis at {url} refused evalsink: {message}. {hint}")]
    Refused {
        url: String,
        message: String,
        hint: &'static str,
    },
}

/// Keys of one sink, from its prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn executor(&self, executor_id: &str) -> String {
        format!("{}executor:{executor_id}", self.prefix)
    }

    fn queue(&self) -> String {
        format!("{}queue", self.prefix)
    }

    fn queue_history(&self) -> String {
        format!("{}queue:history", self.prefix)
    }

    fn eval(&self, eval_id: &str) -> String {
        format!("{}eval:{eval_id}", self.prefix)
    }
}

/// The script that keeps the latest state by event time (see the file for its arguments).
const LATEST_SCRIPT: &str = include_str!("redis_latest.lua");

/// Queue events in one script call, so that one call does not hold Redis for long.
const QUEUE_EVENTS_PER_CALL: usize = 1_000;

/// How long the start waits for Redis before going on without it (writes then wait).
const STARTUP_CHECK: Duration = Duration::from_secs(5);

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_FAILED_ATTEMPTS: u32 = 5;

/// A connection that reconnects by itself after I/O errors (the connection manager), and is
/// replaced after errors it does not recover from alone (refused credentials while Redis
/// restarts, for instance).
struct Connection {
    client: redis::Client,
    manager: ConnectionManager,
    /// The endpoint without its password, for messages.
    url: String,
}

impl Connection {
    fn open(config: &RedisConfig) -> Result<Connection, RedisSinkError> {
        let url = redacted_url(&config.endpoint);
        let invalid = |e: RedisError| RedisSinkError::Endpoint {
            url: url.clone(),
            message: e.detail().unwrap_or(&e.to_string()).to_string(),
        };
        let client = match &config.tls.ca_file {
            None => redis::Client::open(config.endpoint.as_str()).map_err(invalid)?,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| RedisSinkError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(config.endpoint.as_str(), certs).map_err(invalid)?
            }
        };
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(invalid)?;
        Ok(Connection {
            client,
            manager,
            url,
        })
    }

    /// A fresh connection manager (connects on first use).
    fn reset(&mut self) {
        if let Ok(manager) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config())
        {
            self.manager = manager;
        }
    }

    /// Runs `pipe` (made with `ignore_errors`) and returns every command's reply.
    async fn run(&mut self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<Value>>, SinkError> {
        match pipe.query_async(&mut self.manager).await {
            Ok(replies) => Ok(replies),
            Err(e) => Err(self.whole_error(&e)),
        }
    }

    /// The sink error for a failure of a whole pipeline (or of one command that makes the
    /// whole pipeline fail); replaces the connection when it cannot recover by itself.
    fn whole_error(&mut self, e: &RedisError) -> SinkError {
        let error = classify(e, &self.url);
        if matches!(error, SinkError::Unavailable(_)) && !e.is_io_error() {
            self.reset();
        }
        error
    }

    /// Loads the script and returns its SHA1.
    async fn load_script(&mut self) -> RedisResult<String> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(LATEST_SCRIPT)
            .query_async(&mut self.manager)
            .await
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2))
}

/// What an error of a whole write means: Redis unreachable or not serving (retried for as
/// long as it takes), or anything else (retried a few times, then dead letters).
fn classify(e: &RedisError, url: &str) -> SinkError {
    let code = e.code().unwrap_or("");
    let waiting = matches!(
        code,
        "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN" | "OOM"
    );
    if e.is_io_error() || waiting || e.kind() == redis::ErrorKind::AuthenticationFailed {
        SinkError::Unavailable(format!("Redis at {url} is unavailable: {e}"))
    } else if code == "NOPERM" {
        SinkError::Failed(format!(
            "the Redis user of {url} lacks a permission: {e}; grant it the commands listed in the redis sink's documentation on the keys of its key_prefix"
        ))
    } else {
        SinkError::Failed(format!("Redis at {url}: {e}"))
    }
}

/// Whether a command's error concerns only that command's key (its events are rejected),
/// rather than the server or the connection (the whole write is retried).
fn is_per_key(e: &RedisError) -> bool {
    !e.is_io_error()
        && matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                | redis::ErrorKind::Extension
        )
        && !matches!(
            e.code().unwrap_or(""),
            "NOSCRIPT" | "NOPERM" | "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "OOM"
        )
}

/// The `redis` sink for executor health and queue metrics (see the module documentation).
pub struct RedisSink {
    name: String,
    config: RedisConfig,
    keys: Keys,
    connection: Connection,
    /// SHA1 of the script, once Redis has loaded it.
    script: Option<String>,
    /// Queue metrics left out of the history stream because they arrived after a newer one.
    late: u64,
}

impl RedisSink {
    /// Prepares the sink and checks that Redis accepts it. Bad URLs, CA files and refused
    /// credentials are errors; an unreachable server is not (writes wait for it).
    pub async fn connect(name: &str, config: &RedisConfig) -> Result<RedisSink, RedisSinkError> {
        let mut connection = Connection::open(config)?;
        let url = connection.url.clone();
        let script = match tokio::time::timeout(STARTUP_CHECK, connection.load_script()).await {
            Ok(Ok(sha)) => Some(sha),
            Ok(Err(e)) if !e.is_io_error() => {
                let hint = match e.code() {
                    Some("NOPERM") => {
                        "Grant the user ~PREFIX* +ping +select +evalsha +script|load +hset +hdel +hmget +expire +xadd +xrange +xrevrange (see the redis sink's documentation)."
                    }
                    _ if e.kind() == redis::ErrorKind::AuthenticationFailed
                        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) =>
                    {
                        "Check the user and password in the endpoint (redis://user:password@host:port/db)."
                    }
                    _ => "Check the endpoint and the server's logs.",
                };
                return Err(RedisSinkError::Refused {
                    url,
                    message: e.to_string(),
                    hint,
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(sink = %name, "Redis at {url} is not reachable yet ({e}); writes wait until it is.");
                None
            }
            Err(_) => {
                tracing::warn!(sink = %name, "Redis at {url} did not answer within {STARTUP_CHECK:?}; writes wait until it does.");
                None
            }
        };
        Ok(RedisSink {
            name: name.to_string(),
            config: config.clone(),
            keys: Keys {
                prefix: config.key_prefix.clone(),
            },
            connection,
            script,
            late: 0,
        })
    }

    /// The write-through cache of this sink's Redis, on a connection of its own.
    pub fn eval_cache(&self) -> Result<EvalCache, RedisSinkError> {
        Ok(EvalCache {
            connection: Connection::open(&self.config)?,
            keys: self.keys.clone(),
            ttl_secs: self.config.cache_ttl_secs,
        })
    }

    async fn script(&mut self) -> Result<String, SinkError> {
        if let Some(sha) = &self.script {
            return Ok(sha.clone());
        }
        match self.connection.load_script().await {
            Ok(sha) => {
                self.script = Some(sha.clone());
                Ok(sha)
            }
            Err(e) => Err(self.connection.whole_error(&e)),
        }
    }

    fn reject(&self, event: &Event, ack: &Ack, message: String) -> DeadLetter {
        DeadLetter::from_event(
            Reason::Rejected,
            format!("sinks.{}: {message}", self.name),
            &self.name,
            event,
        )
        .with_ack(ack)
    }
}

/// The events of one script call, as (batch, event) indices.
type CallEvents = Vec<(usize, usize)>;

impl Sink for RedisSink {
    fn accepts(&self, event: &Event) -> bool {
        event.routes.contains(Route::ExecutorHealth) || event.routes.contains(Route::QueueMetrics)
    }

    async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
        let event = |&(b, i): &(usize, usize)| &batches[b].events[i];
        let mut executors: HashMap<&str, CallEvents> = HashMap::new();
        let mut queue: CallEvents = Vec::new();
        let mut rejected = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            for (i, e) in batch.events.iter().enumerate() {
                if !self.accepts(e) {
                    continue;
                }
                match &e.body {
                    Body::ExecutorHealth { executor_id, .. } => {
                        executors.entry(executor_id).or_default().push((b, i))
                    }
                    Body::QueueMetrics { .. } => queue.push((b, i)),
                    other => rejected.push(self.reject(
                        e,
                        &batch.ack,
                        format!(
                            "the redis sink stores EXECUTOR_HEALTH and QUEUE_METRICS events, not {}; check the routes in the classification rules",
                            other.event_type()
                        ),
                    )),
                }
            }
        }
        let accepted = executors.values().map(Vec::len).sum::<usize>() + queue.len();
        if accepted == 0 {
            return Ok(Written {
                events: 0,
                rejected,
            });
        }
        let sha = self.script().await?;

        // One pipeline: the script again (cheap when loaded, and there after a restart), then
        // one call per executor (only its newest event matters) and per chunk of queue events.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("SCRIPT").arg("LOAD").arg(LATEST_SCRIPT);
        let mut calls: Vec<CallEvents> = Vec::with_capacity(executors.len() + 1);
        let ttl = self.config.health_ttl_secs;
        for (executor_id, events) in executors {
            let newest = events
                .iter()
                .map(event)
                .max_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)))
                .expect("a group has events");
            let Body::ExecutorHealth {
                status, metrics, ..
            } = &newest.body
            else {
                unreachable!("grouped by body")
            };
            let metrics = serde_json::to_string(metrics).expect("a JSON map serializes");
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(self.keys.executor(executor_id))
                .arg(ttl)
                .arg(0)
                .arg(3)
                .arg(&["status", "metrics", "ts"]);
            push_event(cmd, newest);
            cmd.arg(status).arg(metrics).arg(format_ts(&newest.ts));
            calls.push(events);
        }
        queue.sort_by(|a, b| {
            let (a, b) = (event(a), event(b));
            (a.ts, &a.id).cmp(&(b.ts, &b.id))
        });
        for chunk in queue.chunks(QUEUE_EVENTS_PER_CALL) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&sha)
                .arg(2)
                .arg(self.keys.queue())
                .arg(self.keys.queue_history())
                .arg(ttl)
                .arg(self.config.queue_history_max_len)
                .arg(3)
                .arg(&["queue_length", "processing_count", "ts"]);
            for e in chunk.iter().map(event) {
                let Body::QueueMetrics {
                    queue_length,
                    processing_count,
                } = &e.body
                else {
                    unreachable!("grouped by body")
                };
                push_event(cmd, e);
                cmd.arg(queue_length)
                    .arg(processing_count)
                    .arg(format_ts(&e.ts));
            }
            calls.push(chunk.to_vec());
        }

        let replies = self.connection.run(&pipe).await?;
        let mut replies = replies.into_iter();
        if let Some(Err(e)) = replies.next() {
            return Err(self.connection.whole_error(&e));
        }
        let mut stored = accepted;
        let mut late = 0;
        for (reply, events) in replies.zip(&calls) {
            match reply {
                Ok(value) => {
                    let counts: Vec<i64> = redis::from_redis_value(value).map_err(|e| {
                        SinkError::Failed(format!("unexpected reply from the script: {e}"))
                    })?;
                    late += counts.get(3).copied().unwrap_or(0) as u64;
                }
                Err(e) if is_per_key(&e) => {
                    stored -= events.len();
                    for &(b, i) in events {
                        rejected.push(self.reject(
                            &batches[b].events[i],
                            &batches[b].ack,
                            format!("Redis refused the write: {e}"),
                        ));
                    }
                }
                Err(e) => return Err(self.connection.whole_error(&e)),
            }
        }
        if late > 0 {
            tracing::debug!(sink = %self.name, "{late} queue metrics were older than the newest entry of the history stream and were left out of it.");
            self.late += late;
        }
        Ok(Written {
            events: stored,
            rejected,
        })
    }

    async fn flush(&mut self, last: bool) -> Result<(), SinkError> {
        if last && self.late > 0 {
            tracing::info!(sink = %self.name, "{} queue metrics arrived after newer ones and were left out of {} (a stream only appends); the queue hash and the other sinks have them.", self.late, self.keys.queue_history());
        }
        Ok(())
    }
}

/// The arguments of one event for the script: `ts_us`, `event_id`, `ts_ms`.
fn push_event(cmd: &mut redis::Pipeline, event: &Event) {
    cmd.arg(event.ts.timestamp_micros())
        .arg(&event.id)
        .arg(event.ts.timestamp_millis());
}

/// A channel for the rows that a postgres sink commits, to the eval cache of a redis sink.
// Wiring: the topology gives the sender to the postgres sink and the receiver to the
// `EvalCache` of the redis sink (see `topology::run_graph`).
pub fn cache_channel() -> (CacheSender, CacheReceiver) {
    tokio::sync::mpsc::channel(16)
}

/// The fields of `{prefix}eval:{eval_id}`, in order: the `evaluations` row without its large
/// or free-form columns (`code`, `output`, `error`, `traceback`, `metadata`).
pub const CACHED_FIELDS: [&str; 16] = [
    "eval_id",
    "tenant_id",
    "status",
    "language",
    "engine",
    "timeout",
    "executor_id",
    "queued_at",
    "started_at",
    "ended_at",
    "success",
    "output_size",
    "output_sha256",
    "output_ref",
    "output_preview",
    "updated_at",
];

/// The values of [`CACHED_FIELDS`] for `row` (None: the column is NULL and the field absent).
pub fn cached_values(row: &EvalRow) -> [Option<String>; 16] {
    let ts = |t: &Option<chrono::DateTime<chrono::Utc>>| t.as_ref().map(format_ts);
    [
        Some(row.eval_id.clone()),
        row.tenant_id.clone(),
        Some(row.status.clone()),
        row.language.clone(),
        row.engine.clone(),
        row.timeout.map(|t| t.to_string()),
        row.executor_id.clone(),
        ts(&row.queued_at),
        ts(&row.started_at),
        ts(&row.ended_at),
        row.success.map(|s| s.to_string()),
        row.output_size.map(|s| s.to_string()),
        row.output_sha256.clone(),
        row.output_ref.clone(),
        row.output_preview.clone(),
        ts(&row.updated_at),
    ]
}

/// The write-through cache `{prefix}eval:{eval_id}`: each committed row, in commit order, as a
/// hash that mirrors it exactly (fields of NULL columns are removed), with a TTL.
pub struct EvalCache {
    connection: Connection,
    keys: Keys,
    ttl_secs: u64,
}

/// A row that Redis refused, with the reason.
#[derive(Debug)]
pub struct RefusedRow {
    pub index: usize,
    pub message: String,
}

impl EvalCache {
    /// Writes `rows` in order in one pipeline; returns the rows Redis refused (a key of another
    /// type, for instance). Returns when Redis has replied.
    pub async fn write(&mut self, rows: &[EvalRow]) -> Result<Vec<RefusedRow>, SinkError> {
        self.write_rows(&rows.iter().collect::<Vec<_>>()).await
    }

    async fn write_rows(&mut self, rows: &[&EvalRow]) -> Result<Vec<RefusedRow>, SinkError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut owners = Vec::with_capacity(rows.len() * 3);
        for (index, row) in rows.iter().enumerate() {
            let key = self.keys.eval(&row.eval_id);
            let values = cached_values(row);
            let set = pipe.cmd("HSET").arg(&key);
            let mut absent = Vec::new();
            for (field, value) in CACHED_FIELDS.iter().zip(&values) {
                match value {
                    Some(v) => {
                        set.arg(field).arg(v);
                    }
                    None => absent.push(*field),
                }
            }
            owners.push(index);
            if !absent.is_empty() {
                pipe.cmd("HDEL").arg(&key).arg(&absent);
                owners.push(index);
            }
            pipe.cmd("EXPIRE").arg(&key).arg(self.ttl_secs);
            owners.push(index);
        }
        let replies = self.connection.run(&pipe).await?;
        let mut refused: Vec<RefusedRow> = Vec::new();
        for (reply, &index) in replies.into_iter().zip(&owners) {
            match reply {
                Ok(_) => {}
                Err(e) if is_per_key(&e) => {
                    if refused.last().is_none_or(|r| r.index != index) {
                        refused.push(RefusedRow {
                            index,
                            message: format!("Redis refused the write: {e}"),
                        });
                    }
                }
                Err(e) => return Err(self.connection.whole_error(&e)),
            }
        }
        Ok(refused)
    }

    /// Writes every update received, in order, until the channel closes (every postgres sink
    /// has stopped). An update's acknowledgements are released after Redis replied; rows that
    /// cannot be written go to the dead letters. `ctx.batch.max_events` rows at most per
    /// pipeline.
    pub async fn run(mut self, mut updates: CacheReceiver, ctx: SinkContext) {
        let counters = ctx.stats.component(&format!("{}.cache", ctx.name));
        while let Some(first) = updates.recv().await {
            let mut rows = first.rows.len();
            let mut pending = vec![first];
            while rows < ctx.batch.max_events {
                match updates.try_recv() {
                    Ok(update) => {
                        rows += update.rows.len();
                        pending.push(update);
                    }
                    Err(_) => break,
                }
            }
            // Held until the rows are written (or dead letters).
            let acks: Vec<Ack> = pending.iter_mut().flat_map(|u| u.acks.drain(..)).collect();
            let all: Vec<&EvalRow> = pending.iter().flat_map(|u| &u.rows).collect();
            let mut backoff = FIRST_BACKOFF;
            let mut failures = 0;
            let letters = loop {
                match self.write_rows(&all).await {
                    Ok(refused) => {
                        counters
                            .events
                            .fetch_add((all.len() - refused.len()) as u64, Relaxed);
                        counters.batches.fetch_add(1, Relaxed);
                        break refused
                            .into_iter()
                            .map(|r| (r.index, Reason::Rejected, r.message))
                            .collect::<Vec<_>>();
                    }
                    Err(SinkError::Unavailable(message)) => {
                        tracing::warn!(sink = %ctx.name, "Cannot write the evaluation cache: {message}. Retrying in {backoff:?}; the pipeline waits.");
                    }
                    Err(SinkError::Failed(message)) => {
                        failures += 1;
                        if failures >= MAX_FAILED_ATTEMPTS {
                            tracing::error!(sink = %ctx.name, "Giving up on writing {} rows to the evaluation cache after {failures} attempts: {message}. They go to the dead letters.", all.len());
                            break (0..all.len())
                                .map(|i| (i, Reason::Undeliverable, message.clone()))
                                .collect();
                        }
                        tracing::warn!(sink = %ctx.name, "Writing the evaluation cache failed: {message}. Retrying in {backoff:?}.");
                    }
                }
                counters.retries.fetch_add(1, Relaxed);
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            };
            if !letters.is_empty() {
                dead_letter_rows(&all, letters, &acks, &ctx).await;
            }
            // Dropping the acknowledgements releases them.
            drop(acks);
        }
    }
}

/// Sends rows to the dead letters and releases `acks` once the letters are on disk (failing
/// them if the letters could not be written).
async fn dead_letter_rows(
    rows: &[&EvalRow],
    letters: Vec<(usize, Reason, String)>,
    acks: &[Ack],
    ctx: &SinkContext,
) {
    let (joint, done) = Ack::new();
    for (index, reason, message) in letters {
        let row = rows[index];
        let mut record = serde_json::Map::new();
        for (field, value) in CACHED_FIELDS.iter().zip(cached_values(row)) {
            if let Some(v) = value {
                record.insert(field.to_string(), v.into());
            }
        }
        let letter = DeadLetter {
            reason,
            message: format!("sinks.{} (evaluation cache): {message}", ctx.name),
            origin: Origin::new(&ctx.name),
            raw: serde_json::Value::Object(record).to_string(),
            raw_bytes: None,
            event_id: None,
            ack: Some(joint.clone()),
        };
        ctx.dead_letters.send(letter).await;
    }
    drop(joint);
    if matches!(done.await, Ok(AckStatus::Failed)) {
        acks.iter().for_each(Ack::fail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let cases = [
            (
                "redis://app:s3cret@127.0.0.1:6391/2",
                "redis://app:***@127.0.0.1:6391/2",
            ),
            ("rediss://:pa:ss@host/0", "rediss://:***@host/0"),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://u:p@ss@host/1?x=1", "redis://u:***@host/1?x=1"),
            ("junk user:s3cret@host", "***@host"),
        ];
        for (url, want) in cases {
            assert_eq!(redacted_url(url), want, "{url}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let config = RedisConfig {
            endpoint: "redis://app:s3cret@h/0".into(),
            ..RedisConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("app:***@h"), "{text}");
    }

    #[test]
    fn check_reports_bad_values_without_the_password() {
        let config = RedisConfig {
            endpoint: "http://app:s3cret@h/0".into(),
            health_ttl_secs: 0,
            tls: RedisTlsConfig {
                ca_file: Some("ca.pem".into()),
            },
            ..RedisConfig::default()
        };
        let problems = config.check();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["endpoint", "tls.ca_file", "health_ttl_secs"]);
        assert!(problems.iter().all(|(_, m)| !m.contains("s3cret")));
        assert!(RedisConfig::default().check().is_empty());
        let tls = RedisConfig {
            endpoint: "rediss://h:6380".into(),
            ..RedisConfig::default()
        };
        assert!(tls.check().is_empty(), "{:?}", tls.check());
    }

    #[test]
    fn cached_values_follow_the_row() {
        let row = EvalRow {
            eval_id: "e1".into(),
            status: "completed".into(),
            language: Some("python".into()),
            success: Some(true),
            output_size: Some(12),
            timeout: Some(2.5),
            code: Some("print(1)".into()),
            ..EvalRow::default()
        };
        let values = cached_values(&row);
        let get =
            |name: &str| values[CACHED_FIELDS.iter().position(|f| *f == name).unwrap()].clone();
        assert_eq!(get("status").as_deref(), Some("completed"));
        assert_eq!(get("success").as_deref(), Some("true"));
        assert_eq!(get("output_size").as_deref(), Some("12"));
        assert_eq!(get("timeout").as_deref(), Some("2.5"));
        assert_eq!(get("executor_id"), None);
        assert!(!CACHED_FIELDS.contains(&"code"));
    }
}

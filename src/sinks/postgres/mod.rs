//! The `postgres` sink: the tables of SPEC.md ("PostgreSQL") — `events` (append-only, unique
//! `event_id`), `evaluations` (the order-independent merge of lifecycle events, see [`merge`]),
//! `security_audit` and `security_events`. A write is acknowledged once every transaction it
//! made has committed; the rows of `evaluations` it committed then go to the Redis cache.
//!
//! A write is set-based (see [`tables`]): one statement over column arrays per table, `events`
//! and the security tables first; then its lifecycle events go to the lanes of `evaluations`
//! (see [`lanes`]), which merge those of several writes and read the long texts (code, output)
//! of the events stored just before from their rows instead of having them sent twice. Several
//! writes are in the server at once, each in a task of its own. Events the server refuses for
//! their data are found by bisection and go to the dead letters with the server's error; the
//! rest are stored. A lost connection or a server restart is retried with backoff while the
//! pipeline waits.

mod lanes;
pub mod merge;
pub mod rows;
mod tables;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Deserialize;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use super::dead_letter::{DeadLetter, Reason};
use super::evaluation::{CacheSender, CacheUpdate};
use super::redis::redacted_url;
use super::{BatchConfig, Retry, Sink, SinkContext, SinkError, Written, dead_letter_all};
use crate::event::{Ack, Batch, Event, Route, Routes};
use lanes::{LANES, lane_of};
use rows::EventColumns;
use tables::{
    EventsWritten, Failure, Replaying, SecurityTable, has_code, read_cache_rows, write_events,
    write_security,
};

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Config of the `postgres` sink.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A PostgreSQL URL, `postgres://user:password@host:port/database?sslmode=require`
    /// (default `postgres://localhost/evalsink`). The database is created when it is missing
    /// and the user may. The password is never printed or logged.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Apply the migrations in `migrations/` at start (default true; `--no-migrate` turns it
    /// off).
    #[serde(default = "default_true")]
    pub migrate: bool,
    /// Writes in flight at once, each in transactions of its own, and the connections they
    /// share (default 4); each lane of `evaluations` has a connection of its own besides.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Events in one write, its input bytes, and the longest wait to fill it (default 1000
    /// events, 32 MiB, 1 s).
    #[serde(default = "default_batch", deserialize_with = "batch")]
    pub batch: BatchConfig,
}

fn default_endpoint() -> String {
    "postgres://localhost/evalsink".into()
}

fn default_true() -> bool {
    true
}

fn default_pool_size() -> u32 {
    4
}

fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 1000,
        max_bytes: crate::sinks::DEFAULT_BATCH_MAX_BYTES,
        timeout_secs: 1.0,
    }
}

fn batch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BatchConfig, D::Error> {
    BatchConfig::or_defaults(d, default_batch())
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            endpoint: default_endpoint(),
            migrate: true,
            pool_size: default_pool_size(),
            batch: default_batch(),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("migrate", &self.migrate)
            .field("pool_size", &self.pool_size)
            .field("batch", &self.batch)
            .finish()
    }
}

impl PostgresConfig {
    /// Checks that need no I/O; returns (key, message) pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = self.batch.check();
        let scheme_ok = ["postgres://", "postgresql://"]
            .iter()
            .any(|s| self.endpoint.starts_with(s));
        if let Err(e) = PgConnectOptions::from_str(&self.endpoint)
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if scheme_ok {
                    Ok(o)
                } else {
                    Err("not postgres://".into())
                }
            })
        {
            problems.push((
                "endpoint".into(),
                format!(
                    "{} is not a PostgreSQL URL ({e}); write postgres://[user[:password]@]host[:port]/database",
                    redacted_url(&self.endpoint)
                ),
            ));
        }
        if !(1..=64).contains(&self.pool_size) {
            problems.push(("pool_size".into(), "must be between 1 and 64".into()));
        }
        problems
    }
}

/// Why the sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    #[error("{url} is not a usable PostgreSQL URL: {message}")]
    Endpoint { url: String, message: String },
    #[error(
        "cannot connect to PostgreSQL at {url}: {message}. Start the server, or fix the endpoint (DATABASE_URL in the default config)."
    )]
    Connect { url: String, message: String },
    #[error(
        "the database of {url} does not exist and cannot be created: {message}. Create it (createdb), or give a user that may (CREATEDB)."
    )]
    CreateDatabase { url: String, message: String },
    #[error(
        "cannot apply the migrations to {url}: {message}. Fix the database, or start with --no-migrate if its schema is managed elsewhere."
    )]
    Migrate { url: String, message: String },
}

/// The options of every pool of the sink, for `size` connections.
fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        // The statements carry their rows in array parameters of megabytes: a custom plan
        // copies every array into the plan, each time. (A SET rather than a startup option,
        // which connection poolers such as PgBouncer refuse.)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(conn)
                    .await
                    .map(drop)
            })
        })
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        // A broken connection shows on use and the write is retried; no ping per acquire.
        .test_before_acquire(false)
}

/// Opens a pool on `endpoint`, creating the database when it is missing (and the user may).
pub async fn connect_pool(endpoint: &str, size: u32) -> Result<PgPool, PostgresSinkError> {
    let url = redacted_url(endpoint);
    let options = PgConnectOptions::from_str(endpoint)
        .map_err(|e| PostgresSinkError::Endpoint {
            url: url.clone(),
            message: e.to_string(),
        })?
        // Statements carry event data in their parameters only, but they are long: keep them
        // out of the logs.
        .disable_statement_logging();
    let open = || pool_options(size).connect_with(options.clone());
    match open().await {
        Ok(pool) => Ok(pool),
        Err(e) if has_code(&e, "3D000") => {
            tracing::info!("Creating the database of {url}.");
            match Postgres::create_database(endpoint).await {
                Ok(()) => {}
                // Another process made it meanwhile.
                Err(e) if has_code(&e, "42P04") => {}
                Err(e) => {
                    return Err(PostgresSinkError::CreateDatabase {
                        url,
                        message: e.to_string(),
                    });
                }
            }
            open().await.map_err(|e| PostgresSinkError::Connect {
                url,
                message: e.to_string(),
            })
        }
        Err(e) => Err(PostgresSinkError::Connect {
            url,
            message: e.to_string(),
        }),
    }
}

/// Applies the migrations (`evalsink migrate`, and at start unless `--no-migrate`).
pub async fn migrate(pool: &PgPool, endpoint: &str) -> Result<(), PostgresSinkError> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| PostgresSinkError::Migrate {
            url: redacted_url(endpoint),
            message: e.to_string(),
        })
}

/// The tables a write goes to, by route.
const TABLE_ROUTES: [Route; 4] = [
    Route::Events,
    Route::Evaluations,
    Route::SecurityAudit,
    Route::SecurityEvents,
];

/// The sink. Each write is handed to a task of its own and `write` returns as soon as it is
/// under way, so that several writes are in the server at once and the next one is prepared
/// meanwhile; at most `pool_size` store their `events` and security rows at once (then `write`
/// waits: backpressure). Then a write hands its lifecycle events to the lanes of
/// `evaluations` (see [`lanes`]). A write's task holds its batches, and so their
/// acknowledgements, until every row is committed.
pub struct PostgresSink {
    writer: Arc<Writer>,
    in_flight: JoinSet<()>,
    permits: Arc<Semaphore>,
    /// The lanes' queues; dropped by the last flush, which ends the lanes (a write after it
    /// starts them again).
    lanes: Option<Vec<mpsc::Sender<lanes::Work>>>,
    lane_tasks: JoinSet<()>,
    window: lanes::Window,
}

/// Input bytes of the writes a lane of `evaluations` merges at most, beside
/// `batch.timeout_secs` (see [`lanes::Window`]).
const LANE_WINDOW_BYTES: usize = 64 << 20;

/// What the writes of one sink share.
struct Writer {
    /// The connections of the writes' `events` and security statements.
    pool: PgPool,
    /// The connections of the lanes of `evaluations` and of the cache's reads. Apart from
    /// `pool`, because a pool hands out its connections in turn: with one pool, all six server
    /// processes took a share of the `events` inserts, and each maps in every page of shared
    /// buffers it touches (an `events`-only load cost the server 4–9% more CPU than with four,
    /// and 12–17% more page faults in all).
    lanes_pool: PgPool,
    routes: Routes,
    /// Where committed `evaluations` rows go (the Redis cache), when a redis sink exists.
    cache: Option<CacheSender>,
    /// Whether `events`, `security_audit` and `security_events` are meeting stored rows.
    events_replaying: Replaying,
    audit_replaying: Replaying,
    violations_replaying: Replaying,
    ctx: SinkContext,
}

impl PostgresSink {
    /// Connects (creating the database if needed) and applies the migrations unless
    /// `config.migrate` is false.
    pub async fn connect(
        config: &PostgresConfig,
        cache: Option<CacheSender>,
        ctx: SinkContext,
    ) -> Result<PostgresSink, PostgresSinkError> {
        let pool = connect_pool(&config.endpoint, config.pool_size).await?;
        if config.migrate {
            migrate(&pool, &config.endpoint).await?;
        }
        // Connects on first use: a pipeline without lifecycle events never opens it.
        let lanes_pool =
            pool_options(LANES as u32).connect_lazy_with((*pool.connect_options()).clone());
        let writer = Arc::new(Writer {
            pool,
            lanes_pool,
            routes: TABLE_ROUTES.into_iter().collect(),
            cache,
            events_replaying: Replaying::default(),
            audit_replaying: Replaying::default(),
            violations_replaying: Replaying::default(),
            ctx,
        });
        let window = lanes::Window {
            max_bytes: LANE_WINDOW_BYTES,
            max_wait: Duration::from_secs_f64(config.batch.timeout_secs),
        };
        Ok(PostgresSink {
            writer,
            in_flight: JoinSet::new(),
            permits: Arc::new(Semaphore::new(config.pool_size as usize)),
            lanes: None,
            lane_tasks: JoinSet::new(),
            window,
        })
    }
}

impl Sink for PostgresSink {
    fn accepts(&self, event: &Event) -> bool {
        self.writer.accepts(event)
    }

    async fn write(&mut self, batches: &[Arc<Batch>]) -> Result<Written, SinkError> {
        let permit = self.permits.clone().acquire_owned().await.ok();
        let lanes = self
            .lanes
            .get_or_insert_with(|| lanes::spawn(&self.writer, self.window, &mut self.lane_tasks))
            .clone();
        let writer = self.writer.clone();
        let batches = batches.to_vec();
        self.in_flight.spawn(async move {
            writer.store(&batches, lanes, permit).await;
        });
        while let Some(finished) = self.in_flight.try_join_next() {
            finished.expect("a postgres write does not panic");
        }
        // The task counts the events once they are stored.
        Ok(Written::default())
    }

    async fn flush(&mut self, last: bool) -> Result<(), SinkError> {
        if last {
            // The lanes store what they hold as soon as the writes in flight have handed them
            // theirs, and end.
            self.lanes = None;
            while let Some(finished) = self.in_flight.join_next().await {
                finished.expect("a postgres write does not panic");
            }
            while let Some(finished) = self.lane_tasks.join_next().await {
                finished.expect("a lane of evaluations does not panic");
            }
        }
        Ok(())
    }
}

/// The events of one write, flattened, with the batch each came from.
pub(super) struct Flat<'a> {
    /// Every event of the write, in order.
    pub(super) events: Vec<&'a Event>,
    /// The batch of each event.
    batch: Vec<usize>,
}

impl<'a> Flat<'a> {
    fn new(batches: &'a [Arc<Batch>]) -> Flat<'a> {
        let mut flat = Flat {
            events: Vec::new(),
            batch: Vec::new(),
        };
        for (b, batch) in batches.iter().enumerate() {
            for e in &batch.events {
                flat.events.push(e);
                flat.batch.push(b);
            }
        }
        flat
    }

    /// Positions of the events routed to `route`; with `unique`, the first of each event_id.
    fn routed(&self, route: Route, unique: bool) -> Vec<usize> {
        let mut seen = HashSet::with_capacity_and_hasher(
            if unique { self.events.len() } else { 0 },
            foldhash::fast::RandomState::default(),
        );
        (0..self.events.len())
            .filter(|&i| self.events[i].routes.contains(route))
            .filter(|&i| !unique || seen.insert(self.events[i].id.as_str()))
            .collect()
    }
}

/// The refused rows of each part of a write that is done (positions in the write and the
/// server's error); a part that failed is `None` and is tried again.
#[derive(Default)]
struct Progress {
    events: Option<EventsWritten>,
    audit: Option<Vec<(usize, String)>>,
    violations: Option<Vec<(usize, String)>>,
}

impl Writer {
    fn accepts(&self, event: &Event) -> bool {
        event.routes.intersects(self.routes)
    }

    /// Stores one write: its `events` and security rows (retrying failed parts with backoff)
    /// while it holds `permit`, then its lifecycle events through `lanes`; then counts it and
    /// sends its refused events to the dead letters.
    async fn store(
        &self,
        batches: &[Arc<Batch>],
        lanes: Vec<mpsc::Sender<lanes::Work>>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let flat = Flat::new(batches);
        let events = flat.routed(Route::Events, true);
        let audit = flat.routed(Route::SecurityAudit, true);
        let violations = flat.routed(Route::SecurityEvents, true);
        let rows = EventColumns::new(events.iter().map(|&i| flat.events[i]));
        let mut progress = Progress::default();
        let mut retry = Retry::new();
        loop {
            // Events first: the evaluations read the long texts of the events stored here.
            let outcome = futures_util::join!(
                once(&mut progress.events, || write_events(
                    &self.pool,
                    &self.events_replaying,
                    &events,
                    &rows
                )),
                once(&mut progress.audit, || write_security(
                    &self.pool,
                    &self.audit_replaying,
                    &flat,
                    &audit,
                    SecurityTable::Audit
                )),
                once(&mut progress.violations, || write_security(
                    &self.pool,
                    &self.violations_replaying,
                    &flat,
                    &violations,
                    SecurityTable::Events
                )),
            );
            let failure = [outcome.0, outcome.1, outcome.2]
                .into_iter()
                .find_map(Result::err);
            let Some(error) = failure else {
                break;
            };
            if !retry.again(&error, "write to PostgreSQL", &self.ctx).await {
                dead_letter_all(batches, |e| self.accepts(e), &error, &self.ctx).await;
                return;
            }
        }
        // Not needed while the lanes work.
        drop(rows);

        // Only rows this write stored: a row stored before may hold other texts (an earlier
        // run's redaction, or a reference where split moved a field out).
        let not_stored_here: Arc<HashSet<String>> = Arc::new(
            (progress.events.iter())
                .flat_map(|w| w.refused.iter().map(|(i, _)| i).chain(&w.skipped))
                .map(|&i| flat.events[i].id.clone())
                .collect(),
        );
        let mut positions = vec![Vec::new(); LANES];
        for i in flat.routed(Route::Evaluations, false) {
            if let Some(eval_id) = flat.events[i].eval_id() {
                positions[lane_of(eval_id)].push(i);
            }
        }
        let bytes = batches.iter().map(|b| b.bytes()).sum();
        let mut answers = Vec::new();
        for (lane, positions) in lanes.iter().zip(positions) {
            if positions.is_empty() {
                continue;
            }
            let (done, answer) = tokio::sync::oneshot::channel();
            let work = lanes::Work {
                batches: batches.to_vec(),
                positions,
                not_stored_here: not_stored_here.clone(),
                bytes,
                done,
            };
            // A closed lane answers below, as an error.
            let _ = lane.send(work).await;
            answers.push(answer);
        }
        // The lanes end once every sender is gone; the next write may start.
        drop(lanes);
        drop(permit);
        let mut evaluations = Vec::new();
        for answer in answers {
            let error = match answer.await {
                Ok(Ok(refused)) => {
                    evaluations.extend(refused);
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => SinkError::Failed("the lane of evaluations ended".into()),
            };
            dead_letter_all(batches, |e| self.accepts(e), &error, &self.ctx).await;
            return;
        }

        let tables = [
            ("events", progress.events.map(|w| w.refused)),
            ("evaluations", Some(evaluations)),
            ("security_audit", progress.audit),
            ("security_events", progress.violations),
        ];
        let mut refused_positions = HashSet::new();
        let mut letters = Vec::new();
        for (table, refused) in tables {
            for (i, message) in refused.unwrap_or_default() {
                refused_positions.insert(i);
                letters.push(
                    DeadLetter::from_event(
                        Reason::Rejected,
                        format!(
                            "sinks.{}: PostgreSQL refused the event in table {table}: {message}",
                            self.ctx.name
                        ),
                        &self.ctx.name,
                        flat.events[i],
                    )
                    .with_ack(&batches[flat.batch[i]].ack),
                );
            }
        }
        let stored = (0..flat.events.len())
            .filter(|i| self.accepts(flat.events[*i]) && !refused_positions.contains(i))
            .count();
        self.ctx
            .stats
            .component(&self.ctx.name)
            .events
            .fetch_add(stored as u64, Relaxed);
        self.ctx.dead_letters.send_all(letters).await;
    }

    /// Hands the committed rows of the evals that go to the cache to the redis sink, with the
    /// acknowledgements `acks` (released once the cache is written). `events` are the events
    /// the records' positions refer to.
    async fn send_to_cache(
        &self,
        acks: Vec<Ack>,
        events: &[&Event],
        records: &[merge::EvalRecord<'_>],
    ) -> Result<(), SinkError> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let eval_ids: Vec<&str> = records
            .iter()
            .filter(|r| {
                r.events
                    .iter()
                    .any(|&i| events[i].routes.contains(Route::EvalCache))
            })
            .map(|r| r.eval_id)
            .collect();
        if eval_ids.is_empty() {
            return Ok(());
        }
        let rows = read_cache_rows(&self.lanes_pool, &eval_ids)
            .await
            .map_err(|e| match Failure::from(e) {
                Failure::Sink(e) => e,
                Failure::Data(m) => SinkError::Failed(m),
            })?;
        // The cache writer stops only after every postgres sink; a closed channel means the
        // run is being torn down.
        let _ = cache.send(CacheUpdate { rows, acks }).await;
        Ok(())
    }
}

/// Runs a part of a write unless an earlier attempt finished it; records its result.
async fn once<T, F, Fut>(slot: &mut Option<T>, part: F) -> Result<(), SinkError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    if slot.is_none() {
        *slot = Some(part().await?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_password_is_not_shown() {
        let config = PostgresConfig {
            endpoint: "postgres://app:hunter2@db/evalsink".into(),
            ..PostgresConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let bad = PostgresConfig {
            endpoint: "mysql://app:hunter2@db/x".into(),
            ..PostgresConfig::default()
        };
        let problems = bad.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!problems[0].1.contains("hunter2"), "{problems:?}");
    }
}

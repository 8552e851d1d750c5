//! The statements of a write, one table at a time, and what their errors mean: each table by
//! one statement over column arrays; rows the server refuses for their data are found by
//! bisection.

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::ops::Range;
use std::sync::LazyLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Arguments, Row};

use super::Flat;
use super::merge::{self, EvalColumns, UPSERT};
use super::rows::{EVENTS_INSERT, EventColumns, event_text, json_text, pg_text, unnest_rows};
use crate::event::{Body, Event};
use crate::sinks::SinkError;
use crate::sinks::evaluation::EvalRow;

/// Whether `e` is the server's error with SQLSTATE `code`.
pub(super) fn has_code(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(code))
}

/// How one statement or transaction failed.
pub(super) enum Failure {
    /// The server refused the data of the rows (a data exception, a constraint, a limit): the
    /// rows are isolated by bisection and the refused ones go to the dead letters.
    Data(String),
    /// The server is unreachable or the write failed otherwise: the write is tried again.
    Sink(SinkError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        match &e {
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                let message = match (d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
                    .and_then(|p| p.detail())
                {
                    Some(detail) => format!("{} ({detail}; SQLSTATE {code})", d.message()),
                    None => format!("{} (SQLSTATE {code})", d.message()),
                };
                match &code[..code.len().min(2)] {
                    // data exception, integrity constraint, program limit (e.g. an index row
                    // too large)
                    "22" | "23" | "54" => Failure::Data(message),
                    // connection, resources, admin shutdown / cannot connect now, serialization
                    // and deadlock, lock not available
                    "08" | "53" | "57" | "40" | "55" => {
                        Failure::Sink(SinkError::Unavailable(message))
                    }
                    _ => Failure::Sink(SinkError::Failed(message)),
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => Failure::Sink(SinkError::Unavailable(e.to_string())),
            _ => Failure::Sink(SinkError::Failed(e.to_string())),
        }
    }
}

/// A statement's parameters that sqlx cannot encode (a value too large for the protocol).
fn encoding(e: BoxDynError) -> Failure {
    Failure::Sink(SinkError::Failed(format!(
        "cannot encode the rows for PostgreSQL: {e}"
    )))
}

/// What [`bisect`] found: the refused rows with the server's error, and what `op` returned for
/// each range it stored.
struct Bisected<T> {
    refused: Vec<(usize, String)>,
    stored: Vec<T>,
}

/// Runs `op` on `0..len`; when the server refuses the data, splits the range in halves and
/// tries again, down to single rows.
async fn bisect<T, F, Fut>(len: usize, mut op: F) -> Result<Bisected<T>, SinkError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut refused = Vec::new();
    let mut stored = Vec::new();
    let mut ranges: Vec<Range<usize>> = Vec::new();
    ranges.push(0..len);
    while let Some(range) = ranges.pop() {
        if range.is_empty() {
            continue;
        }
        match op(range.clone()).await {
            Ok(value) => stored.push(value),
            Err(Failure::Sink(e)) => return Err(e),
            Err(Failure::Data(message)) if range.len() == 1 => refused.push((range.start, message)),
            Err(Failure::Data(_)) => {
                let mid = range.start + range.len() / 2;
                ranges.push(mid..range.end);
                ranges.push(range.start..mid);
            }
        }
    }
    Ok(Bisected { refused, stored })
}

/// An INSERT of rows with a unique `event_id`: as it is, and followed by `ON CONFLICT DO
/// NOTHING`, which skips the event_ids already stored and returns those it stored (see
/// [`insert_new`]).
pub(super) struct InsertNew {
    plain: String,
    skipping: String,
}

impl InsertNew {
    fn new(plain: String) -> InsertNew {
        let skipping = format!("{plain}\nON CONFLICT (event_id) DO NOTHING RETURNING event_id");
        InsertNew { plain, skipping }
    }
}

/// Whether the writes to a table are meeting rows stored already, as in a replay (see
/// [`insert_new`]).
#[derive(Default)]
pub(super) struct Replaying(AtomicBool);

/// Inserts the rows with the event_ids `ids` with `statement`, skipping the event_ids already
/// stored; returns the skipped ones (indexes in `ids`).
///
/// A plain INSERT costs the server about a quarter less than one with `ON CONFLICT DO
/// NOTHING`, which inserts every row speculatively: an index probe and a WAL record more per
/// row. So the plain statement goes first, and the skipping one follows when a row turns out
/// to be stored (a unique violation). While the writes to a table keep meeting stored rows,
/// as in a replay, they skip from the start; once one stores every row again, plain inserts
/// come back.
async fn insert_new(
    pool: &PgPool,
    replaying: &Replaying,
    statement: &'static InsertNew,
    ids: &[Cow<'_, str>],
    arguments: impl Fn() -> Result<PgArguments, BoxDynError>,
) -> Result<Vec<usize>, Failure> {
    let arguments = || arguments().map_err(encoding);
    if !replaying.0.load(Relaxed) {
        match sqlx::query_with(statement.plain.as_str(), arguments()?)
            .execute(pool)
            .await
        {
            Ok(_) => return Ok(Vec::new()),
            Err(e) if has_code(&e, "23505") => replaying.0.store(true, Relaxed),
            Err(e) => return Err(e.into()),
        }
    }
    let stored: HashSet<String> =
        sqlx::query_scalar_with(statement.skipping.as_str(), arguments()?)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    if stored.len() == ids.len() {
        replaying.0.store(false, Relaxed);
    }
    Ok((0..ids.len())
        .filter(|&i| !stored.contains(ids[i].as_ref()))
        .collect())
}

/// What a write did to `events`: the rows the server refused, with its error, and those that
/// were stored already (positions in the write).
#[derive(Default)]
pub(super) struct EventsWritten {
    pub refused: Vec<(usize, String)>,
    pub skipped: Vec<usize>,
}

/// Stores the events of `columns` (the events at `positions` in the write) in `events`, skipping
/// those already stored.
pub(super) async fn write_events(
    pool: &PgPool,
    replaying: &Replaying,
    positions: &[usize],
    columns: &EventColumns<'_>,
) -> Result<EventsWritten, SinkError> {
    static INSERT: LazyLock<InsertNew> = LazyLock::new(|| InsertNew::new(EVENTS_INSERT.clone()));
    let c = columns;
    // One statement, so one transaction without BEGIN and COMMIT round trips.
    let done = bisect(c.len(), |r: Range<usize>| async move {
        let ids = &c.id[r.clone()];
        let skipped = insert_new(pool, replaying, &INSERT, ids, || c.arguments(r.clone())).await?;
        Ok(skipped.into_iter().map(move |i| positions[r.start + i]))
    })
    .await?;
    Ok(EventsWritten {
        refused: done
            .refused
            .into_iter()
            .map(|(r, m)| (positions[r], m))
            .collect(),
        skipped: done.stored.into_iter().flatten().collect(),
    })
}

/// Merges `records` into `evaluations`; returns the events of the refused records (positions
/// in the write) with the server's error. The long texts of the events for which `in_events`
/// is true are read from their stored `events` rows.
pub(super) async fn write_evaluations(
    pool: &PgPool,
    records: &[merge::EvalRecord<'_>],
    in_events: impl Fn(&Event) -> bool,
) -> Result<Vec<(usize, String)>, SinkError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let c = &EvalColumns::new(records, in_events);
    let done = bisect(records.len(), |r: Range<usize>| async move {
        let arguments = c.arguments(r).map_err(encoding)?;
        // One statement, so one transaction without BEGIN and COMMIT round trips.
        sqlx::query_with(UPSERT.as_str(), arguments)
            .execute(pool)
            .await?;
        Ok(())
    })
    .await?;
    Ok(done
        .refused
        .into_iter()
        .flat_map(|(r, m)| records[r].events.iter().map(move |&i| (i, m.clone())))
        .collect())
}

#[derive(Clone, Copy)]
pub(super) enum SecurityTable {
    /// `security_audit`, from CONTAINER_CREATED.
    Audit,
    /// `security_events`, from RESOURCE_VIOLATION.
    Events,
}

impl SecurityTable {
    /// The statement that inserts rows from the column arrays of [`write_security`].
    fn insert(self) -> &'static InsertNew {
        fn statement(table: &str, columns: &str, values: &str) -> InsertNew {
            let rows = unnest_rows(&[
                ("id", "text"),
                ("c", "text"),
                ("s", "text"),
                ("i", "text"),
                ("o", "text"),
                ("ts", "timestamptz"),
                ("t", "text"),
            ]);
            InsertNew::new(format!(
                "INSERT INTO {table} ({columns}) SELECT {values} FROM ({rows}) AS x"
            ))
        }
        static AUDIT: LazyLock<InsertNew> = LazyLock::new(|| {
            statement(
                "security_audit",
                "event_id, container_id, eval_id, image, limits, ts, tenant_id",
                "id, c, s, i, o::jsonb, ts, t",
            )
        });
        static EVENTS: LazyLock<InsertNew> = LazyLock::new(|| {
            statement(
                "security_events",
                "event_id, container_id, violation_type, details, ts, tenant_id",
                "id, c, s, o::jsonb, ts, t",
            )
        });
        match self {
            SecurityTable::Audit => &AUDIT,
            SecurityTable::Events => &EVENTS,
        }
    }
}

/// Inserts the events at `positions` into a security table, skipping stored ones.
pub(super) async fn write_security(
    pool: &PgPool,
    replaying: &Replaying,
    flat: &Flat<'_>,
    positions: &[usize],
    table: SecurityTable,
) -> Result<Vec<(usize, String)>, SinkError> {
    let events: Vec<&Event> = positions
        .iter()
        .map(|&i| flat.events[i])
        .filter(|e| match table {
            SecurityTable::Audit => matches!(e.body, Body::ContainerCreated { .. }),
            SecurityTable::Events => matches!(e.body, Body::ResourceViolation { .. }),
        })
        .collect();
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // event_id, then container_id, eval_id or violation_type, image, tenant_id; limits or
    // details; ts
    let mut ids: Vec<Cow<str>> = Vec::new();
    let mut cols: [Vec<Option<Cow<str>>>; 4] = Default::default();
    let mut objects = Vec::new();
    for e in &events {
        let (container, second, third, object) = match &e.body {
            Body::ContainerCreated {
                container_id,
                eval_id,
                image,
                limits,
            } => (container_id, eval_id, Some(image), limits),
            Body::ResourceViolation {
                container_id,
                violation_type,
                details,
            } => (container_id, violation_type, None, details),
            _ => unreachable!("filtered above"),
        };
        let pg = |s| event_text(e, s);
        ids.push(pg(&e.id));
        cols[0].push(Some(pg(container)));
        cols[1].push(Some(pg(second)));
        cols[2].push(third.map(|s| pg(s)));
        cols[3].push(e.tenant_id.as_deref().map(pg));
        objects.push(json_text(object));
    }
    let ts: Vec<_> = events.iter().map(|e| e.ts).collect();
    let (ids, cols, objects, ts) = (&ids, &cols, &objects, &ts);
    let arguments = |r: Range<usize>| -> Result<PgArguments, BoxDynError> {
        let mut args = PgArguments::default();
        args.add(&ids[r.clone()])?;
        args.add(&cols[0][r.clone()])?;
        args.add(&cols[1][r.clone()])?;
        args.add(&cols[2][r.clone()])?;
        args.add(&objects[r.clone()])?;
        args.add(&ts[r.clone()])?;
        args.add(&cols[3][r.clone()])?;
        Ok(args)
    };
    let done = bisect(events.len(), |r: Range<usize>| async move {
        let ids = &ids[r.clone()];
        insert_new(pool, replaying, table.insert(), ids, || {
            arguments(r.clone())
        })
        .await
    })
    .await?;
    // Back from positions among `events` to positions in the write.
    let in_write: Vec<usize> = positions
        .iter()
        .copied()
        .filter(|&i| {
            matches!(
                (&flat.events[i].body, table),
                (Body::ContainerCreated { .. }, SecurityTable::Audit)
                    | (Body::ResourceViolation { .. }, SecurityTable::Events)
            )
        })
        .collect();
    Ok(done
        .refused
        .into_iter()
        .map(|(r, m)| (in_write[r], m))
        .collect())
}

/// The committed `evaluations` rows of `eval_ids`, as the cache holds them.
pub(super) async fn read_cache_rows(
    pool: &PgPool,
    eval_ids: &[&str],
) -> Result<Vec<EvalRow>, sqlx::Error> {
    let ids: Vec<Cow<str>> = eval_ids.iter().map(|id| pg_text(id)).collect();
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT eval_id, tenant_id, status, language, engine, timeout, executor_id, queued_at, \
         started_at, ended_at, success, output_size, output_sha256, output_ref, output_preview, \
         updated_at FROM evaluations WHERE eval_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    rows.iter().map(eval_row).collect()
}

fn eval_row(r: &PgRow) -> Result<EvalRow, sqlx::Error> {
    Ok(EvalRow {
        eval_id: r.try_get("eval_id")?,
        tenant_id: r.try_get("tenant_id")?,
        status: r.try_get("status")?,
        language: r.try_get("language")?,
        engine: r.try_get("engine")?,
        timeout: r.try_get("timeout")?,
        executor_id: r.try_get("executor_id")?,
        queued_at: r.try_get("queued_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        success: r.try_get("success")?,
        output_size: r.try_get("output_size")?,
        output_sha256: r.try_get("output_sha256")?,
        output_ref: r.try_get("output_ref")?,
        output_preview: r.try_get("output_preview")?,
        updated_at: r.try_get("updated_at")?,
        ..EvalRow::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bisection_finds_the_refused_rows() {
        let bad = [3usize, 4, 9];
        let mut calls = 0;
        let done = bisect(10, |r: Range<usize>| {
            calls += 1;
            let outcome = if bad.iter().any(|b| r.contains(b)) {
                Err(Failure::Data(format!("bad in {r:?}")))
            } else {
                Ok(())
            };
            async move { outcome }
        })
        .await
        .unwrap_or_else(|_| panic!("no sink error"));
        let positions: Vec<usize> = done.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(positions, bad);
        assert!(calls < 20, "{calls} calls");
    }
}

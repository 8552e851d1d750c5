//! The `evaluations` projection: the lifecycle events of one eval merged into one row, with a
//! result that does not depend on their order or on duplicates.
//!
//! The row is made of stages. Each stage takes its fields from one event: the one with the
//! greatest key `{timestamp}|{event_id}` (kept in the `*_event` column):
//!
//! | stage      | events     | fields                                                  |
//! |------------|------------|---------------------------------------------------------|
//! | queued     | QUEUED     | code, language, engine, timeout, metadata, queued_at    |
//! | started    | STARTED    | executor_id, started_at                                 |
//! | completed  | COMPLETED  | success, output, output_preview/size/sha256/ref         |
//! | failed     | FAILED     | error, traceback                                        |
//! | terminal   | COMPLETED or FAILED | status (`completed`/`failed`), ended_at        |
//!
//! `status` is the terminal stage's when there is one, else `running` once started, else
//! `queued`; `tenant_id` is the greatest one seen. Picking the greatest key is commutative,
//! associative and idempotent, so merging a batch in memory ([`EvalRecord`]) and then into the
//! stored row ([`UPSERT`]) gives the same row for every order of the same events. A row is
//! only rewritten when some stage gets a greater key, so a replay leaves it untouched.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Arguments;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;

use super::rows::{event_text, json_text, pg_text, text_bytes, unnest_rows};
use crate::event::{Body, Event};

/// The key that orders the events of one stage: fixed-width UTC time, then the event id, so
/// that byte order is time order (the `*_event` columns are `COLLATE "C"`).
pub fn stage_key(event: &Event) -> String {
    format!(
        "{}|{}",
        event.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
        event.id
    )
}

/// One stage's winning event and its key.
#[derive(Debug, Clone)]
struct Winner<'a> {
    key: String,
    event: &'a Event,
}

fn take<'a>(slot: &mut Option<Winner<'a>>, key: &str, event: &'a Event) {
    if slot.as_ref().is_none_or(|w| key > w.key.as_str()) {
        *slot = Some(Winner {
            key: key.to_string(),
            event,
        });
    }
}

/// The events of one eval in one write, merged.
#[derive(Debug, Clone)]
pub struct EvalRecord<'a> {
    pub eval_id: &'a str,
    tenant_id: Option<&'a str>,
    queued: Option<Winner<'a>>,
    started: Option<Winner<'a>>,
    completed: Option<Winner<'a>>,
    failed: Option<Winner<'a>>,
    terminal: Option<Winner<'a>>,
    /// Every event merged in, by position in the write (for dead letters if the row is refused).
    pub events: Vec<usize>,
}

impl<'a> EvalRecord<'a> {
    fn new(eval_id: &'a str) -> Self {
        EvalRecord {
            eval_id,
            tenant_id: None,
            queued: None,
            started: None,
            completed: None,
            failed: None,
            terminal: None,
            events: Vec::new(),
        }
    }

    /// Merges one lifecycle event in; other types are ignored.
    pub fn merge(&mut self, position: usize, event: &'a Event) {
        let key = stage_key(event);
        match &event.body {
            Body::EvaluationQueued { .. } => take(&mut self.queued, &key, event),
            Body::EvaluationStarted { .. } => take(&mut self.started, &key, event),
            Body::EvaluationCompleted { .. } => {
                take(&mut self.completed, &key, event);
                take(&mut self.terminal, &key, event);
            }
            Body::EvaluationFailed { .. } => {
                take(&mut self.failed, &key, event);
                take(&mut self.terminal, &key, event);
            }
            _ => return,
        }
        if let Some(tenant) = event.tenant_id.as_deref()
            && self.tenant_id.is_none_or(|t| tenant > t)
        {
            self.tenant_id = Some(tenant);
        }
        self.events.push(position);
    }

    pub fn status(&self) -> &'static str {
        match (&self.terminal, &self.started) {
            (Some(w), _) if matches!(w.event.body, Body::EvaluationFailed { .. }) => "failed",
            (Some(_), _) => "completed",
            (None, Some(_)) => "running",
            (None, None) => "queued",
        }
    }
}

/// Merges the lifecycle events among `events` per eval_id, in order of first appearance.
pub fn merge_evaluations<'a>(
    events: impl Iterator<Item = (usize, &'a Event)>,
) -> Vec<EvalRecord<'a>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut records: Vec<EvalRecord<'a>> = Vec::new();
    for (position, event) in events {
        let Some(eval_id) = event.eval_id() else {
            continue;
        };
        let i = *index.entry(eval_id).or_insert_with(|| {
            records.push(EvalRecord::new(eval_id));
            records.len() - 1
        });
        records[i].merge(position, event);
    }
    records
}

/// The records as the column arrays of [`UPSERT`], in its parameter order.
#[derive(Debug, Default)]
pub struct EvalColumns<'a> {
    pub eval_id: Vec<Cow<'a, str>>,
    pub tenant_id: Vec<Option<Cow<'a, str>>>,
    pub status: Vec<&'static str>,
    pub code: Vec<Option<Cow<'a, str>>>,
    pub language: Vec<Option<Cow<'a, str>>>,
    pub engine: Vec<Option<Cow<'a, str>>>,
    pub timeout: Vec<Option<f64>>,
    pub metadata: Vec<Option<String>>,
    pub executor_id: Vec<Option<Cow<'a, str>>>,
    pub queued_at: Vec<Option<DateTime<Utc>>>,
    pub started_at: Vec<Option<DateTime<Utc>>>,
    pub ended_at: Vec<Option<DateTime<Utc>>>,
    pub success: Vec<Option<bool>>,
    pub output: Vec<Option<Cow<'a, str>>>,
    pub output_preview: Vec<Option<Cow<'a, str>>>,
    pub output_size: Vec<Option<i64>>,
    pub output_sha256: Vec<Option<Cow<'a, str>>>,
    pub output_ref: Vec<Option<Cow<'a, str>>>,
    pub error: Vec<Option<Cow<'a, str>>>,
    pub traceback: Vec<Option<Cow<'a, str>>>,
    pub queued_event: Vec<Option<String>>,
    pub started_event: Vec<Option<String>>,
    pub completed_event: Vec<Option<String>>,
    pub failed_event: Vec<Option<String>>,
    pub ended_event: Vec<Option<String>>,
    /// When `code` is NULL because the text is in the payload of a stored `events` row: that
    /// row's event_id (see [`UPSERT`]).
    pub code_in_event: Vec<Option<Cow<'a, str>>>,
    /// The same for `output`.
    pub output_in_event: Vec<Option<Cow<'a, str>>>,
}

/// Bytes of `output_preview` (SPEC: the first 1 KiB, cut on a UTF-8 boundary).
pub const OUTPUT_PREVIEW_BYTES: usize = 1024;

/// The first `max` bytes of `s`, cut on a character boundary.
pub fn preview(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<'a> EvalColumns<'a> {
    /// The columns of `records`; the long texts of the events for which `in_events` is true
    /// (their `events` row is stored) are referred to rather than sent again.
    pub fn new(records: &[EvalRecord<'a>], in_events: impl Fn(&Event) -> bool) -> Self {
        let mut c = EvalColumns::default();
        for r in records {
            c.push(r, &in_events);
        }
        c
    }

    /// The parameters of [`UPSERT`] for the records in `r`, in the order of [`PARAMETERS`], in
    /// a buffer allocated once at its full size.
    pub fn arguments(&self, r: Range<usize>) -> Result<PgArguments, BoxDynError> {
        let long = |column: &[Option<Cow<str>>]| text_bytes(&column[r.clone()]);
        // Ids, keys, times and lengths take less than 512 bytes a record.
        let bytes = 512 * r.len()
            + [
                &self.code,
                &self.output,
                &self.output_preview,
                &self.error,
                &self.traceback,
            ]
            .into_iter()
            .map(|c| long(c))
            .sum::<usize>()
            + self.metadata[r.clone()]
                .iter()
                .flatten()
                .map(String::len)
                .sum::<usize>();
        let mut args = PgArguments::default();
        args.reserve(PARAMETERS.len(), bytes);
        args.add(&self.eval_id[r.clone()])?;
        args.add(&self.tenant_id[r.clone()])?;
        args.add(&self.status[r.clone()])?;
        args.add(&self.code[r.clone()])?;
        args.add(&self.language[r.clone()])?;
        args.add(&self.engine[r.clone()])?;
        args.add(&self.timeout[r.clone()])?;
        args.add(&self.metadata[r.clone()])?;
        args.add(&self.executor_id[r.clone()])?;
        args.add(&self.queued_at[r.clone()])?;
        args.add(&self.started_at[r.clone()])?;
        args.add(&self.ended_at[r.clone()])?;
        args.add(&self.success[r.clone()])?;
        args.add(&self.output[r.clone()])?;
        args.add(&self.output_preview[r.clone()])?;
        args.add(&self.output_size[r.clone()])?;
        args.add(&self.output_sha256[r.clone()])?;
        args.add(&self.output_ref[r.clone()])?;
        args.add(&self.error[r.clone()])?;
        args.add(&self.traceback[r.clone()])?;
        args.add(&self.queued_event[r.clone()])?;
        args.add(&self.started_event[r.clone()])?;
        args.add(&self.completed_event[r.clone()])?;
        args.add(&self.failed_event[r.clone()])?;
        args.add(&self.ended_event[r.clone()])?;
        args.add(&self.code_in_event[r.clone()])?;
        args.add(&self.output_in_event[r.clone()])?;
        debug_assert_eq!(args.len(), PARAMETERS.len());
        Ok(args)
    }

    fn push(&mut self, r: &EvalRecord<'a>, in_events: impl Fn(&Event) -> bool) {
        // The field's text, or the event whose stored payload holds it (when split did not
        // move it out: then the payload holds its reference instead).
        let text_or_event = |event: &'a Event, field: &str, text: &'a str| {
            if event.stored(field).is_none() && in_events(event) {
                (None, Some(event_text(event, &event.id)))
            } else {
                (Some(event_text(event, text)), None)
            }
        };
        let text = |s: &'a str| Some(pg_text(s));
        self.eval_id.push(pg_text(r.eval_id));
        self.tenant_id.push(r.tenant_id.map(pg_text));
        self.status.push(r.status());

        let (mut code, mut code_in_event) = (None, None);
        let (mut language, mut engine, mut timeout, mut metadata, mut queued_at) =
            (None, None, None, None, None);
        if let Some(w) = &r.queued
            && let Body::EvaluationQueued {
                code: c,
                language: l,
                engine: e,
                timeout: t,
                metadata: m,
                ..
            } = &w.event.body
        {
            (code, code_in_event) = text_or_event(w.event, "code", c);
            language = text(l);
            engine = text(e);
            timeout = Some(*t);
            metadata = Some(json_text(m));
            queued_at = Some(w.event.ts);
        }
        self.code.push(code);
        self.code_in_event.push(code_in_event);
        self.language.push(language);
        self.engine.push(engine);
        self.timeout.push(timeout);
        self.metadata.push(metadata);
        self.queued_at.push(queued_at);

        let (mut executor_id, mut started_at) = (None, None);
        if let Some(w) = &r.started
            && let Body::EvaluationStarted {
                executor_id: x,
                start_time,
                ..
            } = &w.event.body
        {
            executor_id = text(x);
            started_at = Some(*start_time);
        }
        self.executor_id.push(executor_id);
        self.started_at.push(started_at);

        let mut completed = (None, None, None, None, None, None);
        let mut output_in_event = None;
        if let Some(w) = &r.completed
            && let Body::EvaluationCompleted {
                output, success, ..
            } = &w.event.body
        {
            // The field holds the whole output, or its preview when split stored it outside.
            let stored = w.event.stored("output");
            let (whole, in_event) = match stored {
                Some(_) => (None, None),
                None => text_or_event(w.event, "output", output),
            };
            output_in_event = in_event;
            completed = (
                Some(*success),
                whole,
                text(preview(output, OUTPUT_PREVIEW_BYTES)),
                Some(stored.map_or(output.len() as i64, |s| s.size as i64)),
                Some(match stored {
                    Some(s) => Cow::Borrowed(s.sha256.as_str()),
                    None => Cow::Owned(super::rows::sha256_hex(output.as_bytes())),
                }),
                stored.map(|s| Cow::Borrowed(s.key.as_str())),
            );
        }
        self.success.push(completed.0);
        self.output.push(completed.1);
        self.output_in_event.push(output_in_event);
        self.output_preview.push(completed.2);
        self.output_size.push(completed.3);
        self.output_sha256.push(completed.4);
        self.output_ref.push(completed.5);

        let (mut error, mut traceback) = (None, None);
        if let Some(w) = &r.failed
            && let Body::EvaluationFailed {
                error: e,
                traceback: t,
                ..
            } = &w.event.body
        {
            error = text(e);
            traceback = text(t);
        }
        self.error.push(error);
        self.traceback.push(traceback);

        self.ended_at
            .push(r.terminal.as_ref().map(|w| match &w.event.body {
                Body::EvaluationCompleted { end_time, .. } => *end_time,
                _ => w.event.ts,
            }));
        let key = |w: &Option<Winner>| w.as_ref().map(|w| w.key.clone());
        self.queued_event.push(key(&r.queued));
        self.started_event.push(key(&r.started));
        self.completed_event.push(key(&r.completed));
        self.failed_event.push(key(&r.failed));
        self.ended_event.push(key(&r.terminal));
    }
}

/// Which stage each merged column belongs to (the `*_event` column that decides it).
const STAGE_COLUMNS: &[(&str, &str)] = &[
    ("code", "queued_event"),
    ("language", "queued_event"),
    ("engine", "queued_event"),
    ("timeout", "queued_event"),
    ("metadata", "queued_event"),
    ("queued_at", "queued_event"),
    ("executor_id", "started_event"),
    ("started_at", "started_event"),
    ("success", "completed_event"),
    ("output", "completed_event"),
    ("output_preview", "completed_event"),
    ("output_size", "completed_event"),
    ("output_sha256", "completed_event"),
    ("output_ref", "completed_event"),
    ("error", "failed_event"),
    ("traceback", "failed_event"),
    ("ended_at", "ended_event"),
];

const KEY_COLUMNS: [&str; 5] = [
    "queued_event",
    "started_event",
    "completed_event",
    "failed_event",
    "ended_event",
];

/// The columns bound as arrays, in parameter order, with their array types.
const PARAMETERS: &[(&str, &str)] = &[
    ("eval_id", "text"),
    ("tenant_id", "text"),
    ("status", "text"),
    ("code", "text"),
    ("language", "text"),
    ("engine", "text"),
    ("timeout", "float8"),
    ("metadata", "text"),
    ("executor_id", "text"),
    ("queued_at", "timestamptz"),
    ("started_at", "timestamptz"),
    ("ended_at", "timestamptz"),
    ("success", "bool"),
    ("output", "text"),
    ("output_preview", "text"),
    ("output_size", "int8"),
    ("output_sha256", "text"),
    ("output_ref", "text"),
    ("error", "text"),
    ("traceback", "text"),
    ("queued_event", "text"),
    ("started_event", "text"),
    ("completed_event", "text"),
    ("failed_event", "text"),
    ("ended_event", "text"),
    ("code_in_event", "text"),
    ("output_in_event", "text"),
];

/// Parameters that are not columns of `evaluations`: where `code` and `output` are when the
/// client did not send them.
const TEXT_IN_EVENT: [(&str, &str); 2] = [("code", "code_in_event"), ("output", "output_in_event")];

/// The merge of a batch's records into the stored rows, as one statement over column arrays.
///
/// `code` and `output` are long, and most of them are in the payload of an `events` row that
/// the same write has stored just before: those are read from there rather than sent twice
/// (which cost the server and the client more than the lookup).
pub static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<&str> = PARAMETERS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| TEXT_IN_EVENT.iter().all(|(_, e)| e != n))
        .collect();
    let select: Vec<String> = names
        .iter()
        .map(|n| match TEXT_IN_EVENT.iter().find(|(field, _)| field == n) {
            Some((field, event)) => format!(
                "COALESCE({field}, (SELECT payload->>'{field}' FROM events WHERE event_id = {event}))"
            ),
            None if *n == "metadata" => "metadata::jsonb".to_string(),
            None => n.to_string(),
        })
        .collect();
    // The incoming stage wins when its key is greater than the stored one (or none is stored).
    let wins = |key: &str| format!("EXCLUDED.{key} > COALESCE(e.{key}, '')");
    let mut set: Vec<String> = STAGE_COLUMNS
        .iter()
        .map(|(column, key)| {
            format!(
                "{column} = CASE WHEN {} THEN EXCLUDED.{column} ELSE e.{column} END",
                wins(key)
            )
        })
        .collect();
    set.extend(
        KEY_COLUMNS
            .iter()
            .map(|k| format!("{k} = GREATEST(e.{k}, EXCLUDED.{k})")),
    );
    set.push("tenant_id = GREATEST(e.tenant_id, EXCLUDED.tenant_id)".into());
    set.push(format!(
        "status = CASE WHEN {} THEN EXCLUDED.status WHEN e.ended_event IS NOT NULL THEN e.status \
         WHEN COALESCE(e.started_event, EXCLUDED.started_event) IS NOT NULL THEN 'running' \
         ELSE 'queued' END",
        wins("ended_event")
    ));
    set.push("updated_at = now()".into());
    let mut changed: Vec<String> = KEY_COLUMNS.iter().map(|k| wins(k)).collect();
    changed.push(wins("tenant_id"));
    format!(
        "INSERT INTO evaluations AS e ({names})\n\
         SELECT {select}\n\
         FROM ({rows}) AS t\n\
         ON CONFLICT (eval_id) DO UPDATE SET\n    {set}\n\
         WHERE {changed}",
        names = names.join(", "),
        select = select.join(", "),
        rows = unnest_rows(PARAMETERS),
        set = set.join(",\n    "),
        changed = changed.join("\n   OR "),
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_line;

    fn event(line: &str) -> Event {
        decode_line(line.as_bytes(), Utc::now()).unwrap()
    }

    #[test]
    fn stage_keys_sort_by_time_then_id() {
        let a = event(
            r#"{"type":"EVALUATION_STARTED","event_id":"b","timestamp":"2026-01-01T00:00:00Z","eval_id":"e","executor_id":"x","start_time":"2026-01-01T00:00:00Z"}"#,
        );
        let b = event(
            r#"{"type":"EVALUATION_STARTED","event_id":"a","timestamp":"2026-01-01T00:00:00.5Z","eval_id":"e","executor_id":"y","start_time":"2026-01-01T00:00:00Z"}"#,
        );
        assert!(
            stage_key(&a) < stage_key(&b),
            "{} {}",
            stage_key(&a),
            stage_key(&b)
        );
    }

    #[test]
    fn the_merge_does_not_depend_on_order() {
        let lines = [
            r#"{"type":"EVALUATION_QUEUED","event_id":"1","timestamp":"2026-01-01T00:00:00Z","eval_id":"e","code":"print(1)","language":"python","engine":"py","timeout":30,"metadata":{}}"#,
            r#"{"type":"EVALUATION_STARTED","event_id":"2","timestamp":"2026-01-01T00:00:01Z","eval_id":"e","executor_id":"x","start_time":"2026-01-01T00:00:01Z","tenant_id":"t"}"#,
            r#"{"type":"EVALUATION_FAILED","event_id":"3","timestamp":"2026-01-01T00:00:02Z","eval_id":"e","error":"boom","traceback":"tb"}"#,
            r#"{"type":"EVALUATION_COMPLETED","event_id":"4","timestamp":"2026-01-01T00:00:03Z","eval_id":"e","output":"ok","success":true,"end_time":"2026-01-01T00:00:03Z"}"#,
        ];
        let events: Vec<Event> = lines.iter().map(|l| event(l)).collect();
        let forward = merge_evaluations(events.iter().enumerate());
        let backward = merge_evaluations(events.iter().enumerate().rev());
        let (f, b) = (
            EvalColumns::new(&forward, |_| false),
            EvalColumns::new(&backward, |_| false),
        );
        assert_eq!(format!("{f:?}"), format!("{b:?}"));
        assert_eq!(f.status, vec!["completed"], "the later terminal event wins");
        assert_eq!(f.error[0].as_deref(), Some("boom"), "no field is cleared");
        assert_eq!(f.tenant_id[0].as_deref(), Some("t"));
        assert_eq!(forward[0].events.len(), 4);
    }

    #[test]
    fn previews_cut_on_a_character_boundary() {
        assert_eq!(preview("héllo", 2), "h");
        assert_eq!(preview("héllo", 3), "hé");
        assert_eq!(preview("abc", 10), "abc");
    }

    #[test]
    fn the_upsert_names_every_parameter() {
        assert!(UPSERT.contains("$27::text[]"));
        assert!(!UPSERT.contains("$28"));
        let columns = UPSERT.split(['(', ')']).nth(1).unwrap();
        assert!(columns.starts_with("eval_id, tenant_id"), "{columns}");
        assert!(!columns.contains("_in_event"), "not a column: {columns}");
    }
}

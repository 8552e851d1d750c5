//! Events as PostgreSQL values: the column arrays of `events` rows, and text that PostgreSQL
//! accepts whatever the event's strings hold.
//!
//! PostgreSQL refuses the NUL character in `text` and `\u0000` in `jsonb`, though both are valid
//! JSON. Every such character is stored as the six characters `\u0000` instead, so that every
//! valid JSON event is stored.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Arguments;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;

use crate::event::Event;
use crate::json::{self, Target};

/// What NUL becomes in stored text.
const NUL_REPLACEMENT: &str = "\\u0000";

/// `s` as PostgreSQL accepts it in a `text` column.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if memchr::memchr(0, s.as_bytes()).is_some() {
        Cow::Owned(s.replace('\0', NUL_REPLACEMENT))
    } else {
        Cow::Borrowed(s)
    }
}

/// `s`, a string of `event`, as PostgreSQL accepts it in a `text` column: searched for NUL only
/// when decoding saw a `\u0000` in the event's line ([`Event::may_hold_nul`]).
pub fn event_text<'a>(event: &Event, s: &'a str) -> Cow<'a, str> {
    if event.may_hold_nul {
        pg_text(s)
    } else {
        Cow::Borrowed(s)
    }
}

/// A JSON object as text that `jsonb` accepts.
pub fn json_text(map: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = Vec::new();
    json::write_map(&mut out, map, Target::Jsonb);
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Bytes of the texts of a column, for sizing a statement's parameter buffer.
pub fn text_bytes(column: &[Option<Cow<str>>]) -> usize {
    column.iter().flatten().map(|s| s.len()).sum()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The text fields that go to the server as `text` columns of their own, beside the rest of
/// the payload as JSON text; the server puts them into the `jsonb` ([`EVENTS_INSERT`]).
pub const TEXT_FIELDS: [&str; 4] = ["code", "output", "error", "traceback"];

/// The columns of [`EVENTS_INSERT`] before the [`TEXT_FIELDS`], with their array types.
const EVENTS_COLUMNS: [(&str, &str); 6] = [
    ("id", "text"),
    ("type", "text"),
    ("ts", "timestamptz"),
    ("eval_id", "text"),
    ("tenant_id", "text"),
    ("rest", "text"),
];

/// How many parameters [`EVENTS_INSERT`] has.
const EVENTS_PARAMETERS: usize = EVENTS_COLUMNS.len() + TEXT_FIELDS.len();

/// Inserts rows of `events` from column arrays (the sink adds `ON CONFLICT` when it meets stored
/// event_ids, see `tables::InsertNew`).
///
/// `jsonb` input is always JSON text, and PostgreSQL 15 parses it a character at a time: on
/// events with code and output that was 40% of the server's time (`appendStringInfoChar` and
/// `json_lex`). A `text` value goes into a `jsonb` by a copy, so the long text fields
/// ([`TEXT_FIELDS`]) are sent as `text` and joined to the rest of the payload by the server
/// (`||` with an empty object costs nothing).
pub static EVENTS_INSERT: LazyLock<String> = LazyLock::new(|| {
    let mut columns = EVENTS_COLUMNS.to_vec();
    columns.extend(TEXT_FIELDS.map(|f| (f, "text")));
    let rows = unnest_rows(&columns);
    let texts: String = TEXT_FIELDS
        .iter()
        .map(|f| format!("\n       || CASE WHEN {f} IS NULL THEN '{{}}' ELSE jsonb_build_object('{f}', {f}) END"))
        .collect();
    format!(
        "INSERT INTO events (event_id, type, ts, eval_id, tenant_id, payload)\n\
         SELECT id, type, ts, eval_id, tenant_id, rest::jsonb{texts}\n\
         FROM ({rows}) AS t"
    )
});

/// `SELECT unnest($1::type[]) AS name, ...` over `columns` (name, element type): the rows of
/// column arrays bound as parameters `$1`, `$2`, ... They are unnested in the select list so
/// that they stream into the statement: `FROM unnest(...)` first copies every row into a
/// tuplestore, which goes to a temporary file once it outgrows `work_mem`.
pub fn unnest_rows(columns: &[(&str, &str)]) -> String {
    let list: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| format!("unnest(${}::{ty}[]) AS {name}", i + 1))
        .collect();
    format!("SELECT {}", list.join(", "))
}

/// Rows of `events` as the column arrays of [`EVENTS_INSERT`]; any range of them can be sent
/// on its own (to isolate a row the server refuses).
#[derive(Debug, Default)]
pub struct EventColumns<'a> {
    pub id: Vec<Cow<'a, str>>,
    pub kind: Vec<&'static str>,
    pub ts: Vec<DateTime<Utc>>,
    pub eval_id: Vec<Option<Cow<'a, str>>>,
    pub tenant_id: Vec<Option<Cow<'a, str>>>,
    /// The payload of each row without the fields in `texts`: a range of `rest_text`.
    pub rest: Vec<Range<usize>>,
    /// The JSON texts of `rest`, one after the other (one allocation for the write).
    pub rest_text: String,
    /// One column per name of [`TEXT_FIELDS`]: the field when it is a string split did not
    /// move out, else NULL.
    pub texts: [Vec<Option<Cow<'a, str>>>; TEXT_FIELDS.len()],
}

impl<'a> EventColumns<'a> {
    pub fn new(events: impl Iterator<Item = &'a Event>) -> EventColumns<'a> {
        let mut c = EventColumns::default();
        let mut rest = Vec::new();
        for event in events {
            let pg = |s| event_text(event, s);
            c.id.push(pg(&event.id));
            c.kind.push(event.event_type().as_str());
            c.ts.push(event.ts);
            c.eval_id.push(event.eval_id().map(pg));
            c.tenant_id.push(event.tenant_id.as_deref().map(pg));
            let start = rest.len();
            json::write_event_without(&mut rest, event, Target::Jsonb, &TEXT_FIELDS);
            c.rest.push(start..rest.len());
            for (column, field) in c.texts.iter_mut().zip(TEXT_FIELDS) {
                let text = match event.stored(field) {
                    Some(_) => None,
                    None => event.string_field(field),
                };
                column.push(text.map(pg));
            }
        }
        c.rest_text = String::from_utf8(rest).expect("JSON is UTF-8");
        c
    }

    /// The `rest` JSON texts of the rows in `r`.
    fn rest(&self, r: Range<usize>) -> Vec<&str> {
        self.rest[r]
            .iter()
            .map(|t| &self.rest_text[t.clone()])
            .collect()
    }

    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// The parameters of [`EVENTS_INSERT`] for the rows in `r`, in a buffer allocated once at
    /// its full size (growing it a column at a time copied every byte again, and again).
    pub fn arguments(&self, r: Range<usize>) -> Result<PgArguments, BoxDynError> {
        let texts = |column: &[Option<Cow<str>>]| text_bytes(&column[r.clone()]);
        // Each element has a 4-byte length; a timestamp is 8 bytes; 64 bytes of array header.
        let bytes = EVENTS_PARAMETERS * (64 + 4 * r.len())
            + 8 * r.len()
            + self.id[r.clone()].iter().map(|s| s.len()).sum::<usize>()
            + self.kind[r.clone()].iter().map(|s| s.len()).sum::<usize>()
            + self.rest[r.clone()].iter().map(|t| t.len()).sum::<usize>()
            + texts(&self.eval_id)
            + texts(&self.tenant_id)
            + self.texts.iter().map(|c| texts(c)).sum::<usize>();
        let mut args = PgArguments::default();
        args.reserve(EVENTS_PARAMETERS, bytes);
        args.add(&self.id[r.clone()])?;
        args.add(&self.kind[r.clone()])?;
        args.add(&self.ts[r.clone()])?;
        args.add(&self.eval_id[r.clone()])?;
        args.add(&self.tenant_id[r.clone()])?;
        args.add(self.rest(r.clone()))?;
        for column in &self.texts {
            args.add(&column[r.clone()])?;
        }
        debug_assert_eq!(args.len(), EVENTS_PARAMETERS);
        Ok(args)
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_in_text_and_json_but_escaped_backslashes_are_kept() {
        assert_eq!(pg_text("a\0b"), "a\\u0000b");
        assert!(matches!(pg_text("ab"), Cow::Borrowed(_)));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"k\u0000":"x\u0000y","lit":"\\u0000","n":[1,"\u0000"]}"#)
                .unwrap();
        let text = json_text(v.as_object().unwrap());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["k\\u0000"], "x\\u0000y");
        assert_eq!(
            back["lit"], "\\u0000",
            "a literal backslash-u stays as it was"
        );
        assert_eq!(back["n"][1], "\\u0000");
    }

    #[test]
    fn the_insert_binds_every_column_and_joins_every_text_field() {
        assert!(EVENTS_INSERT.contains("unnest($10::text[]) AS traceback"));
        assert!(!EVENTS_INSERT.contains("$11"));
        for field in TEXT_FIELDS {
            assert!(EVENTS_INSERT.contains(&format!("jsonb_build_object('{field}', {field})")));
        }
    }
}

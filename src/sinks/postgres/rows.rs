//! Events as PostgreSQL values: the binary `COPY` rows of `events`, and text that PostgreSQL
//! accepts whatever the event's strings hold.
//!
//! PostgreSQL refuses the NUL character in `text` and `\u0000` in `jsonb`, though both are valid
//! JSON. Every such character is stored as the six characters `\u0000` instead, so that every
//! valid JSON event is stored.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::json::{self, Nul};

/// What NUL becomes in stored text.
const NUL_REPLACEMENT: &str = "\\u0000";

/// `s` as PostgreSQL accepts it in a `text` column.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', NUL_REPLACEMENT))
    } else {
        Cow::Borrowed(s)
    }
}

/// A JSON object as text that `jsonb` accepts.
pub fn json_text(map: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = Vec::new();
    json::write_map(&mut out, map, Nul::AsText);
    String::from_utf8(out).expect("JSON is UTF-8")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The columns of `events` that [`CopyRows`] fills, in order (`ingested_at` is the default).
pub const EVENTS_COPY: &str =
    "COPY events (event_id, type, ts, eval_id, tenant_id, payload) FROM STDIN (FORMAT binary)";

/// Largest `CopyData` message sent (a `COPY` stream may be cut anywhere).
const SEND_PIECE: usize = 256 * 1024;

/// Rows of `events` in PostgreSQL's binary `COPY` format, kept row by row so that any
/// contiguous range of them can be sent on its own (to isolate a row the server refuses).
#[derive(Debug)]
pub struct CopyRows {
    data: Vec<u8>,
    /// Where each row starts in `data`, and one more for the end.
    starts: Vec<usize>,
}

impl CopyRows {
    /// Room for `rows` rows of about `bytes` in all (the events' input size).
    pub fn with_capacity(rows: usize, bytes: usize) -> CopyRows {
        let mut starts = Vec::with_capacity(rows + 1);
        starts.push(0);
        CopyRows {
            data: Vec::with_capacity(bytes + rows * 96),
            starts,
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the row of `event`.
    pub fn push(&mut self, event: &Event) {
        let d = &mut self.data;
        d.extend_from_slice(&6i16.to_be_bytes());
        text_field(d, &event.id);
        text_field(d, event.event_type().as_str());
        d.extend_from_slice(&8i32.to_be_bytes());
        d.extend_from_slice(&pg_timestamp(&event.ts).to_be_bytes());
        match event.eval_id() {
            Some(id) => text_field(d, id),
            None => d.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        match &event.tenant_id {
            Some(t) => text_field(d, t),
            None => d.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        // jsonb in binary: a version byte (1), then the JSON text.
        let at = d.len();
        d.extend_from_slice(&[0, 0, 0, 0, 1]);
        json::write_event(d, event, Nul::AsText);
        let len = (d.len() - at - 4) as i32;
        d[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.starts.push(d.len());
    }

    /// Sends the rows at `rows` (ascending) as one whole binary `COPY` stream: header, rows,
    /// trailer.
    pub async fn send<C>(
        &self,
        copy: &mut sqlx::postgres::PgCopyIn<C>,
        rows: &[usize],
    ) -> sqlx::Result<()>
    where
        C: std::ops::DerefMut<Target = sqlx::PgConnection>,
    {
        // Signature, flags, header extension length.
        copy.send(&b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"[..])
            .await?;
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let run = &self.data[self.starts[rows[i]]..self.starts[rows[j - 1] + 1]];
            // In pieces, so that the connection's send buffer stays small.
            for piece in run.chunks(SEND_PIECE) {
                copy.send(piece).await?;
            }
            i = j;
        }
        copy.send(&(-1i16).to_be_bytes()[..]).await?;
        Ok(())
    }
}

fn text_field(d: &mut Vec<u8>, s: &str) {
    let s = pg_text(s);
    d.extend_from_slice(&(s.len() as i32).to_be_bytes());
    d.extend_from_slice(s.as_bytes());
}

fn pg_timestamp(ts: &DateTime<Utc>) -> i64 {
    ts.timestamp_micros() - PG_EPOCH_MICROS
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
    fn timestamps_count_from_2000() {
        let ts = DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
            .unwrap()
            .to_utc();
        assert_eq!(pg_timestamp(&ts), 1_000_000);
    }
}

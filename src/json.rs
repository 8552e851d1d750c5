//! Events written back out as JSON text: the `payload` of PostgreSQL's `events`, console lines,
//! dead letters. Written straight from the event's fields (nothing is copied into a
//! `serde_json::Value` first), with a string escaper that skips over runs of plain bytes eight
//! at a time: event text is mostly long strings of code and output.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{Body, Event, format_ts};

/// How NUL (U+0000) is written. JSON escapes it as `\u0000`; PostgreSQL refuses that in
/// `jsonb` (and NUL in `text`), so for PostgreSQL it is written as the six characters `\u0000`
/// (the escape of a backslash, then `u0000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nul {
    Escape,
    AsText,
}

/// Appends `event` as one JSON object to `out`: `event_id`, `type`, `timestamp`, `tenant_id`,
/// the typed fields, then the extra fields; a field that split moved out is written as
/// `{"ref", "size", "sha256", "preview"}`.
pub fn write_event(out: &mut Vec<u8>, event: &Event, nul: Nul) {
    write_event_without(out, event, nul, &[]);
}

/// As [`write_event`], but leaves out the top-level string fields named in `left_out` (those
/// that split did not move out: a moved field is written as its reference).
pub fn write_event_without(out: &mut Vec<u8>, event: &Event, nul: Nul, left_out: &[&str]) {
    let mut w = Writer {
        out,
        nul,
        first: true,
    };
    w.out.push(b'{');
    w.str_field("event_id", &event.id);
    w.str_field("type", event.event_type().as_str());
    w.ts_field("timestamp", &event.ts);
    if let Some(tenant) = &event.tenant_id {
        w.str_field("tenant_id", tenant);
    }
    let text = |w: &mut Writer, field: &str, value: &str| match event.stored(field) {
        None if left_out.contains(&field) => {}
        None => w.str_field(field, value),
        Some(stored) => {
            w.key(field);
            w.out.extend_from_slice(b"{\"ref\":");
            write_str(w.out, &stored.key, w.nul);
            w.out.extend_from_slice(b",\"size\":");
            w.out.extend_from_slice(stored.size.to_string().as_bytes());
            w.out.extend_from_slice(b",\"sha256\":");
            write_str(w.out, &stored.sha256, w.nul);
            w.out.extend_from_slice(b",\"preview\":");
            write_str(w.out, value, w.nul);
            w.out.push(b'}');
        }
    };
    match &event.body {
        Body::EvaluationQueued {
            eval_id,
            code,
            language,
            engine,
            timeout,
            metadata,
        } => {
            w.str_field("eval_id", eval_id);
            text(&mut w, "code", code);
            w.str_field("language", language);
            w.str_field("engine", engine);
            w.key("timeout");
            write_number(w.out, *timeout);
            w.map_field("metadata", metadata);
        }
        Body::EvaluationStarted {
            eval_id,
            executor_id,
            start_time,
        } => {
            w.str_field("eval_id", eval_id);
            w.str_field("executor_id", executor_id);
            w.ts_field("start_time", start_time);
        }
        Body::EvaluationCompleted {
            eval_id,
            output,
            success,
            end_time,
        } => {
            w.str_field("eval_id", eval_id);
            text(&mut w, "output", output);
            w.key("success");
            w.out
                .extend_from_slice(if *success { b"true" } else { b"false" });
            w.ts_field("end_time", end_time);
        }
        Body::EvaluationFailed {
            eval_id,
            error,
            traceback,
        } => {
            w.str_field("eval_id", eval_id);
            text(&mut w, "error", error);
            text(&mut w, "traceback", traceback);
        }
        Body::ExecutorHealth {
            executor_id,
            status,
            metrics,
        } => {
            w.str_field("executor_id", executor_id);
            w.str_field("status", status);
            w.map_field("metrics", metrics);
        }
        Body::QueueMetrics {
            queue_length,
            processing_count,
        } => {
            w.key("queue_length");
            w.out.extend_from_slice(queue_length.to_string().as_bytes());
            w.key("processing_count");
            w.out
                .extend_from_slice(processing_count.to_string().as_bytes());
        }
        Body::ContainerCreated {
            container_id,
            eval_id,
            image,
            limits,
        } => {
            w.str_field("container_id", container_id);
            w.str_field("eval_id", eval_id);
            w.str_field("image", image);
            w.map_field("limits", limits);
        }
        Body::ResourceViolation {
            container_id,
            violation_type,
            details,
        } => {
            w.str_field("container_id", container_id);
            w.str_field("violation_type", violation_type);
            w.map_field("details", details);
        }
    }
    for (key, value) in &event.extra {
        match value {
            Value::String(s) => text(&mut w, key, s),
            _ => {
                w.key(key);
                write_value(w.out, value, w.nul);
            }
        }
    }
    w.out.push(b'}');
}

/// Appends a JSON value (as `serde_json` would write it, but for `nul`).
pub fn write_value(out: &mut Vec<u8>, value: &Value, nul: Nul) {
    match value {
        Value::String(s) => write_str(out, s, nul),
        Value::Object(map) => write_map(out, map, nul),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, nul);
            }
            out.push(b']');
        }
        // null, booleans and numbers: serde_json's own formatting.
        other => serde_json::to_writer(&mut *out, other).expect("writing to memory"),
    }
}

pub fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>, nul: Nul) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k, nul);
        out.push(b':');
        write_value(out, v, nul);
    }
    out.push(b'}');
}

/// Whole numbers are written as integers (`30`, not `30.0`).
fn write_number(out: &mut Vec<u8>, x: f64) {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        out.extend_from_slice((x as i64).to_string().as_bytes());
    } else if x.is_finite() {
        serde_json::to_writer(&mut *out, &x).expect("writing to memory");
    } else {
        out.extend_from_slice(b"null");
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    nul: Nul,
    first: bool,
}

impl Writer<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key, self.nul);
        self.out.push(b':');
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.out, value, self.nul);
    }

    fn ts_field(&mut self, key: &str, ts: &DateTime<Utc>) {
        self.key(key);
        write_str(self.out, &format_ts(ts), self.nul);
    }

    fn map_field(&mut self, key: &str, map: &Map<String, Value>) {
        self.key(key);
        write_map(self.out, map, self.nul);
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `v` is a quote, a backslash or a control character.
fn needs_escape(v: u64) -> bool {
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let control = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
    (control | zero_in(v ^ (ONES * b'"' as u64)) | zero_in(v ^ (ONES * b'\\' as u64))) != 0
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str, nul: Nul) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip eight plain bytes at a time.
        if i + 8 <= bytes.len() {
            let chunk = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            if !needs_escape(chunk) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0 if nul == Nul::AsText => b"\\\\u0000",
            0x00..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str, nul: Nul) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s, nul);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        let samples = [
            "",
            "plain",
            "a longer plain string with no escapes at all, ünïcödé ✓ 😀",
            "quote \" backslash \\ newline \n tab \t cr \r",
            "controls \u{1} \u{1f} \u{8} \u{c} \u{7f}",
            "\"\"\"\"\"\"\"\"\"",
            "0123456\n",
            "01234567\n89abcdef\\",
            "nul \0 in the middle",
        ];
        for s in samples {
            assert_eq!(
                escaped(s, Nul::Escape),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
        assert_eq!(escaped("a\0b", Nul::AsText), r#""a\\u0000b""#);
    }

    #[test]
    fn values_round_trip() {
        let v: Value = serde_json::from_str(
            r#"{"a":[1,2.5,-3,true,false,null,"x\ny"],"b":{"c":{}},"d":1e300,"e":"\u0000"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_value(&mut out, &v, Nul::Escape);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        let mut pg = Vec::new();
        write_value(&mut pg, &v, Nul::AsText);
        let back: Value = serde_json::from_slice(&pg).unwrap();
        assert_eq!(back["e"], "\\u0000");
    }
}

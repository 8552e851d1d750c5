//! Events written back out as JSON text: the `payload` of PostgreSQL's `events`, console lines,
//! dead letters. Written straight from the event's fields (nothing is copied into a
//! `serde_json::Value` first), with a string escaper that skips over runs of plain bytes eight
//! at a time: event text is mostly long strings of code and output.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{Body, Event, format_ts};

/// Who reads the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Any JSON reader: NUL (U+0000) is escaped as `\u0000`, keys come in the event's order.
    Json,
    /// PostgreSQL's `jsonb`, which refuses `\u0000` (and NUL in `text`): NUL is written as the
    /// six characters `\u0000` (the escape of a backslash, then `u0000`). The members of each
    /// object come in jsonb's own order of keys, shorter first, then byte by byte: jsonb sorts
    /// every object it reads, and presorted keys spare it most of that work.
    Jsonb,
}

/// Appends `event` as one JSON object to `out`: `event_id`, `type`, `timestamp`, `tenant_id`,
/// the typed fields, then the extra fields (for [`Target::Jsonb`], in jsonb's order); a field
/// that split moved out is written as `{"ref", "size", "sha256", "preview"}` (jsonb's order too).
pub fn write_event(out: &mut Vec<u8>, event: &Event, target: Target) {
    write_event_without(out, event, target, &[]);
}

/// As [`write_event`], but leaves out the top-level string fields named in `left_out` (those
/// that split did not move out: a moved field is written as its reference).
pub fn write_event_without(out: &mut Vec<u8>, event: &Event, target: Target, left_out: &[&str]) {
    let mut w = Writer::open(out, target);
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
            write_str(w.out, &stored.key, w.target);
            w.out.extend_from_slice(b",\"size\":");
            w.out.extend_from_slice(stored.size.to_string().as_bytes());
            w.out.extend_from_slice(b",\"sha256\":");
            write_str(w.out, &stored.sha256, w.target);
            w.out.extend_from_slice(b",\"preview\":");
            write_str(w.out, value, w.target);
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
                write_value(w.out, value, w.target);
            }
        }
    }
    w.finish();
}

/// Appends a JSON value (as `serde_json` would write it, but for `target`).
pub fn write_value(out: &mut Vec<u8>, value: &Value, target: Target) {
    match value {
        Value::String(s) => write_str(out, s, target),
        Value::Object(map) => write_map(out, map, target),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, target);
            }
            out.push(b']');
        }
        // null, booleans and numbers: serde_json's own formatting.
        other => serde_json::to_writer(&mut *out, other).expect("writing to memory"),
    }
}

/// Appends a JSON object (for [`Target::Jsonb`], its members in jsonb's order).
pub fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>, target: Target) {
    let mut w = Writer::open(out, target);
    for (key, value) in map {
        w.key(key);
        write_value(w.out, value, target);
    }
    w.finish();
}

/// jsonb's order of keys: shorter first, then byte by byte.
fn jsonb_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
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

/// Writes the members of one object (from `{` to `}`, see [`Writer::finish`]).
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    target: Target,
    /// Where the object starts in `out`.
    start: usize,
    /// For [`Target::Jsonb`], where each member is in `out`, to be put in jsonb's order.
    members: Vec<Member>,
}

/// One member of an object, as ranges of the output: its key's text (without the quotes), and
/// the whole member, from the key's opening quote to the end of its value.
struct Member {
    key: Range<usize>,
    whole: Range<usize>,
}

impl<'a> Writer<'a> {
    /// Opens an object at the end of `out`.
    fn open(out: &'a mut Vec<u8>, target: Target) -> Writer<'a> {
        let start = out.len();
        out.push(b'{');
        Writer {
            out,
            target,
            start,
            members: Vec::new(),
        }
    }

    fn key(&mut self, key: &str) {
        self.end_member();
        if self.out.len() > self.start + 1 {
            self.out.push(b',');
        }
        let start = self.out.len();
        write_str(self.out, key, self.target);
        if self.target == Target::Jsonb {
            let key = start + 1..self.out.len() - 1;
            self.members.push(Member {
                key,
                whole: start..start,
            });
        }
        self.out.push(b':');
    }

    /// The last member's value ends where the output ends now.
    fn end_member(&mut self) {
        if let Some(last) = self.members.last_mut() {
            last.whole.end = self.out.len();
        }
    }

    /// Closes the object; for [`Target::Jsonb`], with its members in jsonb's order.
    fn finish(mut self) {
        self.end_member();
        let out = self.out;
        let order =
            |a: &Member, b: &Member| jsonb_key_order(&out[a.key.clone()], &out[b.key.clone()]);
        if !self.members.is_sorted_by(|a, b| order(a, b).is_le()) {
            self.members.sort_by(order);
            // The members in order after the body, then the body taken out: no buffer of its
            // own for each event.
            let body = self.start + 1..out.len();
            for (i, m) in self.members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_within(m.whole.clone());
            }
            out.drain(body);
        }
        out.push(b'}');
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.out, value, self.target);
    }

    fn ts_field(&mut self, key: &str, ts: &DateTime<Utc>) {
        self.key(key);
        write_str(self.out, &format_ts(ts), self.target);
    }

    fn map_field(&mut self, key: &str, map: &Map<String, Value>) {
        self.key(key);
        write_map(self.out, map, self.target);
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
pub fn write_str(out: &mut Vec<u8>, s: &str, target: Target) {
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
            0 if target == Target::Jsonb => b"\\\\u0000",
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

    fn escaped(s: &str, target: Target) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s, target);
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
                escaped(s, Target::Json),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
        assert_eq!(escaped("a\0b", Target::Jsonb), r#""a\\u0000b""#);
    }

    #[test]
    fn values_round_trip() {
        let v: Value = serde_json::from_str(
            r#"{"a":[1,2.5,-3,true,false,null,"x\ny"],"b":{"c":{}},"d":1e300,"e":"\u0000"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_value(&mut out, &v, Target::Json);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        let mut pg = Vec::new();
        write_value(&mut pg, &v, Target::Jsonb);
        let back: Value = serde_json::from_slice(&pg).unwrap();
        assert_eq!(back["e"], "\\u0000");
    }

    /// The keys of every object in `text`, depth first, each in the order of the text
    /// (`serde_json::Map` sorts them).
    fn keys(text: &[u8]) -> Vec<Vec<String>> {
        use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
        struct Collect<'a>(&'a mut Vec<Vec<String>>);
        impl<'de> DeserializeSeed<'de> for Collect<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for Collect<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                let at = self.0.len();
                self.0.push(Vec::new());
                while let Some(key) = map.next_key::<String>()? {
                    self.0[at].push(key);
                    map.next_value_seed(Collect(&mut *self.0))?;
                }
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Collect(&mut *self.0))?.is_some() {}
                Ok(())
            }
            fn visit_bool<E>(self, _: bool) -> Result<(), E> {
                Ok(())
            }
            fn visit_i64<E>(self, _: i64) -> Result<(), E> {
                Ok(())
            }
            fn visit_u64<E>(self, _: u64) -> Result<(), E> {
                Ok(())
            }
            fn visit_f64<E>(self, _: f64) -> Result<(), E> {
                Ok(())
            }
            fn visit_str<E>(self, _: &str) -> Result<(), E> {
                Ok(())
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                Ok(())
            }
        }
        let mut all = Vec::new();
        Collect(&mut all)
            .deserialize(&mut serde_json::Deserializer::from_slice(text))
            .unwrap();
        all
    }

    #[test]
    fn for_jsonb_the_keys_come_in_jsonb_order_and_the_value_is_the_same() {
        let lines = [
            r#"{"type":"EVALUATION_QUEUED","event_id":"e1","timestamp":"2026-01-01T00:00:00Z","tenant_id":"t","eval_id":"x","code":"print(1)","language":"py","engine":"docker","timeout":5,"metadata":{"zz":1,"a":{"bbb":2,"cc":3},"user_id":"u"},"extra_field":[{"k2":1,"k":2}],"z":null}"#,
            r#"{"type":"CONTAINER_CREATED","event_id":"e2","container_id":"c","eval_id":"x","image":"i","limits":{"memory_mb":1,"cpus":1,"pids":2,"network":"none"}}"#,
            r#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":2}"#,
        ];
        for line in lines {
            let event = crate::decode::decode_line(line.as_bytes(), Utc::now()).unwrap();
            let (mut json, mut jsonb) = (Vec::new(), Vec::new());
            write_event(&mut json, &event, Target::Json);
            write_event(&mut jsonb, &event, Target::Jsonb);
            assert_eq!(
                serde_json::from_slice::<Value>(&jsonb).unwrap(),
                serde_json::from_slice::<Value>(&json).unwrap(),
                "{line}"
            );
            for object in keys(&jsonb) {
                let mut sorted = object.clone();
                sorted.sort_by(|a, b| jsonb_key_order(a.as_bytes(), b.as_bytes()));
                assert_eq!(object, sorted, "{line}");
            }
            let first = keys(&json).remove(0);
            assert_eq!(first[..3], ["event_id", "type", "timestamp"], "{line}");
        }
    }
}

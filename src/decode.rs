//! Decoding: one NDJSON line into an [`Event`], parsed once, or into a dead letter with the
//! reason it was refused (SPEC.md, "Bad input").

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::event::{Body, Event, EventType, Routes};
use crate::sinks::dead_letter::{DeadLetter, Origin, Reason};
use crate::sources::lines::{TOO_LONG_PREFIX_BYTES, split_lines};
use crate::transforms::classify::Classification;

/// Why a line was refused, with a message for the dead letter record.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// The events and dead letters of one chunk of lines.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub dead: Vec<DeadLetter>,
    pub lines: u64,
}

/// Decodes every line of a chunk (see [`crate::sources::lines::Frame::Lines`]). Empty lines are
/// skipped; lines longer than `max_line_bytes` are refused as too long.
pub fn decode_chunk(
    data: &[u8],
    first_line: u64,
    origin: &Origin,
    max_line_bytes: usize,
    now: DateTime<Utc>,
) -> Decoded {
    let mut out = Decoded {
        events: Vec::with_capacity(data.len() / 2048 + 1),
        ..Decoded::default()
    };
    for (number, line) in split_lines(data, first_line) {
        out.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let result = if line.len() > max_line_bytes {
            Err(Refusal::new(
                Reason::LineTooLong,
                format!(
                    "line of {} bytes is over max_line_bytes ({max_line_bytes})",
                    line.len()
                ),
            ))
        } else {
            decode_line(line, now)
        };
        match result {
            Ok(event) => out.events.push(event),
            Err(refusal) => {
                let kept = if refusal.reason == Reason::LineTooLong {
                    &line[..line.len().min(TOO_LONG_PREFIX_BYTES)]
                } else {
                    line
                };
                let mut letter = DeadLetter::from_line(refusal, origin.at_line(number), kept);
                if kept.len() < line.len() {
                    letter.raw_bytes = Some(line.len() as u64);
                }
                out.dead.push(letter);
            }
        }
    }
    out
}

/// Parses one line (without its newline).
pub fn decode_line(line: &[u8], now: DateTime<Utc>) -> Result<Event, Refusal> {
    // serde_json accepts only valid UTF-8, so the (slower) UTF-8 check runs only to explain
    // a line it refused.
    let mut map: Map<String, Value> = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(Refusal::new(
                Reason::NotAnObject,
                format!("expected a JSON object, found {}", json_kind(&other)),
            ));
        }
        Err(e) => {
            return Err(match std::str::from_utf8(line) {
                Err(utf8) => Refusal::new(Reason::InvalidUtf8, format!("not valid UTF-8: {utf8}")),
                Ok(_) => Refusal::new(Reason::InvalidJson, e.to_string()),
            });
        }
    };
    let type_name = match map.remove("type") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            return Err(Refusal::new(Reason::MissingField, "missing field `type`"));
        }
        Some(other) => return Err(wrong_type("type", "a string", &other)),
    };
    let Some(event_type) = EventType::parse(&type_name) else {
        return Err(Refusal::new(
            Reason::UnknownType,
            format!("unknown event type {type_name:?}"),
        ));
    };
    let id = match optional_string(&mut map, "event_id")? {
        Some(id) if !id.is_empty() => id,
        _ => derive_event_id(line),
    };
    let ts = match map.remove("timestamp") {
        None | Some(Value::Null) => now,
        Some(v) => time_value("timestamp", v)?,
    };
    let tenant_id = optional_string(&mut map, "tenant_id")?;
    let mut fields = Fields(map);
    let body = match event_type {
        EventType::EvaluationQueued => Body::EvaluationQueued {
            eval_id: fields.string("eval_id")?,
            code: fields.string("code")?,
            language: fields.string("language")?,
            engine: fields.string("engine")?,
            timeout: fields.number("timeout")?,
            metadata: fields.object("metadata")?,
        },
        EventType::EvaluationStarted => Body::EvaluationStarted {
            eval_id: fields.string("eval_id")?,
            executor_id: fields.string("executor_id")?,
            start_time: fields.time("start_time")?,
        },
        EventType::EvaluationCompleted => Body::EvaluationCompleted {
            eval_id: fields.string("eval_id")?,
            output: fields.string("output")?,
            success: fields.boolean("success")?,
            end_time: fields.time("end_time")?,
        },
        EventType::EvaluationFailed => Body::EvaluationFailed {
            eval_id: fields.string("eval_id")?,
            error: fields.string("error")?,
            traceback: fields.string("traceback")?,
        },
        EventType::ExecutorHealth => Body::ExecutorHealth {
            executor_id: fields.string("executor_id")?,
            status: fields.string("status")?,
            metrics: fields.object("metrics")?,
        },
        EventType::QueueMetrics => Body::QueueMetrics {
            queue_length: fields.integer("queue_length")?,
            processing_count: fields.integer("processing_count")?,
        },
        EventType::ContainerCreated => Body::ContainerCreated {
            container_id: fields.string("container_id")?,
            eval_id: fields.string("eval_id")?,
            image: fields.string("image")?,
            limits: fields.object("limits")?,
        },
        EventType::ResourceViolation => Body::ResourceViolation {
            container_id: fields.string("container_id")?,
            violation_type: fields.string("violation_type")?,
            details: fields.object("details")?,
        },
    };
    Ok(Event {
        id,
        ts,
        tenant_id,
        body,
        extra: fields.0,
        stored: Vec::new(),
        // The built-in routes, so that a pipeline without classify still reaches its stores;
        // classify sets them from its own rules.
        routes: Classification::builtin()
            .routes(event_type)
            .unwrap_or(Routes::NONE),
        size: line.len() + 1,
    })
}

/// `event_id` for a line that has none: the first 128 bits of the sha256 of its bytes, so that
/// replaying the same line gives the same id.
pub fn derive_event_id(line: &[u8]) -> String {
    let digest = Sha256::digest(line.trim_ascii());
    hex::encode(&digest[..16])
}

/// The remaining fields of a line, taken out one by one as the type requires them.
struct Fields(Map<String, Value>);

impl Fields {
    fn take(&mut self, key: &str) -> Result<Value, Refusal> {
        match self.0.remove(key) {
            None | Some(Value::Null) => Err(Refusal::new(
                Reason::MissingField,
                format!("missing field `{key}`"),
            )),
            Some(v) => Ok(v),
        }
    }

    fn string(&mut self, key: &str) -> Result<String, Refusal> {
        match self.take(key)? {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(key, "a string", &other)),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<bool, Refusal> {
        match self.take(key)? {
            Value::Bool(b) => Ok(b),
            other => Err(wrong_type(key, "a boolean", &other)),
        }
    }

    fn number(&mut self, key: &str) -> Result<f64, Refusal> {
        match self.take(key)? {
            Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            other => Err(wrong_type(key, "a number", &other)),
        }
    }

    fn integer(&mut self, key: &str) -> Result<i64, Refusal> {
        match self.take(key)? {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(i),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(f as i64),
                    _ => Err(Refusal::new(
                        Reason::WrongType,
                        format!("field `{key}` must be an integer, found {n}"),
                    )),
                },
            },
            other => Err(wrong_type(key, "an integer", &other)),
        }
    }

    fn object(&mut self, key: &str) -> Result<Map<String, Value>, Refusal> {
        match self.take(key)? {
            Value::Object(m) => Ok(m),
            other => Err(wrong_type(key, "an object", &other)),
        }
    }

    fn time(&mut self, key: &str) -> Result<DateTime<Utc>, Refusal> {
        let v = self.take(key)?;
        time_value(key, v)
    }
}

fn optional_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, Refusal> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", &other)),
    }
}

/// A time is an RFC 3339 string, or a number of seconds since the Unix epoch.
fn time_value(key: &str, value: Value) -> Result<DateTime<Utc>, Refusal> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Refusal::new(
                    Reason::InvalidValue,
                    format!("field `{key}` is not an RFC 3339 time ({e}): {s:?}"),
                )
            }),
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            let whole = secs.floor();
            let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0);
            (whole.is_finite() && whole.abs() < 1e12)
                .then(|| DateTime::from_timestamp(whole as i64, nanos as u32))
                .flatten()
                .ok_or_else(|| {
                    Refusal::new(
                        Reason::InvalidValue,
                        format!("field `{key}` is not a Unix time in seconds: {n}"),
                    )
                })
        }
        other => Err(wrong_type(key, "an RFC 3339 string", &other)),
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> Refusal {
    Refusal::new(
        Reason::WrongType,
        format!(
            "field `{key}` must be {expected}, found {}",
            json_kind(found)
        ),
    )
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn reason(line: &[u8]) -> Reason {
        decode_line(line, now()).unwrap_err().reason
    }

    #[test]
    fn a_queued_event_with_extra_fields() {
        let line = br#"{"type":"EVALUATION_QUEUED","event_id":"e1","timestamp":"2026-03-01T10:00:00.5+01:00","eval_id":"ev1","code":"print(1)","language":"python","engine":"docker","timeout":30,"metadata":{"user":"u"},"tenant_id":"t1","priority":"high"}"#;
        let event = decode_line(line, now()).unwrap();
        assert_eq!(event.id, "e1");
        assert_eq!(event.ts.to_rfc3339(), "2026-03-01T09:00:00.500+00:00");
        assert_eq!(event.tenant_id.as_deref(), Some("t1"));
        assert_eq!(event.eval_id(), Some("ev1"));
        assert_eq!(event.extra.get("priority"), Some(&Value::from("high")));
        assert_eq!(event.extra.len(), 1);
        match event.body {
            Body::EvaluationQueued { timeout, .. } => assert_eq!(timeout, 30.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_event_id_is_derived_from_the_bytes() {
        let line = br#"{"type":"QUEUE_METRICS","queue_length":3,"processing_count":1}"#;
        let a = decode_line(line, now()).unwrap();
        let b = decode_line(line, now()).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(a.ts, now(), "no timestamp: the time of ingestion");
        let other = br#"{"type":"QUEUE_METRICS","queue_length":4,"processing_count":1}"#;
        assert_ne!(decode_line(other, now()).unwrap().id, a.id);
    }

    #[test]
    fn every_reason() {
        assert_eq!(reason(b"\xff\xfe{}"), Reason::InvalidUtf8);
        assert_eq!(reason(b"{not json"), Reason::InvalidJson);
        assert_eq!(reason(b"[1,2]"), Reason::NotAnObject);
        assert_eq!(reason(b"\"text\""), Reason::NotAnObject);
        assert_eq!(reason(br#"{"type":"NOPE"}"#), Reason::UnknownType);
        assert_eq!(reason(br#"{"eval_id":"x"}"#), Reason::MissingField);
        assert_eq!(
            reason(br#"{"type":"EVALUATION_STARTED","eval_id":"x","executor_id":"e"}"#),
            Reason::MissingField
        );
        assert_eq!(
            reason(
                br#"{"type":"EVALUATION_STARTED","eval_id":7,"executor_id":"e","start_time":"2026-01-01T00:00:00Z"}"#
            ),
            Reason::WrongType
        );
        assert_eq!(
            reason(br#"{"type":"QUEUE_METRICS","queue_length":"3","processing_count":1}"#),
            Reason::WrongType
        );
        assert_eq!(
            reason(
                br#"{"type":"EVALUATION_STARTED","eval_id":"x","executor_id":"e","start_time":"yesterday"}"#
            ),
            Reason::InvalidValue
        );
    }

    #[test]
    fn a_chunk_with_bad_lines_keeps_the_good_ones() {
        let data = b"{\"type\":\"QUEUE_METRICS\",\"queue_length\":1,\"processing_count\":0}\r\n\nnope\n{\"type\":\"QUEUE_METRICS\",\"queue_length\":2,\"processing_count\":0}";
        let origin = Origin::stdin();
        let out = decode_chunk(data, 10, &origin, 1000, now());
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.dead.len(), 1);
        assert_eq!(out.dead[0].reason, Reason::InvalidJson);
        assert_eq!(out.dead[0].origin.line, Some(12));
        assert_eq!(out.lines, 4);
    }

    #[test]
    fn numbers_as_unix_seconds() {
        let line = br#"{"type":"EVALUATION_COMPLETED","eval_id":"x","output":"","success":true,"end_time":1767225600.25}"#;
        match decode_line(line, now()).unwrap().body {
            Body::EvaluationCompleted { end_time, .. } => {
                assert_eq!(end_time.to_rfc3339(), "2026-01-01T00:00:00.250+00:00")
            }
            other => panic!("{other:?}"),
        }
    }
}

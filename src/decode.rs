//! Decoding: one NDJSON line into an [`Event`], parsed once, or into a dead letter with the
//! reason it was refused (SPEC.md, "Bad input").

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::event::{Body, Event, EventType, Routes};
use crate::sinks::dead_letter::{DeadLetter, Origin, Reason};
use crate::sources::lines::{TOO_LONG_PREFIX_BYTES, split_lines};
use crate::transforms::classify::Classification;

mod scan;

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

/// Parses one line (without its newline), straight into the typed fields: no intermediate
/// JSON object is built, and known keys are never allocated.
pub fn decode_line(line: &[u8], now: DateTime<Utc>) -> Result<Event, Refusal> {
    let raw = match scan::parse(line) {
        Some(raw) => raw,
        None => slow_parse(line)?,
    };
    let RawEvent {
        type_name,
        event_id,
        timestamp,
        tenant_id,
        slots,
        extra,
        may_hold_nul,
    } = raw;
    let event_type = match type_name {
        None | Some(TypeName::Null) => {
            return Err(Refusal::new(Reason::MissingField, "missing field `type`"));
        }
        Some(TypeName::Known(t)) => t,
        Some(TypeName::Unknown(name)) => {
            return Err(Refusal::new(
                Reason::UnknownType,
                format!("unknown event type {name:?}"),
            ));
        }
        Some(TypeName::Other(kind)) => return Err(wrong_kind("type", "a string", kind)),
    };
    let id = match optional_string("event_id", event_id)? {
        Some(id) if !id.is_empty() => id,
        _ => derive_event_id(line),
    };
    let ts = match timestamp {
        None | Some(Time::Null) => now,
        Some(Time::Parsed(t)) => t,
        Some(Time::Other(v)) => time_value("timestamp", v)?,
        Some(Time::Kind(kind)) => return Err(wrong_kind("timestamp", "an RFC 3339 string", kind)),
    };
    let tenant_id = optional_string("tenant_id", tenant_id)?;
    let mut fields = Fields { slots, extra };
    let body = match event_type {
        EventType::EvaluationQueued => Body::EvaluationQueued {
            eval_id: fields.string(Field::EvalId)?,
            code: fields.string(Field::Code)?,
            language: fields.string(Field::Language)?,
            engine: fields.string(Field::Engine)?,
            timeout: fields.number(Field::Timeout)?,
            metadata: fields.object(Field::Metadata)?,
        },
        EventType::EvaluationStarted => Body::EvaluationStarted {
            eval_id: fields.string(Field::EvalId)?,
            executor_id: fields.string(Field::ExecutorId)?,
            start_time: fields.time(Field::StartTime)?,
        },
        EventType::EvaluationCompleted => Body::EvaluationCompleted {
            eval_id: fields.string(Field::EvalId)?,
            output: fields.string(Field::Output)?,
            success: fields.boolean(Field::Success)?,
            end_time: fields.time(Field::EndTime)?,
        },
        EventType::EvaluationFailed => Body::EvaluationFailed {
            eval_id: fields.string(Field::EvalId)?,
            error: fields.string(Field::Error)?,
            traceback: fields.string(Field::Traceback)?,
        },
        EventType::ExecutorHealth => Body::ExecutorHealth {
            executor_id: fields.string(Field::ExecutorId)?,
            status: fields.string(Field::Status)?,
            metrics: fields.object(Field::Metrics)?,
        },
        EventType::QueueMetrics => Body::QueueMetrics {
            queue_length: fields.integer(Field::QueueLength)?,
            processing_count: fields.integer(Field::ProcessingCount)?,
        },
        EventType::ContainerCreated => Body::ContainerCreated {
            container_id: fields.string(Field::ContainerId)?,
            eval_id: fields.string(Field::EvalId)?,
            image: fields.string(Field::Image)?,
            limits: fields.object(Field::Limits)?,
        },
        EventType::ResourceViolation => Body::ResourceViolation {
            container_id: fields.string(Field::ContainerId)?,
            violation_type: fields.string(Field::ViolationType)?,
            details: fields.object(Field::Details)?,
        },
    };
    Ok(Event {
        id,
        ts,
        tenant_id,
        body,
        extra: fields.into_extra(),
        stored: Vec::new(),
        may_hold_nul,
        // The built-in routes, so that a pipeline without classify still reaches its stores;
        // classify sets them from its own rules.
        routes: Classification::builtin()
            .routes(event_type)
            .unwrap_or(Routes::NONE),
        size: line.len() + 1,
    })
}

/// Parses a line with serde_json alone: the fast path's fallback, which also explains what is
/// wrong with a bad line.
fn slow_parse(line: &[u8]) -> Result<RawEvent, Refusal> {
    // serde_json accepts only valid UTF-8, so the (slower) UTF-8 check runs only to explain
    // a line it refused.
    let parsed = match serde_json::from_slice::<Line>(line) {
        // Valid JSON that holds no Unicode text (Python's json.dumps writes undecodable bytes
        // this way): each lone surrogate becomes U+FFFD, as Go's and JavaScript's decoders do.
        Err(e) if e.to_string().contains("surrogate") => match replace_lone_surrogates(line) {
            Some(fixed) => serde_json::from_slice::<Line>(&fixed).map_err(|_| e),
            None => Err(e),
        },
        other => other,
    };
    match parsed {
        Ok(Line::Object(raw)) => Ok(*raw),
        Ok(Line::Other(kind)) => Err(Refusal::new(
            Reason::NotAnObject,
            format!("expected a JSON object, found {kind}"),
        )),
        Err(e) => Err(match std::str::from_utf8(line) {
            Err(utf8) => Refusal::new(Reason::InvalidUtf8, format!("not valid UTF-8: {utf8}")),
            Ok(_) => Refusal::new(Reason::InvalidJson, e.to_string()),
        }),
    }
}

/// `line` with every `\uD800`–`\uDFFF` escape that is not half of a pair written as
/// `\uFFFD`; `None` when there is none.
fn replace_lone_surrogates(line: &[u8]) -> Option<Vec<u8>> {
    let unit = |at: usize| -> Option<u16> {
        let hex = line.get(at + 2..at + 6)?;
        if line.get(at + 1) != Some(&b'u') {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(line.len());
    let mut changed = false;
    let mut i = 0;
    while i < line.len() {
        if line[i] != b'\\' {
            out.push(line[i]);
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => {
                out.extend_from_slice(&line[i..i + 12]);
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.extend_from_slice(b"\\ufffd");
                changed = true;
                i += 6;
            }
            // Any other escape: copy it whole, so that an escaped backslash is not read as the
            // start of another escape.
            _ => {
                let end = (i + 2).min(line.len());
                out.extend_from_slice(&line[i..end]);
                i = end;
            }
        }
    }
    changed.then_some(out)
}

/// `event_id` for a line that has none: the first 128 bits of the sha256 of its bytes, so that
/// replaying the same line gives the same id.
pub fn derive_event_id(line: &[u8]) -> String {
    let digest = Sha256::digest(line.trim_ascii());
    hex::encode(&digest[..16])
}

/// A field that some event type defines. A line may carry any of them whatever its type; those
/// its type does not define are extra fields, kept under their name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    EvalId,
    Code,
    Language,
    Engine,
    Timeout,
    Metadata,
    ExecutorId,
    StartTime,
    Output,
    Success,
    EndTime,
    Error,
    Traceback,
    Status,
    Metrics,
    QueueLength,
    ProcessingCount,
    ContainerId,
    Image,
    Limits,
    ViolationType,
    Details,
}

impl Field {
    const COUNT: usize = Field::Details as usize + 1;

    const NAMES: [&'static str; Field::COUNT] = [
        "eval_id",
        "code",
        "language",
        "engine",
        "timeout",
        "metadata",
        "executor_id",
        "start_time",
        "output",
        "success",
        "end_time",
        "error",
        "traceback",
        "status",
        "metrics",
        "queue_length",
        "processing_count",
        "container_id",
        "image",
        "limits",
        "violation_type",
        "details",
    ];

    fn name(self) -> &'static str {
        Field::NAMES[self as usize]
    }
}

/// A key of the line's object.
enum Key {
    Type,
    EventId,
    Timestamp,
    TenantId,
    Field(Field),
    Other(String),
}

impl Key {
    fn of(name: &str) -> Key {
        use Field::*;
        match name {
            "type" => Key::Type,
            "event_id" => Key::EventId,
            "timestamp" => Key::Timestamp,
            "tenant_id" => Key::TenantId,
            "eval_id" => Key::Field(EvalId),
            "code" => Key::Field(Code),
            "language" => Key::Field(Language),
            "engine" => Key::Field(Engine),
            "timeout" => Key::Field(Timeout),
            "metadata" => Key::Field(Metadata),
            "executor_id" => Key::Field(ExecutorId),
            "start_time" => Key::Field(StartTime),
            "output" => Key::Field(Output),
            "success" => Key::Field(Success),
            "end_time" => Key::Field(EndTime),
            "error" => Key::Field(Error),
            "traceback" => Key::Field(Traceback),
            "status" => Key::Field(Status),
            "metrics" => Key::Field(Metrics),
            "queue_length" => Key::Field(QueueLength),
            "processing_count" => Key::Field(ProcessingCount),
            "container_id" => Key::Field(ContainerId),
            "image" => Key::Field(Image),
            "limits" => Key::Field(Limits),
            "violation_type" => Key::Field(ViolationType),
            "details" => Key::Field(Details),
            other => Key::Other(other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::of(name))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// What a line is, as far as the JSON goes.
enum Line {
    Object(Box<RawEvent>),
    /// Valid JSON, but not an object: what it is instead ("an array").
    Other(&'static str),
}

/// The line's object, sorted into slots by key; nothing is checked against the type yet (the
/// `type` key may come last).
struct RawEvent {
    type_name: Option<TypeName>,
    event_id: Option<Value>,
    timestamp: Option<Time>,
    tenant_id: Option<Value>,
    slots: [Option<Value>; Field::COUNT],
    extra: Map<String, Value>,
    /// See [`Event::may_hold_nul`]; only the fast path finds out.
    may_hold_nul: bool,
}

impl RawEvent {
    fn empty() -> RawEvent {
        RawEvent {
            type_name: None,
            event_id: None,
            timestamp: None,
            tenant_id: None,
            slots: Default::default(),
            extra: Map::new(),
            may_hold_nul: true,
        }
    }
}

/// The value of `type`, read without allocating when it is a known name.
enum TypeName {
    Known(EventType),
    Unknown(String),
    Null,
    /// Not a string: what it is instead.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TypeName, D::Error> {
        struct TypeVisitor;
        impl<'de> Visitor<'de> for TypeVisitor {
            type Value = TypeName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<TypeName, E> {
                Ok(EventType::parse(name)
                    .map_or_else(|| TypeName::Unknown(name.to_string()), TypeName::Known))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TypeName, E> {
                Ok(TypeName::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TypeName, E> {
                Ok(TypeName::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TypeName, E> {
                Ok(TypeName::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TypeName, E> {
                Ok(TypeName::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TypeName, E> {
                Ok(TypeName::Other("a number"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TypeName, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TypeName::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TypeName, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TypeName::Other("an object"))
            }
        }
        deserializer.deserialize_any(TypeVisitor)
    }
}

/// The value of `timestamp`: an RFC 3339 string is parsed as it is read (no allocation).
enum Time {
    Parsed(DateTime<Utc>),
    Null,
    /// A number, or a string that does not parse: checked by [`time_value`].
    Other(Value),
    /// Neither a string nor a number: what it is instead.
    Kind(&'static str),
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Time, D::Error> {
        struct TimeVisitor;
        impl<'de> Visitor<'de> for TimeVisitor {
            type Value = Time;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Time, E> {
                Ok(match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => Time::Parsed(t.with_timezone(&Utc)),
                    Err(_) => Time::Other(Value::String(s.to_string())),
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Time, E> {
                Ok(Time::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Time, E> {
                Ok(Time::Kind("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Time, E> {
                Ok(Time::Other(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Time, E> {
                Ok(Time::Other(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Time, E> {
                Ok(Time::Other(v.into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Time, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Time::Kind("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Time, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Time::Kind("an object"))
            }
        }
        deserializer.deserialize_any(TimeVisitor)
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Line, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
                let mut raw = Box::new(RawEvent::empty());
                // A repeated key keeps its last value, as serde_json's own objects do.
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Type => raw.type_name = Some(map.next_value()?),
                        Key::EventId => raw.event_id = Some(map.next_value()?),
                        Key::Timestamp => raw.timestamp = Some(map.next_value()?),
                        Key::TenantId => raw.tenant_id = Some(map.next_value()?),
                        Key::Field(f) => raw.slots[f as usize] = Some(map.next_value()?),
                        Key::Other(name) => {
                            raw.extra.insert(name, map.next_value()?);
                        }
                    }
                }
                Ok(Line::Object(raw))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Line, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Line::Other("an array"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Line, E> {
                Ok(Line::Other("a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Line, E> {
                Ok(Line::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Line, E> {
                Ok(Line::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Line, E> {
                Ok(Line::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Line, E> {
                Ok(Line::Other("a number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Line, E> {
                Ok(Line::Other("null"))
            }
        }
        deserializer.deserialize_any(LineVisitor)
    }
}

/// The fields of a line, taken out one by one as its type requires them; the rest are extra.
struct Fields {
    slots: [Option<Value>; Field::COUNT],
    extra: Map<String, Value>,
}

impl Fields {
    fn take(&mut self, field: Field) -> Result<Value, Refusal> {
        match self.slots[field as usize].take() {
            None | Some(Value::Null) => Err(Refusal::new(
                Reason::MissingField,
                format!("missing field `{}`", field.name()),
            )),
            Some(v) => Ok(v),
        }
    }

    fn string(&mut self, field: Field) -> Result<String, Refusal> {
        match self.take(field)? {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(field.name(), "a string", &other)),
        }
    }

    fn boolean(&mut self, field: Field) -> Result<bool, Refusal> {
        match self.take(field)? {
            Value::Bool(b) => Ok(b),
            other => Err(wrong_type(field.name(), "a boolean", &other)),
        }
    }

    fn number(&mut self, field: Field) -> Result<f64, Refusal> {
        match self.take(field)? {
            Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            other => Err(wrong_type(field.name(), "a number", &other)),
        }
    }

    fn integer(&mut self, field: Field) -> Result<i64, Refusal> {
        let key = field.name();
        match self.take(field)? {
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

    fn object(&mut self, field: Field) -> Result<Map<String, Value>, Refusal> {
        match self.take(field)? {
            Value::Object(m) => Ok(m),
            other => Err(wrong_type(field.name(), "an object", &other)),
        }
    }

    fn time(&mut self, field: Field) -> Result<DateTime<Utc>, Refusal> {
        let v = self.take(field)?;
        time_value(field.name(), v)
    }

    /// The extra fields: those of no known name, and known ones that the type does not define.
    fn into_extra(self) -> Map<String, Value> {
        let mut extra = self.extra;
        for (i, slot) in self.slots.into_iter().enumerate() {
            if let Some(v) = slot {
                extra.insert(Field::NAMES[i].to_string(), v);
            }
        }
        extra
    }
}

fn optional_string(key: &str, value: Option<Value>) -> Result<Option<String>, Refusal> {
    match value {
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
    wrong_kind(key, expected, json_kind(found))
}

fn wrong_kind(key: &str, expected: &str, found: &str) -> Refusal {
    Refusal::new(
        Reason::WrongType,
        format!("field `{key}` must be {expected}, found {found}"),
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

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let line = br#"{"type":"EVALUATION_COMPLETED","eval_id":"e","output":"a\udc80b \ud83d\ude00 \\ud800 \ud800","success":true,"end_time":"2026-01-01T00:00:00Z"}"#;
        let event = decode_line(line, Utc::now()).unwrap();
        let Body::EvaluationCompleted { output, .. } = &event.body else {
            panic!("{event:?}");
        };
        assert_eq!(output, "a\u{fffd}b \u{1f600} \\ud800 \u{fffd}");
        assert_eq!(
            event.id,
            derive_event_id(line),
            "the id is the line's as read"
        );
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn reason(line: &[u8]) -> Reason {
        decode_line(line, now()).unwrap_err().reason
    }

    #[test]
    fn an_event_may_hold_nul_only_when_its_line_escapes_one() {
        let metrics = |value: &str| {
            let line = format!(
                r#"{{"type":"EXECUTOR_HEALTH","executor_id":"x","status":"ok","metrics":{value}}}"#
            );
            decode_line(line.as_bytes(), now()).unwrap().may_hold_nul
        };
        assert!(!metrics(r#"{"a":"\\n","b":[1]}"#));
        assert!(metrics(r#"{"a":["\u0000"]}"#), "in a nested value");
        assert!(metrics(r#"{"\u0000":1}"#), "in a nested key");
        let line = br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":2,"k\u0000":1}"#;
        assert!(decode_line(line, now()).unwrap().may_hold_nul, "in a key");
        let line = br#"{"type":"EVALUATION_STARTED","eval_id":"e\u0000","executor_id":"x","start_time":"2026-01-01T00:00:00Z"}"#;
        assert!(
            decode_line(line, now()).unwrap().may_hold_nul,
            "in a string"
        );
        let line =
            b"{\"type\":\"QUEUE_METRICS\",\"queue_length\":1,\"processing_count\":2,\n\"x\":1}";
        assert!(
            decode_line(line, now()).unwrap().may_hold_nul,
            "a line that only serde_json reads may"
        );
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
    fn known_names_of_other_types_are_extra_fields_and_type_may_come_last() {
        let line = br#"{"queue_length":1,"processing_count":0,"eval_id":5,"code":{"a":1},"x":[1,{"y":null}],"timestamp":null,"\u0074ype":"QUEUE_METRICS"}"#;
        let event = decode_line(line, now()).unwrap();
        assert_eq!(event.event_type(), EventType::QueueMetrics);
        assert_eq!(event.ts, now(), "a null timestamp is the time of ingestion");
        assert_eq!(event.extra.get("eval_id"), Some(&Value::from(5)));
        assert_eq!(event.extra.get("code"), Some(&serde_json::json!({"a": 1})));
        assert_eq!(event.extra.len(), 3);
        // A repeated key keeps its last value.
        let twice =
            br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":0,"queue_length":7}"#;
        match decode_line(twice, now()).unwrap().body {
            Body::QueueMetrics { queue_length, .. } => assert_eq!(queue_length, 7),
            other => panic!("{other:?}"),
        }
        // Wrong types of the envelope fields.
        for line in [
            br#"{"type":7}"#.as_slice(),
            br#"{"type":{"a":[1]}}"#,
            br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":0,"timestamp":[1]}"#,
            br#"{"type":"QUEUE_METRICS","queue_length":1,"processing_count":0,"event_id":1}"#,
        ] {
            assert_eq!(
                reason(line),
                Reason::WrongType,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(reason(b"[1,2] x"), Reason::InvalidJson);
        assert_eq!(reason(b"null"), Reason::NotAnObject);
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

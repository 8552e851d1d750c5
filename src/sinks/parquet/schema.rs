//! The columns of each event type's dataset, and the Arrow record batches built straight from
//! the typed [`Body`] (no JSON round trip): `event_id`, `ts`, `eval_id`, `tenant_id`, the
//! type's known fields, and `payload` (the other fields as JSON text).

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{Body, Event, EventType};

/// How a column is typed in Arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    /// An object of the event, as JSON text.
    Json,
    /// Timestamp(Microsecond, "UTC").
    Timestamp,
    Float,
    Int,
    Bool,
}

/// How a column is encoded in Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Few distinct values (language, status, image): dictionary encoded.
    Dictionary,
    /// Mostly distinct short values (ids, timestamps, numbers): plain.
    Plain,
    /// Long text (code, output, traceback): plain, and no min/max statistics, which cost time
    /// and are of no use on such values.
    Long,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
    pub encoding: Encoding,
}

const fn col(name: &'static str, kind: Kind, encoding: Encoding) -> Column {
    Column {
        name,
        kind,
        nullable: false,
        encoding,
    }
}

const fn nullable(name: &'static str, kind: Kind, encoding: Encoding) -> Column {
    Column {
        name,
        kind,
        nullable: true,
        encoding,
    }
}

/// A string field that the split transform may move to object storage: the field holds its
/// preview then, and three more columns say where the whole text is.
const fn long_text(name: &'static str) -> Column {
    col(name, Kind::Text, Encoding::Long)
}

macro_rules! stored_columns {
    ($field:literal) => {
        [
            nullable(concat!($field, "_ref"), Kind::Text, Encoding::Plain),
            col(concat!($field, "_size"), Kind::Int, Encoding::Plain),
            nullable(concat!($field, "_sha256"), Kind::Text, Encoding::Plain),
        ]
    };
}

/// The columns of `event_type`'s dataset, in order. [`append`] fills them in the same order.
pub(crate) fn columns(event_type: EventType) -> Vec<Column> {
    use Encoding::{Dictionary, Long, Plain};
    use Kind::{Bool, Float, Int, Json, Text, Timestamp};
    let has_eval_id = matches!(
        event_type,
        EventType::EvaluationQueued
            | EventType::EvaluationStarted
            | EventType::EvaluationCompleted
            | EventType::EvaluationFailed
            | EventType::ContainerCreated
    );
    let mut c = vec![
        col("event_id", Text, Plain),
        col("ts", Timestamp, Plain),
        Column {
            nullable: !has_eval_id,
            ..col("eval_id", Text, Plain)
        },
        nullable("tenant_id", Text, Dictionary),
    ];
    match event_type {
        EventType::EvaluationQueued => {
            c.push(long_text("code"));
            c.extend(stored_columns!("code"));
            c.extend([
                col("language", Text, Dictionary),
                col("engine", Text, Dictionary),
                col("timeout", Float, Dictionary),
                col("metadata", Json, Long),
            ]);
        }
        EventType::EvaluationStarted => c.extend([
            col("executor_id", Text, Dictionary),
            col("start_time", Timestamp, Plain),
        ]),
        EventType::EvaluationCompleted => {
            c.push(long_text("output"));
            c.extend(stored_columns!("output"));
            c.extend([
                col("success", Bool, Plain),
                col("end_time", Timestamp, Plain),
            ]);
        }
        EventType::EvaluationFailed => {
            c.push(long_text("error"));
            c.extend(stored_columns!("error"));
            c.push(long_text("traceback"));
            c.extend(stored_columns!("traceback"));
        }
        EventType::ExecutorHealth => c.extend([
            col("executor_id", Text, Dictionary),
            col("status", Text, Dictionary),
            col("metrics", Json, Plain),
        ]),
        EventType::QueueMetrics => c.extend([
            col("queue_length", Int, Plain),
            col("processing_count", Int, Plain),
        ]),
        EventType::ContainerCreated => c.extend([
            col("container_id", Text, Plain),
            col("image", Text, Dictionary),
            col("limits", Json, Dictionary),
        ]),
        EventType::ResourceViolation => c.extend([
            col("container_id", Text, Plain),
            col("violation_type", Text, Dictionary),
            col("details", Json, Plain),
        ]),
    }
    c.push(col("payload", Json, Dictionary));
    c
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Text | Kind::Json => DataType::Utf8,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Kind::Float => DataType::Float64,
        Kind::Int => DataType::Int64,
        Kind::Bool => DataType::Boolean,
    }
}

/// The Arrow schema of `event_type`'s dataset (built once).
pub(crate) fn schema(event_type: EventType) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        EventType::ALL
            .into_iter()
            .map(|t| {
                let fields: Vec<Field> = columns(t)
                    .iter()
                    .map(|c| Field::new(c.name, data_type(c.kind), c.nullable))
                    .collect();
                Arc::new(Schema::new(fields))
            })
            .collect()
    })[event_type.index()]
    .clone()
}

/// One Arrow builder per column.
enum Builder {
    Text(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn new(kind: Kind, rows: usize, text_bytes: usize) -> Builder {
        match kind {
            Kind::Text | Kind::Json => {
                Builder::Text(StringBuilder::with_capacity(rows, text_bytes))
            }
            Kind::Timestamp => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            Kind::Float => Builder::Float(Float64Builder::with_capacity(rows)),
            Kind::Int => Builder::Int(Int64Builder::with_capacity(rows)),
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds the record batches of one event type, row by row.
pub(crate) struct BatchBuilder {
    event_type: EventType,
    builders: Vec<Builder>,
    /// Reused buffer for JSON text.
    json: Vec<u8>,
    rows: usize,
}

impl BatchBuilder {
    /// A builder for about `rows` events of `event_type` carrying about `bytes` of input.
    pub(crate) fn new(event_type: EventType, rows: usize, bytes: usize) -> BatchBuilder {
        let builders = columns(event_type)
            .iter()
            .map(|c| {
                // Long text takes most of the input; short columns a few dozen bytes a row.
                let text = if c.encoding == Encoding::Long {
                    bytes
                } else {
                    rows * 24
                };
                Builder::new(c.kind, rows, text)
            })
            .collect();
        BatchBuilder {
            event_type,
            builders,
            json: Vec::new(),
            rows: 0,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Adds one event (of this builder's type) as a row.
    pub(crate) fn append(&mut self, event: &Event) {
        debug_assert_eq!(event.event_type(), self.event_type);
        let mut row = Row {
            builders: &mut self.builders,
            next: 0,
            json: &mut self.json,
        };
        append(event, &mut row);
        debug_assert_eq!(row.next, row.builders.len(), "every column filled");
        self.rows += 1;
    }

    /// The rows added so far as a record batch; the builder is empty afterwards.
    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(schema(self.event_type), arrays)
    }
}

/// The builders of one row, filled in column order.
struct Row<'a> {
    builders: &'a mut [Builder],
    next: usize,
    json: &'a mut Vec<u8>,
}

impl Row<'_> {
    fn builder(&mut self) -> &mut Builder {
        let b = &mut self.builders[self.next];
        self.next += 1;
        b
    }

    fn text(&mut self, value: &str) {
        self.opt_text(Some(value));
    }

    fn opt_text(&mut self, value: Option<&str>) {
        match self.builder() {
            Builder::Text(b) => b.append_option(value),
            _ => unreachable!("columns() and append() disagree on a text column"),
        }
    }

    fn json(&mut self, map: &Map<String, Value>) {
        self.json.clear();
        if map.is_empty() {
            self.json.extend_from_slice(b"{}");
        } else {
            // Writing a map of JSON values to memory cannot fail.
            serde_json::to_writer(&mut *self.json, map).expect("JSON to memory");
        }
        let text = std::str::from_utf8(self.json).expect("serde_json writes UTF-8");
        match &mut self.builders[self.next] {
            Builder::Text(b) => b.append_value(text),
            _ => unreachable!("columns() and append() disagree on a JSON column"),
        }
        self.next += 1;
    }

    fn timestamp(&mut self, ts: &DateTime<Utc>) {
        match self.builder() {
            Builder::Timestamp(b) => b.append_value(ts.timestamp_micros()),
            _ => unreachable!("columns() and append() disagree on a timestamp column"),
        }
    }

    fn float(&mut self, value: f64) {
        match self.builder() {
            Builder::Float(b) => b.append_value(value),
            _ => unreachable!("columns() and append() disagree on a float column"),
        }
    }

    fn int(&mut self, value: i64) {
        match self.builder() {
            Builder::Int(b) => b.append_value(value),
            _ => unreachable!("columns() and append() disagree on an integer column"),
        }
    }

    fn bool(&mut self, value: bool) {
        match self.builder() {
            Builder::Bool(b) => b.append_value(value),
            _ => unreachable!("columns() and append() disagree on a boolean column"),
        }
    }

    /// A long text field and its `_ref`, `_size` and `_sha256` columns: the reference when
    /// split stored the text outside (the field then holds the preview), else the text's size.
    fn long_text(&mut self, event: &Event, field: &str, value: &str) {
        self.text(value);
        match event.stored(field) {
            Some(stored) => {
                self.text(&stored.key);
                self.int(i64::try_from(stored.size).unwrap_or(i64::MAX));
                self.text(&stored.sha256);
            }
            None => {
                self.opt_text(None);
                self.int(value.len() as i64);
                self.opt_text(None);
            }
        }
    }
}

/// Fills one row in the order of [`columns`].
fn append(event: &Event, row: &mut Row<'_>) {
    row.text(&event.id);
    row.timestamp(&event.ts);
    row.opt_text(event.eval_id());
    row.opt_text(event.tenant_id.as_deref());
    match &event.body {
        Body::EvaluationQueued {
            code,
            language,
            engine,
            timeout,
            metadata,
            ..
        } => {
            row.long_text(event, "code", code);
            row.text(language);
            row.text(engine);
            row.float(*timeout);
            row.json(metadata);
        }
        Body::EvaluationStarted {
            executor_id,
            start_time,
            ..
        } => {
            row.text(executor_id);
            row.timestamp(start_time);
        }
        Body::EvaluationCompleted {
            output,
            success,
            end_time,
            ..
        } => {
            row.long_text(event, "output", output);
            row.bool(*success);
            row.timestamp(end_time);
        }
        Body::EvaluationFailed {
            error, traceback, ..
        } => {
            row.long_text(event, "error", error);
            row.long_text(event, "traceback", traceback);
        }
        Body::ExecutorHealth {
            executor_id,
            status,
            metrics,
        } => {
            row.text(executor_id);
            row.text(status);
            row.json(metrics);
        }
        Body::QueueMetrics {
            queue_length,
            processing_count,
        } => {
            row.int(*queue_length);
            row.int(*processing_count);
        }
        Body::ContainerCreated {
            container_id,
            image,
            limits,
            ..
        } => {
            row.text(container_id);
            row.text(image);
            row.json(limits);
        }
        Body::ResourceViolation {
            container_id,
            violation_type,
            details,
        } => {
            row.text(container_id);
            row.text(violation_type);
            row.json(details);
        }
    }
    row.json(&event.extra);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Routes, StoredField};
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
    use serde_json::json;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// One event of every type, with values in every column.
    pub(crate) fn sample_events() -> Vec<Event> {
        let t = ts("2026-03-04T05:06:07.123456Z");
        let bodies = vec![
            Body::EvaluationQueued {
                eval_id: "e1".into(),
                code: "print(1)".into(),
                language: "python".into(),
                engine: "docker".into(),
                timeout: 30.5,
                metadata: obj(json!({"user": "u1", "n": 2})),
            },
            Body::EvaluationStarted {
                eval_id: "e1".into(),
                executor_id: "x1".into(),
                start_time: ts("2026-03-04T05:06:08Z"),
            },
            Body::EvaluationCompleted {
                eval_id: "e1".into(),
                output: "preview".into(),
                success: true,
                end_time: ts("2026-03-04T05:06:09.5Z"),
            },
            Body::EvaluationFailed {
                eval_id: "e2".into(),
                error: "boom".into(),
                traceback: "Traceback\n  line 1".into(),
            },
            Body::ExecutorHealth {
                executor_id: "x1".into(),
                status: "healthy".into(),
                metrics: obj(json!({"cpu": 12.5})),
            },
            Body::QueueMetrics {
                queue_length: 7,
                processing_count: -3,
            },
            Body::ContainerCreated {
                container_id: "c1".into(),
                eval_id: "e1".into(),
                image: "python:3.12".into(),
                limits: obj(json!({"memory_mb": 512})),
            },
            Body::ResourceViolation {
                container_id: "c1".into(),
                violation_type: "memory".into(),
                details: Map::new(),
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let stored = if matches!(body, Body::EvaluationCompleted { .. }) {
                    vec![StoredField {
                        field: "output".into(),
                        key: "outputs/e1/abc".into(),
                        size: 5_000_000,
                        sha256: "abc".into(),
                    }]
                } else {
                    Vec::new()
                };
                Event {
                    id: format!("id-{i}"),
                    ts: t,
                    tenant_id: (i % 2 == 0).then(|| "tenant-1".to_string()),
                    body,
                    extra: if i == 0 {
                        obj(json!({"region": "eu", "tags": [1, 2]}))
                    } else {
                        Map::new()
                    },
                    stored,
                    may_hold_nul: true,
                    routes: Routes::NONE,
                    size: 100,
                }
            })
            .collect()
    }

    fn build(event: &Event) -> RecordBatch {
        let mut b = BatchBuilder::new(event.event_type(), 1, 100);
        b.append(event);
        b.append(event);
        assert_eq!(b.rows(), 2);
        let batch = b.finish().unwrap();
        assert_eq!(b.rows(), 0);
        batch
    }

    #[test]
    fn every_type_builds_a_batch_of_its_schema() {
        for event in sample_events() {
            let batch = build(&event);
            assert_eq!(batch.num_rows(), 2);
            assert_eq!(batch.schema(), schema(event.event_type()));
            let names: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(names[..4], ["event_id", "ts", "eval_id", "tenant_id"]);
            assert_eq!(names.last().unwrap(), "payload");
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_string::<i32>()
                    .clone()
            };
            assert_eq!(text("event_id").value(0), event.id);
            assert_eq!(
                batch
                    .column_by_name("ts")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(1),
                event.ts.timestamp_micros()
            );
            let eval_id = text("eval_id");
            match event.eval_id() {
                Some(id) => assert_eq!(eval_id.value(0), id),
                None => assert!(eval_id.is_null(0)),
            }
            let tenant = text("tenant_id");
            assert_eq!(tenant.is_null(0), event.tenant_id.is_none());
        }
    }

    #[test]
    fn typed_columns_hold_typed_values() {
        let events = sample_events();
        let queued = build(&events[0]);
        assert_eq!(
            queued
                .column_by_name("timeout")
                .unwrap()
                .as_primitive::<Float64Type>()
                .value(0),
            30.5
        );
        let payload = queued.column_by_name("payload").unwrap().as_string::<i32>();
        assert_eq!(
            serde_json::from_str::<Value>(payload.value(0)).unwrap(),
            json!({"region": "eu", "tags": [1, 2]})
        );
        let metadata = queued
            .column_by_name("metadata")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(
            serde_json::from_str::<Value>(metadata.value(0)).unwrap(),
            json!({"user": "u1", "n": 2})
        );
        let code_size = queued.column_by_name("code_size").unwrap();
        assert_eq!(code_size.as_primitive::<Int64Type>().value(0), 8);
        assert!(queued.column_by_name("code_ref").unwrap().is_null(0));

        let completed = build(&events[2]);
        assert!(
            completed
                .column_by_name("success")
                .unwrap()
                .as_boolean()
                .value(0)
        );
        assert_eq!(
            completed
                .column_by_name("output_ref")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "outputs/e1/abc"
        );
        assert_eq!(
            completed
                .column_by_name("output_size")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            5_000_000
        );
        assert_eq!(
            completed
                .column_by_name("end_time")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            ts("2026-03-04T05:06:09.5Z").timestamp_micros()
        );
        let metrics = build(&events[5]);
        assert_eq!(
            metrics
                .column_by_name("processing_count")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            -3
        );
        let violation = build(&events[7]);
        let details = violation
            .column_by_name("details")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(details.value(0), "{}");
        assert_eq!(
            violation
                .column_by_name("payload")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "{}"
        );
    }

    #[test]
    fn ts_columns_are_utc_microseconds() {
        for t in EventType::ALL {
            let s = schema(t);
            assert_eq!(
                s.field_with_name("ts").unwrap().data_type(),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            );
            assert!(!s.field_with_name("event_id").unwrap().is_nullable());
        }
    }
}

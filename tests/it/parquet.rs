//! The `parquet` sink end to end: `evalsink generate` → `evalsink run` (stdin → classify →
//! parquet on a local folder), then every file read back with the parquet crate (every row and
//! type checked against the input), rolls by size and by age, drain, and DuckDB and pyarrow
//! reading the files as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use serde_json::{Map, Value};

use crate::common::{assert_success, evalsink, generated, run_with_stdin, write_config};

/// A pipeline config: stdin → classify → parquet into `{dir}/store`, with `extra` keys for the
/// sink.
fn config(dir: &Path, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
data_dir = "{dir}/data"

[sources.in]
type = "stdin"

[transforms.classify]
type = "classify"
inputs = ["in"]

[sinks.analytics]
type = "parquet"
inputs = ["classify"]
store = "file://{dir}/store"
{extra}
"#,
            dir = dir.display()
        ),
    )
}

fn store_dir(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// Glob options that skip hidden files (uploads in progress are `.tmp-*`).
fn visible() -> glob::MatchOptions {
    glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    }
}

/// The Parquet files under `{dir}/store`, by key.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let pattern = format!("{}/events/**/*.parquet", store_dir(dir).display());
    let mut files: Vec<PathBuf> = glob::glob_with(&pattern, visible())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    files.sort();
    files
}

/// The input lines as JSON objects, by event_id.
fn input_events(ndjson: &[u8]) -> BTreeMap<String, Map<String, Value>> {
    std::str::from_utf8(ndjson)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let Value::Object(m) = serde_json::from_str(l).unwrap() else {
                panic!("not an object: {l}")
            };
            (m["event_id"].as_str().unwrap().to_string(), m)
        })
        .collect()
}

/// One stored row: its file's partition and its columns as JSON-like values.
struct Row {
    file: PathBuf,
    type_dir: String,
    date_dir: String,
    columns: BTreeMap<String, Value>,
    ts_micros: i64,
}

const JSON_COLUMNS: &[&str] = &["metadata", "metrics", "limits", "details", "payload"];

/// Every row of every file, with the schema's types checked on the way.
fn read_rows(dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        let rel = path.strip_prefix(store_dir(dir)).unwrap().to_path_buf();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts[0], "events", "{rel:?}");
        let type_dir = parts[1].strip_prefix("type=").unwrap().to_string();
        let date_dir = parts[2].strip_prefix("date=").unwrap().to_string();
        assert!(
            parts[3].starts_with("part-") && parts[3].ends_with(".parquet"),
            "{rel:?}"
        );
        let file = std::fs::File::open(&path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            check_types(&batch);
            for i in 0..batch.num_rows() {
                rows.push(row(&batch, i, &path, &type_dir, &date_dir));
            }
        }
    }
    rows
}

fn check_types(batch: &RecordBatch) {
    let schema = batch.schema();
    for field in schema.fields() {
        let name = field.name().as_str();
        let want = match name {
            "ts" | "start_time" | "end_time" => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            "timeout" => DataType::Float64,
            "success" => DataType::Boolean,
            "queue_length" | "processing_count" => DataType::Int64,
            n if n.ends_with("_size") => DataType::Int64,
            _ => DataType::Utf8,
        };
        assert_eq!(field.data_type(), &want, "column {name}");
    }
    for name in ["event_id", "ts", "eval_id", "tenant_id", "payload"] {
        assert!(schema.field_with_name(name).is_ok(), "{name} in {schema:?}");
    }
}

fn row(batch: &RecordBatch, i: usize, file: &Path, type_dir: &str, date_dir: &str) -> Row {
    let mut columns = BTreeMap::new();
    let mut ts_micros = 0;
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let name = field.name().as_str();
        let value = if array.is_null(i) {
            Value::Null
        } else {
            match field.data_type() {
                DataType::Utf8 => {
                    let s = array.as_string::<i32>().value(i);
                    if JSON_COLUMNS.contains(&name) {
                        serde_json::from_str(s).unwrap()
                    } else {
                        Value::String(s.to_string())
                    }
                }
                DataType::Timestamp(..) => {
                    let micros = array.as_primitive::<TimestampMicrosecondType>().value(i);
                    if name == "ts" {
                        ts_micros = micros;
                    }
                    Value::from(micros)
                }
                DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(i)),
                DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(i)),
                DataType::Boolean => Value::from(array.as_boolean().value(i)),
                other => panic!("unexpected column type {other}"),
            }
        };
        columns.insert(name.to_string(), value);
    }
    Row {
        file: file.to_path_buf(),
        type_dir: type_dir.to_string(),
        date_dir: date_dir.to_string(),
        columns,
        ts_micros,
    }
}

fn micros(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
        .timestamp_micros()
}

/// Checks that the stored rows are the input events, each exactly once, column by column.
fn assert_rows_match(rows: &[Row], input: &BTreeMap<String, Map<String, Value>>) {
    let mut seen = BTreeSet::new();
    for row in rows {
        let id = row.columns["event_id"].as_str().unwrap();
        assert!(seen.insert(id.to_string()), "{id} stored twice");
        let event = input
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not in the input"));
        assert_eq!(row.type_dir, event["type"].as_str().unwrap(), "{id}");
        let ts = micros(event["timestamp"].as_str().unwrap());
        assert_eq!(row.ts_micros, ts, "{id} ts");
        let date = DateTime::from_timestamp_micros(ts)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        assert_eq!(row.date_dir, date, "{id} is in the partition of its date");
        let mut known: BTreeSet<&str> = ["type", "event_id", "timestamp"].into();
        for (name, value) in &row.columns {
            let name = name.as_str();
            if ["event_id", "ts", "payload"].contains(&name)
                || name.ends_with("_ref")
                || name.ends_with("_sha256")
            {
                continue;
            }
            if let Some(field) = name.strip_suffix("_size") {
                let text = event[field].as_str().unwrap();
                assert_eq!(value.as_i64(), Some(text.len() as i64), "{id} {name}");
                continue;
            }
            known.insert(name);
            let expected = event.get(name).cloned().unwrap_or(Value::Null);
            match name {
                "start_time" | "end_time" => {
                    assert_eq!(value.as_i64(), Some(micros(expected.as_str().unwrap())))
                }
                "timeout" => assert_eq!(value.as_f64(), expected.as_f64(), "{id} {name}"),
                _ => assert_eq!(value, &expected, "{id} {name} in {:?}", row.file),
            }
        }
        let rest: Map<String, Value> = event
            .iter()
            .filter(|(k, _)| !known.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(row.columns["payload"], Value::Object(rest), "{id} payload");
    }
    let missing: Vec<&String> = input.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} events missing: {missing:?}",
        missing.len()
    );
}

fn count_by_type(input: &BTreeMap<String, Map<String, Value>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in input.values() {
        *counts
            .entry(event["type"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// Sample events plus lines that exercise `payload` (extra fields) and `tenant_id`.
fn sample_input(events: u64, seed: u64) -> Vec<u8> {
    let mut input = generated(&[
        "--events",
        &events.to_string(),
        "--seed",
        &seed.to_string(),
        "--large-outputs",
        "0",
    ]);
    input.extend_from_slice(
        br#"{"type":"QUEUE_METRICS","event_id":"extra-1","timestamp":"2026-02-03T23:59:59.999999Z","queue_length":1,"processing_count":2,"region":"eu-west-1","labels":{"a":[1,2]}}
{"type":"EVALUATION_FAILED","event_id":"extra-2","timestamp":"2026-02-04T00:00:00Z","tenant_id":"t-9","eval_id":"e-x","error":"E","traceback":"T\u00e9\n","attempt":3}
"#,
    );
    input
}

#[test]
fn every_event_is_stored_once_with_typed_columns() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_input(3000, 11);
    let path = config(dir.path(), "");
    let out = run_with_stdin(&["run", "-c", path.to_str().unwrap()], &input, dir.path());
    assert_success(&out);
    let expected = input_events(&input);
    let rows = read_rows(dir.path());
    assert_rows_match(&rows, &expected);

    let mut counts = BTreeMap::new();
    for row in &rows {
        *counts.entry(row.type_dir.clone()).or_default() += 1;
    }
    assert_eq!(counts, count_by_type(&expected));
    assert_eq!(counts.len(), 8, "every event type has its dataset");

    // The extra lines: a payload with the unknown fields, a date partition of its own.
    let extra = rows
        .iter()
        .find(|r| r.columns["event_id"] == "extra-1")
        .unwrap();
    assert_eq!(extra.date_dir, "2026-02-03");
    assert_eq!(
        extra.columns["payload"],
        serde_json::json!({"region": "eu-west-1", "labels": {"a": [1, 2]}})
    );
    let failed = rows
        .iter()
        .find(|r| r.columns["event_id"] == "extra-2")
        .unwrap();
    assert_eq!(failed.columns["tenant_id"], "t-9");
    assert_eq!(failed.date_dir, "2026-02-04");

    // zstd everywhere, and columns of few values dictionary encoded.
    for path in parquet_files(dir.path()) {
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata();
        for rg in meta.row_groups() {
            for column in rg.columns() {
                assert!(
                    matches!(column.compression(), parquet::basic::Compression::ZSTD(_)),
                    "{path:?} {}",
                    column.column_path()
                );
                if column.column_path().string() == "language" {
                    assert!(column.dictionary_page_offset().is_some(), "{path:?}");
                }
            }
        }
    }
}

#[test]
fn drain_on_end_of_input_completes_the_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_input(500, 12);
    // Files far from full and young: only the drain completes them.
    let path = config(dir.path(), "max_file_age_secs = 3600");
    let started = Instant::now();
    let out = run_with_stdin(&["run", "-c", path.to_str().unwrap()], &input, dir.path());
    assert_success(&out);
    assert!(started.elapsed() < Duration::from_secs(60));
    let files = parquet_files(dir.path());
    // One file per type and date: eight types on the generator's day, two extra dates.
    assert_eq!(files.len(), 10, "{files:?}");
    assert_rows_match(&read_rows(dir.path()), &input_events(&input));
    let leftovers: Vec<_> = walk(&store_dir(dir.path()))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn files_roll_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_input(4000, 13);
    let path = config(
        dir.path(),
        "max_file_bytes = 65536\nrow_group_bytes = 16384\nbatch = { max_events = 200, timeout_secs = 0.1 }",
    );
    let out = run_with_stdin(&["run", "-c", path.to_str().unwrap()], &input, dir.path());
    assert_success(&out);
    let files = parquet_files(dir.path());
    let queued: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("type=EVALUATION_QUEUED"))
        .collect();
    assert!(queued.len() >= 3, "rolled by size: {queued:?}");
    for file in &queued[..queued.len() - 1] {
        let size = std::fs::metadata(file).unwrap().len();
        // Rolled at about the limit: the size estimate is checked after each write.
        assert!(
            size > 16 * 1024 && size < 512 * 1024,
            "{file:?} has {size} bytes"
        );
        let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
        assert!(reader.metadata().num_row_groups() >= 2, "{file:?}");
    }
    assert_rows_match(&read_rows(dir.path()), &input_events(&input));
}

/// A slow producer: lines written a few at a time while the pipeline runs.
struct SlowRun {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl SlowRun {
    fn start(dir: &Path, config: &Path) -> SlowRun {
        let mut child = evalsink()
            .args(["run", "-c", config.to_str().unwrap()])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        SlowRun { child, stdin }
    }

    fn send(&mut self, lines: &[&str]) {
        let stdin = self.stdin.as_mut().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> std::process::Output {
        drop(self.stdin.take());
        self.child.wait_with_output().unwrap()
    }
}

#[test]
fn files_roll_by_age_while_events_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(&["--events", "400", "--seed", "14", "--large-outputs", "0"]);
    let text = String::from_utf8(input.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let path = config(
        dir.path(),
        "max_file_age_secs = 1\nbatch = { max_events = 1000, timeout_secs = 0.1 }",
    );
    let mut run = SlowRun::start(dir.path(), &path);
    let started = Instant::now();
    let mut first_file = None;
    // 20 lines every 100 ms for about 2 s: the pipeline never idles a whole second, so files
    // must roll on age from the writes themselves.
    for chunk in lines.chunks(20) {
        run.send(chunk);
        std::thread::sleep(Duration::from_millis(100));
        if first_file.is_none() && !parquet_files(dir.path()).is_empty() {
            first_file = Some(started.elapsed());
        }
    }
    let while_running = parquet_files(dir.path()).len();
    let out = run.finish();
    assert_success(&out);
    let first = first_file.expect("files appear while the pipeline runs");
    assert!(
        first < Duration::from_millis(1900),
        "first file after {first:?}"
    );
    assert!(while_running >= 4, "{while_running} files while running");
    assert!(parquet_files(dir.path()).len() > while_running);
    assert_rows_match(&read_rows(dir.path()), &input_events(&input));
}

#[test]
fn sigterm_drains_the_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(&["--events", "300", "--seed", "15", "--large-outputs", "0"]);
    let text = String::from_utf8(input.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let path = config(dir.path(), "");
    let mut run = SlowRun::start(dir.path(), &path);
    run.send(&lines);
    // Wait until the events went through (they sit in open files: nothing is visible).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        parquet_files(dir.path()).is_empty(),
        "young files stay open"
    );
    let status = Command::new("kill")
        .args(["-TERM", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = run.finish();
    assert_success(&out);
    assert_rows_match(&read_rows(dir.path()), &input_events(&input));
}

#[test]
fn duckdb_and_pyarrow_read_the_files_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_input(2000, 16);
    let path = config(dir.path(), "");
    let out = run_with_stdin(&["run", "-c", path.to_str().unwrap()], &input, dir.path());
    assert_success(&out);
    let expected = count_by_type(&input_events(&input));
    let root = store_dir(dir.path()).join("events");
    let script = r#"
import json, sys
root = sys.argv[1]
import duckdb, pyarrow.dataset as ds
con = duckdb.connect()
out = {"duckdb": {}, "pyarrow": {}}
for t, n in con.execute(f"SELECT type, count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true, union_by_name=true) GROUP BY type").fetchall():
    out["duckdb"][t] = n
ts, success, q, d = con.execute(f"SELECT typeof(ts), typeof(success), typeof(end_time), typeof(date) FROM read_parquet('{root}/type=EVALUATION_COMPLETED/*/*.parquet', hive_partitioning=true) LIMIT 1").fetchone()
out["types"] = [ts, success, q, d]
out["queue_sum"] = con.execute(f"SELECT sum(queue_length)::BIGINT FROM read_parquet('{root}/type=QUEUE_METRICS/*/*.parquet', hive_partitioning=true)").fetchone()[0]
out["metadata_user"] = con.execute(f"SELECT count(*) FROM read_parquet('{root}/type=EVALUATION_QUEUED/*/*.parquet', hive_partitioning=true) WHERE json_extract_string(metadata, '$.user_id') LIKE 'user-%'").fetchone()[0]
for t in sorted(set(out["duckdb"])):
    table = ds.dataset(f"{root}/type={t}", format="parquet", partitioning="hive").to_table()
    out["pyarrow"][t] = table.num_rows
    if t == "EVALUATION_COMPLETED":
        out["pyarrow_ts"] = str(table.schema.field("ts").type)
print(json.dumps(out))
"#;
    let py = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script, root.to_str().unwrap()])
        .output()
        .expect("python3 runs; scripts/services.sh installs duckdb and pyarrow");
    assert!(
        py.status.success(),
        "python3 with duckdb and pyarrow (run scripts/services.sh): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let result: Value = serde_json::from_slice(&py.stdout).unwrap();
    for (t, n) in &expected {
        assert_eq!(result["duckdb"][t], *n, "duckdb count of {t}");
        assert_eq!(result["pyarrow"][t], *n, "pyarrow count of {t}");
    }
    assert_eq!(
        result["types"],
        serde_json::json!([
            "TIMESTAMP WITH TIME ZONE",
            "BOOLEAN",
            "TIMESTAMP WITH TIME ZONE",
            "DATE"
        ])
    );
    assert_eq!(result["pyarrow_ts"], "timestamp[us, tz=UTC]");
    let queue_sum: i64 = input_events(&input)
        .values()
        .filter(|e| e["type"] == "QUEUE_METRICS")
        .map(|e| e["queue_length"].as_i64().unwrap())
        .sum();
    assert_eq!(result["queue_sum"], queue_sum);
    assert_eq!(result["metadata_user"], expected["EVALUATION_QUEUED"]);
}

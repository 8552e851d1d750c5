//! The engine end to end through the binary: stdin, replay, file tail with rotation and
//! restarts, TCP with many clients, dead letters, config errors, signals.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const CONSOLE: &str = r#"
data_dir = "DATA"
[sources.in]
type = "stdin"
max_line_bytes = 1000
[transforms.classify]
type = "classify"
inputs = ["in"]
[sinks.out]
type = "console"
inputs = ["classify"]
"#;

fn config(dir: &Path, template: &str) -> String {
    let text = template.replace("DATA", &dir.join("data").display().to_string());
    write_config(dir, &text).display().to_string()
}

/// The event ids in console output, with how often each was printed.
fn printed_ids(stdout: &[u8]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for line in stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap();
        *ids.entry(v["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

fn event(id: &str) -> String {
    format!(r#"{{"type":"QUEUE_METRICS","event_id":"{id}","queue_length":1,"processing_count":2}}"#)
}

#[test]
fn stdin_pipe_drains_and_counts_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), CONSOLE);
    let input = generated(&[
        "--events",
        "300",
        "--seed",
        "5",
        "--bad-lines",
        "0.1",
        "--large-outputs",
        "0",
    ]);
    // Lines are at most a few hundred KB; allow them.
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_line_bytes = 1000", "");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = run_with_stdin(&["run", "-c", &cfg], &input, dir.path());
    assert_success(&out);
    let ids = printed_ids(&out.stdout);
    let dead = dead_letters(&dir.path().join("data/dead-letter"));
    let lines = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(
        ids.len() + dead.len(),
        lines,
        "every line is an event or a dead letter"
    );
    assert!(ids.values().all(|n| *n == 1));
    assert!(!dead.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} events and {} dead letters",
            ids.len(),
            dead.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("by sink: out {}", ids.len())),
        "{stderr}"
    );

    let strict = run_with_stdin(
        &["run", "-c", &cfg, "--fail-on-dead-letter"],
        &input,
        dir.path(),
    );
    assert_eq!(strict.status.code(), Some(3));
}

#[test]
fn every_bad_line_reason_reaches_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), CONSOLE);
    let long = format!(r#"{{"type":"QUEUE_METRICS","pad":"{}"}}"#, "x".repeat(2000));
    let mut input: Vec<u8> = Vec::new();
    let lines: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid_utf8",
            b"{\"type\":\"QUEUE_METRICS\",\"x\":\"\xff\"}".to_vec(),
        ),
        ("invalid_json", b"{\"type\":".to_vec()),
        ("not_an_object", b"[1,2,3]".to_vec()),
        (
            "unknown_type",
            br#"{"type":"EVALUATION_EXPLODED"}"#.to_vec(),
        ),
        (
            "missing_field",
            br#"{"type":"EVALUATION_FAILED","eval_id":"e"}"#.to_vec(),
        ),
        (
            "wrong_type",
            br#"{"type":"QUEUE_METRICS","queue_length":"3","processing_count":1}"#.to_vec(),
        ),
        (
            "invalid_value",
            br#"{"type":"EVALUATION_STARTED","eval_id":"e","executor_id":"x","start_time":"soon"}"#
                .to_vec(),
        ),
        ("line_too_long", long.into_bytes()),
    ];
    for (_, line) in &lines {
        input.extend_from_slice(line);
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(event("good").as_bytes());
        input.push(b'\n');
    }
    input.extend_from_slice(b"\n\n   \n");
    input.extend_from_slice(event("last-without-newline").as_bytes());
    let out = run_with_stdin(&["run", "-c", &cfg], &input, dir.path());
    assert_success(&out);
    let ids = printed_ids(&out.stdout);
    assert_eq!(
        ids.get("good"),
        Some(&lines.len()),
        "the good lines between the bad ones pass"
    );
    assert!(ids.contains_key("last-without-newline"));
    let dead = dead_letters(&dir.path().join("data/dead-letter"));
    let by_reason: BTreeMap<String, &Value> = dead
        .iter()
        .map(|d| (d["reason"].as_str().unwrap().to_string(), d))
        .collect();
    for (i, (reason, _)) in lines.iter().enumerate() {
        let record = by_reason
            .get(*reason)
            .unwrap_or_else(|| panic!("no {reason} in {dead:#?}"));
        assert_eq!(record["source"], "in");
        assert_eq!(record["line"], (2 * i + 1) as u64, "{reason}");
        assert!(record["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(dead.len(), lines.len());
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &CONSOLE.replace(
            "inputs = [\"classify\"]",
            "inputs = [\"clasify\"]\ncolour = true",
        ),
    );
    let out = evalsink().args(["validate", "-c", &cfg]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{cfg}:11: sinks.out.inputs")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{cfg}:12: sinks.out.colour")),
        "{stderr}"
    );
    let ok = evalsink()
        .args(["validate", "-c", &config(dir.path(), CONSOLE)])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sink      out (console) <- classify"));
    assert!(
        !dir.path().join("data").exists(),
        "validate has no side effects"
    );
    let good = config(dir.path(), CONSOLE);
    let mermaid = evalsink().args(["graph", "-c", &good]).output().unwrap();
    assert!(String::from_utf8_lossy(&mermaid.stdout).contains("classify --> out"));
    let dot = evalsink()
        .args(["graph", "-c", &good, "--format", "dot"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dot.stdout).contains("\"classify\" -> \"out\";"));
}

#[test]
fn replay_reads_plain_gzip_zstd_and_globs_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        CONSOLE.replace("max_line_bytes = 1000", "").as_str(),
    );
    let input = generated(&["--events", "200", "--seed", "9", "--large-outputs", "0"]);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let third = input.len() / 3;
    let cut = |at: usize| at + input[at..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let (a, b) = (cut(third), cut(2 * third));
    std::fs::write(logs.join("1.ndjson"), &input[..a]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    gz.write_all(&input[a..b]).unwrap();
    std::fs::write(logs.join("2.ndjson.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        logs.join("3.ndjson.zst"),
        zstd::encode_all(&input[b..], 3).unwrap(),
    )
    .unwrap();
    let pattern = format!("{}/*.ndjson*", logs.display());
    let out = evalsink()
        .args(["replay", "-c", &cfg, &pattern])
        .output()
        .unwrap();
    assert_success(&out);
    let ids = printed_ids(&out.stdout);
    assert_eq!(ids.len(), 200);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("200 events and 0 dead letters"), "{stderr}");
    assert!(stderr.contains("by type: EVALUATION_QUEUED"), "{stderr}");
    assert!(stderr.contains("MB/s"), "{stderr}");
    let again = evalsink()
        .args(["replay", "-c", &cfg, &pattern])
        .output()
        .unwrap();
    assert_eq!(
        printed_ids(&again.stdout),
        ids,
        "the same ids (derived ones too)"
    );
    let missing = evalsink()
        .args(["replay", "-c", &cfg, "/nonexistent/*.ndjson"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// A running evalsink whose stdout is collected on a thread.
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
}

impl Running {
    fn start(args: &[&str], dir: &Path) -> Running {
        let mut child = evalsink()
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut buf).unwrap();
            buf
        });
        Running { child, stdout }
    }

    /// SIGTERM, then waits for the drain; returns stdout and stderr.
    fn stop(mut self) -> (Vec<u8>, String) {
        terminate(&self.child);
        let status = wait_timeout(&mut self.child, Duration::from_secs(60));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status, Some(0), "evalsink drained and exited 0: {err}");
        (self.stdout.join().unwrap(), err)
    }
}

fn terminate(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn append(path: &Path, ids: std::ops::Range<usize>, prefix: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in ids {
        writeln!(f, "{}", event(&format!("{prefix}-{i}"))).unwrap();
    }
}

const FILE: &str = r#"
data_dir = "DATA"
[sources.logs]
type = "file"
include = ["LOGS/*.ndjson"]
glob_minimum_cooldown_ms = 200
[sinks.out]
type = "console"
inputs = ["logs"]
"#;

#[test]
fn file_tail_follows_rotation_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(
        dir.path(),
        &FILE.replace("LOGS", &logs.display().to_string()),
    );
    let app = logs.join("app.ndjson");
    let checkpoints = dir.path().join("data/checkpoints/logs.json");
    append(&app, 0..100, "a");

    // Run 1: read, then rotation by rename (the old file is read to its end), a new file.
    let run = Running::start(&["run", "-c", &cfg], dir.path());
    wait_for("the first checkpoint", || {
        std::fs::read_to_string(&checkpoints).is_ok_and(|t| t.contains("\"offset\""))
    });
    append(&app, 100..150, "a");
    std::fs::rename(&app, logs.join("app.ndjson.1")).unwrap();
    append(&logs.join("app.ndjson.1"), 150..160, "a"); // written after the rename
    append(&app, 0..50, "b");
    std::thread::sleep(Duration::from_millis(1500));
    let (out1, _) = run.stop();
    let ids1 = printed_ids(&out1);
    assert!(ids1.values().all(|n| *n == 1), "no duplicates");
    for i in 0..160 {
        assert!(
            ids1.contains_key(&format!("a-{i}")),
            "a-{i} was read before and after rotation"
        );
    }
    for i in 0..50 {
        assert!(ids1.contains_key(&format!("b-{i}")));
    }

    // Run 2: lines written while evalsink was down, then truncation.
    append(&app, 50..80, "b");
    let run = Running::start(&["run", "-c", &cfg], dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&app, "").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    append(&app, 0..20, "c");
    std::thread::sleep(Duration::from_millis(1500));
    let (out2, _) = run.stop();
    let ids2 = printed_ids(&out2);
    let expected: BTreeSet<String> = (50..80)
        .map(|i| format!("b-{i}"))
        .chain((0..20).map(|i| format!("c-{i}")))
        .collect();
    assert_eq!(
        ids2.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "only what is new, once"
    );
    assert!(ids2.values().all(|n| *n == 1));

    // Run 3: nothing new, nothing repeated.
    let run = Running::start(&["run", "-c", &cfg], dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    let (out3, _) = run.stop();
    assert!(
        printed_ids(&out3).is_empty(),
        "{}",
        String::from_utf8_lossy(&out3)
    );
}

const TCP: &str = r#"
data_dir = "DATA"
[sources.net]
type = "tcp"
address = "ADDRESS"
max_connections = 64
[sinks.out]
type = "console"
inputs = ["net"]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn fifty_tcp_clients_each_event_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &TCP.replace("ADDRESS", &address));
    let run = Running::start(&["run", "-c", &cfg], dir.path());
    wait_for("the listener", || TcpStream::connect(&address).is_ok());
    let clients: Vec<_> = (0..50)
        .map(|c| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&address).unwrap();
                for i in 0..200 {
                    // Half the lines end in \r\n, and some writes split a line in two.
                    let line = event(&format!("c{c}-{i}"));
                    if i % 7 == 0 {
                        let (a, b) = line.split_at(10);
                        s.write_all(a.as_bytes()).unwrap();
                        s.flush().unwrap();
                        s.write_all(b.as_bytes()).unwrap();
                    } else {
                        s.write_all(line.as_bytes()).unwrap();
                    }
                    s.write_all(if i % 2 == 0 { b"\r\n" } else { b"\n" })
                        .unwrap();
                }
                s.write_all(b"not json\n").unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let (out, err) = run.stop();
    let ids = printed_ids(&out);
    assert_eq!(ids.len(), 50 * 200, "{err}");
    assert!(ids.values().all(|n| *n == 1));
    let dead = dead_letters(&dir.path().join("data/dead-letter"));
    assert_eq!(dead.len(), 50);
    assert!(dead.iter().all(|d| {
        d["connection"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    }));
}

#[test]
fn sigterm_during_a_replay_drains_what_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        CONSOLE.replace("max_line_bytes = 1000", "").as_str(),
    );
    let file = dir.path().join("big.ndjson");
    std::fs::write(
        &file,
        generated(&["--events", "100000", "--seed", "3", "--large-outputs", "0"]),
    )
    .unwrap();
    let mut child = evalsink()
        .args(["replay", "-c", &cfg, file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little of the output, then ask it to stop while it is busy.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    terminate(&child);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status, Some(0), "{err}");
    let mut all = first.into_bytes();
    all.extend(rest);
    let ids = printed_ids(&all);
    assert!(ids.len() < 100_000, "stopped early ({} events)", ids.len());
    assert!(ids.values().all(|n| *n == 1));
    // Every event the source accepted reached the sink.
    assert!(
        err.contains(&format!("{} events and 0 dead letters", ids.len())),
        "{err}"
    );
    assert!(
        err.contains(&format!("by sink: out {}", ids.len())),
        "{err}"
    );
}

#[test]
fn secrets_never_reach_a_sink_or_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"
data_dir = "DATA"
[sources.in]
type = "stdin"
[transforms.redact]
type = "redact"
inputs = ["in"]
[sinks.out]
type = "console"
inputs = ["redact"]
"#,
    );
    let key = "AKIAIOSFODNN7EXAMPLE";
    let token = "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";
    let input = format!(
        "{}\n{{\"type\":\"EVALUATION_FAILED\",\"eval_id\":\"e1\",\"error\":\"connect postgres://app:hunter2secret@db:5432/x\",\"traceback\":\"GITHUB_TOKEN={token}\",\"extra\":{{\"nested\":[\"{key}\"]}}}}\n{{broken {key}\n",
        r#"{"type":"EVALUATION_QUEUED","eval_id":"e1","code":"aws_key = 'AKIAIOSFODNN7EXAMPLE'\nsha = 'da39a3ee5e6b4b0d3255bfef95601890afd80709'","language":"python","engine":"docker","timeout":5,"metadata":{}}"#
    );
    let out = run_with_stdin(&["run", "-c", &cfg], input.as_bytes(), dir.path());
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2);
    for secret in [key, token, "hunter2secret"] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }
    assert!(stdout.contains("[REDACTED:"), "{stdout}");
    assert!(
        stdout.contains("da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        "hashes stay"
    );
    let dead = dead_letters(&dir.path().join("data/dead-letter"));
    assert_eq!(dead.len(), 1);
    assert!(
        !dead[0]["raw"].as_str().unwrap().contains(key),
        "{:?}",
        dead[0]
    );
}

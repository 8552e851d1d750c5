//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The evalsink binary built with the tests.
pub fn evalsink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evalsink"))
}

/// Runs evalsink with `args`, feeding `stdin`, and returns its output.
pub fn run_with_stdin(args: &[&str], stdin: &[u8], dir: &Path) -> Output {
    use std::io::Write;
    let mut child = evalsink()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("evalsink runs");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// `evalsink generate` output.
pub fn generated(args: &[&str]) -> Vec<u8> {
    let out = evalsink().arg("generate").args(args).output().unwrap();
    assert_success(&out);
    out.stdout
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("evalsink.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every dead letter record written under `dir`.
pub fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// The PostgreSQL server of the tests (trust auth), without a database name.
pub fn postgres_base_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/evalsink".into());
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_string(),
        _ => url,
    }
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("EVALSINK_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9100".into())
}

/// A sink's context for tests that drive a sink directly, with dead letters under `dir`.
pub fn sink_context(
    name: &str,
    dir: &Path,
) -> (evalsink::sinks::SinkContext, std::thread::JoinHandle<()>) {
    use std::sync::Arc;
    let stats = Arc::new(evalsink::stats::Stats::default());
    let (dead_letters, thread) =
        evalsink::sinks::dead_letter::spawn(dir.join("dead-letter"), None, stats.clone());
    let ctx = evalsink::sinks::SinkContext {
        name: name.into(),
        batch: evalsink::sinks::BatchConfig {
            max_events: 50,
            max_bytes: evalsink::sinks::DEFAULT_BATCH_MAX_BYTES,
            timeout_secs: 0.0,
        },
        dead_letters,
        stats,
    };
    (ctx, thread)
}

/// Asserts that a command succeeded, showing its stderr when it did not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

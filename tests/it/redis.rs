//! The redis sink against the real Redis: keys and fields, TTLs, latest by timestamp whatever
//! the order, the capped history stream, the evaluation cache, a Redis restart mid-run, an ACL
//! user and TLS (the last three on redis-server instances of their own).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use evalsink::event::{Ack, AckStatus};
use evalsink::sinks::evaluation::{CacheUpdate, EvalRow};
use evalsink::sinks::redis::{RedisConfig, RedisSink, cache_channel};
use serde_json::json;

use crate::common::{
    assert_success, evalsink, redis_url, run_with_stdin, sink_context, write_config,
};

/// A key prefix of its own for each test, emptied before and after.
struct Prefix {
    url: String,
    prefix: String,
}

impl Prefix {
    fn new(url: &str, test: &str) -> Prefix {
        let p = Prefix {
            url: url.to_string(),
            prefix: format!("evalsink_it_redis:{test}:{}:", std::process::id()),
        };
        p.clear();
        p
    }

    fn clear(&self) {
        let mut con = connect(&self.url);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut con)
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query(&mut con).unwrap();
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.clear();
        }
    }
}

fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

fn hgetall(con: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(con).unwrap()
}

fn ttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(con).unwrap()
}

fn xlen(con: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(con).unwrap()
}

/// Every entry of a stream: (entry id, fields).
fn stream_entries(
    con: &mut redis::Connection,
    key: &str,
) -> Vec<(String, HashMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn health(id: &str, executor: &str, secs: i64, status: &str) -> String {
    json!({
        "type": "EXECUTOR_HEALTH", "event_id": id, "timestamp": at(secs).to_rfc3339(),
        "executor_id": executor, "status": status, "metrics": {"cpu": secs, "mem_mb": 512},
    })
    .to_string()
}

fn queue(id: &str, secs: i64, length: i64) -> String {
    json!({
        "type": "QUEUE_METRICS", "event_id": id, "timestamp": at(secs).to_rfc3339(),
        "queue_length": length, "processing_count": length / 2,
    })
    .to_string()
}

fn config(dir: &Path, url: &str, prefix: &str, extra: &str) -> String {
    let path = write_config(
        dir,
        &format!(
            r#"
data_dir = "{data}"
[sources.in]
type = "stdin"
[transforms.classify]
type = "classify"
inputs = ["in"]
[sinks.redis]
type = "redis"
inputs = ["classify"]
endpoint = "{url}"
key_prefix = "{prefix}"
{extra}
"#,
            data = dir.join("data").display()
        ),
    );
    path.display().to_string()
}

/// Runs `evalsink run` with `lines` on stdin and asserts it succeeded.
fn run(config: &str, lines: &[String], dir: &Path) -> String {
    let input = lines.join("\n") + "\n";
    let out = run_with_stdin(&["run", "-c", config], input.as_bytes(), dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "evalsink failed: {stderr}");
    stderr
}

#[test]
fn writes_the_keys_of_the_spec_with_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "keys");
    let config = config(
        dir.path(),
        &url,
        &p.prefix,
        "health_ttl_secs = 90\ncache_ttl_secs = 600",
    );
    let queued = json!({
        "type": "EVALUATION_QUEUED", "event_id": "q-1", "eval_id": "ev-1", "code": "print(1)",
        "language": "python", "engine": "cpython", "timeout": 30, "metadata": {},
    })
    .to_string();
    let lines = vec![
        health("h-1", "ex-1", 1, "healthy"),
        health("h-2", "ex-2", 2, "degraded"),
        queue("m-1", 3, 10),
        queue("m-2", 4, 12),
        queued,
    ];
    run(&config, &lines, dir.path());

    let mut con = connect(&url);
    let ex1 = hgetall(&mut con, &p.key("executor:ex-1"));
    assert_eq!(ex1["status"], "healthy");
    let metrics: serde_json::Value = serde_json::from_str(&ex1["metrics"]).unwrap();
    assert_eq!(metrics, json!({"cpu": 1, "mem_mb": 512}));
    assert_eq!(
        DateTime::parse_from_rfc3339(&ex1["ts"]).unwrap(),
        at(1),
        "{ex1:?}"
    );
    assert_eq!(ex1["event_id"], "h-1");
    assert_eq!(ex1["ts_us"], at(1).timestamp_micros().to_string());
    assert_eq!(
        hgetall(&mut con, &p.key("executor:ex-2"))["status"],
        "degraded"
    );
    for key in ["executor:ex-1", "executor:ex-2", "queue"] {
        let t = ttl(&mut con, &p.key(key));
        assert!(t > 0 && t <= 90, "TTL of {key}: {t}");
    }

    let q = hgetall(&mut con, &p.key("queue"));
    assert_eq!(q["queue_length"], "12");
    assert_eq!(q["processing_count"], "6");
    assert_eq!(DateTime::parse_from_rfc3339(&q["ts"]).unwrap(), at(4));

    let history = stream_entries(&mut con, &p.key("queue:history"));
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[0].0,
        format!("{}-0", at(3).timestamp_millis()),
        "entry IDs are event times"
    );
    assert_eq!(history[0].1["event_id"], "m-1");
    assert_eq!(history[1].1["queue_length"], "12");

    // Lifecycle events are not this sink's (the cache is written after PostgreSQL commits).
    let evals: Vec<String> = redis::cmd("KEYS")
        .arg(p.key("eval:*"))
        .query(&mut con)
        .unwrap();
    assert!(evals.is_empty(), "{evals:?}");
}

#[test]
fn latest_is_by_timestamp_whatever_the_order_and_replays_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "latest");
    // Small batches, so that events meet across writes and not only inside one.
    let config = config(
        dir.path(),
        &url,
        &p.prefix,
        "batch = { max_events = 7, timeout_secs = 0.0 }",
    );
    let mut lines = Vec::new();
    let mut newest: HashMap<String, (i64, String)> = HashMap::new();
    for i in 0..600i64 {
        let executor = format!("ex-{}", i % 5);
        let status = format!("s{i}");
        lines.push(health(&format!("h-{i:04}"), &executor, i, &status));
        newest.insert(executor, (i, status));
        lines.push(queue(&format!("m-{i:04}"), i, i));
    }
    // Two events at the same time: the greater event_id wins, in any order.
    lines.push(health("h-tie-a", "ex-tie", 5, "a"));
    lines.push(health("h-tie-b", "ex-tie", 5, "b"));
    let mut rng = fastrand::Rng::with_seed(7);
    rng.shuffle(&mut lines);
    run(&config, &lines, dir.path());

    let mut con = connect(&url);
    let check = |con: &mut redis::Connection| {
        for (executor, (secs, status)) in &newest {
            let h = hgetall(con, &p.key(&format!("executor:{executor}")));
            assert_eq!(&h["status"], status, "{executor}");
            assert_eq!(DateTime::parse_from_rfc3339(&h["ts"]).unwrap(), at(*secs));
        }
        assert_eq!(hgetall(con, &p.key("executor:ex-tie"))["status"], "b");
        let q = hgetall(con, &p.key("queue"));
        assert_eq!(q["queue_length"], "599");
        assert_eq!(q["event_id"], "m-0599");
    };
    check(&mut con);
    let history_key = p.key("queue:history");
    let first_len = xlen(&mut con, &history_key);
    assert!(first_len > 0 && first_len <= 600, "{first_len}");
    let ids = stream_entries(&mut con, &history_key);
    let times: Vec<i64> = ids
        .iter()
        .map(|(_, f)| {
            DateTime::parse_from_rfc3339(&f["ts"])
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "history in time order"
    );
    for (id, fields) in &ids {
        let ms = DateTime::parse_from_rfc3339(&fields["ts"])
            .unwrap()
            .timestamp_millis();
        assert!(id.starts_with(&format!("{ms}-")), "{id} vs {ms}");
    }

    // A replay of old logs (in order, then reversed) changes nothing and adds no entry.
    let mut old: Vec<String> = lines.clone();
    old.sort();
    run(&config, &old, dir.path());
    old.reverse();
    run(&config, &old, dir.path());
    check(&mut con);
    assert_eq!(xlen(&mut con, &history_key), first_len);
}

#[test]
fn events_repeated_in_one_batch_are_one_history_entry_each() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "repeated");
    let config = config(dir.path(), &url, &p.prefix, "");
    // Ten queue events of the same millisecond, each twice, in one batch; later ones too.
    let mut lines = Vec::new();
    for round in 0..2 {
        for i in 0..10 {
            lines.push(queue(&format!("same-ms-{i}"), 1, i));
        }
        for i in 0..10 {
            lines.push(queue(&format!("later-{i}"), 2 + i, i));
        }
        if round == 0 {
            lines.reverse();
        }
    }
    run(&config, &lines, dir.path());
    let mut con = connect(&url);
    let entries = stream_entries(&mut con, &p.key("queue:history"));
    let mut ids: Vec<&str> = entries
        .iter()
        .map(|(_, f)| f["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each event once");
}

#[test]
fn the_history_stream_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "capped");
    let config = config(dir.path(), &url, &p.prefix, "queue_history_max_len = 100");
    let lines: Vec<String> = (0..3000).map(|i| queue(&format!("m-{i}"), i, i)).collect();
    run(&config, &lines, dir.path());
    let mut con = connect(&url);
    let len = xlen(&mut con, &p.key("queue:history"));
    // MAXLEN ~ trims whole nodes of the stream: near the cap, never under it.
    assert!((100..400).contains(&len), "XLEN {len}");
    assert_eq!(hgetall(&mut con, &p.key("queue"))["queue_length"], "2999");
}

fn row(eval_id: &str, stage: u8) -> EvalRow {
    let mut row = EvalRow {
        eval_id: eval_id.into(),
        status: "queued".into(),
        code: Some("print('hello')".into()),
        language: Some("python".into()),
        engine: Some("cpython".into()),
        timeout: Some(30.0),
        metadata: Some(json!({"user": "u1"})),
        queued_at: Some(at(1)),
        updated_at: Some(at(100 + stage as i64)),
        ..EvalRow::default()
    };
    if stage >= 1 {
        row.status = "running".into();
        row.executor_id = Some("ex-3".into());
        row.started_at = Some(at(2));
    }
    if stage >= 2 {
        row.status = "completed".into();
        row.success = Some(stage == 2);
        row.ended_at = Some(at(3));
        row.output = Some("ok\n".into());
        row.output_preview = Some("ok\n".into());
        row.output_size = Some(3);
        row.output_sha256 = Some("ab".repeat(32));
    }
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_mirrors_the_last_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "cache");
    let config = RedisConfig {
        endpoint: url.clone(),
        key_prefix: p.prefix.clone(),
        cache_ttl_secs: 500,
        ..RedisConfig::default()
    };
    let sink = RedisSink::connect("redis", &config).await.unwrap();
    let cache = sink.eval_cache().unwrap();
    let (ctx, dead_letter_thread) = sink_context("redis", dir.path());
    let (tx, rx) = cache_channel();
    let task = tokio::spawn(cache.run(rx, ctx));

    // Commits as the postgres sink makes them from shuffled events: each commit holds merged
    // rows (an eval's rows only fill in), interleaved across evals, several rows per commit.
    let mut rng = fastrand::Rng::with_seed(11);
    let mut stages: Vec<(String, u8)> = Vec::new();
    for e in 0..300 {
        let last = rng.u8(0..4);
        for stage in 0..=last {
            stages.push((format!("ev-{e:03}"), stage));
        }
    }
    // Shuffle, then restore each eval's own order (commit order per eval is monotone).
    rng.shuffle(&mut stages);
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    for (id, stage) in &stages {
        seen.entry(id.clone()).or_default().push(*stage);
    }
    for stages in seen.values_mut() {
        stages.sort();
        stages.reverse();
    }
    let commits: Vec<EvalRow> = stages
        .iter()
        .map(|(id, _)| row(id, seen.get_mut(id).unwrap().pop().unwrap()))
        .collect();
    let mut final_rows: HashMap<String, EvalRow> = HashMap::new();
    let mut receivers = Vec::new();
    for chunk in commits.chunks(13) {
        let (ack, done) = Ack::new();
        receivers.push(done);
        for r in chunk {
            final_rows.insert(r.eval_id.clone(), r.clone());
        }
        tx.send(CacheUpdate {
            rows: chunk.to_vec(),
            acks: vec![ack],
        })
        .await
        .unwrap();
    }
    // Each acknowledgement is released once Redis has the rows.
    let first = receivers.remove(0).await.unwrap();
    assert_eq!(first, AckStatus::Delivered);
    for done in receivers {
        assert_eq!(done.await.unwrap(), AckStatus::Delivered);
    }
    drop(tx);
    task.await.unwrap();
    tokio::task::spawn_blocking(move || dead_letter_thread.join())
        .await
        .unwrap()
        .unwrap();

    let mut con = connect(&url);
    for (eval_id, r) in &final_rows {
        let key = p.key(&format!("eval:{eval_id}"));
        let h = hgetall(&mut con, &key);
        let mut want: HashMap<String, String> = HashMap::new();
        want.insert("eval_id".into(), eval_id.clone());
        want.insert("status".into(), r.status.clone());
        want.insert("language".into(), "python".into());
        want.insert("engine".into(), "cpython".into());
        want.insert("timeout".into(), "30".into());
        want.insert("queued_at".into(), "2026-03-01T00:00:01Z".into());
        want.insert(
            "updated_at".into(),
            r.updated_at
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
        if let Some(executor) = &r.executor_id {
            want.insert("executor_id".into(), executor.clone());
            want.insert("started_at".into(), "2026-03-01T00:00:02Z".into());
        }
        if let Some(success) = r.success {
            want.insert("success".into(), success.to_string());
            want.insert("ended_at".into(), "2026-03-01T00:00:03Z".into());
            want.insert("output_size".into(), "3".into());
            want.insert("output_preview".into(), "ok\n".into());
            want.insert("output_sha256".into(), "ab".repeat(32));
        }
        assert_eq!(h, want, "{eval_id}");
        let t = ttl(&mut con, &key);
        assert!(t > 0 && t <= 500, "TTL {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_row_that_redis_refuses_is_a_dead_letter_and_others_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let p = Prefix::new(&url, "refused");
    let mut con = connect(&url);
    // Someone else's string where the cache wants a hash.
    let _: () = redis::cmd("SET")
        .arg(p.key("eval:taken"))
        .arg("x")
        .query(&mut con)
        .unwrap();
    let config = RedisConfig {
        endpoint: url.clone(),
        key_prefix: p.prefix.clone(),
        ..RedisConfig::default()
    };
    let sink = RedisSink::connect("redis", &config).await.unwrap();
    let cache = sink.eval_cache().unwrap();
    let (ctx, dead_letter_thread) = sink_context("redis", dir.path());
    let stats = ctx.stats.clone();
    let (tx, rx) = cache_channel();
    let task = tokio::spawn(cache.run(rx, ctx));
    let (ack, done) = Ack::new();
    tx.send(CacheUpdate {
        rows: vec![row("taken", 2), row("free", 2)],
        acks: vec![ack],
    })
    .await
    .unwrap();
    assert_eq!(done.await.unwrap(), AckStatus::Delivered);
    drop(tx);
    task.await.unwrap();
    tokio::task::spawn_blocking(move || dead_letter_thread.join())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hgetall(&mut con, &p.key("eval:free"))["status"],
        "completed"
    );
    let letters = crate::common::dead_letters(&dir.path().join("dead-letter"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "rejected");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("WRONGTYPE"),
        "{letters:?}"
    );
    assert!(letters[0]["raw"].as_str().unwrap().contains("taken"));
    assert_eq!(stats.dead_letters(), 1);
}

/// A redis-server of a test's own, on its own port, stopped when dropped.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl OwnRedis {
    fn start(port: u16, args: &[&str]) -> OwnRedis {
        let probe = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&probe.stdout).contains("PONG"),
            "port {port} is taken by another Redis; stop it or free the port"
        );
        let server = OwnRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&self) {
        let dir = self.dir.path().display().to_string();
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "yes", "--dir", &dir])
            .args(["--logfile", &format!("{dir}/redis.log")])
            .args(&self.args)
            .status()
            .expect("redis-server runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.cli(&["ping"]).contains("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn shutdown(&self) {
        self.cli(&["shutdown", "nosave"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cli(&["ping"]).contains("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.cli(&["shutdown", "nosave"]);
    }
}

#[test]
fn nothing_is_lost_when_redis_restarts_mid_run() {
    // Append-only with fsync on every write: what Redis acknowledged survives its restart.
    let server = OwnRedis::start(6392, &["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let prefix = "evalsink_it_redis:restart:";
    let config = config(
        dir.path(),
        &url,
        prefix,
        "health_ttl_secs = 3600\nbatch = { max_events = 50, timeout_secs = 0.02 }",
    );
    // Three parts: before the stop, while Redis is down, after it is back. Each part has
    // executors of its own, and the queue metrics run through all three.
    let mut parts: Vec<Vec<String>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut newest: HashMap<String, String> = HashMap::new();
    for i in 0..1500i64 {
        let part = (i / 500) as usize;
        let executor = format!("ex-{}-{}", part, i % 7);
        let status = format!("s{i}");
        parts[part].push(health(&format!("h-{i}"), &executor, i, &status));
        parts[part].push(queue(&format!("m-{i}"), i, i));
        newest.insert(executor, status);
    }

    let mut child = evalsink()
        .args(["run", "-c", &config])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let writer = {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            let mut write_slowly = |lines: &[String]| {
                for chunk in lines.chunks(50) {
                    stdin
                        .write_all((chunk.join("\n") + "\n").as_bytes())
                        .unwrap();
                    stdin.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(30));
                }
            };
            write_slowly(&parts[0]);
            barrier.wait(); // part 1 written
            barrier.wait(); // Redis stopped
            write_slowly(&parts[1]);
            barrier.wait(); // part 2 written while Redis is down
            barrier.wait(); // Redis back
            write_slowly(&parts[2]);
        })
    };
    barrier.wait();
    std::thread::sleep(Duration::from_millis(500));
    server.shutdown();
    barrier.wait();
    barrier.wait();
    std::thread::sleep(Duration::from_secs(1));
    server.launch();
    barrier.wait();
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Retrying"),
        "the sink met the stopped Redis: {stderr}"
    );

    let mut con = connect(&url);
    for (executor, status) in &newest {
        let h = hgetall(&mut con, &format!("{prefix}executor:{executor}"));
        assert_eq!(h.get("status"), Some(status), "{executor}");
    }
    assert_eq!(
        hgetall(&mut con, &format!("{prefix}queue"))["queue_length"],
        "1499"
    );
    assert_eq!(xlen(&mut con, &format!("{prefix}queue:history")), 1500);
}

#[test]
fn an_acl_user_in_another_database_and_a_wrong_password() {
    let server = OwnRedis::start(6391, &[]);
    let prefix = "evalsink_it_redis:acl:";
    let acl = format!(
        "ACL SETUSER app on >app-s3cret-pw ~{prefix}* +ping +select +evalsha +script|load +hset +hdel +hmget +expire +xadd +xrange +xrevrange"
    );
    let args: Vec<&str> = acl.split(' ').collect();
    assert!(server.cli(&args).contains("OK"));
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("redis://app:app-s3cret-pw@127.0.0.1:{}/2", server.port);
    let config = config(dir.path(), &endpoint, prefix, "");
    run(
        &config,
        &[health("h-1", "ex-1", 1, "healthy"), queue("m-1", 2, 4)],
        dir.path(),
    );
    let mut db2 = connect(&format!("{}/2", server.url()));
    assert_eq!(
        hgetall(&mut db2, &format!("{prefix}executor:ex-1"))["status"],
        "healthy"
    );
    assert_eq!(xlen(&mut db2, &format!("{prefix}queue:history")), 1);
    let mut db0 = connect(&server.url());
    assert!(hgetall(&mut db0, &format!("{prefix}executor:ex-1")).is_empty());

    let wrong = config_with_endpoint(
        dir.path(),
        &format!("redis://app:not-the-pw@127.0.0.1:{}/2", server.port),
        prefix,
    );
    let out = run_with_stdin(&["run", "-c", &wrong], b"", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stderr.contains("app:***@127.0.0.1"), "{stderr}");
    assert!(stderr.contains("password"), "says what to check: {stderr}");
    assert!(!stderr.contains("not-the-pw"), "{stderr}");

    // Validation prints the topology without the password either.
    let out = evalsink()
        .args(["validate", "-c", &config])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("app-s3cret-pw"), "{text}");
}

fn config_with_endpoint(dir: &Path, endpoint: &str, prefix: &str) -> String {
    let sub = dir.join("other");
    std::fs::create_dir_all(&sub).unwrap();
    config(&sub, endpoint, prefix, "")
}

#[test]
fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path().display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert_success(&out);
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=evalsink test CA",
        "-keyout",
        &format!("{d}/ca.key"),
        "-out",
        &format!("{d}/ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &format!("{d}/server.key"),
        "-out",
        &format!("{d}/server.csr"),
    ]);
    std::fs::write(
        format!("{d}/san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &format!("{d}/server.csr"),
        "-CA",
        &format!("{d}/ca.pem"),
        "-CAkey",
        &format!("{d}/ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &format!("{d}/san.ext"),
        "-out",
        &format!("{d}/server.pem"),
    ]);
    let server = OwnRedis::start(
        6394,
        &[
            "--tls-port",
            "6393",
            "--tls-cert-file",
            &format!("{d}/server.pem"),
            "--tls-key-file",
            &format!("{d}/server.key"),
            "--tls-ca-cert-file",
            &format!("{d}/ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let prefix = "evalsink_it_redis:tls:";
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "rediss://localhost:6393/0",
        prefix,
        &format!("tls.ca_file = \"{d}/ca.pem\""),
    );
    run(&config, &[health("h-1", "ex-1", 1, "healthy")], dir.path());
    let mut con = connect(&server.url());
    assert_eq!(
        hgetall(&mut con, &format!("{prefix}executor:ex-1"))["status"],
        "healthy"
    );

    // Without the CA, the server's certificate is not trusted: a clear error at start.
    let untrusted = config_with_endpoint(dir.path(), "rediss://localhost:6393/0", prefix);
    let out = run_with_stdin(&["run", "-c", &untrusted], b"", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || stderr.contains("not reachable"),
        "{stderr}"
    );
}

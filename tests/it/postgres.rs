//! The postgres sink against the real PostgreSQL: migrations, the tables of SPEC.md,
//! idempotent replays, the order-independent `evaluations` merge (a property test), refused
//! events isolated to the dead letters, connection loss, TLS, row-level security.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::common::*;
use evalsink::decode::decode_line;
use evalsink::event::{Ack, Batch, Event, Route};
use evalsink::sinks::Sink;
use evalsink::sinks::postgres::{PostgresConfig, PostgresSink};
use evalsink::transforms::classify::Classification;

/// A database of its own for one test, dropped first if an earlier run left it; evalsink
/// creates it.
fn fresh_database(name: &str) -> String {
    let name = format!("evalsink_it_{name}");
    let admin = format!("{}/postgres", postgres_base_url());
    block_on(async {
        let pool = PgPoolOptions::new().connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&pool)
        .await
        .unwrap();
    });
    format!("{}/{name}", postgres_base_url())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

fn pg_config(dir: &Path, url: &str, extra: &str) -> String {
    let transforms = r#"
[transforms.classify]
type = "classify"
inputs = ["in"]
[transforms.redact]
type = "redact"
inputs = ["classify"]"#;
    pg_pipeline(dir, url, transforms, "redact", extra)
}

/// A config from stdin through `transforms` (TOML), the last of them named `last`, to a postgres
/// sink with the keys `extra`.
fn pg_pipeline(dir: &Path, url: &str, transforms: &str, last: &str, extra: &str) -> String {
    let text = format!(
        r#"
data_dir = "{data}"
[sources.in]
type = "stdin"
{transforms}
[sinks.pg]
type = "postgres"
inputs = ["{last}"]
endpoint = "{url}"
{extra}
"#,
        data = dir.join("data").display()
    );
    write_config(dir, &text).display().to_string()
}

fn replay(config: &str, input: &[u8], dir: &Path) -> Output {
    replay_with_env(config, input, dir, &[])
}

/// `evalsink replay` of `input` (written to a file in `dir`) with extra environment variables;
/// asserts it succeeded.
fn replay_with_env(config: &str, input: &[u8], dir: &Path, env: &[(&str, &str)]) -> Output {
    let file = dir.join("input.ndjson");
    std::fs::write(&file, input).unwrap();
    let out = evalsink()
        .args([
            "replay",
            "--no-progress",
            "-c",
            config,
            file.to_str().unwrap(),
        ])
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    assert_success(&out);
    out
}

/// Every row of `table` as text, ordered by its first column.
async fn snapshot(pool: &PgPool, table: &str, except: &[&str]) -> Vec<BTreeMap<String, String>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(t) AS row FROM {table} t ORDER BY 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: Vec<BTreeMap<String, String>> = rows
        .iter()
        .map(|r| {
            let v: Value = r.get("row");
            v.as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !except.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        })
        .collect();
    out.sort_by(|a, b| a.values().next().cmp(&b.values().next()));
    out
}

/// Asserts one row in `security_audit` per CONTAINER_CREATED and in `security_events` per
/// RESOURCE_VIOLATION, given the number of events of a type.
async fn assert_security_rows(pool: &PgPool, of_type: impl Fn(&str) -> i64) {
    assert_eq!(
        count(pool, "SELECT count(*) FROM security_audit").await,
        of_type("CONTAINER_CREATED")
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM security_events").await,
        of_type("RESOURCE_VIOLATION")
    );
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[test]
fn migrate_creates_the_database_the_tables_the_role_and_the_policies() {
    let url = fresh_database("migrate");
    for _ in 0..2 {
        let out = evalsink()
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap();
        assert_success(&out);
    }
    block_on(async {
        let pool = pool(&url).await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND rowsecurity ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            tables,
            ["evaluations", "events", "security_audit", "security_events"]
        );
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'evaluations' ORDER BY ordinal_position",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for c in [
            "eval_id",
            "status",
            "code",
            "language",
            "engine",
            "timeout",
            "metadata",
            "executor_id",
            "queued_at",
            "started_at",
            "ended_at",
            "success",
            "output",
            "output_preview",
            "output_size",
            "output_sha256",
            "output_ref",
            "error",
            "traceback",
            "updated_at",
        ] {
            assert!(columns.iter().any(|x| x == c), "evaluations.{c}");
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for i in ["evaluations_status", "events_eval_id", "events_ts"] {
            assert!(indexes.iter().any(|x| x == i), "index {i}: {indexes:?}");
        }
        let reader_can_write: bool =
            sqlx::query_scalar("SELECT has_table_privilege('evalsink_reader', 'events', 'INSERT')")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(!reader_can_write);
        let reader_can_read: bool = sqlx::query_scalar(
            "SELECT has_table_privilege('evalsink_reader', 'evaluations', 'SELECT')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(reader_can_read);
    });
}

#[test]
fn a_database_that_cannot_be_created_is_a_clear_error() {
    let url = fresh_database("nocreate");
    block_on(async {
        let admin = pool(&format!("{}/postgres", postgres_base_url())).await;
        let _ = sqlx::query("CREATE ROLE evalsink_it_nocreate LOGIN NOCREATEDB")
            .execute(&admin)
            .await;
    });
    let url = url.replace("root@", "evalsink_it_nocreate:not-the-pw-42@");
    let out = evalsink()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot be created"), "{stderr}");
    assert!(!stderr.contains("not-the-pw-42"), "{stderr}");
}

#[test]
fn replay_stores_every_table_and_a_second_replay_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("replay");
    let cfg = pg_config(dir.path(), &url, "");
    let input = generated(&[
        "--events",
        "3000",
        "--seed",
        "11",
        "--shuffle-window",
        "200",
        "--bad-lines",
        "0.01",
        "--large-outputs",
        "0",
    ]);
    let good: Vec<Value> = input
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|v| decode_line(v.to_string().as_bytes(), Utc::now()).is_ok())
        .collect();
    replay(&cfg, &input, dir.path());
    block_on(async {
        let pool = pool(&url).await;
        let of_type = |t: &str| good.iter().filter(|v| v["type"] == t).count() as i64;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM events").await,
            good.len() as i64
        );
        assert_security_rows(&pool, of_type).await;
        let evals: std::collections::BTreeSet<&str> = good
            .iter()
            .filter(|v| v["type"].as_str().unwrap().starts_with("EVALUATION_"))
            .map(|v| v["eval_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            count(&pool, "SELECT count(*) FROM evaluations").await,
            evals.len() as i64
        );
        // Each completed eval's row holds its output, size and hash; the payload is the event.
        for v in good
            .iter()
            .filter(|v| v["type"] == "EVALUATION_COMPLETED")
            .take(20)
        {
            let row = sqlx::query(
                "SELECT status, output, output_size, output_sha256, success FROM evaluations WHERE eval_id = $1",
            )
            .bind(v["eval_id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
            let output = v["output"].as_str().unwrap();
            let status: String = row.get("status");
            assert!(status == "completed" || status == "failed", "{status}");
            if status == "completed" {
                assert_eq!(
                    row.get::<Option<String>, _>("output").as_deref(),
                    Some(output)
                );
                assert_eq!(
                    row.get::<Option<i64>, _>("output_size"),
                    Some(output.len() as i64)
                );
                assert_eq!(
                    row.get::<Option<String>, _>("output_sha256").unwrap(),
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(output.as_bytes()))
                );
            }
            let payload: Value =
                sqlx::query_scalar("SELECT payload FROM events WHERE event_id = $1")
                    .bind(v["event_id"].as_str().unwrap())
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(payload["output"], v["output"]);
            assert_eq!(payload["eval_id"], v["eval_id"]);
        }
        // Every payload is the whole event, its long texts (code, output, error, traceback)
        // included: the server joins them to the rest of the payload.
        let payloads: BTreeMap<String, Value> =
            sqlx::query_as::<_, (String, Value)>("SELECT event_id, payload FROM events")
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let redactor = evalsink::transforms::redact::Redactor::builtin();
        for v in &good {
            let event = decode_line(v.to_string().as_bytes(), Utc::now()).unwrap();
            let mut expected = Value::Object(event.to_json());
            redactor.redact_value(&mut expected);
            assert_eq!(payloads[&event.id], expected, "{}", event.id);
        }
        let before: Vec<_> = [
            snapshot(&pool, "events", &[]).await,
            snapshot(&pool, "evaluations", &[]).await,
            snapshot(&pool, "security_audit", &[]).await,
            snapshot(&pool, "security_events", &[]).await,
        ]
        .into();
        replay(&cfg, &input, dir.path());
        let after: Vec<_> = [
            snapshot(&pool, "events", &[]).await,
            snapshot(&pool, "evaluations", &[]).await,
            snapshot(&pool, "security_audit", &[]).await,
            snapshot(&pool, "security_events", &[]).await,
        ]
        .into();
        assert!(before == after, "the second replay changed rows");
    });
}

#[test]
fn a_replay_over_half_stored_events_stores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("half");
    let cfg = pg_config(dir.path(), &url, "batch.max_events = 500");
    let input = generated(&["--events", "4000", "--seed", "3", "--large-outputs", "0"]);
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // The first half, then every third line of the rest: every write of the full replay
    // meets stored rows, some only, some among new ones.
    let stored: Vec<&[u8]> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 2000 || i % 3 == 0)
        .map(|(_, l)| *l)
        .collect();
    replay(&cfg, &stored.join(&b'\n'), dir.path());
    let out = replay(&cfg, &input, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4000 events and 0 dead letters"),
        "{stderr}"
    );
    assert!(dead_letters(&dir.path().join("data/dead-letter")).is_empty());
    block_on(async {
        let pool = pool(&url).await;
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 4000);
        let of_type = |t: &str| {
            let t = format!("\"{t}\"");
            lines
                .iter()
                .filter(|l| std::str::from_utf8(l).unwrap().contains(&t))
                .count() as i64
        };
        assert_security_rows(&pool, of_type).await;
    });
}

#[test]
fn evaluations_take_their_texts_from_this_run_not_from_events_stored_before() {
    // A first run stores only `events`, with split moving every output out (the payload holds
    // its reference); a second run with the default config must not take the output for
    // `evaluations` from those rows.
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("earlier");
    let rules = dir.path().join("events-only.toml");
    let mut text = String::new();
    for t in evalsink::event::EventType::ALL {
        text.push_str(&format!("[{}]\nstores = [\"events\"]\n", t.as_str()));
    }
    std::fs::write(&rules, text).unwrap();
    let transforms = format!(
        r#"
[transforms.classify]
type = "classify"
inputs = ["in"]
rules = "{}"
[transforms.split]
type = "split"
inputs = ["classify"]
inline_max_bytes = 8
preview_bytes = 4"#,
        rules.display()
    );
    let first = pg_pipeline(dir.path(), &url, &transforms, "split", "");
    let input = generated(&["--events", "300", "--seed", "5", "--large-outputs", "0"]);
    replay(&first, &input, dir.path());
    let second = pg_config(dir.path(), &url, "");
    replay(&second, &input, dir.path());
    block_on(async {
        let pool = pool(&url).await;
        let outputs: Vec<(String, String, Value)> = sqlx::query_as(
            "SELECT e.eval_id, e.output, s.payload->'output' FROM evaluations e \
             JOIN events s ON s.event_id = split_part(e.completed_event, '|', 2) \
             WHERE e.status = 'completed'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(outputs.len() > 10, "{} completed", outputs.len());
        for (eval_id, output, stored) in outputs {
            assert!(
                stored.is_object(),
                "the first run stored a reference: {stored}"
            );
            assert_eq!(
                output.len() as u64,
                stored["size"].as_u64().unwrap(),
                "{eval_id}"
            );
        }
    });
}

#[test]
fn an_event_the_server_refuses_is_a_dead_letter_and_the_rest_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("refused");
    let cfg = pg_config(dir.path(), &url, "");
    let mut lines: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type":"QUEUE_METRICS","event_id":"q{i}","queue_length":{i},"processing_count":1}}"#))
        .collect();
    // An id too long for the primary key's index (and incompressible): PostgreSQL refuses the
    // row (SQLSTATE 54000).
    let mut long_id = String::new();
    let mut block = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"seed"));
    while long_id.len() < 10_000 {
        long_id.push_str(&block);
        block = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(block.as_bytes()));
    }
    lines.insert(
        17,
        format!(r#"{{"type":"QUEUE_METRICS","event_id":"{long_id}","queue_length":1,"processing_count":1}}"#),
    );
    // Refused by `events` too, but `evaluations` takes it: its code is sent rather than read
    // from the `events` row.
    lines.push(format!(r#"{{"type":"EVALUATION_QUEUED","event_id":"q-{long_id}","eval_id":"e-long","code":"long code","language":"py","engine":"e","timeout":1,"metadata":{{}}}}"#));
    // Strings PostgreSQL does not take as they are, but that are valid JSON: stored anyway.
    lines.push(r#"{"type":"EVALUATION_QUEUED","event_id":"nul","eval_id":"e-nul","code":"a\u0000b","language":"py\u0000","engine":"e","timeout":1,"metadata":{"k\u0000":"\u0000"},"extra":"\\u0000 and ✓ 😀","output":"x\u0000y"}"#.into());
    let input = lines.join("\n");
    replay(&cfg, input.as_bytes(), dir.path());
    block_on(async {
        let pool = pool(&url).await;
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 51);
        for (eval_id, expected) in [("e-nul", "a\\u0000b"), ("e-long", "long code")] {
            let code: String =
                sqlx::query_scalar("SELECT code FROM evaluations WHERE eval_id = $1")
                    .bind(eval_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(code, expected, "{eval_id}");
        }
        let payload: Value =
            sqlx::query_scalar("SELECT payload FROM events WHERE event_id = 'nul'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(payload["metadata"]["k\\u0000"], "\\u0000");
        assert_eq!(payload["extra"], "\\u0000 and ✓ 😀");
        assert_eq!(payload["code"], "a\\u0000b");
        assert_eq!(payload["output"], "x\\u0000y", "an extra text field");
    });
    let dead = dead_letters(&dir.path().join("data/dead-letter"));
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let mut ids: Vec<&str> = dead
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [long_id.clone(), format!("q-{long_id}")]);
    for d in &dead {
        assert_eq!(d["reason"], "rejected");
        let error = d["error"].as_str().unwrap();
        assert!(
            error.contains("index row")
                && error.contains("54000")
                && error.contains("table events"),
            "{error}"
        );
    }
}

#[test]
fn connections_killed_mid_run_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("killed");
    let cfg = pg_config(
        dir.path(),
        &url,
        "batch.max_events = 200\nbatch.timeout_secs = 0.05",
    );
    let input = generated(&["--events", "20000", "--seed", "8", "--large-outputs", "0"]);
    let file = dir.path().join("input.ndjson");
    std::fs::write(&file, &input).unwrap();
    // Create the database and schema first, so that the killer has a database to aim at.
    let out = evalsink()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert_success(&out);
    let child = evalsink()
        .args([
            "replay",
            "--no-progress",
            "-c",
            &cfg,
            file.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let db = url.rsplit('/').next().unwrap().to_string();
    let killed = block_on(async {
        let admin = pool(&format!("{}/postgres", postgres_base_url())).await;
        let target = pool(&url).await;
        // Once the sink is writing (past its start), kill its connections again and again.
        while count(&target, "SELECT count(*) FROM events").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        target.close().await;
        let mut killed = 0i64;
        for _ in 0..30 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()) t",
            )
            .bind(&db)
            .fetch_one(&admin)
            .await
            .unwrap();
            killed += n;
        }
        killed
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        killed > 0,
        "no connection was killed; the test proves nothing"
    );
    block_on(async {
        let pool = pool(&url).await;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM events").await,
            20_000,
            "{stderr}"
        );
    });
}

#[test]
fn tls_when_the_url_asks_and_the_password_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("tls");
    // Trust auth ignores the password; it must still never be printed.
    let with_password = url.replace("root@", "root:hunter2-secret@");
    let cfg = pg_config(dir.path(), &format!("{with_password}?sslmode=require"), "");
    let input = generated(&["--events", "200", "--seed", "4", "--large-outputs", "0"]);
    let out = replay(&cfg, &input, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    block_on(async {
        let pool = pool(&url).await;
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 200);
    });
    // Refused connections name the server without the password.
    let bad = pg_config(
        dir.path(),
        "postgres://root:hunter2-secret@127.0.0.1:1/nothing",
        "",
    );
    let out = evalsink().args(["validate", "-c", &bad]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    let out = crate::common::run_with_stdin(&["run", "-c", &bad], b"", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A certificate that cannot be verified is refused: TLS is really in use.
    let strict = pg_config(
        dir.path(),
        &format!("{url}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt"),
        "",
    );
    let out = crate::common::run_with_stdin(&["run", "-c", &strict], b"", dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readers_see_only_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("rls");
    let cfg = pg_config(dir.path(), &url, "");
    let lines: Vec<String> = ["acme", "acme", "globex"]
        .iter()
        .enumerate()
        .map(|(i, t)| format!(r#"{{"type":"EVALUATION_STARTED","event_id":"s{i}","tenant_id":"{t}","eval_id":"e{i}","executor_id":"x","start_time":"2026-01-01T00:00:00Z"}}"#))
        .collect();
    replay(&cfg, lines.join("\n").as_bytes(), dir.path());
    block_on(async {
        let admin = pool(&url).await;
        let _ = sqlx::query("CREATE ROLE evalsink_it_api LOGIN")
            .execute(&admin)
            .await;
        sqlx::query("GRANT evalsink_reader TO evalsink_it_api")
            .execute(&admin)
            .await
            .unwrap();
        let api = pool(&url.replace("root@", "evalsink_it_api@")).await;
        let mut conn = api.acquire().await.unwrap();
        let seen = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
        assert_eq!(
            seen("SELECT count(*) FROM evaluations")
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
            0,
            "no tenant set: nothing"
        );
        sqlx::query("SET evalsink.tenant_id = 'acme'")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            seen("SELECT count(*) FROM evaluations")
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            seen("SELECT count(*) FROM events")
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
            2
        );
        let denied = sqlx::query("DELETE FROM events").execute(&mut *conn).await;
        assert!(denied.is_err(), "readers cannot write");
    });
}

// ---- The merge of `evaluations` does not depend on order or duplicates (property test) ----

/// One lifecycle event of a generated eval.
#[derive(Debug, Clone)]
struct Step {
    stage: u8,
    variant: u8,
    at: i64,
    tenant: Option<u8>,
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..4, 0u8..3, 0i64..50, proptest::option::of(0u8..2)).prop_map(
        |(stage, variant, at, tenant)| Step {
            stage,
            variant,
            at,
            tenant,
        },
    )
}

fn lifecycle_line(eval_id: &str, s: &Step) -> String {
    let ts: DateTime<Utc> =
        DateTime::from_timestamp(1_767_225_600, 0).unwrap() + Duration::seconds(s.at);
    let ts = ts.to_rfc3339();
    let id = format!("{eval_id}-{}-{}-{}", s.stage, s.variant, s.at);
    let tenant = s
        .tenant
        .map(|t| format!(r#","tenant_id":"tenant-{t}""#))
        .unwrap_or_default();
    let v = s.variant;
    let body = match s.stage {
        0 => format!(
            r#""type":"EVALUATION_QUEUED","code":"print({v})","language":"python","engine":"py-{v}","timeout":{v}.5,"metadata":{{"v":{v}}}"#
        ),
        1 => format!(r#""type":"EVALUATION_STARTED","executor_id":"exec-{v}","start_time":"{ts}""#),
        2 => format!(
            r#""type":"EVALUATION_COMPLETED","output":"out {v}","success":{},"end_time":"{ts}""#,
            v.is_multiple_of(2)
        ),
        _ => format!(r#""type":"EVALUATION_FAILED","error":"err {v}","traceback":"tb {v}""#),
    };
    format!(r#"{{{body},"event_id":"{id}","timestamp":"{ts}","eval_id":"{eval_id}"{tenant}}}"#)
}

/// The events of `lines`, routed as the built-in classification says; without the `events`
/// table unless `to_events`.
fn events_of(lines: &[String], to_events: bool) -> Vec<Event> {
    let classification = Classification::builtin();
    lines
        .iter()
        .map(|l| {
            let mut e = decode_line(l.as_bytes(), Utc::now()).unwrap();
            let routes = classification.routes(e.event_type()).unwrap();
            e.routes = routes
                .iter()
                .filter(|r| to_events || *r != Route::Events)
                .collect();
            e
        })
        .collect()
}

/// Writes `events` through the sink in batches of `sizes` (cycled), one write per batch, and
/// waits until they are stored.
async fn write_all(sink: &mut PostgresSink, events: Vec<Event>, sizes: &[usize]) {
    let mut rest = events.into_iter().peekable();
    let mut i = 0;
    while rest.peek().is_some() {
        let n = sizes[i % sizes.len()].max(1);
        i += 1;
        let batch: Vec<Event> = rest.by_ref().take(n).collect();
        sink.write(&[Arc::new(Batch::new(batch, Ack::none()))])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    sink.flush(true).await.unwrap();
}

#[test]
// The sink lives in a RefCell because proptest's runner takes an `Fn`; the runtime has one
// thread, so the borrow held across awaits is never contended.
#[allow(clippy::await_holding_refcell_ref)]
fn evaluations_are_the_same_for_every_order_and_duplication() {
    let url = fresh_database("merge");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = PostgresConfig {
        endpoint: url.clone(),
        ..PostgresConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (ctx, dead_letter_thread) = sink_context("pg", dir.path());
    let (sink, pool) = runtime.block_on(async {
        let sink = PostgresSink::connect(&config, None, ctx).await.unwrap();
        (sink, pool(&url).await)
    });
    // The runner takes an `Fn`.
    let sink = std::cell::RefCell::new(sink);
    let counter = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(proptest::collection::vec(step(), 1..7), 1..4),
        any::<u64>(),
        proptest::collection::vec(1usize..6, 1..4),
    );
    runner
        .run(&strategy, |(evals, seed, sizes)| {
            counter.set(counter.get() + 1);
            let case = counter.get();
            // The same events for two eval_id spaces: `a` in order, once; `b` shuffled, with
            // duplicates, in other batch sizes, and in half of the cases not to the `events`
            // table (so the sink sends the texts that it otherwise reads from there).
            let lines = |space: &str| -> Vec<String> {
                evals
                    .iter()
                    .enumerate()
                    .flat_map(|(e, steps)| {
                        let id = format!("c{case}-{space}-e{e}");
                        steps.iter().map(move |s| lifecycle_line(&id, s)).collect::<Vec<_>>()
                    })
                    .collect()
            };
            let a = lines("a");
            let mut b = lines("b");
            let mut rng = fastrand::Rng::with_seed(seed);
            let dups: Vec<String> = b.iter().filter(|_| rng.bool()).cloned().collect();
            b.extend(dups);
            rng.shuffle(&mut b);
            let (rows_a, rows_b) = runtime.block_on(async {
                let mut sink = sink.borrow_mut();
                write_all(&mut sink, events_of(&a, true), &[a.len()]).await;
                write_all(&mut sink, events_of(&b, seed % 2 == 0), &sizes).await;
                let read = |space: &'static str| {
                    let pool = pool.clone();
                    async move {
                        let rows = sqlx::query(
                            "SELECT to_jsonb(e) - 'updated_at' - 'eval_id' AS row, eval_id FROM evaluations e \
                             WHERE eval_id LIKE $1 ORDER BY eval_id",
                        )
                        .bind(format!("c{case}-{space}-%"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                        rows.iter()
                            .map(|r| {
                                // Ids carry the space; compare them without it.
                                r.get::<Value, _>("row")
                                    .to_string()
                                    .replace(&format!("c{case}-{space}-"), "")
                            })
                            .collect::<Vec<String>>()
                    }
                };
                (read("a").await, read("b").await)
            });
            prop_assert_eq!(rows_a.len(), evals.len());
            prop_assert_eq!(rows_a, rows_b);
            Ok(())
        })
        .unwrap();
    // The rows follow the rules, not just each other: a terminal status is the later
    // terminal event's, and a field set once is never cleared.
    runtime.block_on(async {
        let lines = [
            lifecycle_line("rules", &Step { stage: 3, variant: 0, at: 5, tenant: None }),
            lifecycle_line("rules", &Step { stage: 0, variant: 1, at: 1, tenant: Some(1) }),
            lifecycle_line("rules", &Step { stage: 2, variant: 0, at: 9, tenant: None }),
            lifecycle_line("rules", &Step { stage: 1, variant: 2, at: 3, tenant: None }),
        ];
        write_all(&mut sink.borrow_mut(), events_of(&lines, true), &[1]).await;
        let row = sqlx::query("SELECT status, error, output, executor_id, code, tenant_id, ended_at FROM evaluations WHERE eval_id = 'rules'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("status"), "completed");
        assert_eq!(row.get::<Option<String>, _>("error").as_deref(), Some("err 0"));
        assert_eq!(row.get::<Option<String>, _>("output").as_deref(), Some("out 0"));
        assert_eq!(row.get::<Option<String>, _>("executor_id").as_deref(), Some("exec-2"));
        assert_eq!(row.get::<Option<String>, _>("code").as_deref(), Some("print(1)"));
        assert_eq!(row.get::<Option<String>, _>("tenant_id").as_deref(), Some("tenant-1"));
    });
    drop(sink);
    dead_letter_thread.join().unwrap();
    assert!(dead_letters(&dir.path().join("dead-letter")).is_empty());
}

#[test]
fn the_redis_cache_agrees_with_postgres_after_shuffled_events() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("cache");
    let prefix = format!("evalsink_it_pg_cache:{}:", std::process::id());
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = |redis: &mut redis::Connection| -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}eval:*"))
            .query(redis)
            .unwrap()
    };
    for key in keys(&mut redis) {
        let _: () = redis::cmd("DEL").arg(key).query(&mut redis).unwrap();
    }
    let extra = format!(
        "batch.max_events = 300\n[sinks.redis]\ntype = \"redis\"\ninputs = [\"redact\"]\nendpoint = \"{}\"\nkey_prefix = \"{prefix}\"\n",
        redis_url()
    );
    let cfg = pg_config(dir.path(), &url, &extra);
    let input = generated(&[
        "--events",
        "3000",
        "--seed",
        "21",
        "--shuffle-window",
        "1000",
        "--large-outputs",
        "0",
    ]);
    replay(&cfg, &input, dir.path());
    block_on(async {
        let pool = pool(&url).await;
        let rows = sqlx::query(
            "SELECT eval_id, status, language, executor_id, success, output_size FROM evaluations",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(rows.len() > 100);
        assert_eq!(keys(&mut redis).len(), rows.len());
        for row in rows {
            let id: String = row.get("eval_id");
            let cached: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("{prefix}eval:{id}"))
                .query(&mut redis)
                .unwrap();
            assert_eq!(
                cached.get("status"),
                Some(&row.get::<String, _>("status")),
                "{id}"
            );
            assert_eq!(
                cached.get("language").cloned(),
                row.get::<Option<String>, _>("language")
            );
            assert_eq!(
                cached.get("executor_id").cloned(),
                row.get::<Option<String>, _>("executor_id")
            );
            assert_eq!(
                cached.get("success").cloned(),
                row.get::<Option<bool>, _>("success").map(|b| b.to_string())
            );
            assert_eq!(
                cached.get("output_size").cloned(),
                row.get::<Option<i64>, _>("output_size")
                    .map(|n| n.to_string())
            );
        }
    });
    for key in keys(&mut redis) {
        let _: () = redis::cmd("DEL").arg(key).query(&mut redis).unwrap();
    }
}

/// Issue 3's end-to-end check: shuffled lifecycles, large outputs and bad lines replayed into
/// the default config give exactly the rows, references and objects of SPEC.md, and a second
/// replay changes none of them.
#[test]
fn the_default_config_stores_rows_references_and_objects_and_replays_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("default_config");
    let data = dir.path().join("data");
    let input = generated(&[
        "--events",
        "3000",
        "--seed",
        "17",
        "--shuffle-window",
        "300",
        "--bad-lines",
        "0.02",
        "--large-outputs",
        "0.05",
    ]);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/evalsink.toml");
    let (redis, data_dir) = (redis_url(), data.display().to_string());
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("EVALSINK_DATA_DIR", data_dir.as_str()),
    ];
    let replay = || replay_with_env(config, &input, dir.path(), &env);
    replay();

    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let good: Vec<Event> = lines
        .iter()
        .filter_map(|l| decode_line(l, Utc::now()).ok())
        .collect();
    let dead = dead_letters(&data.join("dead-letter"));
    assert_eq!(
        dead.len(),
        lines.len() - good.len(),
        "every bad line is a dead letter"
    );
    assert!(!dead.is_empty());

    let large: Vec<&Event> = good
        .iter()
        .filter(|e| matches!(&e.body, evalsink::event::Body::EvaluationCompleted { output, .. } if output.len() > 1 << 20))
        .collect();
    assert!(
        large.len() >= 3,
        "the input has large outputs ({})",
        large.len()
    );

    let objects = |data: &Path| -> BTreeMap<String, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![data.join("outputs")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    let key = entry
                        .path()
                        .strip_prefix(data)
                        .unwrap()
                        .display()
                        .to_string();
                    out.insert(key, (meta.len(), meta.modified().unwrap()));
                }
            }
        }
        out
    };
    let stored_objects = objects(&data);
    let parquet_ids = parquet_event_ids(&data);
    assert_eq!(
        parquet_ids.len(),
        good.len(),
        "every event is in the Parquet files"
    );
    assert!(
        parquet_ids.values().all(|&n| n == 1),
        "no event is in the Parquet files twice"
    );

    block_on(async {
        let pool = pool(&url).await;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM events").await,
            good.len() as i64
        );
        for e in &large {
            let eval_id = e.eval_id().unwrap();
            let row = sqlx::query(
                "SELECT output, output_preview, output_size, output_sha256, output_ref, status \
                 FROM evaluations WHERE eval_id = $1",
            )
            .bind(eval_id)
            .fetch_one(&pool)
            .await
            .unwrap();
            let key: String = row
                .get::<Option<String>, _>("output_ref")
                .expect("a reference");
            assert!(key.starts_with(&format!("outputs/{eval_id}/")), "{key}");
            assert_eq!(row.get::<Option<String>, _>("output"), None, "not inline");
            // The object holds the whole (redacted) output; the row describes it.
            let object = std::fs::read(data.join(&key)).unwrap();
            assert_eq!(
                row.get::<Option<i64>, _>("output_size"),
                Some(object.len() as i64)
            );
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&object));
            assert_eq!(
                row.get::<Option<String>, _>("output_sha256").as_deref(),
                Some(sha.as_str())
            );
            assert!(key.ends_with(&sha));
            let preview: String = row.get::<Option<String>, _>("output_preview").unwrap();
            assert!(preview.len() <= 1024 && !preview.is_empty());
            assert!(object.starts_with(preview.as_bytes()));
            assert!(stored_objects.contains_key(&key));
            let payload: Value =
                sqlx::query_scalar("SELECT payload FROM events WHERE event_id = $1")
                    .bind(&e.id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(payload["output"]["ref"], key.as_str());
            assert_eq!(payload["output"]["sha256"], sha.as_str());
            assert_eq!(payload["output"]["size"], object.len());
        }
        // Only large outputs are stored outside.
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM evaluations WHERE output_ref IS NOT NULL"
            )
            .await,
            stored_objects.len() as i64
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM evaluations WHERE output IS NOT NULL AND output_size > 1048576").await,
            0
        );
        let tables = ["events", "evaluations", "security_audit", "security_events"];
        let mut before = Vec::new();
        for t in tables {
            before.push(snapshot(&pool, t, &[]).await);
        }
        replay();
        let mut after = Vec::new();
        for t in tables {
            after.push(snapshot(&pool, t, &[]).await);
        }
        assert!(before == after, "the second replay changed rows");
    });
    assert_eq!(
        objects(&data),
        stored_objects,
        "the second replay rewrote objects"
    );
    let parquet = std::fs::read_dir(data.join("events")).unwrap().count();
    assert_eq!(parquet, 8, "a Parquet dataset per event type");
    assert!(
        parquet_event_ids(&data) == parquet_ids,
        "the second replay added rows to the Parquet files"
    );
}

/// How many times each event id is in the Parquet files under `data/events`.
fn parquet_event_ids(data: &Path) -> BTreeMap<String, usize> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let mut ids = BTreeMap::new();
    let pattern = format!("{}/events/type=*/date=*/*.parquet", data.display());
    for path in glob::glob(&pattern).unwrap().flatten() {
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column_by_name("event_id").unwrap().as_string::<i32>();
            for i in 0..column.len() {
                *ids.entry(column.value(i).to_string()).or_default() += 1;
            }
        }
    }
    ids
}

/// A PostgreSQL server of the test's own (initdb in a temporary folder, run as the postgres
/// user), to stop and start without disturbing the other tests.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    fn bin(tool: &str) -> String {
        let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is installed");
        let version = versions
            .flatten()
            .map(|e| e.path())
            .max()
            .expect("a PostgreSQL version");
        version.join("bin").join(tool).display().to_string()
    }

    fn as_postgres(args: &[&str]) {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(port: u16) -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres", dir.path().to_str().unwrap()])
            .status();
        Self::as_postgres(&[
            &Self::bin("initdb"),
            "-D",
            data.to_str().unwrap(),
            "--auth=trust",
            "--username=root",
        ]);
        let own = OwnPostgres { dir, port };
        own.ctl("start");
        own
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        Self::as_postgres(&[
            &Self::bin("pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-m",
            "fast",
            action,
        ]);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &Self::bin("pg_ctl"), "-D"])
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Runs `test` on a two-thread runtime with a sink context whose dead letters go to a
/// temporary folder; then checks that none went there.
fn with_sink_context<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(evalsink::sinks::SinkContext) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, dead_letter_thread) = sink_context("pg", dir.path());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(ctx));
    dead_letter_thread.join().unwrap();
    assert!(dead_letters(&dir.path().join("dead-letter")).is_empty());
}

/// A lane holds the lifecycle events of several writes and stores them as one merge, without
/// waiting for a flush: within `batch.timeout_secs`.
#[test]
fn a_lane_merges_the_lifecycle_of_several_writes_and_stores_it_in_time() {
    let url = fresh_database("lane_window");
    with_sink_context(|ctx| async move {
        let config = PostgresConfig {
            endpoint: url.clone(),
            batch: evalsink::sinks::BatchConfig {
                timeout_secs: 0.5,
                ..PostgresConfig::default().batch
            },
            ..PostgresConfig::default()
        };
        let mut sink = PostgresSink::connect(&config, None, ctx).await.unwrap();
        // One eval's four stages, each in a write of its own; no flush.
        let mut acks = Vec::new();
        for stage in 0..4u8 {
            let step = Step {
                stage,
                variant: 0,
                at: stage as i64,
                tenant: None,
            };
            let (ack, acked) = Ack::new();
            let events = events_of(&[lifecycle_line("e1", &step)], true);
            sink.write(&[Arc::new(Batch::new(events, ack))])
                .await
                .unwrap();
            acks.push(acked);
        }
        for acked in acks {
            let status = tokio::time::timeout(std::time::Duration::from_secs(10), acked)
                .await
                .expect("acknowledged within the lane's time, without a flush")
                .unwrap();
            assert_eq!(status, evalsink::event::AckStatus::Delivered);
        }
        let pool = pool(&url).await;
        let row = sqlx::query(
            "SELECT status, code, executor_id, error, ctid::text AS ctid FROM evaluations",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("status"), "failed");
        assert!(row.get::<Option<String>, _>("code").is_some());
        assert!(row.get::<Option<String>, _>("executor_id").is_some());
        assert!(row.get::<Option<String>, _>("error").is_some());
        // The first tuple of the table: the four writes made one insert and no update.
        assert_eq!(row.get::<String, _>("ctid"), "(0,1)");
        sink.flush(true).await.unwrap();
    });
}

/// While the server is down, a write waits and its batch stays unacknowledged; once the server
/// is back, the write is retried, committed, and only then acknowledged.
#[test]
fn a_write_waits_for_a_stopped_server_and_is_acknowledged_only_after_commit() {
    // Below the ephemeral range (32768–60999 here): a port in it can be taken at any moment by
    // another test's outgoing connection, and the server then fails to start.
    let server = OwnPostgres::start(25_432);
    let url = server.url("evalsink");
    with_sink_context(|ctx| async move {
        let config = PostgresConfig {
            endpoint: url.clone(),
            ..PostgresConfig::default()
        };
        let mut sink = PostgresSink::connect(&config, None, ctx).await.unwrap();
        let lines: Vec<String> = (0..500)
            .map(|i| {
                lifecycle_line(
                    &format!("e{}", i % 50),
                    &Step {
                        stage: (i % 4) as u8,
                        variant: 0,
                        at: i,
                        tenant: None,
                    },
                )
            })
            .collect();
        server.ctl("stop");
        let (ack, mut acked) = Ack::new();
        sink.write(&[Arc::new(Batch::new(events_of(&lines, true), ack))])
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert!(
            acked.try_recv().is_err(),
            "acknowledged while the server was down"
        );
        server.ctl("start");
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), &mut acked)
            .await
            .expect("acknowledged once the server is back")
            .unwrap();
        assert_eq!(status, evalsink::event::AckStatus::Delivered);
        let pool = pool(&url).await;
        assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 500);
        assert_eq!(count(&pool, "SELECT count(*) FROM evaluations").await, 50);
        sink.flush(true).await.unwrap();
    });
}

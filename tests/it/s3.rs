//! The S3 store and the `split` transform against the real S3-compatible server (moto) that
//! `scripts/services.sh` starts (`EVALSINK_S3_ENDPOINT`, credentials `testing`/`testing`): each
//! test makes its own bucket and checks the bytes in it with a client of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use evalsink::store::{Store, StoreConfig, StoreError};
use evalsink::transforms::redact::{RedactConfig, Redactor};
use futures_util::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_success, evalsink, generated, s3_endpoint, write_config};

const REGION: &str = "us-east-1";

fn access_key() -> String {
    std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into())
}

fn secret_key() -> String {
    std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into())
}

/// The tests' own client (explicit credentials, path-style), to make buckets and read back.
fn client() -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(s3_endpoint())
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            access_key(),
            secret_key(),
            None,
            None,
            "tests",
        ))
        .build();
    Client::from_conf(config)
}

/// A new bucket for one test.
async fn bucket(client: &Client, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("evalsink-{test}-{}-{nanos}", std::process::id());
    let name: String = name.replace('_', "-").chars().take(63).collect();
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create bucket {name} at {} (run scripts/services.sh): {}",
                s3_endpoint(),
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    name
}

/// The store config the pipeline uses: the bucket with a prefix, on the test server.
fn store_config(bucket: &str, prefix: &str) -> StoreConfig {
    StoreConfig {
        url: format!("s3://{bucket}/{prefix}"),
        region: Some(REGION.into()),
        endpoint: Some(s3_endpoint()),
        sse: None,
        kms_key_id: None,
    }
}

/// Opens a store in this process, which reads credentials from the standard AWS chain.
async fn open(config: &StoreConfig) -> Store {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "the S3 tests read credentials from the environment: run them with scripts/test.sh, \
         or export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1"
    );
    Store::open(config).await.unwrap()
}

async fn raw_get(client: &Client, bucket: &str, key: &str) -> Bytes {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
}

async fn raw_keys(client: &Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    keys.sort();
    keys
}

async fn multipart_uploads(client: &Client, bucket: &str) -> usize {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

/// Bytes that do not compress and differ in every part.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

#[tokio::test]
async fn put_get_exists_and_list_under_the_prefix() {
    let client = client();
    let bucket = bucket(&client, "basic").await;
    let store = open(&store_config(&bucket, "pre/fix/")).await;

    store
        .put("outputs/e1/abc", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(
        store.get("outputs/e1/abc").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    assert!(store.exists("outputs/e1/abc").await.unwrap());
    assert!(!store.exists("outputs/e1/nope").await.unwrap());
    assert!(matches!(
        store.get("outputs/e1/nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.put("../escape", Bytes::new()).await.is_err());
    // The prefix is where the objects are, and keys come back without it.
    assert_eq!(
        raw_keys(&client, &bucket).await,
        vec!["pre/fix/outputs/e1/abc"]
    );
    assert_eq!(
        raw_get(&client, &bucket, "pre/fix/outputs/e1/abc").await,
        Bytes::from_static(b"hello")
    );

    // More keys than one ListObjectsV2 page holds (1000).
    let names: Vec<String> = (0..1003).map(|i| format!("many/{i:05}")).collect();
    futures_util::stream::iter(names.iter())
        .for_each_concurrent(16, |key| {
            let store = store.clone();
            async move { store.put(key, Bytes::from(key.clone())).await.unwrap() }
        })
        .await;
    let listed = store.list("many/").await.unwrap();
    assert_eq!(listed, names);
    assert_eq!(store.list("").await.unwrap().len(), 1004);
    assert_eq!(
        store.list("outputs/").await.unwrap(),
        vec!["outputs/e1/abc"]
    );
}

#[tokio::test]
async fn open_says_what_is_wrong() {
    let client = client();
    let gone = bucket(&client, "open").await;
    let store = open(&store_config(&gone, "x")).await;
    client.delete_bucket().bucket(&gone).send().await.unwrap();
    let err = store
        .put("outputs/e/k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "bucket {gone} does not exist: create it or fix store.url"
        )),
        "{err}"
    );
    let missing = format!("evalsink-missing-{}", std::process::id());
    let err = Store::open(&store_config(&missing, "x"))
        .await
        .expect_err("a missing bucket is an error");
    assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("bucket {missing} does not exist"))
            && message.contains("store.url"),
        "{message}"
    );

    let mut unreachable = store_config("some-bucket", "x");
    unreachable.endpoint = Some("http://127.0.0.1:1".into());
    let started = Instant::now();
    let err = Store::open(&unreachable).await.expect_err("unreachable");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_multipart_upload_of_several_parts_reads_back_byte_for_byte() {
    let client = client();
    let bucket = bucket(&client, "multipart").await;
    let store = open(&store_config(&bucket, "p")).await;
    let data = Bytes::from(noise(20 * 1024 * 1024 + 12345, 7));

    let mut upload = store.upload("events/big.bin").await.unwrap();
    // Written as the parquet sink does: chunks of 1 MiB and odd sizes.
    let mut at = 0;
    for (i, size) in [1 << 20, 3_000_001, 1, 9 << 20].iter().cycle().enumerate() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        upload.write(data.slice(at..end)).await.unwrap();
        at = end;
        if i == 3 {
            // Two parts of 8 MiB have been sent: the upload is in progress, not visible.
            assert_eq!(multipart_uploads(&client, &bucket).await, 1);
            assert!(!store.exists("events/big.bin").await.unwrap());
        }
    }
    upload.complete().await.unwrap();
    assert_eq!(multipart_uploads(&client, &bucket).await, 0);

    let head = client
        .head_object()
        .bucket(&bucket)
        .key("p/events/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(data.len() as i64));
    // A multipart ETag ends with the number of parts: 8 + 8 + 4 MiB.
    assert!(
        head.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "{:?}",
        head.e_tag()
    );
    let back = raw_get(&client, &bucket, "p/events/big.bin").await;
    assert!(back == data, "the object is the bytes written");
    assert!(store.get("events/big.bin").await.unwrap() == data);
}

#[tokio::test]
async fn an_upload_smaller_than_a_part_is_one_put() {
    let client = client();
    let bucket = bucket(&client, "small-upload").await;
    let store = open(&store_config(&bucket, "")).await;
    let mut upload = store.upload("events/small.bin").await.unwrap();
    upload.write(Bytes::from_static(b"abc")).await.unwrap();
    upload.write(Bytes::from(noise(4 << 20, 1))).await.unwrap();
    // Nothing is sent before a part is full.
    assert_eq!(multipart_uploads(&client, &bucket).await, 0);
    upload.complete().await.unwrap();
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("events/small.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(3 + (4 << 20)));
    assert!(
        !head.e_tag().unwrap().contains('-'),
        "a single PutObject: {:?}",
        head.e_tag()
    );
    // An empty upload is an empty object.
    let empty = store.upload("events/empty").await.unwrap();
    empty.complete().await.unwrap();
    assert_eq!(store.get("events/empty").await.unwrap().len(), 0);
}

#[tokio::test]
async fn server_side_encryption_is_sent_on_put_and_multipart() {
    let client = client();
    let bucket = bucket(&client, "sse").await;
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    for (sse, kms) in [("AES256", None), ("aws:kms", Some(key_id))] {
        let mut config = store_config(&bucket, sse.replace(':', "-").as_str());
        config.sse = Some(sse.into());
        config.kms_key_id = kms.map(str::to_string);
        let store = open(&config).await;
        store
            .put("outputs/e/one", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let mut upload = store.upload("events/multi").await.unwrap();
        upload.write(Bytes::from(noise(9 << 20, 2))).await.unwrap();
        upload.complete().await.unwrap();
        for key in ["outputs/e/one", "events/multi"] {
            let full = format!("{}/{key}", sse.replace(':', "-"));
            let head = client
                .head_object()
                .bucket(&bucket)
                .key(&full)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.server_side_encryption(),
                Some(&ServerSideEncryption::from(sse)),
                "{full}"
            );
            assert_eq!(head.ssekms_key_id(), kms, "{full}");
        }
    }
}

#[tokio::test]
async fn an_aborted_upload_leaves_nothing() {
    let client = client();
    let bucket = bucket(&client, "abort").await;
    let store = open(&store_config(&bucket, "p")).await;
    let mut upload = store.upload("events/aborted").await.unwrap();
    upload.write(Bytes::from(noise(12 << 20, 3))).await.unwrap();
    assert_eq!(multipart_uploads(&client, &bucket).await, 1);
    upload.abort().await.unwrap();
    assert_eq!(multipart_uploads(&client, &bucket).await, 0);
    assert!(!store.exists("events/aborted").await.unwrap());
    assert!(raw_keys(&client, &bucket).await.is_empty());

    // An upload dropped half-way is aborted in the background.
    let mut dropped = store.upload("events/dropped").await.unwrap();
    dropped.write(Bytes::from(noise(9 << 20, 4))).await.unwrap();
    assert_eq!(multipart_uploads(&client, &bucket).await, 1);
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while multipart_uploads(&client, &bucket).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(raw_keys(&client, &bucket).await.is_empty());
}

/// `[store]` table lines for a pipeline config.
fn store_table(bucket: &str, prefix: &str) -> String {
    format!(
        "url = \"s3://{bucket}/{prefix}\"\nregion = \"{REGION}\"\nendpoint = \"{}\"\n",
        s3_endpoint()
    )
}

/// Runs `evalsink replay -c config input` with the test server's credentials.
fn replay(dir: &Path, config: &Path, input: &[u8]) -> Output {
    let file = dir.join("input.ndjson");
    std::fs::write(&file, input).unwrap();
    let out = evalsink()
        .args([
            "replay",
            "--no-progress",
            "-c",
            config.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", access_key())
        .env("AWS_SECRET_ACCESS_KEY", secret_key())
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_success(&out);
    out
}

fn input_lines(input: &[u8]) -> Vec<Map<String, Value>> {
    std::str::from_utf8(input)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The rows of the Parquet files under `{prefix}/events/` in the bucket, as (key, column → value
/// of the text and integer columns).
async fn parquet_rows(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, BTreeMap<String, Value>)> {
    let mut rows = Vec::new();
    for key in raw_keys(client, bucket).await {
        if !key.starts_with(&format!("{prefix}/events/")) {
            continue;
        }
        let bytes = raw_get(client, bucket, &key).await;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            for i in 0..batch.num_rows() {
                let mut columns = BTreeMap::new();
                for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
                    let value = if array.is_null(i) {
                        Value::Null
                    } else {
                        match field.data_type() {
                            arrow_schema::DataType::Utf8 => {
                                array.as_string::<i32>().value(i).into()
                            }
                            arrow_schema::DataType::Int64 => array
                                .as_primitive::<arrow_array::types::Int64Type>()
                                .value(i)
                                .into(),
                            _ => continue,
                        }
                    };
                    columns.insert(field.name().clone(), value);
                }
                rows.push((key.clone(), columns));
            }
        }
    }
    rows
}

/// A pipeline config: stdin → classify → parquet into `s3://{bucket}/cold`, with `sink_keys` for
/// the sink and `store_keys` for its store.
fn parquet_config(dir: &Path, bucket: &str, sink_keys: &str, store_keys: &str) -> PathBuf {
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
{sink_keys}
[sinks.analytics.store]
{store}{store_keys}
"#,
            dir = dir.display(),
            store = store_table(bucket, "cold")
        ),
    )
}

/// `cold/events/type={TYPE}/date={DATE}/{FILE}` → (TYPE, DATE, FILE).
fn dataset_key(key: &str) -> (&str, &str, &str) {
    let rest = key.strip_prefix("cold/events/type=").unwrap();
    let (type_name, rest) = rest.split_once("/date=").unwrap();
    let (date, file) = rest.split_once('/').unwrap();
    (type_name, date, file)
}

#[tokio::test]
async fn the_parquet_sink_writes_to_s3() {
    let client = client();
    let bucket = bucket(&client, "parquet").await;
    let dir = tempfile::tempdir().unwrap();
    let input = generated(&["--events", "2000", "--seed", "5", "--large-outputs", "0"]);
    let config = parquet_config(dir.path(), &bucket, "", "sse = \"AES256\"");
    replay(dir.path(), &config, &input);
    // A second replay reads what is stored and adds no row twice.
    replay(dir.path(), &config, &input);

    let lines = input_lines(&input);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for line in &lines {
        expected.insert(
            line["event_id"].as_str().unwrap().into(),
            line["type"].as_str().unwrap().into(),
        );
    }
    let rows = parquet_rows(&client, &bucket, "cold").await;
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    for (key, columns) in &rows {
        let (type_name, _date, file) = dataset_key(key);
        assert!(
            file.starts_with("part-") && file.ends_with(".parquet"),
            "{key}"
        );
        let id = columns["event_id"].as_str().unwrap().to_string();
        assert!(
            stored.insert(id.clone(), type_name.into()).is_none(),
            "{id} twice"
        );
    }
    assert_eq!(stored, expected, "every event once, in its type's dataset");
    // The files were written with the configured encryption.
    let (key, _) = &rows[0];
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    assert_eq!(multipart_uploads(&client, &bucket).await, 0);
}

#[tokio::test]
async fn a_replay_of_many_days_stores_every_event_in_its_days_file() {
    // 40 days × 8 types is more partitions than files are kept open: the files of the days
    // left behind are completed as the replay moves on.
    let client = client();
    let bucket = bucket(&client, "parquet-days").await;
    let dir = tempfile::tempdir().unwrap();
    let input = generated(&["--events", "6000", "--seed", "8", "--days", "40"]);
    let config = parquet_config(dir.path(), &bucket, "batch.max_events = 500", "");
    replay(dir.path(), &config, &input);

    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for line in input_lines(&input) {
        let date = &line["timestamp"].as_str().unwrap()[..10];
        expected.insert(
            line["event_id"].as_str().unwrap().into(),
            format!("{}/date={date}", line["type"].as_str().unwrap()),
        );
    }
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut partitions = BTreeSet::new();
    for (key, columns) in parquet_rows(&client, &bucket, "cold").await {
        let (type_name, date, _file) = dataset_key(&key);
        let partition = format!("{type_name}/date={date}");
        partitions.insert(partition.clone());
        let id = columns["event_id"].as_str().unwrap().to_string();
        assert!(stored.insert(id.clone(), partition).is_none(), "{id} twice");
    }
    assert!(partitions.len() > 300, "{} partitions", partitions.len());
    assert_eq!(
        stored, expected,
        "every event once, in its type's and day's dataset"
    );
    assert_eq!(multipart_uploads(&client, &bucket).await, 0);
}

/// Input for the split tests: generated events with large outputs, some with secrets, plus an
/// event whose large output has a known secret and an eval_id that is not a safe path.
fn split_input() -> Vec<u8> {
    let mut input = generated(&[
        "--events",
        "300",
        "--seed",
        "21",
        "--large-outputs",
        "0.5",
        "--secrets",
        "0.3",
    ]);
    let secret = "ghp_R8mQ2vT5xL9kN3pW7zY1cB4dF6hJ0sA2eG5u";
    let output = format!(
        "{}{secret}\n{}",
        "line of output\n".repeat(80_000),
        "é".repeat(600)
    );
    let line = serde_json::json!({
        "type": "EVALUATION_COMPLETED",
        "event_id": "big-secret",
        "timestamp": "2026-03-01T10:00:00Z",
        "eval_id": "tenant/eval 1",
        "output": output,
        "success": true,
        "end_time": "2026-03-01T10:00:01Z",
    });
    input.extend_from_slice(line.to_string().as_bytes());
    input.push(b'\n');
    input
}

/// The outputs of the input's COMPLETED events after redaction, by event_id.
fn redacted_outputs(input: &[u8]) -> BTreeMap<String, (String, String)> {
    let redactor = Redactor::new(&RedactConfig::default()).unwrap();
    input_lines(input)
        .into_iter()
        .filter(|l| l["type"] == "EVALUATION_COMPLETED")
        .map(|l| {
            let mut output = l["output"].as_str().unwrap().to_string();
            redactor.redact_string(&mut output);
            (
                l["event_id"].as_str().unwrap().to_string(),
                (l["eval_id"].as_str().unwrap().to_string(), output),
            )
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks the console's events against the input: large outputs replaced by their reference
/// (preview, size, sha256, ref), small ones inline. Returns (event_id, ref, full text) of the
/// stored ones.
fn check_split_events(stdout: &[u8], input: &[u8]) -> Vec<(String, String, String)> {
    let expected = redacted_outputs(input);
    let mut stored = Vec::new();
    let mut seen = 0;
    for line in std::str::from_utf8(stdout).unwrap().lines() {
        let event: Map<String, Value> = serde_json::from_str(line).unwrap();
        if event["type"] != "EVALUATION_COMPLETED" {
            continue;
        }
        seen += 1;
        let id = event["event_id"].as_str().unwrap();
        let (eval_id, text) = &expected[id];
        if text.len() <= 1024 * 1024 {
            assert_eq!(event["output"].as_str(), Some(text.as_str()), "{id} inline");
            continue;
        }
        let output = event["output"]
            .as_object()
            .unwrap_or_else(|| panic!("{id}: a large output is replaced by its reference"));
        let sha = sha256_hex(text.as_bytes());
        let segment: String = eval_id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_eq!(output["ref"], format!("outputs/{segment}/{sha}"), "{id}");
        assert_eq!(output["sha256"], sha.as_str(), "{id}");
        assert_eq!(output["size"], text.len(), "{id}");
        let preview = output["preview"].as_str().unwrap();
        assert!(
            preview.len() <= 1024 && preview.len() > 1020 && text.starts_with(preview),
            "{id}: the preview is the first KiB, cut on a char boundary"
        );
        stored.push((
            id.to_string(),
            output["ref"].as_str().unwrap().to_string(),
            text.clone(),
        ));
    }
    assert_eq!(seen, expected.len(), "every completed event came out");
    stored
}

fn split_config(dir: &Path, split_store: &str, sinks: &str) -> PathBuf {
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
[transforms.redact]
type = "redact"
inputs = ["classify"]
[transforms.split]
type = "split"
inputs = ["redact"]
{split_store}
[sinks.out]
type = "console"
inputs = ["split"]
{sinks}
"#,
            dir = dir.display()
        ),
    )
}

#[tokio::test]
async fn split_stores_large_redacted_outputs_in_s3_before_the_events_move_on() {
    let client = client();
    let bucket = bucket(&client, "split").await;
    let dir = tempfile::tempdir().unwrap();
    let input = split_input();
    let config = split_config(
        dir.path(),
        &format!("[transforms.split.store]\n{}", store_table(&bucket, "obj")),
        &format!(
            "[sinks.analytics]\ntype = \"parquet\"\ninputs = [\"split\"]\n[sinks.analytics.store]\n{}",
            store_table(&bucket, "cold")
        ),
    );
    let out = replay(dir.path(), &config, &input);
    let stored = check_split_events(&out.stdout, &input);
    assert!(stored.len() >= 10, "the input has large outputs");
    assert!(
        stored
            .iter()
            .any(|(_, _, text)| text.contains("[REDACTED:")),
        "some large outputs had secrets"
    );

    // Every object is in the bucket under the store's prefix, with the full redacted text.
    for (id, key, text) in &stored {
        let object = raw_get(&client, &bucket, &format!("obj/{key}")).await;
        assert!(
            object == text.as_bytes(),
            "{id}: the object is the redacted output"
        );
    }
    let secret = raw_get(
        &client,
        &bucket,
        &stored
            .iter()
            .find(|(id, _, _)| id == "big-secret")
            .map(|(_, key, _)| format!("obj/{key}"))
            .unwrap(),
    )
    .await;
    let secret = std::str::from_utf8(&secret).unwrap();
    assert!(
        !secret.contains("ghp_R8mQ2vT5"),
        "the stored text is redacted"
    );
    assert!(
        secret.contains("[REDACTED:github-"),
        "{}",
        &secret[1_199_000..]
    );
    let objects: Vec<String> = raw_keys(&client, &bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with("obj/"))
        .collect();
    let mut expected_keys: Vec<String> =
        stored.iter().map(|(_, k, _)| format!("obj/{k}")).collect();
    expected_keys.sort();
    expected_keys.dedup();
    assert_eq!(objects, expected_keys, "nothing else is stored");

    // The Parquet rows of the completed events carry the reference.
    let refs: BTreeMap<&str, &str> = stored
        .iter()
        .map(|(id, key, _)| (id.as_str(), key.as_str()))
        .collect();
    let rows = parquet_rows(&client, &bucket, "cold").await;
    let completed: Vec<_> = rows
        .iter()
        .filter(|(key, _)| key.contains("type=EVALUATION_COMPLETED"))
        .collect();
    assert_eq!(completed.len(), redacted_outputs(&input).len());
    for (_, columns) in completed {
        let id = columns["event_id"].as_str().unwrap();
        match refs.get(id) {
            Some(key) => {
                assert_eq!(columns["output_ref"].as_str(), Some(*key), "{id}");
                assert!(columns["output_size"].as_i64().unwrap() > 1024 * 1024);
                assert!(columns["output"].as_str().unwrap().len() <= 1024);
            }
            None => assert_eq!(columns["output_ref"], Value::Null, "{id}"),
        }
    }

    // A second replay stores the same objects again: nothing changes.
    let again = replay(dir.path(), &config, &input);
    assert_eq!(check_split_events(&again.stdout, &input), stored);
    let after: Vec<String> = raw_keys(&client, &bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with("obj/"))
        .collect();
    assert_eq!(after, objects);
}

#[test]
fn split_with_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let input = split_input();
    let store = dir.path().join("objects");
    let config = split_config(
        dir.path(),
        &format!(
            "fields = [\"output\"]\ninline_max_bytes = 1048576\npreview_bytes = 1024\nstore = \"file://{}\"",
            store.display()
        ),
        "",
    );
    let file = dir.path().join("input.ndjson");
    std::fs::write(&file, &input).unwrap();
    let out = evalsink()
        .args([
            "replay",
            "--no-progress",
            "-c",
            config.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let stored = check_split_events(&out.stdout, &input);
    assert!(stored.len() >= 10, "the input has large outputs");
    for (id, key, text) in &stored {
        let object = std::fs::read(store.join(key)).unwrap();
        assert!(
            object == text.as_bytes(),
            "{id}: the file is the redacted output"
        );
    }
    let files: Vec<_> = glob::glob(&format!("{}/outputs/*/*", store.display()))
        .unwrap()
        .collect();
    let mut keys: Vec<&String> = stored.iter().map(|(_, k, _)| k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        files.len(),
        keys.len(),
        "one file per object, no temporary files left"
    );
    assert!(crate::common::dead_letters(&dir.path().join("data/dead-letter")).is_empty());
}

/// A TCP forwarder to the S3 server that can be cut: while it is down, every connection is
/// closed at once, as when the server is gone.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes sent back by the server so far.
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            up: Default::default(),
            answered: Default::default(),
            open: Default::default(),
        };
        proxy.up.store(true, SeqCst);
        let (up, answered, open) = (proxy.up.clone(), proxy.answered.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                open.lock().unwrap().push(client.try_clone().unwrap());
                open.lock().unwrap().push(server.try_clone().unwrap());
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let answered = answered.clone();
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    use std::io::{Read, Write};
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        answered.fetch_add(n, SeqCst);
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_waits_while_s3_is_unreachable_and_loses_nothing() {
    use std::io::Write;
    use std::process::Stdio;
    let client = client();
    let bucket = bucket(&client, "outage").await;
    let proxy = Proxy::start(&s3_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let split_store = format!(
        "[transforms.split.store]\nurl = \"s3://{bucket}/obj\"\nregion = \"{REGION}\"\nendpoint = \"{}\"\n",
        proxy.endpoint()
    );
    let config = split_config(dir.path(), &split_store, "");
    let stdout = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = evalsink()
        .args(["run", "-c", config.to_str().unwrap()])
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", access_key())
        .env("AWS_SECRET_ACCESS_KEY", secret_key())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    // The store is open once the server has answered HeadBucket; then S3 goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.answered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "evalsink never reached S3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();

    let input = split_input();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.clone();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&feed);
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pipeline waits for the store instead of ending"
    );
    assert!(raw_keys(&client, &bucket).await.is_empty());
    let printed = std::fs::read(dir.path().join("stdout")).unwrap();
    assert!(
        !String::from_utf8_lossy(&printed).contains("\"ref\""),
        "no event moved on without its object"
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "evalsink did not finish after S3 came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("the pipeline waits"), "{stderr}");
    let stored = check_split_events(&std::fs::read(dir.path().join("stdout")).unwrap(), &input);
    assert!(stored.len() >= 10);
    for (id, key, text) in &stored {
        let object = raw_get(&client, &bucket, &format!("obj/{key}")).await;
        assert!(object == text.as_bytes(), "{id}: stored after the outage");
    }
    assert!(crate::common::dead_letters(&dir.path().join("data/dead-letter")).is_empty());
}

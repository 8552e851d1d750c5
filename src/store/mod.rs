//! Object storage behind one small interface: a local folder (`file://PATH`, the default) or S3
//! (`s3://BUCKET/PREFIX`). Keys are relative (`outputs/{eval_id}/{sha256}`,
//! `events/type=.../part-....parquet`); a `put` is complete and durable when it returns.

pub mod local;

use bytes::Bytes;
use serde::Deserialize;

use local::{LocalStore, LocalUpload};

/// A `store` key: a URL string, or a table with the URL and S3 settings.
///
/// ```text
/// store = "file://./data"
/// store = { url = "s3://bucket/prefix", region = "eu-west-1", endpoint = "http://127.0.0.1:5000", sse = "aws:kms", kms_key_id = "..." }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: String,
    pub region: Option<String>,
    /// For S3-compatible servers (path-style addressing is used then).
    pub endpoint: Option<String>,
    /// Server-side encryption: `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::from_url("file://./data")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreTable {
    url: String,
    region: Option<String>,
    endpoint: Option<String>,
    sse: Option<String>,
    kms_key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoreSpec {
    Url(String),
    Table(toml::Table),
}

impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StoreSpec::deserialize(d)? {
            StoreSpec::Url(url) => Ok(StoreConfig::from_url(&url)),
            StoreSpec::Table(t) => {
                let t: StoreTable =
                    toml::Value::Table(t)
                        .try_into()
                        .map_err(|e: toml::de::Error| {
                            serde::de::Error::custom(format!("store: {}", e.message()))
                        })?;
                Ok(StoreConfig {
                    url: t.url,
                    region: t.region,
                    endpoint: t.endpoint,
                    sse: t.sse,
                    kms_key_id: t.kms_key_id,
                })
            }
        }
    }
}

impl StoreConfig {
    pub fn from_url(url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_string(),
            region: None,
            endpoint: None,
            sse: None,
            kms_key_id: None,
        }
    }

    /// Checks that need no I/O; returns (key, message) pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("file://") || self.url.starts_with("s3://")) {
            problems.push((
                "store".into(),
                format!(
                    "{:?} is not a store URL; write file://PATH or s3://BUCKET/PREFIX",
                    self.url
                ),
            ));
        }
        if let Some(sse) = &self.sse
            && sse != "AES256"
            && sse != "aws:kms"
        {
            problems.push((
                "store.sse".into(),
                format!("{sse:?} is not a server-side encryption; use \"AES256\" or \"aws:kms\""),
            ));
        }
        problems
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot be reached (retry later).
    #[error("{0}")]
    Unavailable(String),
    /// The request was refused (bad bucket, credentials, key).
    #[error("{0}")]
    Failed(String),
    #[error("object {0} does not exist")]
    NotFound(String),
}

/// An object store.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
}

impl Store {
    /// Opens the store (creates the folder; for S3, builds the client).
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        if let Some(path) = config.url.strip_prefix("file://") {
            return Ok(Store::Local(LocalStore::open(path)?));
        }
        Err(StoreError::Failed(format!(
            "{:?}: unsupported store URL; write file://PATH or s3://BUCKET/PREFIX",
            config.url
        )))
    }

    /// Stores a whole object; when this returns, the object is durable.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.put(key, body).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(s) => s.get(key).await,
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Local(s) => s.exists(key).await,
        }
    }

    /// Keys under a prefix (tests and tools).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
        }
    }

    /// Starts a streamed upload: parts are sent as they come (multipart on S3), and the object
    /// appears only on [`Upload::complete`].
    pub async fn upload(&self, key: &str) -> Result<Upload, StoreError> {
        match self {
            Store::Local(s) => Ok(Upload::Local(s.upload(key).await?)),
        }
    }
}

/// An upload in progress.
#[derive(Debug)]
pub enum Upload {
    Local(LocalUpload),
}

impl Upload {
    /// Adds bytes at the end of the object.
    pub async fn write(&mut self, part: Bytes) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.write(part).await,
        }
    }

    /// Makes the object visible and durable.
    pub async fn complete(self) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.complete().await,
        }
    }

    /// Drops what was written.
    pub async fn abort(self) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.abort().await,
        }
    }
}

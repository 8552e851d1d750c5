//! Object storage behind one small interface: a local folder (`file://PATH`, the default) or S3
//! (`s3://BUCKET/PREFIX`). Keys are relative (`outputs/{eval_id}/{sha256}`,
//! `events/type=.../part-....parquet`); a `put` is complete and durable when it returns.

pub mod local;
pub mod s3;

use bytes::Bytes;
use serde::Deserialize;

use local::{LocalStore, LocalUpload};
use s3::{S3Store, S3Upload};

/// A `store` key: a URL string, or a table with the URL and S3 settings.
///
/// ```text
/// store = "file://./data"
/// store = { url = "s3://bucket/prefix", region = "eu-west-1", endpoint = "http://127.0.0.1:5000", sse = "aws:kms", kms_key_id = "..." }
/// ```
///
/// In the table form, an empty string is the same as leaving the key out.
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
                // An empty value is the same as no value, so that a config can write
                // `endpoint = "${EVALSINK_S3_ENDPOINT:-}"`.
                let set = |v: Option<String>| v.filter(|v| !v.is_empty());
                Ok(StoreConfig {
                    url: t.url,
                    region: set(t.region),
                    endpoint: set(t.endpoint),
                    sse: set(t.sse),
                    kms_key_id: set(t.kms_key_id),
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
        if self.url.starts_with("s3://")
            && let Err(message) = s3::parse_url(&self.url)
        {
            problems.push(("store".into(), message));
        }
        if self.url.starts_with("file://") {
            for (key, set) in [
                ("region", self.region.is_some()),
                ("endpoint", self.endpoint.is_some()),
                ("sse", self.sse.is_some()),
                ("kms_key_id", self.kms_key_id.is_some()),
            ] {
                if set {
                    problems.push((
                        format!("store.{key}"),
                        format!(
                            "{key} applies to s3:// stores only; remove it or use an s3:// URL"
                        ),
                    ));
                }
            }
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push((
                "store.endpoint".into(),
                format!(
                    "{endpoint:?} is not an endpoint URL; write http://HOST:PORT or https://HOST"
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
        if self.kms_key_id.is_some() && self.sse.as_deref() != Some("aws:kms") {
            problems.push((
                "store.kms_key_id".into(),
                "a KMS key is used only with sse = \"aws:kms\"; set it, or remove kms_key_id"
                    .into(),
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
    S3(S3Store),
}

impl Store {
    /// Opens the store: creates the folder, or, for S3, builds the client and checks that the
    /// bucket can be reached.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        if let Some(path) = config.url.strip_prefix("file://") {
            return Ok(Store::Local(LocalStore::open(path)?));
        }
        if config.url.starts_with("s3://") {
            return Ok(Store::S3(S3Store::open(config).await?));
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
            Store::S3(s) => s.put(key, body).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(s) => s.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Local(s) => s.exists(key).await,
            Store::S3(s) => s.exists(key).await,
        }
    }

    /// Keys under a prefix (tests and tools).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }

    /// Starts a streamed upload: parts are sent as they come (multipart on S3), and the object
    /// appears only on [`Upload::complete`].
    pub async fn upload(&self, key: &str) -> Result<Upload, StoreError> {
        match self {
            Store::Local(s) => Ok(Upload::Local(s.upload(key).await?)),
            Store::S3(s) => Ok(Upload::S3(s.upload(key).await?)),
        }
    }
}

/// An upload in progress.
#[derive(Debug)]
pub enum Upload {
    Local(LocalUpload),
    S3(S3Upload),
}

impl Upload {
    /// Adds bytes at the end of the object.
    pub async fn write(&mut self, part: Bytes) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.write(part).await,
            Upload::S3(u) => u.write(part).await,
        }
    }

    /// Bytes held in memory until they make a whole part (S3; a local file holds none).
    pub fn buffered(&self) -> usize {
        match self {
            Upload::Local(_) => 0,
            Upload::S3(u) => u.buffered(),
        }
    }

    /// Makes the object visible and durable.
    pub async fn complete(self) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.complete().await,
            Upload::S3(u) => u.complete().await,
        }
    }

    /// Drops what was written.
    pub async fn abort(self) -> Result<(), StoreError> {
        match self {
            Upload::Local(u) => u.abort().await,
            Upload::S3(u) => u.abort().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> StoreConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            store: StoreConfig,
        }
        toml::from_str::<Wrapper>(text).unwrap().store
    }

    fn problems(config: &StoreConfig) -> Vec<String> {
        config.check().into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn a_url_or_a_table_with_empty_values_left_out() {
        assert_eq!(
            parse("store = \"file://./x\""),
            StoreConfig::from_url("file://./x")
        );
        let c = parse(
            "store = { url = \"s3://bucket/p\", region = \"eu-west-1\", endpoint = \"\", sse = \"aws:kms\", kms_key_id = \"k\" }",
        );
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint, None);
        assert_eq!(c.kms_key_id.as_deref(), Some("k"));
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn bad_settings_are_reported_with_their_key() {
        let mut c = StoreConfig::from_url("s3://no/p");
        assert_eq!(problems(&c), ["store"]);
        c.url = "s3://good-bucket/p".into();
        c.sse = Some("AES256".into());
        c.kms_key_id = Some("k".into());
        c.endpoint = Some("127.0.0.1:9000".into());
        assert_eq!(problems(&c), ["store.endpoint", "store.kms_key_id"]);
        let mut c = StoreConfig::from_url("file://./data");
        c.region = Some("us-east-1".into());
        assert_eq!(problems(&c), ["store.region"]);
    }
}

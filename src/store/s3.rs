//! The S3 store (`s3://BUCKET/PREFIX`): objects are `{PREFIX}/{key}` in the bucket, written with
//! PutObject or, for streamed uploads larger than one part, a multipart upload that appears only
//! when it is completed. Credentials come from the standard AWS chain (environment, profile,
//! web identity, container and instance roles); they are never logged.
//!
//! Errors are sorted for the callers' retries: a server that cannot be reached, a timeout, a 5xx
//! or throttling is [`StoreError::Unavailable`] (retried while the pipeline waits); a refusal
//! (no such bucket, access denied, a bad key or setting) is [`StoreError::Failed`], with a message
//! that says what to fix.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::{Bytes, BytesMut};

use super::{StoreConfig, StoreError};

/// Size of the parts of a multipart upload. S3 needs at least 5 MiB for every part but the last,
/// and allows 10,000 parts: 8 MiB parts make objects of up to 78 GiB. An upload holds at most
/// one part in memory.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// The region used when neither `region` nor the AWS chain (`AWS_REGION`, the profile) names one.
const FALLBACK_REGION: &str = "us-east-1";

/// A bucket and a key prefix, with the client and the encryption settings of every write.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Without slashes at either end; empty for the whole bucket.
    prefix: String,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
}

/// What a request was doing, for messages: `PutObject s3://bucket/key`.
struct Target<'a> {
    operation: &'static str,
    bucket: &'a str,
    key: &'a str,
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} s3://{}/{}", self.operation, self.bucket, self.key)
    }
}

/// Splits `s3://BUCKET/PREFIX` into the bucket and the prefix (without slashes at its ends).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} is not an S3 URL; write s3://BUCKET/PREFIX"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Today's rules are 3 to 63 lowercase letters, digits, '-' and '.'; older buckets may have
    // capitals and '_' and be up to 255 long, so only what can never be a bucket is refused.
    let valid_bucket = (3..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid_bucket {
        return Err(format!(
            "{bucket:?} in {url:?} is not a bucket name (3 to 63 lowercase letters, digits, \
             '-' and '.'); write s3://BUCKET/PREFIX"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "..") || prefix.contains("//") {
        return Err(format!(
            "the prefix {prefix:?} in {url:?} has an empty or '..' part"
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl S3Store {
    /// Builds the client and checks that the bucket can be reached with the credentials found.
    pub async fn open(config: &StoreConfig) -> Result<S3Store, StoreError> {
        let (bucket, prefix) = parse_url(&config.url).map_err(StoreError::Failed)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // One attempt of one request (an 8 MiB part on a slow link included).
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            s3 = s3.region(Region::from_static(FALLBACK_REGION));
        }
        if let Some(endpoint) = &config.endpoint {
            // S3-compatible servers (MinIO, Ceph, moto, ...) address buckets by path.
            s3 = s3.endpoint_url(endpoint.clone()).force_path_style(true);
        }
        let store = S3Store {
            client: Client::from_conf(s3.build()),
            bucket,
            prefix,
            sse: config.sse.as_deref().map(ServerSideEncryption::from),
            kms_key_id: config.kms_key_id.clone(),
        };
        store.check_bucket(config.endpoint.as_deref()).await?;
        Ok(store)
    }

    /// The object key of a store key: `{prefix}/{key}`.
    pub fn object_key(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() || key.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(StoreError::Failed(format!(
                "{key:?} is not a valid object key"
            )));
        }
        Ok(self.full(key))
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn target<'a>(&'a self, operation: &'static str, key: &'a str) -> Target<'a> {
        Target {
            operation,
            bucket: &self.bucket,
            key,
        }
    }

    async fn check_bucket(&self, endpoint: Option<&str>) -> Result<(), StoreError> {
        let result = self.client.head_bucket().bucket(&self.bucket).send().await;
        let Err(err) = result else {
            return Ok(());
        };
        let target = self.target("HeadBucket", "");
        let status = err.raw_response().map(|r| r.status().as_u16());
        let bucket = &self.bucket;
        Err(match status {
            // HEAD responses carry no error body, so the status is all there is.
            Some(404) => StoreError::Failed(format!(
                "bucket {bucket} does not exist: create it or fix store.url"
            )),
            Some(403) => StoreError::Failed(format!(
                "access to bucket {bucket} is denied: check the AWS credentials (AWS_ACCESS_KEY_ID \
                 and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance role) and the bucket's policy"
            )),
            Some(301 | 400) if endpoint.is_none() => StoreError::Failed(format!(
                "bucket {bucket} is in another region than the one configured: set store.region \
                 (or AWS_REGION) to the bucket's region"
            )),
            _ => match classify(err, &target) {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                    "{m} (is the S3 endpoint{} reachable?)",
                    endpoint.map_or_else(String::new, |e| format!(" {e}"))
                )),
                other => other,
            },
        })
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.object_key(key)?;
        self.put_full(&full, body).await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let full = self.object_key(key)?;
        let target = self.target("GetObject", &full);
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(output) => output,
            Err(e) if status(&e) == Some(404) && e.code() != Some("NoSuchBucket") => {
                return Err(StoreError::NotFound(key.to_string()));
            }
            Err(e) => return Err(classify(e, &target)),
        };
        let body = output.body.collect().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "{target}: reading the object failed: {}",
                chain(&e)
            ))
        })?;
        Ok(body.into_bytes())
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let full = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // HeadObject has no error body: 404 is a missing key (a missing bucket fails `open`).
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(classify(e, &self.target("HeadObject", &full))),
        }
    }

    /// Keys under `prefix` (relative to the store's prefix), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(e, &self.target("ListObjectsV2", &full)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.get(strip..))
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Starts a streamed upload. Nothing is sent before the first part is full, so an object
    /// smaller than one part is a single PutObject on [`S3Upload::complete`].
    pub async fn upload(&self, key: &str) -> Result<S3Upload, StoreError> {
        let full = self.object_key(key)?;
        Ok(S3Upload {
            store: self.clone(),
            key: full,
            buffer: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
        })
    }
}

/// An upload in progress: bytes are buffered until a part is full, then sent as one part of a
/// multipart upload (started with the first part). After an error the upload is of no more use:
/// abort it. An upload dropped without `complete` or `abort` is aborted in the background.
#[derive(Debug)]
pub struct S3Upload {
    store: S3Store,
    /// The full object key.
    key: String,
    /// At most one part.
    buffer: BytesMut,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl S3Upload {
    /// Bytes waiting for the part they belong to.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub async fn write(&mut self, mut data: Bytes) -> Result<(), StoreError> {
        let part_bytes = PART_BYTES;
        while !data.is_empty() {
            if self.buffer.is_empty() && data.len() >= part_bytes {
                // A whole part in what was written: sent without a copy.
                let part = data.split_to(part_bytes);
                self.send_part(part).await?;
                continue;
            }
            if self.buffer.capacity() == 0 {
                self.buffer.reserve(part_bytes);
            }
            let take = (part_bytes - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data.split_to(take));
            if self.buffer.len() == part_bytes {
                let part = self.buffer.split().freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    /// Sends one part, starting the multipart upload first if need be.
    async fn send_part(&mut self, part: Bytes) -> Result<(), StoreError> {
        let store = &self.store;
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let output = store
                    .client
                    .create_multipart_upload()
                    .bucket(&store.bucket)
                    .key(&self.key)
                    .set_server_side_encryption(store.sse.clone())
                    .set_ssekms_key_id(store.kms_key_id.clone())
                    .send()
                    .await
                    .map_err(|e| classify(e, &store.target("CreateMultipartUpload", &self.key)))?;
                let id = output.upload_id().ok_or_else(|| {
                    StoreError::Failed(format!(
                        "{}: the server returned no upload id",
                        store.target("CreateMultipartUpload", &self.key)
                    ))
                })?;
                self.upload_id = Some(id.to_string());
                id.to_string()
            }
        };
        let number = self.parts.len() as i32 + 1;
        let output = store
            .client
            .upload_part()
            .bucket(&store.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .part_number(number)
            .content_length(part.len() as i64)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| classify(e, &store.target("UploadPart", &self.key)))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    /// Sends what is left and makes the object visible: one PutObject when the whole object
    /// fit in one part, else the last part and CompleteMultipartUpload. A multipart upload that
    /// cannot be completed is aborted.
    pub async fn complete(mut self) -> Result<(), StoreError> {
        let rest = self.buffer.split().freeze();
        if self.upload_id.is_none() {
            return self.store.put_full(&self.key, rest).await;
        }
        let result = self.finish_multipart(rest).await;
        if result.is_err() {
            let _ = self.abort_multipart().await;
        }
        result
    }

    async fn finish_multipart(&mut self, rest: Bytes) -> Result<(), StoreError> {
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let store = &self.store;
        let upload_id = self.upload_id.clone().expect("started");
        store
            .client
            .complete_multipart_upload()
            .bucket(&store.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(e, &store.target("CompleteMultipartUpload", &self.key)))?;
        self.upload_id = None;
        Ok(())
    }

    /// Drops what was written: aborts the multipart upload, if one was started.
    pub async fn abort(mut self) -> Result<(), StoreError> {
        self.abort_multipart().await
    }

    async fn abort_multipart(&mut self) -> Result<(), StoreError> {
        self.buffer = BytesMut::new();
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        let store = &self.store;
        store
            .client
            .abort_multipart_upload()
            .bucket(&store.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(e, &store.target("AbortMultipartUpload", &self.key)))?;
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Parts of an upload that is never completed are kept (and billed) by S3 until it is
        // aborted: abort it in the background when a runtime is there to do it.
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        runtime.spawn(async move {
            let _ = request.send().await;
        });
    }
}

impl S3Store {
    /// PutObject of an already prefixed key.
    async fn put_full(&self, full: &str, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| classify(e, &self.target("PutObject", full)))?;
        Ok(())
    }
}

/// An error and its sources, as one line of their messages (without the SDK's debug dump).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out.replace('\n', " ")
}

fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Error codes that mean "try again later" whatever their status.
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

/// Sorts an SDK error into unavailable (retry) or failed (a refusal), with a message that says
/// what to do. Only the error's code and message are used: requests and credentials are not.
fn classify<E>(err: SdkError<E>, target: &Target<'_>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let bucket = target.bucket;
    match &err {
        SdkError::TimeoutError(_) => {
            StoreError::Unavailable(format!("{target}: the request timed out"))
        }
        SdkError::DispatchFailure(failure) => {
            let detail = chain(&err);
            if failure.is_io() || failure.is_timeout() {
                StoreError::Unavailable(format!("{target}: cannot reach S3: {detail}"))
            } else if detail.to_ascii_lowercase().contains("credentials") {
                StoreError::Failed(format!(
                    "{target}: no AWS credentials were found: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance or task role \
                     ({detail})"
                ))
            } else if failure.is_user() {
                StoreError::Failed(format!("{target}: {detail}"))
            } else {
                StoreError::Unavailable(format!("{target}: {detail}"))
            }
        }
        SdkError::ResponseError(_) => StoreError::Unavailable(format!(
            "{target}: the response could not be read: {}",
            chain(&err)
        )),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("");
            let message = err.message().unwrap_or("");
            let what = if code.is_empty() && message.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("{code}: {message} (HTTP {status})")
            };
            if status >= 500 || status == 429 || RETRYABLE_CODES.contains(&code) {
                return StoreError::Unavailable(format!("{target}: {what}"));
            }
            StoreError::Failed(match code {
                "NoSuchBucket" => {
                    format!("bucket {bucket} does not exist: create it or fix store.url")
                }
                "AccessDenied" | "AllAccessDisabled" => format!(
                    "{target}: access denied: check the AWS credentials and the bucket's policy \
                     (the role needs s3:GetObject, s3:PutObject, s3:ListBucket and, for \
                     multipart uploads, s3:AbortMultipartUpload){}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({message})")
                    }
                ),
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken" => format!(
                    "{target}: the AWS credentials were refused ({code}): check AWS_ACCESS_KEY_ID \
                     and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                ),
                "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException" => format!(
                    "{target}: bucket {bucket} is in another region than the one configured: set \
                     store.region (or AWS_REGION) to the bucket's region ({what})"
                ),
                c if c.starts_with("KMS.") || c == "KMSKeyNotFound" => format!(
                    "{target}: the KMS key was refused: check store.kms_key_id and the key's \
                     policy ({what})"
                ),
                _ => format!("{target}: {what}"),
            })
        }
        _ => StoreError::Failed(format!("{target}: {}", chain(&err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my.bucket/").unwrap(),
            ("my.bucket".into(), "".into())
        );
        for bad in [
            "s3://",
            "s3:///x",
            "s3://a/x",
            "s3://bad bucket/x",
            "s3://ok-bucket/a/../b",
            "s3://ok-bucket/a//b",
            "file://x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}

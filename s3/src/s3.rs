//! The S3 backend, through `aws-sdk-s3`: AWS S3 and S3-compatible stores (MinIO, Ceph RGW), with a custom
//! endpoint and path-style addressing.
//!
//! Configuration comes from [`S3Config`]; what it leaves unset comes from the standard AWS environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials from the usual provider chain). Credentials can also be
//! read from files (`access_key_file`, `secret_key_file`), as a deployment mounts its secrets.
//!
//! Retries: the SDK's standard mode — exponential backoff with jitter on 5xx, throttling (503 SlowDown),
//! timeouts and broken connections — for `max_attempts`. 412 and 409 are never retried. Because a put may be
//! retried after its first attempt landed and only the response was lost, every put carries a unique token
//! (`x-amz-meta-keel-put`): a failed condition whose object carries our token is our own earlier attempt,
//! and counts as success.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};

use crate::error::Body;
use crate::{key, ETag, GetObject, ListPage, ObjectMeta, ObjectStore, PutBody, PutCondition, StoreError};

const META_CRC: &str = "keel-crc32";
const META_PUT: &str = "keel-put";

/// Whether the object under a key is the one a put (identified by its token) wrote.
enum Landed {
    Ours(ObjectMeta),
    NotOurs,
    Unknown(StoreError),
}

/// How to reach a bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:9000`; `None`: `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
    /// Files holding the access key id and the secret key (a trailing newline is ignored). Both or neither.
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Files larger than this are uploaded in parts of `part_bytes`, `concurrency` at a time.
    pub multipart_threshold: u64,
    pub part_bytes: u64,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// Timeout of one attempt of one request.
    pub attempt_timeout: Duration,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            path_style: true,
            access_key_file: None,
            secret_key_file: None,
            max_attempts: 6,
            multipart_threshold: 64 << 20,
            part_bytes: 16 << 20,
            concurrency: 4,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

/// Objects in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    cfg: S3Config,
}

fn config_error(what: impl Into<String>, fix: impl Into<String>) -> StoreError {
    StoreError::Config { what: what.into(), fix: fix.into() }
}

fn read_secret(path: &PathBuf, what: &str) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        config_error(
            format!("cannot read the {what} file {}: {e}", path.display()),
            "mount the secret file or fix the path",
        )
    })?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(config_error(format!("the {what} file {} is empty", path.display()), "write the key into it"));
    }
    Ok(text)
}

impl S3Store {
    /// The bucket this store reads and writes.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl S3Store {
    /// Connects (lazily: no request is made until the first operation).
    pub async fn connect(cfg: S3Config) -> Result<S3Store, StoreError> {
        use aws_smithy_http_client::tls;
        if cfg.bucket.is_empty() {
            return Err(config_error("no bucket name", "set the bucket"));
        }
        let endpoint = cfg.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(e) = &endpoint {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && e.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !ok {
                return Err(config_error(
                    format!("bad endpoint URL {e:?}"),
                    "use http://HOST:PORT or https://HOST (the endpoint option or AWS_ENDPOINT_URL)",
                ));
            }
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let region = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(region));
        match (&cfg.access_key_file, &cfg.secret_key_file) {
            (Some(a), Some(s)) => {
                let creds = aws_sdk_s3::config::Credentials::new(
                    read_secret(a, "access key id")?,
                    read_secret(s, "secret key")?,
                    None,
                    None,
                    "keel key files",
                );
                loader = loader.credentials_provider(creds);
            }
            (None, None) => {}
            _ => {
                return Err(config_error("only one of the access key file and the secret key file given", "give both"))
            }
        }
        if let Some(e) = &endpoint {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        let s3cfg = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .operation_attempt_timeout(cfg.attempt_timeout)
                    .build(),
            )
            .build();
        Ok(S3Store { client: Client::from_conf(s3cfg), bucket: cfg.bucket.clone(), cfg })
    }

    /// A read of no bytes of an existing object.
    async fn empty_range(&self, key: &str) -> Result<GetObject, StoreError> {
        let meta = self.head(key).await?;
        Ok(GetObject::new(meta, Body::S3(ByteStream::from_static(b"")), false))
    }

    /// The SDK client, for what this interface does not cover (tests create buckets with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = match &e {
            SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
            SdkError::ResponseError(ctx) => Some(ctx.raw().status().as_u16()),
            _ => None,
        };
        let code = e.code().map(str::to_owned);
        let message = match &e {
            SdkError::ServiceError(_) => {
                format!("{}: {}", code.as_deref().unwrap_or("error"), e.message().unwrap_or("(no message)"))
            }
            other => {
                let mut s = other.to_string();
                let mut src = std::error::Error::source(other);
                while let Some(c) = src {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    src = c.source();
                }
                s
            }
        };
        // The SDK's messages can span lines (the credential chain lists every provider it tried); an
        // operator's log wants one line per error.
        let message = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        let resource = format!("s3://{}/{key}", self.bucket);
        match (status, code.as_deref()) {
            (Some(404), Some("NoSuchBucket")) => StoreError::NoSuchBucket { bucket: self.bucket.clone() },
            (Some(404), _) => StoreError::NotFound { key: key.to_owned() },
            (Some(403), _) => StoreError::AccessDenied { resource, detail: message },
            (Some(409), _) => StoreError::Conflict { key: key.to_owned() },
            _ if message.contains("no credentials") || message.contains("failed to load credentials") => config_error(
                format!("no AWS credentials for {resource} ({message})"),
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the access and secret key files",
            ),
            _ => StoreError::Service { op, key: key.to_owned(), status, message },
        }
    }

    /// Whether a put failed its condition: 412, or — for If-Match, on servers that answer so for an absent
    /// object (AWS does) — 404 for the key.
    fn is_precondition<E: ProvideErrorMetadata>(
        e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        cond: &PutCondition,
    ) -> bool {
        match e {
            SdkError::ServiceError(ctx) => match ctx.raw().status().as_u16() {
                412 => true,
                404 => matches!(cond, PutCondition::IfMatch(_)) && e.code() != Some("NoSuchBucket"),
                _ => false,
            },
            _ => false,
        }
    }

    /// After a failed or refused put: was it our own earlier attempt that landed? One HEAD (which the SDK
    /// retries); a HEAD that fails says nothing either way.
    async fn landed(&self, key: &str, token: &str) -> Landed {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(h) if h.metadata().and_then(|m| m.get(META_PUT)).map(String::as_str) == Some(token) => {
                Landed::Ours(meta_of(key, h.content_length(), h.e_tag(), h.metadata()))
            }
            Ok(_) => Landed::NotOurs,
            Err(e) => match self.err("head", key, e) {
                StoreError::NotFound { .. } => Landed::NotOurs,
                e => Landed::Unknown(e),
            },
        }
    }

    async fn put_single(
        &self,
        key: &str,
        body: &PutBody,
        cond: &PutCondition,
        crc: u32,
        token: &str,
    ) -> Result<ObjectMeta, StoreError> {
        let stream = match body {
            PutBody::Bytes(b) => ByteStream::from(b.clone()),
            PutBody::File(p) => ByteStream::from_path(p).await.map_err(|e| StoreError::Io {
                path: p.clone(),
                op: "open source file",
                source: std::io::Error::other(e.to_string()),
            })?,
        };
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(stream)
            .metadata(META_CRC, format!("{crc:08x}"))
            .metadata(META_PUT, token);
        req = match cond {
            PutCondition::None => req,
            PutCondition::IfAbsent => req.if_none_match("*"),
            PutCondition::IfMatch(e) => req.if_match(&e.0),
        };
        match req.send().await {
            Ok(out) => Ok(self.meta_after_put(key, out.e_tag(), crc, body_len(body)?)),
            Err(e) if Self::is_precondition(&e, cond) => self.precondition(key, cond, token).await,
            Err(e) => match self.landed(key, token).await {
                // Stored, and only the answer was lost or unreadable.
                Landed::Ours(m) => Ok(m),
                Landed::NotOurs | Landed::Unknown(_) => Err(self.err("put", key, e)),
            },
        }
    }

    async fn precondition(&self, key: &str, cond: &PutCondition, token: &str) -> Result<ObjectMeta, StoreError> {
        let condition = match cond {
            PutCondition::IfAbsent => "create-if-absent",
            _ => "if-match (etag changed)",
        };
        match self.landed(key, token).await {
            Landed::Ours(m) => {
                tracing::debug!(key, "a retried put found its own earlier attempt");
                Ok(m)
            }
            Landed::NotOurs => Err(StoreError::PreconditionFailed { key: key.to_owned(), condition }),
            // An earlier attempt may have landed: a refusal of the retry proves nothing.
            Landed::Unknown(e) => {
                Err(StoreError::Indeterminate { key: key.to_owned(), condition, cause: e.to_string() })
            }
        }
    }

    fn meta_after_put(&self, key: &str, etag: Option<&str>, crc: u32, size: u64) -> ObjectMeta {
        ObjectMeta { key: key.to_owned(), size, etag: ETag(etag.unwrap_or_default().to_owned()), crc32: Some(crc) }
    }

    /// A creation whose answer was lost and that the SDK retried leaves the first upload open, its id never
    /// seen, its parts billed. Aborts every open upload of `key` begun no later than `ours`: keel-s3's
    /// callers write a key from one writer at a time (fenced by a lease, or the key is theirs alone), so an
    /// older open upload of it is such an orphan or a dead writer's. Best effort: listing may be
    /// unsupported, and a bucket lifecycle rule remains the backstop (docs/operations.md).
    async fn abort_orphaned_uploads(&self, key: &str, ours: &str) {
        let listed = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(key).send().await;
        let Ok(listed) = listed else { return };
        let same_key: Vec<_> = listed.uploads().iter().filter(|u| u.key() == Some(key)).collect();
        let Some(our_start) = same_key.iter().find(|u| u.upload_id() == Some(ours)).and_then(|u| u.initiated()) else {
            return;
        };
        for u in same_key {
            let (Some(id), Some(started)) = (u.upload_id(), u.initiated()) else { continue };
            if id == ours || started > our_start {
                continue;
            }
            let r = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id).send().await;
            match r {
                Ok(_) => tracing::info!(key, upload = id, "aborted an orphaned multipart upload"),
                Err(e) => tracing::warn!(key, upload = id, error = %e, "could not abort an orphaned multipart upload"),
            }
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        path: &PathBuf,
        size: u64,
        cond: &PutCondition,
        crc: u32,
        token: &str,
    ) -> Result<ObjectMeta, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .metadata(META_CRC, format!("{crc:08x}"))
            .metadata(META_PUT, token)
            .send()
            .await
            .map_err(|e| self.err("start multipart upload of", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        self.abort_orphaned_uploads(key, &upload_id).await;
        let part = self.cfg.part_bytes.max(5 << 20);
        let parts: Vec<(i32, u64, u64)> =
            (0..size.div_ceil(part)).map(|i| (i as i32 + 1, i * part, part.min(size - i * part))).collect();
        let uploaded: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(parts)
            .map(|(n, offset, len)| {
                let upload_id = upload_id.clone();
                async move {
                    let body = ByteStream::read_from()
                        .path(path)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| StoreError::Io {
                            path: path.clone(),
                            op: "read part",
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(n)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| self.err("upload part of", key, e))?;
                    Ok(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag().map(str::to_owned)).build())
                }
            })
            .buffered(self.cfg.concurrency.max(1))
            .try_collect()
            .await;
        let abort = || async {
            let r =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
            if let Err(e) = r {
                tracing::warn!(key, error = %e, "could not abort a failed multipart upload; a bucket lifecycle rule reaps it");
            }
        };
        let parts = match uploaded {
            Ok(p) => p,
            Err(e) => {
                abort().await;
                return Err(e);
            }
        };
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        req = match cond {
            PutCondition::None => req,
            PutCondition::IfAbsent => req.if_none_match("*"),
            PutCondition::IfMatch(e) => req.if_match(&e.0),
        };
        match req.send().await {
            Ok(out) => Ok(self.meta_after_put(key, out.e_tag(), crc, size)),
            Err(e) if Self::is_precondition(&e, cond) => {
                abort().await;
                self.precondition(key, cond, token).await
            }
            Err(e) => {
                // The server may have completed it and only the answer was lost or unreadable (moto 5.2
                // answers with a misnamed XML root): our token on the object says so.
                if let Landed::Ours(m) = self.landed(key, token).await {
                    return Ok(m);
                }
                abort().await;
                Err(self.err("complete multipart upload of", key, e))
            }
        }
    }
}

fn body_len(body: &PutBody) -> Result<u64, StoreError> {
    match body {
        PutBody::Bytes(b) => Ok(b.len() as u64),
        PutBody::File(p) => Ok(std::fs::metadata(p).map_err(StoreError::io(p, "stat source file"))?.len()),
    }
}

fn meta_of(
    key: &str,
    len: Option<i64>,
    etag: Option<&str>,
    metadata: Option<&std::collections::HashMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        key: key.to_owned(),
        size: len.unwrap_or(0).max(0) as u64,
        etag: ETag(etag.unwrap_or_default().to_owned()),
        crc32: metadata.and_then(|m| m.get(META_CRC)).and_then(|h| u32::from_str_radix(h, 16).ok()),
    }
}

impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: PutBody, cond: PutCondition) -> Result<ObjectMeta, StoreError> {
        key::check(key)?;
        let token = crate::token();
        // The checksum goes into the object's metadata, which S3 takes when an upload starts, so a file is
        // read once for it before it is read again to upload (from the page cache, for files this size).
        let b = body.clone();
        let (crc, size) = tokio::task::spawn_blocking(move || crate::body_crc(&b))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::new(),
                op: "checksum",
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|e| StoreError::Io { path: PathBuf::new(), op: "read source for its checksum", source: e })?;
        match &body {
            PutBody::File(p) if size > self.cfg.multipart_threshold => {
                self.put_multipart(key, p, size, &cond, crc, &token).await
            }
            _ => self.put_single(key, &body, &cond, crc, &token).await,
        }
    }

    async fn get(&self, key: &str) -> Result<GetObject, StoreError> {
        key::check(key)?;
        let out =
            self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| self.err("get", key, e))?;
        let meta = meta_of(key, out.content_length(), out.e_tag(), out.metadata());
        Ok(GetObject::new(meta, Body::S3(out.body), true))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetObject, StoreError> {
        key::check(key)?;
        if range.end <= range.start {
            return self.empty_range(key).await;
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            // A range that starts past the end: nothing to read.
            Err(SdkError::ServiceError(ctx)) if ctx.raw().status().as_u16() == 416 => {
                return self.empty_range(key).await
            }
            Err(e) => return Err(self.err("get range of", key, e)),
        };
        let mut meta = meta_of(key, out.content_length(), out.e_tag(), out.metadata());
        if let Some(total) = out.content_range().and_then(|r| r.rsplit('/').next()).and_then(|t| t.parse().ok()) {
            meta.size = total;
        }
        Ok(GetObject::new(meta, Body::S3(out.body), false))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        key::check(key)?;
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("head", key, e))?;
        Ok(meta_of(key, h.content_length(), h.e_tag(), h.metadata()))
    }

    async fn list_page(&self, prefix: &str, after: Option<String>) -> Result<ListPage, StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(after)
            .send()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        // A listing carries no user metadata: `crc32` is filled by `head` or `get`.
        let objects = out
            .contents()
            .iter()
            .map(|o| ObjectMeta {
                key: o.key().unwrap_or_default().to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: ETag(o.e_tag().unwrap_or_default().to_owned()),
                crc32: None,
            })
            .collect();
        let next =
            if out.is_truncated() == Some(true) { out.next_continuation_token().map(str::to_owned) } else { None };
        Ok(ListPage { objects, next })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        key::check(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match self.err("delete", key, e) {
                StoreError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(1000) {
            let ids: Result<Vec<ObjectIdentifier>, _> =
                chunk.iter().map(|k| ObjectIdentifier::builder().key(k).build()).collect();
            let ids = ids.map_err(|e| config_error(format!("bad delete request: {e}"), "report this"))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| config_error(format!("bad delete request: {e}"), "report this"))?;
            let first = chunk.first().cloned().unwrap_or_default();
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.err("delete objects from", &first, e))?;
            if let Some(e) = out.errors().first() {
                return Err(StoreError::Service {
                    op: "delete",
                    key: e.key().unwrap_or_default().to_owned(),
                    status: None,
                    message: format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or("")),
                });
            }
        }
        Ok(())
    }
}

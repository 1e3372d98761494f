//! The Google Cloud Storage backend, over GCS's JSON API: media uploads for small objects,
//! resumable uploads for blobs (the object appears only when the last chunk is in), ranged
//! `alt=media` reads, paged listings, and V4 signed URLs for `redirect`. OAuth 2 tokens come
//! from a service account (a JWT signed with its key) or the instance's metadata server.
//!
//! Why not `object_store` as for S3 and Azure: its GCS client writes through GCS's XML API,
//! which the GCS emulators (fake-gcs-server) do not take, so it could not be tested here; the
//! JSON API is what Google's own client libraries speak.
//!
//! A resumable upload is recorded under `_multipart/` while it runs; GC cancels the ones a
//! process killed mid-commit left (their session URL, checked to be this bucket's service
//! before anything is sent to it, since it was read back from shared state).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::bucket::{CONNECT_TIMEOUT, RETRIES, RETRY_TIMEOUT, STALL_TIMEOUT};
use super::read_ahead::{MIN_READ_AHEAD, RangeOpener, ReadAheadBudget, first_segment, sized_read};
use super::{Backend, BackendError, Committed, ObjectInfo, Result};
use crate::byte_stream::{ByteStream, Chunks};

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct GcsSettings {
    /// The bucket.
    pub bucket: String,
    /// Every key goes under this prefix.
    pub prefix: String,
    /// A service-account JSON key file (for an emulator, with its `gcs_base_url`); `None`:
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server.
    pub credentials_file: Option<PathBuf>,
}

/// Objects up to this size are written with one media upload; larger ones with a resumable
/// upload in chunks of this size (a multiple of 256 KiB, as GCS requires).
const CHUNK_SIZE: usize = 8 * 1024 * 1024;

/// Where running resumable uploads are recorded.
const UPLOAD_RECORDS: &str = "_multipart/";

/// The scope tokens are asked for.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// The metadata server's token endpoint (on Google Cloud instances and GKE).
const METADATA_TOKEN: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

/// A service-account key file, as the Cloud console writes it (plus the emulator's keys).
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
    /// An emulator's address, instead of `https://storage.googleapis.com`.
    #[serde(default)]
    gcs_base_url: Option<String>,
    /// An emulator that takes requests without tokens.
    #[serde(default)]
    disable_oauth: bool,
}

/// A service account's signing key.
struct ServiceAccount {
    email: String,
    key: ring::signature::RsaKeyPair,
    token_uri: String,
}

/// How requests are authorized.
#[derive(Clone, Copy)]
enum Credentials {
    /// An emulator: no token.
    None,
    /// A service account's key: JWTs exchanged for tokens.
    ServiceAccount,
    /// The instance's metadata server.
    Metadata,
}

/// A token and when to fetch the next.
struct Token {
    value: String,
    renew_at: Instant,
}

/// The record of a running resumable upload.
#[derive(Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    session: String,
    started_ms: u64,
}

/// Objects in a GCS bucket. Cloning it is cheap: clones share the HTTP client and the token.
#[derive(Clone)]
pub struct GcsBackend {
    http: reqwest::Client,
    /// `https://storage.googleapis.com`, or an emulator's URL, without a trailing `/`.
    base: String,
    bucket: String,
    prefix: String,
    credentials: Credentials,
    /// Signs tokens' JWTs and V4 URLs, when a key file was given.
    account: Option<Arc<ServiceAccount>>,
    token: Arc<tokio::sync::Mutex<Option<Token>>>,
    read_ahead: ReadAheadBudget,
}

/// The ranged GETs of one object, for a read that runs ahead of its reader.
struct ObjectRanges {
    backend: GcsBackend,
    key: String,
}

#[async_trait]
impl RangeOpener for ObjectRanges {
    async fn open(&self, start: u64, end: u64) -> std::io::Result<Chunks> {
        let range = Some(format!("bytes={start}-{}", end - 1));
        match self.backend.read_range(&self.key, start, range).await {
            Ok(Some((_, chunks))) => Ok(chunks),
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: gone while being read", self.key),
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

impl GcsBackend {
    /// A client for the bucket. Nothing is contacted yet; the key file is read and parsed.
    pub fn gcs(settings: GcsSettings) -> Result<GcsBackend> {
        GcsBackend::with_stall_timeout(settings, STALL_TIMEOUT)
    }

    /// [`GcsBackend::gcs`], where a request fails after `stall` without a byte.
    fn with_stall_timeout(settings: GcsSettings, stall: Duration) -> Result<GcsBackend> {
        crate::signing::install_crypto_provider();
        let configure = |message: String| BackendError::Remote {
            op: "configure",
            bucket: settings.bucket.clone(),
            key: String::new(),
            message,
        };
        let file = settings
            .credentials_file
            .clone()
            .or_else(|| std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from));
        let (mut base, mut credentials, mut account) = (
            "https://storage.googleapis.com".to_owned(),
            Credentials::Metadata,
            None,
        );
        if let Some(file) = &file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| configure(format!("credentials_file {}: {e}", file.display())))?;
            let parsed: ServiceAccountFile = serde_json::from_str(&text).map_err(|e| {
                configure(format!(
                    "credentials_file {}: not a service-account JSON key: {e}",
                    file.display()
                ))
            })?;
            if let Some(url) = parsed.gcs_base_url {
                base = url.trim_end_matches('/').to_owned();
            }
            let key = signing_key(&parsed.private_key)
                .map_err(|e| configure(format!("credentials_file {}: {e}", file.display())))?;
            account = key.map(|key| {
                Arc::new(ServiceAccount {
                    email: parsed.client_email.clone(),
                    key,
                    token_uri: parsed
                        .token_uri
                        .clone()
                        .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
                })
            });
            credentials = match (parsed.disable_oauth, &account) {
                (true, _) => Credentials::None,
                (false, Some(_)) => Credentials::ServiceAccount,
                (false, None) => {
                    return Err(configure(format!(
                        "credentials_file {}: no private_key",
                        file.display()
                    )));
                }
            };
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(stall)
            .build()
            .map_err(|e| configure(e.to_string()))?;
        Ok(GcsBackend {
            http,
            base,
            bucket: settings.bucket,
            prefix: settings.prefix,
            credentials,
            account,
            token: Arc::default(),
            read_ahead: ReadAheadBudget::default(),
        })
    }

    /// The object name of a key.
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }

    /// The prefix with a trailing `/` (or nothing).
    fn prefix(&self) -> String {
        super::key_prefix(&self.prefix)
    }

    /// The JSON API URL of an object.
    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            self.bucket,
            encode(&self.name(key))
        )
    }

    fn unavailable(&self, op: &'static str, key: &str, message: String) -> BackendError {
        BackendError::Unavailable {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message,
        }
    }

    fn refused(&self, op: &'static str, key: &str, message: String) -> BackendError {
        BackendError::Remote {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message,
        }
    }

    /// A bearer token, fetched when the last one is about to expire.
    async fn token(&self) -> Result<Option<String>> {
        if matches!(self.credentials, Credentials::None) {
            return Ok(None);
        }
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(Some(t.value.clone()));
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *token = Some(fresh);
        Ok(Some(value))
    }

    async fn fetch_token(&self) -> Result<Token> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        let request = match (&self.credentials, &self.account) {
            (Credentials::ServiceAccount, Some(account)) => {
                let jwt =
                    account_jwt(account).map_err(|e| self.refused("sign a token for", "", e))?;
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                    .append_pair("assertion", &jwt)
                    .finish();
                self.http
                    .post(&account.token_uri)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form)
            }
            _ => self
                .http
                .get(METADATA_TOKEN)
                .header("Metadata-Flavor", "Google"),
        };
        let response = request
            .timeout(RETRY_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unavailable("get a token for", "", e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(self.refused("get a token for", "", format!("{status}: {body}")));
        }
        let answer: Answer = response
            .json()
            .await
            .map_err(|e| self.refused("get a token for", "", e.to_string()))?;
        let lifetime = Duration::from_secs(answer.expires_in.max(120));
        Ok(Token {
            value: answer.access_token,
            renew_at: Instant::now() + lifetime - Duration::from_secs(60),
        })
    }

    /// Sends the request `build` makes (again, on a connection error, a 5xx or a 429, up to
    /// [`RETRIES`] times within [`RETRY_TIMEOUT`]), with the bearer token.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let mut request = build();
            if let Some(token) = self.token().await? {
                request = request.bearer_auth(token);
            }
            let outcome = request.send().await;
            let retry = match &outcome {
                Ok(r) => {
                    r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => !e.is_builder(),
            };
            attempt += 1;
            if !retry || attempt > RETRIES || started.elapsed() + delay > RETRY_TIMEOUT {
                return match outcome {
                    Ok(response) => Ok(response),
                    Err(e) => Err(self.unavailable(op, key, e.to_string())),
                };
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// Reads the object `key` from byte `from` on, with the `Range` header `range` (`None`:
    /// all of it): the object's size and the bytes; `None` if there is no such object.
    async fn read_range(
        &self,
        key: &str,
        from: u64,
        range: Option<String>,
    ) -> Result<Option<(u64, Chunks)>> {
        let url = format!("{}?alt=media", self.object_url(key));
        let response = self
            .send("read", key, || {
                let request = self.http.get(&url);
                match &range {
                    Some(range) => request.header("range", range),
                    None => request,
                }
            })
            .await?;

        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.failed("read", key, response).await);
        }
        let size = if status == StatusCode::PARTIAL_CONTENT {
            response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|total| total.parse::<u64>().ok())
        } else if from == 0 {
            response.content_length()
        } else {
            None
        };
        let Some(size) = size else {
            return Err(self.unavailable("read", key, "an answer without its size".into()));
        };
        let bucket = self.bucket.clone();
        let body = response
            .bytes_stream()
            .map_err(move |e| std::io::Error::other(format!("bucket {bucket}: {e}")));
        Ok(Some((size, Box::pin(body))))
    }

    /// The error of an answer that is not a success: a refusal (4xx, the configuration's
    /// fault) or an outage (5xx).
    async fn failed(&self, op: &'static str, key: &str, response: Response) -> BackendError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = format!("{status}: {}", body.chars().take(300).collect::<String>());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            self.unavailable(op, key, message)
        } else {
            self.refused(op, key, message)
        }
    }

    /// Writes `bytes` as the object `key` with one media upload.
    async fn media_upload(&self, key: &str, bytes: Bytes) -> Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.base,
            self.bucket,
            encode(&self.name(key))
        );
        let response = self
            .send("write", key, || {
                self.http
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(bytes.clone())
            })
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.failed("write", key, response).await)
        }
    }

    /// Uploads a large file with a resumable upload: the object appears when its last chunk
    /// is in. The session is recorded while it runs, for GC.
    async fn resumable_upload(&self, key: &str, file: &Path, size: u64) -> Result<()> {
        let start = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.base,
            self.bucket,
            encode(&self.name(key))
        );
        let response = self
            .send("start upload of", key, || {
                self.http
                    .post(&start)
                    .header("content-type", "application/json")
                    .header("x-upload-content-length", size)
                    .body("{}")
            })
            .await?;
        if !response.status().is_success() {
            return Err(self.failed("start upload of", key, response).await);
        }
        let session = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| self.refused("start upload of", key, "no session URL".into()))?;
        let record_key = format!("{UPLOAD_RECORDS}{}.json", uuid::Uuid::new_v4());
        let record = UploadRecord {
            key: key.to_owned(),
            session: session.clone(),
            started_ms: super::epoch_ms(SystemTime::now()),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| BackendError::Layout(e.to_string()))?;
        self.put(&record_key, Bytes::from(bytes)).await?;
        let sent = self.send_chunks(key, &session, file, size).await;
        if sent.is_err() {
            let _ = self.http.delete(&session).send().await;
        }
        let _ = self.delete(&record_key).await;
        sent
    }

    async fn send_chunks(&self, key: &str, session: &str, file: &Path, size: u64) -> Result<()> {
        let file = Arc::new(
            std::fs::File::open(file).map_err(|source| BackendError::Io {
                op: "open",
                key: file.display().to_string(),
                source,
            })?,
        );
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(CHUNK_SIZE as u64) as usize;
            let chunk = super::read_file_part(Arc::clone(&file), offset, len)
                .await
                .map_err(|source| BackendError::Io {
                    op: "read",
                    key: key.to_owned(),
                    source,
                })?;
            let range = format!("bytes {offset}-{}/{size}", offset + len as u64 - 1);
            let response = self
                .send("upload part of", key, || {
                    self.http
                        .put(session)
                        .header("content-range", range.as_str())
                        .body(chunk.clone())
                })
                .await?;
            let last = offset + len as u64 == size;
            let status = response.status();
            let accepted = if last {
                status.is_success()
            } else {
                status.as_u16() == 308 || status.is_success()
            };
            if !accepted {
                return Err(self.failed("upload part of", key, response).await);
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Whether `url` (read back from the bucket) is a session of this bucket's service: only
    /// then is anything sent to it.
    fn is_our_session(&self, url: &str) -> bool {
        let (Ok(session), Ok(base)) = (url::Url::parse(url), url::Url::parse(&self.base)) else {
            return false;
        };
        session.origin() == base.origin() && session.path().starts_with("/upload/")
    }

    /// A V4 signed URL of the object (`GOOG4-RSA-SHA256`), when a key file gave a key.
    fn signed_url(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>> {
        let Some(account) = &self.account else {
            return Ok(None);
        };
        let base = url::Url::parse(&self.base).map_err(|e| BackendError::Layout(e.to_string()))?;
        let host = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        let now = SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        let datetime = stamp.replace(['-', ':'], "");
        let date = &datetime[..8];
        let scope = format!("{date}/auto/storage/goog4_request");
        // As Google's own signers write it: each path segment encoded, the slashes kept.
        let name = self.name(key);
        let segments: Vec<String> = name.split('/').map(encode).collect();
        let path = format!("/{}/{}", self.bucket, segments.join("/"));
        let mut query = [
            ("X-Goog-Algorithm", "GOOG4-RSA-SHA256".to_owned()),
            ("X-Goog-Credential", format!("{}/{scope}", account.email)),
            ("X-Goog-Date", datetime.clone()),
            (
                "X-Goog-Expires",
                ttl.as_secs().clamp(1, 604_800).to_string(),
            ),
            ("X-Goog-SignedHeaders", "host".to_owned()),
        ]
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>();
        query.sort();
        let query = query.join("&");
        let canonical = format!("GET\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
        let to_sign = format!(
            "GOOG4-RSA-SHA256\n{datetime}\n{scope}\n{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes()))
        );
        let signature = rsa_sign(&account.key, to_sign.as_bytes())
            .map_err(|e| self.refused("presign", key, e))?;
        let url = format!(
            "{}{path}?{query}&X-Goog-Signature={}",
            base.origin().ascii_serialization(),
            hex::encode(signature)
        );
        url::Url::parse(&url)
            .map(Some)
            .map_err(|e| BackendError::Layout(e.to_string()))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as object names in URL
/// paths and V4 signing need.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The RSA key of a service account's `private_key` (PKCS#8 PEM); `None` when empty.
fn signing_key(pem: &str) -> std::result::Result<Option<ring::signature::RsaKeyPair>, String> {
    use base64::Engine as _;
    if pem.trim().is_empty() {
        return Ok(None);
    }
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("private_key is not PEM: {e}"))?;
    ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map(Some)
        .map_err(|e| format!("private_key is not a PKCS#8 RSA key: {e}"))
}

/// An RSA-SHA256 (PKCS #1 v1.5) signature, as JWTs (RS256) and V4 URLs need.
fn rsa_sign(
    key: &ring::signature::RsaKeyPair,
    message: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        message,
        &mut signature,
    )
    .map_err(|e| format!("cannot sign: {e}"))?;
    Ok(signature)
}

/// A JWT asserting the service account, for its token endpoint.
fn account_jwt(account: &ServiceAccount) -> std::result::Result<String, String> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = super::epoch_ms(SystemTime::now()) / 1000;
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"iss": account.email, "scope": SCOPE,
        "aud": account.token_uri, "iat": now, "exp": now + 3600});
    let claims = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let signature = rsa_sign(&account.key, signed.as_bytes())?;
    Ok(format!("{signed}.{}", b64(&signature)))
}

/// An object's metadata as the JSON API gives it.
#[derive(Deserialize)]
struct ObjectResource {
    name: String,
    /// A decimal string.
    #[serde(default)]
    size: String,
    #[serde(default)]
    updated: String,
}

impl ObjectResource {
    fn info(&self, key: String) -> ObjectInfo {
        ObjectInfo {
            key,
            size: self.size.parse().unwrap_or(0),
            modified_ms: humantime::parse_rfc3339_weak(&self.updated)
                .map(super::epoch_ms)
                .unwrap_or(0),
        }
    }
}

#[async_trait]
impl Backend for GcsBackend {
    fn kind(&self) -> &'static str {
        "gcs"
    }

    fn describe(&self) -> String {
        super::describe_bucket("gcs", &self.bucket, &self.base, &self.prefix)
    }

    fn lists_cheaply(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let url = format!("{}?alt=media", self.object_url(key));
        let response = self.send("read", key, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => response
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.unavailable("read", key, e.to_string())),
            _ => Err(self.failed("read", key, response).await),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.media_upload(key, bytes).await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let url = self.object_url(key);
        let response = self.send("stat", key, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let object: ObjectResource = response
                    .json()
                    .await
                    .map_err(|e| self.unavailable("stat", key, e.to_string()))?;
                Ok(Some(object.info(key.to_owned())))
            }
            _ => Err(self.failed("stat", key, response).await),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let url = self.object_url(key);
        let response = self.send("delete", key, || self.http.delete(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Err(self.failed("delete", key, response).await),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            items: Vec<ObjectResource>,
            #[serde(rename = "nextPageToken", default)]
            next: Option<String>,
        }
        let base = self.prefix();
        let wanted = format!("{base}{prefix}");
        let url = format!("{}/storage/v1/b/{}/o", self.base, self.bucket);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let response = self
                .send("list", prefix, || {
                    let mut query = url::form_urlencoded::Serializer::new(String::new());
                    query
                        .append_pair("prefix", &wanted)
                        .append_pair("maxResults", "1000");
                    if let Some(t) = &token {
                        query.append_pair("pageToken", t);
                    }
                    self.http.get(format!("{url}?{}", query.finish()))
                })
                .await?;
            if !response.status().is_success() {
                return Err(self.failed("list", prefix, response).await);
            }
            let page: Page = response
                .json()
                .await
                .map_err(|e| self.unavailable("list", prefix, e.to_string()))?;
            for object in &page.items {
                if let Some(key) = object.name.strip_prefix(&base) {
                    out.push(object.info(key.to_owned()));
                }
            }
            match page.next {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(out),
            }
        }
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<Committed> {
        let io = |op: &'static str| {
            let path = file.display().to_string();
            move |source| BackendError::Io {
                op,
                key: path,
                source,
            }
        };
        let size = tokio::fs::metadata(file).await.map_err(io("stat"))?.len();
        if size <= CHUNK_SIZE as u64 {
            let bytes = tokio::fs::read(file).await.map_err(io("read"))?;
            self.media_upload(key, Bytes::from(bytes)).await?;
        } else {
            self.resumable_upload(key, file, size).await?;
        }
        Ok(Committed::Copied)
    }

    async fn open_local(&self, _key: &str) -> Result<Option<(std::fs::File, u64)>> {
        Ok(None)
    }

    async fn read(&self, key: &str, from: u64) -> Result<Option<ByteStream>> {
        let range = (from > 0).then(|| format!("bytes={from}-"));
        Ok(self
            .read_range(key, from, range)
            .await?
            .map(|(size, chunks)| ByteStream::from_offset(size, from, chunks)))
    }

    async fn read_sized(&self, key: &str, from: u64, size: u64) -> Result<Option<ByteStream>> {
        if size.saturating_sub(from) <= MIN_READ_AHEAD {
            return self.read(key, from).await;
        }
        // The first segment is asked for here, so that a missing object or an unreachable
        // bucket is an answer, not a broken stream.
        let segment = first_segment(from);
        let range = Some(format!("bytes={}-{}", segment.start, segment.end - 1));
        // The object's own size, should it differ from what the caller was told.
        let Some((size, first)) = self.read_range(key, from, range).await? else {
            return Ok(None);
        };
        let ranges = ObjectRanges {
            backend: self.clone(),
            key: key.to_owned(),
        };
        let budget = &self.read_ahead;
        Ok(Some(sized_read(
            first,
            from,
            size,
            Arc::new(ranges),
            budget,
        )))
    }

    async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>> {
        self.signed_url(key, ttl)
    }

    async fn check(&self) -> Result<()> {
        super::probe(self).await
    }

    async fn abort_stray_uploads(&self, older_than: Duration) -> Result<u64> {
        let cutoff =
            super::epoch_ms(SystemTime::now()).saturating_sub(older_than.as_millis() as u64);
        let mut aborted = 0;
        for object in self.list(UPLOAD_RECORDS).await? {
            let Some(bytes) = self.get(&object.key).await? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<UploadRecord>(&bytes) else {
                self.delete(&object.key).await?;
                continue;
            };
            if record.started_ms > cutoff {
                continue;
            }
            // GCS cancels a session on DELETE (answering 499); one that completed or expired
            // answers 404 or 410. A URL that is not this service's is never contacted.
            if self.is_our_session(&record.session) {
                let _ = self
                    .send("abort upload of", &record.key, || {
                        self.http.delete(&record.session)
                    })
                    .await?;
            } else {
                tracing::warn!(session = %record.session, "an upload record names a URL outside the bucket's service; not contacted");
            }
            self.delete(&object.key).await?;
            aborted += 1;
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that accepts connections and reads requests, then answers `head` (if any) and
    /// nothing more.
    async fn silent_store(head: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(head.as_bytes()).await;
                held.push(socket);
            }
        });
        (url, task)
    }

    fn backend_at(url: &str, dir: &Path, stall: Duration) -> GcsBackend {
        let credentials = dir.join("key.json");
        std::fs::write(
            &credentials,
            serde_json::json!({"gcs_base_url": url, "disable_oauth": true}).to_string(),
        )
        .unwrap();
        let settings = GcsSettings {
            bucket: "b".into(),
            prefix: String::new(),
            credentials_file: Some(credentials),
        };
        GcsBackend::with_stall_timeout(settings, stall).unwrap()
    }

    #[tokio::test]
    async fn a_store_that_stalls_fails_requests_as_an_outage_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let stall = Duration::from_millis(300);
        // Nothing after the request, or a head that promises a body that never comes.
        for head in [
            "",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        ] {
            let (url, store) = silent_store(head).await;
            let backend = backend_at(&url, dir.path(), stall);
            let started = Instant::now();
            let got = tokio::time::timeout(Duration::from_secs(30), backend.get("some/key"))
                .await
                .expect("a silent store held the request");
            let error = got.expect_err("a silent store answered");
            assert!(error.is_unavailable(), "{head:?}: {error}");
            // Each attempt waits `stall` at most; the retries stop within RETRY_TIMEOUT.
            assert!(
                started.elapsed() < RETRY_TIMEOUT + stall * 2,
                "{head:?}: {:?}",
                started.elapsed()
            );
            store.abort();
        }
    }
}

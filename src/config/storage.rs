//! `[storage]`: where the store lives (a directory, or a bucket), its caps and housekeeping.

use super::*;

/// `[storage]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where blobs, manifests and tags live: `fs` (under `path`), or a bucket: `s3` (in
    /// `[storage.s3]`), `gcs` (`[storage.gcs]`), `azure` (`[storage.azure]`).
    #[serde(default)]
    pub backend: BackendKind,
    /// `fs`: the store. `s3`: local staging for fills and uploads, and the hot cache.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// `s3` only: the cap of the local hot cache (least recently read copies go first).
    #[serde(default = "default_cache_size")]
    pub cache_size: ByteSize,
    /// `[storage.s3]`: the bucket, for `backend = "s3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    /// `[storage.gcs]`: the bucket, for `backend = "gcs"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsConfig>,
    /// `[storage.azure]`: the container, for `backend = "azure"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureConfig>,
    /// Upper bound of the in-memory index (tag records, blob sizes, small manifests), in MiB.
    #[serde(default = "default_index_mib")]
    pub index_memory_mib: u64,
    /// Whether DELETE of manifests, tags and blobs is allowed.
    #[serde(default)]
    pub delete: bool,
    /// The largest blob a client may push.
    #[serde(default = "default_max_upload")]
    pub max_upload_size: ByteSize,
    /// An upload session with no activity for this long is removed.
    #[serde(default = "default_upload_ttl", with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// The most bytes all unfinished uploads together may hold (they count in `max_size` too).
    #[serde(default = "default_max_uploads_size")]
    pub max_uploads_size: ByteSize,
    /// The most upload sessions one client (a user, or an anonymous address) may have open.
    #[serde(default = "default_max_upload_sessions")]
    pub max_upload_sessions_per_client: usize,
    /// `s3` only: the most chunks (`PATCH`es with data) one upload session may have. Each
    /// chunk is an object in the bucket that every later request of the session lists.
    #[serde(default = "default_max_upload_chunks")]
    pub max_upload_chunks: usize,
    /// A remote backend: whether a blob read from the bucket (by a replica without a local
    /// copy) completes a response only once this machine verified it — by its seal, else by
    /// its digest — (`true`), or as soon as its last byte arrives (`false`: the bucket's bytes
    /// are trusted as a presigned URL would hand them out; a rotten object is still never
    /// kept).
    #[serde(default = "default_true")]
    pub verify_reads: bool,
    /// Size cap of the store; cached content is evicted (least recently accessed first) when
    /// a fill pushes the store over it. `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Eviction frees space down to this fraction of `max_size`.
    #[serde(default = "default_low_water")]
    pub low_water: f64,
    /// How often the online GC runs.
    #[serde(default = "default_gc_interval", with = "humantime_serde")]
    pub gc_interval: Duration,
    /// GC spares anything written more recently than this (pushes and fills in progress).
    #[serde(default = "default_gc_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
}

/// Where the store keeps its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Files under `[storage] path`.
    #[default]
    Fs,
    /// An S3 bucket (AWS S3, Garage, MinIO, Ceph RGW...).
    S3,
    /// A Google Cloud Storage bucket.
    Gcs,
    /// An Azure Blob Storage container.
    Azure,
}

/// `[storage.s3]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The endpoint of an S3-compatible store (`http://127.0.0.1:3900`); omit for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Every key goes under this prefix (several mirrors may share a bucket).
    #[serde(default)]
    pub prefix: String,
    /// The access key id; else `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The secret access key; else the variable `secret_access_key_env` names, else
    /// `AWS_SECRET_ACCESS_KEY`. Never written back out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub secret_access_key: Option<String>,
    /// An environment variable holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    /// Blob GETs answer `307` to a presigned URL of the bucket (manifests stay here).
    #[serde(default)]
    pub redirect: bool,
}

impl S3Config {
    /// The access key id and secret, from the config or the environment.
    pub fn credentials(&self) -> Result<(String, String), ConfigError> {
        let missing = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("storage.s3.{key}"),
            message: message.to_owned(),
        };
        let id = match &self.access_key_id {
            Some(id) => id.clone(),
            None => std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| {
                missing(
                    "access_key_id",
                    "not set, and AWS_ACCESS_KEY_ID is not in the environment",
                )
            })?,
        };
        let secret = match resolve_secret(
            "storage.s3.secret_access_key",
            self.secret_access_key.as_ref(),
            self.secret_access_key_env.as_ref(),
        )? {
            Some(secret) => secret,
            None => std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
                missing(
                    "secret_access_key",
                    "not set, nor secret_access_key_env, and AWS_SECRET_ACCESS_KEY is not in the environment",
                )
            })?,
        };
        Ok((id, secret))
    }
}

/// `[storage.gcs]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    /// The bucket (it must exist).
    pub bucket: String,
    /// Every key goes under this prefix (several mirrors may share a bucket).
    #[serde(default)]
    pub prefix: String,
    /// A service-account JSON key file. It also signs the V4 URLs of `redirect`. For an
    /// emulator (fake-gcs-server) the file names its `gcs_base_url` and `disable_oauth`.
    /// Absent: `GOOGLE_APPLICATION_CREDENTIALS`, else the instance's metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Blob GETs answer `307` to a V4 signed URL of the bucket (manifests stay here).
    #[serde(default)]
    pub redirect: bool,
}

/// `[storage.azure]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The storage account.
    pub account: String,
    /// The blob container (it must exist).
    pub container: String,
    /// Every key goes under this prefix (several mirrors may share a container).
    #[serde(default)]
    pub prefix: String,
    /// The account's access key; it also signs the SAS URLs of `redirect`. Never written
    /// back out. Absent (and no `access_key_env`): the environment's Azure credentials
    /// (`AZURE_STORAGE_ACCESS_KEY`, a managed identity, ...), which cannot sign SAS URLs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub access_key: Option<String>,
    /// An environment variable holding the access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_env: Option<String>,
    /// The account's blob service URL (`http://127.0.0.1:10000/devstoreaccount1` for
    /// Azurite); absent: `https://<account>.blob.core.windows.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Blob GETs answer `307` to a SAS URL of the blob (manifests stay here).
    #[serde(default)]
    pub redirect: bool,
}

impl AzureConfig {
    /// The access key, from the config or the variable it names; `None`: the environment's
    /// credentials.
    pub fn resolved_access_key(&self) -> Result<Option<String>, ConfigError> {
        resolve_secret(
            "storage.azure.access_key",
            self.access_key.as_ref(),
            self.access_key_env.as_ref(),
        )
    }
}

fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

fn default_cache_size() -> ByteSize {
    ByteSize(20 * 1024 * 1024 * 1024)
}

fn default_storage_path() -> PathBuf {
    PathBuf::from("./data")
}
fn default_index_mib() -> u64 {
    64
}
fn default_max_upload() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_upload_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_uploads_size() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_max_upload_sessions() -> usize {
    64
}
fn default_max_upload_chunks() -> usize {
    10_000
}
fn default_low_water() -> f64 {
    0.9
}
fn default_gc_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_gc_grace() -> Duration {
    Duration::from_secs(3600)
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: BackendKind::Fs,
            path: default_storage_path(),
            cache_size: default_cache_size(),
            s3: None,
            gcs: None,
            azure: None,
            index_memory_mib: default_index_mib(),
            delete: false,
            max_upload_size: default_max_upload(),
            upload_ttl: default_upload_ttl(),
            max_uploads_size: default_max_uploads_size(),
            max_upload_sessions_per_client: default_max_upload_sessions(),
            max_upload_chunks: default_max_upload_chunks(),
            verify_reads: true,
            max_size: None,
            low_water: default_low_water(),
            gc_interval: default_gc_interval(),
            gc_grace: default_gc_grace(),
        }
    }
}

impl StorageConfig {
    /// Whether blob GETs answer `307` to a signed URL of the bucket (the bucket section's
    /// `redirect`).
    pub fn redirect(&self) -> bool {
        match self.backend {
            BackendKind::Fs => false,
            BackendKind::S3 => self.s3.as_ref().is_some_and(|b| b.redirect),
            BackendKind::Gcs => self.gcs.as_ref().is_some_and(|b| b.redirect),
            BackendKind::Azure => self.azure.as_ref().is_some_and(|b| b.redirect),
        }
    }

    /// The credentials a bucket backend uses, for messages (never a secret): the access key
    /// id, the credentials file, the account.
    pub fn credentials_in_use(&self) -> String {
        match self.backend {
            BackendKind::Fs => "the local directory".into(),
            BackendKind::S3 => match self.s3.as_ref().map(S3Config::credentials) {
                Some(Ok((id, _))) => format!("access key {id}"),
                _ => "no access key".into(),
            },
            BackendKind::Gcs => match self.gcs.as_ref().and_then(|g| g.credentials_file.as_ref()) {
                Some(file) => format!("credentials file {}", file.display()),
                None => "the environment's Google credentials".into(),
            },
            BackendKind::Azure => match &self.azure {
                Some(a) if a.access_key.is_some() || a.access_key_env.is_some() => {
                    format!("account {} and its access key", a.account)
                }
                Some(a) => format!(
                    "account {} with the environment's Azure credentials",
                    a.account
                ),
                None => "no account".into(),
            },
        }
    }

    /// What replicas sharing this store have in common, naming it (for the cluster's keys):
    /// the bucket and prefix, or the directory.
    pub fn scope(&self) -> String {
        match (self.backend, &self.s3, &self.gcs, &self.azure) {
            (BackendKind::S3, Some(b), _, _) => format!("{}/{}", b.bucket, b.prefix),
            (BackendKind::Gcs, _, Some(b), _) => format!("gs://{}/{}", b.bucket, b.prefix),
            (BackendKind::Azure, _, _, Some(b)) => {
                format!("azure://{}/{}/{}", b.account, b.container, b.prefix)
            }
            _ => self.path.display().to_string(),
        }
    }

    /// Checks what serde cannot, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        match (self.backend, &self.s3) {
            (BackendKind::S3, None) => {
                return Err(invalid(
                    "storage.s3".into(),
                    "backend = \"s3\" needs a [storage.s3] section with at least `bucket`",
                ));
            }
            (BackendKind::S3, Some(s3)) => {
                if s3.bucket.is_empty() {
                    return Err(invalid("storage.s3.bucket".into(), "must not be empty"));
                }
                if s3.secret_access_key.is_some() && s3.secret_access_key_env.is_some() {
                    return Err(invalid(
                        "storage.s3.secret_access_key_env".into(),
                        "set secret_access_key or secret_access_key_env, not both",
                    ));
                }
                if let Some(endpoint) = &s3.endpoint
                    && url::Url::parse(endpoint)
                        .map(|u| !matches!(u.scheme(), "http" | "https"))
                        .unwrap_or(true)
                {
                    return Err(invalid(
                        "storage.s3.endpoint".into(),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            _ => {}
        }
        match (self.backend, &self.gcs) {
            (BackendKind::Gcs, None) => {
                return Err(invalid(
                    "storage.gcs".into(),
                    "backend = \"gcs\" needs a [storage.gcs] section with at least `bucket`",
                ));
            }
            (BackendKind::Gcs, Some(gcs)) if gcs.bucket.is_empty() => {
                return Err(invalid("storage.gcs.bucket".into(), "must not be empty"));
            }
            _ => {}
        }
        match (self.backend, &self.azure) {
            (BackendKind::Azure, None) => {
                return Err(invalid(
                    "storage.azure".into(),
                    "backend = \"azure\" needs a [storage.azure] section with `account` and `container`",
                ));
            }
            (BackendKind::Azure, Some(azure)) => {
                if azure.account.is_empty() {
                    return Err(invalid("storage.azure.account".into(), "must not be empty"));
                }
                if azure.container.is_empty() {
                    return Err(invalid(
                        "storage.azure.container".into(),
                        "must not be empty",
                    ));
                }
                if azure.redirect && azure.access_key.is_none() && azure.access_key_env.is_none() {
                    return Err(invalid(
                        "storage.azure.redirect".into(),
                        "SAS URLs are signed with the account's key: set access_key or access_key_env, or redirect = false",
                    ));
                }
                if azure.access_key.is_some() && azure.access_key_env.is_some() {
                    return Err(invalid(
                        "storage.azure.access_key_env".into(),
                        "set access_key or access_key_env, not both",
                    ));
                }
                if let Some(endpoint) = &azure.endpoint
                    && url::Url::parse(endpoint)
                        .map(|u| !matches!(u.scheme(), "http" | "https"))
                        .unwrap_or(true)
                {
                    return Err(invalid(
                        "storage.azure.endpoint".into(),
                        "must be the account's blob URL: http:// or https://, such as \"https://myaccount.blob.core.windows.net\"",
                    ));
                }
            }
            _ => {}
        }
        if self.max_upload_sessions_per_client == 0 {
            return Err(invalid(
                "storage.max_upload_sessions_per_client".into(),
                "must be at least 1",
            ));
        }
        if !(self.low_water > 0.0 && self.low_water <= 1.0) {
            return Err(invalid(
                "storage.low_water".into(),
                "must be a fraction of max_size above 0 and at most 1 (e.g. 0.9)",
            ));
        }
        if self.max_size.is_some_and(|m| m.0 == 0) {
            return Err(invalid(
                "storage.max_size".into(),
                "must be greater than zero",
            ));
        }
        if self.gc_interval.is_zero() {
            return Err(invalid(
                "storage.gc_interval".into(),
                "must be greater than zero",
            ));
        }
        if self.index_memory_mib == 0 {
            return Err(invalid(
                "storage.index_memory_mib".into(),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

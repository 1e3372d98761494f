//! The S3 backend: AWS S3 and every S3-compatible store (Garage, MinIO, Ceph RGW), through
//! `object_store`'s S3 client (SigV4 signing, multipart uploads, presigned URLs) under the
//! shared [bucket backend](super::bucket).

use object_store::aws::{AmazonS3, AmazonS3Builder};

use super::bucket::{BucketBackend, BucketPlace, client_options, retry_config};
use super::{BackendError, Result};

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// The endpoint (`http://127.0.0.1:3900` for a local Garage); `None` for AWS S3.
    pub endpoint: Option<String>,
    /// The region (Garage's default is `garage`; AWS needs the bucket's).
    pub region: String,
    /// Every key goes under this prefix.
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

/// Objects in an S3 bucket.
pub type S3Backend = BucketBackend<AmazonS3>;

impl BucketBackend<AmazonS3> {
    /// A client for the bucket. Nothing is contacted yet: [`super::Backend::check`] tells
    /// whether the bucket is there and the credentials work.
    pub fn s3(settings: S3Settings) -> Result<S3Backend> {
        // The HTTP client under object_store uses the process's rustls provider: ring, as the
        // rest of regmirror (installing it twice is harmless).
        crate::signing::install_crypto_provider();
        let allow_http = settings
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_retry(retry_config())
            .with_client_options(client_options(allow_http));
        if let Some(endpoint) = &settings.endpoint {
            // S3-compatible stores are addressed by path (`<endpoint>/<bucket>/<key>`).
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let client = builder.build().map_err(|e| BackendError::Remote {
            op: "configure",
            bucket: settings.bucket.clone(),
            key: String::new(),
            message: e.to_string(),
        })?;
        Ok(BucketBackend::new(
            client,
            BucketPlace {
                kind: "s3",
                bucket: settings.bucket,
                location: settings.endpoint.unwrap_or_else(|| "AWS S3".into()),
                prefix: settings.prefix,
            },
        ))
    }
}

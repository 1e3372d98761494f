//! The Azure Blob Storage backend, through `object_store`'s Azure client (shared-key or
//! Azure AD credentials, block blobs committed with a block list, SAS URLs) under the shared
//! [bucket backend](super::bucket). A commit killed midway leaves uncommitted blocks, which are
//! never visible and which Azure discards after a week.

use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};

use super::bucket::{BucketBackend, BucketPlace, client_options, retry_config};
use super::{BackendError, Result};

/// Where the container is and how to reach it.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// The storage account.
    pub account: String,
    /// The container.
    pub container: String,
    /// Every key goes under this prefix.
    pub prefix: String,
    /// The account's access key; `None`: the environment's Azure credentials.
    pub access_key: Option<String>,
    /// The account's blob service URL; `None`: `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
}

/// Objects in an Azure Blob Storage container.
pub type AzureBackend = BucketBackend<MicrosoftAzure>;

impl BucketBackend<MicrosoftAzure> {
    /// A client for the container. Nothing is contacted yet.
    pub fn azure(settings: AzureSettings) -> Result<AzureBackend> {
        crate::signing::install_crypto_provider();
        let location = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", settings.account));
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(&settings.account)
            .with_container_name(&settings.container)
            .with_endpoint(location.clone());
        if let Some(key) = &settings.access_key {
            builder = builder.with_access_key(key);
        }
        let client = builder
            .with_retry(retry_config())
            .with_client_options(client_options(location.starts_with("http://")))
            .build()
            .map_err(|e| BackendError::Remote {
                op: "configure",
                bucket: settings.container.clone(),
                key: String::new(),
                message: e.to_string(),
            })?;
        Ok(BucketBackend::new(
            client,
            BucketPlace {
                kind: "azure",
                bucket: settings.container,
                location,
                prefix: settings.prefix,
            },
        ))
    }
}

//! Pushes of blobs as the registry sees them: upload sessions owned by their client, the blob
//! pinned for the repository it was pushed to (named as pushes record it), mounts. The HTTP
//! handlers parse and render; the store keeps the bytes.

use bytes::Bytes;
use futures_util::Stream;

use super::{Mirror, ProxyError};
use crate::oci::{Digest, RepoName};
use crate::store::{Referrer, UploadError, UploadId, UploadLimits};

impl Mirror {
    /// Mounts a blob the store has into `name` (the store is digest-global); whether it had it.
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        ns: Option<&str>,
        digest: &Digest,
    ) -> Result<bool, UploadError> {
        if self.store.blob_size(digest).await?.is_none() {
            return Ok(false);
        }
        let holder = self.local_name(ns, name);
        self.store.pin(digest, holder.as_str()).await?;
        Ok(true)
    }

    /// Opens an upload session for `name`, owned by `owner`.
    pub async fn start_upload(
        &self,
        name: &RepoName,
        owner: &str,
        limits: &UploadLimits,
    ) -> Result<UploadId, UploadError> {
        self.store.create_upload(name, owner, limits).await
    }

    /// The size of `owner`'s session so far.
    pub async fn upload_status(
        &self,
        name: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> Result<u64, UploadError> {
        self.store.upload_len(name, owner, id).await
    }

    /// Appends a body (from `start`, when the client said where) to `owner`'s session.
    pub async fn append_upload<S, E>(
        &self,
        name: &RepoName,
        owner: &str,
        id: &UploadId,
        start: Option<u64>,
        body: S,
        limits: &UploadLimits,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.store
            .append_upload(name, owner, id, start, body, limits)
            .await
    }

    /// Verifies and commits `owner`'s session as `digest`, pinned for the repository.
    pub async fn complete_upload(
        &self,
        name: &RepoName,
        ns: Option<&str>,
        owner: &str,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64, UploadError> {
        let holder = self.local_name(ns, name);
        self.store
            .complete_upload(name, owner, id, digest, holder.as_str())
            .await
    }

    /// Cancels `owner`'s session.
    pub async fn cancel_upload(
        &self,
        name: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> Result<(), UploadError> {
        self.store.cancel_upload(name, owner, id).await
    }

    /// Every repository the mirror holds, as clients name them, sorted.
    pub async fn catalog(&self) -> Result<Vec<String>, ProxyError> {
        let mut names: Vec<String> = self
            .repositories_view("")
            .await?
            .into_iter()
            .map(|r| r.display)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The manifests whose `subject` is `digest`, of `artifact_type` when given.
    pub async fn referrers(
        &self,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, ProxyError> {
        let mut referrers = self.store.referrers(digest).await?;
        if let Some(wanted) = artifact_type {
            referrers.retain(|r| r.artifact_type.as_deref() == Some(wanted));
        }
        Ok(referrers)
    }
}

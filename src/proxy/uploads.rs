//! Pushes of blobs as the registry sees them: upload sessions owned by their client, the blob
//! pinned for the repository it was pushed to (named as pushes record it), mounts. The HTTP
//! handlers parse and render; the store keeps the bytes.

use bytes::Bytes;
use futures_util::Stream;

use super::{Mirror, ProxyError, Target};
use crate::oci::Digest;
use crate::store::{Referrer, UploadError, UploadId, UploadLimits};

impl Mirror {
    /// Mounts a blob the store has into `target` (the store is digest-global); whether it had
    /// it.
    pub async fn mount_blob(&self, target: &Target, digest: &Digest) -> Result<bool, UploadError> {
        if self.store.blob_size(digest).await?.is_none() {
            return Ok(false);
        }
        self.store.pin(digest, target.canonical().as_str()).await?;
        Ok(true)
    }

    /// Opens an upload session for `name`, owned by `owner`.
    pub async fn start_upload(
        &self,
        target: &Target,
        owner: &str,
        limits: &UploadLimits,
    ) -> Result<UploadId, UploadError> {
        self.store
            .create_upload(target.canonical(), owner, limits)
            .await
    }

    /// The size of `owner`'s session so far.
    pub async fn upload_status(
        &self,
        target: &Target,
        owner: &str,
        id: &UploadId,
    ) -> Result<u64, UploadError> {
        self.store.upload_len(target.canonical(), owner, id).await
    }

    /// Appends a body (from `start`, when the client said where) to `owner`'s session.
    pub async fn append_upload<S, E>(
        &self,
        target: &Target,
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
            .append_upload(target.canonical(), owner, id, start, body, limits)
            .await
    }

    /// Verifies and commits `owner`'s session as `digest`, pinned for the repository.
    pub async fn complete_upload(
        &self,
        target: &Target,
        owner: &str,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64, UploadError> {
        let name = target.canonical();
        self.store
            .complete_upload(name, owner, id, digest, name.as_str())
            .await
    }

    /// Cancels `owner`'s session.
    pub async fn cancel_upload(
        &self,
        target: &Target,
        owner: &str,
        id: &UploadId,
    ) -> Result<(), UploadError> {
        self.store
            .cancel_upload(target.canonical(), owner, id)
            .await
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

    /// The manifests whose `subject` is `digest` that were pushed to `target` (an artifact
    /// pushed to `team/x` is listed under `team/x` only), of `artifact_type` when given.
    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, ProxyError> {
        let mut listed = Vec::new();
        for referrer in self.store.referrers(digest).await? {
            if artifact_type.is_some_and(|wanted| referrer.artifact_type.as_deref() != Some(wanted))
            {
                continue;
            }
            let Ok(manifest) = referrer.digest.parse::<Digest>() else {
                continue;
            };
            let holders = self.store.holders_cached(&manifest).await?;
            if holders.iter().any(|h| target.holds(h)) {
                listed.push(referrer);
            }
        }
        Ok(listed)
    }
}

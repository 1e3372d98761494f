//! Upload sessions that every replica on a remote backend can continue: the session and each
//! chunk it received live in the bucket, so a push whose `POST`, `PATCH`es and `PUT` land on
//! different replicas still succeeds.
//!
//! ```text
//! _uploads/<uuid>/session.json                 the repository and the owner
//! _uploads/<uuid>/chunk-<start>-<end>          the bytes [start, end), 20 digits each
//! ```
//! A chunk object appears only once its body arrived whole, so a replica killed mid-`PATCH`
//! leaves the session where it was. Each replica keeps a local copy of the session
//! (`uploads/<uuid>/data`, as with the filesystem backend) that it brings up to date from the
//! chunks before it appends or completes; the local copy is only a cache.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::epoch_ms;
use super::uploads::{UploadError, UploadId};
use super::{Result, Store, StoreError, io_err};
use crate::oci::RepoName;

/// Who a session belongs to, as stored in `session.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    repo: String,
    owner: String,
}

/// A chunk of a session in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chunk {
    pub key: String,
    pub start: u64,
    pub end: u64,
}

/// Where the bucket's sessions live.
const UPLOADS_PREFIX: &str = "_uploads/";

fn session_prefix(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{}/", id.as_str())
}

fn session_key(id: &UploadId) -> String {
    format!("{}session.json", session_prefix(id))
}

fn chunk_key(id: &UploadId, start: u64, end: u64) -> String {
    format!("{}chunk-{start:020}-{end:020}", session_prefix(id))
}

/// `(start, end)` of a chunk key's last component.
fn parse_chunk_name(name: &str) -> Option<(u64, u64)> {
    let (start, end) = name.strip_prefix("chunk-")?.split_once('-')?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (end > start).then_some((start, end))
}

impl Store {
    /// Whether the backend is remote (a bucket other replicas may share): upload sessions,
    /// leases and the index journal live in it.
    pub(crate) fn is_remote(&self) -> bool {
        !self.backend.lists_cheaply()
    }

    /// Records a new session in the bucket.
    pub(super) async fn publish_session(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> Result<()> {
        let record = SessionRecord {
            repo: repo.as_str().to_owned(),
            owner: owner.to_owned(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt {
            key: session_key(id),
            message: e.to_string(),
        })?;
        self.backend
            .put(&session_key(id), Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// The session's chunks in order, if it exists and belongs to `repo` and `owner`.
    pub(super) async fn shared_chunks(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> std::result::Result<Vec<Chunk>, UploadError> {
        let Some(bytes) = self.backend.get(&session_key(id)).await? else {
            return Err(UploadError::Unknown);
        };
        let record: SessionRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                key: session_key(id),
                message: e.to_string(),
            })?;
        if record.repo != repo.as_str() || record.owner != owner {
            return Err(UploadError::Unknown);
        }
        let mut chunks: Vec<Chunk> = self
            .backend
            .list(&session_prefix(id))
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                let (start, end) = parse_chunk_name(name)?;
                Some(Chunk {
                    key: o.key,
                    start,
                    end,
                })
            })
            .collect();
        chunks.sort_by_key(|c| c.start);
        // Chunks are published in order, each starting where the last ended; anything else
        // is not ours to guess about.
        let mut at = 0;
        for chunk in &chunks {
            if chunk.start != at {
                return Err(StoreError::Corrupt {
                    key: chunk.key.clone(),
                    message: format!("upload chunk starts at {}, expected {at}", chunk.start),
                }
                .into());
            }
            at = chunk.end;
        }
        Ok(chunks)
    }

    /// Brings the local copy of a session up to the bucket's `chunks` (creating it when this
    /// replica has not seen the session yet); what is beyond them locally is cut off.
    pub(super) async fn materialize(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
        chunks: &[Chunk],
    ) -> std::result::Result<(), UploadError> {
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        if tokio::fs::metadata(&dir).await.is_err() {
            super::uploads::write_local_session(&dir, repo, owner).await?;
            self.upload_adopted(owner);
        }
        let have = tokio::fs::metadata(&data)
            .await
            .map_err(io_err(&data))?
            .len();
        let want = chunks.last().map_or(0, |c| c.end);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .await
            .map_err(io_err(&data))?;
        if have > want {
            file.set_len(want).await.map_err(io_err(&data))?;
            self.upload_bytes_released(have - want);
            return Ok(());
        }
        drop(file);
        for chunk in chunks.iter().filter(|c| c.end > have) {
            let from = have.saturating_sub(chunk.start);
            self.download_chunk(chunk, from, &data).await?;
        }
        Ok(())
    }

    /// Appends `chunk` from byte `from` of it to the local file `data`.
    async fn download_chunk(
        &self,
        chunk: &Chunk,
        from: u64,
        data: &std::path::Path,
    ) -> std::result::Result<(), UploadError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let Some(object) = self.backend.read(&chunk.key, from).await? else {
            return Err(UploadError::Unknown);
        };
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(data)
            .await
            .map_err(io_err(data))?;
        let mut body = object.chunks;
        let mut got = 0u64;
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(|e| io_err(data)(e))?;
            file.write_all(&bytes).await.map_err(io_err(data))?;
            got += bytes.len() as u64;
        }
        file.flush().await.map_err(io_err(data))?;
        self.upload_bytes_added(got);
        if got != chunk.end - chunk.start - from {
            return Err(StoreError::Corrupt {
                key: chunk.key.clone(),
                message: format!("upload chunk holds {got} bytes from {from}"),
            }
            .into());
        }
        Ok(())
    }

    /// Publishes the bytes `[start, end)` of the local session as a chunk in the bucket.
    pub(super) async fn publish_chunk(&self, id: &UploadId, start: u64, end: u64) -> Result<()> {
        let data = self.upload_dir(id).join("data");
        let part = self
            .staging
            .join("tmp")
            .join(format!("chunk-{}-{start}", id.as_str()));
        let copied = {
            let (from, to) = (data.clone(), part.clone());
            tokio::task::spawn_blocking(move || copy_range(&from, &to, start, end - start))
                .await
                .map_err(|e| io_err(&data)(io::Error::other(e)))?
        };
        let result = match copied {
            Ok(()) => self
                .backend
                .commit_file(&chunk_key(id, start, end), &part)
                .await
                .map(|_| ())
                .map_err(StoreError::from),
            Err(e) => Err(io_err(&part)(e)),
        };
        let _ = tokio::fs::remove_file(&part).await;
        result
    }

    /// Removes the session from the bucket.
    pub(super) async fn unpublish_session(&self, id: &UploadId) -> Result<()> {
        self.backend.delete_prefix(&session_prefix(id)).await?;
        Ok(())
    }

    /// Whether the bucket still has the session (a local copy of one another replica
    /// completed or cancelled is only a leftover).
    pub(super) async fn session_published(&self, id: &UploadId) -> Result<bool> {
        Ok(self.backend.stat(&session_key(id)).await?.is_some())
    }

    /// Removes sessions in the bucket idle for longer than `ttl`; how many.
    pub(super) async fn expire_shared_sessions(
        &self,
        ttl: Duration,
        dry_run: bool,
    ) -> Result<usize> {
        let mut newest: std::collections::HashMap<String, u64> = Default::default();
        for object in self.backend.list(UPLOADS_PREFIX).await? {
            let Some(id) = object
                .key
                .strip_prefix(UPLOADS_PREFIX)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let at = newest.entry(id.to_owned()).or_default();
            *at = (*at).max(object.modified_ms);
        }
        let cutoff = epoch_ms(std::time::SystemTime::now()).saturating_sub(ttl.as_millis() as u64);
        let mut removed = 0;
        for (id, modified) in newest {
            if modified > cutoff {
                continue;
            }
            if !dry_run {
                self.backend
                    .delete_prefix(&format!("{UPLOADS_PREFIX}{id}/"))
                    .await?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// Copies `len` bytes from `offset` of `from` into a new file `to`.
fn copy_range(
    from: &std::path::Path,
    to: &std::path::Path,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut source = std::fs::File::open(from)?;
    source.seek(SeekFrom::Start(offset))?;
    let mut target = std::fs::File::create(to)?;
    let copied = io::copy(&mut source.take(len), &mut target)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upload data shorter than expected",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_round_trip() {
        let id = UploadId::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
        let key = chunk_key(&id, 5, 1024);
        let name = key.rsplit('/').next().unwrap();
        assert_eq!(parse_chunk_name(name), Some((5, 1024)));
        assert_eq!(parse_chunk_name("chunk-5-5"), None);
        assert_eq!(parse_chunk_name("session.json"), None);
    }
}

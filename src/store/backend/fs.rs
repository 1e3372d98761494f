//! The filesystem backend: each object is a file under the root, its key the relative path.
//! Writes go to a temp file that is synced and renamed into place, so a reader (or a crash)
//! never sees half an object.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Committed, ObjectInfo, Result, epoch_ms};
use crate::byte_stream::ByteStream;

/// Objects as files under a directory.
pub struct FsBackend {
    root: PathBuf,
    /// Where atomic writes are staged: on the same filesystem as `root`, so renames are atomic.
    tmp: PathBuf,
}

impl FsBackend {
    /// A backend over `root`, staging writes in `tmp` (which must be on the same filesystem).
    pub fn new(root: &Path, tmp: &Path) -> FsBackend {
        FsBackend {
            root: root.to_owned(),
            tmp: tmp.to_owned(),
        }
    }

    /// The file of a key. Keys are built by the store from validated names only.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("write-{}-{n}", std::process::id()))
    }
}

fn io_error<'k>(op: &'static str, key: &'k str) -> impl FnOnce(io::Error) -> BackendError + 'k {
    move |source| BackendError::Io {
        op,
        key: key.to_owned(),
        source,
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io_error(op, key))
}

#[async_trait]
impl Backend for FsBackend {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn lists_cheaply(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_error("read", key)(e)),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        // One trip to the blocking pool for the whole sequence, not one per call: a cold
        // manifest writes several objects on the client's path.
        let (tmp, target) = (self.temp_path(), self.path(key));
        blocking("write", key, move || write_atomic(&tmp, &target, &bytes)).await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(meta) if meta.is_file() => Ok(Some(info(key.to_owned(), &meta))),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_error("stat", key)(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        let removed = match tokio::fs::remove_file(&path).await {
            Ok(()) => true,
            Err(e) if is_absent(&e) => false,
            Err(e) => return Err(io_error("delete", key)(e)),
        };
        // Empty directories go with their last object, so listings stay short.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(removed)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        match tokio::fs::remove_dir_all(self.path(prefix)).await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(io_error("delete", prefix)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (root, base) = (self.root.clone(), self.path(prefix));
        blocking("list", prefix, move || {
            let mut out = Vec::new();
            walk(&root, &base, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<Committed> {
        let (file, target) = (file.to_owned(), self.path(key));
        blocking("commit", key, move || {
            std::fs::File::open(&file)?.sync_all()?;
            rename_into_place(&file, &target)
        })
        .await?;
        Ok(Committed::Moved)
    }

    async fn open_local(&self, key: &str) -> Result<Option<(std::fs::File, u64)>> {
        let path = self.path(key);
        let opened = blocking("open", key, move || match std::fs::File::open(&path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((file, len)))
            }
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        })
        .await?;
        Ok(opened)
    }

    async fn read(&self, key: &str, from: u64) -> Result<Option<ByteStream>> {
        use tokio::io::AsyncSeekExt;
        let Some((file, size)) = self.open_local(key).await? else {
            return Ok(None);
        };
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(from))
            .await
            .map_err(io_error("read", key))?;
        Ok(Some(ByteStream::from_offset(
            size,
            from,
            Box::pin(tokio_util::io::ReaderStream::new(file)),
        )))
    }

    async fn presigned_get(&self, _key: &str, _ttl: Duration) -> Result<Option<url::Url>> {
        Ok(None)
    }

    async fn check(&self) -> Result<()> {
        // Staged in `tmp` and renamed into the root, as every object is: both must be usable.
        let probe = self.root.join("_ready");
        let (tmp, target) = (self.temp_path(), probe.clone());
        let written = blocking("write", "_ready", move || {
            write_atomic(&tmp, &target, b"ok")
        })
        .await;
        let _ = tokio::fs::remove_file(&probe).await;
        written
    }

    async fn abort_stray_uploads(&self, _older_than: Duration) -> Result<u64> {
        // Renames are atomic: nothing is ever left half-committed.
        Ok(0)
    }
}

/// Not there: no such file, or a file where a directory of the path should be.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn info(key: String, meta: &std::fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        modified_ms: meta.modified().map_or(0, epoch_ms),
    }
}

/// Every file below `dir`, keyed by its path relative to `root`. A missing `dir` is empty;
/// any other error is an error (callers that delete must not guess).
fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root)
            && let Some(key) = rel.to_str()
        {
            out.push(info(key.to_owned(), &entry.metadata()?));
        }
    }
    Ok(())
}

/// How often a rename is tried again after its directory vanished under it.
const RENAME_ATTEMPTS: usize = 8;

/// Renames `from` to `path`, creating `path`'s directories. A delete in the same directory
/// (another process's, or this one's: the server emptying the journal a command writes to)
/// removes a directory once it is empty, possibly between our `create_dir_all` and our
/// `rename` (`NotFound`), or between `create_dir_all`'s own `mkdir` and its check that the
/// directory is there (`AlreadyExists`); then the whole step is tried again.
fn rename_into_place(from: &Path, path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return std::fs::rename(from, path);
    };
    let mut attempt = 1;
    loop {
        match std::fs::create_dir_all(parent).and_then(|()| std::fs::rename(from, path)) {
            Err(e)
                if attempt < RENAME_ATTEMPTS && lost_a_race_with_a_delete(&e) && from.exists() =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The errors a directory removed under a write gives.
fn lost_a_race_with_a_delete(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
    )
}

/// Writes `bytes` to `tmp`, syncs it and renames it to `path`; removes `tmp` on failure.
fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let result = (|| {
        let mut file = std::fs::File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        rename_into_place(tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_round_trip_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let fs = FsBackend::new(dir.path(), &dir.path().join("tmp"));
        assert_eq!(fs.get("a/b/c").await.unwrap(), None);
        fs.put("a/b/c", Bytes::from_static(b"one")).await.unwrap();
        fs.put("a/d", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(fs.get("a/b/c").await.unwrap().unwrap(), "one");
        assert_eq!(fs.stat("a/d").await.unwrap().unwrap().size, 3);
        let mut keys: Vec<_> = fs
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        assert_eq!(keys, ["a/b/c", "a/d"]);
        assert!(fs.delete("a/b/c").await.unwrap());
        assert!(!fs.delete("a/b/c").await.unwrap());
        assert!(!dir.path().join("a/b").exists(), "empty directories go");
        assert!(fs.list("nothing/").await.unwrap().is_empty());
    }

    /// A command writes journal entries while the server reads and deletes them (its delete
    /// removing the directory whenever it is empty): no write fails, none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_survive_a_reader_emptying_their_directory() {
        const ENTRIES: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let writer = FsBackend::new(dir.path(), &dir.path().join("tmp"));
        let reader = FsBackend::new(dir.path(), &dir.path().join("tmp"));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let consumer = {
            let done = std::sync::Arc::clone(&done);
            tokio::spawn(async move {
                let mut consumed = std::collections::HashSet::new();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    for entry in reader.list("j/").await.unwrap() {
                        assert!(reader.delete(&entry.key).await.unwrap());
                        consumed.insert(entry.key);
                    }
                    if finished {
                        return consumed;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for n in 0..ENTRIES {
            writer
                .put(&format!("j/{n:04}"), Bytes::from_static(b"change"))
                .await
                .unwrap_or_else(|e| panic!("entry {n}: {e}"));
        }
        done.store(true, Ordering::SeqCst);
        let consumed = consumer.await.unwrap();
        assert_eq!(consumed.len(), ENTRIES, "every entry written was read");
    }
}

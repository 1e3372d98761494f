//! A backend wrapper that counts and times every request, by operation and outcome.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{HistogramVec, IntCounterVec};

use super::{Backend, Committed, ObjectInfo, Result};
use crate::byte_stream::ByteStream;

/// The metric families a [`Measured`] backend records into.
#[derive(Clone)]
pub struct BackendMetrics {
    /// Requests by backend, operation and outcome (`ok`, `not_found`, `error`).
    pub requests: IntCounterVec,
    /// Latency by backend and operation.
    pub duration: HistogramVec,
}

/// A backend whose requests are counted and timed.
pub struct Measured<B> {
    inner: B,
    metrics: BackendMetrics,
}

impl<B: Backend> Measured<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, metrics: BackendMetrics) -> Measured<B> {
        Measured { inner, metrics }
    }

    fn observe<T>(&self, op: &str, started: Instant, result: &Result<T>, found: bool) {
        let kind = self.inner.kind();
        let outcome = match result {
            Err(_) => "error",
            Ok(_) if !found => "not_found",
            Ok(_) => "ok",
        };
        self.metrics
            .requests
            .with_label_values(&[kind, op, outcome])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[kind, op])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Whether an optional answer found something (errors count as found: their outcome is
/// `error` anyway).
fn found<T>(result: &Result<Option<T>>) -> bool {
    !matches!(result, Ok(None))
}

#[async_trait]
impl<B: Backend> Backend for Measured<B> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn lists_cheaply(&self) -> bool {
        self.inner.lists_cheaply()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.observe("get", started, &result, found(&result));
        result
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put(key, bytes).await;
        self.observe("put", started, &result, true);
        result
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let started = Instant::now();
        let result = self.inner.stat(key).await;
        self.observe("stat", started, &result, found(&result));
        result
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.observe("delete", started, &result, true);
        result
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete_prefix(prefix).await;
        self.observe("delete_prefix", started, &result, true);
        result
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let started = Instant::now();
        let result = self.inner.list(prefix).await;
        self.observe("list", started, &result, true);
        result
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<Committed> {
        let started = Instant::now();
        let result = self.inner.commit_file(key, file).await;
        self.observe("commit", started, &result, true);
        result
    }

    async fn open_local(&self, key: &str) -> Result<Option<(std::fs::File, u64)>> {
        // The local fast path: not a request worth a metric of its own.
        self.inner.open_local(key).await
    }

    async fn read(&self, key: &str, from: u64) -> Result<Option<ByteStream>> {
        let started = Instant::now();
        let result = self.inner.read(key, from).await;
        self.observe("read", started, &result, found(&result));
        result
    }

    async fn read_sized(&self, key: &str, from: u64, size: u64) -> Result<Option<ByteStream>> {
        let started = Instant::now();
        let result = self.inner.read_sized(key, from, size).await;
        self.observe("read", started, &result, found(&result));
        result
    }

    async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>> {
        self.inner.presigned_get(key, ttl).await
    }

    async fn check(&self) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.check().await;
        self.observe("check", started, &result, true);
        result
    }

    async fn abort_stray_uploads(&self, older_than: Duration) -> Result<u64> {
        let started = Instant::now();
        let result = self.inner.abort_stray_uploads(older_than).await;
        self.observe("abort_stray_uploads", started, &result, true);
        result
    }
}

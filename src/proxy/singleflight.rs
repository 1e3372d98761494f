//! At most one call per key at a time: concurrent callers with the same key share the result
//! of the first. The call runs in its own task, so it completes (and leaves the table) even if
//! every caller goes away.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Call<V> = Shared<BoxFuture<'static, Option<V>>>;

type Table<K, V> = Arc<Mutex<HashMap<K, Call<V>>>>;

/// The calls in flight.
pub struct Singleflight<K, V> {
    calls: Table<K, V>,
}

/// Removes a call's key from the table when dropped.
struct Leave<K: Hash + Eq, V> {
    table: Table<K, V>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Leave<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

impl<K, V> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight {
            calls: Arc::default(),
        }
    }
}

impl<K, V> Singleflight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `call` unless a call for `key` is in flight, in which case waits for that one.
    /// Returns the result and whether this caller joined another's call. `None` if the call
    /// panicked.
    pub async fn run<F>(&self, key: K, call: F) -> (Option<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (shared, joined) = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            match calls.get(&key) {
                Some(shared) => (shared.clone(), true),
                None => {
                    let leave = Leave {
                        table: Arc::clone(&self.calls),
                        key: Some(key.clone()),
                    };
                    let task = tokio::spawn(async move {
                        // Leaves the table however the call ends, a panic included, so the
                        // next caller starts afresh instead of joining a dead call.
                        let _leave = leave;
                        call.await
                    });
                    let shared = async move { task.await.ok() }.boxed().shared();
                    calls.insert(key, shared.clone());
                    (shared, false)
                }
            }
        };
        (shared.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_share_one_run() {
        let flights: Arc<Singleflight<&'static str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (flights, runs, mut wait) = (flights.clone(), runs.clone(), wait.clone());
            handles.push(tokio::spawn(async move {
                flights
                    .run("k", async move {
                        let _ = wait.wait_for(|go| *go).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 41
                    })
                    .await
            }));
        }
        // Let every caller register before the call finishes (single-threaded test runtime).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        let mut joined = 0;
        for h in handles {
            let (value, j) = h.await.unwrap();
            assert_eq!(value, Some(41));
            joined += usize::from(j);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        // The table is empty afterwards: a new call runs again.
        let (value, joined) = flights.run("k", async { 7 }).await;
        assert_eq!((value, joined), (Some(7), false));
    }

    #[tokio::test]
    async fn a_panicked_call_leaves_the_table() {
        let flights: Singleflight<&'static str, usize> = Singleflight::default();
        let (value, _) = flights
            .run("k", async {
                if flights_panic() {
                    panic!("boom");
                }
                1
            })
            .await;
        assert_eq!(value, None, "a panicked call has no value");
        let (value, joined) = flights.run("k", async { 2 }).await;
        assert_eq!(
            (value, joined),
            (Some(2), false),
            "the next call runs afresh"
        );
    }

    fn flights_panic() -> bool {
        true
    }
}

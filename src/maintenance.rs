//! Background work that keeps a long-running mirror healthy: eviction under the size cap
//! (prompt, on every growth), periodic GC, expiry of idle uploads, and saving access times and
//! the index.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::StorageConfig;
use crate::proxy::Mirror;
use crate::store::{GcReport, StoreError};

/// Starts every background task; abort the handles to stop them.
pub fn spawn(mirror: &Arc<Mirror>, storage: &StorageConfig) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(expire_uploads(Arc::clone(mirror), storage.upload_ttl)),
        tokio::spawn(save_state(Arc::clone(mirror))),
        tokio::spawn(periodic_gc(Arc::clone(mirror), storage.clone())),
        tokio::spawn(follow_index(Arc::clone(mirror))),
    ];
    if mirror.cluster().is_some() {
        tasks.push(tokio::spawn(ping_redis(Arc::clone(mirror))));
    }
    if let Some(max) = storage.max_size {
        let target = (max.0 as f64 * storage.low_water) as u64;
        tasks.push(tokio::spawn(evict_on_growth(
            Arc::clone(mirror),
            max.0,
            target,
        )));
    }
    tasks
}

/// How often a server reads the index journal for what other replicas (on a bucket) or
/// commands beside it (`prefetch`, `import`, `gc`) changed.
pub const FOLLOW_INDEX_EVERY: Duration = Duration::from_secs(1);

/// Reads the index journal every [`FOLLOW_INDEX_EVERY`]: tags pushed and content deleted
/// through other replicas, or by commands on the same directory, reach this one within that
/// time.
async fn follow_index(mirror: Arc<Mirror>) {
    let mut ticker = tokio::time::interval(FOLLOW_INDEX_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // The index was just loaded.
    loop {
        ticker.tick().await;
        match mirror.store.sync_index().await {
            Ok(()) => {}
            // Not loaded since start: the readiness probe and the status page say so; each
            // retry need not.
            Err(e) if !mirror.store.is_loaded() => {
                tracing::debug!(error = %e, "the object store still does not answer")
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the index journal"),
        }
    }
}

/// Every two seconds: pings Redis (`regmirror_cluster_redis_up` stays true, and coordination
/// resumes soon after an outage even on an idle replica) and shares the upstreams' rate
/// limits, so that every replica's gauges show the newest any replica saw.
async fn ping_redis(mirror: Arc<Mirror>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(cluster) = mirror.cluster() else {
            continue;
        };
        cluster.ping().await;
        for upstream in mirror.upstreams.all() {
            if let Some(newest) = cluster
                .share_rate_limit(upstream.name(), upstream.rate_limit())
                .await
            {
                upstream.learn_rate_limit(newest);
            }
        }
    }
}

/// How long the replica doing GC and eviction holds that chore.
const HOUSEKEEPING_LEASE: Duration = Duration::from_secs(600);

/// Whether this replica does the shared housekeeping now (always, on a local store).
async fn holds_housekeeping(mirror: &Mirror) -> bool {
    match mirror
        .store
        .hold_lease("housekeeping", HOUSEKEEPING_LEASE)
        .await
    {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the housekeeping lease; skipping this round");
            false
        }
    }
}

/// Runs an eviction whenever a new blob takes the store over `max`.
async fn evict_on_growth(mirror: Arc<Mirror>, max: u64, target: u64) {
    loop {
        if mirror.store.usage().0 + mirror.store.uploads_bytes() > max
            && holds_housekeeping(&mirror).await
        {
            evict_now(&mirror, target).await;
        }
        mirror.store.grown().await;
    }
}

/// One eviction down to `target` bytes, with metrics and a log line.
pub async fn evict_now(mirror: &Mirror, target: u64) {
    let fills = Arc::clone(&mirror.fills);
    match mirror
        .store
        .evict(target, |d| fills.running(d).is_some())
        .await
    {
        Ok(report) if report.blobs > 0 => {
            mirror.metrics.evicted_blobs.inc_by(report.blobs);
            mirror.metrics.evicted_bytes.inc_by(report.bytes);
            let (bytes, blobs) = mirror.store.usage();
            tracing::info!(
                evicted_blobs = report.blobs,
                evicted_bytes = report.bytes,
                dropped_tags = report.tags,
                store_bytes = bytes,
                store_blobs = blobs,
                "evicted least recently used content"
            );
        }
        Ok(_) => {}
        Err(e) => {
            mirror
                .metrics
                .maintenance_failures
                .with_label_values(&["eviction"])
                .inc();
            tracing::error!(error = %e, "eviction aborted: nothing more is removed until it can read the store");
        }
    }
}

async fn periodic_gc(mirror: Arc<Mirror>, storage: StorageConfig) {
    let mut ticker = tokio::time::interval(storage.gc_interval);
    ticker.tick().await; // Not at start: a restart should not race the first pulls.
    loop {
        ticker.tick().await;
        if !holds_housekeeping(&mirror).await {
            continue;
        }
        match gc_now(&mirror, &storage).await {
            Ok(report) => tracing::info!(%report, "gc done"),
            Err(e) => {
                mirror
                    .metrics
                    .maintenance_failures
                    .with_label_values(&["gc"])
                    .inc();
                tracing::error!(error = %e, "gc aborted");
            }
        }
    }
}

/// One online GC: spares blobs being filled or read and the spools of running fills.
pub async fn gc_now(mirror: &Mirror, storage: &StorageConfig) -> Result<GcReport, StoreError> {
    let fills = Arc::clone(&mirror.fills);
    let report = mirror
        .store
        .gc(storage.gc_grace, storage.upload_ttl, false, |d| {
            fills.running(d).is_some()
        })
        .await?;
    mirror.metrics.gc_removed_blobs.inc_by(report.blobs);
    Ok(report)
}

/// Removes upload sessions idle for longer than `ttl`, checking a few times per TTL. Shared
/// sessions are checked every half minute too, so that the local copies of sessions completed
/// on another replica do not hold this one's upload space for long.
async fn expire_uploads(mirror: Arc<Mirror>, ttl: Duration) {
    let most = if mirror.store.is_remote() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(600)
    };
    let period = (ttl / 4).clamp(Duration::from_secs(1), most);
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await; // Not at start: nothing has been idle for a period yet.
    loop {
        ticker.tick().await;
        match mirror.store.expire_uploads(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "cannot expire upload sessions"),
        }
    }
}

/// Saves access times (only when they changed) and folds a remote index's journal into its
/// snapshot, once a minute: cheap, and a restart keeps the eviction order roughly right and
/// reads a short journal.
async fn save_state(mirror: Arc<Mirror>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    ticker.tick().await; // Nothing to save at start.
    loop {
        ticker.tick().await;
        if let Err(e) = mirror.store.save_state().await {
            tracing::warn!(error = %e, "cannot save access times or the index");
        }
    }
}

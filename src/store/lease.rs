//! Leases in the backend: which replica of several on one bucket does a shared chore (folding
//! the index journal, GC, eviction) for a while. `_leases/<name>.json` names the holder and
//! when its claim runs out; a holder renews it each time it works, and a replica that dies
//! simply stops renewing, so another takes over once the claim has expired.
//!
//! With Redis (`[cluster] redis_url`) the lease is a Redis key instead, taken atomically; the
//! bucket's is the fallback while Redis is unreachable.
//!
//! An object store has no compare-and-swap every S3-compatible server implements, so a claim
//! is written and then read back: two replicas claiming within the same instant may both
//! believe they hold it for one round. The chores are safe to run twice (GC and eviction
//! re-check what they delete, folding keeps young journal entries), so the lease only keeps
//! them from being done by every replica every time.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::usage::now_ms;
use super::{Result, Store};

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    holder: String,
    expires_ms: u64,
}

fn lease_key(name: &str) -> String {
    format!("_leases/{name}.json")
}

impl Store {
    /// Whether this replica holds (or has just taken) the lease `name` for the next `ttl`. A
    /// local backend has one replica: it always holds every lease.
    pub(crate) async fn hold_lease(&self, name: &str, ttl: Duration) -> Result<bool> {
        if !self.is_remote() {
            return Ok(true);
        }
        if let Some(link) = self.link.get()
            && let Some(held) = link.lease(name, ttl).await
        {
            return Ok(held);
        }
        let key = lease_key(name);
        let now = now_ms();
        if let Some(bytes) = self.backend.get(&key).await?
            && let Ok(claim) = serde_json::from_slice::<Claim>(&bytes)
            && claim.holder != self.replica
            && claim.expires_ms > now
        {
            return Ok(false);
        }
        let claim = Claim {
            holder: self.replica.clone(),
            expires_ms: now + ttl.as_millis() as u64,
        };
        let bytes = serde_json::to_vec(&claim).unwrap_or_default();
        self.backend.put(&key, Bytes::from(bytes)).await?;
        // Read back: of two replicas claiming at once, the later write wins.
        let won = match self.backend.get(&key).await? {
            Some(bytes) => {
                serde_json::from_slice::<Claim>(&bytes).is_ok_and(|c| c.holder == self.replica)
            }
            None => false,
        };
        Ok(won)
    }

    /// This replica's id in leases and logs (random per process).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }
}

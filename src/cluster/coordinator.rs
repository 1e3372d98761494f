//! Cluster-wide coordination through Redis (`[cluster] redis_url`), all of it optional: a
//! change counter that lets every replica see a push or a delete made through another on its
//! very next request, leases for the shared chores, and claims that make one replica of the
//! cluster fetch a blob from the upstream while the others read it from that replica.
//!
//! Redis is trusted with nothing it could turn against a replica: a claim names a replica by
//! its id, and where that replica is reached comes from its membership record, signed with
//! the cluster secret and expiring ([`Coordinator::announce`]); a key someone wrote without an
//! expiry (a lease, a claim) is given one, so none is held for ever.
//!
//! Redis is an accelerator, never a dependency: every call is bounded by [`REDIS_TIMEOUT`],
//! and when Redis is unreachable each answers "don't know" (`None`), on which the callers fall
//! back to what a replica does alone (one fetch per replica, the journal read every second,
//! leases in the bucket).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hmac::Mac;
use redis::aio::ConnectionManager;

use crate::config::ConfigError;

/// An upstream's rate limit as its `ratelimit-*` headers announced it. The replicas share one
/// egress and so one limit: each shares the newest it saw ([`Coordinator::share_rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// When it was seen, in milliseconds since the epoch.
    pub seen_ms: u64,
    /// Requests per window.
    pub limit: i64,
    /// Requests left in the window.
    pub remaining: i64,
}

/// The longest a request waits for Redis before going on without it.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Who leads the cluster's fetch of a blob or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillClaim {
    /// This replica: it fetches from the upstream.
    Leader,
    /// Another replica, reachable at this URL, is fetching it.
    Follower(String),
}

/// Redis coordination for one store (keys prefixed by the bucket and prefix it serves).
pub struct Coordinator {
    redis: ConnectionManager,
    keys: String,
    /// This replica's id.
    replica: String,
    /// How the other replicas reach this one.
    advertise: Option<String>,
    /// Signs and checks membership records (derived from the cluster secret).
    member_key: Vec<u8>,
    /// When this replica last announced its membership (ms since the epoch).
    announced_ms: AtomicU64,
    /// Whether "Redis is unreachable" was logged and not yet followed by a success.
    down: AtomicBool,
    /// While Redis is failing, it is not asked again before this instant, so that a Redis
    /// that times out does not add [`REDIS_TIMEOUT`] to every request.
    pause_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// `regmirror_cluster_redis_up`.
    up: Option<prometheus::IntGauge>,
}

/// How long a failing Redis is left alone before it is tried again.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// How long a membership record is good for; replicas renew theirs every few seconds.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(30);

/// A replica announces itself again when its record is older than this.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Gives a key that has no expiry, or one longer than `ARGV[1]` ms, that expiry (a key written
/// by someone else could otherwise be held for ever); then returns its value.
const CAP_EXPIRY: &str = "local t = redis.call('PTTL', KEYS[1]) \
    if t == -1 or t > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    return redis.call('GET', KEYS[1])";

use crate::clock::now_ms as unix_ms;

impl Coordinator {
    /// Connects (lazily: a Redis that is down at start is retried later) to `redis_url`,
    /// with keys under `regmirror:<scope>:`. `replica` is this process's id and `advertise`
    /// where the other replicas reach it.
    pub fn connect(
        redis_url: &str,
        scope: &str,
        replica: &str,
        advertise: Option<String>,
        member_key: Vec<u8>,
    ) -> Result<Coordinator, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "cluster.redis_url".into(),
            message,
        };
        let client = redis::Client::open(redis_url).map_err(|e| invalid(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let redis = client
            .get_connection_manager_lazy(config)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Coordinator {
            redis,
            keys: format!("regmirror:{scope}:"),
            replica: replica.to_owned(),
            advertise,
            member_key,
            announced_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            pause_until: std::sync::Mutex::new(None),
            up: None,
        })
    }

    /// Reports whether Redis answers in `gauge` (1 or 0).
    pub fn with_gauge(mut self, gauge: prometheus::IntGauge) -> Coordinator {
        self.up = Some(gauge);
        self
    }

    /// Asks Redis whether it is there (every few seconds in the background: it keeps the
    /// `up` gauge true and reconnects after an outage without waiting for a request).
    pub async fn ping(&self) {
        let _: Option<String> = self.run(redis::cmd("PING").clone()).await;
        self.announce().await;
    }

    fn member_mac(&self, replica: &str, url: &str, expires_ms: u64) -> crate::signing::Mac {
        let signed = format!("member\0{replica}\0{url}\0{expires_ms}");
        crate::signing::mac(&self.member_key, &[signed.as_bytes()])
    }

    /// Writes this replica's membership record: where the others reach it, until when,
    /// signed with the cluster secret.
    pub async fn announce(&self) {
        let Some(url) = &self.advertise else { return };
        let now = unix_ms();
        let expires_ms = now + MEMBERSHIP_TTL.as_millis() as u64;
        let signature = hex::encode(
            self.member_mac(&self.replica, url, expires_ms)
                .finalize()
                .into_bytes(),
        );
        let record = format!("{expires_ms} {signature} {url}");
        let ok: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(format!("{}member:{}", self.keys, self.replica))
                    .arg(record)
                    .arg("PX")
                    .arg(MEMBERSHIP_TTL.as_millis() as u64)
                    .clone(),
            )
            .await;
        if ok.is_some() {
            self.announced_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Where the replica `replica` is reached, from its membership record, if the record is
    /// signed with the cluster secret and current. Nothing else read from Redis is a URL.
    async fn member_url(&self, replica: &str) -> Option<String> {
        let record: Option<String> = self
            .run(
                redis::cmd("GET")
                    .arg(format!("{}member:{replica}", self.keys))
                    .clone(),
            )
            .await?;
        let record = record?;
        let mut parts = record.splitn(3, ' ');
        let (expires, signature, url) = (parts.next()?, parts.next()?, parts.next()?);
        let expires_ms: u64 = expires.parse().ok()?;
        let signature = hex::decode(signature).ok()?;
        let valid = self
            .member_mac(replica, url, expires_ms)
            .verify_slice(&signature)
            .is_ok();
        let current = expires_ms > unix_ms()
            && expires_ms <= unix_ms() + MEMBERSHIP_TTL.as_millis() as u64 + 60_000;
        if !(valid && current) {
            tracing::warn!(
                replica,
                "membership record in Redis is not signed by this cluster or has expired; ignored"
            );
            return None;
        }
        Some(url.to_owned())
    }

    /// Shares rate limits: stores `seen` for `upstream` unless Redis has a newer one, and
    /// returns the newest either way (every replica shows the cluster's, as the replicas
    /// share one egress and so one limit).
    pub async fn share_rate_limit(
        &self,
        upstream: &str,
        seen: Option<RateLimit>,
    ) -> Option<RateLimit> {
        const NEWEST: &str = "local cur = redis.call('GET', KEYS[1]) \
            if cur and (ARGV[1] == '' or tonumber(string.match(cur, '^(%d+)')) >= tonumber(ARGV[1])) then return cur end \
            if ARGV[1] == '' then return false end \
            redis.call('SET', KEYS[1], ARGV[2], 'PX', 86400000) return ARGV[2]";
        let key = format!("{}ratelimit:{upstream}", self.keys);
        let (at, value) = match seen {
            Some(r) => (
                r.seen_ms.to_string(),
                format!("{} {} {}", r.seen_ms, r.limit, r.remaining),
            ),
            None => (String::new(), String::new()),
        };
        let newest: Option<String> = self
            .run(
                redis::cmd("EVAL")
                    .arg(NEWEST)
                    .arg(1)
                    .arg(&key)
                    .arg(at)
                    .arg(value)
                    .clone(),
            )
            .await?;
        let newest = newest?;
        let mut parts = newest.split(' ').map(str::parse::<i64>);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(seen_ms)), Some(Ok(limit)), Some(Ok(remaining))) => Some(RateLimit {
                seen_ms: u64::try_from(seen_ms).unwrap_or(0),
                limit,
                remaining,
            }),
            _ => None,
        }
    }

    /// Runs `cmd`; `None` when Redis failed or did not answer in time.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        if self.paused() {
            return None;
        }
        let mut conn = self.redis.clone();
        let result = tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        match result {
            Ok(Ok(value)) => {
                if let Some(up) = &self.up {
                    up.set(1);
                }
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is reachable again: cluster coordination resumes");
                }
                Some(value)
            }
            Ok(Err(e)) => {
                self.note_down(&e.to_string());
                None
            }
            Err(_) => {
                self.note_down("no answer in time");
                None
            }
        }
    }

    fn paused(&self) -> bool {
        let mut until = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if std::time::Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn note_down(&self, why: &str) {
        if let Some(up) = &self.up {
            up.set(0);
        }
        *self.pause_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + PAUSE_AFTER_FAILURE);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "redis is unreachable: each replica coordinates alone until it is back"
            );
        }
    }

    /// The cluster's change counter: it grows whenever any replica changed the index.
    pub async fn changes(&self) -> Option<u64> {
        let value: Option<u64> = self
            .run(
                redis::cmd("GET")
                    .arg(format!("{}changes", self.keys))
                    .clone(),
            )
            .await?;
        Some(value.unwrap_or(0))
    }

    /// Tells every replica that the index changed (after the change is in the journal).
    pub async fn announce_change(&self) {
        let _: Option<u64> = self
            .run(
                redis::cmd("INCR")
                    .arg(format!("{}changes", self.keys))
                    .clone(),
            )
            .await;
    }

    /// Sets `key` to `value` for `ms` unless it is set; `None` when Redis cannot tell, else
    /// `Ok(())` when taken, or `Err` with who holds it (its expiry capped at `ms`, so that a
    /// key someone wrote without one lapses).
    async fn take(&self, key: &str, value: &str, ms: u64) -> Option<Result<(), Option<String>>> {
        let taken: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .clone(),
            )
            .await?;
        if taken.is_some() {
            return Some(Ok(()));
        }
        let holder: Option<String> = self
            .run(
                redis::cmd("EVAL")
                    .arg(CAP_EXPIRY)
                    .arg(1)
                    .arg(key)
                    .arg(ms)
                    .clone(),
            )
            .await?;
        Some(Err(holder))
    }

    /// Whether this replica holds (or has just taken) the lease `name` for `ttl`.
    pub async fn lease(&self, name: &str, ttl: Duration) -> Option<bool> {
        let key = format!("{}lease:{name}", self.keys);
        let ms = ttl.as_millis() as u64;
        let holder = match self.take(&key, &self.replica, ms).await? {
            Ok(()) => return Some(true),
            Err(holder) => holder,
        };
        if holder.as_deref() != Some(self.replica.as_str()) {
            return Some(false);
        }
        let _: Option<i64> = self
            .run(redis::cmd("PEXPIRE").arg(&key).arg(ms).clone())
            .await;
        Some(true)
    }

    /// Claims the cluster's fetch of `what` (`blob:<digest>`, `manifest:<upstream>/<repo>:<ref>`)
    /// for `ttl` (renew with [`Coordinator::renew`] while it runs). The claim names this
    /// replica by its id; a follower learns where the leader is from the leader's signed
    /// membership record, and leads itself when there is none. `None` without Redis, or when
    /// this replica has no address to give.
    pub async fn claim(&self, what: &str, ttl: Duration) -> Option<FillClaim> {
        self.advertise.as_ref()?;
        if unix_ms().saturating_sub(self.announced_ms.load(Ordering::Relaxed))
            > ANNOUNCE_EVERY.as_millis() as u64
        {
            self.announce().await;
        }
        let me = &self.replica;
        let key = format!("{}claim:{what}", self.keys);
        let leader = match self.take(&key, me, ttl.as_millis() as u64).await? {
            Ok(()) => return Some(FillClaim::Leader),
            Err(leader) => leader,
        };
        match leader {
            Some(id) if &id != me => match self.member_url(&id).await {
                Some(url) => Some(FillClaim::Follower(url)),
                // No replica of this cluster by that id: fetch it here.
                None => Some(FillClaim::Leader),
            },
            // Ours (a claim left by this replica), or it expired in between: lead.
            _ => Some(FillClaim::Leader),
        }
    }

    /// Whether someone still holds the claim on `what`; `None` when Redis cannot tell.
    pub async fn claimed(&self, what: &str) -> Option<bool> {
        let key = format!("{}claim:{what}", self.keys);
        let n: i64 = self.run(redis::cmd("EXISTS").arg(&key).clone()).await?;
        Some(n > 0)
    }

    /// Extends this replica's claim on `what`.
    pub async fn renew(&self, what: &str, ttl: Duration) {
        let key = format!("{}claim:{what}", self.keys);
        let _: Option<i64> = self
            .run(
                redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl.as_millis() as u64)
                    .clone(),
            )
            .await;
    }

    /// Records `owner`'s upload session `id` until it closes or `ttl` passes, and counts the
    /// sessions `owner` has open over the cluster.
    pub async fn open_session(&self, owner: &str, id: &str, ttl: Duration) -> Option<usize> {
        const OPEN: &str = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) \
            redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3]) \
            redis.call('PEXPIRE', KEYS[1], ARGV[4]) \
            return redis.call('ZCARD', KEYS[1])";
        let now = unix_ms();
        let ttl_ms = ttl.as_millis() as u64;
        let open: i64 = self
            .run(
                redis::cmd("EVAL")
                    .arg(OPEN)
                    .arg(1)
                    .arg(format!("{}sessions:{owner}", self.keys))
                    .arg(now)
                    .arg(now + ttl_ms)
                    .arg(id)
                    .arg(ttl_ms)
                    .clone(),
            )
            .await?;
        usize::try_from(open).ok()
    }

    /// Records that `owner`'s upload session `id` ended.
    pub async fn close_session(&self, owner: &str, id: &str) {
        let _: Option<i64> = self
            .run(
                redis::cmd("ZREM")
                    .arg(format!("{}sessions:{owner}", self.keys))
                    .arg(id)
                    .clone(),
            )
            .await;
    }

    /// Gives up the claim on `what` (the fetch ended).
    pub async fn release(&self, what: &str) {
        let me = &self.replica;
        let key = format!("{}claim:{what}", self.keys);
        // Only our own claim: another replica may have taken over after ours expired.
        const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let _: Option<i64> = self
            .run(
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(&key)
                    .arg(me)
                    .clone(),
            )
            .await;
    }
}

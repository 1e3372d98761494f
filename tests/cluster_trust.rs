//! The cluster trusts only what it signed: someone who can write to Redis cannot send a replica
//! to a URL of their choosing or hold a claim for ever, and a captured peer signature reads
//! nothing a minute later. With a real Redis.

mod common;

use common::TestMirror;
use common::cluster::Redis;
use common::fake_upstream::{Auth, FakeUpstream};
use regmirror::cluster::{ClusterKeys, PEER_HEADER, Peers};
use regmirror::config::ClusterConfig;

const SECRET: &str = "5f1c2e9a7b3d4c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

/// A server that counts the connections it is sent and answers each with a redirect to itself
/// (what a hostile URL in Redis would do).
async fn rogue_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    let location = url.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}/metadata\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (url, hits)
}

#[tokio::test]
async fn redis_is_trusted_with_no_url_and_no_everlasting_key() {
    let Some(redis) = Redis::start("redis_is_trusted_with_no_url_and_no_everlasting_key").await
    else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = common::random_bytes(300_000);
    let digest = fake.put_blob(blob.clone());
    let rest = format!(
        "[cluster]\nsecret = \"{SECRET}\"\nredis_url = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        redis.url(),
        fake.url()
    );
    let m = TestMirror::start_config(tempfile::tempdir().unwrap(), "", "", &rest).await;
    let scope = m.store().display().to_string();

    // Someone who can write to Redis claims the blob's fetch for their own URL, for ever.
    let (rogue, hits) = rogue_server().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let claim = format!("regmirror:{scope}:claim:blob:{digest}");
    let _: () = redis::cmd("SET")
        .arg(&claim)
        .arg(&rogue)
        .query_async(&mut conn)
        .await
        .unwrap();
    // And a membership record for that "replica", not signed by the cluster.
    let _: () = redis::cmd("SET")
        .arg(format!("regmirror:{scope}:member:{rogue}"))
        .arg(format!("99999999999999 00 {rogue}"))
        .query_async(&mut conn)
        .await
        .unwrap();

    let r = m.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the replica never contacted a URL read from Redis"
    );
    assert_eq!(fake.count("GET", &digest), 1, "it fetched the blob itself");
    // The claim someone wrote without an expiry has one now.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&claim)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl == -2 || (0..=6_000).contains(&ttl), "PTTL {ttl}");

    // The replica's own membership record is signed: another process with the secret could
    // use it, and it expires.
    let member_ttl: i64 = redis::cmd("PTTL")
        .arg(format!(
            "regmirror:{scope}:member:{}",
            m.server.mirror.store.replica_id()
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=30_000).contains(&member_ttl), "PTTL {member_ttl}");

    // Peer reads: a fresh signature of the cluster reads; the same request replayed with a
    // signature two minutes old, or for another method, reads nothing.
    let keys = ClusterKeys::from_config(&ClusterConfig {
        secret: Some(SECRET.into()),
        ..ClusterConfig::default()
    })
    .unwrap();
    let peers = Peers::new(keys.derive("peer"));
    let parsed = digest.parse().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let peer_get = |signature: String| {
        m.client
            .get(m.url(&format!("/_cluster/blobs/{digest}")))
            .header(PEER_HEADER, signature)
            .send()
    };
    let fresh = peer_get(peers.sign("GET", &parsed)).await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.bytes().await.unwrap().len(), blob.len());
    for signature in [
        peers.sign_at("GET", &parsed, now_ms - 120_000),
        peers.sign_at("GET", &parsed, now_ms + 120_000),
        peers.sign("HEAD", &parsed),
    ] {
        let r = peer_get(signature).await.unwrap();
        assert_eq!(
            common::error_code(r).await,
            (403, "DENIED".into()),
            "a stale or misdirected signature"
        );
    }
}

/// `max_upload_sessions_per_client` holds over the cluster when Redis is up: a client that
/// spread its sessions over two replicas gets no more than the cap in all, and a session it
/// ends on one replica frees a place on the other.
#[tokio::test]
async fn upload_session_caps_hold_across_replicas() {
    let Some(redis) = Redis::start("upload_session_caps_hold_across_replicas").await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |dir: &std::path::Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\nmax_upload_sessions_per_client = 2\n[auth]\nanonymous_push = true\n[cluster]\nsecret = \"{SECRET}\"\nredis_url = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            dir.join("store").display(),
            redis.url(),
            fake.url()
        )
    };
    // Two replicas of one store (one scope in Redis).
    let parse = |text: String| regmirror::config::Config::parse(&text, "test").unwrap();
    let a = regmirror::start(&parse(config(dir.path()))).await.unwrap();
    let b = regmirror::start(&parse(config(dir.path()))).await.unwrap();
    let client = reqwest::Client::new();
    let open = |server: &regmirror::Server| {
        let url = format!("http://{}/v2/team/app/blobs/uploads/", server.addr);
        let client = client.clone();
        async move { client.post(url).send().await.unwrap() }
    };
    let first = open(&a).await;
    assert_eq!(first.status(), 202);
    let first = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(open(&a).await.status(), 202);
    let third = open(&b).await;
    assert_eq!(
        common::error_code(third).await,
        (429, "TOOMANYREQUESTS".into()),
        "the cap counts the client's sessions on the other replica"
    );
    // Cancelled on a, the session frees a place on b.
    let r = client
        .delete(format!("http://{}{first}", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(open(&b).await.status(), 202);
    b.stop().await;
    a.stop().await;
}

/// A lease key someone wrote without an expiry (to stop GC, eviction and journal folding on
/// every replica) is given one the next time a replica asks, and the replica takes the lease
/// once it lapses.
#[tokio::test]
async fn a_lease_written_by_someone_else_cannot_be_held_for_ever() {
    let Some(redis) = Redis::start("a_lease_written_by_someone_else_cannot_be_held_for_ever").await
    else {
        return;
    };
    let coordinator = regmirror::cluster::Coordinator::connect(
        &redis.url(),
        "scope",
        "replica-1",
        None,
        b"member key".to_vec(),
    )
    .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("regmirror:scope:lease:housekeeping")
        .arg("intruder")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl = std::time::Duration::from_millis(500);
    assert_eq!(coordinator.lease("housekeeping", ttl).await, Some(false));
    let left: i64 = redis::cmd("PTTL")
        .arg("regmirror:scope:lease:housekeeping")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((0..=500).contains(&left), "PTTL {left}");
    common::eventually_async(5, "the intruder's lease to lapse", || {
        let coordinator = &coordinator;
        async move { coordinator.lease("housekeeping", ttl).await == Some(true) }
    })
    .await;
}

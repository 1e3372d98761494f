//! An in-process fake registry for faults a real server will not produce: wrong bytes, cut-off
//! bodies, Bearer and Basic auth, redirects. Records every request it receives.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FakeBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body that sends `bytes` and then fails, as a connection cut mid-body does. The failure
/// comes a moment after the bytes, so that hyper has flushed them (and the headers) first.
fn broken_body(bytes: Bytes) -> FakeBody {
    let data = futures_util::stream::once(async move { Ok(hyper::body::Frame::data(bytes)) });
    let cut = futures_util::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Err::<hyper::body::Frame<Bytes>, BoxError>("cut off".into())
    });
    StreamBody::new(data.chain(cut)).boxed_unsync()
}

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub accept: Option<String>,
}

/// How the fake authenticates clients.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// Docker-Hub-style token auth; tokens live `expires_in` seconds. With `credentials`, the
    /// token endpoint requires them as Basic.
    Bearer {
        expires_in: u64,
        credentials: Option<(String, String)>,
    },
    Basic {
        user: String,
        password: String,
    },
}

/// What the fake does wrong (or slowly) when serving a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Right length, wrong bytes.
    Corrupt,
    /// Declares the full length, sends only this many bytes, then closes; every time.
    CutOffAt(usize),
    /// Like `CutOffAt`, for the first request only.
    CutOnceAt(usize),
    /// Sends this many bytes, then nothing more, for the first request only.
    StallOnceAfter(usize),
    /// Sends `chunk` bytes every `delay_ms`.
    Paced { chunk: usize, delay_ms: u64 },
    /// Like `Paced`, with the last byte wrong.
    PacedCorrupt { chunk: usize, delay_ms: u64 },
    /// Redirects to the CDN fake (see [`FakeUpstream::set_redirect`]).
    Redirect,
    /// No Content-Length, and a chunked body of zeros that never ends.
    Endless,
}

#[derive(Default)]
struct State {
    manifests: HashMap<(String, String), (Bytes, String)>,
    blobs: HashMap<String, Bytes>,
    faults: HashMap<String, Fault>,
    seen: Vec<Seen>,
    issued_tokens: HashSet<String>,
    redirect_to: Option<String>,
    /// Blobs whose body has been sent to the end (for "first byte before the last" checks).
    finished_sending: HashSet<String>,
    /// Answer every /v2/ request with this status (429 comes with ratelimit headers).
    failure: Option<u16>,
    /// Ignore Range headers (answer 200 with the whole blob).
    no_ranges: bool,
    /// Answer tag lists with endless JSON, chunked, with no Content-Length.
    endless_tag_list: bool,
    /// Repository names `/v1/search` knows (with their descriptions).
    search: Vec<(String, String)>,
    /// The referrers API: (repository, subject digest) → descriptors. A repository with none
    /// answers 404, as registries without the API do.
    referrers: HashMap<(String, String), Vec<serde_json::Value>>,
}

/// The fake registry.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Accept requests, then never answer them (no headers).
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// Wait this long before answering each request.
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
    auth: Arc<Mutex<Auth>>,
    tokens: Arc<AtomicUsize>,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FakeUpstream {
    pub async fn start(auth: Auth) -> FakeUpstream {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeUpstream {
            addr,
            state: Arc::default(),
            auth: Arc::new(Mutex::new(auth)),
            tokens: Arc::default(),
            down: Arc::default(),
            hang: Arc::default(),
            latency_ms: Arc::default(),
        };
        let (state, auth, tokens) = (fake.state.clone(), fake.auth.clone(), fake.tokens.clone());
        let down = fake.down.clone();
        let hang = fake.hang.clone();
        let latency = fake.latency_ms.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if down.load(Ordering::SeqCst) {
                    // Unreachable: the connection is dropped before any byte.
                    drop(stream);
                    continue;
                }
                let (state, auth, tokens) = (state.clone(), auth.clone(), tokens.clone());
                let (down, hang, latency) = (down.clone(), hang.clone(), latency.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (state, auth, tokens) = (state.clone(), auth.clone(), tokens.clone());
                        let down = down.load(Ordering::SeqCst);
                        let hang = hang.load(Ordering::SeqCst);
                        let latency = latency.load(Ordering::SeqCst);
                        async move {
                            if latency > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
                            }
                            if hang {
                                // Record the request, then never send headers.
                                record(&req, &state);
                                std::future::pending::<()>().await;
                            }
                            if down {
                                // Kept-alive connections die too: hyper closes on a service error.
                                return Err("upstream down");
                            }
                            Ok(respond(req, addr, &state, &auth, &tokens))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a blob; returns its digest.
    pub fn put_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    /// Adds a blob under its sha512 digest; returns the digest.
    pub fn put_blob_sha512(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&bytes)));
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    /// Adds a manifest under `reference` (a tag) and under its digest; returns the digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: impl Into<Bytes>,
        media_type: &str,
    ) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        let mut s = self.state.lock().unwrap();
        for reference in [tag.to_owned(), digest.clone()] {
            s.manifests.insert(
                (repo.to_owned(), reference),
                (bytes.clone(), media_type.to_owned()),
            );
        }
        digest
    }

    /// Adds `manifest` (bytes of an OCI manifest with `artifactType`) by digest, listed by the
    /// referrers API as a referrer of `subject`; returns its digest.
    pub fn put_referrer(
        &self,
        repo: &str,
        subject: &str,
        manifest: &str,
        artifact_type: &str,
    ) -> String {
        let bytes = Bytes::from(manifest.to_owned());
        let digest = sha256(&bytes);
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        let mut s = self.state.lock().unwrap();
        s.manifests.insert(
            (repo.to_owned(), digest.clone()),
            (bytes.clone(), media_type.to_owned()),
        );
        s.referrers
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default()
            .push(
                serde_json::json!({"mediaType": media_type, "digest": digest,
                "size": bytes.len(), "artifactType": artifact_type}),
            );
        digest
    }

    pub fn set_fault(&self, digest: &str, fault: Option<Fault>) {
        let mut s = self.state.lock().unwrap();
        match fault {
            Some(f) => s.faults.insert(digest.to_owned(), f),
            None => s.faults.remove(digest),
        };
    }

    /// Where `Fault::Redirect` blobs are sent: `<base>/<digest>`.
    pub fn set_redirect(&self, base: &str) {
        self.state.lock().unwrap().redirect_to = Some(base.to_owned());
    }

    /// Every later connection is dropped at once, as an unreachable upstream's would be.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Answer every /v2/ request with `status` (or behave again, with `None`).
    pub fn set_failure(&self, status: Option<u16>) {
        self.state.lock().unwrap().failure = status;
    }

    /// Accept connections and requests but never answer (or behave again, with `false`).
    /// Answers every request only after `ms` milliseconds.
    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// Answer tag lists with endless JSON, chunked (or normally, with `false`).
    pub fn set_endless_tag_list(&self, endless: bool) {
        self.state.lock().unwrap().endless_tag_list = endless;
    }

    /// Makes `/v1/search` know a repository.
    pub fn add_search_result(&self, name: &str, description: &str) {
        self.state
            .lock()
            .unwrap()
            .search
            .push((name.to_owned(), description.to_owned()));
    }

    /// Ignore Range requests (answer 200 with the whole blob).
    pub fn set_no_ranges(&self, no_ranges: bool) {
        self.state.lock().unwrap().no_ranges = no_ranges;
    }

    /// Whether the fake has sent the whole body of `digest` at least once.
    pub fn finished_sending(&self, digest: &str) -> bool {
        self.state.lock().unwrap().finished_sending.contains(digest)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    /// Requests seen with `method` whose path contains `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(fragment))
            .count()
    }

    pub fn tokens_issued(&self) -> usize {
        self.tokens.load(Ordering::SeqCst)
    }
}

fn respond(
    req: Request<Incoming>,
    addr: SocketAddr,
    state: &Arc<Mutex<State>>,
    auth: &Mutex<Auth>,
    tokens: &AtomicUsize,
) -> Response<FakeBody> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let first_time = record(&req, state);
    let failure = state.lock().unwrap().failure;
    if let Some(status) = failure.filter(|_| path.starts_with("/v2/")) {
        let status = StatusCode::from_u16(status).unwrap();
        let limited = status == StatusCode::TOO_MANY_REQUESTS;
        let mut response = error(
            status,
            if limited {
                "TOOMANYREQUESTS"
            } else {
                "UNAVAILABLE"
            },
        );
        if limited {
            let h = response.headers_mut();
            h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
            h.insert("ratelimit-remaining", "0;w=21600".parse().unwrap());
        }
        return response;
    }
    let auth = auth.lock().unwrap().clone();
    if path == "/token" {
        return token(&auth, authorization.as_deref(), state, tokens);
    }
    if let Some(challenge) = check_auth(&auth, authorization.as_deref(), state, addr) {
        return challenge;
    }
    if path == "/v2/" {
        return reply(StatusCode::OK, "{}", &[]);
    }
    if path == "/v1/search" {
        let query = req_query_param(&first_query(state), "q");
        let s = state.lock().unwrap();
        let results: Vec<_> = s
            .search
            .iter()
            .filter(|(name, _)| name.contains(&query))
            .map(|(name, description)| {
                serde_json::json!({"name": name, "description": description,
                    "star_count": 7, "is_official": false, "is_automated": false})
            })
            .collect();
        let body = serde_json::json!({"num_results": results.len(), "results": results});
        return reply(
            StatusCode::OK,
            body.to_string(),
            &[("content-type", "application/json")],
        );
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return reply(StatusCode::NOT_FOUND, "", &[]);
    };
    let head = method == "HEAD";
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let s = state.lock().unwrap();
        return match s.manifests.get(&(repo.to_owned(), reference.to_owned())) {
            Some((bytes, media_type)) => {
                let digest = sha256(bytes);
                let len = bytes.len().to_string();
                let headers = [
                    ("content-type", media_type.as_str()),
                    ("docker-content-digest", digest.as_str()),
                    ("content-length", len.as_str()),
                    ("ratelimit-limit", "100;w=21600"),
                    ("ratelimit-remaining", "42;w=21600"),
                ];
                reply(
                    StatusCode::OK,
                    if head { Bytes::new() } else { bytes.clone() },
                    &headers,
                )
            }
            None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        };
    }
    if let Some((repo, subject)) = rest.rsplit_once("/referrers/") {
        let s = state.lock().unwrap();
        return match s.referrers.get(&(repo.to_owned(), subject.to_owned())) {
            Some(listed) => reply(
                StatusCode::OK,
                serde_json::json!({"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": listed})
                .to_string(),
                &[("content-type", "application/vnd.oci.image.index.v1+json")],
            ),
            None => reply(StatusCode::NOT_FOUND, "", &[]),
        };
    }
    if let Some((_repo, digest)) = rest.rsplit_once("/blobs/") {
        return blob(state, digest, head, range.as_deref(), first_time);
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let s = state.lock().unwrap();
        if s.endless_tag_list {
            return endless_tag_list();
        }
        let mut tags: Vec<&str> = s
            .manifests
            .keys()
            .filter(|(r, t)| r == repo && !t.contains(':'))
            .map(|(_, t)| t.as_str())
            .collect();
        tags.sort();
        let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
        return reply(
            StatusCode::OK,
            body,
            &[("content-type", "application/json")],
        );
    }
    reply(StatusCode::NOT_FOUND, "", &[])
}

/// The query of the request just recorded.
fn first_query(state: &Mutex<State>) -> String {
    state
        .lock()
        .unwrap()
        .seen
        .last()
        .and_then(|s| s.query.clone())
        .unwrap_or_default()
}

/// A parameter of a query string.
fn req_query_param(query: &str, key: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Records a request; whether it is the first with its method and path.
fn record(req: &Request<Incoming>, state: &Mutex<State>) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (method, path) = (req.method().as_str(), req.uri().path());
    let mut s = state.lock().unwrap();
    let first = !s
        .seen
        .iter()
        .any(|seen| seen.method == method && seen.path == path);
    s.seen.push(Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        query: req.uri().query().map(str::to_owned),
        authorization: header("authorization"),
        range: header("range"),
        accept: header("accept"),
    });
    first
}

fn blob(
    state: &Arc<Mutex<State>>,
    digest: &str,
    head: bool,
    range: Option<&str>,
    first_time: bool,
) -> Response<FakeBody> {
    let s = state.lock().unwrap();
    let Some(bytes) = s.blobs.get(digest).cloned() else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    };
    let len = bytes.len().to_string();
    let headers = [
        ("content-length", len.as_str()),
        ("docker-content-digest", digest),
    ];
    if head {
        return reply(StatusCode::OK, Bytes::new(), &headers);
    }
    let from = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|_| !s.no_ranges);
    if let Some(from) = from {
        let total = bytes.len();
        let content_range = format!("bytes {from}-{}/{total}", total - 1);
        let part_len = (total - from).to_string();
        let part_headers = [
            ("content-length", part_len.as_str()),
            ("content-range", content_range.as_str()),
        ];
        return reply(
            StatusCode::PARTIAL_CONTENT,
            bytes.slice(from..),
            &part_headers,
        );
    }
    let fault = s.faults.get(digest).copied();
    let redirect_to = s.redirect_to.clone().unwrap_or_default();
    drop(s);
    let finished = FinishFlag {
        state: Arc::clone(state),
        digest: digest.to_owned(),
    };
    let with_body = |body: FakeBody| {
        let mut response = reply(StatusCode::OK, Bytes::new(), &headers);
        *response.body_mut() = body;
        response
    };
    // One-time faults only affect the first request for the blob.
    let fault = match fault {
        Some(Fault::CutOnceAt(_) | Fault::StallOnceAfter(_)) if !first_time => None,
        other => other,
    };
    match fault {
        None => {
            finished.set();
            reply(StatusCode::OK, bytes, &headers)
        }
        Some(Fault::Corrupt) => {
            let mut wrong = bytes.to_vec();
            wrong[0] ^= 0xff;
            reply(StatusCode::OK, wrong, &headers)
        }
        // Declared length, then the body breaks off: hyper closes the connection.
        Some(Fault::CutOffAt(n)) | Some(Fault::CutOnceAt(n)) => {
            with_body(broken_body(bytes.slice(..n)))
        }
        Some(Fault::StallOnceAfter(n)) => {
            let first = bytes.slice(..n);
            let stream = futures_util::stream::once(async move {
                Ok::<_, BoxError>(hyper::body::Frame::data(first))
            })
            .chain(futures_util::stream::pending());
            with_body(StreamBody::new(stream).boxed_unsync())
        }
        Some(Fault::Paced { chunk, delay_ms } | Fault::PacedCorrupt { chunk, delay_ms }) => {
            let bytes = if matches!(fault, Some(Fault::PacedCorrupt { .. })) {
                let mut wrong = bytes.to_vec();
                if let Some(last) = wrong.last_mut() {
                    *last ^= 0xff;
                }
                Bytes::from(wrong)
            } else {
                bytes
            };
            let delay = std::time::Duration::from_millis(delay_ms);
            let stream = futures_util::stream::unfold(
                (bytes, 0usize, Some(finished)),
                move |(bytes, offset, flag)| async move {
                    if offset >= bytes.len() {
                        if let Some(flag) = flag {
                            flag.set();
                        }
                        return None;
                    }
                    if offset > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    let end = (offset + chunk).min(bytes.len());
                    let frame = hyper::body::Frame::data(bytes.slice(offset..end));
                    Some((Ok::<_, BoxError>(frame), (bytes, end, flag)))
                },
            );
            with_body(StreamBody::new(stream).boxed_unsync())
        }
        Some(Fault::Endless) => {
            let zeros = Bytes::from(vec![0u8; 64 * 1024]);
            let stream = futures_util::stream::repeat_with(move || {
                Ok::<_, BoxError>(hyper::body::Frame::data(zeros.clone()))
            });
            let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
            *response.status_mut() = StatusCode::OK;
            response
        }
        Some(Fault::Redirect) => {
            let location = format!("{redirect_to}/{digest}");
            reply(
                StatusCode::TEMPORARY_REDIRECT,
                "",
                &[("location", location.as_str())],
            )
        }
    }
}

/// `{"tags":["t0000000000", ...` that never ends: a hostile upstream's answer.
fn endless_tag_list() -> Response<FakeBody> {
    let chunk = Bytes::from("\"t0000000000\",".repeat(4096));
    let head = futures_util::stream::once(async {
        Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from_static(b"{\"tags\":[")))
    });
    let body = futures_util::stream::repeat_with(move || {
        Ok::<_, BoxError>(hyper::body::Frame::data(chunk.clone()))
    });
    let mut response = Response::new(StreamBody::new(head.chain(body)).boxed_unsync());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// Marks a blob as sent to the end.
struct FinishFlag {
    state: Arc<Mutex<State>>,
    digest: String,
}

impl FinishFlag {
    fn set(self) {
        self.state
            .lock()
            .unwrap()
            .finished_sending
            .insert(self.digest);
    }
}

fn check_auth(
    auth: &Auth,
    authorization: Option<&str>,
    state: &Mutex<State>,
    addr: SocketAddr,
) -> Option<Response<FakeBody>> {
    match auth {
        Auth::None => None,
        Auth::Bearer { .. } => {
            let ok = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| state.lock().unwrap().issued_tokens.contains(t));
            let challenge =
                format!("Bearer realm=\"http://{addr}/token\",service=\"fake-registry\"");
            (!ok).then(|| {
                reply(
                    StatusCode::UNAUTHORIZED,
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                    &[("www-authenticate", challenge.as_str())],
                )
            })
        }
        Auth::Basic { user, password } => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            (authorization != Some(expected.as_str())).then(|| {
                reply(
                    StatusCode::UNAUTHORIZED,
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                    &[("www-authenticate", "Basic realm=\"fake\"")],
                )
            })
        }
    }
}

fn token(
    auth: &Auth,
    authorization: Option<&str>,
    state: &Mutex<State>,
    tokens: &AtomicUsize,
) -> Response<FakeBody> {
    let Auth::Bearer {
        expires_in,
        credentials,
    } = auth
    else {
        return reply(StatusCode::NOT_FOUND, "", &[]);
    };
    if let Some((user, password)) = credentials {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if authorization != Some(expected.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
    }
    let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("token-{n}");
    state.lock().unwrap().issued_tokens.insert(token.clone());
    let body = serde_json::json!({"token": token, "expires_in": expires_in}).to_string();
    reply(
        StatusCode::OK,
        body,
        &[("content-type", "application/json")],
    )
}

fn error(status: StatusCode, code: &str) -> Response<FakeBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": code}]}).to_string();
    reply(status, body, &[("content-type", "application/json")])
}

fn reply(
    status: StatusCode,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Response<FakeBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

impl FakeUpstream {
    /// Serves an image written in an OCI layout: every blob, the root manifest under `tag`
    /// (and its digest), and each child manifest of an index under its digest.
    pub fn put_layout_image(
        &self,
        layout: &std::path::Path,
        repo: &str,
        tag: &str,
        root: &str,
        root_type: &str,
    ) {
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            self.put_blob(bytes);
        }
        let read = |digest: &str| {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(digest.strip_prefix("sha256:").unwrap()),
            )
            .unwrap()
        };
        let root_bytes = read(root);
        self.put_manifest(repo, tag, root_bytes.clone(), root_type);
        let doc: serde_json::Value = serde_json::from_slice(&root_bytes).unwrap();
        for child in doc["manifests"].as_array().cloned().unwrap_or_default() {
            let digest = child["digest"].as_str().unwrap();
            let media_type = child["mediaType"].as_str().unwrap();
            self.put_manifest(repo, digest, read(digest), media_type);
        }
    }
}

//! What one client connection may cost: how long it may take to send a request's header, how
//! long it may sit idle, and (in [`super::server`]) how many connections are served at once.
//!
//! Each connection's I/O goes through [`Watched`], which notes when bytes arrive; the service
//! notes when requests start and their responses end ([`Activity::begin`]). A watchdog per
//! connection closes it when, with no request in flight, a header has been arriving for longer
//! than `header_read_timeout` (slowloris), or nothing has arrived for `idle_timeout`. A request
//! in flight is never cut by these: its own deadlines (upstream timeouts, client reads) apply.
//!
//! A response is another matter: once its handler answered, its body waits on the client.
//! Each response notes when hyper last asked it for bytes, and whether it is itself waiting
//! (for a fill's upstream, say). A response that has had bytes ready and not been asked for
//! any for `send_timeout` has a client that stopped reading (over HTTP/1.1 a full socket,
//! over HTTP/2 a flow-control window never opened): its connection is closed, which frees
//! its file and buffers, as nginx's `send_timeout` does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Timeouts of a client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// From a request's first byte to the end of its header.
    pub header_read: Duration,
    /// With no request in flight and nothing received.
    pub idle: Duration,
    /// A response with bytes ready that the client takes none of for this long.
    pub send: Duration,
}

/// What a connection is doing, shared by its I/O wrapper, its service and its watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` when the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// Milliseconds since `opened` (plus one) of the first byte received while idle; 0: none.
    first_idle_byte: AtomicU64,
    /// The responses in flight, for the send timeout.
    sending: std::sync::Mutex<Vec<std::sync::Weak<Sending>>>,
}

/// How one response is being sent: when the client last took bytes of it, and whether it is
/// waiting on the mirror rather than the client.
#[derive(Debug)]
struct Sending {
    /// Milliseconds since the connection opened when hyper last asked the body for bytes.
    asked_ms: AtomicU64,
    /// Whether the response is being produced (the handler runs, or the body waits for its
    /// source): the client is not to blame for the wait.
    producing: std::sync::atomic::AtomicBool,
}

/// Held while a request is in flight (from its header to the end of its response body).
pub struct InFlight {
    activity: Arc<Activity>,
    sending: Arc<Sending>,
}

impl Activity {
    /// A new connection's activity: idle from now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_idle_byte: AtomicU64::new(0),
            sending: std::sync::Mutex::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// A request's header is complete: it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.first_idle_byte.store(0, Ordering::SeqCst);
        let sending = Arc::new(Sending {
            asked_ms: AtomicU64::new(self.now_ms()),
            producing: std::sync::atomic::AtomicBool::new(true),
        });
        if let Ok(mut list) = self.sending.lock() {
            list.retain(|s| s.strong_count() > 0);
            list.push(Arc::downgrade(&sending));
        }
        InFlight {
            activity: Arc::clone(self),
            sending,
        }
    }

    /// Whether a response has waited on its client for `send` or longer.
    fn send_stalled(&self, send: Duration) -> bool {
        let now = self.now_ms();
        let limit = send.as_millis() as u64;
        let Ok(list) = self.sending.lock() else {
            return false;
        };
        list.iter().filter_map(std::sync::Weak::upgrade).any(|s| {
            !s.producing.load(Ordering::SeqCst)
                && now.saturating_sub(s.asked_ms.load(Ordering::SeqCst)) >= limit
        })
    }

    fn received(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.first_idle_byte.compare_exchange(
                0,
                self.now_ms() + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
        }
    }

    /// Why the connection should be closed now, if it should.
    fn overdue(&self, timeouts: ConnectionTimeouts) -> Option<&'static str> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return self.send_stalled(timeouts.send).then_some("send");
        }
        let now = self.now_ms();
        match self.first_idle_byte.load(Ordering::SeqCst) {
            0 => {
                let idle = now.saturating_sub(self.idle_since.load(Ordering::SeqCst));
                (idle >= timeouts.idle.as_millis() as u64).then_some("idle")
            }
            first => {
                let reading = now.saturating_sub(first - 1);
                (reading >= timeouts.header_read.as_millis() as u64).then_some("slow header")
            }
        }
    }
}

impl InFlight {
    /// The response is built and handed to hyper: from now on it waits on the client.
    pub fn responded(&self) {
        self.asked(false);
    }

    /// Hyper asked the body for bytes; `producing`: the body has none yet (it waits for its
    /// source, not for the client).
    pub fn asked(&self, producing: bool) {
        self.sending
            .asked_ms
            .store(self.activity.now_ms(), Ordering::SeqCst);
        self.sending.producing.store(producing, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            activity
                .idle_since
                .store(activity.now_ms(), Ordering::SeqCst);
            activity.first_idle_byte.store(0, Ordering::SeqCst);
        }
    }
}

/// Resolves when the connection has broken a timeout; says which.
pub async fn watchdog(activity: Arc<Activity>, timeouts: ConnectionTimeouts) -> &'static str {
    let tick = (timeouts.header_read.min(timeouts.idle).min(timeouts.send) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if let Some(why) = activity.overdue(timeouts) {
            return why;
        }
    }
}

/// A connection's I/O, noting when bytes arrive.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    /// Wraps a connection's stream.
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the open-file limit to its hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The default connection cap for an open-file limit: half of what is left after a reserve
/// for blob files, spools and upstream connections, within sane bounds.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let usable = fd_limit.saturating_sub(256) / 2;
    usable.clamp(32, 65_536) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ConnectionTimeouts = ConnectionTimeouts {
        header_read: Duration::from_millis(100),
        idle: Duration::from_millis(300),
        send: Duration::from_millis(200),
    };

    #[test]
    fn idle_then_slow_header_then_in_flight() {
        let a = Activity::new();
        assert_eq!(a.overdue(T), None);
        a.idle_since.store(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(310));
        assert_eq!(a.overdue(T), Some("idle"));
        // A byte arrives: the header clock starts.
        a.received();
        assert_eq!(a.overdue(T), None);
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(a.overdue(T), Some("slow header"));
        // A request in flight is never cut.
        let guard = a.begin();
        assert_eq!(a.overdue(T), None);
        drop(guard);
        assert_eq!(a.overdue(T), None, "idle again from now");
    }

    #[test]
    fn a_response_the_client_stops_taking_is_overdue() {
        let a = Activity::new();
        let guard = a.begin();
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(a.overdue(T), None, "the handler is still producing it");
        guard.responded();
        assert_eq!(a.overdue(T), None);
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(a.overdue(T), Some("send"), "never asked for its bytes");
        guard.asked(true);
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(
            a.overdue(T),
            None,
            "waiting on its source is not the client's fault"
        );
        guard.asked(false);
        assert_eq!(a.overdue(T), None, "just taken");
        drop(guard);
        assert_eq!(a.overdue(T), None);
    }

    #[test]
    fn connection_cap_follows_the_fd_limit() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(100), 32);
        assert_eq!(default_max_connections(1 << 40), 65_536);
    }
}

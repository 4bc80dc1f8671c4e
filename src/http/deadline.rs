//! Deadlines for the HTTP door's connections, so that a client cannot hold one (and its task
//! and socket) forever by saying nothing: a request head must be complete within
//! [`Deadlines::head`] of the connection opening or of its first byte after the last answer,
//! and a keep-alive connection with no request in flight is closed after [`Deadlines::idle`].
//! A request body that stops coming for as long as a head may take closes it too, and so does
//! a client that stops reading its answer for [`Deadlines::send`]. A request being served (its
//! answer streaming to a client that reads it included) is never cut.
//!
//! hyper has a header-read timeout of its own, but it needs a timer on the builder and builds a
//! boxed sleep for every request head: +1.5k instructions a request (docs/performance.md,
//! fifteenth round). Here each connection carries a few atomics that its reads and its
//! requests update, and each worker looks over its own connections a few times a second on a
//! coarse clock; an overdue connection reads end-of-file and hyper closes it.
//!
//! The gRPC door's connections are watched too, more loosely: gRPC channels are long-lived
//! and idle between calls by design, so once a client has sent the HTTP/2 connection preface
//! its connection is only closed if it stops reading ([`Connections::add_h2`]).
//!
//! The HTTP door serves HTTP/2 too (h2c, prior knowledge). There the bytes that come between
//! requests are frames (pings, window updates), not a request head, so on a connection that
//! opens with the HTTP/2 preface only the idle deadline applies between requests.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long the HTTP door waits for a client that sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From a connection's opening, or from the first byte of a request head after an answer,
    /// to the head's end (hyper's default header-read timeout); also the longest a request
    /// body may pause between two reads.
    pub head: Duration,
    /// From the end of the last answer to the next request's first byte (nginx's keep-alive
    /// timeout: longer than clients keep idle connections, so a client does not reuse one the
    /// moment it is closed).
    pub idle: Duration,
    /// The longest a write to the client may wait for it to read (nginx's `send_timeout`):
    /// a client that stops reading a streamed answer is disconnected, and the stream (and
    /// the provider's connection) released.
    pub send: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            head: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            send: Duration::from_secs(60),
        }
    }
}

impl Deadlines {
    /// How often a worker looks over its connections: a tenth of the shortest deadline,
    /// between 10 ms and 1 s.
    pub fn sweep_every(&self) -> Duration {
        let shortest = self.head.min(self.idle).min(self.send);
        (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// A worker's sweep timer: ticks every [`Self::sweep_every`]; a late tick delays the next
    /// instead of bursting to catch up.
    pub fn sweep_timer(&self) -> tokio::time::Interval {
        let mut timer = tokio::time::interval(self.sweep_every());
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    }
}

/// The coarse clock: milliseconds since its first reading, as of the last sweep (of any
/// worker).
static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// The coarse clock's time, never 0 (which the watch's fields use for "not started").
fn now() -> u64 {
    NOW_MS.load(Relaxed).max(1)
}

/// Advances the coarse clock and returns it.
fn tick() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    let ms = u64::try_from(elapsed).unwrap_or(u64::MAX - 1) + 1;
    NOW_MS.fetch_max(ms, Relaxed);
    ms
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The HTTP/2 connection preface (RFC 9113, 3.4): what a gRPC client owes first, and how an
/// HTTP/2 client of the HTTP door is told from an HTTP/1 one.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One connection's state, shared by its socket (reads), its service (requests) and its
/// worker's sweep.
#[derive(Debug)]
pub struct Watch {
    /// Requests in flight; a streamed answer counts until its body ends.
    busy: AtomicU32,
    /// When the request head being read began (coarse ms); 0: none is being read.
    head_at: AtomicU64,
    /// When the connection last became free of requests (coarse ms).
    idle_at: AtomicU64,
    /// Since when a request's body has been waited for (coarse ms); 0: not waiting.
    body_wait: AtomicU64,
    /// Since when a write to the client has been waiting for it to read (coarse ms); 0: not
    /// waiting.
    write_wait: AtomicU64,
    /// Bytes of the HTTP/2 connection preface still to come on a gRPC connection; 0 on HTTP/1
    /// connections and once it has come.
    preface_left: AtomicU32,
    /// An HTTP door connection that speaks HTTP/2: what it sends between requests are frames,
    /// which start no head.
    frames: AtomicBool,
    expired: AtomicBool,
    /// The connection task, woken when the sweep expires it.
    waker: AtomicWaker,
}

impl Watch {
    fn new() -> Self {
        let now = now();
        // A new connection owes its first request head.
        Watch {
            busy: AtomicU32::new(0),
            head_at: AtomicU64::new(now),
            idle_at: AtomicU64::new(now),
            body_wait: AtomicU64::new(0),
            write_wait: AtomicU64::new(0),
            preface_left: AtomicU32::new(0),
            frames: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// The connection's first bytes: on the HTTP door, an HTTP/2 client's preface ends the
    /// head owed since the connection opened, and from then on the connection is idle between
    /// requests whatever frames it sends.
    fn first_read(&self, bytes: &[u8]) {
        // Its method, `PRI `, is one HTTP/1 does not have: the first four bytes tell.
        let opens_h2 = bytes.get(..4).is_some_and(|m| H2_PREFACE.starts_with(m));
        if self.preface_left.load(Relaxed) == 0 && opens_h2 {
            self.frames.store(true, Relaxed);
            self.idle_at.store(now(), Relaxed);
            self.head_at.store(0, Relaxed);
        }
    }

    /// `n` bytes arrived: with no request in flight they begin the next head (on HTTP/1), or
    /// on a gRPC connection bring its preface closer; once it is complete the connection
    /// counts as busy for as long as it lives.
    fn read_some(&self, n: usize) {
        if self.busy.load(Relaxed) != 0 {
            return;
        }
        match self.preface_left.load(Relaxed) {
            0 => {
                if self.head_at.load(Relaxed) == 0 && !self.frames.load(Relaxed) {
                    self.head_at.store(now(), Relaxed);
                }
            }
            left => {
                let left = left.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                self.preface_left.store(left, Relaxed);
                if left == 0 {
                    self.busy.store(1, Relaxed);
                    self.head_at.store(0, Relaxed);
                }
            }
        }
    }

    fn overdue(&self, now: u64, d: &Deadlines) -> bool {
        let stalled = |since: &AtomicU64, limit: Duration| match since.load(Relaxed) {
            0 => false,
            since => now.saturating_sub(since) >= ms(limit),
        };
        if stalled(&self.write_wait, d.send) {
            return true;
        }
        if self.busy.load(Relaxed) != 0 {
            // Served, unless the request's own body has stopped coming.
            return stalled(&self.body_wait, d.head);
        }
        match self.head_at.load(Relaxed) {
            0 => now.saturating_sub(self.idle_at.load(Relaxed)) >= ms(d.idle),
            head => now.saturating_sub(head) >= ms(d.head),
        }
    }

    fn expire(&self) {
        self.expired.store(true, Relaxed);
        self.waker.wake();
    }
}

/// A worker's connections, for its sweep.
#[derive(Debug, Default)]
pub struct Connections {
    list: Vec<Weak<Watch>>,
}

impl Connections {
    /// Watches a new connection.
    pub fn add(&mut self) -> Arc<Watch> {
        if self.list.is_empty() {
            // The clock may have stood still while the worker had nothing to sweep.
            tick();
        }
        let watch = Arc::new(Watch::new());
        self.list.push(Arc::downgrade(&watch));
        watch
    }

    /// Watches a new HTTP/2 connection of the gRPC door: it must send the connection preface
    /// within the head deadline; after that only the send deadline applies.
    pub fn add_h2(&mut self) -> Arc<Watch> {
        const PREFACE_LEN: u32 = H2_PREFACE.len() as u32;
        let watch = self.add();
        watch.preface_left.store(PREFACE_LEN, Relaxed);
        watch
    }

    /// Advances the clock, expires the overdue connections and forgets the closed ones.
    pub fn sweep(&mut self, d: &Deadlines) {
        let now = tick();
        self.list.retain(|w| match w.upgrade() {
            Some(c) => {
                if c.overdue(now, d) {
                    c.expire();
                }
                true
            }
            None => false,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A connection's socket, reporting its reads to its [`Watch`]; once expired it reads
/// end-of-file and refuses writes.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    watch: Arc<Watch>,
    /// Nothing has been read yet.
    fresh: bool,
}

impl<T> Watched<T> {
    pub fn new(io: T, watch: Arc<Watch>) -> Self {
        Watched {
            io,
            watch,
            fresh: true,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.expired.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        match polled {
            Poll::Ready(Ok(())) if read > 0 => {
                if std::mem::take(&mut this.fresh) {
                    this.watch
                        .first_read(buf.filled().get(before..).unwrap_or_default());
                }
                this.watch.read_some(read);
            }
            Poll::Pending => this.watch.waker.register(cx.waker()),
            _ => {}
        }
        polled
    }
}

/// The gRPC door's connection info (the peer's address) is the socket's.
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Watched<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client kept the connection waiting",
    )
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// A write, refused once the connection has expired. While it is pending (the client is
    /// not reading) the watch notes since when, and the sweep can wake the connection: one
    /// stuck writing is not reading.
    fn write_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if self.watch.expired.load(Relaxed) {
            return Poll::Ready(Err(timed_out()));
        }
        let polled = write(Pin::new(&mut self.io), cx);
        let waiting = &self.watch.write_wait;
        if polled.is_pending() {
            self.watch.waker.register(cx.waker());
            if waiting.load(Relaxed) == 0 {
                waiting.store(now(), Relaxed);
            }
        } else if waiting.load(Relaxed) != 0 {
            waiting.store(0, Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request in flight on a watched connection, until dropped.
#[derive(Debug)]
struct Busy(Arc<Watch>);

impl Busy {
    fn new(watch: &Arc<Watch>) -> Self {
        watch.busy.fetch_add(1, Relaxed);
        watch.head_at.store(0, Relaxed);
        Busy(Arc::clone(watch))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_at.store(now(), Relaxed);
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// A connection's service: takes hyper's request into axum's with its body watched
/// ([`Incoming`]), and marks each request busy on the connection's [`Watch`] until its answer
/// is ready, or, for an answer whose length is not known (a stream), until its body ends.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, watch: Arc<Watch>) -> Self {
        Tracked { inner, watch }
    }
}

impl<S> hyper::service::Service<Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let busy = Busy::new(&self.watch);
        let req = req.map(|body| Body::new(Incoming::new(body, Arc::clone(&self.watch))));
        TrackedFuture {
            busy: Some(busy),
            answer: self.inner.call(req),
        }
    }
}

/// A request's body, telling its [`Watch`] while it is waited for.
#[derive(Debug)]
pub struct Incoming<B> {
    body: B,
    watch: Arc<Watch>,
}

impl<B> Incoming<B> {
    pub fn new(body: B, watch: Arc<Watch>) -> Self {
        Incoming { body, watch }
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for Incoming<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let waiting = &this.watch.body_wait;
        if polled.is_pending() {
            if waiting.load(Relaxed) == 0 {
                waiting.store(now(), Relaxed);
            }
        } else if waiting.load(Relaxed) != 0 {
            waiting.store(0, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Incoming<B> {
    fn drop(&mut self) {
        // A handler that stops reading (a body over the limit) no longer waits for it.
        self.watch.body_wait.store(0, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// [`Tracked`]'s answer.
    #[derive(Debug)]
    pub struct TrackedFuture<F> {
        #[pin]
        answer: F,
        busy: Option<Busy>,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.answer.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(answer.map(|resp| match busy {
            Some(busy) if resp.body().size_hint().exact().is_none() => {
                resp.map(|body| Body::new(Held { body, _busy: busy }))
            }
            _ => resp,
        }))
    }
}

/// A streamed answer's body, holding its request busy until it ends or is dropped.
struct Held {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadlines of most tests below: a head within 100 ms, 300 ms of idleness, a write
    /// may wait 200 ms.
    fn short() -> Deadlines {
        Deadlines {
            head: Duration::from_millis(100),
            idle: Duration::from_millis(300),
            send: Duration::from_millis(200),
        }
    }

    fn at(busy: u32, head_at: u64, idle_at: u64) -> Watch {
        let w = Watch::new();
        w.busy.store(busy, Relaxed);
        w.head_at.store(head_at, Relaxed);
        w.idle_at.store(idle_at, Relaxed);
        w
    }

    #[test]
    fn a_connection_is_overdue_only_with_nothing_in_flight() {
        let d = short();
        // A head begun at 1,000 ms: due at 1,100.
        assert!(!at(0, 1_000, 900).overdue(1_099, &d));
        assert!(at(0, 1_000, 900).overdue(1_100, &d));
        // No head being read: the idle deadline, from the last answer.
        assert!(!at(0, 0, 1_000).overdue(1_299, &d));
        assert!(at(0, 0, 1_000).overdue(1_300, &d));
        // A request in flight (a slow provider, a long stream) is never cut.
        assert!(!at(1, 0, 1_000).overdue(100_000, &d));
        assert!(!at(2, 1_000, 0).overdue(100_000, &d));
    }

    #[test]
    fn a_request_whose_body_stops_coming_is_overdue() {
        let d = short();
        let w = at(1, 0, 0);
        w.body_wait.store(1_000, Relaxed);
        assert!(!w.overdue(1_099, &d));
        assert!(w.overdue(1_100, &d));
        w.body_wait.store(0, Relaxed);
        assert!(!w.overdue(100_000, &d));
    }

    #[test]
    fn a_client_that_stops_reading_is_overdue_even_with_a_request_in_flight() {
        let d = short();
        // A streamed answer in flight, its write waiting for the client since 1,000 ms.
        let w = at(1, 0, 0);
        w.write_wait.store(1_000, Relaxed);
        assert!(!w.overdue(1_199, &d));
        assert!(w.overdue(1_200, &d));
        // The client read again: the stream goes on.
        w.write_wait.store(0, Relaxed);
        assert!(!w.overdue(100_000, &d));
    }

    #[test]
    fn requests_end_the_head_and_start_the_idle_time() {
        tick();
        let w = Arc::new(Watch::new());
        assert_ne!(w.head_at.load(Relaxed), 0, "a new connection owes a head");
        let busy = Busy::new(&w);
        assert_eq!(w.head_at.load(Relaxed), 0);
        // Bytes read while a request is in flight (a pipelined head) start no head.
        w.read_some(10);
        assert_eq!(w.head_at.load(Relaxed), 0);
        drop(busy);
        assert_eq!(w.busy.load(Relaxed), 0);
        w.read_some(10);
        assert_ne!(w.head_at.load(Relaxed), 0);
    }

    #[test]
    fn an_http2_connection_on_the_http_door_is_idle_between_requests_whatever_it_sends() {
        let d = short();
        tick();
        let mut conns = Connections::default();
        // HTTP/1: bytes with no request in flight begin a head, due within `head`.
        let h1 = conns.add();
        h1.first_read(b"POST /ai-api/v1/chat/completions HTTP/1.1\r\n");
        h1.read_some(40);
        let begun = h1.head_at.load(Relaxed);
        assert_ne!(begun, 0);
        assert!(h1.overdue(begun + 100, &d));
        // HTTP/2 (h2c): the preface ends the head owed since opening; frames between requests
        // (a ping, a window update) start none, and only the idle deadline applies.
        let h2 = conns.add();
        h2.first_read(H2_PREFACE);
        h2.read_some(24);
        assert_eq!(h2.head_at.load(Relaxed), 0);
        let idle = h2.idle_at.load(Relaxed);
        h2.read_some(17);
        assert_eq!(h2.head_at.load(Relaxed), 0);
        assert!(!h2.overdue(idle + 299, &d));
        assert!(h2.overdue(idle + 300, &d));
        // A request and its end restart the idle time, as on HTTP/1.
        drop(Busy::new(&h2));
        h2.read_some(17);
        assert_eq!(h2.head_at.load(Relaxed), 0);
        assert!(!h2.overdue(h2.idle_at.load(Relaxed) + 299, &d));
        // The gRPC door's connections keep owing their whole preface.
        let grpc = conns.add_h2();
        grpc.first_read(b"PRI * HTTP/2.0\r\n");
        grpc.read_some(16);
        assert_ne!(grpc.head_at.load(Relaxed), 0);
        assert!(grpc.overdue(grpc.head_at.load(Relaxed) + 100, &d));
    }

    #[test]
    fn a_grpc_connection_owes_its_preface_and_then_only_reading() {
        let d = short();
        tick();
        let mut conns = Connections::default();
        let w = conns.add_h2();
        let opened = w.head_at.load(Relaxed);
        assert!(
            w.overdue(opened + 100, &d),
            "no preface within the head deadline"
        );
        // Part of the preface: still owed, from the connection's opening.
        w.read_some(20);
        assert_eq!(w.head_at.load(Relaxed), opened);
        assert!(w.overdue(opened + 100, &d));
        // The rest of it (and the first frames): served from then on, idle or not.
        w.read_some(60);
        assert!(!w.overdue(opened + 100_000, &d));
        w.read_some(10);
        assert_eq!(w.head_at.load(Relaxed), 0);
        // But not for a client that stops reading.
        w.write_wait.store(opened + 1_000, Relaxed);
        assert!(w.overdue(opened + 1_200, &d));
    }

    #[test]
    fn sweeping_expires_overdue_connections_and_forgets_closed_ones() {
        let d = Deadlines {
            head: Duration::ZERO,
            idle: Duration::ZERO,
            send: Duration::ZERO,
        };
        let mut conns = Connections::default();
        let open = conns.add();
        let closed = conns.add();
        drop(closed);
        conns.sweep(&d);
        assert!(open.expired.load(Relaxed));
        assert_eq!(conns.list.len(), 1);
    }

    #[test]
    fn sweeps_come_often_enough_and_not_too_often() {
        assert_eq!(Deadlines::default().sweep_every(), Duration::from_secs(1));
        let d = Deadlines {
            head: Duration::from_millis(300),
            idle: Duration::from_secs(2),
            send: Duration::from_secs(1),
        };
        assert_eq!(d.sweep_every(), Duration::from_millis(30));
        let d = Deadlines {
            send: Duration::from_millis(200),
            ..d
        };
        assert_eq!(d.sweep_every(), Duration::from_millis(20));
        let d = Deadlines {
            head: Duration::ZERO,
            idle: Duration::ZERO,
            send: Duration::ZERO,
        };
        assert_eq!(d.sweep_every(), Duration::from_millis(10));
    }
}

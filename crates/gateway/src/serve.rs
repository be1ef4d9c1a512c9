//! The HTTP/1 server under the router: hyper with a timer, so a client
//! cannot hold a connection for free.
//!
//! `axum::serve` runs hyper without a timer and offers no idle limit: a
//! client that sent half its headers, or nothing, kept its connection
//! forever. Here every connection is watched:
//!
//! - **Headers**: a request head must arrive whole within
//!   `header_read_timeout` of its first byte (and a new connection must
//!   send one within that time of being accepted); else the connection is
//!   closed.
//! - **Idle**: a keep-alive connection with no request for `idle_timeout`
//!   is shut down gracefully.
//! - **Count**: at most `max_connections` are open; one more is closed at
//!   once (and counted), before hyper reads a byte.
//!
//! While a request is in flight (from its head to the moment hyper drops
//! the response body, so a stream counts until it ends) the connection is
//! neither idle nor late: the body read timeout, the whole-request timeout
//! and the stream's per-event send timeout bound it instead (`app.rs`).
//!
//! Shutdown has two signals: `stop` shuts every connection down gracefully
//! (in-flight requests finish, keep-alive ends), `kill` drops them (the
//! drain deadline has passed).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;

/// The connection limits (`[server]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    /// A write that makes no progress for this long closes the connection
    /// (`stream_send_timeout_ms`): a client that stopped reading.
    pub(crate) write_stall: Duration,
}

/// What the server counts, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub(crate) refused: AtomicU64,
    /// Connections closed because a request head came too slowly.
    pub(crate) header_timeouts: AtomicU64,
    /// Keep-alive connections closed for being idle.
    pub(crate) idle_closed: AtomicU64,
    /// Connections closed because the client stopped reading an answer.
    pub(crate) write_stalls: AtomicU64,
}

/// "No request head has started."
const NONE: u64 = u64::MAX;

/// One connection's state, shared by its IO, its requests and its watcher.
#[derive(Debug)]
struct Watch {
    epoch: Instant,
    /// Requests whose response body hyper has not dropped yet.
    in_flight: AtomicU32,
    /// Since when (ms from `epoch`) no request is in flight.
    idle_since: AtomicU64,
    /// When (ms from `epoch`) the first byte of the next request head
    /// came; `NONE` while none has.
    head_since: AtomicU64,
    /// Since when (ms from `epoch`) a write has been waiting for the client
    /// to read; `NONE` while writes go through.
    blocked_since: AtomicU64,
    /// Wakes the watcher when a write first blocks, so the stall limit is
    /// timed from then, not from the watcher's next look.
    blocked: tokio::sync::Notify,
}

/// What the watcher does with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing; look again at this time (ms from the epoch).
    Wait(u64),
    /// A request head is late: close the connection.
    HeadLate,
    /// Idle too long: shut it down gracefully.
    Idle,
    /// The client has not taken a byte for the write-stall limit: close it
    /// (the answer or stream it holds, and its slots, are let go).
    WriteStalled,
}

impl Watch {
    fn new() -> Watch {
        // A new connection owes its first request head from the start.
        Watch {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(NONE),
            blocked: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes came in.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Relaxed) == NONE {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A write went through (`true`) or has to wait for the client.
    fn wrote(&self, progressed: bool) {
        if progressed {
            self.blocked_since.store(NONE, Ordering::Relaxed);
        } else if self.blocked_since.load(Ordering::Relaxed) == NONE {
            self.blocked_since.store(self.now_ms(), Ordering::Relaxed);
            self.blocked.notify_one();
        }
    }

    /// A request head was read whole and is being served.
    fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        Active(Arc::clone(self))
    }

    /// The verdict at `now` (ms from the epoch).
    fn verdict(&self, now: u64, limits: &Limits) -> Verdict {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (header, idle, stall) = (ms(limits.header_read), ms(limits.idle), ms(limits.write_stall));
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        let stalled_at = if blocked == NONE { u64::MAX } else { blocked.saturating_add(stall) };
        if now >= stalled_at {
            return Verdict::WriteStalled;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // A blocked write wakes the watcher (`blocked`).
            return Verdict::Wait(now.saturating_add(header.min(idle)).min(stalled_at));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NONE {
            let due = head.saturating_add(header);
            return if now >= due { Verdict::HeadLate } else { Verdict::Wait(due.min(stalled_at)) };
        }
        let due = self.idle_since.load(Ordering::Relaxed).saturating_add(idle);
        if now >= due { Verdict::Idle } else { Verdict::Wait(due.min(stalled_at)) }
    }
}

/// A request in flight; its drop (with the response body) ends it.
#[derive(Debug)]
struct Active(Arc<Watch>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.head_since.store(NONE, Ordering::Relaxed);
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that ends its request when hyper drops it.
struct Held {
    body: Body,
    _active: Active,
}

impl hyper::body::Body for Held {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the watch when bytes come in.
struct Watched {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch.wrote(polled.is_ready());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch.wrote(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What every listener's accept loop shares.
#[derive(Clone)]
pub(crate) struct Shared {
    /// `max_connections` slots, both ports together.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) counters: Arc<Counters>,
    /// The connections' tasks.
    pub(crate) connections: TaskTracker,
    /// True: stop accepting, shut connections down gracefully.
    pub(crate) stop: watch::Receiver<bool>,
    /// Drop the connections still open.
    pub(crate) kill: CancellationToken,
}

/// Accepts and serves connections until `stop`; then returns, leaving the
/// open connections to finish (tracked by `connections`) or to be dropped
/// at `kill`.
pub(crate) async fn accept(listener: TcpListener, router: Router, limits: Limits, shared: Shared) {
    let Shared { slots, counters, connections, mut stop, kill } = shared;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: server.max_connections are open");
            drop(stream);
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
        let connection = Connection {
            router: router.clone(),
            limits,
            counters: Arc::clone(&counters),
            stop: stop.clone(),
            kill: kill.clone(),
        };
        connections.spawn(async move {
            let _slot = slot;
            connection.serve(stream, peer).await;
        });
    }
}

/// What one connection's task needs.
struct Connection {
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    kill: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let watch = Arc::new(Watch::new());
        let io = TokioIo::new(Watched { stream, watch: Arc::clone(&watch) });
        let requests = Arc::clone(&watch);
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let active = requests.begin();
            // The peer's address reaches the auth-failure lockout.
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move {
                let response = match router.call(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Held { body, _active: active }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The watcher below times request heads (hyper's own header timer
        // would also close idle keep-alive connections at the header limit).
        builder.timer(TokioTimer::new()).header_read_timeout(None);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        // The watcher is a task of its own: the connection's task polls
        // hyper and one uncontended channel per wake, not the listener-wide
        // stop and kill signals (each poll of those takes a shared lock).
        let (orders_tx, mut orders) = tokio::sync::mpsc::channel::<Order>(2);
        let watcher = Watcher {
            watch,
            limits: self.limits,
            counters: Arc::clone(&self.counters),
            stop: self.stop.clone(),
            kill: self.kill.clone(),
            peer,
        };
        let _watcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watcher.run(orders_tx)));
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(%peer, %err, "connection ended with an error");
                    }
                    break;
                }
                order = orders.recv() => match order {
                    Some(Order::Shutdown) => conn.as_mut().graceful_shutdown(),
                    Some(Order::Close) | None => break,
                },
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the watcher tells its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Finish the request in flight, then close (idle, or stopping).
    Shutdown,
    /// Close now (a late head, a stalled write, the drain deadline).
    Close,
}

/// A connection's watcher: judges its [`Watch`] and follows the server's
/// stop and kill signals, and orders the connection accordingly.
struct Watcher {
    watch: Arc<Watch>,
    limits: Limits,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    kill: CancellationToken,
    peer: SocketAddr,
}

impl Watcher {
    /// Runs until it orders a close or the connection is gone. At most one
    /// `Shutdown` and one `Close` are sent: the channel holds both.
    async fn run(mut self, orders: tokio::sync::mpsc::Sender<Order>) {
        let peer = self.peer;
        let mut stopping = *self.stop.borrow();
        if stopping {
            let _ = orders.try_send(Order::Shutdown);
        }
        loop {
            let next = match self.watch.verdict(self.watch.now_ms(), &self.limits) {
                Verdict::Wait(at) => self.watch.epoch + Duration::from_millis(at),
                Verdict::WriteStalled => {
                    self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "connection closed: the client stopped reading (server.stream_send_timeout_ms)");
                    let _ = orders.try_send(Order::Close);
                    return;
                }
                Verdict::HeadLate => {
                    self.counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "connection closed: a request head came too slowly (server.header_read_timeout_ms)");
                    let _ = orders.try_send(Order::Close);
                    return;
                }
                Verdict::Idle if !stopping => {
                    self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    // No request in flight: hyper closes it at once.
                    let _ = orders.try_send(Order::Shutdown);
                    stopping = true;
                    Instant::now() + self.limits.header_read
                }
                // Shut down already: hyper ends it; `kill` bounds the wait.
                Verdict::Idle => Instant::now() + self.limits.idle,
            };
            tokio::select! {
                changed = self.stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_err() || *self.stop.borrow() {
                        let _ = orders.try_send(Order::Shutdown);
                    }
                }
                () = self.kill.cancelled() => {
                    let _ = orders.try_send(Order::Close);
                    return;
                }
                () = tokio::time::sleep_until(next) => {}
                () = self.watch.blocked.notified() => {}
                () = orders.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_millis(100),
        idle: Duration::from_secs(1),
        write_stall: Duration::from_secs(5),
    };

    fn watch() -> Arc<Watch> {
        Arc::new(Watch::new())
    }

    #[test]
    fn a_new_connection_owes_a_head_within_the_header_limit() {
        let w = watch();
        assert_eq!(w.verdict(99, &LIMITS), Verdict::Wait(100));
        assert_eq!(w.verdict(100, &LIMITS), Verdict::HeadLate);
    }

    #[test]
    fn a_request_in_flight_is_never_late_nor_idle() {
        let w = watch();
        let active = w.begin();
        assert_eq!(w.verdict(50_000, &LIMITS), Verdict::Wait(50_100));
        w.read(); // body bytes of the request in flight start no head
        assert_eq!(w.head_since.load(Ordering::Relaxed), NONE);
        drop(active);
        assert_eq!(w.head_since.load(Ordering::Relaxed), NONE);
        assert_eq!(w.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn after_a_request_an_idle_connection_gets_the_idle_limit_and_a_started_head_the_header_limit() {
        let w = watch();
        drop(w.begin());
        let idle_since = w.idle_since.load(Ordering::Relaxed);
        assert_eq!(w.verdict(idle_since + 999, &LIMITS), Verdict::Wait(idle_since + 1_000));
        assert_eq!(w.verdict(idle_since + 1_000, &LIMITS), Verdict::Idle);
        // One byte of a new head: now the header limit runs, from that byte.
        w.head_since.store(idle_since + 500, Ordering::Relaxed);
        assert_eq!(w.verdict(idle_since + 599, &LIMITS), Verdict::Wait(idle_since + 600));
        assert_eq!(w.verdict(idle_since + 600, &LIMITS), Verdict::HeadLate);
    }

    #[test]
    fn the_first_byte_of_a_head_starts_its_clock_once() {
        let w = watch();
        drop(w.begin());
        w.read();
        let first = w.head_since.load(Ordering::Relaxed);
        assert_ne!(first, NONE);
        w.head_since.store(first, Ordering::Relaxed);
        w.read();
        assert_eq!(w.head_since.load(Ordering::Relaxed), first, "later bytes do not restart it");
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_millis(100),
        idle: Duration::from_secs(1),
        write_stall: Duration::from_secs(5),
    };

    #[test]
    fn the_clock_runs_from_the_connection_and_stamps_idleness_and_stalls() {
        let w = Arc::new(Watch::new());
        std::thread::sleep(Duration::from_millis(20));
        let now = w.now_ms();
        assert!(now >= 20, "{now}");
        drop(w.begin());
        assert!(w.idle_since.load(Ordering::Relaxed) >= now, "idle from the end of the request");
        w.wrote(false);
        assert!(w.blocked_since.load(Ordering::Relaxed) >= now, "blocked from the write");
    }

    #[test]
    fn a_write_the_client_does_not_take_closes_the_connection_in_flight_or_not() {
        let w = Arc::new(Watch::new());
        let active = w.begin();
        w.wrote(false);
        let since = w.blocked_since.load(Ordering::Relaxed);
        assert_eq!(w.verdict(since + 4_999, &LIMITS), Verdict::Wait(since + 5_000));
        assert_eq!(w.verdict(since + 5_000, &LIMITS), Verdict::WriteStalled);
        // Progress resets it; a second blocked write starts a new clock.
        w.wrote(true);
        assert_eq!(w.verdict(since + 5_000, &LIMITS), Verdict::Wait(since + 5_100));
        drop(active);
        w.wrote(false);
        let again = w.blocked_since.load(Ordering::Relaxed);
        w.wrote(false);
        assert_eq!(w.blocked_since.load(Ordering::Relaxed), again, "a still-blocked write keeps its start");
        assert_eq!(w.verdict(again + 5_000, &LIMITS), Verdict::WriteStalled, "after the last request too");
    }
}

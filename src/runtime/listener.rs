//! How both listeners take connections, and when they let them go.
//!
//! Each listener has its own cap on open connections (`listen.*_max_connections`):
//! a connection over it is accepted and closed at once, counted in
//! `stsgate_connections_refused_total{reason="limit"}` and logged (at most
//! every 10s). Separate caps, sized to fit the process's file-descriptor
//! limit together ([`fit_to_fd_limit`]), mean a flood of one listener can
//! never take the descriptors the other needs: Envoy's Checks keep flowing
//! while the HTTP listener is full.
//!
//! The gRPC listener is served by tonic from [`GrpcIncoming`]: a connection
//! must finish its TLS handshake (with `listen.grpc_tls`) and send the HTTP/2
//! preface within `handshake_timeout`; after that HTTP/2 keepalive pings find
//! dead peers. Envoy's pooled, idle connection is never closed for being
//! idle. TLS handshakes run in tasks of their own, so a slow one holds up no
//! other connection; each connection's `ConnInfo` (its peer, and the
//! identity its client certificate proved) reaches every Check on it.
//!
//! The HTTP listener is served by [`serve_http`], which watches every
//! connection: the TLS handshake (with `listen.http_tls`, in the
//! connection's own task) and the first request head must be complete within
//! `handshake_timeout`, a later one within `header_read_timeout` of its first
//! byte (HTTP/1), a request must be answered within `request_timeout` (a body
//! that stops arriving included), and a connection with nothing in flight is
//! closed after `idle_timeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::Connected;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::api::callers::ConnInfo;
use crate::api::client_auth::HttpPeer;
use crate::config::Listen;
use crate::metrics::ConnectionMetrics;
use crate::runtime::tls::{ServerTls, certified_identity, peer_leaf};

/// Which listener; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Grpc,
    Http,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Grpc => "grpc",
            Kind::Http => "http",
        }
    }
}

/// Why a connection was closed as soon as it was accepted; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds its `max_connections`.
    Limit,
    /// accept(2) failed, e.g. out of file descriptors.
    AcceptError,
    /// The TLS handshake failed: no client certificate, one from another
    /// CA, no common protocol.
    TlsHandshake,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::AcceptError => "accept_error",
            Refused::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why stsgate closed a connection (or, `RequestTimeout`, answered a
/// request 408); a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // each names the timeout that closed it, as its label does
pub(crate) enum Closed {
    HandshakeTimeout,
    HeaderTimeout,
    IdleTimeout,
    KeepaliveTimeout,
    RequestTimeout,
}

impl Closed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::KeepaliveTimeout => "keepalive_timeout",
            Closed::RequestTimeout => "request_timeout",
        }
    }
}

/// The limits of one listener (`listen.*`).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

impl Limits {
    pub(crate) fn new(listen: &Listen, kind: Kind) -> Limits {
        Limits {
            max_connections: match kind {
                Kind::Grpc => listen.grpc_max_connections,
                Kind::Http => listen.http_max_connections,
            },
            handshake_timeout: listen.handshake_timeout.0,
            header_read_timeout: listen.header_read_timeout.0,
            request_timeout: listen.request_timeout.0,
            idle_timeout: listen.idle_timeout.0,
            keepalive_interval: listen.http2_keepalive_interval.0,
            keepalive_timeout: listen.http2_keepalive_timeout.0,
        }
    }
}

/// Streams (reset or refused by the server) an HTTP/2 connection may cause
/// over its life before it is closed with ENHANCE_YOUR_CALM, against
/// "MadeYouReset" (CVE-2025-8671). h2's default; tonic turns it off unless set.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The HTTP/1 read buffer of a connection: the largest request head.
const HEAD_BUFFER: usize = 64 * 1024;

/// File descriptors kept for everything but client connections: the
/// listeners, the runtime, IdP fetches, key and config files on reload.
pub(crate) const FD_RESERVE: u64 = 128;

/// The caps `(grpc, http)` lowered in proportion so that, with
/// [`FD_RESERVE`], they fit under `nofile` descriptors; `None` if they fit.
pub(crate) fn fit_to_fd_limit(grpc: usize, http: usize, nofile: u64) -> Option<(usize, usize)> {
    let budget = nofile.saturating_sub(FD_RESERVE);
    let want = grpc as u64 + http as u64;
    if want <= budget {
        return None;
    }
    let scale = |n: usize| ((n as u64 * budget / want) as usize).max(1);
    Some((scale(grpc), scale(http)))
}

/// The soft RLIMIT_NOFILE of this process, where the OS tells it without
/// `unsafe` (Linux: /proc/self/limits); `None` when unknown or unlimited.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// How often a listener logs that a limit bites, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The pause after a failed accept(2): out of descriptors, the failing
/// connection stays queued and would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Says yes at most once per `WARN_EVERY`, with how many it said no to since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Accepts connections on one listener while it holds fewer than its cap.
pub(crate) struct Acceptor {
    listener: TcpListener,
    kind: Kind,
    max: usize,
    slots: Arc<Semaphore>,
    metrics: Arc<ConnectionMetrics>,
    refusals: Throttle,
    errors: Throttle,
    backoff: Option<Pin<Box<Sleep>>>,
}

/// A connection within the cap; its slot is free again when it drops.
pub(crate) struct Admitted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    slot: Slot,
}

struct Slot {
    _permit: OwnedSemaphorePermit,
    kind: Kind,
    metrics: Arc<ConnectionMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.gone(self.kind.as_str());
    }
}

impl Acceptor {
    pub(crate) fn new(
        listener: TcpListener,
        kind: Kind,
        max_connections: usize,
        metrics: Arc<ConnectionMetrics>,
    ) -> Acceptor {
        Acceptor {
            listener,
            kind,
            max: max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            metrics,
            refusals: Throttle::default(),
            errors: Throttle::default(),
            backoff: None,
        }
    }

    /// The next connection within the cap; those over it are closed here.
    fn poll_admit(&mut self, cx: &mut Context<'_>) -> Poll<Admitted> {
        let kind = self.kind.as_str();
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        self.metrics.opened(kind);
                        let slot = Slot { _permit: permit, kind: self.kind, metrics: self.metrics.clone() };
                        return Poll::Ready(Admitted { stream, peer, slot });
                    }
                    Err(_) => {
                        // Closed at once: the client learns now, and the
                        // kernel's accept queue does not fill up behind it.
                        drop(stream);
                        self.metrics.refused(kind, Refused::Limit.as_str());
                        if let Some(more) = self.refusals.tick() {
                            warn!(
                                listener = kind,
                                max_connections = self.max,
                                %peer,
                                refused_since_last_report = more,
                                "connection limit reached: closing new connections (listen.{kind}_max_connections)"
                            );
                        }
                    }
                },
                Err(e) => {
                    self.metrics.refused(kind, Refused::AcceptError.as_str());
                    if let Some(more) = self.errors.tick() {
                        warn!(listener = kind, failed_since_last_report = more, "cannot accept a connection: {e}");
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }

    pub(crate) async fn admit(&mut self) -> Admitted {
        std::future::poll_fn(|cx| self.poll_admit(cx)).await
    }
}

// ---------------------------------------------------------------------------
// gRPC: served by tonic from this stream of connections
// ---------------------------------------------------------------------------

/// The gRPC listener's connections, for `serve_with_incoming_shutdown`.
pub(crate) struct GrpcIncoming {
    acceptor: Acceptor,
    handshake_timeout: Duration,
    /// With `listen.grpc_tls`: the configuration new connections get.
    tls: Option<Arc<ServerTls>>,
    /// TLS handshakes under way, each in a task of its own (dropped, as at
    /// shutdown, they end).
    handshakes: JoinSet<Option<GrpcConn>>,
}

impl GrpcIncoming {
    pub(crate) fn new(acceptor: Acceptor, handshake_timeout: Duration, tls: Option<Arc<ServerTls>>) -> GrpcIncoming {
        GrpcIncoming { acceptor, handshake_timeout, tls, handshakes: JoinSet::new() }
    }
}

impl Stream for GrpcIncoming {
    type Item = io::Result<GrpcConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Connections whose TLS handshake is done.
            while let Poll::Ready(Some(done)) = this.handshakes.poll_join_next(cx) {
                if let Ok(Some(conn)) = done {
                    return Poll::Ready(Some(Ok(conn)));
                }
            }
            let admitted = ready!(this.acceptor.poll_admit(cx));
            // The TLS handshake and the HTTP/2 preface share one deadline.
            let deadline = Instant::now() + this.handshake_timeout;
            let metrics = this.acceptor.metrics.clone();
            match &this.tls {
                None => {
                    let Admitted { stream, peer, slot } = admitted;
                    let info = ConnInfo { remote: peer, certified: None };
                    return Poll::Ready(Some(Ok(GrpcConn::new(
                        ConnStream::Plain(stream),
                        info,
                        slot,
                        deadline,
                        metrics,
                    ))));
                }
                Some(tls) => {
                    this.handshakes.spawn(handshake(admitted, tls.config(), deadline, metrics));
                }
            }
        }
    }
}

/// The server side of a TLS handshake, within the connection's deadline.
async fn handshake(
    admitted: Admitted,
    config: Arc<ServerConfig>,
    deadline: Instant,
    metrics: Arc<ConnectionMetrics>,
) -> Option<GrpcConn> {
    let Admitted { stream, peer, slot } = admitted;
    let grpc = Kind::Grpc.as_str();
    match tokio::time::timeout_at(deadline, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => {
            let certified = certified_identity(tls.get_ref().1);
            if certified.is_none() {
                debug!(%peer, "the client certificate has no single URI SAN: the Check caller is not identified");
            }
            let info = ConnInfo { remote: peer, certified };
            Some(GrpcConn::new(ConnStream::Tls(Box::new(tls)), info, slot, deadline, metrics))
        }
        Ok(Err(e)) => {
            metrics.refused(grpc, Refused::TlsHandshake.as_str());
            debug!(%peer, "gRPC TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            metrics.closed(grpc, Closed::HandshakeTimeout.as_str());
            debug!(%peer, "closing a gRPC connection: no TLS handshake in time");
            None
        }
    }
}

/// The HTTP/2 client preface: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes pass straight to the wrapped `stream`: only reads are watched.
macro_rules! write_through_to_stream {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().stream).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
            }
        }
    };
}

/// A gRPC connection: fails its reads when the first 24 bytes (the HTTP/2
/// preface) do not arrive by the handshake deadline, which closes it.
pub(crate) struct GrpcConn {
    stream: ConnStream,
    info: ConnInfo,
    _slot: Slot,
    preface_left: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    metrics: Arc<ConnectionMetrics>,
}

/// Plaintext, or TLS terminated here (either listener).
enum ConnStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl GrpcConn {
    fn new(
        stream: ConnStream,
        info: ConnInfo,
        slot: Slot,
        deadline: Instant,
        metrics: Arc<ConnectionMetrics>,
    ) -> GrpcConn {
        GrpcConn {
            stream,
            info,
            _slot: slot,
            preface_left: H2_PREFACE.len(),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            timed_out: false,
            metrics,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface within listen.handshake_timeout")
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(GrpcConn::timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.preface_left = this.preface_left.saturating_sub(buf.filled().len() - before);
                    if this.preface_left == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.deadline = None;
                    this.timed_out = true;
                    this.metrics.closed(Kind::Grpc.as_str(), Closed::HandshakeTimeout.as_str());
                    debug!(peer = %this.info.remote, "closing a gRPC connection: no HTTP/2 preface in time");
                    Poll::Ready(Err(GrpcConn::timed_out()))
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

write_through_to_stream!(GrpcConn);

impl AsyncRead for ConnStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ConnStream::Plain(s) => s.is_write_vectored(),
            ConnStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP: our own accept loop, so every connection can be watched
// ---------------------------------------------------------------------------

/// Serves `app` on the HTTP listener until `shutdown` turns true, then lets
/// every connection finish what it is doing (the caller bounds the wait).
/// With `tls` (`listen.http_tls`), every connection does its TLS handshake first.
pub(crate) async fn serve_http(
    mut acceptor: Acceptor,
    limits: Limits,
    app: Router,
    metrics: Arc<ConnectionMetrics>,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<ServerTls>>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timer would also end idle keep-alive connections;
    // `Watch` times request heads and idleness apart. A head may take 64 KiB
    // (hyper's default, 400 KiB, times the cap would be a lot of memory for
    // slow heads to hold); bodies are not bounded by it.
    builder.http1().header_read_timeout(None).max_buf_size(HEAD_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    // Every connection task holds a receiver: `closed()` says all are done.
    let (alive, alive_rx) = watch::channel(());
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            admitted = acceptor.admit() => {
                let conn = HttpConn {
                    tls: tls.clone(),
                    builder: builder.clone(),
                    limits: limits.clone(),
                    app: app.clone(),
                    metrics: metrics.clone(),
                    shutdown: shutdown.clone(),
                    _alive: alive_rx.clone(),
                };
                tokio::spawn(conn.serve(admitted));
            }
        }
    }
    // No new connections from here on.
    drop(acceptor);
    drop(alive_rx);
    alive.closed().await;
}

struct HttpConn {
    tls: Option<Arc<ServerTls>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    app: Router,
    metrics: Arc<ConnectionMetrics>,
    shutdown: watch::Receiver<bool>,
    _alive: watch::Receiver<()>,
}

impl HttpConn {
    async fn serve(mut self, admitted: Admitted) {
        let Admitted { stream, peer, slot } = admitted;
        let http = Kind::Http.as_str();
        let watch = Arc::new(Watch::new());
        let (stream, cert) = match &self.tls {
            None => (ConnStream::Plain(stream), None),
            Some(tls) => {
                // The handshake and the first request head share one deadline.
                let deadline = watch.opened + self.limits.handshake_timeout;
                let accept = tokio::time::timeout_at(deadline, TlsAcceptor::from(tls.config()).accept(stream));
                let handshake = tokio::select! {
                    done = accept => done,
                    // Shutting down: a connection not yet up has nothing to finish.
                    _ = stopped(&mut self.shutdown) => return,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        let cert = peer_leaf(tls.get_ref().1);
                        (ConnStream::Tls(Box::new(tls)), cert)
                    }
                    Ok(Err(e)) => {
                        self.metrics.refused(http, Refused::TlsHandshake.as_str());
                        debug!(%peer, "HTTP TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        self.metrics.closed(http, Closed::HandshakeTimeout.as_str());
                        debug!(%peer, "closing an HTTP connection: no TLS handshake in time");
                        return;
                    }
                }
            }
        };
        let io = TokioIo::new(WatchedIo { stream, watch: watch.clone() });
        let service = Tracked {
            app: self.app.clone(),
            watch: watch.clone(),
            request_timeout: self.limits.request_timeout,
            metrics: self.metrics.clone(),
            peer: HttpPeer { remote: peer, cert },
        };
        let mut conn = pin!(self.builder.serve_connection(io, service));
        let mut draining = false;
        let result = loop {
            let deadline = watch.deadline(&self.limits);
            tokio::select! {
                result = conn.as_mut() => break result,
                _ = watch.changed.notified() => {}
                _ = stopped(&mut self.shutdown), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = sleep_until(deadline.map(|(at, _)| at)) => {
                    // Nothing in flight: nothing is lost by closing now.
                    let Some((at, why)) = watch.deadline(&self.limits) else { continue };
                    if at > Instant::now() {
                        continue;
                    }
                    self.metrics.closed(http, why.as_str());
                    debug!(%peer, reason = why.as_str(), "closing an HTTP connection");
                    if watch.is_h2() && !draining {
                        // GOAWAY first, so that a request crossing it is retried elsewhere.
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(self.limits.request_timeout, conn.as_mut()).await;
                    }
                    drop(slot);
                    return;
                }
            }
        };
        if let Err(e) = result {
            let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
            if timed_out && watch.is_h2() {
                self.metrics.closed(http, Closed::KeepaliveTimeout.as_str());
            }
            debug!(%peer, "HTTP connection ended: {e}");
        }
        drop(slot);
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one HTTP connection is doing, as its reads and requests tell.
struct Watch {
    opened: Instant,
    state: Mutex<Activity>,
    /// Told when a deadline may have moved earlier.
    changed: Notify,
}

struct Activity {
    in_flight: usize,
    requests: u64,
    /// When the last request was answered (or the connection opened).
    last_end: Instant,
    /// When the first byte of a request head not yet complete arrived (HTTP/1).
    head_since: Option<Instant>,
    /// The connection's first bytes, to tell HTTP/2 (prior knowledge) apart.
    start: [u8; 24],
    start_len: usize,
    h2: bool,
}

impl Watch {
    fn new() -> Watch {
        let now = Instant::now();
        Watch {
            opened: now,
            state: Mutex::new(Activity {
                in_flight: 0,
                requests: 0,
                last_end: now,
                head_since: None,
                start: [0; 24],
                start_len: 0,
                h2: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_h2(&self) -> bool {
        self.lock().h2
    }

    /// When, and why, the connection is to be closed if nothing happens
    /// first; none while a request is in flight (`request_timeout` bounds it).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Closed)> {
        let a = self.lock();
        if a.in_flight > 0 {
            None
        } else if a.requests == 0 {
            Some((self.opened + limits.handshake_timeout, Closed::HandshakeTimeout))
        } else if let (false, Some(since)) = (a.h2, a.head_since) {
            Some((since + limits.header_read_timeout, Closed::HeaderTimeout))
        } else {
            Some((a.last_end + limits.idle_timeout, Closed::IdleTimeout))
        }
    }

    fn read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut a = self.lock();
        if a.start_len < a.start.len() {
            let n = bytes.len().min(a.start.len() - a.start_len);
            let at = a.start_len;
            a.start[at..at + n].copy_from_slice(&bytes[..n]);
            a.start_len += n;
            a.h2 = a.start_len == H2_PREFACE.len() && &a.start == H2_PREFACE;
        }
        if a.in_flight == 0 && a.requests > 0 && a.head_since.is_none() && !a.h2 {
            a.head_since = Some(Instant::now());
            drop(a);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut a = self.lock();
        a.in_flight += 1;
        a.requests += 1;
        a.head_since = None;
        InFlight(self.clone())
    }
}

/// A request in flight on a watched connection, until answered or dropped.
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight -= 1;
        if a.in_flight == 0 {
            a.last_end = Instant::now();
            a.head_since = None;
            drop(a);
            self.0.changed.notify_one();
        }
    }
}

/// A connection's stream (after TLS) that tells its `Watch` what it reads.
struct WatchedIo {
    stream: ConnStream,
    watch: Arc<Watch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        this.watch.read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

write_through_to_stream!(WatchedIo);

/// The router, with each request counted in flight and cut off at `request_timeout`.
#[derive(Clone)]
struct Tracked {
    app: Router,
    watch: Arc<Watch>,
    request_timeout: Duration,
    metrics: Arc<ConnectionMetrics>,
    /// The connection's peer and client certificate, for every request on it.
    peer: HttpPeer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = self.watch.request_started();
        req.extensions_mut().insert(self.peer.clone());
        let http1 = req.version() < Version::HTTP_2;
        let answer = self.app.clone().oneshot(req);
        let (timeout, metrics) = (self.request_timeout, self.metrics.clone());
        Box::pin(async move {
            let _in_flight = in_flight;
            match tokio::time::timeout(timeout, answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    metrics.closed(Kind::Http.as_str(), Closed::RequestTimeout.as_str());
                    let mut resp = (StatusCode::REQUEST_TIMEOUT, "request timeout\n").into_response();
                    if http1 {
                        // The rest of its body may still be on the way.
                        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    }
                    Ok(resp)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_shrink_in_proportion_to_fit_the_fd_limit() {
        // Defaults under a roomy limit: unchanged.
        assert_eq!(fit_to_fd_limit(4096, 1024, 1 << 20), None);
        assert_eq!(fit_to_fd_limit(4096, 1024, 4096 + 1024 + FD_RESERVE), None);
        // The finding's 2048: both shrink, the ratio stays, the reserve is kept.
        let (grpc, http) = fit_to_fd_limit(4096, 1024, 2048).unwrap();
        assert_eq!((grpc, http), (1536, 384));
        assert!(grpc + http <= 2048 - FD_RESERVE as usize);
        // systemd's default soft limit.
        assert_eq!(fit_to_fd_limit(4096, 1024, 1024), Some((716, 179)));
        // Never zero.
        assert_eq!(fit_to_fd_limit(10, 10, 3), Some((1, 1)));
    }

    #[test]
    fn the_fd_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some_and(|n| n >= 64), "{:?}", open_files_limit());
        }
    }

    #[test]
    fn throttle_says_yes_once_per_period_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.tick(), Some(0));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        t.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(t.tick(), Some(2));
    }

    fn limits() -> Limits {
        let s = Duration::from_secs;
        Limits {
            max_connections: 1,
            handshake_timeout: s(10),
            header_read_timeout: s(20),
            request_timeout: s(30),
            idle_timeout: s(60),
            keepalive_interval: s(30),
            keepalive_timeout: s(10),
        }
    }

    #[test]
    fn watch_picks_the_deadline_that_applies() {
        let l = limits();
        let w = Arc::new(Watch::new());
        let (at, why) = w.deadline(&l).unwrap();
        assert_eq!((at, why), (w.opened + l.handshake_timeout, Closed::HandshakeTimeout));
        // Half a request: still the handshake.
        w.read(b"GET / HT");
        assert_eq!(w.deadline(&l).unwrap().1, Closed::HandshakeTimeout);
        let req = w.request_started();
        assert_eq!(w.deadline(&l), None, "a request in flight has no connection deadline");
        drop(req);
        assert_eq!(w.deadline(&l).unwrap().1, Closed::IdleTimeout);
        // The first byte of the next head starts the header timer.
        w.read(b"G");
        assert_eq!(w.deadline(&l).unwrap().1, Closed::HeaderTimeout);
        drop(w.request_started());
        assert_eq!(w.deadline(&l).unwrap().1, Closed::IdleTimeout);
        assert!(!w.is_h2());
    }

    #[test]
    fn watch_tells_http2_by_its_preface_and_times_only_idleness() {
        let l = limits();
        let w = Arc::new(Watch::new());
        w.read(&H2_PREFACE[..10]);
        assert!(!w.is_h2());
        w.read(&H2_PREFACE[10..]);
        assert!(w.is_h2());
        drop(w.request_started());
        // Pings and settings are not a request head.
        w.read(b"\0\0\x08\x06\0\0\0\0\0pingping");
        assert_eq!(w.deadline(&l).unwrap().1, Closed::IdleTimeout);
    }
}

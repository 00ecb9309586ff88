//! The admin HTTP server: `GET /healthz`, `/readyz`, `/metrics`, `/bindings`, `/status`, `/drain` on its own
//! thread (a current-thread tokio runtime running axum over hyper), so the daemons' event loops stay synchronous.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process lives |
//! | `GET /readyz` | 200 `ready` / 503 `not ready` from [`AdminState::ready`] |
//! | `GET /metrics` | [`AdminState::metrics`] as `text/plain; version=0.0.4; charset=utf-8` |
//! | `GET /bindings` | [`AdminState::bindings_json`] as `application/json` (host-only, below) |
//! | `GET /status` | [`AdminState::status_json`] as `application/json` (what `mipctl status` shows); 404 without one (host-only) |
//! | `GET /drain` | starts the drain ([`Drain`]), answers 200 `drained` when it is over; 503 when [`MAX_DRAIN_WAITERS`] already wait; 404 without [`AdminState::drain`] (host-only) |
//! | other paths | 404; other methods on these paths: 405 |
//!
//! `/drain` is Kubernetes' `preStop` hook (`httpGet`): the daemon turns not-ready at once and keeps serving for
//! `daemon.drain_ms` as on a first SIGTERM, and the hook returns when that time is over, so the kubelet's
//! SIGTERM that follows finds the drain done and the daemon shuts down at once ([`crate::daemon::run`]). Later
//! calls wait for the same end (or answer at once after it).
//!
//! **Who may ask what.** `/healthz`, `/readyz` and `/metrics` answer whoever reaches the address (probes,
//! routers following readiness, Prometheus). `/bindings`, `/status` (node addresses) and `/drain` (withdraws the
//! daemon) answer only clients on this host unless [`AdminState::remote_access`] says otherwise: a connection
//! whose source is a loopback address or the very address it reached (a client on this host talking to one of
//! the host's addresses; the kubelet's probes and `preStop` hook under host networking). Others get 403 and
//! [`AdminState::refused`] counts them; no state is read for them.
//!
//! Limits: request bodies are never read; request heads above 16 KiB are refused (431); a head must arrive within
//! 10 s (idle keep-alive connections close after 10 s); a connection lives at most 60 s (longer only while its
//! `/drain` answer waits for the drain's end); at most 64 connections are served at once; state calls run on at
//! most 2 blocking threads so a slow [`AdminState`] cannot pile up threads; `/drain` waits without a thread.
//!
//! [`Requests`] lets an [`AdminState`] ask the daemon's single-threaded event loop for data it owns (the binding
//! cache) through a bounded channel and a [`mio::Waker`], waiting at most 2 s, instead of sharing locks with the
//! data path.
//!
//! [`Recorder`] keeps what `/status` lists besides counters: the last [`STATUS_ENTRIES`] registration outcomes
//! and the last [`STATUS_ENTRIES`] errors (control-plane drops with their peer, and the control-path failures a
//! daemon logs at warn or error level: a failed key reload, a refused send, a kernel command). Both are bounded
//! rings fed on the control plane only; data-plane drops are counted, never recorded one by one.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mip::roles::RegistrationOutcome;
use mip::wire::ReplyCode;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::metrics::CONTENT_TYPE;

/// Largest request head accepted (hyper's minimum read buffer is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections are closed (after the request in progress) once this old, so idle keep-alive clients cannot hold
/// the connection slots.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long [`Requests::ask`] waits for the event loop by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopping server lets the requests in progress finish (answers to `/drain` among them).
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// `/drain` requests waiting for the drain's end at once; more are answered 503 at once (the drain starts
/// anyway).
pub const MAX_DRAIN_WAITERS: usize = 4;

/// What the admin server asks the daemon. Called on the admin thread's blocking pool, never on the event loop.
pub trait AdminState: Send + Sync + 'static {
    /// Whether the daemon is ready for traffic (`/readyz`).
    fn ready(&self) -> bool;
    /// The Prometheus exposition (`/metrics`), e.g. [`crate::metrics::Registry::render`].
    fn metrics(&self) -> String;
    /// The bindings as a JSON document (`/bindings`).
    fn bindings_json(&self) -> String;
    /// The daemon's status as a JSON object (`/status`; [`crate::daemon`] documents its fields); default none:
    /// `/status` is 404.
    fn status_json(&self) -> Option<String> {
        None
    }
    /// The daemon's drain control (`/drain`); default none: `/drain` is 404. Called on the async thread: return
    /// at once, never block.
    fn drain(&self) -> Option<&Drain> {
        None
    }
    /// Whether the host-only routes (`/bindings`, `/status`, `/drain`) answer clients on other hosts
    /// (`daemon.admin_remote_access`); default false.
    fn remote_access(&self) -> bool {
        false
    }
    /// A client on another host asked for host-only `route` and got 403. Called on the async thread: count,
    /// never block.
    fn refused(&self, route: HostOnly) {
        let _ = route;
    }
}

/// The routes that answer only clients on this host (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOnly {
    /// `/bindings`.
    Bindings,
    /// `/status`.
    Status,
    /// `/drain`.
    Drain,
}

impl HostOnly {
    /// Every host-only route.
    pub const ALL: [HostOnly; 3] = [HostOnly::Bindings, HostOnly::Status, HostOnly::Drain];

    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            HostOnly::Bindings => "/bindings",
            HostOnly::Status => "/status",
            HostOnly::Drain => "/drain",
        }
    }
}

/// Whether a connection from `peer` that reached `local` comes from this host: a loopback source, or the
/// reached address itself as the source (the kernel picks that source for a connection to its own address).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn from_this_host(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

/// Per connection: whether its client is on this host ([`from_this_host`]).
#[derive(Debug, Clone, Copy)]
struct Origin {
    this_host: bool,
}

/// `None` when `origin` may use `route`; else the 403 answer (counted).
fn host_only(state: &SharedState, origin: Origin, route: HostOnly) -> Option<Response> {
    if origin.this_host || state.remote_access() {
        return None;
    }
    state.refused(route);
    Some(
        (
            StatusCode::FORBIDDEN,
            "forbidden: only from this host (daemon.admin_remote_access)\n",
        )
            .into_response(),
    )
}

/// A running admin server; [`shutdown`](Self::shutdown) or drop stops it.
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

type SharedState = Arc<dyn AdminState>;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn blocking<T: Send + 'static>(state: SharedState, f: fn(&dyn AdminState) -> T) -> Option<T> {
    tokio::task::spawn_blocking(move || f(state.as_ref())).await.ok()
}

async fn readyz(State(state): State<SharedState>) -> Response {
    match blocking(state, |s| s.ready()).await {
        Some(true) => (StatusCode::OK, "ready\n").into_response(),
        Some(false) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(state): State<SharedState>) -> Response {
    match blocking(state, |s| s.metrics()).await {
        Some(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn bindings(State(state): State<SharedState>, Extension(origin): Extension<Origin>) -> Response {
    if let Some(refused) = host_only(&state, origin, HostOnly::Bindings) {
        return refused;
    }
    match blocking(state, |s| s.bindings_json()).await {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn status(State(state): State<SharedState>, Extension(origin): Extension<Origin>) -> Response {
    if let Some(refused) = host_only(&state, origin, HostOnly::Status) {
        return refused;
    }
    match blocking(state, |s| s.status_json()).await {
        Some(Some(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Some(None) => not_found().await.into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn drain(
    State(state): State<SharedState>,
    Extension(holding): Extension<Holding>,
    Extension(origin): Extension<Origin>,
) -> Response {
    if let Some(refused) = host_only(&state, origin, HostOnly::Drain) {
        return refused;
    }
    let Some(drain) = state.drain() else {
        return not_found().await.into_response();
    };
    drain.request();
    let Ok(_slot) = Arc::clone(&drain.inner.waiters).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining; too many /drain requests waiting\n",
        )
            .into_response();
    };
    let _held = holding.hold();
    drain.drained().await;
    (StatusCode::OK, "drained\n").into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/bindings", get(bindings))
        .route("/status", get(status))
        .route("/drain", get(drain))
        .fallback(not_found)
        .with_state(state)
}

/// Per connection: how many of its requests are `/drain` answers waiting for the drain's end (the connection
/// outlives [`MAX_CONNECTION_AGE`] for them).
#[derive(Debug, Clone, Default)]
struct Holding(Arc<AtomicUsize>);

/// Marks a waiting `/drain` answer until dropped.
struct Held(Arc<AtomicUsize>);

impl Holding {
    fn hold(&self) -> Held {
        self.0.fetch_add(1, Ordering::Relaxed);
        Held(Arc::clone(&self.0))
    }

    fn active(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(listener: std::net::TcpListener, app: Router, mut stop: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin server cannot use its listener");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, origin) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    // Without the local address the client counts as remote (host-only routes refused).
                    let this_host = s.local_addr().is_ok_and(|local| from_this_host(peer.ip(), local.ip()));
                    (s, Origin { this_host })
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let holding = Holding::default();
        let service = TowerToHyperService::new(app.clone().layer(Extension(holding.clone())).layer(Extension(origin)));
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(true);
            // Errors here are the client's (garbage, timeouts, resets): nothing to do but close.
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    // A client trickling requests cannot keep a slot forever: finish the current request, close.
                    // A `/drain` answer waits for the drain's end (bounded by the daemon's drain_ms limit).
                    conn.as_mut().graceful_shutdown();
                    while tokio::time::timeout(HEAD_TIMEOUT, conn.as_mut()).await.is_err() && holding.active() {}
                }
                _ = closing.changed() => {
                    // The server stops: finish the request in progress (a `/drain` answered just before), close.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    closing.send_replace(true);
    let _ = tokio::time::timeout(STOP_GRACE, async { while connections.join_next().await.is_some() {} }).await;
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port, see [`local_addr`](Self::local_addr)) and serves on a new thread.
    pub fn spawn(addr: SocketAddr, state: Arc<dyn AdminState>) -> std::io::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .thread_name("mip-admin-blocking")
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let app = router(state);
        let thread = std::thread::Builder::new().name("mip-admin".into()).spawn(move || {
            runtime.block_on(serve(listener, app, stop_rx));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(AdminServer {
            local,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, lets the requests in progress finish (at most [`STOP_GRACE`]), closes the connections
    /// and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

// === drain ===

/// Where a daemon's drain is ([`Drain::phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Not draining.
    Serving,
    /// Not ready, still serving until the drain time is over.
    Draining,
    /// The drain time is over (or the daemon is shutting down): `/drain` answers 200.
    Drained,
}

/// The `/drain` hand-off between the admin server and the daemon's event loop: the admin side
/// [`request`](Self::request)s a drain (a flag and the loop's [`mio::Waker`]), the loop
/// [`take_request`](Self::take_request)s it and publishes the [`DrainPhase`] with
/// [`set_phase`](Self::set_phase); `/drain` answers once the phase is [`DrainPhase::Drained`]. Cloned freely
/// (one shared state).
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Debug)]
struct DrainInner {
    requested: AtomicBool,
    phase: watch::Sender<DrainPhase>,
    waiters: Arc<Semaphore>,
    waker: Arc<mio::Waker>,
}

impl Drain {
    /// A drain control in [`DrainPhase::Serving`] that wakes the event loop through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> Drain {
        Drain {
            inner: Arc::new(DrainInner {
                requested: AtomicBool::new(false),
                phase: watch::Sender::new(DrainPhase::Serving),
                waiters: Arc::new(Semaphore::new(MAX_DRAIN_WAITERS)),
                waker,
            }),
        }
    }

    /// Asks the event loop to drain (admin side; repeated requests are one) and wakes it.
    pub fn request(&self) {
        if self.phase() != DrainPhase::Serving {
            return;
        }
        self.inner.requested.store(true, Ordering::Release);
        if let Err(e) = self.inner.waker.wake() {
            tracing::warn!(error = %e, "waking the event loop for /drain");
        }
    }

    /// Whether a drain was requested since the last call (event-loop side).
    pub fn take_request(&self) -> bool {
        self.inner.requested.swap(false, Ordering::AcqRel)
    }

    /// Publishes the drain's phase (event-loop side); [`DrainPhase::Drained`] answers the waiting `/drain`s.
    pub fn set_phase(&self, phase: DrainPhase) {
        self.inner.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
    }

    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.inner.phase.borrow()
    }

    /// Resolves once the phase is [`DrainPhase::Drained`].
    async fn drained(&self) {
        let mut rx = self.inner.phase.subscribe();
        // The sender lives as long as `self`: an error cannot happen while we wait.
        let _ = rx.wait_for(|p| *p == DrainPhase::Drained).await;
    }
}

// === requests to the event loop ===

/// Why [`Requests::ask`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The queue is full (the event loop is behind).
    #[error("the event loop has too many pending requests")]
    Busy,
    /// The event loop is gone.
    #[error("the event loop is gone")]
    Closed,
    /// No answer within the timeout.
    #[error("the event loop did not answer in time")]
    Timeout,
}

/// One request waiting in the event loop's [`RequestQueue`].
#[derive(Debug)]
pub struct Request<T, Q = ()> {
    query: Q,
    reply: SyncSender<T>,
}

impl<T, Q> Request<T, Q> {
    /// What is asked.
    pub fn query(&self) -> &Q {
        &self.query
    }

    /// Answers (a requester that gave up is ignored).
    pub fn respond(self, value: T) {
        let _ = self.reply.try_send(value);
    }
}

/// The asking side: held by an [`AdminState`], cloned freely. `T` is the answer, `Q` the question (often `()`).
#[derive(Debug)]
pub struct Requests<T, Q = ()> {
    tx: SyncSender<Request<T, Q>>,
    waker: Arc<mio::Waker>,
    timeout: Duration,
}

impl<T, Q> Clone for Requests<T, Q> {
    fn clone(&self) -> Self {
        Requests {
            tx: self.tx.clone(),
            waker: Arc::clone(&self.waker),
            timeout: self.timeout,
        }
    }
}

/// The event loop's side: drain it when the waker's token fires.
#[derive(Debug)]
pub struct RequestQueue<T, Q = ()> {
    rx: Receiver<Request<T, Q>>,
}

impl<T, Q> Requests<T, Q> {
    /// A channel of `capacity` pending requests; `waker` (registered with the event loop's `Poll` under a token
    /// of its choosing) is woken on every request.
    pub fn new(waker: Arc<mio::Waker>, capacity: usize) -> (Requests<T, Q>, RequestQueue<T, Q>) {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        (
            Requests {
                tx,
                waker,
                timeout: REQUEST_TIMEOUT,
            },
            RequestQueue { rx },
        )
    }

    /// The same channel with another answer timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks and waits for the answer (at most the timeout, 2 s by default). Blocks: call it from the admin
    /// thread's [`AdminState`] methods, never from the event loop itself.
    pub fn ask_with(&self, query: Q) -> Result<T, RequestError> {
        let (reply, answer) = mpsc::sync_channel(1);
        match self.tx.try_send(Request { query, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(RequestError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(RequestError::Closed),
        }
        if self.waker.wake().is_err() {
            return Err(RequestError::Closed);
        }
        match answer.recv_timeout(self.timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(RequestError::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(RequestError::Closed),
        }
    }
}

impl<T> Requests<T, ()> {
    /// Asks for the answer to the only question there is.
    pub fn ask(&self) -> Result<T, RequestError> {
        self.ask_with(())
    }
}

impl<T, Q> RequestQueue<T, Q> {
    /// The next pending request, if any (never blocks).
    pub fn try_next(&self) -> Option<Request<T, Q>> {
        self.rx.try_recv().ok()
    }

    /// Answers every pending request with `answer(query)`; returns how many were answered.
    pub fn serve(&self, mut answer: impl FnMut(&Q) -> T) -> usize {
        let mut n = 0;
        while let Some(r) = self.try_next() {
            let v = answer(&r.query);
            r.respond(v);
            n += 1;
        }
        n
    }
}

// === status: recent registrations and errors ===

/// Entries each ring of a [`Recorder`] keeps (newest first on `/status`).
pub const STATUS_ENTRIES: usize = 32;

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One registration outcome (a reply this daemon sent, or for a mobile node the reply it got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRecord {
    /// When.
    pub at: SystemTime,
    /// The node's home address (0.0.0.0 while unassigned).
    pub home_address: Ipv4Addr,
    /// The node's NAI, when the daemon knows it.
    pub nai: Option<String>,
    /// The care-of address of the request.
    pub care_of_address: Ipv4Addr,
    /// The home agent involved, if known.
    pub home_agent: Option<Ipv4Addr>,
    /// The reply code.
    pub code: u8,
    /// The lifetime in the reply.
    pub lifetime: u16,
    /// Whether a NAT was detected between the node and this daemon.
    pub nat_detected: bool,
}

impl RegistrationRecord {
    /// The record of a role's [`RegistrationOutcome`], now.
    pub fn from_outcome(o: &RegistrationOutcome, nai: Option<&str>) -> RegistrationRecord {
        RegistrationRecord {
            at: SystemTime::now(),
            home_address: o.home_address,
            nai: nai.map(str::to_owned),
            care_of_address: o.care_of_address,
            home_agent: o.home_agent,
            code: u8::from(o.code),
            lifetime: o.lifetime,
            nat_detected: o.nat_detected,
        }
    }

    /// As `/status` lists it: `{"at_unix_ms", "home_address", "nai", "care_of_address", "home_agent", "code",
    /// "code_text", "accepted", "lifetime", "nat_detected"}`.
    pub fn to_json(&self) -> Value {
        let code = ReplyCode::from(self.code);
        json!({
            "at_unix_ms": unix_ms(self.at),
            "home_address": self.home_address.to_string(),
            "nai": self.nai,
            "care_of_address": self.care_of_address.to_string(),
            "home_agent": self.home_agent.map(|a| a.to_string()),
            "code": self.code,
            "code_text": code.description(),
            "accepted": code.is_accepted(),
            "lifetime": self.lifetime,
            "nat_detected": self.nat_detected,
        })
    }
}

/// What kind of error an [`ErrorRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A control-plane input dropped (`what` is the `mip_drops_total` reason).
    Drop,
    /// A failure on the control path that the daemon also logged at warn or error level.
    Error,
}

impl ErrorKind {
    /// `drop` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Drop => "drop",
            ErrorKind::Error => "error",
        }
    }
}

/// One error, or a run of identical ones in a row (same kind, `what`, peer and detail: counted, not repeated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// The first of the run.
    pub first: SystemTime,
    /// The last of the run.
    pub last: SystemTime,
    /// How many in a row.
    pub count: u64,
    /// Drop or error.
    pub kind: ErrorKind,
    /// The drop reason (a `mip_drops_total` label) or a short name of the failure (`keys_reload`, …).
    pub what: Cow<'static, str>,
    /// Who sent the dropped input, or whom the failure concerns, when known.
    pub peer: Option<SocketAddr>,
    /// The error message, if any.
    pub detail: Option<String>,
}

impl ErrorRecord {
    /// As `/status` lists it: `{"at_unix_ms" (the last), "first_unix_ms", "count", "kind", "what", "peer",
    /// "detail"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "at_unix_ms": unix_ms(self.last),
            "first_unix_ms": unix_ms(self.first),
            "count": self.count,
            "kind": self.kind.as_str(),
            "what": self.what,
            "peer": self.peer.map(|p| p.to_string()),
            "detail": self.detail,
        })
    }
}

/// The two rings behind a [`Recorder`].
#[derive(Debug)]
struct StatusLog {
    registrations: VecDeque<RegistrationRecord>,
    errors: VecDeque<ErrorRecord>,
    cap: usize,
}

/// Pushes `v` into a ring of at most `cap` entries (the oldest goes). The ring was allocated with room for
/// `cap`, so this never reallocates.
fn push_bounded<T>(ring: &mut VecDeque<T>, cap: usize, v: T) {
    if ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(v);
}

/// Recent registrations and errors of one daemon, for `/status` (see the module documentation). Cloned freely
/// (one shared log); every method takes a mutex that only the control plane and the status page contend for.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<Mutex<StatusLog>>);

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new(STATUS_ENTRIES)
    }
}

impl Recorder {
    /// A log keeping the last `cap` registrations and the last `cap` errors.
    pub fn new(cap: usize) -> Recorder {
        let cap = cap.max(1);
        Recorder(Arc::new(Mutex::new(StatusLog {
            registrations: VecDeque::with_capacity(cap),
            errors: VecDeque::with_capacity(cap),
            cap,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, StatusLog> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a registration outcome.
    pub fn registration(&self, r: RegistrationRecord) {
        let mut log = self.lock();
        let cap = log.cap;
        push_bounded(&mut log.registrations, cap, r);
    }

    /// Records a role's outcome now ([`RegistrationRecord::from_outcome`]).
    pub fn outcome(&self, o: &RegistrationOutcome, nai: Option<&str>) {
        self.registration(RegistrationRecord::from_outcome(o, nai));
    }

    /// Records a dropped control-plane input (`reason`: its `mip_drops_total` label) from `peer`.
    pub fn drop(&self, reason: &'static str, peer: Option<SocketAddr>) {
        self.push(ErrorKind::Drop, Cow::Borrowed(reason), peer, None);
    }

    /// Records a control-path failure (`what`: a short snake_case name; `detail`: the error).
    pub fn error(&self, what: &'static str, peer: Option<SocketAddr>, detail: impl std::fmt::Display) {
        self.push(ErrorKind::Error, Cow::Borrowed(what), peer, Some(detail.to_string()));
    }

    fn push(&self, kind: ErrorKind, what: Cow<'static, str>, peer: Option<SocketAddr>, detail: Option<String>) {
        let now = SystemTime::now();
        let mut log = self.lock();
        if let Some(last) = log.errors.back_mut()
            && last.kind == kind
            && last.what == what
            && last.peer == peer
            && last.detail == detail
        {
            last.count = last.count.saturating_add(1);
            last.last = now;
            return;
        }
        let cap = log.cap;
        push_bounded(
            &mut log.errors,
            cap,
            ErrorRecord {
                first: now,
                last: now,
                count: 1,
                kind,
                what,
                peer,
                detail,
            },
        );
    }

    /// The registrations kept, oldest first.
    pub fn registrations(&self) -> Vec<RegistrationRecord> {
        self.lock().registrations.iter().cloned().collect()
    }

    /// The errors kept, oldest first.
    pub fn errors(&self) -> Vec<ErrorRecord> {
        self.lock().errors.iter().cloned().collect()
    }

    /// `(recent_registrations, last_errors)` as `/status` lists them: JSON arrays, newest first.
    pub fn to_json(&self) -> (Value, Value) {
        let log = self.lock();
        let regs = log
            .registrations
            .iter()
            .rev()
            .map(RegistrationRecord::to_json)
            .collect();
        let errors = log.errors.iter().rev().map(ErrorRecord::to_json).collect();
        (Value::Array(regs), Value::Array(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct TestState {
        ready: AtomicBool,
        registry: crate::metrics::Registry,
    }

    impl AdminState for TestState {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn metrics(&self) -> String {
            self.registry.render()
        }
        fn bindings_json(&self) -> String {
            r#"[{"home_address":"10.10.1.50"}]"#.to_string()
        }
    }

    fn start() -> (AdminServer, Arc<TestState>) {
        let registry = crate::metrics::Registry::new();
        registry
            .counter("mip_test_total", "A test counter.", &[])
            .unwrap()
            .add(7);
        let state = Arc::new(TestState {
            ready: AtomicBool::new(false),
            registry,
        });
        let server = AdminServer::spawn("127.0.0.1:0".parse().unwrap(), state.clone()).unwrap();
        (server, state)
    }

    /// Sends raw bytes, returns (status, headers, body) of the answer, or `None` if the server closed without one.
    fn raw(addr: SocketAddr, request: &[u8]) -> Option<(u16, String, String)> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, head.to_ascii_lowercase(), body.to_string()))
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap()
    }

    /// Loopback sources and the reached address itself are this host, mapped IPv6 forms too; another source
    /// is not.
    #[test]
    fn this_host_is_loopback_or_the_reached_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(from_this_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(from_this_host(ip("127.0.0.5"), ip("10.0.0.1")));
        assert!(from_this_host(ip("10.0.0.1"), ip("10.0.0.1")));
        assert!(from_this_host(ip("::1"), ip("::1")));
        assert!(from_this_host(ip("::ffff:127.0.0.1"), ip("::ffff:10.0.0.1")));
        assert!(from_this_host(ip("::ffff:10.0.0.1"), ip("10.0.0.1")));
        assert!(!from_this_host(ip("10.0.0.2"), ip("10.0.0.1")));
        assert!(!from_this_host(ip("::ffff:10.0.0.2"), ip("::ffff:10.0.0.1")));
        assert!(!from_this_host(ip("2001:db8::2"), ip("2001:db8::1")));
    }

    #[test]
    fn routes() {
        let (server, state) = start();
        let a = server.local_addr();
        let (status, _, body) = get(a, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let (status, _, body) = get(a, "/readyz");
        assert_eq!((status, body.as_str()), (503, "not ready\n"));
        state.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(a, "/readyz").0, 200);
        let (status, head, body) = get(a, "/metrics");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        let samples = crate::metrics::tests::validate_exposition(&body);
        assert_eq!(samples["mip_test_total"], 7.0);
        let (status, head, body) = get(a, "/bindings");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(body, r#"[{"home_address":"10.10.1.50"}]"#);
        assert_eq!(get(a, "/nope").0, 404);
        assert_eq!(get(a, "/").0, 404);
        assert_eq!(get(a, "/metrics/extra").0, 404);
        // A body is ignored; a wrong method is 405.
        let post = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        assert_eq!(raw(a, post).unwrap().0, 405);
        // HEAD works like GET without a body.
        let head = raw(a, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((head.0, head.2.as_str()), (200, ""));
        // Keep-alive: two requests on one connection.
        let two =
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(two).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        server.shutdown();
        assert!(TcpStream::connect(a).is_err(), "stopped");
    }

    struct StatusState(Recorder);

    impl AdminState for StatusState {
        fn ready(&self) -> bool {
            true
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn bindings_json(&self) -> String {
            "[]".into()
        }
        fn status_json(&self) -> Option<String> {
            let (regs, errors) = self.0.to_json();
            Some(json!({"role": "test", "recent_registrations": regs, "last_errors": errors}).to_string())
        }
    }

    /// `/status` answers the state's JSON; a state without one is 404.
    #[test]
    fn status_route() {
        let (server, _state) = start();
        assert_eq!(get(server.local_addr(), "/status").0, 404, "no status");
        server.shutdown();
        let rec = Recorder::new(4);
        rec.error("keys_reload", None, "keys.yaml: line 3: bad key");
        let server = AdminServer::spawn("127.0.0.1:0".parse().unwrap(), Arc::new(StatusState(rec))).unwrap();
        let (status, head, body) = get(server.local_addr(), "/status");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["role"], "test");
        assert_eq!(v["last_errors"][0]["kind"], "error");
        assert_eq!(v["last_errors"][0]["what"], "keys_reload");
        assert_eq!(v["last_errors"][0]["detail"], "keys.yaml: line 3: bad key");
        assert_eq!(v["last_errors"][0]["peer"], Value::Null);
        assert_eq!(v["recent_registrations"], json!([]));
    }

    fn outcome(last: u8, code: ReplyCode) -> RegistrationOutcome {
        RegistrationOutcome {
            home_address: Ipv4Addr::new(10, 10, 1, last),
            care_of_address: Ipv4Addr::new(192, 0, 2, 10),
            home_agent: None,
            code,
            lifetime: 600,
            nat_detected: true,
        }
    }

    /// Both rings keep the newest `cap` entries and list them newest first; identical errors in a row are one
    /// entry with a count, a different one in between starts a new entry.
    #[test]
    fn recorder_rings_are_bounded_newest_first_and_coalesce_runs() {
        let rec = Recorder::new(3);
        for i in 1..=5u8 {
            rec.outcome(&outcome(i, ReplyCode::Accepted), None);
        }
        rec.outcome(&outcome(6, ReplyCode::IdentificationMismatch), Some("n@x"));
        let (regs, _) = rec.to_json();
        let regs = regs.as_array().unwrap();
        assert_eq!(regs.len(), 3);
        let hoas: Vec<_> = regs.iter().map(|r| r["home_address"].as_str().unwrap()).collect();
        assert_eq!(hoas, ["10.10.1.6", "10.10.1.5", "10.10.1.4"]);
        assert_eq!(regs[0]["code"], 133);
        assert_eq!(regs[0]["code_text"], ReplyCode::IdentificationMismatch.description());
        assert_eq!(regs[0]["accepted"], false);
        assert_eq!(regs[0]["nai"], "n@x");
        assert_eq!(regs[0]["nat_detected"], true);
        assert_eq!(regs[0]["home_agent"], Value::Null);
        assert_eq!(regs[1]["accepted"], true);
        assert_eq!(regs[1]["nai"], Value::Null);

        let a = Some(SocketAddr::from(([203, 0, 113, 1], 434)));
        let b = Some(SocketAddr::from(([203, 0, 113, 2], 434)));
        for _ in 0..1000 {
            rec.drop("bad_authenticator", a);
        }
        rec.drop("bad_authenticator", b);
        rec.drop("bad_authenticator", a);
        let errors = rec.errors();
        assert_eq!(errors.len(), 3);
        assert_eq!(errors.iter().map(|e| e.count).collect::<Vec<_>>(), [1000, 1, 1]);
        assert!(errors[0].first <= errors[0].last);
        rec.error("send_failed", a, "Network is unreachable");
        rec.error("send_failed", a, "Network is unreachable");
        rec.error("send_failed", a, "Permission denied");
        let (_, errors) = rec.to_json();
        let errors = errors.as_array().unwrap();
        assert_eq!(errors.len(), 3, "the oldest went");
        assert_eq!(errors[0]["detail"], "Permission denied");
        assert_eq!(errors[1]["count"], 2);
        assert_eq!(errors[1]["kind"], "error");
        assert_eq!(errors[2]["kind"], "drop");
        assert_eq!(errors[2]["peer"], "203.0.113.1:434");
        assert!(errors[0]["at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }

    struct DrainState {
        drain: Drain,
    }

    impl AdminState for DrainState {
        fn ready(&self) -> bool {
            self.drain.phase() == DrainPhase::Serving
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn bindings_json(&self) -> String {
            "[]".into()
        }
        fn drain(&self) -> Option<&Drain> {
            Some(&self.drain)
        }
    }

    /// `/drain` requests the drain and wakes the loop, waits for [`DrainPhase::Drained`] without a blocking
    /// thread (the other routes keep answering), refuses waiters beyond [`MAX_DRAIN_WAITERS`] with 503, and
    /// answers at once once drained; without a drain control it is 404.
    #[test]
    fn drain_waits_for_the_phase_and_is_bounded() {
        let (server, _state) = start();
        assert_eq!(get(server.local_addr(), "/drain").0, 404, "no drain control");
        server.shutdown();

        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(3)).unwrap());
        let drain = Drain::new(waker);
        let state = Arc::new(DrainState { drain: drain.clone() });
        let server = AdminServer::spawn("127.0.0.1:0".parse().unwrap(), state).unwrap();
        let a = server.local_addr();
        assert!(!drain.take_request());
        let waiters: Vec<_> = (0..MAX_DRAIN_WAITERS)
            .map(|_| std::thread::spawn(move || get(a, "/drain")))
            .collect();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.token() == mio::Token(3)), "the loop is woken");
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !drain.take_request() {
            assert!(std::time::Instant::now() < end, "requested");
            std::thread::sleep(Duration::from_millis(5));
        }
        drain.set_phase(DrainPhase::Draining);
        // Let every waiter take its slot; the next one is refused at once, the other routes still answer.
        std::thread::sleep(Duration::from_millis(300));
        let (status, _, body) = get(a, "/drain");
        assert_eq!(
            (status, body.as_str()),
            (503, "draining; too many /drain requests waiting\n")
        );
        assert_eq!(get(a, "/healthz").0, 200);
        assert_eq!(get(a, "/readyz").0, 503);
        assert!(waiters.iter().all(|w| !w.is_finished()), "waiting for the drain's end");
        assert!(!drain.take_request(), "no new request while draining");
        drain.set_phase(DrainPhase::Drained);
        for w in waiters {
            let (status, _, body) = w.join().unwrap();
            assert_eq!((status, body.as_str()), (200, "drained\n"));
        }
        assert_eq!(get(a, "/drain").2, "drained\n", "at once after the end");
        server.shutdown();
    }

    #[test]
    fn garbage_does_not_crash_it() {
        let (server, _state) = start();
        let a = server.local_addr();
        let mut junk: Vec<Vec<u8>> = vec![
            b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec(),
            b"GET\r\n\r\n".to_vec(),
            b"GET /healthz HTTP/9.9\r\n\r\n".to_vec(),
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".to_vec(),
            b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            b"\r\n\r\n\r\n".to_vec(),
            vec![b'A'; 100_000],
        ];
        let mut big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
        big.extend(vec![b'x'; 40_000]);
        big.extend(b"\r\n\r\n");
        junk.push(big);
        for (i, j) in junk.iter().enumerate() {
            if let Some((status, _, _)) = raw(a, j) {
                assert!((400..500).contains(&status) || status == 200, "case {i}: {status}");
            }
        }
        // Half a request, then hang up.
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET /heal").unwrap();
        drop(s);
        assert_eq!(get(a, "/healthz").0, 200, "still serving");
    }

    #[test]
    fn requests_reach_the_event_loop_and_time_out() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(9)).unwrap());
        let (req, queue) = Requests::<String, u32>::new(waker, 4);
        let req2 = req.clone();
        let looper = std::thread::spawn(move || {
            let mut events = mio::Events::with_capacity(8);
            let mut served = 0;
            // Answer exactly two requests (`serve` would also pick up the third if it raced in).
            while served < 2 {
                poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
                while served < 2
                    && let Some(r) = queue.try_next()
                {
                    let answer = format!("snapshot {}", r.query());
                    r.respond(answer);
                    served += 1;
                }
            }
            // Keep the queue open but never answer again.
            std::thread::sleep(Duration::from_millis(300));
            drop(queue);
        });
        assert_eq!(req.ask_with(1).unwrap(), "snapshot 1");
        assert_eq!(req2.ask_with(2).unwrap(), "snapshot 2");
        let slow = req.clone().with_timeout(Duration::from_millis(50));
        assert_eq!(slow.ask_with(3), Err(RequestError::Timeout));
        looper.join().unwrap();
        assert_eq!(req.ask_with(4), Err(RequestError::Closed));
    }

    #[test]
    fn serve_drains_and_a_full_queue_is_busy() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let (req, queue) = Requests::<u32>::new(waker, 1);
        let req = req.with_timeout(Duration::from_millis(20));
        assert_eq!(req.ask(), Err(RequestError::Timeout), "nobody answers");
        assert_eq!(
            req.ask(),
            Err(RequestError::Busy),
            "the unanswered request still fills the queue"
        );
        assert_eq!(queue.serve(|()| 5), 1, "late answers are dropped quietly");
        assert_eq!(queue.serve(|()| 5), 0);
    }
}

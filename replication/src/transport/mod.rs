//! The replication transport: a [`Replicator`] runs tonic (gRPC over HTTP/2) and rustls on its own tokio
//! runtime (one thread driving it plus 2 workers), beside a daemon whose event loop is synchronous.
//!
//! * **Server** on `listen`: every peer subscribes to this replica's state with `Replication.Sync`; it gets a
//!   snapshot of the whole store in chunks, then this replica's own changes ([`Replicator::publish`]) as deltas,
//!   and repairs when its digest disagrees with ours twice in a row.
//! * **Clients**: one per peer address (static list, or the A records of a DNS name re-resolved every
//!   `refresh_ms`): connect, receive snapshot and deltas, apply them to the store, send the digest and an
//!   acknowledgement every `digest_interval_ms`, reconnect with backoff. An address that answers with our own
//!   replica id is skipped (a headless Service lists the replica itself).
//! * **Bounded memory**: each subscriber has a queue of at most `queue_limit` deltas; on overflow the queue is
//!   dropped and the subscriber gets a fresh snapshot instead (counted in `overflows`).
//! * **Caught up** ([`Replicator::caught_up`]): true once every peer that is not this replica has delivered a
//!   complete snapshot, or, after `catchup_timeout_ms` from start, once every peer that is connected has (peers
//!   never reached are then ignored). No peers: caught up at once. It never goes back to false: a later
//!   reconnection repairs through its snapshot while the replica keeps serving.
//! * **Shutdown** ([`Replicator::shutdown`]): every subscriber gets its queued deltas, then a goodbye, and is
//!   waited for (at most `flush_timeout_ms`) until it acknowledges having applied everything; then all
//!   connections close and the runtime stops.
//!
//! The daemon side: `publish(delta)` never blocks (a mutex held for a queue push per subscriber); remote changes
//! are applied to the shared store by the transport, which then calls the `wake` callback (e.g. a
//! `mio::Waker::wake`); the daemon drains them with [`ReplicaStore::take_remote_changes`]. The transport also
//! calls [`ReplicaStore::gc`] every second.

mod client;
mod server;
pub mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use mip::config::{ConfigError, Validate};
use mip::roles::Now;
use tokio::sync::{Notify, watch};

use crate::config::ReplicationConfig;
use crate::record::Delta;
use crate::store::ReplicaStore;
use tls::{TlsError, TlsState};

/// The store shared by the daemon and the transport.
pub type SharedStore = Arc<Mutex<ReplicaStore>>;

/// The daemon's clock (monotonic instants on the daemon's origin, wall clock for the HLC).
pub type NowFn = Arc<dyn Fn() -> Now + Send + Sync>;

/// Called after remote changes were applied to the store (wakes the daemon's event loop).
pub type WakeFn = Arc<dyn Fn() + Send + Sync>;

/// Why [`Replicator::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("replication configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<ConfigError>),
    /// The certificate files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The runtime or the listening socket could not be set up.
    #[error("replication listener {addr}: {source}")]
    Io {
        /// Listen address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Locks a mutex, recovering from poisoning (a panicked holder leaves consistent data here: every critical
/// section is a single store call or queue operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Client-side state of one peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Address dialled.
    pub addr: Option<SocketAddr>,
    /// Replica id from its hello.
    pub replica_id: Option<u32>,
    /// The address is this replica (skipped).
    pub is_self: bool,
    /// A replication stream is open.
    pub connected: bool,
    /// Its snapshot arrived completely since start (on any connection).
    pub snapshot_received: bool,
    /// Complete snapshots received.
    pub snapshots_received: u64,
    /// Records received (snapshot, deltas, repairs).
    pub records_received: u64,
    /// Records that changed the store.
    pub records_applied: u64,
    /// Repair records received (anti-entropy).
    pub repairs_received: u64,
    /// Successful connections.
    pub connects: u64,
    /// Replication lag of its deltas (its HLC wall time → applied here), median of the recent samples, ms.
    pub lag_ms_p50: Option<u64>,
    /// Same, 99th percentile.
    pub lag_ms_p99: Option<u64>,
    /// Number of lag samples kept (the most recent up to 8192).
    pub lag_samples: usize,
    /// Last connection or stream error.
    pub last_error: Option<String>,
}

/// Server-side state of one subscriber (a peer receiving our state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStatus {
    /// Its replica id.
    pub replica_id: u32,
    /// Remote address.
    pub remote: Option<SocketAddr>,
    /// Deltas waiting.
    pub queued: usize,
    /// Deltas sent.
    pub deltas_sent: u64,
    /// Snapshots sent (the first, plus one per overflow).
    pub snapshots_sent: u64,
    /// Queue overflows.
    pub overflows: u64,
    /// Repair records sent.
    pub repairs_sent: u64,
    /// Records it acknowledged.
    pub acked: u64,
}

/// Everything the daemon shows about replication (metrics, readiness, `/replication`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub replica_id: u32,
    /// See [`Replicator::caught_up`].
    pub caught_up: bool,
    /// Shutdown started.
    pub shutting_down: bool,
    /// Peers (client side), by address.
    pub peers: Vec<PeerStatus>,
    /// Subscribers (server side).
    pub subscribers: Vec<SubscriberStatus>,
    /// Deltas published.
    pub published: u64,
    /// Queue overflows over all subscribers.
    pub overflows: u64,
    /// Snapshots sent over all subscribers.
    pub snapshots_sent: u64,
    /// Certificate reloads that took effect.
    pub tls_reloads: u64,
    /// Certificate reloads that failed (old certificates kept).
    pub tls_reload_errors: u64,
    /// TLS handshakes that failed on the server.
    pub tls_handshake_errors: u64,
}

/// What [`Replicator::shutdown`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Subscribers connected when shutdown began.
    pub subscribers: usize,
    /// Of those, how many acknowledged every delta before the deadline.
    pub flushed: usize,
}

/// A published delta with the `traceparent` of the span that made it, if any; shared by every subscriber queue.
type Outgoing = Arc<(Delta, Option<Box<str>>)>;

#[derive(Debug, Default)]
struct SubQueue {
    deltas: VecDeque<Outgoing>,
    /// Overflowed: the next send is a fresh snapshot.
    overflow: bool,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    replica_id: u32,
    remote: Option<SocketAddr>,
    queue: Mutex<SubQueue>,
    notify: Notify,
    deltas_sent: AtomicU64,
    snapshots_sent: AtomicU64,
    overflows: AtomicU64,
    repairs_sent: AtomicU64,
    acked: AtomicU64,
}

/// Most recent lag samples kept per peer.
const LAG_SAMPLES: usize = 8192;

#[derive(Debug, Default)]
struct PeerState {
    status: PeerStatus,
    lags: VecDeque<u64>,
}

struct Shared {
    config: ReplicationConfig,
    /// The store's replica id (`config.replica_id`, if set, must agree).
    replica_id: u32,
    store: SharedStore,
    now: NowFn,
    wake: WakeFn,
    tls: Option<TlsState>,
    started: std::time::Instant,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    next_sub: AtomicU64,
    peers: Mutex<BTreeMap<SocketAddr, PeerState>>,
    /// Set once `peers` holds an entry for every peer address known (the static list, or the first DNS answer);
    /// until then an empty or partial map must not read as "every peer caught up".
    peers_known: AtomicBool,
    caught_up: AtomicBool,
    shutting_down: AtomicBool,
    published: AtomicU64,
    overflows: AtomicU64,
    snapshots_sent: AtomicU64,
    tls_reloads: AtomicU64,
    tls_reload_errors: AtomicU64,
    tls_handshake_errors: AtomicU64,
    shutdown: watch::Sender<bool>,
    flushed: AtomicU64,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn replica_id(&self) -> u32 {
        self.replica_id
    }

    fn chunk(&self) -> usize {
        self.config.chunk_records
    }

    fn peer<R>(&self, addr: SocketAddr, f: impl FnOnce(&mut PeerState) -> R) -> R {
        let mut peers = lock(&self.peers);
        let p = peers.entry(addr).or_default();
        p.status.addr = Some(addr);
        f(p)
    }

    /// Re-evaluates the caught-up rule (see the module documentation); latches once true.
    fn update_caught_up(&self) {
        if self.caught_up.load(Ordering::Acquire) {
            return;
        }
        let timed_out = self.started.elapsed() >= Duration::from_millis(self.config.catchup_timeout_ms);
        // Before the peer list is in the map (the client tasks run on the replication runtime, after `start`
        // returned), "all peers" would be vacuously true: a restarted replica would report ready at once.
        let done = if self.peers_known.load(Ordering::Acquire) {
            lock(&self.peers)
                .values()
                .filter(|p| !p.status.is_self)
                .all(|p| p.status.snapshot_received || (timed_out && !p.status.connected))
        } else {
            timed_out
        };
        if done {
            self.caught_up.store(true, Ordering::Release);
        }
    }
}

/// The running replication transport. See the module documentation.
#[derive(Debug)]
pub struct Replicator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Replicator {
    /// Validates `config`, loads the certificates, binds the listener (errors are returned here), then runs the
    /// server, the peer clients, digest exchange, certificate reloads and store GC on a runtime of its own. The
    /// replica id is the store's ([`crate::ReplicaStore::replica_id`], nonzero); `config.replica_id`, if set,
    /// must be the same.
    /// `now` is the daemon's clock; `wake` is called whenever remote changes are waiting in the store.
    pub fn start(
        config: ReplicationConfig,
        store: SharedStore,
        now: NowFn,
        wake: WakeFn,
    ) -> Result<Replicator, StartError> {
        let mut errors = config.validate();
        // The id the store stamps its versions with is the one the peers must see (a daemon that derived it
        // from its node address passes a config without one).
        let replica_id = lock(&store).replica_id();
        if config.replica_id.is_some_and(|id| id != replica_id) {
            errors.push(ConfigError::new(
                "replica_id",
                format!("differs from the store's replica id {replica_id}"),
            ));
        }
        if replica_id == 0 {
            errors.push(ConfigError::new("replica_id", "must be nonzero"));
        }
        if !errors.is_empty() {
            return Err(StartError::Config(errors));
        }
        let tls = config.tls.clone().map(TlsState::new).transpose()?;
        let addr = config.listen;
        let io_err = |source| StartError::Io { addr, source };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mip-replication")
            .enable_all()
            .build()
            .map_err(io_err)?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).map_err(io_err)?;
        let local_addr = listener.local_addr().map_err(io_err)?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            replica_id,
            store,
            now,
            wake,
            tls,
            started: std::time::Instant::now(),
            subscribers: Mutex::new(Vec::new()),
            next_sub: AtomicU64::new(0),
            peers: Mutex::new(BTreeMap::new()),
            peers_known: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            published: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            tls_reloads: AtomicU64::new(0),
            tls_reload_errors: AtomicU64::new(0),
            tls_handshake_errors: AtomicU64::new(0),
            shutdown,
            flushed: AtomicU64::new(0),
        });
        let run_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mip-replication".into())
            .spawn(move || {
                rt.block_on(run(run_shared, listener));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(io_err)?;
        Ok(Replicator {
            shared,
            local_addr,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a delta from [`ReplicaStore::apply_local`] for every subscriber. Never blocks on the network: a
    /// subscriber whose queue is full is switched to a fresh snapshot instead.
    pub fn publish(&self, delta: Delta) {
        self.publish_traced(delta, None);
    }

    /// [`publish`](Self::publish) with the W3C `traceparent` of the span that made the change (a registration's
    /// trace): it travels with the delta (`Record.traceparent`), not with snapshots or repairs.
    pub fn publish_traced(&self, delta: Delta, traceparent: Option<&str>) {
        self.shared.published.fetch_add(1, Ordering::Relaxed);
        let delta = Arc::new((delta, traceparent.map(Into::into)));
        let subs = lock(&self.shared.subscribers).clone();
        for s in subs {
            let mut q = lock(&s.queue);
            if q.overflow {
                continue; // the coming snapshot reads the store, which already holds this change
            }
            if q.deltas.len() >= self.shared.config.queue_limit {
                q.deltas = VecDeque::new();
                q.overflow = true;
                s.overflows.fetch_add(1, Ordering::Relaxed);
                self.shared.overflows.fetch_add(1, Ordering::Relaxed);
            } else {
                q.deltas.push_back(delta.clone());
            }
            drop(q);
            s.notify.notify_one();
        }
    }

    /// Whether this replica has caught up with its peers (module documentation); the daemon's readiness.
    pub fn caught_up(&self) -> bool {
        self.shared.update_caught_up();
        self.shared.caught_up.load(Ordering::Acquire)
    }

    /// Current state of peers and subscribers.
    pub fn status(&self) -> Status {
        let s = &self.shared;
        let caught_up = self.caught_up();
        let peers = lock(&s.peers)
            .values()
            .map(|p| {
                let mut st = p.status.clone();
                let mut lags: Vec<u64> = p.lags.iter().copied().collect();
                lags.sort_unstable();
                st.lag_samples = lags.len();
                st.lag_ms_p50 = percentile(&lags, 50);
                st.lag_ms_p99 = percentile(&lags, 99);
                st
            })
            .collect();
        let subscribers = lock(&s.subscribers)
            .iter()
            .map(|sub| SubscriberStatus {
                replica_id: sub.replica_id,
                remote: sub.remote,
                queued: lock(&sub.queue).deltas.len(),
                deltas_sent: sub.deltas_sent.load(Ordering::Relaxed),
                snapshots_sent: sub.snapshots_sent.load(Ordering::Relaxed),
                overflows: sub.overflows.load(Ordering::Relaxed),
                repairs_sent: sub.repairs_sent.load(Ordering::Relaxed),
                acked: sub.acked.load(Ordering::Relaxed),
            })
            .collect();
        Status {
            replica_id: s.replica_id(),
            caught_up,
            shutting_down: s.shutting_down.load(Ordering::Relaxed),
            peers,
            subscribers,
            published: s.published.load(Ordering::Relaxed),
            overflows: s.overflows.load(Ordering::Relaxed),
            snapshots_sent: s.snapshots_sent.load(Ordering::Relaxed),
            tls_reloads: s.tls_reloads.load(Ordering::Relaxed),
            tls_reload_errors: s.tls_reload_errors.load(Ordering::Relaxed),
            tls_handshake_errors: s.tls_handshake_errors.load(Ordering::Relaxed),
        }
    }

    /// Flushes queued deltas to every subscriber (waiting at most `flush_timeout_ms` for their acknowledgements),
    /// closes all connections and stops the runtime. Blocks the caller until done.
    pub fn shutdown(mut self) -> ShutdownReport {
        self.stop()
    }

    fn stop(&mut self) -> ShutdownReport {
        let subscribers = lock(&self.shared.subscribers).len();
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.shutdown.send_replace(true);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("replication runtime thread panicked");
        }
        ShutdownReport {
            subscribers,
            flushed: usize::try_from(self.shared.flushed.load(Ordering::Acquire)).unwrap_or(usize::MAX),
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted.get(i.min(sorted.len() - 1)).copied()
}

/// The runtime's main task: server, peer manager, housekeeping; returns after shutdown finished.
async fn run(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    let server = tokio::spawn(server::serve(shared.clone(), listener));
    let peers = tokio::spawn(client::manage(shared.clone()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => housekeeping(&shared),
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    if let Err(e) = peers.await {
        tracing::warn!("replication peer manager ended abnormally: {e}");
    }
    if let Err(e) = server.await {
        tracing::warn!("replication server ended abnormally: {e}");
    }
}

fn housekeeping(shared: &Shared) {
    let now = (shared.now)();
    lock(&shared.store).gc(now.instant);
    shared.update_caught_up();
    if let Some(tls) = &shared.tls {
        match tls.reload_if_changed() {
            Ok(true) => {
                shared.tls_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("replication: TLS certificates reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                shared.tls_reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("replication: TLS reload failed, keeping the old certificates: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
    }
}

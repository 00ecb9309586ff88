//! `e2e bench replication`: the replication figures issue 5 asks for.
//!
//! In-process (two `mip_replication::transport::Replicator`s in this process over 127.0.0.1, plaintext gRPC,
//! each with its own 2-worker tokio runtime; the measurements that used to be `replication/benches/snapshot.rs`):
//! * **snapshot**: `bindings` records (one binding each) from a replicator to a fresh one, from the fresh one's
//!   start until its peer status says the snapshot is complete (target ≤ 5 s for 10⁶);
//! * **memory**: heap bytes per record of the sending and the receiving `ReplicaStore` and per binding of a
//!   `mip::binding::BindingCache` holding as many; a replica holds both, so the target (≤ 256 B per binding) is
//!   checked against their sum;
//! * **lag**: deltas published at `rate`/s for `seconds` (refreshes of existing nodes, one delta each); p50/p99
//!   of the receiver's lag samples (publisher's HLC wall time → applied, ms resolution);
//! * **burst**: `burst` deltas published as fast as possible, until all are applied at the receiver.
//!
//! Through the real daemons (needs root and the lab: [`Mode::Replicas`], 1, 2 and 3 `mip-proxy` replicas behind
//! the ECMP router, one `mip-ha`, replication over gRPC with mTLS): **registrations per second**, two
//! [`storm`](mod@crate::storm)s of `storm_nodes` synthetic nodes from ns `inet`: every node's first registration,
//! then `storm_rounds` re-registrations of each; with how many bindings each replica holds after the first
//! (every replica must hold every node) and the replication lag the replicas report after the second.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use mip::binding::{Binding, BindingCache, Encapsulation, TunnelEndpoint};
use mip::roles::{BindingChange, BindingChangeKind, Now};
use mip::time::{Instant, NtpTimestamp};
use mip_replication::transport::{PeerStatus, Replicator, SharedStore};
use mip_replication::{Delta, IdentOrder, ReplicaStore, ReplicationConfig};

use crate::error::{Error, Result};
use crate::plan;
use crate::storm::{self, StormOptions, StormReport};
use crate::system::{self, System, SystemOptions};
use crate::topology::{Lab, LabOptions, Mode};

/// Target of issue 5: a fresh replica receives 10⁶ bindings within this many seconds.
pub const SNAPSHOT_TARGET_S: f64 = 5.0;
/// Target of issue 5: heap bytes per binding.
pub const MEMORY_TARGET_BYTES: usize = 256;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ReplicationBenchOptions {
    /// Bindings of the snapshot (and of the memory figures).
    pub bindings: u32,
    /// Lag: deltas per second.
    pub rate: u32,
    /// Lag: for how long.
    pub seconds: u32,
    /// Burst: deltas published as fast as possible (at most `bindings`).
    pub burst: u32,
    /// Registrations per second: synthetic nodes.
    pub storm_nodes: u32,
    /// Registrations per second: re-registrations per node after the first registration.
    pub storm_rounds: u32,
    /// Registrations per second: UDP source ports of the storm (spread over the replicas by ECMP).
    pub storm_senders: usize,
    /// Registrations per second: requests outstanding per source port.
    pub storm_window: usize,
    /// Registrations per second: the replica counts to measure (each in a fresh lab); empty = skip the lab.
    pub replicas: Vec<usize>,
    /// The `e2e` binary for the lab's helpers (`None`: the running binary if it is `e2e`; see [`LabOptions`]).
    pub e2e_bin: Option<std::path::PathBuf>,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
}

impl Default for ReplicationBenchOptions {
    fn default() -> Self {
        ReplicationBenchOptions {
            bindings: 1_000_000,
            rate: 5_000,
            seconds: 5,
            burst: 200_000,
            storm_nodes: 2_000,
            storm_rounds: 20,
            storm_senders: 12,
            storm_window: 8,
            replicas: vec![1, 2, 3],
            e2e_bin: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ReplicationBenchOptions {}

/// Snapshot to a fresh replica.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotResult {
    /// Records sent.
    pub bindings: u32,
    /// From the fresh replicator's start to its complete snapshot, seconds.
    pub seconds: f64,
    /// `bindings / seconds`.
    pub records_per_s: f64,
    /// [`SNAPSHOT_TARGET_S`].
    pub target_s: f64,
    /// `seconds <= target_s` (the target is for 10⁶ bindings).
    pub met: bool,
}

/// Heap bytes per binding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryResult {
    /// Records/bindings measured.
    pub bindings: u32,
    /// The publishing `ReplicaStore` (filled by `apply_local`, pre-sized).
    pub sender_bytes_per_binding: usize,
    /// The receiving `ReplicaStore` (filled by the snapshot, pre-sized).
    pub receiver_bytes_per_binding: usize,
    /// A `mip::binding::BindingCache` (the proxy's cache, pre-sized).
    pub binding_cache_bytes_per_binding: usize,
    /// What a replica holds per binding: its binding cache plus the larger store figure.
    pub replica_bytes_per_binding: usize,
    /// [`MEMORY_TARGET_BYTES`].
    pub target: usize,
    /// `replica_bytes_per_binding <= target`.
    pub met: bool,
}

/// Replication lag at a steady rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LagResult {
    /// Deltas per second asked for.
    pub rate: u32,
    /// Seconds asked for.
    pub seconds: u32,
    /// Deltas published.
    pub deltas: u64,
    /// Deltas per second achieved by the publisher.
    pub achieved_rate: f64,
    /// Median lag, ms (millisecond resolution).
    pub p50_ms: f64,
    /// 99th percentile lag, ms.
    pub p99_ms: f64,
    /// Lag samples the receiver kept (the most recent, up to 8192).
    pub samples: usize,
    /// Every delta was applied at the receiver.
    pub all_applied: bool,
}

/// Deltas as fast as possible.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BurstResult {
    /// Deltas published.
    pub deltas: u32,
    /// Time to publish them, seconds.
    pub publish_seconds: f64,
    /// Time until all were applied at the receiver, seconds.
    pub seconds: f64,
    /// `deltas / seconds`, end to end.
    pub per_s: f64,
    /// Every delta was applied at the receiver.
    pub all_applied: bool,
}

/// Registrations per second through `replicas` real `mip-proxy` replicas.
///
/// Two storms: every node's first registration (a new binding at the proxies and at the HA, which installs a
/// host route and a proxy ARP entry per new binding), then `storm_rounds` re-registrations of every node (the
/// steady state: a node re-registers before each lifetime ends). The headline figures are the re-registrations'.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegistrationsResult {
    /// Replicas running (behind the ECMP router).
    pub replicas: usize,
    /// Accepted re-registrations per second.
    pub per_second: f64,
    /// Re-registrations accepted.
    pub accepted: u64,
    /// Re-registrations sent.
    pub sent: u64,
    /// Median re-registration time (request → reply at the node), ms.
    pub latency_ms_p50: f64,
    /// 99th percentile, ms.
    pub latency_ms_p99: f64,
    /// Synthetic nodes.
    pub storm_nodes: u32,
    /// UDP source ports the nodes are spread over (ECMP hashes them over the replicas).
    pub senders: usize,
    /// Requests outstanding per sender.
    pub window: usize,
    /// The first registrations (new bindings).
    pub first_registrations: StormReport,
    /// The re-registrations (`storm_rounds` per node).
    pub refreshes: StormReport,
    /// `mip_bindings` of each replica after the first registrations, once converged (or at the deadline).
    pub bindings_per_replica: Vec<f64>,
    /// After the first registrations, until every replica held a binding for every node, seconds (`None`: not
    /// within 30 s).
    pub converged_after_s: Option<f64>,
    /// `mip_replication_lag_seconds{quantile="0.99"}` of each replica after the re-registrations, ms.
    pub replica_lag_p99_ms: Vec<f64>,
    /// Registrations the HA handled during the re-registrations (`mip_registrations_total`): every one is
    /// relayed, so this equals `sent` plus retransmissions.
    pub ha_registrations: f64,
}

/// Where the figures come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Environment {
    /// CPUs available to this process.
    pub cores: usize,
    /// What ran in-process.
    pub in_process: String,
    /// What ran through real daemons.
    pub through_daemons: String,
}

/// The whole benchmark's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplicationReport {
    /// Snapshot to a fresh replica.
    pub snapshot: SnapshotResult,
    /// Heap bytes per binding.
    pub memory: MemoryResult,
    /// Lag at a steady rate.
    pub lag: LagResult,
    /// Deltas as fast as possible.
    pub burst: BurstResult,
    /// Registrations per second with 1, 2, 3 replicas (empty if the lab part was skipped).
    pub registrations_per_second: Vec<RegistrationsResult>,
    /// Where the figures come from.
    pub environment: Environment,
}

impl ReplicationReport {
    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Human summary, one line per figure.
    pub fn table(&self) -> String {
        let s = &self.snapshot;
        let m = &self.memory;
        let l = &self.lag;
        let b = &self.burst;
        let yes = |met: bool| if met { "met" } else { "NOT met" };
        let mut out = vec![
            format!(
                "snapshot: {} bindings to a fresh replica in {:.2} s ({:.0} records/s; target <= {} s: {})",
                s.bindings,
                s.seconds,
                s.records_per_s,
                s.target_s,
                yes(s.met)
            ),
            format!(
                "memory: replica store {} B (sender) / {} B (receiver), binding cache {} B, replica {} B per binding \
                 (target <= {} B: {})",
                m.sender_bytes_per_binding,
                m.receiver_bytes_per_binding,
                m.binding_cache_bytes_per_binding,
                m.replica_bytes_per_binding,
                m.target,
                yes(m.met)
            ),
            format!(
                "lag at {}/s for {} s ({:.0}/s achieved): p50 {} ms, p99 {} ms ({} samples, ms resolution)",
                l.rate, l.seconds, l.achieved_rate, l.p50_ms, l.p99_ms, l.samples
            ),
            format!(
                "burst: {} deltas published in {:.2} s, all applied after {:.2} s ({:.0} deltas/s end to end)",
                b.deltas, b.publish_seconds, b.seconds, b.per_s
            ),
        ];
        for r in &self.registrations_per_second {
            let f = &r.first_registrations;
            out.push(format!(
                "registrations with {} replica(s): re-registrations {:.0}/s ({} of {} accepted), latency p50 {:.2} ms \
                 p99 {:.2} ms; first registrations {:.0}/s ({} of {} accepted, p50 {:.2} ms); bindings per replica \
                 {:?}, converged after {}; {} at the HA",
                r.replicas,
                r.per_second,
                r.accepted,
                r.sent,
                r.latency_ms_p50,
                r.latency_ms_p99,
                f.per_second,
                f.accepted,
                f.sent,
                f.latency_ms_p50,
                r.bindings_per_replica,
                r.converged_after_s
                    .map_or_else(|| "(not within 30 s)".to_owned(), |s| format!("{s:.2} s")),
                r.ha_registrations
            ));
        }
        out.join("\n")
    }
}

/// Runs the whole benchmark: [`in_process`], then [`registrations_per_second`] for each of `opts.replicas`.
/// `log` gets a line per phase.
pub fn bench_replication(opts: &ReplicationBenchOptions, log: &mut dyn FnMut(&str)) -> Result<ReplicationReport> {
    let InProcess {
        snapshot,
        memory,
        lag,
        burst,
    } = in_process(opts, log)?;
    let mut registrations = Vec::new();
    for &k in &opts.replicas {
        crate::error::interrupted(&opts.stop)?;
        log(&format!(
            "registrations: {k} replica(s), {} nodes: first registrations, then {} re-registrations each",
            opts.storm_nodes, opts.storm_rounds
        ));
        let r = registrations_per_second(opts, k)?;
        log(&format!("  first registrations: {}", r.first_registrations.summary()));
        log(&format!("  re-registrations: {}", r.refreshes.summary()));
        registrations.push(r);
    }
    Ok(ReplicationReport {
        snapshot,
        memory,
        lag,
        burst,
        registrations_per_second: registrations,
        environment: Environment {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            in_process: "snapshot, memory, lag, burst: two mip_replication Replicators in one process over \
                         127.0.0.1 (plaintext gRPC, 2 tokio workers each), stores filled by apply_local; no daemon, \
                         no TLS"
                .into(),
            through_daemons: if opts.replicas.is_empty() {
                "registrations per second: skipped".into()
            } else {
                "registrations per second: the namespace lab (Mode::Replicas; the daemons next to the e2e binary): 1-3 \
                 mip-proxy replicas behind the ECMP router (L4 hash), the reference mip-ha (one per lab, it installs \
                 a host route and a proxy ARP entry per new binding, which bounds first registrations), replication \
                 over gRPC with mTLS; registration storms of synthetic nodes from ns inet (crate::storm); the storm, \
                 the replicas and the HA share the same cores, so more replicas add work, not CPU"
                    .into()
            },
        },
    })
}

/// The in-process figures.
#[derive(Debug, Clone, PartialEq)]
pub struct InProcess {
    /// Snapshot to a fresh replica.
    pub snapshot: SnapshotResult,
    /// Heap bytes per binding.
    pub memory: MemoryResult,
    /// Lag at a steady rate.
    pub lag: LagResult,
    /// Deltas as fast as possible.
    pub burst: BurstResult,
}

/// A monotonic clock on an origin of its own (1,000 s in, so no instant is near zero) with the wall clock for
/// the HLC, as a daemon's loop provides.
#[derive(Debug, Clone, Copy)]
struct Clock {
    origin: StdInstant,
}

impl Clock {
    fn now(&self) -> Now {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1_000_000;
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Now::new(Instant::from_millis(ms), NtpTimestamp::from_unix(wall))
    }
}

/// A registration of node `i` (home address 10.0.0.0 + i, care-of address in 192.0.0.0/16, RFC 3519 tunnel).
fn change(i: u32, ident: u64, at: Instant) -> BindingChange {
    BindingChange {
        kind: BindingChangeKind::Created,
        home_address: Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)),
        nai: None,
        binding: binding(i, ident, at),
    }
}

fn binding(i: u32, ident: u64, at: Instant) -> Binding {
    let coa = Ipv4Addr::from(0xc000_0000 + (i & 0xffff));
    Binding::new(
        coa,
        TunnelEndpoint {
            addr: coa,
            port: 4500,
            encapsulation: Encapsulation::UdpIpInIp,
        },
        Ipv4Addr::new(10, 255, 0, 1),
        ident,
        600,
        at,
    )
}

fn lock(store: &SharedStore) -> Result<MutexGuard<'_, ReplicaStore>> {
    store
        .lock()
        .map_err(|_| Error::Usage("the replica store's lock is poisoned".into()))
}

fn start(id: u32, peers: Vec<SocketAddr>, store: SharedStore, clock: Clock) -> Result<Replicator> {
    let mut c = ReplicationConfig::plaintext(id, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), peers);
    // Large enough that neither the lag nor the burst phase overflows into a second snapshot.
    c.queue_limit = 1 << 20;
    Replicator::start(c, store, Arc::new(move || clock.now()), Arc::new(|| {}))
        .map_err(|e| Error::Usage(format!("starting replicator {id}: {e}")))
}

/// The receiver's status of its (only) peer.
fn peer(r: &Replicator) -> PeerStatus {
    r.status().peers.into_iter().next().unwrap_or_default()
}

fn wait(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let t = StdInstant::now();
    while !f() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Publishes a local registration of node `i` with Identification `ident`.
fn publish(a: &Replicator, store: &SharedStore, clock: Clock, i: u32, ident: u64) -> Result<()> {
    let t = clock.now();
    let d: Option<Delta> = lock(store)?.apply_local(&change(i, ident, t.instant), IdentOrder::Timestamp, t);
    let d = d.ok_or_else(|| Error::Usage(format!("apply_local refused node {i} (identification {ident})")))?;
    a.publish(d);
    Ok(())
}

/// Snapshot, memory, lag and burst with two replicators in this process (see the module documentation).
pub fn in_process(opts: &ReplicationBenchOptions, log: &mut dyn FnMut(&str)) -> Result<InProcess> {
    let n = opts.bindings.max(1);
    let n_usize = usize::try_from(n).unwrap_or(usize::MAX);
    let clock = Clock {
        origin: StdInstant::now(),
    };

    // Fill the publisher.
    log(&format!("filling a replica store with {n} bindings"));
    let mut store = ReplicaStore::with_capacity(1, n_usize);
    let t0 = clock.now();
    for i in 0..n {
        store
            .apply_local(&change(i, 1, t0.instant), IdentOrder::Timestamp, t0)
            .ok_or_else(|| Error::Usage(format!("apply_local refused node {i}")))?;
    }
    let sender_bytes = store.approx_heap_bytes() / store.len().max(1);
    let a_store: SharedStore = Arc::new(Mutex::new(store));
    let a = start(1, vec![], a_store.clone(), clock)?;
    crate::error::interrupted(&opts.stop)?;

    // Snapshot to a fresh replica.
    log("snapshot to a fresh replica");
    let b_store: SharedStore = Arc::new(Mutex::new(ReplicaStore::with_capacity(2, n_usize)));
    let started = StdInstant::now();
    let b = start(2, vec![a.local_addr()], b_store.clone(), clock)?;
    if !wait(|| peer(&b).snapshot_received, Duration::from_secs(120)) {
        return Err(Error::Timeout {
            what: format!("the snapshot of {n} bindings"),
            waited: Duration::from_secs(120),
        });
    }
    let snap = started.elapsed().as_secs_f64();
    let received = lock(&b_store)?.len();
    if received != n_usize {
        return Err(Error::Usage(format!(
            "the fresh replica holds {received} records after the snapshot, not {n}"
        )));
    }
    let receiver_bytes = lock(&b_store)?.approx_heap_bytes() / n_usize;
    let snapshot = SnapshotResult {
        bindings: n,
        seconds: snap,
        records_per_s: f64::from(n) / snap.max(1e-9),
        target_s: SNAPSHOT_TARGET_S,
        met: snap <= SNAPSHOT_TARGET_S,
    };
    log(&format!("  {snap:.2} s"));
    crate::error::interrupted(&opts.stop)?;

    // Lag at a steady rate: refreshes of existing nodes.
    log(&format!("lag: {}/s for {} s", opts.rate, opts.seconds));
    let rate = opts.rate.max(1);
    let total = u64::from(rate) * u64::from(opts.seconds);
    let before = peer(&b).records_applied;
    let begin = StdInstant::now();
    for k in 0..total {
        let due = begin + Duration::from_micros(k.saturating_mul(1_000_000) / u64::from(rate));
        if let Some(d) = due.checked_duration_since(StdInstant::now()) {
            std::thread::sleep(d);
        }
        let i = u32::try_from(k % u64::from(n)).unwrap_or(0);
        publish(&a, &a_store, clock, i, 2 + k / u64::from(n))?;
        if k % 1024 == 0 {
            crate::error::interrupted(&opts.stop)?;
        }
    }
    let published_in = begin.elapsed().as_secs_f64();
    let all_applied = wait(|| peer(&b).records_applied >= before + total, Duration::from_secs(30));
    let p = peer(&b);
    let lag = LagResult {
        rate,
        seconds: opts.seconds,
        deltas: total,
        achieved_rate: total as f64 / published_in.max(1e-9),
        p50_ms: p.lag_ms_p50.unwrap_or(0) as f64,
        p99_ms: p.lag_ms_p99.unwrap_or(0) as f64,
        samples: p.lag_samples,
        all_applied,
    };
    log(&format!("  p50 {} ms, p99 {} ms", lag.p50_ms, lag.p99_ms));
    crate::error::interrupted(&opts.stop)?;

    // Burst.
    let deltas = opts.burst.min(n);
    log(&format!("burst: {deltas} deltas"));
    let before = peer(&b).records_applied;
    let begin = StdInstant::now();
    for i in 0..deltas {
        publish(&a, &a_store, clock, i, 1_000_000)?;
    }
    let publish_seconds = begin.elapsed().as_secs_f64();
    let all_applied = wait(
        || peer(&b).records_applied >= before + u64::from(deltas),
        Duration::from_secs(60),
    );
    let all = begin.elapsed().as_secs_f64();
    let burst = BurstResult {
        deltas,
        publish_seconds,
        seconds: all,
        per_s: f64::from(deltas) / all.max(1e-9),
        all_applied,
    };
    drop(b);
    drop(a);
    drop(a_store);
    drop(b_store);
    crate::error::interrupted(&opts.stop)?;

    // The proxy's binding cache with as many bindings.
    log(&format!("binding cache with {n} bindings"));
    let mut cache = BindingCache::with_capacity(n_usize);
    let at = clock.now().instant;
    for i in 0..n {
        cache
            .upsert(
                Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)),
                None,
                binding(i, 1, at),
                false,
            )
            .map_err(|e| Error::Usage(format!("binding cache refused node {i}: {e:?}")))?;
    }
    let cache_bytes = cache.approx_heap_bytes() / cache.len().max(1);
    drop(cache);
    let replica_bytes = cache_bytes + sender_bytes.max(receiver_bytes);
    let memory = MemoryResult {
        bindings: n,
        sender_bytes_per_binding: sender_bytes,
        receiver_bytes_per_binding: receiver_bytes,
        binding_cache_bytes_per_binding: cache_bytes,
        replica_bytes_per_binding: replica_bytes,
        target: MEMORY_TARGET_BYTES,
        met: replica_bytes <= MEMORY_TARGET_BYTES,
    };
    Ok(InProcess {
        snapshot,
        memory,
        lag,
        burst,
    })
}

/// Registrations per second through `replicas` real `mip-proxy` replicas: a fresh [`Mode::Replicas`] lab, the
/// system with `storm_nodes` synthetic nodes (no foreign agents), a storm of first registrations from ns
/// `inet`, then each replica's
/// bindings (until every replica holds every node), a second storm of re-registrations, and each replica's
/// replication lag from its `/metrics` (see [`RegistrationsResult`]).
pub fn registrations_per_second(opts: &ReplicationBenchOptions, replicas: usize) -> Result<RegistrationsResult> {
    let mut lab = Lab::up(LabOptions {
        mode: Mode::Replicas,
        e2e_bin: opts.e2e_bin.clone(),
        ..LabOptions::default()
    })?;
    let sys = System::start(
        &mut lab,
        SystemOptions {
            replicas,
            storm_nodes: opts.storm_nodes,
            foreign_agents: false,
            ..SystemOptions::default()
        },
    )?;
    crate::error::interrupted(&opts.stop)?;
    let first = StormOptions {
        nodes: opts.storm_nodes,
        rounds: 1,
        senders: opts.storm_senders,
        src: plan::INET_DMZ,
        dst: SocketAddrV4::new(plan::PROXY_PUBLIC, storm::MIP_PORT),
        lifetime: 600,
        rate: None,
        window: opts.storm_window,
        timeout: Duration::from_secs(3),
        retransmits: 1,
        deregister: false,
    };
    let inet = lab.ns("inet");
    let first_registrations = storm::run_storm(&inet, &first)?;
    let done = StdInstant::now();
    let namespaces: Vec<String> = (0..sys.replica_count()).map(|i| lab.ns(sys.replica_ns(i))).collect();
    let read = |ns: &String| system::admin_get(ns, "/metrics");
    let mut bindings_per_replica = vec![0.0; namespaces.len()];
    let mut converged_after_s = None;
    while done.elapsed() < Duration::from_secs(30) {
        bindings_per_replica = namespaces
            .iter()
            .map(|ns| read(ns).map(|t| system::metric(&t, "mip_bindings")))
            .collect::<Result<Vec<f64>>>()?;
        if bindings_per_replica.iter().all(|b| *b >= f64::from(opts.storm_nodes)) {
            converged_after_s = Some(done.elapsed().as_secs_f64());
            break;
        }
        crate::error::interrupted(&opts.stop)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::error::interrupted(&opts.stop)?;
    let ha = lab.ns("ha");
    let ha_registrations =
        || system::admin_get(&ha, "/metrics").map(|t| system::metric_sum(&t, "mip_registrations_total", &[]));
    let ha_before = ha_registrations()?;
    let refreshes = storm::run_storm(
        &inet,
        &StormOptions {
            rounds: opts.storm_rounds.max(1),
            ..first
        },
    )?;
    let ha_registrations = ha_registrations()? - ha_before;
    let replica_lag_p99_ms = namespaces
        .iter()
        .map(|ns| read(ns).map(|t| system::metric(&t, "mip_replication_lag_seconds{quantile=\"0.99\"}") * 1000.0))
        .collect::<Result<Vec<f64>>>()?;
    drop(sys);
    lab.down()?;
    Ok(RegistrationsResult {
        replicas,
        per_second: refreshes.per_second,
        accepted: refreshes.accepted,
        sent: refreshes.sent,
        latency_ms_p50: refreshes.latency_ms_p50,
        latency_ms_p99: refreshes.latency_ms_p99,
        storm_nodes: opts.storm_nodes,
        senders: first.senders,
        window: first.window,
        first_registrations,
        refreshes,
        bindings_per_replica,
        converged_after_s,
        replica_lag_p99_ms,
        ha_registrations,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    /// The in-process part at a small scale: every phase completes, every record arrives, the report
    /// serialises with the documented fields.
    #[test]
    fn in_process_small() {
        let opts = ReplicationBenchOptions {
            bindings: 5_000,
            rate: 2_000,
            seconds: 1,
            burst: 2_000,
            replicas: vec![],
            ..ReplicationBenchOptions::default()
        };
        let r = in_process(&opts, &mut |_| {}).unwrap();
        assert_eq!(r.snapshot.bindings, 5_000);
        assert!(r.snapshot.seconds > 0.0);
        assert!(r.lag.all_applied && r.burst.all_applied, "{r:?}");
        assert_eq!(r.lag.deltas, 2_000);
        assert!(r.memory.sender_bytes_per_binding > 0 && r.memory.binding_cache_bytes_per_binding > 0);
        let report = ReplicationReport {
            snapshot: r.snapshot,
            memory: r.memory,
            lag: r.lag,
            burst: r.burst,
            registrations_per_second: vec![],
            environment: Environment {
                cores: 2,
                in_process: String::new(),
                through_daemons: String::new(),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for ptr in [
            "/snapshot/records_per_s",
            "/snapshot/target_s",
            "/snapshot/met",
            "/memory/sender_bytes_per_binding",
            "/memory/receiver_bytes_per_binding",
            "/memory/target",
            "/memory/met",
            "/lag/p50_ms",
            "/lag/p99_ms",
            "/lag/samples",
            "/burst/deltas",
            "/burst/per_s",
            "/registrations_per_second",
            "/environment/cores",
        ] {
            assert!(v.pointer(ptr).is_some(), "{ptr} missing");
        }
        assert!(!report.table().is_empty());
    }
}

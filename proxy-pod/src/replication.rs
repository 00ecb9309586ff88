//! Replication of the proxy's binding cache and replay state between replicas (scale-out, issue 5): the glue
//! between the relay ([`Proxy`]) in the event loop and `mip-replication` (a [`ReplicaStore`] shared with a
//! [`Replicator`] on its own runtime thread).
//!
//! * **Out**: every [`BindingChange`] the relay outputs (registration, refresh, half-bound completion,
//!   deregistration, expiry) goes through [`ReplicaStore::apply_local`], and the node's replay state (the
//!   Identification of its last accepted registration, SPI of its first MN-HA SA) through
//!   [`ReplicaStore::apply_local_replay`]; the deltas are [`Replicator::publish`]ed.
//! * **In**: the transport applies the peers' records to the store and wakes the loop (the loop's
//!   [`mio::Waker`]); [`Replication::mirror`] then drains [`ReplicaStore::take_remote_changes`] into
//!   [`Proxy::apply_replicated`]: a node's bindings replace the local ones, a replay record moves the node's
//!   `last_accepted` forward (with the node's current bindings from the store), so a request replayed here is
//!   refused with code 133 as it would be at the peer. A local change that lost to a newer peer write comes
//!   back the same way.
//! * **Readiness**: [`Replication::caught_up`] ([`Replicator::caught_up`]); at SIGTERM [`Replication::shutdown`]
//!   flushes the queued deltas to the peers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use mip::binding::{BindingKey, INFINITE_LIFETIME};
use mip::daemon::replication::ReplicationConfig;
use mip::replay::ReplayStyle;
use mip::roles::proxy::{Proxy, ReplicatedNode};
use mip::roles::{BindingChange, Now};
use mip_io::clock::Clock;
use mip_replication::transport::{Replicator, SharedStore, Status};
use mip_replication::{IdentOrder, RemoteChange, ReplayValue, ReplicaStore};

use crate::metrics::ReplicationMetrics;

/// Remote changes mirrored per turn of the loop (the rest on the next, at once).
pub const MIRROR_BATCH: usize = 4096;
/// How often the status is turned into metrics.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// The replication side of one replica.
#[derive(Debug)]
pub struct Replication {
    store: SharedStore,
    replicator: Option<Replicator>,
    /// Remote changes being mirrored, with the `traceparent` of the peer's span that made each traced one.
    changes: Vec<(RemoteChange, Option<Box<str>>)>,
    /// The last drain hit [`MIRROR_BATCH`]: more are waiting.
    backlog: bool,
    /// Caught up, and everything received up to then is in the relay's cache (latched).
    ready: bool,
    metrics: ReplicationMetrics,
    last_status: Option<StdInstant>,
    seen: Seen,
}

/// Cumulative values of the last status, to turn them into counter increments.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    snapshots_received: u64,
    snapshots_sent: u64,
    overflows: u64,
}

fn lock(m: &Mutex<ReplicaStore>) -> MutexGuard<'_, ReplicaStore> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `apply` span of mirroring `change` (at replica `replica_id`) as a child of the peer's span
/// `traceparent`: `None` when traces are not exported or the traceparent is unusable.
fn apply_span(change: &RemoteChange, replica_id: u32, traceparent: &str) -> Option<tracing::Span> {
    let (what, home_address, nai) = match change {
        RemoteChange::Bindings { home_address, nai, .. } => ("bindings", home_address, nai),
        RemoteChange::Removed { home_address, nai } => ("removed", home_address, nai),
        RemoteChange::Replay { home_address, nai, .. } => ("replay", home_address, nai),
    };
    let span = tracing::info_span!(target: "mip_trace", "apply",
        mip.replicated = what,
        mip.home_address = %home_address,
        mip.nai = nai.as_deref(),
        mip.replica_id = i64::from(replica_id));
    mip_io::telemetry::set_remote_parent(&span, traceparent).then_some(span)
}

/// The order of a node's Identifications: timestamps order registrations, nonces do not.
fn order_of(style: Option<ReplayStyle>) -> IdentOrder {
    match style {
        Some(ReplayStyle::Nonce) => IdentOrder::Nonce,
        _ => IdentOrder::Timestamp,
    }
}

/// The node's first MN-HA SA (the one [`Proxy::apply_replicated`] uses): SPI and replay style.
fn node_sa(proxy: &Proxy, home_address: core::net::Ipv4Addr, nai: Option<&str>) -> Option<(u32, ReplayStyle)> {
    let keys = proxy.keys();
    let sas = if home_address.is_unspecified() {
        nai.map_or(&[][..], |n| keys.for_nai(n))
    } else {
        keys.for_peer(home_address)
    };
    sas.first().map(|sa| (sa.spi().get(), sa.replay))
}

impl Replication {
    /// Binds the replication listener and starts the transport as replica `replica_id` (`config.replica_id`, or
    /// the one derived from the node address: [`mip::daemon::ProxyFile::replica_id`]); `waker` wakes the event
    /// loop when peers' records were applied.
    pub fn start(
        config: &ReplicationConfig,
        replica_id: u32,
        clock: Clock,
        waker: Arc<mio::Waker>,
        metrics: ReplicationMetrics,
    ) -> Result<Replication, String> {
        let store: SharedStore = Arc::new(Mutex::new(ReplicaStore::new(replica_id)));
        let now = Arc::new(move || clock.now());
        let wake = Arc::new(move || {
            if let Err(e) = waker.wake() {
                tracing::debug!(error = %e, "waking the event loop");
            }
        });
        let replicator = Replicator::start(config.clone(), Arc::clone(&store), now, wake).map_err(|e| e.to_string())?;
        tracing::info!(
            replica_id,
            replica_id_from = if config.replica_id.is_some() { "replication.replica_id" } else { "node address" },
            listen = %replicator.local_addr(),
            peers = ?config.peers,
            tls = config.tls.is_some(),
            "replication started"
        );
        Ok(Replication {
            store,
            replicator: Some(replicator),
            changes: Vec::with_capacity(64),
            backlog: false,
            ready: false,
            metrics,
            last_status: None,
            seen: Seen::default(),
        })
    }

    /// Records a binding change the relay made, and the node's replay state, and publishes what changed.
    pub fn publish_change(&mut self, proxy: &Proxy, change: &BindingChange, now: Now) {
        self.publish_change_traced(proxy, change, now, None);
    }

    /// [`publish_change`](Self::publish_change) made in the registration trace whose `replicate` span has the
    /// W3C `traceparent`: the deltas carry it, and the peers' `apply` spans join the trace.
    pub fn publish_change_traced(
        &mut self,
        proxy: &Proxy,
        change: &BindingChange,
        now: Now,
        traceparent: Option<&str>,
    ) {
        let sa = node_sa(proxy, change.home_address, change.nai.as_deref());
        let order = order_of(sa.map(|(_, s)| s));
        let mut deltas = Vec::with_capacity(2);
        {
            let mut store = lock(&self.store);
            // Replay first: a peer that has the binding already refuses the request replayed.
            if let Some((spi, _)) = sa
                && let Some(last) = proxy.last_accepted(change.home_address, change.nai.as_deref())
            {
                let value = ReplayValue {
                    last_accepted: Some(last),
                    nonce_issued: proxy.issued_nonce(change.home_address, change.nai.as_deref()),
                };
                deltas.extend(store.apply_local_replay(
                    change.home_address,
                    change.nai.as_deref(),
                    spi,
                    value,
                    order,
                    now,
                ));
            }
            deltas.extend(store.apply_local(change, order, now));
            if store.pending_remote_changes() > 0 {
                // A change lost to a newer peer write: re-read the key on this turn.
                self.backlog = true;
            }
        }
        if let Some(r) = &self.replicator {
            for d in deltas {
                r.publish_traced(d, traceparent);
                self.metrics.published.inc();
            }
        }
    }

    /// Records the replay state of a node whose registration was accepted without a binding change (a
    /// deregistration of a node without bindings, say).
    pub fn publish_replay(&mut self, proxy: &Proxy, home_address: core::net::Ipv4Addr, now: Now) {
        let Some((spi, style)) = node_sa(proxy, home_address, None) else {
            return;
        };
        let Some(last) = proxy.last_accepted(home_address, None) else {
            return;
        };
        let value = ReplayValue {
            last_accepted: Some(last),
            nonce_issued: proxy.issued_nonce(home_address, None),
        };
        let delta = lock(&self.store).apply_local_replay(home_address, None, spi, value, order_of(Some(style)), now);
        if let (Some(d), Some(r)) = (delta, &self.replicator) {
            r.publish(d);
            self.metrics.published.inc();
        }
    }

    /// Mirrors the peers' changes into the relay's cache and replay state; returns how many were applied.
    pub fn mirror(&mut self, proxy: &mut Proxy, now: Now) -> usize {
        let mut changes = core::mem::take(&mut self.changes);
        changes.clear();
        let mut applied = 0;
        // Read before draining: once it is true the snapshots are in the store, so this drain mirrors them.
        let caught_up = self.replicator.as_ref().is_some_and(Replicator::caught_up);
        {
            let mut store = lock(&self.store);
            let n = store.take_remote_changes_traced(now.instant, MIRROR_BATCH, &mut changes);
            let replica_id = store.replica_id();
            self.backlog = n >= MIRROR_BATCH;
            for (c, traceparent) in &changes {
                // A change made in a registration's trace: applying it here joins that trace.
                let _apply = traceparent.as_deref().and_then(|tp| apply_span(c, replica_id, tp));
                let result = match c {
                    RemoteChange::Bindings {
                        home_address,
                        nai,
                        bindings,
                    } => proxy.apply_replicated(&ReplicatedNode {
                        home_address: *home_address,
                        nai: nai.as_deref(),
                        bindings,
                        last_accepted: None,
                        nonce_issued: None,
                    }),
                    RemoteChange::Removed { home_address, nai } => proxy.apply_replicated(&ReplicatedNode {
                        home_address: *home_address,
                        nai: nai.as_deref(),
                        bindings: &[],
                        last_accepted: None,
                        nonce_issued: None,
                    }),
                    RemoteChange::Replay {
                        home_address,
                        nai,
                        state,
                        ..
                    } => {
                        // apply_replicated replaces the node's bindings: give it the current ones.
                        let key = match (home_address.is_unspecified(), nai) {
                            (false, _) => Some(BindingKey::Home(*home_address)),
                            (true, Some(n)) => Some(BindingKey::Nai(n.clone())),
                            (true, None) => None,
                        };
                        let bindings = key.map(|k| store.bindings_of(&k, now.instant)).unwrap_or_default();
                        let bindings: Vec<_> = bindings
                            .into_iter()
                            .filter(|b| b.lifetime == INFINITE_LIFETIME || b.expires_at > now.instant)
                            .collect();
                        proxy.apply_replicated(&ReplicatedNode {
                            home_address: *home_address,
                            nai: nai.as_deref(),
                            bindings: &bindings,
                            last_accepted: state.last_accepted,
                            nonce_issued: state.nonce_issued,
                        })
                    }
                };
                match result {
                    Ok(()) => applied += 1,
                    Err(e) => tracing::debug!(error = ?e, change = ?c, "replicated change not applied"),
                }
            }
        }
        for (c, _) in &changes {
            match c {
                RemoteChange::Bindings {
                    home_address, bindings, ..
                } => tracing::debug!(%home_address, bindings = bindings.len(), "replicated bindings"),
                RemoteChange::Removed { home_address, .. } => {
                    tracing::debug!(%home_address, "replicated removal");
                }
                RemoteChange::Replay {
                    home_address, state, ..
                } => tracing::debug!(%home_address, last_accepted = ?state.last_accepted, "replicated replay state"),
            }
        }
        self.metrics.applied.add(applied as u64);
        self.changes = changes;
        if caught_up && !self.backlog && !self.ready {
            self.ready = true;
            self.metrics.caught_up.set(1);
            tracing::info!("replication caught up: ready");
        }
        applied
    }

    /// More remote changes are waiting than the last [`mirror`](Self::mirror) took.
    pub fn backlog(&self) -> bool {
        self.backlog
    }

    /// The replica has every peer's snapshot (or gave up on the unreachable ones), and has mirrored them into
    /// the relay: ready for traffic. False again from shutdown on.
    pub fn caught_up(&self) -> bool {
        self.ready && self.replicator.is_some()
    }

    /// The transport's status (None after shutdown).
    pub fn status(&self) -> Option<Status> {
        self.replicator.as_ref().map(Replicator::status)
    }

    /// Turns the transport's status into metrics, at most once per second.
    pub fn update_metrics(&mut self) {
        if self.last_status.is_some_and(|t| t.elapsed() < STATUS_PERIOD) {
            return;
        }
        self.last_status = Some(StdInstant::now());
        let Some(s) = self.status() else { return };
        self.record_status(&s);
    }

    fn record_status(&mut self, s: &Status) {
        let m = &self.metrics;
        let peers = s.peers.iter().filter(|p| !p.is_self);
        let connected = peers.clone().filter(|p| p.connected).count();
        m.peers_connected.set(i64::try_from(connected).unwrap_or(i64::MAX));
        m.peers.set(i64::try_from(peers.clone().count()).unwrap_or(i64::MAX));
        let worst = |f: fn(&mip_replication::transport::PeerStatus) -> Option<u64>| {
            peers.clone().filter_map(f).max().unwrap_or(0)
        };
        m.lag_p50.set(worst(|p| p.lag_ms_p50) as f64 / 1000.0);
        m.lag_p99.set(worst(|p| p.lag_ms_p99) as f64 / 1000.0);
        let now = Seen {
            snapshots_received: s.peers.iter().map(|p| p.snapshots_received).sum(),
            snapshots_sent: s.snapshots_sent,
            overflows: s.overflows,
        };
        m.snapshots_received
            .add(now.snapshots_received.saturating_sub(self.seen.snapshots_received));
        m.snapshots_sent
            .add(now.snapshots_sent.saturating_sub(self.seen.snapshots_sent));
        m.overflows.add(now.overflows.saturating_sub(self.seen.overflows));
        self.seen = now;
    }

    /// SIGTERM: sends the queued deltas and a goodbye to every peer, waits (bounded) for their acknowledgement,
    /// closes the connections.
    pub fn shutdown(&mut self) {
        if let Some(r) = self.replicator.take() {
            let report = r.shutdown();
            tracing::info!(
                subscribers = report.subscribers,
                flushed = report.flushed,
                "replication stopped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use mip::binding::{Binding, Encapsulation, TunnelEndpoint};
    use mip::roles::BindingChangeKind;
    use mip::time::{Instant, NtpTimestamp};
    use mip_replication::Delta;

    fn binding(coa: [u8; 4], ident: u64, now: Instant) -> Binding {
        let coa = core::net::Ipv4Addr::from(coa);
        Binding {
            care_of_address: coa,
            tunnel: TunnelEndpoint {
                addr: coa,
                port: 434,
                encapsulation: Encapsulation::UdpIpInIp,
            },
            home_agent: "10.10.1.1".parse().unwrap(),
            identification: ident,
            registered_at: now,
            expires_at: Instant::from_millis(now.millis() + 600_000),
            lifetime: 600,
            keepalive_interval: 0,
            reverse_tunnel: true,
            half_bound: false,
        }
    }

    /// A change made at one store reaches another as a remote change, which is what `mirror` turns into
    /// `apply_replicated`: the conversion of a Delta round trip keeps the binding.
    #[test]
    fn a_local_change_becomes_the_peers_remote_change() {
        let now = Now::new(Instant::from_millis(1_000), NtpTimestamp::new(0xec4e_5c00, 0));
        let mut a = ReplicaStore::new(1);
        let mut b = ReplicaStore::new(2);
        let hoa = "10.10.1.50".parse().unwrap();
        let change = BindingChange {
            kind: BindingChangeKind::Created,
            home_address: hoa,
            nai: None,
            binding: binding([192, 0, 2, 10], 7, now.instant),
        };
        let d = a.apply_local(&change, IdentOrder::Timestamp, now).unwrap();
        assert!(matches!(d, Delta::Binding(_)));
        b.apply_remote(&d, now).unwrap();
        let mut out = Vec::new();
        assert_eq!(b.take_remote_changes(now.instant, MIRROR_BATCH, &mut out), 1);
        match &out[0] {
            RemoteChange::Bindings {
                home_address, bindings, ..
            } => {
                assert_eq!(*home_address, hoa);
                assert_eq!(bindings.len(), 1);
                assert_eq!(bindings[0].identification, 7);
                assert_eq!(bindings[0].care_of_address, change.binding.care_of_address);
            }
            other => panic!("{other:?}"),
        }
        let r = a
            .apply_local_replay(
                hoa,
                None,
                256,
                ReplayValue {
                    last_accepted: Some(7),
                    nonce_issued: None,
                },
                IdentOrder::Timestamp,
                now,
            )
            .unwrap();
        b.apply_remote(&r, now).unwrap();
        out.clear();
        b.take_remote_changes(now.instant, MIRROR_BATCH, &mut out);
        assert!(
            matches!(&out[..], [RemoteChange::Replay { spi: 256, state, .. }] if state.last_accepted == Some(7)),
            "{out:?}"
        );
    }

    #[test]
    fn nonce_sas_order_by_clock() {
        assert_eq!(order_of(Some(ReplayStyle::Nonce)), IdentOrder::Nonce);
        assert_eq!(
            order_of(Some(ReplayStyle::Timestamp {
                tolerance: Duration::from_secs(7)
            })),
            IdentOrder::Timestamp
        );
        assert_eq!(order_of(None), IdentOrder::Timestamp);
    }
}

//! The proxy's Prometheus series (docs/metrics.md "mip-proxy" documents them for operators, and a test keeps
//! the two in step). Every series is registered at start-up (so it shows as 0 before the first event); the packet
//! path updates them with one relaxed atomic operation each and never takes the registry lock.
//!
//! | name | labels | what |
//! |---|---|---|
//! | `mip_registrations_total` | `role="proxy"`, `code` | replies sent to mobile nodes, by reply code |
//! | `mip_drops_total` | `path="control"`, `reason` | control-plane inputs dropped ([`DropReason`] labels) |
//! | `mip_drops_total` | `path="data"`, `reason` | data-plane packets dropped ([`DataDrop`] labels) |
//! | `mip_relay_latency_seconds` | | relayed request → matching home agent reply |
//! | `mip_bindings` | | bindings in the cache |
//! | `mip_pending_requests` | | relayed requests waiting for a home agent |
//! | `mip_tunnel_packets_total`, `mip_tunnel_bytes_total` | `direction="up"\|"down"`, `encapsulation="ipip"\|"udp"` | packets (inner bytes) through the tunnels toward mobile nodes |
//! | `mip_ha_tunnel_packets_total`, `mip_ha_tunnel_bytes_total` | | packets (inner bytes) out of home-agent tunnels |
//! | `mip_keepalives_total` | `result="answered"\|"completed_half_bound"` | RFC 3519 keepalives answered; those that completed a half-bound tunnel first (counted in both) |
//! | `mip_tunnel_mtu_bytes` | `encapsulation` | largest inner packet per encapsulation at the configured path MTU |
//! | `mip_icmp_relayed_total` | | ICMP errors about our tunnels relayed to the original sender (RFC 2003 §4) |
//! | `mip_icmp_generated_total` | | ICMP errors the proxy generated itself (time exceeded, fragmentation needed) |
//! | `mip_send_errors_total` | `socket` | datagrams or packets the kernel refused to send |
//! | `mip_replication_peers` | | peer replicas known (not this one; 0 without `replication:`) |
//! | `mip_replication_peers_connected` | | peers whose replication stream to us is open |
//! | `mip_replication_caught_up` | | 1 once every peer's snapshot arrived (readiness) |
//! | `mip_replication_lag_seconds` | `quantile="0.5"\|"0.99"` | peer write → applied here, worst peer's recent p50/p99 |
//! | `mip_replication_snapshots_total` | `direction="received"\|"sent"` | complete snapshots received from / sent to peers |
//! | `mip_replication_overflows_total` | | peer queues that overflowed (the peer got a fresh snapshot instead) |
//! | `mip_replication_published_total` | | deltas (bindings, replay state) published to the peers |
//! | `mip_replication_applied_total` | | peers' changes applied to this replica's cache and replay state |

use std::sync::Arc;

use mip::binding::Encapsulation;
use mip::dataplane::{DataDrop, DataPlane};
use mip::roles::DropReason;
use mip::wire::ReplyCode;
use mip_io::metrics::{
    Counter, DropCounters, FloatGauge, Gauge, Histogram, MetricsError, Registry, ReplyCodes, count_control_drop,
};

const REGISTRATIONS: &str = "Registration replies sent to mobile nodes, by reply code.";
const DROPS: &str = "Inputs dropped, by path and reason.";
const PACKETS: &str = "Packets through the tunnels toward mobile nodes.";
const BYTES: &str = "Inner packet bytes through the tunnels toward mobile nodes.";
const TRAFFIC: [&str; 2] = [PACKETS, BYTES];
const SEND_ERRORS: &str = "Datagrams or packets the kernel refused to send, by socket.";
const KEEPALIVES: &str = "RFC 3519 keepalives, by result (answered; completed_half_bound: also completed a tunnel).";

/// Reply codes registered at start: acceptance and every code the proxy itself generates or relays often.
const REPLY_CODES: &[ReplyCode] = &[
    ReplyCode::Accepted,
    ReplyCode::AcceptedNoSimultaneous,
    ReplyCode::FaHomeNetworkUnreachable,
    ReplyCode::FaHaHostUnreachable,
    ReplyCode::FaHaPortUnreachable,
    ReplyCode::FaHaUnreachable,
    ReplyCode::HaUnspecified,
    ReplyCode::HaProhibited,
    ReplyCode::HaInsufficientResources,
    ReplyCode::HaMnAuthFailed,
    ReplyCode::HaFaAuthFailed,
    ReplyCode::IdentificationMismatch,
    ReplyCode::HaPoorlyFormedRequest,
    ReplyCode::HaTooManyBindings,
    ReplyCode::UnknownHomeAgent,
    ReplyCode::HaReverseTunnelMandatory,
    ReplyCode::HaEncapUnavailable,
];

/// Which tunnel a packet used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// IP in IP (RFC 2003).
    Ipip,
    /// RFC 3519 UDP tunnel.
    Udp,
}

pub use mip_io::metrics::{Traffic, TunnelTraffic};

/// Send failures per socket.
#[derive(Debug, Clone)]
pub struct SendErrors {
    /// UDP 434 at `proxy_public`.
    pub public: Counter,
    /// The relay socket (`node_address:relay_port`).
    pub relay: Counter,
    /// The raw IP_HDRINCL sender.
    pub raw: Counter,
    /// Writes to the TUN toward the VPN gateway.
    pub tun: Counter,
    /// Writes to the TUN of home-agent tunnels.
    pub ha_tun: Counter,
}

/// Every series the proxy exports (besides the skeleton's `mip_up` and `mip_key_reloads_total`).
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Arc<Registry>,
    registrations: ReplyCodes,
    control_drops: DropCounters,
    /// Data-plane drops, one series per [`DataDrop`].
    pub data_drops: DropCounters,
    /// Relayed request → home agent reply.
    pub relay_latency: Histogram,
    /// Bindings in the cache.
    pub bindings: Gauge,
    /// Relayed requests waiting for a home agent.
    pub pending: Gauge,
    /// Tunnel traffic toward and from mobile nodes.
    pub tunnels: TunnelTraffic,
    /// Packets out of home-agent tunnels toward the VPN gateway.
    pub ha_packets: Counter,
    /// Their inner bytes.
    pub ha_bytes: Counter,
    /// Keepalives answered.
    pub keepalives: Counter,
    /// Keepalives that completed a half-bound tunnel (then answered, and counted in `keepalives` too).
    pub keepalives_completed: Counter,
    /// ICMP errors relayed.
    pub icmp_relayed: Counter,
    /// ICMP errors generated.
    pub icmp_generated: Counter,
    /// Send failures.
    pub send_errors: SendErrors,
    /// Replication (registered even without `replication:`, at zero).
    pub replication: ReplicationMetrics,
}

/// The `mip_replication_*` series.
#[derive(Debug, Clone)]
pub struct ReplicationMetrics {
    /// Peers known (not this replica).
    pub peers: Gauge,
    /// Peers connected.
    pub peers_connected: Gauge,
    /// 1 once caught up.
    pub caught_up: Gauge,
    /// Replication lag, median (worst peer), seconds.
    pub lag_p50: FloatGauge,
    /// Replication lag, 99th percentile (worst peer), seconds.
    pub lag_p99: FloatGauge,
    /// Complete snapshots received.
    pub snapshots_received: Counter,
    /// Complete snapshots sent.
    pub snapshots_sent: Counter,
    /// Subscriber queue overflows.
    pub overflows: Counter,
    /// Deltas published.
    pub published: Counter,
    /// Remote changes applied.
    pub applied: Counter,
}

impl ReplicationMetrics {
    fn new(r: &Registry) -> Result<ReplicationMetrics, MetricsError> {
        let lag = "Replication lag (a peer's write to applied here), worst peer, recent samples.";
        let snapshots = "Complete replication snapshots, by direction.";
        Ok(ReplicationMetrics {
            peers: r.gauge("mip_replication_peers", "Peer replicas known (not this one).", &[])?,
            peers_connected: r.gauge(
                "mip_replication_peers_connected",
                "Peer replicas whose replication stream to this one is open.",
                &[],
            )?,
            caught_up: r.gauge(
                "mip_replication_caught_up",
                "1 once every peer's snapshot arrived (or unreachable peers were given up).",
                &[],
            )?,
            lag_p50: r.float_gauge("mip_replication_lag_seconds", lag, &[("quantile", "0.5")])?,
            lag_p99: r.float_gauge("mip_replication_lag_seconds", lag, &[("quantile", "0.99")])?,
            snapshots_received: r.counter(
                "mip_replication_snapshots_total",
                snapshots,
                &[("direction", "received")],
            )?,
            snapshots_sent: r.counter("mip_replication_snapshots_total", snapshots, &[("direction", "sent")])?,
            overflows: r.counter(
                "mip_replication_overflows_total",
                "Peer queues that overflowed (the peer got a fresh snapshot instead).",
                &[],
            )?,
            published: r.counter(
                "mip_replication_published_total",
                "Deltas (bindings, replay state) published to the peer replicas.",
                &[],
            )?,
            applied: r.counter(
                "mip_replication_applied_total",
                "Changes from peer replicas applied to this replica's binding cache and replay state.",
                &[],
            )?,
        })
    }
}

impl ProxyMetrics {
    /// Registers every series in `registry`; the MTU gauges are set from `dataplane` at its configured path MTU.
    pub fn new(registry: Arc<Registry>, dataplane: &DataPlane) -> Result<ProxyMetrics, MetricsError> {
        let r = &*registry;
        let control: Vec<&'static str> = DropReason::ALL.iter().map(|d| d.as_str()).collect();
        let data: Vec<&'static str> = DataDrop::ALL.iter().map(|d| d.as_str()).collect();
        let control_drops =
            r.drop_counters_with("mip_drops_total", DROPS, &[("path", "control")], "reason", &control)?;
        let data_drops = r.drop_counters_with("mip_drops_total", DROPS, &[("path", "data")], "reason", &data)?;
        let mtu_help = "Largest inner packet a tunnel carries without fragmentation at the configured path MTU.";
        let unspecified = core::net::Ipv4Addr::UNSPECIFIED;
        for (label, enc) in [("ipip", Encapsulation::IpInIp), ("udp", Encapsulation::UdpIpInIp)] {
            let g = r.gauge("mip_tunnel_mtu_bytes", mtu_help, &[("encapsulation", label)])?;
            g.set(i64::from(dataplane.tunnel_mtu(unspecified, enc)));
        }
        let send = |socket: &'static str| r.counter("mip_send_errors_total", SEND_ERRORS, &[("socket", socket)]);
        let metrics = ProxyMetrics {
            registrations: ReplyCodes::new(
                Arc::clone(&registry),
                REGISTRATIONS,
                "proxy",
                REPLY_CODES.iter().map(|c| u8::from(*c)),
            )?,
            control_drops,
            data_drops,
            relay_latency: r.relay_latency()?,
            bindings: r.gauge("mip_bindings", "Bindings in the proxy's cache.", &[])?,
            pending: r.gauge(
                "mip_pending_requests",
                "Relayed requests waiting for a home agent.",
                &[],
            )?,
            tunnels: TunnelTraffic::new(r, TRAFFIC)?,
            ha_packets: r.counter(
                "mip_ha_tunnel_packets_total",
                "Packets out of home-agent tunnels handed to the VPN gateway.",
                &[],
            )?,
            ha_bytes: r.counter(
                "mip_ha_tunnel_bytes_total",
                "Inner packet bytes out of home-agent tunnels handed to the VPN gateway.",
                &[],
            )?,
            keepalives: r.counter("mip_keepalives_total", KEEPALIVES, &[("result", "answered")])?,
            keepalives_completed: r.counter(
                "mip_keepalives_total",
                KEEPALIVES,
                &[("result", "completed_half_bound")],
            )?,
            icmp_relayed: r.counter(
                "mip_icmp_relayed_total",
                "ICMP errors about tunnelled packets relayed to the original sender.",
                &[],
            )?,
            icmp_generated: r.counter(
                "mip_icmp_generated_total",
                "ICMP errors generated by the proxy (time exceeded, fragmentation needed).",
                &[],
            )?,
            send_errors: SendErrors {
                public: send("public")?,
                relay: send("relay")?,
                raw: send("raw")?,
                tun: send("tun")?,
                ha_tun: send("ha_tun")?,
            },
            replication: ReplicationMetrics::new(r)?,
            registry,
        };
        Ok(metrics)
    }

    /// Counts a reply sent to a mobile node.
    pub fn registration(&mut self, code: ReplyCode) {
        self.registrations.inc(u8::from(code));
    }

    /// Counts a control-plane drop.
    pub fn control_drop(&self, reason: DropReason) {
        count_control_drop(&self.registry, &self.control_drops, DROPS, reason.as_str());
    }

    /// Counts a data-plane drop.
    #[inline]
    pub fn data_drop(&self, reason: DataDrop) {
        self.data_drops.inc(reason.as_str());
    }

    /// The traffic counters of one direction and tunnel.
    #[inline]
    pub fn traffic(&self, up: bool, tunnel: Tunnel) -> &Traffic {
        self.tunnels.get(up, tunnel == Tunnel::Udp)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mip::dataplane::DataPlaneConfig;
    use mip::wire::ErrorKind;

    fn metrics() -> (Arc<Registry>, ProxyMetrics) {
        let registry = Arc::new(Registry::new());
        let dp = DataPlane::new(DataPlaneConfig {
            proxy_public: "198.51.100.10".parse().unwrap(),
            proxy_private: "10.10.0.10".parse().unwrap(),
            vpn_gateways: vec!["198.51.100.20".parse().unwrap()],
            home_agents: vec!["10.10.1.1".parse().unwrap()],
            outer_ttl: 64,
            path_mtu: 1500,
        });
        let m = ProxyMetrics::new(Arc::clone(&registry), &dp).unwrap();
        (registry, m)
    }

    #[test]
    fn every_series_is_registered_at_zero() {
        let (registry, _m) = metrics();
        let text = registry.render();
        for line in [
            "mip_registrations_total{role=\"proxy\",code=\"0\"} 0",
            "mip_drops_total{path=\"control\",reason=\"truncated\"} 0",
            "mip_drops_total{path=\"control\",reason=\"bad_authenticator\"} 0",
            "mip_drops_total{path=\"data\",reason=\"not_bound\"} 0",
            "mip_drops_total{path=\"data\",reason=\"no_room\"} 0",
            "mip_relay_latency_seconds_count 0",
            "mip_bindings 0",
            "mip_pending_requests 0",
            "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"udp\"} 0",
            "mip_tunnel_bytes_total{direction=\"down\",encapsulation=\"ipip\"} 0",
            "mip_keepalives_total{result=\"answered\"} 0",
            "mip_keepalives_total{result=\"completed_half_bound\"} 0",
            "mip_tunnel_mtu_bytes{encapsulation=\"ipip\"} 1480",
            "mip_tunnel_mtu_bytes{encapsulation=\"udp\"} 1468",
            "mip_icmp_relayed_total 0",
            "mip_replication_peers 0",
            "mip_replication_peers_connected 0",
            "mip_replication_caught_up 0",
            "mip_replication_lag_seconds{quantile=\"0.5\"} 0",
            "mip_replication_lag_seconds{quantile=\"0.99\"} 0",
            "mip_replication_snapshots_total{direction=\"received\"} 0",
            "mip_replication_snapshots_total{direction=\"sent\"} 0",
            "mip_replication_overflows_total 0",
            "mip_replication_published_total 0",
            "mip_replication_applied_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    /// Every series the proxy registers (its own and the skeleton's) is listed in docs/metrics.md.
    #[test]
    fn metrics_are_documented() {
        let (registry, _m) = metrics();
        mip_io::metrics::check_documented(&registry, include_str!("../../docs/metrics.md"), "mip-proxy").unwrap();
    }

    #[test]
    fn every_drop_reason_is_registered_at_zero() {
        let (registry, _m) = metrics();
        let text = registry.render();
        for r in DropReason::ALL {
            let line = format!("mip_drops_total{{path=\"control\",reason=\"{}\"}} 0", r.as_str());
            assert!(text.lines().any(|l| l == line), "missing `{line}`");
        }
        for d in DataDrop::ALL {
            let line = format!("mip_drops_total{{path=\"data\",reason=\"{}\"}} 0", d.as_str());
            assert!(text.lines().any(|l| l == line), "missing `{line}`");
        }
    }

    #[test]
    fn unknown_codes_and_reasons_are_registered_on_first_use() {
        let (registry, mut m) = metrics();
        m.registration(ReplyCode::Unknown(250));
        m.registration(ReplyCode::Unknown(250));
        m.registration(ReplyCode::Accepted);
        m.control_drop(DropReason::Malformed(ErrorKind::WrongType(9)));
        m.data_drop(DataDrop::NotBound);
        let text = registry.render();
        assert!(
            text.contains("mip_registrations_total{role=\"proxy\",code=\"250\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mip_registrations_total{role=\"proxy\",code=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mip_drops_total{path=\"control\",reason=\"wrong_type\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mip_drops_total{path=\"data\",reason=\"not_bound\"} 1"),
            "{text}"
        );
    }
}

//! The configuration files the daemons read (`mip-proxy`, `mip-ha`, `mip-fa`, `mip-mn`): the role's own
//! configuration, the data-plane settings of the daemon around it, and the settings every daemon shares. The
//! operator renders the same types into ConfigMaps, so a file works the same standalone and in Kubernetes.
//!
//! ```yaml
//! proxy:      { ... }   # roles::proxy::ProxyConfig
//! dataplane:  { ... }   # ProxyDataPlane
//! daemon:     { keys_file: /etc/mip/keys.yaml, admin: 0.0.0.0:9434, log_format: json }
//! replication: { ... }  # optional: replication::ReplicationConfig (absent = a single replica)
//! ```
//!
//! `mip-proxy` takes its node address from the environment variable [`NODE_ADDRESS_ENV`] when it is set (it
//! overrides `proxy.node_address`, before validation); a `replication:` section without `replica_id` then gets
//! its id from that address ([`ProxyFile::replica_id`]).

pub mod replication;

use core::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};
use crate::roles::fa::FaConfig;
use crate::roles::ha::HaConfig;
use crate::roles::mn::MnConfig;
use crate::roles::proxy::ProxyConfig;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (for log collectors), the default.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9434))
}

/// The environment variable whose value, when set, `mip-proxy` uses as `proxy.node_address` (Kubernetes sets it
/// from the downward API: `status.podIP`, the node's address under host networking). Applied before validation.
pub const NODE_ADDRESS_ENV: &str = "MIP_NODE_ADDRESS";

/// The longest SIGTERM drain [`DaemonSettings::drain_ms`] accepts.
pub const MAX_DRAIN_MS: u64 = 600_000;

/// Settings every daemon shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// The keys file (security associations); reloaded on SIGHUP or when it changes, without losing state.
    pub keys_file: PathBuf,
    /// Admin HTTP address: `/healthz`, `/readyz`, `/metrics`, `/bindings`, `/status`, `/drain`. Default
    /// 127.0.0.1:9434.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Whether `/bindings`, `/status` and `/drain` (node addresses, and the power to withdraw the daemon) answer
    /// clients on other hosts too. Default false: only clients on this host (a loopback source, or the host's
    /// own address as the source: the kubelet's probes and `preStop` hook under host networking); others get
    /// 403 and `mip_admin_refused_total`. `/healthz`, `/readyz` and `/metrics` answer whoever reaches `admin`.
    #[serde(default)]
    pub admin_remote_access: bool,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// SIGTERM drain in milliseconds (default 0): `/readyz` turns false at once, the daemon keeps serving this
    /// long (so a load balancer, a BFD-driven route controller or a Kubernetes endpoint update withdraws it
    /// while it still forwards), then shuts down. A second SIGTERM/SIGINT ends the drain early. `GET /drain` on
    /// the admin address (Kubernetes' `preStop` hook) starts the same drain and answers when it is over; the
    /// daemon then waits, not ready, for the SIGTERM that follows and shuts down at once.
    #[serde(default)]
    pub drain_ms: u64,
    /// Trace export over OTLP/gRPC (`daemon.tracing`); absent: export only when the environment names an
    /// endpoint ([`TracingSettings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
}

/// The environment variable naming the OTLP endpoint when `daemon.tracing.endpoint` does not (the OpenTelemetry
/// standard one; the Kubernetes operator sets it from `MipProxy.spec.telemetry.otlpEndpoint`).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only variant of [`OTLP_ENDPOINT_ENV`], which it takes precedence over (OpenTelemetry standard).
pub const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

fn default_sampling_ratio() -> f64 {
    1.0
}

/// Where and how a daemon exports its traces (one trace per registration; nothing per data packet).
///
/// The endpoint is, in this order: `endpoint`, the environment variable [`OTLP_TRACES_ENDPOINT_ENV`], then
/// [`OTLP_ENDPOINT_ENV`] (the configuration wins, as OpenTelemetry SDKs let code override the environment);
/// none of them set: nothing is exported and no span is even created.
///
/// ```yaml
/// daemon:
///   tracing:
///     endpoint: http://otel-collector:4317   # OTLP/gRPC, plain HTTP/2
///     sampling_ratio: 0.1                    # default 1.0
///     service_name: mip-proxy                # default: OTEL_SERVICE_NAME, else the daemon's name
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/gRPC collector, `http://HOST:PORT` (TLS is not built in: use a local collector or a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Fraction of registrations traced, 0.0 to 1.0 (default 1.0). Parent-based: a span whose parent was
    /// sampled (a replication apply span, say) follows its parent's decision.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute; default: the environment variable `OTEL_SERVICE_NAME`, else the
    /// daemon's name (`mip-proxy`, `mip-ha`, `mip-fa`, `mip-mn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// `sampling_ratio` is never NaN in a validated file (and a NaN only makes two settings unequal).
impl Eq for TracingSettings {}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            endpoint: None,
            sampling_ratio: default_sampling_ratio(),
            service_name: None,
        }
    }
}

/// Why `endpoint` is not an OTLP/gRPC endpoint this build can export to, if it is not one: `http://HOST:PORT`
/// with an optional path (a trailing `/` is fine).
pub fn otlp_endpoint_problem(endpoint: &str) -> Option<String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Some(if endpoint.starts_with("https://") {
            "https is not supported (no TLS in the exporter): use http:// to a local collector or sidecar".into()
        } else {
            "must be http://HOST:PORT".into()
        });
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // An IPv6 literal is bracketed: [::1]:4317.
    let (host, port) = match authority.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((h, tail)) => (h, tail.strip_prefix(':')),
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty()
        || host.contains(':') != authority.starts_with('[')
        || endpoint.contains(char::is_whitespace)
        || authority.contains('@')
    {
        return Some("must be http://HOST:PORT".into());
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => None,
        Some(_) => Some("the port must be 1-65535".into()),
        None => Some("needs a port (OTLP/gRPC: usually 4317)".into()),
    }
}

impl Validate for TracingSettings {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if let Some(problem) = self.endpoint.as_deref().and_then(otlp_endpoint_problem) {
            e.push(ConfigError::new("endpoint", problem));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            e.push(ConfigError::new("sampling_ratio", "must be 0.0-1.0"));
        }
        if let Some(n) = &self.service_name
            && (n.trim().is_empty() || n.len() > 255)
        {
            e.push(ConfigError::new("service_name", "1-255 characters"));
        }
        e
    }
}

impl Validate for DaemonSettings {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if self.keys_file.as_os_str().is_empty() {
            e.push(ConfigError::new("keys_file", "must name the keys file"));
        }
        if self.admin.port() == 0 {
            e.push(ConfigError::new("admin", "needs a port"));
        }
        if self.drain_ms > MAX_DRAIN_MS {
            e.push(ConfigError::new(
                "drain_ms",
                format!("at most {MAX_DRAIN_MS} (10 minutes); orchestrators kill long before that"),
            ));
        }
        if let Some(t) = &self.tracing {
            e.extend(t.validate().into_iter().map(|x| x.within("tracing")));
        }
        e
    }
}

/// Where the proxy sits relative to the VPN gateway (ARCHITECTURE.md "Entities").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentMode {
    /// Beside the VPN gateway on the same link; packets are handed over by layer 2.
    #[default]
    TwoBox,
    /// On the VPN gateway's host; the hand-off to IPsec is local.
    OneBox,
}

fn default_proxy_tun() -> String {
    "mipp0".into()
}
fn default_proxy_ha_tun() -> String {
    "mipp1".into()
}
/// Default MTU of the path toward mobile nodes (`dataplane.path_mtu`): an Ethernet link.
pub const DEFAULT_PATH_MTU: u16 = 1500;
/// Bytes the largest tunnel encapsulation adds: IPv4 + UDP + Tunnel Data, 32 (RFC 3519 §3.3).
const UDP_TUNNEL_OVERHEAD: u16 = crate::dataplane::overhead(crate::binding::Encapsulation::UdpIpInIp) as u16;
/// Bytes IP-in-IP adds: one IPv4 header, 20 (RFC 2003).
const IPIP_OVERHEAD: u16 = crate::dataplane::overhead(crate::binding::Encapsulation::IpInIp) as u16;
/// Default MTU of every daemon's TUN: the UDP tunnel MTU over a [`DEFAULT_PATH_MTU`] path (1500 − 32 = 1468),
/// so a packet that fits the TUN fits any tunnel without fragmenting the outer packet (and the ESP inside).
pub const DEFAULT_TUN_MTU: u16 = DEFAULT_PATH_MTU - UDP_TUNNEL_OVERHEAD;

fn default_path_mtu() -> u16 {
    DEFAULT_PATH_MTU
}
fn default_tun_mtu() -> u16 {
    DEFAULT_TUN_MTU
}
fn default_outer_ttl() -> u8 {
    crate::dataplane::DEFAULT_OUTER_TTL
}
fn default_ha_path_table() -> u32 {
    100
}

/// The proxy daemon's data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyDataPlane {
    /// two_box (default) or one_box.
    #[serde(default)]
    pub mode: DeploymentMode,
    /// The VPN gateways' public addresses: the only inner destinations a tunnel may carry, and the only sources of
    /// packets tunnelled to nodes (spec §8).
    pub vpn_gateways: Vec<Ipv4Addr>,
    /// two_box: the VPN gateway's private address, next hop for packets home agents tunnel to `proxy_private`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn_gateway_private: Option<Ipv4Addr>,
    /// TUN carrying packets to and from the VPN gateway's public side (home networks route into it).
    #[serde(default = "default_proxy_tun")]
    pub tun: String,
    /// TUN injecting packets from home-agent tunnels toward the VPN gateway's private side.
    #[serde(default = "default_proxy_ha_tun")]
    pub ha_tun: String,
    /// MTU of the TUN devices. Default `path_mtu` − 32, the UDP tunnel MTU (read it with
    /// [`ProxyDataPlane::tun_mtu`]); at most `path_mtu` − 20 (the IP-in-IP tunnel MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun_mtu: Option<u16>,
    /// MTU of the path toward mobile nodes (outer packets), before PMTU discovery lowers it. Default 1500.
    #[serde(default = "default_path_mtu")]
    pub path_mtu: u16,
    /// TTL of outer headers.
    #[serde(default = "default_outer_ttl")]
    pub outer_ttl: u8,
    /// Routing table for packets from home-agent tunnels (two_box).
    #[serde(default = "default_ha_path_table")]
    pub ha_path_table: u32,
    /// Put `proxy_public`/32 and `proxy_private`/32 on `lo` at start (each one not on the host yet) and remove
    /// them at shutdown, after the drain and the replication flush (default off: the host is configured
    /// outside the daemon). The Kubernetes operator sets it: every replica owns the shared addresses, and the
    /// network spreads them over the ready replicas (README "Scale-out").
    #[serde(default)]
    pub assign_addresses: bool,
}

/// `mip-proxy --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// The relay.
    pub proxy: ProxyConfig,
    /// The data plane.
    pub dataplane: ProxyDataPlane,
    /// Keys, admin, logs.
    pub daemon: DaemonSettings,
    /// Sharing the binding cache with peer replicas (scale-out); absent = a single replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<replication::ReplicationConfig>,
}

impl Validate for ProxyFile {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e: Vec<ConfigError> = self.proxy.validate().into_iter().map(|x| x.within("proxy")).collect();
        if let Some(r) = &self.replication {
            e.extend(r.validate().into_iter().map(|x| x.within("replication")));
            if r.effective_replica_id(self.proxy.node_address).is_none() {
                e.push(ConfigError::new(
                    "replication.replica_id",
                    format!(
                        "required unless the node address is set (proxy.node_address or the environment variable \
                         {NODE_ADDRESS_ENV}), from which it is derived"
                    ),
                ));
            }
        }
        let d = &self.dataplane;
        if d.vpn_gateways.is_empty() {
            e.push(ConfigError::new(
                "dataplane.vpn_gateways",
                "at least one VPN gateway is required",
            ));
        }
        if d.mode == DeploymentMode::TwoBox && d.vpn_gateway_private.is_none() {
            e.push(ConfigError::new(
                "dataplane.vpn_gateway_private",
                "required in two_box mode (next hop for packets from home agents)",
            ));
        }
        e.extend(tun_errors("dataplane.tun", &d.tun));
        e.extend(tun_errors("dataplane.ha_tun", &d.ha_tun));
        if d.tun == d.ha_tun {
            e.push(ConfigError::new("dataplane.ha_tun", "must differ from dataplane.tun"));
        }
        e.extend(mtu_errors("dataplane.path_mtu", d.path_mtu));
        match d.tun_mtu {
            Some(mtu) => {
                e.extend(mtu_errors("dataplane.tun_mtu", mtu));
                let ipip = d.path_mtu.saturating_sub(IPIP_OVERHEAD);
                if mtu > ipip {
                    e.push(ConfigError::new(
                        "dataplane.tun_mtu",
                        format!(
                            "{mtu} does not fit a tunnel over path_mtu {}: at most path_mtu - 20 = {ipip} \
                             (IP-in-IP), path_mtu - 32 = {} for UDP tunnels (the default)",
                            d.path_mtu,
                            d.path_mtu.saturating_sub(UDP_TUNNEL_OVERHEAD)
                        ),
                    ));
                }
            }
            None if (576..=9000).contains(&d.path_mtu) && d.tun_mtu() < 576 => e.push(ConfigError::new(
                "dataplane.tun_mtu",
                format!(
                    "the default, path_mtu - 32 = {}, is below 576: raise path_mtu",
                    d.tun_mtu()
                ),
            )),
            None => {}
        }
        if d.outer_ttl == 0 {
            e.push(ConfigError::new("dataplane.outer_ttl", "must be at least 1"));
        }
        e.extend(self.daemon.validate().into_iter().map(|x| x.within("daemon")));
        e
    }
}

impl ProxyDataPlane {
    /// MTU of the TUN devices: `tun_mtu` if set, else `path_mtu` − 32 (the UDP tunnel MTU: a packet that fits
    /// the TUN fits every tunnel without fragmenting the outer packet).
    pub fn tun_mtu(&self) -> u16 {
        self.tun_mtu
            .unwrap_or(self.path_mtu.saturating_sub(UDP_TUNNEL_OVERHEAD))
    }
}

impl ProxyFile {
    /// This replica's id (`replication:` set): `replication.replica_id`, else derived from `proxy.node_address`
    /// (its value as a `u32`). `None` without `replication:`, or when neither is set (validation refuses that).
    pub fn replica_id(&self) -> Option<u32> {
        self.replication.as_ref()?.effective_replica_id(self.proxy.node_address)
    }

    /// The data-plane configuration of [`crate::dataplane`].
    pub fn dataplane_config(&self) -> crate::dataplane::DataPlaneConfig {
        crate::dataplane::DataPlaneConfig {
            proxy_public: self.proxy.proxy_public,
            proxy_private: self.proxy.proxy_private,
            vpn_gateways: self.dataplane.vpn_gateways.clone(),
            home_agents: self.proxy.home_agents.iter().map(|h| h.address).collect(),
            outer_ttl: self.dataplane.outer_ttl,
            path_mtu: self.dataplane.path_mtu,
        }
    }
}

fn tun_errors(field: &str, name: &str) -> Vec<ConfigError> {
    // IFNAMSIZ is 16 including the terminating zero.
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        vec![ConfigError::new(
            field,
            "an interface name of 1-15 characters without '/' or spaces",
        )]
    } else {
        Vec::new()
    }
}

fn mtu_errors(field: &str, mtu: u16) -> Vec<ConfigError> {
    // 576: the IPv4 minimum every host must accept (RFC 791); above 9000 is not a path we expect.
    if (576..=9000).contains(&mtu) {
        Vec::new()
    } else {
        vec![ConfigError::new(field, "must be 576-9000")]
    }
}

fn default_ha_tun() -> String {
    "miph0".into()
}

/// The home agent daemon's data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaDataPlane {
    /// TUN that bound home addresses are routed into (then tunnelled to their care-of address).
    #[serde(default = "default_ha_tun")]
    pub tun: String,
    /// MTU of the TUN. Default 1468: the UDP tunnel MTU (path MTU − 32) over a 1500-byte path; keep it at most
    /// the path MTU toward care-of addresses − 32 (− 20 with IP-in-IP only).
    #[serde(default = "default_tun_mtu")]
    pub tun_mtu: u16,
    /// TTL of outer headers.
    #[serde(default = "default_outer_ttl")]
    pub outer_ttl: u8,
    /// Interface of the home link: the HA answers ARP there for bound home addresses (proxy ARP, RFC 5944
    /// §4.6). None: home addresses are reached by routing only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_link: Option<String>,
}

/// `mip-ha --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaFile {
    /// The home agent.
    pub ha: HaConfig,
    /// The data plane.
    #[serde(default = "HaDataPlane::default")]
    pub dataplane: HaDataPlane,
    /// Keys, admin, logs.
    pub daemon: DaemonSettings,
}

impl Default for HaDataPlane {
    fn default() -> Self {
        HaDataPlane {
            tun: default_ha_tun(),
            tun_mtu: default_tun_mtu(),
            outer_ttl: default_outer_ttl(),
            home_link: None,
        }
    }
}

impl Validate for HaFile {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e: Vec<ConfigError> = self.ha.validate().into_iter().map(|x| x.within("ha")).collect();
        e.extend(tun_errors("dataplane.tun", &self.dataplane.tun));
        e.extend(mtu_errors("dataplane.tun_mtu", self.dataplane.tun_mtu));
        if let Some(l) = &self.dataplane.home_link {
            e.extend(tun_errors("dataplane.home_link", l));
        }
        e.extend(self.daemon.validate().into_iter().map(|x| x.within("daemon")));
        e
    }
}

fn default_mn_tun() -> String {
    "mip0".into()
}

/// The mobile node daemon's data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MnDataPlane {
    /// TUN holding the home address; traffic to `tunnelled` goes into it.
    #[serde(default = "default_mn_tun")]
    pub tun: String,
    /// MTU of the TUN: leave room for IPv4 + UDP + Tunnel Data (32 bytes) under the access link's MTU.
    #[serde(default = "default_tun_mtu")]
    pub tun_mtu: u16,
    /// Destinations reached through the Mobile IP tunnel (the VPN gateway's public address).
    pub tunnelled: Vec<crate::config::Prefix>,
    /// TTL of outer headers.
    #[serde(default = "default_outer_ttl")]
    pub outer_ttl: u8,
}

/// `mip-mn --config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MnFile {
    /// The mobile node.
    pub mn: MnConfig,
    /// The data plane.
    pub dataplane: MnDataPlane,
    /// Keys, admin, logs.
    pub daemon: DaemonSettings,
}

impl Validate for MnFile {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e: Vec<ConfigError> = self.mn.validate().into_iter().map(|x| x.within("mn")).collect();
        e.extend(tun_errors("dataplane.tun", &self.dataplane.tun));
        e.extend(mtu_errors("dataplane.tun_mtu", self.dataplane.tun_mtu));
        if self.dataplane.tunnelled.is_empty() {
            e.push(ConfigError::new(
                "dataplane.tunnelled",
                "name at least the VPN gateway's address",
            ));
        }
        e.extend(self.daemon.validate().into_iter().map(|x| x.within("daemon")));
        e
    }
}

fn default_fa_tun() -> String {
    "mipf0".into()
}
fn default_fa_table() -> u32 {
    200
}

/// The foreign agent daemon's data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaDataPlane {
    /// Interface on the visited link (advertisements, visitors).
    pub visited_interface: String,
    /// TUN that visitors' packets are policy-routed into for reverse tunnelling (RFC 3024 direct delivery).
    #[serde(default = "default_fa_tun")]
    pub tun: String,
    /// MTU of the TUN. Default 1468: the UDP tunnel MTU (path MTU − 32) over a 1500-byte path; the daemon
    /// warns at start when it exceeds the routed link's MTU minus the tunnel headers.
    #[serde(default = "default_tun_mtu")]
    pub tun_mtu: u16,
    /// Routing table of the reverse-tunnel policy rules.
    #[serde(default = "default_fa_table")]
    pub table: u32,
    /// TTL of outer headers.
    #[serde(default = "default_outer_ttl")]
    pub outer_ttl: u8,
}

/// `mip-fa --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaFile {
    /// The foreign agent.
    pub fa: FaConfig,
    /// The data plane.
    pub dataplane: FaDataPlane,
    /// Keys, admin, logs.
    pub daemon: DaemonSettings,
}

impl Validate for FaFile {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e: Vec<ConfigError> = self.fa.validate().into_iter().map(|x| x.within("fa")).collect();
        e.extend(tun_errors(
            "dataplane.visited_interface",
            &self.dataplane.visited_interface,
        ));
        e.extend(tun_errors("dataplane.tun", &self.dataplane.tun));
        e.extend(mtu_errors("dataplane.tun_mtu", self.dataplane.tun_mtu));
        e.extend(self.daemon.validate().into_iter().map(|x| x.within("daemon")));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints() {
        for ok in [
            "http://10.10.0.100:4317",
            "http://otel-collector.observability:4317/",
            "http://[::1]:4317",
            "http://localhost:4317/v1",
        ] {
            assert_eq!(otlp_endpoint_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("10.10.0.100:4317", "http://"),
            ("https://c:4317", "https"),
            ("http://c", "port"),
            ("http://c:0", "1-65535"),
            ("http://c:x", "1-65535"),
            ("http://:4317", "HOST"),
            ("http://a b:4317", "HOST"),
            ("http://u@c:4317", "HOST"),
            ("http://::1:4317", "HOST"),
        ] {
            let p = otlp_endpoint_problem(bad).unwrap_or_default();
            assert!(p.contains(why), "{bad}: {p}");
        }
    }

    #[test]
    fn tracing_section_defaults_and_errors() {
        let d: DaemonSettings =
            crate::config::from_yaml("keys_file: k\ntracing:\n  endpoint: http://c:4317\n").unwrap();
        let t = d.tracing.clone().unwrap_or_default();
        assert_eq!(t.sampling_ratio, 1.0);
        assert_eq!((t.endpoint.as_deref(), t.service_name), (Some("http://c:4317"), None));
        assert!(d.validate().is_empty());
        let bad = DaemonSettings {
            tracing: Some(TracingSettings {
                endpoint: Some("c:4317".into()),
                sampling_ratio: 1.5,
                service_name: Some(" ".into()),
            }),
            ..d
        };
        let fields: Vec<String> = bad.validate().iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            fields,
            ["tracing.endpoint", "tracing.sampling_ratio", "tracing.service_name"]
        );
        assert!(crate::config::from_yaml::<DaemonSettings>("keys_file: k\ntracing:\n  endpont: x\n").is_err());
    }
}

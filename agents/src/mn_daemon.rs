//! `mip-mn`: the reference Mobile Node daemon (spec §6.2) around [`mip::roles::mn::MobileNode`], on the shared
//! event loop of [`mip_io::daemon`].
//!
//! The home address lives on the TUN `dataplane.tun` (`mip0`) and every `dataplane.tunnelled` prefix (the VPN
//! gateway's address) is routed into it with `src HoA`, so a VPN client binds IKE/ESP to the home address
//! (lab FINDINGS §"MN"). What enters the TUN is carried over the current access link inside the Mobile IP tunnel
//! the registration set up; what comes back out of the tunnel is written into the TUN.
//!
//! # Wiring
//! | source | what | goes to |
//! |---|---|---|
//! | rtnetlink ([`NetWatcher`]) + `ip route show default`, neighbour table, source address toward the home agent | the access link | [`MnInput::Attached`] on a new device, gateway or care-of address (a hand-off); [`MnInput::GatewayChanged`] when only the gateway's MAC changed (a NAT swap behind the same subnet, lab C1↔C2); [`MnInput::Detached`] without a default route |
//! | raw ICMP socket bound to the default-route device | Agent Advertisements (type 9 with the Mobility Agent extension) | [`MnInput::Advertisement`]; an advertisement with F (and not B) attaches [`Attachment::ForeignAgent`] while its lifetime lasts |
//! | UDP `0.0.0.0:mn.source_port` | Registration Replies; RFC 3519 Tunnel Data from the tunnel peer | [`MnInput::Reply`]; the inner packet → TUN, or an echo reply from the peer to the HoA → [`MnInput::KeepaliveReply`] |
//! | raw IPPROTO_IPIP | IP-in-IP from the tunnel peer | inner packet → TUN |
//! | TUN | packets from the HoA to a tunnelled prefix | IP-in-IP (outer source = care-of address) or IPv4/UDP/Tunnel Data to the peer, through a raw sender |
//!
//! A foreign-agent link needs a default route toward the agent (e.g. `default via AGENT dev b0 onlink`) and no
//! address of the node's own; on a link where the node has an address it attaches co-located at once and switches
//! to the agent when an advertisement arrives (a solicitation goes out at every change of device).
//!
//! Role outputs: registrations and keepalives leave from the UDP socket (one port for everything, RFC 3519
//! §4.4); solicitations (ICMP type 10, TTL 1, to 224.0.0.11) from a raw sender bound to the current device, also
//! sent once at each change of device.
//!
//! # Kernel state
//! * At start: the TUN (up, MTU `tun_mtu`, `rp_filter` 0) with `HoA/32`, and `ip route replace PREFIX dev TUN
//!   src HoA` for every tunnelled prefix. The routes are in place before the first registration on purpose
//!   (fail closed): without them a VPN client's HoA-sourced IKE would leak out of the access link (FINDINGS
//!   pitfall 5). While no registration is in force, what enters the TUN is dropped and counted (`not_registered`).
//! * Registered through a foreign agent (FA care-of address): the routes become `PREFIX via AGENT dev DEV src HoA
//!   onlink` (RFC 3024 direct delivery; the agent reverse-tunnels); registered co-located: back to `dev TUN`.
//! * Deregistered at home: the routes are removed (traffic flows natively); a binding that lapsed elsewhere
//!   reverts to `dev TUN` (fail closed).
//! * SIGTERM: the routes are removed and the TUN (with the HoA) disappears with the process. No deregistration is
//!   sent: the binding expires at the agent (a restart re-registers at once).
//!
//! # Metrics and status
//! `mip_registrations_total{role="mn", code}` (authenticated replies, and local failures: 78 gave up, 131 no SA),
//! `mip_handoffs_total`, `mip_gateway_changes_total`, `mip_keepalives_total{result="sent"|"answered"}`,
//! `mip_tunnel_packets_total` / `mip_tunnel_bytes_total{direction="up"|"down", encapsulation="ipip"|"udp"}`,
//! `mip_tunnel_mtu_bytes{encapsulation}` (the TUN's MTU), `mip_drops_total{path="up"|"down"|"control", reason}`,
//! `mip_bindings` (1 while registered), `mip_icmp_errors_total` (docs/metrics.md). `/status` (role `mn`) adds
//! `bindings` and `mobile_node` (what `/bindings` shows); every outcome (and local failure) and control-plane drop
//! is recorded for its `recent_registrations` / `last_errors`.
//!
//! Nothing is logged per packet: one info line per attachment change and per registration outcome.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;
use std::collections::HashMap;
use std::io;

use mio::{Interest, Registry as MioRegistry, Token};

use mip::config::Prefix;
use mip::daemon::{MnDataPlane, MnFile};
use mip::keystore::KeyStore;
use mip::roles::Now;
use mip::roles::mn::{Attachment, MIP_PORT, MnInput, MnOutput, MnState, MnTunnel, MobileNode};
use mip::time::Instant;
use mip::wire::icmp::types as icmp_types;
use mip::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, protocol};
use mip::wire::tunnel;
use mip::wire::{AgentAdvertisementRepr, AgentSolicitation, MobilityAgentFlags};
use mip_io::Clock;
use mip_io::admin::{Recorder, RegistrationRecord};
use mip_io::batch::RecvBatch;
use mip_io::daemon::{Context, FIRST_SERVICE_TOKEN, Service, filled};
use mip_io::metrics::{Counter, DropCounters, Registry};
use mip_io::net::{self, Route};
use mip_io::socket::{IcmpErrorReport, RawSocket, UdpOptions, UdpSocket};
use mip_io::tun::Tun;
use mip_io::watch::NetWatcher;
use serde_json::{Value, json};

use crate::register::tunnel_json;
use crate::tunnel_io::{self, CommonMetrics, Dir, Enc, HEADROOM, KEEPALIVE_DATA, Outer, WORK_BUFFER, mac_string};

const UDP_TOKEN: Token = Token(FIRST_SERVICE_TOKEN);
const TUN_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 1);
const IPIP_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 2);
const ICMP_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 3);
const WATCH_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 4);

/// All-mobility-agents multicast group, where solicitations go (RFC 5944 §2.4).
const ALL_MOBILITY_AGENTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 11);
/// Solicitations the daemon sends by itself (at device changes) are at most this frequent (RFC 5944 §2.4).
const SOLICIT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether `addr` is an IPv4 address of interface `dev` (getifaddrs(3); no process). When the interfaces cannot
/// be read, the answer is yes (the kernel's choice stands, as before this check).
fn address_on(dev: &str, addr: Ipv4Addr) -> bool {
    match nix::ifaddrs::getifaddrs() {
        Ok(mut addrs) => addrs.any(|a| {
            a.interface_name == dev
                && a.address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .is_some_and(|sin| sin.ip() == addr)
        }),
        Err(_) => true,
    }
}

/// Care-of addresses remembered with the tunnel type they got (see `Core::provisional_session`).
const TUNNEL_MEMORY: usize = 64;

/// Whether a care-of address is private (RFC 1918) or shared (RFC 6598), i.e. most likely behind a NAT.
pub fn behind_nat(a: Ipv4Addr) -> bool {
    let [x, y, ..] = a.octets();
    a.is_private() || (x == 100 && (64..128).contains(&y))
}

/// Drop reasons of packets read from the TUN: `mip_drops_total{path="up"}`.
const UP_REASONS: &[&str] = &[
    "malformed",
    "not_home_address",
    "not_registered",
    "foreign_agent",
    "too_big",
    "send_failed",
];
/// Drop reasons of packets that arrived through a tunnel: `path="down"`.
const DOWN_REASONS: &[&str] = &[
    "malformed",
    "wrong_protocol",
    "wrong_next_header",
    "not_registered",
    "not_peer",
    "not_home_address",
    "unexpected_message",
    "tun_write_failed",
];

/// Runs `mip-mn` with a loaded configuration until SIGTERM.
pub fn run(file: MnFile) -> Result<(), String> {
    let settings = file.daemon.clone();
    mip_io::daemon::run(&settings, move |ctx| MnService::new(file, ctx))
}

// === attachment detection (pure) ===

/// What the routing table says about the access link in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// Device of the default route.
    pub dev: String,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// The gateway's MAC, when the neighbour table has it.
    pub gateway_mac: Option<[u8; 6]>,
    /// The source address the kernel picks toward the home agent.
    pub source: Option<Ipv4Addr>,
}

/// A foreign agent heard on a device (an advertisement with F).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentHeard {
    /// The agent (the advertisement's source).
    pub agent: Ipv4Addr,
    /// The first care-of address it offers.
    pub care_of_address: Ipv4Addr,
    /// It advertised T (RFC 3024).
    pub reverse_tunnel: bool,
    /// It advertised U (RFC 3519 §3.4).
    pub udp: bool,
    /// When the advertisement's lifetime ends.
    pub expires: Instant,
}

/// The attachment in force and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Device of the default route.
    pub dev: String,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// What the node was told.
    pub attachment: Attachment,
}

/// What a change of the link state means for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new attachment (first one, or a hand-off).
    Attach(Attachment),
    /// Same device, gateway and care-of address; the gateway's MAC is new (`learned`: none was known before).
    GatewayChanged {
        /// The new MAC.
        mac: [u8; 6],
        /// No MAC was known before (first resolution, not a change).
        learned: bool,
    },
    /// No usable link any more.
    Detach,
    /// Nothing the node needs to hear.
    Nothing,
}

fn same_place(a: &Attachment, b: &Attachment) -> bool {
    match (a, b) {
        (Attachment::CoLocated { care_of_address: x, .. }, Attachment::CoLocated { care_of_address: y, .. }) => x == y,
        (x, y) => x == y,
    }
}

/// Decides what the node hears, given the attachment in force, the link as the kernel shows it now, and the
/// foreign agent heard on that link (if any, unexpired). Returns the event and the new attachment in force.
///
/// * No default route → [`LinkEvent::Detach`].
/// * An agent heard on the default-route device → [`Attachment::ForeignAgent`] with its care-of address.
/// * Else the source address toward the home agent is the co-located care-of address; when there is none of
///   the node's own (none, or only the home address), the node cannot register: [`LinkEvent::Detach`].
/// * A different device, gateway or care-of address than in force → [`LinkEvent::Attach`] (a hand-off).
/// * The same, with another gateway MAC → [`LinkEvent::GatewayChanged`]; a MAC that vanished from the
///   neighbour table is not a change.
pub fn decide(
    current: Option<&Current>,
    view: Option<&LinkView>,
    agent: Option<&AgentHeard>,
    home_address: Ipv4Addr,
) -> (LinkEvent, Option<Current>) {
    let lost = |c: Option<&Current>| {
        (
            if c.is_some() {
                LinkEvent::Detach
            } else {
                LinkEvent::Nothing
            },
            None,
        )
    };
    let Some(v) = view else {
        return lost(current);
    };
    let desired = match (agent, v.source) {
        (Some(a), _) => Attachment::ForeignAgent {
            agent: a.agent,
            care_of_address: a.care_of_address,
            co_located: false,
            reverse_tunnel: a.reverse_tunnel,
            udp: a.udp,
        },
        (None, Some(s)) if s != home_address && !s.is_unspecified() && !s.is_loopback() => Attachment::CoLocated {
            care_of_address: s,
            gateway_mac: v.gateway_mac,
        },
        (None, _) => return lost(current),
    };
    let new = Current {
        dev: v.dev.clone(),
        gateway: v.gateway,
        attachment: desired,
    };
    let Some(c) = current else {
        return (LinkEvent::Attach(desired), Some(new));
    };
    if c.dev != v.dev || c.gateway != v.gateway || !same_place(&c.attachment, &desired) {
        return (LinkEvent::Attach(desired), Some(new));
    }
    match (c.attachment, v.gateway_mac) {
        (Attachment::CoLocated { gateway_mac: old, .. }, Some(mac)) if old != Some(mac) => (
            LinkEvent::GatewayChanged {
                mac,
                learned: old.is_none(),
            },
            Some(new),
        ),
        _ => (LinkEvent::Nothing, Some(c.clone())),
    }
}

// === the service ===

/// How the tunnelled prefixes are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RouteMode {
    /// Not installed (at home, or after shutdown).
    Absent,
    /// `dev TUN src HoA`.
    Tun,
    /// `via AGENT dev DEV src HoA onlink` (registered with an FA care-of address).
    ViaAgent { agent: Ipv4Addr, dev: String },
}

/// The registration in force, as the data path uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    care_of_address: Ipv4Addr,
    tunnel: MnTunnel,
    lifetime: u16,
}

impl Session {
    /// The tunnel peer's address (outer source of what it sends us).
    fn peer(&self) -> Option<Ipv4Addr> {
        match self.tunnel {
            MnTunnel::IpIp { peer, .. } => Some(peer),
            MnTunnel::Udp { peer, .. } => Some(*peer.ip()),
            MnTunnel::ForeignAgent { .. } => None,
        }
    }
}

struct Metrics {
    common: CommonMetrics,
    up_drops: DropCounters,
    down_drops: DropCounters,
    keepalives_sent: Counter,
    keepalives_answered: Counter,
    handoffs: Counter,
    gateway_changes: Counter,
}

impl Metrics {
    /// Registers every series of `mip-mn` (besides the skeleton's) at 0; the MTU gauges show `tun_mtu`.
    fn new(registry: &std::sync::Arc<Registry>, tun_mtu: u16) -> Result<Metrics, String> {
        let counter = |name: &'static str, help: &'static str, labels: &[(&'static str, &str)]| {
            registry.counter(name, help, labels).map_err(metric_err)
        };
        const KEEPALIVES: &str = "RFC 3519 keepalives, by result.";
        let common = CommonMetrics::new(registry, "mn")?;
        crate::ha_daemon::tunnel_mtu(registry, tun_mtu)?;
        crate::ha_daemon::registered_at_zero(registry, "mn")?;
        Ok(Metrics {
            common,
            up_drops: CommonMetrics::drops(registry, "up", UP_REASONS)?,
            down_drops: CommonMetrics::drops(registry, "down", DOWN_REASONS)?,
            keepalives_sent: counter("mip_keepalives_total", KEEPALIVES, &[("result", "sent")])?,
            keepalives_answered: counter("mip_keepalives_total", KEEPALIVES, &[("result", "answered")])?,
            handoffs: counter(
                "mip_handoffs_total",
                "Attachments to a new link, gateway or care-of address after the first one.",
                &[],
            )?,
            gateway_changes: counter(
                "mip_gateway_changes_total",
                "Gateway MAC changes with the same care-of address (re-registrations, RFC 3519 §5.1).",
                &[],
            )?,
        })
    }
}

struct Core {
    node: MobileNode,
    hoa: Ipv4Addr,
    home_agent: Ipv4Addr,
    dp: MnDataPlane,
    clock: Clock,
    tun: Tun,
    udp: UdpSocket,
    ipip: RawSocket,
    icmp: RawSocket,
    sender: RawSocket,
    solicit_sender: RawSocket,
    watcher: NetWatcher,
    buf: Box<[u8]>,
    out: Vec<MnOutput>,
    icmp_errors: Vec<IcmpErrorReport>,
    link_dirty: bool,
    view: Option<LinkView>,
    current: Option<Current>,
    agents: HashMap<String, AgentHeard>,
    /// The device the ICMP receiver and the solicitation sender are bound to.
    icmp_dev: Option<String>,
    last_solicit: Option<Instant>,
    attached_once: bool,
    session: Option<Session>,
    /// Per co-located care-of address: whether the last registration from it got a UDP tunnel.
    tunnel_memory: HashMap<Ipv4Addr, bool>,
    routes: RouteMode,
    keepalive_seq: u16,
    ident: u16,
    /// Registration attempts as trace spans (issue 7; only while traces are exported).
    traces: crate::traces::MnTraces,
    m: Metrics,
    /// Recent registrations and errors for `/status`.
    status: Recorder,
}

/// The `mip-mn` service plugged into [`mip_io::daemon::run`].
pub struct MnService {
    core: Core,
    batch: RecvBatch,
}

impl std::fmt::Debug for MnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MnService")
            .field("home_address", &self.core.hoa)
            .field("state", &self.core.node.state())
            .field("attachment", &self.core.current)
            .finish_non_exhaustive()
    }
}

fn metric_err(e: impl std::fmt::Display) -> String {
    format!("metrics: {e}")
}

impl MnService {
    /// Sets up the TUN, routes and sockets and builds the node (called by [`mip_io::daemon::run`]).
    pub fn new(file: MnFile, ctx: &Context) -> Result<MnService, String> {
        let MnFile {
            mn: config,
            dataplane: dp,
            ..
        } = file;
        let home_agent = config.home_agent;
        let port = config.source_port;
        let node = MobileNode::new(config, ctx.keys.clone(), tunnel_io::seed());
        let hoa = node.home_address();
        let tun = Tun::open(&dp.tun, dp.tun_mtu).map_err(|e| format!("TUN {}: {e}", dp.tun))?;
        tun.up().map_err(|e| e.to_string())?;
        // Only matters where `all.rp_filter` is 0; the route back to a tunnel peer's packets points into the TUN
        // anyway, so strict mode passes too (FINDINGS pitfall 3).
        if let Err(e) = net::sysctl(&format!("net.ipv4.conf.{}.rp_filter", tun.name()), "0") {
            tracing::warn!(error = %e, "cannot turn rp_filter off on the TUN");
        }
        if !hoa.is_unspecified() {
            tun.add_address(hoa, 32).map_err(|e| e.to_string())?;
        }
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let udp = UdpSocket::bind_with(bind, &UdpOptions::default()).map_err(|e| format!("UDP {bind}: {e}"))?;
        let ipip = RawSocket::ipip().map_err(|e| format!("raw IP-in-IP socket: {e}"))?;
        let icmp = RawSocket::protocol(protocol::ICMP).map_err(|e| format!("raw ICMP socket: {e}"))?;
        let sender = RawSocket::sender().map_err(|e| format!("raw sender socket: {e}"))?;
        let solicit_sender = RawSocket::sender().map_err(|e| format!("raw sender socket: {e}"))?;
        let watcher = NetWatcher::new().map_err(|e| format!("rtnetlink: {e}"))?;
        let m = Metrics::new(&ctx.metrics, dp.tun_mtu)?;
        let mut core = Core {
            node,
            hoa,
            home_agent,
            dp,
            clock: ctx.clock,
            tun,
            udp,
            ipip,
            icmp,
            sender,
            solicit_sender,
            watcher,
            buf: vec![0u8; WORK_BUFFER].into_boxed_slice(),
            out: Vec::new(),
            icmp_errors: Vec::new(),
            link_dirty: true,
            view: None,
            current: None,
            agents: HashMap::new(),
            icmp_dev: None,
            last_solicit: None,
            attached_once: false,
            session: None,
            tunnel_memory: HashMap::new(),
            routes: RouteMode::Absent,
            keepalive_seq: 0,
            ident: 0,
            traces: crate::traces::MnTraces::new(mip_io::telemetry::active()),
            m,
            status: ctx.status.clone(),
        };
        core.apply_routes(RouteMode::Tun);
        tracing::info!(
            home_address = %hoa, home_agent = %home_agent, tun = %core.tun.name(), mtu = core.dp.tun_mtu,
            "mobile node ready"
        );
        Ok(MnService {
            core,
            batch: RecvBatch::default(),
        })
    }
}

impl Service for MnService {
    fn register(&mut self, registry: &MioRegistry) -> io::Result<()> {
        let c = &mut self.core;
        registry.register(&mut c.udp, UDP_TOKEN, Interest::READABLE)?;
        registry.register(&mut c.tun, TUN_TOKEN, Interest::READABLE)?;
        registry.register(&mut c.ipip, IPIP_TOKEN, Interest::READABLE)?;
        registry.register(&mut c.icmp, ICMP_TOKEN, Interest::READABLE)?;
        registry.register(&mut c.watcher, WATCH_TOKEN, Interest::READABLE)
    }

    fn ready(&mut self, token: Token, now: Now) {
        let c = &mut self.core;
        match token {
            UDP_TOKEN => {
                tunnel_io::count_icmp_errors(&c.udp, &mut c.icmp_errors, &c.m.common.icmp_errors);
                while filled(c.udp.recv_batch(&mut self.batch), &self.batch, "the UDP socket").is_some() {
                    for r in self.batch.iter() {
                        match r.payload.first() {
                            Some(&tunnel::TYPE_TUNNEL_DATA) => c.tunnel_data(now, r.src, r.payload),
                            _ => c.feed(now, MnInput::Reply(r.datagram())),
                        }
                    }
                }
            }
            TUN_TOKEN => {
                while let Some(n) = tunnel_io::read_tun(&c.tun, &mut c.buf) {
                    c.uplink(n);
                }
            }
            IPIP_TOKEN => {
                while filled(c.ipip.recv_batch(&mut self.batch), &self.batch, "the raw IPIP socket").is_some() {
                    for r in self.batch.iter() {
                        c.downlink_ipip(r.payload);
                    }
                }
            }
            ICMP_TOKEN => {
                while filled(c.icmp.recv_batch(&mut self.batch), &self.batch, "the raw ICMP socket").is_some() {
                    for r in self.batch.iter() {
                        c.icmp_packet(now, r.payload);
                    }
                }
            }
            WATCH_TOKEN => match c.watcher.drain() {
                Ok(changed) => c.link_dirty |= changed,
                Err(e) => {
                    tracing::warn!(error = %e, "rtnetlink receive failed");
                    c.link_dirty = true;
                }
            },
            _ => {}
        }
    }

    fn tick(&mut self, now: Now) {
        let c = &mut self.core;
        let before = c.agents.len();
        c.agents.retain(|_, a| a.expires > now.instant);
        if c.agents.len() != before {
            c.link_dirty = true;
        }
        if c.link_dirty {
            c.link_dirty = false;
            c.refresh_link(now);
        }
        if c.node.next_timer().is_some_and(|t| t <= now.instant) {
            c.feed(now, MnInput::Tick);
        }
    }

    fn next_timer(&mut self) -> Option<Instant> {
        let c = &self.core;
        if c.link_dirty {
            return Some(Instant::ZERO);
        }
        let agents = c.agents.values().map(|a| a.expires).min();
        [c.node.next_timer(), agents].into_iter().flatten().min()
    }

    fn set_keys(&mut self, keys: KeyStore) {
        self.core.node.set_keys(keys);
    }

    fn bindings_json(&self) -> String {
        self.core.bindings_json().to_string()
    }

    fn role(&self) -> &'static str {
        "mn"
    }

    fn status_json(&self) -> Value {
        json!({
            "bindings": self.core.m.common.bindings.get(),
            "mobile_node": self.core.bindings_json(),
        })
    }

    fn shutdown(&mut self) {
        self.core.apply_routes(RouteMode::Absent);
        tracing::info!("mobile node stopped (no deregistration sent; the binding expires at the agent)");
    }
}

impl Core {
    // --- the role ---

    /// Feeds the node and carries out what it asks for.
    fn feed(&mut self, now: Now, input: MnInput<'_>) {
        let peer = match &input {
            MnInput::Reply(d) => Some(SocketAddr::V4(d.src)),
            _ => None,
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.node.handle(now, input, &mut out);
        let replied = out.iter().any(|o| matches!(o, MnOutput::Outcome(_)));
        for o in out.drain(..) {
            self.traces.output(&o, replied);
            match o {
                MnOutput::Send(t) => {
                    if let Err(e) = self.udp.send_transmit(&t) {
                        self.m.common.control_drops.inc("send_failed");
                        self.status.error("send_failed", Some(SocketAddr::V4(t.dst)), &e);
                        tracing::debug!(dst = %t.dst, error = %e, "registration request not sent");
                    }
                }
                MnOutput::SendKeepalive { src, dst } => self.send_keepalive(src, dst),
                MnOutput::SendSolicitation => self.solicit(now, true),
                MnOutput::Registered {
                    care_of_address,
                    tunnel,
                    lifetime,
                    ..
                } => self.registered(care_of_address, tunnel, lifetime),
                MnOutput::Deregistered => self.deregistered(),
                MnOutput::RegistrationFailed { code } => {
                    // Denials also come with an Outcome (counted and logged there); these are local failures.
                    if !replied {
                        self.m.common.registration(code.value());
                        self.status.registration(RegistrationRecord {
                            at: std::time::SystemTime::now(),
                            home_address: self.node.home_address(),
                            nai: None,
                            care_of_address: self.session.map_or(Ipv4Addr::UNSPECIFIED, |s| s.care_of_address),
                            home_agent: Some(self.home_agent),
                            code: code.value(),
                            lifetime: 0,
                            nat_detected: false,
                        });
                        tracing::warn!(code = code.value(), "registration failed: {}", code.description());
                    }
                }
                MnOutput::Outcome(o) => {
                    self.m.common.registration(o.code.value());
                    self.status.outcome(&o, None);
                    let result = if !o.code.is_accepted() {
                        "denied"
                    } else if o.lifetime == 0 {
                        "deregistered"
                    } else {
                        "accepted"
                    };
                    tracing::info!(
                        care_of_address = %o.care_of_address,
                        home_agent = %o.home_agent.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        code = o.code.value(),
                        lifetime = o.lifetime,
                        nat = o.nat_detected,
                        "registration {result}"
                    );
                }
                MnOutput::Drop(r) => {
                    self.m.common.control_drops.inc(r.as_str());
                    self.status.drop(r.as_str(), peer);
                }
            }
        }
        self.out = out;
        self.sync_home_address();
    }

    /// A home address assigned by the home agent (configured 0.0.0.0, RFC 2794) goes onto the TUN.
    fn sync_home_address(&mut self) {
        let hoa = self.node.home_address();
        if hoa == self.hoa || hoa.is_unspecified() {
            return;
        }
        if let Err(e) = self.tun.add_address(hoa, 32) {
            tracing::error!(home_address = %hoa, error = %e, "cannot put the assigned home address on the TUN");
            return;
        }
        tracing::info!(home_address = %hoa, "home address assigned");
        self.hoa = hoa;
        let mode = std::mem::replace(&mut self.routes, RouteMode::Absent);
        self.apply_routes(mode);
    }

    fn registered(&mut self, care_of_address: Ipv4Addr, tunnel: MnTunnel, lifetime: u16) {
        if !matches!(tunnel, MnTunnel::ForeignAgent { .. }) {
            if self.tunnel_memory.len() >= TUNNEL_MEMORY {
                self.tunnel_memory.clear();
            }
            self.tunnel_memory
                .insert(care_of_address, matches!(tunnel, MnTunnel::Udp { .. }));
        }
        self.session = Some(Session {
            care_of_address,
            tunnel,
            lifetime,
        });
        self.m.common.bindings.set(1);
        let mode = match tunnel {
            MnTunnel::ForeignAgent { agent } => RouteMode::ViaAgent {
                agent,
                dev: self.current.as_ref().map(|c| c.dev.clone()).unwrap_or_default(),
            },
            MnTunnel::IpIp { .. } | MnTunnel::Udp { .. } => RouteMode::Tun,
        };
        self.apply_routes(mode);
    }

    /// A hand-off to a new co-located care-of address while a registration is in force: until the reply to the
    /// new request arrives, the uplink already leaves from the new address, in the encapsulation the agent is
    /// expected to choose (what it chose for this care-of address last time; else RFC 3519 UDP for a private
    /// address, which is behind a NAT, and IP-in-IP for a public one). The request goes out first (it is sent
    /// while the node handles the attachment, before the next packet is read from the TUN), and the agent moves
    /// the binding when the request arrives, so the packets that follow it get through: the hand-off costs the
    /// uplink nothing instead of one round trip to the agent. Downlink packets are accepted from the tunnel peer
    /// in either encapsulation anyway. A wrong guess only costs what waiting for the reply would have cost; a
    /// denied request ends the provisional session like any other ([`MnOutput::Deregistered`] on expiry).
    fn provisional_session(&mut self, att: Attachment) {
        let Attachment::CoLocated { care_of_address, .. } = att else {
            return;
        };
        let Some(old) = self.session else {
            return;
        };
        if old.care_of_address == care_of_address && !matches!(old.tunnel, MnTunnel::ForeignAgent { .. }) {
            // Same address (another NAT, lab C1 <-> C2): the session in force already sends from it.
            return;
        }
        let peer = old.peer().unwrap_or(self.home_agent);
        let cfg = &self.node.config().udp_tunnelling;
        let udp = cfg.enabled
            && (cfg.force
                || self
                    .tunnel_memory
                    .get(&care_of_address)
                    .copied()
                    .unwrap_or_else(|| behind_nat(care_of_address)));
        let tunnel = if udp {
            let (port, keepalive_secs) = match old.tunnel {
                MnTunnel::Udp {
                    peer, keepalive_secs, ..
                } => (peer.port(), keepalive_secs),
                _ => (MIP_PORT, cfg.default_keepalive),
            };
            MnTunnel::Udp {
                local_port: self.udp.local_addr().port(),
                peer: SocketAddrV4::new(peer, port),
                keepalive_secs,
            }
        } else {
            MnTunnel::IpIp {
                local: care_of_address,
                peer,
            }
        };
        tracing::debug!(care_of_address = %care_of_address, udp, "provisional uplink until the reply");
        self.session = Some(Session {
            care_of_address,
            tunnel,
            lifetime: old.lifetime,
        });
        self.apply_routes(RouteMode::Tun);
    }

    fn deregistered(&mut self) {
        if self.session.take().is_some() && self.node.state() != MnState::AtHome {
            tracing::info!("no registration in force: tunnelled traffic is dropped until the next one");
        }
        self.m.common.bindings.set(0);
        let mode = if self.node.state() == MnState::AtHome {
            RouteMode::Absent
        } else {
            RouteMode::Tun
        };
        self.apply_routes(mode);
    }

    fn apply_routes(&mut self, mode: RouteMode) {
        if mode == self.routes {
            return;
        }
        let src = (!self.hoa.is_unspecified()).then_some(self.hoa);
        for prefix in self.dp.tunnelled.clone() {
            let result = match &mode {
                RouteMode::Absent => {
                    let r = self.route_for(&self.routes, prefix, src);
                    net::route_del_with(&r).or_else(|e| if e.is_missing() { Ok(()) } else { Err(e) })
                }
                m => net::route_replace_with(&self.route_for(m, prefix, src)),
            };
            if let Err(e) = result {
                tracing::error!(prefix = %prefix, error = %e, "tunnelled route");
            }
        }
        tracing::debug!(routes = ?mode, "tunnelled routes");
        self.routes = mode;
    }

    fn route_for(&self, mode: &RouteMode, prefix: Prefix, src: Option<Ipv4Addr>) -> Route {
        match mode {
            RouteMode::ViaAgent { agent, dev } => Route {
                via: Some(*agent),
                dev: Some(dev.clone()),
                src,
                onlink: true,
                ..Route::to(prefix)
            },
            RouteMode::Tun => Route {
                dev: Some(self.tun.name().to_string()),
                src,
                ..Route::to(prefix)
            },
            RouteMode::Absent => Route::to(prefix),
        }
    }

    // --- the link ---

    fn read_view(&self) -> Result<Option<LinkView>, String> {
        let Some(g) = net::default_gateway().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // The kernel picks a source toward the agent even where the default-route device has no address of
        // ours (a foreign-agent link): an address of a link that went down, or the home address. Only an address
        // on the device itself is a co-located care-of address; registering anything else would bind the node
        // to a place it has left (observed: C1 -> B registered the old routable address through FA 1's link).
        let source = net::source_address_for(self.home_agent).filter(|s| address_on(&g.dev, *s));
        Ok(Some(LinkView {
            dev: g.dev,
            gateway: g.address,
            gateway_mac: g.mac,
            source,
        }))
    }

    fn refresh_link(&mut self, now: Now) {
        let view = match self.read_view() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reading the default route failed");
                return;
            }
        };
        if let Some(v) = &view
            && self.icmp_dev.as_deref() != Some(v.dev.as_str())
        {
            self.listen_on(&v.dev);
            self.view = view;
            self.solicit(now, false);
        } else {
            self.view = view;
        }
        self.decide(now);
    }

    /// Binds the advertisement receiver and the solicitation sender to `dev`; what the receiver queued before
    /// came from another device and is discarded.
    fn listen_on(&mut self, dev: &str) {
        let bound = self
            .icmp
            .bind_device(dev)
            .and_then(|()| self.solicit_sender.bind_device(dev));
        match bound {
            Ok(()) => {
                self.icmp_dev = Some(dev.to_string());
                let mut scratch = RecvBatch::new(8, 64);
                while self.icmp.recv_batch(&mut scratch).is_ok_and(|n| n > 0) {}
            }
            Err(e) => {
                self.icmp_dev = None;
                tracing::warn!(dev, error = %e, "cannot listen for agent advertisements");
            }
        }
    }

    fn decide(&mut self, now: Now) {
        let agent = self
            .view
            .as_ref()
            .and_then(|v| self.agents.get(&v.dev))
            .filter(|a| a.expires > now.instant)
            .copied();
        let (event, current) = decide(self.current.as_ref(), self.view.as_ref(), agent.as_ref(), self.hoa);
        self.current = current;
        match event {
            LinkEvent::Attach(att) => {
                if self.attached_once {
                    self.m.handoffs.inc();
                }
                self.attached_once = true;
                let dev = self.current.as_ref().map_or("", |c| c.dev.as_str());
                match att {
                    Attachment::CoLocated { care_of_address, .. } => {
                        tracing::info!(dev, care_of_address = %care_of_address, "attached (co-located care-of address)");
                    }
                    Attachment::ForeignAgent {
                        agent, care_of_address, ..
                    } => {
                        tracing::info!(dev, agent = %agent, care_of_address = %care_of_address, "attached (foreign agent)");
                    }
                    Attachment::Home => tracing::info!(dev, "attached (home)"),
                }
                self.provisional_session(att);
                self.feed(now, MnInput::Attached(att));
            }
            LinkEvent::GatewayChanged { mac, learned } => {
                if learned {
                    tracing::debug!(mac = %mac_string(mac), "gateway MAC learned");
                } else {
                    self.m.gateway_changes.inc();
                    tracing::info!(mac = %mac_string(mac), "gateway MAC changed with the same care-of address");
                }
                self.feed(now, MnInput::GatewayChanged { mac });
            }
            LinkEvent::Detach => {
                tracing::info!("detached (no usable default route)");
                self.feed(now, MnInput::Detached);
            }
            LinkEvent::Nothing => {}
        }
    }

    /// An ICMP packet heard on the default-route device: Agent Advertisements matter.
    fn icmp_packet(&mut self, now: Now, packet: &[u8]) {
        let Ok(p) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        if p.protocol() != protocol::ICMP || p.is_fragment() {
            return;
        }
        let src = p.src_addr();
        let icmp = p.into_payload();
        if icmp.first() != Some(&icmp_types::ROUTER_ADVERTISEMENT) {
            return;
        }
        let (Some(dev), Some(view)) = (self.icmp_dev.clone(), self.view.as_ref()) else {
            return;
        };
        if view.dev != dev {
            return;
        }
        if let Ok(adv) = AgentAdvertisementRepr::parse(icmp)
            && let Some(m) = adv.mobility
            && m.flags.has(MobilityAgentFlags::F)
            && !m.flags.has(MobilityAgentFlags::B)
            && let Some(coa) = m.care_of_addresses.iter().next()
        {
            let heard = AgentHeard {
                agent: src,
                care_of_address: coa,
                reverse_tunnel: m.flags.has(MobilityAgentFlags::T),
                udp: m.flags.has(MobilityAgentFlags::U),
                expires: now.instant + Duration::from_secs(u64::from(adv.lifetime.max(1))),
            };
            let new = self
                .agents
                .insert(dev, heard)
                .is_none_or(|old| old.agent != heard.agent);
            if new {
                tracing::debug!(agent = %src, care_of_address = %coa, "foreign agent heard");
            }
            self.decide(now);
        }
        self.feed(now, MnInput::Advertisement { src, icmp });
    }

    /// Sends an Agent Solicitation on the current device (`forced`: the role asked; else at most one per second).
    fn solicit(&mut self, now: Now, forced: bool) {
        if self.icmp_dev.is_none() {
            return;
        }
        if !forced && self.last_solicit.is_some_and(|t| now.instant < t + SOLICIT_INTERVAL) {
            return;
        }
        self.last_solicit = Some(now.instant);
        let ip = Ipv4Repr {
            // 0.0.0.0: the kernel fills in the device's address.
            src_addr: Ipv4Addr::UNSPECIFIED,
            dst_addr: ALL_MOBILITY_AGENTS,
            protocol: protocol::ICMP,
            payload_len: AgentSolicitation::LEN,
            ttl: 1,
            tos: 0,
            ident: self.next_ident(),
            dont_frag: false,
        };
        let mut pkt = [0u8; ipv4::HEADER_LEN + AgentSolicitation::LEN];
        let built = ip.emit(&mut pkt).is_ok()
            && pkt
                .get_mut(ipv4::HEADER_LEN..)
                .is_some_and(|b| AgentSolicitation.emit(b).is_ok());
        if !built || self.solicit_sender.send(&pkt).is_err() {
            self.m.common.control_drops.inc("send_failed");
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    // --- the data path ---

    fn send_keepalive(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        self.keepalive_seq = self.keepalive_seq.wrapping_add(1);
        let ident = (std::process::id() & 0xffff) as u16;
        let sent = tunnel_io::write_echo(
            &mut self.buf,
            false,
            self.hoa,
            *dst.ip(),
            ident,
            self.keepalive_seq,
            KEEPALIVE_DATA,
        )
        .and_then(|len| tunnel_io::tunnel_data_payload(&mut self.buf, len))
        .and_then(|r| self.buf.get(r))
        .map(|payload| {
            self.udp
                .send_from(payload, Some(*src.ip()), dst, Some(self.dp.outer_ttl))
        });
        match sent {
            Some(Ok(())) => self.m.keepalives_sent.inc(),
            _ => {
                self.m.common.control_drops.inc("send_failed");
            }
        }
    }

    /// A packet of `len` bytes read from the TUN into `buf[HEADROOM..]`: into the tunnel.
    fn uplink(&mut self, len: usize) {
        let drops = &self.m.up_drops;
        let Some(i) = self.buf.get(HEADROOM..HEADROOM + len).and_then(tunnel_io::inner) else {
            drops.inc("malformed");
            return;
        };
        if i.src != self.hoa {
            drops.inc("not_home_address");
            return;
        }
        let Some(s) = self.session else {
            drops.inc("not_registered");
            return;
        };
        let ident = self.next_ident();
        let outer = |src, dst| Outer {
            src,
            dst,
            ttl: self.dp.outer_ttl,
            tos: i.tos,
            df: i.df,
            ident,
        };
        let (range, enc) = match s.tunnel {
            MnTunnel::IpIp { local, peer } => {
                let o = outer(local, peer);
                (tunnel_io::encap_ipip(&mut self.buf, i.len, &o), Enc::IpIp)
            }
            MnTunnel::Udp { local_port, peer, .. } => {
                let o = outer(s.care_of_address, *peer.ip());
                let r = tunnel_io::encap_udp(&mut self.buf, i.len, &o, local_port, peer.port());
                (r, Enc::Udp)
            }
            MnTunnel::ForeignAgent { .. } => {
                self.m.up_drops.inc("foreign_agent");
                return;
            }
        };
        let Some(packet) = range.and_then(|r| self.buf.get(r)) else {
            self.m.up_drops.inc("malformed");
            return;
        };
        match self.sender.send(packet) {
            Ok(()) => self.m.common.tunnel(Dir::Up, enc, i.len),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.m.up_drops.inc("too_big");
            }
            Err(_) => {
                self.m.up_drops.inc("send_failed");
            }
        }
    }

    /// RFC 3519 Tunnel Data from `src` on the UDP socket.
    fn tunnel_data(&mut self, now: Now, src: SocketAddrV4, payload: &[u8]) {
        let drops = &self.m.down_drops;
        let Some(peer) = self.session.and_then(|s| s.peer()) else {
            drops.inc("not_registered");
            return;
        };
        if *src.ip() != peer || src.port() != MIP_PORT {
            drops.inc("not_peer");
            return;
        }
        let (i, inner) = match tunnel_io::tunnel_data_inner(payload) {
            Ok(x) => x,
            Err(reason) => {
                drops.inc(reason);
                return;
            }
        };
        if i.src == peer && i.dst == self.hoa && matches!(tunnel_io::echo(inner), Some((true, ..))) {
            self.m.keepalives_answered.inc();
            self.feed(now, MnInput::KeepaliveReply);
            return;
        }
        self.deliver(inner, i.dst, Enc::Udp);
    }

    /// An IP-in-IP packet (outer header included) from the raw socket.
    fn downlink_ipip(&mut self, packet: &[u8]) {
        let drops = &self.m.down_drops;
        let (outer_src, payload) = match tunnel_io::ipip_outer(packet) {
            Ok(x) => x,
            Err(reason) => {
                drops.inc(reason);
                return;
            }
        };
        let Some(peer) = self.session.and_then(|s| s.peer()) else {
            drops.inc("not_registered");
            return;
        };
        if outer_src != peer {
            drops.inc("not_peer");
            return;
        }
        let Some(i) = tunnel_io::inner(payload) else {
            drops.inc("malformed");
            return;
        };
        self.deliver(payload.get(..i.len).unwrap_or(payload), i.dst, Enc::IpIp);
    }

    fn deliver(&mut self, inner: &[u8], dst: Ipv4Addr, enc: Enc) {
        if dst != self.hoa {
            self.m.down_drops.inc("not_home_address");
            return;
        }
        match self.tun.write(inner) {
            Ok(_) => self.m.common.tunnel(Dir::Down, enc, inner.len()),
            Err(_) => {
                self.m.down_drops.inc("tun_write_failed");
            }
        }
    }

    // --- admin ---

    fn bindings_json(&self) -> Value {
        let now = self.clock.instant();
        let (state, attempt, expires_in_ms) = match self.node.state() {
            MnState::Idle => ("idle", None, None),
            MnState::Registering { attempt } => ("registering", Some(attempt), None),
            MnState::Registered { expires_at, .. } => (
                "registered",
                None,
                (expires_at != Instant::from_millis(u64::MAX))
                    .then(|| u64::try_from(expires_at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
            ),
            MnState::Deregistering => ("deregistering", None, None),
            MnState::AtHome => ("at_home", None, None),
        };
        let routes = match &self.routes {
            RouteMode::Absent => json!({"type": "absent"}),
            RouteMode::Tun => json!({"type": "tun", "dev": self.tun.name()}),
            RouteMode::ViaAgent { agent, dev } => json!({"type": "via_agent", "agent": agent.to_string(), "dev": dev}),
        };
        json!({
            "home_address": self.hoa.to_string(),
            "state": state,
            "attempt": attempt,
            "care_of_address": self.session.map(|s| s.care_of_address.to_string()),
            "tunnel": self.session.map(|s| tunnel_json(&s.tunnel)),
            "lifetime": self.session.map(|s| s.lifetime),
            "expires_in_ms": expires_in_ms,
            "attachment": self.current.as_ref().map(attachment_json),
            "routes": routes,
        })
    }
}

fn attachment_json(c: &Current) -> Value {
    let mut v = match c.attachment {
        Attachment::CoLocated {
            care_of_address,
            gateway_mac,
        } => json!({
            "type": "co_located",
            "care_of_address": care_of_address.to_string(),
            "gateway_mac": gateway_mac.map(mac_string),
        }),
        Attachment::ForeignAgent {
            agent,
            care_of_address,
            reverse_tunnel,
            udp,
            ..
        } => json!({
            "type": "foreign_agent",
            "agent": agent.to_string(),
            "care_of_address": care_of_address.to_string(),
            "reverse_tunnel": reverse_tunnel,
            "udp": udp,
        }),
        Attachment::Home => json!({"type": "home"}),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("device".into(), json!(c.dev));
        o.insert("gateway".into(), json!(c.gateway.to_string()));
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// Every series `mip-mn` registers is listed in docs/metrics.md under its section.
    #[test]
    fn metrics_are_documented() {
        let r = std::sync::Arc::new(Registry::new());
        let _m = Metrics::new(&r, 1400).unwrap();
        mip_io::metrics::check_documented(&r, include_str!("../../docs/metrics.md"), "mip-mn").unwrap();
        let text = r.render();
        assert!(
            text.contains("mip_registrations_total{role=\"mn\",code=\"0\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("mip_tunnel_mtu_bytes{encapsulation=\"ipip\"} 1400\n"),
            "{text}"
        );
    }

    #[test]
    fn private_and_shared_care_of_addresses_are_expected_behind_a_nat() {
        for a in [
            "192.168.1.10",
            "10.1.2.3",
            "172.16.0.9",
            "100.64.0.1",
            "100.127.255.254",
        ] {
            assert!(behind_nat(a.parse().unwrap()), "{a}");
        }
        for a in ["192.0.2.10", "198.51.101.2", "100.128.0.1", "8.8.8.8"] {
            assert!(!behind_nat(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn an_address_counts_only_on_its_own_device() {
        assert!(address_on("lo", Ipv4Addr::LOCALHOST));
        assert!(!address_on("lo", Ipv4Addr::new(192, 0, 2, 10)));
        assert!(!address_on("no-such-dev0", Ipv4Addr::LOCALHOST));
    }

    fn view(dev: &str, gw: [u8; 4], mac: Option<[u8; 6]>, src: Option<[u8; 4]>) -> LinkView {
        LinkView {
            dev: dev.into(),
            gateway: Ipv4Addr::from(gw),
            gateway_mac: mac,
            source: src.map(Ipv4Addr::from),
        }
    }

    fn colo(coa: [u8; 4], mac: Option<[u8; 6]>) -> Attachment {
        Attachment::CoLocated {
            care_of_address: Ipv4Addr::from(coa),
            gateway_mac: mac,
        }
    }

    #[test]
    fn first_attachment_handoff_and_detach() {
        let a = view("a0", [192, 0, 2, 1], None, Some([192, 0, 2, 10]));
        let (e, cur) = decide(None, Some(&a), None, HOA);
        assert_eq!(e, LinkEvent::Attach(colo([192, 0, 2, 10], None)));
        let cur = cur.unwrap();
        assert_eq!(decide(Some(&cur), Some(&a), None, HOA).0, LinkEvent::Nothing);

        // C1 -> C2: same address, another device: a hand-off.
        let c1 = view("c1", [192, 168, 1, 1], Some(MAC1), Some([192, 168, 1, 10]));
        let (e, cur) = decide(Some(&cur), Some(&c1), None, HOA);
        assert_eq!(e, LinkEvent::Attach(colo([192, 168, 1, 10], Some(MAC1))));
        let c2 = view("c2", [192, 168, 1, 1], Some(MAC2), Some([192, 168, 1, 10]));
        let (e, cur) = decide(cur.as_ref(), Some(&c2), None, HOA);
        assert_eq!(e, LinkEvent::Attach(colo([192, 168, 1, 10], Some(MAC2))));

        // Same device and address, another gateway MAC: GatewayChanged; a vanished MAC is not a change.
        let c2b = view("c2", [192, 168, 1, 1], Some(MAC1), Some([192, 168, 1, 10]));
        let (e, cur) = decide(cur.as_ref(), Some(&c2b), None, HOA);
        assert_eq!(
            e,
            LinkEvent::GatewayChanged {
                mac: MAC1,
                learned: false
            }
        );
        let gone = view("c2", [192, 168, 1, 1], None, Some([192, 168, 1, 10]));
        let (e, cur) = decide(cur.as_ref(), Some(&gone), None, HOA);
        assert_eq!(e, LinkEvent::Nothing);
        assert_eq!(cur.as_ref().unwrap().attachment, colo([192, 168, 1, 10], Some(MAC1)));

        // Another gateway address on the same device and address: a hand-off.
        let other_gw = view("c2", [192, 168, 1, 254], Some(MAC1), Some([192, 168, 1, 10]));
        assert!(matches!(
            decide(cur.as_ref(), Some(&other_gw), None, HOA).0,
            LinkEvent::Attach(_)
        ));

        // No default route, or no address of our own: detached.
        assert_eq!(decide(cur.as_ref(), None, None, HOA), (LinkEvent::Detach, None));
        assert_eq!(decide(None, None, None, HOA), (LinkEvent::Nothing, None));
        let only_hoa = view("b0", [192, 0, 3, 1], None, Some([10, 10, 1, 50]));
        assert_eq!(decide(cur.as_ref(), Some(&only_hoa), None, HOA).0, LinkEvent::Detach);
    }

    #[test]
    fn learning_the_mac_is_not_a_change() {
        let a = view("a0", [192, 0, 2, 1], None, Some([192, 0, 2, 10]));
        let (_, cur) = decide(None, Some(&a), None, HOA);
        let a2 = view("a0", [192, 0, 2, 1], Some(MAC1), Some([192, 0, 2, 10]));
        let (e, _) = decide(cur.as_ref(), Some(&a2), None, HOA);
        assert_eq!(
            e,
            LinkEvent::GatewayChanged {
                mac: MAC1,
                learned: true
            }
        );
    }

    #[test]
    fn a_foreign_agent_wins_on_its_link() {
        let fa = AgentHeard {
            agent: Ipv4Addr::new(192, 0, 3, 1),
            care_of_address: Ipv4Addr::new(198, 51, 101, 2),
            reverse_tunnel: true,
            udp: false,
            expires: Instant::from_secs(10),
        };
        let want = Attachment::ForeignAgent {
            agent: fa.agent,
            care_of_address: fa.care_of_address,
            co_located: false,
            reverse_tunnel: true,
            udp: false,
        };
        // Without an address of its own, the node waits for the agent...
        let b = view("b0", [192, 0, 3, 1], None, Some([10, 10, 1, 50]));
        assert_eq!(decide(None, Some(&b), None, HOA).0, LinkEvent::Nothing);
        let (e, cur) = decide(None, Some(&b), Some(&fa), HOA);
        assert_eq!(e, LinkEvent::Attach(want));
        // ...and an agent heard on a link where it had a co-located address takes over.
        let b2 = view("b0", [192, 0, 3, 1], Some(MAC1), Some([192, 0, 3, 10]));
        let (e, colo_cur) = decide(None, Some(&b2), None, HOA);
        assert_eq!(e, LinkEvent::Attach(colo([192, 0, 3, 10], Some(MAC1))));
        assert_eq!(
            decide(colo_cur.as_ref(), Some(&b2), Some(&fa), HOA).0,
            LinkEvent::Attach(want)
        );
        // Advertisements repeating the same agent change nothing; the MAC is not looked at.
        let b3 = view("b0", [192, 0, 3, 1], Some(MAC2), Some([10, 10, 1, 50]));
        assert_eq!(decide(cur.as_ref(), Some(&b3), Some(&fa), HOA).0, LinkEvent::Nothing);
    }

    #[test]
    fn json_shapes() {
        let t = MnTunnel::Udp {
            local_port: 434,
            peer: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 434),
            keepalive_secs: 10,
        };
        assert_eq!(tunnel_json(&t)["peer"], "198.51.100.10:434");
        let c = Current {
            dev: "c0".into(),
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            attachment: colo([192, 168, 1, 10], Some(MAC1)),
        };
        let v = attachment_json(&c);
        assert_eq!(v["type"], "co_located");
        assert_eq!(v["device"], "c0");
        assert_eq!(v["gateway_mac"], "02:00:00:00:00:01");
    }
}

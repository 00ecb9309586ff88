//! `mip-fa`: the reference Foreign Agent daemon. The protocol lives in the sans-IO [`ForeignAgent`]
//! (advertisements, relaying, visitor list, keepalive timers); this module gives it sockets, a TUN and kernel
//! state on the shared event loop ([`mip_io::daemon`]). It serves scenario B (FA care-of address, IP-in-IP
//! between `FA-COA` and `MIPP-Pub`) and scenario D (FA behind a NAT, RFC 3519 UDP tunnel ending at the FA),
//! spec §1.3, with RFC 3024 direct delivery (spec §5.4): the visitor sends plain packets from its home address to
//! the FA's MAC, the FA reverse-tunnels them; downlink, the FA decapsulates and delivers to the visitor's MAC.
//!
//! | source | what arrives | goes to |
//! |---|---|---|
//! | UDP `0.0.0.0:434` bound to `visited_interface` | Registration Requests from visitors | [`FaInput::FromMobile`] (MAC from the neighbour table) |
//! | UDP `routed_address:434` and `care_of_address:434` | first byte 4: RFC 3519 Tunnel Data | decapsulated → TUN (kernel delivers), or [`FaInput::KeepaliveReply`] |
//! | | anything else (Registration Replies) | [`FaInput::FromNetwork`] |
//! | raw ICMP bound to `visited_interface` | Agent Solicitations (type 10) | [`FaInput::Solicitation`] |
//! | raw IPPROTO_IPIP | IP-in-IP from a visitor's home agent | decapsulated → TUN (kernel delivers) |
//! | TUN `dataplane.tun` | visitors' packets (policy-routed into it) | IP-in-IP (raw sender) or UDP tunnel (CoA socket) |
//!
//! | role output | what the daemon does |
//! |---|---|
//! | `Send` | from the network socket whose local address is the transmit's source (RFC 3519 §4.5: behind a NAT that is the care-of address) |
//! | `SendToMobile` | `ip neigh replace` the visitor's MAC (no ARP, RFC 5944 §3.7.3.2), send from the visited socket; the entry is removed again unless the address is a visitor's |
//! | `Advertise` | IPv4 (TTL 1, source `visited_address`) + ICMP through an IP_HDRINCL raw socket bound to the visited interface |
//! | `Visitor` | install / remove the visitor's kernel state (below) |
//! | `SendKeepalive` | UDP(CoA:434 → remote)/Tunnel Data/IPv4(home address → remote)/ICMP echo request |
//!
//! # Kernel state
//! * Sysctls: `net.ipv4.ip_forward = 1`; `rp_filter = 0` on `all`, `default`, the visited interface and the TUN
//!   (a visitor's home address is not on the visited subnet: with a reverse-path filter its ARP requests and its
//!   packets would be dropped); IPv6 off on the TUN (best effort). Sysctls are left as they are at shutdown.
//! * TUN `dataplane.tun` (MTU `tun_mtu`, up, no address) and `default dev <tun> table <table>`.
//! * Per visitor with an FA tunnel (not co-located): `HoA/32 dev <visited> src <visited_address>` (delivery),
//!   `ip neigh replace HoA lladdr <mac> dev <visited> nud permanent`, and with T set `ip rule add iif <visited>
//!   from HoA/32 lookup <table>` (reverse tunnelling: its packets enter the TUN). Removed on deregistration,
//!   expiry and shutdown. A co-located visitor (D = 1 through this FA) decapsulates itself: nothing is installed.
//!   Rules `iif <visited> … lookup <table>` left behind by a run that did not shut down are removed at start;
//!   routes and neighbour entries of such a run are replaced when the visitor registers again.
//!
//! Downlink, the decapsulated packet is written to the TUN: the kernel forwards it along `HoA/32 dev <visited>`
//! to the static neighbour entry (TTL − 1, as any router). The TUN is otherwise only the reverse path.
//!
//! # Metrics and status
//! `mip_registrations_total{role="fa",code}` (replies sent to visitors), `mip_drops_total{path="control"|"data",
//! reason}`, `mip_visitors`, `mip_pending_requests`, `mip_relay_latency_seconds` (relayed request → the home
//! agent's reply with the same Identification), `mip_advertisements_total`, `mip_solicitations_total`,
//! `mip_tunnel_packets_total` / `mip_tunnel_bytes_total{direction="up"|"down",encapsulation="ipip"|"udp"}`,
//! `mip_tunnel_mtu_bytes{encapsulation}` (the TUN's MTU), `mip_keepalives_total{result="sent"|"answered"}`,
//! `mip_link_resolutions_total`, `mip_send_errors_total{socket}`, `mip_kernel_errors_total` (docs/metrics.md).
//! `/status` (role `fa`) adds `bindings` (= `visitors`), `visitors` and `pending_requests`; every registration
//! outcome, control-plane drop (with its sender when known), failed relay send and failed kernel command is
//! recorded for its `recent_registrations` / `last_errors`.
//!
//! # Decisions
//! * The visitor's MAC is read from the neighbour table (the node's ARP request for the FA's address created the
//!   entry). When it is missing, an empty datagram to the node's discard port makes the kernel resolve it, and the
//!   request waits up to [`LINK_WAIT`] (re-read every [`LINK_RETRY`]); then it is dropped
//!   (`reason="no_link_address"`). A request from 0.0.0.0 cannot be resolved and is dropped the same way.
//! * Keepalives (FA behind a NAT): the inner ICMP echo request is sent from the home address of a visitor using
//!   the tunnel (the lowest), because a MIP Proxy finds the binding of a keepalive by its inner source (spec §10
//!   case 59); an echo reply from the tunnel's remote end with our identifier is
//!   [`FaInput::KeepaliveReply`], never delivered.
//! * Downlink packets must come from the visitor's registered home agent over the registered tunnel (outer
//!   source address, and port for UDP) to the visitor's care-of address; everything else is dropped
//!   (`path="data"`).

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Registry as MioRegistry, Token};
use serde_json::{Value, json};

use mip::binding::{Encapsulation, INFINITE_LIFETIME};
use mip::config::Prefix;
use mip::daemon::FaFile;
use mip::dataplane::{DataDrop, overhead};
use mip::keystore::KeyStore;
use mip::roles::fa::{DeliveryStyle, FaInput, FaOutput, ForeignAgent, REGISTRATION_PORT, Visitor, VisitorChangeKind};
use mip::roles::{Datagram, DropReason, Now};
use mip::time::Instant;
use mip::wire::advertisement::AgentSolicitation;
use mip::wire::icmp::{self, IcmpPacket, IcmpRepr};
use mip::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, protocol};
use mip::wire::tunnel::{self, TunnelDataPacket, TunnelDataRepr};
use mip::wire::{ErrorKind, ReplyCode};
use mip_io::admin::Recorder;
use mip_io::batch::{BUFFER_SIZE, DEFAULT_BATCH, RecvBatch, SendBatch};
use mip_io::clock::Clock;
use mip_io::daemon::{Context, FIRST_SERVICE_TOKEN, Service, filled};
use mip_io::metrics::{
    Counter, DropCounters, Gauge, Histogram, MetricsError, Registry, ReplyCodes, TunnelTraffic, count_control_drop,
};
use mip_io::net::{self, NetError, Route, Rule};
use mip_io::socket::{RawSocket, UdpOptions, UdpSocket};
use mip_io::tun::Tun;
use mip_io::watch::NetWatcher;

/// How long a request from a node whose MAC is not yet in the neighbour table waits for it.
pub const LINK_WAIT: Duration = Duration::from_secs(1);
/// How often the neighbour table is read again for a waiting request.
pub const LINK_RETRY: Duration = Duration::from_millis(100);
/// Requests waiting for a MAC at most (more are dropped at once).
const MAX_PARKED: usize = 16;
/// ICMP echo identifier of the FA's keepalives ("MF").
pub const KEEPALIVE_IDENT: u16 = 0x4d46;
/// Echo payload of keepalives.
const KEEPALIVE_DATA: [u8; 8] = *b"mip-fa\0\0";
/// Batches read from one source per readiness event before yielding to the others.
const MAX_ROUNDS: usize = 8;
/// Mobility agents listen on "all mobility agents" (RFC 5944 §2.3) and "all routers" (RFC 1256).
const ALL_MOBILITY_AGENTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 11);
const ALL_ROUTERS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 2);
/// The UDP discard port, target of the datagram that makes the kernel resolve a visitor's MAC.
const DISCARD_PORT: u16 = 9;

const VISITED: Token = Token(FIRST_SERVICE_TOKEN);
const IPIP: Token = Token(FIRST_SERVICE_TOKEN + 1);
const SOLICIT: Token = Token(FIRST_SERVICE_TOKEN + 2);
const TUN: Token = Token(FIRST_SERVICE_TOKEN + 3);
/// Network sockets (routed address, then the other care-of addresses) take tokens from here.
const NETWORK: usize = FIRST_SERVICE_TOKEN + 4;
/// Neighbour-table changes (far above the network sockets' range).
const NEIGH: Token = Token(NETWORK + 1_000_000);

/// Control-plane drop reason of a request whose sender's MAC could not be found.
pub const NO_LINK_ADDRESS: &str = "no_link_address";

/// Runs the daemon until SIGTERM/SIGINT: keys from `daemon.keys_file` (reloaded on SIGHUP or change), admin HTTP
/// on `daemon.admin`. Start-up errors are returned (the kernel state installed so far is removed).
pub fn run(file: &FaFile) -> Result<(), String> {
    mip_io::daemon::run(&file.daemon, |ctx| FaService::new(file, ctx))
}

// === packets (pure) ===

/// A host prefix (every /32 is one; the error is never returned).
fn host(a: Ipv4Addr) -> Result<Prefix, NetError> {
    Prefix::new(a, 32).ok_or_else(|| NetError {
        command: format!("{a}/32"),
        detail: "not a prefix".into(),
    })
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

/// An Agent Advertisement as a complete IPv4 packet: `src` → `dst`, TTL 1 (RFC 5944 §2.3), protocol ICMP.
/// Returns the length written to `out`.
fn advertisement_packet(src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = ipv4::HEADER_LEN + icmp.len();
    let buf = out.get_mut(..total)?;
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: protocol::ICMP,
        payload_len: icmp.len(),
        ttl: 1,
        tos: 0,
        ident: 0,
        dont_frag: false,
    }
    .emit(buf)
    .ok()?;
    buf.get_mut(ipv4::HEADER_LEN..)?.copy_from_slice(icmp);
    Some(total)
}

/// What a packet on the raw ICMP socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Icmp {
    /// A valid Agent Solicitation from this source.
    Solicitation(Ipv4Addr),
    /// ICMP type 10 that fails the RFC 1256 §5.5 checks (code, checksum, length).
    BadSolicitation(ErrorKind),
    /// Any other ICMP message: not ours to handle.
    Other,
}

fn classify_icmp(packet: &[u8]) -> Icmp {
    let Ok(p) = Ipv4Packet::new_checked(packet) else {
        return Icmp::Other;
    };
    if p.protocol() != protocol::ICMP || p.is_fragment() {
        return Icmp::Other;
    }
    let src = p.src_addr();
    let body = p.into_payload();
    if body.first() != Some(&icmp::types::ROUTER_SOLICITATION) {
        return Icmp::Other;
    }
    match AgentSolicitation::parse(body) {
        Ok(_) => Icmp::Solicitation(src),
        Err(e) => Icmp::BadSolicitation(e.kind),
    }
}

/// The checked inner packet of a tunnel, trimmed to its Total Length.
fn inner_packet(bytes: &[u8]) -> Result<Ipv4Packet<&[u8]>, DataDrop> {
    let p = Ipv4Packet::new_checked(bytes).map_err(|_| DataDrop::Malformed)?;
    if !p.verify_checksum() {
        return Err(DataDrop::Malformed);
    }
    let len = usize::from(p.total_len());
    let trimmed = bytes.get(..len).ok_or(DataDrop::Malformed)?;
    Ok(Ipv4Packet::new_unchecked(trimmed))
}

/// RFC 2003 §3.1 encapsulation of `inner` (a checked IPv4 packet) from `local` to `remote`: outer TOS copied,
/// DF copied, TTL `ttl`, Identification 0 (the kernel fills it in for IP_HDRINCL). Returns the outer length.
fn encapsulate_ipip(
    inner: &[u8],
    local: Ipv4Addr,
    remote: Ipv4Addr,
    ttl: u8,
    out: &mut [u8],
) -> Result<usize, DataDrop> {
    let p = inner_packet(inner)?;
    let (tos, df) = (p.tos(), p.dont_frag());
    let inner = p.into_inner();
    let total = ipv4::HEADER_LEN + inner.len();
    let buf = out.get_mut(..total).ok_or(DataDrop::NoRoom)?;
    Ipv4Repr {
        src_addr: local,
        dst_addr: remote,
        protocol: protocol::IPIP,
        payload_len: inner.len(),
        ttl,
        tos,
        ident: 0,
        dont_frag: df,
    }
    .emit(buf)
    .map_err(|_| DataDrop::NoRoom)?;
    buf.get_mut(ipv4::HEADER_LEN..)
        .ok_or(DataDrop::NoRoom)?
        .copy_from_slice(inner);
    Ok(total)
}

/// The UDP payload of an RFC 3519 tunnel packet: Tunnel Data header (Next Header 4) + `inner`. Returns its
/// length.
fn tunnel_data(inner: &[u8], out: &mut [u8]) -> Result<usize, DataDrop> {
    let inner = inner_packet(inner)?.into_inner();
    let total = tunnel::HEADER_LEN + inner.len();
    let buf = out.get_mut(..total).ok_or(DataDrop::NoRoom)?;
    TunnelDataRepr {
        next_header: tunnel::NEXT_HEADER_IPV4,
    }
    .emit(buf)
    .map_err(|_| DataDrop::NoRoom)?;
    buf.get_mut(tunnel::HEADER_LEN..)
        .ok_or(DataDrop::NoRoom)?
        .copy_from_slice(inner);
    Ok(total)
}

/// An RFC 3519 keepalive as a UDP payload: Tunnel Data + IPv4(`home` → `remote`) + ICMP echo request
/// ([`KEEPALIVE_IDENT`], `seq`).
fn keepalive_payload(home: Ipv4Addr, remote: Ipv4Addr, seq: u16, out: &mut [u8]) -> Option<usize> {
    let echo = IcmpRepr::EchoRequest {
        ident: KEEPALIVE_IDENT,
        seq,
        data: &KEEPALIVE_DATA,
    };
    let ip = Ipv4Repr {
        src_addr: home,
        dst_addr: remote,
        protocol: protocol::ICMP,
        payload_len: echo.buffer_len(),
        ttl: mip::dataplane::DEFAULT_OUTER_TTL,
        tos: 0,
        ident: seq,
        dont_frag: false,
    };
    let at = tunnel::HEADER_LEN + ipv4::HEADER_LEN;
    let total = at + echo.buffer_len();
    let buf = out.get_mut(..total)?;
    TunnelDataRepr {
        next_header: tunnel::NEXT_HEADER_IPV4,
    }
    .emit(buf)
    .ok()?;
    ip.emit(buf.get_mut(tunnel::HEADER_LEN..)?).ok()?;
    echo.emit(buf.get_mut(at..)?).ok()?;
    Some(total)
}

/// The visitor a packet for or from `home` belongs to, when the FA tunnels for it (not co-located).
fn tunnelled(visitor: Option<&Visitor>) -> Option<(&Visitor, mip::roles::fa::VisitorTunnel)> {
    let v = visitor.filter(|v| !v.co_located)?;
    Some((v, v.tunnel?))
}

/// Uplink: where a visitor's packet read from the TUN goes. `Ok` names the visitor's tunnel. The inner TTL is
/// not decremented: the kernel forwarding the packet into the TUN was this hop's one decrement (RFC 2003 §3.1),
/// so it never hands over TTL 0; such a packet is dropped all the same, never encapsulated.
fn uplink_tunnel<'v>(
    packet: &[u8],
    visitor: impl Fn(Ipv4Addr) -> Option<&'v Visitor>,
) -> Result<mip::roles::fa::VisitorTunnel, DataDrop> {
    let p = inner_packet(packet)?;
    if p.ttl() == 0 {
        return Err(DataDrop::TtlExpired);
    }
    let src = p.src_addr();
    let (v, t) = tunnelled(visitor(src)).ok_or(DataDrop::NotBound)?;
    // RFC 3024: only visitors that asked for reverse tunnelling; RFC 2003 §3.1: never tunnel a packet whose
    // source is the tunnel's far end.
    if !v.reverse_tunnel || src == t.remote.addr {
        return Err(DataDrop::NotBound);
    }
    Ok(t)
}

/// Downlink IP-in-IP (the whole packet from the raw socket): the inner packet if it came from the home agent of
/// the visitor it is addressed to, over that visitor's IP-in-IP tunnel to its care-of address.
fn decap_ipip<'a, 'v>(
    outer: &'a [u8],
    visitor: impl Fn(Ipv4Addr) -> Option<&'v Visitor>,
) -> Result<&'a [u8], DataDrop> {
    let p = Ipv4Packet::new_checked(outer).map_err(|_| DataDrop::Malformed)?;
    if p.protocol() != protocol::IPIP {
        return Err(DataDrop::WrongProtocol);
    }
    if p.is_fragment() {
        return Err(DataDrop::Fragment);
    }
    let (src, dst) = (p.src_addr(), p.dst_addr());
    let inner = inner_packet(p.into_payload())?;
    if inner.ttl() == 0 {
        return Err(DataDrop::TtlExpired);
    }
    let (_, t) = tunnelled(visitor(inner.dst_addr())).ok_or(DataDrop::NotBound)?;
    if t.remote.encapsulation != Encapsulation::IpInIp {
        return Err(DataDrop::NotBound);
    }
    if t.remote.addr != src || *t.local.ip() != dst {
        return Err(DataDrop::OuterAddress);
    }
    Ok(inner.into_inner())
}

/// What a Tunnel Data message on a care-of address socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UdpDecap<'a> {
    /// Deliver this inner packet to its visitor.
    Deliver(&'a [u8]),
    /// The echo reply to one of our keepalives.
    KeepaliveReply,
    /// Dropped.
    Drop(DataDrop),
}

/// Downlink RFC 3519 Tunnel Data (the UDP payload, from `src` to local address `local`).
fn decap_udp<'a, 'v>(
    src: SocketAddrV4,
    local: Ipv4Addr,
    payload: &'a [u8],
    visitor: impl Fn(Ipv4Addr) -> Option<&'v Visitor>,
) -> UdpDecap<'a> {
    let Ok(t) = TunnelDataPacket::new_checked(payload) else {
        return UdpDecap::Drop(DataDrop::Malformed);
    };
    if t.msg_type() != tunnel::TYPE_TUNNEL_DATA {
        return UdpDecap::Drop(DataDrop::WrongProtocol);
    }
    // Only IP-in-UDP is negotiated (the FA's own request asks for encapsulation 4): RFC 3519 §3.3.
    if t.next_header() != tunnel::NEXT_HEADER_IPV4 {
        return UdpDecap::Drop(DataDrop::WrongNextHeader);
    }
    let inner = match inner_packet(payload.get(tunnel::HEADER_LEN..).unwrap_or(&[])) {
        Ok(p) => p,
        Err(d) => return UdpDecap::Drop(d),
    };
    let Some((_, tun)) = tunnelled(visitor(inner.dst_addr())) else {
        return UdpDecap::Drop(DataDrop::NotBound);
    };
    if !tun.remote.encapsulation.is_udp() {
        return UdpDecap::Drop(DataDrop::NotBound);
    }
    if tun.remote.addr != *src.ip() || tun.remote.port != src.port() || *tun.local.ip() != local {
        return UdpDecap::Drop(DataDrop::OuterAddress);
    }
    let (inner_src, proto, ttl) = (inner.src_addr(), inner.protocol(), inner.ttl());
    let bytes = inner.into_inner();
    if proto == protocol::ICMP && inner_src == *src.ip() {
        let body = Ipv4Packet::new_unchecked(bytes).into_payload();
        if let Ok(i) = IcmpPacket::new_checked(body)
            && i.msg_type() == icmp::types::ECHO_REPLY
            && i.echo_ident() == KEEPALIVE_IDENT
        {
            return UdpDecap::KeepaliveReply;
        }
    }
    if ttl == 0 {
        return UdpDecap::Drop(DataDrop::TtlExpired);
    }
    UdpDecap::Deliver(bytes)
}

/// `GET /bindings`: the visitor list as a JSON array sorted by home address. `expires_in_ms` is `null` for an
/// infinite lifetime (65535).
///
/// ```json
/// [{"home_address": "10.10.1.50", "nai": null, "mn_mac": "02:00:00:00:00:01", "mn_source": "10.10.1.50:434",
///   "home_agent": "198.51.100.10", "care_of_address": "198.51.101.2", "co_located": false,
///   "tunnel": {"encapsulation": "ipip", "local": "198.51.101.2", "remote": "198.51.100.10", "port": 0,
///              "keepalive_interval": 0},
///   "reverse_tunnel": true, "delivery": "direct", "lifetime": 600, "expires_in_ms": 599812}]
/// ```
pub fn visitors_json<'a>(visitors: impl Iterator<Item = &'a Visitor>, now: Instant) -> Value {
    let rows: Vec<Value> = visitors
        .map(|v| {
            let expires_in_ms = if v.lifetime == INFINITE_LIFETIME {
                Value::Null
            } else {
                json!(u64::try_from(v.expires_at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX))
            };
            let tunnel = v.tunnel.map_or(Value::Null, |t| {
                json!({
                    "encapsulation": t.remote.encapsulation.as_str(),
                    "local": t.local.ip().to_string(),
                    "remote": t.remote.addr.to_string(),
                    "port": t.remote.port,
                    "keepalive_interval": t.keepalive_interval,
                })
            });
            json!({
                "home_address": v.home_address.to_string(),
                "nai": v.nai.as_deref(),
                "mn_mac": mac_string(v.mn_mac),
                "mn_source": v.mn_source.to_string(),
                "home_agent": v.home_agent.to_string(),
                "care_of_address": v.care_of_address.to_string(),
                "co_located": v.co_located,
                "tunnel": tunnel,
                "reverse_tunnel": v.reverse_tunnel,
                "delivery": match v.delivery {
                    DeliveryStyle::Direct => "direct",
                    DeliveryStyle::Encapsulating => "encapsulating",
                },
                "lifetime": v.lifetime,
                "expires_in_ms": expires_in_ms,
            })
        })
        .collect();
    Value::Array(rows)
}

// === metrics ===

const REGISTRATIONS: &str = "Registration replies sent to visitors, by reply code.";
const DROPS: &str = "Inputs dropped, by path and reason.";
const PACKETS: &str = "Packets through the tunnels toward home agents.";
const BYTES: &str = "Inner packet bytes through the tunnels toward home agents.";
const TRAFFIC: [&str; 2] = [PACKETS, BYTES];
const SEND_ERRORS: &str = "Datagrams or packets the kernel refused to send, by socket.";
const KEEPALIVES: &str = "RFC 3519 keepalives, by result (sent, answered: echo replies received).";

/// Control-plane drop reasons registered at start (the foreign agent's, plus [`NO_LINK_ADDRESS`]).
const CONTROL_DROPS: &[DropReason] = &[
    DropReason::Malformed(ErrorKind::Truncated),
    DropReason::Malformed(ErrorKind::WrongType(0)),
    DropReason::Malformed(ErrorKind::ExtensionTruncated(0)),
    DropReason::Malformed(ErrorKind::ExtensionLength(0, 0)),
    DropReason::Malformed(ErrorKind::UnknownNonSkippable(0)),
    DropReason::Malformed(ErrorKind::BadChecksum),
    DropReason::Malformed(ErrorKind::BadValue),
    DropReason::Malformed(ErrorKind::BadLength),
    DropReason::UnexpectedMessage,
    DropReason::NoAuthExtension,
    DropReason::NoSecurityAssociation,
    DropReason::BadAuthenticator,
    DropReason::NoPendingRequest,
    DropReason::UnknownHomeAgent,
    DropReason::PendingTimeout,
    DropReason::RateLimited,
];

/// Reply codes registered at start: acceptance and the codes the foreign agent generates itself.
const REPLY_CODES: &[ReplyCode] = &[
    ReplyCode::Accepted,
    ReplyCode::FaProhibited,
    ReplyCode::FaInsufficientResources,
    ReplyCode::FaHaAuthFailed,
    ReplyCode::FaLifetimeTooLong,
    ReplyCode::FaPoorlyFormedRequest,
    ReplyCode::FaEncapUnavailable,
    ReplyCode::FaReverseTunnelUnavailable,
    ReplyCode::FaReverseTunnelMandatory,
    ReplyCode::FaMnTooDistant,
    ReplyCode::FaInvalidCoa,
    ReplyCode::FaRegistrationTimeout,
    ReplyCode::FaDeliveryStyleUnsupported,
    ReplyCode::MissingNai,
    ReplyCode::MissingHomeAgent,
    ReplyCode::MissingHomeAddress,
    ReplyCode::InvalidHomeAgent,
];

#[derive(Debug, Clone)]
struct SendErrors {
    visited: Counter,
    network: Counter,
    raw: Counter,
    tun: Counter,
    advertisement: Counter,
}

/// Every series the foreign agent exports (besides the skeleton's `mip_up` and `mip_key_reloads_total`).
#[derive(Debug)]
struct FaMetrics {
    registry: Arc<Registry>,
    registrations: ReplyCodes,
    control_drops: DropCounters,
    data_drops: DropCounters,
    visitors: Gauge,
    pending: Gauge,
    relay_latency: Histogram,
    advertisements: Counter,
    solicitations: Counter,
    tunnels: TunnelTraffic,
    keepalives_sent: Counter,
    keepalives_answered: Counter,
    link_resolutions: Counter,
    send_errors: SendErrors,
    kernel_errors: Counter,
}

impl FaMetrics {
    /// Registers every series at 0; the MTU gauges show `tun_mtu`.
    fn new(registry: Arc<Registry>, tun_mtu: u16) -> Result<FaMetrics, String> {
        crate::ha_daemon::tunnel_mtu(&registry, tun_mtu)?;
        Self::series(registry).map_err(|e| format!("metrics: {e}"))
    }

    fn series(registry: Arc<Registry>) -> Result<FaMetrics, MetricsError> {
        let r = &*registry;
        let mut control: Vec<&'static str> = CONTROL_DROPS.iter().map(|d| d.as_str()).collect();
        control.push(NO_LINK_ADDRESS);
        let data: Vec<&'static str> = DataDrop::ALL.iter().map(|d| d.as_str()).collect();
        let send = |socket: &'static str| r.counter("mip_send_errors_total", SEND_ERRORS, &[("socket", socket)]);
        let keepalive = |result: &'static str| r.counter("mip_keepalives_total", KEEPALIVES, &[("result", result)]);
        Ok(FaMetrics {
            registrations: ReplyCodes::new(
                Arc::clone(&registry),
                REGISTRATIONS,
                "fa",
                REPLY_CODES.iter().map(|c| u8::from(*c)),
            )?,
            control_drops: r.drop_counters_with(
                "mip_drops_total",
                DROPS,
                &[("path", "control")],
                "reason",
                &control,
            )?,
            data_drops: r.drop_counters_with("mip_drops_total", DROPS, &[("path", "data")], "reason", &data)?,
            visitors: r.gauge("mip_visitors", "Visitors in the foreign agent's visitor list.", &[])?,
            pending: r.gauge(
                "mip_pending_requests",
                "Relayed requests waiting for a home agent's reply.",
                &[],
            )?,
            relay_latency: r.relay_latency()?,
            advertisements: r.counter("mip_advertisements_total", "Agent Advertisements sent.", &[])?,
            solicitations: r.counter(
                "mip_solicitations_total",
                "Agent Solicitations received on the visited link.",
                &[],
            )?,
            tunnels: TunnelTraffic::new(r, TRAFFIC)?,
            keepalives_sent: keepalive("sent")?,
            keepalives_answered: keepalive("answered")?,
            link_resolutions: r.counter(
                "mip_link_resolutions_total",
                "Registration requests that waited for the kernel to resolve their sender's MAC address.",
                &[],
            )?,
            send_errors: SendErrors {
                visited: send("visited")?,
                network: send("network")?,
                raw: send("raw")?,
                tun: send("tun")?,
                advertisement: send("advertisement")?,
            },
            kernel_errors: r.counter(
                "mip_kernel_errors_total",
                "Kernel configuration commands (routes, rules, neighbours) that failed.",
                &[],
            )?,
            registry,
        })
    }

    fn registration(&mut self, code: ReplyCode) {
        self.registrations.inc(u8::from(code));
    }

    fn control_drop(&self, label: &'static str) {
        count_control_drop(&self.registry, &self.control_drops, DROPS, label);
    }

    fn data_drop(&self, reason: DataDrop) {
        self.data_drops.inc(reason.as_str());
    }

    /// Counts the datagrams of `batch` that were too long (cut by the kernel) as malformed data.
    fn truncated(&self, batch: &RecvBatch) {
        let t = batch.truncated();
        if t > 0 {
            self.data_drops.add(DataDrop::Malformed.as_str(), t as u64);
        }
    }
}

// === kernel state ===

/// What was installed for one visitor (besides its route and neighbour entry).
#[derive(Debug, Clone, Copy)]
struct Installed {
    /// The reverse-tunnel rule.
    rule: bool,
}

/// The TUN, the reverse-tunnel table and each visitor's route, neighbour entry and rule.
#[derive(Debug)]
struct KernelState {
    tun: Tun,
    visited: String,
    visited_address: Ipv4Addr,
    table: u32,
    table_route: Option<Route>,
    installed: BTreeMap<Ipv4Addr, Installed>,
}

fn sysctl(key: &str, value: &str) -> Result<(), String> {
    net::sysctl(key, value).map_err(|e| e.to_string())
}

/// Removes the rules `iif <visited> from X lookup <table>` an earlier run left (it did not reach its shutdown).
/// Returns how many went.
fn purge_stale_rules(visited: &str, table: u32) -> usize {
    let Ok(text) = net::run("ip", &["-j", "-4", "rule", "show"]) else {
        return 0;
    };
    let Ok(Value::Array(rules)) = serde_json::from_str::<Value>(&text) else {
        return 0;
    };
    let table_name = table.to_string();
    let mut removed = 0;
    for r in &rules {
        let ours = r.get("table").and_then(Value::as_str) == Some(table_name.as_str())
            && r.get("iif").and_then(Value::as_str) == Some(visited);
        let src = r
            .get("src")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        let len = r
            .get("srclen")
            .and_then(Value::as_u64)
            .and_then(|l| u8::try_from(l).ok())
            .unwrap_or(32);
        let Some(from) = src.and_then(|a| Prefix::new(a, len)).filter(|_| ours) else {
            continue;
        };
        let rule = Rule {
            pref: r
                .get("priority")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            iif: Some(visited.to_string()),
            from: Some(from),
            lookup: table,
            ..Rule::default()
        };
        if net::rule_del(&rule).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl KernelState {
    /// Sysctls, the TUN and `default dev <tun> table <table>`. On error everything added so far is removed.
    fn install(file: &FaFile) -> Result<KernelState, String> {
        let d = &file.dataplane;
        if matches!(d.table, 0 | 253..=255) {
            return Err(format!(
                "dataplane.table {} is a reserved routing table (unspec, default, main, local): choose another",
                d.table
            ));
        }
        match net::link(&d.visited_interface) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "dataplane.visited_interface {}: no such device",
                    d.visited_interface
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
        let local = net::ipv4_addresses(None).map_err(|e| e.to_string())?;
        let on_visited = local
            .iter()
            .any(|a| a.addr == file.fa.visited_address && a.dev == d.visited_interface);
        if !on_visited {
            return Err(format!(
                "fa.visited_address {} is not an address of dataplane.visited_interface {}",
                file.fa.visited_address, d.visited_interface
            ));
        }
        // Reverse-tunnelled packets grow by the outer headers: a TUN MTU above the routed link's MTU minus them
        // makes full-size packets with DF undeliverable (the kernel sends the visitor "fragmentation needed" for
        // packets above the TUN MTU, so PMTU discovery works when the TUN MTU is right).
        let routed_dev = local
            .iter()
            .find(|a| a.addr == file.fa.routed_address)
            .map(|a| a.dev.clone());
        if let Some(Ok(Some(link))) = routed_dev.map(|dev| net::link(&dev)) {
            let enc = if file.fa.behind_nat {
                Encapsulation::UdpIpInIp
            } else {
                Encapsulation::IpInIp
            };
            let room = u64::from(link.mtu).saturating_sub(overhead(enc) as u64);
            if u64::from(d.tun_mtu) > room {
                tracing::warn!(
                    tun_mtu = d.tun_mtu,
                    routed_mtu = link.mtu,
                    "dataplane.tun_mtu exceeds the routed link's MTU minus the tunnel headers: set it to at most {room}"
                );
            }
        }
        let tun = Tun::open(&d.tun, d.tun_mtu).map_err(|e| format!("TUN {}: {e}", d.tun))?;
        let name = tun.name().to_string();
        sysctl("net.ipv4.ip_forward", "1")?;
        for conf in ["all", "default", d.visited_interface.as_str(), name.as_str()] {
            sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
        }
        // The kernel's IPv6 chatter on the TUN (router solicitations) would only be counted as malformed.
        if let Err(e) = net::sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1") {
            tracing::debug!(error = %e, "disabling IPv6 on the TUN");
        }
        tun.up().map_err(|e| e.to_string())?;
        let mut state = KernelState {
            tun,
            visited: d.visited_interface.clone(),
            visited_address: file.fa.visited_address,
            table: d.table,
            table_route: None,
            installed: BTreeMap::new(),
        };
        let default = Prefix::new(Ipv4Addr::UNSPECIFIED, 0).ok_or("0.0.0.0/0 is a prefix")?;
        let route = Route {
            dev: Some(name),
            table: Some(d.table),
            ..Route::to(default)
        };
        if let Err(e) = net::route_replace_with(&route) {
            state.remove();
            return Err(e.to_string());
        }
        state.table_route = Some(route);
        let stale = purge_stale_rules(&d.visited_interface, d.table);
        if stale > 0 {
            tracing::warn!(rules = stale, "removed reverse-tunnel rules left by an earlier run");
        }
        Ok(state)
    }

    fn visitor_route(&self, home: Ipv4Addr) -> Result<Route, NetError> {
        Ok(Route {
            dev: Some(self.visited.clone()),
            src: Some(self.visited_address),
            ..Route::to(host(home)?)
        })
    }

    fn visitor_rule(&self, home: Ipv4Addr) -> Result<Rule, NetError> {
        Ok(Rule {
            iif: Some(self.visited.clone()),
            from: Some(host(home)?),
            lookup: self.table,
            ..Rule::default()
        })
    }

    /// Installs (or updates) a visitor's delivery route, neighbour entry and reverse-tunnel rule; a co-located
    /// visitor gets nothing (and loses what an earlier registration installed). Returns the failed commands.
    fn add_visitor(&mut self, v: &Visitor) -> Vec<NetError> {
        let home = v.home_address;
        if v.co_located || v.tunnel.is_none() {
            return self.remove_visitor(home);
        }
        let (route, rule) = match (self.visitor_route(home), self.visitor_rule(home)) {
            (Ok(route), Ok(rule)) => (route, rule),
            (Err(e), _) | (_, Err(e)) => return vec![e],
        };
        let mut errors = Vec::new();
        if let Err(e) = net::route_replace_with(&route) {
            errors.push(e);
        }
        if let Err(e) = net::neigh_replace(home, v.mn_mac, &self.visited) {
            errors.push(e);
        }
        let had_rule = self.installed.get(&home).is_some_and(|i| i.rule);
        let mut has_rule = had_rule;
        if v.reverse_tunnel && !had_rule {
            match net::rule_add(&rule) {
                Ok(()) => has_rule = true,
                // A leftover of an earlier run: adopted (and removed with the visitor).
                Err(e) if e.is_exists() => has_rule = true,
                Err(e) => errors.push(e),
            }
        } else if !v.reverse_tunnel && had_rule {
            match net::rule_del(&rule) {
                Ok(()) => has_rule = false,
                Err(e) if e.is_missing() => has_rule = false,
                Err(e) => errors.push(e),
            }
        }
        self.installed.insert(home, Installed { rule: has_rule });
        errors
    }

    /// Removes what [`add_visitor`](Self::add_visitor) installed for `home` (absent objects are not errors).
    fn remove_visitor(&mut self, home: Ipv4Addr) -> Vec<NetError> {
        let Some(i) = self.installed.remove(&home) else {
            return Vec::new();
        };
        let mut results = Vec::new();
        if i.rule {
            results.push(self.visitor_rule(home).and_then(|r| net::rule_del(&r)));
        }
        results.push(net::neigh_del(home, &self.visited));
        results.push(self.visitor_route(home).and_then(|r| net::route_del_with(&r)));
        results
            .into_iter()
            .filter_map(Result::err)
            .filter(|e| !e.is_missing())
            .collect()
    }

    fn is_installed(&self, home: Ipv4Addr) -> bool {
        self.installed.contains_key(&home)
    }

    /// Removes every visitor's state and the table route (the TUN goes with its descriptor).
    fn remove(&mut self) {
        let homes: Vec<Ipv4Addr> = self.installed.keys().copied().collect();
        for home in homes {
            for e in self.remove_visitor(home) {
                tracing::warn!(error = %e, "removing a visitor's kernel state");
            }
        }
        if let Some(route) = self.table_route.take()
            && let Err(e) = net::route_del_with(&route)
            && !e.is_missing()
        {
            tracing::warn!(error = %e, "removing the reverse-tunnel table route");
        }
    }
}

// === sockets ===

/// A UDP 434 socket on the routed side.
#[derive(Debug)]
struct NetSocket {
    addr: Ipv4Addr,
    sock: UdpSocket,
}

#[derive(Debug)]
struct Sockets {
    /// `0.0.0.0:434` bound to the visited interface.
    visited: UdpSocket,
    /// `routed_address:434`, then every other care-of address.
    network: Vec<NetSocket>,
    ipip: RawSocket,
    /// Every ICMP message arriving on the visited interface (solicitations are picked out).
    icmp: RawSocket,
    /// IP_HDRINCL sender bound to the visited interface (advertisements).
    adv: RawSocket,
    /// IP_HDRINCL sender for IP-in-IP.
    sender: RawSocket,
    /// Sends the datagram that makes the kernel resolve a visitor's MAC.
    probe: UdpSocket,
    /// Holds the multicast memberships of the visited interface (224.0.0.11, 224.0.0.2).
    _groups: std::net::UdpSocket,
}

impl Sockets {
    fn open(file: &FaFile) -> Result<Sockets, String> {
        let fa = &file.fa;
        let dev = &file.dataplane.visited_interface;
        let on_visited = UdpOptions {
            device: Some(dev.clone()),
            ..UdpOptions::default()
        };
        let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let visited = UdpSocket::bind_with(any(REGISTRATION_PORT), &on_visited)
            .map_err(|e| format!("bind UDP 0.0.0.0:434 on {dev}: {e}"))?;
        let mut addrs = vec![fa.routed_address];
        for a in &fa.care_of_addresses {
            if !addrs.contains(a) {
                addrs.push(*a);
            }
        }
        let mut network = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.into_iter().enumerate() {
            let opts = UdpOptions {
                // Care-of addresses may be configured after start (or belong to a NAT'ed interface coming up).
                freebind: i > 0,
                recv_err: false,
                ..UdpOptions::default()
            };
            let local = SocketAddrV4::new(addr, REGISTRATION_PORT);
            let sock = UdpSocket::bind_with(local, &opts).map_err(|e| format!("bind UDP {local}: {e}"))?;
            network.push(NetSocket { addr, sock });
        }
        let raw = |what: &str, r: io::Result<RawSocket>| r.map_err(|e| format!("raw {what} socket: {e}"));
        let ipip = raw("IPIP", RawSocket::ipip())?;
        let icmp = raw("ICMP", RawSocket::protocol(protocol::ICMP))?;
        icmp.bind_device(dev)
            .map_err(|e| format!("raw ICMP socket on {dev}: {e}"))?;
        let adv = raw("advertisement", RawSocket::sender())?;
        adv.bind_device(dev)
            .map_err(|e| format!("raw advertisement socket on {dev}: {e}"))?;
        let sender = raw("sender", RawSocket::sender())?;
        let probe_opts = UdpOptions {
            recv_err: false,
            ..on_visited
        };
        let probe = UdpSocket::bind_with(any(0), &probe_opts).map_err(|e| format!("bind UDP probe on {dev}: {e}"))?;
        let groups = std::net::UdpSocket::bind(any(0)).map_err(|e| format!("multicast membership socket: {e}"))?;
        for g in [ALL_MOBILITY_AGENTS, ALL_ROUTERS] {
            groups
                .join_multicast_v4(&g, &fa.visited_address)
                .map_err(|e| format!("joining {g} on {} ({dev}): {e}", fa.visited_address))?;
        }
        Ok(Sockets {
            visited,
            network,
            ipip,
            icmp,
            adv,
            sender,
            probe,
            _groups: groups,
        })
    }

    fn network_for(&self, local: Ipv4Addr) -> Option<&UdpSocket> {
        self.network.iter().find(|n| n.addr == local).map(|n| &n.sock)
    }
}

// === the service ===

/// A request waiting for its sender's MAC to show up in the neighbour table.
#[derive(Debug)]
struct Parked {
    payload: Vec<u8>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    next_try: Instant,
    until: Instant,
}

#[derive(Debug)]
struct Buffers {
    visited: RecvBatch,
    network: RecvBatch,
    ipip: RecvBatch,
    icmp: RecvBatch,
    tun: RecvBatch,
}

/// Everything but the receive buffers (so a received packet can be borrowed while the core changes).
#[derive(Debug)]
struct Core {
    fa: ForeignAgent,
    sockets: Sockets,
    kernel: KernelState,
    metrics: FaMetrics,
    outputs: Vec<FaOutput>,
    /// Outer IP-in-IP packets for the raw sender.
    send: SendBatch,
    /// Where one outgoing packet or payload is built.
    scratch: Box<[u8]>,
    parked: VecDeque<Parked>,
    /// Neighbour events: a parked request is retried as soon as the kernel has resolved a MAC, not on the next
    /// [`LINK_RETRY`] poll (which cost a hand-off through this agent up to 100 ms).
    neigh: NetWatcher,
    keepalive_seq: u16,
    outer_ttl: u8,
    /// Recent registrations and errors for `/status`.
    status: Recorder,
    /// Send instants of relayed requests by Identification, for `mip_relay_latency_seconds`.
    relayed: RelayTimes,
    /// The Identification of the home agent's reply being handled.
    reply_ident: Option<u64>,
}

/// Registration Request (type 1): Identification at bytes 16..24; Registration Reply (type 3): at 12..20.
fn identification(payload: &[u8], request: bool) -> Option<u64> {
    let (ty, at) = if request { (1u8, 16..24) } else { (3, 12..20) };
    (payload.first() == Some(&ty))
        .then(|| payload.get(at))
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// Relayed requests' send instants, at most [`RelayTimes::CAP`]; when full, entries older than the pending
/// timeout go, and a new one is not recorded if that frees nothing (control plane only).
#[derive(Debug)]
struct RelayTimes {
    sent: std::collections::HashMap<u64, std::time::Instant>,
    max_age: Duration,
}

impl RelayTimes {
    const CAP: usize = 4096;

    fn insert(&mut self, identification: u64) {
        if self.sent.len() >= Self::CAP {
            let max_age = self.max_age;
            self.sent.retain(|_, t| t.elapsed() <= max_age);
            if self.sent.len() >= Self::CAP {
                return;
            }
        }
        self.sent.insert(identification, std::time::Instant::now());
    }

    fn take(&mut self, identification: u64) -> Option<Duration> {
        self.sent.remove(&identification).map(|t| t.elapsed())
    }
}

/// The `mip-fa` service.
#[derive(Debug)]
pub struct FaService {
    core: Core,
    bufs: Buffers,
    clock: Clock,
    /// Sources not drained in their last turn, by token.
    backlog: BTreeMap<Token, bool>,
}

fn seed() -> u64 {
    // RandomState is keyed from the operating system's randomness once per process.
    RandomState::new().hash_one(std::process::id())
}

impl FaService {
    /// Installs the kernel state, opens the sockets and creates the foreign agent. Nothing is left behind on
    /// error.
    pub fn new(file: &FaFile, ctx: &Context) -> Result<FaService, String> {
        let metrics = FaMetrics::new(Arc::clone(&ctx.metrics), file.dataplane.tun_mtu)?;
        let mut kernel = KernelState::install(file)?;
        let sockets = match Sockets::open(file) {
            Ok(s) => s,
            Err(e) => {
                kernel.remove();
                return Err(e);
            }
        };
        let neigh = match NetWatcher::with_groups(libc::RTMGRP_NEIGH as u32) {
            Ok(w) => w,
            Err(e) => {
                kernel.remove();
                return Err(format!("rtnetlink (neighbour events): {e}"));
            }
        };
        let d = &file.dataplane;
        let slot = BUFFER_SIZE.max(usize::from(d.tun_mtu) + 64);
        let batch = || RecvBatch::new(DEFAULT_BATCH, slot);
        let fa = ForeignAgent::new(file.fa.clone(), ctx.keys.clone(), seed());
        let mut backlog = BTreeMap::new();
        for t in [VISITED, IPIP, SOLICIT, TUN] {
            backlog.insert(t, false);
        }
        for i in 0..sockets.network.len() {
            backlog.insert(Token(NETWORK + i), false);
        }
        tracing::info!(
            visited_address = %file.fa.visited_address,
            visited_interface = %d.visited_interface,
            routed_address = %file.fa.routed_address,
            care_of_addresses = ?file.fa.care_of_addresses,
            behind_nat = file.fa.behind_nat,
            tun = %kernel.tun.name(),
            table = d.table,
            "foreign agent ready"
        );
        Ok(FaService {
            core: Core {
                fa,
                sockets,
                kernel,
                metrics,
                outputs: Vec::with_capacity(8),
                send: SendBatch::new(DEFAULT_BATCH, slot + overhead(Encapsulation::UdpIpInIp)),
                scratch: vec![0u8; slot + 2 * overhead(Encapsulation::UdpIpInIp)].into_boxed_slice(),
                parked: VecDeque::new(),
                neigh,
                keepalive_seq: 0,
                outer_ttl: d.outer_ttl,
                status: ctx.status.clone(),
                relayed: RelayTimes {
                    sent: std::collections::HashMap::new(),
                    max_age: Duration::from_millis(file.fa.pending_timeout_ms),
                },
                reply_ident: None,
            },
            bufs: Buffers {
                visited: batch(),
                network: batch(),
                ipip: batch(),
                icmp: batch(),
                tun: batch(),
            },
            clock: ctx.clock,
            backlog,
        })
    }

    /// Reads up to [`MAX_ROUNDS`] batches from `token`'s source; remembers whether it was left non-empty.
    fn drain(&mut self, token: Token, now: Now) {
        if !self.backlog.contains_key(&token) {
            return;
        }
        let mut more = true;
        for _ in 0..MAX_ROUNDS {
            more = match token {
                VISITED => self.core.read_visited(&mut self.bufs.visited, now),
                IPIP => self.core.read_ipip(&mut self.bufs.ipip),
                SOLICIT => self.core.read_icmp(&mut self.bufs.icmp, now),
                TUN => self.core.read_tun(&mut self.bufs.tun),
                Token(t) => match t.checked_sub(NETWORK) {
                    Some(i) => self.core.read_network(i, &mut self.bufs.network, now),
                    None => false,
                },
            };
            if !more {
                break;
            }
        }
        self.backlog.insert(token, more);
    }
}

impl Core {
    // === control plane ===

    fn handle(&mut self, now: Now, input: FaInput<'_>) {
        let peer = match &input {
            FaInput::FromMobile { dg, .. } | FaInput::FromNetwork(dg) => Some(SocketAddr::V4(dg.src)),
            _ => None,
        };
        self.reply_ident = match &input {
            FaInput::FromNetwork(dg) => identification(dg.payload, false),
            _ => None,
        };
        self.fa.handle(now, input, &mut self.outputs);
        self.process_outputs(peer);
        self.reply_ident = None;
    }

    fn kernel_errors(&self, errors: Vec<NetError>, what: &str) {
        for e in errors {
            self.metrics.kernel_errors.inc();
            self.status.error("kernel", None, format_args!("{what}: {e}"));
            tracing::warn!(error = %e, "{what}");
        }
    }

    /// Counts a control-plane drop and records it for `/status`.
    fn control_drop(&self, reason: &'static str, peer: Option<SocketAddr>) {
        self.metrics.control_drop(reason);
        self.status.drop(reason, peer);
    }

    /// Carries out the outputs of one input (from `peer`, if it came from the network).
    fn process_outputs(&mut self, peer: Option<SocketAddr>) {
        let mut outputs = core::mem::take(&mut self.outputs);
        for o in outputs.drain(..) {
            match o {
                FaOutput::Send(t) => {
                    if let Some(id) = identification(&t.payload, true) {
                        self.relayed.insert(id);
                    }
                    let sock = self
                        .sockets
                        .network_for(*t.src.ip())
                        .or_else(|| self.sockets.network.first().map(|n| &n.sock));
                    let sent = sock.map_or(Err(io::ErrorKind::NotFound.into()), |s| s.send_transmit(&t));
                    if let Err(e) = sent {
                        self.metrics.send_errors.network.inc();
                        self.status.error("send_failed", Some(SocketAddr::V4(t.dst)), &e);
                        tracing::debug!(error = %e, src = %t.src, dst = %t.dst, "relaying a registration message");
                    }
                }
                FaOutput::SendToMobile { transmit, link_dst } => self.send_to_mobile(&transmit, link_dst),
                FaOutput::Advertise { icmp, dst } => self.advertise(&icmp, dst),
                FaOutput::Visitor(change) => {
                    let v = &change.visitor;
                    let errors = match change.kind {
                        VisitorChangeKind::Added | VisitorChangeKind::Refreshed => self.kernel.add_visitor(v),
                        VisitorChangeKind::Removed | VisitorChangeKind::Expired => {
                            self.kernel.remove_visitor(v.home_address)
                        }
                    };
                    self.kernel_errors(errors, "visitor kernel state");
                    tracing::info!(
                        kind = ?change.kind,
                        home_address = %v.home_address,
                        nai = ?v.nai,
                        mn_mac = %mac_string(v.mn_mac),
                        home_agent = %v.home_agent,
                        care_of_address = %v.care_of_address,
                        co_located = v.co_located,
                        encapsulation = v.tunnel.map_or("none", |t| t.remote.encapsulation.as_str()),
                        reverse_tunnel = v.reverse_tunnel,
                        lifetime = v.lifetime,
                        "visitor"
                    );
                }
                FaOutput::SendKeepalive { src, dst } => self.send_keepalive(src, dst),
                FaOutput::Outcome(o) => {
                    self.metrics.registration(o.code);
                    if let Some(d) = self.reply_ident.and_then(|id| self.relayed.take(id)) {
                        self.metrics.relay_latency.observe_duration(d);
                    }
                    let nai = self
                        .fa
                        .visitors()
                        .find(|v| v.home_address == o.home_address && !o.home_address.is_unspecified())
                        .and_then(|v| v.nai.as_deref());
                    self.status.outcome(&o, nai);
                    tracing::info!(
                        home_address = %o.home_address,
                        care_of_address = %o.care_of_address,
                        home_agent = ?o.home_agent,
                        code = u8::from(o.code),
                        lifetime = o.lifetime,
                        nat_detected = o.nat_detected,
                        "registration"
                    );
                }
                FaOutput::Drop(reason) => self.control_drop(reason.as_str(), peer),
            }
        }
        self.outputs = outputs;
        self.metrics
            .visitors
            .set(i64::try_from(self.fa.visitors().count()).unwrap_or(i64::MAX));
        self.metrics
            .pending
            .set(i64::try_from(self.fa.pending_count()).unwrap_or(i64::MAX));
    }

    /// A reply to a visitor: a static neighbour entry first (no ARP, RFC 5944 §3.7.3.2), removed again after the
    /// send unless the address is an installed visitor's.
    fn send_to_mobile(&mut self, t: &mip::roles::Transmit, mac: [u8; 6]) {
        let dst = *t.dst.ip();
        let dev = self.kernel.visited.clone();
        let static_entry = unicast(dst);
        if static_entry && let Err(e) = net::neigh_replace(dst, mac, &dev) {
            self.kernel_errors(vec![e], "neighbour entry for a reply");
        }
        if let Err(e) = self.sockets.visited.send_transmit(t) {
            self.metrics.send_errors.visited.inc();
            tracing::debug!(error = %e, dst = %t.dst, "sending a reply to a visitor");
        }
        if static_entry
            && !self.kernel.is_installed(dst)
            && let Err(e) = net::neigh_del(dst, &dev)
            && !e.is_missing()
        {
            self.kernel_errors(vec![e], "removing a reply's neighbour entry");
        }
    }

    fn advertise(&mut self, icmp: &[u8], dst: Ipv4Addr) {
        let src = self.fa.config().visited_address;
        let Some(len) = advertisement_packet(src, dst, icmp, &mut self.scratch) else {
            self.metrics.send_errors.advertisement.inc();
            return;
        };
        let packet = self.scratch.get(..len).unwrap_or(&[]);
        match self.sockets.adv.send(packet) {
            Ok(()) => self.metrics.advertisements.inc(),
            Err(e) => {
                self.metrics.send_errors.advertisement.inc();
                tracing::debug!(error = %e, %dst, "sending an advertisement");
            }
        }
    }

    /// UDP(src → dst)/Tunnel Data/IPv4(visitor home address → dst)/ICMP echo request (RFC 3519 §4.9).
    fn send_keepalive(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        let home = self
            .fa
            .visitors()
            .filter_map(|v| tunnelled(Some(v)))
            .find(|(_, t)| {
                t.local == src
                    && t.remote.addr == *dst.ip()
                    && t.remote.port == dst.port()
                    && t.remote.encapsulation.is_udp()
            })
            .map_or(*src.ip(), |(v, _)| v.home_address);
        self.keepalive_seq = self.keepalive_seq.wrapping_add(1);
        let Some(len) = keepalive_payload(home, *dst.ip(), self.keepalive_seq, &mut self.scratch) else {
            self.metrics.data_drop(DataDrop::NoRoom);
            return;
        };
        let payload = self.scratch.get(..len).unwrap_or(&[]);
        let sent = self
            .sockets
            .network_for(*src.ip())
            .map_or(Err(io::ErrorKind::NotFound.into()), |s| {
                s.send_from(payload, Some(*src.ip()), dst, None)
            });
        match sent {
            Ok(()) => self.metrics.keepalives_sent.inc(),
            Err(e) => {
                self.metrics.send_errors.network.inc();
                tracing::debug!(error = %e, %src, %dst, "sending a keepalive");
            }
        }
    }

    /// Requests waiting for a MAC: handled when it appears, dropped after [`LINK_WAIT`].
    fn retry_parked(&mut self, now: Now) {
        let mut waiting = core::mem::take(&mut self.parked);
        let dev = self.kernel.visited.clone();
        for mut p in waiting.drain(..) {
            if p.next_try > now.instant {
                self.parked.push_back(p);
                continue;
            }
            match net::neigh_lladdr(*p.src.ip(), &dev) {
                Ok(Some(mac)) => {
                    let dg = Datagram {
                        src: p.src,
                        dst: p.dst,
                        ttl: p.ttl,
                        payload: &p.payload,
                    };
                    self.handle(now, FaInput::FromMobile { dg, link_src: mac });
                }
                _ if p.until <= now.instant => {
                    self.control_drop(NO_LINK_ADDRESS, Some(SocketAddr::V4(p.src)));
                    tracing::debug!(src = %p.src, "no link-layer address for a request; dropped");
                }
                _ => {
                    p.next_try = now.instant + LINK_RETRY;
                    self.parked.push_back(p);
                }
            }
        }
    }

    fn tick(&mut self, now: Now) {
        if !self.parked.is_empty() {
            self.retry_parked(now);
        }
        self.handle(now, FaInput::Tick);
    }

    fn next_timer(&self) -> Option<Instant> {
        let parked = self.parked.iter().map(|p| p.next_try).min();
        [self.fa.next_timer(), parked].into_iter().flatten().min()
    }

    // === sources ===

    /// Registration Requests from visitors.
    fn read_visited(&mut self, batch: &mut RecvBatch, now: Now) -> bool {
        let r = self.sockets.visited.recv_batch(batch);
        let Some(more) = filled(r, batch, "the visited UDP socket") else {
            return false;
        };
        for _ in 0..batch.truncated() {
            self.control_drop(DropReason::Malformed(ErrorKind::BadLength).as_str(), None);
        }
        let dev = self.kernel.visited.clone();
        for r in batch.iter() {
            let dg = r.datagram();
            let src = *dg.src.ip();
            if src.is_unspecified() {
                self.control_drop(NO_LINK_ADDRESS, Some(SocketAddr::V4(dg.src)));
                continue;
            }
            match net::neigh_lladdr(src, &dev) {
                Ok(Some(mac)) => self.handle(now, FaInput::FromMobile { dg, link_src: mac }),
                result => {
                    if let Err(e) = result {
                        self.kernel_errors(vec![e], "reading the neighbour table");
                    }
                    self.park(&dg, now);
                }
            }
        }
        more
    }

    /// Keeps a request until the kernel has resolved its sender's MAC (an empty datagram to the discard port
    /// makes it send an ARP request).
    fn park(&mut self, dg: &Datagram<'_>, now: Now) {
        // A retransmission of a request that is already waiting would be relayed twice.
        if self.parked.iter().any(|p| p.src == dg.src && p.payload == dg.payload) {
            return;
        }
        if self.parked.len() >= MAX_PARKED {
            self.control_drop(NO_LINK_ADDRESS, Some(SocketAddr::V4(dg.src)));
            return;
        }
        self.metrics.link_resolutions.inc();
        let probe = SocketAddrV4::new(*dg.src.ip(), DISCARD_PORT);
        if let Err(e) = self.sockets.probe.send_to(&[], probe) {
            tracing::debug!(error = %e, %probe, "neighbour resolution probe");
        }
        self.parked.push_back(Parked {
            payload: dg.payload.to_vec(),
            src: dg.src,
            dst: dg.dst,
            ttl: dg.ttl,
            next_try: now.instant + LINK_RETRY,
            until: now.instant + LINK_WAIT,
        });
    }

    /// UDP 434 on the routed side: Tunnel Data (downlink, keepalive replies) or Registration Replies.
    fn read_network(&mut self, i: usize, batch: &mut RecvBatch, now: Now) -> bool {
        let Some(n) = self.sockets.network.get(i) else {
            return false;
        };
        let r = n.sock.recv_batch(batch);
        let Some(more) = filled(r, batch, "a network UDP socket") else {
            return false;
        };
        self.metrics.truncated(batch);
        for r in batch.iter() {
            if r.payload.first() != Some(&tunnel::TYPE_TUNNEL_DATA) {
                self.handle(now, FaInput::FromNetwork(r.datagram()));
                continue;
            }
            let fa = &self.fa;
            match decap_udp(r.src, *r.dst.ip(), r.payload, |a| fa.visitor(a)) {
                UdpDecap::Deliver(inner) => match self.kernel.tun.write(inner) {
                    Ok(_) => self.metrics.tunnels.down_udp.count(inner.len()),
                    Err(_) => self.metrics.send_errors.tun.inc(),
                },
                UdpDecap::KeepaliveReply => {
                    self.metrics.keepalives_answered.inc();
                    self.handle(now, FaInput::KeepaliveReply);
                }
                UdpDecap::Drop(d) => self.metrics.data_drop(d),
            }
        }
        more
    }

    /// IP-in-IP from visitors' home agents.
    fn read_ipip(&mut self, batch: &mut RecvBatch) -> bool {
        let r = self.sockets.ipip.recv_batch(batch);
        let Some(more) = filled(r, batch, "the raw IPIP socket") else {
            return false;
        };
        self.metrics.truncated(batch);
        for r in batch.iter() {
            let fa = &self.fa;
            match decap_ipip(r.payload, |a| fa.visitor(a)) {
                Ok(inner) => match self.kernel.tun.write(inner) {
                    Ok(_) => self.metrics.tunnels.down_ipip.count(inner.len()),
                    Err(_) => self.metrics.send_errors.tun.inc(),
                },
                Err(d) => self.metrics.data_drop(d),
            }
        }
        more
    }

    /// ICMP on the visited interface: Agent Solicitations.
    fn read_icmp(&mut self, batch: &mut RecvBatch, now: Now) -> bool {
        let r = self.sockets.icmp.recv_batch(batch);
        let Some(more) = filled(r, batch, "the raw ICMP socket") else {
            return false;
        };
        for r in batch.iter() {
            match classify_icmp(r.payload) {
                Icmp::Solicitation(src) => {
                    self.metrics.solicitations.inc();
                    self.handle(now, FaInput::Solicitation { src });
                }
                Icmp::BadSolicitation(kind) => self.control_drop(DropReason::Malformed(kind).as_str(), None),
                Icmp::Other => {}
            }
        }
        more
    }

    /// Visitors' packets (reverse tunnelling): IP-in-IP through the raw sender, or the UDP tunnel.
    fn read_tun(&mut self, batch: &mut RecvBatch) -> bool {
        let r = self.kernel.tun.read_batch(batch);
        let Some(more) = filled(r, batch, "the TUN") else {
            return false;
        };
        self.metrics.truncated(batch);
        for r in batch.iter() {
            let fa = &self.fa;
            let t = match uplink_tunnel(r.payload, |a| fa.visitor(a)) {
                Ok(t) => t,
                Err(d) => {
                    self.metrics.data_drop(d);
                    continue;
                }
            };
            if t.remote.encapsulation.is_udp() {
                self.uplink_udp(r.payload, t);
            } else {
                self.uplink_ipip(r.payload, t);
            }
        }
        self.flush();
        more
    }

    fn uplink_ipip(&mut self, packet: &[u8], t: mip::roles::fa::VisitorTunnel) {
        let len = match encapsulate_ipip(packet, *t.local.ip(), t.remote.addr, self.outer_ttl, &mut self.scratch) {
            Ok(len) => len,
            Err(d) => return self.metrics.data_drop(d),
        };
        if self.send.is_full() {
            self.flush();
        }
        let outer = self.scratch.get(..len).unwrap_or(&[]);
        let dst = SocketAddrV4::new(t.remote.addr, 0);
        match self.send.push(outer, dst) {
            Ok(()) => self.metrics.tunnels.up_ipip.count(len - ipv4::HEADER_LEN),
            Err(_) => self.metrics.data_drop(DataDrop::NoRoom),
        }
    }

    fn uplink_udp(&mut self, packet: &[u8], t: mip::roles::fa::VisitorTunnel) {
        let len = match tunnel_data(packet, &mut self.scratch) {
            Ok(len) => len,
            Err(d) => return self.metrics.data_drop(d),
        };
        let payload = self.scratch.get(..len).unwrap_or(&[]);
        let local = *t.local.ip();
        let remote = SocketAddrV4::new(t.remote.addr, t.remote.port);
        let sent = self
            .sockets
            .network_for(local)
            .map_or(Err(io::ErrorKind::NotFound.into()), |s| {
                s.send_from(payload, Some(local), remote, None)
            });
        match sent {
            Ok(()) => self.metrics.tunnels.up_udp.count(len - tunnel::HEADER_LEN),
            Err(e) => {
                self.metrics.send_errors.network.inc();
                tracing::debug!(error = %e, %remote, "UDP tunnel send");
            }
        }
    }

    /// Sends what is queued for the raw sender; refused packets are counted and dropped.
    fn flush(&mut self) {
        mip_io::daemon::flush_raw(&self.sockets.sender, &mut self.send, &self.metrics.send_errors.raw);
    }
}

impl Service for FaService {
    fn register(&mut self, registry: &MioRegistry) -> io::Result<()> {
        let s = &mut self.core.sockets;
        registry.register(&mut s.visited, VISITED, Interest::READABLE)?;
        registry.register(&mut s.ipip, IPIP, Interest::READABLE)?;
        registry.register(&mut s.icmp, SOLICIT, Interest::READABLE)?;
        for (i, n) in s.network.iter_mut().enumerate() {
            registry.register(&mut n.sock, Token(NETWORK + i), Interest::READABLE)?;
        }
        registry.register(&mut self.core.kernel.tun, TUN, Interest::READABLE)?;
        registry.register(&mut self.core.neigh, NEIGH, Interest::READABLE)?;
        Ok(())
    }

    fn ready(&mut self, token: Token, now: Now) {
        if token == NEIGH {
            let changed = self.core.neigh.drain().unwrap_or(true);
            if changed && !self.core.parked.is_empty() {
                for p in &mut self.core.parked {
                    p.next_try = p.next_try.min(now.instant);
                }
                self.core.retry_parked(now);
            }
            return;
        }
        self.drain(token, now);
    }

    fn tick(&mut self, now: Now) {
        let pending: Vec<Token> = self.backlog.iter().filter(|(_, b)| **b).map(|(t, _)| *t).collect();
        for t in pending {
            self.drain(t, now);
        }
        self.core.tick(now);
    }

    fn next_timer(&mut self) -> Option<Instant> {
        if self.backlog.values().any(|b| *b) {
            return Some(self.clock.instant());
        }
        self.core.next_timer()
    }

    fn set_keys(&mut self, keys: KeyStore) {
        self.core.fa.set_keys(keys);
    }

    fn bindings_json(&self) -> String {
        visitors_json(self.core.fa.visitors(), self.clock.instant()).to_string()
    }

    fn role(&self) -> &'static str {
        "fa"
    }

    fn status_json(&self) -> Value {
        let visitors = self.core.fa.visitors().count();
        json!({
            "bindings": visitors,
            "visitors": visitors,
            "pending_requests": self.core.fa.pending_count(),
        })
    }

    fn shutdown(&mut self) {
        self.core.flush();
        self.core.kernel.remove();
        tracing::info!(visitors = self.core.fa.visitors().count(), "kernel state removed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use mip::binding::TunnelEndpoint;
    use mip::roles::fa::{ALL_SYSTEMS, VisitorTunnel};
    use mip::wire::udp::UdpRepr;

    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);

    #[test]
    fn identification_of_requests_and_replies() {
        let mut req = vec![1u8; 24];
        req[16..24].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(identification(&req, true), Some(0x0102_0304_0506_0708));
        assert_eq!(identification(&req, false), None, "not a reply");
        assert_eq!(identification(&req[..23], true), None, "too short");
        let mut rep = vec![3u8; 20];
        rep[12..20].copy_from_slice(&7u64.to_be_bytes());
        assert_eq!(identification(&rep, false), Some(7));
        let mut times = RelayTimes {
            sent: std::collections::HashMap::new(),
            max_age: Duration::from_secs(7),
        };
        times.insert(7);
        assert!(times.take(7).is_some());
        assert!(times.take(7).is_none(), "taken once");
        for i in 0..RelayTimes::CAP as u64 + 10 {
            times.insert(i);
        }
        assert_eq!(times.sent.len(), RelayTimes::CAP, "bounded");
    }

    /// Every series `mip-fa` registers is listed in docs/metrics.md under its section.
    #[test]
    fn metrics_are_documented() {
        let r = Arc::new(Registry::new());
        let _m = FaMetrics::new(Arc::clone(&r), 1468).unwrap();
        mip_io::metrics::check_documented(&r, include_str!("../../docs/metrics.md"), "mip-fa").unwrap();
        let text = r.render();
        assert!(text.contains("mip_keepalives_total{result=\"sent\"} 0\n"), "{text}");
        assert!(
            text.contains("mip_tunnel_mtu_bytes{encapsulation=\"ipip\"} 1468\n"),
            "{text}"
        );
    }
    const COA: Ipv4Addr = Ipv4Addr::new(198, 51, 101, 2);
    const PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

    fn visitor(udp: bool) -> Visitor {
        Visitor {
            home_address: HOA,
            nai: Some("joe@example.com".into()),
            mn_mac: [2, 0, 0, 0, 0, 1],
            mn_source: SocketAddrV4::new(HOA, 434),
            home_agent: PROXY,
            care_of_address: COA,
            co_located: false,
            tunnel: Some(VisitorTunnel {
                local: SocketAddrV4::new(COA, if udp { 434 } else { 0 }),
                remote: TunnelEndpoint {
                    addr: PROXY,
                    port: if udp { 434 } else { 0 },
                    encapsulation: if udp {
                        Encapsulation::UdpIpInIp
                    } else {
                        Encapsulation::IpInIp
                    },
                },
                keepalive_interval: if udp { 20 } else { 0 },
            }),
            reverse_tunnel: true,
            delivery: DeliveryStyle::Direct,
            identification: 7,
            lifetime: 600,
            registered_at: Instant::from_millis(1000),
            expires_at: Instant::from_millis(601_000),
        }
    }

    /// IPv4 + UDP + payload.
    fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, tos: u8, df: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload.len()];
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: protocol::UDP,
            payload_len: 8 + payload.len(),
            ttl,
            tos,
            ident: 1,
            dont_frag: df,
        }
        .emit(&mut p)
        .unwrap();
        p[28..].copy_from_slice(payload);
        UdpRepr {
            src_port: 5000,
            dst_port: 9,
        }
        .emit(&mut p[20..], payload.len(), src, dst)
        .unwrap();
        p
    }

    #[test]
    fn ipip_encapsulation_follows_rfc_2003() {
        let inner = udp_packet(HOA, GW, 63, 0xb8, true, b"hello");
        let mut out = [0u8; 200];
        let n = encapsulate_ipip(&inner, COA, PROXY, 64, &mut out).unwrap();
        assert_eq!(n, 20 + inner.len());
        let o = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(o.verify_checksum());
        assert_eq!((o.src_addr(), o.dst_addr(), o.protocol()), (COA, PROXY, 4));
        assert_eq!((o.ttl(), o.tos(), o.dont_frag()), (64, 0xb8, true), "TOS and DF copied");
        assert_eq!(o.payload(), &inner[..], "inner untouched");
        // Trailing bytes after the inner Total Length are not carried.
        let mut padded = inner.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(encapsulate_ipip(&padded, COA, PROXY, 64, &mut out).unwrap(), n);
        assert_eq!(
            encapsulate_ipip(&inner[..10], COA, PROXY, 64, &mut out),
            Err(DataDrop::Malformed)
        );
        assert_eq!(
            encapsulate_ipip(&inner, COA, PROXY, 64, &mut out[..30]),
            Err(DataDrop::NoRoom)
        );
    }

    #[test]
    fn uplink_only_for_reverse_tunnelled_visitors() {
        let v = visitor(false);
        let lookup = |a: Ipv4Addr| (a == HOA).then_some(&v);
        let pkt = udp_packet(HOA, GW, 63, 0, false, b"x");
        assert_eq!(uplink_tunnel(&pkt, lookup).unwrap().remote.addr, PROXY);
        let stranger = udp_packet(Ipv4Addr::new(10, 10, 1, 51), GW, 63, 0, false, b"x");
        assert_eq!(uplink_tunnel(&stranger, lookup), Err(DataDrop::NotBound));
        let mut no_t = visitor(false);
        no_t.reverse_tunnel = false;
        assert_eq!(
            uplink_tunnel(&pkt, |a| (a == HOA).then_some(&no_t)),
            Err(DataDrop::NotBound)
        );
        let mut colo = visitor(false);
        colo.co_located = true;
        colo.tunnel = None;
        assert_eq!(
            uplink_tunnel(&pkt, |a| (a == HOA).then_some(&colo)),
            Err(DataDrop::NotBound)
        );
        assert_eq!(uplink_tunnel(&[0x45, 0], lookup), Err(DataDrop::Malformed));
        // TTL 1 goes out as it is (the kernel decremented it already); TTL 0 is never encapsulated.
        let last_hop = udp_packet(HOA, GW, 1, 0, false, b"x");
        assert!(uplink_tunnel(&last_hop, lookup).is_ok());
        let expired = udp_packet(HOA, GW, 0, 0, false, b"x");
        assert_eq!(uplink_tunnel(&expired, lookup), Err(DataDrop::TtlExpired));
    }

    #[test]
    fn ipip_decapsulation_checks_the_tunnel() {
        let v = visitor(false);
        let lookup = |a: Ipv4Addr| (a == HOA).then_some(&v);
        let inner = udp_packet(GW, HOA, 60, 0, false, b"down");
        let mut out = [0u8; 200];
        let n = encapsulate_ipip(&inner, PROXY, COA, 64, &mut out).unwrap();
        assert_eq!(decap_ipip(&out[..n], lookup), Ok(&inner[..]));
        // From someone else than the visitor's home agent, or to another address than its care-of address.
        let n2 = encapsulate_ipip(&inner, GW, COA, 64, &mut out).unwrap();
        assert_eq!(decap_ipip(&out[..n2], lookup), Err(DataDrop::OuterAddress));
        let n3 = encapsulate_ipip(&inner, PROXY, Ipv4Addr::new(198, 51, 101, 3), 64, &mut out).unwrap();
        assert_eq!(decap_ipip(&out[..n3], lookup), Err(DataDrop::OuterAddress));
        // For a stranger, or a visitor behind a UDP tunnel.
        let other = udp_packet(GW, Ipv4Addr::new(10, 10, 1, 51), 60, 0, false, b"down");
        let n4 = encapsulate_ipip(&other, PROXY, COA, 64, &mut out).unwrap();
        assert_eq!(decap_ipip(&out[..n4], lookup), Err(DataDrop::NotBound));
        let u = visitor(true);
        let n5 = encapsulate_ipip(&inner, PROXY, COA, 64, &mut out).unwrap();
        assert_eq!(
            decap_ipip(&out[..n5], |a| (a == HOA).then_some(&u)),
            Err(DataDrop::NotBound)
        );
        // Inner TTL 0.
        let dead = udp_packet(GW, HOA, 0, 0, false, b"down");
        let n6 = encapsulate_ipip(&dead, PROXY, COA, 64, &mut out).unwrap();
        assert_eq!(decap_ipip(&out[..n6], lookup), Err(DataDrop::TtlExpired));
        assert_eq!(decap_ipip(&inner, lookup), Err(DataDrop::WrongProtocol));
    }

    #[test]
    fn udp_tunnel_both_ways_and_keepalives() {
        let v = visitor(true);
        let lookup = |a: Ipv4Addr| (a == HOA).then_some(&v);
        let remote = SocketAddrV4::new(PROXY, 434);
        let inner = udp_packet(GW, HOA, 60, 0, false, b"down");
        let mut out = [0u8; 200];
        let n = tunnel_data(&inner, &mut out).unwrap();
        assert_eq!(&out[..4], &[4, 4, 0, 0]);
        assert_eq!(decap_udp(remote, COA, &out[..n], lookup), UdpDecap::Deliver(&inner[..]));
        let other_port = SocketAddrV4::new(PROXY, 4500);
        assert_eq!(
            decap_udp(other_port, COA, &out[..n], lookup),
            UdpDecap::Drop(DataDrop::OuterAddress)
        );
        let mut gre = out;
        gre[1] = 47;
        assert_eq!(
            decap_udp(remote, COA, &gre[..n], lookup),
            UdpDecap::Drop(DataDrop::WrongNextHeader)
        );
        assert_eq!(
            decap_udp(remote, COA, &[1, 2, 3, 4, 5], lookup),
            UdpDecap::Drop(DataDrop::WrongProtocol)
        );

        // Our keepalive, as the proxy answers it: echo reply from the remote end to the home address.
        let n = keepalive_payload(HOA, PROXY, 9, &mut out).unwrap();
        let req = Ipv4Packet::new_checked(&out[4..n]).unwrap();
        assert_eq!((req.src_addr(), req.dst_addr(), req.protocol()), (HOA, PROXY, 1));
        let echo = IcmpRepr::parse(&IcmpPacket::new_checked(req.payload()).unwrap()).unwrap();
        let IcmpRepr::EchoRequest { ident, seq, data } = echo else {
            panic!("{echo:?}")
        };
        assert_eq!((ident, seq), (KEEPALIVE_IDENT, 9));
        let reply = IcmpRepr::EchoReply { ident, seq, data };
        let mut r = vec![0u8; 4 + 20 + reply.buffer_len()];
        r[..4].copy_from_slice(&[4, 4, 0, 0]);
        Ipv4Repr {
            src_addr: PROXY,
            dst_addr: HOA,
            protocol: 1,
            payload_len: reply.buffer_len(),
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: false,
        }
        .emit(&mut r[4..])
        .unwrap();
        reply.emit(&mut r[24..]).unwrap();
        assert_eq!(decap_udp(remote, COA, &r, lookup), UdpDecap::KeepaliveReply);
    }

    #[test]
    fn advertisements_and_solicitations() {
        let icmp = [9u8, 0, 0, 0, 1, 2, 0, 3];
        let mut out = [0u8; 64];
        let n = advertisement_packet(Ipv4Addr::new(192, 0, 3, 1), ALL_SYSTEMS, &icmp, &mut out).unwrap();
        let p = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert_eq!((p.ttl(), p.protocol(), p.dst_addr()), (1, 1, ALL_SYSTEMS));
        assert_eq!(p.payload(), &icmp);

        let mut sol = [0u8; 8];
        AgentSolicitation.emit(&mut sol).unwrap();
        let n = advertisement_packet(HOA, ALL_MOBILITY_AGENTS, &sol, &mut out).unwrap();
        assert_eq!(classify_icmp(&out[..n]), Icmp::Solicitation(HOA));
        let mut bad = sol;
        bad[1] = 1;
        let n = advertisement_packet(HOA, ALL_MOBILITY_AGENTS, &bad, &mut out).unwrap();
        assert!(matches!(classify_icmp(&out[..n]), Icmp::BadSolicitation(_)));
        let n = advertisement_packet(HOA, ALL_SYSTEMS, &icmp, &mut out).unwrap();
        assert_eq!(classify_icmp(&out[..n]), Icmp::Other);
        assert_eq!(classify_icmp(&[]), Icmp::Other);
    }

    #[test]
    fn bindings_json_shape() {
        let v = visitor(true);
        let j = visitors_json([&v].into_iter(), Instant::from_millis(1000));
        let row = &j[0];
        assert_eq!(row["home_address"], "10.10.1.50");
        assert_eq!(row["nai"], "joe@example.com");
        assert_eq!(row["mn_mac"], "02:00:00:00:00:01");
        assert_eq!(row["home_agent"], "198.51.100.10");
        assert_eq!(row["tunnel"]["encapsulation"], "udp_ipip");
        assert_eq!(row["tunnel"]["port"], 434);
        assert_eq!(row["lifetime"], 600);
        assert_eq!(row["expires_in_ms"], 600_000);
        let mut inf = visitor(false);
        inf.lifetime = INFINITE_LIFETIME;
        inf.tunnel = None;
        let j = visitors_json([&inf].into_iter(), Instant::from_millis(1000));
        assert_eq!(j[0]["expires_in_ms"], Value::Null);
        assert_eq!(j[0]["tunnel"], Value::Null);
    }
}

//! The MIP Proxy's data plane as pure functions over packet buffers: which tunnelled packets may enter, what they
//! carry to the VPN gateway, and how packets for a mobile node are encapsulated (spec §5.4, §8; RFC 2003; RFC 3519
//! §4.2, §4.8, §4.9; RFC 3024 §4.3.2). The I/O layer moves bytes between sockets, TUN devices and these functions;
//! every decision lives here, so it is tested without a network.
//!
//! Filters (anti open relay, spec §8 items 3 and 4): a packet leaves a tunnel only if its outer source is the
//! tunnel endpoint of a binding (address, and port for UDP tunnels) whose home address is the inner source, and
//! only toward a configured VPN gateway as ESP or IKE (UDP 500/4500), or as an RFC 3519 keepalive to the proxy
//! itself. A packet enters a tunnel only if it comes from a VPN gateway (or a home agent's tunnel) and is
//! addressed to a bound home address. Everything else is dropped with a [`DataDrop`] reason and nothing is sent.
//!
//! No function here allocates: outputs are written into a caller-provided buffer.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;

use crate::binding::{Binding, BindingCache, Encapsulation};
use crate::wire::get_u16;
use crate::wire::icmp::{self, IcmpPacket, IcmpRepr};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, protocol};
use crate::wire::tunnel::{self, TunnelDataPacket, TunnelDataRepr};
use crate::wire::udp::{self, UdpRepr};

/// IKE ports allowed through the tunnel toward a VPN gateway (RFC 7296 §2.23).
const IKE_PORTS: [u16; 2] = [500, 4500];
/// RFC 2003 §3.1: "an appropriate" outer TTL \[G\].
pub const DEFAULT_OUTER_TTL: u8 = 64;
/// Bytes of the original packet an ICMP error quotes when we build one (RFC 792: header + 8 bytes; we quote what
/// RFC 1812 §4.3.2.3 allows within 576 bytes).
const ICMP_QUOTE: usize = 576 - 20 - 8;

/// Why a packet was dropped. Each reason is a counter label (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataDrop {
    /// The outer or inner packet does not parse (bad header, checksum or length).
    Malformed,
    /// A fragment: the data plane expects the kernel to have reassembled (RFC 3519 §4.8: fragment before
    /// encapsulating).
    Fragment,
    /// Not the protocol this path carries (e.g. UDP payload that is not Tunnel Data).
    WrongProtocol,
    /// Tunnel Data whose Next Header is not the negotiated IP-in-UDP (RFC 3519 §3.3, spec §10 case 12).
    WrongNextHeader,
    /// No binding whose home address is the inner source and whose tunnel endpoint is the outer source (RFC 3024
    /// §4.3.2; spec §10 cases 58, 68), or no binding for a packet's destination (case 70).
    NotBound,
    /// The binding is half-bound (R flag) and its first keepalive has not arrived (RFC 3519 §4.6).
    HalfBound,
    /// The inner destination is not a VPN gateway, or the inner protocol is not ESP/IKE (spec §10 case 67).
    InnerDestination,
    /// Outer source not an allowed home agent, or outer destination not ours.
    OuterAddress,
    /// A packet for a mobile node that did not come from a VPN gateway.
    NotFromVpnGateway,
    /// TTL 0: after decapsulation, or in a packet to encapsulate (which then gets an ICMP Time Exceeded).
    TtlExpired,
    /// The encapsulated packet would exceed the path MTU with DF set (an ICMP error is sent instead).
    TooBig,
    /// An ICMP error that is not relayed (RFC 2003 §4: port unreachable, source quench, redirect, …).
    IcmpNotRelayed,
    /// The output buffer is too small (a bug in the caller's sizing).
    NoRoom,
}

impl DataDrop {
    /// Stable label for counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            DataDrop::Malformed => "malformed",
            DataDrop::Fragment => "fragment",
            DataDrop::WrongProtocol => "wrong_protocol",
            DataDrop::WrongNextHeader => "wrong_next_header",
            DataDrop::NotBound => "not_bound",
            DataDrop::HalfBound => "half_bound",
            DataDrop::InnerDestination => "inner_destination",
            DataDrop::OuterAddress => "outer_address",
            DataDrop::NotFromVpnGateway => "not_from_vpn_gateway",
            DataDrop::TtlExpired => "ttl_expired",
            DataDrop::TooBig => "too_big",
            DataDrop::IcmpNotRelayed => "icmp_not_relayed",
            DataDrop::NoRoom => "no_room",
        }
    }

    /// Every reason, for pre-registering counters.
    pub const ALL: [DataDrop; 13] = [
        DataDrop::Malformed,
        DataDrop::Fragment,
        DataDrop::WrongProtocol,
        DataDrop::WrongNextHeader,
        DataDrop::NotBound,
        DataDrop::HalfBound,
        DataDrop::InnerDestination,
        DataDrop::OuterAddress,
        DataDrop::NotFromVpnGateway,
        DataDrop::TtlExpired,
        DataDrop::TooBig,
        DataDrop::IcmpNotRelayed,
        DataDrop::NoRoom,
    ];
}

/// The proxy's data-plane configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// `proxy_public`: outer address of tunnels toward mobile nodes.
    pub proxy_public: Ipv4Addr,
    /// `proxy_private`: where home agents tunnel to.
    pub proxy_private: Ipv4Addr,
    /// The VPN gateways' public addresses: the only inner destinations allowed out of a tunnel, and the only
    /// sources of packets tunnelled to mobile nodes.
    pub vpn_gateways: Vec<Ipv4Addr>,
    /// Home agents allowed to tunnel to `proxy_private`.
    pub home_agents: Vec<Ipv4Addr>,
    /// Outer TTL of packets we encapsulate.
    pub outer_ttl: u8,
    /// MTU of the path toward mobile nodes, before any PMTU learnt from ICMP (bytes of the outer packet).
    pub path_mtu: u16,
}

/// Bytes an encapsulation adds in front of the inner packet.
pub const fn overhead(encapsulation: Encapsulation) -> usize {
    if encapsulation.is_udp() {
        ipv4::HEADER_LEN + udp::HEADER_LEN + tunnel::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    }
}

/// What to do with a packet that came out of a tunnel from a mobile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink<'a> {
    /// Hand `packet` (the inner packet, unchanged: RFC 2003 §3.1 leaves the TTL alone on decapsulation) to the
    /// VPN gateway `gateway`.
    ToVpnGateway {
        /// The inner IPv4 packet.
        packet: &'a [u8],
        /// Its destination, a configured VPN gateway.
        gateway: Ipv4Addr,
    },
    /// An RFC 3519 keepalive: send the `len` bytes written to the output buffer (a complete outer IPv4 packet
    /// carrying the echo reply) back to the node (spec §10 case 59).
    Reply {
        /// Bytes written.
        len: usize,
    },
    /// A keepalive from the address of a half-bound binding: the control plane completes the binding
    /// (`ProxyInput::Keepalive`), then the packet can be handled again.
    CompleteHalfBound {
        /// Outer source.
        src: SocketAddrV4,
        /// Inner source.
        home_address: Ipv4Addr,
    },
    /// Dropped.
    Drop(DataDrop),
}

/// What to do with a packet addressed to a mobile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    /// Send the `len` bytes written to the output buffer: a complete outer IPv4 packet (IP-in-IP, or IPv4 + UDP +
    /// Tunnel Data) to `dst`.
    Encapsulated {
        /// Bytes written.
        len: usize,
        /// Outer destination.
        dst: Ipv4Addr,
    },
    /// Send the `len` bytes written to the output buffer: an ICMP error (IPv4 packet) back to the sender.
    Icmp {
        /// Bytes written.
        len: usize,
        /// Its destination.
        dst: Ipv4Addr,
    },
    /// Dropped.
    Drop(DataDrop),
}

/// What to do with a packet a home agent tunnelled to `proxy_private`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromHomeAgent<'a> {
    /// Hand the inner packet to the VPN gateway's private side (two-box) or to the local IPsec stack (one-box).
    ToVpnGateway {
        /// The inner IPv4 packet.
        packet: &'a [u8],
    },
    /// Dropped.
    Drop(DataDrop),
}

/// The proxy data plane: configuration plus the soft state RFC 2003 §5 keeps per tunnel (the path MTU learnt
/// from ICMP "Datagram Too Big").
#[derive(Debug, Clone)]
pub struct DataPlane {
    config: DataPlaneConfig,
    pmtu: HashMap<Ipv4Addr, u16>,
    ident: u16,
}

/// The packet inside a tunnel, once checked.
struct Inner<'a> {
    packet: &'a [u8],
    dst: Ipv4Addr,
    keepalive: bool,
}

impl DataPlane {
    /// A data plane with `config`.
    pub fn new(config: DataPlaneConfig) -> Self {
        DataPlane {
            config,
            pmtu: HashMap::new(),
            ident: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DataPlaneConfig {
        &self.config
    }

    /// Largest inner packet a tunnel to `dst` with `encapsulation` carries without fragmentation (the tunnel
    /// MTU of RFC 2003 §5.1): the path MTU, learnt or configured, minus the encapsulation overhead.
    pub fn tunnel_mtu(&self, dst: Ipv4Addr, encapsulation: Encapsulation) -> u16 {
        let path = self.pmtu.get(&dst).copied().unwrap_or(self.config.path_mtu);
        path.saturating_sub(overhead(encapsulation) as u16)
    }

    /// Checks the packet inside a tunnel whose binding was found by its source address (spec §5.4 proxy checks,
    /// §8 item 3): destination and protocol.
    fn check_inner<'a>(&self, packet: &'a [u8]) -> Result<Inner<'a>, DataDrop> {
        let p = Ipv4Packet::new_checked(packet).map_err(|_| DataDrop::Malformed)?;
        if !p.verify_checksum() {
            return Err(DataDrop::Malformed);
        }
        let packet = packet.get(..usize::from(p.total_len())).ok_or(DataDrop::Malformed)?;
        if p.ttl() == 0 {
            return Err(DataDrop::TtlExpired);
        }
        let dst = p.dst_addr();
        let to_gateway = self.config.vpn_gateways.contains(&dst);
        let allowed = match p.protocol() {
            protocol::ESP => to_gateway,
            // IKE and NAT-T (ESP in UDP 4500, as kernel-libipsec always uses) to the gateway. Only the first
            // fragment carries the UDP header; later fragments of a datagram to the gateway pass.
            protocol::UDP if to_gateway => {
                p.frag_offset() != 0
                    || p.payload().len() >= udp::HEADER_LEN && IKE_PORTS.contains(&get_u16(p.payload(), 2))
            }
            // RFC 3519 §4.9 keepalive: ICMP echo request from the home address to the proxy.
            protocol::ICMP if dst == self.config.proxy_public => {
                return if IcmpPacket::new_checked(p.payload()).is_ok_and(|i| i.msg_type() == icmp::types::ECHO_REQUEST)
                {
                    Ok(Inner {
                        packet,
                        dst,
                        keepalive: true,
                    })
                } else {
                    Err(DataDrop::InnerDestination)
                };
            }
            _ => false,
        };
        if allowed {
            Ok(Inner {
                packet,
                dst,
                keepalive: false,
            })
        } else {
            Err(DataDrop::InnerDestination)
        }
    }

    /// An IP-in-IP packet from the Internet side (the whole outer packet, as a raw IPPROTO_IPIP socket delivers
    /// it): decapsulate if the outer source is the bound care-of address of the inner source (spec §10 cases
    /// 66–68).
    pub fn uplink_ipip<'a>(&self, outer: &'a [u8], bindings: &BindingCache) -> Uplink<'a> {
        let Ok(p) = Ipv4Packet::new_checked(outer) else {
            return Uplink::Drop(DataDrop::Malformed);
        };
        if p.protocol() != protocol::IPIP {
            return Uplink::Drop(DataDrop::WrongProtocol);
        }
        if p.is_fragment() {
            return Uplink::Drop(DataDrop::Fragment);
        }
        if p.dst_addr() != self.config.proxy_public {
            return Uplink::Drop(DataDrop::OuterAddress);
        }
        let outer_src = p.src_addr();
        let inner = p.into_payload();
        let home_address = Ipv4Packet::new_unchecked(inner).src_addr();
        let bound = bindings.get_by_home(home_address).is_some_and(|e| {
            e.bindings()
                .iter()
                .any(|b| b.tunnel.encapsulation == Encapsulation::IpInIp && b.tunnel.addr == outer_src)
        });
        if !bound {
            return Uplink::Drop(DataDrop::NotBound);
        }
        match self.check_inner(inner) {
            Ok(i) if i.keepalive => Uplink::Drop(DataDrop::InnerDestination),
            Ok(i) => Uplink::ToVpnGateway {
                packet: i.packet,
                gateway: i.dst,
            },
            Err(e) => Uplink::Drop(e),
        }
    }

    /// An RFC 3519 Tunnel Data message (the UDP payload) from `src` on UDP 434: decapsulate if `src` is the
    /// bound endpoint of the inner source (spec §10 case 58), answer keepalives (case 59).
    pub fn uplink_udp<'a>(
        &mut self,
        src: SocketAddrV4,
        payload: &'a [u8],
        bindings: &BindingCache,
        out: &mut [u8],
    ) -> Uplink<'a> {
        let Ok(t) = TunnelDataPacket::new_checked(payload) else {
            return Uplink::Drop(DataDrop::Malformed);
        };
        if t.msg_type() != tunnel::TYPE_TUNNEL_DATA {
            return Uplink::Drop(DataDrop::WrongProtocol);
        }
        // Only IP-in-UDP is ever negotiated here: any other Next Header is a mismatch (RFC 3519 §3.3).
        if t.next_header() != tunnel::NEXT_HEADER_IPV4 {
            return Uplink::Drop(DataDrop::WrongNextHeader);
        }
        let inner = payload.get(tunnel::HEADER_LEN..).unwrap_or(&[]);
        let home_address = Ipv4Packet::new_unchecked(inner).src_addr();
        let Some(entry) = bindings.get_by_home(home_address) else {
            return Uplink::Drop(DataDrop::NotBound);
        };
        let udp_bindings = || entry.bindings().iter().filter(|b| b.tunnel.encapsulation.is_udp());
        let bound = udp_bindings().find(|b| !b.half_bound && b.tunnel.addr == *src.ip() && b.tunnel.port == src.port());
        let Some(binding) = bound else {
            // A half-bound tunnel takes its port from the first keepalive from the registered address.
            if udp_bindings().any(|b| b.half_bound && b.tunnel.addr == *src.ip()) {
                return match self.check_inner(inner) {
                    Ok(i) if i.keepalive => Uplink::CompleteHalfBound { src, home_address },
                    Ok(_) => Uplink::Drop(DataDrop::HalfBound),
                    Err(e) => Uplink::Drop(e),
                };
            }
            return Uplink::Drop(DataDrop::NotBound);
        };
        match self.check_inner(inner) {
            Ok(i) if i.keepalive => self.keepalive_reply(i.packet, binding, out),
            Ok(i) => Uplink::ToVpnGateway {
                packet: i.packet,
                gateway: i.dst,
            },
            Err(e) => Uplink::Drop(e),
        }
    }

    /// The echo reply to a keepalive, UDP-encapsulated back to the node's endpoint.
    fn keepalive_reply<'a>(&mut self, request: &[u8], binding: &Binding, out: &mut [u8]) -> Uplink<'a> {
        let req = Ipv4Packet::new_unchecked(request);
        let icmp_bytes = req.into_payload();
        let Ok(echo) = IcmpRepr::parse(&IcmpPacket::new_unchecked(icmp_bytes)) else {
            return Uplink::Drop(DataDrop::Malformed);
        };
        let IcmpRepr::EchoRequest { ident, seq, data } = echo else {
            return Uplink::Drop(DataDrop::InnerDestination);
        };
        let reply = IcmpRepr::EchoReply { ident, seq, data };
        let inner = Ipv4Repr {
            src_addr: self.config.proxy_public,
            dst_addr: req.src_addr(),
            protocol: protocol::ICMP,
            payload_len: reply.buffer_len(),
            ttl: DEFAULT_OUTER_TTL,
            tos: req.tos(),
            ident: self.next_ident(),
            dont_frag: false,
        };
        let at = overhead(binding.tunnel.encapsulation);
        let inner_len = inner.buffer_len() + reply.buffer_len();
        let Some(body) = out.get_mut(at..at + inner_len) else {
            return Uplink::Drop(DataDrop::NoRoom);
        };
        if inner.emit(body).is_err() || body.get_mut(ipv4::HEADER_LEN..).is_none_or(|b| reply.emit(b).is_err()) {
            return Uplink::Drop(DataDrop::NoRoom);
        }
        match self.write_outer(out, inner_len, binding, 0, false) {
            Ok(len) => Uplink::Reply { len },
            Err(e) => Uplink::Drop(e),
        }
    }

    /// A packet for a mobile node (from the VPN gateway: ESP or IKE toward the home address). It must already
    /// sit in `out` at offset [`DataPlane::downlink_offset`] (so encapsulation adds the outer headers in place,
    /// without copying the payload); `len` is its length. On success `out[..len']` holds the outer packet.
    ///
    /// The inner TTL is left as it is: the packet reaches the data plane through the TUN, and the kernel
    /// forwarding it there was the one router hop RFC 2003 §3.1 asks the encapsulator to count (it decremented
    /// the TTL and answered TTL ≤ 1 with Time Exceeded itself, case 71); a packet the host originated was not
    /// forwarded and is not decremented either (RFC 2003 §3.1, "otherwise … not changed"). So the kernel never
    /// hands over TTL 0; should one arrive anyway it gets ICMP Time Exceeded and is never encapsulated (case 71).
    /// No binding → drop without ICMP (case 70).
    pub fn downlink(&mut self, out: &mut [u8], len: usize, bindings: &BindingCache) -> Downlink {
        let at = self.downlink_offset();
        let Some(inner) = out.get(at..at + len) else {
            return Downlink::Drop(DataDrop::NoRoom);
        };
        let Ok(p) = Ipv4Packet::new_checked(inner) else {
            return Downlink::Drop(DataDrop::Malformed);
        };
        if !p.verify_checksum() {
            return Downlink::Drop(DataDrop::Malformed);
        }
        let (src, dst, ttl, tos, df) = (p.src_addr(), p.dst_addr(), p.ttl(), p.tos(), p.dont_frag());
        let inner_len = usize::from(p.total_len());
        if !self.config.vpn_gateways.contains(&src) {
            return Downlink::Drop(DataDrop::NotFromVpnGateway);
        }
        let Some(binding) = bindings.get_by_home(dst).and_then(|e| {
            // The most recently registered care-of address carries the traffic.
            e.bindings()
                .iter()
                .filter(|b| !b.half_bound)
                .max_by_key(|b| b.registered_at)
                .copied()
        }) else {
            let half = bindings.get_by_home(dst).is_some();
            return Downlink::Drop(if half { DataDrop::HalfBound } else { DataDrop::NotBound });
        };
        if ttl == 0 {
            return self.icmp_error(out, at, inner_len, IcmpKind::TimeExceeded);
        }
        let enc = binding.tunnel.encapsulation;
        let path = self
            .pmtu
            .get(&binding.tunnel.addr)
            .copied()
            .unwrap_or(self.config.path_mtu);
        if overhead(enc) + inner_len > usize::from(path) && df {
            let mtu = path.saturating_sub(overhead(enc) as u16);
            return self.icmp_error(out, at, inner_len, IcmpKind::TooBig(mtu));
        }
        // The outer header goes right before the inner packet: shift it so it starts after this tunnel's
        // overhead (UDP tunnels need more room than IP-in-IP; the buffer is laid out for the larger).
        let start = overhead(enc);
        if start != at {
            out.copy_within(at..at + inner_len, start);
        }
        match self.write_outer(out, inner_len, &binding, tos, df) {
            Ok(len) => Downlink::Encapsulated {
                len,
                dst: binding.tunnel.addr,
            },
            Err(e) => Downlink::Drop(e),
        }
    }

    /// Where [`downlink`](Self::downlink) expects the inner packet in its buffer: room for the largest outer
    /// header stack.
    pub const fn downlink_offset(&self) -> usize {
        overhead(Encapsulation::UdpIpInIp)
    }

    /// Writes the outer headers in front of the `inner_len`-byte packet that already sits at
    /// `out[overhead(enc)..]`. Outer TOS copied, DF copied (RFC 2003 §3.1), TTL `outer_ttl`.
    fn write_outer(
        &mut self,
        out: &mut [u8],
        inner_len: usize,
        binding: &Binding,
        tos: u8,
        df: bool,
    ) -> Result<usize, DataDrop> {
        let t = binding.tunnel;
        let enc = t.encapsulation;
        let total = overhead(enc) + inner_len;
        let (proto, ip_payload) = if enc.is_udp() {
            (protocol::UDP, udp::HEADER_LEN + tunnel::HEADER_LEN + inner_len)
        } else {
            (protocol::IPIP, inner_len)
        };
        let ip = Ipv4Repr {
            src_addr: self.config.proxy_public,
            dst_addr: t.addr,
            protocol: proto,
            payload_len: ip_payload,
            ttl: self.config.outer_ttl,
            tos,
            ident: self.next_ident(),
            dont_frag: df,
        };
        let buf = out.get_mut(..total).ok_or(DataDrop::NoRoom)?;
        ip.emit(buf).map_err(|_| DataDrop::NoRoom)?;
        if enc.is_udp() {
            let rest = buf.get_mut(ipv4::HEADER_LEN..).ok_or(DataDrop::NoRoom)?;
            TunnelDataRepr {
                next_header: tunnel::NEXT_HEADER_IPV4,
            }
            .emit(rest.get_mut(udp::HEADER_LEN..).ok_or(DataDrop::NoRoom)?)
            .map_err(|_| DataDrop::NoRoom)?;
            UdpRepr {
                src_port: udp::MIP_PORT,
                dst_port: t.port,
            }
            .emit(rest, tunnel::HEADER_LEN + inner_len, self.config.proxy_public, t.addr)
            .map_err(|_| DataDrop::NoRoom)?;
        }
        Ok(total)
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// Builds an ICMP error about the packet at `out[at..at + len]` back to its sender, in place at `out[..]`.
    fn icmp_error(&mut self, out: &mut [u8], at: usize, len: usize, kind: IcmpKind) -> Downlink {
        let quote_len = len.min(ICMP_QUOTE);
        let Some(quoted) = out.get(at..at + quote_len) else {
            return Downlink::Drop(DataDrop::NoRoom);
        };
        let sender = Ipv4Packet::new_unchecked(quoted).src_addr();
        // Copy the quote out of the way first: the error is written over the same buffer.
        let mut quote = [0u8; ICMP_QUOTE];
        let Some(q) = quote.get_mut(..quote_len) else {
            return Downlink::Drop(DataDrop::NoRoom);
        };
        q.copy_from_slice(quoted);
        match self.write_icmp(out, sender, kind, q) {
            Some(n) => Downlink::Icmp { len: n, dst: sender },
            None => Downlink::Drop(DataDrop::NoRoom),
        }
    }

    /// Writes IPv4 + ICMP error to `dst` quoting `quote`, from `proxy_public`.
    fn write_icmp(&mut self, out: &mut [u8], dst: Ipv4Addr, kind: IcmpKind, quote: &[u8]) -> Option<usize> {
        let icmp = match kind {
            IcmpKind::TimeExceeded => IcmpRepr::TimeExceeded { code: 0, data: quote },
            IcmpKind::TooBig(mtu) => IcmpRepr::DstUnreachable {
                code: icmp::unreachable::FRAG_NEEDED,
                next_hop_mtu: mtu,
                data: quote,
            },
            IcmpKind::Unreachable(code) => IcmpRepr::DstUnreachable {
                code,
                next_hop_mtu: 0,
                data: quote,
            },
        };
        let ip = Ipv4Repr {
            src_addr: self.config.proxy_public,
            dst_addr: dst,
            protocol: protocol::ICMP,
            payload_len: icmp.buffer_len(),
            ttl: DEFAULT_OUTER_TTL,
            tos: 0,
            ident: self.next_ident(),
            dont_frag: false,
        };
        let total = ip.buffer_len() + icmp.buffer_len();
        let buf = out.get_mut(..total)?;
        ip.emit(buf).ok()?;
        icmp.emit(buf.get_mut(ipv4::HEADER_LEN..)?).ok()?;
        Some(total)
    }

    /// An IP-in-IP packet a home agent tunnelled to `proxy_private` (inner destination: a bound home address):
    /// the inner packet goes to the VPN gateway unchanged (spec §10 case 69, first half).
    pub fn from_home_agent<'a>(&self, outer: &'a [u8], bindings: &BindingCache) -> FromHomeAgent<'a> {
        let Ok(p) = Ipv4Packet::new_checked(outer) else {
            return FromHomeAgent::Drop(DataDrop::Malformed);
        };
        if p.protocol() != protocol::IPIP {
            return FromHomeAgent::Drop(DataDrop::WrongProtocol);
        }
        if p.is_fragment() {
            return FromHomeAgent::Drop(DataDrop::Fragment);
        }
        if p.dst_addr() != self.config.proxy_private || !self.config.home_agents.contains(&p.src_addr()) {
            return FromHomeAgent::Drop(DataDrop::OuterAddress);
        }
        let inner = p.into_payload();
        let Ok(i) = Ipv4Packet::new_checked(inner) else {
            return FromHomeAgent::Drop(DataDrop::Malformed);
        };
        if i.ttl() == 0 {
            return FromHomeAgent::Drop(DataDrop::TtlExpired);
        }
        if bindings.get_by_home(i.dst_addr()).is_none() {
            return FromHomeAgent::Drop(DataDrop::NotBound);
        }
        FromHomeAgent::ToVpnGateway {
            packet: inner.get(..usize::from(i.total_len())).unwrap_or(inner),
        }
    }

    /// An ICMP error that arrived at `proxy_public` about a packet we tunnelled (RFC 2003 §4; spec §10 case 72).
    /// "Datagram Too Big" updates the tunnel's path MTU and is relayed to the original sender with the MTU reduced
    /// by the encapsulation overhead; host/net/protocol unreachable and time exceeded are relayed as Destination
    /// Unreachable; port unreachable and the rest are not relayed. `packet` is the whole IPv4 packet carrying the
    /// ICMP message; the relayed error is written to `out`.
    pub fn icmp_from_tunnel(&mut self, packet: &[u8], out: &mut [u8]) -> Downlink {
        let Ok(p) = Ipv4Packet::new_checked(packet) else {
            return Downlink::Drop(DataDrop::Malformed);
        };
        if p.protocol() != protocol::ICMP || p.dst_addr() != self.config.proxy_public {
            return Downlink::Drop(DataDrop::WrongProtocol);
        }
        let icmp_bytes = p.payload();
        let Ok(ip) = IcmpPacket::new_checked(icmp_bytes) else {
            return Downlink::Drop(DataDrop::Malformed);
        };
        if !ip.verify_checksum() {
            return Downlink::Drop(DataDrop::Malformed);
        }
        // The quoted packet is one of ours: outer header from proxy_public, then (UDP + Tunnel Data +) inner.
        let quoted = ip.data();
        let outer = Ipv4Packet::new_unchecked(quoted);
        if quoted.len() < ipv4::HEADER_LEN || outer.version() != 4 || outer.src_addr() != self.config.proxy_public {
            return Downlink::Drop(DataDrop::OuterAddress);
        }
        let hl = outer.header_len();
        let enc_len = match outer.protocol() {
            protocol::IPIP => 0,
            protocol::UDP => udp::HEADER_LEN + tunnel::HEADER_LEN,
            _ => return Downlink::Drop(DataDrop::WrongProtocol),
        };
        let Some(inner) = quoted.get(hl + enc_len..) else {
            return Downlink::Drop(DataDrop::IcmpNotRelayed);
        };
        if inner.len() < ipv4::HEADER_LEN || Ipv4Packet::new_unchecked(inner).version() != 4 {
            return Downlink::Drop(DataDrop::IcmpNotRelayed);
        }
        let sender = Ipv4Packet::new_unchecked(inner).src_addr();
        let kind = match (ip.msg_type(), ip.code()) {
            (icmp::types::DST_UNREACHABLE, icmp::unreachable::FRAG_NEEDED) => {
                let reported = ip.next_hop_mtu();
                let path = reported.max(576);
                let tunnel_dst = outer.dst_addr();
                self.pmtu.insert(tunnel_dst, path);
                IcmpKind::TooBig(path.saturating_sub((hl + enc_len) as u16))
            }
            (icmp::types::DST_UNREACHABLE, icmp::unreachable::HOST) => IcmpKind::Unreachable(icmp::unreachable::HOST),
            (icmp::types::DST_UNREACHABLE, icmp::unreachable::NET | icmp::unreachable::PROTOCOL) => {
                IcmpKind::Unreachable(icmp::unreachable::NET)
            }
            (icmp::types::TIME_EXCEEDED, _) => IcmpKind::Unreachable(icmp::unreachable::HOST),
            _ => return Downlink::Drop(DataDrop::IcmpNotRelayed),
        };
        let quote_len = inner.len().min(ICMP_QUOTE);
        let mut quote = [0u8; ICMP_QUOTE];
        let (Some(q), Some(src)) = (quote.get_mut(..quote_len), inner.get(..quote_len)) else {
            return Downlink::Drop(DataDrop::NoRoom);
        };
        q.copy_from_slice(src);
        match self.write_icmp(out, sender, kind, q) {
            Some(n) => Downlink::Icmp { len: n, dst: sender },
            None => Downlink::Drop(DataDrop::NoRoom),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum IcmpKind {
    TimeExceeded,
    TooBig(u16),
    Unreachable(u8),
}

#[cfg(test)]
mod tests;

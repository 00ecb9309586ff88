//! Packet building and metrics helpers shared by the `mip-ha` and `mip-mn` daemons: IP-in-IP (RFC 2003) and RFC
//! 3519 IPv4/UDP/Tunnel Data encapsulation written in place in front of an inner packet, RFC 3519 keepalive
//! echoes, and the counters every daemon exports.
//!
//! The proxy's data plane ([`mip::dataplane`]) encapsulates the same way, but its header writer is private and
//! bound to the proxy's bindings; the few lines it takes live here instead. Buffers are laid out with
//! [`HEADROOM`] free bytes in front of the inner packet, so encapsulation never moves the payload.

use core::net::Ipv4Addr;
use core::ops::Range;
use std::io;
use std::sync::Arc;

use mip::binding::Encapsulation;
use mip::dataplane::overhead;
use mip::wire::icmp::{IcmpPacket, IcmpRepr, types as icmp_types};
use mip::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, protocol};
use mip::wire::tunnel::{self, TunnelDataPacket, TunnelDataRepr};
use mip::wire::udp::{self, UdpRepr};
use mip_io::metrics::{Counter, DropCounters, Registry, ReplyCodes, TunnelTraffic};
use mip_io::socket::{IcmpErrorReport, UdpSocket};
use mip_io::tun::Tun;

/// Free bytes kept in front of an inner packet: room for the largest outer header stack (IPv4 + UDP + Tunnel
/// Data, 32 bytes).
pub const HEADROOM: usize = overhead(Encapsulation::UdpIpInIp);
/// Bytes of a work buffer: headroom plus the largest packet a TUN or socket hands over (MTU ≤ 2000).
pub const WORK_BUFFER: usize = HEADROOM + mip_io::batch::BUFFER_SIZE;
/// Payload of the RFC 3519 keepalive echo requests the mobile node sends.
pub const KEEPALIVE_DATA: &[u8] = b"mip-keepalive";

/// The outer IPv4 header of an encapsulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// Outer source (the tunnel entry point).
    pub src: Ipv4Addr,
    /// Outer destination (the tunnel exit point).
    pub dst: Ipv4Addr,
    /// Outer TTL.
    pub ttl: u8,
    /// TOS byte, copied from the inner header (RFC 2003 §3.1).
    pub tos: u8,
    /// Don't Fragment, copied from the inner header (RFC 2003 §3.1).
    pub df: bool,
    /// Identification.
    pub ident: u16,
}

/// What an inner IPv4 packet says about itself, once its header checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: u8,
    /// TTL.
    pub ttl: u8,
    /// TOS byte.
    pub tos: u8,
    /// Don't Fragment.
    pub df: bool,
    /// Total Length (the packet may sit in a longer buffer).
    pub len: usize,
}

/// Checks an IPv4 packet (version, lengths, header checksum); `None` when it is not a valid one.
pub fn inner(packet: &[u8]) -> Option<Inner> {
    let p = Ipv4Packet::new_checked(packet).ok()?;
    if !p.verify_checksum() {
        return None;
    }
    Some(Inner {
        src: p.src_addr(),
        dst: p.dst_addr(),
        protocol: p.protocol(),
        ttl: p.ttl(),
        tos: p.tos(),
        df: p.dont_frag(),
        len: usize::from(p.total_len()),
    })
}

/// The outer source and the payload of an IP-in-IP packet; `Err` names the drop reason (`malformed`,
/// `wrong_protocol`).
pub fn ipip_outer(packet: &[u8]) -> Result<(Ipv4Addr, &[u8]), &'static str> {
    let outer = Ipv4Packet::new_checked(packet).map_err(|_| "malformed")?;
    if outer.protocol() != protocol::IPIP {
        return Err("wrong_protocol");
    }
    Ok((outer.src_addr(), outer.into_payload()))
}

/// The inner IPv4 packet of an RFC 3519 Tunnel Data message, cut to its Total Length; `Err` names the drop
/// reason (`malformed`, `wrong_next_header`).
pub fn tunnel_data_inner(payload: &[u8]) -> Result<(Inner, &[u8]), &'static str> {
    let t = TunnelDataPacket::new_checked(payload).map_err(|_| "malformed")?;
    if t.next_header() != tunnel::NEXT_HEADER_IPV4 {
        return Err("wrong_next_header");
    }
    let inner = payload.get(tunnel::HEADER_LEN..).unwrap_or(&[]);
    let i = self::inner(inner).ok_or("malformed")?;
    Ok((i, inner.get(..i.len).unwrap_or(inner)))
}

/// Takes the ICMP errors the kernel queued on `udp` (into `scratch`, emptied first) and counts them in `counter`.
pub fn count_icmp_errors(udp: &UdpSocket, scratch: &mut Vec<IcmpErrorReport>, counter: &Counter) {
    scratch.clear();
    if let Ok(n) = udp.take_icmp_errors(scratch) {
        counter.add(n as u64);
    }
}

/// Reads one packet from `tun` into `buf[HEADROOM..]` and returns its length; `None` once the TUN is drained
/// (a failure other than `WouldBlock` is logged). An interrupted read is retried.
pub fn read_tun(tun: &Tun, buf: &mut [u8]) -> Option<usize> {
    loop {
        match tun.read(buf.get_mut(HEADROOM..).unwrap_or(&mut [])) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!(error = %e, "TUN read failed");
                }
                return None;
            }
        }
    }
}

/// Writes an IP-in-IP header in front of the `inner_len`-byte packet at `buf[HEADROOM..]`; returns where the
/// outer packet lies in `buf`.
pub fn encap_ipip(buf: &mut [u8], inner_len: usize, o: &Outer) -> Option<Range<usize>> {
    let start = HEADROOM - ipv4::HEADER_LEN;
    let end = HEADROOM.checked_add(inner_len)?;
    let ip = Ipv4Repr {
        src_addr: o.src,
        dst_addr: o.dst,
        protocol: protocol::IPIP,
        payload_len: inner_len,
        ttl: o.ttl,
        tos: o.tos,
        ident: o.ident,
        dont_frag: o.df,
    };
    ip.emit(buf.get_mut(start..end)?).ok()?;
    Some(start..end)
}

/// Writes the Tunnel Data header (type 4, Next Header 4: IPv4) in front of the packet at `buf[HEADROOM..]`;
/// returns where the UDP payload lies (for sending through a UDP socket).
pub fn tunnel_data_payload(buf: &mut [u8], inner_len: usize) -> Option<Range<usize>> {
    let start = HEADROOM - tunnel::HEADER_LEN;
    let end = HEADROOM.checked_add(inner_len)?;
    TunnelDataRepr {
        next_header: tunnel::NEXT_HEADER_IPV4,
    }
    .emit(buf.get_mut(start..HEADROOM)?)
    .ok()?;
    buf.get(..end)?;
    Some(start..end)
}

/// Writes IPv4 + UDP (`src_port` → `dst_port`, checksum filled) + Tunnel Data in front of the packet at
/// `buf[HEADROOM..]` (RFC 3519 §3.3, IP-in-UDP); returns where the outer packet lies.
pub fn encap_udp(buf: &mut [u8], inner_len: usize, o: &Outer, src_port: u16, dst_port: u16) -> Option<Range<usize>> {
    let td = tunnel_data_payload(buf, inner_len)?;
    let udp_start = td.start - udp::HEADER_LEN;
    let ip_start = udp_start - ipv4::HEADER_LEN;
    let udp_payload = td.len();
    UdpRepr { src_port, dst_port }
        .emit(buf.get_mut(udp_start..td.end)?, udp_payload, o.src, o.dst)
        .ok()?;
    let ip = Ipv4Repr {
        src_addr: o.src,
        dst_addr: o.dst,
        protocol: protocol::UDP,
        payload_len: udp::HEADER_LEN + udp_payload,
        ttl: o.ttl,
        tos: o.tos,
        ident: o.ident,
        dont_frag: o.df,
    };
    ip.emit(buf.get_mut(ip_start..td.end)?).ok()?;
    Some(ip_start..td.end)
}

/// Writes an ICMP echo request (`reply` false) or reply (true) from `src` to `dst` as a complete IPv4 packet at
/// `buf[HEADROOM..]`; returns its length.
pub fn write_echo(
    buf: &mut [u8],
    reply: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Option<usize> {
    let icmp = if reply {
        IcmpRepr::EchoReply { ident, seq, data }
    } else {
        IcmpRepr::EchoRequest { ident, seq, data }
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: protocol::ICMP,
        payload_len: icmp.buffer_len(),
        ttl: mip::dataplane::DEFAULT_OUTER_TTL,
        tos: 0,
        ident: seq,
        dont_frag: false,
    };
    let len = ip.buffer_len() + icmp.buffer_len();
    let out = buf.get_mut(HEADROOM..HEADROOM.checked_add(len)?)?;
    ip.emit(out).ok()?;
    icmp.emit(out.get_mut(ipv4::HEADER_LEN..)?).ok()?;
    Some(len)
}

/// The echo request or reply an IPv4 packet carries: `(is_reply, ident, seq, data)`; `None` for anything else
/// (or a bad ICMP checksum).
pub fn echo(packet: &[u8]) -> Option<(bool, u16, u16, &[u8])> {
    let p = Ipv4Packet::new_checked(packet).ok()?;
    if p.protocol() != protocol::ICMP || p.is_fragment() {
        return None;
    }
    let icmp = p.into_payload();
    let i = IcmpPacket::new_checked(icmp).ok()?;
    if !matches!(i.msg_type(), icmp_types::ECHO_REQUEST | icmp_types::ECHO_REPLY) {
        return None;
    }
    match IcmpRepr::parse(&i).ok()? {
        IcmpRepr::EchoRequest { ident, seq, data } => Some((false, ident, seq, data)),
        IcmpRepr::EchoReply { ident, seq, data } => Some((true, ident, seq, data)),
        _ => None,
    }
}

/// A seed for the roles' nonce generators, from the kernel's random source (time and PID if it is unreadable).
pub fn seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::from(t.subsec_nanos()) ^ t.as_secs().rotate_left(32) ^ u64::from(std::process::id())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Every label [`mip::roles::DropReason::as_str`] can return, for registering control-path drop counters at 0.
pub const CONTROL_DROP_REASONS: &[&str] = &[
    "truncated",
    "wrong_type",
    "extension_truncated",
    "extension_length",
    "unknown_non_skippable_extension",
    "bad_checksum",
    "bad_version",
    "bad_header_length",
    "bad_length",
    "bad_value",
    "buffer_too_small",
    "unexpected_message",
    "no_auth_extension",
    "no_security_association",
    "no_identity",
    "bad_authenticator",
    "unknown_fa_ha_spi",
    "bad_reply_authentication",
    "no_pending_request",
    "identification_mismatch",
    "unknown_home_agent",
    "pending_timeout",
    "pending_full",
    "binding_refused",
    "unexpected_keepalive",
    "stale_icmp_error",
    "rate_limited",
    "send_failed",
];

/// Counters every daemon keeps, with the label sets the project uses.
#[derive(Debug)]
pub struct CommonMetrics {
    registry: Arc<Registry>,
    /// `mip_registrations_total{role, code}`.
    codes: ReplyCodes,
    /// `mip_tunnel_packets_total` and `mip_tunnel_bytes_total{direction, encapsulation}`.
    traffic: TunnelTraffic,
    /// `mip_drops_total{path="control", reason}`.
    pub control_drops: DropCounters,
    /// `mip_icmp_errors_total`: ICMP errors the kernel reported about datagrams the registration socket sent.
    pub icmp_errors: Counter,
    /// `mip_bindings` (the HA: bindings held; the MN: 1 while registered).
    pub bindings: mip_io::metrics::Gauge,
}

/// Direction label of tunnel counters, as the proxy uses it: seen from the mobile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the mobile node toward its home network (`up`).
    Up = 0,
    /// Toward the mobile node (`down`).
    Down = 1,
}

/// Encapsulation label of tunnel counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    /// IP in IP.
    IpIp = 0,
    /// RFC 3519 UDP tunnel.
    Udp = 1,
}

impl Enc {
    /// The label of a binding's encapsulation.
    pub const fn of(e: Encapsulation) -> Enc {
        if e.is_udp() { Enc::Udp } else { Enc::IpIp }
    }
}

fn metric_err(e: impl std::fmt::Display) -> String {
    format!("metrics: {e}")
}

impl CommonMetrics {
    /// Registers the shared series for `role` (`ha`, `mn`).
    pub fn new(registry: &Arc<Registry>, role: &'static str) -> Result<CommonMetrics, String> {
        let r = registry.as_ref();
        const TRAFFIC: [&str; 2] = [
            "Packets carried through Mobile IP tunnels.",
            "Bytes of inner packets carried through Mobile IP tunnels.",
        ];
        let traffic = TunnelTraffic::new(r, TRAFFIC).map_err(metric_err)?;
        Ok(CommonMetrics {
            registry: Arc::clone(registry),
            codes: ReplyCodes::new(Arc::clone(registry), "Registration outcomes by reply code.", role, [])
                .map_err(metric_err)?,
            traffic,
            control_drops: Self::drops(registry, "control", CONTROL_DROP_REASONS)?,
            icmp_errors: r
                .counter(
                    "mip_icmp_errors_total",
                    "ICMP errors reported about datagrams the registration socket sent.",
                    &[],
                )
                .map_err(metric_err)?,
            bindings: r
                .gauge(
                    "mip_bindings",
                    "Mobility bindings held (mobile node: 1 while registered).",
                    &[],
                )
                .map_err(metric_err)?,
        })
    }

    /// `mip_drops_total{path, reason}` for one path, every reason registered at 0.
    pub fn drops(registry: &Registry, path: &'static str, reasons: &[&'static str]) -> Result<DropCounters, String> {
        registry
            .drop_counters_with(
                "mip_drops_total",
                "Packets and messages dropped, by path and reason.",
                &[("path", path)],
                "reason",
                reasons,
            )
            .map_err(metric_err)
    }

    /// A counter registered on the daemon's registry (for daemon-specific series).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Result<Counter, String> {
        self.registry.counter(name, help, labels).map_err(metric_err)
    }

    /// Counts one registration outcome: `mip_registrations_total{role, code}`.
    pub fn registration(&mut self, code: u8) {
        self.codes.inc(code);
    }

    /// Counts one tunnelled packet of `bytes` inner bytes.
    pub fn tunnel(&self, dir: Dir, enc: Enc, bytes: usize) {
        self.traffic.get(dir == Dir::Up, enc == Enc::Udp).count(bytes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);

    fn outer() -> Outer {
        Outer {
            src: A,
            dst: B,
            ttl: 64,
            tos: 0x10,
            df: true,
            ident: 7,
        }
    }

    #[test]
    fn ipip_and_udp_wrap_an_echo() {
        let mut buf = [0u8; WORK_BUFFER];
        let n = write_echo(&mut buf, false, HOA, B, 1, 2, KEEPALIVE_DATA).unwrap();
        let i = inner(&buf[HEADROOM..HEADROOM + n]).unwrap();
        assert_eq!((i.src, i.dst, i.protocol, i.len), (HOA, B, protocol::ICMP, n));
        assert_eq!(echo(&buf[HEADROOM..HEADROOM + n]), Some((false, 1, 2, KEEPALIVE_DATA)));

        let r = encap_ipip(&mut buf, n, &outer()).unwrap();
        let p = Ipv4Packet::new_checked(&buf[r.clone()]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.src_addr(), p.dst_addr(), p.protocol(), p.tos(), p.dont_frag()),
            (A, B, 4, 0x10, true)
        );
        assert_eq!(p.payload(), &buf[HEADROOM..HEADROOM + n]);

        let r = encap_udp(&mut buf, n, &outer(), 434, 40000).unwrap();
        assert_eq!(r.start, 0);
        let p = Ipv4Packet::new_checked(&buf[r.clone()]).unwrap();
        assert_eq!((p.protocol(), p.total_len() as usize), (protocol::UDP, HEADROOM + n));
        let u = udp::UdpPacket::new_checked(p.payload()).unwrap();
        assert!(u.verify_checksum(A, B));
        assert_eq!((u.src_port(), u.dst_port()), (434, 40000));
        assert_eq!(&u.payload()[..4], &[4, 4, 0, 0]);
        assert_eq!(echo(&u.payload()[4..]), Some((false, 1, 2, KEEPALIVE_DATA)));

        let td = tunnel_data_payload(&mut buf, n).unwrap();
        assert_eq!(td, HEADROOM - 4..HEADROOM + n);
        assert!(encap_ipip(&mut buf[..HEADROOM + 3], 4, &outer()).is_none(), "no room");
        assert_eq!(mac_string([2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }

    #[test]
    fn control_reasons_cover_every_drop_reason() {
        for r in mip::roles::DropReason::ALL {
            assert!(CONTROL_DROP_REASONS.contains(&r.as_str()), "{r}");
        }
    }

    #[test]
    fn metrics_render() {
        let reg = Arc::new(Registry::new());
        let mut m = CommonMetrics::new(&reg, "ha").unwrap();
        m.registration(0);
        m.registration(0);
        m.registration(133);
        m.tunnel(Dir::Up, Enc::Udp, 100);
        m.control_drops.inc("bad_authenticator");
        let text = reg.render();
        assert!(
            text.contains("mip_registrations_total{role=\"ha\",code=\"0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mip_registrations_total{role=\"ha\",code=\"133\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mip_tunnel_packets_total{direction=\"up\",encapsulation=\"udp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mip_tunnel_bytes_total{direction=\"up\",encapsulation=\"udp\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("mip_drops_total{path=\"control\",reason=\"bad_authenticator\"} 1"),
            "{text}"
        );
    }
}

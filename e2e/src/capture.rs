//! Packet captures in lab namespaces and the classifier behind "the Internet side carries only ESP inside
//! the MIP tunnel".
//!
//! [`Capture`] runs `tcpdump --immediate-mode -U -w` in a namespace (immediate mode: libpcap's TPACKET_V3
//! block timeout otherwise holds packets back, and a short capture loses its tail, FINDINGS pitfall 8).
//! [`classify_pcap`] reads the file (pcap or pcapng, any link type tcpdump writes, via `mip_agents::pcap`)
//! and counts every frame into one class: UDP/434 registrations (types 1 and 3), UDP/434 tunnel data (type 4)
//! by what it carries (ESP, IKE, NAT-T keepalive, other), bare ESP/IKE outside the tunnel, and everything
//! else. [`tshark_count`] is the independent cross-check with Wireshark's dissectors.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mip_agents::pcap::{PcapReader, ipv4_packet};

use crate::cmd::{self, Cmd, ProcessGuard};
use crate::error::{Error, Result};
use crate::topology::Lab;

/// The Mobile IP registration / tunnel port.
pub const MIP_PORT: u16 = 434;
/// IKE.
pub const IKE_PORT: u16 = 500;
/// IKE and ESP with NAT traversal (RFC 3948).
pub const NATT_PORT: u16 = 4500;

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    proc: ProcessGuard,
    pcap: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` in namespace `ns` (short name) writing `pcap`; returns once
    /// tcpdump is listening.
    pub fn start(lab: &Lab, ns: &str, iface: &str, filter: &str, pcap: &Path) -> Result<Capture> {
        cmd::require_tools(&[("tcpdump", "packet captures")])?;
        let file = pcap.display().to_string();
        // -Z root: Debian's tcpdump drops to user `tcpdump` before opening the file, which could not write
        // into the root-owned run directory.
        let mut argv = vec![
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-n",
            "-U",
            "-i",
            iface,
            "-w",
            &file,
        ];
        argv.extend(filter.split_whitespace());
        let log = pcap.with_extension("tcpdump.log");
        let mut proc = lab.spawn_cmd(&format!("tcpdump {iface}"), Cmd::in_ns(&lab.ns(ns), &argv), &log)?;
        proc.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture {
            proc,
            pcap: pcap.to_path_buf(),
        })
    }

    /// Stops tcpdump (SIGTERM makes it flush and close the file) and returns the pcap's path.
    pub fn stop(mut self) -> Result<PathBuf> {
        self.proc.stop();
        if self.pcap.is_file() {
            Ok(self.pcap.clone())
        } else {
            Err(Error::Command {
                ns: self.proc.ns().to_owned(),
                cmd: format!("tcpdump -w {}", self.pcap.display()),
                status: "no capture file".into(),
                stderr: self.proc.log_tail(1000),
            })
        }
    }
}

/// What one frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Class {
    /// UDP/434 Registration Request (type 1).
    MipRrq,
    /// UDP/434 Registration Reply (type 3).
    MipRrp,
    /// UDP/434 tunnel data (type 4) carrying ESP (ESP-in-UDP/4500 or IP proto 50).
    MipDataEsp,
    /// UDP/434 tunnel data carrying IKE (UDP 500, or 4500 with the non-ESP marker).
    MipDataIke,
    /// UDP/434 tunnel data carrying a NAT-T keepalive (one 0xFF byte on UDP 4500).
    MipDataKeepalive,
    /// UDP/434 tunnel data carrying an ICMP echo request/reply: the RFC 3519 §4.9 keepalive (its inner
    /// packet goes from the home address or the FA's care-of address to the tunnel peer, never to the intranet).
    MipKeepalive,
    /// UDP/434 tunnel data carrying anything else (plain traffic inside the tunnel).
    MipDataOther,
    /// IP-in-IP (RFC 2003, IP protocol 4: co-located routable care-of address, or FA care-of address) carrying
    /// ESP.
    IpipEsp,
    /// IP-in-IP carrying IKE (or a NAT-T keepalive).
    IpipIke,
    /// IP-in-IP carrying anything else (plain traffic inside the tunnel).
    IpipOther,
    /// Other UDP/434 messages (agent messages, unknown types).
    MipOther,
    /// ESP outside the MIP tunnel (ESP-in-UDP/4500 or IP proto 50).
    BareEsp,
    /// IKE outside the MIP tunnel.
    BareIke,
    /// NAT-T keepalive outside the tunnel.
    BareKeepalive,
    /// An ICMP error about a Mobile IP tunnel packet (it quotes an IP-in-IP or UDP/434 packet, whose inner
    /// part is what the tunnel carried): tunnel control traffic (RFC 2003 §4), no inner packet in clear.
    TunnelIcmpError,
    /// Link-local multicast (224.0.0.0/24: agent solicitations, IGMP), never forwarded beyond the first hop.
    LinkLocal,
    /// ICMP.
    Icmp,
    /// TCP.
    Tcp,
    /// Any other UDP.
    UdpOther,
    /// Any other IP protocol.
    OtherIp,
    /// A non-first IPv4 fragment (no transport header to classify by).
    Fragment,
    /// Not IPv4 (ARP, ...).
    NonIp,
}

impl Class {
    /// A Mobile IP message or tunnel packet (UDP/434 or IP-in-IP), whatever it carries.
    pub fn is_mip(self) -> bool {
        self.is_udp434() || matches!(self, Class::IpipEsp | Class::IpipIke | Class::IpipOther)
    }

    /// A UDP/434 frame (registration or RFC 3519 tunnel data).
    pub fn is_udp434(self) -> bool {
        matches!(
            self,
            Class::MipRrq
                | Class::MipRrp
                | Class::MipDataEsp
                | Class::MipDataIke
                | Class::MipDataKeepalive
                | Class::MipKeepalive
                | Class::MipDataOther
                | Class::MipOther
        )
    }
}

/// Counts per class.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    /// Every frame.
    pub frames: u64,
    /// [`Class::MipRrq`].
    pub mip_rrq: u64,
    /// [`Class::MipRrp`].
    pub mip_rrp: u64,
    /// [`Class::MipDataEsp`].
    pub mip_data_esp: u64,
    /// [`Class::MipDataIke`].
    pub mip_data_ike: u64,
    /// [`Class::MipDataKeepalive`].
    pub mip_data_keepalive: u64,
    /// [`Class::MipKeepalive`].
    pub mip_keepalive: u64,
    /// [`Class::MipDataOther`].
    pub mip_data_other: u64,
    /// [`Class::IpipEsp`].
    pub ipip_esp: u64,
    /// [`Class::IpipIke`].
    pub ipip_ike: u64,
    /// [`Class::IpipOther`].
    pub ipip_other: u64,
    /// [`Class::MipOther`].
    pub mip_other: u64,
    /// [`Class::BareEsp`].
    pub bare_esp: u64,
    /// [`Class::BareIke`].
    pub bare_ike: u64,
    /// [`Class::BareKeepalive`].
    pub bare_keepalive: u64,
    /// [`Class::TunnelIcmpError`].
    pub tunnel_icmp_error: u64,
    /// [`Class::LinkLocal`].
    pub link_local: u64,
    /// [`Class::Icmp`].
    pub icmp: u64,
    /// [`Class::Tcp`].
    pub tcp: u64,
    /// [`Class::UdpOther`].
    pub udp_other: u64,
    /// [`Class::OtherIp`].
    pub other_ip: u64,
    /// [`Class::Fragment`].
    pub fragment: u64,
    /// [`Class::NonIp`].
    pub non_ip: u64,
}

impl Classification {
    /// Counts one frame.
    pub fn add(&mut self, c: Class) {
        self.frames += 1;
        let slot = match c {
            Class::MipRrq => &mut self.mip_rrq,
            Class::MipRrp => &mut self.mip_rrp,
            Class::MipDataEsp => &mut self.mip_data_esp,
            Class::MipDataIke => &mut self.mip_data_ike,
            Class::MipDataKeepalive => &mut self.mip_data_keepalive,
            Class::MipKeepalive => &mut self.mip_keepalive,
            Class::MipDataOther => &mut self.mip_data_other,
            Class::IpipEsp => &mut self.ipip_esp,
            Class::IpipIke => &mut self.ipip_ike,
            Class::IpipOther => &mut self.ipip_other,
            Class::MipOther => &mut self.mip_other,
            Class::BareEsp => &mut self.bare_esp,
            Class::BareIke => &mut self.bare_ike,
            Class::BareKeepalive => &mut self.bare_keepalive,
            Class::TunnelIcmpError => &mut self.tunnel_icmp_error,
            Class::LinkLocal => &mut self.link_local,
            Class::Icmp => &mut self.icmp,
            Class::Tcp => &mut self.tcp,
            Class::UdpOther => &mut self.udp_other,
            Class::OtherIp => &mut self.other_ip,
            Class::Fragment => &mut self.fragment,
            Class::NonIp => &mut self.non_ip,
        };
        *slot += 1;
    }

    /// Frames on UDP/434 (registrations and tunnel data).
    pub fn mip(&self) -> u64 {
        self.mip_rrq
            + self.mip_rrp
            + self.mip_data_esp
            + self.mip_data_ike
            + self.mip_data_keepalive
            + self.mip_keepalive
            + self.mip_data_other
            + self.mip_other
    }

    /// Frames of a Mobile IP tunnel carrying ESP (UDP/434 tunnel data or IP-in-IP).
    pub fn tunnelled_esp(&self) -> u64 {
        self.mip_data_esp + self.ipip_esp
    }

    /// IP frames outside the MIP tunnel (bare IPsec and everything else); ARP does not count.
    pub fn outside_tunnel(&self) -> u64 {
        self.bare_esp
            + self.bare_ike
            + self.bare_keepalive
            + self.icmp
            + self.tcp
            + self.udp_other
            + self.other_ip
            + self.fragment
    }

    /// The Internet-side property: every IP frame is a Mobile IP message or tunnel (UDP/434 or IP-in-IP), and
    /// the tunnels carry only IPsec (ESP, IKE, NAT-T keepalives) and RFC 3519 keepalives besides registrations;
    /// at least one tunnelled ESP packet was seen.
    pub fn only_ipsec_in_mip_tunnel(&self) -> bool {
        self.outside_tunnel() == 0
            && self.mip_data_other == 0
            && self.ipip_other == 0
            && self.mip_other == 0
            && self.tunnelled_esp() > 0
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The IPsec class of an IPv4 packet (ESP-in-UDP, IKE, NAT-T keepalive, raw ESP), `None` for non-IPsec.
fn ipsec_kind(ip: &[u8]) -> Option<Class> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let proto = *ip.get(9)?;
    if proto == 50 {
        return Some(Class::BareEsp);
    }
    if proto != 17 {
        return None;
    }
    let sport = be16(ip, ihl)?;
    let dport = be16(ip, ihl + 2)?;
    let payload = ip.get(ihl + 8..)?;
    if sport == NATT_PORT || dport == NATT_PORT {
        if payload == [0xff] {
            return Some(Class::BareKeepalive);
        }
        // RFC 3948: IKE on 4500 starts with a 4-byte zero non-ESP marker; ESP starts with its non-zero SPI.
        if payload.get(..4) == Some(&[0, 0, 0, 0]) {
            return Some(Class::BareIke);
        }
        return Some(Class::BareEsp);
    }
    if sport == IKE_PORT || dport == IKE_PORT {
        return Some(Class::BareIke);
    }
    None
}

/// An ICMP echo request (8) or reply (0), the RFC 3519 keepalive's inner packet.
fn is_icmp_echo(ip: &[u8]) -> bool {
    let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    ip.get(9) == Some(&1) && matches!(ip.get(ihl), Some(0 | 8))
}

/// Classifies one IPv4 packet (a frame's network layer).
pub fn classify_ipv4(ip: &[u8]) -> Class {
    classify_inner(ip).unwrap_or(Class::OtherIp)
}

fn classify_inner(ip: &[u8]) -> Option<Class> {
    if ip.first()? >> 4 != 4 {
        return Some(Class::NonIp);
    }
    let frag_offset = be16(ip, 6)? & 0x1fff;
    if frag_offset != 0 {
        return Some(Class::Fragment);
    }
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(16..19)? == [224, 0, 0] {
        return Some(Class::LinkLocal);
    }
    match *ip.get(9)? {
        1 => {
            let icmp = ip.get(ihl..)?;
            let error = matches!(icmp.first(), Some(3 | 4 | 5 | 11 | 12));
            let quoted = icmp.get(8..).unwrap_or_default();
            let tunnel = match classify_inner(quoted) {
                Some(c) => c.is_mip(),
                // A quote too short to classify, but of an IP-in-IP packet.
                None => quoted.get(9) == Some(&4),
            };
            return Some(if error && tunnel {
                Class::TunnelIcmpError
            } else {
                Class::Icmp
            });
        }
        4 => {
            let inner = ip.get(ihl..)?;
            return Some(match ipsec_kind(inner) {
                Some(Class::BareEsp) => Class::IpipEsp,
                Some(Class::BareIke | Class::BareKeepalive) => Class::IpipIke,
                _ => Class::IpipOther,
            });
        }
        6 => return Some(Class::Tcp),
        17 => {}
        _ => return Some(ipsec_kind(ip).unwrap_or(Class::OtherIp)),
    }
    let sport = be16(ip, ihl)?;
    let dport = be16(ip, ihl + 2)?;
    if sport != MIP_PORT && dport != MIP_PORT {
        return Some(ipsec_kind(ip).unwrap_or(Class::UdpOther));
    }
    let payload = ip.get(ihl + 8..)?;
    Some(match payload.first() {
        Some(1) => Class::MipRrq,
        Some(3) => Class::MipRrp,
        // RFC 3519 tunnel data: type 4, next header 4 (IPv4), reserved; then the inner packet.
        Some(4) => match payload.get(4..) {
            Some(inner) if inner.first().is_some_and(|b| b >> 4 == 4) => match ipsec_kind(inner) {
                Some(Class::BareEsp) => Class::MipDataEsp,
                Some(Class::BareIke) => Class::MipDataIke,
                Some(Class::BareKeepalive) => Class::MipDataKeepalive,
                _ if is_icmp_echo(inner) => Class::MipKeepalive,
                _ => Class::MipDataOther,
            },
            _ => Class::MipDataOther,
        },
        _ => Class::MipOther,
    })
}

/// Reads a pcap/pcapng file and counts every frame by [`Class`].
pub fn classify_pcap(path: &Path) -> Result<Classification> {
    let perr = |e: mip_agents::pcap::PcapError| Error::parse(format!("capture {}", path.display()), e.to_string());
    let mut r = PcapReader::open(path).map_err(perr)?;
    let mut c = Classification::default();
    while let Some(f) = r.next_frame().map_err(perr)? {
        c.add(match ipv4_packet(f.linktype, &f.data) {
            Some(ip) => classify_ipv4(ip),
            None => Class::NonIp,
        });
    }
    Ok(c)
}

/// Outer `(source, destination)` addresses of every UDP/434 frame, for flow checks (e.g. that the MN's
/// traffic came from the expected NAT).
pub fn mip_flows(path: &Path) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let perr = |e: mip_agents::pcap::PcapError| Error::parse(format!("capture {}", path.display()), e.to_string());
    let mut r = PcapReader::open(path).map_err(perr)?;
    let mut v = Vec::new();
    while let Some(f) = r.next_frame().map_err(perr)? {
        let Some(ip) = ipv4_packet(f.linktype, &f.data) else {
            continue;
        };
        if classify_ipv4(ip).is_udp434() {
            let addr =
                |r: std::ops::Range<usize>| ip.get(r).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(Ipv4Addr::from);
            if let (Some(s), Some(d)) = (addr(12..16), addr(16..20)) {
                v.push((s, d));
            }
        }
    }
    Ok(v)
}

/// Counts the frames of `pcap` that match the Wireshark display filter `filter`, with UDP/434 decoded as
/// Mobile IP (`-d udp.port==434,mip`). An independent check of [`classify_pcap`].
pub fn tshark_count(pcap: &Path, filter: &str) -> Result<u64> {
    cmd::require_tools(&[("tshark", "cross-checking captures with Wireshark's dissectors")])?;
    let file = pcap.display().to_string();
    let out = Cmd::new([
        "tshark",
        "-r",
        &file,
        "-d",
        "udp.port==434,mip",
        "-Y",
        filter,
        "-T",
        "fields",
        "-e",
        "frame.number",
    ])
    .stdout()?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

//! `e2e bench throughput`: what the proxy costs in throughput (issue 4, item 5).
//!
//! Two measurements, each made `runs` times with the baseline and the product interleaved in the same run
//! (the order alternates from run to run), reported as medians with their ratio:
//!
//! * **TCP MN → CN** (bulk, sha256 of the stream compared on both ends): the VPN alone (strongSwan road
//!   warrior in ns `mn` straight to the gateway, as [`crate::bench::StrongswanOnly`]) in one lab, and the VPN
//!   through the Mobile IP tunnel ([`System`]: mip-mn, mip-proxy, mip-ha; IKE and ESP from the home address) in
//!   a second lab. Both MNs sit behind NAT 1 (access C1). Goal of the issue: the proxy costs at most 10 %.
//! * **Raw forwarding**, packets/s, of 64 B and 1400 B inner packets (UDP HoA:4500 → VPNGW:4500, what the
//!   proxy lets out of a tunnel) in a small testbed of its own ([`FwdBed`], namespaces `mtp<pid>n<k>-*`): a
//!   sender blasts pre-built encapsulated packets (IP-in-IP, or RFC 3519 UDP to port 434 with the tunnel
//!   header `04 04 00 00`) through a raw socket to a running `mip-proxy` (with a real binding,
//!   registered through it with mip-ha), which decapsulates them toward the VPN gateway's address in a
//!   receiver namespace; the baseline sends the same inner packets, unencapsulated, through a plain router
//!   namespace (kernel forwarding) to the same receiver. The rate is what arrives at the receiver (its
//!   `Ip InReceives`), over a window after a warm-up; the sender's offered rate is reported beside it.
//!
//! ```text
//!   snd ──px── prx (mip-proxy) ──── rcv        snd: 192.0.2.10 (CoA) / 192.0.5.10
//!    │          │ lan                │         prx: 192.0.2.1, 198.51.100.10 (proxy_public), 10.10.0.10
//!    └──rt── rtr (kernel) ──────────┘          rcv: 198.51.100.20 (VPN gateway), 198.51.102.2
//!               ha (mip-ha, 10.10.0.1, home 10.10.1.1)
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, connect, send, socket};
use sha2::{Digest, Sha256};

use crate::cmd::{self, Cmd, ProcessGuard, poll_until};
use crate::error::{Error, IoContext, Result};
use crate::netns;
use crate::plan;
use crate::strongswan::{Charon, CharonSpec};
use crate::system::{self, System, SystemOptions};
use crate::topology::{Lab, LabOptions, Mode};

/// Inner packet sizes measured (bytes of the inner IPv4 packet).
pub const INNER_SIZES: [usize; 2] = [64, 1400];
/// UDP port of IKE NAT-T, the inner packets' ports (the proxy lets UDP 500/4500 to a VPN gateway out).
pub const NATT_PORT: u16 = 4500;
/// RFC 3519 Tunnel Data header: type 4, next header 4 (IPv4), reserved 0.
pub const TUNNEL_HEADER: [u8; 4] = [4, 4, 0, 0];
/// TCP port of the bulk-transfer sink on the CN.
pub const TCP_PORT: u16 = 5201;
/// Packets sent between two looks at the stop flag.
const SEND_BATCH: usize = 64;
/// IPv4 protocol numbers.
const PROTO_IPIP: u8 = 4;
const PROTO_UDP: u8 = 17;

/// Which tunnel carries the forwarded packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    /// IP-in-IP (RFC 2003), IP protocol 4.
    Ipip,
    /// RFC 3519 IP-in-UDP to port 434.
    Udp,
}

impl TunnelKind {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Udp => "udp",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Only {
    /// TCP and forwarding.
    #[default]
    All,
    /// TCP through the VPN only.
    Tcp,
    /// Raw forwarding only.
    Forwarding,
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    /// Length of each measurement window (TCP transfer, forwarding window).
    pub seconds: f64,
    /// Interleaved runs; medians over them are reported.
    pub runs: u32,
    /// Forwarding: traffic before the window opens (ARP, socket buffers filling).
    pub warmup: Duration,
    /// What to measure.
    pub only: Only,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        ThroughputOptions {
            seconds: 5.0,
            runs: 5,
            warmup: Duration::from_millis(300),
            only: Only::All,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ThroughputOptions {
    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.clamp(0.05, 3600.0))
    }
}

/// The TCP result: medians over the runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TcpResult {
    /// VPN alone, Mbit/s (median).
    pub vpn_alone_mbps: f64,
    /// VPN through the proxy's Mobile IP tunnel, Mbit/s (median).
    pub proxy_vpn_mbps: f64,
    /// `proxy_vpn_mbps / vpn_alone_mbps`.
    pub ratio: f64,
    /// `(1 - ratio) * 100`: what the proxy costs, percent (the issue's limit is 10).
    pub cost_percent: f64,
    /// Runs (pairs of transfers).
    pub runs: u32,
    /// Seconds per transfer.
    pub seconds: f64,
    /// Every run's VPN-alone figure, Mbit/s.
    pub vpn_alone_mbps_all: Vec<f64>,
    /// Every run's proxy+VPN figure, Mbit/s.
    pub proxy_vpn_mbps_all: Vec<f64>,
}

/// One forwarding case: medians over the runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ForwardingResult {
    /// Tunnel of the proxy case.
    pub tunnel: TunnelKind,
    /// Inner packet size, bytes.
    pub inner_bytes: usize,
    /// Inner packets/s arriving at the VPN gateway through mip-proxy (median).
    pub proxy_pps: f64,
    /// The same inner packets through a kernel router namespace (median).
    pub kernel_pps: f64,
    /// `proxy_pps / kernel_pps`.
    pub ratio: f64,
    /// Packets/s the sender offered to the proxy (median).
    pub proxy_offered_pps: f64,
    /// Packets/s the sender offered to the router (median).
    pub kernel_offered_pps: f64,
    /// Runs.
    pub runs: u32,
    /// Every run's proxy figure.
    pub proxy_pps_all: Vec<f64>,
    /// Every run's kernel figure.
    pub kernel_pps_all: Vec<f64>,
}

/// The whole benchmark's result.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ThroughputReport {
    /// TCP through the VPN (`null` with `--only forwarding`).
    pub tcp: Option<TcpResult>,
    /// Forwarding cases (empty with `--only tcp`).
    pub forwarding: Vec<ForwardingResult>,
}

impl ThroughputReport {
    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.tcp {
            let _ = writeln!(
                s,
                "TCP MN->CN ({} runs x {:.1} s): VPN alone {:.1} Mbit/s, proxy+VPN {:.1} Mbit/s, ratio {:.3} \
                 (cost {:.1} %)",
                t.runs, t.seconds, t.vpn_alone_mbps, t.proxy_vpn_mbps, t.ratio, t.cost_percent
            );
        }
        if !self.forwarding.is_empty() {
            let _ = writeln!(
                s,
                "{:<6} {:>6} {:>12} {:>12} {:>7} {:>14} {:>14} {:>5}",
                "tunnel", "inner", "proxy_pps", "kernel_pps", "ratio", "proxy_offered", "kernel_offered", "runs"
            );
        }
        for f in &self.forwarding {
            let _ = writeln!(
                s,
                "{:<6} {:>6} {:>12.0} {:>12.0} {:>7.3} {:>14.0} {:>14.0} {:>5}",
                f.tunnel.name(),
                f.inner_bytes,
                f.proxy_pps,
                f.kernel_pps,
                f.ratio,
                f.proxy_offered_pps,
                f.kernel_offered_pps,
                f.runs
            );
        }
        s
    }
}

/// Median of `v` (mean of the two middle values for an even count; 0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => s.get(n / 2).copied().unwrap_or(0.0),
        _ => (s.get(n / 2 - 1).copied().unwrap_or(0.0) + s.get(n / 2).copied().unwrap_or(0.0)) / 2.0,
    }
}

/// `a / b`, 0 when `b` is 0, rounded to 3 decimals.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { round_to(a / b, 1000.0) } else { 0.0 }
}

fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

// === packets ===

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        if let [a, b] = c {
            sum += u32::from(u16::from_be_bytes([*a, *b]));
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes an IPv4 header (20 bytes, DF, TTL 64, checksum filled in) for a packet of `total_len` bytes.
fn ipv4_header(total_len: usize, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let len = u16::try_from(total_len).unwrap_or(u16::MAX).to_be_bytes();
    let mut h = vec![0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, protocol, 0, 0];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h).to_be_bytes();
    if let Some(slot) = h.get_mut(10..12) {
        slot.copy_from_slice(&c);
    }
    h
}

/// A UDP header (checksum 0: none, allowed over IPv4) for `payload_len` bytes of payload.
fn udp_header(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let len = u16::try_from(8 + payload_len).unwrap_or(u16::MAX);
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

/// The inner packet: IPv4 + UDP `src:4500 → dst:4500` (what kernel-libipsec's NAT-T looks like to the proxy),
/// `size` bytes in all (at least 28), payload a counting pattern.
pub fn inner_packet(size: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let size = size.max(28);
    let payload_len = size - 28;
    let mut p = ipv4_header(size, PROTO_UDP, src, dst);
    p.extend(udp_header(NATT_PORT, NATT_PORT, payload_len));
    p.extend((0..payload_len).map(|i| (i % 251) as u8));
    p
}

/// `inner` in IP-in-IP (RFC 2003): outer IPv4 header with protocol 4.
pub fn ipip_packet(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header(20 + inner.len(), PROTO_IPIP, outer_src, outer_dst);
    p.extend_from_slice(inner);
    p
}

/// `inner` in an RFC 3519 UDP tunnel: outer IPv4 + UDP `src:sport → dst:434`, Tunnel Data header
/// [`TUNNEL_HEADER`], then the inner packet.
pub fn udp_tunnel_packet(outer_src: Ipv4Addr, sport: u16, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let payload_len = TUNNEL_HEADER.len() + inner.len();
    let mut p = ipv4_header(28 + payload_len, PROTO_UDP, outer_src, outer_dst);
    p.extend(udp_header(sport, 434, payload_len));
    p.extend_from_slice(&TUNNEL_HEADER);
    p.extend_from_slice(inner);
    p
}

// === kernel counters ===

/// A counter from `/proc/net/snmp` (`Ip`, `InReceives`): header line and value line share the prefix.
pub fn snmp_value(text: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// (rx packets, tx packets) of `iface` from `/proc/net/dev`.
pub fn dev_packets(text: &str, iface: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == iface)?
        .1;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    Some((*v.get(1)?, *v.get(9)?))
}

/// Reads `/proc/net/<file>` as seen from namespace `ns` (full name).
fn proc_net(ns: &str, file: &'static str) -> Result<String> {
    netns::run_in(ns, move || {
        let p = format!("/proc/thread-self/net/{file}");
        fs::read_to_string(&p).ctx(|| format!("reading {p}"))
    })
}

// === the forwarding testbed ===

static BED_SEQ: AtomicU32 = AtomicU32::new(0);
const BED_RUN_ROOT: &str = "/tmp/mtp-run";
const BED_NS_PREFIX: &str = "mtp";
/// The sender's care-of address (toward the proxy) and its address toward the router.
const SND_COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SND_RT: Ipv4Addr = Ipv4Addr::new(192, 0, 5, 10);

/// Namespaces of the forwarding testbed.
const BED_NAMESPACES: [&str; 5] = ["snd", "prx", "rtr", "rcv", "ha"];

/// The forwarding testbed: namespaces `mtp<pid>n<k>-{snd,prx,rtr,rcv,ha}`, mip-ha and mip-proxy running, a
/// sink socket in `rcv`. Dropping it stops the daemons and deletes the namespaces and the run directory.
#[derive(Debug)]
pub struct FwdBed {
    prefix: String,
    dir: PathBuf,
    proxy: Option<ProcessGuard>,
    ha: Option<ProcessGuard>,
    /// Bound to VPNGW:4500 in `rcv` and never read: arriving packets are dropped at its buffer, silently (no
    /// ICMP port unreachable flowing back).
    _sink: Option<UdpSocket>,
    mn_config: PathBuf,
    keep: bool,
}

/// One window of forwarded traffic.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct FwdSample {
    /// Inner packets/s arriving at the receiver.
    pub received_pps: f64,
    /// Packets/s the sender put on its link.
    pub offered_pps: f64,
}

/// The binding registered for a tunnel kind: what the sender's packets must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// Tunnel granted.
    pub tunnel: TunnelKind,
    /// The node's UDP port (the tunnel's source port for UDP tunnels).
    pub port: u16,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner PID encoded in a testbed namespace name (`mtp<pid>n<k>-...`).
fn bed_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(BED_NS_PREFIX)?;
    let (pid, _) = rest.split_once('n')?;
    pid.parse().ok()
}

/// Deletes testbed namespaces (and kills the processes inside them) whose owning process is gone (a bench
/// that was killed without unwinding).
pub fn reap_stale_beds() {
    for ns in crate::topology::list_namespaces(BED_NS_PREFIX) {
        let Some(owner) = bed_owner(&ns) else { continue };
        if pid_alive(owner) {
            continue;
        }
        if let Ok(out) = cmd::try_run(None, &["ip", "netns", "pids", &ns]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = cmd::try_run(None, &["kill", "-KILL", pid]);
            }
        }
        let _ = cmd::try_run(None, &["ip", "netns", "del", &ns]);
        let _ = fs::remove_dir_all(Path::new(BED_RUN_ROOT).join(ns.split('-').next().unwrap_or_default()));
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).ctx(|| format!("chmod {}", path.display()))
}

impl FwdBed {
    /// The full name of testbed namespace `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Builds the namespaces and links, starts mip-ha and mip-proxy (binaries found by [`system::find_bin`]).
    pub fn up() -> Result<FwdBed> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Usage(
                "the throughput benchmark needs root (namespaces, raw sockets)".into(),
            ));
        }
        reap_stale_beds();
        let prefix = format!(
            "{BED_NS_PREFIX}{}n{}-",
            std::process::id(),
            BED_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = Path::new(BED_RUN_ROOT).join(prefix.trim_end_matches('-'));
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut bed = FwdBed {
            prefix,
            dir,
            proxy: None,
            ha: None,
            _sink: None,
            mn_config: PathBuf::new(),
            keep: std::env::var_os("MLAB_KEEP").is_some(),
        };
        // From here on an error drops `bed`, which removes whatever exists.
        bed.build()?;
        bed.write_configs()?;
        bed.ha = Some(bed.start_daemon("ha", "mip-ha", "ha")?);
        bed.proxy = Some(bed.start_daemon("prx", "mip-proxy", "proxy")?);
        let rcv = bed.ns("rcv");
        bed._sink = Some(netns::run_in(&rcv, || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, NATT_PORT)).ctx(|| "binding the sink".into())?;
            Ok(s)
        })?);
        Ok(bed)
    }

    fn build(&self) -> Result<()> {
        let adds: Vec<String> = BED_NAMESPACES
            .iter()
            .map(|n| format!("netns add {}", self.ns(n)))
            .collect();
        cmd::ip_batch(None, &adds)?;
        for n in BED_NAMESPACES {
            let fwd = format!("net.ipv4.ip_forward={}", u8::from(matches!(n, "prx" | "rtr" | "ha")));
            Cmd::in_ns(
                &self.ns(n),
                [
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                    &fwd,
                ],
            )
            .run()?;
        }
        // (creator, its interface, peer namespace, peer interface); explicit, distinct interface indexes (lab
        // pitfall 3: veth ends with equal indexes come up late).
        let links = [
            ("snd", "px", "prx", "snd"),
            ("snd", "rt", "rtr", "snd"),
            ("prx", "rcv", "rcv", "prx"),
            ("rtr", "rcv", "rcv", "rtr"),
            ("prx", "lan", "ha", "lan"),
            ("ha", "home", "ha", "home-p"),
        ];
        for (i, (a, a_if, b, b_if)) in links.iter().enumerate() {
            let (ia, ib) = (300 + 2 * i, 301 + 2 * i);
            let netns = if a == b {
                String::new()
            } else {
                format!(" netns {}", self.ns(b))
            };
            cmd::ip_batch(
                Some(&self.ns(a)),
                &[format!(
                    "link add {a_if} index {ia} type veth peer name {b_if} index {ib}{netns}"
                )],
            )?;
        }
        let l = |s: &str| s.to_owned();
        let config: [(&str, Vec<String>); 5] = [
            (
                "snd",
                vec![
                    l("link set lo up"),
                    format!("addr add {SND_COA}/24 dev px"),
                    format!("addr add {SND_RT}/24 dev rt"),
                    l("link set px up"),
                    l("link set rt up"),
                    // Tunnelled packets go to the proxy, plain ones to the router.
                    format!("route add {}/32 via 192.0.2.1", plan::PROXY_PUBLIC),
                    format!("route add {}/32 via 192.0.5.1", plan::VPNGW_PUBLIC),
                ],
            ),
            (
                "prx",
                vec![
                    l("link set lo up"),
                    l("addr add 192.0.2.1/24 dev snd"),
                    format!("addr add {}/24 dev rcv", plan::PROXY_PUBLIC),
                    format!("addr add {}/24 dev lan", plan::PROXY_PRIVATE),
                    l("link set snd up"),
                    l("link set rcv up"),
                    l("link set lan up"),
                    format!("route add {}/32 via {} dev lan", plan::HA_HOME, plan::HA_LAN),
                ],
            ),
            (
                "rtr",
                vec![
                    l("link set lo up"),
                    l("addr add 192.0.5.1/24 dev snd"),
                    l("addr add 198.51.102.1/24 dev rcv"),
                    l("link set snd up"),
                    l("link set rcv up"),
                    format!("route add {}/32 via 198.51.102.2", plan::VPNGW_PUBLIC),
                ],
            ),
            (
                "rcv",
                vec![
                    l("link set lo up"),
                    format!("addr add {}/24 dev prx", plan::VPNGW_PUBLIC),
                    l("addr add 198.51.102.2/24 dev rtr"),
                    l("link set prx up"),
                    l("link set rtr up"),
                ],
            ),
            (
                "ha",
                vec![
                    l("link set lo up"),
                    format!("addr add {}/24 dev lan", plan::HA_LAN),
                    format!("addr add {}/24 dev home", plan::HA_HOME),
                    l("link set lan up"),
                    l("link set home up"),
                    l("link set home-p up"),
                ],
            ),
        ];
        for (n, lines) in &config {
            cmd::ip_batch(Some(&self.ns(n)), lines)?;
        }
        Ok(())
    }

    fn write_configs(&mut self) -> Result<()> {
        let dir = &self.dir;
        let sa = format!(
            "security_associations:\n  - home_address: {}\n    spi: {}\n    key: {}\n",
            plan::HOA,
            system::MN_HA_SPI,
            system::MN_HA_KEY
        );
        let keys = dir.join("keys.yaml");
        write_private(&keys, &sa)?;
        let daemon = format!(
            "daemon:\n  keys_file: {}\n  admin: {}\n  log_format: text\n",
            keys.display(),
            system::ADMIN
        );
        let proxy = format!(
            "proxy:
  proxy_public: {public}
  proxy_private: {private}
  home_agents:
    - address: {ha}
      home_networks: [{home}]
  nat:
    # The sender asks for UDP tunnelling without a NAT (F flag) to measure the UDP tunnel.
    allow_forced: true
    keepalive: 10
    max_lifetime: 600
dataplane:
  mode: two_box
  vpn_gateways: [{gw}]
  vpn_gateway_private: {gw_private}
  tun: mipp0
  ha_tun: mipp1
  tun_mtu: 1468
{daemon}",
            public = plan::PROXY_PUBLIC,
            private = plan::PROXY_PRIVATE,
            ha = plan::HA_HOME,
            home = plan::HOME_NET,
            gw = plan::VPNGW_PUBLIC,
            gw_private = plan::VPNGW_PRIVATE,
        );
        fs::write(dir.join("proxy.yaml"), proxy).ctx(|| "writing proxy.yaml".into())?;
        let ha = format!(
            "ha:\n  address: {}\n  home_networks: [{}]\ndataplane:\n  tun: miph0\n  tun_mtu: 1468\n{daemon}",
            plan::HA_HOME,
            plan::HOME_NET
        );
        fs::write(dir.join("ha.yaml"), ha).ctx(|| "writing ha.yaml".into())?;
        // The node's file, read by `mipctl register`'s library (nothing runs mip-mn here).
        let mn = format!(
            "mn:
  home_address: {hoa}
  home_agent: {public}
  actual_home_agent: {ha}
  spi: {spi}
  lifetime: 600
dataplane:
  tun: mip0
  tunnelled: [{gw}/32]
{daemon}",
            hoa = plan::HOA,
            public = plan::PROXY_PUBLIC,
            ha = plan::HA_HOME,
            spi = system::MN_HA_SPI,
            gw = plan::VPNGW_PUBLIC,
        );
        self.mn_config = dir.join("mn.yaml");
        fs::write(&self.mn_config, mn).ctx(|| "writing mn.yaml".into())?;
        Ok(())
    }

    fn start_daemon(&self, ns: &str, bin: &str, name: &str) -> Result<ProcessGuard> {
        let exe = system::find_bin(bin)?.display().to_string();
        let config = self.dir.join(format!("{name}.yaml")).display().to_string();
        let log = self.dir.join(format!("{name}.log"));
        let full = self.ns(ns);
        let mut guard = ProcessGuard::spawn(bin, &Cmd::in_ns(&full, [exe.as_str(), "--config", &config]), &log, None)?;
        poll_until(
            &format!("{bin} in {full} to answer /readyz"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                if !guard.is_running() {
                    return Err(Error::Usage(format!(
                        "{bin} in {full} exited during start-up: {}",
                        guard.log_tail(3000)
                    )));
                }
                Ok(matches!(system::admin_request(&full, "/readyz"), Ok((200, _))).then_some(()))
            },
        )?;
        Ok(guard)
    }

    /// Registers the home address from the sender's care-of address through mip-proxy (and mip-ha), asking
    /// for a UDP tunnel (F flag) or not (IP-in-IP); checks that the tunnel granted is the one asked for.
    pub fn register(&self, tunnel: TunnelKind) -> Result<Registered> {
        use mip_agents::register::{RegisterOptions, RegisterResult, load_node, register};
        let config = self.mn_config.clone();
        let v = netns::run_in(&self.ns("snd"), move || {
            let (mut cfg, keys) = load_node(&config, None).map_err(Error::Usage)?;
            cfg.udp_tunnelling.enabled = true;
            cfg.udp_tunnelling.force = tunnel == TunnelKind::Udp;
            let opts = RegisterOptions {
                config: cfg,
                care_of: Some(SND_COA),
                lifetime: Some(600),
                timeout: Duration::from_secs(5),
                deregister: false,
            };
            match register(&opts, keys).map_err(Error::Usage)? {
                RegisterResult::Accepted(v) => Ok(v),
                RegisterResult::Denied(v) => Err(Error::Usage(format!("registration denied: {v}"))),
                RegisterResult::Timeout => Err(Error::Usage("registration: no reply from mip-proxy".into())),
            }
        })?;
        let field = |k: &str| v.pointer(&format!("/tunnel/{k}")).cloned().unwrap_or_default();
        if field("type").as_str() != Some(tunnel.name()) {
            return Err(Error::Usage(format!("asked for a {} tunnel, got {v}", tunnel.name())));
        }
        let port = field("local_port")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        Ok(Registered { tunnel, port })
    }

    /// Sends `packet` (a complete IPv4 packet) to `dst` from ns `snd` as fast as possible for `warmup` +
    /// `window`; returns the rates seen over `window` on the receiver (`Ip InReceives` in `rcv`) and on the
    /// sender's link `link` (tx packets).
    pub fn blast(
        &self,
        packet: Vec<u8>,
        dst: Ipv4Addr,
        link: &'static str,
        warmup: Duration,
        window: Duration,
    ) -> Result<FwdSample> {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = spawn_sender(&self.ns("snd"), packet, dst, Arc::clone(&stop))?;
        let result = self.sample(link, warmup, window);
        stop.store(true, Ordering::SeqCst);
        let sent = sender
            .join()
            .map_err(|_| Error::Usage("sender thread panicked".into()))?;
        let sample = result?;
        sent?;
        Ok(sample)
    }

    fn counters(&self, link: &str) -> Result<(u64, u64, Instant)> {
        let snmp = proc_net(&self.ns("rcv"), "snmp")?;
        let t = Instant::now();
        let dev = proc_net(&self.ns("snd"), "dev")?;
        let rx =
            snmp_value(&snmp, "Ip", "InReceives").ok_or_else(|| Error::parse("/proc/net/snmp", "no Ip InReceives"))?;
        let (_, tx) = dev_packets(&dev, link).ok_or_else(|| Error::parse("/proc/net/dev", format!("no {link}")))?;
        Ok((rx, tx, t))
    }

    fn sample(&self, link: &str, warmup: Duration, window: Duration) -> Result<FwdSample> {
        thread::sleep(warmup);
        let (rx0, tx0, t0) = self.counters(link)?;
        thread::sleep(window);
        let (rx1, tx1, t1) = self.counters(link)?;
        let secs = t1.saturating_duration_since(t0).as_secs_f64().max(1e-6);
        Ok(FwdSample {
            received_pps: round_to(rx1.saturating_sub(rx0) as f64 / secs, 1.0),
            offered_pps: round_to(tx1.saturating_sub(tx0) as f64 / secs, 1.0),
        })
    }

    /// One proxy window: `size`-byte inner packets in `reg`'s tunnel.
    pub fn proxy_sample(&self, reg: Registered, size: usize, warmup: Duration, window: Duration) -> Result<FwdSample> {
        let inner = inner_packet(size, plan::HOA, plan::VPNGW_PUBLIC);
        let packet = match reg.tunnel {
            TunnelKind::Ipip => ipip_packet(SND_COA, plan::PROXY_PUBLIC, &inner),
            TunnelKind::Udp => udp_tunnel_packet(SND_COA, reg.port, plan::PROXY_PUBLIC, &inner),
        };
        let s = self.blast(packet, plan::PROXY_PUBLIC, "px", warmup, window)?;
        if s.received_pps == 0.0 {
            let metrics = system::admin_get(&self.ns("prx"), "/metrics").unwrap_or_default();
            let drops: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("mip_") && l.contains("drop") && !l.ends_with(" 0"))
                .collect();
            return Err(Error::Usage(format!(
                "nothing came out of mip-proxy ({} tunnel, {size} B); its non-zero drop counters: {}",
                reg.tunnel.name(),
                drops.join("; ")
            )));
        }
        Ok(s)
    }

    /// One kernel-forwarding window: the same inner packets, unencapsulated, through ns `rtr`.
    pub fn kernel_sample(&self, size: usize, warmup: Duration, window: Duration) -> Result<FwdSample> {
        let inner = inner_packet(size, plan::HOA, plan::VPNGW_PUBLIC);
        self.blast(inner, plan::VPNGW_PUBLIC, "rt", warmup, window)
    }
}

impl Drop for FwdBed {
    fn drop(&mut self) {
        self._sink = None;
        for g in [self.proxy.take(), self.ha.take()].into_iter().flatten() {
            let mut g = g;
            g.stop();
        }
        let dels: Vec<String> = BED_NAMESPACES
            .iter()
            .map(|n| format!("netns del {}", self.ns(n)))
            .collect();
        let mut text = dels.join("\n");
        text.push('\n');
        if let Err(e) = Cmd::new(["ip", "-force", "-batch", "-"]).stdin(text).run() {
            eprintln!("mip-e2e: throughput testbed teardown: {e}");
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A thread in `ns` sending `packet` to `dst` (`send` on a connected IPPROTO_RAW socket: the packet carries its
/// own IPv4 header) until `stop`.
///
/// One `send` per packet: `sendmmsg` is behind nix's `uio` feature, which this crate does not enable. The
/// per-packet cost of the syscall is small beside the kernel's own path (raw output, veth, receive, forward);
/// the offered rate is reported beside every receive rate so a sender-bound case shows.
fn spawn_sender(ns: &str, packet: Vec<u8>, dst: Ipv4Addr, stop: Arc<AtomicBool>) -> Result<JoinHandle<Result<()>>> {
    netns::spawn_in(ns, "tp-send", move || {
        let fd = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Raw)
            .map_err(|e| Error::io("raw socket", e.into()))?;
        connect(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(dst, 0)))
            .map_err(|e| Error::io(format!("connecting the raw socket to {dst}"), e.into()))?;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..SEND_BATCH {
                match send(fd.as_raw_fd(), &packet, MsgFlags::empty()) {
                    Ok(_) | Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => return Err(Error::io(format!("send to {dst}"), e.into())),
                }
            }
        }
        Ok(())
    })
}

// === TCP ===

/// One bulk transfer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TcpSample {
    /// Bytes that arrived.
    pub bytes: u64,
    /// Connection established .. last byte received, seconds.
    pub seconds: f64,
    /// Throughput, Mbit/s.
    pub mbps: f64,
}

/// Deterministic incompressible bytes (xorshift64*), generated once; the sender cycles through them.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Sends from `from_ns` to a sink on `dst` in `to_ns` (full names) for `duration`, sha256 on both ends; an
/// error if the hashes or lengths differ.
pub fn timed_tcp_transfer(from_ns: &str, to_ns: &str, dst: SocketAddrV4, duration: Duration) -> Result<TcpSample> {
    let port = dst.port();
    let listener = netns::run_in(to_ns, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ctx(|| format!("binding TCP port {port}"))
    })?;
    let sink: JoinHandle<Result<(u64, [u8; 32], Instant)>> = thread::Builder::new()
        .name("tp-tcp-sink".into())
        .spawn(move || {
            let (mut conn, _) = listener.accept().ctx(|| "accepting the transfer connection".into())?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .ctx(|| "sink read timeout".into())?;
            let (n, sha) = crate::probe::sink_stream(&mut conn, None)?;
            Ok((n, sha, Instant::now()))
        })
        .ctx(|| "spawning the TCP sink".into())?;

    let connected = netns::run_in(from_ns, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(5)).ctx(|| format!("connecting to {dst}"))
    });
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => {
            // Unblock the sink's accept() so its thread ends.
            let _ = netns::run_in(to_ns, move || {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(1))
                    .ctx(|| "unblocking the sink".into())
            });
            let _ = sink.join();
            return Err(e);
        }
    };
    let start = Instant::now();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .ctx(|| "sender write timeout".into())?;
    const CHUNK: usize = 128 * 1024;
    // An odd length, so chunks do not line up with the pattern's period.
    let block = pattern(1024 * 1024 + 4093);
    let mut h = Sha256::new();
    let mut sent = 0u64;
    let mut at = 0usize;
    let end = start + duration;
    while Instant::now() < end {
        let k = CHUNK.min(block.len() - at);
        let chunk = block.get(at..at + k).unwrap_or_default();
        stream.write_all(chunk).ctx(|| format!("sending to {dst}"))?;
        h.update(chunk);
        sent += k as u64;
        at = (at + k) % block.len();
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .ctx(|| "closing the transfer".into())?;
    let sent_hash: [u8; 32] = h.finalize().into();
    let (n, recv_hash, done) = sink
        .join()
        .map_err(|_| Error::Usage("TCP sink thread panicked".into()))??;
    if n != sent || recv_hash != sent_hash {
        return Err(Error::Usage(format!(
            "TCP transfer to {dst} corrupted: sent {sent} B (sha256 {}), received {n} B (sha256 {})",
            hex::encode(sent_hash),
            hex::encode(recv_hash)
        )));
    }
    let secs = done.saturating_duration_since(start).as_secs_f64().max(1e-6);
    Ok(TcpSample {
        bytes: n,
        seconds: round_to(secs, 1000.0),
        mbps: round_to(n as f64 * 8.0 / secs / 1e6, 10.0),
    })
}

/// The two VPN setups, each in its own lab: strongSwan alone, and the whole product.
#[derive(Debug)]
pub struct TcpBeds {
    // Field order = drop order: processes before their labs.
    alone_client: Charon,
    alone_gateway: Charon,
    system: System,
    alone: Lab,
    product: Lab,
}

impl TcpBeds {
    /// Builds both labs (MN on C1) and brings both VPNs up.
    pub fn up() -> Result<TcpBeds> {
        let lab_opts = || LabOptions {
            mode: Mode::TwoBox,
            keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
            ..LabOptions::default()
        };
        let alone = Lab::up(lab_opts())?;
        let alone_gateway = Charon::start(&alone, "vpngw", "vpngw", &CharonSpec::rw_gateway(Duration::ZERO))?;
        let alone_client = Charon::start(&alone, "mn", "mn", &CharonSpec::rw_client(false, Duration::ZERO))?;
        alone_client.initiate(Duration::from_secs(10))?;
        alone_client.wait_up(Duration::from_secs(5))?;
        let mut product = Lab::up(lab_opts())?;
        let system = System::start(&mut product, SystemOptions::default())?;
        Ok(TcpBeds {
            alone_client,
            alone_gateway,
            system,
            alone,
            product,
        })
    }

    fn transfer(lab: &Lab, duration: Duration) -> Result<TcpSample> {
        timed_tcp_transfer(
            &lab.ns("mn"),
            &lab.ns("cn"),
            SocketAddrV4::new(plan::CN, TCP_PORT),
            duration,
        )
    }

    /// A bulk transfer through the VPN alone.
    pub fn vpn_alone(&self, duration: Duration) -> Result<TcpSample> {
        Self::transfer(&self.alone, duration)
    }

    /// A bulk transfer through the VPN inside the Mobile IP tunnel.
    pub fn proxy_vpn(&self, duration: Duration) -> Result<TcpSample> {
        Self::transfer(&self.product, duration)
    }

    /// The running product (daemon logs, metrics).
    pub fn system(&self) -> &System {
        &self.system
    }

    /// Stops everything (also done on drop).
    pub fn down(self) {
        let TcpBeds {
            mut alone_client,
            mut alone_gateway,
            system,
            alone,
            product,
        } = self;
        alone_client.stop();
        alone_gateway.stop();
        system.stop();
        drop((alone, product));
    }
}

// === the benchmark ===

/// Runs the benchmark. `progress` gets one line per measurement.
pub fn bench_throughput(opts: &ThroughputOptions, progress: &mut dyn FnMut(&str)) -> Result<ThroughputReport> {
    let runs = opts.runs.max(1);
    let window = opts.window();
    let want_tcp = opts.only != Only::Forwarding;
    let want_fwd = opts.only != Only::Tcp;
    let tcp_beds = if want_tcp { Some(TcpBeds::up()?) } else { None };
    crate::error::interrupted(&opts.stop)?;
    let bed = if want_fwd { Some(FwdBed::up()?) } else { None };

    let (mut alone, mut prox) = (Vec::new(), Vec::new());
    // (tunnel, size) -> (proxy samples, kernel samples)
    let cases: Vec<(TunnelKind, usize)> = [TunnelKind::Ipip, TunnelKind::Udp]
        .into_iter()
        .flat_map(|t| INNER_SIZES.into_iter().map(move |s| (t, s)))
        .collect();
    let mut fwd: Vec<(Vec<FwdSample>, Vec<FwdSample>)> = vec![(Vec::new(), Vec::new()); cases.len()];

    for run in 0..runs {
        let flip = run % 2 == 1;
        if let Some(b) = &tcp_beds {
            for which in if flip { [true, false] } else { [false, true] } {
                crate::error::interrupted(&opts.stop)?;
                let (name, s) = if which {
                    ("proxy+VPN", b.proxy_vpn(window)?)
                } else {
                    ("VPN alone", b.vpn_alone(window)?)
                };
                progress(&format!(
                    "run {}/{runs} tcp {name}: {:.1} Mbit/s ({} B in {:.2} s, sha256 matched)",
                    run + 1,
                    s.mbps,
                    s.bytes,
                    s.seconds
                ));
                if which { prox.push(s.mbps) } else { alone.push(s.mbps) }
            }
        }
        if let Some(bed) = &bed {
            let mut registered: Option<Registered> = None;
            for (i, (tunnel, size)) in cases.iter().enumerate() {
                if registered.is_none_or(|r| r.tunnel != *tunnel) {
                    registered = Some(bed.register(*tunnel)?);
                }
                let Some(reg) = registered else { continue };
                for proxy_case in if flip { [false, true] } else { [true, false] } {
                    crate::error::interrupted(&opts.stop)?;
                    let s = if proxy_case {
                        bed.proxy_sample(reg, *size, opts.warmup, window)?
                    } else {
                        bed.kernel_sample(*size, opts.warmup, window)?
                    };
                    progress(&format!(
                        "run {}/{runs} forwarding {} {size} B {}: {:.0} pps received ({:.0} offered)",
                        run + 1,
                        tunnel.name(),
                        if proxy_case { "mip-proxy" } else { "kernel" },
                        s.received_pps,
                        s.offered_pps
                    ));
                    if let Some(slot) = fwd.get_mut(i) {
                        if proxy_case { slot.0.push(s) } else { slot.1.push(s) }
                    }
                }
            }
        }
    }
    if let Some(b) = tcp_beds {
        b.down();
    }
    drop(bed);

    let tcp = want_tcp.then(|| tcp_result(&alone, &prox, opts.seconds));
    let forwarding = if want_fwd {
        cases
            .iter()
            .zip(&fwd)
            .map(|((t, s), (p, k))| forwarding_result(*t, *s, p, k))
            .collect()
    } else {
        Vec::new()
    };
    Ok(ThroughputReport { tcp, forwarding })
}

/// The TCP summary of per-run figures.
pub fn tcp_result(alone: &[f64], proxy: &[f64], seconds: f64) -> TcpResult {
    let (a, p) = (median(alone), median(proxy));
    let r = ratio(p, a);
    TcpResult {
        vpn_alone_mbps: round_to(a, 10.0),
        proxy_vpn_mbps: round_to(p, 10.0),
        ratio: r,
        cost_percent: round_to((1.0 - r) * 100.0, 10.0),
        runs: alone.len().min(proxy.len()) as u32,
        seconds,
        vpn_alone_mbps_all: alone.to_vec(),
        proxy_vpn_mbps_all: proxy.to_vec(),
    }
}

/// The summary of one forwarding case's per-run samples.
pub fn forwarding_result(
    tunnel: TunnelKind,
    size: usize,
    proxy: &[FwdSample],
    kernel: &[FwdSample],
) -> ForwardingResult {
    let rx = |v: &[FwdSample]| v.iter().map(|s| s.received_pps).collect::<Vec<f64>>();
    let tx = |v: &[FwdSample]| v.iter().map(|s| s.offered_pps).collect::<Vec<f64>>();
    let (p, k) = (median(&rx(proxy)), median(&rx(kernel)));
    ForwardingResult {
        tunnel,
        inner_bytes: size,
        proxy_pps: round_to(p, 1.0),
        kernel_pps: round_to(k, 1.0),
        ratio: ratio(p, k),
        proxy_offered_pps: round_to(median(&tx(proxy)), 1.0),
        kernel_offered_pps: round_to(median(&tx(kernel)), 1.0),
        runs: proxy.len().min(kernel.len()) as u32,
        proxy_pps_all: rx(proxy),
        kernel_pps_all: rx(kernel),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    fn header_ok(p: &[u8]) -> bool {
        checksum(&p[..20]) == 0
    }

    #[test]
    fn inner_packets_have_the_sizes_and_ports_the_proxy_lets_out() {
        for size in INNER_SIZES {
            let p = inner_packet(size, plan::HOA, plan::VPNGW_PUBLIC);
            assert_eq!(p.len(), size);
            assert!(header_ok(&p));
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, size);
            assert_eq!(p[9], PROTO_UDP);
            assert_eq!(&p[12..16], &plan::HOA.octets());
            assert_eq!(&p[16..20], &plan::VPNGW_PUBLIC.octets());
            assert_eq!(u16::from_be_bytes([p[20], p[21]]), 4500);
            assert_eq!(u16::from_be_bytes([p[22], p[23]]), 4500);
            assert_eq!(u16::from_be_bytes([p[24], p[25]]) as usize, size - 20);
        }
    }

    #[test]
    fn ipip_wraps_the_inner_packet_behind_protocol_4() {
        let inner = inner_packet(64, plan::HOA, plan::VPNGW_PUBLIC);
        let p = ipip_packet(A, B, &inner);
        assert_eq!(p.len(), 84);
        assert!(header_ok(&p));
        assert_eq!(p[9], 4);
        assert_eq!(&p[12..16], &A.octets());
        assert_eq!(&p[16..20], &B.octets());
        assert_eq!(&p[20..], &inner[..]);
    }

    #[test]
    fn udp_tunnel_is_rfc3519_tunnel_data_to_port_434() {
        let inner = inner_packet(1400, plan::HOA, plan::VPNGW_PUBLIC);
        let p = udp_tunnel_packet(A, 40000, B, &inner);
        assert_eq!(p.len(), 1400 + 32);
        assert!(header_ok(&p));
        assert_eq!(p[9], 17);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 40000);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 434);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 1412);
        assert_eq!(&p[28..32], &[4, 4, 0, 0]);
        assert_eq!(&p[32..], &inner[..]);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn counters_are_parsed_from_proc() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives InHdrErrors\nIp: 1 64 12345 0\n\
                    Icmp: InMsgs\nIcmp: 7\n";
        assert_eq!(snmp_value(snmp, "Ip", "InReceives"), Some(12345));
        assert_eq!(snmp_value(snmp, "Icmp", "InMsgs"), Some(7));
        assert_eq!(snmp_value(snmp, "Udp", "InDatagrams"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n\
                   \x20   px: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n    rt:  5 1 0 0 0 0 0 0 7 3 0 0 0 0 0 0\n";
        assert_eq!(dev_packets(dev, "px"), Some((10, 20)));
        assert_eq!(dev_packets(dev, "rt"), Some((1, 3)));
        assert_eq!(dev_packets(dev, "lo"), None);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(ratio(1.0, 3.0), 0.333);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        let t = tcp_result(&[100.0, 110.0, 90.0], &[95.0, 85.0, 99.0], 5.0);
        assert_eq!(
            (t.vpn_alone_mbps, t.proxy_vpn_mbps, t.ratio, t.cost_percent, t.runs),
            (100.0, 95.0, 0.95, 5.0, 3)
        );
    }

    #[test]
    fn bed_owner_is_parsed_from_namespace_names() {
        assert_eq!(bed_owner("mtp1234n0-snd"), Some(1234));
        assert_eq!(bed_owner("mtpxn0-snd"), None);
        assert_eq!(bed_owner("mlab1-mn"), None);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let s = |r: f64, o: f64| FwdSample {
            received_pps: r,
            offered_pps: o,
        };
        let report = ThroughputReport {
            tcp: Some(tcp_result(&[200.0], &[190.0], 5.0)),
            forwarding: vec![
                forwarding_result(TunnelKind::Ipip, 64, &[s(100.0, 300.0)], &[s(400.0, 400.0)]),
                forwarding_result(TunnelKind::Udp, 1400, &[s(50.0, 80.0)], &[s(100.0, 100.0)]),
            ],
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["forwarding", "tcp"]);
        for k in ["vpn_alone_mbps", "proxy_vpn_mbps", "ratio", "runs"] {
            assert!(v["tcp"][k].is_number(), "{k}");
        }
        assert_eq!(v["tcp"]["ratio"], 0.95);
        let f = &v["forwarding"][0];
        assert_eq!(f["tunnel"], "ipip");
        assert_eq!(f["inner_bytes"], 64);
        assert_eq!(f["proxy_pps"], 100.0);
        assert_eq!(f["kernel_pps"], 400.0);
        assert_eq!(f["ratio"], 0.25);
        assert_eq!(v["forwarding"][1]["tunnel"], "udp");
        assert!(report.table().contains("ipip"));
        let empty = ThroughputReport::default();
        let v: serde_json::Value = serde_json::from_str(&empty.to_json()).unwrap();
        assert!(v["tcp"].is_null() && v["forwarding"].as_array().unwrap().is_empty());
    }
}

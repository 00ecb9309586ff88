//! `mip-ha`: the reference Home Agent daemon (spec §6.1) around [`mip::roles::ha::HomeAgent`], on the shared
//! event loop of [`mip_io::daemon`].
//!
//! # Wiring
//! | source | what | goes to |
//! |---|---|---|
//! | UDP `ha.address:434` | Registration Requests | [`HaInput::Request`]; replies leave from the same socket |
//! | UDP `ha.address:434` | RFC 3519 Tunnel Data (first byte 4) from a UDP binding's endpoint | inner packet → TUN (reverse tunnel), or a keepalive echo reply back to the endpoint |
//! | TUN `dataplane.tun` | packets the kernel routed to a bound home address | IP-in-IP (or IPv4/UDP 434→port/Tunnel Data for RFC 3519 bindings) to the binding's tunnel endpoint, through a raw sender |
//! | raw IPPROTO_IPIP | reverse-tunnelled packets (RFC 3024) | inner packet → TUN when the outer source is the care-of address of a binding with T whose home address is the inner source; anything else is dropped and counted (§4.3.2) |
//!
//! # Kernel state
//! * At start: the TUN (up, MTU `tun_mtu`); `net.ipv4.ip_forward = 1` if it was 0 (restored on SIGTERM): the
//!   kernel forwards intercepted packets into the TUN and decapsulated ones out of it.
//! * [`HaOutput::Intercept`] active: `ip route replace HOA/32 dev TUN`; with `home_link` also a proxy-ARP entry
//!   (`ip neigh replace proxy HOA dev LINK`) and one gratuitous ARP (RFC 5944 §4.6). Inactive: both removed.
//! * SIGTERM: every route and proxy-ARP entry above is removed; the TUN disappears with the process.
//!
//! The HA's own address(es) must already be configured in the namespace (the UDP socket binds `ha.address`).
//!
//! # Data path rules
//! Encapsulation copies TOS and DF from the inner header, sets the outer TTL to `outer_ttl` and the outer source
//! to `ha.address`, and leaves the inner TTL alone (RFC 2003 §3.1): the kernel forwarding the packet into the
//! TUN was the hop's one decrement (and answered TTL ≤ 1 with Time Exceeded), as for the proxy's data plane; a
//! packet with TTL 0 (never handed over by the kernel) is dropped (`ttl_expired`). A packet that does not fit
//! the path after encapsulation is dropped (`too_big`): keep `tun_mtu` ≤ path MTU − 32. Nothing is logged per
//! packet (one info line per registration outcome).
//!
//! # Metrics and status
//! `mip_registrations_total{role="ha", code}`, `mip_bindings`, `mip_tunnel_packets_total` /
//! `mip_tunnel_bytes_total{direction="down"|"up", encapsulation="ipip"|"udp"}` (down = toward mobile nodes),
//! `mip_tunnel_mtu_bytes{encapsulation}` (the TUN's MTU: larger inner packets never reach the tunnel),
//! `mip_drops_total{path="down"|"up"|"control", reason}`, `mip_keepalives_total{result="answered"}`,
//! `mip_icmp_errors_total` (docs/metrics.md). `/status` (role `ha`) adds `bindings`, `address` and `tun`; every
//! registration outcome, control-plane drop (with its sender), failed reply send and failed intercept route is
//! recorded for its `recent_registrations` / `last_errors`.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use mio::{Interest, Registry as MioRegistry, Token};

use mip::binding::{Binding, Encapsulation};
use mip::config::Prefix;
use mip::daemon::{HaDataPlane, HaFile};
use mip::keystore::KeyStore;
use mip::roles::ha::{HaInput, HaOutput, HomeAgent};
use mip::roles::{BindingChangeKind, Now};
use mip::time::Instant;
use mip::wire::tunnel;
use mip::wire::udp::MIP_PORT;
use mip_io::Clock;
use mip_io::admin::Recorder;
use mip_io::batch::RecvBatch;
use mip_io::daemon::{Context, FIRST_SERVICE_TOKEN, Service, filled};
use mip_io::metrics::{Counter, DropCounters, Registry};
use mip_io::net::{self, Route};
use mip_io::socket::{IcmpErrorReport, RawSocket, UdpSocket};
use mip_io::tun::Tun;
use serde_json::{Value, json};

use crate::tunnel_io::{self, CommonMetrics, Dir, Enc, HEADROOM, Outer, WORK_BUFFER};

const UDP_TOKEN: Token = Token(FIRST_SERVICE_TOKEN);
const TUN_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 1);
const IPIP_TOKEN: Token = Token(FIRST_SERVICE_TOKEN + 2);

/// Drop reasons of packets read from the TUN (toward mobile nodes): `mip_drops_total{path="down"}`.
const DOWN_REASONS: &[&str] = &[
    "malformed",
    "not_bound",
    "half_bound",
    "ttl_expired",
    "too_big",
    "wrong_protocol",
    "send_failed",
];
/// Drop reasons of tunnelled packets from mobile nodes (IP-in-IP and UDP Tunnel Data): `path="up"`.
const UP_REASONS: &[&str] = &[
    "malformed",
    "wrong_protocol",
    "wrong_next_header",
    "not_bound",
    "half_bound",
    "no_reverse_tunnel",
    "ttl_expired",
    "tun_write_failed",
    "send_failed",
];

/// Runs `mip-ha` with a loaded configuration until SIGTERM.
pub fn run(file: HaFile) -> Result<(), String> {
    let settings = file.daemon.clone();
    mip_io::daemon::run(&settings, move |ctx| HaService::new(file, ctx))
}

struct Metrics {
    common: CommonMetrics,
    down_drops: DropCounters,
    up_drops: DropCounters,
    keepalives: Counter,
}

impl Metrics {
    /// Registers every series of `mip-ha` (besides the skeleton's) at 0; the MTU gauges show `tun_mtu`.
    fn new(registry: &Arc<Registry>, tun_mtu: u16) -> Result<Metrics, String> {
        let common = CommonMetrics::new(registry, "ha")?;
        tunnel_mtu(registry, tun_mtu)?;
        registered_at_zero(registry, "ha")?;
        Ok(Metrics {
            common,
            down_drops: CommonMetrics::drops(registry, "down", DOWN_REASONS)?,
            up_drops: CommonMetrics::drops(registry, "up", UP_REASONS)?,
            keepalives: registry
                .counter(
                    "mip_keepalives_total",
                    "RFC 3519 keepalives, by result.",
                    &[("result", "answered")],
                )
                .map_err(|e| format!("metrics: {e}"))?,
        })
    }
}

/// `mip_tunnel_mtu_bytes{encapsulation}` of an agent whose inner packets come out of a TUN: its MTU for both
/// encapsulations (a larger packet never enters the tunnel; the kernel fragments it or answers "fragmentation
/// needed" first).
pub(crate) fn tunnel_mtu(registry: &Registry, tun_mtu: u16) -> Result<(), String> {
    for encapsulation in ["ipip", "udp"] {
        registry
            .gauge(
                "mip_tunnel_mtu_bytes",
                "Largest inner packet a tunnel carries (agents: the TUN's MTU), by encapsulation.",
                &[("encapsulation", encapsulation)],
            )
            .map_err(|e| format!("metrics: {e}"))?
            .set(i64::from(tun_mtu));
    }
    Ok(())
}

/// Registers `mip_registrations_total{role, code="0"}` at 0, so acceptances show before the first one (the
/// other codes appear when first counted). Same help text as [`CommonMetrics`]' series.
pub(crate) fn registered_at_zero(registry: &Registry, role: &'static str) -> Result<(), String> {
    registry
        .counter(
            "mip_registrations_total",
            "Registration outcomes by reply code.",
            &[("role", role), ("code", "0")],
        )
        .map(drop)
        .map_err(|e| format!("metrics: {e}"))
}

/// Everything but the receive batch (so a batch can be iterated while the rest is mutated).
struct Core {
    ha: HomeAgent,
    address: Ipv4Addr,
    dp: HaDataPlane,
    clock: Clock,
    udp: UdpSocket,
    tun: Tun,
    ipip: RawSocket,
    sender: RawSocket,
    buf: Box<[u8]>,
    out: Vec<HaOutput>,
    icmp_errors: Vec<IcmpErrorReport>,
    /// Home addresses whose route (and proxy-ARP entry) we installed.
    intercepted: BTreeSet<Ipv4Addr>,
    /// We switched `net.ipv4.ip_forward` on (switch it off again at exit).
    enabled_forwarding: bool,
    ident: u16,
    m: Metrics,
    /// Recent registrations and errors for `/status`.
    status: Recorder,
}

/// The `mip-ha` service plugged into [`mip_io::daemon::run`].
pub struct HaService {
    core: Core,
    batch: RecvBatch,
}

impl std::fmt::Debug for HaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaService")
            .field("address", &self.core.address)
            .field("tun", &self.core.tun.name())
            .field("bindings", &self.core.ha.bindings().len())
            .finish_non_exhaustive()
    }
}

impl HaService {
    /// Opens the sockets and the TUN and builds the home agent (called by [`mip_io::daemon::run`]).
    pub fn new(file: HaFile, ctx: &Context) -> Result<HaService, String> {
        let HaFile {
            ha: config,
            dataplane: dp,
            ..
        } = file;
        let address = config.address;
        let enabled_forwarding = match net::sysctl_get("net.ipv4.ip_forward") {
            Ok(v) if v == "1" => false,
            _ => {
                net::sysctl("net.ipv4.ip_forward", "1").map_err(|e| e.to_string())?;
                tracing::info!("enabled net.ipv4.ip_forward");
                true
            }
        };
        let tun = Tun::open(&dp.tun, dp.tun_mtu).map_err(|e| format!("TUN {}: {e}", dp.tun))?;
        tun.up().map_err(|e| e.to_string())?;
        let bind = SocketAddrV4::new(address, MIP_PORT);
        let udp = UdpSocket::bind(bind)
            .map_err(|e| format!("UDP {bind}: {e} (ha.address must be configured in this namespace)"))?;
        let ipip = RawSocket::ipip().map_err(|e| format!("raw IP-in-IP socket: {e}"))?;
        let sender = RawSocket::sender().map_err(|e| format!("raw sender socket: {e}"))?;
        let m = Metrics::new(&ctx.metrics, dp.tun_mtu)?;
        tracing::info!(
            address = %address, tun = %tun.name(), mtu = dp.tun_mtu,
            home_link = dp.home_link.as_deref().unwrap_or("-"), "home agent ready"
        );
        Ok(HaService {
            core: Core {
                ha: HomeAgent::new(config, ctx.keys.clone(), tunnel_io::seed()),
                address,
                dp,
                clock: ctx.clock,
                udp,
                tun,
                ipip,
                sender,
                buf: vec![0u8; WORK_BUFFER].into_boxed_slice(),
                out: Vec::new(),
                icmp_errors: Vec::new(),
                intercepted: BTreeSet::new(),
                enabled_forwarding,
                ident: 0,
                m,
                status: ctx.status.clone(),
            },
            batch: RecvBatch::default(),
        })
    }
}

impl Service for HaService {
    fn register(&mut self, registry: &MioRegistry) -> io::Result<()> {
        registry.register(&mut self.core.udp, UDP_TOKEN, Interest::READABLE)?;
        registry.register(&mut self.core.tun, TUN_TOKEN, Interest::READABLE)?;
        registry.register(&mut self.core.ipip, IPIP_TOKEN, Interest::READABLE)
    }

    fn ready(&mut self, token: Token, now: Now) {
        let c = &mut self.core;
        match token {
            UDP_TOKEN => {
                tunnel_io::count_icmp_errors(&c.udp, &mut c.icmp_errors, &c.m.common.icmp_errors);
                while filled(c.udp.recv_batch(&mut self.batch), &self.batch, "the UDP socket").is_some() {
                    for r in self.batch.iter() {
                        if r.payload.first() == Some(&tunnel::TYPE_TUNNEL_DATA) {
                            c.tunnel_data(r.src, r.payload);
                        } else {
                            c.handle(now, HaInput::Request(r.datagram()));
                        }
                    }
                }
            }
            TUN_TOKEN => {
                while let Some(n) = tunnel_io::read_tun(&c.tun, &mut c.buf) {
                    c.encapsulate(n);
                }
            }
            IPIP_TOKEN => {
                while filled(c.ipip.recv_batch(&mut self.batch), &self.batch, "the raw IPIP socket").is_some() {
                    for r in self.batch.iter() {
                        c.reverse_ipip(r.payload);
                    }
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Now) {
        if self.core.ha.next_timer().is_some_and(|t| t <= now.instant) {
            self.core.handle(now, HaInput::Tick);
        }
    }

    fn next_timer(&mut self) -> Option<Instant> {
        self.core.ha.next_timer()
    }

    fn set_keys(&mut self, keys: KeyStore) {
        self.core.ha.set_keys(keys);
    }

    fn bindings_json(&self) -> String {
        self.core.bindings_json().to_string()
    }

    fn role(&self) -> &'static str {
        "ha"
    }

    fn status_json(&self) -> Value {
        json!({
            "bindings": self.core.ha.bindings().len(),
            "address": self.core.address.to_string(),
            "tun": self.core.tun.name(),
        })
    }

    fn shutdown(&mut self) {
        let c = &mut self.core;
        for hoa in std::mem::take(&mut c.intercepted) {
            c.stop_intercept(hoa);
        }
        if c.enabled_forwarding
            && let Err(e) = net::sysctl("net.ipv4.ip_forward", "0")
        {
            tracing::warn!(error = %e, "could not restore net.ipv4.ip_forward");
        }
        tracing::info!("home agent stopped; routes removed");
    }
}

impl Core {
    /// Feeds the home agent and carries out what it asks for.
    fn handle(&mut self, now: Now, input: HaInput<'_>) {
        let peer = match &input {
            HaInput::Request(d) => Some(SocketAddr::V4(d.src)),
            HaInput::Tick => None,
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        // Ends when the reply is sent (end of this function).
        let trace = crate::traces::ha_request(&input);
        self.ha.handle(now, input, &mut out);
        for o in out.drain(..) {
            crate::traces::ha_output(trace.as_ref(), &o);
            match o {
                HaOutput::Send(t) => {
                    if let Err(e) = self.udp.send_transmit(&t) {
                        self.m.common.control_drops.inc("send_failed");
                        self.status.error("send_failed", Some(SocketAddr::V4(t.dst)), &e);
                        tracing::warn!(dst = %t.dst, error = %e, "sending a registration reply failed");
                    }
                }
                HaOutput::Binding(change) => {
                    if matches!(change.kind, BindingChangeKind::Expired) {
                        tracing::info!(
                            home_address = %change.home_address,
                            care_of_address = %change.binding.care_of_address,
                            "binding expired"
                        );
                    }
                }
                HaOutput::Intercept { home_address, active } => {
                    if active {
                        self.start_intercept(home_address);
                    } else if self.intercepted.remove(&home_address) {
                        self.stop_intercept(home_address);
                    }
                }
                HaOutput::Outcome(o) => {
                    self.m.common.registration(o.code.value());
                    let nai = self.ha.bindings().get_by_home(o.home_address).and_then(|e| e.nai());
                    self.status.outcome(&o, nai);
                    tracing::info!(
                        home_address = %o.home_address,
                        care_of_address = %o.care_of_address,
                        code = o.code.value(),
                        lifetime = o.lifetime,
                        nat = o.nat_detected,
                        "registration {}",
                        if o.code.is_accepted() { "accepted" } else { "denied" }
                    );
                }
                HaOutput::Drop(r) => {
                    self.m.common.control_drops.inc(r.as_str());
                    self.status.drop(r.as_str(), peer);
                }
            }
        }
        self.out = out;
        self.m
            .common
            .bindings
            .set(i64::try_from(self.ha.bindings().len()).unwrap_or(i64::MAX));
    }

    fn start_intercept(&mut self, hoa: Ipv4Addr) {
        let Some(route) = self.intercept_route(hoa) else {
            return;
        };
        if let Err(e) = net::route_replace_with(&route) {
            self.status.error("intercept_route", None, format_args!("{hoa}: {e}"));
            tracing::error!(home_address = %hoa, error = %e, "cannot route the home address into the TUN");
            return;
        }
        self.intercepted.insert(hoa);
        if let Some(link) = self.dp.home_link.as_deref() {
            if let Err(e) = net::neigh_proxy_add(hoa, link) {
                tracing::warn!(home_address = %hoa, error = %e, "proxy ARP entry");
            }
            if let Err(e) = net::gratuitous_arp(link, hoa) {
                tracing::warn!(home_address = %hoa, error = %e, "gratuitous ARP");
            }
        }
    }

    fn stop_intercept(&mut self, hoa: Ipv4Addr) {
        if let Some(route) = self.intercept_route(hoa)
            && let Err(e) = net::route_del_with(&route)
            && !e.is_missing()
        {
            tracing::warn!(home_address = %hoa, error = %e, "removing the home address route");
        }
        if let Some(link) = self.dp.home_link.as_deref()
            && let Err(e) = net::neigh_proxy_del(hoa, link)
            && !e.is_missing()
        {
            tracing::warn!(home_address = %hoa, error = %e, "removing the proxy ARP entry");
        }
    }

    /// `HOA/32 dev TUN` (a /32 never has host bits set: always `Some`).
    fn intercept_route(&self, hoa: Ipv4Addr) -> Option<Route> {
        Some(Route {
            dev: Some(self.tun.name().to_string()),
            ..Route::to(Prefix::new(hoa, 32)?)
        })
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// The binding that carries traffic to `home_address`: the most recently registered fully bound one.
    fn downlink_binding(&self, home_address: Ipv4Addr) -> Result<Binding, &'static str> {
        let entry = self.ha.bindings().get_by_home(home_address).ok_or("not_bound")?;
        entry
            .bindings()
            .iter()
            .filter(|b| !b.half_bound)
            .max_by_key(|b| b.registered_at)
            .copied()
            .ok_or("half_bound")
    }

    /// A packet of `len` bytes read from the TUN into `buf[HEADROOM..]`: tunnel it to its node's care-of address.
    fn encapsulate(&mut self, len: usize) {
        let drops = &self.m.down_drops;
        let Some(i) = self.buf.get(HEADROOM..HEADROOM + len).and_then(tunnel_io::inner) else {
            drops.inc("malformed");
            return;
        };
        let binding = match self.downlink_binding(i.dst) {
            Ok(b) => b,
            Err(reason) => {
                self.m.down_drops.inc(reason);
                return;
            }
        };
        // The kernel already decremented the TTL forwarding the packet into the TUN (one hop, one decrement).
        if i.ttl == 0 {
            self.m.down_drops.inc("ttl_expired");
            return;
        }
        let outer = Outer {
            src: self.address,
            dst: binding.tunnel.addr,
            ttl: self.dp.outer_ttl,
            tos: i.tos,
            df: i.df,
            ident: self.next_ident(),
        };
        let enc = binding.tunnel.encapsulation;
        let range = match enc {
            Encapsulation::IpInIp => tunnel_io::encap_ipip(&mut self.buf, i.len, &outer),
            Encapsulation::UdpIpInIp => {
                tunnel_io::encap_udp(&mut self.buf, i.len, &outer, MIP_PORT, binding.tunnel.port)
            }
            // Never negotiated by this HA (only IP-in-IP, plain or in UDP).
            _ => None,
        };
        let Some(range) = range else {
            self.m.down_drops.inc("wrong_protocol");
            return;
        };
        self.send_raw(range, enc, i.len);
    }

    fn send_raw(&mut self, range: core::ops::Range<usize>, enc: Encapsulation, inner_len: usize) {
        let Some(packet) = self.buf.get(range) else {
            self.m.down_drops.inc("malformed");
            return;
        };
        match self.sender.send(packet) {
            Ok(()) => self.m.common.tunnel(Dir::Down, Enc::of(enc), inner_len),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.m.down_drops.inc("too_big");
            }
            Err(_) => {
                self.m.down_drops.inc("send_failed");
            }
        }
    }

    /// RFC 3024 §4.3.2: a reverse-tunnelled IP-in-IP packet is accepted only from the care-of address of a
    /// binding (with T) whose home address is the inner source.
    fn reverse_ipip(&mut self, packet: &[u8]) {
        let drops = &self.m.up_drops;
        let (outer_src, payload) = match tunnel_io::ipip_outer(packet) {
            Ok(x) => x,
            Err(reason) => {
                drops.inc(reason);
                return;
            }
        };
        let Some(i) = tunnel_io::inner(payload) else {
            drops.inc("malformed");
            return;
        };
        let Some(entry) = self.ha.bindings().get_by_home(i.src) else {
            drops.inc("not_bound");
            return;
        };
        let Some(b) = entry
            .bindings()
            .iter()
            .find(|b| b.tunnel.encapsulation == Encapsulation::IpInIp && b.tunnel.addr == outer_src)
        else {
            drops.inc("not_bound");
            return;
        };
        if !b.reverse_tunnel {
            drops.inc("no_reverse_tunnel");
            return;
        }
        self.deliver(payload.get(..i.len).unwrap_or(payload), i.ttl, Enc::IpIp);
    }

    /// RFC 3519 Tunnel Data on UDP 434 from `src`: from a UDP binding's endpoint only; a keepalive (echo request
    /// to this HA) is answered through the tunnel, anything else is reverse-tunnelled traffic.
    fn tunnel_data(&mut self, src: SocketAddrV4, payload: &[u8]) {
        let drops = &self.m.up_drops;
        let (i, inner) = match tunnel_io::tunnel_data_inner(payload) {
            Ok(x) => x,
            Err(reason) => {
                drops.inc(reason);
                return;
            }
        };
        let Some(entry) = self.ha.bindings().get_by_home(i.src) else {
            drops.inc("not_bound");
            return;
        };
        let udp = || entry.bindings().iter().filter(|b| b.tunnel.encapsulation.is_udp());
        let Some(b) = udp()
            .find(|b| b.tunnel.addr == *src.ip() && b.tunnel.port == src.port())
            .copied()
        else {
            // A half-bound (R flag) binding would be completed by its first keepalive; this HA never grants one.
            let half = udp().any(|b| b.half_bound && b.tunnel.addr == *src.ip());
            drops.inc(if half { "half_bound" } else { "not_bound" });
            return;
        };
        if i.dst == self.address
            && let Some((false, ident, seq, data)) = tunnel_io::echo(inner)
        {
            self.keepalive_reply(&b, i.src, ident, seq, data);
            return;
        }
        if !b.reverse_tunnel {
            drops.inc("no_reverse_tunnel");
            return;
        }
        self.deliver(inner, i.ttl, Enc::Udp);
    }

    /// The echo reply to a keepalive, UDP-encapsulated back to the binding's endpoint (RFC 3519 §4.9).
    fn keepalive_reply(&mut self, b: &Binding, hoa: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) {
        let Some(len) = tunnel_io::write_echo(&mut self.buf, true, self.address, hoa, ident, seq, data) else {
            self.m.up_drops.inc("malformed");
            return;
        };
        let outer = Outer {
            src: self.address,
            dst: b.tunnel.addr,
            ttl: self.dp.outer_ttl,
            tos: 0,
            df: false,
            ident: self.next_ident(),
        };
        match tunnel_io::encap_udp(&mut self.buf, len, &outer, MIP_PORT, b.tunnel.port)
            .and_then(|r| self.buf.get(r))
            .map(|p| self.sender.send(p))
        {
            Some(Ok(())) => self.m.keepalives.inc(),
            _ => {
                self.m.up_drops.inc("send_failed");
            }
        }
    }

    /// Writes a decapsulated packet into the TUN; the kernel forwards it (RFC 2003 §3.1: TTL unchanged).
    fn deliver(&mut self, inner: &[u8], ttl: u8, enc: Enc) {
        if ttl == 0 {
            self.m.up_drops.inc("ttl_expired");
            return;
        }
        match self.tun.write(inner) {
            Ok(_) => self.m.common.tunnel(Dir::Up, enc, inner.len()),
            Err(_) => {
                self.m.up_drops.inc("tun_write_failed");
            }
        }
    }

    fn bindings_json(&self) -> Value {
        let now = self.clock.instant();
        let mut rows = Vec::new();
        for e in self.ha.bindings().iter() {
            for b in e.bindings() {
                let key = (u32::from(e.home_address()), u32::from(b.care_of_address));
                rows.push((key, binding_json(e.home_address(), e.nai(), b, now)));
            }
        }
        // Sorted by home address, then care-of address: stable output for diffs (as the proxy's).
        rows.sort_by_key(|(k, _)| *k);
        Value::Array(rows.into_iter().map(|(_, v)| v).collect())
    }
}

/// One binding as `/bindings` shows it: the same object the proxy's `/bindings` lists.
///
/// ```json
/// {"home_address": "10.10.1.50", "nai": null, "care_of_address": "192.0.2.10",
///  "tunnel": {"encapsulation": "ipip", "address": "192.0.2.10", "port": 0},
///  "home_agent": "10.10.1.1", "lifetime": 600, "expires_in_ms": 599812,
///  "half_bound": false, "reverse_tunnel": true}
/// ```
/// `expires_in_ms` is `null` for an infinite lifetime.
pub fn binding_json(home_address: Ipv4Addr, nai: Option<&str>, b: &Binding, now: Instant) -> Value {
    let t = b.tunnel;
    let expires_in_ms = if b.lifetime == mip::binding::INFINITE_LIFETIME {
        Value::Null
    } else {
        json!(u64::try_from(b.remaining(now).as_millis()).unwrap_or(u64::MAX))
    };
    json!({
        "home_address": home_address.to_string(),
        "nai": nai,
        "care_of_address": b.care_of_address.to_string(),
        "tunnel": {
            "encapsulation": t.encapsulation.as_str(),
            "address": t.addr.to_string(),
            "port": t.port,
        },
        "home_agent": b.home_agent.to_string(),
        "lifetime": b.lifetime,
        "expires_in_ms": expires_in_ms,
        "half_bound": b.half_bound,
        "reverse_tunnel": b.reverse_tunnel,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use mip::binding::TunnelEndpoint;

    /// Every series `mip-ha` registers is listed in docs/metrics.md under its section.
    #[test]
    fn metrics_are_documented() {
        let r = Arc::new(Registry::new());
        let _m = Metrics::new(&r, 1468).unwrap();
        mip_io::metrics::check_documented(&r, include_str!("../../docs/metrics.md"), "mip-ha").unwrap();
        let text = r.render();
        assert!(
            text.contains("mip_registrations_total{role=\"ha\",code=\"0\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("mip_tunnel_mtu_bytes{encapsulation=\"udp\"} 1468\n"),
            "{text}"
        );
    }

    #[test]
    fn binding_json_fields() {
        let b = Binding::new(
            Ipv4Addr::new(192, 168, 1, 10),
            TunnelEndpoint {
                addr: Ipv4Addr::new(203, 0, 113, 2),
                port: 4500,
                encapsulation: Encapsulation::UdpIpInIp,
            },
            Ipv4Addr::new(10, 10, 1, 1),
            1,
            60,
            Instant::from_secs(10),
        );
        let v = binding_json(
            Ipv4Addr::new(10, 10, 1, 50),
            Some("joe@example.com"),
            &b,
            Instant::from_secs(20),
        );
        assert_eq!(v["home_address"], "10.10.1.50");
        assert_eq!(v["nai"], "joe@example.com");
        assert_eq!(v["care_of_address"], "192.168.1.10");
        assert_eq!(v["tunnel"]["encapsulation"], "udp_ipip");
        assert_eq!(v["tunnel"]["address"], "203.0.113.2");
        assert_eq!(v["tunnel"]["port"], 4500);
        assert_eq!(v["lifetime"], 60);
        assert_eq!(v["expires_in_ms"], 50_000);
    }
}

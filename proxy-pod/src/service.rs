//! The proxy as a [`Service`] of the shared event loop: the relay ([`Proxy`]) and the data plane ([`DataPlane`])
//! live in the loop's one thread; the data plane reads the relay's binding cache directly.
//!
//! | source | what arrives | goes to |
//! |---|---|---|
//! | UDP `proxy_public:434` | first byte 4: RFC 3519 Tunnel Data | [`DataPlane::uplink_udp`] → `tun` (inner packet) or raw sender (keepalive reply) |
//! | | anything else (1 = Registration Request) | [`ProxyInput::FromMobile`] |
//! | UDP `node_address:relay_port` | Registration Replies | [`ProxyInput::FromHomeAgent`] |
//! | | its ICMP error queue | [`ProxyInput::HomeAgentUnreachable`] |
//! | raw IPPROTO_IPIP | outer destination `proxy_public` | [`DataPlane::uplink_ipip`] → `tun` |
//! | | outer destination `proxy_private` | [`DataPlane::from_home_agent`] → `ha_tun` |
//! | raw ICMP (errors only) | errors about our tunnels | [`DataPlane::icmp_from_tunnel`] → raw sender |
//! | TUN `tun` | packets the kernel routes to home addresses | [`DataPlane::downlink`] → raw sender |
//!
//! Every outer packet the proxy builds (encapsulated downlink, keepalive replies, ICMP errors) leaves through one
//! IP_HDRINCL raw socket, batched with `sendmmsg`. Registration traffic leaves through the UDP socket whose local
//! address is the [`Transmit`](mip::roles::Transmit)'s source.
//!
//! Hot path: reads are batched (`recvmmsg`, [`Tun::read_batch`](mip_io::tun::Tun::read_batch)) into buffers
//! allocated once; nothing is allocated or logged per packet, only counted. A source that still has packets
//! after [`MAX_ROUNDS`] batches is finished on the next turn of the loop (so one flood cannot starve the others).
//!
//! `/status` (role `proxy`): `bindings`, `pending_requests`, `mode` and `replication` (this replica, its peers
//! with connection, snapshot and lag, its subscribers); every registration outcome (with the node's NAI from the
//! binding cache), control-plane drop (with the sender), unreachable home agent and refused send of a registration
//! message is recorded for `recent_registrations` / `last_errors` (control plane only: data-plane drops are
//! counted, never recorded).

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Registry as MioRegistry, Token};
use serde_json::{Value, json};

use mip::daemon::{DeploymentMode, ProxyFile};
use mip::dataplane::{DataDrop, DataPlane, Downlink, FromHomeAgent, Uplink, overhead};
use mip::keystore::KeyStore;
use mip::roles::Now;
use mip::roles::proxy::{Proxy, ProxyInput, ProxyOutput};
use mip::time::Instant;
use mip::wire::tunnel::TYPE_TUNNEL_DATA;
use mip_io::admin::Recorder;
use mip_io::batch::{BUFFER_SIZE, DEFAULT_BATCH, Received, RecvBatch, SendBatch};
use mip_io::clock::Clock;
use mip_io::daemon::{Context, FIRST_SERVICE_TOKEN, Service, filled};
use mip_io::socket::{IcmpErrorReport, RawSocket, UdpOptions, UdpSocket};

use crate::bindings;
use crate::metrics::{ProxyMetrics, Tunnel};
use crate::replication::Replication;
use crate::setup::KernelState;
use crate::traces::RegistrationTraces;

/// Batches read from one source per readiness event before yielding to the others.
pub const MAX_ROUNDS: usize = 8;
/// Socket buffer sizes requested (the kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// Registration Reply: the Identification is at bytes 12..20 (RFC 5944 §3.4).
const REPLY_IDENT: core::ops::Range<usize> = 12..20;
/// Registration Reply message type.
const TYPE_REPLY: u8 = 3;

const PUBLIC: Token = Token(FIRST_SERVICE_TOKEN);
const RELAY: Token = Token(FIRST_SERVICE_TOKEN + 1);
const IPIP: Token = Token(FIRST_SERVICE_TOKEN + 2);
const ICMP: Token = Token(FIRST_SERVICE_TOKEN + 3);
const TUN: Token = Token(FIRST_SERVICE_TOKEN + 4);
const SOURCES: [Token; 5] = [PUBLIC, RELAY, IPIP, ICMP, TUN];

/// The sockets (the TUNs live in [`KernelState`]).
#[derive(Debug)]
struct Sockets {
    public: UdpSocket,
    relay: UdpSocket,
    ipip: RawSocket,
    icmp: RawSocket,
    sender: RawSocket,
}

impl Sockets {
    fn open(file: &ProxyFile) -> Result<Sockets, String> {
        let p = &file.proxy;
        let public = SocketAddrV4::new(p.proxy_public, 434);
        let relay = SocketAddrV4::new(p.node_address(), p.relay_port);
        if public == relay {
            return Err(format!(
                "proxy.node_address:relay_port ({relay}) must differ from proxy_public:434: replies from home \
                 agents and requests from mobile nodes need their own sockets"
            ));
        }
        let public_opts = UdpOptions {
            // Errors about replies to mobile nodes are of no use; an undrained error queue would eat the buffer.
            recv_err: false,
            recv_buffer: Some(SOCKET_BUFFER),
            send_buffer: Some(SOCKET_BUFFER),
            ..UdpOptions::default()
        };
        let public_sock = UdpSocket::bind_with(public, &public_opts).map_err(|e| format!("bind UDP {public}: {e}"))?;
        let relay_sock = UdpSocket::bind(relay).map_err(|e| format!("bind UDP {relay}: {e}"))?;
        let raw = |what: &str, r: io::Result<RawSocket>| r.map_err(|e| format!("raw {what} socket: {e}"));
        let ipip = raw("IPIP", RawSocket::ipip())?;
        let icmp = raw("ICMP", RawSocket::icmp())?;
        let sender = raw("sender", RawSocket::sender())?;
        for s in [&ipip, &icmp] {
            if let Err(e) = s.set_recv_buffer_size(SOCKET_BUFFER) {
                tracing::debug!(error = %e, "SO_RCVBUF");
            }
        }
        if let Err(e) = sender.set_send_buffer_size(SOCKET_BUFFER) {
            tracing::debug!(error = %e, "SO_SNDBUF");
        }
        Ok(Sockets {
            public: public_sock,
            relay: relay_sock,
            ipip,
            icmp,
            sender,
        })
    }
}

/// Send instants of relayed requests by Identification, for the relay-latency histogram. Bounded: when full,
/// entries older than the pending timeout are dropped, and a new one is not recorded if that frees nothing.
#[derive(Debug)]
struct RelayTimes {
    sent: HashMap<u64, std::time::Instant>,
    cap: usize,
    max_age: Duration,
    last_prune: std::time::Instant,
}

impl RelayTimes {
    fn new(cap: usize, max_age: Duration) -> Self {
        RelayTimes {
            sent: HashMap::new(),
            cap: cap.max(1),
            max_age,
            last_prune: std::time::Instant::now(),
        }
    }

    fn insert(&mut self, identification: u64) {
        if self.sent.len() >= self.cap && !self.sent.contains_key(&identification) {
            self.prune();
            if self.sent.len() >= self.cap {
                return;
            }
        }
        self.sent.insert(identification, std::time::Instant::now());
    }

    fn take(&mut self, identification: u64) -> Option<Duration> {
        self.sent.remove(&identification).map(|t| t.elapsed())
    }

    fn prune(&mut self) {
        let max_age = self.max_age;
        self.sent.retain(|_, t| t.elapsed() <= max_age);
        self.last_prune = std::time::Instant::now();
    }

    fn prune_now_and_then(&mut self) {
        if !self.sent.is_empty() && self.last_prune.elapsed() >= self.max_age {
            self.prune();
        }
    }
}

/// Preallocated packet buffers, reused forever.
#[derive(Debug)]
struct Buffers {
    public: RecvBatch,
    relay: RecvBatch,
    ipip: RecvBatch,
    icmp: RecvBatch,
    tun: RecvBatch,
}

/// Everything but the receive buffers (so a received packet can be borrowed while the core is changed).
#[derive(Debug)]
struct Core {
    proxy: Proxy,
    dataplane: DataPlane,
    sockets: Sockets,
    kernel: KernelState,
    metrics: ProxyMetrics,
    /// Outer packets for the raw sender.
    send: SendBatch,
    /// Where the data plane builds one packet (downlink needs the inner packet at an offset).
    scratch: Box<[u8]>,
    outputs: Vec<ProxyOutput>,
    /// Datagrams of the outputs being processed, sent after the bookkeeping.
    pending_sends: Vec<mip::roles::Transmit>,
    icmp_reports: Vec<IcmpErrorReport>,
    relayed: RelayTimes,
    /// One trace per registration (issue 7; only while traces are exported).
    traces: RegistrationTraces,
    /// The Identification of the home-agent reply being handled, to match its outcome to the relay time.
    reply_ident: Option<u64>,
    /// Sharing bindings with peer replicas (`replication:`); `None` for a single replica.
    replication: Option<Replication>,
    /// Recent registrations and errors for `/status`.
    status: Recorder,
    /// Who sent the input being handled (for the drops it causes).
    peer: Option<SocketAddr>,
    /// `dataplane.mode` as `/status` shows it.
    mode: &'static str,
}

/// The `mip-proxy` service.
#[derive(Debug)]
pub struct ProxyService {
    core: Core,
    bufs: Buffers,
    clock: Clock,
    /// Sources not drained in their last turn.
    backlog: [bool; SOURCES.len()],
}

fn seed() -> u64 {
    // RandomState is keyed from the operating system's randomness once per process.
    RandomState::new().hash_one(std::process::id())
}

impl ProxyService {
    /// Opens the sockets, installs the kernel state (TUNs, routes, rules) and creates the relay and the data
    /// plane. Nothing is left behind on error.
    pub fn new(file: &ProxyFile, ctx: &Context) -> Result<ProxyService, String> {
        let dataplane = DataPlane::new(file.dataplane_config());
        let metrics = ProxyMetrics::new(Arc::clone(&ctx.metrics), &dataplane).map_err(|e| e.to_string())?;
        // Kernel state first: with `dataplane.assign_addresses` the sockets bind to the addresses it adds (a
        // socket error then removes it again, when `kernel` drops).
        let kernel = KernelState::install(file)?;
        let sockets = Sockets::open(file)?;
        let d = &file.dataplane;
        let udp_mtu = dataplane.tunnel_mtu(Ipv4Addr::UNSPECIFIED, mip::binding::Encapsulation::UdpIpInIp);
        if d.tun_mtu() > udp_mtu {
            tracing::warn!(
                tun_mtu = d.tun_mtu(),
                tunnel_mtu = udp_mtu,
                "dataplane.tun_mtu exceeds the UDP tunnel MTU (path_mtu - 32): larger packets without DF cannot \
                 be sent to nodes behind UDP tunnels; set tun_mtu to at most the tunnel MTU"
            );
        }
        // Slots hold the largest packet of either MTU plus the outer headers the data plane adds.
        let slot = BUFFER_SIZE.max(usize::from(d.tun_mtu().max(d.path_mtu)) + 64);
        let batch = || RecvBatch::new(DEFAULT_BATCH, slot);
        let p = &file.proxy;
        let mut core = Core {
            proxy: Proxy::new(p.clone(), ctx.keys.clone(), seed()),
            relayed: RelayTimes::new(
                p.max_pending.min(65_536),
                Duration::from_millis(u64::from(p.pending_timeout_ms)),
            ),
            traces: RegistrationTraces::new(
                mip_io::telemetry::active(),
                p.max_pending.min(65_536),
                Duration::from_millis(u64::from(p.pending_timeout_ms)),
            ),
            dataplane,
            sockets,
            kernel,
            metrics,
            send: SendBatch::new(DEFAULT_BATCH, slot + overhead(mip::binding::Encapsulation::UdpIpInIp)),
            scratch: vec![0u8; slot + 2 * overhead(mip::binding::Encapsulation::UdpIpInIp)].into_boxed_slice(),
            outputs: Vec::with_capacity(8),
            pending_sends: Vec::with_capacity(4),
            icmp_reports: Vec::with_capacity(8),
            reply_ident: None,
            replication: None,
            status: ctx.status.clone(),
            peer: None,
            mode: match d.mode {
                DeploymentMode::TwoBox => "two_box",
                DeploymentMode::OneBox => "one_box",
            },
        };
        if let Some(r) = &file.replication {
            let id = file.replica_id().ok_or(
                "replication.replica_id: required unless the node address is set (proxy.node_address or \
                 MIP_NODE_ADDRESS)",
            )?;
            let m = core.metrics.replication.clone();
            core.replication = Some(Replication::start(r, id, ctx.clock, Arc::clone(&ctx.waker), m)?);
        }
        tracing::info!(
            public = %core.sockets.public.local_addr(),
            relay = %core.sockets.relay.local_addr(),
            mode = ?d.mode,
            vpn_gateways = ?d.vpn_gateways,
            home_agents = ?p.home_agents.iter().map(|h| h.address).collect::<Vec<_>>(),
            tunnel_mtu_udp = udp_mtu,
            kernel = ?core.kernel.describe(),
            "proxy ready"
        );
        if d.mode == DeploymentMode::OneBox {
            tracing::info!("one_box: packets from home-agent tunnels are routed by the local IPsec stack's rules");
        }
        Ok(ProxyService {
            core,
            bufs: Buffers {
                public: batch(),
                relay: batch(),
                ipip: batch(),
                icmp: batch(),
                tun: batch(),
            },
            clock: ctx.clock,
            backlog: [false; SOURCES.len()],
        })
    }

    /// Reads up to [`MAX_ROUNDS`] batches from `token`'s source; remembers whether it was left non-empty.
    fn drain(&mut self, token: Token, now: Now) {
        let Some(i) = SOURCES.iter().position(|t| *t == token) else {
            return;
        };
        let mut more = true;
        for _ in 0..MAX_ROUNDS {
            more = match token {
                PUBLIC => self.core.read_public(&mut self.bufs.public, now),
                RELAY => self.core.read_relay(&mut self.bufs.relay, now),
                IPIP => self.core.read_ipip(&mut self.bufs.ipip),
                ICMP => self.core.read_icmp(&mut self.bufs.icmp),
                _ => self.core.read_tun(&mut self.bufs.tun),
            };
            if !more {
                break;
            }
        }
        if let Some(b) = self.backlog.get_mut(i) {
            *b = more;
        }
    }
}

impl Core {
    // === control plane ===

    fn handle(&mut self, now: Now, input: ProxyInput<'_>) {
        self.peer = match &input {
            ProxyInput::FromMobile(d) | ProxyInput::FromHomeAgent(d) => Some(SocketAddr::V4(d.src)),
            ProxyInput::Keepalive { src, .. } => Some(SocketAddr::V4(*src)),
            ProxyInput::HomeAgentUnreachable { home_agent, .. } => Some(SocketAddr::new((*home_agent).into(), 434)),
            ProxyInput::Tick => None,
        };
        self.proxy.handle(now, input, &mut self.outputs);
        self.process_outputs(now);
    }

    /// Bookkeeping first (relay times, counters, logs), then the datagrams: whoever receives a reply finds the
    /// metrics already counting it.
    fn process_outputs(&mut self, now: Now) {
        let mut outputs = core::mem::take(&mut self.outputs);
        for o in outputs.drain(..) {
            self.traces.output(&o);
            match o {
                ProxyOutput::Send(t) => self.pending_sends.push(t),
                ProxyOutput::Relayed {
                    home_address,
                    home_agent,
                    identification,
                    ..
                } => {
                    self.relayed.insert(identification);
                    tracing::debug!(%home_address, %home_agent, identification, "request relayed to the home agent");
                }
                ProxyOutput::Outcome(o) => {
                    self.metrics.registration(o.code);
                    let nai = (!o.home_address.is_unspecified())
                        .then(|| self.proxy.bindings().get_by_home(o.home_address))
                        .flatten()
                        .and_then(|e| e.nai());
                    self.status.outcome(&o, nai);
                    if let Some(r) = &mut self.replication
                        && o.code.is_accepted()
                        && !o.home_address.is_unspecified()
                    {
                        r.publish_replay(&self.proxy, o.home_address, now);
                    }
                    if let Some(d) = self.reply_ident.take().and_then(|id| self.relayed.take(id)) {
                        self.metrics.relay_latency.observe_duration(d);
                    }
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
                ProxyOutput::Binding(c) => {
                    tracing::debug!(
                        kind = ?c.kind,
                        home_address = %c.home_address,
                        nai = ?c.nai,
                        care_of_address = %c.binding.care_of_address,
                        tunnel = %c.binding.tunnel.addr,
                        port = c.binding.tunnel.port,
                        encapsulation = c.binding.tunnel.encapsulation.as_str(),
                        lifetime = c.binding.lifetime,
                        half_bound = c.binding.half_bound,
                        "binding"
                    );
                    if let Some(r) = &mut self.replication {
                        let trace = self.traces.replicate(&c);
                        r.publish_change_traced(&self.proxy, &c, now, trace.as_ref().map(|(_, tp)| tp.as_str()));
                    }
                }
                // Traces (issue 7) end the relayed request's span here.
                ProxyOutput::PendingDone { .. } => {}
                ProxyOutput::Drop(reason) => {
                    self.metrics.control_drop(reason);
                    self.status.drop(reason.as_str(), self.peer);
                }
            }
        }
        self.outputs = outputs;
        self.reply_ident = None;
        self.peer = None;
        self.update_gauges();
        let mut sends = core::mem::take(&mut self.pending_sends);
        for t in sends.drain(..) {
            // The socket whose local address is the datagram's source (by address and port, else by address).
            let s = &self.sockets;
            let public = t.src == s.public.local_addr()
                || (t.src != s.relay.local_addr() && *t.src.ip() == *s.public.local_addr().ip());
            let (sock, errors) = if public {
                (&s.public, &self.metrics.send_errors.public)
            } else {
                (&s.relay, &self.metrics.send_errors.relay)
            };
            if let Err(e) = sock.send_transmit(&t) {
                errors.inc();
                self.status.error("send_failed", Some(SocketAddr::V4(t.dst)), &e);
                tracing::debug!(error = %e, dst = %t.dst, "sending a registration message");
            }
        }
        self.pending_sends = sends;
        self.traces.end_turn();
    }

    fn update_gauges(&self) {
        let b = self.proxy.bindings().len();
        self.metrics.bindings.set(i64::try_from(b).unwrap_or(i64::MAX));
        let p = self.proxy.pending_count();
        self.metrics.pending.set(i64::try_from(p).unwrap_or(i64::MAX));
    }

    fn tick(&mut self, now: Now) {
        if let Some(r) = &mut self.replication {
            r.mirror(&mut self.proxy, now);
            r.update_metrics();
        }
        self.handle(now, ProxyInput::Tick);
        self.relayed.prune_now_and_then();
    }

    // === sources ===

    /// UDP 434 at `proxy_public`: tunnel data to the data plane, everything else to the relay.
    fn read_public(&mut self, batch: &mut RecvBatch, now: Now) -> bool {
        let r = self.sockets.public.recv_batch(batch);
        let Some(more) = filled(r, batch, "UDP proxy_public:434") else {
            return false;
        };
        self.count_truncated(batch);
        for r in batch.iter() {
            if r.payload.first() == Some(&TYPE_TUNNEL_DATA) {
                self.uplink_udp(r, now);
            } else {
                self.traces.receive(r.src, r.payload);
                self.handle(now, ProxyInput::FromMobile(r.datagram()));
            }
        }
        self.flush();
        more
    }

    fn uplink_udp(&mut self, r: Received<'_>, now: Now) {
        // At most twice: a keepalive completing a half-bound tunnel is handled again once the binding is whole.
        for _ in 0..2 {
            let verdict = self
                .dataplane
                .uplink_udp(r.src, r.payload, self.proxy.bindings(), &mut self.scratch);
            match verdict {
                Uplink::ToVpnGateway { packet, .. } => {
                    match self.kernel.tun.write(packet) {
                        Ok(_) => self.metrics.traffic(true, Tunnel::Udp).count(packet.len()),
                        Err(_) => self.metrics.send_errors.tun.inc(),
                    }
                    return;
                }
                Uplink::Reply { len } => {
                    self.metrics.keepalives.inc();
                    self.queue_scratch(len);
                    return;
                }
                Uplink::CompleteHalfBound { src, home_address } => {
                    self.metrics.keepalives_completed.inc();
                    self.handle(now, ProxyInput::Keepalive { src, home_address });
                }
                Uplink::Drop(d) => {
                    self.metrics.data_drop(d);
                    return;
                }
            }
        }
        self.metrics.data_drop(DataDrop::HalfBound);
    }

    /// The relay socket: replies from home agents, then ICMP errors about relayed requests.
    fn read_relay(&mut self, batch: &mut RecvBatch, now: Now) -> bool {
        self.read_relay_errors(now);
        let r = self.sockets.relay.recv_batch(batch);
        let Some(more) = filled(r, batch, "the relay socket") else {
            return false;
        };
        for _ in 0..batch.truncated() {
            self.metrics
                .control_drop(mip::roles::DropReason::Malformed(mip::wire::ErrorKind::BadLength));
        }
        for r in batch.iter() {
            let ident = (r.payload.first() == Some(&TYPE_REPLY))
                .then(|| r.payload.get(REPLY_IDENT))
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            self.proxy
                .handle(now, ProxyInput::FromHomeAgent(r.datagram()), &mut self.outputs);
            self.reply_ident = ident;
            self.peer = Some(SocketAddr::V4(r.src));
            self.process_outputs(now);
        }
        more
    }

    fn read_relay_errors(&mut self, now: Now) {
        let mut reports = core::mem::take(&mut self.icmp_reports);
        reports.clear();
        if let Err(e) = self.sockets.relay.take_icmp_errors(&mut reports) {
            tracing::debug!(error = %e, "reading the relay socket's error queue");
        }
        for rep in &reports {
            if rep.is_unreachable() {
                self.status.error(
                    "home_agent_unreachable",
                    Some(SocketAddr::V4(rep.dst)),
                    format_args!("ICMP destination unreachable, code {}", rep.icmp_code),
                );
                tracing::debug!(home_agent = %rep.dst.ip(), icmp_code = rep.icmp_code, "home agent unreachable");
                self.handle(
                    now,
                    ProxyInput::HomeAgentUnreachable {
                        home_agent: *rep.dst.ip(),
                        icmp_code: rep.icmp_code,
                    },
                );
            }
        }
        self.icmp_reports = reports;
    }

    /// Raw IPIP: from mobile nodes (to `proxy_public`) or from home agents (to `proxy_private`).
    fn read_ipip(&mut self, batch: &mut RecvBatch) -> bool {
        let r = self.sockets.ipip.recv_batch(batch);
        let Some(more) = filled(r, batch, "the raw IPIP socket") else {
            return false;
        };
        self.count_truncated(batch);
        let config = self.dataplane.config();
        let (public, private) = (config.proxy_public, config.proxy_private);
        for r in batch.iter() {
            let dst = *r.dst.ip();
            if dst == public {
                match self.dataplane.uplink_ipip(r.payload, self.proxy.bindings()) {
                    Uplink::ToVpnGateway { packet, .. } => match self.kernel.tun.write(packet) {
                        Ok(_) => self.metrics.traffic(true, Tunnel::Ipip).count(packet.len()),
                        Err(_) => self.metrics.send_errors.tun.inc(),
                    },
                    Uplink::Reply { len } => {
                        self.metrics.keepalives.inc();
                        self.queue_scratch(len);
                    }
                    // IP-in-IP tunnels are never half-bound (only RFC 3519 R-flag tunnels are).
                    Uplink::CompleteHalfBound { .. } => self.metrics.data_drop(DataDrop::HalfBound),
                    Uplink::Drop(d) => self.metrics.data_drop(d),
                }
            } else if dst == private {
                match self.dataplane.from_home_agent(r.payload, self.proxy.bindings()) {
                    FromHomeAgent::ToVpnGateway { packet } => match self.kernel.ha_tun.write(packet) {
                        Ok(_) => {
                            self.metrics.ha_packets.inc();
                            self.metrics.ha_bytes.add(packet.len() as u64);
                        }
                        Err(_) => self.metrics.send_errors.ha_tun.inc(),
                    },
                    FromHomeAgent::Drop(d) => self.metrics.data_drop(d),
                }
            } else {
                self.metrics.data_drop(DataDrop::OuterAddress);
            }
        }
        self.flush();
        more
    }

    /// Raw ICMP: errors about packets we tunnelled, relayed to the original sender.
    fn read_icmp(&mut self, batch: &mut RecvBatch) -> bool {
        let r = self.sockets.icmp.recv_batch(batch);
        let Some(more) = filled(r, batch, "the raw ICMP socket") else {
            return false;
        };
        self.count_truncated(batch);
        for r in batch.iter() {
            match self.dataplane.icmp_from_tunnel(r.payload, &mut self.scratch) {
                Downlink::Icmp { len, .. } | Downlink::Encapsulated { len, .. } => {
                    self.metrics.icmp_relayed.inc();
                    self.queue_scratch(len);
                }
                Downlink::Drop(d) => self.metrics.data_drop(d),
            }
        }
        self.flush();
        more
    }

    /// The TUN: packets the kernel routed to home addresses, encapsulated toward their binding.
    fn read_tun(&mut self, batch: &mut RecvBatch) -> bool {
        let r = self.kernel.tun.read_batch(batch);
        let Some(more) = filled(r, batch, "the TUN") else {
            return false;
        };
        self.count_truncated(batch);
        let at = self.dataplane.downlink_offset();
        for r in batch.iter() {
            let len = r.payload.len();
            let Some(slot) = self.scratch.get_mut(at..at + len) else {
                self.metrics.data_drop(DataDrop::NoRoom);
                continue;
            };
            slot.copy_from_slice(r.payload);
            match self.dataplane.downlink(&mut self.scratch, len, self.proxy.bindings()) {
                Downlink::Encapsulated { len: out, .. } => {
                    // The outer headers are all the packet gained: 20 bytes for IP-in-IP, 32 for UDP.
                    let tunnel = if out.saturating_sub(len) > overhead(mip::binding::Encapsulation::IpInIp) {
                        Tunnel::Udp
                    } else {
                        Tunnel::Ipip
                    };
                    self.metrics.traffic(false, tunnel).count(len);
                    self.queue_scratch(out);
                }
                Downlink::Icmp { len: out, .. } => {
                    self.metrics.icmp_generated.inc();
                    self.queue_scratch(out);
                }
                Downlink::Drop(d) => self.metrics.data_drop(d),
            }
        }
        self.flush();
        more
    }

    // === output ===

    fn count_truncated(&self, batch: &RecvBatch) {
        let t = batch.truncated();
        if t > 0 {
            self.metrics.data_drops.add(DataDrop::Malformed.as_str(), t as u64);
        }
    }

    /// Queues `scratch[..len]` (a complete IPv4 packet) for the raw sender.
    fn queue_scratch(&mut self, len: usize) {
        if self.send.is_full() {
            self.flush();
        }
        let Some(packet) = self.scratch.get(..len) else {
            self.metrics.data_drop(DataDrop::NoRoom);
            return;
        };
        let dst = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        if self.send.push(packet, dst).is_err() {
            self.metrics.data_drop(DataDrop::NoRoom);
        }
    }

    /// Sends what is queued for the raw sender. Packets the kernel refuses, or has no room for, are counted
    /// and dropped (datagram semantics: no retry queue).
    fn flush(&mut self) {
        mip_io::daemon::flush_raw(&self.sockets.sender, &mut self.send, &self.metrics.send_errors.raw);
    }
}

/// `/status` `replication`: this replica, its peers (not itself) and what it sends to its subscribers.
fn replication_json(s: &mip_replication::transport::Status) -> Value {
    let peers: Vec<Value> = s
        .peers
        .iter()
        .filter(|p| !p.is_self)
        .map(|p| {
            json!({
                "addr": p.addr.map(|a| a.to_string()),
                "replica_id": p.replica_id,
                "connected": p.connected,
                "snapshot_received": p.snapshot_received,
                "lag_ms_p50": p.lag_ms_p50,
                "lag_ms_p99": p.lag_ms_p99,
                "last_error": p.last_error,
            })
        })
        .collect();
    json!({
        "enabled": true,
        "replica_id": s.replica_id,
        "caught_up": s.caught_up,
        "peers": peers,
        "subscribers": s.subscribers.len(),
        "published": s.published,
        "overflows": s.overflows,
        "snapshots_sent": s.snapshots_sent,
    })
}

impl Service for ProxyService {
    fn register(&mut self, registry: &MioRegistry) -> io::Result<()> {
        let c = &mut self.core;
        registry.register(&mut c.sockets.public, PUBLIC, Interest::READABLE)?;
        registry.register(&mut c.sockets.relay, RELAY, Interest::READABLE)?;
        registry.register(&mut c.sockets.ipip, IPIP, Interest::READABLE)?;
        registry.register(&mut c.sockets.icmp, ICMP, Interest::READABLE)?;
        registry.register(&mut c.kernel.tun, TUN, Interest::READABLE)?;
        Ok(())
    }

    fn ready(&mut self, token: Token, now: Now) {
        self.drain(token, now);
    }

    fn tick(&mut self, now: Now) {
        for (i, token) in SOURCES.iter().enumerate() {
            if self.backlog.get(i).copied().unwrap_or(false) {
                self.drain(*token, now);
            }
        }
        self.core.tick(now);
    }

    fn next_timer(&mut self) -> Option<Instant> {
        if self.backlog.iter().any(|b| *b) || self.core.replication.as_ref().is_some_and(Replication::backlog) {
            return Some(self.clock.instant());
        }
        self.core.proxy.next_timer()
    }

    fn set_keys(&mut self, keys: KeyStore) {
        self.core.proxy.set_keys(keys);
    }

    fn bindings_json(&self) -> String {
        bindings::to_json(self.core.proxy.bindings(), self.clock.instant()).to_string()
    }

    fn role(&self) -> &'static str {
        "proxy"
    }

    fn status_json(&self) -> Value {
        let c = &self.core;
        json!({
            "bindings": c.proxy.bindings().len(),
            "pending_requests": c.proxy.pending_count(),
            "mode": c.mode,
            "replication": c.replication.as_ref().and_then(Replication::status).map_or(
                json!({"enabled": false}),
                |s| replication_json(&s),
            ),
        })
    }

    fn serving(&self) -> bool {
        self.core.replication.as_ref().is_none_or(Replication::caught_up)
    }

    fn shutdown(&mut self) {
        // `/readyz` is already false (withdrawn): hand the last changes to the peers before going.
        if let Some(r) = &mut self.core.replication {
            r.shutdown();
        }
        self.core.flush();
        self.core.kernel.remove();
        tracing::info!(bindings = self.core.proxy.bindings().len(), "kernel state removed");
    }
}

//! Registration storms: many synthetic Mobile Nodes registering with a Mobile IP agent at once (issue 5:
//! registrations per second with 1, 2 and 3 replicas, replication lag under load, replays at other replicas).
//!
//! Synthetic node `i` has the home address [`plan::storm_hoa`]`(i)` and the lab's MN-HA security association
//! ([`system::MN_HA_SPI`], [`system::MN_HA_KEY`], HMAC-MD5 with timestamp replay protection: the keys files'
//! defaults). Its request is what `mip-mn` sends for a co-located care-of address when it is not behind a
//! foreign agent (`mip::roles::mn`): flags D (decapsulation by the node) and T (reverse tunnelling, which the
//! proxy requires), Home Agent field = the agent addressed (the proxy's public address), care-of address = the
//! sender's own source address (so the proxy detects no NAT and binds an IP-in-IP tunnel), a UDP Tunnel Request
//! (F = 0), the HA Parameter extension naming the actual home agent [`plan::HA_HOME`], and the MN-HA
//! authentication extension. A deregistration (lifetime 0) deregisters every binding of the node: flags 0,
//! care-of address = home address, no UDP Tunnel Request (RFC 5944 §3.6.1.2, spec §2.6). Messages are built with
//! `mip::wire::MessageWriter` and authenticated with `mip::auth::SecurityAssociation`, never by hand.
//!
//! Identifications are NTP timestamps of now (RFC 5944 §5.7.1) from one [`IdentClock`] per storm that never
//! returns the same value twice, so each node's requests are strictly increasing, also across senders and
//! across storms run from the same clock.
//!
//! [`run_storm`] binds `senders` UDP sockets with distinct source ports inside a namespace (an ECMP router that
//! hashes L4 spreads them over the replicas) and drives each from its own thread: node `i` always uses sender
//! `i % senders`; a sender keeps at most `window` requests outstanding (and at most one per node), paces them at
//! its share of `rate` if one is given, retransmits an unanswered request `retransmits` times (with a new
//! Identification, as timestamps require: RFC 5944 §3.6.3) after `timeout`, and then counts it as timed out. A
//! reply counts if it is a Registration Reply for one of the sender's nodes, its Identification's low 32 bits
//! are those of an outstanding request of that node (RFC 5944 §3.6.2.1), and it carries exactly one MN-HA
//! authenticator that verifies; anything else is counted and otherwise ignored, as a node would.

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::replay::ReplayStyle;
use mip::time::NtpTimestamp;
use mip::wire::{
    AuthKind, Dialect, ExtensionBody, HaParameter, MessageWriter, Reply, ReplyCode, RequestFlags, RequestRepr,
    UdpTunnelRequest,
};

use crate::error::{Error, IoContext, Result};
use crate::netns;
use crate::plan;
use crate::system;

/// UDP port of Mobile IP registrations (RFC 5944 §3.1).
pub const MIP_PORT: u16 = 434;
/// The encapsulation a node asks for in its UDP Tunnel Request: 4 = IP-in-UDP (RFC 3519 §3.1), as `mip-mn`.
const UDP_ENCAP_IP: u8 = 4;
/// Largest request built here (fixed part 24 + UTRQ 8 + HA Parameter 8 + MN-HA 22, with room to spare).
const REQUEST_BUF_LEN: usize = 128;
/// Largest reply read.
const REPLY_BUF_LEN: usize = 2048;
/// Longest a sender sleeps in `recv` before looking at its timers again.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// What a storm does.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Synthetic nodes `0..nodes` (at most [`plan::STORM_MAX`]).
    pub nodes: u32,
    /// How many times every node registers (round after round; each request with a fresh Identification).
    pub rounds: u32,
    /// UDP sockets with distinct source ports (so an L4-hashing ECMP router spreads them); node `i` uses sender
    /// `i % senders`.
    pub senders: usize,
    /// Source address of every sender, and the care-of address registered.
    pub src: Ipv4Addr,
    /// The agent registered with (its address is also the request's Home Agent field).
    pub dst: SocketAddrV4,
    /// Requested lifetime, seconds (ignored when `deregister`).
    pub lifetime: u16,
    /// Requests per second over all senders (first transmissions); `None` = as fast as the window allows.
    pub rate: Option<u32>,
    /// Requests outstanding per sender.
    pub window: usize,
    /// How long a request waits for its reply before it is retransmitted or counted as timed out.
    pub timeout: Duration,
    /// Retransmissions of an unanswered request (each with a new Identification) before it times out.
    pub retransmits: u32,
    /// Deregister (lifetime 0, care-of address = home address: every binding of the node) instead of
    /// registering.
    pub deregister: bool,
}

impl Default for StormOptions {
    /// 1,000 nodes, one round, 8 senders from the lab's `inet` address ([`plan::INET_DMZ`]) to the proxy's
    /// public address, lifetime 600 s, no rate limit, window 32, timeout 1 s, one retransmission.
    fn default() -> Self {
        StormOptions {
            nodes: 1_000,
            rounds: 1,
            senders: 8,
            src: plan::INET_DMZ,
            dst: SocketAddrV4::new(plan::PROXY_PUBLIC, MIP_PORT),
            lifetime: 600,
            rate: None,
            window: 32,
            timeout: Duration::from_secs(1),
            retransmits: 1,
            deregister: false,
        }
    }
}

impl StormOptions {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Usage(format!("storm: {what}")));
        if self.nodes == 0 || self.nodes > plan::STORM_MAX {
            return bad(&format!("nodes must be 1..={} (got {})", plan::STORM_MAX, self.nodes));
        }
        if self.senders == 0 || self.window == 0 || self.rounds == 0 {
            return bad("senders, window and rounds must be at least 1");
        }
        if self.rate == Some(0) {
            return bad("rate must be at least 1 request/s (or none)");
        }
        if self.timeout.is_zero() {
            return bad("timeout must not be zero");
        }
        Ok(())
    }
}

/// What a storm achieved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StormReport {
    /// Requests sent (first transmissions; `nodes × rounds` unless interrupted).
    pub sent: u64,
    /// Retransmissions (not in `sent`).
    pub retransmitted: u64,
    /// Requests accepted (code 0 or 1).
    pub accepted: u64,
    /// Requests denied, by reply code.
    pub denied: BTreeMap<u8, u64>,
    /// Requests with no usable reply after every retransmission.
    pub timed_out: u64,
    /// Replies that did not parse, or whose MN-HA authenticator was missing, repeated or wrong (discarded).
    pub bad_replies: u64,
    /// Authenticated replies that answer no outstanding request (late, duplicated, or other nodes').
    pub stray_replies: u64,
    /// From the first request to the last outcome, seconds.
    pub elapsed_s: f64,
    /// `accepted / elapsed_s`.
    pub per_second: f64,
    /// Median time from a request's first transmission to its (accepting or denying) reply, ms.
    pub latency_ms_p50: f64,
    /// 99th percentile of the same, ms.
    pub latency_ms_p99: f64,
}

impl StormReport {
    /// Every request got an accepting reply.
    pub fn all_accepted(&self) -> bool {
        self.accepted == self.sent && self.sent > 0
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let denied = self
            .denied
            .iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "{} sent, {} accepted, denied [{}], {} timed out, {} retransmitted, {} bad / {} stray replies; \
             {:.2} s, {:.0}/s, latency p50 {:.2} ms p99 {:.2} ms",
            self.sent,
            self.accepted,
            denied,
            self.timed_out,
            self.retransmitted,
            self.bad_replies,
            self.stray_replies,
            self.elapsed_s,
            self.per_second,
            self.latency_ms_p50,
            self.latency_ms_p99
        )
    }
}

/// Strictly increasing NTP timestamps of now (RFC 5944 §5.7.1): the wall clock, or one unit (2⁻³² s) past the
/// previous value if the clock has not moved. Shared by threads.
#[derive(Debug, Default)]
pub struct IdentClock {
    last: AtomicU64,
}

impl IdentClock {
    /// A clock that has issued nothing.
    pub fn new() -> Self {
        IdentClock::default()
    }

    /// The next Identification: now, and greater than every one issued before.
    pub fn next(&self) -> u64 {
        let now = ntp_now().0;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev.wrapping_add(1));
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

/// The wall clock as an NTP timestamp.
pub fn ntp_now() -> NtpTimestamp {
    NtpTimestamp::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// The MN-HA security association every synthetic node shares with the agent (the lab's keys files:
/// [`system::MN_HA_SPI`], [`system::MN_HA_KEY`], default algorithm HMAC-MD5 and default timestamp replay
/// protection).
pub fn mn_ha_sa() -> Result<SecurityAssociation> {
    let spi = Spi::new(system::MN_HA_SPI).map_err(|e| Error::Usage(format!("MN-HA SPI: {e}")))?;
    let key = Key::from_hex(system::MN_HA_KEY).ok_or_else(|| Error::Usage("MN-HA key is not hexadecimal".into()))?;
    Ok(SecurityAssociation::new(
        spi,
        Algorithm::HmacMd5,
        key,
        ReplayStyle::default(),
    ))
}

/// The index of the synthetic node with home address `hoa`, if it is one of `0..nodes`.
pub fn storm_index(hoa: Ipv4Addr, nodes: u32) -> Option<u32> {
    let i = u32::from(hoa).wrapping_sub(u32::from(plan::storm_hoa(0)));
    (i < nodes.min(plan::STORM_MAX) && plan::storm_hoa(i) == hoa).then_some(i)
}

/// One request of one node (see the module documentation for what it carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRequest {
    /// Home address.
    pub home_address: Ipv4Addr,
    /// The agent addressed: the Home Agent field.
    pub agent: Ipv4Addr,
    /// The actual home agent, sent in the HA Parameter extension (`None`: no extension).
    pub actual_home_agent: Option<Ipv4Addr>,
    /// The sender's source address: the care-of address of a registration.
    pub src: Ipv4Addr,
    /// Requested lifetime; 0 deregisters every binding.
    pub lifetime: u16,
    /// Identification.
    pub identification: u64,
}

impl NodeRequest {
    /// The request's bytes, authenticated with `sa`.
    pub fn build(&self, sa: &SecurityAssociation) -> Result<Vec<u8>> {
        let dialect = Dialect::default();
        let register = self.lifetime != 0;
        let repr = RequestRepr {
            flags: if register {
                RequestFlags(RequestFlags::D | RequestFlags::T)
            } else {
                RequestFlags(0)
            },
            lifetime: self.lifetime,
            home_address: self.home_address,
            home_agent: self.agent,
            care_of_address: if register { self.src } else { self.home_address },
            identification: self.identification,
        };
        let wire = |e: mip::wire::Error| Error::Usage(format!("building the request of {}: {e}", self.home_address));
        let mut buf = [0u8; REQUEST_BUF_LEN];
        let mut w = MessageWriter::request(&mut buf, &repr, &dialect).map_err(wire)?;
        if register {
            w.push(&ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
                encapsulation: UDP_ENCAP_IP,
                ..UdpTunnelRequest::default()
            }))
            .map_err(wire)?;
        }
        if let Some(ha) = self.actual_home_agent {
            w.push(&ExtensionBody::HaParameter(HaParameter {
                reserved: 0,
                home_agent: ha,
            }))
            .map_err(wire)?;
        }
        w.push_auth(AuthKind::MobileHome, sa).map_err(wire)?;
        Ok(w.as_bytes().to_vec())
    }
}

/// The request of synthetic node `i` sent from `src` to the lab proxy ([`plan::PROXY_PUBLIC`]), actual home
/// agent [`plan::HA_HOME`], with `lifetime` (0 = deregister every binding) and Identification `ident`,
/// authenticated with [`mn_ha_sa`]. Tests replay such bytes at other replicas.
pub fn request(i: u32, src: Ipv4Addr, lifetime: u16, ident: u64) -> Result<Vec<u8>> {
    NodeRequest {
        home_address: plan::storm_hoa(i),
        agent: plan::PROXY_PUBLIC,
        actual_home_agent: Some(plan::HA_HOME),
        src,
        lifetime,
        identification: ident,
    }
    .build(&mn_ha_sa()?)
}

/// What a reply to one of our requests says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// An authenticated Registration Reply for `node` with this code and Identification.
    Answer {
        /// The node it is for.
        node: u32,
        /// Reply code.
        code: ReplyCode,
        /// Identification.
        identification: u64,
    },
    /// Not a reply, malformed, not for a node of ours, or not (singly, correctly) authenticated.
    Bad,
}

/// Judges a datagram received by a storm sender: a Registration Reply for one of nodes `0..nodes` with exactly
/// one MN-HA authentication extension that verifies with `sa` (RFC 5944 §3.6.2.1).
pub fn check_reply(bytes: &[u8], nodes: u32, sa: &SecurityAssociation) -> ReplyVerdict {
    let Ok(reply) = Reply::parse(bytes, &Dialect::default()) else {
        return ReplyVerdict::Bad;
    };
    let Some(node) = storm_index(reply.repr.home_address, nodes) else {
        return ReplyVerdict::Bad;
    };
    if reply.auth_count(AuthKind::MobileHome) != 1 {
        return ReplyVerdict::Bad;
    }
    match reply.auth(AuthKind::MobileHome) {
        Some(ext) if sa.verify(reply.bytes, &ext).is_ok() => ReplyVerdict::Answer {
            node,
            code: reply.repr.code,
            identification: reply.repr.identification,
        },
        _ => ReplyVerdict::Bad,
    }
}

/// Binds `opts.senders` UDP sockets to `opts.src` (ephemeral ports) inside namespace `ns` (full name) and
/// connects them to `opts.dst`. They can be used from any thread afterwards.
pub fn bind_senders(ns: &str, opts: &StormOptions) -> Result<Vec<UdpSocket>> {
    let (n, src, dst) = (opts.senders, opts.src, opts.dst);
    netns::run_in(ns, move || bind_local(n, src, dst))
}

/// [`bind_senders`] in the calling thread's namespace.
pub fn bind_local(n: usize, src: Ipv4Addr, dst: SocketAddrV4) -> Result<Vec<UdpSocket>> {
    (0..n)
        .map(|k| {
            let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).ctx(|| format!("storm sender {k}: bind {src}"))?;
            s.connect(dst).ctx(|| format!("storm sender {k}: connect {dst}"))?;
            Ok(s)
        })
        .collect()
}

/// Runs a storm from namespace `ns` (full name): [`bind_senders`], then [`run_storm_on`].
pub fn run_storm(ns: &str, opts: &StormOptions) -> Result<StormReport> {
    opts.validate()?;
    let sockets = bind_senders(ns, opts)?;
    run_storm_on(sockets, opts)
}

/// Runs a storm over sockets already bound to `opts.src` and connected to `opts.dst` (one per sender;
/// `opts.senders` is ignored in favour of `sockets.len()`).
pub fn run_storm_on(sockets: Vec<UdpSocket>, opts: &StormOptions) -> Result<StormReport> {
    opts.validate()?;
    if sockets.is_empty() {
        return Err(Error::Usage("storm: no sender sockets".into()));
    }
    let sa = mn_ha_sa()?;
    let clock = Arc::new(IdentClock::new());
    let count = sockets.len();
    let start = Instant::now();
    let handles = sockets
        .into_iter()
        .enumerate()
        .map(|(k, socket)| {
            let job = SenderJob {
                index: k,
                count,
                socket,
                opts: opts.clone(),
                sa: sa.clone(),
                clock: Arc::clone(&clock),
                start,
            };
            thread::Builder::new()
                .name(format!("storm-{k}"))
                .spawn(move || job.run())
                .ctx(|| format!("spawning storm sender {k}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = SenderStats::default();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(s),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(Error::Usage("a storm sender thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(total.report())
}

/// A request of one node in flight.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// Identifications sent for it (the first, then one per retransmission); a reply to any of them counts.
    idents: [u64; 2],
    first_sent: Instant,
    last_sent: Instant,
    retransmissions: u32,
}

/// Counts of one sender.
#[derive(Debug, Default)]
struct SenderStats {
    sent: u64,
    retransmitted: u64,
    accepted: u64,
    denied: BTreeMap<u8, u64>,
    timed_out: u64,
    bad_replies: u64,
    stray_replies: u64,
    latencies_ms: Vec<f64>,
    /// Since the storm started, seconds, when the last outcome was known.
    finished_s: f64,
}

impl SenderStats {
    fn merge(&mut self, o: SenderStats) {
        self.sent += o.sent;
        self.retransmitted += o.retransmitted;
        self.accepted += o.accepted;
        for (c, n) in o.denied {
            *self.denied.entry(c).or_default() += n;
        }
        self.timed_out += o.timed_out;
        self.bad_replies += o.bad_replies;
        self.stray_replies += o.stray_replies;
        self.latencies_ms.extend(o.latencies_ms);
        self.finished_s = self.finished_s.max(o.finished_s);
    }

    fn report(mut self) -> StormReport {
        self.latencies_ms.sort_by(f64::total_cmp);
        let elapsed_s = self.finished_s;
        StormReport {
            sent: self.sent,
            retransmitted: self.retransmitted,
            accepted: self.accepted,
            denied: self.denied,
            timed_out: self.timed_out,
            bad_replies: self.bad_replies,
            stray_replies: self.stray_replies,
            elapsed_s,
            per_second: if elapsed_s > 0.0 {
                self.accepted as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms_p50: percentile(&self.latencies_ms, 0.50),
            latency_ms_p99: percentile(&self.latencies_ms, 0.99),
        }
    }
}

/// The `q` quantile (nearest rank) of sorted `v`; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

/// One sender's share of the storm.
struct SenderJob {
    index: usize,
    count: usize,
    socket: UdpSocket,
    opts: StormOptions,
    sa: SecurityAssociation,
    clock: Arc<IdentClock>,
    start: Instant,
}

impl SenderJob {
    /// The nodes of this sender, in order.
    fn nodes(&self) -> Vec<u32> {
        (0..self.opts.nodes)
            .filter(|i| usize::try_from(*i).is_ok_and(|i| i % self.count == self.index))
            .collect()
    }

    fn send(&self, node: u32) -> Result<u64> {
        let ident = self.clock.next();
        let bytes = NodeRequest {
            home_address: plan::storm_hoa(node),
            agent: *self.opts.dst.ip(),
            actual_home_agent: Some(plan::HA_HOME),
            src: self.opts.src,
            lifetime: if self.opts.deregister { 0 } else { self.opts.lifetime },
            identification: ident,
        }
        .build(&self.sa)?;
        match self.socket.send(&bytes) {
            Ok(_) => {}
            // An ICMP error from an earlier datagram surfaces on a connected socket; this one was not sent, so
            // the retransmission timer deals with it. A full socket buffer is the same.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::WouldBlock) => {}
            Err(e) => return Err(Error::io(format!("storm sender {}: send", self.index), e)),
        }
        Ok(ident)
    }

    fn run(self) -> Result<SenderStats> {
        let mine = self.nodes();
        let mut stats = SenderStats::default();
        let total = (mine.len() as u64).saturating_mul(u64::from(self.opts.rounds));
        // Pacing: this sender's share of the rate.
        let interval = self.opts.rate.map(|r| {
            let share = f64::from(r) / self.count as f64;
            Duration::from_secs_f64(1.0 / share.max(1e-6))
        });
        let mut outstanding: HashMap<u32, Outstanding> = HashMap::with_capacity(self.opts.window);
        let mut next: u64 = 0;
        let mut buf = [0u8; REPLY_BUF_LEN];
        loop {
            let now = Instant::now();
            // 1. Send what is due, within the window, one request per node at a time.
            while next < total && outstanding.len() < self.opts.window {
                let due = interval.map(|iv| self.start + iv.mul_f64(next as f64));
                if due.is_some_and(|d| d > now) {
                    break;
                }
                let Some(node) = usize::try_from(next % (mine.len().max(1) as u64))
                    .ok()
                    .and_then(|k| mine.get(k).copied())
                else {
                    break;
                };
                if outstanding.contains_key(&node) {
                    break;
                }
                let ident = self.send(node)?;
                let t = Instant::now();
                outstanding.insert(
                    node,
                    Outstanding {
                        idents: [ident, ident],
                        first_sent: t,
                        last_sent: t,
                        retransmissions: 0,
                    },
                );
                stats.sent += 1;
                next += 1;
            }
            // 2. Retransmissions and time-outs.
            let now = Instant::now();
            let expired: Vec<u32> = outstanding
                .iter()
                .filter(|(_, o)| now.duration_since(o.last_sent) >= self.opts.timeout)
                .map(|(n, _)| *n)
                .collect();
            for node in expired {
                let Some(mut o) = outstanding.remove(&node) else {
                    continue;
                };
                if o.retransmissions < self.opts.retransmits {
                    let ident = self.send(node)?;
                    o.idents = [o.idents[0], ident];
                    o.last_sent = Instant::now();
                    o.retransmissions += 1;
                    stats.retransmitted += 1;
                    outstanding.insert(node, o);
                } else {
                    stats.timed_out += 1;
                    stats.finished_s = self.start.elapsed().as_secs_f64();
                }
            }
            if next >= total && outstanding.is_empty() {
                break;
            }
            // 3. Wait for a reply until the next thing to do.
            let mut wake = now + MAX_WAIT;
            if let Some(o) = outstanding.values().map(|o| o.last_sent + self.opts.timeout).min() {
                wake = wake.min(o);
            }
            if next < total
                && outstanding.len() < self.opts.window
                && let Some(iv) = interval
            {
                wake = wake.min(self.start + iv.mul_f64(next as f64));
            }
            let wait = wake
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(200));
            self.socket
                .set_read_timeout(Some(wait))
                .ctx(|| format!("storm sender {}: set_read_timeout", self.index))?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(Error::io(format!("storm sender {}: receive", self.index), e)),
            };
            let received = Instant::now();
            // 4. Match the reply to a node's outstanding request.
            let ReplyVerdict::Answer {
                node,
                code,
                identification,
            } = check_reply(buf.get(..n).unwrap_or(&[]), self.opts.nodes, &self.sa)
            else {
                stats.bad_replies += 1;
                continue;
            };
            let matches = outstanding
                .get(&node)
                .is_some_and(|o| o.idents.iter().any(|i| low32(*i) == low32(identification)));
            let Some(o) = matches.then(|| outstanding.remove(&node)).flatten() else {
                stats.stray_replies += 1;
                continue;
            };
            stats
                .latencies_ms
                .push(received.duration_since(o.first_sent).as_secs_f64() * 1000.0);
            if code.is_accepted() {
                stats.accepted += 1;
            } else {
                *stats.denied.entry(code.value()).or_default() += 1;
            }
            stats.finished_s = self.start.elapsed().as_secs_f64();
        }
        Ok(stats)
    }
}

const fn low32(v: u64) -> u32 {
    v as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use mip::wire::{ReplyRepr, Request};
    use std::collections::HashSet;
    use std::net::SocketAddr;

    fn local_v4(s: &UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        }
    }

    #[test]
    fn a_request_parses_back_and_verifies() {
        let ident = IdentClock::new().next();
        let bytes = request(7, plan::INET_DMZ, 600, ident).unwrap();
        let req = Request::parse(&bytes, &Dialect::default()).unwrap();
        let r = req.repr;
        assert_eq!(r.home_address, plan::storm_hoa(7));
        assert_eq!(r.home_agent, plan::PROXY_PUBLIC);
        assert_eq!(r.care_of_address, plan::INET_DMZ);
        assert_eq!(r.lifetime, 600);
        assert_eq!(r.identification, ident);
        assert!(r.flags.decapsulation_by_mn() && r.flags.reverse_tunnel());
        assert!(!r.flags.reserved_set() && !r.flags.simultaneous());
        assert_eq!(req.auth_count(AuthKind::MobileHome), 1);
        let ext = req.auth(AuthKind::MobileHome).unwrap();
        // The SA as the lab's keys files describe it (defaults: HMAC-MD5, timestamps).
        let keys: mip::config::KeysFile = mip::config::from_yaml(&format!(
            "security_associations:\n  - home_address: {}\n    spi: {}\n    key: {}\n",
            plan::storm_hoa(7),
            system::MN_HA_SPI,
            system::MN_HA_KEY
        ))
        .unwrap();
        let store = keys.to_keystore().unwrap();
        let sa = store.get(plan::storm_hoa(7), system::MN_HA_SPI).unwrap();
        sa.verify(req.bytes, &ext).unwrap();
        assert_eq!(sa, &mn_ha_sa().unwrap());
        // Extensions as mip-mn sends them: UDP Tunnel Request, HA Parameter, then MN-HA last.
        let bodies: Vec<_> = req.extensions().map(|e| e.body).collect();
        assert!(matches!(bodies[0], ExtensionBody::UdpTunnelRequest(u) if !u.force && u.encapsulation == 4));
        assert!(matches!(bodies[1], ExtensionBody::HaParameter(h) if h.home_agent == plan::HA_HOME));
        assert_eq!(bodies.len(), 3);
        // A changed byte breaks the authenticator.
        let mut tampered = bytes.clone();
        tampered[3] ^= 1;
        let t = Request::parse(&tampered, &Dialect::default()).unwrap();
        assert!(sa.verify(t.bytes, &t.auth(AuthKind::MobileHome).unwrap()).is_err());
    }

    #[test]
    fn a_deregistration_deregisters_every_binding() {
        let bytes = request(3, plan::INET_DMZ, 0, IdentClock::new().next()).unwrap();
        let req = Request::parse(&bytes, &Dialect::default()).unwrap();
        assert_eq!(req.repr.lifetime, 0);
        assert_eq!(req.repr.care_of_address, plan::storm_hoa(3));
        assert_eq!(req.repr.flags, RequestFlags(0));
        assert!(
            !req.extensions()
                .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)))
        );
        mn_ha_sa()
            .unwrap()
            .verify(req.bytes, &req.auth(AuthKind::MobileHome).unwrap())
            .unwrap();
    }

    #[test]
    fn identifications_strictly_increase_and_track_the_clock() {
        let clock = Arc::new(IdentClock::new());
        let before = ntp_now().0;
        let mut all: Vec<u64> = thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let c = Arc::clone(&clock);
                    s.spawn(move || {
                        let v: Vec<u64> = (0..10_000).map(|_| c.next()).collect();
                        assert!(v.windows(2).all(|w| w[1] > w[0]), "per thread");
                        v
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no Identification is issued twice");
        assert!(all[0] >= before);
        // Within a second of the wall clock (the agent's tolerance is 7 s).
        let after = ntp_now().0;
        assert!(*all.last().unwrap() <= after + (1u64 << 32));
    }

    #[test]
    fn storm_index_inverts_storm_hoa() {
        assert_eq!(storm_index(plan::storm_hoa(0), 10), Some(0));
        assert_eq!(storm_index(plan::storm_hoa(9), 10), Some(9));
        assert_eq!(storm_index(plan::storm_hoa(10), 10), None);
        assert_eq!(storm_index(plan::HOA, 10), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    /// What the fake agent does with a request.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Accept (code 0, Identification echoed), authenticated.
        Accept,
        /// Deny with this code, authenticated.
        Deny(u8),
        /// Answer with a wrong authenticator first, then (after the retransmission) accept.
        BadAuthThenAccept,
        /// Never answer.
        Silent,
    }

    /// An in-process agent on 127.0.0.1: verifies each request as a home agent would (MN-HA, timestamps
    /// strictly increasing per node) and answers with a reply built by `mip::wire::MessageWriter`.
    fn fake_agent(behaviour: Behaviour, expect: usize) -> (SocketAddrV4, thread::JoinHandle<(usize, usize)>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = local_v4(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let h = thread::spawn(move || {
            let sa = mn_ha_sa().unwrap();
            let mut last: HashMap<Ipv4Addr, u64> = HashMap::new();
            let mut answered_badly: HashSet<Ipv4Addr> = HashSet::new();
            let (mut seen, mut refused) = (0usize, 0usize);
            let mut buf = [0u8; 2048];
            let mut idle = 0;
            loop {
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    // Done once everything expected arrived and the line went quiet (or after 3 s of silence).
                    Err(_) if seen >= expect || idle >= 30 => break,
                    Err(_) => {
                        idle += 1;
                        continue;
                    }
                };
                idle = 0;
                seen += 1;
                let req = Request::parse(&buf[..n], &Dialect::default()).unwrap();
                let r = req.repr;
                assert_eq!(r.home_agent, *addr.ip());
                sa.verify(req.bytes, &req.auth(AuthKind::MobileHome).unwrap()).unwrap();
                if last
                    .insert(r.home_address, r.identification)
                    .is_some_and(|prev| r.identification <= prev)
                {
                    refused += 1;
                }
                let (code, bad) = match behaviour {
                    Behaviour::Accept => (0, false),
                    Behaviour::Deny(c) => (c, false),
                    Behaviour::BadAuthThenAccept => (0, answered_badly.insert(r.home_address)),
                    Behaviour::Silent => continue,
                };
                let repr = ReplyRepr {
                    code: ReplyCode::from(code),
                    lifetime: r.lifetime,
                    home_address: r.home_address,
                    home_agent: r.home_agent,
                    identification: r.identification,
                };
                let mut out = [0u8; 256];
                let mut w = MessageWriter::reply(&mut out, &repr, &Dialect::default()).unwrap();
                if bad {
                    let other = SecurityAssociation::new(
                        Spi::new(system::MN_HA_SPI).unwrap(),
                        Algorithm::HmacMd5,
                        Key::new(b"not the key"),
                        ReplayStyle::default(),
                    );
                    w.push_auth(AuthKind::MobileHome, &other).unwrap();
                } else {
                    w.push_auth(AuthKind::MobileHome, &sa).unwrap();
                }
                sock.send_to(w.as_bytes(), from).unwrap();
            }
            (seen, refused)
        });
        (addr, h)
    }

    fn opts(dst: SocketAddrV4, nodes: u32) -> StormOptions {
        StormOptions {
            nodes,
            senders: 3,
            src: Ipv4Addr::LOCALHOST,
            dst,
            window: 8,
            timeout: Duration::from_millis(200),
            ..StormOptions::default()
        }
    }

    fn storm(o: &StormOptions) -> StormReport {
        run_storm_on(bind_local(o.senders, o.src, o.dst).unwrap(), o).unwrap()
    }

    #[test]
    fn storm_against_an_accepting_agent() {
        let (addr, agent) = fake_agent(Behaviour::Accept, 200 * 2);
        let mut o = opts(addr, 200);
        o.rounds = 2;
        let rep = storm(&o);
        assert_eq!(rep.sent, 400, "{rep:?}");
        assert_eq!(rep.accepted, 400, "{rep:?}");
        assert!(rep.all_accepted());
        assert_eq!((rep.timed_out, rep.bad_replies, rep.stray_replies), (0, 0, 0));
        assert!(rep.per_second > 0.0 && rep.latency_ms_p99 >= rep.latency_ms_p50);
        let (seen, refused) = agent.join().unwrap();
        assert_eq!(seen, 400);
        assert_eq!(refused, 0, "every node's Identifications strictly increase");
    }

    #[test]
    fn a_paced_storm_takes_its_time() {
        let (addr, agent) = fake_agent(Behaviour::Accept, 100);
        let mut o = opts(addr, 100);
        o.rate = Some(500);
        let rep = storm(&o);
        assert_eq!(rep.accepted, 100, "{rep:?}");
        // 100 requests at 500/s: the last is due after ~0.2 s (minus one interval per sender).
        assert!(rep.elapsed_s >= 0.15, "{rep:?}");
        agent.join().unwrap();
    }

    #[test]
    fn denials_are_counted_by_code() {
        let (addr, agent) = fake_agent(Behaviour::Deny(133), 50);
        let rep = storm(&opts(addr, 50));
        assert_eq!(rep.accepted, 0);
        assert_eq!(rep.denied.get(&133), Some(&50), "{rep:?}");
        agent.join().unwrap();
    }

    #[test]
    fn silence_times_out_after_one_retransmission() {
        let (addr, agent) = fake_agent(Behaviour::Silent, 20);
        let mut o = opts(addr, 10);
        o.timeout = Duration::from_millis(50);
        let rep = storm(&o);
        assert_eq!(
            (rep.sent, rep.retransmitted, rep.timed_out, rep.accepted),
            (10, 10, 10, 0)
        );
        let (seen, refused) = agent.join().unwrap();
        assert_eq!(seen, 20);
        assert_eq!(refused, 0, "a retransmission has a newer Identification");
    }

    #[test]
    fn bad_replies_are_discarded_and_the_retransmission_counts() {
        let (addr, agent) = fake_agent(Behaviour::BadAuthThenAccept, 40);
        let mut o = opts(addr, 20);
        o.timeout = Duration::from_millis(100);
        let rep = storm(&o);
        assert_eq!(
            (rep.bad_replies, rep.retransmitted, rep.accepted),
            (20, 20, 20),
            "{rep:?}"
        );
        agent.join().unwrap();
    }
}

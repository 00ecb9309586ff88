//! A small discrete-event simulator for the four sans-IO roles: one mobile node, one foreign agent, the MIP proxy
//! and one home agent, wired together in memory through a lossy, reordering, duplicating network with two NAT
//! boxes, a keepalive stub for the proxy's data plane, and an adversary on the Internet side.
//!
//! Everything runs on one simulated clock (milliseconds; `Instant` and NTP time derive from it), every random
//! choice comes from one seeded [`Rng`], so a run is a pure function of its [`Params`]. After every event the
//! simulator checks the safety invariants (see [`Sim::check_invariants`] and the per-output checks) and panics
//! with the seed, the step and the recent events when one fails.
//!
//! The network: every hop (node → FA link, FA link → node, node → NAT, NAT → Internet, Internet → NAT → node,
//! Internet, intranet) delays a datagram by a uniform 1–40 ms and may lose or duplicate it. Internet and intranet
//! hops reorder freely; a link (the FA's visited link, a NAT's inside) keeps its order, as one L2 segment does.
//! Datagrams are routed by destination address to the right role input; a node that has moved away, a NAT
//! mapping that does not exist or a black-holed HA make a datagram undeliverable.

use core::fmt::Write as _;
use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::binding::{Encapsulation, TunnelEndpoint};
use mip::config::{KeysFile, ReplayConfig, SaEntry, Validate};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::roles::fa::{FaConfig, FaInput, FaOutput, ForeignAgent};
use mip::roles::ha::{HaConfig, HaInput, HaOutput, HomeAgent};
use mip::roles::mn::{Attachment, MnConfig, MnInput, MnOutput, MnState, MobileNode};
use mip::roles::proxy::{HomeAgentEntry, Proxy, ProxyConfig, ProxyInput, ProxyOutput};
use mip::roles::{BindingChangeKind, Datagram, DropReason, Now, Rng};
use mip::time::{Instant, NtpTimestamp};
use mip::wire::{AuthKind, Dialect, MessageWriter, Reply, ReplyCode, ReplyRepr, Request, RequestFlags, RequestRepr};

// === the topology (spec §10 addresses) ===

/// Mobile node home address.
pub const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
/// The actual home agent.
pub const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
/// MIPP-Pub.
pub const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// MIPP-Priv (also the proxy's node address).
pub const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
/// FA-Visited.
pub const FA_VISITED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// FA-Routed.
pub const FA_ROUTED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);
/// FA care-of address.
pub const FA_COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Network A: routable co-located care-of address.
pub const COA_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// Network C1: private address behind NAT 1.
pub const PRIV_C1: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
/// Network C2: private address behind NAT 2.
pub const PRIV_C2: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 77);
/// NAT 1's public address.
pub const NAT1_PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// NAT 2's public address.
pub const NAT2_PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// Where the adversary sends from when it does not spoof.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// MN-HA key and SPI (spec §11.2).
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f";
/// MN-HA SPI.
pub const SPI: u32 = 256;
/// FA-HA key between the FA and the proxy (one variant).
pub const FA_KEY: &str = "0f0e0d0c0b0a09080706050403020100";
/// FA-HA SPI.
pub const FA_SPI: u32 = 0x300;
/// A key nobody holds.
pub const WRONG_KEY: &str = "deadbeefdeadbeefdeadbeefdeadbeef";
/// The MIP port.
pub const PORT: u16 = 434;
/// First NAT port handed out.
const NAT_FIRST_PORT: u16 = 40_001;
/// NTP seconds at simulated time zero (the spec vectors' era).
const NTP_BASE_SECS: u64 = 0xec4e_5a00;

const MN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
const GW_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 0x01];
const NAT1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x01];
const NAT2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc2, 0x01];

/// The networks the mobile node can be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Net {
    /// Routable, co-located care-of address 192.0.2.77 (scenario A).
    A,
    /// The foreign agent's link, FA care-of address 192.0.2.1 (scenario B).
    B,
    /// Behind NAT 1: 192.168.1.77 → 203.0.113.5 (scenario C).
    C1,
    /// Behind NAT 2: 192.168.2.77 → 203.0.113.9 (scenario C).
    C2,
    /// The private address of C1, now behind NAT 2 (a NAT change without a local address change).
    C1Nat2,
}

impl Net {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Net::A => "A",
            Net::B => "B",
            Net::C1 => "C1",
            Net::C2 => "C2",
            Net::C1Nat2 => "C1'",
        }
    }

    /// The node's own address on this network.
    pub fn local_ip(self) -> Ipv4Addr {
        match self {
            Net::A => COA_A,
            Net::B => HOA,
            Net::C1 | Net::C1Nat2 => PRIV_C1,
            Net::C2 => PRIV_C2,
        }
    }

    /// The NAT in front of it.
    pub fn nat(self) -> Option<usize> {
        match self {
            Net::C1 => Some(0),
            Net::C2 | Net::C1Nat2 => Some(1),
            Net::A | Net::B => None,
        }
    }

    fn gateway_mac(self) -> [u8; 6] {
        match self {
            Net::A | Net::B => GW_A_MAC,
            Net::C1 => NAT1_MAC,
            Net::C2 | Net::C1Nat2 => NAT2_MAC,
        }
    }

    /// How the node is told it attached here.
    pub fn attachment(self) -> Attachment {
        match self {
            Net::B => Attachment::ForeignAgent {
                agent: FA_VISITED,
                care_of_address: FA_COA,
                co_located: false,
                reverse_tunnel: true,
                udp: false,
            },
            _ => Attachment::CoLocated {
                care_of_address: self.local_ip(),
                gateway_mac: Some(self.gateway_mac()),
            },
        }
    }

    /// The care-of address registered from here.
    pub fn care_of_address(self) -> Ipv4Addr {
        match self {
            Net::B => FA_COA,
            _ => self.local_ip(),
        }
    }

    /// Hops of one registration round trip MN → … → HA → … → MN.
    pub fn round_trip_hops(self) -> u32 {
        match self {
            Net::A => 4,
            _ => 6,
        }
    }
}

// === parameters ===

/// Everything a run depends on.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seeds the network and the roles.
    pub seed: u64,
    /// Probability that a hop loses a datagram.
    pub loss: f64,
    /// Probability that a hop duplicates a datagram.
    pub dup: f64,
    /// Per-hop delay range, milliseconds (inclusive).
    pub delay_ms: (u64, u64),
    /// Lifetime the node requests, seconds.
    pub lifetime: u16,
    /// The node names its actual HA in the HA Parameter extension (else the proxy's static mapping is used).
    pub ha_parameter: bool,
    /// The FA and the proxy share an FA-HA SA.
    pub fa_ha: bool,
    /// Nonce-style replay protection instead of timestamps.
    pub nonce: bool,
    /// The node's `retransmit.max_attempts` (0 = never give up).
    pub max_attempts: u32,
    /// Keepalive interval the proxy announces to NATed nodes, seconds.
    pub nat_keepalive: u16,
    /// Longest lifetime the proxy grants behind a NAT, seconds.
    pub nat_max_lifetime: u16,
}

impl Params {
    /// Defaults for `seed`: no loss, 1–40 ms per hop, 600 s lifetime.
    pub fn new(seed: u64) -> Params {
        Params {
            seed,
            loss: 0.0,
            dup: 0.0,
            delay_ms: (1, 40),
            lifetime: 600,
            ha_parameter: seed.is_multiple_of(2),
            fa_ha: false,
            nonce: false,
            max_attempts: 10,
            nat_keepalive: 20,
            nat_max_lifetime: 60,
        }
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        format!(
            "seed {} loss {:.0}% dup {:.0}% {} {} {}",
            self.seed,
            self.loss * 100.0,
            self.dup * 100.0,
            if self.ha_parameter { "ha-param" } else { "static-ha" },
            if self.nonce { "nonce" } else { "timestamp" },
            if self.fa_ha { "fa-ha" } else { "no-fa-ha" },
        )
    }
}

fn sa_entry(nonce: bool) -> SaEntry {
    SaEntry {
        home_address: Some(HOA),
        nai: None,
        peer: None,
        spi: SPI,
        algorithm: Algorithm::HmacMd5,
        key: KEY.into(),
        replay: if nonce {
            ReplayConfig::Nonce
        } else {
            ReplayConfig::Timestamp
        },
        timestamp_tolerance_secs: 7,
    }
}

fn fa_ha_entry(peer: Ipv4Addr) -> SaEntry {
    SaEntry {
        home_address: None,
        nai: None,
        peer: Some(peer),
        spi: FA_SPI,
        algorithm: Algorithm::HmacMd5,
        key: FA_KEY.into(),
        replay: ReplayConfig::Timestamp,
        timestamp_tolerance_secs: 7,
    }
}

fn keystore(entries: Vec<SaEntry>) -> KeyStore {
    KeysFile {
        security_associations: entries,
    }
    .to_keystore()
    .expect("keys file")
}

fn prefix(s: &str) -> mip::config::Prefix {
    s.parse().expect("prefix")
}

fn valid<T: Validate + core::fmt::Debug>(c: T) -> T {
    let errors = c.validate();
    assert!(errors.is_empty(), "invalid configuration {c:?}: {errors:?}");
    c
}

fn mn_config(p: &Params) -> MnConfig {
    let mut c = MnConfig::new(HOA, PUB, SPI);
    c.actual_home_agent = p.ha_parameter.then_some(HA);
    c.lifetime = p.lifetime;
    c.retransmit.max_attempts = p.max_attempts;
    valid(c)
}

fn proxy_config(p: &Params) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        PUB,
        PRIV,
        vec![HomeAgentEntry {
            address: HA,
            home_networks: vec![prefix("10.10.1.0/24")],
            dynamic_assignment: false,
        }],
    );
    c.nat.keepalive = p.nat_keepalive;
    c.nat.max_lifetime = p.nat_max_lifetime;
    valid(c)
}

fn ha_config() -> HaConfig {
    valid(HaConfig::new(HA, vec![prefix("10.10.1.0/24")]))
}

fn fa_config() -> FaConfig {
    let mut c = FaConfig::new(FA_VISITED, FA_ROUTED, vec![FA_COA]);
    c.advertisement.interval_ms = 5000;
    c.advertisement.lifetime = 15;
    c.allowed_home_agents = vec![prefix("198.51.100.10/32")];
    valid(c)
}

/// The NTP clock at simulated time `ms`.
pub fn ntp_at(ms: u64) -> NtpTimestamp {
    NtpTimestamp((NTP_BASE_SECS << 32).wrapping_add((ms << 32) / 1000))
}

/// `a` strictly later than `b` in wrapping order (timestamps).
fn is_after(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

// === network ===

/// Where a datagram is going next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// The Internet: routed by destination address.
    Internet,
    /// Between the proxy's private side and the home agent.
    Intranet,
    /// The FA's visited link, toward the FA.
    ToFa,
    /// The FA's visited link, toward the node (delivered if it is still there).
    FaLinkToMn,
    /// From the node's private side into NAT `n`.
    NatOut(usize),
    /// From NAT `n` onto its private side (delivered to the node if it is behind that NAT with that address).
    BehindNat(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Mip(Vec<u8>),
    Keepalive,
    KeepaliveReply,
    Advert(Vec<u8>),
    Solicit,
}

/// What the adversary expects from the role its datagram hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Only `Drop` outputs (invariant 2).
    DropOnly,
    /// An FA cannot verify MN-HA: it may relay the datagram to the proxy (which must then only drop it) or deny
    /// it on the visited link, but nothing else.
    FaMayRelay,
}

#[derive(Debug, Clone)]
struct Taint {
    what: String,
    policy: Policy,
}

#[derive(Debug, Clone)]
struct Packet {
    hop: Hop,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    body: Body,
    taint: Option<Taint>,
}

#[derive(Debug)]
enum Event {
    Deliver(Packet),
    Tick(Node),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Mn = 0,
    Fa = 1,
    Proxy = 2,
    Ha = 3,
}

const NODES: [Node; 4] = [Node::Mn, Node::Fa, Node::Proxy, Node::Ha];

/// A port-mapping NAT: one public port per (private address, port), replies translated back, unknown ports
/// dropped.
#[derive(Debug, Default)]
struct Nat {
    out: HashMap<SocketAddrV4, u16>,
    back: HashMap<u16, SocketAddrV4>,
    next_port: u16,
}

impl Nat {
    fn map(&mut self, private: SocketAddrV4) -> u16 {
        if let Some(p) = self.out.get(&private) {
            return *p;
        }
        if self.next_port == 0 {
            self.next_port = NAT_FIRST_PORT;
        }
        let p = self.next_port;
        self.next_port += 1;
        self.out.insert(private, p);
        self.back.insert(p, private);
        p
    }
}

const NAT_PUBLIC: [Ipv4Addr; 2] = [NAT1_PUB, NAT2_PUB];

/// A registration datagram the adversary saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it was sent.
    pub at: u64,
    /// Intranet (proxy ↔ HA) rather than Internet.
    pub intranet: bool,
    /// Source.
    pub src: SocketAddrV4,
    /// Destination.
    pub dst: SocketAddrV4,
    /// UDP payload.
    pub payload: Vec<u8>,
}

impl Recorded {
    /// Whether it is a Registration Request.
    pub fn is_request(&self) -> bool {
        self.payload.first() == Some(&1)
    }
}

/// Where the adversary injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The proxy's public side (as if from a node or FA).
    ProxyPublic,
    /// The proxy's relay socket (as if from the HA).
    ProxyFromHa,
    /// The home agent (as if from the proxy).
    Ha,
    /// The FA's visited link (as if from a visitor).
    FaVisited,
    /// The FA's routed side (as if from the proxy).
    FaRouted,
}

/// One hand-off: how many requests and how long until the node was registered at the new care-of address.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// Previous network.
    pub from: Net,
    /// New network.
    pub to: Net,
    /// Requests sent from the attachment until registered.
    pub requests: u64,
    /// Simulated milliseconds from the attachment until registered.
    pub ms: u64,
}

#[derive(Debug, Clone)]
struct MnRequest {
    bytes: Vec<u8>,
    care_of_address: Ipv4Addr,
    lifetime: u16,
}

/// What the simulator observed (public for the tests' assertions).
#[derive(Debug, Default)]
pub struct Obs {
    mn_requests: HashMap<u64, MnRequest>,
    mn_low32: HashMap<u32, u16>,
    mn_last_ident: Option<u64>,
    mn_resynced: bool,
    /// The care-of address of the node's latest accepted registration, while it has asked for no other.
    mn_view: Option<Ipv4Addr>,
    relayed: HashMap<(Ipv4Addr, u64), (Ipv4Addr, u16)>,
    ha_accepted_full: HashSet<(Ipv4Addr, u64)>,
    ha_accepted_low: HashSet<(Ipv4Addr, u32)>,
    proxy_sources: HashSet<SocketAddrV4>,
    handoff: Option<(Net, Net, u64, u64)>,
    /// Requests the node sent.
    pub mn_sends: u64,
    /// Send times of the node's requests.
    pub mn_send_times: Vec<u64>,
    /// (time, care-of address, lifetime) of every `Registered`.
    pub registered: Vec<(u64, Ipv4Addr, u16)>,
    /// Times of every `Deregistered`.
    pub deregistered: Vec<u64>,
    /// (time, code) of every `RegistrationFailed`.
    pub failed: Vec<(u64, ReplyCode)>,
    /// Codes of the replies the node accepted for processing.
    pub mn_outcomes: Vec<ReplyCode>,
    /// Keepalives sent / answered by the data-plane stub / unmatched at the stub.
    pub keepalives: (u64, u64, u64),
    /// Bindings the proxy expired (lapses) and when.
    pub proxy_expired: Vec<u64>,
    /// Bindings the HA expired.
    pub ha_expired: Vec<u64>,
    /// Binding removals at the proxy (deregistrations and replacements).
    pub proxy_removed: u64,
    /// Drop reasons per role.
    pub drops: BTreeMap<(&'static str, &'static str), u64>,
    /// Replies the proxy sent toward nodes, by code.
    pub proxy_codes: BTreeMap<u8, u64>,
    /// Requests relayed to the HA.
    pub relays: u64,
    /// Replies the HA sent, by code.
    pub ha_codes: BTreeMap<u8, u64>,
    /// Datagrams the adversary injected (each checked by invariant 2).
    pub injections: u64,
    /// Replays sent.
    pub replays: u64,
    /// Completed hand-offs.
    pub handoffs: Vec<Handoff>,
    /// Datagrams lost / duplicated by the network.
    pub lost: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Datagrams with nowhere to go (a node that moved away, a black hole, no NAT mapping).
    pub undeliverable: u64,
}

impl Obs {
    fn drop(&mut self, role: &'static str, r: DropReason) {
        *self.drops.entry((role, r.as_str())).or_default() += 1;
    }

    /// How often `role` dropped for `reason`.
    pub fn drops_of(&self, role: &str, reason: &str) -> u64 {
        self.drops
            .iter()
            .filter(|((r, why), _)| *r == role && *why == reason)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    /// What the run depends on.
    pub p: Params,
    rng: Rng,
    now: u64,
    step: u64,
    seq: u64,
    same_instant: u64,
    queue: BTreeMap<(u64, u64), Event>,
    timers: [Option<u64>; 4],
    /// The mobile node.
    pub mn: MobileNode,
    /// The foreign agent.
    pub fa: ForeignAgent,
    /// The proxy.
    pub proxy: Proxy,
    /// The home agent.
    pub ha: HomeAgent,
    ha_restarts: u64,
    link_fifo: [u64; 6],
    net: Option<Net>,
    nats: [Nat; 2],
    /// Drop everything to or from the HA.
    pub ha_black_holed: bool,
    /// While set, the proxy's binding for the node must have this care-of address (checked after every event).
    pub pin_proxy_coa: Option<Ipv4Addr>,
    /// What was observed.
    pub obs: Obs,
    /// Registration datagrams the adversary recorded.
    pub recorded: Vec<Recorded>,
    trace: VecDeque<String>,
    /// Print every event as it happens (debugging).
    pub verbose: bool,
}

/// Largest number of events at one instant before the run is declared livelocked.
const LIVELOCK_EVENTS: u64 = 5_000;
const TRACE_LEN: usize = 40;

impl Sim {
    /// A fresh world: nothing attached, all roles booted at time 0.
    pub fn new(p: Params) -> Sim {
        let seed = p.seed;
        let mn_keys = vec![sa_entry(p.nonce)];
        let mut proxy_keys = vec![sa_entry(p.nonce)];
        let mut fa_keys = Vec::new();
        if p.fa_ha {
            // The proxy finds the FA by the request's IP source (its routed address); the FA finds the proxy by
            // the Home Agent field (MIPP-Pub).
            proxy_keys.push(fa_ha_entry(FA_ROUTED));
            fa_keys.push(fa_ha_entry(PUB));
        }
        let mut sim = Sim {
            rng: Rng::new(seed ^ 0x5eed_5eed_5eed_5eed),
            now: 0,
            step: 0,
            seq: 0,
            same_instant: 0,
            queue: BTreeMap::new(),
            timers: [None; 4],
            mn: MobileNode::new(mn_config(&p), keystore(mn_keys), seed.wrapping_mul(3) ^ 1),
            fa: ForeignAgent::new(fa_config(), keystore(fa_keys), seed.wrapping_mul(5) ^ 2),
            proxy: Proxy::new(proxy_config(&p), keystore(proxy_keys), seed.wrapping_mul(7) ^ 3),
            ha: HomeAgent::new(
                ha_config(),
                keystore(vec![sa_entry(p.nonce)]),
                seed.wrapping_mul(11) ^ 4,
            ),
            ha_restarts: 0,
            link_fifo: [0; 6],
            net: None,
            nats: [Nat::default(), Nat::default()],
            ha_black_holed: false,
            pin_proxy_coa: None,
            obs: Obs::default(),
            recorded: Vec::new(),
            trace: VecDeque::new(),
            verbose: false,
            p,
        };
        sim.schedule_timers();
        sim
    }

    // --- clock, randomness, failure ---

    /// Simulated milliseconds since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn now_pair(&self) -> Now {
        Now::new(Instant::from_millis(self.now), ntp_at(self.now))
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    /// A random integer in `lo..=hi`.
    pub fn rand_range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.next_u64() % (hi - lo + 1)
    }

    fn note(&mut self, s: String) {
        if self.verbose {
            println!("[{:>9} ms #{}] {s}", self.now, self.step);
        }
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[{:>9} ms #{}] {s}", self.now, self.step));
    }

    /// Panics with the run's parameters, the step and the recent events.
    pub fn fail(&self, msg: &str) -> ! {
        let mut t = String::new();
        for line in &self.trace {
            let _ = writeln!(t, "    {line}");
        }
        panic!(
            "SIMULATION FAILURE ({}) at step {} t={} ms: {msg}\n  recent events:\n{t}",
            self.p.describe(),
            self.step,
            self.now
        );
    }

    // --- the event loop ---

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn schedule_timers(&mut self) {
        for node in NODES {
            let t = match node {
                Node::Mn => self.mn.next_timer(),
                Node::Fa => self.fa.next_timer(),
                Node::Proxy => self.proxy.next_timer(),
                Node::Ha => self.ha.next_timer(),
            };
            let Some(t) = t else { continue };
            let t = t.millis().max(self.now);
            let slot = &mut self.timers[node as usize];
            if slot.is_none_or(|s| t < s) {
                *slot = Some(t);
                self.push(t, Event::Tick(node));
            }
        }
    }

    /// Runs events up to and including time `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: u64) {
        while self.step_once(t) {}
        self.now = self.now.max(t);
    }

    /// Runs for `ms` more milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    /// Runs until `pred` holds (checked after every event) or `deadline`; returns when it first held.
    pub fn run_until_pred(&mut self, deadline: u64, mut pred: impl FnMut(&Sim) -> bool) -> Option<u64> {
        if pred(self) {
            return Some(self.now);
        }
        while self.step_once(deadline) {
            if pred(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    fn step_once(&mut self, limit: u64) -> bool {
        let Some((&(at, _), _)) = self.queue.first_key_value() else {
            return false;
        };
        if at > limit {
            return false;
        }
        let Some(((at, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        if at == self.now {
            self.same_instant += 1;
            if self.same_instant > LIVELOCK_EVENTS {
                self.fail("livelock: thousands of events at one instant (a role's timer makes no progress)");
            }
        } else {
            self.same_instant = 0;
        }
        self.now = at;
        self.step += 1;
        match ev {
            Event::Deliver(pkt) => self.deliver(pkt),
            Event::Tick(node) => {
                if self.timers[node as usize] == Some(at) {
                    self.timers[node as usize] = None;
                    self.tick(node);
                }
            }
        }
        self.after_event();
        true
    }

    fn after_event(&mut self) {
        self.check_invariants();
        self.schedule_timers();
    }

    fn tick(&mut self, node: Node) {
        match node {
            Node::Mn => self.mn_input(MnInput::Tick),
            Node::Fa => self.fa_input(FaInput::Tick, None),
            Node::Proxy => self.proxy_input(ProxyInput::Tick, None),
            Node::Ha => self.ha_input(HaInput::Tick, None),
        }
    }

    // --- the network ---

    fn send(&mut self, pkt: Packet) {
        if pkt.taint.is_none() {
            if self.chance(self.p.loss) {
                self.obs.lost += 1;
                if matches!(pkt.body, Body::Advert(_)) {
                    return;
                }
                self.note(format!("LOST {:?} {} → {}", pkt.hop, pkt.src, pkt.dst));
                return;
            }
            if self.chance(self.p.dup) {
                self.obs.duplicated += 1;
                let at = self.arrival(pkt.hop);
                self.push(at, Event::Deliver(pkt.clone()));
            }
        }
        if let (Body::Mip(payload), Hop::Internet | Hop::Intranet, None) = (&pkt.body, pkt.hop, &pkt.taint) {
            self.recorded.push(Recorded {
                at: self.now,
                intranet: pkt.hop == Hop::Intranet,
                src: pkt.src,
                dst: pkt.dst,
                payload: payload.clone(),
            });
        }
        let at = self.arrival(pkt.hop);
        self.push(at, Event::Deliver(pkt));
    }

    /// When a datagram sent now over `hop` arrives: a random delay; Internet and intranet paths reorder freely,
    /// while a link (the FA's visited link, a NAT's inside) delivers in order.
    fn arrival(&mut self, hop: Hop) -> u64 {
        let at = self.now + self.rand_range(self.p.delay_ms.0, self.p.delay_ms.1);
        let link = match hop {
            Hop::Internet | Hop::Intranet => return at,
            Hop::ToFa => 0,
            Hop::FaLinkToMn => 1,
            Hop::NatOut(n) => 2 + n,
            Hop::BehindNat(n) => 4 + n,
        };
        let at = at.max(self.link_fifo[link]);
        self.link_fifo[link] = at;
        at
    }

    fn undeliverable(&mut self, why: &str, pkt: &Packet) {
        self.obs.undeliverable += 1;
        if matches!(pkt.body, Body::Advert(_)) {
            return;
        }
        self.note(format!("undeliverable ({why}) {:?} {} → {}", pkt.hop, pkt.src, pkt.dst));
    }

    fn deliver(&mut self, mut pkt: Packet) {
        match pkt.hop {
            Hop::Internet => {
                let dst = *pkt.dst.ip();
                if dst == PUB {
                    match pkt.body {
                        Body::Mip(ref b) => {
                            let b = b.clone();
                            self.obs.proxy_sources.insert(pkt.src);
                            let dg = Datagram {
                                src: pkt.src,
                                dst: pkt.dst,
                                ttl: pkt.ttl,
                                payload: &b,
                            };
                            self.note(format!("proxy ← {} {}", pkt.src, describe(&b)));
                            self.proxy_input(ProxyInput::FromMobile(dg), pkt.taint);
                        }
                        Body::Keepalive => self.proxy_keepalive(pkt.src),
                        _ => self.undeliverable("not for the proxy", &pkt),
                    }
                } else if dst == FA_ROUTED {
                    let Body::Mip(b) = &pkt.body else {
                        return self.undeliverable("not for the FA", &pkt);
                    };
                    let b = b.clone();
                    let dg = Datagram {
                        src: pkt.src,
                        dst: pkt.dst,
                        ttl: pkt.ttl,
                        payload: &b,
                    };
                    self.note(format!("FA(routed) ← {} {}", pkt.src, describe(&b)));
                    self.fa_input(FaInput::FromNetwork(dg), pkt.taint);
                } else if let Some(n) = NAT_PUBLIC.iter().position(|a| *a == dst) {
                    let Some(private) = self.nats[n].back.get(&pkt.dst.port()).copied() else {
                        return self.undeliverable("no NAT mapping", &pkt);
                    };
                    pkt.dst = private;
                    pkt.hop = Hop::BehindNat(n);
                    self.send(pkt);
                } else if dst == COA_A {
                    if self.net == Some(Net::A) {
                        self.mn_receive(&pkt);
                    } else {
                        self.undeliverable("node not on A", &pkt);
                    }
                } else {
                    self.undeliverable("no route", &pkt);
                }
            }
            Hop::Intranet => {
                if self.ha_black_holed && (*pkt.dst.ip() == HA || *pkt.src.ip() == HA) {
                    return self.undeliverable("HA black-holed", &pkt);
                }
                let Body::Mip(b) = &pkt.body else {
                    return self.undeliverable("not MIP", &pkt);
                };
                let b = b.clone();
                let dg = Datagram {
                    src: pkt.src,
                    dst: pkt.dst,
                    ttl: pkt.ttl,
                    payload: &b,
                };
                if *pkt.dst.ip() == HA {
                    self.note(format!("HA ← {} {}", pkt.src, describe(&b)));
                    self.ha_input(HaInput::Request(dg), pkt.taint);
                } else if *pkt.dst.ip() == PRIV {
                    self.note(format!("proxy(relay) ← {} {}", pkt.src, describe(&b)));
                    self.proxy_input(ProxyInput::FromHomeAgent(dg), pkt.taint);
                } else {
                    self.undeliverable("no intranet route", &pkt);
                }
            }
            Hop::ToFa => match &pkt.body {
                Body::Mip(b) => {
                    let b = b.clone();
                    let dg = Datagram {
                        src: pkt.src,
                        dst: pkt.dst,
                        ttl: pkt.ttl,
                        payload: &b,
                    };
                    self.note(format!("FA(visited) ← {} {}", pkt.src, describe(&b)));
                    self.fa_input(FaInput::FromMobile { dg, link_src: MN_MAC }, pkt.taint);
                }
                Body::Solicit => self.fa_input(FaInput::Solicitation { src: *pkt.src.ip() }, None),
                _ => self.undeliverable("not for the FA", &pkt),
            },
            Hop::FaLinkToMn => {
                if self.net == Some(Net::B) {
                    self.mn_receive(&pkt);
                } else {
                    self.undeliverable("node not on the FA link", &pkt);
                }
            }
            Hop::NatOut(n) => {
                let port = self.nats[n].map(pkt.src);
                pkt.src = SocketAddrV4::new(NAT_PUBLIC[n], port);
                pkt.hop = Hop::Internet;
                self.send(pkt);
            }
            Hop::BehindNat(n) => {
                let here = self
                    .net
                    .is_some_and(|net| net.nat() == Some(n) && net.local_ip() == *pkt.dst.ip());
                if here {
                    self.mn_receive(&pkt);
                } else {
                    self.undeliverable("node not behind this NAT", &pkt);
                }
            }
        }
    }

    fn mn_receive(&mut self, pkt: &Packet) {
        match &pkt.body {
            Body::Mip(b) => {
                self.note(format!("MN ← {} {}", pkt.src, describe(b)));
                let parsed = Reply::parse(b, &Dialect::default())
                    .ok()
                    .map(|r| (r.repr.code, r.repr.lifetime, r.repr.identification));
                let dg = Datagram {
                    src: pkt.src,
                    dst: pkt.dst,
                    ttl: pkt.ttl,
                    payload: b,
                };
                let mut out = Vec::new();
                self.mn.handle(self.now_pair(), MnInput::Reply(dg), &mut out);
                // Invariant 4: a reply the node took (it produced an Outcome) never grants more than the request
                // it answers asked for.
                if let Some((_, lifetime, ident)) = parsed
                    && out.iter().any(|o| matches!(o, MnOutput::Outcome(_)))
                {
                    let requested = self.obs.mn_low32.get(&(ident as u32)).copied();
                    match requested {
                        Some(req) if lifetime > req => self.fail(&format!(
                            "invariant 4: the node took a reply granting {lifetime} s for a request of {req} s"
                        )),
                        None => self.fail("the node took a reply to a request it never sent"),
                        _ => {}
                    }
                }
                self.mn_outputs(out);
            }
            Body::KeepaliveReply => {
                self.obs.keepalives.1 += 1;
                self.mn_input(MnInput::KeepaliveReply);
            }
            Body::Advert(icmp) => {
                let icmp = icmp.clone();
                if self.verbose {
                    let seq = mip::wire::AgentAdvertisementRepr::parse(&icmp)
                        .ok()
                        .and_then(|a| a.mobility.map(|m| m.sequence));
                    self.note(format!("MN ← advertisement seq {seq:?} to {}", pkt.dst));
                }
                self.mn_input(MnInput::Advertisement {
                    src: *pkt.src.ip(),
                    icmp: &icmp,
                });
            }
            _ => self.undeliverable("not for the node", pkt),
        }
    }

    /// The proxy's data plane, reduced to RFC 3519 keepalives: answered when the node's binding tunnels to the
    /// keepalive's (NATed) source; a half-bound binding is completed first.
    fn proxy_keepalive(&mut self, src: SocketAddrV4) {
        let binding = self.proxy.bindings().get_by_home(HOA).and_then(|e| {
            e.bindings()
                .iter()
                .find(|b| {
                    b.tunnel.encapsulation.is_udp()
                        && b.tunnel.addr == *src.ip()
                        && (b.half_bound || b.tunnel.port == src.port())
                })
                .copied()
        });
        let Some(b) = binding else {
            self.obs.keepalives.2 += 1;
            self.note(format!("keepalive from {src} matches no binding"));
            return;
        };
        if b.half_bound {
            self.proxy_input(ProxyInput::Keepalive { src, home_address: HOA }, None);
        }
        self.send(Packet {
            hop: Hop::Internet,
            src: SocketAddrV4::new(PUB, PORT),
            dst: src,
            ttl: 64,
            body: Body::KeepaliveReply,
            taint: None,
        });
    }

    /// Sends something from the node onto its current network.
    fn send_from_mn(&mut self, src: SocketAddrV4, dst: SocketAddrV4, ttl: u8, body: Body) {
        let Some(net) = self.net else {
            self.obs.undeliverable += 1;
            return;
        };
        let hop = match net {
            Net::A => Hop::Internet,
            Net::B => {
                if *dst.ip() != FA_VISITED {
                    self.fail(&format!("on the FA link the node sent to {dst}, not to the agent"));
                }
                Hop::ToFa
            }
            _ => Hop::NatOut(net.nat().unwrap_or(0)),
        };
        if *src.ip() != net.local_ip() {
            self.fail(&format!(
                "the node sent from {src} while its address on {} is {}",
                net.name(),
                net.local_ip()
            ));
        }
        self.send(Packet {
            hop,
            src,
            dst,
            ttl,
            body,
            taint: None,
        });
    }

    // --- roles ---

    fn mn_input(&mut self, input: MnInput<'_>) {
        let mut out = Vec::new();
        self.mn.handle(self.now_pair(), input, &mut out);
        self.mn_outputs(out);
    }

    fn mn_outputs(&mut self, out: Vec<MnOutput>) {
        for o in out {
            match o {
                MnOutput::Send(t) => {
                    self.check_mn_request(&t.payload);
                    self.note(format!("MN → {} {}", t.dst, describe(&t.payload)));
                    self.obs.mn_sends += 1;
                    self.obs.mn_send_times.push(self.now);
                    self.send_from_mn(t.src, t.dst, t.ttl.unwrap_or(64), Body::Mip(t.payload));
                }
                MnOutput::SendKeepalive { src, dst } => {
                    self.obs.keepalives.0 += 1;
                    self.send_from_mn(src, dst, 64, Body::Keepalive);
                }
                MnOutput::SendSolicitation => {
                    if self.net == Some(Net::B) {
                        self.send(Packet {
                            hop: Hop::ToFa,
                            src: SocketAddrV4::new(HOA, 0),
                            dst: SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 11), 0),
                            ttl: 1,
                            body: Body::Solicit,
                            taint: None,
                        });
                    }
                }
                MnOutput::Registered {
                    care_of_address,
                    lifetime,
                    ..
                } => {
                    self.note(format!("MN registered at {care_of_address} for {lifetime} s"));
                    let requested = self
                        .obs
                        .mn_last_ident
                        .and_then(|i| self.obs.mn_requests.get(&i))
                        .map(|r| (r.lifetime, r.care_of_address));
                    match requested {
                        Some((req, _)) if lifetime > req => self.fail(&format!(
                            "invariant 4: registered for {lifetime} s after asking for {req} s"
                        )),
                        Some((_, coa)) if coa != care_of_address => self.fail(&format!(
                            "registered at {care_of_address}, but the latest request named {coa}"
                        )),
                        None => self.fail("registered without having sent a request"),
                        _ => {}
                    }
                    self.obs.registered.push((self.now, care_of_address, lifetime));
                    self.obs.mn_view = Some(care_of_address);
                    if let Some((from, to, start, sends)) = self.obs.handoff
                        && to.care_of_address() == care_of_address
                    {
                        self.obs.handoffs.push(Handoff {
                            from,
                            to,
                            requests: self.obs.mn_sends - sends,
                            ms: self.now - start,
                        });
                        self.obs.handoff = None;
                    }
                }
                MnOutput::Deregistered => {
                    self.note("MN deregistered".into());
                    self.obs.deregistered.push(self.now);
                }
                MnOutput::RegistrationFailed { code } => {
                    self.note(format!("MN registration failed: {code:?}"));
                    self.obs.failed.push((self.now, code));
                }
                MnOutput::Outcome(o) => {
                    if o.code == ReplyCode::IdentificationMismatch {
                        self.obs.mn_resynced = true;
                    }
                    self.obs.mn_outcomes.push(o.code);
                }
                MnOutput::Drop(r) => self.obs.drop("mn", r),
            }
        }
    }

    /// Invariant 3: the node never sends two different requests with one Identification; timestamps strictly
    /// increase (except right after a code-133 resynchronisation, which may step back to just above the last
    /// accepted one); under nonces only an identical retransmission may repeat an Identification.
    fn check_mn_request(&mut self, payload: &[u8]) {
        let req = match Request::parse(payload, &Dialect::default()) {
            Ok(r) => r,
            Err(e) => self.fail(&format!("the node sent an unparsable request: {e}")),
        };
        let r = req.repr;
        let id = r.identification;
        if let Some(prev) = self.obs.mn_requests.get(&id) {
            if prev.bytes != payload {
                self.fail(&format!(
                    "invariant 3: Identification {id:016x} reused for a different request"
                ));
            }
            if !self.p.nonce {
                self.fail(&format!("invariant 3: timestamp Identification {id:016x} sent twice"));
            }
        } else if !self.p.nonce
            && let Some(last) = self.obs.mn_last_ident
            && !is_after(id, last)
            && !self.obs.mn_resynced
        {
            self.fail(&format!(
                "invariant 3: timestamp {id:016x} is not after the previous request's {last:016x}"
            ));
        }
        self.obs.mn_resynced = false;
        if r.lifetime == 0 || self.obs.mn_view != Some(r.care_of_address) {
            self.obs.mn_view = None;
        }
        self.obs.mn_last_ident = Some(id);
        self.obs.mn_low32.insert(id as u32, r.lifetime);
        self.obs.mn_requests.insert(
            id,
            MnRequest {
                bytes: payload.to_vec(),
                care_of_address: r.care_of_address,
                lifetime: r.lifetime,
            },
        );
    }

    fn taint_violation(&self, role: &str, taint: &Taint, what: &str) -> ! {
        self.fail(&format!(
            "invariant 2: {role} produced {what} for an unauthenticated injection ({})",
            taint.what
        ))
    }

    fn proxy_input(&mut self, input: ProxyInput<'_>, taint: Option<Taint>) {
        let mut out = Vec::new();
        self.proxy.handle(self.now_pair(), input, &mut out);
        if let Some(t) = &taint {
            if out.is_empty() {
                self.taint_violation("the proxy", t, "nothing at all (not even a Drop)");
            }
            if let Some(o) = out.iter().find(|o| !matches!(o, ProxyOutput::Drop(_))) {
                self.taint_violation("the proxy", t, &format!("{o:?}"));
            }
        }
        for o in out {
            match o {
                ProxyOutput::Send(t) => {
                    // Invariant 5: never an open relay.
                    let to_ha = t.dst == SocketAddrV4::new(HA, PORT);
                    if !to_ha && !self.obs.proxy_sources.contains(&t.dst) {
                        self.fail(&format!(
                            "invariant 5: the proxy sent to {}, neither the HA nor any request source",
                            t.dst
                        ));
                    }
                    if to_ha {
                        if t.src != SocketAddrV4::new(PRIV, PORT) {
                            self.fail(&format!("relayed request from {}, not MIPP-Priv", t.src));
                        }
                        let req = match Request::parse(&t.payload, &Dialect::default()) {
                            Ok(r) => r.repr,
                            Err(e) => self.fail(&format!("the proxy relayed an unparsable request: {e}")),
                        };
                        self.obs.relays += 1;
                        self.obs.relayed.insert(
                            (req.home_address, req.identification),
                            (req.care_of_address, req.lifetime),
                        );
                        self.note(format!("proxy → HA {}", describe(&t.payload)));
                        self.send(Packet {
                            hop: Hop::Intranet,
                            src: t.src,
                            dst: t.dst,
                            ttl: 64,
                            body: Body::Mip(t.payload),
                            taint: None,
                        });
                    } else {
                        if t.src != SocketAddrV4::new(PUB, PORT) {
                            self.fail(&format!("reply to a node from {}, not MIPP-Pub:434", t.src));
                        }
                        if let Ok(r) = Reply::parse(&t.payload, &Dialect::default()) {
                            *self.obs.proxy_codes.entry(r.repr.code.value()).or_default() += 1;
                        }
                        self.note(format!("proxy → {} {}", t.dst, describe(&t.payload)));
                        self.send(Packet {
                            hop: Hop::Internet,
                            src: t.src,
                            dst: t.dst,
                            ttl: 64,
                            body: Body::Mip(t.payload),
                            taint: None,
                        });
                    }
                }
                ProxyOutput::Binding(c) => {
                    self.note(format!(
                        "proxy binding {:?} {} → {:?}",
                        c.kind, c.binding.care_of_address, c.binding.tunnel
                    ));
                    match c.kind {
                        BindingChangeKind::Expired => self.obs.proxy_expired.push(self.now),
                        BindingChangeKind::Removed => self.obs.proxy_removed += 1,
                        _ => {}
                    }
                }
                ProxyOutput::Drop(r) => {
                    self.note(format!("proxy drop: {r}"));
                    self.obs.drop("proxy", r);
                }
                ProxyOutput::Relayed { .. } | ProxyOutput::PendingDone { .. } | ProxyOutput::Outcome(_) => {}
            }
        }
    }

    fn ha_input(&mut self, input: HaInput<'_>, taint: Option<Taint>) {
        let mut out = Vec::new();
        self.ha.handle(self.now_pair(), input, &mut out);
        if let Some(t) = &taint {
            if out.is_empty() {
                self.taint_violation("the HA", t, "nothing at all (not even a Drop)");
            }
            if let Some(o) = out.iter().find(|o| !matches!(o, HaOutput::Drop(_))) {
                self.taint_violation("the HA", t, &format!("{o:?}"));
            }
        }
        for o in out {
            match o {
                HaOutput::Send(t) => {
                    match Reply::parse(&t.payload, &Dialect::default()) {
                        Ok(r) => {
                            let r = r.repr;
                            *self.obs.ha_codes.entry(r.code.value()).or_default() += 1;
                            if r.code.is_accepted() && r.lifetime > 0 {
                                self.obs.ha_accepted_full.insert((r.home_address, r.identification));
                                self.obs
                                    .ha_accepted_low
                                    .insert((r.home_address, r.identification as u32));
                            }
                        }
                        Err(e) => self.fail(&format!("the HA sent an unparsable reply: {e}")),
                    }
                    self.note(format!("HA → {} {}", t.dst, describe(&t.payload)));
                    self.send(Packet {
                        hop: Hop::Intranet,
                        src: t.src,
                        dst: t.dst,
                        ttl: 64,
                        body: Body::Mip(t.payload),
                        taint: None,
                    });
                }
                HaOutput::Binding(c) => {
                    self.note(format!("HA binding {:?} {}", c.kind, c.binding.care_of_address));
                    if c.kind == BindingChangeKind::Expired {
                        self.obs.ha_expired.push(self.now);
                    }
                }
                HaOutput::Drop(r) => {
                    self.note(format!("HA drop: {r}"));
                    self.obs.drop("ha", r);
                }
                HaOutput::Intercept { .. } | HaOutput::Outcome(_) => {}
            }
        }
    }

    fn fa_input(&mut self, input: FaInput<'_>, taint: Option<Taint>) {
        let mut out = Vec::new();
        self.fa.handle(self.now_pair(), input, &mut out);
        if let Some(t) = &taint {
            if out.is_empty() {
                self.taint_violation("the FA", t, "nothing at all (not even a Drop)");
            }
            let allowed = |o: &FaOutput| match t.policy {
                Policy::DropOnly => matches!(o, FaOutput::Drop(_)),
                Policy::FaMayRelay => match o {
                    FaOutput::Drop(_) | FaOutput::SendToMobile { .. } | FaOutput::Outcome(_) => true,
                    FaOutput::Send(s) => s.dst == SocketAddrV4::new(PUB, PORT),
                    _ => false,
                },
            };
            if let Some(o) = out.iter().find(|o| !allowed(o)) {
                self.taint_violation("the FA", t, &format!("{o:?}"));
            }
        }
        for o in out {
            match o {
                FaOutput::Send(s) => {
                    self.note(format!("FA → {} {}", s.dst, describe(&s.payload)));
                    // What the FA relays for an injection stays tainted: the proxy must drop it.
                    let taint = taint.clone().map(|t| Taint {
                        what: format!("{} (relayed by the FA)", t.what),
                        policy: Policy::DropOnly,
                    });
                    self.send(Packet {
                        hop: Hop::Internet,
                        src: s.src,
                        dst: s.dst,
                        ttl: s.ttl.unwrap_or(64),
                        body: Body::Mip(s.payload),
                        taint,
                    });
                }
                FaOutput::SendToMobile { transmit, .. } => {
                    self.note(format!("FA → MN {}", describe(&transmit.payload)));
                    self.send(Packet {
                        hop: Hop::FaLinkToMn,
                        src: transmit.src,
                        dst: transmit.dst,
                        ttl: 64,
                        body: Body::Mip(transmit.payload),
                        taint: None,
                    });
                }
                FaOutput::Advertise { icmp, dst } => self.send(Packet {
                    hop: Hop::FaLinkToMn,
                    src: SocketAddrV4::new(FA_VISITED, 0),
                    dst: SocketAddrV4::new(dst, 0),
                    ttl: 1,
                    body: Body::Advert(icmp),
                    taint: None,
                }),
                FaOutput::Drop(r) => {
                    self.note(format!("FA drop: {r}"));
                    self.obs.drop("fa", r);
                }
                FaOutput::Visitor(_) | FaOutput::SendKeepalive { .. } | FaOutput::Outcome(_) => {}
            }
        }
    }

    // --- invariants checked after every event ---

    /// Invariants 1 and 4 over the binding caches (2, 3, 4 on replies, and 5 are checked where the outputs
    /// appear).
    pub fn check_invariants(&self) {
        for e in self.proxy.bindings().iter() {
            let hoa = e.home_address();
            for b in e.bindings() {
                let id = b.identification;
                // Invariant 1: the HA accepted exactly this registration, relayed by the proxy, of a request the
                // node actually sent with this care-of address.
                if !self.obs.relayed.contains_key(&(hoa, id)) {
                    self.fail(&format!(
                        "invariant 1: proxy binding {id:016x} was never relayed to the HA"
                    ));
                }
                let accepted = if self.p.nonce {
                    self.obs.ha_accepted_low.contains(&(hoa, id as u32))
                } else {
                    self.obs.ha_accepted_full.contains(&(hoa, id))
                };
                if !accepted {
                    self.fail(&format!(
                        "invariant 1: proxy binding {id:016x} has no accepting HA reply"
                    ));
                }
                let Some(req) = self.obs.mn_requests.get(&id) else {
                    self.fail(&format!(
                        "invariant 1: proxy binding {id:016x} matches no request of the node"
                    ))
                };
                if req.care_of_address != b.care_of_address {
                    self.fail(&format!(
                        "invariant 1: proxy binding care-of {} but the request named {}",
                        b.care_of_address, req.care_of_address
                    ));
                }
                // Invariant 4.
                if b.lifetime > req.lifetime {
                    self.fail(&format!(
                        "invariant 4: proxy binding lifetime {} > requested {}",
                        b.lifetime, req.lifetime
                    ));
                }
            }
            if let Some(pin) = self.pin_proxy_coa
                && hoa == HOA
                && e.bindings().iter().any(|b| b.care_of_address != pin)
            {
                self.fail(&format!(
                    "the proxy binding moved away from {pin}: {:?}",
                    e.bindings().iter().map(|b| b.care_of_address).collect::<Vec<_>>()
                ));
            }
        }
        // Invariant 6 (the node's view): while the node holds a live registration at a care-of address, the proxy
        // binds it there (the proxy counts the same lifetime from a later instant, so it never expires first).
        // Once the node has asked for another care-of address (a hand-off, a deregistration) its old registration
        // may be replaced at any moment without its knowing, so the check waits for the next acceptance.
        if let MnState::Registered {
            care_of_address,
            expires_at,
        } = self.mn.state()
            && expires_at.millis() > self.now
            && self.obs.mn_view == Some(care_of_address)
            && !self.proxy_binding().iter().any(|(c, _)| *c == care_of_address)
        {
            self.fail(&format!(
                "invariant 6: the node is registered at {care_of_address} but the proxy binds {:?}",
                self.proxy_binding()
            ));
        }
        for e in self.ha.bindings().iter() {
            let hoa = e.home_address();
            for b in e.bindings() {
                let Some((coa, lifetime)) = self.obs.relayed.get(&(hoa, b.identification)) else {
                    self.fail(&format!(
                        "invariant 1: HA binding {:016x} matches no request the proxy relayed",
                        b.identification
                    ))
                };
                if *coa != b.care_of_address {
                    self.fail(&format!(
                        "invariant 1: HA binding care-of {} but the relayed request named {coa}",
                        b.care_of_address
                    ));
                }
                if b.lifetime > *lifetime {
                    self.fail(&format!(
                        "invariant 4: HA binding lifetime {} > relayed {lifetime}",
                        b.lifetime
                    ));
                }
            }
        }
    }

    // --- scripted actions (each one an event: invariants and timers follow) ---

    /// Moves the node to `net` (detach, then attach): a hand-off starts.
    pub fn attach(&mut self, net: Net) {
        self.step += 1;
        let from = self.net;
        if from.is_some() {
            self.mn_input(MnInput::Detached);
        }
        self.net = Some(net);
        self.note(format!("--- attach to {}", net.name()));
        self.obs.handoff = from.map(|f| (f, net, self.now, self.obs.mn_sends));
        if from.is_none() {
            self.obs.handoff = Some((net, net, self.now, self.obs.mn_sends));
        }
        self.mn_input(MnInput::Attached(net.attachment()));
        self.after_event();
    }

    /// NAT change without a local address change: the node on C1 is now behind NAT 2, and sees its gateway's
    /// hardware address change.
    pub fn nat_change(&mut self) {
        assert_eq!(self.net, Some(Net::C1), "a NAT change starts on C1");
        self.step += 1;
        self.net = Some(Net::C1Nat2);
        self.note("--- NAT change: C1's address now behind NAT 2".into());
        self.obs.handoff = Some((Net::C1, Net::C1Nat2, self.now, self.obs.mn_sends));
        self.mn_input(MnInput::GatewayChanged { mac: NAT2_MAC });
        self.after_event();
    }

    /// The user asks the node to deregister.
    pub fn deregister(&mut self) {
        self.step += 1;
        self.note("--- deregister".into());
        self.mn_input(MnInput::Deregister);
        self.after_event();
    }

    /// Replaces the home agent with a freshly booted instance (all bindings and replay state lost).
    pub fn restart_ha(&mut self) {
        self.step += 1;
        self.ha_restarts += 1;
        self.note("--- HA restart".into());
        self.ha = HomeAgent::new(
            ha_config(),
            keystore(vec![sa_entry(self.p.nonce)]),
            self.p.seed.wrapping_mul(13) ^ self.ha_restarts,
        );
        self.timers[Node::Ha as usize] = None;
        self.after_event();
    }

    // --- queries ---

    /// The node is registered at `net`'s care-of address.
    pub fn mn_registered_at(&self, net: Net) -> bool {
        matches!(self.mn.state(), MnState::Registered { care_of_address, .. } if care_of_address == net.care_of_address())
    }

    /// Where the proxy should tunnel to for a node on `net`.
    pub fn expected_tunnel(&self, net: Net) -> Option<TunnelEndpoint> {
        match net.nat() {
            None => Some(TunnelEndpoint {
                addr: net.care_of_address(),
                port: 0,
                encapsulation: Encapsulation::IpInIp,
            }),
            Some(n) => {
                let port = *self.nats[n].out.get(&SocketAddrV4::new(net.local_ip(), PORT))?;
                Some(TunnelEndpoint {
                    addr: NAT_PUBLIC[n],
                    port,
                    encapsulation: Encapsulation::UdpIpInIp,
                })
            }
        }
    }

    /// The proxy's binding(s) for the node: (care-of address, tunnel).
    pub fn proxy_binding(&self) -> Vec<(Ipv4Addr, TunnelEndpoint)> {
        self.proxy
            .bindings()
            .get_by_home(HOA)
            .map(|e| e.bindings().iter().map(|b| (b.care_of_address, b.tunnel)).collect())
            .unwrap_or_default()
    }

    /// Whether the HA holds a binding for the node (to MIPP-Priv).
    pub fn ha_bound(&self) -> bool {
        self.ha
            .bindings()
            .get_by_home(HOA)
            .is_some_and(|e| e.bindings().iter().any(|b| b.care_of_address == PRIV))
    }

    /// The node is registered at `net`, the proxy tunnels to the right endpoint and the HA binds to MIPP-Priv.
    pub fn converged_at(&self, net: Net) -> bool {
        self.mn_registered_at(net)
            && self
                .expected_tunnel(net)
                .is_some_and(|t| self.proxy_binding() == vec![(net.care_of_address(), t)])
            && self.ha_bound()
    }

    /// Panics unless [`converged_at`](Self::converged_at) holds.
    pub fn assert_converged(&self, net: Net) {
        if !self.converged_at(net) {
            self.fail(&format!(
                "not converged at {}: node {:?}, proxy {:?} (expected {:?}), HA bound {}",
                net.name(),
                self.mn.state(),
                self.proxy_binding(),
                self.expected_tunnel(net),
                self.ha_bound()
            ));
        }
    }

    // --- the adversary ---

    /// Re-sends recorded datagrams that `pick` selects, from their original (spoofed) source to their original
    /// destination, without loss. Returns how many.
    pub fn replay(&mut self, mut pick: impl FnMut(&Recorded) -> bool) -> usize {
        let chosen: Vec<Recorded> = self.recorded.iter().filter(|r| pick(r)).cloned().collect();
        for r in &chosen {
            self.obs.replays += 1;
            let d = self.rand_range(self.p.delay_ms.0, self.p.delay_ms.1);
            self.note(format!(
                "ADVERSARY replays {} → {} {}",
                r.src,
                r.dst,
                describe(&r.payload)
            ));
            let pkt = Packet {
                hop: if r.intranet { Hop::Intranet } else { Hop::Internet },
                src: r.src,
                dst: r.dst,
                ttl: 64,
                body: Body::Mip(r.payload.clone()),
                taint: None,
            };
            self.push(self.now + d, Event::Deliver(pkt));
        }
        chosen.len()
    }

    /// Injects `payload` at `target`; invariant 2 is checked when it arrives: only drops, except that an FA may
    /// relay (to the proxy, which must drop it) or deny a structurally valid request it cannot authenticate.
    pub fn inject(&mut self, target: Target, payload: Vec<u8>, what: &str) {
        self.inject_with(target, payload, what, None);
    }

    /// As [`inject`](Self::inject), but every role hit must only drop it.
    pub fn inject_strict(&mut self, target: Target, payload: Vec<u8>, what: &str) {
        self.inject_with(target, payload, what, Some(Policy::DropOnly));
    }

    fn inject_with(&mut self, target: Target, payload: Vec<u8>, what: &str, policy: Option<Policy>) {
        self.obs.injections += 1;
        let (hop, src, dst, ttl, default_policy) = match target {
            Target::ProxyPublic => (
                Hop::Internet,
                SocketAddrV4::new(ATTACKER, 4343),
                SocketAddrV4::new(PUB, PORT),
                64,
                Policy::DropOnly,
            ),
            Target::ProxyFromHa => (
                Hop::Intranet,
                SocketAddrV4::new(HA, PORT),
                SocketAddrV4::new(PRIV, PORT),
                64,
                Policy::DropOnly,
            ),
            Target::Ha => (
                Hop::Intranet,
                SocketAddrV4::new(PRIV, PORT),
                SocketAddrV4::new(HA, PORT),
                64,
                Policy::DropOnly,
            ),
            Target::FaVisited => (
                Hop::ToFa,
                SocketAddrV4::new(HOA, PORT),
                SocketAddrV4::new(FA_VISITED, PORT),
                255,
                Policy::FaMayRelay,
            ),
            Target::FaRouted => (
                Hop::Internet,
                SocketAddrV4::new(PUB, PORT),
                SocketAddrV4::new(FA_ROUTED, PORT),
                64,
                Policy::DropOnly,
            ),
        };
        let policy = policy.unwrap_or(default_policy);
        let what = format!("{what} at {target:?}");
        self.note(format!("ADVERSARY injects {what}: {}", describe(&payload)));
        let d = self.rand_range(self.p.delay_ms.0, self.p.delay_ms.1);
        let pkt = Packet {
            hop,
            src,
            dst,
            ttl,
            body: Body::Mip(payload),
            taint: Some(Taint { what, policy }),
        };
        self.push(self.now + d, Event::Deliver(pkt));
    }

    /// Random bytes, sometimes starting with a request or reply type byte so parsing goes deeper.
    pub fn random_bytes(&mut self) -> Vec<u8> {
        let len = self.rand_range(1, 90) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| self.rng.next_u32() as u8).collect();
        match self.rand_range(0, 2) {
            0 => v[0] = 1,
            1 => v[0] = 3,
            _ => {}
        }
        v
    }

    /// A copy of a recorded registration message with one bit flipped inside what its MN-HA authenticator
    /// covers, or inside the authenticator itself.
    pub fn flipped(&mut self, original: &[u8]) -> Vec<u8> {
        let d = Dialect::default();
        let mn_ha = Request::parse(original, &d)
            .ok()
            .and_then(|r| r.auth(AuthKind::MobileHome))
            .or_else(|| {
                Reply::parse(original, &d)
                    .ok()
                    .and_then(|r| r.auth(AuthKind::MobileHome))
            })
            .map(|e| e.offset)
            .expect("a recorded message with MN-HA");
        let end = (mn_ha + 22).min(original.len());
        let bit = self.rand_range(0, (end * 8 - 1) as u64) as usize;
        let mut v = original.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        v
    }

    /// A recorded message made malformed: truncated inside its extensions, or with an unknown non-skippable
    /// extension in front of them.
    pub fn malformed(&mut self, original: &[u8]) -> Vec<u8> {
        let header = if original.first() == Some(&1) { 24 } else { 20 };
        if self.rand_range(0, 1) == 0 && original.len() > header + 1 {
            let cut = self.rand_range(1, (original.len() - header - 1) as u64) as usize;
            original[..header + cut].to_vec()
        } else {
            let mut v = original[..header].to_vec();
            v.extend_from_slice(&[100, 2, 0, 0]);
            v.extend_from_slice(&original[header..]);
            v
        }
    }
}

/// A request for the node's home address signed with `key` (and `spi`, which may be reserved or unknown).
pub fn forged_request(
    home_agent: Ipv4Addr,
    care_of_address: Ipv4Addr,
    flags: u8,
    identification: u64,
    key: &str,
    spi: u32,
) -> Vec<u8> {
    let repr = RequestRepr {
        flags: RequestFlags(flags),
        lifetime: 600,
        home_address: HOA,
        home_agent,
        care_of_address,
        identification,
    };
    let sa = SecurityAssociation::new(
        Spi::new(spi.max(Spi::MIN)).expect("spi"),
        Algorithm::HmacMd5,
        Key::from_hex(key).expect("key"),
        ReplayStyle::default(),
    );
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).expect("writer");
    w.push_auth(AuthKind::MobileHome, &sa).expect("auth");
    let n = w.len();
    buf.truncate(n);
    if spi < Spi::MIN {
        buf[26..30].copy_from_slice(&spi.to_be_bytes());
    }
    buf
}

/// An accepting reply for the node signed with `key`.
pub fn forged_reply(home_agent: Ipv4Addr, identification: u64, key: &str) -> Vec<u8> {
    let repr = ReplyRepr {
        code: ReplyCode::Accepted,
        lifetime: 600,
        home_address: HOA,
        home_agent,
        identification,
    };
    let sa = SecurityAssociation::new(
        Spi::new(SPI).expect("spi"),
        Algorithm::HmacMd5,
        Key::from_hex(key).expect("key"),
        ReplayStyle::default(),
    );
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).expect("writer");
    w.push_auth(AuthKind::MobileHome, &sa).expect("auth");
    let n = w.len();
    buf.truncate(n);
    buf
}

/// A short description of a registration message for the trace.
fn describe(b: &[u8]) -> String {
    let d = Dialect::default();
    if let Ok(r) = Request::parse(b, &d) {
        let r = r.repr;
        return format!(
            "RRQ life {} coa {} id {:016x} flags {:#04x}",
            r.lifetime, r.care_of_address, r.identification, r.flags.0
        );
    }
    if let Ok(r) = Reply::parse(b, &d) {
        let r = r.repr;
        return format!(
            "RRP {} life {} id {:016x}",
            r.code.value(),
            r.lifetime,
            r.identification
        );
    }
    format!("{} bytes (unparsable)", b.len())
}

// === statistics ===

/// The median of `v` (sorted in place); 0 when empty.
pub fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// When the `k`-th request of one registration has been sent at the latest (k ≥ 1), from the node's
/// retransmission schedule: timeouts `initial`, doubling, capped at `max` and at the requested lifetime
/// (RFC 5944 §3.6.3), and never faster than the 1 request/s token bucket.
pub fn schedule_ms(k: u32, initial_ms: u64, max_ms: u64, lifetime: u16) -> u64 {
    let cap = max_ms.min(u64::from(lifetime) * 1000).max(initial_ms);
    let mut t = 0;
    let mut timeout = initial_ms;
    for _ in 1..k {
        t += timeout.max(1000);
        timeout = (timeout * 2).min(cap);
    }
    t
}

/// How many attempts make a registration fail with probability below `epsilon` when each round trip of `hops`
/// hops survives with probability (1 − loss)^hops.
pub fn attempts_for(loss: f64, hops: u32, epsilon: f64) -> u32 {
    let p = (1.0 - loss).powi(hops as i32);
    if p >= 1.0 {
        return 1;
    }
    (epsilon.ln() / (1.0 - p).ln()).ceil() as u32
}

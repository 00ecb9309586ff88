//! The MIP Proxy relay (draft-adrangi-mobileip-natvpn-traversal-01 "NV01", -vpn-traversal-02 "VT02"; spec §5).
//!
//! Toward a mobile node the proxy is its home agent: it validates each request as an HA would (authenticator with
//! the MN-HA security association it shares with the node and the real HA, Identification, FA-HA, Home Agent
//! field, T bit, UDP Tunnel Request and NAT detection). Toward the real home agent it is a co-located mobile node
//! at `proxy_private`: it relays a rewritten request (care-of address `proxy_private`, D = 1, new MN-HA
//! authenticator, the node's Identification unchanged), authenticates the HA's reply, installs the binding
//! **before** answering, and answers the node from `proxy_public` with the HA's Identification unchanged.
//!
//! Pipeline for a request (spec §5.1, one numbered step per `// N.` comment below):
//! parse → identify the node → authenticate → Identification → FA-HA → Home Agent field → T bit → reserved bits →
//! UDP tunnel decision → actual HA (HA Parameter extension, static mapping, pool) and allow-list → location
//! detection → simultaneous-binding lifetime → pending entry + relayed request.
//!
//! Anything unauthenticated or malformed produces no datagram, only a [`DropReason`]: the proxy must never be a
//! reflector or an open relay (spec §8).

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::tunnel::{self, TunnelDecision, TunnelPolicy};
use super::{BindingChange, BindingChangeKind, Datagram, DropReason, Now, RegistrationOutcome, Rng, Transmit};
use crate::auth::{SecurityAssociation, Spi};
use crate::binding::{Binding, BindingCache, BindingError, BindingKey, Encapsulation, TunnelEndpoint, Upsert};
use crate::config::{ConfigError, Prefix, Validate};
use crate::keystore::KeyStore;
use crate::replay::{ReplayState, ReplayStyle, ReplayVerdict};
use crate::time::Instant;
use crate::wire::{
    AuthKind, Dialect, Extension, ExtensionBody, HaParameter, Message, MessageWriter, ReplyCode, ReplyRepr, Request,
    RequestFlags, RequestRepr,
};

/// The MIP port.
const MIP_PORT: u16 = 434;
/// Room for what the proxy adds to a message (UDP Tunnel Reply, HA Parameter, two authentication extensions).
const ADDED_EXTENSIONS: usize = 8 + 8 + 2 * 22;

// === configuration ===

/// One home agent the proxy may relay to (the allow-list, spec §8 item 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAgentEntry {
    /// The home agent's address.
    pub address: Ipv4Addr,
    /// Home addresses it serves: the static mapping used when a request carries no HA Parameter extension
    /// (NV01 §4.4).
    #[serde(default)]
    pub home_networks: Vec<Prefix>,
    /// It assigns home addresses to nodes identified by NAI, so it may be picked for a request whose HA
    /// Parameter extension asks for dynamic assignment (HA address 0.0.0.0, NV01 §7.3).
    #[serde(default)]
    pub dynamic_assignment: bool,
}

/// Which reply codes the proxy generates where the drafts disagree (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodeSet {
    /// Standard codes (NV01): 136 when the HA cannot be determined, RFC 2794's 97/98/99, 80–88 on ICMP errors.
    #[default]
    Standard,
    /// VT02's proxy codes 200–206 (never IANA-assigned).
    Vt02,
}

/// NAT traversal policy toward mobile nodes (RFC 3519, spec §5.1 step 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// Accept UDP tunnelling when a NAT is detected (else 129).
    pub traversal: bool,
    /// Accept the F flag (UDP tunnelling without a NAT; else 129).
    pub allow_forced: bool,
    /// Keepalive interval announced in UDP Tunnel Replies, seconds: 0 (the node's default, 110 s) or ≥ 10.
    pub keepalive: u16,
    /// Longest lifetime granted to a node behind a NAT, seconds (RFC 3519 §5.2 suggests 60).
    pub max_lifetime: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            traversal: true,
            allow_forced: false,
            keepalive: 0,
            max_lifetime: 60,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_lifetime() -> u16 {
    1800
}
fn default_pending_timeout_ms() -> u32 {
    7000
}
fn default_max_pending() -> usize {
    65_536
}
fn default_mip_port() -> u16 {
    MIP_PORT
}

/// Proxy configuration (YAML, snake_case). Keys come from a separate keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `proxy_public` (MIPP-Pub): where mobile nodes register; the Home Agent field they use.
    pub proxy_public: Ipv4Addr,
    /// `proxy_private` (MIPP-Priv): the care-of address the home agents see.
    pub proxy_private: Ipv4Addr,
    /// This replica's own address, the source of relayed requests so the HA's reply returns to the replica that
    /// holds the pending entry (scale-out, ARCHITECTURE.md). Default: `proxy_private`. When it differs, relayed
    /// requests carry D = 0 (proxy_private as an agent's care-of address, not a co-located one), so the HA
    /// does not mistake the differing source for a NAT. `mip-proxy` replaces it with the value of the
    /// environment variable [`crate::daemon::NODE_ADDRESS_ENV`] when that is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address: Option<Ipv4Addr>,
    /// UDP source port of relayed requests (default 434).
    #[serde(default = "default_mip_port")]
    pub relay_port: u16,
    /// Home agents the proxy may relay to; nothing else is ever a relay target.
    pub home_agents: Vec<HomeAgentEntry>,
    /// HA Parameter extension code point (spec §2.11; default type 255, sub-type 1).
    #[serde(default)]
    pub dialect: Dialect,
    /// Reply codes for the cases the drafts disagree on.
    #[serde(default)]
    pub reply_codes: CodeSet,
    /// Set T in relayed requests so the proxy may reverse-tunnel to the HA (VT02 "mobility subnets"); default
    /// off (NV01: T = 0).
    #[serde(default)]
    pub mobility_subnet_forwarding: bool,
    /// Relay the B bit, and then D = 0 so the HA double-encapsulates broadcasts (VT02 §2.2.1); default off.
    #[serde(default)]
    pub broadcast: bool,
    /// Support simultaneous bindings (NV01 §7.1 MUST); when off, S is honoured with code 1 (spec §5.1 step 12).
    #[serde(default = "default_true")]
    pub simultaneous_bindings: bool,
    /// Longest lifetime relayed or granted, seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: u16,
    /// NAT traversal policy.
    #[serde(default)]
    pub nat: NatConfig,
    /// VT02 location detection: a care-of address (or NAT source) inside these prefixes is answered with 206 and
    /// the HA to register with directly; empty = off.
    #[serde(default)]
    pub intranet_prefixes: Vec<Prefix>,
    /// How long a relayed request waits for the HA, milliseconds (spec §5.5: 7 s, then no reply).
    #[serde(default = "default_pending_timeout_ms")]
    pub pending_timeout_ms: u32,
    /// Most requests waiting for an HA at once; more are dropped.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Refuse requests with the reserved r/x bits set (134); default off: ignore them (spec §2.2).
    #[serde(default)]
    pub strict_reserved_bits: bool,
    /// Answer a bad MN-HA authenticator with 131 (RFC 5944 MAY); default off: drop silently, so a forged source
    /// never draws a reply.
    #[serde(default)]
    pub reply_on_auth_failure: bool,
}

/// Whether `addr` can be a host's own address here: not 0.0.0.0, not 255.255.255.255, not multicast.
pub fn is_unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast())
}

impl ProxyConfig {
    /// A configuration with defaults for everything but the addresses and home agents.
    pub fn new(proxy_public: Ipv4Addr, proxy_private: Ipv4Addr, home_agents: Vec<HomeAgentEntry>) -> Self {
        ProxyConfig {
            proxy_public,
            proxy_private,
            node_address: None,
            relay_port: MIP_PORT,
            home_agents,
            dialect: Dialect::default(),
            reply_codes: CodeSet::default(),
            mobility_subnet_forwarding: false,
            broadcast: false,
            simultaneous_bindings: true,
            max_lifetime: default_max_lifetime(),
            nat: NatConfig::default(),
            intranet_prefixes: Vec::new(),
            pending_timeout_ms: default_pending_timeout_ms(),
            max_pending: default_max_pending(),
            strict_reserved_bits: false,
            reply_on_auth_failure: false,
        }
    }

    /// Source address of relayed requests.
    pub fn node_address(&self) -> Ipv4Addr {
        self.node_address.unwrap_or(self.proxy_private)
    }
}

impl Validate for ProxyConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        let unicast = is_unicast;
        if !unicast(self.proxy_public) {
            e.push(ConfigError::new("proxy_public", "must be a unicast address"));
        }
        if !unicast(self.proxy_private) {
            e.push(ConfigError::new("proxy_private", "must be a unicast address"));
        }
        if self.proxy_public == self.proxy_private {
            e.push(ConfigError::new("proxy_private", "must differ from proxy_public"));
        }
        if self.node_address.is_some_and(|a| !unicast(a)) {
            e.push(ConfigError::new("node_address", "must be a unicast address"));
        }
        if self.relay_port == 0 {
            e.push(ConfigError::new("relay_port", "must not be 0"));
        }
        if self.home_agents.is_empty() {
            e.push(ConfigError::new(
                "home_agents",
                "at least one home agent is required (the relay allow-list)",
            ));
        }
        for (i, ha) in self.home_agents.iter().enumerate() {
            if !unicast(ha.address) {
                e.push(ConfigError::new(
                    format!("home_agents[{i}].address"),
                    "must be a unicast address",
                ));
            }
            if self.home_agents.iter().take(i).any(|o| o.address == ha.address) {
                e.push(ConfigError::new(format!("home_agents[{i}].address"), "listed twice"));
            }
        }
        if self.max_lifetime == 0 {
            e.push(ConfigError::new("max_lifetime", "must be at least 1 second"));
        }
        if self.nat.max_lifetime == 0 {
            e.push(ConfigError::new("nat.max_lifetime", "must be at least 1 second"));
        }
        if (1..10).contains(&self.nat.keepalive) {
            e.push(ConfigError::new(
                "nat.keepalive",
                "0 (the node's default) or at least 10 s (RFC 3519 §4.10)",
            ));
        }
        if self.pending_timeout_ms == 0 {
            e.push(ConfigError::new("pending_timeout_ms", "must be positive"));
        }
        if self.max_pending == 0 {
            e.push(ConfigError::new("max_pending", "must be positive"));
        }
        e
    }
}

// === inputs and outputs ===

/// What can happen to the proxy.
#[derive(Debug, Clone, Copy)]
pub enum ProxyInput<'a> {
    /// A datagram on UDP 434 at `proxy_public`: a Registration Request from a node or its FA.
    FromMobile(Datagram<'a>),
    /// A datagram on the relay socket (`node_address`): a Registration Reply from a home agent.
    FromHomeAgent(Datagram<'a>),
    /// An ICMP Destination Unreachable about a relayed request to `home_agent` (RFC 792 code).
    HomeAgentUnreachable {
        /// The HA the request was sent to.
        home_agent: Ipv4Addr,
        /// ICMP Destination Unreachable code.
        icmp_code: u8,
    },
    /// The data plane received an RFC 3519 keepalive (UDP-encapsulated ICMP echo) from `src` whose inner source
    /// is `home_address`; completes a half-bound (R-flag) binding (RFC 3519 §4.6).
    Keepalive {
        /// Outer source address and port.
        src: SocketAddrV4,
        /// Inner source address.
        home_address: Ipv4Addr,
    },
    /// Time passed: expire pending requests and bindings.
    Tick,
}

/// What the proxy wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyOutput {
    /// Send a datagram.
    Send(Transmit),
    /// A request was relayed to a home agent (for traces and relay-latency metrics). A [`ProxyOutput::PendingDone`]
    /// with the same node and Identification follows in a later call, unless a retransmission of the request
    /// (same node, same Identification) is relayed again first.
    Relayed {
        /// The node (as in the request: 0.0.0.0 when it asks for an address).
        home_address: Ipv4Addr,
        /// The actual HA.
        home_agent: Ipv4Addr,
        /// Its Identification.
        identification: u64,
        /// The node's NAI, if the request carried one (lossy UTF-8).
        nai: Option<Box<str>>,
        /// The request's care-of address.
        care_of_address: Ipv4Addr,
        /// Whether a NAT was detected between the node and the proxy (RFC 3519).
        nat_detected: bool,
    },
    /// A relayed request left the pending list: the home agent's reply matched it, an ICMP error reported its
    /// home agent unreachable, or it timed out (for traces). Comes before the outputs it causes (bindings, the
    /// reply to the node, or the drop); `home_address`, `nai` and `identification` are those of its
    /// [`ProxyOutput::Relayed`].
    PendingDone {
        /// The node, as in the request.
        home_address: Ipv4Addr,
        /// The node's NAI, as in [`ProxyOutput::Relayed`].
        nai: Option<Box<str>>,
        /// The request's Identification.
        identification: u64,
        /// The home agent it was relayed to.
        home_agent: Ipv4Addr,
        /// What ended it.
        end: PendingEnd,
    },
    /// A binding changed.
    Binding(BindingChange),
    /// A reply went to a node.
    Outcome(RegistrationOutcome),
    /// An input was dropped.
    Drop(DropReason),
}

/// What ended a pending request ([`ProxyOutput::PendingDone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingEnd {
    /// The home agent's authenticated reply, with the HA's code (the node's may differ: NAI checks, no binding).
    Reply(ReplyCode),
    /// An ICMP Destination Unreachable about the home agent (RFC 792 code).
    Unreachable(u8),
    /// No reply within `pending_timeout_ms`.
    Timeout,
}

/// A node's NAI as text for outputs (lossy UTF-8: an NAI is not checked for UTF-8 on the wire).
fn nai_text(nai: Option<&[u8]>) -> Option<Box<str>> {
    nai.map(|n| String::from_utf8_lossy(n).into())
}

/// One node's state for replication between proxy replicas ([`Proxy::apply_replicated`]).
#[derive(Debug, Clone, Copy)]
pub struct ReplicatedNode<'a> {
    /// The node's home address (0.0.0.0 if only the NAI is known).
    pub home_address: Ipv4Addr,
    /// The node's NAI, if it registered with one.
    pub nai: Option<&'a str>,
    /// Every binding the node has at the peer, with `expires_at` already converted to this replica's clock; empty
    /// when the node has none any more.
    pub bindings: &'a [Binding],
    /// Identification of the node's last accepted registration.
    pub last_accepted: Option<u64>,
    /// Nonce-style SAs: the nonce the HA issued last, which the node's next request must carry (RFC 5944
    /// §5.7.2), so that request is accepted at whichever replica it reaches.
    pub nonce_issued: Option<u32>,
}

// === state ===

/// A mobile node's identity for replay state and pending requests: its NAI when it has one (stable across home
/// address assignment), else its home address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MnKey {
    Home(Ipv4Addr),
    Nai(Box<[u8]>),
}

impl MnKey {
    fn of(home_address: Ipv4Addr, nai: Option<&[u8]>) -> MnKey {
        match nai {
            Some(n) => MnKey::Nai(n.into()),
            None => MnKey::Home(home_address),
        }
    }
}

/// A relayed request waiting for its reply (spec §5 "Pending list").
#[derive(Debug, Clone)]
struct Pending {
    mn: MnKey,
    home_address: Ipv4Addr,
    nai: Option<Box<[u8]>>,
    identification: u64,
    spi: Spi,
    /// Where the request came from: the reply goes back there (node, FA or NAT mapping).
    mn_src: SocketAddrV4,
    /// The address and port it arrived on (`proxy_public`:434).
    local: SocketAddrV4,
    care_of_address: Ipv4Addr,
    home_agent: Ipv4Addr,
    /// The node's requested lifetime (0 = deregistration).
    requested: u16,
    /// Requested lifetime after the proxy's caps: what the binding may get.
    capped: u16,
    simultaneous: bool,
    s_unsupported: bool,
    reverse_tunnel: bool,
    tunnel: TunnelDecision,
    /// The relaying FA, when the proxy shares an SA with it (FA-HA in the reply).
    fa: Option<(Ipv4Addr, Spi)>,
    ha_parameter: bool,
    expires: Instant,
}

impl Pending {
    /// The [`ProxyOutput::PendingDone`] for this request.
    fn done(&self, end: PendingEnd) -> ProxyOutput {
        ProxyOutput::PendingDone {
            home_address: self.home_address,
            nai: nai_text(self.nai.as_deref()),
            identification: self.identification,
            home_agent: self.home_agent,
            end,
        }
    }
}

/// The MIP Proxy relay.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    dialect: Dialect,
    tunnel_policy: TunnelPolicy,
    keys: KeyStore,
    bindings: BindingCache,
    replay: HashMap<MnKey, ReplayState>,
    /// Pending requests by the low 32 bits of their Identification (RFC 5944 §3.7.3.1 matching).
    pending: HashMap<u32, Vec<Pending>>,
    pending_count: usize,
    /// (expiry, low 32 bits, Identification) in arrival order: the timeout is constant, so this is expiry order.
    pending_timeouts: VecDeque<(Instant, u32, u64)>,
    rng: Rng,
}

impl Proxy {
    /// A proxy with `config` (validated by the caller) and the MN-HA and FA-HA security associations in `keys`.
    pub fn new(config: ProxyConfig, keys: KeyStore, seed: u64) -> Proxy {
        let tunnel_policy = TunnelPolicy {
            nat_traversal: config.nat.traversal,
            allow_forced: config.nat.allow_forced,
            keepalive: config.nat.keepalive,
        };
        Proxy {
            dialect: config.dialect,
            tunnel_policy,
            config,
            keys,
            bindings: BindingCache::new(),
            replay: HashMap::new(),
            pending: HashMap::new(),
            pending_count: 0,
            pending_timeouts: VecDeque::new(),
            rng: Rng::new(seed),
        }
    }

    /// Installs a node's state as a peer replica holds it (scale-out, ARCHITECTURE.md "Scale-out"): the node's
    /// whole binding set replaces this replica's (an empty set removes the node; zero-lifetime entries are
    /// skipped), and the Identification of its last accepted registration moves the replay state forward, so a
    /// request replayed at this replica is refused as it would be at the peer. Nothing is sent and pending
    /// requests stay local (each replica relays from its own node address). Which replica's state wins is decided
    /// before this call (`mip-replication`); this only installs the winner.
    pub fn apply_replicated(&mut self, node: &ReplicatedNode<'_>) -> Result<(), BindingError> {
        let home = node.home_address;
        let key = match (home.is_unspecified(), node.nai) {
            (false, _) => BindingKey::Home(home),
            (true, Some(n)) => BindingKey::Nai(n.into()),
            (true, None) => return Err(BindingError::NoKey),
        };
        self.bindings.remove_all(&key);
        for b in node.bindings.iter().filter(|b| b.lifetime != 0) {
            self.bindings.upsert(home, node.nai, *b, true)?;
        }
        let sas = if home.is_unspecified() {
            node.nai.map_or(&[][..], |n| self.keys.for_nai(n))
        } else {
            self.keys.for_peer(home)
        };
        if let Some(style) = sas.first().map(|sa| sa.replay)
            && (node.last_accepted.is_some() || node.nonce_issued.is_some())
        {
            let state = self
                .replay
                .entry(MnKey::of(home, node.nai.map(str::as_bytes)))
                .or_default();
            if let Some(id) = node.last_accepted {
                state.accept(&style, id);
            }
            // After `accept`, which consumes the nonce the accepted request carried.
            if let (ReplayStyle::Nonce, Some(n)) = (style, node.nonce_issued) {
                state.record_issued_nonce(n);
            }
        }
        Ok(())
    }

    /// Nonce-style SAs: the nonce the node's next request must carry (what [`ReplicatedNode::nonce_issued`]
    /// carries to the peers).
    pub fn issued_nonce(&self, home_address: Ipv4Addr, nai: Option<&str>) -> Option<u32> {
        self.replay
            .get(&MnKey::of(home_address, nai.map(str::as_bytes)))
            .and_then(ReplayState::issued_nonce)
    }

    /// The Identification of the node's last accepted registration (what [`ReplicatedNode::last_accepted`]
    /// carries to the peers).
    pub fn last_accepted(&self, home_address: Ipv4Addr, nai: Option<&str>) -> Option<u64> {
        self.replay
            .get(&MnKey::of(home_address, nai.map(str::as_bytes)))
            .and_then(ReplayState::last_accepted)
    }

    /// Replaces the security associations (key reload); bindings, replay state and pending requests stay.
    pub fn set_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
    }

    /// The security associations in use.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The binding cache (the data plane's lookup table).
    pub fn bindings(&self) -> &BindingCache {
        &self.bindings
    }

    /// Requests waiting for a home agent.
    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// When `handle` should next be called with [`ProxyInput::Tick`].
    pub fn next_timer(&mut self) -> Option<Instant> {
        let pending = self.pending_timeouts.front().map(|(t, ..)| *t);
        let binding = self.bindings.next_expiry();
        match (pending, binding) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one input.
    pub fn handle(&mut self, now: Now, input: ProxyInput<'_>, out: &mut Vec<ProxyOutput>) {
        match input {
            ProxyInput::FromMobile(dg) => {
                if let Err(reason) = self.on_request(now, &dg, out) {
                    out.push(ProxyOutput::Drop(reason));
                }
            }
            ProxyInput::FromHomeAgent(dg) => {
                if let Err(reason) = self.on_reply(now, &dg, out) {
                    out.push(ProxyOutput::Drop(reason));
                }
            }
            ProxyInput::HomeAgentUnreachable { home_agent, icmp_code } => {
                self.on_unreachable(home_agent, icmp_code, out);
            }
            ProxyInput::Keepalive { src, home_address } => {
                match self
                    .bindings
                    .complete_half_bound(home_address, *src.ip(), src.port())
                    .copied()
                {
                    Some(b) => {
                        let change = self.change(BindingChangeKind::Refreshed, home_address, b);
                        out.push(ProxyOutput::Binding(change));
                    }
                    None => out.push(ProxyOutput::Drop(DropReason::UnexpectedKeepalive)),
                }
            }
            ProxyInput::Tick => self.on_tick(now, out),
        }
    }

    // === requests from mobile nodes (spec §5.1) ===

    fn on_request(&mut self, now: Now, dg: &Datagram<'_>, out: &mut Vec<ProxyOutput>) -> Result<(), DropReason> {
        // 1. The UDP checksum was verified by the I/O layer. 2. Parse: malformed or unknown non-skippable
        // extensions are dropped silently; answering would make the proxy a reflector.
        let req = match Message::parse(dg.payload, &self.dialect).map_err(|e| DropReason::Malformed(e.kind))? {
            Message::Request(r) => r,
            _ => return Err(DropReason::UnexpectedMessage),
        };
        let r = req.repr;

        // 3. Identify the node and its SA: (HoA, SPI), or (NAI, SPI) when HoA = 0. No SA, reserved SPI, or HoA 0
        // without NAI → silent drop (spec §5.1 step 3, RFC 5944 §3.8.2.1a; we cannot build an authenticated reply).
        let mn_ha = req.auth(AuthKind::MobileHome).ok_or(DropReason::NoAuthExtension)?;
        let ExtensionBody::Auth { spi, .. } = mn_ha.body else {
            return Err(DropReason::NoAuthExtension);
        };
        let nai = req.nai();
        let sa = self.mn_sa(r.home_address, nai, spi)?.clone();

        // 4. Authenticate. A bad authenticator is dropped unless policy says to answer 131.
        let ctx = DenyCtx { dg, req: &req, sa: &sa };
        if sa.verify(req.bytes, &mn_ha).is_err() {
            if self.config.reply_on_auth_failure {
                self.deny(&ctx, ReplyCode::HaMnAuthFailed, None, None, out);
                return Ok(());
            }
            return Err(DropReason::BadAuthenticator);
        }

        // 5. Identification (spec §4 "Proxy specifics").
        let mn = MnKey::of(r.home_address, nai);
        let state = self.replay.get(&mn).copied().unwrap_or_default();
        match (sa.replay, state.check(&sa.replay, r.identification, now.ntp)) {
            (_, ReplayVerdict::Fresh | ReplayVerdict::Retransmission) => {}
            // Nonces the proxy never issued: relay and let the HA answer 133, which is relayed unchanged.
            (ReplayStyle::Nonce, _) if state.issued_nonce().is_none() => {}
            (_, ReplayVerdict::Mismatch(_)) => {
                let mut st = state;
                // For nonces, hand out the nonce the HA issued last: the one the HA will accept next.
                let nonce = state.issued_nonce().unwrap_or_else(|| self.rng.next_u32());
                let id = st.resync_identification(&sa.replay, r.identification, now.ntp, nonce);
                self.replay.insert(mn, st);
                self.deny(&ctx, ReplyCode::IdentificationMismatch, Some(id), None, out);
                return Ok(());
            }
        }

        // 6. FA-HA (RFC 5944 §3.8.2.1 c, d). Only a request relayed by an FA (D = 0) comes from an FA.
        let fa = match self.check_fa_ha(dg, &req) {
            Ok(fa) => fa,
            Err(FaHaError::Drop) => return Err(DropReason::UnknownFaHaSpi),
            Err(FaHaError::Deny) => {
                self.deny(&ctx, ReplyCode::HaFaAuthFailed, None, None, out);
                return Ok(());
            }
        };

        // 7. Home Agent field: the node must have addressed the proxy, by unicast (RFC 5944 §3.8.2.1, §3.8.3.2).
        if *dg.dst.ip() != self.config.proxy_public || r.home_agent != self.config.proxy_public {
            self.deny(&ctx, ReplyCode::UnknownHomeAgent, None, None, out);
            return Ok(());
        }

        // 8. T bit: the proxy only works with reverse tunnelling (NV01 §4.2.1, VT02 §2.2.4) → 138. A
        // deregistration sets up no tunnel, so it is not held to this (spec §10 case 61: V8 has T = 0).
        if r.lifetime != 0 && !r.flags.reverse_tunnel() {
            self.deny(&ctx, ReplyCode::HaReverseTunnelMandatory, None, None, out);
            return Ok(());
        }
        if self.config.strict_reserved_bits && r.flags.reserved_set() {
            self.deny(&ctx, ReplyCode::HaPoorlyFormedRequest, None, None, out);
            return Ok(());
        }

        // 9. UDP tunnel decision and NAT detection (RFC 3519 §4.6, shared with the HA).
        let tunnel = if r.lifetime == 0 {
            // A deregistration keeps no tunnel; its UDP Tunnel Request (if any) is ignored (spec §2.6).
            no_tunnel(r.care_of_address)
        } else {
            match tunnel::decide(&req, mn_ha.offset, dg.src, &self.tunnel_policy) {
                Ok(t) => t,
                Err(code) => {
                    self.deny(&ctx, code, None, None, out);
                    return Ok(());
                }
            }
        };

        // 10. The actual home agent, then the allow-list.
        let ha_param = req
            .extensions()
            .take_while(|e| e.offset < mn_ha.offset)
            .find_map(|e| match e.body {
                ExtensionBody::HaParameter(h) => Some(h.home_agent),
                _ => None,
            });
        let home_agent = match self.select_home_agent(r.home_address, nai, ha_param) {
            Ok(ha) => ha,
            Err(code) => {
                self.deny(&ctx, code, None, None, out);
                return Ok(());
            }
        };

        // 11. VT02 location detection: a node inside the intranet registers directly with its HA (206).
        let location = if tunnel.nat_detected {
            *dg.src.ip()
        } else {
            r.care_of_address
        };
        if self.config.intranet_prefixes.iter().any(|p| p.contains(location)) {
            // The reply names the HA to register with (VT02 §2.6.1).
            self.deny(&ctx, ReplyCode::ProxyAssignedHomeAgent, None, Some(home_agent), out);
            return Ok(());
        }

        // 12. Lifetimes: caps, then the simultaneous-binding rule (NV01 §7.1).
        let s_requested = r.flags.simultaneous();
        let simultaneous = s_requested && self.config.simultaneous_bindings;
        let mut capped = r.lifetime.min(self.config.max_lifetime);
        if tunnel.nat_detected {
            capped = capped.min(self.config.nat.max_lifetime);
        }
        let deregister_all = r.lifetime == 0 && r.care_of_address == r.home_address;
        let others = if deregister_all || !(simultaneous || r.lifetime == 0) {
            0
        } else {
            self.remaining_of_others(r.home_address, nai, r.care_of_address, now.instant)
        };
        let relayed_lifetime = capped.max(others);

        // 13. Pending entry, then the relayed request.
        let nat_detected = tunnel.nat_detected;
        if self.pending_count >= self.config.max_pending && !self.is_pending(&mn, r.identification) {
            return Err(DropReason::PendingFull);
        }
        let payload = self.relay_bytes(&req, mn_ha.offset, home_agent, relayed_lifetime, &sa);
        let pending = Pending {
            mn,
            home_address: r.home_address,
            nai: nai.map(Into::into),
            identification: r.identification,
            spi: sa.spi(),
            mn_src: dg.src,
            local: dg.dst,
            care_of_address: r.care_of_address,
            home_agent,
            requested: r.lifetime,
            capped,
            simultaneous,
            s_unsupported: s_requested && !self.config.simultaneous_bindings,
            reverse_tunnel: r.flags.reverse_tunnel(),
            tunnel,
            fa,
            ha_parameter: ha_param.is_some(),
            expires: now.instant + Duration::from_millis(u64::from(self.config.pending_timeout_ms)),
        };
        self.add_pending(pending);
        out.push(ProxyOutput::Send(Transmit {
            src: SocketAddrV4::new(self.config.node_address(), self.config.relay_port),
            dst: SocketAddrV4::new(home_agent, MIP_PORT),
            ttl: None,
            payload,
        }));
        out.push(ProxyOutput::Relayed {
            home_address: r.home_address,
            home_agent,
            identification: r.identification,
            nai: nai_text(nai),
            care_of_address: r.care_of_address,
            nat_detected,
        });
        Ok(())
    }

    fn mn_sa(&self, home_address: Ipv4Addr, nai: Option<&[u8]>, spi: u32) -> Result<&SecurityAssociation, DropReason> {
        if !home_address.is_unspecified() {
            return self
                .keys
                .get(home_address, spi)
                .ok_or(DropReason::NoSecurityAssociation);
        }
        let nai = nai.ok_or(DropReason::NoIdentity)?;
        self.keys.get_by_nai(nai, spi).ok_or(DropReason::NoSecurityAssociation)
    }

    /// RFC 5944 §3.8.2.1 (c) and (d) for a request from an FA: returns the FA and the SPI of the SA shared with
    /// it, if any.
    fn check_fa_ha(&self, dg: &Datagram<'_>, req: &Request<'_>) -> Result<Option<(Ipv4Addr, Spi)>, FaHaError> {
        if req.repr.flags.decapsulation_by_mn() {
            return Ok(None);
        }
        let fa = self.relaying_fa(dg, req);
        let fa_ha: Vec<Extension<'_>> = req
            .extensions()
            .filter(|e| {
                matches!(
                    e.body,
                    ExtensionBody::Auth {
                        kind: AuthKind::ForeignHome,
                        ..
                    }
                )
            })
            .collect();
        let shared = self.keys.for_agent(fa).first().map(SecurityAssociation::spi);
        match (fa_ha.as_slice(), shared) {
            ([], None) => Ok(None),
            // A deregistration needs no FA-HA (RFC 5944 §3.5.4).
            ([], Some(spi)) if req.repr.lifetime == 0 => Ok(Some((fa, spi))),
            ([], Some(_)) => Err(FaHaError::Deny),
            ([one], _) => {
                let ExtensionBody::Auth { spi, .. } = one.body else {
                    return Err(FaHaError::Drop);
                };
                let sa = self.keys.agent(fa, spi).ok_or(FaHaError::Drop)?;
                sa.verify(req.bytes, one).map_err(|_| FaHaError::Deny)?;
                Ok(Some((fa, sa.spi())))
            }
            _ => Err(FaHaError::Deny),
        }
    }

    /// The FA that relayed a D = 0 request: its IP source (RFC 5944 §3.5.4); behind a NAT that is the NAT's
    /// address, so an FA known by its care-of address is found by that instead.
    fn relaying_fa(&self, dg: &Datagram<'_>, req: &Request<'_>) -> Ipv4Addr {
        if self.keys.for_agent(*dg.src.ip()).is_empty() {
            req.repr.care_of_address
        } else {
            *dg.src.ip()
        }
    }

    /// Spec §5.1 step 10: HA Parameter extension, else static mapping, else a dynamic-assignment HA for an NAI;
    /// then the allow-list (spec §8 item 2).
    fn select_home_agent(
        &self,
        home_address: Ipv4Addr,
        nai: Option<&[u8]>,
        ha_param: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ReplyCode> {
        let vt02 = self.config.reply_codes == CodeSet::Vt02;
        let undetermined = if vt02 {
            ReplyCode::ProxyMissingHaParameter
        } else {
            ReplyCode::UnknownHomeAgent
        };
        match ha_param {
            Some(a) if a.is_unspecified() => {
                if nai.is_none() {
                    return Err(if vt02 {
                        ReplyCode::ProxyNonzeroHaRequired
                    } else {
                        ReplyCode::UnknownHomeAgent
                    });
                }
                self.config
                    .home_agents
                    .iter()
                    .find(|h| h.dynamic_assignment)
                    .map(|h| h.address)
                    .ok_or(undetermined)
            }
            Some(a) => {
                if self.config.home_agents.iter().any(|h| h.address == a) {
                    Ok(a)
                } else {
                    // Never aim the proxy at an address an outsider chose (spec §8 item 2; 129 [G]).
                    Err(ReplyCode::HaProhibited)
                }
            }
            None => self
                .config
                .home_agents
                .iter()
                .find(|h| h.home_networks.iter().any(|p| p.contains(home_address)))
                .map(|h| h.address)
                .ok_or(undetermined),
        }
    }

    /// Longest remaining lifetime among the node's bindings other than `coa`, in whole seconds (rounded up).
    fn remaining_of_others(&self, home_address: Ipv4Addr, nai: Option<&[u8]>, coa: Ipv4Addr, now: Instant) -> u16 {
        let Some(entry) = self.entry(home_address, nai) else {
            return 0;
        };
        entry
            .bindings()
            .iter()
            .filter(|b| b.care_of_address != coa)
            .map(|b| {
                let ms = b.remaining(now).as_millis();
                u16::try_from(ms.div_ceil(1000)).unwrap_or(u16::MAX)
            })
            .max()
            .unwrap_or(0)
    }

    fn entry(&self, home_address: Ipv4Addr, nai: Option<&[u8]>) -> Option<&crate::binding::MnEntry> {
        if !home_address.is_unspecified()
            && let Some(e) = self.bindings.get_by_home(home_address)
        {
            return Some(e);
        }
        let nai = core::str::from_utf8(nai?).ok()?;
        self.bindings.get_by_nai(nai)
    }

    /// The relayed request (spec §5.1 step 13 table): S = 0; B per config; D = 1 (0 when relaying B);
    /// M, G, r copied; T per config; x = 0; HA = actual HA; CoA = `proxy_private`; Identification unchanged;
    /// the node's extensions before its MN-HA except the HA Parameter and UDP Tunnel Request (MN↔proxy
    /// negotiation), then a new MN-HA with the same SA.
    fn relay_bytes(
        &self,
        req: &Request<'_>,
        mn_ha_offset: usize,
        home_agent: Ipv4Addr,
        lifetime: u16,
        sa: &SecurityAssociation,
    ) -> Vec<u8> {
        let r = req.repr;
        let f = r.flags;
        let broadcast = f.broadcast() && self.config.broadcast;
        // A replica relaying from its own node address presents proxy_private as a foreign agent's care-of
        // address (D = 0): the HA tunnels to proxy_private as always and answers the request's source, the
        // replica holding the pending entry. A co-located care-of address (D = 1) reached from another source
        // is what an RFC 3519 home agent takes for a NAT it was not asked to traverse, and refuses (134).
        let co_located = !broadcast && self.config.node_address() == self.config.proxy_private;
        let flags = RequestFlags(f.0 & (RequestFlags::M | RequestFlags::G | RequestFlags::R_RESERVED))
            .with(RequestFlags::B, broadcast)
            .with(RequestFlags::D, co_located)
            .with(RequestFlags::T, self.config.mobility_subnet_forwarding);
        let repr = RequestRepr {
            flags,
            lifetime,
            home_address: r.home_address,
            home_agent,
            care_of_address: self.config.proxy_private,
            identification: r.identification,
        };
        let mut buf = vec![0u8; req.bytes.len() + ADDED_EXTENSIONS];
        let len = (|| {
            let mut w = MessageWriter::request(&mut buf, &repr, &self.dialect)?;
            for e in req.extensions().take_while(|e| e.offset < mn_ha_offset) {
                match e.body {
                    ExtensionBody::HaParameter(_) | ExtensionBody::UdpTunnelRequest(_) | ExtensionBody::Auth { .. } => {
                    }
                    _ => {
                        w.push_raw(e.bytes)?;
                    }
                }
            }
            w.push_auth(AuthKind::MobileHome, sa)?;
            Ok::<usize, crate::wire::Error>(w.len())
        })()
        .unwrap_or(0);
        buf.truncate(len);
        buf
    }

    fn is_pending(&self, mn: &MnKey, identification: u64) -> bool {
        self.pending
            .get(&(identification as u32))
            .is_some_and(|v| v.iter().any(|p| p.mn == *mn && p.identification == identification))
    }

    fn add_pending(&mut self, p: Pending) {
        let low = p.identification as u32;
        self.pending_timeouts.push_back((p.expires, low, p.identification));
        let slot = self.pending.entry(low).or_default();
        // A retransmission (same node, same Identification) replaces its earlier entry.
        if let Some(old) = slot
            .iter_mut()
            .find(|o| o.mn == p.mn && o.identification == p.identification)
        {
            *old = p;
        } else {
            slot.push(p);
            self.pending_count += 1;
        }
    }

    fn take_pending(&mut self, low: u32, pick: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let slot = self.pending.get_mut(&low)?;
        let i = slot.iter().position(pick)?;
        let p = slot.swap_remove(i);
        if slot.is_empty() {
            self.pending.remove(&low);
        }
        self.pending_count -= 1;
        Some(p)
    }

    // === replies from home agents (spec §5.2) ===

    fn on_reply(&mut self, now: Now, dg: &Datagram<'_>, out: &mut Vec<ProxyOutput>) -> Result<(), DropReason> {
        let ha = *dg.src.ip();
        if !self.config.home_agents.iter().any(|h| h.address == ha) {
            return Err(DropReason::UnknownHomeAgent);
        }
        // 1. Parse, then match a pending request by HoA or NAI and the low 32 bits of the Identification.
        let reply = match Message::parse(dg.payload, &self.dialect).map_err(|e| DropReason::Malformed(e.kind))? {
            Message::Reply(r) => r,
            _ => return Err(DropReason::UnexpectedMessage),
        };
        let rr = reply.repr;
        let low = rr.identification as u32;
        let reply_nai = reply.nai();
        let matches = |p: &Pending| {
            p.home_agent == ha
                && match (&p.nai, reply_nai) {
                    (Some(a), Some(b)) => **a == *b,
                    // The request had an NAI the reply lacks: match by address, answered with 97 below.
                    (Some(_), None) => p.home_address.is_unspecified() || p.home_address == rr.home_address,
                    (None, _) => p.home_address == rr.home_address,
                }
        };
        let found = self
            .pending
            .get(&low)
            .and_then(|v| v.iter().find(|p| matches(p)))
            .map(|p| (p.home_address, p.nai.clone(), p.spi));
        let (req_home, req_nai, spi) = found.ok_or(DropReason::NoPendingRequest)?;

        // 2. Authenticate with the node's SA: exactly one MN-HA, valid (VT02 §2.1; RFC 5944 §3.6.2.1 analog).
        let sa = self
            .mn_sa(req_home, req_nai.as_deref(), spi.get())
            .map_err(|_| DropReason::NoSecurityAssociation)?;
        if reply.auth_count(AuthKind::MobileHome) != 1 {
            return Err(DropReason::BadReplyAuthentication);
        }
        let mn_ha = reply
            .auth(AuthKind::MobileHome)
            .ok_or(DropReason::BadReplyAuthentication)?;
        if sa.verify(reply.bytes, &mn_ha).is_err() {
            return Err(DropReason::BadReplyAuthentication);
        }
        let sa = sa.clone();
        let p = self.take_pending(low, matches).ok_or(DropReason::NoPendingRequest)?;
        out.push(p.done(PendingEnd::Reply(rr.code)));

        // 3. NAI checks (NV01 §7.2, VT02 §2.6.3).
        let vt02 = self.config.reply_codes == CodeSet::Vt02;
        let mut code = rr.code;
        if code.is_accepted() {
            if p.nai.is_some() && reply_nai.is_none() {
                code = if vt02 {
                    ReplyCode::ProxyMissingNai
                } else {
                    ReplyCode::MissingNai
                };
            } else if rr.home_address.is_unspecified() {
                code = if vt02 {
                    ReplyCode::ProxyMissingHomeAddress
                } else {
                    ReplyCode::MissingHomeAddress
                };
            } else if rr.home_agent.is_unspecified() {
                code = if vt02 {
                    ReplyCode::ProxyMissingHomeAgent
                } else {
                    ReplyCode::MissingHomeAgent
                };
            }
        }

        // A registration the HA accepted after a newer one of the same node, whose replies crossed on the way back:
        // installing it would move the binding back to an older care-of address while the node, which only takes
        // the reply to its latest request, stays registered at the newer one. Timestamps order registrations
        // (RFC 5944 §5.7.1); with nonces the HA accepts one request per nonce, so accepted replies cannot cross.
        if code.is_accepted()
            && matches!(sa.replay, ReplayStyle::Timestamp { .. })
            && let Some(last) = self.replay.get(&p.mn).and_then(ReplayState::last_accepted)
            && (last.wrapping_sub(p.identification) as i64) > 0
        {
            return Err(DropReason::IdentificationMismatch);
        }

        // 4. Update state before answering.
        let mut lifetime = rr.lifetime;
        if code.is_accepted() {
            let mut state = self.replay.get(&p.mn).copied().unwrap_or_default();
            state.accept(&sa.replay, p.identification);
            if sa.replay == ReplayStyle::Nonce {
                state.record_issued_nonce((rr.identification >> 32) as u32);
            }
            self.replay.insert(p.mn.clone(), state);
            if p.requested == 0 {
                lifetime = 0;
                self.deregister(&p, rr.home_address, out);
            } else {
                lifetime = rr.lifetime.min(p.capped);
                if lifetime == 0 || self.install(now, &p, rr.home_address, lifetime, out).is_err() {
                    // The HA accepted but there is no binding to be had: "insufficient resources" (VT02 §2.3.1
                    // writes 133; that code means Identification mismatch, so 130, spec §5.2 step 4).
                    code = ReplyCode::HaInsufficientResources;
                }
                if p.s_unsupported && code == ReplyCode::Accepted {
                    code = ReplyCode::AcceptedNoSimultaneous;
                }
            }
        } else if code == ReplyCode::IdentificationMismatch && sa.replay == ReplayStyle::Nonce {
            // Keep the HA's fresh nonce so the node's next request can be checked here (spec §4 [G]).
            let state = self.replay.entry(p.mn.clone()).or_default();
            state.record_issued_nonce((rr.identification >> 32) as u32);
        }

        // 5. The reply to the node: the HA's non-authentication extensions, the UDP Tunnel Reply, the HA
        // Parameter extension naming the actual HA, a new MN-HA, and FA-HA when the proxy shares an SA with the FA.
        let ha_exts: Vec<&[u8]> = reply
            .extensions()
            .take_while(|e| e.offset < mn_ha.offset)
            .filter(|e| {
                !matches!(
                    e.body,
                    ExtensionBody::Auth { .. } | ExtensionBody::UdpTunnelReply(_) | ExtensionBody::HaParameter(_)
                )
            })
            .map(|e| e.bytes)
            .collect();
        let repr = ReplyRepr {
            code,
            lifetime,
            home_address: rr.home_address,
            home_agent: self.config.proxy_public,
            identification: rr.identification,
        };
        let utrp = if code.is_accepted() {
            p.tunnel.reply.map(|u| (u, p.tunnel.reply_to_foreign_agent))
        } else {
            None
        };
        let fa_sa =
            p.fa.and_then(|(fa, spi)| self.keys.agent(fa, spi.get()))
                .filter(|_| p.requested != 0)
                .cloned();
        let payload = self.build_reply_bytes(
            &repr,
            &ha_exts,
            utrp,
            p.ha_parameter.then_some(p.home_agent),
            &sa,
            fa_sa.as_ref(),
        );
        out.push(ProxyOutput::Send(Transmit {
            src: p.local,
            dst: p.mn_src,
            ttl: None,
            payload,
        }));
        out.push(ProxyOutput::Outcome(RegistrationOutcome {
            home_address: rr.home_address,
            care_of_address: p.care_of_address,
            home_agent: Some(p.home_agent),
            code,
            lifetime,
            nat_detected: p.tunnel.nat_detected,
        }));
        Ok(())
    }

    /// Installs or refreshes the node's binding after the HA accepted (spec §5.2 step 4).
    fn install(
        &mut self,
        now: Now,
        p: &Pending,
        home_address: Ipv4Addr,
        lifetime: u16,
        out: &mut Vec<ProxyOutput>,
    ) -> Result<(), ()> {
        let mut binding = Binding::new(
            p.care_of_address,
            p.tunnel.tunnel,
            p.home_agent,
            p.identification,
            lifetime,
            now.instant,
        );
        binding.keepalive_interval = p.tunnel.reply.filter(|u| u.assents()).map_or(0, |u| u.keepalive);
        binding.reverse_tunnel = p.reverse_tunnel;
        binding.half_bound = p.tunnel.half_bound;
        let nai = p.nai.as_deref().and_then(|n| core::str::from_utf8(n).ok());
        let before: Vec<Binding> = self
            .entry(home_address, p.nai.as_deref())
            .map(|e| e.bindings().to_vec())
            .unwrap_or_default();
        let result = self
            .bindings
            .upsert(home_address, nai, binding, p.simultaneous)
            .map_err(|_| ())?;
        let kind = match result {
            Upsert::Duplicate => return Ok(()),
            Upsert::Created | Upsert::Added => BindingChangeKind::Created,
            Upsert::Refreshed { .. } | Upsert::Replaced { .. } => {
                if before.iter().any(|b| b.care_of_address == binding.care_of_address) {
                    BindingChangeKind::Refreshed
                } else {
                    BindingChangeKind::Created
                }
            }
        };
        let after: Vec<Ipv4Addr> = self
            .entry(home_address, p.nai.as_deref())
            .map(|e| e.bindings().iter().map(|b| b.care_of_address).collect())
            .unwrap_or_default();
        for old in before.iter().filter(|b| !after.contains(&b.care_of_address)) {
            out.push(ProxyOutput::Binding(self.change(
                BindingChangeKind::Removed,
                home_address,
                *old,
            )));
        }
        out.push(ProxyOutput::Binding(self.change(kind, home_address, binding)));
        Ok(())
    }

    /// Removes the binding(s) a deregistration named (spec §5.3): CoA = HoA removes all.
    fn deregister(&mut self, p: &Pending, home_address: Ipv4Addr, out: &mut Vec<ProxyOutput>) {
        let nai = p.nai.as_deref().and_then(|n| core::str::from_utf8(n).ok());
        let Some(key) = BindingKey::for_mn(home_address, nai) else {
            return;
        };
        let removed: Vec<Binding> = if p.care_of_address == home_address || p.care_of_address == p.home_address {
            self.bindings
                .remove_all(&key)
                .map(|e| e.bindings().to_vec())
                .unwrap_or_default()
        } else {
            self.bindings
                .remove_care_of(&key, p.care_of_address)
                .into_iter()
                .collect()
        };
        for b in removed {
            out.push(ProxyOutput::Binding(self.change(
                BindingChangeKind::Removed,
                home_address,
                b,
            )));
        }
    }

    fn change(&self, kind: BindingChangeKind, home_address: Ipv4Addr, binding: Binding) -> BindingChange {
        let nai = self
            .bindings
            .get_by_home(home_address)
            .and_then(|e| e.nai())
            .map(Into::into);
        BindingChange {
            kind,
            home_address,
            nai,
            binding,
        }
    }

    // === proxy-generated replies (spec §5.2 step 6) ===

    /// A denial built from the request: Home Address and Identification copied (or `identification` for 133),
    /// Home Agent = `proxy_public`, lifetime copied, optionally the HA Parameter extension (206), MN-HA with the
    /// node's SA; sent back to the request's source.
    fn deny(
        &self,
        ctx: &DenyCtx<'_, '_>,
        code: ReplyCode,
        identification: Option<u64>,
        ha_parameter: Option<Ipv4Addr>,
        out: &mut Vec<ProxyOutput>,
    ) {
        let r = ctx.req.repr;
        let repr = ReplyRepr {
            code,
            lifetime: r.lifetime,
            home_address: r.home_address,
            home_agent: self.config.proxy_public,
            identification: identification.unwrap_or(r.identification),
        };
        // An FA that shares an SA with us turns a reply without FA-HA into 68 (RFC 5944 §3.7.3.1), so our own
        // denials carry FA-HA as relayed replies do (§3.8.3.3): else a 133 resync could never reach the node.
        let fa_sa = self.reply_fa_sa(ctx.dg, ctx.req);
        let payload = self.build_reply_bytes(&repr, &[], None, ha_parameter, ctx.sa, fa_sa.as_ref());
        out.push(ProxyOutput::Send(Transmit {
            src: SocketAddrV4::new(self.config.proxy_public, ctx.dg.dst.port()),
            dst: ctx.dg.src,
            ttl: None,
            payload,
        }));
        out.push(ProxyOutput::Outcome(RegistrationOutcome {
            home_address: r.home_address,
            care_of_address: r.care_of_address,
            home_agent: None,
            code,
            lifetime: r.lifetime,
            nat_detected: r.flags.decapsulation_by_mn() && *ctx.dg.src.ip() != r.care_of_address,
        }));
    }

    /// The SA for the FA-HA extension of a reply the proxy makes up itself for a request an FA relayed (D = 0):
    /// the one shared with that FA (the SPI of the request's FA-HA when it names one), never on a
    /// deregistration (RFC 5944 §3.5.4); `None` without a shared SA.
    fn reply_fa_sa(&self, dg: &Datagram<'_>, req: &Request<'_>) -> Option<SecurityAssociation> {
        if req.repr.flags.decapsulation_by_mn() || req.repr.lifetime == 0 {
            return None;
        }
        let fa = self.relaying_fa(dg, req);
        let spi = req.auth(AuthKind::ForeignHome).and_then(|e| match e.body {
            ExtensionBody::Auth { spi, .. } => Some(spi),
            _ => None,
        });
        spi.and_then(|s| self.keys.agent(fa, s))
            .or_else(|| self.keys.for_agent(fa).first())
            .cloned()
    }

    fn build_reply_bytes(
        &self,
        repr: &ReplyRepr,
        raw_exts: &[&[u8]],
        utrp: Option<(crate::wire::UdpTunnelReply, bool)>,
        ha_parameter: Option<Ipv4Addr>,
        sa: &SecurityAssociation,
        fa_sa: Option<&SecurityAssociation>,
    ) -> Vec<u8> {
        let size = 20 + raw_exts.iter().map(|e| e.len()).sum::<usize>() + ADDED_EXTENSIONS;
        let mut buf = vec![0u8; size];
        let len = (|| {
            let mut w = MessageWriter::reply(&mut buf, repr, &self.dialect)?;
            for e in raw_exts {
                w.push_raw(e)?;
            }
            if let Some((u, false)) = utrp {
                w.push(&ExtensionBody::UdpTunnelReply(u))?;
            }
            if let Some(ha) = ha_parameter {
                w.push(&ExtensionBody::HaParameter(HaParameter {
                    reserved: 0,
                    home_agent: ha,
                }))?;
            }
            w.push_auth(AuthKind::MobileHome, sa)?;
            // A reply to a foreign agent's own UDP Tunnel Request is FA-only: after MN-HA, before FA-HA.
            if let Some((u, true)) = utrp {
                w.push(&ExtensionBody::UdpTunnelReply(u))?;
            }
            if let Some(fa) = fa_sa {
                w.push_auth(AuthKind::ForeignHome, fa)?;
            }
            Ok::<usize, crate::wire::Error>(w.len())
        })()
        .unwrap_or(0);
        buf.truncate(len);
        buf
    }

    // === ICMP errors and timers ===

    /// VT02 §2.6.7: tell the node why its HA is unreachable (80/81/82/88, or 202 with VT02 codes).
    fn on_unreachable(&mut self, home_agent: Ipv4Addr, icmp_code: u8, out: &mut Vec<ProxyOutput>) {
        let code = match (self.config.reply_codes, icmp_code) {
            (CodeSet::Vt02, _) => ReplyCode::ProxyHaUnreachable,
            (_, 0) => ReplyCode::FaHomeNetworkUnreachable,
            (_, 1) => ReplyCode::FaHaHostUnreachable,
            (_, 3) => ReplyCode::FaHaPortUnreachable,
            _ => ReplyCode::FaHaUnreachable,
        };
        let mut hit: Vec<Pending> = Vec::new();
        for slot in self.pending.values_mut() {
            let mut i = 0;
            while i < slot.len() {
                if slot.get(i).is_some_and(|p| p.home_agent == home_agent) {
                    hit.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.pending.retain(|_, v| !v.is_empty());
        self.pending_count -= hit.len();
        if hit.is_empty() {
            out.push(ProxyOutput::Drop(DropReason::StaleIcmpError));
        }
        for p in hit {
            out.push(p.done(PendingEnd::Unreachable(icmp_code)));
            let Ok(sa) = self.mn_sa(p.home_address, p.nai.as_deref(), p.spi.get()).cloned() else {
                continue;
            };
            let repr = ReplyRepr {
                code,
                lifetime: p.requested,
                home_address: p.home_address,
                home_agent: self.config.proxy_public,
                identification: p.identification,
            };
            // FA-HA as on a relayed reply, or the FA would turn this into 68.
            let fa_sa =
                p.fa.and_then(|(fa, spi)| self.keys.agent(fa, spi.get()))
                    .filter(|_| p.requested != 0)
                    .cloned();
            let payload = self.build_reply_bytes(&repr, &[], None, None, &sa, fa_sa.as_ref());
            out.push(ProxyOutput::Send(Transmit {
                src: p.local,
                dst: p.mn_src,
                ttl: None,
                payload,
            }));
            out.push(ProxyOutput::Outcome(RegistrationOutcome {
                home_address: p.home_address,
                care_of_address: p.care_of_address,
                home_agent: Some(p.home_agent),
                code,
                lifetime: p.requested,
                nat_detected: p.tunnel.nat_detected,
            }));
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Vec<ProxyOutput>) {
        // Pending requests the HA never answered: removed without a reply; the node retransmits (spec §5.5).
        while let Some(&(expires, low, ident)) = self.pending_timeouts.front() {
            if expires > now.instant {
                break;
            }
            self.pending_timeouts.pop_front();
            if let Some(p) = self.take_pending(low, |p| p.identification == ident && p.expires <= now.instant) {
                out.push(p.done(PendingEnd::Timeout));
                out.push(ProxyOutput::Drop(DropReason::PendingTimeout));
            }
        }
        // Bindings whose lifetime ran out: removed without any message (RFC 5944 §3.8, spec §5.3).
        let mut expired = Vec::new();
        self.bindings.expire(now.instant, |e| {
            expired.push(BindingChange {
                kind: BindingChangeKind::Expired,
                home_address: e.home_address,
                nai: e.nai.map(Into::into),
                binding: e.binding,
            });
        });
        out.extend(expired.into_iter().map(ProxyOutput::Binding));
    }
}

/// What a denial needs from the request.
struct DenyCtx<'a, 'b> {
    dg: &'a Datagram<'b>,
    req: &'a Request<'b>,
    sa: &'a SecurityAssociation,
}

enum FaHaError {
    /// FA-HA present without an SA: silent drop (RFC 5944 §3.8.2.1d).
    Drop,
    /// Required but missing, duplicated or invalid: 132.
    Deny,
}

fn no_tunnel(coa: Ipv4Addr) -> TunnelDecision {
    TunnelDecision {
        tunnel: TunnelEndpoint {
            addr: coa,
            port: 0,
            encapsulation: Encapsulation::IpInIp,
        },
        half_bound: false,
        reply: None,
        reply_to_foreign_agent: false,
        nat_detected: false,
    }
}

#[cfg(test)]
mod tests;

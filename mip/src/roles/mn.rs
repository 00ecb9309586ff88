//! The reference Mobile Node (spec §6.2) as a sans-IO state machine.
//!
//! The node registers its care-of address with the MIP Proxy (`MIPP-Pub`, [`MnConfig::home_agent`]), keeps the
//! registration alive, runs RFC 3519 keepalives when the proxy agreed to a UDP tunnel, and deregisters directly with
//! its actual home agent when it finds itself at home. It never opens a socket: the caller reports what happened on
//! the link ([`MnInput`]) and carries out what the node asks for ([`MnOutput`]).
//!
//! Rules, with their sources:
//! * Requests (RFC 5944 §3.6.1, spec §6.2): Home Agent field = the proxy, T set (the proxy requires it, RFC 3024),
//!   D = 1 for a co-located care-of address and 0 for an FA care-of address; extensions NAI → UDP Tunnel Request
//!   → HA Parameter → MN-HA (spec §2.13). The UDP Tunnel Request is sent whenever the care-of address is co-located
//!   and tunnelling is enabled, with R when registering through an FA that advertised U, never with an FA
//!   care-of address (RFC 3519 §4.4). Via an FA the IP TTL is 255 (RFC 3024 §3.2).
//! * Identification (RFC 5944 §5.7, §3.6.3) comes from [`MnIdentification`]: a new one per request; a
//!   retransmission gets a new timestamp, or is resent unchanged with nonces (spec §10 case 29).
//! * Retransmission (RFC 5944 §3.6.3): the first timeout is `retransmit.initial_ms` (≥ 1 s), each later one twice
//!   the previous, capped by `retransmit.max_ms`, by the requested lifetime and, while a binding is in force, by a
//!   quarter of what is left of it \[G\] (a renewal gets several tries before it lapses); a token bucket keeps the node at
//!   ≤ 1 request per second on average (RFC 5944 §3.6) whatever triggers the requests.
//! * Replies (RFC 5944 §3.6.2): exactly one MN-HA that verifies, then the low 32 bits of the Identification must
//!   match the latest request; else the reply is dropped silently. The granted lifetime is counted from when the
//!   request was *sent* (RFC 5944 §3.6.2.2) and never exceeds the requested one.
//! * Keepalives (RFC 3519 §4.9, §4.10): every K seconds (K from the UDP Tunnel Reply, 0 → the configured default,
//!   below 10 → 10); the first one K seconds after the request, or at once in the R-flag case (RFC 3519 §4.4).
//!   A keepalive not answered within 1 s is sent again at once; three unanswered in a row → re-register (with K
//!   halved for that tunnel, never below 10 s) \[G\]: a peer that lost the binding is found within K + 3 s.
//! * Agent discovery (RFC 5944 §2.4): when attached through an FA and no advertisement arrives, up to 3
//!   solicitations one second apart, then binary exponential backoff to 60 s. An FA sequence number that drops
//!   into 0–255 means the FA rebooted (RFC 5944 §2.4.4): re-register.
//!
//! Local decisions (\[G\], documented here because the sources are silent):
//! * A node that gives up after `retransmit.max_attempts` requests reports [`MnOutput::RegistrationFailed`] with
//!   code 78 ("registration timeout"); an FA attachment without T while reverse tunnelling is configured fails at
//!   once with 74; a missing security association fails with 131. These codes are synthesised locally.
//! * An [`Attachment::ForeignAgent`] with `co_located` set is the node's own address registered *through* the
//!   agent (RFC 5944 §3.1 R bit; RFC 3519 §4.4 R flag when the agent advertised U); otherwise `care_of_address`
//!   is the agent's care-of address.
//! * Denials from an FA (codes 64–127) may arrive without MN-HA (the FA holds no MN-HA key, RFC 5944 §3.6.2.1);
//!   they are accepted when the request went through an FA and the Identification matches.
//! * "At home" (Attachment::Home, a co-located care-of address inside `home_networks`, or code 206) means: deregister
//!   all bindings directly with the actual home agent, bypassing the proxy (NV01 §5.3, VT02 §2.6.1, spec §5.3).

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Datagram, DropReason, Now, RegistrationOutcome, Rng, Transmit};
use crate::auth::{SecurityAssociation, Spi};
use crate::config::{ConfigError, Prefix, Validate};
use crate::keystore::KeyStore;
use crate::replay::{MnIdentification, ReplyCheck};
use crate::time::Instant;
use crate::wire::{
    AgentAdvertisementRepr, AuthKind, Dialect, ErrorKind, ExtensionBody, HaParameter, MessageWriter,
    MobilityAgentFlags, Reply, ReplyCode, RequestFlags, RequestRepr, UdpTunnelReply, UdpTunnelRequest,
};

/// UDP port of Mobile IP registration (RFC 5944 §1.8) and of RFC 3519 tunnels at the agent side.
pub const MIP_PORT: u16 = 434;
/// Shortest keepalive interval a mobile node may use (RFC 3519 §4.10).
pub const MIN_KEEPALIVE_SECS: u16 = 10;
/// Default keepalive interval (RFC 3519 §4.9).
pub const DEFAULT_KEEPALIVE_SECS: u16 = 110;
/// Default requested lifetime: the ICMP Router Advertisement default lifetime (RFC 5944 §3.6.1.2).
pub const DEFAULT_LIFETIME: u16 = 1800;
/// IP TTL of a registration sent through a foreign agent with T set (RFC 3024 §3.2, §4.1.1).
pub const FA_REGISTRATION_TTL: u8 = 255;

/// Keepalives unanswered in a row before the node re-registers (RFC 3519 §4.10: "repeated loss").
const KEEPALIVE_LOSS_LIMIT: u8 = 3;
/// How long a keepalive waits for its echo reply before it counts as lost and is sent again \[G\]. Short, so a
/// tunnel peer that lost the binding (a restarted proxy without replication) is found within one keepalive
/// interval plus `KEEPALIVE_LOSS_LIMIT` × this; a path with a longer round trip only sends extra keepalives
/// (and, after `KEEPALIVE_LOSS_LIMIT` late replies in a row, one extra registration).
const KEEPALIVE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Encapsulation requested in the UDP Tunnel Request: IP in UDP (RFC 3519 §3.1; spec V5).
const UDP_ENCAP_IP: u8 = 4;
/// How long to wait for an advertisement after attaching through an FA before soliciting \[G\].
const ADVERT_WAIT: Duration = Duration::from_secs(3);
/// Initial solicitations, one per second at most (RFC 5944 §2.4).
const INITIAL_SOLICITATIONS: u32 = 3;
/// Solicitation interval cap (RFC 5944 §2.4: the maximum SHOULD be at least 60 s).
const MAX_SOLICIT_INTERVAL: Duration = Duration::from_secs(60);
/// Registration requests that may go out back to back before the 1/s average applies \[G\].
const RATE_BURST: u64 = 3;
/// Cost of one request in the token bucket: one second (RFC 5944 §3.6, ≤ 1 request per second on average).
const RATE_COST_MS: u64 = 1000;
/// Expiry of an infinite registration (lifetime 0xFFFF, RFC 5944 §3.3).
const NEVER: Instant = Instant::from_millis(u64::MAX);
/// Room for the largest request this node builds (24 + NAI 257 + UTRQ 8 + HA Parameter 8 + MN-HA 22).
const REQUEST_BUF_LEN: usize = 512;

// === configuration ===

fn default_true() -> bool {
    true
}
fn default_lifetime() -> u16 {
    DEFAULT_LIFETIME
}
fn default_port() -> u16 {
    MIP_PORT
}
fn default_unspecified() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// RFC 3519 UDP tunnelling at the mobile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpTunnellingConfig {
    /// Send a UDP Tunnel Request with co-located care-of addresses (default true; harmless without a NAT: the
    /// proxy declines and IP-in-IP is used, spec §6.2).
    pub enabled: bool,
    /// Set F: ask for UDP tunnelling even when no NAT is detected (default false).
    pub force: bool,
    /// Keepalive interval used when the UDP Tunnel Reply says 0, seconds (default 110, at least 10; RFC 3519 §4.9).
    pub default_keepalive: u16,
}

impl Default for UdpTunnellingConfig {
    fn default() -> Self {
        UdpTunnellingConfig {
            enabled: true,
            force: false,
            default_keepalive: DEFAULT_KEEPALIVE_SECS,
        }
    }
}

/// Retransmission of unanswered requests (RFC 5944 §3.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetransmitConfig {
    /// First timeout, milliseconds (default 1000; RFC 5944 §3.6.3: never less than 1 s).
    pub initial_ms: u64,
    /// Largest timeout, milliseconds (default 30000); also capped by the requested lifetime.
    pub max_ms: u64,
    /// Requests per registration (first send, retransmissions and immediate retries) before giving up with
    /// [`MnOutput::RegistrationFailed`] (default 10; 0 = never give up).
    pub max_attempts: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig {
            initial_ms: 1000,
            max_ms: 30_000,
            max_attempts: 10,
        }
    }
}

/// When to re-register before a registration expires: `max(fraction × granted, min_secs)` before expiry, but
/// never earlier than half the granted lifetime, nor sooner than 1 s after the request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenewConfig {
    /// Fraction of the granted lifetime left when renewing (default 0.2; 0 to 0.5).
    pub fraction: f64,
    /// At least this many seconds before expiry (default 5).
    pub min_secs: u32,
}

impl Default for RenewConfig {
    fn default() -> Self {
        RenewConfig {
            fraction: 0.2,
            min_secs: 5,
        }
    }
}

/// Mobile node configuration.
///
/// ```yaml
/// home_address: 10.10.1.50
/// home_agent: 198.51.100.10        # MIPP-Pub
/// actual_home_agent: 10.10.1.1     # sent in the HA Parameter extension
/// spi: 256
/// lifetime: 600
/// home_networks: [10.10.0.0/16]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MnConfig {
    /// Home address; 0.0.0.0 asks the home agent to assign one and requires `nai` (RFC 2794).
    #[serde(default = "default_unspecified")]
    pub home_address: Ipv4Addr,
    /// Mobile Node NAI (RFC 2794), sent in every request when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nai: Option<String>,
    /// The agent to register with: in this project the proxy's public address (`MIPP-Pub`).
    pub home_agent: Ipv4Addr,
    /// The actual home agent, sent in the HA Parameter extension (0.0.0.0 = dynamic assignment, needs `nai`);
    /// absent: no HA Parameter extension (the proxy maps the node statically).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_home_agent: Option<Ipv4Addr>,
    /// HA Parameter extension code point.
    #[serde(default)]
    pub dialect: Dialect,
    /// SPI of the MN-HA security association in the keys file (found by home address, else by NAI).
    pub spi: u32,
    /// Requested lifetime, seconds (default 1800).
    #[serde(default = "default_lifetime")]
    pub lifetime: u16,
    /// RFC 3519 UDP tunnelling.
    #[serde(default)]
    pub udp_tunnelling: UdpTunnellingConfig,
    /// Set T, reverse tunnelling (default true: the proxy requires it, RFC 3024).
    #[serde(default = "default_true")]
    pub reverse_tunnel: bool,
    /// Retransmission.
    #[serde(default)]
    pub retransmit: RetransmitConfig,
    /// Re-registration before expiry.
    #[serde(default)]
    pub renew_before: RenewConfig,
    /// Prefixes of the home (corporate) network: a co-located care-of address inside one means "at home"
    /// (NV01 §5.3).
    #[serde(default)]
    pub home_networks: Vec<Prefix>,
    /// UDP source port of registrations, keepalives and tunnelled data (default 434; it must not change while a
    /// NAT mapping is in use, RFC 3519 §4.4).
    #[serde(default = "default_port")]
    pub source_port: u16,
}

impl MnConfig {
    /// A configuration with every default: register `home_address` with `home_agent` using SA `spi`.
    pub fn new(home_address: Ipv4Addr, home_agent: Ipv4Addr, spi: u32) -> Self {
        MnConfig {
            home_address,
            nai: None,
            home_agent,
            actual_home_agent: None,
            dialect: Dialect::default(),
            spi,
            lifetime: DEFAULT_LIFETIME,
            udp_tunnelling: UdpTunnellingConfig::default(),
            reverse_tunnel: true,
            retransmit: RetransmitConfig::default(),
            renew_before: RenewConfig::default(),
            home_networks: Vec::new(),
            source_port: MIP_PORT,
        }
    }
}

fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

impl Validate for MnConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if let Some(n) = &self.nai
            && (n.is_empty() || n.len() > 255)
        {
            e.push(ConfigError::new("nai", "must be 1-255 bytes (RFC 2794)"));
        }
        if self.home_address.is_unspecified() && self.nai.is_none() {
            e.push(ConfigError::new(
                "home_address",
                "0.0.0.0 (assignment) needs `nai` to identify the node (RFC 2794)",
            ));
        } else if self.home_address.is_broadcast() || self.home_address.is_multicast() {
            e.push(ConfigError::new("home_address", "must be a unicast address"));
        }
        if !unicast(self.home_agent) {
            e.push(ConfigError::new(
                "home_agent",
                "must be a unicast address (the proxy's public address)",
            ));
        }
        match self.actual_home_agent {
            Some(a) if a.is_unspecified() && self.nai.is_none() => e.push(ConfigError::new(
                "actual_home_agent",
                "0.0.0.0 (dynamic assignment) needs `nai` (VT02 §2.6.4)",
            )),
            Some(a) if a.is_broadcast() || a.is_multicast() => {
                e.push(ConfigError::new(
                    "actual_home_agent",
                    "must be a unicast address or 0.0.0.0",
                ));
            }
            _ => {}
        }
        if let Err(err) = Spi::new(self.spi) {
            e.push(ConfigError::new("spi", err.to_string()));
        }
        if self.lifetime == 0 {
            e.push(ConfigError::new(
                "lifetime",
                "must be at least 1 (0 means deregistration)",
            ));
        }
        if self.udp_tunnelling.default_keepalive < MIN_KEEPALIVE_SECS {
            e.push(ConfigError::new(
                "udp_tunnelling.default_keepalive",
                format!("must be at least {MIN_KEEPALIVE_SECS} s (RFC 3519 §4.10)"),
            ));
        }
        if self.udp_tunnelling.force && !self.udp_tunnelling.enabled {
            e.push(ConfigError::new("udp_tunnelling.force", "needs `enabled: true`"));
        }
        if self.retransmit.initial_ms < 1000 {
            e.push(ConfigError::new(
                "retransmit.initial_ms",
                "must be at least 1000 (RFC 5944 §3.6.3: never less than 1 s)",
            ));
        }
        if self.retransmit.max_ms < self.retransmit.initial_ms {
            e.push(ConfigError::new("retransmit.max_ms", "must be at least `initial_ms`"));
        }
        if !(0.0..=0.5).contains(&self.renew_before.fraction) {
            e.push(ConfigError::new("renew_before.fraction", "must be between 0 and 0.5"));
        }
        if self.source_port == 0 {
            e.push(ConfigError::new("source_port", "must not be 0"));
        }
        e
    }
}

// === inputs, outputs, state ===

/// How the node is attached to the current link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A co-located care-of address (DHCP or static), registered directly with the proxy.
    CoLocated {
        /// The node's address on this link.
        care_of_address: Ipv4Addr,
        /// The default gateway's hardware address, if known (RFC 3519 §5.1 aliasing detection).
        gateway_mac: Option<[u8; 6]>,
    },
    /// Through a foreign agent: registrations go to the agent.
    ForeignAgent {
        /// The agent's address (source of its advertisements): registrations go there.
        agent: Ipv4Addr,
        /// The agent's care-of address, or with `co_located` the node's own address on the visited link.
        care_of_address: Ipv4Addr,
        /// The node registers its own (co-located) address through the agent, which advertised R (RFC 5944
        /// §3.1), rather than the agent's care-of address.
        co_located: bool,
        /// The agent advertised T (RFC 3024).
        reverse_tunnel: bool,
        /// The agent advertised U (RFC 3519 §3.4).
        udp: bool,
    },
    /// On the home network.
    Home,
}

/// What happened.
#[derive(Debug, Clone, Copy)]
pub enum MnInput<'a> {
    /// The node attached to a link (hand-off): a registration starts at once.
    Attached(Attachment),
    /// The link is gone: keepalives and retransmissions stop, state is kept until the next `Attached`.
    Detached,
    /// An ICMP Agent Advertisement heard on the current link (the ICMP message, IP header excluded).
    Advertisement {
        /// IP source address (the agent).
        src: Ipv4Addr,
        /// ICMP bytes.
        icmp: &'a [u8],
    },
    /// A UDP datagram from port 434 (a Registration Reply).
    Reply(Datagram<'a>),
    /// The data plane received the echo reply to a keepalive (RFC 3519 §4.9).
    KeepaliveReply,
    /// The default gateway's hardware address changed while the local address stayed (RFC 3519 §5.1).
    GatewayChanged {
        /// The new hardware address.
        mac: [u8; 6],
    },
    /// Deregister all bindings (going home, shutting down).
    Deregister,
    /// Time passed; call at [`MobileNode::next_timer`].
    Tick,
}

/// The tunnel a registration set up, for the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MnTunnel {
    /// IP in IP (RFC 2003) between the co-located care-of address and the home agent (the proxy).
    IpIp {
        /// Outer source of packets the node sends (its care-of address).
        local: Ipv4Addr,
        /// The home agent's address (outer destination; outer source of packets it sends).
        peer: Ipv4Addr,
    },
    /// RFC 3519 UDP tunnel (IP in UDP with the 4-byte Tunnel Data header).
    Udp {
        /// Local UDP port (the registration's source port, RFC 3519 §4.4).
        local_port: u16,
        /// The home agent's address and port.
        peer: SocketAddrV4,
        /// Keepalive interval in use, seconds.
        keepalive_secs: u16,
    },
    /// An FA care-of address: the foreign agent decapsulates and reverse-tunnels; the node sends plain packets
    /// to it (RFC 3024 direct delivery).
    ForeignAgent {
        /// The agent.
        agent: Ipv4Addr,
    },
}

/// What the node wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MnOutput {
    /// Send a registration request.
    Send(Transmit),
    /// Send a keepalive: a UDP-encapsulated ICMP Echo Request from the home address to `dst`'s address, in a
    /// UDP datagram from `src` to `dst` (RFC 3519 §4.9).
    SendKeepalive {
        /// Outer source (care-of address and source port).
        src: SocketAddrV4,
        /// Outer destination (the tunnel peer).
        dst: SocketAddrV4,
    },
    /// Send an ICMP Agent Solicitation (TTL 1, RFC 5944 §2.2).
    SendSolicitation,
    /// A registration was accepted (also on every renewal).
    Registered {
        /// The registered care-of address.
        care_of_address: Ipv4Addr,
        /// The tunnel to use.
        tunnel: MnTunnel,
        /// Granted lifetime, seconds (at most the requested one).
        lifetime: u16,
        /// The Home Agent field of the reply.
        home_agent: Ipv4Addr,
    },
    /// The node has no binding any more: a deregistration was accepted, or the lifetime ran out.
    Deregistered,
    /// A registration was denied, or the node gave up (code 78 when no reply came, see the module docs).
    RegistrationFailed {
        /// The reply code.
        code: ReplyCode,
    },
    /// An authenticated reply, for logs and metrics.
    Outcome(RegistrationOutcome),
    /// An input was dropped.
    Drop(DropReason),
}

/// A summary of the node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MnState {
    /// Nothing registered, nothing pending.
    Idle,
    /// A registration for a new care-of address is pending; `attempt` requests sent so far.
    Registering {
        /// Requests sent for this registration.
        attempt: u32,
    },
    /// Registered (a renewal may be pending).
    Registered {
        /// The registered care-of address.
        care_of_address: Ipv4Addr,
        /// When the binding expires unless renewed.
        expires_at: Instant,
    },
    /// A deregistration is pending.
    Deregistering,
    /// Deregistered directly with the home agent from the home network.
    AtHome,
}

// === internal state ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    Deregister,
    HomeDeregister,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Straight to the home agent (co-located care-of address, or at home).
    Direct,
    /// FA care-of address, through the agent.
    FaCoa { agent: Ipv4Addr },
    /// Co-located care-of address, through the agent.
    CoLocatedViaAgent { agent: Ipv4Addr },
}

/// Everything that stays fixed across the retransmissions of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    purpose: Purpose,
    path: Path,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: Option<u8>,
    /// Fixed part; `identification` is filled in per transmission.
    repr: RequestRepr,
    utrq: Option<UdpTunnelRequest>,
    ha_parameter: Option<Ipv4Addr>,
    /// The attachment's care-of address (the registered one; for deregistrations, where the node is).
    coa: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    plan: Plan,
    /// Requests sent so far for this registration.
    attempt: u32,
    /// Current retransmission timeout (zero before the first send).
    timeout: Duration,
    /// When to send next.
    due: Instant,
    /// The next send is a retransmission of the latest request (else a new request).
    retransmit: bool,
    /// Identification of the latest request.
    ident: Option<u64>,
    /// When the latest request was first sent.
    sent_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    care_of_address: Ipv4Addr,
    tunnel: MnTunnel,
    expires_at: Instant,
    renew_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Keepalive {
    interval: Duration,
    next: Instant,
    outstanding: bool,
    missed: u8,
    /// When the outstanding keepalive was sent (the next one is due one interval later).
    sent_at: Instant,
    src: SocketAddrV4,
    dst: SocketAddrV4,
}

#[derive(Debug, Clone)]
struct Discovery {
    agent: Ipv4Addr,
    /// When the next solicitation is due (the advertisement deadline while none has been sent).
    next: Instant,
    /// Solicitations sent since the last advertisement.
    sent: u32,
    last_sequence: Option<u16>,
    care_of_addresses: Vec<Ipv4Addr>,
    registration_lifetime: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Never,
    Up(Attachment),
    Down,
}

/// Token bucket: [`RATE_BURST`] requests at once, then one per second.
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    credit_ms: u64,
    last: Instant,
}

impl RateLimit {
    const fn new() -> Self {
        RateLimit {
            credit_ms: RATE_BURST * RATE_COST_MS,
            last: Instant::ZERO,
        }
    }

    /// Takes a token, or says when one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.millis().saturating_sub(self.last.millis());
        self.credit_ms = self.credit_ms.saturating_add(elapsed).min(RATE_BURST * RATE_COST_MS);
        self.last = self.last.max(now);
        if self.credit_ms >= RATE_COST_MS {
            self.credit_ms -= RATE_COST_MS;
            Ok(())
        } else {
            Err(now + Duration::from_millis(RATE_COST_MS - self.credit_ms))
        }
    }
}

/// The MN-HA SA: by (home address, SPI), else by (NAI, SPI).
fn lookup_sa<'k>(keys: &'k KeyStore, config: &MnConfig) -> Option<&'k SecurityAssociation> {
    let by_home = (!config.home_address.is_unspecified())
        .then(|| keys.get(config.home_address, config.spi))
        .flatten();
    by_home.or_else(|| {
        config
            .nai
            .as_deref()
            .and_then(|n| keys.get_by_nai(n.as_bytes(), config.spi))
    })
}

/// Builds a request: fixed part, NAI, UDP Tunnel Request, HA Parameter, MN-HA (spec §2.13).
fn build_request(
    plan: &Plan,
    ident: u64,
    sa: &SecurityAssociation,
    nai: Option<&str>,
    dialect: &Dialect,
) -> crate::wire::Result<Vec<u8>> {
    let mut buf = [0u8; REQUEST_BUF_LEN];
    let repr = RequestRepr {
        identification: ident,
        ..plan.repr
    };
    let mut w = MessageWriter::request(&mut buf, &repr, dialect)?;
    if let Some(n) = nai {
        w.push(&ExtensionBody::Nai(n.as_bytes()))?;
    }
    if let Some(u) = plan.utrq {
        w.push(&ExtensionBody::UdpTunnelRequest(u))?;
    }
    if let Some(ha) = plan.ha_parameter {
        w.push(&ExtensionBody::HaParameter(HaParameter {
            reserved: 0,
            home_agent: ha,
        }))?;
    }
    w.push_auth(AuthKind::MobileHome, sa)?;
    Ok(w.as_bytes().to_vec())
}

const fn low32(v: u64) -> u32 {
    v as u32
}

/// Codes only a foreign agent sends (RFC 5944 §3.4: 64–127).
fn is_fa_code(code: ReplyCode) -> bool {
    (64..=127).contains(&code.value())
}

/// Denials worth retrying after a backoff: resources, timeouts, unreachable home agent \[G\].
fn is_transient(code: ReplyCode) -> bool {
    matches!(code.value(), 66 | 78 | 80..=95 | 130 | 202)
}

/// The keepalive interval for a UDP Tunnel Reply value (spec §10 case 60): 0 → the default, below 10 → 10.
fn keepalive_secs(reply: u16, default: u16, shrink: u32) -> u16 {
    let k = if reply == 0 { default } else { reply };
    (k >> shrink.min(15)).max(MIN_KEEPALIVE_SECS)
}

/// The reference mobile node.
#[derive(Debug)]
pub struct MobileNode {
    config: MnConfig,
    dialect: Dialect,
    keys: KeyStore,
    rng: Rng,
    ident: MnIdentification,
    rate: RateLimit,
    link: Link,
    pending: Option<Pending>,
    binding: Option<Active>,
    keepalive: Option<Keepalive>,
    discovery: Option<Discovery>,
    gateway_mac: Option<[u8; 6]>,
    /// Home Agent field of registrations (the configured one, or the one a 136 named).
    home_agent: Ipv4Addr,
    /// A home address assigned in a reply (configured 0.0.0.0).
    assigned_home_address: Option<Ipv4Addr>,
    /// The actual home agent learned from a reply's HA Parameter extension (dynamic assignment or 206).
    learned_actual_ha: Option<Ipv4Addr>,
    /// Home Agent named by a 136 reply to a direct deregistration.
    home_target_override: Option<Ipv4Addr>,
    /// Lifetime limit from a code-69 reply, for this attachment.
    lifetime_cap: Option<u16>,
    /// Halvings of the keepalive interval after keepalive loss.
    keepalive_shrink: u32,
    at_home: bool,
}

impl MobileNode {
    /// A node with `config` (validated by the caller), its keys and a seed for Identification randomness.
    pub fn new(config: MnConfig, keys: KeyStore, seed: u64) -> MobileNode {
        let dialect = config.dialect;
        let home_agent = config.home_agent;
        MobileNode {
            config,
            dialect,
            keys,
            rng: Rng::new(seed),
            ident: MnIdentification::new(),
            rate: RateLimit::new(),
            link: Link::Never,
            pending: None,
            binding: None,
            keepalive: None,
            discovery: None,
            gateway_mac: None,
            home_agent,
            assigned_home_address: None,
            learned_actual_ha: None,
            home_target_override: None,
            lifetime_cap: None,
            keepalive_shrink: 0,
            at_home: false,
        }
    }

    /// Replaces the keys, keeping all state.
    pub fn set_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
    }

    /// The configuration.
    pub fn config(&self) -> &MnConfig {
        &self.config
    }

    /// The home address in use (the configured one, or the one a reply assigned).
    pub fn home_address(&self) -> Ipv4Addr {
        if self.config.home_address.is_unspecified() {
            self.assigned_home_address.unwrap_or(Ipv4Addr::UNSPECIFIED)
        } else {
            self.config.home_address
        }
    }

    /// A summary of the state.
    pub fn state(&self) -> MnState {
        if let Some(p) = &self.pending {
            match p.plan.purpose {
                Purpose::Deregister | Purpose::HomeDeregister => return MnState::Deregistering,
                Purpose::Register => {
                    let renewal = self.binding.is_some_and(|b| b.care_of_address == p.plan.coa);
                    if !renewal {
                        return MnState::Registering { attempt: p.attempt };
                    }
                }
            }
        }
        if let Some(b) = &self.binding {
            return MnState::Registered {
                care_of_address: b.care_of_address,
                expires_at: b.expires_at,
            };
        }
        if self.at_home { MnState::AtHome } else { MnState::Idle }
    }

    /// When to call [`handle`](Self::handle) with [`MnInput::Tick`] next.
    pub fn next_timer(&self) -> Option<Instant> {
        // Mirrors the conditions `poll` acts on, so a Tick at the returned time always makes progress.
        let up = matches!(self.link, Link::Up(_));
        let renewing = up && self.pending.is_none() && !self.home_link();
        let candidates = [
            self.pending.filter(|_| up).map(|p| p.due),
            self.binding.map(|b| b.expires_at).filter(|t| *t != NEVER),
            self.binding.and_then(|b| b.renew_at).filter(|_| renewing),
            self.keepalive.filter(|_| up).map(|k| k.next),
            self.discovery.as_ref().filter(|_| up).map(|d| d.next),
        ];
        candidates.into_iter().flatten().min()
    }

    /// Processes one input.
    pub fn handle(&mut self, now: Now, input: MnInput<'_>, out: &mut Vec<MnOutput>) {
        match input {
            MnInput::Attached(att) => self.on_attached(now, att, out),
            MnInput::Detached => {
                if matches!(self.link, Link::Up(_)) {
                    self.link = Link::Down;
                }
                self.keepalive = None;
                self.discovery = None;
            }
            MnInput::Advertisement { src, icmp } => self.on_advertisement(now, src, icmp, out),
            MnInput::Reply(d) => self.on_reply(now, d, out),
            MnInput::KeepaliveReply => self.on_keepalive_reply(out),
            MnInput::GatewayChanged { mac } => self.on_gateway_changed(now, mac, out),
            MnInput::Deregister => self.on_deregister(now, out),
            MnInput::Tick => self.poll(now, out),
        }
    }

    // --- inputs ---

    fn on_attached(&mut self, now: Now, att: Attachment, out: &mut Vec<MnOutput>) {
        self.link = Link::Up(att);
        self.keepalive = None;
        self.lifetime_cap = None;
        self.home_target_override = None;
        self.gateway_mac = match att {
            Attachment::CoLocated { gateway_mac, .. } => gateway_mac,
            _ => None,
        };
        self.discovery = match att {
            Attachment::ForeignAgent { agent, .. } => {
                // Re-attaching to the same agent keeps what its advertisements said.
                let kept = self.discovery.take().filter(|d| d.agent == agent);
                let mut d = kept.unwrap_or(Discovery {
                    agent,
                    next: now.instant,
                    sent: 0,
                    last_sequence: None,
                    care_of_addresses: Vec::new(),
                    registration_lifetime: None,
                });
                d.next = now.instant + ADVERT_WAIT;
                d.sent = 0;
                Some(d)
            }
            _ => None,
        };
        if self.home_link() {
            self.start(now, Purpose::HomeDeregister, None, out);
        } else {
            self.at_home = false;
            self.start(now, Purpose::Register, None, out);
        }
    }

    fn on_deregister(&mut self, now: Now, out: &mut Vec<MnOutput>) {
        if matches!(self.link, Link::Up(_)) {
            let purpose = if self.home_link() {
                Purpose::HomeDeregister
            } else {
                Purpose::Deregister
            };
            self.start(now, purpose, None, out);
        } else {
            // No link to send on: forget the binding locally (it expires at the agent) [G].
            self.pending = None;
            self.binding = None;
            self.keepalive = None;
            out.push(MnOutput::Deregistered);
        }
    }

    fn on_keepalive_reply(&mut self, out: &mut Vec<MnOutput>) {
        if let Some(k) = self.keepalive.as_mut() {
            if k.outstanding {
                k.next = k.sent_at + k.interval;
            }
            k.outstanding = false;
            k.missed = 0;
            self.keepalive_shrink = 0;
        } else if !self.binding.is_some_and(|b| matches!(b.tunnel, MnTunnel::Udp { .. })) {
            out.push(MnOutput::Drop(DropReason::UnexpectedKeepalive));
        }
    }

    fn on_gateway_changed(&mut self, now: Now, mac: [u8; 6], out: &mut Vec<MnOutput>) {
        let previous = self.gateway_mac.replace(mac);
        if previous.is_none() || previous == Some(mac) {
            return;
        }
        let co_located = matches!(self.link, Link::Up(Attachment::CoLocated { .. }));
        let registering = self.binding.is_some() || self.pending.is_some_and(|p| p.plan.purpose == Purpose::Register);
        if co_located && registering && !self.home_link() {
            // The private address stayed but the NAT in front of it may have changed (RFC 3519 §5.1).
            self.start(now, Purpose::Register, None, out);
        }
    }

    fn on_advertisement(&mut self, now: Now, src: Ipv4Addr, icmp: &[u8], out: &mut Vec<MnOutput>) {
        let adv = match AgentAdvertisementRepr::parse(icmp) {
            Ok(a) => a,
            Err(e) => {
                out.push(MnOutput::Drop(DropReason::Malformed(e.kind)));
                return;
            }
        };
        let Some(m) = adv.mobility else {
            out.push(MnOutput::Drop(DropReason::UnexpectedMessage));
            return;
        };
        // Spec §10 case 15: B without F is forbidden to senders; ignore such an advertisement. Unknown flag bits
        // are simply not looked at.
        if m.flags.has(MobilityAgentFlags::B) && !m.flags.has(MobilityAgentFlags::F) {
            out.push(MnOutput::Drop(DropReason::UnexpectedMessage));
            return;
        }
        let Some(d) = self.discovery.as_mut().filter(|d| d.agent == src) else {
            return;
        };
        // RFC 5944 §2.4.4: a sequence number lower than the last and below 256 means the agent
        // rebooted and lost its visitor list.
        let rebooted = d
            .last_sequence
            .is_some_and(|prev| m.sequence < prev && m.sequence < 256);
        d.last_sequence = Some(m.sequence);
        d.care_of_addresses = m.care_of_addresses.iter().collect();
        d.registration_lifetime = Some(m.registration_lifetime).filter(|l| *l != 0);
        d.sent = 0;
        d.next = now.instant + Duration::from_secs(u64::from(adv.lifetime.max(1)));
        let registering = self.binding.is_some() || self.pending.is_some_and(|p| p.plan.purpose == Purpose::Register);
        if rebooted && registering {
            self.start(now, Purpose::Register, None, out);
        }
    }

    fn on_reply(&mut self, now: Now, d: Datagram<'_>, out: &mut Vec<MnOutput>) {
        let reply = match Reply::parse(d.payload, &self.dialect) {
            Ok(r) => r,
            Err(e) => {
                let reason = match e.kind {
                    ErrorKind::WrongType(_) => DropReason::UnexpectedMessage,
                    k => DropReason::Malformed(k),
                };
                out.push(MnOutput::Drop(reason));
                return;
            }
        };
        let Some(p) = self.pending else {
            out.push(MnOutput::Drop(DropReason::NoPendingRequest));
            return;
        };
        let Some(sent_ident) = p.ident else {
            out.push(MnOutput::Drop(DropReason::NoPendingRequest));
            return;
        };
        let code = reply.repr.code;
        let mn_ha_count = reply.auth_count(AuthKind::MobileHome);
        // Extensions the MN-HA authenticator covers; nothing is trusted from an unauthenticated FA denial.
        let mut covered_end = 0;
        let check = if mn_ha_count == 0 && p.plan.path != Path::Direct && is_fa_code(code) {
            // Generated by the foreign agent, which holds no MN-HA key (RFC 5944 §3.6.2.1).
            if low32(reply.repr.identification) != low32(sent_ident) {
                out.push(MnOutput::Drop(DropReason::IdentificationMismatch));
                return;
            }
            ReplyCheck::Denied
        } else {
            if mn_ha_count != 1 {
                out.push(MnOutput::Drop(DropReason::BadReplyAuthentication));
                return;
            }
            let Some(sa) = lookup_sa(&self.keys, &self.config) else {
                out.push(MnOutput::Drop(DropReason::NoSecurityAssociation));
                return;
            };
            let Some(ext) = reply.auth(AuthKind::MobileHome) else {
                out.push(MnOutput::Drop(DropReason::BadReplyAuthentication));
                return;
            };
            if sa.verify(reply.bytes, &ext).is_err() {
                out.push(MnOutput::Drop(DropReason::BadReplyAuthentication));
                return;
            }
            covered_end = ext.offset;
            match self
                .ident
                .check_reply(&sa.replay, reply.repr.identification, code, now.ntp)
            {
                ReplyCheck::Mismatch => {
                    out.push(MnOutput::Drop(DropReason::IdentificationMismatch));
                    return;
                }
                c => c,
            }
        };
        let mut utrp: Option<UdpTunnelReply> = None;
        let mut ha_parameter: Option<Ipv4Addr> = None;
        for e in reply.extensions().take_while(|e| e.offset < covered_end) {
            match e.body {
                ExtensionBody::UdpTunnelReply(u) => utrp = Some(u),
                ExtensionBody::HaParameter(h) if !h.home_agent.is_unspecified() => ha_parameter = Some(h.home_agent),
                _ => {}
            }
        }
        // Only a reply to a request that carried a UDP Tunnel Request may carry a (meaningful) reply to it.
        let utrp = utrp.filter(|_| p.plan.utrq.is_some());
        out.push(MnOutput::Outcome(RegistrationOutcome {
            home_address: reply.repr.home_address,
            care_of_address: p.plan.coa,
            home_agent: Some(reply.repr.home_agent),
            code,
            lifetime: reply.repr.lifetime,
            nat_detected: utrp.is_some_and(|u| u.assents() && !u.forced),
        }));

        if check == ReplyCheck::Accepted {
            self.accepted(now, p, &reply.repr, utrp, ha_parameter, out);
            return;
        }
        if check == ReplyCheck::Resynchronized {
            // Cases 25/30: the Identification generator has resynchronised; send a new request at once.
            self.retry_now(now, p, out);
            return;
        }
        match code {
            ReplyCode::UnknownHomeAgent => {
                let named = reply.repr.home_agent;
                if unicast(named) && named != p.plan.repr.home_agent {
                    if p.plan.purpose == Purpose::HomeDeregister {
                        self.home_target_override = Some(named);
                    } else {
                        self.home_agent = named;
                    }
                    self.replan_now(now, p, p.plan.purpose, out);
                    return;
                }
            }
            ReplyCode::FaLifetimeTooLong => {
                let max = reply.repr.lifetime;
                if max != 0 && max < p.plan.repr.lifetime {
                    self.lifetime_cap = Some(max);
                    self.replan_now(now, p, p.plan.purpose, out);
                    return;
                }
            }
            ReplyCode::ProxyAssignedHomeAgent if p.plan.purpose != Purpose::HomeDeregister => {
                // VT02 §2.6.1: the node is inside; go to the home agent directly.
                let target = ha_parameter
                    .or(self.learned_actual_ha)
                    .or(self.config.actual_home_agent.filter(|a| unicast(*a)));
                if let Some(t) = target {
                    self.learned_actual_ha = Some(t);
                    self.replan_now(now, p, Purpose::HomeDeregister, out);
                    return;
                }
            }
            _ => {}
        }
        out.push(MnOutput::RegistrationFailed { code });
        if is_transient(code) {
            // Try again after the backoff, with a new request.
            let initial = self.initial_timeout();
            if let Some(q) = self.pending.as_mut() {
                q.retransmit = false;
                q.due = now.instant + q.timeout.max(initial);
            }
            return;
        }
        self.abandon(p.plan.purpose);
    }

    /// Drops the pending request for good. A failed registration leaves the binding to run out (no further
    /// renewals: no tight loop); a failed deregistration forgets the binding locally, since the user wants it
    /// gone and it expires at the agent anyway \[G\].
    fn abandon(&mut self, purpose: Purpose) {
        self.pending = None;
        match purpose {
            Purpose::Register => {
                if let Some(b) = self.binding.as_mut() {
                    b.renew_at = None;
                }
            }
            Purpose::Deregister | Purpose::HomeDeregister => {
                self.binding = None;
                self.keepalive = None;
            }
        }
    }

    fn accepted(
        &mut self,
        now: Now,
        p: Pending,
        repr: &crate::wire::ReplyRepr,
        utrp: Option<UdpTunnelReply>,
        ha_parameter: Option<Ipv4Addr>,
        out: &mut Vec<MnOutput>,
    ) {
        self.pending = None;
        if let Some(ha) = ha_parameter {
            self.learned_actual_ha = Some(ha);
        }
        if self.config.home_address.is_unspecified() && !repr.home_address.is_unspecified() {
            self.assigned_home_address = Some(repr.home_address);
        }
        let granted = repr.lifetime.min(p.plan.repr.lifetime);
        if p.plan.purpose != Purpose::Register || granted == 0 {
            self.binding = None;
            self.keepalive = None;
            self.at_home = p.plan.purpose == Purpose::HomeDeregister;
            out.push(MnOutput::Deregistered);
            return;
        }
        let sent_at = p.sent_at.unwrap_or(now.instant);
        let home_agent = repr.home_agent;
        let peer_ip = if unicast(home_agent) {
            home_agent
        } else {
            p.plan.repr.home_agent
        };
        let tunnel = match (p.plan.path, utrp) {
            (Path::FaCoa { agent }, _) => MnTunnel::ForeignAgent { agent },
            (_, Some(u)) if u.assents() => MnTunnel::Udp {
                local_port: p.plan.src.port(),
                peer: SocketAddrV4::new(peer_ip, MIP_PORT),
                keepalive_secs: keepalive_secs(
                    u.keepalive,
                    self.config.udp_tunnelling.default_keepalive,
                    self.keepalive_shrink,
                ),
            },
            _ => MnTunnel::IpIp {
                local: p.plan.coa,
                peer: peer_ip,
            },
        };
        let (expires_at, renew_at) = if granted == u16::MAX {
            // Infinite lifetime (RFC 5944 §3.3): nothing to renew.
            (NEVER, None)
        } else {
            let life_ms = u64::from(granted) * 1000;
            let fraction_ms = (self.config.renew_before.fraction * life_ms as f64) as u64;
            let lead_ms = fraction_ms
                .max(u64::from(self.config.renew_before.min_secs) * 1000)
                .min(life_ms / 2);
            let renew_ms = (life_ms - lead_ms).max(RATE_COST_MS);
            (
                sent_at + Duration::from_millis(life_ms),
                Some(sent_at + Duration::from_millis(renew_ms)),
            )
        };
        self.binding = Some(Active {
            care_of_address: p.plan.coa,
            tunnel,
            expires_at,
            renew_at,
        });
        self.at_home = false;
        out.push(MnOutput::Registered {
            care_of_address: p.plan.coa,
            tunnel,
            lifetime: granted,
            home_agent,
        });
        if let MnTunnel::Udp {
            peer, keepalive_secs, ..
        } = tunnel
        {
            let interval = Duration::from_secs(u64::from(keepalive_secs));
            let r_flag = p.plan.utrq.is_some_and(|u| u.registered_via_fa);
            // RFC 3519 §4.9: not earlier than K after the request; §4.4: at once in the R-flag case.
            let next = if r_flag {
                now.instant
            } else {
                (sent_at + interval).max(now.instant)
            };
            self.keepalive = Some(Keepalive {
                interval,
                next,
                outstanding: false,
                missed: 0,
                sent_at: next,
                src: p.plan.src,
                dst: peer,
            });
            self.keepalive_tick(now, out);
        }
    }

    // --- timers ---

    fn poll(&mut self, now: Now, out: &mut Vec<MnOutput>) {
        // A binding that runs out while its renewal is still due (it was granted already spent, e.g. a late reply
        // to a nonce-style retransmission counted from the first copy, or the node slept through its renewal
        // time) is renewed below rather than left to lapse for good; only an abandoned renewal lets it lapse.
        let mut renew_lapsed = false;
        if let Some(b) = self.binding
            && b.expires_at <= now.instant
        {
            renew_lapsed = b.renew_at.is_some();
            self.binding = None;
            self.keepalive = None;
            out.push(MnOutput::Deregistered);
        }
        self.drive(now, out);
        let renew_due = renew_lapsed
            || self
                .binding
                .is_some_and(|b| b.renew_at.is_some_and(|t| t <= now.instant));
        if self.pending.is_none() && matches!(self.link, Link::Up(_)) && !self.home_link() && renew_due {
            if let Some(b) = self.binding.as_mut() {
                b.renew_at = None;
            }
            self.start(now, Purpose::Register, None, out);
        }
        self.keepalive_tick(now, out);
        self.discovery_tick(now, out);
    }

    fn keepalive_tick(&mut self, now: Now, out: &mut Vec<MnOutput>) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        let Some(k) = self.keepalive.as_mut() else {
            return;
        };
        if k.next > now.instant {
            return;
        }
        if k.outstanding {
            k.missed = k.missed.saturating_add(1);
        }
        if k.missed >= KEEPALIVE_LOSS_LIMIT {
            // RFC 3519 §4.10: re-register, optionally with a shorter interval (never below 10 s).
            self.keepalive = None;
            self.keepalive_shrink = self.keepalive_shrink.saturating_add(1).min(8);
            self.start(now, Purpose::Register, None, out);
            return;
        }
        out.push(MnOutput::SendKeepalive { src: k.src, dst: k.dst });
        k.outstanding = true;
        k.sent_at = now.instant;
        // The reply deadline; an answer moves `next` to one interval after this send.
        k.next = now.instant + KEEPALIVE_REPLY_TIMEOUT.min(k.interval);
    }

    fn discovery_tick(&mut self, now: Now, out: &mut Vec<MnOutput>) {
        if !matches!(self.link, Link::Up(Attachment::ForeignAgent { .. })) {
            return;
        }
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        if d.next > now.instant {
            return;
        }
        out.push(MnOutput::SendSolicitation);
        d.sent = d.sent.saturating_add(1);
        // RFC 5944 §2.4: at most 3 initial ones, 1 s apart; then binary exponential backoff to 60 s.
        let interval = if d.sent < INITIAL_SOLICITATIONS {
            Duration::from_secs(1)
        } else {
            let exp = (d.sent - INITIAL_SOLICITATIONS + 1).min(6);
            Duration::from_secs(1u64 << exp).min(MAX_SOLICIT_INTERVAL)
        };
        d.next = now.instant + interval;
    }

    // --- requests ---

    fn initial_timeout(&self) -> Duration {
        Duration::from_millis(self.config.retransmit.initial_ms.max(1000))
    }

    /// On the home network, or a co-located care-of address inside the home networks (NV01 §5.3).
    fn home_link(&self) -> bool {
        match self.link {
            Link::Up(Attachment::Home) => true,
            Link::Up(Attachment::CoLocated { care_of_address, .. }) => {
                self.config.home_networks.iter().any(|p| p.contains(care_of_address))
            }
            _ => false,
        }
    }

    /// Where a direct deregistration goes: a 136's Home Agent, the learned actual HA, the configured one, or
    /// (lacking all) the configured home agent.
    fn home_target(&self) -> Ipv4Addr {
        self.home_target_override
            .or(self.learned_actual_ha)
            .or(self.config.actual_home_agent.filter(|a| unicast(*a)))
            .unwrap_or(self.config.home_agent)
    }

    /// The HA Parameter extension's address: the configured actual HA; with dynamic assignment (0.0.0.0) the
    /// one a reply assigned, once known (VT02 §2.6.4).
    fn ha_parameter(&self) -> Option<Ipv4Addr> {
        self.config.actual_home_agent.map(|a| {
            if a.is_unspecified() {
                self.learned_actual_ha.unwrap_or(a)
            } else {
                a
            }
        })
    }

    fn requested_lifetime(&self, via_agent: bool) -> u16 {
        let mut l = self.config.lifetime;
        if let Some(cap) = self.lifetime_cap {
            l = l.min(cap);
        }
        if via_agent && let Some(adv) = self.discovery.as_ref().and_then(|d| d.registration_lifetime) {
            l = l.min(adv);
        }
        l.max(1)
    }

    fn plan(&self, purpose: Purpose) -> Result<Plan, ReplyCode> {
        let Link::Up(att) = self.link else {
            return Err(ReplyCode::FaRegistrationTimeout);
        };
        let hoa = self.home_address();
        let port = self.config.source_port;
        if purpose == Purpose::HomeDeregister || matches!(att, Attachment::Home) {
            let target = self.home_target();
            let src_ip = match att {
                Attachment::CoLocated { care_of_address, .. } => care_of_address,
                _ => hoa,
            };
            return Ok(Plan {
                purpose: Purpose::HomeDeregister,
                path: Path::Direct,
                src: SocketAddrV4::new(src_ip, port),
                dst: SocketAddrV4::new(target, MIP_PORT),
                ttl: None,
                repr: RequestRepr {
                    flags: RequestFlags(0),
                    lifetime: 0,
                    home_address: hoa,
                    home_agent: target,
                    care_of_address: hoa,
                    identification: 0,
                },
                utrq: None,
                ha_parameter: None,
                coa: src_ip,
            });
        }
        let (path, src_ip, dst_ip, ttl, coa, co_located, utrq_allowed, fa_t) = match att {
            Attachment::CoLocated { care_of_address, .. } => (
                Path::Direct,
                care_of_address,
                self.home_agent,
                None,
                care_of_address,
                true,
                true,
                true,
            ),
            Attachment::ForeignAgent {
                agent,
                care_of_address,
                co_located,
                reverse_tunnel,
                udp,
            } => {
                if !co_located {
                    let src = hoa;
                    let ttl = Some(FA_REGISTRATION_TTL);
                    (
                        Path::FaCoa { agent },
                        src,
                        agent,
                        ttl,
                        care_of_address,
                        false,
                        false,
                        reverse_tunnel,
                    )
                } else {
                    let ttl = Some(FA_REGISTRATION_TTL);
                    let path = Path::CoLocatedViaAgent { agent };
                    (
                        path,
                        care_of_address,
                        agent,
                        ttl,
                        care_of_address,
                        true,
                        udp,
                        reverse_tunnel,
                    )
                }
            }
            Attachment::Home => return Err(ReplyCode::HaUnspecified),
        };
        let via_agent = path != Path::Direct;
        let (flags, lifetime, care_of_field, utrq) = if purpose == Purpose::Register {
            let t = self.config.reverse_tunnel;
            if t && via_agent && !fa_t {
                // RFC 3024 §3.1: only register with T through an agent that advertises T.
                return Err(ReplyCode::FaReverseTunnelUnavailable);
            }
            let flags = RequestFlags(0)
                .with(RequestFlags::D, co_located)
                .with(RequestFlags::T, t);
            let utrq = (co_located && utrq_allowed && self.config.udp_tunnelling.enabled).then_some(UdpTunnelRequest {
                force: self.config.udp_tunnelling.force,
                registered_via_fa: via_agent,
                encapsulation: UDP_ENCAP_IP,
                ..UdpTunnelRequest::default()
            });
            (flags, self.requested_lifetime(via_agent), coa, utrq)
        } else {
            // Deregister all bindings: lifetime 0, CoA = home address (RFC 5944 §3.6.1.2); no UTRQ (spec §2.6).
            (RequestFlags(0), 0, hoa, None)
        };
        Ok(Plan {
            purpose,
            path,
            src: SocketAddrV4::new(src_ip, port),
            dst: SocketAddrV4::new(dst_ip, MIP_PORT),
            ttl,
            repr: RequestRepr {
                flags,
                lifetime,
                home_address: hoa,
                home_agent: self.home_agent,
                care_of_address: care_of_field,
                identification: 0,
            },
            utrq,
            ha_parameter: self.ha_parameter(),
            coa,
        })
    }

    /// Starts a new registration (replacing any pending one) and sends it at once if allowed.
    fn start(&mut self, now: Now, purpose: Purpose, carry: Option<(u32, Duration)>, out: &mut Vec<MnOutput>) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        let plan = match self.plan(purpose) {
            Ok(p) => p,
            Err(code) => {
                self.pending = None;
                out.push(MnOutput::RegistrationFailed { code });
                return;
            }
        };
        self.keepalive = None;
        let (attempt, timeout) = carry.unwrap_or((0, Duration::ZERO));
        self.pending = Some(Pending {
            plan,
            attempt,
            timeout,
            due: now.instant,
            retransmit: false,
            ident: None,
            sent_at: None,
        });
        self.drive(now, out);
    }

    /// A new request with the same plan, at once (after 133). It counts toward the attempt limit; its timeout
    /// starts again from the initial one (it is a new request, and the rate limit still applies).
    fn retry_now(&mut self, now: Now, p: Pending, out: &mut Vec<MnOutput>) {
        self.pending = Some(Pending {
            retransmit: false,
            due: now.instant,
            timeout: Duration::ZERO,
            ..p
        });
        self.drive(now, out);
    }

    /// A new request with a new plan (after 136, 69, 206), at once, counting toward the same attempt limit.
    fn replan_now(&mut self, now: Now, p: Pending, purpose: Purpose, out: &mut Vec<MnOutput>) {
        self.start(now, purpose, Some((p.attempt, Duration::ZERO)), out);
    }

    /// Sends the pending request if it is due, the link is up and the rate limit allows.
    fn drive(&mut self, now: Now, out: &mut Vec<MnOutput>) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        let initial = self.initial_timeout();
        let max_attempts = self.config.retransmit.max_attempts;
        let Some(mut p) = self.pending else {
            return;
        };
        if p.due > now.instant {
            return;
        }
        if max_attempts != 0 && p.attempt >= max_attempts {
            self.abandon(p.plan.purpose);
            out.push(MnOutput::RegistrationFailed {
                code: ReplyCode::FaRegistrationTimeout,
            });
            return;
        }
        let Some(sa) = lookup_sa(&self.keys, &self.config) else {
            self.pending = None;
            out.push(MnOutput::Drop(DropReason::NoSecurityAssociation));
            out.push(MnOutput::RegistrationFailed {
                code: ReplyCode::HaMnAuthFailed,
            });
            return;
        };
        if let Err(at) = self.rate.take(now.instant) {
            p.due = at;
            self.pending = Some(p);
            return;
        }
        let random = self.rng.next_u32();
        let ident = if p.retransmit {
            self.ident.retransmission(&sa.replay, now.ntp, random)
        } else {
            self.ident.next_request(&sa.replay, now.ntp, random)
        };
        // An identical (nonce-style) retransmission keeps the first send time: the lifetime counts from the
        // earliest copy the reply may answer (RFC 5944 §3.6.2.2).
        if p.ident != Some(ident) || p.sent_at.is_none() {
            p.sent_at = Some(now.instant);
        }
        p.ident = Some(ident);
        match build_request(&p.plan, ident, sa, self.config.nai.as_deref(), &self.dialect) {
            Ok(payload) => out.push(MnOutput::Send(Transmit {
                src: p.plan.src,
                dst: p.plan.dst,
                ttl: p.plan.ttl,
                payload,
            })),
            Err(e) => {
                self.pending = None;
                out.push(MnOutput::Drop(DropReason::Malformed(e.kind)));
                return;
            }
        }
        p.attempt = p.attempt.saturating_add(1);
        // RFC 5944 §3.6.3: each timeout at least twice the previous, as long as it stays below the lifetime.
        let mut cap = Duration::from_millis(self.config.retransmit.max_ms);
        if p.plan.repr.lifetime != 0 {
            cap = cap.min(Duration::from_secs(u64::from(p.plan.repr.lifetime)));
        }
        // \[G\] While an existing binding is being renewed, keep at least four more tries before it lapses:
        // on a lossy path the doubling would otherwise spend the renewal window on two or three requests.
        if let Some(expires_at) = self.binding.map(|b| b.expires_at).filter(|e| *e != NEVER) {
            cap = cap.min(expires_at.saturating_duration_since(now.instant) / 4);
        }
        let cap = cap.max(initial);
        p.timeout = if p.timeout.is_zero() {
            initial
        } else {
            p.timeout.saturating_mul(2).min(cap)
        };
        p.due = now.instant + p.timeout;
        p.retransmit = true;
        self.pending = Some(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Algorithm, Key};
    use crate::replay::{ReplayState, ReplayStyle, ReplayVerdict};
    use crate::time::NtpTimestamp;
    use crate::wire::advertisement::{AddrList, MobilityAgentExt};
    use crate::wire::{ReplyRepr, Request};

    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const ACTUAL_HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
    const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
    const PRIV_COA: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
    const FA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const SPI: u32 = 0x100;
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";
    /// Spec §11.2 V1.
    const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
    /// NTP seconds of the V-vectors.
    const BASE_SECS: u32 = 0xec4e_5a00;

    fn at(ms: u64) -> Now {
        at_skewed(ms, 0)
    }

    /// The MN's clock at `ms`, `skew_ms` off the reference clock.
    fn at_skewed(ms: u64, skew_ms: i64) -> Now {
        let base = NtpTimestamp::new(BASE_SECS, 0).0;
        let off = (ms as i64 + skew_ms) as i128 * (1i128 << 32) / 1000;
        Now::new(Instant::from_millis(ms), NtpTimestamp(base.wrapping_add(off as u64)))
    }

    fn sa(style: ReplayStyle) -> SecurityAssociation {
        SecurityAssociation::new(
            Spi::new(SPI).unwrap(),
            Algorithm::HmacMd5,
            Key::from_hex(KEY).unwrap(),
            style,
        )
    }

    fn keys(style: ReplayStyle) -> KeyStore {
        let mut ks = KeyStore::new();
        ks.insert_peer(HOA, sa(style)).unwrap();
        ks
    }

    fn v1_config() -> MnConfig {
        let mut c = MnConfig::new(HOA, PROXY, SPI);
        c.lifetime = 600;
        c.udp_tunnelling.enabled = false;
        c
    }

    fn config() -> MnConfig {
        let mut c = MnConfig::new(HOA, PROXY, SPI);
        c.lifetime = 600;
        c.actual_home_agent = Some(ACTUAL_HA);
        c
    }

    fn node(c: MnConfig) -> MobileNode {
        MobileNode::new(c, keys(ReplayStyle::default()), 7)
    }

    fn colocated(coa: Ipv4Addr) -> MnInput<'static> {
        MnInput::Attached(Attachment::CoLocated {
            care_of_address: coa,
            gateway_mac: Some([2, 0, 0, 0, 0, 1]),
        })
    }

    fn run(mn: &mut MobileNode, now: Now, input: MnInput<'_>) -> Vec<MnOutput> {
        let mut out = Vec::new();
        mn.handle(now, input, &mut out);
        out
    }

    fn sends(out: &[MnOutput]) -> Vec<Transmit> {
        out.iter()
            .filter_map(|o| match o {
                MnOutput::Send(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn only_send(out: &[MnOutput]) -> Transmit {
        let s = sends(out);
        assert_eq!(s.len(), 1, "{out:?}");
        s.into_iter().next().unwrap()
    }

    fn req(t: &Transmit) -> Request<'_> {
        Request::parse(&t.payload, &Dialect::default()).unwrap()
    }

    fn drops(out: &[MnOutput]) -> Vec<DropReason> {
        out.iter()
            .filter_map(|o| match o {
                MnOutput::Drop(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    /// A reply as the proxy/HA would build it: fixed part, `exts`, MN-HA with `sa` (if given).
    fn reply_bytes(
        sa: Option<&SecurityAssociation>,
        code: ReplyCode,
        lifetime: u16,
        home_agent: Ipv4Addr,
        ident: u64,
        exts: &[ExtensionBody<'_>],
    ) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let repr = ReplyRepr {
            code,
            lifetime,
            home_address: HOA,
            home_agent,
            identification: ident,
        };
        let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
        for e in exts {
            w.push(e).unwrap();
        }
        if let Some(sa) = sa {
            w.push_auth(AuthKind::MobileHome, sa).unwrap();
        }
        w.as_bytes().to_vec()
    }

    fn deliver<'a>(from: Ipv4Addr, to: SocketAddrV4, payload: &'a [u8]) -> MnInput<'a> {
        MnInput::Reply(Datagram {
            src: SocketAddrV4::new(from, MIP_PORT),
            dst: to,
            ttl: 64,
            payload,
        })
    }

    /// A timestamp home agent (the proxy, as seen by the MN) with a replay state and a clock.
    struct TestHa {
        sa: SecurityAssociation,
        replay: ReplayState,
        nonce: u32,
    }

    impl TestHa {
        fn new(style: ReplayStyle) -> Self {
            TestHa {
                sa: sa(style),
                replay: ReplayState::new(),
                nonce: 0x0b00_0000,
            }
        }

        /// Judges `t` at HA time `ha_now` and answers: 133 on an Identification problem, else `code` with
        /// `lifetime` (0 = the requested one) and the extensions given.
        fn answer(
            &mut self,
            t: &Transmit,
            ha_now: NtpTimestamp,
            code: ReplyCode,
            lifetime: u16,
            exts: &[ExtensionBody<'_>],
        ) -> Vec<u8> {
            let r = req(t);
            let mn_ha = r.auth(AuthKind::MobileHome).unwrap();
            self.sa.verify(r.bytes, &mn_ha).unwrap();
            let id = r.repr.identification;
            self.nonce += 1;
            let (code, ident) = match self.replay.check(&self.sa.replay, id, ha_now) {
                ReplayVerdict::Mismatch(_) => (
                    ReplyCode::IdentificationMismatch,
                    self.replay
                        .resync_identification(&self.sa.replay, id, ha_now, self.nonce),
                ),
                _ => {
                    if code.is_accepted() {
                        self.replay.accept(&self.sa.replay, id);
                    }
                    (code, self.replay.reply_identification(&self.sa.replay, id, self.nonce))
                }
            };
            let lifetime = if lifetime == 0 { r.repr.lifetime } else { lifetime };
            reply_bytes(Some(&self.sa), code, lifetime, PROXY, ident, exts)
        }
    }

    fn registered(out: &[MnOutput]) -> Option<(Ipv4Addr, MnTunnel, u16, Ipv4Addr)> {
        out.iter().find_map(|o| match o {
            MnOutput::Registered {
                care_of_address,
                tunnel,
                lifetime,
                home_agent,
            } => Some((*care_of_address, *tunnel, *lifetime, *home_agent)),
            _ => None,
        })
    }

    fn failed(out: &[MnOutput]) -> Option<ReplyCode> {
        out.iter().find_map(|o| match o {
            MnOutput::RegistrationFailed { code } => Some(*code),
            _ => None,
        })
    }

    /// Attaches co-located at t = 0 and has the HA accept at t = 200 ms with `exts`; returns the outputs.
    fn register_colocated(
        mn: &mut MobileNode,
        ha: &mut TestHa,
        coa: Ipv4Addr,
        exts: &[ExtensionBody<'_>],
    ) -> Vec<MnOutput> {
        let t = only_send(&run(mn, at(0), colocated(coa)));
        let rep = ha.answer(&t, at(200).ntp, ReplyCode::Accepted, 0, exts);
        run(mn, at(200), deliver(PROXY, t.src, &rep))
    }

    // --- the request ---

    #[test]
    fn v1_request_bytes() {
        // The builder, given V1's Identification, produces V1 exactly.
        let mn = node(v1_config());
        let mut mn = mn;
        let _ = run(&mut mn, at(0), colocated(COA));
        let plan = mn.pending.unwrap().plan;
        let sa = sa(ReplayStyle::default());
        let bytes = build_request(&plan, 0xec4e_5a00_1234_5678, &sa, None, &Dialect::default()).unwrap();
        assert_eq!(hex::encode(bytes), V1);
    }

    #[test]
    fn v1_request_as_sent() {
        let mut mn = node(v1_config());
        let out = run(&mut mn, at(0), colocated(COA));
        let t = only_send(&out);
        assert_eq!(t.src, SocketAddrV4::new(COA, 434));
        assert_eq!(t.dst, SocketAddrV4::new(PROXY, 434));
        assert_eq!(t.ttl, None);
        assert_eq!(t.payload.len(), 46);
        let v1 = hex::decode(V1).unwrap();
        assert_eq!(t.payload[..16], v1[..16], "fixed part up to the Identification");
        assert_eq!(t.payload[24..30], v1[24..30], "MN-HA header");
        let r = req(&t);
        assert_eq!(
            r.repr.identification >> 32,
            u64::from(BASE_SECS),
            "timestamp of the MN's clock"
        );
        sa(ReplayStyle::default())
            .verify(r.bytes, &r.auth(AuthKind::MobileHome).unwrap())
            .unwrap();
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
    }

    #[test]
    fn reply_to_v1_registers() {
        // Spec V4 is the proxy's reply to V1 (code 0, lifetime 600, HA 198.51.100.10, Identification of V1).
        let mut mn = node(v1_config());
        let _ = run(&mut mn, at(0), colocated(COA));
        let sent = mn.pending.unwrap().ident.unwrap();
        let v4 = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            600,
            PROXY,
            sent,
            &[],
        );
        // The vector itself verifies with this node's SA, and has V4's layout.
        let v4_vector = hex::decode(
            "030002580a0a0132c633640aec4e5a0012345678201400000100\
             70e2cee90091976e0fac5350cebf59c8",
        )
        .unwrap();
        let parsed = Reply::parse(&v4_vector, &Dialect::default()).unwrap();
        sa(ReplayStyle::default())
            .verify(&v4_vector, &parsed.auth(AuthKind::MobileHome).unwrap())
            .unwrap();
        assert_eq!(v4.len(), v4_vector.len());
        assert_eq!(v4[..12], v4_vector[..12]);
        let out = run(&mut mn, at(300), deliver(PROXY, SocketAddrV4::new(COA, 434), &v4));
        assert_eq!(
            registered(&out),
            Some((
                COA,
                MnTunnel::IpIp {
                    local: COA,
                    peer: PROXY
                },
                600,
                PROXY
            ))
        );
        assert!(matches!(out.first(), Some(MnOutput::Outcome(o)) if o.code == ReplyCode::Accepted && !o.nat_detected));
        assert_eq!(
            mn.state(),
            MnState::Registered {
                care_of_address: COA,
                expires_at: Instant::from_secs(600)
            }
        );
    }

    #[test]
    fn request_extensions_in_order() {
        let mut c = config();
        c.nai = Some("joe@example.com".into());
        let mut mn = node(c);
        let t = only_send(&run(&mut mn, at(0), colocated(PRIV_COA)));
        let r = req(&t);
        assert_eq!(r.repr.flags, RequestFlags(RequestFlags::D | RequestFlags::T));
        assert_eq!(r.repr.home_agent, PROXY);
        assert_eq!(r.repr.care_of_address, PRIV_COA);
        let bodies: Vec<_> = r.extensions().map(|e| e.body).collect();
        assert!(matches!(bodies[0], ExtensionBody::Nai(n) if n == b"joe@example.com"));
        assert_eq!(
            bodies[1],
            ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
                encapsulation: 4,
                ..UdpTunnelRequest::default()
            })
        );
        assert_eq!(
            bodies[2],
            ExtensionBody::HaParameter(HaParameter {
                reserved: 0,
                home_agent: ACTUAL_HA
            })
        );
        assert!(matches!(
            bodies[3],
            ExtensionBody::Auth {
                kind: AuthKind::MobileHome,
                spi: SPI,
                ..
            }
        ));
        assert_eq!(bodies.len(), 4);
    }

    #[test]
    fn nai_only_node_uses_nai_sa_and_learns_home_address() {
        let mut c = config();
        c.home_address = Ipv4Addr::UNSPECIFIED;
        c.nai = Some("joe@example.com".into());
        c.actual_home_agent = Some(Ipv4Addr::UNSPECIFIED);
        let mut ks = KeyStore::new();
        ks.insert_nai("joe@example.com", sa(ReplayStyle::default())).unwrap();
        let mut mn = MobileNode::new(c, ks, 1);
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        let r = req(&t);
        assert_eq!(r.repr.home_address, Ipv4Addr::UNSPECIFIED);
        assert!(r.extensions().any(|e| e.body
            == ExtensionBody::HaParameter(HaParameter {
                reserved: 0,
                home_agent: Ipv4Addr::UNSPECIFIED
            })));
        // The reply assigns 10.10.1.50 and names the chosen HA.
        let ha_param = ExtensionBody::HaParameter(HaParameter {
            reserved: 0,
            home_agent: ACTUAL_HA,
        });
        let rep = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            600,
            PROXY,
            r.repr.identification,
            &[ha_param],
        );
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert!(registered(&out).is_some());
        assert_eq!(mn.home_address(), HOA);
        // The renewal carries the assigned home address and HA.
        let renew = mn.binding.unwrap().renew_at.unwrap();
        let t2 = only_send(&run(&mut mn, Now::new(renew, at(renew.millis()).ntp), MnInput::Tick));
        let r2 = req(&t2);
        assert_eq!(r2.repr.home_address, HOA);
        assert!(r2.extensions().any(|e| e.body == ha_param));
    }

    // --- spec §10 cases at the MN ---

    #[test]
    fn case_23_reply_with_two_mn_ha_is_dropped() {
        let mut mn = node(config());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        let id = req(&t).repr.identification;
        let s = sa(ReplayStyle::default());
        // A valid MN-HA followed by a second one.
        let mut rep = reply_bytes(Some(&s), ReplyCode::Accepted, 600, PROXY, id, &[]);
        let dup = rep[20..].to_vec();
        rep.extend_from_slice(&dup);
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(drops(&out), vec![DropReason::BadReplyAuthentication]);
        assert_eq!(out.len(), 1);
        // No MN-HA at all, and a bad one: also dropped.
        let none = reply_bytes(None, ReplyCode::Accepted, 600, PROXY, id, &[]);
        assert_eq!(
            drops(&run(&mut mn, at(100), deliver(PROXY, t.src, &none))),
            vec![DropReason::BadReplyAuthentication]
        );
        let mut bad = reply_bytes(Some(&s), ReplyCode::Accepted, 600, PROXY, id, &[]);
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            drops(&run(&mut mn, at(100), deliver(PROXY, t.src, &bad))),
            vec![DropReason::BadReplyAuthentication]
        );
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
        // The good reply still works afterwards.
        let good = reply_bytes(Some(&s), ReplyCode::Accepted, 600, PROXY, id, &[]);
        assert!(registered(&run(&mut mn, at(150), deliver(PROXY, t.src, &good))).is_some());
    }

    #[test]
    fn case_25_timestamp_133_resync_then_accepted() {
        // The HA has already accepted exactly the timestamp the MN is about to send (a twin node with the same seed
        // and clock produces it): 133 with the HA's time in the high 32 bits.
        let mut twin = node(config());
        let replayed = req(&only_send(&run(&mut twin, at_skewed(0, -2_000), colocated(COA))))
            .repr
            .identification;
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        ha.replay.accept(&ha.sa.replay, replayed);
        let t = only_send(&run(&mut mn, at_skewed(0, -2_000), colocated(COA)));
        assert_eq!(req(&t).repr.identification, replayed);
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[]);
        let r = Reply::parse(&rep, &Dialect::default()).unwrap();
        assert_eq!(r.repr.code, ReplyCode::IdentificationMismatch);
        assert_eq!(
            r.repr.identification >> 32,
            u64::from(BASE_SECS),
            "V7 shape: HA seconds"
        );
        let out = run(&mut mn, at_skewed(100, -2_000), deliver(PROXY, t.src, &rep));
        assert!(matches!(out.first(), Some(MnOutput::Outcome(o)) if o.code == ReplyCode::IdentificationMismatch));
        assert_eq!(failed(&out), None);
        // A new request goes out at once and passes.
        let t2 = only_send(&out);
        assert_ne!(req(&t2).repr.identification, req(&t).repr.identification);
        let rep2 = ha.answer(&t2, at(150).ntp, ReplyCode::Accepted, 0, &[]);
        assert_eq!(
            Reply::parse(&rep2, &Dialect::default()).unwrap().repr.code,
            ReplyCode::Accepted
        );
        let out = run(&mut mn, at_skewed(150, -2_000), deliver(PROXY, t2.src, &rep2));
        assert!(registered(&out).is_some());

        // A clock 60 s off (outside the tolerance) resynchronises the same way.
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at_skewed(0, -60_000), colocated(COA)));
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[]);
        let t2 = only_send(&run(&mut mn, at_skewed(100, -60_000), deliver(PROXY, t.src, &rep)));
        let rep2 = ha.answer(&t2, at(150).ntp, ReplyCode::Accepted, 0, &[]);
        assert!(registered(&run(&mut mn, at_skewed(150, -60_000), deliver(PROXY, t2.src, &rep2))).is_some());
    }

    #[test]
    fn case_28_reply_with_other_low_bits_is_dropped() {
        let mut mn = node(config());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        let id = req(&t).repr.identification;
        let rep = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            600,
            PROXY,
            id ^ 1,
            &[],
        );
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(drops(&out), vec![DropReason::IdentificationMismatch]);
        assert_eq!(out.len(), 1);
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
        // A reply with nothing pending.
        let mut idle = node(config());
        assert_eq!(
            drops(&run(&mut idle, at(0), deliver(PROXY, t.src, &rep))),
            vec![DropReason::NoPendingRequest]
        );
    }

    #[test]
    fn case_29_retransmission_timestamps_new_ident_nonces_identical() {
        // Timestamps: a new Identification per retransmission.
        let mut mn = node(config());
        let t1 = only_send(&run(&mut mn, at(0), colocated(COA)));
        assert_eq!(mn.next_timer(), Some(Instant::from_millis(1000)));
        let t2 = only_send(&run(&mut mn, at(1000), MnInput::Tick));
        let (r1, r2) = (req(&t1), req(&t2));
        assert_ne!(r1.repr.identification, r2.repr.identification);
        assert_eq!(t1.payload[..16], t2.payload[..16]);
        // A reply to the first one no longer matches.
        let rep = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            600,
            PROXY,
            r1.repr.identification,
            &[],
        );
        assert_eq!(
            drops(&run(&mut mn, at(1100), deliver(PROXY, t1.src, &rep))),
            vec![DropReason::IdentificationMismatch]
        );

        // Nonces: the identical request is resent, and the lifetime counts from its first send.
        let mut mn = MobileNode::new(config(), keys(ReplayStyle::Nonce), 3);
        let mut ha = TestHa::new(ReplayStyle::Nonce);
        ha.replay.record_issued_nonce(0x1111_1111);
        // Get in sync: the first request has no nonce, so the HA answers 133 with one.
        let t0 = only_send(&run(&mut mn, at(0), colocated(COA)));
        ha.replay = ReplayState::new();
        let rep0 = ha.answer(&t0, at(50).ntp, ReplyCode::Accepted, 0, &[]);
        let t1 = only_send(&run(&mut mn, at(50), deliver(PROXY, t0.src, &rep0)));
        let t2 = only_send(&run(&mut mn, at(1050), MnInput::Tick));
        assert_eq!(t1.payload, t2.payload, "nonce retransmission is identical");
        let rep = ha.answer(&t2, at(1100).ntp, ReplyCode::Accepted, 0, &[]);
        let out = run(&mut mn, at(1100), deliver(PROXY, t2.src, &rep));
        assert!(registered(&out).is_some());
        assert_eq!(
            mn.state(),
            MnState::Registered {
                care_of_address: COA,
                expires_at: Instant::from_millis(50 + 600_000)
            },
            "counted from the first copy"
        );
    }

    #[test]
    fn case_30_nonce_resync() {
        let mut mn = MobileNode::new(config(), keys(ReplayStyle::Nonce), 11);
        let mut ha = TestHa::new(ReplayStyle::Nonce);
        // First contact: no nonce yet → 133 carrying one; the MN retries with it and is accepted.
        let t0 = only_send(&run(&mut mn, at(0), colocated(COA)));
        let rep0 = ha.answer(&t0, at(10).ntp, ReplyCode::Accepted, 0, &[]);
        assert_eq!(
            Reply::parse(&rep0, &Dialect::default()).unwrap().repr.code,
            ReplyCode::IdentificationMismatch
        );
        let t1 = only_send(&run(&mut mn, at(10), deliver(PROXY, t0.src, &rep0)));
        let n0 = Reply::parse(&rep0, &Dialect::default()).unwrap().repr.identification >> 32;
        assert_eq!(req(&t1).repr.identification >> 32, n0);
        let rep1 = ha.answer(&t1, at(20).ntp, ReplyCode::Accepted, 0, &[]);
        let n1 = Reply::parse(&rep1, &Dialect::default()).unwrap().repr.identification >> 32;
        assert!(registered(&run(&mut mn, at(20), deliver(PROXY, t1.src, &rep1))).is_some());
        // The renewal carries N1 in its high 32 bits.
        let renew = mn.binding.unwrap().renew_at.unwrap();
        let t2 = only_send(&run(&mut mn, at(renew.millis()), MnInput::Tick));
        assert_eq!(req(&t2).repr.identification >> 32, n1);
        // The HA lost its state (say, restarted and issued another nonce): the nonce is stale → 133 with a fresh
        // nonce; the MN's next request carries it and is accepted.
        ha.replay = ReplayState::new();
        ha.replay.record_issued_nonce(0x0c01);
        let rep2 = ha.answer(&t2, at(renew.millis() + 10).ntp, ReplyCode::Accepted, 0, &[]);
        let r2 = Reply::parse(&rep2, &Dialect::default()).unwrap();
        assert_eq!(r2.repr.code, ReplyCode::IdentificationMismatch);
        let t3 = only_send(&run(&mut mn, at(renew.millis() + 10), deliver(PROXY, t2.src, &rep2)));
        assert_eq!(req(&t3).repr.identification >> 32, r2.repr.identification >> 32);
        let rep3 = ha.answer(&t3, at(renew.millis() + 20).ntp, ReplyCode::Accepted, 0, &[]);
        assert_eq!(
            Reply::parse(&rep3, &Dialect::default()).unwrap().repr.code,
            ReplyCode::Accepted
        );
        assert!(registered(&run(&mut mn, at(renew.millis() + 20), deliver(PROXY, t3.src, &rep3))).is_some());
    }

    fn utrp(keepalive: u16) -> ExtensionBody<'static> {
        ExtensionBody::UdpTunnelReply(UdpTunnelReply {
            code: 0,
            forced: false,
            reserved: 0,
            keepalive,
        })
    }

    #[test]
    fn case_60_keepalive_interval_from_reply() {
        for (given, used) in [(0u16, 110u16), (5, 10), (10, 10), (30, 30)] {
            let mut mn = node(config());
            let mut ha = TestHa::new(ReplayStyle::default());
            let out = register_colocated(&mut mn, &mut ha, PRIV_COA, &[utrp(given)]);
            assert_eq!(
                registered(&out).map(|r| r.1),
                Some(MnTunnel::Udp {
                    local_port: 434,
                    peer: SocketAddrV4::new(PROXY, 434),
                    keepalive_secs: used
                }),
                "keepalive {given}"
            );
            assert!(matches!(out.first(), Some(MnOutput::Outcome(o)) if o.nat_detected));
            // The first keepalive is K after the request was sent.
            assert_eq!(mn.keepalive.unwrap().next, Instant::from_secs(u64::from(used)));
        }
        // A declined UDP Tunnel Reply → IP in IP.
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let declined = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
            code: 64,
            ..UdpTunnelReply::default()
        });
        let out = register_colocated(&mut mn, &mut ha, PRIV_COA, &[declined]);
        assert_eq!(
            registered(&out).map(|r| r.1),
            Some(MnTunnel::IpIp {
                local: PRIV_COA,
                peer: PROXY
            })
        );
        assert!(mn.keepalive.is_none());
    }

    // --- timing ---

    #[test]
    fn retransmission_backoff_and_cap() {
        let mut c = config();
        c.retransmit = RetransmitConfig {
            initial_ms: 1000,
            max_ms: 8000,
            max_attempts: 8,
        };
        let mut mn = node(c);
        let mut times = Vec::new();
        let mut out = run(&mut mn, at(0), colocated(COA));
        let mut now = 0;
        loop {
            if !sends(&out).is_empty() {
                times.push(now);
            }
            if let Some(code) = failed(&out) {
                assert_eq!(code, ReplyCode::FaRegistrationTimeout);
                break;
            }
            now = mn.next_timer().unwrap().millis();
            out = run(&mut mn, at(now), MnInput::Tick);
        }
        // Timeouts 1, 2, 4, 8, 8, 8, 8 s (capped at max_ms), then give up after the 8th request's timeout.
        assert_eq!(times, vec![0, 1000, 3000, 7000, 15_000, 23_000, 31_000, 39_000]);
        assert_eq!(now, 47_000);
        assert_eq!(mn.state(), MnState::Idle);
        assert_eq!(mn.next_timer(), None);
    }

    #[test]
    fn retransmission_capped_by_lifetime_and_rate_limited() {
        // Lifetime 3 s caps the timeout at 3 s.
        let mut c = config();
        c.lifetime = 3;
        c.retransmit.max_attempts = 0;
        let mut mn = node(c);
        let _ = run(&mut mn, at(0), colocated(COA));
        let mut times = vec![0];
        for _ in 0..5 {
            let now = mn.next_timer().unwrap().millis();
            assert_eq!(sends(&run(&mut mn, at(now), MnInput::Tick)).len(), 1);
            times.push(now);
        }
        assert_eq!(times, vec![0, 1000, 3000, 6000, 9000, 12_000]);

        // Hand-off storm: at most 3 back to back, then one per second.
        let mut mn = node(config());
        let mut sent_at = Vec::new();
        for i in 0..6u64 {
            let coa = Ipv4Addr::new(192, 0, 2, 100 + i as u8);
            if !sends(&run(&mut mn, at(i * 10), colocated(coa))).is_empty() {
                sent_at.push(i * 10);
            }
        }
        assert_eq!(sent_at, vec![0, 10, 20]);
        let due = mn.next_timer().unwrap();
        assert_eq!(due, Instant::from_millis(1000));
        let t = only_send(&run(&mut mn, at(1000), MnInput::Tick));
        assert_eq!(
            req(&t).repr.care_of_address,
            Ipv4Addr::new(192, 0, 2, 105),
            "the latest attachment"
        );
    }

    #[test]
    fn lifetime_counted_from_send_time_and_renewal() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = run(&mut mn, at(0), colocated(COA));
        // First request lost; the retransmission at 1 s is answered 4 s later with 300 s (less than the 600 asked).
        let t = only_send(&run(&mut mn, at(1000), MnInput::Tick));
        let rep = ha.answer(&t, at(5000).ntp, ReplyCode::Accepted, 300, &[]);
        let out = run(&mut mn, at(5000), deliver(PROXY, t.src, &rep));
        assert_eq!(registered(&out).map(|r| r.2), Some(300));
        assert_eq!(
            mn.state(),
            MnState::Registered {
                care_of_address: COA,
                expires_at: Instant::from_millis(301_000)
            }
        );
        // Renewal: 20 % (60 s) before expiry, counted from the send time.
        assert_eq!(mn.next_timer(), Some(Instant::from_millis(241_000)));
        assert!(run(&mut mn, at(240_999), MnInput::Tick).is_empty());
        let t2 = only_send(&run(&mut mn, at(241_000), MnInput::Tick));
        assert_eq!(req(&t2).repr.care_of_address, COA);
        assert_eq!(req(&t2).repr.lifetime, 600);
        assert!(
            matches!(mn.state(), MnState::Registered { .. }),
            "renewal keeps the state"
        );
        // A lifetime larger than requested is cut to the requested one.
        let rep2 = ha.answer(&t2, at(241_100).ntp, ReplyCode::Accepted, 900, &[]);
        let out = run(&mut mn, at(241_100), deliver(PROXY, t2.src, &rep2));
        assert_eq!(registered(&out).map(|r| r.2), Some(600));
        assert_eq!(
            mn.state(),
            MnState::Registered {
                care_of_address: COA,
                expires_at: Instant::from_millis(841_000)
            }
        );
    }

    #[test]
    fn renewal_lead_is_bounded() {
        let mut c = config();
        c.renew_before = RenewConfig {
            fraction: 0.0,
            min_secs: 100,
        };
        let mut mn = node(c);
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        // 60 s granted (a NAT lifetime): 100 s lead is cut to half the lifetime.
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 60, &[]);
        let _ = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(mn.binding.unwrap().renew_at, Some(Instant::from_secs(30)));
    }

    #[test]
    fn expiry_without_renewal_reports_deregistered() {
        let mut c = config();
        c.retransmit.max_attempts = 2;
        let mut mn = node(c);
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 20, &[]);
        let _ = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        // Renewal at 15 s (5 s lead), retransmitted at 16 s; the timeout stays at 1 s (a quarter of what is left
        // of the binding, at least the initial timeout), so it gives up at 17 s; expiry at 20 s.
        let mut log = Vec::new();
        while let Some(next) = mn.next_timer() {
            let out = run(&mut mn, at(next.millis()), MnInput::Tick);
            log.push((next.millis(), out));
        }
        let events: Vec<_> = log
            .iter()
            .map(|(t, out)| (*t, sends(out).len(), failed(out), out.contains(&MnOutput::Deregistered)))
            .collect();
        assert_eq!(
            events,
            vec![
                (15_000, 1, None, false),
                (16_000, 1, None, false),
                (17_000, 0, Some(ReplyCode::FaRegistrationTimeout), false),
                (20_000, 0, None, true),
            ]
        );
        assert_eq!(mn.state(), MnState::Idle);
    }

    #[test]
    fn registration_granted_already_spent_is_renewed_not_left_to_lapse() {
        // Simulation finding: the reply to a late nonce-style retransmission counts its lifetime from the first
        // copy (RFC 5944 §3.6.2.2), so it can arrive already spent. The node used to drop the binding on the next
        // Tick before looking at its (equally due) renewal, and then stayed idle for good while attached.
        let mut mn = MobileNode::new(config(), keys(ReplayStyle::Nonce), 5);
        let mut ha = TestHa::new(ReplayStyle::Nonce);
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        // The first request fetches a nonce (133), the second is retransmitted unchanged at 1.1 s and 3.1 s.
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[]);
        let t = only_send(&run(&mut mn, at(100), deliver(PROXY, t.src, &rep)));
        assert_eq!(only_send(&run(&mut mn, at(1100), MnInput::Tick)).payload, t.payload);
        assert_eq!(only_send(&run(&mut mn, at(3100), MnInput::Tick)).payload, t.payload);
        // Accepted for 2 s, counted from the first copy (0.1 s): spent at 2.1 s, before it arrives.
        let rep = ha.answer(&t, at(3200).ntp, ReplyCode::Accepted, 2, &[]);
        let out = run(&mut mn, at(3200), deliver(PROXY, t.src, &rep));
        assert!(registered(&out).is_some());
        assert!(mn.next_timer().unwrap() <= Instant::from_millis(3200));
        let out = run(&mut mn, at(3200), MnInput::Tick);
        assert!(out.contains(&MnOutput::Deregistered));
        assert_eq!(sends(&out).len(), 1, "a new registration starts at once: {out:?}");
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
        // A renewal the node gave up on still lets the binding lapse (module docs): covered by
        // `expiry_without_renewal_reports_deregistered`.
    }

    // --- hand-off, NAT, keepalives ---

    #[test]
    fn hand_off_registers_at_once_and_drops_old_pending() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let t1 = only_send(&run(&mut mn, at(0), colocated(COA)));
        let other = Ipv4Addr::new(198, 18, 0, 9);
        let t2 = only_send(&run(&mut mn, at(300), colocated(other)));
        assert_eq!(t2.src, SocketAddrV4::new(other, 434));
        assert_eq!(req(&t2).repr.care_of_address, other);
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
        // The reply to the old request is stale.
        let old = ha.answer(&t1, at(400).ntp, ReplyCode::Accepted, 0, &[]);
        assert_eq!(
            drops(&run(&mut mn, at(400), deliver(PROXY, t1.src, &old))),
            vec![DropReason::IdentificationMismatch]
        );
        let new = ha.answer(&t2, at(500).ntp, ReplyCode::Accepted, 0, &[]);
        assert_eq!(
            registered(&run(&mut mn, at(500), deliver(PROXY, t2.src, &new))).map(|r| r.0),
            Some(other)
        );
        // Detach: timers stop (apart from expiry and renewal, which wait for a link); re-attach registers again.
        let _ = run(&mut mn, at(600), MnInput::Detached);
        assert_eq!(mn.next_timer(), Some(Instant::from_millis(300 + 600_000)));
        let t3 = only_send(&run(&mut mn, at(700), colocated(COA)));
        assert_eq!(req(&t3).repr.care_of_address, COA);
        assert_eq!(mn.state(), MnState::Registering { attempt: 1 });
    }

    #[test]
    fn nat_rebind_gateway_change_reregisters() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = register_colocated(&mut mn, &mut ha, PRIV_COA, &[utrp(0)]);
        // Same MAC: nothing.
        assert!(
            run(
                &mut mn,
                at(1000),
                MnInput::GatewayChanged {
                    mac: [2, 0, 0, 0, 0, 1]
                }
            )
            .is_empty()
        );
        let out = run(
            &mut mn,
            at(2000),
            MnInput::GatewayChanged {
                mac: [2, 0, 0, 0, 0, 2],
            },
        );
        let t = only_send(&out);
        assert_eq!(
            t.src,
            SocketAddrV4::new(PRIV_COA, 434),
            "same source port (RFC 3519 §4.4)"
        );
        assert!(
            req(&t)
                .extensions()
                .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)))
        );
        // The reply comes back through the new NAT.
        let rep = ha.answer(&t, at(2100).ntp, ReplyCode::Accepted, 0, &[utrp(0)]);
        let out = run(
            &mut mn,
            at(2100),
            MnInput::Reply(Datagram {
                src: SocketAddrV4::new(PROXY, 434),
                dst: SocketAddrV4::new(PRIV_COA, 434),
                ttl: 60,
                payload: &rep,
            }),
        );
        assert!(registered(&out).is_some());
        // Not co-located: ignored.
        let mut fa_mn = node(config());
        let _ = run(&mut fa_mn, at(0), fa_attach(FA, true, false));
        let _ = run(&mut fa_mn, at(1), MnInput::GatewayChanged { mac: [1; 6] });
        assert!(sends(&run(&mut fa_mn, at(2), MnInput::GatewayChanged { mac: [2; 6] })).is_empty());
    }

    #[test]
    fn keepalive_loss_reregisters() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = register_colocated(&mut mn, &mut ha, PRIV_COA, &[utrp(20)]);
        let ka = MnOutput::SendKeepalive {
            src: SocketAddrV4::new(PRIV_COA, 434),
            dst: SocketAddrV4::new(PROXY, 434),
        };
        // One answered keepalive.
        assert_eq!(mn.next_timer(), Some(Instant::from_secs(20)));
        assert_eq!(run(&mut mn, at(20_000), MnInput::Tick), vec![ka.clone()]);
        assert!(run(&mut mn, at(20_050), MnInput::KeepaliveReply).is_empty());
        // The next one is due one interval after the previous was sent, not after its answer.
        assert_eq!(mn.next_timer(), Some(Instant::from_secs(40)));
        // A late answer (after the 1 s reply timeout) costs one extra keepalive, no registration.
        assert_eq!(run(&mut mn, at(40_000), MnInput::Tick), vec![ka.clone()]);
        assert_eq!(mn.next_timer(), Some(Instant::from_secs(41)));
        assert_eq!(run(&mut mn, at(41_000), MnInput::Tick), vec![ka.clone()]);
        assert!(run(&mut mn, at(41_500), MnInput::KeepaliveReply).is_empty());
        assert_eq!(mn.next_timer(), Some(Instant::from_secs(61)));
        // Then three unanswered in a row (the peer lost the binding) → re-registration 3 s after the first.
        assert_eq!(run(&mut mn, at(61_000), MnInput::Tick), vec![ka.clone()]);
        assert_eq!(run(&mut mn, at(62_000), MnInput::Tick), vec![ka.clone()]);
        assert_eq!(run(&mut mn, at(63_000), MnInput::Tick), vec![ka.clone()]);
        let out = run(&mut mn, at(64_000), MnInput::Tick);
        let t = only_send(&out);
        assert!(!out.contains(&ka));
        assert_eq!(req(&t).repr.care_of_address, PRIV_COA);
        // The new tunnel uses a halved interval (20 → 10), never below 10.
        let rep = ha.answer(&t, at(64_100).ntp, ReplyCode::Accepted, 0, &[utrp(20)]);
        let out = run(&mut mn, at(64_100), deliver(PROXY, t.src, &rep));
        assert!(matches!(
            registered(&out),
            Some((_, MnTunnel::Udp { keepalive_secs: 10, .. }, _, _))
        ));
        // An answered keepalive restores the full interval for the next registration.
        let _ = run(&mut mn, at(74_100), MnInput::Tick);
        let _ = run(&mut mn, at(74_110), MnInput::KeepaliveReply);
        assert_eq!(mn.keepalive_shrink, 0);
        // A keepalive reply without a UDP tunnel is unexpected.
        let mut plain = node(config());
        assert_eq!(
            drops(&run(&mut plain, at(0), MnInput::KeepaliveReply)),
            vec![DropReason::UnexpectedKeepalive]
        );
    }

    // --- foreign agents ---

    /// Attached through the FA: its care-of address when `coa` is the FA's, else the node's own address.
    fn fa_attach(coa: Ipv4Addr, t: bool, u: bool) -> MnInput<'static> {
        MnInput::Attached(Attachment::ForeignAgent {
            agent: FA,
            care_of_address: coa,
            co_located: coa != FA,
            reverse_tunnel: t,
            udp: u,
        })
    }

    #[test]
    fn fa_path_d0_ttl255_no_utrq() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), fa_attach(FA, true, true)));
        assert_eq!(t.dst, SocketAddrV4::new(FA, 434));
        assert_eq!(
            t.src,
            SocketAddrV4::new(HOA, 434),
            "source = home address with an FA care-of address"
        );
        assert_eq!(t.ttl, Some(255));
        let r = req(&t);
        assert_eq!(r.repr.flags, RequestFlags(RequestFlags::T), "D = 0, T = 1");
        assert_eq!(r.repr.care_of_address, FA);
        assert_eq!(r.repr.home_agent, PROXY);
        assert!(
            !r.extensions()
                .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)))
        );
        assert!(matches!(
            r.extensions().last().unwrap().body,
            ExtensionBody::Auth {
                kind: AuthKind::MobileHome,
                ..
            }
        ));
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[]);
        let out = run(&mut mn, at(100), deliver(FA, SocketAddrV4::new(HOA, 434), &rep));
        assert_eq!(
            registered(&out).map(|r| r.1),
            Some(MnTunnel::ForeignAgent { agent: FA })
        );
        // An FA without T cannot carry the reverse-tunnel registration the proxy requires.
        let mut mn = node(config());
        let out = run(&mut mn, at(0), fa_attach(FA, false, false));
        assert!(sends(&out).is_empty());
        assert_eq!(failed(&out), Some(ReplyCode::FaReverseTunnelUnavailable));
    }

    #[test]
    fn r_flag_via_u_fa() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        // Co-located address registered through an FA that advertised U.
        let t = only_send(&run(&mut mn, at(0), fa_attach(PRIV_COA, true, true)));
        assert_eq!(t.dst, SocketAddrV4::new(FA, 434));
        assert_eq!(t.src, SocketAddrV4::new(PRIV_COA, 434));
        assert_eq!(t.ttl, Some(255));
        let r = req(&t);
        assert_eq!(r.repr.flags, RequestFlags(RequestFlags::D | RequestFlags::T));
        let u = r
            .extensions()
            .find_map(|e| match e.body {
                ExtensionBody::UdpTunnelRequest(u) => Some(u),
                _ => None,
            })
            .unwrap();
        assert!(u.registered_via_fa && !u.force);
        // Acceptance → a keepalive at once (RFC 3519 §4.4).
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[utrp(0)]);
        let out = run(&mut mn, at(100), deliver(FA, t.src, &rep));
        let pos_reg = out
            .iter()
            .position(|o| matches!(o, MnOutput::Registered { .. }))
            .unwrap();
        let pos_ka = out
            .iter()
            .position(|o| matches!(o, MnOutput::SendKeepalive { .. }))
            .unwrap();
        assert!(pos_reg < pos_ka);
        assert_eq!(
            out[pos_ka],
            MnOutput::SendKeepalive {
                src: SocketAddrV4::new(PRIV_COA, 434),
                dst: SocketAddrV4::new(PROXY, 434)
            }
        );
        // The reply deadline now; once answered, the next keepalive is one interval after this one.
        assert_eq!(mn.keepalive.unwrap().next, Instant::from_millis(100 + 1_000));
        assert!(run(&mut mn, at(150), MnInput::KeepaliveReply).is_empty());
        assert_eq!(mn.keepalive.unwrap().next, Instant::from_millis(100 + 110_000));
        // The same co-located registration through an FA without U: no UDP Tunnel Request.
        let mut mn = node(config());
        let t = only_send(&run(&mut mn, at(0), fa_attach(PRIV_COA, true, false)));
        assert!(
            !req(&t)
                .extensions()
                .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)))
        );
        assert_eq!(req(&t).repr.flags, RequestFlags(RequestFlags::D | RequestFlags::T));
    }

    fn advert(seq: u16, flags: u16, reg_lifetime: u16, icmp_lifetime: u16) -> Vec<u8> {
        let coas = FA.octets();
        let repr = AgentAdvertisementRepr {
            code: 16,
            lifetime: icmp_lifetime,
            routers: &[],
            mobility: Some(MobilityAgentExt {
                sequence: seq,
                registration_lifetime: reg_lifetime,
                flags: MobilityAgentFlags(flags),
                care_of_addresses: AddrList::new(&coas).unwrap(),
            }),
            prefix_lengths: None,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        buf
    }

    const FTU: u16 = MobilityAgentFlags::F | MobilityAgentFlags::T | MobilityAgentFlags::U;

    #[test]
    fn solicitations_and_fa_reboot() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), fa_attach(FA, true, false)));
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::Accepted, 0, &[]);
        let _ = run(&mut mn, at(100), deliver(FA, t.src, &rep));
        // No advertisement: solicit after 3 s, three at 1 s intervals, then backoff to 60 s.
        let mut solicit_times = Vec::new();
        let mut now = 0;
        while now < 300_000 {
            now = mn.next_timer().unwrap().millis();
            let out = run(&mut mn, at(now), MnInput::Tick);
            if out.contains(&MnOutput::SendSolicitation) {
                solicit_times.push(now / 1000);
            }
        }
        assert_eq!(solicit_times[..11], [3, 4, 5, 7, 11, 19, 35, 67, 127, 187, 247]);
        // An advertisement (unknown flag 0x0010 ignored, case 15) stops them until its lifetime passes.
        let adv = advert(300, FTU | 0x0010, 1800, 30);
        assert!(run(&mut mn, at(300_000), MnInput::Advertisement { src: FA, icmp: &adv }).is_empty());
        let d = mn.discovery.as_ref().unwrap();
        assert_eq!((d.next, d.sent), (Instant::from_secs(330), 0));
        // Sequence 301: nothing. Sequence 5 (dropped into 0–255): the FA rebooted → re-register at once.
        let adv = advert(301, FTU, 1800, 30);
        assert!(run(&mut mn, at(301_000), MnInput::Advertisement { src: FA, icmp: &adv }).is_empty());
        let adv = advert(5, FTU, 1800, 30);
        let t = only_send(&run(
            &mut mn,
            at(302_000),
            MnInput::Advertisement { src: FA, icmp: &adv },
        ));
        assert_eq!(t.dst, SocketAddrV4::new(FA, 434));
        // B without F is ignored (case 15); so is an advertisement from another agent.
        let busy = advert(6, MobilityAgentFlags::B | MobilityAgentFlags::H, 1800, 30);
        assert_eq!(
            drops(&run(
                &mut mn,
                at(303_000),
                MnInput::Advertisement { src: FA, icmp: &busy }
            )),
            vec![DropReason::UnexpectedMessage]
        );
        let adv = advert(0, FTU, 1800, 30);
        assert!(
            run(
                &mut mn,
                at(304_000),
                MnInput::Advertisement {
                    src: Ipv4Addr::new(192, 0, 2, 9),
                    icmp: &adv
                }
            )
            .is_empty()
        );
        assert_eq!(mn.discovery.as_ref().unwrap().last_sequence, Some(5));
    }

    #[test]
    fn advertised_registration_lifetime_caps_request_and_69_retries() {
        let mut mn = node(config());
        let _ = run(&mut mn, at(0), fa_attach(FA, true, false));
        let adv = advert(1, FTU, 300, 30);
        let _ = run(&mut mn, at(10), MnInput::Advertisement { src: FA, icmp: &adv });
        // The next registration (re-attach) asks for at most 300 s.
        let t = only_send(&run(&mut mn, at(20), fa_attach(FA, true, false)));
        assert_eq!(req(&t).repr.lifetime, 300);
        // The FA answers 69 with its maximum 120 (no MN-HA: the FA has no MN-HA key) → retry at once with 120.
        let rep = reply_bytes(
            None,
            ReplyCode::FaLifetimeTooLong,
            120,
            PROXY,
            req(&t).repr.identification,
            &[],
        );
        let out = run(&mut mn, at(30), deliver(FA, t.src, &rep));
        assert!(matches!(out.first(), Some(MnOutput::Outcome(o)) if o.code == ReplyCode::FaLifetimeTooLong));
        let t2 = only_send(&out);
        assert_eq!(req(&t2).repr.lifetime, 120);
        // A 69 that does not lower the lifetime fails instead of looping.
        let rep = reply_bytes(
            None,
            ReplyCode::FaLifetimeTooLong,
            120,
            PROXY,
            req(&t2).repr.identification,
            &[],
        );
        let out = run(&mut mn, at(40), deliver(FA, t2.src, &rep));
        assert!(sends(&out).is_empty());
        assert_eq!(failed(&out), Some(ReplyCode::FaLifetimeTooLong));
    }

    #[test]
    fn code_136_retries_with_replied_home_agent() {
        let mut c = config();
        c.home_agent = Ipv4Addr::new(198, 51, 100, 99);
        let mut mn = node(c);
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        // Denied 136, naming the right address (the reply's Home Agent field is PROXY).
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::UnknownHomeAgent, 0, &[]);
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(failed(&out), None);
        let t2 = only_send(&out);
        assert_eq!(req(&t2).repr.home_agent, PROXY);
        assert_eq!(t2.dst, SocketAddrV4::new(PROXY, 434));
        // A second 136 naming the same address is a final denial.
        let rep = ha.answer(&t2, at(200).ntp, ReplyCode::UnknownHomeAgent, 0, &[]);
        let out = run(&mut mn, at(200), deliver(PROXY, t2.src, &rep));
        assert!(sends(&out).is_empty());
        assert_eq!(failed(&out), Some(ReplyCode::UnknownHomeAgent));
        assert_eq!(mn.state(), MnState::Idle);
    }

    #[test]
    fn denials_fail_without_tight_loop() {
        for code in [
            ReplyCode::HaProhibited,
            ReplyCode::HaPoorlyFormedRequest,
            ReplyCode::HaReverseTunnelMandatory,
            ReplyCode::ProxyMissingHaParameter,
        ] {
            let mut mn = node(config());
            let mut ha = TestHa::new(ReplayStyle::default());
            let t = only_send(&run(&mut mn, at(0), colocated(COA)));
            let rep = ha.answer(&t, at(100).ntp, code, 0, &[]);
            let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
            assert_eq!(failed(&out), Some(code));
            assert!(sends(&out).is_empty());
            assert_eq!(mn.state(), MnState::Idle);
            assert_eq!(mn.next_timer(), None, "{code:?}: no retry until a new attachment");
        }
        // An FA's 70 to a T request arrives without MN-HA and is final.
        let mut mn = node(config());
        let t = only_send(&run(&mut mn, at(0), fa_attach(FA, true, false)));
        let rep = reply_bytes(
            None,
            ReplyCode::FaPoorlyFormedRequest,
            0,
            PROXY,
            req(&t).repr.identification,
            &[],
        );
        assert_eq!(
            failed(&run(&mut mn, at(50), deliver(FA, t.src, &rep))),
            Some(ReplyCode::FaPoorlyFormedRequest)
        );
        // Transient: 130 → reported, then retried after the backoff with a new request.
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let t = only_send(&run(&mut mn, at(0), colocated(COA)));
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::HaInsufficientResources, 0, &[]);
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(failed(&out), Some(ReplyCode::HaInsufficientResources));
        assert!(sends(&out).is_empty());
        assert_eq!(mn.next_timer(), Some(Instant::from_millis(1100)));
        let t2 = only_send(&run(&mut mn, at(1100), MnInput::Tick));
        assert_ne!(req(&t2).repr.identification, req(&t).repr.identification);
    }

    // --- deregistration and home ---

    #[test]
    fn deregistration() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = register_colocated(&mut mn, &mut ha, COA, &[]);
        let t = only_send(&run(&mut mn, at(1000), MnInput::Deregister));
        let r = req(&t);
        assert_eq!(
            (r.repr.lifetime, r.repr.care_of_address, r.repr.flags),
            (0, HOA, RequestFlags(0))
        );
        assert_eq!(r.repr.home_agent, PROXY);
        assert_eq!(t.src, SocketAddrV4::new(COA, 434));
        assert_eq!(t.dst, SocketAddrV4::new(PROXY, 434));
        assert!(
            !r.extensions()
                .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)))
        );
        assert_eq!(mn.state(), MnState::Deregistering);
        let rep = ha.answer(&t, at(1100).ntp, ReplyCode::Accepted, 0, &[]);
        let out = run(&mut mn, at(1100), deliver(PROXY, t.src, &rep));
        assert!(out.contains(&MnOutput::Deregistered));
        assert_eq!(mn.state(), MnState::Idle);
        assert_eq!(mn.next_timer(), None);
        // Without a link there is nothing to send: the binding is forgotten locally.
        let mut mn = node(config());
        assert_eq!(run(&mut mn, at(0), MnInput::Deregister), vec![MnOutput::Deregistered]);
    }

    #[test]
    fn home_deregisters_directly_with_actual_ha() {
        let mut mn = node(config());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = register_colocated(&mut mn, &mut ha, COA, &[]);
        let t = only_send(&run(&mut mn, at(2000), MnInput::Attached(Attachment::Home)));
        let r = req(&t);
        assert_eq!(t.dst, SocketAddrV4::new(ACTUAL_HA, 434));
        assert_eq!(t.src, SocketAddrV4::new(HOA, 434));
        assert_eq!(
            (r.repr.lifetime, r.repr.home_agent, r.repr.care_of_address, r.repr.flags),
            (0, ACTUAL_HA, HOA, RequestFlags(0))
        );
        assert_eq!(
            r.extensions().count(),
            1,
            "MN-HA only: no HA Parameter, no UDP Tunnel Request"
        );
        assert_eq!(mn.state(), MnState::Deregistering);
        let rep = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            0,
            ACTUAL_HA,
            r.repr.identification,
            &[],
        );
        let out = run(&mut mn, at(2100), deliver(ACTUAL_HA, t.src, &rep));
        assert!(out.contains(&MnOutput::Deregistered));
        assert_eq!(mn.state(), MnState::AtHome);
    }

    #[test]
    fn home_network_coa_and_code_206() {
        // A co-located address inside the home networks: deregister directly from it.
        let mut c = config();
        c.home_networks = vec!["10.10.0.0/16".parse().unwrap()];
        let inside = Ipv4Addr::new(10, 10, 7, 9);
        let mut mn = node(c.clone());
        let t = only_send(&run(&mut mn, at(0), colocated(inside)));
        assert_eq!(
            (t.src, t.dst),
            (SocketAddrV4::new(inside, 434), SocketAddrV4::new(ACTUAL_HA, 434))
        );
        assert_eq!(req(&t).repr.lifetime, 0);

        // 206 from the proxy (location detected there), naming another HA → direct deregistration with it.
        c.home_networks.clear();
        let mut mn = node(c);
        let mut ha = TestHa::new(ReplayStyle::default());
        let named = Ipv4Addr::new(10, 10, 2, 1);
        let t = only_send(&run(&mut mn, at(0), colocated(inside)));
        let ext = ExtensionBody::HaParameter(HaParameter {
            reserved: 0,
            home_agent: named,
        });
        let rep = ha.answer(&t, at(100).ntp, ReplyCode::ProxyAssignedHomeAgent, 0, &[ext]);
        let out = run(&mut mn, at(100), deliver(PROXY, t.src, &rep));
        assert_eq!(failed(&out), None);
        let t2 = only_send(&out);
        assert_eq!(t2.dst, SocketAddrV4::new(named, 434));
        assert_eq!((req(&t2).repr.home_agent, req(&t2).repr.lifetime), (named, 0));
        let rep = reply_bytes(
            Some(&sa(ReplayStyle::default())),
            ReplyCode::Accepted,
            0,
            named,
            req(&t2).repr.identification,
            &[],
        );
        let _ = run(&mut mn, at(200), deliver(named, t2.src, &rep));
        assert_eq!(mn.state(), MnState::AtHome);
    }

    #[test]
    fn failed_deregistration_forgets_binding_and_home_failure_does_not_spin() {
        let mut c = config();
        c.retransmit.max_attempts = 2;
        let mut mn = node(c.clone());
        let mut ha = TestHa::new(ReplayStyle::default());
        let _ = register_colocated(&mut mn, &mut ha, COA, &[]);
        let _ = run(&mut mn, at(1000), MnInput::Deregister);
        let _ = run(&mut mn, at(2000), MnInput::Tick);
        let out = run(&mut mn, at(4000), MnInput::Tick);
        assert_eq!(failed(&out), Some(ReplyCode::FaRegistrationTimeout));
        assert_eq!(mn.state(), MnState::Idle);
        assert_eq!(mn.next_timer(), None, "no renewal after the user asked to deregister");

        // At home, the actual HA does not answer: give up, and no timer is left that does nothing.
        let mut mn = node(c);
        let _ = register_colocated(&mut mn, &mut ha, COA, &[]);
        let _ = run(&mut mn, at(500_000), MnInput::Attached(Attachment::Home));
        let mut now = 500_000;
        let mut ticks = 0;
        while let Some(t) = mn.next_timer() {
            assert!(t.millis() > now || ticks == 0, "timer at {t} does not move");
            now = t.millis();
            let _ = run(&mut mn, at(now), MnInput::Tick);
            ticks += 1;
            assert!(ticks < 10);
        }
        assert_eq!(mn.state(), MnState::Idle);
    }

    #[test]
    fn infinite_lifetime_is_never_renewed() {
        let mut c = config();
        c.lifetime = u16::MAX;
        c.udp_tunnelling.enabled = false;
        let mut mn = node(c);
        let mut ha = TestHa::new(ReplayStyle::default());
        let out = register_colocated(&mut mn, &mut ha, COA, &[]);
        assert_eq!(registered(&out).map(|r| r.2), Some(u16::MAX));
        assert_eq!(mn.next_timer(), None);
    }

    #[test]
    fn missing_sa_fails() {
        let mut mn = MobileNode::new(config(), KeyStore::new(), 1);
        let out = run(&mut mn, at(0), colocated(COA));
        assert_eq!(drops(&out), vec![DropReason::NoSecurityAssociation]);
        assert_eq!(failed(&out), Some(ReplyCode::HaMnAuthFailed));
        // Keys arrive: the next attachment works.
        mn.set_keys(keys(ReplayStyle::default()));
        assert_eq!(sends(&run(&mut mn, at(10), colocated(COA))).len(), 1);
    }

    #[test]
    fn malformed_and_unexpected_inputs_are_dropped() {
        let mut mn = node(config());
        let _ = run(&mut mn, at(0), colocated(COA));
        let short = [3u8; 19];
        assert_eq!(
            drops(&run(
                &mut mn,
                at(1),
                deliver(PROXY, SocketAddrV4::new(COA, 434), &short)
            )),
            vec![DropReason::Malformed(ErrorKind::Truncated)]
        );
        let request = [1u8; 24];
        assert_eq!(
            drops(&run(
                &mut mn,
                at(1),
                deliver(PROXY, SocketAddrV4::new(COA, 434), &request)
            )),
            vec![DropReason::UnexpectedMessage]
        );
        assert!(matches!(
            drops(&run(
                &mut mn,
                at(1),
                MnInput::Advertisement {
                    src: FA,
                    icmp: &[9, 0, 0]
                }
            ))[..],
            [DropReason::Malformed(_)]
        ));
    }

    // --- robustness ---

    proptest::proptest! {
        /// Whatever happens, the node never panics and a Tick at `next_timer` always moves the timer forward (no
        /// busy loop for a simulation driver), and it never sends more than 3 + 1/s requests.
        #[test]
        fn timers_always_progress(
            ops in proptest::collection::vec((0u8..12, 0u64..5_000, proptest::prelude::any::<u16>()), 1..60),
        ) {
            let mut c = config();
            c.home_networks = vec!["10.10.0.0/16".parse().unwrap()];
            c.retransmit.max_attempts = 4;
            let mut mn = node(c);
            let mut ha = TestHa::new(ReplayStyle::default());
            let mut now = 0u64;
            let mut last: Option<Transmit> = None;
            let mut sent = Vec::new();
            for (op, dt, x) in ops {
                now += dt;
                let mut out = Vec::new();
                let fa_adv = advert(x, FTU, 600, 5);
                let junk = x.to_be_bytes();
                let reply;
                let input = match op {
                    0 => colocated(if x % 3 == 0 { Ipv4Addr::new(10, 10, 3, 3) } else { PRIV_COA }),
                    1 => fa_attach(if x % 2 == 0 { FA } else { PRIV_COA }, x % 5 != 0, x % 3 == 0),
                    2 => MnInput::Attached(Attachment::Home),
                    3 => MnInput::Detached,
                    4 => MnInput::Deregister,
                    5 => MnInput::KeepaliveReply,
                    6 => MnInput::GatewayChanged { mac: [x as u8; 6] },
                    7 => MnInput::Advertisement { src: FA, icmp: &fa_adv },
                    8 => deliver(PROXY, SocketAddrV4::new(COA, 434), &junk),
                    _ => match &last {
                        Some(t) => {
                            let codes = [
                                ReplyCode::Accepted,
                                ReplyCode::UnknownHomeAgent,
                                ReplyCode::HaInsufficientResources,
                                ReplyCode::FaLifetimeTooLong,
                                ReplyCode::ProxyAssignedHomeAgent,
                                ReplyCode::HaProhibited,
                            ];
                            let code = codes[usize::from(x % 6)];
                            reply = ha.answer(t, at(now).ntp, code, x % 700, &[utrp(x % 20)]);
                            deliver(PROXY, t.src, &reply)
                        }
                        None => MnInput::Tick,
                    },
                };
                mn.handle(at(now), input, &mut out);
                let mut record = |out: &mut Vec<MnOutput>, t: u64| {
                    for o in out.drain(..) {
                        if let MnOutput::Send(tx) = o {
                            last = Some(tx);
                            sent.push(t);
                        }
                    }
                };
                record(&mut out, now);
                // Drive all timers due up to `now + 2 s`.
                let horizon = now + 2000;
                let mut steps = 0;
                while let Some(t) = mn.next_timer() {
                    if t.millis() > horizon {
                        break;
                    }
                    let tick = t.millis().max(now);
                    mn.handle(at(tick), MnInput::Tick, &mut out);
                    record(&mut out, tick);
                    proptest::prop_assert!(mn.next_timer().is_none_or(|n| n.millis() > tick), "timer stuck at {tick}");
                    now = tick;
                    steps += 1;
                    proptest::prop_assert!(steps < 100);
                }
            }
            // Token bucket: in any window of w ms at most 3 + w/1000 requests.
            for (i, start) in sent.iter().enumerate() {
                for (j, end) in sent.iter().enumerate().skip(i) {
                    let allowed = 3 + (end - start) / 1000;
                    let n = (j - i + 1) as u64;
                    proptest::prop_assert!(n <= allowed, "{} requests in {} ms", n, end - start);
                }
            }
        }
    }

    // --- configuration ---

    #[test]
    fn config_yaml_defaults() {
        let c: MnConfig =
            crate::config::from_yaml("home_address: 10.10.1.50\nhome_agent: 198.51.100.10\nspi: 256\n").unwrap();
        assert_eq!(c, MnConfig::new(HOA, PROXY, 256));
        assert_eq!(c.lifetime, 1800);
        assert!(c.udp_tunnelling.enabled && !c.udp_tunnelling.force);
        assert_eq!(c.udp_tunnelling.default_keepalive, 110);
        assert!(c.reverse_tunnel);
        assert_eq!(
            c.retransmit,
            RetransmitConfig {
                initial_ms: 1000,
                max_ms: 30_000,
                max_attempts: 10
            }
        );
        assert_eq!(c.source_port, 434);
        assert_eq!(c.dialect, Dialect::default());

        let full = [
            "home_address: 0.0.0.0",
            "nai: joe@example.com",
            "home_agent: 198.51.100.10",
            "actual_home_agent: 0.0.0.0",
            "dialect: {ha_parameter_type: 200, ha_parameter_subtype: 3}",
            "spi: 0x100",
            "lifetime: 60",
            "udp_tunnelling: {force: true}",
            "reverse_tunnel: false",
            "retransmit: {max_attempts: 0}",
            "renew_before: {fraction: 0.5, min_secs: 1}",
            "home_networks: [10.10.0.0/16, 10.20.0.0/16]",
            "source_port: 40001",
        ]
        .join("\n");
        let c: MnConfig = crate::config::from_yaml(&full).unwrap();
        assert_eq!(c.nai.as_deref(), Some("joe@example.com"));
        assert_eq!(c.dialect, Dialect::new(200, 3).unwrap());
        assert!(c.udp_tunnelling.force && c.udp_tunnelling.enabled);
        assert_eq!(c.home_networks.len(), 2);
        assert_eq!(c.source_port, 40001);
    }

    #[test]
    fn config_errors_name_fields() {
        let fields = |yaml: &str| -> Vec<String> {
            crate::config::from_yaml::<MnConfig>(yaml)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields("home_agent: 198.51.100.10\nspi: 256\n"), vec!["home_address"]);
        assert_eq!(
            fields("home_address: 10.10.1.50\nhome_agent: 198.51.100.10\nspi: 256\ndialect: {ha_parameter_type: 32}\n"),
            vec!["dialect"]
        );
        assert_eq!(
            fields(
                &[
                    "home_address: 10.10.1.50",
                    "home_agent: 0.0.0.0",
                    "spi: 255",
                    "lifetime: 0",
                    "actual_home_agent: 0.0.0.0",
                    "udp_tunnelling: {enabled: false, force: true, default_keepalive: 5}",
                    "retransmit: {initial_ms: 500, max_ms: 100}",
                    "renew_before: {fraction: 0.9}",
                    "source_port: 0",
                ]
                .join("\n")
            ),
            vec![
                "home_agent",
                "actual_home_agent",
                "spi",
                "lifetime",
                "udp_tunnelling.default_keepalive",
                "udp_tunnelling.force",
                "retransmit.initial_ms",
                "retransmit.max_ms",
                "renew_before.fraction",
                "source_port",
            ]
        );
        assert_eq!(
            fields("home_address: 10.10.1.50\nhome_agent: 198.51.100.10\nspi: 256\nudp_tunnelling: {keepalive: 5}\n"),
            vec!["udp_tunnelling.keepalive"]
        );
        assert_eq!(
            fields("home_address: 10.10.1.50\nhome_agnt: 198.51.100.10\nspi: 256\n"),
            vec!["home_agnt"]
        );
        assert_eq!(
            fields("home_address: 10.10.1.50\nnai: ''\nhome_agent: 198.51.100.10\nspi: 256\n"),
            vec!["nai"]
        );
    }
}

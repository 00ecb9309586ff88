//! The reference Foreign Agent (RFC 5944 §2, §3.7; RFC 3024 reverse tunnelling; RFC 3519 §4.5 an FA behind a
//! NAT; RFC 2794 NAI) as a sans-IO state machine. In the MIP-proxy deployments it serves scenario B (FA care-of
//! address, registration MN → FA → `MIPP-Pub`, IP-in-IP `FA-COA` ↔ `MIPP-Pub`) and scenario D (FA behind a NAT:
//! the FA adds its own UDP Tunnel Request, or passes a co-located node's R-flag request unchanged), spec §1.3.
//!
//! What it does:
//! * **Advertises** (RFC 5944 §2.3): an Agent Advertisement every `advertisement.interval_ms` on [`FaInput::Tick`]
//!   to 224.0.0.1, and one unicast to each solicitor (rate-limited per solicitor). Sequence 0 after boot, +1 per
//!   advertisement sent (periodic or solicited), 0xFFFF followed by 256 (§2.3.2). Flags: F always; R when
//!   `require_registration`; B while the pending list is full; T when reverse tunnelling is supported; U when
//!   `behind_nat` (RFC 3519 §3.4). Never H, M, G (only IP-in-IP is implemented) or any unassigned bit.
//! * **Relays requests** from visitors after the validity checks of RFC 5944 §3.7.2.1 and RFC 3024 §4.2.1,
//!   otherwise **denies** them itself (65, 66, 69, 70, 72, 74, 75, 76, 77, 79, 97, 194). The relayed request
//!   carries the visitor's bytes through its MN-HA extension unchanged (RFC 5944 §3.7.2.2), drops what follows
//!   (FA-only extensions: MN-FA, Encapsulating Delivery Style 130), then appends the FA's own UDP Tunnel Request
//!   when `behind_nat` and D = 0 (RFC 3519 §4.5; the relay's IP source is then the care-of address), then FA-HA
//!   when the FA shares an SA with the Home Agent field's address (lifetime ≠ 0 and D = 0, RFC 5944 §3.5.4).
//! * **Relays replies** matched to a pending request by (home address or NAI, low 32 bits of the
//!   Identification) and coming from the Home Agent the request went to: verifies FA-HA when it shares an SA
//!   (missing or bad → 68 to the visitor), keeps the bytes through MN-HA, drops what follows (FA-HA, and a UDP
//!   Tunnel Reply answering the FA's own request), appends MN-FA when it shares an SA with the visitor, and
//!   sends it by link-layer unicast to the MAC the request came from (RFC 5944 §3.7.3.2: no ARP).
//! * Keeps the **visitor list** the data plane needs ([`Visitor`], [`FaOutput::Visitor`]): added/refreshed on an
//!   accepted reply, removed on an accepted deregistration, expired on [`FaInput::Tick`] without any message
//!   (RFC 5944 §3.7: an FA never originates registration messages).
//! * Behind a NAT, sends an RFC 3519 keepalive ([`FaOutput::SendKeepalive`]) every K seconds for each UDP tunnel
//!   a home agent assented to.
//!
//! Decisions where the RFCs leave room (each also noted where it is implemented):
//! * Pending timeout: after `pending_timeout_ms` (7 s, RFC 5944 §3.7.1 "MAY delete after 7 seconds") the entry is
//!   deleted and the visitor gets code 78, as §3.7.1 says it SHOULD (`pending_timeout_reply: false` deletes
//!   silently instead, like the proxy's spec §5.1 step 14).
//! * An invalid or missing MN-FA extension when the FA shares an SA with the mobile node: the request is silently
//!   discarded (RFC 5944 §3.7.2.1); 67 is never sent (an unauthenticated 67 would be a reflector).
//! * A missing or invalid FA-HA in a reply when the FA shares an SA with the home agent: the pending entry is
//!   removed and the visitor gets 68 (RFC 5944 §3.7.3.1 / code table), not a silent drop.
//! * r/x request bits are ignored unless `strict_reserved_bits` (then 70); spec §2.2 \[D\].
//! * A co-located registration (D = 1) through this FA is relayed only when the FA advertises R or U (RFC 5944
//!   §3.1: otherwise a co-located node MUST register directly), else 70. It is relayed unchanged (no UDP Tunnel
//!   Request, no FA-HA: its care-of address is not one the FA advertised, RFC 5944 §3.5.4) and its visitor entry
//!   has no FA tunnel.
//! * Deregistrations request no service, so the encapsulation, reverse-tunnel and delivery-style checks (72, 74,
//!   75, 76, 79) are not applied to them.
//! * Home Agent field 0.0.0.0, broadcast, multicast or one of the FA's own addresses → 194 (invalid Home Agent
//!   address); an address outside `allowed_home_agents` (when non-empty) → 65.
//! * Home address 0.0.0.0 without an NAI → 97 (missing NAI, RFC 2794). An accepted reply to a request with an NAI
//!   that lacks the NAI → 97; accepted with home address 0.0.0.0 → 99; with Home Agent 0.0.0.0 → 98 (RFC 2794 §3:
//!   the FA answers the visitor itself and creates no visitor entry).
//! * Denials are rate-limited per visitor MAC (≤ 1 per `denial_interval_ms`, RFC 5944 §3.7.2) and code 76 also
//!   globally (≤ 1/s, RFC 3024 §4.2.1); suppressed denials are `Drop(RateLimited)`.
//! * The visitor's lifetime is min(granted, requested) (an agent never increases it, RFC 5944 §3.4), capped by
//!   `visitor_max_lifetime` when set.
//! * The UDP Tunnel Reply answering the FA's own request is looked for after MN-HA first (an FA-only extension,
//!   spec §2.13), then anywhere; one before MN-HA is covered by MN-HA and reaches the visitor unchanged.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Datagram, DropReason, Now, RegistrationOutcome, Rng, Transmit};
use crate::auth::{AUTH_EXT_HEADER_LEN, AUTHENTICATOR_LEN, SecurityAssociation};
use crate::binding::{Encapsulation, INFINITE_LIFETIME, TunnelEndpoint};
use crate::config::{ConfigError, Prefix, Validate};
use crate::keystore::KeyStore;
use crate::time::Instant;
use crate::wire::advertisement::{AddrList, CODE_NOT_A_ROUTER, CODE_ROUTES_COMMON_TRAFFIC};
use crate::wire::{
    AgentAdvertisementRepr, AuthKind, Dialect, Error, ErrorKind, Extension, ExtensionBody, Message, MessageWriter,
    MobilityAgentExt, MobilityAgentFlags, REPLY_HEADER_LEN, REQUEST_HEADER_LEN, Reply, ReplyCode, ReplyRepr, Request,
    RequestFlags, RequestRepr, UdpTunnelReply, UdpTunnelRequest,
};

/// UDP port of registration messages, tunnel data and keepalives (RFC 5944 §1.8, RFC 3519 §2).
pub const REGISTRATION_PORT: u16 = 434;
/// Destination of periodic Agent Advertisements ("all systems on this link", RFC 5944 §2.3).
pub const ALL_SYSTEMS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
/// Shortest keepalive interval (RFC 3519 §4.10: never below 10 s).
pub const MIN_KEEPALIVE_SECS: u16 = 10;
/// Most care-of addresses one Mobility Agent Advertisement extension can carry (Length = 6 + 4·N ≤ 255).
pub const MAX_CARE_OF_ADDRESSES: usize = 62;
/// RFC 3519 Encapsulation value for IP-in-IP inside UDP.
const UDP_ENCAP_IPIP: u8 = 4;
/// An authentication extension's total length (Type, Length, SPI, 16-byte authenticator).
const AUTH_EXT_LEN: usize = AUTH_EXT_HEADER_LEN + AUTHENTICATOR_LEN;
/// A UDP Tunnel Request extension's total length.
const UTRQ_LEN: usize = 8;
/// Interval of the code-76 rate limit (RFC 3024 §4.2.1: at most one per second).
const TOO_DISTANT_INTERVAL: Duration = Duration::from_secs(1);
/// Rate-limit tables are pruned of stale entries when they grow past this.
const RATE_TABLE_PRUNE_AT: usize = 1024;
/// An instant that never comes (infinite lifetimes).
const NEVER: Instant = Instant::from_millis(u64::MAX);

// === configuration ===

fn default_interval_ms() -> u64 {
    1000
}
fn default_adv_lifetime() -> u16 {
    3
}
fn default_registration_lifetime() -> u16 {
    1800
}
fn default_prefix_length() -> u8 {
    24
}
fn default_true() -> bool {
    true
}
fn default_keepalive() -> u16 {
    110
}
fn default_max_pending() -> usize {
    5
}
fn default_pending_timeout_ms() -> u64 {
    7000
}
fn default_rate_ms() -> u64 {
    1000
}
/// Agent Advertisement settings (RFC 5944 §2.1, §2.3; RFC 1256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisementConfig {
    /// Interval between periodic advertisements, milliseconds. Default 1000 for the lab; RFC 1256's default
    /// MaxAdvertisementInterval is 600 s, and RFC 5944 §2.1 asks for at most ⅓ of `lifetime`.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// ICMP Router Advertisement Lifetime, seconds (default 3 = 3 × the lab interval, RFC 1256's ratio; the RFC
    /// default is 1800).
    #[serde(default = "default_adv_lifetime")]
    pub lifetime: u16,
    /// Longest registration lifetime accepted, seconds (advertised; longer requests get 69). 0xFFFF = infinity.
    #[serde(default = "default_registration_lifetime")]
    pub registration_lifetime: u16,
    /// Append the Prefix-Lengths extension (type 19) for the router address (RFC 5944 §2.1.2).
    #[serde(default)]
    pub prefix_lengths: bool,
    /// Prefix length of the visited link, used by the Prefix-Lengths extension.
    #[serde(default = "default_prefix_length")]
    pub visited_prefix_length: u8,
    /// ICMP code 0 (also routes common traffic) when true, else 16 (RFC 5944 §2.1).
    #[serde(default = "default_true")]
    pub routes_common_traffic: bool,
    /// Randomise each interval between 0.75 and 1 × `interval_ms` (RFC 1256 Min/MaxAdvertisementInterval);
    /// off by default so the lab sees a regular beat.
    #[serde(default)]
    pub jitter: bool,
}

impl Default for AdvertisementConfig {
    fn default() -> Self {
        AdvertisementConfig {
            interval_ms: default_interval_ms(),
            lifetime: default_adv_lifetime(),
            registration_lifetime: default_registration_lifetime(),
            prefix_lengths: false,
            visited_prefix_length: default_prefix_length(),
            routes_common_traffic: true,
            jitter: false,
        }
    }
}

/// Reverse tunnelling (RFC 3024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseTunnelConfig {
    /// Offer reverse tunnelling (advertise T; else requests with T get 74).
    #[serde(default = "default_true")]
    pub supported: bool,
    /// Require it (requests without T get 75).
    #[serde(default)]
    pub mandatory: bool,
}

impl Default for ReverseTunnelConfig {
    fn default() -> Self {
        ReverseTunnelConfig {
            supported: true,
            mandatory: false,
        }
    }
}

/// Delivery styles for reverse tunnelling (RFC 3024 §3.3). Direct delivery is always supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeliveryStylesConfig {
    /// Accept the Encapsulating Delivery Style extension (130); else requests carrying it get 79.
    #[serde(default)]
    pub encapsulating: bool,
}

/// Foreign Agent configuration. Keys (MN-FA SAs by home address or NAI, FA-HA SAs by home-agent address) come
/// from a keys file, never from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaConfig {
    /// FA-Visited: the address on the visited link (advertisement source and router address; visitors send their
    /// requests to it).
    pub visited_address: Ipv4Addr,
    /// FA-Routed: the source of relayed requests toward home agents (VT02 §1.6).
    pub routed_address: Ipv4Addr,
    /// Care-of addresses offered, all advertised; a D = 0 request must name one of them (else 77).
    pub care_of_addresses: Vec<Ipv4Addr>,
    /// Agent Advertisements.
    #[serde(default)]
    pub advertisement: AdvertisementConfig,
    /// Reverse tunnelling.
    #[serde(default)]
    pub reverse_tunnel: ReverseTunnelConfig,
    /// Delivery styles.
    #[serde(default)]
    pub delivery_styles: DeliveryStylesConfig,
    /// The FA sits behind a NAT: advertise U, add its own UDP Tunnel Request to D = 0 registrations and send them
    /// from the care-of address (RFC 3519 §4.5).
    #[serde(default)]
    pub behind_nat: bool,
    /// Set F (force UDP tunnelling) in the FA's own UDP Tunnel Request; needs `behind_nat`.
    #[serde(default)]
    pub force_udp_tunnel: bool,
    /// Keepalive interval (s) when the UDP Tunnel Reply says 0 (RFC 3519 §4.9: 110).
    #[serde(default = "default_keepalive")]
    pub keepalive_default: u16,
    /// Most pending requests (RFC 5944 §3.7.1: typically 5); more get 66, and B is advertised while full.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// How long a request waits for its reply, milliseconds (RFC 5944 §3.7.1: 7 s).
    #[serde(default = "default_pending_timeout_ms")]
    pub pending_timeout_ms: u64,
    /// Answer a timed-out request with 78 (RFC 5944 §3.7.1 SHOULD); false deletes it silently.
    #[serde(default = "default_true")]
    pub pending_timeout_reply: bool,
    /// Cap on a visitor entry's lifetime, seconds; none = as granted (which may be infinite).
    #[serde(default)]
    pub visitor_max_lifetime: Option<u16>,
    /// Advertise R: registration required, also for co-located nodes (RFC 5944 §2.1.1, §3.1).
    #[serde(default)]
    pub require_registration: bool,
    /// Home agents requests may be relayed to; empty = any (otherwise 65).
    #[serde(default)]
    pub allowed_home_agents: Vec<Prefix>,
    /// Deny requests with the reserved r/x bits set (70) instead of ignoring them (spec §2.2 \[D\]).
    #[serde(default)]
    pub strict_reserved_bits: bool,
    /// At most one denial per visitor (by MAC) per this many milliseconds (RFC 5944 §3.7.2: 1 s).
    #[serde(default = "default_rate_ms")]
    pub denial_interval_ms: u64,
    /// At most one solicited advertisement per solicitor per this many milliseconds.
    #[serde(default = "default_rate_ms")]
    pub solicitation_interval_ms: u64,
    /// Code point of the HA Parameter extension.
    #[serde(default)]
    pub dialect: Dialect,
}

impl FaConfig {
    /// A configuration with every default.
    pub fn new(visited_address: Ipv4Addr, routed_address: Ipv4Addr, care_of_addresses: Vec<Ipv4Addr>) -> Self {
        FaConfig {
            visited_address,
            routed_address,
            care_of_addresses,
            advertisement: AdvertisementConfig::default(),
            reverse_tunnel: ReverseTunnelConfig::default(),
            delivery_styles: DeliveryStylesConfig::default(),
            behind_nat: false,
            force_udp_tunnel: false,
            keepalive_default: default_keepalive(),
            max_pending: default_max_pending(),
            pending_timeout_ms: default_pending_timeout_ms(),
            pending_timeout_reply: true,
            visitor_max_lifetime: None,
            require_registration: false,
            allowed_home_agents: Vec::new(),
            strict_reserved_bits: false,
            denial_interval_ms: default_rate_ms(),
            solicitation_interval_ms: default_rate_ms(),
            dialect: Dialect::default(),
        }
    }

    /// The HA Parameter code point visitors' requests are parsed with.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

impl Validate for FaConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        for (field, a) in [
            ("visited_address", self.visited_address),
            ("routed_address", self.routed_address),
        ] {
            if !unicast(a) {
                e.push(ConfigError::new(field, format!("{a} is not a unicast address")));
            }
        }
        if self.care_of_addresses.is_empty() {
            e.push(ConfigError::new(
                "care_of_addresses",
                "at least one care-of address is required (RFC 5944 §3.7.1)",
            ));
        }
        if self.care_of_addresses.len() > MAX_CARE_OF_ADDRESSES {
            e.push(ConfigError::new(
                "care_of_addresses",
                format!("at most {MAX_CARE_OF_ADDRESSES} fit in one advertisement"),
            ));
        }
        for (i, a) in self.care_of_addresses.iter().enumerate() {
            if !unicast(*a) {
                e.push(ConfigError::new(
                    format!("care_of_addresses[{i}]"),
                    format!("{a} is not a unicast address"),
                ));
            } else if self.care_of_addresses.iter().take(i).any(|b| b == a) {
                e.push(ConfigError::new(
                    format!("care_of_addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        let adv = &self.advertisement;
        if adv.interval_ms == 0 {
            e.push(ConfigError::new("advertisement.interval_ms", "must be at least 1"));
        }
        if adv.lifetime == 0 {
            e.push(ConfigError::new("advertisement.lifetime", "must be at least 1 second"));
        } else if adv.interval_ms.saturating_mul(3) > u64::from(adv.lifetime) * 1000 {
            e.push(ConfigError::new(
                "advertisement.interval_ms",
                format!(
                    "{} ms is more than a third of the advertisement lifetime {} s (RFC 5944 §2.1)",
                    adv.interval_ms, adv.lifetime
                ),
            ));
        }
        if adv.registration_lifetime == 0 {
            e.push(ConfigError::new(
                "advertisement.registration_lifetime",
                "must be at least 1 second",
            ));
        }
        if adv.visited_prefix_length > 32 {
            e.push(ConfigError::new("advertisement.visited_prefix_length", "must be 0-32"));
        }
        if self.reverse_tunnel.mandatory && !self.reverse_tunnel.supported {
            e.push(ConfigError::new(
                "reverse_tunnel.mandatory",
                "requires reverse_tunnel.supported",
            ));
        }
        if self.delivery_styles.encapsulating && !self.reverse_tunnel.supported {
            e.push(ConfigError::new(
                "delivery_styles.encapsulating",
                "requires reverse_tunnel.supported (RFC 3024 §3.3)",
            ));
        }
        if self.force_udp_tunnel && !self.behind_nat {
            e.push(ConfigError::new("force_udp_tunnel", "requires behind_nat"));
        }
        if self.keepalive_default < MIN_KEEPALIVE_SECS {
            e.push(ConfigError::new(
                "keepalive_default",
                format!("must be at least {MIN_KEEPALIVE_SECS} s (RFC 3519 §4.10)"),
            ));
        }
        if self.max_pending == 0 {
            e.push(ConfigError::new("max_pending", "must be at least 1"));
        }
        if self.pending_timeout_ms == 0 {
            e.push(ConfigError::new("pending_timeout_ms", "must be at least 1"));
        }
        if self.visitor_max_lifetime == Some(0) {
            e.push(ConfigError::new("visitor_max_lifetime", "must be at least 1 second"));
        }
        e
    }
}

// === inputs, outputs, visitor list ===

/// What arrives at the foreign agent.
#[derive(Debug, Clone, Copy)]
pub enum FaInput<'a> {
    /// UDP 434 from the visited link, with the sender's link-layer (MAC) address.
    FromMobile {
        /// The datagram.
        dg: Datagram<'a>,
        /// Link-layer source address.
        link_src: [u8; 6],
    },
    /// UDP 434 arriving on the routed side (replies from home agents / the proxy).
    FromNetwork(Datagram<'a>),
    /// An ICMP Agent Solicitation on the visited link, from `src` (0.0.0.0 if the node has no address yet).
    Solicitation {
        /// IP source of the solicitation.
        src: Ipv4Addr,
    },
    /// The data plane saw an RFC 3519 keepalive echo reply (FA behind a NAT).
    KeepaliveReply,
    /// Time passed; call at [`ForeignAgent::next_timer`].
    Tick,
}

/// What the foreign agent wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaOutput {
    /// A datagram to a home agent / the proxy (routed side).
    Send(Transmit),
    /// A reply to a visitor: link-layer unicast to `link_dst` on the visited link, no ARP (RFC 5944 §3.7.3.2).
    SendToMobile {
        /// The datagram.
        transmit: Transmit,
        /// The visitor's MAC address.
        link_dst: [u8; 6],
    },
    /// An Agent Advertisement (ICMP message, checksum filled) to send from the visited address with IP TTL 1, to
    /// 224.0.0.1 or unicast to a solicitor.
    Advertise {
        /// The ICMP message.
        icmp: Vec<u8>,
        /// IP destination.
        dst: Ipv4Addr,
    },
    /// A visitor entry changed (data plane: delivery and reverse tunnel).
    Visitor(VisitorChange),
    /// FA behind a NAT: send an RFC 3519 keepalive (UDP-encapsulated ICMP echo request) from `src` to `dst`.
    SendKeepalive {
        /// Local tunnel end (care-of address, port 434).
        src: SocketAddrV4,
        /// Remote tunnel end (home agent / proxy, port 434).
        dst: SocketAddrV4,
    },
    /// A registration ended (one per reply the FA sends).
    Outcome(RegistrationOutcome),
    /// An input produced nothing.
    Drop(DropReason),
}

/// How a visitor's outbound packets reach the FA when reverse tunnelled (RFC 3024 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStyle {
    /// Plain packets to the FA's MAC (the default).
    Direct,
    /// Packets encapsulated to the FA (extension 130).
    Encapsulating,
}

/// The FA's end of the tunnel to a visitor's home agent (here: the proxy's public address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VisitorTunnel {
    /// Local end: the care-of address (port 434 for a UDP tunnel, 0 for IP-in-IP).
    pub local: SocketAddrV4,
    /// Remote end: the Home Agent field of the reply; port 434 and a UDP encapsulation when the home agent
    /// assented to the FA's UDP Tunnel Request.
    pub remote: TunnelEndpoint,
    /// Keepalive interval in seconds (UDP tunnels only; 0 for IP-in-IP).
    pub keepalive_interval: u16,
}

/// An accepted visitor (RFC 5944 §3.7.1 visitor list entry) with what the data plane needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    /// Home address (as in the reply).
    pub home_address: Ipv4Addr,
    /// NAI, if it registered with one.
    pub nai: Option<Box<str>>,
    /// Link-layer address the request came from: deliver decapsulated packets there.
    pub mn_mac: [u8; 6],
    /// IP source and UDP source port of the request.
    pub mn_source: SocketAddrV4,
    /// Home Agent field of the reply (`MIPP-Pub` in scenario B).
    pub home_agent: Ipv4Addr,
    /// Care-of Address of the request.
    pub care_of_address: Ipv4Addr,
    /// D = 1: a co-located care-of address registered through this FA; the node decapsulates itself.
    pub co_located: bool,
    /// The FA's tunnel for this visitor; `None` when co-located.
    pub tunnel: Option<VisitorTunnel>,
    /// Reverse tunnelling requested (T): tunnel the visitor's packets to `tunnel.remote`.
    pub reverse_tunnel: bool,
    /// Delivery style for reverse tunnelling.
    pub delivery: DeliveryStyle,
    /// Identification of the accepted request.
    pub identification: u64,
    /// Lifetime of the entry, seconds (0xFFFF = infinite).
    pub lifetime: u16,
    /// When accepted or last refreshed.
    pub registered_at: Instant,
    /// When it expires unless refreshed.
    pub expires_at: Instant,
}

/// How a visitor entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VisitorChangeKind {
    /// A new visitor.
    Added,
    /// A re-registration (new lifetime, tunnel or Identification).
    Refreshed,
    /// Removed by an accepted deregistration.
    Removed,
    /// Removed because its lifetime ran out (no message is sent).
    Expired,
}

/// One visitor change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorChange {
    /// What happened.
    pub kind: VisitorChangeKind,
    /// The entry as it is now (for `Removed`/`Expired`: as it was).
    pub visitor: Visitor,
}

// === state ===

/// How a pending request is found again: home address, or the NAI when the home address is 0.0.0.0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum MnKey {
    Home(Ipv4Addr),
    Nai(Box<[u8]>),
}

/// A request relayed and waiting for its reply (RFC 5944 §3.7.1).
#[derive(Debug, Clone)]
struct Pending {
    request: RequestRepr,
    nai: Option<Box<[u8]>>,
    mn_mac: [u8; 6],
    mn_source: SocketAddrV4,
    /// Source for replies to the visitor: the address the request was sent to.
    reply_source: Ipv4Addr,
    /// SPI of the verified MN-FA extension, if any.
    mn_fa_spi: Option<u32>,
    delivery: DeliveryStyle,
    utrq_added: bool,
    expires_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct KeepaliveTimer {
    interval: u16,
    next_at: Instant,
}

/// What a denial needs to know about the request it answers.
struct DenyCtx<'a> {
    request: &'a RequestRepr,
    nai: Option<&'a [u8]>,
    mn_mac: [u8; 6],
    mn_source: SocketAddrV4,
    reply_source: Ipv4Addr,
    mn_fa_spi: Option<u32>,
}

/// The reference Foreign Agent. See the module documentation.
#[derive(Debug)]
pub struct ForeignAgent {
    config: FaConfig,
    keys: KeyStore,
    dialect: Dialect,
    rng: Rng,
    /// Sequence number of the next advertisement.
    sequence: u16,
    next_advert: Instant,
    pending: BTreeMap<(MnKey, u32), Pending>,
    visitors: BTreeMap<Ipv4Addr, Visitor>,
    keepalives: BTreeMap<(SocketAddrV4, SocketAddrV4), KeepaliveTimer>,
    last_denial: BTreeMap<[u8; 6], Instant>,
    last_too_distant: Option<Instant>,
    last_solicited: BTreeMap<Ipv4Addr, Instant>,
    last_keepalive_reply: Option<Instant>,
}

impl ForeignAgent {
    /// A foreign agent that has just booted (advertisement sequence 0; the first advertisement goes out on the
    /// first [`FaInput::Tick`]). `seed` drives the advertisement jitter.
    pub fn new(config: FaConfig, keys: KeyStore, seed: u64) -> ForeignAgent {
        let dialect = config.dialect();
        ForeignAgent {
            config,
            keys,
            dialect,
            rng: Rng::new(seed),
            sequence: 0,
            next_advert: Instant::ZERO,
            pending: BTreeMap::new(),
            visitors: BTreeMap::new(),
            keepalives: BTreeMap::new(),
            last_denial: BTreeMap::new(),
            last_too_distant: None,
            last_solicited: BTreeMap::new(),
            last_keepalive_reply: None,
        }
    }

    /// Replaces the security associations; pending requests and visitors are kept.
    pub fn set_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
    }

    /// The configuration.
    pub fn config(&self) -> &FaConfig {
        &self.config
    }

    /// Accepted visitors.
    pub fn visitors(&self) -> impl Iterator<Item = &Visitor> {
        self.visitors.values()
    }

    /// The visitor with this home address.
    pub fn visitor(&self, home_address: Ipv4Addr) -> Option<&Visitor> {
        self.visitors.get(&home_address)
    }

    /// Number of requests waiting for a reply.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether the pending list is full (advertised as B).
    pub fn is_busy(&self) -> bool {
        self.pending.len() >= self.config.max_pending
    }

    /// Sequence number the next advertisement will carry.
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    /// When the data plane last reported a keepalive echo reply.
    pub fn last_keepalive_reply(&self) -> Option<Instant> {
        self.last_keepalive_reply
    }

    /// When to call [`handle`](Self::handle) with [`FaInput::Tick`] next.
    pub fn next_timer(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| p.expires_at);
        let visitors = self.visitors.values().map(|v| v.expires_at).filter(|t| *t != NEVER);
        let keepalives = self.keepalives.values().map(|k| k.next_at);
        pending
            .chain(visitors)
            .chain(keepalives)
            .chain(core::iter::once(self.next_advert))
            .min()
    }

    /// Processes one input at `now`, appending what must happen to `out`.
    pub fn handle(&mut self, now: Now, input: FaInput<'_>, out: &mut Vec<FaOutput>) {
        let now = now.instant;
        match input {
            FaInput::FromMobile { dg, link_src } => self.on_request(now, &dg, link_src, out),
            FaInput::FromNetwork(dg) => self.on_reply(now, &dg, out),
            FaInput::Solicitation { src } => self.on_solicitation(now, src, out),
            FaInput::KeepaliveReply => self.last_keepalive_reply = Some(now),
            FaInput::Tick => self.on_tick(now, out),
        }
    }

    // --- advertisements ---

    fn on_solicitation(&mut self, now: Instant, src: Ipv4Addr, out: &mut Vec<FaOutput>) {
        let interval = Duration::from_millis(self.config.solicitation_interval_ms);
        if limited(&mut self.last_solicited, src, now, interval) {
            out.push(FaOutput::Drop(DropReason::RateLimited));
            return;
        }
        // A node without an address solicits from 0.0.0.0: answer on the all-systems group.
        let dst = if unicast(src) { src } else { ALL_SYSTEMS };
        self.advertise(dst, out);
    }

    fn advertise(&mut self, dst: Ipv4Addr, out: &mut Vec<FaOutput>) {
        match self.build_advertisement() {
            Ok(icmp) => out.push(FaOutput::Advertise { icmp, dst }),
            Err(e) => out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        }
    }

    /// The flags the next advertisement carries.
    pub fn advertisement_flags(&self) -> MobilityAgentFlags {
        let mut f = MobilityAgentFlags::F;
        if self.config.require_registration {
            f |= MobilityAgentFlags::R;
        }
        if self.is_busy() {
            f |= MobilityAgentFlags::B;
        }
        if self.config.reverse_tunnel.supported {
            f |= MobilityAgentFlags::T;
        }
        if self.config.behind_nat {
            f |= MobilityAgentFlags::U;
        }
        MobilityAgentFlags(f)
    }

    fn build_advertisement(&mut self) -> crate::wire::Result<Vec<u8>> {
        let sequence = self.sequence;
        // RFC 5944 §2.3.2: 0xFFFF is followed by 256, so 0-255 always means "rebooted".
        self.sequence = if sequence == u16::MAX { 256 } else { sequence + 1 };
        let adv = &self.config.advertisement;
        let coas: Vec<u8> = self.config.care_of_addresses.iter().flat_map(|a| a.octets()).collect();
        let care_of_addresses = AddrList::new(&coas).ok_or(Error::new(ErrorKind::BadValue, 0))?;
        let mut router = [0u8; 8];
        if let Some(r) = router.get_mut(..4) {
            r.copy_from_slice(&self.config.visited_address.octets());
        }
        let prefix = [adv.visited_prefix_length];
        let repr = AgentAdvertisementRepr {
            code: if adv.routes_common_traffic {
                CODE_ROUTES_COMMON_TRAFFIC
            } else {
                CODE_NOT_A_ROUTER
            },
            lifetime: adv.lifetime,
            routers: &router,
            mobility: Some(MobilityAgentExt {
                sequence,
                registration_lifetime: adv.registration_lifetime,
                flags: self.advertisement_flags(),
                care_of_addresses,
            }),
            prefix_lengths: adv.prefix_lengths.then_some(prefix.as_slice()),
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn advert_interval(&mut self) -> Duration {
        let max = self.config.advertisement.interval_ms.max(1);
        if !self.config.advertisement.jitter {
            return Duration::from_millis(max);
        }
        let min = max - max / 4;
        let span = max - min + 1;
        Duration::from_millis(min + self.rng.next_u64() % span)
    }

    // --- timers ---

    fn on_tick(&mut self, now: Instant, out: &mut Vec<FaOutput>) {
        if now >= self.next_advert {
            self.advertise(ALL_SYSTEMS, out);
            self.next_advert = now + self.advert_interval();
        }

        // Pending requests that waited too long (RFC 5944 §3.7.1).
        let timed_out: Vec<(MnKey, u32)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in timed_out {
            let Some(p) = self.pending.remove(&key) else { continue };
            if self.config.pending_timeout_reply {
                let ctx = DenyCtx {
                    request: &p.request,
                    nai: p.nai.as_deref(),
                    mn_mac: p.mn_mac,
                    mn_source: p.mn_source,
                    reply_source: p.reply_source,
                    mn_fa_spi: p.mn_fa_spi,
                };
                self.deny(now, &ctx, ReplyCode::FaRegistrationTimeout, out);
            } else {
                out.push(FaOutput::Drop(DropReason::PendingTimeout));
            }
        }

        // Visitors whose lifetime ran out: removed without any message (RFC 5944 §3.7).
        let expired: Vec<Ipv4Addr> = self
            .visitors
            .iter()
            .filter(|(_, v)| v.expires_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for hoa in &expired {
            if let Some(visitor) = self.visitors.remove(hoa) {
                out.push(FaOutput::Visitor(VisitorChange {
                    kind: VisitorChangeKind::Expired,
                    visitor,
                }));
            }
        }
        if !expired.is_empty() {
            self.rebuild_keepalives(now);
        }

        for ((src, dst), k) in &mut self.keepalives {
            if k.next_at <= now {
                out.push(FaOutput::SendKeepalive { src: *src, dst: *dst });
                k.next_at = now + Duration::from_secs(u64::from(k.interval));
            }
        }

        let denial = Duration::from_millis(self.config.denial_interval_ms);
        self.last_denial.retain(|_, t| *t + denial > now);
        let solicit = Duration::from_millis(self.config.solicitation_interval_ms);
        self.last_solicited.retain(|_, t| *t + solicit > now);
    }

    /// Recomputes the keepalive timers from the visitors' UDP tunnels (one per local/remote pair, at the
    /// shortest interval any visitor on it was given), keeping the schedule of tunnels that stay.
    fn rebuild_keepalives(&mut self, now: Instant) {
        let mut wanted: BTreeMap<(SocketAddrV4, SocketAddrV4), u16> = BTreeMap::new();
        for t in self.visitors.values().filter_map(|v| v.tunnel) {
            if t.remote.encapsulation.is_udp() {
                let key = (t.local, SocketAddrV4::new(t.remote.addr, t.remote.port));
                let e = wanted.entry(key).or_insert(t.keepalive_interval);
                *e = (*e).min(t.keepalive_interval);
            }
        }
        let old = core::mem::take(&mut self.keepalives);
        for (key, interval) in wanted {
            let period = Duration::from_secs(u64::from(interval));
            let next_at = match old.get(&key) {
                Some(k) => k.next_at.min(now + period),
                // RFC 3519 §4.9: the first keepalive K seconds after the registration.
                None => now + period,
            };
            self.keepalives.insert(key, KeepaliveTimer { interval, next_at });
        }
    }

    // --- requests from visitors ---

    fn on_request(&mut self, now: Instant, dg: &Datagram<'_>, mn_mac: [u8; 6], out: &mut Vec<FaOutput>) {
        let req = match Message::parse(dg.payload, &self.dialect) {
            Ok(Message::Request(r)) => r,
            Ok(_) => return out.push(FaOutput::Drop(DropReason::UnexpectedMessage)),
            Err(e) => return out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        };
        let r = req.repr;
        // The FA relays exactly through the authorization-enabling extension; without one the HA would drop
        // the request anyway (RFC 5944 §3.6.1.3, §3.8.2.1).
        let Some(mn_ha) = req.auth(AuthKind::MobileHome) else {
            return out.push(FaOutput::Drop(DropReason::NoAuthExtension));
        };
        let nai = req.nai();
        let mn_fa_spi = match self.check_mn_fa(&req, nai) {
            Ok(spi) => spi,
            Err(reason) => return out.push(FaOutput::Drop(reason)),
        };
        let ctx = DenyCtx {
            request: &r,
            nai,
            mn_mac,
            mn_source: dg.src,
            reply_source: self.reply_source(*dg.dst.ip()),
            mn_fa_spi,
        };
        let key = match (r.home_address.is_unspecified(), nai) {
            (false, _) => MnKey::Home(r.home_address),
            (true, Some(n)) => MnKey::Nai(n.into()),
            (true, None) => return self.deny(now, &ctx, ReplyCode::MissingNai, out),
        };
        let delivery = match self.check_request(&req, mn_ha.offset, dg.ttl) {
            Ok(d) => d,
            Err(code) => return self.deny(now, &ctx, code, out),
        };
        let pending_key = (key, r.identification as u32);
        // A retransmission of a pending request (nonces: identical) replaces its entry.
        if !self.pending.contains_key(&pending_key) && self.is_busy() {
            return self.deny(now, &ctx, ReplyCode::FaInsufficientResources, out);
        }

        let co_located = r.flags.decapsulation_by_mn();
        let registering = r.lifetime != 0;
        // RFC 3519 §4.5: an FA behind a NAT adds its own request after MN-HA for its own care-of address (never
        // for a deregistration, spec §2.6) and sends from an IP source equal to that care-of address.
        let utrq = (self.config.behind_nat && !co_located && registering).then_some(UdpTunnelRequest {
            force: self.config.force_udp_tunnel,
            encapsulation: UDP_ENCAP_IPIP,
            ..UdpTunnelRequest::default()
        });
        // RFC 5944 §3.5.4, §3.7.2.2: FA-HA when an SA exists, never on deregistrations nor for a care-of
        // address the FA did not advertise.
        let fa_ha = if registering && !co_located {
            self.keys.for_agent(r.home_agent).first()
        } else {
            None
        };
        let cut = mn_ha.offset + mn_ha.bytes.len();
        let payload = match build_relay(&req, cut, &self.dialect, utrq, fa_ha) {
            Ok(p) => p,
            Err(e) => return out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        };
        let src_ip = if utrq.is_some() {
            r.care_of_address
        } else {
            self.config.routed_address
        };
        self.pending.insert(
            pending_key,
            Pending {
                request: r,
                nai: nai.map(Into::into),
                mn_mac,
                mn_source: dg.src,
                reply_source: ctx.reply_source,
                mn_fa_spi,
                delivery,
                utrq_added: utrq.is_some(),
                expires_at: now + Duration::from_millis(self.config.pending_timeout_ms),
            },
        );
        out.push(FaOutput::Send(Transmit {
            src: SocketAddrV4::new(src_ip, REGISTRATION_PORT),
            dst: SocketAddrV4::new(r.home_agent, REGISTRATION_PORT),
            ttl: None,
            payload,
        }));
    }

    /// The MN-FA SAs of a node: by home address, else by NAI.
    fn mn_sas(&self, home_address: Ipv4Addr, nai: Option<&[u8]>) -> &[SecurityAssociation] {
        let by_home = if home_address.is_unspecified() {
            &[][..]
        } else {
            self.keys.for_peer(home_address)
        };
        if !by_home.is_empty() {
            return by_home;
        }
        nai.and_then(|n| core::str::from_utf8(n).ok())
            .map_or(&[][..], |n| self.keys.for_nai(n))
    }

    /// The SA to sign MN-FA with: the one the request used, else any shared with the node.
    fn mn_sa(&self, home_address: Ipv4Addr, nai: Option<&[u8]>, spi: Option<u32>) -> Option<&SecurityAssociation> {
        let sas = self.mn_sas(home_address, nai);
        spi.and_then(|s| sas.iter().find(|sa| sa.spi().get() == s))
            .or_else(|| sas.first())
    }

    /// RFC 5944 §3.7.2.1: when the FA shares an SA with the node, exactly one valid MN-FA extension is required,
    /// otherwise the request is silently discarded. `Ok(spi)` names the SA used.
    fn check_mn_fa(&self, req: &Request<'_>, nai: Option<&[u8]>) -> Result<Option<u32>, DropReason> {
        let sas = self.mn_sas(req.repr.home_address, nai);
        if sas.is_empty() {
            return Ok(None);
        }
        if req.auth_count(AuthKind::MobileForeign) != 1 {
            return Err(DropReason::BadAuthenticator);
        }
        let ext = req.auth(AuthKind::MobileForeign).ok_or(DropReason::BadAuthenticator)?;
        let ExtensionBody::Auth { spi, .. } = ext.body else {
            return Err(DropReason::BadAuthenticator);
        };
        let sa = sas
            .iter()
            .find(|sa| sa.spi().get() == spi)
            .ok_or(DropReason::NoSecurityAssociation)?;
        sa.verify(req.bytes, &ext).map_err(|_| DropReason::BadAuthenticator)?;
        Ok(Some(spi))
    }

    fn is_own_address(&self, a: Ipv4Addr) -> bool {
        a == self.config.visited_address
            || a == self.config.routed_address
            || self.config.care_of_addresses.contains(&a)
    }

    /// The validity checks of RFC 5944 §3.7.2.1 and RFC 3024 §4.2.1 (and the policy checks noted in the module
    /// documentation). `Err` is the denial code.
    fn check_request(&self, req: &Request<'_>, mn_ha_offset: usize, ttl: u8) -> Result<DeliveryStyle, ReplyCode> {
        let cfg = &self.config;
        let r = &req.repr;
        let f = r.flags;
        let co_located = f.decapsulation_by_mn();
        let reverse = f.reverse_tunnel();
        let registering = r.lifetime != 0;

        let ha = r.home_agent;
        if !unicast(ha) || self.is_own_address(ha) {
            return Err(ReplyCode::InvalidHomeAgent);
        }
        if !cfg.allowed_home_agents.is_empty() && !cfg.allowed_home_agents.iter().any(|p| p.contains(ha)) {
            return Err(ReplyCode::FaProhibited);
        }
        if cfg.strict_reserved_bits && (f.has(RequestFlags::R_RESERVED) || f.has(RequestFlags::X_RESERVED)) {
            return Err(ReplyCode::FaPoorlyFormedRequest);
        }
        // RFC 5944 §3.1: a co-located node registers through an FA only when it sets R (or U, RFC 3519 §4.11).
        if co_located && !(cfg.require_registration || cfg.behind_nat) {
            return Err(ReplyCode::FaPoorlyFormedRequest);
        }
        // RFC 3024 §3.3: extension 130 only with T, after MN-HA; meaningless for a co-located node.
        let mut encapsulating = false;
        for e in req.extensions() {
            if matches!(e.body, ExtensionBody::EncapsulatingDeliveryStyle) {
                if e.offset < mn_ha_offset {
                    return Err(ReplyCode::FaPoorlyFormedRequest);
                }
                encapsulating = true;
            }
        }
        if encapsulating && (!reverse || co_located) {
            return Err(ReplyCode::FaPoorlyFormedRequest);
        }
        if r.lifetime > cfg.advertisement.registration_lifetime {
            return Err(ReplyCode::FaLifetimeTooLong);
        }
        if registering {
            if !co_located && (f.minimal_encap() || f.gre()) {
                return Err(ReplyCode::FaEncapUnavailable);
            }
            if reverse && !co_located && !cfg.reverse_tunnel.supported {
                return Err(ReplyCode::FaReverseTunnelUnavailable);
            }
            if !reverse && cfg.reverse_tunnel.mandatory {
                return Err(ReplyCode::FaReverseTunnelMandatory);
            }
            // RFC 3024 §4.2.1: the visitor must be on-link (TTL 255) before the FA reverse-tunnels for it.
            if reverse && !co_located && ttl != 255 {
                return Err(ReplyCode::FaMnTooDistant);
            }
            if encapsulating && !cfg.delivery_styles.encapsulating {
                return Err(ReplyCode::FaDeliveryStyleUnsupported);
            }
        }
        // A deregistration of all bindings names the home address as its care-of address (RFC 5944 §3.6.1.2);
        // `on_reply` removes the visitor entry when it is accepted.
        let deregister_all = !registering && r.care_of_address == r.home_address;
        if !co_located && !deregister_all && !cfg.care_of_addresses.contains(&r.care_of_address) {
            return Err(ReplyCode::FaInvalidCoa);
        }
        Ok(if encapsulating {
            DeliveryStyle::Encapsulating
        } else {
            DeliveryStyle::Direct
        })
    }

    /// Source address of replies to a visitor: the address its request was sent to, or the visited address when
    /// that was a multicast or broadcast address (RFC 5944 §3.7.2.3).
    fn reply_source(&self, request_dst: Ipv4Addr) -> Ipv4Addr {
        if unicast(request_dst) {
            request_dst
        } else {
            self.config.visited_address
        }
    }

    /// Sends an FA-generated denial to the visitor (rate-limited), with MN-FA when an SA exists; never MN-HA,
    /// which the FA cannot compute.
    fn deny(&mut self, now: Instant, ctx: &DenyCtx<'_>, code: ReplyCode, out: &mut Vec<FaOutput>) {
        if code == ReplyCode::FaMnTooDistant && self.last_too_distant.is_some_and(|t| now < t + TOO_DISTANT_INTERVAL) {
            return out.push(FaOutput::Drop(DropReason::RateLimited));
        }
        let interval = Duration::from_millis(self.config.denial_interval_ms);
        if limited(&mut self.last_denial, ctx.mn_mac, now, interval) {
            return out.push(FaOutput::Drop(DropReason::RateLimited));
        }
        if code == ReplyCode::FaMnTooDistant {
            self.last_too_distant = Some(now);
        }
        let r = ctx.request;
        let repr = ReplyRepr {
            code,
            // RFC 5944 §3.4: 69 carries the longest lifetime the FA accepts; otherwise unspecified (copied).
            lifetime: if code == ReplyCode::FaLifetimeTooLong {
                self.config.advertisement.registration_lifetime
            } else {
                r.lifetime
            },
            home_address: r.home_address,
            home_agent: r.home_agent,
            identification: r.identification,
        };
        let sa = self.mn_sa(r.home_address, ctx.nai, ctx.mn_fa_spi);
        let payload = match build_denial(&repr, ctx.nai, &self.dialect, sa) {
            Ok(p) => p,
            Err(e) => return out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        };
        out.push(FaOutput::SendToMobile {
            transmit: Transmit {
                src: SocketAddrV4::new(ctx.reply_source, REGISTRATION_PORT),
                dst: mobile_destination(ctx.mn_source, r.home_address),
                ttl: None,
                payload,
            },
            link_dst: ctx.mn_mac,
        });
        out.push(FaOutput::Outcome(RegistrationOutcome {
            home_address: r.home_address,
            care_of_address: r.care_of_address,
            home_agent: Some(r.home_agent),
            code,
            lifetime: repr.lifetime,
            nat_detected: false,
        }));
    }

    // --- replies from home agents ---

    fn find_pending(&self, reply: &Reply<'_>) -> Option<(MnKey, u32)> {
        let low = reply.repr.identification as u32;
        let by_home = (MnKey::Home(reply.repr.home_address), low);
        if !reply.repr.home_address.is_unspecified() && self.pending.contains_key(&by_home) {
            return Some(by_home);
        }
        let by_nai = (MnKey::Nai(reply.nai()?.into()), low);
        self.pending.contains_key(&by_nai).then_some(by_nai)
    }

    fn on_reply(&mut self, now: Instant, dg: &Datagram<'_>, out: &mut Vec<FaOutput>) {
        let reply = match Message::parse(dg.payload, &self.dialect) {
            Ok(Message::Reply(r)) => r,
            Ok(_) => return out.push(FaOutput::Drop(DropReason::UnexpectedMessage)),
            Err(e) => return out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        };
        let rr = reply.repr;
        // RFC 5944 §3.7.3.1: match by home address (or NAI) and the low 32 bits of the Identification of a
        // request sent to the replying home agent.
        let Some(key) = self.find_pending(&reply) else {
            return out.push(FaOutput::Drop(DropReason::NoPendingRequest));
        };
        if self.pending.get(&key).map(|p| p.request.home_agent) != Some(*dg.src.ip()) {
            return out.push(FaOutput::Drop(DropReason::UnknownHomeAgent));
        }
        let Some(p) = self.pending.remove(&key) else {
            return out.push(FaOutput::Drop(DropReason::NoPendingRequest));
        };
        let req = p.request;
        let co_located = req.flags.decapsulation_by_mn();
        let ctx = DenyCtx {
            request: &req,
            nai: p.nai.as_deref(),
            mn_mac: p.mn_mac,
            mn_source: p.mn_source,
            reply_source: p.reply_source,
            mn_fa_spi: p.mn_fa_spi,
        };

        // FA-HA (RFC 5944 §3.7.3.1): required when the FA shares an SA with the reply's Home Agent (spec §3.3)
        // for the registrations it would have signed itself; missing or bad → 68 to the visitor.
        if req.lifetime != 0 && !co_located && !self.keys.for_agent(rr.home_agent).is_empty() {
            let ok = reply.auth_count(AuthKind::ForeignHome) == 1
                && reply.auth(AuthKind::ForeignHome).is_some_and(|e| match e.body {
                    ExtensionBody::Auth { spi, .. } => self
                        .keys
                        .agent(rr.home_agent, spi)
                        .is_some_and(|sa| sa.verify(reply.bytes, &e).is_ok()),
                    _ => false,
                });
            if !ok {
                return self.deny(now, &ctx, ReplyCode::FaHaAuthFailed, out);
            }
        }

        let accepted = rr.code.is_accepted();
        // RFC 2794 §3: an accepted reply must name the node and its home agent.
        if accepted {
            let missing = if p.nai.is_some() && reply.nai().is_none() {
                Some(ReplyCode::MissingNai)
            } else if rr.home_address.is_unspecified() {
                Some(ReplyCode::MissingHomeAddress)
            } else if rr.home_agent.is_unspecified() {
                Some(ReplyCode::MissingHomeAgent)
            } else {
                None
            };
            if let Some(code) = missing {
                return self.deny(now, &ctx, code, out);
            }
        }

        let mn_ha = reply.auth(AuthKind::MobileHome);
        let utrp = if p.utrq_added {
            udp_tunnel_reply(&reply, mn_ha.as_ref())
        } else {
            None
        };
        let nat_detected = utrp.is_some_and(|u| u.assents());

        // Update the visitor list before relaying, so the data plane is ready when the visitor starts sending.
        if accepted {
            if rr.lifetime == 0 || req.lifetime == 0 {
                let deregistered = self.visitors.get(&rr.home_address).is_some_and(|v| {
                    req.care_of_address == req.home_address || v.care_of_address == req.care_of_address
                });
                if deregistered && let Some(visitor) = self.visitors.remove(&rr.home_address) {
                    out.push(FaOutput::Visitor(VisitorChange {
                        kind: VisitorChangeKind::Removed,
                        visitor,
                    }));
                    self.rebuild_keepalives(now);
                }
            } else {
                let visitor = self.visitor_from(now, &p, &reply, utrp);
                let kind = if self.visitors.contains_key(&visitor.home_address) {
                    VisitorChangeKind::Refreshed
                } else {
                    VisitorChangeKind::Added
                };
                self.visitors.insert(visitor.home_address, visitor.clone());
                self.rebuild_keepalives(now);
                out.push(FaOutput::Visitor(VisitorChange { kind, visitor }));
            }
        }

        // Relay: bytes through MN-HA unchanged; drop the FA-only part; MN-FA if an SA exists (RFC 5944 §3.7.3.2).
        let cut = match (&mn_ha, reply.auth(AuthKind::ForeignHome)) {
            (Some(e), _) => e.offset + e.bytes.len(),
            (None, Some(fa_ha)) => fa_ha.offset,
            (None, None) => reply.bytes.len(),
        };
        let sa = self.mn_sa(req.home_address, p.nai.as_deref(), p.mn_fa_spi);
        let payload = match build_reply_relay(&reply, cut, &self.dialect, sa) {
            Ok(b) => b,
            Err(e) => return out.push(FaOutput::Drop(DropReason::Malformed(e.kind))),
        };
        out.push(FaOutput::SendToMobile {
            transmit: Transmit {
                src: SocketAddrV4::new(p.reply_source, REGISTRATION_PORT),
                dst: mobile_destination(p.mn_source, rr.home_address),
                ttl: None,
                payload,
            },
            link_dst: p.mn_mac,
        });
        out.push(FaOutput::Outcome(RegistrationOutcome {
            home_address: rr.home_address,
            care_of_address: req.care_of_address,
            home_agent: Some(rr.home_agent),
            code: rr.code,
            lifetime: rr.lifetime,
            nat_detected,
        }));
    }

    fn visitor_from(&self, now: Instant, p: &Pending, reply: &Reply<'_>, utrp: Option<UdpTunnelReply>) -> Visitor {
        let rr = &reply.repr;
        let req = &p.request;
        let co_located = req.flags.decapsulation_by_mn();
        // Never longer than requested (RFC 5944 §3.4), nor than the configured cap.
        let mut lifetime = rr.lifetime.min(req.lifetime);
        if let Some(cap) = self.config.visitor_max_lifetime {
            lifetime = lifetime.min(cap);
        }
        let expires_at = if lifetime == INFINITE_LIFETIME {
            NEVER
        } else {
            now + Duration::from_secs(u64::from(lifetime))
        };
        let tunnel = (!co_located).then(|| match utrp {
            Some(u) if u.assents() => VisitorTunnel {
                local: SocketAddrV4::new(req.care_of_address, REGISTRATION_PORT),
                remote: TunnelEndpoint {
                    addr: rr.home_agent,
                    port: REGISTRATION_PORT,
                    encapsulation: Encapsulation::UdpIpInIp,
                },
                keepalive_interval: if u.keepalive == 0 {
                    self.config.keepalive_default
                } else {
                    u.keepalive.max(MIN_KEEPALIVE_SECS)
                },
            },
            _ => VisitorTunnel {
                local: SocketAddrV4::new(req.care_of_address, 0),
                remote: TunnelEndpoint {
                    addr: rr.home_agent,
                    port: 0,
                    encapsulation: Encapsulation::IpInIp,
                },
                keepalive_interval: 0,
            },
        });
        Visitor {
            home_address: rr.home_address,
            nai: reply
                .nai()
                .or(p.nai.as_deref())
                .and_then(|n| core::str::from_utf8(n).ok())
                .map(Into::into),
            mn_mac: p.mn_mac,
            mn_source: p.mn_source,
            home_agent: rr.home_agent,
            care_of_address: req.care_of_address,
            co_located,
            tunnel,
            reverse_tunnel: req.flags.reverse_tunnel(),
            delivery: p.delivery,
            identification: req.identification,
            lifetime,
            registered_at: now,
            expires_at,
        }
    }
}

/// Whether `key` was let through less than `interval` ago; records `now` when it is let through.
fn limited<K: Ord + Copy>(table: &mut BTreeMap<K, Instant>, key: K, now: Instant, interval: Duration) -> bool {
    if table.get(&key).is_some_and(|t| now < *t + interval) {
        return true;
    }
    if table.len() >= RATE_TABLE_PRUNE_AT {
        table.retain(|_, t| now < *t + interval);
    }
    table.insert(key, now);
    false
}

/// Where replies to a visitor go: the IP source and UDP source port of its request; a request from 0.0.0.0 is
/// answered to the home address, or to the limited broadcast address (link-layer unicast either way).
fn mobile_destination(mn_source: SocketAddrV4, home_address: Ipv4Addr) -> SocketAddrV4 {
    let ip = if !mn_source.ip().is_unspecified() {
        *mn_source.ip()
    } else if !home_address.is_unspecified() {
        home_address
    } else {
        Ipv4Addr::BROADCAST
    };
    SocketAddrV4::new(ip, mn_source.port())
}

/// The UDP Tunnel Reply answering the FA's own request: preferably one after MN-HA (an FA-only extension).
fn udp_tunnel_reply(reply: &Reply<'_>, mn_ha: Option<&Extension<'_>>) -> Option<UdpTunnelReply> {
    let mn_ha_offset = mn_ha.map_or(0, |e| e.offset);
    let mut first = None;
    for e in reply.extensions() {
        if let ExtensionBody::UdpTunnelReply(u) = e.body {
            if e.offset > mn_ha_offset {
                return Some(u);
            }
            first = first.or(Some(u));
        }
    }
    first
}

/// The relayed request: the visitor's bytes through MN-HA, then the FA's UDP Tunnel Request and FA-HA.
fn build_relay(
    req: &Request<'_>,
    cut: usize,
    dialect: &Dialect,
    utrq: Option<UdpTunnelRequest>,
    fa_ha: Option<&SecurityAssociation>,
) -> crate::wire::Result<Vec<u8>> {
    let kept = req
        .bytes
        .get(REQUEST_HEADER_LEN..cut)
        .ok_or(Error::new(ErrorKind::Truncated, cut))?;
    let mut buf = vec![0u8; cut + UTRQ_LEN + AUTH_EXT_LEN];
    let mut w = MessageWriter::request(&mut buf, &req.repr, dialect)?;
    w.push_raw(kept)?;
    if let Some(u) = utrq {
        w.push(&ExtensionBody::UdpTunnelRequest(u))?;
    }
    if let Some(sa) = fa_ha {
        w.push_auth(AuthKind::ForeignHome, sa)?;
    }
    let n = w.len();
    buf.truncate(n);
    Ok(buf)
}

/// The relayed reply: the home agent's bytes through MN-HA, then MN-FA.
fn build_reply_relay(
    reply: &Reply<'_>,
    cut: usize,
    dialect: &Dialect,
    mn_fa: Option<&SecurityAssociation>,
) -> crate::wire::Result<Vec<u8>> {
    let kept = reply
        .bytes
        .get(REPLY_HEADER_LEN..cut)
        .ok_or(Error::new(ErrorKind::Truncated, cut))?;
    let mut buf = vec![0u8; cut + AUTH_EXT_LEN];
    let mut w = MessageWriter::reply(&mut buf, &reply.repr, dialect)?;
    w.push_raw(kept)?;
    if let Some(sa) = mn_fa {
        w.push_auth(AuthKind::MobileForeign, sa)?;
    }
    let n = w.len();
    buf.truncate(n);
    Ok(buf)
}

/// An FA-generated reply: the fixed part, the NAI when the request had one (RFC 2794 §2), then MN-FA.
fn build_denial(
    repr: &ReplyRepr,
    nai: Option<&[u8]>,
    dialect: &Dialect,
    mn_fa: Option<&SecurityAssociation>,
) -> crate::wire::Result<Vec<u8>> {
    let mut buf = vec![0u8; REPLY_HEADER_LEN + 2 + nai.map_or(0, <[u8]>::len) + AUTH_EXT_LEN];
    let mut w = MessageWriter::reply(&mut buf, repr, dialect)?;
    if let Some(n) = nai {
        w.push(&ExtensionBody::Nai(n))?;
    }
    if let Some(sa) = mn_fa {
        w.push_auth(AuthKind::MobileForeign, sa)?;
    }
    let n = w.len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Algorithm, Key, Spi};
    use crate::replay::ReplayStyle;
    use crate::roles::tunnel::{self, TunnelPolicy};
    use crate::time::NtpTimestamp;

    // Spec §10 addresses; the FA care-of address is the one of the advertisement vector (case 14).
    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const MIPP_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const VISITED: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
    const ROUTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const NAT_PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    const PRIVATE_COA: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
    const ID: u64 = 0xec4e5a00_12345678;
    const MN_PORT: u16 = 40000;

    fn sa(spi: u32, key: &[u8]) -> SecurityAssociation {
        SecurityAssociation::new(
            Spi::new(spi).unwrap(),
            Algorithm::HmacMd5,
            Key::new(key),
            ReplayStyle::default(),
        )
    }
    /// MN-HA SA of spec §10 (key 00..0f, SPI 0x100); the FA never holds it.
    fn mn_ha() -> SecurityAssociation {
        sa(0x100, &(0u8..16).collect::<Vec<_>>())
    }
    fn mn_fa() -> SecurityAssociation {
        sa(0x200, &[0x11; 16])
    }
    fn fa_ha() -> SecurityAssociation {
        sa(0x300, &[0x22; 16])
    }
    fn keys(mn_fa_sa: bool, fa_ha_sa: bool) -> KeyStore {
        let mut k = KeyStore::new();
        if mn_fa_sa {
            k.insert_peer(HOA, mn_fa()).unwrap();
        }
        if fa_ha_sa {
            k.insert_agent(MIPP_PUB, fa_ha()).unwrap();
        }
        k
    }
    fn config() -> FaConfig {
        FaConfig::new(VISITED, ROUTED, vec![COA])
    }
    fn at(ms: u64) -> Now {
        Now::new(Instant::from_millis(ms), NtpTimestamp::default())
    }

    /// A visitor's request: fixed part, `before` (for the HA), MN-HA, `after` (FA-only), optional MN-FA.
    struct Rrq<'a> {
        flags: u8,
        lifetime: u16,
        home_address: Ipv4Addr,
        care_of_address: Ipv4Addr,
        home_agent: Ipv4Addr,
        id: u64,
        before: Vec<ExtensionBody<'a>>,
        after: Vec<ExtensionBody<'a>>,
        mn_fa: bool,
    }

    impl Default for Rrq<'_> {
        fn default() -> Self {
            Rrq {
                flags: RequestFlags::T,
                lifetime: 600,
                home_address: HOA,
                care_of_address: COA,
                home_agent: MIPP_PUB,
                id: ID,
                before: vec![],
                after: vec![],
                mn_fa: false,
            }
        }
    }

    impl Rrq<'_> {
        fn repr(&self) -> RequestRepr {
            RequestRepr {
                flags: RequestFlags(self.flags),
                lifetime: self.lifetime,
                home_address: self.home_address,
                home_agent: self.home_agent,
                care_of_address: self.care_of_address,
                identification: self.id,
            }
        }
        /// The bytes, and the offset just past MN-HA.
        fn build(&self) -> (Vec<u8>, usize) {
            let mut buf = vec![0u8; 1024];
            let d = Dialect::default();
            let mut w = MessageWriter::request(&mut buf, &self.repr(), &d).unwrap();
            for e in &self.before {
                w.push(e).unwrap();
            }
            w.push_auth(AuthKind::MobileHome, &mn_ha()).unwrap();
            let cut = w.len();
            for e in &self.after {
                w.push(e).unwrap();
            }
            if self.mn_fa {
                w.push_auth(AuthKind::MobileForeign, &mn_fa()).unwrap();
            }
            let n = w.len();
            buf.truncate(n);
            (buf, cut)
        }
    }

    /// A home agent's reply: fixed part, `before`, MN-HA, `after`, optional FA-HA.
    fn rrp(
        code: ReplyCode,
        lifetime: u16,
        id: u64,
        before: &[ExtensionBody<'_>],
        after: &[ExtensionBody<'_>],
        fa_ha_sa: Option<&SecurityAssociation>,
    ) -> (Vec<u8>, usize) {
        let repr = ReplyRepr {
            code,
            lifetime,
            home_address: HOA,
            home_agent: MIPP_PUB,
            identification: id,
        };
        let mut buf = vec![0u8; 1024];
        let d = Dialect::default();
        let mut w = MessageWriter::reply(&mut buf, &repr, &d).unwrap();
        for e in before {
            w.push(e).unwrap();
        }
        w.push_auth(AuthKind::MobileHome, &mn_ha()).unwrap();
        let cut = w.len();
        for e in after {
            w.push(e).unwrap();
        }
        if let Some(sa) = fa_ha_sa {
            w.push_auth(AuthKind::ForeignHome, sa).unwrap();
        }
        let n = w.len();
        buf.truncate(n);
        (buf, cut)
    }

    fn from_mobile_with(payload: &[u8], ttl: u8, mac: [u8; 6]) -> FaInput<'_> {
        FaInput::FromMobile {
            dg: Datagram {
                src: SocketAddrV4::new(HOA, MN_PORT),
                dst: SocketAddrV4::new(VISITED, REGISTRATION_PORT),
                ttl,
                payload,
            },
            link_src: mac,
        }
    }
    fn from_mobile(payload: &[u8]) -> FaInput<'_> {
        from_mobile_with(payload, 255, MAC)
    }
    fn from_network(payload: &[u8]) -> FaInput<'_> {
        FaInput::FromNetwork(Datagram {
            src: SocketAddrV4::new(MIPP_PUB, REGISTRATION_PORT),
            dst: SocketAddrV4::new(ROUTED, REGISTRATION_PORT),
            ttl: 60,
            payload,
        })
    }

    fn run(fa: &mut ForeignAgent, now: Now, input: FaInput<'_>) -> Vec<FaOutput> {
        let mut out = Vec::new();
        fa.handle(now, input, &mut out);
        out
    }
    fn sends(out: &[FaOutput]) -> Vec<&Transmit> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::Send(t) => Some(t),
                _ => None,
            })
            .collect()
    }
    fn to_mobile(out: &[FaOutput]) -> Vec<(&Transmit, [u8; 6])> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::SendToMobile { transmit, link_dst } => Some((transmit, *link_dst)),
                _ => None,
            })
            .collect()
    }
    fn adverts(out: &[FaOutput]) -> Vec<(AgentAdvertisementRepr<'_>, Ipv4Addr)> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::Advertise { icmp, dst } => Some((AgentAdvertisementRepr::parse(icmp).unwrap(), *dst)),
                _ => None,
            })
            .collect()
    }
    fn visitor_changes(out: &[FaOutput]) -> Vec<&VisitorChange> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::Visitor(c) => Some(c),
                _ => None,
            })
            .collect()
    }
    fn drops(out: &[FaOutput]) -> Vec<DropReason> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::Drop(d) => Some(*d),
                _ => None,
            })
            .collect()
    }
    fn outcome_codes(out: &[FaOutput]) -> Vec<ReplyCode> {
        out.iter()
            .filter_map(|o| match o {
                FaOutput::Outcome(o) => Some(o.code),
                _ => None,
            })
            .collect()
    }

    /// The single denial the FA sent: the parsed reply, after checking addressing.
    fn denial(out: &[FaOutput]) -> ReplyRepr {
        let m = to_mobile(out);
        assert_eq!(m.len(), 1, "{out:?}");
        let (t, mac) = m[0];
        assert_eq!(mac, MAC);
        assert_eq!(t.src, SocketAddrV4::new(VISITED, REGISTRATION_PORT));
        assert_eq!(t.dst, SocketAddrV4::new(HOA, MN_PORT));
        assert!(sends(out).is_empty(), "a denied request is not relayed");
        Reply::parse(&t.payload, &Dialect::default()).unwrap().repr
    }

    /// Sends `rrq` to a fresh FA and returns the code it is denied with.
    fn denied_with(cfg: FaConfig, rrq: &Rrq<'_>, ttl: u8) -> ReplyCode {
        let mut fa = ForeignAgent::new(cfg, keys(false, false), 1);
        let (bytes, _) = rrq.build();
        let out = run(&mut fa, at(0), from_mobile_with(&bytes, ttl, MAC));
        let r = denial(&out);
        assert_eq!(r.identification, rrq.id);
        assert_eq!(r.home_address, rrq.home_address);
        assert_eq!(r.home_agent, rrq.home_agent);
        assert_eq!(outcome_codes(&out), vec![r.code]);
        assert_eq!(fa.pending_count(), 0);
        r.code
    }

    /// Registers the default request through `fa` and accepts it with `lifetime`; returns the outputs of the reply.
    fn register(fa: &mut ForeignAgent, now: u64, id: u64, lifetime: u16) -> Vec<FaOutput> {
        let rrq = Rrq { id, ..Rrq::default() };
        let (bytes, _) = rrq.build();
        let out = run(fa, at(now), from_mobile(&bytes));
        assert_eq!(sends(&out).len(), 1, "{out:?}");
        let (reply, _) = rrp(ReplyCode::Accepted, lifetime, id, &[], &[], None);
        run(fa, at(now + 50), from_network(&reply))
    }

    // --- advertisements ---

    #[test]
    fn advertisement_sequence_starts_at_zero_and_rolls_over_to_256() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        assert_eq!(fa.next_timer(), Some(Instant::ZERO), "advertise at once after boot");
        let out = run(&mut fa, at(0), FaInput::Tick);
        let a = adverts(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1, ALL_SYSTEMS);
        assert_eq!(a[0].0.mobility.unwrap().sequence, 0);
        assert_eq!(fa.next_timer(), Some(Instant::from_millis(1000)));
        // Not yet due.
        assert!(adverts(&run(&mut fa, at(500), FaInput::Tick)).is_empty());
        let out = run(&mut fa, at(1000), FaInput::Tick);
        assert_eq!(adverts(&out)[0].0.mobility.unwrap().sequence, 1);

        fa.sequence = 0xfffe;
        let mut seen = Vec::new();
        for i in 0..3 {
            let out = run(&mut fa, at(2000 + i * 1000), FaInput::Tick);
            seen.push(adverts(&out)[0].0.mobility.unwrap().sequence);
        }
        assert_eq!(seen, vec![0xfffe, 0xffff, 256]);
    }

    #[test]
    fn case_14_advertisement_extension_matches_vector() {
        // F, T, U, sequence 7, registration lifetime 1800, CoA 192.0.2.1 → `10 0a 00 07 07 08 11 80 c0 00 02 01`.
        let mut cfg = config();
        cfg.behind_nat = true;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        fa.sequence = 7;
        let out = run(&mut fa, at(0), FaInput::Tick);
        let FaOutput::Advertise { icmp, .. } = &out[0] else {
            panic!("{out:?}")
        };
        // ICMP header (8) + one router entry (8), then the extension.
        assert_eq!(hex::encode(&icmp[16..28]), "100a000707081180c0000201");
        assert_eq!(icmp.len(), 28, "no Prefix-Lengths extension unless configured");
    }

    #[test]
    fn case_15_advertisement_flags_follow_the_sender_rules() {
        let flags_of = |cfg: FaConfig| {
            let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
            let out = run(&mut fa, at(0), FaInput::Tick);
            let (adv, _) = adverts(&out).pop().unwrap();
            let m = adv.mobility.unwrap();
            assert!(m.flags.sender_rules_hold());
            // Only flags this FA knows about; no H, M, G, r, X, I, nor unassigned bits.
            let known = MobilityAgentFlags::R
                | MobilityAgentFlags::B
                | MobilityAgentFlags::F
                | MobilityAgentFlags::T
                | MobilityAgentFlags::U;
            assert_eq!(m.flags.0 & !known, 0);
            m.flags.0
        };
        use MobilityAgentFlags as F;
        assert_eq!(flags_of(config()), F::F | F::T);
        let mut cfg = config();
        cfg.reverse_tunnel.supported = false;
        assert_eq!(flags_of(cfg), F::F);
        let mut cfg = config();
        cfg.require_registration = true;
        cfg.behind_nat = true;
        assert_eq!(flags_of(cfg), F::F | F::R | F::T | F::U);
    }

    #[test]
    fn advertisement_contents() {
        let mut cfg = config();
        cfg.care_of_addresses = vec![COA, Ipv4Addr::new(192, 0, 2, 2)];
        cfg.advertisement.prefix_lengths = true;
        cfg.advertisement.routes_common_traffic = false;
        cfg.advertisement.registration_lifetime = 900;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let out = run(&mut fa, at(0), FaInput::Tick);
        let (adv, _) = adverts(&out).pop().unwrap();
        assert_eq!(adv.code, CODE_NOT_A_ROUTER);
        assert_eq!(adv.lifetime, 3);
        assert_eq!(adv.router_entries().collect::<Vec<_>>(), vec![(VISITED, 0)]);
        assert_eq!(adv.prefix_lengths, Some(&[24u8][..]));
        let m = adv.mobility.unwrap();
        assert_eq!(m.registration_lifetime, 900);
        assert_eq!(
            m.care_of_addresses.iter().collect::<Vec<_>>(),
            vec![COA, Ipv4Addr::new(192, 0, 2, 2)]
        );
    }

    #[test]
    fn advertisement_jitter_stays_between_three_quarters_and_the_interval() {
        let mut cfg = config();
        cfg.advertisement.jitter = true;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 42);
        let mut now = 0;
        for _ in 0..50 {
            run(&mut fa, at(now), FaInput::Tick);
            let next = fa.next_timer().unwrap().millis();
            assert!((now + 750..=now + 1000).contains(&next), "{now} → {next}");
            now = next;
        }
    }

    #[test]
    fn solicitation_answered_by_unicast_and_rate_limited() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        run(&mut fa, at(0), FaInput::Tick); // sequence 0
        let out = run(&mut fa, at(100), FaInput::Solicitation { src: HOA });
        let a = adverts(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1, HOA, "unicast to the solicitor");
        assert_eq!(
            a[0].0.mobility.unwrap().sequence,
            1,
            "solicited advertisements count too"
        );
        let out = run(&mut fa, at(200), FaInput::Solicitation { src: HOA });
        assert_eq!(drops(&out), vec![DropReason::RateLimited]);
        // Another solicitor is not limited by the first.
        let other = Ipv4Addr::new(10, 10, 1, 51);
        assert_eq!(
            adverts(&run(&mut fa, at(300), FaInput::Solicitation { src: other }))[0].1,
            other
        );
        // A second later, answered again; a node without an address gets the multicast answer.
        assert_eq!(
            adverts(&run(&mut fa, at(1100), FaInput::Solicitation { src: HOA })).len(),
            1
        );
        let out = run(
            &mut fa,
            at(1200),
            FaInput::Solicitation {
                src: Ipv4Addr::UNSPECIFIED,
            },
        );
        assert_eq!(adverts(&out)[0].1, ALL_SYSTEMS);
    }

    // --- relaying requests ---

    #[test]
    fn case_19_relay_keeps_bytes_through_mn_ha_and_strips_what_follows() {
        let mut fa = ForeignAgent::new(config(), keys(false, false), 1);
        let nai = b"joe@example.com";
        let skippable = [1u8, 2, 3];
        let rrq = Rrq {
            before: vec![
                ExtensionBody::Nai(nai),
                ExtensionBody::Skippable {
                    ty: 200,
                    data: &skippable,
                },
            ],
            after: vec![ExtensionBody::Skippable {
                ty: 201,
                data: &skippable,
            }],
            mn_fa: true, // the FA holds no MN-FA SA: ignored and stripped
            ..Rrq::default()
        };
        let (bytes, cut) = rrq.build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let s = sends(&out);
        assert_eq!(s.len(), 1, "{out:?}");
        assert_eq!(s[0].src, SocketAddrV4::new(ROUTED, REGISTRATION_PORT));
        assert_eq!(s[0].dst, SocketAddrV4::new(MIPP_PUB, REGISTRATION_PORT));
        assert_eq!(s[0].payload, bytes[..cut], "unchanged through MN-HA, nothing after it");
        // The HA (proxy) still verifies MN-HA.
        let relayed = Request::parse(&s[0].payload, &Dialect::default()).unwrap();
        let ext = relayed.auth(AuthKind::MobileHome).unwrap();
        assert!(mn_ha().verify(&s[0].payload, &ext).is_ok());
        assert_eq!(fa.pending_count(), 1);
        assert!(to_mobile(&out).is_empty());
    }

    #[test]
    fn fa_ha_appended_to_relay_when_an_sa_with_the_home_agent_exists() {
        let mut fa = ForeignAgent::new(config(), keys(false, true), 1);
        let (bytes, cut) = Rrq::default().build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let p = &sends(&out)[0].payload;
        assert_eq!(p[..cut], bytes[..cut]);
        assert_eq!(p.len(), cut + 22);
        let relayed = Request::parse(p, &Dialect::default()).unwrap();
        let e = relayed.auth(AuthKind::ForeignHome).unwrap();
        assert_eq!(e.offset, cut);
        assert!(fa_ha().verify(p, &e).is_ok());

        // Never on a deregistration (RFC 5944 §3.5.4).
        let (dereg, cut) = Rrq {
            lifetime: 0,
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(10), from_mobile(&dereg));
        assert_eq!(sends(&out)[0].payload, dereg[..cut]);
    }

    #[test]
    fn set_keys_applies_to_later_requests_and_keeps_state() {
        let mut fa = ForeignAgent::new(config(), keys(false, false), 1);
        let (bytes, cut) = Rrq::default().build();
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&bytes)))[0].payload.len(), cut);
        fa.set_keys(keys(false, true));
        assert_eq!(fa.pending_count(), 1);
        let (bytes, cut) = Rrq {
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        assert_eq!(
            sends(&run(&mut fa, at(10), from_mobile(&bytes)))[0].payload.len(),
            cut + 22
        );
    }

    #[test]
    fn mn_fa_authentication_of_requests() {
        let mut fa = ForeignAgent::new(config(), keys(true, false), 1);
        // Missing MN-FA while an SA exists: silently discarded (RFC 5944 §3.7.2.1).
        let (bytes, _) = Rrq::default().build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        assert_eq!(out, vec![FaOutput::Drop(DropReason::BadAuthenticator)]);
        // Bad authenticator: silently discarded.
        let (mut bytes, _) = Rrq {
            mn_fa: true,
            ..Rrq::default()
        }
        .build();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        assert_eq!(out, vec![FaOutput::Drop(DropReason::BadAuthenticator)]);
        // Valid: relayed without the MN-FA extension.
        bytes[last] ^= 1;
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let relayed = Request::parse(&sends(&out)[0].payload, &Dialect::default()).unwrap();
        assert_eq!(relayed.auth_count(AuthKind::MobileForeign), 0);
    }

    #[test]
    fn mn_fa_authentication_of_replies_and_fa_ha_verification() {
        let mut fa = ForeignAgent::new(config(), keys(true, true), 1);
        let (bytes, _) = Rrq {
            mn_fa: true,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let (reply, cut) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], Some(&fa_ha()));
        let out = run(&mut fa, at(100), from_network(&reply));
        let m = to_mobile(&out);
        assert_eq!(m.len(), 1, "{out:?}");
        let (t, mac) = m[0];
        assert_eq!(mac, MAC);
        assert_eq!(t.src, SocketAddrV4::new(VISITED, REGISTRATION_PORT));
        assert_eq!(t.dst, SocketAddrV4::new(HOA, MN_PORT));
        // Through MN-HA unchanged, FA-HA stripped, MN-FA appended and valid.
        assert_eq!(t.payload[..cut], reply[..cut]);
        assert_eq!(t.payload.len(), cut + 22);
        let relayed = Reply::parse(&t.payload, &Dialect::default()).unwrap();
        assert_eq!(relayed.auth_count(AuthKind::ForeignHome), 0);
        let e = relayed.auth(AuthKind::MobileForeign).unwrap();
        assert_eq!(e.offset, cut);
        assert!(mn_fa().verify(&t.payload, &e).is_ok());
        assert!(
            mn_ha()
                .verify(&t.payload, &relayed.auth(AuthKind::MobileHome).unwrap())
                .is_ok()
        );
        assert_eq!(outcome_codes(&out), vec![ReplyCode::Accepted]);
        // The visitor entry is installed before the reply goes out.
        let vi = out.iter().position(|o| matches!(o, FaOutput::Visitor(_))).unwrap();
        let si = out
            .iter()
            .position(|o| matches!(o, FaOutput::SendToMobile { .. }))
            .unwrap();
        assert!(vi < si);
    }

    #[test]
    fn bad_or_missing_fa_ha_in_reply_gives_68() {
        for fa_ha_sa in [None, Some(sa(0x300, &[0x33; 16]))] {
            let mut fa = ForeignAgent::new(config(), keys(true, true), 1);
            let (bytes, _) = Rrq {
                mn_fa: true,
                ..Rrq::default()
            }
            .build();
            run(&mut fa, at(0), from_mobile(&bytes));
            let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], fa_ha_sa.as_ref());
            let out = run(&mut fa, at(100), from_network(&reply));
            let (t, _) = to_mobile(&out)[0];
            let r = Reply::parse(&t.payload, &Dialect::default()).unwrap();
            assert_eq!(r.repr.code, ReplyCode::FaHaAuthFailed);
            assert_eq!(r.auth_count(AuthKind::MobileHome), 0, "the FA cannot compute MN-HA");
            assert!(
                mn_fa()
                    .verify(&t.payload, &r.auth(AuthKind::MobileForeign).unwrap())
                    .is_ok()
            );
            assert!(visitor_changes(&out).is_empty());
            assert_eq!(fa.visitors().count(), 0);
            assert_eq!(fa.pending_count(), 0);
        }
    }

    #[test]
    fn case_43_reply_matching_no_pending_request_is_dropped() {
        let mut fa = ForeignAgent::new(config(), keys(false, false), 1);
        let (bytes, _) = Rrq::default().build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID ^ 1, &[], &[], None);
        assert_eq!(
            run(&mut fa, at(10), from_network(&reply)),
            vec![FaOutput::Drop(DropReason::NoPendingRequest)]
        );
        // The right Identification from another source is not the home agent's reply either.
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        let spoofed = FaInput::FromNetwork(Datagram {
            src: SocketAddrV4::new(NAT_PUB, REGISTRATION_PORT),
            dst: SocketAddrV4::new(ROUTED, REGISTRATION_PORT),
            ttl: 60,
            payload: &reply,
        });
        assert_eq!(
            run(&mut fa, at(10), spoofed),
            vec![FaOutput::Drop(DropReason::UnknownHomeAgent)]
        );
        assert_eq!(fa.pending_count(), 1);
        // Only the high 32 bits differ (timestamp resync): still matched.
        let (reply, _) = rrp(ReplyCode::IdentificationMismatch, 600, ID ^ (1 << 40), &[], &[], None);
        let out = run(&mut fa, at(20), from_network(&reply));
        assert_eq!(outcome_codes(&out), vec![ReplyCode::IdentificationMismatch]);
        assert!(visitor_changes(&out).is_empty(), "a denial creates no visitor");
    }

    #[test]
    fn case_03_and_case_06_malformed_requests_are_dropped_silently() {
        let mut fa = ForeignAgent::new(config(), keys(false, false), 1);
        let (bytes, _) = Rrq::default().build();
        let out = run(&mut fa, at(0), from_mobile(&bytes[..23]));
        assert_eq!(out, vec![FaOutput::Drop(DropReason::Malformed(ErrorKind::Truncated))]);
        // Unknown non-skippable extension (type 100) before MN-HA.
        let mut bad = bytes[..24].to_vec();
        bad.extend_from_slice(&[100, 2, 0, 0]);
        bad.extend_from_slice(&bytes[24..]);
        let out = run(&mut fa, at(0), from_mobile(&bad));
        assert_eq!(
            out,
            vec![FaOutput::Drop(DropReason::Malformed(ErrorKind::UnknownNonSkippable(
                100
            )))]
        );
        // No MN-HA at all.
        let out = run(&mut fa, at(0), from_mobile(&bytes[..24]));
        assert_eq!(out, vec![FaOutput::Drop(DropReason::NoAuthExtension)]);
        // A reply on the visited side, a request on the routed side.
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        assert_eq!(
            run(&mut fa, at(0), from_mobile(&reply)),
            vec![FaOutput::Drop(DropReason::UnexpectedMessage)]
        );
        assert_eq!(
            run(&mut fa, at(0), from_network(&bytes)),
            vec![FaOutput::Drop(DropReason::UnexpectedMessage)]
        );
        assert_eq!(fa.pending_count(), 0);
    }

    // --- denials ---

    #[test]
    fn denial_65_home_agent_not_allowed() {
        let mut cfg = config();
        cfg.allowed_home_agents = vec!["198.51.100.0/24".parse().unwrap()];
        let rrq = Rrq {
            home_agent: Ipv4Addr::new(10, 10, 1, 1),
            ..Rrq::default()
        };
        assert_eq!(denied_with(cfg.clone(), &rrq, 255), ReplyCode::FaProhibited);
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (bytes, _) = Rrq::default().build();
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&bytes))).len(), 1);
    }

    #[test]
    fn denial_194_invalid_home_agent_field() {
        for ha in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, COA] {
            let rrq = Rrq {
                home_agent: ha,
                ..Rrq::default()
            };
            assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::InvalidHomeAgent);
        }
    }

    #[test]
    fn denial_66_pending_full_and_busy_flag() {
        let mut cfg = config();
        cfg.max_pending = 1;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (first, _) = Rrq::default().build();
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&first))).len(), 1);
        assert!(fa.is_busy());
        let out = run(&mut fa, at(10), FaInput::Tick);
        assert!(adverts(&out)[0].0.mobility.unwrap().flags.has(MobilityAgentFlags::B));
        // A retransmission of the pending request (same Identification) is relayed again.
        assert_eq!(sends(&run(&mut fa, at(20), from_mobile(&first))).len(), 1);
        let (second, _) = Rrq {
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(30), from_mobile_with(&second, 255, MAC));
        assert_eq!(denial(&out).code, ReplyCode::FaInsufficientResources);
        // The reply frees the slot; B is gone.
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        run(&mut fa, at(40), from_network(&reply));
        assert!(!fa.is_busy());
        let out = run(&mut fa, at(1010), FaInput::Tick);
        assert!(!adverts(&out)[0].0.mobility.unwrap().flags.has(MobilityAgentFlags::B));
    }

    #[test]
    fn denial_69_lifetime_too_long_carries_the_maximum() {
        let mut cfg = config();
        cfg.advertisement.registration_lifetime = 300;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (bytes, _) = Rrq {
            lifetime: 301,
            ..Rrq::default()
        }
        .build();
        let r = denial(&run(&mut fa, at(0), from_mobile(&bytes)));
        assert_eq!(r.code, ReplyCode::FaLifetimeTooLong);
        assert_eq!(r.lifetime, 300);
        let (infinite, _) = Rrq {
            lifetime: 0xffff,
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        let r = denial(&run(&mut fa, at(2000), from_mobile(&infinite)));
        assert_eq!(r.code, ReplyCode::FaLifetimeTooLong);
    }

    #[test]
    fn denial_70_poorly_formed() {
        let nai = b"x";
        // Encapsulating Delivery Style without T.
        let mut cfg = config();
        cfg.delivery_styles.encapsulating = true;
        let rrq = Rrq {
            flags: 0,
            after: vec![ExtensionBody::EncapsulatingDeliveryStyle],
            ..Rrq::default()
        };
        assert_eq!(denied_with(cfg.clone(), &rrq, 255), ReplyCode::FaPoorlyFormedRequest);
        // ... or before MN-HA (it is for the FA only).
        let rrq = Rrq {
            before: vec![ExtensionBody::EncapsulatingDeliveryStyle, ExtensionBody::Nai(nai)],
            ..Rrq::default()
        };
        assert_eq!(denied_with(cfg, &rrq, 255), ReplyCode::FaPoorlyFormedRequest);
        // A co-located registration through an FA that advertises neither R nor U.
        let rrq = Rrq {
            flags: RequestFlags::D | RequestFlags::T,
            care_of_address: Ipv4Addr::new(192, 0, 2, 77),
            ..Rrq::default()
        };
        assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::FaPoorlyFormedRequest);
        let mut cfg = config();
        cfg.require_registration = true;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&rrq.build().0))).len(), 1);
        // Reserved bits: ignored by default, 70 in strict mode.
        let rrq = Rrq {
            flags: RequestFlags::T | RequestFlags::X_RESERVED,
            ..Rrq::default()
        };
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&rrq.build().0))).len(), 1);
        let mut cfg = config();
        cfg.strict_reserved_bits = true;
        assert_eq!(denied_with(cfg, &rrq, 255), ReplyCode::FaPoorlyFormedRequest);
    }

    #[test]
    fn denial_72_encapsulation_unavailable() {
        for flag in [RequestFlags::M, RequestFlags::G] {
            let rrq = Rrq {
                flags: RequestFlags::T | flag,
                ..Rrq::default()
            };
            assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::FaEncapUnavailable);
        }
    }

    #[test]
    fn denial_74_and_75_reverse_tunnel_policy() {
        let mut cfg = config();
        cfg.reverse_tunnel.supported = false;
        assert_eq!(
            denied_with(cfg, &Rrq::default(), 255),
            ReplyCode::FaReverseTunnelUnavailable
        );
        let mut cfg = config();
        cfg.reverse_tunnel.mandatory = true;
        let rrq = Rrq {
            flags: 0,
            ..Rrq::default()
        };
        assert_eq!(denied_with(cfg, &rrq, 255), ReplyCode::FaReverseTunnelMandatory);
        // A deregistration requests no service: relayed whatever its T bit.
        let mut cfg = config();
        cfg.reverse_tunnel.mandatory = true;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (dereg, _) = Rrq {
            flags: 0,
            lifetime: 0,
            ..Rrq::default()
        }
        .build();
        assert_eq!(sends(&run(&mut fa, at(0), from_mobile(&dereg))).len(), 1);
    }

    #[test]
    fn denial_76_too_distant_is_rate_limited_globally() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        let (bytes, _) = Rrq::default().build();
        let out = run(&mut fa, at(0), from_mobile_with(&bytes, 64, MAC));
        assert_eq!(denial(&out).code, ReplyCode::FaMnTooDistant);
        // Another visitor within the second: suppressed.
        let out = run(&mut fa, at(500), from_mobile_with(&bytes, 64, OTHER_MAC));
        assert_eq!(out, vec![FaOutput::Drop(DropReason::RateLimited)]);
        let out = run(&mut fa, at(1000), from_mobile_with(&bytes, 64, OTHER_MAC));
        assert_eq!(outcome_codes(&out), vec![ReplyCode::FaMnTooDistant]);
        // Without T the TTL does not matter.
        let (plain, _) = Rrq {
            flags: 0,
            ..Rrq::default()
        }
        .build();
        assert_eq!(
            sends(&run(&mut fa, at(3000), from_mobile_with(&plain, 1, MAC))).len(),
            1
        );
    }

    #[test]
    fn denial_77_care_of_address_not_offered() {
        let rrq = Rrq {
            care_of_address: Ipv4Addr::new(192, 0, 2, 77),
            ..Rrq::default()
        };
        assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::FaInvalidCoa);
    }

    #[test]
    fn deregistration_of_all_bindings_is_relayed_not_denied_77() {
        // Simulation finding: a visitor deregistering all its bindings names its home address as the care-of
        // address (RFC 5944 §3.6.1.2, what the reference MN sends); it used to be denied with 77, so the node could
        // never deregister through the FA.
        let mut fa = ForeignAgent::new(config(), keys(false, false), 1);
        register(&mut fa, 0, ID, 600);
        assert_eq!(fa.visitors().count(), 1);
        let (dereg, cut) = Rrq {
            flags: 0,
            lifetime: 0,
            care_of_address: HOA,
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(1_000), from_mobile(&dereg));
        assert_eq!(sends(&out).len(), 1, "{out:?}");
        assert_eq!(sends(&out)[0].payload, dereg[..cut]);
        let (reply, _) = rrp(ReplyCode::Accepted, 0, ID + 1, &[], &[], None);
        let out = run(&mut fa, at(1_050), from_network(&reply));
        assert_eq!(visitor_changes(&out)[0].kind, VisitorChangeKind::Removed);
        assert_eq!(fa.visitors().count(), 0);
        assert_eq!(to_mobile(&out).len(), 1);
        // Deregistering one care-of address the FA does not offer is still 77.
        let rrq = Rrq {
            lifetime: 0,
            care_of_address: Ipv4Addr::new(192, 0, 2, 77),
            ..Rrq::default()
        };
        assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::FaInvalidCoa);
    }

    #[test]
    fn denial_79_and_encapsulating_delivery_when_supported() {
        let rrq = Rrq {
            after: vec![ExtensionBody::EncapsulatingDeliveryStyle],
            mn_fa: true,
            ..Rrq::default()
        };
        assert_eq!(denied_with(config(), &rrq, 255), ReplyCode::FaDeliveryStyleUnsupported);
        let mut cfg = config();
        cfg.delivery_styles.encapsulating = true;
        let mut fa = ForeignAgent::new(cfg, keys(true, false), 1);
        let (bytes, cut) = rrq.build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        assert_eq!(
            sends(&out)[0].payload,
            bytes[..cut],
            "130 and MN-FA are consumed by the FA"
        );
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        let out = run(&mut fa, at(10), from_network(&reply));
        assert_eq!(visitor_changes(&out)[0].visitor.delivery, DeliveryStyle::Encapsulating);
    }

    #[test]
    fn denial_97_zero_home_address_without_nai() {
        let rrq = Rrq {
            home_address: Ipv4Addr::UNSPECIFIED,
            ..Rrq::default()
        };
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        let (bytes, _) = rrq.build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let (t, mac) = to_mobile(&out)[0];
        assert_eq!(mac, MAC);
        assert_eq!(
            Reply::parse(&t.payload, &Dialect::default()).unwrap().repr.code,
            ReplyCode::MissingNai
        );
    }

    #[test]
    fn denial_carries_mn_fa_when_an_sa_exists() {
        let mut cfg = config();
        cfg.advertisement.registration_lifetime = 300;
        let mut fa = ForeignAgent::new(cfg, keys(true, false), 1);
        let (bytes, _) = Rrq {
            mn_fa: true,
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let (t, _) = to_mobile(&out)[0];
        let r = Reply::parse(&t.payload, &Dialect::default()).unwrap();
        assert_eq!(r.repr.code, ReplyCode::FaLifetimeTooLong);
        assert!(
            mn_fa()
                .verify(&t.payload, &r.auth(AuthKind::MobileForeign).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn denials_are_rate_limited_per_visitor() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        let (bytes, _) = Rrq {
            care_of_address: Ipv4Addr::new(192, 0, 2, 77),
            ..Rrq::default()
        }
        .build();
        assert_eq!(
            denial(&run(&mut fa, at(0), from_mobile(&bytes))).code,
            ReplyCode::FaInvalidCoa
        );
        assert_eq!(
            run(&mut fa, at(999), from_mobile(&bytes)),
            vec![FaOutput::Drop(DropReason::RateLimited)]
        );
        let other = run(&mut fa, at(999), from_mobile_with(&bytes, 255, OTHER_MAC));
        assert_eq!(outcome_codes(&other), vec![ReplyCode::FaInvalidCoa]);
        assert_eq!(
            outcome_codes(&run(&mut fa, at(1000), from_mobile(&bytes))),
            vec![ReplyCode::FaInvalidCoa]
        );
    }

    // --- pending list ---

    #[test]
    fn pending_timeout_replies_78() {
        let mut fa = ForeignAgent::new(config(), keys(true, false), 1);
        run(&mut fa, at(0), FaInput::Tick);
        let (bytes, _) = Rrq {
            mn_fa: true,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(100), from_mobile(&bytes));
        assert_eq!(fa.next_timer(), Some(Instant::from_millis(1000)));
        run(&mut fa, at(1000), FaInput::Tick);
        // Advertisements every second; the pending entry times out at 7.1 s.
        for s in 2..=7 {
            assert!(to_mobile(&run(&mut fa, at(s * 1000), FaInput::Tick)).is_empty());
        }
        assert_eq!(fa.next_timer(), Some(Instant::from_millis(7100)));
        let out = run(&mut fa, at(7100), FaInput::Tick);
        let (t, mac) = to_mobile(&out)[0];
        assert_eq!(mac, MAC);
        let r = Reply::parse(&t.payload, &Dialect::default()).unwrap();
        assert_eq!(r.repr.code, ReplyCode::FaRegistrationTimeout);
        assert_eq!(r.repr.identification, ID);
        assert!(
            mn_fa()
                .verify(&t.payload, &r.auth(AuthKind::MobileForeign).unwrap())
                .is_ok()
        );
        assert_eq!(fa.pending_count(), 0);
        // The late reply matches nothing.
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        assert_eq!(
            run(&mut fa, at(7200), from_network(&reply)),
            vec![FaOutput::Drop(DropReason::NoPendingRequest)]
        );
    }

    #[test]
    fn pending_timeout_can_be_silent() {
        let mut cfg = config();
        cfg.pending_timeout_reply = false;
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (bytes, _) = Rrq::default().build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let out = run(&mut fa, at(7000), FaInput::Tick);
        assert!(to_mobile(&out).is_empty());
        assert_eq!(drops(&out), vec![DropReason::PendingTimeout]);
        assert_eq!(fa.pending_count(), 0);
    }

    // --- visitors ---

    #[test]
    fn visitor_added_refreshed_removed_and_expired() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        run(&mut fa, at(0), FaInput::Tick);
        let out = register(&mut fa, 0, ID, 600);
        let c = visitor_changes(&out);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, VisitorChangeKind::Added);
        let v = &c[0].visitor;
        assert_eq!(v.home_address, HOA);
        assert_eq!(v.mn_mac, MAC);
        assert_eq!(v.mn_source, SocketAddrV4::new(HOA, MN_PORT));
        assert_eq!(v.home_agent, MIPP_PUB);
        assert_eq!(v.care_of_address, COA);
        assert!(v.reverse_tunnel && !v.co_located);
        assert_eq!(v.delivery, DeliveryStyle::Direct);
        assert_eq!(
            v.tunnel,
            Some(VisitorTunnel {
                local: SocketAddrV4::new(COA, 0),
                remote: TunnelEndpoint {
                    addr: MIPP_PUB,
                    port: 0,
                    encapsulation: Encapsulation::IpInIp,
                },
                keepalive_interval: 0,
            })
        );
        assert_eq!(v.expires_at, Instant::from_millis(50 + 600_000));
        assert_eq!(fa.visitors().count(), 1);

        // The home agent grants more than requested: the visitor keeps the requested lifetime.
        let out = register(&mut fa, 10_000, ID + 1, 900);
        let c = visitor_changes(&out);
        assert_eq!(c[0].kind, VisitorChangeKind::Refreshed);
        assert_eq!(c[0].visitor.lifetime, 600);

        // Accepted deregistration removes it.
        let (dereg, _) = Rrq {
            lifetime: 0,
            id: ID + 2,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(20_000), from_mobile(&dereg));
        let (reply, _) = rrp(ReplyCode::Accepted, 0, ID + 2, &[], &[], None);
        let out = run(&mut fa, at(20_050), from_network(&reply));
        let c = visitor_changes(&out);
        assert_eq!(c[0].kind, VisitorChangeKind::Removed);
        assert_eq!(fa.visitors().count(), 0);
        assert_eq!(outcome_codes(&out), vec![ReplyCode::Accepted]);

        // Register for 30 s and let it expire: removed on Tick, no message.
        register(&mut fa, 30_000, ID + 3, 30);
        assert!(fa.next_timer().unwrap() <= Instant::from_millis(60_050));
        let out = run(&mut fa, at(60_050), FaInput::Tick);
        let c = visitor_changes(&out);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, VisitorChangeKind::Expired);
        assert!(to_mobile(&out).is_empty() && sends(&out).is_empty());
        assert_eq!(fa.visitors().count(), 0);
    }

    #[test]
    fn visitor_max_lifetime_caps_the_entry() {
        let mut cfg = config();
        cfg.advertisement.registration_lifetime = 0xffff;
        cfg.visitor_max_lifetime = Some(120);
        let mut fa = ForeignAgent::new(cfg, KeyStore::new(), 1);
        let (bytes, _) = Rrq {
            lifetime: 0xffff,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let (reply, _) = rrp(ReplyCode::Accepted, 0xffff, ID, &[], &[], None);
        let out = run(&mut fa, at(0), from_network(&reply));
        assert_eq!(visitor_changes(&out)[0].visitor.lifetime, 120);
    }

    #[test]
    fn denied_reply_keeps_the_current_visitor() {
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        register(&mut fa, 0, ID, 600);
        let (bytes, _) = Rrq {
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(1000), from_mobile(&bytes));
        let (reply, cut) = rrp(ReplyCode::HaMnAuthFailed, 600, ID + 1, &[], &[], None);
        let out = run(&mut fa, at(1050), from_network(&reply));
        assert!(visitor_changes(&out).is_empty());
        assert_eq!(to_mobile(&out)[0].0.payload, reply[..cut], "relayed as is");
        assert_eq!(fa.visitors().count(), 1);
    }

    #[test]
    fn nai_registration_with_assigned_home_address() {
        let nai = b"joe@example.com";
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        let (bytes, _) = Rrq {
            home_address: Ipv4Addr::UNSPECIFIED,
            before: vec![ExtensionBody::Nai(nai)],
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(0), from_mobile(&bytes));
        // Pending by NAI: a reply naming the assigned home address but without the NAI matches nothing.
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        assert_eq!(
            run(&mut fa, at(10), from_network(&reply)),
            vec![FaOutput::Drop(DropReason::NoPendingRequest)]
        );
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[ExtensionBody::Nai(nai)], &[], None);
        let out = run(&mut fa, at(20), from_network(&reply));
        let v = &visitor_changes(&out)[0].visitor;
        assert_eq!(v.home_address, HOA);
        assert_eq!(v.nai.as_deref(), Some("joe@example.com"));
        // The request came from 0.0.0.0: the reply goes to the assigned home address, by link-layer unicast.
        let (t, mac) = to_mobile(&out)[0];
        assert_eq!(mac, MAC);
        assert_eq!(*t.dst.ip(), HOA);
    }

    #[test]
    fn accepted_reply_missing_the_requested_nai_gives_97() {
        let nai = b"joe@example.com";
        let mut fa = ForeignAgent::new(config(), KeyStore::new(), 1);
        let (bytes, _) = Rrq {
            before: vec![ExtensionBody::Nai(nai)],
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[], None);
        let out = run(&mut fa, at(10), from_network(&reply));
        let r = Reply::parse(&to_mobile(&out)[0].0.payload, &Dialect::default()).unwrap();
        assert_eq!(r.repr.code, ReplyCode::MissingNai);
        assert_eq!(r.nai(), Some(&nai[..]));
        assert!(visitor_changes(&out).is_empty());
    }

    // --- FA behind a NAT (RFC 3519 §4.5) ---

    fn nat_config() -> FaConfig {
        let mut cfg = config();
        cfg.behind_nat = true;
        cfg.routed_address = Ipv4Addr::new(192, 0, 2, 2);
        cfg
    }

    #[test]
    fn case_53_fa_adds_its_udp_tunnel_request_after_mn_ha_only_for_d0() {
        let mut fa = ForeignAgent::new(nat_config(), keys(false, true), 1);
        let (bytes, cut) = Rrq::default().build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let t = sends(&out)[0];
        // Sent from an IP source equal to the care-of address.
        assert_eq!(t.src, SocketAddrV4::new(COA, REGISTRATION_PORT));
        assert_eq!(t.payload[..cut], bytes[..cut]);
        assert_eq!(hex::encode(&t.payload[cut..cut + 8]), "9006000000040000");
        let relayed = Request::parse(&t.payload, &Dialect::default()).unwrap();
        let fa_ha_ext = relayed.auth(AuthKind::ForeignHome).unwrap();
        assert_eq!(fa_ha_ext.offset, cut + 8, "FA-HA after the FA's UDP Tunnel Request");
        assert!(fa_ha().verify(&t.payload, &fa_ha_ext).is_ok());
        // The proxy/HA (RFC 3519 HA role) sees the NAT's address and assents: UDP tunnel to the NAT mapping.
        let mn_ha_offset = relayed.auth(AuthKind::MobileHome).unwrap().offset;
        let nat_src = SocketAddrV4::new(NAT_PUB, 40003);
        let d = tunnel::decide(&relayed, mn_ha_offset, nat_src, &TunnelPolicy::default()).unwrap();
        assert_eq!(d.tunnel.encapsulation, Encapsulation::UdpIpInIp);
        assert_eq!((d.tunnel.addr, d.tunnel.port), (NAT_PUB, 40003));
        assert!(!d.half_bound);

        // D = 1 through the U-FA: no FA-added request (which the HA would refuse with 134).
        let mut fa = ForeignAgent::new(nat_config(), keys(false, true), 1);
        let (colo, cut) = Rrq {
            flags: RequestFlags::D | RequestFlags::T,
            care_of_address: PRIVATE_COA,
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(0), from_mobile(&colo));
        let t = sends(&out)[0];
        assert_eq!(t.payload, colo[..cut]);
        assert_eq!(t.src, SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), REGISTRATION_PORT));

        // Nor on a deregistration.
        let mut fa = ForeignAgent::new(nat_config(), KeyStore::new(), 1);
        let (dereg, cut) = Rrq {
            lifetime: 0,
            ..Rrq::default()
        }
        .build();
        assert_eq!(
            sends(&run(&mut fa, at(0), from_mobile(&dereg)))[0].payload,
            dereg[..cut]
        );
    }

    #[test]
    fn udp_tunnel_reply_gives_a_udp_tunnel_with_keepalives() {
        let mut fa = ForeignAgent::new(nat_config(), KeyStore::new(), 1);
        run(&mut fa, at(0), FaInput::Tick);
        let (bytes, _) = Rrq::default().build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let utrp = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
            code: 0,
            forced: false,
            reserved: 0,
            keepalive: 20,
        });
        let (reply, cut) = rrp(ReplyCode::Accepted, 600, ID, &[], &[utrp], None);
        let out = run(&mut fa, at(100), from_network(&reply));
        let v = &visitor_changes(&out)[0].visitor;
        let t = v.tunnel.unwrap();
        assert_eq!(t.local, SocketAddrV4::new(COA, REGISTRATION_PORT));
        assert_eq!(
            t.remote,
            TunnelEndpoint {
                addr: MIPP_PUB,
                port: REGISTRATION_PORT,
                encapsulation: Encapsulation::UdpIpInIp
            }
        );
        assert_eq!(t.keepalive_interval, 20);
        // The UDP Tunnel Reply answered the FA, not the visitor: stripped.
        assert_eq!(to_mobile(&out)[0].0.payload, reply[..cut]);
        assert!(out.iter().any(|o| matches!(o, FaOutput::Outcome(o) if o.nat_detected)));

        // First keepalive K seconds after the registration, then every K seconds.
        let ka = |out: &[FaOutput]| {
            out.iter()
                .filter(|o| matches!(o, FaOutput::SendKeepalive { .. }))
                .count()
        };
        assert_eq!(ka(&run(&mut fa, at(19_000), FaInput::Tick)), 0);
        let out = run(&mut fa, at(20_100), FaInput::Tick);
        assert!(out.contains(&FaOutput::SendKeepalive {
            src: SocketAddrV4::new(COA, REGISTRATION_PORT),
            dst: SocketAddrV4::new(MIPP_PUB, REGISTRATION_PORT),
        }));
        assert_eq!(
            fa.next_timer(),
            Some(Instant::from_millis(21_100)),
            "next advertisement"
        );
        run(&mut fa, at(21_100), FaInput::Tick);
        run(&mut fa, at(21_500), FaInput::KeepaliveReply);
        assert_eq!(fa.last_keepalive_reply(), Some(Instant::from_millis(21_500)));
        let mut sent = 0;
        for s in 22..=40 {
            sent += ka(&run(&mut fa, at(s * 1000 + 100), FaInput::Tick));
        }
        assert_eq!(sent, 1, "at 40.1 s");

        // Deregistration removes the tunnel and its keepalives.
        let (dereg, _) = Rrq {
            lifetime: 0,
            id: ID + 1,
            ..Rrq::default()
        }
        .build();
        run(&mut fa, at(41_000), from_mobile(&dereg));
        let (reply, _) = rrp(ReplyCode::Accepted, 0, ID + 1, &[], &[], None);
        run(&mut fa, at(41_000), from_network(&reply));
        assert!(fa.keepalives.is_empty());
    }

    #[test]
    fn declined_or_absent_udp_tunnel_reply_means_ip_in_ip() {
        for after in [
            vec![ExtensionBody::UdpTunnelReply(UdpTunnelReply {
                code: 64,
                ..UdpTunnelReply::default()
            })],
            vec![],
        ] {
            let mut fa = ForeignAgent::new(nat_config(), KeyStore::new(), 1);
            let (bytes, _) = Rrq::default().build();
            run(&mut fa, at(0), from_mobile(&bytes));
            let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &after, None);
            let out = run(&mut fa, at(100), from_network(&reply));
            let t = visitor_changes(&out)[0].visitor.tunnel.unwrap();
            assert_eq!(t.remote.encapsulation, Encapsulation::IpInIp);
            assert!(fa.keepalives.is_empty());
        }
        // Keepalive 0 in the reply: the configured default (110 s).
        let mut fa = ForeignAgent::new(nat_config(), KeyStore::new(), 1);
        let (bytes, _) = Rrq::default().build();
        run(&mut fa, at(0), from_mobile(&bytes));
        let utrp = ExtensionBody::UdpTunnelReply(UdpTunnelReply::default());
        let (reply, _) = rrp(ReplyCode::Accepted, 600, ID, &[], &[utrp], None);
        let out = run(&mut fa, at(100), from_network(&reply));
        assert_eq!(visitor_changes(&out)[0].visitor.tunnel.unwrap().keepalive_interval, 110);
    }

    #[test]
    fn case_57_r_flag_request_passes_a_u_fa_unchanged() {
        let mut cfg = nat_config();
        cfg.require_registration = true;
        let mut fa = ForeignAgent::new(cfg, keys(false, true), 1);
        // The FA advertises R and U.
        let out = run(&mut fa, at(0), FaInput::Tick);
        let flags = adverts(&out)[0].0.mobility.unwrap().flags;
        assert!(flags.has(MobilityAgentFlags::R | MobilityAgentFlags::U));
        // A co-located node behind the FA's NAT: UTRQ with R before MN-HA, D = 1.
        let utrq = ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
            registered_via_fa: true,
            encapsulation: 4,
            ..UdpTunnelRequest::default()
        });
        let (bytes, cut) = Rrq {
            flags: RequestFlags::D | RequestFlags::T,
            care_of_address: PRIVATE_COA,
            before: vec![utrq],
            ..Rrq::default()
        }
        .build();
        let out = run(&mut fa, at(0), from_mobile(&bytes));
        let t = sends(&out)[0];
        assert_eq!(t.payload, bytes[..cut], "passed unchanged; no FA request, no FA-HA");
        // The proxy sees an R-flag request from the NAT: half-bound until the node's first keepalive.
        let relayed = Request::parse(&t.payload, &Dialect::default()).unwrap();
        let off = relayed.auth(AuthKind::MobileHome).unwrap().offset;
        let d = tunnel::decide(
            &relayed,
            off,
            SocketAddrV4::new(NAT_PUB, 40003),
            &TunnelPolicy::default(),
        )
        .unwrap();
        assert!(d.half_bound);
        // Accepted: a co-located visitor without an FA tunnel; no FA-HA required for a CoA the FA did not offer.
        let utrp = ExtensionBody::UdpTunnelReply(UdpTunnelReply::default());
        let (reply, cut) = rrp(ReplyCode::Accepted, 600, ID, &[utrp], &[], None);
        let out = run(&mut fa, at(100), from_network(&reply));
        let v = &visitor_changes(&out)[0].visitor;
        assert!(v.co_located);
        assert_eq!(v.tunnel, None);
        assert_eq!(v.care_of_address, PRIVATE_COA);
        assert_eq!(
            to_mobile(&out)[0].0.payload,
            reply[..cut],
            "the node's UDP Tunnel Reply reaches it"
        );
        assert!(fa.keepalives.is_empty(), "the node keeps its own tunnel alive");
    }

    // --- configuration ---

    #[test]
    fn config_yaml_with_defaults() {
        let text = "visited_address: 172.16.0.1\nrouted_address: 192.0.2.1\ncare_of_addresses: [192.0.2.1]\n";
        let cfg: FaConfig = crate::config::from_yaml(text).unwrap();
        assert_eq!(cfg, config());
        assert_eq!(cfg.advertisement.interval_ms, 1000);
        assert_eq!(cfg.keepalive_default, 110);
        assert_eq!(cfg.max_pending, 5);
        assert_eq!(cfg.pending_timeout_ms, 7000);
        assert!(cfg.reverse_tunnel.supported && !cfg.reverse_tunnel.mandatory);

        let full = "visited_address: 172.16.0.1
routed_address: 192.0.2.2
care_of_addresses: [192.0.2.1]
advertisement: {interval_ms: 500, lifetime: 9, registration_lifetime: 600, prefix_lengths: true}
reverse_tunnel: {supported: true, mandatory: true}
delivery_styles: {encapsulating: true}
behind_nat: true
keepalive_default: 60
max_pending: 66
pending_timeout_ms: 5000
pending_timeout_reply: false
visitor_max_lifetime: 300
require_registration: true
allowed_home_agents: [198.51.100.0/24]
dialect: {ha_parameter_type: 254}
";
        let cfg: FaConfig = crate::config::from_yaml(full).unwrap();
        assert_eq!(cfg.advertisement.lifetime, 9);
        assert_eq!(cfg.visitor_max_lifetime, Some(300));
        assert_eq!(cfg.dialect().ha_parameter_type, 254);
        assert_eq!(cfg.dialect().ha_parameter_subtype, 1);
        assert!(cfg.allowed_home_agents[0].contains(MIPP_PUB));
    }

    #[test]
    fn config_errors_name_their_fields() {
        let fields = |text: &str| -> Vec<String> {
            crate::config::from_yaml::<FaConfig>(text)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        let base = "visited_address: 172.16.0.1\nrouted_address: 192.0.2.1\n";
        assert_eq!(
            fields(&format!("{base}care_of_addresses: []\n")),
            vec!["care_of_addresses"]
        );
        assert_eq!(
            fields(&format!("{base}care_of_addresses: [192.0.2.1, 0.0.0.0, 192.0.2.1]\n")),
            vec!["care_of_addresses[1]", "care_of_addresses[2]"]
        );
        let coa = "care_of_addresses: [192.0.2.1]\n";
        assert_eq!(
            fields(&format!(
                "{base}{coa}reverse_tunnel: {{supported: false, mandatory: true}}\ndelivery_styles: {{encapsulating: true}}\n"
            )),
            vec!["reverse_tunnel.mandatory", "delivery_styles.encapsulating"]
        );
        assert_eq!(
            fields(&format!(
                "{base}{coa}advertisement: {{interval_ms: 2000, lifetime: 3}}\n"
            )),
            vec!["advertisement.interval_ms"]
        );
        assert_eq!(
            fields(&format!(
                "{base}{coa}keepalive_default: 5\nmax_pending: 0\nforce_udp_tunnel: true\nvisitor_max_lifetime: 0\n"
            )),
            vec![
                "force_udp_tunnel",
                "keepalive_default",
                "max_pending",
                "visitor_max_lifetime"
            ]
        );
        assert_eq!(
            fields(&format!("{base}{coa}dialect: {{ha_parameter_type: 32}}\n")),
            vec!["dialect"]
        );
        // Unknown fields, in nested sections too.
        assert_eq!(fields(&format!("{base}{coa}behind_nta: true\n")), vec!["behind_nta"]);
        let e = fields(&format!("{base}{coa}advertisement: {{intervall_ms: 5}}\n"));
        assert_eq!(e, vec!["advertisement.intervall_ms"]);
        // A missing required field is a document-level error.
        assert_eq!(fields("visited_address: 172.16.0.1\n").len(), 1);
    }
}

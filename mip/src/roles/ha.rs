//! The reference Home Agent (spec §6.1: plain RFC 5944 + RFC 3024 reverse tunnelling, RFC 2794 NAI home-address
//! assignment, RFC 3519 UDP tunnelling optional) as a sans-IO state machine.
//!
//! Seen from this HA the MIP Proxy is a co-located mobile node: care-of address `MIPP-Priv`, D = 1, source = the
//! proxy's node address, no UDP Tunnel Request (spec §5.1 step 13, vectors V2/V3).
//!
//! # Request processing (RFC 5944 §3.8.2.1, spec §6.1), in order
//! 1. Parse; malformed or unknown non-skippable → drop (no reply: spec §8 "never reply to malformed input").
//! 2. MN-HA extension present and its SA known by (home address, SPI), or by (NAI, SPI) when the home address is
//!    0.0.0.0 or only the NAI has an SA (a pool-assigned address); else drop. Home address 0.0.0.0 without NAI →
//!    drop.
//! 3. Authenticator; bad → drop, or 131 when `reply_on_auth_failure` is set or a valid FA-HA vouches for the
//!    sender (RFC 5944 §3.8.2.1: MUST then). The reply carries a valid MN-HA.
//! 4. Identification ([`ReplayState`]) → 133 with the resynchronising Identification.
//! 5. FA-HA: present with an SPI the HA holds no SA for with the request's IP source → drop; the HA shares an SA
//!    with the source but there is not exactly one valid FA-HA (nonzero lifetime) → 132.
//! 6. Sent to a broadcast/multicast address, or Home Agent field not this HA → 136 (reply names this HA).
//! 7. Strict mode: r or x set → 134 (spec §2.2 \[D\]).
//! 8. Nonzero lifetime: T set but unsupported → 137; reverse tunnel mandatory and T clear → 138; M or G without a
//!    UDP Tunnel Request → 139 (only IP-in-IP is implemented).
//! 9. Home address outside `home_networks` → 129; 0.0.0.0 with an NAI → the NAI's current address, or one from
//!    `address_pool` (none configured → 129, exhausted → 130).
//! 10. Nonzero lifetime: [`tunnel::decide`] (RFC 3519; denial codes 129/134/142), UDP tunnels capped at
//!     `nat_max_lifetime`.
//! 11. Binding update (RFC 5944 §3.8.2.2), reply 0 (or 1 when S was set but simultaneous bindings are off).

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::tunnel::{self, TunnelDecision, TunnelPolicy};
use super::{BindingChange, BindingChangeKind, Datagram, DropReason, Now, RegistrationOutcome, Rng, Transmit};
use crate::auth::{AUTH_EXT_HEADER_LEN, AUTHENTICATOR_LEN, SecurityAssociation, Spi};
use crate::binding::{
    Binding, BindingCache, BindingError, BindingKey, INFINITE_LIFETIME, MAX_SIMULTANEOUS_BINDINGS, Upsert,
};
use crate::config::{ConfigError, Prefix, Validate};
use crate::keystore::KeyStore;
use crate::replay::{ReplayState, ReplayStyle, ReplayVerdict};
use crate::time::Instant;
use crate::wire::udp::MIP_PORT;
use crate::wire::{
    AuthKind, Dialect, ExtensionBody, MessageType, MessageWriter, REPLY_HEADER_LEN, ReplyCode, ReplyRepr, Request,
    UdpTunnelReply,
};

// === configuration ===

fn default_max_lifetime() -> u16 {
    1800
}

fn default_nat_max_lifetime() -> u16 {
    60
}

fn yes() -> bool {
    true
}

/// A range of home addresses the HA hands out to mobile nodes that register with home address 0.0.0.0 and an
/// NAI (RFC 2794 §2). Inclusive on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    /// First address of the pool.
    pub first: Ipv4Addr,
    /// Last address of the pool.
    pub last: Ipv4Addr,
}

/// Reverse tunnelling (RFC 3024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReverseTunnelConfig {
    /// Accept requests with T set (else 137). Default true.
    pub supported: bool,
    /// Refuse requests with T clear (138). Default false.
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

/// RFC 3519 UDP tunnelling toward co-located mobile nodes behind a NAT (the fields of [`TunnelPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpTunnellingConfig {
    /// Accept UDP tunnelling when a NAT is detected (else 129). Default true.
    pub nat_traversal: bool,
    /// Accept the F flag (forced UDP tunnelling without a NAT; else 129). Default false.
    pub allow_forced: bool,
    /// Keepalive interval announced in the UDP Tunnel Reply, seconds; 0 (default) = the MN's default of 110 s.
    pub keepalive: u16,
}

impl Default for UdpTunnellingConfig {
    fn default() -> Self {
        let p = TunnelPolicy::default();
        UdpTunnellingConfig {
            nat_traversal: p.nat_traversal,
            allow_forced: p.allow_forced,
            keepalive: p.keepalive,
        }
    }
}

impl UdpTunnellingConfig {
    /// The policy [`tunnel::decide`] takes.
    pub fn policy(&self) -> TunnelPolicy {
        TunnelPolicy {
            nat_traversal: self.nat_traversal,
            allow_forced: self.allow_forced,
            keepalive: self.keepalive,
        }
    }
}

/// Configuration of the reference Home Agent.
///
/// ```yaml
/// address: 10.10.1.1
/// home_networks: [10.10.1.0/24]
/// address_pool: {first: 10.10.1.100, last: 10.10.1.199}
/// max_lifetime: 1800
/// reverse_tunnel: {supported: true, mandatory: false}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// The HA's unicast address: the source of every reply and the Home Agent field it accepts and sends.
    pub address: Ipv4Addr,
    /// Home addresses this HA serves (a nonzero home address outside them is refused with 129).
    #[serde(default)]
    pub home_networks: Vec<Prefix>,
    /// Addresses for RFC 2794 home-address assignment; none = requests with home address 0.0.0.0 get 129.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_pool: Option<AddressPool>,
    /// Largest lifetime granted, seconds (default 1800; 0xFFFF allows infinite bindings).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: u16,
    /// Largest lifetime granted to a binding with an RFC 3519 UDP tunnel, seconds (default 60, RFC 3519 §5.2).
    #[serde(default = "default_nat_max_lifetime")]
    pub nat_max_lifetime: u16,
    /// Honour the S bit (default true); when false a request with S set replaces the other bindings and gets
    /// code 1.
    #[serde(default = "yes")]
    pub simultaneous_bindings: bool,
    /// Reverse tunnelling (RFC 3024).
    #[serde(default)]
    pub reverse_tunnel: ReverseTunnelConfig,
    /// RFC 3519 UDP tunnelling.
    #[serde(default)]
    pub udp_tunnelling: UdpTunnellingConfig,
    /// Refuse requests with the reserved r or x bit set with 134 (RFC 5944 §3.8.2.3). Default false: ignore them
    /// (RFC 5944 §3.3; spec §2.2 \[D\]).
    #[serde(default)]
    pub strict_reserved_bits: bool,
    /// Answer a bad MN-HA authenticator with 131 (default false: drop silently, spec §8). A request with a valid
    /// FA-HA is answered with 131 either way (RFC 5944 §3.8.2.1).
    #[serde(default)]
    pub reply_on_auth_failure: bool,
}

impl HaConfig {
    /// A configuration with every optional field at its default.
    pub fn new(address: Ipv4Addr, home_networks: Vec<Prefix>) -> Self {
        HaConfig {
            address,
            home_networks,
            address_pool: None,
            max_lifetime: default_max_lifetime(),
            nat_max_lifetime: default_nat_max_lifetime(),
            simultaneous_bindings: true,
            reverse_tunnel: ReverseTunnelConfig::default(),
            udp_tunnelling: UdpTunnellingConfig::default(),
            strict_reserved_bits: false,
            reply_on_auth_failure: false,
        }
    }

    fn is_home(&self, a: Ipv4Addr) -> bool {
        self.home_networks.iter().any(|p| p.contains(a))
    }

    /// Whether `dst` is a broadcast or multicast address (a request sent there is answered with 136 naming this
    /// HA's unicast address, RFC 5944 §3.8.2.1).
    fn is_broadcast(&self, dst: Ipv4Addr) -> bool {
        dst.is_broadcast()
            || dst.is_multicast()
            || self
                .home_networks
                .iter()
                .any(|p| p.len() <= 30 && directed_broadcast(p) == dst)
    }
}

fn host_mask(p: &Prefix) -> u32 {
    u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0)
}

fn directed_broadcast(p: &Prefix) -> Ipv4Addr {
    Ipv4Addr::from_bits(p.addr().to_bits() | host_mask(p))
}

impl Validate for HaConfig {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let a = self.address;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            errors.push(ConfigError::new("address", "must be a unicast address"));
        }
        if self.home_networks.is_empty() {
            errors.push(ConfigError::new("home_networks", "at least one prefix is required"));
        }
        if let Some(pool) = &self.address_pool {
            let (first, last) = (pool.first.to_bits(), pool.last.to_bits());
            if first > last {
                errors.push(ConfigError::new("address_pool.last", "must not be below `first`"));
            } else {
                match self
                    .home_networks
                    .iter()
                    .find(|p| p.contains(pool.first) && p.contains(pool.last))
                {
                    None => errors.push(ConfigError::new(
                        "address_pool",
                        "must lie within one of `home_networks`",
                    )),
                    Some(p) if p.len() <= 30 => {
                        let net = p.addr().to_bits();
                        let bcast = directed_broadcast(p).to_bits();
                        if (first..=last).contains(&net) || (first..=last).contains(&bcast) {
                            errors.push(ConfigError::new(
                                "address_pool",
                                format!("must not contain the network or broadcast address of {p}"),
                            ));
                        }
                    }
                    Some(_) => {}
                }
                if (first..=last).contains(&a.to_bits()) {
                    errors.push(ConfigError::new(
                        "address_pool",
                        "must not contain the home agent's own `address`",
                    ));
                }
            }
        }
        if self.max_lifetime == 0 {
            errors.push(ConfigError::new("max_lifetime", "must be at least 1 second"));
        }
        if self.nat_max_lifetime == 0 {
            errors.push(ConfigError::new("nat_max_lifetime", "must be at least 1 second"));
        }
        if self.reverse_tunnel.mandatory && !self.reverse_tunnel.supported {
            errors.push(ConfigError::new(
                "reverse_tunnel.mandatory",
                "cannot be true while `reverse_tunnel.supported` is false",
            ));
        }
        if (1..10).contains(&self.udp_tunnelling.keepalive) {
            errors.push(ConfigError::new(
                "udp_tunnelling.keepalive",
                "must be 0 (the mobile node's default) or at least 10 seconds (RFC 3519 §4.10)",
            ));
        }
        errors
    }
}

// === inputs and outputs ===

/// What the HA is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaInput<'a> {
    /// A UDP datagram that arrived on port 434 (checksum already verified).
    Request(Datagram<'a>),
    /// Time passed (call at [`HomeAgent::next_timer`]): expire bindings.
    Tick,
}

/// What the HA wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaOutput {
    /// Send a Registration Reply.
    Send(Transmit),
    /// A binding was created, refreshed, removed or expired (for the tunnel data plane).
    Binding(BindingChange),
    /// Start (`active`, the node's first binding appeared) or stop (its last binding went) intercepting packets
    /// for `home_address`: proxy ARP and gratuitous ARP (RFC 5944 §4.6).
    Intercept {
        /// The mobile node's home address.
        home_address: Ipv4Addr,
        /// Whether to intercept from now on.
        active: bool,
    },
    /// One per reply sent.
    Outcome(RegistrationOutcome),
    /// The input produced nothing.
    Drop(DropReason),
}

// === state ===

/// Whose replay state: the identity the MN-HA SA was found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MnId<'a> {
    Home(Ipv4Addr),
    Nai(&'a str),
}

/// Replay state per mobile node. Entries are created only for authenticated requests, so the table is bounded
/// by the number of SAs.
#[derive(Debug, Clone, Default)]
struct ReplayTable {
    by_home: HashMap<Ipv4Addr, ReplayState>,
    by_nai: HashMap<Box<str>, ReplayState>,
}

impl ReplayTable {
    fn get(&self, id: MnId<'_>) -> ReplayState {
        match id {
            MnId::Home(a) => self.by_home.get(&a),
            MnId::Nai(n) => self.by_nai.get(n),
        }
        .copied()
        .unwrap_or_default()
    }

    fn put(&mut self, id: MnId<'_>, state: ReplayState) {
        match id {
            MnId::Home(a) => {
                self.by_home.insert(a, state);
            }
            MnId::Nai(n) => match self.by_nai.get_mut(n) {
                Some(s) => *s = state,
                None => {
                    self.by_nai.insert(n.into(), state);
                }
            },
        }
    }
}

/// The RFC 2794 address pool. `used` counts nodes with a binding whose home address lies in the pool (kept up to
/// date from the `Intercept` events), so exhaustion is detected without a scan.
#[derive(Debug, Clone)]
struct Pool {
    first: u32,
    last: u32,
    cursor: u32,
    used: u64,
    exclude: Ipv4Addr,
}

impl Pool {
    fn new(p: &AddressPool, exclude: Ipv4Addr) -> Self {
        let first = p.first.to_bits();
        Pool {
            first,
            last: p.last.to_bits().max(first),
            cursor: first,
            used: 0,
            exclude,
        }
    }

    fn contains(&self, a: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&a.to_bits())
    }

    fn size(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    fn note(&mut self, a: Ipv4Addr, active: bool) {
        if self.contains(a) {
            self.used = if active {
                self.used.saturating_add(1)
            } else {
                self.used.saturating_sub(1)
            };
        }
    }

    /// A pool address no node is bound to, without reserving it (the binding does that).
    fn assign(&mut self, cache: &BindingCache) -> Option<Ipv4Addr> {
        if self.used >= self.size() {
            return None;
        }
        for _ in 0..self.size() {
            let a = Ipv4Addr::from_bits(self.cursor);
            self.cursor = if self.cursor >= self.last {
                self.first
            } else {
                self.cursor + 1
            };
            if a != self.exclude && cache.get_by_home(a).is_none() {
                return Some(a);
            }
        }
        None
    }
}

/// The reference Home Agent.
#[derive(Debug)]
pub struct HomeAgent {
    config: HaConfig,
    policy: TunnelPolicy,
    keys: KeyStore,
    rng: Rng,
    cache: BindingCache,
    replay: ReplayTable,
    pool: Option<Pool>,
    next_expiry: Option<Instant>,
}

/// How the request's FA-HA authentication stands (RFC 5944 §3.8.2.1 c, d).
#[derive(Debug, Clone, Copy)]
enum FaAuth<'k> {
    /// No FA-HA and none required.
    Absent,
    /// Exactly one FA-HA, valid.
    Valid(&'k SecurityAssociation),
    /// Bad, or more than one: 132.
    Invalid(&'k SecurityAssociation),
    /// The HA shares an SA with the sender, the lifetime is nonzero and there is no FA-HA: 132.
    Missing(&'k SecurityAssociation),
    /// An FA-HA whose SPI the HA holds no SA for with the sender: drop.
    UnknownSpi,
}

impl<'k> FaAuth<'k> {
    fn sa(self) -> Option<&'k SecurityAssociation> {
        match self {
            FaAuth::Valid(s) | FaAuth::Invalid(s) | FaAuth::Missing(s) => Some(s),
            FaAuth::Absent | FaAuth::UnknownSpi => None,
        }
    }
}

fn fa_auth<'k>(keys: &'k KeyStore, req: &Request<'_>, src: Ipv4Addr) -> FaAuth<'k> {
    let mut first = None;
    let mut count = 0usize;
    for e in req.extensions() {
        if let ExtensionBody::Auth {
            kind: AuthKind::ForeignHome,
            spi,
            ..
        } = e.body
        {
            count += 1;
            if first.is_none() {
                first = Some((e, spi));
            }
        }
    }
    let r = &req.repr;
    match first {
        Some((e, spi)) => match keys.agent(src, spi) {
            None => FaAuth::UnknownSpi,
            Some(sa) if count == 1 && sa.verify(req.bytes, &e).is_ok() => FaAuth::Valid(sa),
            Some(sa) => FaAuth::Invalid(sa),
        },
        // An FA-HA is never required on a deregistration (RFC 5944 §3.5.4).
        None if r.lifetime == 0 => FaAuth::Absent,
        None => keys.for_agent(src).first().map_or(FaAuth::Absent, FaAuth::Missing),
    }
}

/// Everything a reply needs.
struct ReplyPlan<'r> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    code: ReplyCode,
    lifetime: u16,
    home_address: Ipv4Addr,
    home_agent: Ipv4Addr,
    identification: u64,
    nai: Option<&'r [u8]>,
    utrp: Option<UdpTunnelReply>,
    /// The UDP Tunnel Reply answers a foreign agent's request: FA-only, after MN-HA.
    utrp_for_fa: bool,
    mn_sa: &'r SecurityAssociation,
    fa_sa: Option<&'r SecurityAssociation>,
    care_of_address: Ipv4Addr,
    nat_detected: bool,
}

const AUTH_EXT_LEN: usize = AUTH_EXT_HEADER_LEN + AUTHENTICATOR_LEN;
const UTRP_LEN: usize = 8;

impl ReplyPlan<'_> {
    fn capacity(&self) -> usize {
        REPLY_HEADER_LEN
            + self.nai.map_or(0, |n| 2 + n.len())
            + self.utrp.map_or(0, |_| UTRP_LEN)
            + AUTH_EXT_LEN
            + self.fa_sa.map_or(0, |_| AUTH_EXT_LEN)
    }

    /// Fixed part → NAI → UDP Tunnel Reply → MN-HA → (an FA's UDP Tunnel Reply) → FA-HA (RFC 5944 §3.8.3.3,
    /// spec §2.13).
    fn write(&self, buf: &mut [u8]) -> crate::wire::Result<usize> {
        let repr = ReplyRepr {
            code: self.code,
            lifetime: self.lifetime,
            home_address: self.home_address,
            home_agent: self.home_agent,
            identification: self.identification,
        };
        let mut w = MessageWriter::reply(buf, &repr, &Dialect::default())?;
        if let Some(n) = self.nai {
            w.push(&ExtensionBody::Nai(n))?;
        }
        if let Some(u) = self.utrp.filter(|_| !self.utrp_for_fa) {
            w.push(&ExtensionBody::UdpTunnelReply(u))?;
        }
        w.push_auth(AuthKind::MobileHome, self.mn_sa)?;
        if let Some(u) = self.utrp.filter(|_| self.utrp_for_fa) {
            w.push(&ExtensionBody::UdpTunnelReply(u))?;
        }
        if let Some(fa) = self.fa_sa {
            w.push_auth(AuthKind::ForeignHome, fa)?;
        }
        Ok(w.len())
    }

    fn send(&self, out: &mut Vec<HaOutput>) {
        let mut payload = vec![0u8; self.capacity()];
        match self.write(&mut payload) {
            Ok(len) => payload.truncate(len),
            Err(e) => {
                out.push(HaOutput::Drop(DropReason::Malformed(e.kind)));
                return;
            }
        }
        out.push(HaOutput::Send(Transmit {
            src: self.src,
            dst: self.dst,
            ttl: None,
            payload,
        }));
        out.push(HaOutput::Outcome(RegistrationOutcome {
            home_address: self.home_address,
            care_of_address: self.care_of_address,
            home_agent: Some(self.home_agent),
            code: self.code,
            lifetime: self.lifetime,
            nat_detected: self.nat_detected,
        }));
    }
}

fn intercept(out: &mut Vec<HaOutput>, pool: &mut Option<Pool>, home_address: Ipv4Addr, active: bool) {
    if let Some(p) = pool {
        p.note(home_address, active);
    }
    out.push(HaOutput::Intercept { home_address, active });
}

fn change(kind: BindingChangeKind, home_address: Ipv4Addr, nai: Option<&str>, binding: Binding) -> HaOutput {
    HaOutput::Binding(BindingChange {
        kind,
        home_address,
        nai: nai.map(Box::from),
        binding,
    })
}

/// Identification of a 131 reply. The request is unauthenticated, so the replay state must not move: timestamps
/// echo, nonces repeat the nonce already issued (or, if none, a fresh one that is not recorded).
fn unauthenticated_reply_identification(state: &ReplayState, style: &ReplayStyle, ident: u64, fresh: u32) -> u64 {
    match style {
        ReplayStyle::Timestamp { .. } => ident,
        ReplayStyle::Nonce => {
            let nonce = state.issued_nonce().unwrap_or(fresh);
            (u64::from(nonce) << 32) | (ident & 0xFFFF_FFFF)
        }
    }
}

/// Seconds left on `b` at `now` for a duplicate's reply: never more than granted, never 0 (which would read as
/// a deregistration).
fn remaining_secs(b: &Binding, now: Instant) -> u16 {
    if b.lifetime == INFINITE_LIFETIME {
        return INFINITE_LIFETIME;
    }
    let left = b.remaining(now).as_secs().min(u64::from(b.lifetime)).max(1);
    u16::try_from(left).unwrap_or(b.lifetime)
}

impl HomeAgent {
    /// A home agent with no bindings. `config` is assumed validated ([`Validate`]); `seed` seeds the nonce
    /// generator.
    pub fn new(config: HaConfig, keys: KeyStore, seed: u64) -> HomeAgent {
        let policy = config.udp_tunnelling.policy();
        let pool = config.address_pool.as_ref().map(|p| Pool::new(p, config.address));
        HomeAgent {
            config,
            policy,
            keys,
            rng: Rng::new(seed),
            cache: BindingCache::new(),
            replay: ReplayTable::default(),
            pool,
            next_expiry: None,
        }
    }

    /// Replaces the security associations (key reload); bindings and replay state are kept.
    pub fn set_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
    }

    /// The configuration in use.
    pub fn config(&self) -> &HaConfig {
        &self.config
    }

    /// The binding cache.
    pub fn bindings(&self) -> &BindingCache {
        &self.cache
    }

    /// When the next binding expires (call [`handle`](Self::handle) with [`HaInput::Tick`] then); `None` when no
    /// binding can expire.
    pub fn next_timer(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// Processes one input at `now`, appending what must happen to `out`.
    pub fn handle(&mut self, now: Now, input: HaInput<'_>, out: &mut Vec<HaOutput>) {
        self.expire(now.instant, out);
        if let HaInput::Request(d) = input {
            self.on_request(now, d, out);
        }
        self.next_expiry = self
            .cache
            .next_expiry()
            .filter(|t| *t != Instant::from_millis(u64::MAX));
    }

    /// Removes expired bindings; no message is sent (RFC 5944 §3.8).
    fn expire(&mut self, now: Instant, out: &mut Vec<HaOutput>) {
        let HomeAgent { cache, pool, .. } = self;
        cache.expire(now, |e| {
            out.push(change(BindingChangeKind::Expired, e.home_address, e.nai, e.binding));
            if e.was_last {
                intercept(out, pool, e.home_address, false);
            }
        });
    }

    fn on_request(&mut self, now: Now, d: Datagram<'_>, out: &mut Vec<HaOutput>) {
        let HomeAgent {
            config,
            policy,
            keys,
            rng,
            cache,
            replay,
            pool,
            ..
        } = self;
        let bytes = d.payload;
        let drop = |out: &mut Vec<HaOutput>, why| out.push(HaOutput::Drop(why));
        if matches!(
            bytes.first().copied().and_then(MessageType::from_byte),
            Some(MessageType::RegistrationReply | MessageType::TunnelData)
        ) {
            return drop(out, DropReason::UnexpectedMessage);
        }
        let req = match Request::parse(bytes, &Dialect::default()) {
            Ok(r) => r,
            Err(e) => return drop(out, DropReason::Malformed(e.kind)),
        };
        let r = req.repr;

        // Authorization-enabling extension and its SA (RFC 5944 §3.8.2.1 a).
        let Some(mn_ha) = req.auth(AuthKind::MobileHome) else {
            return drop(out, DropReason::NoAuthExtension);
        };
        let ExtensionBody::Auth { spi, .. } = mn_ha.body else {
            return drop(out, DropReason::NoAuthExtension);
        };
        if spi < Spi::MIN {
            return drop(out, DropReason::NoSecurityAssociation);
        }
        let nai_raw = req.nai();
        let nai = nai_raw.and_then(|n| core::str::from_utf8(n).ok());
        let by_nai = || nai.and_then(|n| keys.get_by_nai(n.as_bytes(), spi).map(|sa| (sa, MnId::Nai(n))));
        let found = if r.home_address.is_unspecified() {
            if nai_raw.is_none() {
                return drop(out, DropReason::NoIdentity);
            }
            by_nai()
        } else {
            keys.get(r.home_address, spi)
                .map(|sa| (sa, MnId::Home(r.home_address)))
                .or_else(by_nai)
        };
        let Some((sa, id)) = found else {
            return drop(out, DropReason::NoSecurityAssociation);
        };
        let style = sa.replay;
        let fa = fa_auth(keys, &req, *d.src.ip());

        let mut reply = ReplyPlan {
            src: SocketAddrV4::new(config.address, MIP_PORT),
            dst: d.src,
            code: ReplyCode::Accepted,
            lifetime: r.lifetime,
            home_address: r.home_address,
            home_agent: config.address,
            identification: r.identification,
            nai: nai_raw,
            utrp: None,
            utrp_for_fa: false,
            mn_sa: sa,
            // No FA-HA on deregistrations (RFC 5944 §3.5.4).
            fa_sa: fa.sa().filter(|_| r.lifetime != 0),
            care_of_address: r.care_of_address,
            nat_detected: false,
        };

        // Authenticator (RFC 5944 §3.8.2.1 b).
        if sa.verify(bytes, &mn_ha).is_err() {
            if config.reply_on_auth_failure || matches!(fa, FaAuth::Valid(_)) {
                reply.code = ReplyCode::HaMnAuthFailed;
                reply.identification =
                    unauthenticated_reply_identification(&replay.get(id), &style, r.identification, rng.next_u32());
                reply.send(out);
            } else {
                drop(out, DropReason::BadAuthenticator);
            }
            return;
        }

        // Identification (RFC 5944 §3.8.2.1, §5.7).
        let mut state = replay.get(id);
        if let ReplayVerdict::Mismatch(_) = state.check(&style, r.identification, now.ntp) {
            reply.code = ReplyCode::IdentificationMismatch;
            reply.identification = state.resync_identification(&style, r.identification, now.ntp, rng.next_u32());
            replay.put(id, state);
            reply.send(out);
            return;
        }

        // FA-HA (RFC 5944 §3.8.2.1 c, d).
        if let FaAuth::UnknownSpi = fa {
            return drop(out, DropReason::UnknownFaHaSpi);
        }

        let verdict: Result<(), ReplyCode> = 'check: {
            if matches!(fa, FaAuth::Invalid(_) | FaAuth::Missing(_)) {
                break 'check Err(ReplyCode::HaFaAuthFailed);
            }
            // Home Agent field and destination (RFC 5944 §3.8.2.1, §3.8.3.2).
            if config.is_broadcast(*d.dst.ip()) || r.home_agent != config.address {
                break 'check Err(ReplyCode::UnknownHomeAgent);
            }
            if config.strict_reserved_bits && r.flags.reserved_set() {
                break 'check Err(ReplyCode::HaPoorlyFormedRequest);
            }
            let registering = r.lifetime != 0;
            if registering {
                // RFC 3024 §4.3.1.
                let t = r.flags.reverse_tunnel();
                if t && !config.reverse_tunnel.supported {
                    break 'check Err(ReplyCode::HaReverseTunnelUnavailable);
                }
                if !t && config.reverse_tunnel.mandatory {
                    break 'check Err(ReplyCode::HaReverseTunnelMandatory);
                }
                let utrq = req
                    .extensions()
                    .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)));
                if (r.flags.minimal_encap() || r.flags.gre()) && !utrq {
                    break 'check Err(ReplyCode::HaEncapUnavailable);
                }
            }

            // Home address (RFC 5944 §3.8.3.2, RFC 2794).
            let nai_entry = nai.and_then(|n| cache.get_by_nai(n));
            let home_address = match id {
                MnId::Home(a) if config.is_home(a) => a,
                MnId::Home(_) => break 'check Err(ReplyCode::HaProhibited),
                // Found by NAI with a nonzero home address: only the address this HA assigned to the NAI (still
                // bound, or a free pool address after expiry), so an NAI's key cannot claim someone else's.
                MnId::Nai(_) if !r.home_address.is_unspecified() => {
                    let own = match nai_entry {
                        Some(e) => e.home_address() == r.home_address,
                        None => {
                            pool.as_ref().is_some_and(|p| p.contains(r.home_address))
                                && cache.get_by_home(r.home_address).is_none()
                        }
                    };
                    if !own {
                        break 'check Err(ReplyCode::HaProhibited);
                    }
                    r.home_address
                }
                MnId::Nai(_) => match (nai_entry, pool.as_mut()) {
                    (Some(e), _) => e.home_address(),
                    // Deregistering an NAI that has no binding: nothing to assign.
                    (None, _) if !registering => Ipv4Addr::UNSPECIFIED,
                    (None, None) => break 'check Err(ReplyCode::HaProhibited),
                    (None, Some(p)) => match p.assign(cache) {
                        Some(a) => a,
                        None => break 'check Err(ReplyCode::HaInsufficientResources),
                    },
                },
            };
            // Record the NAI only when it is authenticated: the SA was found by it, or the keys file gives the
            // same SA to the NAI and the home address.
            let nai_for_cache = nai
                .filter(|n| matches!(id, MnId::Nai(_)) || keys.get_by_nai(n.as_bytes(), spi).is_some_and(|s| s == sa));
            if let Some(e) = nai_for_cache.and_then(|n| cache.get_by_nai(n))
                && e.home_address() != home_address
            {
                break 'check Err(ReplyCode::HaProhibited);
            }
            let code = if r.flags.simultaneous() && !config.simultaneous_bindings {
                ReplyCode::AcceptedNoSimultaneous
            } else {
                ReplyCode::Accepted
            };

            if !registering {
                // Deregistration (RFC 5944 §3.8.2.2). The UDP Tunnel Request is ignored here.
                if !home_address.is_unspecified() {
                    let key = BindingKey::Home(home_address);
                    let coa = r.care_of_address;
                    if coa == r.home_address || coa == home_address {
                        if let Some(entry) = cache.remove_all(&key) {
                            for b in entry.bindings() {
                                out.push(change(BindingChangeKind::Removed, home_address, entry.nai(), *b));
                            }
                            intercept(out, pool, home_address, false);
                        }
                    } else {
                        let nai_now = cache.get(&key).and_then(|e| e.nai()).map(Box::<str>::from);
                        if let Some(b) = cache.remove_care_of(&key, coa) {
                            out.push(change(BindingChangeKind::Removed, home_address, nai_now.as_deref(), b));
                            if cache.get(&key).is_none() {
                                intercept(out, pool, home_address, false);
                            }
                        }
                    }
                }
                reply.code = code;
                reply.lifetime = 0;
                reply.home_address = home_address;
                break 'check Ok(());
            }

            // RFC 3519 (spec §5.1 step 9): IP-in-IP, or a UDP tunnel to the NAT mapping.
            let decision: TunnelDecision = match tunnel::decide(&req, mn_ha.offset, d.src, policy) {
                Ok(x) => x,
                Err(code) => break 'check Err(code),
            };
            reply.nat_detected = decision.nat_detected;
            let udp = decision.tunnel.encapsulation.is_udp();
            let mut granted = r.lifetime.min(config.max_lifetime);
            if udp {
                granted = granted.min(config.nat_max_lifetime);
            }
            let mut binding = Binding::new(
                r.care_of_address,
                decision.tunnel,
                config.address,
                r.identification,
                granted,
                now.instant,
            );
            binding.keepalive_interval = if udp {
                decision.reply.map_or(0, |u| u.keepalive)
            } else {
                0
            };
            binding.reverse_tunnel = r.flags.reverse_tunnel();
            binding.half_bound = decision.half_bound;

            // Binding update (RFC 5944 §3.8.2.2). Keep the bindings a replacement may displace, to report them.
            let simultaneous = r.flags.simultaneous() && config.simultaneous_bindings;
            let mut before = [None; MAX_SIMULTANEOUS_BINDINGS];
            if !simultaneous && let Some(e) = cache.get_by_home(home_address) {
                for (slot, b) in before.iter_mut().zip(e.bindings()) {
                    *slot = Some(*b);
                }
            }
            let upsert = match cache.upsert(home_address, nai_for_cache, binding, simultaneous) {
                Ok(u) => u,
                Err(BindingError::TooMany) => break 'check Err(ReplyCode::HaTooManyBindings),
                Err(BindingError::Conflict) => break 'check Err(ReplyCode::HaProhibited),
                Err(BindingError::Full) => break 'check Err(ReplyCode::HaInsufficientResources),
                Err(BindingError::NoKey | BindingError::ZeroLifetime) => {
                    break 'check Err(ReplyCode::HaUnspecified);
                }
            };
            let entry_nai = cache.get_by_home(home_address).and_then(|e| e.nai());
            let coa = r.care_of_address;
            if upsert.displaced() > 0 {
                for b in before.iter().flatten().filter(|b| b.care_of_address != coa) {
                    out.push(change(BindingChangeKind::Removed, home_address, entry_nai, *b));
                }
            }
            match upsert {
                Upsert::Created => {
                    out.push(change(BindingChangeKind::Created, home_address, entry_nai, binding));
                    intercept(out, pool, home_address, true);
                }
                Upsert::Added | Upsert::Replaced { .. } => {
                    out.push(change(BindingChangeKind::Created, home_address, entry_nai, binding));
                }
                Upsert::Refreshed { .. } => {
                    out.push(change(BindingChangeKind::Refreshed, home_address, entry_nai, binding));
                }
                Upsert::Duplicate => {
                    // Same care-of address and Identification: not extended (spec §10 case 65).
                    let current = cache.get_by_home(home_address).and_then(|e| e.binding(coa));
                    granted = current.map_or(granted, |b| remaining_secs(b, now.instant));
                }
            }
            reply.code = code;
            reply.lifetime = granted;
            reply.home_address = home_address;
            reply.utrp = decision.reply;
            reply.utrp_for_fa = decision.reply_to_foreign_agent;
            Ok(())
        };

        match verdict {
            Ok(()) => state.accept(&style, r.identification),
            Err(code) => {
                reply.code = code;
                reply.lifetime = r.lifetime;
                reply.home_address = r.home_address;
                reply.utrp = None;
            }
        }
        reply.identification = state.reply_identification(&style, r.identification, rng.next_u32());
        replay.put(id, state);
        reply.send(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Algorithm, Key};
    use crate::binding::Encapsulation;
    use crate::config::from_yaml;
    use crate::time::NtpTimestamp;
    use crate::wire::{RequestFlags, RequestRepr, UdpTunnelRequest};

    // Spec §10 addresses.
    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
    const MIPP_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const MIPP_PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
    const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
    const COA2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 78);
    const PRIV_COA: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
    const NAT_PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    /// A foreign agent's routed address (not in the spec's list).
    const FA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const FA_KEY: &str = "0f0e0d0c0b0a09080706050403020100";
    const SPI: u32 = 0x100;
    const FA_SPI: u32 = 0x300;
    const NAI: &str = "joe@example.com";
    const NAI2: &str = "ann@example.com";
    const NAI3: &str = "bob@example.com";
    /// Identification of V1/V2 (and the HA clock at t = 0 in these tests).
    const ID0: u64 = 0xec4e5a00_12345678;

    const V1: &str = "012202580a0a0132c633640ac000024dec4e5a001234567820140000 0100869d33adee786a3be9b795c8cafb1d71";
    const V2: &str = "012002580a0a01320a0a01010a0a000aec4e5a001234567820140000 0100c823dffc3899875509ed4d1b15084e46";
    const V3: &str = "030002580a0a01320a0a0101ec4e5a001234567820140000 01006b17bf7f0f1322f9a1153dec5925c42d";
    const V5: &str =
        "012202580a0a0132c633640ac0a8014dec4e5a00123456789006000000040000201400000100 9bcd0d4218bd0833ec9236954b4a9027";
    const V6: &str =
        "030002580a0a0132c633640aec4e5a00123456782c0600000000006e20140000 0100e6a5219b9bda226f058144d658a16c75";
    const V7: &str = "038502580a0a0132c633640aec4e5b101234567820140000 01005441519f1295b0d5007b4c3e4bff77ff";
    const V8: &str = "010000000a0a0132c633640a0a0a0132ec4e5c000000000120140000 01004ab4bd7a9bd5909ef324037d2f974776";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn sa_with(key: &str, spi: u32, replay: ReplayStyle) -> SecurityAssociation {
        SecurityAssociation::new(
            Spi::new(spi).unwrap(),
            Algorithm::HmacMd5,
            Key::from_hex(key).unwrap(),
            replay,
        )
    }

    fn mn_sa() -> SecurityAssociation {
        sa_with(KEY, SPI, ReplayStyle::default())
    }

    fn nonce_sa() -> SecurityAssociation {
        sa_with(KEY, SPI, ReplayStyle::Nonce)
    }

    fn fa_sa() -> SecurityAssociation {
        sa_with(FA_KEY, FA_SPI, ReplayStyle::default())
    }

    fn keys_with(sa: SecurityAssociation) -> KeyStore {
        let mut k = KeyStore::new();
        k.insert_peer(HOA, sa.clone()).unwrap();
        k.insert_nai(NAI, sa.clone()).unwrap();
        k.insert_nai(NAI2, sa.clone()).unwrap();
        k.insert_nai(NAI3, sa).unwrap();
        k.insert_agent(FA, fa_sa()).unwrap();
        k
    }

    fn keys() -> KeyStore {
        keys_with(mn_sa())
    }

    fn config(address: Ipv4Addr) -> HaConfig {
        HaConfig::new(address, vec!["10.10.1.0/24".parse().unwrap()])
    }

    fn ha_at(address: Ipv4Addr) -> HomeAgent {
        HomeAgent::new(config(address), keys(), 7)
    }

    /// The clocks `secs` seconds after the start: HA wall clock = ID0 + secs.
    fn at(secs: u64) -> Now {
        Now::new(
            Instant::from_secs(1000 + secs),
            NtpTimestamp(ID0.wrapping_add(secs << 32)),
        )
    }

    fn ts(secs: u64) -> u64 {
        ID0.wrapping_add(secs << 32)
    }

    fn repr(flags: u8, lifetime: u16, hoa: Ipv4Addr, ha: Ipv4Addr, coa: Ipv4Addr, id: u64) -> RequestRepr {
        RequestRepr {
            flags: RequestFlags(flags),
            lifetime,
            home_address: hoa,
            home_agent: ha,
            care_of_address: coa,
            identification: id,
        }
    }

    /// Builds a request: `pre` extensions, MN-HA with `sa`, then optionally FA-HA with `fa`.
    fn request(
        r: &RequestRepr,
        pre: &[ExtensionBody<'_>],
        sa: &SecurityAssociation,
        fa: Option<&SecurityAssociation>,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = MessageWriter::request(&mut buf, r, &Dialect::default()).unwrap();
        for e in pre {
            w.push(e).unwrap();
        }
        w.push_auth(AuthKind::MobileHome, sa).unwrap();
        if let Some(fa) = fa {
            w.push_auth(AuthKind::ForeignHome, fa).unwrap();
        }
        let n = w.len();
        buf.truncate(n);
        buf
    }

    /// A co-located registration of HOA at `coa` (D = 1, sent from `coa`).
    fn colocated(ha: Ipv4Addr, coa: Ipv4Addr, lifetime: u16, id: u64) -> Vec<u8> {
        request(&repr(0x20, lifetime, HOA, ha, coa, id), &[], &mn_sa(), None)
    }

    fn dgram(src: SocketAddrV4, dst: Ipv4Addr, payload: &[u8]) -> Datagram<'_> {
        Datagram {
            src,
            dst: SocketAddrV4::new(dst, MIP_PORT),
            ttl: 64,
            payload,
        }
    }

    fn from(a: Ipv4Addr) -> SocketAddrV4 {
        SocketAddrV4::new(a, 40000)
    }

    fn run(ha: &mut HomeAgent, now: Now, src: SocketAddrV4, payload: &[u8]) -> Vec<HaOutput> {
        let dst = ha.config().address;
        let mut out = Vec::new();
        ha.handle(now, HaInput::Request(dgram(src, dst, payload)), &mut out);
        out
    }

    fn tick(ha: &mut HomeAgent, now: Now) -> Vec<HaOutput> {
        let mut out = Vec::new();
        ha.handle(now, HaInput::Tick, &mut out);
        out
    }

    fn sends(out: &[HaOutput]) -> Vec<&Transmit> {
        out.iter()
            .filter_map(|o| match o {
                HaOutput::Send(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn the_send(out: &[HaOutput]) -> &Transmit {
        let s = sends(out);
        assert_eq!(s.len(), 1, "expected exactly one datagram: {out:#?}");
        s[0]
    }

    fn drops(out: &[HaOutput]) -> Vec<DropReason> {
        out.iter()
            .filter_map(|o| match o {
                HaOutput::Drop(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    fn changes(out: &[HaOutput]) -> Vec<(BindingChangeKind, Ipv4Addr)> {
        out.iter()
            .filter_map(|o| match o {
                HaOutput::Binding(c) => Some((c.kind, c.binding.care_of_address)),
                _ => None,
            })
            .collect()
    }

    fn intercepts(out: &[HaOutput]) -> Vec<(Ipv4Addr, bool)> {
        out.iter()
            .filter_map(|o| match o {
                HaOutput::Intercept { home_address, active } => Some((*home_address, *active)),
                _ => None,
            })
            .collect()
    }

    fn outcome(out: &[HaOutput]) -> RegistrationOutcome {
        let o: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                HaOutput::Outcome(x) => Some(*x),
                _ => None,
            })
            .collect();
        assert_eq!(o.len(), 1, "{out:#?}");
        o[0]
    }

    /// The reply, after checking that it carries exactly one MN-HA valid under `sa`.
    fn reply_with<'a>(out: &'a [HaOutput], sa: &SecurityAssociation) -> crate::wire::Reply<'a> {
        let t = the_send(out);
        let rep = crate::wire::Reply::parse(&t.payload, &Dialect::default()).unwrap();
        assert_eq!(rep.auth_count(AuthKind::MobileHome), 1);
        sa.verify(&t.payload, &rep.auth(AuthKind::MobileHome).unwrap()).unwrap();
        rep
    }

    fn reply(out: &[HaOutput]) -> crate::wire::Reply<'_> {
        reply_with(out, &mn_sa())
    }

    fn code(out: &[HaOutput]) -> ReplyCode {
        reply(out).repr.code
    }

    // --- spec vectors ---

    /// The proxy's relayed request V2 (CoA = MIPP-Priv, D = 1, from MIPP-Priv) is accepted by an HA at 10.10.1.1
    /// with exactly the bytes of V3, sent back to the proxy's source address and port from 10.10.1.1:434.
    #[test]
    fn case_32_v2_relay_gets_exact_v3_from_ha() {
        let mut ha = ha_at(HA);
        let src = SocketAddrV4::new(MIPP_PRIV, 50434);
        let out = run(&mut ha, at(0), src, &h(V2));
        let t = the_send(&out);
        assert_eq!(t.payload, h(V3));
        assert_eq!(t.dst, src);
        assert_eq!(t.src, SocketAddrV4::new(HA, 434));
        assert_eq!(changes(&out), vec![(BindingChangeKind::Created, MIPP_PRIV)]);
        assert_eq!(intercepts(&out), vec![(HOA, true)]);
        let b = ha.bindings().get_by_home(HOA).unwrap().bindings()[0];
        assert_eq!(b.tunnel.addr, MIPP_PRIV);
        assert_eq!(b.tunnel.encapsulation, Encapsulation::IpInIp);
        assert_eq!(b.lifetime, 600);
        assert!(!b.reverse_tunnel);
        let o = outcome(&out);
        assert_eq!(
            (o.code, o.lifetime, o.home_agent, o.nat_detected),
            (ReplyCode::Accepted, 600, Some(HA), false)
        );
        assert_eq!(ha.next_timer(), Some(Instant::from_secs(1600)));
    }

    /// V1 at an HA whose clock is 272 s ahead (HA time ec4e5b10.0): 133 with exactly the bytes of V7 (spec §10
    /// cases 25/26 reply shape), nothing bound.
    #[test]
    fn case_26_clock_skew_gets_exact_v7() {
        let mut ha = ha_at(MIPP_PUB);
        let now = Now::new(Instant::from_secs(5), NtpTimestamp::new(0xec4e_5b10, 0));
        let out = run(&mut ha, now, from(COA), &h(V1));
        assert_eq!(the_send(&out).payload, h(V7));
        assert!(changes(&out).is_empty());
        assert!(ha.bindings().is_empty());
    }

    /// Case 26 proper: a timestamp 8 s ahead of the HA clock with the default 7 s tolerance → 133; 6 s → accepted.
    #[test]
    fn case_26_timestamp_8s_ahead() {
        let mut ha = ha_at(HA);
        let out = run(&mut ha, at(0), from(COA), &colocated(HA, COA, 600, ts(8)));
        assert_eq!(code(&out), ReplyCode::IdentificationMismatch);
        assert_eq!(
            reply(&out).repr.identification,
            (ID0 & 0xFFFF_FFFF_0000_0000) | (ts(8) & 0xFFFF_FFFF)
        );
        let out = run(&mut ha, at(0), from(COA), &colocated(HA, COA, 600, ts(6)));
        assert_eq!(code(&out), ReplyCode::Accepted);
    }

    /// Case 25: the same timestamp again → 133 with HA time in the high 32 bits; the resynchronised next request
    /// succeeds.
    #[test]
    fn case_25_equal_timestamp_then_resync() {
        let mut ha = ha_at(HA);
        let first = colocated(HA, COA, 600, ts(0));
        assert_eq!(code(&run(&mut ha, at(0), from(COA), &first)), ReplyCode::Accepted);
        let out = run(&mut ha, at(2), from(COA), &first);
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::IdentificationMismatch);
        assert_eq!(rep.repr.identification >> 32, u64::from(at(2).ntp.seconds()));
        assert_eq!(rep.repr.identification & 0xFFFF_FFFF, ID0 & 0xFFFF_FFFF);
        // No binding change on 133; the MN resynchronises from the high 32 bits.
        assert!(changes(&out).is_empty());
        let resynced = (rep.repr.identification & 0xFFFF_FFFF_0000_0000) | 0x8000_0000;
        let out = run(&mut ha, at(3), from(COA), &colocated(HA, COA, 600, resynced));
        assert_eq!(code(&out), ReplyCode::Accepted);
        assert_eq!(reply(&out).repr.identification, resynced);
    }

    /// Case 27: within tolerance but lower than the last accepted → 133.
    #[test]
    fn case_27_lower_than_last_accepted() {
        let mut ha = ha_at(HA);
        let out = run(&mut ha, at(0), from(COA), &colocated(HA, COA, 600, ts(3)));
        assert_eq!(code(&out), ReplyCode::Accepted);
        let out = run(&mut ha, at(1), from(COA), &colocated(HA, COA, 600, ts(1)));
        assert_eq!(code(&out), ReplyCode::IdentificationMismatch);
    }

    /// Case 30: nonces. First request without a nonce → 133 carrying N1; with N1 → accepted, reply carries N2; a
    /// stale nonce → 133 with N3; with N3 → accepted.
    #[test]
    fn case_30_nonce_stale_then_resync() {
        let mut ha = HomeAgent::new(config(HA), keys_with(nonce_sa()), 1);
        let sa = nonce_sa();
        let req = |id: u64| request(&repr(0x20, 600, HOA, HA, COA, id), &[], &sa, None);
        let out = run(&mut ha, at(0), from(COA), &req(0x0000_0000_0000_0001));
        let rep = reply_with(&out, &sa);
        assert_eq!(rep.repr.code, ReplyCode::IdentificationMismatch);
        assert_eq!(rep.repr.identification & 0xFFFF_FFFF, 1);
        let n1 = rep.repr.identification >> 32;

        let out = run(&mut ha, at(1), from(COA), &req((n1 << 32) | 2));
        let rep = reply_with(&out, &sa);
        assert_eq!(rep.repr.code, ReplyCode::Accepted);
        let n2 = rep.repr.identification >> 32;
        assert_ne!(n1, n2);
        assert_eq!(rep.repr.identification & 0xFFFF_FFFF, 2);

        // Stale: N1 again, new MN nonce.
        let out = run(&mut ha, at(2), from(COA), &req((n1 << 32) | 3));
        let rep = reply_with(&out, &sa);
        assert_eq!(rep.repr.code, ReplyCode::IdentificationMismatch);
        let n3 = rep.repr.identification >> 32;
        assert_ne!(n3, n2);

        let out = run(&mut ha, at(3), from(COA), &req((n3 << 32) | 4));
        assert_eq!(reply_with(&out, &sa).repr.code, ReplyCode::Accepted);
    }

    /// Cases 29 and 65: a nonce-style retransmission (identical request) is accepted again with the same nonce,
    /// and, being a duplicate (same CoA and Identification), does not extend the binding.
    #[test]
    fn case_29_65_nonce_retransmission_accepted_not_extended() {
        let mut ha = HomeAgent::new(config(HA), keys_with(nonce_sa()), 1);
        let sa = nonce_sa();
        let req = |id: u64| request(&repr(0x20, 600, HOA, HA, COA, id), &[], &sa, None);
        let out = run(&mut ha, at(0), from(COA), &req(5));
        let n1 = reply_with(&out, &sa).repr.identification >> 32;
        let rq = req((n1 << 32) | 6);
        let out = run(&mut ha, at(1), from(COA), &rq);
        let first = reply_with(&out, &sa).repr;
        assert_eq!((first.code, first.lifetime), (ReplyCode::Accepted, 600));
        let expires = ha.bindings().get_by_home(HOA).unwrap().bindings()[0].expires_at;

        // The reply was lost; 100 s later the MN resends the identical request.
        let out = run(&mut ha, at(101), from(COA), &rq);
        let again = reply_with(&out, &sa).repr;
        assert_eq!(again.code, ReplyCode::Accepted);
        assert_eq!(again.identification, first.identification, "same nonce repeated");
        assert_eq!(again.lifetime, 500, "remaining lifetime, not extended");
        assert!(changes(&out).is_empty());
        assert_eq!(
            ha.bindings().get_by_home(HOA).unwrap().bindings()[0].expires_at,
            expires
        );

        // The next request uses the repeated nonce and is fresh.
        let out = run(
            &mut ha,
            at(102),
            from(COA),
            &req((first.identification & 0xFFFF_FFFF_0000_0000) | 7),
        );
        assert_eq!(reply_with(&out, &sa).repr.code, ReplyCode::Accepted);
        assert_eq!(changes(&out), vec![(BindingChangeKind::Refreshed, COA)]);
    }

    /// Case 65 with timestamps: resending the same accepted request is a replay (133) and changes nothing.
    #[test]
    fn case_65_timestamp_duplicate_does_not_extend() {
        let mut ha = ha_at(HA);
        let rq = colocated(HA, COA, 600, ts(0));
        run(&mut ha, at(0), from(COA), &rq);
        let expires = ha.bindings().get_by_home(HOA).unwrap().bindings()[0].expires_at;
        let out = run(&mut ha, at(50), from(COA), &rq);
        assert_eq!(code(&out), ReplyCode::IdentificationMismatch);
        assert_eq!(
            ha.bindings().get_by_home(HOA).unwrap().bindings()[0].expires_at,
            expires
        );
    }

    /// Case 61: V1 then V8 (lifetime 0, CoA = HoA) at an HA at 198.51.100.10: every binding is removed, the reply
    /// has lifetime 0, interception stops.
    #[test]
    fn case_61_v8_deregisters_all() {
        let mut ha = ha_at(MIPP_PUB);
        let out = run(&mut ha, at(0), from(COA), &h(V1));
        assert_eq!(code(&out), ReplyCode::Accepted);
        assert!(ha.bindings().get_by_home(HOA).unwrap().bindings()[0].reverse_tunnel);
        let now = Now::new(Instant::from_secs(1512), NtpTimestamp(0xec4e5c00_00000001));
        let out = run(&mut ha, now, from(HOA), &h(V8));
        let rep = reply(&out);
        assert_eq!((rep.repr.code, rep.repr.lifetime), (ReplyCode::Accepted, 0));
        assert_eq!(rep.repr.identification, 0xec4e5c00_00000001);
        assert_eq!(rep.repr.home_agent, MIPP_PUB);
        assert_eq!(changes(&out), vec![(BindingChangeKind::Removed, COA)]);
        assert_eq!(intercepts(&out), vec![(HOA, false)]);
        assert!(ha.bindings().is_empty());
        assert_eq!(ha.next_timer(), None);
    }

    /// Case 62: with two simultaneous bindings, deregistering one CoA removes only that one.
    #[test]
    fn case_62_deregister_one_of_two() {
        let mut ha = ha_at(HA);
        let s = 0x80 | 0x20;
        let r1 = request(&repr(s, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None);
        let r2 = request(&repr(s, 300, HOA, HA, COA2, ts(1)), &[], &mn_sa(), None);
        run(&mut ha, at(0), from(COA), &r1);
        let out = run(&mut ha, at(1), from(COA2), &r2);
        assert_eq!(code(&out), ReplyCode::Accepted);
        assert_eq!(changes(&out), vec![(BindingChangeKind::Created, COA2)]);
        assert!(intercepts(&out).is_empty());
        assert_eq!(ha.bindings().len(), 2);
        let dereg = request(&repr(0, 0, HOA, HA, COA2, ts(2)), &[], &mn_sa(), None);
        let out = run(&mut ha, at(2), from(COA2), &dereg);
        assert_eq!((code(&out), reply(&out).repr.lifetime), (ReplyCode::Accepted, 0));
        assert_eq!(changes(&out), vec![(BindingChangeKind::Removed, COA2)]);
        assert!(intercepts(&out).is_empty());
        let e = ha.bindings().get_by_home(HOA).unwrap();
        assert_eq!(e.bindings().len(), 1);
        assert_eq!(e.bindings()[0].care_of_address, COA);
    }

    /// Case 64: lifetime 0xFFFF with a maximum of 600 → 600; a shorter request is never lengthened.
    #[test]
    fn case_64_infinite_lifetime_capped() {
        let mut cfg = config(HA);
        cfg.max_lifetime = 600;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let out = run(&mut ha, at(0), from(COA), &colocated(HA, COA, 0xFFFF, ts(0)));
        assert_eq!(reply(&out).repr.lifetime, 600);
        let out = run(&mut ha, at(1), from(COA), &colocated(HA, COA, 90, ts(1)));
        assert_eq!(reply(&out).repr.lifetime, 90);
        // An HA that allows infinity grants it, and such a binding never sets a timer.
        let mut cfg = config(HA);
        cfg.max_lifetime = 0xFFFF;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let out = run(&mut ha, at(0), from(COA), &colocated(HA, COA, 0xFFFF, ts(0)));
        assert_eq!(reply(&out).repr.lifetime, 0xFFFF);
        assert_eq!(ha.next_timer(), None);
    }

    // --- authentication ---

    /// Case 18, default policy: any flipped bit in the covered bytes or the authenticator → silent drop.
    #[test]
    fn case_18_bad_authenticator_dropped_by_default() {
        let v1 = h(V1);
        for i in 0..46 {
            for bit in [0x01u8, 0x80] {
                let mut ha = ha_at(MIPP_PUB);
                let mut m = v1.clone();
                m[i] ^= bit;
                let out = run(&mut ha, at(0), from(COA), &m);
                assert!(sends(&out).is_empty(), "byte {i}");
                // Flipping the SPI or the home address loses the SA, flipping the MN-HA type or length breaks
                // the parse; everything else is a bad authenticator.
                assert_eq!(drops(&out).len(), 1, "byte {i}: {out:?}");
            }
        }
        let mut m = v1.clone();
        m[20] ^= 1;
        let out = run(&mut ha_at(MIPP_PUB), at(0), from(COA), &m);
        assert_eq!(drops(&out), vec![DropReason::BadAuthenticator]);
        let mut m = v1;
        m[45] ^= 1;
        let out = run(&mut ha_at(MIPP_PUB), at(0), from(COA), &m);
        assert_eq!(drops(&out), vec![DropReason::BadAuthenticator]);
    }

    /// Case 18, reply policy: 131 with a valid MN-HA, nothing bound, replay state untouched.
    #[test]
    fn case_18_bad_authenticator_gets_131_by_policy() {
        let mut cfg = config(MIPP_PUB);
        cfg.reply_on_auth_failure = true;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        for i in [1usize, 3, 13, 21, 40] {
            let mut m = h(V1);
            m[i] ^= 0x04;
            let out = run(&mut ha, at(0), from(COA), &m);
            let rep = reply(&out);
            assert_eq!(rep.repr.code, ReplyCode::HaMnAuthFailed, "byte {i}");
            assert_eq!(
                rep.repr.identification & 0xFFFF_FFFF,
                u64::from(u32::from_be_bytes(m[20..24].try_into().unwrap()))
            );
            assert_eq!(the_send(&out).dst, from(COA));
            assert!(changes(&out).is_empty());
        }
        // The genuine V1 is still fresh afterwards.
        let out = run(&mut ha, at(0), from(COA), &h(V1));
        assert_eq!(code(&out), ReplyCode::Accepted);
    }

    /// A bad MN-HA in a request with a valid FA-HA is answered with 131 whatever the policy (RFC 5944 §3.8.2.1),
    /// and the reply carries an FA-HA.
    #[test]
    fn bad_mn_ha_with_valid_fa_ha_gets_131() {
        let mut ha = ha_at(HA);
        let wrong = sa_with("ffffffffffffffffffffffffffffffff", SPI, ReplayStyle::default());
        let m = request(&repr(0x02, 600, HOA, HA, FA, ts(0)), &[], &wrong, Some(&fa_sa()));
        let out = run(&mut ha, at(0), from(FA), &m);
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::HaMnAuthFailed);
        fa_sa()
            .verify(&the_send(&out).payload, &rep.auth(AuthKind::ForeignHome).unwrap())
            .unwrap();
    }

    /// Cases 20–22: reserved SPI, unknown SPI, no MN-HA → silently discarded, even with the reply policy on.
    #[test]
    fn case_20_21_22_silent_drops() {
        let mut cfg = config(HA);
        cfg.reply_on_auth_failure = true;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let r = repr(0x20, 600, HOA, HA, COA, ts(0));
        for (spi, why) in [
            (0xFF, DropReason::NoSecurityAssociation),
            (0x200, DropReason::NoSecurityAssociation),
        ] {
            let m = request(&r, &[], &sa_with(KEY, spi.max(256), ReplayStyle::default()), None);
            let mut m = m;
            m[26..30].copy_from_slice(&u32::to_be_bytes(spi));
            let out = run(&mut ha, at(0), from(COA), &m);
            assert_eq!(out, vec![HaOutput::Drop(why)], "SPI {spi:#x}");
        }
        let mut buf = [0u8; 24];
        r.emit(&mut buf).unwrap();
        let out = run(&mut ha, at(0), from(COA), &buf);
        assert_eq!(out, vec![HaOutput::Drop(DropReason::NoAuthExtension)]);
        // Only an MN-FA: still no authorization-enabling extension.
        let mut w_buf = vec![0u8; 64];
        let mut w = MessageWriter::request(&mut w_buf, &r, &Dialect::default()).unwrap();
        w.push_auth(AuthKind::MobileForeign, &mn_sa()).unwrap();
        let n = w.len();
        let out = run(&mut ha, at(0), from(COA), &w_buf[..n]);
        assert_eq!(out, vec![HaOutput::Drop(DropReason::NoAuthExtension)]);
    }

    /// Cases 3, 5, 6: malformed input is dropped without a reply; a reply or tunnel data on 434 is unexpected.
    #[test]
    fn case_03_05_06_malformed_dropped() {
        let mut ha = ha_at(MIPP_PUB);
        let v1 = h(V1);
        let out = run(&mut ha, at(0), from(COA), &v1[..23]);
        assert!(matches!(drops(&out)[..], [DropReason::Malformed(_)]));
        let out = run(&mut ha, at(0), from(COA), &v1[..40]);
        assert!(matches!(drops(&out)[..], [DropReason::Malformed(_)]));
        let mut m = v1[..24].to_vec();
        m.extend_from_slice(&[100, 2, 0, 0]);
        m.extend_from_slice(&v1[24..]);
        let out = run(&mut ha, at(0), from(COA), &m);
        assert!(matches!(drops(&out)[..], [DropReason::Malformed(_)]));
        let out = run(&mut ha, at(0), from(COA), &h(V3));
        assert_eq!(drops(&out), vec![DropReason::UnexpectedMessage]);
        let out = run(&mut ha, at(0), from(COA), &[]);
        assert!(matches!(drops(&out)[..], [DropReason::Malformed(_)]));
        assert!(ha.bindings().is_empty());
    }

    /// Case 7: an unknown skippable extension before MN-HA is authenticated and the request accepted.
    #[test]
    fn case_07_skippable_extension_accepted() {
        let mut ha = ha_at(HA);
        let m = request(
            &repr(0x20, 600, HOA, HA, COA, ts(0)),
            &[ExtensionBody::Skippable {
                ty: 200,
                data: &[1, 2, 3],
            }],
            &mn_sa(),
            None,
        );
        assert_eq!(code(&run(&mut ha, at(0), from(COA), &m)), ReplyCode::Accepted);
    }

    // --- FA-HA (132) ---

    #[test]
    fn fa_ha_required_valid_and_returned() {
        let mut ha = ha_at(HA);
        let r = repr(0x02, 600, HOA, HA, FA, ts(0));
        // The HA shares an SA with the FA: a registration without FA-HA → 132, with an FA-HA in the reply.
        let out = run(&mut ha, at(0), from(FA), &request(&r, &[], &mn_sa(), None));
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::HaFaAuthFailed);
        fa_sa()
            .verify(&the_send(&out).payload, &rep.auth(AuthKind::ForeignHome).unwrap())
            .unwrap();
        // A bad FA-HA → 132.
        let bad = sa_with(KEY, FA_SPI, ReplayStyle::default());
        let r = repr(0x02, 600, HOA, HA, FA, ts(1));
        let out = run(&mut ha, at(1), from(FA), &request(&r, &[], &mn_sa(), Some(&bad)));
        assert_eq!(code(&out), ReplyCode::HaFaAuthFailed);
        // Two FA-HA → 132.
        let r = repr(0x02, 600, HOA, HA, FA, ts(2));
        let mut m = request(&r, &[], &mn_sa(), Some(&fa_sa()));
        let fa_ext = m[m.len() - 22..].to_vec();
        m.extend_from_slice(&fa_ext);
        let out = run(&mut ha, at(2), from(FA), &m);
        assert_eq!(code(&out), ReplyCode::HaFaAuthFailed);
        assert!(ha.bindings().is_empty());
        // Exactly one valid FA-HA → accepted, reply has MN-HA then FA-HA; tunnel to the FA care-of address.
        let r = repr(0x02, 600, HOA, HA, FA, ts(3));
        let out = run(&mut ha, at(3), from(FA), &request(&r, &[], &mn_sa(), Some(&fa_sa())));
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::Accepted);
        let fa_ext = rep.auth(AuthKind::ForeignHome).unwrap();
        assert!(fa_ext.offset > rep.auth(AuthKind::MobileHome).unwrap().offset);
        fa_sa().verify(&the_send(&out).payload, &fa_ext).unwrap();
        assert_eq!(ha.bindings().get_by_home(HOA).unwrap().bindings()[0].tunnel.addr, FA);
        // Deregistration without FA-HA is accepted, and its reply carries none.
        let r = repr(0, 0, HOA, HA, HOA, ts(4));
        let out = run(&mut ha, at(4), from(FA), &request(&r, &[], &mn_sa(), None));
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::Accepted);
        assert_eq!(rep.auth_count(AuthKind::ForeignHome), 0);
        assert!(ha.bindings().is_empty());
    }

    #[test]
    fn fa_ha_with_unknown_spi_dropped() {
        let mut ha = ha_at(HA);
        let stranger = sa_with(FA_KEY, 0x301, ReplayStyle::default());
        let r = repr(0x02, 600, HOA, HA, FA, ts(0));
        let out = run(&mut ha, at(0), from(FA), &request(&r, &[], &mn_sa(), Some(&stranger)));
        assert_eq!(out, vec![HaOutput::Drop(DropReason::UnknownFaHaSpi)]);
        let out = run(&mut ha, at(0), from(COA2), &request(&r, &[], &mn_sa(), Some(&fa_sa())));
        assert_eq!(out, vec![HaOutput::Drop(DropReason::UnknownFaHaSpi)]);
    }

    // --- 136, 134, 137, 138, 139, 129 ---

    #[test]
    fn unknown_home_agent_136() {
        let mut ha = ha_at(HA);
        // Home Agent field names another agent (e.g. V1, addressed to the proxy).
        let out = run(&mut ha, at(0), from(COA), &h(V1));
        let rep = reply(&out);
        assert_eq!(rep.repr.code, ReplyCode::UnknownHomeAgent);
        assert_eq!(rep.repr.home_agent, HA);
        assert_eq!(the_send(&out).src, SocketAddrV4::new(HA, 434));
        // Sent to the home subnet's broadcast address (dynamic HA discovery): 136 naming the unicast address.
        let m = colocated(Ipv4Addr::new(10, 10, 1, 255), COA, 600, ts(1));
        let mut out = Vec::new();
        ha.handle(
            at(1),
            HaInput::Request(dgram(from(COA), Ipv4Addr::new(10, 10, 1, 255), &m)),
            &mut out,
        );
        let rep = reply(&out);
        assert_eq!((rep.repr.code, rep.repr.home_agent), (ReplyCode::UnknownHomeAgent, HA));
        assert_eq!(the_send(&out).src, SocketAddrV4::new(HA, 434));
        let m = colocated(HA, COA, 600, ts(2));
        let mut out = Vec::new();
        ha.handle(
            at(2),
            HaInput::Request(dgram(from(COA), Ipv4Addr::BROADCAST, &m)),
            &mut out,
        );
        assert_eq!(code(&out), ReplyCode::UnknownHomeAgent);
        assert!(ha.bindings().is_empty());
    }

    #[test]
    fn reserved_bits_ignored_unless_strict() {
        let m = request(&repr(0x20 | 0x05, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None);
        assert_eq!(code(&run(&mut ha_at(HA), at(0), from(COA), &m)), ReplyCode::Accepted);
        let mut cfg = config(HA);
        cfg.strict_reserved_bits = true;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        assert_eq!(
            code(&run(&mut ha, at(0), from(COA), &m)),
            ReplyCode::HaPoorlyFormedRequest
        );
    }

    #[test]
    fn reverse_tunnel_137_138() {
        let mut cfg = config(HA);
        cfg.reverse_tunnel.supported = false;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let t = request(&repr(0x22, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None);
        assert_eq!(
            code(&run(&mut ha, at(0), from(COA), &t)),
            ReplyCode::HaReverseTunnelUnavailable
        );

        let mut cfg = config(HA);
        cfg.reverse_tunnel.mandatory = true;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let no_t = colocated(HA, COA, 600, ts(0));
        let out = run(&mut ha, at(0), from(COA), &no_t);
        assert_eq!(code(&out), ReplyCode::HaReverseTunnelMandatory);
        assert_eq!(reply(&out).repr.lifetime, 600, "denials copy the requested lifetime");
        let t = request(&repr(0x22, 600, HOA, HA, COA, ts(1)), &[], &mn_sa(), None);
        assert_eq!(code(&run(&mut ha, at(1), from(COA), &t)), ReplyCode::Accepted);
        // A deregistration without T is still accepted.
        let dereg = request(&repr(0, 0, HOA, HA, HOA, ts(2)), &[], &mn_sa(), None);
        assert_eq!(code(&run(&mut ha, at(2), from(HOA), &dereg)), ReplyCode::Accepted);
    }

    #[test]
    fn unsupported_encapsulation_139() {
        let m = request(&repr(0x20 | 0x08, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None);
        assert_eq!(
            code(&run(&mut ha_at(HA), at(0), from(COA), &m)),
            ReplyCode::HaEncapUnavailable
        );
    }

    #[test]
    fn home_address_outside_home_networks_129() {
        let mut k = keys();
        let stranger = Ipv4Addr::new(10, 20, 0, 5);
        k.insert_peer(stranger, mn_sa()).unwrap();
        let mut ha = HomeAgent::new(config(HA), k, 1);
        let m = request(&repr(0x20, 600, stranger, HA, COA, ts(0)), &[], &mn_sa(), None);
        let out = run(&mut ha, at(0), from(COA), &m);
        assert_eq!(code(&out), ReplyCode::HaProhibited);
        assert_eq!(reply(&out).repr.home_address, stranger);
        assert!(ha.bindings().is_empty());
    }

    /// Home address 0.0.0.0 without an NAI: nothing identifies the node → dropped.
    #[test]
    fn zero_home_address_without_nai_dropped() {
        let mut ha = ha_at(HA);
        let m = request(
            &repr(0x20, 600, Ipv4Addr::UNSPECIFIED, HA, COA, ts(0)),
            &[],
            &mn_sa(),
            None,
        );
        assert_eq!(
            run(&mut ha, at(0), from(COA), &m),
            vec![HaOutput::Drop(DropReason::NoIdentity)]
        );
    }

    // --- RFC 2794 assignment ---

    fn pool_ha(first: u8, last: u8) -> HomeAgent {
        let mut cfg = config(HA);
        cfg.address_pool = Some(AddressPool {
            first: Ipv4Addr::new(10, 10, 1, first),
            last: Ipv4Addr::new(10, 10, 1, last),
        });
        HomeAgent::new(cfg, keys(), 1)
    }

    fn nai_request(nai: &str, hoa: Ipv4Addr, coa: Ipv4Addr, lifetime: u16, id: u64) -> Vec<u8> {
        request(
            &repr(0x20, lifetime, hoa, HA, coa, id),
            &[ExtensionBody::Nai(nai.as_bytes())],
            &mn_sa(),
            None,
        )
    }

    #[test]
    fn nai_assignment_and_pool_exhaustion() {
        let mut ha = pool_ha(100, 101);
        let zero = Ipv4Addr::UNSPECIFIED;
        let a100 = Ipv4Addr::new(10, 10, 1, 100);
        let a101 = Ipv4Addr::new(10, 10, 1, 101);

        let out = run(&mut ha, at(0), from(COA), &nai_request(NAI, zero, COA, 300, ts(0)));
        let rep = reply(&out);
        assert_eq!((rep.repr.code, rep.repr.home_address), (ReplyCode::Accepted, a100));
        assert_eq!(rep.nai(), Some(NAI.as_bytes()), "the reply echoes the NAI");
        let nai_ext = rep
            .extensions()
            .find(|e| matches!(e.body, ExtensionBody::Nai(_)))
            .unwrap();
        assert!(nai_ext.offset < rep.auth(AuthKind::MobileHome).unwrap().offset);
        assert_eq!(intercepts(&out), vec![(a100, true)]);
        match out.iter().find(|o| matches!(o, HaOutput::Binding(_))).unwrap() {
            HaOutput::Binding(c) => assert_eq!((c.home_address, c.nai.as_deref()), (a100, Some(NAI))),
            _ => unreachable!(),
        }
        assert_eq!(outcome(&out).home_address, a100);

        // The same NAI again (HoA 0) keeps its address.
        let out = run(&mut ha, at(1), from(COA), &nai_request(NAI, zero, COA, 300, ts(1)));
        assert_eq!(reply(&out).repr.home_address, a100);
        // A second NAI gets the next one; a third finds the pool exhausted → 130.
        let out = run(&mut ha, at(2), from(COA2), &nai_request(NAI2, zero, COA2, 300, ts(2)));
        assert_eq!(reply(&out).repr.home_address, a101);
        let out = run(&mut ha, at(3), from(COA2), &nai_request(NAI3, zero, COA2, 300, ts(3)));
        let rep = reply(&out);
        assert_eq!(
            (rep.repr.code, rep.repr.home_address),
            (ReplyCode::HaInsufficientResources, zero)
        );
        assert_eq!(rep.nai(), Some(NAI3.as_bytes()));

        // The node re-registers with its assigned address (SA found by NAI): accepted.
        let out = run(&mut ha, at(4), from(COA), &nai_request(NAI, a100, COA, 300, ts(4)));
        assert_eq!(code(&out), ReplyCode::Accepted);
        // Another NAI cannot claim it.
        let out = run(&mut ha, at(5), from(COA2), &nai_request(NAI3, a100, COA2, 300, ts(5)));
        assert_eq!(code(&out), ReplyCode::HaProhibited);
        // Nor a home address outside the pool that it has no key for.
        let other = Ipv4Addr::new(10, 10, 1, 60);
        let out = run(&mut ha, at(6), from(COA2), &nai_request(NAI3, other, COA2, 300, ts(6)));
        assert_eq!(code(&out), ReplyCode::HaProhibited);

        // NAI2 deregisters (HoA 0, CoA 0 = "all"): its address returns to the pool and NAI3 gets it.
        let out = run(&mut ha, at(7), from(COA2), &nai_request(NAI2, zero, zero, 0, ts(7)));
        assert_eq!((code(&out), reply(&out).repr.home_address), (ReplyCode::Accepted, a101));
        assert_eq!(intercepts(&out), vec![(a101, false)]);
        let out = run(&mut ha, at(8), from(COA2), &nai_request(NAI3, zero, COA2, 300, ts(8)));
        assert_eq!(reply(&out).repr.home_address, a101);
    }

    #[test]
    fn pool_address_freed_on_expiry() {
        let mut ha = pool_ha(100, 100);
        let zero = Ipv4Addr::UNSPECIFIED;
        let a100 = Ipv4Addr::new(10, 10, 1, 100);
        run(&mut ha, at(0), from(COA), &nai_request(NAI, zero, COA, 30, ts(0)));
        let out = run(&mut ha, at(1), from(COA2), &nai_request(NAI2, zero, COA2, 30, ts(1)));
        assert_eq!(code(&out), ReplyCode::HaInsufficientResources);
        let out = tick(&mut ha, at(30));
        assert_eq!(intercepts(&out), vec![(a100, false)]);
        let out = run(&mut ha, at(31), from(COA2), &nai_request(NAI2, zero, COA2, 30, ts(31)));
        assert_eq!(reply(&out).repr.home_address, a100);
        // After expiry the first node may come back with its old address only if it is free: it is not.
        let out = run(&mut ha, at(32), from(COA), &nai_request(NAI, a100, COA, 30, ts(32)));
        assert_eq!(code(&out), ReplyCode::HaProhibited);
    }

    #[test]
    fn zero_home_address_without_pool_129() {
        let mut ha = ha_at(HA);
        let out = run(
            &mut ha,
            at(0),
            from(COA),
            &nai_request(NAI, Ipv4Addr::UNSPECIFIED, COA, 300, ts(0)),
        );
        assert_eq!(code(&out), ReplyCode::HaProhibited);
    }

    // --- simultaneous bindings ---

    #[test]
    fn simultaneous_bindings() {
        let mut ha = ha_at(HA);
        let s = 0x80 | 0x20;
        run(
            &mut ha,
            at(0),
            from(COA),
            &request(&repr(s, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None),
        );
        let out = run(
            &mut ha,
            at(1),
            from(COA2),
            &request(&repr(s, 600, HOA, HA, COA2, ts(1)), &[], &mn_sa(), None),
        );
        assert_eq!(code(&out), ReplyCode::Accepted);
        assert_eq!(ha.bindings().len(), 2);
        // Refresh one of them with S: the other stays.
        let out = run(
            &mut ha,
            at(2),
            from(COA),
            &request(&repr(s, 600, HOA, HA, COA, ts(2)), &[], &mn_sa(), None),
        );
        assert_eq!(changes(&out), vec![(BindingChangeKind::Refreshed, COA)]);
        assert_eq!(ha.bindings().len(), 2);
        // Without S a new CoA replaces both.
        let coa3 = Ipv4Addr::new(192, 0, 2, 79);
        let out = run(&mut ha, at(3), from(coa3), &colocated(HA, coa3, 600, ts(3)));
        assert_eq!(
            changes(&out),
            vec![
                (BindingChangeKind::Removed, COA),
                (BindingChangeKind::Removed, COA2),
                (BindingChangeKind::Created, coa3)
            ]
        );
        assert!(intercepts(&out).is_empty());
        assert_eq!(ha.bindings().len(), 1);
    }

    /// S set but simultaneous bindings disabled: the binding replaces the others and the code is 1.
    #[test]
    fn simultaneous_disabled_gives_code_1() {
        let mut cfg = config(HA);
        cfg.simultaneous_bindings = false;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let s = 0x80 | 0x20;
        let out = run(
            &mut ha,
            at(0),
            from(COA),
            &request(&repr(s, 600, HOA, HA, COA, ts(0)), &[], &mn_sa(), None),
        );
        assert_eq!(code(&out), ReplyCode::AcceptedNoSimultaneous);
        let out = run(
            &mut ha,
            at(1),
            from(COA2),
            &request(&repr(s, 600, HOA, HA, COA2, ts(1)), &[], &mn_sa(), None),
        );
        assert_eq!(code(&out), ReplyCode::AcceptedNoSimultaneous);
        assert_eq!(
            changes(&out),
            vec![(BindingChangeKind::Removed, COA), (BindingChangeKind::Created, COA2)]
        );
        assert_eq!(ha.bindings().len(), 1);
    }

    // --- RFC 3519 ---

    /// Case 49 at the HA: V5 (co-located MN behind an internal NAT registering directly) from 203.0.113.5:40001
    /// → exactly V6 when the HA allows 600 s with NAT and announces keepalive 110; binding = UDP tunnel to the
    /// NAT mapping.
    #[test]
    fn case_49_nat_detected_exact_v6() {
        let mut cfg = config(MIPP_PUB);
        cfg.nat_max_lifetime = 600;
        cfg.udp_tunnelling.keepalive = 110;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let src = SocketAddrV4::new(NAT_PUB, 40001);
        let out = run(&mut ha, at(0), src, &h(V5));
        let t = the_send(&out);
        assert_eq!(t.payload, h(V6));
        assert_eq!(t.dst, src);
        assert!(outcome(&out).nat_detected);
        let b = ha.bindings().get_by_home(HOA).unwrap().bindings()[0];
        assert_eq!(b.care_of_address, PRIV_COA);
        assert_eq!(
            (b.tunnel.addr, b.tunnel.port, b.tunnel.encapsulation),
            (NAT_PUB, 40001, Encapsulation::UdpIpInIp)
        );
        assert_eq!(b.keepalive_interval, 110);
    }

    /// With the default configuration the NAT lifetime cap (60 s, RFC 3519 §5.2) applies.
    #[test]
    fn nat_lifetime_capped_by_default() {
        let mut ha = ha_at(MIPP_PUB);
        let out = run(&mut ha, at(0), SocketAddrV4::new(NAT_PUB, 40001), &h(V5));
        let rep = reply(&out);
        assert_eq!((rep.repr.code, rep.repr.lifetime), (ReplyCode::Accepted, 60));
        assert_eq!(ha.next_timer(), Some(Instant::from_secs(1060)));
    }

    fn utrq(force: bool, encapsulation: u8) -> ExtensionBody<'static> {
        ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
            force,
            encapsulation,
            ..UdpTunnelRequest::default()
        })
    }

    /// Case 50 at the HA: UDP Tunnel Request without NAT, F = 0 → declined (64), plain IP-in-IP, no NAT cap.
    #[test]
    fn case_50_no_nat_declines_udp() {
        let mut ha = ha_at(HA);
        let m = request(
            &repr(0x20, 600, HOA, HA, PRIV_COA, ts(0)),
            &[utrq(false, 4)],
            &mn_sa(),
            None,
        );
        let out = run(&mut ha, at(0), from(PRIV_COA), &m);
        let rep = reply(&out);
        assert_eq!((rep.repr.code, rep.repr.lifetime), (ReplyCode::Accepted, 600));
        let u = rep.extensions().find_map(|e| match e.body {
            ExtensionBody::UdpTunnelReply(u) => Some(u),
            _ => None,
        });
        assert_eq!(u.map(|u| u.code), Some(64));
        assert_eq!(
            ha.bindings().get_by_home(HOA).unwrap().bindings()[0]
                .tunnel
                .encapsulation,
            Encapsulation::IpInIp
        );
    }

    /// Cases 52, 54 at the HA: NAT traversal disabled → 129; unsupported encapsulation → 142; co-located node
    /// behind a NAT without a UDP Tunnel Request → 134.
    #[test]
    fn case_52_54_udp_denials() {
        let mut cfg = config(HA);
        cfg.udp_tunnelling.nat_traversal = false;
        let mut ha = HomeAgent::new(cfg, keys(), 1);
        let nat = SocketAddrV4::new(NAT_PUB, 40001);
        let m = request(
            &repr(0x20, 600, HOA, HA, PRIV_COA, ts(0)),
            &[utrq(false, 4)],
            &mn_sa(),
            None,
        );
        assert_eq!(code(&run(&mut ha, at(0), nat, &m)), ReplyCode::HaProhibited);
        let mut ha = ha_at(HA);
        let m = request(
            &repr(0x20, 600, HOA, HA, PRIV_COA, ts(0)),
            &[utrq(false, 55)],
            &mn_sa(),
            None,
        );
        assert_eq!(code(&run(&mut ha, at(0), nat, &m)), ReplyCode::HaUdpEncapUnavailable);
        let m = colocated(HA, PRIV_COA, 600, ts(1));
        assert_eq!(code(&run(&mut ha, at(1), nat, &m)), ReplyCode::HaPoorlyFormedRequest);
        assert!(ha.bindings().is_empty());
    }

    // --- expiry, timers, keys ---

    #[test]
    fn expiry_on_tick_sends_nothing() {
        let mut ha = ha_at(HA);
        run(&mut ha, at(0), from(COA), &colocated(HA, COA, 100, ts(0)));
        assert_eq!(ha.next_timer(), Some(Instant::from_secs(1100)));
        assert!(tick(&mut ha, at(99)).is_empty());
        let out = tick(&mut ha, at(100));
        assert_eq!(changes(&out), vec![(BindingChangeKind::Expired, COA)]);
        assert_eq!(intercepts(&out), vec![(HOA, false)]);
        assert!(sends(&out).is_empty());
        assert!(!out.iter().any(|o| matches!(o, HaOutput::Outcome(_))));
        assert!(ha.bindings().is_empty());
        assert_eq!(ha.next_timer(), None);
    }

    /// Expiry of one of two simultaneous bindings keeps interception on.
    #[test]
    fn partial_expiry_keeps_intercept() {
        let mut ha = ha_at(HA);
        let s = 0x80 | 0x20;
        run(
            &mut ha,
            at(0),
            from(COA),
            &request(&repr(s, 100, HOA, HA, COA, ts(0)), &[], &mn_sa(), None),
        );
        run(
            &mut ha,
            at(1),
            from(COA2),
            &request(&repr(s, 300, HOA, HA, COA2, ts(1)), &[], &mn_sa(), None),
        );
        let out = tick(&mut ha, at(150));
        assert_eq!(changes(&out), vec![(BindingChangeKind::Expired, COA)]);
        assert!(intercepts(&out).is_empty());
        assert_eq!(ha.next_timer(), Some(Instant::from_secs(1301)));
    }

    #[test]
    fn set_keys_keeps_bindings_and_replay_state() {
        let mut ha = ha_at(HA);
        let first = colocated(HA, COA, 600, ts(0));
        run(&mut ha, at(0), from(COA), &first);
        ha.set_keys(keys());
        assert_eq!(ha.bindings().len(), 1);
        // The replayed request is still refused: the replay state survived.
        assert_eq!(
            code(&run(&mut ha, at(1), from(COA), &first)),
            ReplyCode::IdentificationMismatch
        );
        // Keys removed: the node's requests are dropped, its binding stays until it expires.
        ha.set_keys(KeyStore::new());
        let out = run(&mut ha, at(2), from(COA), &colocated(HA, COA, 600, ts(2)));
        assert_eq!(out, vec![HaOutput::Drop(DropReason::NoSecurityAssociation)]);
        assert_eq!(ha.bindings().len(), 1);
    }

    #[test]
    fn expiry_runs_before_a_request() {
        let mut ha = ha_at(HA);
        run(&mut ha, at(0), from(COA), &colocated(HA, COA, 10, ts(0)));
        let out = run(&mut ha, at(20), from(COA2), &colocated(HA, COA2, 10, ts(20)));
        assert_eq!(
            changes(&out),
            vec![(BindingChangeKind::Expired, COA), (BindingChangeKind::Created, COA2)]
        );
        assert_eq!(intercepts(&out), vec![(HOA, false), (HOA, true)]);
    }

    // --- configuration ---

    #[test]
    fn config_yaml_defaults() {
        let c: HaConfig = from_yaml("address: 10.10.1.1\nhome_networks: [10.10.1.0/24]\n").unwrap();
        assert_eq!(c, config(HA));
        assert_eq!(c.max_lifetime, 1800);
        assert_eq!(c.nat_max_lifetime, 60);
        assert!(c.simultaneous_bindings && c.reverse_tunnel.supported && !c.reverse_tunnel.mandatory);
        assert!(c.udp_tunnelling.nat_traversal && !c.udp_tunnelling.allow_forced);
        assert_eq!(c.udp_tunnelling.keepalive, 0);
        assert!(!c.strict_reserved_bits && !c.reply_on_auth_failure);
        assert_eq!(c.address_pool, None);

        let full = "address: 10.10.1.1
home_networks: [10.10.1.0/24, 10.10.2.0/24]
address_pool: {first: 10.10.2.10, last: 10.10.2.20}
max_lifetime: 600
nat_max_lifetime: 30
simultaneous_bindings: false
reverse_tunnel: {mandatory: true}
udp_tunnelling: {allow_forced: true, keepalive: 20}
strict_reserved_bits: true
reply_on_auth_failure: true
";
        let c: HaConfig = from_yaml(full).unwrap();
        assert_eq!(c.address_pool.unwrap().last, Ipv4Addr::new(10, 10, 2, 20));
        assert!(c.reverse_tunnel.supported && c.reverse_tunnel.mandatory);
        assert!(c.udp_tunnelling.nat_traversal && c.udp_tunnelling.allow_forced);
        assert_eq!(c.udp_tunnelling.policy().keepalive, 20);
        // Round trip through YAML.
        let text = serde_norway::to_string(&c).unwrap();
        assert_eq!(from_yaml::<HaConfig>(&text).unwrap(), c);
    }

    #[test]
    fn config_errors_name_fields() {
        let fields = |text: &str| -> Vec<String> {
            from_yaml::<HaConfig>(text)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields("home_networks: [10.10.1.0/24]\n"), vec![""]);
        assert_eq!(fields("address: 10.10.1.1\nhome_netwrks: []\n"), vec!["home_netwrks"]);
        assert_eq!(
            fields("address: 10.10.1.1\nhome_networks: [10.10.1.0/24]\nreverse_tunnel: {suported: true}\n"),
            vec!["reverse_tunnel.suported"]
        );
        assert_eq!(
            fields("address: 10.10.1.1\nhome_networks: [10.10.1.1/24]\n"),
            vec!["home_networks[0]"]
        );
        let bad = "address: 0.0.0.0
home_networks: []
address_pool: {first: 10.10.1.20, last: 10.10.1.10}
max_lifetime: 0
nat_max_lifetime: 0
reverse_tunnel: {supported: false, mandatory: true}
udp_tunnelling: {keepalive: 5}
";
        assert_eq!(
            fields(bad),
            vec![
                "address",
                "home_networks",
                "address_pool.last",
                "max_lifetime",
                "nat_max_lifetime",
                "reverse_tunnel.mandatory",
                "udp_tunnelling.keepalive"
            ]
        );
        let pool_outside =
            "address: 10.10.1.1\nhome_networks: [10.10.1.0/24]\naddress_pool: {first: 10.10.2.1, last: 10.10.2.5}\n";
        assert_eq!(fields(pool_outside), vec!["address_pool"]);
        let pool_with_ha =
            "address: 10.10.1.1\nhome_networks: [10.10.1.0/24]\naddress_pool: {first: 10.10.1.1, last: 10.10.1.5}\n";
        assert_eq!(fields(pool_with_ha), vec!["address_pool"]);
        let pool_with_bcast = "address: 10.10.1.1\nhome_networks: [10.10.1.0/24]\naddress_pool: {first: 10.10.1.200, last: 10.10.1.255}\n";
        let errs = from_yaml::<HaConfig>(pool_with_bcast).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("broadcast"), "{}", errs[0]);
    }
}

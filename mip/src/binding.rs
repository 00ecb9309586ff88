//! The mobility binding cache of the home agent and of the proxy's binding list (RFC 5944 §3.8.2.2, §4.2.3;
//! spec §5 "Binding list", §5.3, §6.1).
//!
//! One entry per mobile node, keyed by its home address or, for a node registering with home address 0.0.0.0,
//! by its NAI (RFC 2794); an entry that has both can be found by either. Each entry holds one or more care-of
//! bindings (simultaneous bindings, RFC 5944 §3.6.1.3), at most [`MAX_SIMULTANEOUS_BINDINGS`].
//!
//! Expiry is driven by the caller's `now` ([`BindingCache::expire`]): a min-heap of `(expires_at, slot)` with
//! lazy deletion. Refreshing or removing a binding leaves its old heap entry in place ("stale"); popping a stale
//! entry costs O(log n) and finds nothing due. Every binding change pushes exactly one heap entry and every
//! removal makes exactly one stale, so `heap.len() - len()` is the exact stale count; when stale entries
//! outnumber live ones (and the slot table) the heap is rebuilt from the live bindings, which amortises to O(1)
//! per operation. An expiry sweep therefore costs O((expired + stale popped) · log n), never a full scan.
//!
//! Layout, sized for a million bindings: entries live in a slot table (`Vec<Option<MnEntry>>` with a free list);
//! the home-address and NAI indices map to a `u32` slot; one binding is stored inline in the entry, so the common
//! case makes no allocation beyond the tables. Measured for a million nodes: about 106 heap bytes per binding
//! when pre-sized with [`BindingCache::with_capacity`], 111 when grown by doubling.

use core::cmp::Reverse;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;
use std::collections::{BinaryHeap, HashMap};

use crate::time::Instant;

/// Most care-of bindings one mobile node may hold at once. A request for more is refused with code 135
/// ("too many simultaneous mobility bindings", RFC 5944 §3.4) \[G: the RFC sets no number\].
pub const MAX_SIMULTANEOUS_BINDINGS: usize = 8;

/// Registration Lifetime meaning "infinity" (RFC 5944 §3.3): such a binding never expires.
pub const INFINITE_LIFETIME: u16 = 0xFFFF;

/// Minimum number of stale heap entries tolerated before a rebuild, so small caches do not rebuild constantly.
const COMPACT_SLACK: usize = 1024;

/// How packets reach the care-of address (RFC 2003, RFC 1701/2784 GRE, RFC 2004; RFC 3519 §3.3 for the UDP
/// forms, whose Next Header is 4, 47 or 55).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// IP in IP (RFC 2003), IP protocol 4.
    IpInIp,
    /// GRE (RFC 1701/2784), IP protocol 47.
    Gre,
    /// Minimal encapsulation (RFC 2004), IP protocol 55.
    Minimal,
    /// RFC 3519 UDP tunnel carrying IP in IP.
    UdpIpInIp,
    /// RFC 3519 UDP tunnel carrying GRE.
    UdpGre,
    /// RFC 3519 UDP tunnel carrying minimal encapsulation.
    UdpMinimal,
}

impl Encapsulation {
    /// Whether packets are carried in an RFC 3519 UDP tunnel.
    pub const fn is_udp(self) -> bool {
        matches!(
            self,
            Encapsulation::UdpIpInIp | Encapsulation::UdpGre | Encapsulation::UdpMinimal
        )
    }

    /// The label every daemon shows for the encapsulation (`/bindings`, logs): `ipip`, `gre`, `minimal`,
    /// `udp_ipip`, `udp_gre`, `udp_minimal`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Encapsulation::IpInIp => "ipip",
            Encapsulation::Gre => "gre",
            Encapsulation::Minimal => "minimal",
            Encapsulation::UdpIpInIp => "udp_ipip",
            Encapsulation::UdpGre => "udp_gre",
            Encapsulation::UdpMinimal => "udp_minimal",
        }
    }
}

/// Where tunnelled packets for a binding are sent: the care-of address, or with NAT traversal the NAT's public
/// address and port the request came from (RFC 3519 §4.6; spec §5.1 step 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelEndpoint {
    /// Outer destination address.
    pub addr: Ipv4Addr,
    /// Outer UDP destination port; 0 when the tunnel is not UDP.
    pub port: u16,
    /// Encapsulation used toward `addr`.
    pub encapsulation: Encapsulation,
}

/// One care-of binding of a mobile node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Care-of Address field of the accepted request.
    pub care_of_address: Ipv4Addr,
    /// Effective tunnel endpoint (equal to the care-of address unless NAT traversal is in use).
    pub tunnel: TunnelEndpoint,
    /// The home agent that accepted it (at the proxy: the actual HA).
    pub home_agent: Ipv4Addr,
    /// Identification of the request that created or last refreshed it (RFC 5944 §3.8.2.2 duplicate rule).
    pub identification: u64,
    /// When it was registered or last refreshed.
    pub registered_at: Instant,
    /// When it expires, unless refreshed.
    pub expires_at: Instant,
    /// Lifetime granted, in seconds ([`INFINITE_LIFETIME`] = never expires).
    pub lifetime: u16,
    /// RFC 3519 keepalive interval in seconds announced in the UDP Tunnel Reply (0 = the MN's default).
    pub keepalive_interval: u16,
    /// Reverse tunnelling requested (T bit, RFC 3024).
    pub reverse_tunnel: bool,
    /// RFC 3519 R-flag tunnel waiting for its first keepalive: send no data until it arrives (RFC 3519 §4.6,
    /// §6.1.2; spec §5.1 step 9). See [`BindingCache::complete_half_bound`].
    pub half_bound: bool,
}

impl Binding {
    /// A binding for `lifetime` seconds from `now`, to be tunnelled to `tunnel`; no reverse tunnel, keepalive 0,
    /// fully bound. [`INFINITE_LIFETIME`] yields a binding that never expires.
    pub fn new(
        care_of_address: Ipv4Addr,
        tunnel: TunnelEndpoint,
        home_agent: Ipv4Addr,
        identification: u64,
        lifetime: u16,
        now: Instant,
    ) -> Self {
        let expires_at = if lifetime == INFINITE_LIFETIME {
            Instant::from_millis(u64::MAX)
        } else {
            now + Duration::from_secs(u64::from(lifetime))
        };
        Binding {
            care_of_address,
            tunnel,
            home_agent,
            identification,
            registered_at: now,
            expires_at,
            lifetime,
            keepalive_interval: 0,
            reverse_tunnel: false,
            half_bound: false,
        }
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// Whether it has expired at `now` (expiry is inclusive: at `expires_at` it is gone).
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at <= now
    }
}

/// How a mobile node is identified in the cache: its home address, or its NAI when it registers with home
/// address 0.0.0.0 (RFC 2794; spec §5.1 step 3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindingKey {
    /// A nonzero home address.
    Home(Ipv4Addr),
    /// A Mobile Node NAI.
    Nai(Box<str>),
}

impl BindingKey {
    /// The key of a request with `home_address` and `nai`: the home address unless it is 0.0.0.0, then the NAI;
    /// `None` when neither identifies the node.
    pub fn for_mn(home_address: Ipv4Addr, nai: Option<&str>) -> Option<BindingKey> {
        if !home_address.is_unspecified() {
            Some(BindingKey::Home(home_address))
        } else {
            nai.map(|n| BindingKey::Nai(n.into()))
        }
    }
}

impl From<Ipv4Addr> for BindingKey {
    fn from(home_address: Ipv4Addr) -> Self {
        BindingKey::Home(home_address)
    }
}

impl fmt::Display for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingKey::Home(a) => write!(f, "{a}"),
            BindingKey::Nai(n) => write!(f, "NAI {n}"),
        }
    }
}

/// The bindings of one mobile node: one inline (no allocation, the common case) or several.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bindings {
    One(Binding),
    /// Always 2..=MAX_SIMULTANEOUS_BINDINGS elements.
    Many(Vec<Binding>),
}

impl Bindings {
    fn as_slice(&self) -> &[Binding] {
        match self {
            Bindings::One(b) => core::slice::from_ref(b),
            Bindings::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Binding] {
        match self {
            Bindings::One(b) => core::slice::from_mut(b),
            Bindings::Many(v) => v,
        }
    }

    fn push(&mut self, b: Binding) {
        match self {
            Bindings::One(first) => *self = Bindings::Many(vec![*first, b]),
            Bindings::Many(v) => v.push(b),
        }
    }

    /// Removes element `i` from a list of two or more (turning a single survivor back into `One`); refuses
    /// (returns `None`) to empty the list, which the cache does by removing the whole entry instead.
    fn remove(&mut self, i: usize) -> Option<Binding> {
        let Bindings::Many(v) = self else {
            return None;
        };
        if i >= v.len() {
            return None;
        }
        let b = v.remove(i);
        if let [only] = v.as_slice() {
            *self = Bindings::One(*only);
        }
        Some(b)
    }
}

/// The record of one mobile node: its identity and its care-of bindings (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnEntry {
    home_address: Ipv4Addr,
    nai: Option<Box<str>>,
    bindings: Bindings,
}

impl MnEntry {
    /// Home address (0.0.0.0 if the node is known only by NAI).
    pub fn home_address(&self) -> Ipv4Addr {
        self.home_address
    }

    /// NAI, if the node registered with one.
    pub fn nai(&self) -> Option<&str> {
        self.nai.as_deref()
    }

    /// Care-of bindings, at least one, in the order they were added.
    pub fn bindings(&self) -> &[Binding] {
        self.bindings.as_slice()
    }

    /// The binding for `care_of_address`.
    pub fn binding(&self, care_of_address: Ipv4Addr) -> Option<&Binding> {
        self.bindings().iter().find(|b| b.care_of_address == care_of_address)
    }

    /// The latest expiry among the bindings.
    pub fn expires_at(&self) -> Instant {
        self.bindings()
            .iter()
            .map(|b| b.expires_at)
            .max()
            .unwrap_or(Instant::ZERO)
    }
}

/// What [`BindingCache::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upsert {
    /// The node had no binding; it has this one now.
    Created,
    /// Simultaneous: a care-of address was added next to the node's other bindings.
    Added,
    /// The binding for this care-of address was refreshed; `displaced` other bindings were removed (only without
    /// simultaneous bindings).
    Refreshed {
        /// Other care-of bindings removed.
        displaced: usize,
    },
    /// A new care-of address replaced all `displaced` previous bindings (RFC 5944 §3.8.2.2, S bit clear).
    Replaced {
        /// Previous bindings removed.
        displaced: usize,
    },
    /// Same care-of address and Identification as the current binding: a duplicate, left unchanged so its
    /// lifetime is not extended (RFC 5944 §3.8.2.2; spec §10 case 65).
    Duplicate,
}

impl Upsert {
    /// Number of other bindings removed.
    pub fn displaced(self) -> usize {
        match self {
            Upsert::Refreshed { displaced } | Upsert::Replaced { displaced } => displaced,
            Upsert::Created | Upsert::Added | Upsert::Duplicate => 0,
        }
    }
}

/// Why [`BindingCache::upsert`] refused a binding. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingError {
    /// Home address 0.0.0.0 and no NAI: nothing identifies the node.
    NoKey,
    /// Lifetime 0 is a deregistration (RFC 5944 §3.8.2.2): use the remove operations.
    ZeroLifetime,
    /// The home address and the NAI belong to two different nodes in the cache.
    Conflict,
    /// Already [`MAX_SIMULTANEOUS_BINDINGS`] bindings (reply code 135).
    TooMany,
    /// The slot table is full (2^32 nodes).
    Full,
}

impl BindingError {
    /// A short label, fit for a metric.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingError::NoKey => "no_key",
            BindingError::ZeroLifetime => "zero_lifetime",
            BindingError::Conflict => "conflict",
            BindingError::TooMany => "too_many",
            BindingError::Full => "full",
        }
    }
}

impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingError::NoKey => "neither a home address nor an NAI",
            BindingError::ZeroLifetime => "lifetime 0 is a deregistration",
            BindingError::Conflict => "home address and NAI belong to different mobile nodes",
            BindingError::TooMany => "too many simultaneous mobility bindings",
            BindingError::Full => "binding cache full",
        })
    }
}

impl std::error::Error for BindingError {}

/// A binding removed by [`BindingCache::expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredBinding<'a> {
    /// Home address of the node (0.0.0.0 if known only by NAI).
    pub home_address: Ipv4Addr,
    /// NAI of the node, if any.
    pub nai: Option<&'a str>,
    /// The binding that expired.
    pub binding: Binding,
    /// The node has no binding left (at an HA: stop proxy ARP for it, RFC 5944 §4.6).
    pub was_last: bool,
}

/// Mobility bindings of many mobile nodes with expiry driven by a passed-in `now`.
#[derive(Debug, Clone, Default)]
pub struct BindingCache {
    /// Entries by slot; `None` slots are listed in `free`.
    slots: Vec<Option<MnEntry>>,
    free: Vec<u32>,
    by_home: HashMap<Ipv4Addr, u32>,
    by_nai: HashMap<Box<str>, u32>,
    /// Min-heap of (expires_at, slot); may hold stale entries (see the module doc).
    expiry: BinaryHeap<Reverse<(Instant, u32)>>,
    bindings: usize,
    mns: usize,
}

impl BindingCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache with room for `mns` mobile nodes (each with one binding) without reallocating.
    pub fn with_capacity(mns: usize) -> Self {
        BindingCache {
            slots: Vec::with_capacity(mns),
            free: Vec::new(),
            by_home: HashMap::with_capacity(mns),
            by_nai: HashMap::new(),
            expiry: BinaryHeap::with_capacity(mns),
            bindings: 0,
            mns: 0,
        }
    }

    /// Number of bindings (care-of addresses) over all nodes.
    pub fn len(&self) -> usize {
        self.bindings
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Number of mobile nodes with at least one binding.
    pub fn mn_count(&self) -> usize {
        self.mns
    }

    /// All nodes, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &MnEntry> {
        self.slots.iter().flatten()
    }

    fn entry(&self, slot: u32) -> Option<&MnEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn slot_of(&self, key: &BindingKey) -> Option<u32> {
        match key {
            BindingKey::Home(a) => self.by_home.get(a).copied(),
            BindingKey::Nai(n) => self.by_nai.get(&**n).copied(),
        }
    }

    /// The node identified by `key`.
    pub fn get(&self, key: &BindingKey) -> Option<&MnEntry> {
        self.slot_of(key).and_then(|s| self.entry(s))
    }

    /// The node whose home address is `home_address` (the data-plane lookup). Expired bindings stay until the
    /// next [`expire`](Self::expire); check [`Binding::is_expired`] if sweeps are coarse.
    pub fn get_by_home(&self, home_address: Ipv4Addr) -> Option<&MnEntry> {
        self.by_home.get(&home_address).and_then(|&s| self.entry(s))
    }

    /// The node whose NAI is `nai`.
    pub fn get_by_nai(&self, nai: &str) -> Option<&MnEntry> {
        self.by_nai.get(nai).and_then(|&s| self.entry(s))
    }

    /// Longest remaining lifetime among the node's bindings at `now` (for the proxy's simultaneous-binding
    /// lifetime rule, spec §5.1 step 12); `None` if the node has no binding.
    pub fn remaining_lifetime(&self, key: &BindingKey, now: Instant) -> Option<Duration> {
        self.get(key).map(|e| e.expires_at().saturating_duration_since(now))
    }

    /// Installs `binding` for the node with `home_address` (0.0.0.0 if unknown) and `nai`, following RFC 5944
    /// §3.8.2.2 for a request with a nonzero lifetime:
    /// * same care-of address and Identification as a current binding → [`Upsert::Duplicate`], nothing changes
    ///   (the lifetime is not extended);
    /// * `simultaneous` (S bit set and supported) → refresh the binding with the same care-of address, or add one
    ///   ([`BindingError::TooMany`] beyond [`MAX_SIMULTANEOUS_BINDINGS`]);
    /// * otherwise → this binding replaces all others.
    ///
    /// The node is found by home address or NAI, whichever is known (both must then name the same node, else
    /// [`BindingError::Conflict`]). A nonzero `home_address` or a new `nai` updates the node's identity and
    /// indices, so a node first known by NAI becomes findable by the home address assigned to it.
    pub fn upsert(
        &mut self,
        home_address: Ipv4Addr,
        nai: Option<&str>,
        binding: Binding,
        simultaneous: bool,
    ) -> Result<Upsert, BindingError> {
        if binding.lifetime == 0 {
            return Err(BindingError::ZeroLifetime);
        }
        let home = (!home_address.is_unspecified()).then_some(home_address);
        if home.is_none() && nai.is_none() {
            return Err(BindingError::NoKey);
        }
        let by_home = home.and_then(|h| self.by_home.get(&h).copied());
        let by_nai = nai.and_then(|n| self.by_nai.get(n).copied());
        let slot = match (by_home, by_nai) {
            (Some(a), Some(b)) if a != b => return Err(BindingError::Conflict),
            (a, b) => a.or(b),
        };
        let Some(slot) = slot else {
            return self.create(home_address, nai, binding);
        };
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            // An index pointing to an empty slot would be a bug; treat the node as unknown.
            return self.create(home_address, nai, binding);
        };

        // Decide first, so that a refusal changes nothing.
        let coa = binding.care_of_address;
        let same = entry.bindings().iter().position(|b| b.care_of_address == coa);
        if let Some(existing) = same.and_then(|i| entry.bindings().get(i))
            && existing.identification == binding.identification
        {
            return Ok(Upsert::Duplicate);
        }
        let count = entry.bindings().len();
        let outcome = match (simultaneous, same) {
            (true, Some(i)) => {
                if let Some(b) = entry.bindings.as_mut_slice().get_mut(i) {
                    *b = binding;
                }
                Upsert::Refreshed { displaced: 0 }
            }
            (true, None) => {
                if count >= MAX_SIMULTANEOUS_BINDINGS {
                    return Err(BindingError::TooMany);
                }
                entry.bindings.push(binding);
                Upsert::Added
            }
            (false, Some(_)) => {
                entry.bindings = Bindings::One(binding);
                Upsert::Refreshed { displaced: count - 1 }
            }
            (false, None) => {
                entry.bindings = Bindings::One(binding);
                Upsert::Replaced { displaced: count }
            }
        };

        // Identity: a known home address and a new NAI are recorded and indexed.
        if let Some(h) = home
            && entry.home_address != h
        {
            if !entry.home_address.is_unspecified() && self.by_home.get(&entry.home_address) == Some(&slot) {
                self.by_home.remove(&entry.home_address);
            }
            self.by_home.insert(h, slot);
            entry.home_address = h;
        }
        if let Some(n) = nai
            && entry.nai.as_deref() != Some(n)
        {
            if let Some(old) = entry.nai.take()
                && self.by_nai.get(&old) == Some(&slot)
            {
                self.by_nai.remove(&old);
            }
            self.by_nai.insert(n.into(), slot);
            entry.nai = Some(n.into());
        }

        self.bindings = self.bindings + 1 - outcome.displaced() - usize::from(same.is_some());
        self.expiry.push(Reverse((binding.expires_at, slot)));
        self.maybe_compact();
        Ok(outcome)
    }

    fn create(&mut self, home_address: Ipv4Addr, nai: Option<&str>, binding: Binding) -> Result<Upsert, BindingError> {
        let entry = MnEntry {
            home_address,
            nai: nai.map(Box::from),
            bindings: Bindings::One(binding),
        };
        let slot = match self.free.pop() {
            Some(slot) => match self.slots.get_mut(slot as usize) {
                Some(s) => {
                    *s = Some(entry);
                    slot
                }
                None => return Err(BindingError::Full), // free list out of range: a bug, refuse safely
            },
            None => {
                let slot = u32::try_from(self.slots.len()).map_err(|_| BindingError::Full)?;
                self.slots.push(Some(entry));
                slot
            }
        };
        if !home_address.is_unspecified() {
            self.by_home.insert(home_address, slot);
        }
        if let Some(n) = nai {
            self.by_nai.insert(n.into(), slot);
        }
        self.mns += 1;
        self.bindings += 1;
        self.expiry.push(Reverse((binding.expires_at, slot)));
        self.maybe_compact();
        Ok(Upsert::Created)
    }

    /// Removes the node in `slot` with all its bindings and index entries.
    fn take_entry(&mut self, slot: u32) -> Option<MnEntry> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        if !entry.home_address.is_unspecified() && self.by_home.get(&entry.home_address) == Some(&slot) {
            self.by_home.remove(&entry.home_address);
        }
        if let Some(n) = entry.nai.as_deref()
            && self.by_nai.get(n) == Some(&slot)
        {
            self.by_nai.remove(n);
        }
        self.free.push(slot);
        self.mns -= 1;
        self.bindings -= entry.bindings().len();
        self.maybe_compact();
        Some(entry)
    }

    /// Deregisters one care-of address (lifetime 0, CoA ≠ home address; RFC 5944 §3.8.2.2). Removing the last
    /// binding removes the node.
    pub fn remove_care_of(&mut self, key: &BindingKey, care_of_address: Ipv4Addr) -> Option<Binding> {
        let slot = self.slot_of(key)?;
        let entry = self.slots.get_mut(slot as usize)?.as_mut()?;
        let i = entry
            .bindings()
            .iter()
            .position(|b| b.care_of_address == care_of_address)?;
        if entry.bindings().len() == 1 {
            return self.take_entry(slot).and_then(|e| e.bindings().first().copied());
        }
        let b = entry.bindings.remove(i)?;
        self.bindings -= 1;
        self.maybe_compact();
        Some(b)
    }

    /// Deregisters all the node's bindings (lifetime 0, CoA = home address; RFC 5944 §3.8.2.2) and returns them.
    pub fn remove_all(&mut self, key: &BindingKey) -> Option<MnEntry> {
        let slot = self.slot_of(key)?;
        self.take_entry(slot)
    }

    /// Completes an RFC 3519 R-flag binding on its first keepalive (RFC 3519 §4.6, §4.11; spec §5.1 step 9): the
    /// half-bound binding of `home_address` whose tunnel address equals the keepalive's outer `source` address
    /// (the port may differ) switches to `source:port` and may carry data. `None` if there is no such binding.
    pub fn complete_half_bound(&mut self, home_address: Ipv4Addr, source: Ipv4Addr, port: u16) -> Option<&Binding> {
        let slot = *self.by_home.get(&home_address)?;
        let entry = self.slots.get_mut(slot as usize)?.as_mut()?;
        let b = entry
            .bindings
            .as_mut_slice()
            .iter_mut()
            .find(|b| b.half_bound && b.tunnel.addr == source)?;
        b.tunnel.port = port;
        b.half_bound = false;
        Some(b)
    }

    /// Removes every binding with `expires_at <= now`, calling `f` for each (RFC 5944 §3.8: no message is sent on
    /// expiry). Cost is proportional to the bindings expired plus stale heap entries skipped, not to the cache.
    pub fn expire(&mut self, now: Instant, mut f: impl FnMut(ExpiredBinding<'_>)) {
        while let Some(&Reverse((at, slot))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            self.expire_slot(slot, now, &mut f);
        }
    }

    /// Removes the due bindings of the node in `slot` (all of them, whichever heap entry led here: any binding due
    /// is due, and its own heap entry just becomes stale).
    fn expire_slot(&mut self, slot: u32, now: Instant, f: &mut impl FnMut(ExpiredBinding<'_>)) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return; // stale: the node is gone
        };
        let due = entry.bindings().iter().filter(|b| b.is_expired(now)).count();
        if due == 0 {
            return; // stale: refreshed since
        }
        if due == entry.bindings().len() {
            if let Some(entry) = self.take_entry(slot) {
                let n = entry.bindings().len();
                for (i, b) in entry.bindings().iter().enumerate() {
                    f(ExpiredBinding {
                        home_address: entry.home_address,
                        nai: entry.nai(),
                        binding: *b,
                        was_last: i + 1 == n,
                    });
                }
            }
            return;
        }
        while let Some(i) = entry.bindings().iter().position(|b| b.is_expired(now)) {
            let Some(b) = entry.bindings.remove(i) else {
                break;
            };
            self.bindings -= 1;
            f(ExpiredBinding {
                home_address: entry.home_address,
                nai: entry.nai(),
                binding: b,
                was_last: false,
            });
        }
    }

    /// The earliest instant at which [`expire`](Self::expire) will remove something, if any binding can expire.
    /// Discards stale heap entries on the way, hence `&mut`.
    pub fn next_expiry(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, slot))) = self.expiry.peek() {
            let live = self
                .entry(slot)
                .is_some_and(|e| e.bindings().iter().any(|b| b.expires_at <= at));
            if live {
                return Some(at);
            }
            self.expiry.pop();
        }
        None
    }

    /// Rebuilds the expiry heap from the live bindings once stale entries outnumber live ones (and the slot
    /// table, so that the O(slots) rebuild is paid for by at least as many earlier operations).
    fn maybe_compact(&mut self) {
        let n = self.expiry.len();
        if n < 2 * self.bindings + COMPACT_SLACK || n < self.slots.len() {
            return;
        }
        let mut v = core::mem::take(&mut self.expiry).into_vec();
        v.clear();
        let want = 2 * self.bindings + COMPACT_SLACK;
        if v.capacity() > 2 * want {
            v.shrink_to(want);
        }
        for (i, entry) in self.slots.iter().enumerate() {
            let (Some(entry), Ok(slot)) = (entry, u32::try_from(i)) else {
                continue;
            };
            v.extend(entry.bindings().iter().map(|b| Reverse((b.expires_at, slot))));
        }
        self.expiry = BinaryHeap::from(v);
    }

    /// Approximate heap bytes held by the cache (for a memory gauge), estimated from table capacities and element
    /// sizes without allocator overhead (see the test `heap_bytes_per_binding`). Walks all entries: O(nodes).
    pub fn approx_heap_bytes(&self) -> usize {
        use core::mem::size_of;
        // std's HashMap (hashbrown) keeps `buckets` = next power of two ≥ capacity · 8/7, each bucket one
        // (key, value) slot plus one control byte, plus 16 trailing control bytes.
        fn map_bytes<K, V>(capacity: usize) -> usize {
            if capacity == 0 {
                return 0;
            }
            let buckets = (capacity * 8 / 7).next_power_of_two();
            buckets * (size_of::<(K, V)>() + 1) + 16
        }
        let nai_strings: usize = self.iter().filter_map(|e| e.nai.as_ref()).map(|n| 2 * n.len()).sum();
        let many: usize = self
            .iter()
            .map(|e| match &e.bindings {
                Bindings::One(_) => 0,
                Bindings::Many(v) => v.capacity() * size_of::<Binding>(),
            })
            .sum();
        self.slots.capacity() * size_of::<Option<MnEntry>>()
            + self.free.capacity() * size_of::<u32>()
            + map_bytes::<Ipv4Addr, u32>(self.by_home.capacity())
            + map_bytes::<Box<str>, u32>(self.by_nai.capacity())
            + self.expiry.capacity() * size_of::<Reverse<(Instant, u32)>>()
            + nai_strings
            + many
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
    const COA1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
    const COA2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 78);
    const COA3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 79);
    const T0: Instant = Instant::from_secs(1000);

    fn ipip(addr: Ipv4Addr) -> TunnelEndpoint {
        TunnelEndpoint {
            addr,
            port: 0,
            encapsulation: Encapsulation::IpInIp,
        }
    }

    fn binding(coa: Ipv4Addr, ident: u64, lifetime: u16, now: Instant) -> Binding {
        Binding::new(coa, ipip(coa), HA, ident, lifetime, now)
    }

    fn expire_all(cache: &mut BindingCache, now: Instant) -> Vec<(Ipv4Addr, Ipv4Addr, bool)> {
        let mut out = Vec::new();
        cache.expire(now, |e| {
            out.push((e.home_address, e.binding.care_of_address, e.was_last))
        });
        out
    }

    #[test]
    fn sizes() {
        assert!(size_of::<Binding>() <= 64, "Binding is {} bytes", size_of::<Binding>());
        assert_eq!(size_of::<Binding>(), 48);
        assert_eq!(size_of::<TunnelEndpoint>(), 8);
        assert!(size_of::<Option<MnEntry>>() <= 72, "{}", size_of::<Option<MnEntry>>());
        assert_eq!(size_of::<Reverse<(Instant, u32)>>(), 16);
    }

    #[test]
    fn create_refresh_replace() {
        let mut c = BindingCache::new();
        assert_eq!(
            c.upsert(HOA, None, binding(COA1, 1, 600, T0), false),
            Ok(Upsert::Created)
        );
        assert_eq!((c.len(), c.mn_count()), (1, 1));
        let e = c.get_by_home(HOA).unwrap();
        assert_eq!(e.bindings().len(), 1);
        assert_eq!(e.bindings()[0].expires_at, T0 + Duration::from_secs(600));
        assert_eq!(e.nai(), None);

        // Refresh from the same CoA, new Identification, later.
        let t1 = T0 + Duration::from_secs(300);
        assert_eq!(
            c.upsert(HOA, None, binding(COA1, 2, 600, t1), false),
            Ok(Upsert::Refreshed { displaced: 0 })
        );
        assert_eq!(
            c.get(&HOA.into()).unwrap().bindings()[0].expires_at,
            t1 + Duration::from_secs(600)
        );

        // Moving to another CoA replaces it.
        assert_eq!(
            c.upsert(HOA, None, binding(COA2, 3, 300, t1), false),
            Ok(Upsert::Replaced { displaced: 1 })
        );
        let e = c.get_by_home(HOA).unwrap();
        assert_eq!(e.bindings().len(), 1);
        assert_eq!(e.bindings()[0].care_of_address, COA2);
        assert!(e.binding(COA1).is_none());
        assert_eq!((c.len(), c.mn_count()), (1, 1));
        assert_eq!(c.remaining_lifetime(&HOA.into(), t1), Some(Duration::from_secs(300)));
    }

    #[test]
    fn simultaneous_add_and_remove_one() {
        let mut c = BindingCache::new();
        c.upsert(HOA, None, binding(COA1, 1, 500, T0), true).unwrap();
        assert_eq!(c.upsert(HOA, None, binding(COA2, 2, 300, T0), true), Ok(Upsert::Added));
        assert_eq!(c.upsert(HOA, None, binding(COA3, 3, 100, T0), true), Ok(Upsert::Added));
        assert_eq!((c.len(), c.mn_count()), (3, 1));
        // Spec §5.1 step 12: the longest remaining lifetime of the node's bindings.
        assert_eq!(c.remaining_lifetime(&HOA.into(), T0), Some(Duration::from_secs(500)));
        // Refresh one of them in place.
        assert_eq!(
            c.upsert(HOA, None, binding(COA2, 4, 300, T0 + Duration::from_secs(10)), true),
            Ok(Upsert::Refreshed { displaced: 0 })
        );
        assert_eq!(c.len(), 3);

        // Spec §10 case 62: deregistering one leaves the others.
        let removed = c.remove_care_of(&HOA.into(), COA2).unwrap();
        assert_eq!(removed.identification, 4);
        assert_eq!(c.len(), 2);
        assert_eq!(c.remove_care_of(&HOA.into(), COA2), None);
        let coas: Vec<_> = c
            .get_by_home(HOA)
            .unwrap()
            .bindings()
            .iter()
            .map(|b| b.care_of_address)
            .collect();
        assert_eq!(coas, [COA1, COA3]);

        // Down to one, then none: the node disappears.
        c.remove_care_of(&HOA.into(), COA1).unwrap();
        assert!(matches!(c.get_by_home(HOA).unwrap().bindings, Bindings::One(_)));
        c.remove_care_of(&HOA.into(), COA3).unwrap();
        assert!(c.get_by_home(HOA).is_none());
        assert_eq!((c.len(), c.mn_count()), (0, 0));
        assert!(c.is_empty());

        // A non-simultaneous refresh of one of several removes the others.
        c.upsert(HOA, None, binding(COA1, 10, 500, T0), true).unwrap();
        c.upsert(HOA, None, binding(COA2, 11, 500, T0), true).unwrap();
        assert_eq!(
            c.upsert(HOA, None, binding(COA1, 12, 500, T0), false),
            Ok(Upsert::Refreshed { displaced: 1 })
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn deregister_all() {
        let mut c = BindingCache::new();
        c.upsert(HOA, Some("joe@example.com"), binding(COA1, 1, 500, T0), true)
            .unwrap();
        c.upsert(HOA, None, binding(COA2, 2, 500, T0), true).unwrap();
        let e = c.remove_all(&HOA.into()).unwrap();
        assert_eq!(e.bindings().len(), 2);
        assert_eq!(e.nai(), Some("joe@example.com"));
        assert!(c.get_by_home(HOA).is_none());
        assert!(c.get_by_nai("joe@example.com").is_none());
        assert_eq!((c.len(), c.mn_count()), (0, 0));
        assert!(c.remove_all(&HOA.into()).is_none());
        // Nothing left to expire; the stale heap entries are harmless.
        assert!(expire_all(&mut c, T0 + Duration::from_secs(1000)).is_empty());
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn nai_only_key_then_lookup() {
        let mut c = BindingCache::new();
        let nai = "joe@example.com";
        let key = BindingKey::for_mn(Ipv4Addr::UNSPECIFIED, Some(nai)).unwrap();
        assert_eq!(key, BindingKey::Nai(nai.into()));
        assert_eq!(
            c.upsert(Ipv4Addr::UNSPECIFIED, Some(nai), binding(COA1, 1, 60, T0), false),
            Ok(Upsert::Created)
        );
        assert_eq!(c.get(&key).unwrap().home_address(), Ipv4Addr::UNSPECIFIED);
        assert!(
            c.get_by_home(Ipv4Addr::UNSPECIFIED).is_none(),
            "0.0.0.0 is never indexed"
        );

        // The HA assigns a home address (RFC 5944 §3.8.3.2): the same node is now findable by either.
        assert_eq!(
            c.upsert(HOA, Some(nai), binding(COA1, 2, 60, T0), false),
            Ok(Upsert::Refreshed { displaced: 0 })
        );
        assert_eq!(c.mn_count(), 1);
        assert_eq!(c.get_by_home(HOA).unwrap().nai(), Some(nai));
        assert_eq!(c.get_by_nai(nai).unwrap().home_address(), HOA);
        // A later request by NAI with home address 0 keeps the known home address.
        c.upsert(Ipv4Addr::UNSPECIFIED, Some(nai), binding(COA2, 3, 60, T0), false)
            .unwrap();
        assert_eq!(c.get_by_home(HOA).unwrap().bindings()[0].care_of_address, COA2);
        // Removal by either key clears both indices.
        c.remove_care_of(&BindingKey::Nai(nai.into()), COA2).unwrap();
        assert!(c.get_by_home(HOA).is_none());
        assert!(c.get_by_nai(nai).is_none());

        assert_eq!(
            c.upsert(Ipv4Addr::UNSPECIFIED, None, binding(COA1, 1, 60, T0), false),
            Err(BindingError::NoKey)
        );
        assert_eq!(BindingKey::for_mn(Ipv4Addr::UNSPECIFIED, None), None);
    }

    #[test]
    fn home_address_and_nai_of_different_nodes_conflict() {
        let mut c = BindingCache::new();
        let other = Ipv4Addr::new(10, 10, 1, 51);
        c.upsert(HOA, Some("a@example.com"), binding(COA1, 1, 60, T0), false)
            .unwrap();
        c.upsert(other, Some("b@example.com"), binding(COA2, 1, 60, T0), false)
            .unwrap();
        assert_eq!(
            c.upsert(HOA, Some("b@example.com"), binding(COA3, 2, 60, T0), false),
            Err(BindingError::Conflict)
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.get_by_home(HOA).unwrap().bindings()[0].care_of_address, COA1);
    }

    #[test]
    fn expiry_by_advancing_now() {
        let mut c = BindingCache::new();
        let other = Ipv4Addr::new(10, 10, 1, 51);
        c.upsert(HOA, None, binding(COA1, 1, 100, T0), false).unwrap();
        c.upsert(other, None, binding(COA2, 1, 200, T0), false).unwrap();
        assert_eq!(c.next_expiry(), Some(T0 + Duration::from_secs(100)));

        assert!(expire_all(&mut c, T0 + Duration::from_millis(99_999)).is_empty());
        assert_eq!(expire_all(&mut c, T0 + Duration::from_secs(100)), [(HOA, COA1, true)]);
        assert!(c.get_by_home(HOA).is_none());
        assert_eq!(c.len(), 1);
        assert_eq!(c.next_expiry(), Some(T0 + Duration::from_secs(200)));
        assert_eq!(
            expire_all(&mut c, T0 + Duration::from_secs(10_000)),
            [(other, COA2, true)]
        );
        assert!(c.is_empty());
    }

    #[test]
    fn refreshed_binding_is_not_expired_by_its_old_heap_entry() {
        let mut c = BindingCache::new();
        c.upsert(HOA, None, binding(COA1, 1, 100, T0), false).unwrap();
        let t1 = T0 + Duration::from_secs(50);
        c.upsert(HOA, None, binding(COA1, 2, 100, t1), false).unwrap();
        // The old entry (T0 + 100) is stale: next_expiry skips it.
        assert_eq!(c.next_expiry(), Some(t1 + Duration::from_secs(100)));
        c.upsert(HOA, None, binding(COA1, 3, 100, T0 + Duration::from_secs(60)), false)
            .unwrap();
        assert!(expire_all(&mut c, T0 + Duration::from_secs(150)).is_empty());
        assert_eq!(c.len(), 1);
        assert_eq!(expire_all(&mut c, T0 + Duration::from_secs(160)), [(HOA, COA1, true)]);
    }

    #[test]
    fn reused_slot_is_not_expired_by_the_previous_occupant() {
        let mut c = BindingCache::new();
        let other = Ipv4Addr::new(10, 10, 1, 51);
        c.upsert(HOA, None, binding(COA1, 1, 100, T0), false).unwrap();
        c.remove_all(&HOA.into()).unwrap();
        c.upsert(other, None, binding(COA2, 1, 500, T0), false).unwrap();
        assert!(expire_all(&mut c, T0 + Duration::from_secs(100)).is_empty());
        assert!(c.get_by_home(other).is_some());
    }

    #[test]
    fn simultaneous_bindings_expire_one_by_one() {
        let mut c = BindingCache::new();
        c.upsert(HOA, None, binding(COA1, 1, 100, T0), true).unwrap();
        c.upsert(HOA, None, binding(COA2, 2, 200, T0), true).unwrap();
        c.upsert(HOA, None, binding(COA3, 3, 100, T0), true).unwrap();
        assert_eq!(
            expire_all(&mut c, T0 + Duration::from_secs(150)),
            [(HOA, COA1, false), (HOA, COA3, false)]
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.remaining_lifetime(&HOA.into(), T0 + Duration::from_secs(150)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(c.next_expiry(), Some(T0 + Duration::from_secs(200)));
        assert_eq!(expire_all(&mut c, T0 + Duration::from_secs(200)), [(HOA, COA2, true)]);
    }

    #[test]
    fn case_65_duplicate_does_not_extend_lifetime() {
        let mut c = BindingCache::new();
        c.upsert(HOA, None, binding(COA1, 0xec4e_5a00_1234_5678, 600, T0), false)
            .unwrap();
        let later = T0 + Duration::from_secs(300);
        assert_eq!(
            c.upsert(HOA, None, binding(COA1, 0xec4e_5a00_1234_5678, 600, later), false),
            Ok(Upsert::Duplicate)
        );
        assert_eq!(
            c.get_by_home(HOA).unwrap().bindings()[0].expires_at,
            T0 + Duration::from_secs(600)
        );
        assert_eq!(c.remaining_lifetime(&HOA.into(), later), Some(Duration::from_secs(300)));
        assert_eq!(c.len(), 1);
        // Same Identification from another CoA is not a duplicate (the HA's replay check decides about it).
        assert_eq!(
            c.upsert(HOA, None, binding(COA2, 0xec4e_5a00_1234_5678, 600, later), false),
            Ok(Upsert::Replaced { displaced: 1 })
        );
        assert_eq!(
            expire_all(&mut c, T0 + Duration::from_secs(600)),
            Vec::<(Ipv4Addr, Ipv4Addr, bool)>::new()
        );
    }

    #[test]
    fn simultaneous_cap() {
        let mut c = BindingCache::new();
        for i in 0..MAX_SIMULTANEOUS_BINDINGS {
            let coa = Ipv4Addr::new(192, 0, 2, i as u8);
            c.upsert(HOA, None, binding(coa, i as u64, 60, T0), true).unwrap();
        }
        let extra = Ipv4Addr::new(192, 0, 2, 200);
        assert_eq!(
            c.upsert(HOA, None, binding(extra, 99, 60, T0), true),
            Err(BindingError::TooMany)
        );
        assert_eq!(c.len(), MAX_SIMULTANEOUS_BINDINGS);
        // Refreshing an existing one is still allowed, and a non-simultaneous request replaces them all.
        assert!(
            c.upsert(HOA, None, binding(Ipv4Addr::new(192, 0, 2, 0), 100, 60, T0), true)
                .is_ok()
        );
        assert_eq!(
            c.upsert(HOA, None, binding(extra, 101, 60, T0), false),
            Ok(Upsert::Replaced {
                displaced: MAX_SIMULTANEOUS_BINDINGS
            })
        );
        assert_eq!(c.len(), 1);
        assert_eq!(BindingError::TooMany.as_str(), "too_many");
    }

    #[test]
    fn zero_and_infinite_lifetimes() {
        let mut c = BindingCache::new();
        assert_eq!(
            c.upsert(HOA, None, binding(COA1, 1, 0, T0), false),
            Err(BindingError::ZeroLifetime)
        );
        c.upsert(HOA, None, binding(COA1, 1, INFINITE_LIFETIME, T0), false)
            .unwrap();
        assert!(expire_all(&mut c, Instant::from_millis(u64::MAX - 1)).is_empty());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn half_bound_completes_on_keepalive_from_request_address() {
        let nat = Ipv4Addr::new(203, 0, 113, 5);
        let mut c = BindingCache::new();
        let mut b = Binding::new(
            Ipv4Addr::new(192, 168, 1, 77),
            TunnelEndpoint {
                addr: nat,
                port: 40003,
                encapsulation: Encapsulation::UdpIpInIp,
            },
            HA,
            1,
            60,
            T0,
        );
        b.half_bound = true;
        assert!(b.tunnel.encapsulation.is_udp());
        c.upsert(HOA, None, b, false).unwrap();
        // Spec §10 case 57: a keepalive from another address is ignored.
        assert!(
            c.complete_half_bound(HOA, Ipv4Addr::new(203, 0, 113, 6), 40003)
                .is_none()
        );
        let done = c.complete_half_bound(HOA, nat, 40100).unwrap();
        assert!(!done.half_bound);
        assert_eq!(done.tunnel.port, 40100);
        assert!(c.complete_half_bound(HOA, nat, 40100).is_none(), "already bound");
    }

    #[test]
    fn refresh_churn_keeps_the_heap_bounded() {
        let mut c = BindingCache::new();
        let mut now = T0;
        for round in 0..20u64 {
            for i in 0..500u32 {
                let hoa = Ipv4Addr::from(0x0a00_0000 + i);
                c.upsert(hoa, None, binding(COA1, round, 60, now), false).unwrap();
            }
            now = now + Duration::from_secs(1);
        }
        assert_eq!(c.len(), 500);
        assert!(c.expiry.len() <= 2 * 500 + COMPACT_SLACK, "heap {}", c.expiry.len());
        let mut n = 0;
        c.expire(now + Duration::from_secs(60), |_| n += 1);
        assert_eq!(n, 500);
        assert!(c.is_empty());
    }

    /// Bindings for the fill tests: one million in release builds; 200,000 in debug builds, where unoptimised
    /// HashMap/BinaryHeap code makes a million take about 5 s per test (0.9 s in release).
    fn fill_count() -> u32 {
        if cfg!(debug_assertions) { 200_000 } else { 1_000_000 }
    }

    fn fill(n: u32) -> BindingCache {
        let mut c = BindingCache::with_capacity(n as usize);
        for i in 0..n {
            let hoa = Ipv4Addr::from(0x0a00_0000 + i);
            let coa = Ipv4Addr::from(0xc000_0000 + i);
            // Spread expiries over an hour.
            let b = binding(coa, u64::from(i), 60 + (i % 3600) as u16, T0);
            assert_eq!(c.upsert(hoa, None, b, false), Ok(Upsert::Created));
        }
        c
    }

    #[test]
    fn million_bindings_fill_and_expire() {
        let n = fill_count();
        let mut c = fill(n);
        assert_eq!(c.len(), n as usize);
        assert_eq!(c.mn_count(), n as usize);
        assert_eq!(
            c.get_by_home(Ipv4Addr::from(0x0a00_0000 + n - 1))
                .unwrap()
                .bindings()
                .len(),
            1
        );
        assert_eq!(c.next_expiry(), Some(T0 + Duration::from_secs(60)));

        // Half-way: exactly those with lifetime ≤ 1860 s are gone.
        let mid = T0 + Duration::from_secs(1860);
        let mut expired = 0usize;
        c.expire(mid, |e| {
            assert!(e.binding.expires_at <= mid);
            expired += 1;
        });
        let expected_mid = (0..n).filter(|i| 60 + i % 3600 <= 1860).count();
        assert_eq!(expired, expected_mid);
        assert_eq!(c.len(), n as usize - expected_mid);

        let mut rest = 0usize;
        c.expire(T0 + Duration::from_secs(3660), |_| rest += 1);
        assert_eq!(expired + rest, n as usize);
        assert!(c.is_empty());
        assert_eq!(c.mn_count(), 0);
        assert_eq!(c.next_expiry(), None);
    }

    /// Heap bytes per binding, estimated from capacities × element sizes (`approx_heap_bytes`):
    /// * slot table: `capacity × size_of::<Option<MnEntry>>()` (72 B: one inline binding, HoA, NAI pointer);
    /// * home index: hashbrown buckets (next power of two ≥ capacity · 8/7) × (8 B key+slot + 1 control byte);
    /// * expiry heap: `capacity × 16 B`;
    /// * NAI index, NAI strings (counted twice: index key and entry) and overflow `Vec`s of simultaneous bindings
    ///   (none here).
    ///
    /// Allocator overhead is not counted. Measured for 1M HoA-keyed nodes: 106 B per binding pre-sized (72 slot +
    /// 19 index + 16 heap), 111 B grown by doubling.
    #[test]
    fn heap_bytes_per_binding() {
        let n = fill_count();
        let c = fill(n);
        let per = c.approx_heap_bytes() / c.len();
        assert!(per <= 256, "{per} bytes per binding");
        // The same without pre-sizing: growth by doubling may leave up to half the capacity unused.
        let mut c = BindingCache::new();
        for i in 0..n {
            let hoa = Ipv4Addr::from(0x0a00_0000 + i);
            c.upsert(hoa, None, binding(COA1, 1, 60, T0), false).unwrap();
        }
        let per = c.approx_heap_bytes() / c.len();
        assert!(per <= 256, "{per} bytes per binding without pre-sizing");
    }
}

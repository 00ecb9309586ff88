//! Replicated records and their conversion from and to the `mip` binding types.
//!
//! A record describes one mobile node (all its care-of bindings, or a tombstone) or the replay state of one
//! security association. Times are relative (`remaining_ms`), converted to and from the local monotonic
//! [`Instant`] at the edges: the replicas' clocks differ.

use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

use mip::binding::{Binding, INFINITE_LIFETIME, TunnelEndpoint};
use mip::time::Instant;

use crate::version::Version;

/// `remaining_ms` of a binding with an infinite lifetime.
pub const INFINITE_REMAINING_MS: u64 = u64::MAX;

/// The key of a mobile node: its NAI when it has one (stable while its home address is assigned), else its home
/// address. The same rule as the proxy's replay state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MnId {
    /// Keyed by home address (no NAI).
    Home(Ipv4Addr),
    /// Keyed by NAI.
    Nai(Box<str>),
}

impl MnId {
    /// The key of a node with `home_address` and `nai`: the NAI if any, else the home address; `None` for
    /// 0.0.0.0 without NAI.
    pub fn of(home_address: Ipv4Addr, nai: Option<&str>) -> Option<MnId> {
        match nai {
            Some(n) => Some(MnId::Nai(n.into())),
            None if home_address.is_unspecified() => None,
            None => Some(MnId::Home(home_address)),
        }
    }
}

impl fmt::Display for MnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MnId::Home(a) => write!(f, "{a}"),
            MnId::Nai(n) => write!(f, "NAI {n}"),
        }
    }
}

/// One care-of binding as replicated: [`Binding`] with the expiry as time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CareOf {
    /// Care-of Address field of the accepted request.
    pub care_of_address: Ipv4Addr,
    /// Effective tunnel endpoint (NAT address and port with NAT traversal).
    pub tunnel: TunnelEndpoint,
    /// The home agent that accepted it.
    pub home_agent: Ipv4Addr,
    /// Identification of the request that created or last refreshed it.
    pub identification: u64,
    /// Lifetime granted in seconds ([`INFINITE_LIFETIME`] = never expires).
    pub lifetime: u16,
    /// Milliseconds left ([`INFINITE_REMAINING_MS`] for an infinite lifetime).
    pub remaining_ms: u64,
    /// RFC 3519 keepalive interval in seconds.
    pub keepalive_interval: u16,
    /// Reverse tunnelling (T bit).
    pub reverse_tunnel: bool,
    /// RFC 3519 R-flag tunnel still waiting for its first keepalive.
    pub half_bound: bool,
}

impl CareOf {
    /// The replicated form of `b` at local time `now`.
    pub fn from_binding(b: &Binding, now: Instant) -> CareOf {
        CareOf {
            care_of_address: b.care_of_address,
            tunnel: b.tunnel,
            home_agent: b.home_agent,
            identification: b.identification,
            lifetime: b.lifetime,
            remaining_ms: remaining_ms(b.lifetime, b.expires_at.millis(), now),
            keepalive_interval: b.keepalive_interval,
            reverse_tunnel: b.reverse_tunnel,
            half_bound: b.half_bound,
        }
    }

    /// The local binding at `now`: it expires `remaining_ms` from now, and counts as registered `lifetime`
    /// before that (or now, if that would be earlier than the origin).
    pub fn to_binding(&self, now: Instant) -> Binding {
        let expires_at = expires_at(self.lifetime, self.remaining_ms, now);
        let registered_at = if self.lifetime == INFINITE_LIFETIME {
            now
        } else {
            Instant::from_millis(expires_at.saturating_sub(u64::from(self.lifetime) * 1000)).min(now)
        };
        Binding {
            care_of_address: self.care_of_address,
            tunnel: self.tunnel,
            home_agent: self.home_agent,
            identification: self.identification,
            registered_at,
            expires_at: Instant::from_millis(expires_at),
            lifetime: self.lifetime,
            keepalive_interval: self.keepalive_interval,
            reverse_tunnel: self.reverse_tunnel,
            half_bound: self.half_bound,
        }
    }
}

/// Milliseconds from `now` to `expires_at_ms` (infinite stays infinite).
pub(crate) fn remaining_ms(lifetime: u16, expires_at_ms: u64, now: Instant) -> u64 {
    if lifetime == INFINITE_LIFETIME || expires_at_ms == u64::MAX {
        INFINITE_REMAINING_MS
    } else {
        expires_at_ms.saturating_sub(now.millis())
    }
}

/// Local expiry in milliseconds for `remaining_ms` from `now` (infinite stays infinite).
pub(crate) fn expires_at(lifetime: u16, remaining_ms: u64, now: Instant) -> u64 {
    if lifetime == INFINITE_LIFETIME || remaining_ms == INFINITE_REMAINING_MS {
        u64::MAX
    } else {
        now.millis().saturating_add(remaining_ms).min(u64::MAX - 1)
    }
}

/// What a binding record says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingState {
    /// The node's care-of bindings (at least one).
    Live(Vec<CareOf>),
    /// Deleted; kept `remaining_ms` longer so an older write arriving late cannot bring it back.
    Tombstone {
        /// Milliseconds until the tombstone may be forgotten.
        remaining_ms: u64,
    },
}

/// The replicated state of one mobile node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    /// Home address (0.0.0.0 while only the NAI is known).
    pub home_address: Ipv4Addr,
    /// NAI, if the node registered with one (then it is the key).
    pub nai: Option<Box<str>>,
    /// Version of this write.
    pub version: Version,
    /// Bindings or tombstone.
    pub state: BindingState,
}

impl BindingRecord {
    /// The record's key; `None` when it has neither a home address nor an NAI (invalid).
    pub fn id(&self) -> Option<MnId> {
        MnId::of(self.home_address, self.nai.as_deref())
    }
}

/// The replay state of one (mobile node, SPI) security association.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayRecord {
    /// Home address (0.0.0.0 while only the NAI is known).
    pub home_address: Ipv4Addr,
    /// NAI, if any (then it is the key).
    pub nai: Option<Box<str>>,
    /// SPI of the MN-HA security association.
    pub spi: u32,
    /// The replay values.
    pub state: ReplayValue,
    /// Version of this write.
    pub version: Version,
}

impl ReplayRecord {
    /// The record's key; `None` when it has neither a home address nor an NAI (invalid).
    pub fn id(&self) -> Option<MnId> {
        MnId::of(self.home_address, self.nai.as_deref())
    }
}

/// What another replica needs to refuse a replayed registration (the shared part of `mip::replay::ReplayState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReplayValue {
    /// Identification of the last accepted request.
    pub last_accepted: Option<u64>,
    /// Nonce style: the nonce last issued and not yet used.
    pub nonce_issued: Option<u32>,
}

/// One replicated change (or one record of a snapshot or repair): what travels between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// A mobile node's bindings or tombstone.
    Binding(BindingRecord),
    /// A security association's replay state.
    Replay(ReplayRecord),
}

impl Delta {
    /// The version of the write.
    pub fn version(&self) -> Version {
        match self {
            Delta::Binding(r) => r.version,
            Delta::Replay(r) => r.version,
        }
    }
}

/// What [`ReplicaStore::apply_remote`](crate::ReplicaStore::apply_remote) changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    /// A node's bindings were created or replaced.
    Bindings,
    /// A node's bindings were deleted (tombstone).
    Removed,
    /// A security association's replay state changed.
    Replay,
}

/// A change made by another replica, for the daemon to mirror into its own state
/// ([`ReplicaStore::take_remote_changes`](crate::ReplicaStore::take_remote_changes)): always the **current**
/// state of the key, so applying the latest one is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// The node has exactly these bindings now (replace whatever the local cache holds for it).
    Bindings {
        /// Home address (0.0.0.0 if only the NAI is known).
        home_address: Ipv4Addr,
        /// NAI, if any.
        nai: Option<Box<str>>,
        /// The bindings, on the local clock.
        bindings: Vec<Binding>,
    },
    /// The node has no binding any more.
    Removed {
        /// Home address (0.0.0.0 if only the NAI is known).
        home_address: Ipv4Addr,
        /// NAI, if any.
        nai: Option<Box<str>>,
    },
    /// The replay state of one security association.
    Replay {
        /// Home address (0.0.0.0 if only the NAI is known).
        home_address: Ipv4Addr,
        /// NAI, if any.
        nai: Option<Box<str>>,
        /// SPI.
        spi: u32,
        /// The replay values.
        state: ReplayValue,
    },
}

/// Milliseconds in `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mip::binding::Encapsulation;

    #[test]
    fn care_of_round_trip_keeps_remaining_time() {
        let t0 = Instant::from_secs(100);
        let tunnel = TunnelEndpoint {
            addr: Ipv4Addr::new(203, 0, 113, 5),
            port: 40003,
            encapsulation: Encapsulation::UdpIpInIp,
        };
        let mut b = Binding::new(
            Ipv4Addr::new(192, 168, 1, 7),
            tunnel,
            Ipv4Addr::new(10, 10, 1, 1),
            42,
            600,
            t0,
        );
        b.keepalive_interval = 30;
        b.reverse_tunnel = true;
        b.half_bound = true;
        let later = t0 + Duration::from_secs(100);
        let c = CareOf::from_binding(&b, later);
        assert_eq!(c.remaining_ms, 500_000);
        // On another replica whose clock origin differs.
        let there = Instant::from_secs(5000);
        let b2 = c.to_binding(there);
        assert_eq!(b2.expires_at, there + Duration::from_secs(500));
        assert_eq!(b2.registered_at, there - Duration::from_secs(100));
        assert_eq!(
            (b2.care_of_address, b2.tunnel, b2.identification, b2.lifetime),
            (b.care_of_address, b.tunnel, 42, 600)
        );
        assert!(b2.reverse_tunnel && b2.half_bound && b2.keepalive_interval == 30);
        // Infinite lifetimes stay infinite.
        let inf = Binding::new(b.care_of_address, tunnel, b.home_agent, 1, INFINITE_LIFETIME, t0);
        let c = CareOf::from_binding(&inf, later);
        assert_eq!(c.remaining_ms, INFINITE_REMAINING_MS);
        assert!(!c.to_binding(there).is_expired(Instant::from_millis(u64::MAX - 1)));
    }

    #[test]
    fn key_is_nai_first() {
        let hoa = Ipv4Addr::new(10, 10, 1, 50);
        assert_eq!(MnId::of(hoa, Some("a@b")), Some(MnId::Nai("a@b".into())));
        assert_eq!(MnId::of(hoa, None), Some(MnId::Home(hoa)));
        assert_eq!(MnId::of(Ipv4Addr::UNSPECIFIED, None), None);
        assert_eq!(MnId::Nai("a@b".into()).to_string(), "NAI a@b");
    }
}

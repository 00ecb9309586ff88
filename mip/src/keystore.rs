//! The set of mobility security associations a node holds, indexed the way RFC 5944 §3.5.1 and §3.5.4 select
//! them: by (peer address, SPI), where the peer of an MN-HA SA is the mobile node's home address; and, for
//! mobile nodes that register with home address 0.0.0.0, by (NAI, SPI) (RFC 2794; spec §3.3).
//!
//! A store is built once from configuration and replaced as a whole on reload; lookups never allocate.

use core::net::Ipv4Addr;
use std::collections::HashMap;

use crate::auth::{SecurityAssociation, Spi};

/// Why an SA could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStoreError {
    /// An SA with the same SPI already exists for this peer.
    DuplicatePeer(Ipv4Addr, Spi),
    /// An SA with the same SPI already exists for this NAI.
    DuplicateNai(Box<str>, Spi),
}

impl core::fmt::Display for KeyStoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KeyStoreError::DuplicatePeer(a, s) => write!(f, "duplicate security association for peer {a} SPI {s}"),
            KeyStoreError::DuplicateNai(n, s) => write!(f, "duplicate security association for NAI {n} SPI {s}"),
        }
    }
}

impl std::error::Error for KeyStoreError {}

/// Security associations by (peer, SPI) and (NAI, SPI).
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    // A peer rarely has more than one or two SPIs, so a short Vec per peer beats a tuple-keyed map and lets
    // NAI lookups borrow a `&str` without allocating.
    by_peer: HashMap<Ipv4Addr, Vec<SecurityAssociation>>,
    by_nai: HashMap<Box<str>, Vec<SecurityAssociation>>,
    by_agent: HashMap<Ipv4Addr, Vec<SecurityAssociation>>,
}

impl KeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the SA shared with `peer` (for an MN-HA SA: the home address; for FA-HA: the agent's address).
    pub fn insert_peer(&mut self, peer: Ipv4Addr, sa: SecurityAssociation) -> Result<(), KeyStoreError> {
        let v = self.by_peer.entry(peer).or_default();
        if v.iter().any(|s| s.spi() == sa.spi()) {
            return Err(KeyStoreError::DuplicatePeer(peer, sa.spi()));
        }
        v.push(sa);
        Ok(())
    }

    /// Adds the SA of the mobile node identified by `nai`.
    pub fn insert_nai(&mut self, nai: &str, sa: SecurityAssociation) -> Result<(), KeyStoreError> {
        let v = self.by_nai.entry(nai.into()).or_default();
        if v.iter().any(|s| s.spi() == sa.spi()) {
            return Err(KeyStoreError::DuplicateNai(nai.into(), sa.spi()));
        }
        v.push(sa);
        Ok(())
    }

    /// Adds the SA shared with the agent at `agent` (an FA-HA SA; at a mobile node, an MN-FA SA).
    pub fn insert_agent(&mut self, agent: Ipv4Addr, sa: SecurityAssociation) -> Result<(), KeyStoreError> {
        let v = self.by_agent.entry(agent).or_default();
        if v.iter().any(|s| s.spi() == sa.spi()) {
            return Err(KeyStoreError::DuplicatePeer(agent, sa.spi()));
        }
        v.push(sa);
        Ok(())
    }

    /// The SA for (agent, SPI). Reserved SPIs (0–255) never match.
    pub fn agent(&self, agent: Ipv4Addr, spi: u32) -> Option<&SecurityAssociation> {
        Spi::new(spi).ok()?;
        self.by_agent.get(&agent)?.iter().find(|s| s.spi().get() == spi)
    }

    /// Every SA held with the agent at `agent`.
    pub fn for_agent(&self, agent: Ipv4Addr) -> &[SecurityAssociation] {
        self.by_agent.get(&agent).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The SA for (peer, SPI). Reserved SPIs (0–255) never match.
    pub fn get(&self, peer: Ipv4Addr, spi: u32) -> Option<&SecurityAssociation> {
        Spi::new(spi).ok()?;
        self.by_peer.get(&peer)?.iter().find(|s| s.spi().get() == spi)
    }

    /// The SA for (NAI, SPI). Reserved SPIs (0–255) never match.
    pub fn get_by_nai(&self, nai: &[u8], spi: u32) -> Option<&SecurityAssociation> {
        Spi::new(spi).ok()?;
        let nai = core::str::from_utf8(nai).ok()?;
        self.by_nai.get(nai)?.iter().find(|s| s.spi().get() == spi)
    }

    /// Every SA held for `peer`.
    pub fn for_peer(&self, peer: Ipv4Addr) -> &[SecurityAssociation] {
        self.by_peer.get(&peer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every SA held for `nai`.
    pub fn for_nai(&self, nai: &str) -> &[SecurityAssociation] {
        self.by_nai.get(nai).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of SAs held.
    pub fn len(&self) -> usize {
        [&self.by_peer, &self.by_agent]
            .iter()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum::<usize>()
            + self.by_nai.values().map(Vec::len).sum::<usize>()
    }

    /// Whether no SA is held.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty() && self.by_nai.is_empty() && self.by_agent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Algorithm, Key};
    use crate::replay::ReplayStyle;

    fn sa(spi: u32) -> SecurityAssociation {
        SecurityAssociation::new(
            Spi::new(spi).unwrap(),
            Algorithm::HmacMd5,
            Key::new(&[1; 16]),
            ReplayStyle::default(),
        )
    }

    #[test]
    fn lookup_by_peer_and_nai() {
        let mut ks = KeyStore::new();
        let hoa = Ipv4Addr::new(10, 10, 1, 50);
        ks.insert_peer(hoa, sa(0x100)).unwrap();
        ks.insert_peer(hoa, sa(0x101)).unwrap();
        ks.insert_nai("joe@example.com", sa(0x100)).unwrap();
        assert_eq!(ks.get(hoa, 0x101).unwrap().spi().get(), 0x101);
        assert!(ks.get(hoa, 0x102).is_none());
        assert!(ks.get(Ipv4Addr::new(10, 10, 1, 51), 0x100).is_none());
        assert!(ks.get_by_nai(b"joe@example.com", 0x100).is_some());
        assert!(ks.get_by_nai(b"bob@example.com", 0x100).is_none());
        assert!(ks.get_by_nai(&[0xff, 0xfe], 0x100).is_none());
        assert_eq!(ks.len(), 3);
        assert_eq!(
            ks.insert_peer(hoa, sa(0x100)),
            Err(KeyStoreError::DuplicatePeer(hoa, Spi::new(0x100).unwrap()))
        );
    }

    #[test]
    fn agents_are_separate_from_mobile_nodes() {
        let mut ks = KeyStore::new();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        ks.insert_agent(a, sa(0x300)).unwrap();
        assert!(ks.agent(a, 0x300).is_some());
        assert!(ks.get(a, 0x300).is_none());
        assert_eq!(ks.for_agent(a).len(), 1);
        assert!(ks.for_peer(a).is_empty());
        assert_eq!(ks.len(), 1);
    }

    #[test]
    fn reserved_spi_never_matches() {
        let ks = KeyStore::new();
        for spi in [0, 0xff] {
            assert!(ks.get(Ipv4Addr::UNSPECIFIED, spi).is_none());
        }
    }
}

//! The relay round both relay benchmarks time (`mip/benches/relay.rs`, `proxy-pod/benches/traces.rs`, which
//! includes this file by path): 10,000 nodes with HMAC-MD5 SAs, a proxy relaying to one home agent, and each
//! round's request and reply.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::roles::Datagram;
use mip::roles::proxy::{HomeAgentEntry, Proxy, ProxyConfig};
use mip::wire::{AuthKind, Dialect, MessageWriter, ReplyCode, ReplyRepr, RequestFlags, RequestRepr};

pub const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
pub const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
pub const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
pub const SECONDS: u32 = 0xec4e_5a00;
pub const MNS: u32 = 10_000;

pub fn sa() -> SecurityAssociation {
    SecurityAssociation::new(
        Spi::new(0x100).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex("000102030405060708090a0b0c0d0e0f").unwrap(),
        ReplayStyle::default(),
    )
}

pub fn home(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 0, 0)) + 256 + i)
}

/// The node's request and the HA's reply for round `n` (node `n % MNS`, Identification increasing per node).
pub fn round_messages(n: u64) -> (Vec<u8>, Vec<u8>) {
    let hoa = home((n % u64::from(MNS)) as u32);
    let id = (u64::from(SECONDS) << 32) | (n + 1);
    let req = RequestRepr {
        flags: RequestFlags(RequestFlags::D | RequestFlags::T),
        lifetime: 600,
        home_address: hoa,
        home_agent: PUB,
        care_of_address: COA,
        identification: id,
    };
    let mut a = vec![0u8; 64];
    let mut w = MessageWriter::request(&mut a, &req, &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    let request = w.as_bytes().to_vec();
    let rep = ReplyRepr {
        code: ReplyCode::Accepted,
        lifetime: 600,
        home_address: hoa,
        home_agent: HA,
        identification: id,
    };
    let mut b = vec![0u8; 64];
    let mut w = MessageWriter::reply(&mut b, &rep, &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    (request, w.as_bytes().to_vec())
}

pub fn proxy() -> Proxy {
    let mut keys = KeyStore::new();
    for i in 0..MNS {
        keys.insert_peer(home(i), sa()).unwrap();
    }
    let ha = HomeAgentEntry {
        address: HA,
        home_networks: vec!["10.10.0.0/16".parse().unwrap()],
        dynamic_assignment: false,
    };
    Proxy::new(ProxyConfig::new(PUB, PRIV, vec![ha]), keys, 1)
}

/// The node's request as it reaches `proxy_public`.
pub fn from_mobile(payload: &[u8]) -> Datagram<'_> {
    Datagram {
        src: SocketAddrV4::new(COA, 434),
        dst: SocketAddrV4::new(PUB, 434),
        ttl: 64,
        payload,
    }
}

/// The home agent's reply as it reaches `proxy_private`.
pub fn from_home_agent(payload: &[u8]) -> Datagram<'_> {
    Datagram {
        src: SocketAddrV4::new(HA, 434),
        dst: SocketAddrV4::new(PRIV, 434),
        ttl: 64,
        payload,
    }
}

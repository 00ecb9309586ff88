//! One full proxy relay round (issue 3): a mobile node's request in → the relayed request out to the home agent
//! → the HA's reply in → the reply out to the node. Four authenticator operations (verify the node's request,
//! sign the relayed one, verify the HA's reply, sign the node's reply), the binding refresh and the pending list.
//! The node's request and the HA's reply are built in the untimed setup of each iteration.
//!
//! Run: `cargo bench -p mip --bench relay`. Target: ≥ 250,000 rounds per second per core.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::roles::proxy::{HomeAgentEntry, Proxy, ProxyConfig, ProxyInput, ProxyOutput};
use mip::roles::{Datagram, Now};
use mip::time::{Instant, NtpTimestamp};
use mip::wire::{AuthKind, Dialect, MessageWriter, ReplyCode, ReplyRepr, RequestFlags, RequestRepr};

const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const SECONDS: u32 = 0xec4e_5a00;
const MNS: u32 = 10_000;

fn sa() -> SecurityAssociation {
    SecurityAssociation::new(
        Spi::new(0x100).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex("000102030405060708090a0b0c0d0e0f").unwrap(),
        ReplayStyle::default(),
    )
}

fn home(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 0, 0)) + 256 + i)
}

/// The node's request and the HA's reply for round `n` (node `n % MNS`, Identification increasing per node).
fn round_messages(n: u64) -> (Vec<u8>, Vec<u8>) {
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

fn proxy() -> Proxy {
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

fn relay_round(p: &mut Proxy, now: Now, request: &[u8], reply: &[u8], out: &mut Vec<ProxyOutput>) {
    out.clear();
    let from_mn = Datagram {
        src: SocketAddrV4::new(COA, 434),
        dst: SocketAddrV4::new(PUB, 434),
        ttl: 64,
        payload: request,
    };
    p.handle(now, ProxyInput::FromMobile(from_mn), out);
    let from_ha = Datagram {
        src: SocketAddrV4::new(HA, 434),
        dst: SocketAddrV4::new(PRIV, 434),
        ttl: 64,
        payload: reply,
    };
    p.handle(now, ProxyInput::FromHomeAgent(from_ha), out);
}

fn bench(c: &mut Criterion) {
    let now = Now::new(Instant::from_secs(1000), NtpTimestamp::new(SECONDS, u32::MAX));
    let mut p = proxy();
    let mut out = Vec::with_capacity(16);
    // Correctness once, untimed: the round produces the relayed request and an accepting reply.
    let (rq, rp) = round_messages(0);
    relay_round(&mut p, now, &rq, &rp, &mut out);
    let sends = out.iter().filter(|o| matches!(o, ProxyOutput::Send(_))).count();
    assert_eq!(sends, 2, "{out:?}");
    assert!(
        out.iter()
            .any(|o| matches!(o, ProxyOutput::Outcome(x) if x.code == ReplyCode::Accepted)),
        "{out:?}"
    );

    let mut g = c.benchmark_group("proxy");
    g.throughput(Throughput::Elements(1));
    let mut n = 1u64;
    g.bench_function("relay_round", |b| {
        b.iter_batched(
            || {
                n += 1;
                round_messages(n)
            },
            |(rq, rp)| {
                relay_round(&mut p, now, &rq, &rp, &mut out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    assert_eq!(p.pending_count(), 0, "every relayed request was answered");
    assert_eq!(p.bindings().mn_count() as u32, MNS.min(n as u32 + 1));
}

criterion_group!(benches, bench);
criterion_main!(benches);

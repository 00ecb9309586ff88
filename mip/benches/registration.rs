//! Registration hot path: what the proxy and the HA do per message.
//!
//! * `parse_verify_request/{v1,v5}`: `Request::parse` of the spec §11.2 V1 request (46 B) and V5 request with a
//!   UDP Tunnel Request (54 B), find the MN-HA extension, look the SA up by (home address, SPI) in a `KeyStore`
//!   of 10 000 SAs, verify the HMAC-MD5 authenticator. Target: ≤ 1 µs per message.
//! * `parse_verify_request/v1_keyed_md5`: the same with an RFC 2002 keyed-MD5 (prefix+suffix) SA.
//! * `emit_sign_reply/{v4,v6}`: build the V4 reply, and the V6 reply with a UDP Tunnel Reply, with
//!   `MessageWriter` + `push_auth(MobileHome)` into a reused buffer.
//! * `authenticator/*`: `SecurityAssociation::compute` over V1's 30 covered bytes (HMAC-MD5 and keyed MD5), the
//!   floor for the above, and HMAC-MD5 without the SA's precomputed key state for comparison.
//! * `keystore/get_10k`: the (home address, SPI) lookup alone.
//!
//! Every benchmark checks its result once against the spec bytes before timing. Run:
//! `cargo bench -p mip --bench registration` (add `-- --quick` for a fast pass).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mip::auth::{self, Algorithm, AuthError, Key, SecurityAssociation, Spi};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::wire::{AuthKind, Dialect, ExtensionBody, MessageWriter, ReplyCode, ReplyRepr, Request, UdpTunnelReply};

const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const SPI: u32 = 0x100;
const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const MIPP_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const ID: u64 = 0xec4e5a00_12345678;
const STORE_SIZE: u32 = 10_000;

// Spec §11.2.
const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
const V4: &str = "030002580a0a0132c633640aec4e5a0012345678201400000100\
                  70e2cee90091976e0fac5350cebf59c8";
const V5: &str = "012202580a0a0132c633640ac0a8014dec4e5a00123456789006000000040000201400000100\
                  9bcd0d4218bd0833ec9236954b4a9027";
const V6: &str = "030002580a0a0132c633640aec4e5a00123456782c0600000000006e201400000100\
                  e6a5219b9bda226f058144d658a16c75";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

fn sa(algorithm: Algorithm, key: Key) -> SecurityAssociation {
    SecurityAssociation::new(Spi::new(SPI).expect("spi"), algorithm, key, ReplayStyle::default())
}

/// `STORE_SIZE` MN-HA SAs keyed by home address (10.0.0.1, 10.0.0.2, …, with 10.10.1.50 holding the spec key),
/// the layout a home agent serving that many mobile nodes has.
fn store(algorithm: Algorithm) -> KeyStore {
    let mut ks = KeyStore::new();
    for i in 1..STORE_SIZE {
        let peer = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
        assert_ne!(peer, HOA);
        let key: Vec<u8> = (0..16u8).map(|b| b ^ (i as u8) ^ ((i >> 8) as u8)).collect();
        ks.insert_peer(peer, sa(algorithm, Key::new(&key))).expect("insert");
    }
    ks.insert_peer(HOA, sa(algorithm, Key::from_hex(KEY).expect("key")))
        .expect("insert");
    assert_eq!(ks.len(), STORE_SIZE as usize);
    ks
}

/// The per-message work of a home agent (or the proxy) receiving a request: parse, find MN-HA, look up, verify.
#[inline(always)]
fn parse_verify(bytes: &[u8], dialect: &Dialect, ks: &KeyStore) -> Result<(), AuthError> {
    let req = Request::parse(bytes, dialect).map_err(|_| AuthError::NotAuthentication)?;
    let ext = req.auth(AuthKind::MobileHome).ok_or(AuthError::NotAuthentication)?;
    let ExtensionBody::Auth { spi, .. } = ext.body else {
        return Err(AuthError::NotAuthentication);
    };
    let sa = ks.get(req.repr.home_address, spi).ok_or(AuthError::SpiMismatch)?;
    sa.verify(bytes, &ext)
}

fn bench_parse_verify(c: &mut Criterion) {
    let dialect = Dialect::default();
    let hmac_store = store(Algorithm::HmacMd5);
    let v1 = h(V1);
    let v5 = h(V5);

    // V1 re-signed with the legacy keyed-MD5 SA (spec §11.2: c70b7b4d… over the same 30 covered bytes).
    let keyed_store = store(Algorithm::KeyedMd5PrefixSuffix);
    let keyed_sa = keyed_store.get(HOA, SPI).expect("sa");
    let repr = Request::parse(&v1, &dialect).expect("V1").repr;
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &repr, &dialect).expect("writer");
    w.push_auth(AuthKind::MobileHome, keyed_sa).expect("auth");
    let v1_keyed = w.as_bytes().to_vec();
    assert_eq!(hex::encode(&v1_keyed[30..]), "c70b7b4de64f1ce3d251055f41ed603c");

    // Correctness, once, outside the timed loops.
    assert_eq!(parse_verify(&v1, &dialect, &hmac_store), Ok(()));
    assert_eq!(parse_verify(&v5, &dialect, &hmac_store), Ok(()));
    assert_eq!(parse_verify(&v1_keyed, &dialect, &keyed_store), Ok(()));
    let mut tampered = v1.clone();
    tampered[23] ^= 1;
    assert_eq!(parse_verify(&tampered, &dialect, &hmac_store), Err(AuthError::Mismatch));

    let mut g = c.benchmark_group("parse_verify_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("v1", |b| b.iter(|| parse_verify(black_box(&v1), &dialect, &hmac_store)));
    g.bench_function("v5_udp_tunnel", |b| {
        b.iter(|| parse_verify(black_box(&v5), &dialect, &hmac_store))
    });
    g.bench_function("v1_keyed_md5", |b| {
        b.iter(|| parse_verify(black_box(&v1_keyed), &dialect, &keyed_store))
    });
    g.finish();
}

fn bench_emit_sign(c: &mut Criterion) {
    let dialect = Dialect::default();
    let sa = sa(Algorithm::HmacMd5, Key::from_hex(KEY).expect("key"));
    let repr = ReplyRepr {
        code: ReplyCode::Accepted,
        lifetime: 600,
        home_address: HOA,
        home_agent: MIPP_PUB,
        identification: ID,
    };
    let utrp = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
        keepalive: 110,
        ..Default::default()
    });

    fn v4(buf: &mut [u8], repr: &ReplyRepr, dialect: &Dialect, sa: &SecurityAssociation) -> usize {
        let mut w = MessageWriter::reply(buf, repr, dialect).expect("writer");
        w.push_auth(AuthKind::MobileHome, sa).expect("auth");
        w.len()
    }
    fn v6(
        buf: &mut [u8],
        repr: &ReplyRepr,
        utrp: &ExtensionBody<'_>,
        dialect: &Dialect,
        sa: &SecurityAssociation,
    ) -> usize {
        let mut w = MessageWriter::reply(buf, repr, dialect).expect("writer");
        w.push(utrp).expect("utrp");
        w.push_auth(AuthKind::MobileHome, sa).expect("auth");
        w.len()
    }

    let mut buf = [0u8; 1500];
    let n = v4(&mut buf, &repr, &dialect, &sa);
    assert_eq!(buf[..n], h(V4)[..]);
    let n = v6(&mut buf, &repr, &utrp, &dialect, &sa);
    assert_eq!(buf[..n], h(V6)[..]);

    let mut g = c.benchmark_group("emit_sign_reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("v4", |b| {
        b.iter(|| v4(black_box(&mut buf), black_box(&repr), &dialect, &sa))
    });
    g.bench_function("v6_udp_tunnel", |b| {
        b.iter(|| v6(black_box(&mut buf), black_box(&repr), &utrp, &dialect, &sa))
    });
    g.finish();
}

fn bench_hmac(c: &mut Criterion) {
    let hmac_sa = sa(Algorithm::HmacMd5, Key::from_hex(KEY).expect("key"));
    let keyed_sa = sa(Algorithm::KeyedMd5PrefixSuffix, Key::from_hex(KEY).expect("key"));
    let v1 = h(V1);
    let covered = &v1[..30];
    assert_eq!(
        hex::encode(hmac_sa.compute(covered)),
        "869d33adee786a3be9b795c8cafb1d71"
    );
    assert_eq!(
        hex::encode(keyed_sa.compute(covered)),
        "c70b7b4de64f1ce3d251055f41ed603c"
    );

    let mut g = c.benchmark_group("authenticator");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hmac_md5_30_bytes", |b| b.iter(|| hmac_sa.compute(black_box(covered))));
    g.bench_function("keyed_md5_30_bytes", |b| {
        b.iter(|| keyed_sa.compute(black_box(covered)))
    });
    // Without the SA's precomputed key state: what the per-SA HMAC setup saves.
    let key = Key::from_hex(KEY).expect("key");
    g.bench_function("hmac_md5_30_bytes_no_precompute", |b| {
        b.iter(|| auth::compute(Algorithm::HmacMd5, black_box(key.expose()), black_box(covered)))
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let ks = store(Algorithm::HmacMd5);
    let mut g = c.benchmark_group("keystore");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_10k", |b| {
        b.iter(|| ks.get(black_box(HOA), black_box(SPI)).is_some())
    });
    g.finish();
}

criterion_group!(benches, bench_parse_verify, bench_emit_sign, bench_hmac, bench_lookup);
criterion_main!(benches);

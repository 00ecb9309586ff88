//! What one trace per registration costs the event loop (issue 7): a full proxy relay round (request in →
//! relayed request out → the HA's reply in → the reply out, as `mip/benches/relay.rs`) with the service's trace
//! hooks ([`RegistrationTraces`]), untraced (no exporter: the hooks do nothing), traced (the OpenTelemetry layer
//! and the SDK's batch span processor, its exporter discarding: the loop's share of the work; the export itself
//! runs on the processor's thread), and traced with `sampling_ratio` 0.1 (an unsampled registration costs one
//! draw of `mip_io::telemetry::sample_root` and creates no span).
//!
//! Run: `cargo bench -p mip-proxy --bench traces`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::roles::proxy::{HomeAgentEntry, Proxy, ProxyConfig, ProxyInput, ProxyOutput};
use mip::roles::{Datagram, Now};
use mip::time::{Instant, NtpTimestamp};
use mip::wire::{AuthKind, Dialect, MessageWriter, ReplyCode, ReplyRepr, RequestFlags, RequestRepr};
use mip_proxy::traces::RegistrationTraces;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;

const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const SECONDS: u32 = 0xec4e_5a00;
const MNS: u32 = 10_000;

/// Receives batches and drops them.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

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

/// The node's request and the HA's reply for round `n`.
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

/// One input as the service handles it: the trace hooks around the relay.
fn turn(p: &mut Proxy, t: &mut RegistrationTraces, now: Now, input: ProxyInput<'_>, out: &mut Vec<ProxyOutput>) {
    if let ProxyInput::FromMobile(d) = &input {
        t.receive(d.src, d.payload);
    }
    out.clear();
    p.handle(now, input, out);
    for o in out.iter() {
        t.output(o);
        if let ProxyOutput::Binding(c) = o {
            black_box(t.replicate(c));
        }
    }
    t.end_turn();
}

fn round(
    p: &mut Proxy,
    t: &mut RegistrationTraces,
    now: Now,
    request: &[u8],
    reply: &[u8],
    out: &mut Vec<ProxyOutput>,
) {
    let from_mn = Datagram {
        src: SocketAddrV4::new(COA, 434),
        dst: SocketAddrV4::new(PUB, 434),
        ttl: 64,
        payload: request,
    };
    turn(p, t, now, ProxyInput::FromMobile(from_mn), out);
    let from_ha = Datagram {
        src: SocketAddrV4::new(HA, 434),
        dst: SocketAddrV4::new(PRIV, 434),
        ttl: 64,
        payload: reply,
    };
    turn(p, t, now, ProxyInput::FromHomeAgent(from_ha), out);
}

fn bench_one(c: &mut Criterion, name: &str, traced: bool) {
    let now = Now::new(Instant::from_secs(1000), NtpTimestamp::new(SECONDS, u32::MAX));
    let mut p = proxy();
    let mut t = RegistrationTraces::new(traced, 65_536, Duration::from_secs(7));
    let mut out = Vec::with_capacity(16);
    let (rq, rp) = round_messages(0);
    round(&mut p, &mut t, now, &rq, &rp, &mut out);
    assert!(
        out.iter()
            .any(|o| matches!(o, ProxyOutput::Outcome(x) if x.code == ReplyCode::Accepted)),
        "{out:?}"
    );
    let mut g = c.benchmark_group("relay_round");
    g.throughput(Throughput::Elements(1));
    let mut n = 1u64;
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                n += 1;
                round_messages(n)
            },
            |(rq, rp)| round(&mut p, &mut t, now, &rq, &rp, &mut out),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    bench_one(c, "untraced", false);
    for (name, ratio) in [("traced", 1.0), ("traced_sampled_10pct", 0.1)] {
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(Discard).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .build();
        // As mip_io::telemetry::init does: the roots are drawn by the daemon, before any span exists.
        mip_io::telemetry::set_root_sampling(ratio);
        let subscriber = tracing_subscriber::registry().with(mip_io::telemetry::otel_layer(&provider));
        tracing::subscriber::with_default(subscriber, || bench_one(c, name, true));
        provider.shutdown().unwrap();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

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
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mip::roles::Now;
use mip::roles::proxy::{Proxy, ProxyInput, ProxyOutput};
use mip::time::{Instant, NtpTimestamp};
use mip::wire::ReplyCode;
use mip_proxy::traces::RegistrationTraces;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;

// The relay round of `mip/benches/relay.rs`, shared by path (benches cannot depend on each other).
#[path = "../../mip/benches/support/relay_round.rs"]
mod relay_round;
use relay_round::{SECONDS, from_home_agent, from_mobile, proxy, round_messages};

/// Receives batches and drops them.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
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
    turn(p, t, now, ProxyInput::FromMobile(from_mobile(request)), out);
    turn(p, t, now, ProxyInput::FromHomeAgent(from_home_agent(reply)), out);
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
            .with_sampler(mip_io::telemetry::daemon_sampler())
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

//! One full proxy relay round (issue 3): a mobile node's request in → the relayed request out to the home agent
//! → the HA's reply in → the reply out to the node. Four authenticator operations (verify the node's request,
//! sign the relayed one, verify the HA's reply, sign the node's reply), the binding refresh and the pending list.
//! The node's request and the HA's reply are built in the untimed setup of each iteration.
//!
//! Run: `cargo bench -p mip --bench relay`. Target: ≥ 250,000 rounds per second per core.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mip::roles::Now;
use mip::roles::proxy::{Proxy, ProxyInput, ProxyOutput};
use mip::time::{Instant, NtpTimestamp};
use mip::wire::ReplyCode;

mod support {
    pub mod relay_round;
}
use support::relay_round::{MNS, SECONDS, from_home_agent, from_mobile, proxy, round_messages};

fn relay_round(p: &mut Proxy, now: Now, request: &[u8], reply: &[u8], out: &mut Vec<ProxyOutput>) {
    out.clear();
    p.handle(now, ProxyInput::FromMobile(from_mobile(request)), out);
    p.handle(now, ProxyInput::FromHomeAgent(from_home_agent(reply)), out);
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

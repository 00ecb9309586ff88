//! Loopback UDP throughput of the batched socket API (`sendmmsg` + `recvmmsg`, 32 datagrams per call) against
//! the anchor measured in the same run: std's `send_to` + `recv_from`, one datagram per syscall.
//!
//! Per payload size (64 B, 1400 B) and API: `send` times only the sends of a round of 32 datagrams, `recv` only
//! the receives, `both` the whole round. On loopback a send also runs the receiver's side of the stack (softirq
//! in the sender's context), so `send` carries most of the kernel's per-packet cost.
//!
//! `cargo bench -p mip-io --bench udp_batch` (throughput in datagrams per second).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mip_io::batch::{DEFAULT_BATCH, RecvBatch, SendBatch};
use mip_io::socket::{UdpOptions, UdpSocket};

const SIZES: [usize; 2] = [64, 1400];
const PER_ROUND: usize = DEFAULT_BATCH;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timed {
    Send,
    Recv,
    Both,
}

impl Timed {
    fn label(self) -> &'static str {
        match self {
            Timed::Send => "send",
            Timed::Recv => "recv",
            Timed::Both => "both",
        }
    }
}

fn socket(cmsgs: bool) -> UdpSocket {
    let opts = UdpOptions {
        recv_buffer: Some(4 << 20),
        send_buffer: Some(4 << 20),
        pktinfo: cmsgs,
        recv_ttl: cmsgs,
        ..UdpOptions::default()
    };
    UdpSocket::bind_with(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap()
}

/// Receives exactly `n` datagrams with `recvmmsg`.
fn recv_n(rx: &UdpSocket, batch: &mut RecvBatch, n: usize) {
    let mut got = 0;
    while got < n {
        match rx.recv_batch(batch) {
            Ok(k) => {
                got += k;
                for d in batch.iter() {
                    black_box(d.payload);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
}

/// Runs `rounds` rounds of (send, receive) and returns the time spent in the parts selected by `timed`.
fn rounds(rounds: u64, timed: Timed, mut send: impl FnMut(), mut recv: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..rounds {
        let t = Instant::now();
        send();
        let sent = Instant::now();
        recv();
        let done = Instant::now();
        spent += match timed {
            Timed::Send => sent - t,
            Timed::Recv => done - sent,
            Timed::Both => done - t,
        };
    }
    spent
}

fn udp_loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_loopback");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(PER_ROUND as u64));
    for size in SIZES {
        let payload = vec![0xa5u8; size];
        // Batched, with IP_PKTINFO + IP_RECVTTL (what the daemons use) and, for `both`, without (syscalls alone).
        for (api, cmsgs, parts) in [
            ("mmsg32", true, &[Timed::Send, Timed::Recv, Timed::Both][..]),
            ("mmsg32_no_cmsg", false, &[Timed::Recv, Timed::Both][..]),
        ] {
            let rx = socket(cmsgs);
            let tx = socket(cmsgs);
            let mut out = SendBatch::default();
            while !out.is_full() {
                out.push(&payload, rx.local_addr()).unwrap();
            }
            let mut batch = RecvBatch::default();
            for &timed in parts {
                group.bench_function(format!("{api}/{}/{size}B", timed.label()), |b| {
                    b.iter_custom(|n| {
                        rounds(
                            n,
                            timed,
                            || assert_eq!(tx.send_batch(&out).unwrap().sent, PER_ROUND),
                            || recv_n(&rx, &mut batch, PER_ROUND),
                        )
                    });
                });
            }
        }

        // Anchor: one syscall per datagram with std's socket.
        let srx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = srx.local_addr().unwrap();
        let mut buf = vec![0u8; 2048];
        for timed in [Timed::Send, Timed::Recv, Timed::Both] {
            group.bench_function(format!("std_single/{}/{size}B", timed.label()), |b| {
                b.iter_custom(|n| {
                    rounds(
                        n,
                        timed,
                        || {
                            for _ in 0..PER_ROUND {
                                stx.send_to(&payload, dst).unwrap();
                            }
                        },
                        || {
                            for _ in 0..PER_ROUND {
                                black_box(srx.recv_from(&mut buf).unwrap());
                            }
                        },
                    )
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, udp_loopback);
criterion_main!(benches);

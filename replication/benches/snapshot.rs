//! Replication benchmark (prints numbers; `cargo bench -p mip-replication --bench snapshot`):
//! * snapshot of 1,000,000 bindings from one replicator to a fresh one over 127.0.0.1 (target ≤ 5 s);
//! * heap bytes per record of the replica store (target ≤ 256);
//! * replication lag p50/p99 of deltas published at 5,000 registrations/s for 5 s;
//! * burst delta throughput (200,000 deltas published as fast as possible).
//!
//! `MIP_REPL_BENCH_N` overrides the snapshot size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mip::binding::{Binding, Encapsulation, TunnelEndpoint};
use mip::roles::{BindingChange, BindingChangeKind, Now};
use mip::time::{Instant, NtpTimestamp};
use mip_replication::transport::{Replicator, SharedStore};
use mip_replication::{IdentOrder, ReplicaStore, ReplicationConfig};

fn now() -> Now {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    let ms = u64::try_from(origin.elapsed().as_millis()).unwrap() + 1_000_000;
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Now::new(Instant::from_millis(ms), NtpTimestamp::from_unix(wall))
}

fn change(i: u32, ident: u64, at: Instant) -> BindingChange {
    let coa = Ipv4Addr::from(0xc000_0000 + (i & 0xffff));
    BindingChange {
        kind: BindingChangeKind::Created,
        home_address: Ipv4Addr::from(0x0a00_0000 + i),
        nai: None,
        binding: Binding::new(
            coa,
            TunnelEndpoint {
                addr: coa,
                port: 4500,
                encapsulation: Encapsulation::UdpIpInIp,
            },
            Ipv4Addr::new(10, 255, 0, 1),
            ident,
            600,
            at,
        ),
    }
}

fn port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn start(id: u32, listen: SocketAddr, peers: Vec<SocketAddr>, store: SharedStore) -> Replicator {
    let mut c = ReplicationConfig::plaintext(id, listen, peers);
    c.queue_limit = 1 << 20;
    Replicator::start(c, store, Arc::new(now), Arc::new(|| {})).unwrap()
}

fn wait(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let t = std::time::Instant::now();
    while !f() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

fn main() {
    let n: u32 = std::env::var("MIP_REPL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut store = ReplicaStore::with_capacity(1, n as usize);
    let t0 = now();
    for i in 0..n {
        store
            .apply_local(&change(i, 1, t0.instant), IdentOrder::Timestamp, t0)
            .unwrap();
    }
    println!(
        "replica store: {} heap bytes per record ({n} records)",
        store.approx_heap_bytes() / store.len()
    );
    let a_store: SharedStore = Arc::new(Mutex::new(store));
    let (pa, pb) = (port(), port());
    let a = start(1, pa, vec![], a_store.clone());
    let b_store: SharedStore = Arc::new(Mutex::new(ReplicaStore::with_capacity(2, n as usize)));
    let started = std::time::Instant::now();
    let b = start(2, pb, vec![pa], b_store.clone());
    let ok = wait(
        || b.status().peers.first().is_some_and(|p| p.snapshot_received),
        Duration::from_secs(120),
    );
    let snap = started.elapsed();
    assert!(ok, "snapshot did not complete");
    assert_eq!(b_store.lock().unwrap().len(), n as usize);
    println!(
        "snapshot: {n} bindings to a fresh replica in {:.2} s ({:.0} records/s; target <= 5 s)",
        snap.as_secs_f64(),
        f64::from(n) / snap.as_secs_f64()
    );
    println!(
        "receiving store: {} heap bytes per record",
        b_store.lock().unwrap().approx_heap_bytes() / n as usize
    );

    // Paced: 5,000 registrations/s for 5 s (refreshes of existing nodes, one delta each).
    let rate = 5_000u32;
    let secs = 5u32;
    let begin = std::time::Instant::now();
    for k in 0..rate * secs {
        let due = begin + Duration::from_micros(u64::from(k) * 1_000_000 / u64::from(rate));
        if let Some(d) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
        let t = now();
        let d = a_store
            .lock()
            .unwrap()
            .apply_local(
                &change(k % n, 2 + u64::from(k / n), t.instant),
                IdentOrder::Timestamp,
                t,
            )
            .unwrap();
        a.publish(d);
    }
    let target = u64::from(n) + u64::from(rate * secs);
    wait(
        || b.status().peers.first().is_some_and(|p| p.records_applied >= target),
        Duration::from_secs(30),
    );
    let p = b.status().peers.into_iter().next().unwrap();
    println!(
        "lag at {rate}/s for {secs} s: p50 {} ms, p99 {} ms (last {} samples, ms resolution)",
        p.lag_ms_p50.unwrap_or(0),
        p.lag_ms_p99.unwrap_or(0),
        p.lag_samples
    );

    // Burst throughput.
    let burst = 200_000u32.min(n);
    let begin = std::time::Instant::now();
    let before = b.status().peers.first().map_or(0, |p| p.records_applied);
    for k in 0..burst {
        let t = now();
        let d = a_store
            .lock()
            .unwrap()
            .apply_local(&change(k, 1_000_000, t.instant), IdentOrder::Timestamp, t)
            .unwrap();
        a.publish(d);
    }
    let published = begin.elapsed();
    wait(
        || {
            b.status()
                .peers
                .first()
                .is_some_and(|p| p.records_applied >= before + u64::from(burst))
        },
        Duration::from_secs(60),
    );
    let all = begin.elapsed();
    println!(
        "burst: {burst} deltas published in {:.2} s, applied at the peer after {:.2} s ({:.0} deltas/s end to end)",
        published.as_secs_f64(),
        all.as_secs_f64(),
        f64::from(burst) / all.as_secs_f64()
    );
    drop(b);
    drop(a);
}

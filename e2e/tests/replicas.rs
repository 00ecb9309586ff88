//! Scale-out in the namespace lab (issue 5): three `mip-proxy` replicas in `px1`..`px3` behind the ECMP router
//! `ecmp`, sharing their binding cache and replay state over gRPC with mTLS, with the real HA, FAs, MN and
//! the strongSwan VPN (docs/lab.md "Replicas mode", README "Scale-out"). The harness's BFD stand-in
//! (`mip_e2e::bfd`) withdraws a replica's next hop after 3 missed 50 ms `/readyz` probes, as a BFD-driven route
//! controller would.
//!
//! What a user depends on: a node registered through one replica is served by any other; a replica that dies
//! mid-stream costs no re-registration, no binding and no VPN re-establishment; a restarted replica is ready
//! only once it has caught up; SIGTERM drains without loss; a partitioned replica converges after the heal; a
//! registration replayed at another replica is refused; a registration storm spread over the replicas leaves
//! identical caches. Needs root; one lab at a time (serial lock).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mip_e2e::bfd::{Bfd, BfdOptions};
use mip_e2e::failover;
use mip_e2e::probe::{self, ProbeConfig, Prober};
use mip_e2e::storm::{self, StormOptions};
use mip_e2e::strongswan::IkeSa;
use mip_e2e::system::{self, System, SystemOptions, admin_get, admin_request, metric_sum};
use mip_e2e::{Access, Lab, LabOptions, Mode, ProcessGuard, plan};
use serde_json::Value;

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The replicas' SIGTERM drain: longer than BFD's detection (3 × 50 ms) plus the route change.
const DRAIN: Duration = Duration::from_millis(1000);

/// Field order is drop order: the system's processes stop before the lab's namespaces go.
struct Env {
    sys: System,
    _echo: ProcessGuard,
    lab: Lab,
}

fn env(storm_nodes: u32) -> Env {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::up(LabOptions {
        mode: Mode::Replicas,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let echo = lab.spawn_echo().unwrap();
    let opts = SystemOptions {
        replicas: 3,
        storm_nodes,
        proxy_drain: DRAIN,
        ..SystemOptions::default()
    };
    let sys = System::start(&mut lab, opts).unwrap_or_else(|e| panic!("system start: {e}"));
    Env { sys, _echo: echo, lab }
}

impl Env {
    fn ns(&self, n: &str) -> String {
        self.lab.ns(n)
    }

    fn px(&self, i: usize) -> String {
        self.lab.ns(self.sys.replica_ns(i))
    }

    fn metrics(&self, ns: &str) -> String {
        admin_get(ns, "/metrics").unwrap()
    }

    /// The MN's accepted registrations so far.
    fn mn_registrations(&self) -> f64 {
        metric_sum(
            &self.metrics(&self.ns("mn")),
            "mip_registrations_total",
            &["code=\"0\""],
        )
    }

    /// Tunnel packets replica `i` forwarded (both directions, every encapsulation).
    fn tunnel_packets(&self, i: usize) -> f64 {
        metric_sum(&self.metrics(&self.px(i)), "mip_tunnel_packets_total", &[])
    }

    /// Replica `i`'s cache: (home address, care-of address, encapsulation, tunnel address, port, lifetime,
    /// home agent), sorted; the remaining time is left out (it differs by the time between two reads).
    fn cache(&self, i: usize) -> Vec<(String, String, String, String, u64, u64, String)> {
        let v: Value = serde_json::from_str(&admin_get(&self.px(i), "/bindings").unwrap()).unwrap();
        let mut rows: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["home_address"].as_str().unwrap().to_owned(),
                    b["care_of_address"].as_str().unwrap().to_owned(),
                    b["tunnel"]["encapsulation"].as_str().unwrap().to_owned(),
                    b["tunnel"]["address"].as_str().unwrap().to_owned(),
                    b["tunnel"]["port"].as_u64().unwrap(),
                    b["lifetime"].as_u64().unwrap(),
                    b["home_agent"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// The MN's binding at replica `i`: (care-of address, tunnel address).
    fn mn_binding(&self, i: usize) -> Option<(String, String)> {
        self.cache(i)
            .into_iter()
            .find(|r| r.0 == plan::HOA.to_string())
            .map(|r| (r.1, r.3))
    }

    /// Waits until every running replica's cache equals replica `reference`'s; returns it.
    fn converged(
        &self,
        running: &[usize],
        within: Duration,
    ) -> Vec<(String, String, String, String, u64, u64, String)> {
        let end = Instant::now() + within;
        loop {
            let caches: Vec<_> = running.iter().map(|&i| self.cache(i)).collect();
            if caches.windows(2).all(|w| w[0] == w[1]) {
                return caches.into_iter().next().unwrap_or_default();
            }
            if Instant::now() > end {
                for (i, c) in running.iter().zip(&caches) {
                    eprintln!("replica {i}: {} bindings, first {:?}", c.len(), c.first());
                }
                panic!("replicas {running:?} did not converge within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sas(&self) -> (Vec<IkeSa>, Vec<IkeSa>) {
        self.sys.sas().unwrap()
    }

    /// Ping and a checksummed TCP transfer both ways between MN and CN.
    fn check_traffic(&self, what: &str) {
        let st = self.lab.ping("mn", plan::CN, 3).unwrap();
        assert_eq!(st.received, 3, "{what}: ping MN → CN {st:?}");
        let st = self.lab.ping("cn", plan::HOA, 3).unwrap();
        assert_eq!(st.received, 3, "{what}: ping CN → MN {st:?}");
        for (from, to, dst) in [
            ("mn", "cn", SocketAddrV4::new(plan::CN, 7001)),
            ("cn", "mn", SocketAddrV4::new(plan::HOA, 7002)),
        ] {
            let r = probe::tcp_transfer(&self.ns(from), &self.ns(to), dst, 2_000_000, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{what}: TCP {from} → {to}: {e}"));
            assert!(r.matched && r.bytes == 2_000_000, "{what}: TCP {from} → {to}: {r:?}");
        }
    }

    fn prober(&self) -> Prober {
        Prober::start(
            &self.ns("mn"),
            ProbeConfig {
                target: SocketAddrV4::new(plan::CN, plan::ECHO_PORT),
                interval: Duration::from_millis(1),
                drain: Duration::from_millis(500),
            },
        )
        .unwrap()
    }
}

fn same_sas(before: &(Vec<IkeSa>, Vec<IkeSa>), after: &(Vec<IkeSa>, Vec<IkeSa>), what: &str) {
    assert_eq!(before, after, "{what}: the VPN's IKE and CHILD SAs changed");
}

/// Register through one replica while the data flows through another; then SIGKILL the replica carrying the
/// traffic mid-stream (no re-registration, no binding lost, VPN untouched), and restart it (ready only once
/// it has caught up: its first ready `/bindings` already holds the MN's binding).
#[test]
fn replicas_register_via_one_serve_via_another_survive_sigkill_and_catch_up_on_restart() {
    let _g = serial();
    let mut e = env(0);
    let sas = e.sas();
    // Every replica holds the MN's binding, whichever relayed its registration.
    let want = e.mn_binding(0).expect("the MN's binding at px1");
    e.converged(&[0, 1, 2], Duration::from_secs(3));

    // (1) Register through px1 only: a hand-off to access A while px1 is the only next hop.
    e.lab.set_replica_nexthops(&[0]).unwrap();
    let regs = e.mn_registrations();
    let relayed = |e: &Env, i: usize| metric_sum(&e.metrics(&e.px(i)), "mip_registrations_total", &[]);
    let relayed_before: Vec<f64> = (0..3).map(|i| relayed(&e, i)).collect();
    e.lab.mn_attach(Access::A, false).unwrap();
    system::wait_registered_on(&e.lab, Access::A, Duration::from_secs(10)).unwrap();
    assert!(relayed(&e, 0) > relayed_before[0], "px1 handled the registration");
    for i in [1, 2] {
        assert_eq!(relayed(&e, i), relayed_before[i], "px{} saw no registration", i + 1);
    }
    let at_a = e.mn_binding(0).unwrap();
    assert_ne!(at_a, want, "the binding moved to access A");
    e.converged(&[0, 1, 2], Duration::from_secs(3));
    // ... and the data through px2 only: px2 forwards, px1 forwards nothing, the MN does not re-register.
    let regs_a = e.mn_registrations();
    assert!(regs_a > regs);
    e.lab.set_replica_nexthops(&[1]).unwrap();
    let (p1, p2) = (e.tunnel_packets(0), e.tunnel_packets(1));
    e.check_traffic("registered via px1, data via px2");
    assert!(e.tunnel_packets(1) - p2 > 1000.0, "px2 carried the traffic");
    assert_eq!(e.tunnel_packets(0), p1, "px1 carried none of it");
    assert_eq!(e.mn_registrations(), regs_a, "no re-registration for the data at px2");

    // (2) SIGKILL mid-stream: all three next hops, BFD running, a probe and a TCP transfer flowing.
    e.lab.set_replica_nexthops(&[0, 1, 2]).unwrap();
    let bfd = Bfd::start(&e.lab, BfdOptions::default()).unwrap();
    let prober = e.prober();
    std::thread::sleep(Duration::from_millis(300));
    let victim = failover::busiest_replica(&e.lab, &e.sys, &[0, 1, 2], Duration::from_millis(300)).unwrap();
    let (mn_ns, cn_ns) = (e.ns("mn"), e.ns("cn"));
    let transfer = std::thread::spawn(move || {
        probe::tcp_transfer(
            &mn_ns,
            &cn_ns,
            SocketAddrV4::new(plan::CN, 7003),
            20_000_000,
            Duration::from_secs(30),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    e.sys.kill_replica(victim).unwrap();
    let withdrawn = bfd.wait(victim, false, Duration::from_secs(2)).unwrap();
    let t = transfer.join().unwrap().unwrap();
    assert!(t.matched && t.bytes == 20_000_000, "TCP across the SIGKILL: {t:?}");
    std::thread::sleep(Duration::from_millis(300));
    let report = prober.stop().unwrap();
    eprintln!(
        "SIGKILL px{}: withdrawn after {:?}; probe {}",
        victim + 1,
        withdrawn - killed,
        report.to_json()
    );
    assert!(
        report.received > 0 && report.trailing_lost == 0,
        "traffic flows after the failover: {report:?}"
    );
    assert_eq!(e.mn_registrations(), regs_a, "no re-registration after the SIGKILL");
    assert_eq!(
        system::text(&system::mn_state(&e.lab).unwrap(), "/state"),
        Some("registered")
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for &i in &survivors {
        assert_eq!(e.mn_binding(i), Some(at_a.clone()), "px{} kept the binding", i + 1);
    }
    same_sas(&sas, &e.sas(), "SIGKILL of a replica");

    // (3) Restart: not ready before it caught up; its first ready /bindings holds the MN's binding.
    e.sys.spawn_replica(&e.lab, victim).unwrap();
    let ns = e.px(victim);
    let end = Instant::now() + Duration::from_secs(10);
    let first_ready = loop {
        if let Ok((200, _)) = admin_request(&ns, "/readyz") {
            break admin_get(&ns, "/bindings").unwrap();
        }
        assert!(Instant::now() < end, "px{} not ready after restart", victim + 1);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        first_ready.contains(&plan::HOA.to_string()),
        "the restarted replica was ready before it had the MN's binding: {first_ready}"
    );
    let m = e.metrics(&ns);
    assert!(
        metric_sum(&m, "mip_replication_snapshots_total", &["direction=\"received\""]) >= 2.0,
        "{m}"
    );
    bfd.wait(victim, true, Duration::from_secs(2)).unwrap();
    e.converged(&[0, 1, 2], Duration::from_secs(3));
    let hops = bfd.stop().unwrap();
    assert_eq!(hops, vec![0, 1, 2]);
    e.lab.set_replica_nexthops(&hops).unwrap();
    e.check_traffic("after the restart");
    assert_eq!(
        e.mn_registrations(),
        regs_a,
        "no re-registration across kill and restart"
    );
    same_sas(&sas, &e.sas(), "restart of a replica");
}

/// SIGTERM drains: the replica turns not-ready, BFD withdraws it while it still forwards, it flushes and
/// exits; the probe (1 ms) loses nothing and the MN does not re-register. Then a partitioned replica misses a
/// hand-off and converges after the heal.
#[test]
fn replicas_sigterm_drains_without_loss_and_a_partitioned_replica_converges_after_the_heal() {
    let _g = serial();
    let mut e = env(0);
    let sas = e.sas();
    let regs = e.mn_registrations();
    let bfd = Bfd::start(&e.lab, BfdOptions::default()).unwrap();
    let prober = e.prober();
    std::thread::sleep(Duration::from_millis(300));
    let victim = failover::busiest_replica(&e.lab, &e.sys, &[0, 1, 2], Duration::from_millis(300)).unwrap();
    let stopped = Instant::now();
    let status = e.sys.stop_replica(victim).expect("the replica was running");
    let took = stopped.elapsed();
    assert!(status.success(), "clean exit after the drain: {status:?}");
    assert!(took >= DRAIN, "it drained ({took:?})");
    std::thread::sleep(Duration::from_millis(300));
    let report = prober.stop().unwrap();
    eprintln!(
        "SIGTERM px{} (exit after {took:?}); probe {}",
        victim + 1,
        report.to_json()
    );
    assert!(report.sent > 1000, "{report:?}");
    assert_eq!(report.lost, 0, "the drain lost probes: {report:?}");
    assert_eq!(e.mn_registrations(), regs, "no re-registration across the drain");
    let hops = bfd.stop().unwrap();
    e.lab.set_replica_nexthops(&hops).unwrap();
    assert!(!hops.contains(&victim));
    e.sys.start_replica(&e.lab, victim).unwrap();
    e.lab.set_replica_nexthops(&[0, 1, 2]).unwrap();
    e.converged(&[0, 1, 2], Duration::from_secs(3));

    // Partition px3 from its peers (replication only: nftables drops TCP 7443 both ways), hand the MN off
    // through px1 and px2, and check px3 is stale; heal, and it converges.
    let px3 = e.px(2);
    let port = system::REPLICATION_PORT;
    let rules = format!(
        "table inet partition {{ chain in {{ type filter hook input priority 0; tcp dport {port} drop; tcp sport {port} drop; }}; \
         chain out {{ type filter hook output priority 0; tcp dport {port} drop; tcp sport {port} drop; }}; }}"
    );
    mip_e2e::cmd::Cmd::in_ns(&px3, ["nft", rules.as_str()]).run().unwrap();
    e.lab.set_replica_nexthops(&[0, 1]).unwrap();
    let before = e.mn_binding(2).unwrap();
    e.lab.mn_attach(Access::A, false).unwrap();
    system::wait_registered_on(&e.lab, Access::A, Duration::from_secs(10)).unwrap();
    let moved = e.mn_binding(0).unwrap();
    assert_ne!(moved, before);
    e.converged(&[0, 1], Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        e.mn_binding(2),
        Some(before),
        "px3 is partitioned: it still has the old binding"
    );
    mip_e2e::cmd::Cmd::in_ns(&px3, ["nft", "delete table inet partition"])
        .run()
        .unwrap();
    let healed = Instant::now();
    e.converged(&[0, 1, 2], Duration::from_secs(15));
    eprintln!("partition healed: px3 converged after {:?}", healed.elapsed());
    assert_eq!(e.mn_binding(2), Some(moved));
    e.lab.set_replica_nexthops(&[2]).unwrap();
    e.check_traffic("through the healed replica alone");
    same_sas(&sas, &e.sas(), "drain, partition and heal");
}

/// A registration accepted at one replica and replayed (the same bytes) at another is refused with code 133
/// and not relayed; a storm of registrations spread over the replicas by ECMP leaves identical caches, and so
/// does deregistering half of the nodes.
#[test]
fn replicas_refuse_a_replay_at_another_replica_and_a_registration_storm_converges() {
    const NODES: u32 = 2_000;
    let _g = serial();
    let mut e = env(NODES);

    // Replay: node 0 registers at px1 only, the same request is replayed at px2 only.
    let ident = storm::IdentClock::new().next();
    let request = storm::request(0, plan::INET_DMZ, 600, ident).unwrap();
    let ha_regs = |e: &Env| metric_sum(&e.metrics(&e.ns("ha")), "mip_registrations_total", &[]);
    let send = |e: &Env, bytes: &[u8]| -> Option<u8> {
        let bytes = bytes.to_vec();
        let sock = mip_e2e::netns::run_in(&e.ns("inet"), move || {
            Ok(UdpSocket::bind(SocketAddrV4::new(plan::INET_DMZ, 0)).unwrap())
        })
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(&bytes, SocketAddrV4::new(plan::PROXY_PUBLIC, 434))
            .unwrap();
        let mut buf = [0u8; 1500];
        sock.recv(&mut buf)
            .ok()
            .filter(|&n| n > 1 && buf[0] == 3)
            .map(|_| buf[1])
    };
    e.lab.set_replica_nexthops(&[0]).unwrap();
    assert_eq!(send(&e, &request), Some(0), "node 0 registers at px1");
    e.converged(&[0, 1, 2], Duration::from_secs(3));
    e.lab.set_replica_nexthops(&[1]).unwrap();
    let (ha_before, cache_before) = (ha_regs(&e), e.cache(1));
    assert_eq!(
        send(&e, &request),
        Some(133),
        "the replay at px2 is refused (identification mismatch)"
    );
    assert_eq!(ha_regs(&e), ha_before, "the replay was not relayed to the HA");
    assert_eq!(e.cache(1), cache_before);
    e.lab.set_replica_nexthops(&[0, 1, 2]).unwrap();

    // Storm: every node registers through whichever replica ECMP picks for its sender.
    let opts = StormOptions {
        nodes: NODES,
        senders: 24,
        window: 8,
        timeout: Duration::from_secs(3),
        ..StormOptions::default()
    };
    let before: Vec<f64> = (0..3)
        .map(|i| metric_sum(&e.metrics(&e.px(i)), "mip_registrations_total", &[]))
        .collect();
    let r = storm::run_storm(&e.ns("inet"), &opts).unwrap();
    eprintln!("storm: {}", r.summary());
    assert!(r.all_accepted(), "{r:?}");
    for (i, before) in before.iter().enumerate() {
        let d = metric_sum(&e.metrics(&e.px(i)), "mip_registrations_total", &[]) - before;
        assert!(d > 0.0, "ECMP gave px{} part of the storm", i + 1);
    }
    let cache = e.converged(&[0, 1, 2], Duration::from_secs(10));
    assert_eq!(cache.len(), NODES as usize + 1, "every storm node and the MN");

    // Deregister half of the nodes: again identical, and only the other half (and the MN) remain.
    let dereg = StormOptions {
        nodes: NODES / 2,
        deregister: true,
        ..opts
    };
    let r = storm::run_storm(&e.ns("inet"), &dereg).unwrap();
    assert!(r.all_accepted(), "{r:?}");
    let cache = e.converged(&[0, 1, 2], Duration::from_secs(10));
    assert_eq!(cache.len(), (NODES - NODES / 2) as usize + 1);
}

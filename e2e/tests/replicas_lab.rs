//! The Replicas lab mode (issue 5, scale-out groundwork; docs/lab.md "Replicas mode"): three proxy
//! replicas `px1`..`px3` behind the ECMP router `ecmp`. Plain sockets, no mip daemons: UDP flows to the shared
//! addresses spread over every replica, each flow sticks to one, and after the harness withdraws a replica's
//! next hop (as BFD would) no flow reaches it. Needs root, like tests/lab.rs, and takes the same kind of
//! serial lock (one lab at a time on the 2-core machine).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mip_e2e::topology::list_namespaces;
use mip_e2e::{Lab, LabOptions, Mode, netns, plan};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flows per round: with 3 equal next hops, the chance that one replica gets none of 60 L4-hashed flows is
/// about 3 × (2/3)^60 ≈ 1e-10.
const FLOWS: usize = 60;
/// Datagrams per flow and round (all of them must land on the same replica).
const PER_FLOW: usize = 3;
const PORT: u16 = 7300;

/// One destination under test: UDP listeners bound to `dst` in every replica, and `FLOWS` sockets (distinct
/// source ports) in `from_ns` bound to `src`.
struct Spread {
    dst: Ipv4Addr,
    listeners: Vec<UdpSocket>,
    senders: Vec<UdpSocket>,
}

impl Spread {
    fn new(lab: &Lab, from_ns: &str, src: Ipv4Addr, dst: Ipv4Addr) -> Spread {
        let listeners = lab
            .replicas()
            .iter()
            .map(|px| {
                let s = netns::run_in(&lab.ns(px), move || Ok(UdpSocket::bind((dst, PORT)).unwrap()))
                    .unwrap_or_else(|e| panic!("listener on {dst} in {px}: {e}"));
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                s
            })
            .collect();
        let senders = netns::run_in(&lab.ns(from_ns), move || {
            Ok((0..FLOWS)
                .map(|_| UdpSocket::bind((src, 0)).unwrap())
                .collect::<Vec<_>>())
        })
        .unwrap();
        Spread {
            dst,
            listeners,
            senders,
        }
    }

    /// Sends one round; returns, per replica, source port -> datagrams received. Checks that every datagram
    /// arrived exactly once and that no flow was split between replicas.
    fn round(&self) -> Vec<BTreeMap<u16, usize>> {
        for s in &self.senders {
            for k in 0..PER_FLOW {
                s.send_to(&[k as u8; 16], SocketAddrV4::new(self.dst, PORT)).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut seen = Vec::new();
        for l in &self.listeners {
            let mut m = BTreeMap::new();
            let mut buf = [0u8; 64];
            loop {
                match l.recv_from(&mut buf) {
                    Ok((_, from)) => *m.entry(from.port()).or_insert(0) += 1,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                    Err(e) => panic!("recv on {}: {e}", self.dst),
                }
            }
            seen.push(m);
        }
        let mut all: Vec<u16> = seen.iter().flat_map(|m| m.keys().copied()).collect();
        let total = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            total,
            "a flow to {} was split between replicas: {seen:?}",
            self.dst
        );
        assert_eq!(total, FLOWS, "flows to {} that arrived: {seen:?}", self.dst);
        for m in &seen {
            assert!(
                m.values().all(|n| *n == PER_FLOW),
                "lost or duplicated datagrams to {}: {seen:?}",
                self.dst
            );
        }
        seen
    }
}

fn counts(seen: &[BTreeMap<u16, usize>]) -> Vec<usize> {
    seen.iter().map(BTreeMap::len).collect()
}

#[test]
fn replicas_lab_spreads_flows_and_withdraws_a_replica() {
    let _g = serial();
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::up(LabOptions {
        mode: Mode::Replicas,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let prefix = lab.prefix().to_owned();
    assert_eq!(lab.replicas(), ["px1", "px2", "px3"]);
    assert_eq!(lab.replica_nexthops(), [0, 1, 2]);
    let names = list_namespaces(&prefix);
    for n in ["px1", "px2", "px3", "ecmp", "inet", "dmz", "intra", "vpngw", "ha"] {
        assert!(names.contains(&lab.ns(n)), "{n} missing from {names:?}");
    }
    assert!(!names.contains(&lab.ns("proxy")), "{names:?}");

    // inet -> proxy_public, ha -> proxy_private, and the VPN gateway's route for the home network (for the test,
    // the HoA is made a local /32 on every replica so a socket can count what arrives).
    for px in lab.replicas() {
        lab.ip(px, &["addr", "add", &format!("{}/32", plan::HOA), "dev", "lo"])
            .unwrap();
    }
    let cases = [
        ("inet", Spread::new(&lab, "inet", plan::INET_DMZ, plan::PROXY_PUBLIC)),
        ("ha", Spread::new(&lab, "ha", plan::HA_LAN, plan::PROXY_PRIVATE)),
        ("vpngw", Spread::new(&lab, "vpngw", plan::VPNGW_PUBLIC, plan::HOA)),
    ];

    for (from, sp) in &cases {
        let first = sp.round();
        let c = counts(&first);
        eprintln!("{from} -> {}: flows per replica {c:?}", sp.dst);
        assert!(
            c.iter().all(|n| *n > 0),
            "{from} -> {}: not every replica got a flow: {c:?}",
            sp.dst
        );
        // Same flows again: each sticks to its replica.
        assert_eq!(
            sp.round(),
            first,
            "{from} -> {}: flows moved without a route change",
            sp.dst
        );
    }

    // BFD says px2 is dead: its next hop leaves every multipath route.
    lab.set_replica_nexthops(&[0, 2]).unwrap();
    assert_eq!(lab.replica_nexthops(), [0, 2]);
    let routes = lab
        .ip("ecmp", &["route", "show", &format!("{}/32", plan::PROXY_PUBLIC)])
        .unwrap();
    assert!(
        !routes.contains("198.51.100.12") && routes.contains("198.51.100.13"),
        "{routes}"
    );
    for (from, sp) in &cases {
        let c = counts(&sp.round());
        eprintln!("{from} -> {}: px2 withdrawn, flows per replica {c:?}", sp.dst);
        assert_eq!(c[1], 0, "{from} -> {}: a flow still reached px2: {c:?}", sp.dst);
        assert!(c[0] > 0 && c[2] > 0, "{from} -> {}: {c:?}", sp.dst);
    }

    // px2 is back: it gets flows again.
    lab.set_replica_nexthops(&[0, 1, 2]).unwrap();
    for (from, sp) in &cases {
        let c = counts(&sp.round());
        assert!(
            c.iter().all(|n| *n > 0),
            "{from} -> {}: after restoring px2: {c:?}",
            sp.dst
        );
    }

    // Nobody answered ARP for a shared address: the segments' neighbour caches never name them.
    for (ns, shared) in [
        ("inet", plan::PROXY_PUBLIC),
        ("vpngw", plan::PROXY_PUBLIC),
        ("ha", plan::PROXY_PRIVATE),
    ] {
        let neigh = lab.ip(ns, &["neigh", "show"]).unwrap();
        assert!(
            !neigh.contains(&format!("{shared} ")),
            "{ns} resolved {shared}: {neigh}"
        );
    }

    // API misuse is an error, not a silent no-op.
    assert!(lab.set_replica_nexthops(&[3]).is_err());
    assert_eq!(lab.replica_nexthops(), [0, 1, 2]);

    drop(cases);
    lab.down().unwrap();
    assert!(list_namespaces(&prefix).is_empty(), "{:?}", list_namespaces(&prefix));
}

#[test]
fn replica_api_refuses_the_other_modes() {
    let _g = serial();
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::up(LabOptions {
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        initial_access: None,
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let prefix = lab.prefix().to_owned();
    assert!(lab.replicas().is_empty());
    assert!(lab.set_replica_nexthops(&[0]).is_err());
    lab.down().unwrap();
    assert!(list_namespaces(&prefix).is_empty());
}

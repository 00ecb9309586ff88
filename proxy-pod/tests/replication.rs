//! Two real `mip-proxy` replicas sharing their binding cache over plaintext gRPC (issue 5): each runs in its own
//! namespace topology of `lab/mod.rs` (own mobile node, home agent, VPN gateway namespaces), and the two proxy
//! namespaces are joined by a veth pair carrying only replication (172.31.255.1 ↔ .2, port 7443).
//!
//! Registration through replica 1 shows at replica 2; the same request replayed at replica 2 is refused with
//! code 133 and not relayed; deregistration replicates; replica 2 restarted while replica 1 is frozen stays
//! not ready, and once replica 1 answers it catches up (ready, with the binding). Needs root, fails without.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod lab;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use lab::{HOA, KEY1, Lab, MN_COA, Mode, PROXY_PUBLIC, RegResult, metric};
use nix::sys::signal::Signal;

const R1: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);
const R2: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 2);
const PORT: u16 = 7443;

fn replication_yaml(id: u32, me: Ipv4Addr, peer: Ipv4Addr) -> String {
    format!(
        "  replica_id: {id}\n  listen: {me}:{PORT}\n  peers:\n    static: [{me}:{PORT}, {peer}:{PORT}]\n  \
         insecure_plaintext: true\n  digest_interval_ms: 200\n  reconnect_ms: 100\n  catchup_timeout_ms: 30000\n  \
         flush_timeout_ms: 1000\n"
    )
}

/// Polls `f` for up to `within`.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

fn ready(lab: &Lab) -> Option<u16> {
    lab.http("/readyz").map(|(code, _)| code)
}

/// (home address, care-of address, tunnel address, port) of every row of `/bindings`.
fn rows(lab: &Lab) -> Vec<(String, String, String, u64)> {
    let b = lab.bindings();
    b.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["home_address"].as_str().unwrap_or_default().to_string(),
                r["care_of_address"].as_str().unwrap_or_default().to_string(),
                r["tunnel"]["address"].as_str().unwrap_or_default().to_string(),
                r["tunnel"]["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Sends `request` from the node's address at `lab` to the proxy and returns the reply code.
fn replay_at(lab: &Lab, request: &[u8]) -> Option<u8> {
    let m = lab.mobile(434);
    m.sock.send_to(request, SocketAddrV4::new(PROXY_PUBLIC, 434)).unwrap();
    m.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok((n, SocketAddr::V4(_))) = m.sock.recv_from(&mut buf)
            && n > 1
            && buf[0] == 3
        {
            return Some(buf[1]);
        }
    }
    None
}

#[test]
fn two_replicas_share_bindings_replay_state_and_catch_up_after_restart() {
    let mut a = Lab::topology(Mode::TwoBox);
    let mut b = Lab::topology(Mode::TwoBox);
    // The replication link between the two proxy namespaces.
    a.px.ip(&format!(
        "link add name rep0 type veth peer name rep0 netns {}",
        b.px.name
    ));
    a.px.ip(&format!("addr add {R1}/30 dev rep0"));
    a.px.ip("link set rep0 up");
    b.px.ip(&format!("addr add {R2}/30 dev rep0"));
    b.px.ip("link set rep0 up");
    a.replication = Some(replication_yaml(1, R1, R2));
    b.replication = Some(replication_yaml(2, R2, R1));

    a.start_proxy();
    // Alone, replica 1 waits for its peer: not ready.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ready(&a), Some(503), "{}", a.log_text());
    b.start_proxy();
    eventually("both replicas ready", Duration::from_secs(10), || {
        ready(&a) == Some(200) && ready(&b) == Some(200)
    });
    eventually("peers connected", Duration::from_secs(3), || {
        metric(&a.metrics(), "mip_replication_peers_connected") == 1.0
            && metric(&b.metrics(), "mip_replication_peers_connected") == 1.0
    });

    // (1) Register through replica 1: replica 2 shows the same binding.
    let mn = a.mobile(434);
    let r = mn.register(KEY1, Duration::from_secs(5));
    assert!(matches!(r, RegResult::Registered { code: 0, .. }), "{r:?}");
    let want = vec![(HOA.to_string(), MN_COA.to_string(), MN_COA.to_string(), 434)];
    assert_eq!(rows(&a), want);
    eventually("the binding at replica 2", Duration::from_secs(3), || rows(&b) == want);
    assert!(metric(&b.metrics(), "mip_replication_applied_total") >= 1.0);
    assert!(metric(&a.metrics(), "mip_replication_published_total") >= 2.0);

    // (2) The same request replayed at replica 2: refused (133, Identification mismatch), nothing relayed.
    let request = mn.sent.borrow().first().cloned().expect("the request sent");
    drop(mn);
    assert_eq!(replay_at(&b, &request), Some(133), "{}", b.log_text());
    assert!(
        b.ha().seen.lock().unwrap().is_empty(),
        "nothing relayed to replica 2's HA"
    );
    assert_eq!(rows(&b), want, "the binding is unchanged");

    // (3) Deregistration through replica 1 replicates.
    let mn = a.mobile(434);
    let r = mn.register_and_deregister(KEY1, Duration::from_secs(5));
    assert_eq!(r, RegResult::Deregistered);
    drop(mn);
    assert!(rows(&a).is_empty());
    eventually("the deregistration at replica 2", Duration::from_secs(3), || {
        rows(&b).is_empty()
    });

    // (4) Register again, then restart replica 2 while replica 1 is frozen: not ready until it caught up.
    let r = a.mobile(434).register(KEY1, Duration::from_secs(5));
    assert!(matches!(r, RegResult::Registered { code: 0, .. }), "{r:?}");
    eventually("the new binding at replica 2", Duration::from_secs(3), || {
        rows(&b) == want
    });
    b.signal(Signal::SIGTERM);
    let status = b.wait_exit(Duration::from_secs(5)).expect("replica 2 exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", b.log_text());
    a.signal(Signal::SIGSTOP);
    b.start_proxy();
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_millis(1500) {
        assert_eq!(ready(&b), Some(503), "ready before catching up:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rows(&b).is_empty(), "a restarted replica starts empty");
    a.signal(Signal::SIGCONT);
    eventually("replica 2 ready after catching up", Duration::from_secs(10), || {
        ready(&b) == Some(200)
    });
    assert_eq!(rows(&b), want, "caught up: the binding is there when ready");
    assert!(metric(&b.metrics(), "mip_replication_caught_up") >= 0.0);
}

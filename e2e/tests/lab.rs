//! The namespace lab end to end (docs/lab.md). These tests need root and the Debian tools that
//! `scripts/setup.sh` installs; a missing tool fails with "run scripts/setup.sh", it never skips.
//!
//! The tests share one machine-wide resource budget (2 cores) and measure times, so they take a lock and run
//! one at a time, each in its own lab (unique `mlab<N>-` prefix).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mip_e2e::capture::{self, Capture, Class};
use mip_e2e::probe::{self, ProbeConfig, Prober};
use mip_e2e::strongswan::{Charon, CharonSpec};
use mip_e2e::topology::list_namespaces;
use mip_e2e::{Access, Lab, LabOptions, netns, plan};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn opts() -> LabOptions {
    LabOptions {
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        ..LabOptions::default()
    }
}

fn lab() -> Lab {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    Lab::up(opts()).unwrap_or_else(|e| panic!("lab up: {e}"))
}

#[test]
fn lab_tools_are_installed() {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn topology_up_down_leaves_nothing_behind() {
    let _g = serial();
    let lab = lab();
    let prefix = lab.prefix().to_owned();
    let run_dir = lab.run_dir().to_path_buf();
    let names = list_namespaces(&prefix);
    assert_eq!(names.len(), lab.namespaces().len(), "{names:?}");
    for n in [
        "mn", "nat1", "nat2", "nat3", "fa1", "fa2", "inet", "dmz", "proxy", "vpngw", "intra", "ha", "cn",
    ] {
        assert!(names.contains(&lab.ns(n)), "{n} missing from {names:?}");
    }
    // The FA namespaces exist with their addresses (their daemon comes later).
    let fa2 = lab.ip("fa2", &["-4", "addr"]).unwrap();
    assert!(fa2.contains("192.0.4.1/24") && fa2.contains("192.168.3.2/24"), "{fa2}");
    // Every interface name fits IFNAMSIZ and the root namespace holds none of ours.
    let root = std::fs::read_dir("/sys/class/net").unwrap();
    for e in root {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(
            !["a0", "c1", "c2", "b0", "d0", "mn-a", "dly0"].contains(&n.as_str()),
            "{n} in the root ns"
        );
    }
    // A recorded process is killed by teardown.
    let mut sleeper = lab.spawn("cn", &["sleep", "600"], &run_dir.join("sleep.log")).unwrap();
    let pid = sleeper.pid();
    assert!(sleeper.is_running());
    std::mem::forget(sleeper); // leaked on purpose: the lab's teardown must still kill it
    lab.down().unwrap();
    assert!(list_namespaces(&prefix).is_empty());
    assert!(!run_dir.exists());
    assert_eq!(
        mip_e2e::cmd::proc_starttime(pid),
        None,
        "sleep {pid} survived the teardown"
    );
}

#[test]
fn teardown_happens_even_when_a_test_panics() {
    let _g = serial();
    let seen: Arc<Mutex<Option<(String, u32)>>> = Arc::new(Mutex::new(None));
    let s = Arc::clone(&seen);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let lab = lab();
        let g = lab
            .spawn("mn", &["sleep", "600"], &lab.run_dir().join("sleep.log"))
            .unwrap();
        *s.lock().unwrap() = Some((lab.prefix().to_owned(), g.pid()));
        std::mem::forget(g);
        panic!("deliberate panic inside a lab test");
    }));
    assert!(r.is_err());
    let (prefix, pid) = seen.lock().unwrap().clone().unwrap();
    assert!(
        list_namespaces(&prefix).is_empty(),
        "namespaces of {prefix} left after a panic"
    );
    assert_eq!(mip_e2e::cmd::proc_starttime(pid), None);
}

/// Answers every datagram with the source address it saw, from inside ns inet.
fn whoami_server(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<mip_e2e::Result<()>> {
    netns::spawn_in(&lab.ns("inet"), "whoami", move || {
        // Bound to one address so replies come from the address the MN sent to (NAT 1 matches replies by it).
        let s = UdpSocket::bind((plan::INET_DMZ, 7777)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(from.ip().to_string().as_bytes(), from);
            }
        }
        Ok(())
    })
    .unwrap()
}

fn source_seen_by_router(lab: &Lab) -> String {
    let sock = netns::run_in(&lab.ns("mn"), || {
        Ok(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap())
    })
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..25 {
        sock.send_to(b"who", SocketAddrV4::new(plan::INET_DMZ, 7777)).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer from the router");
}

#[test]
fn nat_masquerades_and_inet_has_no_private_routes() {
    let _g = serial();
    let mut lab = lab();
    let stop = Arc::new(AtomicBool::new(false));
    let srv = whoami_server(&lab, Arc::clone(&stop));
    assert_eq!(lab.attached(), Some(Access::C1));
    assert_eq!(source_seen_by_router(&lab), "203.0.113.2");
    lab.mn_attach(Access::C2, false).unwrap();
    assert_eq!(source_seen_by_router(&lab), "198.18.2.2");
    lab.mn_attach(Access::A, true).unwrap();
    assert_eq!(source_seen_by_router(&lab), "192.0.2.10");
    // Only A's link is up now, and the default route points at its gateway.
    let links = lab.ip("mn", &["-br", "link"]).unwrap();
    for l in links.lines().filter(|l| !l.starts_with("lo ")) {
        assert_eq!(l.contains(" UP "), l.starts_with("a0@"), "{l}");
    }
    assert!(
        lab.ip("mn", &["route", "show", "default"])
            .unwrap()
            .contains("via 192.0.2.1 dev a0")
    );
    stop.store(true, Ordering::SeqCst);
    srv.join().unwrap().unwrap();

    // inet knows no private prefix: nothing inner crosses the Internet side unencapsulated.
    let routes = lab.ip("inet", &["route"]).unwrap();
    assert!(
        !routes.contains("10.") && !routes.contains("192.168.") && !routes.contains("default"),
        "{routes}"
    );
    let err = lab
        .exec("inet", &["ip", "route", "get", "10.10.0.100"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unreachable") && err.contains(&lab.ns("inet")), "{err}");
    // Without the VPN the MN cannot reach the intranet.
    assert_eq!(lab.ping("mn", plan::CN, 1).unwrap().received, 0);
}

#[test]
fn delay_line_adds_twice_the_delay_to_the_rtt() {
    let _g = serial();
    let mut lab = lab();
    lab.mn_attach(Access::A, false).unwrap();
    let base = lab.ping("mn", plan::VPNGW_PUBLIC, 5).unwrap();
    assert_eq!(base.received, 5);
    for ms in [20u32, 40] {
        lab.set_delay(ms).unwrap();
        let p = lab.ping("mn", plan::VPNGW_PUBLIC, 5).unwrap();
        let want = f64::from(2 * ms);
        assert_eq!(p.received, 5);
        assert!(
            (p.avg_ms - base.avg_ms - want).abs() <= 0.3 * want,
            "delay {ms} ms: RTT {:.2} ms, base {:.2} ms, want +{want} ms ±30 %",
            p.avg_ms,
            base.avg_ms
        );
    }
    lab.set_delay(0).unwrap();
    let after = lab.ping("mn", plan::VPNGW_PUBLIC, 3).unwrap();
    assert!(after.avg_ms < 5.0, "delay line still active: {after:?}");
    assert!(
        lab.ip("inet", &["rule"])
            .unwrap()
            .lines()
            .all(|l| !l.contains("lookup 100"))
    );
}

#[test]
fn capture_classifier_on_a_known_pcap() {
    use mip_agents::pcap::{ipv4_udp_packet, write_pcap};
    let dir = std::env::temp_dir().join(format!("mip-e2e-classify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = |ip: [u8; 4], port| SocketAddrV4::new(Ipv4Addr::from(ip), port);
    let (mn, proxy) = ([203, 0, 113, 2], [198, 51, 100, 10]);
    let (hoa, gw) = ([10, 10, 1, 50], [198, 51, 100, 20]);
    let tunnel = |inner: Vec<u8>| {
        let mut p = vec![4u8, 4, 0, 0];
        p.extend(inner);
        ipv4_udp_packet(a(mn, 434), a(proxy, 434), &p)
    };
    let esp_in_udp = ipv4_udp_packet(
        a(hoa, 4500),
        a(gw, 4500),
        &[0x15, 0x87, 0xcd, 0x3d, 0, 0, 0, 1, 9, 9, 9, 9],
    );
    let ike_in_udp = ipv4_udp_packet(
        a(hoa, 4500),
        a(gw, 4500),
        &[0, 0, 0, 0, 0x63, 0x59, 0x84, 0x06, 1, 2, 3, 4],
    );
    let plain = ipv4_udp_packet(a(hoa, 9000), a([10, 10, 0, 100], 9000), b"hello");
    let mut icmp = ipv4_udp_packet(a(mn, 1), a(gw, 1), &[8, 0, 0, 0, 0, 0, 0, 0]);
    icmp[9] = 1; // protocol ICMP (checksum is irrelevant to the classifier)
    let mut rrq = vec![1u8, 0x22, 2, 0x58];
    rrq.extend([0u8; 20]);
    let mut rrp = vec![3u8, 0, 2, 0x58];
    rrp.extend([0u8; 16]);
    let frames: Vec<Vec<u8>> = vec![
        ipv4_udp_packet(a(mn, 434), a(proxy, 434), &rrq),
        ipv4_udp_packet(a(proxy, 434), a(mn, 434), &rrp),
        tunnel(esp_in_udp.clone()),
        tunnel(esp_in_udp.clone()),
        tunnel(esp_in_udp.clone()),
        tunnel(ike_in_udp.clone()),
        tunnel(ipv4_udp_packet(a(hoa, 4500), a(gw, 4500), &[0xff])),
        tunnel(plain.clone()),
        esp_in_udp,
        ike_in_udp,
        ipv4_udp_packet(a(mn, 500), a(gw, 500), &[0; 28]),
        icmp,
        plain,
    ];
    let refs: Vec<(u64, &[u8])> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 * 1000, f.as_slice()))
        .collect();
    let pcap = dir.join("known.pcap");
    write_pcap(&pcap, &refs).unwrap();
    let c = capture::classify_pcap(&pcap).unwrap();
    assert_eq!(c.frames, 13);
    assert_eq!((c.mip_rrq, c.mip_rrp), (1, 1));
    assert_eq!(
        (c.mip_data_esp, c.mip_data_ike, c.mip_data_keepalive, c.mip_data_other),
        (3, 1, 1, 1)
    );
    assert_eq!((c.bare_esp, c.bare_ike, c.icmp, c.udp_other), (1, 2, 1, 1));
    assert_eq!(c.mip(), 8);
    assert_eq!(c.outside_tunnel(), 5);
    assert!(!c.only_ipsec_in_mip_tunnel());
    assert_eq!(capture::classify_ipv4(&frames[2]), Class::MipDataEsp);
    // IP-in-IP (protocol 4) is classified by what it carries; an ICMP echo inside UDP/434 tunnel data is the
    // RFC 3519 keepalive (neither is "outside the tunnel").
    let ipip = |inner: &[u8]| {
        let mut outer = ipv4_udp_packet(a(mn, 1), a(proxy, 1), &[]);
        outer.truncate(20);
        outer[9] = 4;
        outer.extend_from_slice(inner);
        outer
    };
    let mut echo = ipv4_udp_packet(a(hoa, 1), a(proxy, 1), &[8, 0, 0, 0, 0, 0, 0, 0]);
    echo[9] = 1;
    assert_eq!(capture::classify_ipv4(&ipip(&frames[8])), Class::IpipEsp);
    assert_eq!(capture::classify_ipv4(&ipip(&frames[9])), Class::IpipIke);
    assert_eq!(capture::classify_ipv4(&ipip(&frames[12])), Class::IpipOther);
    assert_eq!(capture::classify_ipv4(&tunnel(echo)), Class::MipKeepalive);
    // An ICMP error quoting a tunnel packet is tunnel control; quoting anything else it stays plain ICMP.
    let icmp_error = |quoted: &[u8]| {
        let mut p = ipv4_udp_packet(a(mn, 1), a(proxy, 1), &[]);
        p.truncate(20);
        p[9] = 1;
        p.extend([3, 2, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(quoted);
        p
    };
    assert_eq!(
        capture::classify_ipv4(&icmp_error(&ipip(&frames[8]))),
        Class::TunnelIcmpError
    );
    assert_eq!(
        capture::classify_ipv4(&icmp_error(&frames[2][..40])),
        Class::TunnelIcmpError
    );
    assert_eq!(capture::classify_ipv4(&icmp_error(&frames[12])), Class::Icmp);
    // Link-local multicast (agent solicitations, IGMP) never leaves the access link.
    let mut solicitation = ipv4_udp_packet(a(mn, 1), a([224, 0, 0, 11], 1), &[10, 0, 0, 0, 0, 0, 0, 0]);
    solicitation[9] = 1;
    assert_eq!(capture::classify_ipv4(&solicitation), Class::LinkLocal);
    // Wireshark's dissectors agree.
    assert_eq!(capture::tshark_count(&pcap, "mip.type == 1").unwrap(), 1);
    assert_eq!(capture::tshark_count(&pcap, "mip.type == 3").unwrap(), 1);
    assert_eq!(capture::tshark_count(&pcap, "mip.type == 4").unwrap(), 6);
    assert_eq!(capture::tshark_count(&pcap, "mip.type == 4 && esp").unwrap(), 3);
    assert_eq!(capture::tshark_count(&pcap, "icmp").unwrap(), 1);
    // A capture of only registrations and ESP inside the tunnel passes the Internet-side check.
    let good: Vec<(u64, &[u8])> = refs.iter().copied().filter(|(i, _)| *i < 5000).collect();
    let pcap2 = dir.join("good.pcap");
    write_pcap(&pcap2, &good).unwrap();
    assert!(capture::classify_pcap(&pcap2).unwrap().only_ipsec_in_mip_tunnel());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn strongswan_baseline_establishes_and_recovers_from_a_mobike_hand_off() {
    let _g = serial();
    let mut lab = lab();
    let _echo = lab.spawn_echo().unwrap();
    let gw = Charon::start(&lab, "vpngw", "vpngw", &CharonSpec::rw_gateway(Duration::ZERO)).unwrap();
    let mn = Charon::start(&lab, "mn", "mn", &CharonSpec::rw_client(true, Duration::ZERO)).unwrap();
    mn.initiate(Duration::from_secs(10)).unwrap();
    let sa = mn.wait_up(Duration::from_secs(5)).unwrap();
    assert_eq!(sa.remote_host, "198.51.100.20");
    assert_eq!(sa.local_vips, vec!["10.99.0.1"]);
    assert!(!sa.initiator_spi.is_empty() && !sa.responder_spi.is_empty());
    assert!(!sa.children[0].spi_in.is_empty() && !sa.children[0].spi_out.is_empty());
    let gsa = gw.wait_up(Duration::from_secs(5)).unwrap();
    assert_eq!(gsa.spis().0, sa.spis().0, "both ends agree on the IKE SPIs");
    // Behind NAT 1 the gateway sees the NAT's public address.
    assert_eq!(gsa.remote_host, "203.0.113.2");

    // CN reachable through IPsec: ping and a checksummed TCP transfer, while the Internet side shows only
    // ESP-in-UDP (no plain ICMP/TCP).
    let pcap = lab.run_dir().join("inet.pcap");
    let cap = Capture::start(&lab, "inet", "any", "", &pcap).unwrap();
    let p = lab.ping("mn", plan::CN, 3).unwrap();
    assert_eq!(p.received, 3, "{p:?}");
    let t = probe::tcp_transfer(
        &lab.ns("mn"),
        &lab.ns("cn"),
        SocketAddrV4::new(plan::CN, 5001),
        2 << 20,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(t.matched, "{t:?}");
    let c = capture::classify_pcap(&cap.stop().unwrap()).unwrap();
    assert!(c.bare_esp > 100, "{c:?}");
    assert_eq!((c.icmp, c.tcp, c.mip()), (0, 0, 0), "{c:?}");

    // Hand-off C1 -> A with MOBIKE: the probe sees an interruption and recovers.
    let cursor = mn.log_cursor();
    let prober = Prober::start(&lab.ns("mn"), ProbeConfig::default()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let marks = lab.mn_attach(Access::A, false).unwrap();
    prober.mark(&marks);
    assert!(
        prober.wait_recovered(Duration::from_secs(10), &|| false),
        "no echo after the hand-off"
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = prober.stop().unwrap();
    assert_eq!(r.recovered, Some(true), "{r:?}");
    let gap = r.interruption_ms.unwrap();
    assert!(gap > 0.0 && gap < 5000.0, "{r:?}");
    assert!(r.lost > 0 && r.received > 400, "{r:?}");
    let ike = mn.ike_counts_since(cursor).unwrap();
    assert!(
        ike.by_exchange.contains_key("INFORMATIONAL"),
        "MOBIKE update expected: {ike:?}"
    );
    let after = mn.wait_up(Duration::from_secs(5)).unwrap();
    assert_eq!(after.spis().0, sa.spis().0, "MOBIKE keeps the IKE_SA");
    eprintln!("MOBIKE hand-off C1 -> A: {}", r.to_json());
}

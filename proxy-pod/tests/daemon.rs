//! The real `mip-proxy` binary in a namespace topology (see `lab/mod.rs`): registration through the proxy to a
//! home agent, RFC 3519 data both ways, keepalives, bad input on every listening port, key reload on SIGHUP,
//! clean shutdown on SIGTERM, and one-box mode. These tests need root and fail (never skip) without it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod lab;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::{
    ADMIN, CN, HA, HA_LAN, HOA, KEY1, KEY2, Lab, MN_COA, Mode, PROXY_PRIVATE, PROXY_PUBLIC, RegResult, VPNGW, esp_body,
    http_get, icmp, ipv4, keystore, metric, metric_sum, packet_socket, raw_recv, raw_send, raw_socket, tunnel_data,
};
use mip::roles::mn::MnTunnel;
use nix::sys::signal::Signal;
use serde_json::json;

const PUBLIC_434: SocketAddrV4 = SocketAddrV4::new(PROXY_PUBLIC, 434);
const IPPROTO_ESP: i32 = 50;
const IPPROTO_RAW: i32 = 255;

/// Waits up to 3 s for `series` to reach `value` (data-path counters move just after the packet is handed on).
fn eventually_metric(lab: &Lab, series: &str, value: f64) {
    eventually(&format!("{series} = {value}"), || {
        metric(&lab.metrics(), series) == value
    });
}

/// Polls `f` for up to 3 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

fn registered_udp(r: RegResult) -> u16 {
    match r {
        RegResult::Registered {
            code: 0,
            tunnel: MnTunnel::Udp { local_port, peer, .. },
        } => {
            assert_eq!(peer, PUBLIC_434);
            local_port
        }
        other => panic!("expected code 0 with a UDP tunnel, got {other:?}"),
    }
}

fn assert_kernel_state_installed(lab: &Lab) {
    let routes = lab.px.ip("-4 route show");
    assert!(routes.contains("10.10.1.0/24 dev mipp0"), "{routes}");
    // The HA lies inside the home network: pinned to the path the kernel used before.
    assert!(routes.contains("10.10.1.1 via 10.10.0.1 dev lan0"), "{routes}");
    let links = lab.px.ip("link show");
    assert!(links.contains("mipp0") && links.contains("mipp1"), "{links}");
    let (forward, rp_tun) = lab.px.run(|| {
        let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
        (
            read("/proc/sys/net/ipv4/ip_forward"),
            read("/proc/sys/net/ipv4/conf/mipp0/rp_filter"),
        )
    });
    assert_eq!((forward.as_str(), rp_tun.as_str()), ("1", "0"));
}

fn assert_kernel_state_removed(lab: &Lab) {
    let routes = lab.px.ip("-4 route show table all");
    assert!(!routes.contains("mipp"), "{routes}");
    assert!(!routes.contains("10.10.1.1 via"), "{routes}");
    assert!(!routes.contains("table 100"), "{routes}");
    // What the proxy did not add is still there.
    assert!(routes.contains("10.10.0.0/16 via 10.10.0.1 dev lan0"), "{routes}");
    let rules = lab.px.ip("-4 rule show");
    assert!(!rules.contains("mipp1") && !rules.contains("lookup 100"), "{rules}");
    let links = lab.px.ip("link show");
    assert!(!links.contains("mipp"), "{links}");
}

/// SIGTERM while polling `/readyz`: exit 0 within 2 s; returns the `/readyz` codes seen, in order.
fn terminate(lab: &mut Lab) -> Vec<u16> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let poller = lab.px.spawn(move || {
        let mut codes = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match http_get(ADMIN, "/readyz") {
                Some((code, _)) if codes.last() != Some(&code) => codes.push(code),
                Some(_) => {}
                None if !codes.is_empty() => break, // the server is gone
                None => {}
            }
        }
        codes
    });
    std::thread::sleep(Duration::from_millis(50));
    let sent = Instant::now();
    lab.signal(Signal::SIGTERM);
    let status = lab.wait_exit(Duration::from_secs(2));
    let took = sent.elapsed();
    stop.store(true, Ordering::Relaxed);
    let codes = poller.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("mip-proxy still running 2 s after SIGTERM"));
    assert!(status.success(), "exit status {status}:\n{}", lab.log_text());
    eprintln!("SIGTERM → exit in {took:?}; /readyz codes seen: {codes:?}");
    assert_eq!(codes.first(), Some(&200), "{codes:?}");
    if let Some(i) = codes.iter().position(|c| *c == 503) {
        assert!(!codes[i..].contains(&200), "ready again after 503: {codes:?}");
    }
    codes
}

#[test]
fn two_box_registration_data_keys_and_shutdown() {
    let mut lab = Lab::new(Mode::TwoBox);
    assert_kernel_state_installed(&lab);
    let table = lab.px.ip("-4 route show table 100");
    assert!(table.contains("default via 10.10.0.20"), "{table}");
    let rules = lab.px.ip("-4 rule show");
    assert!(rules.contains("iif mipp1 lookup 100"), "{rules}");
    let m = lab.metrics();
    assert_eq!(metric(&m, "mip_tunnel_mtu_bytes{encapsulation=\"udp\"}"), 1468.0);
    assert_eq!(metric(&m, "mip_drops_total{path=\"data\",reason=\"not_bound\"}"), 0.0);

    // (1) Registration through the proxy: the HA sees the relayed request from proxy_private.
    let mn = lab.mobile(434);
    assert_eq!(registered_udp(mn.register(KEY1, Duration::from_secs(5))), 434);
    let seen = lab.ha().seen.lock().unwrap().clone();
    assert_eq!(seen, vec![SocketAddrV4::new(PROXY_PRIVATE, 434)]);
    // The HA records its outcome just after sending the reply the node already has.
    eventually("the HA to record code 0", || {
        lab.ha().codes.lock().unwrap().clone() == vec![0]
    });
    let b = lab.bindings();
    let rows = b.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{b}");
    let row = &rows[0];
    assert_eq!(row["home_address"], "10.10.1.50");
    assert_eq!(row["care_of_address"], "192.0.2.10");
    assert_eq!(row["tunnel"]["encapsulation"], "udp_ipip");
    assert_eq!(row["tunnel"]["address"], "192.0.2.10");
    assert_eq!(row["tunnel"]["port"], 434);
    assert_eq!(row["home_agent"], "10.10.1.1");
    assert_eq!(row["lifetime"], 600);
    assert_eq!(row["half_bound"], false);
    assert_eq!(row["reverse_tunnel"], true);
    assert!(row["nai"].is_null());
    let left = row["expires_in_ms"].as_u64().unwrap();
    assert!((590_000..=600_000).contains(&left), "{left}");
    let m = lab.metrics();
    assert_eq!(metric(&m, "mip_registrations_total{role=\"proxy\",code=\"0\"}"), 1.0);
    assert_eq!(metric(&m, "mip_bindings"), 1.0);
    assert_eq!(metric(&m, "mip_pending_requests"), 0.0);
    assert_eq!(metric(&m, "mip_relay_latency_seconds_count"), 1.0);
    let logged: Vec<_> = lab
        .log_json()
        .into_iter()
        .filter(|l| l["message"] == "registration")
        .collect();
    assert_eq!(logged.len(), 1, "one info line per registration: {logged:?}");
    let l = &logged[0];
    assert_eq!(
        (
            &l["level"],
            &l["home_address"],
            &l["care_of_address"],
            &l["code"],
            &l["nat_detected"]
        ),
        (
            &json!("INFO"),
            &json!("10.10.1.50"),
            &json!("192.0.2.10"),
            &json!(0),
            &json!(false)
        ),
        "{l}"
    );

    // (2) Data up: RFC 3519 tunnel data from the registered endpoint reaches the VPN gateway.
    let esp_rx = raw_socket(&lab.gw, IPPROTO_ESP, false);
    let up = ipv4(HOA, VPNGW, 50, 64, &esp_body(1));
    mn.sock.send_to(&tunnel_data(&up), PUBLIC_434).unwrap();
    let got = raw_recv(&esp_rx, Duration::from_secs(2), |p| {
        p.len() > 20 && p[12..16] == HOA.octets() && p[20..] == esp_body(1)[..]
    })
    .expect("the decapsulated ESP packet arrives at the VPN gateway");
    assert_eq!(got[8], 63, "forwarded once by the proxy's kernel");
    // The same from a port that is not bound: dropped, counted.
    let stray = lab.mobile(5000);
    stray
        .sock
        .send_to(&tunnel_data(&ipv4(HOA, VPNGW, 50, 64, &esp_body(2))), PUBLIC_434)
        .unwrap();
    eventually("not_bound to count the stray packet", || {
        metric(&lab.metrics(), "mip_drops_total{path=\"data\",reason=\"not_bound\"}") == 1.0
    });
    let leaked = raw_recv(&esp_rx, Duration::from_millis(300), |p| {
        p.len() > 20 && p[20..] == esp_body(2)[..]
    });
    assert!(leaked.is_none(), "a packet from an unbound port was forwarded");
    eventually_metric(
        &lab,
        "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"udp\"}",
        1.0,
    );
    eventually_metric(
        &lab,
        "mip_tunnel_bytes_total{direction=\"up\",encapsulation=\"udp\"}",
        up.len() as f64,
    );

    // (3) Data down: the gateway's packet to the home address comes out UDP-encapsulated to the endpoint.
    let tx = raw_socket(&lab.gw, IPPROTO_RAW, true);
    let down = ipv4(VPNGW, HOA, 50, 64, &esp_body(3));
    raw_send(&tx, &down, HOA);
    let (pkt, src) = mn.recv_first(4, Duration::from_secs(2)).expect("encapsulated downlink");
    assert_eq!(src, PUBLIC_434);
    assert_eq!(&pkt[..4], &[4, 4, 0, 0], "Tunnel Data header, next header IPv4");
    let inner = &pkt[4..];
    assert_eq!(
        (&inner[12..16], &inner[16..20]),
        (&VPNGW.octets()[..], &HOA.octets()[..])
    );
    assert_eq!(&inner[20..], &esp_body(3)[..]);
    // The proxy host's kernel forwards the packet into the TUN (−1), the one decrement of this hop; the data
    // plane, as the RFC 2003 encapsulator, does not decrement again.
    let ttl = inner[8];
    eprintln!("two-box downlink: inner TTL 64 at the gateway, {ttl} inside the tunnel");
    assert_eq!(ttl, 63, "inner TTL decremented once per forwarding hop");
    assert_eq!(
        metric(
            &lab.metrics(),
            "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"udp\"}"
        ),
        1.0
    );
    // Spec §10 case 71 across the whole hop: TTL 2 at the gateway leaves the tunnel with 1 (not 0), TTL 1 is
    // answered with Time Exceeded (by the proxy host's kernel) and never tunnelled.
    let time_exceeded_rx = raw_socket(&lab.gw, 1, false);
    raw_send(&tx, &ipv4(VPNGW, HOA, 50, 2, &esp_body(4)), HOA);
    let (pkt2, _) = mn.recv_first(4, Duration::from_secs(2)).expect("TTL 2 tunnelled");
    assert_eq!(&pkt2[24..], &esp_body(4)[..]);
    assert_eq!(pkt2[4 + 8], 1, "inner TTL 2 − 1 for the one forwarding hop");
    raw_send(&tx, &ipv4(VPNGW, HOA, 50, 1, &esp_body(5)), HOA);
    let te = raw_recv(&time_exceeded_rx, Duration::from_secs(2), |p| {
        p.len() >= 48 && p[9] == 1 && p[20] == 11 && p[44..48] == HOA.octets()
    });
    assert!(te.is_some(), "TTL 1 gets ICMP Time Exceeded");
    assert!(
        mn.recv_first(4, Duration::from_millis(300)).is_none(),
        "TTL 1 must not be tunnelled"
    );

    // An ICMP "fragmentation needed" from the node's path about that packet is relayed to the gateway (RFC 2003
    // §4), with the MTU reduced by the 32 bytes of the UDP tunnel.
    let icmp_gw = raw_socket(&lab.gw, 1, false);
    let mut udp = Vec::new();
    udp.extend_from_slice(&434u16.to_be_bytes());
    udp.extend_from_slice(&434u16.to_be_bytes());
    udp.extend_from_slice(&u16::try_from(8 + pkt.len()).unwrap().to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&pkt);
    let quoted = ipv4(PROXY_PUBLIC, MN_COA, 17, 64, &udp);
    let icmp_mn = raw_socket(&lab.mn, 1, false);
    raw_send(&icmp_mn, &icmp(3, 4, [0, 0, 0x03, 0xe8], &quoted), PROXY_PUBLIC);
    let relayed = raw_recv(&icmp_gw, Duration::from_secs(2), |p| {
        p.len() >= 48 && p[9] == 1 && p[20] == 3 && p[21] == 4
    })
    .expect("the relayed ICMP error at the gateway");
    assert_eq!(
        (&relayed[12..16], &relayed[16..20]),
        (&PROXY_PUBLIC.octets()[..], &VPNGW.octets()[..])
    );
    assert_eq!(
        u16::from_be_bytes([relayed[26], relayed[27]]),
        1000 - 32,
        "next-hop MTU"
    );
    assert_eq!(
        (&relayed[40..44], &relayed[44..48]),
        (&VPNGW.octets()[..], &HOA.octets()[..]),
        "quotes the inner packet"
    );
    eventually_metric(&lab, "mip_icmp_relayed_total", 1.0);

    // (4) RFC 3519 keepalive: an ICMP echo to proxy_public inside the tunnel is answered inside the tunnel.
    let echo = icmp(8, 0, [0x12, 0x34, 0, 1], b"keepalive");
    mn.sock
        .send_to(&tunnel_data(&ipv4(HOA, PROXY_PUBLIC, 1, 64, &echo)), PUBLIC_434)
        .unwrap();
    let (pkt, src) = mn.recv_first(4, Duration::from_secs(2)).expect("keepalive reply");
    assert_eq!(src, PUBLIC_434);
    let inner = &pkt[4..];
    assert_eq!(
        (&inner[12..16], &inner[16..20]),
        (&PROXY_PUBLIC.octets()[..], &HOA.octets()[..])
    );
    assert_eq!(inner[9], 1, "ICMP");
    assert_eq!(
        (inner[20], &inner[24..28]),
        (0, &[0x12, 0x34, 0, 1][..]),
        "echo reply, same id/seq"
    );
    assert_eq!(&inner[28..], b"keepalive");
    assert_eq!(metric(&lab.metrics(), "mip_keepalives_total{result=\"answered\"}"), 1.0);

    // The home agent's tunnel: IP-in-IP from the HA to proxy_private; the inner packet (CN → home address) is
    // injected into ha_tun and policy-routed to the VPN gateway's private address.
    let capture = packet_socket(&lab.gw);
    let ipip_ha = raw_socket(&lab.ha_ns, 4, false);
    ipip_ha.bind(&SocketAddrV4::new(HA, 0).into()).unwrap();
    let from_cn = ipv4(CN, HOA, 17, 63, b"\x30\x39\x11\x94\x00\x14\x00\x00cn-to-mn-data");
    raw_send(&ipip_ha, &from_cn, PROXY_PRIVATE);
    let got = raw_recv(&capture, Duration::from_secs(2), |p| {
        p.len() > 20 && p[12..16] == CN.octets() && p[16..20] == HOA.octets()
    })
    .expect("the packet from the HA's tunnel reaches the VPN gateway's private side");
    assert_eq!(&got[20..], &from_cn[20..]);
    eventually_metric(&lab, "mip_ha_tunnel_packets_total", 1.0);

    // (6) SIGHUP with a changed keys file: the binding stays, the next registration uses the new key.
    lab.write_keys(KEY2);
    lab.ha().set_keys(keystore(KEY2));
    lab.signal(Signal::SIGHUP);
    eventually("the keys reload", || {
        metric(&lab.metrics(), "mip_key_reloads_total{result=\"ok\"}") >= 1.0
    });
    let b = lab.bindings();
    assert_eq!(
        b.as_array().map(Vec::len),
        Some(1),
        "binding kept across the reload: {b}"
    );
    assert_eq!(b[0]["home_address"], "10.10.1.50");
    assert_eq!(registered_udp(mn.register(KEY2, Duration::from_secs(5))), 434);
    let bad = "mip_drops_total{path=\"control\",reason=\"bad_authenticator\"}";
    let before = metric(&lab.metrics(), bad);
    assert_eq!(mn.register(KEY1, Duration::from_millis(1500)), RegResult::Timeout);
    let m = lab.metrics();
    assert!(metric(&m, bad) > before, "the old key is refused");
    assert_eq!(metric(&m, "mip_registrations_total{role=\"proxy\",code=\"0\"}"), 2.0);

    // (7) SIGTERM: /readyz goes 503 (when the poller catches the window), exit 0 within 2 s, state removed.
    terminate(&mut lab);
    assert_kernel_state_removed(&lab);
}

#[test]
fn bad_input_on_every_port_is_dropped_and_counted() {
    let lab = Lab::new(Mode::TwoBox);
    let m0 = lab.metrics();
    let control0 = metric_sum(&m0, "mip_drops_total", "path=\"control\"");
    let data0 = metric_sum(&m0, "mip_drops_total", "path=\"data\"");
    let mut rng = lab::Rand(0x5eed_1234);

    // UDP 434 at proxy_public: random datagrams, every prefix of a valid request, typed garbage.
    let s = lab.mobile(40000);
    let send = |b: &[u8]| {
        s.sock.send_to(b, PUBLIC_434).unwrap();
    };
    for _ in 0..300 {
        send(&rng.bytes(600));
    }
    let request = lab::Mobile::request_bytes(KEY1);
    for n in 0..request.len() {
        send(&request[..n]);
    }
    for first in [1u8, 3, 4, 0, 255] {
        for _ in 0..20 {
            let mut b = rng.bytes(120);
            b.insert(0, first);
            send(&b);
        }
    }
    let inner = ipv4(HOA, VPNGW, 50, 64, &esp_body(9));
    for n in 0..inner.len() {
        send(&tunnel_data(&inner[..n]));
    }
    send(&[4, 47, 0, 0]); // Tunnel Data announcing GRE

    // The relay port (node_address:434), from the intranet: random bytes and truncated replies.
    let relay_from = lab.ha_ns.run(|| UdpSocket::bind(SocketAddrV4::new(HA_LAN, 0)).unwrap());
    let relay = SocketAddrV4::new(PROXY_PRIVATE, 434);
    for _ in 0..200 {
        relay_from.send_to(&rng.bytes(300), relay).unwrap();
    }
    let mut reply = vec![3u8, 0, 0, 60];
    reply.extend_from_slice(&HOA.octets());
    reply.extend_from_slice(&HA.octets());
    reply.extend_from_slice(&[0x11; 8]);
    reply.extend_from_slice(&[32, 22, 0, 0, 1, 0]);
    reply.extend_from_slice(&[0; 16]);
    for n in 0..=reply.len() {
        relay_from.send_to(&reply[..n], relay).unwrap();
    }

    // Raw IP-in-IP: to proxy_public from the Internet side, to proxy_private from the intranet (also from the
    // allowed HA address), with random and truncated inner packets.
    let ipip_mn = raw_socket(&lab.mn, 4, false);
    let ipip_ha = raw_socket(&lab.ha_ns, 4, false);
    let ipip_ha_bound = raw_socket(&lab.ha_ns, 4, false);
    ipip_ha_bound
        .bind(&SocketAddrV4::new(HA, 0).into())
        .expect("bind the raw socket to the HA address");
    for _ in 0..100 {
        raw_send(&ipip_mn, &rng.bytes(300), PROXY_PUBLIC);
        raw_send(&ipip_ha, &rng.bytes(300), PROXY_PRIVATE);
        raw_send(&ipip_ha_bound, &rng.bytes(300), PROXY_PRIVATE);
    }
    let to_hoa = ipv4(Ipv4Addr::new(10, 10, 0, 100), HOA, 17, 64, &[0; 12]);
    for n in 1..inner.len() {
        raw_send(&ipip_mn, &inner[..n], PROXY_PUBLIC);
        raw_send(&ipip_ha_bound, &to_hoa[..n.min(to_hoa.len())], PROXY_PRIVATE);
    }

    // ICMP errors to proxy_public: random quotes, quotes that look like our own tunnel packets but are cut,
    // and bad checksums.
    let icmp_mn = raw_socket(&lab.mn, 1, false);
    let ours = ipv4(PROXY_PUBLIC, MN_COA, 17, 64, &[0u8; 40]);
    for i in 0..100u8 {
        let (ty, code) = [(3u8, 1u8), (3, 4), (3, 3), (11, 0), (12, 0)][usize::from(i % 5)];
        raw_send(&icmp_mn, &icmp(ty, code, [0, 0, 5, 0], &rng.bytes(200)), PROXY_PUBLIC);
        let cut = usize::from(i) % ours.len();
        raw_send(&icmp_mn, &icmp(ty, code, [0, 0, 5, 0], &ours[..cut]), PROXY_PUBLIC);
        let mut bad = icmp(3, 4, [0, 0, 5, 0], &ours);
        bad[2] ^= 0xff;
        raw_send(&icmp_mn, &bad, PROXY_PUBLIC);
    }

    // The admin port: garbage, a truncated head, an oversized head.
    lab.px.run(|| {
        let mut rng = lab::Rand(7);
        for _ in 0..10 {
            let mut t = TcpStream::connect(ADMIN).unwrap();
            let _ = t.write_all(&rng.bytes(2000));
        }
        let mut t = TcpStream::connect(ADMIN).unwrap();
        let _ = t.write_all(b"GET /hea");
        drop(t);
        let mut t = TcpStream::connect(ADMIN).unwrap();
        let _ = t.write_all(format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 * 1024)).as_bytes());
        let (code, _) = http_get(ADMIN, "/nonexistent").unwrap();
        assert_eq!(code, 404);
    });

    eventually("the data-plane drops to be counted", || {
        let m = lab.metrics();
        metric_sum(&m, "mip_drops_total", "path=\"data\"") >= data0 + 300.0
            && metric_sum(&m, "mip_drops_total", "path=\"control\"") >= control0 + 300.0
    });
    let mut lab = lab;
    assert!(
        lab.proxy.as_mut().unwrap().try_wait().unwrap().is_none(),
        "mip-proxy died"
    );
    assert_eq!(lab.http("/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(lab.http("/readyz").map(|(c, _)| c), Some(200));
    let m = lab.metrics();
    for series in [
        "mip_drops_total{path=\"control\",reason=\"truncated\"}",
        "mip_drops_total{path=\"data\",reason=\"malformed\"}",
        "mip_drops_total{path=\"data\",reason=\"not_bound\"}",
        "mip_drops_total{path=\"data\",reason=\"outer_address\"}",
        "mip_drops_total{path=\"data\",reason=\"wrong_next_header\"}",
    ] {
        assert!(metric(&m, series) > 0.0, "{series} did not move:\n{m}");
    }
    assert_eq!(metric(&m, "mip_bindings"), 0.0, "no binding from garbage");
    assert_eq!(
        metric(&m, "mip_icmp_relayed_total"),
        0.0,
        "nothing relayed for unknown tunnels"
    );
    assert!(
        lab.ha().seen.lock().unwrap().clone().is_empty(),
        "garbage was relayed to the HA"
    );

    // Still serving: a real registration works.
    let mn = lab.mobile(434);
    assert_eq!(registered_udp(mn.register(KEY1, Duration::from_secs(5))), 434);
}

#[test]
fn one_box_installs_no_policy_rule_and_registers() {
    let mut lab = Lab::new(Mode::OneBox);
    let rules = lab.px.ip("-4 rule show");
    assert_eq!(rules.lines().count(), 3, "only the kernel's default rules: {rules}");
    assert!(!rules.contains("mipp1"), "{rules}");
    let table = lab.px.ip_lossy("-4 route show table 100");
    assert!(!table.contains("default"), "{table}");
    assert_kernel_state_installed(&lab);

    // No NAT and no F flag: the proxy declines UDP tunnelling and binds an IP-in-IP tunnel.
    let mn = lab.mobile_ipip(434);
    match mn.register(KEY1, Duration::from_secs(5)) {
        RegResult::Registered {
            code: 0,
            tunnel: MnTunnel::IpIp { local, peer },
        } => assert_eq!((local, peer), (MN_COA, PROXY_PUBLIC)),
        other => panic!("expected code 0 with an IP-in-IP tunnel, got {other:?}"),
    }
    assert_eq!(
        lab.ha().seen.lock().unwrap().clone(),
        vec![SocketAddrV4::new(PROXY_PRIVATE, 434)]
    );
    let b = lab.bindings();
    assert_eq!(b.as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(
        (&b[0]["tunnel"]["encapsulation"], &b[0]["tunnel"]["port"]),
        (&json!("ipip"), &json!(0))
    );

    // Up: IP-in-IP from the care-of address; the inner packet goes to the local IPsec stack (the gateway
    // address is on this host).
    let esp_rx = raw_socket(&lab.px, IPPROTO_ESP, false);
    let ipip_mn = raw_socket(&lab.mn, 4, false);
    raw_send(&ipip_mn, &ipv4(HOA, VPNGW, 50, 64, &esp_body(5)), PROXY_PUBLIC);
    let got = raw_recv(&esp_rx, Duration::from_secs(2), |p| {
        p.len() > 20 && p[12..16] == HOA.octets() && p[20..] == esp_body(5)[..]
    });
    assert!(got.is_some(), "delivered locally");
    // Down: the local gateway's packet to the home address comes out IP-in-IP to the care-of address.
    let tx = raw_socket(&lab.px, IPPROTO_RAW, true);
    raw_send(&tx, &ipv4(VPNGW, HOA, 50, 64, &esp_body(6)), HOA);
    let outer = raw_recv(&ipip_mn, Duration::from_secs(2), |p| {
        p.len() > 40 && p[40..] == esp_body(6)[..]
    })
    .expect("IP-in-IP downlink at the care-of address");
    assert_eq!(
        (&outer[12..16], &outer[16..20]),
        (&PROXY_PUBLIC.octets()[..], &MN_COA.octets()[..])
    );
    assert_eq!(
        (&outer[32..36], &outer[36..40]),
        (&VPNGW.octets()[..], &HOA.octets()[..])
    );
    eprintln!(
        "one-box downlink: inner TTL 64 at the gateway, {} inside the tunnel",
        outer[28]
    );
    assert_eq!(
        outer[28], 64,
        "locally originated, not forwarded: the encapsulator leaves the TTL alone (RFC 2003 §3.1)"
    );
    eventually_metric(
        &lab,
        "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"ipip\"}",
        1.0,
    );
    eventually_metric(
        &lab,
        "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"ipip\"}",
        1.0,
    );

    // The home agent goes away: the ICMP port unreachable on the relay socket becomes code 82 for the node.
    lab.ha.take();
    assert_eq!(mn.register(KEY1, Duration::from_secs(5)), RegResult::Failed(82));
    assert_eq!(
        metric(&lab.metrics(), "mip_registrations_total{role=\"proxy\",code=\"82\"}"),
        1.0
    );

    terminate(&mut lab);
    let routes = lab.px.ip("-4 route show table all");
    assert!(
        !routes.contains("mipp") && !routes.contains("10.10.1.1 via"),
        "{routes}"
    );
}

#[test]
fn failed_start_leaves_no_kernel_state() {
    let mut lab = Lab::topology(Mode::TwoBox);
    // Something else holds the admin port: the daemon fails after its kernel state was installed.
    let _squatter = lab.px.run(|| std::net::TcpListener::bind(ADMIN).unwrap());
    let status = lab.start_expecting_exit();
    assert_eq!(status.code(), Some(1), "{}", lab.log_text());
    let failed = lab
        .log_json()
        .into_iter()
        .any(|l| l["level"] == "ERROR" && l["error"].as_str().is_some_and(|e| e.contains("admin server")));
    assert!(failed, "{}", lab.log_text());
    assert_kernel_state_removed(&lab);
}

/// The node's own address on the intranet LAN (what `MIP_NODE_ADDRESS` carries in a pod).
const NODE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);

/// `ip -4 addr show dev lo` in the proxy's namespace.
fn lo_addresses(lab: &Lab) -> String {
    lab.px.ip("-4 addr show dev lo")
}

/// As a Kubernetes pod runs it: the node address from `MIP_NODE_ADDRESS` (relayed requests leave from it, the
/// replica id is derived from it), `assign_addresses` puts `proxy_public`/32 on `lo` (`proxy_private` is on
/// `lan0` already: left alone), `GET /drain` withdraws (`/readyz` 503) while the proxy keeps serving and
/// answers after `drain_ms`, then SIGTERM exits at once and removes exactly the address it added. A run killed
/// with SIGKILL leaves the address; the next run adopts it and removes it at its shutdown.
#[test]
fn pod_mode_node_address_from_env_assigned_addresses_and_drain() {
    let mut lab = Lab::topology(Mode::OneBox);
    lab.px.ip(&format!("addr del {PROXY_PUBLIC}/32 dev lo"));
    lab.px.ip(&format!("addr add {NODE}/24 dev lan0"));
    lab.env = vec![("MIP_NODE_ADDRESS".into(), NODE.to_string())];
    lab.dataplane_extra = "  assign_addresses: true\n".into();
    lab.daemon_extra = "  drain_ms: 700\n".into();
    lab.replication = Some(format!(
        "  listen: {NODE}:7443\n  peers: {{ static: [{NODE}:7443] }}\n  insecure_plaintext: true\n  \
         flush_timeout_ms: 300\n"
    ));
    lab.start_proxy();

    let id = u32::from(NODE);
    let logs = lab.log_json();
    let line = |msg: &str| {
        logs.iter()
            .find(|l| l["message"] == msg)
            .unwrap_or_else(|| panic!("no `{msg}` line:\n{}", lab.log_text()))
            .clone()
    };
    let node = line("node address");
    assert_eq!(
        (&node["node_address"], &node["source"], &node["replica_id"]),
        (&json!(NODE.to_string()), &json!("MIP_NODE_ADDRESS"), &json!(id)),
        "{node}"
    );
    assert_eq!(line("replication started")["replica_id"], json!(id));
    let lo = lo_addresses(&lab);
    assert!(
        lo.contains(&format!("{PROXY_PUBLIC}/32")) && lo.contains("lo:mip-proxy"),
        "{lo}"
    );
    assert!(
        !lo.contains(&PROXY_PRIVATE.to_string()),
        "already on lan0: not added\n{lo}"
    );
    eventually("ready", || lab.http("/readyz").is_some_and(|(c, _)| c == 200));

    // Registration through the shared address; the HA sees the relayed request from the node address.
    let mn = lab.mobile(434);
    registered_udp(mn.register(KEY1, Duration::from_secs(5)));
    assert_eq!(
        lab.ha().seen.lock().unwrap().clone(),
        vec![SocketAddrV4::new(NODE, 434)]
    );

    // preStop: GET /drain. Not ready at once, still serving, answered after drain_ms.
    let sent = Instant::now();
    let hook = lab.px.spawn(|| http_get(ADMIN, "/drain"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(lab.http("/readyz").map(|r| r.0), Some(503));
    assert_eq!(lab.bindings().as_array().unwrap().len(), 1, "still serving");
    assert_eq!(hook.join().unwrap(), Some((200, "drained\n".to_string())));
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lab.proxy.as_mut().unwrap().try_wait().unwrap().is_none(),
        "waits for SIGTERM"
    );
    assert_eq!(lab.http("/readyz").map(|r| r.0), Some(503), "stays not ready");
    assert!(
        lo_addresses(&lab).contains(&PROXY_PUBLIC.to_string()),
        "kept until shutdown"
    );

    // The kubelet's SIGTERM after the hook: no second drain.
    let term = Instant::now();
    lab.signal(Signal::SIGTERM);
    let status = lab
        .wait_exit(Duration::from_secs(2))
        .expect("exits at once after the drain");
    assert!(status.success(), "{status}\n{}", lab.log_text());
    assert!(term.elapsed() < Duration::from_millis(1000), "{:?}", term.elapsed());
    let lo = lo_addresses(&lab);
    assert!(
        !lo.contains(&PROXY_PUBLIC.to_string()),
        "the address it added is gone\n{lo}"
    );
    let lan = lab.px.ip("-4 addr show dev lan0");
    assert!(
        lan.contains(&format!("{PROXY_PRIVATE}/24")),
        "what it did not add stays\n{lan}"
    );

    // SIGKILL leaves the address; the next run adopts it and removes it.
    lab.start_proxy();
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(2)).expect("killed");
    assert!(
        lo_addresses(&lab).contains(&PROXY_PUBLIC.to_string()),
        "left by the killed run"
    );
    lab.start_proxy();
    assert!(
        lab.log_text().contains("left by an earlier run; adopted"),
        "{}",
        lab.log_text()
    );
    lab.signal(Signal::SIGTERM);
    // A SIGTERM drain this time (700 ms), then shutdown.
    let status = lab.wait_exit(Duration::from_secs(3)).expect("exits after the drain");
    assert!(status.success(), "{status}\n{}", lab.log_text());
    assert!(
        !lo_addresses(&lab).contains(&PROXY_PUBLIC.to_string()),
        "{}",
        lo_addresses(&lab)
    );
}

/// A `MIP_NODE_ADDRESS` that is not an IPv4 unicast address stops the start (exit 2) with an error naming it;
/// without it, a replication section without `replica_id` and no node address is refused naming the field.
#[test]
fn bad_node_address_env_and_missing_replica_id_stop_the_start() {
    let mut lab = Lab::topology(Mode::TwoBox);
    lab.env = vec![("MIP_NODE_ADDRESS".into(), "fd00::1".into())];
    let status = lab.start_expecting_exit();
    assert_eq!(status.code(), Some(2), "{}", lab.log_text());
    let text = lab.log_text();
    assert!(
        text.contains("MIP_NODE_ADDRESS") && text.contains("not an IPv4 unicast address"),
        "{text}"
    );

    lab.env.clear();
    lab.replication = Some("  listen: 127.0.0.1:7443\n  peers: { static: [] }\n  insecure_plaintext: true\n".into());
    let status = lab.start_expecting_exit();
    assert_eq!(status.code(), Some(2), "{}", lab.log_text());
    let text = lab.log_text();
    assert!(text.contains("field `replication.replica_id`"), "{text}");
    assert_kernel_state_removed(&lab);
}

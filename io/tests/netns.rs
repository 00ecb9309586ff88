//! Privileged tests: TUN devices, raw sockets, `ip` commands and rtnetlink notifications, each in a private network
//! namespace of its own.
//!
//! Every test body runs on a fresh thread that calls `unshare(CLONE_NEWNET)`: the thread (and every process it
//! spawns: `ip`, `ping`) lives in a new, empty namespace, and the namespace with all its devices disappears when
//! the thread ends, also when the test fails. Nothing touches the host's network. These tests need root
//! (CAP_NET_ADMIN, CAP_NET_RAW) and iproute2 + ping; without them they fail instead of being skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mip_io::batch::{RecvBatch, SendBatch};
use mip_io::net::{self, Route, Rule};
use mip_io::socket::{RawSocket, UdpSocket};
use mip_io::tun::Tun;
use mip_io::watch::NetWatcher;

/// Runs `body` in a new network namespace (loopback up) on its own thread.
fn in_netns(body: impl FnOnce() + Send + 'static) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mip-io network tests need root (CAP_NET_ADMIN, CAP_NET_RAW): run `cargo test -p mip-io` as root"
    );
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        net::link_up("lo").expect("ip link set lo up (is iproute2 installed?)");
        body();
    });
    if let Err(e) = t.join() {
        std::panic::resume_unwind(e);
    }
}

/// Kills and reaps a child process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..].copy_from_slice(payload);
    p
}

fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u[8..].copy_from_slice(payload);
    // Checksum 0 = none (allowed for UDP over IPv4).
    ipv4_packet(*src.ip(), *dst.ip(), 17, 64, &u)
}

/// Polls `f` until it returns `Some` or 5 s pass.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn would_block<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[test]
fn tun_carries_a_ping_both_ways() {
    in_netns(|| {
        let tun = Tun::open("miptest%d", 1400).unwrap();
        let name = tun.name().to_string();
        assert!(name.starts_with("miptest") && !name.contains('%'), "{name}");
        tun.up().unwrap();
        tun.add_address(Ipv4Addr::new(10, 99, 0, 1), 24).unwrap();
        let link = net::link(&name).unwrap().expect("the device exists");
        assert_eq!((link.mtu, link.up, link.mac), (1400, true, None));
        tun.set_mtu(1300).unwrap();
        assert_eq!(net::link(&name).unwrap().unwrap().mtu, 1300);

        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "5", "-n", "10.99.0.2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping (iputils-ping) must be installed");
        let mut ping = Reaped(ping);

        // The echo request comes out of the TUN.
        let mut batch = RecvBatch::default();
        let request = eventually(|| {
            let r = tun.read_batch(&mut batch);
            if would_block(&r) {
                return None;
            }
            r.unwrap();
            batch
                .iter()
                .find(|p| p.dst.ip() == &Ipv4Addr::new(10, 99, 0, 2) && p.payload.get(9) == Some(&1))
                .map(|p| (p.payload.to_vec(), p.src, p.ttl))
        })
        .expect("an ICMP echo request on the TUN");
        let (request, src, ttl) = request;
        assert_eq!(*src.ip(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(ttl, Some(64));
        assert_eq!(request[20], 8, "echo request");

        // Answer it through the TUN: the ping succeeds.
        let mut icmp = request[20..].to_vec();
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let reply = ipv4_packet(Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 1), 1, 64, &icmp);
        assert_eq!(tun.write(&reply).unwrap(), reply.len());
        let status = eventually(|| ping.0.try_wait().unwrap()).expect("ping finishes");
        assert!(status.success(), "ping got no reply through the TUN");

        // Closing the descriptor removes the device.
        drop(tun);
        assert_eq!(net::link(&name).unwrap(), None);
    });
}

#[test]
fn raw_ipip_socket_receives_what_the_raw_sender_sends() {
    in_netns(|| {
        net::addr_add("lo", Ipv4Addr::new(10, 98, 0, 1), 32).unwrap();
        let ipip = RawSocket::ipip().unwrap();
        let bound = RawSocket::ipip().unwrap();
        bound.bind(Ipv4Addr::new(10, 98, 0, 1)).unwrap();
        let sender = RawSocket::sender().unwrap();
        let inner = udp_packet(
            SocketAddrV4::new(Ipv4Addr::new(10, 10, 1, 50), 4500),
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 4500),
            b"esp-in-udp",
        );
        let outer = ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 4, 33, &inner);
        sender.send(&outer).unwrap();

        let mut batch = RecvBatch::default();
        let got = eventually(|| {
            ipip.recv_batch(&mut batch).ok()?;
            batch.iter().next().map(|p| (p.payload.to_vec(), p.src, p.dst, p.ttl))
        })
        .expect("the IPIP packet");
        assert_eq!(got.0[9], 4);
        assert_eq!(&got.0[20..], &inner[..], "outer header included, inner intact");
        assert_eq!(
            (*got.1.ip(), *got.2.ip(), got.3),
            (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, Some(33))
        );
        assert!(would_block(&bound.recv_batch(&mut batch)), "bound to another address");

        // A batch of three to the bound address, one of them not even IPv4.
        let mut out = SendBatch::new(8, 2048);
        let to_bound = ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 98, 0, 1), 4, 64, &inner);
        out.push(&to_bound, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        out.push(&[0x60; 40], SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        out.push(&to_bound, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        let o = sender.send_batch(&out).unwrap();
        assert_eq!((o.sent, o.failed, o.unsent), (2, 1, 0), "{o:?}");
        let mut n = 0;
        eventually(|| {
            if let Ok(k) = bound.recv_batch(&mut batch) {
                n += k;
                assert!(batch.iter().all(|p| *p.dst.ip() == Ipv4Addr::new(10, 98, 0, 1)));
            }
            (n == 2).then_some(())
        })
        .expect("both packets on the bound socket");
    });
}

#[test]
fn raw_icmp_socket_sees_errors_but_not_echoes() {
    in_netns(|| {
        let icmp = RawSocket::icmp().unwrap();
        // An echo exchange on lo: filtered out.
        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "2", "-n", "127.0.0.1"])
            .output()
            .unwrap();
        assert!(ping.status.success());
        // A datagram to a closed port: the port unreachable comes to the raw socket too.
        let tx = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.send_to(b"x", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)).unwrap();
        let mut batch = RecvBatch::default();
        let types = eventually(|| {
            icmp.recv_batch(&mut batch).ok()?;
            let t: Vec<(u8, u8)> = batch.iter().map(|p| (p.payload[20], p.payload[21])).collect();
            (!t.is_empty()).then_some(t)
        })
        .expect("an ICMP error");
        assert_eq!(types, vec![(3, 3)], "only the port unreachable, no echo request/reply");
        let mut reports = Vec::new();
        tx.take_icmp_errors(&mut reports).unwrap();
        assert_eq!(reports.len(), 1);
    });
}

#[test]
fn ip_commands_configure_the_namespace() {
    in_netns(|| {
        let e = net::link_up("nosuchdev0").unwrap_err();
        assert!(e.command.contains("ip link set dev nosuchdev0 up"), "{e}");
        assert!(e.is_missing(), "{e}");
        net::run("ip", &["link", "add", "v0", "type", "veth", "peer", "name", "v1"]).unwrap();
        net::set_mtu("v0", 1400).unwrap();
        net::link_up("v0").unwrap();
        net::link_up("v1").unwrap();
        net::addr_add("v0", Ipv4Addr::new(192, 0, 2, 10), 24).unwrap();
        net::addr_add("v0", Ipv4Addr::new(192, 0, 2, 10), 24).unwrap(); // idempotent
        net::addr_add("v1", Ipv4Addr::new(192, 0, 2, 1), 24).unwrap();
        let v0 = net::link("v0").unwrap().unwrap();
        let v1 = net::link("v1").unwrap().unwrap();
        assert_eq!(v0.mtu, 1400);
        assert!(v0.mac.is_some() && v0.up);
        let addrs = net::ipv4_addresses(Some("v0")).unwrap();
        assert_eq!(addrs.len(), 1);
        assert_eq!((addrs[0].addr, addrs[0].prefix_len), (Ipv4Addr::new(192, 0, 2, 10), 24));

        // Default route and its gateway's MAC (a permanent neighbour entry stands in for ARP).
        assert_eq!(net::default_gateway().unwrap(), None);
        net::route_replace(
            "0.0.0.0/0".parse().unwrap(),
            Some(Ipv4Addr::new(192, 0, 2, 1)),
            Some("v0"),
            None,
            None,
        )
        .unwrap();
        net::neigh_replace(Ipv4Addr::new(192, 0, 2, 1), v1.mac.unwrap(), "v0").unwrap();
        let gw = net::default_gateway().unwrap().unwrap();
        assert_eq!(
            gw,
            net::Gateway {
                address: Ipv4Addr::new(192, 0, 2, 1),
                dev: "v0".into(),
                mac: v1.mac
            }
        );
        assert_eq!(
            net::source_address_for(Ipv4Addr::new(203, 0, 113, 5)),
            Some(Ipv4Addr::new(192, 0, 2, 10))
        );

        // Routes in another table, rules, deletion of what is gone.
        let home: mip::config::Prefix = "10.10.1.0/24".parse().unwrap();
        net::route_replace(home, None, Some("v0"), Some(Ipv4Addr::new(192, 0, 2, 10)), Some(100)).unwrap();
        net::route_replace_with(&Route {
            mtu: Some(1300),
            table: Some(100),
            dev: Some("v0".into()),
            ..Route::to(home)
        })
        .unwrap();
        let shown = net::run("ip", &["route", "show", "table", "100"]).unwrap();
        assert!(
            shown.contains("10.10.1.0/24 dev v0") && shown.contains("mtu 1300"),
            "{shown}"
        );
        let rule = Rule {
            pref: Some(1000),
            fwmark: Some((1, None)),
            not: true,
            lookup: 100,
            ..Rule::default()
        };
        net::rule_add(&rule).unwrap();
        let rules = net::run("ip", &["rule", "show"]).unwrap();
        assert!(rules.contains("1000:\tnot from all fwmark 0x1 lookup 100"), "{rules}");
        assert!(net::rule_add(&rule).unwrap_err().is_exists());
        net::rule_del(&rule).unwrap();
        net::route_del(home, Some(100)).unwrap();
        assert!(net::route_del(home, Some(100)).unwrap_err().is_missing());
        net::neigh_del(Ipv4Addr::new(192, 0, 2, 1), "v0").unwrap();
        assert!(
            net::neigh_del(Ipv4Addr::new(192, 0, 2, 1), "v0")
                .unwrap_err()
                .is_missing()
        );
        net::addr_del("v0", Ipv4Addr::new(192, 0, 2, 10), 24).unwrap();
        assert!(
            net::addr_del("v0", Ipv4Addr::new(192, 0, 2, 10), 24)
                .unwrap_err()
                .is_missing()
        );
        net::addr_add("v0", Ipv4Addr::new(192, 0, 2, 10), 24).unwrap();

        // Proxy ARP entries.
        net::neigh_proxy_add(Ipv4Addr::new(192, 0, 2, 50), "v0").unwrap();
        let proxies = net::run("ip", &["neigh", "show", "proxy"]).unwrap();
        assert!(proxies.contains("192.0.2.50 dev v0"), "{proxies}");
        net::neigh_proxy_del(Ipv4Addr::new(192, 0, 2, 50), "v0").unwrap();
        assert!(
            !net::run("ip", &["neigh", "show", "proxy"])
                .unwrap()
                .contains("192.0.2.50")
        );

        // sysctl, namespaced.
        net::sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(net::sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
        net::sysctl("net/ipv4/conf/v1/arp_accept", "1").unwrap();

        // A gratuitous ARP from v0 creates a neighbour entry on v1 (arp_accept).
        let announced = Ipv4Addr::new(192, 0, 2, 77);
        net::gratuitous_arp("v0", announced).unwrap();
        let learnt = eventually(|| net::neigh_lladdr(announced, "v1").unwrap());
        assert_eq!(learnt, v0.mac);
        assert!(net::gratuitous_arp("nosuchdev0", announced).is_err());
    });
}

#[test]
fn netlink_watcher_wakes_on_changes() {
    in_netns(|| {
        let mut w = NetWatcher::new().unwrap();
        assert!(!w.wait(Duration::from_millis(50)).unwrap(), "nothing changed yet");
        net::addr_add("lo", Ipv4Addr::new(10, 97, 0, 1), 32).unwrap();
        assert!(w.wait(Duration::from_secs(2)).unwrap(), "address change");
        w.settle(Duration::from_millis(50), Duration::from_secs(1)).unwrap();
        assert!(!w.wait(Duration::from_millis(20)).unwrap());
        net::run("ip", &["link", "add", "w0", "type", "veth", "peer", "name", "w1"]).unwrap();
        assert!(w.wait(Duration::from_secs(2)).unwrap(), "link change");
        w.settle(Duration::from_millis(50), Duration::from_secs(1)).unwrap();
        net::route_replace("10.96.0.0/16".parse().unwrap(), None, Some("lo"), None, None).unwrap();
        assert!(w.wait(Duration::from_secs(2)).unwrap(), "route change");
        assert_eq!(w.overruns(), 0);
    });
}

#[test]
fn udp_socket_options_in_a_namespace() {
    in_netns(|| {
        net::addr_add("lo", Ipv4Addr::new(10, 95, 0, 1), 32).unwrap();
        let opts = mip_io::socket::UdpOptions {
            mark: Some(7),
            freebind: true,
            device: Some("lo".into()),
            dont_fragment: Some(true),
            recv_buffer: Some(1 << 20),
            ..Default::default()
        };
        // FREEBIND: an address that is not configured (yet); the mark does not change routing without rules.
        let free = mip_io::socket::UdpOptions {
            device: None,
            ..opts.clone()
        };
        let s = UdpSocket::bind_with(SocketAddrV4::new(Ipv4Addr::new(10, 95, 0, 99), 0), &free).unwrap();
        let rx = UdpSocket::bind_with(SocketAddrV4::new(Ipv4Addr::new(10, 95, 0, 1), 0), &opts).unwrap();
        // Sending needs the address to be local by then.
        net::addr_add("lo", Ipv4Addr::new(10, 95, 0, 99), 32).unwrap();
        s.send_to(b"marked", rx.local_addr()).unwrap();
        let mut batch = RecvBatch::default();
        let got = eventually(|| {
            rx.recv_batch(&mut batch).ok()?;
            batch.iter().next().map(|p| (p.payload.to_vec(), p.src, p.ifindex))
        })
        .unwrap();
        assert_eq!(got.0, b"marked");
        assert_eq!(got.1, s.local_addr());
        assert_eq!(got.2, 1, "arrived on lo");
    });
}

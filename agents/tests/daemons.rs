//! `mip-ha` and `mip-mn` in namespace topologies of their own (`mat-<pid>-<test>-<host>`), as root.
//!
//! Every veth is created inside a test namespace with its peer moved straight into another one; nothing is
//! created in the root namespace. A [`Lab`] guard stops the daemons (TERM, then KILL) and deletes the namespaces
//! when dropped, also when a test panics. Sockets the tests use are created on a thread that entered the
//! namespace (`setns`), so they belong to it for their whole life. These tests fail, never skip, without root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mip::wire::ipv4::{Ipv4Packet, Ipv4Repr, protocol};
use mip::wire::udp::{UdpPacket, UdpRepr};
use mip_io::batch::RecvBatch;
use mip_io::socket::RawSocket;
use serde_json::Value;

mod common;
use common::run;

const KEYS: &str = "security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: \"000102030405060708090a0b0c0d0e0f\"\n";
const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const ADMIN: &str = "127.0.0.1:9434";

// === the lab ===

/// Namespaces and daemons of one test; dropping it removes everything.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child, PathBuf)>,
    dir: PathBuf,
}

impl Lab {
    fn new(test: &str) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the daemon tests need root (network namespaces, TUN, raw sockets): run `cargo test -p mip-agents` as root"
        );
        let prefix = format!("mat-{}-{test}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
        }
    }

    /// A new namespace `<prefix>-<host>` with loopback up.
    fn ns(&mut self, host: &str) -> String {
        let name = format!("{}-{host}", self.prefix);
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// `ip -n NS ARGS…` (whitespace-separated).
    fn ip(&self, ns: &str, args: &str) -> String {
        let mut all = vec!["-n", ns];
        all.extend(args.split_whitespace());
        run("ip", &all)
    }

    /// A shell command inside `ns`.
    fn sh(&self, ns: &str, script: &str) -> String {
        run("ip", &["netns", "exec", ns, "sh", "-c", script])
    }

    /// A veth pair created inside `a` (`a_dev`) whose peer goes straight into `b` (`b_dev`).
    fn veth(&self, a: &str, a_dev: &str, b: &str, b_dev: &str) {
        run(
            "ip",
            &[
                "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b,
            ],
        );
    }

    fn file(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Starts `program --config config` in `ns` (stderr to a log file).
    fn daemon(&mut self, ns: &str, name: &str, program: &str, config: &Path) {
        let log = self.dir.join(format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program, "--config"])
            .arg(config)
            .env("RUST_LOG", "info,mip_agents=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.children.push((name.to_string(), child, log));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if admin(ns, "/readyz").is_ok() {
                return;
            }
            if let Some((_, c, _)) = self.children.last_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("{name} exited ({status}) during start-up:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready within 10 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (name, _, log) in &self.children {
            s.push_str(&format!(
                "--- {name} ---\n{}\n",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        s
    }

    /// Waits until `f` returns `Some` (or panics with the daemons' logs after `limit`).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for (name, child, _) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} ignored SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The daemons' logs: always after a failure, on request (`MAT_LOGS=1`) otherwise.
        if std::thread::panicking() || std::env::var_os("MAT_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it creates stay in that namespace).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `GET path` on the admin port of the daemon in `ns`.
fn admin(ns: &str, path: &'static str) -> Result<String, String> {
    in_ns(ns, move || {
        mip_agents::register::admin_get(ADMIN.parse().unwrap(), path, Duration::from_secs(2))
    })
}

fn bindings(ns: &str) -> Value {
    serde_json::from_str(&admin(ns, "/bindings").unwrap()).unwrap()
}

/// The value of one series (`name{labels}` exactly as rendered), 0 if absent.
fn metric(ns: &str, series: &str) -> f64 {
    let text = admin(ns, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn udp_in(ns: &str, bind: &str) -> UdpSocket {
    let bind: SocketAddr = bind.parse().unwrap();
    let s = in_ns(ns, move || UdpSocket::bind(bind).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn raw_in(ns: &str, proto: u8) -> RawSocket {
    in_ns(ns, move || {
        if proto == protocol::IPIP {
            RawSocket::ipip().unwrap()
        } else {
            RawSocket::protocol(proto).unwrap()
        }
    })
}

/// Collects packets from a raw socket until `pick` accepts one (5 s at most).
fn capture<T>(sock: &RawSocket, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
    let mut batch = RecvBatch::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match sock.recv_batch(&mut batch) {
            Ok(_) => {
                for r in batch.iter() {
                    if let Some(v) = pick(r.payload) {
                        return Some(v);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("capture: {e}"),
        }
    }
    None
}

/// An IPv4/UDP packet (checksums filled).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    p[28..].copy_from_slice(payload);
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(&mut p[20..], payload.len(), *src.ip(), *dst.ip())
    .unwrap();
    ip_header(*src.ip(), *dst.ip(), protocol::UDP, &mut p);
    p
}

/// Writes an IPv4 header in front of `p[20..]`.
fn ip_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, p: &mut [u8]) {
    let len = p.len() - 20;
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len: len,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: false,
    }
    .emit(p)
    .unwrap();
}

fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + inner.len()];
    p[20..].copy_from_slice(inner);
    ip_header(outer_src, outer_dst, protocol::IPIP, &mut p);
    p
}

fn route(lab: &Lab, ns: &str, dest: &str) -> Option<Value> {
    let text = lab.ip(ns, &format!("-j route show {dest}"));
    let v: Value = serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap();
    v.as_array().and_then(|a| a.first().cloned())
}

// === mip-ha ===

/// A node (driven by `mipctl register`) registers directly with `mip-ha`: binding, intercept route, proxy ARP,
/// IP-in-IP to the care-of address, reverse tunnel with its RFC 3024 check, deregistration.
#[test]
fn ha_binds_intercepts_tunnels_and_deregisters() {
    let mut lab = Lab::new("ha");
    let h = lab.ns("ha");
    let c = lab.ns("cn");
    let m = lab.ns("coa");
    lab.veth(&h, "hl", &c, "cl");
    lab.veth(&h, "ml", &m, "m0");
    for cmd in [
        "addr add 10.10.1.1/24 dev hl",
        "link set hl up",
        "addr add 192.0.2.1/24 dev ml",
        "link set ml up",
    ] {
        lab.ip(&h, cmd);
    }
    for cmd in [
        "addr add 10.10.1.100/24 dev cl",
        "link set cl up",
        "route add default via 10.10.1.1",
    ] {
        lab.ip(&c, cmd);
    }
    for cmd in [
        "addr add 192.0.2.10/24 dev m0",
        "link set m0 up",
        "route add default via 192.0.2.1",
    ] {
        lab.ip(&m, cmd);
    }
    let keys = lab.file("keys.yaml", KEYS, 0o600);
    let ha_yaml = lab.file(
        "ha.yaml",
        &format!(
            "ha:\n  address: 10.10.1.1\n  home_networks: [10.10.1.0/24]\ndataplane:\n  tun: miph0\n  tun_mtu: 1468\n  \
             home_link: hl\ndaemon:\n  keys_file: {}\n  admin: {ADMIN}\n  log_format: text\n",
            keys.display()
        ),
        0o644,
    );
    let mn_yaml = lab.file(
        "mn.yaml",
        &format!(
            "mn:\n  home_address: 10.10.1.50\n  home_agent: 10.10.1.1\n  spi: 256\n  lifetime: 120\ndataplane:\n  \
             tunnelled: [198.51.100.20/32]\ndaemon:\n  keys_file: {}\n",
            keys.display()
        ),
        0o644,
    );
    lab.daemon(&h, "mip-ha", env!("CARGO_BIN_EXE_mip-ha"), &ha_yaml);
    assert_eq!(bindings(&h), serde_json::json!([]));
    assert_eq!(
        lab.sh(&h, "cat /proc/sys/net/ipv4/ip_forward").trim(),
        "1",
        "mip-ha enables forwarding"
    );

    let mipctl = |extra: &[&str]| {
        let mut args = vec![
            "netns",
            "exec",
            m.as_str(),
            env!("CARGO_BIN_EXE_mipctl"),
            "register",
            "--config",
        ];
        let cfg = mn_yaml.display().to_string();
        args.push(&cfg);
        args.extend_from_slice(extra);
        let out = run("ip", &args);
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let reg = mipctl(&[]);
    assert_eq!(reg["result"], "accepted", "{reg}");
    assert_eq!(reg["tunnel"]["type"], "ipip", "{reg}");

    // The binding, the route into the TUN and the proxy-ARP entry.
    let b = bindings(&h);
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    let b0 = &b[0];
    assert_eq!(b0["home_address"], "10.10.1.50");
    assert_eq!(b0["care_of_address"], "192.0.2.10");
    assert_eq!(b0["tunnel"]["encapsulation"], "ipip");
    assert_eq!(b0["tunnel"]["address"], "192.0.2.10");
    assert_eq!(b0["lifetime"], 120);
    assert_eq!(b0["reverse_tunnel"], true);
    assert!(b0["expires_in_ms"].as_u64().unwrap() > 100_000, "{b0}");
    let r = route(&lab, &h, "10.10.1.50/32").expect("a route for the home address");
    assert_eq!(r["dev"], "miph0", "{r}");
    let proxy = lab.ip(&h, "neigh show proxy");
    assert!(proxy.contains("10.10.1.50 dev hl"), "{proxy}");

    // `mipctl status --json` from the HA's admin address: role, bindings, the registration with its code.
    let status_out = run(
        "ip",
        &[
            "netns",
            "exec",
            h.as_str(),
            env!("CARGO_BIN_EXE_mipctl"),
            "status",
            "--admin",
            ADMIN,
            "--json",
        ],
    );
    let st: Value = serde_json::from_str(status_out.trim()).unwrap_or_else(|e| panic!("{e}: {status_out}"));
    assert_eq!(st["admin"], ADMIN, "{st}");
    assert_eq!(st["role"], "ha", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["bindings"], 1, "{st}");
    assert_eq!(st["address"], "10.10.1.1", "{st}");
    let last = &st["recent_registrations"][0];
    assert_eq!(last["home_address"], "10.10.1.50", "{st}");
    assert_eq!(last["care_of_address"], "192.0.2.10", "{st}");
    assert_eq!(last["code"], 0, "{st}");
    assert_eq!(last["accepted"], true, "{st}");
    assert_eq!(last["lifetime"], 120, "{st}");
    // The text screen says the same.
    let screen = run(
        "ip",
        &[
            "netns",
            "exec",
            h.as_str(),
            env!("CARGO_BIN_EXE_mipctl"),
            "status",
            "--admin",
            ADMIN,
        ],
    );
    assert!(
        screen.starts_with(&format!("mip-ha (ha) at {ADMIN}: version ")),
        "{screen}"
    );
    assert!(screen.contains("  bindings 1\n"), "{screen}");
    assert!(
        screen.contains(" 10.10.1.50  care-of 192.0.2.10  HA 10.10.1.1  code 0 "),
        "{screen}"
    );

    // CN -> HoA: the CN's ARP is answered by the HA, the packet comes out IP-in-IP at the care-of address.
    let cap = raw_in(&m, protocol::IPIP);
    let cn = udp_in(&c, "0.0.0.0:9999");
    cn.send_to(b"hello node", "10.10.1.50:7777").unwrap();
    let (outer_ttl, inner_ttl, payload) = capture(&cap, |pkt| {
        let o = Ipv4Packet::new_checked(pkt).ok()?;
        (o.src_addr() == Ipv4Addr::new(10, 10, 1, 1) && o.dst_addr() == Ipv4Addr::new(192, 0, 2, 10)).then_some(())?;
        let i = Ipv4Packet::new_checked(o.payload()).ok()?;
        (i.src_addr() == Ipv4Addr::new(10, 10, 1, 100) && i.dst_addr() == HOA && i.protocol() == protocol::UDP)
            .then_some(())?;
        let u = UdpPacket::new_checked(i.payload()).ok()?;
        Some((o.ttl(), i.ttl(), u.payload().to_vec()))
    })
    .unwrap_or_else(|| panic!("no IP-in-IP packet at the care-of address:\n{}", lab.logs()));
    assert_eq!(payload, b"hello node");
    assert_eq!(outer_ttl, 64, "outer TTL = dataplane.outer_ttl");
    // 64 − 1 for the HA's kernel forwarding the packet into the TUN, the one decrement of that hop: the
    // encapsulator does not decrement again (RFC 2003 §3.1).
    assert_eq!(inner_ttl, 63);

    // Reverse tunnel (RFC 3024): from the care-of address with the home address inside: delivered.
    let cn2 = udp_in(&c, "0.0.0.0:9998");
    let coa = Ipv4Addr::new(192, 0, 2, 10);
    let ha_addr = Ipv4Addr::new(10, 10, 1, 1);
    let good = udp_packet(
        SocketAddrV4::new(HOA, 7777),
        SocketAddrV4::new(Ipv4Addr::new(10, 10, 1, 100), 9998),
        b"from the node",
    );
    let spoofed = udp_packet(
        SocketAddrV4::new(Ipv4Addr::new(10, 10, 1, 51), 7777),
        SocketAddrV4::new(Ipv4Addr::new(10, 10, 1, 100), 9998),
        b"spoofed",
    );
    let tx = in_ns(&m, || RawSocket::sender().unwrap());
    tx.send(&ipip(coa, ha_addr, &spoofed)).unwrap();
    tx.send(&ipip(coa, ha_addr, &good)).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = cn2
        .recv_from(&mut buf)
        .expect("the reverse-tunnelled packet reaches the CN");
    assert_eq!(&buf[..n], b"from the node", "the spoofed packet must not arrive");
    assert_eq!(from, "10.10.1.50:7777".parse().unwrap());
    lab.wait_for("the spoofed packet counted", Duration::from_secs(2), || {
        (metric(&h, "mip_drops_total{path=\"up\",reason=\"not_bound\"}") >= 1.0).then_some(())
    });
    assert_eq!(
        metric(
            &h,
            "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"ipip\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&h, "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"ipip\"}"),
        1.0
    );
    assert_eq!(metric(&h, "mip_bindings"), 1.0);

    // Deregistration removes the binding, the route and the proxy-ARP entry.
    let dereg = mipctl(&["--deregister"]);
    assert_eq!(dereg["deregistered"], true, "{dereg}");
    assert_eq!(bindings(&h), serde_json::json!([]));
    assert!(
        route(&lab, &h, "10.10.1.50/32").is_none(),
        "the home address route is gone"
    );
    let proxy = lab.ip(&h, "neigh show proxy");
    assert!(!proxy.contains("10.10.1.50"), "{proxy}");
    assert_eq!(metric(&h, "mip_registrations_total{role=\"ha\",code=\"0\"}"), 3.0);
    assert_eq!(metric(&h, "mip_bindings"), 0.0);
}

// === mip-mn ===

/// `mip-mn` against `mip-ha` playing the proxy (its address is `proxy_public`, the home network holds the HoA):
/// IP-in-IP on a routable link, a hand-off to a NATed link (UDP tunnel) within 1 s, a gateway MAC change that
/// re-registers, data both ways through each tunnel, keepalives sent and answered.
#[test]
fn mn_registers_hands_off_and_tunnels() {
    let mut lab = Lab::new("mn");
    let m = lab.ns("mn");
    let n = lab.ns("nat");
    let i = lab.ns("inet");
    let r = lab.ns("proxy");
    lab.veth(&m, "a0", &i, "a0g");
    lab.veth(&m, "c0", &n, "c0g");
    lab.veth(&n, "n0", &i, "n0i");
    lab.veth(&i, "r0", &r, "r0r");
    for cmd in [
        "addr add 192.0.2.1/24 dev a0g",
        "link set a0g up",
        "addr add 203.0.113.1/24 dev n0i",
        "link set n0i up",
        "addr add 198.51.100.1/24 dev r0",
        "link set r0 up",
    ] {
        lab.ip(&i, cmd);
    }
    lab.sh(&i, "echo 1 > /proc/sys/net/ipv4/ip_forward");
    lab.sh(
        &n,
        "echo 1 > /proc/sys/net/ipv4/conf/all/arp_notify; echo 1 > /proc/sys/net/ipv4/conf/default/arp_notify",
    );
    for cmd in [
        "addr add 192.168.1.1/24 dev c0g",
        "link set c0g up",
        "addr add 203.0.113.2/24 dev n0",
        "link set n0 up",
        "route add default via 203.0.113.1",
    ] {
        lab.ip(&n, cmd);
    }
    lab.sh(
        &n,
        "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv4/conf/c0g/arp_notify; \
         nft add table ip nat && nft add chain ip nat post '{ type nat hook postrouting priority 100; }' && \
         nft add rule ip nat post oifname n0 masquerade",
    );
    for cmd in [
        "addr add 198.51.100.10/24 dev r0r",
        "link set r0r up",
        "route add default via 198.51.100.1",
        "addr add 198.51.100.20/32 dev lo",
    ] {
        lab.ip(&r, cmd);
    }
    // The node's two access links, both down: no default route yet.
    lab.ip(&m, "addr add 192.0.2.10/24 dev a0");
    lab.ip(&m, "addr add 192.168.1.10/24 dev c0");

    let keys = lab.file("keys.yaml", KEYS, 0o600);
    let ha_yaml = lab.file(
        "ha.yaml",
        &format!(
            "ha:\n  address: 198.51.100.10\n  home_networks: [10.10.1.0/24]\n  nat_max_lifetime: 60\n  \
             udp_tunnelling: {{keepalive: 10}}\ndataplane:\n  tun: miph0\n  tun_mtu: 1468\ndaemon:\n  keys_file: {}\n  \
             admin: {ADMIN}\n  log_format: text\n",
            keys.display()
        ),
        0o644,
    );
    let mn_yaml = lab.file(
        "mn.yaml",
        &format!(
            "mn:\n  home_address: 10.10.1.50\n  home_agent: 198.51.100.10\n  spi: 256\n  lifetime: 120\ndataplane:\n  \
             tun: mip0\n  tunnelled: [198.51.100.20/32]\ndaemon:\n  keys_file: {}\n  admin: {ADMIN}\n  \
             log_format: text\n",
            keys.display()
        ),
        0o644,
    );
    lab.daemon(&r, "mip-ha (proxy)", env!("CARGO_BIN_EXE_mip-ha"), &ha_yaml);
    lab.daemon(&m, "mip-mn", env!("CARGO_BIN_EXE_mip-mn"), &mn_yaml);

    // Before any link: idle, the HoA on mip0, the VPN gateway routed into mip0 from the HoA.
    let b = bindings(&m);
    assert_eq!(b["state"], "idle", "{b}");
    let addr = lab.ip(&m, "-4 addr show dev mip0");
    assert!(addr.contains("10.10.1.50/32"), "{addr}");
    let rt = route(&lab, &m, "198.51.100.20/32").expect("the tunnelled route");
    assert_eq!(
        (rt["dev"].as_str(), rt["prefsrc"].as_str()),
        (Some("mip0"), Some("10.10.1.50")),
        "{rt}"
    );

    // Link A (routable): IP-in-IP.
    lab.ip(&m, "link set a0 up");
    lab.ip(&m, "route add default via 192.0.2.1");
    let b = lab.wait_for("registration on link A", Duration::from_secs(5), || {
        let b = bindings(&m);
        (b["state"] == "registered" && b["care_of_address"] == "192.0.2.10").then_some(b)
    });
    assert_eq!(b["tunnel"]["type"], "ipip", "{b}");
    assert_eq!(b["tunnel"]["peer"], "198.51.100.10", "{b}");
    assert_eq!(b["attachment"]["device"], "a0", "{b}");
    let hb = bindings(&r);
    assert_eq!(hb[0]["care_of_address"], "192.0.2.10", "{hb}");
    assert_eq!(hb[0]["tunnel"]["encapsulation"], "ipip", "{hb}");

    round_trip(&lab, &m, &r, "over IP-in-IP", |pkt| {
        let o = Ipv4Packet::new_checked(pkt).ok()?;
        let ok = o.protocol() == protocol::IPIP
            && o.src_addr() == Ipv4Addr::new(192, 0, 2, 10)
            && o.dst_addr() == Ipv4Addr::new(198, 51, 100, 10);
        ok.then(|| o.payload().to_vec())
    });
    assert_eq!(
        metric(&m, "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"ipip\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"ipip\"}"
        ),
        1.0
    );

    // Hand-off to link C (behind a NAT): a new registration with the new care-of address within 1 s.
    lab.ip(&m, "link set a0 down");
    let t0 = Instant::now();
    lab.ip(&m, "link set c0 up");
    lab.ip(&m, "route replace default via 192.168.1.1 dev c0");
    let b = lab.wait_for("registration on link C", Duration::from_secs(3), || {
        let b = bindings(&m);
        (b["state"] == "registered" && b["care_of_address"] == "192.168.1.10").then_some(b)
    });
    let handoff = t0.elapsed();
    assert!(handoff < Duration::from_secs(1), "hand-off took {handoff:?}");
    assert_eq!(b["tunnel"]["type"], "udp", "the proxy saw the NAT: {b}");
    assert_eq!(b["tunnel"]["peer"], "198.51.100.10:434", "{b}");
    assert_eq!(b["tunnel"]["keepalive_secs"], 10, "{b}");
    let hb = bindings(&r);
    assert_eq!(hb[0]["care_of_address"], "192.168.1.10", "{hb}");
    assert_eq!(hb[0]["tunnel"]["encapsulation"], "udp_ipip", "{hb}");
    assert_eq!(hb[0]["tunnel"]["address"], "203.0.113.2", "{hb}");
    assert_eq!(metric(&m, "mip_handoffs_total"), 1.0);

    round_trip(&lab, &m, &r, "over the UDP tunnel", |pkt| {
        let o = Ipv4Packet::new_checked(pkt).ok()?;
        let ok = o.protocol() == protocol::UDP
            && o.src_addr() == Ipv4Addr::new(203, 0, 113, 2)
            && o.dst_addr() == Ipv4Addr::new(198, 51, 100, 10);
        let u = UdpPacket::new_checked(o.payload()).ok()?;
        let td = u.payload();
        (ok && u.dst_port() == 434 && td.starts_with(&[4, 4, 0, 0])).then(|| td[4..].to_vec())
    });
    assert_eq!(
        metric(&m, "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"udp\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"udp\"}"),
        1.0
    );

    // The NAT's inside MAC changes (same gateway address, same care-of address): a re-registration.
    let gw_mac = |lab: &Lab| -> String {
        let v: Value = serde_json::from_str(&lab.ip(&n, "-j link show dev c0g")).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    let old_mac = gw_mac(&lab);
    lab.wait_for("the gateway MAC learned", Duration::from_secs(3), || {
        (bindings(&m)["attachment"]["gateway_mac"] == old_mac.as_str()).then_some(())
    });
    let accepted = |ns: &str| metric(ns, "mip_registrations_total{role=\"mn\",code=\"0\"}");
    let before = accepted(&m);
    lab.ip(&n, "link set dev c0g address 02:00:5e:10:00:99");
    lab.wait_for(
        "a re-registration after the gateway change",
        Duration::from_secs(5),
        || {
            let b = bindings(&m);
            (b["attachment"]["gateway_mac"] == "02:00:5e:10:00:99"
                && accepted(&m) > before
                && b["state"] == "registered")
                .then_some(())
        },
    );
    assert_eq!(metric(&m, "mip_gateway_changes_total"), 1.0);
    assert_eq!(metric(&m, "mip_handoffs_total"), 1.0, "not a hand-off");

    // Keepalives (K = 10 s from the proxy's UDP Tunnel Reply): sent through the tunnel and answered.
    lab.wait_for("a keepalive answered", Duration::from_secs(14), || {
        (metric(&m, "mip_keepalives_total{result=\"answered\"}") >= 1.0).then_some(())
    });
    assert!(metric(&m, "mip_keepalives_total{result=\"sent\"}") >= 1.0);
    assert!(metric(&r, "mip_keepalives_total{result=\"answered\"}") >= 1.0);
    for reason in ["not_peer", "malformed", "not_home_address"] {
        assert_eq!(
            metric(&m, &format!("mip_drops_total{{path=\"down\",reason=\"{reason}\"}}")),
            0.0,
            "{reason}"
        );
    }
}

/// A UDP datagram from the HoA to the VPN gateway's address (local to the proxy namespace) and its answer; `outer`
/// recognises the encapsulated uplink packet in a capture at the proxy and returns the inner packet.
fn round_trip(lab: &Lab, mn: &str, proxy: &str, what: &str, outer: impl FnMut(&[u8]) -> Option<Vec<u8>>) {
    let cap = raw_in(
        proxy,
        if what.contains("UDP") {
            protocol::UDP
        } else {
            protocol::IPIP
        },
    );
    let gateway = udp_in(proxy, "198.51.100.20:4500");
    let app = udp_in(mn, "0.0.0.0:0");
    let ping = format!("ping {what}");
    app.send_to(ping.as_bytes(), "198.51.100.20:4500").unwrap();
    let mut buf = [0u8; 512];
    let (len, from) = gateway
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: nothing reached the gateway address ({e}):\n{}", lab.logs()));
    assert_eq!(&buf[..len], ping.as_bytes());
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(HOA),
        "{what}: the node's packets come from its home address"
    );
    let mut outer = outer;
    let inner = capture(&cap, &mut outer).unwrap_or_else(|| panic!("{what}: no encapsulated packet seen"));
    let i = Ipv4Packet::new_checked(&inner[..]).unwrap();
    assert_eq!(
        (i.src_addr(), i.dst_addr()),
        (HOA, Ipv4Addr::new(198, 51, 100, 20)),
        "{what}"
    );
    let pong = format!("pong {what}");
    gateway.send_to(pong.as_bytes(), from).unwrap();
    let (len, from) = app
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the answer did not come back ({e}):\n{}", lab.logs()));
    assert_eq!(&buf[..len], pong.as_bytes());
    assert_eq!(from, "198.51.100.20:4500".parse().unwrap());
}

/// `mip-mn` on a link without an address of its own: it solicits, hears a foreign agent's advertisement (F, T),
/// registers through it (FA care-of address, TTL 255, from the home address) and, once registered, routes the
/// tunnelled prefix via the agent (RFC 3024 direct delivery). The agent is played by the test: it relays the
/// request to `mip-ha` from its care-of address and the reply back to the node.
#[test]
fn mn_attaches_through_a_foreign_agent() {
    use mip::wire::advertisement::AddrList;
    use mip::wire::{AgentAdvertisementRepr, Dialect, MobilityAgentExt, MobilityAgentFlags, Request};

    let mut lab = Lab::new("fa");
    let m = lab.ns("mn");
    let f = lab.ns("fa");
    let r = lab.ns("proxy");
    lab.veth(&m, "b0", &f, "b0g");
    lab.veth(&f, "f0", &r, "r0r");
    let agent = Ipv4Addr::new(192, 0, 3, 1);
    let fa_coa = Ipv4Addr::new(198, 51, 100, 2);
    for cmd in [
        "addr add 192.0.3.1/24 dev b0g",
        "link set b0g up",
        "addr add 198.51.100.2/24 dev f0",
        "link set f0 up",
        "route add 10.10.1.50/32 dev b0g",
    ] {
        lab.ip(&f, cmd);
    }
    lab.ip(&r, "addr add 198.51.100.10/24 dev r0r");
    lab.ip(&r, "link set r0r up");
    let keys = lab.file("keys.yaml", KEYS, 0o600);
    let ha_yaml = lab.file(
        "ha.yaml",
        &format!(
            "ha:\n  address: 198.51.100.10\n  home_networks: [10.10.1.0/24]\ndaemon:\n  keys_file: {}\n  \
             admin: {ADMIN}\n  log_format: text\n",
            keys.display()
        ),
        0o644,
    );
    let mn_yaml = lab.file(
        "mn.yaml",
        &format!(
            "mn:\n  home_address: 10.10.1.50\n  home_agent: 198.51.100.10\n  spi: 256\n  lifetime: 120\ndataplane:\n  \
             tunnelled: [198.51.100.20/32]\ndaemon:\n  keys_file: {}\n  admin: {ADMIN}\n  log_format: text\n",
            keys.display()
        ),
        0o644,
    );
    lab.daemon(&r, "mip-ha (proxy)", env!("CARGO_BIN_EXE_mip-ha"), &ha_yaml);
    lab.daemon(&m, "mip-mn", env!("CARGO_BIN_EXE_mip-mn"), &mn_yaml);

    // The agent listens for solicitations (224.0.0.11) and registrations on the visited link.
    let group = udp_in(&f, "0.0.0.0:0");
    group.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 11), &agent).unwrap();
    let solicitations = raw_in(&f, protocol::ICMP);
    let visited = udp_in(&f, "192.0.3.1:434");
    let toward_ha = udp_in(&f, "198.51.100.2:434");

    // The node's link comes up with only a default route via the agent: nothing to register co-located.
    lab.ip(&m, "link set b0 up");
    lab.ip(&m, "route add default via 192.0.3.1 dev b0 onlink");
    let ttl = capture(&solicitations, |pkt| {
        let p = Ipv4Packet::new_checked(pkt).ok()?;
        (p.dst_addr() == Ipv4Addr::new(224, 0, 0, 11) && p.payload().first() == Some(&10)).then(|| p.ttl())
    })
    .unwrap_or_else(|| panic!("no agent solicitation:\n{}", lab.logs()));
    assert_eq!(ttl, 1, "solicitations have TTL 1 (RFC 5944 §2.2)");
    assert_eq!(bindings(&m)["state"], "idle");

    // The advertisement: F, T, care-of address 198.51.100.2.
    let coas = fa_coa.octets();
    let adv = AgentAdvertisementRepr {
        code: 16,
        lifetime: 30,
        routers: &[],
        mobility: Some(MobilityAgentExt {
            sequence: 1,
            registration_lifetime: 600,
            flags: MobilityAgentFlags(MobilityAgentFlags::F | MobilityAgentFlags::T),
            care_of_addresses: AddrList::new(&coas).unwrap(),
        }),
        prefix_lengths: None,
    };
    let mut icmp = vec![0u8; adv.buffer_len()];
    adv.emit(&mut icmp).unwrap();
    let mut pkt = vec![0u8; 20 + icmp.len()];
    pkt[20..].copy_from_slice(&icmp);
    ip_header(agent, Ipv4Addr::new(224, 0, 0, 1), protocol::ICMP, &mut pkt);
    let tx = in_ns(&f, || RawSocket::sender().unwrap());
    tx.bind_device("b0g").unwrap();
    tx.send(&pkt).unwrap();

    // The registration comes to the agent from the home address, with the agent's care-of address, D clear, T set.
    let mut buf = [0u8; 1024];
    let (n, from) = visited
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no registration through the agent ({e}):\n{}", lab.logs()));
    let req = Request::parse(&buf[..n], &Dialect::default()).unwrap();
    assert_eq!(from, SocketAddr::from(SocketAddrV4::new(HOA, 434)));
    assert_eq!(req.repr.care_of_address, fa_coa);
    assert_eq!(req.repr.home_agent, Ipv4Addr::new(198, 51, 100, 10));
    assert!(
        req.repr.flags.reverse_tunnel() && !req.repr.flags.decapsulation_by_mn(),
        "{:?}",
        req.repr.flags
    );
    toward_ha.send_to(&buf[..n], "198.51.100.10:434").unwrap();
    let (n, _) = toward_ha
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no reply from the home agent ({e}):\n{}", lab.logs()));
    visited.send_to(&buf[..n], from).unwrap();

    let b = lab.wait_for("registration through the agent", Duration::from_secs(5), || {
        let b = bindings(&m);
        (b["state"] == "registered").then_some(b)
    });
    assert_eq!(b["tunnel"]["type"], "foreign_agent", "{b}");
    assert_eq!(b["care_of_address"], "198.51.100.2", "{b}");
    assert_eq!(b["attachment"]["type"], "foreign_agent", "{b}");
    assert_eq!(b["routes"]["type"], "via_agent", "{b}");
    let rt = route(&lab, &m, "198.51.100.20/32").expect("the tunnelled route");
    assert_eq!(
        (rt["gateway"].as_str(), rt["dev"].as_str(), rt["prefsrc"].as_str()),
        (Some("192.0.3.1"), Some("b0"), Some("10.10.1.50")),
        "{rt}"
    );
    let hb = bindings(&r);
    assert_eq!(hb[0]["care_of_address"], "198.51.100.2", "{hb}");
    assert_eq!(hb[0]["tunnel"]["encapsulation"], "ipip", "{hb}");
}

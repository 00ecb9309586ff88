//! `mip-fa` in namespace topologies of its own (`maf-<pid>-<test>-<host>`), as root.
//!
//! * Scenario B: `mn` ─ veth ─ `fa` (visited 192.0.3.1/24, routed/CoA 198.51.101.2/24) ─ veth ─ `px` (198.51.101.1,
//!   and `proxy_public` 198.51.100.10 on its loopback). A responder thread in `px` plays the proxy with
//!   [`HomeAgent`] (home network 10.10.1.0/24, FA-HA SA shared with the FA) and captures IP-in-IP.
//! * Scenario D: the same with a `nat` namespace (nftables masquerade) between the FA (routed 192.168.3.2) and
//!   `px`: the FA adds its own UDP Tunnel Request, the data goes through an RFC 3519 UDP tunnel, with keepalives.
//!
//! The mobile node is [`MobileNode`] driven over a UDP socket in `mn`. Every veth is created inside a test
//! namespace with its peer moved straight into another one; nothing touches the root namespace. The [`Lab`] guard
//! stops the daemon (TERM, then KILL) and deletes the namespaces when dropped, also when a test panics; the daemon's
//! log is printed then. Sockets are created on a thread that entered the namespace (`setns`), so they belong to it
//! for their whole life. These tests fail, never skip, without root. `MAF_SHOW_LOG=1` prints the daemon's log
//! (debug level) of passing tests too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mip::config::KeysFile;
use mip::keystore::KeyStore;
use mip::roles::ha::{HaConfig, HaInput, HaOutput, HomeAgent};
use mip::roles::mn::{Attachment, MnConfig, MnInput, MnOutput, MnTunnel, MobileNode};
use mip::roles::{BindingChange, Datagram};
use mip::wire::advertisement::{AgentAdvertisementRepr, AgentSolicitation, MobilityAgentFlags};
use mip::wire::icmp::{IcmpPacket, IcmpRepr};
use mip::wire::ipv4::{Ipv4Packet, Ipv4Repr, protocol};
use mip::wire::udp::{UdpPacket, UdpRepr};
use mip::wire::{AuthKind, Dialect, ExtensionBody, Request};
use mip_io::batch::RecvBatch;
use mip_io::clock::Clock;
use mip_io::socket::{RawSocket, UdpSocket};
use serde_json::Value;

mod common;
use common::run;

const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const ALL_SYSTEMS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
const ALL_AGENTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 11);
const MN_HA_KEY: &str = "000102030405060708090a0b0c0d0e0f";
const FA_HA_KEY: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";
const ADMIN: &str = "127.0.0.1:9434";
const TABLE: u32 = 200;

// === the lab ===

/// Namespaces and the daemon of one test; dropping it removes everything.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
}

impl Lab {
    fn new(test: &str) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the mip-fa tests need root (network namespaces, TUN, raw sockets): run `cargo test -p mip-agents` as root"
        );
        let prefix = format!("maf-{}-{test}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab {
            log: dir.join("mip-fa.log"),
            prefix,
            namespaces: Vec::new(),
            daemon: None,
            dir,
        }
    }

    /// A new namespace `<prefix>-<host>` with loopback up and no reverse-path filter (a new namespace inherits
    /// the host's IPv4 defaults).
    fn ns(&mut self, host: &str) -> String {
        let name = format!("{}-{host}", self.prefix);
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.ip(&name, "link set lo up");
        self.sh(
            &name,
            "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter",
        );
        name
    }

    /// `ip -n NS ARGS…` (whitespace-separated).
    fn ip(&self, ns: &str, args: &str) -> String {
        let mut a = vec!["-n", ns];
        a.extend(args.split_whitespace());
        run("ip", &a)
    }

    /// `sh -c SCRIPT` inside `ns`.
    fn sh(&self, ns: &str, script: &str) -> String {
        run("ip", &["netns", "exec", ns, "sh", "-c", script])
    }

    /// A veth pair created in `a` (`a_if`) with its peer `b_if` moved straight into `b`; both up.
    fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        self.ip(a, &format!("link add {a_if} type veth peer name {b_if} netns {b}"));
        self.ip(a, &format!("link set {a_if} up"));
        self.ip(b, &format!("link set {b_if} up"));
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Starts `mip-fa --config CONFIG` in `ns` and waits for `/readyz`.
    fn start_fa(&mut self, ns: &str, config: &str) {
        self.spawn_fa(ns, config);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("mip-fa exited at start ({s}):\n{}", self.log_text());
            }
            if http(ns, "/readyz").is_ok_and(|(status, _)| status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "mip-fa not ready:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `mip-fa --config CONFIG` in `ns`, expecting it to fail at start: its exit code and log.
    fn fail_fa(&mut self, ns: &str, config: &str) -> (i32, String) {
        self.spawn_fa(ns, config);
        let mut child = self.daemon.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return (s.code().unwrap_or(-1), self.log_text());
            }
            if Instant::now() > deadline {
                self.daemon = Some(child);
                panic!("mip-fa kept running:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_fa(&mut self, ns: &str, config: &str) {
        let cfg = self.write("fa.yaml", config, 0o644);
        let log = File::create(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mip-fa"), "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    /// SIGTERM to the daemon; waits for it to exit (it removes its kernel state first).
    fn stop_fa(&mut self) {
        let mut child = self.daemon.take().expect("the daemon runs");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "mip-fa exited with {s}:\n{}", self.log_text());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mip-fa did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("MAF_SHOW_LOG").is_some() {
            eprintln!("--- mip-fa log ({}) ---\n{}", self.prefix, self.log_text());
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside namespace `ns`: sockets it creates belong to `ns` for their whole life.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One HTTP/1.1 GET to the admin server in `ns`: status and body.
fn http(ns: &str, path: &str) -> io::Result<(u16, String)> {
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = TcpStream::connect(ADMIN)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn bindings(ns: &str) -> Vec<Value> {
    let (status, body) = http(ns, "/bindings").unwrap();
    assert_eq!(status, 200, "{body}");
    match serde_json::from_str(&body).unwrap() {
        Value::Array(v) => v,
        other => panic!("/bindings is not an array: {other}"),
    }
}

fn metric(ns: &str, series: &str) -> f64 {
    let (_, body) = http(ns, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `{series}` in\n{body}"))
}

/// Polls `f` until it returns `Some` or `timeout` passes.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn keys(text: &str) -> KeyStore {
    mip::config::from_yaml::<KeysFile>(text).unwrap().to_keystore().unwrap()
}

fn mn_keys() -> KeyStore {
    keys(&format!(
        "security_associations:\n  - {{home_address: {HOA}, spi: 256, key: \"{MN_HA_KEY}\"}}\n"
    ))
}

/// The keys of the responder: MN-HA, and FA-HA with the address the FA's requests come from.
fn ha_keys(fa_source: Ipv4Addr) -> KeyStore {
    keys(&format!(
        "security_associations:\n  - {{home_address: {HOA}, spi: 256, key: \"{MN_HA_KEY}\"}}\n  - {{peer: {fa_source}, spi: 300, key: \"{FA_HA_KEY}\"}}\n"
    ))
}

/// The FA's keys file: the FA-HA SA with the proxy.
fn fa_keys_yaml() -> String {
    format!("security_associations:\n  - peer: {PROXY}\n    spi: 300\n    key: \"{FA_HA_KEY}\"\n")
}

// === packets ===

/// IPv4 + UDP + payload (checksums filled).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        protocol: protocol::UDP,
        payload_len: 8 + payload.len(),
        ttl: 64,
        tos: 0,
        ident: 7,
        dont_frag: false,
    }
    .emit(&mut p)
    .unwrap();
    p[28..].copy_from_slice(payload);
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(&mut p[20..], payload.len(), *src.ip(), *dst.ip())
    .unwrap();
    p
}

/// An IPv4 header + `payload` with protocol `proto` and TTL `ttl`.
fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len: payload.len(),
        ttl,
        tos: 0,
        ident: 9,
        dont_frag: false,
    }
    .emit(&mut p)
    .unwrap();
    p[20..].copy_from_slice(payload);
    p
}

/// (src, dst, src port, dst port, payload) of an IPv4/UDP packet.
fn parse_udp(packet: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>) {
    let ip = Ipv4Packet::new_checked(packet).unwrap();
    assert_eq!(ip.protocol(), protocol::UDP);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(src, dst));
    (src, dst, udp.src_port(), udp.dst_port(), udp.payload().to_vec())
}

// === the proxy stand-in ===

/// What the responder saw.
#[derive(Debug, Clone)]
enum Event {
    /// A Registration Request (before the home agent handled it).
    Request {
        src: SocketAddrV4,
        lifetime: u16,
        fa_ha: bool,
        utrq: bool,
    },
    Binding(BindingChange),
    /// An IP-in-IP packet (the whole outer packet).
    Ipip(Vec<u8>),
    /// RFC 3519 tunnel data from `src` (the inner packet), not a keepalive.
    UdpData {
        src: SocketAddrV4,
        inner: Vec<u8>,
    },
    /// A keepalive from `src` with this inner source; it was answered.
    Keepalive {
        src: SocketAddrV4,
        inner_src: Ipv4Addr,
    },
}

/// A thread in the proxy namespace: [`HomeAgent`] at `proxy_public` on UDP 434, IP-in-IP capture, RFC 3519 tunnel
/// data capture and keepalive answers.
struct Responder {
    udp: Arc<UdpSocket>,
    events: Receiver<Event>,
    seen: Vec<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start(ns: &str, config: HaConfig, keys: KeyStore) -> Responder {
        let (udp, ipip) = in_ns(ns, || {
            (
                UdpSocket::bind(SocketAddrV4::new(PROXY, 434)).unwrap(),
                RawSocket::ipip().unwrap(),
            )
        });
        let udp = Arc::new(udp);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = channel();
        let thread = {
            let (udp, stop) = (Arc::clone(&udp), Arc::clone(&stop));
            std::thread::spawn(move || responder_loop(&udp, &ipip, HomeAgent::new(config, keys, 7), &tx, &stop))
        };
        Responder {
            udp,
            events,
            seen: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// The first event (seen before or arriving within `timeout`) that `pick` maps to `Some`.
    fn wait<T>(&mut self, timeout: Duration, what: &str, pick: impl Fn(&Event) -> Option<T>) -> T {
        if let Some(i) = self.seen.iter().position(|e| pick(e).is_some()) {
            return pick(&self.seen.remove(i)).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => match pick(&e) {
                    Some(v) => return v,
                    None => self.seen.push(e),
                },
                Err(_) => panic!("timed out waiting for {what}; seen: {:?}", self.seen),
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn responder_loop(udp: &UdpSocket, ipip: &RawSocket, mut ha: HomeAgent, tx: &Sender<Event>, stop: &AtomicBool) {
    let clock = Clock::new();
    let mut batch = RecvBatch::default();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        if udp.recv_batch(&mut batch).is_ok() {
            for r in batch.iter() {
                if r.payload.first() == Some(&4) {
                    tunnel_data(udp, r.src, r.payload, tx);
                    continue;
                }
                if let Ok(req) = Request::parse(r.payload, &Dialect::default()) {
                    let utrq = req
                        .extensions()
                        .any(|e| matches!(e.body, ExtensionBody::UdpTunnelRequest(_)));
                    let _ = tx.send(Event::Request {
                        src: r.src,
                        lifetime: req.repr.lifetime,
                        fa_ha: req.auth(AuthKind::ForeignHome).is_some(),
                        utrq,
                    });
                }
                ha.handle(now, HaInput::Request(r.datagram()), &mut out);
            }
        }
        if ipip.recv_batch(&mut batch).is_ok() {
            for r in batch.iter() {
                let _ = tx.send(Event::Ipip(r.payload.to_vec()));
            }
        }
        if ha.next_timer().is_some_and(|t| t <= now.instant) {
            ha.handle(now, HaInput::Tick, &mut out);
        }
        for o in out.drain(..) {
            match o {
                HaOutput::Send(t) => udp.send_transmit(&t).unwrap(),
                HaOutput::Binding(c) => {
                    let _ = tx.send(Event::Binding(c));
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// RFC 3519 tunnel data at the proxy: keepalives are answered (echo reply from `proxy_public`, UDP-encapsulated
/// back to the sender), other packets reported.
fn tunnel_data(udp: &UdpSocket, src: SocketAddrV4, payload: &[u8], tx: &Sender<Event>) {
    assert_eq!(&payload[..4], &[4, 4, 0, 0], "Tunnel Data header, Next Header 4");
    let inner = &payload[4..];
    let ip = Ipv4Packet::new_checked(inner).unwrap();
    if ip.protocol() == protocol::ICMP && ip.dst_addr() == PROXY {
        let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(ip.payload()).unwrap()).unwrap();
        if let IcmpRepr::EchoRequest { ident, seq, data } = icmp {
            let reply = IcmpRepr::EchoReply { ident, seq, data };
            let mut body = vec![0u8; reply.buffer_len()];
            reply.emit(&mut body).unwrap();
            let mut answer = vec![4, 4, 0, 0];
            answer.extend(ip_packet(PROXY, ip.src_addr(), protocol::ICMP, 64, &body));
            udp.send_to(&answer, src).unwrap();
            let _ = tx.send(Event::Keepalive {
                src,
                inner_src: ip.src_addr(),
            });
            return;
        }
    }
    let _ = tx.send(Event::UdpData {
        src,
        inner: inner.to_vec(),
    });
}

// === the mobile node ===

/// [`MobileNode`] over a UDP socket bound to `HoA:434` in the node's namespace.
struct Node {
    node: MobileNode,
    sock: UdpSocket,
    clock: Clock,
}

impl Node {
    fn new(ns: &str, lifetime: u16) -> Node {
        let mut cfg = MnConfig::new(HOA, PROXY, 256);
        cfg.lifetime = lifetime;
        let sock = in_ns(ns, || UdpSocket::bind(SocketAddrV4::new(HOA, 434)).unwrap());
        Node {
            node: MobileNode::new(cfg, mn_keys(), 3),
            sock,
            clock: Clock::new(),
        }
    }

    /// Feeds `input`, then runs the node (replies, timers) until an output satisfies `done`.
    fn run_until(
        &mut self,
        input: MnInput<'_>,
        timeout: Duration,
        what: &str,
        done: impl Fn(&MnOutput) -> bool,
    ) -> MnOutput {
        let mut out = Vec::new();
        self.node.handle(self.clock.now(), input, &mut out);
        let mut batch = RecvBatch::default();
        let deadline = Instant::now() + timeout;
        loop {
            for o in out.drain(..) {
                match &o {
                    MnOutput::Send(t) => self.sock.send_transmit(t).unwrap(),
                    o if done(o) => return o.clone(),
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for the node: {what}");
            let now = self.clock.now();
            if self.sock.recv_batch(&mut batch).is_ok() {
                for r in batch.iter() {
                    let dg = Datagram {
                        ttl: r.ttl.unwrap_or(64),
                        ..r.datagram()
                    };
                    self.node.handle(now, MnInput::Reply(dg), &mut out);
                }
            }
            if self.node.next_timer().is_some_and(|t| t <= now.instant) {
                self.node.handle(now, MnInput::Tick, &mut out);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn register(&mut self, attachment: Attachment) -> MnOutput {
        self.run_until(
            MnInput::Attached(attachment),
            Duration::from_secs(8),
            "registration",
            |o| matches!(o, MnOutput::Registered { .. } | MnOutput::RegistrationFailed { .. }),
        )
    }
}

/// Agent Advertisements heard in `ns` during `window`: (IP source, IP destination, IP TTL, ICMP bytes).
fn listen_adverts(raw: &RawSocket, window: Duration) -> Vec<(Ipv4Addr, Ipv4Addr, u8, Vec<u8>)> {
    let mut batch = RecvBatch::default();
    let mut got = Vec::new();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if raw.recv_batch(&mut batch).is_ok() {
            for r in batch.iter() {
                let ip = Ipv4Packet::new_checked(r.payload).unwrap();
                if ip.protocol() == protocol::ICMP && ip.payload().first() == Some(&9) {
                    got.push((ip.src_addr(), ip.dst_addr(), ip.ttl(), ip.payload().to_vec()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

fn mobility(icmp: &[u8]) -> (u16, MobilityAgentFlags, Vec<Ipv4Addr>) {
    let adv = AgentAdvertisementRepr::parse(icmp).unwrap();
    let m = adv.mobility.unwrap();
    (m.sequence, m.flags, m.care_of_addresses.iter().collect())
}

fn mac_of(lab: &Lab, ns: &str, dev: &str) -> String {
    let v: Value = serde_json::from_str(&lab.ip(ns, &format!("-j link show dev {dev}"))).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

/// Route, neighbour entry and reverse-tunnel rule of the visitor in the FA namespace: (route, neigh, rule).
fn visitor_state(lab: &Lab, fa: &str) -> (String, String, bool) {
    let route = lab.ip(fa, &format!("-4 route show {HOA}/32"));
    let neigh = lab.ip(fa, &format!("neigh show {HOA} dev v0"));
    let rules = lab.ip(fa, "rule show");
    let rule = rules
        .lines()
        .any(|l| l.contains(&format!("from {HOA} iif v0 lookup {TABLE}")));
    (route.trim().to_string(), neigh.trim().to_string(), rule)
}

fn fa_config(visited: &str, routed: &str, behind_nat: bool, keys: &std::path::Path) -> String {
    format!(
        "fa:
  visited_address: {visited}
  routed_address: {routed}
  care_of_addresses: [{routed}]
  behind_nat: {behind_nat}
  advertisement: {{interval_ms: 300, lifetime: 3}}
dataplane:
  visited_interface: v0
  tun: mipf0
  tun_mtu: 1400
  table: {TABLE}
daemon:
  keys_file: {}
  admin: {ADMIN}
  log_format: text
",
        keys.display()
    )
}

/// Advertisements: periodic to 224.0.0.1 with TTL 1, increasing sequence numbers, exactly the `flags` expected;
/// a solicitation from the home address gets a unicast answer.
fn check_advertisements(mn: &str, agent: Ipv4Addr, coa: Ipv4Addr, flags_expected: u16) {
    let raw = in_ns(mn, || RawSocket::protocol(protocol::ICMP).unwrap());
    let adverts = listen_adverts(&raw, Duration::from_millis(1300));
    let periodic: Vec<_> = adverts.iter().filter(|a| a.1 == ALL_SYSTEMS).collect();
    assert!(periodic.len() >= 3, "periodic advertisements: {adverts:?}");
    let mut last = None;
    for (src, _, ttl, icmp) in &periodic {
        assert_eq!((*src, *ttl), (agent, 1));
        let (seq, flags, coas) = mobility(icmp);
        assert_eq!(flags.0, flags_expected, "flags {flags:?}");
        assert_eq!(coas, vec![coa]);
        if let Some(prev) = last {
            assert!(seq > prev, "sequence {seq} after {prev}");
        }
        last = Some(seq);
    }

    let sender = in_ns(mn, || {
        let s = RawSocket::sender().unwrap();
        s.bind_device("m0").unwrap();
        s
    });
    let mut sol = [0u8; AgentSolicitation::LEN];
    AgentSolicitation.emit(&mut sol).unwrap();
    sender
        .send(&ip_packet(HOA, ALL_AGENTS, protocol::ICMP, 1, &sol))
        .unwrap();
    let answers = listen_adverts(&raw, Duration::from_millis(600));
    let unicast: Vec<_> = answers.iter().filter(|a| a.1 == HOA).collect();
    assert_eq!(unicast.len(), 1, "one unicast answer to the solicitation: {answers:?}");
    assert_eq!(unicast[0].2, 1, "TTL 1");
    let (seq, _, _) = mobility(&unicast[0].3);
    assert!(
        seq > last.unwrap(),
        "the solicited advertisement takes the next sequence number"
    );
}

/// Sends a UDP datagram from the node's home address to the VPN gateway's address (through the FA).
fn send_uplink(mn: &str, payload: &'static [u8]) {
    in_ns(mn, move || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(HOA, 5000)).unwrap();
        s.send_to(payload, SocketAddrV4::new(GW, 9)).unwrap();
    });
}

fn downlink_socket(mn: &str) -> std::net::UdpSocket {
    in_ns(mn, || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(HOA, 5001)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    })
}

fn expect_downlink(sock: &std::net::UdpSocket, payload: &[u8]) {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).expect("the downlink packet reaches the node");
    assert_eq!(&buf[..n], payload);
    assert_eq!(from, std::net::SocketAddr::V4(SocketAddrV4::new(GW, 7000)));
}

// === scenario B ===

#[test]
fn scenario_b_relay_reverse_tunnel_delivery_and_cleanup() {
    let mut lab = Lab::new("b");
    let mn = lab.ns("mn");
    let fa = lab.ns("fa");
    let px = lab.ns("px");
    lab.link(&fa, "v0", &mn, "m0");
    lab.link(&fa, "r0", &px, "p0");
    lab.ip(&fa, "addr add 192.0.3.1/24 dev v0");
    lab.ip(&fa, "addr add 198.51.101.2/24 dev r0");
    lab.ip(&fa, "route add default via 198.51.101.1");
    lab.ip(&px, "addr add 198.51.101.1/24 dev p0");
    lab.ip(&px, &format!("addr add {PROXY}/32 dev lo"));
    lab.ip(&mn, &format!("addr add {HOA}/32 dev m0"));
    lab.ip(&mn, "route add default via 192.0.3.1 dev m0 onlink");
    let coa = Ipv4Addr::new(198, 51, 101, 2);
    let agent = Ipv4Addr::new(192, 0, 3, 1);

    let ha_config = HaConfig::new(PROXY, vec!["10.10.1.0/24".parse().unwrap()]);
    let mut proxy = Responder::start(&px, ha_config, ha_keys(coa));
    let keys = lab.write("fa-keys.yaml", &fa_keys_yaml(), 0o600);
    // A reverse-tunnel rule left by a run that never reached its shutdown: removed at start.
    lab.ip(&fa, &format!("rule add from 10.10.1.99 iif v0 lookup {TABLE}"));
    lab.start_fa(&fa, &fa_config("192.0.3.1", "198.51.101.2", false, &keys));
    assert!(!lab.ip(&fa, "rule show").contains("10.10.1.99"), "stale rule purged");

    // Advertisements: exactly F and T (no H, R, B, U or anything else).
    check_advertisements(&mn, agent, coa, MobilityAgentFlags::F | MobilityAgentFlags::T);

    // Registration through the FA: relayed with FA-HA, accepted, the reply reaches the node.
    let attachment = Attachment::ForeignAgent {
        agent,
        care_of_address: coa,
        co_located: false,
        reverse_tunnel: true,
        udp: false,
    };
    let mut node = Node::new(&mn, 60);
    let registered = node.register(attachment);
    let MnOutput::Registered {
        tunnel,
        care_of_address,
        ..
    } = registered
    else {
        panic!("{registered:?}\n{}", lab.log_text())
    };
    assert_eq!(care_of_address, coa);
    assert_eq!(tunnel, MnTunnel::ForeignAgent { agent });
    let (src, fa_ha, utrq) = proxy.wait(Duration::from_secs(1), "the relayed request", |e| match e {
        Event::Request {
            src,
            lifetime,
            fa_ha,
            utrq,
        } if *lifetime > 0 => Some((*src, *fa_ha, *utrq)),
        _ => None,
    });
    assert_eq!(src, SocketAddrV4::new(coa, 434), "relayed from the routed address");
    assert!(fa_ha, "the FA appended FA-HA");
    assert!(!utrq, "no UDP Tunnel Request from an FA that is not behind a NAT");

    // The visitor in /bindings and in the kernel.
    let mac = mac_of(&lab, &mn, "m0");
    let rows = bindings(&fa);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let v = &rows[0];
    assert_eq!(v["home_address"], HOA.to_string());
    assert_eq!(v["mn_mac"], mac);
    assert_eq!(v["home_agent"], PROXY.to_string());
    assert_eq!(v["care_of_address"], coa.to_string());
    assert_eq!(v["tunnel"]["encapsulation"], "ipip");
    assert_eq!(v["reverse_tunnel"], true);
    assert!(v["expires_in_ms"].as_u64().unwrap() <= 60_000);
    let (route, neigh, rule) = visitor_state(&lab, &fa);
    assert!(route.contains("dev v0"), "route: {route}");
    assert!(
        neigh.contains(&mac) && neigh.contains("PERMANENT"),
        "neighbour: {neigh}"
    );
    assert!(rule, "reverse-tunnel rule:\n{}", lab.ip(&fa, "rule show"));
    assert!(
        lab.ip(&fa, &format!("route show table {TABLE}"))
            .contains("default dev mipf0")
    );

    // Uplink: a plain packet from the home address leaves the FA IP-in-IP, CoA → proxy.
    send_uplink(&mn, b"uplink-probe");
    let outer = proxy.wait(Duration::from_secs(3), "the reverse-tunnelled packet", |e| match e {
        Event::Ipip(p) => Some(p.clone()),
        _ => None,
    });
    let o = Ipv4Packet::new_checked(&outer[..]).unwrap();
    assert_eq!((o.src_addr(), o.dst_addr(), o.ttl()), (coa, PROXY, 64));
    let (s, d, _, dport, payload) = parse_udp(o.payload());
    assert_eq!((s, d, dport, payload.as_slice()), (HOA, GW, 9, &b"uplink-probe"[..]));
    assert_eq!(
        Ipv4Packet::new_checked(o.payload()).unwrap().ttl(),
        63,
        "forwarded once by the FA"
    );

    // Downlink: IP-in-IP from the proxy to the CoA is delivered to the node.
    let rx = downlink_socket(&mn);
    let inner = udp_packet(
        SocketAddrV4::new(GW, 7000),
        SocketAddrV4::new(HOA, 5001),
        b"downlink-probe",
    );
    let sender = in_ns(&px, || RawSocket::sender().unwrap());
    sender.send(&ip_packet(PROXY, coa, protocol::IPIP, 64, &inner)).unwrap();
    expect_downlink(&rx, b"downlink-probe");
    // From someone else than the visitor's home agent: dropped.
    sender.send(&ip_packet(GW, coa, protocol::IPIP, 64, &inner)).unwrap();
    wait_for(Duration::from_secs(2), "the outer_address drop", || {
        (metric(&fa, "mip_drops_total{path=\"data\",reason=\"outer_address\"}") >= 1.0).then_some(())
    });
    assert!(metric(&fa, "mip_tunnel_packets_total{direction=\"up\",encapsulation=\"ipip\"}") >= 1.0);
    assert_eq!(
        metric(
            &fa,
            "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"ipip\"}"
        ),
        1.0
    );
    assert!(metric(&fa, "mip_registrations_total{role=\"fa\",code=\"0\"}") >= 1.0);
    assert!(
        metric(&fa, "mip_relay_latency_seconds_count") >= 1.0,
        "the relayed request's round trip"
    );
    assert_eq!(metric(&fa, "mip_visitors"), 1.0);
    assert!(metric(&fa, "mip_advertisements_total") >= 4.0);

    // Deregistration removes the visitor and its kernel state.
    node.run_until(MnInput::Deregister, Duration::from_secs(8), "deregistration", |o| {
        matches!(o, MnOutput::Deregistered)
    });
    assert!(bindings(&fa).is_empty());
    let (route, neigh, rule) = visitor_state(&lab, &fa);
    assert!(
        route.is_empty() && !neigh.contains("PERMANENT") && !rule,
        "{route} / {neigh} / {rule}"
    );
    assert_eq!(metric(&fa, "mip_visitors"), 0.0);

    // Expiry: a 3-second registration that is not renewed (a new node instance on the same socket address).
    drop(node);
    let mut short = Node::new(&mn, 3);
    assert!(matches!(short.register(attachment), MnOutput::Registered { .. }));
    assert_eq!(bindings(&fa).len(), 1);
    assert!(visitor_state(&lab, &fa).2);
    drop(short);
    wait_for(Duration::from_secs(6), "the visitor to expire", || {
        bindings(&fa).is_empty().then_some(())
    });
    let (route, neigh, rule) = visitor_state(&lab, &fa);
    assert!(
        route.is_empty() && !neigh.contains("PERMANENT") && !rule,
        "{route} / {neigh} / {rule}"
    );

    // Shutdown with a visitor: every route, rule and neighbour entry goes, and the TUN with them.
    let mut last = Node::new(&mn, 60);
    assert!(matches!(last.register(attachment), MnOutput::Registered { .. }));
    assert!(visitor_state(&lab, &fa).2);
    lab.stop_fa();
    let (route, neigh, rule) = visitor_state(&lab, &fa);
    assert!(
        route.is_empty() && !neigh.contains("PERMANENT") && !rule,
        "{route} / {neigh} / {rule}"
    );
    assert!(lab.ip(&fa, &format!("route show table {TABLE}")).trim().is_empty());
    assert!(!lab.ip(&fa, "-o link show").contains("mipf0"));
}

// === scenario D ===

#[test]
fn scenario_d_behind_nat_udp_tunnel_and_keepalives() {
    let mut lab = Lab::new("d");
    let mn = lab.ns("mn");
    let fa = lab.ns("fa");
    let nat = lab.ns("nat");
    let px = lab.ns("px");
    lab.link(&fa, "v0", &mn, "m0");
    lab.link(&fa, "r0", &nat, "n0");
    lab.link(&nat, "n1", &px, "p0");
    lab.ip(&fa, "addr add 192.0.4.1/24 dev v0");
    lab.ip(&fa, "addr add 192.168.3.2/24 dev r0");
    lab.ip(&fa, "route add default via 192.168.3.1");
    lab.ip(&nat, "addr add 192.168.3.1/24 dev n0");
    lab.ip(&nat, "addr add 198.18.3.2/24 dev n1");
    lab.ip(&nat, "route add 198.51.100.0/24 via 198.18.3.1");
    lab.sh(&nat, "echo 1 > /proc/sys/net/ipv4/ip_forward");
    let rules = lab.write(
        "nat.nft",
        "table ip nat {\n  chain post {\n    type nat hook postrouting priority 100;\n    oifname \"n1\" masquerade\n  }\n}\n",
        0o644,
    );
    run("ip", &["netns", "exec", &nat, "nft", "-f", rules.to_str().unwrap()]);
    lab.ip(&px, "addr add 198.18.3.1/24 dev p0");
    lab.ip(&px, &format!("addr add {PROXY}/32 dev lo"));
    lab.ip(&mn, &format!("addr add {HOA}/32 dev m0"));
    lab.ip(&mn, "route add default via 192.0.4.1 dev m0 onlink");
    let coa = Ipv4Addr::new(192, 168, 3, 2);
    let nat_public = Ipv4Addr::new(198, 18, 3, 2);
    let agent = Ipv4Addr::new(192, 0, 4, 1);

    let mut ha_config = HaConfig::new(PROXY, vec!["10.10.1.0/24".parse().unwrap()]);
    ha_config.udp_tunnelling.keepalive = 10;
    let mut proxy = Responder::start(&px, ha_config, ha_keys(nat_public));
    let keys = lab.write("fa-keys.yaml", &fa_keys_yaml(), 0o600);
    lab.start_fa(&fa, &fa_config("192.0.4.1", "192.168.3.2", true, &keys));

    // U advertised by an FA behind a NAT (RFC 3519 §3.4).
    let flags = MobilityAgentFlags::F | MobilityAgentFlags::T | MobilityAgentFlags::U;
    check_advertisements(&mn, agent, coa, flags);

    // The FA has not learnt the node's MAC (the node knows the FA's statically and never ARPs for it): the
    // request waits while the kernel resolves it.
    lab.ip(&fa, "neigh flush dev v0");
    let fa_mac = mac_of(&lab, &fa, "v0");
    lab.ip(
        &mn,
        &format!("neigh replace {agent} lladdr {fa_mac} dev m0 nud permanent"),
    );
    let mut node = Node::new(&mn, 60);
    let registered = node.register(Attachment::ForeignAgent {
        agent,
        care_of_address: coa,
        co_located: false,
        reverse_tunnel: true,
        udp: true,
    });
    assert!(matches!(registered, MnOutput::Registered { .. }), "{registered:?}");
    assert!(metric(&fa, "mip_link_resolutions_total") >= 1.0);
    assert_eq!(
        metric(&fa, "mip_drops_total{path=\"control\",reason=\"no_link_address\"}"),
        0.0
    );
    // The FA added its own UDP Tunnel Request (and FA-HA); the request crossed the NAT.
    let (src, fa_ha, utrq) = proxy.wait(Duration::from_secs(1), "the relayed request", |e| match e {
        Event::Request {
            src,
            lifetime,
            fa_ha,
            utrq,
        } if *lifetime > 0 => Some((*src, *fa_ha, *utrq)),
        _ => None,
    });
    assert_eq!(*src.ip(), nat_public);
    assert!(fa_ha && utrq);
    let binding = proxy.wait(Duration::from_secs(1), "the binding", |e| match e {
        Event::Binding(b) => Some(b.binding),
        _ => None,
    });
    assert!(binding.tunnel.encapsulation.is_udp(), "{binding:?}");
    assert_eq!((binding.tunnel.addr, binding.tunnel.port), (*src.ip(), src.port()));
    let rows = bindings(&fa);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let t = &rows[0]["tunnel"];
    assert_eq!(t["encapsulation"], "udp_ipip");
    assert_eq!(
        (t["local"].as_str(), t["remote"].as_str()),
        (Some("192.168.3.2"), Some("198.51.100.10"))
    );
    assert_eq!(
        (t["port"].as_u64(), t["keepalive_interval"].as_u64()),
        (Some(434), Some(10))
    );
    assert!(visitor_state(&lab, &fa).2);

    // Uplink through the UDP tunnel (and the NAT).
    send_uplink(&mn, b"uplink-udp");
    let (from, inner) = proxy.wait(Duration::from_secs(3), "tunnel data", |e| match e {
        Event::UdpData { src, inner } => Some((*src, inner.clone())),
        _ => None,
    });
    assert_eq!(from, src, "same NAT mapping as the registration");
    let (s, d, _, _, payload) = parse_udp(&inner);
    assert_eq!((s, d, payload.as_slice()), (HOA, GW, &b"uplink-udp"[..]));

    // Downlink: tunnel data from the proxy to the NAT mapping reaches the node.
    let rx = downlink_socket(&mn);
    let mut msg = vec![4, 4, 0, 0];
    msg.extend(udp_packet(
        SocketAddrV4::new(GW, 7000),
        SocketAddrV4::new(HOA, 5001),
        b"downlink-udp",
    ));
    proxy.udp.send_to(&msg, from).unwrap();
    expect_downlink(&rx, b"downlink-udp");
    assert_eq!(
        metric(
            &fa,
            "mip_tunnel_packets_total{direction=\"down\",encapsulation=\"udp\"}"
        ),
        1.0
    );

    // Keepalives every 10 s (the interval in the UDP Tunnel Reply), from the NAT mapping, inner source the
    // visitor's home address; the proxy's echo reply is counted.
    let (ka_src, ka_inner) = proxy.wait(Duration::from_secs(12), "a keepalive", |e| match e {
        Event::Keepalive { src, inner_src } => Some((*src, *inner_src)),
        _ => None,
    });
    assert_eq!((ka_src, ka_inner), (from, HOA));
    wait_for(Duration::from_secs(2), "the keepalive reply", || {
        (metric(&fa, "mip_keepalives_total{result=\"answered\"}") >= 1.0).then_some(())
    });
    assert!(metric(&fa, "mip_keepalives_total{result=\"sent\"}") >= 1.0);

    lab.stop_fa();
    let (route, neigh, rule) = visitor_state(&lab, &fa);
    assert!(
        route.is_empty() && !neigh.contains("PERMANENT") && !rule,
        "{route} / {neigh} / {rule}"
    );
    drop(node);
}

// === start-up errors ===

#[test]
fn start_up_errors_are_reported_and_leave_nothing_behind() {
    let mut lab = Lab::new("err");
    let fa = lab.ns("fa");
    let keys = lab.write("fa-keys.yaml", &fa_keys_yaml(), 0o600);
    // No visited interface.
    let (code, log) = lab.fail_fa(&fa, &fa_config("192.0.3.1", "198.51.101.2", false, &keys));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("visited_interface v0: no such device"), "{log}");
    // The interface exists but does not hold the visited address.
    lab.ip(&fa, "link add v0 type veth peer name v1");
    let (code, log) = lab.fail_fa(&fa, &fa_config("192.0.3.1", "198.51.101.2", false, &keys));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("is not an address of dataplane.visited_interface v0"),
        "{log}"
    );
    // An invalid file is refused before anything runs (exit 2), naming the field.
    let (code, log) = lab.fail_fa(&fa, "fa: {visited_address: 192.0.3.1}\n");
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("fa.yaml"), "{log}");
    assert!(!lab.ip(&fa, "-o link show").contains("mipf0"));
    assert!(!lab.ip(&fa, "route show table all").contains("mipf0"));
}

//! A small namespace topology for the daemon tests, built and torn down by each test.
//!
//! ```text
//!  mn: eth0 192.0.2.10/24 ── mn0 192.0.2.1/24   px (mip-proxy)   dmz0 198.51.100.10/24 ── dmz0 198.51.100.20/24 gw
//!                                                lan0 10.10.0.10/24                          lan0 10.10.0.20/24
//!                                                  └──── br0 in ha: 10.10.0.1/24, lo 10.10.1.1/32 ────┘
//! ```
//!
//! one_box: no `gw` namespace; `px` holds 198.51.100.10 and the gateway's 198.51.100.20 itself (on `lo`).
//!
//! Every namespace is `mpt<pid>n<k>-<role>`; veths are created inside a test namespace with the peer moved
//! straight into another, so the root namespace never holds anything. [`Lab`]'s `Drop` kills the proxy, stops
//! the home agent thread and deletes the namespaces, also when a test panics.
//!
//! The home agent is the `mip::roles::ha` state machine on a thread inside `ha`; the mobile node is the
//! `mip::roles::mn` state machine driven over a UDP socket created inside `mn` (a socket keeps the namespace it
//! was created in, so it can be used from the test thread).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use mip::config::{KeysFile, from_yaml};
use mip::keystore::KeyStore;
use mip::roles::Datagram;
use mip::roles::ha::{HaConfig, HaInput, HaOutput, HomeAgent};
use mip::roles::mn::{Attachment, MnConfig, MnInput, MnOutput, MnTunnel, MobileNode};
use mip_io::clock::Clock;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
pub const MN_COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const PROXY_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PROXY_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
pub const VPNGW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const VPNGW_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 20);
pub const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
pub const HA_LAN: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const CN: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 100);
pub const SPI: u32 = 256;
pub const KEY1: &str = "000102030405060708090a0b0c0d0e0f";
pub const KEY2: &str = "f0e0d0c0b0a090807060504030201000";
pub const ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9434);
pub const TUN: &str = "mipp0";
pub const HA_TUN: &str = "mipp1";
pub const TABLE: u32 = 100;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails (never skips) without root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mip-proxy daemon tests build network namespaces and need root: run `cargo test -p mip-proxy` as root"
    );
}

/// Where mip-proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    TwoBox,
    OneBox,
}

/// A network namespace by name.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// Runs `f` on a thread inside the namespace (sockets it creates stay in the namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs `f` on a new thread inside the namespace, in the background.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// `ip -n NS ARGS…`: stdout and stderr, whatever the exit status.
    pub fn ip_lossy(&self, args: &str) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args.split_whitespace());
        let out = Command::new("ip").args(&full).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `ip -n NS ARGS…`; panics with the output on failure.
    pub fn ip(&self, args: &str) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args.split_whitespace());
        run("ip", &full)
    }
}

fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// Runs a command; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Locks even a mutex poisoned by a failed assertion elsewhere (the HA thread must keep running to be stopped).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The home agent on its own thread inside `ha`.
pub struct HaThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Source address of every datagram the HA received.
    pub seen: Arc<Mutex<Vec<SocketAddrV4>>>,
    /// Replaced keys, picked up by the thread.
    new_keys: Arc<Mutex<Option<KeyStore>>>,
    /// Reply codes the HA sent.
    pub codes: Arc<Mutex<Vec<u8>>>,
}

impl HaThread {
    fn start(ns: &Ns, keys: KeyStore) -> HaThread {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let codes = Arc::new(Mutex::new(Vec::new()));
        let new_keys: Arc<Mutex<Option<KeyStore>>> = Arc::new(Mutex::new(None));
        let path = format!("/var/run/netns/{}", ns.name);
        let (s, se, c, nk) = (
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&codes),
            Arc::clone(&new_keys),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            enter(&path);
            let local = SocketAddrV4::new(HA, 434);
            let sock = UdpSocket::bind(local).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            ready_tx.send(()).unwrap();
            let clock = Clock::new();
            let mut ha = HomeAgent::new(HaConfig::new(HA, vec!["10.10.1.0/24".parse().unwrap()]), keys, 7);
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Some(k) = lock(&nk).take() {
                    ha.set_keys(k);
                }
                let Ok((n, SocketAddr::V4(src))) = sock.recv_from(&mut buf) else {
                    continue;
                };
                lock(&se).push(src);
                let dg = Datagram {
                    src,
                    dst: local,
                    ttl: 64,
                    payload: &buf[..n],
                };
                ha.handle(clock.now(), HaInput::Request(dg), &mut out);
                for o in out.drain(..) {
                    match o {
                        HaOutput::Send(t) => {
                            let _ = sock.send_to(&t.payload, t.dst);
                        }
                        HaOutput::Outcome(o) => lock(&c).push(u8::from(o.code)),
                        _ => {}
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the HA thread started");
        HaThread {
            stop,
            handle: Some(handle),
            seen,
            new_keys,
            codes,
        }
    }

    /// Replaces the HA's keys.
    pub fn set_keys(&self, keys: KeyStore) {
        *lock(&self.new_keys) = Some(keys);
        std::thread::sleep(Duration::from_millis(60));
    }
}

impl Drop for HaThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The keys file text with one MN-HA SA for the home address.
pub fn keys_yaml(key: &str) -> String {
    format!("security_associations:\n  - home_address: {HOA}\n    spi: {SPI}\n    key: {key}\n")
}

pub fn keystore(key: &str) -> KeyStore {
    from_yaml::<KeysFile>(&keys_yaml(key)).unwrap().to_keystore().unwrap()
}

/// The test topology with mip-proxy running in `px` and the home agent in `ha`.
pub struct Lab {
    pub mode: Mode,
    pub mn: Ns,
    pub px: Ns,
    pub gw: Ns,
    pub ha_ns: Ns,
    namespaces: Vec<Ns>,
    pub dir: tempfile::TempDir,
    pub proxy: Option<Child>,
    pub ha: Option<HaThread>,
    log: PathBuf,
    /// The `replication:` section appended to the proxy's configuration (YAML, indented body lines).
    pub replication: Option<String>,
    /// Lines appended to the `dataplane:` section (YAML, indented).
    pub dataplane_extra: String,
    /// Lines appended to the `daemon:` section (YAML, indented).
    pub daemon_extra: String,
    /// Environment variables of the proxy process.
    pub env: Vec<(String, String)>,
}

impl Lab {
    /// The topology with the home agent running and mip-proxy started and healthy.
    pub fn new(mode: Mode) -> Lab {
        let mut lab = Lab::topology(mode);
        lab.start_proxy();
        lab
    }

    /// The topology, keys and home agent, without mip-proxy.
    pub fn topology(mode: Mode) -> Lab {
        require_root();
        let prefix = format!("mpt{}n{}-", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let ns = |role: &str| Ns {
            name: format!("{prefix}{role}"),
        };
        let (mn, px, gw, ha_ns) = (ns("mn"), ns("px"), ns("gw"), ns("ha"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mip-proxy.log");
        let mut lab = Lab {
            mode,
            mn,
            px,
            gw,
            ha_ns,
            namespaces: Vec::new(),
            dir,
            proxy: None,
            ha: None,
            log,
            replication: None,
            dataplane_extra: String::new(),
            daemon_extra: String::new(),
            env: Vec::new(),
        };
        lab.build();
        lab.ha = Some(HaThread::start(&lab.ha_ns, keystore(KEY1)));
        lab.write_keys(KEY1);
        lab
    }

    fn add_ns(&mut self, ns: &Ns) {
        run("ip", &["netns", "add", &ns.name]);
        self.namespaces.push(ns.clone());
        ns.ip("link set lo up");
    }

    fn build(&mut self) {
        let (mn, px, gw, ha) = (self.mn.clone(), self.px.clone(), self.gw.clone(), self.ha_ns.clone());
        let two_box = self.mode == Mode::TwoBox;
        self.add_ns(&mn);
        self.add_ns(&px);
        self.add_ns(&ha);
        if two_box {
            self.add_ns(&gw);
        }
        // mobile node <-> proxy (the proxy routes for the node's access network)
        mn.ip(&format!("link add name eth0 type veth peer name mn0 netns {}", px.name));
        mn.ip(&format!("addr add {MN_COA}/24 dev eth0"));
        mn.ip("link set eth0 up");
        mn.ip("route add default via 192.0.2.1");
        px.ip("addr add 192.0.2.1/24 dev mn0");
        px.ip("link set mn0 up");
        // intranet LAN: a bridge in `ha`
        ha.ip("link add name br0 type bridge");
        ha.ip("link set br0 up");
        ha.ip(&format!("addr add {HA_LAN}/24 dev br0"));
        ha.ip(&format!("addr add {HA}/32 dev lo"));
        px.ip(&format!(
            "link add name lan0 type veth peer name p-px netns {}",
            ha.name
        ));
        ha.ip("link set p-px master br0");
        ha.ip("link set p-px up");
        px.ip(&format!("addr add {PROXY_PRIVATE}/24 dev lan0"));
        px.ip("link set lan0 up");
        // The proxy reaches the intranet (the HA's home side included) through the HA, as a router.
        px.ip(&format!("route add 10.10.0.0/16 via {HA_LAN} dev lan0"));
        if two_box {
            px.ip(&format!(
                "link add name dmz0 type veth peer name dmz0 netns {}",
                gw.name
            ));
            px.ip(&format!("addr add {PROXY_PUBLIC}/24 dev dmz0"));
            px.ip("link set dmz0 up");
            gw.ip(&format!("addr add {VPNGW}/24 dev dmz0"));
            gw.ip("link set dmz0 up");
            gw.ip(&format!(
                "link add name lan0 type veth peer name p-gw netns {}",
                ha.name
            ));
            ha.ip("link set p-gw master br0");
            ha.ip("link set p-gw up");
            gw.ip(&format!("addr add {VPNGW_PRIVATE}/24 dev lan0"));
            gw.ip("link set lan0 up");
            // FINDINGS "configuration": the home network toward proxy_public.
            gw.ip(&format!("route add 10.10.1.0/24 via {PROXY_PUBLIC} dev dmz0"));
        } else {
            px.ip(&format!("addr add {PROXY_PUBLIC}/32 dev lo"));
            px.ip(&format!("addr add {VPNGW}/32 dev lo"));
        }
    }

    pub fn config_yaml(&self) -> String {
        let (mode, private) = match self.mode {
            Mode::TwoBox => ("two_box", format!("  vpn_gateway_private: {VPNGW_PRIVATE}\n")),
            Mode::OneBox => ("one_box", String::new()),
        };
        format!(
            "proxy:\n  proxy_public: {PROXY_PUBLIC}\n  proxy_private: {PROXY_PRIVATE}\n  home_agents:\n    - address: \
             {HA}\n      home_networks: [10.10.1.0/24]\n  nat:\n    allow_forced: true\ndataplane:\n  mode: {mode}\n  \
             vpn_gateways: [{VPNGW}]\n{private}  tun: {TUN}\n  ha_tun: {HA_TUN}\n  tun_mtu: 1400\n  ha_path_table: \
             {TABLE}\n{}daemon:\n  keys_file: {}\n  admin: {ADMIN}\n  log_format: json\n{}{}",
            self.dataplane_extra,
            self.keys_path().display(),
            self.daemon_extra,
            self.replication
                .as_deref()
                .map_or_else(String::new, |r| format!("replication:\n{r}"))
        )
    }

    pub fn keys_path(&self) -> PathBuf {
        self.dir.path().join("keys.yaml")
    }

    /// Writes the keys file (mode 0600) atomically.
    pub fn write_keys(&self, key: &str) {
        let tmp = self.dir.path().join("keys.yaml.tmp");
        std::fs::write(&tmp, keys_yaml(key)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, self.keys_path()).unwrap();
    }

    fn spawn_proxy(&mut self) {
        let config = self.dir.path().join("proxy.yaml");
        std::fs::write(&config, self.config_yaml()).unwrap();
        let log = File::create(&self.log).unwrap();
        let env = self.env.clone();
        let child = self.px.run(|| {
            Command::new(env!("CARGO_BIN_EXE_mip-proxy"))
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "debug")
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        });
        self.proxy = Some(child);
    }

    /// Starts mip-proxy and waits until `/healthz` answers.
    pub fn start_proxy(&mut self) {
        self.spawn_proxy();
        let end = StdInstant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.proxy.as_mut().unwrap().try_wait().unwrap() {
                panic!("mip-proxy exited at start ({status}):\n{}", self.log_text());
            }
            if self.http("/healthz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                StdInstant::now() < end,
                "mip-proxy not healthy after 10 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts mip-proxy expecting it to exit at start; its exit status.
    pub fn start_expecting_exit(&mut self) -> std::process::ExitStatus {
        self.spawn_proxy();
        self.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("mip-proxy kept running:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's JSON log lines.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.proxy.as_ref().unwrap().id()).unwrap())
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// `GET path` on the admin port: (status, body); `None` when the connection fails.
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        self.px.run(|| http_get(ADMIN, path))
    }

    /// The admin port's `/metrics`.
    pub fn metrics(&self) -> String {
        let (code, body) = self.http("/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        body
    }

    /// `/bindings` parsed.
    pub fn bindings(&self) -> serde_json::Value {
        let (code, body) = self.http("/bindings").expect("/bindings answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/bindings is not JSON ({e}): {body}"))
    }

    /// The home agent thread.
    pub fn ha(&self) -> &HaThread {
        self.ha.as_ref().unwrap()
    }

    /// A mobile node socket bound to `MN_COA:port` in `mn`, asking for a UDP tunnel (F flag: there is no NAT).
    pub fn mobile(&self, port: u16) -> Mobile {
        let sock = self
            .mn
            .run(|| UdpSocket::bind(SocketAddrV4::new(MN_COA, port)).unwrap());
        Mobile {
            sock,
            force_udp: true,
            sent: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// As [`Lab::mobile`], but without forcing UDP: no NAT is detected, so the tunnel is IP-in-IP.
    pub fn mobile_ipip(&self, port: u16) -> Mobile {
        Mobile {
            force_udp: false,
            ..self.mobile(port)
        }
    }

    /// Waits up to 2 s for the process to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = StdInstant::now() + within;
        let child = self.proxy.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if StdInstant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- mip-proxy log ---\n{}", self.log_text());
        }
        self.ha.take();
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A minimal HTTP/1.0 GET (the response is close-delimited, never chunked).
pub fn http_get(addr: SocketAddrV4, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((code, body))
}

/// The value of one series in a Prometheus text body (`name{labels}` exactly as rendered).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series `{series}` in\n{text}"))
}

/// The sum of every series of `name` whose labels contain `label` (e.g. `path="data"`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// What a registration ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegResult {
    Registered { code: u8, tunnel: MnTunnel },
    Failed(u8),
    Timeout,
    Deregistered,
}

/// The mobile node's UDP socket (its registered endpoint when bound to port 434).
pub struct Mobile {
    pub sock: UdpSocket,
    /// Set F in the UDP Tunnel Request.
    pub force_udp: bool,
    /// Every registration request sent, in order (for replays).
    pub sent: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl Mobile {
    pub fn local(&self) -> SocketAddrV4 {
        match self.sock.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    fn config(force_udp: bool) -> MnConfig {
        let mut cfg = MnConfig::new(HOA, PROXY_PUBLIC, SPI);
        cfg.lifetime = 600;
        cfg.udp_tunnelling.force = force_udp;
        cfg.source_port = 434;
        cfg
    }

    /// The first Registration Request a node with `key` sends (for truncation tests).
    pub fn request_bytes(key: &str) -> Vec<u8> {
        let clock = Clock::new();
        let mut node = MobileNode::new(Mobile::config(true), keystore(key), 1);
        let mut out = Vec::new();
        node.handle(
            clock.now(),
            MnInput::Attached(Attachment::CoLocated {
                care_of_address: MN_COA,
                gateway_mac: None,
            }),
            &mut out,
        );
        out.into_iter()
            .find_map(|o| match o {
                MnOutput::Send(t) => Some(t.payload),
                _ => None,
            })
            .expect("a request")
    }

    /// One registration with `key` through the proxy; waits up to `within`.
    pub fn register(&self, key: &str, within: Duration) -> RegResult {
        self.register_then(key, within, false)
    }

    /// A registration, then (when it succeeded) a deregistration of all bindings: [`RegResult::Deregistered`]
    /// once that was accepted.
    pub fn register_and_deregister(&self, key: &str, within: Duration) -> RegResult {
        self.register_then(key, within, true)
    }

    fn register_then(&self, key: &str, within: Duration, mut deregister: bool) -> RegResult {
        let clock = Clock::new();
        let local = self.local();
        let mut node = MobileNode::new(Mobile::config(self.force_udp), keystore(key), u64::from(local.port()));
        let mut out: Vec<MnOutput> = Vec::new();
        node.handle(
            clock.now(),
            MnInput::Attached(Attachment::CoLocated {
                care_of_address: MN_COA,
                gateway_mac: None,
            }),
            &mut out,
        );
        let end = StdInstant::now() + within;
        let mut buf = [0u8; 2048];
        let mut code = None;
        loop {
            for o in out.drain(..) {
                match o {
                    MnOutput::Send(t) => {
                        self.sent.borrow_mut().push(t.payload.clone());
                        self.sock.send_to(&t.payload, t.dst).unwrap();
                    }
                    MnOutput::Outcome(o) => code = Some(u8::from(o.code)),
                    MnOutput::Registered { .. } if deregister => {
                        deregister = false;
                        let mut more = Vec::new();
                        node.handle(clock.now(), MnInput::Deregister, &mut more);
                        for m in more {
                            if let MnOutput::Send(t) = m {
                                self.sent.borrow_mut().push(t.payload.clone());
                                self.sock.send_to(&t.payload, t.dst).unwrap();
                            }
                        }
                    }
                    MnOutput::Deregistered => return RegResult::Deregistered,
                    MnOutput::Registered { tunnel, .. } => {
                        return RegResult::Registered {
                            code: code.unwrap_or(0),
                            tunnel,
                        };
                    }
                    MnOutput::RegistrationFailed { code } => return RegResult::Failed(u8::from(code)),
                    _ => {}
                }
            }
            let now = StdInstant::now();
            if now >= end {
                return RegResult::Timeout;
            }
            let mut wait = (end - now).min(Duration::from_millis(50));
            if let Some(t) = node.next_timer() {
                wait = wait.min(clock.until(t).max(Duration::from_millis(1)));
            }
            self.sock.set_read_timeout(Some(wait)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(src))) if buf.first() == Some(&3) => {
                    let dg = Datagram {
                        src,
                        dst: local,
                        ttl: 64,
                        payload: &buf[..n],
                    };
                    node.handle(clock.now(), MnInput::Reply(dg), &mut out);
                }
                _ => {
                    if node.next_timer().is_some_and(|t| t <= clock.instant()) {
                        node.handle(clock.now(), MnInput::Tick, &mut out);
                    }
                }
            }
        }
    }

    /// Waits for a UDP datagram whose first byte is `first` (tunnel data = 4); its payload and source.
    pub fn recv_first(&self, first: u8, within: Duration) -> Option<(Vec<u8>, SocketAddrV4)> {
        let end = StdInstant::now() + within;
        let mut buf = [0u8; 2048];
        while StdInstant::now() < end {
            self.sock
                .set_read_timeout(Some((end - StdInstant::now()).max(Duration::from_millis(1))))
                .unwrap();
            if let Ok((n, SocketAddr::V4(src))) = self.sock.recv_from(&mut buf)
                && buf.first() == Some(&first)
            {
                return Some((buf[..n].to_vec(), src));
            }
        }
        None
    }
}

// === packets ===

pub fn checksum(data: &[u8]) -> u16 {
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

/// An IPv4 packet (no options, DF clear) with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..].copy_from_slice(payload);
    p
}

/// An ICMP message with a valid checksum.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// RFC 3519 Tunnel Data: type 4, next header 4 (IPv4), reserved 0, then the inner packet.
pub fn tunnel_data(inner: &[u8]) -> Vec<u8> {
    let mut d = vec![4u8, 4, 0, 0];
    d.extend_from_slice(inner);
    d
}

/// An "ESP" packet body: SPI, sequence number, opaque bytes.
pub fn esp_body(seq: u32) -> Vec<u8> {
    let mut b = 0x1587_cd3du32.to_be_bytes().to_vec();
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(b"esp-like ciphertext, opaque to the proxy");
    b
}

/// Deterministic pseudo-random bytes (SplitMix64).
pub struct Rand(pub u64);

impl Rand {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A raw IPv4 socket of `protocol` created in `ns`; with `hdrincl` the caller supplies the IP header.
pub fn raw_socket(ns: &Ns, protocol: i32, hdrincl: bool) -> socket2::Socket {
    ns.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(protocol)),
        )
        .unwrap();
        if hdrincl {
            s.set_header_included_v4(true).unwrap();
        }
        s
    })
}

/// Sends `packet` through a raw socket to `dst`.
pub fn raw_send(s: &socket2::Socket, packet: &[u8], dst: Ipv4Addr) {
    s.send_to(packet, &SocketAddrV4::new(dst, 0).into()).unwrap();
}

/// Reads packets from a raw socket for up to `within`, returning the first one `want` accepts.
pub fn raw_recv(s: &socket2::Socket, within: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let end = StdInstant::now() + within;
    let mut buf = [0u8; 4096];
    while StdInstant::now() < end {
        s.set_read_timeout(Some((end - StdInstant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = (&*s).read(&mut buf)
            && want(&buf[..n])
        {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// An AF_PACKET socket (all interfaces of `ns`, IPv4 frames, link header removed).
pub fn packet_socket(ns: &Ns) -> socket2::Socket {
    ns.run(|| {
        let eth_p_ip = ETH_P_IP.to_be();
        socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(i32::from(eth_p_ip))),
        )
        .unwrap()
    })
}

/// `ETH_P_IP` from `<linux/if_ether.h>`.
const ETH_P_IP: u16 = 0x0800;

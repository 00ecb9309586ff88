//! Who may use the admin server's routes, with real connections between two network namespaces (root needed, as
//! `tests/netns.rs`; each namespace belongs to one test thread and disappears with it, nothing touches the
//! host's network): `/healthz`, `/readyz` and `/metrics` answer a client on another host, `/bindings`,
//! `/status` and `/drain` refuse it with 403 (counted, no state read, no drain started) unless remote access is
//! on, and answer a client on the server's own host, over loopback and over the host's own address.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use mip_io::admin::{AdminServer, AdminState, Drain, HostOnly};
use mip_io::net;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

#[derive(Default)]
struct State {
    remote_access: bool,
    drain: Option<Drain>,
    bindings_read: AtomicUsize,
    refused: Mutex<Vec<HostOnly>>,
}

impl AdminState for State {
    fn ready(&self) -> bool {
        true
    }
    fn metrics(&self) -> String {
        "mip_up 1\n".into()
    }
    fn bindings_json(&self) -> String {
        self.bindings_read.fetch_add(1, Ordering::SeqCst);
        "[]".into()
    }
    fn status_json(&self) -> Option<String> {
        Some("{}".into())
    }
    fn drain(&self) -> Option<&Drain> {
        self.drain.as_ref()
    }
    fn remote_access(&self) -> bool {
        self.remote_access
    }
    fn refused(&self, route: HostOnly) {
        self.refused.lock().unwrap().push(route);
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {out:?}"));
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The test thread's own namespace, loopback up; the thread id names it for `ip link ... netns`.
fn unshare() -> i32 {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the admin access test needs root (network namespaces): run `cargo test -p mip-io` as root"
    );
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    net::link_up("lo").expect("ip link set lo up (is iproute2 installed?)");
    nix::unistd::gettid().as_raw()
}

/// Server host and client host joined by a veth pair (192.0.2.1/24 and .2/24); `server` gets the server host's
/// admin address (0.0.0.0:port: every address of the host), `client` runs on the client host with it.
fn two_hosts(state: Arc<State>, client: impl FnOnce(u16) + Send + 'static) {
    let (client_tid_tx, client_tid_rx) = mpsc::channel();
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    let client_thread = std::thread::spawn(move || {
        client_tid_tx.send(unshare()).unwrap();
        let port = port_rx.recv().unwrap();
        client(port);
    });
    let server_thread = std::thread::spawn(move || {
        unshare();
        let client_tid = client_tid_rx.recv().unwrap().to_string();
        net::run(
            "ip",
            &[
                "link",
                "add",
                "srv0",
                "type",
                "veth",
                "peer",
                "name",
                "cli0",
                "netns",
                &client_tid,
            ],
        )
        .unwrap();
        net::addr_add("srv0", SERVER, 24).unwrap();
        net::link_up("srv0").unwrap();
        // The client side, configured from here (`ip -n` wants a named namespace: enter the thread's instead).
        let ns = format!("--net=/proc/{client_tid}/ns/net");
        for args in [
            [ns.as_str(), "ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "cli0"].as_slice(),
            [ns.as_str(), "ip", "link", "set", "cli0", "up"].as_slice(),
        ] {
            net::run("nsenter", args).unwrap();
        }
        let server = AdminServer::spawn("0.0.0.0:0".parse().unwrap(), state).unwrap();
        port_tx.send(server.local_addr().port()).unwrap();
        server
    });
    let server = server_thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    if let Err(e) = client_thread.join() {
        std::panic::resume_unwind(e);
    }
    drop(server);
}

#[test]
fn host_only_routes_refuse_other_hosts() {
    let poll = mio::Poll::new().unwrap();
    let drain = Drain::new(Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).unwrap()));
    let state = Arc::new(State {
        drain: Some(drain.clone()),
        ..State::default()
    });
    let s = Arc::clone(&state);
    two_hosts(Arc::clone(&state), move |port| {
        let at = SocketAddr::V4(SocketAddrV4::new(SERVER, port));
        assert_eq!(get(at, "/healthz").0, 200);
        assert_eq!(get(at, "/readyz").0, 200);
        assert_eq!(get(at, "/metrics"), (200, "mip_up 1\n".into()));
        for path in ["/bindings", "/status", "/drain"] {
            let (code, body) = get(at, path);
            assert_eq!(code, 403, "{path}: {body}");
            assert!(body.contains("only from this host"), "{body}");
        }
        assert_eq!(
            s.bindings_read.load(Ordering::SeqCst),
            0,
            "no state read for a refused client"
        );
    });
    assert_eq!(
        *state.refused.lock().unwrap(),
        [HostOnly::Bindings, HostOnly::Status, HostOnly::Drain],
        "each refusal counted"
    );
    assert!(!drain.take_request(), "a refused /drain starts no drain");
}

/// The server's own host: loopback and the host's own (veth) address both count as this host.
#[test]
fn the_servers_own_host_gets_every_route() {
    let state = Arc::new(State::default());
    let s = Arc::clone(&state);
    std::thread::spawn(move || {
        unshare();
        net::run("ip", &["link", "add", "srv0", "type", "veth", "peer", "name", "cli0"]).unwrap();
        net::addr_add("srv0", SERVER, 24).unwrap();
        net::link_up("srv0").unwrap();
        net::link_up("cli0").unwrap();
        let server = AdminServer::spawn("0.0.0.0:0".parse().unwrap(), s).unwrap();
        let port = server.local_addr().port();
        for host in [Ipv4Addr::LOCALHOST, SERVER] {
            let at = SocketAddr::V4(SocketAddrV4::new(host, port));
            assert_eq!(get(at, "/bindings"), (200, "[]".into()), "{at}");
            assert_eq!(get(at, "/status"), (200, "{}".into()), "{at}");
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(state.refused.lock().unwrap().is_empty());
    assert_eq!(state.bindings_read.load(Ordering::SeqCst), 2);
}

/// `daemon.admin_remote_access: true`: the host-only routes answer other hosts too.
#[test]
fn remote_access_opens_them() {
    let state = Arc::new(State {
        remote_access: true,
        ..State::default()
    });
    two_hosts(Arc::clone(&state), move |port| {
        let at = SocketAddr::V4(SocketAddrV4::new(SERVER, port));
        assert_eq!(get(at, "/bindings"), (200, "[]".into()));
        assert_eq!(get(at, "/status"), (200, "{}".into()));
    });
    assert!(state.refused.lock().unwrap().is_empty());
    assert_eq!(state.bindings_read.load(Ordering::SeqCst), 1);
}

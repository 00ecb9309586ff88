//! `mipctl register` and `mipctl bindings` against real sockets on loopback: a reference Home Agent
//! (`mip::roles::ha`) answers on 127.0.0.3:434 in a thread, and the CLI registers with it as a node would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use mip::config::{KeysFile, from_yaml};
use mip::roles::ha::{HaConfig, HaInput, HaOutput, HomeAgent};
use mip::roles::{Datagram, Now};
use mip::time::{Instant, NtpTimestamp};

const HA: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const KEY: &str = "000102030405060708090a0b0c0d0e0f";

/// Runs a Home Agent on HA:434 until `stop` is set.
fn spawn_ha(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let sock = UdpSocket::bind(SocketAddrV4::new(HA, 434)).expect("bind 127.0.0.3:434 (tests run as root)");
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    std::thread::spawn(move || {
        let keys = from_yaml::<KeysFile>(&format!(
            "security_associations:\n  - {{home_address: 10.10.1.50, spi: 256, key: {KEY}}}\n"
        ))
        .unwrap()
        .to_keystore()
        .unwrap();
        let mut ha = HomeAgent::new(HaConfig::new(HA, vec!["10.10.1.0/24".parse().unwrap()]), keys, 1);
        let start = StdInstant::now();
        let mut buf = [0u8; 2048];
        let mut replies = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, SocketAddr::V4(src))) = sock.recv_from(&mut buf) else {
                continue;
            };
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let now = Now::new(
                Instant::from_millis(start.elapsed().as_millis() as u64),
                NtpTimestamp::from_unix(wall),
            );
            let mut out = Vec::new();
            let dg = Datagram {
                src,
                dst: SocketAddrV4::new(HA, 434),
                ttl: 64,
                payload: &buf[..n],
            };
            ha.handle(now, HaInput::Request(dg), &mut out);
            for o in out {
                if let HaOutput::Send(t) = o {
                    sock.send_to(&t.payload, t.dst).unwrap();
                    replies += 1;
                }
            }
        }
        replies
    })
}

fn files(key: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new(&format!("register-{}", &key[..4]));
    let keys = dir.write(
        "keys.yaml",
        &format!("security_associations:\n  - {{home_address: 10.10.1.50, spi: 256, key: {key}}}\n"),
    );
    let cfg = dir.write(
        "mn.yaml",
        &format!(
            "mn: {{home_address: 10.10.1.50, home_agent: {HA}, spi: 256, lifetime: 60}}\n\
             dataplane: {{tunnelled: [198.51.100.20/32]}}\ndaemon: {{keys_file: {keys}}}\n"
        ),
    );
    (dir, cfg)
}

mod tempdir {
    use std::path::PathBuf;
    pub struct Dir(pub PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("mipctl-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn write(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn mipctl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mipctl")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn register_then_deregister_against_a_home_agent_and_bad_key_times_out() {
    let stop = Arc::new(AtomicBool::new(false));
    let ha = spawn_ha(stop.clone());

    // The keys come from the config's daemon.keys_file.
    let (_dir, cfg) = files(KEY);
    let (code, out, err) = mipctl(&["register", "--config", &cfg, "--care-of", "127.0.0.1", "--deregister"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["result"], "accepted");
    assert_eq!(v["care_of_address"], "127.0.0.1");
    assert_eq!(v["lifetime"], 60);
    assert_eq!(v["tunnel"]["type"], "ipip", "no NAT: the HA declines UDP tunnelling");
    assert_eq!(v["deregistered"], true);
    assert!(v["rtt_ms"].as_f64().unwrap() < 1000.0);

    // A wrong key: the HA drops the request silently, so the tool reports no reply (exit 3).
    let (_dir2, cfg2) = files("0f0e0d0c0b0a09080706050403020100");
    let (code, out, err) = mipctl(&[
        "register",
        "--config",
        &cfg2,
        "--care-of",
        "127.0.0.1",
        "--timeout",
        "2",
    ]);
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert!(err.contains("no authenticated reply"), "{err}");

    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        ha.join().unwrap(),
        2,
        "one reply to the registration, one to the deregistration, none to the forgery"
    );
}

#[test]
fn register_reports_bad_files() {
    let dir = tempdir::Dir::new("badfiles");
    let keys = dir.write("keys.yaml", "security_associations: []\n");
    let cfg = dir.write(
        "mn.yaml",
        "mn: {home_address: 10.10.1.50, home_agent: 127.0.0.3, spi: 12}\ndataplane: {tunnelled: []}\ndaemon: {keys_file: /k}\n",
    );
    let (code, _, err) = mipctl(&["register", "--config", &cfg, "--keys", &keys]);
    assert_eq!(code, 2);
    assert!(err.contains("mn.yaml") && err.contains("spi"), "{err}");
}

#[test]
fn bindings_reads_the_admin_api() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let n = s.read(&mut req).unwrap();
        assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /bindings HTTP/1.1"));
        let body = r#"[{"home_address":"10.10.1.50"}]"#;
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let (code, out, err) = mipctl(&["bindings", "--admin", &addr.to_string()]);
    server.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"[{"home_address":"10.10.1.50"}]"#);
    let (code, _, err) = mipctl(&["bindings", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, 3);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

/// A refusal is reported with the daemon's reason line, so "only from this host" reaches the user.
#[test]
fn bindings_reports_the_daemons_reason_for_a_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).unwrap();
        let body = "forbidden: only from this host (daemon.admin_remote_access)\n";
        write!(
            s,
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let (code, _, err) = mipctl(&["bindings", "--admin", &addr.to_string()]);
    server.join().unwrap();
    assert_eq!(code, 3);
    assert!(
        err.contains("/bindings: HTTP 403: forbidden: only from this host (daemon.admin_remote_access)"),
        "{err}"
    );
}

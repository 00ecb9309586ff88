//! `mipctl register`: one authenticated registration, as a "ping" for a deployment. It drives the reference
//! Mobile Node state machine ([`mip::roles::mn`]) over a plain UDP socket, so the request is exactly what a node
//! sends (Identification, extensions, MN-HA), and reports what the agent answered and how long it took.
//!
//! `mipctl bindings`: reads a daemon's `/bindings` from its admin address.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use mip::config::{KeysFile, from_yaml, render_errors};
use mip::daemon::MnFile;
use mip::roles::mn::{Attachment, MnConfig, MnInput, MnOutput, MnTunnel, MobileNode};
use mip::roles::{Datagram, Now};
use mip::time::{Instant, NtpTimestamp};
use serde_json::{Value, json};

/// What `register` found out.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterResult {
    /// Accepted (code 0 or 1): the JSON report.
    Accepted(Value),
    /// Denied or given up: the JSON report (with `code`).
    Denied(Value),
    /// No authenticated reply before the deadline.
    Timeout,
}

/// Reads a YAML file into a validated config, with errors naming the file and fields.
fn load<T: serde::de::DeserializeOwned + mip::config::Validate>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    from_yaml(&text).map_err(|e| render_errors(&path.display().to_string(), &e))
}

/// Options of one registration.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// The node's configuration (the same file `mip-mn` reads).
    pub config: MnConfig,
    /// Care-of address to register; default: the local address the system would use toward the home agent.
    pub care_of: Option<Ipv4Addr>,
    /// Requested lifetime override, seconds.
    pub lifetime: Option<u16>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Deregister right after the registration was accepted.
    pub deregister: bool,
}

/// Loads the node configuration (the file `mip-mn --config` reads) and its keys: `keys` if given, else the
/// file's `daemon.keys_file`.
pub fn load_node(config: &Path, keys: Option<&Path>) -> Result<(MnConfig, mip::keystore::KeyStore), String> {
    let file: MnFile = load(config)?;
    let keys_path = keys.map(Path::to_path_buf).unwrap_or(file.daemon.keys_file);
    // `load` validated the keys file by building the store once; build the one we keep.
    let keys_file: KeysFile = load(&keys_path)?;
    let store = keys_file
        .to_keystore()
        .map_err(|e| render_errors(&keys_path.display().to_string(), &e))?;
    Ok((file.mn, store))
}

/// Sends one registration and waits for the outcome.
pub fn register(opts: &RegisterOptions, keys: mip::keystore::KeyStore) -> Result<RegisterResult, String> {
    let mut cfg = opts.config.clone();
    if let Some(l) = opts.lifetime {
        cfg.lifetime = l;
    }
    let ha = SocketAddrV4::new(cfg.home_agent, mip::roles::mn::MIP_PORT);
    let care_of = match opts.care_of {
        Some(a) => a,
        None => source_address_toward(ha).map_err(|e| format!("no route toward {ha}: {e}"))?,
    };
    let socket = UdpSocket::bind(SocketAddrV4::new(care_of, 0)).map_err(|e| format!("bind {care_of}: {e}"))?;
    let port = match socket.local_addr() {
        Ok(SocketAddr::V4(a)) => a.port(),
        _ => return Err("the socket has no IPv4 address".into()),
    };
    // The node sends everything from this one port (RFC 3519 §4.4).
    cfg.source_port = port;
    let mut node = MobileNode::new(cfg, keys, seed());
    let clock = StdInstant::now();
    let now = || -> Now {
        let ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Now::new(Instant::from_millis(ms), NtpTimestamp::from_unix(wall))
    };
    let deadline = clock + opts.timeout;
    let mut out = Vec::new();
    node.handle(
        now(),
        MnInput::Attached(Attachment::CoLocated {
            care_of_address: care_of,
            gateway_mac: None,
        }),
        &mut out,
    );
    let mut sent_at: Option<StdInstant> = None;
    let mut registered: Option<Value> = None;
    let mut buf = [0u8; 2048];
    loop {
        // Handling an output can produce more (a deregistration right after the registration): drain them all
        // before waiting on the socket.
        while let Some(o) = (!out.is_empty()).then(|| out.remove(0)) {
            match o {
                MnOutput::Send(t) => {
                    socket
                        .send_to(&t.payload, t.dst)
                        .map_err(|e| format!("send to {}: {e}", t.dst))?;
                    sent_at.get_or_insert_with(StdInstant::now);
                }
                MnOutput::Registered {
                    care_of_address,
                    tunnel,
                    lifetime,
                    home_agent,
                } if registered.is_none() => {
                    let rtt = sent_at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                    let report = json!({
                        "result": "accepted",
                        "care_of_address": care_of_address.to_string(),
                        "home_agent": home_agent.to_string(),
                        "lifetime": lifetime,
                        "tunnel": tunnel_json(&tunnel),
                        "rtt_ms": (rtt * 1000.0).round() / 1000.0,
                    });
                    if !opts.deregister {
                        return Ok(RegisterResult::Accepted(report));
                    }
                    registered = Some(report);
                    node.handle(now(), MnInput::Deregister, &mut out);
                }
                MnOutput::Deregistered => {
                    if let Some(mut report) = registered.take() {
                        if let Some(o) = report.as_object_mut() {
                            o.insert("deregistered".into(), Value::Bool(true));
                        }
                        return Ok(RegisterResult::Accepted(report));
                    }
                }
                MnOutput::RegistrationFailed { code } => {
                    let rtt = sent_at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                    return Ok(RegisterResult::Denied(json!({
                        "result": "denied",
                        "code": code.value(),
                        "code_name": code.description(),
                        "rtt_ms": (rtt * 1000.0).round() / 1000.0,
                    })));
                }
                _ => {}
            }
        }
        let now_std = StdInstant::now();
        if now_std >= deadline {
            return Ok(RegisterResult::Timeout);
        }
        // Sleep in the socket until a reply or the node's next timer, whichever is first.
        let until_timer = node
            .next_timer()
            .map(|t| Duration::from_millis(t.millis().saturating_sub(now().instant.millis())))
            .unwrap_or(Duration::from_millis(200));
        let wait = until_timer.min(deadline - now_std).max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        match socket.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(src))) => {
                let payload = buf.get(..n).unwrap_or(&[]);
                let dg = Datagram {
                    src,
                    dst: SocketAddrV4::new(care_of, port),
                    ttl: 64,
                    payload,
                };
                node.handle(now(), MnInput::Reply(dg), &mut out);
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                node.handle(now(), MnInput::Tick, &mut out);
            }
            // ICMP port unreachable surfaces as ECONNREFUSED on some paths: keep waiting for a retransmission.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                node.handle(now(), MnInput::Tick, &mut out);
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// A tunnel as `mipctl register` prints it and `mip-mn`'s `/bindings` shows it.
pub fn tunnel_json(t: &MnTunnel) -> Value {
    match t {
        MnTunnel::IpIp { local, peer } => json!({"type": "ipip", "local": local.to_string(), "peer": peer.to_string()}),
        MnTunnel::Udp {
            local_port,
            peer,
            keepalive_secs,
        } => json!({
            "type": "udp", "local_port": local_port, "peer": peer.to_string(), "keepalive_secs": keepalive_secs
        }),
        MnTunnel::ForeignAgent { agent } => json!({"type": "foreign_agent", "agent": agent.to_string()}),
    }
}

/// The local address the routing table picks toward `dst` (connect a UDP socket; nothing is sent).
pub fn source_address_toward(dst: SocketAddrV4) -> std::io::Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(dst)?;
    match s.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(std::io::Error::other("IPv6 source")),
    }
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::from(t.subsec_nanos()) ^ t.as_secs().rotate_left(32) ^ u64::from(std::process::id())
}

/// `GET path` on a daemon's admin address; the body of a 200 response.
pub fn admin_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        // The daemon's one-line reason (e.g. 403 "only from this host"), printable characters only, bounded.
        let reason: String = body
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        return Err(if reason.is_empty() {
            format!("{addr}{path}: HTTP {status}")
        } else {
            format!("{addr}{path}: HTTP {status}: {reason}")
        });
    }
    Ok(body.to_string())
}

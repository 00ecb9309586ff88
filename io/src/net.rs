//! Control-plane network configuration: thin wrappers over `ip` (iproute2) and `/proc/sys`, for rare operations
//! (start-up, binding changes, hand-offs). They allocate and spawn processes freely; never call them per packet.
//! Routes ([`route_replace_with`], [`route_del_with`]), which a home agent changes once per registration, are
//! the exception: one rtnetlink request and its acknowledgement each, no process (microseconds instead of the
//! ~2 ms of spawning `ip`).
//!
//! Every error is a [`NetError`] naming the command as it would be typed and what it printed on stderr (for
//! routes: the `ip route …` command with the same effect and the message `ip` would have printed), so a log
//! line is enough to reproduce the failure by hand. `*_add`/`*_replace` calls are idempotent where iproute2 allows
//! it (`replace`); `*_del` of something absent fails with [`NetError::is_missing`] true, which callers tearing
//! state down usually ignore.
//!
//! Commands run in the network namespace of the calling thread.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use mip::config::Prefix;
use serde_json::Value;

/// A failed configuration command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct NetError {
    /// The command line (or the operation, for those done without a command).
    pub command: String,
    /// Its exit status and stderr, or why it could not run.
    pub detail: String,
}

impl NetError {
    fn new(command: impl Into<String>, detail: impl Into<String>) -> Self {
        NetError {
            command: command.into(),
            detail: detail.into(),
        }
    }

    /// Whether the object to delete or change did not exist (no such address, route, rule, neighbour, device).
    pub fn is_missing(&self) -> bool {
        [
            "No such process",
            "Cannot assign requested address",
            "No such file or directory",
            "Cannot find device",
            "does not exist",
            "No such device",
            "not found",
        ]
        .iter()
        .any(|m| self.detail.contains(m))
    }

    /// Whether the object to add already existed.
    pub fn is_exists(&self) -> bool {
        self.detail.contains("File exists")
    }
}

/// Runs `program args…` and returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::new(line.clone(), format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = out
            .status
            .code()
            .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit status {c}"));
        Err(NetError::new(line, format!("{status}: {}", stderr.trim())))
    }
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args)
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, NetError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ip(&full)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(v)) => Ok(v),
        Ok(_) => Ok(Vec::new()),
        Err(e) => Err(NetError::new(
            format!("ip {}", full.join(" ")),
            format!("unreadable JSON: {e}"),
        )),
    }
}

// === links and addresses ===

/// Sets a device up.
pub fn link_up(dev: &str) -> Result<(), NetError> {
    ip(&["link", "set", "dev", dev, "up"]).map(drop)
}

/// Sets a device down.
pub fn link_down(dev: &str) -> Result<(), NetError> {
    ip(&["link", "set", "dev", dev, "down"]).map(drop)
}

/// Sets a device's MTU.
pub fn set_mtu(dev: &str, mtu: u16) -> Result<(), NetError> {
    ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()]).map(drop)
}

/// Adds `addr/prefix_len` to `dev` (`ip addr replace`: no error if it is already there).
pub fn addr_add(dev: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
    ip(&["addr", "replace", &format!("{addr}/{prefix_len}"), "dev", dev]).map(drop)
}

/// Removes `addr/prefix_len` from `dev`.
pub fn addr_del(dev: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
    ip(&["addr", "del", &format!("{addr}/{prefix_len}"), "dev", dev]).map(drop)
}

/// A network device as `ip -j link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// MTU.
    pub mtu: u32,
    /// Hardware address (none for TUN and other layer-3 devices).
    pub mac: Option<[u8; 6]>,
    /// Administratively up (flag UP).
    pub up: bool,
    /// Has carrier (flag LOWER_UP).
    pub lower_up: bool,
}

/// The device `dev`, or `None` if there is none of that name.
pub fn link(dev: &str) -> Result<Option<Link>, NetError> {
    let v = match ip_json(&["link", "show", "dev", dev]) {
        Ok(v) => v,
        Err(e) if e.is_missing() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(v.first().and_then(parse_link))
}

fn parse_link(v: &Value) -> Option<Link> {
    let flags: Vec<&str> = v
        .get("flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some(Link {
        name: v.get("ifname")?.as_str()?.to_string(),
        ifindex: u32::try_from(v.get("ifindex")?.as_u64()?).ok()?,
        mtu: v
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0),
        mac: v.get("address").and_then(Value::as_str).and_then(parse_mac),
        up: flags.contains(&"UP"),
        lower_up: flags.contains(&"LOWER_UP"),
    })
}

/// An IPv4 address on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The device.
    pub dev: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The IPv4 addresses of `dev`, or of every device.
pub fn ipv4_addresses(dev: Option<&str>) -> Result<Vec<InterfaceAddress>, NetError> {
    let mut args = vec!["-4", "addr", "show"];
    if let Some(d) = dev {
        args.extend(["dev", d]);
    }
    Ok(parse_addresses(&ip_json(&args)?))
}

fn parse_addresses(links: &[Value]) -> Vec<InterfaceAddress> {
    let mut out = Vec::new();
    for l in links {
        let Some(dev) = l.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        let Some(infos) = l.get("addr_info").and_then(Value::as_array) else {
            continue;
        };
        for a in infos {
            let addr = a.get("local").and_then(Value::as_str).and_then(|s| s.parse().ok());
            let len = a
                .get("prefixlen")
                .and_then(Value::as_u64)
                .and_then(|p| u8::try_from(p).ok());
            if let (Some(addr), Some(prefix_len)) = (addr, len) {
                out.push(InterfaceAddress {
                    dev: dev.to_string(),
                    addr,
                    prefix_len,
                });
            }
        }
    }
    out
}

// === routes and rules ===

/// A route with every option these helpers support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dest: Prefix,
    /// Next hop.
    pub via: Option<Ipv4Addr>,
    /// Output device.
    pub dev: Option<String>,
    /// Preferred source address.
    pub src: Option<Ipv4Addr>,
    /// Routing table (main when `None`).
    pub table: Option<u32>,
    /// Metric.
    pub metric: Option<u32>,
    /// Route MTU.
    pub mtu: Option<u16>,
    /// `onlink`: the next hop is on the device even if no prefix says so.
    pub onlink: bool,
}

impl Route {
    /// A route to `dest` with nothing else set.
    pub fn to(dest: Prefix) -> Self {
        Route {
            dest,
            via: None,
            dev: None,
            src: None,
            table: None,
            metric: None,
            mtu: None,
            onlink: false,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![self.dest.to_string()];
        if let Some(v) = self.via {
            a.extend(["via".into(), v.to_string()]);
        }
        if let Some(d) = &self.dev {
            a.extend(["dev".into(), d.clone()]);
        }
        if let Some(s) = self.src {
            a.extend(["src".into(), s.to_string()]);
        }
        if let Some(t) = self.table {
            a.extend(["table".into(), t.to_string()]);
        }
        if let Some(m) = self.metric {
            a.extend(["metric".into(), m.to_string()]);
        }
        if let Some(m) = self.mtu {
            a.extend(["mtu".into(), m.to_string()]);
        }
        if self.onlink {
            a.push("onlink".into());
        }
        a
    }
}

fn ip_owned(fixed: &[&str], rest: &[String]) -> Result<String, NetError> {
    let mut args: Vec<&str> = fixed.to_vec();
    args.extend(rest.iter().map(String::as_str));
    ip(&args)
}

/// Adds or replaces a route (`ip route replace DEST [via V] [dev D] [src S] [table T]`).
pub fn route_replace(
    dest: Prefix,
    via: Option<Ipv4Addr>,
    dev: Option<&str>,
    src: Option<Ipv4Addr>,
    table: Option<u32>,
) -> Result<(), NetError> {
    route_replace_with(&Route {
        via,
        dev: dev.map(str::to_string),
        src,
        table,
        ..Route::to(dest)
    })
}

/// Adds or replaces a route with every option of [`Route`] (what `ip route replace …` does, done with one
/// RTM_NEWROUTE request with NLM_F_CREATE | NLM_F_REPLACE; waits up to 1 s for the kernel's acknowledgement).
///
/// Without a gateway the route has scope link, with one scope universe; its protocol is `boot`, as with `ip`.
/// An unknown `dev` fails with `Cannot find device "…"` ([`NetError::is_missing`] true).
pub fn route_replace_with(route: &Route) -> Result<(), NetError> {
    route_netlink(crate::rtnl::RouteOp::Replace, "replace", route)
}

/// Deletes the route to `dest` in `table` (main when `None`).
pub fn route_del(dest: Prefix, table: Option<u32>) -> Result<(), NetError> {
    route_del_with(&Route {
        table,
        ..Route::to(dest)
    })
}

/// Deletes the route matching every option set in `route` (what `ip route del …` does, done with one
/// RTM_DELROUTE request): [`Route::to`]`(p)` deletes the route to exactly `p` in the main table, whatever its
/// scope, protocol or device. Deleting a route that is not there fails with [`NetError::is_missing`] true.
pub fn route_del_with(route: &Route) -> Result<(), NetError> {
    route_netlink(crate::rtnl::RouteOp::Delete, "del", route)
}

fn route_netlink(op: crate::rtnl::RouteOp, verb: &str, route: &Route) -> Result<(), NetError> {
    crate::rtnl::route(op, route)
        .map_err(|e| NetError::new(format!("ip route {verb} {}", route.args().join(" ")), e.to_string()))
}

/// A policy-routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Priority (`pref`); the kernel picks one below the last when `None`.
    pub pref: Option<u32>,
    /// Incoming interface (`iif`).
    pub iif: Option<String>,
    /// Firewall mark (`fwmark`) and optional mask.
    pub fwmark: Option<(u32, Option<u32>)>,
    /// Source prefix (`from`).
    pub from: Option<Prefix>,
    /// Destination prefix (`to`).
    pub to: Option<Prefix>,
    /// Invert the selector (`not`).
    pub not: bool,
    /// Table to look up (`lookup`).
    pub lookup: u32,
}

impl Rule {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.not {
            a.push("not".into());
        }
        if let Some(p) = self.from {
            a.extend(["from".into(), p.to_string()]);
        }
        if let Some(p) = self.to {
            a.extend(["to".into(), p.to_string()]);
        }
        if let Some(i) = &self.iif {
            a.extend(["iif".into(), i.clone()]);
        }
        if let Some((mark, mask)) = self.fwmark {
            let mut m = format!("{mark:#x}");
            if let Some(mask) = mask {
                let _ = write!(m, "/{mask:#x}");
            }
            a.extend(["fwmark".into(), m]);
        }
        if let Some(p) = self.pref {
            a.extend(["pref".into(), p.to_string()]);
        }
        a.extend(["lookup".into(), self.lookup.to_string()]);
        a
    }
}

/// Adds a rule (`ip rule add …`; an identical rule is refused with [`NetError::is_exists`]).
pub fn rule_add(rule: &Rule) -> Result<(), NetError> {
    ip_owned(&["rule", "add"], &rule.args()).map(drop)
}

/// Deletes a rule.
pub fn rule_del(rule: &Rule) -> Result<(), NetError> {
    ip_owned(&["rule", "del"], &rule.args()).map(drop)
}

// === neighbours ===

fn mac_string(mac: [u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Sets a permanent neighbour entry (`ip neigh replace ADDR lladdr MAC dev DEV nud permanent`).
pub fn neigh_replace(addr: Ipv4Addr, lladdr: [u8; 6], dev: &str) -> Result<(), NetError> {
    ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac_string(lladdr),
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .map(drop)
}

/// Deletes a neighbour entry.
pub fn neigh_del(addr: Ipv4Addr, dev: &str) -> Result<(), NetError> {
    ip(&["neigh", "del", &addr.to_string(), "dev", dev]).map(drop)
}

/// Answers ARP for `addr` on `dev` with this host's address (proxy ARP, RFC 5944 §4.6: the home agent
/// intercepting a mobile node's home address). Needs `net.ipv4.conf.DEV.proxy_arp` only for prefix-wide
/// proxying; per-address entries work without it.
pub fn neigh_proxy_add(addr: Ipv4Addr, dev: &str) -> Result<(), NetError> {
    ip(&["neigh", "replace", "proxy", &addr.to_string(), "dev", dev]).map(drop)
}

/// Stops proxy ARP for `addr` on `dev`.
pub fn neigh_proxy_del(addr: Ipv4Addr, dev: &str) -> Result<(), NetError> {
    ip(&["neigh", "del", "proxy", &addr.to_string(), "dev", dev]).map(drop)
}

/// The link-layer address of neighbour `addr` on `dev`, if resolved.
///
/// Read from `/proc/thread-self/net/arp` (no process; the calling thread's namespace), else with `ip neigh`.
pub fn neigh_lladdr(addr: Ipv4Addr, dev: &str) -> Result<Option<[u8; 6]>, NetError> {
    if let Ok(arp) = std::fs::read_to_string("/proc/thread-self/net/arp") {
        return Ok(proc_arp_lladdr(&arp, addr, dev));
    }
    let v = ip_json(&["-4", "neigh", "show", &addr.to_string(), "dev", dev])?;
    Ok(v.iter()
        .find_map(|n| n.get("lladdr").and_then(Value::as_str).and_then(parse_mac)))
}

// === sysctl ===

fn sysctl_path(key: &str) -> Result<String, NetError> {
    let ok = !key.is_empty()
        && !key.split(['.', '/']).any(|c| c.is_empty() || c == "..")
        && key.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(NetError::new(format!("sysctl {key}"), "not a sysctl key"));
    }
    // `net.ipv4.conf.eth0.rp_filter` or the slash form `net/ipv4/conf/eth0.100/rp_filter` (for dotted names).
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Ok(format!("/proc/sys/{rel}"))
}

/// Sets a kernel parameter (`sysctl -w key=value`, done by writing `/proc/sys/…` so no `sysctl` binary is
/// needed). Keys use dots, or slashes when a component contains a dot (an interface like `eth0.100`).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = sysctl_path(key)?;
    std::fs::write(&path, value).map_err(|e| NetError::new(format!("sysctl -w {key}={value}"), format!("{path}: {e}")))
}

/// Reads a kernel parameter.
pub fn sysctl_get(key: &str) -> Result<String, NetError> {
    let path = sysctl_path(key)?;
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| NetError::new(format!("sysctl {key}"), format!("{path}: {e}")))
}

// === what the mobile node needs to know about where it is ===

/// The IPv4 default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The gateway's address.
    pub address: Ipv4Addr,
    /// The device it is reached through.
    pub dev: String,
    /// The gateway's link-layer address, if the neighbour table has it (a changed MAC with an unchanged address
    /// is how a hand-off between two NATs with the same inside subnet shows).
    pub mac: Option<[u8; 6]>,
}

/// The default route of the main table (lowest metric first), with the gateway's MAC when known; `None` when
/// there is no default route through a gateway.
///
/// Read from `/proc/thread-self/net/{route,arp}` (the calling thread's network namespace, which may differ from
/// the process's; the main table and the neighbour table, as `ip route show default` and `ip neigh` show them),
/// so the mobile node's reaction to a netlink event costs no process: two `ip` invocations took 2-5 ms on a busy
/// 2-core machine, which a hand-off pays before its registration goes out. Falls back to `ip` where those files
/// are not readable.
pub fn default_gateway() -> Result<Option<Gateway>, NetError> {
    if let Ok(routes) = std::fs::read_to_string("/proc/thread-self/net/route") {
        let Some((address, dev)) = proc_route_default(&routes) else {
            return Ok(None);
        };
        let mac = neigh_lladdr(address, &dev)?;
        return Ok(Some(Gateway { address, dev, mac }));
    }
    let routes = ip_json(&["-4", "route", "show", "default"])?;
    let Some((address, dev)) = pick_default(&routes) else {
        return Ok(None);
    };
    let mac = neigh_lladdr(address, &dev)?;
    Ok(Some(Gateway { address, dev, mac }))
}

/// An address as `/proc/net/route` prints it: the network-order `__be32` as a native `%08X`.
fn proc_hex_addr(s: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_ne_bytes()))
}

/// The lowest-metric default route through a gateway in `/proc/net/route` (main table; a multipath route shows
/// its first next hop).
fn proc_route_default(text: &str) -> Option<(Ipv4Addr, String)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u64, Ipv4Addr, String)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(dst), Some(gw), Some(flags), Some(metric), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(3), f.get(6), f.get(7))
        else {
            continue;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        let metric = metric.parse::<u64>().unwrap_or(0);
        let default =
            proc_hex_addr(dst) == Some(Ipv4Addr::UNSPECIFIED) && proc_hex_addr(mask) == Some(Ipv4Addr::UNSPECIFIED);
        if !default || flags & (RTF_UP | RTF_GATEWAY) != (RTF_UP | RTF_GATEWAY) {
            continue;
        }
        if let Some(gw) = proc_hex_addr(gw)
            && best.as_ref().is_none_or(|(m, _, _)| metric < *m)
        {
            best = Some((metric, gw, (*dev).to_string()));
        }
    }
    best.map(|(_, gw, dev)| (gw, dev))
}

/// The MAC of `addr` on `dev` in `/proc/net/arp`, if the entry is complete (`ATF_COM`), as `ip neigh` shows an
/// `lladdr` only for resolved entries.
fn proc_arp_lladdr(text: &str, addr: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    const ATF_COM: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (ip, flags, mac, d) = (f.first()?, f.get(2)?, f.get(3)?, f.get(5)?);
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        (ip.parse::<Ipv4Addr>().ok()? == addr && *d == dev && flags & ATF_COM != 0)
            .then(|| parse_mac(mac))
            .flatten()
    })
}

fn pick_default(routes: &[Value]) -> Option<(Ipv4Addr, String)> {
    let mut best: Option<(u64, Ipv4Addr, String)> = None;
    for r in routes {
        let metric = r.get("metric").and_then(Value::as_u64).unwrap_or(0);
        let hop = r
            .get("nexthops")
            .and_then(Value::as_array)
            .and_then(|h| h.first())
            .unwrap_or(r);
        let gw = hop.get("gateway").and_then(Value::as_str).and_then(|s| s.parse().ok());
        let dev = hop.get("dev").or_else(|| r.get("dev")).and_then(Value::as_str);
        if let (Some(gw), Some(dev)) = (gw, dev)
            && best.as_ref().is_none_or(|(m, _, _)| metric < *m)
        {
            best = Some((metric, gw, dev.to_string()));
        }
    }
    best.map(|(_, gw, dev)| (gw, dev))
}

/// The source address the kernel would use toward `dst` (connects a UDP socket, sends nothing).
pub fn source_address_for(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(SocketAddrV4::new(dst, 9)).ok()?;
    match s.local_addr().ok()? {
        std::net::SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}

/// Builds a gratuitous ARP request (RFC 5227 announcement, RFC 5944 §4.6): "`addr` is at `mac`", broadcast.
pub fn gratuitous_arp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    let ip = addr.octets();
    let parts: [&[u8]; 11] = [
        &[0xff; 6],    // destination: broadcast
        &mac,          // source
        &[0x08, 0x06], // EtherType ARP
        &[0x00, 0x01], // hardware type Ethernet
        &[0x08, 0x00], // protocol IPv4
        &[6, 4],       // address lengths
        &[0x00, 0x01], // request
        &mac,          // sender hardware address
        &ip,           // sender protocol address
        &[0; 6],       // target hardware address (unused)
        &ip,           // target protocol address = sender's
    ];
    let mut at = 0;
    for p in parts {
        if let Some(d) = f.get_mut(at..at + p.len()) {
            d.copy_from_slice(p);
        }
        at += p.len();
    }
    f
}

/// Announces that `addr` is at `dev`'s MAC address with one gratuitous ARP request, sent through an AF_PACKET
/// socket (no `arping` needed; needs CAP_NET_RAW). Neighbours update an existing entry for `addr`; they create
/// one only with `arp_accept` set.
pub fn gratuitous_arp(dev: &str, addr: Ipv4Addr) -> Result<(), NetError> {
    let what = format!("gratuitous ARP for {addr} on {dev}");
    let link = link(dev)?.ok_or_else(|| NetError::new(what.clone(), "Cannot find device"))?;
    let mac = link
        .mac
        .ok_or_else(|| NetError::new(what.clone(), "the device has no Ethernet address"))?;
    let frame = gratuitous_arp_frame(mac, addr);
    crate::socket::send_ethernet_frame(link.ifindex, 0x0806, &frame).map_err(|e| NetError::new(what, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_command_and_stderr() {
        let e = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert_eq!(e.command, "sh -c echo oops >&2; exit 3");
        assert_eq!(e.detail, "exit status 3: oops");
        assert_eq!(
            e.to_string(),
            "`sh -c echo oops >&2; exit 3` failed: exit status 3: oops"
        );
        let e = run("/nonexistent/ip", &["link"]).unwrap_err();
        assert!(e.detail.starts_with("cannot run /nonexistent/ip"), "{e}");
        assert!(NetError::new("x", "RTNETLINK answers: No such process").is_missing());
        assert!(NetError::new("x", "RTNETLINK answers: File exists").is_exists());
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
    }

    #[test]
    fn macs() {
        let m = [0x02, 0, 0xab, 0x10, 0xff, 1];
        assert_eq!(mac_string(m), "02:00:ab:10:ff:01");
        assert_eq!(parse_mac("02:00:ab:10:ff:01"), Some(m));
        for bad in [
            "",
            "02:00:ab:10:ff",
            "02:00:ab:10:ff:01:02",
            "02:00:ab:10:ff:zz",
            "002:0:ab:10:ff:01",
            "::::::",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_and_rule_arguments() {
        let r = Route {
            via: Some(Ipv4Addr::new(192, 0, 2, 1)),
            dev: Some("a0".into()),
            src: Some(Ipv4Addr::new(192, 0, 2, 10)),
            table: Some(100),
            metric: Some(5),
            mtu: Some(1400),
            onlink: true,
            ..Route::to("10.10.1.0/24".parse().unwrap())
        };
        assert_eq!(
            r.args().join(" "),
            "10.10.1.0/24 via 192.0.2.1 dev a0 src 192.0.2.10 table 100 metric 5 mtu 1400 onlink"
        );
        let rule = Rule {
            pref: Some(100),
            iif: Some("lo".into()),
            fwmark: Some((1, Some(0xff))),
            from: Some("10.10.1.50/32".parse().unwrap()),
            to: None,
            not: true,
            lookup: 200,
        };
        assert_eq!(
            rule.args().join(" "),
            "not from 10.10.1.50/32 iif lo fwmark 0x1/0xff pref 100 lookup 200"
        );
        assert_eq!(
            Rule {
                lookup: 7,
                ..Rule::default()
            }
            .args()
            .join(" "),
            "lookup 7"
        );
    }

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
        );
        for bad in ["", "net..ipv4", "../etc/passwd", "net/../../etc", "net.ipv4 .x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
        assert_eq!(sysctl_get("kernel.ostype").unwrap(), "Linux");
        let e = sysctl_get("net.ipv4.no_such_key").unwrap_err();
        assert!(e.to_string().contains("sysctl net.ipv4.no_such_key"), "{e}");
    }

    #[test]
    fn proc_net_parsing() {
        let hex = |a: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(a.octets()));
        let gw = Ipv4Addr::new(192, 168, 1, 1);
        let routes = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             a0\t00000000\t{}\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             c1\t00000000\t{}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n\
             c1\t{}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
            hex(Ipv4Addr::new(192, 0, 2, 1)),
            hex(gw),
            hex(Ipv4Addr::new(192, 168, 1, 0)),
        );
        assert_eq!(proc_route_default(&routes), Some((gw, "c1".into())));
        assert_eq!(proc_route_default("Iface\tDestination\n"), None);
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
                   192.168.1.1      0x1         0x2         02:aa:00:00:00:05     *        c1\n\
                   192.168.1.1      0x1         0x0         00:00:00:00:00:00     *        c2\n";
        assert_eq!(proc_arp_lladdr(arp, gw, "c1"), Some([2, 0xaa, 0, 0, 0, 5]));
        assert_eq!(proc_arp_lladdr(arp, gw, "c2"), None);
        assert_eq!(proc_arp_lladdr(arp, Ipv4Addr::new(10, 0, 0, 1), "c1"), None);
    }

    #[test]
    fn json_parsing() {
        let routes: Vec<Value> = serde_json::from_str(
            r#"[{"dst":"default","gateway":"192.0.2.1","dev":"a0","metric":100,"flags":[]},
                {"dst":"default","gateway":"192.168.1.1","dev":"c1","flags":[]},
                {"dst":"default","dev":"tun0","flags":[]},
                {"dst":"default","metric":50,"nexthops":[{"gateway":"198.51.100.1","dev":"d0"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            pick_default(&routes),
            Some((Ipv4Addr::new(192, 168, 1, 1), "c1".into()))
        );
        assert_eq!(
            pick_default(&routes[2..]),
            Some((Ipv4Addr::new(198, 51, 100, 1), "d0".into()))
        );
        assert_eq!(pick_default(&[]), None);
        let addrs: Vec<Value> = serde_json::from_str(
            r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifindex":2,"ifname":"a0","addr_info":[{"local":"192.0.2.10","prefixlen":24},{"local":"bad"}]},
                {"ifname":"x"}]"#,
        )
        .unwrap();
        let got = parse_addresses(&addrs);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            InterfaceAddress {
                dev: "a0".into(),
                addr: Ipv4Addr::new(192, 0, 2, 10),
                prefix_len: 24
            }
        );
        let link: Value = serde_json::from_str(
            r#"{"ifindex":3,"ifname":"a0","flags":["BROADCAST","UP","LOWER_UP"],"mtu":1500,"address":"02:00:00:00:00:01"}"#,
        )
        .unwrap();
        let l = parse_link(&link).unwrap();
        assert_eq!((l.ifindex, l.mtu, l.up, l.lower_up), (3, 1500, true, true));
        assert_eq!(l.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(parse_link(&Value::Null), None);
    }

    #[test]
    fn garp_frame_layout() {
        let f = gratuitous_arp_frame([2, 0, 0, 0, 0, 9], Ipv4Addr::new(10, 10, 1, 50));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[10, 10, 1, 50]);
        assert_eq!(&f[38..42], &[10, 10, 1, 50]);
    }

    #[test]
    fn route_errors_match_the_helpers() {
        use crate::rtnl::RtnlError;
        let e = |errno| NetError::new("ip route del 10.0.0.1/32", RtnlError::Refused(errno, None).to_string());
        assert!(e(libc::EEXIST).is_exists());
        assert!(!e(libc::EEXIST).is_missing());
        for missing in [libc::ESRCH, libc::ENOENT, libc::ENODEV, libc::EADDRNOTAVAIL] {
            assert!(e(missing).is_missing(), "{}", e(missing));
            assert!(!e(missing).is_exists());
        }
        assert!(!e(libc::EPERM).is_missing() && !e(libc::EPERM).is_exists());
        let dev = NetError::new(
            "ip route replace 10.0.0.1/32 dev x0",
            RtnlError::NoDevice("x0".into()).to_string(),
        );
        assert!(dev.is_missing());
    }

    /// Runs `body` on a thread of its own in a new network namespace with loopback and a device `d0` up (a
    /// dummy; a veth `d0`/`d0p` where the kernel has no dummy driver). The namespace and its devices disappear
    /// with the thread, also when the test fails. Needs root, like `io/tests/netns.rs`.
    fn in_netns(body: impl FnOnce() + Send + 'static) {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the route tests need root (CAP_NET_ADMIN): run `cargo test -p mip-io` as root"
        );
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            link_up("lo").expect("ip link set lo up (is iproute2 installed?)");
            if run("ip", &["link", "add", "d0", "type", "dummy"]).is_err() {
                run("ip", &["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]).unwrap();
                link_up("d0p").unwrap();
            }
            link_up("d0").unwrap();
            body();
        });
        if let Err(e) = t.join() {
            std::panic::resume_unwind(e);
        }
    }

    /// The unicast routes to `dst` in `table` (`None`: main) as `ip -j route show table all` shows them (from
    /// the calling thread's namespace: `ip` inherits it).
    fn shown(dst: &str, table: Option<&str>) -> Vec<Value> {
        ip_json(&["route", "show", "table", "all"])
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.get("dst").and_then(Value::as_str) == Some(dst)
                    && r.get("table").and_then(Value::as_str) == table
                    && r.get("type").is_none()
            })
            .collect()
    }

    fn field<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
        r.get(key).and_then(Value::as_str)
    }

    #[test]
    fn routes_over_rtnetlink() {
        in_netns(|| {
            addr_add("d0", Ipv4Addr::new(192, 0, 2, 10), 24).unwrap();
            let p: Prefix = "10.10.1.50/32".parse().unwrap();
            let host = Route {
                dev: Some("d0".into()),
                src: Some(Ipv4Addr::new(192, 0, 2, 10)),
                metric: Some(7),
                mtu: Some(1300),
                ..Route::to(p)
            };
            route_replace_with(&host).unwrap();
            let r = shown("10.10.1.50", None);
            assert_eq!(r.len(), 1, "{r:?}");
            let r = &r[0];
            assert_eq!(field(r, "dev"), Some("d0"), "{r}");
            assert_eq!(field(r, "prefsrc"), Some("192.0.2.10"), "{r}");
            assert_eq!(field(r, "scope"), Some("link"), "{r}");
            assert_eq!(field(r, "protocol"), None, "protocol boot is not shown: {r}");
            assert_eq!(r.get("metric").and_then(Value::as_u64), Some(7), "{r}");
            assert_eq!(r["metrics"][0]["mtu"].as_u64(), Some(1300), "{r}");

            // Idempotent, then replaced in place by a route through a gateway (same destination and metric).
            route_replace_with(&host).unwrap();
            assert_eq!(shown("10.10.1.50", None).len(), 1);
            let via = Route {
                via: Some(Ipv4Addr::new(192, 0, 2, 1)),
                ..host.clone()
            };
            route_replace_with(&via).unwrap();
            let r = shown("10.10.1.50", None);
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(field(&r[0], "gateway"), Some("192.0.2.1"), "{:?}", r[0]);
            assert_eq!(field(&r[0], "scope"), None, "scope universe is not shown: {:?}", r[0]);

            // `Route::to(p)` deletes whatever route to exactly p the main table has; a second delete is missing.
            route_del_with(&Route::to(p)).unwrap();
            assert!(shown("10.10.1.50", None).is_empty());
            let e = route_del_with(&Route::to(p)).unwrap_err();
            assert!(e.is_missing(), "{e}");
            assert!(!e.is_exists(), "{e}");
            assert_eq!(e.command, "ip route del 10.10.1.50/32");
            assert!(e.detail.starts_with("RTNETLINK answers: No such process"), "{e}");
            // Deleting a route the kernel added (protocol kernel, scope link) works too, as with `ip`.
            route_del(p_of("192.0.2.0/24"), None).unwrap();
            assert!(shown("192.0.2.0/24", None).is_empty());
            route_replace(
                p_of("192.0.2.0/24"),
                None,
                Some("d0"),
                Some(Ipv4Addr::new(192, 0, 2, 10)),
                None,
            )
            .unwrap();
            assert_eq!(field(&shown("192.0.2.0/24", None)[0], "prefsrc"), Some("192.0.2.10"));

            // onlink: a gateway no prefix of the device covers.
            let onlink = Route {
                via: Some(Ipv4Addr::new(198, 51, 100, 1)),
                dev: Some("d0".into()),
                onlink: true,
                ..Route::to(p_of("10.10.2.0/24"))
            };
            route_replace_with(&onlink).unwrap();
            let r = shown("10.10.2.0/24", None);
            assert_eq!(r.len(), 1, "{r:?}");
            assert!(
                r[0]["flags"].as_array().unwrap().iter().any(|f| f == "onlink"),
                "{:?}",
                r[0]
            );
            // Without onlink the kernel refuses it, and says why.
            let e = route_replace_with(&Route {
                onlink: false,
                ..onlink.clone()
            })
            .unwrap_err();
            assert!(e.detail.starts_with("RTNETLINK answers: "), "{e}");
            assert!(!e.is_missing() && !e.is_exists(), "{e}");
            println!("refused without onlink: {e}");
            route_del_with(&onlink).unwrap();

            // An unknown device is named.
            let e = route_replace_with(&Route {
                dev: Some("nosuch0".into()),
                ..Route::to(p)
            })
            .unwrap_err();
            assert_eq!(e.command, "ip route replace 10.10.1.50/32 dev nosuch0");
            assert_eq!(e.detail, "Cannot find device \"nosuch0\"");
            assert!(e.is_missing());

            // Other tables: one that fits rtm_table, one that needs RTA_TABLE alone.
            route_replace(p, None, Some("d0"), None, Some(100)).unwrap();
            let r = shown("10.10.1.50", Some("100"));
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(field(&r[0], "dev"), Some("d0"));
            assert!(shown("10.10.1.50", None).is_empty(), "not in main");
            route_replace(p, None, Some("d0"), None, Some(1000)).unwrap();
            assert_eq!(shown("10.10.1.50", Some("1000")).len(), 1);
            route_del(p, Some(100)).unwrap();
            assert!(shown("10.10.1.50", Some("100")).is_empty());
            assert_eq!(
                shown("10.10.1.50", Some("1000")).len(),
                1,
                "only table 100's route went"
            );
            assert!(route_del(p, Some(100)).unwrap_err().is_missing());
            route_del(p, Some(1000)).unwrap();
            assert!(route_del(p, Some(1000)).unwrap_err().is_missing());

            // The default route.
            route_replace(
                "0.0.0.0/0".parse().unwrap(),
                Some(Ipv4Addr::new(192, 0, 2, 1)),
                None,
                None,
                None,
            )
            .unwrap();
            assert_eq!(field(&shown("default", None)[0], "gateway"), Some("192.0.2.1"));
            route_del("0.0.0.0/0".parse().unwrap(), None).unwrap();
            assert!(shown("default", None).is_empty());
        });
    }

    fn p_of(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// Not a check: the cost of a route change, printed (`cargo test -p mip-io --lib route_cost -- --nocapture`).
    #[test]
    fn route_cost() {
        in_netns(|| {
            let n = 1000u32;
            let routes: Vec<Route> = (0..n)
                .map(|i| Route {
                    dev: Some("d0".into()),
                    ..Route::to(Prefix::new(Ipv4Addr::from(0x0ac8_0000 + i), 32).unwrap())
                })
                .collect();
            let t = std::time::Instant::now();
            for r in &routes {
                route_replace_with(r).unwrap();
                route_del_with(r).unwrap();
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(2 * n);
            println!("rtnetlink: {n} route replace+delete pairs, {us:.1} us per operation");
        });
    }

    #[test]
    fn source_address_of_loopback() {
        assert_eq!(source_address_for(Ipv4Addr::LOCALHOST), Some(Ipv4Addr::LOCALHOST));
    }
}

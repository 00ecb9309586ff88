//! Kernel state the proxy needs, installed at start and removed at shutdown.
//!
//! * sysctls: `net.ipv4.ip_forward = 1`; `rp_filter = 0` on `all`, `default` and both TUNs (packets from a
//!   mobile node's home address arrive on the TUN, FINDINGS "rp_filter"); IPv6 off on the TUNs (best effort,
//!   so the kernel's own IPv6 chatter never reaches the data plane). Sysctls are left as they are at shutdown.
//! * TUN `dataplane.tun` (MTU `tun_mtu`, by default `path_mtu` − 32, up) with a route for every home network of
//!   `proxy.home_agents` into it: the kernel forwards packets for home addresses (from the VPN gateway) to the
//!   proxy's downlink, and packets written to it (decapsulated uplink) are forwarded to the VPN gateway
//!   (two-box) or delivered to the local IPsec stack (one-box).
//! * TUN `dataplane.ha_tun` (up): inner packets from home-agent tunnels are injected there. two_box: the policy
//!   rule `iif ha_tun lookup ha_path_table` and `default via vpn_gateway_private` in that table send them to
//!   the VPN gateway's private side. one_box: no rule; the kernel routes them to the local IPsec stack.
//! * Home agents inside a routed home network (the lab's HA at 10.10.1.1 serves 10.10.1.0/24) would be
//!   routed into the TUN too, and relayed requests would never reach them: before the home-network routes go
//!   in, each such HA gets a host route along the path the kernel uses for it now (unless a host route exists).
//! * `dataplane.assign_addresses`: `proxy_public`/32 and `proxy_private`/32 on `lo` (label [`LO_LABEL`]), each
//!   one only if the host does not have it yet, before anything else (the sockets bind to them). An address on
//!   `lo` with our label is a leftover of a run that could not clean up (SIGKILL) and is adopted; an address
//!   the host has otherwise is left alone, at start and at shutdown. The network withdraws the replica from the
//!   shared addresses by following `/readyz` (README "Scale-out"), so they go last, after the drain and the
//!   replication flush.
//!
//! Routes use `ip route replace` (idempotent across a crash and restart); replacing somebody else's route to a
//! home network is logged, and that route is not restored at shutdown. The policy rule is added once (an
//! identical leftover rule is adopted). [`KernelState::remove`] deletes, in reverse order, exactly what was
//! added (and adopted); the TUN devices vanish with their descriptors.

use core::net::Ipv4Addr;

use mip::config::Prefix;
use mip::daemon::{DeploymentMode, ProxyFile};
use mip_io::net::{self, NetError, Route, Rule};
use mip_io::tun::Tun;
use serde_json::Value;

/// The device `dataplane.assign_addresses` puts the shared addresses on.
pub const LOOPBACK: &str = "lo";
/// The label of the addresses the proxy puts on [`LOOPBACK`]: how a later run recognises its leftovers.
pub const LO_LABEL: &str = "lo:mip-proxy";

/// What [`KernelState::install`] set up.
#[derive(Debug)]
pub struct KernelState {
    /// The TUN toward the VPN gateway's public side (home networks route into it).
    pub tun: Tun,
    /// The TUN injecting packets from home-agent tunnels.
    pub ha_tun: Tun,
    routes: Vec<Route>,
    rules: Vec<Rule>,
    addresses: LoopbackAddresses,
}

/// The /32s this run put on (or adopted from a crashed run on) [`LOOPBACK`]; removed on [`remove`](Self::remove)
/// or drop.
#[derive(Debug, Default)]
struct LoopbackAddresses(Vec<Ipv4Addr>);

impl LoopbackAddresses {
    /// Puts each of `addrs` on [`LOOPBACK`] unless the host has it; on error, removes what it added.
    fn assign(addrs: &[Ipv4Addr]) -> Result<LoopbackAddresses, String> {
        let mut out = LoopbackAddresses::default();
        let present = host_addresses()?;
        for &addr in addrs {
            if out.0.contains(&addr) {
                continue;
            }
            match present.iter().find(|(a, _, _)| *a == addr) {
                Some((_, dev, label)) if dev == LOOPBACK && label == LO_LABEL => {
                    tracing::info!(%addr, "address on {LOOPBACK} left by an earlier run; adopted");
                    out.0.push(addr);
                }
                Some((_, dev, _)) => {
                    tracing::info!(%addr, dev = %dev, "address already on the host; left as it is");
                }
                None => {
                    let a = format!("{addr}/32");
                    net::run("ip", &["addr", "add", &a, "dev", LOOPBACK, "label", LO_LABEL]).map_err(err)?;
                    tracing::info!(%addr, "address added to {LOOPBACK}");
                    out.0.push(addr);
                }
            }
        }
        Ok(out)
    }

    fn remove(&mut self) {
        for addr in self.0.drain(..).rev() {
            match net::addr_del(LOOPBACK, addr, 32) {
                Ok(()) => tracing::info!(%addr, "address removed from {LOOPBACK}"),
                Err(e) if e.is_missing() => {}
                Err(e) => tracing::warn!(error = %e, "removing an address"),
            }
        }
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Every IPv4 address of the host: (address, device, label).
fn host_addresses() -> Result<Vec<(Ipv4Addr, String, String)>, String> {
    let text = net::run("ip", &["-j", "-4", "addr", "show"]).map_err(err)?;
    let links: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("ip -j -4 addr show: {e}"))?;
    let mut out = Vec::new();
    for l in &links {
        let dev = l.get("ifname").and_then(Value::as_str).unwrap_or_default();
        for a in l.get("addr_info").and_then(Value::as_array).into_iter().flatten() {
            if let Some(addr) = a.get("local").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                let label = a.get("label").and_then(Value::as_str).unwrap_or(dev);
                out.push((addr, dev.to_string(), label.to_string()));
            }
        }
    }
    Ok(out)
}

/// The home networks to route into the TUN, without duplicates, in configuration order.
pub fn home_networks(file: &ProxyFile) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::new();
    for p in file.proxy.home_agents.iter().flat_map(|h| h.home_networks.iter()) {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}

fn sysctl(key: &str, value: &str) -> Result<(), String> {
    net::sysctl(key, value).map_err(|e| e.to_string())
}

fn err(e: NetError) -> String {
    e.to_string()
}

impl KernelState {
    /// Puts the shared addresses on `lo` (`dataplane.assign_addresses`), opens the TUNs and installs sysctls,
    /// routes and rules. On error everything added so far is removed.
    pub fn install(file: &ProxyFile) -> Result<KernelState, String> {
        let d = &file.dataplane;
        let addresses = if d.assign_addresses {
            LoopbackAddresses::assign(&[file.proxy.proxy_public, file.proxy.proxy_private])?
        } else {
            LoopbackAddresses::default()
        };
        sysctl("net.ipv4.ip_forward", "1")?;
        sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        sysctl("net.ipv4.conf.default.rp_filter", "0")?;

        // Decided before any route into the TUN exists, so the kernel's current path to each HA is known.
        let networks = home_networks(file);
        let pins = home_agent_pins(file, &networks, &d.tun);

        let tun = open_tun(&d.tun, d.tun_mtu())?;
        let ha_tun = open_tun(&d.ha_tun, d.tun_mtu())?;
        let mut state = KernelState {
            tun,
            ha_tun,
            routes: Vec::new(),
            rules: Vec::new(),
            addresses,
        };
        if let Err(e) = state.add_routes(file, &networks, pins) {
            state.remove();
            return Err(e);
        }
        Ok(state)
    }

    fn add_routes(&mut self, file: &ProxyFile, networks: &[Prefix], pins: Vec<Route>) -> Result<(), String> {
        let d = &file.dataplane;
        let tun = self.tun.name().to_string();
        let ha_tun = self.ha_tun.name().to_string();
        for pin in pins {
            net::route_replace_with(&pin).map_err(err)?;
            tracing::info!(route = %describe(&pin), "home agent host route (its home network goes into the TUN)");
            self.routes.push(pin);
        }
        for p in networks {
            if let Some(other) = existing_route(*p, None, &tun) {
                tracing::warn!(prefix = %p, replaced = %other, "replacing an existing route to a home network");
            }
            let route = Route {
                dev: Some(tun.clone()),
                ..Route::to(*p)
            };
            net::route_replace_with(&route).map_err(err)?;
            self.routes.push(route);
        }
        if d.mode == DeploymentMode::TwoBox {
            let via = d
                .vpn_gateway_private
                .ok_or("dataplane.vpn_gateway_private is required in two_box mode")?;
            let default = Prefix::new(Ipv4Addr::UNSPECIFIED, 0).ok_or("0.0.0.0/0 is a prefix")?;
            let route = Route {
                via: Some(via),
                table: Some(d.ha_path_table),
                ..Route::to(default)
            };
            net::route_replace_with(&route).map_err(err)?;
            self.routes.push(route);
            let rule = Rule {
                iif: Some(ha_tun.clone()),
                lookup: d.ha_path_table,
                ..Rule::default()
            };
            match net::rule_add(&rule) {
                Ok(()) => {}
                Err(e) if e.is_exists() => tracing::info!("policy rule for {ha_tun} already present; adopted"),
                Err(e) => return Err(err(e)),
            }
            self.rules.push(rule);
        }
        tracing::info!(
            tun = %tun,
            ha_tun = %ha_tun,
            mode = ?d.mode,
            home_networks = ?networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "kernel state installed"
        );
        Ok(())
    }

    /// Deletes the rules, routes and addresses this state added (newest first). Failures are logged; something
    /// already gone is not a failure.
    pub fn remove(&mut self) {
        for rule in self.rules.drain(..).rev() {
            if let Err(e) = net::rule_del(&rule)
                && !e.is_missing()
            {
                tracing::warn!(error = %e, "removing a policy rule");
            }
        }
        for route in self.routes.drain(..).rev() {
            if let Err(e) = net::route_del_with(&route)
                && !e.is_missing()
            {
                tracing::warn!(error = %e, "removing a route");
            }
        }
        self.addresses.remove();
    }

    /// The addresses, routes and rules currently installed, as `ip` would show them (for logs and tests).
    pub fn describe(&self) -> Vec<String> {
        self.addresses
            .0
            .iter()
            .map(|a| format!("addr {a}/32 dev {LOOPBACK}"))
            .chain(self.routes.iter().map(describe))
            .chain(
                self.rules
                    .iter()
                    .map(|r| format!("rule iif {} lookup {}", r.iif.as_deref().unwrap_or("any"), r.lookup)),
            )
            .collect()
    }
}

impl Drop for KernelState {
    /// A start-up that fails after the state was installed (admin port taken, …) never reaches
    /// [`mip_io::daemon::Service::shutdown`]: the state is removed here then. After `remove` this does nothing.
    fn drop(&mut self) {
        self.remove();
    }
}

fn open_tun(name: &str, mtu: u16) -> Result<Tun, String> {
    let tun = Tun::open(name, mtu).map_err(|e| format!("TUN {name}: {e}"))?;
    // The kernel-assigned name (a `%d` pattern is allowed) is the one the sysctls and routes must use.
    let dev = tun.name().to_string();
    sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"), "0")?;
    if let Err(e) = net::sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "1") {
        tracing::debug!(error = %e, "IPv6 not disabled on {dev}");
    }
    tun.up().map_err(err)?;
    Ok(tun)
}

fn describe(r: &Route) -> String {
    let mut s = r.dest.to_string();
    if let Some(v) = r.via {
        s.push_str(&format!(" via {v}"));
    }
    if let Some(d) = &r.dev {
        s.push_str(&format!(" dev {d}"));
    }
    if let Some(t) = r.table {
        s.push_str(&format!(" table {t}"));
    }
    s
}

/// `ip -j route show exact PREFIX [table T]`: a route to exactly `prefix` that does not go into `our_dev`.
fn existing_route(prefix: Prefix, table: Option<u32>, our_dev: &str) -> Option<String> {
    let p = prefix.to_string();
    let t = table.map_or_else(|| "main".to_string(), |t| t.to_string());
    let text = net::run("ip", &["-j", "-4", "route", "show", "exact", &p, "table", &t]).ok()?;
    let routes: Vec<Value> = serde_json::from_str(&text).ok()?;
    routes
        .iter()
        .find(|r| r.get("dev").and_then(Value::as_str) != Some(our_dev))
        .map(Value::to_string)
}

/// Host routes that keep each home agent inside a routed home network reachable the way it is now.
fn home_agent_pins(file: &ProxyFile, networks: &[Prefix], tun: &str) -> Vec<Route> {
    let mut pins = Vec::new();
    for ha in file.proxy.home_agents.iter().map(|h| h.address) {
        if !networks.iter().any(|p| p.contains(ha)) {
            continue;
        }
        let Some(host) = Prefix::new(ha, 32) else { continue };
        if existing_route(host, None, tun).is_some() {
            continue; // The operator routes it explicitly.
        }
        match route_get(ha) {
            Some((_, Some(dev))) if dev == tun => {
                tracing::warn!(home_agent = %ha, "routed into {tun} (a leftover route?); relayed requests will not reach it");
            }
            Some((via, dev)) if via.is_some() || dev.is_some() => pins.push(Route {
                via,
                dev,
                ..Route::to(host)
            }),
            _ => tracing::warn!(home_agent = %ha, "no route to this home agent; relayed requests will fail"),
        }
    }
    pins
}

/// `ip -j route get ADDR`: gateway and device. `None` when unreachable or local.
fn route_get(addr: Ipv4Addr) -> Option<(Option<Ipv4Addr>, Option<String>)> {
    let text = net::run("ip", &["-j", "-4", "route", "get", &addr.to_string()]).ok()?;
    let routes: Vec<Value> = serde_json::from_str(&text).ok()?;
    let r = routes.first()?;
    if r.get("type").and_then(Value::as_str).is_some_and(|t| t != "unicast") {
        return None;
    }
    if r.get("dev").and_then(Value::as_str) == Some("lo") {
        return None;
    }
    let via = r.get("gateway").and_then(Value::as_str).and_then(|g| g.parse().ok());
    let dev = r.get("dev").and_then(Value::as_str).map(str::to_string);
    Some((via, dev))
}

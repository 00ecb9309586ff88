//! The whole product in the lab: `mip-ha` in ns `ha`, `mip-proxy` in ns `proxy` (two-box) or `vpngw`
//! (one-box), `mip-fa` in `fa1`/`fa2`, `mip-mn` in `mn`, and the two unmodified strongSwan instances (VPN
//! gateway in `vpngw`, VPN client in `mn` with the home address as its IKE and inner address).
//!
//! [`System::start`] writes every daemon's configuration and keys file into the lab's run directory, starts
//! the daemons in dependency order (each must answer `/readyz` on its admin address before the next starts),
//! waits until the MN is registered and brings the VPN up through the Mobile IP tunnel. Every process is a
//! [`ProcessGuard`] recorded with the lab, so a failing test still stops them all.
//!
//! The configurations are the shipped defaults of `deploy/config/*.yaml` (TUN MTUs 1468 = path MTU − 32, lab
//! FINDINGS pitfall 4) except where the lab needs otherwise; each such line says why.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd::{ProcessGuard, poll_until};
use crate::error::{Error, IoContext, Result};
use crate::netns;
use crate::plan::{self, Access};
use crate::strongswan::{Charon, CharonSpec, IkeSa};
use crate::topology::{Lab, Mode};

/// Every daemon's admin HTTP address, inside its own namespace.
pub const ADMIN: &str = "127.0.0.1:9434";
/// The MN-HA security association (between the MN and the proxy, and between the proxy and the HA).
pub const MN_HA_SPI: u32 = 256;
/// MN-HA key (lab only).
pub const MN_HA_KEY: &str = "6d6c61622d6d6e2d68612d6b65792d31";
/// FA-HA SPI (between each foreign agent and the proxy).
pub const FA_HA_SPI: u32 = 300;
/// FA-HA key (lab only).
pub const FA_HA_KEY: &str = "6d6c61622d66612d68612d6b65792d32";
/// How long a daemon may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemons' binaries.
pub const DAEMONS: [&str; 4] = ["mip-proxy", "mip-ha", "mip-mn", "mip-fa"];

/// What differs between lab systems.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// The proxy's NAT keepalive interval granted to nodes behind a NAT (RFC 3519 §3.1; 0 = the RFC's 110 s).
    /// A proxy that lost its bindings is found by the MN's keepalives within this interval.
    pub nat_keepalive_secs: u16,
    /// Start the foreign agents in `fa1` and `fa2` (access networks B and D).
    pub foreign_agents: bool,
    /// Registration lifetime the MN asks for.
    pub lifetime_secs: u16,
    /// Dead-peer detection of both charons (zero = off).
    pub dpd: Duration,
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            nat_keepalive_secs: 10,
            foreign_agents: true,
            lifetime_secs: 600,
            dpd: Duration::ZERO,
        }
    }
}

/// A running system. Dropping it stops everything (the lab's own guard would too).
#[derive(Debug)]
pub struct System {
    dir: PathBuf,
    mode: Mode,
    opts: SystemOptions,
    /// `mip-ha` in ns `ha`.
    pub ha: ProcessGuard,
    /// `mip-proxy` in [`System::proxy_ns`]; `None` while stopped by [`System::stop_proxy`].
    pub proxy: Option<ProcessGuard>,
    /// `mip-fa` in `fa1` and `fa2`, when [`SystemOptions::foreign_agents`].
    pub fas: Vec<ProcessGuard>,
    /// `mip-mn` in ns `mn`.
    pub mn: ProcessGuard,
    /// The VPN gateway in ns `vpngw`.
    pub gateway: Charon,
    /// The VPN client in ns `mn`.
    pub client: Charon,
}

/// Finds a workspace binary (`name`): `$MIP_BIN_DIR/name`, or next to the running binary, or one directory up
/// (where cargo puts binaries relative to `target/<profile>/deps/<test>`).
pub fn find_bin(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MIP_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Usage(format!("MIP_BIN_DIR has no `{name}` ({})", p.display())))
        };
    }
    let exe = std::env::current_exe().ctx(|| "locating the running binary".into())?;
    let candidates = [
        exe.parent().map(|d| d.join(name)),
        exe.parent().and_then(Path::parent).map(|d| d.join(name)),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).ok_or_else(|| {
        Error::Usage(format!(
            "cannot find the `{name}` binary next to {}: build the daemons first (cargo build --workspace \
             --bins, with the same profile) or set MIP_BIN_DIR",
            exe.display()
        ))
    })
}

/// `GET path` from the admin server of the daemon in `ns` (full namespace name); the body when the status is
/// 200.
pub fn admin_get(ns: &str, path: &str) -> Result<String> {
    let (status, body) = admin_request(ns, path)?;
    if status != 200 {
        return Err(Error::Usage(format!("[{ns}] GET {path}: HTTP {status}: {body}")));
    }
    Ok(body)
}

/// `GET path` from the admin server in `ns`: (status, body).
pub fn admin_request(ns: &str, path: &str) -> Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    let what = format!("[{ns}] GET {path}");
    let what2 = what.clone();
    let raw = netns::run_in(ns, move || {
        let addr: SocketAddr = ADMIN.parse().map_err(|_| Error::Usage("bad admin address".into()))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ctx(|| what2.clone())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ctx(|| what2.clone())?;
        s.write_all(req.as_bytes()).ctx(|| what2.clone())?;
        let mut out = String::new();
        s.read_to_string(&mut out).ctx(|| what2.clone())?;
        Ok(out)
    })?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Usage(format!("{what}: not an HTTP response: {head}")))?;
    Ok((status, body.to_owned()))
}

/// The value of one Prometheus series (`name{labels}` exactly as exposed), summed over repeated lines; 0 when
/// absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == series)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The sum of every series of metric `name` whose labels contain all of `labels` (e.g. `path="up"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).ctx(|| format!("chmod {}", path.display()))
}

fn daemon_section(keys: &Path) -> String {
    format!(
        "daemon:\n  keys_file: {}\n  admin: {ADMIN}\n  log_format: text\n",
        keys.display()
    )
}

impl System {
    /// The namespace `mip-proxy` runs in.
    pub fn proxy_ns(&self) -> &'static str {
        proxy_ns(self.mode)
    }

    /// The directory with configs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts every daemon and the VPN, with the MN attached where the lab has it now.
    pub fn start(lab: &mut Lab, opts: SystemOptions) -> Result<System> {
        let dir = lab.run_dir().join("system");
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mode = lab.mode();
        if mode == Mode::Replicas {
            return Err(Error::Usage(
                "System::start: the Replicas lab mode is topology only so far (issue 5); no daemons for it yet".into(),
            ));
        }
        write_configs(&dir, mode, &opts)?;

        let ha = start_daemon(lab, &dir, "ha", "mip-ha", "ha")?;
        let proxy = start_daemon(lab, &dir, proxy_ns(mode), "mip-proxy", "proxy")?;
        let mut fas = Vec::new();
        if opts.foreign_agents {
            fas.push(start_daemon(lab, &dir, "fa1", "mip-fa", "fa1")?);
            fas.push(start_daemon(lab, &dir, "fa2", "mip-fa", "fa2")?);
        }
        let mn = start_daemon(lab, &dir, "mn", "mip-mn", "mn")?;
        wait_registered(lab, Duration::from_secs(10))?;

        let gw_spec = match mode {
            Mode::TwoBox | Mode::Replicas => CharonSpec::proxy_gateway(opts.dpd),
            Mode::OneBox => CharonSpec::onebox_gateway(opts.dpd),
        };
        let gateway = Charon::start(lab, "vpngw", "vpngw", &gw_spec)?;
        let client = Charon::start(lab, "mn", "mn", &CharonSpec::proxy_client(opts.dpd))?;
        client.initiate(Duration::from_secs(10))?;
        client.wait_up(Duration::from_secs(5))?;
        Ok(System {
            dir,
            mode,
            opts,
            ha,
            proxy: Some(proxy),
            fas,
            mn,
            gateway,
            client,
        })
    }

    /// Stops `mip-proxy` (SIGTERM, as an orchestrator would).
    pub fn stop_proxy(&mut self) -> Option<std::process::ExitStatus> {
        self.proxy.take().and_then(|mut p| p.stop())
    }

    /// Starts `mip-proxy` again with the same configuration.
    pub fn start_proxy(&mut self, lab: &Lab) -> Result<()> {
        self.proxy = Some(start_daemon(lab, &self.dir, proxy_ns(self.mode), "mip-proxy", "proxy")?);
        Ok(())
    }

    /// The options the system was started with.
    pub fn options(&self) -> &SystemOptions {
        &self.opts
    }

    /// Both charons' IKE SAs (client, gateway), for before/after comparisons of SPIs.
    pub fn sas(&self) -> Result<(Vec<IkeSa>, Vec<IkeSa>)> {
        Ok((self.client.list_sas()?, self.gateway.list_sas()?))
    }

    /// Stops everything (daemons and charons); also done on drop.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.client.stop();
        self.gateway.stop();
        self.mn.stop();
        for fa in &mut self.fas {
            fa.stop();
        }
        if let Some(p) = &mut self.proxy {
            p.stop();
        }
        self.ha.stop();
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The namespace `mip-proxy` runs in for a mode.
pub fn proxy_ns(mode: Mode) -> &'static str {
    match mode {
        Mode::TwoBox => "proxy",
        Mode::OneBox => "vpngw",
        // The first replica (System::start refuses this mode so far).
        Mode::Replicas => "px1",
    }
}

fn start_daemon(lab: &Lab, dir: &Path, ns: &str, bin: &str, name: &str) -> Result<ProcessGuard> {
    let exe = find_bin(bin)?;
    let config = dir.join(format!("{name}.yaml"));
    let log = dir.join(format!("{name}.log"));
    let exe_s = exe.display().to_string();
    let config_s = config.display().to_string();
    let mut guard = lab.spawn(ns, &[&exe_s, "--config", &config_s], &log)?;
    let full = lab.ns(ns);
    poll_until(
        &format!("{bin} in {full} to answer /readyz"),
        READY_TIMEOUT,
        Duration::from_millis(10),
        || {
            if !guard.is_running() {
                return Err(Error::Usage(format!(
                    "{bin} in {full} exited during start-up: {}",
                    guard.log_tail(3000)
                )));
            }
            Ok(matches!(admin_request(&full, "/readyz"), Ok((200, _))).then_some(()))
        },
    )?;
    Ok(guard)
}

/// The string at JSON pointer `ptr` in `v`.
pub fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The MN's `/bindings` object.
pub fn mn_state(lab: &Lab) -> Result<Value> {
    let body = admin_get(&lab.ns("mn"), "/bindings")?;
    serde_json::from_str(&body).map_err(|e| Error::Usage(format!("MN /bindings is not JSON ({e}): {body}")))
}

/// Waits until the MN reports `registered`; returns its `/bindings` object.
pub fn wait_registered(lab: &Lab, timeout: Duration) -> Result<Value> {
    poll_until("the MN to be registered", timeout, Duration::from_millis(5), || {
        let v = mn_state(lab)?;
        Ok((text(&v, "/state") == Some("registered")).then_some(v))
    })
}

/// Waits until the MN is registered with care-of address `coa`; returns the time it took.
pub fn wait_registered_at(lab: &Lab, coa: Ipv4Addr, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let want = coa.to_string();
    poll_until(
        &format!("the MN to be registered with care-of address {coa}"),
        timeout,
        Duration::from_millis(2),
        || {
            let v = mn_state(lab)?;
            Ok(
                (text(&v, "/state") == Some("registered") && text(&v, "/care_of_address") == Some(want.as_str()))
                    .then_some(()),
            )
        },
    )?;
    Ok(start.elapsed())
}

/// Waits until the MN is registered on `access`: attached through that network's interface, with its care-of
/// address (C1 and C2 share the address, so the interface tells a fresh registration from the previous one);
/// returns the time it took.
pub fn wait_registered_on(lab: &Lab, access: Access, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let coa = care_of_address(access).to_string();
    poll_until(
        &format!("the MN to be registered on {access} ({coa} via {})", access.iface()),
        timeout,
        Duration::from_millis(2),
        || {
            let v = mn_state(lab)?;
            Ok((text(&v, "/state") == Some("registered")
                && text(&v, "/care_of_address") == Some(coa.as_str())
                && text(&v, "/attachment/device") == Some(access.iface()))
            .then_some(()))
        },
    )?;
    Ok(start.elapsed())
}

/// The care-of address the MN registers on each access network.
pub fn care_of_address(access: Access) -> Ipv4Addr {
    match access {
        Access::A => Ipv4Addr::new(192, 0, 2, 10),
        Access::C1 | Access::C2 => Ipv4Addr::new(192, 168, 1, 10),
        Access::B => plan::FA1_COA,
        Access::D => plan::FA2_ROUTED,
    }
}

fn write_configs(dir: &Path, mode: Mode, opts: &SystemOptions) -> Result<()> {
    // Keys: the MN and the HA share the MN-HA SA with the proxy (which acts as the HA toward the MN and as the
    // MN toward the HA); the FAs share FA-HA SAs with the proxy.
    let mn_ha = format!(
        "  - home_address: {}\n    spi: {MN_HA_SPI}\n    key: {MN_HA_KEY}\n",
        plan::HOA
    );
    let fa_ha = |peer: Ipv4Addr| format!("  - peer: {peer}\n    spi: {FA_HA_SPI}\n    key: {FA_HA_KEY}\n");
    let keys = |name: &str, body: String| -> Result<PathBuf> {
        let p = dir.join(format!("{name}.keys.yaml"));
        write_private(&p, &format!("security_associations:\n{body}"))?;
        Ok(p)
    };
    // FA 2 sits behind NAT 3: its requests reach the proxy from NAT 3's public address, and the proxy finds
    // its SA by the care-of address in the request (spec §5: FA-HA behind a NAT).
    let proxy_keys = keys(
        "proxy",
        format!("{mn_ha}{}{}", fa_ha(plan::FA1_COA), fa_ha(plan::FA2_ROUTED)),
    )?;
    let ha_keys = keys("ha", mn_ha.clone())?;
    let mn_keys = keys("mn", mn_ha)?;
    let fa1_keys = keys("fa1", fa_ha(plan::PROXY_PUBLIC))?;
    let fa2_keys = keys("fa2", fa_ha(plan::PROXY_PUBLIC))?;

    let (mode_name, private) = match mode {
        Mode::TwoBox | Mode::Replicas => ("two_box", format!("  vpn_gateway_private: {}\n", plan::VPNGW_PRIVATE)),
        Mode::OneBox => ("one_box", String::new()),
    };
    let proxy = format!(
        "proxy:
  proxy_public: {public}
  proxy_private: {private_addr}
  home_agents:
    - address: {ha}
      home_networks: [{home}]
  nat:
    # Short keepalives: a NAT that re-maps silently, or a proxy that lost its bindings, is found by the MN's
    # keepalives within this interval (RFC 3519 §3.1 allows the agent to choose it).
    keepalive: {ka}
dataplane:
  mode: {mode_name}
  vpn_gateways: [{gw}]
{private}  tun: mipp0
  ha_tun: mipp1
{daemon}",
        public = plan::PROXY_PUBLIC,
        private_addr = plan::PROXY_PRIVATE,
        ha = plan::HA_HOME,
        home = plan::HOME_NET,
        ka = opts.nat_keepalive_secs,
        gw = plan::VPNGW_PUBLIC,
        daemon = daemon_section(&proxy_keys),
    );
    fs::write(dir.join("proxy.yaml"), proxy).ctx(|| "writing proxy.yaml".into())?;

    let ha = format!(
        "ha:
  address: {ha}
  home_networks: [{home}]
dataplane:
  tun: miph0
{daemon}",
        ha = plan::HA_HOME,
        home = plan::HOME_NET,
        daemon = daemon_section(&ha_keys),
    );
    fs::write(dir.join("ha.yaml"), ha).ctx(|| "writing ha.yaml".into())?;

    let mn = format!(
        "mn:
  home_address: {hoa}
  home_agent: {proxy}
  actual_home_agent: {ha}
  spi: {MN_HA_SPI}
  lifetime: {lifetime}
dataplane:
  tun: mip0
  tunnelled: [{gw}/32]
{daemon}",
        hoa = plan::HOA,
        proxy = plan::PROXY_PUBLIC,
        ha = plan::HA_HOME,
        lifetime = opts.lifetime_secs,
        gw = plan::VPNGW_PUBLIC,
        daemon = daemon_section(&mn_keys),
    );
    fs::write(dir.join("mn.yaml"), mn).ctx(|| "writing mn.yaml".into())?;

    for (name, visited, routed, behind_nat, keys) in [
        ("fa1", plan::FA1_VISITED, plan::FA1_COA, false, &fa1_keys),
        ("fa2", plan::FA2_VISITED, plan::FA2_ROUTED, true, &fa2_keys),
    ] {
        let fa = format!(
            "fa:
  visited_address: {visited}
  routed_address: {routed}
  care_of_addresses: [{routed}]
  behind_nat: {behind_nat}
  advertisement:
    interval_ms: 1000
    lifetime: 3
dataplane:
  visited_interface: mn
  tun: mipf0
{daemon}",
            daemon = daemon_section(keys),
        );
        fs::write(dir.join(format!("{name}.yaml")), fa).ctx(|| format!("writing {name}.yaml"))?;
    }
    Ok(())
}

//! The whole product in the lab: `mip-ha` in ns `ha`, `mip-proxy` in ns `proxy` (two-box) or `vpngw`
//! (one-box) or in each of `px1`..`px3` (replicas, behind the ECMP router), `mip-fa` in `fa1`/`fa2`, `mip-mn`
//! in `mn`, and the two unmodified strongSwan instances (VPN gateway in `vpngw`, VPN client in `mn` with the
//! home address as its IKE and inner address).
//!
//! Replicas mode: each replica relays registrations from its own LAN node address (`node_address`, so the
//! HA's reply returns to the replica holding the pending entry) and replicates its bindings and replay state
//! to the others over gRPC with mTLS (certificates made with `openssl` in the run directory, each with the
//! replica's LAN address as IP SAN); the ECMP router's next hops are the running replicas.
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

/// gRPC port of replication between proxy replicas (on each replica's LAN node address).
pub const REPLICATION_PORT: u16 = 7443;

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
    /// Replicas mode: how many of `px1`..`px3` run `mip-proxy` (1 to 3; the ECMP next hops are set to them).
    pub replicas: usize,
    /// Synthetic nodes known to the proxy and the HA (MN-HA SAs for `plan::storm_hoa(0..n)`, home network
    /// `plan::STORM_NET`), for registration storms (`crate::storm`). At most `plan::STORM_MAX`.
    pub storm_nodes: u32,
    /// `mip-proxy`'s SIGTERM drain (`daemon.drain_ms`): serving, not ready, this long before it exits.
    pub proxy_drain: Duration,
    /// Run the (single) proxy with a configuration from elsewhere (the operator's ConfigMap) instead of the
    /// lab's own.
    pub proxy_override: Option<ProxyOverride>,
    /// OTLP/gRPC collector (`http://HOST:PORT`) the proxies, the HA and the MN export their traces to
    /// (`daemon.tracing.endpoint`); None: no trace export.
    pub tracing_endpoint: Option<String>,
    /// `daemon.tracing.sampling_ratio` of every daemon (0.0 to 1.0) when `tracing_endpoint` is set; None: the
    /// daemons' default (1.0, every registration).
    pub tracing_sampling_ratio: Option<f64>,
}

/// A `mip-proxy` configuration made elsewhere, run as a pod would run it. Two things change, as the kubelet's
/// volume mounts and the downward API would: `daemon.keys_file` points at the lab's copy of `keys_yaml` (the
/// mounted Secret), and the process gets `env` (e.g. `MIP_NODE_ADDRESS`).
#[derive(Clone, Default)]
pub struct ProxyOverride {
    /// `proxy.yaml` as written (a serialised `mip::daemon::ProxyFile`).
    pub config_yaml: String,
    /// The keys file (the Secret's `keys.yaml`).
    pub keys_yaml: String,
    /// Environment of the proxy process.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ProxyOverride {
    /// Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOverride")
            .field("config_yaml", &self.config_yaml)
            .field("keys_yaml", &format_args!("<{} bytes>", self.keys_yaml.len()))
            .field("env", &self.env)
            .finish()
    }
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            nat_keepalive_secs: 10,
            foreign_agents: true,
            lifetime_secs: 600,
            dpd: Duration::ZERO,
            replicas: 3,
            storm_nodes: 0,
            proxy_drain: Duration::ZERO,
            proxy_override: None,
            tracing_endpoint: None,
            tracing_sampling_ratio: None,
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
    /// `mip-proxy`: one per replica (index 0 in [`System::proxy_ns`]; in Replicas mode index `i` in
    /// [`System::replica_ns`]`(i)`); `None` while stopped.
    pub proxies: Vec<Option<ProcessGuard>>,
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
    let addr: SocketAddr = ADMIN.parse().map_err(|_| Error::Usage("bad admin address".into()))?;
    admin_request_at(ns, addr, path)
}

/// `GET path` from namespace `ns` to the admin server at `addr` (in `ns` or reached through the lab's
/// networks): (status, body).
pub fn admin_request_at(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    let what = format!("[{ns}] GET http://{addr}{path}");
    let what2 = what.clone();
    let raw = netns::run_in(ns, move || {
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

/// `daemon.tracing` lines (under `daemon:`) when `opts` names a collector.
fn tracing_section(opts: &SystemOptions) -> String {
    let ratio = opts
        .tracing_sampling_ratio
        .map(|r| format!("    sampling_ratio: {r:?}\n"))
        .unwrap_or_default();
    opts.tracing_endpoint
        .as_ref()
        .map(|e| format!("  tracing:\n    endpoint: {e}\n{ratio}"))
        .unwrap_or_default()
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
        let count = match mode {
            Mode::Replicas if (1..=plan::REPLICA_NS.len()).contains(&opts.replicas) => opts.replicas,
            Mode::Replicas => {
                return Err(Error::Usage(format!(
                    "SystemOptions::replicas is {}; the lab has 1 to {} replicas",
                    opts.replicas,
                    plan::REPLICA_NS.len()
                )));
            }
            Mode::TwoBox | Mode::OneBox => 1,
        };
        if opts.proxy_override.is_some() && mode == Mode::Replicas {
            return Err(Error::Usage(
                "SystemOptions::proxy_override runs one proxy; not in Replicas mode".into(),
            ));
        }
        if opts.storm_nodes > plan::STORM_MAX {
            return Err(Error::Usage(format!(
                "SystemOptions::storm_nodes is {}; {} holds at most {}",
                opts.storm_nodes,
                plan::STORM_NET,
                plan::STORM_MAX
            )));
        }
        write_configs(&dir, mode, count, &opts)?;
        if mode == Mode::Replicas {
            lab.set_replica_nexthops(&(0..count).collect::<Vec<_>>())?;
        }

        let ha = start_daemon(lab, &dir, "ha", "mip-ha", "ha")?;
        // Replicas wait for each other's snapshots before they are ready: spawn them all, then wait.
        let mut spawned = Vec::new();
        for i in 0..count {
            spawned.push(spawn_proxy(lab, &dir, mode, i, &opts)?);
        }
        let mut proxies = Vec::new();
        for (i, mut guard) in spawned.into_iter().enumerate() {
            wait_ready(lab, &mut guard, replica_ns(mode, i), "mip-proxy")?;
            proxies.push(Some(guard));
        }
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
            proxies,
            fas,
            mn,
            gateway,
            client,
        })
    }

    /// Stops `mip-proxy` (SIGTERM, as an orchestrator would).
    pub fn stop_proxy(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_replica(0)
    }

    /// Starts `mip-proxy` again with the same configuration.
    pub fn start_proxy(&mut self, lab: &Lab) -> Result<()> {
        self.start_replica(lab, 0)
    }

    /// How many proxies the system has (1, or the replicas in Replicas mode).
    pub fn replica_count(&self) -> usize {
        self.proxies.len()
    }

    /// The namespace (short name) of proxy replica `i` (`px1`.. in Replicas mode; else [`System::proxy_ns`]).
    pub fn replica_ns(&self, i: usize) -> &'static str {
        replica_ns(self.mode, i)
    }

    /// The running `mip-proxy` of replica `i`, if any.
    pub fn replica(&mut self, i: usize) -> Option<&mut ProcessGuard> {
        self.proxies.get_mut(i).and_then(Option::as_mut)
    }

    /// SIGTERM to replica `i` and wait for it to exit (its drain, then its flush; SIGKILL after
    /// `cmd::STOP_GRACE` plus the drain).
    pub fn stop_replica(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut p = self.proxies.get_mut(i).and_then(Option::take)?;
        if p.signal(nix::sys::signal::Signal::SIGTERM).is_err() {
            return p.stop();
        }
        let deadline = Instant::now() + self.opts.proxy_drain + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !p.is_running() {
                return p.exit_status();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        p.stop()
    }

    /// SIGKILL to replica `i` (a crash: no drain, no flush, its kernel state left behind) and reap it.
    pub fn kill_replica(&mut self, i: usize) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut p) = self.proxies.get_mut(i).and_then(Option::take) else {
            return Err(Error::Usage(format!("replica {i} is not running")));
        };
        p.signal(nix::sys::signal::Signal::SIGKILL)?;
        Ok(p.stop())
    }

    /// Starts replica `i` again with the same configuration; returns once it answers `/readyz` with 200 (for
    /// a replica: once it has caught up with its peers).
    pub fn start_replica(&mut self, lab: &Lab, i: usize) -> Result<()> {
        let slot = self
            .proxies
            .get_mut(i)
            .ok_or_else(|| Error::Usage(format!("no replica {i}")))?;
        if slot.is_some() {
            return Err(Error::Usage(format!("replica {i} is running")));
        }
        let ns = replica_ns(self.mode, i);
        let mut guard = spawn_proxy(lab, &self.dir, self.mode, i, &self.opts)?;
        wait_ready(lab, &mut guard, ns, "mip-proxy")?;
        *slot = Some(guard);
        Ok(())
    }

    /// Spawns replica `i` again without waiting for readiness (to watch it catch up).
    pub fn spawn_replica(&mut self, lab: &Lab, i: usize) -> Result<()> {
        let guard = spawn_proxy(lab, &self.dir, self.mode, i, &self.opts)?;
        match self.proxies.get_mut(i) {
            Some(slot @ None) => {
                *slot = Some(guard);
                Ok(())
            }
            _ => Err(Error::Usage(format!("replica {i} is running or does not exist"))),
        }
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
        for p in self.proxies.iter_mut().flatten() {
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

/// The namespace `mip-proxy` runs in for a mode (the first replica's in Replicas mode).
pub fn proxy_ns(mode: Mode) -> &'static str {
    replica_ns(mode, 0)
}

/// The namespace of proxy replica `i`.
fn replica_ns(mode: Mode, i: usize) -> &'static str {
    match mode {
        Mode::TwoBox => "proxy",
        Mode::OneBox => "vpngw",
        Mode::Replicas => plan::REPLICA_NS.get(i).copied().unwrap_or("px1"),
    }
}

/// The config/log file stem of proxy replica `i`.
fn proxy_name(mode: Mode, i: usize) -> String {
    match mode {
        Mode::TwoBox | Mode::OneBox => "proxy".into(),
        Mode::Replicas => format!("proxy-{}", replica_ns(mode, i)),
    }
}

fn start_daemon(lab: &Lab, dir: &Path, ns: &str, bin: &str, name: &str) -> Result<ProcessGuard> {
    let mut guard = spawn_daemon(lab, dir, ns, bin, name)?;
    wait_ready(lab, &mut guard, ns, bin)?;
    Ok(guard)
}

fn spawn_daemon(lab: &Lab, dir: &Path, ns: &str, bin: &str, name: &str) -> Result<ProcessGuard> {
    spawn_with_env(lab, dir, ns, bin, name, &[])
}

/// Proxy replica `i`, with the override's environment if there is one.
fn spawn_proxy(lab: &Lab, dir: &Path, mode: Mode, i: usize, opts: &SystemOptions) -> Result<ProcessGuard> {
    let env = opts.proxy_override.as_ref().map_or(&[][..], |o| o.env.as_slice());
    spawn_with_env(lab, dir, replica_ns(mode, i), "mip-proxy", &proxy_name(mode, i), env)
}

fn spawn_with_env(
    lab: &Lab,
    dir: &Path,
    ns: &str,
    bin: &str,
    name: &str,
    env: &[(String, String)],
) -> Result<ProcessGuard> {
    let exe = find_bin(bin)?;
    let config = dir.join(format!("{name}.yaml"));
    let log = dir.join(format!("{name}.log"));
    let exe_s = exe.display().to_string();
    let config_s = config.display().to_string();
    let argv = [exe_s.as_str(), "--config", config_s.as_str()];
    let mut cmd = crate::cmd::Cmd::in_ns(&lab.ns(ns), argv);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    lab.spawn_cmd(&argv.join(" "), cmd, &log)
}

fn wait_ready(lab: &Lab, guard: &mut ProcessGuard, ns: &str, bin: &str) -> Result<()> {
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
    )
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

/// The proxy's keys file in the lab (MN-HA SA of the MN and of every storm node, FA-HA SAs of both FAs): what a
/// HomeAgent's Secret would hold for this lab.
pub fn lab_proxy_keys(opts: &SystemOptions) -> String {
    let (mn_ha, storm) = mn_ha_sas(opts);
    // FA 2 sits behind NAT 3: its requests reach the proxy from NAT 3's public address, and the proxy finds
    // its SA by the care-of address in the request (spec §5: FA-HA behind a NAT).
    format!(
        "security_associations:\n{mn_ha}{storm}{}{}",
        fa_ha_sa(plan::FA1_COA),
        fa_ha_sa(plan::FA2_ROUTED)
    )
}

fn fa_ha_sa(peer: Ipv4Addr) -> String {
    format!("  - peer: {peer}\n    spi: {FA_HA_SPI}\n    key: {FA_HA_KEY}\n")
}

/// The MN's MN-HA SA and the storm nodes' (keys-file list entries).
fn mn_ha_sas(opts: &SystemOptions) -> (String, String) {
    let mn_ha = format!(
        "  - home_address: {}\n    spi: {MN_HA_SPI}\n    key: {MN_HA_KEY}\n",
        plan::HOA
    );
    // The synthetic nodes of registration storms share the MN-HA key (the lab's; each node has its own SA).
    let mut storm = String::with_capacity(opts.storm_nodes as usize * 80);
    for i in 0..opts.storm_nodes {
        storm.push_str(&format!(
            "  - home_address: {}\n    spi: {MN_HA_SPI}\n    key: {MN_HA_KEY}\n",
            plan::storm_hoa(i)
        ));
    }
    (mn_ha, storm)
}

fn write_configs(dir: &Path, mode: Mode, replicas: usize, opts: &SystemOptions) -> Result<()> {
    // Keys: the MN and the HA share the MN-HA SA with the proxy (which acts as the HA toward the MN and as the
    // MN toward the HA); the FAs share FA-HA SAs with the proxy.
    let (mn_ha, storm) = mn_ha_sas(opts);
    let home_networks = if opts.storm_nodes > 0 {
        format!("{}, {}", plan::HOME_NET, plan::STORM_NET)
    } else {
        plan::HOME_NET.to_owned()
    };
    let fa_ha = fa_ha_sa;
    let keys = |name: &str, body: String| -> Result<PathBuf> {
        let p = dir.join(format!("{name}.keys.yaml"));
        write_private(&p, &format!("security_associations:\n{body}"))?;
        Ok(p)
    };
    let proxy_keys = dir.join("proxy.keys.yaml");
    write_private(&proxy_keys, &lab_proxy_keys(opts))?;
    let ha_keys = keys("ha", format!("{mn_ha}{storm}"))?;
    let mn_keys = keys("mn", mn_ha)?;
    let fa1_keys = keys("fa1", fa_ha(plan::PROXY_PUBLIC))?;
    let fa2_keys = keys("fa2", fa_ha(plan::PROXY_PUBLIC))?;

    let (mode_name, private) = match mode {
        Mode::TwoBox | Mode::Replicas => ("two_box", format!("  vpn_gateway_private: {}\n", plan::VPNGW_PRIVATE)),
        Mode::OneBox => ("one_box", String::new()),
    };
    let tls = if mode == Mode::Replicas {
        Some(replica_certificates(dir, replicas)?)
    } else {
        None
    };
    for i in 0..replicas {
        // Replicas: relay from the replica's own LAN address (the HA's reply must reach the replica holding
        // the pending entry), replicate to every other replica over mTLS, drain on SIGTERM.
        let (node_address, replication) = match (&tls, plan::REPLICA_LAN.get(i)) {
            (Some(tls), Some(node)) => {
                let peers: Vec<String> = plan::REPLICA_LAN
                    .iter()
                    .take(replicas)
                    .map(|a| format!("{a}:{REPLICATION_PORT}"))
                    .collect();
                let replication = format!(
                    "replication:
  replica_id: {id}
  listen: {node}:{REPLICATION_PORT}
  peers:
    static: [{peers}]
  tls:
    cert: {tls}/{ns}.crt
    key: {tls}/{ns}.key
    ca: {tls}/ca.crt
  # Lab timings: digests every second repair gaps fast; a replica whose peers are all gone is ready after 5 s.
  digest_interval_ms: 1000
  reconnect_ms: 100
  catchup_timeout_ms: 5000
  flush_timeout_ms: 1000
",
                    id = i + 1,
                    peers = peers.join(", "),
                    tls = tls.display(),
                    ns = replica_ns(mode, i),
                );
                (format!("  node_address: {node}\n"), replication)
            }
            _ => (String::new(), String::new()),
        };
        let proxy = format!(
            "proxy:
  proxy_public: {public}
  proxy_private: {private_addr}
{node_address}  home_agents:
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
{daemon}  drain_ms: {drain}
{tracing}{replication}",
            public = plan::PROXY_PUBLIC,
            private_addr = plan::PROXY_PRIVATE,
            ha = plan::HA_HOME,
            home = home_networks,
            ka = opts.nat_keepalive_secs,
            gw = plan::VPNGW_PUBLIC,
            daemon = daemon_section(&proxy_keys),
            drain = opts.proxy_drain.as_millis(),
            tracing = tracing_section(opts),
        );
        let name = proxy_name(mode, i);
        fs::write(dir.join(format!("{name}.yaml")), proxy).ctx(|| format!("writing {name}.yaml"))?;
    }
    if let Some(o) = &opts.proxy_override {
        write_override(dir, &proxy_name(mode, 0), o)?;
    }

    let ha = format!(
        "ha:
  address: {ha}
  home_networks: [{home}]
dataplane:
  tun: miph0
{daemon}{tracing}",
        ha = plan::HA_HOME,
        home = home_networks,
        daemon = daemon_section(&ha_keys),
        tracing = tracing_section(opts),
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
{daemon}{tracing}",
        hoa = plan::HOA,
        proxy = plan::PROXY_PUBLIC,
        ha = plan::HA_HOME,
        lifetime = opts.lifetime_secs,
        gw = plan::VPNGW_PUBLIC,
        daemon = daemon_section(&mn_keys),
        tracing = tracing_section(opts),
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

/// A CA and one certificate per replica (EC P-256, the replica's LAN address as IP SAN, server and client
/// use: the same certificate serves and dials) in `dir/tls`, made with `openssl`; returns the directory.
fn replica_certificates(dir: &Path, replicas: usize) -> Result<PathBuf> {
    let tls = dir.join("tls");
    fs::create_dir_all(&tls).ctx(|| format!("creating {}", tls.display()))?;
    let path = |name: &str| tls.join(name).display().to_string();
    let (ca_key, ca_crt) = (path("ca.key"), path("ca.crt"));
    openssl_ec_cert(
        &ca_key,
        &ca_crt,
        "/CN=mip lab replication CA",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    )?;
    for (ns, addr) in plan::REPLICA_NS.iter().zip(plan::REPLICA_LAN).take(replicas) {
        let (key, crt) = (path(&format!("{ns}.key")), path(&format!("{ns}.crt")));
        let san = format!("subjectAltName=IP:{addr}");
        openssl_ec_cert(
            &key,
            &crt,
            &format!("/CN=mip-proxy {ns}"),
            &[
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-addext",
                &san,
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
            ],
        )?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).ctx(|| format!("chmod {key}"))?;
    }
    Ok(tls)
}

/// `openssl req -x509` with a new EC P-256 key (`key`, unencrypted) and a 2-day certificate (`crt`) for `subj`,
/// plus `extra` arguments (signing CA, extensions).
fn openssl_ec_cert(key: &str, crt: &str, subj: &str, extra: &[&str]) -> Result<()> {
    let mut argv = vec![
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        crt,
        "-days",
        "2",
        "-subj",
        subj,
    ];
    argv.extend_from_slice(extra);
    crate::cmd::run(None, &argv).map(drop)
}

/// Writes an outside configuration as proxy `name`'s: its keys to `name.override-keys.yaml` (0600) and its
/// `proxy.yaml` with `daemon.keys_file` pointing there (parsed and re-serialised with the daemon's own types, so
/// nothing else changes).
fn write_override(dir: &Path, name: &str, o: &ProxyOverride) -> Result<()> {
    let keys = dir.join(format!("{name}.override-keys.yaml"));
    write_private(&keys, &o.keys_yaml)?;
    let mut file: mip::daemon::ProxyFile = mip::config::from_yaml(&o.config_yaml).map_err(|e| {
        Error::Usage(format!(
            "the outside proxy.yaml does not load: {}",
            mip::config::render_errors("proxy.yaml", &e)
        ))
    })?;
    file.daemon.keys_file = keys;
    let text = serde_norway::to_string(&file).map_err(|e| Error::Usage(format!("serialising proxy.yaml: {e}")))?;
    fs::write(dir.join(format!("{name}.yaml")), text).ctx(|| format!("writing {name}.yaml"))
}

//! Several strongSwan charon instances at once, one per namespace (shared/lab/README.md §1):
//! * a per-instance `strongswan.conf` selected with `STRONGSWAN_CONF` (charon and swanctl honour it):
//!   explicit plugin list with kernel-libipsec before kernel-netlink, vici socket under the lab's run
//!   directory, file log with millisecond timestamps;
//! * charon's PID file `/var/run/charon.pid` is hard-coded in 5.9.8, so each instance bind-mounts its own
//!   directory over `/run` inside the private mount namespace that `ip netns exec` gives it
//!   (`sh -c "mount --bind DIR /run && exec charon"`: ip, sh and charon exec into one another, so the PID we
//!   record is charon's);
//! * swanctl talks to the instance through `--uri unix://<vici socket>`.
//!
//! Configuration templates live in `e2e/strongswan/*.in` (compiled in): (a) the road-warrior baseline,
//! (b) the MIP-proxy data path of FINDINGS.md, (c) the one-box gateway. The lab is closed, so a PSK is fine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd::{self, Cmd, ProcessGuard, poll_until};
use crate::error::{Error, IoContext, Result};
use crate::plan;
use crate::topology::Lab;

/// The charon binary of Debian's strongswan-charon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// The pre-shared key of the closed lab.
pub const PSK: &str = "mlab-psk-0123456789abcdef";
/// The socket fwmark of the data-path gateway (FINDINGS pitfall 2).
pub const GATEWAY_FWMARK: u32 = 0x42;

const STRONGSWAN_CONF_IN: &str = include_str!("../strongswan/strongswan.conf.in");
const RW_CLIENT_IN: &str = include_str!("../strongswan/rw-client.swanctl.conf.in");
const RW_GATEWAY_IN: &str = include_str!("../strongswan/rw-gateway.swanctl.conf.in");
const PROXY_CLIENT_IN: &str = include_str!("../strongswan/proxy-client.swanctl.conf.in");
const PROXY_GATEWAY_IN: &str = include_str!("../strongswan/proxy-gateway.swanctl.conf.in");
const ONEBOX_GATEWAY_IN: &str = include_str!("../strongswan/onebox-gateway.swanctl.conf.in");

/// Replaces every `@KEY@` of `template`; a placeholder left over is an error (a template/code mismatch).
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("@{k}@"), v);
    }
    let leftover = out
        .split('@')
        .skip(1)
        .step_by(2)
        .find(|w| !w.is_empty() && w.len() < 32 && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
    match leftover {
        Some(w) => Err(Error::parse(
            "a strongSwan template",
            format!("placeholder @{w}@ not filled in"),
        )),
        None => Ok(out),
    }
}

/// strongswan.conf settings that differ between instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrongswanOptions {
    /// `charon.plugins.kernel-libipsec.allow_peer_ts` (needed when the remote TS equals the IKE peer).
    pub allow_peer_ts: bool,
    /// `socket-default { fwmark = X }` with `kernel-netlink { fwmark = !X }`: charon's own packets skip the
    /// routing rule into table 220.
    pub fwmark: Option<u32>,
    /// `charon.interfaces_use`: the only interfaces charon considers (e.g. `mip0`).
    pub interfaces_use: Option<String>,
}

impl StrongswanOptions {
    /// Renders strongswan.conf for an instance logging to `log` with its vici socket at `vici`.
    pub fn render(&self, log: &Path, vici: &Path) -> Result<String> {
        let yn = |b: bool| if b { "yes" } else { "no" }.to_owned();
        render(
            STRONGSWAN_CONF_IN,
            &[
                ("LOG", log.display().to_string()),
                ("VICI", vici.display().to_string()),
                ("ALLOW_PEER_TS", yn(self.allow_peer_ts)),
                (
                    "SOCKET_FWMARK",
                    self.fwmark
                        .map(|m| format!("      fwmark = {m:#x}"))
                        .unwrap_or_default(),
                ),
                (
                    "KERNEL_FWMARK",
                    self.fwmark
                        .map(|m| format!("      fwmark = !{m:#x}"))
                        .unwrap_or_default(),
                ),
                (
                    "INTERFACES_USE",
                    self.interfaces_use
                        .as_ref()
                        .map(|i| format!("  interfaces_use = {i}"))
                        .unwrap_or_default(),
                ),
            ],
        )
    }
}

/// Which swanctl.conf an instance loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwanctlConfig {
    /// (a) Baseline road-warrior client (virtual IP from the gateway's pool).
    RwClient {
        /// MOBIKE on (otherwise charon reauthenticates on an address change).
        mobike: bool,
        /// DPD interval (zero = off).
        dpd: Duration,
    },
    /// (a) Baseline road-warrior gateway with the virtual-IP pool.
    RwGateway {
        /// DPD interval (zero = off).
        dpd: Duration,
    },
    /// (b) MIP-proxy data path client: IKE from the HoA, no virtual IP.
    ProxyClient {
        /// MOBIKE (FINDINGS: `no`).
        mobike: bool,
        /// DPD interval.
        dpd: Duration,
    },
    /// (b) Two-box data-path gateway.
    ProxyGateway {
        /// DPD interval.
        dpd: Duration,
    },
    /// (c) One-box gateway (charon in ns vpngw beside mip-proxy).
    OneBoxGateway {
        /// DPD interval.
        dpd: Duration,
    },
}

impl SwanctlConfig {
    /// The connection and child name the config defines.
    pub fn conn(&self) -> &'static str {
        match self {
            SwanctlConfig::RwClient { .. } | SwanctlConfig::RwGateway { .. } => "rw",
            _ => "mip",
        }
    }

    /// Renders the swanctl.conf.
    pub fn render(&self) -> Result<String> {
        let yn = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let secs = |d: &Duration| format!("{}s", d.as_secs());
        let mut vars = vec![
            ("GATEWAY", plan::VPNGW_PUBLIC.to_string()),
            ("INTRANET", plan::INTRANET_TS.to_owned()),
            ("HOME_NET", plan::HOME_NET.to_owned()),
            ("HOA", plan::HOA.to_string()),
            ("POOL", plan::RW_POOL.to_owned()),
            ("PSK", PSK.to_owned()),
        ];
        let template = match self {
            SwanctlConfig::RwClient { mobike, dpd } => {
                vars.push(("MOBIKE", yn(*mobike)));
                vars.push(("DPD", secs(dpd)));
                RW_CLIENT_IN
            }
            SwanctlConfig::RwGateway { dpd } => {
                vars.push(("DPD", secs(dpd)));
                RW_GATEWAY_IN
            }
            SwanctlConfig::ProxyClient { mobike, dpd } => {
                vars.push(("MOBIKE", yn(*mobike)));
                vars.push(("DPD", secs(dpd)));
                PROXY_CLIENT_IN
            }
            SwanctlConfig::ProxyGateway { dpd } => {
                vars.push(("DPD", secs(dpd)));
                PROXY_GATEWAY_IN
            }
            SwanctlConfig::OneBoxGateway { dpd } => {
                vars.push(("DPD", secs(dpd)));
                ONEBOX_GATEWAY_IN
            }
        };
        render(template, &vars)
    }
}

/// Everything that defines one charon instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharonSpec {
    /// strongswan.conf settings.
    pub strongswan: StrongswanOptions,
    /// swanctl.conf.
    pub swanctl: SwanctlConfig,
}

impl CharonSpec {
    /// (a) Baseline client in ns mn.
    pub fn rw_client(mobike: bool, dpd: Duration) -> Self {
        CharonSpec {
            strongswan: StrongswanOptions::default(),
            swanctl: SwanctlConfig::RwClient { mobike, dpd },
        }
    }

    /// (a) Baseline gateway in ns vpngw.
    pub fn rw_gateway(dpd: Duration) -> Self {
        CharonSpec {
            strongswan: StrongswanOptions::default(),
            swanctl: SwanctlConfig::RwGateway { dpd },
        }
    }

    /// (b) Data-path client in ns mn (`local_addrs = HoA`, `mobike = no`). mip-mn must own `mip0` with the
    /// HoA and the `VPNGW-Pub/32 dev mip0 src HoA` route before this charon starts.
    pub fn proxy_client(dpd: Duration) -> Self {
        CharonSpec {
            strongswan: StrongswanOptions::default(),
            swanctl: SwanctlConfig::ProxyClient { mobike: false, dpd },
        }
    }

    /// (b) Two-box data-path gateway in ns vpngw: `allow_peer_ts`, socket fwmark 0x42 / kernel-netlink !0x42.
    pub fn proxy_gateway(dpd: Duration) -> Self {
        CharonSpec {
            strongswan: Self::data_path_gateway_options(),
            swanctl: SwanctlConfig::ProxyGateway { dpd },
        }
    }

    /// (c) One-box gateway in ns vpngw, sharing it with mip-proxy.
    pub fn onebox_gateway(dpd: Duration) -> Self {
        CharonSpec {
            strongswan: Self::data_path_gateway_options(),
            swanctl: SwanctlConfig::OneBoxGateway { dpd },
        }
    }

    fn data_path_gateway_options() -> StrongswanOptions {
        StrongswanOptions {
            allow_peer_ts: true,
            fwmark: Some(GATEWAY_FWMARK),
            interfaces_use: None,
        }
    }
}

/// One CHILD_SA from `swanctl --list-sas`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ChildSa {
    /// Child config name.
    pub name: String,
    /// charon's unique id.
    pub uniqueid: String,
    /// `INSTALLED`, `REKEYED`, ...
    pub state: String,
    /// Inbound SPI (hex).
    pub spi_in: String,
    /// Outbound SPI (hex).
    pub spi_out: String,
    /// Local traffic selectors.
    pub local_ts: Vec<String>,
    /// Remote traffic selectors.
    pub remote_ts: Vec<String>,
}

/// One IKE_SA from `swanctl --list-sas`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct IkeSa {
    /// Connection name.
    pub name: String,
    /// charon's unique id.
    pub uniqueid: String,
    /// `ESTABLISHED`, `CONNECTING`, ...
    pub state: String,
    /// Local address.
    pub local_host: String,
    /// Local port.
    pub local_port: String,
    /// Remote address.
    pub remote_host: String,
    /// Remote port.
    pub remote_port: String,
    /// Initiator SPI (hex).
    pub initiator_spi: String,
    /// Responder SPI (hex).
    pub responder_spi: String,
    /// Virtual IPs assigned to us.
    pub local_vips: Vec<String>,
    /// CHILD_SAs.
    pub children: Vec<ChildSa>,
}

impl IkeSa {
    /// `(initiator SPI, responder SPI)` and every child's `(in, out)` SPIs: what must stay equal across a
    /// hand-off for the SA to count as unchanged.
    pub fn spis(&self) -> (String, String, Vec<(String, String)>) {
        (
            self.initiator_spi.clone(),
            self.responder_spi.clone(),
            self.children
                .iter()
                .map(|c| (c.spi_in.clone(), c.spi_out.clone()))
                .collect(),
        )
    }

    /// Whether the IKE_SA is established with at least one installed CHILD_SA.
    pub fn is_up(&self) -> bool {
        self.state == "ESTABLISHED" && self.children.iter().any(|c| c.state == "INSTALLED")
    }
}

/// A node of swanctl's `--raw` vici dump.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Vici {
    Value(String),
    List(Vec<String>),
    Section(Vec<(String, Vici)>),
}

impl Vici {
    fn get(&self, key: &str) -> Option<&Vici> {
        match self {
            Vici::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> String {
        match self.get(key) {
            Some(Vici::Value(v)) => v.clone(),
            _ => String::new(),
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Vici::List(v)) => v.clone(),
            Some(Vici::Value(v)) => vec![v.clone()],
            _ => Vec::new(),
        }
    }
}

/// Parses one line of swanctl's raw output (`list-sa event {name {k=v l=[a b] sub {...}}}`): returns the
/// top-level section's items. Values never contain blanks here (PSK identities, addresses, SPIs).
fn parse_vici_raw(line: &str) -> Result<Vec<(String, Vici)>> {
    let body = line
        .split_once('{')
        .map(|(_, b)| b)
        .ok_or_else(|| Error::parse("swanctl --raw output", format!("no section in `{line}`")))?;
    // Tokens: "{", "}", "[", "]", words. Words may carry "key=" prefixes.
    let spaced = body
        .replace('{', " { ")
        .replace('}', " } ")
        .replace('[', " [ ")
        .replace(']', " ] ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0usize;
    let items = parse_section(&tokens, &mut pos)?;
    Ok(items)
}

fn parse_section(tokens: &[&str], pos: &mut usize) -> Result<Vec<(String, Vici)>> {
    let mut items = Vec::new();
    while let Some(&tok) = tokens.get(*pos) {
        *pos += 1;
        if tok == "}" {
            return Ok(items);
        }
        if let Some((key, value)) = tok.split_once('=') {
            if value.is_empty() && tokens.get(*pos) == Some(&"[") {
                *pos += 1;
                let mut list = Vec::new();
                while let Some(&t) = tokens.get(*pos) {
                    *pos += 1;
                    if t == "]" {
                        break;
                    }
                    list.push(t.to_owned());
                }
                items.push((key.to_owned(), Vici::List(list)));
            } else {
                items.push((key.to_owned(), Vici::Value(value.to_owned())));
            }
        } else if tokens.get(*pos) == Some(&"{") {
            *pos += 1;
            let sub = parse_section(tokens, pos)?;
            items.push((tok.to_owned(), Vici::Section(sub)));
        } else {
            return Err(Error::parse(
                "swanctl --raw output",
                format!("unexpected token `{tok}`"),
            ));
        }
    }
    Ok(items)
}

/// Parses `swanctl --list-sas --raw`: one `list-sa event {...}` line per IKE_SA.
pub fn parse_list_sas(raw: &str) -> Result<Vec<IkeSa>> {
    let mut out = Vec::new();
    for line in raw.lines().filter(|l| l.starts_with("list-sa event")) {
        for (name, node) in parse_vici_raw(line)? {
            let children = match node.get("child-sas") {
                Some(Vici::Section(cs)) => cs
                    .iter()
                    .map(|(_, c)| ChildSa {
                        name: c.str("name"),
                        uniqueid: c.str("uniqueid"),
                        state: c.str("state"),
                        spi_in: c.str("spi-in"),
                        spi_out: c.str("spi-out"),
                        local_ts: c.list("local-ts"),
                        remote_ts: c.list("remote-ts"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            out.push(IkeSa {
                name,
                uniqueid: node.str("uniqueid"),
                state: node.str("state"),
                local_host: node.str("local-host"),
                local_port: node.str("local-port"),
                remote_host: node.str("remote-host"),
                remote_port: node.str("remote-port"),
                initiator_spi: node.str("initiator-spi"),
                responder_spi: node.str("responder-spi"),
                local_vips: node.list("local-vips"),
                children,
            });
        }
    }
    Ok(out)
}

/// IKE messages in (a slice of) a charon log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IkeCounts {
    /// Requests this charon generated (exchanges it initiated; retransmits are not counted again).
    pub generated_requests: u32,
    /// Responses it parsed.
    pub parsed_responses: u32,
    /// Requests it parsed (exchanges the peer initiated).
    pub parsed_requests: u32,
    /// Responses it generated.
    pub generated_responses: u32,
    /// Messages per exchange type (`IKE_SA_INIT`, `INFORMATIONAL`, ...), generated and parsed together.
    pub by_exchange: BTreeMap<String, u32>,
}

impl IkeCounts {
    /// Exchanges seen from this side: one request per exchange, sent or received.
    pub fn exchanges(&self) -> u32 {
        self.generated_requests + self.parsed_requests
    }

    /// Every IKE message logged.
    pub fn messages(&self) -> u32 {
        self.generated_requests + self.parsed_responses + self.parsed_requests + self.generated_responses
    }
}

/// Counts the `generating <EXCHANGE> request|response` and `parsed <EXCHANGE> request|response` lines of a
/// charon log.
pub fn count_ike(log: &str) -> IkeCounts {
    let mut c = IkeCounts::default();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w != "generating" && w != "parsed" {
                continue;
            }
            let (Some(exchange), Some(kind)) = (words.next(), words.next()) else {
                break;
            };
            let slot = match (w, kind) {
                ("generating", "request") => &mut c.generated_requests,
                ("generating", "response") => &mut c.generated_responses,
                ("parsed", "request") => &mut c.parsed_requests,
                ("parsed", "response") => &mut c.parsed_responses,
                _ => break,
            };
            *slot += 1;
            *c.by_exchange.entry(exchange.to_owned()).or_default() += 1;
            break;
        }
    }
    c
}

/// A running charon instance.
#[derive(Debug)]
pub struct Charon {
    inst: String,
    ns: String,
    dir: PathBuf,
    conf: PathBuf,
    swanctl_conf: PathBuf,
    vici: PathBuf,
    log: PathBuf,
    spec: CharonSpec,
    proc: ProcessGuard,
}

impl Charon {
    /// Renders the instance's configs under `<run dir>/charon-<inst>/`, starts charon in namespace `ns`
    /// (short name), waits for its vici socket and loads the swanctl config.
    pub fn start(lab: &Lab, inst: &str, ns: &str, spec: &CharonSpec) -> Result<Charon> {
        cmd::require_tools(&[
            (CHARON, "strongswan-charon: the IKE daemon"),
            (
                "swanctl",
                "strongswan-swanctl: loading configs, initiating, listing SAs",
            ),
        ])?;
        let dir = lab.run_dir().join(format!("charon-{inst}"));
        let run = dir.join("run");
        fs::create_dir_all(&run).ctx(|| format!("creating {}", run.display()))?;
        let conf = dir.join("strongswan.conf");
        let swanctl_conf = dir.join("swanctl.conf");
        let vici = dir.join("charon.vici");
        let log = dir.join("charon.log");
        fs::write(&conf, spec.strongswan.render(&log, &vici)?).ctx(|| format!("writing {}", conf.display()))?;
        fs::write(&swanctl_conf, spec.swanctl.render()?).ctx(|| format!("writing {}", swanctl_conf.display()))?;
        for stale in [vici.clone(), run.join("charon.pid")] {
            let _ = fs::remove_file(stale);
        }
        let full_ns = lab.ns(ns);
        let script = format!("mount --bind {} /run && exec {CHARON}", run.display());
        let c = Cmd::in_ns(&full_ns, ["sh", "-c", &script]).env("STRONGSWAN_CONF", &conf);
        let mut proc = lab.spawn_cmd(&format!("charon-{inst}"), c, &dir.join("charon.out"))?;
        let what = format!("charon {inst}'s vici socket {}", vici.display());
        poll_until(&what, Duration::from_secs(10), Duration::from_millis(10), || {
            if vici.exists() {
                return Ok(Some(()));
            }
            if let Some(st) = proc.exit_status() {
                return Err(Error::Command {
                    ns: full_ns.clone(),
                    cmd: format!("STRONGSWAN_CONF={} {script}", conf.display()),
                    status: st.to_string(),
                    stderr: format!("{} {}", proc.log_tail(1500), cmd::log_tail(&log, 1500)),
                });
            }
            Ok(None)
        })?;
        let ch = Charon {
            inst: inst.to_owned(),
            ns: full_ns,
            dir,
            conf,
            swanctl_conf,
            vici,
            log,
            spec: spec.clone(),
            proc,
        };
        ch.load_all()?;
        Ok(ch)
    }

    /// Runs `swanctl <args> --uri unix://<vici>` in the instance's namespace.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        let uri = format!("unix://{}", self.vici.display());
        let mut argv = vec!["swanctl"];
        argv.extend_from_slice(args);
        argv.extend(["--uri", uri.as_str()]);
        Cmd::in_ns(&self.ns, argv).env("STRONGSWAN_CONF", &self.conf).stdout()
    }

    /// `swanctl --load-all --file <swanctl.conf>`.
    pub fn load_all(&self) -> Result<()> {
        let file = self.swanctl_conf.display().to_string();
        self.swanctl(&["--load-all", "--noprompt", "--file", &file]).map(drop)
    }

    /// `swanctl --initiate --child <conn>`; returns its wall time. Blocks until the CHILD_SA is installed or
    /// charon gives up (`timeout` whole seconds, at least 1).
    pub fn initiate(&self, timeout: Duration) -> Result<Duration> {
        let child = self.spec.swanctl.conn();
        let t = timeout.as_secs().max(1).to_string();
        let start = Instant::now();
        self.swanctl(&["--initiate", "--child", child, "--timeout", &t])?;
        Ok(start.elapsed())
    }

    /// `swanctl --terminate --ike <conn> --force`: drops the IKE_SA without waiting for the peer.
    pub fn terminate(&self) -> Result<()> {
        let conn = self.spec.swanctl.conn();
        self.swanctl(&["--terminate", "--ike", conn, "--force", "--timeout", "2"])
            .map(drop)
    }

    /// The instance's IKE and CHILD SAs.
    pub fn list_sas(&self) -> Result<Vec<IkeSa>> {
        parse_list_sas(&self.swanctl(&["--list-sas", "--raw"])?)
    }

    /// Polls until an IKE_SA is established with an installed CHILD_SA.
    pub fn wait_up(&self, timeout: Duration) -> Result<IkeSa> {
        let what = format!(
            "an established IKE_SA with an installed CHILD_SA in charon {}",
            self.inst
        );
        poll_until(&what, timeout, Duration::from_millis(20), || {
            Ok(self.list_sas()?.into_iter().find(IkeSa::is_up))
        })
    }

    /// Current length of the log, to count what happens after this point.
    pub fn log_cursor(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The log from `cursor` on.
    pub fn log_since(&self, cursor: u64) -> Result<String> {
        let data = fs::read(&self.log).ctx(|| format!("reading {}", self.log.display()))?;
        let from = usize::try_from(cursor).unwrap_or(usize::MAX).min(data.len());
        Ok(String::from_utf8_lossy(data.get(from..).unwrap_or_default()).into_owned())
    }

    /// IKE messages logged since `cursor`.
    pub fn ike_counts_since(&self, cursor: u64) -> Result<IkeCounts> {
        Ok(count_ike(&self.log_since(cursor)?))
    }

    /// The charon log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The instance's directory (configs, logs, private /run).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// charon's PID.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &CharonSpec {
        &self.spec
    }

    /// The instance name (`mn`, `vpngw`, ...).
    pub fn inst(&self) -> &str {
        &self.inst
    }

    /// Stops charon (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_without_leftovers() {
        let log = Path::new("/tmp/mlab-run/mlab1/charon-mn/charon.log");
        let vici = Path::new("/tmp/mlab-run/mlab1/charon-mn/charon.vici");
        for spec in [
            CharonSpec::rw_client(true, Duration::from_secs(5)),
            CharonSpec::rw_client(false, Duration::ZERO),
            CharonSpec::rw_gateway(Duration::ZERO),
            CharonSpec::proxy_client(Duration::ZERO),
            CharonSpec::proxy_gateway(Duration::ZERO),
            CharonSpec::onebox_gateway(Duration::ZERO),
        ] {
            let s = spec.strongswan.render(log, vici).unwrap();
            let w = spec.swanctl.render().unwrap();
            assert!(s.contains("kernel-libipsec kernel-netlink"), "{s}");
            assert!(!w.contains('@') || w.contains("@mlab"), "{w}");
        }
        let gw = CharonSpec::proxy_gateway(Duration::ZERO)
            .strongswan
            .render(log, vici)
            .unwrap();
        assert!(gw.contains("fwmark = 0x42") && gw.contains("fwmark = !0x42") && gw.contains("allow_peer_ts = yes"));
        let cl = CharonSpec::proxy_client(Duration::ZERO).swanctl.render().unwrap();
        assert!(cl.contains("local_addrs = 10.10.1.50") && cl.contains("mobike = no") && !cl.contains("vips"));
        let rw = CharonSpec::rw_client(true, Duration::from_secs(5))
            .swanctl
            .render()
            .unwrap();
        assert!(rw.contains("mobike = yes") && rw.contains("dpd_delay = 5s") && rw.contains("vips = 0.0.0.0"));
    }

    #[test]
    fn unfilled_placeholder_is_an_error() {
        assert!(render("a = @NOPE@", &[]).is_err());
        assert_eq!(render("id = rw@mlab", &[]).unwrap(), "id = rw@mlab");
    }

    #[test]
    fn list_sas_raw_parses() {
        let raw = "list-sa event {rw {uniqueid=3 version=2 state=ESTABLISHED local-host=192.168.1.10 local-port=4500 local-id=rw@mlab remote-host=198.51.100.20 remote-port=4500 remote-id=vpngw@mlab initiator=yes initiator-spi=635984060fcf3444 responder-spi=829c73e05766daed nat-local=yes local-vips=[10.99.0.1] child-sas {rw-4 {name=rw uniqueid=4 reqid=1 state=INSTALLED mode=TUNNEL protocol=ESP encap=yes spi-in=c2a1b3c4 spi-out=10aad685 local-ts=[10.99.0.1/32] remote-ts=[10.10.0.0/16]}}}}\nlist-sas reply {}\n";
        let sas = parse_list_sas(raw).unwrap();
        assert_eq!(sas.len(), 1);
        let sa = &sas[0];
        assert_eq!((sa.name.as_str(), sa.state.as_str()), ("rw", "ESTABLISHED"));
        assert_eq!(sa.initiator_spi, "635984060fcf3444");
        assert_eq!(sa.local_vips, vec!["10.99.0.1"]);
        assert_eq!(sa.children[0].spi_out, "10aad685");
        assert_eq!(sa.children[0].remote_ts, vec!["10.10.0.0/16"]);
        assert!(sa.is_up());
    }

    #[test]
    fn ike_messages_are_counted() {
        let log = "\
02:22:41.437 06[ENC] <rw|1> generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) ]
02:22:41.438 11[ENC] <rw|1> parsed IKE_SA_INIT response 0 [ SA KE No ]
02:22:41.439 11[ENC] <rw|1> generating IKE_AUTH request 1 [ IDi AUTH SA TSi TSr ]
02:22:41.440 13[ENC] <rw|1> parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]
02:22:45.000 13[ENC] <rw|1> parsed INFORMATIONAL request 0 [ ]
02:22:45.001 13[ENC] <rw|1> generating INFORMATIONAL response 0 [ ]
02:22:45.002 13[IKE] <rw|1> retransmit 1 of request with message ID 2
";
        let c = count_ike(log);
        assert_eq!(
            (
                c.generated_requests,
                c.parsed_responses,
                c.parsed_requests,
                c.generated_responses
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(c.exchanges(), 3);
        assert_eq!(c.messages(), 6);
        assert_eq!(c.by_exchange.get("INFORMATIONAL"), Some(&2));
    }
}

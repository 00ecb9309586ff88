//! `e2e bench handoff`: the traffic interruption of a hand-off, per path.
//!
//! Paths:
//! * `ike_reestablish` — strongSwan alone (road warrior straight to the gateway, virtual IP), MOBIKE off:
//!   charon reauthenticates (break-before-make) on the address change;
//! * `mobike` — the same with MOBIKE on;
//! * `mip_proxy` — the product's path ([`crate::mip_path::MipProxyPath`], a [`HandoffPath`]).
//!
//! Cases: each path at 0 and 40 ms added RTT (the delay line adds 20 ms per transit of ns inet), `runs`
//! hand-offs alternating C1 <-> A (the subnet and the NAT change), plus the NAT-change-only case C1 <-> C2 at
//! 0 ms with DPD 5 s on the client (the lab README's extra experiment), where a run that does not recover
//! within the recovery timeout is recorded as not recovered.
//!
//! One run: wait until the MN has stayed `dwell` on its access network (see [`BenchOptions::dwell`]),
//! start the prober (a datagram every `probe_interval`, MN -> CN echo), let it run `pre`, hand off
//! (break-before-make), wait until a probe sent after the switch comes back (or the timeout), keep probing
//! `post` to catch a second gap (MOBIKE's CHILD_SA rekey), stop. The interruption is the prober's longest
//! gap. A case's median and max are over its recovered runs; unrecovered runs count in `runs` only.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::plan::{self, Access};
use crate::probe::{self, ProbeConfig, ProbeReport, Prober};
use crate::strongswan::{Charon, CharonSpec, IkeCounts};
use crate::topology::{Lab, LabOptions, Mode};

/// The `path` of a case in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// mip-proxy (MIP tunnel, IPsec SA bound to the HoA).
    MipProxy,
    /// strongSwan alone, MOBIKE off: reauthentication on address change.
    IkeReestablish,
    /// strongSwan alone, MOBIKE on.
    Mobike,
}

impl PathKind {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::MipProxy => "mip_proxy",
            PathKind::IkeReestablish => "ike_reestablish",
            PathKind::Mobike => "mobike",
        }
    }
}

/// Which paths a bench run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Only {
    /// Baseline and mip-proxy (the latter only once its hook is wired).
    #[default]
    All,
    /// strongSwan alone.
    Baseline,
    /// mip-proxy alone.
    MipProxy,
}

/// One case: a path, an added RTT, and the pair of access networks it alternates between.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaseSpec {
    /// Path under test.
    pub path: PathKind,
    /// Added round-trip time (2 × the delay per transit of ns inet).
    pub rtt_ms: u32,
    /// C1 <-> C2: only the NAT's public address changes, the MN's address stays.
    pub nat_only: bool,
    /// Hand-offs.
    pub runs: u32,
    /// Where the case starts.
    pub from: Access,
    /// The other access network.
    pub to: Access,
    /// DPD interval of the VPN client (zero = off).
    pub dpd: Duration,
}

/// Median and max of a case's interruptions, over its recovered runs (`null` when none recovered).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Interruption {
    /// Median, ms.
    pub median: Option<f64>,
    /// Maximum, ms.
    pub max: Option<f64>,
}

/// One case of the JSON output, exactly `{"path","rtt_ms","nat_only","interruption_ms","recovered","runs"}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaseResult {
    /// Path.
    pub path: PathKind,
    /// Added RTT.
    pub rtt_ms: u32,
    /// NAT-change-only case.
    pub nat_only: bool,
    /// Interruption statistics over recovered runs.
    pub interruption_ms: Interruption,
    /// Runs that recovered within the timeout.
    pub recovered: u32,
    /// Runs made (recovered or not).
    pub runs: u32,
}

/// One hand-off of a case, for the human table, progress lines and `--details`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunDetail {
    /// Old access network.
    pub from: Access,
    /// New access network.
    pub to: Access,
    /// How long the hand-off itself took (old link down .. new default route in place), ms.
    pub switch_ms: f64,
    /// The prober's report.
    pub probe: ProbeReport,
    /// IKE messages logged during the run by the MN's and the gateway's charon, if the path has them.
    pub ike: Option<(IkeCounts, IkeCounts)>,
    /// Both charons' SPIs right after the run equal those right before it (`None`: the path has no SAs to
    /// compare).
    pub sas_unchanged: Option<bool>,
    /// What the path's own daemons logged about the hand-off (ms after its start), if the path has daemons.
    pub daemons: Option<DaemonTimeline>,
}

/// The IKE_SA and CHILD_SA SPIs of one charon's SAs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SaIds {
    /// IKE initiator SPI.
    pub ike_initiator: String,
    /// IKE responder SPI.
    pub ike_responder: String,
    /// Every CHILD_SA's (inbound, outbound) SPIs.
    pub child: Vec<(String, String)>,
}

/// The SPIs on both ends: what must not change across a hand-off for the VPN to count as kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SaSnapshot {
    /// The MN's VPN client.
    pub client: Vec<SaIds>,
    /// The VPN gateway.
    pub gateway: Vec<SaIds>,
}

impl SaSnapshot {
    /// The SPIs of both charons' SAs, from `swanctl --list-sas`.
    pub fn of(client: &Charon, gateway: &Charon) -> Result<SaSnapshot> {
        let ids = |sas: Vec<crate::strongswan::IkeSa>| -> Vec<SaIds> {
            sas.iter()
                .map(|sa| {
                    let (i, r, child) = sa.spis();
                    SaIds {
                        ike_initiator: i,
                        ike_responder: r,
                        child,
                    }
                })
                .collect()
        };
        Ok(SaSnapshot {
            client: ids(client.list_sas()?),
            gateway: ids(gateway.list_sas()?),
        })
    }

    /// At least one SA on each end.
    pub fn is_up(&self) -> bool {
        !self.client.is_empty() && !self.gateway.is_empty()
    }
}

/// A hand-off as the path's daemons logged it, in ms after the hand-off started (old link down).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DaemonTimeline {
    /// The MN daemon noticed the new attachment (its `attached` log line).
    pub mn_attached_ms: Option<f64>,
    /// The proxy answered the registration (its `registration` log line; the binding has moved by then).
    pub proxy_replied_ms: Option<f64>,
    /// The MN accepted the registration reply.
    pub mn_registered_ms: Option<f64>,
}

/// A case with its runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseDetail {
    /// The case.
    pub spec: CaseSpec,
    /// Its runs.
    pub runs: Vec<RunDetail>,
    /// Both charons' SPIs after `prepare` (`None`: the path has no SAs).
    pub sas_before: Option<SaSnapshot>,
    /// Both charons' SPIs after the last run.
    pub sas_after: Option<SaSnapshot>,
    /// The SPIs after the last run equal those after `prepare`, and every run kept them (`None`: no SAs).
    pub sas_unchanged: Option<bool>,
    /// IKE messages both charons logged during the case's runs (`None`: the path has no charons).
    pub ike_messages: Option<u32>,
}

impl CaseDetail {
    /// Fills [`CaseDetail::sas_unchanged`] and [`CaseDetail::ike_messages`] from the runs.
    fn summarise(&mut self) {
        self.sas_unchanged = match (&self.sas_before, &self.sas_after) {
            (Some(a), Some(b)) => Some(a.is_up() && a == b && self.runs.iter().all(|r| r.sas_unchanged != Some(false))),
            _ => None,
        };
        let ike: Vec<u32> = self
            .runs
            .iter()
            .filter_map(|r| r.ike.as_ref().map(|(m, g)| m.messages() + g.messages()))
            .collect();
        self.ike_messages = (!ike.is_empty()).then(|| ike.iter().sum());
    }

    /// IKE messages (MN + gateway) per run, over the runs that counted them.
    pub fn ike_messages_per_run(&self) -> Option<f64> {
        let ike: Vec<u32> = self
            .runs
            .iter()
            .filter_map(|r| r.ike.as_ref().map(|(m, g)| m.messages() + g.messages()))
            .collect();
        (!ike.is_empty()).then(|| f64::from(ike.iter().sum::<u32>()) / ike.len() as f64)
    }
}

impl CaseDetail {
    /// The JSON summary of the case.
    pub fn result(&self) -> CaseResult {
        let mut vals: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.probe.recovered == Some(true))
            .filter_map(|r| r.probe.interruption_ms)
            .collect();
        vals.sort_by(f64::total_cmp);
        let n = vals.len();
        let median = match n {
            0 => None,
            _ if n % 2 == 1 => vals.get(n / 2).copied(),
            _ => Some((vals.get(n / 2 - 1).copied().unwrap_or(0.0) + vals.get(n / 2).copied().unwrap_or(0.0)) / 2.0),
        };
        // The probe resolves 1 ms at best; a tenth of a millisecond is plenty.
        let round = |v: Option<f64>| v.map(|x| (x * 10.0).round() / 10.0);
        CaseResult {
            path: self.spec.path,
            rtt_ms: self.spec.rtt_ms,
            nat_only: self.spec.nat_only,
            interruption_ms: Interruption {
                median: round(median),
                max: round(vals.last().copied()),
            },
            recovered: n as u32,
            runs: self.runs.len() as u32,
        }
    }
}

/// The whole benchmark.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Measured cases, in order.
    pub cases: Vec<CaseDetail>,
}

#[derive(serde::Serialize)]
struct JsonOut {
    cases: Vec<CaseResult>,
}

impl BenchReport {
    /// `{"cases":[...]}`.
    pub fn to_json(&self) -> String {
        let out = JsonOut {
            cases: self.cases.iter().map(CaseDetail::result).collect(),
        };
        serde_json::to_string_pretty(&out).unwrap_or_default()
    }

    /// Every run of every case (probe reports, IKE counts), as JSON.
    pub fn details_json(&self) -> String {
        serde_json::to_string_pretty(&self.cases).unwrap_or_default()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<16} {:>6} {:<10} {:>5} {:>9} {:>10} {:>8} {:>14} {:>11}",
            "path", "rtt_ms", "hand-off", "runs", "recovered", "median_ms", "max_ms", "IKE msgs MN+GW", "SPIs kept"
        );
        for c in &self.cases {
            let r = c.result();
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
            let ike = c
                .ike_messages_per_run()
                .map_or("-".to_owned(), |v| format!("{v:.1}/run"));
            let kept: Vec<bool> = c.runs.iter().filter_map(|r| r.sas_unchanged).collect();
            let kept = match kept.is_empty() {
                true => "-".to_owned(),
                false => format!("{}/{}", kept.iter().filter(|k| **k).count(), kept.len()),
            };
            let _ = writeln!(
                s,
                "{:<16} {:>6} {:<10} {:>5} {:>9} {:>10} {:>8} {:>14} {:>11}",
                r.path.name(),
                r.rtt_ms,
                format!("{}<->{}", c.spec.from, c.spec.to),
                r.runs,
                r.recovered,
                f(r.interruption_ms.median),
                f(r.interruption_ms.max),
                ike,
                kept
            );
        }
        s
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Hand-offs per C1 <-> A case.
    pub runs: u32,
    /// Hand-offs per NAT-change-only case.
    pub nat_only_runs: u32,
    /// Paths to measure.
    pub only: Only,
    /// Probe interval.
    pub probe_interval: Duration,
    /// A run not recovered within this is "not recovered".
    pub recovery_timeout: Duration,
    /// Probing before the hand-off.
    pub pre: Duration,
    /// Minimum time the MN stays on an access network before the next hand-off. A NAT (or inet) that
    /// still had packets for the MN when it left keeps its neighbour entry INCOMPLETE and retries ARP only
    /// every second, three times (`retrans_time_ms` 1000, `mcast_solicit` 3). An MN that comes back within
    /// those ~3 s waits up to a second for that retry, which would be measured as strongSwan's interruption
    /// (observed: ~800-900 ms extra on A -> C1 with a 1.5 s cadence). Staying longer than that lets the
    /// entry fail, and the next packet resolves the MN at once, as on a real return after a while.
    pub dwell: Duration,
    /// Probing after recovery (catches a second gap).
    pub post: Duration,
    /// DPD interval of the client in the NAT-change-only cases.
    pub nat_only_dpd: Duration,
    /// Added RTTs to measure the C1 <-> A cases at.
    pub rtts_ms: Vec<u32>,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// The lab to build.
    pub lab: LabOptions,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            runs: 10,
            nat_only_runs: 5,
            only: Only::All,
            probe_interval: Duration::from_millis(1),
            recovery_timeout: Duration::from_secs(15),
            pre: Duration::from_millis(500),
            post: Duration::from_millis(500),
            dwell: Duration::from_secs(4),
            nat_only_dpd: Duration::from_secs(5),
            rtts_ms: vec![0, 40],
            stop: Arc::new(AtomicBool::new(false)),
            lab: LabOptions {
                mode: Mode::TwoBox,
                ..LabOptions::default()
            },
        }
    }
}

impl BenchOptions {
    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A hand-off path under test. The benchmark drives the hand-offs and the probe; the path brings up what
/// carries the MN's traffic and keeps it usable between runs.
pub trait HandoffPath {
    /// Which path this is.
    fn kind(&self) -> PathKind;
    /// Brings the path up for `case` (daemons, SAs); the MN is attached to `case.from` and the delay is set.
    /// Afterwards MN -> CN traffic (the probe's echo on the CN) must flow.
    fn prepare(&mut self, lab: &mut Lab, case: &CaseSpec) -> Result<()>;
    /// Called before every hand-off: make sure traffic flows, repairing if a previous run left the path
    /// broken (an unrecovered run must not spoil the next one).
    fn ensure_ready(&mut self, lab: &mut Lab, case: &CaseSpec) -> Result<()>;
    /// IKE messages (MN, gateway) logged since the previous call, if the path has charons.
    fn take_ike_counts(&mut self) -> Result<Option<(IkeCounts, IkeCounts)>> {
        Ok(None)
    }
    /// Both charons' SPIs now, if the path has charons.
    fn sa_snapshot(&mut self) -> Result<Option<SaSnapshot>> {
        Ok(None)
    }
    /// Called right before a hand-off (after the probe started): remember where the daemons' logs end.
    fn before_handoff(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called after a run: what the path's daemons logged about the hand-off that started at `start`
    /// (wall clock, as the daemons' log timestamps), if the path has daemons.
    fn daemon_timeline(&mut self, _start: std::time::SystemTime) -> Result<Option<DaemonTimeline>> {
        Ok(None)
    }
    /// Stops what `prepare` started.
    fn finish(&mut self, lab: &mut Lab) -> Result<()>;
}

/// strongSwan alone: the MN's VPN client straight to the gateway, virtual IP from the pool.
#[derive(Debug)]
pub struct StrongswanOnly {
    mobike: bool,
    gateway: Option<Charon>,
    client: Option<Charon>,
    cursors: (u64, u64),
}

impl StrongswanOnly {
    /// `mobike = false` is the `ike_reestablish` path.
    pub fn new(mobike: bool) -> Self {
        StrongswanOnly {
            mobike,
            gateway: None,
            client: None,
            cursors: (0, 0),
        }
    }

    fn client(&self) -> Result<&Charon> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::Usage("strongSwan path used before prepare()".into()))
    }

    fn stop_all(&mut self) {
        if let Some(mut c) = self.client.take() {
            c.stop();
        }
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
    }
}

fn echo_target() -> SocketAddrV4 {
    SocketAddrV4::new(plan::CN, plan::ECHO_PORT)
}

impl HandoffPath for StrongswanOnly {
    fn kind(&self) -> PathKind {
        if self.mobike {
            PathKind::Mobike
        } else {
            PathKind::IkeReestablish
        }
    }

    fn prepare(&mut self, lab: &mut Lab, case: &CaseSpec) -> Result<()> {
        // Fresh charons per case: no SA, lease or MOBIKE state carries over from the previous case.
        self.stop_all();
        let gw = Charon::start(lab, "vpngw", "vpngw", &CharonSpec::rw_gateway(Duration::ZERO))?;
        self.gateway = Some(gw);
        let cl = Charon::start(lab, "mn", "mn", &CharonSpec::rw_client(self.mobike, case.dpd))?;
        cl.initiate(Duration::from_secs(10))?;
        self.client = Some(cl);
        probe::wait_echo(&lab.ns("mn"), echo_target(), Duration::from_secs(10))?;
        self.take_ike_counts()?;
        Ok(())
    }

    fn ensure_ready(&mut self, lab: &mut Lab, _case: &CaseSpec) -> Result<()> {
        let ns = lab.ns("mn");
        if probe::wait_echo(&ns, echo_target(), Duration::from_secs(3)).is_ok() {
            return Ok(());
        }
        // The previous hand-off did not recover (e.g. MOBIKE after a NAT-only change): start over.
        let cl = self.client()?;
        let _ = cl.terminate();
        cl.initiate(Duration::from_secs(10))?;
        probe::wait_echo(&ns, echo_target(), Duration::from_secs(10))?;
        Ok(())
    }

    fn take_ike_counts(&mut self) -> Result<Option<(IkeCounts, IkeCounts)>> {
        let (Some(c), Some(g)) = (&self.client, &self.gateway) else {
            return Ok(None);
        };
        let counts = (c.ike_counts_since(self.cursors.0)?, g.ike_counts_since(self.cursors.1)?);
        self.cursors = (c.log_cursor(), g.log_cursor());
        Ok(Some(counts))
    }

    fn sa_snapshot(&mut self) -> Result<Option<SaSnapshot>> {
        let (Some(c), Some(g)) = (&self.client, &self.gateway) else {
            return Ok(None);
        };
        SaSnapshot::of(c, g).map(Some)
    }

    fn finish(&mut self, _lab: &mut Lab) -> Result<()> {
        self.stop_all();
        Ok(())
    }
}

/// The cases of one path, in run order.
pub fn cases_for(path: PathKind, opts: &BenchOptions) -> Vec<CaseSpec> {
    let mut v: Vec<CaseSpec> = opts
        .rtts_ms
        .iter()
        .map(|&rtt_ms| CaseSpec {
            path,
            rtt_ms,
            nat_only: false,
            runs: opts.runs,
            from: Access::C1,
            to: Access::A,
            dpd: Duration::ZERO,
        })
        .collect();
    if opts.nat_only_runs > 0 {
        v.push(CaseSpec {
            path,
            rtt_ms: 0,
            nat_only: true,
            runs: opts.nat_only_runs,
            from: Access::C1,
            to: Access::C2,
            dpd: opts.nat_only_dpd,
        });
    }
    v
}

/// The wall-clock time of `t`, given a wall-clock reading `wall0` taken together with `mono0`.
pub fn wall_clock_of(t: Instant, wall0: SystemTime, mono0: Instant) -> SystemTime {
    if t >= mono0 {
        wall0 + (t - mono0)
    } else {
        wall0 - (mono0 - t)
    }
}

/// Runs one case on `lab` with `path`. `progress` sees every run as it finishes.
pub fn run_case(
    lab: &mut Lab,
    path: &mut dyn HandoffPath,
    case: &CaseSpec,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&CaseSpec, usize, &RunDetail),
) -> Result<CaseDetail> {
    lab.set_delay(case.rtt_ms / 2)?;
    lab.mn_attach(case.from, false)?;
    path.prepare(lab, case)?;
    let mut detail = CaseDetail {
        spec: case.clone(),
        runs: Vec::new(),
        sas_before: None,
        sas_after: None,
        sas_unchanged: None,
        ike_messages: None,
    };
    let cfg = ProbeConfig {
        target: echo_target(),
        interval: opts.probe_interval,
        drain: Duration::from_millis(300) + Duration::from_millis(u64::from(case.rtt_ms) * 2),
    };
    let mn = lab.ns("mn");
    detail.sas_before = path.sa_snapshot()?;
    for i in 0..case.runs as usize {
        if opts.interrupted() {
            return Err(Error::Interrupted);
        }
        path.ensure_ready(lab, case)?;
        if let Some(last) = lab.last_attach() {
            // The dwell includes the probe's `pre` period.
            let until = last + opts.dwell.saturating_sub(opts.pre);
            let now = Instant::now();
            if until > now {
                thread::sleep(until - now);
            }
        }
        let sas_pre = path.sa_snapshot()?;
        path.take_ike_counts()?;
        let from = lab.attached().unwrap_or(case.from);
        let to = if from == case.from { case.to } else { case.from };
        let prober = Prober::start(&mn, cfg)?;
        thread::sleep(opts.pre);
        path.before_handoff()?;
        let (wall0, mono0) = (SystemTime::now(), Instant::now());
        let marks = lab.mn_attach(to, false)?;
        prober.mark(&marks);
        if prober.wait_recovered(opts.recovery_timeout, &|| opts.interrupted()) {
            thread::sleep(opts.post);
        }
        let report = prober.stop()?;
        let ike = path.take_ike_counts()?;
        let sas_post = path.sa_snapshot()?;
        let start_wall = wall_clock_of(marks.start, wall0, mono0);
        let run = RunDetail {
            from,
            to,
            switch_ms: marks.switched.saturating_duration_since(marks.start).as_secs_f64() * 1000.0,
            probe: report,
            ike,
            sas_unchanged: match (&sas_pre, &sas_post) {
                (Some(a), Some(b)) => Some(a.is_up() && a == b),
                _ => None,
            },
            daemons: path.daemon_timeline(start_wall)?,
        };
        progress(case, i, &run);
        detail.sas_after = sas_post;
        detail.runs.push(run);
    }
    detail.summarise();
    path.finish(lab)?;
    Ok(detail)
}

/// Runs the hand-off benchmark in a fresh lab: the baseline paths and, when `mip_proxy` is given, the
/// product's path.
pub fn bench_handoff(opts: &BenchOptions) -> Result<BenchReport> {
    crate::require_lab_tools()?;
    let mut lab = Lab::up(opts.lab.clone())?;
    let echo = lab.spawn_echo()?;

    let mut report = BenchReport::default();
    let mut paths: Vec<Box<dyn HandoffPath>> = Vec::new();
    if opts.only != Only::MipProxy {
        paths.push(Box::new(StrongswanOnly::new(false)));
        paths.push(Box::new(StrongswanOnly::new(true)));
    }
    if opts.only != Only::Baseline {
        paths.push(Box::new(crate::mip_path::MipProxyPath::default()));
    }
    // Interleave the paths per RTT so a slow drift of the machine does not favour one path.
    let per_path: Vec<Vec<CaseSpec>> = paths.iter().map(|p| cases_for(p.kind(), opts)).collect();
    let rounds = per_path.iter().map(Vec::len).max().unwrap_or(0);
    let mut progress = |c: &CaseSpec, i: usize, r: &RunDetail| {
        let p = &r.probe;
        let ike = r
            .ike
            .as_ref()
            .map(|(m, g)| format!(" ike {}+{}", m.messages(), g.messages()))
            .unwrap_or_default();
        let sas = match r.sas_unchanged {
            Some(true) => ", SPIs kept",
            Some(false) => ", SPIs CHANGED",
            None => "",
        };
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
        let daemons = r
            .daemons
            .as_ref()
            .map(|d| {
                format!(
                    " [mn attached {} ms, proxy replied {} ms, mn registered {} ms]",
                    f(d.mn_attached_ms),
                    f(d.proxy_replied_ms),
                    f(d.mn_registered_ms)
                )
            })
            .unwrap_or_default();
        eprintln!(
            "  {} rtt {} {}run {}: {}->{} (switch {:.1} ms) interruption {} ms, first echo {} ms, lost {}/{}{}{}{}",
            c.path.name(),
            c.rtt_ms,
            if c.nat_only { "nat-only " } else { "" },
            i + 1,
            r.from,
            r.to,
            r.switch_ms,
            p.interruption_ms.map_or("-".into(), |v| format!("{v:.0}")),
            p.mark_to_first_echo_ms.map_or("-".into(), |v| format!("{v:.0}")),
            p.lost,
            p.sent,
            ike,
            sas,
            daemons
        );
    };
    for round in 0..rounds {
        for (path, cases) in paths.iter_mut().zip(&per_path) {
            let Some(case) = cases.get(round) else { continue };
            eprintln!(
                "case {} rtt {} ms {} x{}",
                case.path.name(),
                case.rtt_ms,
                if case.nat_only { "C1<->C2 (NAT only)" } else { "C1<->A" },
                case.runs
            );
            let d = run_case(&mut lab, path.as_mut(), case, opts, &mut progress);
            match d {
                Ok(d) => report.cases.push(d),
                Err(e) => {
                    let _ = path.finish(&mut lab);
                    return Err(e);
                }
            }
        }
    }
    drop(echo);
    lab.down()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(interruption: Option<f64>, recovered: bool) -> RunDetail {
        RunDetail {
            from: Access::C1,
            to: Access::A,
            switch_ms: 1.0,
            probe: ProbeReport {
                interruption_ms: interruption,
                recovered: Some(recovered),
                ..ProbeReport::default()
            },
            ike: None,
            sas_unchanged: None,
            daemons: None,
        }
    }

    #[test]
    fn summary_counts_unrecovered_runs_only_in_runs() {
        let d = CaseDetail {
            spec: CaseSpec {
                path: PathKind::Mobike,
                rtt_ms: 0,
                nat_only: true,
                runs: 4,
                from: Access::C1,
                to: Access::C2,
                dpd: Duration::from_secs(5),
            },
            runs: vec![
                run(Some(100.0), true),
                run(None, false),
                run(Some(300.0), true),
                run(Some(200.0), true),
            ],
            sas_before: None,
            sas_after: None,
            sas_unchanged: None,
            ike_messages: None,
        };
        let r = d.result();
        assert_eq!((r.runs, r.recovered), (4, 3));
        assert_eq!(r.interruption_ms.median, Some(200.0));
        assert_eq!(r.interruption_ms.max, Some(300.0));
        let json = BenchReport { cases: vec![d] }.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let case = &v["cases"][0];
        assert_eq!(case["path"], "mobike");
        assert_eq!(case["nat_only"], true);
        assert_eq!(case["interruption_ms"]["median"], 200.0);
        let mut keys: Vec<&str> = case.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["interruption_ms", "nat_only", "path", "recovered", "rtt_ms", "runs"]
        );
    }

    #[test]
    fn no_recovered_run_gives_nulls() {
        let d = CaseDetail {
            spec: cases_for(PathKind::IkeReestablish, &BenchOptions::default())[0].clone(),
            runs: vec![run(None, false)],
            sas_before: None,
            sas_after: None,
            sas_unchanged: None,
            ike_messages: None,
        };
        let r = d.result();
        assert_eq!(
            (r.interruption_ms.median, r.interruption_ms.max, r.recovered),
            (None, None, 0)
        );
    }

    #[test]
    fn cases_alternate_c1_a_and_nat_only() {
        let c = cases_for(PathKind::Mobike, &BenchOptions::default());
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].rtt_ms, c[1].rtt_ms), (0, 40));
        assert!(c[2].nat_only && c[2].to == Access::C2 && c[2].dpd == Duration::from_secs(5));
    }
}

//! `e2e demo`: the lab demo (the project's main job). It builds a lab (two-box by default), starts the echo
//! server in `cn` and the whole product ([`System::start`]: mip-ha, mip-proxy, both foreign agents, mip-mn,
//! and the VPN between the MN's home address and the gateway), then runs one continuous probe stream MN -> CN
//! (a datagram every millisecond, through the VPN inside the Mobile IP tunnel) while the MN roams
//! A -> C1 -> B -> D: routable co-located, behind NAT 1, through foreign agent 1, through foreign agent 2
//! behind NAT 3. One line per hand-off:
//!
//! ```text
//! hand-off A -> C1: interruption 7.0 ms, registered in 5.2 ms, SAs unchanged, 0 IKE messages
//! ```
//!
//! then a summary, and the lab is torn down (also on Ctrl-C or an error: every process and namespace belongs
//! to guards that clean up on drop).
//!
//! * **interruption**: the longest gap in the stream around the hand-off ([`crate::probe::Timeline::window`]),
//!   the benchmark's definition;
//! * **registered in**: from the hand-off's start (old link down) to the MN daemon's `registration accepted`
//!   log line;
//! * **SAs unchanged**: both charons' IKE and CHILD SPIs after the hand-off equal those before it;
//! * **IKE messages**: what both charons logged during the hand-off.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::bench::{self, SaSnapshot};
use crate::error::{Result, interrupted};
use crate::mip_path;
use crate::plan::{self, Access};
use crate::probe::{self, ProbeConfig, Prober, WindowReport};
use crate::system::{self, System, SystemOptions};
use crate::topology::{Lab, LabOptions, Mode};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Two-box or one-box.
    pub mode: Mode,
    /// Where the MN starts.
    pub start: Access,
    /// The access networks it moves to, in order.
    pub route: Vec<Access>,
    /// Time on each access network before the next hand-off.
    pub dwell: Duration,
    /// A hand-off not recovered within this counts as not recovered (and the demo goes on).
    pub recovery_timeout: Duration,
    /// Probe interval.
    pub interval: Duration,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// The `e2e` binary (tests pass theirs; else found next to the running binary).
    pub e2e_bin: Option<PathBuf>,
    /// Keep `/tmp/mlab-run/mlab<N>/` (configs and logs) after teardown.
    pub keep_run_dir: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            mode: Mode::TwoBox,
            start: Access::A,
            route: vec![Access::C1, Access::B, Access::D],
            dwell: Duration::from_secs(2),
            recovery_timeout: Duration::from_secs(10),
            interval: Duration::from_millis(1),
            stop: Arc::new(AtomicBool::new(false)),
            e2e_bin: None,
            keep_run_dir: false,
        }
    }
}

/// One hand-off of the demo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoHandoff {
    /// Old access network.
    pub from: Access,
    /// New access network.
    pub to: Access,
    /// The lab's part: old link down .. new default route in place, ms.
    pub switch_ms: f64,
    /// The stream around the hand-off.
    pub stream: WindowReport,
    /// From the hand-off's start to the MN's `registration accepted` log line, ms.
    pub registered_ms: Option<f64>,
    /// The care-of address the MN registered.
    pub care_of_address: Option<String>,
    /// Both charons' SPIs after the hand-off equal those before it.
    pub sas_unchanged: bool,
    /// IKE messages both charons logged during the hand-off.
    pub ike_messages: u32,
}

impl DemoHandoff {
    /// The demo's line: `hand-off A -> C1: interruption 7.0 ms, registered in 5.2 ms, SAs unchanged, 0 IKE
    /// messages`.
    pub fn line(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1} ms"));
        format!(
            "hand-off {} -> {}: interruption {}, registered in {}, {}, {} IKE message{}",
            self.from,
            self.to,
            match self.stream.interruption_ms {
                Some(v) => format!("{v:.1} ms"),
                None => format!("not recovered (lost {} probes)", self.stream.lost),
            },
            f(self.registered_ms),
            if self.sas_unchanged {
                "SAs unchanged"
            } else {
                "SAs CHANGED"
            },
            self.ike_messages,
            if self.ike_messages == 1 { "" } else { "s" }
        )
    }

    /// Recovered with the SAs unchanged and no IKE message.
    pub fn ok(&self) -> bool {
        self.stream.recovered && self.sas_unchanged && self.ike_messages == 0
    }
}

/// What the demo did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// `two-box` or `one-box`.
    pub mode: String,
    /// Building the lab, s.
    pub lab_up_s: f64,
    /// Starting the daemons and the VPN, s.
    pub system_up_s: f64,
    /// The hand-offs, in order.
    pub hand_offs: Vec<DemoHandoff>,
    /// Probes sent in the whole stream.
    pub probes_sent: u64,
    /// Probes that never came back.
    pub probes_lost: u64,
    /// Length of the stream, s.
    pub stream_s: f64,
    /// The SPIs at the end equal those right after the VPN came up.
    pub sas_unchanged_overall: bool,
    /// Start to teardown, s.
    pub total_s: f64,
}

impl DemoReport {
    /// Every hand-off recovered, SAs unchanged throughout, no IKE message.
    pub fn ok(&self) -> bool {
        self.hand_offs.iter().all(DemoHandoff::ok) && self.sas_unchanged_overall
    }

    /// The summary lines.
    pub fn summary(&self) -> String {
        let recovered = self.hand_offs.iter().filter(|h| h.stream.recovered).count();
        let max = self
            .hand_offs
            .iter()
            .filter_map(|h| h.stream.interruption_ms)
            .reduce(f64::max);
        let ike: u32 = self.hand_offs.iter().map(|h| h.ike_messages).sum();
        format!(
            "summary: {recovered}/{} hand-offs recovered, longest interruption {}, {ike} IKE messages, VPN SAs {} \
             ({} mode); stream {:.1} s, {} of {} probes lost\n\
             timing: lab up {:.1} s, daemons + VPN up {:.1} s, total {:.1} s; {}",
            self.hand_offs.len(),
            max.map_or("-".to_owned(), |v| format!("{v:.1} ms")),
            if self.sas_unchanged_overall {
                "unchanged from start to end"
            } else {
                "CHANGED"
            },
            self.mode,
            self.stream_s,
            self.probes_lost,
            self.probes_sent,
            self.lab_up_s,
            self.system_up_s,
            self.total_s,
            if self.ok() { "demo OK" } else { "demo FAILED" }
        )
    }
}

/// Sleeps until `until`, in small steps so Ctrl-C is honoured.
fn sleep_until(until: Instant, stop: &AtomicBool) -> Result<()> {
    loop {
        interrupted(stop)?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn file_len(p: &std::path::Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Runs the demo; `out` sees every line as it happens (progress, one line per hand-off, the summary).
pub fn run_demo(opts: &DemoOptions, out: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    let t0 = Instant::now();
    crate::require_lab_tools()?;
    let mode_name = match opts.mode {
        Mode::TwoBox => "two-box",
        Mode::OneBox => "one-box",
        Mode::Replicas => "replicas",
    };
    let mut lab = Lab::up(LabOptions {
        mode: opts.mode,
        initial_access: Some(opts.start),
        e2e_bin: opts.e2e_bin.clone(),
        keep_run_dir: opts.keep_run_dir,
        ..LabOptions::default()
    })?;
    let lab_up_s = t0.elapsed().as_secs_f64();
    out(&format!(
        "lab {} up ({mode_name}) in {lab_up_s:.1} s; MN attached at {}",
        lab.prefix(),
        opts.start
    ));
    interrupted(&opts.stop)?;
    let echo = lab.spawn_echo()?;

    let t1 = Instant::now();
    let sys = System::start(&mut lab, SystemOptions::default())?;
    let system_up_s = t1.elapsed().as_secs_f64();
    let state = system::mn_state(&lab)?;
    let first = SaSnapshot::of(&sys.client, &sys.gateway)?;
    let spi = first
        .client
        .first()
        .map(|s| format!("IKE SPIs {}/{}", s.ike_initiator, s.ike_responder))
        .unwrap_or_default();
    out(&format!(
        "daemons and VPN up in {system_up_s:.1} s: MN registered (care-of address {}), VPN client <-> gateway \
         established with {spi}",
        state.get("care_of_address").and_then(|v| v.as_str()).unwrap_or("?"),
    ));
    interrupted(&opts.stop)?;
    let mn_ns = lab.ns("mn");
    probe::wait_echo(&mn_ns, bench_target(), Duration::from_secs(10))?;
    let prober = Prober::start(
        &mn_ns,
        ProbeConfig {
            target: bench_target(),
            interval: opts.interval,
            drain: Duration::from_millis(500),
        },
    )?;
    let stream_start = Instant::now();
    out(&format!(
        "stream running: one UDP datagram every {} ms MN {} -> CN {}:{} through the VPN in the Mobile IP tunnel",
        opts.interval.as_millis(),
        plan::HOA,
        plan::CN,
        plan::ECHO_PORT
    ));

    let (mn_log, proxy_log) = (sys.dir().join("mn.log"), sys.dir().join("proxy.log"));
    let mut hand_offs = Vec::new();
    let mut from = opts.start;
    let mut window_from = stream_start;
    for &to in &opts.route {
        let arrived = lab.last_attach().unwrap_or(stream_start);
        sleep_until(arrived.max(stream_start) + opts.dwell, &opts.stop)?;
        let before = SaSnapshot::of(&sys.client, &sys.gateway)?;
        let cursors = (sys.client.log_cursor(), sys.gateway.log_cursor());
        let offsets = (file_len(&mn_log), file_len(&proxy_log));
        // Keep the swanctl calls away from the hand-off itself.
        sleep_until(Instant::now() + Duration::from_millis(300), &opts.stop)?;
        let (wall0, mono0) = (SystemTime::now(), Instant::now());
        let marks = lab.mn_attach(to, false)?;
        prober.mark(&marks);
        let stop = Arc::clone(&opts.stop);
        prober.wait_recovered(opts.recovery_timeout, &move || stop.load(Ordering::SeqCst));
        interrupted(&opts.stop)?;
        // Keep streaming a while: a second gap would show up here.
        sleep_until(Instant::now() + Duration::from_millis(500), &opts.stop)?;
        let after = SaSnapshot::of(&sys.client, &sys.gateway)?;
        let ike =
            sys.client.ike_counts_since(cursors.0)?.messages() + sys.gateway.ike_counts_since(cursors.1)?.messages();
        thread::sleep(Duration::from_millis(20));
        let daemons = mip_path::timeline(
            &mip_path::read_from(&mn_log, offsets.0)?,
            &mip_path::read_from(&proxy_log, offsets.1)?,
            bench::wall_clock_of(marks.start, wall0, mono0),
        );
        let window_end = Instant::now();
        let stream = prober
            .timeline()
            .window(window_from, marks.start, marks.switched, window_end);
        let care_of_address = system::mn_state(&lab)
            .ok()
            .and_then(|v| v.get("care_of_address").and_then(|c| c.as_str()).map(str::to_owned));
        let h = DemoHandoff {
            from,
            to,
            switch_ms: marks.switched.saturating_duration_since(marks.start).as_secs_f64() * 1000.0,
            stream,
            registered_ms: daemons.mn_registered_ms,
            care_of_address,
            sas_unchanged: before.is_up() && before == after,
            ike_messages: ike,
        };
        out(&h.line());
        hand_offs.push(h);
        window_from = window_end;
        from = to;
    }
    thread::sleep(Duration::from_millis(300));
    let report = prober.stop()?;
    let last = SaSnapshot::of(&sys.client, &sys.gateway)?;
    let stream_s = stream_start.elapsed().as_secs_f64();
    drop(sys);
    drop(echo);
    lab.down()?;
    let demo = DemoReport {
        mode: mode_name.to_owned(),
        lab_up_s,
        system_up_s,
        hand_offs,
        probes_sent: report.sent,
        probes_lost: report.lost,
        stream_s,
        sas_unchanged_overall: first.is_up() && first == last,
        total_s: t0.elapsed().as_secs_f64(),
    };
    out(&demo.summary());
    Ok(demo)
}

fn bench_target() -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(plan::CN, plan::ECHO_PORT)
}

//! `e2e bench traces`: what trace export costs under a registration storm (issue 7).
//!
//! Through the real daemons (needs root, the lab and rotel, see [`crate::otel`]): [`Mode::Replicas`] with one
//! `mip-proxy` replica, the reference `mip-ha`, `nodes` synthetic nodes. Each run is a fresh lab with rotel in ns
//! `cn` receiving and discarding (`--exporter blackhole`), the system started with one tracing setting, then two
//! [`storm`](mod@crate::storm)s from ns `inet` as `e2e bench replication` runs them (12 senders × 8 outstanding):
//! every node's first registration, then `rounds` re-registrations of each. The settings:
//! * **off**: no `daemon.tracing` (nothing exported, no span created); rotel runs all the same;
//! * **on**: every daemon exports to rotel, `sampling_ratio` 1.0 (every registration traced);
//! * **sampled**: the same with `sampling_ratio` R for each `--sampling-ratio R` (default 0.1), for proxy, HA
//!   and MN alike.
//!
//! The settings alternate within one invocation (off, on, sampled…, then again, `runs` times), so the baseline
//! is measured in the same run as what it is compared with; the report gives each setting's medians and their
//! ratios to off's medians, and the ratio to off of the same cycle for each cycle. After the storms the proxy
//! and the HA are stopped with SIGTERM, and the spans their batch processors dropped (queue full) are read from
//! their logs (`BatchSpanProcessor.SpansDropped dropped_span_count=N`, logged at shutdown when N > 0).

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::otel;
use crate::plan;
use crate::storm::{self, StormOptions, StormReport};
use crate::system::{self, System, SystemOptions};
use crate::throughput::{median, ratio};
use crate::topology::{Lab, LabOptions, Mode};

/// What the daemons' logs say at shutdown when their span queue overflowed (opentelemetry_sdk).
const DROPPED_KEY: &str = "dropped_span_count=";

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct TracesBenchOptions {
    /// Cycles: each runs every setting once (off, on, then each sampled ratio), each in a fresh lab.
    pub runs: u32,
    /// Synthetic nodes of the storms.
    pub nodes: u32,
    /// Re-registrations per node after its first registration.
    pub rounds: u32,
    /// UDP source ports of the storm.
    pub senders: usize,
    /// Requests outstanding per source port.
    pub window: usize,
    /// One "sampled" setting per ratio (0.0 to 1.0); empty: off and on only.
    pub sampling_ratios: Vec<f64>,
    /// The `e2e` binary for the lab's helpers (`None`: the running binary if it is `e2e`; see [`LabOptions`]).
    pub e2e_bin: Option<PathBuf>,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
}

impl Default for TracesBenchOptions {
    fn default() -> Self {
        TracesBenchOptions {
            runs: 2,
            nodes: 2_000,
            rounds: 20,
            senders: 12,
            window: 8,
            sampling_ratios: vec![0.1],
            e2e_bin: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A tracing setting of the daemons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tracing {
    /// No `daemon.tracing`.
    Off,
    /// Export every registration (`sampling_ratio` 1.0).
    On,
    /// Export this fraction of registrations.
    Sampled(f64),
}

impl Tracing {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Tracing::Off => "off",
            Tracing::On => "on",
            Tracing::Sampled(_) => "sampled",
        }
    }

    /// `daemon.tracing.sampling_ratio`; `None` when off.
    pub fn sampling_ratio(self) -> Option<f64> {
        match self {
            Tracing::Off => None,
            Tracing::On => Some(1.0),
            Tracing::Sampled(r) => Some(r),
        }
    }

    /// The settings of one cycle, in order.
    pub fn cycle(sampling_ratios: &[f64]) -> Vec<Tracing> {
        let mut v = vec![Tracing::Off, Tracing::On];
        v.extend(sampling_ratios.iter().map(|&r| Tracing::Sampled(r)));
        v
    }

    fn system_options(self, nodes: u32) -> SystemOptions {
        let (endpoint, ratio) = match self {
            Tracing::Off => (None, None),
            // The daemons' default ratio: exactly what `daemon.tracing.endpoint` alone configures.
            Tracing::On => (Some(otel::collector_endpoint()), None),
            Tracing::Sampled(r) => (Some(otel::collector_endpoint()), Some(r)),
        };
        SystemOptions {
            replicas: 1,
            storm_nodes: nodes,
            foreign_agents: false,
            tracing_endpoint: endpoint,
            tracing_sampling_ratio: ratio,
            ..SystemOptions::default()
        }
    }
}

/// One lab run with one setting.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TracesRun {
    /// `off`, `on` or `sampled`.
    pub mode: &'static str,
    /// The daemons' `sampling_ratio` (`null` when off).
    pub sampling_ratio: Option<f64>,
    /// Which cycle (0-based).
    pub cycle: u32,
    /// Every node's first registration.
    pub first_registrations: StormReport,
    /// `rounds` re-registrations of every node.
    pub refreshes: StormReport,
    /// Spans the proxy's batch processor dropped (queue full), from its log at shutdown; `null` when off or
    /// when the proxy did not exit by itself after SIGTERM (no shutdown log to read).
    pub proxy_spans_dropped: Option<u64>,
    /// The same for the HA.
    pub ha_spans_dropped: Option<u64>,
}

/// One setting over all cycles: medians, and ratios to off measured in the same invocation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModeResult {
    /// `off`, `on` or `sampled`.
    pub mode: &'static str,
    /// The daemons' `sampling_ratio` (`null` when off).
    pub sampling_ratio: Option<f64>,
    /// Runs of this setting.
    pub runs: usize,
    /// Accepted first registrations per second (median).
    pub first_per_s: f64,
    /// Accepted re-registrations per second (median).
    pub refresh_per_s: f64,
    /// `first_per_s / off's first_per_s`.
    pub first_ratio: f64,
    /// `refresh_per_s / off's refresh_per_s`.
    pub refresh_ratio: f64,
    /// Each cycle's first-registration rate over off's in the same cycle.
    pub first_ratio_per_cycle: Vec<f64>,
    /// Each cycle's re-registration rate over off's in the same cycle.
    pub refresh_ratio_per_cycle: Vec<f64>,
    /// Re-registration latency p50, ms (median over the runs).
    pub refresh_latency_ms_p50: f64,
    /// Re-registration latency p99, ms (median over the runs).
    pub refresh_latency_ms_p99: f64,
    /// Every run's first-registration rate.
    pub first_per_s_all: Vec<f64>,
    /// Every run's re-registration rate.
    pub refresh_per_s_all: Vec<f64>,
    /// Every request of every run was accepted.
    pub all_accepted: bool,
    /// Every run's spans dropped by the proxy (`null`: not known, see [`TracesRun`]).
    pub proxy_spans_dropped: Vec<Option<u64>>,
}

/// Where the figures come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Environment {
    /// CPUs available to this process.
    pub cores: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// The setup.
    pub setup: String,
    /// The `mip-proxy` binary measured.
    pub proxy_bin: String,
}

/// The whole benchmark's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TracesReport {
    /// Synthetic nodes.
    pub nodes: u32,
    /// Re-registrations per node.
    pub rounds: u32,
    /// UDP source ports of the storm.
    pub senders: usize,
    /// Requests outstanding per source port.
    pub window: usize,
    /// Cycles (each setting ran this many times).
    pub cycles: u32,
    /// One entry per setting, off first.
    pub modes: Vec<ModeResult>,
    /// Every run, in the order they ran.
    pub runs: Vec<TracesRun>,
    /// Where the figures come from.
    pub environment: Environment,
}

impl TracesReport {
    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "trace export under a registration storm: 1 replica, {} nodes, first registrations then {} \
             re-registrations each, {} cycles; {} cores, kernel {}",
            self.nodes, self.rounds, self.cycles, self.environment.cores, self.environment.kernel
        );
        let _ = writeln!(
            s,
            "{:<8} {:>6} {:>10} {:>7} {:>12} {:>7} {:>9} {:>9} {:>8} {:>22}",
            "tracing",
            "ratio",
            "first/s",
            "vs off",
            "refresh/s",
            "vs off",
            "p50 ms",
            "p99 ms",
            "accepted",
            "proxy spans dropped"
        );
        for m in &self.modes {
            let dropped = m
                .proxy_spans_dropped
                .iter()
                .map(|d| d.map_or_else(|| "-".to_owned(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join("/");
            let _ = writeln!(
                s,
                "{:<8} {:>6} {:>10.0} {:>7.3} {:>12.0} {:>7.3} {:>9.2} {:>9.2} {:>8} {:>22}",
                m.mode,
                m.sampling_ratio.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                m.first_per_s,
                m.first_ratio,
                m.refresh_per_s,
                m.refresh_ratio,
                m.refresh_latency_ms_p50,
                m.refresh_latency_ms_p99,
                if m.all_accepted { "all" } else { "NOT all" },
                dropped
            );
        }
        s
    }
}

/// Runs the benchmark; `log` gets a line per run.
pub fn bench_traces(opts: &TracesBenchOptions, log: &mut dyn FnMut(&str)) -> Result<TracesReport> {
    if opts.runs == 0 {
        return Err(Error::Usage("bench traces: --runs must be at least 1".into()));
    }
    if let Some(r) = opts.sampling_ratios.iter().find(|r| !(0.0..=1.0).contains(*r)) {
        return Err(Error::Usage(format!(
            "bench traces: sampling ratio {r} is not within 0.0-1.0"
        )));
    }
    crate::require_lab_tools()?;
    otel::rotel_agent()?;
    let settings = Tracing::cycle(&opts.sampling_ratios);
    let mut runs = Vec::new();
    for cycle in 0..opts.runs {
        for &t in &settings {
            crate::error::interrupted(&opts.stop)?;
            log(&format!(
                "cycle {}/{}: tracing {}{}: {} nodes, first registrations, then {} re-registrations each",
                cycle + 1,
                opts.runs,
                t.name(),
                t.sampling_ratio().map_or_else(String::new, |r| format!(" (ratio {r})")),
                opts.nodes,
                opts.rounds
            ));
            let r = one_run(opts, t, cycle)?;
            log(&format!("  first registrations: {}", r.first_registrations.summary()));
            log(&format!("  re-registrations: {}", r.refreshes.summary()));
            if r.proxy_spans_dropped.is_some() || r.ha_spans_dropped.is_some() {
                log(&format!(
                    "  spans dropped (queue full): proxy {:?}, HA {:?}",
                    r.proxy_spans_dropped, r.ha_spans_dropped
                ));
            }
            runs.push(r);
        }
    }
    let modes = summarize(&settings, &runs);
    Ok(TracesReport {
        nodes: opts.nodes,
        rounds: opts.rounds,
        senders: opts.senders,
        window: opts.window,
        cycles: opts.runs,
        modes,
        runs,
        environment: Environment {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            setup: "the namespace lab (Mode::Replicas; the daemons next to the e2e binary): one mip-proxy replica \
                    behind the ECMP router, the reference mip-ha, no foreign agents; rotel (OTLP/gRPC, \
                    --exporter blackhole) in ns cn in every run, the proxy and the HA exporting to it over the \
                    intranet LAN when tracing is on; registration storms of synthetic nodes from ns inet \
                    (crate::storm); storm, daemons, exporters and collector share the same cores"
                .into(),
            proxy_bin: system::find_bin("mip-proxy")
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        },
    })
}

/// A fresh lab, rotel, the system with `tracing`, both storms, then the daemons' shutdown logs.
fn one_run(opts: &TracesBenchOptions, tracing: Tracing, cycle: u32) -> Result<TracesRun> {
    let mut lab = Lab::up(LabOptions {
        mode: Mode::Replicas,
        e2e_bin: opts.e2e_bin.clone(),
        ..LabOptions::default()
    })?;
    let (rotel, _) = otel::collector(&lab, false)?;
    let mut sys = System::start(&mut lab, tracing.system_options(opts.nodes))?;
    crate::error::interrupted(&opts.stop)?;
    let first = StormOptions {
        nodes: opts.nodes,
        rounds: 1,
        senders: opts.senders,
        src: plan::INET_DMZ,
        dst: SocketAddrV4::new(plan::PROXY_PUBLIC, storm::MIP_PORT),
        lifetime: 600,
        rate: None,
        window: opts.window,
        timeout: Duration::from_secs(3),
        retransmits: 1,
        deregister: false,
    };
    let inet = lab.ns("inet");
    let first_registrations = storm::run_storm(&inet, &first)?;
    crate::error::interrupted(&opts.stop)?;
    let refreshes = storm::run_storm(
        &inet,
        &StormOptions {
            rounds: opts.rounds.max(1),
            ..first
        },
    )?;
    // SIGTERM; a daemon that exits by itself has shut its tracer down, which logs the dropped spans.
    let proxy_exit = sys.stop_replica(0);
    let ha_exit = sys.ha.stop();
    let dir = lab.run_dir().join("system");
    let traced = tracing != Tracing::Off;
    let proxy_log = dir.join(format!("proxy-{}.log", sys.replica_ns(0)));
    let proxy_spans_dropped = dropped_if(traced, proxy_exit, &proxy_log);
    let ha_spans_dropped = dropped_if(traced, ha_exit, &dir.join("ha.log"));
    sys.stop();
    drop(rotel);
    lab.down()?;
    Ok(TracesRun {
        mode: tracing.name(),
        sampling_ratio: tracing.sampling_ratio(),
        cycle,
        first_registrations,
        refreshes,
        proxy_spans_dropped,
        ha_spans_dropped,
    })
}

/// The spans a daemon dropped, from its log, if it was traced and exited by itself.
fn dropped_if(traced: bool, exit: Option<ExitStatus>, log: &Path) -> Option<u64> {
    if !traced || !exit.is_some_and(|s| s.success()) {
        return None;
    }
    std::fs::read_to_string(log).ok().map(|t| spans_dropped(&t))
}

/// Sum of the `dropped_span_count=N` of a daemon's log (0 when none: nothing dropped).
pub fn spans_dropped(log: &str) -> u64 {
    log.match_indices(DROPPED_KEY)
        .filter_map(|(i, _)| {
            let rest = log.get(i + DROPPED_KEY.len()..)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// Milliseconds to two decimals.
fn ms(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Per setting: medians over its runs and ratios to off.
pub fn summarize(settings: &[Tracing], runs: &[TracesRun]) -> Vec<ModeResult> {
    let of = |t: Tracing| -> Vec<&TracesRun> {
        runs.iter()
            .filter(|r| r.mode == t.name() && r.sampling_ratio == t.sampling_ratio())
            .collect()
    };
    let off = of(Tracing::Off);
    let off_first = median(&off.iter().map(|r| r.first_registrations.per_second).collect::<Vec<_>>());
    let off_refresh = median(&off.iter().map(|r| r.refreshes.per_second).collect::<Vec<_>>());
    settings
        .iter()
        .map(|&t| {
            let mine = of(t);
            let first: Vec<f64> = mine.iter().map(|r| r.first_registrations.per_second).collect();
            let refresh: Vec<f64> = mine.iter().map(|r| r.refreshes.per_second).collect();
            let per_cycle = |pick: fn(&TracesRun) -> f64| -> Vec<f64> {
                mine.iter()
                    .filter_map(|r| {
                        let base = off.iter().find(|o| o.cycle == r.cycle)?;
                        Some(ratio(pick(r), pick(base)))
                    })
                    .collect()
            };
            let (first_per_s, refresh_per_s) = (median(&first), median(&refresh));
            ModeResult {
                mode: t.name(),
                sampling_ratio: t.sampling_ratio(),
                runs: mine.len(),
                first_per_s: first_per_s.round(),
                refresh_per_s: refresh_per_s.round(),
                first_ratio: ratio(first_per_s, off_first),
                refresh_ratio: ratio(refresh_per_s, off_refresh),
                first_ratio_per_cycle: per_cycle(|r| r.first_registrations.per_second),
                refresh_ratio_per_cycle: per_cycle(|r| r.refreshes.per_second),
                refresh_latency_ms_p50: ms(median(
                    &mine.iter().map(|r| r.refreshes.latency_ms_p50).collect::<Vec<_>>(),
                )),
                refresh_latency_ms_p99: ms(median(
                    &mine.iter().map(|r| r.refreshes.latency_ms_p99).collect::<Vec<_>>(),
                )),
                first_per_s_all: first.iter().map(|v| v.round()).collect(),
                refresh_per_s_all: refresh.iter().map(|v| v.round()).collect(),
                all_accepted: !mine.is_empty()
                    && mine
                        .iter()
                        .all(|r| r.first_registrations.all_accepted() && r.refreshes.all_accepted()),
                proxy_spans_dropped: mine.iter().map(|r| r.proxy_spans_dropped).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    fn run(t: Tracing, cycle: u32, first: f64, refresh: f64) -> TracesRun {
        let storm = |per_second| StormReport {
            sent: 10,
            accepted: 10,
            per_second,
            ..StormReport::default()
        };
        TracesRun {
            mode: t.name(),
            sampling_ratio: t.sampling_ratio(),
            cycle,
            first_registrations: storm(first),
            refreshes: storm(refresh),
            proxy_spans_dropped: (t != Tracing::Off).then_some(5),
            ha_spans_dropped: None,
        }
    }

    #[test]
    fn medians_and_ratios_against_off_of_the_same_invocation() {
        let settings = Tracing::cycle(&[0.1]);
        let runs = vec![
            run(Tracing::Off, 0, 100.0, 400.0),
            run(Tracing::On, 0, 50.0, 100.0),
            run(Tracing::Sampled(0.1), 0, 90.0, 300.0),
            run(Tracing::Off, 1, 200.0, 400.0),
            run(Tracing::On, 1, 50.0, 300.0),
            run(Tracing::Sampled(0.1), 1, 150.0, 400.0),
        ];
        let m = summarize(&settings, &runs);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].mode, m[0].first_ratio, m[0].refresh_ratio), ("off", 1.0, 1.0));
        assert_eq!((m[1].first_per_s, m[1].refresh_per_s), (50.0, 200.0));
        assert_eq!((m[1].first_ratio, m[1].refresh_ratio), (0.333, 0.5));
        assert_eq!(m[1].first_ratio_per_cycle, vec![0.5, 0.25]);
        assert_eq!(m[1].refresh_ratio_per_cycle, vec![0.25, 0.75]);
        assert_eq!((m[2].mode, m[2].sampling_ratio), ("sampled", Some(0.1)));
        assert_eq!(m[2].first_ratio, 0.8);
        assert!(m.iter().all(|x| x.all_accepted && x.runs == 2));
        let report = TracesReport {
            nodes: 10,
            rounds: 1,
            senders: 1,
            window: 1,
            cycles: 2,
            modes: m,
            runs,
            environment: Environment {
                cores: 2,
                kernel: "6".into(),
                setup: String::new(),
                proxy_bin: String::new(),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for ptr in [
            "/modes/1/refresh_ratio",
            "/modes/2/sampling_ratio",
            "/runs/0/first_registrations/per_second",
            "/runs/1/proxy_spans_dropped",
            "/environment/kernel",
        ] {
            assert!(v.pointer(ptr).is_some(), "{ptr} missing");
        }
        assert!(report.table().contains("sampled"));
    }

    #[test]
    fn dropped_spans_from_the_shutdown_log() {
        let log = "2026 WARN opentelemetry_sdk: name=\"BatchSpanProcessor.SpanDroppingStarted\"\n\
                   2026 WARN opentelemetry_sdk: name=\"BatchSpanProcessor.SpansDropped\" dropped_span_count=152266 \
                   max_queue_size=2048\n";
        assert_eq!(spans_dropped(log), 152_266);
        assert_eq!(spans_dropped("nothing dropped"), 0);
    }
}

//! `e2e bench failover`: how long traffic stops when a proxy replica dies (issue 5; target: median ≤ 300 ms
//! from SIGKILL to traffic flowing again, including the route withdrawal).
//!
//! The Replicas lab with the whole system (three replicas, HA, FAs, MN, both charons). Per run: all three
//! replicas are next hops, the harness's BFD stand-in ([`crate::bfd`], 3 × 50 ms `/readyz` probes) runs, the
//! MN probes the CN through the VPN every millisecond, the replica forwarding most of the probe's tunnel
//! packets is SIGKILLed, BFD withdraws its next hop and traffic resumes through the others, which hold the
//! binding already. Measured per run: detection (SIGKILL → next hop withdrawn), SIGKILL → first echo of a
//! probe sent after the kill, the probe's longest gap, probes lost, and whether the MN re-registered (it must
//! not). The victim is restarted (ready only once caught up) before the next run.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bfd::{Bfd, BfdOptions};
use crate::error::{Error, Result};
use crate::plan;
use crate::probe::{ProbeConfig, Prober};
use crate::system::{self, System, SystemOptions, admin_get, metric_sum};
use crate::topology::{HandoffMarks, Lab, LabOptions, Mode};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Replica kills.
    pub runs: u32,
    /// BFD stand-in settings.
    pub bfd: BfdOptions,
    /// Probe interval.
    pub interval: Duration,
    /// A run whose traffic has not resumed within this fails the benchmark.
    pub recovery_timeout: Duration,
    /// Set by Ctrl-C / SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// The lab to build (its mode is forced to Replicas).
    pub lab: LabOptions,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            runs: 10,
            bfd: BfdOptions::default(),
            interval: Duration::from_millis(1),
            recovery_timeout: Duration::from_secs(3),
            stop: Arc::new(AtomicBool::new(false)),
            lab: LabOptions::default(),
        }
    }
}

/// One replica kill.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverRun {
    /// The replica killed (`px1`..).
    pub victim: String,
    /// SIGKILL → its next hop withdrawn.
    pub detection_ms: f64,
    /// SIGKILL → first echo of a probe sent after the kill (the interruption as a user sees it).
    pub kill_to_traffic_ms: f64,
    /// Longest gap between consecutive echoed probes over the run.
    pub longest_gap_ms: Option<f64>,
    /// Probes lost over the run.
    pub lost: u64,
    /// Registrations the MN made during the run (must be 0).
    pub reregistrations: u64,
}

/// p50 and max of a series.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let p50 = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
            n => (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0,
        };
        Spread {
            p50,
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// The benchmark's JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverReport {
    /// BFD stand-in: probe interval and multiplier.
    pub bfd_interval_ms: f64,
    /// Consecutive misses that declare a replica down.
    pub bfd_multiplier: u32,
    /// Probe interval.
    pub probe_interval_ms: f64,
    /// SIGKILL → traffic again, p50/max over the runs.
    pub kill_to_traffic_ms: Spread,
    /// SIGKILL → next hop withdrawn, p50/max.
    pub detection_ms: Spread,
    /// Target for the median of `kill_to_traffic_ms`.
    pub target_p50_ms: f64,
    /// Whether the median met it.
    pub target_met: bool,
    /// MN registrations over all runs (no failover may cost one).
    pub reregistrations: u64,
    /// Every run.
    pub runs: Vec<FailoverRun>,
    /// What was measured where.
    pub environment: String,
}

/// The running replica that forwarded most tunnel packets over `window`.
pub fn busiest_replica(lab: &Lab, sys: &System, running: &[usize], window: Duration) -> Result<usize> {
    let packets = |i: usize| -> Result<f64> {
        let m = admin_get(&lab.ns(sys.replica_ns(i)), "/metrics")?;
        Ok(metric_sum(&m, "mip_tunnel_packets_total", &[]))
    };
    let before = running.iter().map(|&i| packets(i)).collect::<Result<Vec<_>>>()?;
    std::thread::sleep(window);
    let mut best: Option<(usize, f64)> = None;
    for (&i, b) in running.iter().zip(before) {
        let d = packets(i)? - b;
        if d > 0.0 && best.is_none_or(|(_, m)| d > m) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
        .ok_or_else(|| Error::Usage("no replica forwarded tunnel packets".into()))
}

fn mn_registrations(lab: &Lab) -> Result<f64> {
    let m = admin_get(&lab.ns("mn"), "/metrics")?;
    Ok(metric_sum(&m, "mip_registrations_total", &["code=\"0\""]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark; `progress` gets one line per run.
pub fn bench_failover(opts: &FailoverOptions, progress: &mut dyn FnMut(&str)) -> Result<FailoverReport> {
    crate::require_lab_tools()?;
    let mut lab = Lab::up(LabOptions {
        mode: Mode::Replicas,
        ..opts.lab.clone()
    })?;
    let echo = lab.spawn_echo()?;
    let mut sys = System::start(
        &mut lab,
        SystemOptions {
            replicas: 3,
            proxy_drain: Duration::from_secs(1),
            ..SystemOptions::default()
        },
    )?;
    let all = [0usize, 1, 2];
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        if opts.stop.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        lab.set_replica_nexthops(&all)?;
        let bfd = Bfd::start(&lab, opts.bfd)?;
        let regs = mn_registrations(&lab)?;
        let prober = Prober::start(
            &lab.ns("mn"),
            ProbeConfig {
                target: SocketAddrV4::new(plan::CN, plan::ECHO_PORT),
                interval: opts.interval,
                drain: Duration::from_millis(500),
            },
        )?;
        std::thread::sleep(Duration::from_millis(200));
        let victim = busiest_replica(&lab, &sys, &all, Duration::from_millis(300))?;
        let killed = Instant::now();
        prober.mark(&HandoffMarks {
            start: killed,
            switched: killed,
            old_down: killed,
        });
        sys.kill_replica(victim)?;
        let withdrawn = bfd.wait(victim, false, opts.recovery_timeout)?;
        let resumed = prober.wait_recovered(opts.recovery_timeout, &|| opts.stop.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(200));
        let report = prober.stop()?;
        let hops = bfd.stop()?;
        lab.set_replica_nexthops(&hops)?;
        if !resumed {
            return Err(Error::Usage(format!(
                "run {run}: traffic did not resume within {:?} after SIGKILL of {}: {}",
                opts.recovery_timeout,
                sys.replica_ns(victim),
                report.to_json()
            )));
        }
        let reregistrations = (mn_registrations(&lab)? - regs).max(0.0) as u64;
        let r = FailoverRun {
            victim: sys.replica_ns(victim).to_owned(),
            detection_ms: ms(withdrawn.saturating_duration_since(killed)),
            kill_to_traffic_ms: report.mark_to_first_echo_ms.unwrap_or(f64::NAN),
            longest_gap_ms: report.interruption_ms,
            lost: report.lost,
            reregistrations,
        };
        progress(&format!(
            "run {}/{}: SIGKILL {} → withdrawn {:.0} ms, traffic {:.0} ms (longest gap {:.0} ms, {} lost, {} re-registrations)",
            run + 1,
            opts.runs,
            r.victim,
            r.detection_ms,
            r.kill_to_traffic_ms,
            r.longest_gap_ms.unwrap_or(f64::NAN),
            r.lost,
            r.reregistrations
        ));
        runs.push(r);
        sys.start_replica(&lab, victim)?;
        system::wait_registered(&lab, Duration::from_secs(2))?;
    }
    let traffic: Vec<f64> = runs.iter().map(|r| r.kill_to_traffic_ms).collect();
    let detection: Vec<f64> = runs.iter().map(|r| r.detection_ms).collect();
    let kill_to_traffic_ms = Spread::of(&traffic);
    let target_p50_ms = 300.0;
    let report = FailoverReport {
        bfd_interval_ms: ms(opts.bfd.interval),
        bfd_multiplier: opts.bfd.multiplier,
        probe_interval_ms: ms(opts.interval),
        kill_to_traffic_ms,
        detection_ms: Spread::of(&detection),
        target_p50_ms,
        target_met: !runs.is_empty() && kill_to_traffic_ms.p50 <= target_p50_ms,
        reregistrations: runs.iter().map(|r| r.reregistrations).sum(),
        runs,
        environment: format!(
            "namespace lab, 3 mip-proxy replicas behind a Linux ECMP router (L4 hash), BFD stand-in polling /readyz \
             every {} ms × {}; {} cores; daemons from {}",
            ms(opts.bfd.interval),
            opts.bfd.multiplier,
            std::thread::available_parallelism().map_or(0, usize::from),
            system::find_bin("mip-proxy")
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    };
    sys.stop();
    drop(echo);
    lab.down()?;
    Ok(report)
}

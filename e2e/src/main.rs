//! `e2e`: the namespace lab's command-line entry point.
//!
//! ```text
//! e2e cleanup                                      kill recorded lab processes, delete every mlab* namespace
//! e2e up [--mode two-box|one-box] [--delay-ms N]    build a lab, print its prefix, hold it until Ctrl-C
//! e2e delay --dev dly0 --delay-ms N --iifs a,b,c   the delay line (run inside ns inet by the lab)
//! e2e echo [--port 9000]                           UDP echo server (run inside ns cn by the lab)
//! e2e classify FILE.pcap                           count a capture's frames by class (JSON)
//! e2e bench handoff --json OUT [--runs 10] [--only baseline|mip-proxy|all]
//! e2e bench throughput --json OUT [--seconds 5] [--runs 5] [--only all|tcp|forwarding]
//! e2e bench failover --json OUT [--runs 10] [--bfd-interval-ms 50] [--bfd-multiplier 3]
//! e2e bench replication --json OUT [--bindings 1000000] [--rate 5000] [--seconds 5] [--storm-nodes 2000]
//! e2e bench traces --json OUT [--runs 2] [--nodes 2000] [--rounds 20] [--sampling-ratio 0.1,...]
//! e2e demo [--mode two-box|one-box] [--dwell-ms 2000] [--json OUT]   the lab demo: MN roams A -> C1 -> B -> D
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use mip_e2e::bench::{self, BenchOptions, Only};
use mip_e2e::demo::{self, DemoOptions};
use mip_e2e::failover;
use mip_e2e::replication_bench::{self, ReplicationBenchOptions};
use mip_e2e::throughput::{self, ThroughputOptions};
use mip_e2e::traces_bench::{self, TracesBenchOptions};
use mip_e2e::{Lab, LabOptions, Mode, capture, delay, probe, topology};

#[derive(Debug, Parser)]
#[command(
    name = "e2e",
    about = "Namespace lab and hand-off benchmark of mip-proxy (docs/lab.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kill every process recorded under /tmp/mlab-run and delete every mlab* namespace.
    Cleanup,
    /// Build a lab and hold it until Ctrl-C (for poking around with `ip netns exec`).
    Up {
        /// Two-box or one-box.
        #[arg(long, value_enum, default_value_t = ModeArg::TwoBox)]
        mode: ModeArg,
        /// One-way delay per transit of ns inet, ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
    },
    /// The userspace delay line (run inside ns inet; `Lab::set_delay` starts it).
    Delay {
        /// TUN device name.
        #[arg(long, default_value = topology::DELAY_DEV)]
        dev: String,
        /// One-way delay per transit, ms.
        #[arg(long)]
        delay_ms: u64,
        /// Comma-separated interfaces whose forwarded packets are delayed.
        #[arg(long, value_delimiter = ',', required = true)]
        iifs: Vec<String>,
        /// Routing table and rule preference of the detour.
        #[arg(long, default_value_t = topology::DELAY_TABLE)]
        table: u32,
        /// Packets that can be in flight.
        #[arg(long, default_value_t = 4096)]
        slots: usize,
    },
    /// UDP echo server for the probe (run inside ns cn).
    Echo {
        /// UDP port.
        #[arg(long, default_value_t = mip_e2e::plan::ECHO_PORT)]
        port: u16,
    },
    /// Count a capture's frames by class (UDP/434 registrations and tunnel data, bare IPsec, other).
    Classify {
        /// pcap or pcapng file.
        pcap: PathBuf,
    },
    /// The lab demo: the whole product in a lab, a 1 ms probe stream MN -> CN through the VPN while the MN roams
    /// A -> C1 -> B -> D; one line per hand-off (interruption, registration, SAs, IKE messages), then teardown.
    Demo {
        /// Two-box or one-box.
        #[arg(long, value_enum, default_value_t = ModeArg::TwoBox)]
        mode: ModeArg,
        /// Time on each access network before the next hand-off, ms.
        #[arg(long, default_value_t = 2000)]
        dwell_ms: u64,
        /// Also write the demo's report here (JSON).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Traffic interruption of a hand-off: strongSwan alone (re-establish, MOBIKE) and, once wired, mip-proxy.
    Handoff {
        /// Where to write the JSON result.
        #[arg(long)]
        json: PathBuf,
        /// Also write every run's probe report and IKE message counts here (JSON).
        #[arg(long)]
        details: Option<PathBuf>,
        /// Added RTTs (ms) of the C1 <-> A cases, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [0u32, 40])]
        rtts: Vec<u32>,
        /// Hand-offs per case (C1 <-> A cases).
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// Hand-offs per NAT-change-only case (C1 <-> C2); each may wait the full recovery timeout.
        #[arg(long, default_value_t = 5)]
        nat_only_runs: u32,
        /// Which paths to measure.
        #[arg(long, value_enum, default_value_t = OnlyArg::All)]
        only: OnlyArg,
        /// Probe interval, ms.
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        /// A hand-off not recovered within this many seconds counts as not recovered.
        #[arg(long, default_value_t = 15)]
        recovery_timeout_s: u64,
        /// Minimum stay on an access network before the next hand-off, ms (lets the NATs' ARP state for
        /// the departed MN expire; see BenchOptions::dwell).
        #[arg(long, default_value_t = 4000)]
        dwell_ms: u64,
    },
    /// TCP MN -> CN through proxy+VPN against the VPN alone, and raw proxy forwarding (packets/s) against
    /// kernel forwarding; medians of interleaved runs and their ratios.
    Throughput {
        /// Where to write the JSON result.
        #[arg(long)]
        json: PathBuf,
        /// Length of each measurement (TCP transfer, forwarding window), seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Interleaved runs (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// What to measure.
        #[arg(long, value_enum, default_value_t = ThroughputOnlyArg::All)]
        only: ThroughputOnlyArg,
    },
    /// Failover (issue 5): SIGKILL of the proxy replica carrying the traffic, BFD stand-in withdraws it from
    /// the ECMP routes, traffic resumes through the other replicas; p50/max over the runs.
    Failover {
        /// Where to write the JSON result.
        #[arg(long)]
        json: PathBuf,
        /// Replica kills.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// BFD stand-in: probe interval, ms.
        #[arg(long, default_value_t = 50)]
        bfd_interval_ms: u64,
        /// BFD stand-in: missed probes that declare a replica down.
        #[arg(long, default_value_t = 3)]
        bfd_multiplier: u32,
    },
    /// Replication (issue 5): snapshot of N bindings to a fresh replica, memory per binding, lag at a steady
    /// rate and burst throughput (two replicators in-process), and registrations per second through 1, 2 and 3
    /// mip-proxy replicas in the lab (a registration storm).
    Replication {
        /// Where to write the JSON result.
        #[arg(long)]
        json: PathBuf,
        /// Bindings of the snapshot and the memory figures.
        #[arg(long, default_value_t = 1_000_000)]
        bindings: u32,
        /// Lag: deltas (registrations) per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u32,
        /// Lag: for how many seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Burst: deltas published as fast as possible.
        #[arg(long, default_value_t = 200_000)]
        burst: u32,
        /// Registrations per second: synthetic nodes of the storm.
        #[arg(long, default_value_t = 2_000)]
        storm_nodes: u32,
        /// Registrations per second: re-registrations per node after its first registration.
        #[arg(long, default_value_t = 20)]
        storm_rounds: u32,
        /// Registrations per second: replica counts, comma-separated (each in a fresh lab).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
        replicas: Vec<usize>,
        /// Skip the lab (registrations per second): in-process figures only, no root needed.
        #[arg(long)]
        no_lab: bool,
    },
    /// Traces (issue 7): registrations per second through one mip-proxy replica with trace export off, on
    /// (every registration) and sampled, to rotel discarding what it receives; the settings alternate, each
    /// run in a fresh lab; medians per setting and their ratios to off.
    Traces {
        /// Where to write the JSON result.
        #[arg(long)]
        json: PathBuf,
        /// Cycles: each runs off, on and every sampled ratio once.
        #[arg(long, default_value_t = 2)]
        runs: u32,
        /// Synthetic nodes of the storm.
        #[arg(long, default_value_t = 2_000)]
        nodes: u32,
        /// Re-registrations per node after its first registration.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// A "sampled" setting per ratio (daemon.tracing.sampling_ratio, 0.0-1.0), comma-separated or repeated;
        /// the flag with no value: off and on only.
        #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [0.1f64])]
        sampling_ratio: Vec<f64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ThroughputOnlyArg {
    All,
    Tcp,
    Forwarding,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    TwoBox,
    OneBox,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnlyArg {
    All,
    Baseline,
    MipProxy,
}

/// Sets a flag on Ctrl-C / SIGTERM so long loops can stop and the lab's `Drop` cleans up.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("installing the SIGINT/SIGTERM handler")?;
    Ok(stop)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Demo { mode, dwell_ms, json } => {
            let stop = stop_flag()?;
            let opts = DemoOptions {
                mode: match mode {
                    ModeArg::TwoBox => Mode::TwoBox,
                    ModeArg::OneBox => Mode::OneBox,
                },
                dwell: Duration::from_millis(dwell_ms),
                stop,
                keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
                ..DemoOptions::default()
            };
            let report = demo::run_demo(&opts, &mut |line| println!("{line}"))?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !report.ok() {
                anyhow::bail!("the demo ran, but not every hand-off kept the VPN (see the lines above)");
            }
        }
        Command::Cleanup => {
            let rep = topology::cleanup_all()?;
            println!(
                "cleanup: killed {} process(es), deleted {} namespace(s), removed {} run dir(s)",
                rep.killed.len(),
                rep.namespaces.len(),
                rep.run_dirs.len()
            );
            for k in &rep.killed {
                println!("  killed {k}");
            }
            for n in &rep.namespaces {
                println!("  deleted {n}");
            }
            if !rep.problems.is_empty() {
                anyhow::bail!("cleanup incomplete: {}", rep.problems.join("; "));
            }
        }
        Command::Up { mode, delay_ms } => {
            let stop = stop_flag()?;
            let lab = Lab::up(LabOptions {
                mode: match mode {
                    ModeArg::TwoBox => Mode::TwoBox,
                    ModeArg::OneBox => Mode::OneBox,
                },
                delay_ms,
                ..LabOptions::default()
            })?;
            println!(
                "lab {} is up ({:?}, {} ms per inet transit); Ctrl-C tears it down",
                lab.prefix(),
                lab.mode(),
                delay_ms
            );
            println!(
                "namespaces: {}",
                lab.namespaces().iter().map(|n| lab.ns(n)).collect::<Vec<_>>().join(" ")
            );
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            lab.down()?;
        }
        Command::Delay {
            dev,
            delay_ms,
            iifs,
            table,
            slots,
        } => {
            let stop = stop_flag()?;
            let stats = delay::run(
                &delay::DelayConfig {
                    dev,
                    delay: Duration::from_millis(delay_ms),
                    iifs,
                    table,
                    slots,
                },
                stop,
            )?;
            println!("delay: stopped {}", serde_json::to_string(&stats)?);
        }
        Command::Echo { port } => {
            let stop = stop_flag()?;
            let n = probe::echo_server(port, &stop)?;
            println!("echo: stopped after {n} datagrams");
        }
        Command::Classify { pcap } => {
            let c = capture::classify_pcap(&pcap)?;
            println!("{}", serde_json::to_string(&c)?);
        }
        Command::Bench {
            which:
                BenchCmd::Handoff {
                    json,
                    details,
                    rtts,
                    runs,
                    nat_only_runs,
                    only,
                    interval_ms,
                    recovery_timeout_s,
                    dwell_ms,
                },
        } => {
            let stop = stop_flag()?;
            let opts = BenchOptions {
                runs,
                nat_only_runs,
                only: match only {
                    OnlyArg::All => Only::All,
                    OnlyArg::Baseline => Only::Baseline,
                    OnlyArg::MipProxy => Only::MipProxy,
                },
                probe_interval: Duration::from_millis(interval_ms.max(1)),
                recovery_timeout: Duration::from_secs(recovery_timeout_s),
                dwell: Duration::from_millis(dwell_ms),
                rtts_ms: rtts,
                stop,
                ..BenchOptions::default()
            };
            let report = bench::bench_handoff(&opts)?;
            std::fs::write(&json, report.to_json()).with_context(|| format!("writing {}", json.display()))?;
            if let Some(d) = details {
                std::fs::write(&d, report.details_json()).with_context(|| format!("writing {}", d.display()))?;
            }
            println!("{}", report.table());
            println!("wrote {}", json.display());
        }
        Command::Bench {
            which:
                BenchCmd::Throughput {
                    json,
                    seconds,
                    runs,
                    only,
                },
        } => {
            let opts = ThroughputOptions {
                seconds,
                runs,
                only: match only {
                    ThroughputOnlyArg::All => throughput::Only::All,
                    ThroughputOnlyArg::Tcp => throughput::Only::Tcp,
                    ThroughputOnlyArg::Forwarding => throughput::Only::Forwarding,
                },
                stop: stop_flag()?,
                ..ThroughputOptions::default()
            };
            let report = throughput::bench_throughput(&opts, &mut |line| eprintln!("{line}"))?;
            std::fs::write(&json, report.to_json()).with_context(|| format!("writing {}", json.display()))?;
            println!("{}", report.table());
            println!("wrote {}", json.display());
        }
        Command::Bench {
            which:
                BenchCmd::Failover {
                    json,
                    runs,
                    bfd_interval_ms,
                    bfd_multiplier,
                },
        } => {
            let opts = failover::FailoverOptions {
                runs,
                bfd: mip_e2e::bfd::BfdOptions {
                    interval: Duration::from_millis(bfd_interval_ms.max(1)),
                    multiplier: bfd_multiplier.max(1),
                },
                stop: stop_flag()?,
                ..failover::FailoverOptions::default()
            };
            let report = failover::bench_failover(&opts, &mut |line| eprintln!("{line}"))?;
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            println!(
                "failover: SIGKILL -> traffic p50 {:.0} ms, max {:.0} ms (target p50 <= {:.0} ms: {}); detection p50 {:.0} ms; {} re-registrations",
                report.kill_to_traffic_ms.p50,
                report.kill_to_traffic_ms.max,
                report.target_p50_ms,
                if report.target_met { "met" } else { "NOT met" },
                report.detection_ms.p50,
                report.reregistrations
            );
            println!("wrote {}", json.display());
        }
        Command::Bench {
            which:
                BenchCmd::Replication {
                    json,
                    bindings,
                    rate,
                    seconds,
                    burst,
                    storm_nodes,
                    storm_rounds,
                    replicas,
                    no_lab,
                },
        } => {
            let opts = ReplicationBenchOptions {
                bindings,
                rate,
                seconds,
                burst,
                storm_nodes,
                storm_rounds,
                replicas: if no_lab { Vec::new() } else { replicas },
                stop: stop_flag()?,
                ..ReplicationBenchOptions::default()
            };
            let report = replication_bench::bench_replication(&opts, &mut |line| eprintln!("{line}"))?;
            std::fs::write(&json, report.to_json()).with_context(|| format!("writing {}", json.display()))?;
            println!("{}", report.table());
            println!("wrote {}", json.display());
        }
        Command::Bench {
            which:
                BenchCmd::Traces {
                    json,
                    runs,
                    nodes,
                    rounds,
                    sampling_ratio,
                },
        } => {
            let opts = TracesBenchOptions {
                runs,
                nodes,
                rounds,
                sampling_ratios: sampling_ratio,
                stop: stop_flag()?,
                ..TracesBenchOptions::default()
            };
            let report = traces_bench::bench_traces(&opts, &mut |line| eprintln!("{line}"))?;
            std::fs::write(&json, report.to_json()).with_context(|| format!("writing {}", json.display()))?;
            eprint!("{}", report.table());
            println!("wrote {}", json.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The lab's OpenTelemetry collector: rotel (`rotel-agent` from PyPI, installed by `scripts/otel-tools.sh`,
//! which `scripts/setup.sh` runs) listening for OTLP/gRPC in ns `cn` ([`COLLECTOR`]). The proxies and the HA
//! reach it over the intranet LAN, the MN through its VPN. Used by `e2e/tests/observability_traces.rs` (rotel
//! prints every span it receives) and by `e2e bench traces` (rotel receives and discards).

use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::{self, Cmd, ProcessGuard};
use crate::error::{Error, Result};
use crate::topology::Lab;

/// Where the collector listens (ns `cn`, the CN's address `plan::CN`).
pub const COLLECTOR: &str = "10.10.0.100:4317";

/// [`COLLECTOR`] as the daemons' `daemon.tracing.endpoint`.
pub fn collector_endpoint() -> String {
    format!("http://{COLLECTOR}")
}

/// `rotel-agent` in the venv of `scripts/otel-tools.sh` (`$MIP_TOOLS_DIR`, default `/opt/mip-tools`:
/// `otel-venv/lib/python*/site-packages/rotel/rotel-agent`); [`Error::MissingTool`] if it is not there.
pub fn rotel_agent() -> Result<PathBuf> {
    let dir = std::env::var_os("MIP_TOOLS_DIR").map_or_else(|| PathBuf::from("/opt/mip-tools"), PathBuf::from);
    let lib = dir.join("otel-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| Error::MissingTool {
        tool: "rotel-agent".into(),
        why: format!(
            "the lab's OTLP collector, expected under {}; scripts/otel-tools.sh installs it",
            lib.display()
        ),
    })
}

/// Starts rotel in ns `cn` (start it before the daemons: their first spans find it) and waits until it
/// listens on :4317; returns it and the file its output goes to (`rotel.out` in the lab's run directory).
/// `print`: print every span received (`--debug-log traces --debug-log-verbosity detailed`), else receive and
/// discard (`--exporter blackhole` only, for load).
pub fn collector(lab: &Lab, print: bool) -> Result<(ProcessGuard, PathBuf)> {
    let rotel = rotel_agent()?;
    let run = lab.run_dir().to_path_buf();
    let out = run.join("rotel.out");
    let rotel_s = rotel.display().to_string();
    let pid = run.join("rotel.pid").display().to_string();
    let rlog = run.join("rotel-agent.log").display().to_string();
    let mut argv = vec![
        rotel_s.as_str(),
        "start",
        "--otlp-grpc-endpoint",
        "0.0.0.0:4317",
        "--otlp-http-endpoint",
        "127.0.0.1:4318",
        "--exporter",
        "blackhole",
        "--pid-file",
        pid.as_str(),
        "--log-file",
        rlog.as_str(),
    ];
    if print {
        argv.extend(["--debug-log", "traces", "--debug-log-verbosity", "detailed"]);
    }
    let collector = lab.spawn_cmd("rotel-agent", Cmd::in_ns(&lab.ns("cn"), argv), &out)?;
    cmd::poll_until(
        "rotel to listen on :4317",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let ss = lab.exec("cn", &["ss", "-ltn"])?;
            Ok(String::from_utf8_lossy(&ss.stdout).contains(":4317").then_some(()))
        },
    )?;
    Ok((collector, out))
}

//! `mip-fa --config FILE`: the reference foreign agent daemon. All logic lives in [`mip_agents::fa_daemon`].

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use mip::daemon::LogFormat;

/// The reference Mobile IPv4 foreign agent (RFC 5944, RFC 3024 reverse tunnelling, RFC 3519 behind a NAT).
#[derive(Debug, Parser)]
#[command(name = "mip-fa", version)]
struct Args {
    /// Configuration file (YAML: `fa`, `dataplane`, `daemon`).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let file = match mip_agents::fa_daemon::load(&Args::parse().config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mip-fa: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = mip_io::logging::init(file.daemon.log_format == LogFormat::Json);
    if let Err(e) = mip_agents::fa_daemon::run(&file) {
        tracing::error!(error = %e, "mip-fa failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

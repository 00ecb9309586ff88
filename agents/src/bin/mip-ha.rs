//! `mip-ha --config FILE`: the reference Home Agent daemon. All logic lives in [`mip_agents::ha_daemon`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mip::daemon::{HaFile, LogFormat};

/// The reference Mobile IPv4 Home Agent (RFC 5944, RFC 3024 reverse tunnels, RFC 3519 UDP tunnels).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (`ha`, `dataplane`, `daemon` sections).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file: HaFile = match mip_io::load_config(&args.config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _log = mip_io::logging::init(file.daemon.log_format == LogFormat::Json);
    if let Err(e) = mip_agents::ha_daemon::run(file) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

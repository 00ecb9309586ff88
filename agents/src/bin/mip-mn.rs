//! `mip-mn --config FILE`: the reference Mobile Node daemon. All logic lives in [`mip_agents::mn_daemon`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mip::daemon::{LogFormat, MnFile};

/// The reference Mobile IPv4 Mobile Node (RFC 5944, RFC 3519 UDP tunnels, RFC 3024 via foreign agents).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (`mn`, `dataplane`, `daemon` sections).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file: MnFile = match mip_io::load_config(&args.config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _log = mip_io::logging::init(file.daemon.log_format == LogFormat::Json);
    if let Err(e) = mip_agents::mn_daemon::run(file) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

//! `mip-proxy --config FILE`: the MIP Proxy daemon (see the `mip_proxy` library).

use std::process::ExitCode;

use clap::Parser;
use mip::daemon::LogFormat;

/// The MIP Proxy: relays Mobile IPv4 registrations and tunnels VPN traffic for roaming nodes.
#[derive(Debug, Parser)]
#[command(name = "mip-proxy", version)]
struct Args {
    /// Configuration file (YAML; see deploy/config/proxy.yaml).
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
}

fn main() -> ExitCode {
    let file = match mip_proxy::load(&Args::parse().config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mip-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = mip_io::logging::init(file.daemon.log_format == LogFormat::Json);
    if let Err(e) = mip_proxy::run(&file) {
        tracing::error!(error = %e, "mip-proxy failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

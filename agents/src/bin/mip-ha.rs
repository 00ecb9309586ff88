//! `mip-ha --config FILE`: the reference Home Agent daemon. All logic lives in [`mip_agents::ha_daemon`].

use std::process::ExitCode;

use mip::daemon::HaFile;

fn main() -> ExitCode {
    mip_io::daemon::main(
        "mip-ha",
        "The reference Mobile IPv4 Home Agent (RFC 5944, RFC 3024 reverse tunnels, RFC 3519 UDP tunnels).",
        |f: &HaFile| &f.daemon,
        mip_agents::ha_daemon::run,
    )
}

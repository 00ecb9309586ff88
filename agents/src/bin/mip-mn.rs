//! `mip-mn --config FILE`: the reference Mobile Node daemon. All logic lives in [`mip_agents::mn_daemon`].

use std::process::ExitCode;

use mip::daemon::MnFile;

fn main() -> ExitCode {
    mip_io::daemon::main(
        "mip-mn",
        "The reference Mobile IPv4 Mobile Node (RFC 5944, RFC 3519 UDP tunnels, RFC 3024 via foreign agents).",
        |f: &MnFile| &f.daemon,
        mip_agents::mn_daemon::run,
    )
}

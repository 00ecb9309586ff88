//! `mip-fa --config FILE`: the reference foreign agent daemon. All logic lives in [`mip_agents::fa_daemon`].

use std::process::ExitCode;

use mip::daemon::FaFile;

fn main() -> ExitCode {
    mip_io::daemon::main(
        "mip-fa",
        "The reference Mobile IPv4 foreign agent (RFC 5944, RFC 3024 reverse tunnelling, RFC 3519 behind a NAT).",
        |f: &FaFile| &f.daemon,
        |f| mip_agents::fa_daemon::run(&f),
    )
}

//! `mip-proxy --config FILE`: the MIP Proxy daemon (see the `mip_proxy` library).

use std::process::ExitCode;

use mip::daemon::ProxyFile;

fn main() -> ExitCode {
    mip_io::daemon::main_with(
        "mip-proxy",
        "The MIP Proxy: relays Mobile IPv4 registrations and tunnels VPN traffic for roaming nodes.",
        mip_proxy::apply_env,
        |f: &ProxyFile| &f.daemon,
        |f| mip_proxy::run(&f),
    )
}

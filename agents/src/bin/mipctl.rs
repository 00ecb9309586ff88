//! `mipctl`: Mobile IPv4 operator tool. All logic lives in [`mip_agents::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(mip_agents::cli::run(mip_agents::cli::Cli::parse()))
}

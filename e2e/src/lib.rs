//! The namespace lab of `docs/lab.md` and the hand-off benchmark.
//!
//! One Linux machine, no cluster, no route out: every host is a network namespace this crate creates
//! ([`topology`]), strongSwan 5.9.8 with kernel-libipsec is the VPN client and gateway ([`strongswan`]),
//! nftables masquerade is the NAT, a userspace TUN delay line stands in for netem ([`delay`]), a UDP probe
//! measures interruptions ([`probe`]) and tcpdump/tshark captures prove what crosses the Internet side
//! ([`capture`]). [`mod@bench`] runs the hand-off benchmark (`e2e bench handoff`).
//!
//! Everything here needs root and the Debian tools `scripts/setup.sh` installs; a missing tool is an error
//! that says so, never a silent skip.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bfd;
pub mod capture;
pub mod cmd;
pub mod delay;
pub mod demo;
pub mod error;
pub mod failover;
pub mod mip_path;
pub mod netns;
pub mod otel;
pub mod plan;
pub mod probe;
pub mod replication_bench;
pub mod storm;
pub mod strongswan;
pub mod system;
pub mod throughput;
pub mod topology;
pub mod traces_bench;

pub use cmd::ProcessGuard;
pub use error::{Error, Result};
pub use plan::Access;
pub use topology::{HandoffMarks, Lab, LabOptions, Mode};

/// Every tool the lab uses, with what for; [`require_lab_tools`] checks them all at once.
pub const LAB_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2: namespaces, links, routes"),
    ("nft", "nftables: the NATs' masquerade"),
    ("sysctl", "procps: rp_filter, ip_forward, IPv6 off"),
    ("ping", "iputils-ping: reachability and RTT checks"),
    ("tcpdump", "packet captures"),
    ("tshark", "cross-checking captures"),
    ("openssl", "the replicas' mTLS certificates (Replicas mode)"),
    (strongswan::CHARON, "strongswan-charon: the IKE daemon"),
    (
        "swanctl",
        "strongswan-swanctl: loading configs, initiating, listing SAs",
    ),
];

/// Fails with [`Error::MissingTool`] ("run scripts/setup.sh") if any lab tool is missing.
pub fn require_lab_tools() -> Result<()> {
    cmd::require_tools(LAB_TOOLS)
}

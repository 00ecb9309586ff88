//! The I/O layer shared by the mip-proxy daemons (`mip-proxy`, `mip-ha`, `mip-fa`, `mip-mn`): everything that
//! touches the operating system, kept apart from the protocol logic of the `mip` crate (which does no I/O).
//!
//! * Data plane: [`tun`] (TUN devices), [`socket`] (UDP and raw IPv4 sockets with `recvmmsg`/`sendmmsg` and
//!   ICMP error reports), [`batch`] (preallocated, reused datagram buffers). No allocation and no logging per
//!   packet: callers count with [`metrics`].
//! * Control plane: [`net`] (`ip`/sysctl wrappers), [`watch`] (rtnetlink change notifications), [`clock`].
//! * Process: [`signals`], [`logging`], [`config_file`], [`keys`] (keys file with hot reload), [`admin`] (HTTP
//!   `/healthz`, `/readyz`, `/metrics`, `/bindings`), [`metrics`] (Prometheus text exposition), [`telemetry`]
//!   (OTLP trace export of the control plane's spans).
//!
//! Linux only. `unsafe` is confined to [`tun`] and [`socket`] (ioctl, socket options, batched syscalls), each
//! block with a `// SAFETY:` comment; the rest of the crate denies it. Nothing here panics on any input.

#![deny(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod clock;
pub mod config_file;
pub mod daemon;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod net;
mod rtnl;
pub mod signals;
#[allow(unsafe_code)]
pub mod socket;
pub mod telemetry;
#[allow(unsafe_code)]
pub mod tun;
pub mod watch;

pub use admin::{AdminServer, AdminState, Requests};
pub use batch::{Received, RecvBatch, SendBatch, SendOutcome};
pub use clock::Clock;
pub use config_file::load_config;
pub use keys::KeysWatcher;
pub use metrics::Registry;
pub use signals::Signals;
pub use socket::{IcmpErrorReport, RawSocket, UdpSocket};
pub use tun::Tun;
pub use watch::NetWatcher;

/// Tests that raise signals or expect none take this lock: a SIGHUP raised by one test reaches every handler in
/// the test process.
#[cfg(test)]
pub(crate) static SIGNAL_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
pub(crate) fn signal_lock() -> std::sync::MutexGuard<'static, ()> {
    SIGNAL_TESTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

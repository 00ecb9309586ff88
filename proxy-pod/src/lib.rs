//! `mip-proxy`: the MIP Proxy daemon (draft-adrangi-mobileip-natvpn-traversal-01). It relays registrations
//! between mobile nodes and their home agents ([`mip::roles::proxy`]) and carries the nodes' IPsec traffic
//! through IP-in-IP and RFC 3519 UDP tunnels in userspace ([`mip::dataplane`]), on the event-loop skeleton of
//! [`mip_io::daemon`]:
//!
//! * [`service`]: the sockets, the TUNs and which input goes where;
//! * [`setup`]: the kernel state (sysctls, TUNs, routes, the two-box policy rule) and its removal;
//! * [`metrics`]: the Prometheus series;
//! * [`bindings`]: the `/bindings` JSON;
//! * [`replication`]: sharing the binding cache with peer replicas (`replication:`, optional).
//!
//! ```text
//! mip-proxy --config /etc/mip/proxy.yaml      # deploy/config/proxy.yaml documents every field
//! ```

pub mod bindings;
pub mod metrics;
pub mod replication;
pub mod service;
pub mod setup;

use mip::daemon::ProxyFile;

pub use service::ProxyService;

/// Runs the daemon until SIGTERM/SIGINT: keys from `daemon.keys_file` (reloaded on SIGHUP or change), admin
/// HTTP on `daemon.admin`. Start-up errors are returned (the kernel state installed so far is removed).
pub fn run(file: &ProxyFile) -> Result<(), String> {
    mip_io::daemon::run(&file.daemon, |ctx| ProxyService::new(file, ctx))
}

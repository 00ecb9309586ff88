//! `mip-proxy`: the MIP Proxy daemon (draft-adrangi-mobileip-natvpn-traversal-01). It relays registrations
//! between mobile nodes and their home agents ([`mip::roles::proxy`]) and carries the nodes' IPsec traffic
//! through IP-in-IP and RFC 3519 UDP tunnels in userspace ([`mip::dataplane`]), on the event-loop skeleton of
//! [`mip_io::daemon`]:
//!
//! * [`service`]: the sockets, the TUNs and which input goes where;
//! * [`setup`]: the kernel state (sysctls, TUNs, routes, the two-box policy rule) and its removal;
//! * [`metrics`]: the Prometheus series;
//! * [`bindings`]: the `/bindings` JSON;
//! * [`replication`]: sharing the binding cache with peer replicas (`replication:`, optional);
//! * [`traces`]: one trace per registration, exported when `daemon.tracing` or the environment names an OTLP
//!   endpoint ([`mip_io::telemetry`]).
//!
//! ```text
//! mip-proxy --config /etc/mip/proxy.yaml      # deploy/config/proxy.yaml documents every field
//! ```
//!
//! As a Kubernetes pod (host networking, one replica per node, every replica reading the same ConfigMap):
//!
//! * **`MIP_NODE_ADDRESS`** ([`NODE_ADDRESS_ENV`]), set from the downward API (`status.podIP`, the node's address
//!   under host networking), replaces `proxy.node_address` before the file is validated ([`apply_env`]); a
//!   value that is not an IPv4 unicast address stops the start with an error naming the variable. A
//!   `replication:` section without `replica_id` takes the node address as its id
//!   ([`ProxyFile::replica_id`]). The effective node address is logged at start.
//! * **`dataplane.assign_addresses: true`** puts `proxy_public`/32 and `proxy_private`/32 on `lo` (those not on
//!   the host yet) and removes exactly those at shutdown ([`setup`]).
//! * **`GET /drain`** on the admin address is the `preStop` hook: not ready at once, serving for
//!   `daemon.drain_ms`, then the answer `200 drained`; the kubelet's SIGTERM after it shuts the proxy down at
//!   once ([`mip_io::admin`], [`mip_io::daemon`]).

pub mod bindings;
pub mod metrics;
pub mod replication;
pub mod service;
pub mod setup;
pub mod traces;

use core::net::Ipv4Addr;
use std::ffi::OsStr;

use mip::daemon::ProxyFile;
use mip::roles::proxy::is_unicast;

pub use mip::daemon::NODE_ADDRESS_ENV;
pub use service::ProxyService;

/// Runs the daemon until SIGTERM/SIGINT: keys from `daemon.keys_file` (reloaded on SIGHUP or change), admin
/// HTTP on `daemon.admin`. Start-up errors are returned (the kernel state installed so far is removed).
pub fn run(file: &ProxyFile) -> Result<(), String> {
    let from_env = std::env::var_os(NODE_ADDRESS_ENV).is_some();
    tracing::info!(
        node_address = %file.proxy.node_address(),
        source = match (from_env, file.proxy.node_address) {
            (true, _) => NODE_ADDRESS_ENV,
            (false, Some(_)) => "proxy.node_address",
            (false, None) => "proxy_private (default)",
        },
        replica_id = file.replica_id(),
        "node address"
    );
    mip_io::daemon::run(&file.daemon, |ctx| ProxyService::new(file, ctx))
}

/// Applies the environment to a parsed file, before validation: [`NODE_ADDRESS_ENV`], when set, replaces
/// `proxy.node_address` ([`apply_node_address`]).
pub fn apply_env(file: &mut ProxyFile) -> Result<(), String> {
    apply_node_address(file, std::env::var_os(NODE_ADDRESS_ENV).as_deref()).map(drop)
}

/// Sets `proxy.node_address` from `value`, the content of [`NODE_ADDRESS_ENV`] (`None`: unset, the file's value
/// stays). The value must be an IPv4 unicast address (surrounding blanks ignored); the error names the variable.
/// Returns the address applied.
pub fn apply_node_address(file: &mut ProxyFile, value: Option<&OsStr>) -> Result<Option<Ipv4Addr>, String> {
    let Some(raw) = value else {
        return Ok(None);
    };
    let text = raw.to_str().map(str::trim);
    let addr = text.and_then(|t| t.parse::<Ipv4Addr>().ok()).filter(|a| is_unicast(*a));
    let Some(addr) = addr else {
        return Err(format!(
            "environment variable {NODE_ADDRESS_ENV}={:?}: not an IPv4 unicast address (the node address: the \
             pod's status.podIP under host networking)",
            raw.to_string_lossy()
        ));
    };
    file.proxy.node_address = Some(addr);
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use mip::config::{Validate, from_yaml};

    fn file(node: &str, replication: &str) -> ProxyFile {
        let text = format!(
            "proxy: {{proxy_public: 198.51.100.10, proxy_private: 10.10.0.10{node}, home_agents: [{{address: \
             10.10.1.1}}]}}\ndataplane: {{vpn_gateways: [198.51.100.20], vpn_gateway_private: 10.10.0.20}}\n\
             daemon: {{keys_file: /k}}\n{replication}"
        );
        from_yaml(&text).unwrap()
    }

    #[test]
    fn node_address_from_the_environment_overrides_the_file() {
        let mut f = file(", node_address: 10.10.0.11", "");
        assert_eq!(apply_node_address(&mut f, None), Ok(None), "unset: the file's value");
        assert_eq!(f.proxy.node_address(), Ipv4Addr::new(10, 10, 0, 11));
        let got = apply_node_address(&mut f, Some(OsStr::new(" 192.0.2.7\n")));
        assert_eq!(got, Ok(Some(Ipv4Addr::new(192, 0, 2, 7))));
        assert_eq!(f.proxy.node_address, Some(Ipv4Addr::new(192, 0, 2, 7)));
        for bad in [
            "",
            "fd00::1",
            "10.0.0.256",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "node",
        ] {
            let e = apply_node_address(&mut f, Some(OsStr::new(bad))).unwrap_err();
            assert!(
                e.contains("MIP_NODE_ADDRESS") && e.contains("IPv4 unicast"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            f.proxy.node_address,
            Some(Ipv4Addr::new(192, 0, 2, 7)),
            "a bad value changes nothing"
        );
    }

    /// A replication section without `replica_id` validates once the environment gave the node address, and
    /// the id is that address.
    #[test]
    fn replica_id_from_the_environments_node_address() {
        let replication =
            "replication: {replica_id: 1, listen: 0.0.0.0:7443, peers: {static: []}, insecure_plaintext: true}\n";
        let mut f = file("", replication);
        assert!(f.validate().is_empty());
        f.replication.as_mut().unwrap().replica_id = None;
        let errs = f.validate();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "replication.replica_id");
        apply_node_address(&mut f, Some(OsStr::new("10.20.30.40"))).unwrap();
        assert!(f.validate().is_empty(), "{:?}", f.validate());
        assert_eq!(f.replica_id(), Some(u32::from(Ipv4Addr::new(10, 20, 30, 40))));
    }
}

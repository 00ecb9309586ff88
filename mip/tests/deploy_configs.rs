//! The example configuration files in `deploy/config/` load and validate, and mean what their comments say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use mip::config::{KeysFile, Validate, from_yaml, render_errors};
use mip::daemon::{DeploymentMode, FaFile, HaFile, MnFile, ProxyFile};
use mip::roles::proxy::ProxyConfig;
use serde::de::DeserializeOwned;

fn load<T: DeserializeOwned + Validate>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    from_yaml(&text).unwrap_or_else(|e| panic!("{}", render_errors(&path.display().to_string(), &e)))
}

#[test]
fn example_configs_load() {
    let p: ProxyFile = load("proxy.yaml");
    assert_eq!(p.proxy.proxy_public, Ipv4Addr::new(198, 51, 100, 10));
    assert_eq!(p.dataplane.mode, DeploymentMode::TwoBox);
    assert_eq!(p.proxy, {
        // Every relay field in the example is at its default, apart from the addresses and home agents.
        let mut d = ProxyConfig::new(p.proxy.proxy_public, p.proxy.proxy_private, p.proxy.home_agents.clone());
        d.relay_port = p.proxy.relay_port;
        d
    });
    assert_eq!(p.dataplane_config().home_agents, vec![Ipv4Addr::new(10, 10, 1, 1)]);
    let ha: HaFile = load("ha.yaml");
    assert!(ha.ha.address_pool.is_some());
    let fa: FaFile = load("fa.yaml");
    assert_eq!(fa.fa.care_of_addresses, vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let mn: MnFile = load("mn.yaml");
    assert_eq!(
        mn.mn.home_agent, p.proxy.proxy_public,
        "the node registers with the proxy"
    );
    assert!(
        mn.dataplane
            .tunnelled
            .iter()
            .any(|t| t.contains(p.dataplane.vpn_gateways[0]))
    );
    let keys: KeysFile = load("keys.example.yaml");
    let ks = keys.to_keystore().unwrap();
    assert!(
        ks.get(mn.mn.home_address, mn.mn.spi).is_some(),
        "the node's SA is in the example keys"
    );
    assert!(ks.agent(fa.fa.visited_address, 768).is_some());
}

#[test]
fn file_errors_name_the_section() {
    let text = "proxy: {proxy_public: 198.51.100.10, proxy_private: 10.10.0.10, home_agents: []}\n\
                dataplane: {vpn_gateways: [], tun: mipp0, ha_tun: mipp0}\n\
                daemon: {keys_file: /k}\n";
    let errs = from_yaml::<ProxyFile>(text).unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "proxy.home_agents",
            "dataplane.vpn_gateways",
            "dataplane.vpn_gateway_private",
            "dataplane.ha_tun"
        ]
    );
}

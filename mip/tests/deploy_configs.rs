//! The example configuration files in `deploy/config/` load and validate, and mean what their comments say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use mip::config::{KeysFile, Validate, from_yaml, render_errors};
use mip::roles::fa::FaConfig;
use mip::roles::ha::HaConfig;
use mip::roles::mn::MnConfig;
use mip::roles::proxy::ProxyConfig;
use serde::de::DeserializeOwned;

fn load<T: DeserializeOwned + Validate>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    from_yaml(&text).unwrap_or_else(|e| panic!("{}", render_errors(&path.display().to_string(), &e)))
}

#[test]
fn example_configs_load() {
    let p: ProxyConfig = load("proxy.yaml");
    assert_eq!(p.proxy_public, Ipv4Addr::new(198, 51, 100, 10));
    assert_eq!(p, {
        // Every field in the example is at its default, apart from the addresses and home agents.
        let mut d = ProxyConfig::new(p.proxy_public, p.proxy_private, p.home_agents.clone());
        d.relay_port = p.relay_port;
        d
    });
    let ha: HaConfig = load("ha.yaml");
    assert!(ha.address_pool.is_some());
    let fa: FaConfig = load("fa.yaml");
    assert_eq!(fa.care_of_addresses, vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let mn: MnConfig = load("mn.yaml");
    assert_eq!(mn.home_agent, p.proxy_public, "the node registers with the proxy");
    let keys: KeysFile = load("keys.example.yaml");
    let ks = keys.to_keystore().unwrap();
    assert!(
        ks.get(mn.home_address, mn.spi).is_some(),
        "the node's SA is in the example keys"
    );
    assert!(ks.agent(fa.visited_address, 768).is_some());
}

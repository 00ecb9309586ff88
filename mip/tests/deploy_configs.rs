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

const PROXY_MIN: &str = "proxy: {proxy_public: 198.51.100.10, proxy_private: 10.10.0.10, \
                         home_agents: [{address: 10.10.1.1, home_networks: [10.10.1.0/24]}]}\n\
                         daemon: {keys_file: /k}\n";

fn proxy_with(dataplane: &str) -> Result<ProxyFile, Vec<mip::config::ConfigError>> {
    from_yaml::<ProxyFile>(&format!(
        "{PROXY_MIN}dataplane: {{vpn_gateways: [198.51.100.20], vpn_gateway_private: 10.10.0.20{dataplane}}}\n"
    ))
}

/// Lab FINDINGS: a TUN at 1500 over a 1500-byte path fragments ESP; TUN MTU = path MTU − 32 (the UDP tunnel's).
#[test]
fn tun_mtu_defaults_to_the_udp_tunnel_mtu() {
    let p = proxy_with("").unwrap();
    assert_eq!((p.dataplane.path_mtu, p.dataplane.tun_mtu()), (1500, 1468));
    let p = proxy_with(", path_mtu: 1400").unwrap();
    assert_eq!(p.dataplane.tun_mtu(), 1368, "follows path_mtu");
    let p = proxy_with(", path_mtu: 1400, tun_mtu: 1380").unwrap();
    assert_eq!(p.dataplane.tun_mtu(), 1380, "an explicit value wins");
    let ha: HaFile =
        from_yaml("ha: {address: 10.10.1.1, home_networks: [10.10.1.0/24]}\ndaemon: {keys_file: /k}\n").unwrap();
    assert_eq!(ha.dataplane.tun_mtu, 1468);
    let fa: FaFile = from_yaml(
        "fa: {visited_address: 192.0.2.1, routed_address: 198.51.100.30, care_of_addresses: [192.0.2.1]}\n\
         dataplane: {visited_interface: eth0}\ndaemon: {keys_file: /k}\n",
    )
    .unwrap();
    assert_eq!(fa.dataplane.tun_mtu, 1468);
    // The shipped examples say the same.
    assert_eq!(load::<ProxyFile>("proxy.yaml").dataplane.tun_mtu(), 1468);
    assert_eq!(load::<HaFile>("ha.yaml").dataplane.tun_mtu, 1468);
    assert_eq!(load::<FaFile>("fa.yaml").dataplane.tun_mtu, 1468);
    assert_eq!(load::<MnFile>("mn.yaml").dataplane.tun_mtu, 1468);
}

#[test]
fn tun_mtu_above_the_ipip_tunnel_mtu_is_refused() {
    assert!(proxy_with(", tun_mtu: 1480").is_ok(), "path_mtu - 20 fits IP-in-IP");
    let errs = proxy_with(", tun_mtu: 1500").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "dataplane.tun_mtu");
    assert!(errs[0].message.contains("1480"), "{}", errs[0].message);
    let errs = proxy_with(", path_mtu: 1400, tun_mtu: 1400").unwrap_err();
    assert_eq!(errs[0].field, "dataplane.tun_mtu");
    // A default derived from a tiny path MTU is refused too, naming the field.
    let errs = proxy_with(", path_mtu: 600").unwrap_err();
    assert_eq!(errs[0].field, "dataplane.tun_mtu", "{errs:?}");
}

/// The commented `replication:` example of `deploy/config/proxy.yaml`, uncommented, loads and validates; absent,
/// the proxy is a single replica.
#[test]
fn proxy_replication_section() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/proxy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let p: ProxyFile = from_yaml(&text).unwrap();
    assert!(p.replication.is_none(), "absent = single replica");
    let (head, example) = text
        .split_once("# replication:\n")
        .expect("a commented replication example");
    let mut uncommented = format!("{head}replication:\n");
    for line in example.lines() {
        // `#   key: value` is an example line; `#   # comment` and `#     # dns: ...` stay comments.
        let l = line.strip_prefix('#').unwrap_or(line);
        uncommented.push_str(l);
        uncommented.push('\n');
    }
    let p: ProxyFile = from_yaml(&uncommented).unwrap_or_else(|e| panic!("{e:?}\n{uncommented}"));
    assert_eq!(p.replica_id(), Some(1));
    let r = p.replication.expect("the section");
    assert_eq!(r.replica_id, Some(1));
    assert_eq!(r.peers.static_peers.as_ref().map(Vec::len), Some(2));
    assert!(r.tls.is_some() && !r.insecure_plaintext);

    let base = format!("{PROXY_MIN}dataplane: {{vpn_gateways: [198.51.100.20], vpn_gateway_private: 10.10.0.20}}\n");
    let errs = from_yaml::<ProxyFile>(&format!(
        "{base}replication: {{replica_id: 0, listen: 0.0.0.0:7443, peers: {{static: []}}}}\n"
    ))
    .unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["replication.replica_id", "replication.tls"]);
    let errs = from_yaml::<ProxyFile>(&format!(
        "{base}replication: {{replica_id: 1, listen: 0.0.0.0:7443, peers: {{static: []}}, bogus: 1}}\n"
    ))
    .unwrap_err();
    assert_eq!(errs[0].field, "replication.bogus", "{errs:?}");
    assert!(errs[0].message.contains("unknown field"), "{errs:?}");
}

/// `replication.replica_id` is optional when the node address is set (by the file or, in `mip-proxy`, by
/// `MIP_NODE_ADDRESS` before validation): the id is then the address as a `u32`; an explicit id wins.
#[test]
fn replica_id_derived_from_the_node_address() {
    let replication = "replication: {listen: 0.0.0.0:7443, peers: {dns: {name: p.mip.svc, port: 7443}}, \
                       insecure_plaintext: true}\n";
    let with = |node: &str, id: &str| {
        let proxy = format!(
            "proxy: {{proxy_public: 198.51.100.10, proxy_private: 10.10.0.10{node}, \
             home_agents: [{{address: 10.10.1.1}}]}}\n"
        );
        let r = replication.replace("listen:", &format!("{id}listen:"));
        from_yaml::<ProxyFile>(&format!(
            "{proxy}daemon: {{keys_file: /k}}\ndataplane: {{vpn_gateways: [198.51.100.20], \
             vpn_gateway_private: 10.10.0.20}}\n{r}"
        ))
    };
    let p = with(", node_address: 10.10.0.11", "").unwrap();
    assert_eq!(p.replication.as_ref().unwrap().replica_id, None);
    assert_eq!(p.replica_id(), Some(u32::from(Ipv4Addr::new(10, 10, 0, 11))));
    assert_eq!(p.replica_id(), Some(168_427_531));
    let p = with(", node_address: 10.10.0.11", "replica_id: 9, ").unwrap();
    assert_eq!(p.replica_id(), Some(9));
    let p = with("", "replica_id: 9, ").unwrap();
    assert_eq!(p.replica_id(), Some(9), "explicit, no node address needed");
    // Neither: the error names the field and the environment variable.
    let errs = with("", "").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "replication.replica_id");
    assert!(errs[0].message.contains("MIP_NODE_ADDRESS"), "{errs:?}");
    assert!(errs[0].message.contains("proxy.node_address"), "{errs:?}");
    // Without replication there is no id.
    let p: ProxyFile = load("proxy.yaml");
    assert_eq!(p.replica_id(), None);
}

/// `dataplane.assign_addresses` is off by default (the example says so) and parses.
#[test]
fn assign_addresses_defaults_off() {
    assert!(!proxy_with("").unwrap().dataplane.assign_addresses);
    assert!(
        proxy_with(", assign_addresses: true")
            .unwrap()
            .dataplane
            .assign_addresses
    );
    assert!(!load::<ProxyFile>("proxy.yaml").dataplane.assign_addresses);
}

/// The commented `daemon.tracing` block of every example, uncommented, loads and validates.
#[test]
fn commented_tracing_sections_are_valid() {
    fn uncomment(text: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in text.lines() {
            if line == "  # tracing:" {
                inside = true;
            } else if inside && !line.starts_with("  #   ") {
                inside = false;
            }
            if inside {
                let l = line.replacen("# ", "", 1);
                // The block's own comments stay comments.
                if !l.trim_start().starts_with('#') {
                    out.push_str(&l);
                    out.push('\n');
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let check = |name: &str, file: &str, service: &str| {
        let t = uncomment(&read(name));
        assert!(
            t.contains("  tracing:\n    endpoint: http://127.0.0.1:4317\n"),
            "{name}:\n{t}"
        );
        let settings = match file {
            "proxy" => from_yaml::<ProxyFile>(&t).map(|f| f.daemon),
            "ha" => from_yaml::<HaFile>(&t).map(|f| f.daemon),
            "mn" => from_yaml::<MnFile>(&t).map(|f| f.daemon),
            _ => from_yaml::<FaFile>(&t).map(|f| f.daemon),
        }
        .unwrap_or_else(|e| panic!("{}", render_errors(name, &e)));
        let tracing = settings.tracing.unwrap();
        assert_eq!(tracing.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(tracing.sampling_ratio, 1.0);
        assert_eq!(tracing.service_name.as_deref(), Some(service));
    };
    check("proxy.yaml", "proxy", "mip-proxy");
    check("ha.yaml", "ha", "mip-ha");
    check("mn.yaml", "mn", "mip-mn");
    check("fa.yaml", "fa", "mip-fa");
}

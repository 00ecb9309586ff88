//! The operator's output runs the real proxy (issue 6): the ConfigMap and keys Secret that `mip-operator`'s
//! builder makes for the sample MipProxy (`deploy/samples/mipproxy.yaml`, as one replica) and the sample HomeAgent
//! (`deploy/samples/homeagent.yaml`, with the lab's security associations in its Secret) are fed to a real
//! `mip-proxy` in the two-box namespace lab, which then serves the whole system: the MN registers through it,
//! the VPN comes up through the Mobile IP tunnel, and traffic flows both ways.
//!
//! What the kubelet would do is done by hand, and only that: the Secret's `keys.yaml` becomes the file
//! `daemon.keys_file` names, and `MIP_NODE_ADDRESS` is set as the downward API sets it (the pod IP = the node's
//! address with host networking: here the proxy's LAN address). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mip_e2e::system::{self, ProxyOverride, System, SystemOptions, admin_get, admin_request_at, metric};
use mip_e2e::{Lab, LabOptions, Mode, plan};
use mip_operator::build::{self, SelectedHomeAgent, Settings};
use mip_operator::crd::{HomeAgent, MipProxy};
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The documents of kind `kind` in a multi-document YAML file.
fn docs_of_kind<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Vec<T> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v: serde_norway::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.get("kind").and_then(serde_norway::Value::as_str) == Some(kind) {
            out.push(serde_norway::from_value(v).unwrap());
        }
    }
    out
}

#[test]
fn operator_built_config_for_the_sample_mipproxy_runs_the_real_proxy_in_the_lab() {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    // The samples a user applies, as the operator reads them from the API server.
    let mut proxy: MipProxy = docs_of_kind(&repo_file("deploy/samples/mipproxy.yaml"), "MipProxy")
        .pop()
        .expect("a MipProxy in deploy/samples/mipproxy.yaml");
    let ha: HomeAgent = docs_of_kind(&repo_file("deploy/samples/homeagent.yaml"), "HomeAgent")
        .pop()
        .expect("a HomeAgent in deploy/samples/homeagent.yaml");
    // One replica: the two-box lab has one proxy namespace (the replicated case is e2e/tests/replicas.rs).
    proxy.spec.replicas = Some(1);
    proxy.spec.replication = None;
    proxy.metadata.uid = Some("6f1c0a52-0000-4000-8000-000000000001".into());
    proxy.metadata.namespace.get_or_insert_with(|| "mip".into());
    assert!(proxy.spec.check().is_empty(), "{:?}", proxy.spec.check());
    // The HomeAgent's Secret holds the lab's security associations.
    let lab_keys = system::lab_proxy_keys(&SystemOptions::default());
    let keys = mip::config::from_yaml(&lab_keys).unwrap();
    let selected = SelectedHomeAgent {
        name: ha.metadata.name.clone().unwrap(),
        spec: ha.spec.clone(),
        keys,
    };
    let desired = build::desired(
        &proxy,
        &[selected],
        &Settings {
            proxy_image: "example.invalid/mip-proxy:test".into(),
            image_pull_policy: None,
            default_otlp_endpoint: None,
        },
    )
    .unwrap_or_else(|e| panic!("operator build: {e}"));
    let config_yaml = desired.config_map.data.as_ref().unwrap()[build::CONFIG_KEY].clone();
    let keys_yaml = String::from_utf8(desired.keys_secret.data.as_ref().unwrap()[build::KEYS_KEY].0.clone()).unwrap();

    let mut lab = Lab::up(LabOptions {
        mode: Mode::TwoBox,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let _echo = lab.spawn_echo().unwrap();
    let sys = System::start(
        &mut lab,
        SystemOptions {
            proxy_override: Some(ProxyOverride {
                config_yaml,
                keys_yaml,
                env: vec![("MIP_NODE_ADDRESS".into(), plan::PROXY_PRIVATE.to_string())],
            }),
            ..SystemOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("the system with the operator's proxy config: {e}"));
    // System::start returned: the MN registered through the proxy and the VPN came up through the tunnel.
    let bindings: Value = serde_json::from_str(&admin_get(&lab.ns(sys.proxy_ns()), "/bindings").unwrap()).unwrap();
    let rows = bindings.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{bindings}");
    assert_eq!(rows[0]["home_address"], plan::HOA.to_string());
    // The operator's admin address is 0.0.0.0 (probes and scrapes reach the node's address): a client on
    // another host (ns cn, on the intranet LAN) gets health and metrics, not node data and not /drain; the
    // refusals are counted.
    let node_admin = SocketAddr::from((plan::PROXY_PRIVATE, proxy.spec.admin_port));
    for (path, want) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/bindings", 403),
        ("/status", 403),
        ("/drain", 403),
    ] {
        let (code, body) = admin_request_at(&lab.ns("cn"), node_admin, path).unwrap();
        assert_eq!(code, want, "GET {path} from another host: {body}");
    }
    let (code, _) = admin_request_at(&lab.ns(sys.proxy_ns()), node_admin, "/bindings").unwrap();
    assert_eq!(code, 200, "the node itself, over its own address (the kubelet's way)");
    let metrics = admin_get(&lab.ns(sys.proxy_ns()), "/metrics").unwrap();
    for route in ["/bindings", "/status", "/drain"] {
        assert_eq!(
            metric(&metrics, &format!("mip_admin_refused_total{{route=\"{route}\"}}")),
            1.0,
            "{route}"
        );
    }
    let (code, _) = admin_request_at(&lab.ns(sys.proxy_ns()), node_admin, "/readyz").unwrap();
    assert_eq!(code, 200, "the refused /drain withdrew nothing");
    let st = lab.ping("mn", plan::CN, 3).unwrap();
    assert_eq!(
        st.received, 3,
        "ping MN -> CN through the operator-configured proxy: {st:?}"
    );
    let st = lab.ping("cn", plan::HOA, 3).unwrap();
    assert_eq!(st.received, 3, "ping CN -> MN: {st:?}");
    mip_e2e::probe::wait_echo(
        &lab.ns("mn"),
        std::net::SocketAddrV4::new(plan::CN, plan::ECHO_PORT),
        Duration::from_secs(5),
    )
    .unwrap();
}

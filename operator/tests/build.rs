//! The fixtures (tests/fixtures/, copied to deploy/samples/): the good ones pass `check` and the CRDs' CEL rules
//! (evaluated client-side by kube's `cel` feature), each bad one is refused by both, naming its field; the
//! children `build::desired` makes of the samples are the documented ones (docs/operator.md), and the proxy.yaml
//! it writes is one the daemon accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use mip::config::{KeysFile, Validate, from_yaml};
use mip::daemon::{DeploymentMode, ProxyFile};
use mip_operator::build::{
    self, BuildError, CONFIG_HASH_ANNOTATION, Desired, SelectedHomeAgent, Settings, Workload, config_hash,
};
use mip_operator::crd::{FieldError, HomeAgent, HomeAgentSpec, MipProxy, Mode, crd_files};
use serde::de::DeserializeOwned;

const UID: &str = "0b7a43c2-5b4e-4f7e-9a55-3f8e2f1c9d10";
/// A pod's node address, as MIP_NODE_ADDRESS gives it (the lab's first replica).
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse<T: DeserializeOwned>(name: &str) -> T {
    serde_norway::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A fixture MipProxy as the API server hands it out (with a uid).
fn proxy(name: &str) -> MipProxy {
    let mut p: MipProxy = parse(name);
    p.metadata.uid = Some(UID.into());
    p
}

fn settings() -> Settings {
    Settings {
        proxy_image: "registry.example/mip-proxy:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        default_otlp_endpoint: None,
    }
}

fn sample_ha() -> SelectedHomeAgent {
    let ha: HomeAgent = parse("homeagent-sample.yaml");
    SelectedHomeAgent {
        name: ha.metadata.name.unwrap(),
        spec: ha.spec,
        keys: from_yaml(&read("keys-sample.yaml")).unwrap(),
    }
}

/// A second home agent with its own home network and node.
fn second_ha() -> SelectedHomeAgent {
    SelectedHomeAgent {
        name: "ha2".into(),
        spec: serde_norway::from_str(
            "address: 10.10.2.1\nhomePrefixes: [10.10.2.0/24]\nsecurityAssociations: {name: ha2-keys}\n",
        )
        .unwrap(),
        keys: from_yaml(
            "security_associations:\n  - {home_address: 10.10.2.50, spi: 256, key: feedfacefeedfacefeedfacefeedface}\n",
        )
        .unwrap(),
    }
}

fn desired(p: &MipProxy) -> Desired {
    build::desired(p, &[sample_ha()], &settings()).unwrap()
}

fn proxy_yaml(d: &Desired) -> &str {
    &d.config_map.data.as_ref().unwrap()[build::CONFIG_KEY]
}

/// proxy.yaml as a pod loads it: parsed, MIP_NODE_ADDRESS applied, validated (mip-proxy's own order).
fn config_in_pod(d: &Desired) -> ProxyFile {
    let mut file: ProxyFile = serde_norway::from_str(proxy_yaml(d)).unwrap();
    file.proxy.node_address = Some(POD_IP);
    let errors = file.validate();
    assert!(errors.is_empty(), "the daemon refuses the built config: {errors:?}");
    // And the file round-trips through the daemon's loader.
    let again: ProxyFile = from_yaml(&serde_norway::to_string(&file).unwrap()).unwrap();
    assert_eq!(again, file);
    file
}

fn pod(d: &Desired) -> &PodSpec {
    d.workload.pod_spec().unwrap()
}

fn container(d: &Desired) -> &Container {
    &pod(d).containers[0]
}

fn volume<'a>(d: &'a Desired, name: &str) -> Option<&'a Volume> {
    pod(d).volumes.as_ref().unwrap().iter().find(|v| v.name == name)
}

fn crd_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// The messages of the CEL rules (x-kubernetes-validations) the document breaks, as the API server would
/// evaluate them (defaults applied first).
fn cel_errors(doc: &str) -> Vec<String> {
    let value: serde_json::Value = serde_norway::from_str(doc).unwrap();
    let crd = match value["kind"].as_str() {
        Some("MipProxy") => MipProxy::crd(),
        Some("HomeAgent") => HomeAgent::crd(),
        other => panic!("unexpected kind {other:?}"),
    };
    match Validator::new().validate(&crd_schema(&crd), &value, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

// === fixtures, check and CEL ===

#[test]
fn good_fixtures_pass_check_and_cel() {
    for name in ["mipproxy-sample.yaml", "mipproxy-daemonset.yaml"] {
        let p = proxy(name);
        assert_eq!(p.spec.check(), [], "{name}");
        assert_eq!(cel_errors(&read(name)), Vec::<String>::new(), "{name}");
    }
    let ha: HomeAgent = parse("homeagent-sample.yaml");
    assert_eq!(ha.spec.check(), [], "homeagent-sample.yaml");
    assert_eq!(cel_errors(&read("homeagent-sample.yaml")), Vec::<String>::new());
    let keys: KeysFile = from_yaml(&read("keys-sample.yaml")).unwrap();
    assert_eq!(keys.security_associations.len(), 3);
}

#[test]
fn bad_fixtures_are_refused_naming_the_field() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("bad-") {
            continue;
        }
        seen += 1;
        let doc = read(&name);
        let expect = doc
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: no `# expect: FIELD` line"));
        let cel = cel_errors(&doc);
        assert!(!cel.is_empty(), "{name}: the CEL rules accept it");
        let value: serde_json::Value = serde_norway::from_str(&doc).unwrap();
        let checked = if value["kind"] == "MipProxy" {
            let p = proxy(&name);
            // desired refuses it too, naming the field.
            let err = build::desired(&p, &[sample_ha()], &settings()).unwrap_err();
            assert!(err.to_string().contains(expect), "{name}: {err}");
            assert_eq!(err.category(), "invalid_spec", "{name}");
            p.spec.check()
        } else {
            parse::<HomeAgent>(&name).spec.check()
        };
        if expect.starts_with("spec.") {
            assert!(fields(&checked).contains(&expect), "{name}: check gave {checked:?}");
            // The Rust check says what the CEL rule says.
            for m in &cel {
                assert!(
                    checked.iter().any(|c| c.message.contains(m.as_str())),
                    "{name}: CEL `{m}` has no counterpart in {checked:?}"
                );
            }
        }
    }
    assert!(seen >= 10, "only {seen} bad fixtures");
}

#[test]
fn check_reports_every_problem() {
    let mut p = proxy("mipproxy-sample.yaml");
    p.spec.public_address = Ipv4Addr::UNSPECIFIED;
    p.spec.vpn_gateways.public.clear();
    p.spec.replicas = Some(65);
    p.spec.drain_seconds = 601;
    p.spec.interfaces.path_mtu = 600;
    p.spec.interfaces.tun = "a/b".into();
    if let Some(r) = p.spec.replication.as_mut() {
        r.insecure_plaintext = true;
        r.server_name = Some(String::new());
    }
    p.spec.image = Some(String::new());
    assert_eq!(
        fields(&p.spec.check()),
        [
            "spec.publicAddress",
            "spec.vpnGateways.public",
            "spec.interfaces.tun",
            "spec.interfaces.pathMtu",
            "spec.replicas",
            "spec.replication.insecurePlaintext",
            "spec.replication.serverName",
            "spec.drainSeconds",
            "spec.image",
        ]
    );
    let mut one_box = proxy("mipproxy-daemonset.yaml");
    one_box.spec.mode = Mode::OneBox;
    one_box.spec.vpn_gateways.private = None;
    assert_eq!(one_box.spec.check(), []);
    let mut ha = sample_ha().spec;
    ha.home_prefixes = vec!["10.10.1.0".into(), "10.10.1.0/33".into(), "0.0.0.0/0".into()];
    ha.security_associations.name = "Keys".into();
    assert_eq!(
        fields(&ha.check()),
        [
            "spec.homePrefixes[0]",
            "spec.homePrefixes[1]",
            "spec.securityAssociations.name"
        ]
    );
}

/// Every CEL rule compiles, and every rule that iterates a list has the list and its strings bounded: the API
/// server estimates a rule's cost from maxItems/maxLength and refuses a CRD whose worst case is over budget.
/// (kube-cel's own cost estimate is too coarse to catch that, and its scope check mistakes comprehension
/// variables for unknown names; neither is used.)
#[test]
fn cel_rules_compile_and_iterate_bounded_lists() {
    fn walk(node: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        if let Some(rules) = node.get("x-kubernetes-validations").and_then(|v| v.as_array()) {
            for e in compile_schema(node).compilation_errors() {
                problems.push(format!("{path}: {e}"));
            }
            let iterates = rules.iter().any(|r| r["rule"].as_str().unwrap().contains(".all("));
            let item = &node["items"];
            let bounded_items = item.get("maxLength").is_some() || item.get("format").is_some();
            if iterates && (node.get("maxItems").is_none() || !bounded_items) {
                problems.push(format!(
                    "{path}: a rule iterates a list without maxItems or bounded items"
                ));
            }
        }
        for (k, child) in node.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
            walk(child, &format!("{path}.{k}"), problems);
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
    }
    let mut rules = 0;
    for crd in [MipProxy::crd(), HomeAgent::crd()] {
        let mut problems = Vec::new();
        walk(&crd_schema(&crd), "", &mut problems);
        assert!(problems.is_empty(), "{:?}: {problems:#?}", crd.metadata.name);
        rules += serde_json::to_string(&crd).unwrap().matches("\"rule\"").count();
    }
    assert!(rules >= 15, "{rules} CEL rules");
}

/// charts/mip-proxy/crds/ is what crdgen writes now.
#[test]
fn generated_crds_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mip-proxy/crds");
    for (name, text) in crd_files().unwrap() {
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            have == text,
            "charts/mip-proxy/crds/{name} is stale: cargo run -p mip-operator --bin crdgen -- --out charts/mip-proxy/crds"
        );
    }
}

// === the children ===

#[test]
fn every_child_is_named_labelled_and_owned() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let metas = [
        (&d.config_map.metadata, "dmz-config"),
        (&d.keys_secret.metadata, "dmz-keys"),
        (d.workload.metadata(), "dmz"),
        (&d.service.metadata, "dmz-peers"),
        (&d.service_account.metadata, "dmz"),
        (&d.pdb.metadata, "dmz"),
    ];
    for (meta, name) in metas {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("mip"), "{name}");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "mip-proxy", "{name}");
        assert_eq!(labels["app.kubernetes.io/instance"], "dmz", "{name}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mip-operator", "{name}");
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "{name}");
        let o = &owners[0];
        assert_eq!(
            (o.api_version.as_str(), o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("mipproxy.io/v1alpha1", "MipProxy", "dmz", UID),
            "{name}"
        );
        assert_eq!(o.controller, Some(true), "{name}");
    }
}

#[test]
fn sample_runs_a_deployment_with_one_replica_per_node() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let Workload::Deployment(dep) = &d.workload else {
        panic!("replicas set: a Deployment, got {:?}", d.workload)
    };
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector.match_labels.as_ref(),
        Some(&build::selector_labels("dmz"))
    );
    let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    let anti = pod(&d).affinity.as_ref().unwrap().pod_anti_affinity.as_ref().unwrap();
    let terms = anti
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(
        terms[0].label_selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&build::selector_labels("dmz"))
    );
}

#[test]
fn pod_is_host_networked_and_least_privileged() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let p = pod(&d);
    assert_eq!(p.host_network, Some(true));
    assert_eq!(p.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(p.service_account_name.as_deref(), Some("dmz"));
    assert_eq!(p.automount_service_account_token, Some(false));
    assert_eq!(p.termination_grace_period_seconds, Some(5 + 15));
    assert_eq!(p.node_selector.as_ref().unwrap()["mipproxy.io/dmz"], "true");
    let tolerations = p.tolerations.as_ref().unwrap();
    assert_eq!(tolerations[0].key.as_deref(), Some("mipproxy.io/dmz"));
    assert_eq!(p.containers.len(), 1);

    let c = container(&d);
    assert_eq!(c.name, "mip-proxy");
    assert_eq!(c.image.as_deref(), Some("registry.example/mip-proxy:0.1.0"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.args.as_deref(),
        Some(&["--config".to_string(), "/etc/mip/config/proxy.yaml".into()][..])
    );
    let sc = c.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".into()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
}

#[test]
fn container_env_ports_probes_and_drain() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let c = container(&d);
    let env = c.env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "MIP_NODE_ADDRESS").unwrap();
    let field = node.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "status.podIP");
    let otel = env.iter().find(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
    assert_eq!(otel.value.as_deref(), Some("http://otel-collector.observability:4317"));

    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.name.as_deref().unwrap(),
                p.container_port,
                p.host_port,
                p.protocol.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("admin", 9434, Some(9434), Some("TCP")),
            ("replication", 7443, Some(7443), Some("TCP"))
        ]
    );

    let ready = c.readiness_probe.as_ref().unwrap();
    let get = ready.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some("/readyz"), &IntOrString::Int(9434))
    );
    assert_eq!((ready.period_seconds, ready.failure_threshold), (Some(2), Some(1)));
    let live = c.liveness_probe.as_ref().unwrap();
    let get = live.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some("/healthz"), &IntOrString::Int(9434))
    );
    assert_eq!((live.period_seconds, live.failure_threshold), (Some(10), Some(3)));
    let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let get = pre_stop.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some("/drain"), &IntOrString::Int(9434))
    );
}

#[test]
fn volumes_and_mounts() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let config = volume(&d, "config").unwrap().config_map.as_ref().unwrap();
    assert_eq!(config.name, "dmz-config");
    let keys = volume(&d, "keys").unwrap().secret.as_ref().unwrap();
    assert_eq!(
        (keys.secret_name.as_deref(), keys.default_mode),
        (Some("dmz-keys"), Some(0o400))
    );
    let tls = volume(&d, "tls").unwrap().secret.as_ref().unwrap();
    assert_eq!(
        (tls.secret_name.as_deref(), tls.default_mode),
        (Some("mip-replication-tls"), Some(0o400))
    );
    let tun = volume(&d, "dev-net-tun").unwrap().host_path.as_ref().unwrap();
    assert_eq!(
        (tun.path.as_str(), tun.type_.as_deref()),
        ("/dev/net/tun", Some("CharDevice"))
    );

    let mounts: Vec<_> = container(&d)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.mount_path.as_str(),
                m.read_only,
                m.sub_path.is_none(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/mip/config", Some(true), true),
            ("keys", "/etc/mip/keys", Some(true), true),
            ("tls", "/etc/mip/tls", Some(true), true),
            ("dev-net-tun", "/dev/net/tun", Some(false), true),
        ]
    );
}

#[test]
fn peers_service_account_and_disruption_budget() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let svc = d.service.spec.as_ref().unwrap();
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    assert_eq!(svc.selector.as_ref(), Some(&build::selector_labels("dmz")));
    let ports: Vec<_> = svc
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.as_deref().unwrap(), p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        ports,
        [
            ("replication", 7443, Some(IntOrString::Int(7443))),
            ("admin", 9434, Some(IntOrString::Int(9434)))
        ]
    );
    assert_eq!(d.service_account.automount_service_account_token, Some(false));
    let pdb = d.pdb.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.min_available, None);
    assert_eq!(
        pdb.selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&build::selector_labels("dmz"))
    );
}

#[test]
fn config_is_the_daemons_and_validates() {
    let d = desired(&proxy("mipproxy-sample.yaml"));
    let f = config_in_pod(&d);
    assert_eq!(f.proxy.proxy_public, Ipv4Addr::new(198, 51, 100, 10));
    assert_eq!(f.proxy.proxy_private, Ipv4Addr::new(10, 10, 0, 10));
    assert_eq!(f.proxy.home_agents.len(), 1);
    let ha = &f.proxy.home_agents[0];
    assert_eq!(ha.address, Ipv4Addr::new(10, 10, 1, 1));
    let nets: Vec<String> = ha.home_networks.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.10.1.0/24", "10.20.0.0/16"]);
    assert!(ha.dynamic_assignment);
    assert_eq!((f.proxy.max_lifetime, f.proxy.pending_timeout_ms), (1800, 7000));
    assert!(f.proxy.nat.traversal && !f.proxy.nat.allow_forced);
    assert_eq!((f.proxy.nat.keepalive, f.proxy.nat.max_lifetime), (0, 60));

    assert_eq!(f.dataplane.mode, DeploymentMode::TwoBox);
    assert_eq!(f.dataplane.vpn_gateways, [Ipv4Addr::new(198, 51, 100, 20)]);
    assert_eq!(f.dataplane.vpn_gateway_private, Some(Ipv4Addr::new(10, 10, 0, 20)));
    assert_eq!(
        (f.dataplane.tun.as_str(), f.dataplane.ha_tun.as_str()),
        ("mipp0", "mipp1")
    );
    assert_eq!(f.dataplane.path_mtu, 1500);
    assert!(f.dataplane.assign_addresses);

    assert_eq!(f.daemon.keys_file, Path::new("/etc/mip/keys/keys.yaml"));
    assert_eq!(f.daemon.admin.to_string(), "0.0.0.0:9434");
    assert_eq!(f.daemon.drain_ms, 5000);

    let r = f.replication.as_ref().unwrap();
    assert_eq!(r.replica_id, None, "every pod derives its own from its node address");
    assert_eq!(f.replica_id(), Some(u32::from(POD_IP)));
    assert_eq!(r.listen.to_string(), "0.0.0.0:7443");
    let dns = r.peers.dns.as_ref().unwrap();
    assert_eq!((dns.name.as_str(), dns.port), ("dmz-peers.mip.svc", 7443));
    assert!(r.peers.static_peers.is_none());
    let tls = r.tls.as_ref().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/mip/tls/tls.crt"));
    assert_eq!(tls.key, Path::new("/etc/mip/tls/tls.key"));
    assert_eq!(tls.ca, Path::new("/etc/mip/tls/ca.crt"));
    assert_eq!(tls.server_name.as_deref(), Some("mip-replica.dmz.mip"));
    assert!(!r.insecure_plaintext);

    // The pod template carries the config's hash.
    let annotations = d
        .workload
        .template()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], config_hash(proxy_yaml(&d)));
    assert_eq!(config_hash(proxy_yaml(&d)).len(), 64);
}

/// Helm `tracing.endpoint` reaches the pods as the operator's default collector; a MipProxy's own wins, and its
/// samplingPercent becomes the daemon's sampling_ratio.
#[test]
fn traces_default_collector_and_sampling() {
    let with_default = Settings {
        default_otlp_endpoint: Some("http://otel.cluster:4317".into()),
        ..settings()
    };
    let otel = |d: &Desired| {
        container(d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .and_then(|e| e.value.clone())
    };
    let ratio = |d: &Desired| config_in_pod(d).daemon.tracing.map(|t| t.sampling_ratio);

    // The sample names its collector: the default does not replace it.
    let own = build::desired(&proxy("mipproxy-sample.yaml"), &[sample_ha()], &with_default).unwrap();
    assert_eq!(otel(&own).as_deref(), Some("http://otel-collector.observability:4317"));
    assert_eq!(ratio(&own), Some(1.0), "samplingPercent defaults to 100");

    // No collector in the spec: the operator's default, with the spec's sampling.
    let mut p = proxy("mipproxy-sample.yaml");
    p.spec.telemetry.otlp_endpoint = None;
    p.spec.telemetry.sampling_percent = 10;
    let d = build::desired(&p, &[sample_ha()], &with_default).unwrap();
    assert_eq!(otel(&d).as_deref(), Some("http://otel.cluster:4317"));
    assert_eq!(ratio(&d), Some(0.1));

    // Neither: no export, and no tracing section in the config.
    let d = build::desired(&p, &[sample_ha()], &settings()).unwrap();
    assert_eq!(otel(&d), None);
    assert_eq!(ratio(&d), None);
}

/// What the daemons' exporter cannot use is refused at the MipProxy, naming the field.
#[test]
fn telemetry_checks() {
    let mut p = proxy("mipproxy-sample.yaml");
    p.spec.telemetry.otlp_endpoint = Some("https://otel:4317".into());
    p.spec.telemetry.sampling_percent = 101;
    let fields: Vec<String> = p.spec.check().into_iter().map(|e| e.to_string()).collect();
    assert!(
        fields
            .iter()
            .any(|f| f.contains("spec.telemetry.otlpEndpoint") && f.contains("https")),
        "{fields:?}"
    );
    assert!(
        fields.iter().any(|f| f.contains("spec.telemetry.samplingPercent")),
        "{fields:?}"
    );
}

#[test]
fn daemonset_sample_and_defaults() {
    let d = desired(&proxy("mipproxy-daemonset.yaml"));
    let Workload::DaemonSet(ds) = &d.workload else {
        panic!("no replicas: a DaemonSet, got {:?}", d.workload)
    };
    let spec = ds.spec.as_ref().unwrap();
    let rolling = spec.update_strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert!(
        pod(&d).affinity.is_none(),
        "a DaemonSet places one pod per node by itself"
    );
    assert!(pod(&d).tolerations.is_none());
    assert!(volume(&d, "tls").is_some());
    let c = container(&d);
    assert!(
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.name != "OTEL_EXPORTER_OTLP_ENDPOINT")
    );
    let f = config_in_pod(&d);
    assert_eq!(f.daemon.drain_ms, 5000, "drainSeconds defaults to 5");
    assert_eq!(f.daemon.admin.port(), 9434);
    assert!(f.dataplane.assign_addresses, "assignAddresses defaults to true");
    assert_eq!(
        f.replication.as_ref().unwrap().peers.dns.as_ref().unwrap().name,
        "dmz-nodes-peers.mip.svc"
    );
}

#[test]
fn single_replica_without_replication_loads_as_is() {
    let mut p = proxy("mipproxy-sample.yaml");
    p.spec.replicas = Some(1);
    p.spec.replication = None;
    p.spec.mode = Mode::OneBox;
    p.spec.assign_addresses = false;
    p.spec.telemetry.log_format = mip_operator::crd::LogFormat::Text;
    p.spec.image = Some("registry.example/mip-proxy:debug".into());
    let d = desired(&p);
    // No replication section: the ConfigMap loads without MIP_NODE_ADDRESS.
    let f: ProxyFile = from_yaml(proxy_yaml(&d)).unwrap();
    assert!(f.replication.is_none());
    assert_eq!(f.dataplane.mode, DeploymentMode::OneBox);
    assert!(!f.dataplane.assign_addresses);
    assert_eq!(f.daemon.log_format, mip::daemon::LogFormat::Text);
    assert!(volume(&d, "tls").is_none());
    assert_eq!(container(&d).image.as_deref(), Some("registry.example/mip-proxy:debug"));
    let ports = container(&d).ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1, "admin only");
    let svc_ports = d.service.spec.as_ref().unwrap().ports.as_ref().unwrap();
    assert_eq!(svc_ports.len(), 1);
}

#[test]
fn plaintext_replication_mounts_no_tls() {
    let mut p = proxy("mipproxy-sample.yaml");
    let r = p.spec.replication.as_mut().unwrap();
    r.tls_secret_name = None;
    r.insecure_plaintext = true;
    let d = desired(&p);
    assert!(volume(&d, "tls").is_none());
    let f = config_in_pod(&d);
    let r = f.replication.unwrap();
    assert!(r.insecure_plaintext && r.tls.is_none());
}

#[test]
fn config_hash_follows_the_config_not_the_keys() {
    let p = proxy("mipproxy-sample.yaml");
    let base = desired(&p);
    let hash = |d: &Desired| {
        d.workload
            .template()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    // Same inputs, same objects.
    assert_eq!(desired(&p), base);
    let mut changed = p.clone();
    changed.spec.lifetimes.max_seconds = 600;
    assert_ne!(hash(&desired(&changed)), hash(&base));
    // A keys change rewrites the Secret but does not roll the pods.
    let mut ha = sample_ha();
    ha.keys.security_associations.pop();
    let rekeyed = build::desired(&p, &[ha], &settings()).unwrap();
    assert_eq!(hash(&rekeyed), hash(&base));
    assert_ne!(rekeyed.keys_secret, base.keys_secret);
    // The order the reconciler lists HomeAgents in does not matter.
    let ab = build::desired(&p, &[sample_ha(), second_ha()], &settings()).unwrap();
    let ba = build::desired(&p, &[second_ha(), sample_ha()], &settings()).unwrap();
    assert_eq!(hash(&ab), hash(&ba));
    assert_eq!(ab, ba);
}

#[test]
fn keys_of_every_home_agent_are_merged() {
    let p = proxy("mipproxy-sample.yaml");
    let d = build::desired(&p, &[second_ha(), sample_ha()], &settings()).unwrap();
    let secret = &d.keys_secret;
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let text = String::from_utf8(secret.data.as_ref().unwrap()["keys.yaml"].0.clone()).unwrap();
    let merged: KeysFile = from_yaml(&text).unwrap();
    let homes: Vec<String> = merged
        .security_associations
        .iter()
        .map(|s| {
            s.home_address
                .map_or_else(|| format!("peer {}", s.peer.unwrap()), |a| a.to_string())
        })
        .collect();
    assert_eq!(homes, ["10.10.1.50", "10.10.1.51", "peer 198.51.101.2", "10.10.2.50"]);
    // The keys never reach the ConfigMap.
    assert!(!proxy_yaml(&d).contains("5ca1ab1e"));
    let f = config_in_pod(&d);
    let addresses: Vec<Ipv4Addr> = f.proxy.home_agents.iter().map(|h| h.address).collect();
    assert_eq!(addresses, [Ipv4Addr::new(10, 10, 1, 1), Ipv4Addr::new(10, 10, 2, 1)]);
    // Nor the Debug output.
    let debug = format!("{d:?}");
    assert!(!debug.contains("5ca1ab1e") && !debug.contains("feedface"), "{debug}");
}

#[test]
fn duplicate_security_association_names_both_home_agents() {
    let p = proxy("mipproxy-sample.yaml");
    let mut twin = second_ha();
    twin.keys = sample_ha().keys;
    let err = build::desired(&p, &[sample_ha(), twin], &settings()).unwrap_err();
    assert!(
        matches!(&err, BuildError::DuplicateSecurityAssociation { first, second, spi: 256, .. }
            if first == "ha1" && second == "ha2"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("home address 10.10.1.50"), "{text}");
    assert!(!text.contains("5ca1ab1e"), "{text}");
    assert_eq!(err.category(), "invalid_spec");
}

#[test]
fn build_errors_name_the_proxy_and_the_cause() {
    let p = proxy("mipproxy-sample.yaml");
    let err = |p: &MipProxy, has: &[SelectedHomeAgent]| build::desired(p, has, &settings()).unwrap_err();

    assert!(matches!(err(&p, &[]), BuildError::NoHomeAgents { .. }));
    assert!(
        err(&p, &[])
            .to_string()
            .starts_with("MipProxy mip/dmz: spec.homeAgentSelector")
    );

    let mut no_uid = p.clone();
    no_uid.metadata.uid = None;
    assert!(matches!(
        err(&no_uid, &[sample_ha()]),
        BuildError::MissingMetadata { field: "uid", .. }
    ));
    let mut no_ns = p.clone();
    no_ns.metadata.namespace = None;
    assert!(matches!(
        err(&no_ns, &[sample_ha()]),
        BuildError::MissingMetadata { field: "namespace", .. }
    ));
    assert_eq!(err(&no_ns, &[sample_ha()]).category(), "build");

    let mut same_address = second_ha();
    same_address.spec.address = sample_ha().spec.address;
    let e = err(&p, &[sample_ha(), same_address]);
    assert!(matches!(e, BuildError::DuplicateHomeAgentAddress { .. }), "{e}");
    assert!(e.to_string().contains("ha1 and ha2"), "{e}");

    let mut bad_prefix = second_ha();
    bad_prefix.spec.home_prefixes = vec!["10.10.2.1/24".into()];
    let e = err(&p, &[sample_ha(), bad_prefix]);
    assert!(e.to_string().contains("HomeAgent ha2: spec.homePrefixes[0]"), "{e}");

    let mut short_key = second_ha();
    short_key.keys.security_associations[0].key = "0badc0de".into();
    let e = err(&p, &[short_key]);
    let text = e.to_string();
    assert!(matches!(e, BuildError::InvalidKeys { .. }), "{text}");
    assert!(
        text.contains("Secret ha2-keys/keys.yaml") && text.contains("security_associations[0].key"),
        "{text}"
    );
    assert!(!text.contains("0badc0de"), "{text}");
}

#[test]
fn home_agent_spec_parses_prefixes() {
    let spec: HomeAgentSpec = sample_ha().spec;
    let prefixes: Vec<String> = spec.prefixes().iter().map(ToString::to_string).collect();
    assert_eq!(prefixes, ["10.10.1.0/24", "10.20.0.0/16"]);
    assert_eq!(spec.security_associations.key, "keys.yaml");
}

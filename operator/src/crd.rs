//! The custom resources (`mipproxy.io/v1alpha1`): [`MipProxy`] and [`HomeAgent`] (docs/operator.md).
//!
//! The CRD YAML in `charts/mip-proxy/crds/` is generated from these types by `crdgen`; field documentation
//! becomes the schema's `description`, so `kubectl explain mipproxy.spec` shows these comments. Field
//! combinations the OpenAPI schema cannot express are CEL rules (`x-kubernetes-validations`), checked by the API
//! server at admission; [`MipProxySpec::check`] and [`HomeAgentSpec::check`] apply the same rules (and what needs
//! parsing, such as prefixes) in the operator, so a resource admitted by an older CRD still gets a clear error.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use mip::daemon::otlp_endpoint_problem;
use serde::{Deserialize, Serialize};

/// API group of both resources.
pub const GROUP: &str = "mipproxy.io";
/// API version of both resources.
pub const VERSION: &str = "v1alpha1";

/// Longest MipProxy name: the peers Service `<name>-peers` is a DNS label of at most 63 characters.
pub const MAX_PROXY_NAME: usize = 57;
/// Smallest `interfaces.pathMtu`: the TUNs get `pathMtu` − 32 (the UDP tunnel MTU), which must stay at least
/// 576, the IPv4 minimum (the daemon refuses less).
pub const MIN_PATH_MTU: u16 = 608;
/// Largest `interfaces.pathMtu` (the daemon's limit).
pub const MAX_PATH_MTU: u16 = 9000;
/// Longest `drainSeconds` (the daemon's `drain_ms` limit, 10 minutes).
pub const MAX_DRAIN_SECONDS: u32 = 600;
/// Most replicas of a Deployment-mode MipProxy.
pub const MAX_REPLICAS: i32 = 64;

// The CEL rules and messages used more than once, so the schema and `check` cannot drift apart in wording.
const UNICAST: &str = "must be a unicast address (not 0.0.0.0, broadcast, multicast, loopback or link-local)";
const NAME_RULE: &str = "size(self.metadata.name) <= 57 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
const NAME_MESSAGE: &str = "the name must be a DNS label of at most 57 characters (lower-case letters, digits, '-', \
     starting with a letter): the Service <name>-peers must be a valid DNS label";
const PREFIX_RULE: &str = "self.all(p, isCIDR(p) && cidr(p).ip().family() == 4 && cidr(p) == cidr(p).masked())";
const PREFIX_MESSAGE: &str = "each home prefix is an IPv4 CIDR (a.b.c.d/len) with no host bits set";
const IFNAME_PATTERN: &str = "^[^/ ]+$";
/// An OTLP/gRPC endpoint the daemons can use: plain `http://` (their exporter has no TLS).
const OTLP_ENDPOINT_PATTERN: &str = "^http://[^/ ]+";

/// Where the proxy sits relative to the VPN gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Mode {
    /// Beside the VPN gateway on the same link (the gateway's private address is needed).
    #[default]
    #[serde(rename = "twoBox")]
    TwoBox,
    /// On the VPN gateway's host.
    #[serde(rename = "oneBox")]
    OneBox,
}

/// The VPN gateways in front of the home network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpnGateways {
    /// Public addresses of the VPN gateways: the only inner destinations a tunnel may carry.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one VPN gateway"))]
    #[x_kube(validation = Rule::new("self.all(a, ip(a).isGlobalUnicast())").message(UNICAST))]
    #[schemars(length(max = 16))]
    pub public: Vec<Ipv4Addr>,
    /// twoBox: the gateway's private address, next hop for packets home agents tunnel to the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("ip(self).isGlobalUnicast()").message(UNICAST))]
    pub private: Option<Ipv4Addr>,
}

/// RFC 3519 NAT traversal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.keepaliveSeconds == 0 || self.keepaliveSeconds >= 10")
    .message("keepaliveSeconds is 0 (the node's default, 110 s) or at least 10"))]
pub struct NatTraversal {
    /// Accept UDP tunnelling when a NAT is detected (else nodes behind NATs are refused with 129).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Accept the F flag (UDP tunnelling without a NAT).
    #[serde(default)]
    pub allow_forced: bool,
    /// Keepalive interval granted to nodes behind a NAT, seconds (0 = the node's default, 110 s).
    #[serde(default)]
    pub keepalive_seconds: u16,
    /// Longest registration lifetime for a node behind a NAT, seconds.
    #[serde(default = "nat_max_lifetime")]
    #[schemars(range(min = 1))]
    pub max_lifetime_seconds: u16,
}

impl Default for NatTraversal {
    fn default() -> Self {
        NatTraversal {
            enabled: true,
            allow_forced: false,
            keepalive_seconds: 0,
            max_lifetime_seconds: nat_max_lifetime(),
        }
    }
}

/// Registration lifetimes and the pending-request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifetimes {
    /// Longest lifetime relayed or granted, seconds.
    #[serde(default = "max_lifetime")]
    #[schemars(range(min = 1))]
    pub max_seconds: u16,
    /// How long a relayed request waits for the home agent, milliseconds.
    #[serde(default = "pending_timeout_ms")]
    #[schemars(range(min = 1))]
    pub pending_timeout_ms: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            max_seconds: max_lifetime(),
            pending_timeout_ms: pending_timeout_ms(),
        }
    }
}

/// The proxy's own interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tun != self.haTun").message("tun and haTun must differ"))]
pub struct Interfaces {
    /// TUN toward the VPN gateway's public side (the home prefixes route into it).
    #[serde(default = "tun")]
    #[schemars(length(min = 1, max = 15), pattern(IFNAME_PATTERN))]
    pub tun: String,
    /// TUN injecting packets from home-agent tunnels.
    #[serde(default = "ha_tun")]
    #[schemars(length(min = 1, max = 15), pattern(IFNAME_PATTERN))]
    pub ha_tun: String,
    /// MTU of the path toward mobile nodes (the tunnel MTUs follow from it: the TUNs get pathMtu - 32, which
    /// must stay at least 576).
    #[serde(default = "path_mtu")]
    #[schemars(range(min = MIN_PATH_MTU, max = MAX_PATH_MTU))]
    pub path_mtu: u16,
}

impl Default for Interfaces {
    fn default() -> Self {
        Interfaces {
            tun: tun(),
            ha_tun: ha_tun(),
            path_mtu: path_mtu(),
        }
    }
}

/// Where the replicas run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Nodes the proxy may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the proxy tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Binding-cache replication among the replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tlsSecretName) || self.insecurePlaintext")
    .message("replication needs tlsSecretName (mTLS) unless insecurePlaintext is set"))]
#[x_kube(validation = Rule::new("!(has(self.tlsSecretName) && self.insecurePlaintext)")
    .message("tlsSecretName and insecurePlaintext exclude each other"))]
pub struct Replication {
    /// gRPC port on every node.
    #[serde(default = "replication_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// Secret with `tls.crt`, `tls.key` and `ca.crt` (a cert-manager Certificate's Secret, say): every replica
    /// presents `tls.crt` and accepts peers whose certificate chains to `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Name to verify in the peers' certificates (default: the peer's IP address, which needs IP SANs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// Plaintext gRPC between the replicas (never on an untrusted network).
    #[serde(default)]
    pub insecure_plaintext: bool,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            port: replication_port(),
            tls_secret_name: None,
            server_name: None,
            insecure_plaintext: false,
        }
    }
}

/// Log and trace export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// OTLP/gRPC collector the pods export registration traces to, `http://HOST:PORT` (their
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`); none: the operator's `--default-otlp-endpoint` (Helm `tracing.endpoint`), and
    /// without that no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), pattern(OTLP_ENDPOINT_PATTERN))]
    pub otlp_endpoint: Option<String>,
    /// Percentage of registrations traced (root sampling; a replica applying a traced delta follows the trace's
    /// decision). Default 100.
    #[serde(default = "default_sampling_percent")]
    #[schemars(range(max = 100))]
    pub sampling_percent: u8,
    /// Log lines as JSON (default) or text.
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            sampling_percent: default_sampling_percent(),
            log_format: LogFormat::default(),
        }
    }
}

fn default_sampling_percent() -> u8 {
    100
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// A set of MIP Proxy replicas.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mipproxy.io",
    version = "v1alpha1",
    kind = "MipProxy",
    plural = "mipproxies",
    doc = "A set of MIP Proxy replicas sharing a binding cache (docs/operator.md).",
    shortname = "mipp",
    namespaced,
    status = "MipProxyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Public","type":"string","jsonPath":".spec.publicAddress"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Bindings","type":"integer","jsonPath":".status.bindings"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'twoBox' || has(self.vpnGateways.private)")
    .message("twoBox needs vpnGateways.private (the gateway's private address)"))]
#[x_kube(validation = Rule::new("self.publicAddress != self.privateAddress")
    .message("publicAddress and privateAddress must differ"))]
#[x_kube(validation = Rule::new("(has(self.replicas) && self.replicas == 1) || has(self.replication)")
    .message("more than one replica, or one per node (no replicas), needs replication settings"))]
#[x_kube(validation = Rule::new("!has(self.replication) || self.replication.port != self.adminPort")
    .message("replication.port and adminPort must differ (both are host ports)"))]
pub struct MipProxySpec {
    /// twoBox (beside the VPN gateway, default) or oneBox (on the gateway's host).
    #[serde(default)]
    pub mode: Mode,
    /// `proxy_public`: where mobile nodes register (UDP 434); shared by every replica.
    #[x_kube(validation = Rule::new("ip(self).isGlobalUnicast()").message(UNICAST))]
    pub public_address: Ipv4Addr,
    /// `proxy_private`: the care-of address the home agents see; shared by every replica.
    #[x_kube(validation = Rule::new("ip(self).isGlobalUnicast()").message(UNICAST))]
    pub private_address: Ipv4Addr,
    /// Add `publicAddress`/32 and `privateAddress`/32 to each node's `lo` while the proxy runs (the network then
    /// routes them to the nodes by ECMP: README "Scale-out"). Off when something else owns them.
    #[serde(default = "yes")]
    pub assign_addresses: bool,
    /// The VPN gateways.
    pub vpn_gateways: VpnGateways,
    /// HomeAgents (in this namespace) the proxy may relay to.
    pub home_agent_selector: LabelSelector,
    /// NAT traversal policy.
    #[serde(default)]
    pub nat_traversal: NatTraversal,
    /// Lifetimes.
    #[serde(default)]
    pub lifetimes: Lifetimes,
    /// TUN names and path MTU.
    #[serde(default)]
    pub interfaces: Interfaces,
    /// Replicas (a Deployment, one per node); unset: one per selected node (a DaemonSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: Option<i32>,
    /// Node placement.
    #[serde(default)]
    pub placement: Placement,
    /// Replication among the replicas (required for more than one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
    /// Seconds a terminating replica keeps serving after it turned not-ready (the network's withdrawal time).
    #[serde(default = "drain_seconds")]
    #[schemars(range(max = 600))]
    pub drain_seconds: u32,
    /// Admin port on every node: `/healthz`, `/readyz`, `/metrics` for whoever reaches it; `/bindings`,
    /// `/status`, `/drain` only from the node itself (others get 403).
    #[serde(default = "admin_port")]
    #[schemars(range(min = 1))]
    pub admin_port: u16,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Proxy image (default: the operator's `--proxy-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
}

/// What the operator observed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MipProxyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `Replicating`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods desired.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Bindings (the largest count any ready replica reports; replicas share one cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<u64>,
    /// Per ready replica: node address and peers connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyReport>,
    /// The HomeAgents selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub home_agents: Vec<String>,
}

/// One replica's own report (its admin `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// Pod name.
    pub pod: String,
    /// Node address.
    pub node_address: String,
    /// Bindings in its cache.
    pub bindings: u64,
    /// Peers whose replication stream is open.
    pub peers_connected: u32,
}

/// The Secret key holding the security associations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "keys_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A real home agent the proxies relay to.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mipproxy.io",
    version = "v1alpha1",
    kind = "HomeAgent",
    plural = "homeagents",
    doc = "A real home agent the MIP proxies may relay to, with its security associations (docs/operator.md).",
    shortname = "mipha",
    namespaced,
    status = "HomeAgentStatus",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Prefixes","type":"string","jsonPath":".spec.homePrefixes"}"#,
    printcolumn = r#"{"name":"SAs","type":"integer","jsonPath":".status.securityAssociations"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HomeAgentSpec {
    /// The home agent's address (the relay target).
    #[x_kube(validation = Rule::new("ip(self).isGlobalUnicast()").message(UNICAST))]
    pub address: Ipv4Addr,
    /// Home prefixes (CIDR) it serves: requests for home addresses inside them go to it.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one home prefix"))]
    #[x_kube(validation = Rule::new(PREFIX_RULE).message(PREFIX_MESSAGE))]
    #[schemars(length(max = 64), inner(length(max = 18)))]
    pub home_prefixes: Vec<String>,
    /// May be picked for a request asking for dynamic home-agent assignment.
    #[serde(default)]
    pub dynamic_assignment: bool,
    /// The Secret with the mobility security associations (keys-file YAML).
    pub security_associations: SecretKeyRef,
}

/// What the operator observed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeAgentStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Security associations in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_associations: Option<u32>,
    /// MipProxies selecting this home agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

fn yes() -> bool {
    true
}
fn nat_max_lifetime() -> u16 {
    60
}
fn max_lifetime() -> u16 {
    1800
}
fn pending_timeout_ms() -> u32 {
    7000
}
fn tun() -> String {
    "mipp0".into()
}
fn ha_tun() -> String {
    "mipp1".into()
}
fn path_mtu() -> u16 {
    1500
}
fn replication_port() -> u16 {
    7443
}
fn drain_seconds() -> u32 {
    5
}
fn admin_port() -> u16 {
    9434
}
fn keys_key() -> String {
    "keys.yaml".into()
}

/// First line of every generated CRD file.
pub const CRD_HEADER: &str = "# Generated by crdgen from operator/src/crd.rs; do not edit.\n";

/// The CRD files `crdgen` writes to `charts/mip-proxy/crds/`: (file name, YAML) of [`MipProxy`] and
/// [`HomeAgent`], each `<plural>.<group>.yaml` starting with [`CRD_HEADER`].
///
/// Object keys are sorted: serde_json's `preserve_order` feature, which another crate of the workspace turns on
/// in a `cargo test --workspace` build but not in `cargo run -p mip-operator`, would otherwise change the key
/// order and make the drift check fail on identical schemas.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_norway::Error> {
    use kube::CustomResourceExt;
    [MipProxy::crd(), HomeAgent::crd()]
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let value = serde_json::to_value(crd).map_err(<serde_norway::Error as serde::ser::Error>::custom)?;
            let yaml = serde_norway::to_string(&sorted(value))?;
            Ok((format!("{name}.yaml"), format!("{CRD_HEADER}{yaml}")))
        })
        .collect()
}

/// `v` with every object's keys in sorted order (whatever map type serde_json was built with).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// A problem with a resource's spec: the field's path as `kubectl explain` spells it (`spec.vpnGateways.private`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, starting at `spec` (or `metadata`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// The errors one per `; `-separated item (events and conditions are one line).
pub fn join_errors(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Go's `net.IP.IsGlobalUnicast` for IPv4, which the CEL rules' `ip(x).isGlobalUnicast()` applies: not
/// unspecified, broadcast, multicast, loopback or link-local.
pub fn is_global_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() || a.is_link_local())
}

/// Whether `name` is a DNS label as the MipProxy name rule wants it (RFC 1035: a letter first).
pub fn is_proxy_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() <= MAX_PROXY_NAME
        && b.first().is_some_and(u8::is_ascii_lowercase)
        && b.last().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Whether `name` is a Kubernetes object name (a DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`,
/// starting and ending with an alphanumeric, at most 253 characters).
pub fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
}

/// Whether `name` is a key of a Secret's data (`[-._a-zA-Z0-9]+`, at most 253 characters).
fn is_secret_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// Collects errors for one resource; every push names its field.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn unicast(&mut self, field: &str, a: Ipv4Addr) {
        if !is_global_unicast(a) {
            self.push(field, UNICAST);
        }
    }

    fn nonempty(&mut self, field: &str, value: Option<&str>) {
        if value.is_some_and(str::is_empty) {
            self.push(field, "must not be empty when set");
        }
    }
}

impl MipProxySpec {
    /// Every problem with this spec, each naming its field: the CEL rules and schema bounds of the CRD again
    /// (a resource admitted under an older CRD, or never admitted at all in a test, gets the same verdict), plus
    /// what the daemon would refuse. Empty when valid.
    pub fn check(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        e.unicast("spec.publicAddress", self.public_address);
        e.unicast("spec.privateAddress", self.private_address);
        if self.public_address == self.private_address {
            e.push("spec.privateAddress", "publicAddress and privateAddress must differ");
        }
        self.check_vpn_gateways(&mut e);
        self.check_lifetimes(&mut e);
        self.interfaces.check(&mut e);
        self.check_replicas(&mut e);
        if self.drain_seconds > MAX_DRAIN_SECONDS {
            e.push(
                "spec.drainSeconds",
                format!("at most {MAX_DRAIN_SECONDS} (orchestrators kill long before that)"),
            );
        }
        if self.admin_port == 0 {
            e.push("spec.adminPort", "must not be 0");
        }
        e.nonempty("spec.image", self.image.as_deref());
        e.nonempty("spec.telemetry.otlpEndpoint", self.telemetry.otlp_endpoint.as_deref());
        let endpoint = self.telemetry.otlp_endpoint.as_deref().filter(|s| !s.is_empty());
        if let Some(problem) = endpoint.and_then(otlp_endpoint_problem) {
            e.push("spec.telemetry.otlpEndpoint", problem);
        }
        if self.telemetry.sampling_percent > 100 {
            e.push("spec.telemetry.samplingPercent", "at most 100");
        }
        e.0
    }

    fn check_vpn_gateways(&self, e: &mut Errors) {
        let g = &self.vpn_gateways;
        if g.public.is_empty() {
            e.push("spec.vpnGateways.public", "at least one VPN gateway");
        }
        if g.public.len() > 16 {
            e.push("spec.vpnGateways.public", "at most 16 VPN gateways");
        }
        for (i, a) in g.public.iter().enumerate() {
            e.unicast(&format!("spec.vpnGateways.public[{i}]"), *a);
        }
        match g.private {
            Some(a) => e.unicast("spec.vpnGateways.private", a),
            None if self.mode == Mode::TwoBox => e.push(
                "spec.vpnGateways.private",
                "twoBox needs vpnGateways.private (the gateway's private address)",
            ),
            None => {}
        }
    }

    fn check_lifetimes(&self, e: &mut Errors) {
        let nat = &self.nat_traversal;
        if (1..10).contains(&nat.keepalive_seconds) {
            e.push(
                "spec.natTraversal.keepaliveSeconds",
                "keepaliveSeconds is 0 (the node's default, 110 s) or at least 10",
            );
        }
        if nat.max_lifetime_seconds == 0 {
            e.push("spec.natTraversal.maxLifetimeSeconds", "must be at least 1");
        }
        if self.lifetimes.max_seconds == 0 {
            e.push("spec.lifetimes.maxSeconds", "must be at least 1");
        }
        if self.lifetimes.pending_timeout_ms == 0 {
            e.push("spec.lifetimes.pendingTimeoutMs", "must be at least 1");
        }
    }

    fn check_replicas(&self, e: &mut Errors) {
        if let Some(n) = self.replicas
            && !(1..=MAX_REPLICAS).contains(&n)
        {
            e.push("spec.replicas", format!("must be 1-{MAX_REPLICAS}"));
        }
        // A DaemonSet (no `replicas`) runs one proxy per selected node: without replication each would hold
        // its own cache and a node's traffic arriving at another replica would find no binding.
        if self.replicas != Some(1) && self.replication.is_none() {
            e.push(
                "spec.replication",
                "more than one replica, or one per node (no replicas), needs replication settings",
            );
        }
        let Some(r) = &self.replication else { return };
        if r.port == 0 {
            e.push("spec.replication.port", "must not be 0");
        }
        if r.port == self.admin_port {
            e.push(
                "spec.replication.port",
                "replication.port and adminPort must differ (both are host ports)",
            );
        }
        match (&r.tls_secret_name, r.insecure_plaintext) {
            (None, false) => e.push(
                "spec.replication.tlsSecretName",
                "replication needs tlsSecretName (mTLS) unless insecurePlaintext is set",
            ),
            (Some(_), true) => e.push(
                "spec.replication.insecurePlaintext",
                "tlsSecretName and insecurePlaintext exclude each other",
            ),
            (Some(name), false) if !is_object_name(name) => e.push(
                "spec.replication.tlsSecretName",
                format!("`{name}` is not a Secret name (lower-case DNS subdomain)"),
            ),
            _ => {}
        }
        e.nonempty("spec.replication.serverName", r.server_name.as_deref());
    }
}

impl Interfaces {
    fn check(&self, e: &mut Errors) {
        for (field, name) in [
            ("spec.interfaces.tun", &self.tun),
            ("spec.interfaces.haTun", &self.ha_tun),
        ] {
            // IFNAMSIZ is 16 including the terminating zero.
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                e.push(field, "an interface name of 1-15 characters without '/' or spaces");
            }
        }
        if self.tun == self.ha_tun {
            e.push("spec.interfaces.haTun", "tun and haTun must differ");
        }
        if !(MIN_PATH_MTU..=MAX_PATH_MTU).contains(&self.path_mtu) {
            e.push(
                "spec.interfaces.pathMtu",
                format!("must be {MIN_PATH_MTU}-{MAX_PATH_MTU} (the TUNs get pathMtu - 32, at least 576)"),
            );
        }
    }
}

impl HomeAgentSpec {
    /// Every problem with this spec, each naming its field: the CRD's CEL rules and bounds again, plus parsing
    /// the home prefixes (IPv4 CIDRs with no host bits). Empty when valid.
    pub fn check(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        e.unicast("spec.address", self.address);
        if self.home_prefixes.is_empty() {
            e.push("spec.homePrefixes", "at least one home prefix");
        }
        if self.home_prefixes.len() > 64 {
            e.push("spec.homePrefixes", "at most 64 home prefixes");
        }
        for (i, p) in self.home_prefixes.iter().enumerate() {
            // A bare address parses as a /32 in the daemon's type, but the CRD rule (isCIDR) wants the length.
            if !p.contains('/') || p.parse::<mip::config::Prefix>().is_err() {
                e.push(format!("spec.homePrefixes[{i}]"), format!("`{p}`: {PREFIX_MESSAGE}"));
            }
        }
        let sa = &self.security_associations;
        if !is_object_name(&sa.name) {
            e.push(
                "spec.securityAssociations.name",
                format!("`{}` is not a Secret name (lower-case DNS subdomain)", sa.name),
            );
        }
        if !is_secret_key(&sa.key) {
            e.push(
                "spec.securityAssociations.key",
                format!("`{}` is not a Secret key ([-._a-zA-Z0-9]+)", sa.key),
            );
        }
        e.0
    }

    /// The home prefixes, parsed (the invalid ones, which [`HomeAgentSpec::check`] reports, left out).
    pub fn prefixes(&self) -> Vec<mip::config::Prefix> {
        self.home_prefixes.iter().filter_map(|p| p.parse().ok()).collect()
    }
}

//! The children a `MipProxy` should have, computed without I/O (docs/operator.md "Pods", "Peers", "Children"):
//! the reconciler reads the MipProxy, the HomeAgents it selects and their Secrets, calls [`desired`], and applies
//! what comes back. Everything here is a pure function of its arguments, so the same inputs give byte-identical
//! objects (the config hash, and server-side apply, see no change when nothing changed).
//!
//! * ConfigMap `<n>-config`: `proxy.yaml`, a serialised [`ProxyFile`] (the daemon's own type and validation).
//! * Secret `<n>-keys`: `keys.yaml`, the union of the selected HomeAgents' security associations.
//! * Deployment (`spec.replicas` set) or DaemonSet `<n>`: the proxy pods.
//! * Service `<n>-peers` (headless: the replicas find each other), ServiceAccount `<n>` (no token),
//!   PodDisruptionBudget `<n>` (one pod down at a time).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, Secret, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use mip::config::{ConfigError, KeysFile, SaEntry, Validate};
use mip::daemon::replication::{DnsPeers, PeersConfig, ReplicationConfig, TlsFiles};
use mip::daemon::{
    DaemonSettings, DeploymentMode, LogFormat as DaemonLogFormat, NODE_ADDRESS_ENV, OTLP_ENDPOINT_ENV, ProxyDataPlane,
    ProxyFile, TracingSettings,
};
use mip::roles::proxy::{HomeAgentEntry, NatConfig, ProxyConfig};
use sha2::{Digest, Sha256};

use crate::crd::{FieldError, HomeAgentSpec, LogFormat, MipProxy, MipProxySpec, Mode, Replication, join_errors};

/// Label every child carries: the application.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label every child carries: the MipProxy's name.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label every child carries: who manages it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_NAME`].
pub const APP_NAME: &str = "mip-proxy";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGER: &str = "mip-operator";
/// Pod annotation: SHA-256 of `proxy.yaml`. A config change changes the pod template, so the pods roll; a keys
/// change does not (the daemon hot-reloads the mounted Secret).
pub const CONFIG_HASH_ANNOTATION: &str = "mipproxy.io/config-hash";
/// The proxy's container.
pub const CONTAINER: &str = "mip-proxy";
/// Key of the ConfigMap holding the daemon's configuration.
pub const CONFIG_KEY: &str = "proxy.yaml";
/// Key of the Secret holding the merged keys file.
pub const KEYS_KEY: &str = "keys.yaml";
/// Where the ConfigMap is mounted: a directory (no `subPath`), so the kubelet's updates reach the pod.
pub const CONFIG_DIR: &str = "/etc/mip/config";
/// Where the keys Secret is mounted (a directory, for the same reason).
pub const KEYS_DIR: &str = "/etc/mip/keys";
/// Where the replication mTLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/mip/tls";
/// Seconds added to `drainSeconds` for the grace period: the replication flush and the removal of the
/// proxy's kernel state after the drain.
pub const TERMINATION_MARGIN_SECONDS: i64 = 15;
/// The TUN clone device, mounted from the host.
const TUN_DEVICE: &str = "/dev/net/tun";
/// Read-only for the owner: the keys and TLS files are the daemon's alone.
const SECRET_FILE_MODE: i32 = 0o400;
/// The daemon's routing table for packets from home-agent tunnels (its default, deploy/config/proxy.yaml).
const HA_PATH_TABLE: u32 = 100;
/// How often replicas re-resolve the peers Service, ms: a new replica is found within this (the daemon's
/// default).
const PEERS_REFRESH_MS: u64 = 10_000;

/// The operator's own settings that enter the children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Proxy image, unless the MipProxy names one (`spec.image`).
    pub proxy_image: String,
    /// `imagePullPolicy` of the proxy container (none: the cluster's default).
    pub image_pull_policy: Option<String>,
    /// OTLP/gRPC collector of the pods whose MipProxy names none (`spec.telemetry.otlpEndpoint`).
    pub default_otlp_endpoint: Option<String>,
}

/// A HomeAgent the MipProxy selects, with its keys file (the parsed Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SelectedHomeAgent {
    /// The HomeAgent's name.
    pub name: String,
    /// Its spec.
    pub spec: HomeAgentSpec,
    /// The security associations from its Secret.
    pub keys: KeysFile,
}

// Not derived: the keys file's Debug prints the keys.
impl fmt::Debug for SelectedHomeAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedHomeAgent")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("keys", &Redacted(self.keys.security_associations.len()))
            .finish()
    }
}

/// The proxy pods' controller.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// `spec.replicas` set: that many pods, one per node.
    Deployment(Deployment),
    /// `spec.replicas` unset: one pod on every node of the placement.
    DaemonSet(DaemonSet),
}

impl Workload {
    /// The pod template.
    pub fn template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| &s.template),
        }
    }

    /// The pod spec.
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        self.template().and_then(|t| t.spec.as_ref())
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        }
    }
}

/// Every child of one MipProxy.
#[derive(Clone, PartialEq)]
pub struct Desired {
    /// `<n>-config`: `proxy.yaml`.
    pub config_map: ConfigMap,
    /// `<n>-keys`: `keys.yaml`, the merged security associations.
    pub keys_secret: Secret,
    /// `<n>`: the pods.
    pub workload: Workload,
    /// `<n>-peers`: the headless Service replicas find each other by.
    pub service: Service,
    /// `<n>`: the pods' identity, with no token.
    pub service_account: ServiceAccount,
    /// `<n>`: at most one pod down by eviction.
    pub pdb: PodDisruptionBudget,
}

// Not derived: the keys Secret's data is key material.
impl fmt::Debug for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desired")
            .field("config_map", &self.config_map)
            .field(
                "keys_secret",
                &Redacted(self.keys_secret.metadata.name.as_deref().unwrap_or("")),
            )
            .field("workload", &self.workload)
            .field("service", &self.service)
            .field("service_account", &self.service_account)
            .field("pdb", &self.pdb)
            .finish()
    }
}

/// Debug output for something whose contents stay out of logs.
struct Redacted<T>(T);

impl<T: fmt::Display> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted: {}>", self.0)
    }
}

/// Why the children cannot be built. Messages name the MipProxy (`namespace/name`) and the field or HomeAgent at
/// fault, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The object lacks server-set metadata (it was not read from the API server).
    #[error("MipProxy {proxy}: metadata.{field} is not set (the object was not read from the API server)")]
    MissingMetadata {
        /// The MipProxy.
        proxy: String,
        /// `namespace` or `uid`.
        field: &'static str,
    },
    /// The name cannot carry the children's names.
    #[error("MipProxy {proxy}: metadata.name: {message}")]
    InvalidName {
        /// The MipProxy.
        proxy: String,
        /// What is wrong.
        message: String,
    },
    /// The spec breaks a rule of the CRD (or one only the operator checks).
    #[error("MipProxy {proxy}: {}", join_errors(.errors))]
    InvalidSpec {
        /// The MipProxy.
        proxy: String,
        /// Every problem, each naming its field.
        errors: Vec<FieldError>,
    },
    /// `spec.homeAgentSelector` selects nothing: the relay would have no allow-list.
    #[error("MipProxy {proxy}: spec.homeAgentSelector selects no HomeAgent in its namespace")]
    NoHomeAgents {
        /// The MipProxy.
        proxy: String,
    },
    /// A selected HomeAgent's spec is invalid.
    #[error("MipProxy {proxy}: HomeAgent {home_agent}: {}", join_errors(.errors))]
    InvalidHomeAgent {
        /// The MipProxy.
        proxy: String,
        /// The HomeAgent.
        home_agent: String,
        /// Every problem, each naming its field.
        errors: Vec<FieldError>,
    },
    /// A selected HomeAgent's keys file is invalid.
    #[error("MipProxy {proxy}: HomeAgent {home_agent}: the keys file in Secret {secret}: {}", render_config_errors(.errors))]
    InvalidKeys {
        /// The MipProxy.
        proxy: String,
        /// The HomeAgent.
        home_agent: String,
        /// `secret name/key`.
        secret: String,
        /// Every problem, each naming its field in the keys file.
        errors: Vec<ConfigError>,
    },
    /// Two selected HomeAgents have the same address.
    #[error("MipProxy {proxy}: HomeAgents {first} and {second} have the same spec.address {address}")]
    DuplicateHomeAgentAddress {
        /// The MipProxy.
        proxy: String,
        /// One HomeAgent.
        first: String,
        /// The other.
        second: String,
        /// Their address.
        address: Ipv4Addr,
    },
    /// Two selected HomeAgents hold a security association for the same peer and SPI: the merged keys file
    /// could keep only one of them.
    #[error(
        "MipProxy {proxy}: HomeAgents {first} and {second} both hold a security association for {peer} SPI \
         {spi}; the proxy's merged keys file can hold only one"
    )]
    DuplicateSecurityAssociation {
        /// The MipProxy.
        proxy: String,
        /// One HomeAgent.
        first: String,
        /// The other.
        second: String,
        /// `home address 10.10.1.50`, `NAI joe@example.com` or `peer 192.0.2.1`.
        peer: String,
        /// The SPI.
        spi: u32,
    },
    /// The built `proxy.yaml` fails the daemon's validation (an operator bug: `check` should have caught it).
    #[error("MipProxy {proxy}: the built proxy.yaml is invalid: {}", render_config_errors(.errors))]
    InvalidConfig {
        /// The MipProxy.
        proxy: String,
        /// The daemon's verdict.
        errors: Vec<ConfigError>,
    },
    /// Serialising a child's data failed.
    #[error("MipProxy {proxy}: cannot serialise {what}: {message}")]
    Serialize {
        /// The MipProxy.
        proxy: String,
        /// `proxy.yaml` or `keys.yaml`.
        what: &'static str,
        /// The serialiser's error.
        message: String,
    },
}

impl BuildError {
    /// Metric label (`mip_operator_reconcile_errors_total{category}`): `invalid_spec` for what the user must
    /// fix (the reconciler waits for a change), `build` for the rest.
    pub fn category(&self) -> &'static str {
        match self {
            BuildError::InvalidName { .. }
            | BuildError::InvalidSpec { .. }
            | BuildError::NoHomeAgents { .. }
            | BuildError::InvalidHomeAgent { .. }
            | BuildError::InvalidKeys { .. }
            | BuildError::DuplicateHomeAgentAddress { .. }
            | BuildError::DuplicateSecurityAssociation { .. } => "invalid_spec",
            BuildError::MissingMetadata { .. } | BuildError::InvalidConfig { .. } | BuildError::Serialize { .. } => {
                "build"
            }
        }
    }
}

fn render_config_errors(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Name of the ConfigMap of MipProxy `proxy`.
pub fn config_map_name(proxy: &str) -> String {
    format!("{proxy}-config")
}

/// Name of the keys Secret of MipProxy `proxy`.
pub fn keys_secret_name(proxy: &str) -> String {
    format!("{proxy}-keys")
}

/// Name of the headless peers Service of MipProxy `proxy`.
pub fn peers_service_name(proxy: &str) -> String {
    format!("{proxy}-peers")
}

/// The labels every child (and every pod) of MipProxy `proxy` carries.
pub fn labels(proxy: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(proxy);
    l.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    l
}

/// The labels that select MipProxy `proxy`'s pods (workload, Service, PodDisruptionBudget, anti-affinity).
pub fn selector_labels(proxy: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), proxy.to_string()),
    ])
}

/// SHA-256 of `proxy.yaml`, hexadecimal: the value of [`CONFIG_HASH_ANNOTATION`].
pub fn config_hash(proxy_yaml: &str) -> String {
    hex::encode(Sha256::digest(proxy_yaml.as_bytes()))
}

/// The children `proxy` should have, given the HomeAgents its selector matches (in any order) and the
/// operator's settings. Fails on anything the user must fix (naming the field or HomeAgent) and on metadata only
/// the API server sets (namespace, uid).
pub fn desired(
    proxy: &MipProxy,
    home_agents: &[SelectedHomeAgent],
    settings: &Settings,
) -> Result<Desired, BuildError> {
    let ctx = Ctx::new(proxy, settings)?;
    let spec = &proxy.spec;
    let errors = spec.check();
    if !errors.is_empty() {
        return Err(BuildError::InvalidSpec {
            proxy: ctx.id(),
            errors,
        });
    }
    // Sorted by name: the same HomeAgents in any order give the same proxy.yaml, so the pods do not roll.
    let mut has: Vec<&SelectedHomeAgent> = home_agents.iter().collect();
    has.sort_by(|a, b| a.name.cmp(&b.name));
    ctx.check_home_agents(&has)?;
    let keys = ctx.merge_keys(&has)?;
    let file = ctx.proxy_file(&has);
    ctx.validate(&file)?;
    let proxy_yaml = ctx.yaml(&file, CONFIG_KEY)?;
    let keys_yaml = ctx.yaml(&keys, KEYS_KEY)?;
    let hash = config_hash(&proxy_yaml);
    Ok(Desired {
        config_map: ctx.config_map(proxy_yaml),
        keys_secret: ctx.keys_secret(keys_yaml),
        workload: ctx.workload(&hash),
        service: ctx.service(),
        service_account: ctx.service_account(),
        pdb: ctx.pdb(),
    })
}

/// What every builder needs: the MipProxy, its identity and the operator's settings.
struct Ctx<'a> {
    spec: &'a MipProxySpec,
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
    settings: &'a Settings,
}

impl<'a> Ctx<'a> {
    fn new(proxy: &'a MipProxy, settings: &'a Settings) -> Result<Self, BuildError> {
        let name = proxy.metadata.name.as_deref().unwrap_or("");
        let namespace = proxy.metadata.namespace.as_deref();
        let id = format!("{}/{name}", namespace.unwrap_or(""));
        let Some(namespace) = namespace else {
            return Err(BuildError::MissingMetadata {
                proxy: id,
                field: "namespace",
            });
        };
        if !crate::crd::is_proxy_name(name) {
            return Err(BuildError::InvalidName {
                proxy: id,
                message: format!(
                    "`{name}` is not a DNS label of at most {} characters starting with a letter (the Service \
                     <name>-peers must be one)",
                    crate::crd::MAX_PROXY_NAME
                ),
            });
        }
        // controller_owner_ref is None without a uid.
        let Some(owner) = proxy.controller_owner_ref(&()) else {
            return Err(BuildError::MissingMetadata {
                proxy: id,
                field: "uid",
            });
        };
        Ok(Ctx {
            spec: &proxy.spec,
            name,
            namespace,
            owner,
            settings,
        })
    }

    /// `namespace/name`, for errors.
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Metadata of a child called `name`: namespace, labels, the controller owner reference.
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(selector_labels(self.name)),
            match_expressions: None,
        }
    }

    // === HomeAgents and keys ===

    fn check_home_agents(&self, has: &[&SelectedHomeAgent]) -> Result<(), BuildError> {
        if has.is_empty() {
            return Err(BuildError::NoHomeAgents { proxy: self.id() });
        }
        for ha in has {
            let errors = ha.spec.check();
            if !errors.is_empty() {
                return Err(BuildError::InvalidHomeAgent {
                    proxy: self.id(),
                    home_agent: ha.name.clone(),
                    errors,
                });
            }
        }
        let mut seen: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for ha in has {
            if let Some(first) = seen.insert(ha.spec.address, &ha.name) {
                return Err(BuildError::DuplicateHomeAgentAddress {
                    proxy: self.id(),
                    first: first.to_string(),
                    second: ha.name.clone(),
                    address: ha.spec.address,
                });
            }
        }
        Ok(())
    }

    /// One keys file with every HomeAgent's security associations. Each file must be valid on its own, and no
    /// (peer, SPI) may come from two HomeAgents: the daemon's key store would refuse the merged file.
    fn merge_keys(&self, has: &[&SelectedHomeAgent]) -> Result<KeysFile, BuildError> {
        let mut owner_of: BTreeMap<(String, u32), &str> = BTreeMap::new();
        let mut merged = KeysFile::default();
        for ha in has {
            let errors = ha.keys.validate();
            if !errors.is_empty() {
                let sa = &ha.spec.security_associations;
                return Err(BuildError::InvalidKeys {
                    proxy: self.id(),
                    home_agent: ha.name.clone(),
                    secret: format!("{}/{}", sa.name, sa.key),
                    errors,
                });
            }
            for entry in &ha.keys.security_associations {
                for peer in sa_identities(entry) {
                    if let Some(first) = owner_of.insert((peer.clone(), entry.spi), &ha.name)
                        && first != ha.name
                    {
                        return Err(BuildError::DuplicateSecurityAssociation {
                            proxy: self.id(),
                            first: first.to_string(),
                            second: ha.name.clone(),
                            peer,
                            spi: entry.spi,
                        });
                    }
                }
            }
            merged
                .security_associations
                .extend(ha.keys.security_associations.iter().cloned());
        }
        Ok(merged)
    }

    // === proxy.yaml ===

    fn proxy_file(&self, has: &[&SelectedHomeAgent]) -> ProxyFile {
        let s = self.spec;
        ProxyFile {
            proxy: self.proxy_config(has),
            dataplane: ProxyDataPlane {
                mode: match s.mode {
                    Mode::TwoBox => DeploymentMode::TwoBox,
                    Mode::OneBox => DeploymentMode::OneBox,
                },
                vpn_gateways: s.vpn_gateways.public.clone(),
                vpn_gateway_private: s.vpn_gateways.private,
                tun: s.interfaces.tun.clone(),
                ha_tun: s.interfaces.ha_tun.clone(),
                // None: the daemon derives it from path_mtu (the UDP tunnel MTU).
                tun_mtu: None,
                path_mtu: s.interfaces.path_mtu,
                outer_ttl: mip::dataplane::DEFAULT_OUTER_TTL,
                ha_path_table: HA_PATH_TABLE,
                assign_addresses: s.assign_addresses,
            },
            daemon: DaemonSettings {
                keys_file: PathBuf::from(KEYS_DIR).join(KEYS_KEY),
                // Every address: the kubelet probes the pod IP (the node's) and peers scrape /metrics.
                admin: SocketAddr::from((Ipv4Addr::UNSPECIFIED, s.admin_port)),
                // /bindings, /status and /drain stay host-only: the kubelet's preStop hook comes from the node.
                admin_remote_access: false,
                log_format: match s.telemetry.log_format {
                    LogFormat::Json => DaemonLogFormat::Json,
                    LogFormat::Text => DaemonLogFormat::Text,
                },
                drain_ms: u64::from(s.drain_seconds) * 1000,
                // The endpoint comes as OTEL_EXPORTER_OTLP_ENDPOINT ([`Self::env`]); the ratio only matters with one.
                tracing: self.otlp_endpoint().map(|_| TracingSettings {
                    sampling_ratio: f64::from(s.telemetry.sampling_percent.min(100)) / 100.0,
                    ..TracingSettings::default()
                }),
            },
            replication: s.replication.as_ref().map(|r| self.replication(r)),
        }
    }

    fn proxy_config(&self, has: &[&SelectedHomeAgent]) -> ProxyConfig {
        let s = self.spec;
        let home_agents = has
            .iter()
            .map(|ha| HomeAgentEntry {
                address: ha.spec.address,
                home_networks: ha.spec.prefixes(),
                dynamic_assignment: ha.spec.dynamic_assignment,
            })
            .collect();
        ProxyConfig {
            // node_address stays unset: each pod sets it from MIP_NODE_ADDRESS (its own node's address).
            max_lifetime: s.lifetimes.max_seconds,
            pending_timeout_ms: s.lifetimes.pending_timeout_ms,
            nat: NatConfig {
                traversal: s.nat_traversal.enabled,
                allow_forced: s.nat_traversal.allow_forced,
                keepalive: s.nat_traversal.keepalive_seconds,
                max_lifetime: s.nat_traversal.max_lifetime_seconds,
            },
            ..ProxyConfig::new(s.public_address, s.private_address, home_agents)
        }
    }

    fn replication(&self, r: &Replication) -> ReplicationConfig {
        let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, r.port));
        let tls_file = |f: &str| PathBuf::from(TLS_DIR).join(f);
        ReplicationConfig {
            // None: every pod reads the same ConfigMap, so the id comes from its node address (unique per pod:
            // one pod per node).
            replica_id: None,
            listen,
            peers: PeersConfig {
                static_peers: None,
                dns: Some(DnsPeers {
                    name: format!("{}.{}.svc", peers_service_name(self.name), self.namespace),
                    port: r.port,
                    refresh_ms: PEERS_REFRESH_MS,
                }),
            },
            tls: r.tls_secret_name.as_ref().map(|_| TlsFiles {
                cert: tls_file("tls.crt"),
                key: tls_file("tls.key"),
                ca: tls_file("ca.crt"),
                server_name: r.server_name.clone(),
            }),
            insecure_plaintext: r.insecure_plaintext,
            // The daemon's defaults for the rest.
            ..ReplicationConfig::plaintext(1, listen, Vec::new())
        }
    }

    /// The daemon's validation, as a pod runs it: after [`NODE_ADDRESS_ENV`] set `proxy.node_address` (any
    /// unicast address stands in for the pod's here).
    fn validate(&self, file: &ProxyFile) -> Result<(), BuildError> {
        let mut as_in_pod = file.clone();
        as_in_pod.proxy.node_address = Some(self.spec.private_address);
        let errors = as_in_pod.validate();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BuildError::InvalidConfig {
                proxy: self.id(),
                errors,
            })
        }
    }

    fn yaml<T: serde::Serialize>(&self, value: &T, what: &'static str) -> Result<String, BuildError> {
        serde_norway::to_string(value).map_err(|e| BuildError::Serialize {
            proxy: self.id(),
            what,
            message: e.to_string(),
        })
    }

    // === the children ===

    fn config_map(&self, proxy_yaml: String) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(config_map_name(self.name)),
            data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), proxy_yaml)])),
            ..ConfigMap::default()
        }
    }

    fn keys_secret(&self, keys_yaml: String) -> Secret {
        Secret {
            metadata: self.meta(keys_secret_name(self.name)),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                KEYS_KEY.to_string(),
                ByteString(keys_yaml.into_bytes()),
            )])),
            ..Secret::default()
        }
    }

    fn workload(&self, config_hash: &str) -> Workload {
        let template = self.pod_template(config_hash);
        match self.spec.replicas {
            Some(replicas) => Workload::Deployment(Deployment {
                metadata: self.meta(self.name.to_string()),
                spec: Some(DeploymentSpec {
                    replicas: Some(replicas),
                    selector: self.selector(),
                    template,
                    // Replace in place, one at a time: with one pod per node (host ports, anti-affinity) a
                    // surge pod may have no node to go to, and the default (25 % unavailable, rounded down)
                    // would then never make progress.
                    strategy: Some(DeploymentStrategy {
                        type_: Some("RollingUpdate".into()),
                        rolling_update: Some(RollingUpdateDeployment {
                            max_surge: Some(IntOrString::Int(0)),
                            max_unavailable: Some(IntOrString::Int(1)),
                        }),
                    }),
                    ..DeploymentSpec::default()
                }),
                ..Deployment::default()
            }),
            None => Workload::DaemonSet(DaemonSet {
                metadata: self.meta(self.name.to_string()),
                spec: Some(DaemonSetSpec {
                    selector: self.selector(),
                    template,
                    // No surge: two pods of one node would fight over its host ports and addresses.
                    update_strategy: Some(DaemonSetUpdateStrategy {
                        type_: Some("RollingUpdate".into()),
                        rolling_update: Some(RollingUpdateDaemonSet {
                            max_surge: Some(IntOrString::Int(0)),
                            max_unavailable: Some(IntOrString::Int(1)),
                        }),
                    }),
                    ..DaemonSetSpec::default()
                }),
                ..DaemonSet::default()
            }),
        }
    }

    fn pod_template(&self, config_hash: &str) -> PodTemplateSpec {
        let s = self.spec;
        let affinity = s.replicas.map(|_| Affinity {
            // One replica per node: the replicas use host ports and the node's addresses.
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(self.selector()),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..PodAffinityTerm::default()
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        });
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(self.name)),
                annotations: Some(BTreeMap::from([(
                    CONFIG_HASH_ANNOTATION.to_string(),
                    config_hash.to_string(),
                )])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                // The proxy owns addresses, routes and TUNs on the node itself.
                host_network: Some(true),
                dns_policy: Some("ClusterFirstWithHostNet".into()),
                service_account_name: Some(self.name.to_string()),
                // The proxy never talks to the API server.
                automount_service_account_token: Some(false),
                node_selector: (!s.placement.node_selector.is_empty()).then(|| s.placement.node_selector.clone()),
                tolerations: (!s.placement.tolerations.is_empty()).then(|| s.placement.tolerations.clone()),
                affinity,
                termination_grace_period_seconds: Some(i64::from(s.drain_seconds) + TERMINATION_MARGIN_SECONDS),
                containers: vec![self.container()],
                volumes: Some(self.volumes()),
                ..PodSpec::default()
            }),
        }
    }

    fn container(&self) -> Container {
        let s = self.spec;
        let admin = IntOrString::Int(i32::from(s.admin_port));
        let http_get = |path: &str| HTTPGetAction {
            path: Some(path.into()),
            port: admin.clone(),
            ..HTTPGetAction::default()
        };
        Container {
            name: CONTAINER.into(),
            image: Some(s.image.clone().unwrap_or_else(|| self.settings.proxy_image.clone())),
            image_pull_policy: self.settings.image_pull_policy.clone(),
            args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_KEY}")]),
            env: Some(self.env()),
            ports: Some(self.container_ports()),
            // Ready only when serving (and, replicated, caught up); a single miss takes it out at once, so a
            // drain or a failure withdraws it within one period.
            readiness_probe: Some(Probe {
                http_get: Some(http_get("/readyz")),
                period_seconds: Some(2),
                failure_threshold: Some(1),
                ..Probe::default()
            }),
            liveness_probe: Some(Probe {
                http_get: Some(http_get("/healthz")),
                period_seconds: Some(10),
                failure_threshold: Some(3),
                ..Probe::default()
            }),
            // GET /drain: not ready at once, serving for drainSeconds, then the answer; SIGTERM follows.
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    http_get: Some(http_get("/drain")),
                    ..LifecycleHandler::default()
                }),
                ..Lifecycle::default()
            }),
            security_context: Some(security_context()),
            volume_mounts: Some(self.volume_mounts()),
            ..Container::default()
        }
    }

    fn env(&self) -> Vec<EnvVar> {
        let mut env = vec![EnvVar {
            // The pod IP is the node's address under host networking: the node address, and the replica id.
            name: NODE_ADDRESS_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }];
        if let Some(endpoint) = self.otlp_endpoint() {
            env.push(EnvVar {
                name: OTLP_ENDPOINT_ENV.into(),
                value: Some(endpoint.to_string()),
                ..EnvVar::default()
            });
        }
        env
    }

    /// The MipProxy's collector, else the operator's default.
    fn otlp_endpoint(&self) -> Option<&str> {
        self.spec
            .telemetry
            .otlp_endpoint
            .as_deref()
            .or(self.settings.default_otlp_endpoint.as_deref())
    }

    fn container_ports(&self) -> Vec<ContainerPort> {
        // hostPort = containerPort (host networking): the scheduler then keeps two proxies using the same port
        // off one node.
        let port = |name: &str, number: u16| ContainerPort {
            name: Some(name.into()),
            container_port: i32::from(number),
            host_port: Some(i32::from(number)),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        };
        let mut ports = vec![port("admin", self.spec.admin_port)];
        if let Some(r) = &self.spec.replication {
            ports.push(port("replication", r.port));
        }
        ports
    }

    fn tls_secret(&self) -> Option<&str> {
        self.spec
            .replication
            .as_ref()
            .and_then(|r| r.tls_secret_name.as_deref())
    }

    fn volumes(&self) -> Vec<Volume> {
        let secret = |volume: &str, secret: String| Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(SECRET_FILE_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        let mut volumes = vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(self.name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            secret("keys", keys_secret_name(self.name)),
        ];
        if let Some(tls) = self.tls_secret() {
            volumes.push(secret("tls", tls.to_string()));
        }
        volumes.push(Volume {
            name: "dev-net-tun".into(),
            host_path: Some(HostPathVolumeSource {
                path: TUN_DEVICE.into(),
                type_: Some("CharDevice".into()),
            }),
            ..Volume::default()
        });
        volumes
    }

    fn volume_mounts(&self) -> Vec<VolumeMount> {
        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        let mut mounts = vec![mount("config", CONFIG_DIR, true), mount("keys", KEYS_DIR, true)];
        if self.tls_secret().is_some() {
            mounts.push(mount("tls", TLS_DIR, true));
        }
        // Read-write: the daemon opens the clone device to create its TUNs.
        mounts.push(mount("dev-net-tun", TUN_DEVICE, false));
        mounts
    }

    fn service(&self) -> Service {
        let port = |name: &str, number: u16| ServicePort {
            name: Some(name.into()),
            port: i32::from(number),
            target_port: Some(IntOrString::Int(i32::from(number))),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        };
        let mut ports = Vec::new();
        if let Some(r) = &self.spec.replication {
            ports.push(port("replication", r.port));
        }
        ports.push(port("admin", self.spec.admin_port));
        Service {
            metadata: self.meta(peers_service_name(self.name)),
            spec: Some(ServiceSpec {
                // Headless: the name resolves to every pod's address (the replicas' peers).
                cluster_ip: Some("None".into()),
                // A replica catching up (not ready yet) must find its peers and be found by them.
                publish_not_ready_addresses: Some(true),
                selector: Some(selector_labels(self.name)),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(self.name.to_string()),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }
    }

    fn pdb(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(self.name.to_string()),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(self.selector()),
                // A pod that is not ready serves nothing: evicting it (a node drain) costs no capacity.
                unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }
}

/// The proxy needs NET_ADMIN (addresses, routes, TUNs) and NET_RAW (raw IP-in-IP and ICMP sockets), nothing
/// else; root only because opening `/dev/net/tun` and the raw sockets are checked against uid 0's capabilities.
fn security_context() -> SecurityContext {
    SecurityContext {
        capabilities: Some(Capabilities {
            add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(0),
        ..SecurityContext::default()
    }
}

/// What a security association is found by, each as text for the duplicate error (no key material).
fn sa_identities(entry: &SaEntry) -> Vec<String> {
    let mut ids = Vec::new();
    if let Some(a) = entry.home_address {
        ids.push(format!("home address {a}"));
    }
    if let Some(n) = &entry.nai {
        ids.push(format!("NAI {n}"));
    }
    if let Some(p) = entry.peer {
        ids.push(format!("peer {p}"));
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants this module repeats are the daemon's defaults.
    #[test]
    fn repeated_defaults_match_the_daemon() {
        let d: ProxyDataPlane = serde_norway::from_str("vpn_gateways: [198.51.100.20]\n").unwrap();
        assert_eq!(
            (d.ha_path_table, d.outer_ttl),
            (HA_PATH_TABLE, mip::dataplane::DEFAULT_OUTER_TTL)
        );
        let p: DnsPeers = serde_norway::from_str("{name: a, port: 1}").unwrap();
        assert_eq!(p.refresh_ms, PEERS_REFRESH_MS);
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let keys: KeysFile = serde_norway::from_str(
            "security_associations:\n  - {home_address: 10.10.1.50, spi: 256, key: 5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e}\n",
        )
        .unwrap();
        let spec: HomeAgentSpec = serde_norway::from_str(
            "address: 10.10.1.1\nhomePrefixes: [10.10.1.0/24]\nsecurityAssociations: {name: k}\n",
        )
        .unwrap();
        let ha = SelectedHomeAgent {
            name: "ha1".into(),
            spec,
            keys,
        };
        let text = format!("{ha:?}");
        assert!(!text.contains("5ca1ab1e"), "{text}");
        assert!(text.contains("<redacted: 1>"), "{text}");
    }
}

//! The two controllers (docs/operator.md "Finalizer", "Status", "Errors").
//!
//! **MipProxy** (`reconcile_proxy`): owns the children (`.owns` on ConfigMap, Deployment, DaemonSet, Service,
//! ServiceAccount, PodDisruptionBudget; Secrets through one `.watches` that maps owner references and HomeAgent
//! references), watches HomeAgents (mapped to the MipProxies of the namespace whose selector matches, or that
//! listed it last time). One reconciliation:
//!
//! ```text
//! finalizer mipproxy.io/home-agent-status (kube::runtime::finalizer)
//!   Apply:   check the spec (MipProxySpec::check, the name)
//!            list the namespace's HomeAgents, select by spec.homeAgentSelector, update their status.usedBy
//!            read + parse each selected HomeAgent's Secret (KeysFile; the contents never logged)
//!            build::desired (pure)
//!            server-side apply every child (field manager mip-operator, force); delete the workload kind not in
//!            use (Deployment <-> DaemonSet switch), only if this MipProxy owns it
//!            observe: the workload's status; each ready pod's own report from http://<podIP>:<adminPort>/metrics
//!            status (merge patch, skipped when unchanged) + events
//!   Cleanup: remove the name from every HomeAgent's status.usedBy; the finalizer is then removed
//! ```
//!
//! **HomeAgent** (`reconcile_home_agent`): checks the spec and that the referenced Secret exists and parses as a
//! keys file; status `Ready` with the number of security associations, or `Degraded` (reasons `InvalidSpec`,
//! `SecretMissing`, `SecretInvalid`) with a Warning event. It watches Secrets (mapped to the HomeAgents naming them).
//!
//! **Errors** ([`Error`], [`Error::category`]): an invalid spec, a missing or invalid Secret and a build failure
//! are permanent: status `Degraded` with the reason, a Warning event, and the controller waits for a change
//! (`Action::await_change`; a watch on the Secret or HomeAgent brings the change). API errors are transient: the
//! error policy requeues with a per-object exponential backoff (1 s doubling to 300 s, reset by a success).
//!
//! **Conditions** keep their `lastTransitionTime` while their status stays the same, conditions of other types
//! (other writers) are kept, and a status equal to the current one is not written at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use mip::config::KeysFile;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::build::{self, BuildError, SelectedHomeAgent, Settings, Workload};
use crate::crd::{self, HomeAgent, HomeAgentSpec, HomeAgentStatus, MipProxy, MipProxyStatus, ProxyReport};
use crate::metrics::{self, Category, ControllerKind, Metrics};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "mip-operator";
/// The MipProxy finalizer: removes the proxy's name from the HomeAgents' `status.usedBy` before it goes.
pub const FINALIZER: &str = "mipproxy.io/home-agent-status";
/// `reportingController` of the events.
pub const REPORTING_CONTROLLER: &str = "mip-operator";
/// Time allowed to read one proxy's admin `/metrics`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// A rollout still under way after this long is `Degraded` (`RolloutStuck`); Deployments' default
/// `progressDeadlineSeconds`.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);
/// First retry after a transient error.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry interval after repeated transient errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Condition types.
pub mod condition {
    /// Every desired pod is ready.
    pub const READY: &str = "Ready";
    /// A rollout is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs attention (the reason says what).
    pub const DEGRADED: &str = "Degraded";
    /// Every ready replica is connected to every other.
    pub const REPLICATING: &str = "Replicating";
}

/// Condition and event reasons.
pub mod reason {
    /// The spec asks for something impossible.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The selector matches no HomeAgent.
    pub const NO_HOME_AGENTS: &str = "NoHomeAgents";
    /// A referenced Secret does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// A referenced Secret lacks the key or does not parse as a keys file.
    pub const SECRET_INVALID: &str = "SecretInvalid";
    /// The children could not be built.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// An API call failed (transient).
    pub const API_ERROR: &str = "ApiError";
    /// A ready pod did not answer on its admin port.
    pub const PROXY_UNREACHABLE: &str = "ProxyUnreachable";
    /// A rollout has been under way for longer than allowed.
    pub const ROLLOUT_STUCK: &str = "RolloutStuck";
    /// Every desired pod is ready.
    pub const ALL_READY: &str = "AllReplicasReady";
    /// Some desired pod is not ready.
    pub const NOT_READY: &str = "ReplicasNotReady";
    /// The DaemonSet's placement matches no node.
    pub const NO_NODES: &str = "NoNodesSelected";
    /// Pods are being created, updated or replaced.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The workload matches the spec.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Nothing wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Every ready replica is connected to every other.
    pub const ALL_PEERS_CONNECTED: &str = "AllPeersConnected";
    /// Some ready replica misses a peer.
    pub const PEERS_DISCONNECTED: &str = "PeersDisconnected";
    /// No replica is ready (nothing to report).
    pub const NO_READY_REPLICAS: &str = "NoReadyReplicas";
    /// The HomeAgent's Secret parses.
    pub const SECRET_VALID: &str = "SecretValid";
    /// Event: the children of a new generation were applied.
    pub const APPLIED: &str = "Applied";
    /// Event: the MipProxy became degraded.
    pub const DEGRADED: &str = "Degraded";
}

// === errors ===

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource asks for something impossible (what the CRD schema cannot catch), or a referenced Secret does
    /// not parse. `reason` is the condition reason ([`reason::INVALID_SPEC`], [`reason::NO_HOME_AGENTS`],
    /// [`reason::SECRET_INVALID`]).
    #[error("{message}")]
    InvalidSpec {
        /// Condition reason.
        reason: &'static str,
        /// What is wrong (never a Secret's contents).
        message: String,
    },
    /// A referenced Secret does not exist.
    #[error("{message}")]
    MissingSecret {
        /// Which Secret, for which HomeAgent.
        message: String,
    },
    /// An API call failed.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The children could not be built (its category is `invalid_spec` for what the user must fix, else
    /// `build`).
    #[error("{0}")]
    Build(#[source] BuildError),
}

impl Error {
    fn api(context: impl Into<String>, source: kube::Error) -> Error {
        Error::Api {
            context: context.into(),
            source,
        }
    }

    fn invalid(reason: &'static str, message: impl Into<String>) -> Error {
        Error::InvalidSpec {
            reason,
            message: message.into(),
        }
    }

    /// The metric category (`invalid_spec`, `missing_secret`, `api`, `build`).
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidSpec { .. } => Category::InvalidSpec,
            Error::MissingSecret { .. } => Category::MissingSecret,
            Error::Api { .. } => Category::Api,
            Error::Build(e) if e.category() == Category::InvalidSpec.as_str() => Category::InvalidSpec,
            Error::Build(_) => Category::Build,
        }
    }

    /// The condition and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { reason, .. } => reason,
            Error::MissingSecret { .. } => reason::SECRET_MISSING,
            Error::Api { .. } => reason::API_ERROR,
            Error::Build(BuildError::NoHomeAgents { .. }) => reason::NO_HOME_AGENTS,
            Error::Build(BuildError::InvalidKeys { .. } | BuildError::DuplicateSecurityAssociation { .. }) => {
                reason::SECRET_INVALID
            }
            Error::Build(e) if e.category() == Category::InvalidSpec.as_str() => reason::INVALID_SPEC,
            Error::Build(_) => reason::BUILD_FAILED,
        }
    }

    /// Whether only a change to a watched object can help (status + event + wait, no requeue).
    pub fn is_permanent(&self) -> bool {
        self.category().is_permanent()
    }
}

fn flatten(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) => Error::api("adding the finalizer", e),
        finalizer::Error::RemoveFinalizer(e) => Error::api("removing the finalizer", e),
        finalizer::Error::UnnamedObject => Error::invalid(reason::INVALID_SPEC, "the MipProxy has no name"),
        finalizer::Error::InvalidFinalizer => Error::invalid(reason::INVALID_SPEC, "invalid finalizer name"),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

// === backoff ===

/// The retry interval after `failures` consecutive transient failures (1 → 1 s, 2 → 2 s, ... capped at 300 s).
pub fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// Per-object count of consecutive transient failures.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more failure of `key` and returns how long to wait before the retry.
    pub fn failed(&self, key: &str) -> Duration {
        let mut map = self.lock();
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets `key`'s failures (after a success).
    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

// === context ===

/// What the reconcilers share.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes events (`reportingController: mip-operator`).
    pub recorder: Recorder,
    /// Operator-wide settings for the builder (default proxy image, pull policy).
    pub settings: Settings,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Per-object retry state.
    pub backoff: Arc<Backoff>,
    /// Time allowed to read one proxy's `/metrics`.
    pub scrape_timeout: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("scrape_timeout", &self.scrape_timeout)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context on `client`; events name `instance` (the pod name) as `reportingInstance`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, instance: Option<String>) -> Context {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            backoff: Arc::default(),
            scrape_timeout: SCRAPE_TIMEOUT,
        }
    }

    async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish an event");
        }
    }
}

// === conditions ===

fn now() -> Time {
    Time(Timestamp::now())
}

/// Sets condition `type_` in `conditions` (added if absent). `lastTransitionTime` changes only when `status` does.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    at: &Time,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = at.clone();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: at.clone(),
        }),
    }
}

/// Condition `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

// === observing a MipProxy's workload ===

/// What the workload's status says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Pods desired (the Deployment's replicas; the DaemonSet's scheduled nodes).
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods on the current template.
    pub updated: i32,
    /// Pods existing (old ones included).
    pub current: i32,
    /// The workload controller has seen the latest generation of the workload.
    pub observed: bool,
    /// The Deployment gave up (`ProgressDeadlineExceeded`).
    pub deadline_exceeded: bool,
    /// A DaemonSet (no desired count of its own).
    pub daemon_set: bool,
}

impl Rollout {
    /// Every desired pod exists, is updated and ready, and no old one is left.
    pub fn complete(&self) -> bool {
        self.observed && self.updated >= self.desired && self.ready >= self.desired && self.current <= self.desired
    }
}

fn observed(status_generation: Option<i64>, generation: Option<i64>) -> bool {
    match (status_generation, generation) {
        (Some(o), Some(g)) => o >= g,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The rollout of a Deployment.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let st = d.status.clone().unwrap_or_default();
    Rollout {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: st.ready_replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        current: st.replicas.unwrap_or(0),
        observed: observed(st.observed_generation, d.metadata.generation),
        deadline_exceeded: st.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
        daemon_set: false,
    }
}

/// The rollout of a DaemonSet.
pub fn daemon_set_rollout(d: &DaemonSet) -> Rollout {
    let st = d.status.clone().unwrap_or_default();
    Rollout {
        desired: st.desired_number_scheduled,
        ready: st.number_ready,
        updated: st.updated_number_scheduled.unwrap_or(0),
        current: st.current_number_scheduled,
        observed: observed(st.observed_generation, d.metadata.generation),
        deadline_exceeded: false,
        daemon_set: true,
    }
}

/// What was observed of a MipProxy's replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// The workload's rollout.
    pub rollout: Rollout,
    /// The reports of the ready pods that answered.
    pub reports: Vec<ProxyReport>,
    /// Ready pods that did not answer on their admin port.
    pub unreachable: Vec<String>,
}

/// The status of a MipProxy whose children were applied, from what was observed. Conditions of other types in
/// `prev` are kept; so are the transition times of conditions whose status did not change.
pub fn proxy_status(
    prev: Option<&MipProxyStatus>,
    generation: Option<i64>,
    home_agents: Vec<String>,
    health: &Health,
    at: &Time,
) -> MipProxyStatus {
    let r = &health.rollout;
    let mut conditions = prev.map(|p| p.conditions.clone()).unwrap_or_default();
    let g = generation;
    let ready = r.desired > 0 && r.ready >= r.desired;
    let ready_message = format!("{} of {} replicas ready", r.ready, r.desired);
    let ready_reason = match (ready, r.observed && r.desired == 0 && r.daemon_set) {
        (true, _) => reason::ALL_READY,
        (false, true) => reason::NO_NODES,
        (false, false) => reason::NOT_READY,
    };
    set_condition(
        &mut conditions,
        condition::READY,
        status_str(ready),
        ready_reason,
        ready_message,
        g,
        at,
    );

    let done = r.complete();
    let progress = if done {
        format!("{} replicas on the current spec", r.desired)
    } else {
        format!("{} of {} replicas updated, {} ready", r.updated, r.desired, r.ready)
    };
    let progress_reason = if done {
        reason::ROLLOUT_COMPLETE
    } else {
        reason::ROLLING_OUT
    };
    set_condition(
        &mut conditions,
        condition::PROGRESSING,
        status_str(!done),
        progress_reason,
        progress,
        g,
        at,
    );

    // A rollout under way for longer than the deadline (measured from our own Progressing transition).
    let progressing_since = find_condition(&conditions, condition::PROGRESSING)
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0);
    let stuck = r.deadline_exceeded
        || progressing_since.is_some_and(|t| {
            at.0.duration_since(t).as_secs() >= i64::try_from(ROLLOUT_DEADLINE.as_secs()).unwrap_or(i64::MAX)
        });
    let mut problems = Vec::new();
    if !health.unreachable.is_empty() {
        problems.push((
            reason::PROXY_UNREACHABLE,
            format!("no answer from the admin /metrics of {}", health.unreachable.join(", ")),
        ));
    }
    if stuck {
        problems.push((
            reason::ROLLOUT_STUCK,
            format!("rollout not complete after {} s", ROLLOUT_DEADLINE.as_secs()),
        ));
    }
    match problems.first() {
        Some((why, _)) => {
            let message = problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
            set_condition(&mut conditions, condition::DEGRADED, "True", why, message, g, at);
        }
        None => set_condition(
            &mut conditions,
            condition::DEGRADED,
            "False",
            reason::AS_EXPECTED,
            "",
            g,
            at,
        ),
    }

    let n = health.reports.len();
    let peers = u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX);
    let (status, why, message) = if !health.unreachable.is_empty() {
        (
            "Unknown",
            reason::PROXY_UNREACHABLE,
            "some ready replicas did not report".to_string(),
        )
    } else if n == 0 {
        ("Unknown", reason::NO_READY_REPLICAS, "no ready replica".to_string())
    } else {
        let missing: Vec<String> = health
            .reports
            .iter()
            .filter(|p| p.peers_connected < peers)
            .map(|p| format!("{} has {} of {peers} peers", p.pod, p.peers_connected))
            .collect();
        if missing.is_empty() {
            (
                "True",
                reason::ALL_PEERS_CONNECTED,
                format!("{n} ready replicas, each connected to the other {peers}"),
            )
        } else {
            ("False", reason::PEERS_DISCONNECTED, missing.join(", "))
        }
    };
    set_condition(&mut conditions, condition::REPLICATING, status, why, message, g, at);

    MipProxyStatus {
        observed_generation: generation,
        conditions,
        replicas: r.desired,
        ready_replicas: r.ready,
        bindings: health.reports.iter().map(|p| p.bindings).max(),
        proxies: health.reports.clone(),
        home_agents,
    }
}

/// The status of a MipProxy that cannot be applied (`err` permanent): `Degraded` with the reason, `Ready` and
/// `Progressing` false; what was observed before (replicas, reports, `Replicating`) is kept.
pub fn failed_proxy_status(
    prev: Option<&MipProxyStatus>,
    generation: Option<i64>,
    home_agents: Option<Vec<String>>,
    err: &Error,
    at: &Time,
) -> MipProxyStatus {
    let mut status = prev.cloned().unwrap_or_default();
    let why = err.reason();
    let message = err.to_string();
    let c = &mut status.conditions;
    set_condition(c, condition::READY, "False", why, message.clone(), generation, at);
    let waiting = format!("waiting for a change: {message}");
    set_condition(c, condition::PROGRESSING, "False", why, waiting, generation, at);
    set_condition(c, condition::DEGRADED, "True", why, message, generation, at);
    status.observed_generation = generation;
    if let Some(h) = home_agents {
        status.home_agents = h;
    }
    status
}

/// The status of a HomeAgent after checking it: `Ready` with the SA count, or `Degraded` with the reason.
/// `usedBy` is kept from `prev` (the MipProxy controller writes it).
pub fn home_agent_status(
    prev: Option<&HomeAgentStatus>,
    generation: Option<i64>,
    outcome: &Result<(String, u32), Error>,
    at: &Time,
) -> HomeAgentStatus {
    let mut status = prev.cloned().unwrap_or_default();
    let c = &mut status.conditions;
    match outcome {
        Ok((secret, n)) => {
            let message = format!("{n} security associations in Secret {secret}");
            set_condition(
                c,
                condition::READY,
                "True",
                reason::SECRET_VALID,
                message,
                generation,
                at,
            );
            set_condition(c, condition::DEGRADED, "False", reason::AS_EXPECTED, "", generation, at);
            status.security_associations = Some(*n);
        }
        Err(e) => {
            let message = e.to_string();
            set_condition(
                c,
                condition::READY,
                "False",
                e.reason(),
                message.clone(),
                generation,
                at,
            );
            set_condition(c, condition::DEGRADED, "True", e.reason(), message, generation, at);
            status.security_associations = None;
        }
    }
    status.observed_generation = generation;
    status
}

// === mapping watched objects to the objects to reconcile ===

fn selector_of(proxy: &MipProxy) -> Result<Selector, Error> {
    Selector::try_from(proxy.spec.home_agent_selector.clone())
        .map_err(|e| Error::invalid(reason::INVALID_SPEC, format!("spec.homeAgentSelector: {e}")))
}

/// Whether `proxy` selects `ha` (same namespace, the selector matches its labels).
pub fn selects(proxy: &MipProxy, ha: &HomeAgent) -> bool {
    proxy.namespace() == ha.namespace() && selector_of(proxy).is_ok_and(|s| s.matches(ha.labels()))
}

/// The MipProxies to reconcile when `ha` changes: those selecting it now, and those that listed it last time
/// (its labels may have changed, or it is gone).
pub fn proxies_for_home_agent(proxies: &[Arc<MipProxy>], ha: &HomeAgent) -> Vec<ObjectRef<MipProxy>> {
    let name = ha.name_any();
    proxies
        .iter()
        .filter(|p| {
            selects(p, ha)
                || (p.namespace() == ha.namespace() && p.status.as_ref().is_some_and(|s| s.home_agents.contains(&name)))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The HomeAgents whose security associations are in `secret`.
pub fn home_agents_for_secret(home_agents: &[Arc<HomeAgent>], secret: &Secret) -> Vec<ObjectRef<HomeAgent>> {
    let name = secret.name_any();
    home_agents
        .iter()
        .filter(|h| h.namespace() == secret.namespace() && h.spec.security_associations.name == name)
        .map(|h| ObjectRef::from_obj(h.as_ref()))
        .collect()
}

/// The MipProxies to reconcile when `secret` changes: its controller owner (the merged keys Secret) and the
/// MipProxies selecting a HomeAgent whose security associations are in it.
pub fn proxies_for_secret(
    proxies: &[Arc<MipProxy>],
    home_agents: &[Arc<HomeAgent>],
    secret: &Secret,
) -> Vec<ObjectRef<MipProxy>> {
    let ns = secret.namespace();
    let mut out: Vec<ObjectRef<MipProxy>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.controller == Some(true) && o.kind == "MipProxy" && o.api_version == MipProxy::api_version(&()))
        .map(|o| {
            let r = ObjectRef::new(&o.name);
            match &ns {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect();
    let users = home_agents
        .iter()
        .filter(|h| h.namespace() == ns && h.spec.security_associations.name == secret.name_any());
    for ha in users {
        for r in proxies_for_home_agent(proxies, ha) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

// === reading a HomeAgent's Secret ===

/// Reads and parses the keys file `spec` references (in `namespace`), for HomeAgent `ha`. The Secret's contents
/// go nowhere: a parse failure names only the fields at fault.
pub async fn read_keys(client: &Client, namespace: &str, ha: &str, spec: &HomeAgentSpec) -> Result<KeysFile, Error> {
    let r = &spec.security_associations;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(Error::MissingSecret {
                message: format!("HomeAgent {ha}: Secret {} not found", r.name),
            });
        }
        Err(e) => return Err(Error::api(format!("reading Secret {}", r.name), e)),
    };
    let invalid = |what: String| Error::invalid(reason::SECRET_INVALID, format!("HomeAgent {ha}: {what}"));
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Err(invalid(format!("Secret {} has no key {}", r.name, r.key)));
    };
    let Ok(text) = std::str::from_utf8(&bytes.0) else {
        return Err(invalid(format!("Secret {} key {} is not UTF-8 text", r.name, r.key)));
    };
    mip::config::from_yaml::<KeysFile>(text).map_err(|errors| {
        let fields: BTreeSet<&str> = errors
            .iter()
            .map(|e| e.field.as_str())
            .filter(|f| !f.is_empty())
            .collect();
        let at = if fields.is_empty() {
            "not YAML of the keys-file form".to_string()
        } else {
            format!("problems at {}", fields.into_iter().collect::<Vec<_>>().join(", "))
        };
        invalid(format!("Secret {} key {} is not a keys file ({at})", r.name, r.key))
    })
}

// === the MipProxy controller ===

fn namespace_of<K: Resource>(obj: &K) -> Result<String, Error> {
    obj.meta()
        .namespace
        .clone()
        .ok_or_else(|| Error::invalid(reason::INVALID_SPEC, "the object has no namespace"))
}

/// Reconciles one MipProxy (the Controller's reconciler): finalizer, then apply or cleanup.
pub async fn reconcile_proxy(proxy: Arc<MipProxy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key_of(proxy.as_ref());
    let result = match namespace_of(proxy.as_ref()) {
        Ok(ns) => {
            let api: Api<MipProxy> = Api::namespaced(ctx.client.clone(), &ns);
            finalizer(&api, FINALIZER, proxy, |event| async {
                match event {
                    finalizer::Event::Apply(p) => apply_proxy(&p, &ctx).await,
                    finalizer::Event::Cleanup(p) => cleanup_proxy(&p, &ctx).await,
                }
            })
            .await
            .map_err(flatten)
        }
        Err(e) => Err(e),
    };
    finish(&ctx, ControllerKind::MipProxy, &key, started, result)
}

fn finish(
    ctx: &Context,
    controller: ControllerKind,
    key: &str,
    started: Instant,
    result: Result<Action, Error>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled(controller, started.elapsed());
    match &result {
        Ok(_) => ctx.backoff.reset(key),
        Err(e) => {
            ctx.metrics.failed(controller, e.category());
            if e.is_permanent() {
                tracing::info!(object = key, reason = e.reason(), error = %e, "waiting for a change");
            } else {
                tracing::warn!(object = key, error = %e, "reconcile failed; retrying");
            }
        }
    }
    result
}

/// The error policy of both controllers: wait for a change after a permanent error, back off after a transient
/// one.
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.backoff.failed(&key_of(obj.as_ref())))
    }
}

/// What the MipProxy selects: its HomeAgents with their parsed keys.
struct Selection {
    names: Vec<String>,
    agents: Vec<SelectedHomeAgent>,
}

async fn apply_proxy(proxy: &MipProxy, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace_of(proxy)?;
    let name = proxy.name_any();
    let mut selected_names = None;
    let outcome: Result<(Selection, build::Desired), Error> = async {
        check_proxy(proxy)?;
        let all = list_home_agents(ctx, &ns).await?;
        let names = selected(proxy, &all)?;
        sync_used_by(ctx, &ns, &name, &all, &names).await?;
        selected_names = Some(names.clone());
        let selection = read_selection(ctx, &ns, &all, names).await?;
        let desired = build::desired(proxy, &selection.agents, &ctx.settings).map_err(Error::Build)?;
        Ok((selection, desired))
    }
    .await;
    let (selection, desired) = match outcome {
        Ok(v) => v,
        Err(e) if e.is_permanent() => {
            report_failure(proxy, ctx, &ns, selected_names, &e).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let health = apply_children(proxy, ctx, &ns, desired).await?;
    let prev = proxy.status.as_ref();
    let at = now();
    let status = proxy_status(prev, proxy.metadata.generation, selection.names, &health, &at);
    let became_degraded = is_true(&status.conditions, condition::DEGRADED)
        && !prev.is_some_and(|p| is_true(&p.conditions, condition::DEGRADED));
    let new_generation = prev.and_then(|p| p.observed_generation) != proxy.metadata.generation;
    write_proxy_status(ctx, &ns, proxy, &status).await?;
    if new_generation {
        let kind = if health.rollout.daemon_set {
            "DaemonSet"
        } else {
            "Deployment"
        };
        let note = format!(
            "generation {}: applied ConfigMap, Secret, {kind}, Service, ServiceAccount and PodDisruptionBudget \
             for {} HomeAgents",
            proxy.metadata.generation.unwrap_or(0),
            status.home_agents.len()
        );
        ctx.publish(proxy, EventType::Normal, reason::APPLIED, note).await;
    }
    if became_degraded && let Some(c) = find_condition(&status.conditions, condition::DEGRADED) {
        let note = format!("{}: {}", c.reason, c.message);
        ctx.publish(proxy, EventType::Warning, reason::DEGRADED, note).await;
    }
    let r = &health.rollout;
    let next = if !r.complete() || !health.unreachable.is_empty() {
        Duration::from_secs(30)
    } else if r.ready > 0 {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    };
    Ok(Action::requeue(next))
}

fn check_proxy(proxy: &MipProxy) -> Result<(), Error> {
    let mut problems = Vec::new();
    let name = proxy.name_any();
    if !crd::is_proxy_name(&name) {
        problems.push(crd::FieldError::new(
            "metadata.name",
            format!(
                "`{name}` is not a DNS label of at most {} characters",
                crd::MAX_PROXY_NAME
            ),
        ));
    }
    problems.extend(proxy.spec.check());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(reason::INVALID_SPEC, crd::join_errors(&problems)))
    }
}

async fn list_home_agents(ctx: &Context, ns: &str) -> Result<Vec<HomeAgent>, Error> {
    let api: Api<HomeAgent> = Api::namespaced(ctx.client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| Error::api("listing HomeAgents", e))
}

/// The names (sorted) of the HomeAgents in `all` that `proxy` selects; none is an invalid spec.
fn selected(proxy: &MipProxy, all: &[HomeAgent]) -> Result<Vec<String>, Error> {
    let selector = selector_of(proxy)?;
    let mut names: Vec<String> = all
        .iter()
        .filter(|h| h.meta().deletion_timestamp.is_none() && selector.matches(h.labels()))
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::invalid(
            reason::NO_HOME_AGENTS,
            format!("spec.homeAgentSelector ({selector}) matches no HomeAgent in this namespace"),
        ));
    }
    Ok(names)
}

async fn read_selection(ctx: &Context, ns: &str, all: &[HomeAgent], names: Vec<String>) -> Result<Selection, Error> {
    let mut agents = Vec::with_capacity(names.len());
    for ha in all.iter().filter(|h| names.contains(&h.name_any())) {
        let ha_name = ha.name_any();
        let problems = ha.spec.check();
        if !problems.is_empty() {
            let message = format!("HomeAgent {ha_name}: {}", crd::join_errors(&problems));
            return Err(Error::invalid(reason::INVALID_SPEC, message));
        }
        let keys = read_keys(&ctx.client, ns, &ha_name, &ha.spec).await?;
        agents.push(SelectedHomeAgent {
            name: ha_name,
            spec: ha.spec.clone(),
            keys,
        });
    }
    Ok(Selection { names, agents })
}

/// Makes `status.usedBy` of the namespace's HomeAgents list `proxy` exactly where it selects them.
async fn sync_used_by(
    ctx: &Context,
    ns: &str,
    proxy: &str,
    all: &[HomeAgent],
    selected: &[String],
) -> Result<(), Error> {
    for ha in all {
        let name = ha.name_any();
        let used_by = ha.status.as_ref().map(|s| s.used_by.clone()).unwrap_or_default();
        let want = selected.contains(&name);
        if want == used_by.iter().any(|u| u == proxy) {
            continue;
        }
        let mut next: Vec<String> = used_by.into_iter().filter(|u| u != proxy).collect();
        if want {
            next.push(proxy.to_string());
        }
        next.sort();
        patch_used_by(ctx, ns, ha, &next).await?;
    }
    Ok(())
}

async fn patch_used_by(ctx: &Context, ns: &str, ha: &HomeAgent, used_by: &[String]) -> Result<(), Error> {
    let api: Api<HomeAgent> = Api::namespaced(ctx.client.clone(), ns);
    let name = ha.name_any();
    // The resourceVersion read makes this a compare-and-swap: two MipProxies updating one HomeAgent at once
    // cannot lose each other's entry (the loser gets 409 and retries).
    let patch = json!({
        "metadata": { "resourceVersion": ha.resource_version() },
        "status": { "usedBy": used_by },
    });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| Error::api(format!("updating HomeAgent {name} status.usedBy"), e))
}

async fn report_failure(
    proxy: &MipProxy,
    ctx: &Context,
    ns: &str,
    selected: Option<Vec<String>>,
    err: &Error,
) -> Result<(), Error> {
    let prev = proxy.status.as_ref();
    let status = failed_proxy_status(prev, proxy.metadata.generation, selected, err, &now());
    let changed = write_proxy_status(ctx, ns, proxy, &status).await?;
    if changed {
        ctx.publish(proxy, EventType::Warning, err.reason(), err.to_string())
            .await;
    }
    Ok(())
}

/// Writes `status` unless it equals the current one; `true` when written.
async fn write_proxy_status(ctx: &Context, ns: &str, proxy: &MipProxy, status: &MipProxyStatus) -> Result<bool, Error> {
    if proxy.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api: Api<MipProxy> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({ "status": status });
    api.patch_status(&proxy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::api("writing the MipProxy status", e))?;
    Ok(true)
}

/// Server-side applies `obj` (built with its controller owner reference) and returns the object as stored.
async fn apply<K>(client: &Client, ns: &str, obj: K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|e| Error::api(format!("applying {} {name}", K::kind(&())), e))
}

/// Deletes workload `name` of kind `K` if this MipProxy controls it (the other kind after a switch).
async fn delete_if_owned<K>(client: &Client, ns: &str, name: &str, proxy: &MipProxy) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let kind = K::kind(&());
    let Some(obj) = api
        .get_opt(name)
        .await
        .map_err(|e| Error::api(format!("reading {kind} {name}"), e))?
    else {
        return Ok(());
    };
    let uid = proxy.uid();
    let ours = obj
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
    if !ours {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!(namespace = ns, name, kind = %kind, "deleted the workload kind no longer in use");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!("deleting {kind} {name}"), e)),
    }
}

async fn apply_children(proxy: &MipProxy, ctx: &Context, ns: &str, d: build::Desired) -> Result<Health, Error> {
    let c = &ctx.client;
    apply(c, ns, d.service_account).await?;
    apply(c, ns, d.config_map).await?;
    apply(c, ns, d.keys_secret).await?;
    apply(c, ns, d.service).await?;
    apply(c, ns, d.pdb).await?;
    let (rollout, selector) = match d.workload {
        Workload::Deployment(w) => {
            let w = apply(c, ns, w).await?;
            delete_if_owned::<DaemonSet>(c, ns, &w.name_any(), proxy).await?;
            let sel = w.spec.as_ref().and_then(|s| s.selector.match_labels.clone());
            (deployment_rollout(&w), sel)
        }
        Workload::DaemonSet(w) => {
            let w = apply(c, ns, w).await?;
            delete_if_owned::<Deployment>(c, ns, &w.name_any(), proxy).await?;
            let sel = w.spec.as_ref().and_then(|s| s.selector.match_labels.clone());
            (daemon_set_rollout(&w), sel)
        }
    };
    let (reports, unreachable) = if rollout.ready > 0 {
        observe_pods(ctx, ns, selector.unwrap_or_default(), proxy.spec.admin_port).await?
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Health {
        rollout,
        reports,
        unreachable,
    })
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Reads each ready pod's own report (`mip_bindings`, `mip_replication_peers_connected` from its admin
/// `/metrics`), concurrently, each within the scrape timeout. Returns the reports and the pods that did not answer.
async fn observe_pods(
    ctx: &Context,
    ns: &str,
    labels: BTreeMap<String, String>,
    admin_port: u16,
) -> Result<(Vec<ProxyReport>, Vec<String>), Error> {
    if labels.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let selector: Selector = labels.into_iter().collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|e| Error::api("listing the proxy pods", e))?;
    let timeout = ctx.scrape_timeout;
    let ready = list
        .items
        .into_iter()
        .filter(|p| pod_ready(p) && p.meta().deletion_timestamp.is_none());
    let scrapes = ready.map(|pod| async move {
        let name = pod.name_any();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return Err(name);
        };
        match metrics::fetch(SocketAddr::new(addr, admin_port), "/metrics", timeout).await {
            Ok(text) => Ok(ProxyReport {
                pod: name,
                node_address: ip,
                bindings: metrics::sample(&text, "mip_bindings").map_or(0, |v| v as u64),
                peers_connected: metrics::sample(&text, "mip_replication_peers_connected").map_or(0, |v| v as u32),
            }),
            Err(e) => {
                tracing::debug!(pod = %name, error = %e, "proxy admin /metrics unreachable");
                Err(name)
            }
        }
    });
    let mut reports = Vec::new();
    let mut unreachable = Vec::new();
    for r in futures::future::join_all(scrapes).await {
        match r {
            Ok(report) => reports.push(report),
            Err(pod) => unreachable.push(pod),
        }
    }
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    unreachable.sort();
    Ok((reports, unreachable))
}

async fn cleanup_proxy(proxy: &MipProxy, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace_of(proxy)?;
    let name = proxy.name_any();
    let all = list_home_agents(ctx, &ns).await?;
    sync_used_by(ctx, &ns, &name, &all, &[]).await?;
    tracing::info!(namespace = %ns, name = %name, "MipProxy deleted: removed from the HomeAgents' usedBy");
    Ok(Action::await_change())
}

// === the HomeAgent controller ===

/// Reconciles one HomeAgent: its spec and Secret, into its status.
pub async fn reconcile_home_agent(ha: Arc<HomeAgent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key_of(ha.as_ref());
    let result = check_home_agent(&ha, &ctx).await;
    finish(&ctx, ControllerKind::HomeAgent, &key, started, result)
}

async fn check_home_agent(ha: &HomeAgent, ctx: &Context) -> Result<Action, Error> {
    if ha.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace_of(ha)?;
    let name = ha.name_any();
    let problems = ha.spec.check();
    let outcome = if problems.is_empty() {
        match read_keys(&ctx.client, &ns, &name, &ha.spec).await {
            Ok(keys) => {
                let n = u32::try_from(keys.security_associations.len()).unwrap_or(u32::MAX);
                Ok((ha.spec.security_associations.name.clone(), n))
            }
            Err(e) => Err(e),
        }
    } else {
        Err(Error::invalid(reason::INVALID_SPEC, crd::join_errors(&problems)))
    };
    let outcome = match outcome {
        Err(e) if !e.is_permanent() => return Err(e),
        o => o,
    };
    let prev = ha.status.as_ref();
    let status = home_agent_status(prev, ha.metadata.generation, &outcome, &now());
    if prev != Some(&status) {
        let api: Api<HomeAgent> = Api::namespaced(ctx.client.clone(), &ns);
        // usedBy is the MipProxy controller's: not part of this patch.
        let patch = json!({
            "status": {
                "observedGeneration": status.observed_generation,
                "conditions": status.conditions,
                "securityAssociations": status.security_associations,
            }
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::api("writing the HomeAgent status", e))?;
        let was = prev
            .and_then(|p| find_condition(&p.conditions, condition::DEGRADED))
            .map(|c| c.reason.clone());
        if let Err(e) = &outcome
            && was.as_deref() != Some(e.reason())
        {
            ctx.publish(ha, EventType::Warning, e.reason(), e.to_string()).await;
        }
    }
    match outcome {
        Ok(_) => Ok(Action::requeue(Duration::from_secs(3600))),
        Err(e) => Err(e),
    }
}

// === running the controllers ===

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn states<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<Arc<K>> {
    store.state()
}

/// Runs both controllers (all namespaces, or only `namespace`) until `shutdown` resolves and the reconciliations
/// in progress have finished.
pub async fn run<F>(ctx: Arc<Context>, namespace: Option<String>, shutdown: F)
where
    F: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let wc = watcher::Config::default();

    let ha_ctl = Controller::new(api::<HomeAgent>(&client, ns), wc.clone());
    let ha_store = ha_ctl.store();
    let proxy_ctl = Controller::new(api::<MipProxy>(&client, ns), wc.clone());
    let proxy_store = proxy_ctl.store();

    let ha_ctl = ha_ctl
        .watches(api::<Secret>(&client, ns), wc.clone(), {
            let has = ha_store.clone();
            move |secret: Secret| home_agents_for_secret(&states(&has), &secret)
        })
        .graceful_shutdown_on(shutdown.clone());
    let proxy_ctl = proxy_ctl
        .owns(api::<ConfigMap>(&client, ns), wc.clone())
        .owns(api::<Deployment>(&client, ns), wc.clone())
        .owns(api::<DaemonSet>(&client, ns), wc.clone())
        .owns(api::<Service>(&client, ns), wc.clone())
        .owns(api::<ServiceAccount>(&client, ns), wc.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), wc.clone())
        .watches(api::<HomeAgent>(&client, ns), wc.clone(), {
            let proxies = proxy_store.clone();
            move |ha: HomeAgent| proxies_for_home_agent(&states(&proxies), &ha)
        })
        // One Secret watch for both relations: the owned keys Secret and the HomeAgents' Secrets.
        .watches(api::<Secret>(&client, ns), wc, {
            let proxies = proxy_store;
            let has = ha_store;
            move |secret: Secret| proxies_for_secret(&states(&proxies), &states(&has), &secret)
        })
        .graceful_shutdown_on(shutdown);

    let proxies = proxy_ctl
        .run(reconcile_proxy, error_policy::<MipProxy>, Arc::clone(&ctx))
        .for_each(|r| async move { log_outcome("mipproxy", r) });
    let home_agents = ha_ctl
        .run(reconcile_home_agent, error_policy::<HomeAgent>, ctx)
        .for_each(|r| async move { log_outcome("homeagent", r) });
    tracing::info!(namespace = ns.unwrap_or("(all)"), "controllers running");
    futures::future::join(proxies, home_agents).await;
    tracing::info!("controllers stopped");
}

fn log_outcome<K: Resource, E: std::error::Error, Q: std::error::Error>(
    controller: &str,
    r: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, Q>>,
) {
    use kube::runtime::controller::Error as C;
    match r {
        Ok((obj, action)) => tracing::debug!(controller, object = %obj, ?action, "reconciled"),
        // Logged (with its category) where it happened.
        Err(C::ReconcilerFailed(_, obj)) => tracing::debug!(controller, object = %obj, "reconcile failed"),
        Err(C::ObjectNotFound(obj)) => tracing::debug!(controller, object = %obj, "object gone"),
        Err(e) => tracing::warn!(controller, error = %e, "controller error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_and_resets() {
        let delays: Vec<u64> = (1..=11).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(2));
        assert_eq!(b.failed("b"), Duration::from_secs(1), "per object");
        assert_eq!(b.failed("a"), Duration::from_secs(4));
        b.reset("a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", "False", "ReplicasNotReady", "0 of 2", Some(1), &t(0));
        set_condition(&mut c, "Ready", "False", "ReplicasNotReady", "1 of 2", Some(1), &t(10));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(0));
        assert_eq!(c[0].message, "1 of 2");
        set_condition(&mut c, "Ready", "True", "AllReplicasReady", "2 of 2", Some(2), &t(20));
        assert_eq!(c[0].last_transition_time, t(20));
        assert_eq!(c[0].observed_generation, Some(2));
    }

    fn health(desired: i32, ready: i32, reports: Vec<(&str, u64, u32)>, unreachable: &[&str]) -> Health {
        Health {
            rollout: Rollout {
                desired,
                ready,
                updated: desired,
                current: desired,
                observed: true,
                deadline_exceeded: false,
                daemon_set: false,
            },
            reports: reports
                .into_iter()
                .map(|(pod, bindings, peers)| ProxyReport {
                    pod: pod.into(),
                    node_address: "192.0.2.1".into(),
                    bindings,
                    peers_connected: peers,
                })
                .collect(),
            unreachable: unreachable.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cond<'a>(s: &'a MipProxyStatus, ty: &str) -> &'a Condition {
        find_condition(&s.conditions, ty).unwrap()
    }

    #[test]
    fn a_healthy_set_of_replicas_is_ready_and_replicating() {
        let h = health(3, 3, vec![("p-a", 10, 2), ("p-b", 12, 2), ("p-c", 12, 2)], &[]);
        let s = proxy_status(None, Some(4), vec!["ha1".into()], &h, &t(0));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.replicas, s.ready_replicas, s.bindings), (3, 3, Some(12)));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Replicating").reason, reason::ALL_PEERS_CONNECTED);
        assert_eq!(s.proxies.len(), 3);
        // The same observation again is the same status (no write).
        let again = proxy_status(Some(&s), Some(4), vec!["ha1".into()], &h, &t(60));
        assert_eq!(again, s);
    }

    #[test]
    fn a_missing_peer_and_an_unreachable_proxy_are_reported() {
        let h = health(3, 3, vec![("p-a", 1, 2), ("p-b", 1, 1)], &["p-c"]);
        let s = proxy_status(None, Some(1), vec![], &h, &t(0));
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert_eq!(cond(&s, "Degraded").reason, reason::PROXY_UNREACHABLE);
        assert!(cond(&s, "Degraded").message.contains("p-c"));
        assert_eq!(cond(&s, "Replicating").status, "Unknown");
        let h = health(2, 2, vec![("p-a", 1, 1), ("p-b", 1, 0)], &[]);
        let s = proxy_status(None, Some(1), vec![], &h, &t(0));
        assert_eq!(cond(&s, "Replicating").status, "False");
        assert_eq!(cond(&s, "Replicating").message, "p-b has 0 of 1 peers");
    }

    #[test]
    fn a_rollout_in_progress_turns_degraded_after_the_deadline() {
        let mut h = health(2, 1, vec![("p-a", 0, 0)], &[]);
        h.rollout.updated = 1;
        let s = proxy_status(None, Some(2), vec![], &h, &t(0));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Progressing").reason, reason::ROLLING_OUT);
        assert_eq!(cond(&s, "Degraded").status, "False");
        let later = proxy_status(Some(&s), Some(2), vec![], &h, &t(601));
        assert_eq!(cond(&later, "Degraded").reason, reason::ROLLOUT_STUCK);
        assert_eq!(cond(&later, "Progressing").last_transition_time, t(0));
    }

    #[test]
    fn a_fresh_workload_without_status_is_progressing() {
        let s = proxy_status(None, Some(1), vec!["ha1".into()], &Health::default(), &t(0));
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Replicating").reason, reason::NO_READY_REPLICAS);
        let mut ds = Health::default();
        ds.rollout.daemon_set = true;
        ds.rollout.observed = true;
        let s = proxy_status(None, Some(1), vec![], &ds, &t(0));
        assert_eq!(cond(&s, "Ready").reason, reason::NO_NODES);
    }

    #[test]
    fn other_writers_conditions_are_kept() {
        let mut prev = MipProxyStatus::default();
        set_condition(&mut prev.conditions, "Audited", "True", "Fine", "", None, &t(0));
        let s = proxy_status(Some(&prev), Some(1), vec![], &Health::default(), &t(5));
        assert!(find_condition(&s.conditions, "Audited").is_some());
        let err = Error::invalid(reason::NO_HOME_AGENTS, "none");
        let s = failed_proxy_status(Some(&prev), Some(1), None, &err, &t(5));
        assert!(find_condition(&s.conditions, "Audited").is_some());
        assert_eq!(cond(&s, "Degraded").reason, reason::NO_HOME_AGENTS);
    }

    #[test]
    fn error_categories() {
        let missing = Error::MissingSecret { message: "x".into() };
        assert_eq!(missing.category().as_str(), "missing_secret");
        assert_eq!(missing.reason(), reason::SECRET_MISSING);
        assert!(missing.is_permanent());
        let api = Error::api("x", kube::Error::Service("boom".into()));
        assert_eq!(api.category().as_str(), "api");
        assert!(!api.is_permanent());
        assert_eq!(
            Error::invalid(reason::SECRET_INVALID, "x").category().as_str(),
            "invalid_spec"
        );
    }

    fn ha(name: &str, labels: &[(&str, &str)], secret: &str) -> Arc<HomeAgent> {
        let mut h = HomeAgent::new(
            name,
            HomeAgentSpec {
                address: "198.51.100.1".parse().unwrap(),
                home_prefixes: vec!["10.10.0.0/16".into()],
                dynamic_assignment: false,
                security_associations: serde_json::from_value(json!({"name": secret})).unwrap(),
            },
        );
        h.metadata.namespace = Some("ns".into());
        h.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Arc::new(h)
    }

    fn proxy(name: &str, selector: serde_json::Value, listed: &[&str]) -> Arc<MipProxy> {
        let mut p: MipProxy = serde_json::from_value(json!({
            "apiVersion": "mipproxy.io/v1alpha1", "kind": "MipProxy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"publicAddress": "203.0.113.10", "privateAddress": "192.0.2.10",
                     "vpnGateways": {"public": ["203.0.113.1"], "private": "192.0.2.1"},
                     "homeAgentSelector": selector},
        }))
        .unwrap();
        if !listed.is_empty() {
            p.status = Some(MipProxyStatus {
                home_agents: listed.iter().map(|s| s.to_string()).collect(),
                ..MipProxyStatus::default()
            });
        }
        Arc::new(p)
    }

    #[test]
    fn home_agent_changes_reach_the_proxies_selecting_them_or_listing_them() {
        let proxies = vec![
            proxy("a", json!({"matchLabels": {"site": "one"}}), &[]),
            proxy(
                "b",
                json!({"matchExpressions": [{"key": "site", "operator": "In", "values": ["two"]}]}),
                &[],
            ),
            proxy("c", json!({"matchLabels": {"site": "three"}}), &["ha1"]),
        ];
        let names = |v: Vec<ObjectRef<MipProxy>>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(
            names(proxies_for_home_agent(&proxies, &ha("ha1", &[("site", "one")], "s"))),
            ["a", "c"]
        );
        assert_eq!(
            names(proxies_for_home_agent(&proxies, &ha("ha2", &[("site", "two")], "s"))),
            ["b"]
        );
        let mut elsewhere = (*ha("ha2", &[("site", "two")], "s")).clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert!(proxies_for_home_agent(&proxies, &elsewhere).is_empty());
    }

    #[test]
    fn secret_changes_reach_home_agents_and_proxies() {
        let has = vec![
            ha("ha1", &[("site", "one")], "keys-1"),
            ha("ha2", &[("site", "two")], "keys-2"),
        ];
        let proxies = vec![proxy("a", json!({"matchLabels": {"site": "one"}}), &[])];
        let secret = |name: &str, owner: Option<&str>| Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                owner_references: owner.map(|o| {
                    vec![OwnerReference {
                        api_version: "mipproxy.io/v1alpha1".into(),
                        kind: "MipProxy".into(),
                        name: o.into(),
                        uid: "u".into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let ha_names: Vec<_> = home_agents_for_secret(&has, &secret("keys-1", None))
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(ha_names, ["ha1"]);
        let p: Vec<_> = proxies_for_secret(&proxies, &has, &secret("keys-1", None))
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(p, ["a"]);
        assert!(proxies_for_secret(&proxies, &has, &secret("keys-2", None)).is_empty());
        let owned: Vec<_> = proxies_for_secret(&proxies, &has, &secret("a-keys", Some("a")))
            .into_iter()
            .map(|r| (r.name, r.namespace))
            .collect();
        assert_eq!(owned, [("a".to_string(), Some("ns".to_string()))]);
    }

    #[test]
    fn home_agent_status_keeps_used_by_and_clears_the_count_on_failure() {
        let prev = HomeAgentStatus {
            used_by: vec!["p".into()],
            ..HomeAgentStatus::default()
        };
        let ok = home_agent_status(Some(&prev), Some(3), &Ok(("keys".into(), 2)), &t(0));
        assert_eq!(ok.security_associations, Some(2));
        assert_eq!(ok.used_by, ["p"]);
        assert_eq!(
            find_condition(&ok.conditions, "Ready").unwrap().reason,
            reason::SECRET_VALID
        );
        let err = Error::MissingSecret { message: "gone".into() };
        let bad = home_agent_status(Some(&ok), Some(3), &Err(err), &t(5));
        assert_eq!(bad.security_associations, None);
        assert_eq!(
            find_condition(&bad.conditions, "Degraded").unwrap().reason,
            reason::SECRET_MISSING
        );
        assert_eq!(
            find_condition(&bad.conditions, "Ready").unwrap().last_transition_time,
            t(5)
        );
    }
}

//! The reconcilers against a scripted API server (tower-test, ../shared/k8s-testing.md §3): each test runs one
//! reconciliation with a real `kube::Client` whose transport is a mock, and the "API server" task asserts every
//! request in order (method, path, query, content type, body) and answers it. A missing request times out, an
//! extra one fails the scenario (`unexpected request`), a wrong body fails an assertion.
//!
//! This checks what the operator sends, not what a server would do with it (tests/kmock.rs runs the binary
//! against an emulator for that).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::controller::Action;
use mip_operator::build::Settings;
use mip_operator::crd::{HomeAgent, MipProxy};
use mip_operator::metrics::{Category, ControllerKind, Metrics};
use mip_operator::reconcile::{self, Context, FIELD_MANAGER, FINALIZER};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const NS: &str = "mip";
const UID: &str = "7d1f5e0a-4c39-4a0e-9d2e-51b0c3a7e001";
const MIPP: &str = "/apis/mipproxy.io/v1alpha1/namespaces/mip/mipproxies";
const HAS: &str = "/apis/mipproxy.io/v1alpha1/namespaces/mip/homeagents";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/mip/events";
/// How long the API server waits for the next request before declaring it missing.
const WAIT: Duration = Duration::from_secs(3);

// === fixtures ===

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A MipProxy as the API server hands it out: namespace, uid, generation, resourceVersion, and the finalizer
/// when `finalized`.
fn proxy(file: &str, finalized: bool) -> MipProxy {
    let mut p: MipProxy = fixture(file);
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some(UID.into());
    p.metadata.generation = Some(1);
    p.metadata.resource_version = Some("10".into());
    if finalized {
        p.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    p
}

fn home_agent(name: &str, site: &str, used_by: &[&str]) -> HomeAgent {
    let mut h: HomeAgent = fixture("homeagent-sample.yaml");
    h.metadata.name = Some(name.into());
    h.metadata.namespace = Some(NS.into());
    h.metadata.uid = Some(format!("uid-{name}"));
    h.metadata.generation = Some(1);
    h.metadata.resource_version = Some(format!("rv-{name}"));
    h.metadata.labels = Some([("mipproxy.io/site".to_string(), site.to_string())].into());
    if !used_by.is_empty() {
        h.status = Some(mip_operator::crd::HomeAgentStatus {
            used_by: used_by.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }
    h
}

const KEYS_SAMPLE: &str = "keys-sample.yaml";

fn keys_secret(name: &str, keys_yaml: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            resource_version: Some("3".into()),
            ..ObjectMeta::default()
        },
        data: Some([("keys.yaml".to_string(), ByteString(keys_yaml.as_bytes().to_vec()))].into()),
        ..Secret::default()
    }
}

fn keys_sample() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(KEYS_SAMPLE),
    )
    .unwrap()
}

fn context() -> (Arc<Context>, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let settings = Settings {
        proxy_image: "registry.example/mip-proxy:test".into(),
        image_pull_policy: None,
        default_otlp_endpoint: None,
    };
    let metrics = Arc::new(Metrics::new().unwrap());
    let ctx = Context::new(
        Client::new(svc, "default"),
        settings,
        metrics,
        Some("mip-operator-0".into()),
    );
    (Arc::new(ctx), ApiServer(handle))
}

// === the scripted API server ===

struct ApiServer(Handle<Request<Body>, Response<Body>>);

struct Call {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    async fn next(&mut self) -> Call {
        let (req, send) = tokio::time::timeout(WAIT, self.0.next_request())
            .await
            .expect("the operator sent no further request (one is missing)")
            .expect("the client is gone");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Call {
            method,
            path,
            query,
            content_type,
            body,
            send,
        }
    }

    /// The next request, which must be `method path`.
    async fn expect(&mut self, method: Method, path: &str) -> Call {
        let c = self.next().await;
        assert_eq!(
            (&c.method, c.path.as_str()),
            (&method, path),
            "expected {method} {path}, got {} {}?{} {}",
            c.method,
            c.path,
            c.query,
            c.body
        );
        c
    }

    /// No further request: the client (the reconciler's context) must be dropped by now.
    async fn done(mut self) {
        match tokio::time::timeout(WAIT, self.0.next_request()).await {
            Ok(None) => {}
            Ok(Some((req, _))) => panic!("unexpected request {} {}", req.method(), req.uri()),
            Err(_) => panic!("the client was not dropped"),
        }
    }
}

impl Call {
    fn reply(self, code: u16, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send
            .send_response(Response::builder().status(code).body(Body::from(bytes)).unwrap());
    }

    fn ok(self, body: &Value) {
        self.reply(200, body);
    }

    fn not_found(self) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                            "reason": "NotFound", "message": "not found"});
        self.reply(404, &status);
    }

    /// Answers a merge patch with `base` patched (what the server would store).
    fn patched(self, base: &Value) {
        let mut out = base.clone();
        merge(&mut out, &self.body);
        self.reply(200, &out);
    }

    /// Answers with what was sent (what an apply or create returns, near enough).
    fn echo(self) {
        let body = self.body.clone();
        self.reply(200, &body);
    }

    /// Asserts a server-side apply by the operator (forced) of `kind` owned by the MipProxy, and answers it.
    fn applied(self, kind: &str) -> Value {
        assert_eq!(self.method, Method::PATCH);
        assert_eq!(self.content_type, "application/apply-patch+yaml", "{}", self.path);
        assert!(
            self.query.contains(&format!("fieldManager={FIELD_MANAGER}")),
            "{}",
            self.query
        );
        assert!(self.query.contains("force=true"), "{}", self.query);
        assert_eq!(self.body["kind"], kind);
        let owners = self.body["metadata"]["ownerReferences"]
            .as_array()
            .expect("owner references");
        assert_eq!(owners.len(), 1, "{kind}: {owners:?}");
        assert_eq!(owners[0]["kind"], "MipProxy");
        assert_eq!(owners[0]["apiVersion"], "mipproxy.io/v1alpha1");
        assert_eq!(owners[0]["uid"], UID);
        assert_eq!(owners[0]["controller"], true);
        let body = self.body.clone();
        self.echo();
        body
    }
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "mipproxy.io/v1alpha1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn condition<'a>(status: &'a Value, ty: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} condition in {status}"))
}

/// Runs `reconcile` in the foreground and `script` as the API server; both must finish within the timeout.
/// Returns the reconciler's result and the server (for [`ApiServer::done`] once the context is dropped).
async fn scenario<F, S>(server: ApiServer, reconcile: F, script: impl FnOnce(ApiServer) -> S) -> (F::Output, ApiServer)
where
    F: std::future::Future,
    S: std::future::Future<Output = ApiServer> + Send + 'static,
{
    let api = tokio::spawn(script(server));
    let out = tokio::time::timeout(Duration::from_secs(10), reconcile)
        .await
        .expect("reconcile hung");
    let server = tokio::time::timeout(Duration::from_secs(10), api)
        .await
        .expect("API server script hung")
        .expect("API server script failed");
    (out, server)
}

/// A permanent failure of `category`: the error policy waits for a change of `obj` instead of retrying.
fn waits_for_change<K>(obj: Arc<K>, r: Result<Action, reconcile::Error>, ctx: &Arc<Context>, category: Category)
where
    K: kube::Resource<DynamicType = ()>,
{
    let err = r.unwrap_err();
    assert_eq!(err.category(), category);
    assert_eq!(
        reconcile::error_policy(obj, &err, Arc::clone(ctx)),
        Action::await_change()
    );
}

impl Call {
    /// The request is a Warning event with `reason`; returns it for more checks.
    fn warning(&self, reason: &str) -> &Value {
        assert_eq!(
            (self.body["type"].as_str(), self.body["reason"].as_str()),
            (Some("Warning"), Some(reason))
        );
        &self.body
    }
}

/// Drops the context (the client) and checks that the reconciler sent nothing more.
async fn finished(ctx: Arc<Context>, server: ApiServer) {
    drop(ctx);
    server.done().await;
}

// === MipProxy ===

#[tokio::test]
async fn a_new_mipproxy_gets_the_finalizer_first() {
    let (ctx, server) = context();
    let p = proxy("mipproxy-sample.yaml", false);
    let mut with_finalizer = to_value(&p);
    with_finalizer["metadata"]["finalizers"] = json!([FINALIZER]);
    let api = tokio::spawn(async move {
        let mut s = server;
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz")).await;
        assert_eq!(c.content_type, "application/json-patch+json");
        assert_eq!(
            c.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        c.ok(&with_finalizer);
        s
    });
    let action = reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)).await.unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "the patch triggers the next reconciliation"
    );
    let server = api.await.unwrap();
    assert_eq!(ctx.metrics.reconciles(ControllerKind::MipProxy), 1);
    finished(ctx, server).await;
}

/// The calls of one successful reconciliation of the sample (a Deployment of 3): HomeAgents listed, usedBy
/// updated (added where selected, removed where not), the Secret read, every child applied, the other workload
/// kind looked up, the status written, the Applied event published.
#[tokio::test]
async fn the_next_reconcile_applies_every_child_and_writes_the_status() {
    let (ctx, server) = context();
    let p = proxy("mipproxy-sample.yaml", true);
    let ha1 = home_agent("ha1", "intranet", &[]);
    let stale = home_agent("ha-old", "elsewhere", &["dmz", "other"]);
    let secret = keys_secret("home-agent-keys", &keys_sample());
    let base = to_value(&p);
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&ha1), to_value(&stale)]));

        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        assert_eq!(c.content_type, "application/merge-patch+json");
        assert_eq!(
            c.body,
            json!({"metadata": {"resourceVersion": "rv-ha1"}, "status": {"usedBy": ["dmz"]}})
        );
        c.ok(&to_value(&ha1));
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha-old/status")).await;
        assert_eq!(
            c.body,
            json!({"metadata": {"resourceVersion": "rv-ha-old"}, "status": {"usedBy": ["other"]}})
        );
        c.ok(&to_value(&stale));

        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));

        s.expect(Method::PATCH, "/api/v1/namespaces/mip/serviceaccounts/dmz")
            .await
            .applied("ServiceAccount");
        let cm = s
            .expect(Method::PATCH, "/api/v1/namespaces/mip/configmaps/dmz-config")
            .await
            .applied("ConfigMap");
        assert!(
            cm["data"]["proxy.yaml"].as_str().unwrap().contains("10.10.1.1"),
            "the HomeAgent is in the config"
        );
        let keys = s
            .expect(Method::PATCH, "/api/v1/namespaces/mip/secrets/dmz-keys")
            .await
            .applied("Secret");
        assert!(keys["data"]["keys.yaml"].is_string(), "the merged keys Secret: {keys}");
        s.expect(Method::PATCH, "/api/v1/namespaces/mip/services/dmz-peers")
            .await
            .applied("Service");
        s.expect(Method::PATCH, "/apis/policy/v1/namespaces/mip/poddisruptionbudgets/dmz")
            .await
            .applied("PodDisruptionBudget");
        let d = s
            .expect(Method::PATCH, "/apis/apps/v1/namespaces/mip/deployments/dmz")
            .await
            .applied("Deployment");
        assert_eq!(d["spec"]["replicas"], 3);
        // The other workload kind: absent, nothing to delete.
        s.expect(Method::GET, "/apis/apps/v1/namespaces/mip/daemonsets/dmz")
            .await
            .not_found();

        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        assert_eq!(c.content_type, "application/merge-patch+json");
        let st = &c.body["status"];
        assert_eq!(st["observedGeneration"], 1);
        assert_eq!(
            (st["replicas"].clone(), st["readyReplicas"].clone()),
            (json!(3), json!(0))
        );
        assert_eq!(st["homeAgents"], json!(["ha1"]));
        assert_eq!(condition(st, "Progressing")["status"], "True");
        assert_eq!(condition(st, "Progressing")["reason"], "RollingOut");
        assert_eq!(condition(st, "Ready")["status"], "False");
        assert_eq!(condition(st, "Degraded")["status"], "False");
        assert_eq!(condition(st, "Replicating")["status"], "Unknown");
        assert!(condition(st, "Ready")["lastTransitionTime"].is_string());
        c.patched(&base);

        let c = s.expect(Method::POST, EVENTS).await;
        assert_eq!(c.body["reason"], "Applied");
        assert_eq!(c.body["type"], "Normal");
        assert_eq!(c.body["reportingController"], "mip-operator");
        assert_eq!(c.body["regarding"]["name"], "dmz");
        assert_eq!(c.body["regarding"]["uid"], UID);
        c.echo();
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert_eq!(
        r.unwrap(),
        Action::requeue(Duration::from_secs(30)),
        "a rollout under way is looked at again soon"
    );
    assert_eq!(ctx.metrics.errors(ControllerKind::MipProxy, Category::Api), 0);
    assert_eq!(ctx.metrics.reconciles(ControllerKind::MipProxy), 1);
    finished(ctx, server).await;
}

/// Without spec.replicas the workload is a DaemonSet; a Deployment this MipProxy owns (from before the switch)
/// is deleted; one it does not own is left alone.
#[tokio::test]
async fn switching_to_a_daemonset_deletes_the_owned_deployment() {
    let (ctx, server) = context();
    let mut p = proxy("mipproxy-daemonset.yaml", true);
    p.metadata.name = Some("dmz".into());
    p.status = Some(mip_operator::crd::MipProxyStatus {
        observed_generation: Some(1),
        home_agents: vec!["ha1".into()],
        ..Default::default()
    });
    let ha1 = home_agent("ha1", "intranet", &["dmz"]);
    let secret = keys_secret("home-agent-keys", &keys_sample());
    let base = to_value(&p);
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&ha1)]));
        // usedBy already lists it: no patch.
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));
        for (path, kind) in [
            ("/api/v1/namespaces/mip/serviceaccounts/dmz", "ServiceAccount"),
            ("/api/v1/namespaces/mip/configmaps/dmz-config", "ConfigMap"),
            ("/api/v1/namespaces/mip/secrets/dmz-keys", "Secret"),
            ("/api/v1/namespaces/mip/services/dmz-peers", "Service"),
            (
                "/apis/policy/v1/namespaces/mip/poddisruptionbudgets/dmz",
                "PodDisruptionBudget",
            ),
            ("/apis/apps/v1/namespaces/mip/daemonsets/dmz", "DaemonSet"),
        ] {
            s.expect(Method::PATCH, path).await.applied(kind);
        }
        let old = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "dmz", "namespace": NS, "ownerReferences": [
                {"apiVersion": "mipproxy.io/v1alpha1", "kind": "MipProxy", "name": "dmz", "uid": UID, "controller": true}
            ]},
        });
        s.expect(Method::GET, "/apis/apps/v1/namespaces/mip/deployments/dmz")
            .await
            .ok(&old);
        let c = s
            .expect(Method::DELETE, "/apis/apps/v1/namespaces/mip/deployments/dmz")
            .await;
        assert_eq!(c.body["propagationPolicy"], "Background");
        c.ok(&old);
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        assert_eq!(condition(&c.body["status"], "Progressing")["status"], "True");
        c.patched(&base);
        // observedGeneration was 1 already: no Applied event.
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    finished(ctx, server).await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let (ctx, server) = context();
    let mut p = proxy("mipproxy-sample.yaml", true);
    p.spec.vpn_gateways.private = None; // twoBox needs it
    let base = to_value(&p);
    let script = |mut s: ApiServer| async move {
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        let st = &c.body["status"];
        assert_eq!(st["observedGeneration"], 1);
        let degraded = condition(st, "Degraded");
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("InvalidSpec"))
        );
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .contains("spec.vpnGateways.private"),
            "{degraded}"
        );
        assert_eq!(condition(st, "Ready")["status"], "False");
        assert_eq!(condition(st, "Progressing")["status"], "False");
        c.patched(&base);
        let c = s.expect(Method::POST, EVENTS).await;
        c.warning("InvalidSpec");
        assert!(c.body["note"].as_str().unwrap().contains("spec.vpnGateways.private"));
        c.echo();
        s
    };
    let p = Arc::new(p);
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::clone(&p), Arc::clone(&ctx)),
        script,
    )
    .await;
    waits_for_change(p, r, &ctx, Category::InvalidSpec);
    assert_eq!(ctx.metrics.errors(ControllerKind::MipProxy, Category::InvalidSpec), 1);
    finished(ctx, server).await;
}

#[tokio::test]
async fn a_selector_matching_no_home_agent_is_reported() {
    let (ctx, server) = context();
    let p = proxy("mipproxy-sample.yaml", true);
    let other = home_agent("ha9", "elsewhere", &[]);
    let base = to_value(&p);
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&other)]));
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        assert_eq!(condition(&c.body["status"], "Degraded")["reason"], "NoHomeAgents");
        c.patched(&base);
        let c = s.expect(Method::POST, EVENTS).await;
        assert_eq!(c.body["reason"], "NoHomeAgents");
        c.echo();
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert_eq!(r.unwrap_err().category(), Category::InvalidSpec);
    finished(ctx, server).await;
}

#[tokio::test]
async fn a_missing_home_agent_secret_stops_the_mipproxy_too() {
    let (ctx, server) = context();
    let p = proxy("mipproxy-sample.yaml", true);
    let ha1 = home_agent("ha1", "intranet", &["dmz"]);
    let base = to_value(&p);
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&ha1)]));
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .not_found();
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        assert_eq!(condition(&c.body["status"], "Degraded")["reason"], "SecretMissing");
        c.patched(&base);
        s.expect(Method::POST, EVENTS).await.echo();
        s
    };
    let p = Arc::new(p);
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::clone(&p), Arc::clone(&ctx)),
        script,
    )
    .await;
    waits_for_change(p, r, &ctx, Category::MissingSecret);
    finished(ctx, server).await;
}

/// Deletion: the cleanup removes the name from every HomeAgent's usedBy, then the finalizer goes (test-and-remove
/// at its index, so another controller's finalizer is never removed by mistake).
#[tokio::test]
async fn deletion_cleans_used_by_and_removes_the_finalizer() {
    let (ctx, server) = context();
    let mut p = proxy("mipproxy-sample.yaml", false);
    p.metadata.finalizers = Some(vec!["example.com/other".into(), FINALIZER.into()]);
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let ha1 = home_agent("ha1", "intranet", &["dmz", "edge"]);
    let ha2 = home_agent("ha2", "intranet", &["edge"]);
    let base = to_value(&p);
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&ha1), to_value(&ha2)]));
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        assert_eq!(c.body["status"]["usedBy"], json!(["edge"]));
        c.ok(&to_value(&ha1));
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz")).await;
        assert_eq!(c.content_type, "application/json-patch+json");
        assert_eq!(
            c.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        c.ok(&base);
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert_eq!(r.unwrap(), Action::await_change());
    finished(ctx, server).await;
}

#[tokio::test]
async fn api_errors_back_off_per_object_and_a_success_resets() {
    let (ctx, server) = context();
    let p = Arc::new(proxy("mipproxy-sample.yaml", true));
    let server_error = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                              "reason": "InternalError", "message": "etcd is unhappy"});
    let mut s = server;
    for expected in [1, 2, 4] {
        let e = server_error.clone();
        let api = tokio::spawn(async move {
            s.expect(Method::GET, HAS).await.reply(500, &e);
            s
        });
        let err = reconcile::reconcile_proxy(Arc::clone(&p), Arc::clone(&ctx))
            .await
            .unwrap_err();
        s = api.await.unwrap();
        assert_eq!(err.category(), Category::Api);
        let action = reconcile::error_policy(Arc::clone(&p), &err, Arc::clone(&ctx));
        assert_eq!(action, Action::requeue(Duration::from_secs(expected)));
    }
    assert_eq!(ctx.metrics.errors(ControllerKind::MipProxy, Category::Api), 3);
    // Another object has its own count.
    let mut q = proxy("mipproxy-sample.yaml", true);
    q.metadata.name = Some("edge".into());
    let err = reconcile::Error::MissingSecret { message: String::new() };
    assert_eq!(
        reconcile::error_policy(Arc::new(q), &err, Arc::clone(&ctx)),
        Action::await_change()
    );
    let transient = {
        let api = tokio::spawn(async move {
            s.expect(Method::GET, HAS).await.reply(500, &server_error);
            s
        });
        let mut q = proxy("mipproxy-sample.yaml", true);
        q.metadata.name = Some("edge".into());
        let q = Arc::new(q);
        let err = reconcile::reconcile_proxy(Arc::clone(&q), Arc::clone(&ctx))
            .await
            .unwrap_err();
        s = api.await.unwrap();
        reconcile::error_policy(q, &err, Arc::clone(&ctx))
    };
    assert_eq!(transient, Action::requeue(Duration::from_secs(1)));
    // A success (here: the finalizer added to a fresh object) resets dmz's count.
    let fresh = Arc::new(proxy("mipproxy-sample.yaml", false));
    let reply = {
        let mut v = to_value(fresh.as_ref());
        v["metadata"]["finalizers"] = json!([FINALIZER]);
        v
    };
    let api = tokio::spawn(async move {
        s.expect(Method::PATCH, &format!("{MIPP}/dmz")).await.ok(&reply);
        s
    });
    reconcile::reconcile_proxy(Arc::clone(&fresh), Arc::clone(&ctx))
        .await
        .unwrap();
    s = api.await.unwrap();
    let api = tokio::spawn(async move {
        s.expect(Method::GET, HAS)
            .await
            .reply(500, &json!({"kind": "Status", "code": 500}));
        s
    });
    let err = reconcile::reconcile_proxy(Arc::clone(&p), Arc::clone(&ctx))
        .await
        .unwrap_err();
    let s = api.await.unwrap();
    assert_eq!(
        reconcile::error_policy(p, &err, Arc::clone(&ctx)),
        Action::requeue(Duration::from_secs(1))
    );
    finished(ctx, s).await;
}

// === HomeAgent ===

#[tokio::test]
async fn a_home_agent_with_a_missing_secret_is_degraded_with_an_event() {
    let (ctx, server) = context();
    let ha = home_agent("ha1", "intranet", &["dmz"]);
    let base = to_value(&ha);
    let script = |mut s: ApiServer| async move {
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .not_found();
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        assert_eq!(c.content_type, "application/merge-patch+json");
        let st = &c.body["status"];
        assert_eq!(st["securityAssociations"], Value::Null);
        assert!(st.get("usedBy").is_none(), "usedBy is the MipProxy controller's: {st}");
        assert_eq!(st["observedGeneration"], 1);
        let degraded = condition(st, "Degraded");
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("SecretMissing"))
        );
        assert!(degraded["message"].as_str().unwrap().contains("home-agent-keys"));
        assert_eq!(condition(st, "Ready")["status"], "False");
        c.patched(&base);
        let c = s.expect(Method::POST, EVENTS).await;
        c.warning("SecretMissing");
        assert_eq!(c.body["regarding"]["kind"], "HomeAgent");
        c.echo();
        s
    };
    let ha = Arc::new(ha);
    let (r, server) = scenario(
        server,
        reconcile::reconcile_home_agent(Arc::clone(&ha), Arc::clone(&ctx)),
        script,
    )
    .await;
    waits_for_change(ha, r, &ctx, Category::MissingSecret);
    assert_eq!(
        ctx.metrics.errors(ControllerKind::HomeAgent, Category::MissingSecret),
        1
    );
    finished(ctx, server).await;
}

#[tokio::test]
async fn a_home_agent_with_a_valid_secret_is_ready_with_its_sa_count() {
    let (ctx, server) = context();
    let ha = home_agent("ha1", "intranet", &[]);
    let base = to_value(&ha);
    let secret = keys_secret("home-agent-keys", &keys_sample());
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        let st = &c.body["status"];
        assert_eq!(st["securityAssociations"], 3);
        assert_eq!(condition(st, "Ready")["reason"], "SecretValid");
        assert_eq!(condition(st, "Degraded")["status"], "False");
        c.patched(&base);
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_home_agent(Arc::new(ha), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert_eq!(r.unwrap(), Action::requeue(Duration::from_secs(3600)));
    finished(ctx, server).await;
}

#[tokio::test]
async fn an_unparsable_keys_file_is_reported_without_its_contents() {
    let (ctx, server) = context();
    let ha = home_agent("ha1", "intranet", &[]);
    let base = to_value(&ha);
    let secret = keys_secret(
        "home-agent-keys",
        "security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: s3cr3tn0th3x\n",
    );
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        let degraded = condition(&c.body["status"], "Degraded");
        assert_eq!(degraded["reason"], "SecretInvalid");
        let message = degraded["message"].as_str().unwrap();
        assert!(message.contains("security_associations[0]"), "{message}");
        assert!(!message.contains("s3cr3t"), "key material in the status: {message}");
        c.patched(&base);
        let c = s.expect(Method::POST, EVENTS).await;
        assert!(!c.body.to_string().contains("s3cr3t"), "key material in the event");
        c.echo();
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_home_agent(Arc::new(ha), Arc::clone(&ctx)),
        script,
    )
    .await;
    let err = r.unwrap_err();
    assert_eq!(err.category(), Category::InvalidSpec);
    assert!(!err.to_string().contains("s3cr3t"));
    finished(ctx, server).await;
}

#[tokio::test]
async fn an_unchanged_home_agent_status_is_not_written_again() {
    let (ctx, server) = context();
    let mut ha = home_agent("ha1", "intranet", &[]);
    let base = to_value(&ha);
    let secret = keys_secret("home-agent-keys", &keys_sample());
    // First pass: learn the status the reconciler writes.
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let w = Arc::clone(&written);
    let sec = secret.clone();
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&sec));
        let c = s.expect(Method::PATCH, &format!("{HAS}/ha1/status")).await;
        *w.lock().unwrap() = c.body["status"].clone();
        c.patched(&base);
        s
    };
    let ha_first = Arc::new(ha.clone());
    let server = {
        let api = tokio::spawn(script(server));
        reconcile::reconcile_home_agent(ha_first, Arc::clone(&ctx))
            .await
            .unwrap();
        api.await.unwrap()
    };
    ha.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    // Second pass with that status: the Secret is read, nothing is written.
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_home_agent(Arc::new(ha), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert!(r.is_ok());
    finished(ctx, server).await;
}

// === observing the replicas ===

/// A proxy's admin port: answers every request with `body` as its `/metrics`.
fn fake_proxy_admin(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Ready pods are asked for their own report on their admin port; one that does not answer makes the MipProxy
/// Degraded (ProxyUnreachable), with a Warning event.
#[tokio::test]
async fn ready_pods_report_and_an_unreachable_one_is_degraded() {
    let (ctx, server) = context();
    let port = fake_proxy_admin("# TYPE mip_bindings gauge\nmip_bindings 5\nmip_replication_peers_connected 1\n");
    let mut p = proxy("mipproxy-sample.yaml", true);
    p.spec.replicas = Some(2);
    p.spec.admin_port = port;
    p.status = Some(mip_operator::crd::MipProxyStatus {
        observed_generation: Some(1),
        ..Default::default()
    });
    let base = to_value(&p);
    let ha1 = home_agent("ha1", "intranet", &["dmz"]);
    let secret = keys_secret("home-agent-keys", &keys_sample());
    let pod = |name: &str, ip: &str| {
        json!({"metadata": {"name": name, "namespace": NS},
               "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
    };
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("dmz-a", "127.0.0.1"),
        // 127.0.0.2 is loopback too, but nothing listens there: refused at once.
        pod("dmz-b", "127.0.0.2"),
        {"metadata": {"name": "dmz-c", "namespace": NS},
         "status": {"podIP": "127.0.0.3", "conditions": [{"type": "Ready", "status": "False"}]}},
    ]});
    let script = move |mut s: ApiServer| async move {
        s.expect(Method::GET, HAS)
            .await
            .ok(&list("HomeAgentList", vec![to_value(&ha1)]));
        s.expect(Method::GET, "/api/v1/namespaces/mip/secrets/home-agent-keys")
            .await
            .ok(&to_value(&secret));
        for path in [
            "/api/v1/namespaces/mip/serviceaccounts/dmz",
            "/api/v1/namespaces/mip/configmaps/dmz-config",
            "/api/v1/namespaces/mip/secrets/dmz-keys",
            "/api/v1/namespaces/mip/services/dmz-peers",
            "/apis/policy/v1/namespaces/mip/poddisruptionbudgets/dmz",
        ] {
            s.expect(Method::PATCH, path).await.echo();
        }
        let c = s
            .expect(Method::PATCH, "/apis/apps/v1/namespaces/mip/deployments/dmz")
            .await;
        let mut d = c.body.clone();
        d["metadata"]["generation"] = json!(1);
        d["status"] = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
        c.ok(&d);
        s.expect(Method::GET, "/apis/apps/v1/namespaces/mip/daemonsets/dmz")
            .await
            .not_found();
        let c = s.expect(Method::GET, "/api/v1/namespaces/mip/pods").await;
        assert!(
            c.query.contains("labelSelector=app.kubernetes.io%2Finstance%3Ddmz"),
            "{}",
            c.query
        );
        c.ok(&pods);
        let c = s.expect(Method::PATCH, &format!("{MIPP}/dmz/status")).await;
        let st = &c.body["status"];
        assert_eq!(
            (st["replicas"].clone(), st["readyReplicas"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(st["bindings"], 5);
        assert_eq!(
            st["proxies"],
            json!([{"pod": "dmz-a", "nodeAddress": "127.0.0.1", "bindings": 5, "peersConnected": 1}])
        );
        assert_eq!(condition(st, "Ready")["status"], "True");
        assert_eq!(condition(st, "Progressing")["status"], "False");
        let degraded = condition(st, "Degraded");
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("ProxyUnreachable"))
        );
        assert!(degraded["message"].as_str().unwrap().contains("dmz-b"));
        assert_eq!(condition(st, "Replicating")["status"], "Unknown");
        c.patched(&base);
        let c = s.expect(Method::POST, EVENTS).await;
        c.warning("Degraded");
        assert!(c.body["note"].as_str().unwrap().starts_with("ProxyUnreachable"));
        c.echo();
        s
    };
    let (r, server) = scenario(
        server,
        reconcile::reconcile_proxy(Arc::new(p), Arc::clone(&ctx)),
        script,
    )
    .await;
    assert_eq!(r.unwrap(), Action::requeue(Duration::from_secs(30)));
    finished(ctx, server).await;
}

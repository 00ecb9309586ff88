//! The operator's own metrics and its HTTP endpoints (docs/operator.md "Operator metrics").
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text exposition (0.0.4) of [`Metrics`] |
//! | `GET /healthz` | 200 `ok` while the process lives |
//! | `GET /readyz` | 200 once this replica leads and runs the controllers, or is a healthy standby (it reads the leader Lease); 503 otherwise |
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `mip_operator_reconciles_total` | `controller` | reconciliations run (`mipproxy`, `homeagent`) |
//! | `mip_operator_reconcile_errors_total` | `controller`, `category` | failed reconciliations by [`Category`] |
//! | `mip_operator_reconcile_duration_seconds` | `controller` | histogram of reconciliation time |
//! | `mip_operator_leader` | | 1 while this replica holds the leader Lease |
//!
//! Every series is registered at start-up (all at 0), so dashboards and alerts see them before the first event.
//! The registry is mip-io's ([`mip_io::metrics::Registry`]), the one the daemons use.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mip_io::metrics::{CONTENT_TYPE, Counter, Gauge, Histogram, MetricsError, Registry};

/// Buckets (seconds) of the reconcile duration histogram: API round trips of a few ms up to a slow scrape.
pub const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Which controller a series is about (the `controller` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControllerKind {
    /// The `MipProxy` controller.
    MipProxy,
    /// The `HomeAgent` controller.
    HomeAgent,
}

impl ControllerKind {
    /// Both, in label order.
    pub const ALL: [ControllerKind; 2] = [ControllerKind::MipProxy, ControllerKind::HomeAgent];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::MipProxy => "mipproxy",
            ControllerKind::HomeAgent => "homeagent",
        }
    }

    fn index(self) -> usize {
        match self {
            ControllerKind::MipProxy => 0,
            ControllerKind::HomeAgent => 1,
        }
    }
}

/// Why a reconciliation failed (the `category` label of `mip_operator_reconcile_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The resource asks for something impossible (what the CRD schema cannot catch): waits for a change.
    InvalidSpec,
    /// A referenced Secret does not exist: waits for it.
    MissingSecret,
    /// An API call failed (transient): retried with backoff.
    Api,
    /// The children could not be built from a spec that passed the checks.
    Build,
}

impl Category {
    /// Every category, in label order.
    pub const ALL: [Category; 4] = [
        Category::InvalidSpec,
        Category::MissingSecret,
        Category::Api,
        Category::Build,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidSpec => "invalid_spec",
            Category::MissingSecret => "missing_secret",
            Category::Api => "api",
            Category::Build => "build",
        }
    }

    /// Whether retrying without a change to a watched object cannot help (the controller then waits for one).
    pub fn is_permanent(self) -> bool {
        !matches!(self, Category::Api)
    }

    fn index(self) -> usize {
        match self {
            Category::InvalidSpec => 0,
            Category::MissingSecret => 1,
            Category::Api => 2,
            Category::Build => 3,
        }
    }
}

/// One controller's series.
#[derive(Debug)]
struct PerController {
    reconciles: Counter,
    errors: [Counter; 4],
    duration: Histogram,
}

/// The operator's metrics and readiness.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    controllers: [PerController; 2],
    leader: Gauge,
    ready: AtomicBool,
}

impl Metrics {
    /// Registers every series (at 0).
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let per = |c: ControllerKind| -> Result<PerController, MetricsError> {
            let label = [("controller", c.as_str())];
            let error = |cat: Category| {
                registry.counter(
                    "mip_operator_reconcile_errors_total",
                    "Failed reconciliations, by controller and error category.",
                    &[("controller", c.as_str()), ("category", cat.as_str())],
                )
            };
            Ok(PerController {
                reconciles: registry.counter(
                    "mip_operator_reconciles_total",
                    "Reconciliations run, by controller.",
                    &label,
                )?,
                errors: [
                    error(Category::InvalidSpec)?,
                    error(Category::MissingSecret)?,
                    error(Category::Api)?,
                    error(Category::Build)?,
                ],
                duration: registry.histogram(
                    "mip_operator_reconcile_duration_seconds",
                    "Time one reconciliation took, by controller.",
                    &label,
                    DURATION_BUCKETS,
                )?,
            })
        };
        let controllers = [per(ControllerKind::MipProxy)?, per(ControllerKind::HomeAgent)?];
        let leader = registry.gauge(
            "mip_operator_leader",
            "1 while this replica holds the leader Lease and runs the controllers.",
            &[],
        )?;
        Ok(Metrics {
            registry,
            controllers,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    fn of(&self, c: ControllerKind) -> Option<&PerController> {
        self.controllers.get(c.index())
    }

    /// Counts one reconciliation of `controller` that took `took`.
    pub fn reconciled(&self, controller: ControllerKind, took: Duration) {
        if let Some(p) = self.of(controller) {
            p.reconciles.inc();
            p.duration.observe_duration(took);
        }
    }

    /// Counts one failed reconciliation.
    pub fn failed(&self, controller: ControllerKind, category: Category) {
        if let Some(c) = self.of(controller).and_then(|p| p.errors.get(category.index())) {
            c.inc();
        }
    }

    /// Reconciliations counted for `controller`.
    pub fn reconciles(&self, controller: ControllerKind) -> u64 {
        self.of(controller).map_or(0, |p| p.reconciles.get())
    }

    /// Errors counted for `controller` in `category`.
    pub fn errors(&self, controller: ControllerKind, category: Category) -> u64 {
        self.of(controller)
            .and_then(|p| p.errors.get(category.index()))
            .map_or(0, Counter::get)
    }

    /// Sets `mip_operator_leader`.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Whether this replica holds the lease (as last set).
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Sets what `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// What `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

// === HTTP ===

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> Response {
    if m.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// The routes: `/metrics`, `/healthz`, `/readyz`; anything else 404.
pub fn router(m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(m)
}

/// Binds `addr` (port 0: any free port) and returns the address bound with the listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::net::TcpListener)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok((listener.local_addr()?, listener))
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    m: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(m)).with_graceful_shutdown(shutdown).await
}

// === reading the proxies' metrics ===

/// Why [`fetch`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection, no answer or a broken one.
    #[error("{0}")]
    Io(String),
    /// Nothing within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Largest body [`fetch`] reads (a proxy's exposition is a few KiB).
pub const MAX_BODY: usize = 4 << 20;

/// `GET http://<addr><path>` (HTTP/1.1, one connection), the body of a 200 answer as text; everything (connect,
/// request, body) within `timeout`.
pub async fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, fetch_inner(addr, path))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn fetch_inner(addr: SocketAddr, path: &str) -> Result<String, FetchError> {
    use http_body_util::{BodyExt, Empty, Limited};
    let io = |e: &dyn std::fmt::Display| FetchError::Io(e.to_string());
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| io(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| io(&e))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| io(&e))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| io(&e))?;
        let code = response.status().as_u16();
        if code != 200 {
            return Err(FetchError::Status(code));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| io(&*e))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
    .await;
    driver.abort();
    result
}

/// The value of the first sample of `name` without labels (or with any labels) in a Prometheus text exposition;
/// `None` when absent or not a number. Used to read `mip_bindings` and `mip_replication_peers_connected` from a
/// proxy's admin `/metrics`.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = match rest.chars().next() {
                Some(' ') => rest,
                Some('{') => rest.split_once('}').map(|(_, r)| r)?,
                _ => return None,
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the operator registers is listed in docs/metrics.md under its section.
    #[test]
    fn metrics_are_documented() {
        let m = Metrics::new().unwrap();
        mip_io::metrics::check_documented(&m.registry, include_str!("../../docs/metrics.md"), "mip-operator").unwrap();
    }

    #[test]
    fn every_series_is_registered_at_zero() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        for c in ["mipproxy", "homeagent"] {
            assert!(
                text.contains(&format!("mip_operator_reconciles_total{{controller=\"{c}\"}} 0")),
                "{text}"
            );
            for cat in ["invalid_spec", "missing_secret", "api", "build"] {
                let series = format!("mip_operator_reconcile_errors_total{{controller=\"{c}\",category=\"{cat}\"}} 0");
                assert!(text.contains(&series), "{series} missing:\n{text}");
            }
            assert!(text.contains(&format!(
                "mip_operator_reconcile_duration_seconds_count{{controller=\"{c}\"}} 0"
            )));
        }
        assert!(text.contains("# TYPE mip_operator_reconcile_duration_seconds histogram"));
        assert!(text.contains("mip_operator_leader 0"));
    }

    #[test]
    fn counts_by_controller_and_category() {
        let m = Metrics::new().unwrap();
        m.reconciled(ControllerKind::MipProxy, Duration::from_millis(30));
        m.reconciled(ControllerKind::MipProxy, Duration::from_millis(30));
        assert!(!m.is_leader());
        m.failed(ControllerKind::HomeAgent, Category::MissingSecret);
        m.set_leader(true);
        assert_eq!(m.reconciles(ControllerKind::MipProxy), 2);
        assert_eq!(m.reconciles(ControllerKind::HomeAgent), 0);
        assert_eq!(m.errors(ControllerKind::HomeAgent, Category::MissingSecret), 1);
        let text = m.render();
        assert!(text.contains("mip_operator_reconciles_total{controller=\"mipproxy\"} 2"));
        assert!(
            text.contains(
                "mip_operator_reconcile_errors_total{controller=\"homeagent\",category=\"missing_secret\"} 1"
            )
        );
        assert!(text.contains("mip_operator_reconcile_duration_seconds_bucket{controller=\"mipproxy\",le=\"0.05\"} 2"));
        assert!(text.contains("mip_operator_leader 1"));
        assert!(m.is_leader());
    }

    #[test]
    fn categories_name_the_labels_and_permanence() {
        let labels: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels, ["invalid_spec", "missing_secret", "api", "build"]);
        assert!(Category::InvalidSpec.is_permanent());
        assert!(Category::MissingSecret.is_permanent());
        assert!(Category::Build.is_permanent());
        assert!(!Category::Api.is_permanent());
    }

    #[test]
    fn reads_samples_from_a_proxy_exposition() {
        let text = "# HELP mip_bindings Bindings.\n# TYPE mip_bindings gauge\nmip_bindings 42\n\
                    mip_bindings_total 7\nmip_replication_peers_connected{x=\"a b\"} 2\n";
        assert_eq!(sample(text, "mip_bindings"), Some(42.0));
        assert_eq!(sample(text, "mip_replication_peers_connected"), Some(2.0));
        assert_eq!(sample(text, "mip_replication_peers"), None);
        assert_eq!(sample("mip_bindings NaN\n", "mip_bindings"), None);
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let m = Arc::new(Metrics::new().unwrap());
        let (addr, listener) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&m), async {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| fetch(addr, path, Duration::from_secs(2));
        assert_eq!(get("/healthz").await.unwrap(), "ok\n");
        assert!(matches!(get("/readyz").await, Err(FetchError::Status(503))));
        m.set_ready(true);
        assert_eq!(get("/readyz").await.unwrap(), "ready\n");
        let metrics = get("/metrics").await.unwrap();
        assert_eq!(sample(&metrics, "mip_operator_leader"), Some(0.0), "{metrics}");
        assert!(matches!(get("/nope").await, Err(FetchError::Status(404))));
        // Nothing listening: an error, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            fetch(closed, "/metrics", Duration::from_secs(2)).await,
            Err(FetchError::Io(_))
        ));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}

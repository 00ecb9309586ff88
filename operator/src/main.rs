//! `mip-operator` (docs/operator.md): reconciles `MipProxy` and `HomeAgent` resources into running proxies.
//!
//! ```text
//! mip-operator --proxy-image IMG [--metrics-addr 0.0.0.0:8080] [--lease-name mip-operator-leader]
//!              [--log-format json|text] [--namespace NS]
//! ```
//!
//! Environment: `RUST_LOG` (log filter, default `info`), `POD_NAME` (the Lease holder identity; default
//! `mip-operator-<pid>`), `POD_NAMESPACE` (where the Lease lives; default the client's namespace), and the usual
//! in-cluster service-account files or `KUBECONFIG`.
//!
//! Life cycle: serve `/metrics`, `/healthz`, `/readyz` at once; stand by until this replica holds the leader
//! Lease; run both controllers while it does. SIGTERM (or SIGINT) stops the controllers gracefully (the
//! reconciliations in progress finish), releases the Lease and exits 0. Losing the Lease stops the controllers and
//! exits 1, so the kubelet restarts the container as a clean standby (crate::leader explains why).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use futures::FutureExt;
use mip_operator::build::Settings;
use mip_operator::leader::{LeaderElector, Lost};
use mip_operator::metrics::{self, Metrics};
use mip_operator::reconcile::{self, Context};
use tokio::signal::unix::{SignalKind, signal};

/// How long the reconciliations in progress may take to finish at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The MIP Proxy operator: reconciles MipProxy and HomeAgent resources (mipproxy.io/v1alpha1).
#[derive(Debug, Parser)]
#[command(name = "mip-operator", version)]
struct Args {
    /// Proxy image (REPOSITORY:TAG) for MipProxies that set no spec.image.
    #[arg(long, value_name = "IMG")]
    proxy_image: String,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Name of the leader-election Lease (in POD_NAMESPACE).
    #[arg(long, value_name = "NAME", default_value = "mip-operator-leader")]
    lease_name: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// OTLP/gRPC collector (`http://HOST:PORT`) the proxy pods export registration traces to when their MipProxy
    /// names none (spec.telemetry.otlpEndpoint). The operator exports no traces of its own.
    #[arg(long, value_name = "URL", value_parser = otlp_endpoint)]
    default_otlp_endpoint: Option<String>,
}

/// An endpoint the proxy's exporter can use, checked here so a typo fails the operator's start, not every pod's.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    match mip::daemon::otlp_endpoint_problem(s) {
        None => Ok(s.to_string()),
        Some(problem) => Err(problem),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _log = mip_io::logging::init(args.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mip-operator failed");
            ExitCode::FAILURE
        }
    };
    // Reconciliations that ignored the stop (forceful shutdown) must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// How the leader term ended.
enum End {
    Terminated,
    Lost(Lost),
    ControllersStopped,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let metrics = Arc::new(Metrics::new().context("registering the metrics")?);
    let (addr, listener) = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), async {
        let _ = http_stopped.await;
    }));
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");

    let client = kube::Client::try_default()
        .await
        .context("configuring the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("mip-operator-{}", std::process::id()));
    let lease_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(
        identity = %identity,
        lease = %format!("{lease_namespace}/{}", args.lease_name),
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        proxy_image = %args.proxy_image,
        "mip-operator starting"
    );
    let mut elector = LeaderElector::new(client.clone(), &lease_namespace, &args.lease_name, &identity);

    let terminated = async {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    tokio::pin!(terminated);

    // Standby until this replica holds the lease.
    tokio::select! {
        () = elector.acquire(&metrics) => {}
        signal = &mut terminated => {
            tracing::info!(signal, "stopping (standby)");
            metrics.set_ready(false);
            let _ = stop_http.send(());
            let _ = server.await;
            return Ok(ExitCode::SUCCESS);
        }
    }

    let settings = Settings {
        proxy_image: args.proxy_image.clone(),
        image_pull_policy: None,
        default_otlp_endpoint: args.default_otlp_endpoint.clone(),
    };
    let ctx = Arc::new(Context::new(client, settings, Arc::clone(&metrics), Some(identity)));
    let (stop_controllers, controllers_stopped) = futures::channel::oneshot::channel::<()>();
    let shutdown = controllers_stopped.map(|_| ()).shared();
    let mut controllers = tokio::spawn(reconcile::run(ctx, args.namespace.clone(), shutdown));

    let end = tokio::select! {
        _ = &mut controllers => End::ControllersStopped,
        lost = elector.hold(&metrics) => End::Lost(lost),
        signal = &mut terminated => {
            tracing::info!(signal, "stopping: finishing the reconciliations in progress");
            End::Terminated
        }
    };
    metrics.set_ready(false);
    let _ = stop_controllers.send(());
    if !matches!(end, End::ControllersStopped) && tokio::time::timeout(STOP_TIMEOUT, &mut controllers).await.is_err() {
        tracing::warn!(timeout = ?STOP_TIMEOUT, "controllers did not stop in time");
        controllers.abort();
    }
    let code = match end {
        End::Terminated => {
            if let Err(e) = elector.release(&metrics).await {
                tracing::warn!(error = %e, "cannot release the lease (a standby takes over when it expires)");
            }
            ExitCode::SUCCESS
        }
        End::Lost(lost) => {
            // Exit so the kubelet restarts a clean standby: nothing of this term survives.
            tracing::error!(reason = %lost, "lost the leader lease: controllers stopped, exiting");
            ExitCode::FAILURE
        }
        End::ControllersStopped => {
            tracing::error!("the controllers stopped unexpectedly, exiting");
            let _ = elector.release(&metrics).await;
            ExitCode::FAILURE
        }
    };
    metrics.set_leader(false);
    let _ = stop_http.send(());
    let _ = server.await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    /// What the chart passes (`--default-otlp-endpoint` from Helm `tracing.endpoint`) is parsed, and an endpoint
    /// the proxies' exporter cannot use stops the operator at start with the reason.
    #[test]
    fn default_otlp_endpoint_flag() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["mip-operator", "--proxy-image", "r/mip-proxy:1"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert_eq!(parse(&[]).unwrap().default_otlp_endpoint, None);
        let a = parse(&["--default-otlp-endpoint", "http://otel.observability:4317"]).unwrap();
        assert_eq!(
            a.default_otlp_endpoint.as_deref(),
            Some("http://otel.observability:4317")
        );
        let e = parse(&["--default-otlp-endpoint", "https://otel:4317"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("https is not supported"), "{e}");
    }
}

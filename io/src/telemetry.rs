//! Traces: the daemons' `tracing` spans of target [`TARGET`] exported over OTLP/gRPC (OpenTelemetry), next to the
//! log lines of [`crate::logging`].
//!
//! * **When**: an endpoint is configured (`daemon.tracing.endpoint`, else the environment variables
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`: [`mip::daemon::TracingSettings`]).
//!   Without one no OpenTelemetry layer is installed, so a span of [`TARGET`] is disabled at its call site (one
//!   relaxed load) and the daemons skip their trace bookkeeping ([`active`]).
//! * **What**: only spans and events of target [`TARGET`] reach the exporter, and they never reach the log (the
//!   log layer filters them out). The daemons create them for the control plane only: one trace per
//!   registration, nothing per data packet.
//! * **Resource**: `service.name` (`daemon.tracing.service_name`, else `OTEL_SERVICE_NAME`, else the daemon's
//!   name: `mip-proxy`, `mip-ha`, ...), `service.instance.id` (the daemon's own address, [`TraceIdentity`]),
//!   `service.version`, `host.name`, plus `OTEL_RESOURCE_ATTRIBUTES`.
//! * **Sampling**: the daemons decide a root span's sampling themselves, before creating it ([`sample_root`]: a
//!   random draw against `sampling_ratio`, default 1.0), so a registration outside the sample costs one draw and
//!   no span at all; the SDK's sampler is parent-based, always-on for roots (a replica applying a delta of a
//!   sampled trace joins it, of an unsampled one creates nothing).
//! * **Threads**: the daemons run a `mio` loop, not tokio. Spans are queued (at most 2048, then dropped) to the
//!   SDK's batch span processor, which exports from its own thread every second (or `OTEL_BSP_SCHEDULE_DELAY`
//!   milliseconds; `OTEL_BSP_MAX_QUEUE_SIZE` and `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` apply too); the tonic gRPC
//!   channel it exports through runs on a one-worker tokio runtime owned here (thread `mip-otlp`). A slow or
//!   absent collector never blocks the loop: exports time out after 2 s and the queue drops what does not fit
//!   (the SDK logs the first drop, and the count at exit).
//! * **Shutdown**: dropping the [`Telemetry`] guard (end of `main`) flushes the queued spans (at most 3 s), then
//!   stops the runtime.
//! * **Propagation**: [`traceparent`] and [`set_remote_parent`] carry a span's context as a W3C `traceparent`
//!   string (the proxy's replication deltas do).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mip::daemon::{
    DaemonSettings, FaFile, HaFile, LogFormat, MnFile, OTLP_ENDPOINT_ENV, OTLP_TRACES_ENDPOINT_ENV, ProxyFile,
    TracingSettings, otlp_endpoint_problem,
};
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::logging::LogGuard;

/// The `tracing` target of every exported span and span event (`tracing::info_span!(target: TARGET, ...)`
/// needs the literal: `"mip_trace"`). Log lines never carry it.
pub const TARGET: &str = "mip_trace";
/// How often queued spans are exported unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest one export may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the final flush may take at shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// The environment variable of the batch processor's export interval (OpenTelemetry standard, milliseconds).
const SCHEDULE_DELAY_ENV: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// The OpenTelemetry standard environment variable of `service.name`.
const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Roots are sampled when a draw is below this (`u64::MAX`: always; [`set_root_sampling`]).
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(u64::MAX);
/// The draws' sequence (splitmix64: a Weyl sequence, then a mix), seeded at [`init`].
static ROOT_DRAWS: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Whether spans are exported (an endpoint was configured and the exporter started): the daemons create trace
/// spans and keep their per-registration trace state only then.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Whether the next root span (a registration) is in the sample: decide before creating the span, and create
/// none when this says no. One relaxed atomic add and a few multiplications; not cryptographic (which
/// registrations are traced is not a secret). Always true at ratio 1.0.
pub fn sample_root() -> bool {
    let threshold = ROOT_THRESHOLD.load(Ordering::Relaxed);
    threshold == u64::MAX || mix64(ROOT_DRAWS.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)) < threshold
}

/// Sets the ratio [`sample_root`] samples roots by (0.0 to 1.0; [`init`] sets `sampling_ratio`).
pub fn set_root_sampling(ratio: f64) {
    ROOT_THRESHOLD.store(root_threshold(ratio), Ordering::Relaxed);
}

/// The draw threshold of `ratio`: draws are uniform over u64, so P(draw < threshold) = ratio.
fn root_threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0
    } else if ratio >= 1.0 {
        u64::MAX
    } else {
        // ratio × 2^64 < 2^64: in range (a float-to-int `as` saturates anyway).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let t = (ratio * 18_446_744_073_709_551_616.0) as u64;
        t
    }
}

/// splitmix64's finaliser: consecutive Weyl-sequence values become independent-looking draws.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a daemon's configuration says about the daemon for its trace resource.
pub trait TraceIdentity {
    /// Resource attributes: at least `service.instance.id`.
    fn resource_attributes(&self) -> Vec<(&'static str, String)>;
}

impl TraceIdentity for ProxyFile {
    /// `service.instance.id` = the node address (`proxy.node_address`, default `proxy_private`), and
    /// `mip.replica_id` with replication.
    fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![("service.instance.id", self.proxy.node_address().to_string())];
        if let Some(id) = self.replica_id() {
            a.push(("mip.replica_id", id.to_string()));
        }
        a
    }
}

impl TraceIdentity for HaFile {
    /// `service.instance.id` = the home agent's address.
    fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        vec![("service.instance.id", self.ha.address.to_string())]
    }
}

impl TraceIdentity for FaFile {
    /// `service.instance.id` = the foreign agent's routed address.
    fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        vec![("service.instance.id", self.fa.routed_address.to_string())]
    }
}

impl TraceIdentity for MnFile {
    /// `service.instance.id` = the node's NAI, else its home address.
    fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let id = self.mn.nai.clone().unwrap_or_else(|| self.mn.home_address.to_string());
        vec![("service.instance.id", id)]
    }
}

/// Where and how spans are exported, resolved from the file and the environment ([`plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPlan {
    /// The OTLP/gRPC endpoint.
    pub endpoint: String,
    /// Where the endpoint came from: `daemon.tracing.endpoint` or the environment variable's name.
    pub endpoint_from: &'static str,
    /// Root sampling ratio.
    pub sampling_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// Export interval.
    pub interval: Duration,
}

/// The export plan of daemon `daemon_name` with `settings` (`daemon.tracing`) and the environment `env`:
/// `Ok(None)` when no endpoint is configured anywhere, `Err` when the environment names one this build cannot
/// use (the file's is validated at load).
pub fn plan(
    daemon_name: &str,
    settings: Option<&TracingSettings>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportPlan>, String> {
    let defaults = TracingSettings::default();
    let s = settings.unwrap_or(&defaults);
    let env_set = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let (endpoint, endpoint_from) = match s.endpoint.clone() {
        Some(e) => (e, "daemon.tracing.endpoint"),
        None => match env_set(OTLP_TRACES_ENDPOINT_ENV) {
            Some(e) => (e, OTLP_TRACES_ENDPOINT_ENV),
            None => match env_set(OTLP_ENDPOINT_ENV) {
                Some(e) => (e, OTLP_ENDPOINT_ENV),
                None => return Ok(None),
            },
        },
    };
    if let Some(p) = otlp_endpoint_problem(&endpoint) {
        return Err(format!("{endpoint_from}={endpoint:?}: {p}"));
    }
    let interval = match env_set(SCHEDULE_DELAY_ENV) {
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return Err(format!("{SCHEDULE_DELAY_ENV}={v:?}: milliseconds, at least 1")),
        },
        None => EXPORT_INTERVAL,
    };
    let service_name = s
        .service_name
        .clone()
        .or_else(|| env_set(SERVICE_NAME_ENV))
        .unwrap_or_else(|| daemon_name.to_string());
    Ok(Some(ExportPlan {
        endpoint,
        endpoint_from,
        sampling_ratio: s.sampling_ratio,
        service_name,
        interval,
    }))
}

/// The trace exporter and the log writer of a daemon; dropping it flushes both (hold it in `main` until exit).
#[must_use = "dropping the guard stops the exporter and the log writer"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
    // Last: the flush above may still log.
    _log: LogGuard,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            ACTIVE.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "flushing the trace exporter");
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The resource of the exported spans: the environment's (`OTEL_RESOURCE_ATTRIBUTES`, SDK attributes), then
/// `service.name`, `service.version`, `host.name` and the daemon's `attributes`.
fn resource(service_name: &str, attributes: &[(&'static str, String)]) -> Resource {
    let mut b = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(h) = host_name() {
        b = b.with_attribute(KeyValue::new("host.name", h));
    }
    b.with_attributes(attributes.iter().map(|(k, v)| KeyValue::new(*k, v.clone())))
        .build()
}

fn host_name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// The SDK's sampler: parent-based; roots always, as the daemons create a root only when [`sample_root`] drew it.
pub fn daemon_sampler() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
}

/// The tracer provider exporting over OTLP/gRPC as `plan` says, and the runtime its channel runs on.
fn start_exporter(
    plan: &ExportPlan,
    attributes: &[(&'static str, String)],
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mip-otlp")
        .enable_all()
        .build()
        .map_err(|e| format!("trace exporter runtime: {e}"))?;
    let exporter = {
        // tonic spawns the channel's worker onto the current runtime; the batch processor's thread only awaits it.
        let _rt = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(plan.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("trace exporter for {}: {e}", plan.endpoint))?
    };
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(plan.interval)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(daemon_sampler())
        .with_resource(resource(&plan.service_name, attributes))
        .build();
    Ok((provider, runtime))
}

/// The OpenTelemetry layer for `provider`: spans and events of [`TARGET`] only, no code locations, threads or
/// levels (the attributes are the `mip.*` fields).
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("mip"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
}

/// Installs the global subscriber of daemon `daemon_name`: the log layer ([`crate::logging`], format from
/// `settings.log_format`) and, when [`plan`] finds an endpoint, the OTLP exporter with `attributes`
/// ([`TraceIdentity`]). An endpoint from the environment that cannot be used, or an exporter that cannot
/// start, is logged and the daemon runs without traces. A second call leaves the first subscriber in place.
pub fn init(daemon_name: &str, settings: &DaemonSettings, attributes: &[(&'static str, String)]) -> Telemetry {
    let json = settings.log_format == LogFormat::Json;
    let (log_layer, log_guard, log_problem) = crate::logging::layer(json, "info");
    let mut problems: Vec<String> = log_problem.into_iter().collect();
    let plan = match plan(daemon_name, settings.tracing.as_ref(), |k| std::env::var(k).ok()) {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("traces not exported: {e}"));
            None
        }
    };
    let exporter = plan.and_then(|p| match start_exporter(&p, attributes) {
        Ok((provider, runtime)) => Some((p, provider, runtime)),
        Err(e) => {
            problems.push(format!("traces not exported: {e}"));
            None
        }
    });
    let otel = exporter.as_ref().map(|(_, provider, _)| otel_layer(provider));
    let installed = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel)
        .try_init()
        .is_ok();
    for p in problems {
        tracing::warn!("{p}");
    }
    let (provider, runtime) = match exporter {
        Some((p, provider, runtime)) if installed => {
            set_root_sampling(p.sampling_ratio);
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| {
                    d.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(d.subsec_nanos())
                })
                ^ u64::from(std::process::id()).rotate_left(32);
            ROOT_DRAWS.store(seed, Ordering::Relaxed);
            ACTIVE.store(true, Ordering::Relaxed);
            tracing::info!(
                endpoint = %p.endpoint,
                from = p.endpoint_from,
                service_name = %p.service_name,
                sampling_ratio = p.sampling_ratio,
                "exporting traces (OTLP/gRPC)"
            );
            (Some(provider), Some(runtime))
        }
        _ => (None, None),
    };
    Telemetry {
        provider,
        runtime,
        _log: crate::logging::guard_if(installed, log_guard),
    }
}

/// Whether `span` is exported: an exporter is installed and the sampler kept the span's trace (a root the daemon
/// drew with [`sample_root`] is; a remote parent's decision is followed). A daemon creates no children for a span
/// that is not.
pub fn is_sampled(span: &tracing::Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

/// The W3C `traceparent` of `span` (`00-TRACEID-SPANID-FLAGS`), if it is an exported span; `None` for a disabled
/// span or without an exporter.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (not entered, no child yet) a child of the remote span `traceparent` names; false when either
/// is unusable (a disabled span, no exporter, a malformed `traceparent`).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    if span.is_disabled() || traceparent.len() > 128 {
        return false;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// Test support (feature `testing`, and this crate's tests): runs `f` under a subscriber with the daemons'
/// OpenTelemetry layer ([`otel_layer`]) exporting into memory through `sampler` (the daemons' own:
/// [`daemon_sampler`]); returns what `f` returned and the spans that finished.
#[cfg(any(test, feature = "testing"))]
pub fn capture_spans<T>(sampler: Sampler, f: impl FnOnce() -> T) -> (T, Vec<opentelemetry_sdk::trace::SpanData>) {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(sampler)
        .build();
    let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
    let out = tracing::subscriber::with_default(subscriber, f);
    // The simple exporter exported each span as it ended; the flush only makes sure.
    let _ = provider.force_flush();
    (out, exporter.get_finished_spans().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// The draws sample at the ratio: 100,000 consecutive draws (any seed) land within 1 % of it, and the bounds
    /// are exact.
    #[test]
    fn root_draws_sample_at_the_ratio() {
        assert_eq!(super::root_threshold(0.0), 0);
        assert_eq!(super::root_threshold(-1.0), 0);
        assert_eq!(super::root_threshold(f64::NAN), 0);
        assert_eq!(super::root_threshold(1.0), u64::MAX);
        for seed in [0u64, 1, 0x1234_5678_9abc_def0] {
            for ratio in [0.01, 0.1, 0.5, 0.9] {
                let t = super::root_threshold(ratio);
                let n = 100_000u64;
                let hits = (0..n)
                    .filter(|i| super::mix64(seed.wrapping_add(i.wrapping_mul(super::GOLDEN_GAMMA))) < t)
                    .count() as f64;
                let got = hits / n as f64;
                assert!((got - ratio).abs() < 0.01, "seed {seed:#x} ratio {ratio}: {got}");
            }
        }
    }

    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::trace::SpanData;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_file_wins_over_the_environment_which_is_the_default() {
        let file = TracingSettings {
            endpoint: Some("http://c:4317".into()),
            sampling_ratio: 0.5,
            service_name: Some("edge-proxy".into()),
        };
        let both = env(&[(OTLP_ENDPOINT_ENV, "http://env:4317"), (SERVICE_NAME_ENV, "from-env")]);
        let p = plan("mip-proxy", Some(&file), &both).unwrap().unwrap();
        assert_eq!(
            (
                p.endpoint.as_str(),
                p.endpoint_from,
                p.service_name.as_str(),
                p.sampling_ratio
            ),
            ("http://c:4317", "daemon.tracing.endpoint", "edge-proxy", 0.5)
        );
        assert_eq!(p.interval, EXPORT_INTERVAL);
        // No file section: the environment, the traces variable first; the daemon's name by default.
        let p = plan("mip-ha", None, env(&[(OTLP_ENDPOINT_ENV, "http://env:4317")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                p.endpoint.as_str(),
                p.endpoint_from,
                p.service_name.as_str(),
                p.sampling_ratio
            ),
            ("http://env:4317", OTLP_ENDPOINT_ENV, "mip-ha", 1.0)
        );
        let p = plan(
            "mip-ha",
            None,
            env(&[
                (OTLP_ENDPOINT_ENV, "http://env:4317"),
                (OTLP_TRACES_ENDPOINT_ENV, "http://traces:4317"),
                (SERVICE_NAME_ENV, "ha-7"),
                (SCHEDULE_DELAY_ENV, "250"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.endpoint.as_str(), p.service_name.as_str(), p.interval),
            ("http://traces:4317", "ha-7", Duration::from_millis(250))
        );
        // Nothing anywhere (an empty variable is unset): no export.
        assert_eq!(plan("mip-mn", None, env(&[(OTLP_ENDPOINT_ENV, " ")])), Ok(None));
        let section_without_endpoint = TracingSettings::default();
        assert_eq!(plan("mip-mn", Some(&section_without_endpoint), env(&[])), Ok(None));
        // A bad variable is an error naming it.
        let e = plan("mip-mn", None, env(&[(OTLP_ENDPOINT_ENV, "collector:4317")])).unwrap_err();
        assert!(e.contains(OTLP_ENDPOINT_ENV) && e.contains("http://"), "{e}");
        let e = plan(
            "mip-mn",
            None,
            env(&[(OTLP_ENDPOINT_ENV, "http://c:4317"), (SCHEDULE_DELAY_ENV, "soon")]),
        )
        .unwrap_err();
        assert!(e.contains(SCHEDULE_DELAY_ENV), "{e}");
    }

    #[test]
    fn identities() {
        let proxy: ProxyFile = mip::config::from_yaml(
            "proxy: {proxy_public: 198.51.100.10, proxy_private: 10.10.0.10, node_address: 10.10.0.11,
  home_agents: [{address: 10.10.1.1}]}
dataplane: {vpn_gateways: [198.51.100.20], vpn_gateway_private: 10.10.0.20}
daemon: {keys_file: k}
replication: {listen: '10.10.0.11:7434', peers: {static: []}, insecure_plaintext: true}
",
        )
        .unwrap();
        assert_eq!(
            proxy.resource_attributes(),
            vec![
                ("service.instance.id", "10.10.0.11".to_string()),
                ("mip.replica_id", u32::from_be_bytes([10, 10, 0, 11]).to_string())
            ]
        );
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    /// Spans of TARGET are exported with their `mip.*` fields (also those recorded later), other targets are
    /// not; a traceparent carries the context to a span elsewhere, which joins the trace as a child.
    #[test]
    fn spans_attributes_and_remote_parents() {
        let (tp, spans) = capture_spans(daemon_sampler(), || {
            let root = tracing::info_span!(target: "mip_trace", "registration",
                mip.home_address = "10.10.1.50", mip.reply_code = tracing::field::Empty);
            let child = tracing::info_span!(target: "mip_trace", parent: &root, "replicate");
            let tp = traceparent(&child).expect("an exported span has a traceparent");
            drop(child);
            root.record("mip.reply_code", 0u64);
            tracing::info!(target: "mip_trace", parent: &root, "an event");
            drop(root);
            let other = tracing::info_span!("not exported");
            assert_eq!(traceparent(&other), None);
            drop(other);
            // The peer: a span joined to the remote parent.
            let apply = tracing::info_span!(target: "mip_trace", "apply");
            assert!(set_remote_parent(&apply, &tp));
            drop(apply);
            let bad = tracing::info_span!(target: "mip_trace", "bad parent");
            assert!(!set_remote_parent(&bad, "00-zz-11-01"));
            tp
        });
        assert_eq!(spans.len(), 4, "{spans:?}");
        let root = named(&spans, "registration");
        let replicate = named(&spans, "replicate");
        let apply = named(&spans, "apply");
        assert_eq!(attr(root, "mip.home_address").as_deref(), Some("10.10.1.50"));
        assert_eq!(attr(root, "mip.reply_code").as_deref(), Some("0"));
        assert_eq!(root.events.len(), 1);
        assert_eq!(attr(root, "code.filepath"), None, "no code locations");
        assert_eq!(replicate.parent_span_id, root.span_context.span_id());
        assert_eq!(replicate.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(apply.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(apply.parent_span_id, replicate.span_context.span_id());
        assert!(apply.parent_span_is_remote);
        assert_eq!(
            tp,
            format!(
                "00-{}-{}-01",
                replicate.span_context.trace_id(),
                replicate.span_context.span_id()
            )
        );
        assert_ne!(root.span_context.trace_id(), TraceId::INVALID);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        let r = resource("mip-test", &[("service.instance.id", "10.0.0.1".into())]);
        let get = |k: &str| r.get(&opentelemetry::Key::from(k.to_string())).map(|v| v.to_string());
        assert_eq!(get("service.name").as_deref(), Some("mip-test"));
        assert_eq!(get("service.instance.id").as_deref(), Some("10.0.0.1"));
        assert!(get("host.name").is_some());
    }

    /// The SDK's sampler keeps every root (the daemon drew it already) and follows a remote parent: a child of
    /// a sampled parent is exported, of an unsampled one is not (and says so in its own traceparent).
    #[test]
    fn sampling_is_parent_based() {
        let (unsampled_child, spans) = capture_spans(daemon_sampler(), || {
            let root = tracing::info_span!(target: "mip_trace", "registration");
            assert!(is_sampled(&root));
            drop(root);
            let apply = tracing::info_span!(target: "mip_trace", "apply");
            assert!(set_remote_parent(
                &apply,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ));
            drop(apply);
            let ignored = tracing::info_span!(target: "mip_trace", "apply unsampled");
            assert!(set_remote_parent(
                &ignored,
                "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
            ));
            let tp = traceparent(&ignored);
            assert!(!is_sampled(&ignored));
            drop(ignored);
            tp
        });
        let mut names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        names.sort();
        assert_eq!(names, ["apply", "registration"]);
        assert!(
            unsampled_child.is_some_and(|t| t.ends_with("-00")),
            "an unsampled context says so"
        );
    }
}

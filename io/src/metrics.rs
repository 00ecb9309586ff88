//! Prometheus metrics without locks on the hot path: a handle ([`Counter`], [`Gauge`], [`FloatGauge`],
//! [`Histogram`]) is an `Arc` of atomics that the data path updates with one relaxed atomic operation; the
//! [`Registry`] keeps the list of series (behind a mutex taken only to register, remove and render) and renders
//! the text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Conventions: every metric name starts with `mip_`; names and label names are `&'static str` (label values may
//! be dynamic, e.g. a peer address, but drop reasons and other categories should be static strings such as
//! `DataDrop::as_str()`); counters end in `_total`; durations are in seconds. Register every series at start-up
//! (see [`Registry::drop_counters`]) so it shows as 0 before the first event.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets (seconds) for relay latency: a registration's round trip through the proxy to a home agent.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a metric could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The name does not start with `mip_` or has characters outside `[a-zA-Z0-9_]`.
    #[error("metric name `{0}` must match mip_[a-zA-Z0-9_]*")]
    BadName(String),
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*`, starts with `__`, repeats, or is `le` on a histogram.
    #[error("metric `{name}`: bad label name `{label}`")]
    BadLabel {
        /// The metric.
        name: String,
        /// The label.
        label: String,
    },
    /// The name is registered with another type or help text, or collides with a histogram's series names.
    #[error("metric `{0}` is already registered differently")]
    Conflict(String),
    /// Histogram buckets must be finite, strictly increasing and not empty.
    #[error("metric `{0}`: buckets must be finite, strictly increasing and not empty")]
    BadBuckets(String),
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution in fixed buckets.
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A monotonic counter.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An integer gauge.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A floating-point gauge (e.g. seconds of replication lag).
#[derive(Debug, Clone, Default)]
pub struct FloatGauge(Arc<AtomicU64>);

impl FloatGauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramCore {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram(Arc::new(HistogramCore {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self
            .0
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.0.bounds.len());
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.0.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

/// One counter per drop reason, all registered (at 0) up front.
#[derive(Debug, Clone)]
pub struct DropCounters {
    reasons: Box<[&'static str]>,
    counters: Box<[Counter]>,
}

impl DropCounters {
    /// Counts one drop; `false` (and nothing counted) for a reason that was not registered.
    #[inline]
    pub fn inc(&self, reason: &str) -> bool {
        self.add(reason, 1)
    }

    /// Counts `n` drops.
    #[inline]
    pub fn add(&self, reason: &str, n: u64) -> bool {
        match self.get(reason) {
            Some(c) => {
                c.add(n);
                true
            }
            None => false,
        }
    }

    /// The counter of `reason`.
    pub fn get(&self, reason: &str) -> Option<&Counter> {
        let i = self
            .reasons
            .iter()
            .position(|r| core::ptr::eq(r.as_ptr(), reason.as_ptr()) && r.len() == reason.len())
            .or_else(|| self.reasons.iter().position(|r| *r == reason))?;
        self.counters.get(i)
    }

    /// The counter of the `i`-th reason of the list given at registration.
    pub fn by_index(&self, i: usize) -> Option<&Counter> {
        self.counters.get(i)
    }

    /// The reasons, in registration order.
    pub fn reasons(&self) -> &[&'static str] {
        &self.reasons
    }
}

/// `mip_tunnel_packets_total` and `mip_tunnel_bytes_total` of one `direction` and `encapsulation`: the packets
/// through a tunnel and their inner bytes.
#[derive(Debug, Clone)]
pub struct Traffic {
    packets: Counter,
    bytes: Counter,
}

impl Traffic {
    /// Registers both series (`help`: the HELP text of the packet series, then of the byte series).
    pub fn new(
        r: &Registry,
        help: [&'static str; 2],
        direction: &'static str,
        encapsulation: &'static str,
    ) -> Result<Traffic, MetricsError> {
        let labels = [("direction", direction), ("encapsulation", encapsulation)];
        let [packets, bytes] = help;
        Ok(Traffic {
            packets: r.counter("mip_tunnel_packets_total", packets, &labels)?,
            bytes: r.counter("mip_tunnel_bytes_total", bytes, &labels)?,
        })
    }

    /// Counts one packet of `len` inner bytes.
    #[inline]
    pub fn count(&self, len: usize) {
        self.packets.inc();
        self.bytes.add(len as u64);
    }
}

/// The [`Traffic`] of both directions (`up`: from mobile nodes, `down`: toward them) and both encapsulations
/// (`ipip`, `udp`).
#[derive(Debug, Clone)]
pub struct TunnelTraffic {
    /// `direction="up", encapsulation="ipip"`.
    pub up_ipip: Traffic,
    /// `direction="up", encapsulation="udp"`.
    pub up_udp: Traffic,
    /// `direction="down", encapsulation="ipip"`.
    pub down_ipip: Traffic,
    /// `direction="down", encapsulation="udp"`.
    pub down_udp: Traffic,
}

impl TunnelTraffic {
    /// Registers the eight series (`help` as for [`Traffic::new`]).
    pub fn new(r: &Registry, help: [&'static str; 2]) -> Result<TunnelTraffic, MetricsError> {
        Ok(TunnelTraffic {
            up_ipip: Traffic::new(r, help, "up", "ipip")?,
            up_udp: Traffic::new(r, help, "up", "udp")?,
            down_ipip: Traffic::new(r, help, "down", "ipip")?,
            down_udp: Traffic::new(r, help, "down", "udp")?,
        })
    }

    /// The counters of one direction and encapsulation.
    pub fn get(&self, up: bool, udp: bool) -> &Traffic {
        match (up, udp) {
            (true, false) => &self.up_ipip,
            (true, true) => &self.up_udp,
            (false, false) => &self.down_ipip,
            (false, true) => &self.down_udp,
        }
    }
}

/// Counts one dropped control-plane input in `drops` (`mip_drops_total{path="control", reason}`, registered up
/// front), or, for a `reason` missing from its list (one added to `mip` after the list was written), in the
/// series registered now on `registry` with `help`.
pub fn count_control_drop(registry: &Registry, drops: &DropCounters, help: &'static str, reason: &'static str) {
    if drops.inc(reason) {
        return;
    }
    match registry.counter("mip_drops_total", help, &[("path", "control"), ("reason", reason)]) {
        Ok(c) => c.inc(),
        Err(e) => tracing::warn!(error = %e, "cannot register a drop counter"),
    }
}

/// `mip_registrations_total{role, code}`: one counter per registration reply code. The codes given at start are
/// registered at 0; any other code (one relayed from a home agent, say) is registered when first counted.
#[derive(Debug)]
pub struct ReplyCodes {
    registry: Arc<Registry>,
    help: &'static str,
    role: &'static str,
    counters: HashMap<u8, Counter>,
}

impl ReplyCodes {
    /// Registers the series of `codes` for `role`.
    pub fn new(
        registry: Arc<Registry>,
        help: &'static str,
        role: &'static str,
        codes: impl IntoIterator<Item = u8>,
    ) -> Result<ReplyCodes, MetricsError> {
        let mut c = ReplyCodes {
            registry,
            help,
            role,
            counters: HashMap::new(),
        };
        for code in codes {
            let counter = c.register(code)?;
            c.counters.insert(code, counter);
        }
        Ok(c)
    }

    fn register(&self, code: u8) -> Result<Counter, MetricsError> {
        let code = code.to_string();
        self.registry.counter(
            "mip_registrations_total",
            self.help,
            &[("role", self.role), ("code", code.as_str())],
        )
    }

    /// Counts one reply with `code`.
    pub fn inc(&mut self, code: u8) {
        if let Some(counter) = self.counters.get(&code) {
            counter.inc();
            return;
        }
        match self.register(code) {
            Ok(counter) => {
                counter.inc();
                self.counters.insert(code, counter);
            }
            Err(e) => tracing::warn!(error = %e, "cannot register a registration counter"),
        }
    }
}

#[derive(Debug)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
    FloatGauge(FloatGauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Series {
    labels: Vec<(&'static str, String)>,
    value: Value,
}

/// What identifies a family.
#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    help: &'static str,
    ty: MetricType,
    buckets: Option<&'static [f64]>,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    ty: MetricType,
    buckets: Option<&'static [f64]>,
    series: Vec<Series>,
}

/// The set of metrics one process exports.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

fn valid_name(name: &str) -> bool {
    name.strip_prefix("mip_")
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

fn valid_label(l: &str) -> bool {
    let mut b = l.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !l.starts_with("__")
}

/// Series names a family writes.
fn sample_names(name: &str, ty: MetricType) -> Vec<String> {
    match ty {
        MetricType::Histogram => vec![
            name.to_string(),
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        ],
        _ => vec![name.to_string()],
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Family>> {
        self.families.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds or creates the series; `make` builds a new value, `pick` clones a handle of the right type.
    fn register(
        &self,
        spec: Spec,
        labels: &[(&'static str, &str)],
        make: impl FnOnce() -> Value,
        pick: impl Fn(&Value) -> Option<Value>,
    ) -> Result<Value, MetricsError> {
        let Spec {
            name,
            help,
            ty,
            buckets,
        } = spec;
        if !valid_name(name) {
            return Err(MetricsError::BadName(name.to_string()));
        }
        for (i, (l, _)) in labels.iter().enumerate() {
            let dup = labels.iter().take(i).any(|(o, _)| o == l);
            if !valid_label(l) || dup || (ty == MetricType::Histogram && *l == "le") {
                return Err(MetricsError::BadLabel {
                    name: name.to_string(),
                    label: (*l).to_string(),
                });
            }
        }
        if let Some(b) = buckets {
            let increasing = b.windows(2).all(|w| matches!(w, [a, c] if a < c));
            if b.is_empty() || !increasing || b.iter().any(|x| !x.is_finite()) {
                return Err(MetricsError::BadBuckets(name.to_string()));
            }
        }
        let mut families = self.lock();
        let family = match families.iter().position(|f| f.name == name) {
            Some(i) => {
                let f = families
                    .get_mut(i)
                    .ok_or_else(|| MetricsError::Conflict(name.to_string()))?;
                if f.ty != ty || f.help != help || f.buckets != buckets {
                    return Err(MetricsError::Conflict(name.to_string()));
                }
                f
            }
            None => {
                let mine = sample_names(name, ty);
                let clash = families.iter().any(|f| {
                    let theirs = sample_names(f.name, f.ty);
                    mine.iter().any(|m| theirs.contains(m))
                });
                if clash {
                    return Err(MetricsError::Conflict(name.to_string()));
                }
                families.push(Family {
                    name,
                    help,
                    ty,
                    buckets,
                    series: Vec::new(),
                });
                families
                    .last_mut()
                    .ok_or_else(|| MetricsError::Conflict(name.to_string()))?
            }
        };
        let same = |s: &Series| {
            s.labels.len() == labels.len() && s.labels.iter().zip(labels).all(|((a, x), (b, y))| a == b && x == y)
        };
        if let Some(s) = family.series.iter().find(|s| same(s)) {
            return pick(&s.value).ok_or_else(|| MetricsError::Conflict(name.to_string()));
        }
        let value = make();
        let out = pick(&value).ok_or_else(|| MetricsError::Conflict(name.to_string()))?;
        family.series.push(Series {
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
            value,
        });
        Ok(out)
    }

    /// Registers (or finds, if registered with the same name, help and labels) a counter.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Result<Counter, MetricsError> {
        let pick = |v: &Value| match v {
            Value::Counter(c) => Some(Value::Counter(c.clone())),
            _ => None,
        };
        match self.register(
            Spec {
                name,
                help,
                ty: MetricType::Counter,
                buckets: None,
            },
            labels,
            || Value::Counter(Counter::default()),
            pick,
        )? {
            Value::Counter(c) => Ok(c),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// Registers (or finds) an integer gauge.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Result<Gauge, MetricsError> {
        let pick = |v: &Value| match v {
            Value::Gauge(g) => Some(Value::Gauge(g.clone())),
            _ => None,
        };
        match self.register(
            Spec {
                name,
                help,
                ty: MetricType::Gauge,
                buckets: None,
            },
            labels,
            || Value::Gauge(Gauge::default()),
            pick,
        )? {
            Value::Gauge(g) => Ok(g),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// Registers (or finds) a floating-point gauge.
    pub fn float_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Result<FloatGauge, MetricsError> {
        let pick = |v: &Value| match v {
            Value::FloatGauge(g) => Some(Value::FloatGauge(g.clone())),
            _ => None,
        };
        let make = || Value::FloatGauge(FloatGauge::default());
        match self.register(
            Spec {
                name,
                help,
                ty: MetricType::Gauge,
                buckets: None,
            },
            labels,
            make,
            pick,
        )? {
            Value::FloatGauge(g) => Ok(g),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// Registers (or finds) a histogram with the given bucket upper bounds (`+Inf` is implied).
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        buckets: &'static [f64],
    ) -> Result<Histogram, MetricsError> {
        let pick = |v: &Value| match v {
            Value::Histogram(h) => Some(Value::Histogram(h.clone())),
            _ => None,
        };
        let make = || Value::Histogram(Histogram::new(buckets));
        match self.register(
            Spec {
                name,
                help,
                ty: MetricType::Histogram,
                buckets: Some(buckets),
            },
            labels,
            make,
            pick,
        )? {
            Value::Histogram(h) => Ok(h),
            _ => Err(MetricsError::Conflict(name.to_string())),
        }
    }

    /// `mip_relay_latency_seconds`: from relaying a registration request to the home agent's reply (the proxy's
    /// and the foreign agent's, one definition for both).
    pub fn relay_latency(&self) -> Result<Histogram, MetricsError> {
        self.histogram(
            "mip_relay_latency_seconds",
            "Time from relaying a registration request to the home agent's reply.",
            &[],
            LATENCY_BUCKETS,
        )
    }

    /// Registers one counter per reason, label `label="<reason>"`, all at 0.
    pub fn drop_counters(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        reasons: &[&'static str],
    ) -> Result<DropCounters, MetricsError> {
        self.drop_counters_with(name, help, &[], label, reasons)
    }

    /// As [`drop_counters`](Self::drop_counters) with fixed extra labels on every series (e.g. `path="decap"`).
    pub fn drop_counters_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        label: &'static str,
        reasons: &[&'static str],
    ) -> Result<DropCounters, MetricsError> {
        let mut counters = Vec::with_capacity(reasons.len());
        let mut all: Vec<(&'static str, &str)> = labels.to_vec();
        all.push((label, ""));
        for r in reasons {
            if let Some(last) = all.last_mut() {
                *last = (label, r);
            }
            counters.push(self.counter(name, help, &all)?);
        }
        Ok(DropCounters {
            reasons: reasons.into(),
            counters: counters.into(),
        })
    }

    /// Removes one series (e.g. the MTU gauge of a tunnel that went away); `true` if it existed.
    pub fn remove(&self, name: &str, labels: &[(&'static str, &str)]) -> bool {
        let mut families = self.lock();
        let Some(f) = families.iter_mut().find(|f| f.name == name) else {
            return false;
        };
        let before = f.series.len();
        f.series.retain(|s| {
            !(s.labels.len() == labels.len() && s.labels.iter().zip(labels).all(|((a, x), (b, y))| a == b && x == y))
        });
        before != f.series.len()
    }

    /// The current value of every series of family `name` with its labels, in registration order (a histogram
    /// gives its observation count). Empty for a name nothing registered. For status pages (`/status`), not the
    /// packet path: it takes the registry lock and allocates.
    pub fn values(&self, name: &str) -> Vec<(Vec<(&'static str, String)>, f64)> {
        let families = self.lock();
        let Some(f) = families.iter().find(|f| f.name == name) else {
            return Vec::new();
        };
        f.series
            .iter()
            .map(|s| {
                let v = match &s.value {
                    Value::Counter(c) => c.get() as f64,
                    Value::Gauge(g) => g.get() as f64,
                    Value::FloatGauge(g) => g.get(),
                    Value::Histogram(h) => h.count() as f64,
                };
                (s.labels.clone(), v)
            })
            .collect()
    }

    /// The names of the families that have at least one series (what [`render`](Self::render) shows), in
    /// registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|f| !f.series.is_empty())
            .map(|f| f.name)
            .collect()
    }

    /// The text exposition format (0.0.4) of every registered series; families without series are left out.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_into(&mut out);
        out
    }

    /// Appends the exposition to `out`.
    pub fn render_into(&self, out: &mut String) {
        let families = self.lock();
        for f in families.iter().filter(|f| !f.series.is_empty()) {
            out.push_str("# HELP ");
            out.push_str(f.name);
            out.push(' ');
            escape_help(f.help, out);
            out.push_str("\n# TYPE ");
            out.push_str(f.name);
            out.push(' ');
            out.push_str(f.ty.as_str());
            out.push('\n');
            for s in &f.series {
                match &s.value {
                    Value::Counter(c) => sample(out, f.name, "", &s.labels, None, |o| push_u64(o, c.get())),
                    Value::Gauge(g) => sample(out, f.name, "", &s.labels, None, |o| {
                        let _ = write!(o, "{}", g.get());
                    }),
                    Value::FloatGauge(g) => sample(out, f.name, "", &s.labels, None, |o| push_f64(o, g.get())),
                    Value::Histogram(h) => render_histogram(out, f.name, &s.labels, h),
                }
            }
        }
    }
}

/// Checks that `doc` (the text of docs/metrics.md) lists every family `registry` renders, each as `` `name` ``
/// in the section (a `## ` heading and what follows, up to the next `## `) whose heading contains `section`.
/// For each crate's "every metric is documented" test. The error names what is missing.
pub fn check_documented(registry: &Registry, doc: &str, section: &str) -> Result<(), String> {
    let mut body: Option<String> = None;
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            if body.is_some() {
                break;
            }
            if heading.contains(section) {
                body = Some(String::new());
            }
        } else if let Some(b) = &mut body {
            b.push_str(line);
            b.push('\n');
        }
    }
    let Some(body) = body else {
        return Err(format!(
            "docs/metrics.md has no `## ` section whose heading contains {section:?}"
        ));
    };
    let missing: Vec<&str> = registry
        .names()
        .into_iter()
        .filter(|n| !body.contains(&format!("`{n}`")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "docs/metrics.md section {section:?} does not list (as `name`): {}",
            missing.join(", ")
        ))
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &[(&'static str, String)], h: &Histogram) {
    let mut cumulative = 0u64;
    let counts = h.0.counts.iter().map(|c| c.load(Ordering::Relaxed));
    let bounds = h.0.bounds.iter().map(|b| Some(*b)).chain(core::iter::once(None));
    for (count, bound) in counts.zip(bounds) {
        cumulative = cumulative.saturating_add(count);
        sample(out, name, "_bucket", labels, Some(bound), |o| push_u64(o, cumulative));
    }
    sample(out, name, "_sum", labels, None, |o| push_f64(o, h.sum()));
    sample(out, name, "_count", labels, None, |o| push_u64(o, cumulative));
}

/// Writes `name{labels[,le="…"]} value\n`; `le` is `Some(None)` for `+Inf`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<Option<f64>>,
    value: impl FnOnce(&mut String),
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            escape_label(v, out);
            out.push('"');
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            out.push_str("le=\"");
            match le {
                Some(b) => push_f64(out, b),
                None => out.push_str("+Inf"),
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value(out);
    out.push('\n');
}

fn push_u64(out: &mut String, v: u64) {
    let _ = write!(out, "{v}");
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_help(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_label(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A strict reader of the text exposition format 0.0.4: checks every line and returns
    /// (series name + labels) → value.
    pub(crate) fn validate_exposition(text: &str) -> HashMap<String, f64> {
        assert!(text.is_empty() || text.ends_with('\n'), "must end with a newline");
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut current: Option<(String, String)> = None;
        let mut samples = HashMap::new();
        let mut last_bucket: Option<(String, f64, f64)> = None;
        for (n, line) in text.lines().enumerate() {
            let ctx = format!("line {}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(is_metric_name(name), "{ctx}");
                assert!(helped.insert(name.to_string()), "second HELP: {ctx}");
                assert!(!types.contains_key(name), "HELP after TYPE: {ctx}");
                check_escapes(help, false, &ctx);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect(&ctx);
                assert!(is_metric_name(name), "{ctx}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{ctx}"
                );
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "second TYPE: {ctx}"
                );
                current = Some((name.to_string(), ty.to_string()));
            } else if line.starts_with('#') {
                panic!("unexpected comment {ctx}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect(&ctx);
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    "NaN" => f64::NAN,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value {ctx}")),
                };
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect(&ctx), &ctx)),
                    None => (series, Vec::new()),
                };
                let (fam, ty) = current.clone().expect("sample before TYPE");
                let ok = match ty.as_str() {
                    "histogram" => [format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count")]
                        .contains(&name.to_string()),
                    _ => name == fam,
                };
                assert!(ok, "sample of another family: {ctx}");
                if ty == "counter" {
                    assert!(value >= 0.0, "negative counter: {ctx}");
                }
                let others: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                let key_others = format!("{fam}{others:?}");
                if name.ends_with("_bucket") {
                    let le = labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .expect("bucket without le")
                        .1
                        .clone();
                    let le: f64 = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect(&ctx)
                    };
                    if let Some((k, prev_le, prev_v)) = &last_bucket
                        && *k == key_others
                    {
                        assert!(le > *prev_le, "buckets not increasing: {ctx}");
                        assert!(value >= *prev_v, "buckets not cumulative: {ctx}");
                    }
                    last_bucket = Some((key_others.clone(), le, value));
                } else if name.ends_with("_count") && ty == "histogram" {
                    let (k, le, v) = last_bucket.clone().expect("count before buckets");
                    assert_eq!(k, key_others, "{ctx}");
                    assert_eq!(le, f64::INFINITY, "last bucket must be +Inf: {ctx}");
                    assert_eq!(v, value, "_count must equal the +Inf bucket: {ctx}");
                }
                assert!(
                    samples.insert(series.to_string(), value).is_none(),
                    "duplicate series {ctx}"
                );
            }
        }
        samples
    }

    /// Panics unless docs/metrics.md lists every family of `r` in the section whose heading contains `section`.
    pub(crate) fn assert_documented(r: &Registry, section: &str) {
        if let Err(e) = check_documented(r, include_str!("../../docs/metrics.md"), section) {
            panic!("{e}");
        }
    }

    #[test]
    fn check_documented_looks_in_the_right_section() {
        let r = Registry::new();
        r.counter("mip_a_total", "A.", &[]).unwrap();
        r.gauge("mip_b", "B.", &[]).unwrap();
        r.gauge("mip_unregistered_series_gone", "C.", &[("x", "1")]).unwrap();
        assert!(r.remove("mip_unregistered_series_gone", &[("x", "1")]));
        let doc = "# t\n## One (`x`)\n`mip_a_total` `mip_b`\n## Two\n`mip_a_total`\n";
        assert_eq!(check_documented(&r, doc, "One"), Ok(()));
        let e = check_documented(&r, doc, "Two").unwrap_err();
        assert!(e.contains("mip_b") && !e.contains("mip_a_total"), "{e}");
        assert!(check_documented(&r, doc, "Three").is_err());
        assert_eq!(r.names(), vec!["mip_a_total", "mip_b"]);
        let values = r.values("mip_b");
        assert_eq!(values, vec![(Vec::new(), 0.0)]);
        assert!(r.values("mip_nothing").is_empty());
    }

    fn is_metric_name(s: &str) -> bool {
        let mut b = s.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }

    fn check_escapes(s: &str, quotes: bool, ctx: &str) {
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            assert!(c != '\n', "{ctx}");
            if c == '\\' {
                let next = chars.next().expect(ctx);
                assert!(
                    next == '\\' || next == 'n' || (quotes && next == '"'),
                    "bad escape {ctx}"
                );
            } else if quotes {
                assert!(c != '"', "unescaped quote {ctx}");
            }
        }
    }

    fn parse_labels(s: &str, ctx: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").expect(ctx);
            assert!(valid_label(k) || k == "le", "bad label name {ctx}");
            // Find the closing quote, skipping escapes.
            let mut end = None;
            let mut esc = false;
            for (i, c) in after.char_indices() {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.expect(ctx);
            let v = &after[..end];
            check_escapes(v, true, ctx);
            assert!(
                out.iter().all(|(o, _): &(String, String)| o != k),
                "repeated label {ctx}"
            );
            out.push((k.to_string(), v.to_string()));
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                assert!(!rest.is_empty(), "trailing comma {ctx}");
            } else {
                assert!(rest.is_empty(), "garbage after label {ctx}");
            }
        }
        out
    }

    #[test]
    fn renders_valid_exposition() {
        let r = Registry::new();
        let c = r
            .counter(
                "mip_registrations_total",
                "Registrations by result.",
                &[("result", "accepted")],
            )
            .unwrap();
        c.add(3);
        let c2 = r
            .counter(
                "mip_registrations_total",
                "Registrations by result.",
                &[("result", "denied")],
            )
            .unwrap();
        c2.inc();
        r.counter("mip_plain_total", "No labels.", &[]).unwrap().inc();
        let g = r
            .gauge("mip_bindings", "Bindings.\nSecond line with a \\ backslash.", &[])
            .unwrap();
        g.set(-2);
        let f = r
            .float_gauge("mip_replication_lag_seconds", "Lag.", &[("peer", "10.0.0.2:7000")])
            .unwrap();
        f.set(0.25);
        let h = r
            .histogram(
                "mip_relay_latency_seconds",
                "Relay latency.",
                &[("ha", "10.10.0.1")],
                LATENCY_BUCKETS,
            )
            .unwrap();
        h.observe(0.0001);
        h.observe(0.003);
        h.observe(0.003);
        h.observe(100.0);
        h.observe(f64::NAN);
        h.observe_duration(Duration::from_millis(40));
        r.gauge("mip_weird_labels", "Escapes.", &[("v", "a\"b\\c\nd")])
            .unwrap()
            .set(1);
        let text = r.render();
        let samples = validate_exposition(&text);
        assert_eq!(samples["mip_registrations_total{result=\"accepted\"}"], 3.0);
        assert_eq!(samples["mip_registrations_total{result=\"denied\"}"], 1.0);
        assert_eq!(samples["mip_plain_total"], 1.0);
        assert_eq!(samples["mip_bindings"], -2.0);
        assert_eq!(samples["mip_replication_lag_seconds{peer=\"10.0.0.2:7000\"}"], 0.25);
        assert_eq!(
            samples["mip_relay_latency_seconds_bucket{ha=\"10.10.0.1\",le=\"0.0005\"}"],
            1.0
        );
        assert_eq!(
            samples["mip_relay_latency_seconds_bucket{ha=\"10.10.0.1\",le=\"0.005\"}"],
            3.0
        );
        assert_eq!(
            samples["mip_relay_latency_seconds_bucket{ha=\"10.10.0.1\",le=\"0.05\"}"],
            4.0
        );
        assert_eq!(
            samples["mip_relay_latency_seconds_bucket{ha=\"10.10.0.1\",le=\"10\"}"],
            4.0
        );
        assert_eq!(
            samples["mip_relay_latency_seconds_bucket{ha=\"10.10.0.1\",le=\"+Inf\"}"],
            5.0
        );
        assert_eq!(samples["mip_relay_latency_seconds_count{ha=\"10.10.0.1\"}"], 5.0);
        assert!((samples["mip_relay_latency_seconds_sum{ha=\"10.10.0.1\"}"] - 100.0461).abs() < 1e-9);
        assert_eq!(samples["mip_weird_labels{v=\"a\\\"b\\\\c\\nd\"}"], 1.0);
        assert!(text.contains("# HELP mip_bindings Bindings.\\nSecond line with a \\\\ backslash.\n"));
        assert!(text.contains("# TYPE mip_relay_latency_seconds histogram\n"));
        // HELP/TYPE once per family, even with several series.
        assert_eq!(text.matches("# TYPE mip_registrations_total ").count(), 1);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn drop_reasons_show_as_zero_before_they_happen() {
        let r = Registry::new();
        let reasons: &[&'static str] = &["malformed", "not_bound", "too_big"];
        let d = r
            .drop_counters_with(
                "mip_tunnel_drops_total",
                "Dropped packets by reason.",
                &[("path", "decap")],
                "reason",
                reasons,
            )
            .unwrap();
        assert!(d.inc("not_bound"));
        assert!(d.add(&String::from("too_big"), 5));
        assert!(!d.inc("no_such_reason"));
        assert_eq!(d.by_index(0).unwrap().get(), 0);
        assert_eq!(d.reasons(), reasons);
        let s = validate_exposition(&r.render());
        assert_eq!(s.len(), 3);
        assert_eq!(s["mip_tunnel_drops_total{path=\"decap\",reason=\"malformed\"}"], 0.0);
        assert_eq!(s["mip_tunnel_drops_total{path=\"decap\",reason=\"not_bound\"}"], 1.0);
        assert_eq!(s["mip_tunnel_drops_total{path=\"decap\",reason=\"too_big\"}"], 5.0);
        // Registering the same list again returns the same counters.
        let again = r
            .drop_counters_with(
                "mip_tunnel_drops_total",
                "Dropped packets by reason.",
                &[("path", "decap")],
                "reason",
                reasons,
            )
            .unwrap();
        assert_eq!(again.get("too_big").unwrap().get(), 5);
        let encap = r
            .drop_counters_with(
                "mip_tunnel_drops_total",
                "Dropped packets by reason.",
                &[("path", "encap")],
                "reason",
                reasons,
            )
            .unwrap();
        encap.inc("malformed");
        assert_eq!(validate_exposition(&r.render()).len(), 6);
    }

    #[test]
    fn registration_rules() {
        let r = Registry::new();
        assert!(matches!(
            r.counter("registrations_total", "x", &[]),
            Err(MetricsError::BadName(_))
        ));
        assert!(matches!(r.counter("mip_a-b", "x", &[]), Err(MetricsError::BadName(_))));
        assert!(matches!(r.counter("mip_a:b", "x", &[]), Err(MetricsError::BadName(_))));
        assert!(matches!(
            r.counter("mip_a", "x", &[("1x", "v")]),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            r.counter("mip_a", "x", &[("__x", "v")]),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            r.counter("mip_a", "x", &[("k", "v"), ("k", "w")]),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            r.histogram("mip_h", "x", &[("le", "1")], LATENCY_BUCKETS),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            r.histogram("mip_h", "x", &[], &[]),
            Err(MetricsError::BadBuckets(_))
        ));
        assert!(matches!(
            r.histogram("mip_h", "x", &[], &[1.0, 1.0]),
            Err(MetricsError::BadBuckets(_))
        ));
        assert!(matches!(
            r.histogram("mip_h", "x", &[], &[1.0, f64::INFINITY]),
            Err(MetricsError::BadBuckets(_))
        ));
        let c = r.counter("mip_a", "x", &[]).unwrap();
        c.inc();
        assert_eq!(
            r.counter("mip_a", "x", &[]).unwrap().get(),
            1,
            "same series, same handle"
        );
        assert!(matches!(r.gauge("mip_a", "x", &[]), Err(MetricsError::Conflict(_))));
        assert!(matches!(
            r.counter("mip_a", "other help", &[]),
            Err(MetricsError::Conflict(_))
        ));
        r.histogram("mip_h", "x", &[], &[1.0]).unwrap();
        assert!(matches!(
            r.counter("mip_h_count", "x", &[]),
            Err(MetricsError::Conflict(_))
        ));
        assert!(matches!(
            r.histogram("mip_h", "x", &[], &[2.0]),
            Err(MetricsError::Conflict(_))
        ));
        r.gauge("mip_mtu", "MTU.", &[("tunnel", "1")]).unwrap().set(1400);
        assert!(r.remove("mip_mtu", &[("tunnel", "1")]));
        assert!(!r.remove("mip_mtu", &[("tunnel", "1")]));
        let text = r.render();
        assert!(!text.contains("mip_mtu"), "families without series are left out");
        validate_exposition(&text);
        assert_eq!(Registry::new().render(), "");
    }

    #[test]
    fn counters_are_shared_across_threads() {
        let r = Arc::new(Registry::new());
        let c = r.counter("mip_x_total", "x", &[]).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.inc()))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(validate_exposition(&r.render())["mip_x_total"], 40_000.0);
    }
}

//! The process skeleton every daemon shares: one single-threaded `mio` event loop that owns the role state
//! machine and the data plane (no locks on the packet path), plus the admin HTTP server on its own thread.
//!
//! [`run`] loads the keys, builds the [`Service`], starts the admin server, then loops: wait for readiness or the
//! service's next timer (at most [`MAX_WAIT`], so a changed keys file is noticed within a second), hand ready
//! tokens to the service, answer admin requests, reload keys on SIGHUP or change (state kept), and stop on
//! SIGTERM: `/readyz` turns false first, then the service's [`Service::shutdown`] runs, then the process exits.
//!
//! Drain (`daemon.drain_ms`): the first SIGTERM turns `/readyz` false at once and keeps serving that long, then
//! shuts down; a SIGTERM during the drain cuts it short. `GET /drain` on the admin server (Kubernetes' `preStop`
//! hook, [`crate::admin::Drain`]) starts the same drain as a first SIGTERM would, but the daemon does not exit
//! when it ends: `/drain` answers 200 `drained`, `/readyz` stays false, and the SIGTERM that follows shuts it
//! down at once.
//!
//! The signal handlers are installed before anything else, so a SIGTERM during start-up (while `build` installs
//! kernel state) is held until `build` returns; the service is then shut down at once, without serving.
//!
//! # `/status`
//! One JSON object, built on the event loop when asked (what `mipctl status` shows):
//!
//! | field | what |
//! |---|---|
//! | `role` | [`Service::role`]: `proxy`, `ha`, `fa`, `mn` |
//! | `version` | the workspace version the binary was built from |
//! | `pid`, `admin` | the process and its admin address |
//! | `started_at_unix_ms`, `now_unix_ms`, `uptime_seconds` | wall clock at start and now; uptime from the monotonic clock |
//! | `ready`, `phase` | `/readyz`, and `serving` / `draining` / `drained` |
//! | `recent_registrations` | the last outcomes the service recorded in [`Context::status`], newest first ([`crate::admin::RegistrationRecord::to_json`]) |
//! | `last_errors` | the last control-plane drops and errors recorded there, newest first ([`crate::admin::ErrorRecord::to_json`]) |
//! | `drops` | every `mip_drops_total` series above 0: `[{"path", "reason", "count"}]`, largest first |
//! | `key_reloads` | `{"ok", "error"}` (`mip_key_reloads_total`) |
//! | the service's own | [`Service::status_json`]'s fields (`bindings`, `replication`, …) |

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use mio::{Events, Interest, Poll, Registry as MioRegistry, Token, Waker};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use mip::config::Validate;
use mip::daemon::DaemonSettings;
use mip::keystore::KeyStore;
use mip::roles::Now;
use mip::time::Instant;

use crate::admin::{AdminServer, AdminState, Drain, DrainPhase, HostOnly, Recorder, RequestQueue, Requests, unix_ms};
use crate::batch::{RecvBatch, SendBatch};
use crate::clock::Clock;
use crate::keys::KeysWatcher;
use crate::metrics::{Counter, FloatGauge, Gauge, Registry};
use crate::signals::Signals;
use crate::socket::RawSocket;

/// Longest the loop sleeps without an event: keys file changes are noticed this fast.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Tokens below this belong to the skeleton; services number theirs from here.
pub const FIRST_SERVICE_TOKEN: usize = 16;
const SIGNAL_TOKEN: Token = Token(0);
const WAKER_TOKEN: Token = Token(1);
/// The version every daemon reports (`/status`, `mip_build_info`): the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a daemon plugs into the shared loop.
pub trait Service {
    /// Registers the service's file descriptors (tokens ≥ [`FIRST_SERVICE_TOKEN`]).
    fn register(&mut self, registry: &MioRegistry) -> io::Result<()>;
    /// A registered descriptor is readable. Drain it (edge-triggered).
    fn ready(&mut self, token: Token, now: Now);
    /// Called after every batch of events and whenever [`next_timer`](Self::next_timer) is due.
    fn tick(&mut self, now: Now);
    /// When `tick` must run next (None: only on events).
    fn next_timer(&mut self) -> Option<Instant>;
    /// The keys file changed: replace the security associations, keep every other state.
    fn set_keys(&mut self, keys: KeyStore);
    /// The state `/bindings` shows, as JSON.
    fn bindings_json(&self) -> String;
    /// What the daemon is (`/status` `role`, `mip_build_info{role}`): the `role` label of its
    /// `mip_registrations_total` (`proxy`, `ha`, `fa`, `mn`).
    fn role(&self) -> &'static str;
    /// The service's own `/status` fields (a JSON object, merged into the skeleton's, see the module
    /// documentation): `bindings` and whatever else one screen of `mipctl status` should show. Default: none.
    fn status_json(&self) -> Value {
        Value::Object(Map::new())
    }
    /// SIGTERM: undo what the service installed (routes, rules, addresses). The process exits afterwards.
    fn shutdown(&mut self);
    /// Whether the service is ready for traffic (`/readyz`), asked after every turn of the loop; default: always
    /// (a replica of `mip-proxy` is not ready until it has caught up with its peers).
    fn serving(&self) -> bool {
        true
    }
}

/// What [`run`] hands to the service constructor.
#[derive(Debug)]
pub struct Context {
    /// The daemon's metrics registry (rendered on `/metrics`).
    pub metrics: Arc<Registry>,
    /// The clock every component shares.
    pub clock: Clock,
    /// Keys loaded at start.
    pub keys: KeyStore,
    /// Wakes the event loop from another thread (the loop then runs [`Service::tick`]); the one waker of the
    /// loop's poll, shared with the admin server.
    pub waker: Arc<Waker>,
    /// Where the service records registration outcomes and control-plane errors for `/status` (the skeleton
    /// adds failed key reloads).
    pub status: Recorder,
}

/// What the admin server asks the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Bindings,
    Status,
}

struct Admin {
    ready: Arc<AtomicBool>,
    metrics: Arc<Registry>,
    requests: Requests<String, Query>,
    drain: Drain,
    /// `daemon.admin_remote_access`.
    remote_access: bool,
    /// `mip_admin_refused_total{route}`, in [`HostOnly::ALL`]'s order.
    refused: [Counter; 3],
}

fn request_error(e: crate::admin::RequestError) -> String {
    json!({ "error": e.to_string() }).to_string()
}

impl AdminState for Admin {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn metrics(&self) -> String {
        self.metrics.render()
    }
    fn bindings_json(&self) -> String {
        self.requests.ask_with(Query::Bindings).unwrap_or_else(request_error)
    }
    fn status_json(&self) -> Option<String> {
        Some(self.requests.ask_with(Query::Status).unwrap_or_else(request_error))
    }
    fn drain(&self) -> Option<&Drain> {
        Some(&self.drain)
    }
    fn remote_access(&self) -> bool {
        self.remote_access
    }
    fn refused(&self, route: HostOnly) {
        if let Some(c) = HostOnly::ALL
            .iter()
            .position(|r| *r == route)
            .and_then(|i| self.refused.get(i))
        {
            c.inc();
        }
    }
}

/// Where the loop is in the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Not ready, serving until `until`; then shut down (`exit`: a SIGTERM started it) or wait for SIGTERM
    /// (`/drain` started it).
    Draining {
        until: Instant,
        exit: bool,
    },
    /// A `/drain` drain is over: not ready, waiting for SIGTERM.
    Drained,
}

impl Phase {
    fn until(self) -> Option<Instant> {
        match self {
            Phase::Draining { until, .. } => Some(until),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining { .. } => "draining",
            Phase::Drained => "drained",
        }
    }
}

/// Daemon-level series (docs/metrics.md "Every daemon").
struct Stats {
    key_reloads_ok: Counter,
    key_reloads_failed: Counter,
    up: Gauge,
    admin_refused: [Counter; 3],
}

impl Stats {
    fn new(r: &Registry) -> Result<Stats, String> {
        let reload = |result| {
            r.counter(
                "mip_key_reloads_total",
                "Keys file reloads by result.",
                &[("result", result)],
            )
            .map_err(|e| e.to_string())
        };
        let start: FloatGauge = r
            .float_gauge(
                "mip_start_time_seconds",
                "Start time of the daemon since the Unix epoch, in seconds.",
                &[],
            )
            .map_err(|e| e.to_string())?;
        start.set(unix_ms(std::time::SystemTime::now()) as f64 / 1000.0);
        let refused = |route: HostOnly| {
            r.counter(
                "mip_admin_refused_total",
                "Admin requests for a host-only route (/bindings, /status, /drain) from another host, refused with 403.",
                &[("route", route.path())],
            )
            .map_err(|e| e.to_string())
        };
        let [b, st, d] = HostOnly::ALL;
        Ok(Stats {
            admin_refused: [refused(b)?, refused(st)?, refused(d)?],
            key_reloads_ok: reload("ok")?,
            key_reloads_failed: reload("error")?,
            up: r
                .gauge("mip_up", "1 while the daemon runs.", &[])
                .map_err(|e| e.to_string())?,
        })
    }

    /// `mip_build_info{role, version} 1`, once the service (and so its role) exists.
    fn build_info(r: &Registry, role: &'static str) -> Result<(), String> {
        r.gauge(
            "mip_build_info",
            "Always 1: the daemon's role and version in labels.",
            &[("role", role), ("version", VERSION)],
        )
        .map(|g| g.set(1))
        .map_err(|e| e.to_string())
    }
}

/// What `/status` shows besides the service's own fields.
struct StatusContext<'a> {
    registry: &'a Registry,
    recorder: &'a Recorder,
    admin: std::net::SocketAddr,
    started_wall: std::time::SystemTime,
    started: std::time::Instant,
}

impl StatusContext<'_> {
    /// The `/status` document (module documentation).
    fn document<S: Service>(&self, service: &S, ready: bool, phase: Phase) -> String {
        let now = std::time::SystemTime::now();
        let (registrations, errors) = self.recorder.to_json();
        let mut drops: Vec<(String, String, u64)> = self
            .registry
            .values("mip_drops_total")
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(labels, v)| {
                let label = |k: &str| {
                    labels
                        .iter()
                        .find(|(l, _)| *l == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (label("path"), label("reason"), v as u64)
            })
            .collect();
        drops.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        let reloads = |result: &str| {
            self.registry
                .values("mip_key_reloads_total")
                .into_iter()
                .find(|(l, _)| l.iter().any(|(k, v)| *k == "result" && v == result))
                .map_or(0, |(_, v)| v as u64)
        };
        let mut doc = json!({
            "role": service.role(),
            "version": VERSION,
            "pid": std::process::id(),
            "admin": self.admin.to_string(),
            "started_at_unix_ms": unix_ms(self.started_wall),
            "now_unix_ms": unix_ms(now),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "ready": ready,
            "phase": phase.as_str(),
            "recent_registrations": registrations,
            "last_errors": errors,
            "drops": drops
                .into_iter()
                .map(|(path, reason, count)| json!({"path": path, "reason": reason, "count": count}))
                .collect::<Vec<_>>(),
            "key_reloads": {"ok": reloads("ok"), "error": reloads("error")},
        });
        if let (Value::Object(d), Value::Object(own)) = (&mut doc, service.status_json()) {
            d.extend(own);
        }
        doc.to_string()
    }
}

/// Runs a daemon with `settings` (keys file, admin address, SIGTERM and `/drain` drain, see the module
/// documentation) until SIGTERM. `build` creates the service once the keys are loaded. Returns an error message
/// for start-up failures (the caller prints it and exits non-zero). A SIGTERM or SIGINT that arrives before the
/// loop starts (during `build`, say) ends the run as soon as `build` returns, with [`Service::shutdown`].
pub fn run<S: Service>(
    settings: &DaemonSettings,
    build: impl FnOnce(&Context) -> Result<S, String>,
) -> Result<(), String> {
    let keys_file = settings.keys_file.as_path();
    let admin = settings.admin;
    let drain = Duration::from_millis(settings.drain_ms);
    // First: a TERM from here on must not kill the process halfway through installing kernel state.
    let mut signals = Signals::install().map_err(|e| format!("signal handlers: {e}"))?;
    let mut watcher = KeysWatcher::new(keys_file);
    let keys = watcher.load()?;
    let metrics = Arc::new(Registry::new());
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let stats = Stats::new(&metrics)?;
    let recorder = Recorder::default();
    let clock = Clock::new();
    // The poll and its waker exist before the service, so the service can hand the waker to its own threads.
    let mut poll = Poll::new().map_err(|e| format!("event loop: {e}"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN).map_err(|e| format!("event loop: {e}"))?);
    let ctx = Context {
        metrics: Arc::clone(&metrics),
        clock,
        keys,
        waker: Arc::clone(&waker),
        status: recorder.clone(),
    };
    if signals.terminate_requested() {
        tracing::info!("terminating before start-up");
        return Ok(());
    }
    let mut service = build(&ctx)?;
    if signals.terminate_requested() {
        tracing::info!("terminating during start-up");
        service.shutdown();
        return Ok(());
    }

    poll.registry()
        .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
        .map_err(|e| format!("event loop: {e}"))?;
    let drain_control = Drain::new(Arc::clone(&waker));
    if let Err(e) = Stats::build_info(&metrics, service.role()) {
        tracing::warn!(error = %e, "cannot register mip_build_info");
    }
    let (requests, queue): (Requests<String, Query>, RequestQueue<String, Query>) = Requests::new(waker, 16);
    service
        .register(poll.registry())
        .map_err(|e| format!("registering sockets: {e}"))?;

    let ready = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Admin {
        ready: Arc::clone(&ready),
        metrics: Arc::clone(&metrics),
        requests,
        drain: drain_control.clone(),
        remote_access: settings.admin_remote_access,
        refused: stats.admin_refused.clone(),
    });
    let server = AdminServer::spawn(admin, state).map_err(|e| format!("admin server on {admin}: {e}"))?;
    let status = StatusContext {
        registry: &metrics,
        recorder: &recorder,
        admin: server.local_addr(),
        started_wall: started.0,
        started: started.1,
    };
    tracing::info!(admin = %server.local_addr(), keys = %keys_file.display(), "started");
    stats.up.set(1);
    ready.store(service.serving(), Ordering::Relaxed);

    let mut events = Events::with_capacity(256);
    let mut phase = Phase::Serving;
    loop {
        let timer = match (service.next_timer(), phase.until()) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        };
        let wait = clock.timeout(timer, MAX_WAIT);
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(format!("event loop: {e}"));
        }
        let now = clock.now();
        for ev in events.iter() {
            match ev.token() {
                SIGNAL_TOKEN => signals.drain(),
                WAKER_TOKEN => {
                    queue.serve(|q| match q {
                        Query::Bindings => service.bindings_json(),
                        Query::Status => {
                            let ready = phase == Phase::Serving && service.serving();
                            status.document(&service, ready, phase)
                        }
                    });
                }
                t => service.ready(t, now),
            }
        }
        // SIGTERM first: one arriving with a `/drain` in the same turn is the first signal, not the second.
        if signals.take_terminate() {
            if phase != Phase::Serving || drain.is_zero() {
                break;
            }
            tracing::info!(drain_ms = drain.as_millis() as u64, "terminating: not ready, draining");
            phase = Phase::Draining {
                until: clock.instant() + drain,
                exit: true,
            };
            drain_control.set_phase(DrainPhase::Draining);
        }
        if drain_control.take_request() && phase == Phase::Serving {
            if drain.is_zero() {
                tracing::info!("drain requested (/drain), drain_ms 0: not ready, waiting for SIGTERM");
                phase = Phase::Drained;
                drain_control.set_phase(DrainPhase::Drained);
            } else {
                tracing::info!(
                    drain_ms = drain.as_millis() as u64,
                    "drain requested (/drain): not ready, draining"
                );
                phase = Phase::Draining {
                    until: clock.instant() + drain,
                    exit: false,
                };
                drain_control.set_phase(DrainPhase::Draining);
            }
        }
        if let Phase::Draining { until, exit } = phase
            && clock.instant() >= until
        {
            if exit {
                break;
            }
            tracing::info!("drained: not ready, waiting for SIGTERM");
            phase = Phase::Drained;
            drain_control.set_phase(DrainPhase::Drained);
        }
        if signals.take_hangup() {
            watcher.request_reload();
        }
        match watcher.poll() {
            Some(Ok(k)) => {
                service.set_keys(k);
                stats.key_reloads_ok.inc();
                tracing::info!(keys = %keys_file.display(), "keys reloaded");
            }
            Some(Err(e)) => {
                // Keep the old keys: a half-written file must not take the service down.
                stats.key_reloads_failed.inc();
                recorder.error("keys_reload", None, &e);
                tracing::error!(error = %e, "keys reload failed; keeping the previous keys");
            }
            None => {}
        }
        service.tick(clock.now());
        ready.store(phase == Phase::Serving && service.serving(), Ordering::Relaxed);
    }
    tracing::info!("terminating");
    ready.store(false, Ordering::Relaxed);
    // Whoever still waits on `/drain` (a drain cut short) gets the answer before the server goes.
    drain_control.set_phase(DrainPhase::Drained);
    service.shutdown();
    stats.up.set(0);
    server.shutdown();
    Ok(())
}

/// The command line every daemon takes.
#[derive(Debug, clap::Parser)]
#[command(version)]
struct Args {
    /// The configuration file (YAML; deploy/config/ shows every field with its default).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// The whole `main` of the daemon binary `name` (`about`: its `--help` description): parses `--config FILE`,
/// loads and validates the file (on error: `name: error` on stderr, exit code 2), starts logging in the format
/// of the file's `daemon` section (`settings`) and trace export if it names an endpoint or the environment does
/// ([`crate::telemetry`]; flushed when `main` returns), then calls `run` (on error: logged, exit code 1).
pub fn main<F: DeserializeOwned + Validate + crate::telemetry::TraceIdentity>(
    name: &'static str,
    about: &'static str,
    settings: impl Fn(&F) -> &DaemonSettings,
    run: impl FnOnce(F) -> Result<(), String>,
) -> ExitCode {
    main_with(name, about, |_| Ok(()), settings, run)
}

/// [`main`] with `prepare` applied to the parsed file before it is validated (settings from the environment,
/// say); an error from `prepare` is printed as `name: error` and exits with code 2, like an invalid file.
pub fn main_with<F: DeserializeOwned + Validate + crate::telemetry::TraceIdentity>(
    name: &'static str,
    about: &'static str,
    prepare: impl FnOnce(&mut F) -> Result<(), String>,
    settings: impl Fn(&F) -> &DaemonSettings,
    run: impl FnOnce(F) -> Result<(), String>,
) -> ExitCode {
    let matches = Args::command().name(name).about(about).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let file: F = match load_prepared(&args.config, prepare) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = crate::telemetry::init(name, settings(&file), &file.resource_attributes());
    if let Err(e) = run(file) {
        tracing::error!(error = %e, "{name} failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Parses the file at `path` (errors name the path and the field), applies `prepare`, then validates.
fn load_prepared<F: DeserializeOwned + Validate>(
    path: &std::path::Path,
    prepare: impl FnOnce(&mut F) -> Result<(), String>,
) -> Result<F, String> {
    let Unvalidated(mut file) = crate::load_config::<Unvalidated<F>>(path)?;
    prepare(&mut file)?;
    let errors = file.validate();
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(mip::config::render_errors(&path.display().to_string(), &errors))
    }
}

/// A file parsed but not validated yet (its [`Validate`] finds nothing), for [`load_prepared`].
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Unvalidated<F>(F);

impl<F> Validate for Unvalidated<F> {
    fn validate(&self) -> Vec<mip::config::ConfigError> {
        Vec::new()
    }
}

/// The result of one `recv_batch`/`read_batch` call on an edge-triggered source: `Some(true)` when the batch came
/// back full (more may be waiting), `Some(false)` when it holds the last datagrams, `None` when there is nothing
/// to handle (`WouldBlock`, or an error, logged as "receiving on {what}").
pub fn filled(r: io::Result<usize>, batch: &RecvBatch, what: &str) -> Option<bool> {
    match r {
        Ok(n) => Some(n >= batch.capacity()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => {
            tracing::warn!(error = %e, "receiving on {what}");
            None
        }
    }
}

/// Sends what `batch` holds through the raw `sender` and empties it. Packets the kernel refuses, or has no room
/// for, are added to `lost` and dropped (datagram semantics: no retry queue).
pub fn flush_raw(sender: &RawSocket, batch: &mut SendBatch, lost: &Counter) {
    if batch.is_empty() {
        return;
    }
    match sender.send_batch(batch) {
        Ok(o) => {
            let n = o.failed + o.unsent;
            if n > 0 {
                lost.add(n as u64);
            }
        }
        Err(e) => {
            lost.add(batch.len() as u64);
            tracing::debug!(error = %e, "raw send");
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::mpsc;

    /// Records its shutdown; registers nothing; serving when `serving` says so.
    struct Probe {
        shut_down: Arc<AtomicBool>,
        serving: Arc<AtomicBool>,
    }

    impl Service for Probe {
        fn register(&mut self, _: &MioRegistry) -> io::Result<()> {
            Ok(())
        }
        fn ready(&mut self, _: Token, _: Now) {}
        fn tick(&mut self, _: Now) {}
        fn next_timer(&mut self) -> Option<Instant> {
            None
        }
        fn set_keys(&mut self, _: KeyStore) {}
        fn bindings_json(&self) -> String {
            "[]".into()
        }
        fn role(&self) -> &'static str {
            "probe"
        }
        fn status_json(&self) -> Value {
            json!({"bindings": 0, "probe": true})
        }
        fn shutdown(&mut self) {
            self.shut_down.store(true, Ordering::SeqCst);
        }
        fn serving(&self) -> bool {
            self.serving.load(Ordering::SeqCst)
        }
    }

    fn write_keys(dir: &Path) -> PathBuf {
        let keys = dir.join("keys.yaml");
        std::fs::write(
            &keys,
            "security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: \"000102030405060708090a0b0c0d0e0f\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        keys
    }

    fn readyz(admin: SocketAddr) -> Option<u16> {
        get(admin, "/readyz").map(|(code, _)| code)
    }

    /// `GET path` (HTTP/1.0): status and body; waits up to 10 s for the answer.
    fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
    }

    /// Starts `run` with a [`Probe`] on a thread; waits until `/readyz` is 200. (shut down, run's result)
    fn start_probe(
        admin: SocketAddr,
        drain_ms: u64,
    ) -> (Arc<AtomicBool>, mpsc::Receiver<Result<(), String>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let keys = write_keys(dir.path());
        let shut_down = Arc::new(AtomicBool::new(false));
        let serving = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        {
            let shut_down = Arc::clone(&shut_down);
            std::thread::spawn(move || {
                let r = run(&settings(keys, admin, drain_ms), |_ctx| {
                    Ok(Probe { shut_down, serving })
                });
                tx.send(r).ok();
            });
        }
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while readyz(admin) != Some(200) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(readyz(admin), Some(200));
        (shut_down, rx, dir)
    }

    /// `GET /drain` (the preStop hook): `/readyz` turns 503 at once while the service keeps running, the answer
    /// comes when the drain time is over, the daemon then keeps running (not ready) until the SIGTERM, which
    /// shuts it down at once; a `/drain` during the drain waits for the same end, one after it answers at once.
    #[test]
    fn drain_request_withdraws_answers_after_the_drain_and_sigterm_then_exits_at_once() {
        let _signals = crate::signal_lock();
        let admin = SocketAddr::from(([127, 0, 0, 1], 19_440));
        let (shut_down, rx, _dir) = start_probe(admin, 1200);
        let sent = std::time::Instant::now();
        let first = std::thread::spawn(move || get(admin, "/drain"));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(readyz(admin), Some(503), "not ready while draining");
        assert!(!shut_down.load(Ordering::SeqCst), "still serving while draining");
        assert!(!first.is_finished(), "the answer waits for the drain's end");
        // A second caller waits for the same end, not a new drain.
        let second = std::thread::spawn(move || (get(admin, "/drain"), std::time::Instant::now()));
        let (code, body) = first.join().unwrap().expect("/drain answers");
        let took = sent.elapsed();
        assert_eq!((code, body.as_str()), (200, "drained\n"));
        assert!(took >= Duration::from_millis(1200), "{took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        let (answer, at) = second.join().unwrap();
        assert_eq!(answer.map(|a| a.0), Some(200));
        assert!(at.duration_since(sent) < Duration::from_millis(2500), "same end");
        // Drained: still running, not ready; another /drain answers at once.
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "the daemon waits for SIGTERM after the drain");
        assert!(!shut_down.load(Ordering::SeqCst));
        assert_eq!(readyz(admin), Some(503), "stays not ready");
        let again = std::time::Instant::now();
        assert_eq!(get(admin, "/drain").map(|a| a.0), Some(200));
        assert!(again.elapsed() < Duration::from_millis(500), "{:?}", again.elapsed());
        // The kubelet's SIGTERM: shut down at once, no second drain.
        let term = std::time::Instant::now();
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        let r = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("SIGTERM after /drain exits");
        assert_eq!(r, Ok(()));
        assert!(term.elapsed() < Duration::from_millis(500), "{:?}", term.elapsed());
        assert!(shut_down.load(Ordering::SeqCst));
    }

    /// With `drain_ms: 0` `/drain` answers at once (not ready from then on); SIGTERM ends the daemon.
    #[test]
    fn drain_request_with_no_drain_time_answers_at_once() {
        let _signals = crate::signal_lock();
        let admin = SocketAddr::from(([127, 0, 0, 1], 19_441));
        let (shut_down, rx, _dir) = start_probe(admin, 0);
        let sent = std::time::Instant::now();
        assert_eq!(get(admin, "/drain"), Some((200, "drained\n".to_string())));
        assert!(sent.elapsed() < Duration::from_millis(500), "{:?}", sent.elapsed());
        assert_eq!(readyz(admin), Some(503));
        assert!(!shut_down.load(Ordering::SeqCst));
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        let r = rx.recv_timeout(Duration::from_secs(2)).expect("SIGTERM exits");
        assert_eq!(r, Ok(()));
        assert!(shut_down.load(Ordering::SeqCst));
    }

    /// A `/drain` during a SIGTERM drain waits for its end and is answered before the daemon exits.
    #[test]
    fn drain_request_during_a_sigterm_drain_is_answered_at_its_end() {
        let _signals = crate::signal_lock();
        let admin = SocketAddr::from(([127, 0, 0, 1], 19_442));
        let (shut_down, rx, _dir) = start_probe(admin, 800);
        let sent = std::time::Instant::now();
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let answer = get(admin, "/drain");
        assert_eq!(answer.map(|a| a.0), Some(200));
        assert!(sent.elapsed() >= Duration::from_millis(800), "{:?}", sent.elapsed());
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("run returns after the drain");
        assert_eq!(r, Ok(()));
        assert!(shut_down.load(Ordering::SeqCst));
    }

    /// Through serde, so the fields the file may leave out keep their defaults.
    fn settings(keys_file: PathBuf, admin: SocketAddr, drain_ms: u64) -> DaemonSettings {
        serde_json::from_value(json!({
            "keys_file": keys_file,
            "admin": admin.to_string(),
            "log_format": "text",
            "drain_ms": drain_ms,
        }))
        .unwrap()
    }

    /// SIGTERM with a drain: `/readyz` turns 503 at once while the service keeps running for the drain, then
    /// it shuts down; a second SIGTERM ends the drain early.
    #[test]
    fn sigterm_drains_not_ready_then_shuts_down_and_a_second_signal_cuts_it_short() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        for (admin_port, second) in [(19_438u16, false), (19_439, true)] {
            let keys = write_keys(dir.path());
            let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
            let shut_down = Arc::new(AtomicBool::new(false));
            let serving = Arc::new(AtomicBool::new(true));
            let (tx, rx) = mpsc::channel();
            {
                let (serving, shut_down) = (Arc::clone(&serving), Arc::clone(&shut_down));
                std::thread::spawn(move || {
                    let r = run(&settings(keys, admin, 1500), |_ctx| Ok(Probe { shut_down, serving }));
                    tx.send(r).ok();
                });
            }
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while readyz(admin) != Some(200) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(readyz(admin), Some(200));
            let sent = std::time::Instant::now();
            signal_hook::low_level::raise(libc::SIGTERM).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(readyz(admin), Some(503), "not ready while draining");
            assert!(!shut_down.load(Ordering::SeqCst), "still serving while draining");
            if second {
                signal_hook::low_level::raise(libc::SIGTERM).unwrap();
                let r = rx
                    .recv_timeout(Duration::from_secs(1))
                    .expect("a second SIGTERM ends the drain");
                assert_eq!(r, Ok(()));
                assert!(sent.elapsed() < Duration::from_millis(1500), "{:?}", sent.elapsed());
            } else {
                let r = rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("run returns after the drain");
                assert_eq!(r, Ok(()));
                assert!(sent.elapsed() >= Duration::from_millis(1500), "{:?}", sent.elapsed());
            }
            assert!(shut_down.load(Ordering::SeqCst));
        }
    }

    /// `/readyz` follows [`Service::serving`] (a replica not caught up yet is not ready), and the waker in the
    /// context wakes the loop.
    #[test]
    fn readyz_follows_the_services_serving() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let keys = write_keys(dir.path());
        let admin = SocketAddr::from(([127, 0, 0, 1], 19_437));
        let serving = Arc::new(AtomicBool::new(false));
        let shut_down = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (wtx, wrx) = mpsc::channel();
        {
            let (serving, shut_down) = (Arc::clone(&serving), Arc::clone(&shut_down));
            std::thread::spawn(move || {
                let r = run(&settings(keys, admin, 0), |ctx| {
                    wtx.send(Arc::clone(&ctx.waker)).ok();
                    Ok(Probe { shut_down, serving })
                });
                tx.send(r).ok();
            });
        }
        let waker = wrx.recv_timeout(Duration::from_secs(5)).unwrap();
        let until = |want: u16| {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < end {
                if readyz(admin) == Some(want) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        assert!(until(503), "not ready while the service is not serving");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(readyz(admin), Some(503));
        serving.store(true, Ordering::SeqCst);
        waker.wake().unwrap();
        let woke = std::time::Instant::now();
        assert!(until(200), "ready once serving");
        assert!(
            woke.elapsed() < Duration::from_millis(900),
            "the waker ran the loop at once"
        );
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("run returns after SIGTERM");
        assert_eq!(r, Ok(()));
        assert!(shut_down.load(Ordering::SeqCst));
    }

    /// `/status`: the skeleton's fields, the service's own merged in, what the service recorded in
    /// [`Context::status`] (newest first), and the drop counters above zero; `/metrics` has the build info.
    #[test]
    fn status_shows_role_uptime_records_drops_and_the_services_fields() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let keys = write_keys(dir.path());
        let admin = SocketAddr::from(([127, 0, 0, 1], 19_443));
        let shut_down = Arc::new(AtomicBool::new(false));
        let serving = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        {
            let (serving, shut_down) = (Arc::clone(&serving), Arc::clone(&shut_down));
            std::thread::spawn(move || {
                let r = run(&settings(keys, admin, 0), |ctx| {
                    let o = mip::roles::RegistrationOutcome {
                        home_address: "10.10.1.50".parse().unwrap(),
                        care_of_address: "192.0.2.10".parse().unwrap(),
                        home_agent: Some("10.10.1.1".parse().unwrap()),
                        code: mip::wire::ReplyCode::Accepted,
                        lifetime: 600,
                        nat_detected: false,
                    };
                    ctx.status.outcome(&o, Some("joe@example.com"));
                    let denied = mip::roles::RegistrationOutcome {
                        code: mip::wire::ReplyCode::HaMnAuthFailed,
                        ..o
                    };
                    ctx.status.outcome(&denied, None);
                    let peer = Some(SocketAddr::from(([203, 0, 113, 9], 434)));
                    ctx.status.drop("bad_authenticator", peer);
                    ctx.status.drop("bad_authenticator", peer);
                    ctx.metrics
                        .counter(
                            "mip_drops_total",
                            "Drops.",
                            &[("path", "control"), ("reason", "bad_authenticator")],
                        )
                        .unwrap()
                        .add(2);
                    ctx.metrics
                        .counter(
                            "mip_drops_total",
                            "Drops.",
                            &[("path", "control"), ("reason", "truncated")],
                        )
                        .unwrap();
                    Ok(Probe { shut_down, serving })
                });
                tx.send(r).ok();
            });
        }
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while readyz(admin) != Some(200) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (code, body) = get(admin, "/status").unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["role"], "probe");
        assert_eq!(v["version"], VERSION);
        assert_eq!(v["ready"], true);
        assert_eq!(v["phase"], "serving");
        assert_eq!(v["admin"], "127.0.0.1:19443");
        assert_eq!(v["bindings"], 0, "the service's own field");
        assert_eq!(v["probe"], true);
        assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert!(v["now_unix_ms"].as_u64().unwrap() >= v["started_at_unix_ms"].as_u64().unwrap());
        let regs = v["recent_registrations"].as_array().unwrap();
        assert_eq!(regs.len(), 2, "{v}");
        assert_eq!(regs[0]["code"], 131, "newest first");
        assert_eq!(regs[0]["accepted"], false);
        assert_eq!(regs[1]["code"], 0);
        assert_eq!(regs[1]["nai"], "joe@example.com");
        assert_eq!(regs[1]["home_address"], "10.10.1.50");
        assert_eq!(regs[1]["care_of_address"], "192.0.2.10");
        let errors = v["last_errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "two identical drops in a row are one entry: {v}");
        assert_eq!(errors[0]["count"], 2);
        assert_eq!(errors[0]["what"], "bad_authenticator");
        assert_eq!(errors[0]["peer"], "203.0.113.9:434");
        assert_eq!(
            v["drops"],
            json!([{"path": "control", "reason": "bad_authenticator", "count": 2}]),
            "only counters above zero"
        );
        assert_eq!(v["key_reloads"], json!({"ok": 0, "error": 0}));
        let (_, metrics) = get(admin, "/metrics").unwrap();
        let line = format!("mip_build_info{{role=\"probe\",version=\"{VERSION}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{metrics}");
        assert!(metrics.contains("\nmip_start_time_seconds 1"), "{metrics}");
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("run returns after SIGTERM");
        assert_eq!(r, Ok(()));
    }

    /// Every series the skeleton registers is listed in docs/metrics.md, under "Every daemon".
    #[test]
    fn skeleton_metrics_are_documented() {
        let r = Registry::new();
        let _stats = Stats::new(&r).unwrap();
        Stats::build_info(&r, "probe").unwrap();
        crate::metrics::tests::assert_documented(&r, "Every daemon");
    }

    /// A SIGTERM while `build` runs (installing kernel state, in a real daemon) neither kills the process nor is
    /// lost: `run` returns once `build` is done, after the service's shutdown.
    #[test]
    fn sigterm_during_build_shuts_the_service_down_after_build() {
        let _signals = crate::signal_lock();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        std::fs::write(
            &keys,
            "security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: \"000102030405060708090a0b0c0d0e0f\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shut_down = Arc::new(AtomicBool::new(false));
        let serving = Arc::new(AtomicBool::new(true));
        let built = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let (shut_down, built) = (Arc::clone(&shut_down), Arc::clone(&built));
            let serving = Arc::clone(&serving);
            std::thread::spawn(move || {
                let r = run(&settings(keys, SocketAddr::from(([127, 0, 0, 1], 0)), 0), |_ctx| {
                    signal_hook::low_level::raise(libc::SIGTERM).unwrap();
                    // Still building after the signal: the process must survive until build returns.
                    std::thread::sleep(Duration::from_millis(50));
                    built.store(true, Ordering::SeqCst);
                    Ok(Probe { shut_down, serving })
                });
                tx.send(r).ok();
            });
        }
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("run did not return after a SIGTERM during build");
        assert_eq!(r, Ok(()));
        assert!(built.load(Ordering::SeqCst), "build ran to its end");
        assert!(shut_down.load(Ordering::SeqCst), "shutdown ran");
        drop(dir);
    }
}

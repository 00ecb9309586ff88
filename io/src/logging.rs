//! Logging set-up for the daemons: `tracing` with a `RUST_LOG`-style filter (default `info`), plain text or JSON
//! lines, written to stderr by a background thread. Text lines are coloured only when stderr is a terminal, so a
//! log redirected to a file or a pipe carries no ANSI escape codes.
//!
//! Logging never blocks the caller: events go through a bounded in-memory queue to the writer thread, and when
//! the queue is full (stderr stalled) lines are dropped rather than waited for. The data path logs nothing per
//! packet anyway (counters only); this protects the control path from a slow log sink.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::registry::LookupSpan;

/// Lines buffered for the writer thread before new ones are dropped.
pub const QUEUE_LINES: usize = 16_384;

/// Keeps the log writer thread alive; dropping it flushes what is queued. Hold it in `main` until exit.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// The filter from `RUST_LOG`, or `default` when it is unset; `Err` carries the reason when `RUST_LOG` is set but
/// invalid (the filter is then `default`).
pub fn env_filter(default: &str) -> (EnvFilter, Option<String>) {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                fallback(default),
                Some(format!("RUST_LOG={v:?} is invalid ({e}); using {default:?}")),
            ),
        },
        _ => (fallback(default), None),
    }
}

fn fallback(default: &str) -> EnvFilter {
    EnvFilter::try_new(default).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`), JSON lines when `json`, text lines
/// with colours only when stderr is a terminal. A second call (or a subscriber installed elsewhere) leaves the
/// first in place.
pub fn init(json: bool) -> LogGuard {
    init_with(json, "info")
}

/// As [`init`] with another default filter.
pub fn init_with(json: bool, default_filter: &str) -> LogGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let (layer, guard, problem) = layer(json, default_filter);
    let installed = tracing_subscriber::registry().with(layer).try_init().is_ok();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
    guard_if(installed, guard)
}

/// A [`LogGuard`] holding `guard` when the subscriber it writes for was installed.
pub(crate) fn guard_if(installed: bool, guard: WorkerGuard) -> LogGuard {
    LogGuard {
        _guard: installed.then_some(guard),
    }
}

/// The log layer [`init_with`] installs, for a subscriber that adds other layers ([`crate::telemetry`]): its
/// filter from `RUST_LOG` (else `default_filter`) never lets spans of [`crate::telemetry::TARGET`] through
/// (they are exported, not logged), the writer guard, and the problem with `RUST_LOG` to log once installed.
pub(crate) fn layer<S>(
    json: bool,
    default_filter: &str,
) -> (Box<dyn Layer<S> + Send + Sync>, WorkerGuard, Option<String>)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let (filter, problem) = env_filter(default_filter);
    let filter = filter.and(filter_fn(|m| !m.target().starts_with(crate::telemetry::TARGET)));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("mip-log")
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    (layer, guard, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        let g1 = init(true);
        let g2 = init(false);
        tracing::info!(answer = 42, "logging works");
        drop(g2);
        drop(g1);
    }

    /// Set in the child process of `text_logs_to_a_file_have_no_colour_codes`.
    const CHILD: &str = "MIP_IO_LOGGING_TEST_CHILD";

    /// Only does something in the child: logs one text line to stderr (a file there).
    #[test]
    fn log_one_text_line_if_child() {
        if std::env::var_os(CHILD).is_some() {
            let g = init(false);
            tracing::warn!(answer = 42, "colour check");
            drop(g);
        }
    }

    #[test]
    fn text_logs_to_a_file_have_no_colour_codes() {
        let path = std::env::temp_dir().join(format!("mip-io-log-{}.txt", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "logging::tests::log_one_text_line_if_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(status.success(), "child failed:\n{text}");
        assert!(text.contains("colour check"), "the line was not logged:\n{text}");
        assert!(!text.contains('\x1b'), "ANSI escape codes in a log file:\n{text:?}");
    }

    #[test]
    fn default_filter() {
        let f = fallback("debug,mip_io=trace");
        assert!(f.to_string().contains("mip_io=trace"));
        assert_eq!(fallback("=not a filter[").to_string(), "info");
    }
}

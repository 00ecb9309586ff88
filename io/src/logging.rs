//! Logging set-up for the daemons: `tracing` with a `RUST_LOG`-style filter (default `info`), plain text or JSON
//! lines, written to stderr by a background thread.
//!
//! Logging never blocks the caller: events go through a bounded in-memory queue to the writer thread, and when
//! the queue is full (stderr stalled) lines are dropped rather than waited for. The data path logs nothing per
//! packet anyway (counters only); this protects the control path from a slow log sink.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`), JSON lines when `json`. A second call
/// (or a subscriber installed elsewhere) leaves the first in place.
pub fn init(json: bool) -> LogGuard {
    init_with(json, "info")
}

/// As [`init`] with another default filter.
pub fn init_with(json: bool, default_filter: &str) -> LogGuard {
    let (filter, problem) = env_filter(default_filter);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("mip-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .is_ok()
    } else {
        builder.try_init().is_ok()
    };
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
    LogGuard {
        _guard: installed.then_some(guard),
    }
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

    #[test]
    fn default_filter() {
        let f = fallback("debug,mip_io=trace");
        assert!(f.to_string().contains("mip_io=trace"));
        assert_eq!(fallback("=not a filter[").to_string(), "info");
    }
}

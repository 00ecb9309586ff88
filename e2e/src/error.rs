//! The harness's error type. Every failure of an external tool names the namespace it ran in, the command line
//! and the tool's stderr, so a failing test says what broke without a rerun.

use std::io;
use std::time::Duration;

/// Result alias of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and exited unsuccessfully.
    #[error("[{ns}] `{cmd}` failed ({status}): {stderr}")]
    Command {
        /// Full namespace name, or `root` for commands that run in the root namespace (`ip netns add`, ...).
        ns: String,
        /// The command line.
        cmd: String,
        /// Exit status as text (`exit status: 2`, `signal: 9`).
        status: String,
        /// The command's stderr, trimmed (and its stdout when stderr was empty).
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("[{ns}] could not start `{cmd}`: {source}")]
    Spawn {
        /// Namespace.
        ns: String,
        /// The command line.
        cmd: String,
        /// The OS error.
        source: io::Error,
    },
    /// A Debian tool the lab needs is not installed.
    #[error("missing tool `{tool}` ({why}): run scripts/setup.sh")]
    MissingTool {
        /// The executable that was not found.
        tool: String,
        /// What it is needed for.
        why: String,
    },
    /// A polled condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition, in words.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// Tool output that did not have the expected shape.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// The lab is used in a way it does not support (bad prefix, not root, ...).
    #[error("{0}")]
    Usage(String),
    /// Ctrl-C / SIGTERM arrived while a long operation was running.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A parse error.
    pub fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// `.ctx("doing X")` on `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

/// [`Error::Interrupted`] once `stop` is set (Ctrl-C / SIGTERM handlers set it); long runs call this between steps.
pub fn interrupted(stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

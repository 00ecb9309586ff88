//! Running code of this process inside a lab namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life, whichever
//! thread uses it later. So the probe, the TCP transfer and the small test servers create their sockets on a
//! short-lived thread that has joined the namespace (`setns(CLONE_NEWNET)` affects only the calling thread),
//! and then use them from ordinary threads. That keeps one monotonic clock for probes and hand-off marks, and
//! needs no helper process.

use std::fs::File;
use std::thread::{self, JoinHandle};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, IoContext, Result};

/// The bind-mounted namespace file that `ip netns add` creates.
pub fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Moves the calling thread into network namespace `ns` (full name).
fn enter(ns: &str) -> Result<()> {
    let f = File::open(ns_path(ns)).ctx(|| format!("opening network namespace {ns}"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io(format!("setns into {ns}"), e.into()))
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    spawn_in(ns, "netns-run", f)?
        .join()
        .map_err(|_| Error::Usage(format!("thread in namespace {ns} panicked")))?
}

/// Starts a named thread inside namespace `ns`; the namespace is joined before `f` runs (a failure to join
/// is `f`'s result).
pub fn spawn_in<T, F>(ns: &str, name: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_owned();
    thread::Builder::new()
        .name(format!("{name}@{ns}"))
        .spawn(move || {
            enter(&ns)?;
            f()
        })
        .ctx(|| format!("spawning thread {name}"))
}

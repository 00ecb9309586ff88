//! The harness's stand-in for BFD plus a route controller in front of the proxy replicas (Replicas mode).
//!
//! In a deployment the ECMP group in front of the replicas loses a next hop when BFD declares the replica down
//! (typically 3 missed 50 ms intervals) or when the replica withdraws itself (BGP route withdrawal, or the
//! Kubernetes readiness that a route controller follows). Here one thread per replica, inside the replica's
//! namespace, asks its `/readyz` every [`BfdOptions::interval`] with timeouts of one interval; after
//! [`BfdOptions::multiplier`] consecutive failures (refused, timed out, or not 200: a draining replica answers
//! 503) the replica is down and its next hop leaves the ECMP router's multipath routes in one `ip -batch`;
//! one success brings it back. Every change is recorded with its time, so a benchmark can split an
//! interruption into detection and the rest.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cmd::ip_batch;
use crate::error::{Error, Result};
use crate::netns;
use crate::system::ADMIN;
use crate::topology::{Lab, replica_routes};

/// Detection settings.
#[derive(Debug, Clone, Copy)]
pub struct BfdOptions {
    /// Probe interval (also each probe's timeout).
    pub interval: Duration,
    /// Consecutive failures that declare a replica down.
    pub multiplier: u32,
}

impl Default for BfdOptions {
    /// 50 ms × 3, a common BFD setting for a data-centre fabric.
    fn default() -> Self {
        BfdOptions {
            interval: Duration::from_millis(50),
            multiplier: 3,
        }
    }
}

/// One next-hop change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdEvent {
    /// Replica index (0 = `px1`).
    pub replica: usize,
    /// Whether it came up (restored) or went down (withdrawn).
    pub up: bool,
    /// When the ECMP routes had changed.
    pub at: Instant,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// Which replicas are next hops now, and every change.
    state: Mutex<(Vec<bool>, Vec<BfdEvent>)>,
    ecmp_ns: String,
}

/// Running detectors; dropping them stops the threads (the routes stay as they are).
#[derive(Debug)]
pub struct Bfd {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Bfd {
    /// Starts one detector per replica of `lab` (Replicas mode), beginning from the lab's current next hops.
    pub fn start(lab: &Lab, opts: BfdOptions) -> Result<Bfd> {
        let names = lab.replicas();
        if names.is_empty() {
            return Err(Error::Usage("Bfd::start: the lab is not in Replicas mode".into()));
        }
        let up: Vec<bool> = (0..names.len()).map(|i| lab.replica_nexthops().contains(&i)).collect();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new((up, Vec::new())),
            ecmp_ns: lab.ns("ecmp"),
        });
        let admin: SocketAddr = ADMIN.parse().map_err(|_| Error::Usage("bad admin address".into()))?;
        let mut threads = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let sh = Arc::clone(&shared);
            threads.push(netns::spawn_in(&lab.ns(name), "bfd", move || {
                detect(&sh, i, admin, opts)
            })?);
        }
        Ok(Bfd { shared, threads })
    }

    /// The replicas that are next hops now.
    pub fn nexthops(&self) -> Vec<usize> {
        self.shared
            .state
            .lock()
            .map(|s| s.0.iter().enumerate().filter(|(_, u)| **u).map(|(i, _)| i).collect())
            .unwrap_or_default()
    }

    /// Every change so far.
    pub fn events(&self) -> Vec<BfdEvent> {
        self.shared.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }

    /// Waits until replica `i` is up (`up`) or down; returns when its routes changed.
    pub fn wait(&self, i: usize, up: bool, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.shared.state.lock()
                && s.0.get(i) == Some(&up)
            {
                let at = s.1.iter().rev().find(|e| e.replica == i && e.up == up).map(|e| e.at);
                return Ok(at.unwrap_or_else(Instant::now));
            }
            if Instant::now() >= deadline {
                let what = if up { "restored" } else { "withdrawn" };
                return Err(Error::Usage(format!("replica {i} not {what} within {timeout:?}")));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the detectors; returns the next hops they left (give them to `Lab::set_replica_nexthops`).
    pub fn stop(mut self) -> Result<Vec<usize>> {
        self.halt()?;
        Ok(self.nexthops())
    }

    fn halt(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().map_err(|_| Error::Usage("a BFD thread panicked".into()))??;
        }
        Ok(())
    }
}

impl Drop for Bfd {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// One replica's detector, inside its namespace.
fn detect(sh: &Shared, i: usize, admin: SocketAddr, opts: BfdOptions) -> Result<()> {
    let mut misses = 0u32;
    while !sh.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let ok = ready(admin, opts.interval);
        misses = if ok { 0 } else { misses.saturating_add(1) };
        let want_up = if ok {
            Some(true)
        } else if misses >= opts.multiplier {
            Some(false)
        } else {
            None
        };
        if let Some(up) = want_up {
            set(sh, i, up)?;
        }
        if let Some(rest) = opts.interval.checked_sub(started.elapsed()) {
            thread::sleep(rest);
        }
    }
    Ok(())
}

/// Whether the admin server answers `/readyz` with 200 within `timeout` (connect and answer).
fn ready(admin: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&admin, timeout) else {
        return false;
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    if s.set_read_timeout(Some(left)).is_err() || s.write_all(b"GET /readyz HTTP/1.0\r\nHost: bfd\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && head.ends_with(b"200")
}

/// Sets replica `i`'s state; on a change, rewrites the ECMP routes (under the lock, so changes apply in order).
fn set(sh: &Shared, i: usize, up: bool) -> Result<()> {
    let mut s = sh
        .state
        .lock()
        .map_err(|_| Error::Usage("BFD state lock poisoned".into()))?;
    if s.0.get(i) == Some(&up) {
        return Ok(());
    }
    if let Some(slot) = s.0.get_mut(i) {
        *slot = up;
    }
    let sel: Vec<usize> = s.0.iter().enumerate().filter(|(_, u)| **u).map(|(k, _)| k).collect();
    ip_batch(Some(&sh.ecmp_ns), &replica_routes(&sel))?;
    s.1.push(BfdEvent {
        replica: i,
        up,
        at: Instant::now(),
    });
    Ok(())
}

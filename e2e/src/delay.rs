//! Userspace delay line on a TUN device (the kernel here has no `sch_netem`), the Rust successor of
//! shared/lab/tundelay.py.
//!
//! `e2e delay --dev dly0 --delay-ms N --iifs a,b,...` runs inside ns `inet` (started with `ip netns exec` by
//! [`crate::Lab::set_delay`]). It creates the TUN, routes table `--table` entirely into it
//! (`default dev dly0`) and adds `ip rule iif <each> lookup <table>`, so every packet inet forwards from those
//! interfaces enters the TUN. The program holds each packet for N ms and writes it back into the same TUN,
//! where it arrives with `iif dly0`, matches no rule and is forwarded by the main table. Each transit of inet
//! therefore costs N ms; the RTT between two hosts on either side grows by 2N. Locally addressed packets are
//! never delayed (the `local` table comes before the rules).
//!
//! Data path: a fixed ring of reusable buffers circulates between two threads through bounded channels, so
//! no packet allocates.
//! * the reader puts the TUN in non-blocking mode and reads back to back until `EAGAIN` (a batch), polling
//!   only when the queue is empty; each packet is stamped `Instant::now() + delay` on arrival;
//! * the writer keeps the packets in arrival order (a constant delay keeps due times sorted), sleeps on the
//!   channel until the head is due (`recv_timeout` has nanosecond resolution, unlike poll(2)'s milliseconds),
//!   then writes every due packet and returns its buffer to the free ring.
//!
//! All times come from the monotonic clock. When the ring is exhausted (more than `slots` packets in flight)
//! packets are dropped and counted, like a full netem queue.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::Cmd;
use crate::error::{Error, IoContext, Result};

/// Largest packet the ring holds: the TUN MTU (1500, like every lab link) plus headroom.
pub const BUF_LEN: usize = 2048;
/// MTU of the delay TUN; equal to the veths' so the detour never fragments.
pub const MTU: u16 = 1500;
/// How often an idle reader/writer looks at the stop flag.
const IDLE: Duration = Duration::from_millis(100);

/// Options of `e2e delay`.
#[derive(Debug, Clone)]
pub struct DelayConfig {
    /// TUN device name.
    pub dev: String,
    /// One-way delay per transit.
    pub delay: Duration,
    /// Interfaces whose forwarded packets are delayed.
    pub iifs: Vec<String>,
    /// Routing table (and rule preference) for the detour.
    pub table: u32,
    /// Ring size: packets that can be in flight at once.
    pub slots: usize,
}

/// Counters printed when the delay line stops.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DelayStats {
    /// Packets delayed and written back.
    pub forwarded: u64,
    /// Packets dropped because the ring was full.
    pub dropped_ring_full: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Largest lateness of a write behind its due time, in microseconds.
    pub max_late_us: u64,
}

struct Pkt {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

fn ip(args: &[&str]) -> Result<()> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    Cmd::new(argv).run().map(drop)
}

/// Removes this delay line's rules (each `iif X lookup table` at preference `table`), however many copies.
fn del_rules(cfg: &DelayConfig) {
    let t = cfg.table.to_string();
    for iif in &cfg.iifs {
        // A failing `rule del` means there is none left.
        while ip(&["rule", "del", "pref", &t, "iif", iif, "lookup", &t]).is_ok() {}
    }
}

/// Runs the delay line until `stop` is set: TUN, routes, rules, data path; removes the rules on the way out.
/// Prints `delay: ready <N> ms` once packets flow through it.
pub fn run(cfg: &DelayConfig, stop: Arc<AtomicBool>) -> Result<DelayStats> {
    let mut tc = tun::Configuration::default();
    tc.tun_name(&cfg.dev).mtu(MTU).up();
    let dev = tun::create(&tc).map_err(|e| Error::io(format!("creating TUN {}", cfg.dev), e.into()))?;
    dev.set_nonblock().ctx(|| format!("O_NONBLOCK on {}", cfg.dev))?;

    let t = cfg.table.to_string();
    // Forwarded packets leave through the TUN, so its reverse-path check must not drop them when they
    // come back in (the namespace default is 0 already; this makes it independent of that).
    Cmd::new(["sysctl", "-qw", &format!("net.ipv4.conf.{}.rp_filter=0", cfg.dev)]).run()?;
    ip(&["route", "replace", "default", "dev", &cfg.dev, "table", &t])?;
    del_rules(cfg);
    for iif in &cfg.iifs {
        ip(&["rule", "add", "pref", &t, "iif", iif, "lookup", &t])?;
    }

    let (mut reader, mut writer) = dev.split();
    let slots = cfg.slots.max(16);
    let (free_tx, free_rx) = mpsc::sync_channel::<Box<[u8]>>(slots);
    let (full_tx, full_rx) = mpsc::sync_channel::<Pkt>(slots);
    for _ in 0..slots {
        // Cannot fail: the channel has room for exactly `slots` buffers.
        let _ = free_tx.try_send(vec![0u8; BUF_LEN].into_boxed_slice());
    }

    let delay = cfg.delay;
    let rstop = Arc::clone(&stop);
    let reader_thread = thread::Builder::new()
        .name("delay-reader".into())
        .spawn(move || read_loop(&mut reader, delay, &free_rx, &full_tx, &rstop))
        .ctx(|| "spawning the delay reader".into())?;

    println!(
        "delay: ready {} ms on {} for {}",
        cfg.delay.as_millis(),
        cfg.dev,
        cfg.iifs.join(",")
    );
    let _ = std::io::stdout().flush();

    let mut stats = write_loop(&mut writer, &full_rx, &free_tx, &stop, slots);
    stop.store(true, Ordering::Relaxed);
    let dropped = reader_thread
        .join()
        .map_err(|_| Error::Usage("delay reader thread panicked".into()))??;
    stats.dropped_ring_full = dropped;
    del_rules(cfg);
    let _ = ip(&["route", "flush", "table", &t]);
    Ok(stats)
}

/// Reads packets as long as the TUN has any (a batch), stamps them and hands them to the writer. Returns the
/// number dropped for want of a free buffer.
fn read_loop(
    reader: &mut tun::Reader,
    delay: Duration,
    free: &Receiver<Box<[u8]>>,
    full: &SyncSender<Pkt>,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut scratch = vec![0u8; BUF_LEN];
    let mut dropped = 0u64;
    let mut cur: Option<Box<[u8]>> = None;
    while !stop.load(Ordering::Relaxed) {
        if cur.is_none() {
            cur = match free.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            };
        }
        let target: &mut [u8] = match cur.as_deref_mut() {
            Some(b) => b,
            None => &mut scratch,
        };
        let n = match reader.read(target) {
            Ok(n) => n,
            // Queue drained: wait (poll) for the next packet, which recv_timeout also reads.
            Err(e) if e.kind() == ErrorKind::WouldBlock => match reader.recv_timeout(target, IDLE) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(Error::io("reading the delay TUN", e)),
            },
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the delay TUN", e)),
        };
        let due = Instant::now() + delay;
        match cur.take() {
            Some(buf) => {
                if full.send(Pkt { due, len: n, buf }).is_err() {
                    break;
                }
            }
            None => dropped += 1,
        }
    }
    Ok(dropped)
}

/// Writes packets back when due; returns buffers to the free ring.
fn write_loop(
    writer: &mut tun::Writer,
    full: &Receiver<Pkt>,
    free: &SyncSender<Box<[u8]>>,
    stop: &AtomicBool,
    slots: usize,
) -> DelayStats {
    let mut stats = DelayStats::default();
    let mut queue: VecDeque<Pkt> = VecDeque::with_capacity(slots);
    loop {
        let now = Instant::now();
        while queue.front().is_some_and(|p| p.due <= now) {
            let Some(p) = queue.pop_front() else { break };
            let late = now.saturating_duration_since(p.due).as_micros() as u64;
            stats.max_late_us = stats.max_late_us.max(late);
            match p.buf.get(..p.len).map(|b| writer.write(b)) {
                Some(Ok(_)) => stats.forwarded += 1,
                _ => stats.write_errors += 1,
            }
            let _ = free.try_send(p.buf);
        }
        if stop.load(Ordering::Relaxed) {
            return stats;
        }
        let wait = queue
            .front()
            .map_or(IDLE, |p| p.due.saturating_duration_since(Instant::now()));
        match full.recv_timeout(wait) {
            Ok(p) => {
                queue.push_back(p);
                // Take whatever else the reader has queued in one go.
                while let Ok(p) = full.try_recv() {
                    queue.push_back(p);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The reader is gone: flush what is still queued, on time, then stop.
                if queue.is_empty() {
                    return stats;
                }
                thread::sleep(wait);
            }
        }
    }
}

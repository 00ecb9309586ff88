//! Traffic probes: a UDP echo server (run in ns `cn` as `e2e echo`), a prober that measures the interruption
//! of a hand-off, and a checksummed TCP transfer.
//!
//! The prober sends a sequence-numbered 16-byte datagram every `interval` (1 ms by default) on a fixed
//! schedule and records the send time of each and the arrival time of each echo, on the monotonic clock
//! shared with [`crate::topology::HandoffMarks`]. The **interruption** is the longest gap between two
//! consecutive echoed probes: the time between sending the last probe that came back before the gap and the
//! first one after it, less one interval. With a regular schedule that is "consecutive lost probes ×
//! interval", the definition of the lab README and FINDINGS.md. Send errors (`ENETUNREACH` while routes
//! change) are counted, and such probes count as lost.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::netns;
use crate::plan;
use crate::topology::HandoffMarks;

/// First four bytes of every probe datagram ("MIPE").
pub const MAGIC: u32 = 0x4d49_5045;
/// Probe datagram size: magic, run id, sequence number.
pub const PAYLOAD_LEN: usize = 16;
/// If the sender falls further behind its schedule than this (descheduled), it restarts the schedule
/// instead of sending a burst.
const RESYNC: Duration = Duration::from_millis(50);
/// Socket read timeout of the receive loops, i.e. how fast they notice a stop request.
const READ_TICK: Duration = Duration::from_millis(20);

/// Echoes every datagram back to its sender until `stop` is set; returns the number echoed.
pub fn echo_loop(sock: &UdpSocket, stop: &AtomicBool) -> Result<u64> {
    sock.set_read_timeout(Some(READ_TICK * 5))
        .ctx(|| "setting the echo socket's read timeout".into())?;
    let mut buf = [0u8; 2048];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                // A failed echo (no route back yet) is the prober's loss, not our error.
                if sock.send_to(buf.get(..len).unwrap_or_default(), from).is_ok() {
                    n += 1;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Error::io("echo server recv", e)),
        }
    }
    Ok(n)
}

/// `e2e echo`: binds `0.0.0.0:port` in the current namespace and echoes until `stop`.
pub fn echo_server(port: u16, stop: &AtomicBool) -> Result<u64> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).ctx(|| format!("binding UDP port {port}"))?;
    println!("echo: ready on udp port {port}");
    let _ = std::io::stdout().flush();
    echo_loop(&sock, stop)
}

/// Prober settings.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    /// Where the echo server listens.
    pub target: SocketAddrV4,
    /// Send interval.
    pub interval: Duration,
    /// How long [`Prober::stop`] waits at most for echoes still in flight.
    pub drain: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            target: SocketAddrV4::new(plan::CN, plan::ECHO_PORT),
            interval: Duration::from_millis(1),
            drain: Duration::from_millis(500),
        }
    }
}

/// The result of one probe run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ProbeReport {
    /// Send interval.
    pub interval_ms: f64,
    /// How long the sender ran.
    pub duration_ms: f64,
    /// Probes sent (including those whose send failed).
    pub sent: u64,
    /// Distinct probes echoed.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Echoes received more than once.
    pub duplicates: u64,
    /// Sends that failed (counted, not fatal).
    pub send_errors: u64,
    /// Longest run of lost probes between two echoed ones.
    pub max_consecutive_lost: u64,
    /// The interruption: longest gap between consecutive echoed probes (send times, less one interval).
    /// `None` if nothing came back, or if a hand-off was marked and no probe sent after it came back.
    pub interruption_ms: Option<f64>,
    /// Longest time between two consecutive echo arrivals.
    pub max_echo_gap_ms: f64,
    /// Probes lost before the first echo.
    pub leading_lost: u64,
    /// Probes lost after the last echo.
    pub trailing_lost: u64,
    /// Whether a probe sent after the marked hand-off came back (`None` without a mark).
    pub recovered: Option<bool>,
    /// From the start of the marked hand-off to the first echo of a probe sent after it.
    pub mark_to_first_echo_ms: Option<f64>,
    /// Median round-trip time of the echoed probes.
    pub rtt_median_ms: Option<f64>,
    /// Largest round-trip time.
    pub rtt_max_ms: Option<f64>,
}

impl ProbeReport {
    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop_send: AtomicBool,
    stop_recv: AtomicBool,
    /// Next sequence number the sender will use (= probes sent so far).
    next_seq: AtomicU64,
    /// Highest echoed sequence number + 1 (0 = none yet).
    echoed_upto: AtomicU64,
    /// First sequence number sent after the hand-off's new route was in place.
    mark_seq: AtomicU64,
    marks: Mutex<Option<(Instant, Instant)>>,
    /// Send time of every probe, by sequence number (readable while the prober runs, [`Prober::timeline`]).
    sends: Mutex<Vec<Instant>>,
    /// Every echo (sequence number, arrival), in arrival order.
    echoes: Mutex<Vec<(u64, Instant)>>,
}

/// Send errors.
type SendLog = u64;
/// Nothing: the echoes are in [`Shared::echoes`].
type RecvLog = ();

/// What a prober has recorded so far: each probe's send time and its first echo's arrival.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Send interval.
    pub interval: Duration,
    /// Send time of probe `i`.
    pub sends: Vec<Instant>,
    /// Arrival of probe `i`'s first echo.
    pub arrivals: Vec<Option<Instant>>,
}

/// One hand-off seen in a continuous probe stream ([`Timeline::window`]).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct WindowReport {
    /// The interruption: the longest gap between consecutive echoed probes that ends in the window (send times,
    /// less one interval); `None` when no probe sent after the switch came back.
    pub interruption_ms: Option<f64>,
    /// A probe sent after the switch came back.
    pub recovered: bool,
    /// From the hand-off's start to the first echo of a probe sent after the switch.
    pub first_echo_ms: Option<f64>,
    /// Probes sent in the window that never came back.
    pub lost: u64,
}

impl Timeline {
    /// The hand-off that started at `start` and was switched at `switched`, looking at probes sent from
    /// `from` (before `start`: probes whose echoes were on their way to the old link count) until `until` (the
    /// next hand-off's start, or the end of the stream).
    pub fn window(&self, from: Instant, start: Instant, switched: Instant, until: Instant) -> WindowReport {
        let echoed: Vec<(Instant, Instant)> = self
            .sends
            .iter()
            .zip(&self.arrivals)
            .filter_map(|(s, a)| Some((*s, (*a)?)))
            .collect();
        let lost = self
            .sends
            .iter()
            .zip(&self.arrivals)
            .filter(|(s, a)| **s >= from && **s < until && a.is_none())
            .count() as u64;
        let after = echoed.iter().find(|(s, _)| *s >= switched && *s < until);
        let Some((_, first_arrival)) = after else {
            return WindowReport {
                lost,
                ..WindowReport::default()
            };
        };
        let mut gap = Duration::ZERO;
        for w in echoed.windows(2) {
            if let [(a, _), (b, _)] = w
                && *b >= start
                && *b < until
                && *a >= from
            {
                gap = gap.max(b.saturating_duration_since(*a).saturating_sub(self.interval));
            }
        }
        WindowReport {
            interruption_ms: Some(ms(gap)),
            recovered: true,
            first_echo_ms: Some(ms(first_arrival.saturating_duration_since(start))),
            lost,
        }
    }
}

/// A running probe (sender and receiver threads on one UDP socket).
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    shared: Arc<Shared>,
    sender: Option<JoinHandle<Result<SendLog>>>,
    receiver: Option<JoinHandle<Result<RecvLog>>>,
}

impl Prober {
    /// Starts probing from namespace `ns` (full name): the socket is created there.
    pub fn start(ns: &str, cfg: ProbeConfig) -> Result<Prober> {
        let sock = netns::run_in(ns, || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ctx(|| "binding the probe socket".into())
        })?;
        Prober::with_socket(sock, cfg)
    }

    /// Starts probing on an existing socket.
    pub fn with_socket(sock: UdpSocket, cfg: ProbeConfig) -> Result<Prober> {
        let shared = Arc::new(Shared {
            mark_seq: AtomicU64::new(u64::MAX),
            ..Shared::default()
        });
        // Distinguishes our echoes from stray ones of an earlier prober.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let run_id = std::process::id().rotate_left(16) ^ nanos ^ RUNS.fetch_add(1, Ordering::Relaxed) as u32;
        let rsock = sock.try_clone().ctx(|| "cloning the probe socket".into())?;
        rsock
            .set_read_timeout(Some(READ_TICK))
            .ctx(|| "setting the probe socket's read timeout".into())?;
        let sh = Arc::clone(&shared);
        let receiver = thread::Builder::new()
            .name("probe-recv".into())
            .spawn(move || recv_loop(&rsock, run_id, &sh))
            .ctx(|| "spawning the probe receiver".into())?;
        let sh = Arc::clone(&shared);
        let sender = thread::Builder::new()
            .name("probe-send".into())
            .spawn(move || send_loop(&sock, cfg, run_id, &sh))
            .ctx(|| "spawning the probe sender".into())?;
        Ok(Prober {
            cfg,
            shared,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Marks a hand-off: `start` before the old link went down, `switched` when the new route was in
    /// place. Recovery means an echo of a probe sent after this call.
    pub fn mark(&self, marks: &HandoffMarks) {
        self.shared
            .mark_seq
            .store(self.shared.next_seq.load(Ordering::SeqCst), Ordering::SeqCst);
        if let Ok(mut m) = self.shared.marks.lock() {
            *m = Some((marks.start, marks.switched));
        }
    }

    /// Whether a probe sent after the mark has come back.
    pub fn recovered(&self) -> bool {
        let mark = self.shared.mark_seq.load(Ordering::SeqCst);
        mark != u64::MAX && self.shared.echoed_upto.load(Ordering::SeqCst) > mark
    }

    /// Polls [`Prober::recovered`] until true (returns true) or `timeout` (false). `interrupted` is checked
    /// too, so Ctrl-C ends a long wait.
    pub fn wait_recovered(&self, timeout: Duration, interrupted: &dyn Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.recovered() {
                return true;
            }
            if interrupted() {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        self.recovered()
    }

    /// What has been recorded so far (the prober keeps running).
    pub fn timeline(&self) -> Timeline {
        let sends = self.shared.sends.lock().map(|v| v.clone()).unwrap_or_default();
        let mut arrivals = vec![None; sends.len()];
        if let Ok(echoes) = self.shared.echoes.lock() {
            for &(seq, t) in echoes.iter() {
                if let Some(slot @ None) = usize::try_from(seq).ok().and_then(|i| arrivals.get_mut(i)) {
                    *slot = Some(t);
                }
            }
        }
        Timeline {
            interval: self.cfg.interval,
            sends,
            arrivals,
        }
    }

    /// Probes sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.next_seq.load(Ordering::SeqCst)
    }

    /// Stops sending, waits (at most `drain`) for echoes in flight, and computes the report.
    pub fn stop(mut self) -> Result<ProbeReport> {
        self.shared.stop_send.store(true, Ordering::SeqCst);
        let send_errors = join(self.sender.take(), "probe sender")?;
        let sends = self
            .shared
            .sends
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let all = sends.len() as u64;
        let deadline = Instant::now() + self.cfg.drain;
        while Instant::now() < deadline && self.shared.echoed_upto.load(Ordering::SeqCst) < all {
            thread::sleep(Duration::from_millis(2));
        }
        self.shared.stop_recv.store(true, Ordering::SeqCst);
        join(self.receiver.take(), "probe receiver")?;
        let echoes = self
            .shared
            .echoes
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let marks = self.shared.marks.lock().ok().and_then(|m| *m);
        let mark_seq = self.shared.mark_seq.load(Ordering::SeqCst);
        Ok(compute_report(
            &sends,
            send_errors,
            &echoes,
            self.cfg.interval,
            marks,
            mark_seq,
        ))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.shared.stop_send.store(true, Ordering::SeqCst);
        self.shared.stop_recv.store(true, Ordering::SeqCst);
    }
}

fn join<T>(h: Option<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    h.ok_or_else(|| Error::Usage(format!("{what} already joined")))?
        .join()
        .map_err(|_| Error::Usage(format!("{what} thread panicked")))?
}

fn encode(run_id: u32, seq: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    let bytes = MAGIC
        .to_be_bytes()
        .into_iter()
        .chain(run_id.to_be_bytes())
        .chain(seq.to_be_bytes());
    for (d, s) in p.iter_mut().zip(bytes) {
        *d = s;
    }
    p
}

fn decode(run_id: u32, b: &[u8]) -> Option<u64> {
    let magic = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    let id = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    (magic == MAGIC && id == run_id).then_some(seq)
}

fn send_loop(sock: &UdpSocket, cfg: ProbeConfig, run_id: u32, sh: &Shared) -> Result<SendLog> {
    if let Ok(mut v) = sh.sends.lock() {
        v.reserve(8192);
    }
    let mut errors = 0u64;
    let mut t0 = Instant::now();
    let mut slot = 0u32; // position in the current schedule
    let mut seq = 0u64;
    while !sh.stop_send.load(Ordering::Relaxed) {
        let due = t0 + cfg.interval * slot;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > RESYNC {
            t0 = now;
            slot = 0;
        }
        let t = Instant::now();
        if sock.send_to(&encode(run_id, seq), cfg.target).is_err() {
            errors += 1;
        }
        if let Ok(mut v) = sh.sends.lock() {
            v.push(t);
        }
        seq += 1;
        slot = slot.saturating_add(1);
        sh.next_seq.store(seq, Ordering::SeqCst);
    }
    Ok(errors)
}

fn recv_loop(sock: &UdpSocket, run_id: u32, sh: &Shared) -> Result<RecvLog> {
    let mut buf = [0u8; 64];
    while !sh.stop_recv.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let t = Instant::now();
                if let Some(seq) = decode(run_id, buf.get(..n).unwrap_or_default()) {
                    if let Ok(mut v) = sh.echoes.lock() {
                        v.push((seq, t));
                    }
                    sh.echoed_upto.fetch_max(seq + 1, Ordering::SeqCst);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted | ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(Error::io("probe recv", e)),
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let hi = *v.get(n / 2)?;
    Some(if n % 2 == 1 {
        hi
    } else {
        (hi + *v.get(n / 2 - 1)?) / 2.0
    })
}

/// The report from raw send times, echoes (sequence, arrival) and the optional hand-off mark.
fn compute_report(
    sends: &[Instant],
    send_errors: u64,
    echoes: &[(u64, Instant)],
    interval: Duration,
    marks: Option<(Instant, Instant)>,
    mark_seq: u64,
) -> ProbeReport {
    let sent = sends.len() as u64;
    // First arrival per sequence number.
    let mut arrival: Vec<Option<Instant>> = vec![None; sends.len()];
    let mut duplicates = 0u64;
    for &(seq, t) in echoes {
        match usize::try_from(seq).ok().and_then(|i| arrival.get_mut(i)) {
            Some(slot @ None) => *slot = Some(t),
            Some(Some(_)) => duplicates += 1,
            None => {}
        }
    }
    let echoed: Vec<(usize, Instant, Instant)> = arrival
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Some((i, *sends.get(i)?, (*a)?)))
        .collect();
    let received = echoed.len() as u64;
    let mut rep = ProbeReport {
        interval_ms: ms(interval),
        duration_ms: match (sends.first(), sends.last()) {
            (Some(a), Some(b)) => ms(b.saturating_duration_since(*a)),
            _ => 0.0,
        },
        sent,
        received,
        lost: sent - received,
        duplicates,
        send_errors,
        ..ProbeReport::default()
    };
    let (Some(first), Some(last)) = (echoed.first(), echoed.last()) else {
        rep.recovered = marks.map(|_| false);
        rep.trailing_lost = sent;
        return rep;
    };
    rep.leading_lost = first.0 as u64;
    rep.trailing_lost = sent - 1 - last.0 as u64;
    let mut gap = Duration::ZERO;
    for w in echoed.windows(2) {
        if let [(a, sa, ra), (b, sb, rb)] = w {
            rep.max_consecutive_lost = rep.max_consecutive_lost.max((b - a - 1) as u64);
            gap = gap.max(sb.saturating_duration_since(*sa).saturating_sub(interval));
            rep.max_echo_gap_ms = rep.max_echo_gap_ms.max(ms(rb.saturating_duration_since(*ra)));
        }
    }
    rep.interruption_ms = Some(ms(gap));
    let mut rtts: Vec<f64> = echoed
        .iter()
        .map(|(_, s, r)| ms(r.saturating_duration_since(*s)))
        .collect();
    rep.rtt_max_ms = rtts.iter().copied().reduce(f64::max);
    rep.rtt_median_ms = median(&mut rtts);
    if let Some((start, _)) = marks {
        let after = echoed.iter().find(|(i, _, _)| *i as u64 >= mark_seq);
        rep.recovered = Some(after.is_some());
        match after {
            Some((_, _, r)) => rep.mark_to_first_echo_ms = Some(ms(r.saturating_duration_since(start))),
            None => rep.interruption_ms = None,
        }
    }
    rep
}

/// Sends probes from namespace `ns` (full name) every 100 ms until one is echoed; returns its RTT. Used to
/// check that a path works before a hand-off.
pub fn wait_echo(ns: &str, target: SocketAddrV4, timeout: Duration) -> Result<Duration> {
    let sock = netns::run_in(ns, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ctx(|| "binding the echo-check socket".into())
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .ctx(|| "setting a read timeout".into())?;
    let run_id = 0x5eed_0000 | (std::process::id() & 0xffff);
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let mut seq = 0u64;
    while start.elapsed() < timeout {
        let sent = Instant::now();
        // Failing sends (no route yet) are retried like lost probes.
        let _ = sock.send_to(&encode(run_id, seq), target);
        while sent.elapsed() < Duration::from_millis(100) {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if decode(run_id, buf.get(..n).unwrap_or_default()) == Some(seq) => {
                    return Ok(sent.elapsed());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        seq += 1;
    }
    Err(Error::Timeout {
        what: format!("a UDP echo from {target} in {ns}"),
        waited: start.elapsed(),
    })
}

/// Reads `conn` to its end: (bytes, sha256 of them). With `deadline`, a stream still open at `deadline.0`
/// is a timeout (reported as having waited `deadline.1`).
pub fn sink_stream(conn: &mut impl Read, deadline: Option<(Instant, Duration)>) -> Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(buf.get(..k).unwrap_or_default());
                n += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("receiving the transfer", e)),
        }
        if let Some((at, waited)) = deadline
            && Instant::now() > at
        {
            return Err(Error::Timeout {
                what: "the TCP transfer to finish".into(),
                waited,
            });
        }
    }
    Ok((n, h.finalize().into()))
}

/// A checksummed TCP transfer.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct TransferReport {
    /// Bytes the sink received.
    pub bytes: u64,
    /// From connect to the sink's end of stream.
    pub millis: f64,
    /// Throughput.
    pub mbit_s: f64,
    /// sha256 of what was sent.
    pub sha256_sent: String,
    /// sha256 of what arrived.
    pub sha256_received: String,
    /// Both hashes and lengths agree.
    pub matched: bool,
}

/// Deterministic pseudo-random bytes (xorshift64*), so the payload is incompressible and a misplaced chunk
/// changes the hash.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(v.get(..n).unwrap_or_default());
        }
    }
}

/// Sends `bytes` from namespace `from_ns` to a sink listening on `dst` in `to_ns` (both full names), with
/// sha256 on both ends. The sink binds `0.0.0.0:<dst port>`.
pub fn tcp_transfer(
    from_ns: &str,
    to_ns: &str,
    dst: SocketAddrV4,
    bytes: u64,
    timeout: Duration,
) -> Result<TransferReport> {
    let port = dst.port();
    let listener = netns::run_in(to_ns, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ctx(|| format!("binding TCP port {port}"))
    })?;
    listener.set_nonblocking(true).ctx(|| "non-blocking listener".into())?;
    let deadline = Instant::now() + timeout;
    let sink: JoinHandle<Result<(u64, String, Instant)>> = thread::Builder::new()
        .name("tcp-sink".into())
        .spawn(move || {
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(Error::io("accepting the transfer connection", e)),
                }
            };
            conn.set_nonblocking(false).ctx(|| "blocking sink socket".into())?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .ctx(|| "sink read timeout".into())?;
            let (n, sha) = sink_stream(&mut conn, Some((deadline, timeout)))?;
            Ok((n, hex::encode(sha), Instant::now()))
        })
        .ctx(|| "spawning the TCP sink".into())?;

    let start = Instant::now();
    let mut stream = netns::run_in(from_ns, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(5)).ctx(|| format!("connecting to {dst}"))
    })?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ctx(|| "sender write timeout".into())?;
    let mut h = Sha256::new();
    let mut pat = Pattern(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = buf.get_mut(..k).unwrap_or_default();
        pat.fill(chunk);
        h.update(&*chunk);
        stream.write_all(chunk).ctx(|| format!("sending to {dst}"))?;
        left -= k as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .ctx(|| "closing the transfer".into())?;
    let sent_hash = hex::encode(h.finalize());
    let (n, recv_hash, end) = sink
        .join()
        .map_err(|_| Error::Usage("TCP sink thread panicked".into()))??;
    let secs = end.saturating_duration_since(start).as_secs_f64();
    Ok(TransferReport {
        bytes: n,
        millis: secs * 1000.0,
        mbit_s: if secs > 0.0 { n as f64 * 8.0 / secs / 1e6 } else { 0.0 },
        matched: n == bytes && sent_hash == recv_hash,
        sha256_sent: sent_hash,
        sha256_received: recv_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(base: Instant, ms_list: &[u64]) -> Vec<Instant> {
        ms_list.iter().map(|m| base + Duration::from_millis(*m)).collect()
    }

    #[test]
    fn timeline_windows_measure_each_hand_off() {
        let base = Instant::now();
        let ms = |m: u64| base + Duration::from_millis(m);
        // Probes every ms for 100 ms; hand-off 1 at 20 (switched 22) loses 15..=26, hand-off 2 at 60 (switched 61)
        // loses 58..=61, and nothing after 90 comes back (the stream's tail).
        let sends: Vec<Instant> = (0..100).map(ms).collect();
        let lost = |i: u64| (15..=26).contains(&i) || (58..=61).contains(&i) || i >= 90;
        let arrivals = (0..100u64).map(|i| (!lost(i)).then(|| ms(i + 1))).collect();
        let t = Timeline {
            interval: Duration::from_millis(1),
            sends,
            arrivals,
        };
        let w1 = t.window(ms(0), ms(20), ms(22), ms(60));
        assert!(w1.recovered);
        assert_eq!(w1.interruption_ms, Some(12.0));
        assert_eq!(w1.first_echo_ms, Some(8.0));
        // Up to the next hand-off's start: its first lost probes (58, 59) were sent before it.
        assert_eq!(w1.lost, 14);
        let w2 = t.window(ms(40), ms(60), ms(61), ms(100));
        assert_eq!(w2.interruption_ms, Some(4.0));
        assert_eq!(w2.lost, 4 + 10);
        // A hand-off after which nothing came back.
        let w3 = t.window(ms(61), ms(89), ms(90), ms(100));
        assert!(!w3.recovered);
        assert_eq!(w3.interruption_ms, None);
    }

    #[test]
    fn interruption_is_longest_gap() {
        let base = Instant::now();
        let sends = times(base, &(0..20).collect::<Vec<_>>());
        // seqs 5..=9 lost (5 probes), 15 lost (1 probe).
        let echoes: Vec<(u64, Instant)> = (0..20u64)
            .filter(|s| !(5..=9).contains(s) && *s != 15)
            .map(|s| (s, base + Duration::from_millis(s + 2)))
            .collect();
        let r = compute_report(&sends, 0, &echoes, Duration::from_millis(1), None, u64::MAX);
        assert_eq!((r.sent, r.received, r.lost), (20, 14, 6));
        assert_eq!(r.max_consecutive_lost, 5);
        assert_eq!(r.interruption_ms, Some(5.0));
        assert_eq!(r.rtt_median_ms, Some(2.0));
        assert_eq!(r.recovered, None);
    }

    #[test]
    fn unrecovered_hand_off_has_no_interruption_value() {
        let base = Instant::now();
        let sends = times(base, &(0..10).collect::<Vec<_>>());
        let echoes: Vec<(u64, Instant)> = (0..5u64).map(|s| (s, base + Duration::from_millis(s + 1))).collect();
        let marks = Some((base + Duration::from_millis(5), base + Duration::from_millis(5)));
        let r = compute_report(&sends, 3, &echoes, Duration::from_millis(1), marks, 5);
        assert_eq!(r.recovered, Some(false));
        assert_eq!(r.interruption_ms, None);
        assert_eq!(r.trailing_lost, 5);
        assert_eq!(r.send_errors, 3);
    }

    #[test]
    fn recovered_hand_off_reports_first_echo() {
        let base = Instant::now();
        let sends = times(base, &(0..10).collect::<Vec<_>>());
        let echoes: Vec<(u64, Instant)> = [0u64, 1, 2, 7, 8, 9, 9]
            .iter()
            .map(|s| (*s, base + Duration::from_millis(s + 1)))
            .collect();
        let marks = Some((base + Duration::from_millis(3), base + Duration::from_millis(4)));
        let r = compute_report(&sends, 0, &echoes, Duration::from_millis(1), marks, 5);
        assert_eq!(r.recovered, Some(true));
        assert_eq!(r.interruption_ms, Some(4.0));
        assert_eq!(r.mark_to_first_echo_ms, Some(5.0));
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn payload_roundtrip_and_foreign_run_rejected() {
        let p = encode(7, 123_456);
        assert_eq!(decode(7, &p), Some(123_456));
        assert_eq!(decode(8, &p), None);
        assert_eq!(decode(7, &p[..10]), None);
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}

//! The product's path of the hand-off benchmark (`mip_proxy`): the real daemons started by
//! [`System::start`] (mip-ha, mip-proxy, mip-mn; the foreign agents are not needed for C1, C2 and A), the
//! VPN client bound to the home address inside the Mobile IP tunnel, and the gateway beside the proxy.
//!
//! Per run it records, besides what the benchmark measures for every path, the IKE messages both charons
//! logged (0 is the point of the design), whether the SPIs stayed equal, and when the daemons logged the
//! hand-off ([`DaemonTimeline`]: the MN noticed the new link, the proxy answered the registration, the MN
//! accepted the reply), read from their logs' timestamps.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bench::{CaseSpec, DaemonTimeline, HandoffPath, PathKind, SaSnapshot};
use crate::error::{Error, IoContext, Result};
use crate::plan;
use crate::probe;
use crate::strongswan::IkeCounts;
use crate::system::{self, System, SystemOptions};
use crate::topology::Lab;

/// The `mip_proxy` benchmark path.
#[derive(Debug, Default)]
pub struct MipProxyPath {
    sys: Option<System>,
    cursors: (u64, u64),
    /// Byte offsets of the MN's and the proxy's logs when the current hand-off started.
    log_marks: (u64, u64),
}

fn echo_target() -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(plan::CN, plan::ECHO_PORT)
}

impl MipProxyPath {
    fn sys(&self) -> Result<&System> {
        self.sys
            .as_ref()
            .ok_or_else(|| Error::Usage("mip_proxy path used before prepare()".into()))
    }

    fn logs(&self) -> Result<(PathBuf, PathBuf)> {
        let s = self.sys()?;
        Ok((s.dir().join("mn.log"), s.dir().join("proxy.log")))
    }
}

impl HandoffPath for MipProxyPath {
    fn kind(&self) -> PathKind {
        PathKind::MipProxy
    }

    fn prepare(&mut self, lab: &mut Lab, case: &CaseSpec) -> Result<()> {
        // Fresh daemons and charons per case, as for the strongSwan paths.
        self.sys = None;
        let sys = System::start(
            lab,
            SystemOptions {
                foreign_agents: false,
                dpd: case.dpd,
                ..SystemOptions::default()
            },
        )?;
        self.sys = Some(sys);
        probe::wait_echo(&lab.ns("mn"), echo_target(), Duration::from_secs(10))?;
        self.take_ike_counts()?;
        Ok(())
    }

    fn ensure_ready(&mut self, lab: &mut Lab, _case: &CaseSpec) -> Result<()> {
        let ns = lab.ns("mn");
        if probe::wait_echo(&ns, echo_target(), Duration::from_secs(3)).is_ok() {
            return Ok(());
        }
        // The previous hand-off did not recover: wait for the registration, then for the SA; restart the VPN
        // only if it is gone (that would be a failure of the design, and the details show it).
        if let Some(a) = lab.attached() {
            system::wait_registered_at(lab, system::care_of_address(a), Duration::from_secs(10))?;
        }
        if probe::wait_echo(&ns, echo_target(), Duration::from_secs(3)).is_ok() {
            return Ok(());
        }
        let sys = self.sys()?;
        let _ = sys.client.terminate();
        sys.client.initiate(Duration::from_secs(10))?;
        probe::wait_echo(&ns, echo_target(), Duration::from_secs(10))?;
        Ok(())
    }

    fn take_ike_counts(&mut self) -> Result<Option<(IkeCounts, IkeCounts)>> {
        let Some(s) = &self.sys else {
            return Ok(None);
        };
        let counts = (
            s.client.ike_counts_since(self.cursors.0)?,
            s.gateway.ike_counts_since(self.cursors.1)?,
        );
        self.cursors = (s.client.log_cursor(), s.gateway.log_cursor());
        Ok(Some(counts))
    }

    fn sa_snapshot(&mut self) -> Result<Option<SaSnapshot>> {
        let Some(s) = &self.sys else {
            return Ok(None);
        };
        SaSnapshot::of(&s.client, &s.gateway).map(Some)
    }

    fn before_handoff(&mut self) -> Result<()> {
        let (mn, proxy) = self.logs()?;
        self.log_marks = (file_len(&mn), file_len(&proxy));
        Ok(())
    }

    fn daemon_timeline(&mut self, start: SystemTime) -> Result<Option<DaemonTimeline>> {
        let (mn, proxy) = self.logs()?;
        // The log writer is a background thread: give it a moment.
        std::thread::sleep(Duration::from_millis(20));
        let mn_log = read_from(&mn, self.log_marks.0)?;
        let proxy_log = read_from(&proxy, self.log_marks.1)?;
        Ok(Some(timeline(&mn_log, &proxy_log, start)))
    }

    fn finish(&mut self, _lab: &mut Lab) -> Result<()> {
        if let Some(s) = self.sys.take() {
            s.stop();
        }
        Ok(())
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The text of `path` from byte `offset` on.
pub fn read_from(path: &Path, offset: u64) -> Result<String> {
    let mut f = fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))
        .ctx(|| format!("seeking {}", path.display()))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ctx(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The daemons' view of a hand-off that started at `start`: the first matching line of each kind logged at
/// or after it, in ms after `start`.
pub fn timeline(mn_log: &str, proxy_log: &str, start: SystemTime) -> DaemonTimeline {
    let after = |log: &str, pred: &dyn Fn(&str) -> bool| -> Option<f64> {
        log.lines().map(strip_ansi).find_map(|l| {
            let (t, rest) = log_time(&l)?;
            let d = t.duration_since(start).ok()?;
            pred(rest).then_some(d.as_secs_f64() * 1000.0)
        })
    };
    DaemonTimeline {
        mn_attached_ms: after(mn_log, &|l| l.contains(" attached (")),
        proxy_replied_ms: after(proxy_log, &|l| {
            l.contains(": registration ") && l.contains("code=0") && !l.contains("lifetime=0")
        }),
        mn_registered_ms: after(mn_log, &|l| l.contains("registration accepted")),
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`), which `tracing`'s text format may write.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The RFC 3339 UTC timestamp a `tracing` text line starts with (`2026-11-27T10:22:33.123456Z`), and the
/// rest of the line.
pub fn log_time(line: &str) -> Option<(SystemTime, &str)> {
    let line = line.trim_start();
    let (ts, rest) = line.split_once(char::is_whitespace)?;
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<u64>);
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let digits: String = frac.chars().take(9).collect();
    let nanos = digits.parse::<u64>().ok()? * 10u64.pow(9 - u32::try_from(digits.len()).ok()?);
    let days = u64::try_from(days_from_civil(y, mo, da)).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some((
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos),
        rest,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        let (t, rest) = log_time("2026-11-27T10:22:33.123456Z  INFO mip_mn: attached (co-located)").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        // 2026-11-27 = 20 784 days after the epoch.
        assert_eq!(d.as_secs(), 20_784 * 86_400 + 10 * 3600 + 22 * 60 + 33);
        assert_eq!(d.subsec_micros(), 123_456);
        assert!(rest.contains("attached"));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn timeline_finds_the_first_lines_after_the_start() {
        let start = log_time("2026-11-27T10:00:00.000000Z x").unwrap().0;
        let mn = "2026-11-27T09:59:59.000000Z  INFO mip_agents::mn_daemon: registration accepted care_of_address=1.1.1.1\n\
                  2026-11-27T10:00:00.004000Z  INFO mip_agents::mn_daemon: attached (co-located care-of address) dev=a0\n\
                  \u{1b}[2m2026-11-27T10:00:00.009500Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m mip_agents::mn_daemon: registration accepted code=0\n";
        let proxy = "2026-11-27T10:00:00.007000Z  INFO mip_proxy::service: registration home_address=10.10.1.50 code=0 lifetime=600\n";
        let t = timeline(mn, proxy, start);
        assert_eq!(t.mn_attached_ms.map(|v| v.round()), Some(4.0));
        assert_eq!(t.proxy_replied_ms.map(|v| v.round()), Some(7.0));
        assert_eq!(t.mn_registered_ms.map(|v| (v * 10.0).round()), Some(95.0));
    }
}

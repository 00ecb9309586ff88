//! The daemons' clock: one monotonic origin (process start) for [`mip::time::Instant`], and the system wall clock
//! for [`mip::time::NtpTimestamp`]. The `mip` crate never reads a clock; this is the one place that does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mip::roles::Now;
use mip::time::{Instant, NtpTimestamp};

/// Monotonic milliseconds since creation plus wall-clock NTP time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: std::time::Instant,
    wall_start: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose monotonic origin ([`Instant::ZERO`]) is now.
    pub fn new() -> Self {
        Clock {
            start: std::time::Instant::now(),
            wall_start: SystemTime::now(),
        }
    }

    /// Both clocks now. The NTP time is read from the system clock on every call, so clock steps (NTP, manual)
    /// are seen at once; the monotonic instant never goes backwards.
    pub fn now(&self) -> Now {
        Now::new(self.instant(), ntp_now())
    }

    /// Monotonic time only.
    pub fn instant(&self) -> Instant {
        self.instant_at(std::time::Instant::now())
    }

    /// A std instant (e.g. a receive timestamp taken earlier) on this clock's scale; instants before the origin
    /// map to [`Instant::ZERO`].
    pub fn instant_at(&self, at: std::time::Instant) -> Instant {
        let ms = at.saturating_duration_since(self.start).as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// How long from now until `deadline` (zero if it has passed): a poll timeout for a role's `next_timer()`.
    pub fn until(&self, deadline: Instant) -> Duration {
        deadline.saturating_duration_since(self.instant())
    }

    /// Poll timeout for an optional deadline, capped at `max` (`None` deadline = `max`).
    pub fn timeout(&self, deadline: Option<Instant>, max: Duration) -> Duration {
        deadline.map_or(max, |d| self.until(d).min(max))
    }

    /// Wall-clock time when the clock was created (for a start-time metric).
    pub fn started_at(&self) -> SystemTime {
        self.wall_start
    }
}

/// The system wall clock as an NTP timestamp (the Unix epoch if the clock is set before 1970).
pub fn ntp_now() -> NtpTimestamp {
    NtpTimestamp::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_wall() {
        let c = Clock::new();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now();
        assert!(b.instant >= a.instant + Duration::from_millis(5));
        assert!(a.instant.millis() < 1000);
        // After 2020-01-01 in NTP seconds (era 0 until 2036).
        assert!(b.ntp.seconds() > 3_786_825_600);
        assert!(b.ntp.seconds_since(a.ntp) >= 0.0);
        assert_eq!(c.instant_at(c.start - Duration::from_secs(1)), Instant::ZERO);
    }

    #[test]
    fn timeouts() {
        let c = Clock::new();
        let max = Duration::from_secs(1);
        assert_eq!(c.timeout(None, max), max);
        assert_eq!(c.timeout(Some(Instant::ZERO), max), Duration::ZERO);
        assert_eq!(c.timeout(Some(Instant::from_secs(3600)), max), max);
        assert!(c.until(Instant::from_secs(10)) <= Duration::from_secs(10));
    }
}

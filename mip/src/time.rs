//! Time as plain values. Nothing in this crate reads a clock: callers pass `now` in, so tests move time
//! without sleeping and the daemons decide which clock they trust.
//!
//! Two kinds of time matter to Mobile IP:
//! * [`Instant`]: a monotonic point (milliseconds since an arbitrary origin chosen by the caller), used for
//!   lifetimes, expiry and timers;
//! * [`NtpTimestamp`]: wall-clock time in the 64-bit NTP format that timestamp-style Identification fields
//!   carry (RFC 5944 §5.7.1).

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

/// A monotonic point in time, in milliseconds since an origin the caller picks (for example process start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant { millis: 0 };

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant { millis }
    }

    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Instant {
            millis: secs.saturating_mul(1000),
        }
    }

    /// Milliseconds since the origin.
    pub const fn millis(self) -> u64 {
        self.millis
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at the far future instead of overflowing.
    fn add(self, rhs: Duration) -> Instant {
        let add = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_add(add),
        }
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturates at the origin.
    fn sub(self, rhs: Duration) -> Instant {
        let sub = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_sub(sub),
        }
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.millis / 1000, self.millis % 1000)
    }
}

/// Seconds between the NTP era origin (1900-01-01) and the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp: high 32 bits seconds since 1900 (era 0, wrapping), low 32 bits binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// From whole seconds and a 32-bit binary fraction.
    pub const fn new(seconds: u32, fraction: u32) -> Self {
        NtpTimestamp(((seconds as u64) << 32) | fraction as u64)
    }

    /// From time since the Unix epoch (what `SystemTime::now().duration_since(UNIX_EPOCH)` gives).
    /// Seconds wrap modulo 2^32 as NTP era 0 does (the era rolls over in 2036).
    pub fn from_unix(since_epoch: Duration) -> Self {
        let secs = since_epoch.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS) as u32;
        // fraction = nanos * 2^32 / 1e9, exact in u64 because nanos < 1e9.
        let frac = ((u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000) as u32;
        NtpTimestamp::new(secs, frac)
    }

    /// Whole seconds (the high 32 bits).
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Binary fraction of a second (the low 32 bits).
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// Signed distance `self - other` in seconds (fraction included), interpreting the difference modulo
    /// 2^64 so that comparisons keep working across an NTP era rollover.
    pub fn seconds_since(self, other: NtpTimestamp) -> f64 {
        let diff = self.0.wrapping_sub(other.0) as i64;
        diff as f64 / 4_294_967_296.0
    }
}

impl fmt::Display for NtpTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}.{:08x}", self.seconds(), self.fraction())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_from_unix_epoch() {
        let t = NtpTimestamp::from_unix(Duration::from_millis(1500));
        assert_eq!(t.seconds(), 2_208_988_801);
        assert_eq!(t.fraction(), 0x8000_0000);
    }

    #[test]
    fn instant_saturates() {
        assert_eq!(Instant::ZERO - Duration::from_secs(5), Instant::ZERO);
        assert_eq!(
            Instant::from_millis(u64::MAX) + Duration::from_secs(1),
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(
            Instant::from_secs(3).saturating_duration_since(Instant::from_secs(5)),
            Duration::ZERO
        );
    }

    #[test]
    fn seconds_since_wraps() {
        let a = NtpTimestamp::new(u32::MAX, 0);
        let b = NtpTimestamp::new(0, 0);
        assert_eq!(b.seconds_since(a), 1.0);
        assert_eq!(a.seconds_since(b), -1.0);
    }
}

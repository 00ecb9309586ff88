//! Version stamps and the hybrid logical clock.

use mip::roles::Now;
use mip::time::NTP_UNIX_OFFSET_SECS;

/// The version of a record: the larger one wins, equal versions are the same write.
///
/// Order (derived, field by field): the Identification the home agent accepted (NTP timestamp for timestamp
/// security associations, so "newest registration wins"), then the hybrid logical clock of the write, then the
/// replica id. Every write gets a fresh HLC value from its replica, so two different writes never share a
/// version and the order is total: applying "keep the larger" is commutative, associative and idempotent, which
/// is what makes replicas converge whatever the delivery order.
///
/// Identifications compare as plain `u64` (not serial-number arithmetic, which is not transitive); NTP era 0
/// lasts until 2036.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// HA-accepted Identification (0 when it does not order registrations, see [`IdentOrder::Nonce`]).
    pub identification: u64,
    /// Hybrid logical clock value of the write ([`Hlc`]).
    pub hlc: u64,
    /// Replica that made the write.
    pub replica: u32,
}

/// Whether Identifications order the registrations of a node: they do for timestamp replay protection (the
/// mandatory style, RFC 5944 §5.7.1), they do not for nonces (random high bits), where the HLC alone decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdentOrder {
    /// Identifications are NTP timestamps: a larger one is a newer registration.
    #[default]
    Timestamp,
    /// Identifications are nonces: carry the current version's Identification forward, the HLC decides.
    Nonce,
}

/// Bits of the HLC below the physical milliseconds: a logical counter for writes within one millisecond.
pub const HLC_LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock (Kulkarni et al.): `wall milliseconds << 16 | logical counter`. Never goes backwards,
/// stays close to wall time, and is pushed past every remote value it observes, so a write made after seeing
/// another write always gets a larger value, even when the wall clocks of the two replicas disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has issued nothing yet.
    pub const fn new() -> Self {
        Hlc { last: 0 }
    }

    /// A fresh value for a local write at wall time `wall_ms` (Unix milliseconds): strictly larger than every value
    /// issued or observed before.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms.saturating_mul(1 << HLC_LOGICAL_BITS);
        self.last = if physical > self.last {
            physical
        } else {
            self.last.saturating_add(1)
        };
        self.last
    }

    /// Takes a remote value into account: later ticks are larger than it.
    pub fn observe(&mut self, remote: u64) {
        self.last = self.last.max(remote);
    }

    /// The last value issued or observed.
    pub const fn last(&self) -> u64 {
        self.last
    }

    /// The wall-clock milliseconds part of an HLC value (for replication lag).
    pub const fn wall_ms(hlc: u64) -> u64 {
        hlc >> HLC_LOGICAL_BITS
    }
}

/// Unix milliseconds of the wall-clock part of `now` (era 0 NTP; 0 before 1970).
pub fn unix_ms(now: Now) -> u64 {
    let secs = u64::from(now.ntp.seconds()).saturating_sub(NTP_UNIX_OFFSET_SECS);
    let frac_ms = (u64::from(now.ntp.fraction()) * 1000) >> 32;
    secs.saturating_mul(1000).saturating_add(frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use mip::time::{Instant, NtpTimestamp};

    #[test]
    fn version_order_is_identification_then_hlc_then_replica() {
        let v = |i, h, r| Version {
            identification: i,
            hlc: h,
            replica: r,
        };
        assert!(v(2, 0, 0) > v(1, 99, 99));
        assert!(v(1, 5, 0) > v(1, 4, 99));
        assert!(v(1, 5, 2) > v(1, 5, 1));
    }

    #[test]
    fn hlc_is_monotonic_and_follows_remote_values() {
        let mut c = Hlc::new();
        let a = c.tick(1000);
        assert_eq!(Hlc::wall_ms(a), 1000);
        let b = c.tick(1000);
        assert!(b > a);
        // The wall clock steps back: still increasing.
        let d = c.tick(10);
        assert!(d > b);
        c.observe(5000 << HLC_LOGICAL_BITS);
        assert!(c.tick(1001) > 5000 << HLC_LOGICAL_BITS);
        // Observing an older value changes nothing.
        let last = c.last();
        c.observe(1);
        assert_eq!(c.last(), last);
    }

    #[test]
    fn unix_ms_of_ntp() {
        let now = Now::new(
            Instant::ZERO,
            NtpTimestamp::from_unix(Duration::from_millis(1_700_000_000_250)),
        );
        let ms = unix_ms(now);
        assert!((1_700_000_000_249..=1_700_000_000_250).contains(&ms), "{ms}");
    }
}

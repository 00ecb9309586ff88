//! The Mobile IPv4 roles as sans-IO state machines: the MIP Proxy relay ([`proxy`]), the Home Agent ([`ha`]), the
//! Foreign Agent ([`fa`]) and the Mobile Node ([`mn`]).
//!
//! Every role has the same shape: `handle(now, input, out)`. The caller (a daemon, a simulation, a test) passes
//! what arrived and the current time ([`Now`]); the role appends what must happen to `out`, a `Vec` of its output
//! enum: datagrams to send, binding changes for the data plane and replication, drops with a reason for counters.
//! No role opens a socket, reads a clock or sleeps, so every rule is testable in microseconds and the daemons stay
//! thin.
//!
//! Unauthenticated or malformed input never produces a datagram: only a [`DropReason`] (spec §8 "Avoiding an
//! open relay").

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

use crate::binding::Binding;
use crate::time::{Instant, NtpTimestamp};
use crate::wire::{ErrorKind, ReplyCode};

pub mod fa;
pub mod ha;
pub mod mn;
pub mod proxy;
pub mod tunnel;

/// The current time, in both forms a role needs: a monotonic instant for lifetimes and timers, and wall-clock
/// NTP time for timestamp Identifications (RFC 5944 §5.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub ntp: NtpTimestamp,
}

impl Now {
    /// Both clocks at once.
    pub const fn new(instant: Instant, ntp: NtpTimestamp) -> Self {
        Now { instant, ntp }
    }
}

/// A UDP datagram as it arrived (addresses from the IP header, the UDP checksum already verified by the I/O
/// layer, RFC 5944 §3.8.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port (the local address it arrived on).
    pub dst: SocketAddrV4,
    /// IP TTL it arrived with (RFC 3024 §4.2.1: an FA checks 255 on reverse-tunnel registrations).
    pub ttl: u8,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// A UDP datagram a role wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Source address and port (one of the node's own).
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// IP TTL to use; `None` = the system default.
    pub ttl: Option<u8>,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Why an input produced nothing. Each reason is a counter label (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The message did not parse (what and where in the error).
    Malformed(ErrorKind),
    /// A message type this role does not accept on this address.
    UnexpectedMessage,
    /// No authorization-enabling (MN-HA) extension (RFC 5944 §3.8.2.1).
    NoAuthExtension,
    /// No security association for the SPI and peer, or a reserved SPI (RFC 5944 §3.8.2.1a).
    NoSecurityAssociation,
    /// Home address 0.0.0.0 and no NAI to identify the node (spec §5.1 step 3).
    NoIdentity,
    /// The authenticator did not verify (and policy is not to answer 131).
    BadAuthenticator,
    /// An FA-HA extension the role has no SA for (RFC 5944 §3.8.2.1d).
    UnknownFaHaSpi,
    /// A reply with no, or more than one, MN-HA extension, or with a bad one (RFC 5944 §3.6.2.1).
    BadReplyAuthentication,
    /// A reply that matches no pending request (RFC 5944 §3.7.3.1).
    NoPendingRequest,
    /// A reply whose Identification does not match the last request (RFC 5944 §3.6.2.1).
    IdentificationMismatch,
    /// A reply from an address that is not an allowed home agent.
    UnknownHomeAgent,
    /// A pending request timed out without a reply.
    PendingTimeout,
    /// Too many pending requests.
    PendingFull,
    /// The binding cache refused the binding.
    BindingRefused,
    /// A keepalive that matches no binding, or comes from the wrong address.
    UnexpectedKeepalive,
    /// An ICMP error about a request that is no longer pending.
    StaleIcmpError,
    /// A rate limit suppressed a reply.
    RateLimited,
}

impl DropReason {
    /// Every reason, one per label ([`DropReason::Malformed`] once per [`ErrorKind::ALL`] entry): for
    /// pre-registering drop counters at 0.
    pub const ALL: [DropReason; 27] = [
        DropReason::Malformed(ErrorKind::ALL[0]),
        DropReason::Malformed(ErrorKind::ALL[1]),
        DropReason::Malformed(ErrorKind::ALL[2]),
        DropReason::Malformed(ErrorKind::ALL[3]),
        DropReason::Malformed(ErrorKind::ALL[4]),
        DropReason::Malformed(ErrorKind::ALL[5]),
        DropReason::Malformed(ErrorKind::ALL[6]),
        DropReason::Malformed(ErrorKind::ALL[7]),
        DropReason::Malformed(ErrorKind::ALL[8]),
        DropReason::Malformed(ErrorKind::ALL[9]),
        DropReason::Malformed(ErrorKind::ALL[10]),
        DropReason::UnexpectedMessage,
        DropReason::NoAuthExtension,
        DropReason::NoSecurityAssociation,
        DropReason::NoIdentity,
        DropReason::BadAuthenticator,
        DropReason::UnknownFaHaSpi,
        DropReason::BadReplyAuthentication,
        DropReason::NoPendingRequest,
        DropReason::IdentificationMismatch,
        DropReason::UnknownHomeAgent,
        DropReason::PendingTimeout,
        DropReason::PendingFull,
        DropReason::BindingRefused,
        DropReason::UnexpectedKeepalive,
        DropReason::StaleIcmpError,
        DropReason::RateLimited,
    ];

    /// Stable label for counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed(k) => k.as_str(),
            DropReason::UnexpectedMessage => "unexpected_message",
            DropReason::NoAuthExtension => "no_auth_extension",
            DropReason::NoSecurityAssociation => "no_security_association",
            DropReason::NoIdentity => "no_identity",
            DropReason::BadAuthenticator => "bad_authenticator",
            DropReason::UnknownFaHaSpi => "unknown_fa_ha_spi",
            DropReason::BadReplyAuthentication => "bad_reply_authentication",
            DropReason::NoPendingRequest => "no_pending_request",
            DropReason::IdentificationMismatch => "identification_mismatch",
            DropReason::UnknownHomeAgent => "unknown_home_agent",
            DropReason::PendingTimeout => "pending_timeout",
            DropReason::PendingFull => "pending_full",
            DropReason::BindingRefused => "binding_refused",
            DropReason::UnexpectedKeepalive => "unexpected_keepalive",
            DropReason::StaleIcmpError => "stale_icmp_error",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Malformed(k) => write!(f, "malformed: {k}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What a registration ended with, for logs, traces and metrics (one per reply a role sends or receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationOutcome {
    /// Home address (0.0.0.0 while unassigned).
    pub home_address: Ipv4Addr,
    /// Care-of address of the request.
    pub care_of_address: Ipv4Addr,
    /// The (actual) home agent involved, if known.
    pub home_agent: Option<Ipv4Addr>,
    /// Reply code.
    pub code: ReplyCode,
    /// Lifetime in the reply.
    pub lifetime: u16,
    /// Whether a NAT was detected between the mobile node and this role.
    pub nat_detected: bool,
}

/// Deterministic pseudo-random numbers (SplitMix64) for nonces and Identification low bits. Daemons seed it from
/// the operating system; tests seed it with a constant. Nonces need to be unique, not secret: they travel in
/// clear in every reply (RFC 5944 §5.7.2).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

/// How a binding changed, for the data plane (tunnels, proxy ARP) and for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingChangeKind {
    /// A new binding (a new care-of address for this node).
    Created,
    /// An existing binding got a new lifetime, Identification or tunnel endpoint.
    Refreshed,
    /// Removed by a deregistration or replaced by a new registration.
    Removed,
    /// Removed because its lifetime ran out (no message is sent, RFC 5944 §3.8).
    Expired,
}

/// One binding change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingChange {
    /// What happened.
    pub kind: BindingChangeKind,
    /// The node's home address (0.0.0.0 if only the NAI is known).
    pub home_address: Ipv4Addr,
    /// The node's NAI, if it registered with one.
    pub nai: Option<Box<str>>,
    /// The binding as it is now (for `Removed`/`Expired`: as it was).
    pub binding: Binding,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct number per variant (and per [`ErrorKind`] variant inside `Malformed`). No wildcard arm: a new
    /// variant does not compile here until it gets a number, and then `ALL` must list it.
    fn position(r: DropReason) -> usize {
        match r {
            DropReason::Malformed(k) => match k {
                ErrorKind::Truncated => 0,
                ErrorKind::WrongType(_) => 1,
                ErrorKind::ExtensionTruncated(_) => 2,
                ErrorKind::ExtensionLength(..) => 3,
                ErrorKind::UnknownNonSkippable(_) => 4,
                ErrorKind::BadChecksum => 5,
                ErrorKind::BadVersion => 6,
                ErrorKind::BadHeaderLength => 7,
                ErrorKind::BadLength => 8,
                ErrorKind::BadValue => 9,
                ErrorKind::BufferTooSmall => 10,
            },
            DropReason::UnexpectedMessage => 11,
            DropReason::NoAuthExtension => 12,
            DropReason::NoSecurityAssociation => 13,
            DropReason::NoIdentity => 14,
            DropReason::BadAuthenticator => 15,
            DropReason::UnknownFaHaSpi => 16,
            DropReason::BadReplyAuthentication => 17,
            DropReason::NoPendingRequest => 18,
            DropReason::IdentificationMismatch => 19,
            DropReason::UnknownHomeAgent => 20,
            DropReason::PendingTimeout => 21,
            DropReason::PendingFull => 22,
            DropReason::BindingRefused => 23,
            DropReason::UnexpectedKeepalive => 24,
            DropReason::StaleIcmpError => 25,
            DropReason::RateLimited => 26,
        }
    }
    /// One more than the largest number `position` gives.
    const VARIANTS: usize = 27;

    #[test]
    fn all_lists_every_drop_reason_once_with_distinct_labels() {
        let mut seen = [false; VARIANTS];
        for r in DropReason::ALL {
            let i = position(r);
            assert!(!seen[i], "{r:?} listed twice");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "missing from ALL: {seen:?}");
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), VARIANTS, "every reason has its own label");
        assert_eq!(
            ErrorKind::ALL.map(|k| position(DropReason::Malformed(k))),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        );
    }
}

//! Identification and replay protection (RFC 5944 §5.7, §3.6.2, §3.6.3, §3.8.2.1; spec §4).
//!
//! Every Registration Request carries a 64-bit Identification. The MN-HA security association fixes its style
//! ([`ReplayStyle`]):
//! * **timestamps** (mandatory to implement, RFC 5944 §5.7.1): the Identification is a 64-bit NTP time; the
//!   receiver requires it to be strictly newer than the last one it accepted and within a tolerance of its own
//!   clock, and on failure answers code 133 with its own time in the high 32 bits so the MN can resynchronise;
//! * **nonces** (optional, RFC 5944 §5.7.2): the high 32 bits are the nonce the HA sent in its last reply and the
//!   low 32 bits are the MN's own nonce; every reply carries a fresh HA nonce, so the scheme self-synchronises.
//!
//! In both styles the low 32 bits are copied from request to reply, and the MN discards a reply whose low 32 bits
//! differ from its latest request (RFC 5944 §3.6.2.1).
//!
//! [`ReplayState`] is the receiving side (HA, or the proxy acting as one: spec §4 "Proxy specifics"),
//! [`MnIdentification`] the mobile node's generator and checker. Neither reads a clock or draws random numbers:
//! `now` and randomness are arguments. All arithmetic on timestamps wraps modulo 2^64 so the checks keep working
//! across the NTP era rollover of 2036.

use core::fmt;
use core::time::Duration;

use crate::time::NtpTimestamp;
use crate::wire::ReplyCode;

/// Default timestamp tolerance: "a default value of 7 seconds MAY be used" and it SHOULD be more than 3 seconds
/// (RFC 5944 §5.7.1).
pub const DEFAULT_TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(7);

/// Replay protection style of an MN-HA security association (RFC 5944 §5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplayStyle {
    /// Timestamps (RFC 5944 §5.7.1): accepted if newer than the last accepted and within `tolerance` of the
    /// receiver's clock.
    Timestamp {
        /// Largest accepted difference between the Identification and the receiver's clock, in either direction.
        tolerance: Duration,
    },
    /// Nonces (RFC 5944 §5.7.2).
    Nonce,
}

impl Default for ReplayStyle {
    /// Timestamps with [`DEFAULT_TIMESTAMP_TOLERANCE`]: every node MUST implement timestamps (RFC 5944 §5.7).
    fn default() -> Self {
        ReplayStyle::Timestamp {
            tolerance: DEFAULT_TIMESTAMP_TOLERANCE,
        }
    }
}

/// Why an Identification was refused. Every reason is answered with code 133 (RFC 5944 §3.8.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MismatchReason {
    /// Timestamp not strictly greater than the last accepted one (RFC 5944 §5.7.1; spec §10 cases 25, 27).
    NotNewer,
    /// Timestamp further than the tolerance from the receiver's clock (RFC 5944 §5.7.1; spec §10 case 26).
    ClockSkew,
    /// Nonce style, but no nonce has been issued to this MN yet (its first request; RFC 5944 §5.7.2).
    NoNonceIssued,
    /// Nonce style, and the high 32 bits are not the nonce last issued (RFC 5944 §5.7.2; spec §10 case 30).
    WrongNonce,
}

impl MismatchReason {
    /// A short label, fit for a metric.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchReason::NotNewer => "not_newer",
            MismatchReason::ClockSkew => "clock_skew",
            MismatchReason::NoNonceIssued => "no_nonce_issued",
            MismatchReason::WrongNonce => "wrong_nonce",
        }
    }
}

impl fmt::Display for MismatchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MismatchReason::NotNewer => "timestamp not newer than the last accepted one",
            MismatchReason::ClockSkew => "timestamp outside the clock tolerance",
            MismatchReason::NoNonceIssued => "no nonce issued yet",
            MismatchReason::WrongNonce => "nonce is not the one last issued",
        })
    }
}

/// The receiver's judgement of a request's Identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplayVerdict {
    /// A new request: process it.
    Fresh,
    /// Nonce style only: identical to the last accepted request, a retransmission (RFC 5944 §3.6.3; spec §10 case
    /// 29). Answer it again; it is not a new registration and must not extend the binding (RFC 5944 §3.8.2.2).
    Retransmission,
    /// Refuse with code 133 and the Identification from [`ReplayState::resync_identification`].
    Mismatch(MismatchReason),
}

/// High 32 bits of an Identification.
const fn high(ident: u64) -> u32 {
    (ident >> 32) as u32
}

/// Low 32 bits of an Identification.
const fn low(ident: u64) -> u32 {
    ident as u32
}

const fn join(high: u32, low: u32) -> u64 {
    ((high as u64) << 32) | low as u64
}

/// `a - b` modulo 2^64, read as signed: positive when `a` is later than `b` (serial-number arithmetic, so the
/// comparison survives the NTP era rollover).
const fn wrapping_diff(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

/// `a` strictly later than `b` in wrapping order.
const fn is_after(a: u64, b: u64) -> bool {
    wrapping_diff(a, b) > 0
}

/// A duration in NTP units (2^-32 s), saturating at `u64::MAX` (which accepts any timestamp).
fn ntp_units(d: Duration) -> u64 {
    let secs = d.as_secs();
    if secs > u64::from(u32::MAX) {
        return u64::MAX;
    }
    // nanos < 1e9, so nanos << 32 fits in u64 and the quotient fits in 32 bits.
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Replay state the HA (or the proxy, spec §4) keeps per mobile node security association.
///
/// Usage for each authenticated request: [`check`](Self::check); on [`ReplayVerdict::Fresh`] or
/// [`ReplayVerdict::Retransmission`] continue, then [`accept`](Self::accept) when the registration is accepted and
/// build the reply's Identification with [`reply_identification`](Self::reply_identification); on
/// [`ReplayVerdict::Mismatch`] answer code 133 with [`resync_identification`](Self::resync_identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReplayState {
    /// Identification of the last accepted request.
    last_accepted: Option<u64>,
    /// Nonce style: the nonce most recently issued in a reply and not yet used by an accepted request.
    nonce_issued: Option<u32>,
}

impl ReplayState {
    /// State for an MN that has never registered.
    pub const fn new() -> Self {
        ReplayState {
            last_accepted: None,
            nonce_issued: None,
        }
    }

    /// Identification of the last accepted request, if any.
    pub const fn last_accepted(&self) -> Option<u64> {
        self.last_accepted
    }

    /// Nonce style: the nonce the next request must carry in its high 32 bits, if one has been issued.
    pub const fn issued_nonce(&self) -> Option<u32> {
        self.nonce_issued
    }

    /// Records a nonce issued by someone else. The proxy uses it with the high 32 bits of each HA reply it relays,
    /// then requires them in the MN's next request (spec §4 "Proxy specifics" \[G\]).
    pub fn record_issued_nonce(&mut self, nonce: u32) {
        self.nonce_issued = Some(nonce);
    }

    /// Judges a request's Identification against this state and, for timestamps, the receiver's clock `now`
    /// (RFC 5944 §5.7, §3.8.2.1). Does not change the state: call [`accept`](Self::accept) once the registration
    /// is accepted.
    pub fn check(&self, style: &ReplayStyle, ident: u64, now: NtpTimestamp) -> ReplayVerdict {
        match *style {
            ReplayStyle::Timestamp { tolerance } => {
                // RFC 5944 §5.7.1: strictly greater than every earlier accepted request (an equal value is a
                // replay: spec §10 case 25) ...
                if let Some(last) = self.last_accepted
                    && !is_after(ident, last)
                {
                    return ReplayVerdict::Mismatch(MismatchReason::NotNewer);
                }
                // ... and "sufficiently close" to the receiver's time of day, in either direction.
                if wrapping_diff(ident, now.0).unsigned_abs() > ntp_units(tolerance) {
                    return ReplayVerdict::Mismatch(MismatchReason::ClockSkew);
                }
                ReplayVerdict::Fresh
            }
            ReplayStyle::Nonce => {
                // RFC 5944 §3.6.3: nonce-style retransmissions are sent unchanged. Checked first because the nonce
                // it carries has already been replaced by the one in our (lost) reply.
                if self.last_accepted == Some(ident) {
                    return ReplayVerdict::Retransmission;
                }
                match self.nonce_issued {
                    None => ReplayVerdict::Mismatch(MismatchReason::NoNonceIssued),
                    Some(n) if n == high(ident) => ReplayVerdict::Fresh,
                    Some(_) => ReplayVerdict::Mismatch(MismatchReason::WrongNonce),
                }
            }
        }
    }

    /// Records an accepted request (at the proxy: one the HA accepted, spec §4 "Proxy specifics").
    ///
    /// Nonces: the issued nonce is consumed, so a second, different request with the same nonce is refused;
    /// accepting the last accepted request again (a retransmission) changes nothing. Timestamps: the stored value
    /// never moves backwards, so a late accept of an older request (replies reordered) is harmless.
    pub fn accept(&mut self, style: &ReplayStyle, ident: u64) {
        match (style, self.last_accepted) {
            (_, Some(last)) if last == ident => {}
            (ReplayStyle::Timestamp { .. }, Some(last)) if !is_after(ident, last) => {}
            (ReplayStyle::Timestamp { .. }, _) => self.last_accepted = Some(ident),
            (ReplayStyle::Nonce, _) => {
                self.last_accepted = Some(ident);
                self.nonce_issued = None;
            }
        }
    }

    /// The Identification of a reply that accepts (or, after the Identification check, denies) a request.
    ///
    /// Timestamps: the whole 64 bits are echoed (RFC 5944 §5.7.1). Nonces: `fresh_nonce` goes in the high 32
    /// bits, the request's low 32 bits are copied, and `fresh_nonce` becomes the one the next request must carry
    /// (RFC 5944 §5.7.2). When the request is a retransmission of the last accepted one and a nonce was already
    /// issued for it, that nonce is repeated instead, so whichever copy of the reply reaches the MN leaves it in
    /// sync \[G\].
    pub fn reply_identification(&mut self, style: &ReplayStyle, request_ident: u64, fresh_nonce: u32) -> u64 {
        match style {
            ReplayStyle::Timestamp { .. } => request_ident,
            ReplayStyle::Nonce => {
                let nonce = match self.nonce_issued {
                    Some(n) if self.last_accepted == Some(request_ident) => n,
                    _ => {
                        self.nonce_issued = Some(fresh_nonce);
                        fresh_nonce
                    }
                };
                join(nonce, low(request_ident))
            }
        }
    }

    /// The Identification of a code-133 reply (RFC 5944 §3.8.2.1, §5.7): the request's low 32 bits are always
    /// copied; the high 32 bits are the receiver's time in seconds for timestamps (spec §11.2 V7: request
    /// `ec4e5a00_12345678` at HA time `ec4e5b10.xxxxxxxx` gives `ec4e5b10_12345678`) or `fresh_nonce`, which is
    /// remembered as issued, for nonces.
    pub fn resync_identification(
        &mut self,
        style: &ReplayStyle,
        request_ident: u64,
        now: NtpTimestamp,
        fresh_nonce: u32,
    ) -> u64 {
        match style {
            ReplayStyle::Timestamp { .. } => join(now.seconds(), low(request_ident)),
            ReplayStyle::Nonce => {
                self.nonce_issued = Some(fresh_nonce);
                join(fresh_nonce, low(request_ident))
            }
        }
    }
}

/// What the mobile node makes of a reply's Identification ([`MnIdentification::check_reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCheck {
    /// Low 32 bits match and the registration was accepted (code 0 or 1).
    Accepted,
    /// Code 133: the generator has resynchronised; send a new request (RFC 5944 §3.6.2.3).
    Resynchronized,
    /// Low 32 bits match, the registration was denied for another reason.
    Denied,
    /// Low 32 bits differ from the latest request (or none was sent): discard the reply silently
    /// (RFC 5944 §3.6.2.1; spec §10 case 28).
    Mismatch,
}

/// Low 16 bits of a generated timestamp that are replaced by randomness: about 15 µs, far below both the accuracy
/// of any clock the MN and HA could agree on and the timestamp tolerance, and they make the low 32 bits (the part
/// echoed in every reply) hard to predict (RFC 5944 §5.7.1: fraction bits the clock does not provide SHOULD be
/// random).
const RANDOM_FRACTION_MASK: u64 = 0xFFFF;

/// Where, inside the second named by a code-133 reply, the MN assumes the HA's clock was: the middle, so the error
/// is at most half a second plus the transit time (RFC 5944 §3.6.2.3 leaves the estimate to the MN).
const RESYNC_FRACTION: u32 = 0x8000_0000;

/// The mobile node's Identification generator and reply checker, for one MN-HA security association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MnIdentification {
    /// Added (modulo 2^64) to the local clock: the offset to the HA's clock learned from code 133.
    offset: u64,
    /// The latest request sent: replies must echo its low 32 bits.
    last_sent: Option<u64>,
    /// The latest request the HA accepted.
    last_accepted: Option<u64>,
    /// Timestamps: the next request must be strictly later than this. Normally `last_sent`; after a resync it
    /// falls back to `last_accepted`, because the rejected requests were never recorded by the HA and may have
    /// been far ahead of its clock.
    floor: Option<u64>,
    /// Nonces: the HA nonce from the latest reply, to be used as the high 32 bits of the next request.
    nonce: Option<u32>,
}

impl MnIdentification {
    /// A generator that has neither sent nor received anything.
    pub const fn new() -> Self {
        MnIdentification {
            offset: 0,
            last_sent: None,
            last_accepted: None,
            floor: None,
            nonce: None,
        }
    }

    /// The latest Identification sent.
    pub const fn last_sent(&self) -> Option<u64> {
        self.last_sent
    }

    /// The Identification of the latest accepted request.
    pub const fn last_accepted(&self) -> Option<u64> {
        self.last_accepted
    }

    /// Nonces: the HA nonce the next request will carry.
    pub const fn nonce(&self) -> Option<u32> {
        self.nonce
    }

    /// The Identification for a new request, recorded as the latest sent.
    ///
    /// Timestamps (RFC 5944 §5.7.1): local clock `now` plus the offset learned from code-133 replies, with the
    /// lowest 16 fraction bits taken from `random`; always strictly later than the previous request even if the
    /// clock stepped back (after a resync: later than the last accepted one). Nonces (RFC 5944 §5.7.2): high 32
    /// bits = the HA's latest nonce (zero before the first reply: the HA then answers 133 with a nonce), low 32
    /// bits = `random`, changed if that would repeat the previous request.
    pub fn next_request(&mut self, style: &ReplayStyle, now: NtpTimestamp, random: u32) -> u64 {
        let ident = match style {
            ReplayStyle::Timestamp { .. } => {
                let r = u64::from(random) & RANDOM_FRACTION_MASK;
                let clock = now.0.wrapping_add(self.offset);
                let mut ident = (clock & !RANDOM_FRACTION_MASK) | r;
                if let Some(floor) = self.floor
                    && !is_after(ident, floor)
                {
                    ident = floor.wrapping_add(1 + r);
                }
                self.floor = Some(ident);
                ident
            }
            ReplayStyle::Nonce => {
                let mut ident = join(self.nonce.unwrap_or(0), random);
                // RFC 5944 §5.7: a new request MUST differ from the immediately preceding one.
                if self.last_sent == Some(ident) {
                    ident = join(self.nonce.unwrap_or(0), random.wrapping_add(1));
                }
                ident
            }
        };
        self.last_sent = Some(ident);
        ident
    }

    /// The Identification for a retransmission of the latest request (RFC 5944 §3.6.3; spec §10 case 29):
    /// timestamps use a new Identification (as [`next_request`](Self::next_request)), nonces resend the identical
    /// one. With nothing sent yet this is a new request.
    pub fn retransmission(&mut self, style: &ReplayStyle, now: NtpTimestamp, random: u32) -> u64 {
        match (style, self.last_sent) {
            (ReplayStyle::Nonce, Some(ident)) => ident,
            _ => self.next_request(style, now, random),
        }
    }

    /// Checks an authenticated reply's Identification against the latest request and updates the state
    /// (RFC 5944 §3.6.2.1, §3.6.2.3, §5.7). `now` is the local clock when the reply arrived.
    ///
    /// * low 32 bits differ from the latest request → [`ReplyCheck::Mismatch`], nothing changes;
    /// * code 133 → resynchronise: timestamps set the clock offset so the next request lands in the middle of
    ///   the second the HA named; nonces take the new nonce;
    /// * accepted → remember it; nonces take the HA's nonce;
    /// * other codes → nonces take the HA's nonce (it is in every reply, RFC 5944 §5.7.2).
    pub fn check_reply(
        &mut self,
        style: &ReplayStyle,
        reply_ident: u64,
        code: ReplyCode,
        now: NtpTimestamp,
    ) -> ReplyCheck {
        let Some(sent) = self.last_sent else {
            return ReplyCheck::Mismatch;
        };
        if low(sent) != low(reply_ident) {
            return ReplyCheck::Mismatch;
        }
        if let ReplayStyle::Nonce = style {
            self.nonce = Some(high(reply_ident));
        }
        if code.is_accepted() {
            self.last_accepted = Some(sent);
            ReplyCheck::Accepted
        } else if code == ReplyCode::IdentificationMismatch {
            if let ReplayStyle::Timestamp { .. } = style {
                let ha_time = join(high(reply_ident), RESYNC_FRACTION);
                self.offset = ha_time.wrapping_sub(now.0);
                self.floor = self.last_accepted;
            }
            ReplyCheck::Resynchronized
        } else {
            ReplyCheck::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TS: ReplayStyle = ReplayStyle::Timestamp {
        tolerance: DEFAULT_TIMESTAMP_TOLERANCE,
    };
    const NONCE: ReplayStyle = ReplayStyle::Nonce;

    /// HA clock of the V-vectors (spec §11.2): seconds 0xec4e5a00.
    const HA_NOW: NtpTimestamp = NtpTimestamp::new(0xec4e_5a00, 0x1000_0000);

    fn secs(s: f64) -> u64 {
        (s * 4_294_967_296.0) as u64
    }

    #[test]
    fn default_style_is_7s_timestamps() {
        assert_eq!(
            ReplayStyle::default(),
            ReplayStyle::Timestamp {
                tolerance: Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn v7_resync_identification() {
        let mut ha = ReplayState::new();
        let id = ha.resync_identification(&TS, 0xec4e_5a00_1234_5678, NtpTimestamp::new(0xec4e_5b10, 0xdead), 9);
        assert_eq!(id, 0xec4e_5b10_1234_5678);
    }

    #[test]
    fn first_timestamp_within_tolerance_is_fresh() {
        let ha = ReplayState::new();
        assert_eq!(ha.check(&TS, 0xec4e_5a00_1234_5678, HA_NOW), ReplayVerdict::Fresh);
        assert_eq!(
            ha.check(&TS, HA_NOW.0 - secs(6.9), HA_NOW),
            ReplayVerdict::Fresh,
            "6.9 s behind is within 7 s"
        );
        assert_eq!(
            ha.check(&TS, HA_NOW.0 - secs(7.1), HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::ClockSkew)
        );
    }

    #[test]
    fn case_25_timestamp_equal_to_last_accepted_then_resync() {
        let mut ha = ReplayState::new();
        let mut mn = MnIdentification::new();
        // The MN's clock agrees with the HA's; first registration accepted.
        let id1 = mn.next_request(&TS, HA_NOW, 0x5678);
        assert_eq!(ha.check(&TS, id1, HA_NOW), ReplayVerdict::Fresh);
        ha.accept(&TS, id1);
        let r1 = ha.reply_identification(&TS, id1, 0);
        assert_eq!(r1, id1, "timestamps echo all 64 bits");
        assert_eq!(
            mn.check_reply(&TS, r1, ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Accepted
        );

        // Replaying the same Identification: 133, V7 shape (HA seconds ‖ request low 32).
        let later = NtpTimestamp(HA_NOW.0 + secs(1.0));
        assert_eq!(
            ha.check(&TS, id1, later),
            ReplayVerdict::Mismatch(MismatchReason::NotNewer)
        );
        let r = ha.resync_identification(&TS, id1, later, 0);
        assert_eq!(high(r), later.seconds());
        assert_eq!(low(r), low(id1));

        // The MN (whose latest request was id1) resyncs and its next request succeeds.
        assert_eq!(
            mn.check_reply(&TS, r, ReplyCode::IdentificationMismatch, later),
            ReplyCheck::Resynchronized
        );
        let id2 = mn.next_request(&TS, later, 0xabcd);
        assert_eq!(ha.check(&TS, id2, later), ReplayVerdict::Fresh);
    }

    #[test]
    fn case_26_timestamp_8s_ahead_with_7s_tolerance() {
        let ha = ReplayState::new();
        assert_eq!(
            ha.check(&TS, HA_NOW.0 + secs(8.0), HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::ClockSkew)
        );
        assert_eq!(ha.check(&TS, HA_NOW.0 + secs(6.5), HA_NOW), ReplayVerdict::Fresh);
        let tight = ReplayStyle::Timestamp {
            tolerance: Duration::from_secs(4),
        };
        assert_eq!(
            ha.check(&tight, HA_NOW.0 + secs(6.5), HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::ClockSkew),
            "tolerance is per SA"
        );
    }

    #[test]
    fn case_27_timestamp_within_tolerance_but_lower_than_last_accepted() {
        let mut ha = ReplayState::new();
        let accepted = HA_NOW.0 + secs(2.0);
        ha.accept(&TS, accepted);
        let older = HA_NOW.0 + secs(1.0);
        assert_eq!(
            ha.check(&TS, older, HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::NotNewer)
        );
        assert_eq!(ha.check(&TS, accepted + 1, HA_NOW), ReplayVerdict::Fresh);
        // A late accept of the older value does not move the state backwards.
        ha.accept(&TS, older);
        assert_eq!(ha.last_accepted(), Some(accepted));
    }

    #[test]
    fn case_28_reply_with_other_low_bits_is_discarded() {
        let mut mn = MnIdentification::new();
        assert_eq!(
            mn.check_reply(&TS, 0x1234, ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Mismatch,
            "nothing sent yet"
        );
        let id = mn.next_request(&TS, HA_NOW, 7);
        let before = mn;
        let wrong = join(high(id), low(id) ^ 1);
        assert_eq!(
            mn.check_reply(&TS, wrong, ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Mismatch
        );
        assert_eq!(
            mn.check_reply(&TS, wrong, ReplyCode::IdentificationMismatch, HA_NOW),
            ReplyCheck::Mismatch
        );
        assert_eq!(mn, before, "a mismatching reply changes nothing");

        let mut mn = MnIdentification::new();
        let id = mn.next_request(&NONCE, HA_NOW, 7);
        assert_eq!(
            mn.check_reply(&NONCE, join(99, low(id) + 1), ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Mismatch
        );
        assert_eq!(mn.nonce(), None, "the nonce of a mismatching reply is not taken");
    }

    #[test]
    fn case_29_retransmission_timestamps_new_ident_nonces_identical() {
        // Timestamps: each retransmission gets a new, later Identification, which the HA accepts.
        let mut ha = ReplayState::new();
        let mut mn = MnIdentification::new();
        let id1 = mn.next_request(&TS, HA_NOW, 1);
        assert_eq!(ha.check(&TS, id1, HA_NOW), ReplayVerdict::Fresh);
        ha.accept(&TS, id1); // the reply is lost
        let t = NtpTimestamp(HA_NOW.0 + secs(1.0));
        let id2 = mn.retransmission(&TS, t, 2);
        assert_ne!(id2, id1);
        assert!(is_after(id2, id1));
        assert_eq!(ha.check(&TS, id2, t), ReplayVerdict::Fresh);
        // Even within the same clock tick with the same randomness.
        let id3 = mn.retransmission(&TS, t, 2);
        assert!(is_after(id3, id2));

        // Nonces: the identical request is resent and recognised as a retransmission.
        let mut ha = ReplayState::new();
        ha.record_issued_nonce(0x1111_1111);
        let mut mn = MnIdentification::new();
        let _ = mn.next_request(&NONCE, HA_NOW, 5);
        assert_eq!(
            mn.check_reply(&NONCE, join(0x1111_1111, 5), ReplyCode::IdentificationMismatch, HA_NOW),
            ReplyCheck::Resynchronized
        );
        let id = mn.next_request(&NONCE, HA_NOW, 0x2222_2222);
        assert_eq!(id, 0x1111_1111_2222_2222);
        assert_eq!(ha.check(&NONCE, id, HA_NOW), ReplayVerdict::Fresh);
        ha.accept(&NONCE, id);
        let reply = ha.reply_identification(&NONCE, id, 0x3333_3333);
        assert_eq!(reply, 0x3333_3333_2222_2222);
        // The reply is lost; the MN resends the identical request.
        let again = mn.retransmission(&NONCE, HA_NOW, 0x9999);
        assert_eq!(again, id);
        assert_eq!(ha.check(&NONCE, again, HA_NOW), ReplayVerdict::Retransmission);
        ha.accept(&NONCE, again);
        // The second reply repeats the nonce, so either copy leaves the MN in sync.
        assert_eq!(ha.reply_identification(&NONCE, again, 0x4444_4444), reply);
        assert_eq!(
            mn.check_reply(&NONCE, reply, ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Accepted
        );
        let next = mn.next_request(&NONCE, HA_NOW, 0x5555_5555);
        assert_eq!(ha.check(&NONCE, next, HA_NOW), ReplayVerdict::Fresh);
    }

    #[test]
    fn case_30_nonce_stale_then_resync() {
        let mut ha = ReplayState::new();
        let mut mn = MnIdentification::new();

        // First contact: no nonce issued yet → 133 carrying one.
        let id0 = mn.next_request(&NONCE, HA_NOW, 0xaaaa_0000);
        assert_eq!(
            ha.check(&NONCE, id0, HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::NoNonceIssued)
        );
        let r0 = ha.resync_identification(&NONCE, id0, HA_NOW, 0x0000_00a1);
        assert_eq!(r0, 0x0000_00a1_aaaa_0000);
        assert_eq!(
            mn.check_reply(&NONCE, r0, ReplyCode::IdentificationMismatch, HA_NOW),
            ReplyCheck::Resynchronized
        );

        // Accepted; the reply carries N1.
        let id1 = mn.next_request(&NONCE, HA_NOW, 0xaaaa_0001);
        assert_eq!(high(id1), 0xa1);
        assert_eq!(ha.check(&NONCE, id1, HA_NOW), ReplayVerdict::Fresh);
        ha.accept(&NONCE, id1);
        let n1 = 0x0000_0b01;
        let r1 = ha.reply_identification(&NONCE, id1, n1);
        assert_eq!(
            mn.check_reply(&NONCE, r1, ReplyCode::Accepted, HA_NOW),
            ReplyCheck::Accepted
        );

        // The next request must carry N1 in its high 32 bits.
        let id2 = mn.next_request(&NONCE, HA_NOW, 0xaaaa_0002);
        assert_eq!(high(id2), n1);

        // A request with a stale nonce (the consumed one) → 133 with a fresh nonce.
        let stale = join(0xa1, 0xaaaa_0003);
        assert_eq!(
            ha.check(&NONCE, stale, HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::WrongNonce)
        );
        let mut mn2 = MnIdentification::new();
        mn2.last_sent = Some(stale);
        let r = ha.resync_identification(&NONCE, stale, HA_NOW, 0x0000_0c01);
        assert_eq!(r, 0x0000_0c01_aaaa_0003);
        assert_eq!(
            mn2.check_reply(&NONCE, r, ReplyCode::IdentificationMismatch, HA_NOW),
            ReplyCheck::Resynchronized
        );
        // The following request with that nonce is accepted.
        let id3 = mn2.next_request(&NONCE, HA_NOW, 0xaaaa_0004);
        assert_eq!(high(id3), 0xc01);
        assert_eq!(ha.check(&NONCE, id3, HA_NOW), ReplayVerdict::Fresh);
        // N1 is no longer valid.
        assert_eq!(
            ha.check(&NONCE, id2, HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::WrongNonce)
        );
    }

    #[test]
    fn nonce_is_single_use() {
        let mut ha = ReplayState::new();
        ha.record_issued_nonce(7);
        let a = join(7, 1);
        assert_eq!(ha.check(&NONCE, a, HA_NOW), ReplayVerdict::Fresh);
        ha.accept(&NONCE, a);
        assert_eq!(
            ha.check(&NONCE, join(7, 2), HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::NoNonceIssued)
        );
    }

    #[test]
    fn denied_nonce_reply_updates_nonce() {
        let mut mn = MnIdentification::new();
        let id = mn.next_request(&NONCE, HA_NOW, 3);
        assert_eq!(
            mn.check_reply(&NONCE, join(42, low(id)), ReplyCode::HaProhibited, HA_NOW),
            ReplyCheck::Denied
        );
        assert_eq!(mn.nonce(), Some(42));
        assert_eq!(mn.last_accepted(), None);
    }

    #[test]
    fn mn_timestamp_monotonic_when_clock_steps_back() {
        let mut mn = MnIdentification::new();
        let a = mn.next_request(&TS, HA_NOW, 0xffff);
        let back = NtpTimestamp(HA_NOW.0 - secs(30.0));
        let b = mn.next_request(&TS, back, 0);
        assert!(is_after(b, a));
        let c = mn.next_request(&TS, back, 0);
        assert!(is_after(c, b));
        assert_eq!(mn.last_sent(), Some(c));
    }

    #[test]
    fn mn_resync_goes_back_when_clock_was_ahead() {
        // The MN's clock runs 100 s ahead; its request is refused, and after the resync it generates values near
        // the HA's clock again, lower than the rejected one.
        let mut ha = ReplayState::new();
        let mut mn = MnIdentification::new();
        let mn_clock = NtpTimestamp(HA_NOW.0 + secs(100.0));
        let id = mn.next_request(&TS, mn_clock, 1);
        assert_eq!(
            ha.check(&TS, id, HA_NOW),
            ReplayVerdict::Mismatch(MismatchReason::ClockSkew)
        );
        let r = ha.resync_identification(&TS, id, HA_NOW, 0);
        assert_eq!(
            mn.check_reply(&TS, r, ReplyCode::IdentificationMismatch, mn_clock),
            ReplyCheck::Resynchronized
        );
        let id2 = mn.next_request(&TS, mn_clock, 2);
        assert!(!is_after(id2, id));
        assert_eq!(ha.check(&TS, id2, HA_NOW), ReplayVerdict::Fresh);
    }

    #[test]
    fn timestamps_wrap_at_the_ntp_era() {
        let mut ha = ReplayState::new();
        let end_of_era = NtpTimestamp::new(u32::MAX, 0xf000_0000);
        ha.accept(&TS, end_of_era.0);
        let new_era = NtpTimestamp::new(0, 0x1000_0000);
        assert_eq!(ha.check(&TS, new_era.0, new_era), ReplayVerdict::Fresh);
        assert_eq!(
            ha.check(&TS, new_era.0, end_of_era),
            ReplayVerdict::Fresh,
            "0.125 s ahead"
        );
        assert_eq!(
            ha.check(&TS, end_of_era.0, new_era),
            ReplayVerdict::Mismatch(MismatchReason::NotNewer)
        );
        assert_eq!(
            ha.check(&TS, NtpTimestamp::new(8, 0).0, end_of_era),
            ReplayVerdict::Mismatch(MismatchReason::ClockSkew)
        );

        // The MN keeps counting up across the rollover, also through its floor.
        let mut mn = MnIdentification::new();
        let a = mn.next_request(&TS, end_of_era, 0);
        let b = mn.next_request(&TS, new_era, 0);
        assert!(is_after(b, a));
        assert!(b < a, "numerically smaller, later in wrapping order");
        let mut mn = MnIdentification::new();
        mn.floor = Some(u64::MAX);
        assert_eq!(mn.next_request(&TS, NtpTimestamp(0), 0), 0);
    }

    #[test]
    fn ntp_units_of_durations() {
        assert_eq!(ntp_units(Duration::from_secs(7)), 7 << 32);
        assert_eq!(ntp_units(Duration::from_millis(500)), 1 << 31);
        assert_eq!(ntp_units(Duration::MAX), u64::MAX);
        assert_eq!(
            ntp_units(Duration::from_secs(u64::from(u32::MAX))),
            0xffff_ffff_0000_0000
        );
        let everything = ReplayStyle::Timestamp {
            tolerance: Duration::MAX,
        };
        assert_eq!(
            ReplayState::new().check(&everything, 0, NtpTimestamp(1 << 63)),
            ReplayVerdict::Fresh
        );
    }

    proptest! {
        /// Timestamps: whatever the MN's clock error, after a code-133 resync its next Identification passes the
        /// HA's check, given a transit (request + reply + think time) below 5 s.
        #[test]
        fn resynced_timestamp_passes_ha_check(
            ha_start in any::<u64>(),
            // The MN's clock error while it was in sync enough to be accepted (within ±6 s).
            first_skew in -6_000i64..6_000,
            had_accepted in any::<bool>(),
            // Time until the clock goes wrong, and the new clock error (anything).
            gap_ms in 1u64..10_000_000,
            skew in any::<i64>(),
            transit_ms in 0u64..5_000,
            r1 in any::<u32>(), r2 in any::<u32>(), r3 in any::<u32>(),
        ) {
            let ms = |m: u64| m.wrapping_mul(4_294_967_296) / 1000;
            let mut ha = ReplayState::new();
            let mut mn = MnIdentification::new();
            let mut ha_now = ha_start;

            if had_accepted {
                let mn_clock = ha_now.wrapping_add_signed(first_skew * 4_294_967_296 / 1000);
                let id = mn.next_request(&TS, NtpTimestamp(mn_clock), r1);
                prop_assert_eq!(ha.check(&TS, id, NtpTimestamp(ha_now)), ReplayVerdict::Fresh);
                ha.accept(&TS, id);
                let reply = ha.reply_identification(&TS, id, 0);
                prop_assert_eq!(
                    mn.check_reply(&TS, reply, ReplyCode::Accepted, NtpTimestamp(mn_clock)),
                    ReplyCheck::Accepted
                );
            }

            // Later, with an arbitrary clock error, the MN sends a request; whether or not the HA likes it, it
            // answers 133 (as it would after, say, a replayed value).
            ha_now = ha_now.wrapping_add(ms(gap_ms));
            let mn_clock = ha_now.wrapping_add(skew as u64);
            let id = mn.next_request(&TS, NtpTimestamp(mn_clock), r2);
            let reply = ha.resync_identification(&TS, id, NtpTimestamp(ha_now), 0);
            // The reply arrives after up to `transit_ms`; the MN answers after the same time again.
            let arrive = mn_clock.wrapping_add(ms(transit_ms));
            prop_assert_eq!(
                mn.check_reply(&TS, reply, ReplyCode::IdentificationMismatch, NtpTimestamp(arrive)),
                ReplyCheck::Resynchronized
            );
            let next = mn.next_request(&TS, NtpTimestamp(arrive), r3);
            let ha_then = ha_now.wrapping_add(ms(transit_ms));
            prop_assert_eq!(ha.check(&TS, next, NtpTimestamp(ha_then)), ReplayVerdict::Fresh);
        }

        /// The MN's timestamps are strictly increasing whatever its clock does, as long as it does not resync.
        #[test]
        fn mn_timestamps_strictly_increase(clocks in proptest::collection::vec((any::<u64>(), any::<u32>()), 1..50)) {
            let mut mn = MnIdentification::new();
            let start = clocks.first().map(|c| c.0).unwrap_or(0);
            let mut prev: Option<u64> = None;
            for (c, r) in clocks {
                // Keep clocks within ±2^62 of the start so that "later" stays well defined.
                let clock = start.wrapping_add(c >> 2);
                let id = mn.next_request(&TS, NtpTimestamp(clock), r);
                if let Some(p) = prev {
                    prop_assert!(is_after(id, p));
                }
                prev = Some(id);
            }
        }

        /// The receiver never panics and a resync always copies the low 32 bits.
        #[test]
        fn resync_copies_low_bits(
            ident in any::<u64>(),
            now in any::<u64>(),
            nonce in any::<u32>(),
            nonce_style in any::<bool>(),
        ) {
            let style = if nonce_style { NONCE } else { TS };
            let mut ha = ReplayState::new();
            let _ = ha.check(&style, ident, NtpTimestamp(now));
            let r = ha.resync_identification(&style, ident, NtpTimestamp(now), nonce);
            prop_assert_eq!(low(r), low(ident));
        }
    }
}

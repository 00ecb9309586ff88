//! Registration Reply codes (RFC 5944 §3.4, RFC 3024 §3.3/§4.3, RFC 2794 §3, RFC 3519 §3.5, RFC 4064, and the
//! MIP-Proxy codes 200–206 of draft-adrangi-mobileip-vpn-traversal-02 §2.4.1, which were never IANA-assigned).

use core::fmt;

use crate::macros::enum_with_unknown;

enum_with_unknown! {
    /// Code field of a Registration Reply.
    pub enum ReplyCode(u8) {
        /// 0: registration accepted.
        Accepted = 0,
        /// 1: accepted, but simultaneous mobility bindings unsupported.
        AcceptedNoSimultaneous = 1,
        /// 64: FA: reason unspecified.
        FaUnspecified = 64,
        /// 65: FA: administratively prohibited.
        FaProhibited = 65,
        /// 66: FA: insufficient resources.
        FaInsufficientResources = 66,
        /// 67: FA: mobile node failed authentication.
        FaMnAuthFailed = 67,
        /// 68: FA: home agent failed authentication.
        FaHaAuthFailed = 68,
        /// 69: FA: requested lifetime too long.
        FaLifetimeTooLong = 69,
        /// 70: FA: poorly formed request.
        FaPoorlyFormedRequest = 70,
        /// 71: FA: poorly formed reply.
        FaPoorlyFormedReply = 71,
        /// 72: FA: requested encapsulation unavailable.
        FaEncapUnavailable = 72,
        /// 73: FA: reserved and unavailable (was VJ compression).
        FaReserved73 = 73,
        /// 74: FA: requested reverse tunnel unavailable (RFC 3024).
        FaReverseTunnelUnavailable = 74,
        /// 75: FA: reverse tunnel is mandatory and T bit not set (RFC 3024).
        FaReverseTunnelMandatory = 75,
        /// 76: FA: mobile node too distant (RFC 3024).
        FaMnTooDistant = 76,
        /// 77: FA: invalid care-of address.
        FaInvalidCoa = 77,
        /// 78: FA: registration timeout.
        FaRegistrationTimeout = 78,
        /// 79: FA: delivery style not supported (RFC 3024).
        FaDeliveryStyleUnsupported = 79,
        /// 80: FA: home network unreachable (ICMP error received).
        FaHomeNetworkUnreachable = 80,
        /// 81: FA: home agent host unreachable (ICMP error received).
        FaHaHostUnreachable = 81,
        /// 82: FA: home agent port unreachable (ICMP error received).
        FaHaPortUnreachable = 82,
        /// 88: FA: home agent unreachable (other ICMP error received).
        FaHaUnreachable = 88,
        /// 96: FA: nonzero home address required (RFC 2794).
        FaNonzeroHomeAddressRequired = 96,
        /// 97: FA: missing NAI (RFC 2794).
        MissingNai = 97,
        /// 98: FA: missing home agent (RFC 2794).
        MissingHomeAgent = 98,
        /// 99: FA: missing home address (RFC 2794).
        MissingHomeAddress = 99,
        /// 127: FA: experimental (RFC 4064).
        FaExperimental = 127,
        /// 128: HA: reason unspecified.
        HaUnspecified = 128,
        /// 129: HA: administratively prohibited (RFC 3519 also: NAT traversal or forced tunnel refused).
        HaProhibited = 129,
        /// 130: HA: insufficient resources.
        HaInsufficientResources = 130,
        /// 131: HA: mobile node failed authentication.
        HaMnAuthFailed = 131,
        /// 132: HA: foreign agent failed authentication.
        HaFaAuthFailed = 132,
        /// 133: HA: registration Identification mismatch.
        IdentificationMismatch = 133,
        /// 134: HA: poorly formed request.
        HaPoorlyFormedRequest = 134,
        /// 135: HA: too many simultaneous mobility bindings.
        HaTooManyBindings = 135,
        /// 136: HA: unknown home agent address.
        UnknownHomeAgent = 136,
        /// 137: HA: requested reverse tunnel unavailable (RFC 3024).
        HaReverseTunnelUnavailable = 137,
        /// 138: HA: reverse tunnel is mandatory and T bit not set (RFC 3024).
        HaReverseTunnelMandatory = 138,
        /// 139: HA: requested encapsulation unavailable (RFC 3024).
        HaEncapUnavailable = 139,
        /// 140: HA: CVSE from MN not understood (RFC 3115).
        HaMnCvseNotUnderstood = 140,
        /// 141: HA: CVSE from FA not understood (RFC 3115).
        HaFaCvseNotUnderstood = 141,
        /// 142: HA: requested UDP tunnel encapsulation unavailable (RFC 3519 §3.5).
        HaUdpEncapUnavailable = 142,
        /// 192: HA: experimental (RFC 4064).
        HaExperimental = 192,
        /// 194: invalid Home Agent address (RFC 5944, listed with the FA denials).
        InvalidHomeAgent = 194,
        /// 200: MIP proxy: missing HA Parameter extension (VT02 §2.4.1).
        ProxyMissingHaParameter = 200,
        /// 201: MIP proxy: nonzero HA address required in HA Parameter extension (VT02 §2.4.1).
        ProxyNonzeroHaRequired = 201,
        /// 202: MIP proxy: home agent unreachable, ICMP received (VT02 §2.4.1).
        ProxyHaUnreachable = 202,
        /// 203: MIP proxy: MISSING-NAI (VT02 §2.4.1).
        ProxyMissingNai = 203,
        /// 204: MIP proxy: MISSING-HOMEADDR (VT02 §2.4.1).
        ProxyMissingHomeAddress = 204,
        /// 205: MIP proxy: MISSING-HOME-AGENT (VT02 §2.4.1).
        ProxyMissingHomeAgent = 205,
        /// 206: MIP proxy: ASSIGNED-HOME-AGENT, the MN is inside and must register directly (VT02 §2.6.1).
        ProxyAssignedHomeAgent = 206,
    }
}

impl ReplyCode {
    /// Codes 0 and 1 accept the registration (RFC 5944 §3.4).
    pub fn is_accepted(self) -> bool {
        matches!(self, ReplyCode::Accepted | ReplyCode::AcceptedNoSimultaneous)
    }

    /// The numeric code.
    pub fn value(self) -> u8 {
        self.into()
    }

    /// Short description, as in the RFC tables.
    pub fn description(self) -> &'static str {
        use ReplyCode::*;
        match self {
            Accepted => "registration accepted",
            AcceptedNoSimultaneous => "accepted, simultaneous bindings unsupported",
            FaUnspecified => "FA: reason unspecified",
            FaProhibited => "FA: administratively prohibited",
            FaInsufficientResources => "FA: insufficient resources",
            FaMnAuthFailed => "FA: mobile node failed authentication",
            FaHaAuthFailed => "FA: home agent failed authentication",
            FaLifetimeTooLong => "FA: requested lifetime too long",
            FaPoorlyFormedRequest => "FA: poorly formed request",
            FaPoorlyFormedReply => "FA: poorly formed reply",
            FaEncapUnavailable => "FA: requested encapsulation unavailable",
            FaReserved73 => "FA: reserved and unavailable",
            FaReverseTunnelUnavailable => "FA: requested reverse tunnel unavailable",
            FaReverseTunnelMandatory => "FA: reverse tunnel mandatory and T bit not set",
            FaMnTooDistant => "FA: mobile node too distant",
            FaInvalidCoa => "FA: invalid care-of address",
            FaRegistrationTimeout => "FA: registration timeout",
            FaDeliveryStyleUnsupported => "FA: delivery style not supported",
            FaHomeNetworkUnreachable => "FA: home network unreachable",
            FaHaHostUnreachable => "FA: home agent host unreachable",
            FaHaPortUnreachable => "FA: home agent port unreachable",
            FaHaUnreachable => "FA: home agent unreachable",
            FaNonzeroHomeAddressRequired => "FA: nonzero home address required",
            MissingNai => "missing NAI",
            MissingHomeAgent => "missing home agent",
            MissingHomeAddress => "missing home address",
            FaExperimental => "FA: experimental",
            HaUnspecified => "HA: reason unspecified",
            HaProhibited => "HA: administratively prohibited",
            HaInsufficientResources => "HA: insufficient resources",
            HaMnAuthFailed => "HA: mobile node failed authentication",
            HaFaAuthFailed => "HA: foreign agent failed authentication",
            IdentificationMismatch => "HA: registration identification mismatch",
            HaPoorlyFormedRequest => "HA: poorly formed request",
            HaTooManyBindings => "HA: too many simultaneous bindings",
            UnknownHomeAgent => "HA: unknown home agent address",
            HaReverseTunnelUnavailable => "HA: requested reverse tunnel unavailable",
            HaReverseTunnelMandatory => "HA: reverse tunnel mandatory and T bit not set",
            HaEncapUnavailable => "HA: requested encapsulation unavailable",
            HaMnCvseNotUnderstood => "HA: CVSE from MN not understood",
            HaFaCvseNotUnderstood => "HA: CVSE from FA not understood",
            HaUdpEncapUnavailable => "HA: requested UDP tunnel encapsulation unavailable",
            HaExperimental => "HA: experimental",
            InvalidHomeAgent => "invalid home agent address",
            ProxyMissingHaParameter => "proxy: missing HA parameter extension",
            ProxyNonzeroHaRequired => "proxy: nonzero HA address required",
            ProxyHaUnreachable => "proxy: home agent unreachable",
            ProxyMissingNai => "proxy: missing NAI",
            ProxyMissingHomeAddress => "proxy: missing home address",
            ProxyMissingHomeAgent => "proxy: missing home agent",
            ProxyAssignedHomeAgent => "proxy: assigned home agent (register directly)",
            Unknown(_) => "unknown code",
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.value(), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(ReplyCode::from(v)), v);
        }
    }

    #[test]
    fn named_values() {
        assert_eq!(ReplyCode::from(133), ReplyCode::IdentificationMismatch);
        assert_eq!(ReplyCode::from(142), ReplyCode::HaUdpEncapUnavailable);
        assert_eq!(ReplyCode::from(2), ReplyCode::Unknown(2));
        assert!(ReplyCode::AcceptedNoSimultaneous.is_accepted());
        assert!(!ReplyCode::HaMnAuthFailed.is_accepted());
    }
}

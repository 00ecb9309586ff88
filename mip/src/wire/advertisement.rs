//! Agent Advertisement and Agent Solicitation (RFC 5944 §2; ICMP Router Discovery, RFC 1256).
//!
//! An Agent Advertisement is an ICMP Router Advertisement (type 9) followed by extensions in the
//! advertisement number space (separate from the registration one, RFC 5944 §1.8): Mobility Agent
//! Advertisement (16), Prefix-Lengths (19) and One-byte Padding (0). The skippability rule is the same:
//! unknown types 0–127 discard the advertisement, 128–255 are ignored.
//!
//! ```text
//! Type=9 | Code | Checksum | Num Addrs | Addr Entry Size=2 | Lifetime | {Router Address, Preference}*N | exts
//! ext 16: Type | Length=6+4k | Sequence | Registration Lifetime | Flags R B H F M G r T U X I | CoA*k
//! ```

use core::fmt;
use core::net::Ipv4Addr;

use super::checksum;
use super::icmp::{self, IcmpPacket};
use super::{Error, ErrorKind, Result, get_u8, get_u16, get_u32, room, set_bytes, set_u8, set_u16};

/// Mobility Agent Advertisement extension type.
pub const EXT_MOBILITY_AGENT: u8 = 16;
/// Prefix-Lengths extension type.
pub const EXT_PREFIX_LENGTHS: u8 = 19;
/// One-byte padding.
pub const EXT_PADDING: u8 = 0;

/// Code 0: the agent also routes common traffic; 16: it does not (RFC 5944 §2.1).
pub const CODE_ROUTES_COMMON_TRAFFIC: u8 = 0;
/// See [`CODE_ROUTES_COMMON_TRAFFIC`].
pub const CODE_NOT_A_ROUTER: u8 = 16;

const ROUTER_HEADER_LEN: usize = 8;
const ENTRY_WORDS: u8 = 2;
const ENTRY_LEN: usize = 8;

/// Flags of the Mobility Agent Advertisement extension (RFC 5944 §2.1.1; T: RFC 3024; U: RFC 3519 §3.4;
/// X: RFC 3543; I: RFC 4857). Unknown bits are kept and ignored (RFC 5944 §2.4, conformance case 15).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MobilityAgentFlags(pub u16);

impl MobilityAgentFlags {
    /// R: registration required.
    pub const R: u16 = 0x8000;
    /// B: busy.
    pub const B: u16 = 0x4000;
    /// H: home agent.
    pub const H: u16 = 0x2000;
    /// F: foreign agent.
    pub const F: u16 = 0x1000;
    /// M: minimal encapsulation.
    pub const M: u16 = 0x0800;
    /// G: GRE.
    pub const G: u16 = 0x0400;
    /// r: reserved (0).
    pub const R_RESERVED: u16 = 0x0200;
    /// T: reverse tunnelling supported.
    pub const T: u16 = 0x0100;
    /// U: UDP tunnelling (an FA behind a NAT).
    pub const U: u16 = 0x0080;
    /// X: registration revocation.
    pub const X: u16 = 0x0040;
    /// I: regional registration.
    pub const I: u16 = 0x0020;

    /// Whether every bit of `mask` is set.
    pub const fn has(self, mask: u16) -> bool {
        self.0 & mask == mask
    }

    /// The RFC 5944 §2.1.1 sender rules: B only with F, at least one of F and H, R only with F.
    pub const fn sender_rules_hold(self) -> bool {
        let f = self.has(Self::F);
        f || (self.has(Self::H) && !self.has(Self::B) && !self.has(Self::R))
    }
}

impl fmt::Debug for MobilityAgentFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(&str, u16); 11] = [
            ("R", MobilityAgentFlags::R),
            ("B", MobilityAgentFlags::B),
            ("H", MobilityAgentFlags::H),
            ("F", MobilityAgentFlags::F),
            ("M", MobilityAgentFlags::M),
            ("G", MobilityAgentFlags::G),
            ("r", MobilityAgentFlags::R_RESERVED),
            ("T", MobilityAgentFlags::T),
            ("U", MobilityAgentFlags::U),
            ("X", MobilityAgentFlags::X),
            ("I", MobilityAgentFlags::I),
        ];
        write!(f, "MobilityAgentFlags(")?;
        for (n, m) in NAMES {
            f.write_str(if self.has(m) { n } else { "-" })?;
        }
        write!(f, " {:#06x})", self.0)
    }
}

/// A packed list of IPv4 addresses as it sits on the wire (4 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrList<'a>(&'a [u8]);

impl<'a> AddrList<'a> {
    /// Wraps packed addresses; `None` unless the length is a multiple of 4.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(4).then_some(AddrList(bytes))
    }
    /// The addresses.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.0.chunks_exact(4).map(|c| Ipv4Addr::from(get_u32(c, 0)))
    }
    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The packed bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Mobility Agent Advertisement extension (type 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MobilityAgentExt<'a> {
    /// Sequence number (0 after boot, +1 per advertisement, 0xFFFF then 256; RFC 5944 §2.3.2).
    pub sequence: u16,
    /// Longest registration lifetime this agent accepts (0xFFFF = infinity).
    pub registration_lifetime: u16,
    /// Flags.
    pub flags: MobilityAgentFlags,
    /// Care-of addresses offered (at least one when F is set).
    pub care_of_addresses: AddrList<'a>,
}

impl MobilityAgentExt<'_> {
    /// Bytes when emitted.
    pub fn buffer_len(&self) -> usize {
        2 + 6 + self.care_of_addresses.0.len()
    }
}

/// An Agent Advertisement as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAdvertisementRepr<'a> {
    /// ICMP code: 0 routes common traffic, 16 does not.
    pub code: u8,
    /// ICMP Router Advertisement lifetime, seconds.
    pub lifetime: u16,
    /// Router entries (address, preference), 8 bytes each.
    pub routers: &'a [u8],
    /// The Mobility Agent Advertisement extension (absent: a plain router advertisement).
    pub mobility: Option<MobilityAgentExt<'a>>,
    /// Prefix-Lengths extension: one prefix length per router address.
    pub prefix_lengths: Option<&'a [u8]>,
}

/// Zero-copy view of an Agent Advertisement (an ICMP message, IP header excluded).
pub type AgentAdvertisement<T> = IcmpPacket<T>;

impl<'a> AgentAdvertisementRepr<'a> {
    /// Router entries as (address, preference).
    pub fn router_entries(&self) -> impl Iterator<Item = (Ipv4Addr, i32)> + 'a {
        self.routers
            .chunks_exact(ENTRY_LEN)
            .map(|c| (Ipv4Addr::from(get_u32(c, 0)), get_u32(c, 4) as i32))
    }

    /// Parses an ICMP Router Advertisement and its extensions; verifies the ICMP checksum.
    pub fn parse(icmp_bytes: &'a [u8]) -> Result<Self> {
        let p = IcmpPacket::new_checked(icmp_bytes)?;
        if p.msg_type() != icmp::types::ROUTER_ADVERTISEMENT {
            return Err(Error::new(ErrorKind::WrongType(p.msg_type()), 0));
        }
        if !p.verify_checksum() {
            return Err(Error::new(ErrorKind::BadChecksum, 2));
        }
        let num = usize::from(get_u8(icmp_bytes, 4));
        if get_u8(icmp_bytes, 5) != ENTRY_WORDS {
            return Err(Error::new(ErrorKind::BadValue, 5));
        }
        let ext_start = ROUTER_HEADER_LEN + num * ENTRY_LEN;
        let routers = icmp_bytes
            .get(ROUTER_HEADER_LEN..ext_start)
            .ok_or(Error::new(ErrorKind::Truncated, icmp_bytes.len()))?;
        let mut repr = AgentAdvertisementRepr {
            code: p.code(),
            lifetime: get_u16(icmp_bytes, 6),
            routers,
            mobility: None,
            prefix_lengths: None,
        };
        let mut at = ext_start;
        while let Some(&ty) = icmp_bytes.get(at) {
            if ty == EXT_PADDING {
                at += 1;
                continue;
            }
            let len = usize::from(get_u8(icmp_bytes, at + 1));
            let data = icmp_bytes
                .get(at + 2..at + 2 + len)
                .filter(|_| at + 1 < icmp_bytes.len())
                .ok_or(Error::new(ErrorKind::ExtensionTruncated(ty), at))?;
            match ty {
                EXT_MOBILITY_AGENT => {
                    if len < 6 || (len - 6) % 4 != 0 {
                        return Err(Error::new(ErrorKind::ExtensionLength(ty, len as u16), at + 1));
                    }
                    repr.mobility = Some(MobilityAgentExt {
                        sequence: get_u16(data, 0),
                        registration_lifetime: get_u16(data, 2),
                        flags: MobilityAgentFlags(get_u16(data, 4)),
                        care_of_addresses: AddrList(data.get(6..).unwrap_or(&[])),
                    });
                }
                EXT_PREFIX_LENGTHS => repr.prefix_lengths = Some(data),
                t if t >= 128 => {}
                t => return Err(Error::new(ErrorKind::UnknownNonSkippable(t), at)),
            }
            at += 2 + len;
        }
        Ok(repr)
    }

    /// Bytes the ICMP message occupies when emitted.
    pub fn buffer_len(&self) -> usize {
        ROUTER_HEADER_LEN
            + self.routers.len()
            + self.mobility.map_or(0, |m| m.buffer_len())
            + self.prefix_lengths.map_or(0, |p| 2 + p.len())
    }

    /// Writes the ICMP message (checksum included) at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        room(buf, len)?;
        if !self.routers.len().is_multiple_of(ENTRY_LEN) || self.routers.len() / ENTRY_LEN > 255 {
            return Err(Error::new(ErrorKind::BadValue, 4));
        }
        let out = buf.get_mut(..len).ok_or(Error::new(ErrorKind::BufferTooSmall, 0))?;
        set_u8(out, 0, icmp::types::ROUTER_ADVERTISEMENT);
        set_u8(out, 1, self.code);
        set_u16(out, 2, 0);
        set_u8(out, 4, (self.routers.len() / ENTRY_LEN) as u8);
        set_u8(out, 5, ENTRY_WORDS);
        set_u16(out, 6, self.lifetime);
        set_bytes(out, ROUTER_HEADER_LEN, self.routers);
        let mut at = ROUTER_HEADER_LEN + self.routers.len();
        if let Some(m) = self.mobility {
            let ext_len = u8::try_from(m.buffer_len() - 2).map_err(|_| {
                Error::new(
                    ErrorKind::ExtensionLength(EXT_MOBILITY_AGENT, (m.buffer_len() - 2) as u16),
                    at,
                )
            })?;
            set_u8(out, at, EXT_MOBILITY_AGENT);
            set_u8(out, at + 1, ext_len);
            set_u16(out, at + 2, m.sequence);
            set_u16(out, at + 4, m.registration_lifetime);
            set_u16(out, at + 6, m.flags.0);
            set_bytes(out, at + 8, m.care_of_addresses.0);
            at += m.buffer_len();
        }
        if let Some(p) = self.prefix_lengths {
            let ext_len = u8::try_from(p.len())
                .map_err(|_| Error::new(ErrorKind::ExtensionLength(EXT_PREFIX_LENGTHS, p.len() as u16), at))?;
            set_u8(out, at, EXT_PREFIX_LENGTHS);
            set_u8(out, at + 1, ext_len);
            set_bytes(out, at + 2, p);
        }
        let c = checksum::checksum(out);
        set_u16(out, 2, c);
        Ok(len)
    }
}

/// Agent Solicitation: an ICMP Router Solicitation (type 10, code 0, 4 reserved bytes; RFC 5944 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentSolicitation;

impl AgentSolicitation {
    /// Length of the ICMP message.
    pub const LEN: usize = 8;

    /// Parses a Router Solicitation; verifies type, code and checksum.
    pub fn parse(icmp_bytes: &[u8]) -> Result<Self> {
        let p = IcmpPacket::new_checked(icmp_bytes)?;
        if p.msg_type() != icmp::types::ROUTER_SOLICITATION {
            return Err(Error::new(ErrorKind::WrongType(p.msg_type()), 0));
        }
        if p.code() != 0 {
            return Err(Error::new(ErrorKind::BadValue, 1));
        }
        if !p.verify_checksum() {
            return Err(Error::new(ErrorKind::BadChecksum, 2));
        }
        Ok(AgentSolicitation)
    }

    /// Writes the 8-byte message.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        room(buf, Self::LEN)?;
        let out = buf
            .get_mut(..Self::LEN)
            .ok_or(Error::new(ErrorKind::BufferTooSmall, 0))?;
        out.copy_from_slice(&[icmp::types::ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]);
        let c = checksum::checksum(out);
        set_u16(out, 2, c);
        Ok(Self::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COA: [u8; 4] = [192, 0, 2, 1];

    fn spec_ext() -> MobilityAgentExt<'static> {
        MobilityAgentExt {
            sequence: 7,
            registration_lifetime: 1800,
            flags: MobilityAgentFlags(MobilityAgentFlags::F | MobilityAgentFlags::T | MobilityAgentFlags::U),
            care_of_addresses: AddrList(&COA),
        }
    }

    #[test]
    fn case_14_mobility_agent_extension_encode() {
        let adv = AgentAdvertisementRepr {
            code: CODE_NOT_A_ROUTER,
            lifetime: 1800,
            routers: &[],
            mobility: Some(spec_ext()),
            prefix_lengths: None,
        };
        let mut buf = [0u8; 64];
        let n = adv.emit(&mut buf).unwrap();
        assert_eq!(hex::encode(&buf[8..n]), "100a000707081180c0000201");
        let back = AgentAdvertisementRepr::parse(&buf[..n]).unwrap();
        assert_eq!(back, adv);
        assert_eq!(
            back.mobility.unwrap().care_of_addresses.iter().next(),
            Some(Ipv4Addr::new(192, 0, 2, 1))
        );
    }

    #[test]
    fn case_08_padding_in_agent_advertisement() {
        let routers = [10, 0, 0, 1, 0, 0, 0, 0];
        let adv = AgentAdvertisementRepr {
            code: 0,
            lifetime: 1800,
            routers: &routers,
            mobility: Some(spec_ext()),
            prefix_lengths: Some(&[24]),
        };
        let mut buf = [0u8; 64];
        let n = adv.emit(&mut buf).unwrap();
        // Insert one-byte padding between the two extensions and fix the checksum.
        let mut padded = buf[..n].to_vec();
        padded.insert(8 + 8 + 12, 0);
        padded[2] = 0;
        padded[3] = 0;
        let c = checksum::checksum(&padded);
        padded[2..4].copy_from_slice(&c.to_be_bytes());
        let back = AgentAdvertisementRepr::parse(&padded).unwrap();
        assert_eq!(back.prefix_lengths, Some(&[24u8][..]));
        assert_eq!(
            back.router_entries().collect::<Vec<_>>(),
            vec![(Ipv4Addr::new(10, 0, 0, 1), 0)]
        );
    }

    #[test]
    fn case_15_unknown_flag_bits_ignored() {
        let mut ext = spec_ext();
        ext.flags = MobilityAgentFlags(ext.flags.0 | 0x0010);
        let adv = AgentAdvertisementRepr {
            code: 16,
            lifetime: 1,
            routers: &[],
            mobility: Some(ext),
            prefix_lengths: None,
        };
        let mut buf = [0u8; 64];
        let n = adv.emit(&mut buf).unwrap();
        let back = AgentAdvertisementRepr::parse(&buf[..n]).unwrap().mobility.unwrap();
        assert!(
            back.flags
                .has(MobilityAgentFlags::F | MobilityAgentFlags::T | MobilityAgentFlags::U)
        );
        assert!(back.flags.sender_rules_hold());
        // B without F breaks the sender rules (the MN ignores such an advertisement).
        assert!(!MobilityAgentFlags(MobilityAgentFlags::B | MobilityAgentFlags::H).sender_rules_hold());
    }

    #[test]
    fn malformed_advertisements() {
        let adv = AgentAdvertisementRepr {
            code: 16,
            lifetime: 1,
            routers: &[],
            mobility: Some(spec_ext()),
            prefix_lengths: None,
        };
        let mut buf = [0u8; 64];
        let n = adv.emit(&mut buf).unwrap();
        // Truncated extension.
        let mut t = buf[..n - 1].to_vec();
        t[2] = 0;
        t[3] = 0;
        let c = checksum::checksum(&t);
        t[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            AgentAdvertisementRepr::parse(&t).unwrap_err(),
            Error::new(ErrorKind::ExtensionTruncated(16), 8)
        );
        // Bad checksum.
        let mut b = buf[..n].to_vec();
        b[9] ^= 1;
        assert_eq!(
            AgentAdvertisementRepr::parse(&b).unwrap_err().kind,
            ErrorKind::BadChecksum
        );
        // Num Addrs pointing past the end.
        let mut r = buf[..n].to_vec();
        r[4] = 9;
        r[2] = 0;
        r[3] = 0;
        let c = checksum::checksum(&r);
        r[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            AgentAdvertisementRepr::parse(&r).unwrap_err().kind,
            ErrorKind::Truncated
        );
    }

    #[test]
    fn solicitation_round_trip() {
        let mut buf = [0u8; 8];
        AgentSolicitation.emit(&mut buf).unwrap();
        assert_eq!(buf[0], 10);
        assert!(AgentSolicitation::parse(&buf).is_ok());
        buf[1] = 1;
        assert!(AgentSolicitation::parse(&buf).is_err());
    }
}

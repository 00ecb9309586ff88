//! Registration Request (type 1, RFC 5944 §3.3) and Registration Reply (type 3, RFC 5944 §3.4): the fixed
//! parts. Extensions that follow the fixed part are handled by [`crate::wire::extension`]; whole messages
//! (fixed part + validated extensions) by [`crate::wire::message`].

use core::fmt;
use core::net::Ipv4Addr;

use super::codes::ReplyCode;
use super::{
    Error, ErrorKind, Result, get_addr, get_u8, get_u16, get_u64, need, room, set_addr, set_u8, set_u16, set_u64,
};

/// Message type of a Registration Request (RFC 5944 §3.3).
pub const TYPE_REQUEST: u8 = 1;
/// Message type of a Registration Reply (RFC 5944 §3.4).
pub const TYPE_REPLY: u8 = 3;

mod field {
    use crate::wire::field::Field;
    pub const TYPE: usize = 0;
    // Request (RFC 5944 §3.3)
    pub const FLAGS: usize = 1;
    pub const LIFETIME: Field = 2..4;
    pub const HOME_ADDR: Field = 4..8;
    pub const HOME_AGENT: Field = 8..12;
    pub const COA: Field = 12..16;
    pub const IDENT: Field = 16..24;
    // Reply (RFC 5944 §3.4)
    pub const CODE: usize = 1;
    pub const REPLY_IDENT: Field = 12..20;
}

/// Length of a Registration Request's fixed part.
pub const REQUEST_HEADER_LEN: usize = field::IDENT.end;
/// Length of a Registration Reply's fixed part.
pub const REPLY_HEADER_LEN: usize = field::REPLY_IDENT.end;

/// The flags byte of a Registration Request (RFC 5944 §3.3; T from RFC 3024 §3.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RequestFlags(pub u8);

impl RequestFlags {
    /// S: simultaneous bindings.
    pub const S: u8 = 0x80;
    /// B: broadcast datagrams.
    pub const B: u8 = 0x40;
    /// D: decapsulation by the mobile node (co-located care-of address).
    pub const D: u8 = 0x20;
    /// M: minimal encapsulation.
    pub const M: u8 = 0x10;
    /// G: GRE encapsulation.
    pub const G: u8 = 0x08;
    /// r: reserved, sent as 0 (was Van Jacobson compression in RFC 2002).
    pub const R_RESERVED: u8 = 0x04;
    /// T: reverse tunnelling requested (RFC 3024).
    pub const T: u8 = 0x02;
    /// x: reserved, sent as 0.
    pub const X_RESERVED: u8 = 0x01;

    /// Whether every bit of `mask` is set.
    pub const fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    /// S bit.
    pub const fn simultaneous(self) -> bool {
        self.has(Self::S)
    }
    /// B bit.
    pub const fn broadcast(self) -> bool {
        self.has(Self::B)
    }
    /// D bit.
    pub const fn decapsulation_by_mn(self) -> bool {
        self.has(Self::D)
    }
    /// M bit.
    pub const fn minimal_encap(self) -> bool {
        self.has(Self::M)
    }
    /// G bit.
    pub const fn gre(self) -> bool {
        self.has(Self::G)
    }
    /// T bit.
    pub const fn reverse_tunnel(self) -> bool {
        self.has(Self::T)
    }
    /// Whether either reserved bit (r, x) is set.
    pub const fn reserved_set(self) -> bool {
        self.0 & (Self::R_RESERVED | Self::X_RESERVED) != 0
    }
    /// These flags as a new request must send them: r and x cleared (RFC 5944 §3.3). Parsing keeps them as
    /// received, so a relayed or re-emitted message round-trips.
    #[must_use]
    pub const fn for_new_request(self) -> Self {
        RequestFlags(self.0 & !(Self::R_RESERVED | Self::X_RESERVED))
    }
    /// These flags with `mask` set or cleared.
    #[must_use]
    pub const fn with(self, mask: u8, on: bool) -> Self {
        if on {
            RequestFlags(self.0 | mask)
        } else {
            RequestFlags(self.0 & !mask)
        }
    }
    /// The eight flags in wire order with their names (S B D M G r T x).
    pub fn named(self) -> [(&'static str, bool); 8] {
        [
            ("S", self.has(Self::S)),
            ("B", self.has(Self::B)),
            ("D", self.has(Self::D)),
            ("M", self.has(Self::M)),
            ("G", self.has(Self::G)),
            ("r", self.has(Self::R_RESERVED)),
            ("T", self.has(Self::T)),
            ("x", self.has(Self::X_RESERVED)),
        ]
    }
}

impl fmt::Debug for RequestFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestFlags({self})")
    }
}

impl fmt::Display for RequestFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, on) in self.named() {
            f.write_str(if on { name } else { "-" })?;
        }
        Ok(())
    }
}

// === Registration Request view ===

/// Zero-copy view of a Registration Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationRequest<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RegistrationRequest<T> {
    /// Wraps a buffer without checks; accessors return 0 for fields past the end.
    pub const fn new_unchecked(buffer: T) -> Self {
        RegistrationRequest { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the fixed part (24 bytes) is present. No setter invalidates this.
    pub fn check_len(&self) -> Result<()> {
        need(self.buffer.as_ref(), REQUEST_HEADER_LEN)
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Type byte (1 for a request).
    pub fn msg_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TYPE)
    }
    /// Flags byte.
    pub fn flags(&self) -> RequestFlags {
        RequestFlags(get_u8(self.buffer.as_ref(), field::FLAGS))
    }
    /// Requested lifetime in seconds (0 = deregistration, 0xFFFF = infinity).
    pub fn lifetime(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LIFETIME.start)
    }
    /// Home Address.
    pub fn home_address(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::HOME_ADDR.start)
    }
    /// Home Agent.
    pub fn home_agent(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::HOME_AGENT.start)
    }
    /// Care-of Address.
    pub fn care_of_address(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::COA.start)
    }
    /// 64-bit Identification.
    pub fn identification(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::IDENT.start)
    }
    /// The bytes after the fixed part (the extensions).
    pub fn extensions(&self) -> &[u8] {
        self.buffer.as_ref().get(REQUEST_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RegistrationRequest<T> {
    /// Sets the type byte.
    pub fn set_msg_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::TYPE, v);
    }
    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: RequestFlags) {
        set_u8(self.buffer.as_mut(), field::FLAGS, v.0);
    }
    /// Sets the lifetime.
    pub fn set_lifetime(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LIFETIME.start, v);
    }
    /// Sets the Home Address.
    pub fn set_home_address(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::HOME_ADDR.start, v);
    }
    /// Sets the Home Agent.
    pub fn set_home_agent(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::HOME_AGENT.start, v);
    }
    /// Sets the Care-of Address.
    pub fn set_care_of_address(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::COA.start, v);
    }
    /// Sets the Identification.
    pub fn set_identification(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::IDENT.start, v);
    }
}

/// The fixed part of a Registration Request as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestRepr {
    /// Flags (S B D M G r T x). Parsing keeps r/x as received; new requests should send them as 0.
    pub flags: RequestFlags,
    /// Requested lifetime, seconds.
    pub lifetime: u16,
    /// Home Address (0.0.0.0 with an NAI to request assignment, RFC 2794).
    pub home_address: Ipv4Addr,
    /// Home Agent address.
    pub home_agent: Ipv4Addr,
    /// Care-of Address.
    pub care_of_address: Ipv4Addr,
    /// Identification (timestamp or nonce pair, RFC 5944 §5.7).
    pub identification: u64,
}

impl RequestRepr {
    /// Parses the fixed part; the type byte must be 1.
    pub fn parse<T: AsRef<[u8]>>(p: &RegistrationRequest<T>) -> Result<Self> {
        p.check_len()?;
        if p.msg_type() != TYPE_REQUEST {
            return Err(Error::new(ErrorKind::WrongType(p.msg_type()), field::TYPE));
        }
        Ok(RequestRepr {
            flags: p.flags(),
            lifetime: p.lifetime(),
            home_address: p.home_address(),
            home_agent: p.home_agent(),
            care_of_address: p.care_of_address(),
            identification: p.identification(),
        })
    }

    /// Bytes the fixed part occupies.
    pub const fn buffer_len(&self) -> usize {
        REQUEST_HEADER_LEN
    }

    /// Writes the fixed part into the first 24 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(buf, REQUEST_HEADER_LEN)?;
        let mut p = RegistrationRequest::new_unchecked(buf);
        p.set_msg_type(TYPE_REQUEST);
        p.set_flags(self.flags);
        p.set_lifetime(self.lifetime);
        p.set_home_address(self.home_address);
        p.set_home_agent(self.home_agent);
        p.set_care_of_address(self.care_of_address);
        p.set_identification(self.identification);
        Ok(())
    }
}

impl fmt::Display for RequestRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RRQ flags={} life={} HoA={} HA={} CoA={} id={:016x}",
            self.flags, self.lifetime, self.home_address, self.home_agent, self.care_of_address, self.identification
        )
    }
}

// === Registration Reply view ===

/// Zero-copy view of a Registration Reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RegistrationReply<T> {
    /// Wraps a buffer without checks; accessors return 0 for fields past the end.
    pub const fn new_unchecked(buffer: T) -> Self {
        RegistrationReply { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the fixed part (20 bytes) is present. No setter invalidates this.
    pub fn check_len(&self) -> Result<()> {
        need(self.buffer.as_ref(), REPLY_HEADER_LEN)
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Type byte (3 for a reply).
    pub fn msg_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TYPE)
    }
    /// Reply code.
    pub fn code(&self) -> ReplyCode {
        ReplyCode::from(get_u8(self.buffer.as_ref(), field::CODE))
    }
    /// Granted lifetime, seconds.
    pub fn lifetime(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LIFETIME.start)
    }
    /// Home Address.
    pub fn home_address(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::HOME_ADDR.start)
    }
    /// Home Agent.
    pub fn home_agent(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::HOME_AGENT.start)
    }
    /// 64-bit Identification.
    pub fn identification(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::REPLY_IDENT.start)
    }
    /// The bytes after the fixed part (the extensions).
    pub fn extensions(&self) -> &[u8] {
        self.buffer.as_ref().get(REPLY_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RegistrationReply<T> {
    /// Sets the type byte.
    pub fn set_msg_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::TYPE, v);
    }
    /// Sets the reply code.
    pub fn set_code(&mut self, v: ReplyCode) {
        set_u8(self.buffer.as_mut(), field::CODE, v.into());
    }
    /// Sets the lifetime.
    pub fn set_lifetime(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LIFETIME.start, v);
    }
    /// Sets the Home Address.
    pub fn set_home_address(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::HOME_ADDR.start, v);
    }
    /// Sets the Home Agent.
    pub fn set_home_agent(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::HOME_AGENT.start, v);
    }
    /// Sets the Identification.
    pub fn set_identification(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::REPLY_IDENT.start, v);
    }
}

/// The fixed part of a Registration Reply as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyRepr {
    /// Reply code.
    pub code: ReplyCode,
    /// Granted lifetime, seconds.
    pub lifetime: u16,
    /// Home Address.
    pub home_address: Ipv4Addr,
    /// Home Agent.
    pub home_agent: Ipv4Addr,
    /// Identification.
    pub identification: u64,
}

impl ReplyRepr {
    /// Parses the fixed part; the type byte must be 3.
    pub fn parse<T: AsRef<[u8]>>(p: &RegistrationReply<T>) -> Result<Self> {
        p.check_len()?;
        if p.msg_type() != TYPE_REPLY {
            return Err(Error::new(ErrorKind::WrongType(p.msg_type()), field::TYPE));
        }
        Ok(ReplyRepr {
            code: p.code(),
            lifetime: p.lifetime(),
            home_address: p.home_address(),
            home_agent: p.home_agent(),
            identification: p.identification(),
        })
    }

    /// Bytes the fixed part occupies.
    pub const fn buffer_len(&self) -> usize {
        REPLY_HEADER_LEN
    }

    /// Writes the fixed part into the first 20 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(buf, REPLY_HEADER_LEN)?;
        let mut p = RegistrationReply::new_unchecked(buf);
        p.set_msg_type(TYPE_REPLY);
        p.set_code(self.code);
        p.set_lifetime(self.lifetime);
        p.set_home_address(self.home_address);
        p.set_home_agent(self.home_agent);
        p.set_identification(self.identification);
        Ok(())
    }
}

impl fmt::Display for ReplyRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RRP code={} life={} HoA={} HA={} id={:016x}",
            self.code, self.lifetime, self.home_address, self.home_agent, self.identification
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Spec §11.2 V1, fixed part only (24 bytes).
    static V1_FIXED: [u8; 24] = [
        0x01, 0x22, 0x02, 0x58, 0x0a, 0x0a, 0x01, 0x32, 0xc6, 0x33, 0x64, 0x0a, 0xc0, 0x00, 0x02, 0x4d, 0xec, 0x4e,
        0x5a, 0x00, 0x12, 0x34, 0x56, 0x78,
    ];
    // Spec §11.2 V3, fixed part only (20 bytes).
    static V3_FIXED: [u8; 20] = [
        0x03, 0x00, 0x02, 0x58, 0x0a, 0x0a, 0x01, 0x32, 0x0a, 0x0a, 0x01, 0x01, 0xec, 0x4e, 0x5a, 0x00, 0x12, 0x34,
        0x56, 0x78,
    ];

    fn v1_repr() -> RequestRepr {
        RequestRepr {
            flags: RequestFlags(RequestFlags::D | RequestFlags::T),
            lifetime: 600,
            home_address: Ipv4Addr::new(10, 10, 1, 50),
            home_agent: Ipv4Addr::new(198, 51, 100, 10),
            care_of_address: Ipv4Addr::new(192, 0, 2, 77),
            identification: 0xec4e5a00_12345678,
        }
    }

    #[test]
    fn test_deconstruct_request() {
        let p = RegistrationRequest::new_checked(&V1_FIXED[..]).unwrap();
        assert_eq!(p.msg_type(), 1);
        assert!(p.flags().decapsulation_by_mn() && p.flags().reverse_tunnel());
        assert!(!p.flags().simultaneous());
        assert_eq!(p.lifetime(), 600);
        assert_eq!(p.home_address(), Ipv4Addr::new(10, 10, 1, 50));
        assert_eq!(p.home_agent(), Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(p.care_of_address(), Ipv4Addr::new(192, 0, 2, 77));
        assert_eq!(p.identification(), 0xec4e5a00_12345678);
        assert!(p.extensions().is_empty());
    }

    #[test]
    fn test_construct_request() {
        let mut buf = [0xa5u8; 24];
        let mut p = RegistrationRequest::new_unchecked(&mut buf[..]);
        p.set_msg_type(1);
        p.set_flags(RequestFlags(0x22));
        p.set_lifetime(600);
        p.set_home_address(Ipv4Addr::new(10, 10, 1, 50));
        p.set_home_agent(Ipv4Addr::new(198, 51, 100, 10));
        p.set_care_of_address(Ipv4Addr::new(192, 0, 2, 77));
        p.set_identification(0xec4e5a00_12345678);
        assert_eq!(buf, V1_FIXED);
    }

    #[test]
    fn test_parse_emit_request() {
        let p = RegistrationRequest::new_checked(&V1_FIXED[..]).unwrap();
        assert_eq!(RequestRepr::parse(&p).unwrap(), v1_repr());
        let mut buf = [0u8; 24];
        v1_repr().emit(&mut buf).unwrap();
        assert_eq!(buf, V1_FIXED);
    }

    #[test]
    fn test_parse_emit_reply() {
        let p = RegistrationReply::new_checked(&V3_FIXED[..]).unwrap();
        let r = ReplyRepr::parse(&p).unwrap();
        assert_eq!(r.code, ReplyCode::Accepted);
        assert_eq!(r.lifetime, 600);
        assert_eq!(r.home_agent, Ipv4Addr::new(10, 10, 1, 1));
        assert_eq!(r.identification, 0xec4e5a00_12345678);
        let mut buf = [0u8; 20];
        r.emit(&mut buf).unwrap();
        assert_eq!(buf, V3_FIXED);
    }

    #[test]
    fn test_impossible_len() {
        assert_eq!(
            RegistrationRequest::new_checked(&V1_FIXED[..23]).unwrap_err(),
            Error::new(ErrorKind::Truncated, 23)
        );
        assert_eq!(
            RegistrationReply::new_checked(&V3_FIXED[..19]).unwrap_err(),
            Error::new(ErrorKind::Truncated, 19)
        );
        // Unchecked views on empty buffers read zeros instead of panicking.
        let p = RegistrationRequest::new_unchecked(&[][..]);
        assert_eq!(p.identification(), 0);
        let mut small = [0u8; 3];
        assert_eq!(v1_repr().emit(&mut small).unwrap_err().kind, ErrorKind::BufferTooSmall);
    }

    #[test]
    fn wrong_type_is_reported_at_offset_0() {
        let mut b = V1_FIXED;
        b[0] = 3;
        let e = RequestRepr::parse(&RegistrationRequest::new_unchecked(&b[..])).unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::WrongType(3), 0));
    }

    #[test]
    fn flags_display() {
        assert_eq!(RequestFlags(0x22).to_string(), "--D---T-");
        assert_eq!(RequestFlags(0xff).to_string(), "SBDMGrTx");
    }
}

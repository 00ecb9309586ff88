//! IPv4 header (RFC 791) as the tunnels need it: a view with checked lengths and checksum, and a Repr that
//! emits an option-less header (RFC 2003 §3.1: options are not copied to the outer header).

use core::fmt;
use core::net::Ipv4Addr;

use super::checksum;
use super::{Error, ErrorKind, Result, get_addr, get_u8, get_u16, need, room, set_addr, set_u8, set_u16};

/// IP protocol numbers used here.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IP-in-IP (RFC 2003).
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ESP.
    pub const ESP: u8 = 50;
    /// Minimal encapsulation (RFC 2004).
    pub const MINIMAL: u8 = 55;
}

mod field {
    use crate::wire::field::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// Zero-copy view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the version is 4, the header (with options) fits, and Total Length covers the header and fits
    /// in the buffer (the buffer may be longer, e.g. link-layer padding). `set_header_len` and
    /// `set_total_len` can invalidate this.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        need(b, HEADER_LEN)?;
        if self.version() != 4 {
            return Err(Error::new(ErrorKind::BadVersion, field::VER_IHL));
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > b.len() {
            return Err(Error::new(ErrorKind::BadHeaderLength, field::VER_IHL));
        }
        let total = usize::from(self.total_len());
        if total < hl || total > b.len() {
            return Err(Error::new(ErrorKind::BadLength, field::LENGTH.start));
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (4).
    pub fn version(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::VER_IHL) >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(get_u8(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }
    /// Type of service / DSCP+ECN byte.
    pub fn tos(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TOS)
    }
    /// Total length.
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT.start)
    }
    /// Don't Fragment.
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & FLAG_DF != 0
    }
    /// More Fragments.
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & 0x1fff) << 3
    }
    /// Whether this is a fragment (offset ≠ 0 or MF set).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TTL)
    }
    /// Protocol.
    pub fn protocol(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::PROTOCOL)
    }
    /// Header checksum.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::SRC.start)
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        get_addr(self.buffer.as_ref(), field::DST.start)
    }
    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let hl = self.header_len();
        match self.buffer.as_ref().get(..hl) {
            Some(h) => checksum::sum(h) == 0xffff,
            None => false,
        }
    }
    /// The header bytes (with options).
    pub fn header(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(..self.header_len()).unwrap_or(b)
    }
    /// The payload, bounded by Total Length.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.header_len()..usize::from(self.total_len())).unwrap_or(&[])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The payload, bounded by Total Length, borrowed for as long as the buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let (hl, total) = (self.header_len(), usize::from(self.total_len()));
        self.buffer.as_ref().get(hl..total).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length (bytes, multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = ((header_len / 4) & 0x0f) as u8;
        set_u8(self.buffer.as_mut(), field::VER_IHL, 0x40 | ihl);
    }
    /// Sets TOS.
    pub fn set_tos(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::TOS, v);
    }
    /// Sets Total Length.
    pub fn set_total_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }
    /// Sets Identification.
    pub fn set_ident(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT.start, v);
    }
    /// Sets DF, MF and the fragment offset (bytes, multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & 0x1fff;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        set_u16(self.buffer.as_mut(), field::FLG_OFF.start, v);
    }
    /// Sets TTL.
    pub fn set_ttl(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::TTL, v);
    }
    /// Sets Protocol.
    pub fn set_protocol(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::PROTOCOL, v);
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::SRC.start, v);
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, v: Ipv4Addr) {
        set_addr(self.buffer.as_mut(), field::DST.start, v);
    }
    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM.start, 0);
        let hl = self.header_len();
        let c = self.buffer.as_ref().get(..hl).map(checksum::checksum).unwrap_or(0);
        set_u16(self.buffer.as_mut(), field::CHECKSUM.start, c);
    }
    /// Decrements TTL and patches the checksum incrementally (RFC 1624), for forwarding.
    pub fn decrement_ttl(&mut self) {
        let ttl = self.ttl();
        if ttl == 0 {
            return;
        }
        // TTL is the high byte of the 16-bit word at offset 8: it changes by 0x0100.
        let old = self.checksum();
        let sum = u32::from(!old) + 0xfeff; // ~old + ~(0x0100) in one's complement
        let folded = (sum & 0xffff) + (sum >> 16);
        self.set_ttl(ttl - 1);
        set_u16(
            self.buffer.as_mut(),
            field::CHECKSUM.start,
            !((folded & 0xffff) + (folded >> 16)) as u16,
        );
    }
    /// Mutable payload, bounded by Total Length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (self.header_len(), usize::from(self.total_len()));
        self.buffer.as_mut().get_mut(hl..total).unwrap_or(&mut [])
    }
}

/// An option-less IPv4 header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source.
    pub src_addr: Ipv4Addr,
    /// Destination.
    pub dst_addr: Ipv4Addr,
    /// Protocol.
    pub protocol: u8,
    /// Payload length.
    pub payload_len: usize,
    /// TTL.
    pub ttl: u8,
    /// TOS byte.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Parses a packet's header (options are skipped, not kept); verifies the checksum. Fragments parse
    /// fine: callers that cannot handle them check [`Ipv4Packet::is_fragment`].
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::new(ErrorKind::BadChecksum, field::CHECKSUM.start));
        }
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
            tos: p.tos(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Header length when emitted (no options).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with checksum at the start of `buf`. Total Length must fit 16 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(buf, HEADER_LEN)?;
        let total = self
            .payload_len
            .checked_add(HEADER_LEN)
            .and_then(|t| u16::try_from(t).ok())
            .ok_or(Error::new(ErrorKind::BadLength, field::LENGTH.start))?;
        let mut p = Ipv4Packet::new_unchecked(buf);
        p.set_version_and_header_len(HEADER_LEN);
        p.set_tos(self.tos);
        p.set_total_len(total);
        p.set_ident(self.ident);
        p.set_frag(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
        Ok(())
    }
}

impl fmt::Display for Ipv4Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv4 {} > {} proto {} len {} ttl {}",
            self.src_addr, self.dst_addr, self.protocol, self.payload_len, self.ttl
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static HEADER: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x4d, 0xc6, 0x33,
        0x64, 0x0a, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    fn header_with_checksum() -> [u8; 24] {
        let mut h = HEADER;
        Ipv4Packet::new_unchecked(&mut h[..]).fill_checksum();
        h
    }

    #[test]
    fn test_parse_emit() {
        let h = header_with_checksum();
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.src_addr, Ipv4Addr::new(192, 168, 1, 77));
        assert_eq!(r.dst_addr, Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(
            (r.protocol, r.payload_len, r.ttl, r.ident, r.dont_frag),
            (17, 4, 64, 0x1234, true)
        );
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        let mut out = [0u8; 24];
        r.emit(&mut out).unwrap();
        out[20..].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(out, h);
    }

    #[test]
    fn test_impossible_len() {
        let mut h = header_with_checksum();
        assert_eq!(
            Ipv4Packet::new_checked(&h[..19]).unwrap_err().kind,
            ErrorKind::Truncated
        );
        h[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            Error::new(ErrorKind::BadHeaderLength, 0)
        );
        h[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            Error::new(ErrorKind::BadVersion, 0)
        );
        h[0] = 0x45;
        h[3] = 0x30; // total length 48 > 24
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            Error::new(ErrorKind::BadLength, 2)
        );
        h[3] = 0x10; // total length 16 < header
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            Error::new(ErrorKind::BadLength, 2)
        );
    }

    #[test]
    fn emit_refuses_impossible_payload_length() {
        let h = header_with_checksum();
        let mut r = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&h[..])).unwrap();
        for len in [usize::MAX, 65_516] {
            r.payload_len = len;
            assert_eq!(r.emit(&mut [0u8; 20]).unwrap_err(), Error::new(ErrorKind::BadLength, 2));
        }
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut h = header_with_checksum();
        h[11] ^= 1;
        let e = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&h[..])).unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::BadChecksum, 10));
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        for ttl in [1u8, 2, 64, 128, 255] {
            let mut h = HEADER;
            h[8] = ttl;
            let mut p = Ipv4Packet::new_unchecked(&mut h[..]);
            p.fill_checksum();
            p.decrement_ttl();
            assert_eq!(p.ttl(), ttl - 1);
            assert!(p.verify_checksum(), "ttl {ttl}");
        }
    }
}

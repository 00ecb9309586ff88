//! UDP header (RFC 768) with the IPv4 pseudo-header checksum. Mobile IP sends a nonzero checksum and MUST
//! verify a nonzero one; zero means "not computed" and is accepted (RFC 5944 §3.1).

use core::net::Ipv4Addr;

use super::checksum;
use super::ipv4::protocol;
use super::{Error, ErrorKind, Result, get_u16, need, room, set_u16};

mod field {
    use crate::wire::field::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// UDP header length.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// The Mobile IP port (RFC 5944 §1.8, RFC 3519 §2).
pub const MIP_PORT: u16 = 434;

/// Zero-copy view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the header fits and the Length field lies between 8 and the buffer length.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        need(b, HEADER_LEN)?;
        let len = usize::from(self.len());
        if len < HEADER_LEN || len > b.len() {
            return Err(Error::new(ErrorKind::BadLength, field::LENGTH.start));
        }
        Ok(())
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }
    /// Length field (header + payload).
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
    /// Whether the Length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Payload, bounded by the Length field.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..usize::from(self.len()))
            .unwrap_or(&[])
    }
    /// Whether the checksum verifies for these addresses; a zero checksum always passes.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let Some(datagram) = self.buffer.as_ref().get(..usize::from(self.len())) else {
            return false;
        };
        let acc = checksum::pseudo_header(src, dst, protocol::UDP, self.len());
        checksum::fold(checksum::accumulate(acc, datagram)) == 0xffff
    }
    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }
    /// Sets the Length field.
    pub fn set_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }
    /// Computes and stores the checksum over the pseudo-header and `len()` bytes (0 is sent as 0xffff).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM.start, 0);
        let len = self.len();
        let acc = checksum::pseudo_header(src, dst, protocol::UDP, len);
        let data = self.buffer.as_ref().get(..usize::from(len)).unwrap_or(&[]);
        let c = !checksum::fold(checksum::accumulate(acc, data));
        set_u16(
            self.buffer.as_mut(),
            field::CHECKSUM.start,
            if c == 0 { 0xffff } else { c },
        );
    }
    /// Mutable payload, bounded by the Length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        self.buffer.as_mut().get_mut(HEADER_LEN..len).unwrap_or(&mut [])
    }
}

/// A UDP header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses the header and verifies a nonzero checksum against the IP addresses.
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::new(ErrorKind::BadChecksum, field::CHECKSUM.start));
        }
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
        })
    }

    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header in front of the `payload_len` bytes that must already follow it in `buf`, and fills
    /// the checksum.
    pub fn emit(&self, buf: &mut [u8], payload_len: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        let total = payload_len
            .checked_add(HEADER_LEN)
            .ok_or(Error::new(ErrorKind::BadLength, field::LENGTH.start))?;
        room(buf, total)?;
        let len = u16::try_from(total).map_err(|_| Error::new(ErrorKind::BadLength, field::LENGTH.start))?;
        let mut p = UdpPacket::new_unchecked(buf);
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(len);
        p.fill_checksum(src, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    #[test]
    fn emit_then_verify() {
        let mut buf = [0u8; 13];
        buf[8..].copy_from_slice(b"hello");
        UdpRepr {
            src_port: 40001,
            dst_port: MIP_PORT,
        }
        .emit(&mut buf, 5, SRC, DST)
        .unwrap();
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, DST));
        assert_eq!(p.payload(), b"hello");
        let r = UdpRepr::parse(&p, SRC, DST).unwrap();
        assert_eq!((r.src_port, r.dst_port), (40001, 434));
        let mut bad = buf;
        bad[9] ^= 0x10;
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_unchecked(&bad[..]), SRC, DST).unwrap_err(),
            Error::new(ErrorKind::BadChecksum, 6)
        );
    }

    #[test]
    fn emit_refuses_impossible_payload_length() {
        let r = UdpRepr {
            src_port: 1,
            dst_port: MIP_PORT,
        };
        assert_eq!(
            r.emit(&mut [0u8; 8], usize::MAX, SRC, DST).unwrap_err().kind,
            ErrorKind::BadLength
        );
    }

    #[test]
    fn zero_checksum_accepted() {
        let b = [0, 1, 1, 178, 0, 9, 0, 0, 7];
        assert!(UdpRepr::parse(&UdpPacket::new_unchecked(&b[..]), SRC, DST).is_ok());
    }

    #[test]
    fn test_impossible_len() {
        assert_eq!(
            UdpPacket::new_checked(&[0u8; 7][..]).unwrap_err().kind,
            ErrorKind::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&[0, 1, 0, 2, 0, 7, 0, 0][..]).unwrap_err().kind,
            ErrorKind::BadLength
        );
        assert_eq!(
            UdpPacket::new_checked(&[0, 1, 0, 2, 0, 9, 0, 0][..]).unwrap_err().kind,
            ErrorKind::BadLength
        );
    }
}

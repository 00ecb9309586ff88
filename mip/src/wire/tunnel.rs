//! MIP Tunnel Data message header (type 4, RFC 3519 §3.3): `Type=4 | Next Header | Reserved(2)`, followed by
//! the tunnelled packet. It rides the same UDP port 434 as registrations; the first byte tells them apart.

use super::{Error, ErrorKind, Result, get_u8, get_u16, need, room, set_u8, set_u16};

/// Message type of MIP Tunnel Data.
pub const TYPE_TUNNEL_DATA: u8 = 4;
/// Header length.
pub const HEADER_LEN: usize = 4;

/// Next Header: IPv4 (IP-in-UDP).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next Header: GRE.
pub const NEXT_HEADER_GRE: u8 = 47;
/// Next Header: minimal encapsulation (RFC 2004).
pub const NEXT_HEADER_MINIMAL: u8 = 55;

/// Zero-copy view of a Tunnel Data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelDataPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TunnelDataPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        TunnelDataPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the 4-byte header is present.
    pub fn check_len(&self) -> Result<()> {
        need(self.buffer.as_ref(), HEADER_LEN)
    }

    /// Type byte (4).
    pub fn msg_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), 0)
    }
    /// Next Header: the IP protocol number of the payload.
    pub fn next_header(&self) -> u8 {
        get_u8(self.buffer.as_ref(), 1)
    }
    /// Reserved field (sent 0, ignored).
    pub fn reserved(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2)
    }
    /// The tunnelled packet.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }
    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// The Tunnel Data header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelDataRepr {
    /// Next Header.
    pub next_header: u8,
}

impl TunnelDataRepr {
    /// Parses the header; the type byte must be 4.
    pub fn parse<T: AsRef<[u8]>>(p: &TunnelDataPacket<T>) -> Result<Self> {
        p.check_len()?;
        if p.msg_type() != TYPE_TUNNEL_DATA {
            return Err(Error::new(ErrorKind::WrongType(p.msg_type()), 0));
        }
        Ok(TunnelDataRepr {
            next_header: p.next_header(),
        })
    }

    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (Reserved = 0) into the first 4 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(buf, HEADER_LEN)?;
        set_u8(buf, 0, TYPE_TUNNEL_DATA);
        set_u8(buf, 1, self.next_header);
        set_u16(buf, 2, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_12_tunnel_data_header() {
        let mut b = [0xa5u8; 4];
        TunnelDataRepr {
            next_header: NEXT_HEADER_IPV4,
        }
        .emit(&mut b)
        .unwrap();
        assert_eq!(b, [0x04, 0x04, 0x00, 0x00]);
        // Decoding with Next Header 47 when the binding negotiated 4: the header parses; the mismatch is the
        // receiver's decision (it drops, RFC 3519 §3.3), so the value must come back exactly.
        let p = TunnelDataPacket::new_checked(&[4u8, 47, 0, 0, 0x45][..]).unwrap();
        let r = TunnelDataRepr::parse(&p).unwrap();
        assert_eq!(r.next_header, NEXT_HEADER_GRE);
        assert_ne!(r.next_header, NEXT_HEADER_IPV4);
        assert_eq!(p.payload(), &[0x45]);
    }

    #[test]
    fn truncated_and_wrong_type() {
        assert_eq!(
            TunnelDataPacket::new_checked(&[4u8, 4, 0][..]).unwrap_err(),
            Error::new(ErrorKind::Truncated, 3)
        );
        let p = TunnelDataPacket::new_unchecked(&[1u8, 4, 0, 0][..]);
        assert_eq!(TunnelDataRepr::parse(&p).unwrap_err().kind, ErrorKind::WrongType(1));
    }
}

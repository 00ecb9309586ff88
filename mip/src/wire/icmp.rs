//! ICMPv4 (RFC 792): the messages the tunnels and agents need. Agent Advertisements and Solicitations
//! (ICMP types 9 and 10) have their own module, [`crate::wire::advertisement`].

use super::checksum;
use super::{Error, ErrorKind, Result, get_u8, get_u16, get_u32, need, room, set_bytes, set_u8, set_u16, set_u32};

/// ICMP message types used here.
pub mod types {
    /// Echo Reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination Unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo Request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Router Advertisement (Agent Advertisement when it carries a Mobility Agent extension).
    pub const ROUTER_ADVERTISEMENT: u8 = 9;
    /// Router Solicitation (Agent Solicitation).
    pub const ROUTER_SOLICITATION: u8 = 10;
    /// Time Exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter Problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Destination Unreachable codes.
pub mod unreachable {
    /// Net unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Protocol unreachable.
    pub const PROTOCOL: u8 = 2;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set ("Datagram Too Big"); carries the next-hop MTU (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
}

/// Fixed ICMP header: type, code, checksum, 4 bytes that depend on the type.
pub const HEADER_LEN: usize = 8;

/// Zero-copy view of an ICMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }
    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Ensures the 8-byte header is present.
    pub fn check_len(&self) -> Result<()> {
        need(self.buffer.as_ref(), HEADER_LEN)
    }
    /// Type.
    pub fn msg_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), 0)
    }
    /// Code.
    pub fn code(&self) -> u8 {
        get_u8(self.buffer.as_ref(), 1)
    }
    /// Checksum.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2)
    }
    /// Echo identifier (bytes 4–5).
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 4)
    }
    /// Echo sequence number (bytes 6–7).
    pub fn echo_seq(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 6)
    }
    /// Next-hop MTU of a Fragmentation Needed message (bytes 6–7, RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 6)
    }
    /// Bytes 4–7 as one word.
    pub fn rest_of_header(&self) -> u32 {
        get_u32(self.buffer.as_ref(), 4)
    }
    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }
    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(self.buffer.as_ref()) == 0xffff
    }
    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the type.
    pub fn set_msg_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), 0, v);
    }
    /// Sets the code.
    pub fn set_code(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), 1, v);
    }
    /// Sets bytes 4–7.
    pub fn set_rest_of_header(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), 4, v);
    }
    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        set_u16(self.buffer.as_mut(), 2, 0);
        let c = checksum::checksum(self.buffer.as_ref());
        set_u16(self.buffer.as_mut(), 2, c);
    }
    /// Mutable data after the header.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut().get_mut(HEADER_LEN..).unwrap_or(&mut [])
    }
}

/// The ICMP messages the data plane handles, as plain values. `data` borrows the message body: the echo
/// payload, or the leading bytes of the packet that caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr<'a> {
    /// Echo Request (RFC 3519 keepalives are these, UDP-encapsulated).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Echo Reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Destination Unreachable.
    DstUnreachable {
        /// Code (see [`mod@unreachable`]).
        code: u8,
        /// Next-hop MTU (code 4 only; 0 otherwise).
        next_hop_mtu: u16,
        /// The offending packet's IP header and leading payload.
        data: &'a [u8],
    },
    /// Time Exceeded.
    TimeExceeded {
        /// 0 = TTL exceeded in transit, 1 = reassembly time exceeded.
        code: u8,
        /// The offending packet's IP header and leading payload.
        data: &'a [u8],
    },
    /// Any other type, kept as-is.
    Other {
        /// Type.
        msg_type: u8,
        /// Code.
        code: u8,
        /// Bytes 4–7.
        rest: u32,
        /// Body.
        data: &'a [u8],
    },
}

impl<'a> IcmpRepr<'a> {
    /// Parses a message and verifies its checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &IcmpPacket<&'a T>) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::new(ErrorKind::BadChecksum, 2));
        }
        let buffer: &'a T = p.buffer;
        let data = buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[]);
        Ok(match (p.msg_type(), p.code()) {
            (types::ECHO_REQUEST, 0) => IcmpRepr::EchoRequest {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
                data,
            },
            (types::ECHO_REPLY, 0) => IcmpRepr::EchoReply {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
                data,
            },
            (types::DST_UNREACHABLE, code) => IcmpRepr::DstUnreachable {
                code,
                next_hop_mtu: if code == unreachable::FRAG_NEEDED {
                    p.next_hop_mtu()
                } else {
                    0
                },
                data,
            },
            (types::TIME_EXCEEDED, code) => IcmpRepr::TimeExceeded { code, data },
            (msg_type, code) => IcmpRepr::Other {
                msg_type,
                code,
                rest: p.rest_of_header(),
                data,
            },
        })
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            IcmpRepr::EchoRequest { data, .. }
            | IcmpRepr::EchoReply { data, .. }
            | IcmpRepr::DstUnreachable { data, .. }
            | IcmpRepr::TimeExceeded { data, .. }
            | IcmpRepr::Other { data, .. } => data,
        }
    }

    /// Bytes the message occupies.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the message with its checksum into the first `buffer_len()` bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        room(buf, len)?;
        let out = buf.get_mut(..len).ok_or(Error::new(ErrorKind::BufferTooSmall, 0))?;
        let (ty, code, rest) = match *self {
            IcmpRepr::EchoRequest { ident, seq, .. } => {
                (types::ECHO_REQUEST, 0, u32::from(ident) << 16 | u32::from(seq))
            }
            IcmpRepr::EchoReply { ident, seq, .. } => (types::ECHO_REPLY, 0, u32::from(ident) << 16 | u32::from(seq)),
            IcmpRepr::DstUnreachable { code, next_hop_mtu, .. } => {
                (types::DST_UNREACHABLE, code, u32::from(next_hop_mtu))
            }
            IcmpRepr::TimeExceeded { code, .. } => (types::TIME_EXCEEDED, code, 0),
            IcmpRepr::Other {
                msg_type, code, rest, ..
            } => (msg_type, code, rest),
        };
        set_bytes(out, HEADER_LEN, self.data());
        let mut p = IcmpPacket::new_unchecked(out);
        p.set_msg_type(ty);
        p.set_code(code);
        p.set_rest_of_header(rest);
        p.fill_checksum();
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip() {
        let r = IcmpRepr::EchoRequest {
            ident: 7,
            seq: 1,
            data: b"mip-keepalive",
        };
        let mut buf = [0u8; 64];
        let n = r.emit(&mut buf).unwrap();
        let p = IcmpPacket::new_checked(&buf[..n]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(IcmpRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn frag_needed_carries_mtu() {
        let r = IcmpRepr::DstUnreachable {
            code: unreachable::FRAG_NEEDED,
            next_hop_mtu: 1400,
            data: &[0x45; 28],
        };
        let mut buf = [0u8; 36];
        r.emit(&mut buf).unwrap();
        assert_eq!(&buf[6..8], &1400u16.to_be_bytes());
        let p = IcmpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(IcmpRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn bad_checksum_and_short() {
        let mut buf = [8u8, 0, 0, 0, 0, 1, 0, 1];
        IcmpPacket::new_unchecked(&mut buf[..]).fill_checksum();
        buf[7] ^= 1;
        let p = IcmpPacket::new_unchecked(&buf[..]);
        assert_eq!(IcmpRepr::parse(&p).unwrap_err(), Error::new(ErrorKind::BadChecksum, 2));
        assert_eq!(
            IcmpPacket::new_checked(&buf[..7]).unwrap_err().kind,
            ErrorKind::Truncated
        );
    }
}

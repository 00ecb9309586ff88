//! Whole Mobile IP messages on UDP port 434: a validated fixed part plus validated extensions, and a writer
//! that builds messages in place (extensions appended, authenticators computed over what precedes them).
//!
//! [`Message::parse`] walks every extension once, so a message it returns has no malformed or unknown
//! non-skippable extension left in it; the iterators on [`Request`] and [`Reply`] then cannot fail.

use super::extension::{AuthKind, Dialect, Extension, ExtensionBody, Extensions};
use super::registration::{
    REPLY_HEADER_LEN, REQUEST_HEADER_LEN, RegistrationReply, RegistrationRequest, ReplyRepr, RequestRepr, TYPE_REPLY,
    TYPE_REQUEST,
};
use super::tunnel::{TYPE_TUNNEL_DATA, TunnelDataPacket, TunnelDataRepr};
use super::{Error, ErrorKind, Result, get_u8, room};
use crate::auth::{AUTH_EXT_HEADER_LEN, AUTHENTICATOR_LEN, SecurityAssociation};

/// Message types on UDP 434 (RFC 5944 §1.8, RFC 3519 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 1.
    RegistrationRequest,
    /// 3.
    RegistrationReply,
    /// 4.
    TunnelData,
}

impl MessageType {
    /// From the first byte of a UDP payload.
    pub const fn from_byte(b: u8) -> Option<MessageType> {
        match b {
            TYPE_REQUEST => Some(MessageType::RegistrationRequest),
            TYPE_REPLY => Some(MessageType::RegistrationReply),
            TYPE_TUNNEL_DATA => Some(MessageType::TunnelData),
            _ => None,
        }
    }

    /// Name used in JSON and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::RegistrationRequest => "registration_request",
            MessageType::RegistrationReply => "registration_reply",
            MessageType::TunnelData => "tunnel_data",
        }
    }
}

/// A registration message whose fixed part (`R`: [`RequestRepr`] or [`ReplyRepr`]) and extensions all parsed.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a, R> {
    /// Fixed part.
    pub repr: R,
    /// The whole message.
    pub bytes: &'a [u8],
    header_len: usize,
    dialect: Dialect,
}

/// A Registration Request whose fixed part and extensions all parsed.
pub type Request<'a> = Registration<'a, RequestRepr>;

/// A Registration Reply whose fixed part and extensions all parsed.
pub type Reply<'a> = Registration<'a, ReplyRepr>;

impl<'a> Request<'a> {
    /// Parses and validates a whole Registration Request.
    pub fn parse(bytes: &'a [u8], dialect: &Dialect) -> Result<Self> {
        let p = RegistrationRequest::new_checked(bytes)?;
        let repr = RequestRepr::parse(&p)?;
        Registration::validated(repr, bytes, REQUEST_HEADER_LEN, dialect)
    }
}

impl<'a> Reply<'a> {
    /// Parses and validates a whole Registration Reply.
    pub fn parse(bytes: &'a [u8], dialect: &Dialect) -> Result<Self> {
        let p = RegistrationReply::new_checked(bytes)?;
        let repr = ReplyRepr::parse(&p)?;
        Registration::validated(repr, bytes, REPLY_HEADER_LEN, dialect)
    }
}

impl<'a, R> Registration<'a, R> {
    /// Walks and checks every extension after the `header_len`-byte fixed part.
    fn validated(repr: R, bytes: &'a [u8], header_len: usize, dialect: &Dialect) -> Result<Self> {
        let region = bytes.get(header_len..).unwrap_or(&[]);
        for e in Extensions::new(region, header_len, *dialect) {
            e?;
        }
        Ok(Registration {
            repr,
            bytes,
            header_len,
            dialect: *dialect,
        })
    }

    /// The extensions, in order (validated at parse time, so none is an error).
    pub fn extensions(&self) -> impl Iterator<Item = Extension<'a>> + 'a {
        let region = self.bytes.get(self.header_len..).unwrap_or(&[]);
        Extensions::new(region, self.header_len, self.dialect).map_while(core::result::Result::ok)
    }

    /// The first authentication extension of `kind`.
    pub fn auth(&self, kind: AuthKind) -> Option<Extension<'a>> {
        self.extensions().find(|e| is_auth(e, kind))
    }

    /// How many authentication extensions of `kind` the message carries (a reply with two MN-HA extensions
    /// must be discarded, RFC 5944 §3.6.2.1).
    pub fn auth_count(&self, kind: AuthKind) -> usize {
        self.extensions().filter(|e| is_auth(e, kind)).count()
    }

    /// The NAI, if present.
    pub fn nai(&self) -> Option<&'a [u8]> {
        self.extensions().find_map(|e| match e.body {
            ExtensionBody::Nai(n) => Some(n),
            _ => None,
        })
    }
}

fn is_auth(e: &Extension<'_>, kind: AuthKind) -> bool {
    matches!(e.body, ExtensionBody::Auth { kind: k, .. } if k == kind)
}

/// A MIP Tunnel Data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelData<'a> {
    /// Header.
    pub repr: TunnelDataRepr,
    /// The tunnelled packet.
    pub payload: &'a [u8],
}

/// Any message that can arrive on UDP 434.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// Type 1.
    Request(Request<'a>),
    /// Type 3.
    Reply(Reply<'a>),
    /// Type 4.
    TunnelData(TunnelData<'a>),
}

impl<'a> Message<'a> {
    /// Parses a UDP payload; the first byte selects the message type.
    pub fn parse(bytes: &'a [u8], dialect: &Dialect) -> Result<Self> {
        match MessageType::from_byte(get_u8(bytes, 0)) {
            _ if bytes.is_empty() => Err(Error::new(ErrorKind::Truncated, 0)),
            Some(MessageType::RegistrationRequest) => Request::parse(bytes, dialect).map(Message::Request),
            Some(MessageType::RegistrationReply) => Reply::parse(bytes, dialect).map(Message::Reply),
            Some(MessageType::TunnelData) => {
                let p = TunnelDataPacket::new_checked(bytes)?;
                let repr = TunnelDataRepr::parse(&p)?;
                Ok(Message::TunnelData(TunnelData {
                    repr,
                    payload: bytes.get(super::tunnel::HEADER_LEN..).unwrap_or(&[]),
                }))
            }
            None => Err(Error::new(ErrorKind::WrongType(get_u8(bytes, 0)), 0)),
        }
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Request(_) => MessageType::RegistrationRequest,
            Message::Reply(_) => MessageType::RegistrationReply,
            Message::TunnelData(_) => MessageType::TunnelData,
        }
    }
}

/// Builds a registration message in a caller-supplied buffer: the fixed part, then extensions in call order.
/// Authentication extensions are computed over everything written before them, so call order is wire order.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    dialect: Dialect,
}

impl<'b> MessageWriter<'b> {
    /// Starts a Registration Request.
    pub fn request(buf: &'b mut [u8], repr: &RequestRepr, dialect: &Dialect) -> Result<Self> {
        repr.emit(buf)?;
        Ok(MessageWriter {
            buf,
            len: REQUEST_HEADER_LEN,
            dialect: *dialect,
        })
    }

    /// Starts a Registration Reply.
    pub fn reply(buf: &'b mut [u8], repr: &ReplyRepr, dialect: &Dialect) -> Result<Self> {
        repr.emit(buf)?;
        Ok(MessageWriter {
            buf,
            len: REPLY_HEADER_LEN,
            dialect: *dialect,
        })
    }

    /// Appends an extension.
    pub fn push(&mut self, body: &ExtensionBody<'_>) -> Result<&mut Self> {
        let rest = self.buf.get_mut(self.len..).unwrap_or(&mut []);
        let n = body.emit(rest, &self.dialect).map_err(|e| e.shifted(self.len))?;
        self.len += n;
        Ok(self)
    }

    /// Appends bytes already in extension format (e.g. an extension copied from a received message).
    pub fn push_raw(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        let end = self.len + bytes.len();
        room(self.buf, end)?;
        super::set_bytes(self.buf, self.len, bytes);
        self.len = end;
        Ok(self)
    }

    /// Appends an authentication extension of `kind` computed with `sa` over everything written so far plus
    /// the extension's Type, Length and SPI (RFC 5944 §3.5.1).
    pub fn push_auth(&mut self, kind: AuthKind, sa: &SecurityAssociation) -> Result<&mut Self> {
        let start = self.len;
        let end = start + AUTH_EXT_HEADER_LEN + AUTHENTICATOR_LEN;
        room(self.buf, end)?;
        let header = {
            let mut h = [0u8; AUTH_EXT_HEADER_LEN];
            h[0] = kind.ext_type();
            h[1] = (4 + AUTHENTICATOR_LEN) as u8;
            h[2..].copy_from_slice(&sa.spi().get().to_be_bytes());
            h
        };
        super::set_bytes(self.buf, start, &header);
        let covered = self.buf.get(..start + AUTH_EXT_HEADER_LEN).unwrap_or(&[]);
        let mac = sa.compute(covered);
        super::set_bytes(self.buf, start + AUTH_EXT_HEADER_LEN, &mac);
        self.len = end;
        Ok(self)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is written (never true after construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Finishes and returns the message.
    pub fn finish(self) -> &'b mut [u8] {
        let len = self.len;
        let buf = self.buf;
        let total = buf.len();
        buf.get_mut(..len.min(total)).unwrap_or(&mut [])
    }
}

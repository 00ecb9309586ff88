//! Mobile IPv4 wire formats: zero-copy views (`*Packet<T>`) over byte buffers plus plain `*Repr` structs that
//! parse from and emit into them, in the style of smoltcp's `wire` module.
//!
//! # Panic contract
//! Nothing in this module panics, whatever the input. Views never index out of bounds: accessors read through
//! `get`, so on a buffer that failed `check_len` they return 0 instead of panicking, and every `parse` goes
//! through `check_len` first. Untrusted input must enter through `new_checked` or a `parse` function. `emit`
//! functions return [`ErrorKind::BufferTooSmall`] instead of writing past the end.
//!
//! # Errors
//! Every failure is an [`Error`]: a small `Copy` value naming what is wrong ([`ErrorKind`]) and the byte offset
//! in the parsed buffer where it was found. [`ErrorKind::as_str`] gives a static label for drop counters.

use core::fmt;
use core::net::Ipv4Addr;

pub mod advertisement;
pub mod checksum;
pub mod codes;
pub mod extension;
pub mod icmp;
pub mod ipv4;
pub mod message;
pub mod registration;
pub mod tunnel;
pub mod udp;

pub use advertisement::{
    AgentAdvertisement, AgentAdvertisementRepr, AgentSolicitation, MobilityAgentExt, MobilityAgentFlags,
};
pub use codes::ReplyCode;
pub use extension::{
    AuthKind, Dialect, ExtFormat, Extension, ExtensionBody, Extensions, HaParameter, RawExtension, RawExtensions,
    UdpTunnelReply, UdpTunnelRequest,
};
pub use message::{Message, MessageType, MessageWriter, Registration, Reply, Request, TunnelData};
pub use registration::{
    REPLY_HEADER_LEN, REQUEST_HEADER_LEN, RegistrationReply, RegistrationRequest, ReplyRepr, RequestFlags, RequestRepr,
};

/// What is wrong with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The buffer ends before a fixed-size header or field does.
    Truncated,
    /// The first byte is not the message type this parser handles.
    WrongType(u8),
    /// An extension's header or declared body runs past the end of the message (type given).
    ExtensionTruncated(u8),
    /// A known extension has a Length its layout does not allow (type, length).
    ExtensionLength(u8, u16),
    /// Unknown extension in the non-skippable range 0–127: the whole message must be discarded (RFC 5944 §1.8).
    UnknownNonSkippable(u8),
    /// A nonzero checksum that does not verify.
    BadChecksum,
    /// IPv4 version field is not 4.
    BadVersion,
    /// IPv4 header length (IHL) below 5 or past the end of the buffer.
    BadHeaderLength,
    /// A length field disagrees with the buffer (IPv4 total length, UDP length).
    BadLength,
    /// A field holds a value this implementation does not accept (e.g. ICMP type, address entry size).
    BadValue,
    /// The output buffer is too small for what is being emitted.
    BufferTooSmall,
}

impl ErrorKind {
    /// Every kind (fields zero), one per label: for pre-registering counters.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Truncated,
        ErrorKind::WrongType(0),
        ErrorKind::ExtensionTruncated(0),
        ErrorKind::ExtensionLength(0, 0),
        ErrorKind::UnknownNonSkippable(0),
        ErrorKind::BadChecksum,
        ErrorKind::BadVersion,
        ErrorKind::BadHeaderLength,
        ErrorKind::BadLength,
        ErrorKind::BadValue,
        ErrorKind::BufferTooSmall,
    ];

    /// Stable label for counters and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated",
            ErrorKind::WrongType(_) => "wrong_type",
            ErrorKind::ExtensionTruncated(_) => "extension_truncated",
            ErrorKind::ExtensionLength(..) => "extension_length",
            ErrorKind::UnknownNonSkippable(_) => "unknown_non_skippable_extension",
            ErrorKind::BadChecksum => "bad_checksum",
            ErrorKind::BadVersion => "bad_version",
            ErrorKind::BadHeaderLength => "bad_header_length",
            ErrorKind::BadLength => "bad_length",
            ErrorKind::BadValue => "bad_value",
            ErrorKind::BufferTooSmall => "buffer_too_small",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ErrorKind::Truncated => f.write_str("truncated"),
            ErrorKind::WrongType(t) => write!(f, "unexpected message type {t}"),
            ErrorKind::ExtensionTruncated(t) => write!(f, "extension type {t} runs past the end of the message"),
            ErrorKind::ExtensionLength(t, l) => write!(f, "extension type {t} has invalid length {l}"),
            ErrorKind::UnknownNonSkippable(t) => {
                write!(
                    f,
                    "unknown non-skippable extension type {t} (message must be discarded)"
                )
            }
            ErrorKind::BadChecksum => f.write_str("bad checksum"),
            ErrorKind::BadVersion => f.write_str("IP version is not 4"),
            ErrorKind::BadHeaderLength => f.write_str("bad IPv4 header length"),
            ErrorKind::BadLength => f.write_str("length field disagrees with the buffer"),
            ErrorKind::BadValue => f.write_str("unsupported field value"),
            ErrorKind::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

/// A parse or emit failure: what ([`ErrorKind`]) and where (byte offset into the buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error {
    /// What is wrong.
    pub kind: ErrorKind,
    /// Byte offset in the buffer where the problem starts.
    pub offset: usize,
}

impl Error {
    /// An error of `kind` at `offset`.
    pub const fn new(kind: ErrorKind, offset: usize) -> Self {
        Error { kind, offset }
    }

    /// The same error, with its offset moved by `base` (for errors found in a sub-slice).
    pub const fn shifted(self, base: usize) -> Self {
        Error {
            kind: self.kind,
            offset: self.offset.saturating_add(base),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte offset {}", self.kind, self.offset)
    }
}

impl std::error::Error for Error {}

/// Result of wire operations.
pub type Result<T> = core::result::Result<T, Error>;

/// Byte ranges of header fields (smoltcp style).
pub(crate) mod field {
    pub type Field = core::ops::Range<usize>;
}

// Panic-free big-endian accessors. On a buffer that passed `check_len` they never take the default branch.

#[inline]
pub(crate) fn get_u8(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

#[inline]
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at.saturating_add(2)) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

#[inline]
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.saturating_add(4)) {
        Some(&[a, c, d, e]) => u32::from_be_bytes([a, c, d, e]),
        _ => 0,
    }
}

#[inline]
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    (u64::from(get_u32(b, at)) << 32) | u64::from(get_u32(b, at.saturating_add(4)))
}

#[inline]
pub(crate) fn get_addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::from(get_u32(b, at))
}

#[inline]
pub(crate) fn set_u8(b: &mut [u8], at: usize, v: u8) {
    if let Some(x) = b.get_mut(at) {
        *x = v;
    }
}

#[inline]
pub(crate) fn set_bytes(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(x) = b.get_mut(at..at.saturating_add(v.len())) {
        x.copy_from_slice(v);
    }
}

#[inline]
pub(crate) fn set_u16(b: &mut [u8], at: usize, v: u16) {
    set_bytes(b, at, &v.to_be_bytes());
}

#[inline]
pub(crate) fn set_u32(b: &mut [u8], at: usize, v: u32) {
    set_bytes(b, at, &v.to_be_bytes());
}

#[inline]
pub(crate) fn set_u64(b: &mut [u8], at: usize, v: u64) {
    set_bytes(b, at, &v.to_be_bytes());
}

#[inline]
pub(crate) fn set_addr(b: &mut [u8], at: usize, v: Ipv4Addr) {
    set_bytes(b, at, &v.octets());
}

/// `Err(Truncated at len)` unless `buf` holds at least `need` bytes.
#[inline]
pub(crate) fn need(buf: &[u8], need: usize) -> Result<()> {
    if buf.len() < need {
        Err(Error::new(ErrorKind::Truncated, buf.len()))
    } else {
        Ok(())
    }
}

/// `Err(BufferTooSmall)` unless `buf` holds at least `need` bytes (for emitters).
#[inline]
pub(crate) fn room(buf: &[u8], need: usize) -> Result<()> {
    if buf.len() < need {
        Err(Error::new(ErrorKind::BufferTooSmall, buf.len()))
    } else {
        Ok(())
    }
}

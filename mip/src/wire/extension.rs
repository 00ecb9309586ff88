//! Registration-message extensions (RFC 5944 §1.8–§1.11): a raw walker that knows the three length layouts,
//! and typed bodies for the extensions this project uses.
//!
//! Layouts (RFC 5944 §1.9–1.11):
//! * one-byte padding, type 0: a single byte, no Length;
//! * simple TLV `Type Length Data` and short format `Type Length Sub-Type Data`: one Length byte that counts
//!   everything after it (so a short-format Length includes the Sub-Type);
//! * long format `Type Sub-Type Length(2) Data`: used only by non-skippable types, here 36 (Generalized
//!   Authentication, RFC 3012), 38 (CVSE, RFC 3115), 47 (PMIPv4 non-skippable) and 127 (RFC 4064
//!   experimental). Any other unknown type is read as simple TLV, as Wireshark does.
//!
//! Skippability (RFC 5944 §1.8): an unrecognised extension with type 0–127 means the whole message must be
//! discarded ([`ErrorKind::UnknownNonSkippable`]); one with type 128–255 is skipped, but stays in the bytes an
//! authenticator covers, so [`ExtensionBody::Skippable`] keeps it verbatim.

use core::fmt;
use core::net::Ipv4Addr;

use super::{Error, ErrorKind, Result, get_u8, get_u16, get_u32, room};

/// Extension type numbers used here (registration-message number space).
pub mod types {
    /// One-byte padding (RFC 5944 §1.8).
    pub const PADDING: u8 = 0;
    /// Mobile-Home authentication (RFC 5944 §3.5.2).
    pub const MN_HA_AUTH: u8 = 32;
    /// Mobile-Foreign authentication (RFC 5944 §3.5.3).
    pub const MN_FA_AUTH: u8 = 33;
    /// Foreign-Home authentication (RFC 5944 §3.5.4).
    pub const FA_HA_AUTH: u8 = 34;
    /// Generalized authentication (RFC 3012), long format; not implemented, so a message carrying it is
    /// discarded.
    pub const GENERALIZED_AUTH: u8 = 36;
    /// Critical Vendor/Organization Specific Extension (RFC 3115), long format.
    pub const CVSE: u8 = 38;
    /// UDP Tunnel Reply (RFC 3519 §3.2), non-skippable.
    pub const UDP_TUNNEL_REPLY: u8 = 44;
    /// PMIPv4 non-skippable extension, long format.
    pub const PMIPV4_NON_SKIPPABLE: u8 = 47;
    /// RFC 4064 non-skippable experimental extension, long format.
    pub const EXPERIMENTAL_NON_SKIPPABLE: u8 = 127;
    /// Encapsulating Delivery Style (RFC 3024 §3.3).
    pub const ENCAPSULATING_DELIVERY_STYLE: u8 = 130;
    /// Mobile Node NAI (RFC 2794 §2).
    pub const NAI: u8 = 131;
    /// UDP Tunnel Request (RFC 3519 §3.1).
    pub const UDP_TUNNEL_REQUEST: u8 = 144;
    /// Trusted Networks Configured (RFC 5265 §3.4).
    pub const TRUSTED_NETWORKS_CONFIGURED: u8 = 149;
    /// RFC 4064 skippable experimental extension (short format); this project's default HA Parameter type.
    pub const EXPERIMENTAL_SKIPPABLE: u8 = 255;
}

/// How an extension encodes its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtFormat {
    /// Type 0: one byte, no Length.
    Padding,
    /// Simple TLV or short format: 1-byte Length after the Type.
    Tlv,
    /// Long format: Type, Sub-Type, 2-byte Length.
    Long,
}

impl ExtFormat {
    /// The layout a given type uses.
    pub const fn of(ty: u8) -> ExtFormat {
        match ty {
            types::PADDING => ExtFormat::Padding,
            types::GENERALIZED_AUTH | types::CVSE | types::PMIPV4_NON_SKIPPABLE | types::EXPERIMENTAL_NON_SKIPPABLE => {
                ExtFormat::Long
            }
            _ => ExtFormat::Tlv,
        }
    }

    /// Bytes before the data.
    pub const fn header_len(self) -> usize {
        match self {
            ExtFormat::Padding => 1,
            ExtFormat::Tlv => 2,
            ExtFormat::Long => 4,
        }
    }
}

/// Whether a receiver that does not recognise `ty` may skip it (128–255) rather than discard the message.
pub const fn is_skippable(ty: u8) -> bool {
    ty >= 128
}

// === raw walker ===

/// One extension as it sits on the wire, before interpretation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawExtension<'a> {
    /// Offset of the Type byte in the whole message.
    pub offset: usize,
    /// Type.
    pub ty: u8,
    /// Length layout.
    pub format: ExtFormat,
    /// Sub-Type, for the long format only (short-format sub-types are the first data byte).
    pub long_subtype: Option<u8>,
    /// Everything after the Length field (for short format this starts with the Sub-Type).
    pub data: &'a [u8],
    /// The whole extension, Type through the end of its data.
    pub bytes: &'a [u8],
}

/// Walks the extensions of a message without interpreting them. Stops after the first error.
#[derive(Debug, Clone)]
pub struct RawExtensions<'a> {
    rest: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> RawExtensions<'a> {
    /// Walks `region`, whose first byte sits at `base` in the message (24 for requests, 20 for replies).
    pub const fn new(region: &'a [u8], base: usize) -> Self {
        RawExtensions {
            rest: region,
            offset: base,
            failed: false,
        }
    }

    fn next_raw(&mut self) -> Result<RawExtension<'a>> {
        let buf = self.rest;
        let ty = get_u8(buf, 0);
        let format = ExtFormat::of(ty);
        let (data_len, long_subtype) = match format {
            ExtFormat::Padding => (0, None),
            ExtFormat::Tlv => {
                if buf.len() < 2 {
                    return Err(Error::new(ErrorKind::ExtensionTruncated(ty), self.offset));
                }
                (usize::from(get_u8(buf, 1)), None)
            }
            ExtFormat::Long => {
                if buf.len() < 4 {
                    return Err(Error::new(ErrorKind::ExtensionTruncated(ty), self.offset));
                }
                (usize::from(get_u16(buf, 2)), Some(get_u8(buf, 1)))
            }
        };
        let header = format.header_len();
        let total = header + data_len;
        let (bytes, rest) = match (buf.get(..total), buf.get(total..)) {
            (Some(b), Some(r)) => (b, r),
            _ => return Err(Error::new(ErrorKind::ExtensionTruncated(ty), self.offset)),
        };
        let raw = RawExtension {
            offset: self.offset,
            ty,
            format,
            long_subtype,
            data: bytes.get(header..).unwrap_or(&[]),
            bytes,
        };
        self.rest = rest;
        self.offset = self.offset.saturating_add(total);
        Ok(raw)
    }
}

impl<'a> Iterator for RawExtensions<'a> {
    type Item = Result<RawExtension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.next_raw();
        self.failed = r.is_err();
        Some(r)
    }
}

// === typed extensions ===

/// Which authentication extension (RFC 5944 §3.5.2–3.5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// Mobile-Home (type 32): the authorization-enabling extension between MN and HA.
    MobileHome,
    /// Mobile-Foreign (type 33).
    MobileForeign,
    /// Foreign-Home (type 34).
    ForeignHome,
}

impl AuthKind {
    /// Extension type number.
    pub const fn ext_type(self) -> u8 {
        match self {
            AuthKind::MobileHome => types::MN_HA_AUTH,
            AuthKind::MobileForeign => types::MN_FA_AUTH,
            AuthKind::ForeignHome => types::FA_HA_AUTH,
        }
    }

    /// Kind for a type number, if it is an authentication extension.
    pub const fn from_type(ty: u8) -> Option<AuthKind> {
        match ty {
            types::MN_HA_AUTH => Some(AuthKind::MobileHome),
            types::MN_FA_AUTH => Some(AuthKind::MobileForeign),
            types::FA_HA_AUTH => Some(AuthKind::ForeignHome),
            _ => None,
        }
    }
}

/// UDP Tunnel Request body (RFC 3519 §3.1). Type 144, short format, Length 6, Sub-Type 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UdpTunnelRequest {
    /// F: force UDP tunnelling even without a NAT.
    pub force: bool,
    /// R: co-located care-of address registered through an FA that advertised R and U.
    pub registered_via_fa: bool,
    /// Encapsulation: 0 = as the M/G bits say, 4 IP-in-UDP, 47 GRE-in-UDP, 55 minimal-in-UDP.
    pub encapsulation: u8,
    /// Reserved 1 (sent 0, ignored).
    pub reserved1: u8,
    /// Reserved 2: the low 6 bits of the flags byte (sent 0, ignored).
    pub reserved2: u8,
    /// Reserved 3: MUST be 0; the HA answers 134 otherwise (RFC 3519 §4.6.1, spec §2.6).
    pub reserved3: u16,
}

impl UdpTunnelRequest {
    /// F flag bit in the flags byte.
    pub const FLAG_F: u8 = 0x80;
    /// R flag bit in the flags byte.
    pub const FLAG_R: u8 = 0x40;
    const LEN: u8 = 6;
}

/// UDP Tunnel Reply body (RFC 3519 §3.2). Type 44, short format, Length 6, Sub-Type 0, non-skippable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UdpTunnelReply {
    /// Reply code: 0–63 assent (0 = will do tunnelling), 64–255 decline (64 = reason unspecified).
    pub code: u8,
    /// F: tunnelling forced because the request set F.
    pub forced: bool,
    /// The other 15 bits of the flags/reserved field (sent 0).
    pub reserved: u16,
    /// Keepalive interval in seconds the MN should use; 0 = its configured default.
    pub keepalive: u16,
}

impl UdpTunnelReply {
    /// F bit in the 16-bit flags field.
    pub const FLAG_F: u16 = 0x8000;
    const LEN: u8 = 6;
    /// Whether the code assents to tunnelling (0–63).
    pub const fn assents(&self) -> bool {
        self.code < 64
    }
}

/// The proxy's HA Parameter extension body (NV01 §4.5, VT02 §2.5.3; code point from [`Dialect`]):
/// `Type Length=6 Sub-Type Reserved HomeAgent(4)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HaParameter {
    /// Reserved byte (sent 0).
    pub reserved: u8,
    /// The actual home agent; 0.0.0.0 asks for dynamic assignment.
    pub home_agent: Ipv4Addr,
}

impl HaParameter {
    const LEN: u8 = 6;
}

/// The code points a deployment uses for extensions that never got IANA numbers. In configuration files it is
/// `{ha_parameter_type: 255, ha_parameter_subtype: 1}` (both optional); an unusable code point is refused at
/// load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "DialectFields", into = "DialectFields")]
pub struct Dialect {
    /// Type of the HA Parameter extension (default 255, RFC 4064's skippable experimental type).
    pub ha_parameter_type: u8,
    /// Sub-Type of the HA Parameter extension (default 1).
    pub ha_parameter_subtype: u8,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            ha_parameter_type: types::EXPERIMENTAL_SKIPPABLE,
            ha_parameter_subtype: 1,
        }
    }
}

/// [`Dialect`] as written in configuration, before its check.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DialectFields {
    ha_parameter_type: u8,
    ha_parameter_subtype: u8,
}

impl Default for DialectFields {
    fn default() -> Self {
        Dialect::default().into()
    }
}

impl TryFrom<DialectFields> for Dialect {
    type Error = &'static str;
    fn try_from(f: DialectFields) -> core::result::Result<Self, Self::Error> {
        Dialect::new(f.ha_parameter_type, f.ha_parameter_subtype)
    }
}

impl From<Dialect> for DialectFields {
    fn from(d: Dialect) -> Self {
        DialectFields {
            ha_parameter_type: d.ha_parameter_type,
            ha_parameter_subtype: d.ha_parameter_subtype,
        }
    }
}

impl Dialect {
    /// A dialect with the given HA Parameter code point. The type must use the short format and must not
    /// collide with an extension this crate already interprets.
    pub fn new(ha_parameter_type: u8, ha_parameter_subtype: u8) -> core::result::Result<Self, &'static str> {
        if ExtFormat::of(ha_parameter_type) != ExtFormat::Tlv {
            return Err("HA Parameter type must use the short (1-byte length) format: not 0, 36, 38, 47 or 127");
        }
        if matches!(
            ha_parameter_type,
            types::MN_HA_AUTH
                | types::MN_FA_AUTH
                | types::FA_HA_AUTH
                | types::UDP_TUNNEL_REPLY
                | types::ENCAPSULATING_DELIVERY_STYLE
                | types::NAI
                | types::UDP_TUNNEL_REQUEST
                | types::TRUSTED_NETWORKS_CONFIGURED
        ) {
            return Err("HA Parameter type collides with a standard extension type");
        }
        Ok(Dialect {
            ha_parameter_type,
            ha_parameter_subtype,
        })
    }
}

/// An interpreted extension body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionBody<'a> {
    /// One-byte padding (type 0).
    Padding,
    /// Authentication extension 32/33/34: `Type Length SPI(4) Authenticator`.
    Auth {
        /// Which one.
        kind: AuthKind,
        /// Security Parameter Index.
        spi: u32,
        /// Authenticator bytes (Length − 4 of them).
        authenticator: &'a [u8],
    },
    /// Mobile Node NAI (type 131): the NAI bytes, no terminator.
    Nai(&'a [u8]),
    /// UDP Tunnel Request (type 144).
    UdpTunnelRequest(UdpTunnelRequest),
    /// UDP Tunnel Reply (type 44).
    UdpTunnelReply(UdpTunnelReply),
    /// Encapsulating Delivery Style (type 130, Length 0).
    EncapsulatingDeliveryStyle,
    /// Trusted Networks Configured (type 149, Length 2, Sub-Type 0, Reserved).
    TrustedNetworksConfigured {
        /// Reserved byte.
        reserved: u8,
    },
    /// The proxy's HA Parameter extension (code point from [`Dialect`]).
    HaParameter(HaParameter),
    /// A skippable extension (type 128–255) not interpreted here, kept verbatim.
    Skippable {
        /// Type.
        ty: u8,
        /// Everything after the Length byte.
        data: &'a [u8],
    },
}

impl<'a> ExtensionBody<'a> {
    /// The type byte this body is emitted with.
    pub fn ext_type(&self, dialect: &Dialect) -> u8 {
        match self {
            ExtensionBody::Padding => types::PADDING,
            ExtensionBody::Auth { kind, .. } => kind.ext_type(),
            ExtensionBody::Nai(_) => types::NAI,
            ExtensionBody::UdpTunnelRequest(_) => types::UDP_TUNNEL_REQUEST,
            ExtensionBody::UdpTunnelReply(_) => types::UDP_TUNNEL_REPLY,
            ExtensionBody::EncapsulatingDeliveryStyle => types::ENCAPSULATING_DELIVERY_STYLE,
            ExtensionBody::TrustedNetworksConfigured { .. } => types::TRUSTED_NETWORKS_CONFIGURED,
            ExtensionBody::HaParameter(_) => dialect.ha_parameter_type,
            ExtensionBody::Skippable { ty, .. } => *ty,
        }
    }

    /// Interprets a raw extension. Unknown types 0–127 (and known non-skippable types with an unknown
    /// sub-type) fail with [`ErrorKind::UnknownNonSkippable`]; a known type with an impossible Length fails
    /// with [`ErrorKind::ExtensionLength`].
    pub fn parse(raw: &RawExtension<'a>, dialect: &Dialect) -> Result<Self> {
        let bad_len = || {
            Error::new(
                ErrorKind::ExtensionLength(raw.ty, raw.data.len() as u16),
                raw.offset.saturating_add(1),
            )
        };
        let d = raw.data;
        if raw.ty == dialect.ha_parameter_type
            && raw.format == ExtFormat::Tlv
            && get_u8(d, 0) == dialect.ha_parameter_subtype
        {
            if d.len() != usize::from(HaParameter::LEN) {
                return Err(bad_len());
            }
            return Ok(ExtensionBody::HaParameter(HaParameter {
                reserved: get_u8(d, 1),
                home_agent: Ipv4Addr::from(get_u32(d, 2)),
            }));
        }
        // The HA Parameter type with another sub-type falls through to the generic rules below.
        match raw.ty {
            types::PADDING => Ok(ExtensionBody::Padding),
            types::MN_HA_AUTH | types::MN_FA_AUTH | types::FA_HA_AUTH => {
                if d.len() < 4 {
                    return Err(bad_len());
                }
                let kind = AuthKind::from_type(raw.ty).unwrap_or(AuthKind::MobileHome);
                Ok(ExtensionBody::Auth {
                    kind,
                    spi: get_u32(d, 0),
                    authenticator: d.get(4..).unwrap_or(&[]),
                })
            }
            types::NAI => Ok(ExtensionBody::Nai(d)),
            types::UDP_TUNNEL_REQUEST if get_u8(d, 0) == 0 && !d.is_empty() => {
                if d.len() != usize::from(UdpTunnelRequest::LEN) {
                    return Err(bad_len());
                }
                let flags = get_u8(d, 2);
                Ok(ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
                    force: flags & UdpTunnelRequest::FLAG_F != 0,
                    registered_via_fa: flags & UdpTunnelRequest::FLAG_R != 0,
                    reserved2: flags & 0x3f,
                    reserved1: get_u8(d, 1),
                    encapsulation: get_u8(d, 3),
                    reserved3: get_u16(d, 4),
                }))
            }
            types::UDP_TUNNEL_REPLY => {
                if get_u8(d, 0) != 0 || d.is_empty() {
                    // A sub-type we do not know of a non-skippable type: discard the message.
                    return Err(Error::new(ErrorKind::UnknownNonSkippable(raw.ty), raw.offset));
                }
                if d.len() != usize::from(UdpTunnelReply::LEN) {
                    return Err(bad_len());
                }
                let flags = get_u16(d, 2);
                Ok(ExtensionBody::UdpTunnelReply(UdpTunnelReply {
                    code: get_u8(d, 1),
                    forced: flags & UdpTunnelReply::FLAG_F != 0,
                    reserved: flags & !UdpTunnelReply::FLAG_F,
                    keepalive: get_u16(d, 4),
                }))
            }
            types::ENCAPSULATING_DELIVERY_STYLE => {
                if !d.is_empty() {
                    return Err(bad_len());
                }
                Ok(ExtensionBody::EncapsulatingDeliveryStyle)
            }
            types::TRUSTED_NETWORKS_CONFIGURED if get_u8(d, 0) == 0 && !d.is_empty() => {
                if d.len() != 2 {
                    return Err(bad_len());
                }
                Ok(ExtensionBody::TrustedNetworksConfigured { reserved: get_u8(d, 1) })
            }
            ty if is_skippable(ty) && raw.format == ExtFormat::Tlv => Ok(ExtensionBody::Skippable { ty, data: d }),
            ty => Err(Error::new(ErrorKind::UnknownNonSkippable(ty), raw.offset)),
        }
    }

    /// Bytes this body occupies when emitted (Type and Length included).
    pub fn buffer_len(&self) -> usize {
        match self {
            ExtensionBody::Padding => 1,
            ExtensionBody::Auth { authenticator, .. } => 6 + authenticator.len(),
            ExtensionBody::Nai(n) => 2 + n.len(),
            ExtensionBody::UdpTunnelRequest(_) => 2 + usize::from(UdpTunnelRequest::LEN),
            ExtensionBody::UdpTunnelReply(_) => 2 + usize::from(UdpTunnelReply::LEN),
            ExtensionBody::EncapsulatingDeliveryStyle => 2,
            ExtensionBody::TrustedNetworksConfigured { .. } => 4,
            ExtensionBody::HaParameter(_) => 2 + usize::from(HaParameter::LEN),
            ExtensionBody::Skippable { data, .. } => 2 + data.len(),
        }
    }

    /// Writes the extension at the start of `buf`; returns the bytes written. Variable-length bodies longer
    /// than a 1-byte Length allows fail with [`ErrorKind::ExtensionLength`].
    ///
    /// A hand-built [`ExtensionBody::Skippable`] must read back as itself: a type below 128, or a type and data
    /// that this crate would interpret as another body (e.g. 144 with sub-type 0), fails with
    /// [`ErrorKind::BadValue`] instead of emitting bytes that parse differently.
    pub fn emit(&self, buf: &mut [u8], dialect: &Dialect) -> Result<usize> {
        if let ExtensionBody::Skippable { ty, data } = *self {
            let raw = RawExtension {
                offset: 0,
                ty,
                format: ExtFormat::of(ty),
                long_subtype: None,
                data,
                bytes: &[],
            };
            if raw.format != ExtFormat::Tlv || ExtensionBody::parse(&raw, dialect) != Ok(*self) {
                return Err(Error::new(ErrorKind::BadValue, 0));
            }
        }
        let len = self.buffer_len();
        let length_byte = u8::try_from(len.saturating_sub(2)).map_err(|_| {
            Error::new(
                ErrorKind::ExtensionLength(self.ext_type(dialect), len.saturating_sub(2) as u16),
                1,
            )
        })?;
        room(buf, len)?;
        let out = buf.get_mut(..len).ok_or(Error::new(ErrorKind::BufferTooSmall, 0))?;
        let ty = self.ext_type(dialect);
        let mut w = Cursor { buf: out, at: 0 };
        w.u8(ty);
        if matches!(self, ExtensionBody::Padding) {
            return Ok(1);
        }
        w.u8(length_byte);
        match *self {
            ExtensionBody::Padding => {}
            ExtensionBody::Auth { spi, authenticator, .. } => {
                w.u32(spi);
                w.bytes(authenticator);
            }
            ExtensionBody::Nai(n) => w.bytes(n),
            ExtensionBody::UdpTunnelRequest(r) => {
                w.u8(0);
                w.u8(r.reserved1);
                let mut flags = r.reserved2 & 0x3f;
                if r.force {
                    flags |= UdpTunnelRequest::FLAG_F;
                }
                if r.registered_via_fa {
                    flags |= UdpTunnelRequest::FLAG_R;
                }
                w.u8(flags);
                w.u8(r.encapsulation);
                w.u16(r.reserved3);
            }
            ExtensionBody::UdpTunnelReply(r) => {
                w.u8(0);
                w.u8(r.code);
                let flags = (r.reserved & !UdpTunnelReply::FLAG_F) | if r.forced { UdpTunnelReply::FLAG_F } else { 0 };
                w.u16(flags);
                w.u16(r.keepalive);
            }
            ExtensionBody::EncapsulatingDeliveryStyle => {}
            ExtensionBody::TrustedNetworksConfigured { reserved } => {
                w.u8(0);
                w.u8(reserved);
            }
            ExtensionBody::HaParameter(h) => {
                w.u8(dialect.ha_parameter_subtype);
                w.u8(h.reserved);
                w.bytes(&h.home_agent.octets());
            }
            ExtensionBody::Skippable { data, .. } => w.bytes(data),
        }
        Ok(len)
    }
}

/// Sequential writer over a slice already checked to be long enough.
struct Cursor<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn bytes(&mut self, v: &[u8]) {
        super::set_bytes(self.buf, self.at, v);
        self.at += v.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
}

/// An interpreted extension and where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// Offset of the Type byte in the whole message.
    pub offset: usize,
    /// The whole extension as received.
    pub bytes: &'a [u8],
    /// Its meaning.
    pub body: ExtensionBody<'a>,
}

impl Extension<'_> {
    /// Type byte.
    pub fn ext_type(&self) -> u8 {
        get_u8(self.bytes, 0)
    }

    /// For an authentication extension: where the bytes it covers end (RFC 5944 §3.5.1: everything before
    /// the Authenticator field, i.e. through this extension's SPI).
    pub fn auth_covered_end(&self) -> Option<usize> {
        match self.body {
            ExtensionBody::Auth { .. } => self.offset.checked_add(6),
            _ => None,
        }
    }
}

impl fmt::Display for Extension<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ext {} @{}: {:?}", self.ext_type(), self.offset, self.body)
    }
}

/// Interprets the extensions of a message one by one. Stops after the first error.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    raw: RawExtensions<'a>,
    dialect: Dialect,
    failed: bool,
}

impl<'a> Extensions<'a> {
    /// Walks `region`, whose first byte sits at `base` in the message.
    pub const fn new(region: &'a [u8], base: usize, dialect: Dialect) -> Self {
        Extensions {
            raw: RawExtensions::new(region, base),
            dialect,
            failed: false,
        }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.raw.next()?.and_then(|raw| {
            Ok(Extension {
                offset: raw.offset,
                bytes: raw.bytes,
                body: ExtensionBody::parse(&raw, &self.dialect)?,
            })
        });
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<ExtensionBody<'_>> {
        let mut it = Extensions::new(bytes, 0, Dialect::default());
        let e = it.next().expect("one extension")?;
        assert!(it.next().is_none(), "exactly one extension");
        Ok(e.body)
    }

    fn emit(body: &ExtensionBody<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; body.buffer_len()];
        assert_eq!(body.emit(&mut buf, &Dialect::default()).unwrap(), buf.len());
        buf
    }

    #[test]
    fn case_10_udp_tunnel_request_encode() {
        let f = ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
            force: true,
            ..Default::default()
        });
        assert_eq!(emit(&f), [0x90, 0x06, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]);
        let r = ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
            registered_via_fa: true,
            ..Default::default()
        });
        assert_eq!(emit(&r)[4], 0x40);
        assert_eq!(one(&emit(&f)).unwrap(), f);
    }

    #[test]
    fn case_11_udp_tunnel_reply_encode() {
        let r = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
            keepalive: 110,
            ..Default::default()
        });
        assert_eq!(emit(&r), [0x2c, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6e]);
        assert_eq!(one(&emit(&r)).unwrap(), r);
        // Spec §11.2 fragment: UTRP F=1 keepalive 0.
        let f = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
            forced: true,
            ..Default::default()
        });
        assert_eq!(emit(&f), [0x2c, 0x06, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn case_13_nai_encode() {
        let n = ExtensionBody::Nai(b"joe@example.com");
        assert_eq!(hex::encode(emit(&n)), "830f6a6f65406578616d706c652e636f6d");
        assert_eq!(one(&emit(&n)).unwrap(), n);
    }

    #[test]
    fn ha_parameter_default_code_point() {
        let h = ExtensionBody::HaParameter(HaParameter {
            reserved: 0,
            home_agent: Ipv4Addr::new(10, 10, 1, 1),
        });
        assert_eq!(emit(&h), [0xff, 0x06, 0x01, 0x00, 10, 10, 1, 1]);
        assert_eq!(one(&emit(&h)).unwrap(), h);
        // Type 255 with another sub-type is just a skippable extension.
        assert_eq!(
            one(&[0xff, 0x02, 0x07, 0x00]).unwrap(),
            ExtensionBody::Skippable { ty: 255, data: &[7, 0] }
        );
    }

    #[test]
    fn ha_parameter_custom_code_point_non_skippable() {
        let d = Dialect::new(120, 3).unwrap();
        let mut it = Extensions::new(&[120, 6, 3, 0, 1, 2, 3, 4], 0, d);
        assert!(matches!(
            it.next().unwrap().unwrap().body,
            ExtensionBody::HaParameter(_)
        ));
        // Same type, wrong sub-type: an unknown non-skippable extension.
        let mut it = Extensions::new(&[120, 6, 9, 0, 1, 2, 3, 4], 0, d);
        assert_eq!(
            it.next().unwrap().unwrap_err().kind,
            ErrorKind::UnknownNonSkippable(120)
        );
        assert!(Dialect::new(127, 1).is_err());
        assert!(Dialect::new(32, 1).is_err());
    }

    #[test]
    fn trusted_networks_and_delivery_style() {
        assert_eq!(
            one(&[149, 2, 0, 0]).unwrap(),
            ExtensionBody::TrustedNetworksConfigured { reserved: 0 }
        );
        assert_eq!(one(&[130, 0]).unwrap(), ExtensionBody::EncapsulatingDeliveryStyle);
        assert_eq!(one(&[130, 1, 0]).unwrap_err().kind, ErrorKind::ExtensionLength(130, 1));
    }

    #[test]
    fn auth_extension_lengths() {
        let mut b = vec![32, 20, 0, 0, 1, 0];
        b.extend_from_slice(&[0xab; 16]);
        match one(&b).unwrap() {
            ExtensionBody::Auth {
                kind,
                spi,
                authenticator,
            } => {
                assert_eq!(kind, AuthKind::MobileHome);
                assert_eq!(spi, 0x100);
                assert_eq!(authenticator, &[0xab; 16]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            one(&[33, 3, 0, 0, 1]).unwrap_err(),
            Error::new(ErrorKind::ExtensionLength(33, 3), 1)
        );
    }

    #[test]
    fn truncated_extension() {
        // MN-HA with Length 20 but only 10 bytes after the header.
        let b = [32, 20, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6];
        let e = Extensions::new(&b, 24, Dialect::default()).next().unwrap().unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::ExtensionTruncated(32), 24));
        // A lone Type byte that needs a Length.
        let e = Extensions::new(&[131], 30, Dialect::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::ExtensionTruncated(131), 30));
    }

    #[test]
    fn unknown_non_skippable() {
        let e = Extensions::new(&[100, 2, 0, 0], 24, Dialect::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::UnknownNonSkippable(100), 24));
    }

    #[test]
    fn unknown_skippable_kept() {
        assert_eq!(
            one(&[200, 3, 1, 2, 3]).unwrap(),
            ExtensionBody::Skippable {
                ty: 200,
                data: &[1, 2, 3]
            }
        );
    }

    #[test]
    fn one_byte_padding() {
        let b = [0, 0, 130, 0, 0];
        let v: Vec<_> = Extensions::new(&b, 24, Dialect::default())
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].body, ExtensionBody::Padding);
        assert_eq!(v[1].offset, 25);
        assert_eq!(v[2].offset, 26);
        assert_eq!(v[3].offset, 28);
    }

    #[test]
    fn long_format_generalized_auth() {
        // Type 36, sub-type 1, 16-bit Length 300, then an NAI: the raw walker lands on the NAI at 24+4+300.
        let mut b = vec![36, 1, 0x01, 0x2c];
        b.extend(std::iter::repeat_n(0x55, 300));
        b.extend_from_slice(&[131, 1, b'x']);
        let raw: Vec<_> = RawExtensions::new(&b, 24).map(|r| r.unwrap()).collect();
        assert_eq!(raw.len(), 2);
        assert_eq!(raw[0].format, ExtFormat::Long);
        assert_eq!(raw[0].long_subtype, Some(1));
        assert_eq!(raw[0].data.len(), 300);
        assert_eq!(raw[1].offset, 24 + 304);
        assert_eq!(raw[1].ty, 131);
        // We do not implement type 36, so the typed layer discards the message.
        let e = Extensions::new(&b, 24, Dialect::default()).next().unwrap().unwrap_err();
        assert_eq!(e, Error::new(ErrorKind::UnknownNonSkippable(36), 24));
    }

    #[test]
    fn udp_tunnel_request_unknown_subtype_is_skipped() {
        assert_eq!(
            one(&[144, 6, 1, 0, 0, 4, 0, 0]).unwrap(),
            ExtensionBody::Skippable {
                ty: 144,
                data: &[1, 0, 0, 4, 0, 0]
            }
        );
        assert_eq!(
            one(&[144, 5, 0, 0, 0, 4, 0]).unwrap_err().kind,
            ErrorKind::ExtensionLength(144, 5)
        );
    }

    #[test]
    fn udp_tunnel_request_keeps_reserved_fields() {
        let b = [144, 6, 0, 7, 0x81, 4, 0, 1];
        match one(&b).unwrap() {
            ExtensionBody::UdpTunnelRequest(r) => {
                assert!(r.force && !r.registered_via_fa);
                assert_eq!((r.reserved1, r.reserved2, r.encapsulation, r.reserved3), (7, 1, 4, 1));
                assert_eq!(emit(&ExtensionBody::UdpTunnelRequest(r)), b);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn emit_refuses_skippable_that_would_read_back_differently() {
        let mut buf = [0u8; 16];
        let d = Dialect::default();
        for bad in [
            ExtensionBody::Skippable { ty: 0, data: &[1, 2] },
            ExtensionBody::Skippable { ty: 100, data: &[] },
            ExtensionBody::Skippable {
                ty: 144,
                data: &[0, 0, 0, 4, 0, 0],
            },
            ExtensionBody::Skippable {
                ty: 255,
                data: &[1, 0, 1, 2, 3, 4],
            },
            ExtensionBody::Skippable { ty: 131, data: b"joe" },
        ] {
            assert_eq!(bad.emit(&mut buf, &d).unwrap_err().kind, ErrorKind::BadValue, "{bad:?}");
        }
        assert!(
            ExtensionBody::Skippable { ty: 200, data: &[1] }
                .emit(&mut buf, &d)
                .is_ok()
        );
    }

    #[test]
    fn offsets_near_usize_max_do_not_overflow() {
        assert_eq!(RawExtensions::new(&[0, 0], usize::MAX).count(), 2);
        let e = Extensions::new(&[33, 0], usize::MAX, Dialect::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.offset, usize::MAX);
    }

    #[test]
    fn emit_rejects_oversized_and_short_buffers() {
        let long = [b'a'; 300];
        let n = ExtensionBody::Nai(&long);
        let mut buf = [0u8; 400];
        assert_eq!(
            n.emit(&mut buf, &Dialect::default()).unwrap_err().kind,
            ErrorKind::ExtensionLength(131, 300)
        );
        let mut small = [0u8; 4];
        assert_eq!(
            ExtensionBody::Nai(b"joe")
                .emit(&mut small, &Dialect::default())
                .unwrap_err()
                .kind,
            ErrorKind::BufferTooSmall
        );
    }
}

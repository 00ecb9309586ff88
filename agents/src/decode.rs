//! Renders one parsed Mobile IP message ([`mip::wire::Message`]) as JSON, for `mipctl decode` and for tests
//! that compare our decoder with other tools.
//!
//! # JSON contract
//! Stable field names (other fields may be added later, these keep their meaning):
//! * `type`: `registration_request` | `registration_reply` | `tunnel_data`.
//! * Requests: `flags` (`S B D M G r T x`, booleans), `lifetime`, `home_address`, `home_agent`,
//!   `care_of_address`, `identification` (16 lowercase hex digits), `extensions`.
//! * Replies: `code`, `code_name`, `lifetime`, `home_address`, `home_agent`, `identification`, `extensions`.
//! * Tunnel Data: `next_header`, `payload_length` (bytes after the 4-byte header); no `extensions` key.
//! * Each extension: `type`, `offset` (of its Type byte in the message), `name`, and
//!   * authentication (32/33/34): `spi`, `authenticator` (hex) and, when a [`Keys`] entry applies, `valid`;
//!   * NAI (131): `nai` (lossy UTF-8) plus `nai_hex` when the bytes are not UTF-8;
//!   * UDP Tunnel Request (144): `F`, `R`, `encapsulation`, `reserved3`;
//!   * UDP Tunnel Reply (44): `code`, `F`, `keepalive`;
//!   * HA Parameter (the [`mip::wire::Dialect`] code point): `subtype`, `home_agent`, `data`;
//!   * everything else (padding, 130, 149, unknown skippable types): `data`, the hex of the bytes after Type and
//!     Length (empty for one-byte padding).

use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::replay::ReplayStyle;
use mip::wire::ipv4::{HEADER_LEN as IPV4_HEADER_LEN, Ipv4Packet, protocol};
use mip::wire::udp::{HEADER_LEN as UDP_HEADER_LEN, MIP_PORT, UdpPacket};
use mip::wire::{Dialect, Extension, ExtensionBody, Message};
use serde_json::{Map, Value, json};

use crate::pcap::{self, Frame};

/// One key `mipctl` may verify authenticators with.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The SPI this key belongs to; `None` applies it to any SPI.
    pub spi: Option<u32>,
    /// Key material.
    pub key: Key,
    /// Algorithm.
    pub algorithm: Algorithm,
}

/// Zero or more keys for checking authentication extensions. The first entry whose SPI equals the
/// extension's SPI, or that has no SPI, applies.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    entries: Vec<KeyEntry>,
}

impl Keys {
    /// No keys: no extension gets a `valid` field.
    pub fn new() -> Self {
        Keys::default()
    }

    /// Adds an entry (checked after the existing ones).
    pub fn push(&mut self, spi: Option<u32>, key: Key, algorithm: Algorithm) -> &mut Self {
        self.entries.push(KeyEntry { spi, key, algorithm });
        self
    }

    /// Builder form of [`push`](Self::push).
    #[must_use]
    pub fn with(mut self, spi: Option<u32>, key: Key, algorithm: Algorithm) -> Self {
        self.push(spi, key, algorithm);
        self
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry that applies to `spi`, if any.
    pub fn find(&self, spi: u32) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.spi.is_none_or(|s| s == spi))
    }

    /// Whether the authentication extension `ext` of message `msg` verifies with the applicable key; `None`
    /// when no key applies or `ext` is not an authentication extension. Reserved SPIs (0–255) never verify.
    pub fn verify(&self, msg: &[u8], ext: &Extension<'_>) -> Option<bool> {
        let ExtensionBody::Auth { spi, .. } = ext.body else {
            return None;
        };
        let entry = self.find(spi)?;
        let Ok(spi) = Spi::new(spi) else {
            return Some(false);
        };
        // The same check a daemon runs: an SA with this key, verified over the covered bytes.
        let sa = SecurityAssociation::new(spi, entry.algorithm, entry.key.clone(), ReplayStyle::default());
        Some(sa.verify(msg, ext).is_ok())
    }
}

/// Dotted-quad string of an address (JSON helper).
fn addr(a: core::net::Ipv4Addr) -> Value {
    Value::String(a.to_string())
}

/// Renders one message (see the module doc for the contract).
pub fn message_json(msg: &Message<'_>, keys: &Keys) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), json!(msg.message_type().as_str()));
    match msg {
        Message::Request(r) => {
            let flags: Map<String, Value> = r
                .repr
                .flags
                .named()
                .iter()
                .map(|(name, on)| ((*name).to_owned(), Value::Bool(*on)))
                .collect();
            o.insert("flags".into(), Value::Object(flags));
            o.insert("lifetime".into(), json!(r.repr.lifetime));
            o.insert("home_address".into(), addr(r.repr.home_address));
            o.insert("home_agent".into(), addr(r.repr.home_agent));
            o.insert("care_of_address".into(), addr(r.repr.care_of_address));
            o.insert(
                "identification".into(),
                json!(format!("{:016x}", r.repr.identification)),
            );
            let exts = r.extensions().map(|e| extension_json(r.bytes, &e, keys)).collect();
            o.insert("extensions".into(), Value::Array(exts));
        }
        Message::Reply(r) => {
            o.insert("code".into(), json!(r.repr.code.value()));
            o.insert("code_name".into(), json!(r.repr.code.description()));
            o.insert("lifetime".into(), json!(r.repr.lifetime));
            o.insert("home_address".into(), addr(r.repr.home_address));
            o.insert("home_agent".into(), addr(r.repr.home_agent));
            o.insert(
                "identification".into(),
                json!(format!("{:016x}", r.repr.identification)),
            );
            let exts = r.extensions().map(|e| extension_json(r.bytes, &e, keys)).collect();
            o.insert("extensions".into(), Value::Array(exts));
        }
        Message::TunnelData(t) => {
            o.insert("next_header".into(), json!(t.repr.next_header));
            o.insert("payload_length".into(), json!(t.payload.len()));
        }
    }
    Value::Object(o)
}

/// What [`frame_json`] made of a captured frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameLine {
    /// Not IPv4 UDP to or from port 434: nothing to print.
    Ignored,
    /// A decoded message, or a note about a frame that could not be decoded (fragment, truncated capture).
    Line(Value),
    /// A Mobile IP payload that failed to parse: `{"frame","src","dst","error","offset",…}`.
    Malformed(Value),
}

/// Decodes the UDP port 434 payload of a captured frame (see the module doc for the message fields; frames
/// add `frame`, `src`, `dst` and `udp_checksum_ok`). IPv6, non-UDP and non-434 traffic is [`FrameLine::Ignored`];
/// IPv4 fragments give `{"frame":n,"skipped":"fragment"}` (non-first fragments of any UDP datagram, since their
/// ports are unknown; first fragments only for port 434), and port-434 datagrams cut short by the capture or
/// with a broken IP or UDP header give `{"frame":n,"src":…,"dst":…,"skipped":"truncated"|"malformed_ip"|
/// "malformed_udp","reason":"…"}`.
pub fn frame_json(frame: &Frame, dialect: &Dialect, keys: &Keys) -> FrameLine {
    let Some(ip_bytes) = pcap::ipv4_packet(frame.linktype, &frame.data) else {
        return FrameLine::Ignored;
    };
    let ip = Ipv4Packet::new_unchecked(ip_bytes);
    let hl = ip.header_len();
    if ip_bytes.len() < IPV4_HEADER_LEN || ip.version() != 4 || hl < IPV4_HEADER_LEN || ip.protocol() != protocol::UDP {
        return FrameLine::Ignored;
    }
    let number = frame.number;
    if ip.frag_offset() != 0 {
        return FrameLine::Line(json!({"frame": number, "skipped": "fragment"}));
    }
    let udp_bytes = ip_bytes.get(hl..).unwrap_or(&[]);
    if udp_bytes.len() < UDP_HEADER_LEN {
        return FrameLine::Ignored;
    }
    let udp = UdpPacket::new_unchecked(udp_bytes);
    if udp.src_port() != MIP_PORT && udp.dst_port() != MIP_PORT {
        return FrameLine::Ignored;
    }
    let mut o = Map::new();
    o.insert("frame".into(), json!(number));
    o.insert("src".into(), json!(format!("{}:{}", ip.src_addr(), udp.src_port())));
    o.insert("dst".into(), json!(format!("{}:{}", ip.dst_addr(), udp.dst_port())));
    let cut_short = (frame.orig_len as usize) > frame.data.len();
    let skipped = |mut o: Map<String, Value>, what: &str, reason: String| {
        o.insert("skipped".into(), json!(what));
        o.insert("reason".into(), json!(reason));
        FrameLine::Line(Value::Object(o))
    };
    if ip.more_frags() {
        return skipped(o, "fragment", "first fragment of a fragmented datagram".into());
    }
    if let Err(e) = ip.check_len() {
        return skipped(
            o,
            if cut_short { "truncated" } else { "malformed_ip" },
            format!("IPv4: {e}"),
        );
    }
    let udp = match UdpPacket::new_checked(ip.payload()) {
        Ok(u) => u,
        Err(e) => {
            let what = if cut_short { "truncated" } else { "malformed_udp" };
            return skipped(o, what, format!("UDP: {e}"));
        }
    };
    o.insert(
        "udp_checksum_ok".into(),
        json!(udp.verify_checksum(ip.src_addr(), ip.dst_addr())),
    );
    match Message::parse(udp.payload(), dialect) {
        Ok(msg) => {
            if let Value::Object(m) = message_json(&msg, keys) {
                o.extend(m);
            }
            FrameLine::Line(Value::Object(o))
        }
        Err(e) => {
            o.insert("error".into(), json!(e.to_string()));
            o.insert("offset".into(), json!(e.offset));
            FrameLine::Malformed(Value::Object(o))
        }
    }
}

/// Short name of an extension body, for humans reading the JSON.
fn body_name(body: &ExtensionBody<'_>) -> &'static str {
    match body {
        ExtensionBody::Padding => "padding",
        ExtensionBody::Auth { kind, .. } => match kind {
            mip::wire::AuthKind::MobileHome => "mn_ha_auth",
            mip::wire::AuthKind::MobileForeign => "mn_fa_auth",
            mip::wire::AuthKind::ForeignHome => "fa_ha_auth",
        },
        ExtensionBody::Nai(_) => "nai",
        ExtensionBody::UdpTunnelRequest(_) => "udp_tunnel_request",
        ExtensionBody::UdpTunnelReply(_) => "udp_tunnel_reply",
        ExtensionBody::EncapsulatingDeliveryStyle => "encapsulating_delivery_style",
        ExtensionBody::TrustedNetworksConfigured { .. } => "trusted_networks_configured",
        ExtensionBody::HaParameter(_) => "ha_parameter",
        ExtensionBody::Skippable { .. } => "unknown_skippable",
    }
}

/// Renders one extension of message `msg`.
fn extension_json(msg: &[u8], ext: &Extension<'_>, keys: &Keys) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), json!(ext.ext_type()));
    o.insert("offset".into(), json!(ext.offset));
    o.insert("name".into(), json!(body_name(&ext.body)));
    // The bytes after Type and Length; one-byte padding has neither Length nor data.
    let data = || match ext.body {
        ExtensionBody::Padding => String::new(),
        _ => hex::encode(ext.bytes.get(2..).unwrap_or(&[])),
    };
    match ext.body {
        ExtensionBody::Auth { spi, authenticator, .. } => {
            o.insert("spi".into(), json!(spi));
            o.insert("authenticator".into(), json!(hex::encode(authenticator)));
            if let Some(valid) = keys.verify(msg, ext) {
                o.insert("valid".into(), json!(valid));
            }
        }
        ExtensionBody::Nai(n) => match core::str::from_utf8(n) {
            Ok(s) => {
                o.insert("nai".into(), json!(s));
            }
            Err(_) => {
                o.insert("nai".into(), json!(String::from_utf8_lossy(n)));
                o.insert("nai_hex".into(), json!(hex::encode(n)));
            }
        },
        ExtensionBody::UdpTunnelRequest(r) => {
            o.insert("F".into(), json!(r.force));
            o.insert("R".into(), json!(r.registered_via_fa));
            o.insert("encapsulation".into(), json!(r.encapsulation));
            o.insert("reserved3".into(), json!(r.reserved3));
        }
        ExtensionBody::UdpTunnelReply(r) => {
            o.insert("code".into(), json!(r.code));
            o.insert("F".into(), json!(r.forced));
            o.insert("keepalive".into(), json!(r.keepalive));
        }
        ExtensionBody::HaParameter(h) => {
            o.insert("subtype".into(), json!(ext.bytes.get(2).copied().unwrap_or(0)));
            o.insert("home_agent".into(), addr(h.home_agent));
            o.insert("data".into(), json!(data()));
        }
        ExtensionBody::Padding
        | ExtensionBody::EncapsulatingDeliveryStyle
        | ExtensionBody::TrustedNetworksConfigured { .. }
        | ExtensionBody::Skippable { .. } => {
            o.insert("data".into(), json!(data()));
        }
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn key() -> Key {
        Key::from_hex(KEY).unwrap()
    }

    fn decode(bytes: &[u8], keys: &Keys) -> Value {
        message_json(&Message::parse(bytes, &Dialect::default()).unwrap(), keys)
    }

    #[test]
    fn v1_fields() {
        let b = hex::decode(V1).unwrap();
        let v = decode(&b, &Keys::new().with(Some(0x100), key(), Algorithm::HmacMd5));
        assert_eq!(v["type"], "registration_request");
        assert_eq!(v["flags"]["D"], true);
        assert_eq!(v["flags"]["T"], true);
        assert_eq!(v["flags"]["S"], false);
        assert_eq!(v["identification"], "ec4e5a0012345678");
        assert_eq!(v["extensions"][0]["valid"], true);
        assert_eq!(v["extensions"][0]["offset"], 24);
        assert_eq!(v["extensions"][0]["spi"], 256);
    }

    #[test]
    fn key_selection() {
        let b = hex::decode(V1).unwrap();
        // A key for another SPI does not apply: no `valid`.
        let v = decode(&b, &Keys::new().with(Some(0x200), key(), Algorithm::HmacMd5));
        assert!(v["extensions"][0].get("valid").is_none());
        // First match wins: the wrong wildcard key comes first.
        let keys =
            Keys::new()
                .with(None, Key::new(b"wrong"), Algorithm::HmacMd5)
                .with(Some(0x100), key(), Algorithm::HmacMd5);
        assert_eq!(decode(&b, &keys)["extensions"][0]["valid"], false);
        // Keyed MD5 does not verify an HMAC authenticator.
        let v = decode(&b, &Keys::new().with(None, key(), Algorithm::KeyedMd5PrefixSuffix));
        assert_eq!(v["extensions"][0]["valid"], false);
    }

    #[test]
    fn reserved_spi_never_valid() {
        // V1 re-signed with SPI 0xff: the authenticator is right for the bytes, but the SPI is reserved.
        let mut b = hex::decode(V1).unwrap();
        b[29] = 0xff;
        b[28] = 0;
        let mac = mip::auth::compute(Algorithm::HmacMd5, key().expose(), &b[..30]);
        b[30..].copy_from_slice(&mac);
        let v = decode(&b, &Keys::new().with(None, key(), Algorithm::HmacMd5));
        assert_eq!(v["extensions"][0]["spi"], 255);
        assert_eq!(v["extensions"][0]["valid"], false);
    }

    #[test]
    fn other_extensions() {
        // Request fixed part + padding + NAI (non-UTF-8) + 130 + 149 + HA Parameter + unknown 200 + UTRQ.
        let mut b = hex::decode(&V1[..48]).unwrap();
        b.extend_from_slice(&[0]);
        b.extend_from_slice(&[131, 3, b'a', 0xff, b'b']);
        b.extend_from_slice(&[130, 0]);
        b.extend_from_slice(&[149, 2, 0, 0]);
        b.extend_from_slice(&[255, 6, 1, 0, 10, 10, 1, 1]);
        b.extend_from_slice(&[200, 3, 1, 2, 3]);
        b.extend_from_slice(&[144, 6, 0, 0, 0xc0, 4, 0, 1]);
        let v = decode(&b, &Keys::new());
        let e = &v["extensions"];
        assert_eq!(e[0], json!({"type":0,"offset":24,"name":"padding","data":""}));
        assert_eq!(e[1]["nai"], "a\u{fffd}b");
        assert_eq!(e[1]["nai_hex"], "61ff62");
        assert_eq!(e[2]["data"], "");
        assert_eq!(e[3]["data"], "0000");
        assert_eq!(e[4]["subtype"], 1);
        assert_eq!(e[4]["home_agent"], "10.10.1.1");
        assert_eq!(e[4]["data"], "01000a0a0101");
        assert_eq!(e[5]["data"], "010203");
        assert_eq!(e[5]["offset"], 44);
        assert_eq!(e[6]["offset"], 49);
        assert_eq!((e[6]["F"].clone(), e[6]["R"].clone()), (json!(true), json!(true)));
        assert_eq!(e[6]["encapsulation"], 4);
        assert_eq!(e[6]["reserved3"], 1);
    }

    #[test]
    fn tunnel_data() {
        let v = decode(&[4, 4, 0, 0, 0x45, 0, 0], &Keys::new());
        assert_eq!(v, json!({"type":"tunnel_data","next_header":4,"payload_length":3}));
    }

    fn frame(linktype: u32, data: Vec<u8>, orig_len: u32) -> Frame {
        Frame {
            number: 7,
            file_offset: 0,
            linktype,
            timestamp_ns: 0,
            orig_len,
            data,
        }
    }

    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let s = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 77), src_port);
        let d = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 51, 100, 10), dst_port);
        pcap::ipv4_udp_packet(s, d, payload)
    }

    #[test]
    fn frames() {
        let v1 = hex::decode(V1).unwrap();
        let d = Dialect::default();
        let k = Keys::new();
        let full = udp(40001, 434, &v1);
        let n = full.len() as u32;
        match frame_json(&frame(101, full.clone(), n), &d, &k) {
            FrameLine::Line(v) => {
                assert_eq!(v["frame"], 7);
                assert_eq!(v["src"], "192.0.2.77:40001");
                assert_eq!(v["udp_checksum_ok"], true);
                assert_eq!(v["type"], "registration_request");
            }
            other => panic!("{other:?}"),
        }
        // Cut short by the snap length.
        match frame_json(&frame(101, full[..40].to_vec(), n), &d, &k) {
            FrameLine::Line(v) => assert_eq!(v["skipped"], "truncated", "{v}"),
            other => panic!("{other:?}"),
        }
        // Not cut by the capture but the IP Total Length is wrong.
        let mut bad = full.clone();
        bad[3] = bad[3].wrapping_add(4);
        match frame_json(&frame(101, bad.clone(), bad.len() as u32), &d, &k) {
            FrameLine::Line(v) => assert_eq!(v["skipped"], "malformed_ip", "{v}"),
            other => panic!("{other:?}"),
        }
        // UDP Length past the IP payload.
        let mut bad = full.clone();
        bad[25] = bad[25].wrapping_add(4);
        match frame_json(&frame(101, bad.clone(), bad.len() as u32), &d, &k) {
            FrameLine::Line(v) => assert_eq!(v["skipped"], "malformed_udp", "{v}"),
            other => panic!("{other:?}"),
        }
        // Malformed Mobile IP payload.
        let m = udp(434, 40001, &v1[..23]);
        match frame_json(&frame(228, m.clone(), m.len() as u32), &d, &k) {
            FrameLine::Malformed(v) => {
                assert_eq!(v["error"], "truncated at byte offset 23");
                assert_eq!(v["offset"], 23);
            }
            other => panic!("{other:?}"),
        }
        // Ignored: other ports, non-UDP, IPv6, short or broken headers, unknown link types.
        let other = udp(40001, 53, &v1);
        assert_eq!(frame_json(&frame(101, other.clone(), 0), &d, &k), FrameLine::Ignored);
        let mut tcp = full.clone();
        tcp[9] = 6;
        assert_eq!(frame_json(&frame(101, tcp, 0), &d, &k), FrameLine::Ignored);
        assert_eq!(frame_json(&frame(101, vec![0x60; 60], 0), &d, &k), FrameLine::Ignored);
        assert_eq!(frame_json(&frame(147, full.clone(), 0), &d, &k), FrameLine::Ignored);
        let mut ihl = full.clone();
        ihl[0] = 0x44;
        assert_eq!(frame_json(&frame(101, ihl, 0), &d, &k), FrameLine::Ignored);
        for cut in 0..full.len() {
            let _ = frame_json(&frame(101, full[..cut].to_vec(), n), &d, &k);
        }
    }
}

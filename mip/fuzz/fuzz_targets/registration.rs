//! Whole UDP-434 messages through `Message::parse` with the default dialect.
//!
//! Properties checked on every input:
//! * a parse error names an offset inside the input and displays without panicking;
//! * a parsed request or reply round-trips byte for byte: the fixed part re-emitted with `MessageWriter` plus every
//!   extension copied raw with `push_raw` gives back the input (so the extensions tile the message exactly);
//! * `Request::parse`/`Reply::parse` called directly agree with `Message::parse`;
//! * every authentication extension is checked with a fixed SA; when one verifies, re-signing the same prefix with
//!   `push_auth` reproduces the received bytes, and flipping an Identification bit makes it fail;
//! * Tunnel Data: the payload is everything after the 4-byte header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mip::auth::{AUTH_EXT_HEADER_LEN, AUTHENTICATOR_LEN, Algorithm, AuthError, Key, SecurityAssociation, Spi};
use mip::replay::ReplayStyle;
use mip::wire::{
    AuthKind, Dialect, Extension, ExtensionBody, Message, MessageType, MessageWriter, REPLY_HEADER_LEN,
    REQUEST_HEADER_LEN, Reply, Request,
};
use std::fmt::Write as _;

/// The spec §11.2 SA (key 00..0f, SPI 0x100), so seeds V1–V8 verify.
fn spec_sa() -> &'static SecurityAssociation {
    static SA: std::sync::OnceLock<SecurityAssociation> = std::sync::OnceLock::new();
    SA.get_or_init(|| {
        SecurityAssociation::new(
            Spi::new(0x100).expect("spi"),
            Algorithm::HmacMd5,
            Key::from_hex("000102030405060708090a0b0c0d0e0f").expect("key"),
            ReplayStyle::default(),
        )
    })
}

fn check_auth(
    data: &[u8],
    header_len: usize,
    exts: &[Extension<'_>],
    start_writer: &dyn Fn(&mut [u8]) -> MessageWriter<'_>,
) {
    let sa = spec_sa();
    for (i, e) in exts.iter().enumerate() {
        let r = sa.verify(data, e);
        if let Err(err) = r {
            let _ = format!("{err} {}", err.as_str());
        }
        let ExtensionBody::Auth {
            kind,
            spi,
            authenticator,
        } = e.body
        else {
            assert_eq!(r, Err(AuthError::NotAuthentication));
            continue;
        };
        assert_eq!(e.auth_covered_end(), Some(e.offset + AUTH_EXT_HEADER_LEN));
        match r {
            Ok(()) => {
                assert_eq!(spi, 0x100);
                assert_eq!(authenticator.len(), AUTHENTICATOR_LEN);
                // Re-sign: fixed part + the extensions before this one + push_auth must give the same bytes.
                let mut buf = vec![0u8; data.len()];
                let mut w = start_writer(&mut buf);
                for prev in exts.get(..i).expect("prefix") {
                    w.push_raw(prev.bytes).expect("push_raw");
                }
                w.push_auth(kind, sa).expect("push_auth");
                let end = e.offset + e.bytes.len();
                assert_eq!(w.as_bytes(), &data[..end], "push_auth disagrees with verify");
                // Any change in the covered bytes must break the authenticator. Identification is covered and
                // parsing does not look at it, so flip one of its bits and re-verify.
                let mut tampered = data.to_vec();
                tampered[header_len - 1] ^= 0x01;
                assert_eq!(sa.verify(&tampered, e), Err(AuthError::Mismatch));
            }
            Err(AuthError::ReservedSpi) => assert!(spi < Spi::MIN),
            Err(AuthError::SpiMismatch) => assert!(spi >= Spi::MIN && spi != 0x100),
            Err(AuthError::WrongLength) => assert_ne!(authenticator.len(), AUTHENTICATOR_LEN),
            Err(AuthError::Mismatch) => assert_eq!(authenticator.len(), AUTHENTICATOR_LEN),
            Err(AuthError::NotAuthentication) => panic!("auth extension reported as not authentication"),
        }
    }
}

fn display_exts(exts: &[Extension<'_>]) {
    let mut s = String::new();
    for e in exts {
        write!(s, "{e}").expect("fmt");
    }
}

fn check_request(data: &[u8], req: &Request<'_>) {
    assert_eq!(req.bytes, data);
    let dialect = Dialect::default();
    let exts: Vec<Extension<'_>> = req.extensions().collect();
    // Round trip: fixed part + raw extensions == input.
    let mut buf = vec![0u8; data.len()];
    let mut w = MessageWriter::request(&mut buf, &req.repr, &dialect).expect("request header fits");
    let mut expect_off = REQUEST_HEADER_LEN;
    for e in &exts {
        assert_eq!(e.offset, expect_off, "extensions must tile the message");
        assert_eq!(&data[e.offset..e.offset + e.bytes.len()], e.bytes);
        expect_off += e.bytes.len();
        w.push_raw(e.bytes).expect("push_raw");
    }
    assert_eq!(w.as_bytes(), data, "parse/emit round trip");
    assert_eq!(w.finish(), data);
    let _ = format!("{}", req.repr);
    display_exts(&exts);
    for kind in [AuthKind::MobileHome, AuthKind::MobileForeign, AuthKind::ForeignHome] {
        let n = req.auth_count(kind);
        assert_eq!(req.auth(kind).is_some(), n > 0);
    }
    let _ = req.nai();
    check_auth(data, REQUEST_HEADER_LEN, &exts, &|b| {
        MessageWriter::request(b, &req.repr, &dialect).expect("request header fits")
    });
}

fn check_reply(data: &[u8], rep: &Reply<'_>) {
    assert_eq!(rep.bytes, data);
    let dialect = Dialect::default();
    let exts: Vec<Extension<'_>> = rep.extensions().collect();
    let mut buf = vec![0u8; data.len()];
    let mut w = MessageWriter::reply(&mut buf, &rep.repr, &dialect).expect("reply header fits");
    let mut expect_off = REPLY_HEADER_LEN;
    for e in &exts {
        assert_eq!(e.offset, expect_off, "extensions must tile the message");
        expect_off += e.bytes.len();
        w.push_raw(e.bytes).expect("push_raw");
    }
    assert_eq!(w.as_bytes(), data, "parse/emit round trip");
    let _ = format!("{} {}", rep.repr, rep.repr.code.description());
    display_exts(&exts);
    for kind in [AuthKind::MobileHome, AuthKind::MobileForeign, AuthKind::ForeignHome] {
        assert_eq!(rep.auth(kind).is_some(), rep.auth_count(kind) > 0);
    }
    let _ = rep.nai();
    check_auth(data, REPLY_HEADER_LEN, &exts, &|b| {
        MessageWriter::reply(b, &rep.repr, &dialect).expect("reply header fits")
    });
}

fuzz_target!(|data: &[u8]| {
    let dialect = Dialect::default();
    match Message::parse(data, &dialect) {
        Err(e) => {
            assert!(
                e.offset <= data.len(),
                "error offset {} past the end ({} bytes): {e:?}",
                e.offset,
                data.len()
            );
            let s = format!("{e} {} {:?}", e.kind.as_str(), e);
            assert!(!s.is_empty());
            // The type-specific parsers must agree.
            match data.first() {
                Some(1) => assert_eq!(Request::parse(data, &dialect).err(), Some(e)),
                Some(3) => assert_eq!(Reply::parse(data, &dialect).err(), Some(e)),
                _ => {}
            }
        }
        Ok(msg) => {
            assert_eq!(Some(msg.message_type()), MessageType::from_byte(data[0]));
            let _ = msg.message_type().as_str();
            match msg {
                Message::Request(req) => {
                    assert!(Request::parse(data, &dialect).is_ok());
                    check_request(data, &req);
                }
                Message::Reply(rep) => {
                    assert!(Reply::parse(data, &dialect).is_ok());
                    check_reply(data, &rep);
                }
                Message::TunnelData(td) => {
                    assert_eq!(td.repr.next_header, data[1]);
                    assert_eq!(td.payload, &data[4..]);
                }
            }
        }
    }
});
